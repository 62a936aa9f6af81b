"""Opening the audit database: URLs, engines, SQLite connection setup, migrations and
the translation of driver errors into :class:`~canary.audit.errors.AuditError`."""

from __future__ import annotations

import os
import sqlite3
import time
from importlib import resources
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from canary.audit.errors import (
    AuditError,
    StoreUnavailable,
)
from canary.audit.schema import Base

__all__ = [
    "WRITE_OPTION",
    "alembic_config",
    "install_sqlite_hooks",
    "masked",
    "parse_url",
    "schema_differences",
    "translate",
    "upgrade_to_head",
]

# The execution option that marks a connection's transaction as a write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION: Final = "ksc_write"


# --------------------------------------------------------------------------------------------
# URLs, migrations
# --------------------------------------------------------------------------------------------


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise AuditError(f"invalid database URL: {exc}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: URL | str) -> str:
    parsed = url if isinstance(url, URL) else parse_url(url)
    return parsed.render_as_string(hide_password=True)


def _migrations_dir() -> Path:
    """The Alembic scripts that belong to this ``canary`` package.

    In order: ``KSC_MIGRATIONS_DIR``; the ``canary.migrations`` package (an installed wheel
    holds it, and an editable install maps it to the checkout's ``migrations/`` folder); the
    ``migrations/`` folder of a source checkout (next to ``canary/`` and ``alembic.ini``), which
    is what runs when the checkout is put on ``sys.path`` without being installed. The package
    is used only when it sits where this ``canary`` package does, so that a checkout on
    ``sys.path`` never runs the migrations of another checkout's editable install.
    """
    override = os.environ.get("KSC_MIGRATIONS_DIR")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "migrations"
    try:
        packaged = resources.files("canary.migrations")
    except ModuleNotFoundError:
        packaged = None
    if isinstance(packaged, Path):
        location = packaged.resolve()
        if location.is_relative_to(package) or location == checkout.resolve():
            return location
    if (checkout / "env.py").is_file() and (package.parent / "alembic.ini").is_file():
        return checkout
    if packaged is not None and not isinstance(packaged, Path):
        raise AuditError(
            "database migrations are packaged inside an archive and Alembic needs them as "
            "files; install kserve-canary into a directory or set KSC_MIGRATIONS_DIR"
        )
    raise AuditError(
        f"database migrations not found for the canary package at {package}: its "
        "canary.migrations subpackage is missing; reinstall kserve-canary or set "
        "KSC_MIGRATIONS_DIR"
    )


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` and this package's migrations (see :func:`_migrations_dir`).

    No ``alembic.ini`` is read: an installed package has none, and every option is set here,
    so a source checkout and an installed wheel behave alike. Alembic's own logging is left as
    the caller configured it.
    """
    scripts = _migrations_dir()
    if not (scripts / "env.py").is_file():
        raise AuditError(f"database migrations not found at {scripts}: it has no env.py")
    config = Config()
    config.set_main_option("script_location", str(scripts).replace("%", "%%"))
    rendered = parse_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade_to_head(url: str) -> None:
    """Apply all migrations to the database at ``url`` (``canary db upgrade``)."""
    try:
        command.upgrade(alembic_config(url), "head")
    except SQLAlchemyError as exc:
        raise translate(exc, masked(url)) from exc


def schema_differences(url: str) -> list[str]:
    """Differences between the database at ``url`` and the models (empty when in sync)."""
    engine = create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    except SQLAlchemyError as exc:
        raise translate(exc, masked(url)) from exc
    finally:
        engine.dispose()
    return [repr(diff) for diff in diffs]


def translate(exc: SQLAlchemyError, where: str) -> AuditError:
    detail = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(f"database {where} unavailable: {first}")
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return AuditError(
            f"database {where} has no audit schema ({first}); run `canary db upgrade`"
        )
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return StoreUnavailable(f"database {where} unavailable: {first}")
    if isinstance(exc, NoSuchModuleError):
        return AuditError(f"database {where}: driver not installed ({first})")
    return AuditError(f"database {where}: {first}")


def _ensure_wal(cursor: Any, attempts: int = 50) -> None:
    """Put the database file in WAL mode (it stays so). Only a connection that finds it in
    another mode converts it, and a conversion racing another one can be refused with
    "database is locked" without SQLite's busy handler ever waiting: that is retried."""
    for attempt in range(attempts):
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()
            if mode is not None and str(mode[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def install_sqlite_hooks(engine: Engine, *, file_backed: bool) -> None:
    """Foreign keys on; BEGIN IMMEDIATE for writes so concurrent writers serialise."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        if file_backed:
            _ensure_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
