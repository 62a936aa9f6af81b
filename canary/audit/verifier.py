"""The checks of :meth:`ChainCheck.verify <canary.audit.verify.ChainCheck.verify>`, record
after record, on rows already read (no I/O here).

:meth:`ChainVerifier.check` is the full check of one record, which words every problem.
:meth:`ChainVerifier.check_stored` reaches the same outcome for rows as PostgreSQL's driver
gives them, proving most records sound with :class:`~canary.audit.quickcheck.QuickCheck` and
running the full check only on the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from pydantic_core import from_json

from canary.audit.chain import (
    MEASUREMENT_COLUMNS,
    PROJECTION_COLUMNS,
    measurement_rows,
    projection,
)
from canary.audit.quickcheck import QuickCheck
from canary.audit.records import (
    GENESIS_HASH,
    ChainReport,
    compute_record_hash,
    decode_body,
    parse_body,
)
from canary.audit.retention import PURGE_ACTION, PurgeRow, purge_record_problem

__all__ = ["LOG_COLUMNS", "ChainVerifier", "StoredRows", "same"]

LOG_COLUMNS: Final = ("seq", "prev_hash", "record_hash", "body", *PROJECTION_COLUMNS)
"""The ``audit_log`` columns the check reads, in the order of a stored row."""


def same(stored: Any, expected: Any) -> bool:
    """Whether a stored column value is the one derived from the body: equal, NaN matching
    NaN, and never a bool for a number or the other way round."""
    both_floats = isinstance(stored, float) and isinstance(expected, float)
    if both_floats and (math.isnan(stored) or math.isnan(expected)):
        return math.isnan(stored) and math.isnan(expected)
    if isinstance(stored, bool) != isinstance(expected, bool) and None not in (stored, expected):
        return False
    return bool(stored == expected)


class StoredRows(Protocol):
    """Rows read as plain tuples (``LOG_COLUMNS``, ``MEASUREMENT_COLUMNS``), given as the
    mappings of column values :meth:`ChainVerifier.check` takes."""

    def record(self, row: tuple[Any, ...]) -> Mapping[str, Any]: ...

    def measurements(self, rows: Sequence[tuple[Any, ...]]) -> list[Mapping[str, Any]]: ...


class ChainVerifier:
    """The state of one verification, record after record, and the checks themselves (the
    rules :meth:`ChainCheck.verify <canary.audit.verify.ChainCheck.verify>` documents)."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev_hash = GENESIS_HASH
        self.checked = 0
        self.first = 1  # the first record checked
        self.purges: dict[int, PurgeRow] = {}  # by the seq of their audit.purged record
        self.purged_through = 0
        self.purge_records: set[int] = set()  # audit.purged records seen

    def begin(self, seq: int, prev_hash: str) -> None:
        """The check starts at record ``seq``, which must link to ``prev_hash``."""
        self.expected = self.first = seq
        self.prev_hash = prev_hash

    def resume(self, seq: int, prev_hash: str, checked: int) -> None:
        """Go on at record ``seq``, linking to ``prev_hash``, with ``checked`` records
        passed since the start."""
        self.expected = seq
        self.prev_hash = prev_hash
        self.checked = checked

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

    def finish(self, *, complete: bool = True) -> ChainReport:
        """The report once every record was checked (``complete``), or every record up to
        where a limited check stopped: a purge whose audit.purged record should be among
        them but is not fails it."""
        last = self.expected - 1
        for record_seq, row in sorted(self.purges.items()):
            if not complete and record_seq > last:
                continue  # beyond where this check stopped: the next one's
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
            last,
            purged_through=self.purged_through,
            complete=complete,
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
            if not same(row[column], columns[column]):
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
                if not same(stored[column], wanted[column]):
                    return self.fail(
                        seq,
                        f"record {seq}: measurement {wanted['position']} column {column} is "
                        f"{stored[column]!r} but the record says {wanted[column]!r} "
                        "(measurement row edited?)",
                    )
        return self._passed(seq, row["record_hash"], data)

    def check_stored(
        self,
        row: tuple[Any, ...],
        measurements: Sequence[tuple[Any, ...]],
        *,
        quick: QuickCheck,
        stored: StoredRows,
    ) -> ChainReport | None:
        """:meth:`check` for a record and its measurement rows as the driver read them
        (``LOG_COLUMNS``, ``MEASUREMENT_COLUMNS``): the same outcome, with the full check
        only for a record ``quick`` cannot prove sound (``stored`` then gives the rows as
        :meth:`check` takes them)."""
        seq, prev_hash, record_hash, body = row[0], row[1], row[2], row[3]
        if (
            seq == self.expected
            and prev_hash == self.prev_hash
            and compute_record_hash(prev_hash, body) == record_hash
        ):
            # pydantic-core's parser (a dependency of pydantic), about twice as fast as the
            # standard library's: a text it accepts, it reads to the same values; it refuses
            # a few the standard library reads (lone surrogates), which the full check then
            # reads and words (tests/unit/test_audit_quickcheck.py holds the two together).
            try:
                data = from_json(body, allow_inf_nan=False, cache_strings="keys")
            except ValueError:
                data = None
            if data is not None and quick.proves(seq, data, row[4:], measurements):
                return self._passed(seq, record_hash, data)
        return self.check(stored.record(row), stored.measurements(measurements))

    def _passed(self, seq: int, record_hash: str, data: Mapping[str, Any]) -> ChainReport | None:
        """Record ``seq``, its chain fields, body and derived rows found sound: what its body
        says about purges must agree with ``audit_purges``, then it counts as checked."""
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
        self.prev_hash = record_hash
        self.checked += 1
        return None
