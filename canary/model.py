"""Values the rollout state machine works on: state, observations and actions.

All of them are frozen dataclasses. Nothing here does I/O; the state serialises to a JSON
document (``to_document`` / ``from_document``) that the audit store keeps in its
``rollouts`` table, which is where rollout state lives (never on the InferenceService).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Literal

from pydantic import TypeAdapter

AuditValue = str | int | float | bool
"""A value in an audit decision's details: a JSON scalar, its type kept."""


def audit_details(details: Mapping[str, object]) -> tuple[tuple[str, AuditValue], ...]:
    """Details as the audit trail keeps them, sorted by key and without absent ones: JSON
    scalars with their types (a percent stays a number), an enum as its value, a time as
    ISO 8601, anything else as its text."""

    def kept(value: object) -> AuditValue:
        if isinstance(value, Enum):
            value = value.value
        if isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return tuple(sorted((k, kept(v)) for k, v in details.items() if v is not None))


__all__ = [
    "ACTIVE_PHASES",
    "TERMINAL_PHASES",
    "Action",
    "AnalysisVerdict",
    "ApprovalDecision",
    "ApprovalState",
    "AuditValue",
    "ChallengerGone",
    "ChangeOpened",
    "CloseChange",
    "CommandKind",
    "EmitEvent",
    "EventReason",
    "ManualCommand",
    "Observation",
    "OptedOut",
    "Phase",
    "RecordAudit",
    "RejectCommand",
    "RejectedWrite",
    "RequestApproval",
    "Revision",
    "RolloutState",
    "ServiceDeleted",
    "ServiceObserved",
    "SetMirror",
    "SetTraffic",
    "Tick",
    "TrafficView",
    "Verdict",
    "WriteRejected",
    "audit_details",
]


class Phase(StrEnum):
    PENDING = "Pending"  # new revision detected; waiting for it to become ready
    SHADOWING = "Shadowing"  # live traffic mirrored to the canary; responses discarded
    PROGRESSING = "Progressing"  # the canary serves steps[step_index] percent
    PAUSED = "Paused"  # held for a human
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTING = "Promoting"  # the promotion is written; waiting to see it in status
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"  # the rollback is written; waiting to see it in status
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"  # cannot continue and no traffic action is possible
    SUPERSEDED = "Superseded"  # a newer revision replaced this canary
    ABORTED = "Aborted"  # rolled back on a human's command
    OPTED_OUT = "OptedOut"  # the model owner opted out mid-rollout; no longer managed
    # After a rollout ended (canary.aftercare keeps watching the service):
    DRIFT_REVERTED = "DriftReverted"  # a rolled-back revision got traffic; reverted to 0
    DRIFT_RECORDED = "DriftRecorded"  # ... and the policy said record only
    MANUALLY_ROLLED_BACK = "ManuallyRolledBack"  # a promoted revision rolled back by hand
    # A challenger InferenceService's shadow phase ended:
    REJECTED = "Rejected"  # it failed the comparison (or broke a ceiling); nothing rolls out
    REPORTED = "Reported"  # the comparison was recorded (after: report); nothing rolls out


TERMINAL_PHASES = frozenset(
    {
        Phase.SUCCEEDED,
        Phase.ROLLED_BACK,
        Phase.FAILED,
        Phase.SUPERSEDED,
        Phase.ABORTED,
        Phase.OPTED_OUT,
        Phase.DRIFT_REVERTED,
        Phase.DRIFT_RECORDED,
        Phase.MANUALLY_ROLLED_BACK,
        Phase.REJECTED,
        Phase.REPORTED,
    }
)
ACTIVE_PHASES = frozenset(Phase) - TERMINAL_PHASES


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class EventReason(StrEnum):
    """Kubernetes Event reasons, one per kind of decision."""

    ROLLOUT_STARTED = "RolloutStarted"
    STEP_ADVANCED = "StepAdvanced"
    ANALYSIS_FAILED = "AnalysisFailed"
    APPROVAL_REQUESTED = "ApprovalRequested"
    APPROVED = "Approved"
    APPROVAL_REJECTED = "ApprovalRejected"
    APPROVAL_EXPIRED = "ApprovalExpired"
    APPROVAL_REFUSED = "ApprovalRefused"  # an approval broke segregation of duties
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    POLICY_INVALID = "PolicyInvalid"
    REVISION_NOT_READY = "RevisionNotReady"
    SUPERSEDED = "Superseded"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    WAITING_FOR_WINDOW = "WaitingForWindow"
    TRAFFIC_NOT_CONVERGED = "TrafficNotConverged"
    TRAFFIC_DRIFT = "TrafficDrift"
    SERVICE_DELETED = "ServiceDeleted"
    SHADOW_STARTED = "ShadowStarted"
    SHADOW_STOPPED = "ShadowStopped"  # the challenger broke a ceiling; mirroring stopped
    SHADOW_MIRROR_FAILED = "ShadowMirrorFailed"  # our mirror object could not be written
    SHADOW_MIRROR_RESTORED = "ShadowMirrorRestored"  # someone removed or edited it
    CHALLENGER_REJECTED = "ChallengerRejected"
    CHALLENGER_GONE = "ChallengerGone"
    SHADOW_COMPLETED = "ShadowCompleted"
    COMMAND_REJECTED = "CommandRejected"
    OPTED_OUT = "OptedOut"
    MANUAL_ROLLBACK = "ManualRollback"
    TRAFFIC_WRITE_REJECTED = "TrafficWriteRejected"
    AUDIT_CHECKPOINT = "AuditCheckpoint"  # the chain's head signed and witnessed
    AUDIT_ANCHOR_BROKEN = "AuditAnchorBroken"  # the database disagrees with what was signed


@dataclass(frozen=True)
class Revision:
    """A model version as the cluster names it.

    ``name`` is the Knative revision name, or in Standard mode the canary entry's name plus
    a digest of its predictor spec. ``storage_uri`` is the model location.
    """

    name: str
    storage_uri: str | None = None
    artifact_digest: str | None = None


# ---------------------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficView:
    """What the InferenceService says right now, reduced to what a rollout needs.

    The Kubernetes layer builds this for either KServe mode. ``canary_percent`` is the
    *effective* share each revision serves (from status); ``spec_percent`` is what the spec
    commands for the latest revision, normalised by the router (in Knative mode an unset
    ``canaryTrafficPercent`` means 100). ``converged`` is decided by the router as in
    KSERVE.md §3 (never from observedGeneration).
    """

    latest: Revision  # the newest revision the spec asks for (Knative: latestCreatedRevision)
    stable: Revision | None  # the rolled-out revision (Knative: latestRolledoutRevision)
    split: dict[str, int]  # effective share per revision name, from status
    spec_percent: int  # the share the spec commands for `latest` (Knative: unset means 100)
    converged: bool
    latest_ready: bool
    latest_failed: bool = False  # RevisionFailed / BlockedByFailedLoad
    failure_message: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    # False when a routing object the controller owns does not carry the split the spec
    # commands (Standard mode's HTTPRoute missing or stale, e.g. for a canary entry added by
    # GitOps): the controller has to write it. Knative mode routes from the spec alone.
    routed: bool = True

    def share(self, revision: str) -> int:
        """The effective share of live traffic ``revision`` serves now."""
        return self.split.get(revision, 0)


@dataclass(frozen=True)
class ServiceObserved:
    view: TrafficView
    kind: Literal["service"] = "service"


@dataclass(frozen=True)
class ServiceDeleted:
    kind: Literal["deleted"] = "deleted"


@dataclass(frozen=True)
class Tick:
    """Only time has passed."""

    kind: Literal["tick"] = "tick"


@dataclass(frozen=True)
class AnalysisVerdict:
    """The combined verdict of the gating checks for one step of one canary revision.

    ``sufficient_data`` is False when any gating check lacked data or minimum samples; the
    machine never promotes on such a verdict, whatever it says.
    """

    verdict: Verdict
    revision: str
    step_index: int
    evaluated_at: datetime
    sufficient_data: bool
    summary: str = ""
    fast_fail: bool = False
    # Shadow phase only: why mirroring must stop at once (the challenger is failing badly:
    # an error rate or latency over the policy's ceiling), whatever the policy's ``after``.
    ceiling: str | None = None
    kind: Literal["verdict"] = "verdict"


@dataclass(frozen=True)
class ApprovalDecision:
    """A decision the approval gate has already verified with the change system."""

    approved: bool
    revision: str
    approver: str
    decided_at: datetime
    change_number: str | None = None
    comment: str = ""
    kind: Literal["approval"] = "approval"


@dataclass(frozen=True)
class ChangeOpened:
    """The approval gate opened a change request for a pending approval."""

    revision: str
    change_number: str
    opened_at: datetime
    kind: Literal["change_opened"] = "change_opened"


class CommandKind(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"


@dataclass(frozen=True)
class ManualCommand:
    command: CommandKind
    actor: str
    reason: str
    kind: Literal["command"] = "command"


@dataclass(frozen=True)
class ChallengerGone:
    """The challenger a shadow rollout compares can no longer be compared: its
    InferenceService was deleted, or the champion's ``kserve-canary.io/challenger``
    annotation no longer names it."""

    reason: str
    kind: Literal["challenger_gone"] = "challenger_gone"


@dataclass(frozen=True)
class OptedOut:
    """The InferenceService no longer opts in (``kserve-canary.io/enabled`` removed or
    ``"false"``). ``actor`` is who changed it, as the cluster's managedFields name it
    (``unknown`` when they cannot)."""

    actor: str = "unknown"
    actor_kind: Literal["human", "unknown"] = "unknown"
    # the newest revision now: the opt-out itself may have minted one (KServe copies
    # annotations into the Knative template unless they are on its disallowed list), and a
    # return to the stable revision sets the newest one's share to 0
    latest: str | None = None
    kind: Literal["opted_out"] = "opted_out"


@dataclass(frozen=True)
class WriteRejected:
    """The apiserver refused a traffic write for good (400, 403, 404 of a target other than
    the InferenceService, 405, 413, 415, 422): sending it again cannot help. ``status``,
    ``reason``, ``message`` and ``causes`` are the apiserver's answer."""

    revision: str
    percent: int
    purpose: Literal["start", "step", "promote", "rollback", "reassert"]
    status: int
    reason: str
    message: str
    causes: tuple[str, ...] = ()
    kind: Literal["write_rejected"] = "write_rejected"

    def describe(self) -> str:
        text = f"{self.status} {self.reason}: {self.message or '(no message)'}"
        if self.causes and not all(cause in self.message for cause in self.causes):
            text += f" [{'; '.join(self.causes)}]"
        return text


Observation = (
    ServiceObserved
    | ServiceDeleted
    | ChallengerGone
    | OptedOut
    | Tick
    | AnalysisVerdict
    | ApprovalDecision
    | ChangeOpened
    | ManualCommand
    | WriteRejected
)

# ---------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetTraffic:
    """Give the canary ``percent`` of live traffic.

    ``purpose`` lets a router write each case the safe way for its KServe mode: a
    promotion or a rollback is not merely a number in Standard mode (KSERVE.md §2.5).
    """

    revision: str
    percent: int
    purpose: Literal["start", "step", "promote", "rollback", "reassert"]
    kind: Literal["set_traffic"] = "set_traffic"


@dataclass(frozen=True)
class SetMirror:
    """Mirror ``percent`` of live traffic to the canary (0 removes the mirror)."""

    revision: str
    percent: int
    kind: Literal["set_mirror"] = "set_mirror"


@dataclass(frozen=True)
class RequestApproval:
    revision: str
    step_index: int
    percent: int
    deadline: datetime
    risk_owner_group: str
    kind: Literal["request_approval"] = "request_approval"


@dataclass(frozen=True)
class CloseChange:
    """Close the rollout's change request. ``successful``, ``successful_issues`` and
    ``unsuccessful`` are ServiceNow close codes; ``cancelled`` cancels a change whose
    approval no longer matters (superseded, expired, the InferenceService deleted)."""

    change_number: str | None
    close_code: Literal["successful", "successful_issues", "unsuccessful", "cancelled"]
    note: str
    kind: Literal["close_change"] = "close_change"


@dataclass(frozen=True)
class EmitEvent:
    reason: EventReason
    message: str
    type: Literal["Normal", "Warning"] = "Normal"
    kind: Literal["event"] = "event"


@dataclass(frozen=True)
class RecordAudit:
    """A decision for the audit trail. ``action`` is an audit action name
    (``rollout.started``, ``traffic.intent``, ``analysis.evaluated``, ``promoted``, ...)."""

    action: str
    reason: str
    actor: str = "controller"
    # JSON scalars with their types kept (a percent is a number), sorted by key.
    details: tuple[tuple[str, AuditValue], ...] = ()
    # None: "controller" is the controller, any other actor a human. "unknown": the cluster
    # could not say who made the change (e.g. a field removed, so no manager owns it).
    actor_kind: Literal["human", "unknown"] | None = None
    kind: Literal["audit"] = "audit"


@dataclass(frozen=True)
class RejectCommand:
    """A manual command that does not fit the phase; the caller shows ``reason``."""

    command: CommandKind
    actor: str
    reason: str
    kind: Literal["reject"] = "reject"


Action = (
    SetTraffic | SetMirror | RequestApproval | CloseChange | EmitEvent | RecordAudit | RejectCommand
)

# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalState:
    step_index: int
    requested_at: datetime
    deadline: datetime
    status: Literal["pending", "approved", "rejected", "expired"] = "pending"
    approver: str | None = None
    decided_at: datetime | None = None
    change_number: str | None = None


@dataclass(frozen=True)
class LastVerdict:
    verdict: Verdict
    step_index: int
    evaluated_at: datetime
    sufficient_data: bool
    summary: str = ""


@dataclass(frozen=True)
class RejectedWrite:
    """A traffic write the apiserver refused for good; the rollout is paused on it, and a
    resume sends it again."""

    revision: str
    percent: int
    purpose: Literal["start", "step", "promote", "reassert"]
    status: int
    reason: str
    message: str
    at: datetime


@dataclass(frozen=True)
class RolloutState:
    rollout_id: str
    namespace: str
    name: str
    policy: str
    phase: Phase
    canary: Revision
    stable: Revision | None
    created_at: datetime
    phase_entered_at: datetime
    step_index: int = 0
    target_percent: int = 0
    step_reached_at: datetime | None = None  # when the status first showed the step's split
    traffic_requested_at: datetime | None = None  # when the current target was written
    paused_from: Phase | None = None
    pause_reason: str | None = None
    approval: ApprovalState | None = None
    last_verdict: LastVerdict | None = None
    last_view: TrafficView | None = None
    waiting_for: str | None = None  # why the rollout is not moving, for `canary status`
    outcome: str | None = None  # why a terminal phase was reached
    rollback_reason: str | None = None
    aborted_by: str | None = None  # set when a human's abort caused the rollback
    next_check_at: datetime | None = None
    # After the rollout ended: the share last seen and recorded for the watched revision
    # (canary.aftercare), so a change is recorded once, not on every resync.
    watched_percent: int | None = None
    # Paused because the apiserver refused this write; resuming sends it again.
    rejected_write: RejectedWrite | None = None
    history: tuple[str, ...] = field(default=())  # phases visited, for status and tests
    # Who started the rollout, as the apiserver authenticated them (a `canary rollout start`
    # command), if known: they may not approve its promotion.
    started_by: str | None = None
    # The challenger InferenceService whose model this rollout shadows (and, when the
    # comparison gates, then rolls out on the champion); None for a rollout of the
    # champion's own new model (a Standard-mode dark launch when it shadows).
    challenger: str | None = None
    # The challenger rollout whose passing shadow this model already had (its canary does
    # not shadow again).
    shadowed_by: str | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def with_phase(self, phase: Phase, now: datetime) -> RolloutState:
        if phase is self.phase:
            return self
        return replace(self, phase=phase, phase_entered_at=now, history=(*self.history, phase))

    def to_document(self) -> dict[str, Any]:
        result: dict[str, Any] = _STATE_ADAPTER.dump_python(self, mode="json")
        return result

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RolloutState:
        return _STATE_ADAPTER.validate_python(document)


_STATE_ADAPTER: TypeAdapter[RolloutState] = TypeAdapter(RolloutState)
