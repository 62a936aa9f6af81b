"""Approvals between the state machine and the ``approvals`` rows. PURE: no I/O.

The machine asks for approval (``RequestApproval``) and closes the request when the rollout
no longer needs it (``CloseChange``); the engine turns both into ``approvals`` rows written
in the same transaction as the rollout's state (:func:`request_row`, :func:`close_row`).
The approval worker (:mod:`canary.approval_worker`) carries them out against the change
system and writes back the change's number and, once verified, the decision; the engine
hands those to the machine on its next pass (:func:`observations`), and the audit records
the machine makes of them carry the decision's evidence (:func:`decision_actor`,
:func:`decision_evidence`).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from approvals.gate import ApprovalKey, Decision, PendingApproval, PlannedWindow, Violation
from canary.audit import APPROVAL_ID_KEY, Actor, ApprovalRow, AuditEntry
from canary.model import (
    ApprovalDecision,
    ChangeOpened,
    CloseChange,
    Observation,
    RequestApproval,
    RolloutState,
)
from canary.policy import RolloutPolicy

__all__ = [
    "close_row",
    "decision_actor",
    "decision_evidence",
    "decision_json",
    "name_row",
    "observations",
    "pending_of",
    "request_row",
    "violations_json",
]

_DECIDED = frozenset({"approved", "rejected"})


def request_row(
    state: RolloutState,
    policy: RolloutPolicy,
    action: RequestApproval,
    previous: ApprovalRow | None,
    now: datetime,
) -> ApprovalRow:
    """The row for a new request. Asked again at the same step (after an expiry and a
    resume) it is a new attempt, a row of its own: the earlier attempt's change stays on its
    row (to be closed there), and a new change is opened."""
    again = previous is not None and previous.state != "pending"
    attempt = (previous.attempt + 1 if again else previous.attempt) if previous else 1
    requesters = (state.started_by,) if state.started_by else ()
    return ApprovalRow(
        id=previous.id if previous is not None and not again else str(uuid.uuid4()),
        rollout_id=state.rollout_id,
        revision=action.revision,
        step_index=action.step_index,
        gate=policy.approval.gate.value,  # type: ignore[arg-type]  # never "none" here
        change_number=None,
        change_sys_id=None,
        risk_owner_group=action.risk_owner_group,
        requested_by=state.started_by or "controller",
        requested_at=now,
        deadline=action.deadline,
        state="pending",
        attempt=attempt,
        percent=action.percent,
        requesters=requesters,
        # Change systems keep times to the second: an approval in the very second the
        # request was made must fall inside the window.
        window_start=now.replace(microsecond=0),
        window_end=action.deadline,
    )


def close_row(
    row: ApprovalRow, state: RolloutState, action: CloseChange, now: datetime
) -> ApprovalRow:
    """The row once the rollout no longer needs it: still pending, it ends as the machine
    saw it end (expired) or cancelled; the change is to be closed with ``action``'s code.
    Without a change to close (another gate, or none opened yet) it is closed at once."""
    machine = state.approval.status if state.approval is not None else None
    final = row.state
    if row.state == "pending":
        final = machine if machine in ("expired", "approved", "rejected") else "cancelled"
    nothing_to_close = row.change_sys_id is None
    return replace(
        row,
        state=final,
        close_code=action.close_code,
        close_note=action.note,
        closed_at=now if nothing_to_close else row.closed_at,
    )


def observations(state: RolloutState, row: ApprovalRow | None) -> list[Observation]:
    """What the worker found since the machine last looked: the change it opened, the
    decision it verified. Nothing for a row of another revision or step, or once the
    machine's approval is no longer pending."""
    approval = state.approval
    if row is None or approval is None or approval.status != "pending":
        return []
    if row.revision != state.canary.name or row.step_index != approval.step_index:
        return []
    found: list[Observation] = []
    if row.change_number and approval.change_number != row.change_number:
        found.append(ChangeOpened(row.revision, row.change_number, row.requested_at))
    if row.state in _DECIDED and row.decided_at is not None:
        decision = row.decision or {}
        found.append(
            ApprovalDecision(
                approved=row.state == "approved",
                revision=row.revision,
                approver=str(decision.get("approver_name") or row.approver or "unknown"),
                decided_at=row.decided_at,
                change_number=row.change_number,
                comment=str(decision.get("comments") or ""),
            )
        )
    return found


def pending_of(row: ApprovalRow) -> PendingApproval:
    """The gate's view of a row."""
    start = row.window_start or row.requested_at
    end = row.window_end or row.deadline or row.requested_at
    if end <= start:  # a deadline at the request itself: a window of one second
        end = start + timedelta(seconds=1)
    return PendingApproval(
        key=ApprovalKey(row.rollout_id, row.revision, row.step_index, row.attempt),
        gate=row.gate,
        risk_owner_group=row.risk_owner_group or "",
        requesters=frozenset(row.requesters),
        requested_at=row.requested_at,
        deadline=row.deadline or end,
        window=PlannedWindow(start, end),
        change_number=row.change_number,
        change_sys_id=row.change_sys_id,
    )


def violations_json(violations: tuple[Violation, ...]) -> list[dict[str, Any]]:
    return [
        {
            "rule": v.rule.value,
            "message": v.message,
            "approver": v.approver,
            "at": v.at.isoformat() if v.at else None,
        }
        for v in violations
    ]


def decision_json(
    decision: Decision, gate: str, trigger: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A verified decision as the row keeps it and the audit record shows it."""
    return {
        "gate": gate,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "checked_at": decision.checked_at.isoformat(),
        "change_number": decision.change_number,
        "change_sys_id": decision.change_sys_id,
        "approver": decision.approver,
        "approver_name": decision.approver_name,
        "decided_at": decision.decided_at.isoformat() if decision.decided_at else None,
        "comments": decision.comments,
        "violations": violations_json(decision.violations),
        "webhook_id": (trigger or {}).get("webhook_id"),
        "payload_digest": (trigger or {}).get("payload_digest"),
    }


def decision_evidence(row: ApprovalRow) -> dict[str, Any]:
    """What an ``approval.*`` record adds to the machine's details: the row it is about, the
    change's number and sys_id, who decided and when, their comments, the rules checked, and
    the callback."""
    decision = dict(row.decision or {})
    return {
        APPROVAL_ID_KEY: row.id,
        "gate": row.gate,
        "change_number": row.change_number,
        "change_sys_id": row.change_sys_id,
        "attempt": row.attempt,
        "decision": decision,
    }


def decision_actor(row: ApprovalRow) -> Actor | None:
    """Who decided, for the record: a ServiceNow user (name, sys_id), or the identity a
    signed webhook named. The Kubernetes gate's approver is the command's caller."""
    decision = row.decision or {}
    name = decision.get("approver_name") or row.approver
    if not name or row.state not in _DECIDED:
        return None
    if row.gate == "servicenow":
        return Actor("servicenow", str(name), uid=decision.get("approver"))
    if row.gate == "webhook":
        return Actor("webhook", str(name))
    return None


def name_row(entries: list[AuditEntry], action: str, approval_id: str) -> list[AuditEntry]:
    """``entries`` with the last ``action`` record that names no approval row yet naming
    ``approval_id``: the store carries that row, as the same commit writes it, in that
    record (``AuditStore.commit``)."""
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if entry.action == action and APPROVAL_ID_KEY not in entry.evidence:
            named = replace(entry, evidence={**entry.evidence, APPROVAL_ID_KEY: approval_id})
            return [*entries[:index], named, *entries[index + 1 :]]
    return entries
