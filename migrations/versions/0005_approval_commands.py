"""Manual commands include the decisions of a Kubernetes approval gate: ``approve`` and
``reject`` (``canary approve|reject``), queued for the leader like every other command.

Revision ID: 0005
Revises: 0004
Created: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "command IN ('pause', 'resume', 'promote', 'abort', 'start')"
AFTER = "command IN ('pause', 'resume', 'promote', 'abort', 'start', 'approve', 'reject')"


def _allow(condition: str) -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_constraint(op.f("ck_commands_command"), type_="check")
        batch.create_check_constraint(op.f("ck_commands_command"), condition)


def upgrade() -> None:
    _allow(AFTER)


def downgrade() -> None:
    # An approval decision has no older equivalent; its queue rows go, its audit records stay.
    op.execute("DELETE FROM commands WHERE command IN ('approve', 'reject')")
    _allow(BEFORE)
