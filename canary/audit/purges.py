"""Purges of the audit trail beyond its retention (``audit_purges``), as the store does them.

The rules are in :mod:`canary.audit.retention` (pure): where a purge may end, what its
chained record says, how verification checks it. This part reads the purges, tells whether
the connected role may purge, finds how far the records are beyond a cutoff, and, inside the
one transaction :meth:`canary.audit.AuditStore.purge` opens, adds the ``audit_purges`` row and
deletes the records it covers. It is the only code in the product that deletes audit data,
and it runs as the owner role: the application role has no DELETE privilege on any table
(:mod:`canary.audit.privileges`), and the append-only triggers let through only the rows at
or below the highest ``through_seq`` (migration 0008).

:class:`PurgeBook` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, delete, func, insert, select, text

from canary.audit.errors import AuditError, PurgeRefused
from canary.audit.records import GENESIS_HASH
from canary.audit.retention import PurgePlan, PurgeRow, PurgeScope
from canary.audit.schema import AuditLog, MeasurementRow, PurgeModel

__all__ = ["PURGED_TABLES", "PurgeBook", "read_purges"]

# What a purge deletes from, and what it writes; the role that purges must own them all.
PURGED_TABLES: Final = ("audit_log", "measurements", "audit_purges")


def _row(m: Mapping[Any, Any]) -> PurgeRow:
    return PurgeRow(
        through_seq=m["through_seq"],
        through_hash=m["through_hash"],
        statement=m["statement"],
        signature=m["signature"],
        key_id=m["key_id"],
        purged_at=m["purged_at"],
        purged_by=m["purged_by"],
        records=m["records"],
        cutoff=m["cutoff"],
        retention_days=m["retention_days"],
        record_seq=m["record_seq"],
    )


def read_purges(conn: Connection) -> list[PurgeRow]:
    """Every ``audit_purges`` row, oldest purge first."""
    rows = conn.execute(select(PurgeModel.__table__).order_by(PurgeModel.through_seq)).all()
    return [_row(row._mapping) for row in rows]


def _os_user() -> str:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return f"os-user:{name}"


class PurgeBook:
    """Read and make purges (mixed into the audit store)."""

    _dialect: str
    _where: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def purges(self) -> list[PurgeRow]:
        """Every purge made, oldest first (the application role may read them)."""
        with self._tx(write=False) as conn:
            return read_purges(conn)

    def purge_role(self) -> str:
        """Who a purge made now would record as having made it; :class:`PurgeRefused` when
        the connected role may not purge (see :meth:`_purging_role`)."""
        with self._tx(write=False) as conn:
            return self._purging_role(conn)

    def _purging_role(self, conn: Connection) -> str:
        """The identity the database authenticated: on PostgreSQL the role connected as
        (``current_user``), which must own the audit tables a purge changes, directly or as a
        member of their owner (a superuser may too); on SQLite, which has no roles, the
        operating-system user of this process."""
        if self._dialect != "postgresql":
            return _os_user()
        role = str(conn.execute(text("SELECT current_user")).scalar_one())
        owners = conn.execute(
            text(
                "SELECT c.relname, pg_get_userbyid(c.relowner), "
                "pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
                "WHERE c.relnamespace = (SELECT oid FROM pg_namespace "
                "WHERE nspname = current_schema()) AND c.relname = ANY(CAST(:tables AS text[])) "
                "ORDER BY c.relname"
            ),
            {"tables": list(PURGED_TABLES)},
        ).all()
        found = {str(row[0]) for row in owners}
        missing = [table for table in PURGED_TABLES if table not in found]
        if missing:
            raise AuditError(
                f"database {self._where} has no table {', '.join(missing)}; run `canary db "
                "upgrade` (as the owner role)"
            )
        foreign = [f"{row[0]} (owner {row[1]})" for row in owners if not row[2]]
        if foreign:
            raise PurgeRefused(
                f"role {role} does not own {', '.join(foreign)}: a purge runs as the owner "
                "role, the one `canary db upgrade` runs as (the controller's application role "
                "may not delete history, and has no DELETE privilege). Nothing was changed"
            )
        return role

    def purge_scope(self, cutoff: datetime) -> PurgeScope:
        """How far the records are beyond ``cutoff``: see
        :class:`~canary.audit.retention.PurgeScope`."""
        with self._tx(write=False) as conn:
            latest = conn.execute(
                select(PurgeModel.through_seq, PurgeModel.through_hash)
                .order_by(PurgeModel.through_seq.desc())
                .limit(1)
            ).first()
            floor, floor_hash = (0, GENESIS_HASH) if latest is None else (latest[0], latest[1])
            head = conn.execute(select(func.max(AuditLog.seq))).scalar() or floor
            young = conn.execute(
                select(AuditLog.seq, AuditLog.recorded_at)
                .where(AuditLog.seq > floor, AuditLog.recorded_at >= cutoff)
                .order_by(AuditLog.seq)
                .limit(1)
            ).first()
        if young is None:
            return PurgeScope(floor, floor_hash, head, head, None)
        return PurgeScope(floor, floor_hash, head, young[0] - 1, (young[0], young[1]))

    def _check_purge(self, conn: Connection, plan: PurgePlan) -> int:
        """Inside the purge's transaction, with the chain's head locked: the database is still
        as the plan found it (no purge since, record N still has the vouched-for hash, the
        records to remove all there). Returns how many measurement rows go with them."""
        floor = conn.execute(select(func.max(PurgeModel.through_seq))).scalar() or 0
        if floor != plan.floor:
            raise PurgeRefused(
                f"another purge (through record {floor}) was made meanwhile; nothing was "
                "changed: run the purge again"
            )
        stored = conn.execute(
            select(AuditLog.record_hash).where(AuditLog.seq == plan.through_seq)
        ).scalar()
        if stored != plan.through_hash:
            raise PurgeRefused(
                f"record {plan.through_seq} changed since it was verified (its hash is now "
                f"{stored}); nothing was changed: run `canary audit verify`"
            )
        held = conn.execute(
            select(func.count())
            .select_from(AuditLog)
            .where(AuditLog.seq > plan.floor, AuditLog.seq <= plan.through_seq)
        ).scalar_one()
        if held != plan.records:
            raise PurgeRefused(
                f"records {plan.floor + 1} to {plan.through_seq} should be {plan.records}, the "
                f"database holds {held}; nothing was changed: run `canary audit verify`"
            )
        return int(
            conn.execute(
                select(func.count())
                .select_from(MeasurementRow)
                .where(MeasurementRow.audit_seq <= plan.through_seq)
            ).scalar_one()
        )

    def _remove_purged(self, conn: Connection, row: PurgeRow, *, measurements: int) -> None:
        """Add the purge's row, then delete what it covers: the row is what lets the
        append-only triggers pass these deletions (and only these)."""
        conn.execute(
            insert(PurgeModel).values(
                through_seq=row.through_seq,
                through_hash=row.through_hash,
                statement=row.statement,
                signature=row.signature,
                key_id=row.key_id,
                purged_at=row.purged_at,
                purged_by=row.purged_by,
                records=row.records,
                cutoff=row.cutoff,
                retention_days=row.retention_days,
                record_seq=row.record_seq,
            )
        )
        gone = conn.execute(
            delete(MeasurementRow).where(MeasurementRow.audit_seq <= row.through_seq)
        ).rowcount
        removed = conn.execute(delete(AuditLog).where(AuditLog.seq <= row.through_seq)).rowcount
        if (gone, removed) != (measurements, row.records):
            raise PurgeRefused(
                f"the purge would have deleted {removed} records and {gone} measurement rows, "
                f"not the {row.records} and {measurements} it checked; nothing was changed"
            )
