"""The leader signs the audit chain's head and hands it to the witnesses.

Every ``interval`` (5 minutes by default), and within one tick of a rollout's end, the leader
checkpoints the chain (:mod:`canary.audit.checkpoint`):

1. it reads what the witnesses keep (:mod:`canary.witness`) and compares the database with
   the checkpoints its own key signed: a database that ends before a witnessed record, or
   holds another hash for it, has lost or rewritten history that was signed. Then nothing
   is signed (signing now would vouch for the rewritten history): the controller raises the
   alarm (the ``audit.anchor_broken`` error log, an ``AuditAnchorBroken`` Warning Event,
   ``kserve_canary_audit_anchor_broken`` = 1) and keeps raising it until the database agrees
   again. Records purged beyond the retention (``canary audit purge``) are not lost
   history: the purge's row carries a checkpoint that vouches for where the chain now starts
   (judged with this key and the retired ones, ``audit_public_key_files``; a purge no trusted
   key vouches for raises the alarm), and the witnessed checkpoints below it are purged by
   design;
2. it verifies the chain from the latest good checkpoint to the head (an incremental
   verification: records, links, hashes, query columns, measurement rows); a broken chain
   is refused the same way. It verifies :data:`VERIFY_SLICE` records per database call, so
   each call stays within the database deadline however long the unanchored stretch is (a
   first checkpoint of a long chain, a new key's, a leader that fell behind), and keeps
   where it got to: a pass that fails goes on from there next time, not from the anchor;
3. it signs the head it verified, keeps the checkpoint in ``audit_checkpoints`` and gives
   it to every witness. A witness that fails is counted and logged; the next checkpoint
   carries on (each one vouches for everything before it).

What a checkpoint cannot do: records appended after the latest checkpoint are vouched for by
nothing yet; ``canary audit verify`` reports them as not yet anchored. A forged record that
an administrator appends with a correct hash *before* the next checkpoint would be signed
with the rest: the interval bounds that window, and the witnesses' timestamps (Events, log)
show when each checkpoint was made. The signing key must never be readable by the
database's administrators.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from canary.audit import AuditError, AuditStore, Fence
from canary.audit.checkpoint import (
    AnchorReport,
    Checkpoint,
    CheckpointSigner,
    SignedCheckpoint,
    TrustedKeys,
    judge_anchors,
)
from canary.audit.records import ChainReport
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.model import EventReason
from canary.witness import Witness, WitnessError

__all__ = [
    "SMALLEST_SLICE",
    "VERIFY_SLICE",
    "CheckpointMetrics",
    "CheckpointResult",
    "Checkpointer",
]

VERIFY_SLICE: Final = 1000
"""Records verified per database call, each within the database deadline (5 s by default):
with 1,000 rollouts on a 2-core machine no such call timed out (`make bench-scale`, its
controller warnings in bench/results/scale.md), where verifying a whole checkpoint's span in
one call had timed out on every pass. A call that fails anyway halves
the slice for the calls after it, down to :data:`SMALLEST_SLICE`; a signed checkpoint
restores it."""

SMALLEST_SLICE: Final = 50

log = get_logger("canary.checkpointer")


class CheckpointMetrics(Protocol):
    def record_checkpoint(self, outcome: str) -> None: ...
    def record_witness_failure(self, witness: str) -> None: ...
    def set_anchored_seq(self, seq: int) -> None: ...
    def set_anchor_broken(self, broken: bool) -> None: ...


Outcome = Literal["signed", "idle", "refused", "failed", "not_leader"]


@dataclass(frozen=True)
class CheckpointResult:
    outcome: Outcome
    detail: str
    signed: SignedCheckpoint | None = None
    anchors: AnchorReport | None = None


class Checkpointer:
    """Signs checkpoints of the chain on the leader (a thread of its own)."""

    def __init__(
        self,
        *,
        store: AuditStore,
        signer: CheckpointSigner,
        witnesses: Sequence[Witness],
        log_name: str,
        leadership: Callable[[], Fence | None],
        clock: Callable[[], datetime],
        interval: timedelta = timedelta(minutes=5),
        metrics: CheckpointMetrics | None = None,
        events: EventSink | None = None,
        alarm_target: ObjectReference | None = None,
        tick: float = 5.0,
        retired_keys: Sequence[Ed25519PublicKey] = (),
        verify_slice: int = VERIFY_SLICE,
    ) -> None:
        if interval <= timedelta(0):
            raise ValueError("the checkpoint interval must be positive")
        if verify_slice < 1:
            raise ValueError("verify_slice must be >= 1")
        self._full_slice = self._slice = verify_slice
        self._store = store
        self._signer = signer
        self._keys = TrustedKeys([signer.public_key])
        # A purge may end on a checkpoint a retired key signed (audit_public_key_files).
        self._purge_keys = TrustedKeys([signer.public_key, *retired_keys])
        self._witnesses = tuple(witnesses)
        self._log_name = log_name
        self._leadership = leadership
        self._clock = clock
        self._interval = interval
        self._metrics = metrics
        self._events = events
        self._alarm_target = alarm_target
        self._tick = tick
        self._anchor: SignedCheckpoint | None = None  # the latest checkpoint known good
        # How far the chain was verified beyond the anchor, (seq, record_hash): a pass cut
        # short (a failed call, leadership lost, a stop) goes on from there.
        self._verified: tuple[int, str] | None = None
        self._alarm: str | None = None  # the findings last alarmed about
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ksc-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; a leader signs the head one last time (bounded by the store's
        timeout), so a clean shutdown leaves nothing unanchored."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._leadership() is not None:
            self._safely(force=True)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._leadership() is not None:
                self._safely(force=False)
            self._wake.wait(self._tick)
            self._wake.clear()

    def _safely(self, *, force: bool) -> None:
        try:
            self.run_once(force=force)
        except Exception:  # the loop must survive a bug in one pass
            log.exception("audit.checkpoint_pass_failed")
            self._count("failed")

    # -- one pass ----------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> CheckpointResult:
        """Checkpoint the head if one is due (``force``: whenever the head moved)."""
        with self._lock:
            if self._leadership() is None:
                return CheckpointResult("not_leader", "only the leader signs checkpoints")
            try:
                return self._pass(force=force)
            except AuditError as exc:
                log.warning("audit.checkpoint_failed", error=str(exc))
                self._count("failed")
                return CheckpointResult("failed", f"the audit database: {exc}")

    def _pass(self, *, force: bool) -> CheckpointResult:
        now = self._clock()
        head_seq, head_hash = self._store.head()
        anchor = self._anchor if self._anchor is not None else self._kept()
        if anchor is not None and anchor.seq == head_seq and anchor.record_hash == head_hash:
            return CheckpointResult("idle", f"record {head_seq} is already anchored")
        moved = anchor is None or anchor.seq < head_seq
        if moved and not force and anchor is not None and not self._due(anchor, now):
            return CheckpointResult("idle", "no checkpoint due")
        witnessed = self._witnessed()
        known = [c for c in [*witnessed, *([anchor] if anchor else [])] if c is not None]
        ours = [c for c in known if c.key_id == self._signer.key_id]
        hashes = self._store.record_hashes(c.seq for c in ours if c.seq <= head_seq)
        anchors = judge_anchors(
            ours,
            keys=self._purge_keys,  # ours are this key's; the purges' may be a retired one's
            log=self._log_name,
            head_seq=head_seq,
            hashes=hashes,
            purges=self._store.purges(),
        )
        if anchors.tampered:
            problems = "; ".join(f.message for f in anchors.findings if f.tampered)
            return self._refuse(problems, anchors)
        if head_seq == 0:
            return CheckpointResult("idle", "the audit chain is empty")
        start = self._start_from(ours, anchors.anchored_seq)
        chain = self._verify(start, head_seq)
        if chain is None:
            where = self._verified[0] if self._verified is not None else 0
            return CheckpointResult("not_leader", f"stopped after verifying through {where}")
        if not chain.ok:
            return self._refuse(
                f"the chain is broken at record {chain.first_bad_seq}: {chain.problem}", anchors
            )
        if start is not None and chain.head_seq <= start.seq:
            self._anchor = start
            return CheckpointResult("idle", f"record {start.seq} is already anchored")
        signed = self._signer.sign(Checkpoint(self._log_name, chain.head_seq, chain.head_hash, now))
        self._store.add_checkpoint(signed)
        self._publish(signed)
        self._anchor = signed
        self._slice = self._full_slice
        self._clear_alarm()
        self._count("signed")
        if self._metrics is not None:
            self._metrics.set_anchored_seq(signed.seq)
        log.info(
            "audit.checkpoint_made",
            seq=signed.seq,
            record_hash=signed.record_hash,
            key_id=signed.key_id,
            verified=chain.records_checked,
        )
        return CheckpointResult("signed", f"record {signed.seq} signed", signed, anchors)

    def _verify(self, start: SignedCheckpoint | None, head_seq: int) -> ChainReport | None:
        """The chain verified from ``start`` (or where a pass before got to beyond it) up to
        at least ``head_seq``, one slice per database call; None when the pass must stop
        first (a stop, or leadership lost), its progress kept. A report of a broken chain
        forgets the progress."""
        after = None if start is None else (start.seq, start.record_hash)
        if self._verified is not None and (after is None or self._verified[0] > after[0]):
            after = self._verified
        checked = 0
        while True:
            try:
                chain = self._store.verify(after=after, limit=self._slice)
            except AuditError:
                # too much for one call now (a busy machine, a slow database): smaller
                # calls from here on, from where the last good one got to
                self._slice = max(min(SMALLEST_SLICE, self._full_slice), self._slice // 2)
                raise
            checked += chain.records_checked
            if not chain.ok:
                self._verified = None
                return replace(chain, records_checked=checked)
            after = self._verified = (chain.head_seq, chain.head_hash)
            if chain.complete or chain.head_seq >= head_seq:
                return replace(chain, records_checked=checked)
            if self._stop.is_set() or self._leadership() is None:
                return None

    def _due(self, anchor: SignedCheckpoint, now: datetime) -> bool:
        if now - anchor.checkpoint.at >= self._interval:
            return True
        return self._store.rollouts_ended_since(anchor.checkpoint.at) > 0

    def _kept(self) -> SignedCheckpoint | None:
        """The database's latest kept checkpoint, if this controller's key signed it."""
        kept = self._store.latest_checkpoint()
        if kept is None or self._keys.problem(kept) is not None:
            return None
        return kept if kept.checkpoint.log == self._log_name else None

    def _start_from(
        self, ours: Sequence[SignedCheckpoint], anchored_seq: int
    ) -> SignedCheckpoint | None:
        for signed in ours:
            if signed.seq == anchored_seq and self._keys.problem(signed) is None:
                return signed
        return None

    def _witnessed(self) -> list[SignedCheckpoint]:
        found: list[SignedCheckpoint] = []
        for witness in self._witnesses:
            try:
                found.extend(witness.read())
            except WitnessError as exc:
                log.warning("audit.witness_unreadable", witness=witness.name, error=str(exc))
                if self._metrics is not None:
                    self._metrics.record_witness_failure(witness.name)
        return found

    def _publish(self, signed: SignedCheckpoint) -> None:
        for witness in self._witnesses:
            try:
                witness.publish(signed)
            except WitnessError as exc:
                log.warning(
                    "audit.witness_failed", witness=witness.name, seq=signed.seq, error=str(exc)
                )
                if self._metrics is not None:
                    self._metrics.record_witness_failure(witness.name)

    # -- the alarm ---------------------------------------------------------------------------

    def _refuse(self, problems: str, anchors: AnchorReport | None) -> CheckpointResult:
        self._count("refused")
        self._anchor = None
        self._verified = None
        if self._metrics is not None:
            self._metrics.set_anchor_broken(True)
        if problems != self._alarm:
            self._alarm = problems
            log.error(
                "audit.anchor_broken",
                problems=problems,
                detail="the audit database does not hold the history that was signed; no "
                "checkpoint is signed until it does. Run `canary audit verify` with the "
                "witness's checkpoints and the public key to see what changed.",
            )
            if self._events is not None and self._alarm_target is not None:
                try:
                    self._events.emit(
                        self._alarm_target,
                        EventReason.AUDIT_ANCHOR_BROKEN,
                        f"the audit database disagrees with its signed checkpoints: {problems}",
                        "Warning",
                    )
                except Exception as exc:  # the log and the metric carry the alarm too
                    log.warning("audit.alarm_event_failed", error=str(exc))
        return CheckpointResult("refused", problems, None, anchors)

    def _clear_alarm(self) -> None:
        if self._alarm is not None:
            log.info("audit.anchor_restored", previous=self._alarm)
        self._alarm = None
        if self._metrics is not None:
            self._metrics.set_anchor_broken(False)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.record_checkpoint(outcome)
