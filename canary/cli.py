"""The ``canary`` command line.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a broken audit chain); 2 invalid
input (a malformed policy, a bad option); 3 a dependency could not be reached (database).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from canary import __version__
from canary.policy import PolicyError, load_policies
from canary.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from canary.audit import AuditStore

EXIT_BAD = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3


def _default_database_url() -> str:
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


@main.group()
def audit() -> None:
    """Inspect and verify the audit trail."""


@audit.command("verify")
@database_url_option
def audit_verify(database_url: str | None) -> None:
    """Recompute the hash chain and report the first record that does not fit.

    Exits 0 when the chain is intact, 1 when it is broken, 3 when the database cannot be read.
    """
    from canary.audit import AuditError, AuditStore

    url = database_url or _default_database_url()
    try:
        with AuditStore.from_url(url) as store:
            report = store.verify()
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    if report.ok:
        click.echo(f"audit chain intact: {report.records_checked} records, head {report.head_hash}")
        return
    click.echo(f"audit chain BROKEN at record {report.first_bad_seq}: {report.problem}", err=True)
    click.echo(f"{report.records_checked} records verified before the break", err=True)
    sys.exit(EXIT_BAD)


@main.group()
def db() -> None:
    """Manage the audit database schema."""


@db.command("upgrade")
@database_url_option
def db_upgrade(database_url: str | None) -> None:
    """Apply every migration up to the newest schema."""
    from canary.audit import AuditError, upgrade_to_head

    url = database_url or _default_database_url()
    try:
        upgrade_to_head(url)
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    click.echo("database schema is at the newest revision")


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


def _store(database_url: str | None) -> AuditStore:
    from canary.audit import AuditStore

    return AuditStore.from_url(database_url or _default_database_url())


def _actor(actor: str | None, kubeconfig: Path | None) -> str:
    if actor:
        return actor
    from canary.k8s.client import KubeClient

    try:
        with KubeClient.from_kubeconfig(kubeconfig) as kube:
            user = kube.user
    except Exception as exc:  # no kubeconfig at all
        raise click.UsageError(f"cannot tell who you are ({exc}); pass --actor") from exc
    if not user:
        raise click.UsageError("the kubeconfig's current context names no user; pass --actor")
    return user


def _send(
    target: str,
    command: str,
    reason: str,
    actor: str | None,
    kubeconfig: Path | None,
    database_url: str | None,
    wait: float,
    args: dict[str, str] | None = None,
) -> None:
    from canary.audit import AuditError
    from canary.ops import parse_target, submit_command

    try:
        namespace, name = parse_target(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAMESPACE/NAME") from exc
    who = _actor(actor, kubeconfig)
    try:
        with _store(database_url) as store:
            result = submit_command(
                store,
                namespace=namespace,
                name=name,
                command=command,
                actor=who,
                reason=reason,
                args=args,
                wait=wait,
            )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    if result.state == "accepted":
        click.echo(f"{command} accepted: {result.result}")
        return
    if result.state == "pending":
        click.echo(
            f"{command} queued (id {result.id}) but no leader answered within {wait:g}s; "
            "it will be carried out when a controller leads",
            err=True,
        )
        sys.exit(EXIT_UNAVAILABLE)
    click.echo(f"{command} {result.state}: {result.result}", err=True)
    sys.exit(EXIT_BAD)


reason_option = click.option("--reason", required=True, help="Why (recorded in the audit trail).")
actor_option = click.option(
    "--actor", help="Who is acting (default: the kubeconfig's current user)."
)
kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KUBECONFIG",
    help="Kubeconfig whose current user is the actor.",
)
wait_option = click.option(
    "--wait", default=30.0, show_default=True, help="Seconds to wait for the leader's answer."
)


def _manual(command: str, doc: str) -> None:
    @main.command(command, help=doc)
    @click.argument("target", metavar="NAMESPACE/NAME")
    @reason_option
    @actor_option
    @kubeconfig_option
    @database_url_option
    @wait_option
    def _command(
        target: str,
        reason: str,
        actor: str | None,
        kubeconfig: Path | None,
        database_url: str | None,
        wait: float,
    ) -> None:
        _send(target, command, reason, actor, kubeconfig, database_url, wait)


_manual("pause", "Hold the rollout where it is. Exits 1 if refused (with the reason).")
_manual("resume", "Continue a paused rollout; the current step needs fresh evidence.")
_manual("promote", "Promote the canary to 100% now (still subject to approvals and windows).")
_manual("abort", "Roll the canary back to 0% and end the rollout.")


@main.group()
def rollout() -> None:
    """Start rollouts."""


@rollout.command("start")
@click.argument("target", metavar="NAMESPACE/NAME")
@click.option("--storage-uri", required=True, help="Where the new model is.")
@reason_option
@actor_option
@kubeconfig_option
@database_url_option
@wait_option
def rollout_start(
    target: str,
    storage_uri: str,
    reason: str,
    actor: str | None,
    kubeconfig: Path | None,
    database_url: str | None,
    wait: float,
) -> None:
    """Deploy a new model as a canary: ONE write that changes the model and gives the new
    revision only the first step's traffic. The leader makes the write after recording
    its intent; the rollout then proceeds as its policy says."""
    _send(
        target,
        "start",
        reason,
        actor,
        kubeconfig,
        database_url,
        wait,
        args={"storage_uri": storage_uri},
    )


@main.command("status")
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="Only this namespace.")
@click.option("--all", "include_finished", is_flag=True, help="Include finished rollouts.")
@click.option(
    "--look-seconds",
    type=click.FloatRange(min=0.001),
    default=5.0,
    envvar="KSC_LOOK_PERIOD_SECONDS",
    show_default=True,
    help="The controller's look period, to turn evidence into time.",
)
@database_url_option
def status(
    name: str | None,
    namespace: str | None,
    include_finished: bool,
    look_seconds: float,
    database_url: str | None,
) -> None:
    """Rollouts: phase, step, weights, last verdict, next action and when."""
    from canary.audit import AuditError
    from canary.ops import render_status, status_lines

    if name is not None and "/" in name:
        namespace, _, name = name.partition("/")
    try:
        with _store(database_url) as store:
            lines = status_lines(
                store,
                namespace=namespace,
                name=name,
                include_finished=include_finished,
                look_seconds=look_seconds,
            )
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    if not lines:
        click.echo("no rollouts" + ("" if include_finished else " in progress"))
        return
    click.echo(render_status(lines))


if __name__ == "__main__":  # pragma: no cover
    main()
