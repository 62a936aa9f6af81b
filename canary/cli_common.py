"""What the ``canary`` command line's modules share: exit codes and the database option.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a tampered audit chain) or the
leader refused a command; 2 invalid input (a malformed policy, a bad option or file); 3 a
dependency could not be reached or read (the database, the controller's API, the
apiserver); 4 the apiserver did not authenticate you, or RBAC does not allow you the
command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from canary.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from canary.audit import AuditError, AuditStore

__all__ = [
    "EXIT_BAD",
    "EXIT_DENIED",
    "EXIT_INVALID",
    "EXIT_UNAVAILABLE",
    "ApiTarget",
    "Credentials",
    "api_options",
    "check_schema",
    "connect_timeout_option",
    "credentials_of",
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


# --- the controller's HTTP API, with the caller's own cluster credentials ------------------


@dataclass(frozen=True)
class ApiTarget:
    url: str | None
    ca_file: Path | None
    tls_server_name: str | None
    kubeconfig: Path | None
    context: str | None


def api_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--api-url",
            envvar="KSC_API_URL",
            show_envvar=True,
            help="The controller's operator API, e.g. https://localhost:8443 after "
            "'kubectl -n kserve-canary port-forward svc/kserve-canary 8443'.",
        ),
        click.option(
            "--api-ca",
            "api_ca",
            envvar="KSC_API_CA_FILE",
            show_envvar=True,
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA bundle that signed the controller's serving certificate.",
        ),
        click.option(
            "--tls-server-name",
            envvar="KSC_API_TLS_SERVER_NAME",
            show_envvar=True,
            help="Name to check in the server's certificate when the URL's host differs "
            "(e.g. kserve-canary.kserve-canary.svc behind a port-forward).",
        ),
        click.option(
            "--kubeconfig",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="KUBECONFIG",
            help="Kubeconfig whose current context's credentials you act with.",
        ),
        click.option("--context", help="Kubeconfig context to use (default: the current one)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class Credentials:
    token: str | None
    certificate: tuple[str, str] | None
    namespace: str | None  # the context's


def credentials_of(api: ApiTarget) -> Credentials:
    """The caller's own Kubernetes credentials: the context's bearer token, or else its
    client certificate (with the files the kubernetes library wrote for inline data)."""
    from canary.k8s.client import KubeClient

    try:
        if api.kubeconfig is not None or api.context is not None:
            kube = KubeClient.from_kubeconfig(api.kubeconfig, api.context)
        else:
            kube = KubeClient.connect()
        with kube:
            found = Credentials(kube.bearer_token(), kube.client_certificate(), kube.namespace)
    except Exception as exc:  # KubeConfigError, OSError, the kubernetes loader's own errors
        raise click.UsageError(f"cannot load your Kubernetes credentials: {exc}") from exc
    if found.token is None and found.certificate is None:
        raise click.UsageError(
            "your kubeconfig context has neither a bearer token nor a client certificate; "
            "the operator API identifies you by the same credentials as the apiserver"
        )
    return found
