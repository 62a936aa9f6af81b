"""The Alembic migrations on both backends: up, down, up again, and agreement with the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from canary.audit import (
    AuditError,
    AuditStore,
    CommandRow,
    alembic_config,
    schema_differences,
    upgrade_to_head,
)
from canary.audit.retention import PurgeRow
from canary.audit.rollouts import storage_uris
from tests.conftest import Database
from tests.tampering import PURGE_COLUMNS, purge_row_values
from tests.unit.test_rollout_columns import STORAGE_URI_CASES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "commands",
    "audit_log",
    "measurements",
    "webhook_deliveries",
    "rollouts",
    "approvals",
    "leader_fence",
    "audit_checkpoints",
    "audit_purges",
}
APPEND_ONLY = (
    "audit_log",
    "measurements",
    "webhook_deliveries",
    "audit_checkpoints",
    "audit_purges",
)


def expected_triggers(kind: str, tables: tuple[str, ...] = APPEND_ONLY) -> set[str]:
    suffixes = (
        ("append_only", "no_truncate") if kind == "postgresql" else ("no_update", "no_delete")
    )
    return {f"{table}_{suffix}" for table in tables for suffix in suffixes}


def reject_function_exists(db: Database) -> bool:
    rows = db.query("SELECT 1 FROM pg_proc WHERE proname = 'ksc_reject_audit_change'")
    return bool(rows)


def test_upgrade_from_empty_creates_every_table_and_trigger(empty_db: Database) -> None:
    assert empty_db.tables() == set()
    upgrade_to_head(empty_db.url)
    assert empty_db.tables() == TABLES | {"alembic_version"}
    assert empty_db.triggers() == expected_triggers(empty_db.kind)
    assert empty_db.query("SELECT version_num FROM alembic_version") == [("0009",)]
    if empty_db.kind == "postgresql":
        assert reject_function_exists(empty_db)


def _trigger_states(db: Database) -> dict[str, str]:
    rows = db.query("SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal")
    return {str(row[0]): str(row[1]) for row in rows}


def test_postgresql_append_only_triggers_fire_always_and_the_downgrade_makes_them_ordinary(
    pg_database: Database,
) -> None:
    # 'A': fires in every session, also under session_replication_role = replica; 'O': the
    # ordinary state, which a replica-role session skips.
    upgrade_to_head(pg_database.url)
    assert _trigger_states(pg_database) == dict.fromkeys(expected_triggers("postgresql"), "A")
    command.downgrade(alembic_config(pg_database.url), "0006")
    before_purges = expected_triggers("postgresql", APPEND_ONLY[:-1])  # 0008 adds audit_purges
    assert _trigger_states(pg_database) == dict.fromkeys(before_purges, "O")
    upgrade_to_head(pg_database.url)
    assert _trigger_states(pg_database) == dict.fromkeys(expected_triggers("postgresql"), "A")


def test_upgrading_twice_changes_nothing(db: Database) -> None:
    with AuditStore.from_url(db.url) as store:
        store.claim_epoch("lease", "pod-a", 1, _t0())
    upgrade_to_head(db.url)
    assert db.tables() == TABLES | {"alembic_version"}
    with AuditStore.from_url(db.url) as store:
        assert store.current_fence("lease") is not None


def test_downgrade_to_base_removes_everything_and_upgrade_restores_it(db: Database) -> None:
    command.downgrade(alembic_config(db.url), "base")
    assert db.tables() == {"alembic_version"}
    assert db.query("SELECT version_num FROM alembic_version") == []
    assert db.triggers() == set()
    if db.kind == "postgresql":
        assert not reject_function_exists(db)

    upgrade_to_head(db.url)
    assert db.tables() == TABLES | {"alembic_version"}
    assert db.triggers() == expected_triggers(db.kind)
    with AuditStore.from_url(db.url) as store:
        assert store.head()[0] == 0
        assert store.claim_epoch("lease", "pod-a", 1, _t0())
    assert schema_differences(db.url) == []


def test_models_and_migrations_agree(db: Database) -> None:
    assert schema_differences(db.url) == []


def _command(command: str) -> CommandRow:
    return CommandRow(id=f"c-{command}", namespace="credit", name="decider", command=command,
                      actor="rita", reason="RSK-12 reviewed", args={}, requested_at=_t0(),
                      actor_groups=("risk-owners",))  # fmt: skip


def test_the_command_queue_takes_approval_decisions_and_only_known_commands(db: Database) -> None:
    with AuditStore.from_url(db.url) as store:
        store.submit_command(_command("approve"))
        store.submit_command(_command("reject"))
        with pytest.raises(AuditError, match="ck_commands_command"):
            store.submit_command(_command("delete"))
        queued = {(c.command, c.actor_groups) for c in store.pending_commands()}
    assert queued == {("approve", ("risk-owners",)), ("reject", ("risk-owners",))}


def test_downgrading_below_approval_decisions_drops_their_queue_rows_only(db: Database) -> None:
    with AuditStore.from_url(db.url) as store:
        store.submit_command(_command("approve"))
        store.submit_command(_command("pause"))
    command.downgrade(alembic_config(db.url), "0004")
    with AuditStore.from_url(db.url) as store:
        assert [c.command for c in store.pending_commands()] == ["pause"]
        with pytest.raises(AuditError, match="ck_commands_command"):
            store.submit_command(_command("reject"))
    upgrade_to_head(db.url)
    assert schema_differences(db.url) == []


def test_schema_drift_is_reported(db: Database) -> None:
    db.query("DROP INDEX ix_audit_log_action")
    differences = schema_differences(db.url)
    assert len(differences) == 1
    assert "ix_audit_log_action" in differences[0]


def _alembic(*args: str, env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KSC_DATABASE_URL"}
    if env_url is not None:
        env["KSC_DATABASE_URL"] = env_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd="/",  # the ini locates the migrations itself
    )


def test_alembic_command_line_takes_the_url_from_x_or_the_environment(
    empty_db: Database,
) -> None:
    upgraded = _alembic("-x", f"url={empty_db.url}", "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert empty_db.tables() == TABLES | {"alembic_version"}

    current = _alembic("current", env_url=empty_db.url)
    assert current.returncode == 0, current.stderr
    assert "0009 (head)" in current.stdout


def test_alembic_command_line_without_a_url_explains_how_to_give_one() -> None:
    result = _alembic("current")
    assert result.returncode != 0
    assert "no database URL: pass `-x url=...`, set KSC_DATABASE_URL" in result.stderr


def test_offline_sql_for_postgresql_includes_the_append_only_triggers() -> None:
    # No server needed: this is the script a DBA can review and apply by hand.
    result = _alembic(
        "-x", "url=postgresql+psycopg://dba@db.invalid/audit", "upgrade", "head", "--sql"
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE FUNCTION ksc_reject_audit_change()" in result.stdout
    for table in APPEND_ONLY:
        assert f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}" in (
            result.stdout
        )
        assert f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}" in result.stdout
        for suffix in ("append_only", "no_truncate"):
            assert f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_{suffix}" in result.stdout


def test_a_purged_database_is_not_downgraded_below_the_purges(db: Database) -> None:
    at = _t0()
    row = PurgeRow(3, "a" * 64, "{}", "", "key", at, "owner", 3, at, 2557, 4)
    marks = ", ".join("?" for _ in PURGE_COLUMNS)
    db.query(
        f"INSERT INTO audit_purges ({', '.join(PURGE_COLUMNS)}) VALUES ({marks})",
        purge_row_values(db, row),
    )
    command.downgrade(alembic_config(db.url), "0008")  # (SQLite's DDL is not rolled back)
    with pytest.raises(RuntimeError, match=r"cannot downgrade below 0008: the audit trail was "
                       r"purged \(audit_purges has 1 rows\)"):  # fmt: skip
        command.downgrade(alembic_config(db.url), "0007")
    assert "audit_purges" in db.tables()
    assert db.query("SELECT version_num FROM alembic_version") == [("0008",)]


@pytest.mark.parametrize(("state", "expected"), STORAGE_URI_CASES)
def test_0009_fills_the_storage_uri_columns_of_existing_rollouts_as_the_store_writes_them(
    empty_db: Database, state: dict[str, Any], expected: tuple[str | None, str | None]
) -> None:
    command.upgrade(alembic_config(empty_db.url), "0008")
    document = "CAST(? AS json)" if empty_db.kind == "postgresql" else "?"
    empty_db.script(
        [
            (
                "INSERT INTO rollouts (id, namespace, name, policy_name, mode, phase, "
                "step_index, canary_revision, stable_revision, state, created_at, updated_at, "
                f"active, version) VALUES (?, 'fraud', ?, 'default', 'knative', 'Succeeded', 0, "
                f"'r2', 'r1', {document}, ?, ?, ?, 1)",
                (rollout_id, name, json.dumps(doc), _t0(), _t0(), False),
            )
            for rollout_id, name, doc in (("ro-1", "scorer", state), ("ro-2", "other", {}))
        ]
        + [
            (
                "INSERT INTO approvals (id, rollout_id, revision, step_index, gate, "
                "requested_by, requested_at, state) "
                "VALUES ('ap-1', 'ro-1', 'r2', 1, 'webhook', 'controller', ?, 'approved')",
                (_t0(),),
            )
        ]
    )
    columns = "SELECT id, canary_storage_uri, stable_storage_uri FROM rollouts ORDER BY id"
    filled = [("ro-1", *expected), ("ro-2", None, None)]

    upgrade_to_head(empty_db.url)

    assert empty_db.query(columns) == filled
    assert storage_uris(state) == expected  # what the store's writer would have written
    with AuditStore.from_url(empty_db.url) as store:
        for uri in {u for u in expected if u}:
            assert [r.id for r in store.find_rollouts(model=uri).rollouts] == ["ro-1"]
    # down and up again: the rows (and the approval that refers to one) are kept
    command.downgrade(alembic_config(empty_db.url), "0008")
    assert empty_db.query("SELECT id, rollout_id FROM approvals") == [("ap-1", "ro-1")]
    upgrade_to_head(empty_db.url)
    assert empty_db.query(columns) == filled
    assert schema_differences(empty_db.url) == []


def _t0() -> datetime:
    return datetime(2026, 11, 23, tzinfo=UTC)
