"""The queue of manual commands (pause, resume, promote, abort, start, approve, reject).

The operator API (or the CLI) queues a command as ``pending``; the leader carries it out
and settles it in the same transaction as the audit records it causes
(:meth:`AuditStore.commit` calls :meth:`CommandQueue._settle_command`), so a command is
never reported done without its records, nor recorded twice.

The ``commands`` row is working state that a database administrator could rewrite, so the
command is in the hash chain too (formats in :mod:`canary.audit.actors`): queuing it appends
``manual.requested`` (the person as the apiserver authenticated them, the command, its
arguments and reason) in the same transaction as the row, and every settle appends
``manual.settled`` (state, result, time; the rollout acted on, when there is one) in the
same transaction as the row's update. ``correlation_id`` is the command's id on both.

**A ``start`` command and its rollout.** ``canary rollout start`` writes the new model and
settles at once (accepted: the model is written; or failed, or rejected); the rollout it
causes starts only later, when KServe has made the new revision, and possibly on another
leader. So its settle record cannot name the rollout. Instead, when the engine starts a
rollout for a model that an accepted ``start`` command set (:meth:`CommandQueue.starter`),
the same transaction appends ``manual.linked`` (correlation: the command's id; the new
rollout's id; the sequence numbers of the command's ``manual.requested`` and
``manual.settled`` records) and the ``rollout.started`` record names the command's id and
those sequence numbers in its evidence. From either end the other is one lookup away: the
rollout's records lead to the command's, and the command's correlation id leads to the
rollout. Who started the rollout (who may not approve its promotion) is read from the
chained ``manual.requested`` record; only a command queued before commands were chained
falls back to its row.

:class:`CommandQueue` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions, the chain and the leader fence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from canary.audit.actors import MANUAL_REQUESTED, MANUAL_SETTLED, requested_entry, settled_entry
from canary.audit.errors import AuditError, StaleRollout
from canary.audit.records import (
    Actor,
    AuditEntry,
    AuditRecord,
    CommandRow,
    CommandState,
    Fence,
    decode_body,
)
from canary.audit.schema import AuditLog, CommandModel

__all__ = ["CommandQueue", "writer"]


def writer(fence: Fence | None) -> Actor:
    """Who writes under ``fence``: the leader (its holder identity, as its own records name
    it); a write without a fence names no one it could prove."""
    if fence is not None:
        return Actor("controller", fence.holder)
    return Actor("unknown", "unfenced writer")


def _command_from(m: Mapping[Any, Any]) -> CommandRow:
    return CommandRow(
        id=m["id"],
        namespace=m["namespace"],
        name=m["name"],
        command=m["command"],
        actor=m["actor"],
        reason=m["reason"],
        args=m["args"],
        requested_at=m["requested_at"],
        state=m["state"],
        result=m["result"],
        decided_at=m["decided_at"],
        actor_uid=m["actor_uid"],
        actor_groups=tuple(m["actor_groups"] or ()),
    )


class CommandQueue:
    """Queue, read and settle manual commands (mixed into the audit store)."""

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _lock_head(self, conn: Connection) -> None:
        raise NotImplementedError  # canary.audit.chain

    def _append(self, conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        raise NotImplementedError  # canary.audit.chain

    def _check_fence(self, conn: Connection, fence: Fence) -> None:
        raise NotImplementedError  # canary.audit.fence

    @staticmethod
    def _settle_command(
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
        """Settle the row (under the chain's head lock, which the caller holds) and return
        its ``manual.settled`` record for the caller to append in the same transaction."""
        if state == "pending":
            raise ValueError("a command is settled as accepted, rejected or failed")
        settled = conn.execute(
            update(CommandModel)
            .where(CommandModel.id == command_id, CommandModel.state == "pending")
            .values(state=state, result=result, decided_at=at)
            .returning(*CommandModel.__table__.columns)
        ).first()
        if settled is None:
            raise StaleRollout(f"command {command_id} is not pending any more")
        return settled_entry(
            _command_from(settled._mapping),
            actor=actor,
            rollout_id=rollout_id,
            leader_epoch=leader_epoch,
        )

    def submit_command(self, command: CommandRow) -> CommandRow:
        """Queue a manual command for the leader (state ``pending``), with its
        ``manual.requested`` record in the same transaction."""
        if command.state != "pending":
            raise ValueError("a new command must be pending")
        record = requested_entry(command)
        with self._tx(write=True) as conn:
            self._lock_head(conn)
            conn.execute(
                insert(CommandModel).values(
                    id=command.id,
                    namespace=command.namespace,
                    name=command.name,
                    command=command.command,
                    actor=command.actor,
                    actor_uid=command.actor_uid,
                    actor_groups=list(command.actor_groups),
                    reason=command.reason,
                    args=dict(command.args),
                    requested_at=command.requested_at,
                    state="pending",
                    result=None,
                    decided_at=None,
                )
            )
            self._append(conn, [record])
        return command

    def pending_commands(self, limit: int = 100) -> list[CommandRow]:
        """Pending commands, oldest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(CommandModel.__table__)
                .where(CommandModel.state == "pending")
                .order_by(CommandModel.requested_at, CommandModel.id)
                .limit(limit)
            ).all()
        return [_command_from(row._mapping) for row in rows]

    def recent_commands(self, limit: int = 100) -> list[CommandRow]:
        """The newest commands in any state, newest first."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(CommandModel.__table__)
                .order_by(CommandModel.requested_at.desc(), CommandModel.id)
                .limit(limit)
            ).all()
        return [_command_from(row._mapping) for row in rows]

    def starter(self, namespace: str, name: str, storage_uri: str | None) -> CommandRow | None:
        """The accepted ``start`` command that set this model on namespace/name, if one did
        (the newest): who started the rollout, as the apiserver authenticated them."""
        if not storage_uri:
            return None
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(CommandModel.__table__)
                .where(
                    CommandModel.namespace == namespace,
                    CommandModel.name == name,
                    CommandModel.command == "start",
                    CommandModel.state == "accepted",
                )
                .order_by(CommandModel.requested_at.desc(), CommandModel.id)
                .limit(20)
            ).all()
        for row in rows:
            command = _command_from(row._mapping)
            if command.args.get("storage_uri") == storage_uri:
                return command
        return None

    def get_command(self, command_id: str) -> CommandRow | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(CommandModel.__table__).where(CommandModel.id == command_id)
            ).first()
        return None if row is None else _command_from(row._mapping)

    def command_records(self, command: CommandRow) -> dict[str, AuditRecord]:
        """The command's own chained records by action (``manual.requested``, and
        ``manual.settled`` once settled); empty for a command queued before commands were
        chained."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body)
                .where(
                    AuditLog.namespace == command.namespace,
                    AuditLog.name == command.name,
                    AuditLog.correlation_id == command.id,
                    AuditLog.action.in_((MANUAL_REQUESTED, MANUAL_SETTLED)),
                )
                .order_by(AuditLog.seq)
            ).all()
        found: dict[str, AuditRecord] = {}
        for row in rows:
            try:
                entry = decode_body(row.body)
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(
                    f"record {row.seq} cannot be decoded ({exc}); run `canary audit verify`"
                ) from exc
            found.setdefault(
                entry.action, AuditRecord(row.seq, row.prev_hash, row.record_hash, row.body, entry)
            )
        return found

    def settle_command(
        self,
        command_id: str,
        state: CommandState,
        result: str,
        at: datetime,
        *,
        actor: Actor | None = None,
        fence: Fence | None = None,
        rollout_id: str | None = None,
    ) -> AuditRecord:
        """Settle a command that caused no audit records of its own, with its
        ``manual.settled`` record. ``actor`` is who settled it (by default the holder of
        ``fence``); with ``fence``, only while it is the stored one. Returns the record."""
        with self._tx(write=True) as conn:
            if fence is not None:
                self._check_fence(conn, fence)
            self._lock_head(conn)
            entry = self._settle_command(
                conn,
                command_id,
                state,
                result,
                at,
                actor=actor or writer(fence),
                rollout_id=rollout_id,
                leader_epoch=fence.epoch if fence is not None else None,
            )
            (record,) = self._append(conn, [entry])
        return record
