"""A simulator of KServe v0.20.0 (and the parts of Knative Serving 1.21 it relies on).

The test bed has a real kube-apiserver with the real InferenceService CRD but no KServe and
no Knative. This package plays both: it watches InferenceServices and writes ``.status``
the way KServe v0.20.0 would (``docs/KSERVE.md`` in the repository is the specification).

* :mod:`.template` builds the predictor's revision template and its digest (PURE);
* :mod:`.status` holds the status model and knative/pkg's condition algebra (PURE);
* :mod:`.knative` models one InferenceService's Knative world (PURE);
* :mod:`.standard` models Standard (RawDeployment) mode with ``spec.canary`` (PURE);
* :mod:`.controller` is the loop that talks to the apiserver.

The pure modules import nothing from ``canary.k8s``; only the controller does.
"""
