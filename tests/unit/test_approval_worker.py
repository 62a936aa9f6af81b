"""The approval worker (canary/approval_worker.py) against a ServiceNow gate that can fail,
over a real audit store (SQLite) holding a rollout awaiting approval, written the way the
engine writes it (tests/unit/approval_rig.py).

What a user would notice: one change per approval, however often the worker runs and across
a restart or a lost answer; ServiceNow failing keeps the approval waiting, says why, and
backs off; ServiceNow is read once a poll interval unless a callback asked for it sooner; a
decision is written once and the rollout woken; an approval that breaks segregation of
duties is recorded once per distinct set of violations, and only by the leader; a change
the rollout no longer needs is closed once, with its close code, and recorded.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from approvals.gate import ApprovalRequest, Decision, Outcome, PendingApproval, Rule
from canary.approval_worker import ApprovalWorker
from canary.audit import Actor, AuditEntry, AuditStore, FencedOut
from canary.audit.actors import approval_snapshot
from canary.audit.records import format_timestamp
from canary.model import (
    AnalysisVerdict,
    ApprovalDecision,
    ChangeOpened,
    CommandKind,
    EventReason,
    ManualCommand,
    Phase,
    ServiceDeleted,
    ServiceObserved,
    Tick,
    Verdict,
)
from tests.unit.approval_rig import (
    ALICE_ID,
    ASKED_AT,
    FENCE,
    MALLORY_ID,
    NAME,
    NAMESPACE,
    STARTER,
    Clock,
    FakeServiceNow,
    Leadership,
    Recorder,
    Rollout,
    approved_by_alice,
    evidence,
    migrated,
    noted,
    refused,
)
from tests.unit.rollout_driver import promoted_view, view

POLL = timedelta(seconds=60)
TRIGGER = {"webhook_id": "msg_2b8Yq0aZ", "payload_digest": "sha256:" + "ab" * 32}
UNAVAILABLE = "ServiceNow: Service Unavailable (node restarting) [HTTP 503]"


@dataclass
class World:
    store: AuditStore
    clock: Clock
    rollout: Rollout
    gate: FakeServiceNow
    seen: Recorder

    @property
    def leadership(self) -> Leadership:
        return self.rollout.leadership

    def worker(self, tick: float = 1.0) -> ApprovalWorker:
        """A worker as the controller builds one (a new one: a restart)."""
        return ApprovalWorker(
            store=self.store,
            gates={"servicenow": self.gate},
            leadership=self.leadership,
            clock=self.clock,
            enqueue=self.seen.enqueue,
            instance="pod-a",
            events=self.seen,
            metrics=self.seen,
            poll_interval=POLL,
            tick=tick,
        )

    def at(self, worker: ApprovalWorker, *seconds: float) -> None:
        """One pass at each of ``seconds`` after the request."""
        for second in seconds:
            assert ASKED_AT + timedelta(seconds=second) >= self.clock.now
            self.clock.now = ASKED_AT + timedelta(seconds=second)
            worker.run_once()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = migrated(f"sqlite:///{tmp_path / 'audit.db'}")
    clock = Clock()
    rollout = Rollout(store, clock)
    rollout.awaiting_approval()
    yield World(store, clock, rollout, FakeServiceNow(), Recorder())
    store.close()


def calls_at(
    world: World, worker: ApprovalWorker, operation: str, seconds: Iterable[float]
) -> list[float]:
    """The seconds (after the request) at which a pass called ``operation``."""
    found: list[float] = []
    for second in seconds:
        before = world.gate.calls[operation]
        world.at(worker, second)
        if world.gate.calls[operation] > before:
            found.append(second)
    return found


# --- opening the change ---------------------------------------------------------------------


def test_the_change_is_opened_once_however_often_the_worker_runs_and_after_a_restart(
    world: World,
) -> None:
    worker = world.worker()
    world.at(worker, 0, 1, 2, 3)
    assert world.gate.calls["request"] == 1
    (change,) = world.gate.changes.values()
    assert change.correlation_id == f"kserve-canary:{world.rollout.id}:1"
    assert change.request.requesters == frozenset({STARTER}), "the starter may not approve"
    assert change.request.risk_owner_group == "credit-risk"
    assert change.request.short_description == "Promote r2 of fraud/scorer to 100%"
    assert change.request.window.start == ASKED_AT
    # the approver sees the evidence at the moment of the request: the verdict with its step
    (verdict, *_) = change.request.evidence
    assert verdict.startswith("step 1 (10%): Successful at ")
    assert verdict.endswith("p99 latency and error rate within bounds")
    row = world.rollout.row()
    assert (row.change_number, row.change_sys_id) == (change.number, change.sys_id)
    assert (row.state, row.asked, row.last_error) == ("pending", ("alice", "bob"), None)
    assert world.seen.enqueued == [(NAMESPACE, NAME)], "the engine is woken to see the change"
    assert world.seen.reasons() == [EventReason.APPROVAL_REQUESTED]
    assert change.number in world.seen.events[0][1]

    restarted = world.worker()
    world.at(restarted, 10, 11, 200)
    assert world.gate.calls["request"] == 1
    assert len(world.gate.changes) == 1
    assert world.seen.reasons() == [EventReason.APPROVAL_REQUESTED]

    assert world.rollout.take() == [ChangeOpened("r2", change.number, ASKED_AT)]
    assert world.rollout.state.approval is not None
    assert world.rollout.state.approval.change_number == change.number
    assert len(world.rollout.records("approval.change_opened")) == 1
    assert world.rollout.take() == [], "the machine is told once"


def test_a_lost_answer_to_the_open_finds_the_same_change_again(world: World) -> None:
    world.gate.fail("request", after=True)  # ServiceNow opened it; the answer never came
    worker = world.worker()
    world.at(worker, 0)
    row = world.rollout.row()
    assert (row.state, row.change_sys_id) == ("pending", None)
    assert row.last_error == f"open: {UNAVAILABLE}"
    world.at(worker, 2)
    assert world.gate.calls["request"] == 2
    assert len(world.gate.changes) == 1, "found again by its correlation id, not opened twice"
    (change,) = world.gate.changes.values()
    row = world.rollout.row()
    assert (row.change_number, row.last_error) == (change.number, None)


def test_a_restart_after_a_lost_answer_opens_no_second_change(world: World) -> None:
    world.gate.fail("request", after=True)
    world.at(world.worker(), 0)
    world.at(world.worker(), 1)  # a new process knows no backoff: it asks at once
    assert world.gate.calls["request"] == 2
    assert len(world.gate.changes) == 1
    assert world.rollout.row().change_number == "CHG0030001"


@pytest.mark.parametrize(
    ("failures", "tried_at"),
    [(0, [0]), (1, [0, 2]), (2, [0, 2, 6]), (3, [0, 2, 6, 14]), (4, [0, 2, 6, 14, 30])],
    ids=lambda v: f"{v} failures" if isinstance(v, int) else None,
)
def test_servicenow_failing_keeps_the_approval_waiting_and_backs_off(
    world: World, failures: int, tried_at: list[int]
) -> None:
    world.gate.fail("request", times=failures)
    worker = world.worker()
    last = tried_at[-1]
    for second in range(last):
        before = world.gate.calls["request"]
        world.at(worker, second)
        if world.gate.calls["request"] > before:
            row = world.rollout.row()
            assert (row.state, row.change_sys_id) == ("pending", None)
            assert row.last_error == f"open: {UNAVAILABLE}", "canary status says why"
    assert calls_at(world, worker, "request", range(last, last + 40)) == [last]
    assert world.gate.calls["request"] == failures + 1
    assert len(world.gate.changes) == 1
    assert world.rollout.row().last_error is None
    assert world.seen.errors == [("servicenow", "open")] * failures
    assert world.rollout.state.phase is Phase.AWAITING_APPROVAL


def test_the_backoff_grows_to_five_minutes_at_most(world: World) -> None:
    world.gate.fail("request", times=9)
    worker = world.worker()
    tried = calls_at(world, worker, "request", range(0, 1300))
    gaps = [b - a for a, b in itertools.pairwise(tried)]
    assert gaps == [2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_a_failed_read_is_retried_without_opening_again(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)
    world.gate.fail("decision")
    world.at(worker, 1)
    row = world.rollout.row()
    assert (row.state, row.last_error) == ("pending", f"read: {UNAVAILABLE}")
    assert world.seen.errors == [("servicenow", "read")]
    assert calls_at(world, worker, "decision", range(2, 10)) == [3]
    assert world.rollout.row().last_error is None
    assert world.gate.calls["request"] == 1


def test_a_callback_cuts_a_backoff_short(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)
    world.gate.fail("decision")
    world.at(worker, 1)  # backing off until 3 s
    worker.recheck(world.rollout.row().id, TRIGGER)
    assert calls_at(world, worker, "decision", [1.5, 2, 2.5]) == [1.5]


# --- reading the decision -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("recheck_at", "polled_at"),
    [(None, [1, 61, 121, 181]), (30, [1, 30, 90, 150]), (100, [1, 61, 100, 160])],
    ids=["every poll interval", "a callback at 30 s", "a callback at 100 s"],
)
def test_servicenow_is_read_every_poll_interval_or_at_once_after_a_callback(
    world: World, recheck_at: int | None, polled_at: list[int]
) -> None:
    worker = world.worker()
    world.at(worker, 0)  # the change is opened
    found = calls_at(world, worker, "decision", range(1, recheck_at or 1))
    if recheck_at is not None:
        worker.recheck(world.rollout.row().id, TRIGGER)
    found += calls_at(world, worker, "decision", range(recheck_at or 1, 200))
    assert found == polled_at
    assert world.rollout.row().last_checked_at == ASKED_AT + timedelta(seconds=polled_at[-1])


def test_a_recheck_recorded_by_another_replica_is_seen(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0, 1)
    row = world.rollout.row()
    assert world.store.update_approval(
        row.id, only_if_state="pending", recheck_requested_at=ASKED_AT + timedelta(seconds=4.5)
    )
    assert calls_at(world, worker, "decision", range(5, 10)) == [5]


def test_an_approval_is_written_once_and_the_rollout_woken(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0, 1)
    world.gate.answer = approved_by_alice
    worker.recheck(world.rollout.row().id, TRIGGER)  # the callback said: read it now
    world.at(worker, 2)
    row = world.rollout.row()
    assert (row.state, row.approver) == ("approved", ALICE_ID)
    assert row.decided_at == ASKED_AT + timedelta(seconds=2 - 20)
    assert row.decision is not None
    assert {k: row.decision[k] for k in ("gate", "outcome", "approver", "approver_name")} == {
        "gate": "servicenow",
        "outcome": "approved",
        "approver": ALICE_ID,
        "approver_name": "alice",
    }
    assert row.decision["comments"] == "the evidence holds"
    assert row.decision["change_number"] == row.change_number
    assert (row.decision["webhook_id"], row.decision["payload_digest"]) == (
        TRIGGER["webhook_id"], TRIGGER["payload_digest"],
    )  # fmt: skip
    assert world.seen.enqueued == [(NAMESPACE, NAME)] * 2
    assert world.seen.approvals == [("servicenow", "approved")]

    decisions = world.gate.calls["decision"]
    world.at(worker, 3, 100, 500)
    world.at(world.worker(), 600)
    assert world.gate.calls["decision"] == decisions, "a decided approval is not read again"
    assert world.seen.enqueued == [(NAMESPACE, NAME)] * 2
    assert world.seen.approvals == [("servicenow", "approved")]
    assert world.rollout.row() == row

    (_, decision) = world.rollout.take()
    assert isinstance(decision, ApprovalDecision)
    assert (decision.approved, decision.approver) == (True, "alice")
    assert world.rollout.state.phase is Phase.PROGRESSING
    assert len(world.rollout.records("approval.verified")) == 1


def test_a_rejection_is_written_and_rolls_the_rollout_back(world: World) -> None:
    def rejected(pending: PendingApproval, now: datetime) -> Decision:
        return Decision(
            Outcome.REJECTED, "rejected by bob", now, change_number=pending.change_number,
            approver="b" * 32, approver_name="bob", decided_at=now, comments="p99 too high",
        )  # fmt: skip

    worker = world.worker()
    world.at(worker, 0)
    world.gate.answer = rejected
    world.at(worker, 1)
    assert world.rollout.row().state == "rejected"
    assert world.seen.approvals == [("servicenow", "rejected")]
    world.rollout.take()
    assert world.rollout.state.phase is Phase.ROLLING_BACK


def test_a_decision_written_meanwhile_is_not_written_again(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)

    def decided_elsewhere(pending: PendingApproval, now: datetime) -> Decision:
        row = world.rollout.row()  # a previous leader's pass wrote its decision first
        assert world.store.update_approval(row.id, state="approved", decided_at=now,
                                           record=noted())  # fmt: skip
        return approved_by_alice(pending, now)

    world.gate.answer = decided_elsewhere
    world.at(worker, 1)
    assert world.rollout.row().decision is None, "the first decision stands"
    assert world.seen.enqueued == [(NAMESPACE, NAME)], "woken for the change only"
    assert world.seen.approvals == []


# --- refused approvals ----------------------------------------------------------------------


def test_a_refused_approval_is_recorded_once_per_distinct_set_of_violations(
    world: World,
) -> None:
    worker = world.worker()
    world.at(worker, 0)
    world.gate.answer = refused(Rule.NOT_IN_GROUP)
    worker.recheck(world.rollout.row().id, TRIGGER)
    world.at(worker, 1, 61, 121, 181)
    assert world.gate.calls["decision"] == 4
    (record,) = world.rollout.records("approval.refused")
    row = world.rollout.row()
    assert row.state == "pending", "a refused approval never counts"
    assert record.rollout_id == world.rollout.id
    assert record.leader_epoch == FENCE.epoch
    assert record.evidence["violations"] == [
        {
            "rule": "not_in_group",
            "message": "mallory broke not_in_group",
            "approver": MALLORY_ID,
            "at": (ASKED_AT + timedelta(minutes=30)).isoformat(),
        }
    ]
    assert record.evidence["change_number"] == row.change_number
    assert record.evidence["webhook_id"] == TRIGGER["webhook_id"]
    assert record.evidence["outcome"] == "refused"
    assert "mallory broke not_in_group" in str(record.reason)
    assert world.seen.reasons().count(EventReason.APPROVAL_REFUSED) == 1
    assert world.seen.approvals == [("servicenow", "refused")]

    world.gate.answer = refused(Rule.NOT_IN_GROUP, Rule.SELF_APPROVAL)  # someone else, too
    world.at(worker, 241, 301)
    world.gate.answer = refused(Rule.NOT_IN_GROUP)  # back to the first set
    world.at(worker, 361)
    records = world.rollout.records("approval.refused")
    assert [rules(r) for r in records] == [
        ["not_in_group"],
        ["not_in_group", "self_approval"],
        ["not_in_group"],
    ]
    assert world.seen.reasons().count(EventReason.APPROVAL_REFUSED) == 3
    assert world.rollout.state.phase is Phase.AWAITING_APPROVAL
    assert world.seen.enqueued == [(NAMESPACE, NAME)], "nothing for the engine to take"


def test_an_approval_that_counts_still_records_the_violations_beside_it(world: World) -> None:
    def approved_after_a_refusal(pending: PendingApproval, now: datetime) -> Decision:
        (violation,) = refused(Rule.SELF_APPROVAL)(pending, now).violations
        decision = approved_by_alice(pending, now)
        return replace(decision, violations=(violation,))

    worker = world.worker()
    world.at(worker, 0)
    world.gate.answer = approved_after_a_refusal
    world.at(worker, 1)
    (record,) = world.rollout.records("approval.refused")
    assert rules(record) == ["self_approval"]
    assert world.rollout.row().state == "approved"
    assert world.rollout.row().decision is not None
    assert world.seen.approvals == [("servicenow", "refused"), ("servicenow", "approved")]


def rules(record: AuditEntry) -> list[str]:
    """The rules an ``approval.refused`` record says were broken."""
    violations: Any = record.evidence["violations"]
    return [str(v["rule"]) for v in violations]


def test_only_the_leader_records_a_refusal(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)
    world.gate.answer = refused(Rule.NOT_IN_GROUP)
    world.leadership.fence = None  # leadership lapsed during the pass
    world.at(worker, 1)
    assert world.rollout.records("approval.refused") == []
    assert world.rollout.row().refused_digest is None, "to be recorded by the next leader"
    assert world.seen.reasons().count(EventReason.APPROVAL_REFUSED) == 0
    world.leadership.fence = FENCE
    world.at(worker, 61, 121)
    assert len(world.rollout.records("approval.refused")) == 1


def test_a_deposed_leader_cannot_record_a_refusal(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)
    world.gate.answer = refused(Rule.NOT_IN_GROUP)
    assert world.store.claim_epoch(FENCE.lease_name, "pod-b", 2, ASKED_AT)  # pod-b took over
    with pytest.raises(FencedOut):
        world.at(worker, 1)
    assert world.rollout.records("approval.refused") == []
    assert world.rollout.row().refused_digest is None


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_replica_that_does_not_lead_leaves_the_change_system_alone(world: World) -> None:
    world.leadership.fence = None
    worker = world.worker(tick=0.005)
    worker.start()
    try:
        _wait_for(lambda: world.leadership.asked >= 20, "the loop to go round")
        assert sum(world.gate.calls.values()) == 0
        assert world.seen.pending == [], "not even the pending gauge"
        world.leadership.fence = FENCE  # leading now
        _wait_for(lambda: world.gate.calls["request"] >= 1, "the change to be opened")
    finally:
        worker.stop()
    assert world.rollout.row().change_number == "CHG0030001"


# --- closing ----------------------------------------------------------------------------------


def _superseded(world: World) -> None:
    world.rollout.step(ServiceObserved(view(10, latest="r3", ready=False, share=0)))


def _expired(world: World) -> None:
    world.clock.now = ASKED_AT + timedelta(hours=8)
    world.rollout.step(Tick())


def _deleted(world: World) -> None:
    world.rollout.step(ServiceDeleted())


def _aborted(world: World) -> None:
    world.rollout.step(ManualCommand(CommandKind.ABORT, "bob", "wrong model"))
    world.rollout.step(ServiceObserved(view(0)))


def _rejected(world: World) -> None:
    world.rollout.step(ApprovalDecision(False, "r2", "bob", world.clock(), "CHG0030001"))
    world.rollout.step(ServiceObserved(view(0)))


def _promoted(world: World) -> None:
    world.rollout.step(ApprovalDecision(True, "r2", "alice", world.clock(), "CHG0030001"))
    world.rollout.step(
        AnalysisVerdict(Verdict.SUCCESSFUL, "r2", 0, world.clock(), True, "still fine")
    )
    world.rollout.step(ServiceObserved(promoted_view()))


@dataclass
class Ending:
    how: Callable[[World], None]
    phase: Phase
    row_state: str
    code: str


ENDINGS = {
    "superseded while waiting: cancelled": Ending(
        _superseded, Phase.SUPERSEDED, "cancelled", "cancelled"),
    "the deadline passed: cancelled, the approval expired": Ending(
        _expired, Phase.PAUSED, "expired", "cancelled"),
    "the service deleted: cancelled": Ending(_deleted, Phase.FAILED, "cancelled", "cancelled"),
    "aborted while waiting: closed unsuccessful": Ending(
        _aborted, Phase.ABORTED, "cancelled", "unsuccessful"),
    "rejected and rolled back: closed unsuccessful": Ending(
        _rejected, Phase.ROLLED_BACK, "rejected", "unsuccessful"),
    "approved and promoted: closed successful": Ending(
        _promoted, Phase.SUCCEEDED, "approved", "successful"),
}  # fmt: skip


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_change_the_rollout_no_longer_needs_is_closed_once(world: World, ending: Ending) -> None:
    worker = world.worker()
    world.at(worker, 0)  # the change is opened
    if ending.row_state in ("approved", "rejected"):  # as the worker writes a decision
        assert world.store.update_approval(
            world.rollout.row().id, state=ending.row_state, decided_at=world.clock(),
            record=noted(),
        )  # fmt: skip
    world.clock.advance(10)
    ending.how(world)
    assert world.rollout.state.phase is ending.phase
    row = world.rollout.row()
    assert (row.state, row.close_code, row.closed_at) == (ending.row_state, ending.code, None)
    world.clock.advance(1)
    closed_at = world.clock()
    worker.run_once()
    world.clock.advance(100)
    worker.run_once()
    world.worker().run_once()
    (change,) = world.gate.changes.values()
    assert [code for code, _ in change.closed] == [ending.code]
    assert change.closed[0][1] == row.close_note
    assert world.rollout.row().closed_at == closed_at
    (record,) = world.rollout.records("approval.change_closed")
    assert evidence(record, "change_number", "change_sys_id", "close_code", "revision") == {
        "change_number": change.number,
        "change_sys_id": change.sys_id,
        "close_code": ending.code,
        "revision": "r2",
    }
    # the row as it was written, in the same transaction
    assert record.evidence["approval_id"] == row.id
    stored = record.evidence["approval"]
    assert isinstance(stored, dict)
    assert {k: stored[k] for k in ("closed_at", "close_code", "state")} == {
        "closed_at": format_timestamp(closed_at),
        "close_code": ending.code,
        "state": ending.row_state,
    }
    assert str(record.reason).startswith(f"{change.number} closed {ending.code}")
    assert record.leader_epoch == FENCE.epoch


def test_a_failed_close_is_tried_again_and_recorded_once(world: World) -> None:
    worker = world.worker()
    world.at(worker, 0)
    _superseded(world)
    world.gate.fail("close", after=True)  # closed in ServiceNow, the answer lost
    world.at(worker, 1)
    row = world.rollout.row()
    assert (row.closed_at, row.last_error) == (None, f"close: {UNAVAILABLE}")
    assert world.rollout.records("approval.change_closed") == []
    assert world.seen.errors == [("servicenow", "close")]
    assert calls_at(world, worker, "close", range(2, 10)) == [3]
    assert world.rollout.row().closed_at == ASKED_AT + timedelta(seconds=3)
    assert len(world.rollout.records("approval.change_closed")) == 1


def test_a_row_without_a_change_is_closed_without_asking_servicenow(world: World) -> None:
    _deleted(world)  # before the worker opened anything
    row = world.rollout.row()
    assert (row.state, row.closed_at) == ("cancelled", world.clock())
    world.at(world.worker(), 1, 2)
    assert sum(world.gate.calls.values()) == 0
    assert world.gate.changes == {}
    assert world.rollout.records("approval.change_closed") == []


def test_a_change_opened_after_the_rollout_stopped_needing_it_is_cancelled(
    world: World,
) -> None:
    ask = world.gate.request

    def rollout_ends_meanwhile(request: ApprovalRequest, now: datetime) -> PendingApproval:
        opened = ask(request, now)
        _deleted(world)  # the engine's pass, while ServiceNow was opening the change
        return opened

    world.gate.request = rollout_ends_meanwhile  # type: ignore[method-assign]
    worker = world.worker()
    world.at(worker, 0, 1, 2)
    (change,) = world.gate.changes.values()
    assert [code for code, _ in change.closed] == ["cancelled"], "not left open in ServiceNow"
    assert world.rollout.row().state == "cancelled"
    assert world.seen.enqueued == []


def test_a_change_opened_too_late_is_cancelled_even_if_servicenow_fails_at_first(
    world: World,
) -> None:
    ask = world.gate.request

    def rollout_ends_meanwhile(request: ApprovalRequest, now: datetime) -> PendingApproval:
        opened = ask(request, now)
        _deleted(world)
        world.gate.fail("close")  # and ServiceNow stumbles when told to cancel it
        return opened

    world.gate.request = rollout_ends_meanwhile  # type: ignore[method-assign]
    worker = world.worker()
    world.at(worker, 0)
    (change,) = world.gate.changes.values()
    assert change.closed == []
    world.gate.request = ask  # type: ignore[method-assign]
    world.at(worker, *range(1, 400, 10))
    world.at(world.worker(), 400)
    assert [code for code, _ in change.closed] == ["cancelled"], "not left open in ServiceNow"
    assert change.closed[0][1] == "the InferenceService was deleted during the rollout"
    assert world.gate.calls["request"] == 1
    row = world.rollout.row()
    assert (row.state, row.change_number, row.last_error) == ("cancelled", change.number, None)
    assert row.closed_at is not None
    (record,) = world.rollout.records("approval.change_closed")
    assert record.evidence["close_code"] == "cancelled"


# --- in the hash chain ----------------------------------------------------------------------


def _carried(world: World) -> list[tuple[str, Any]]:
    """The records that carry the approval row, with the row as each says it was."""
    return [
        (r.entry.action, r.entry.evidence["approval"])
        for r in world.store.records()
        if "approval" in r.entry.evidence
    ]


def test_every_write_an_auditor_reads_is_chained_with_the_row_as_written(world: World) -> None:
    def agrees() -> None:
        assert _carried(world)[-1][1] == approval_snapshot(world.rollout.row())

    agrees()  # the request, in the engine's commit
    worker = world.worker()
    world.at(worker, 0)  # the change is opened
    agrees()
    world.at(worker, 1, 2)  # a read that finds nothing new: the worker's books only
    assert world.rollout.row().last_checked_at == ASKED_AT + timedelta(seconds=1)
    assert len(_carried(world)) == 2
    world.gate.asked = lambda pending: ("alice", "bob", "carol")  # type: ignore[method-assign]
    world.at(worker, 70)
    agrees()
    world.gate.answer = approved_by_alice
    world.at(worker, 140)
    agrees()
    world.rollout.take()
    world.rollout.step(AnalysisVerdict(Verdict.SUCCESSFUL, "r2", 0, world.clock(), True, "fine"))
    world.rollout.step(ServiceObserved(promoted_view()))  # the rollout ends: close the change
    agrees()
    world.at(worker, 200)
    agrees()
    assert [action for action, _ in _carried(world)] == [
        "approval.requested",
        "approval.change_created",
        "approval.asked",
        "approval.decision_verified",
        "approval.close_requested",
        "approval.change_closed",
    ]
    records = {r.entry.action: r.entry for r in world.store.records()}
    asked = records["approval.asked"]
    assert (asked.evidence["asked"], asked.evidence["previously_asked"]) == (
        ["alice", "bob", "carol"], ["alice", "bob"],
    )  # fmt: skip
    verified = records["approval.decision_verified"]
    assert verified.actor == Actor("servicenow", "alice", uid=ALICE_ID)
    assert (verified.approver, verified.change_number) == (
        ALICE_ID,
        world.rollout.row().change_number,
    )
    closing = records["approval.close_requested"]
    assert closing.actor == Actor("controller", FENCE.holder), "the leader that wrote it"
    assert closing.leader_epoch == FENCE.epoch
    assert world.store.crosscheck() == []


def test_a_refusal_is_chained_in_the_write_that_notes_it(world: World) -> None:
    world.gate.answer = refused(Rule.SELF_APPROVAL)
    world.at(world.worker(), 0, 1)
    (refusal,) = world.rollout.records("approval.refused")
    row = world.rollout.row()
    assert row.refused_digest is not None
    assert refusal.evidence["approval"] == approval_snapshot(row)
