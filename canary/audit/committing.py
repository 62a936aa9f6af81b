"""The store's one write path: :meth:`Committing.commit` — audit records, the rollout's new
state, approval rows and a settled command, all or nothing — carried out in groups.

Concurrent callers' commits are grouped (:mod:`canary.audit.grouping`): those that arrive
while a transaction runs share the next one. A group is all or nothing too: if any request
in it fails (its fence is stale, its rollout changed, a constraint refuses a row), the
transaction is rolled back and every request of the group is carried out again *alone*, in
a transaction of its own, so each caller gets exactly the outcome it would have got
without grouping and no request's failure costs another's write. The one exception is the
database becoming unavailable (:class:`StoreUnavailable`): a COMMIT that failed that way
may still have been applied, so nothing is retried; every caller of the group gets the
error, as a single caller would.

:class:`Committing` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions and the other parts used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from canary.audit.chain import Written
from canary.audit.commands import writer
from canary.audit.errors import StoreUnavailable
from canary.audit.grouping import CommitGroup, Outcome
from canary.audit.records import (
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    CommandState,
    Fence,
    RolloutRow,
)
from canary.audit.rows import PreparedEntry, prepare_entry

__all__ = ["CommitRequest", "Committing"]

MAX_BATCH = 64
"""The most commits one transaction carries (bounds how long the head lock is held)."""


class _Regroup(Exception):
    """A grouped rollout update found a rollout not at its expected version."""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """One caller's :meth:`Committing.commit`."""

    entries: tuple[PreparedEntry, ...]
    fence: Fence | None = None
    rollout: RolloutRow | None = None
    expected_version: int | None = None
    command: tuple[str, CommandState, str, datetime] | None = None
    approvals: tuple[ApprovalRow, ...] = ()


class Committing:
    """Commit audit records and controller state (mixed into the audit store)."""

    _group: CommitGroup[CommitRequest, list[Written]]

    if TYPE_CHECKING:  # provided by the store and its other parts

        def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
            raise NotImplementedError

        def _check_fence(self, conn: Connection, fence: Fence) -> None:
            raise NotImplementedError

        def _lock_head(self, conn: Connection) -> None:
            raise NotImplementedError

        def _write_rollout(
            self, conn: Connection, rollout: RolloutRow, expected_version: int | None
        ) -> None:
            raise NotImplementedError

        def _write_approvals(
            self,
            conn: Connection,
            rows: Sequence[ApprovalRow],
            entries: Sequence[AuditEntry],
            fence: Fence | None,
            at: datetime | None = None,
        ) -> tuple[list[AuditEntry], list[AuditEntry]]:
            raise NotImplementedError

        def _settle_command(
            self,
            conn: Connection,
            command_id: str,
            state: CommandState,
            result: str,
            at: datetime,
            *,
            actor: Actor,
            rollout_id: str | None = None,
            leader_epoch: int | None = None,
        ) -> AuditEntry:
            raise NotImplementedError

        def _append_prepared(
            self, conn: Connection, entries: Sequence[AuditEntry | PreparedEntry]
        ) -> list[Written]:
            raise NotImplementedError

        @staticmethod
        def _update_rollouts(conn: Connection, updates: Sequence[tuple[RolloutRow, int]]) -> bool:
            raise NotImplementedError

    def _start_grouping(self, max_batch: int = MAX_BATCH) -> None:
        self._group = CommitGroup(self._commit_group, max_batch=max_batch)

    # ---------------------------------------------------------------------------- the API

    def commit(
        self,
        entries: Sequence[AuditEntry],
        *,
        fence: Fence | None = None,
        rollout: RolloutRow | None = None,
        expected_version: int | None = None,
        command: tuple[str, CommandState, str, datetime] | None = None,
        approvals: Sequence[ApprovalRow] = (),
    ) -> list[AuditRecord]:
        """Append ``entries`` and write ``rollout`` in one transaction (all or nothing),
        committed when this returns.

        * ``fence``: the write happens only if the stored fence for ``fence.lease_name`` has
          exactly this epoch and holder, else :class:`FencedOut`.
        * ``rollout`` with ``expected_version=None`` inserts a new rollout (version 1);
          with ``expected_version=n`` it updates the stored rollout only if its version is
          ``n`` (it becomes ``n + 1``), else :class:`StaleRollout`.
        * ``command``: ``(id, state, result, at)`` settles a pending manual command in the
          same transaction, so a command is carried out exactly once (a command that is no
          longer pending raises :class:`StaleRollout`); its ``manual.settled`` record is
          appended after ``entries``, naming the fence's holder and the rollout.
        * ``approvals``: approval rows upserted in the same transaction (the engine's
          requests and close requests for the approval worker). Each row as stored
          afterwards is carried by the last of ``entries`` whose evidence names it
          (``approval_id``), or else by a record of its own (:mod:`canary.audit.actors`).

        Concurrent calls may share a transaction (see the module doc); each is still all
        or nothing, and fails only for its own reasons.

        Returns the records appended: ``entries`` first, in order, then any the store added.

        The entries are serialised here, in the caller's thread, before the commit is queued
        (:func:`~canary.audit.rows.prepare_entry`; one that cannot be raises here and nothing
        is written), and the records returned are decoded here once it is committed: the
        transaction, which commits run one at a time, only numbers and hashes them.
        """
        if rollout is None and expected_version is not None:
            raise ValueError("expected_version given without a rollout")
        request = CommitRequest(
            tuple(prepare_entry(entry) for entry in entries),
            fence,
            rollout,
            expected_version,
            command,
            tuple(approvals),
        )
        return [written.record() for written in self._group.submit(request)]

    def append(
        self, entries: Sequence[AuditEntry], fence: Fence | None = None
    ) -> list[AuditRecord]:
        """Append audit records (a :meth:`commit` without a rollout)."""
        return self.commit(entries, fence=fence)

    # ---------------------------------------------------------------------------- groups

    def _commit_group(self, requests: Sequence[CommitRequest]) -> list[Outcome[list[Written]]]:
        if len(requests) > 1:
            try:
                return [Outcome(records) for records in self._commit_together(requests)]
            except StoreUnavailable as exc:  # perhaps committed: retrying could write twice
                return [Outcome(error=StoreUnavailable(str(exc))) for _ in requests]
            except Exception:  # noqa: S110 - one of them failed: each alone, below
                pass
        return [self._commit_alone(request) for request in requests]

    def _commit_alone(self, request: CommitRequest) -> Outcome[list[Written]]:
        try:
            return Outcome(self._commit_together([request])[0])
        except Exception as exc:
            return Outcome(error=exc)

    def _commit_together(self, requests: Sequence[CommitRequest]) -> list[list[Written]]:
        """Carry out ``requests`` in one transaction: every fence checked, the head locked,
        each request's rows written, then all their records appended in request order."""
        with self._tx(write=True) as conn:
            checked: set[Fence] = set()
            for request in requests:
                if request.fence is not None and request.fence not in checked:
                    self._check_fence(conn, request.fence)
                    checked.add(request.fence)
            self._lock_head(conn)
            # Alone, a rollout update is checked by itself (its error says why it failed);
            # in a group, every update is one statement, and one that did not apply undoes
            # the group, whose requests are then carried out alone.
            grouped = len(requests) > 1
            staged = [self._stage(conn, request, update=not grouped) for request in requests]
            if grouped and not self._update_rollouts(
                conn,
                [
                    (r.rollout, r.expected_version)
                    for r in requests
                    if r.rollout is not None and r.expected_version is not None
                ],
            ):
                raise _Regroup
            records = self._append_prepared(
                conn, [entry for entries in staged for entry in entries]
            )
        out: list[list[Written]] = []
        start = 0
        for entries in staged:
            out.append(records[start : start + len(entries)])
            start += len(entries)
        return out

    def _stage(
        self, conn: Connection, request: CommitRequest, *, update: bool = True
    ) -> list[AuditEntry | PreparedEntry]:
        """Write ``request``'s rows (the head lock held); the entries it appends. With
        ``update=False`` a rollout update is left to the caller (a new rollout is not)."""
        items: list[AuditEntry | PreparedEntry] = list(request.entries)
        rollout, fence = request.rollout, request.fence
        if rollout is not None and (update or request.expected_version is None):
            self._write_rollout(conn, rollout, request.expected_version)
        added: list[AuditEntry] = []
        if request.approvals:
            # The entries may take the approval rows as stored: prepared again when appended.
            entries = [prepared.entry for prepared in request.entries]
            changed, extra = self._write_approvals(conn, request.approvals, entries, fence)
            items = list(changed)
            added.extend(extra)
        if request.command is not None:
            rollout_id = rollout.id if rollout is not None else None
            if rollout_id is None:
                rollout_id = next(
                    (p.entry.rollout_id for p in request.entries if p.entry.rollout_id), None
                )
            added.append(
                self._settle_command(
                    conn,
                    *request.command,
                    actor=writer(fence),
                    rollout_id=rollout_id,
                    leader_epoch=fence.epoch if fence is not None else None,
                )
            )
        return [*items, *added]
