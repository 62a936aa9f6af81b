"""The append-only triggers fire in every session, replicas' included (``ENABLE ALWAYS``).

An ordinary trigger does not fire in a session that has set ``session_replication_role =
replica``, which any superuser may do: the trigger that rejects UPDATE, DELETE and TRUNCATE on
an audit table would then let them through without a trace. ``ENABLE ALWAYS`` makes them fire
whatever the session's replication role. (A table's owner or a superuser can still disable or
drop a trigger; that is why the controller runs as an application role that owns nothing:
``canary db grant``.) The downgrade restores the plain ``ENABLE``.

SQLite has no replication role and no trigger states: nothing changes there.

Revision ID: 0007
Revises: 0006
Created: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = ("audit_log", "measurements", "webhook_deliveries", "audit_checkpoints")
TRIGGER_SUFFIXES = ("append_only", "no_truncate")


def _set_triggers(state: str) -> None:
    if op.get_context().dialect.name != "postgresql":
        return  # SQLite: nothing to do (see the module's docstring)
    for table in APPEND_ONLY_TABLES:
        for suffix in TRIGGER_SUFFIXES:
            op.execute(f"ALTER TABLE {table} {state} TRIGGER {table}_{suffix}")


def upgrade() -> None:
    _set_triggers("ENABLE ALWAYS")


def downgrade() -> None:
    _set_triggers("ENABLE")
