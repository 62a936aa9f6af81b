"""Rollouts told as the engine records them, for the evidence dossier and report tests (and
the report's screenshot test).

The pure state machine (:mod:`canary.machine`) decides; :class:`canary.entries.Entries`
turns its actions into audit entries as ``canary.engine`` does (a ``traffic.intent`` with
the split seen before each traffic write, its ``traffic.applied`` / ``traffic.failed``
outcome with the same correlation id after it); analysis rounds carry measurements shaped
like the engine's ``analysis.evaluated``; approvals rows follow
:mod:`canary.approval_flow` and the decision records carry the row's evidence; and the
entries are chained into :class:`AuditRecord` values with real hashes, read back from their
bodies as the store reads them. No I/O, and deterministic (the correlation ids count up).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from approvals.gate import Decision, Outcome
from canary import machine
from canary.approval_flow import (
    close_row,
    decision_actor,
    decision_evidence,
    decision_json,
    observations,
    request_row,
)
from canary.audit import (
    GENESIS_HASH,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    Fence,
    Measurement,
    ObjectRef,
    RolloutRow,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
)
from canary.document import RolloutDocument
from canary.entries import Entries, object_ref
from canary.evidence.dossier import ChainVerification, Dossier, build_dossier
from canary.execution import Pending
from canary.model import (
    Action,
    AnalysisVerdict,
    CloseChange,
    CommandKind,
    ManualCommand,
    Observation,
    RecordAudit,
    RequestApproval,
    ServiceObserved,
    SetTraffic,
    Tick,
    TrafficView,
    Verdict,
    WriteRejected,
)
from canary.policy import RolloutPolicy
from canary.routing.base import Observed
from tests.unit.rollout_driver import APPROVAL, T0, make_policy, promoted_view, view

__all__ = [
    "APPROVAL",
    "GOOD",
    "INSTANCE",
    "NAME",
    "NAMESPACE",
    "PROMETHEUS",
    "ROLLOUT_ID",
    "STORIES",
    "T0",
    "Reading",
    "Story",
    "aborted",
    "approved",
    "awaiting_approval",
    "error_rate",
    "expired",
    "latency",
    "make_policy",
    "passing_first_step",
    "promote",
    "rejected",
    "rollback",
    "shadow",
    "unknown_actions",
    "view",
]

NAMESPACE, NAME, UID = "fraud", "scorer", "0d6f3c1e-uid-scorer"
ROLLOUT_ID = "ro-5f0c2a"
INSTANCE = "kserve-canary-6c9d8-x2kq7"
FENCE = Fence("kserve-canary-leader", INSTANCE, 3)
PROMETHEUS = "http://prometheus.monitoring.svc:9090"


@dataclass(frozen=True)
class Reading:
    """One check's evaluation: the values, how they were judged, and the verdict."""

    check: str
    canary: float | None
    baseline: float | None
    statistic: float | None
    threshold: float | None
    verdict: str
    samples: tuple[int, int] = (1200, 10800)
    message: str = ""
    dry_run: bool = False


def latency(canary: float, baseline: float, tolerance: float = 0.2) -> Reading:
    """p99 latency judged relative to the baseline (the statistic is the relative change)."""
    change = (canary - baseline) / abs(baseline)
    verdict = "Failed" if change > tolerance else "Successful"
    message = f"p99 {canary:.3f}s vs baseline {baseline:.3f}s, limit +{tolerance:.0%}"
    return Reading("latency-p99", canary, baseline, change, tolerance, verdict, message=message)


def error_rate(canary: float, baseline: float, limit: float = 0.02) -> Reading:
    """The 5xx ratio judged against an absolute limit (the statistic is the value)."""
    verdict = "Failed" if canary > limit else "Successful"
    message = f"5xx {canary:.2%} vs baseline {baseline:.2%}, absolute limit {limit:.0%}"
    return Reading("error-rate", canary, baseline, canary, limit, verdict, message=message)


def _query(check: str, revision: str) -> str:
    """The PromQL a check of that name reads (as the metric profiles write it)."""
    where = f'revision="{revision}"'
    if check.startswith("latency"):
        return (
            f"histogram_quantile(0.99, sum by (le) "
            f"(rate(request_duration_seconds_bucket{{{where}}}[1m])))"
        )
    errors = f'sum(rate(requests_total{{{where},code=~"5.."}}[1m]))'
    return f"{errors} / sum(rate(requests_total{{{where}}}[1m]))"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Story:
    """One rollout of ``r2`` (``s3://models/r2``) against ``r1`` on fraud/scorer."""

    policy: RolloutPolicy = field(default_factory=make_policy)
    now: datetime = T0
    started_by: str | None = None
    records: list[AuditRecord] = field(default_factory=list)
    rows: dict[str, ApprovalRow] = field(default_factory=dict)
    doc: RolloutDocument | None = None
    seen: TrafficView | None = None
    written: SetTraffic | None = None  # the last traffic write KServe will converge to
    fail_next: tuple[int, str, str] | None = None  # the apiserver refuses the next write
    crash_next: bool = False  # the controller dies before the next write
    resource_version: int = 4100
    correlations: int = 0
    entries: Entries = field(default_factory=lambda: Entries(INSTANCE, lambda: FENCE))

    # -- the clock -----------------------------------------------------------------------------

    def at(self, minutes: float = 0, seconds: float = 0) -> Story:
        target = T0 + timedelta(minutes=minutes, seconds=seconds)
        assert target >= self.now, "the clock only moves forward"
        self.now = target
        return self

    # -- reading ------------------------------------------------------------------------------

    @property
    def state_doc(self) -> RolloutDocument:
        assert self.doc is not None
        return self.doc

    def row(self) -> RolloutRow:
        return self.state_doc.row(ROLLOUT_ID, self.now)

    def approvals(self) -> list[ApprovalRow]:
        return list(self.rows.values())

    def dossier(
        self,
        *,
        rollout: bool = True,
        verification: ChainVerification | None = None,
        as_of: datetime | None = None,
    ) -> Dossier:
        head = self.records[-1] if self.records else None
        chain = verification or ChainVerification(
            ok=True,
            records_checked=len(self.records),
            head_hash=head.record_hash if head else GENESIS_HASH,
            head_seq=head.seq if head else None,
            verified_at=self.now,
        )
        return build_dossier(
            rollout=self.row() if rollout else None,
            records=self.records,
            approvals=self.approvals(),
            verification=chain,
            as_of=as_of or self.now,
        )

    # -- the chain ----------------------------------------------------------------------------

    def chain(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append ``entries`` as the store does: numbered, hashed, read back from the body."""
        added = []
        for entry in entries:
            seq = len(self.records) + 1
            prev = self.records[-1].record_hash if self.records else GENESIS_HASH
            body = canonical_json(entry_body(seq, entry))
            record = AuditRecord(
                seq, prev, compute_record_hash(prev, body), body, decode_body(body)
            )
            self.records.append(record)
            added.append(record)
        return added

    def append_raw(self, body: dict[str, object]) -> AuditRecord:
        """A record whose body is written as given (an older format version, say)."""
        seq = len(self.records) + 1
        prev = self.records[-1].record_hash if self.records else GENESIS_HASH
        text = canonical_json({**body, "seq": seq})
        record = AuditRecord(seq, prev, compute_record_hash(prev, text), text, decode_body(text))
        self.records.append(record)
        return record

    # -- the cluster ----------------------------------------------------------------------------

    def observed(self) -> Observed:
        assert self.seen is not None
        return Observed(
            namespace=NAMESPACE,
            name=NAME,
            view=self.seen,
            uid=UID,
            generation=7,
            resource_version=str(self.resource_version),
            mode="Knative",
            storage_uri=self.seen.latest.storage_uri,
        )

    def start(self, seen: TrafficView) -> Story:
        self.seen = seen
        state, actions = machine.start(ROLLOUT_ID, NAMESPACE, NAME, seen, self.policy, self.now)
        if self.started_by is not None:
            state = replace(state, started_by=self.started_by)
        self.doc = RolloutDocument(
            state=state, policy=self.policy, mode="knative", uid=UID,
            metric_profile="knative-otel",
        )  # fmt: skip
        self._act(actions)
        return self

    def see(self, seen: TrafficView | None = None) -> Story:
        """The engine's next look: ``seen``, or what KServe shows once the last write is in
        force."""
        if seen is None:
            assert self.written is not None
            percent = self.written.percent
            seen = promoted_view() if percent == 100 else view(percent)
        self.seen = seen
        self.resource_version += 1
        return self.step(ServiceObserved(seen))

    def tick(self) -> Story:
        return self.step(Tick())

    def step(self, observation: Observation) -> Story:
        doc = self.state_doc
        state, actions = machine.step(doc.state, observation, self.policy, self.now)
        self.doc = replace(doc, state=state)
        self._act(actions)
        return self

    def _act(self, actions: Sequence[Action], *, first: Sequence[AuditEntry] = ()) -> None:
        doc = self.state_doc
        entries = list(first)
        pending: list[Pending] = []
        for action in actions:
            if isinstance(action, RecordAudit):
                entries.append(self.entries.from_action(doc, action))
            elif isinstance(action, SetTraffic):
                self.correlations += 1
                intent = Pending(
                    f"corr-{self.correlations:04d}", action.revision, action.percent,
                    action.purpose,
                )  # fmt: skip
                pending.append(intent)
                entries.append(self.entries.intent(doc, intent))
            elif isinstance(action, RequestApproval):
                previous = next(
                    (
                        r
                        for r in self.rows.values()
                        if (r.revision, r.step_index) == (action.revision, action.step_index)
                    ),
                    None,
                )
                row = request_row(doc.state, self.policy, action, previous, self.now)
                if previous is None or previous.id != row.id:  # a new row: a counted id
                    row = replace(row, id=f"approval-{len(self.rows) + 1:04d}")
                self.rows[row.id] = row
            elif isinstance(action, CloseChange):
                current = self._current_row()
                if current is not None:
                    self.rows[current.id] = close_row(current, doc.state, action, self.now)
        observed = self.observed()
        ref = object_ref(observed)
        entries = [
            replace(
                e,
                at=self.now,
                obj=ref,
                traffic_before=dict(observed.view.split)
                if e.action == "traffic.intent"
                else e.traffic_before,
            )
            for e in entries
        ]
        self.chain(entries)
        for intent in pending:
            self._carry_out(replace(intent, attempts=1), observed)

    def _carry_out(self, intent: Pending, observed: Observed) -> None:
        if self.crash_next:  # the process died after the intent's commit: no outcome
            self.crash_next = False
            return
        doc = self.state_doc
        if self.fail_next is not None:
            status, reason, message = self.fail_next
            self.fail_next = None
            why = f"the apiserver refused the {intent.purpose} write: {status} {reason}: {message}"
            evidence = {"status": status, "api_reason": reason, "api_message": message,
                        "causes": []}  # fmt: skip
            failed = self.entries.outcome(
                doc, intent, self.now, "traffic.failed", why, observed, extra=evidence
            )
            self.chain([failed])
            self.step(
                WriteRejected(
                    intent.revision, intent.percent, intent.purpose, status, reason, message, ()
                )
            )
            return
        reason = f"{intent.purpose}: {intent.revision} at {intent.percent}% written"
        applied = self.entries.outcome(doc, intent, self.now, "traffic.applied", reason, observed)
        self.chain([applied])
        self.written = intent.action()

    # -- analysis -----------------------------------------------------------------------------

    def analyse(self, *readings: Reading, summary: str | None = None) -> Story:
        """An ``analysis.evaluated`` round with ``readings``, then its verdict to the machine
        (as the engine's ``_analyse``)."""
        doc = self.state_doc
        state = doc.state
        shadow = state.phase.value == "Shadowing"
        step = machine.SHADOW_STEP if shadow else state.step_index
        verdicts = {r.verdict for r in readings}
        verdict = "Failed" if "Failed" in verdicts else (
            "Successful" if verdicts <= {"Successful"} else "Inconclusive"
        )  # fmt: skip
        summary = summary or "; ".join(f"{r.check} {r.verdict.lower()}" for r in readings)
        measurements = tuple(
            Measurement(
                check=r.check,
                evaluated_at=self.now,
                query=_query(r.check, state.canary.name),
                prometheus_url=PROMETHEUS,
                response_digest=_digest(f"{r.check}{self.now.isoformat()}"),
                canary_value=r.canary,
                baseline_value=r.baseline,
                canary_samples=r.samples[0],
                baseline_samples=r.samples[1],
                statistic=r.statistic,
                threshold=r.threshold,
                verdict=r.verdict,
                dry_run=r.dry_run,
                detail={"gating_outcome": r.verdict, "sufficient": True, "message": r.message},
            )
            for r in readings
        )
        evaluated = self.entries.entry(
            doc,
            self.now,
            action="analysis.evaluated",
            reason=summary,
            observed=self.observed(),
            evidence={
                "verdict": verdict,
                "sufficient_data": True,
                "fast_fail": False,
                "step": step,
                "shadow": shadow,
                "ceiling": None,
                "grace": False,
                "fast_path": False,
                "window_seconds": 60,
                "metric_profile": doc.metric_profile,
            },
            measurements=measurements,
        )
        observation = AnalysisVerdict(
            verdict=Verdict(verdict),
            revision=state.canary.name,
            step_index=step,
            evaluated_at=self.now,
            sufficient_data=True,
            summary=summary,
        )
        state, actions = machine.step(state, observation, self.policy, self.now)
        self.doc = replace(doc, state=state)
        self._act(actions, first=[evaluated])
        return self

    # -- approvals ----------------------------------------------------------------------------

    def _current_row(self) -> ApprovalRow | None:
        approval = self.state_doc.state.approval
        if approval is None:
            return None
        canary = self.state_doc.state.canary.name
        rows = [
            r
            for r in self.rows.values()
            if (r.revision, r.step_index) == (canary, approval.step_index)
        ]
        return max(rows, key=lambda r: r.attempt) if rows else None

    def _take_approval(self) -> Story:
        """The engine's ``_take_approval``: what the worker wrote on the row goes to the
        machine, and its decision records carry the row's evidence."""
        row = self._current_row()
        for found in observations(self.state_doc.state, row):
            assert row is not None
            doc = self.state_doc
            state, actions = machine.step(doc.state, found, self.policy, self.now)
            self.doc = replace(doc, state=state)
            decided = ("approval.verified", "approval.rejected", "approval.change_opened")
            converted: list[Action] = []
            extra: list[AuditEntry] = []
            for action in actions:
                if isinstance(action, RecordAudit) and action.action in decided:
                    entry = self.entries.from_action(self.state_doc, action)
                    actor = (
                        decision_actor(row) if action.action != "approval.change_opened" else None
                    )
                    extra.append(
                        replace(
                            entry,
                            actor=actor or entry.actor,
                            evidence={**entry.evidence, **decision_evidence(row)},
                        )
                    )
                else:
                    converted.append(action)
            self._act(converted, first=extra)
        return self

    def open_change(self, number: str = "CHG0031337", sys_id: str = "9f" * 16) -> Story:
        row = self._current_row()
        assert row is not None
        self.rows[row.id] = replace(row, change_number=number, change_sys_id=sys_id)
        return self._take_approval()

    def decide(
        self,
        approved: bool,
        *,
        approver: str = "b7" * 16,
        name: str = "Alice Approver",
        comments: str = "reviewed the canary evidence; fine to promote",
        webhook_id: str | None = "msg_2f9c",
    ) -> Story:
        row = self._current_row()
        assert row is not None
        outcome = Outcome.APPROVED if approved else Outcome.REJECTED
        decision = Decision(
            outcome=outcome,
            reason=f"{row.change_number}: {outcome.value} by {name}",
            checked_at=self.now,
            change_number=row.change_number,
            change_sys_id=row.change_sys_id,
            approver=approver,
            approver_name=name,
            decided_at=self.now,
            comments=comments,
        )
        trigger = (
            {"webhook_id": webhook_id, "payload_digest": _digest(webhook_id)}
            if webhook_id
            else None
        )
        self.rows[row.id] = replace(
            row,
            state="approved" if approved else "rejected",
            approver=approver,
            decided_at=self.now,
            decision=decision_json(decision, row.gate, trigger),
            trigger=trigger,
        )
        return self._take_approval()

    def close_change(self) -> Story:
        """The approval worker closed the change: its ``approval.change_closed`` record."""
        row = next(r for r in self.rows.values() if r.close_code and r.closed_at is None)
        self.rows[row.id] = replace(row, closed_at=self.now)
        entry = self.entries.entry(
            self.state_doc,
            self.now,
            action="approval.change_closed",
            reason=f"{row.change_number} closed {row.close_code}: {row.close_note or ''}",
            evidence={
                "change_number": row.change_number,
                "change_sys_id": row.change_sys_id,
                "close_code": row.close_code,
                "revision": row.revision,
            },
        )
        self.chain([replace(entry, obj=object_ref(self.observed()))])
        return self

    # -- people -------------------------------------------------------------------------------

    def command(self, kind: CommandKind, reason: str, who: str = "bob@bank.example") -> Story:
        """A manual command; the record names the person as the apiserver authenticated them."""
        person = Actor("human", who, uid=f"uid-{who}", groups=("risk-ops",))
        before = len(self.records)
        self.step(ManualCommand(kind, who, reason))
        # The engine names the person as the apiserver authenticated them, before the
        # commit: chain this command's records again with that identity.
        tail = [r.entry for r in self.records[before:]]
        del self.records[before:]
        self.chain(
            [replace(e, actor=person) if e.actor == Actor("human", who) else e for e in tail]
        )
        return self

    def refused_command(self, command: str, why: str, reason: str) -> Story:
        """A command the leader refused before the machine saw it (``_refuse_command``)."""
        entry = AuditEntry(
            at=self.now,
            actor=Actor("human", "mallory@bank.example", uid="uid-m", groups=("dev",)),
            action="manual.rejected",
            rollout_id=ROLLOUT_ID,
            obj=ObjectRef(NAMESPACE, NAME),
            reason=why,
            evidence={"command": command, "reason": reason},
            leader_epoch=FENCE.epoch,
        )
        self.chain([entry])
        return self


# --------------------------------------------------------------------------------------------
# the rollouts the tests tell
# --------------------------------------------------------------------------------------------

GOOD = (latency(0.205, 0.2), error_rate(0.004, 0.003))


def passing_first_step(story: Story) -> Story:
    """r2 gets 10 % (the admission webhook capped the change), holds it 5 minutes with
    passing analysis."""
    story.start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    for minute in (1, 3, 5.5):
        story.at(minutes=minute).analyse(*GOOD)
    return story


def promote() -> Story:
    story = passing_first_step(Story(make_policy(steps=[10, 50, 100])))
    story.at(minutes=6).see()  # 50 % in force
    for minute in (7, 9, 11.5):
        story.at(minutes=minute).analyse(*GOOD)
    return story.at(minutes=12).see()  # promoted


def rollback() -> Story:
    story = Story(make_policy(steps=[10, 50, 100])).start(view(100, ready=False))
    story.at(seconds=40).see()
    story.at(minutes=1).analyse(*GOOD)
    story.at(minutes=2).analyse(latency(0.31, 0.2), error_rate(0.004, 0.003))
    return story.at(minutes=2, seconds=30).see()  # rolled back


def awaiting_approval() -> Story:
    story = Story(make_policy(steps=[10, 100], approval=APPROVAL), started_by="carol@bank.example")
    return passing_first_step(story).at(minutes=6).open_change()


def approved() -> Story:
    story = awaiting_approval().at(minutes=20).decide(True)
    story.at(minutes=20, seconds=30).analyse(*GOOD)  # a fresh verdict, then the promotion
    return story.at(minutes=21).see().at(minutes=22).close_change()


def rejected() -> Story:
    story = awaiting_approval().at(minutes=20)
    story.decide(False, name="Rita Reviewer", comments="error budget exhausted this week")
    return story.at(minutes=21).see().at(minutes=22).close_change()


def expired() -> Story:
    policy = make_policy(steps=[10, 100], approval={**APPROVAL, "onExpiry": "rollback"})
    story = passing_first_step(Story(policy, started_by="carol@bank.example"))
    story.at(minutes=6).open_change()
    story.at(minutes=6 + 8 * 60).tick()  # the 8 h deadline passed
    return story.at(minutes=6 + 8 * 60, seconds=30).see()


def aborted() -> Story:
    story = passing_first_step(Story(make_policy(steps=[10, 50, 100])))
    story.at(minutes=5, seconds=40).command(CommandKind.RESUME, "nothing to resume")
    story.at(minutes=5, seconds=50).see()  # 50 % in force
    story.at(minutes=7).command(CommandKind.ABORT, "fraud team saw false positives (INC-77)")
    return story.at(minutes=7, seconds=30).see()


def shadow() -> Story:
    policy = make_policy(steps=[10, 100], shadow={"enabled": True, "duration": "10m"})
    story = Story(policy).start(view(0, ready=False))
    story.at(seconds=20).see(view(0))  # ready: mirroring starts
    for minute in (2, 6, 10.5):
        story.at(minutes=minute).analyse(error_rate(0.003, 0.003))
    story.at(minutes=11).see()  # 10 % in force
    return story


def unknown_actions() -> Story:
    story = promote()
    story.append_raw(
        {
            "v": 1, "at": "2026-11-23T10:13:00.000000Z", "actor": {"kind": "controller",
            "id": "old-pod"}, "action": "traffic.shifted", "rollout_id": ROLLOUT_ID,
            "obj": None, "stable": None, "canary": None, "traffic_before": None,
            "traffic_after": None, "reason": "status shows r2 at 100% (a version 1 body)",
            "evidence": {"percent": "100", "revision": "r2", "step": "2"},
            "measurements": [], "change_number": None, "change_sys_id": None,
            "approver": None, "approval_time": None, "webhook_id": None,
            "payload_digest": None, "leader_epoch": None, "correlation_id": None,
        }
    )  # fmt: skip
    story.append_raw(
        {
            "v": 3, "at": "2026-11-23T10:14:00.000000Z",
            "actor": {"kind": "controller", "id": "pod-a", "uid": None, "groups": []},
            "action": "retention.reviewed", "rollout_id": ROLLOUT_ID, "obj": None,
            "stable": None, "canary": None, "traffic_before": None, "traffic_after": None,
            "reason": "a record of an action this reader does not know",
            "evidence": {"kept_until": "2033-11-23"}, "measurements": [],
            "change_number": None, "change_sys_id": None, "approver": None,
            "approval_time": None, "webhook_id": None, "payload_digest": None,
            "leader_epoch": 3, "correlation_id": None,
        }
    )  # fmt: skip
    story.append_raw(
        {
            "v": 3, "at": "2026-11-23T10:15:00.000000Z",
            "actor": {"kind": "controller", "id": "pod-a", "uid": None, "groups": []},
            "action": "rollout.started", "rollout_id": "ro-another", "obj": None,
            "stable": None, "canary": None, "traffic_before": None, "traffic_after": None,
            "reason": "another rollout's record", "evidence": {}, "measurements": [],
            "change_number": None, "change_sys_id": None, "approver": None,
            "approval_time": None, "webhook_id": None, "payload_digest": None,
            "leader_epoch": 3, "correlation_id": None,
        }
    )  # fmt: skip
    return story


STORIES: dict[str, Callable[[], Story]] = {
    "promote": promote,
    "rollback": rollback,
    "approval-approved": approved,
    "approval-rejected": rejected,
    "approval-expired": expired,
    "manual-abort": aborted,
    "shadow": shadow,
    "unknown-actions": unknown_actions,
}
