"""How the demo judges a credit scenario from the audit trail and the simulator: it counts as
expected only when the recorded decision is the one the risk owner took (change, approver,
comment) and ServiceNow closed the change with the matching close code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from canary.audit import AuditRecord
from canary.audit.records import Actor, AuditEntry
from testbed.demo import RiskOwnerDecision, _approval_summary

REJECT = RiskOwnerDecision("reject", "bob", "not before the bias review")
CLOSED = {"CHG0000001": {"number": "CHG0000001", "state": "3", "close_code": "unsuccessful"}}


def _record(action: str, number: str, approver: str, comments: str) -> AuditRecord:
    entry = AuditEntry(
        at=datetime(2026, 12, 5, 20, 0, tzinfo=UTC),
        actor=Actor("servicenow", approver),
        action=action,
        rollout_id="r-1",
        evidence={
            "gate": "servicenow",
            "change_number": number,
            "decision": {
                "approver_name": approver,
                "comments": comments,
                "webhook_id": "msg_1",
                "payload_digest": "sha256:ab",
            },
        },
    )
    return AuditRecord(seq=7, prev_hash="", record_hash="", body="", entry=entry)


def test_the_decision_the_risk_owner_took_and_a_closed_change_are_as_expected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    recorded = [_record("approval.rejected", "CHG0000001", "bob", REJECT.comment)]
    assert _approval_summary(REJECT, recorded, "CHG0000001", CLOSED)
    shown = capsys.readouterr().out
    assert "change CHG0000001 rejected by bob in ServiceNow: 'not before the bias review'" in shown
    assert "after the signed callback msg_1" in shown
    assert "CHG0000001 closed, close code unsuccessful" in shown


@pytest.mark.parametrize(
    ("records", "acted_on", "changes"),
    [
        ([], "CHG0000001", CLOSED),  # nothing recorded
        ([("approval.verified", "CHG0000001", "bob", REJECT.comment)], "CHG0000001", CLOSED),
        ([("approval.rejected", "CHG0000001", "mallory", REJECT.comment)], "CHG0000001", CLOSED),
        ([("approval.rejected", "CHG0000001", "bob", "another comment")], "CHG0000001", CLOSED),
        ([("approval.rejected", "CHG0000001", "bob", REJECT.comment)], "CHG0000002", CLOSED),
        (
            [("approval.rejected", "CHG0000001", "bob", REJECT.comment)],
            "CHG0000001",
            {"CHG0000001": {"state": "-5", "close_code": ""}},  # still open
        ),
        (
            [("approval.rejected", "CHG0000001", "bob", REJECT.comment)],
            "CHG0000001",
            {"CHG0000001": {"state": "3", "close_code": "successful"}},  # closed the wrong way
        ),
    ],
    ids=["none", "approved", "other-approver", "other-comment", "other-change", "open",
         "close-code"],
)  # fmt: skip
def test_anything_else_is_unexpected(
    records: list[tuple[str, str, str, str]], acted_on: str, changes: dict[str, Any]
) -> None:
    recorded = [_record(*r) for r in records]
    assert not _approval_summary(REJECT, recorded, acted_on, changes)
