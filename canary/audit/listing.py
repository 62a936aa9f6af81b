"""Records by filter, in chain order: what an export streams, page by page.

:class:`RecordListing` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from canary.audit.chain import decoded_records
from canary.audit.records import AuditRecord
from canary.audit.schema import AuditLog

__all__ = ["RecordFilter", "RecordListing"]

MAX_PAGE = 5000


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records: every field given must match (times are the records' own, with a
    zone; ``until`` is inclusive)."""

    namespace: str | None = None
    name: str | None = None
    rollout_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for label, value in (("since", self.since), ("until", self.until)):
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"{label} needs a time zone (e.g. 2026-11-20T02:14:00Z)")


class RecordListing:
    """Filtered records in seq order (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def find_records(
        self, where: RecordFilter, *, after_seq: int = 0, limit: int = 1000
    ) -> tuple[list[AuditRecord], int | None]:
        """Records matching ``where`` with ``seq > after_seq``, at most ``limit`` (1 to
        :data:`MAX_PAGE`); and the ``after_seq`` of the next page (None: no more)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        stmt: Any = select(
            AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body
        ).where(AuditLog.seq > after_seq)
        for column, value in (
            (AuditLog.namespace, where.namespace),
            (AuditLog.name, where.name),
            (AuditLog.rollout_id, where.rollout_id),
            (AuditLog.action, where.action),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if where.since is not None:
            stmt = stmt.where(AuditLog.recorded_at >= where.since)
        if where.until is not None:
            stmt = stmt.where(AuditLog.recorded_at <= where.until)
        with self._tx(write=False) as conn:
            rows: Sequence[Any] = conn.execute(stmt.order_by(AuditLog.seq).limit(limit + 1)).all()
        out = decoded_records(rows[:limit])
        return out, (out[-1].seq if len(rows) > limit else None)
