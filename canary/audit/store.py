"""The audit store: hash-chained audit log plus the controller's durable state.

Every write goes through one database transaction. :meth:`AuditStore.commit` checks the
leader fence, locks the chain head, appends audit records (and their measurements) and
writes the rollout state, all or nothing. That is how the controller records "intent + new
state" atomically while it is still the leader.

Tables are created only by the Alembic migrations (:func:`upgrade_to_head`).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from canary.audit.approvals import ApprovalBook
from canary.audit.commands import CommandQueue
from canary.audit.deadline import CallDeadline
from canary.audit.errors import (
    ActiveRolloutExists,
    AuditError,
    FencedOut,
    StaleRollout,
    StoreUnavailable,
)
from canary.audit.records import (
    GENESIS_HASH,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    ChainReport,
    CommandState,
    Fence,
    Measurement,
    RolloutRow,
    StoredMeasurement,
    canonical_json,
    compute_record_hash,
    decode_body,
    decode_float,
    entry_body,
    parse_body,
    parse_timestamp,
)
from canary.audit.schema import (
    AuditLog,
    Base,
    LeaderFenceRow,
    MeasurementRow,
    RolloutModel,
)

__all__ = [
    "ActiveRolloutExists",
    "AuditError",
    "AuditStore",
    "FencedOut",
    "StaleRollout",
    "StoreUnavailable",
    "alembic_config",
    "schema_differences",
    "upgrade_to_head",
]

# Key of the PostgreSQL advisory lock that serialises appends to the chain ("ksc_audt").
HEAD_LOCK_KEY: Final = 0x6B73635F61756474
_WRITE: Final = "ksc_write"


# --------------------------------------------------------------------------------------------
# URLs, migrations
# --------------------------------------------------------------------------------------------


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise AuditError(f"invalid database URL: {exc}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _masked(url: URL | str) -> str:
    parsed = url if isinstance(url, URL) else _parse_url(url)
    return parsed.render_as_string(hide_password=True)


def _migrations_dir() -> Path:
    """The Alembic scripts that belong to this ``canary`` package.

    In order: ``KSC_MIGRATIONS_DIR``; the ``canary.migrations`` package (an installed wheel
    holds it, and an editable install maps it to the checkout's ``migrations/`` folder); the
    ``migrations/`` folder of a source checkout (next to ``canary/`` and ``alembic.ini``), which
    is what runs when the checkout is put on ``sys.path`` without being installed. The package
    is used only when it sits where this ``canary`` package does, so that a checkout on
    ``sys.path`` never runs the migrations of another checkout's editable install.
    """
    override = os.environ.get("KSC_MIGRATIONS_DIR")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "migrations"
    try:
        packaged = resources.files("canary.migrations")
    except ModuleNotFoundError:
        packaged = None
    if isinstance(packaged, Path):
        location = packaged.resolve()
        if location.is_relative_to(package) or location == checkout.resolve():
            return location
    if (checkout / "env.py").is_file() and (package.parent / "alembic.ini").is_file():
        return checkout
    if packaged is not None and not isinstance(packaged, Path):
        raise AuditError(
            "database migrations are packaged inside an archive and Alembic needs them as "
            "files; install kserve-canary into a directory or set KSC_MIGRATIONS_DIR"
        )
    raise AuditError(
        f"database migrations not found for the canary package at {package}: its "
        "canary.migrations subpackage is missing; reinstall kserve-canary or set "
        "KSC_MIGRATIONS_DIR"
    )


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` and this package's migrations (see :func:`_migrations_dir`).

    No ``alembic.ini`` is read: an installed package has none, and every option is set here,
    so a source checkout and an installed wheel behave alike. Alembic's own logging is left as
    the caller configured it.
    """
    scripts = _migrations_dir()
    if not (scripts / "env.py").is_file():
        raise AuditError(f"database migrations not found at {scripts}: it has no env.py")
    config = Config()
    config.set_main_option("script_location", str(scripts).replace("%", "%%"))
    rendered = _parse_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade_to_head(url: str) -> None:
    """Apply all migrations to the database at ``url`` (``canary db upgrade``)."""
    try:
        command.upgrade(alembic_config(url), "head")
    except SQLAlchemyError as exc:
        raise _translate(exc, _masked(url)) from exc


def schema_differences(url: str) -> list[str]:
    """Differences between the database at ``url`` and the models (empty when in sync)."""
    engine = create_engine(_parse_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    except SQLAlchemyError as exc:
        raise _translate(exc, _masked(url)) from exc
    finally:
        engine.dispose()
    return [repr(diff) for diff in diffs]


def _translate(exc: SQLAlchemyError, where: str) -> AuditError:
    detail = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(f"database {where} unavailable: {first}")
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return AuditError(
            f"database {where} has no audit schema ({first}); run `canary db upgrade`"
        )
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return StoreUnavailable(f"database {where} unavailable: {first}")
    if isinstance(exc, NoSuchModuleError):
        return AuditError(f"database {where}: driver not installed ({first})")
    return AuditError(f"database {where}: {first}")


# --------------------------------------------------------------------------------------------
# row <-> value conversions
# --------------------------------------------------------------------------------------------


def _projection(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit_log`` query columns, derived from a body (at write and at verify time)."""
    obj = body["obj"] or {}
    canary = body["canary"] or {}
    stable = body["stable"] or {}
    return {
        "recorded_at": parse_timestamp(body["at"]),
        "action": body["action"],
        "actor_kind": body["actor"]["kind"],
        "actor_id": body["actor"]["id"],
        "rollout_id": body["rollout_id"],
        "namespace": obj.get("namespace"),
        "name": obj.get("name"),
        "canary_revision": canary.get("revision"),
        "stable_revision": stable.get("revision"),
        "change_number": body["change_number"],
        "correlation_id": body["correlation_id"],
    }


_PROJECTION_COLUMNS: Final = (
    "recorded_at",
    "action",
    "actor_kind",
    "actor_id",
    "rollout_id",
    "namespace",
    "name",
    "canary_revision",
    "stable_revision",
    "change_number",
    "correlation_id",
)


def _measurement_rows(seq: int, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``measurements`` rows of a record, derived from its body."""
    rows = []
    for position, m in enumerate(body["measurements"]):
        rows.append(
            {
                "audit_seq": seq,
                "position": position,
                "rollout_id": body["rollout_id"],
                "check_name": m["check"],
                "evaluated_at": parse_timestamp(m["evaluated_at"]),
                "query": m["query"],
                "prometheus_url": m["prometheus_url"],
                "response_digest": m["response_digest"],
                "canary_value": decode_float(m["canary_value"]),
                "baseline_value": decode_float(m["baseline_value"]),
                "canary_samples": m["canary_samples"],
                "baseline_samples": m["baseline_samples"],
                "statistic": decode_float(m["statistic"]),
                "threshold": decode_float(m["threshold"]),
                "verdict": m["verdict"],
                "dry_run": m["dry_run"],
                "detail": canonical_json(m["detail"]),
            }
        )
    return rows


_MEASUREMENT_COLUMNS: Final = (
    "audit_seq",
    "position",
    "rollout_id",
    "check_name",
    "evaluated_at",
    "query",
    "prometheus_url",
    "response_digest",
    "canary_value",
    "baseline_value",
    "canary_samples",
    "baseline_samples",
    "statistic",
    "threshold",
    "verdict",
    "dry_run",
    "detail",
)


def _same(stored: Any, expected: Any) -> bool:
    both_floats = isinstance(stored, float) and isinstance(expected, float)
    if both_floats and (math.isnan(stored) or math.isnan(expected)):
        return math.isnan(stored) and math.isnan(expected)
    if isinstance(stored, bool) != isinstance(expected, bool) and None not in (stored, expected):
        return False
    return bool(stored == expected)


def _rollout_values(row: RolloutRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "namespace": row.namespace,
        "name": row.name,
        "isvc_uid": row.isvc_uid,
        "policy_name": row.policy_name,
        "mode": row.mode,
        "phase": row.phase,
        "step_index": row.step_index,
        "canary_revision": row.canary_revision,
        "stable_revision": row.stable_revision,
        "state": dict(row.state),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next_check_at": row.next_check_at,
        "active": row.active,
    }


def _rollout_from(m: Mapping[Any, Any]) -> RolloutRow:
    return RolloutRow(
        id=m["id"],
        namespace=m["namespace"],
        name=m["name"],
        isvc_uid=m["isvc_uid"],
        policy_name=m["policy_name"],
        mode=m["mode"],
        phase=m["phase"],
        step_index=m["step_index"],
        canary_revision=m["canary_revision"],
        stable_revision=m["stable_revision"],
        state=m["state"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        next_check_at=m["next_check_at"],
        active=bool(m["active"]),
        version=m["version"],
    )


def _stored_measurement(m: Mapping[Any, Any]) -> StoredMeasurement:
    return StoredMeasurement(
        audit_seq=m["audit_seq"],
        position=m["position"],
        rollout_id=m["rollout_id"],
        measurement=Measurement(
            check=m["check_name"],
            evaluated_at=m["evaluated_at"],
            query=m["query"],
            prometheus_url=m["prometheus_url"],
            response_digest=m["response_digest"],
            canary_value=m["canary_value"],
            baseline_value=m["baseline_value"],
            canary_samples=m["canary_samples"],
            baseline_samples=m["baseline_samples"],
            statistic=m["statistic"],
            threshold=m["threshold"],
            verdict=m["verdict"],
            dry_run=bool(m["dry_run"]),
            detail=json.loads(m["detail"]),
        ),
    )


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


class AuditStore(CommandQueue, ApprovalBook):
    """Hash-chained audit log and controller state on PostgreSQL (or SQLite for development).

    There is deliberately no API that deletes or rewrites audit data.
    """

    def __init__(self, engine: Engine, *, deadline: CallDeadline | None = None) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._where = _masked(engine.url)
        self._deadline = deadline

    @classmethod
    def from_url(cls, url: str, *, timeout: float | None = None) -> AuditStore:
        """Open a store: ``sqlite:///path/file.db`` or ``postgresql+psycopg://user@host/db``.

        No connection is made until the first operation. With ``timeout`` (seconds, on
        PostgreSQL), connecting, waiting for a pooled connection and each statement are
        bounded by it, and so is each whole call, client-side (:mod:`canary.audit.deadline`):
        a database that stops answering fails the call with :class:`StoreUnavailable`
        instead of blocking the caller.
        """
        parsed = _parse_url(url)
        if timeout is not None and not timeout > 0:
            raise AuditError(f"the database timeout must be positive, got {timeout}")
        deadline: CallDeadline | None = None
        try:
            if parsed.get_backend_name() == "sqlite":
                engine = create_engine(parsed, connect_args={"timeout": 30})
                _install_sqlite_hooks(engine, file_backed=bool(parsed.database))
            elif timeout is None:
                engine = create_engine(parsed, pool_pre_ping=True)
            else:
                millis = max(int(timeout * 1000), 1)
                engine = create_engine(
                    parsed,
                    pool_pre_ping=True,
                    pool_timeout=timeout,
                    connect_args={
                        "connect_timeout": max(math.ceil(timeout), 2),  # libpq's minimum
                        "options": f"-c statement_timeout={millis}",
                    },
                )
                deadline = CallDeadline(engine, timeout)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise AuditError(f"cannot open database {_masked(parsed)}: {exc}") from None
        return cls(engine, deadline=deadline)

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._where

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
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        bounded = self._deadline.call() if self._deadline is not None else nullcontext()
        try:
            with bounded, self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise _translate(exc, self._where) from exc

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers."""
        with self._tx(write=False) as conn:
            conn.execute(text("SELECT 1"))

    # ---------------------------------------------------------------------------- writes

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
        """Append ``entries`` and write ``rollout`` in one transaction (all or nothing).

        * ``fence``: the write happens only if the stored fence for ``fence.lease_name`` has
          exactly this epoch and holder, else :class:`FencedOut`.
        * ``rollout`` with ``expected_version=None`` inserts a new rollout (version 1);
          with ``expected_version=n`` it updates the stored rollout only if its version is
          ``n`` (it becomes ``n + 1``), else :class:`StaleRollout`.
        * ``command``: ``(id, state, result, at)`` settles a pending manual command in the
          same transaction, so a command is carried out exactly once (a command that is no
          longer pending raises :class:`StaleRollout`).
        * ``approvals``: approval rows upserted in the same transaction (the engine's
          requests and close requests for the approval worker).
        """
        if rollout is None and expected_version is not None:
            raise ValueError("expected_version given without a rollout")
        items = tuple(entries)
        with self._tx(write=True) as conn:
            if fence is not None:
                self._check_fence(conn, fence)
            self._lock_head(conn)
            if rollout is not None:
                self._write_rollout(conn, rollout, expected_version)
            if command is not None:
                self._settle_command(conn, *command)
            for approval in approvals:
                self._upsert_approval(conn, approval)
            return self._append(conn, items)

    def append(
        self, entries: Sequence[AuditEntry], fence: Fence | None = None
    ) -> list[AuditRecord]:
        """Append audit records (a :meth:`commit` without a rollout)."""
        return self.commit(entries, fence=fence)

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

    def _lock_head(self, conn: Connection) -> None:
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
        if self._dialect == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(HEAD_LOCK_KEY)))

    @staticmethod
    def _read_head(conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            select(AuditLog.seq, AuditLog.record_hash).order_by(AuditLog.seq.desc()).limit(1)
        ).first()
        return (0, GENESIS_HASH) if row is None else (row.seq, row.record_hash)

    def _append(self, conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        if not entries:
            return []
        seq, prev_hash = self._read_head(conn)
        records: list[AuditRecord] = []
        log_rows: list[dict[str, Any]] = []
        measurement_rows: list[dict[str, Any]] = []
        for entry in entries:
            seq += 1
            data = entry_body(seq, entry)
            body = canonical_json(data)
            record_hash = compute_record_hash(prev_hash, body)
            log_rows.append(
                {
                    "seq": seq,
                    "prev_hash": prev_hash,
                    "record_hash": record_hash,
                    "body": body,
                    **_projection(data),
                }
            )
            measurement_rows.extend(_measurement_rows(seq, data))
            records.append(AuditRecord(seq, prev_hash, record_hash, body, decode_body(data)))
            prev_hash = record_hash
        conn.execute(insert(AuditLog), log_rows)
        if measurement_rows:
            conn.execute(insert(MeasurementRow), measurement_rows)
        return records

    def _write_rollout(
        self, conn: Connection, rollout: RolloutRow, expected_version: int | None
    ) -> None:
        # Runs under the chain-head lock, so this read-check-write is not racy for writers
        # that go through commit(); the UPDATE's version condition guards the rest.
        stored = conn.execute(
            select(RolloutModel.version).where(RolloutModel.id == rollout.id)
        ).first()
        if expected_version is None and stored is not None:
            raise StaleRollout(f"rollout {rollout.id} already exists (version {stored.version})")
        if expected_version is not None and (stored is None or stored.version != expected_version):
            found = "it does not exist" if stored is None else f"stored is {stored.version}"
            raise StaleRollout(
                f"rollout {rollout.id}: expected version {expected_version}, {found}"
            )
        self._ensure_single_active(conn, rollout)
        values = _rollout_values(rollout)
        try:
            if expected_version is None:
                conn.execute(insert(RolloutModel).values(**values, version=1))
                return
            # RETURNING rather than rowcount: psycopg reports no rowcount here.
            updated = conn.execute(
                update(RolloutModel)
                .where(RolloutModel.id == rollout.id, RolloutModel.version == expected_version)
                .values(
                    **{k: v for k, v in values.items() if k not in ("id", "created_at")},
                    version=expected_version + 1,
                )
                .returning(RolloutModel.version)
            ).first()
        except IntegrityError as exc:
            if "uq_rollouts_active_target" in str(exc.orig) or "rollouts.namespace" in str(
                exc.orig
            ):
                raise ActiveRolloutExists(
                    f"another rollout is active for {rollout.namespace}/{rollout.name}"
                ) from exc
            raise
        if updated is None:
            raise StaleRollout(f"rollout {rollout.id} changed concurrently")

    @staticmethod
    def _ensure_single_active(conn: Connection, rollout: RolloutRow) -> None:
        if not rollout.active:
            return
        other = conn.execute(
            select(RolloutModel.id).where(
                RolloutModel.namespace == rollout.namespace,
                RolloutModel.name == rollout.name,
                RolloutModel.active.is_(True),
                RolloutModel.id != rollout.id,
            )
        ).first()
        if other is not None:
            raise ActiveRolloutExists(
                f"rollout {other.id} is already active for {rollout.namespace}/{rollout.name}"
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

    def head(self) -> tuple[int, str]:
        """(seq, record_hash) of the last record; ``(0, GENESIS_HASH)`` when empty."""
        with self._tx(write=False) as conn:
            return self._read_head(conn)

    def records(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` in order, at most ``limit`` of them."""
        stmt = (
            select(AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body)
            .where(AuditLog.seq > after_seq)
            .order_by(AuditLog.seq)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        out = []
        for row in rows:
            try:
                entry = decode_body(row.body)
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(
                    f"record {row.seq} cannot be decoded ({exc}); run `canary audit verify`"
                ) from exc
            out.append(AuditRecord(row.seq, row.prev_hash, row.record_hash, row.body, entry))
        return out

    def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__).where(RolloutModel.id == rollout_id)
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def active_rollouts(self) -> list[RolloutRow]:
        """All active rollouts, ordered by namespace and name."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(RolloutModel.__table__)
                .where(RolloutModel.active.is_(True))
                .order_by(RolloutModel.namespace, RolloutModel.name)
            ).all()
        return [_rollout_from(row._mapping) for row in rows]

    def rollout_for(self, namespace: str, name: str) -> RolloutRow | None:
        """The active rollout of an InferenceService, if any."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__).where(
                    RolloutModel.namespace == namespace,
                    RolloutModel.name == name,
                    RolloutModel.active.is_(True),
                )
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def last_rollout_for(self, namespace: str, name: str) -> RolloutRow | None:
        """The most recently created rollout of an InferenceService, active or finished."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__)
                .where(RolloutModel.namespace == namespace, RolloutModel.name == name)
                .order_by(RolloutModel.created_at.desc(), RolloutModel.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def rollouts(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        active: bool | None = None,
        limit: int = 200,
    ) -> list[RolloutRow]:
        """Rollouts, newest first, optionally filtered."""
        query = select(RolloutModel.__table__)
        if namespace is not None:
            query = query.where(RolloutModel.namespace == namespace)
        if name is not None:
            query = query.where(RolloutModel.name == name)
        if active is not None:
            query = query.where(RolloutModel.active.is_(active))
        query = query.order_by(RolloutModel.created_at.desc(), RolloutModel.id.desc())
        with self._tx(write=False) as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [_rollout_from(row._mapping) for row in rows]

    def measurements_for(self, rollout_id: str) -> list[StoredMeasurement]:
        """Measurements of a rollout, by evaluation time then record order."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(MeasurementRow.__table__)
                .where(MeasurementRow.rollout_id == rollout_id)
                .order_by(
                    MeasurementRow.evaluated_at, MeasurementRow.audit_seq, MeasurementRow.position
                )
            ).all()
        return [_stored_measurement(row._mapping) for row in rows]

    # ---------------------------------------------------------------------------- verify

    def verify(self, batch_size: int = 5000) -> ChainReport:
        """Check the whole chain, streaming ``batch_size`` records at a time.

        For each record: its seq follows the previous one (the first is 1); its
        ``prev_hash`` is the previous ``record_hash`` (``GENESIS_HASH`` first); its
        ``record_hash`` matches ``prev_hash + body``; the body's ``seq`` is the row's; the
        query columns and the measurement rows match the body. Stops at the first problem.

        Not detectable from the database alone: records removed from the *end* of the chain,
        or a chain rewritten from some point on with recomputed hashes. Both need the head
        ``(seq, record_hash)`` anchored outside the database (export it and compare).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        verifier = _ChainVerifier()
        log_cols = (
            AuditLog.seq,
            AuditLog.prev_hash,
            AuditLog.record_hash,
            AuditLog.body,
            *(getattr(AuditLog, c) for c in _PROJECTION_COLUMNS),
        )
        m_cols = tuple(getattr(MeasurementRow, c) for c in _MEASUREMENT_COLUMNS)
        with self._tx(write=False) as conn:
            last: int | None = None
            while True:
                stmt = select(*log_cols).order_by(AuditLog.seq).limit(batch_size)
                if last is not None:
                    stmt = stmt.where(AuditLog.seq > last)
                try:
                    rows = conn.execute(stmt).all()
                except (ValueError, TypeError) as exc:  # unreadable column values
                    return verifier.fail(verifier.expected, f"records cannot be read: {exc}")
                if not rows:
                    break
                top = rows[-1].seq
                m_stmt = select(*m_cols).where(MeasurementRow.audit_seq <= top)
                if last is not None:
                    m_stmt = m_stmt.where(MeasurementRow.audit_seq > last)
                grouped: dict[int, list[Mapping[Any, Any]]] = {}
                try:
                    m_rows = conn.execute(
                        m_stmt.order_by(MeasurementRow.audit_seq, MeasurementRow.position)
                    ).all()
                except (ValueError, TypeError) as exc:
                    return verifier.fail(verifier.expected, f"measurements cannot be read: {exc}")
                for m_row in m_rows:
                    grouped.setdefault(m_row.audit_seq, []).append(m_row._mapping)
                for row in rows:
                    problem = verifier.check(row._mapping, grouped.get(row.seq, []))
                    if problem is not None:
                        return problem
                # The batch is now known to be contiguous, so rows left over in `grouped`
                # can only point below record 1.
                orphans = sorted(set(grouped) - {row.seq for row in rows})
                if orphans:
                    return verifier.fail(
                        orphans[0],
                        f"measurement rows reference record {orphans[0]}, which does not exist",
                    )
                last = top
                if len(rows) < batch_size:
                    break
            stray = conn.execute(
                select(func.min(MeasurementRow.audit_seq)).where(
                    MeasurementRow.audit_seq > (last or 0)
                )
            ).scalar()
            if stray is not None:
                return verifier.fail(
                    stray, f"measurement rows reference record {stray}, which does not exist"
                )
        return verifier.success()


class _ChainVerifier:
    """Incremental state of :meth:`AuditStore.verify`."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev_hash = GENESIS_HASH
        self.checked = 0

    def fail(self, seq: int, problem: str) -> ChainReport:
        return ChainReport(
            ok=False,
            records_checked=self.checked,
            head_hash=self.prev_hash,
            first_bad_seq=seq,
            problem=problem,
        )

    def success(self) -> ChainReport:
        return ChainReport(True, self.checked, self.prev_hash, None, None)

    def check(
        self, row: Mapping[Any, Any], measurements: Sequence[Mapping[Any, Any]]
    ) -> ChainReport | None:
        seq: int = row["seq"]
        if seq != self.expected:
            if seq > self.expected:
                return self.fail(
                    self.expected, f"record {seq}: seq {self.expected} is missing (record deleted?)"
                )
            return self.fail(seq, f"record {seq}: unexpected seq, expected {self.expected}")
        body: str = row["body"]
        if compute_record_hash(row["prev_hash"], body) != row["record_hash"]:
            return self.fail(
                seq,
                f"record {seq}: stored record_hash does not match its contents (field changed?)",
            )
        if row["prev_hash"] != self.prev_hash:
            if seq == 1:
                return self.fail(seq, "record 1: prev_hash is not the genesis hash")
            return self.fail(
                seq,
                f"record {seq}: prev_hash does not match record {seq - 1} "
                "(record inserted, deleted or reordered?)",
            )
        try:
            data = parse_body(body)
            decode_body(data)
            projection = _projection(data)
            expected_rows = _measurement_rows(seq, data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self.fail(seq, f"record {seq}: body is not a valid audit record ({exc})")
        if data.get("seq") != seq:
            return self.fail(
                seq, f"record {seq}: its body says seq {data.get('seq')!r} (record renumbered?)"
            )
        for column in _PROJECTION_COLUMNS:
            if not _same(row[column], projection[column]):
                return self.fail(
                    seq,
                    f"record {seq}: column {column} is {row[column]!r} but the record says "
                    f"{projection[column]!r} (column edited?)",
                )
        if len(measurements) != len(expected_rows):
            return self.fail(
                seq,
                f"record {seq}: {len(measurements)} measurement rows stored but the record "
                f"lists {len(expected_rows)} (measurement row added or deleted?)",
            )
        for stored, wanted in zip(measurements, expected_rows, strict=True):
            for column in _MEASUREMENT_COLUMNS:
                if not _same(stored[column], wanted[column]):
                    return self.fail(
                        seq,
                        f"record {seq}: measurement {wanted['position']} column {column} is "
                        f"{stored[column]!r} but the record says {wanted[column]!r} "
                        "(measurement row edited?)",
                    )
        self.expected = seq + 1
        self.prev_hash = row["record_hash"]
        self.checked += 1
        return None


def _ensure_wal(cursor: Any, attempts: int = 50) -> None:
    """Put the database file in WAL mode (it stays so). Only a connection that finds it in
    another mode converts it, and a conversion racing another one can be refused with
    "database is locked" without SQLite's busy handler ever waiting: that is retried."""
    for attempt in range(attempts):
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()
            if mode is not None and str(mode[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _install_sqlite_hooks(engine: Engine, *, file_backed: bool) -> None:
    """Foreign keys on; BEGIN IMMEDIATE for writes so concurrent writers serialise."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        if file_backed:
            _ensure_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
