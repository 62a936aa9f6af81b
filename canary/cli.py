"""The ``canary`` command line.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a broken audit chain) or the leader
refused a command; 2 invalid input (a malformed policy, a bad option, a database URL of an
unsupported database or driver, a role `canary db grant` refuses); 3 a dependency could not be
reached or read (the database: unreachable, not answering within the connect timeout, a
SQLite file that does not exist, a schema migrated by a newer kserve-canary; the controller's
API; no leader answered in time); 4 the apiserver did not authenticate you, or RBAC does not
allow you the command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from canary import __version__
from canary.audit_cli import audit
from canary.cli_common import (
    EXIT_BAD,
    EXIT_DENIED,
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    check_schema,
    connect_timeout_option,
    database_failure,
    database_url_option,
    default_database_url,
    open_store,
)
from canary.policy import PolicyError, load_policies
from canary.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from canary.audit import AuditStore


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="canary")
def main() -> None:
    """kserve-canary: progressive delivery for KServe InferenceServices, with statistical
    analysis, approvals, and a tamper-evident audit trail."""


# --- policies -----------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Check and inspect rollout policies."""


@policy.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def policy_validate(path: Path) -> None:
    """Validate the policies in PATH (a YAML file or a directory of them).

    Exits 0 when every policy is valid, 2 with one line per problem otherwise.
    """
    try:
        policies = load_policies(path)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        count = len(exc.problems)
        click.echo(f"{count} problem{'s' if count != 1 else ''} found; nothing loaded", err=True)
        sys.exit(EXIT_INVALID)
    for name in policies.names():
        click.echo(f"ok: policy {name!r} ({policies.source_of(name)})")
    click.echo(f"{len(policies)} polic{'ies' if len(policies) != 1 else 'y'} valid")


@policy.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("name", default="default")
def policy_show(path: Path, name: str) -> None:
    """Print policy NAME from PATH with every default filled in, as JSON."""
    try:
        policies = load_policies(path)
        chosen = policies.get(name)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_INVALID)
    except KeyError as exc:
        click.echo(f"error: {exc.args[0]}", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(json.dumps(chosen.model_dump(mode="json", by_alias=True), indent=2))


# --- audit database -------------------------------------------------------------------------


main.add_command(audit)


@main.group()
def db() -> None:
    """Manage the audit database schema."""


@db.command("upgrade")
@database_url_option
@connect_timeout_option
def db_upgrade(database_url: str | None, connect_timeout: float) -> None:
    """Apply every migration up to the newest schema.

    On PostgreSQL run it as the owner role (which then owns the tables), and after it
    `canary db grant` for the controller's application role. A SQLite file is created if
    missing, its directory is not. Exits 2 for a database URL of an unsupported database or
    driver, 3 when the database cannot be reached or was migrated by a newer kserve-canary.
    """
    from canary.audit import AuditError, upgrade_to_head

    url = database_url or default_database_url()
    try:
        upgrade_to_head(url, connect_timeout=connect_timeout)
    except AuditError as exc:
        database_failure(exc)
    click.echo("database schema is at the newest revision")


@db.command("grant")
@click.option(
    "--app-role",
    required=True,
    metavar="ROLE",
    help="The PostgreSQL role the controller connects as (it must exist, own nothing, and "
    "not be a superuser).",
)
@database_url_option
@connect_timeout_option
def db_grant(app_role: str, database_url: str | None, connect_timeout: float) -> None:
    """Give the controller's application role exactly what the controller uses, and nothing
    else: USAGE on the schema; SELECT and INSERT on the append-only audit tables; SELECT,
    INSERT and UPDATE on its state (rollouts, approvals, commands, leader_fence); SELECT on
    alembic_version. Whatever else the role, or PUBLIC, held on these tables is revoked,
    in the same transaction. Run it with the owner's database URL, after every
    `canary db upgrade`; a second run changes nothing and says so.

    Exits 0 when the role has exactly these privileges; 2 when the role does not exist, is
    a superuser, owns any of the tables or their schema, may create roles, or is the role
    connected as, or on SQLite (no roles); 3 when the database cannot be reached, has no
    audit schema, or was migrated by a newer kserve-canary.
    """
    from canary.audit import AuditError, RoleRefused

    # No connection is made before the check of the backend: a SQLite file is not created.
    with open_store(database_url, connect_timeout, read_only=False) as store:
        if store.backend != "postgresql":
            database_failure(
                RoleRefused(
                    "SQLite has no roles: `canary db grant` is for PostgreSQL (protect a "
                    "SQLite file with file permissions)"
                )
            )
        check_schema(store)
        try:
            report = store.grant_application_role(app_role)
        except AuditError as exc:
            database_failure(exc)
    for line in report.lines():
        click.echo(line)


# --- the controller -------------------------------------------------------------------------


@main.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KSC_CONFIG_FILE",
    help="YAML settings file (KSC_* environment variables override it).",
)
def run(config_file: Path | None) -> None:
    """Run the controller until SIGTERM or SIGINT.

    Every replica serves health, metrics and the admission webhook; the replica holding the
    leader Lease also drives rollouts.
    """
    import signal
    import threading

    from canary.app import build
    from canary.audit import AuditError
    from canary.k8s.client import KubeConfigError
    from canary.log import configure_logging

    try:
        settings = load_settings(config_file)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    configure_logging(settings.environment, settings.log_level)
    try:
        application = build(settings)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_INVALID)
    except KubeConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    application.start()
    click.echo(f"kserve-canary running; HTTP on port {application.server.port}", err=True)
    stop.wait()
    application.stop()


@main.command("shadow-collector")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KSC_CONFIG_FILE",
    help="YAML settings file (KSC_* environment variables override it, these options both).",
)
@click.option("--host", help="Address to listen on (setting shadow_collector_host; 0.0.0.0).")
@click.option("--port", type=int, help="Port (setting shadow_collector_port; 9400).")
@click.option(
    "--decision-field",
    help="The decision's key in a v1 prediction, or the v2 output's name (setting "
    "shadow_collector_decision_field; decision).",
)
@click.option(
    "--score-field",
    help="The score's key in a v1 prediction, or the v2 output's name (setting "
    "shadow_collector_score_field; score).",
)
@click.option(
    "--ttl-seconds",
    type=float,
    help="How long a response waits for its partner and an id is remembered (setting "
    "shadow_collector_ttl_seconds; 30).",
)
@click.option(
    "--max-pending",
    type=int,
    help="Request ids held at most; the oldest is dropped when full (setting "
    "shadow_collector_max_pending; 100000).",
)
@click.option(
    "--max-body-bytes",
    type=int,
    help="The largest body read, 413 above it (setting shadow_collector_max_body_bytes; 1048576).",
)
def shadow_collector(config_file: Path | None, **options: Any) -> None:
    """Receive KServe payload-logger events and export shadow agreement to Prometheus.

    Joins the responses of different InferenceServices to the same request (the same Ce-Id)
    and serves the pairs at /metrics; the loggers post to / or /events. One replica: the join
    is held in memory. Plain HTTP: keep it behind a NetworkPolicy. Runs until SIGTERM or
    SIGINT; exits 2 on invalid settings, 3 when it cannot listen.
    """
    import signal
    import threading

    from canary.api.shadow import collector_app
    from canary.log import configure_logging, get_logger
    from canary.server import HttpServer, HttpServerError
    from canary.shadow.collector import ShadowCollector, ShadowMetrics
    from canary.shadow.join import Joiner

    overrides = {
        f"shadow_collector_{name}": value for name, value in options.items() if value is not None
    }
    try:
        settings = load_settings(config_file, **overrides)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    configure_logging(settings.environment, settings.log_level)
    joiner = Joiner(
        ttl_seconds=settings.shadow_collector_ttl_seconds,
        max_pending=settings.shadow_collector_max_pending,
    )
    collector = ShadowCollector(
        joiner,
        ShadowMetrics(),
        decision_field=settings.shadow_collector_decision_field,
        score_field=settings.shadow_collector_score_field,
    )
    server = HttpServer(
        collector_app(collector, max_body=settings.shadow_collector_max_body_bytes),
        host=settings.shadow_collector_host,
        port=settings.shadow_collector_port,
        certfile=None,
        keyfile=None,
    )
    try:
        server.start()
    except HttpServerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    get_logger("canary.cli").info(
        "shadow.collector_started",
        host=settings.shadow_collector_host,
        port=server.port,
        decision_field=collector.decision_field,
        score_field=collector.score_field,
        ttl_seconds=settings.shadow_collector_ttl_seconds,
        max_pending=settings.shadow_collector_max_pending,
    )
    click.echo(f"kserve-canary shadow collector on http port {server.port}", err=True)
    stop.wait()
    server.stop()


def _store(database_url: str | None) -> AuditStore:
    from canary.audit import AuditStore

    return AuditStore.from_url(database_url or default_database_url())


# --- operator commands, through the controller's authenticated API ---------------------------


@dataclass(frozen=True)
class _Api:
    url: str | None
    ca_file: Path | None
    tls_server_name: str | None
    kubeconfig: Path | None
    context: str | None


def _api_options(func: Callable[..., Any]) -> Callable[..., Any]:
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
class _Credentials:
    token: str | None
    certificate: tuple[str, str] | None
    namespace: str | None  # the context's


def _credentials(api: _Api) -> _Credentials:
    """The caller's own Kubernetes credentials: the context's bearer token, or else its
    client certificate (with the files the kubernetes library wrote for inline data)."""
    from canary.k8s.client import KubeClient

    try:
        if api.kubeconfig is not None or api.context is not None:
            kube = KubeClient.from_kubeconfig(api.kubeconfig, api.context)
        else:
            kube = KubeClient.connect()
        with kube:
            found = _Credentials(kube.bearer_token(), kube.client_certificate(), kube.namespace)
    except Exception as exc:  # KubeConfigError, OSError, the kubernetes loader's own errors
        raise click.UsageError(f"cannot load your Kubernetes credentials: {exc}") from exc
    if found.token is None and found.certificate is None:
        raise click.UsageError(
            "your kubeconfig context has neither a bearer token nor a client certificate; "
            "the operator API identifies you by the same credentials as the apiserver"
        )
    return found


def _target(name: str, namespace: str | None, context_namespace: str | None) -> tuple[str, str]:
    if "/" in name:
        ns, _, short = name.partition("/")
        if not ns or not short or "/" in short:
            raise click.BadParameter(f"expected NAME or NAMESPACE/NAME, got {name!r}")
        if namespace is not None and namespace != ns:
            raise click.BadParameter(f"{name!r} names namespace {ns!r} but -n says {namespace!r}")
        return ns, short
    return namespace or context_namespace or "default", name


def _client(api: _Api, credentials: _Credentials) -> Any:
    from canary.remote import OperatorClient

    if not api.url:
        raise click.UsageError(
            "no operator API given: pass --api-url or set KSC_API_URL (for example "
            "https://localhost:8443 after 'kubectl -n kserve-canary port-forward "
            "svc/kserve-canary 8443')"
        )
    try:
        return OperatorClient(
            api.url,
            credentials.token,
            certificate=credentials.certificate,
            ca_file=api.ca_file,
            tls_server_name=api.tls_server_name,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _refused(status: int, message: str) -> None:
    """Exit for an answer that carried out nothing."""
    if status in (401, 403):
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_DENIED)
    if status in (400, 404, 413, 422):
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_UNAVAILABLE)


def _send(
    api: _Api,
    name: str,
    namespace: str | None,
    command: str,
    reason: str,
    wait: float,
    storage_uri: str | None = None,
    reason_option: str = "--reason",
) -> None:
    from canary.remote import Unreachable

    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint=reason_option)
    credentials = _credentials(api)
    ns, short = _target(name, namespace, credentials.namespace)
    with _client(api, credentials) as client:
        try:
            answer = client.command(
                ns, short, command, reason=reason, wait=wait, storage_uri=storage_uri
            )
        except Unreachable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
    body = answer.body
    who = (body.get("caller") or {}).get("username", "?")
    if answer.status == 200:
        click.echo(f"{command} {ns}/{short} accepted (as {who}): {body.get('result')}")
        return
    if answer.status == 202:
        click.echo(
            f"{command} {ns}/{short} queued (id {body.get('id')}) but no leader answered "
            f"within {wait:g}s; it will be carried out when a controller leads",
            err=True,
        )
        sys.exit(EXIT_UNAVAILABLE)
    if answer.status == 409:
        click.echo(f"{command} {ns}/{short} {body.get('state')}: {body.get('result')}", err=True)
        sys.exit(EXIT_BAD)
    _refused(answer.status, answer.error)


reason_option = click.option("--reason", required=True, help="Why (recorded in the audit trail).")
namespace_option = click.option(
    "-n", "--namespace", help="The InferenceService's namespace (default: the context's)."
)
wait_option = click.option(
    "--wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, max=120),
    help="Seconds to wait for the leader's answer.",
)


def _manual(command: str, doc: str) -> None:
    @main.command(command, help=doc)
    @click.argument("name", metavar="NAME")
    @namespace_option
    @reason_option
    @wait_option
    @_api_options
    def _command(
        name: str,
        namespace: str | None,
        reason: str,
        wait: float,
        api_url: str | None,
        api_ca: Path | None,
        tls_server_name: str | None,
        kubeconfig: Path | None,
        context: str | None,
    ) -> None:
        api = _Api(api_url, api_ca, tls_server_name, kubeconfig, context)
        _send(api, name, namespace, command, reason, wait)


_manual("pause", "Hold the rollout where it is. Exits 1 if refused (with the reason).")
_manual("resume", "Continue a paused rollout; the current step needs fresh evidence.")
_manual("promote", "Promote the canary to 100% now (still subject to approvals and windows).")
_manual("abort", "Roll the canary back to 0% and end the rollout.")


_DECISION_HELP = """

The decision for a rollout whose policy uses the Kubernetes approval gate, sent as you: the
controller learns who you are, and your groups, from your cluster credentials
(the kubeconfig context's token or client certificate), never from this command line. RBAC
must grant you the verb "approve" on rollouts.kserve-canary.io for this rollout (the
kserve-canary-risk-owner role; the operator role does not). The leader then checks you
against the policy's risk-owner group, and refuses an approval by whoever started the
rollout. --comment is required: it is kept in the audit trail with your name.

Exits 0 when the leader accepted the decision, 1 when it refused it (with its reason), 2 on
invalid input (e.g. no --comment), 3 when no controller or no leader answered, 4 when the
apiserver did not authenticate you or RBAC refused you."""


def _decision(command: str, summary: str) -> None:
    @main.command(command, help=summary + _DECISION_HELP)
    @click.argument("name", metavar="NAME")
    @namespace_option
    @click.option(
        "--comment",
        "--reason",
        "comment",
        help="Why you decide so, for whoever reviews the decision (required; kept in the "
        "audit trail).",
    )
    @wait_option
    @_api_options
    def _command(
        name: str,
        namespace: str | None,
        comment: str | None,
        wait: float,
        api_url: str | None,
        api_ca: Path | None,
        tls_server_name: str | None,
        kubeconfig: Path | None,
        context: str | None,
    ) -> None:
        if comment is None:
            raise click.UsageError(
                f"{command} needs --comment: say why, for whoever reviews the decision (it "
                "is kept in the audit trail with your name)"
            )
        api = _Api(api_url, api_ca, tls_server_name, kubeconfig, context)
        _send(api, name, namespace, command, comment, wait, reason_option="--comment")


_decision("approve", "Approve the canary awaiting approval, so the rollout may go on.")
_decision("reject", "Reject the canary awaiting approval: the rollout is rolled back.")


@main.group()
def rollout() -> None:
    """Start rollouts."""


@rollout.command("start")
@click.argument("name", metavar="NAME")
@namespace_option
@click.option("--storage-uri", required=True, help="Where the new model is.")
@reason_option
@wait_option
@_api_options
def rollout_start(
    name: str,
    namespace: str | None,
    storage_uri: str,
    reason: str,
    wait: float,
    api_url: str | None,
    api_ca: Path | None,
    tls_server_name: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Deploy a new model as a canary: ONE write that changes the model and gives the new
    revision only the first step's traffic. The leader makes the write after recording
    its intent; the rollout then proceeds as its policy says. Needs, besides the command's
    own grant, the right to patch the InferenceService yourself."""
    api = _Api(api_url, api_ca, tls_server_name, kubeconfig, context)
    _send(api, name, namespace, "start", reason, wait, storage_uri=storage_uri)


@main.command("status")
@click.argument("name", required=False)
@namespace_option
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="Rollouts in every namespace you may list."
)
@click.option("--all", "include_finished", is_flag=True, help="Include finished rollouts.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@_api_options
def status(
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    include_finished: bool,
    output: str,
    api_url: str | None,
    api_ca: Path | None,
    tls_server_name: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Rollouts: phase, step, weights, last verdict, next action and when."""
    from canary.ops import StatusLine, render_status
    from canary.remote import Unreachable

    if all_namespaces and (namespace is not None or name is not None):
        raise click.UsageError("-A lists every namespace: give no NAME and no -n with it")
    api = _Api(api_url, api_ca, tls_server_name, kubeconfig, context)
    credentials = _credentials(api)
    context_namespace = credentials.namespace
    ns: str | None
    if all_namespaces:
        ns, short = None, None
    elif name is not None:
        ns, short = _target(name, namespace, context_namespace)
    else:
        ns, short = namespace or context_namespace or "default", None
    with _client(api, credentials) as client:
        try:
            answer = client.rollouts(ns, short, include_finished=include_finished)
        except Unreachable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
    if answer.status != 200:
        _refused(answer.status, answer.error)
    items = answer.body.get("items") or []
    if output == "json":
        click.echo(json.dumps({"items": items}, indent=2))
        return
    if not items:
        where = "in any namespace" if ns is None else f"in namespace {ns}"
        click.echo("no rollouts" + ("" if include_finished else " in progress") + f" {where}")
        return
    lines = [
        StatusLine(
            **{
                **item,
                "evidence": tuple(item.get("evidence") or ()),
                "approval": tuple(item.get("approval") or ()),
                "shadow": tuple(item.get("shadow") or ()),
            }
        )
        for item in items
    ]
    click.echo(render_status(lines))


# --- the admission webhook's registration -----------------------------------------------------


def _checked(
    check: Callable[[Any], object],
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that turns ``check``'s ValueError into an error naming the option."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
        return value

    return callback


def _read_ca_file(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Any:
    from canary.k8s.webhook_checks import check_ca_bundle

    if value is None:
        return None
    try:
        pem = value.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror or exc}") from exc
    try:
        count = check_ca_bundle(pem)
    except ValueError as exc:
        raise click.BadParameter(f"{value}: {exc}") from exc
    return _CaFile(value, pem, count)


def _parse_selector(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from canary.k8s.label_selector import parse_label_selector

    if value is None:
        return None
    try:
        return parse_label_selector(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@dataclass(frozen=True)
class _CaFile:
    path: Path
    pem: bytes
    certificates: int


def _webhook_options(command: Callable[..., None]) -> Callable[..., None]:
    from canary.admission import ADMISSION_PATH
    from canary.k8s.webhook_checks import (
        CONFIGURATION_NAME,
        check_configuration_name,
        check_dns_label,
        check_inject_ca_from,
        check_service_path,
    )

    options = [
        click.option("--service-namespace", required=True,
                     callback=_checked(partial(check_dns_label, "the service namespace")),
                     help="Namespace of the Service in front of the controller."),
        click.option("--service-name", required=True,
                     callback=_checked(partial(check_dns_label, "the service name")),
                     help="Name of the Service in front of the controller."),
        click.option("--port", type=click.IntRange(1, 65535), default=443, show_default=True,
                     help="The Service's port for HTTPS."),
        click.option("--path", default=ADMISSION_PATH, show_default=True,
                     callback=_checked(check_service_path), help="The admission path."),
        click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False),
                     callback=_read_ca_file,
                     help="PEM file of the CA that signed the controller's serving "
                          "certificate, put into the caBundle. Exactly one of this and "
                          "--cert-manager-certificate."),
        click.option("--cert-manager-certificate", metavar="NAMESPACE/NAME",
                     callback=_checked(check_inject_ca_from),
                     help="The cert-manager Certificate of the controller's serving "
                          "certificate: cert-manager's cainjector fills in the caBundle."),
        click.option("--namespace-selector", metavar="SELECTOR", callback=_parse_selector,
                     help="Only InferenceServices in namespaces whose labels match, in "
                          "kubectl's form, every comma-separated requirement holding: "
                          "key=value, key!=value, key in (a,b), key notin (a,b), key, !key "
                          "(default: every namespace)."),
        click.option("--timeout-seconds", type=click.IntRange(1, 30), default=5,
                     show_default=True, help="How long the apiserver waits for an answer."),
        click.option("--name", default=CONFIGURATION_NAME, show_default=True,
                     callback=_checked(check_configuration_name),
                     help="The configuration's name; must sort after KServe's "
                          "'inferenceservice.serving.kserve.io'."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _webhook_body(
    service_namespace: str,
    service_name: str,
    port: int,
    path: str,
    ca_file: _CaFile | None,
    cert_manager_certificate: str | None,
    namespace_selector: dict[str, Any] | None,
    timeout_seconds: int,
    name: str,
) -> dict[str, Any]:
    from canary.k8s.webhook_config import ServiceReference, webhook_configuration

    if (ca_file is None) == (cert_manager_certificate is None):
        raise click.UsageError(
            "give exactly one of --ca-file (the CA's PEM goes into the caBundle) and "
            "--cert-manager-certificate (cert-manager's cainjector fills the caBundle in)"
            + ("; both were given" if ca_file is not None else "; neither was given")
        )
    try:
        return webhook_configuration(
            ca_bundle=ca_file.pem if ca_file is not None else None,
            inject_ca_from=cert_manager_certificate,
            service=ServiceReference(service_namespace, service_name, port, path),
            namespace_selector=namespace_selector,
            timeout_seconds=timeout_seconds,
            name=name,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@main.group()
def webhook() -> None:
    """Register the admission webhook (a MutatingWebhookConfiguration) with the apiserver.

    The registration sends UPDATEs of opted-in InferenceServices (the
    kserve-canary.io/enabled annotation, any value but "false") to the controller's Service,
    with failurePolicy Fail. The CA comes either from a PEM file (--ca-file) or from
    cert-manager (--cert-manager-certificate): then the configuration carries the
    cert-manager.io/inject-ca-from annotation and no caBundle, and until cert-manager's
    cainjector has filled it in, the apiserver cannot verify the controller and refuses
    updates of opted-in InferenceServices.
    """


@webhook.command("render")
@_webhook_options
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True, help="Output format.")  # fmt: skip
def webhook_render(output: str, **options: Any) -> None:
    """Print the configuration (for kubectl apply -f -, a GitOps repository or a chart);
    needs no cluster. Exits 2 on invalid input, printing nothing on stdout."""
    body = _webhook_body(**options)
    if output == "json":
        click.echo(json.dumps(body, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(body, sort_keys=False, width=4096), nl=False)


@webhook.command("apply")
@_webhook_options
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KUBECONFIG",
    help="Kubeconfig of the cluster to register the webhook with.",
)
@click.option("--context", help="Kubeconfig context (default: the current one).")
def webhook_apply(kubeconfig: Path | None, context: str | None, **options: Any) -> None:
    """Create or update the configuration by server-side apply, then read back what the
    apiserver stored and check that it is what was applied.

    Exits 0 when applied; 1 when the apiserver refused it (e.g. forbidden) or stored
    something else; 2 on invalid input, the apiserver finding it invalid, or a kubeconfig
    that cannot be loaded (nothing is applied); 3 when the apiserver cannot be reached.
    """
    from canary.k8s.client import (
        MUTATING_WEBHOOK_CONFIGURATION,
        Invalid,
        KubeClient,
        KubeError,
        NotFound,
        Unavailable,
    )
    from canary.k8s.webhook_checks import INJECT_CA_FROM
    from canary.k8s.webhook_config import FIELD_MANAGER

    body = _webhook_body(**options)
    name = body["metadata"]["name"]
    try:
        kube = KubeClient.from_kubeconfig(kubeconfig, context, timeout=10.0)
    except Exception as exc:  # the kubeconfig library's errors are of many kinds
        click.echo(f"error: cannot load the kubeconfig ({exc}); pass --kubeconfig", err=True)
        sys.exit(EXIT_INVALID)
    kind = "mutatingwebhookconfiguration"
    with kube:
        try:
            try:
                before: str | None = kube.get(MUTATING_WEBHOOK_CONFIGURATION, None, name)[
                    "metadata"
                ]["resourceVersion"]
            except NotFound:
                before = None
            stored = kube.apply(
                MUTATING_WEBHOOK_CONFIGURATION, None, body, field_manager=FIELD_MANAGER,
                force=True,
            )  # fmt: skip
        except Unavailable as exc:
            click.echo(f"error: cannot reach the apiserver: {exc}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        except Invalid as exc:
            click.echo(f"error: the apiserver finds the configuration invalid: {exc}", err=True)
            sys.exit(EXIT_INVALID)
        except KubeError as exc:
            click.echo(f"error: the apiserver refused {kind} {name}: {exc}", err=True)
            sys.exit(EXIT_BAD)
    differences = _stored_differences(body, stored)
    if differences:
        for difference in differences:
            click.echo(f"error: the apiserver stored {difference}", err=True)
        click.echo(
            f"the stored {kind} {name} is not what was applied; check the apiserver's version "
            "(matchConditions are enabled by default from Kubernetes 1.28), or remove it with: "
            f"kubectl delete {kind} {name}",
            err=True,
        )
        sys.exit(EXIT_BAD)
    if before is None:
        what = "created"
    elif stored["metadata"]["resourceVersion"] == before:
        what = "unchanged"
    else:
        what = "configured"
    (hook,) = stored["webhooks"]
    service = hook["clientConfig"]["service"]
    selected = "namespaceSelector" in body["webhooks"][0]
    scope = "in namespaces matching the selector " if selected else ""
    click.echo(
        f"{kind} {name} {what}: UPDATEs of opted-in InferenceServices {scope}"
        f"go to service {service['namespace']}/{service['name']} port {service['port']} "
        f"path {service['path']} (failurePolicy Fail, timeout {hook['timeoutSeconds']}s)"
    )
    ca_file: _CaFile | None = options["ca_file"]
    if ca_file is not None:
        plural = "s" if ca_file.certificates != 1 else ""
        click.echo(f"caBundle: {ca_file.certificates} certificate{plural} from {ca_file.path}")
        return
    source = stored["metadata"]["annotations"][INJECT_CA_FROM]
    if hook["clientConfig"].get("caBundle"):
        click.echo(f"caBundle: injected by cert-manager from Certificate {source}")
    else:
        click.echo(
            f"caBundle: not injected yet; cert-manager's cainjector fills it in from Certificate "
            f"{source}, and until it does the apiserver cannot verify the webhook and refuses "
            "updates of opted-in InferenceServices"
        )


def _stored_differences(applied: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """What the apiserver stored differently from ``applied`` (a field it does not know is
    dropped without an error, e.g. matchConditions where they are not enabled)."""
    differences: list[str] = []
    (ours,) = applied["webhooks"]
    theirs = [hook for hook in stored.get("webhooks") or [] if hook.get("name") == ours["name"]]
    if len(theirs) != 1:
        return [f"{len(theirs)} webhooks named {ours['name']!r}, not one"]
    for field, value in ours.items():
        if field == "clientConfig":
            for key, part in value.items():
                if theirs[0].get(field, {}).get(key) != part:
                    differences.append(
                        f"clientConfig.{key} {theirs[0].get(field, {}).get(key)!r}, not {part!r}"
                    )
        elif theirs[0].get(field) != value:
            differences.append(f"{field} {theirs[0].get(field)!r}, not {value!r}")
    for key, part in (applied["metadata"].get("annotations") or {}).items():
        if (stored["metadata"].get("annotations") or {}).get(key) != part:
            differences.append(f"no annotation {key}: {part}")
    return differences


if __name__ == "__main__":  # pragma: no cover
    main()
