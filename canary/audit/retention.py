"""Retention of the audit trail: what a purge may remove, and how the chain stays verifiable.

There is no delete API. The controller never deletes anything; the ``audit_retention_days``
setting (default 2557, seven years; at least 31; below 761, Reg B's 25 months, the controller
warns at start) only says what an explicit, audited purge may remove. ``canary audit purge``,
run by a person as the database's owner role, is that purge:

1. **Where it ends.** The cutoff is *now − retention*. The purge ends at the highest record N
   such that every record still held up to N was recorded before the cutoff *and* a
   checkpoint signed by a pinned key vouches for record N's hash (:func:`plan_purge`). Ending
   exactly on a signed checkpoint is what keeps the chain verifiable: the first record kept,
   N+1, links to N's hash, and a signature the database cannot forge says that hash is the
   one the controller saw. Anyone can then check where the surviving chain starts.
2. **Only an intact chain is purged.** The whole chain is verified first, against the
   checkpoints given; a broken chain, or one the checkpoints contradict, is never purged (the
   evidence of the break would go with it).
3. **One transaction**, as the owner role (the application role has no DELETE privilege at
   all): a chained ``audit.purged`` record is appended (so the purge is itself in the
   trail, anchored by the next checkpoints), a row is added to ``audit_purges`` (N, its hash,
   the checkpoint's envelope, when, which role, how many records, the cutoff and the
   retention), and the ``measurements`` and ``audit_log`` rows up to N are deleted. The
   append-only triggers let exactly those deletions through, because the new row raises the
   floor they allow (migration 0008); no trigger is disabled.

**The actor.** The ``audit.purged`` record's actor is ``human`` with the identity the
database authenticated: on PostgreSQL the role the purge ran as (``current_user``), on
SQLite the operating-system user that owns the process (SQLite has no roles; file
permissions are its access control). A purge is never automatic, so ``controller`` would be
false; ``unknown`` would hide that a person chose to do it; and the identity is the one the
database checked, never a name typed on the command line (a ``--reason`` is kept apart, in
the record's reason).

**Verification after a purge** (:mod:`canary.audit.verify`, :func:`judge_anchors
<canary.audit.checkpoint.judge_anchors>`): the chain is checked from the latest purge's
``through_seq + 1`` with ``prev_hash`` equal to its ``through_hash``, not from record 1. What
the purge row says must hold together: each row's records count, its chained ``audit.purged``
record while that record is kept (same N, hash, checkpoint, cutoff, retention, role, time),
and every ``audit.purged`` record has its row. Against the pinned keys, the row's checkpoint
must be signed by one of them and state exactly N and that hash; otherwise it is tampering.
Checkpoints below the floor are reported as purged (by whom, when), not as truncation. An
attacker who deletes records without a row, forges a row with a checkpoint of another key,
or raises ``through_seq`` in a row, is named; so is a purge that deleted more than its row
says (the chain no longer links to ``through_hash``).

**What it cannot tell.** Whether the records a purge removed were really older than its
cutoff: they are gone, and a checkpoint's signing time bounds them only from above. The
retention and cutoff each purge used are stated in its chained record, for an auditor to
hold against the firm's policy. A superuser can do anything to the database, a purge
included; the signed checkpoints make any other removal visible, and the chained record
makes a purge visible until a later purge removes it (its row stays).

This module is pure: no database, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from canary.audit.checkpoint import SignedCheckpoint, TrustedKeys
from canary.audit.errors import PurgeRefused
from canary.audit.records import (
    JSON,
    Actor,
    AuditEntry,
    AuditRecord,
    format_timestamp,
    is_hash,
    normalise,
)

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "MIN_RETENTION_DAYS",
    "PURGE_ACTION",
    "REG_B_RETENTION_DAYS",
    "PurgeDone",
    "PurgePlan",
    "PurgeRow",
    "PurgeScope",
    "plan_purge",
    "purge_entry",
    "purge_record_problem",
    "purge_rows_problem",
    "retention_cutoff",
    "retention_warning",
    "span",
]

DEFAULT_RETENTION_DAYS: Final = 2557  # seven years, what firms often choose
MIN_RETENTION_DAYS: Final = 31  # no purge of the last month, whatever the setting
REG_B_RETENTION_DAYS: Final = 761  # Regulation B keeps credit records 25 months
PURGE_ACTION: Final = "audit.purged"


def span(first: int, last: int) -> str:
    """``record 7`` or ``records 7 to 9``."""
    return f"record {first}" if first == last else f"records {first} to {last}"


def retention_cutoff(now: datetime, retention_days: int) -> datetime:
    """Records recorded before this instant are beyond the retention."""
    if retention_days < MIN_RETENTION_DAYS:
        raise ValueError(
            f"a retention of {retention_days} days is below the minimum of {MIN_RETENTION_DAYS}"
        )
    format_timestamp(now)  # rejects a naive time
    return now - timedelta(days=retention_days)


def retention_warning(retention_days: int) -> str | None:
    """What to warn about a retention shorter than Reg B's 25 months; None otherwise."""
    if retention_days >= REG_B_RETENTION_DAYS:
        return None
    return (
        f"audit_retention_days is {retention_days}: a purge may remove records younger than "
        f"{REG_B_RETENTION_DAYS} days (25 months), which Regulation B requires for credit "
        "decisions; many firms keep 7 years (2557 days)"
    )


# --------------------------------------------------------------------------------------------
# a purge as stored
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgeRow:
    """One row of ``audit_purges``: records up to ``through_seq`` were purged; the last had
    ``through_hash``, which the signed checkpoint (``statement``, ``signature``, ``key_id``)
    vouches for. ``record_seq`` is the chained ``audit.purged`` record of the purge.

    Read from the database as stored: :meth:`signed` may fail on a row someone altered."""

    through_seq: int
    through_hash: str
    statement: str
    signature: str
    key_id: str
    purged_at: datetime
    purged_by: str
    records: int
    cutoff: datetime
    retention_days: int
    record_seq: int

    def signed(self) -> SignedCheckpoint:
        """The checkpoint the row carries (:class:`~canary.audit.checkpoint.CheckpointError` when
        unreadable)."""
        return SignedCheckpoint.from_envelope(self.envelope())

    def envelope(self) -> dict[str, str]:
        return {"statement": self.statement, "signature": self.signature, "keyId": self.key_id}

    def describe(self) -> str:
        """``records up to N were purged on DATE by ROLE (retention ...)``, for reports."""
        return (
            f"records up to {self.through_seq} were purged on "
            f"{format_timestamp(self.purged_at)} by {self.purged_by} (retention "
            f"{self.retention_days} days, cutoff {format_timestamp(self.cutoff)})"
        )

    def evidence(self) -> dict[str, JSON]:
        """What the row repeats of its ``audit.purged`` record's evidence."""
        return _evidence(
            self.through_seq, self.through_hash, self.records, self.cutoff,
            self.retention_days, self.envelope(), self.purged_by,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "through_seq": self.through_seq,
            "through_hash": self.through_hash,
            "checkpoint": self.envelope(),
            "purged_at": format_timestamp(self.purged_at),
            "purged_by": self.purged_by,
            "records": self.records,
            "cutoff": format_timestamp(self.cutoff),
            "retention_days": self.retention_days,
            "record_seq": self.record_seq,
        }


def _evidence(
    through_seq: int,
    through_hash: str,
    records: int,
    cutoff: datetime,
    retention_days: int,
    envelope: Mapping[str, str],
    purged_by: str,
) -> dict[str, JSON]:
    return {
        "through_seq": through_seq,
        "through_hash": through_hash,
        "records": records,
        "cutoff": format_timestamp(cutoff),
        "retention_days": retention_days,
        "checkpoint": dict(envelope),
        "purged_by": purged_by,
    }


def purge_rows_problem(rows: Sequence[PurgeRow]) -> tuple[int, str] | None:
    """What does not hold together in the ``audit_purges`` rows, by themselves: ``(seq,
    problem)`` of the first, or None. Each purge removes the records after the previous one
    up to its own ``through_seq``, and its ``audit.purged`` record comes after both."""
    previous: PurgeRow | None = None
    for row in sorted(rows, key=lambda r: r.through_seq):
        floor = 0 if previous is None else previous.through_seq
        where = f"the purge through record {row.through_seq}"
        if not is_hash(row.through_hash):
            return row.through_seq, f"{where}: its hash {row.through_hash!r} is not a SHA-256"
        if row.retention_days < MIN_RETENTION_DAYS:
            return row.through_seq, (
                f"{where} used a retention of {row.retention_days} days, below the minimum of "
                f"{MIN_RETENTION_DAYS} that every purge keeps (purge row edited?)"
            )
        if row.cutoff != row.purged_at - timedelta(days=row.retention_days):
            return row.through_seq, (
                f"{where}: its cutoff {format_timestamp(row.cutoff)} is not {row.retention_days} "
                f"days before it was made ({format_timestamp(row.purged_at)}) (purge row edited?)"
            )
        if row.records != row.through_seq - floor:
            return row.through_seq, (
                f"{where} says it removed {row.records} records, but records {floor + 1} to "
                f"{row.through_seq} are {row.through_seq - floor} (purge row edited?)"
            )
        if row.record_seq <= row.through_seq:
            return row.through_seq, (
                f"{where}: its audit.purged record {row.record_seq} is not after it "
                "(purge row edited?)"
            )
        if previous is not None and row.record_seq <= previous.record_seq:
            return row.through_seq, (
                f"{where}: its audit.purged record {row.record_seq} is not after the previous "
                f"purge's ({previous.record_seq}) (purge row edited?)"
            )
        previous = row
    return None


def purge_record_problem(row: PurgeRow, body: Mapping[str, Any]) -> str | None:
    """Why the chained record ``body`` is not the ``audit.purged`` record of ``row``, or None.
    The row repeats what the record says: N, its hash, the checkpoint, the records count,
    the cutoff, the retention, the role and the time."""
    seq = body.get("seq")
    if body.get("action") != PURGE_ACTION:
        return (
            f"record {seq} is a {body.get('action')!r} record, but the purge through record "
            f"{row.through_seq} names it as its audit.purged record (purge row edited?)"
        )
    evidence = body.get("evidence")
    if not isinstance(evidence, Mapping):
        return f"record {seq}: an audit.purged record without its evidence"
    expected = row.evidence()
    for key in expected:
        if evidence.get(key) != normalise(expected[key]):
            return (
                f"record {seq} (audit.purged) says {key} {evidence.get(key)!r}, but its purge "
                f"row says {expected[key]!r} (purge row edited?)"
            )
    if body.get("at") != format_timestamp(row.purged_at):
        return (
            f"record {seq} (audit.purged) was recorded at {body.get('at')}, but its purge row "
            f"says {format_timestamp(row.purged_at)} (purge row edited?)"
        )
    actor = body.get("actor")
    if not isinstance(actor, Mapping) or actor.get("id") != row.purged_by:
        return f"record {seq} (audit.purged) names another actor than its purge row"
    return None


# --------------------------------------------------------------------------------------------
# planning a purge
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgeScope:
    """What the database says about where a purge could end (read by the store).

    ``floor``/``floor_hash``: the last record already purged and its hash (0 and the genesis
    hash when none was); ``head``: the last record; ``old_through``: the highest seq such that
    every record after ``floor`` up to it was recorded before the cutoff (``floor`` when the
    first kept record is already younger); ``first_young``: ``(seq, recorded_at)`` of the
    oldest record at or after the cutoff, if any."""

    floor: int
    floor_hash: str
    head: int
    old_through: int
    first_young: tuple[int, datetime] | None


@dataclass(frozen=True, slots=True)
class PurgePlan:
    """A purge of records ``floor + 1`` to ``through_seq``, ending on ``checkpoint``."""

    floor: int
    through_seq: int
    through_hash: str
    checkpoint: SignedCheckpoint
    cutoff: datetime
    retention_days: int
    old_through: int  # records up to here are beyond the retention
    head: int

    @property
    def records(self) -> int:
        return self.through_seq - self.floor

    def made_at(self, at: datetime) -> PurgePlan:
        """The plan carried out at ``at``: its cutoff is ``at`` minus the retention (the
        purge's row and record state both). A later cutoff only makes the records it covers
        older than it, so the plan still holds; an earlier one is refused."""
        cutoff = retention_cutoff(at, self.retention_days)
        if cutoff < self.cutoff:
            raise ValueError(
                f"a purge planned with the cutoff {format_timestamp(self.cutoff)} cannot be made "
                f"at {format_timestamp(at)}, before it was planned"
            )
        return replace(self, cutoff=cutoff)

    def row(self, *, purged_at: datetime, purged_by: str, record_seq: int) -> PurgeRow:
        return PurgeRow(
            through_seq=self.through_seq,
            through_hash=self.through_hash,
            statement=self.checkpoint.statement,
            signature=self.checkpoint.signature,
            key_id=self.checkpoint.key_id,
            purged_at=purged_at,
            purged_by=purged_by,
            records=self.records,
            cutoff=self.cutoff,
            retention_days=self.retention_days,
            record_seq=record_seq,
        )

    def lines(self) -> list[str]:
        """What the purge removes and where the chain will start, in words."""
        signed = self.checkpoint
        out = [
            f"{span(self.floor + 1, self.through_seq)} ({self.records}) recorded before the "
            f"cutoff {format_timestamp(self.cutoff)} (retention {self.retention_days} days)",
            f"the purge ends on the checkpoint of record {self.through_seq} signed "
            f"{format_timestamp(signed.checkpoint.at)} by {signed.key_id}; the chain will start "
            f"at record {self.through_seq + 1}, linked to hash {self.through_hash}",
        ]
        if self.old_through > self.through_seq:
            out.append(
                f"{span(self.through_seq + 1, self.old_through)}: beyond the retention too, but "
                "no checkpoint given vouches for a later record: kept for a later purge"
            )
        return out


@dataclass(frozen=True, slots=True)
class PurgeDone:
    """A purge made: its ``audit_purges`` row, its chained record, and how many measurement
    rows went with the records."""

    row: PurgeRow
    record: AuditRecord
    measurements: int


def plan_purge(
    checkpoints: Iterable[SignedCheckpoint],
    *,
    keys: TrustedKeys,
    log: str,
    scope: PurgeScope,
    hashes: Mapping[int, str],
    cutoff: datetime,
    retention_days: int,
) -> PurgePlan:
    """Where a purge ends: the highest record N after ``scope.floor`` and up to
    ``scope.old_through`` for which a checkpoint of ``log``, signed by one of ``keys``, states
    the hash the database holds (``hashes``: stored hash by seq).

    Raises :class:`PurgeRefused` when no record is beyond the retention, or when no such
    checkpoint vouches for any of them."""
    if scope.old_through <= scope.floor:
        if scope.first_young is None:  # pragma: no cover - the head is always kept
            raise PurgeRefused("the audit chain holds no record to purge")
        seq, at = scope.first_young
        raise PurgeRefused(
            f"nothing to purge: record {seq}, the oldest kept, was recorded "
            f"{format_timestamp(at)}, after the cutoff {format_timestamp(cutoff)} (retention "
            f"{retention_days} days)"
        )
    best: SignedCheckpoint | None = None
    for signed in checkpoints:
        if not scope.floor < signed.seq <= scope.old_through:
            continue
        if signed.checkpoint.log != log or keys.problem(signed) is not None:
            continue
        if hashes.get(signed.seq) != signed.record_hash:
            continue
        if best is None or signed.seq > best.seq:
            best = signed
    if best is None:
        raise PurgeRefused(
            f"{span(scope.floor + 1, scope.old_through)}: beyond the retention (recorded "
            f"before {format_timestamp(cutoff)}), but no checkpoint of the log {log!r} signed "
            "by a pinned key vouches for any of them, and a purge must end on one; export the "
            "checkpoints (`canary audit checkpoints -o FILE`, or from a witness) and pass them "
            "with --checkpoint"
        )
    return PurgePlan(
        floor=scope.floor,
        through_seq=best.seq,
        through_hash=best.record_hash,
        checkpoint=best,
        cutoff=cutoff,
        retention_days=retention_days,
        old_through=scope.old_through,
        head=scope.head,
    )


def purge_entry(
    plan: PurgePlan,
    *,
    at: datetime,
    purged_by: str,
    measurements: int,
    reason: str | None = None,
) -> AuditEntry:
    """The chained ``audit.purged`` record of ``plan`` (see the module's docstring for the
    actor). Its evidence repeats the ``audit_purges`` row, so each checks the other."""
    evidence = _evidence(
        plan.through_seq, plan.through_hash, plan.records, plan.cutoff, plan.retention_days,
        plan.checkpoint.envelope(), purged_by,
    )  # fmt: skip
    evidence.update(measurements=measurements, previous_floor=plan.floor)
    default = (
        f"retention: records {plan.floor + 1} to {plan.through_seq}, recorded before "
        f"{format_timestamp(plan.cutoff)} ({plan.retention_days} days), purged"
    )
    return AuditEntry(
        at=at,
        actor=Actor("human", purged_by),
        action=PURGE_ACTION,
        reason=reason or default,
        evidence=evidence,
    )
