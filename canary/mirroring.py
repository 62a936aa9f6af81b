"""Keeps each rollout's mirror object as its state says: present, with the policy's share
and the right target, while the rollout shadows; absent otherwise.

The state machine decides (``SetMirror`` actions come with their audit records); this
module reconciles the cluster with the decision after every pass, so a crash between the
commit and the write, a mirror object deleted or edited by hand, and a restart mid-shadow
all end the same way: the object the state asks for, or none. :meth:`MirrorKeeper.sweep`
removes what no shadowing rollout owns (a rollout that ended while the controller was
down, an InferenceService deleted with its rollout, a controller that crashed).

Where copies go (DESIGN.md §7: Envoy appends ``-shadow`` to the Host of a mirrored
request, which Knative's host routing cannot resolve): the mirror target is a Service that
reaches the challenger's pods directly. Standard mode: the challenger's predictor Service
(its Deployment's name, which is the revision name the router reports). Knative mode: the
challenger revision's private Service ``<revision>-private``, Knative's ClusterIP Service to
the queue-proxy (it bypasses the activator, so a Knative challenger needs a pod: minimum
scale 1).

PURE functions (:func:`wanted`, :func:`drift`, :func:`predictor_service`) decide; the
keeper does the I/O through the :class:`~canary.routing.mirror.MirrorRouter` and returns
what to record, for the engine to commit with its fence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from canary.document import RolloutDocument
from canary.k8s.client import KubeError
from canary.log import get_logger
from canary.model import EmitEvent, EventReason, Phase
from canary.routing.mirror import MirrorError, MirrorObservation, MirrorRouter, MirrorSpec

__all__ = [
    "MirrorKeeper",
    "MirrorNote",
    "Upkeep",
    "drift",
    "mirroring",
    "predictor_service",
    "wanted",
]

log = get_logger(__name__)


def mirroring(doc: RolloutDocument) -> bool:
    """Whether the rollout's state asks for a mirror: shadowing, or paused while
    shadowing (the evidence keeps accruing while a human looks)."""
    state = doc.state
    return state.phase is Phase.SHADOWING or (
        state.phase is Phase.PAUSED and state.paused_from is Phase.SHADOWING
    )


def predictor_service(isvc: Mapping[str, Any]) -> str:
    """The champion's predictor Service: ``<isvc>-predictor``, or with
    ``spec.predictor.name`` ``<isvc>-<name>-predictor`` (KServe's ``PredictorServiceName``;
    in Knative mode the Knative Service of that name)."""
    meta = isvc.get("metadata") or {}
    name = str(meta.get("name"))
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    named = predictor.get("name") if isinstance(predictor, Mapping) else None
    return f"{name}-{named}-predictor" if named else f"{name}-predictor"


def mirror_service(mode: str, revision: str) -> str:
    """The Service copies go to (module docstring)."""
    return f"{revision}-private" if mode == "knative" else revision


def wanted(doc: RolloutDocument, isvc: Mapping[str, Any] | None) -> MirrorSpec | None:
    """The mirror object the rollout's state asks for, or None."""
    if isvc is None or not mirroring(doc):
        return None
    state = doc.state
    return MirrorSpec(
        namespace=state.namespace,
        champion=state.name,
        champion_uid=doc.uid,
        rollout_id=state.rollout_id,
        challenger=state.challenger or state.name,
        source_service=predictor_service(isvc),
        mirror_service=mirror_service(doc.mode, state.canary.name),
        percent=doc.policy.shadow.mirror_percent,
    )


def drift(current: MirrorObservation | None, spec: MirrorSpec) -> str | None:
    """How the object in the cluster differs from ``spec``; None when it matches."""
    if current is None:
        return "absent"
    differences = []
    if current.rollout_id != spec.rollout_id:
        differences.append(f"labelled for rollout {current.rollout_id or 'none'}")
    if current.mirror_service != spec.mirror_service:
        differences.append(f"mirrors to {current.mirror_service} instead of {spec.mirror_service}")
    if current.source_service != spec.source_service:
        differences.append(f"routes {current.source_service} instead of {spec.source_service}")
    if abs(current.percent - spec.percent) > 1e-9:
        differences.append(f"mirrors {current.percent:g}% instead of {spec.percent}%")
    return "; ".join(differences) or None


@dataclass(frozen=True)
class MirrorNote:
    """One thing to record about a mirror object: an audit action with its evidence, and
    the Event (if any) for ``kubectl describe``."""

    action: str
    reason: str
    evidence: Mapping[str, Any]
    event: EmitEvent | None = None
    rollout_id: str | None = None
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class Upkeep:
    """What one pass of the keeper found and did: what to record, and whether the object
    the state asks for is now in place (while mirroring) or none is left (otherwise)."""

    notes: list[MirrorNote]
    in_place: bool = False
    gone: bool = False


@dataclass
class MirrorKeeper:
    """Applies and removes mirror objects (see the module docstring). ``router`` is None
    when the controller has no mirroring configured: then nothing is written and a
    shadowing rollout is told why once."""

    router: MirrorRouter | None
    # The namespaces the controller watches (empty: all), where sweeps list our objects.
    namespaces: tuple[str, ...] = ()
    # The last failure reported per (namespace, champion), so a failing write is recorded
    # once, not on every pass; a success forgets it.
    _failed: dict[tuple[str, str], str] = field(default_factory=dict)

    def keep(self, doc: RolloutDocument, isvc: Mapping[str, Any] | None) -> Upkeep:
        """Make the cluster match the rollout's state; what happened, to record."""
        state = doc.state
        key = (state.namespace, state.name)
        try:
            spec = wanted(doc, isvc)
        except MirrorError as exc:  # a name the mirror object cannot carry
            return Upkeep(self._failure(key, doc, str(exc)))
        if self.router is None:
            if spec is None:
                return Upkeep([], gone=True)
            return Upkeep(self._failure(key, doc, "shadow mirroring is not configured "
                                        "(KSC_SHADOW_MIRROR is none)"))  # fmt: skip
        try:
            current = self.router.observe(state.namespace, state.name)
            if spec is None:
                return Upkeep(self._remove(doc, current), gone=True)
            difference = drift(current, spec)
            if difference is None:
                self._failed.pop(key, None)
                return Upkeep([], in_place=True)
            written = self.router.apply(spec)
        except (MirrorError, KubeError) as exc:
            return Upkeep(self._failure(key, doc, str(exc)))
        self._failed.pop(key, None)
        first = current is None and state.rollout_id == spec.rollout_id and difference == "absent"
        action = "mirror.applied" if first and not self._seen(doc) else "mirror.restored"
        evidence = {**_describe(written), "before": _describe(current) if current else None}
        reason = (
            f"mirroring {spec.percent}% of {spec.source_service} to {spec.mirror_service} "
            f"({written.kind} {written.name})"
        )
        if action == "mirror.restored":
            reason = f"mirror object restored ({difference}): {reason}"
        event = (
            EmitEvent(EventReason.SHADOW_MIRROR_RESTORED, reason, "Warning")
            if action == "mirror.restored"
            else None
        )
        return Upkeep([MirrorNote(action, reason, evidence, event)], in_place=True)

    @staticmethod
    def _seen(doc: RolloutDocument) -> bool:
        """Whether this rollout's mirror was written before (then an absent object was
        removed by someone else); the engine keeps it in the document."""
        return doc.mirror_applied_at is not None

    def _remove(self, doc: RolloutDocument, current: MirrorObservation | None) -> list[MirrorNote]:
        state = doc.state
        if current is None:
            self._failed.pop((state.namespace, state.name), None)
            return []
        if not current.managed:
            return []  # not ours: never touched (the router refuses it too), nor our business
        assert self.router is not None
        self.router.remove(state.namespace, state.name)
        self._failed.pop((state.namespace, state.name), None)
        return [
            MirrorNote(
                "mirror.removed",
                f"mirror object {current.kind} {current.name} removed: the rollout is "
                f"{state.phase.value}",
                _describe(current),
            )
        ]

    def _failure(self, key: tuple[str, str], doc: RolloutDocument, why: str) -> list[MirrorNote]:
        if self._failed.get(key) == why:
            return []
        self._failed[key] = why
        log.warning("mirror.failed", namespace=key[0], name=key[1], error=why)
        message = f"the mirror object could not be written: {why}"
        return [
            MirrorNote(
                "mirror.failed",
                message,
                {"error": why, "wanted": mirroring(doc)},
                EmitEvent(EventReason.SHADOW_MIRROR_FAILED, message, "Warning"),
            )
        ]

    def sweep(self, shadowing: Callable[[str, str], RolloutDocument | None]) -> list[MirrorNote]:
        """Remove every mirror object of ours that no shadowing rollout owns.
        ``shadowing(namespace, champion)`` is the champion's active rollout document."""
        if self.router is None:
            return []
        notes: list[MirrorNote] = []
        try:
            owned = [
                current
                for namespace in self.namespaces or (None,)
                for current in self.router.owned(namespace)
            ]
        except KubeError as exc:  # e.g. the CRD is not installed: said once per sweep
            log.warning("mirror.sweep_failed", error=str(exc))
            return []
        for current in owned:
            if not current.managed:
                continue
            doc = shadowing(current.namespace, current.champion)
            if doc is not None and mirroring(doc) and doc.state.rollout_id == current.rollout_id:
                continue
            why = (
                "no rollout of this InferenceService is shadowing"
                if doc is None or not mirroring(doc)
                else f"it belongs to rollout {current.rollout_id}, not the active one"
            )
            try:
                removed = self.router.remove(current.namespace, current.champion)
            except (MirrorError, KubeError) as exc:
                log.warning("mirror.sweep_failed", namespace=current.namespace,
                            name=current.name, error=str(exc))  # fmt: skip
                continue
            if removed:
                notes.append(
                    MirrorNote(
                        "mirror.removed",
                        f"left-behind mirror object {current.kind} {current.name} removed: {why}",
                        _describe(current),
                        rollout_id=current.rollout_id or None,
                        namespace=current.namespace,
                        name=current.champion,
                    )
                )
        return notes


def _describe(current: MirrorObservation) -> dict[str, Any]:
    return {
        "kind": current.kind,
        "name": current.name,
        "namespace": current.namespace,
        "champion": current.champion,
        "challenger": current.challenger,
        "rollout_id": current.rollout_id,
        "source_service": current.source_service,
        "mirror_service": current.mirror_service,
        "percent": current.percent,
    }
