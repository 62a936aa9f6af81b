"""The evidence dossier of one rollout: what happened, who decided, on what evidence, and
whether the records it comes from are intact. PURE: standard library and the audit record
types only, no I/O.

:func:`build_dossier` reads what the audit store holds about a rollout (its ``rollouts``
row if there is one, its audit records in sequence order, its ``approvals`` rows and a
chain-verification summary) and returns a :class:`Dossier`: a frozen value that
:mod:`canary.evidence.report` renders as HTML and that :meth:`Dossier.to_json` /
:meth:`Dossier.from_json` carry as JSON data (timestamps and non-finite numbers as the
audit trail's canonical JSON writes them; see :mod:`canary.audit.records`).

What the records are taken to mean (as the engine writes them, see ``canary.engine``,
``canary.entries`` and ``canary.machine``):

* the share of traffic each revision *served* changes only on evidence: the split the
  status showed when an intent was recorded (``traffic_before``), a step the status showed
  (``traffic.shifted``), a promotion or rollback the status showed (``promoted``,
  ``rolled_back``), and the shares seen after the rollout (``traffic.drift``,
  ``traffic.manual_*``). What was *asked* is a ``traffic.intent``; its outcome
  (``traffic.applied`` / ``failed`` / ``abandoned``, same correlation id) says whether the
  write happened, which is not the same as the status showing it;
* analysis evidence is ``analysis.evaluated`` with its measurements, at the step its
  ``evidence.step`` names (``-1``: the shadow comparison);
* approvals come from the ``approval.*`` records, completed (never overruled) by the
  ``approvals`` rows, which are mutable: an event known only from a row has no ``seq``.

Records of actions this module does not know, of another rollout, or that it cannot read,
never break the dossier: they are listed as other events.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

from canary.audit.records import (
    JSON,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    ChainReport,
    Measurement,
    ModelRef,
    RolloutRow,
    canonical_json,
    compute_record_hash,
    decode_float,
    normalise,
    parse_body,
    parse_timestamp,
)

__all__ = [
    "DOSSIER_VERSION",
    "SHADOW_STEP",
    "TERMINAL_PHASES",
    "AnalysisRound",
    "ApprovalEvent",
    "ApprovalRequest",
    "ChainVerification",
    "CheckHistory",
    "Dossier",
    "Evaluation",
    "LoggedRecord",
    "ManualAction",
    "ModelVersion",
    "OtherEvent",
    "Person",
    "RecordCheck",
    "Share",
    "Step",
    "Summary",
    "TrafficIntent",
    "TrafficPoint",
    "Verification",
    "build_dossier",
    "category_of",
    "value_limit",
]

DOSSIER_VERSION: Final = 1
"""Version of the dossier's JSON layout (the key ``"version"``); :meth:`Dossier.from_json`
reads this version only."""

SHADOW_STEP: Final = -1
"""The step index of the shadow comparison (as ``canary.machine.SHADOW_STEP``)."""

TERMINAL_PHASES: Final = frozenset(
    {
        "Succeeded", "RolledBack", "Failed", "Superseded", "Aborted", "OptedOut",
        "DriftReverted", "DriftRecorded", "ManuallyRolledBack", "Rejected", "Reported",
    }
)  # fmt: skip
"""The phases in which a rollout has ended (``canary.model.TERMINAL_PHASES``' values)."""

# The records that end a rollout carry the phase it ended in (``evidence.phase``).
_ENDING_ACTIONS: Final = frozenset(
    {
        "promoted", "rolled_back", "rollout.failed", "rollout.superseded",
        "rollout.opted_out", "shadow.passed", "shadow.reported", "shadow.rejected",
        "shadow.ended", "shadow.aborted",
    }
)  # fmt: skip

_CATEGORIES: Final[Mapping[str, str]] = {
    "rollout.started": "start",
    "shadow.challenger_detected": "start",
    "traffic.intent": "traffic",
    "traffic.applied": "traffic",
    "traffic.failed": "traffic",
    "traffic.abandoned": "traffic",
    "traffic.shifted": "traffic",
    "traffic.retry": "traffic",
    "traffic.rejected": "traffic",
    "traffic.drift": "traffic",
    "traffic.manual_restore": "manual",
    "traffic.manual_rollback": "manual",
    "model.change_admitted": "manual",
    "rollout.step_advanced": "step",
    "analysis.evaluated": "analysis",
    "rollout.paused": "pause",
    "rollout.promoting": "promotion",
    "promoted": "promotion",
    "rollout.rolling_back": "rollback",
    "rolled_back": "rollback",
    "rollout.failed": "end",
    "rollout.superseded": "end",
    "rollout.opted_out": "end",
    "policy.invalid": "policy",
    "approval.requested": "approval",
    "approval.change_opened": "approval",
    "approval.verified": "approval",
    "approval.rejected": "approval",
    "approval.expired": "approval",
    "approval.refused": "approval",
    "approval.late": "approval",
    "approval.change_closed": "approval",
    "shadow.started": "shadow",
    "shadow.passed": "shadow",
    "shadow.reported": "shadow",
    "shadow.rejected": "shadow",
    "shadow.ended": "shadow",
    "shadow.aborted": "shadow",
    "mirror.applied": "shadow",
    "mirror.restored": "shadow",
    "mirror.removed": "shadow",
    "mirror.failed": "shadow",
}

_STEP_ENDS: Final = frozenset(
    {"shadow.passed", "shadow.reported", "rollout.promoting", "rollout.rolling_back"}
)
_REFUSED_MANUAL: Final = frozenset({"manual.rejected", "manual.denied"})
# The command queue's own records (canary.audit.actors): the person's action is the record
# the command caused, so these are not listed again as one.
_QUEUE_RECORDS: Final = frozenset({"manual.requested", "manual.settled", "manual.linked"})
_OUTCOMES: Final = frozenset({"traffic.applied", "traffic.failed", "traffic.abandoned"})

IntentOutcome = Literal["applied", "failed", "abandoned", "unconfirmed"]
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]


def category_of(action: str) -> str:
    """What an action is about: ``start``, ``traffic``, ``step``, ``analysis``, ``pause``,
    ``promotion``, ``rollback``, ``end``, ``approval``, ``manual``, ``shadow``, ``policy``,
    or ``other`` for an action this module does not know."""
    if action in _CATEGORIES:
        return _CATEGORIES[action]
    if action.startswith("manual."):
        return "manual"
    return "other"


# --------------------------------------------------------------------------------------------
# the values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """Who did something, as the record names them (``controller``, ``human``, ...)."""

    kind: str
    id: str
    uid: str | None = None
    groups: tuple[str, ...] = ()

    @classmethod
    def of(cls, actor: Actor) -> Person:
        return cls(actor.kind, actor.id, actor.uid, tuple(actor.groups))

    def describe(self) -> str:
        """``id (kind)``, the way a person reads it."""
        return f"{self.id} ({self.kind})"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A model version as deployed."""

    revision: str | None
    model_name: str | None = None
    storage_uri: str | None = None
    artifact_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """The rollout at a glance. ``phase`` is the phase it is in (or ended in), ``reason``
    why; ``ended_at`` is None while it is in progress (then ``in_progress``)."""

    rollout_id: str
    namespace: str | None
    name: str | None
    isvc_uid: str | None
    policy: str | None
    mode: str | None
    policy_steps: tuple[int, ...]
    stable: ModelVersion | None
    canary: ModelVersion | None
    challenger: str | None
    started_by: Person | None
    started_by_source: str | None  # which record or field says so
    detected_by: Person | None  # who recorded the start (the controller replica)
    started_at: datetime | None
    ended_at: datetime | None
    phase: str | None
    reason: str | None
    in_progress: bool
    first_seq: int | None
    last_seq: int | None
    records: int

    def duration(self, as_of: datetime) -> timedelta | None:
        """From the start to the end (or to ``as_of`` while in progress)."""
        if self.started_at is None:
            return None
        end = self.ended_at or as_of
        return max(end - self.started_at, timedelta(0))


@dataclass(frozen=True, slots=True)
class Share:
    """One revision's share of live traffic, in percent."""

    revision: str
    percent: int


@dataclass(frozen=True, slots=True)
class TrafficPoint:
    """The shares of live traffic the record ``seq`` shows in force from ``at``."""

    at: datetime
    seq: int
    action: str
    shares: tuple[Share, ...]

    def share(self, revision: str) -> int | None:
        for item in self.shares:
            if item.revision == revision:
                return item.percent
        return None


@dataclass(frozen=True, slots=True)
class TrafficIntent:
    """A traffic change the controller (or a person's command) committed to make, and what
    became of it. ``outcome`` is ``unconfirmed`` when no outcome record follows; ``seen_at``
    is when a later record showed the share in force (None: never seen)."""

    seq: int
    at: datetime
    correlation_id: str | None
    actor: Person
    purpose: str | None
    revision: str | None  # None: a new model that has no revision yet
    storage_uri: str | None
    percent: int | None
    before: tuple[Share, ...]
    after: tuple[Share, ...]
    reason: str | None
    outcome: IntentOutcome
    outcome_seq: int | None
    outcome_at: datetime | None
    outcome_reason: str | None
    seen_at: datetime | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluation of one check, as measured. ``limit`` is the threshold in the values'
    own units when the measurement allows it (see :func:`value_limit`)."""

    seq: int
    at: datetime
    canary_value: float | None
    baseline_value: float | None
    canary_samples: int | None
    baseline_samples: int | None
    statistic: float | None
    threshold: float | None
    limit: float | None
    verdict: str
    gating: str | None
    dry_run: bool
    message: str | None
    query: str
    prometheus_url: str
    response_digest: str


@dataclass(frozen=True, slots=True)
class CheckHistory:
    """Every evaluation of one check at one step, oldest first."""

    name: str
    evaluations: tuple[Evaluation, ...]

    @property
    def latest(self) -> Evaluation | None:
        return self.evaluations[-1] if self.evaluations else None


@dataclass(frozen=True, slots=True)
class AnalysisRound:
    """One ``analysis.evaluated`` record: the round's verdict over all its checks."""

    seq: int
    at: datetime
    verdict: str
    sufficient_data: bool | None
    summary: str | None
    fast_path: bool


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the rollout (``index`` -1: the shadow comparison). ``requested_at``: the
    step was decided; ``reached_at``: the status showed its split (for the shadow, the
    mirror started); ``ended_at``: the next step, promotion, rollback or end."""

    index: int
    percent: int | None
    requested_at: datetime | None
    reached_at: datetime | None
    ended_at: datetime | None
    rounds: tuple[AnalysisRound, ...]
    checks: tuple[CheckHistory, ...]

    @property
    def shadow(self) -> bool:
        return self.index == SHADOW_STEP


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """A moment in an approval's life. ``seq`` None: known only from the ``approvals`` row
    (mutable, not chained)."""

    at: datetime
    seq: int | None
    action: str
    actor: Person | None
    text: str
    change_number: str | None = None
    webhook_id: str | None = None
    payload_digest: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One request for approval (a step's attempt) and how it was settled. ``discrepancy``
    says where the ``approvals`` row disagrees with the chained records."""

    step_index: int | None
    percent: int | None
    revision: str | None
    attempt: int
    gate: str | None
    risk_owner_group: str | None
    requested_at: datetime | None
    requested_by: str | None
    deadline: datetime | None
    state: ApprovalStatus
    change_number: str | None
    change_sys_id: str | None
    approver: str | None
    approver_id: str | None
    decided_at: datetime | None
    comments: str | None
    webhook_id: str | None
    payload_digest: str | None
    close_code: str | None
    closed_at: datetime | None
    late: bool
    discrepancy: str | None
    events: tuple[ApprovalEvent, ...]


@dataclass(frozen=True, slots=True)
class ManualAction:
    """Something a person did or tried: ``reason`` is theirs; ``result`` the controller's
    answer when it refused (then ``accepted`` is False)."""

    seq: int
    at: datetime
    actor: Person
    action: str
    what: str
    reason: str | None
    accepted: bool
    result: str | None


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """One record of the dossier, in the record index."""

    seq: int
    at: datetime
    action: str
    category: str
    actor: Person
    reason: str | None
    record_hash: str
    body_version: int | None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A record the sections above do not show: an unknown action, a record of another
    rollout, or one that could not be read (``note`` says which)."""

    seq: int
    at: datetime
    action: str
    actor: Person
    reason: str | None
    rollout_id: str | None
    evidence_json: str
    note: str | None


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """What verifying the whole chain found (``canary audit verify``), and how far a signed
    checkpoint anchors it outside the database, when one is known.

    ``records_checked`` records passed every check, ending at ``head_seq``/``head_hash``;
    ``first_bad_seq`` and ``problem`` name the first departure from a valid chain. The
    ``anchored_*`` fields: the chain up to ``anchored_seq`` matches a checkpoint signed at
    ``anchored_at`` with the key ``anchor_key_id`` (published to ``anchor_witness``); None
    or 0: no checkpoint anchors it. ``anchor_problems``: what the signed checkpoints say the
    database lost or changed (a truncation, a rewritten record, a checkpoint no trusted key
    signed), each a sentence; any of them fails the verification, even when the chain is
    consistent in itself."""

    ok: bool
    records_checked: int
    head_hash: str
    head_seq: int | None = None
    first_bad_seq: int | None = None
    problem: str | None = None
    verified_at: datetime | None = None
    anchored_seq: int | None = None
    anchored_at: datetime | None = None
    anchor_key_id: str | None = None
    anchor_witness: str | None = None
    anchor_problems: tuple[str, ...] = ()

    @classmethod
    def from_report(
        cls,
        report: ChainReport,
        *,
        head_seq: int | None = None,
        verified_at: datetime | None = None,
        anchored_seq: int | None = None,
        anchored_at: datetime | None = None,
        anchor_key_id: str | None = None,
        anchor_witness: str | None = None,
        anchor_problems: Sequence[str] = (),
    ) -> ChainVerification:
        """The summary of a :class:`~canary.audit.records.ChainReport`."""
        return cls(
            ok=report.ok,
            records_checked=report.records_checked,
            head_hash=report.head_hash,
            head_seq=head_seq,
            first_bad_seq=report.first_bad_seq,
            problem=report.problem,
            verified_at=_utc(verified_at),
            anchored_seq=anchored_seq,
            anchored_at=_utc(anchored_at),
            anchor_key_id=anchor_key_id,
            anchor_witness=anchor_witness,
            anchor_problems=tuple(anchor_problems),
        )

    @property
    def anchored(self) -> bool:
        """Whether a signed checkpoint anchors part of the chain."""
        return bool(self.anchored_seq)

    @property
    def intact(self) -> bool:
        """The chain verified, and no signed checkpoint contradicts the database."""
        return self.ok and not self.anchor_problems

    @property
    def unanchored(self) -> int | None:
        """Records of the chain after the anchored one (not yet anchored); None when no
        checkpoint anchors it or the head is not known."""
        if self.head_seq is None or not self.anchored_seq:
            return None
        return max(self.head_seq - self.anchored_seq, 0)


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """The dossier's own records checked one by one: each stored hash against
    ``sha256(prev_hash + body)``, and each link between two consecutive records it holds.
    ``anchored``/``unanchored``: how many of them a signed checkpoint covers (None: no
    checkpoint known); ``after_break``: how many lie at or after the chain's first bad
    record."""

    checked: int
    mismatched: tuple[int, ...]
    broken_links: tuple[int, ...]
    anchored: int | None
    unanchored: int | None
    after_break: int


@dataclass(frozen=True, slots=True)
class Verification:
    """The chain's verification (None: not verified for this dossier) and the dossier's
    own records checked."""

    chain: ChainVerification | None
    records: RecordCheck

    @property
    def status(self) -> Literal["verified", "failed", "unverified"]:
        """``failed`` when anything is wrong, ``verified`` when the chain verified and every
        record of the dossier checks, ``unverified`` when the chain was not verified."""
        if self.records.mismatched or self.records.broken_links:
            return "failed"
        if self.chain is None:
            return "unverified"
        return "verified" if self.chain.intact else "failed"


@dataclass(frozen=True, slots=True)
class Dossier:
    """Everything about one rollout, as of ``as_of``."""

    version: int
    as_of: datetime
    summary: Summary
    traffic: tuple[TrafficPoint, ...]
    intents: tuple[TrafficIntent, ...]
    steps: tuple[Step, ...]
    approvals: tuple[ApprovalRequest, ...]
    manual: tuple[ManualAction, ...]
    verification: Verification
    log: tuple[LoggedRecord, ...]
    other: tuple[OtherEvent, ...]

    def to_json(self) -> dict[str, JSON]:
        """Plain JSON data (timestamps as UTC ``...Z`` with microseconds, NaN and ±Inf as
        the strings ``"NaN"``, ``"+Inf"``, ``"-Inf"``); :meth:`from_json` reads it back to an
        equal dossier."""
        data = normalise(self)
        assert isinstance(data, dict)
        return data

    def to_json_text(self) -> str:
        """:meth:`to_json` as canonical JSON text (sorted keys, no whitespace)."""
        return canonical_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Dossier:
        """Read what :meth:`to_json` (or :meth:`to_json_text`) wrote. Raises ValueError for
        another layout version, an unknown or missing field, or a value of the wrong type."""
        parsed = _parse(data) if isinstance(data, str) else data
        if parsed.get("version") != DOSSIER_VERSION:
            raise ValueError(
                f"dossier layout version {parsed.get('version')!r} is not {DOSSIER_VERSION}"
            )
        dossier = _decode(cls, parsed, "dossier")
        assert isinstance(dossier, Dossier)
        return dossier


# --------------------------------------------------------------------------------------------
# JSON data back to values
# --------------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} in a dossier")


def _parse(text: str) -> Mapping[str, Any]:
    data = json.loads(text, parse_constant=_refuse_constant)
    if not isinstance(data, dict):
        raise ValueError("a dossier is a JSON object")
    return data


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ValueError(f"{where}: null where a value is required")
        (inner,) = (o for o in options if o is not type(None))
        return _decode(inner, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected an array, got {type(value).__name__}")
        (item, _ellipsis) = typing.get_args(tp)
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = sorted(set(value) - set(names))
        missing = sorted(set(names) - set(value))
        if unknown or missing:
            raise ValueError(f"{where}: unknown fields {unknown}, missing fields {missing}")
        hints = _hints(tp)
        return tp(**{n: _decode(hints[n], value[n], f"{where}.{n}") for n in names})
    if tp is datetime:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a timestamp, got {value!r}")
        return parse_timestamp(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        decoded = decode_float(value)
        return math.nan if decoded is not None and math.isnan(decoded) else decoded
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: cannot decode type {tp!r}")  # a field type this reader lacks


# --------------------------------------------------------------------------------------------
# reading record details (every body version: version 1 kept details as strings)
# --------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    return None


def _time(value: object) -> datetime | None:
    """A time written in a detail or a row: ISO 8601 with a zone (naive: taken as UTC)."""
    if isinstance(value, datetime):
        return _utc(value if value.tzinfo else value.replace(tzinfo=UTC))
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return _utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: float | None) -> float | None:
    """The one NaN object for every NaN, so equal dossiers compare equal."""
    if value is not None and math.isnan(value):
        return math.nan
    return value


def _share_order(share: Share) -> tuple[str, int]:
    return (share.revision, share.percent)


def _shares(split: Mapping[str, int] | None) -> tuple[Share, ...]:
    if not split:
        return ()
    found = ((str(k), _int(v)) for k, v in split.items())
    return tuple(sorted((Share(k, v) for k, v in found if v is not None), key=_share_order))


def _model(ref: ModelRef | None) -> ModelVersion | None:
    if ref is None:
        return None
    return ModelVersion(ref.revision, ref.model_name, ref.storage_uri, ref.artifact_digest)


def _state_model(value: object) -> ModelVersion | None:
    data = _mapping(value)
    if not data:
        return None
    return ModelVersion(
        _text(data.get("name")), None, _text(data.get("storage_uri")),
        _text(data.get("artifact_digest")),
    )  # fmt: skip


def _merge_model(first: ModelVersion | None, second: ModelVersion | None) -> ModelVersion | None:
    """``first`` completed by ``second`` where it knows nothing (same revision only)."""
    if first is None:
        return second
    if second is None or (first.revision and second.revision != first.revision):
        return first
    return ModelVersion(
        first.revision or second.revision,
        first.model_name or second.model_name,
        first.storage_uri or second.storage_uri,
        first.artifact_digest or second.artifact_digest,
    )


def value_limit(m: Measurement) -> float | None:
    """The threshold in the units of the canary's and baseline's values, when the
    measurement shows how it was applied: the statistic is the canary's value (an absolute
    limit: the threshold itself), or its relative change against the baseline,
    ``(canary - baseline) / |baseline|`` (the limit is ``baseline + threshold * |baseline|``).
    None otherwise (a sequential test's or the shadow comparison's statistic is not in the
    values' units)."""
    canary, baseline, statistic, threshold = (
        m.canary_value, m.baseline_value, m.statistic, m.threshold,
    )  # fmt: skip
    if canary is None or statistic is None or threshold is None:
        return None
    if not all(math.isfinite(x) for x in (canary, statistic, threshold)):
        return None
    if math.isclose(statistic, canary, rel_tol=1e-9, abs_tol=1e-12):
        return threshold
    if baseline is None or not math.isfinite(baseline) or baseline == 0:
        return None
    change = (canary - baseline) / abs(baseline)
    if math.isclose(statistic, change, rel_tol=1e-9, abs_tol=1e-12):
        return baseline + threshold * abs(baseline)
    return None


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _first(values: Iterable[_T | None]) -> _T | None:
    for value in values:
        if value is not None:
            return value
    return None


def _revision(ref: ModelRef | None) -> str | None:
    return ref.revision if ref is not None else None


def _rest(percent: int | None) -> int | None:
    return None if percent is None else 100 - percent


def _policy_percent(steps: tuple[int, ...], index: int | None) -> int | None:
    return steps[index] if index is not None and 0 <= index < len(steps) else None


@dataclass
class _StepDraft:
    index: int
    percent: int | None = None
    requested_at: datetime | None = None
    requested_seq: int | None = None
    reached_at: datetime | None = None
    reached_seq: int | None = None
    rounds: list[AnalysisRound] = dataclasses.field(default_factory=list)
    checks: dict[str, list[Evaluation]] = dataclasses.field(default_factory=dict)

    def start_seq(self) -> int:
        seqs = [self.requested_seq, self.reached_seq, *(r.seq for r in self.rounds)]
        return min(s for s in seqs if s is not None)

    def freeze(self, boundaries: Sequence[tuple[int, datetime]]) -> Step:
        start = self.start_seq()
        ended = next((at for seq, at in boundaries if seq > start), None)
        return Step(
            index=self.index,
            percent=self.percent,
            requested_at=self.requested_at,
            reached_at=self.reached_at,
            ended_at=ended,
            rounds=tuple(self.rounds),
            checks=tuple(CheckHistory(name, tuple(e)) for name, e in self.checks.items()),
        )


@dataclass
class _ApprovalDraft:
    step_index: int | None
    revision: str | None
    requested_at: datetime | None
    attempt: int = 1
    percent: int | None = None
    gate: str | None = None
    group: str | None = None
    requested_by: str | None = None
    deadline: datetime | None = None
    state: ApprovalStatus = "pending"
    decided_by_record: bool = False
    change_number: str | None = None
    change_sys_id: str | None = None
    approver: str | None = None
    approver_id: str | None = None
    decided_at: datetime | None = None
    comments: str | None = None
    webhook_id: str | None = None
    payload_digest: str | None = None
    close_code: str | None = None
    closed_at: datetime | None = None
    late: bool = False
    discrepancy: str | None = None
    events: list[ApprovalEvent] = dataclasses.field(default_factory=list)
    row_matched: bool = False

    def freeze(self) -> ApprovalRequest:
        return ApprovalRequest(
            step_index=self.step_index,
            percent=self.percent,
            revision=self.revision,
            attempt=self.attempt,
            gate=self.gate,
            risk_owner_group=self.group,
            requested_at=self.requested_at,
            requested_by=self.requested_by,
            deadline=self.deadline,
            state=self.state,
            change_number=self.change_number,
            change_sys_id=self.change_sys_id,
            approver=self.approver,
            approver_id=self.approver_id,
            decided_at=self.decided_at,
            comments=self.comments,
            webhook_id=self.webhook_id,
            payload_digest=self.payload_digest,
            close_code=self.close_code,
            closed_at=self.closed_at,
            late=self.late,
            discrepancy=self.discrepancy,
            events=tuple(sorted(self.events, key=_event_order)),
        )

    def decide_from_row(self, row: ApprovalRow) -> None:
        """Fill in what only the (mutable) row knows; a decision the records made stands,
        and a row that says otherwise is reported as a discrepancy."""
        decision = row.decision or {}
        self.row_matched = True
        self.step_index = self.step_index if self.step_index is not None else row.step_index
        self.revision = self.revision or row.revision
        self.attempt = row.attempt
        self.percent = self.percent if self.percent is not None else row.percent
        self.gate = self.gate or row.gate
        self.group = self.group or row.risk_owner_group
        self.requested_at = self.requested_at or _utc(row.requested_at)
        self.requested_by = self.requested_by or row.requested_by
        self.deadline = self.deadline or _utc(row.deadline)
        self.change_number = self.change_number or row.change_number
        self.change_sys_id = self.change_sys_id or row.change_sys_id
        self.close_code = self.close_code or row.close_code
        self.closed_at = self.closed_at or _utc(row.closed_at)
        if self.decided_by_record:
            agrees = row.state == self.state or (row.state, self.state) == ("cancelled", "expired")
            if not agrees:
                self.discrepancy = (
                    f"the approvals table says {row.state}; the chained records say {self.state}"
                )
            return
        if row.state in ("approved", "rejected"):
            self.approver = _first([_text(decision.get("approver_name")), row.approver])
            self.approver_id = _text(decision.get("approver"))
            if self.approver_id == self.approver:
                self.approver_id = None
            self.decided_at = _utc(row.decided_at)
            self.comments = _text(decision.get("comments"))
            self.webhook_id = _text(decision.get("webhook_id"))
            self.payload_digest = _text(decision.get("payload_digest"))
            self.discrepancy = (
                f"{row.state} in the approvals table, with no chained record of the decision"
            )
            self.events.append(
                ApprovalEvent(
                    _utc(row.decided_at) or _utc(row.requested_at) or row.requested_at,
                    None,
                    f"approval.{'verified' if row.state == 'approved' else 'rejected'}",
                    Person("unknown", self.approver or "unknown"),
                    f"{row.state} (approvals table only, not chained)",
                    row.change_number,
                    self.webhook_id,
                    self.payload_digest,
                )
            )
        if row.state != "pending":
            self.state = row.state


def _event_order(event: ApprovalEvent) -> tuple[datetime, int]:
    return (event.at, event.seq if event.seq is not None else -1)


class _Builder:
    """Reads the records one by one, in sequence order, then freezes what it gathered."""

    def __init__(self, rollout_id: str, policy_steps: tuple[int, ...]) -> None:
        self.rollout_id = rollout_id
        self.policy_steps = policy_steps
        self.traffic: list[TrafficPoint] = []
        self.intents: list[TrafficIntent] = []
        self.outcomes: dict[str, tuple[int, AuditEntry]] = {}
        self.steps: dict[int, _StepDraft] = {}
        self.boundaries: list[tuple[int, datetime]] = []  # (seq, at): a step ends there
        self.approvals: list[_ApprovalDraft] = []
        self.manual: list[ManualAction] = []
        self.other: list[OtherEvent] = []
        self.started: AuditEntry | None = None
        self.ended: AuditEntry | None = None
        self.starter: tuple[Person, str] | None = None
        self.stable: ModelVersion | None = None
        self.canary: ModelVersion | None = None
        self.challenger: str | None = None
        self.where: tuple[str | None, str | None, str | None] = (None, None, None)

    # -- one record -------------------------------------------------------------------------

    def take(self, record: AuditRecord) -> None:
        entry = record.entry
        if entry.rollout_id is not None and entry.rollout_id != self.rollout_id:
            self.other.append(_other(record, f"a record of rollout {entry.rollout_id}"))
            return
        if category_of(entry.action) == "other":
            self.other.append(_other(record, None))
            return
        try:
            self._read(record.seq, entry)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.other.append(_other(record, f"could not be read: {exc}"))

    def _read(self, seq: int, entry: AuditEntry) -> None:
        action = entry.action
        evidence = _mapping(entry.evidence)
        at = entry.at.astimezone(UTC)
        if entry.rollout_id == self.rollout_id:
            self.stable = _merge_model(_model(entry.stable), self.stable)
            self.canary = _merge_model(_model(entry.canary), self.canary)
            if entry.obj is not None and self.where[0] is None:
                self.where = (entry.obj.namespace, entry.obj.name, entry.obj.uid)
        if action in _ENDING_ACTIONS and _text(evidence.get("phase")) in TERMINAL_PHASES:
            self.ended = self.ended or entry
            self.boundaries.append((seq, at))
        if action == "rollout.started":
            self._started(seq, entry, at, evidence)
        elif action == "shadow.challenger_detected":
            self.started = self.started or entry
            self.challenger = self.challenger or _text(evidence.get("challenger"))
        elif action == "traffic.intent":
            self._intent(seq, entry, at, evidence)
        elif action in _OUTCOMES:
            if entry.correlation_id and entry.correlation_id not in self.outcomes:
                self.outcomes[entry.correlation_id] = (seq, entry)
        elif action == "traffic.shifted":
            self._shifted(seq, entry, at, evidence)
        elif action in ("promoted", "rolled_back"):
            canary, stable = _revision(entry.canary), _revision(entry.stable)
            served = 100 if action == "promoted" else 0
            self._point(seq, at, action, {canary: served, stable: 100 - served})
        elif action == "traffic.drift" and _flag(evidence.get("post_rollout")):
            share = _int(evidence.get("status_share"))
            revision = _text(evidence.get("revision"))
            self._point(seq, at, action, {revision: share, _revision(entry.stable): _rest(share)})
        elif action in ("traffic.manual_restore", "traffic.manual_rollback"):
            share = _int(evidence.get("percent"))
            revision = _text(evidence.get("revision"))
            previous = _text(evidence.get("previous_revision"))
            self._point(seq, at, action, {revision: share, previous: _rest(share)})
        elif action == "rollout.step_advanced":
            self._advanced(seq, at, evidence)
        elif action == "shadow.started":
            step = self._step(SHADOW_STEP)
            step.percent = _first([_int(evidence.get("mirror_percent")), step.percent])
            if step.requested_at is None:
                step.requested_at, step.requested_seq = at, seq
            step.reached_at, step.reached_seq = at, seq
        elif action in _STEP_ENDS:
            self.boundaries.append((seq, at))
        elif action == "analysis.evaluated":
            self._analysis(seq, entry, at, evidence)
        elif action.startswith("approval."):
            self._approval(seq, entry, at, evidence)
        manual = _manual(seq, entry, at, evidence)
        if manual is not None:
            self.manual.append(manual)
        if action == "model.change_admitted" and self.starter is None:
            self.starter = (Person.of(entry.actor), "the admitted model change")

    def _started(
        self, seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
    ) -> None:
        self.started = self.started or entry
        first = _int(evidence.get("first_percent"))
        # A rollout that shadows first starts at 0 %: its first stage is the comparison.
        index = SHADOW_STEP if first == 0 else 0
        step = self._step(index)
        if index == 0:
            step.percent = _first([step.percent, first])
        if step.requested_at is None:
            step.requested_at, step.requested_seq = at, seq

    def _advanced(self, seq: int, at: datetime, evidence: Mapping[str, Any]) -> None:
        index = _int(evidence.get("step"))
        if index is None:
            return
        step = self._step(index)
        step.percent = _first([step.percent, _int(evidence.get("percent"))])
        if step.requested_at is None:
            step.requested_at, step.requested_seq = at, seq
        self.boundaries.append((seq, at))

    # -- traffic ----------------------------------------------------------------------------

    def _point(
        self, seq: int, at: datetime, action: str, split: Mapping[str | None, int | None]
    ) -> None:
        shares = tuple(
            sorted(
                (Share(k, v) for k, v in split.items() if k is not None and v is not None),
                key=_share_order,
            )
        )
        if shares:
            self.traffic.append(TrafficPoint(at, seq, action, shares))

    def _intent(
        self, seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
    ) -> None:
        after = _shares(entry.traffic_after)
        before = _shares(entry.traffic_before)
        stable = _revision(entry.stable)
        purpose = _text(evidence.get("purpose"))
        revision = next((s.revision for s in after if s.revision != stable), None)
        if revision is None and entry.canary is not None:
            revision = entry.canary.revision
        self.intents.append(
            TrafficIntent(
                seq=seq,
                at=at,
                correlation_id=entry.correlation_id,
                actor=Person.of(entry.actor),
                purpose=purpose,
                revision=revision,
                storage_uri=_text(evidence.get("storage_uri"))
                or (entry.canary.storage_uri if entry.canary else None),
                percent=_int(evidence.get("percent")),
                before=before,
                after=after,
                reason=entry.reason,
                outcome="unconfirmed",
                outcome_seq=None,
                outcome_at=None,
                outcome_reason=None,
                seen_at=None,
            )
        )
        if before:
            self._point(seq, at, entry.action, {s.revision: s.percent for s in before})
        if entry.actor.kind == "human" and purpose == "start" and self.starter is None:
            self.starter = (Person.of(entry.actor), "the rollout start command")

    def _shifted(
        self, seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
    ) -> None:
        revision = _text(evidence.get("revision")) or _revision(entry.canary)
        percent = _int(evidence.get("percent"))
        stable = _revision(entry.stable)
        self._point(seq, at, entry.action, {revision: percent, stable: _rest(percent)})
        index = _int(evidence.get("step"))
        if index is not None:
            step = self._step(index)
            step.percent = _first([step.percent, percent])
            if step.reached_at is None:
                step.reached_at, step.reached_seq = at, seq

    # -- steps ------------------------------------------------------------------------------

    def _step(self, index: int) -> _StepDraft:
        if index not in self.steps:
            self.steps[index] = _StepDraft(index, _policy_percent(self.policy_steps, index))
        return self.steps[index]

    def _analysis(
        self, seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
    ) -> None:
        index = _int(evidence.get("step"))
        if index is None:
            index = SHADOW_STEP if _flag(evidence.get("shadow")) else 0
        step = self._step(index)
        step.rounds.append(
            AnalysisRound(
                seq=seq,
                at=at,
                verdict=_text(evidence.get("verdict")) or "unknown",
                sufficient_data=_flag(evidence.get("sufficient_data")),
                summary=entry.reason,
                fast_path=bool(_flag(evidence.get("fast_path"))),
            )
        )
        for m in entry.measurements:
            detail = _mapping(m.detail)
            step.checks.setdefault(m.check, []).append(
                Evaluation(
                    seq=seq,
                    at=m.evaluated_at.astimezone(UTC),
                    canary_value=_number(m.canary_value),
                    baseline_value=_number(m.baseline_value),
                    canary_samples=m.canary_samples,
                    baseline_samples=m.baseline_samples,
                    statistic=_number(m.statistic),
                    threshold=_number(m.threshold),
                    limit=_number(value_limit(m)),
                    verdict=m.verdict,
                    gating=_text(detail.get("gating_outcome")),
                    dry_run=m.dry_run,
                    message=_text(detail.get("message")),
                    query=m.query,
                    prometheus_url=m.prometheus_url,
                    response_digest=m.response_digest,
                )
            )

    # -- approvals --------------------------------------------------------------------------

    def _approval(
        self, seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
    ) -> None:
        action = entry.action
        decision = _mapping(evidence.get("decision"))
        change = _first(
            [entry.change_number, _text(evidence.get("change_number")),
             _text(decision.get("change_number")), _text(evidence.get("change_id"))]
        )  # fmt: skip
        webhook = _first(
            [entry.webhook_id, _text(evidence.get("webhook_id")), _text(decision.get("webhook_id"))]
        )
        digest = _first(
            [entry.payload_digest, _text(evidence.get("payload_digest")),
             _text(decision.get("payload_digest"))]
        )  # fmt: skip
        revision = _text(evidence.get("revision"))
        if action == "approval.requested":
            index = _int(evidence.get("step"))
            draft = _ApprovalDraft(
                step_index=index,
                revision=revision or _revision(entry.canary),
                requested_at=at,
                attempt=1 + sum(1 for a in self.approvals if a.step_index == index),
                percent=_policy_percent(self.policy_steps, index),
                gate=_text(evidence.get("gate")),
                group=_text(evidence.get("group")),
                deadline=_time(evidence.get("deadline")),
            )
            self.approvals.append(draft)
        else:
            draft = self._approval_for(revision, change)
        text = entry.reason or action
        if action == "approval.refused":
            found = "; ".join(
                str(_mapping(v).get("message"))
                for v in evidence.get("violations") or ()
                if _mapping(v).get("message")
            )
            if found and found not in text:
                text = f"{text} ({found})"
        draft.events.append(
            ApprovalEvent(at, seq, action, Person.of(entry.actor), text, change, webhook, digest)
        )
        if change and action not in ("approval.late", "approval.refused"):
            draft.change_number = draft.change_number or change
        draft.change_sys_id = draft.change_sys_id or _first(
            [entry.change_sys_id, _text(evidence.get("change_sys_id")),
             _text(decision.get("change_sys_id"))]
        )  # fmt: skip
        draft.gate = draft.gate or _text(evidence.get("gate"))
        if action in ("approval.verified", "approval.rejected"):
            draft.state = "approved" if action == "approval.verified" else "rejected"
            draft.decided_by_record = True
            draft.approver = _first(
                [entry.approver, _text(decision.get("approver_name")),
                 _text(decision.get("approver")), entry.actor.id]
            )  # fmt: skip
            draft.approver_id = _first(
                [entry.actor.uid, _text(decision.get("approver")), _text(decision.get("uid"))]
            )
            if draft.approver_id == draft.approver:
                draft.approver_id = None
            draft.decided_at = _first(
                [_utc(entry.approval_time), _time(decision.get("decided_at")), at]
            )
            draft.comments = _first(
                [_text(evidence.get("comment")), _text(decision.get("comments"))]
            )
            draft.webhook_id, draft.payload_digest = webhook, digest
        elif action == "approval.expired":
            draft.state = "expired"
            draft.decided_by_record = True
            draft.decided_at = at
        elif action == "approval.late":
            draft.late = True
        elif action == "approval.change_closed":
            draft.close_code = _text(evidence.get("close_code"))
            draft.closed_at = at

    def _approval_for(self, revision: str | None, change: str | None) -> _ApprovalDraft:
        """The request a later approval record belongs to: the one with its change number,
        else the latest of its revision (a request is made up when there is none)."""
        if change:
            for draft in reversed(self.approvals):
                if draft.change_number == change:
                    return draft
        for draft in reversed(self.approvals):
            if revision is None or draft.revision in (None, revision):
                return draft
        draft = _ApprovalDraft(step_index=None, revision=revision, requested_at=None)
        self.approvals.append(draft)
        return draft

    def merge_rows(self, rows: Sequence[ApprovalRow]) -> None:
        """Complete the requests with the ``approvals`` rows (matched by step and revision
        in order of request); a row with no record becomes a request of its own."""
        ordered = sorted(rows, key=lambda r: (r.requested_at, r.step_index, r.attempt, r.id))
        for row in ordered:
            draft = next(
                (
                    d
                    for d in self.approvals
                    if not d.row_matched
                    and d.step_index in (None, row.step_index)
                    and d.revision in (None, row.revision)
                ),
                None,
            )
            if draft is None:
                requested = _utc(row.requested_at) or row.requested_at
                draft = _ApprovalDraft(row.step_index, row.revision, requested)
                draft.events.append(
                    ApprovalEvent(
                        requested, None, "approval.requested",
                        Person("controller", row.requested_by),
                        "requested (approvals table only, not chained)", row.change_number,
                    )
                )  # fmt: skip
                self.approvals.append(draft)
            draft.decide_from_row(row)

    # -- the end ----------------------------------------------------------------------------

    def frozen_intents(self, canary: ModelVersion | None) -> tuple[TrafficIntent, ...]:
        done: list[TrafficIntent] = []
        for intent in self.intents:
            revision = intent.revision
            if revision is None and canary is not None and canary.storage_uri:
                revision = canary.revision if intent.storage_uri == canary.storage_uri else None
            found = self.outcomes.get(intent.correlation_id or "")
            outcome: IntentOutcome = "unconfirmed"
            outcome_seq: int | None = None
            outcome_at: datetime | None = None
            outcome_reason: str | None = None
            if found is not None and found[0] > intent.seq:
                seq, entry = found
                outcome = typing.cast(IntentOutcome, entry.action.removeprefix("traffic."))
                outcome_seq, outcome_reason = seq, entry.reason
                outcome_at = entry.at.astimezone(UTC)
            seen = None
            if revision is not None and intent.percent is not None and outcome == "applied":
                seen = next(
                    (
                        p.at
                        for p in self.traffic
                        if p.seq > intent.seq and p.share(revision) == intent.percent
                    ),
                    None,
                )
            done.append(
                dataclasses.replace(
                    intent,
                    revision=revision,
                    outcome=outcome,
                    outcome_seq=outcome_seq,
                    outcome_at=outcome_at,
                    outcome_reason=outcome_reason,
                    seen_at=seen,
                )
            )
        return tuple(done)


def _manual(
    seq: int, entry: AuditEntry, at: datetime, evidence: Mapping[str, Any]
) -> ManualAction | None:
    """A person's action or attempt, if the record is one."""
    action = entry.action
    refused = action in _REFUSED_MANUAL
    if action in _QUEUE_RECORDS:
        return None
    if refused:
        what = _text(evidence.get("command")) or action.removeprefix("manual.")
    elif action.startswith("manual."):
        what = action.removeprefix("manual.")
    elif action == "traffic.intent" and entry.actor.kind == "human":
        what = "start" if _text(evidence.get("purpose")) == "start" else "traffic"
    elif action in ("traffic.manual_restore", "traffic.manual_rollback"):
        what = "traffic set by hand"
    elif action == "traffic.drift" and entry.actor.kind in ("human", "unknown"):
        what = "traffic changed by hand"
    elif action == "model.change_admitted":
        what = "model change"
    else:
        return None
    reason = _text(evidence.get("reason")) if refused else entry.reason
    return ManualAction(
        seq=seq,
        at=at,
        actor=Person.of(entry.actor),
        action=action,
        what=what,
        reason=reason,
        accepted=not refused,
        result=entry.reason if refused else None,
    )


def _body_version(record: AuditRecord) -> int | None:
    try:
        version = parse_body(record.body).get("v")
    except ValueError:
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _other(record: AuditRecord, note: str | None) -> OtherEvent:
    entry = record.entry
    try:
        evidence = canonical_json(entry.evidence)
    except (TypeError, ValueError) as exc:
        evidence = "{}"
        note = f"{note}; " if note else ""
        note += f"its evidence cannot be shown: {exc}"
    return OtherEvent(
        seq=record.seq,
        at=entry.at.astimezone(UTC),
        action=entry.action,
        actor=Person.of(entry.actor),
        reason=entry.reason,
        rollout_id=entry.rollout_id,
        evidence_json=evidence,
        note=note,
    )


def _record_check(records: Sequence[AuditRecord], chain: ChainVerification | None) -> RecordCheck:
    mismatched = tuple(
        r.seq for r in records if compute_record_hash(r.prev_hash, r.body) != r.record_hash
    )
    by_seq = {r.seq: r for r in records}
    broken = tuple(
        r.seq
        for r in records
        if r.seq - 1 in by_seq and by_seq[r.seq - 1].record_hash != r.prev_hash
    )
    anchored = unanchored = None
    if chain is not None and chain.anchored_seq:
        anchored = sum(1 for r in records if r.seq <= chain.anchored_seq)
        unanchored = len(records) - anchored
    bad = chain.first_bad_seq if chain is not None and not chain.ok else None
    after_break = sum(1 for r in records if bad is not None and r.seq >= bad)
    return RecordCheck(len(records), mismatched, broken, anchored, unanchored, after_break)


def _summary(
    builder: _Builder,
    rollout: RolloutRow | None,
    records: Sequence[AuditRecord],
    policy_steps: tuple[int, ...],
) -> Summary:
    state = _mapping(rollout.state) if rollout is not None else {}
    machine = _mapping(state.get("machine"))
    started = builder.started
    ended = builder.ended
    mine = [r for r in records if r.entry.rollout_id in (None, builder.rollout_id)]
    namespace, name, uid = builder.where
    if rollout is not None:
        namespace, name, uid = rollout.namespace, rollout.name, rollout.isvc_uid or uid
    elif namespace is None and mine and mine[0].entry.obj is not None:
        namespace, name = mine[0].entry.obj.namespace, mine[0].entry.obj.name
    started_by: Person | None = None
    source: str | None = None
    person = _text(machine.get("started_by"))
    if builder.starter is not None and (person is None or builder.starter[0].id == person):
        started_by, source = builder.starter
    elif person is not None:
        started_by, source = Person("human", person), "the rollout's state (started_by)"
    started_evidence = _mapping(started.evidence) if started is not None else {}
    phase = rollout.phase if rollout is not None else None
    reason: str | None = None
    if rollout is not None:
        if phase in TERMINAL_PHASES:
            reason = _text(machine.get("outcome"))
        else:
            reason = _first([_text(machine.get("pause_reason")), _text(machine.get("waiting_for"))])
    if ended is not None:
        phase = phase or _text(_mapping(ended.evidence).get("phase"))
        reason = reason or ended.reason
    ended_at = ended.at.astimezone(UTC) if ended is not None else None
    if ended_at is None and rollout is not None and phase in TERMINAL_PHASES:
        ended_at = _utc(rollout.updated_at)
    in_progress = phase not in TERMINAL_PHASES if phase is not None else ended is None
    return Summary(
        rollout_id=builder.rollout_id,
        namespace=namespace,
        name=name,
        isvc_uid=uid,
        policy=_first(
            [rollout.policy_name if rollout else None, _text(started_evidence.get("policy"))]
        ),
        mode=rollout.mode if rollout is not None else None,
        policy_steps=policy_steps,
        stable=_merge_model(_state_model(machine.get("stable")), builder.stable),
        canary=_merge_model(_state_model(machine.get("canary")), builder.canary),
        challenger=_first([_text(machine.get("challenger")), builder.challenger]),
        started_by=started_by,
        started_by_source=source,
        detected_by=Person.of(started.actor) if started is not None else None,
        started_at=_first(
            [
                started.at.astimezone(UTC) if started is not None else None,
                _utc(rollout.created_at) if rollout is not None else None,
                mine[0].entry.at.astimezone(UTC) if mine else None,
            ]
        ),
        ended_at=None if in_progress else ended_at,
        phase=phase,
        reason=reason,
        in_progress=in_progress,
        first_seq=records[0].seq if records else None,
        last_seq=records[-1].seq if records else None,
        records=len(records),
    )


def _steps_of(policy: Mapping[str, Any]) -> tuple[int, ...]:
    raw = policy.get("steps")
    if not isinstance(raw, list):
        return ()
    steps = [_int(s) for s in raw]
    return tuple(s for s in steps if s is not None)


def _rollout_id(rollout: RolloutRow | None, records: Sequence[AuditRecord]) -> str:
    if rollout is not None:
        return rollout.id
    counts: dict[str, int] = {}
    for record in records:
        if record.entry.rollout_id is not None:
            counts[record.entry.rollout_id] = counts.get(record.entry.rollout_id, 0) + 1
    if not counts:
        raise ValueError(
            "cannot tell which rollout the dossier is about: no rollout row, and no record "
            "names a rollout id"
        )
    return max(counts, key=lambda k: counts[k])  # the first of the most frequent


def build_dossier(
    *,
    rollout: RolloutRow | None,
    records: Sequence[AuditRecord],
    approvals: Sequence[ApprovalRow] = (),
    verification: ChainVerification | None = None,
    as_of: datetime,
) -> Dossier:
    """The dossier of one rollout, from what the audit store holds about it.

    * ``rollout``: its ``rollouts`` row (``AuditStore.get_rollout``), or None when only the
      records are left; its state document gives the policy's steps, the models, who
      started it and why it is where it is.
    * ``records``: its audit records (those whose ``rollout_id`` is the rollout's, plus any
      related record without one, such as the ``traffic.intent`` of the
      ``canary rollout start`` command that began it); sorted by ``seq`` here. A record of
      another rollout or of an unknown action is listed under other events.
    * ``approvals``: its ``approvals`` rows (``AuditStore.approvals_for``).
    * ``verification``: the chain's verification (``AuditStore.verify`` through
      :meth:`ChainVerification.from_report`, with the anchoring checkpoint when known), or
      None when the chain was not verified for this dossier.
    * ``as_of``: when the dossier is made (timezone-aware); a rollout still in progress is
      described as of then.

    Raises ValueError when neither the row nor any record names the rollout, or for a
    naive ``as_of``.
    """
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be timezone-aware")
    ordered = sorted({r.seq: r for r in records}.values(), key=lambda r: r.seq)
    rollout_id = _rollout_id(rollout, ordered)
    state = _mapping(rollout.state) if rollout is not None else {}
    policy_steps = _steps_of(_mapping(state.get("policy")))
    builder = _Builder(rollout_id, policy_steps)
    for record in ordered:
        builder.take(record)
    builder.merge_rows(approvals)
    summary = _summary(builder, rollout, ordered, policy_steps)
    boundaries = sorted(builder.boundaries)
    steps = tuple(builder.steps[i].freeze(boundaries) for i in sorted(builder.steps))
    log = tuple(
        LoggedRecord(
            seq=r.seq,
            at=r.entry.at.astimezone(UTC),
            action=r.entry.action,
            category=category_of(r.entry.action),
            actor=Person.of(r.entry.actor),
            reason=r.entry.reason,
            record_hash=r.record_hash,
            body_version=_body_version(r),
        )
        for r in ordered
    )
    return Dossier(
        version=DOSSIER_VERSION,
        as_of=as_of.astimezone(UTC),
        summary=summary,
        traffic=tuple(builder.traffic),
        intents=builder.frozen_intents(summary.canary),
        steps=steps,
        approvals=tuple(d.freeze() for d in builder.approvals),
        manual=tuple(builder.manual),
        verification=Verification(verification, _record_check(ordered, verification)),
        log=log,
        other=tuple(builder.other),
    )
