"""What a database administrator can do to the audit trail, done the way they would.

Each attack runs as the test database's most privileged user, with the append-only triggers
out of the way: on PostgreSQL as a superuser with ``session_replication_role = replica``
(which skips ordinary triggers) and, since triggers marked ``ENABLE ALWAYS`` fire even then,
with every user trigger disabled for the transaction and put back as it was; on SQLite by
dropping the triggers and re-creating them. An attacker who recomputes hashes uses the
product's own canonical JSON and hash, so the chain inside the database stays valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from canary.audit import AuditEntry, canonical_json, compute_record_hash, entry_body
from canary.audit.chain import PROJECTION_COLUMNS, projection
from canary.audit.records import parse_body
from canary.audit.retention import PurgeRow
from canary.audit.schema import APPEND_ONLY_TABLES
from tests.conftest import Database

__all__ = [
    "cut_tail",
    "forge_append",
    "forge_purge",
    "purge_row_values",
    "rewrite_record",
    "truncate_all",
    "untriggered",
]

Statement = tuple[str, Sequence[Any]]


def _time(db: Database, value: datetime) -> Any:
    """A timestamp as the driver takes it (SQLite: the naive UTC text SQLAlchemy writes)."""
    if db.kind == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _columns(db: Database, data: dict[str, Any]) -> list[Any]:
    """The query columns of a body as the driver takes them (SQLite: timestamps as the
    naive UTC text SQLAlchemy writes)."""
    values = projection(data)
    out = []
    for name in PROJECTION_COLUMNS:
        value = values[name]
        out.append(_time(db, value) if isinstance(value, datetime) else value)
    return out


def untriggered(db: Database, statements: Sequence[Statement]) -> None:
    """Run ``statements`` in one transaction with the append-only triggers bypassed."""
    if db.kind == "sqlite":
        saved = db.query(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql IS NOT NULL"
        )
        db.script(
            [(f"DROP TRIGGER {name}", ()) for name, _ in saved]
            + list(statements)
            + [(sql, ()) for _, sql in saved]
        )
        return
    modes = db.query(
        "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"
    )
    restore = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}
    db.script(
        [("SET LOCAL session_replication_role = replica", ())]
        + [(f"ALTER TABLE {table} DISABLE TRIGGER USER", ()) for table in APPEND_ONLY_TABLES]
        + list(statements)
        + [
            (f"ALTER TABLE {table} {restore[str(mode)]} {name}", ())
            for table, name, mode in modes
            if str(mode) in restore
        ]
    )


def cut_tail(db: Database, keep: int) -> None:
    """Delete every record after ``keep`` (and their measurements)."""
    untriggered(
        db,
        [
            ("DELETE FROM measurements WHERE audit_seq > ?", (keep,)),
            ("DELETE FROM audit_log WHERE seq > ?", (keep,)),
        ],
    )


def truncate_all(db: Database) -> None:
    """Empty the audit tables, the database's own copy of the checkpoints included."""
    tables = ("measurements", "audit_log", "audit_checkpoints", "webhook_deliveries")
    if db.kind == "sqlite":
        untriggered(db, [(f"DELETE FROM {table}", ()) for table in tables])
    else:
        untriggered(db, [(f"TRUNCATE {', '.join(tables)}", ())])


def rewrite_record(db: Database, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Change record ``seq``'s body with ``change`` and recompute its hash and every later
    one (and the query columns), so the chain in the database verifies again."""
    rows = db.query(
        "SELECT seq, prev_hash, body FROM audit_log WHERE seq >= ? ORDER BY seq", (seq - 1,)
    )
    prev_hash = rows[0][1] if rows[0][0] == seq else None
    statements: list[Statement] = []
    for row_seq, stored_prev, stored_body in rows:
        if row_seq < seq:
            prev_hash = compute_record_hash(stored_prev, stored_body)
            continue
        assert prev_hash is not None
        data = parse_body(stored_body)
        body = stored_body
        if row_seq == seq:
            change(data)
            body = canonical_json(data)
        record_hash = compute_record_hash(prev_hash, body)
        assignments = ", ".join(f"{name} = ?" for name in PROJECTION_COLUMNS)
        statements.append(
            (
                f"UPDATE audit_log SET body = ?, prev_hash = ?, record_hash = ?, {assignments} "
                "WHERE seq = ?",
                (body, prev_hash, record_hash, *_columns(db, data), row_seq),
            )
        )
        prev_hash = record_hash
    untriggered(db, statements)


def forge_append(db: Database, entry: AuditEntry) -> int:
    """Append a forged record after the head, with a correct hash. Returns its seq."""
    head = db.query("SELECT seq, record_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev_hash = (head[0][0], head[0][1]) if head else (0, "0" * 64)
    seq += 1
    data = entry_body(seq, entry)
    body = canonical_json(data)
    names = ", ".join(PROJECTION_COLUMNS)
    marks = ", ".join("?" for _ in PROJECTION_COLUMNS)
    db.query(
        f"INSERT INTO audit_log (seq, prev_hash, record_hash, body, {names}) "
        f"VALUES (?, ?, ?, ?, {marks})",
        (
            seq,
            prev_hash,
            compute_record_hash(prev_hash, body),
            body,
            *_columns(db, dict(data)),
        ),
    )
    return seq


PURGE_COLUMNS = (
    "through_seq", "through_hash", "statement", "signature", "key_id", "purged_at", "purged_by",
    "records", "cutoff", "retention_days", "record_seq",
)  # fmt: skip


def purge_row_values(db: Database, row: PurgeRow) -> tuple[Any, ...]:
    """The ``audit_purges`` columns of ``row``, as the driver takes them."""
    values = [getattr(row, name) for name in PURGE_COLUMNS]
    return tuple(_time(db, v) if isinstance(v, datetime) else v for v in values)


def forge_purge(db: Database, row: PurgeRow, *, delete_through: int | None = None) -> None:
    """Insert a purge row of one's own making and delete the records (and measurements) up
    to ``delete_through`` (the row's ``through_seq`` by default), in one transaction."""
    through = row.through_seq if delete_through is None else delete_through
    marks = ", ".join("?" for _ in PURGE_COLUMNS)
    untriggered(
        db,
        [
            (
                f"INSERT INTO audit_purges ({', '.join(PURGE_COLUMNS)}) VALUES ({marks})",
                purge_row_values(db, row),
            ),
            ("DELETE FROM measurements WHERE audit_seq <= ?", (through,)),
            ("DELETE FROM audit_log WHERE seq <= ?", (through,)),
        ],
    )
