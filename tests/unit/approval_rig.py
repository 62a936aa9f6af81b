"""A rollout awaiting approval in a real audit store (SQLite), written the way the engine
writes it: the pure machine decides, the rollout's document and the approvals rows the
machine's requests and closes become (canary.approval_flow) are committed together under
the leader's fence; what the approval worker found goes back to the machine on the next
pass. Plus a change system to approve against (:class:`FakeServiceNow`), and recorders for
Events, metrics and the rollouts enqueued.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from approvals.gate import (
    ApprovalRequest,
    Decision,
    Outcome,
    PendingApproval,
    Rule,
    Violation,
)
from approvals.servicenow import ServiceNowError
from canary import machine
from canary.approval_flow import close_row, name_row, observations, request_row
from canary.audit import Actor, ApprovalRow, AuditEntry, AuditStore, Fence, upgrade_to_head
from canary.document import RolloutDocument
from canary.entries import Entries
from canary.k8s.events import ObjectReference
from canary.model import (
    Action,
    AnalysisVerdict,
    CloseChange,
    EventReason,
    Observation,
    Phase,
    RecordAudit,
    RequestApproval,
    RolloutState,
    ServiceObserved,
    Tick,
    Verdict,
)
from canary.policy import RolloutPolicy
from tests.unit.rollout_driver import APPROVAL, T0, make_policy, view

LEASE = "kserve-canary-leader"
FENCE = Fence(LEASE, "pod-a", 1)
NAMESPACE, NAME = "fraud", "scorer"
STARTER = "carol@bank.example"
SERVICENOW = make_policy(steps=[10, 100], approval=APPROVAL)  # credit-risk, 8 h
WEBHOOK = make_policy(
    name="webhook-gated",
    steps=[10, 100],
    approval={
        "gate": "webhook",
        "riskOwnerGroup": "credit-risk",
        "approvers": ["alice@bank.example", "Bob@Bank.example"],
        "deadline": "8h",
    },
)
ASKED_AT = T0 + timedelta(minutes=5)  # when the promotion to 100 % asks for approval


def migrated(url: str) -> AuditStore:
    """An audit store on a fresh database at ``url``, its schema made by the migrations,
    with ``pod-a`` the leader at epoch 1."""
    upgrade_to_head(url)
    store = AuditStore.from_url(url)
    assert store.claim_epoch(LEASE, FENCE.holder, FENCE.epoch, T0)
    return store


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Leadership:
    """What the lease elector says: the fence while leading, None when not."""

    fence: Fence | None = FENCE
    asked: int = 0

    def __call__(self) -> Fence | None:
        self.asked += 1
        return self.fence


class Rollout:
    """One rollout driven through the machine and stored as the engine stores it."""

    def __init__(
        self,
        store: AuditStore,
        clock: Clock,
        *,
        policy: RolloutPolicy = SERVICENOW,
        started_by: str | None = STARTER,
        leadership: Leadership | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.leadership = leadership or Leadership()
        self.entries = Entries("pod-a", self.leadership)
        self.id = str(uuid.uuid4())
        state, actions = machine.start(
            self.id, NAMESPACE, NAME, view(10, ready=False), policy, clock()
        )
        state = replace(state, started_by=started_by)
        self.doc = RolloutDocument(
            state=state, policy=policy, mode="knative", uid="uid-1", metric_profile="default"
        )
        self._commit(actions, new=True)

    @property
    def state(self) -> RolloutState:
        return self.doc.state

    def step(self, observation: Observation) -> tuple[Action, ...]:
        state, actions = machine.step(self.state, observation, self.doc.policy, self.clock())
        self.doc = replace(self.doc, state=state)
        self._commit(actions)
        return actions

    def awaiting_approval(self) -> RolloutDocument:
        """Serve 10 %, hold it 5 minutes with a passing verdict: approval is asked for 100 %."""
        self.step(ServiceObserved(view(10)))
        self.clock.now = ASKED_AT
        self.step(Tick())
        self.step(
            AnalysisVerdict(
                verdict=Verdict.SUCCESSFUL,
                revision="r2",
                step_index=0,
                evaluated_at=self.clock(),
                sufficient_data=True,
                summary="p99 latency and error rate within bounds",
            )
        )
        assert self.state.phase is Phase.AWAITING_APPROVAL
        return self.doc

    def take(self) -> list[Observation]:
        """The engine's next pass: hand the machine what the worker wrote on the row."""
        approval = self.state.approval
        if approval is None:
            return []
        row = self.store.get_approval(self.id, self.state.canary.name, approval.step_index)
        found = observations(self.state, row)
        for observation in found:
            self.step(observation)
        return found

    def row(self) -> ApprovalRow:
        """The stored approvals row of the machine's approval."""
        (row,) = self.store.approvals_for(self.id)
        return row

    def records(self, action: str) -> list[AuditEntry]:
        return [r.entry for r in self.store.records() if r.entry.action == action]

    def _commit(self, actions: tuple[Action, ...], *, new: bool = False) -> None:
        now = self.clock()
        entries: list[AuditEntry] = []
        rows: list[ApprovalRow] = []
        for action in actions:
            if isinstance(action, RecordAudit):
                entries.append(replace(self.entries.from_action(self.doc, action), at=now))
            elif isinstance(action, RequestApproval):
                previous = self.store.get_approval(self.id, action.revision, action.step_index)
                at = self.state.phase_entered_at
                request = request_row(self.state, self.doc.policy, action, previous, at)
                rows.append(request)
                entries = name_row(entries, "approval.requested", request.id)
            elif isinstance(action, CloseChange):
                approval = self.state.approval
                assert approval is not None
                current = next((r for r in rows if r.step_index == approval.step_index), None)
                current = current or self.store.get_approval(
                    self.id, self.state.canary.name, approval.step_index
                )
                if current is not None:
                    rows = [r for r in rows if r.id != current.id]
                    rows.append(close_row(current, self.state, action, now))
        self.store.commit(
            entries,
            fence=FENCE,
            rollout=self.doc.row(self.id, now),
            expected_version=None if new else self.doc.version,
            approvals=rows,
        )
        self.doc = replace(self.doc, version=1 if new else self.doc.version + 1)


# --- the change system ----------------------------------------------------------------------


ALICE_ID, MALLORY_ID = "a" * 32, "e" * 32


def pending(pending: PendingApproval, now: datetime) -> Decision:
    return Decision(Outcome.PENDING, f"{pending.change_number}: awaiting approval", now)


def approved_by_alice(pending: PendingApproval, now: datetime) -> Decision:
    return Decision(
        Outcome.APPROVED,
        f"{pending.change_number} was approved by alice",
        now,
        change_number=pending.change_number,
        change_sys_id=pending.change_sys_id,
        approver=ALICE_ID,
        approver_name="alice",
        decided_at=now - timedelta(seconds=20),
        comments="the evidence holds",
    )


def refused(*rules: Rule) -> Callable[[PendingApproval, datetime], Decision]:
    """Approved in ServiceNow, by mallory only, breaking ``rules``."""
    at = ASKED_AT + timedelta(minutes=30)

    def decide(pending: PendingApproval, now: datetime) -> Decision:
        found = tuple(
            Violation(rule, f"mallory broke {rule.value}", approver=MALLORY_ID, at=at)
            for rule in rules
        )
        return Decision(
            Outcome.REFUSED,
            f"{pending.change_number}: no approval satisfies segregation of duties",
            now,
            change_number=pending.change_number,
            change_sys_id=pending.change_sys_id,
            violations=found,
        )

    return decide


@dataclass
class FakeChange:
    number: str
    sys_id: str
    correlation_id: str
    request: ApprovalRequest
    notes: list[str] = field(default_factory=list)
    closed: list[tuple[str, str]] = field(default_factory=list)


Operation = Literal["request", "decision", "asked", "add_note", "close"]


class FakeServiceNow:
    """The ServiceNow gate as the worker meets it: changes found again by correlation id
    (never two for one id), decisions as ``answer`` says, failures on demand, each either
    before ServiceNow did anything or after it did and the answer was lost."""

    kind: Literal["servicenow"] = "servicenow"

    def __init__(self) -> None:
        self.changes: dict[str, FakeChange] = {}
        self.calls: Counter[str] = Counter()
        self.answer: Callable[[PendingApproval, datetime], Decision] = pending
        self._failures: dict[str, list[tuple[ServiceNowError, bool]]] = {}
        self._numbers = itertools.count(30001)

    def fail(self, operation: Operation, times: int = 1, *, after: bool = False) -> None:
        """The next ``times`` calls of ``operation`` raise a retryable 503; ``after``: the
        call took effect in ServiceNow, its answer never came back."""
        error = ServiceNowError(503, "Service Unavailable", "node restarting", retryable=True)
        self._failures.setdefault(operation, []).extend([(error, after)] * times)

    def _maybe_fail(self, operation: str, *, after: bool) -> None:
        queued = self._failures.get(operation)
        if queued and queued[0][1] is after:
            error, _ = queued.pop(0)
            raise error

    def _change(self, pending: PendingApproval) -> FakeChange:
        assert pending.change_sys_id is not None, "no change has been opened yet"
        (change,) = [c for c in self.changes.values() if c.sys_id == pending.change_sys_id]
        assert change.correlation_id == pending.key.correlation_id
        return change

    def request(self, request: ApprovalRequest, now: datetime) -> PendingApproval:
        self.calls["request"] += 1
        self._maybe_fail("request", after=False)
        correlation = request.key.correlation_id
        if correlation not in self.changes:
            n = next(self._numbers)
            self.changes[correlation] = FakeChange(f"CHG00{n}", f"{n:032x}", correlation, request)
        change = self.changes[correlation]
        self._maybe_fail("request", after=True)
        return PendingApproval(
            key=request.key,
            gate="servicenow",
            risk_owner_group=request.risk_owner_group,
            requesters=request.requesters,
            requested_at=now,
            deadline=request.deadline,
            window=request.window,
            change_number=change.number,
            change_sys_id=change.sys_id,
        )

    def decision(self, pending: PendingApproval, now: datetime) -> Decision:
        self.calls["decision"] += 1
        self._change(pending)
        self._maybe_fail("decision", after=False)
        return self.answer(pending, now)

    def asked(self, pending: PendingApproval) -> tuple[str, ...]:
        self.calls["asked"] += 1
        self._maybe_fail("asked", after=False)
        return ("alice", "bob")

    def add_note(self, pending: PendingApproval, text: str) -> None:
        self.calls["add_note"] += 1
        self._maybe_fail("add_note", after=False)
        self._change(pending).notes.append(text)

    def close(
        self,
        pending: PendingApproval,
        code: Literal["successful", "successful_issues", "unsuccessful", "cancelled"],
        note: str,
    ) -> None:
        self.calls["close"] += 1
        self._maybe_fail("close", after=False)
        self._change(pending).closed.append((code, note))
        self._maybe_fail("close", after=True)


# --- what the worker tells the rest of the controller ---------------------------------------


@dataclass
class Recorder:
    """Events emitted, metrics counted, rollouts enqueued."""

    events: list[tuple[EventReason, str, str]] = field(default_factory=list)
    approvals: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    pending: list[tuple[int, float]] = field(default_factory=list)
    enqueued: list[tuple[str, str]] = field(default_factory=list)

    def emit(
        self,
        target: ObjectReference,
        reason: EventReason,
        message: str,
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> object:
        assert (target.namespace, target.name) == (NAMESPACE, NAME)
        self.events.append((reason, message, type_))
        return None

    def reasons(self) -> list[EventReason]:
        return [reason for reason, _, _ in self.events]

    def record_approval(self, gate: str, outcome: str) -> None:
        self.approvals.append((gate, outcome))

    def record_change_system_error(self, system: str, operation: str) -> None:
        self.errors.append((system, operation))

    def set_pending_approvals(self, count: int, oldest_seconds: float) -> None:
        self.pending.append((count, oldest_seconds))

    def enqueue(self, namespace: str, name: str) -> None:
        self.enqueued.append((namespace, name))


def noted(action: str = "approval.updated", at: datetime = ASKED_AT) -> AuditEntry:
    """The record of a write a test makes to an approval row as some party would (a write of
    an audited field needs one; the store adds the row as written)."""
    return AuditEntry(at=at, actor=Actor("controller", "pod-b"), action=action,
                      reason="written by the test")  # fmt: skip


def evidence(entry: AuditEntry, *keys: str) -> dict[str, Any]:
    return {k: entry.evidence.get(k) for k in keys}
