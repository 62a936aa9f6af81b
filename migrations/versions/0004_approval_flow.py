"""Approvals carry what the gates need between the controller's passes: who may not approve
(the requesters), the window an approval must fall in, which attempt this is (one row per
attempt), the verified
decision with its evidence, the change's close request and when it was carried out, the
latest callback that asked for a re-read, work-note and refusal bookkeeping, and the people
asked. The gate ``kubernetes`` joins ``webhook`` and ``servicenow``.

Revision ID: 0004
Revises: 0003
Created: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEW_GATES = "gate IN ('webhook', 'servicenow', 'kubernetes')"
_OLD_GATES = "gate IN ('webhook', 'servicenow')"


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("percent", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("requesters", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(sa.Column("window_start", _ts(), nullable=True))
        batch.add_column(sa.Column("window_end", _ts(), nullable=True))
        batch.add_column(sa.Column("decision", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("recheck_requested_at", _ts(), nullable=True))
        batch.add_column(sa.Column("trigger", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("noted_at", _ts(), nullable=True))
        batch.add_column(sa.Column("noted_digest", sa.Text(), nullable=True))
        batch.add_column(sa.Column("close_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("closed_at", _ts(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("refused_digest", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("asked", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.drop_constraint(op.f("ck_approvals_gate"), type_="check")
        batch.create_check_constraint(op.f("ck_approvals_gate"), _NEW_GATES)
        # one row per attempt: an approval asked again keeps its earlier change's row
        batch.drop_constraint(op.f("uq_approvals_rollout_id_revision_step_index"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_approvals_rollout_id_revision_step_index_attempt"),
            ["rollout_id", "revision", "step_index", "attempt"],
        )
    op.create_index(op.f("ix_approvals_change_sys_id"), "approvals", ["change_sys_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approvals_change_sys_id"), table_name="approvals")
    op.execute("DELETE FROM approvals WHERE attempt > 1")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_constraint(
            op.f("uq_approvals_rollout_id_revision_step_index_attempt"), type_="unique"
        )
        batch.create_unique_constraint(
            op.f("uq_approvals_rollout_id_revision_step_index"),
            ["rollout_id", "revision", "step_index"],
        )
        batch.drop_constraint(op.f("ck_approvals_gate"), type_="check")
        batch.create_check_constraint(op.f("ck_approvals_gate"), _OLD_GATES)
        for column in (
            "asked", "refused_digest", "last_error", "closed_at", "close_note", "noted_digest",
            "noted_at", "trigger", "recheck_requested_at", "decision", "window_end",
            "window_start", "requesters", "percent", "attempt",
        ):  # fmt: skip
            batch.drop_column(column)
