"""Verifying the hash chain as stored: every record's link, hash, body and the query
columns and measurement rows derived from it, from where the latest purge left it.

The checks themselves are :class:`~canary.audit.verifier.ChainVerifier`'s. On PostgreSQL the
rows are read straight from the driver, and long chains are checked by worker processes in
parallel (:mod:`canary.audit.verify_postgres`); SQLite reads through SQLAlchemy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from sqlalchemy import Connection, func, select

from canary.audit.chain import MEASUREMENT_COLUMNS
from canary.audit.purges import read_purges
from canary.audit.records import ChainReport
from canary.audit.retention import PurgeRow, purge_rows_problem
from canary.audit.schema import AuditLog, MeasurementRow
from canary.audit.verifier import LOG_COLUMNS, ChainVerifier
from canary.audit.verify_postgres import Source, check_copied, prove_in_parallel

__all__ = ["MAX_WORKERS", "ChainCheck", "default_workers"]

MAX_WORKERS: Final = 4
"""At most this many worker processes by default (and no more than the CPUs)."""


def default_workers() -> int:
    """The worker processes :meth:`ChainCheck.verify` uses unless told: one per CPU this
    process may run on, at most :data:`MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


class ChainCheck:
    """Verify the stored chain (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool, snapshot: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _worker_source(self) -> Source | None:
        """How worker processes connect, or None when they may not be used."""
        raise NotImplementedError  # the audit store knows

    def verify(
        self,
        batch_size: int = 5000,
        *,
        after: tuple[int, str] | None = None,
        workers: int | None = None,
        limit: int | None = None,
    ) -> ChainReport:
        """Check the whole chain, reading ``batch_size`` records at a time.

        With ``after=(seq, record_hash)`` (a trusted checkpoint), only the records after
        ``seq`` are checked, starting from that record's hash, once the stored record
        ``seq`` is found to have exactly that hash: an incremental verification.

        For each record: its seq follows the previous one (the first is 1); its
        ``prev_hash`` is the previous ``record_hash`` (``GENESIS_HASH`` first); its
        ``record_hash`` matches ``prev_hash + body``; the body's ``seq`` is the row's; the
        query columns and the measurement rows match the body. Stops at the first problem.
        Everything is read in one transaction, which sees one state of the database
        (PostgreSQL: REPEATABLE READ).

        After a purge (``audit_purges``), the chain starts at the latest purge's
        ``through_seq + 1``, whose ``prev_hash`` must be that purge's ``through_hash``; no
        record at or below it may be left. The purge rows must hold together, each
        ``audit.purged`` record still kept must say what its row says, and every one must
        have its row (:mod:`canary.audit.retention`). A checkpoint ``after`` below the floor
        is purged with it, and the check starts at the floor. Whether a pinned key vouches for
        the floor's hash is for :func:`~canary.audit.checkpoint.judge_anchors`.

        ``workers``: on PostgreSQL, with no call deadline, and for at least
        :data:`~canary.audit.verify_postgres.PARALLEL_MINIMUM` records, this many processes
        check ranges of the chain at the same time, on the same snapshot; the report is the
        one a single process gives. None: :func:`default_workers`; 1: none.

        ``limit``: check at most this many records (from where the check starts), no
        workers; the report's ``complete`` says whether the chain's end was reached. A
        caller with a deadline per call verifies a long chain in such slices, each from the
        last one's ``(head_seq, head_hash)`` as ``after``.

        Not detectable from the database alone: records removed from the *end* of the chain,
        or a chain rewritten from some point on with recomputed hashes. Both need the head
        anchored outside the database: signed checkpoints (:mod:`canary.audit.checkpoint`).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if workers is None:
            workers = default_workers()
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        verifier = ChainVerifier()
        with self._tx(write=False, snapshot=True) as conn:
            try:
                purges = read_purges(conn)
            except (ValueError, TypeError) as exc:  # unreadable column values
                return verifier.fail(1, f"the purge rows cannot be read: {exc}")
            started = self._start(conn, verifier, purges, after)
            if started is not None:
                return started
            end = None if limit is None else verifier.expected + limit
            if self._dialect == "postgresql":
                source = self._worker_source() if workers > 1 and end is None else None
                if source is not None:
                    prove_in_parallel(conn, verifier, batch_size, source, workers)
                problem = check_copied(conn, verifier, batch_size, end)
            else:
                problem = _select_and_check(conn, verifier, batch_size, end)
            if problem is not None:
                return problem
            if end is not None and verifier.expected >= end:
                return verifier.finish(complete=False)  # stopped at the limit
            last = verifier.expected - 1
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
        verifier: ChainVerifier,
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


def _select_and_check(
    conn: Connection, verifier: ChainVerifier, batch_size: int, end: int | None = None
) -> ChainReport | None:
    """Check the records from ``verifier.expected`` on (up to ``end - 1``), ``batch_size``
    per query, through SQLAlchemy (any database); a report at the first problem."""
    log_cols = tuple(getattr(AuditLog, c) for c in LOG_COLUMNS)
    m_cols = tuple(getattr(MeasurementRow, c) for c in MEASUREMENT_COLUMNS)
    last = verifier.expected - 1
    while end is None or last < end - 1:
        size = batch_size if end is None else min(batch_size, end - 1 - last)
        stmt = select(*log_cols).where(AuditLog.seq > last).order_by(AuditLog.seq).limit(size)
        try:
            rows = conn.execute(stmt).all()
        except (ValueError, TypeError) as exc:  # unreadable column values
            return verifier.fail(verifier.expected, f"records cannot be read: {exc}")
        if not rows:
            return None
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
        # Every record of the batch passed, so they are contiguous from `last + 1` to `top`
        # and each measurement row read (seq in that range) was compared with its record's.
        last = top
        if len(rows) < size:
            return None
    return None
