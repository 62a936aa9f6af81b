"""Signed checkpoints: the statement, signatures, envelopes, and judging a database by them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.audit.checkpoint import (
    STATEMENT_TYPE,
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    SignedCheckpoint,
    TrustedKeys,
    generate_private_key_pem,
    judge_anchors,
    parse_envelopes,
    public_key_pem,
)
from canary.audit.records import compute_record_hash

T0 = datetime(2026, 11, 20, 2, 14, tzinfo=UTC)
LOG = "kserve-canary"


def h(n: int) -> str:
    return compute_record_hash("0" * 64, f"record {n}")


@pytest.fixture(scope="module")
def signer() -> CheckpointSigner:
    return CheckpointSigner.from_pem(generate_private_key_pem())


@pytest.fixture(scope="module")
def other() -> CheckpointSigner:
    return CheckpointSigner.from_pem(generate_private_key_pem())


def keys_of(*signers: CheckpointSigner) -> TrustedKeys:
    return TrustedKeys.from_pem([(s.key_id, public_key_pem(s.public_key)) for s in signers])


def cp(seq: int, *, log: str = LOG, record_hash: str | None = None) -> Checkpoint:
    return Checkpoint(log, seq, record_hash or h(seq), T0)


# --------------------------------------------------------------------------------------------
# the statement
# --------------------------------------------------------------------------------------------


def test_the_statement_is_canonical_json_of_what_it_says() -> None:
    statement = cp(7).statement()
    assert statement == (
        '{"at":"2026-11-20T02:14:00.000000Z","hash":"' + h(7) + '","log":"kserve-canary",'
        '"seq":7,"type":"' + STATEMENT_TYPE + '"}'
    )
    assert Checkpoint.from_statement(statement) == cp(7)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"type":"other/v1"}', "type is 'other/v1'"),
        (cp(1).statement().replace('"seq":1', '"seq":1,"extra":2'), "unknown fields"),
        (cp(1).statement().replace('"seq":1', '"seq":0'), "integer >= 1"),
        (cp(1).statement().replace('"seq":1', '"seq":true'), "integer >= 1"),
        (cp(1).statement().replace(h(1), "ABC"), "64 lowercase hex"),
        (cp(1).statement().replace(".000000Z", "+00:00"), "time is unreadable"),
        (json.dumps(json.loads(cp(1).statement()), indent=1), "not in canonical form"),
        ('{"type":"' + STATEMENT_TYPE + '","log":"x","seq":1,"at":"x"}', "no 'hash'"),
    ],
)
def test_an_unreadable_or_non_canonical_statement_is_refused(text: str, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        Checkpoint.from_statement(text)


def test_a_naive_time_cannot_be_checkpointed() -> None:
    with pytest.raises(ValueError, match="naive"):
        Checkpoint(LOG, 1, h(1), datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


# --------------------------------------------------------------------------------------------
# signatures
# --------------------------------------------------------------------------------------------


def test_a_signed_checkpoint_verifies_with_the_signers_public_key(
    signer: CheckpointSigner,
) -> None:
    signed = signer.sign(cp(3))
    assert signed.key_id == signer.key_id
    assert signed.key_id.startswith("ed25519:")
    assert len(signed.key_id) == len("ed25519:") + 16
    assert keys_of(signer).problem(signed) is None
    again = SignedCheckpoint.from_json(signed.to_json())
    assert again == signed
    assert keys_of(signer).problem(again) is None


def test_a_signature_by_another_key_is_named(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    problem = keys_of(signer).problem(other.sign(cp(3)))
    assert problem is not None
    assert "not one of the pinned keys" in problem


def test_a_forged_signature_under_a_pinned_key_id_is_caught(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    forged = other.sign(cp(3))
    claimed = SignedCheckpoint(forged.checkpoint, forged.statement, forged.signature, signer.key_id)
    problem = keys_of(signer).problem(claimed)
    assert problem is not None
    assert "does not verify" in problem


def test_an_altered_statement_no_longer_verifies(signer: CheckpointSigner) -> None:
    signed = signer.sign(cp(3))
    altered = SignedCheckpoint(
        cp(3, record_hash=h(99)), cp(3, record_hash=h(99)).statement(), signed.signature,
        signed.key_id,
    )  # fmt: skip
    problem = keys_of(signer).problem(altered)
    assert problem is not None
    assert "does not verify" in problem


def test_a_statement_that_disagrees_with_the_checkpoint_is_refused(
    signer: CheckpointSigner,
) -> None:
    signed = signer.sign(cp(3))
    with pytest.raises(CheckpointError, match="does not say"):
        SignedCheckpoint(cp(4), signed.statement, signed.signature, signed.key_id)


@pytest.mark.parametrize(
    ("signature", "problem"),
    [("%%%", "not base64"), (base64.b64encode(b"x" * 63).decode(), "63 bytes")],
)
def test_a_malformed_signature_is_refused(
    signer: CheckpointSigner, signature: str, problem: str
) -> None:
    signed = signer.sign(cp(3))
    with pytest.raises(CheckpointError, match=problem):
        SignedCheckpoint(signed.checkpoint, signed.statement, signature, signed.key_id)


def test_keys_are_read_from_pem_files_and_refused_when_not_ed25519(tmp_path: Path) -> None:
    private = tmp_path / "key.pem"
    private.write_bytes(generate_private_key_pem())
    signer = CheckpointSigner.from_file(private)
    public = tmp_path / "key.pub"
    public.write_bytes(public_key_pem(signer.public_key))
    assert TrustedKeys.from_files([public]).ids == (signer.key_id,)
    assert TrustedKeys.from_files([private]).ids == (signer.key_id,)  # its public half
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(CheckpointError, match="not a PEM public key"):
        TrustedKeys.from_files([garbage])
    with pytest.raises(CheckpointError, match="cannot read the key"):
        TrustedKeys.from_files([tmp_path / "missing.pem"])
    with pytest.raises(CheckpointError, match="cannot read the signing key"):
        CheckpointSigner.from_file(tmp_path / "missing.pem")
    with pytest.raises(CheckpointError, match="not an unencrypted PEM private key"):
        CheckpointSigner.from_pem(b"secret")
    with pytest.raises(CheckpointError, match="no public key"):
        TrustedKeys([])


def test_an_rsa_key_is_not_an_ed25519_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CheckpointError, match="not an Ed25519 key"):
        CheckpointSigner.from_pem(pem)


def test_the_key_id_names_the_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    assert CheckpointSigner(key).key_id == CheckpointSigner(key).key_id
    assert CheckpointSigner(key).key_id != CheckpointSigner(Ed25519PrivateKey.generate()).key_id


# --------------------------------------------------------------------------------------------
# envelopes in files
# --------------------------------------------------------------------------------------------


def test_envelopes_are_read_as_one_object_an_array_or_json_lines(
    signer: CheckpointSigner,
) -> None:
    a, b = signer.sign(cp(1)), signer.sign(cp(2))
    assert parse_envelopes(json.dumps(a.envelope(), indent=2), source="f") == [a]
    assert parse_envelopes(json.dumps([a.envelope(), b.envelope()]), source="f") == [a, b]
    assert parse_envelopes(f"{a.to_json()}\n\n{b.to_json()}\n", source="f") == [a, b]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "f: no checkpoint"),
        ("[]", "f: no checkpoint"),
        ("42", "expected checkpoint envelopes"),
        ("[1]", "item 0 is not a JSON object"),
        ('{"statement":"x"}', "signature: Field required"),
        ('{"ok":1}\n{"ok":2}', "line 1: not a checkpoint envelope"),
        ("{oops\n{", "line 1: a checkpoint is not JSON"),
    ],
)
def test_an_unreadable_checkpoint_file_is_named_with_its_place(text: str, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        parse_envelopes(text, source="f")


# --------------------------------------------------------------------------------------------
# judging a database
# --------------------------------------------------------------------------------------------


def test_a_database_that_holds_what_was_signed_is_anchored(signer: CheckpointSigner) -> None:
    report = judge_anchors(
        [signer.sign(cp(5)), signer.sign(cp(9))],
        keys=keys_of(signer), log=LOG, head_seq=9, hashes={5: h(5), 9: h(9)},
    )  # fmt: skip
    assert not report.tampered
    assert report.findings == ()
    assert (report.anchored_seq, report.unanchored, report.key_id) == (9, 0, signer.key_id)


@pytest.mark.parametrize(
    ("head", "hashes", "kinds", "message"),
    [
        # the tail after record 6 was cut
        (6, {5: h(5)}, ["truncated"], "the witness saw record 9; the database ends at 6"),
        # every table truncated
        (0, {}, ["truncated"], "the witness saw record 9; the database ends at 0"),
        # record 3 rewritten and every later hash recomputed: both checkpoints disagree
        (9, {5: h(105), 9: h(109)}, ["rewritten", "rewritten"], "signed hash of record 5"),
        # a record below a checkpoint deleted and the rest renumbered
        (9, {5: h(5)}, ["truncated"], "record 9, signed"),
    ],
)
def test_lost_or_rewritten_history_is_named(
    signer: CheckpointSigner, head: int, hashes: dict[int, str], kinds: list[str], message: str
) -> None:
    report = judge_anchors(
        [signer.sign(cp(5)), signer.sign(cp(9))],
        keys=keys_of(signer), log=LOG, head_seq=head, hashes=hashes,
    )  # fmt: skip
    assert report.tampered
    assert [f.kind for f in report.findings] == kinds
    assert message in report.findings[0].message
    assert report.unanchored == 0


def test_records_after_the_latest_checkpoint_are_reported_not_yet_anchored(
    signer: CheckpointSigner,
) -> None:
    report = judge_anchors(
        [signer.sign(cp(5))], keys=keys_of(signer), log=LOG, head_seq=8, hashes={5: h(5)}
    )
    assert not report.tampered
    assert report.unanchored == 3
    assert [f.kind for f in report.findings] == ["unanchored"]
    assert "records 6 to 8 (3) not yet anchored" in report.findings[0].message
    one = judge_anchors(
        [signer.sign(cp(5))], keys=keys_of(signer), log=LOG, head_seq=6, hashes={5: h(5)}
    )
    assert "record 6 (1) not yet anchored" in one.findings[0].message


def test_a_checkpoint_not_signed_by_a_pinned_key_is_tampering(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    report = judge_anchors(
        [signer.sign(cp(5)), other.sign(cp(9, record_hash=h(99)))],
        keys=keys_of(signer), log=LOG, head_seq=9, hashes={5: h(5), 9: h(9)},
    )  # fmt: skip
    assert report.tampered
    assert [f.kind for f in report.findings] == ["unsigned"]
    assert report.anchored_seq == 5  # the valid one still anchors


def test_a_checkpoint_of_another_log_never_vouches_for_this_one(signer: CheckpointSigner) -> None:
    report = judge_anchors(
        [signer.sign(cp(5, log="staging"))],
        keys=keys_of(signer), log=LOG, head_seq=5, hashes={5: h(5)},
    )  # fmt: skip
    assert [f.kind for f in report.findings] == ["other_log"]
    assert "for the log 'staging', this database is 'kserve-canary'" in report.findings[0].message
