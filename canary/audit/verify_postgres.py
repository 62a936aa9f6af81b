"""Reading the chain for verification on PostgreSQL: fast, and in parallel when it pays.

:func:`check_copied` reads the records and their measurement rows in batches straight from
the driver as plain tuples, in the caller's transaction: a batch's measurement rows by a
binary ``SELECT``, then its records streamed by ``COPY ... TO STDOUT (FORMAT BINARY)``. The
driver (psycopg) is reached through SQLAlchemy's connection and never imported here, so an
installation for SQLite alone need not have it. Each record goes through
:meth:`ChainVerifier.check_stored <canary.audit.verifier.ChainVerifier.check_stored>`. The
hash is computed here, never by the server.

:func:`prove_in_parallel` lets worker processes (``python -m canary.audit.verify_worker``,
given their work as JSON lines on a pipe: not ``multiprocessing``, whose workers import the
caller's main module again) check ranges of the chain at the same time, each in a read-only
transaction that imports the caller's snapshot (``pg_export_snapshot()``, ``SET TRANSACTION
SNAPSHOT``), so all see the same rows. A range counts only when its worker found every
record in it sound, starting from the stored hash of the record before it, and that hash is
the one the ranges before it ended on: the caller's state is then moved past it, exactly as
checking those records one by one would have moved it. At the first range not so proven (a
problem, a worker that failed, anything unexpected), the caller goes on from there by
itself, so every problem is found and worded as a check in one process would.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, cast

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Integer,
    Text,
    bindparam,
    create_engine,
    func,
    pool,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

from canary.audit.chain import MEASUREMENT_COLUMNS
from canary.audit.purges import read_purges
from canary.audit.quickcheck import QuickCheck
from canary.audit.records import ChainReport
from canary.audit.schema import AuditLog, MeasurementRow, SafeFloat, UTCDateTime
from canary.audit.verifier import LOG_COLUMNS, ChainVerifier
from canary.log import get_logger

__all__ = [
    "PARALLEL_MINIMUM",
    "Source",
    "check_copied",
    "prove_in_parallel",
    "serve_worker",
]

log = get_logger("canary.audit.verify")

PARALLEL_MINIMUM: Final = 200_000
"""Fewer records than this are checked in one process: starting the workers (a Python
interpreter each) would cost more than it saves."""

_RANGES_PER_WORKER: Final = 4  # smaller ranges keep the workers busy to the end

# The binary COPY format carries no types: each column's, from the models.
_PG_TYPES: Final[Mapping[type[Any], str]] = {
    BigInteger: "int8",
    Integer: "int4",
    Text: "text",
    CHAR: "bpchar",
    UTCDateTime: "timestamptz",
    SafeFloat: "float8",
    Boolean: "bool",
}


def _pg_types(table: Any, names: Sequence[str]) -> tuple[str, ...]:
    columns: Mapping[str, Column[Any]] = table.__table__.columns
    return tuple(_PG_TYPES[type(columns[name].type)] for name in names)


_LOG_TYPES: Final = _pg_types(AuditLog, LOG_COLUMNS)


_LAST_SEQ: Final = 2**63 - 1  # the largest bigint: no end

# The records from seq :first to :last (any that exist), at most :count, in order; and the
# measurement rows of records :first to :last. Run on the driver (its own parameter binding,
# client-side for COPY), so compiled for PostgreSQL with named parameters.
_RECORDS: Final = (
    select(*(getattr(AuditLog, name) for name in LOG_COLUMNS))
    .where(AuditLog.seq >= bindparam("first"), AuditLog.seq <= bindparam("last"))
    .order_by(AuditLog.seq)
    .limit(bindparam("count"))
)
_MEASUREMENTS: Final = (
    select(*(getattr(MeasurementRow, name) for name in MEASUREMENT_COLUMNS))
    .where(
        MeasurementRow.audit_seq >= bindparam("first"),
        MeasurementRow.audit_seq <= bindparam("last"),
    )
    .order_by(MeasurementRow.audit_seq, MeasurementRow.position)
)


class _Stored:
    """Rows read straight from the driver, as the mappings SQLAlchemy would have given (its
    result processors applied: timestamps in UTC), for the full check's wording."""

    def __init__(self, conn: Connection) -> None:
        def processors(table: Any, names: Sequence[str]) -> list[Callable[[Any], Any] | None]:
            columns = table.__table__.columns
            return [columns[name].type.result_processor(conn.dialect, None) for name in names]

        self._log = processors(AuditLog, LOG_COLUMNS)
        self._measurement = processors(MeasurementRow, MEASUREMENT_COLUMNS)

    @staticmethod
    def _mapping(
        names: Sequence[str],
        processors: Sequence[Callable[[Any], Any] | None],
        row: Sequence[Any],
    ) -> dict[str, Any]:
        return {
            name: value if process is None else process(value)
            for name, process, value in zip(names, processors, row, strict=True)
        }

    def record(self, row: tuple[Any, ...]) -> Mapping[str, Any]:
        return self._mapping(LOG_COLUMNS, self._log, row)

    def measurements(self, rows: Sequence[tuple[Any, ...]]) -> list[Mapping[str, Any]]:
        return [self._mapping(MEASUREMENT_COLUMNS, self._measurement, row) for row in rows]


def check_copied(
    conn: Connection, verifier: ChainVerifier, batch_size: int, end: int | None = None
) -> ChainReport | None:
    """Check the records from ``verifier.expected`` on, ``batch_size`` at a time, up to
    the last one (or to ``end - 1``); a report at the first problem.

    A batch is the next ``batch_size`` records, whatever their seqs. The measurement rows of
    the records it holds if it has no gap are read first (a binary SELECT of that seq range),
    then the records are streamed (a binary COPY), and each takes its rows off the front of
    that list. Records are checked in order and a gap fails the check, so a record that
    passes is the next seq and its rows are the next ones in the list: no row is skipped. A
    batch with fewer records ends the chain (or the range); rows it leaves over lie beyond
    the last record, where the caller's look for stray rows finds them.
    """
    driver: Any = conn.connection.driver_connection  # a psycopg connection
    records = f"COPY ({_RECORDS.compile(dialect=conn.dialect)}) TO STDOUT (FORMAT BINARY)"
    measurements = str(_MEASUREMENTS.compile(dialect=conn.dialect))
    stored = _Stored(conn)
    quick = QuickCheck()
    try:
        # Timestamps then come with the tzinfo the derived ones have (timezone.utc), which
        # compares with them many times faster than a zone's (the instants are the same).
        statement = "SET LOCAL TimeZone = 'UTC'"  # until the transaction ends
        driver.execute(statement)
        with driver.cursor(binary=True) as cursor:
            while end is None or verifier.expected < end:
                first = verifier.expected
                size = batch_size if end is None else min(batch_size, end - first)
                last = _LAST_SEQ if end is None else end - 1
                statement = measurements
                bounds = {"first": first, "last": first + size - 1}
                measured: list[tuple[Any, ...]] = cursor.execute(statement, bounds).fetchall()
                at, count = 0, 0
                statement = records
                with cursor.copy(statement, {"first": first, "last": last, "count": size}) as copy:
                    copy.set_types(_LOG_TYPES)
                    while (row := copy.read_row()) is not None:
                        count += 1
                        seq = row[0]
                        start = at
                        while at < len(measured) and measured[at][0] == seq:
                            at += 1
                        problem = verifier.check_stored(
                            row, measured[start:at], quick=quick, stored=stored
                        )
                        if problem is not None:
                            while copy.read():  # the rest of the batch: the COPY ends as usual
                                pass
                            return problem
                if count < size:
                    return None
            return None
    except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy raises it, for the store
        # The dialect's DBAPI error protocol is psycopg's errors, but mypy cannot tell.
        invalidated = conn.dialect.is_disconnect(cast(Any, exc), conn.connection, None)
        if invalidated:
            conn.invalidate()
        raise DBAPIError.instance(
            statement,
            None,
            exc,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from exc


# --------------------------------------------------------------------------------------------
# in parallel
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """How a worker process connects to the store's database: its URL, password included
    (handed to the worker through a pipe, never on a command line), and the driver's
    connection arguments (JSON values)."""

    url: str
    connect_args: Mapping[str, Any]


_SNAPSHOT_ID: Final = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9A-F]+)?$")


def _ranges(first: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``first`` to ``end - 1`` cut into (at most) ``parts`` ranges of about equal size."""
    step = max(1, math.ceil((end - first) / parts))
    return [(start, min(start + step, end)) for start in range(first, end, step)]


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "canary.audit.verify_worker"]


def _worker_environment() -> dict[str, str]:
    """The caller's environment, with its module search path (in its order): the workers
    import the same code as the caller, however that was put on ``sys.path``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}


def prove_in_parallel(
    conn: Connection, verifier: ChainVerifier, batch_size: int, source: Source, workers: int
) -> None:
    """Move ``verifier`` past the records that ``workers`` processes prove sound (from
    ``verifier.expected`` on, in ranges, in ``conn``'s snapshot); the caller checks the rest.

    Nothing is done for fewer than :data:`PARALLEL_MINIMUM` records. A worker that cannot
    start or fails leaves its range, and those after it, to the caller (logged).
    """
    top = conn.execute(select(func.max(AuditLog.seq))).scalar()
    if top is None or top - verifier.expected + 1 < PARALLEL_MINIMUM:
        return
    snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
    ranges = _ranges(verifier.expected, top + 1, workers * _RANGES_PER_WORKER)
    setup = {
        "url": source.url,
        "connect_args": dict(source.connect_args),
        "snapshot": snapshot,
        "batch_size": batch_size,
        "first": verifier.first,
    }
    processes: list[subprocess.Popen[str]] = []
    started = min(workers, len(ranges))  # range i goes to worker i % started
    try:
        for index in range(started):
            process = subprocess.Popen(
                _worker_command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=_worker_environment(),
            )
            processes.append(process)
            mine = [
                [first, end, verifier.prev_hash if at == 0 else None]
                for at, (first, end) in enumerate(ranges)
                if at % started == index
            ]
            assert process.stdin is not None
            process.stdin.write(json.dumps({**setup, "ranges": mine}) + "\n")
            process.stdin.close()
        for at in range(len(ranges)):
            stdout = processes[at % started].stdout
            assert stdout is not None
            answer = json.loads(stdout.readline() or "null")
            if not isinstance(answer, dict) or "error" in answer:
                reason = "no answer" if answer is None else answer.get("error", answer)
                log.warning("audit.verify_worker_failed", error=str(reason))
                return
            if not answer["proven"]:
                return  # a problem there: the caller finds and words it
            if answer["first"] != verifier.expected or answer["start_hash"] != verifier.prev_hash:
                return
            end = answer["end"]
            verifier.resume(end, answer["head_hash"], verifier.checked + end - answer["first"])
            verifier.purge_records.update(answer["purge_records"])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # the caller checks the rest
        log.warning("audit.verify_worker_failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _check_range(
    conn: Connection, setup: Mapping[str, Any], first: int, end: int, start_hash: str | None
) -> dict[str, Any]:
    """In a worker: check records ``first`` to ``end - 1``, from ``start_hash`` or, when not
    given, from the stored hash of record ``first - 1``."""
    if start_hash is None:
        start_hash = conn.execute(
            select(AuditLog.record_hash).where(AuditLog.seq == first - 1)
        ).scalar()
        if start_hash is None:
            return {"proven": False}
    purges = read_purges(conn)
    verifier = ChainVerifier()
    verifier.begin(int(setup["first"]), start_hash)
    verifier.resume(first, start_hash, 0)
    verifier.purges = {row.record_seq: row for row in purges}
    verifier.purged_through = max((row.through_seq for row in purges), default=0)
    problem = check_copied(conn, verifier, int(setup["batch_size"]), end)
    return {
        "proven": problem is None and verifier.expected == end,
        "first": first,
        "end": end,
        "start_hash": start_hash,
        "head_hash": verifier.prev_hash,
        "purge_records": sorted(verifier.purge_records),
    }


def serve_worker(stdin: IO[str], stdout: IO[str]) -> None:
    """A worker process: read the setup and its ranges (one JSON line), open a read-only
    transaction on the caller's snapshot, and answer one JSON line per range, in order."""
    try:
        setup = json.loads(stdin.readline())
        snapshot = str(setup["snapshot"])
        if not _SNAPSHOT_ID.match(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        engine = create_engine(
            setup["url"], poolclass=pool.NullPool, connect_args=setup["connect_args"]
        )
        with engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                for first, end, start_hash in setup["ranges"]:
                    answer = _check_range(conn, setup, first, end, start_hash)
                    stdout.write(json.dumps(answer) + "\n")
                    stdout.flush()
                    if not answer["proven"]:
                        return
    except Exception as exc:  # said to the caller, who checks the rest itself
        stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        stdout.flush()
