"""The controller's copy of the chain's signed checkpoints (``audit_checkpoints``).

Trust never comes from this table (its administrator could edit it like any other): it
comes from a checkpoint's signature and from the witnesses outside the database that hold
copies (:mod:`canary.witness`). The table serves an incremental verification (from the
latest checkpoint on), the export an auditor keeps, and the auditor API.

:class:`CheckpointBook` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from canary.audit.checkpoint import Checkpoint, SignedCheckpoint
from canary.audit.errors import AuditError
from canary.audit.schema import AuditLog, CheckpointRow

__all__ = ["CheckpointBook"]


def _signed(row: Mapping[Any, Any]) -> SignedCheckpoint:
    try:
        return SignedCheckpoint(
            checkpoint=Checkpoint.from_statement(row["statement"]),
            statement=row["statement"],
            signature=row["signature"],
            key_id=row["key_id"],
        )
    except ValueError as exc:
        raise AuditError(f"stored checkpoint of record {row['seq']} is unreadable: {exc}") from exc


class CheckpointBook:
    """Store and read signed checkpoints (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def add_checkpoint(self, signed: SignedCheckpoint) -> bool:
        """Keep a signed checkpoint; False when one for that seq is already kept."""
        values = {
            "seq": signed.seq,
            "record_hash": signed.record_hash,
            "signed_at": signed.checkpoint.at,
            "key_id": signed.key_id,
            "statement": signed.statement,
            "signature": signed.signature,
        }
        with self._tx(write=True) as conn:
            if self._dialect == "postgresql":
                stmt: Any = pg_dialect.insert(CheckpointRow).values(**values)
            else:
                stmt = sqlite_dialect.insert(CheckpointRow).values(**values)
            stmt = stmt.on_conflict_do_nothing().returning(CheckpointRow.seq)
            return conn.execute(stmt).first() is not None

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The kept checkpoint of the highest seq, if any."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(CheckpointRow.__table__).order_by(CheckpointRow.seq.desc()).limit(1)
            ).first()
        return None if row is None else _signed(row._mapping)

    def checkpoints(self, *, after_seq: int = 0, limit: int = 1000) -> list[SignedCheckpoint]:
        """Kept checkpoints with ``seq > after_seq``, oldest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(CheckpointRow.__table__)
                .where(CheckpointRow.seq > after_seq)
                .order_by(CheckpointRow.seq)
                .limit(limit)
            ).all()
        return [_signed(row._mapping) for row in rows]

    def record_hashes(self, seqs: Iterable[int]) -> dict[int, str]:
        """The stored ``record_hash`` of each of ``seqs`` that exists."""
        wanted = sorted(set(seqs))
        found: dict[int, str] = {}
        with self._tx(write=False) as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = conn.execute(
                    select(AuditLog.seq, AuditLog.record_hash).where(AuditLog.seq.in_(chunk))
                ).all()
                found.update({row.seq: row.record_hash for row in rows})
        return found
