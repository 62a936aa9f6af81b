"""Opening the audit database: which URLs are accepted, how connecting is bounded, how a SQLite
file is opened read-only, which privileges the application role gets, and what the controller
checks at start (on SQLite; PostgreSQL's roles: tests/integration/test_db_roles.py)."""

from __future__ import annotations

import ast
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from canary.api.health import Health
from canary.app import check_database
from canary.audit import (
    AuditError,
    AuditStore,
    DatabaseUrlError,
    GrantReport,
    RoleAccess,
    SchemaTooNew,
    StoreUnavailable,
    upgrade_to_head,
)
from canary.audit.database import connect_args, parse_url, read_only_url
from canary.audit.privileges import APP_PRIVILEGES, MUTABLE_TABLES
from canary.audit.schema import APPEND_ONLY_TABLES, Base

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "canary" / "audit"


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def test_postgresql_means_psycopg_and_sqlite_is_accepted() -> None:
    assert parse_url("postgresql://u@db/audit").drivername == "postgresql+psycopg"
    assert parse_url("postgresql+psycopg://u@db/audit").drivername == "postgresql+psycopg"
    assert parse_url("sqlite:///audit.db").drivername == "sqlite"
    assert parse_url("sqlite+pysqlite:///audit.db").drivername == "sqlite+pysqlite"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "not 'mysql'; give postgresql+psycopg://user@host/database or sqlite"),
        ("oracle+oracledb://u:pw@x/y", "database URL oracle+oracledb://u:***@x/y: "),
        ("postgresql+asyncpg://u@h/d", "the driver 'asyncpg' is not supported for postgresql"),
        ("postgresql+psycopg2://u@h/d", "the driver 'psycopg2' is not supported for postgresql"),
        ("sqlite+aiosqlite:///a.db", "the driver 'aiosqlite' is not supported for sqlite"),
        ("::", "invalid database URL: "),
    ],
)
def test_other_databases_and_drivers_are_refused_before_any_driver_is_imported(
    url: str, message: str
) -> None:
    with pytest.raises(DatabaseUrlError) as info:
        AuditStore.from_url(url)
    assert message in str(info.value)


def test_connecting_is_bounded_in_libpq_s_whole_seconds() -> None:
    postgres = parse_url("postgresql://u@db/audit")
    assert connect_args(postgres, None) == {}
    assert connect_args(postgres, 10) == {"connect_timeout": 10}
    assert connect_args(postgres, 2.1) == {"connect_timeout": 3}
    assert connect_args(postgres, 0.5) == {"connect_timeout": 2}  # libpq's least
    assert connect_args(parse_url("sqlite:///a.db"), 10) == {}
    with pytest.raises(AuditError, match="the connect timeout must be positive, got 0"):
        connect_args(postgres, 0)


def test_a_sqlite_file_is_opened_read_only_by_uri(tmp_path: Path) -> None:
    path = tmp_path / "odd name [1].db"
    opened = read_only_url(parse_url(f"sqlite:///{path}"))
    assert opened.query == {"mode": "ro", "uri": "true"}
    assert opened.database == f"file:{tmp_path}/odd%20name%20%5B1%5D.db"
    for unchanged in ("sqlite://", "sqlite:///:memory:", "postgresql://u@db/audit"):
        assert read_only_url(parse_url(unchanged)) == parse_url(unchanged)


def test_a_read_only_store_reads_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "odd name [1].db"
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    with AuditStore.from_url(url, read_only=True) as store:
        assert store.url.startswith(f"sqlite:///{tmp_path}/odd")  # as given, not the URI
        assert store.head()[0] == 0
        assert store.check_schema() == "0009"
        with pytest.raises(AuditError, match="attempt to write a readonly database"):
            store.claim_epoch("lease", "pod", 1, datetime.now(UTC))


def test_a_read_only_store_of_a_missing_file_fails_at_once_and_creates_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(AuditError, match=r"^no such database file: .*missing\.db \(nothing"):
        AuditStore.from_url(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    with pytest.raises(AuditError, match=r"the directory .*/nowhere does not exist"):
        AuditStore.from_url(f"sqlite:///{tmp_path / 'nowhere' / 'a.db'}", read_only=True)
    with pytest.raises(AuditError, match=r"the directory .*/nowhere does not exist"):
        upgrade_to_head(f"sqlite:///{tmp_path / 'nowhere' / 'a.db'}")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# the application role's privileges
# --------------------------------------------------------------------------------------------


def test_every_table_has_the_application_role_s_privileges_decided() -> None:
    assert set(APP_PRIVILEGES) == set(Base.metadata.tables) | {"alembic_version"}
    for table in APPEND_ONLY_TABLES:
        expected = ("SELECT",) if table == "audit_purges" else ("SELECT", "INSERT")
        assert APP_PRIVILEGES[table] == expected
    for table in MUTABLE_TABLES:
        assert APP_PRIVILEGES[table] == ("SELECT", "INSERT", "UPDATE")
    assert APP_PRIVILEGES["alembic_version"] == ("SELECT",)
    assert not any("DELETE" in privileges for privileges in APP_PRIVILEGES.values())


def test_only_the_owner_s_purge_deletes_so_the_application_role_is_granted_no_delete() -> None:
    """No DELETE is granted on any table, and the one store part that deletes is the purge
    beyond the retention (purges.py), which runs as the owner role: another store part that
    starts deleting must come with a decision about the grant (canary/audit/privileges.py)."""
    deleting: list[str] = []
    for module in sorted(AUDIT_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                deleting += [f"{module.name}: imports delete" for a in node.names
                             if a.name == "delete"]  # fmt: skip
            if isinstance(node, ast.Attribute) and node.attr == "delete":
                deleting.append(f"{module.name}:{node.lineno}: .delete")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "text":
                sql = ast.unparse(node).upper()  # a statement written out
                if "DELETE" in sql or "TRUNCATE" in sql:
                    deleting.append(f"{module.name}:{node.lineno}: {sql[:60]}")
    assert {found.partition(":")[0] for found in deleting} == {"purges.py"}
    assert not any("DELETE" in privileges for privileges in APP_PRIVILEGES.values())


def test_the_grant_report_says_what_was_granted_and_whether_anything_changed() -> None:
    granted = tuple((table, APP_PRIVILEGES[table]) for table in APP_PRIVILEGES)
    report = GrantReport("ksc_app", "public", "audit", True, granted, ("DELETE on x from y",))
    assert report.lines() == [
        "role ksc_app on database audit, schema public: privileges set",
        "  USAGE on schema public",
        "  SELECT, INSERT on audit_log, measurements, webhook_deliveries, audit_checkpoints",
        "  SELECT, INSERT, UPDATE on rollouts, approvals, commands, leader_fence",
        "  SELECT on audit_purges, alembic_version",
        "  nothing else: no UPDATE, DELETE or TRUNCATE of history, no DDL, no trigger changes",
        "  revoked DELETE on x from y",
    ]
    unchanged = GrantReport("ksc_app", "public", "audit", False, granted, ())
    assert unchanged.lines()[0].endswith(": already exactly so; nothing changed")


def test_what_a_privileged_role_could_do() -> None:
    assert not RoleAccess("ksc_app", False, (), ()).privileged
    superuser = RoleAccess("postgres", True, ("audit_log",), ("DELETE on audit_log",))
    assert superuser.privileged
    assert superuser.could().startswith("as a superuser it can UPDATE, DELETE or TRUNCATE")
    owner = RoleAccess("ksc_owner", False, ("audit_log", "rollouts"), ("DELETE on audit_log",))
    assert owner.could().startswith("as the owner of audit_log, rollouts it can disable the")
    extra = RoleAccess("ksc_app", False, (), ("DELETE on rollouts", "UPDATE on audit_log"))
    assert extra.privileged
    assert extra.could() == (
        "it holds DELETE on rollouts, UPDATE on audit_log, which the controller never uses"
    )
    assert "canary db grant --app-role" in extra.fix()


# --------------------------------------------------------------------------------------------
# the controller's checks at start (SQLite)
# --------------------------------------------------------------------------------------------


def _migrated(path: Path) -> str:
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    return url


def test_the_controller_starts_on_a_current_database_with_no_role_to_check(
    tmp_path: Path,
) -> None:
    health = Health()
    with AuditStore.from_url(_migrated(tmp_path / "audit.db")) as store, capture_logs() as logs:
        check_database(store, health)
    assert logs == []
    assert "database_role" not in health.readiness()[1]  # SQLite has no roles


def test_the_controller_refuses_a_schema_from_a_newer_kserve_canary(tmp_path: Path) -> None:
    url = _migrated(tmp_path / "audit.db")
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0042abc'")
    with (
        AuditStore.from_url(url) as store,
        pytest.raises(
            SchemaTooNew,
            match=r"^the database schema is at revision 0042abc, newer than this kserve-canary "
            r"knows \(head 0009\): upgrade kserve-canary$",
        ),
    ):
        check_database(store, Health())


def test_the_controller_refuses_a_database_without_the_audit_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with (
        AuditStore.from_url(url) as store,
        pytest.raises(AuditError, match="has no audit schema; run `canary db upgrade`"),
    ):
        check_database(store, Health())


def test_a_database_that_does_not_answer_at_start_is_not_waited_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not-mounted-yet' / 'audit.db'}"
    with AuditStore.from_url(url) as store, capture_logs() as logs:
        check_database(store, Health())  # no exception: the controller starts not ready
    (skipped,) = logs
    assert skipped["event"] == "audit.startup_check_skipped"
    assert skipped["log_level"] == "warning"
    assert "unable to open database file" in skipped["error"]
    with AuditStore.from_url(url) as store, pytest.raises(StoreUnavailable):
        store.ping()
