"""Retention on PostgreSQL (an owner role purges, the controller's application role cannot)
and on SQLite: `canary audit purge` removes what the retention lets go, up to a signed
checkpoint, records itself in the chain, and leaves a chain `canary audit verify` still
checks; a dry run and every refusal change nothing; a broken chain is never purged; and what
an attacker does around purges (records deleted without a purge, a purge row forged with
another key's checkpoint, a purge row whose ``through_seq`` was raised, more deleted than the
row says, a record slipped in below the floor) is named."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import make_conninfo

import canary.audit.verify_postgres
from canary.audit import Actor, AuditEntry, AuditStore, Measurement, ObjectRef, upgrade_to_head
from canary.audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    SignedCheckpoint,
    generate_private_key_pem,
    public_key_pem,
)
from canary.audit.records import format_timestamp
from canary.audit.retention import PURGE_ACTION, PurgeRow
from canary.audit.schema import APPEND_ONLY_TABLES
from canary.cli import main
from testbed.postgres import PostgresServer, RoleDatabase
from tests.conftest import Database
from tests.tampering import (
    PURGE_COLUMNS,
    forge_append,
    forge_purge,
    purge_row_values,
    untriggered,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)  # the purge reads the real clock
ANCIENT = NOW - timedelta(days=4000)  # records 1 to 3
OLD = NOW - timedelta(days=3000)  # records 4 to 6: beyond the default 2557 days
RECENT = NOW - timedelta(days=10)  # records 7 to 12
CHECKPOINTED = (3, 5, 8, 10)
_names = itertools.count(1)


def _at(seq: int) -> datetime:
    base = ANCIENT if seq <= 3 else OLD if seq <= 6 else RECENT
    return base + timedelta(minutes=seq)


def _measurement(seq: int) -> Measurement:
    return Measurement(
        check="error_rate", evaluated_at=_at(seq), query="sum(rate(errors[1m]))",
        prometheus_url="http://prometheus:9090", response_digest=f"sha256:{seq:064x}",
        canary_value=0.01, baseline_value=0.02, canary_samples=100, baseline_samples=900,
        statistic=1.5, threshold=0.05, verdict="pass", dry_run=False, detail={"seq": seq},
    )  # fmt: skip


def _entry(seq: int, **changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "at": _at(seq),
        "actor": Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0"),
        "action": "analysis.evaluated",
        "rollout_id": f"ro-{seq // 4}",
        "obj": ObjectRef("credit", "decisioning"),
        "reason": f"look {seq}",
        "measurements": (_measurement(seq),),
    }
    return AuditEntry(**(fields | changes))


@dataclass
class Trail:
    db: Database  # raw access as the most privileged user: inspection and attacks
    owner_url: str  # what a purge runs as
    app_url: str  # what the controller writes as
    role: str  # who a purge made with owner_url is recorded as
    roles: RoleDatabase | None  # PostgreSQL's owner and application roles
    checkpoints: Path
    public_key: Path
    signer: CheckpointSigner
    signed: dict[int, SignedCheckpoint]

    def purge(
        self, *extra: str, url: str | None = None, checkpoints: Path | None = None,
        env: dict[str, str] | None = None, answer: str | None = None,
    ) -> Result:  # fmt: skip
        args = [
            "audit", "purge", "--database-url", url or self.owner_url,
            "--checkpoint", str(checkpoints or self.checkpoints),
            "--public-key", str(self.public_key),
        ]  # fmt: skip
        return CliRunner().invoke(main, [*args, *extra], env=env, input=answer)

    def verify(self, *extra: str, checkpoints: bool = True) -> Result:
        args = ["audit", "verify", "--database-url", self.owner_url]
        if checkpoints:
            args += ["--checkpoint", str(self.checkpoints), "--public-key", str(self.public_key)]
        return CliRunner().invoke(main, [*args, *extra])

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return {t: self.db.query(f"SELECT * FROM {t} ORDER BY 1, 2") for t in APPEND_ONLY_TABLES}

    def seqs(self) -> list[int]:
        return [row[0] for row in self.db.query("SELECT seq FROM audit_log ORDER BY seq")]

    def hash_of(self, seq: int) -> str:
        return self.signed[seq].record_hash


def _fill(trail_dir: Path, app_url: str) -> tuple[CheckpointSigner, dict[int, SignedCheckpoint]]:
    """Twelve records as the controller writes them, each with a measurement; checkpoints
    signed a minute after records 3, 5, 8 and 10 and kept in the database."""
    signer = CheckpointSigner.from_pem(generate_private_key_pem())
    (trail_dir / "signing.pub").write_bytes(public_key_pem(signer.public_key))
    signed: dict[int, SignedCheckpoint] = {}
    with AuditStore.from_url(app_url) as store:
        for seq in range(1, 13):
            store.append([_entry(seq)])
            if seq in CHECKPOINTED:
                head, record_hash = store.head()
                checkpoint = Checkpoint("kserve-canary", head, record_hash, _at(seq) + timedelta(
                    minutes=1))  # fmt: skip
                signed[seq] = signer.sign(checkpoint)
                store.add_checkpoint(signed[seq])
    (trail_dir / "checkpoints.jsonl").write_text(
        "".join(signed[seq].to_json() + "\n" for seq in CHECKPOINTED)
    )
    return signer, signed


def _canary(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@contextmanager
def _trail(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trail]:
    """On SQLite one file; on PostgreSQL a database owned by an owner role that migrated it,
    with the controller's application role granted by `canary db grant`."""
    if kind == "sqlite":
        db: Database = request.getfixturevalue("sqlite_database")
        upgrade_to_head(db.url)
        signer, signed = _fill(tmp_path, db.url)
        with AuditStore.from_url(db.url) as store:
            role = store.purge_role()
        yield Trail(db, db.url, db.url, role, None, tmp_path / "checkpoints.jsonl",
                    tmp_path / "signing.pub", signer, signed)  # fmt: skip
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database = server.create_role_database(f"ksc_retention_{os.getpid()}_{next(_names)}")
    try:
        assert _canary("db", "upgrade", "--database-url", database.owner_url).exit_code == 0
        granted = _canary("db", "grant", "--app-role", database.app,
                          "--database-url", database.owner_url)  # fmt: skip
        assert granted.exit_code == 0, granted.output
        signer, signed = _fill(tmp_path, database.app_url)
        yield Trail(
            Database("postgresql", database.admin_url, database.admin_conninfo),
            database.owner_url, database.app_url, database.owner, database,
            tmp_path / "checkpoints.jsonl", tmp_path / "signing.pub", signer, signed,
        )  # fmt: skip
    finally:
        server.drop_role_database(database)


@pytest.fixture(params=["sqlite", "postgresql"])
def trail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trail]:
    with _trail(request.param, request, tmp_path) as made:
        yield made


@pytest.fixture
def pg_trail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trail]:
    """PostgreSQL only: the owner and application roles."""
    with _trail("postgresql", request, tmp_path) as made:
        yield made


def _purged(trail: Trail, *extra: str) -> Result:
    result = trail.purge("--yes", *extra)
    assert result.exit_code == 0, result.output
    return result


# --------------------------------------------------------------------------------------------
# a purge
# --------------------------------------------------------------------------------------------


def test_a_dry_run_says_what_would_go_and_changes_nothing(trail: Trail) -> None:
    before = trail.snapshot()
    result = trail.purge("--dry-run")
    assert result.exit_code == 0, result.output
    assert "records 1 to 5 (5) recorded before the cutoff " in result.output
    assert "(retention 2557 days)" in result.output
    assert (
        f"the purge ends on the checkpoint of record 5 signed "
        f"{format_timestamp(trail.signed[5].checkpoint.at)} by {trail.signer.key_id}; the chain "
        f"will start at record 6, linked to hash {trail.hash_of(5)}"
    ) in result.output
    assert "record 6: beyond the retention too, but no checkpoint given vouches" in result.output
    assert f"dry run: nothing changed; {trail.role} would purge records 1 to 5 (5)" in (
        result.output
    )
    assert trail.snapshot() == before


def test_a_purge_removes_what_the_retention_lets_go_and_the_chain_still_verifies(
    trail: Trail,
) -> None:
    result = _purged(trail, "--reason", "CHG0099 yearly retention")
    assert (
        f"purged records 1 to 5 (5 records, 5 measurement rows) as {trail.role} at "
    ) in result.output
    assert (
        "recorded in the chain as record 13 (audit.purged); the chain now starts at record 6"
    ) in result.output
    assert trail.seqs() == list(range(6, 14))
    assert trail.db.query("SELECT min(audit_seq) FROM measurements") == [(6,)]
    with AuditStore.from_url(trail.app_url) as store:  # the controller reads it all
        (row,) = store.purges()
        (record,) = store.records(after_seq=12)
        report = store.verify()
    assert (row.through_seq, row.through_hash, row.records, row.record_seq) == (
        5, trail.hash_of(5), 5, 13,
    )  # fmt: skip
    assert (row.purged_by, row.retention_days, row.key_id) == (
        trail.role, 2557, trail.signer.key_id,
    )  # fmt: skip
    assert row.statement == trail.signed[5].statement
    assert row.cutoff == row.purged_at - timedelta(days=2557)
    assert record.entry.action == PURGE_ACTION
    assert (record.entry.actor.kind, record.entry.actor.id) == ("human", trail.role)
    assert record.entry.reason == "CHG0099 yearly retention"
    assert record.entry.evidence["through_seq"] == 5
    assert record.entry.evidence["measurements"] == 5
    assert record.entry.evidence["checkpoint"] == trail.signed[5].envelope()
    assert (report.ok, report.purged_through, report.records_checked) == (True, 5, 8)

    verified = trail.verify()
    assert verified.exit_code == 0, verified.output
    assert (
        "audit chain intact from record 6 (the records before it were purged): 8 records, "
        "head record 13"
    ) in verified.output
    assert "anchored: record 10 matches the checkpoint signed " in verified.output
    assert (
        f"purged through record 5 on {format_timestamp(row.purged_at)} by {trail.role} "
        f"(retention 2557 days, cutoff {format_timestamp(row.cutoff)}), vouched for by the "
        f"checkpoint signed {format_timestamp(trail.signed[5].checkpoint.at)} by "
        f"{trail.signer.key_id}; 1 checkpoint given is of a purged record"
    ) in verified.output
    assert "warning: records 11 to 13 (3) not yet anchored" in verified.output
    assert "TAMPERED" not in verified.output

    alone = trail.verify(checkpoints=False)
    assert alone.exit_code == 0, alone.output
    assert "purged: records up to 5 were purged on" in alone.output
    since = trail.verify("--since-checkpoint")
    assert since.exit_code == 0, since.output
    assert "audit chain intact after checkpoint 10: 3 records, head record 13" in since.output


def test_a_second_purge_carries_on_from_the_first(trail: Trail) -> None:
    first = _purged(trail, "--retention-days", "3500")  # records 1 to 3 only are that old
    assert "purged records 1 to 3 (3 records, 3 measurement rows)" in first.output
    second = _purged(trail)
    assert "purged records 4 to 5 (2 records, 2 measurement rows)" in second.output
    assert "recorded in the chain as record 14 (audit.purged)" in second.output
    assert trail.seqs() == list(range(6, 15))
    with AuditStore.from_url(trail.app_url) as store:
        rows = store.purges()
        (record,) = store.records(after_seq=13)
    assert [(r.through_seq, r.records, r.record_seq, r.retention_days) for r in rows] == [
        (3, 3, 13, 3500), (5, 2, 14, 2557),
    ]  # fmt: skip
    assert record.entry.evidence["previous_floor"] == 3
    verified = trail.verify()
    assert verified.exit_code == 0, verified.output
    assert "purged through record 5 on" in verified.output
    assert "1 checkpoint given is of a purged record" in verified.output


# --------------------------------------------------------------------------------------------
# refusals: exit 2, nothing changed
# --------------------------------------------------------------------------------------------


REFUSALS = {
    "nothing old enough": (
        ["--retention-days", "5000"], None,
        "error: nothing to purge: record 1, the oldest kept, was recorded ",
    ),
    "no checkpoint old enough": (
        [], "young",
        "error: records 1 to 6: beyond the retention (recorded before ",
    ),
    "a retention below the policy": (
        ["--retention-days", "400"], None,
        "error: --retention-days 400 is shorter than the retention policy "
        "(audit_retention_days = 2557)",
    ),
    "a policy below the minimum": (
        [], "policy 10",
        "error: cannot read the retention policy: setting audit_retention_days: Input should "
        "be greater than or equal to 31",
    ),
    "not confirmed": ([], "answer n", "error: nothing purged (not confirmed; --yes skips"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_a_refused_purge_changes_nothing(trail: Trail, tmp_path: Path, case: str) -> None:
    extra, how, message = REFUSALS[case]
    before = trail.snapshot()
    young = tmp_path / "young.jsonl"
    young.write_text(trail.signed[8].to_json() + "\n" + trail.signed[10].to_json() + "\n")
    yes = [] if how == "answer n" else ["--yes"]
    result = trail.purge(
        *yes, *extra,
        checkpoints=young if how == "young" else None,
        env={"KSC_AUDIT_RETENTION_DAYS": "10"} if how == "policy 10" else None,
        answer="n\n" if how == "answer n" else None,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert trail.snapshot() == before


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    _fill(tmp_path, _migrated(tmp_path / "other.db"))  # the checkpoint and key files
    missing = tmp_path / "nowhere.db"
    result = CliRunner().invoke(main, [
        "audit", "purge", "--yes", "--database-url", f"sqlite:///{missing}",
        "--checkpoint", str(tmp_path / "checkpoints.jsonl"),
        "--public-key", str(tmp_path / "signing.pub"),
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert f"no such database file: {missing}" in result.output
    assert not missing.exists()


def _migrated(path: Path) -> str:
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    return url


def _refused_as_tampered(trail: Trail, message: str) -> None:
    before = trail.snapshot()
    result = trail.purge("--yes")
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "error: nothing purged: the audit trail does not verify" in result.output
    assert trail.snapshot() == before


def test_a_broken_chain_is_never_purged(trail: Trail) -> None:
    untriggered(
        trail.db,
        [("UPDATE audit_log SET body = replace(body, 'look 2', 'look 22') WHERE seq = 2", ())],
    )
    _refused_as_tampered(
        trail, "audit chain BROKEN at record 2: record 2: stored record_hash does not match"
    )


def test_a_chain_its_checkpoints_contradict_is_never_purged(trail: Trail) -> None:
    with AuditStore.from_url(trail.app_url) as store:
        seq, record_hash = store.head()
    witnessed = trail.signer.sign(Checkpoint("kserve-canary", seq, record_hash, NOW))
    with trail.checkpoints.open("a") as out:
        out.write(witnessed.to_json() + "\n")
    untriggered(
        trail.db,
        [
            ("DELETE FROM measurements WHERE audit_seq = 12", ()),
            ("DELETE FROM audit_log WHERE seq = 12", ()),
        ],
    )
    _refused_as_tampered(
        trail, "TAMPERED: truncated: the witness saw record 12; the database ends at 11"
    )


# --------------------------------------------------------------------------------------------
# who may purge
# --------------------------------------------------------------------------------------------


def _as(trail: Trail, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(trail.db.target, user=role), autocommit=True)


def test_the_application_role_cannot_purge_and_the_purge_rows_do_not_help_it(
    pg_trail: Trail,
) -> None:
    trail = pg_trail
    assert trail.roles is not None
    app = trail.roles.app
    before = trail.snapshot()
    refused = trail.purge("--yes", url=trail.app_url)
    assert refused.exit_code == 2, refused.output
    assert f"error: role {app} does not own audit_log (owner {trail.role})" in refused.output
    assert trail.snapshot() == before
    _purged(trail)  # the owner purges records 1 to 5: the floor is 5
    with _as(trail, app) as conn:
        assert conn.execute("SELECT count(*) FROM audit_purges").fetchone() == (1,)
        for statement in (
            "DELETE FROM audit_log WHERE seq <= 5",
            "DELETE FROM measurements WHERE audit_seq <= 5",
            "DELETE FROM audit_log WHERE seq = 6",
            "UPDATE audit_purges SET through_seq = 12",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
        marks = ", ".join(["%s"] * 11)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(
                f"INSERT INTO audit_purges ({', '.join(PURGE_COLUMNS)}) VALUES ({marks})",
                purge_row_values(trail.db, _forged_row(trail, trail.signer, 10)),
            )
    assert trail.seqs() == list(range(6, 14))


def test_the_triggers_let_only_a_recorded_purge_through(trail: Trail) -> None:
    _purged(trail)
    statements = [
        "DELETE FROM audit_log WHERE seq = 6",
        "DELETE FROM measurements WHERE audit_seq = 6",
        "UPDATE audit_purges SET through_seq = 8",
        "DELETE FROM audit_purges",
    ]
    if trail.db.kind == "postgresql":
        statements += ["TRUNCATE audit_purges", "TRUNCATE audit_log CASCADE"]
    for statement in statements:
        with pytest.raises(trail.db.error, match="audit tables are append-only"):
            trail.db.query(statement)
    if trail.db.kind == "postgresql":  # a table that shadows audit_purges counts for nothing
        with psycopg.connect(trail.db.target, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE audit_purges (through_seq bigint)")
            conn.execute("INSERT INTO audit_purges VALUES (1000)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute("DELETE FROM measurements WHERE audit_seq = 6")
    assert trail.seqs() == list(range(6, 14))


# --------------------------------------------------------------------------------------------
# attacks around purges, named by `canary audit verify`
# --------------------------------------------------------------------------------------------


def _forged_row(trail: Trail, by: CheckpointSigner, through: int, **changes: Any) -> PurgeRow:
    signed = by.sign(Checkpoint("kserve-canary", through, trail.hash_of(through), NOW))
    at = NOW.replace(microsecond=0)
    fields: dict[str, Any] = {
        "through_seq": through, "through_hash": trail.hash_of(through),
        "statement": signed.statement, "signature": signed.signature, "key_id": signed.key_id,
        "purged_at": at, "purged_by": "mallory", "records": through,
        "cutoff": at - timedelta(days=2557), "retention_days": 2557, "record_seq": 13,
    }  # fmt: skip
    return PurgeRow(**(fields | changes))


def _forged_purge_record(trail: Trail, row: PurgeRow) -> None:
    """The audit.purged record that would go with ``row``, appended with a correct hash."""
    forge_append(
        trail.db,
        AuditEntry(
            at=row.purged_at, actor=Actor("human", row.purged_by), action=PURGE_ACTION,
            evidence=row.evidence(),
        ),
    )  # fmt: skip


def test_records_deleted_without_a_purge_are_missing(trail: Trail) -> None:
    untriggered(
        trail.db,
        [
            ("DELETE FROM measurements WHERE audit_seq <= 5", ()),
            ("DELETE FROM audit_log WHERE seq <= 5", ()),
        ],
    )
    alone = trail.verify(checkpoints=False)
    assert alone.exit_code == 1
    assert "audit chain BROKEN at record 1: record 6: seq 1 is missing (record deleted?)" in (
        alone.output
    )
    anchored = trail.verify()
    assert anchored.exit_code == 1
    assert "TAMPERED: record 3, signed " in anchored.output
    assert "is missing from the database" in anchored.output


def test_a_purge_row_forged_with_another_key_s_checkpoint_is_tampering(trail: Trail) -> None:
    impostor = CheckpointSigner.from_pem(generate_private_key_pem())
    row = _forged_row(trail, impostor, 5)
    forge_purge(trail.db, row)
    _forged_purge_record(trail, row)
    alone = trail.verify(checkpoints=False)
    assert alone.exit_code == 0, alone.output  # the database alone holds together
    assert "purged: records up to 5 were purged on" in alone.output
    result = trail.verify()
    assert result.exit_code == 1, result.output
    assert (
        f"TAMPERED: the purge through record 5 ({format_timestamp(row.purged_at)}, by "
        f"mallory): checkpoint of record 5 is signed by {impostor.key_id}, which is not one of "
        "the pinned keys"
    ) in result.output
    assert "TAMPERED: record 3, signed " in result.output  # not excused by a forged purge


@pytest.mark.parametrize("thorough", [False, True], ids=["through_seq only", "the whole row"])
def test_a_purge_row_whose_through_seq_was_raised_is_named(trail: Trail, thorough: bool) -> None:
    _purged(trail)
    eight = trail.signed[8]
    changes = (
        "through_seq = 8, through_hash = ?, statement = ?, signature = ?, records = 8"
        if thorough
        else "through_seq = 8"
    )
    params = (eight.record_hash, eight.statement, eight.signature) if thorough else ()
    untriggered(
        trail.db,
        [
            (f"UPDATE audit_purges SET {changes}", params),
            ("DELETE FROM measurements WHERE audit_seq <= 8", ()),
            ("DELETE FROM audit_log WHERE seq <= 8", ()),
        ],
    )
    result = trail.verify()
    assert result.exit_code == 1, result.output
    if thorough:  # a row that holds together, with a real checkpoint: its chained record tells
        assert (
            "audit chain BROKEN at record 13: record 13 (audit.purged) says through_seq 5, but "
            "its purge row says 8 (purge row edited?)"
        ) in result.output
    else:
        assert (
            "audit chain BROKEN at record 8: the purge through record 8 says it removed 5 "
            "records, but records 1 to 8 are 8 (purge row edited?)"
        ) in result.output


def test_more_deleted_than_the_purge_row_says_is_caught_by_the_chain(trail: Trail) -> None:
    _purged(trail)
    untriggered(
        trail.db,
        [
            ("DELETE FROM measurements WHERE audit_seq <= 7", ()),
            ("DELETE FROM audit_log WHERE seq <= 7", ()),
        ],
    )
    result = trail.verify()
    assert result.exit_code == 1, result.output
    assert "audit chain BROKEN at record 6: record 8: seq 6 is missing (record deleted?)" in (
        result.output
    )


def test_a_record_slipped_in_below_the_purge_floor_is_named(trail: Trail) -> None:
    _purged(trail)
    untriggered(trail.db, [(
        "INSERT INTO audit_log SELECT 2, prev_hash, ?, body, recorded_at, action, actor_kind, "
        "actor_id, rollout_id, namespace, name, canary_revision, stable_revision, "
        "change_number, correlation_id FROM audit_log WHERE seq = 6",
        ("e" * 64,),
    )])  # fmt: skip
    result = trail.verify(checkpoints=False)
    assert result.exit_code == 1, result.output
    assert (
        "audit chain BROKEN at record 2: record 2 is still stored, but records up to 5 were "
        "purged on "
    ) in result.output


def test_a_deleted_purge_row_leaves_the_records_missing(trail: Trail) -> None:
    _purged(trail)
    untriggered(trail.db, [("DELETE FROM audit_purges", ())])
    result = trail.verify()
    assert result.exit_code == 1, result.output
    assert "audit chain BROKEN at record 1: record 6: seq 1 is missing" in result.output


PURGE_ATTACKS: dict[str, list[tuple[str, tuple[Any, ...]]]] = {
    "none": [],
    "purge-record-deleted": [("DELETE FROM audit_log WHERE seq = 13", ())],
    "purge-record-edited": [("UPDATE audit_log SET action = 'x.y' WHERE seq = 13", ())],
    "first-kept-record-deleted": [
        ("DELETE FROM measurements WHERE audit_seq = 6", ()),
        ("DELETE FROM audit_log WHERE seq = 6", ()),
    ],
}


@pytest.mark.parametrize("attack", PURGE_ATTACKS)
def test_workers_verify_a_purged_chain_as_one_process_does(
    pg_trail: Trail, attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _purged(pg_trail)  # records 6 to 12 kept, record 13 the audit.purged record
    untriggered(pg_trail.db, PURGE_ATTACKS[attack])
    monkeypatch.setattr(canary.audit.verify_postgres, "PARALLEL_MINIMUM", 1)
    with AuditStore.from_url(pg_trail.app_url) as store:
        alone = store.verify(batch_size=2, workers=1)
        assert alone.ok is (attack == "none"), alone
        assert store.verify(batch_size=2, workers=2) == alone
