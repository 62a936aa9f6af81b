"""Opening the audit database: URLs, engines, SQLite connection setup, migrations and
the translation of driver errors into :class:`~canary.audit.errors.AuditError`."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, pool
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
    DatabaseUrlError,
    SchemaTooNew,
    StoreUnavailable,
)
from canary.audit.schema import Base

__all__ = [
    "WRITE_OPTION",
    "alembic_config",
    "check_revision",
    "check_sqlite_file",
    "connect_args",
    "install_sqlite_hooks",
    "masked",
    "parse_url",
    "read_only_url",
    "schema_differences",
    "schema_revision",
    "sqlite_path",
    "translate",
    "upgrade_to_head",
]

# The execution option that marks a connection's transaction as a write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION: Final = "ksc_write"


# --------------------------------------------------------------------------------------------
# URLs, migrations
# --------------------------------------------------------------------------------------------


# The databases and drivers kserve-canary runs on (the drivers its wheel installs).
SUPPORTED_DRIVERS: Final = {"postgresql": ("psycopg",), "sqlite": ("pysqlite",)}
_SUPPORTED_URLS: Final = "postgresql+psycopg://user@host/database or sqlite:///path/file.db"


def _make_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"invalid database URL: {exc}") from None


def parse_url(url: str) -> URL:
    """``url`` parsed, with ``postgresql://`` meaning psycopg 3. A URL of another database or
    driver is refused here (:class:`DatabaseUrlError`), before any driver is imported."""
    parsed = _make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend, _, driver = parsed.drivername.partition("+")
    shown = parsed.render_as_string(hide_password=True)
    if backend not in SUPPORTED_DRIVERS:
        raise DatabaseUrlError(
            f"database URL {shown}: kserve-canary keeps its audit trail in PostgreSQL or "
            f"SQLite, not {backend!r}; give {_SUPPORTED_URLS}"
        )
    if driver and driver not in SUPPORTED_DRIVERS[backend]:
        raise DatabaseUrlError(
            f"database URL {shown}: the driver {driver!r} is not supported for {backend}; "
            f"give {_SUPPORTED_URLS}"
        )
    return parsed


def masked(url: URL | str) -> str:
    parsed = url if isinstance(url, URL) else _make_url(url)
    return parsed.render_as_string(hide_password=True)


def connect_args(parsed: URL, connect_timeout: float | None) -> dict[str, Any]:
    """Driver arguments that bound connecting to PostgreSQL by ``connect_timeout`` seconds
    (libpq counts whole seconds, at least 2). Nothing for SQLite or without a timeout."""
    if connect_timeout is None or parsed.get_backend_name() != "postgresql":
        return {}
    if not connect_timeout > 0:
        raise AuditError(f"the connect timeout must be positive, got {connect_timeout}")
    return {"connect_timeout": max(math.ceil(connect_timeout), 2)}


# --------------------------------------------------------------------------------------------
# SQLite files
# --------------------------------------------------------------------------------------------


def sqlite_path(parsed: URL) -> Path | None:
    """The file of a SQLite URL (absolute); None for another database, an in-memory one, or
    a URL that already uses SQLite's own ``file:`` URI form (``uri=true``)."""
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or "uri" in parsed.query:
        return None
    return Path(os.path.abspath(database))


def check_sqlite_file(parsed: URL, *, must_exist: bool) -> None:
    """Refuse a SQLite path whose directory does not exist (SQLite would fail later with
    "unable to open database file") and, with ``must_exist``, a file that does not exist
    (SQLite would create an empty one)."""
    path = sqlite_path(parsed)
    if path is None:
        return
    if not path.parent.is_dir():
        raise AuditError(
            f"no such database file: {path} (the directory {path.parent} does not exist; "
            "nothing was created)"
        )
    if must_exist and not path.is_file():
        raise AuditError(
            f"no such database file: {path} (nothing was created; `canary db upgrade` "
            "creates a new database)"
        )


def read_only_url(parsed: URL) -> URL:
    """The URL that opens a SQLite file read-only (SQLite's ``mode=ro``: it never creates the
    file, and no write can slip through). Other URLs are returned unchanged."""
    path = sqlite_path(parsed)
    if path is None:
        return parsed
    return URL.create(
        "sqlite",
        database="file:" + quote(str(path)),
        query={**parsed.query, "mode": "ro", "uri": "true"},
    )


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


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()).replace("%", "%%"))
    return ScriptDirectory.from_config(config)


def schema_revision(conn: Connection) -> tuple[str, ...]:
    """The revisions recorded in the database's ``alembic_version`` (none on a database that
    was never migrated)."""
    return tuple(MigrationContext.configure(conn).get_current_heads())


def check_revision(revisions: Iterable[str]) -> None:
    """Raise :class:`SchemaTooNew` when the database records a revision these migrations do
    not know: a newer kserve-canary migrated it, and this one may misread it."""
    scripts = _scripts()
    known = {script.revision for script in scripts.walk_revisions()}
    for revision in revisions:
        if revision not in known:
            raise SchemaTooNew(
                f"the database schema is at revision {revision}, newer than this kserve-canary "
                f"knows (head {scripts.get_current_head()}): upgrade kserve-canary"
            )


def upgrade_to_head(url: str, *, connect_timeout: float | None = None) -> None:
    """Apply all migrations to the database at ``url`` (``canary db upgrade``).

    A SQLite file is created if missing (its directory must exist); ``connect_timeout``
    bounds connecting to PostgreSQL. A database migrated by a newer kserve-canary is refused
    (:class:`SchemaTooNew`) before anything is changed.
    """
    parsed = parse_url(url)
    where = masked(parsed)
    check_sqlite_file(parsed, must_exist=False)
    config = alembic_config(url)
    try:
        engine = create_engine(
            parsed, poolclass=pool.NullPool, connect_args=connect_args(parsed, connect_timeout)
        )
    except ImportError as exc:
        raise DatabaseUrlError(f"database {where}: its driver is not installed ({exc})") from None
    try:
        with engine.connect() as conn:
            revisions = schema_revision(conn)
        check_revision(revisions)
        with engine.connect() as conn:
            config.attributes["connection"] = conn  # migrations/env.py migrates on it
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise translate(exc, where) from exc
    except CommandError as exc:
        raise AuditError(f"database {where}: the migration failed: {exc}") from exc
    finally:
        engine.dispose()


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
        return DatabaseUrlError(f"database {where}: driver not installed ({first})")
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


def install_sqlite_hooks(engine: Engine, *, file_backed: bool, read_only: bool = False) -> None:
    """Foreign keys on; BEGIN IMMEDIATE for writes so concurrent writers serialise; a file
    in WAL mode (unless opened read-only, which must not convert it)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        if file_backed and not read_only:
            _ensure_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
