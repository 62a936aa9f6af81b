"""Shadow comparison from KServe's payload logger: the champion's and a challenger's answers to
the same request, joined on the CloudEvent id and counted for Prometheus.

* :mod:`canary.shadow.events` (pure): one CloudEvent (binary or structured mode, or a batch)
  read from an HTTP request, and the decisions and scores read from a response body;
* :mod:`canary.shadow.join`: the in-memory join of responses with the same id from different
  InferenceServices of one namespace;
* :mod:`canary.shadow.collector`: the metrics and the handling of one HTTP delivery. The
  HTTP app around it is :mod:`canary.api.shadow` (FastAPI lives in ``canary.api`` only), and
  ``canary shadow-collector`` serves it.
"""
