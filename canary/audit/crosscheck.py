"""Cross-checks of the mutable tables against the hash chain.

The hash chain proves its records were not changed (``verify``, and the signed checkpoints
anchor it outside the database). The ``commands``, ``approvals`` and ``webhook_deliveries``
tables are working state that an administrator can rewrite without touching the chain, but
since every write to them that matters to an auditor appends a record in the same
transaction (:mod:`canary.audit.actors`), each row must agree with its records:

* every ``commands`` row with its ``manual.requested`` record (the person as the apiserver
  authenticated them: name, uid, groups; the command, its arguments, its reason, its time,
  its target), and a settled one with its ``manual.settled`` record (state, result, time);
* every ``webhook_deliveries`` row with its ``webhook.delivered`` record (source, payload
  digest, signature, outcome, time);
* every ``approvals`` row with the latest record that carries it (every audited field:
  state, approver, decision time and evidence, change number and sys_id, close code, who
  was asked, ...).

:meth:`CrossCheck.crosscheck` names each disagreement as a :class:`Discrepancy`: a row that
differs from its record (``edited``), a row without its record (``not_in_chain``: edited,
or inserted outside the controller), a record whose row is gone (``deleted``).

**Rows from before chaining.** Rows written by a controller that did not chain them yet have
no records, and that is not tampering. Such a row is reported as ``predates`` when its own
time (a command's request or settlement, a delivery's receipt, an approval's request) is
earlier than the first record of any of these kinds in the chain: the first write of a
controller that chains them. A row dated after that moment has no excuse. What this cannot
tell apart: a row inserted by hand *and* dated before that moment reads as ``predates``
(the chain says nothing about what came before it recorded these tables), and a row written
by a replica of the previous version during a rolling upgrade reads as ``not_in_chain``.
With no such record in the chain at all, every row without a record is ``predates``.

The rows and the records are read in one transaction that sees a single snapshot of the
database (``REPEATABLE READ`` on PostgreSQL; SQLite's transactions always do), so writes
that happen meanwhile cannot look like discrepancies. The check trusts the records' bodies:
run it with ``verify``, which proves them.

:class:`CrossCheck` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import Connection, and_, or_, select

from canary.audit.actors import (
    APPROVAL_AUDITED,
    APPROVAL_KEY,
    MANUAL_REQUESTED,
    MANUAL_SETTLED,
    WEBHOOK_DELIVERED,
    approval_snapshot,
)
from canary.audit.approvals import _row as approval_row
from canary.audit.commands import _command_from
from canary.audit.purges import read_purges
from canary.audit.records import (
    ApprovalRow,
    AuditEntry,
    CommandRow,
    decode_body,
    format_timestamp,
    normalise,
)
from canary.audit.schema import ApprovalModel, AuditLog, CommandModel, WebhookDeliveryRow

__all__ = ["CrossCheck", "Discrepancy", "DiscrepancyKind"]

DiscrepancyKind = Literal["edited", "not_in_chain", "deleted", "predates", "purged"]
Table = Literal["commands", "approvals", "webhook_deliveries", "audit_log"]

_BATCH: Final = 5000
_SHOWN: Final = 120  # characters of a value shown in a problem


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One disagreement between a mutable table and the chain (or a record it could not
    read: ``table`` ``audit_log``, ``key`` its seq).

    ``table`` and ``key`` name the row (a command's or an approval's id, a delivery's
    ``webhook-id``); ``seq`` the record it was compared with, if any; ``problem`` says what
    differs, with both values. ``kind``: ``edited`` (the row differs from its record),
    ``not_in_chain`` (a row without its record: edited, or inserted outside the
    controller), ``deleted`` (a record whose row is gone), ``predates`` (a row older than
    chaining, see the module; not a sign of tampering), ``purged`` (a row dated at or before
    the cutoff of a purge beyond the retention, whose records the purge removed; the purge
    itself is chained and checked by ``verify``)."""

    table: Table
    key: str
    kind: DiscrepancyKind
    problem: str
    seq: int | None = None

    @property
    def tampering(self) -> bool:
        """Whether this is evidence of a change made outside the controller."""
        return self.kind not in ("predates", "purged")


@dataclass(frozen=True, slots=True)
class _Seen:
    seq: int
    entry: AuditEntry


@dataclass
class _Chained:
    """What the chain says about the mutable tables."""

    requested: dict[str, _Seen]
    settled: dict[str, _Seen]
    delivered: dict[str, _Seen]
    approvals: dict[str, _Seen]  # the latest record carrying each row
    first: datetime | None = None  # the first such record's time
    unreadable: list[tuple[int, str]] | None = None
    purged_before: datetime | None = None  # the latest purge's cutoff


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _differences(table: Mapping[str, Any], chained: Mapping[str, Any]) -> list[str]:
    return [
        f"{name} is {_shown(table[name])} in the table but {_shown(chained.get(name))} in the chain"
        for name in table
        if table[name] != chained.get(name)
    ]


def _when(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


class CrossCheck:
    """Compare the mutable tables with the chain (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool, snapshot: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def crosscheck(self) -> list[Discrepancy]:
        """Every disagreement between ``commands``, ``approvals`` and ``webhook_deliveries``
        and the chain (see the module), by table then key; empty when they agree."""
        with self._tx(write=False, snapshot=True) as conn:
            chained = _read_chain(conn)
            cutoffs = [purge.cutoff for purge in read_purges(conn)]
            chained.purged_before = max(cutoffs) if cutoffs else None
            commands = [
                _command_from(r._mapping)
                for r in conn.execute(select(CommandModel.__table__).order_by(CommandModel.id))
            ]
            deliveries = conn.execute(
                select(WebhookDeliveryRow.__table__).order_by(WebhookDeliveryRow.webhook_id)
            ).all()
            approvals = [
                approval_row(r._mapping)
                for r in conn.execute(select(ApprovalModel.__table__).order_by(ApprovalModel.id))
            ]
        found = [
            Discrepancy(
                "audit_log",
                str(seq),
                "edited",
                f"record {seq} cannot be read ({why}); run `canary audit verify`",
                seq,
            )
            for seq, why in chained.unreadable or ()
        ]
        found += _check_commands(commands, chained)
        found += _check_deliveries([dict(r._mapping) for r in deliveries], chained)
        found += _check_approvals(approvals, chained)
        return sorted(found, key=lambda d: (d.table, d.key, d.seq or 0))


# --------------------------------------------------------------------------------------------
# reading the chain
# --------------------------------------------------------------------------------------------


def _relevant() -> Any:
    # approval.* as a range, so an index on the action serves it whatever the collation
    return or_(
        AuditLog.action.in_((MANUAL_REQUESTED, MANUAL_SETTLED, WEBHOOK_DELIVERED)),
        and_(AuditLog.action >= "approval.", AuditLog.action < "approval/"),
    )


def _batches(conn: Connection) -> Iterator[Sequence[Any]]:
    last = 0
    while True:
        rows = conn.execute(
            select(AuditLog.seq, AuditLog.body)
            .where(_relevant(), AuditLog.seq > last)
            .order_by(AuditLog.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        yield rows
        last = rows[-1].seq


def _read_chain(conn: Connection) -> _Chained:
    chained = _Chained({}, {}, {}, {}, None, [])
    assert chained.unreadable is not None
    for rows in _batches(conn):
        for row in rows:
            try:
                entry = decode_body(row.body)
            except (ValueError, KeyError, TypeError) as exc:
                chained.unreadable.append((row.seq, str(exc)))
                continue
            seen = _Seen(row.seq, entry)
            evidence = entry.evidence
            counts = True
            if entry.action == MANUAL_REQUESTED:
                chained.requested.setdefault(str(evidence.get("command_id")), seen)
            elif entry.action == MANUAL_SETTLED:
                chained.settled[str(evidence.get("command_id"))] = seen
            elif entry.action == WEBHOOK_DELIVERED:
                chained.delivered.setdefault(str(entry.webhook_id), seen)
            elif isinstance(snapshot := evidence.get(APPROVAL_KEY), Mapping):
                chained.approvals[str(snapshot.get("id"))] = seen
            else:
                counts = False  # an approval record that carries no row
            if counts and (chained.first is None or entry.at < chained.first):
                chained.first = entry.at
    return chained


def _missing(
    table: Table, key: str, what: str, row_time: datetime | None, chained: _Chained
) -> Discrepancy:
    purged = chained.purged_before
    if purged is not None and row_time is not None and row_time <= purged:
        return Discrepancy(
            table,
            key,
            "purged",
            f"{what}: its records were purged with the trail before "
            f"{format_timestamp(purged)} (beyond the retention)",
        )
    first = chained.first
    if first is None or (row_time is not None and row_time < first):
        since = (
            "the chain holds no such records yet"
            if first is None
            else f"it is dated before the first of them, written at {format_timestamp(first)}"
        )
        return Discrepancy(table, key, "predates", f"{what}: predates chained {table} records "
                           f"({since})")  # fmt: skip
    return Discrepancy(
        table,
        key,
        "not_in_chain",
        f"{what}: not in the chain (edited or inserted outside the controller?); it is dated "
        f"{_when(row_time)}, after chaining began at {format_timestamp(first)}",
    )


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _check_commands(rows: Sequence[CommandRow], chained: _Chained) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    for row in rows:
        what = f"command {row.id} ({row.command} {row.namespace}/{row.name} by {row.actor})"
        requested = chained.requested.get(row.id)
        settled = chained.settled.get(row.id)
        if requested is None:
            if settled is None and row.state != "pending":
                what += f", settled {row.state}"  # neither record: one finding
            found.append(_missing("commands", row.id, what, row.requested_at, chained))
            if settled is None:
                continue
        else:
            entry = requested.entry
            obj = entry.obj
            table = {
                "actor": row.actor,
                "actor_uid": row.actor_uid,
                "actor_groups": list(row.actor_groups),
                "namespace": row.namespace,
                "name": row.name,
                "command": row.command,
                "args": normalise(dict(row.args)),
                "reason": row.reason,
                "requested_at": _when(row.requested_at),
            }
            said = {
                "actor": entry.actor.id if entry.actor.kind == "human" else repr(entry.actor),
                "actor_uid": entry.actor.uid,
                "actor_groups": list(entry.actor.groups),
                "namespace": obj.namespace if obj else None,
                "name": obj.name if obj else None,
                **{k: entry.evidence.get(k) for k in ("command", "args", "reason")},
                "requested_at": entry.evidence.get("requested_at"),
            }
            differs = _differences(table, said)
            if differs:
                found.append(_edited("commands", row.id, what, requested.seq, differs))
        if settled is None:
            if row.state != "pending":
                found.append(
                    _missing(
                        "commands", row.id, f"{what} settled {row.state}", row.decided_at, chained
                    )
                )
            continue
        evidence = settled.entry.evidence
        table = {"state": row.state, "result": row.result, "decided_at": _when(row.decided_at)}
        differs = _differences(table, {k: evidence.get(k) for k in table})
        if differs:
            found.append(_edited("commands", row.id, what, settled.seq, differs))
    known = {row.id for row in rows}
    for command_id, seen in sorted(chained.requested.items()):
        if command_id not in known:
            entry = seen.entry
            target = f"{entry.obj.namespace}/{entry.obj.name}" if entry.obj else "?"
            found.append(
                Discrepancy(
                    "commands",
                    command_id,
                    "deleted",
                    f"command {command_id}: record {seen.seq} says {entry.actor.id} asked to "
                    f"{entry.evidence.get('command')} {target}, but the table has no such "
                    "command (row deleted?)",
                    seen.seq,
                )
            )
    return found


def _edited(table: Table, key: str, what: str, seq: int, differs: list[str]) -> Discrepancy:
    return Discrepancy(
        table, key, "edited", f"{what}: {'; '.join(differs)} (record {seq}; row edited?)", seq
    )


# --------------------------------------------------------------------------------------------
# webhook deliveries
# --------------------------------------------------------------------------------------------


def _check_deliveries(rows: Sequence[Mapping[str, Any]], chained: _Chained) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    for row in rows:
        key = str(row["webhook_id"])
        what = f"webhook delivery {key} ({row['source']}, {row['outcome']})"
        seen = chained.delivered.get(key)
        if seen is None:
            found.append(_missing("webhook_deliveries", key, what, row["received_at"], chained))
            continue
        entry = seen.entry
        table = {
            "source": row["source"],
            "payload_digest": row["payload_digest"],
            "signature_valid": bool(row["signature_valid"]),
            "outcome": row["outcome"],
            "received_at": _when(row["received_at"]),
        }
        said = {
            **{k: entry.evidence.get(k) for k in ("source", "signature_valid", "outcome")},
            "payload_digest": entry.payload_digest,
            "received_at": entry.evidence.get("received_at"),
        }
        differs = _differences(table, said)
        if differs:
            found.append(_edited("webhook_deliveries", key, what, seen.seq, differs))
    known = {str(row["webhook_id"]) for row in rows}
    for key, seen in sorted(chained.delivered.items()):
        if key not in known:
            found.append(
                Discrepancy(
                    "webhook_deliveries",
                    key,
                    "deleted",
                    f"webhook delivery {key}: record {seen.seq} says it was received "
                    f"({seen.entry.evidence.get('outcome')}), but the table has no such "
                    "delivery (row deleted?)",
                    seen.seq,
                )
            )
    return found


# --------------------------------------------------------------------------------------------
# approvals
# --------------------------------------------------------------------------------------------


def _check_approvals(rows: Sequence[ApprovalRow], chained: _Chained) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    for row in rows:
        what = (
            f"approval {row.id} ({row.gate} gate, {row.revision} step {row.step_index}, "
            f"{row.state})"
        )
        seen = chained.approvals.get(row.id)
        if seen is None:
            found.append(_missing("approvals", row.id, what, row.requested_at, chained))
            continue
        said = seen.entry.evidence[APPROVAL_KEY]
        assert isinstance(said, Mapping)
        table = approval_snapshot(row)
        differs = _differences({k: table[k] for k in APPROVAL_AUDITED}, said)
        if differs:
            found.append(_edited("approvals", row.id, what, seen.seq, differs))
    known = {row.id for row in rows}
    for key, seen in sorted(chained.approvals.items()):
        if key not in known:
            found.append(
                Discrepancy(
                    "approvals",
                    key,
                    "deleted",
                    f"approval {key}: record {seen.seq} ({seen.entry.action}) carries it, "
                    "but the table has no such approval (row deleted?)",
                    seen.seq,
                )
            )
    return found
