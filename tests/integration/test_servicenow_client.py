"""The product's ServiceNow client (approvals/servicenow.py) against the test bed's simulator
(testbed/servicenow/): two implementations of the same API subset, written apart, checked
against each other over real HTTP — opening a change once, asking for approval, reading a
risk owner's decision and judging it, and riding out 429s."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from approvals.gate import Outcome, PlannedWindow, Rule, servicenow_decision
from approvals.servicenow import OAuthPassword, ServiceNowClient
from approvals.transport import Transport
from approvals.types import ChangeApproval, ChangeDraft
from testbed.servicenow.process import ServiceNowSim
from tests.unit.test_servicenow import draft

pytestmark = pytest.mark.integration


@pytest.fixture
def client(servicenow: ServiceNowSim) -> Iterator[ServiceNowClient]:
    auth = OAuthPassword(client_id="kserve-canary", client_secret="kserve-canary-client-secret",
                         username="kserve-canary", password="integration-password")  # fmt: skip
    with Transport(servicenow.url, timeout=10.0) as transport:
        yield ServiceNowClient(transport, auth, sleep=lambda _: None)


def _draft(group_sys_id: str, correlation: str, now: datetime) -> ChangeDraft:
    return replace(
        draft(),
        correlation_id=correlation,
        assignment_group=group_sys_id,
        planned_start=now - timedelta(minutes=5),
        planned_end=now + timedelta(days=1),
    )


@pytest.mark.parametrize("api", ["change", "table"])
def test_a_change_is_opened_once_approved_by_a_risk_owner_and_judged(
    servicenow: ServiceNowSim, client: ServiceNowClient, api: str
) -> None:
    now = datetime.now(UTC)
    group = client.group("credit-risk")
    assert group is not None
    draft = _draft(group.sys_id, f"kserve-canary:ro-{api}:3", now)

    change = client.open_change(draft, api=api)  # type: ignore[arg-type]
    again = client.open_change(draft, api=api)  # type: ignore[arg-type]
    assert again.sys_id == change.sys_id  # found by its correlation id, not opened twice
    created = [
        c for c in servicenow.admin.changes() if c.get("correlation_id") == draft.correlation_id
    ]
    assert len(created) == 1

    change = client.request_approval(change)
    assert change.approval is ChangeApproval.REQUESTED
    approvers = client.approvers(change)
    names = {client.user(r.approver).user_name for r in approvers}
    assert names == {"alice", "bob"}  # the risk-owner group's members were asked

    servicenow.admin.approve(change.number, "alice", "model risk reviewed")
    change = client.read_change(change.sys_id)
    approvers = client.approvers(change)
    users = {r.approver: client.user(r.approver) for r in approvers}
    members = {r.approver for r in approvers if client.is_member(r.approver, group.sys_id)}
    requester = change.requested_by
    decision = servicenow_decision(
        change, approvers, users, members, [requester] if requester else [],
        PlannedWindow(draft.planned_start, draft.planned_end), datetime.now(UTC),
    )  # fmt: skip
    assert decision.outcome is Outcome.APPROVED, decision.reason
    assert decision.approver_name == "alice"
    assert decision.comments == "model risk reviewed"
    assert decision.change_number == change.number


def test_an_approval_by_someone_outside_the_group_never_counts(
    servicenow: ServiceNowSim, client: ServiceNowClient
) -> None:
    now = datetime.now(UTC)
    group = client.group("credit-risk")
    assert group is not None
    draft = _draft(group.sys_id, "kserve-canary:ro-sod:3", now)
    change = client.request_approval(client.open_change(draft))
    servicenow.admin.approve(change.number, "mallory", "lgtm", force=True)
    change = client.read_change(change.sys_id)
    approvers = client.approvers(change)
    users = {r.approver: client.user(r.approver) for r in approvers}
    members = {r.approver for r in approvers if client.is_member(r.approver, group.sys_id)}
    decision = servicenow_decision(change, approvers, users, members, [], None, datetime.now(UTC))
    assert change.approval is ChangeApproval.APPROVED  # ServiceNow itself says approved...
    assert decision.outcome is Outcome.REFUSED, decision  # ...but it never counts
    assert not decision.counts_as_approval
    assert [v.rule for v in decision.violations] == [Rule.NOT_IN_GROUP]


def test_429s_are_ridden_out_and_no_second_change_is_opened(
    servicenow: ServiceNowSim, client: ServiceNowClient
) -> None:
    group = client.group("credit-risk")
    assert group is not None
    servicenow.admin.fail_next(429, count=2, retry_after=1)
    change = client.open_change(_draft(group.sys_id, "kserve-canary:ro-429:3", datetime.now(UTC)))
    assert change.number.startswith("CHG")
    created = [c for c in servicenow.admin.changes()
               if c.get("correlation_id") == "kserve-canary:ro-429:3"]  # fmt: skip
    assert len(created) == 1
