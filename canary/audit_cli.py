"""``canary audit``: verify the audit trail, against signed checkpoints held outside it.

* ``canary audit verify``: recompute the hash chain, then compare the database with the
  signed checkpoints the witnesses keep (``--checkpoint FILE``, ``--witness-configmap``),
  checked with the public keys the auditor pins (``--public-key``). Exit 0 intact (records
  after the latest checkpoint are reported as not yet anchored), 1 tampered (a broken chain,
  a truncated or rewritten history, a checkpoint not signed by a pinned key), 2 invalid
  input (an unreadable checkpoint or key file, options that do not fit), 3 cannot read (the
  database, the apiserver).
* ``canary audit checkpoints``: export checkpoints (from the database's copy or from the
  ConfigMap witness) as JSON Lines, for an auditor to keep and pass to ``verify`` later.
* ``canary audit keygen``: a new Ed25519 signing key (PEM) and its public key.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from canary.cli_common import (
    EXIT_BAD,
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    check_schema,
    connect_timeout_option,
    database_failure,
    database_url_option,
    open_store,
)

if TYPE_CHECKING:
    from canary.audit import AuditStore
    from canary.audit.checkpoint import SignedCheckpoint
    from canary.trail_check import TrailCheck

__all__ = ["audit"]

DEFAULT_CONFIGMAP = "kserve-canary-audit-checkpoints"
DEFAULT_NAMESPACE = "kserve-canary"


@click.group()
def audit() -> None:
    """Inspect and verify the audit trail."""


def _fail(code: int, message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _open(database_url: str | None, connect_timeout: float) -> AuditStore:
    """The store, read-only (a SQLite file is never created), its schema checked."""
    store = open_store(database_url, connect_timeout, read_only=True)
    check_schema(store)
    return store


def _configmap_ref(value: str) -> tuple[str, str]:
    namespace, _, name = value.rpartition("/")
    return (namespace or DEFAULT_NAMESPACE), name


def _witnessed(
    configmap: str, kubeconfig: Path | None, context: str | None
) -> list[SignedCheckpoint]:
    """What the ConfigMap witness keeps, read with the caller's own credentials."""
    from canary.k8s.client import KubeClient, KubeConfigError
    from canary.witness import ConfigMapWitness, WitnessError

    namespace, name = _configmap_ref(configmap)
    try:
        if kubeconfig is not None or context is not None:
            kube = KubeClient.from_kubeconfig(kubeconfig, context)
        else:
            kube = KubeClient.connect()
    except KubeConfigError as exc:
        _fail(EXIT_INVALID, f"cannot load your Kubernetes credentials: {exc}")
        raise AssertionError("unreachable") from None
    with kube:
        try:
            found = ConfigMapWitness(kube, namespace=namespace, name=name).read()
        except WitnessError as exc:
            _fail(EXIT_UNAVAILABLE, str(exc))
            raise AssertionError("unreachable") from None
    if not found:
        _fail(EXIT_UNAVAILABLE, f"ConfigMap {namespace}/{name} holds no checkpoint (or is absent)")
    return found


def _from_files(paths: tuple[Path, ...]) -> list[SignedCheckpoint]:
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


witness_options = [
    click.option(
        "--witness-configmap",
        "configmap",
        metavar="[NAMESPACE/]NAME",
        help="Read the checkpoints the ConfigMap witness keeps (default namespace "
        f"{DEFAULT_NAMESPACE}), with your kubeconfig's credentials.",
    ),
    click.option(
        "--kubeconfig",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="KUBECONFIG",
        help="Kubeconfig for --witness-configmap.",
    ),
    click.option("--context", help="Kubeconfig context for --witness-configmap."),
]


def _with_witness_options(func: Any) -> Any:
    for option in reversed(witness_options):
        func = option(func)
    return func


@audit.command("verify")
@database_url_option
@connect_timeout_option
@click.option(
    "--checkpoint",
    "checkpoint_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of signed checkpoints (JSON, a JSON array or JSON Lines) kept outside the "
    "database; may be given several times.",
)
@_with_witness_options
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="KSC_AUDIT_PUBLIC_KEY_FILES",
    show_envvar=True,
    help="PEM public key that signs checkpoints (one per key in use or retired); never "
    "taken from the witness itself.",
)
@click.option(
    "--log-name",
    default="kserve-canary",
    show_default=True,
    envvar="KSC_AUDIT_LOG_NAME",
    show_envvar=True,
    help="The audit log's name, as its checkpoints state it (setting audit_log_name).",
)
@click.option(
    "--since-checkpoint",
    is_flag=True,
    help="Verify only the records after the latest checkpoint the database agrees with "
    "(incremental); default: the whole chain.",
)
@click.option(
    "--require-anchored",
    is_flag=True,
    help="Exit 1 unless every record is vouched for by a signed checkpoint.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def audit_verify(
    database_url: str | None,
    connect_timeout: float,
    checkpoint_files: tuple[Path, ...],
    configmap: str | None,
    kubeconfig: Path | None,
    context: str | None,
    public_keys: tuple[Path, ...],
    log_name: str,
    since_checkpoint: bool,
    require_anchored: bool,
    as_json: bool,
) -> None:
    """Recompute the hash chain and compare it with the signed checkpoints.

    Names the first record that does not fit, a truncation ("the witness saw record N; the
    database ends at M"), a rewritten history (the signed hash of record N differs) and the
    records after the latest checkpoint (not yet anchored). Exits 0 intact, 1 tampered,
    2 invalid input, 3 cannot read.
    """
    from canary.audit import AuditError
    from canary.audit.checkpoint import CheckpointError, TrustedKeys

    checkpoints = _from_files(checkpoint_files)
    if configmap:
        checkpoints.extend(_witnessed(configmap, kubeconfig, context))
    keys: TrustedKeys | None = None
    if checkpoints or public_keys:
        if not public_keys:
            _fail(
                EXIT_INVALID,
                "checkpoints are only as good as the key that signed them: pass --public-key "
                "with the public key you hold (never one taken from the witness)",
            )
        try:
            keys = TrustedKeys.from_files(list(public_keys))
        except CheckpointError as exc:
            _fail(EXIT_INVALID, str(exc))
    from canary.trail_check import check_trail

    store = _open(database_url, connect_timeout)
    try:
        with store:
            result = check_trail(
                store,
                checkpoints=checkpoints,
                keys=keys,
                log_name=log_name,
                since_checkpoint=since_checkpoint,
            )
    except AuditError as exc:
        database_failure(exc)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_report(result, checkpoints_given=bool(checkpoints))
    if result.tampered or (require_anchored and result.unanchored):
        sys.exit(EXIT_BAD)


def _print_report(result: TrailCheck, *, checkpoints_given: bool) -> None:
    from canary.audit.records import format_timestamp

    chain, anchors = result.chain, result.anchors
    scope = "" if result.from_seq == 1 else f" after checkpoint {result.from_seq - 1}"
    if chain.ok:
        click.echo(
            f"audit chain intact{scope}: {chain.records_checked} records, head record "
            f"{chain.head_seq} {chain.head_hash}"
        )
    else:
        click.echo(f"audit chain BROKEN at record {chain.first_bad_seq}: {chain.problem}", err=True)
        click.echo(f"{chain.records_checked} records verified before the break", err=True)
    if anchors is None:
        click.echo(
            "not anchored: no signed checkpoint given, so a truncated or rewritten history "
            "cannot be told from this database alone (pass --checkpoint FILE or "
            "--witness-configmap, with --public-key)"
            if not checkpoints_given
            else "not anchored"
        )
        return
    for finding in anchors.findings:
        if finding.tampered:
            click.echo(f"TAMPERED: {finding.message}", err=True)
    if anchors.anchored_seq:
        at = format_timestamp(anchors.anchored_at) if anchors.anchored_at else "?"
        click.echo(
            f"anchored: record {anchors.anchored_seq} matches the checkpoint signed {at} by "
            f"{anchors.key_id} ({anchors.checkpoints} checkpoints checked)"
        )
    for finding in anchors.findings:
        if not finding.tampered:
            click.echo(f"warning: {finding.message}")


@audit.command("checkpoints")
@database_url_option
@connect_timeout_option
@click.option(
    "--source",
    type=click.Choice(["database", "configmap"]),
    default="database",
    show_default=True,
    help="The database's copy (what the controller signed), or the ConfigMap witness's.",
)
@_with_witness_options
@click.option("--after-seq", type=click.IntRange(min=0), default=0, help="Only later ones.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write them to this file (JSON Lines) instead of printing them.",
)
def audit_checkpoints(
    database_url: str | None,
    connect_timeout: float,
    source: str,
    configmap: str | None,
    kubeconfig: Path | None,
    context: str | None,
    after_seq: int,
    output: Path | None,
) -> None:
    """Export signed checkpoints as JSON Lines, to keep them where the database's
    administrators cannot reach (and pass them to ``verify --checkpoint`` later)."""
    from canary.audit import AuditError

    if source == "configmap":
        found = [
            c
            for c in _witnessed(configmap or DEFAULT_CONFIGMAP, kubeconfig, context)
            if c.seq > after_seq
        ]
    else:
        store = _open(database_url, connect_timeout)
        try:
            with store:
                found = []
                while True:
                    page = store.checkpoints(after_seq=after_seq, limit=1000)
                    found.extend(page)
                    if len(page) < 1000:
                        break
                    after_seq = page[-1].seq
        except AuditError as exc:
            _fail(EXIT_UNAVAILABLE, str(exc))
            raise AssertionError("unreachable") from None
    text = "".join(c.to_json() + "\n" for c in found)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(EXIT_INVALID, f"cannot write {output}: {exc.strerror}")
        click.echo(f"{len(found)} checkpoints written to {output}", err=True)


@audit.command("keygen")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the private key (PEM, mode 0600); never overwritten.",
)
@click.option(
    "--public-output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the public key (PEM) here, for auditors.",
)
def audit_keygen(output: Path, public_output: Path | None) -> None:
    """Create an Ed25519 key that signs the audit chain's checkpoints.

    Store it as a Secret only the controller can read (``kubectl create secret generic
    kserve-canary-audit-signing-key --from-file=key.pem=FILE``), give auditors the public
    key, and keep the private key away from the database's administrators."""
    from canary.audit.checkpoint import CheckpointSigner, generate_private_key_pem, public_key_pem

    pem = generate_private_key_pem()
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(EXIT_INVALID, f"{output} exists; not overwriting a key")
        raise AssertionError("unreachable") from None
    except OSError as exc:
        _fail(EXIT_INVALID, f"cannot create {output}: {exc.strerror}")
        raise AssertionError("unreachable") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    signer = CheckpointSigner.from_pem(pem)
    public = public_key_pem(signer.public_key)
    if public_output is not None:
        try:
            public_output.write_bytes(public)
        except OSError as exc:
            _fail(EXIT_INVALID, f"cannot write {public_output}: {exc.strerror}")
    click.echo(f"key id {signer.key_id}; private key written to {output}", err=True)
    click.echo(public.decode("ascii"), nl=False)
