"""The queue of manual commands (pause, resume, promote, abort, start).

The operator API queues a command as ``pending``; the leader carries it out and settles it
in the same transaction as the audit records it causes (:meth:`AuditStore.commit` calls
:meth:`CommandQueue._settle_command`), so a command is never reported done without its
records, nor recorded twice. :class:`CommandQueue` is a part of
:class:`canary.audit.AuditStore`, which provides the transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from canary.audit.errors import StaleRollout
from canary.audit.records import CommandRow, CommandState
from canary.audit.schema import CommandModel

__all__ = ["CommandQueue"]


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

    @staticmethod
    def _settle_command(
        conn: Connection, command_id: str, state: CommandState, result: str, at: datetime
    ) -> None:
        if state == "pending":
            raise ValueError("a command is settled as accepted, rejected or failed")
        settled = conn.execute(
            update(CommandModel)
            .where(CommandModel.id == command_id, CommandModel.state == "pending")
            .values(state=state, result=result, decided_at=at)
            .returning(CommandModel.id)
        ).first()
        if settled is None:
            raise StaleRollout(f"command {command_id} is not pending any more")

    def submit_command(self, command: CommandRow) -> CommandRow:
        """Queue a manual command for the leader (state ``pending``)."""
        if command.state != "pending":
            raise ValueError("a new command must be pending")
        with self._tx(write=True) as conn:
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

    def settle_command(
        self, command_id: str, state: CommandState, result: str, at: datetime
    ) -> None:
        """Record a command's result when it caused no audit records of its own."""
        with self._tx(write=True) as conn:
            self._settle_command(conn, command_id, state, result, at)
