"""Checking the audit trail: the chain in the database, against the signed checkpoints.

One function for every place that verifies: ``canary audit verify`` (with the checkpoints
and public keys the auditor holds), and the auditor API's ``/verify`` and evidence reports
(with what the witnesses keep and the keys the controller is configured to trust).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from canary.audit import AuditStore, ChainReport
from canary.audit.checkpoint import AnchorReport, SignedCheckpoint, TrustedKeys, judge_anchors
from canary.audit.crosscheck import Discrepancy
from canary.audit.records import format_timestamp
from canary.audit.retention import PurgeRow
from canary.evidence.dossier import ChainVerification

__all__ = ["TrailCheck", "check_trail"]


@dataclass(frozen=True)
class TrailCheck:
    """The chain's verification and, when checkpoints and keys were given, what they say."""

    chain: ChainReport
    anchors: AnchorReport | None
    from_seq: int  # the first record verified (after a checkpoint or a purge)
    witness: str | None = None  # where the checkpoints came from
    tables: tuple[Discrepancy, ...] | None = None  # the mutable tables against the chain
    purges: tuple[PurgeRow, ...] = ()  # the purges made, oldest first

    @property
    def tampered(self) -> bool:
        return (
            not self.chain.ok
            or (self.anchors is not None and self.anchors.tampered)
            or any(d.tampering for d in self.tables or ())
        )

    @property
    def unanchored(self) -> bool:
        return self.anchors is None or self.anchors.unanchored > 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tampered": self.tampered,
            "chain": {**asdict(self.chain), "from_seq": self.from_seq},
            "anchors": None,
            "witness": self.witness,
            "tables": None
            if self.tables is None
            else [{**asdict(d), "tampering": d.tampering} for d in self.tables],
            "purges": [purge.to_json() for purge in self.purges],
        }
        if self.anchors is not None:
            a = self.anchors
            out["anchors"] = {
                "log": a.log,
                "head_seq": a.head_seq,
                "anchored_seq": a.anchored_seq,
                "anchored_at": format_timestamp(a.anchored_at) if a.anchored_at else None,
                "key_id": a.key_id,
                "checkpoints": a.checkpoints,
                "tampered": a.tampered,
                "unanchored": a.unanchored,
                "purged_through": a.purged_through,
                "findings": [asdict(f) for f in a.findings],
            }
        return out

    def for_dossier(self, verified_at: datetime) -> ChainVerification:
        """The summary an evidence report shows."""
        anchors = self.anchors
        return ChainVerification.from_report(
            self.chain,
            head_seq=self.chain.head_seq,
            verified_at=verified_at,
            anchored_seq=anchors.anchored_seq if anchors and anchors.anchored_seq else None,
            anchored_at=anchors.anchored_at if anchors else None,
            anchor_key_id=anchors.key_id if anchors else None,
            anchor_witness=self.witness,
            anchor_problems=[f.message for f in anchors.findings if f.tampered] if anchors else (),
        )


def check_trail(
    store: AuditStore,
    *,
    checkpoints: Sequence[SignedCheckpoint] = (),
    keys: TrustedKeys | None = None,
    log_name: str = "kserve-canary",
    since_checkpoint: bool = False,
    witness: str | None = None,
    tables: bool = True,
) -> TrailCheck:
    """Verify the chain, and judge it against ``checkpoints`` when ``keys`` are given.

    ``since_checkpoint``: verify only the records after the latest checkpoint the database
    agrees with (the whole chain when none does). After a purge the chain is verified from
    the record after it, and with ``keys`` the purge's own signed checkpoint is judged too
    (it anchors the chain where it now starts). ``tables``: also compare the mutable tables
    (commands, approvals, webhook deliveries) with their chained records
    (:meth:`~canary.audit.AuditStore.crosscheck`)."""
    purges = tuple(store.purges())
    anchors: AnchorReport | None = None
    hashes: dict[int, str] = {}
    if keys is not None and (checkpoints or purges):
        head_seq, _ = store.head()
        hashes = store.record_hashes(c.seq for c in checkpoints if c.seq <= head_seq)
        anchors = judge_anchors(
            checkpoints,
            keys=keys,
            log=log_name,
            head_seq=head_seq,
            hashes=hashes,
            purges=purges,
        )
    start: tuple[int, str] | None = None
    if since_checkpoint and anchors is not None and anchors.anchored_seq:
        anchored = anchors.anchored_seq
        floor = next((p for p in purges if p.through_seq == anchored), None)
        start = (anchored, floor.through_hash if floor is not None else hashes[anchored])
    chain = store.verify(after=start)
    first = chain.purged_through + 1 if start is None else max(start[0], chain.purged_through) + 1
    found = tuple(store.crosscheck()) if tables else None
    return TrailCheck(chain, anchors, first, witness, found, purges)
