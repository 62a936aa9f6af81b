"""Point-in-time answers: which revisions of one InferenceService carried its traffic at
instant T, with what share, under which rollout, approved by whom, on what evidence.

Pure: the answer is computed from the service's audit records (``AuditRecord``, in seq
order; those after T are ignored) and the approval rows of the rollouts involved. The audit
store (:mod:`canary.audit.history`) selects the records; this module decides what they mean.
An answer for T depends only on records written at or before T, so it never changes as the
trail grows, and every answer names the record it rests on (``as_of``: seq and time), so an
auditor can look it up and check it against the hash chain.

How the engine records traffic, and what that lets us say
---------------------------------------------------------

* ``traffic.intent`` is committed *before* the controller writes a split. It holds the split
  the status showed at that moment (``traffic_before``: the effective share per revision)
  and the split it commands (``traffic_after``). Its outcome, linked by ``correlation_id``,
  comes *after* the write: ``traffic.applied`` (the apiserver accepted the spec),
  ``traffic.failed`` (refused for good) or ``traffic.abandoned`` (not sent). A write that
  failed and will be retried has no outcome yet.
* The status showing the commanded split is recorded separately, by the state machine:
  ``traffic.shifted`` (the canary at the step's percent), ``shadow.started`` (the canary at
  0 %, mirrored only), ``promoted`` (the canary at 100 %) and ``rolled_back`` (the stable
  revision at 100 %).

The rules, in the order the records come:

* **Before the first record that establishes a split, nothing is known**: the answer is
  ``unknown``, never "the stable revision at 100 %".
* **An intent opens a transition.** From the intent until its confirmed outcome the split
  is ``in_transition``: the answer gives the split before (as the status showed it at the
  intent) and the split after, and says so. KServe moves traffic at some moment after the
  write, which the records cannot place more exactly. The transition ends with the status
  record above for the writes the state machine watches (a live rollout's start, step,
  promotion and rollback), and with ``traffic.applied`` for the writes it does not watch (a
  reassertion after a drift, a write of a rollout that already ended: an opt-out's return
  to the stable revision, the revert of a drift after a rollback): the answer is then the
  commanded split, with basis ``written`` (accepted by the apiserver; the status was not
  recorded).
* **An intent that failed or was abandoned changed nothing**: the split is the one before
  it, as of the failure record.
* **A model change written by the controller** (``canary rollout start``, or a challenger's
  model after its passed shadow) is an intent without ``traffic_after``: KServe creates a
  new revision, not yet named, which takes the commanded percent once it is ready. The
  answer is in transition towards that revision (the ``after`` split is not known) until
  the rollout that follows names it.
* **``rollout.started``** without an intent in the same commit (the admission webhook or
  the writer of the model change already set the first step) opens a transition from the
  split known before (unknown if none was) to the first step, until the status shows it.
  That covers a **supersede**: the replaced canary keeps its share, as the records before
  say, until the new rollout's records (its intent's observed split, then the status) say
  otherwise; the supersede record itself moves no traffic.
* **A hand edit is known only from when it was observed.** ``traffic.drift`` (during a
  rollout: the share the spec commands; after one: the share the status showed) means the
  split changed at some moment between the previous record and the drift record; the answer
  says ``observed at`` that record's time, with basis ``drift``. For instants before the
  drift record the answer is what the earlier records say. ``traffic.manual_rollback`` and
  ``traffic.manual_restore`` (a promoted revision's share set by hand) are read the same way.
* **After promotion** the promoted revision has 100 %; **after a rollback** the stable
  revision has 100 %.
* A deleted (or re-created) InferenceService (``rollout.failed``) makes the split unknown.
* A challenger InferenceService's shadow phase never carries the champion's traffic (it is
  mirrored only): its records are kept for the rollout's phase, never for the split.

Each revision in an answer carries its model (from the records' ``ModelRef``: model name,
storageUri, artifact digest, revision name), the rollout it belongs to (the rollout whose
canary it was: for the stable revision, the rollout that promoted it, if the records hold
it) with that rollout's phase at T, the approval that authorised its promotion as it stood
at T, and the analysis evidence recorded up to T: the rollout's ``analysis.evaluated``
measurements evaluated at or before T, per check the latest verdict and values and how many
evaluations there were. Evidence recorded after T is not included, even if it was measured
before T: at T it was not yet evidence.

Limits, stated so an answer is never read as more than it is: revision names are the keys
of the recorded splits; in KServe's Standard mode a canary entry keeps its name when its
model is replaced, and then the name's model is the one the newest record gives it. Time
order is taken to follow seq order (one leader's clock at a time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

from canary.audit.records import (
    JSON,
    ApprovalRow,
    AuditRecord,
    Measurement,
    ModelRef,
    normalise,
)
from canary.model import TERMINAL_PHASES, Phase

__all__ = [
    "ApprovalAt",
    "AsOf",
    "CheckEvidence",
    "Evidence",
    "PointInTime",
    "RevisionAt",
    "RolloutAt",
    "approval_at",
    "evidence_from",
    "point_in_time",
    "provenance_names",
    "traffic_at",
    "with_support",
]

Knowledge = Literal["unknown", "settled", "in_transition"]
Basis = Literal["status", "observed", "written", "drift", "failed", "rollout", "none"]
ApprovalStatus = Literal[
    "approved", "pending", "rejected", "expired", "cancelled", "none_required", "not_requested"
]

_TERMINAL: Final = frozenset(p.value for p in TERMINAL_PHASES)
_WATCHED_PURPOSES: Final = frozenset({"start", "step", "promote", "rollback"})
_OUTCOMES: Final = frozenset({"traffic.applied", "traffic.failed", "traffic.abandoned"})
_PHASE_OF: Final[Mapping[str, str]] = {
    "rollout.started": Phase.PENDING.value,
    "shadow.challenger_detected": Phase.PENDING.value,
    "shadow.started": Phase.SHADOWING.value,
    "traffic.shifted": Phase.PROGRESSING.value,
    "rollout.step_advanced": Phase.PROGRESSING.value,
    "approval.requested": Phase.AWAITING_APPROVAL.value,
    "rollout.promoting": Phase.PROMOTING.value,
    "manual.promote": Phase.PROMOTING.value,
    "rollout.rolling_back": Phase.ROLLING_BACK.value,
    "traffic.manual_rollback": Phase.MANUALLY_ROLLED_BACK.value,
    "traffic.manual_restore": Phase.SUCCEEDED.value,
}
_ENDINGS: Final = frozenset(
    {
        "promoted",
        "rolled_back",
        "rollout.superseded",
        "rollout.failed",
        "rollout.opted_out",
        "shadow.ended",
        "shadow.aborted",
        "shadow.rejected",
    }
)


# --------------------------------------------------------------------------------------------
# the answer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsOf:
    """A record an answer rests on: look it up by ``seq`` and check it against the chain."""

    seq: int
    at: datetime
    action: str


@dataclass(frozen=True, slots=True)
class RolloutAt:
    """The rollout a revision belongs to, and its phase at T as its records say."""

    id: str
    phase: str | None
    started: AsOf | None  # its rollout.started (or challenger detection), when seen


@dataclass(frozen=True, slots=True)
class ApprovalAt:
    """The approval that authorised a revision's promotion, as it stood at T.

    ``approved``: ``change_number``, ``approver`` and ``approved_at`` say who and when.
    ``pending``: requested at or before T and not decided by then. ``none_required``: the
    rollout promoted the revision without asking. ``not_requested``: nothing asked by T.
    """

    status: ApprovalStatus
    change_number: str | None = None
    approver: str | None = None
    approved_at: datetime | None = None  # the decision's time (for every decided status)
    requested_at: datetime | None = None
    gate: str | None = None
    step_index: int | None = None
    percent: int | None = None
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class CheckEvidence:
    """One check's evidence up to T: its latest measurement and how many there were."""

    check: str
    evaluations: int
    latest: Measurement
    audit_seq: int  # the analysis.evaluated record holding ``latest``


@dataclass(frozen=True, slots=True)
class Evidence:
    """A rollout's analysis evidence up to T."""

    rollout_id: str
    evaluations: int  # measurements, every check
    checks: tuple[CheckEvidence, ...]


@dataclass(frozen=True, slots=True)
class RevisionAt:
    """One revision that carried traffic at T (or did on one side of a transition).

    Settled: ``percent``. In transition: ``percent_before`` and ``percent_after`` (``None``
    when the split after is not known yet)."""

    revision: str | None
    model: ModelRef
    percent: int | None = None
    percent_before: int | None = None
    percent_after: int | None = None
    rollout: RolloutAt | None = None
    approval: ApprovalAt | None = None
    evidence: Evidence | None = None


@dataclass(frozen=True, slots=True)
class PointInTime:
    """The answer for one InferenceService at ``at``.

    * ``unknown``: no record establishes the split (``split`` and ``before`` are None).
    * ``settled``: ``split`` is in force, established by ``as_of`` (``basis`` says how).
    * ``in_transition``: the split moved from ``before`` towards ``split`` (None when the
      new revision is not named yet) at some moment after ``as_of``, and no record had
      confirmed it by ``at``; ``written`` is the accepted write, if one was recorded.

    ``through`` is the last record taken into account (the newest at or before ``at``, not
    counting ``analysis.evaluated`` records, which are evidence, not records of the split).
    Shares are whole percents; revisions at 0 % are left out.
    """

    namespace: str
    name: str
    at: datetime
    knowledge: Knowledge
    basis: Basis
    split: Mapping[str, int] | None
    before: Mapping[str, int] | None
    revisions: tuple[RevisionAt, ...]
    as_of: AsOf | None
    written: AsOf | None
    through: AsOf | None
    note: str

    def rollout_ids(self) -> tuple[str, ...]:
        """The rollouts the revisions belong to (for their approvals and evidence)."""
        seen: dict[str, None] = {}
        for revision in self.revisions:
            if revision.rollout is not None:
                seen[revision.rollout.id] = None
        return tuple(seen)

    def to_json(self) -> dict[str, JSON]:
        """The answer as plain JSON data under the audit trail's canonical rules
        (:func:`canary.audit.records.canonical_json` serialises it byte for byte)."""
        data = normalise(self)
        assert isinstance(data, dict)
        return data


# --------------------------------------------------------------------------------------------
# small readers (bodies of every format version: v1 kept details as strings)
# --------------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _true(value: Any) -> bool:
    return value is True or value in ("True", "true")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _split(values: Mapping[str, int] | None) -> dict[str, int] | None:
    if values is None:
        return None
    return {name: int(share) for name, share in sorted(values.items()) if share}


def _pair(canary: str | None, percent: int, stable: str | None) -> dict[str, int]:
    """The split of a canary at ``percent`` against its stable revision."""
    out: dict[str, int] = {}
    if canary:
        out[canary] = percent
    if stable and stable != canary:
        out[stable] = out.get(stable, 0) + 100 - percent
    elif not canary and stable:
        out[stable] = 100
    return {k: v for k, v in sorted(out.items()) if v}


def _as_of(record: AuditRecord) -> AsOf:
    return AsOf(record.seq, record.entry.at, record.entry.action)


def _when(mark: AsOf | None) -> str:
    if mark is None:
        return "(no record)"
    return f"seq {mark.seq} ({mark.action} at {mark.at.isoformat()})"


# --------------------------------------------------------------------------------------------
# replaying the records
# --------------------------------------------------------------------------------------------


@dataclass
class _Rollout:
    id: str
    phase: str | None = None
    paused_from: str | None = None
    challenger: bool = False
    started: AsOf | None = None


@dataclass
class _State:
    """What the records said so far, record by record."""

    knowledge: Knowledge = "unknown"
    basis: Basis = "none"
    split: dict[str, int] | None = None
    before: dict[str, int] | None = None
    as_of: AsOf | None = None
    written: AsOf | None = None
    through: AsOf | None = None
    note: str = "no record establishes the split"
    correlation: str | None = None  # the open intent
    awaits: Literal["status", "write", "rollout"] | None = None
    mover: str | None = None  # the rollout whose write the open transition is
    rollouts: dict[str, _Rollout] = field(default_factory=dict)
    models: dict[str, ModelRef] = field(default_factory=dict)
    owners: dict[str, str | None] = field(default_factory=dict)

    # -- knowledge ---------------------------------------------------------------------------

    def settle(self, split: dict[str, int], basis: Basis, mark: AsOf, note: str) -> None:
        self.knowledge, self.basis, self.split, self.before = "settled", basis, split, None
        self.as_of, self.written, self.note = mark, None, note
        self.correlation, self.awaits, self.mover = None, None, None

    def forget(self, mark: AsOf, note: str) -> None:
        self.knowledge, self.basis, self.split, self.before = "unknown", "none", None, None
        self.as_of, self.written, self.note = mark, None, note
        self.correlation, self.awaits, self.mover = None, None, None

    def begin(
        self,
        before: dict[str, int] | None,
        after: dict[str, int] | None,
        basis: Basis,
        mark: AsOf,
        note: str,
        *,
        correlation: str | None,
        awaits: Literal["status", "write", "rollout"],
        mover: str | None,
    ) -> None:
        if before is not None and after is not None and before == after:
            # nothing moves: the split stays as it is, as this record shows
            kept: Basis = "observed" if basis == "observed" else self.basis
            self.settle(before, kept, mark, note + "; the split already was that")
            return
        self.knowledge, self.basis, self.split, self.before = "in_transition", basis, after, before
        self.as_of, self.written, self.note = mark, None, note
        self.correlation, self.awaits, self.mover = correlation, awaits, mover

    def ended(self, rollout_id: str) -> None:
        """``rollout_id`` ended: a write of it that waited for the status to show it will
        not be confirmed any more, so its accepted write ends the transition."""
        if self.knowledge != "in_transition" or self.mover != rollout_id:
            return
        if self.awaits == "status":
            self.awaits = "write"
        if self.awaits == "write" and self.written is not None and self.split is not None:
            written = self.written
            self.settle(
                self.split,
                "written",
                written,
                "the controller's write of this split was accepted; its rollout ended before "
                "the status confirmation was recorded",
            )

    def current(self) -> dict[str, int] | None:
        """The split known now, to start a transition from (None: not known)."""
        if self.knowledge == "settled":
            return self.split
        if self.knowledge == "in_transition" and self.awaits == "rollout":
            return self.before  # a model change: the new revision has no share yet
        return None

    # -- context -----------------------------------------------------------------------------

    def rollout(self, rollout_id: str) -> _Rollout:
        found = self.rollouts.get(rollout_id)
        if found is None:
            found = self.rollouts[rollout_id] = _Rollout(rollout_id)
        return found

    def learn_model(self, ref: ModelRef | None) -> None:
        if ref is None or not ref.revision:
            return
        name = ref.revision
        known = self.models.get(name)
        if known is not None and ref.storage_uri is None and known.storage_uri is not None:
            # Knative status names a stable revision without its model; keep what we knew
            ref = replace(
                ref,
                storage_uri=known.storage_uri,
                artifact_digest=ref.artifact_digest or known.artifact_digest,
                model_name=ref.model_name or known.model_name,
            )
        self.models[name] = ref

    def learn_owner(self, ref: ModelRef | None, rollout_id: str | None) -> None:
        """The rollout whose canary ``ref`` is (a stable revision keeps the rollout that made
        it stable: see :meth:`check_stable`)."""
        if ref is None or not ref.revision:
            return
        self.owners[ref.revision] = rollout_id

    def check_stable(self, ref: ModelRef | None) -> None:
        """A stable revision whose name now holds another model than its rollout's canary
        had (Standard mode reuses names) belongs to no known rollout."""
        if ref is None or not ref.revision or ref.revision not in self.owners:
            return
        known = self.models.get(ref.revision)
        if (
            known is not None
            and known.storage_uri
            and ref.storage_uri
            and known.storage_uri != ref.storage_uri
        ):
            self.owners[ref.revision] = None  # another model under the same name


def _phase(rollout: _Rollout, record: AuditRecord) -> None:
    entry = record.entry
    action = entry.action
    evidence = entry.evidence
    if action in ("rollout.started", "shadow.challenger_detected"):
        rollout.started = _as_of(record)
    shadow_end = action in ("shadow.passed", "shadow.reported")
    if action in _ENDINGS or (rollout.challenger and shadow_end):
        rollout.phase = _text(evidence.get("phase")) or rollout.phase
        rollout.paused_from = None
    elif shadow_end:
        rollout.phase = Phase.PROGRESSING.value  # the canary's first step follows
    elif action == "traffic.drift" and _true(evidence.get("post_rollout")):
        revert = evidence.get("handling") == "revert"
        rollout.phase = (Phase.DRIFT_REVERTED if revert else Phase.DRIFT_RECORDED).value
    elif action == "approval.verified":
        if rollout.phase == Phase.AWAITING_APPROVAL.value:
            rollout.phase = Phase.PROGRESSING.value
    elif action in ("rollout.paused", "manual.pause"):
        if rollout.phase != Phase.PAUSED.value:
            rollout.paused_from = rollout.phase
        rollout.phase = Phase.PAUSED.value
    elif action == "manual.resume":
        rollout.phase = rollout.paused_from or Phase.PROGRESSING.value
        rollout.paused_from = None
    elif action in _PHASE_OF:
        rollout.phase = _PHASE_OF[action]


def _context(state: _State, record: AuditRecord) -> _Rollout | None:
    """Who is who: the record's rollout, its phase, its revisions' models and owners."""
    entry = record.entry
    rollout = state.rollout(entry.rollout_id) if entry.rollout_id else None
    if rollout is not None and entry.action == "shadow.challenger_detected":
        rollout.challenger = True
    if rollout is not None:
        _phase(rollout, record)
    if rollout is not None and rollout.challenger:
        return rollout  # the challenger's revisions live on another InferenceService
    if entry.action == "traffic.intent" and entry.traffic_after is None:
        return rollout  # a model change: its canary is a storageUri without a revision yet
    state.check_stable(entry.stable)
    state.learn_model(entry.stable)
    state.learn_model(entry.canary)
    if rollout is not None and entry.canary is not None and entry.canary.revision:
        state.learn_owner(entry.canary, rollout.id)
    return rollout


def _traffic(state: _State, record: AuditRecord, rollout: _Rollout | None) -> None:
    """What the record says about the split (see the module docstring)."""
    entry = record.entry
    action = entry.action
    evidence = entry.evidence
    mark = _as_of(record)
    canary = entry.canary.revision if entry.canary is not None else None
    stable = entry.stable.revision if entry.stable is not None else None
    model_change = entry.action in ("traffic.intent", *_OUTCOMES) and (
        _text(evidence.get("storage_uri")) is not None and evidence.get("purpose") == "start"
    )
    if rollout is not None and rollout.challenger and not model_change:
        return
    if action == "traffic.intent":
        observed = _split(entry.traffic_before)
        before = observed if observed is not None else state.current()
        purpose = _text(evidence.get("purpose")) or "unknown"
        if entry.traffic_after is None:
            uri = _text(evidence.get("storage_uri")) or "an unrecorded model"
            percent = _int(evidence.get("percent"))
            share = f"{percent}%" if percent is not None else "its share"
            state.begin(
                before,
                None,
                "observed" if observed is not None else "rollout",
                mark,
                f"model change to {uri} intended: KServe creates a new revision for it, which "
                f"takes {share} once ready"
                + ("; the split before is as the status showed it" if observed else ""),
                correlation=entry.correlation_id,
                awaits="rollout",
                mover=None,
            )
            return
        watched = (
            rollout is not None and purpose in _WATCHED_PURPOSES and rollout.phase not in _TERMINAL
        )
        state.begin(
            before,
            _split(entry.traffic_after),
            "observed" if observed is not None else "rollout",
            mark,
            f"{purpose} write intended: the split moves from before to after at some moment "
            "after this record; "
            + (
                "the status confirming it is not recorded by then"
                if watched
                else "the write's outcome is not recorded by then"
            ),
            correlation=entry.correlation_id,
            awaits="status" if watched else "write",
            mover=rollout.id if rollout is not None else None,
        )
        return
    if action in _OUTCOMES:
        if entry.correlation_id is None or entry.correlation_id != state.correlation:
            return  # not the open intent's outcome (a replaced intent): nothing to say
        if action == "traffic.applied":
            if state.awaits == "write" and state.split is not None:
                state.settle(
                    state.split,
                    "written",
                    mark,
                    "the controller's write of this split was accepted; no status "
                    "confirmation is recorded for this kind of write",
                )
            else:
                state.written = mark
                state.note += f"; the write was accepted at {mark.at.isoformat()}"
            return
        what = "refused" if action == "traffic.failed" else "abandoned"
        if state.before is None:
            state.forget(mark, f"the write was {what}, and the split before it is not known")
            return
        state.settle(
            state.before, "failed", mark, f"the write was {what}: the split stayed as before"
        )
        return
    if rollout is None:
        return
    if action == "rollout.started":
        first = _int(evidence.get("first_percent"))
        if first is None:
            return
        known = state.current()
        if known is not None:
            unknown = ""
        elif state.knowledge == "in_transition":
            unknown = "; the split before it was itself in transition"
        else:
            unknown = "; no record before it establishes the split"
        state.begin(
            known,
            _pair(canary, first, stable),
            "rollout",
            mark,
            f"rollout started: {canary} is to serve {first}% once KServe shows it{unknown}",
            correlation=None,
            awaits="status",
            mover=rollout.id,
        )
        return
    if action == "traffic.shifted":
        percent = _int(evidence.get("percent"))
        if percent is None:
            return
        shown = _text(evidence.get("revision")) or canary
        state.settle(_pair(shown, percent, stable), "status", mark, "the status showed it")
    elif action == "shadow.started":
        state.settle(
            _pair(canary, 0, stable),
            "status",
            mark,
            f"the status showed {canary} at 0%; mirrored requests are copies, not a share",
        )
    elif action == "promoted":
        state.settle(_pair(canary, 100, stable), "status", mark, "promoted: the status showed it")
    elif action == "rolled_back":
        state.settle(_pair(canary, 0, stable), "status", mark, "rolled back: the status showed it")
    elif action == "traffic.drift":
        _drift(state, record, canary, stable)
    elif action in ("traffic.manual_rollback", "traffic.manual_restore"):
        _manual(state, record, canary)
    elif action == "rollout.failed":
        state.forget(mark, "the InferenceService was deleted (or re-created): no split is known")
    if action in _ENDINGS:
        state.ended(rollout.id)


def _drift(state: _State, record: AuditRecord, canary: str | None, stable: str | None) -> None:
    entry = record.entry
    evidence = entry.evidence
    revision = _text(evidence.get("revision")) or canary
    previous = state.through
    since = f"after {_when(previous)}" if previous is not None else "before it"
    if _true(evidence.get("post_rollout")):
        served = _int(evidence.get("status_share"))
        spec = _int(evidence.get("spec_percent"))
        share = served if served is not None else _int(evidence.get("observed"))
        if share is None:
            return
        note = (
            f"changed outside the controller at some moment {since}; observed at "
            f"{entry.at.isoformat()}: the status showed {revision} at {share}%"
            + (f", the spec commanded {spec}%" if spec is not None and spec != share else "")
        )
    else:
        share = _int(evidence.get("observed"))
        if share is None:
            return
        note = (
            f"changed outside the controller at some moment {since}; observed at "
            f"{entry.at.isoformat()}: the spec commanded {revision} at {share}% (the status "
            "may not have shown it yet)"
        )
    state.settle(_pair(revision, share, stable), "drift", _as_of(record), note)


def _manual(state: _State, record: AuditRecord, canary: str | None) -> None:
    entry = record.entry
    evidence = entry.evidence
    revision = _text(evidence.get("revision")) or canary
    percent = _int(evidence.get("percent"))
    if revision is None or percent is None:
        return
    previous = _text(evidence.get("previous_revision"))
    replaced_by = _text(evidence.get("replaced_by"))
    since = f"after {_when(state.through)}" if state.through is not None else "before it"
    when = f"observed at {entry.at.isoformat()}"
    if replaced_by is not None:
        # the promoted model was replaced by hand under the same name, outside a rollout
        uri = replaced_by if "://" in replaced_by else None
        state.models[revision] = ModelRef(None, uri, None, revision)
        state.owners[revision] = None
        split = {revision: 100}
        note = f"the model was replaced by hand with {replaced_by} at some moment {since}"
    else:
        split = _pair(revision, percent, previous)
        note = f"{revision}'s share was set by hand to {percent}% at some moment {since}"
    state.settle(split, "drift", _as_of(record), f"{note}; {when}")


def _replay(
    namespace: str,
    name: str,
    at: datetime,
    records: Iterable[AuditRecord],
    earlier: Iterable[AuditRecord],
) -> _State:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()} rejected: give T with its zone")
    state = _State()
    for record in sorted(earlier, key=lambda r: r.seq):
        _check_target(record, namespace, name)
        if record.entry.at <= at:
            _context(state, record)  # who is who only: these records set no split
    for record in sorted(records, key=lambda r: r.seq):
        _check_target(record, namespace, name)
        if record.entry.at > at:
            continue
        if record.entry.action == "analysis.evaluated":
            continue  # evidence (see evidence_from), not a record of the split
        rollout = _context(state, record)
        _traffic(state, record, rollout)
        state.through = _as_of(record)
    return state


def _check_target(record: AuditRecord, namespace: str, name: str) -> None:
    obj = record.entry.obj
    if obj is None or (obj.namespace, obj.name) != (namespace, name):
        where = "no InferenceService" if obj is None else f"{obj.namespace}/{obj.name}"
        raise ValueError(f"record {record.seq} is about {where}, not {namespace}/{name}")


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------


def traffic_at(
    namespace: str,
    name: str,
    at: datetime,
    records: Iterable[AuditRecord],
    *,
    earlier: Iterable[AuditRecord] = (),
) -> PointInTime:
    """The split of ``namespace/name`` at ``at`` with each revision's model and rollout
    (no approvals or evidence yet: :func:`with_support` adds them).

    ``records``: the service's records in seq order, from one that establishes the split (or
    its first) onwards; those after ``at`` are ignored. ``earlier``: older records of the
    service used only to tell which rollout a revision belongs to (the ``promoted`` record
    of the stable revision's rollout, and that rollout's last record), never for the split.
    """
    state = _replay(namespace, name, at, records, earlier)
    split = state.split if state.knowledge != "unknown" else None
    before = state.before if state.knowledge == "in_transition" else None
    names = set(split or {}) | set(before or {})
    revisions = []
    for revision in names:
        model = state.models.get(revision) or ModelRef(None, None, None, revision)
        owner = state.owners.get(revision)
        known = state.rollouts.get(owner) if owner is not None else None
        rollout = RolloutAt(known.id, known.phase, known.started) if known is not None else None
        if state.knowledge == "settled":
            revisions.append(
                RevisionAt(revision, model, percent=(split or {})[revision], rollout=rollout)
            )
        else:
            revisions.append(
                RevisionAt(
                    revision,
                    model,
                    percent_before=(before or {}).get(revision, 0) if before is not None else None,
                    percent_after=(split or {}).get(revision, 0) if split is not None else None,
                    rollout=rollout,
                )
            )
    revisions.sort(key=_order)
    return PointInTime(
        namespace=namespace,
        name=name,
        at=at,
        knowledge=state.knowledge,
        basis=state.basis,
        split=split,
        before=before,
        revisions=tuple(revisions),
        as_of=state.as_of,
        written=state.written,
        through=state.through,
        note=state.note,
    )


def _order(revision: RevisionAt) -> tuple[int, str]:
    share = revision.percent
    if share is None:
        share = max(revision.percent_after or 0, revision.percent_before or 0)
    return (-share, revision.revision or "")


def provenance_names(answer: PointInTime) -> tuple[str, ...]:
    """Revisions of an answer whose rollout the records given did not show (typically the
    stable revision, promoted by an older rollout): the store looks up their promotion."""
    return tuple(
        r.revision for r in answer.revisions if r.rollout is None and r.revision is not None
    )


def approval_at(
    rows: Sequence[ApprovalRow], revision: str, at: datetime, *, phase: str | None
) -> ApprovalAt:
    """The approval of ``revision`` (one rollout's rows) as it stood at ``at``: an approval
    decided by then, else one pending then, else the last refused, expired or cancelled.
    ``phase``: the rollout's phase at ``at``. A rollout that had promoted the revision
    without asking needed no approval; a request of a rollout that had ended undecided was
    cancelled (whenever the change system was told)."""
    promoted = phase in (Phase.SUCCEEDED.value, Phase.MANUALLY_ROLLED_BACK.value)
    ended = phase in _TERMINAL
    asked = [r for r in rows if r.revision == revision and r.requested_at <= at]
    if not asked:
        return ApprovalAt("none_required" if promoted else "not_requested")

    def status_at(row: ApprovalRow) -> ApprovalStatus:
        undecided: ApprovalStatus = "cancelled" if ended else "pending"
        if row.state in ("approved", "rejected"):
            decided = row.decided_at is not None and row.decided_at <= at
            return row.state if decided else undecided
        if row.state == "expired" and row.deadline is not None and row.deadline <= at:
            return "expired"
        if row.state == "cancelled" and row.closed_at is not None and row.closed_at <= at:
            return "cancelled"
        return undecided

    def view(row: ApprovalRow, status: ApprovalStatus) -> ApprovalAt:
        decided = status in ("approved", "rejected")
        return ApprovalAt(
            status=status,
            change_number=row.change_number,
            approver=row.approver if decided else None,
            approved_at=row.decided_at if decided else None,
            requested_at=row.requested_at,
            gate=row.gate,
            step_index=row.step_index,
            percent=row.percent,
            approval_id=row.id,
        )

    ranked = sorted(asked, key=lambda r: (r.requested_at, r.step_index, r.attempt))
    stated = [(row, status_at(row)) for row in ranked]
    for wanted in ("approved", "pending"):
        found = [(row, status) for row, status in stated if status == wanted]
        if found:
            return view(*found[-1])
    return view(*stated[-1])


def evidence_from(records: Iterable[AuditRecord], rollout_id: str, at: datetime) -> Evidence:
    """A rollout's evidence up to ``at`` from its ``analysis.evaluated`` records: those
    written at or before ``at``, their measurements evaluated at or before ``at``."""
    counts: dict[str, int] = {}
    latest: dict[str, tuple[tuple[datetime, int, int], Measurement, int]] = {}
    for record in records:
        entry = record.entry
        if entry.rollout_id != rollout_id or entry.action != "analysis.evaluated":
            continue
        if entry.at > at:
            continue
        for position, m in enumerate(entry.measurements):
            if m.evaluated_at > at:
                continue
            counts[m.check] = counts.get(m.check, 0) + 1
            key = (m.evaluated_at, record.seq, position)
            if m.check not in latest or key > latest[m.check][0]:
                latest[m.check] = (key, m, record.seq)
    checks = tuple(
        CheckEvidence(check, counts[check], latest[check][1], latest[check][2])
        for check in sorted(latest)
    )
    return Evidence(rollout_id, sum(counts.values()), checks)


def with_support(
    answer: PointInTime,
    approvals: Mapping[str, Sequence[ApprovalRow]],
    evidence: Mapping[str, Evidence],
) -> PointInTime:
    """The answer with each revision's approval and evidence (by rollout id)."""
    revisions = []
    for revision in answer.revisions:
        rollout = revision.rollout
        if rollout is None or revision.revision is None:
            revisions.append(revision)
            continue
        revisions.append(
            replace(
                revision,
                approval=approval_at(
                    approvals.get(rollout.id, ()), revision.revision, answer.at, phase=rollout.phase
                ),
                evidence=evidence.get(rollout.id) or Evidence(rollout.id, 0, ()),
            )
        )
    return replace(answer, revisions=tuple(revisions))


def point_in_time(
    namespace: str,
    name: str,
    at: datetime,
    records: Sequence[AuditRecord],
    approvals: Mapping[str, Sequence[ApprovalRow]] | None = None,
    *,
    earlier: Sequence[AuditRecord] = (),
    evidence: Mapping[str, Evidence] | None = None,
) -> PointInTime:
    """The whole answer: :func:`traffic_at`, then each revision's approval (from
    ``approvals``, by rollout id) and evidence (``evidence`` by rollout id, else computed
    from the ``analysis.evaluated`` records among ``records`` and ``earlier``)."""
    answer = traffic_at(namespace, name, at, records, earlier=earlier)
    found = dict(evidence or {})
    everything = (*earlier, *records)
    for rollout_id in answer.rollout_ids():
        if rollout_id not in found:
            found[rollout_id] = evidence_from(everything, rollout_id, at)
    return with_support(answer, approvals or {}, found)
