"""The approval gates' decisions. ServiceNow: from what ServiceNow says, who approved or
rejected, and whether the approval counts under segregation of duties (in the risk-owner
group, not the requester, inside the planned window). The Kubernetes gate (`canary
approve|reject`) and the signed-webhook gate: the same rules for the identity the cluster or
the signed payload names; a rejection stops the rollout when the gate lets its sender decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from approvals.gate import (
    ApprovalKey,
    Decision,
    Outcome,
    PlannedWindow,
    Rule,
    kubernetes_decision,
    servicenow_decision,
    webhook_decision,
)
from approvals.types import (
    ApproverRecord,
    ApproverState,
    Change,
    ChangeApproval,
    ChangeState,
    User,
)

ALICE, BOB, CAROL, SVC, GHOST = ("a" * 32, "b" * 32, "c" * 32, "5" * 32, "6" * 32)
USERS = {
    ALICE: User(ALICE, "alice", "Alice Risk", "Alice@Bank.example"),
    BOB: User(BOB, "bob", "Bob Risk", "bob@bank.example"),
    CAROL: User(CAROL, "carol", "Carol Dev", "carol@bank.example"),
    SVC: User(SVC, "kserve-canary", "Integration", ""),
}
MEMBERS = frozenset({ALICE, BOB})
START = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
WINDOW = PlannedWindow(START, START + timedelta(hours=8))
NOW = START + timedelta(hours=2)
IN = START + timedelta(hours=1)

STATE_FOR = {
    ChangeApproval.NOT_REQUESTED: ChangeState.NEW,
    ChangeApproval.REQUESTED: ChangeState.AUTHORIZE,
    ChangeApproval.APPROVED: ChangeState.SCHEDULED,
    ChangeApproval.REJECTED: ChangeState.NEW,
}


def change(approval: ChangeApproval, state: ChangeState | None = None) -> Change:
    return Change(
        sys_id="d" * 32,
        number="CHG0030001",
        state=state or STATE_FOR[approval],
        approval=approval,
        correlation_id=ApprovalKey("ro-1", "rev-7", 3).correlation_id,
        assignment_group="9" * 32,
        requested_by=SVC,
        planned_start=WINDOW.start,
        planned_end=WINDOW.end,
        close_code=None,
    )


_ids = iter(f"{n:032x}" for n in range(1, 1000))


def rec(who: str, state: str, at: datetime = IN, comments: str = "") -> ApproverRecord:
    return ApproverRecord(next(_ids), who, ApproverState(state), comments, at)


@dataclass
class Case:
    approval: ChangeApproval
    records: list[ApproverRecord]
    outcome: Outcome
    approver: str | None = None
    rules: list[tuple[Rule, str | None]] = field(default_factory=list)
    comments: str = ""
    reason: str = ""
    requesters: frozenset[str] = frozenset({SVC, "carol"})
    state: ChangeState | None = None


A, R = ChangeApproval.APPROVED, ChangeApproval.REJECTED
CASES = {
    "approved by a member of the risk-owner group": Case(
        A, [rec(ALICE, "approved", comments="evidence is convincing"), rec(BOB, "requested")],
        Outcome.APPROVED, ALICE, comments="evidence is convincing",
        reason="approved by alice"),
    "approved by someone outside the group: refused": Case(
        A, [rec(CAROL, "approved")], Outcome.REFUSED,
        rules=[(Rule.NOT_IN_GROUP, CAROL), (Rule.SELF_APPROVAL, CAROL)],
        reason="no approval satisfies segregation of duties"),
    "approved by a non-member who did not request: refused": Case(
        A, [rec(CAROL, "approved")], Outcome.REFUSED, rules=[(Rule.NOT_IN_GROUP, CAROL)],
        requesters=frozenset({SVC})),
    "self-approval by user name: refused": Case(
        A, [rec(ALICE, "approved")], Outcome.REFUSED, rules=[(Rule.SELF_APPROVAL, ALICE)],
        requesters=frozenset({"alice"})),
    "self-approval by e-mail, any case: refused": Case(
        A, [rec(ALICE, "approved")], Outcome.REFUSED, rules=[(Rule.SELF_APPROVAL, ALICE)],
        requesters=frozenset({"alice@bank.EXAMPLE"})),
    "self-approval by sys_id: refused": Case(
        A, [rec(ALICE, "approved")], Outcome.REFUSED, rules=[(Rule.SELF_APPROVAL, ALICE)],
        requesters=frozenset({ALICE})),
    "approved after the planned window: does not count": Case(
        A, [rec(ALICE, "approved", at=WINDOW.end + timedelta(seconds=1))], Outcome.REFUSED,
        rules=[(Rule.OUTSIDE_WINDOW, ALICE)], reason="outside the planned window"),
    "approved before the planned window: does not count": Case(
        A, [rec(ALICE, "approved", at=START - timedelta(minutes=5))], Outcome.REFUSED,
        rules=[(Rule.OUTSIDE_WINDOW, ALICE)]),
    "approved at the window's last second: counts": Case(
        A, [rec(ALICE, "approved", at=WINDOW.end)], Outcome.APPROVED, ALICE),
    "rejected, with the approver's comments": Case(
        R, [rec(BOB, "rejected", comments="p99 too close to the limit"), rec(ALICE, "requested")],
        Outcome.REJECTED, BOB, comments="p99 too close to the limit", reason="rejected by bob"),
    "rejected by someone outside the group: still a rejection": Case(
        R, [rec(CAROL, "rejected", comments="no")], Outcome.REJECTED, CAROL, comments="no"),
    "still pending": Case(
        ChangeApproval.REQUESTED, [rec(ALICE, "requested"), rec(BOB, "requested")],
        Outcome.PENDING, reason="awaiting approval (0 of 2 approvers answered)"),
    "an approver approved, the change still awaits the others": Case(
        ChangeApproval.REQUESTED, [rec(ALICE, "approved"), rec(BOB, "requested")],
        Outcome.PENDING, reason="(1 of 2 approvers answered)"),
    "approval not requested yet": Case(
        ChangeApproval.NOT_REQUESTED, [], Outcome.PENDING, reason="not requested yet"),
    "one rejects, another approves, ServiceNow says rejected": Case(
        R, [rec(ALICE, "approved"), rec(BOB, "rejected", IN + timedelta(minutes=1), "no")],
        Outcome.REJECTED, BOB, comments="no"),
    "one rejects, another approves, ServiceNow says approved": Case(
        A, [rec(BOB, "rejected", IN + timedelta(minutes=1), "no"), rec(ALICE, "approved")],
        Outcome.APPROVED, ALICE),
    "a non-member approved first, then a member: the member's approval counts": Case(
        A, [rec(CAROL, "approved", IN), rec(BOB, "approved", IN + timedelta(minutes=3))],
        Outcome.APPROVED, BOB,
        rules=[(Rule.NOT_IN_GROUP, CAROL), (Rule.SELF_APPROVAL, CAROL)]),
    "a later self-approval is recorded though a valid one counted": Case(
        A, [rec(ALICE, "approved", IN), rec(BOB, "approved", IN + timedelta(minutes=3))],
        Outcome.APPROVED, ALICE, rules=[(Rule.SELF_APPROVAL, BOB)],
        requesters=frozenset({"bob"})),
    "approved, but no record says by whom: refused": Case(
        A, [rec(ALICE, "requested")], Outcome.REFUSED, rules=[(Rule.NO_APPROVER, None)],
        reason="no approver record shows who approved"),
    "approved by a user we could not read: refused": Case(
        A, [rec(GHOST, "approved")], Outcome.REFUSED, rules=[(Rule.UNKNOWN_APPROVER, GHOST)]),
    "canceled in ServiceNow while awaiting approval": Case(
        ChangeApproval.REQUESTED, [rec(ALICE, "requested")], Outcome.REJECTED,
        reason="was canceled in ServiceNow", state=ChangeState.CANCELED),
    "closed in ServiceNow after approval, before the promotion": Case(
        A, [rec(ALICE, "approved")], Outcome.REJECTED, reason="was closed in ServiceNow",
        state=ChangeState.CLOSED),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decision(case: Case) -> None:
    decision = servicenow_decision(
        change(case.approval, case.state),
        case.records,
        USERS,
        MEMBERS,
        case.requesters,
        WINDOW,
        NOW,
    )
    assert decision.outcome is case.outcome, decision.reason
    assert decision.approver == case.approver
    assert [(v.rule, v.approver) for v in decision.violations] == case.rules
    assert decision.comments == case.comments
    assert case.reason in decision.reason
    assert decision.counts_as_approval is (case.outcome is Outcome.APPROVED)
    assert (decision.change_number, decision.checked_at) == ("CHG0030001", NOW)
    if case.approver is not None:
        assert decision.approver_name == USERS[case.approver].user_name
        (decisive,) = [r for r in case.records if r.approver == case.approver]
        assert decision.decided_at == decisive.updated_at


def test_without_a_window_any_time_counts() -> None:
    late = [rec(ALICE, "approved", at=WINDOW.end + timedelta(days=3))]
    decision = servicenow_decision(
        change(A), late, USERS, MEMBERS, {SVC}, None, NOW + timedelta(days=3)
    )
    assert decision.outcome is Outcome.APPROVED


def test_violations_name_the_rule_broken() -> None:
    decision = servicenow_decision(
        change(A), [rec(CAROL, "approved")], USERS, MEMBERS, {"carol"}, WINDOW, NOW
    )
    messages = [v.message for v in decision.violations]
    assert messages == ["carol is not in the risk-owner group", "carol requested this change"]
    assert "carol is not in the risk-owner group" in decision.reason


def test_a_window_must_be_a_real_interval() -> None:
    with pytest.raises(ValueError, match="must end after it starts"):
        PlannedWindow(START, START)
    with pytest.raises(ValueError, match="timezone-aware"):
        PlannedWindow(START.replace(tzinfo=None), WINDOW.end)


def test_the_correlation_id_names_rollout_and_step() -> None:
    assert ApprovalKey("ro-1", "rev-7", 3).correlation_id == "kserve-canary:ro-1:3"


# ------------------------------------------------------------------------------------------
# The Kubernetes gate (`canary approve|reject`) and the signed-webhook gate
# ------------------------------------------------------------------------------------------

STARTER = "Carol@Bank.example"  # who started the rollout: never their own approver
APPROVERS = ("alice@bank.example", "Bob@Bank.example")  # the webhook policy's list
BEFORE, AFTER = START - timedelta(seconds=1), WINDOW.end + timedelta(seconds=1)


@dataclass
class Person:
    """One decision as it reaches the controller, and what it must come to."""

    approved: bool
    who: str
    outcome: Outcome
    rules: list[Rule] = field(default_factory=list)
    groups: tuple[str, ...] = ("system:authenticated", "credit-risk")
    at: datetime = NOW
    reason: str = ""


K8S_CASES = {
    "a member of the risk-owner group approves": Person(
        True, "alice", Outcome.APPROVED, reason="approved by alice"),
    "a stranger to the group approves: refused": Person(
        True, "mallory", Outcome.REFUSED, [Rule.NOT_IN_GROUP],
        groups=("system:authenticated", "ml-platform"),
        reason="mallory is not in the risk-owner group credit-risk"),
    "a caller with no groups approves: refused, the cluster said none": Person(
        True, "mallory", Outcome.REFUSED, [Rule.NOT_IN_GROUP], groups=(),
        reason="their groups are: none"),
    "a group named in another case does not count": Person(
        True, "mallory", Outcome.REFUSED, [Rule.NOT_IN_GROUP], groups=("Credit-Risk",)),
    "the starter approves: refused though a member": Person(
        True, "carol@bank.example", Outcome.REFUSED, [Rule.SELF_APPROVAL],
        reason="carol@bank.example started this rollout"),
    "the starter in other letters approves: refused": Person(
        True, "CAROL@BANK.EXAMPLE", Outcome.REFUSED, [Rule.SELF_APPROVAL]),
    "a stranger who started it approves: both rules broken": Person(
        True, "carol@bank.example", Outcome.REFUSED, [Rule.NOT_IN_GROUP, Rule.SELF_APPROVAL],
        groups=("dev",)),
    "a member approves after the deadline: refused": Person(
        True, "alice", Outcome.REFUSED, [Rule.OUTSIDE_WINDOW], at=AFTER,
        reason="outside the window"),
    "a member approves before the request: refused": Person(
        True, "alice", Outcome.REFUSED, [Rule.OUTSIDE_WINDOW], at=BEFORE),
    "a member approves in the window's last second": Person(
        True, "alice", Outcome.APPROVED, at=WINDOW.end),
    "a member rejects": Person(False, "alice", Outcome.REJECTED, reason="rejected by alice"),
    "anyone RBAC let through rejects: a rejection": Person(
        False, "mallory", Outcome.REJECTED, groups=("ml-platform",)),
    "the starter rejects: a rejection": Person(False, "carol@bank.example", Outcome.REJECTED),
    "a rejection after the deadline still stops the rollout": Person(
        False, "mallory", Outcome.REJECTED, groups=(), at=AFTER),
}  # fmt: skip


@pytest.mark.parametrize("case", K8S_CASES.values(), ids=K8S_CASES.keys())
def test_kubernetes_decision(case: Person) -> None:
    decision = kubernetes_decision(
        approved=case.approved,
        user=case.who,
        groups=case.groups,
        risk_owner_group="credit-risk",
        requesters=(STARTER,),
        window=WINDOW,
        comment="looked at the evidence",
        now=case.at,
    )
    _check_person(decision, case)


WEBHOOK_CASES = {
    "a listed approver approves": Person(
        True, "alice@bank.example", Outcome.APPROVED, reason="approved by alice@bank.example"),
    "a listed approver in other letters approves": Person(
        True, "ALICE@bank.EXAMPLE", Outcome.APPROVED),
    "listed in other letters, named as listed": Person(True, "bob@bank.example", Outcome.APPROVED),
    "an unlisted identity approves: refused": Person(
        True, "mallory@bank.example", Outcome.REFUSED, [Rule.NOT_IN_GROUP],
        reason="mallory@bank.example is not one of the policy's approvers"),
    "a listed starter approves: refused": Person(
        True, "carol@bank.example", Outcome.REFUSED, [Rule.SELF_APPROVAL]),
    "an unlisted starter approves: both rules broken": Person(
        True, "carol@bank.example", Outcome.REFUSED, [Rule.NOT_IN_GROUP, Rule.SELF_APPROVAL]),
    "a listed approver after the deadline: refused": Person(
        True, "alice@bank.example", Outcome.REFUSED, [Rule.OUTSIDE_WINDOW], at=AFTER),
    "a listed approver before the request: refused": Person(
        True, "alice@bank.example", Outcome.REFUSED, [Rule.OUTSIDE_WINDOW], at=BEFORE),
    "a listed approver rejects": Person(
        False, "bob@bank.example", Outcome.REJECTED, reason="rejected by bob@bank.example"),
    "an unlisted identity rejects: refused, it does not stop the rollout": Person(
        False, "mallory@bank.example", Outcome.REFUSED, [Rule.NOT_IN_GROUP],
        reason="mallory@bank.example is not one of the policy's approvers"),
}  # fmt: skip
LISTED_STARTER = {"a listed starter approves: refused"}


@pytest.mark.parametrize(("name", "case"), WEBHOOK_CASES.items(), ids=WEBHOOK_CASES.keys())
def test_webhook_decision(name: str, case: Person) -> None:
    allowed = (*APPROVERS, STARTER) if name in LISTED_STARTER else APPROVERS
    decision = webhook_decision(
        approved=case.approved,
        approver=case.who,
        allowed=allowed,
        requesters=(STARTER,),
        window=WINDOW,
        comment="looked at the evidence",
        now=case.at,
    )
    _check_person(decision, case)


def _check_person(decision: Decision, case: Person) -> None:
    assert decision.outcome is case.outcome, decision.reason
    assert [v.rule for v in decision.violations] == case.rules
    assert case.reason in decision.reason
    assert decision.checked_at == case.at
    assert decision.counts_as_approval is (case.outcome is Outcome.APPROVED)
    for violation in decision.violations:
        assert (violation.approver, violation.at) == (case.who, case.at)
        assert violation.message in decision.reason
    if case.outcome is Outcome.REFUSED:
        assert (decision.approver, decision.decided_at) == (None, None), "nobody decided"
    else:
        assert (decision.approver, decision.approver_name) == (case.who, case.who)
        assert decision.decided_at == case.at
        assert decision.comments == "looked at the evidence"


def test_without_a_window_a_late_member_approval_counts() -> None:
    decision = kubernetes_decision(
        approved=True, user="alice", groups=("credit-risk",), risk_owner_group="credit-risk",
        requesters=(), window=None, comment="", now=AFTER + timedelta(days=2),
    )  # fmt: skip
    assert decision.outcome is Outcome.APPROVED


def test_the_decisions_refuse_naive_times() -> None:
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        kubernetes_decision(
            approved=True, user="alice", groups=("credit-risk",),
            risk_owner_group="credit-risk", requesters=(), window=WINDOW, comment="", now=naive,
        )  # fmt: skip
    with pytest.raises(ValueError, match="timezone-aware"):
        webhook_decision(
            approved=True, approver="alice@bank.example", allowed=APPROVERS, requesters=(),
            window=WINDOW, comment="", now=naive,
        )  # fmt: skip
