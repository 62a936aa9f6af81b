"""SQLAlchemy models of the audit database.

Tables are created by the Alembic migrations in ``migrations/`` only; these models are the
reference the migrations are checked against (``tests/integration/test_migrations.py``).

Append-only (protected by triggers): ``audit_log``, ``measurements``, ``webhook_deliveries``,
``audit_checkpoints``, ``audit_purges``. The one exception: ``audit_log`` and
``measurements`` rows at or below the highest ``audit_purges.through_seq`` may be deleted (what
``canary audit purge`` does, as the owner role, in the transaction that adds that row).
Mutable controller state: ``rollouts``, ``approvals``, ``leader_fence``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from sqlalchemy.sql.type_api import _BindProcessorType

__all__ = [
    "APPEND_ONLY_TABLES",
    "ApprovalModel",
    "AuditLog",
    "Base",
    "CheckpointRow",
    "CommandModel",
    "LeaderFenceRow",
    "MeasurementRow",
    "PurgeModel",
    "RolloutModel",
    "SafeFloat",
    "UTCDateTime",
    "WebhookDeliveryRow",
]

APPEND_ONLY_TABLES = (
    "audit_log",
    "measurements",
    "webhook_deliveries",
    "audit_checkpoints",
    "audit_purges",
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back as an aware UTC datetime.

    Naive datetimes are rejected on the way in. SQLite has no zone support, so values are
    stored there as naive UTC and tagged as UTC when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class SafeFloat(TypeDecorator[float]):
    """A double that keeps NaN on SQLite (which would otherwise store NaN as NULL).

    On SQLite NaN is bound as the text ``'NaN'`` (kept as TEXT by SQLite's dynamic typing)
    and read back as a float NaN. PostgreSQL stores NaN natively.
    """

    impl = Double()
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[float] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: Any) -> Any:
            if value is None:
                return None
            number = float(value)
            return "NaN" if math.isnan(number) else number

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> float | None:
        if value is None:
            return None
        return float(value)  # float("NaN") is NaN


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuditLog(Base):
    """One hash-chained audit record. ``body`` is the exact hashed canonical JSON text
    (``Text``, never JSON/JSONB, which would reorder keys); the other columns after
    ``body`` are projections of it for querying, checked by ``AuditStore.verify``."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(CHAR(64))
    record_hash: Mapped[str] = mapped_column(CHAR(64), unique=True)
    body: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(Text)
    actor_kind: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[str] = mapped_column(Text)
    rollout_id: Mapped[str | None] = mapped_column(Text)
    namespace: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    canary_revision: Mapped[str | None] = mapped_column(Text)
    stable_revision: Mapped[str | None] = mapped_column(Text)
    change_number: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("seq >= 1", name="seq_positive"),
        Index("ix_audit_log_target_time", "namespace", "name", "recorded_at"),
        Index("ix_audit_log_target_action_time", "namespace", "name", "action", "recorded_at"),
        Index("ix_audit_log_rollout_id_seq", "rollout_id", "seq"),
        Index("ix_audit_log_action", "action"),
        Index("ix_audit_log_recorded_at", "recorded_at"),
    )


class MeasurementRow(Base):
    """One metric evaluation, position ``position`` in record ``audit_seq``'s list."""

    __tablename__ = "measurements"

    audit_seq: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("audit_log.seq"), primary_key=True, autoincrement=False
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rollout_id: Mapped[str | None] = mapped_column(Text)
    check_name: Mapped[str] = mapped_column(Text)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    query: Mapped[str] = mapped_column(Text)
    prometheus_url: Mapped[str] = mapped_column(Text)
    response_digest: Mapped[str] = mapped_column(Text)
    canary_value: Mapped[float | None] = mapped_column(SafeFloat)
    baseline_value: Mapped[float | None] = mapped_column(SafeFloat)
    canary_samples: Mapped[int | None] = mapped_column(BigInteger)
    baseline_samples: Mapped[int | None] = mapped_column(BigInteger)
    statistic: Mapped[float | None] = mapped_column(SafeFloat)
    threshold: Mapped[float | None] = mapped_column(SafeFloat)
    verdict: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON text

    __table_args__ = (
        Index("ix_measurements_rollout_check_time", "rollout_id", "check_name", "evaluated_at"),
    )


class WebhookDeliveryRow(Base):
    """A received webhook, deduplicated on ``webhook_id``."""

    __tablename__ = "webhook_deliveries"

    webhook_id: Mapped[str] = mapped_column(Text, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(Text)
    payload_digest: Mapped[str] = mapped_column(Text)
    signature_valid: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_deliveries_received_at", "received_at"),)


class RolloutModel(Base):
    """The controller's live state for one rollout (mutable, optimistic ``version``).

    ``canary_storage_uri`` and ``stable_storage_uri`` are projections of the ``state``
    document (``machine.canary.storage_uri``, ``machine.stable.storage_uri``), written with
    it (:func:`canary.audit.rollouts.storage_uris`) so that the model filter of the history
    queries reads indexed columns, not every row's document."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    namespace: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    isvc_uid: Mapped[str | None] = mapped_column(Text)
    policy_name: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(Text)
    phase: Mapped[str] = mapped_column(Text)
    step_index: Mapped[int] = mapped_column(Integer)
    canary_revision: Mapped[str | None] = mapped_column(Text)
    stable_revision: Mapped[str | None] = mapped_column(Text)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(Integer)
    canary_storage_uri: Mapped[str | None] = mapped_column(Text)
    stable_storage_uri: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("mode IN ('knative', 'standard')", name="mode"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("ix_rollouts_next_check_at", "next_check_at"),
        Index("ix_rollouts_canary_revision", "canary_revision"),
        Index("ix_rollouts_stable_revision", "stable_revision"),
        Index("ix_rollouts_canary_storage_uri", "canary_storage_uri"),
        Index("ix_rollouts_stable_storage_uri", "stable_storage_uri"),
        Index(
            "uq_rollouts_active_target",
            "namespace",
            "name",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )


# Newest first, the history queries' order: DESC needs the columns, so declared after the class.
Index("ix_rollouts_created_at_id", RolloutModel.created_at.desc(), RolloutModel.id.desc())
Index(
    "ix_rollouts_target_created_at_id",
    RolloutModel.namespace,
    RolloutModel.name,
    RolloutModel.created_at.desc(),
    RolloutModel.id.desc(),
)
Index(
    "ix_rollouts_namespace_created_at_id",
    RolloutModel.namespace,
    RolloutModel.created_at.desc(),
    RolloutModel.id.desc(),
)


class ApprovalModel(Base):
    """One approval gate instance, keyed by (rollout, revision, step)."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(Text, ForeignKey("rollouts.id"))
    revision: Mapped[str] = mapped_column(Text)
    step_index: Mapped[int] = mapped_column(Integer)
    gate: Mapped[str] = mapped_column(Text)
    change_number: Mapped[str | None] = mapped_column(Text)
    change_sys_id: Mapped[str | None] = mapped_column(Text)
    risk_owner_group: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(Text)
    approver: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_code: Mapped[str | None] = mapped_column(Text)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    percent: Mapped[int | None] = mapped_column(Integer)
    requesters: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    recheck_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    noted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    noted_digest: Mapped[str | None] = mapped_column(Text)
    close_note: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    refused_digest: Mapped[str | None] = mapped_column(Text)
    asked: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))

    __table_args__ = (
        UniqueConstraint("rollout_id", "revision", "step_index", "attempt"),
        CheckConstraint("gate IN ('webhook', 'servicenow', 'kubernetes')", name="gate"),
        CheckConstraint(
            "state IN ('pending', 'approved', 'rejected', 'expired', 'cancelled')", name="state"
        ),
        Index("ix_approvals_state_deadline", "state", "deadline"),
        Index("ix_approvals_change_sys_id", "change_sys_id"),
    )


class LeaderFenceRow(Base):
    """The highest leader epoch seen per lease; fenced commits must match it exactly."""

    __tablename__ = "leader_fence"

    lease_name: Mapped[str] = mapped_column(Text, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(Text)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CommandModel(Base):
    """A manual command queued for the leader (mutable: its state moves once, from
    ``pending`` to a result). The audit trail of what it caused is in ``audit_log``."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    namespace: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    command: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    actor_uid: Mapped[str | None] = mapped_column(Text)
    actor_groups: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))
    reason: Mapped[str] = mapped_column(Text)
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(
            "command IN ('pause', 'resume', 'promote', 'abort', 'start', 'approve', 'reject')",
            name="command",
        ),
        CheckConstraint("state IN ('pending', 'accepted', 'rejected', 'failed')", name="state"),
        Index("ix_commands_state_requested_at", "state", "requested_at"),
    )


class CheckpointRow(Base):
    """A signed checkpoint of the chain's head (the controller's copy; see
    :mod:`canary.audit.checkpoint`). ``statement`` is the exact signed text."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_hash: Mapped[str] = mapped_column(CHAR(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(Text)
    statement: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)

    __table_args__ = (CheckConstraint("seq >= 1", name="seq_positive"),)


class PurgeModel(Base):
    """One purge of the audit trail beyond its retention (``canary audit purge``, see
    :mod:`canary.audit.retention`): records 1 to ``through_seq`` are gone, the last of them had
    the hash ``through_hash``, and the signed checkpoint (``statement``, ``signature``,
    ``key_id``) vouches for that hash. ``record_seq`` is the chained ``audit.purged`` record
    that says the same."""

    __tablename__ = "audit_purges"

    through_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    through_hash: Mapped[str] = mapped_column(CHAR(64))
    statement: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(Text)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_by: Mapped[str] = mapped_column(Text)
    records: Mapped[int] = mapped_column(BigInteger)
    cutoff: Mapped[datetime] = mapped_column(UTCDateTime)
    retention_days: Mapped[int] = mapped_column(Integer)
    record_seq: Mapped[int] = mapped_column(BigInteger, unique=True)

    __table_args__ = (
        CheckConstraint("through_seq >= 1", name="seq_positive"),
        CheckConstraint("records >= 1", name="records_positive"),
        CheckConstraint("record_seq > through_seq", name="record_after"),
    )
