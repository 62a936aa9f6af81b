"""The rollout document: everything the engine keeps about one rollout, stored as the
``state`` column of its ``rollouts`` row (machine state, the policy pinned when the rollout
started, traffic intents not yet applied, analysis memory), and the KServe mode it runs in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from analysis import CheckMemory
from analysis.types import BUILTIN_CHECKS
from canary.audit import RolloutRow
from canary.checks import check_definitions, shadow_checks
from canary.execution import Pending
from canary.model import Phase, RolloutState
from canary.policy import RolloutPolicy

__all__ = ["DOCUMENT_VERSION", "RolloutDocument", "mode_of"]

DOCUMENT_VERSION = 1
_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_ANALYSED_PHASES = frozenset({Phase.PROGRESSING, Phase.AWAITING_APPROVAL})


def mode_of(isvc: Mapping[str, Any]) -> Literal["knative", "standard"]:
    """The KServe deployment mode: the recorded status wins, then the annotation."""
    status = isvc.get("status") or {}
    recorded = str(status.get("deploymentMode") or "")
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    wanted = recorded or str(annotations.get(_MODE_ANNOTATION) or "")
    return "standard" if wanted in ("Standard", "RawDeployment") else "knative"


@dataclass(frozen=True)
class RolloutDocument:
    """Everything the engine keeps about one rollout, stored in ``rollouts.state``."""

    state: RolloutState
    policy: RolloutPolicy  # pinned when the rollout started
    mode: Literal["knative", "standard"]
    uid: str
    metric_profile: str
    pending: tuple[Pending, ...] = ()
    next_analysis_at: datetime | None = None
    next_look_at: datetime | None = None  # the next grouped look (fast path)
    memory: Mapping[str, CheckMemory] = field(default_factory=dict)
    retry_at: datetime | None = None  # when unapplied intents are tried again
    # When this rollout's mirror object was first written (canary.mirroring): an absent
    # object after that was removed by someone else, and is restored and recorded as such.
    mirror_applied_at: datetime | None = None
    version: int = 0  # the row version it was read at (0: not stored yet)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": DOCUMENT_VERSION,
            "machine": self.state.to_document(),
            "policy": self.policy.model_dump(mode="json", by_alias=True),
            "mode": self.mode,
            "uid": self.uid,
            "metric_profile": self.metric_profile,
            "pending": [
                {
                    "correlation_id": p.correlation_id,
                    "revision": p.revision,
                    "percent": p.percent,
                    "purpose": p.purpose,
                    "attempts": p.attempts,
                    "last_error": p.last_error,
                }
                for p in self.pending
            ],
            "next_analysis_at": self.next_analysis_at.isoformat()
            if self.next_analysis_at
            else None,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "next_look_at": self.next_look_at.isoformat() if self.next_look_at else None,
            "memory": {name: m.to_json() for name, m in sorted(self.memory.items())},
            "mirror_applied_at": self.mirror_applied_at.isoformat()
            if self.mirror_applied_at
            else None,
        }

    @classmethod
    def from_row(cls, row: RolloutRow) -> RolloutDocument:
        doc = row.state
        if doc.get("v") != DOCUMENT_VERSION:
            raise ValueError(f"rollout {row.id}: unknown state document version {doc.get('v')!r}")
        next_analysis = doc.get("next_analysis_at")
        return cls(
            state=RolloutState.from_document(doc["machine"]),
            policy=RolloutPolicy.model_validate(doc["policy"]),
            mode=doc["mode"],
            uid=doc["uid"],
            metric_profile=doc["metric_profile"],
            pending=tuple(Pending(**p) for p in doc.get("pending", ())),
            next_analysis_at=datetime.fromisoformat(next_analysis) if next_analysis else None,
            memory={name: CheckMemory.from_json(m) for name, m in doc.get("memory", {}).items()},
            retry_at=datetime.fromisoformat(doc["retry_at"]) if doc.get("retry_at") else None,
            next_look_at=datetime.fromisoformat(doc["next_look_at"])
            if doc.get("next_look_at")
            else None,
            mirror_applied_at=datetime.fromisoformat(doc["mirror_applied_at"])
            if doc.get("mirror_applied_at")
            else None,
            version=row.version,
        )

    def evidence_since(self) -> datetime | None:
        """When the evidence the current analysis may use began: the step's split showing
        in status, or, while shadowing, the mirror object's first write. None when nothing
        is analysed now."""
        if self.state.phase in _ANALYSED_PHASES:
            return self.state.step_reached_at
        if self.state.phase is Phase.SHADOWING:
            return self.mirror_applied_at
        return None

    @property
    def reads_looks(self) -> bool:
        """Whether any of the rollout's checks is read on looks (a built-in one): a policy
        of custom queries only is evaluated at its analysis interval, and a look would
        read nothing for it."""
        if self.state.phase is Phase.SHADOWING:
            checks = shadow_checks(self.policy, self.state.challenger)
        else:
            checks = check_definitions(self.policy)
        return any(check.builtin in BUILTIN_CHECKS for check in checks)

    def wake_at(self) -> datetime | None:
        """When the scheduler must call the engine again for this rollout. A look's time
        counts only for a rollout that reads looks: nothing else moves it on, so for any
        other it would be a wake-up in the past, again after every call."""
        if self.state.terminal:
            # a finished rollout's last traffic write (an opt-out's or a drift's revert)
            # is retried like any other until it is carried out
            return (self.retry_at or self.state.phase_entered_at) if self.pending else None
        candidates = [self.state.next_check_at]
        since = self.evidence_since()
        if since is not None:
            # Never analysed at this step yet: due as soon as its split (or, while
            # shadowing, the mirror) is in force.
            candidates.append(self.next_analysis_at or since)
            if self.reads_looks:
                candidates.append(self.next_look_at)
        if self.pending:
            candidates.append(self.retry_at or self.state.phase_entered_at)
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    def row(self, rollout_id: str, now: datetime) -> RolloutRow:
        state = self.state
        return RolloutRow(
            id=rollout_id,
            namespace=state.namespace,
            name=state.name,
            isvc_uid=self.uid,
            policy_name=self.policy.name,
            mode=self.mode,
            phase=state.phase.value,
            step_index=state.step_index,
            canary_revision=state.canary.name,
            stable_revision=state.stable.name if state.stable else None,
            state=self.to_json(),
            created_at=state.created_at,
            updated_at=now,
            next_check_at=self.wake_at(),
            active=not state.terminal or bool(self.pending),
        )
