"""The audit benchmark's harness (bench/audit.py): its generated rollouts read as the engine's
do, and a smoke run on a private PostgreSQL writes a results file with every section. No
timing is asserted: the figures are the benchmark's to report, not the tests' to judge."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command

from bench import audit
from canary.audit import (
    GENESIS_HASH,
    AuditRecord,
    alembic_config,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
)
from canary.evidence import pointintime as pit
from testbed.postgres import PostgresServer

SERVICE = 3


def _records(plans: list[audit.Plan]) -> list[AuditRecord]:
    """One service's rollouts chained as the store chains them."""
    events = [(e, plan) for plan in plans for e in audit.timeline(plan)]
    records: list[AuditRecord] = []
    prev = GENESIS_HASH
    for seq, (event, plan) in enumerate(events, 1):
        body = canonical_json(entry_body(seq, audit.build_entry(plan, event)))
        record_hash = compute_record_hash(prev, body)
        records.append(AuditRecord(seq, prev, record_hash, body, decode_body(body)))
        prev = record_hash
    return records


def canary(plan: audit.Plan) -> str:
    return audit.revision_of(SERVICE, plan.canary)


def stable(plan: audit.Plan) -> str:
    return audit.revision_of(SERVICE, plan.stable)


def _at(plan: audit.Plan, action: str, nth: int = 0) -> timedelta:
    times = [e[0] for e in audit.timeline(plan) if e[1] == action]
    return timedelta(microseconds=times[nth])


def test_generated_rollouts_read_as_the_engines_records() -> None:
    plans = audit.plan_service(7, SERVICE, 400 * audit.DAY)
    assert len(plans) > 50
    for plan in plans:
        events = audit.timeline(plan)
        actions = [e[1] for e in events]
        assert actions[0] == "rollout.started"
        assert actions[-1] in {"promoted", "rolled_back", "approval.change_closed"}
        assert ("rolled_back" in actions) == (plan.fail is not None)
        assert [e[0] for e in events] == sorted(e[0] for e in events)
        intents = [e[4] for e in events if e[1] == "traffic.intent"]
        assert intents == [e[4] for e in events if e[1] == "traffic.applied"]
    assert any(p.gate == "servicenow" for p in plans)
    assert any(p.gate == "kubernetes" for p in plans)
    assert any(p.fail is not None for p in plans)
    # a rollout starts from the split the one before it left
    for before, after in itertools.pairwise(plans):
        assert after.stable == (before.stable if before.fail else before.canary)
        assert after.start > before.end


def test_the_point_in_time_logic_reads_the_generated_splits() -> None:
    plans = audit.plan_service(7, SERVICE, 120 * audit.DAY)
    records = _records(plans)
    namespace, name = audit.namespace_of(SERVICE), audit.name_of(SERVICE)
    stepped = next(p for p in plans if p.fail is None and len(p.steps) >= 3)
    second = stepped.steps[1]
    at = audit.EPOCH + _at(stepped, "traffic.shifted", 1) + timedelta(seconds=1)
    answer = pit.traffic_at(namespace, name, at, records)
    assert answer.knowledge == "settled"
    assert answer.split == {canary(stepped): second, stable(stepped): 100 - second}
    at = audit.EPOCH + _at(stepped, "promoted") + timedelta(seconds=1)
    assert pit.traffic_at(namespace, name, at, records).split == {canary(stepped): 100}
    failed = next(p for p in plans if p.fail is not None)
    at = audit.EPOCH + _at(failed, "rolled_back") + timedelta(seconds=1)
    assert pit.traffic_at(namespace, name, at, records).split == {stable(failed): 100}
    # between an intent and the status confirming it, the split is in transition
    at = audit.EPOCH + _at(stepped, "traffic.intent") + timedelta(microseconds=1)
    assert pit.traffic_at(namespace, name, at, records).knowledge == "in_transition"


def test_copy_text_escapes_what_copy_would_misread() -> None:
    assert audit.copy_text('a\\b\tc\nd\re"') == 'a\\\\b\\tc\\nd\\re"'
    assert audit.copy_text(None) == "\\N"
    assert audit.copy_text(float("nan")) == "NaN"
    assert audit.copy_text(float("-inf")) == "-Infinity"
    assert audit.copy_text(0.1) == "0.1"
    assert audit.copy_text(True) == "t"
    assert audit.copy_text({"k": "a\\b"}) == '{"k":"a\\\\\\\\b"}'


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert audit.percentile(values, 0.5) == 50.0
    assert audit.percentile(values, 0.99) == 99.0
    assert audit.percentile([3.0], 0.99) == 3.0


@pytest.fixture
def cache() -> Iterator[Path]:
    """A cache directory the PostgreSQL server's OS user can reach (pytest's are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="ksc-bench-audit-", dir="/var/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _downgrade_cached(cache: Path, revision: str) -> None:
    """Take the cached database back to an older schema, as its owner."""
    (directory,) = cache.glob("audit-*")
    server = PostgresServer(directory / "pgdata")
    server.start()
    try:
        command.downgrade(alembic_config(audit._roles(server).owner_url), revision)
    finally:
        server.stop()


def test_a_smoke_run_reports_every_section_and_later_runs_reuse_and_migrate_the_database(
    cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "audit.md"
    args = [
        "--records", "20000", "--services", "20", "--queries", "12", "--budget", "1",
        "--append-seconds", "1", "--writers", "1,3", "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip
    assert audit.main(args) == 0
    text = out.read_text(encoding="utf-8")
    for section in audit.SECTIONS:
        assert f"\n{section}\n" in text
    assert "**Small-scale run: 20,000 records across 20 InferenceServices" in text
    assert "| audit records | 20,000 generated, " in text
    assert text.count("| chain verified: ok |") == 2  # too short a chain for workers
    assert "| verify(): the whole chain, in one process | 20,000 |" in text
    assert "schema compared with the models afterwards: no difference" in text
    for writers in (1, 3):
        assert f"| durable | {writers} |" in text
        assert f"| durability off | {writers} |" in text
    assert "kept in `" in text
    assert "using ix_audit_log_target_time" in text
    assert "| schema migrated |" not in text

    # a database cached at an older schema is migrated, by its owner, before the measurements
    _downgrade_cached(cache, "0008")
    assert audit.main(args) == 0
    again = out.read_text(encoding="utf-8")
    assert "this run reused the database generated on" in again
    assert "| audit records | 20,000 generated, " in again
    assert "| schema migrated | 0008 to 0009 as the owner role, by this run on " in again
    assert "schema compared with the models afterwards: no difference |" in again
    assert again.count("| chain verified: ok |") == 2
    assert "Bitmap Index Scan using ix_rollouts_canary_storage_uri" in again

    assert audit.main(args) == 0  # at the head: nothing to migrate, the earlier one shown
    third = out.read_text(encoding="utf-8")
    assert "| schema migrated | 0008 to 0009 as the owner role, by an earlier run on " in third
