"""Retention: ``audit_purges``, and the append-only triggers let a recorded purge through.

``audit_purges`` holds one row per purge of the audit trail beyond its retention (``canary
audit purge``, :mod:`canary.audit.retention`): the last record removed (``through_seq``) and
its hash, the signed checkpoint that vouches for that hash, when, by which role, how many
records, the cutoff and retention used, and the seq of the chained ``audit.purged`` record.
It is append-only like the other audit tables (UPDATE, DELETE and TRUNCATE rejected, the
triggers ``ENABLE ALWAYS``); the application role may only read it (``canary db grant``).

The trigger function every append-only table calls, ``ksc_reject_audit_change``, is replaced
by one that lets exactly one thing through: a DELETE of an ``audit_log`` or ``measurements``
row whose seq is at or below the highest ``through_seq`` in ``audit_purges`` of the same
schema. A purge inserts that row and deletes in one transaction, so no trigger is ever
disabled. UPDATE and TRUNCATE stay refused everywhere, and so does any DELETE above the
floor. (The application role has no DELETE privilege at all, so the trigger never decides
for it.) A table called ``audit_purges`` that shadows the real one through the search path,
a temporary one for instance, counts for nothing: only rows of the schema's own table lower
the guard.

SQLite: the ``*_no_delete`` triggers of ``audit_log`` and ``measurements`` get the same
condition (``WHEN OLD.seq > (SELECT max(through_seq) ...)``); ``audit_purges`` gets the two
triggers the others have.

The downgrade restores the previous function and triggers and drops the table; it refuses
when a purge was made (the older verification would report the purged records as deleted).

Revision ID: 0008
Revises: 0007
Created: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "audit_purges"
REJECT_FUNCTION = "ksc_reject_audit_change"  # created by 0001; every append-only table calls it
TRIGGER_SUFFIXES = ("append_only", "no_truncate")
_MESSAGE = "audit tables are append-only: % on % rejected"

# The body 0001 created, restored by the downgrade.
_REJECT_ALL = f"""
CREATE OR REPLACE FUNCTION {REJECT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""

# OLD.seq / OLD.audit_seq: PL/pgSQL compiles a trigger function per table and reads a
# field of OLD only when the statement runs, so each table's branch names its own column.
_REJECT_ALL_BUT_PURGED = """
CREATE OR REPLACE FUNCTION ksc_reject_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_seq bigint;
BEGIN
    IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW'
            AND TG_TABLE_NAME IN ('audit_log', 'measurements') THEN
        IF TG_TABLE_NAME = 'audit_log' THEN
            row_seq := OLD.seq;
        ELSE
            row_seq := OLD.audit_seq;
        END IF;
        IF row_seq <= (
            SELECT coalesce(max(p.through_seq), 0) FROM audit_purges p
            WHERE p.tableoid = to_regclass(quote_ident(TG_TABLE_SCHEMA) || '.audit_purges')
        ) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit tables are append-only: % on % rejected',
            TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only records a purge covers (audit_purges) may be deleted: '
                         'canary audit purge';
    END IF;
    RAISE EXCEPTION 'audit tables are append-only: % on % rejected',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""


def _sqlite_no_delete(table: str, column: str | None) -> str:
    condition = (
        ""
        if column is None
        else f"WHEN OLD.{column} > (SELECT coalesce(max(through_seq), 0) FROM {TABLE}) "  # noqa: S608
    )
    return (
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {condition}"
        f"BEGIN SELECT RAISE(ABORT, 'audit tables are append-only: DELETE on {table} "
        "rejected'); END"
    )


_PURGEABLE = {"audit_log": "seq", "measurements": "audit_seq"}


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("through_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("through_hash", sa.CHAR(length=64), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("purged_at", _ts(), nullable=False),
        sa.Column("purged_by", sa.Text(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("cutoff", _ts(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("record_seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("through_seq >= 1", name=op.f("ck_audit_purges_seq_positive")),
        sa.CheckConstraint("records >= 1", name=op.f("ck_audit_purges_records_positive")),
        sa.CheckConstraint("record_seq > through_seq", name=op.f("ck_audit_purges_record_after")),
        sa.PrimaryKeyConstraint("through_seq", name=op.f("pk_audit_purges")),
        sa.UniqueConstraint("record_seq", name=op.f("uq_audit_purges_record_seq")),
    )
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(_REJECT_ALL_BUT_PURGED)
        op.execute(
            f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
            f"FOR EACH ROW EXECUTE FUNCTION {REJECT_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {REJECT_FUNCTION}()"
        )
        for suffix in TRIGGER_SUFFIXES:
            op.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {TABLE}_{suffix}")
    elif dialect == "sqlite":
        for table, column in _PURGEABLE.items():
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(_sqlite_no_delete(table, column))
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_update BEFORE UPDATE ON {TABLE} BEGIN SELECT "
            f"RAISE(ABORT, 'audit tables are append-only: UPDATE on {TABLE} rejected'); END"
        )
        op.execute(_sqlite_no_delete(TABLE, None))


def downgrade() -> None:
    context = op.get_context()
    if not context.as_sql:
        purges = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_purges")).scalar()
        if purges:
            raise RuntimeError(
                f"cannot downgrade below 0008: the audit trail was purged (audit_purges has "
                f"{purges} rows), and without audit_purges the chain's verification would "
                "report the purged records as deleted"
            )
    dialect = context.dialect.name
    if dialect == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE}")
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE}")
        op.execute(_REJECT_ALL)
    elif dialect == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_delete")
        for table in _PURGEABLE:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(_sqlite_no_delete(table, None))
    op.drop_table(TABLE)
