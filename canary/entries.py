"""The audit entries of a rollout: who, what, the models and the traffic, as the engine
records them for the state machine's decisions, its traffic intents and their outcomes; and
the record of who changed an InferenceService's models, as the admission webhook saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from canary.admission import ModelChange
from canary.audit import Actor, AuditEntry, Fence, Measurement, ModelRef, ObjectRef
from canary.audit.approvals import MODEL_CHANGE_ADMITTED
from canary.document import RolloutDocument
from canary.execution import Pending
from canary.model import RecordAudit, Revision
from canary.routing.base import Observed

__all__ = ["Entries", "admitted_entry", "model_ref", "object_ref", "stable_name"]


class Entries:
    """Builds audit entries for one controller instance (its identity, its leader epoch)."""

    def __init__(self, instance: str, leadership: Callable[[], Fence | None]) -> None:
        self._instance = instance
        self._leadership = leadership

    def entry(
        self,
        doc: RolloutDocument,
        at: datetime,
        *,
        action: str,
        reason: str,
        observed: Observed | None = None,
        actor: Actor | None = None,
        evidence: Mapping[str, Any] | None = None,
        measurements: tuple[Measurement, ...] = (),
        correlation_id: str | None = None,
        traffic_after: Mapping[str, int] | None = None,
    ) -> AuditEntry:
        state = doc.state
        fence = self._leadership()
        return AuditEntry(
            at=at,
            actor=actor or Actor("controller", self._instance),
            action=action,
            rollout_id=state.rollout_id,
            obj=object_ref(observed)
            if observed
            else ObjectRef(state.namespace, state.name, doc.uid),
            stable=model_ref(state.stable),
            canary=model_ref(state.canary),
            traffic_after=traffic_after,
            reason=reason,
            evidence=dict(evidence or {}),
            measurements=measurements,
            leader_epoch=fence.epoch if fence else None,
            correlation_id=correlation_id,
        )

    def from_action(self, doc: RolloutDocument, action: RecordAudit) -> AuditEntry:
        actor = (
            Actor("controller", self._instance)
            if action.actor == "controller" and action.actor_kind is None
            else Actor(action.actor_kind or "human", action.actor)
        )
        return self.entry(
            doc,
            doc.state.phase_entered_at,
            action=action.action,
            reason=action.reason,
            actor=actor,
            evidence=dict(action.details),
        )

    def intent(self, doc: RolloutDocument, pending: Pending) -> AuditEntry:
        stable = stable_name(doc)
        after = {pending.revision: pending.percent}
        if stable and stable != pending.revision:
            after[stable] = 100 - pending.percent
        return self.entry(
            doc,
            doc.state.phase_entered_at,
            action="traffic.intent",
            reason=f"{pending.purpose}: give {pending.revision} {pending.percent}%",
            evidence={"purpose": pending.purpose, "percent": pending.percent},
            correlation_id=pending.correlation_id,
            traffic_after=after,
        )

    def outcome(
        self,
        doc: RolloutDocument,
        pending: Pending,
        at: datetime,
        action: str,
        reason: str,
        observed: Observed,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        return self.entry(
            doc,
            at,
            action=action,
            reason=reason,
            observed=observed,
            evidence={
                "purpose": pending.purpose,
                "percent": pending.percent,
                "attempts": pending.attempts,
                **(extra or {}),
            },
            correlation_id=pending.correlation_id,
        )


def stable_name(doc: RolloutDocument) -> str | None:
    return doc.state.stable.name if doc.state.stable else None


def model_ref(revision: Revision | None) -> ModelRef | None:
    if revision is None:
        return None
    return ModelRef(None, revision.storage_uri, revision.artifact_digest, revision.name)


def object_ref(observed: Observed) -> ObjectRef:
    return ObjectRef(
        observed.namespace,
        observed.name,
        observed.uid,
        observed.generation,
        observed.resource_version,
    )


def admitted_entry(change: ModelChange, at: datetime) -> AuditEntry:
    """The ``model.change_admitted`` record of an admitted update that changed an opted-in
    InferenceService's models: who sent it, as the apiserver authenticated them (name, uid,
    groups; an ``unknown`` actor if the review named no one), what changed, and the
    AdmissionReview's uid."""
    who = change.username or "(no user named in the review)"
    actor = (
        Actor("human", change.username, uid=change.user_uid, groups=change.groups)
        if change.username
        else Actor("unknown", who, uid=change.user_uid, groups=change.groups)
    )
    return AuditEntry(
        at=at,
        actor=actor,
        action=MODEL_CHANGE_ADMITTED,
        obj=ObjectRef(change.namespace, change.name, change.uid),
        canary=ModelRef(None, change.storage_uris[0], None, None) if change.storage_uris else None,
        reason=f"{who} changed the models of {change.namespace}/{change.name} (admitted by the "
        f"webhook): {'; '.join(change.changes)}",
        evidence={
            "storage_uris": list(change.storage_uris),
            "previous_storage_uris": list(change.previous_uris),
            "changes": list(change.changes),
            "admission_uid": change.admission_uid,
        },
    )
