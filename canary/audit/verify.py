"""Verifying the hash chain as stored: every record's link, hash, body and the query
columns and measurement rows derived from it, from where the latest purge left it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, func, select

from canary.audit.chain import (
    MEASUREMENT_COLUMNS,
    PROJECTION_COLUMNS,
    measurement_rows,
    projection,
)
from canary.audit.purges import read_purges
from canary.audit.records import (
    GENESIS_HASH,
    ChainReport,
    compute_record_hash,
    decode_body,
    parse_body,
)
from canary.audit.retention import (
    PURGE_ACTION,
    PurgeRow,
    purge_record_problem,
    purge_rows_problem,
)
from canary.audit.schema import (
    AuditLog,
    MeasurementRow,
)

__all__ = ["ChainCheck"]


def _same(stored: Any, expected: Any) -> bool:
    both_floats = isinstance(stored, float) and isinstance(expected, float)
    if both_floats and (math.isnan(stored) or math.isnan(expected)):
        return math.isnan(stored) and math.isnan(expected)
    if isinstance(stored, bool) != isinstance(expected, bool) and None not in (stored, expected):
        return False
    return bool(stored == expected)


class ChainCheck:
    """Verify the stored chain (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def verify(
        self, batch_size: int = 5000, *, after: tuple[int, str] | None = None
    ) -> ChainReport:
        """Check the whole chain, streaming ``batch_size`` records at a time.

        With ``after=(seq, record_hash)`` (a trusted checkpoint), only the records after
        ``seq`` are checked, starting from that record's hash, once the stored record
        ``seq`` is found to have exactly that hash: an incremental verification.

        For each record: its seq follows the previous one (the first is 1); its
        ``prev_hash`` is the previous ``record_hash`` (``GENESIS_HASH`` first); its
        ``record_hash`` matches ``prev_hash + body``; the body's ``seq`` is the row's; the
        query columns and the measurement rows match the body. Stops at the first problem.

        After a purge (``audit_purges``), the chain starts at the latest purge's
        ``through_seq + 1``, whose ``prev_hash`` must be that purge's ``through_hash``; no
        record at or below it may be left. The purge rows must hold together, each
        ``audit.purged`` record still kept must say what its row says, and every one must
        have its row (:mod:`canary.audit.retention`). A checkpoint ``after`` below the floor
        is purged with it, and the check starts at the floor. Whether a pinned key vouches for
        the floor's hash is for :func:`~canary.audit.checkpoint.judge_anchors`.

        Not detectable from the database alone: records removed from the *end* of the chain,
        or a chain rewritten from some point on with recomputed hashes. Both need the head
        anchored outside the database: signed checkpoints (:mod:`canary.audit.checkpoint`).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        verifier = _ChainVerifier()
        log_cols = (
            AuditLog.seq,
            AuditLog.prev_hash,
            AuditLog.record_hash,
            AuditLog.body,
            *(getattr(AuditLog, c) for c in PROJECTION_COLUMNS),
        )
        m_cols = tuple(getattr(MeasurementRow, c) for c in MEASUREMENT_COLUMNS)
        with self._tx(write=False) as conn:
            try:
                purges = read_purges(conn)
            except (ValueError, TypeError) as exc:  # unreadable column values
                return verifier.fail(1, f"the purge rows cannot be read: {exc}")
            started = self._start(conn, verifier, purges, after)
            if started is not None:
                return started
            last = verifier.expected - 1
            while True:
                stmt = (
                    select(*log_cols)
                    .where(AuditLog.seq > last)
                    .order_by(AuditLog.seq)
                    .limit(batch_size)
                )
                try:
                    rows = conn.execute(stmt).all()
                except (ValueError, TypeError) as exc:  # unreadable column values
                    return verifier.fail(verifier.expected, f"records cannot be read: {exc}")
                if not rows:
                    break
                top = rows[-1].seq
                m_stmt = select(*m_cols).where(
                    MeasurementRow.audit_seq <= top, MeasurementRow.audit_seq > last
                )
                grouped: dict[int, list[Mapping[Any, Any]]] = {}
                try:
                    m_rows = conn.execute(
                        m_stmt.order_by(MeasurementRow.audit_seq, MeasurementRow.position)
                    ).all()
                except (ValueError, TypeError) as exc:
                    return verifier.fail(verifier.expected, f"measurements cannot be read: {exc}")
                for m_row in m_rows:
                    grouped.setdefault(m_row.audit_seq, []).append(m_row._mapping)
                for row in rows:
                    problem = verifier.check(row._mapping, grouped.get(row.seq, []))
                    if problem is not None:
                        return problem
                # The batch is now known to be contiguous, so rows left over in `grouped`
                # can only point below the first record checked.
                orphans = sorted(set(grouped) - {row.seq for row in rows})
                if orphans:
                    return verifier.fail(
                        orphans[0],
                        f"measurement rows reference record {orphans[0]}, which does not exist",
                    )
                last = top
                if len(rows) < batch_size:
                    break
            stray = conn.execute(
                select(func.min(MeasurementRow.audit_seq)).where(MeasurementRow.audit_seq > last)
            ).scalar()
            if stray is not None:
                return verifier.fail(
                    stray, f"measurement rows reference record {stray}, which does not exist"
                )
        return verifier.finish()

    @staticmethod
    def _start(
        conn: Connection,
        verifier: _ChainVerifier,
        purges: Sequence[PurgeRow],
        after: tuple[int, str] | None,
    ) -> ChainReport | None:
        """Set where the check starts (record 1, the purge floor, or ``after``); a report
        when the database already fails there."""
        problem = purge_rows_problem(purges)
        if problem is not None:
            return verifier.fail(*problem)
        verifier.purges = {row.record_seq: row for row in purges}
        floor = max(purges, key=lambda row: row.through_seq) if purges else None
        verifier.purged_through = 0 if floor is None else floor.through_seq
        if after is not None and after[0] > verifier.purged_through:
            start, start_hash = after
            stored = conn.execute(
                select(AuditLog.record_hash).where(AuditLog.seq == start)
            ).scalar()
            if stored is None:
                return verifier.fail(
                    start, f"record {start}, where verification was to start, is missing"
                )
            if stored != start_hash:
                return verifier.fail(
                    start,
                    f"record {start}: stored hash {stored} is not the expected {start_hash} "
                    "(history rewritten?)",
                )
            verifier.begin(start + 1, start_hash)
            return None
        if floor is None:  # from record 1: only measurement rows can lie below it
            stray = conn.execute(
                select(func.min(MeasurementRow.audit_seq)).where(MeasurementRow.audit_seq < 1)
            ).scalar()
            if stray is not None:
                return verifier.fail(
                    stray, f"measurement rows reference record {stray}, which does not exist"
                )
            return None
        if after is not None and after[0] == floor.through_seq and after[1] != floor.through_hash:
            return verifier.fail(
                floor.through_seq,
                f"record {floor.through_seq} was purged with the hash {floor.through_hash}, not "
                f"the expected {after[1]} (purge row edited?)",
            )
        verifier.begin(floor.through_seq + 1, floor.through_hash)
        left = conn.execute(
            select(func.min(AuditLog.seq)).where(AuditLog.seq <= floor.through_seq)
        ).scalar()
        what = f"record {left} is"
        if left is None:
            left = conn.execute(
                select(func.min(MeasurementRow.audit_seq)).where(
                    MeasurementRow.audit_seq <= floor.through_seq
                )
            ).scalar()
            what = f"measurement rows of record {left} are"
        if left is not None:
            return verifier.fail(
                left, f"{what} still stored, but {floor.describe()} (inserted after the purge?)"
            )
        return None


class _ChainVerifier:
    """Incremental state of :meth:`AuditStore.verify`."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev_hash = GENESIS_HASH
        self.checked = 0
        self.first = 1  # the first record checked
        self.purges: dict[int, PurgeRow] = {}  # by the seq of their audit.purged record
        self.purged_through = 0
        self.purge_records: set[int] = set()  # audit.purged records seen

    def begin(self, seq: int, prev_hash: str) -> None:
        self.expected = self.first = seq
        self.prev_hash = prev_hash

    def fail(self, seq: int, problem: str) -> ChainReport:
        return ChainReport(
            ok=False,
            records_checked=self.checked,
            head_hash=self.prev_hash,
            first_bad_seq=seq,
            problem=problem,
            head_seq=self.expected - 1,
            purged_through=self.purged_through,
        )

    def finish(self) -> ChainReport:
        """The report once every record was checked: a purge whose audit.purged record
        should be among them but is not fails it."""
        for record_seq, row in sorted(self.purges.items()):
            if record_seq >= self.first and record_seq not in self.purge_records:
                return self.fail(
                    record_seq,
                    f"the purge through record {row.through_seq} names record {record_seq} as "
                    f"its audit.purged record, but the chain ends at {self.expected - 1} "
                    "(record deleted, or purge row edited?)",
                )
        return ChainReport(
            True,
            self.checked,
            self.prev_hash,
            None,
            None,
            self.expected - 1,
            purged_through=self.purged_through,
        )

    def check(
        self, row: Mapping[Any, Any], measurements: Sequence[Mapping[Any, Any]]
    ) -> ChainReport | None:
        seq: int = row["seq"]
        if seq != self.expected:
            if seq > self.expected:
                return self.fail(
                    self.expected, f"record {seq}: seq {self.expected} is missing (record deleted?)"
                )
            return self.fail(seq, f"record {seq}: unexpected seq, expected {self.expected}")
        body: str = row["body"]
        if compute_record_hash(row["prev_hash"], body) != row["record_hash"]:
            return self.fail(
                seq,
                f"record {seq}: stored record_hash does not match its contents (field changed?)",
            )
        if row["prev_hash"] != self.prev_hash:
            if seq == 1:
                return self.fail(seq, "record 1: prev_hash is not the genesis hash")
            if seq == self.first and self.purged_through == seq - 1:
                return self.fail(
                    seq,
                    f"record {seq}: prev_hash is not the hash the purge through record "
                    f"{seq - 1} recorded (records after the purge deleted, or purge row "
                    "edited?)",
                )
            return self.fail(
                seq,
                f"record {seq}: prev_hash does not match record {seq - 1} "
                "(record inserted, deleted or reordered?)",
            )
        try:
            data = parse_body(body)
            decode_body(data)
            columns = projection(data)
            expected_rows = measurement_rows(seq, data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self.fail(seq, f"record {seq}: body is not a valid audit record ({exc})")
        if data.get("seq") != seq:
            return self.fail(
                seq, f"record {seq}: its body says seq {data.get('seq')!r} (record renumbered?)"
            )
        for column in PROJECTION_COLUMNS:
            if not _same(row[column], columns[column]):
                return self.fail(
                    seq,
                    f"record {seq}: column {column} is {row[column]!r} but the record says "
                    f"{columns[column]!r} (column edited?)",
                )
        if len(measurements) != len(expected_rows):
            return self.fail(
                seq,
                f"record {seq}: {len(measurements)} measurement rows stored but the record "
                f"lists {len(expected_rows)} (measurement row added or deleted?)",
            )
        for stored, wanted in zip(measurements, expected_rows, strict=True):
            for column in MEASUREMENT_COLUMNS:
                if not _same(stored[column], wanted[column]):
                    return self.fail(
                        seq,
                        f"record {seq}: measurement {wanted['position']} column {column} is "
                        f"{stored[column]!r} but the record says {wanted[column]!r} "
                        "(measurement row edited?)",
                    )
        purge = self.purges.get(seq)
        if purge is not None:
            problem = purge_record_problem(purge, data)
            if problem is not None:
                return self.fail(seq, problem)
            self.purge_records.add(seq)
        elif data.get("action") == PURGE_ACTION:
            return self.fail(
                seq,
                f"record {seq} is an audit.purged record, but audit_purges has no row for it "
                "(purge row deleted?)",
            )
        self.expected = seq + 1
        self.prev_hash = row["record_hash"]
        self.checked += 1
        return None
