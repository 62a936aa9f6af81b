"""The leader fence: the highest leader epoch claimed per lease. A fenced commit succeeds
only while its writer holds exactly the stored epoch, so a deposed leader cannot act.

:class:`LeaderFence` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from canary.audit.errors import FencedOut
from canary.audit.records import Fence
from canary.audit.schema import LeaderFenceRow

__all__ = ["LeaderFence"]


class LeaderFence:
    """Claim and check leader epochs (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _check_fence(self, conn: Connection, fence: Fence) -> None:
        # FOR SHARE: concurrent commits of the current leader do not block each other, but a
        # new leader's claim_epoch (an UPDATE) waits until they have finished.
        row = conn.execute(
            select(LeaderFenceRow.epoch, LeaderFenceRow.holder)
            .where(LeaderFenceRow.lease_name == fence.lease_name)
            .with_for_update(read=True)
        ).first()
        if row is None:
            raise FencedOut(f"lease {fence.lease_name!r}: no epoch has been claimed")
        if row.epoch != fence.epoch or row.holder != fence.holder:
            raise FencedOut(
                f"lease {fence.lease_name!r} is at epoch {row.epoch} held by {row.holder!r}; "
                f"writer has epoch {fence.epoch} as {fence.holder!r} (deposed leader?)"
            )

    def claim_epoch(self, lease_name: str, holder: str, epoch: int, at: datetime) -> bool:
        """Record ``holder`` as leader at ``epoch``; True only if ``epoch`` is higher than the
        stored one (or none is stored). Epochs never go backwards."""
        values = {"lease_name": lease_name, "epoch": epoch, "holder": holder, "acquired_at": at}
        with self._tx(write=True) as conn:
            if self._dialect == "postgresql":
                pg_stmt = pg_dialect.insert(LeaderFenceRow).values(**values)
                stmt: Any = pg_stmt.on_conflict_do_update(
                    index_elements=[LeaderFenceRow.lease_name],
                    set_={k: pg_stmt.excluded[k] for k in ("epoch", "holder", "acquired_at")},
                    where=LeaderFenceRow.epoch < pg_stmt.excluded.epoch,
                )
            else:
                lite_stmt = sqlite_dialect.insert(LeaderFenceRow).values(**values)
                stmt = lite_stmt.on_conflict_do_update(
                    index_elements=[LeaderFenceRow.lease_name],
                    set_={k: lite_stmt.excluded[k] for k in ("epoch", "holder", "acquired_at")},
                    where=LeaderFenceRow.epoch < lite_stmt.excluded.epoch,
                )
            return conn.execute(stmt.returning(LeaderFenceRow.epoch)).first() is not None

    def current_fence(self, lease_name: str) -> Fence | None:
        """The stored fence of ``lease_name``, if any epoch was claimed."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(LeaderFenceRow.holder, LeaderFenceRow.epoch).where(
                    LeaderFenceRow.lease_name == lease_name
                )
            ).first()
        return None if row is None else Fence(lease_name, row.holder, row.epoch)

    # ---------------------------------------------------------------------------- reads
