"""What a verified approval webhook delivery does (canary/approval_inbox.py), over a real
audit store (SQLite) holding rollouts written the way the engine writes them.

A ServiceNow callback is only a hint: for a change we wait on, the worker is asked to read
ServiceNow again (once per delivery id); for a change we do not know, nothing; for an
approval already decided, nothing but an ``approval.late`` record. A signed decision of the
generic webhook gate decides: a listed approver's counts and is kept with the delivery's id
and digest; anyone else's is refused and recorded; a decision for another revision, another
gate or an ended rollout changes nothing. A delivery id is taken once, even twice at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from canary.api.webhooks import Delivery, GateDecision, InboxAnswer, ServiceNowCallback
from canary.approval_inbox import ApprovalInboxService
from canary.approval_worker import ApprovalWorker
from canary.audit import AuditEntry, AuditStore
from canary.audit.actors import approval_snapshot
from canary.audit.records import format_timestamp
from canary.model import ApprovalDecision, EventReason, Phase, ServiceDeleted, ServiceObserved
from canary.policy import RolloutPolicy
from tests.unit.approval_rig import (
    ASKED_AT,
    NAME,
    NAMESPACE,
    SERVICENOW,
    STARTER,
    WEBHOOK,
    Clock,
    FakeServiceNow,
    Recorder,
    Rollout,
    migrated,
    noted,
)
from tests.unit.rollout_driver import view

SYS_ID, NUMBER = "0123456789abcdef0123456789abcdef", "CHG0030001"
RECEIVED = ASKED_AT + timedelta(minutes=20)


class CountingWorker(ApprovalWorker):
    """The leader's approval worker, counting the re-reads it was asked for."""

    rechecks: list[tuple[str, dict[str, object]]]

    def recheck(self, approval_id: str, trigger: Mapping[str, object]) -> None:
        self.rechecks.append((approval_id, dict(trigger)))
        super().recheck(approval_id, trigger)


@dataclass
class World:
    path: Path
    store: AuditStore
    clock: Clock
    seen: Recorder = field(default_factory=Recorder)
    rollouts: list[Rollout] = field(default_factory=list)

    def rollout(self, policy: RolloutPolicy, started_by: str | None = STARTER) -> Rollout:
        """A rollout under ``policy`` awaiting approval."""
        rollout = Rollout(self.store, self.clock, policy=policy, started_by=started_by)
        rollout.awaiting_approval()
        self.rollouts.append(rollout)
        return rollout

    def with_change(self) -> Rollout:
        """A ServiceNow-gated rollout whose change the worker has opened."""
        rollout = self.rollout(SERVICENOW)
        assert self.store.update_approval(
            rollout.row().id, change_number=NUMBER, change_sys_id=SYS_ID, record=noted()
        )
        rollout.take()
        return rollout

    def worker(self) -> CountingWorker:
        worker = CountingWorker(
            store=self.store,
            gates={"servicenow": FakeServiceNow()},
            leadership=self.rollouts[0].leadership if self.rollouts else lambda: None,
            clock=self.clock,
            enqueue=self.seen.enqueue,
            instance="pod-a",
        )
        worker.rechecks = []
        return worker

    def inbox(self, worker: ApprovalWorker | None = None) -> ApprovalInboxService:
        return ApprovalInboxService(
            store=self.store,
            worker=worker,
            leadership=lambda: None,  # any replica takes deliveries
            enqueue=self.seen.enqueue,
            instance="pod-b",
            events=self.seen,
        )

    def records(self, action: str) -> list[AuditEntry]:
        return [r.entry for r in self.store.records() if r.entry.action == action]

    def deliveries(self) -> list[tuple[str, str, str]]:
        """The stored deliveries: (webhook id, source, outcome)."""
        with sqlite3.connect(self.path) as conn:
            rows = conn.execute(
                "SELECT webhook_id, source, outcome FROM webhook_deliveries ORDER BY webhook_id"
            ).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "audit.db"
    store = migrated(f"sqlite:///{path}")
    yield World(path, store, Clock())
    store.close()


def delivery(
    webhook_id: str = "msg_1", *, source: str = "servicenow", at: datetime = RECEIVED
) -> Delivery:
    assert source in ("servicenow", "webhook")
    return Delivery(
        source="servicenow" if source == "servicenow" else "webhook",
        webhook_id=webhook_id,
        received_at=at,
        sent_at=at - timedelta(seconds=3),
        payload_digest="sha256:" + webhook_id.encode().hex().ljust(64, "0")[:64],
        secret_index=0,
    )


def callback(sys_id: str = SYS_ID, number: str = NUMBER) -> ServiceNowCallback:
    return ServiceNowCallback.model_validate(
        {
            "type": "change.approval",
            "change": {"sys_id": sys_id, "number": number, "approval": "approved"},
            "approver": {"sys_id": "a" * 32, "user_name": "alice"},
            "comments": "fine",
        }
    )


def decision(
    approver: str = "alice@bank.example", verdict: str = "approve", **extra: Any
) -> GateDecision:
    body = {
        "type": "approval.decision",
        "namespace": NAMESPACE,
        "name": NAME,
        "revision": "r2",
        "decision": verdict,
        "approver": approver,
        "comment": "the evidence holds",
        "changeId": "FIRM-4711",
        **extra,
    }
    return GateDecision.model_validate({k: v for k, v in body.items() if v is not None})


# --- ServiceNow callbacks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sys_id", "number"),
    [("f" * 32, NUMBER), (SYS_ID, "CHG0039999")],
    ids=["an unknown sys_id", "a known sys_id with another number"],
)
def test_a_callback_for_a_change_we_do_not_wait_on_is_unknown(
    world: World, sys_id: str, number: str
) -> None:
    world.with_change()
    worker = world.worker()
    result = world.inbox(worker).servicenow_callback(delivery(), callback(sys_id, number))
    assert result.answer is InboxAnswer.UNKNOWN
    assert number in result.detail
    assert worker.rechecks == []
    assert world.deliveries() == [("msg_1", "servicenow", "unknown")]
    again = world.inbox(worker).servicenow_callback(delivery(), callback(sys_id, number))
    assert again.answer is InboxAnswer.DUPLICATE


def test_a_callback_asks_the_worker_to_read_servicenow_once_per_delivery(world: World) -> None:
    rollout = world.with_change()
    worker = world.worker()
    inbox = world.inbox(worker)
    first = inbox.servicenow_callback(delivery(), callback())
    assert first.answer is InboxAnswer.ACCEPTED
    ((approval_id, trigger),) = worker.rechecks
    row = rollout.row()
    assert approval_id == row.id
    assert (trigger["webhook_id"], trigger["payload_digest"]) == (
        "msg_1", delivery().payload_digest,
    )  # fmt: skip
    assert row.trigger is not None
    assert row.trigger["webhook_id"] == "msg_1"
    assert row.recheck_requested_at == world.clock()
    assert row.state == "pending", "a callback never decides by itself"

    world.clock.advance(30)
    for _ in range(2):  # ServiceNow retries the same message
        later = delivery(at=RECEIVED + timedelta(seconds=30))
        assert inbox.servicenow_callback(later, callback()).answer is InboxAnswer.DUPLICATE
    assert len(worker.rechecks) == 1
    assert rollout.row().recheck_requested_at == row.recheck_requested_at
    assert world.deliveries() == [("msg_1", "servicenow", "accepted")]

    assert inbox.servicenow_callback(delivery("msg_2"), callback()).answer is (
        InboxAnswer.ACCEPTED
    ), "a new delivery is a new hint"
    assert len(worker.rechecks) == 2


def test_a_replica_without_the_worker_marks_the_row_for_the_leader(world: World) -> None:
    rollout = world.with_change()
    result = world.inbox().servicenow_callback(delivery(), callback())
    assert result.answer is InboxAnswer.ACCEPTED
    row = rollout.row()
    assert row.recheck_requested_at == RECEIVED
    assert row.trigger is not None
    assert row.trigger["webhook_id"] == "msg_1"


@pytest.mark.parametrize("state", ["approved", "rejected", "expired", "cancelled"])
def test_a_callback_for_an_approval_no_longer_pending_is_gone_and_recorded_once(
    world: World, state: str
) -> None:
    rollout = world.with_change()
    assert world.store.update_approval(rollout.row().id, state=state, record=noted())
    worker = world.worker()
    inbox = world.inbox(worker)
    result = inbox.servicenow_callback(delivery(), callback())
    assert result.answer is InboxAnswer.GONE
    assert f"already {state}" in result.detail
    assert inbox.servicenow_callback(delivery(), callback()).answer is InboxAnswer.DUPLICATE
    (late,) = world.records("approval.late")
    assert late.rollout_id == rollout.id
    assert (late.actor.kind, late.actor.id) == ("servicenow", "callback")
    assert {k: late.evidence[k] for k in ("change_number", "approval_state", "webhook_id")} == {
        "change_number": NUMBER,
        "approval_state": state,
        "webhook_id": "msg_1",
    }
    assert worker.rechecks == []
    assert world.deliveries() == [("msg_1", "servicenow", "gone")]


def test_concurrent_duplicate_callbacks_ask_for_one_read(world: World) -> None:
    world.with_change()
    worker = world.worker()
    answers = _at_once(lambda: world.inbox(worker).servicenow_callback(delivery(), callback()))
    assert sorted(answers) == [InboxAnswer.ACCEPTED, InboxAnswer.DUPLICATE]
    assert len(worker.rechecks) == 1


# --- the signed-webhook gate ----------------------------------------------------------------


@dataclass
class Sent:
    approver: str
    verdict: str
    answer: InboxAnswer
    rules: list[str] = field(default_factory=list)
    started_by: str | None = STARTER
    late: timedelta = timedelta(0)


SENT = {
    "a listed approver approves": Sent("alice@bank.example", "approve", InboxAnswer.ACCEPTED),
    "a listed approver, in other letters": Sent(
        "ALICE@Bank.Example", "approve", InboxAnswer.ACCEPTED),
    "a listed approver rejects": Sent("bob@bank.example", "reject", InboxAnswer.ACCEPTED),
    "an unlisted identity approves": Sent(
        "mallory@bank.example", "approve", InboxAnswer.REFUSED, ["not_in_group"]),
    "an unlisted identity rejects": Sent(
        "mallory@bank.example", "reject", InboxAnswer.REFUSED, ["not_in_group"]),
    "the listed starter approves": Sent(
        "alice@bank.example", "approve", InboxAnswer.REFUSED, ["self_approval"],
        started_by="Alice@bank.example"),
    "a listed approver approves after the deadline": Sent(
        "alice@bank.example", "approve", InboxAnswer.REFUSED, ["outside_window"],
        late=timedelta(hours=8, seconds=1)),
}  # fmt: skip


@pytest.mark.parametrize("sent", SENT.values(), ids=SENT.keys())
def test_a_signed_decision(world: World, sent: Sent) -> None:
    rollout = world.rollout(WEBHOOK, started_by=sent.started_by)
    at = ASKED_AT + sent.late if sent.late else RECEIVED
    result = world.inbox().gate_decision(
        delivery(source="webhook", at=at), decision(sent.approver, sent.verdict)
    )
    assert result.answer is sent.answer, result.detail
    row = rollout.row()
    refusals = world.records("approval.refused")
    if sent.answer is InboxAnswer.REFUSED:
        assert row.state == "pending", "a refused decision never counts"
        assert (row.decision, world.seen.enqueued) == (None, [])
        (record,) = refusals
        assert (record.actor.kind, record.actor.id) == ("webhook", sent.approver)
        violations: Any = record.evidence["violations"]
        assert [v["rule"] for v in violations] == sent.rules
        assert {v["approver"] for v in violations} == {sent.approver}
        assert record.evidence["webhook_id"] == "msg_1"
        assert record.evidence["payload_digest"] == delivery().payload_digest
        assert world.seen.reasons() == [EventReason.APPROVAL_REFUSED]
        assert world.deliveries() == [("msg_1", "webhook", "refused")]
        return
    state = "approved" if sent.verdict == "approve" else "rejected"
    assert refusals == []
    assert (row.state, row.approver, row.decided_at) == (state, sent.approver, RECEIVED)
    assert row.change_number == "FIRM-4711"
    assert row.decision is not None
    assert {k: row.decision[k] for k in ("gate", "outcome", "approver", "comments")} == {
        "gate": "webhook",
        "outcome": state,
        "approver": sent.approver,
        "comments": "the evidence holds",
    }
    assert (row.decision["webhook_id"], row.decision["payload_digest"]) == (
        "msg_1", delivery().payload_digest,
    )  # fmt: skip
    assert row.decision["change_id"] == "FIRM-4711"
    assert world.seen.enqueued == [(NAMESPACE, NAME)], "the engine is woken to take it"
    assert world.deliveries() == [("msg_1", "webhook", "accepted")]

    world.clock.now = RECEIVED  # the engine's next pass
    *_, found = rollout.take()  # the firm's change id, then the decision
    assert isinstance(found, ApprovalDecision)
    assert found.change_number == "FIRM-4711"
    assert (found.approved, found.approver) == (sent.verdict == "approve", sent.approver)
    assert rollout.state.phase is (
        Phase.PROGRESSING if sent.verdict == "approve" else Phase.ROLLING_BACK
    )


def test_a_second_decision_for_a_decided_approval_is_gone_and_recorded(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    inbox = world.inbox()
    first = inbox.gate_decision(delivery(source="webhook"), decision())
    assert first.answer is InboxAnswer.ACCEPTED
    decided = rollout.row()
    second = inbox.gate_decision(
        delivery("msg_2", source="webhook"), decision("bob@bank.example", "reject")
    )
    assert second.answer is InboxAnswer.GONE
    assert rollout.row() == decided, "the first decision stands"
    (late,) = world.records("approval.late")
    assert (late.actor.kind, late.actor.id) == ("webhook", "bob@bank.example")
    assert late.evidence["webhook_id"] == "msg_2"
    rollout.take()  # the engine took the first: the machine no longer waits
    third = inbox.gate_decision(delivery("msg_3", source="webhook"), decision())
    assert third.answer is InboxAnswer.GONE
    assert "not awaiting approval" in third.detail
    assert len(world.records("approval.late")) == 2


@dataclass
class Elsewhere:
    policy: RolloutPolicy
    change: Callable[[Rollout], None] | None
    sent: dict[str, Any]
    answer: InboxAnswer
    detail: str
    late: bool


def _superseded(rollout: Rollout) -> None:
    rollout.step(ServiceObserved(view(10, latest="r3", ready=False, share=0)))


def _deleted(rollout: Rollout) -> None:
    rollout.step(ServiceDeleted())


ELSEWHERE = {
    "another revision than the canary awaiting approval": Elsewhere(
        WEBHOOK, None, {"revision": "r1"}, InboxAnswer.GONE, "not the canary", True),
    "a rollout under a policy without the webhook gate": Elsewhere(
        SERVICENOW, None, {}, InboxAnswer.UNKNOWN, "does not use the webhook gate", False),
    "a service with no rollout": Elsewhere(
        WEBHOOK, None, {"name": "other"}, InboxAnswer.UNKNOWN, "no rollout of fraud/other",
        False),
    "a rollout that ended (superseded)": Elsewhere(
        WEBHOOK, _superseded, {}, InboxAnswer.GONE, "ended", True),
    "a rollout that ended (service deleted)": Elsewhere(
        WEBHOOK, _deleted, {}, InboxAnswer.GONE, "ended", True),
    "no revision named: the canary awaiting approval": Elsewhere(
        WEBHOOK, None, {"revision": None}, InboxAnswer.ACCEPTED, "approved by", False),
}  # fmt: skip


@pytest.mark.parametrize("case", ELSEWHERE.values(), ids=ELSEWHERE.keys())
def test_a_decision_for_something_else_changes_nothing(world: World, case: Elsewhere) -> None:
    rollout = world.rollout(case.policy)
    if case.change is not None:
        case.change(rollout)
    before = rollout.row()
    result = world.inbox().gate_decision(delivery(source="webhook"), decision(**case.sent))
    assert result.answer is case.answer
    assert case.detail in result.detail
    assert len(world.records("approval.late")) == int(case.late)
    assert world.records("approval.refused") == []
    if case.answer is not InboxAnswer.ACCEPTED:
        assert rollout.row() == before
        assert world.seen.enqueued == []
    assert world.deliveries() == [("msg_1", "webhook", case.answer.value)]


def test_an_approval_not_recorded_yet_is_unknown(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    with sqlite3.connect(world.path) as conn:  # as if the request's row were not written
        conn.execute("DELETE FROM approvals WHERE rollout_id = ?", (rollout.id,))
    result = world.inbox().gate_decision(delivery(source="webhook"), decision())
    assert result.answer is InboxAnswer.UNKNOWN
    assert "not recorded yet" in result.detail


def test_a_duplicate_decision_is_taken_once(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    inbox = world.inbox()
    assert inbox.gate_decision(delivery(source="webhook"), decision()).answer is (
        InboxAnswer.ACCEPTED
    )
    decided = rollout.row()
    again = inbox.gate_decision(delivery(source="webhook"), decision())
    assert again.answer is InboxAnswer.DUPLICATE
    assert rollout.row() == decided
    assert world.records("approval.late") == []
    assert world.seen.enqueued == [(NAMESPACE, NAME)]


def test_concurrent_duplicate_decisions_are_accepted_once(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    answers = _at_once(lambda: world.inbox().gate_decision(delivery(source="webhook"), decision()))
    assert sorted(answers) == [InboxAnswer.ACCEPTED, InboxAnswer.DUPLICATE]
    assert rollout.row().state == "approved"
    assert world.seen.enqueued == [(NAMESPACE, NAME)]
    assert world.deliveries() == [("msg_1", "webhook", "accepted")]


def test_concurrent_different_decisions_decide_once(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    sent = iter(
        [
            (delivery("msg_1", source="webhook"), decision()),
            (delivery("msg_2", source="webhook"), decision("bob@bank.example", "reject")),
        ]
    )
    lock = threading.Lock()

    def send() -> InboxAnswer:
        with lock:
            one = next(sent)
        return world.inbox().gate_decision(*one).answer

    answers = _at_once(send)
    assert sorted(answers) == [InboxAnswer.ACCEPTED, InboxAnswer.GONE]
    assert rollout.row().state in ("approved", "rejected")
    assert len(world.records("approval.late")) == 1
    assert world.seen.enqueued == [(NAMESPACE, NAME)]


def _at_once(call: Callable[[], Any], threads: int = 2) -> list[InboxAnswer]:
    """Run ``call`` on ``threads`` threads released together; their answers."""
    start = threading.Barrier(threads)
    answers: list[InboxAnswer] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            result = call()
            answers.append(result if isinstance(result, InboxAnswer) else result.answer)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert errors == []
    assert len(answers) == threads
    return answers


# --- in the hash chain ----------------------------------------------------------------------


def test_a_delivery_is_chained_once_and_its_duplicate_is_not(world: World) -> None:
    rollout = world.with_change()
    inbox = world.inbox(world.worker())
    assert inbox.servicenow_callback(delivery(), callback()).answer is InboxAnswer.ACCEPTED
    assert inbox.servicenow_callback(delivery(), callback()).answer is InboxAnswer.DUPLICATE
    (record,) = world.records("webhook.delivered")
    assert (record.actor.kind, record.actor.id) == ("servicenow", "callback")
    assert (record.webhook_id, record.payload_digest) == ("msg_1", delivery().payload_digest)
    assert record.rollout_id == rollout.id
    assert {k: record.evidence[k] for k in ("source", "signature_valid", "outcome")} == {
        "source": "servicenow",
        "signature_valid": True,
        "outcome": "accepted",
    }
    assert record.evidence["received_at"] == format_timestamp(RECEIVED)
    assert record.evidence["change_number"] == NUMBER


def test_a_verified_signed_decision_is_chained_with_the_row_it_wrote(world: World) -> None:
    rollout = world.rollout(WEBHOOK)
    result = world.inbox().gate_decision(delivery(source="webhook"), decision())
    assert result.answer is InboxAnswer.ACCEPTED
    (delivered,) = world.records("webhook.delivered")
    assert (delivered.actor.kind, delivered.actor.id) == ("webhook", "alice@bank.example")
    assert delivered.evidence["outcome"] == "accepted"
    (verified,) = world.records("approval.decision_verified")
    row = rollout.row()
    assert (verified.actor.kind, verified.actor.id) == ("webhook", "alice@bank.example")
    assert (verified.approver, verified.approval_time) == ("alice@bank.example", RECEIVED)
    assert (verified.change_number, verified.webhook_id) == ("FIRM-4711", "msg_1")
    assert verified.payload_digest == delivery().payload_digest
    assert verified.evidence["approval"] == approval_snapshot(row)
    assert row.state == "approved"


def test_a_delivery_whose_signature_failed_is_neither_stored_nor_chained(world: World) -> None:
    """Anyone can send those: storing one would let a stranger grow the chain, and take a
    webhook id before the genuine sender does."""
    head = world.store.head()
    with pytest.raises(ValueError, match="signature did not verify"):
        world.store.record_delivery(
            "msg_forged", received_at=RECEIVED, source="webhook", payload_digest="sha256:00",
            signature_valid=False, outcome="refused",
        )  # fmt: skip
    assert world.deliveries() == []
    assert world.store.head() == head
