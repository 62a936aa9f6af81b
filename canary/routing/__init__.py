"""Traffic routers: how the controller reads and writes an InferenceService's traffic.

``base`` defines the ``TrafficRouter`` protocol and the ``Observed`` snapshot the engine and
the audit trail consume; each KServe mode has its own implementation (``knative``).
"""
