"""What the ``canary`` command line's modules share: exit codes and the database option.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a tampered audit chain) or the
leader refused a command; 2 invalid input (a malformed policy, a bad option or file); 3 a
dependency could not be reached or read (the database, the controller's API, the
apiserver); 4 the apiserver did not authenticate you, or RBAC does not allow you the
command.
"""

from __future__ import annotations

import click

from canary.settings import SettingsError, load_settings

__all__ = [
    "EXIT_BAD",
    "EXIT_DENIED",
    "EXIT_INVALID",
    "EXIT_UNAVAILABLE",
    "database_url_option",
    "default_database_url",
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
