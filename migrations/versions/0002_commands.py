"""Manual command queue: the CLI and every replica enqueue, the leader carries out.

Revision ID: 0002
Revises: 0001
Created: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "command IN ('pause', 'resume', 'promote', 'abort', 'start')",
            name=op.f("ck_commands_command"),
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'accepted', 'rejected', 'failed')",
            name=op.f("ck_commands_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commands")),
    )
    op.create_index(op.f("ix_commands_state_requested_at"), "commands", ["state", "requested_at"])


def downgrade() -> None:
    op.drop_index("ix_commands_state_requested_at", table_name="commands")
    op.drop_table("commands")
