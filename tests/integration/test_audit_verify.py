"""verify where its reading could go wrong: at the edges of its batches, on values the quick
check leaves to the full check, and (PostgreSQL) with worker processes that check ranges of
the chain at once, which must give exactly the report one process gives."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import canary.audit.verify
import canary.audit.verify_postgres
from canary.audit import (
    GENESIS_HASH,
    Actor,
    AuditEntry,
    AuditError,
    AuditStore,
    ChainReport,
    Measurement,
    ObjectRef,
    compute_record_hash,
    upgrade_to_head,
)
from canary.audit.verifier import ChainVerifier
from canary.audit.verify_postgres import Source
from tests.conftest import Database
from tests.tampering import untriggered

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
RECORDS = 12


def _measurement(seq: int, position: int) -> Measurement:
    return Measurement(
        check=f"check-{position}",
        evaluated_at=T0 + timedelta(seconds=seq),
        query=f"sum(rate(errors[1m])) # {seq}",
        prometheus_url="http://prometheus:9090",
        response_digest=f"{seq:064x}",
        canary_value=math.nan if seq == 6 else 0.01,  # NaN: left to the full check
        baseline_value=0.02,
        canary_samples=100 + seq,
        baseline_samples=900,
        statistic=1.5,
        threshold=0.05,
        verdict="Successful",
        dry_run=False,
        detail={"seq": seq, "message": "5xx 1% vs 2%"},
    )


def _entry(seq: int) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=seq),
        actor=Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0"),
        action="analysis.evaluated",
        rollout_id=f"ro-{seq // 5}",
        obj=ObjectRef("fraud", "scorer", uid="uid-1", generation=3, resource_version="100"),
        reason=f"step {seq}",
        measurements=tuple(_measurement(seq, p) for p in range(seq % 2 + 1)),
        correlation_id=f"corr-{seq}",
        leader_epoch=1,
    )


@pytest.fixture
def chain(db: Database) -> Iterator[tuple[Database, AuditStore]]:
    """Twelve records as the controller writes them; record seq has seq % 2 + 1 measurement
    rows, and record 6's canary value is NaN."""
    with AuditStore.from_url(db.url) as store:
        for seq in range(1, RECORDS + 1):
            store.append([_entry(seq)])
        yield db, store


def _hash_of(db: Database, seq: int) -> str:
    ((value,),) = db.query("SELECT record_hash FROM audit_log WHERE seq = ?", (seq,))
    return str(value)


def _failed(db: Database, seq: int, problem: str, *, checked: int | None = None) -> ChainReport:
    """The report of a chain whose first problem is at record ``seq``."""
    passed = seq - 1 if checked is None else checked
    return ChainReport(
        ok=False,
        records_checked=passed,
        head_hash=GENESIS_HASH if passed == 0 else _hash_of(db, passed),
        first_bad_seq=seq,
        problem=problem,
        head_seq=passed,
    )


@pytest.mark.parametrize("batch_size", [1, 4, 5000])
def test_an_intact_chain_verifies_in_any_batch_size(
    chain: tuple[Database, AuditStore], batch_size: int
) -> None:
    db, store = chain
    report = store.verify(batch_size=batch_size)
    assert report == ChainReport(True, RECORDS, _hash_of(db, RECORDS), None, None, RECORDS)


def _sliced(store: AuditStore, limit: int, batch_size: int = 4) -> list[ChainReport]:
    """The chain verified ``limit`` records per call, each from where the last stopped."""
    reports: list[ChainReport] = []
    after: tuple[int, str] | None = None
    while len(reports) <= RECORDS + 1:
        report = store.verify(batch_size=batch_size, after=after, limit=limit)
        reports.append(report)
        if not report.ok or report.complete:
            return reports
        after = (report.head_seq, report.head_hash)
    raise AssertionError(f"no end after {len(reports)} slices: {reports}")


@pytest.mark.parametrize("batch_size", [2, 4])
@pytest.mark.parametrize("limit", [1, 3, 4, 5, 11, 12, 13])
def test_a_chain_verified_in_slices_ends_where_a_whole_check_ends(
    chain: tuple[Database, AuditStore], limit: int, batch_size: int
) -> None:
    db, store = chain
    reports = _sliced(store, limit, batch_size)
    assert all(r.ok for r in reports)
    assert [r.complete for r in reports] == [False] * (len(reports) - 1) + [True]
    assert (reports[-1].head_seq, reports[-1].head_hash) == (RECORDS, _hash_of(db, RECORDS))
    assert [r.records_checked for r in reports[:-1]] == [limit] * (len(reports) - 1)
    assert sum(r.records_checked for r in reports) == RECORDS


@pytest.mark.parametrize("deleted", [1, 4, 5, 8, 9, 12])
def test_a_deleted_record_is_found_by_the_slice_that_reaches_it(
    chain: tuple[Database, AuditStore], deleted: int
) -> None:
    """Also the last record, whose measurement rows only the slice that reaches the
    chain's end can find stray."""
    db, store = chain
    untriggered(db, [("DELETE FROM audit_log WHERE seq = ?", (deleted,))])
    *passed, failed = _sliced(store, 4, batch_size=3)
    assert all(r.ok and not r.complete for r in passed)
    assert (failed.ok, failed.first_bad_seq) == (False, deleted)


@pytest.mark.parametrize("deleted", [3, 4, 5, 8, 9, 11])
def test_a_deleted_record_is_found_wherever_the_batches_end(
    chain: tuple[Database, AuditStore], deleted: int
) -> None:
    db, store = chain
    untriggered(
        db,
        [
            ("DELETE FROM measurements WHERE audit_seq = ?", (deleted,)),
            ("DELETE FROM audit_log WHERE seq = ?", (deleted,)),
        ],
    )
    assert store.verify(batch_size=4) == _failed(
        db, deleted, f"record {deleted + 1}: seq {deleted} is missing (record deleted?)"
    )


@pytest.mark.parametrize("seq", [1, 4, 5, 8, 9, 12])
def test_an_edited_measurement_row_is_found_at_the_edges_of_a_batch(
    chain: tuple[Database, AuditStore], seq: int
) -> None:
    db, store = chain
    position = seq % 2  # the last row of the record
    untriggered(
        db,
        [
            (
                "UPDATE measurements SET canary_value = 0.5 WHERE audit_seq = ? AND position = ?",
                (seq, position),
            )
        ],
    )
    assert store.verify(batch_size=4) == _failed(
        db,
        seq,
        f"record {seq}: measurement {position} column canary_value is 0.5 but the record says "
        "0.01 (measurement row edited?)",
    )


def test_the_rows_of_a_deleted_last_record_are_stray(chain: tuple[Database, AuditStore]) -> None:
    db, store = chain
    untriggered(db, [("DELETE FROM audit_log WHERE seq = ?", (RECORDS,))])
    assert store.verify(batch_size=4) == _failed(
        db, RECORDS, f"measurement rows reference record {RECORDS}, which does not exist"
    )


def test_a_detail_stored_other_than_canonically_is_named(
    chain: tuple[Database, AuditStore],
) -> None:
    db, store = chain
    spaced = '{"message": "5xx 1% vs 2%", "seq": 5}'
    untriggered(db, [("UPDATE measurements SET detail = ? WHERE audit_seq = 5", (spaced,))])
    assert store.verify() == _failed(
        db,
        5,
        f"record 5: measurement 0 column detail is {spaced!r} but the record says "
        """'{"message":"5xx 1% vs 2%","seq":5}' (measurement row edited?)""",
    )


def test_a_body_without_a_time_is_reported(chain: tuple[Database, AuditStore]) -> None:
    db, store = chain
    ((prev_hash, body),) = db.query(
        "SELECT prev_hash, body FROM audit_log WHERE seq = ?", (RECORDS,)
    )
    data = json.loads(body)
    data["at"] = None
    forged = json.dumps(data)
    untriggered(
        db,
        [
            (
                "UPDATE audit_log SET body = ?, record_hash = ? WHERE seq = ?",
                (forged, compute_record_hash(prev_hash, forged), RECORDS),
            )
        ],
    )
    assert store.verify() == _failed(
        db,
        RECORDS,
        f"record {RECORDS}: body is not a valid audit record (expected a timestamp string, "
        "got None)",
    )


def test_an_unreadable_time_is_an_error_naming_the_database(pg_database: Database) -> None:
    db = pg_database
    upgrade_to_head(db.url)
    with AuditStore.from_url(db.url) as store:
        store.append([_entry(1)])
        untriggered(db, [("UPDATE audit_log SET recorded_at = 'infinity'", ())])
        with pytest.raises(AuditError, match=r"^database .*: timestamp too large"):
            store.verify()
        assert store.head()[0] == 1  # the store works on


# --------------------------------------------------------------------------------------------
# worker processes (PostgreSQL)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pg_chain(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Database, AuditStore]]:
    """The twelve records on PostgreSQL, with workers used however short the chain."""
    upgrade_to_head(pg_database.url)
    monkeypatch.setattr(canary.audit.verify_postgres, "PARALLEL_MINIMUM", 1)
    with AuditStore.from_url(pg_database.url) as store:
        for seq in range(1, RECORDS + 1):
            store.append([_entry(seq)])
        yield pg_database, store


@pytest.fixture
def own_start(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where the calling process's own check started, each time verify() ran."""
    starts: list[int] = []
    checked = canary.audit.verify_postgres.check_copied

    def spy(
        conn: Any, verifier: ChainVerifier, batch_size: int, end: int | None = None
    ) -> ChainReport | None:
        starts.append(verifier.expected)
        return checked(conn, verifier, batch_size, end)

    monkeypatch.setattr(canary.audit.verify, "check_copied", spy)
    return starts


def test_workers_check_the_whole_chain(
    pg_chain: tuple[Database, AuditStore], own_start: list[int]
) -> None:
    db, store = pg_chain
    report = store.verify(batch_size=2, workers=2)
    assert report == ChainReport(True, RECORDS, _hash_of(db, RECORDS), None, None, RECORDS)
    assert own_start == [RECORDS + 1]  # the workers proved every record


ATTACKS: dict[str, list[tuple[str, tuple[Any, ...]]]] = {
    # 2 workers x 4 ranges of 12 records: ranges 1-2, 3-5, 6-8, 9-11, 12
    "deleted-first-of-a-range": [
        ("DELETE FROM measurements WHERE audit_seq = 6", ()),
        ("DELETE FROM audit_log WHERE seq = 6", ()),
    ],
    "deleted-last-of-a-range": [
        ("DELETE FROM measurements WHERE audit_seq = 5", ()),
        ("DELETE FROM audit_log WHERE seq = 5", ()),
    ],
    "measurement-first-of-a-range": [
        ("UPDATE measurements SET verdict = 'Failed' WHERE audit_seq = 9", ()),
    ],
    "measurement-last-of-a-range": [
        ("UPDATE measurements SET dry_run = true WHERE audit_seq = 8", ()),
    ],
    "column-in-the-last-range": [("UPDATE audit_log SET name = 'other' WHERE seq = 12", ())],
    "column-in-the-first-range": [("UPDATE audit_log SET action = 'x.y' WHERE seq = 1", ())],
    "stray-row-past-the-end": [
        (
            "INSERT INTO measurements SELECT 40, position, rollout_id, check_name, evaluated_at, "
            "query, prometheus_url, response_digest, canary_value, baseline_value, "
            "canary_samples, baseline_samples, statistic, threshold, verdict, dry_run, detail "
            "FROM measurements WHERE audit_seq = 3",
            (),
        )
    ],
    "body-rewritten-links-broken": [
        ("UPDATE audit_log SET prev_hash = record_hash WHERE seq = 7", ()),
    ],
    "two-problems": [
        ("UPDATE audit_log SET name = 'other' WHERE seq = 10", ()),
        ("UPDATE audit_log SET name = 'other' WHERE seq = 4", ()),
    ],
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_workers_report_exactly_what_one_process_reports(
    pg_chain: tuple[Database, AuditStore], attack: str
) -> None:
    db, store = pg_chain
    untriggered(db, ATTACKS[attack])
    alone = store.verify(batch_size=2, workers=1)
    assert not alone.ok
    assert store.verify(batch_size=2, workers=2) == alone


def test_workers_check_an_incremental_verify_exactly_too(
    pg_chain: tuple[Database, AuditStore], own_start: list[int]
) -> None:
    db, store = pg_chain
    after = (3, _hash_of(db, 3))
    report = store.verify(batch_size=2, after=after, workers=3)
    assert report == ChainReport(True, RECORDS - 3, _hash_of(db, RECORDS), None, None, RECORDS)
    assert own_start == [RECORDS + 1]
    untriggered(db, [("UPDATE measurements SET query = 'up' WHERE audit_seq = 11", ())])
    assert store.verify(batch_size=2, after=after, workers=3) == store.verify(
        batch_size=2, after=after, workers=1
    )


def test_workers_that_cannot_connect_leave_the_check_to_the_caller(
    pg_chain: tuple[Database, AuditStore],
    own_start: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, store = pg_chain
    nowhere = Source(url=db.url.replace("/ksc_test_", "/no_such_"), connect_args={})
    monkeypatch.setattr(AuditStore, "_worker_source", lambda _store: nowhere)
    report = store.verify(batch_size=2, workers=2)
    assert report == ChainReport(True, RECORDS, _hash_of(db, RECORDS), None, None, RECORDS)
    assert own_start == [1]


def test_a_store_with_a_call_deadline_uses_no_workers(
    pg_chain: tuple[Database, AuditStore], own_start: list[int]
) -> None:
    db, _ = pg_chain
    with AuditStore.from_url(db.url, timeout=30) as bounded:
        assert bounded.verify(batch_size=2, workers=2).ok
    assert own_start == [1]
