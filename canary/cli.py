"""The ``canary`` command line.

Exit codes: 0 success; 1 the thing checked is bad (e.g. a broken audit chain); 2 invalid
input (a malformed policy, a bad option); 3 a dependency could not be reached (database).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from canary import __version__
from canary.policy import PolicyError, load_policies
from canary.settings import SettingsError, load_settings

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


# --- the local test bed ---------------------------------------------------------------------

sandbox_dir_option = click.option(
    "--dir",
    "work_dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="KSC_SANDBOX_DIR",
    show_envvar=True,
    help="Where the sandbox keeps its state, logs and kubeconfig.",
)


@main.group()
def sandbox() -> None:
    """The local test bed: kube-apiserver + etcd, KServe and traffic simulators, Prometheus."""


@sandbox.command("build")
def sandbox_build() -> None:
    """Build (or reuse) the kube-apiserver and etcd binaries for this machine."""
    from canary.sandbox.binaries import BuildError, ensure_built

    try:
        binaries = ensure_built(log=lambda line: click.echo(line, err=True))
    except BuildError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    click.echo(f"kube-apiserver: {binaries.kube_apiserver}")
    click.echo(f"etcd:           {binaries.etcd}")


@sandbox.command("up")
@sandbox_dir_option
@click.option(
    "--standard-routing",
    type=click.Choice(["v0.20", "weighted"]),
    default="v0.20",
    show_default=True,
    help="Standard mode as KServe v0.20.0 (canary weights route nothing) or as later KServe "
    "(Ready canaries get their trafficPercent).",
)
def sandbox_up(work_dir: Path | None, standard_routing: str) -> None:
    """Start the test bed in the background and print how to reach it."""
    from canary.sandbox.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    status = Testbed.status_of(directory)
    if status is not None and all(status.values()):
        click.echo(f"the sandbox in {directory} is already up; `canary sandbox down` stops it")
        return
    if status is not None:
        Testbed.stop_from_state(directory)  # remains of a half-dead sandbox
    testbed = Testbed(
        directory,
        detach=True,
        standard_routing="weighted" if standard_routing == "weighted" else "v0.20",
        log=lambda line: click.echo(line, err=True),
    )
    try:
        testbed.up()
    except Exception as exc:  # every part reports a specific reason
        click.echo(f"error: the sandbox could not start: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    timings = testbed.timings
    click.echo(f"sandbox up in {timings.total:.1f} s" if timings else "sandbox up")
    click.echo(f"  export KUBECONFIG={testbed.kubeconfig_path}")
    click.echo(f"  Prometheus: {testbed.prometheus_url}")
    click.echo(f"  model behaviour: {testbed.behaviour_path}")
    click.echo(f"  logs: {directory}")


@sandbox.command("down")
@sandbox_dir_option
def sandbox_down(work_dir: Path | None) -> None:
    """Stop every process of the test bed; nothing is left running."""
    from canary.sandbox.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    if Testbed.stop_from_state(directory):
        click.echo("sandbox stopped")
    else:
        click.echo(f"no sandbox in {directory}")


@sandbox.command("status")
@sandbox_dir_option
def sandbox_status(work_dir: Path | None) -> None:
    """Show which parts of the test bed are running. Exits 1 if any is down."""
    from canary.sandbox.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    status = Testbed.status_of(directory)
    if status is None:
        click.echo(f"no sandbox in {directory}")
        sys.exit(EXIT_BAD)
    state = Testbed.read_state(directory) or {}
    for part, running in status.items():
        click.echo(f"{part:24} {'running' if running else 'DOWN'}")
    click.echo(f"KUBECONFIG={state.get('kubeconfig')}")
    click.echo(f"Prometheus {state.get('prometheus_url')}")
    if not all(status.values()):
        sys.exit(EXIT_BAD)


if __name__ == "__main__":  # pragma: no cover
    main()
