"""The hash chain in ``audit_log`` (and the ``measurements`` rows derived from it): appending
under the head lock, and reading records back.

:class:`ChainLog` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, func, insert, select

from canary.audit.errors import AuditError
from canary.audit.records import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    Measurement,
    StoredMeasurement,
    compute_record_hash,
    decode_body,
)
from canary.audit.rows import (
    MEASUREMENT_COLUMNS,
    PROJECTION_COLUMNS,
    PreparedEntry,
    measurement_rows,
    prepare_entry,
    projection,
)
from canary.audit.schema import (
    AuditLog,
    MeasurementRow,
)

__all__ = [
    "HEAD_LOCK_KEY",
    "MEASUREMENT_COLUMNS",
    "PROJECTION_COLUMNS",
    "ChainLog",
    "decoded_records",
    "measurement_rows",
    "projection",
]

# Key of the PostgreSQL advisory lock that serialises appends to the chain ("ksc_audt").
HEAD_LOCK_KEY: Final = 0x6B73635F61756474


# --------------------------------------------------------------------------------------------
# row <-> value conversions (those derived from a body are in canary.audit.rows)
# --------------------------------------------------------------------------------------------


def _stored_measurement(m: Mapping[Any, Any]) -> StoredMeasurement:
    return StoredMeasurement(
        audit_seq=m["audit_seq"],
        position=m["position"],
        rollout_id=m["rollout_id"],
        measurement=Measurement(
            check=m["check_name"],
            evaluated_at=m["evaluated_at"],
            query=m["query"],
            prometheus_url=m["prometheus_url"],
            response_digest=m["response_digest"],
            canary_value=m["canary_value"],
            baseline_value=m["baseline_value"],
            canary_samples=m["canary_samples"],
            baseline_samples=m["baseline_samples"],
            statistic=m["statistic"],
            threshold=m["threshold"],
            verdict=m["verdict"],
            dry_run=bool(m["dry_run"]),
            detail=json.loads(m["detail"]),
        ),
    )


def decoded_records(rows: Sequence[Any]) -> list[AuditRecord]:
    """Rows of (seq, prev_hash, record_hash, body) as records, their bodies decoded; a body
    that cannot be is an :class:`AuditError` naming the record."""
    out = []
    for row in rows:
        try:
            entry = decode_body(row.body)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(
                f"record {row.seq} cannot be decoded ({exc}); run `canary audit verify`"
            ) from exc
        out.append(AuditRecord(row.seq, row.prev_hash, row.record_hash, row.body, entry))
    return out


@dataclass(frozen=True, slots=True)
class Written:
    """A record just appended: its chain fields and body, and the entry it was made of."""

    seq: int
    prev_hash: str
    record_hash: str
    body: str
    prepared: PreparedEntry

    def record(self) -> AuditRecord:
        """The record as a reader gets it: its entry decoded from its body."""
        entry = decode_body(self.prepared.body_data(self.seq))
        return AuditRecord(self.seq, self.prev_hash, self.record_hash, self.body, entry)


class ChainLog:
    """Append to and read the hash chain (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _lock_head(self, conn: Connection) -> None:
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
        if self._dialect == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(HEAD_LOCK_KEY)))

    @staticmethod
    def _read_head(conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            select(AuditLog.seq, AuditLog.record_hash).order_by(AuditLog.seq.desc()).limit(1)
        ).first()
        return (0, GENESIS_HASH) if row is None else (row.seq, row.record_hash)

    def _append(self, conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append ``entries`` (the head lock held); the records, their entries decoded."""
        return [written.record() for written in self._append_prepared(conn, entries)]

    def _append_prepared(
        self, conn: Connection, entries: Sequence[AuditEntry | PreparedEntry]
    ) -> list[Written]:
        """Append ``entries`` (the head lock held), those not yet prepared prepared here;
        what was written, in order. Under the lock only each record's number, its body text
        and its hash are worked out (:mod:`canary.audit.rows`)."""
        if not entries:
            return []
        prepared = [e if isinstance(e, PreparedEntry) else prepare_entry(e) for e in entries]
        seq, prev_hash = self._read_head(conn)
        written: list[Written] = []
        log_rows: list[dict[str, Any]] = []
        m_rows: list[dict[str, Any]] = []
        for item in prepared:
            seq += 1
            body = item.body(seq)
            record_hash = compute_record_hash(prev_hash, body)
            log_rows.append(
                {
                    "seq": seq,
                    "prev_hash": prev_hash,
                    "record_hash": record_hash,
                    "body": body,
                    **item.columns,
                }
            )
            if item.measurements:
                m_rows.extend(item.measurement_rows(seq))
            written.append(Written(seq, prev_hash, record_hash, body, item))
            prev_hash = record_hash
        # Core inserts (not the ORM's bulk path), sent by psycopg as one pipeline
        conn.execute(insert(AuditLog.__table__), log_rows)  # type: ignore[arg-type]
        if m_rows:
            conn.execute(insert(MeasurementRow.__table__), m_rows)  # type: ignore[arg-type]
        return written

    def head(self) -> tuple[int, str]:
        """(seq, record_hash) of the last record; ``(0, GENESIS_HASH)`` when empty."""
        with self._tx(write=False) as conn:
            return self._read_head(conn)

    def records(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` in order, at most ``limit`` of them."""
        stmt = (
            select(AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body)
            .where(AuditLog.seq > after_seq)
            .order_by(AuditLog.seq)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        return decoded_records(rows)

    def measurements_for(self, rollout_id: str) -> list[StoredMeasurement]:
        """Measurements of a rollout, by evaluation time then record order."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(MeasurementRow.__table__)
                .where(MeasurementRow.rollout_id == rollout_id)
                .order_by(
                    MeasurementRow.evaluated_at, MeasurementRow.audit_seq, MeasurementRow.position
                )
            ).all()
        return [_stored_measurement(row._mapping) for row in rows]

    # ---------------------------------------------------------------------------- verify
