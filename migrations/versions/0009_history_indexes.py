"""The auditor's queries at scale: the storageUris of a rollout as columns, and the indexes
the history and point-in-time queries use (``canary.audit.history``).

``rollouts`` gets ``canary_storage_uri`` and ``stable_storage_uri`` (nullable text),
projections of the state document's ``machine.canary.storage_uri`` and
``machine.stable.storage_uri`` (a string there, else NULL), filled here from every existing
row and written by the controller with the document from now on. The model filter of
``find_rollouts`` and ``point_in_time_by_model`` then reads indexed columns instead of every
row's document. The indexes, each for the queries named:

* ``rollouts (created_at DESC, id DESC)``: ``find_rollouts`` without a service, newest first
  and its keyset pages;
* ``rollouts (namespace, name, created_at DESC, id DESC)``: ``find_rollouts`` of a service,
  and the controller's last rollout of a service;
* ``rollouts (namespace, created_at DESC, id DESC)``: ``find_rollouts`` of a namespace
  (without it, the namespace's rollouts are read and sorted: about 7,200 of them per
  namespace in the 10-million-record benchmark);
* ``rollouts`` ``canary_revision``, ``stable_revision``, ``canary_storage_uri``,
  ``stable_storage_uri`` (one each): the model filter, an OR of the four;
* ``audit_log (rollout_id, seq)``: a rollout's timeline in chain order (``rollout_records``)
  and the other lookups by rollout; it replaces ``ix_audit_log_rollout_id`` (``rollout_id``
  alone), which every query that used it can use as well;
* ``audit_log (namespace, name, action, recorded_at)``: a service's last record of an action
  by a time (the point-in-time window's start, the promotion of the stable revision).

**What it costs on PostgreSQL.** It runs in one transaction, and every lock it takes is held
until the commit. In order:

1. the two ``audit_log`` indexes: each build reads every record and sorts (in
   ``maintenance_work_mem``, spilling to disk beyond it), under a SHARE lock: records can be
   read, but no record can be appended until the commit;
2. the two columns: an ACCESS EXCLUSIVE lock on ``rollouts`` (nothing reads or writes it
   until the commit); adding a NULL column rewrites nothing;
3. the backfill: a new version of every row whose document has a storageUri, so
   ``rollouts`` grows to up to twice its size (the old versions' room is reused once a
   VACUUM has reclaimed it; the file does not shrink);
4. the seven ``rollouts`` indexes and ``ANALYZE rollouts`` (statistics of the new columns for
   the planner);
5. the DROP of ``ix_audit_log_rollout_id``: an ACCESS EXCLUSIVE lock on ``audit_log``, taken
   last so that reading records is blocked only from there to the commit.

Measured on the benchmark's data set of 1,000,000 records and 30,662 rollouts (a 2-core
machine under load from other jobs, ``maintenance_work_mem`` 64 MB, PostgreSQL 15): about
6 s, of which the ``audit_log`` indexes 2.8 s, the backfill 1.9 s and the ``rollouts``
indexes 0.8 s; ``rollouts`` went from 59 to 119 MiB. The time grows with the records (the
``audit_log`` indexes, sorts that spill past ``maintenance_work_mem``) and with the
rollouts (the backfill); ``bench/audit.py`` reports it for its 10-million-record database.

So stop the controller before migrating (scale it to zero; its commits would otherwise wait
on the locks), and run it as the owner role. Stopped for a second reason too: a controller
of an older version, still running after the migration, would write rollouts without the new
columns, and the model filter would miss them. CREATE INDEX CONCURRENTLY is not used: it
cannot run inside a transaction. VACUUM ``rollouts`` afterwards (autovacuum will in time).

SQLite: the same columns, backfill (``json_type`` and ``json_extract``) and indexes.

The downgrade recreates ``ix_audit_log_rollout_id``, then drops the new indexes and
columns.

Revision ID: 0009
Revises: 0008
Created: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, columns), each created in this order and dropped in the reverse
AUDIT_LOG_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_audit_log_rollout_id_seq", ("rollout_id", "seq")),
    ("ix_audit_log_target_action_time", ("namespace", "name", "action", "recorded_at")),
)
ROLLOUT_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_rollouts_created_at_id", ("created_at DESC", "id DESC")),
    ("ix_rollouts_target_created_at_id", ("namespace", "name", "created_at DESC", "id DESC")),
    ("ix_rollouts_namespace_created_at_id", ("namespace", "created_at DESC", "id DESC")),
    ("ix_rollouts_canary_revision", ("canary_revision",)),
    ("ix_rollouts_stable_revision", ("stable_revision",)),
    ("ix_rollouts_canary_storage_uri", ("canary_storage_uri",)),
    ("ix_rollouts_stable_storage_uri", ("stable_storage_uri",)),
)
REPLACED = "ix_audit_log_rollout_id"  # (rollout_id), by ix_audit_log_rollout_id_seq


def _columns(columns: tuple[str, ...]) -> list[str | sa.TextClause]:
    return [sa.text(c) if " " in c else c for c in columns]


# A string at that place of the document, else NULL (the rule of
# canary.audit.rollouts.storage_uris). PostgreSQL: state is json, which each operator parses
# anew, so each document is parsed once, into jsonb, in a subquery that OFFSET 0 keeps from
# being merged into its parent (which would cast once per use), and the values are picked in
# a MATERIALIZED CTE for the same reason (30,662 rollouts: 2.0 s, against 3.2 s with the json
# operators at each use and 6.7 s without the two fences). Rows without a storageUri are not
# rewritten.
POSTGRESQL_BACKFILL = """
WITH found AS MATERIALIZED (
    SELECT id,
           CASE WHEN jsonb_typeof(d #> '{machine,canary,storage_uri}') = 'string'
                THEN d #>> '{machine,canary,storage_uri}' END AS canary,
           CASE WHEN jsonb_typeof(d #> '{machine,stable,storage_uri}') = 'string'
                THEN d #>> '{machine,stable,storage_uri}' END AS stable
    FROM (SELECT id, CAST(state AS jsonb) AS d FROM rollouts OFFSET 0) AS documents
)
UPDATE rollouts
SET canary_storage_uri = found.canary, stable_storage_uri = found.stable
FROM found
WHERE rollouts.id = found.id AND (found.canary IS NOT NULL OR found.stable IS NOT NULL)
"""
SQLITE_BACKFILL = """
UPDATE rollouts
SET canary_storage_uri = CASE WHEN json_type(state, '$.machine.canary.storage_uri') = 'text'
                              THEN json_extract(state, '$.machine.canary.storage_uri') END,
    stable_storage_uri = CASE WHEN json_type(state, '$.machine.stable.storage_uri') = 'text'
                              THEN json_extract(state, '$.machine.stable.storage_uri') END
WHERE json_type(state, '$.machine.canary.storage_uri') = 'text'
   OR json_type(state, '$.machine.stable.storage_uri') = 'text'
"""


def _create(table: str, indexes: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    for name, columns in indexes:
        op.create_index(name, table, _columns(columns))


def _drop(table: str, indexes: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    for name, _ in reversed(indexes):
        op.drop_index(name, table_name=table)


def upgrade() -> None:
    # In this order so that audit_log stays readable until the end (see the docstring).
    dialect = op.get_context().dialect.name
    _create("audit_log", AUDIT_LOG_INDEXES)
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("canary_storage_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("stable_storage_uri", sa.Text(), nullable=True))
    if dialect == "postgresql":
        op.execute(POSTGRESQL_BACKFILL)
    elif dialect == "sqlite":
        op.execute(SQLITE_BACKFILL)
    _create("rollouts", ROLLOUT_INDEXES)
    if dialect == "postgresql":
        op.execute("ANALYZE rollouts")
    op.drop_index(REPLACED, table_name="audit_log")


def downgrade() -> None:
    op.create_index(REPLACED, "audit_log", ["rollout_id"])
    _drop("rollouts", ROLLOUT_INDEXES)
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("stable_storage_uri")
        batch.drop_column("canary_storage_uri")
    _drop("audit_log", AUDIT_LOG_INDEXES)
