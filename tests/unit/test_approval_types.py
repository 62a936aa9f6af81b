"""The approvals' values refuse what they cannot stand for: an unknown state, a correlation id
ServiceNow would cut or a query would misread, a window that ends before it starts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from approvals.types import (
    ApproverState,
    ChangeApproval,
    ChangeDraft,
    ChangeState,
    CloseCode,
    UnknownValue,
)

START = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "state"),
    [(-5, ChangeState.NEW), ("-4", ChangeState.ASSESS), ("-3.0", ChangeState.AUTHORIZE),
     (0, ChangeState.REVIEW), (4.0, ChangeState.CANCELED)],
)  # fmt: skip
def test_states_parse(value: object, state: ChangeState) -> None:
    assert ChangeState.parse(value) is state


@pytest.mark.parametrize("value", [1, "2", -6, "nan", "inf", 3.5, None, False, [3], "New"])
def test_unknown_states_are_errors(value: object) -> None:
    with pytest.raises(UnknownValue, match="change state"):
        ChangeState.parse(value)


def test_choices_parse_exact_values_only() -> None:
    assert ChangeApproval.parse("not requested") is ChangeApproval.NOT_REQUESTED
    assert ApproverState.parse("cancelled") is ApproverState.CANCELLED
    assert CloseCode.parse("successful_issues") is CloseCode.SUCCESSFUL_ISSUES
    for parse, value in [
        (ChangeApproval.parse, "not_requested"),
        (ApproverState.parse, "canceled"),
        (CloseCode.parse, "Successful"),
    ]:
        with pytest.raises(UnknownValue, match="known:"):
            parse(value)


def draft(**override: Any) -> ChangeDraft:
    base = ChangeDraft(
        short_description="Promote m",
        description="",
        correlation_id="kserve-canary:ro-1:100",
        model="m",
        inference_service="ns/m",
        old_storage_uri=None,
        new_storage_uri="s3://m/2",
        old_revision=None,
        new_revision="m-00002",
        policy="p",
        evidence=(),
        audit_links=(),
        assignment_group="9" * 32,
        planned_start=START,
        planned_end=START + timedelta(hours=8),
    )
    return replace(base, **override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"correlation_id": "kserve-canary:" + "x" * 90}, "longer than ServiceNow keeps"),
        ({"correlation_id": "a^ORcorrelation_id=b"}, "without '\\^'"),
        ({"correlation_id": ""}, "non-empty"),
        ({"assignment_group": "credit-risk"}, "not a ServiceNow sys_id"),
        ({"requested_by": "admin"}, "not a ServiceNow sys_id"),
        ({"planned_end": START}, "ends .* before it starts"),
        ({"planned_start": START.replace(tzinfo=None)}, "timezone-aware"),
        ({"short_description": "  "}, "short description"),
    ],
)
def test_a_draft_refuses_what_servicenow_would_mangle(
    override: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        draft(**override)
