"""Initial schema: hash-chained audit log, measurements, webhook deliveries, rollouts,
approvals and the leader fence; triggers that make the audit tables append-only.

Revision ID: 0001
Revises:
Created: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = ("audit_log", "measurements", "webhook_deliveries")
REJECT_FUNCTION = "ksc_reject_audit_change"


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("prev_hash", sa.CHAR(64), nullable=False),
        sa.Column("record_hash", sa.CHAR(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("recorded_at", _ts(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor_kind", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=False),
        sa.Column("rollout_id", sa.Text(), nullable=True),
        sa.Column("namespace", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("canary_revision", sa.Text(), nullable=True),
        sa.Column("stable_revision", sa.Text(), nullable=True),
        sa.Column("change_number", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_audit_log_seq_positive")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("record_hash", name=op.f("uq_audit_log_record_hash")),
    )
    op.create_index(
        op.f("ix_audit_log_target_time"), "audit_log", ["namespace", "name", "recorded_at"]
    )
    op.create_index(op.f("ix_audit_log_rollout_id"), "audit_log", ["rollout_id"])
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])
    op.create_index(op.f("ix_audit_log_recorded_at"), "audit_log", ["recorded_at"])

    op.create_table(
        "measurements",
        sa.Column("audit_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("rollout_id", sa.Text(), nullable=True),
        sa.Column("check_name", sa.Text(), nullable=False),
        sa.Column("evaluated_at", _ts(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("prometheus_url", sa.Text(), nullable=False),
        sa.Column("response_digest", sa.Text(), nullable=False),
        sa.Column("canary_value", sa.Double(), nullable=True),
        sa.Column("baseline_value", sa.Double(), nullable=True),
        sa.Column("canary_samples", sa.BigInteger(), nullable=True),
        sa.Column("baseline_samples", sa.BigInteger(), nullable=True),
        sa.Column("statistic", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_seq"], ["audit_log.seq"], name=op.f("fk_measurements_audit_seq_audit_log")
        ),
        sa.PrimaryKeyConstraint("audit_seq", "position", name=op.f("pk_measurements")),
    )
    op.create_index(
        op.f("ix_measurements_rollout_check_time"),
        "measurements",
        ["rollout_id", "check_name", "evaluated_at"],
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("payload_digest", sa.Text(), nullable=False),
        sa.Column("signature_valid", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("webhook_id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        op.f("ix_webhook_deliveries_received_at"), "webhook_deliveries", ["received_at"]
    )

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("isvc_uid", sa.Text(), nullable=True),
        sa.Column("policy_name", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("canary_revision", sa.Text(), nullable=True),
        sa.Column("stable_revision", sa.Text(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("next_check_at", _ts(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("mode IN ('knative', 'standard')", name=op.f("ck_rollouts_mode")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_rollouts_version_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_next_check_at"), "rollouts", ["next_check_at"])
    op.create_index(
        op.f("uq_rollouts_active_target"),
        "rollouts",
        ["namespace", "name"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )

    op.create_table(
        "approvals",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("rollout_id", sa.Text(), nullable=False),
        sa.Column("revision", sa.Text(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("gate", sa.Text(), nullable=False),
        sa.Column("change_number", sa.Text(), nullable=True),
        sa.Column("change_sys_id", sa.Text(), nullable=True),
        sa.Column("risk_owner_group", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", _ts(), nullable=False),
        sa.Column("deadline", _ts(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("approver", sa.Text(), nullable=True),
        sa.Column("decided_at", _ts(), nullable=True),
        sa.Column("close_code", sa.Text(), nullable=True),
        sa.Column("last_checked_at", _ts(), nullable=True),
        sa.CheckConstraint("gate IN ('webhook', 'servicenow')", name=op.f("ck_approvals_gate")),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'rejected', 'expired', 'cancelled')",
            name=op.f("ck_approvals_state"),
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_approvals_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint(
            "rollout_id",
            "revision",
            "step_index",
            name=op.f("uq_approvals_rollout_id_revision_step_index"),
        ),
    )
    op.create_index(op.f("ix_approvals_state_deadline"), "approvals", ["state", "deadline"])

    op.create_table(
        "leader_fence",
        sa.Column("lease_name", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("lease_name", name=op.f("pk_leader_fence")),
    )

    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {REJECT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit tables are append-only: % on % rejected',
                    TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {REJECT_FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {REJECT_FUNCTION}()"
            )
    elif dialect == "sqlite":
        # Protection against accidents only: anyone who can write the file can drop these.
        for table in APPEND_ONLY_TABLES:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} "
                    f"ON {table} BEGIN SELECT RAISE(ABORT, "
                    f"'audit tables are append-only: {operation} on {table} rejected'); END"
                )


def _drop_append_only_triggers() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {REJECT_FUNCTION}()")
    elif dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")


def downgrade() -> None:
    _drop_append_only_triggers()
    op.drop_table("leader_fence")
    op.drop_index("ix_approvals_state_deadline", table_name="approvals")
    op.drop_table("approvals")
    op.drop_index("uq_rollouts_active_target", table_name="rollouts")
    op.drop_index("ix_rollouts_next_check_at", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_webhook_deliveries_received_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_measurements_rollout_check_time", table_name="measurements")
    op.drop_table("measurements")
    op.drop_index("ix_audit_log_recorded_at", table_name="audit_log")
    op.drop_index("ix_audit_log_action", table_name="audit_log")
    op.drop_index("ix_audit_log_rollout_id", table_name="audit_log")
    op.drop_index("ix_audit_log_target_time", table_name="audit_log")
    op.drop_table("audit_log")
