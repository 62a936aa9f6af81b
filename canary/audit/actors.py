"""The chained records of the mutable tables: who asked, who delivered, who decided. PURE.

``commands``, ``approvals`` and ``webhook_deliveries`` are the controller's working state,
and a database administrator can rewrite a row without touching the hash chain. So every
write to them that matters to an auditor appends, in the same transaction as the row, a
record built here; :mod:`canary.audit.crosscheck` compares the tables with these records.
The formats below are what the cross-check reads: change them only together.

**Commands** (``correlation_id`` is the command's id on all three):

* ``manual.requested``, when the command is queued: the actor is the person as the
  apiserver authenticated them (name, uid, groups); the object is namespace/name; the
  evidence holds ``command_id``, ``command``, ``args``, ``reason`` and ``requested_at``.
* ``manual.settled``, when the leader settles it (every settle, whatever the path): the
  actor is the controller that settled it; ``rollout_id`` is the rollout it acted on when
  there is one; the evidence holds ``command_id``, ``command``, ``state``, ``result`` and
  ``decided_at``. The records the command caused (``manual.pause``, ``traffic.intent``,
  ``approval.verified``, ...) come before it in the same transaction.
* ``manual.linked``: a ``start`` command settles as soon as the model is written, before
  KServe has made the revision its rollout is about; when that rollout starts, this record
  (in the same transaction as ``rollout.started``) names the rollout, the command and the
  sequence numbers of its two records. ``rollout.started`` names them too.

**Webhook deliveries**: ``webhook.delivered``, once per new ``webhook-id`` (a duplicate is
not recorded again): the record's ``webhook_id`` and ``payload_digest`` fields, and in the
evidence ``source``, ``signature_valid``, ``outcome`` and ``received_at``.

**Approvals**: every record whose evidence holds the key ``approval`` carries the row as it
stood after the write, in :func:`approval_snapshot` form (the fields in
:data:`APPROVAL_AUDITED`), with ``approval_id`` beside it. The latest such record of a row
is what the row must still say. The writes that only keep the worker's books
(:data:`APPROVAL_BOOKKEEPING`: when it last looked, its last error, which note or refusal
it already sent, a callback's re-read hint) need no record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import datetime
from typing import Any, Final

from canary.audit.records import (
    JSON,
    Actor,
    ActorKind,
    ApprovalRow,
    AuditEntry,
    CommandRow,
    ObjectRef,
    normalise,
)

__all__ = [
    "APPROVAL_ASKED",
    "APPROVAL_AUDITED",
    "APPROVAL_BOOKKEEPING",
    "APPROVAL_CHANGE_CLOSED",
    "APPROVAL_CHANGE_CREATED",
    "APPROVAL_CLOSED",
    "APPROVAL_CLOSE_REQUESTED",
    "APPROVAL_DECISION_VERIFIED",
    "APPROVAL_ID_KEY",
    "APPROVAL_KEY",
    "APPROVAL_REFUSED",
    "APPROVAL_REQUESTED",
    "APPROVAL_UPDATED",
    "MANUAL_LINKED",
    "MANUAL_REQUESTED",
    "MANUAL_SETTLED",
    "WEBHOOK_DELIVERED",
    "approval_snapshot",
    "approval_transition",
    "delivery_entry",
    "requested_entry",
    "settled_entry",
    "with_snapshot",
]

MANUAL_REQUESTED: Final = "manual.requested"
MANUAL_SETTLED: Final = "manual.settled"
MANUAL_LINKED: Final = "manual.linked"
WEBHOOK_DELIVERED: Final = "webhook.delivered"

APPROVAL_KEY: Final = "approval"
APPROVAL_ID_KEY: Final = "approval_id"

# What the approval rows' writes are recorded as (besides the state machine's own records,
# which carry the row when the engine writes one in the same transaction).
APPROVAL_REQUESTED: Final = "approval.requested"
APPROVAL_CHANGE_CREATED: Final = "approval.change_created"  # the worker opened a change
APPROVAL_ASKED: Final = "approval.asked"  # who the change system asks changed
APPROVAL_DECISION_VERIFIED: Final = "approval.decision_verified"  # worker or inbox verified
APPROVAL_REFUSED: Final = "approval.refused"
APPROVAL_CLOSE_REQUESTED: Final = "approval.close_requested"
APPROVAL_CHANGE_CLOSED: Final = "approval.change_closed"  # closed in the change system
APPROVAL_CLOSED: Final = "approval.closed"  # no change to close
APPROVAL_UPDATED: Final = "approval.updated"

APPROVAL_AUDITED: Final = (
    "id", "rollout_id", "revision", "step_index", "attempt", "gate", "state",
    "change_number", "change_sys_id", "risk_owner_group", "requested_by", "requested_at",
    "deadline", "percent", "requesters", "window_start", "window_end", "approver",
    "decided_at", "decision", "close_code", "close_note", "closed_at", "asked",
)  # fmt: skip
"""The approval fields an auditor reads: each write of one of them is recorded."""

APPROVAL_BOOKKEEPING: Final = (
    "last_checked_at", "last_error", "noted_at", "noted_digest", "recheck_requested_at",
    "trigger", "refused_digest",
)  # fmt: skip
"""The worker's own books: written without a record."""

assert set(APPROVAL_AUDITED) | set(APPROVAL_BOOKKEEPING) == {f.name for f in fields(ApprovalRow)}, (
    "every approval field is either audited or bookkeeping"
)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def requested_entry(command: CommandRow) -> AuditEntry:
    """The ``manual.requested`` record of a newly queued command."""
    return AuditEntry(
        at=command.requested_at,
        actor=command.who,
        action=MANUAL_REQUESTED,
        obj=ObjectRef(command.namespace, command.name),
        reason=command.reason,
        evidence={
            "command_id": command.id,
            "command": command.command,
            "args": normalise(dict(command.args)),
            "reason": command.reason,
            "requested_at": normalise(command.requested_at),
        },
        correlation_id=command.id,
    )


def settled_entry(
    command: CommandRow,
    *,
    actor: Actor,
    rollout_id: str | None = None,
    leader_epoch: int | None = None,
) -> AuditEntry:
    """The ``manual.settled`` record of ``command`` as it was just settled."""
    assert command.decided_at is not None, "a settled command has its decision time"
    return AuditEntry(
        at=command.decided_at,
        actor=actor,
        action=MANUAL_SETTLED,
        rollout_id=rollout_id,
        obj=ObjectRef(command.namespace, command.name),
        reason=command.result,
        evidence={
            "command_id": command.id,
            "command": command.command,
            "state": command.state,
            "result": command.result,
            "decided_at": normalise(command.decided_at),
        },
        leader_epoch=leader_epoch,
        correlation_id=command.id,
    )


# --------------------------------------------------------------------------------------------
# webhook deliveries
# --------------------------------------------------------------------------------------------


def delivery_entry(
    webhook_id: str,
    *,
    received_at: datetime,
    source: str,
    payload_digest: str,
    signature_valid: bool,
    outcome: str,
    actor: Actor | None = None,
    rollout_id: str | None = None,
    obj: ObjectRef | None = None,
    context: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The ``webhook.delivered`` record of a new delivery. ``actor`` is the sender as the
    signature identifies it (by default the source's callback); ``context`` adds what the
    inbox knew of it (the change, the decision named)."""
    kind: ActorKind = "servicenow" if source == "servicenow" else "webhook"
    extra = normalise(dict(context or {}))
    assert isinstance(extra, dict)
    return AuditEntry(
        at=received_at,
        actor=actor or Actor(kind, "callback"),
        action=WEBHOOK_DELIVERED,
        rollout_id=rollout_id,
        obj=obj,
        reason=f"{source} delivery {webhook_id}: {outcome}",
        evidence={
            **extra,
            "source": source,
            "signature_valid": signature_valid,
            "outcome": outcome,
            "received_at": normalise(received_at),
        },
        webhook_id=webhook_id,
        payload_digest=payload_digest,
    )


# --------------------------------------------------------------------------------------------
# approvals
# --------------------------------------------------------------------------------------------


def approval_snapshot(row: ApprovalRow) -> dict[str, JSON]:
    """The audited fields of an approval row, as plain JSON data."""
    return {name: normalise(getattr(row, name)) for name in APPROVAL_AUDITED}


def with_snapshot(entry: AuditEntry, row: ApprovalRow) -> AuditEntry:
    """``entry`` carrying ``row`` (as stored after the write) in its evidence."""
    snapshot: dict[str, JSON] = {APPROVAL_ID_KEY: row.id, APPROVAL_KEY: approval_snapshot(row)}
    return replace(entry, evidence={**entry.evidence, **snapshot})


def approval_transition(before: ApprovalRow | None, after: ApprovalRow) -> str:
    """The action of a record that says what a write did to an approval row, when its
    writer gave none (the engine's close requests, chiefly)."""
    if before is None:
        return APPROVAL_REQUESTED
    if after.close_code is not None and before.close_code is None:
        return APPROVAL_CLOSE_REQUESTED
    if before.state == "pending" and after.state in ("approved", "rejected"):
        return APPROVAL_DECISION_VERIFIED
    if after.closed_at is not None and before.closed_at is None:
        return APPROVAL_CLOSED
    return APPROVAL_UPDATED
