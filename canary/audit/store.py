"""The audit store: hash-chained audit log plus the controller's durable state.

Every write goes through one database transaction. :meth:`AuditStore.commit`
(:mod:`canary.audit.committing`, which groups concurrent callers' commits) checks the
leader fence, locks the chain head, appends audit records (and their measurements) and
writes the rollout state, all or nothing. That is how the controller records "intent + new
state" atomically while it is still the leader.

Tables are created only by the Alembic migrations (:func:`upgrade_to_head`).

The store is assembled from one part per concern: :mod:`canary.audit.database` (opening the
database, migrations), :mod:`canary.audit.chain` (appending and reading the hash chain),
:mod:`canary.audit.verify` (checking it), :mod:`canary.audit.anchors` (its signed
checkpoints), :mod:`canary.audit.listing` (records by filter), :mod:`canary.audit.rollouts`,
:mod:`canary.audit.fence`, :mod:`canary.audit.commands`, :mod:`canary.audit.approvals`,
:mod:`canary.audit.history` (the auditor's queries), :mod:`canary.audit.privileges`
(PostgreSQL roles), :mod:`canary.audit.crosscheck` (the mutable tables against the chain)
and :mod:`canary.audit.purges` (purges beyond the retention).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import (
    ArgumentError,
    NoSuchModuleError,
    SQLAlchemyError,
)

from canary.audit.anchors import CheckpointBook
from canary.audit.approvals import ApprovalBook
from canary.audit.chain import ChainLog
from canary.audit.commands import CommandQueue
from canary.audit.committing import Committing
from canary.audit.crosscheck import CrossCheck, Discrepancy
from canary.audit.database import (
    WRITE_OPTION,
    alembic_config,
    check_revision,
    check_sqlite_file,
    connect_args,
    install_sqlite_hooks,
    masked,
    parse_url,
    read_only_url,
    schema_differences,
    schema_revision,
    translate,
    upgrade_to_head,
)
from canary.audit.deadline import CallDeadline
from canary.audit.errors import (
    ActiveRolloutExists,
    AuditError,
    DatabaseUrlError,
    FencedOut,
    PurgeRefused,
    RoleRefused,
    SchemaTooNew,
    StaleRollout,
    StoreUnavailable,
)
from canary.audit.fence import LeaderFence
from canary.audit.history import AuditHistory
from canary.audit.listing import RecordListing
from canary.audit.privileges import Privileges
from canary.audit.purges import PurgeBook
from canary.audit.retention import PurgeDone, PurgePlan, purge_entry
from canary.audit.rollouts import RolloutBook
from canary.audit.verify import ChainCheck
from canary.audit.verify_postgres import Source

__all__ = [
    "ActiveRolloutExists",
    "AuditError",
    "AuditStore",
    "DatabaseUrlError",
    "Discrepancy",
    "FencedOut",
    "PurgeRefused",
    "RoleRefused",
    "SchemaTooNew",
    "StaleRollout",
    "StoreUnavailable",
    "alembic_config",
    "schema_differences",
    "upgrade_to_head",
]

# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


class AuditStore(
    ChainLog,
    ChainCheck,
    CheckpointBook,
    RecordListing,
    RolloutBook,
    LeaderFence,
    CommandQueue,
    ApprovalBook,
    AuditHistory,
    Privileges,
    CrossCheck,
    PurgeBook,
    Committing,
):
    """Hash-chained audit log and controller state on PostgreSQL (or SQLite for development).

    There is deliberately no API that deletes or rewrites audit data. The one exception is
    :meth:`purge`, for ``canary audit purge`` only: it removes records beyond the retention up
    to a signed checkpoint, as the owner role, and records itself in the chain.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        deadline: CallDeadline | None = None,
        where: str | None = None,
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._where = where or masked(engine.url)
        self._deadline = deadline
        self._start_grouping()
        self._connect_args = dict(connect_args or {})  # what the engine connects with

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        read_only: bool = False,
    ) -> AuditStore:
        """Open a store: ``sqlite:///path/file.db`` or ``postgresql+psycopg://user@host/db``.

        No connection is made until the first operation. With ``timeout`` (seconds, on
        PostgreSQL), connecting, waiting for a pooled connection and each statement are
        bounded by it, and so is each whole call, client-side (:mod:`canary.audit.deadline`):
        a database that stops answering fails the call with :class:`StoreUnavailable`
        instead of blocking the caller. ``connect_timeout`` bounds connecting only (the
        command line's verify may read for long, but must not wait forever for a server
        that never answers). ``read_only`` opens a SQLite file read-only: a missing file is
        an :class:`AuditError` at once ("no such database file"), and is never created. A URL
        of an unsupported database or driver, or whose driver is not installed, raises
        :class:`DatabaseUrlError`.
        """
        parsed = parse_url(url)
        if timeout is not None and not timeout > 0:
            raise AuditError(f"the database timeout must be positive, got {timeout}")
        if read_only:
            check_sqlite_file(parsed, must_exist=True)
        deadline: CallDeadline | None = None
        arguments: dict[str, Any] = {}
        try:
            if parsed.get_backend_name() == "sqlite":
                opened = read_only_url(parsed) if read_only else parsed
                engine = create_engine(opened, connect_args={"timeout": 30})
                install_sqlite_hooks(
                    engine, file_backed=bool(parsed.database), read_only=opened is not parsed
                )
            elif timeout is None:
                arguments = connect_args(parsed, connect_timeout)
                engine = create_engine(parsed, pool_pre_ping=True, connect_args=arguments)
            else:
                millis = max(int(timeout * 1000), 1)
                arguments = {
                    **connect_args(parsed, connect_timeout or timeout),
                    "options": f"-c statement_timeout={millis}",
                }
                engine = create_engine(
                    parsed, pool_pre_ping=True, pool_timeout=timeout, connect_args=arguments
                )
                deadline = CallDeadline(engine, timeout)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise DatabaseUrlError(f"cannot open database {masked(parsed)}: {exc}") from None
        except ImportError as exc:
            raise DatabaseUrlError(
                f"cannot open database {masked(parsed)}: its driver is not installed ({exc})"
            ) from None
        return cls(engine, deadline=deadline, where=masked(parsed), connect_args=arguments)

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._where

    @property
    def backend(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self._dialect

    def close(self) -> None:
        """Close all pooled connections."""
        if self._deadline is not None:
            self._deadline.close()
        self._engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self, *, write: bool, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction. ``snapshot``: all its reads see one state of the database
        (PostgreSQL: REPEATABLE READ; a SQLite transaction always does)."""
        bounded = self._deadline.call() if self._deadline is not None else nullcontext()
        try:
            with bounded, self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE_OPTION: True})
                if snapshot and self._dialect == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise translate(exc, self._where) from exc

    def _worker_source(self) -> Source | None:
        """How :meth:`verify`'s worker processes connect: the engine's URL and connection
        arguments. None on SQLite, and with a call deadline (``timeout``), which bounds this
        process's calls only."""
        if self._dialect != "postgresql" or self._deadline is not None:
            return None
        url = self._engine.url.render_as_string(hide_password=False)
        return Source(url=url, connect_args=self._connect_args)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers."""
        with self._tx(write=False) as conn:
            conn.execute(text("SELECT 1"))

    def check_schema(self) -> str:
        """The database's schema revision. Raises :class:`SchemaTooNew` when a newer
        kserve-canary migrated it, :class:`AuditError` when it was never migrated."""
        with self._tx(write=False) as conn:
            revisions = schema_revision(conn)
        if not revisions:
            raise AuditError(f"database {self._where} has no audit schema; run `canary db upgrade`")
        check_revision(revisions)
        return ", ".join(revisions)

    # ---------------------------------------------------------------------------- writes

    def purge(self, plan: PurgePlan, *, at: datetime, reason: str | None = None) -> PurgeDone:
        """Carry out ``plan`` (:func:`canary.audit.retention.plan_purge`, made after the chain
        was verified) at ``at``, which the cutoff is taken from
        (:meth:`~canary.audit.retention.PurgePlan.made_at`), in one transaction: with the
        chain's head locked, check the database is still as planned, append the chained
        ``audit.purged`` record, add the ``audit_purges`` row and delete the measurements and
        records up to ``plan.through_seq``. All or nothing; :class:`PurgeRefused` (nothing
        changed) when the role may not purge or the database moved."""
        plan = plan.made_at(at)
        with self._tx(write=True) as conn:
            self._lock_head(conn)
            purged_by = self._purging_role(conn)
            measurements = self._check_purge(conn, plan)
            entry = purge_entry(
                plan, at=at, purged_by=purged_by, measurements=measurements, reason=reason
            )
            [record] = self._append(conn, [entry])
            row = plan.row(purged_at=at, purged_by=purged_by, record_seq=record.seq)
            self._remove_purged(conn, row, measurements=measurements)
        return PurgeDone(row, record, measurements)
