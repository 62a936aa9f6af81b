"""The four things a database superuser can do to the audit trail, each caught by `canary
audit verify` against the signed checkpoints a witness kept, on PostgreSQL (as a superuser,
triggers bypassed) and on SQLite; and each invisible without them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from canary.audit import Actor, AuditEntry, AuditStore, Fence, ObjectRef, upgrade_to_head
from canary.audit.checkpoint import CheckpointSigner, generate_private_key_pem, public_key_pem
from canary.checkpointer import Checkpointer
from canary.cli import main as canary
from canary.witness import FileWitness
from tests.conftest import Database
from tests.tampering import cut_tail, forge_append, rewrite_record, truncate_all

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 20, 2, 14, tzinfo=UTC)
FENCE = Fence("kserve-canary-leader", "controller-0", 1)


@dataclass
class Trail:
    db: Database
    witness: Path
    public_key: Path

    def verify(self, *extra: str, checkpoints: bool = True) -> Result:
        args = ["audit", "verify", "--database-url", self.db.url]
        if checkpoints:
            args += ["--checkpoint", str(self.witness), "--public-key", str(self.public_key)]
        return CliRunner().invoke(canary, [*args, *extra])


def _entry(i: int, *, approver: str | None = None) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=i),
        actor=Actor("controller", "controller-0"),
        action="approval.verified" if approver else "analysis.evaluated",
        rollout_id="ro-credit-1",
        obj=ObjectRef("credit", "decisioning"),
        approver=approver,
        change_number="CHG0031337" if approver else None,
        reason=f"record {i}",
    )


@pytest.fixture
def trail(db: Database, tmp_path: Path) -> Trail:
    """Ten records; the controller checkpointed the first eight (records 9 and 10 came
    after the latest checkpoint, as they do in a running system)."""
    key = tmp_path / "signing.pem"
    key.write_bytes(generate_private_key_pem())
    signer = CheckpointSigner.from_file(key)
    public = tmp_path / "signing.pub"
    public.write_bytes(public_key_pem(signer.public_key))
    witness = tmp_path / "witness.jsonl"
    with AuditStore.from_url(db.url) as store:
        store.append([_entry(i, approver="risk-owner-alice" if i == 3 else None) for i in range(8)])
        checkpointer = Checkpointer(
            store=store,
            signer=signer,
            witnesses=[FileWitness(witness)],
            log_name="kserve-canary",
            leadership=lambda: FENCE,
            clock=lambda: T0 + timedelta(minutes=1),
        )
        assert checkpointer.run_once().outcome == "signed"
        store.append([_entry(i) for i in range(8, 10)])
    return Trail(db, witness, public)


def test_an_untouched_trail_is_anchored_and_its_tail_reported(trail: Trail) -> None:
    result = trail.verify()
    assert result.exit_code == 0, result.output
    assert "audit chain intact: 10 records, head record 10" in result.output
    assert "anchored: record 8 matches the checkpoint signed 2026-11-20T02:15:00" in result.output
    assert "warning: records 9 to 10 (2) not yet anchored" in result.output
    strict = trail.verify("--require-anchored")
    assert strict.exit_code == 1


def test_without_checkpoints_verify_says_it_cannot_tell(trail: Trail) -> None:
    result = trail.verify(checkpoints=False)
    assert result.exit_code == 0
    assert "not anchored: no signed checkpoint given" in result.output


Attack = Callable[[Database], object]
ATTACKS: dict[str, tuple[Attack, str]] = {
    "tail deleted": (
        lambda db: cut_tail(db, 5),
        "TAMPERED: truncated: the witness saw record 8; the database ends at 5",
    ),
    "tables truncated": (
        truncate_all,
        "TAMPERED: truncated: the witness saw record 8; the database ends at 0",
    ),
    "record rewritten, later hashes recomputed": (
        lambda db: rewrite_record(db, 4, lambda body: body.update(approver="someone-else")),
        "TAMPERED: rewritten history: the signed hash of record 8 is",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_lost_or_rewritten_history_is_tampering(trail: Trail, attack: str) -> None:
    tamper, message = ATTACKS[attack]
    tamper(trail.db)
    blind = trail.verify(checkpoints=False)
    assert blind.exit_code == 0, "the attack leaves the chain inside the database valid"
    result = trail.verify()
    assert result.exit_code == 1, result.output
    assert message in result.output
    as_json = json.loads(trail.verify("--json").stdout)
    assert as_json["anchors"]["tampered"] is True
    assert as_json["chain"]["ok"] is True


def test_a_forged_record_appended_with_a_correct_hash_is_not_anchored(trail: Trail) -> None:
    forged = forge_append(trail.db, _entry(42, approver="an-impostor"))
    assert forged == 11
    blind = trail.verify(checkpoints=False)
    assert blind.exit_code == 0
    assert "11 records" in blind.output
    result = trail.verify()
    assert result.exit_code == 0
    assert "warning: records 9 to 11 (3) not yet anchored" in result.output
    assert trail.verify("--require-anchored").exit_code == 1


def test_incremental_verification_starts_at_the_latest_checkpoint(trail: Trail) -> None:
    result = trail.verify("--since-checkpoint")
    assert result.exit_code == 0, result.output
    assert "audit chain intact after checkpoint 8: 2 records, head record 10" in result.output


def test_a_checkpoint_signed_by_another_key_is_tampering(trail: Trail, tmp_path: Path) -> None:
    impostor = CheckpointSigner.from_pem(generate_private_key_pem())
    rewrite_record(trail.db, 4, lambda body: body.update(approver="someone-else"))
    with AuditStore.from_url(trail.db.url) as store:
        seq, record_hash = store.head()
    from canary.audit.checkpoint import Checkpoint

    forged = impostor.sign(Checkpoint("kserve-canary", seq, record_hash, T0))
    fake = tmp_path / "fake.jsonl"
    fake.write_text(forged.to_json() + "\n")
    result = CliRunner().invoke(
        canary,
        ["audit", "verify", "--database-url", trail.db.url, "--checkpoint", str(fake),
         "--public-key", str(trail.public_key)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"signed by {impostor.key_id}, which is not one of the pinned keys" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "WITNESS"], "pass --public-key"),
        (["--checkpoint", "MISSING", "--public-key", "KEY"], "cannot read"),
        (["--checkpoint", "KEY", "--public-key", "KEY"], "line 1"),
        (["--checkpoint", "WITNESS", "--public-key", "WITNESS"], "not a PEM public key"),
    ],
)
def test_bad_checkpoint_or_key_files_are_invalid_input(
    trail: Trail, args: list[str], message: str
) -> None:
    paths = {"WITNESS": str(trail.witness), "KEY": str(trail.public_key), "MISSING": "/nonexistent"}
    result = CliRunner().invoke(
        canary,
        ["audit", "verify", "--database-url", trail.db.url, *(paths.get(a, a) for a in args)],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_database_copy_of_the_checkpoints_can_be_exported(trail: Trail, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    result = CliRunner().invoke(
        canary, ["audit", "checkpoints", "--database-url", trail.db.url, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == trail.witness.read_text()


def test_keygen_writes_a_private_key_once_and_prints_the_public_key(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    public = tmp_path / "k.pub"
    result = CliRunner().invoke(
        canary, ["audit", "keygen", "-o", str(key), "--public-output", str(public)]
    )
    assert result.exit_code == 0, result.output
    assert key.stat().st_mode & 0o777 == 0o600
    signer = CheckpointSigner.from_file(key)
    assert public.read_bytes() == public_key_pem(signer.public_key)
    assert signer.key_id in result.output
    again = CliRunner().invoke(canary, ["audit", "keygen", "-o", str(key)])
    assert again.exit_code == 2
    assert "not overwriting" in again.output


def test_migrated_database_starts_without_checkpoints(empty_db: Database) -> None:
    upgrade_to_head(empty_db.url)
    with AuditStore.from_url(empty_db.url) as store:
        assert store.latest_checkpoint() is None
        assert store.checkpoints() == []


def test_an_edited_command_row_is_tampering_named_by_verify(trail: Trail) -> None:
    from canary.audit import CommandRow

    with AuditStore.from_url(trail.db.url) as store:
        store.submit_command(
            CommandRow(
                id="cmd-1", namespace="credit", name="decisioning", command="pause",
                actor="ops-bob", reason="INC-7 investigate", args={},
                requested_at=T0 + timedelta(minutes=2),
            )
        )  # fmt: skip
    clean = trail.verify()
    assert clean.exit_code == 0, clean.output
    assert "tables: commands, approvals and webhook deliveries agree with the chain" in (
        clean.output
    )
    trail.db.query("UPDATE commands SET reason = 'routine check' WHERE id = 'cmd-1'")
    result = trail.verify()
    assert result.exit_code == 1, result.output
    assert "TAMPERED: commands cmd-1:" in result.output
    assert "routine check" in result.output
