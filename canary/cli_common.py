"""What the ``canary`` command line's modules share: exit codes and the database option.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a tampered audit chain) or the
leader refused a command; 2 invalid input (a malformed policy, a bad option or file); 3 a
dependency could not be reached or read (the database, the controller's API, the
apiserver); 4 the apiserver did not authenticate you, or RBAC does not allow you the
command.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

import click

from canary.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from canary.audit import AuditError, AuditStore

__all__ = [
    "EXIT_BAD",
    "EXIT_DENIED",
    "EXIT_INVALID",
    "EXIT_UNAVAILABLE",
    "check_schema",
    "connect_timeout_option",
    "database_failure",
    "database_url_option",
    "default_database_url",
    "open_store",
]

EXIT_BAD = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4


def default_database_url() -> str:
    try:
        return load_settings().database_url.get_secret_value()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


database_url_option = click.option(
    "--database-url",
    envvar="KSC_DATABASE_URL",
    show_envvar=True,
    help="SQLAlchemy URL of the audit database (sqlite:///file.db or postgresql+psycopg://…).",
)
connect_timeout_option = click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    envvar="KSC_DATABASE_CONNECT_TIMEOUT",
    show_envvar=True,
    metavar="SECONDS",
    help="How long connecting to PostgreSQL may take (whole seconds, at least 2, as libpq "
    "counts them); a server that does not answer in time ends the command with exit 3.",
)


def database_failure(exc: AuditError) -> NoReturn:
    """End a database command: exit 2 for input that is wrong (the URL, the role given),
    3 for a database that cannot be reached or read; one line, no traceback."""
    from canary.audit import DatabaseUrlError, RoleRefused

    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_INVALID if isinstance(exc, (DatabaseUrlError, RoleRefused)) else EXIT_UNAVAILABLE)


def open_store(database_url: str | None, connect_timeout: float, *, read_only: bool) -> AuditStore:
    """The audit store a command works on (no connection is made yet). ``read_only``: a
    SQLite file is opened read-only, so a missing one is an error and is never created."""
    from canary.audit import AuditError, AuditStore

    url = database_url or default_database_url()
    try:
        return AuditStore.from_url(url, connect_timeout=connect_timeout, read_only=read_only)
    except AuditError as exc:
        database_failure(exc)


def check_schema(store: AuditStore) -> None:
    """Connect, and refuse a database without the audit schema or migrated by a newer
    kserve-canary (whose records this one might misread)."""
    from canary.audit import AuditError

    try:
        store.check_schema()
    except AuditError as exc:
        database_failure(exc)
