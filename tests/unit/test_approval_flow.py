"""Approvals between the state machine and the ``approvals`` rows (canary/approval_flow.py).

A request becomes a row the approval worker carries out: a first attempt, or after an
expiry and a resume a new attempt with a new correlation id (a new change); the starter may
not approve; the window opens at the request's second. When the rollout no longer needs
the row it is closed: expired or cancelled as the machine saw it end, a decided row keeps
its decision, and a row with a change waits for the worker to close it. What the worker
found goes back to the machine only for the machine's current, still pending approval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary.approval_flow import (
    close_row,
    decision_actor,
    observations,
    pending_of,
    request_row,
)
from canary.audit import Actor, ApprovalRow
from canary.model import (
    ApprovalDecision,
    ChangeOpened,
    CloseChange,
    CommandKind,
    Phase,
    RequestApproval,
    Revision,
    RolloutState,
    ServiceObserved,
)
from tests.unit.rollout_driver import APPROVAL, T0, Driver, make_policy, promoted_view

MIN = timedelta(minutes=1)
POLICY = make_policy(steps=[10, 100], approval=APPROVAL)  # servicenow, credit-risk, 8h
ASKED_AT = T0 + 5 * MIN
SYS_ID = "d" * 32
ALICE_ID = "a" * 32


def awaiting(started_by: str | None = "carol", policy: Any = POLICY) -> Driver:
    """A rollout started by ``started_by`` whose promotion to 100 % awaits approval."""
    d = Driver(policy).start()
    assert d.state is not None
    d.state = replace(d.state, started_by=started_by)
    d.see(10)
    d.at(5 * MIN).verdict()
    assert d.phase() is Phase.AWAITING_APPROVAL
    return d


def asked(d: Driver) -> RequestApproval:
    (request,) = [a for a in d.actions if isinstance(a, RequestApproval)]
    return request


def closing(d: Driver) -> CloseChange:
    (close,) = [a for a in d.actions if isinstance(a, CloseChange)]
    return close


def state_of(d: Driver) -> RolloutState:
    assert d.state is not None
    return d.state


def first_row(d: Driver) -> ApprovalRow:
    return request_row(state_of(d), d.policy, asked(d), None, state_of(d).phase_entered_at)


def opened(row: ApprovalRow) -> ApprovalRow:
    """The row once the worker opened its change."""
    return replace(row, change_number="CHG0030001", change_sys_id=SYS_ID)


def decided(row: ApprovalRow, state: str, name: str = "alice") -> ApprovalRow:
    """The row once the worker verified a ServiceNow decision."""
    return replace(
        opened(row),
        state=state,  # type: ignore[arg-type]
        approver=ALICE_ID,
        decided_at=ASKED_AT + 30 * MIN,
        decision={"approver": ALICE_ID, "approver_name": name, "comments": "fine by me"},
    )


# --- request_row --------------------------------------------------------------------------


def test_the_first_request_is_attempt_one_asked_by_the_starter() -> None:
    d = awaiting()
    row = first_row(d)
    request = asked(d)
    assert (row.rollout_id, row.revision, row.step_index) == ("ro-1", "r2", 1)
    assert (row.gate, row.state, row.attempt) == ("servicenow", "pending", 1)
    assert (row.percent, row.risk_owner_group) == (100, "credit-risk")
    assert row.requesters == ("carol",)
    assert row.requested_by == "carol"
    assert (row.requested_at, row.deadline) == (ASKED_AT, request.deadline)
    assert row.deadline == ASKED_AT + timedelta(hours=8)
    assert (row.window_start, row.window_end) == (ASKED_AT, request.deadline)
    assert (row.change_number, row.change_sys_id, row.close_code, row.closed_at) == (
        None, None, None, None,
    )  # fmt: skip
    assert pending_of(row).key.correlation_id == "kserve-canary:ro-1:1"


def test_without_a_known_starter_nobody_is_barred_and_the_controller_asks() -> None:
    row = first_row(awaiting(started_by=None))
    assert row.requesters == ()
    assert row.requested_by == "controller"
    assert pending_of(row).requesters == frozenset()


def test_the_window_starts_at_the_second_of_the_request() -> None:
    d = awaiting()
    at = ASKED_AT + timedelta(microseconds=750_000)
    row = request_row(state_of(d), d.policy, asked(d), None, at)
    assert row.requested_at == at
    assert row.window_start == ASKED_AT, "an approval stamped in the request's second counts"
    assert pending_of(row).window.contains(ASKED_AT)


def test_asked_again_after_an_expiry_is_a_new_attempt_with_a_new_change() -> None:
    d = awaiting()
    row = opened(first_row(d))
    d.at(5 * MIN + timedelta(hours=8))  # the deadline passes: held
    assert d.phase() is Phase.PAUSED
    expired = close_row(row, state_of(d), closing(d), d.now)
    assert expired.state == "expired"
    d.at(10 * MIN + timedelta(hours=8)).command(CommandKind.RESUME, "risk owner is back")
    again = request_row(state_of(d), d.policy, asked(d), expired, state_of(d).phase_entered_at)
    assert again.id != row.id, "a row of its own: the first attempt keeps its change to close"
    assert again.attempt == 2
    assert again.state == "pending"
    assert (again.change_number, again.change_sys_id) == (None, None), "a new change is opened"
    assert (again.close_code, again.closed_at, again.decision) == (None, None, None)
    assert again.requested_at == T0 + 10 * MIN + timedelta(hours=8)
    assert again.deadline == again.requested_at + timedelta(hours=8)
    assert again.window_start == again.requested_at
    assert pending_of(again).key.correlation_id == "kserve-canary:ro-1:1:2"
    assert pending_of(again).key.correlation_id != pending_of(row).key.correlation_id


def test_a_third_attempt_counts_on() -> None:
    row = replace(first_row(awaiting()), attempt=2, state="expired")
    d = awaiting()
    third = request_row(state_of(d), d.policy, asked(d), row, ASKED_AT)
    assert third.attempt == 3
    assert pending_of(third).key.correlation_id == "kserve-canary:ro-1:1:3"


def test_a_request_repeated_while_pending_stays_the_same_attempt() -> None:
    d = awaiting()
    row = opened(first_row(d))
    same = request_row(state_of(d), d.policy, asked(d), row, ASKED_AT)
    assert (same.id, same.attempt) == (row.id, 1)
    assert pending_of(same).key.correlation_id == pending_of(row).key.correlation_id


# --- close_row ----------------------------------------------------------------------------


@dataclass
class CloseCase:
    machine: str | None  # the machine's approval status (None: no approval)
    row_state: str
    with_change: bool
    final: str
    closed_at_once: bool


CLOSE_CASES = {
    "pending, the machine saw it expire: expired, the change closed later": CloseCase(
        "expired", "pending", True, "expired", False),
    "pending, the rollout ended otherwise: cancelled, the change closed later": CloseCase(
        "pending", "pending", True, "cancelled", False),
    "pending, no approval in the machine: cancelled": CloseCase(
        None, "pending", True, "cancelled", False),
    "pending, no change opened yet: cancelled and closed at once": CloseCase(
        "pending", "pending", False, "cancelled", True),
    "pending, expired, no change: expired and closed at once": CloseCase(
        "expired", "pending", False, "expired", True),
    "approved: stays approved": CloseCase("approved", "approved", True, "approved", False),
    "rejected: stays rejected": CloseCase("rejected", "rejected", True, "rejected", False),
    "approved, though the machine says pending: stays approved": CloseCase(
        "pending", "approved", True, "approved", False),
    "rejected row of another gate without a change: closed at once": CloseCase(
        "rejected", "rejected", False, "rejected", True),
}  # fmt: skip


@pytest.mark.parametrize("case", CLOSE_CASES.values(), ids=CLOSE_CASES.keys())
def test_close_row(case: CloseCase) -> None:
    d = awaiting()
    state = state_of(d)
    assert state.approval is not None
    status: Any = case.machine
    state = replace(
        state, approval=None if status is None else replace(state.approval, status=status)
    )
    row = replace(first_row(d), state=case.row_state)  # type: ignore[arg-type]
    if case.with_change:
        row = opened(row)
    now = ASKED_AT + timedelta(hours=1)
    action = CloseChange(row.change_number, "cancelled", "superseded by r3")
    closed = close_row(row, state, action, now)
    assert closed.state == case.final
    assert (closed.close_code, closed.close_note) == ("cancelled", "superseded by r3")
    assert closed.closed_at == (now if case.closed_at_once else None)
    assert (closed.id, closed.change_sys_id) == (row.id, row.change_sys_id)


def test_a_rollout_that_succeeded_closes_its_approved_change_successful() -> None:
    d = awaiting()
    row = decided(first_row(d), "approved")
    d.at(6 * MIN).decide(approved=True).verdict()
    assert d.phase() is Phase.PROMOTING
    d.apply(ServiceObserved(promoted_view()))
    assert d.phase() is Phase.SUCCEEDED
    closed = close_row(row, state_of(d), closing(d), d.now)
    assert (closed.state, closed.close_code, closed.closed_at) == ("approved", "successful", None)


def test_a_rejected_rollout_closes_its_change_unsuccessful() -> None:
    d = awaiting()
    row = decided(first_row(d), "rejected")
    d.decide(approved=False, approver="alice").see(0)
    assert d.phase() is Phase.ROLLED_BACK
    closed = close_row(row, state_of(d), closing(d), d.now)
    assert (closed.state, closed.close_code) == ("rejected", "unsuccessful")
    assert closed.decision == row.decision, "the decision stays on the row"


def test_an_approval_superseded_while_waiting_is_cancelled() -> None:
    d = awaiting()
    row = opened(first_row(d))
    d.see(10, latest="r3", ready=False, share=0)
    assert d.phase() is Phase.SUPERSEDED
    closed = close_row(row, state_of(d), closing(d), d.now)
    assert (closed.state, closed.close_code, closed.closed_at) == ("cancelled", "cancelled", None)


def test_a_close_keeps_the_time_a_change_was_closed_before() -> None:
    d = awaiting()
    before = ASKED_AT + 2 * MIN
    row = replace(opened(first_row(d)), closed_at=before)
    closed = close_row(row, state_of(d), CloseChange("CHG0030001", "cancelled", "x"), d.now)
    assert closed.closed_at == before


# --- observations -------------------------------------------------------------------------


def test_a_change_opened_is_told_once() -> None:
    d = awaiting()
    row = opened(first_row(d))
    found = observations(state_of(d), row)
    assert found == [ChangeOpened("r2", "CHG0030001", ASKED_AT)]
    d.apply(found[0])
    assert observations(state_of(d), row) == [], "the machine knows that change now"


def test_nothing_before_the_worker_opened_a_change() -> None:
    d = awaiting()
    assert observations(state_of(d), first_row(d)) == []
    assert observations(state_of(d), None) == []


@pytest.mark.parametrize(("outcome", "approved"), [("approved", True), ("rejected", False)])
def test_a_verified_decision_is_handed_over(outcome: str, approved: bool) -> None:
    d = awaiting()
    row = decided(first_row(d), outcome)
    d.apply(ChangeOpened("r2", "CHG0030001", ASKED_AT))
    assert observations(state_of(d), row) == [
        ApprovalDecision(
            approved=approved,
            revision="r2",
            approver="alice",
            decided_at=ASKED_AT + 30 * MIN,
            change_number="CHG0030001",
            comment="fine by me",
        )
    ]


def test_change_and_decision_found_in_one_pass_are_both_handed_over() -> None:
    d = awaiting()
    found = observations(state_of(d), decided(first_row(d), "approved"))
    assert [type(o) for o in found] == [ChangeOpened, ApprovalDecision]


def test_a_decision_without_a_name_names_the_approver_column() -> None:
    d = awaiting()
    row = replace(decided(first_row(d), "approved"), decision=None, approver="bob")
    d.apply(ChangeOpened("r2", "CHG0030001", ASKED_AT))
    (found,) = observations(state_of(d), row)
    assert isinstance(found, ApprovalDecision)
    assert (found.approver, found.comment) == ("bob", "")


@pytest.mark.parametrize("row_state", ["pending", "expired", "cancelled"], ids=lambda s: f"row {s}")
def test_an_undecided_row_hands_over_no_decision(row_state: str) -> None:
    d = awaiting()
    row = replace(opened(first_row(d)), state=row_state)  # type: ignore[arg-type]
    d.apply(ChangeOpened("r2", "CHG0030001", ASKED_AT))
    assert observations(state_of(d), row) == []


def test_a_decided_row_without_a_time_is_not_handed_over() -> None:
    d = awaiting()
    row = replace(decided(first_row(d), "approved"), decided_at=None)
    d.apply(ChangeOpened("r2", "CHG0030001", ASKED_AT))
    assert observations(state_of(d), row) == []


def test_nothing_for_a_row_of_a_superseded_revision() -> None:
    d = awaiting()
    row = decided(first_row(d), "approved")
    assert observations(state_of(d), replace(row, revision="r1")) == []
    newer = replace(state_of(d), canary=Revision("r3", "s3://models/r3"))
    assert observations(newer, row) == [], "r2's decision is not r3's"


def test_nothing_for_a_row_of_another_step() -> None:
    d = awaiting()
    row = decided(first_row(d), "approved")
    assert observations(state_of(d), replace(row, step_index=0)) == []


@pytest.mark.parametrize("status", ["approved", "rejected", "expired"])
def test_nothing_once_the_machine_no_longer_waits(status: str) -> None:
    d = awaiting()
    row = decided(first_row(d), "approved")
    state = state_of(d)
    assert state.approval is not None
    done = replace(state, approval=replace(state.approval, status=status))  # type: ignore[arg-type]
    assert observations(done, row) == []
    assert observations(replace(state, approval=None), row) == []


def test_a_decision_handed_over_moves_the_machine_on() -> None:
    d = awaiting()
    row = decided(first_row(d), "approved")
    for found in observations(state_of(d), row):
        d.apply(found)
    approval = state_of(d).approval
    assert approval is not None
    assert (approval.status, approval.approver, approval.change_number) == (
        "approved", "alice", "CHG0030001",
    )  # fmt: skip
    assert observations(state_of(d), row) == [], "handed over once"


# --- pending_of ---------------------------------------------------------------------------


def test_the_gate_sees_the_row() -> None:
    row = opened(replace(first_row(awaiting()), attempt=2))
    pending = pending_of(row)
    assert pending.key.correlation_id == "kserve-canary:ro-1:1:2"
    assert (pending.key.rollout_id, pending.key.revision, pending.key.step_index) == (
        "ro-1", "r2", 1,
    )  # fmt: skip
    assert (pending.gate, pending.risk_owner_group) == ("servicenow", "credit-risk")
    assert pending.requesters == frozenset({"carol"})
    assert (pending.requested_at, pending.deadline) == (ASKED_AT, row.deadline)
    assert (pending.window.start, pending.window.end) == (ASKED_AT, row.deadline)
    assert (pending.change_number, pending.change_sys_id) == ("CHG0030001", SYS_ID)


def test_a_row_without_a_window_uses_request_and_deadline() -> None:
    row = replace(first_row(awaiting()), window_start=None, window_end=None)
    window = pending_of(row).window
    assert (window.start, window.end) == (ASKED_AT, ASKED_AT + timedelta(hours=8))


def test_a_deadline_at_the_request_gives_a_window_of_one_second() -> None:
    row = replace(first_row(awaiting()), window_end=ASKED_AT, deadline=ASKED_AT)
    window = pending_of(row).window
    assert (window.start, window.end) == (ASKED_AT, ASKED_AT + timedelta(seconds=1))


def test_a_row_without_group_gives_an_empty_group() -> None:
    row = replace(first_row(awaiting()), risk_owner_group=None)
    assert pending_of(row).risk_owner_group == ""


# --- decision_actor -----------------------------------------------------------------------


WHEN = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
ACTOR_CASES: dict[str, tuple[str, str, dict[str, Any] | None, str | None, Actor | None]] = {
    "a ServiceNow user, with the sys_id": (
        "servicenow", "approved", {"approver": ALICE_ID, "approver_name": "alice"}, ALICE_ID,
        Actor("servicenow", "alice", uid=ALICE_ID)),
    "a ServiceNow rejection": (
        "servicenow", "rejected", {"approver": ALICE_ID, "approver_name": "alice"}, ALICE_ID,
        Actor("servicenow", "alice", uid=ALICE_ID)),
    "a ServiceNow decision without a name: the approver column": (
        "servicenow", "approved", None, ALICE_ID, Actor("servicenow", ALICE_ID)),
    "the identity a signed webhook named": (
        "webhook", "approved", {"approver": "Alice@Bank.example",
                                "approver_name": "Alice@Bank.example"},
        "Alice@Bank.example", Actor("webhook", "Alice@Bank.example")),
    "the Kubernetes gate: the command's caller, not the row": (
        "kubernetes", "approved", {"approver": "alice", "approver_name": "alice"}, "alice",
        None),
    "not decided: nobody": (
        "servicenow", "pending", {"approver_name": "alice"}, ALICE_ID, None),
    "expired: nobody": ("servicenow", "expired", None, None, None),
    "decided, but nobody named": ("webhook", "approved", {}, None, None),
}  # fmt: skip


@pytest.mark.parametrize(
    ("gate", "state", "decision", "approver", "actor"),
    ACTOR_CASES.values(),
    ids=ACTOR_CASES.keys(),
)
def test_decision_actor(
    gate: str,
    state: str,
    decision: dict[str, Any] | None,
    approver: str | None,
    actor: Actor | None,
) -> None:
    row = replace(
        first_row(awaiting()),
        gate=gate,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        decision=decision,
        approver=approver,
        decided_at=WHEN if state in ("approved", "rejected") else None,
    )
    assert decision_actor(row) == actor
