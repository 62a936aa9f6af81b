"""Least privilege on a real PostgreSQL: the owner role migrates, ``canary db grant`` gives the
application role what the controller uses, and that role can do the controller's work but
cannot change history; the append-only triggers fire even under a superuser's replication
role; the controller says at start when it connects as a role that could rewrite history."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic import command
from click.testing import CliRunner, Result
from psycopg.conninfo import make_conninfo
from structlog.testing import capture_logs

from canary.api.health import Health
from canary.app import check_database
from canary.audit import (
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditStore,
    CommandRow,
    Fence,
    Measurement,
    ObjectRef,
    RolloutRow,
    SchemaTooNew,
    alembic_config,
    upgrade_to_head,
)
from canary.cli import main
from testbed.postgres import PostgresServer, RoleDatabase, provision_audit_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
APPEND_ONLY = ("audit_log", "measurements", "webhook_deliveries", "audit_checkpoints")
MUTABLE = ("rollouts", "approvals", "commands", "leader_fence")
EVERY_TABLE = (*APPEND_ONLY, *MUTABLE, "alembic_version")
_names = itertools.count(1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def canary(*args: str) -> Result:
    """The ``canary`` command, in this process."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def connect(database: RoleDatabase, role: str | None = None) -> psycopg.Connection[Any]:
    """A raw autocommit connection as ``role`` (the superuser by default)."""
    conninfo = database.admin_conninfo
    if role is not None:
        conninfo = make_conninfo(conninfo, user=role)
    return psycopg.connect(conninfo, autocommit=True)


def privileges(database: RoleDatabase) -> list[tuple[Any, ...]]:
    """Every grant on the audit tables and the schema, as the superuser reads them."""
    with connect(database) as conn:
        tables = conn.execute(
            "SELECT relname, relacl::text FROM pg_class WHERE relname = ANY(%s) ORDER BY 1",
            (list(EVERY_TABLE),),
        ).fetchall()
        schema = conn.execute(
            "SELECT nspname, nspacl::text FROM pg_namespace WHERE nspname = 'public'"
        ).fetchall()
    return tables + schema


def contents(database: RoleDatabase) -> dict[str, list[tuple[Any, ...]]]:
    with connect(database) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in EVERY_TABLE
        }


def _new_database(server: PostgresServer) -> RoleDatabase:
    return server.create_role_database(f"ksc_roles_{os.getpid()}_{next(_names)}")


@pytest.fixture
def roles(postgres_server: PostgresServer) -> Iterator[RoleDatabase]:
    """A database owned by a fresh owner role, a fresh application role with no privileges
    yet, migrated by the owner through ``canary db upgrade``. Dropped afterwards."""
    database = _new_database(postgres_server)
    try:
        upgraded = canary("db", "upgrade", "--database-url", database.owner_url)
        assert upgraded.exit_code == 0, upgraded.output
        yield database
    finally:
        postgres_server.drop_role_database(database)


@pytest.fixture
def granted(roles: RoleDatabase) -> RoleDatabase:
    result = canary("db", "grant", "--app-role", roles.app, "--database-url", roles.owner_url)
    assert result.exit_code == 0, result.output
    return roles


def measurement(i: int) -> Measurement:
    return Measurement(
        check="error_rate",
        evaluated_at=T0 + timedelta(seconds=i),
        query="sum(rate(errors[1m]))",
        prometheus_url="http://prometheus:9090",
        response_digest=f"sha256:{i:064x}",
        canary_value=0.01,
        baseline_value=0.02,
        canary_samples=100,
        baseline_samples=900,
        statistic=1.5,
        threshold=0.05,
        verdict="pass",
        dry_run=False,
        detail={"i": i},
    )


CONTROLLER = Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0")
ISVC = ObjectRef("fraud", "scorer", uid="uid-1")


def entry(i: int, **extra: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "at": T0 + timedelta(seconds=i),
        "actor": CONTROLLER,
        "action": "analysis.evaluated",
        "rollout_id": "ro-1",
        "obj": ISVC,
        "reason": f"step {i}",
    }
    return AuditEntry(**(fields | extra))


def rollout(step: int) -> RolloutRow:
    return RolloutRow(
        id="ro-1",
        namespace="fraud",
        name="scorer",
        isvc_uid="uid-1",
        policy_name="fraud-scoring",
        mode="knative",
        phase="progressing",
        step_index=step,
        canary_revision="scorer-predictor-00002",
        stable_revision="scorer-predictor-00001",
        state={"step": step},
        created_at=T0,
        updated_at=T0 + timedelta(minutes=step),
        next_check_at=None,
        active=True,
    )


def approval(state: str = "pending") -> ApprovalRow:
    return ApprovalRow(
        id="ap-1",
        rollout_id="ro-1",
        revision="scorer-predictor-00002",
        step_index=1,
        gate="webhook",
        change_number=None,
        change_sys_id=None,
        risk_owner_group="risk-owners",
        requested_by="controller",
        requested_at=T0,
        deadline=T0 + timedelta(hours=1),
        state=state,  # type: ignore[arg-type]
    )


def command_row(command_id: str, command: str = "pause") -> CommandRow:
    return CommandRow(
        id=command_id,
        namespace="fraud",
        name="scorer",
        command=command,
        actor="rita",
        reason="RSK-12",
        args={},
        requested_at=T0,
    )


def do_the_controller_s_work(store: AuditStore) -> None:
    """Every kind of write the controller, its API and its workers make, and the reads."""
    assert store.check_schema() == "0009"
    fence = Fence("kserve-canary-leader", "pod-0", 1)
    assert store.claim_epoch(fence.lease_name, fence.holder, fence.epoch, T0)
    assert not store.claim_epoch(fence.lease_name, fence.holder, fence.epoch, T0)  # seen
    store.commit([entry(1, action="rollout.started")], fence=fence, rollout=rollout(0))
    store.submit_command(command_row("c-1"))
    store.commit(
        [entry(2, measurements=(measurement(1), measurement(2)))],
        fence=fence,
        rollout=rollout(1),
        expected_version=1,
        command=("c-1", "accepted", "paused", T0 + timedelta(seconds=2)),
        approvals=[approval()],
    )
    store.upsert_approval(approval())  # an upsert of an existing row: ON CONFLICT DO UPDATE
    decided = T0 + timedelta(minutes=3)
    assert store.update_approval(
        "ap-1", only_if_state="pending", state="approved", approver="alice", decided_at=decided,
        record=entry(3, action="approval.decision_verified"),
    )  # fmt: skip
    assert store.record_delivery(
        "wh-1", received_at=T0, source="servicenow", payload_digest="sha256:01",
        signature_valid=True, outcome="accepted",
    )  # fmt: skip
    assert not store.record_delivery(  # a duplicate: ON CONFLICT DO NOTHING
        "wh-1", received_at=T0, source="servicenow", payload_digest="sha256:01",
        signature_valid=True, outcome="accepted",
    )  # fmt: skip
    store.submit_command(command_row("c-2", "abort"))
    store.settle_command("c-2", "rejected", "nothing to abort", T0 + timedelta(seconds=5))
    assert store.claim_epoch(fence.lease_name, "pod-1", 2, T0 + timedelta(minutes=5))
    assert store.verify().ok
    assert [r.entry.action for r in store.records()] == [
        "rollout.started",
        "manual.requested",  # c-1 queued
        "analysis.evaluated",
        "approval.requested",  # the approvals row written in that commit
        "manual.settled",  # c-1 settled in it
        "approval.decision_verified",
        "webhook.delivered",  # once: the duplicate is not chained
        "manual.requested",  # c-2
        "manual.settled",
    ]
    assert store.head()[0] == 9
    assert store.crosscheck() == []
    assert len(store.measurements_for("ro-1")) == 2
    assert store.get_rollout("ro-1") is not None
    assert [a.state for a in store.approvals_for("ro-1")] == ["approved"]
    commands = {c.id: c.state for c in store.recent_commands()}
    assert commands == {"c-1": "accepted", "c-2": "rejected"}


def insert_checkpoint(database: RoleDatabase, role: str, seq: int, record_hash: str) -> None:
    """What the controller does with each signed checkpoint: keep its copy."""
    with connect(database, role) as conn:
        conn.execute(
            "INSERT INTO audit_checkpoints (seq, record_hash, signed_at, key_id, statement, "
            "signature) VALUES (%s, %s, %s, 'key-1', 'statement', 'signature')",
            (seq, record_hash, T0),
        )


# --------------------------------------------------------------------------------------------
# canary db grant
# --------------------------------------------------------------------------------------------


def test_grant_prints_what_it_granted_and_a_second_run_changes_nothing(
    roles: RoleDatabase,
) -> None:
    first = canary("db", "grant", "--app-role", roles.app, "--database-url", roles.owner_url)
    assert first.exit_code == 0, first.output
    assert f"role {roles.app} on database {roles.name}, schema public: privileges set" in (
        first.output
    )
    assert "  USAGE on schema public\n" in first.output
    assert (
        "  SELECT, INSERT on audit_log, measurements, webhook_deliveries, audit_checkpoints\n"
        in first.output
    )
    assert "  SELECT, INSERT, UPDATE on rollouts, approvals, commands, leader_fence\n" in (
        first.output
    )
    assert "  SELECT on audit_purges, alembic_version\n" in first.output
    after_first = privileges(roles)

    second = canary("db", "grant", "--app-role", roles.app, "--database-url", roles.owner_url)
    assert second.exit_code == 0, second.output
    assert "already exactly so; nothing changed" in second.output
    assert privileges(roles) == after_first


def test_grant_takes_away_what_the_role_or_public_held_beyond_the_controller_s_needs(
    granted: RoleDatabase,
) -> None:
    with connect(granted, granted.owner) as conn:
        conn.execute(f"GRANT DELETE ON audit_log TO {granted.app}")
        conn.execute(f"GRANT UPDATE (body) ON audit_log TO {granted.app}")
        conn.execute("GRANT UPDATE ON measurements TO PUBLIC")
    with AuditStore.from_url(granted.app_url) as store:
        access = store.role_access()
    assert access is not None
    assert access.excess == ("DELETE on audit_log", "UPDATE on measurements")  # column: no

    result = canary("db", "grant", "--app-role", granted.app, "--database-url", granted.owner_url)
    assert result.exit_code == 0, result.output
    assert "privileges set" in result.output
    assert f"revoked DELETE on audit_log from {granted.app}" in result.output
    assert f"revoked UPDATE on audit_log.body from {granted.app}" in result.output
    assert "revoked UPDATE on measurements from PUBLIC" in result.output
    with AuditStore.from_url(granted.app_url) as store:
        access = store.role_access()
    assert access is not None
    assert not access.privileged
    with connect(granted, granted.app) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE audit_log SET body = 'x'")


def _refused(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_grant_refuses_a_superuser_an_owner_the_connected_role_and_a_missing_role(
    roles: RoleDatabase,
) -> None:
    before = privileges(roles)
    as_owner = ("--database-url", roles.owner_url)
    _refused(
        canary("db", "grant", "--app-role", "postgres", *as_owner),
        "error: role postgres is a superuser",
    )
    _refused(
        canary("db", "grant", "--app-role", roles.owner, *as_owner),
        f"error: role {roles.owner} is the role this command is connected as",
    )
    _refused(
        canary("db", "grant", "--app-role", roles.owner, "--database-url", roles.admin_url),
        f"error: role {roles.owner} owns alembic_version (owner {roles.owner}), approvals",
    )
    _refused(
        canary("db", "grant", "--app-role", "nobody_at_all", *as_owner),
        "error: role nobody_at_all does not exist: create it first",
    )
    assert privileges(roles) == before


def test_grant_refuses_a_member_of_the_owner_and_a_role_that_may_create_roles(
    postgres_server: PostgresServer, roles: RoleDatabase
) -> None:
    member, creator = f"{roles.name}_member", f"{roles.name}_creator"
    postgres_server.create_role(member)
    postgres_server.create_role(creator)
    try:
        with connect(roles) as conn:
            conn.execute(f"GRANT {roles.owner} TO {member}")
            conn.execute(f"ALTER ROLE {creator} CREATEROLE")
        before = privileges(roles)
        _refused(
            canary("db", "grant", "--app-role", member, "--database-url", roles.owner_url),
            f"owner {roles.owner}), approvals (owner {roles.owner})",
        )
        _refused(
            canary("db", "grant", "--app-role", creator, "--database-url", roles.owner_url),
            f"error: role {creator} has CREATEROLE",
        )
        assert privileges(roles) == before
    finally:
        postgres_server.drop_role(member)
        postgres_server.drop_role(creator)


def test_grant_before_the_schema_exists_says_to_upgrade_first(
    postgres_server: PostgresServer,
) -> None:
    database = _new_database(postgres_server)
    try:
        result = canary(
            "db", "grant", "--app-role", database.app, "--database-url", database.owner_url
        )
        assert result.exit_code == 3, result.output
        assert "has no audit schema; run `canary db upgrade`" in result.output
    finally:
        postgres_server.drop_role_database(database)


# --------------------------------------------------------------------------------------------
# what the application role can and cannot do
# --------------------------------------------------------------------------------------------


def test_the_application_role_does_everything_the_controller_does(granted: RoleDatabase) -> None:
    with AuditStore.from_url(granted.app_url, timeout=10) as store:
        do_the_controller_s_work(store)
        seq, head = store.head()
        access = store.role_access()
    insert_checkpoint(granted, granted.app, seq, head)
    assert access is not None
    assert (access.role, access.privileged) == (granted.app, False)
    assert contents(granted)["audit_checkpoints"][0][:2] == (seq, head)


@pytest.fixture(scope="module")
def filled(postgres_server: PostgresServer) -> Iterator[RoleDatabase]:
    """One granted database with a row in every table, shared by the refusal tests (every
    statement they run is refused, so none changes it)."""
    database = _new_database(postgres_server)
    try:
        upgrade_to_head(database.owner_url)
        result = canary(
            "db", "grant", "--app-role", database.app, "--database-url", database.owner_url
        )
        assert result.exit_code == 0, result.output
        with AuditStore.from_url(database.app_url) as store:
            do_the_controller_s_work(store)
            seq, head = store.head()
        insert_checkpoint(database, database.app, seq, head)
        yield database
    finally:
        postgres_server.drop_role_database(database)


# A text column of each append-only table, to rewrite.
REWRITE = {
    "audit_log": "body",
    "measurements": "verdict",
    "webhook_deliveries": "outcome",
    "audit_checkpoints": "signature",
}
_PERMISSION = "permission denied for table {table}"
_OWNER = "must be owner of table {table}"
REFUSED = [
    *(
        pytest.param(statement, _PERMISSION.format(table=table), id=statement)
        for table in APPEND_ONLY
        for statement in (
            f"UPDATE {table} SET {REWRITE[table]} = 'tampered'",
            f"DELETE FROM {table}",
            f"TRUNCATE {table} CASCADE",
        )
    ),
    *(
        pytest.param(statement, _PERMISSION.format(table=table), id=statement)
        for table in MUTABLE
        for statement in (f"DELETE FROM {table}", f"TRUNCATE {table} CASCADE")
    ),
    *(
        pytest.param(statement, _PERMISSION.format(table="audit_purges"), id=statement)
        for statement in (
            "INSERT INTO audit_purges (through_seq, through_hash, statement, signature, key_id, "
            "purged_at, purged_by, records, cutoff, retention_days, record_seq) SELECT seq, "
            "record_hash, '', '', '', now(), 'app', seq, now(), 2557, seq + 1 FROM audit_log",
            "UPDATE audit_purges SET through_seq = 1",
            "DELETE FROM audit_purges",
            "TRUNCATE audit_purges",
        )
    ),
    pytest.param(
        "UPDATE alembic_version SET version_num = '0001'",
        _PERMISSION.format(table="alembic_version"),
        id="UPDATE alembic_version",
    ),
    pytest.param(
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        _OWNER.format(table="audit_log"),
        id="DISABLE TRIGGER",
    ),
    pytest.param(
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        _OWNER.format(table="audit_log"),
        id="DISABLE TRIGGER ALL",
    ),
    pytest.param(
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "must be owner of relation audit_log",
        id="DROP TRIGGER",
    ),
    pytest.param(
        "CREATE OR REPLACE FUNCTION ksc_reject_audit_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
        "permission denied for schema public",  # and it would need to own the function
        id="REPLACE the trigger function",
    ),
    pytest.param(
        "SET session_replication_role = replica",
        'permission denied to set parameter "session_replication_role"',
        id="SET session_replication_role",
    ),
    pytest.param("DROP TABLE audit_log", _OWNER.format(table="audit_log"), id="DROP TABLE"),
    pytest.param(
        "ALTER TABLE audit_log ADD COLUMN forged text",
        _OWNER.format(table="audit_log"),
        id="ALTER TABLE",
    ),
    pytest.param(
        "CREATE TABLE audit_log_shadow (seq bigint)",
        "permission denied for schema public",
        id="CREATE TABLE",
    ),
]


@pytest.mark.parametrize(("statement", "error"), REFUSED)
def test_the_application_role_cannot_change_history_or_the_schema(
    filled: RoleDatabase, statement: str, error: str
) -> None:
    before = contents(filled)
    with (
        connect(filled, filled.app) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=re.escape(error)),
    ):
        conn.execute(statement)
    assert contents(filled) == before
    assert all(before.values())  # there was something to change


# --------------------------------------------------------------------------------------------
# the triggers fire always (migration 0007)
# --------------------------------------------------------------------------------------------


def _as_replica(database: RoleDatabase, statement: str) -> None:
    """Run ``statement`` as the superuser, in a session that replays as a replica (ordinary
    triggers do not fire there)."""
    with connect(database) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement)


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
@pytest.mark.parametrize("table", APPEND_ONLY)
def test_a_superuser_replaying_as_a_replica_still_cannot_change_history(
    filled: RoleDatabase, table: str, operation: str
) -> None:
    before = contents(filled)
    statement = {
        "UPDATE": f"UPDATE {table} SET {REWRITE[table]} = 'tampered'",
        "DELETE": f"DELETE FROM {table}",
        "TRUNCATE": f"TRUNCATE {table} CASCADE",
    }[operation]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege,
        match=rf"audit tables are append-only: {operation} on \w+ rejected",
    ):
        _as_replica(filled, statement)
    assert contents(filled) == before


def test_without_migration_0007_a_replica_session_skips_the_triggers(
    granted: RoleDatabase,
) -> None:
    """What 0007 is for: under the ordinary trigger state, a replica session deletes."""
    with AuditStore.from_url(granted.app_url) as store:
        store.append([entry(1), entry(2)])
    command.downgrade(alembic_config(granted.owner_url), "0006")
    _as_replica(granted, "DELETE FROM audit_log WHERE seq = 2")
    assert [row[0] for row in contents(granted)["audit_log"]] == [1]


# --------------------------------------------------------------------------------------------
# the controller, at start
# --------------------------------------------------------------------------------------------


def _started(url: str) -> tuple[list[MutableMapping[str, Any]], dict[str, dict[str, Any]]]:
    health = Health()
    with AuditStore.from_url(url, timeout=10) as store, capture_logs() as logs:
        check_database(store, health)
    _, components = health.readiness()
    return logs, components


@pytest.mark.parametrize("who", ["superuser", "owner"])
def test_the_controller_warns_when_its_role_could_rewrite_history(
    granted: RoleDatabase, who: str
) -> None:
    url, role = {
        "superuser": (granted.admin_url, "postgres"),
        "owner": (granted.owner_url, granted.owner),
    }[who]
    logs, components = _started(url)
    (warning,) = [log for log in logs if log["event"] == "audit.privileged_role"]
    assert warning["log_level"] == "warning"
    assert warning["role"] == role
    could = {
        "superuser": "as a superuser it can UPDATE, DELETE or TRUNCATE the audit history, "
        "disable the append-only triggers",
        "owner": "as the owner of alembic_version, approvals, audit_checkpoints, audit_log, "
        "audit_purges, commands, leader_fence, measurements, rollouts, webhook_deliveries it "
        "can disable the append-only triggers (ALTER TABLE ... DISABLE TRIGGER)",
    }[who]
    assert could in warning["could"]
    assert "canary db grant --app-role" in warning["fix"]
    detail = components["database_role"]
    assert detail["ok"] is True  # a warning: the replica still serves
    assert detail["detail"].startswith(f"warning: the controller connects as role {role}, and ")
    assert "canary db grant --app-role" in detail["detail"]


def test_the_controller_is_quiet_about_the_application_role(granted: RoleDatabase) -> None:
    logs, components = _started(granted.app_url)
    assert [log for log in logs if log["event"] == "audit.privileged_role"] == []
    assert components["database_role"] == {
        "ok": True,
        "detail": f"role {granted.app}: reads and appends the audit history, updates only the "
        "controller's state (schema revision 0009)",
    }


def test_the_controller_refuses_a_schema_newer_than_it_knows(granted: RoleDatabase) -> None:
    with connect(granted, granted.owner) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    with (
        AuditStore.from_url(granted.app_url, timeout=10) as store,
        pytest.raises(
            SchemaTooNew,
            match=re.escape(
                "the database schema is at revision 0099, newer than this kserve-canary knows "
                "(head 0009): upgrade kserve-canary"
            ),
        ),
    ):
        check_database(store, Health())


# --------------------------------------------------------------------------------------------
# the test bed's databases (what the e2e tests and the demo run the controller on)
# --------------------------------------------------------------------------------------------


def test_the_test_bed_provisions_a_database_as_production_runs_it(
    postgres_server: PostgresServer,
) -> None:
    database = provision_audit_database(postgres_server, f"ksc_bed_{os.getpid()}_{next(_names)}")
    try:
        with AuditStore.from_url(database.app_url) as store:
            app = store.role_access()
            do_the_controller_s_work(store)
        with AuditStore.from_url(database.owner_url) as store:
            owner = store.role_access()
    finally:
        postgres_server.drop_role_database(database)
    assert app is not None
    assert (app.role, app.privileged) == (database.app, False)
    assert owner is not None
    assert owner.role == database.owner
    assert "audit_log" in owner.owns
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        left = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)", (database.owner, database.app)
        ).fetchall()
    assert left == []
