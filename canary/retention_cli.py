"""``canary audit purge``: remove the audit trail beyond its retention, as an explicit, audited
operation that keeps the chain verifiable (the rules: :mod:`canary.audit.retention`).

Run by a person with the database owner's URL, never by the controller. It verifies the whole
chain against the checkpoints given, finds the highest record that is older than the cutoff
(now minus the retention) with everything before it, and that a checkpoint signed by a
pinned key vouches for, and in one transaction records the purge in the chain and in
``audit_purges`` and deletes the records up to it. Exit 0 purged (or, with ``--dry-run``,
what would be); 1 the chain does not verify (a broken or tampered chain is never purged);
2 refused or invalid input (nothing old enough, no checkpoint vouches for a record that is,
a role that may not purge, a retention below the policy, unreadable files, the
confirmation declined); 3 the database cannot be read. Nothing is changed unless it exits 0
without ``--dry-run``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from canary.cli_common import (
    EXIT_BAD,
    EXIT_INVALID,
    check_schema,
    connect_timeout_option,
    database_failure,
    database_url_option,
    default_database_url,
    open_store,
)

if TYPE_CHECKING:
    from canary.audit.checkpoint import SignedCheckpoint, TrustedKeys
    from canary.trail_check import TrailCheck

__all__ = ["audit_purge"]


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _retention(given: int | None) -> int:
    """The retention to purge by: the policy (the ``audit_retention_days`` setting), or
    ``--retention-days`` when it keeps at least as much."""
    from canary.audit.retention import MIN_RETENTION_DAYS, retention_warning
    from canary.settings import SettingsError, load_settings

    try:
        policy = load_settings().audit_retention_days
    except SettingsError as exc:
        _fail(EXIT_INVALID, f"cannot read the retention policy: {exc}")
    days = policy if given is None else given
    if days < MIN_RETENTION_DAYS:
        _fail(EXIT_INVALID, f"--retention-days {days}: a purge always keeps at least "
                            f"{MIN_RETENTION_DAYS} days")  # fmt: skip
    if days < policy:
        _fail(
            EXIT_INVALID,
            f"--retention-days {days} is shorter than the retention policy "
            f"(audit_retention_days = {policy}): a purge removes only what the policy lets go; "
            "if the policy changed, change the setting (KSC_AUDIT_RETENTION_DAYS)",
        )
    warning = retention_warning(days)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    return days


def read_checkpoint_files(paths: tuple[Path, ...]) -> list[SignedCheckpoint]:
    """The signed checkpoints in ``paths`` (``--checkpoint`` files of ``canary audit verify``
    and ``purge``); an unreadable or malformed file ends the command (exit 2)."""
    from canary.audit.checkpoint import CheckpointError, parse_envelopes

    found: list[SignedCheckpoint] = []
    for path in paths:
        try:
            found.extend(parse_envelopes(path.read_text(encoding="utf-8"), source=str(path)))
        except OSError as exc:
            _fail(EXIT_INVALID, f"cannot read {path}: {exc.strerror}")
        except (CheckpointError, UnicodeDecodeError) as exc:
            _fail(EXIT_INVALID, str(exc))
    return found


def _trusted(
    checkpoint_files: tuple[Path, ...], public_keys: tuple[Path, ...]
) -> tuple[list[SignedCheckpoint], TrustedKeys]:
    from canary.audit.checkpoint import CheckpointError, TrustedKeys

    try:
        keys = TrustedKeys.from_files(list(public_keys))
    except CheckpointError as exc:
        _fail(EXIT_INVALID, str(exc))
    return read_checkpoint_files(checkpoint_files), keys


def _refuse_tampered(trail: TrailCheck) -> NoReturn:
    chain = trail.chain
    if not chain.ok:
        click.echo(f"audit chain BROKEN at record {chain.first_bad_seq}: {chain.problem}", err=True)
    if trail.anchors is not None:
        for finding in trail.anchors.findings:
            if finding.tampered:
                click.echo(f"TAMPERED: {finding.message}", err=True)
    _fail(
        EXIT_BAD,
        "nothing purged: the audit trail does not verify, and a broken or tampered chain is "
        "never purged (the evidence would go with it); run `canary audit verify`",
    )


@click.command("purge")
@database_url_option
@connect_timeout_option
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    metavar="DAYS",
    help="Keep the records of the last DAYS days (default: the audit_retention_days setting, "
    "2557 = 7 years); never fewer than that setting, nor fewer than 31.",
)
@click.option(
    "--checkpoint",
    "checkpoint_files",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of signed checkpoints (canary audit checkpoints -o FILE, or a witness's); "
    "the purge ends on the latest one old enough. May be given several times.",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KSC_AUDIT_PUBLIC_KEY_FILES",
    show_envvar=True,
    help="PEM public key that signs checkpoints (each key in use or retired).",
)
@click.option(
    "--log-name",
    default="kserve-canary",
    show_default=True,
    envvar="KSC_AUDIT_LOG_NAME",
    show_envvar=True,
    help="The audit log's name, as its checkpoints state it (setting audit_log_name).",
)
@click.option("--reason", help="Why (a change or ticket number): kept in the purge's record.")
@click.option("--dry-run", is_flag=True, help="Say what would be purged; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before purging.")
def audit_purge(
    database_url: str | None,
    connect_timeout: float,
    retention_days: int | None,
    checkpoint_files: tuple[Path, ...],
    public_keys: tuple[Path, ...],
    log_name: str,
    reason: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Purge the audit records older than the retention, up to a signed checkpoint.

    Run it as the database's owner role (the controller's application role cannot delete).
    The chain is verified first; the purge is recorded in the chain (an audit.purged record)
    and in audit_purges, with the checkpoint that vouches for where the chain now starts, so
    `canary audit verify` still checks it. Exits 0 purged (or would be, with --dry-run),
    1 the chain does not verify, 2 refused or invalid input, 3 the database cannot be read.
    """
    from canary.audit import AuditError, PurgeRefused
    from canary.audit.database import check_sqlite_file, parse_url
    from canary.audit.records import format_timestamp
    from canary.audit.retention import plan_purge, retention_cutoff, span
    from canary.trail_check import check_trail

    days = _retention(retention_days)
    checkpoints, keys = _trusted(checkpoint_files, public_keys)
    url = database_url or default_database_url()
    if not dry_run:  # a purge writes: never to a SQLite file it would create
        try:
            check_sqlite_file(parse_url(url), must_exist=True)
        except AuditError as exc:
            database_failure(exc)
    store = open_store(url, connect_timeout, read_only=dry_run)
    check_schema(store)
    try:
        with store:
            purged_by = store.purge_role()
            trail = check_trail(store, checkpoints=checkpoints, keys=keys, log_name=log_name)
            if trail.tampered:
                _refuse_tampered(trail)
            cutoff = retention_cutoff(datetime.now(UTC), days)
            scope = store.purge_scope(cutoff)
            wanted = [c.seq for c in checkpoints if scope.floor < c.seq <= scope.old_through]
            plan = plan_purge(
                checkpoints,
                keys=keys,
                log=log_name,
                scope=scope,
                hashes=store.record_hashes(wanted),
                cutoff=cutoff,
                retention_days=days,
            )
            for line in plan.lines():
                click.echo(line)
            if dry_run:
                click.echo(
                    f"dry run: nothing changed; {purged_by} would purge "
                    f"{span(plan.floor + 1, plan.through_seq)} ({plan.records})"
                )
                return
            question = (
                f"Purge {span(plan.floor + 1, plan.through_seq)} ({plan.records}) as "
                f"{purged_by}? This cannot be undone"
            )
            try:
                confirmed = yes or click.confirm(question, default=False)
            except click.Abort:
                confirmed = False
            if not confirmed:
                _fail(EXIT_INVALID, "nothing purged (not confirmed; --yes skips the question)")
            done = store.purge(plan, at=datetime.now(UTC), reason=reason)
    except PurgeRefused as exc:
        _fail(EXIT_INVALID, str(exc))
    except AuditError as exc:
        database_failure(exc)
    row = done.row
    click.echo(
        f"purged {span(plan.floor + 1, row.through_seq)} ({row.records} records, "
        f"{done.measurements} measurement rows) as {row.purged_by} at "
        f"{format_timestamp(row.purged_at)}, recorded in the chain as record {done.record.seq} "
        f"(audit.purged); the chain now starts at record {row.through_seq + 1}"
    )
