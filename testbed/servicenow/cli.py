"""``python -m testbed servicenow ...``: run the simulator, and decide as a risk owner.

    serve    --port P --seed FILE --state FILE [--callback-url URL --callback-secret whsec_...
             --callback-ca-file CA.pem]
    approve  CHG0000001 --as alice [--comment TEXT] [--url URL] [--force] [--callback MODE]
    reject   CHG0000001 --as alice [--comment TEXT] ...
    list     the changes, their state and who has been asked

``--url`` defaults to ``$KSC_SERVICENOW_URL``, else ``http://127.0.0.1:8765`` (serve's default
port). Exit codes: 0 done; 1 refused (unknown change or user, not an approver); 3 the
simulator is unreachable. Only click and the standard library are imported up front.
"""

from __future__ import annotations

import signal
import ssl
import sys
import threading
from pathlib import Path

import click

__all__ = ["servicenow"]

DEFAULT_PORT = 8765
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
_MODES = ("signed", "twice", "concurrent", "forged", "none")

url_option = click.option(
    "--url",
    envvar="KSC_SERVICENOW_URL",
    show_envvar=True,
    default=f"http://127.0.0.1:{DEFAULT_PORT}",
    show_default=True,
    help="The ServiceNow simulator.",
)


@click.group("servicenow")
def servicenow() -> None:
    """The ServiceNow simulator (SERVICENOW.md): its server, and a risk owner's decisions."""


@servicenow.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0: any free port.")
@click.option(
    "--seed",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Users, groups and OAuth clients (YAML or JSON); default: the test bed's seed.yaml.",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Keep the records in this JSON file; when it exists the seed is not applied again.",
)
@click.option("--callback-url", default="", help="Where approval decisions are POSTed.")
@click.option(
    "--callback-secret",
    "callback_secrets",
    multiple=True,
    help="whsec_ secret signing the callback; repeat for a rotation (one signature each).",
)
@click.option(
    "--callback-ca-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="PEM CA bundle an https callback URL is verified against (default: the system's).",
)
@click.option("--token-lifetime", type=int, default=1799, show_default=True, help="Seconds.")
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Written with the port once serving.",
)
@click.option("--verbose", is_flag=True, help="One line per request on stderr.")
def serve(
    host: str,
    port: int,
    seed: Path | None,
    state: Path | None,
    callback_url: str,
    callback_secrets: tuple[str, ...],
    callback_ca_file: Path | None,
    token_lifetime: int,
    ready_file: Path | None,
    verbose: bool,
) -> None:
    """Serve the simulated instance until SIGTERM or SIGINT."""
    from pydantic import ValidationError

    from testbed.servicenow import signing
    from testbed.servicenow.process import DEFAULT_SEED
    from testbed.servicenow.server import CallbackTarget, ServiceNowServer
    from testbed.servicenow.store import Instance, Seed

    for secret in callback_secrets:
        try:
            signing.key_of(secret)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--callback-secret") from None
    try:
        instance = Instance(
            Seed.load(seed or DEFAULT_SEED), state_file=state, token_lifetime=token_lifetime
        )
    except (ValidationError, ValueError, OSError) as exc:
        click.echo(f"error: the seed or state file cannot be used: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    try:
        server = ServiceNowServer(
            instance,
            host=host,
            port=port,
            verbose=verbose,
            callback=CallbackTarget(callback_url, list(callback_secrets)),
            callback_ca_file=callback_ca_file,
        )
    except ssl.SSLError as exc:
        raise click.BadParameter(
            f"{callback_ca_file} holds no usable PEM certificate: {exc}",
            param_hint="--callback-ca-file",
        ) from None
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if ready_file is not None:
        ready_file.write_text(str(server.port))
    click.echo(f"ServiceNow simulator on http://{host}:{server.port}", err=True)
    stop.wait()
    server.stop()


def _decide(
    action: str, number: str, user: str, comment: str, url: str, force: bool, callback: str
) -> None:
    from testbed.servicenow.admin import AdminError, SimAdmin

    try:
        answer = SimAdmin(url).decide(number, action, user, comment, force=force, callback=callback)
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE if exc.status == 0 else EXIT_REFUSED)
    change = answer["change"]
    verb = "approved" if action == "approve" else "rejected"
    click.echo(f"{number} {verb} by {user}: approval={change['approval']} state={change['state']}")
    if not answer["moved_change"]:
        click.echo("  (the change was no longer open: only the approver record changed)")
    for delivery in answer["deliveries"]:
        outcome = delivery.get("status", delivery.get("error"))
        click.echo(f"  callback {delivery['webhook_id']} ({delivery['mode']}): {outcome}")


def _decision_command(action: str) -> click.Command:
    @click.argument("number")
    @click.option("--as", "user", required=True, help="The deciding user's user_name.")
    @click.option("--comment", default="", help="The approver's comments.")
    @url_option
    @click.option(
        "--force", is_flag=True, help="Decide even when the user is not an approver of the change."
    )
    @click.option(
        "--callback",
        type=click.Choice(_MODES),
        default="signed",
        show_default=True,
        help="How the callback is sent: signed once, twice (same webhook-id), "
        "twice concurrently, with a forged signature, or not at all.",
    )
    def command(number: str, user: str, comment: str, url: str, force: bool, callback: str) -> None:
        _decide(action, number, user, comment, url, force, callback)

    command.__doc__ = f"{action.capitalize()} change NUMBER as a risk owner would in ServiceNow."
    return click.command(action)(command)


servicenow.add_command(_decision_command("approve"))
servicenow.add_command(_decision_command("reject"))


@servicenow.command("list")
@url_option
def list_changes(url: str) -> None:
    """The changes, their state and approval, and each approver's answer."""
    from testbed.servicenow.admin import AdminError, SimAdmin

    try:
        changes = SimAdmin(url).changes()
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE if exc.status == 0 else EXIT_REFUSED)
    if not changes:
        click.echo("no changes")
    for change in changes:
        group = change["assignment_group"] or "-"
        click.echo(
            f"{change['number']}  {change['state_label']:<9} approval={change['approval']:<13} "
            f"group={group}  {change['short_description']}"
        )
        for approver in change["approvers"]:
            note = f"  ({approver['comments']})" if approver["comments"] else ""
            click.echo(f"    {approver['user_name']}: {approver['state']}{note}")
