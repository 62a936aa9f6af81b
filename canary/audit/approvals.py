"""Approvals and webhook deliveries in the database.

An ``approvals`` row is one gate instance (a rollout's revision at one step, asked again
after an expiry as a new attempt). It is the outbox between the engine and the approval
worker (:mod:`canary.approval_worker`): the engine writes the request and, when the rollout
no longer needs it, the close request, in the same transaction as the rollout's state; the
worker carries them out against the change system and writes back what the change system
said (the change's number, a verified decision, who was asked). The engine reads a decided
row on its next pass and hands the decision to the state machine.

Every write of a field an auditor reads (:data:`canary.audit.actors.APPROVAL_AUDITED`)
appends, in the same transaction, a record carrying the row as it stands afterwards: the
writer's own record (``update_approval(..., record=...)``, or the engine's record that names
the row in ``commit``), else one the store makes for the write (``approval.close_requested``
and the like). A write of an audited field with no record to say why is refused. Only the
worker's bookkeeping is written without one.

``webhook_deliveries`` is append-only: a delivery's ``webhook-id`` is stored once, so a
duplicate (sent twice, or twice at once) is recognised by the insert that fails. A new
delivery is chained (``webhook.delivered``) in the same transaction; a duplicate is not
recorded again (it is counted in the metrics). A delivery whose signature did not verify
is neither stored nor chained, and :meth:`ApprovalBook.record_delivery` refuses one: anyone
can send those, as many as they like, so storing them would let a stranger grow the chain
and the table at will, and claim a ``webhook-id`` before the genuine sender does (whose
delivery would then be taken for a duplicate). The receiver logs and counts them instead.

:class:`ApprovalBook` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions, the chain and the leader fence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from canary.audit.actors import (
    APPROVAL_AUDITED,
    APPROVAL_CLOSE_REQUESTED,
    APPROVAL_CLOSED,
    APPROVAL_DECISION_VERIFIED,
    APPROVAL_ID_KEY,
    APPROVAL_REQUESTED,
    approval_transition,
    delivery_entry,
    with_snapshot,
)
from canary.audit.commands import writer
from canary.audit.records import (
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    Fence,
    ObjectRef,
    decode_body,
)
from canary.audit.schema import ApprovalModel, AuditLog, RolloutModel, WebhookDeliveryRow

__all__ = ["MODEL_CHANGE_ADMITTED", "ApprovalBook"]

MODEL_CHANGE_ADMITTED = "model.change_admitted"

_KEY = ("rollout_id", "revision", "step_index", "attempt")
_DECIDED = ("approved", "rejected")
_COLUMNS = tuple(c.name for c in ApprovalModel.__table__.columns)


def _values(row: ApprovalRow) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["requesters"] = list(row.requesters)
    values["asked"] = list(row.asked)
    return values


def _row(mapping: Mapping[Any, Any]) -> ApprovalRow:
    values = dict(mapping)
    values["requesters"] = tuple(values.get("requesters") or ())
    values["asked"] = tuple(values.get("asked") or ())
    return ApprovalRow(**values)


def _audited(row: ApprovalRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in APPROVAL_AUDITED)


def _naming(entry: AuditEntry, approval_id: str) -> AuditEntry:
    """``entry`` naming the approval row it is about."""
    if entry.evidence.get(APPROVAL_ID_KEY) == approval_id:
        return entry
    return replace(entry, evidence={**entry.evidence, APPROVAL_ID_KEY: approval_id})


def _latest(row: ApprovalRow) -> datetime:
    """The row's own latest time (a record the store makes with nothing else to date it)."""
    return max(t for t in (row.requested_at, row.decided_at, row.closed_at) if t is not None)


def _described(action: str, row: ApprovalRow) -> str:
    what = (
        f"approval {row.id} ({row.gate} gate, {row.revision} step {row.step_index}, "
        f"attempt {row.attempt})"
    )
    if action == APPROVAL_REQUESTED:
        until = row.deadline.isoformat() if row.deadline else "no deadline"
        return f"{what} requested, pending until {until}"
    if action == APPROVAL_CLOSE_REQUESTED:
        change = f"change {row.change_number}" if row.change_number else "the request"
        note = f": {row.close_note}" if row.close_note else ""
        return f"{what} {row.state}; {change} to be closed {row.close_code}{note}"
    if action == APPROVAL_DECISION_VERIFIED:
        return f"{what} {row.state} by {row.approver}"
    if action == APPROVAL_CLOSED:
        return f"{what} closed ({row.state}): no change was opened, nothing to close"
    return f"{what} is now {row.state}"


class ApprovalBook:
    """Write and read approvals and webhook deliveries (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _lock_head(self, conn: Connection) -> None:
        raise NotImplementedError  # canary.audit.chain

    def _append(self, conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        raise NotImplementedError  # canary.audit.chain

    def _check_fence(self, conn: Connection, fence: Fence) -> None:
        raise NotImplementedError  # canary.audit.fence

    # -- writes ------------------------------------------------------------------------------

    def _upsert_approval(self, conn: Connection, row: ApprovalRow) -> None:
        """The engine's write: a new request inserts its row; a write to an existing row
        (a close request, a Kubernetes-gate decision) touches only what the engine owns, so
        a change the worker opened or a decision it verified meanwhile is never lost:

        * ``close_code`` and ``close_note`` are set;
        * ``state`` moves only from ``pending``;
        * the decision (``approver``, ``decided_at``, ``decision``) is written only with a
          move from ``pending`` to approved or rejected;
        * ``closed_at`` is taken only while no change was opened (nothing to close);
          otherwise the worker closes the change and sets it.
        """
        values = _values(row)
        table = ApprovalModel.__table__
        insert_stmt: Any = (
            pg_dialect.insert(ApprovalModel)
            if self._dialect == "postgresql"
            else sqlite_dialect.insert(ApprovalModel)
        ).values(**values)
        new = insert_stmt.excluded
        pending = table.c.state == "pending"
        deciding = and_(pending, new.state.in_(_DECIDED))
        updates = {
            "close_code": func.coalesce(new.close_code, table.c.close_code),
            "close_note": func.coalesce(new.close_note, table.c.close_note),
            "state": case((pending, new.state), else_=table.c.state),
            "approver": case((deciding, new.approver), else_=table.c.approver),
            "decided_at": case((deciding, new.decided_at), else_=table.c.decided_at),
            "decision": case((deciding, new.decision), else_=table.c.decision),
            "closed_at": case(
                (table.c.change_sys_id.is_(None), new.closed_at), else_=table.c.closed_at
            ),
        }
        conn.execute(insert_stmt.on_conflict_do_update(index_elements=list(_KEY), set_=updates))

    def _write_approvals(
        self,
        conn: Connection,
        rows: Sequence[ApprovalRow],
        entries: Sequence[AuditEntry],
        fence: Fence | None,
        at: datetime | None = None,
    ) -> tuple[list[AuditEntry], list[AuditEntry]]:
        """Upsert ``rows`` (the caller holds the head lock) and say each in the chain: the
        last ``approval.*`` entry that names a row (``approval_id`` in its evidence) carries it as
        stored; a row that changed and that no entry names gets a record of its own, from
        the fence's holder, dated ``at`` (by default the latest of ``entries``, or else the
        row's own latest time). Returns ``entries`` so completed, and the records added."""
        items = list(entries)
        when = at or max((e.at for e in items), default=None)
        added: list[AuditEntry] = []
        for row in rows:
            before = self._approval_at(conn, row)
            self._upsert_approval(conn, row)
            after = self._approval_at(conn, row)
            assert after is not None
            named = [
                i
                for i, e in enumerate(items)
                if e.action.startswith("approval.") and e.evidence.get(APPROVAL_ID_KEY) == row.id
            ]
            if named:
                items[named[-1]] = with_snapshot(items[named[-1]], after)
                continue
            if before is not None and _audited(before) == _audited(after):
                continue
            action = approval_transition(before, after)
            entry = AuditEntry(
                at=when or _latest(after),
                actor=writer(fence),
                action=action,
                rollout_id=after.rollout_id,
                obj=self._service_of(conn, after.rollout_id),
                reason=_described(action, after),
                change_number=after.change_number,
                change_sys_id=after.change_sys_id,
                leader_epoch=fence.epoch if fence is not None else None,
            )
            added.append(with_snapshot(entry, after))
        return items, added

    def upsert_approval(
        self,
        row: ApprovalRow,
        *,
        record: AuditEntry | None = None,
        fence: Fence | None = None,
    ) -> ApprovalRow:
        """Insert the approval for (rollout_id, revision, step_index, attempt), or update the
        stored one as :meth:`_upsert_approval` says (only what the engine owns), with
        ``record`` (or a record the store makes) carrying the stored row. Returns it."""
        with self._tx(write=True) as conn:
            if fence is not None:
                self._check_fence(conn, fence)
            self._lock_head(conn)
            named = [] if record is None else [_naming(record, row.id)]
            items, added = self._write_approvals(conn, [row], named, fence)
            self._append(conn, [*items, *added])
            stored = self._approval_at(conn, row)
        assert stored is not None
        return stored

    def update_approval(
        self,
        approval_id: str,
        *,
        only_if_state: str | None = None,
        record: AuditEntry | None = None,
        fence: Fence | None = None,
        **values: Any,
    ) -> bool:
        """Set ``values`` on one approval; with ``only_if_state``, only while it is in that
        state (a decision is written once). False when nothing was updated.

        A write of an audited field needs ``record``: it is appended in the same
        transaction, carrying the row as stored afterwards, and only if the row was updated.
        A record may come with bookkeeping alone (a refusal). With ``fence``, the write
        happens only while it is the stored fence."""
        unknown = set(values) - set(_COLUMNS)
        if unknown or {"id", *_KEY} & set(values):
            raise ValueError(f"cannot set {sorted(unknown or set(values))} on an approval")
        audited = sorted(set(values) & set(APPROVAL_AUDITED))
        if audited and record is None:
            raise ValueError(
                f"setting {', '.join(audited)} on approval {approval_id} changes what an "
                "auditor reads: give the audit record that says why (record=...)"
            )
        for name in ("requesters", "asked"):
            if name in values:
                values[name] = list(values[name])
        stmt = update(ApprovalModel).where(ApprovalModel.id == approval_id)
        if only_if_state is not None:
            stmt = stmt.where(ApprovalModel.state == only_if_state)
        with self._tx(write=True) as conn:
            if fence is not None:
                self._check_fence(conn, fence)
            if record is not None:
                self._lock_head(conn)
            done = conn.execute(stmt.values(**values).returning(ApprovalModel.id)).first()
            if done is None or record is None:
                return done is not None
            stored = conn.execute(
                select(ApprovalModel.__table__).where(ApprovalModel.id == approval_id)
            ).first()
            assert stored is not None
            self._append(conn, [with_snapshot(record, _row(stored._mapping))])
        return True

    def record_delivery(
        self,
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
    ) -> bool:
        """Store a webhook delivery with its ``webhook.delivered`` record (the sender
        ``actor``, the rollout and object it concerns and the inbox's ``context`` go into
        the record); False (no exception, nothing recorded) if ``webhook_id`` was seen
        before. A delivery whose signature did not verify is refused (see the module)."""
        if not signature_valid:
            raise ValueError(
                f"delivery {webhook_id}: a delivery whose signature did not verify is not "
                "stored (anyone could send it); log and count it instead"
            )
        values = {
            "webhook_id": webhook_id,
            "received_at": received_at,
            "source": source,
            "payload_digest": payload_digest,
            "signature_valid": signature_valid,
            "outcome": outcome,
        }
        entry = delivery_entry(
            webhook_id,
            received_at=received_at,
            source=source,
            payload_digest=payload_digest,
            signature_valid=signature_valid,
            outcome=outcome,
            actor=actor,
            rollout_id=rollout_id,
            obj=obj,
            context=context,
        )
        with self._tx(write=True) as conn:
            self._lock_head(conn)
            if self._dialect == "postgresql":
                stmt: Any = pg_dialect.insert(WebhookDeliveryRow).values(**values)
            else:
                stmt = sqlite_dialect.insert(WebhookDeliveryRow).values(**values)
            stmt = stmt.on_conflict_do_nothing().returning(WebhookDeliveryRow.webhook_id)
            if conn.execute(stmt).first() is None:
                return False
            self._append(conn, [entry])
        return True

    # -- reads -------------------------------------------------------------------------------

    @staticmethod
    def _approval(
        conn: Connection, rollout_id: str, revision: str, step_index: int
    ) -> ApprovalRow | None:
        row = conn.execute(
            select(ApprovalModel.__table__)
            .where(
                ApprovalModel.rollout_id == rollout_id,
                ApprovalModel.revision == revision,
                ApprovalModel.step_index == step_index,
            )
            .order_by(ApprovalModel.attempt.desc())
            .limit(1)
        ).first()
        return None if row is None else _row(row._mapping)

    @staticmethod
    def _service_of(conn: Connection, rollout_id: str) -> ObjectRef | None:
        """The InferenceService of a rollout (so a record the store makes is found with the
        service's other records)."""
        found = conn.execute(
            select(RolloutModel.namespace, RolloutModel.name, RolloutModel.isvc_uid).where(
                RolloutModel.id == rollout_id
            )
        ).first()
        return None if found is None else ObjectRef(found.namespace, found.name, found.isvc_uid)

    @staticmethod
    def _approval_at(conn: Connection, row: ApprovalRow) -> ApprovalRow | None:
        """The stored row with ``row``'s key (rollout, revision, step, attempt)."""
        found = conn.execute(
            select(ApprovalModel.__table__).where(
                *(getattr(ApprovalModel, name) == getattr(row, name) for name in _KEY)
            )
        ).first()
        return None if found is None else _row(found._mapping)

    def get_approval(self, rollout_id: str, revision: str, step_index: int) -> ApprovalRow | None:
        """The latest attempt of the approval for (rollout_id, revision, step_index)."""
        with self._tx(write=False) as conn:
            return self._approval(conn, rollout_id, revision, step_index)

    def approval_by_id(self, approval_id: str) -> ApprovalRow | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(ApprovalModel.__table__).where(ApprovalModel.id == approval_id)
            ).first()
        return None if row is None else _row(row._mapping)

    def approval_by_change(
        self, *, sys_id: str | None = None, number: str | None = None
    ) -> ApprovalRow | None:
        """The approval whose change has this sys_id or number (the latest asked, should a
        change system reuse a number)."""
        if sys_id is None and number is None:
            raise ValueError("give a change sys_id or number")
        conditions = []
        if sys_id is not None:
            conditions.append(ApprovalModel.change_sys_id == sys_id)
        if number is not None:
            conditions.append(ApprovalModel.change_number == number)
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(ApprovalModel.__table__)
                .where(or_(*conditions))
                .order_by(ApprovalModel.requested_at.desc(), ApprovalModel.id)
                .limit(1)
            ).first()
        return None if row is None else _row(row._mapping)

    def approvals_for(self, rollout_id: str) -> list[ApprovalRow]:
        """Every approval of one rollout, oldest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(ApprovalModel.__table__)
                .where(ApprovalModel.rollout_id == rollout_id)
                .order_by(ApprovalModel.requested_at, ApprovalModel.id)
            ).all()
        return [_row(r._mapping) for r in rows]

    def pending_approvals(self) -> list[ApprovalRow]:
        """All approvals in state ``pending``, earliest deadline first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(ApprovalModel.__table__)
                .where(ApprovalModel.state == "pending")
                .order_by(ApprovalModel.deadline, ApprovalModel.id)
            ).all()
        return [_row(r._mapping) for r in rows]

    def model_change_record(
        self, namespace: str, name: str, storage_uri: str | None
    ) -> AuditRecord | None:
        """The newest ``model.change_admitted`` record that set ``storage_uri`` on
        namespace/name (who sent that update, as the apiserver authenticated them), if any."""
        if not storage_uri:
            return None
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body)
                .where(
                    AuditLog.action == MODEL_CHANGE_ADMITTED,
                    AuditLog.namespace == namespace,
                    AuditLog.name == name,
                )
                .order_by(AuditLog.seq.desc())
                .limit(20)
            ).all()
        for row in rows:
            entry = decode_body(row.body)
            uris = entry.evidence.get("storage_uris")
            if isinstance(uris, list | tuple) and storage_uri in uris:
                return AuditRecord(row.seq, row.prev_hash, row.record_hash, row.body, entry)
        return None

    def approvals_to_close(self) -> list[ApprovalRow]:
        """Approvals whose change is to be closed and has not been yet."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(ApprovalModel.__table__)
                .where(ApprovalModel.close_code.is_not(None), ApprovalModel.closed_at.is_(None))
                .order_by(ApprovalModel.requested_at, ApprovalModel.id)
            ).all()
        return [_row(r._mapping) for r in rows]
