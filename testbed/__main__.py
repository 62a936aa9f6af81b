"""``python -m testbed``: the local test bed's commands (development only, not in the product).

    python -m testbed build     build (or reuse) kube-apiserver, etcd and helm, fetch (or reuse)
                                the CRDs
    python -m testbed up        start the test bed in the background and print how to reach it
    python -m testbed status    which parts are running
    python -m testbed down      stop every process of the test bed
    python -m testbed demo      the controller on the test bed (what `make demo` runs)
    python -m testbed servicenow serve|approve|reject|list
                                the ServiceNow simulator, and a risk owner's decisions

Run from the repository root (or with it on ``PYTHONPATH``): the test bed is not installed
with the product. Exit codes are the ``canary`` command's: 0 success; 1 the thing checked is
bad (a part of the test bed is down); 3 a dependency could not be built or started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_BAD = 1
EXIT_UNAVAILABLE = 3
PROG_NAME = "python -m testbed"

sandbox_dir_option = click.option(
    "--dir",
    "work_dir",
    type=click.Path(path_type=Path, file_okay=False, resolve_path=True),
    envvar="KSC_SANDBOX_DIR",
    show_envvar=True,
    help="Where the sandbox keeps its state, logs and kubeconfig.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The local test bed: kube-apiserver + etcd, KServe and traffic simulators, Prometheus.

    Development only: not part of the kserve-canary product or its wheel."""


@main.command("build")
def build() -> None:
    """Build (or reuse) the kube-apiserver and etcd binaries and helm (for the chart's tests)
    for this machine, and fetch (or reuse) the CRDs from their pinned Go modules."""
    from testbed.binaries import BuildError, ensure_built, ensure_helm
    from testbed.crds import ensure_crds

    try:
        binaries = ensure_built(log=lambda line: click.echo(line, err=True))
        helm = ensure_helm(log=lambda line: click.echo(line, err=True))
        crds = ensure_crds(log=lambda line: click.echo(line, err=True))
    except BuildError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    click.echo(f"kube-apiserver: {binaries.kube_apiserver}")
    click.echo(f"etcd:           {binaries.etcd}")
    click.echo(f"helm:           {helm.path} ({helm.version})")
    click.echo(f"CRDs:           {crds}")


@main.command("up")
@sandbox_dir_option
@click.option(
    "--standard-routing",
    type=click.Choice(["v0.20", "weighted"]),
    default="v0.20",
    show_default=True,
    help="Standard mode as KServe v0.20.0 (canary weights route nothing) or as later KServe "
    "(Ready canaries get their trafficPercent).",
)
def up(work_dir: Path | None, standard_routing: str) -> None:
    """Start the test bed in the background and print how to reach it."""
    from testbed.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    status = Testbed.status_of(directory)
    if status is not None and all(status.values()):
        click.echo(f"the sandbox in {directory} is already up; `{PROG_NAME} down` stops it")
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


@main.command("down")
@sandbox_dir_option
def down(work_dir: Path | None) -> None:
    """Stop every process of the test bed; nothing is left running."""
    from testbed.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    if Testbed.stop_from_state(directory):
        click.echo("sandbox stopped")
    else:
        click.echo(f"no sandbox in {directory}")


@main.command("status")
@sandbox_dir_option
def status(work_dir: Path | None) -> None:
    """Show which parts of the test bed are running. Exits 1 if any is down."""
    from testbed.testbed import Testbed, default_sandbox_dir

    directory = work_dir or default_sandbox_dir()
    parts = Testbed.status_of(directory)
    if parts is None:
        click.echo(f"no sandbox in {directory}")
        sys.exit(EXIT_BAD)
    state = Testbed.read_state(directory) or {}
    for part, running in parts.items():
        click.echo(f"{part:24} {'running' if running else 'DOWN'}")
    click.echo(f"KUBECONFIG={state.get('kubeconfig')}")
    click.echo(f"Prometheus {state.get('prometheus_url')}")
    if not all(parts.values()):
        sys.exit(EXIT_BAD)


@main.command("demo")
def demo() -> None:
    """The controller on a fresh test bed, start to finish (what `make demo` runs): two new
    fraud models promoted (one applied the GitOps way, which the admission webhook holds to
    the first step) and two rolled back; two credit models on the shipped credit-decisioning
    policy, held before 100% until a risk owner decides their change in the ServiceNow
    simulator: one approved and promoted, one rejected and rolled back. Exits 0 when every
    rollout ends as expected (for the credit models: with the decision recorded and the
    change closed) and the audit chain is intact, 1 otherwise."""
    from testbed.demo import main as run_demo

    sys.exit(run_demo())


def _servicenow() -> click.Group:
    from testbed.servicenow.cli import servicenow

    return servicenow


main.add_command(_servicenow())


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=PROG_NAME)
