"""Signed checkpoints of the audit chain: the chain anchored outside the database.

A hash chain inside a database proves nothing against the database's administrator: a
superuser can cut the tail, truncate the tables, or rewrite a record and recompute every
later hash, and the chain still verifies. A *checkpoint* is the statement "record ``seq`` of
the log ``log`` has the hash ``record_hash``", signed with an Ed25519 key the database never
holds, and published to witnesses outside it (the apiserver, the structured log, a file or an
object store; :mod:`canary.witness`). Whoever holds a checkpoint and the public key can tell:

* **truncation**: the witness saw record N, the database ends at M < N;
* **rewritten history**: record N's hash in the database differs from the signed one;
* **an unanchored tail**: records after the latest checkpoint are not (yet) vouched for by
  any signature: a forged record appended with a correct hash is one of them until the next
  checkpoint.

**The signed statement is a published contract**, like the record format of
:mod:`canary.audit.records`: its exact text is what the signature covers, so auditors'
tools can check it with any Ed25519 implementation. It is canonical JSON (the rules of
:func:`canary.audit.records.canonical_json`) of::

    {"at": "<UTC time of signing>", "hash": "<record_hash of record seq>",
     "log": "<the log's name>", "seq": <seq>, "type": "kserve-canary/audit-checkpoint/v1"}

A checkpoint travels as an *envelope*, a JSON object ``{"statement": "<that exact text>",
"signature": "<base64 of the 64-byte Ed25519 signature over the statement's UTF-8 bytes>",
"keyId": "<key id>"}``; the key id is ``ed25519:`` followed by the first 16 hex digits of
the SHA-256 of the raw 32-byte public key (a name for the key, never a reason to trust it:
trust comes from the public key the verifier pins).

This module is pure apart from reading key files: no database, no network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary.audit.records import canonical_json, format_timestamp, is_hash, parse_timestamp

if TYPE_CHECKING:
    from canary.audit.retention import PurgeRow

__all__ = [
    "STATEMENT_TYPE",
    "AnchorFinding",
    "AnchorReport",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSigner",
    "SignedCheckpoint",
    "TrustedKeys",
    "generate_private_key_pem",
    "judge_anchors",
    "key_id",
    "parse_envelopes",
    "public_key_pem",
]

STATEMENT_TYPE: Final = "kserve-canary/audit-checkpoint/v1"
_SIGNATURE_BYTES: Final = 64


class CheckpointError(ValueError):
    """A key or a checkpoint that cannot be read or does not hold what it must."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint states: record ``seq`` of ``log`` has hash ``record_hash``."""

    log: str
    seq: int
    record_hash: str
    at: datetime

    def __post_init__(self) -> None:
        if not self.log:
            raise CheckpointError("a checkpoint names its log")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise CheckpointError(f"a checkpoint's seq must be an integer >= 1, not {self.seq!r}")
        if not is_hash(self.record_hash):
            raise CheckpointError(
                f"a checkpoint's hash must be 64 lowercase hex digits, got {self.record_hash!r}"
            )
        format_timestamp(self.at)  # rejects naive times

    def statement(self) -> str:
        """The exact text that is signed."""
        return canonical_json(
            {
                "type": STATEMENT_TYPE,
                "log": self.log,
                "seq": self.seq,
                "hash": self.record_hash,
                "at": self.at,
            }
        )

    @classmethod
    def from_statement(cls, text: str) -> Checkpoint:
        """Read a statement; it must be exactly the canonical text of what it says."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CheckpointError(f"the statement is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError("the statement is not a JSON object")
        if data.get("type") != STATEMENT_TYPE:
            raise CheckpointError(
                f"the statement's type is {data.get('type')!r}, expected {STATEMENT_TYPE!r}"
            )
        unknown = set(data) - {"type", "log", "seq", "hash", "at"}
        if unknown:
            raise CheckpointError(f"the statement has unknown fields {sorted(unknown)}")
        missing = [key for key in ("log", "seq", "hash", "at") if key not in data]
        if missing:
            raise CheckpointError(f"the statement has no {missing[0]!r}")
        try:
            at = parse_timestamp(str(data["at"]))
        except ValueError as exc:
            raise CheckpointError(f"the statement's time is unreadable: {exc}") from None
        checkpoint = cls(
            log=str(data["log"]), seq=data["seq"], record_hash=str(data["hash"]), at=at
        )
        if checkpoint.statement() != text:
            raise CheckpointError("the statement is not in canonical form")
        return checkpoint


class _Envelope(BaseModel):
    """A checkpoint as published and exported (external input when read back)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    statement: str = Field(min_length=2, max_length=4096)
    signature: str = Field(min_length=1, max_length=256)
    key_id: str = Field(alias="keyId", min_length=1, max_length=128)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with its exact statement text, signature and the signing key's id.

    Constructing one checks the form only (the statement reads back as ``checkpoint``, the
    signature is 64 bytes of base64); :meth:`TrustedKeys.verify` checks the signature."""

    checkpoint: Checkpoint
    statement: str
    signature: str  # base64
    key_id: str

    def __post_init__(self) -> None:
        if Checkpoint.from_statement(self.statement) != self.checkpoint:
            raise CheckpointError("the statement does not say what the checkpoint says")
        _signature_bytes(self.signature)

    @property
    def seq(self) -> int:
        return self.checkpoint.seq

    @property
    def record_hash(self) -> str:
        return self.checkpoint.record_hash

    def envelope(self) -> dict[str, str]:
        return {"statement": self.statement, "signature": self.signature, "keyId": self.key_id}

    def to_json(self) -> str:
        """The envelope as one line of canonical JSON."""
        return canonical_json(self.envelope())

    @classmethod
    def from_envelope(cls, data: Mapping[str, Any]) -> SignedCheckpoint:
        try:
            envelope = _Envelope.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'envelope'}: {e['msg']}"
                for e in exc.errors()
            )
            raise CheckpointError(f"not a checkpoint envelope: {problems}") from None
        return cls(
            checkpoint=Checkpoint.from_statement(envelope.statement),
            statement=envelope.statement,
            signature=envelope.signature,
            key_id=envelope.key_id,
        )

    @classmethod
    def from_json(cls, text: str) -> SignedCheckpoint:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CheckpointError(f"a checkpoint is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError("a checkpoint is a JSON object")
        return cls.from_envelope(data)


def parse_envelopes(text: str, *, source: str) -> list[SignedCheckpoint]:
    """Checkpoints from an exported file: one envelope (a JSON object), a JSON array of
    them, or one per line (JSON Lines). Errors name the source and the item or line."""
    stripped = text.strip()
    if not stripped:
        raise CheckpointError(f"{source}: no checkpoint in it")
    try:
        whole: Any = json.loads(stripped)
    except ValueError:
        whole = None  # JSON Lines, or not JSON at all: read line by line
    if isinstance(whole, dict):
        whole = [whole]
    if isinstance(whole, list):
        out = []
        for index, item in enumerate(whole):
            if not isinstance(item, dict):
                raise CheckpointError(f"{source}: item {index} is not a JSON object")
            try:
                out.append(SignedCheckpoint.from_envelope(item))
            except CheckpointError as exc:
                raise CheckpointError(f"{source}: item {index}: {exc}") from None
        if not out:
            raise CheckpointError(f"{source}: no checkpoint in it")
        return out
    if whole is not None:
        raise CheckpointError(f"{source}: expected checkpoint envelopes, found {whole!r:.40}")
    out = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(SignedCheckpoint.from_json(line))
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: line {number}: {exc}") from None
    return out


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """``ed25519:`` + the first 16 hex digits of SHA-256 over the raw public key."""
    return "ed25519:" + hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def _signature_bytes(signature: str) -> bytes:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("the signature is not base64") from None
    if len(raw) != _SIGNATURE_BYTES:
        raise CheckpointError(
            f"the signature is {len(raw)} bytes, an Ed25519 signature is {_SIGNATURE_BYTES}"
        )
    return raw


def generate_private_key_pem() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (what ``openssl genpkey
    -algorithm ed25519`` writes)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 private key.

    The shipped signer holds the key in memory, read from a file (a Kubernetes Secret
    mounted into the pod). A KMS or HSM signer implements the same two members, ``key_id``
    and :meth:`sign`, by calling the key service's sign operation; see docs/AUDIT.md."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "the signing key") -> CheckpointSigner:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CheckpointError(
                f"{source} is not an unencrypted PEM private key ({exc}); create one with "
                "`canary audit keygen` or `openssl genpkey -algorithm ed25519`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(
                f"{source} is a {type(key).__name__.removeprefix('_')}, not an Ed25519 key"
            )
        return cls(key)

    @classmethod
    def from_file(cls, path: Path) -> CheckpointSigner:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read the signing key {path}: {exc.strerror}") from None
        return cls.from_pem(data, source=f"the signing key {path}")

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        statement = checkpoint.statement()
        signature = self._key.sign(statement.encode("utf-8"))
        return SignedCheckpoint(
            checkpoint=checkpoint,
            statement=statement,
            signature=base64.b64encode(signature).decode("ascii"),
            key_id=self.key_id,
        )


class TrustedKeys:
    """The public keys a verifier pins (read from files the auditor holds, never from the
    witness that carries the checkpoints)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(key): key for key in keys}
        if not self._keys:
            raise CheckpointError("no public key given to check checkpoints with")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    @property
    def keys(self) -> tuple[Ed25519PublicKey, ...]:
        return tuple(self._keys[k] for k in self.ids)

    @classmethod
    def from_pem(cls, blobs: Sequence[tuple[str, bytes]]) -> TrustedKeys:
        """Keys from PEM texts, each ``(source, data)``: public keys (SubjectPublicKeyInfo),
        or private keys, whose public half is used."""
        keys: list[Ed25519PublicKey] = []
        for source, data in blobs:
            if b"PRIVATE KEY" in data:
                keys.append(CheckpointSigner.from_pem(data, source=source).public_key)
                continue
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise CheckpointError(f"{source} is not a PEM public key ({exc})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise CheckpointError(f"{source} is not an Ed25519 public key")
            keys.append(key)
        return cls(keys)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> TrustedKeys:
        blobs = []
        for path in paths:
            try:
                blobs.append((str(path), path.read_bytes()))
            except OSError as exc:
                raise CheckpointError(f"cannot read the key {path}: {exc.strerror}") from None
        return cls.from_pem(blobs)

    def problem(self, signed: SignedCheckpoint) -> str | None:
        """Why ``signed`` is not to be trusted, or None when a pinned key signed it."""
        key = self._keys.get(signed.key_id)
        if key is None:
            return (
                f"checkpoint of record {signed.seq} is signed by {signed.key_id}, which is not "
                f"one of the pinned keys ({', '.join(self.ids)})"
            )
        try:
            key.verify(_signature_bytes(signed.signature), signed.statement.encode("utf-8"))
        except (InvalidSignature, CheckpointError):
            return (
                f"checkpoint of record {signed.seq}: the signature does not verify with "
                f"{signed.key_id} (forged or altered)"
            )
        return None


# --------------------------------------------------------------------------------------------
# judging a database against checkpoints
# --------------------------------------------------------------------------------------------

FindingKind = Literal[
    "truncated", "rewritten", "unsigned", "other_log", "purge", "purged", "unanchored"
]
_NOT_TAMPERING: Final = frozenset({"purged", "unanchored"})


@dataclass(frozen=True, slots=True)
class AnchorFinding:
    """One thing the checkpoints say about the database. Every kind but ``purged`` (records
    removed by a purge a signed checkpoint vouches for) and ``unanchored`` means the database
    does not hold the history that was signed."""

    kind: FindingKind
    seq: int | None
    message: str

    @property
    def tampered(self) -> bool:
        return self.kind not in _NOT_TAMPERING


@dataclass(frozen=True, slots=True)
class AnchorReport:
    """The database's chain against the trusted checkpoints.

    ``anchored_seq`` is the highest record vouched for by a valid checkpoint that the
    database agrees with (0 when none); ``head_seq`` the database's last record;
    ``purged_through`` the last record removed by a purge whose checkpoint a pinned key
    signed (0 when none: then a missing record 1 is missing)."""

    log: str
    head_seq: int
    anchored_seq: int
    anchored_at: datetime | None
    key_id: str | None
    checkpoints: int
    findings: tuple[AnchorFinding, ...]
    purged_through: int = 0

    @property
    def tampered(self) -> bool:
        return any(f.tampered for f in self.findings)

    @property
    def unanchored(self) -> int:
        return max(self.head_seq - self.anchored_seq, 0) if not self.tampered else 0


def _purge_problem(row: PurgeRow, keys: TrustedKeys, log: str) -> str | None:
    """Why the purge ``row`` is not vouched for by its checkpoint, or None."""
    where = (
        f"the purge through record {row.through_seq} ({format_timestamp(row.purged_at)}, by "
        f"{row.purged_by})"
    )
    try:
        signed = row.signed()
    except CheckpointError as exc:
        return f"{where} carries an unreadable checkpoint: {exc}"
    problem = keys.problem(signed)
    if problem is not None:
        return f"{where}: {problem}"
    if signed.checkpoint.log != log:
        return (
            f"{where}: its checkpoint is for the log {signed.checkpoint.log!r}, this database "
            f"is {log!r}"
        )
    if signed.seq != row.through_seq or signed.record_hash != row.through_hash:
        return (
            f"{where} says record {row.through_seq} had the hash {row.through_hash}, but its "
            f"signed checkpoint says record {signed.seq} had {signed.record_hash}"
        )
    return None


def judge_anchors(
    checkpoints: Sequence[SignedCheckpoint],
    *,
    keys: TrustedKeys,
    log: str,
    head_seq: int,
    hashes: Mapping[int, str],
    purges: Sequence[PurgeRow] = (),
) -> AnchorReport:
    """Compare the database with ``checkpoints`` (pure).

    ``head_seq`` is the database's highest record (0 when empty) and ``hashes`` the stored
    ``record_hash`` of each checkpointed seq the database holds. Findings, in seq order:
    a purge whose checkpoint is not signed by a pinned key or does not state the purge's
    last record and hash (``purge``), a checkpoint not signed by a pinned key (``unsigned``:
    a forged or altered checkpoint), one of another log (``other_log``), one beyond the
    database's end (``truncated``), one whose hash differs (``rewritten``), and finally what
    is not tampering: the records purged under a vouched-for purge (``purged``; the
    checkpoints below it are not missing records), and the records after the highest valid
    checkpoint (``unanchored``).

    ``purges`` are the ``audit_purges`` rows. The highest one whose checkpoint holds is the
    floor: its checkpoint anchors the chain at its ``through_seq``, whose hash is the row's
    (the record itself is gone), and checkpoints below it are purged by design.
    """
    findings: list[AnchorFinding] = []
    floor: PurgeRow | None = None
    for row in sorted(purges, key=lambda r: r.through_seq):
        problem = _purge_problem(row, keys, log)
        if problem is not None:
            findings.append(AnchorFinding("purge", row.through_seq, problem))
        elif floor is None or row.through_seq > floor.through_seq:
            floor = row
    floor_seq = 0 if floor is None else floor.through_seq
    anchored = 0
    anchored_at: datetime | None = None
    anchored_key: str | None = None
    if floor is not None:
        vouching = floor.signed()
        anchored, anchored_at, anchored_key = floor_seq, vouching.checkpoint.at, vouching.key_id
    valid: list[SignedCheckpoint] = []
    for signed in sorted(checkpoints, key=lambda c: c.seq):
        problem = keys.problem(signed)
        if problem is not None:
            findings.append(AnchorFinding("unsigned", signed.seq, problem))
            continue
        if signed.checkpoint.log != log:
            findings.append(
                AnchorFinding(
                    "other_log",
                    signed.seq,
                    f"checkpoint of record {signed.seq} is for the log "
                    f"{signed.checkpoint.log!r}, this database is {log!r}",
                )
            )
            continue
        valid.append(signed)
    truncated = [c for c in valid if c.seq > head_seq]
    if truncated:
        highest = truncated[-1]
        findings.append(
            AnchorFinding(
                "truncated",
                highest.seq,
                f"truncated: the witness saw record {highest.seq}; the database ends at "
                f"{head_seq} (checkpoint signed {format_timestamp(highest.checkpoint.at)})",
            )
        )
    purged = 0
    for signed in valid:
        if signed.seq > head_seq:
            continue
        if signed.seq < floor_seq:
            purged += 1
            continue
        if floor is not None and signed.seq == floor_seq:
            stored: str | None = floor.through_hash  # the record is gone; its row says
        else:
            stored = hashes.get(signed.seq)
        if stored is None:
            findings.append(
                AnchorFinding(
                    "truncated",
                    signed.seq,
                    f"record {signed.seq}, signed {format_timestamp(signed.checkpoint.at)}, "
                    "is missing from the database",
                )
            )
        elif stored != signed.record_hash:
            findings.append(
                AnchorFinding(
                    "rewritten",
                    signed.seq,
                    f"rewritten history: the signed hash of record {signed.seq} is "
                    f"{signed.record_hash}, the database has {stored}",
                )
            )
        elif signed.seq >= anchored:
            anchored = signed.seq
            anchored_at = signed.checkpoint.at
            anchored_key = signed.key_id
    tampered = any(f.tampered for f in findings)
    if floor is not None:
        vouching = floor.signed()
        below = {0: "", 1: "; 1 checkpoint given is of a purged record"}.get(
            purged, f"; {purged} checkpoints given are of purged records"
        )
        findings.append(
            AnchorFinding(
                "purged",
                floor_seq,
                f"purged through record {floor_seq} on {format_timestamp(floor.purged_at)} by "
                f"{floor.purged_by} (retention {floor.retention_days} days, cutoff "
                f"{format_timestamp(floor.cutoff)}), vouched for by the checkpoint signed "
                f"{format_timestamp(vouching.checkpoint.at)} by {vouching.key_id}{below}",
            )
        )
    if not tampered and head_seq > anchored:
        first = anchored + 1
        span = f"record {first}" if first == head_seq else f"records {first} to {head_seq}"
        findings.append(
            AnchorFinding(
                "unanchored",
                first,
                f"{span} ({head_seq - anchored}) not yet anchored by a signed checkpoint "
                "(written after the latest checkpoint, or appended by someone else)",
            )
        )
    return AnchorReport(
        log=log,
        head_seq=head_seq,
        anchored_seq=anchored,
        anchored_at=anchored_at,
        key_id=anchored_key,
        checkpoints=len(checkpoints),
        findings=tuple(findings),
        purged_through=floor_seq,
    )
