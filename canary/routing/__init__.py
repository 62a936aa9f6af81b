"""Traffic routers: how the controller reads and writes an InferenceService's traffic.

``base`` defines the ``TrafficRouter`` protocol and the ``Observed`` snapshot the engine and
the audit trail consume; each KServe mode has its own implementation (``knative``,
``standard``). ``mirror`` defines the ``MirrorRouter`` protocol for shadow mirroring, with an
Istio VirtualService (``istio_mirror``) or a Gateway API HTTPRoute (``gateway_mirror``) of
our own.
"""
