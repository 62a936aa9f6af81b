"""The interface between the rollout engine and one KServe deployment mode.

A router turns an InferenceService into an :class:`Observed` (a ``TrafficView`` for the
pure state machine plus what the engine and the audit need), and turns the machine's
``SetTraffic`` actions into the writes that mode requires (KSERVE.md §3). Routers never
write status, annotations or labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from canary.model import SetTraffic, TrafficView

__all__ = ["Observed", "TrafficRouter"]


@dataclass(frozen=True)
class Observed:
    """One reading of an InferenceService.

    ``view`` is what the state machine decides on. The other fields identify exactly which
    object version was read (``uid`` guards against a deleted and re-created service,
    ``resource_version`` guards the next write) and what it asked for, for the audit trail.
    ``status_traffic`` is ``status.components.predictor.traffic`` as KServe wrote it.
    """

    namespace: str
    name: str
    view: TrafficView
    uid: str
    generation: int
    resource_version: str
    mode: str  # "Knative", "Standard", or "" when neither status nor annotation says
    storage_uri: str | None  # spec.predictor.model.storageUri
    status_traffic: tuple[Mapping[str, Any], ...] = ()
    # Room for later: mirror routes (shadow traffic) and routing objects the controller
    # owns itself (Standard mode VirtualService/HTTPRoute) will be reported here, e.g. a
    # ``mirror_percent`` and a ``routing_objects`` tuple, without changing ``view``.


class TrafficRouter(Protocol):
    """Reads and writes the traffic of InferenceServices in one KServe mode."""

    def observe(self, namespace: str, name: str) -> Observed:
        """Read the InferenceService now (raises ``canary.k8s.client.NotFound`` if gone)."""
        ...

    def start(
        self, namespace: str, name: str, storage_uri: str, percent: int, *, resource_version: str
    ) -> Observed:
        """Begin a canary: in ONE write, point the model at ``storage_uri`` and give the new
        revision ``percent`` of traffic. Fails with ``Conflict`` if the object changed after
        ``resource_version`` was read. Returns the object as written (its status is the one
        from before the write, so its view is not converged yet)."""
        ...

    def apply(
        self, namespace: str, name: str, action: SetTraffic, *, resource_version: str | None
    ) -> None:
        """Carry out a traffic step, promotion or rollback; guarded by ``resource_version``
        when one is given."""
        ...
