"""Manual commands carry the identity the apiserver authenticated: the user's UID and groups
beside the user name (``actor``), as a TokenReview returned them.

Revision ID: 0003
Revises: 0002
Created: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("actor_uid", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("actor_groups", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("actor_groups")
        batch.drop_column("actor_uid")
