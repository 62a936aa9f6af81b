"""Approvals and webhook deliveries in the database.

An ``approvals`` row is one gate instance (a rollout's revision at one step, asked again
after an expiry as a new attempt). It is the outbox between the engine and the approval
worker (:mod:`canary.approval_worker`): the engine writes the request and, when the rollout
no longer needs it, the close request, in the same transaction as the rollout's state; the
worker carries them out against the change system and writes back what the change system
said (the change's number, a verified decision, who was asked). The engine reads a decided
row on its next pass and hands the decision to the state machine.

``webhook_deliveries`` is append-only: a delivery's ``webhook-id`` is stored once, so a
duplicate (sent twice, or twice at once) is recognised by the insert that fails.

:class:`ApprovalBook` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from canary.audit.records import ApprovalRow, decode_body
from canary.audit.schema import ApprovalModel, AuditLog, WebhookDeliveryRow

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


class ApprovalBook:
    """Write and read approvals and webhook deliveries (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

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

    def upsert_approval(self, row: ApprovalRow) -> ApprovalRow:
        """Insert the approval for (rollout_id, revision, step_index, attempt), or update the
        stored one as :meth:`_upsert_approval` says (only what the engine owns). Returns the
        stored row."""
        with self._tx(write=True) as conn:
            self._upsert_approval(conn, row)
            stored = self._approval(conn, row.rollout_id, row.revision, row.step_index)
        assert stored is not None
        return stored

    def update_approval(
        self, approval_id: str, *, only_if_state: str | None = None, **values: Any
    ) -> bool:
        """Set ``values`` on one approval; with ``only_if_state``, only while it is in that
        state (a decision is written once). False when nothing was updated."""
        unknown = set(values) - set(_COLUMNS)
        if unknown or {"id", *_KEY} & set(values):
            raise ValueError(f"cannot set {sorted(unknown or set(values))} on an approval")
        for name in ("requesters", "asked"):
            if name in values:
                values[name] = list(values[name])
        stmt = update(ApprovalModel).where(ApprovalModel.id == approval_id)
        if only_if_state is not None:
            stmt = stmt.where(ApprovalModel.state == only_if_state)
        with self._tx(write=True) as conn:
            done = conn.execute(stmt.values(**values).returning(ApprovalModel.id)).first()
        return done is not None

    def record_delivery(
        self,
        webhook_id: str,
        *,
        received_at: datetime,
        source: str,
        payload_digest: str,
        signature_valid: bool,
        outcome: str,
    ) -> bool:
        """Store a webhook delivery; False (no exception) if ``webhook_id`` was seen before."""
        values = {
            "webhook_id": webhook_id,
            "received_at": received_at,
            "source": source,
            "payload_digest": payload_digest,
            "signature_valid": signature_valid,
            "outcome": outcome,
        }
        with self._tx(write=True) as conn:
            if self._dialect == "postgresql":
                stmt: Any = pg_dialect.insert(WebhookDeliveryRow).values(**values)
            else:
                stmt = sqlite_dialect.insert(WebhookDeliveryRow).values(**values)
            stmt = stmt.on_conflict_do_nothing().returning(WebhookDeliveryRow.webhook_id)
            return conn.execute(stmt).first() is not None

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

    def model_changed_by(self, namespace: str, name: str, storage_uri: str | None) -> str | None:
        """Who sent the admitted update that set ``storage_uri`` on namespace/name (the
        newest ``model.change_admitted`` record naming it), as the apiserver authenticated
        them; None if no such record exists."""
        if not storage_uri:
            return None
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(AuditLog.body)
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
                return entry.actor.id
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
