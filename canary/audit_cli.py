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
* ``canary audit purge``: remove records beyond the retention, up to a signed checkpoint, as
  an audited operation (:mod:`canary.retention_cli`).
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
    EXIT_DENIED,
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    ApiTarget,
    api_options,
    check_schema,
    connect_timeout_option,
    credentials_of,
    database_failure,
    database_url_option,
    open_store,
)
from canary.retention_cli import audit_purge, read_checkpoint_files

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


audit.add_command(audit_purge)


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

    checkpoints = read_checkpoint_files(checkpoint_files)
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
    if result.from_seq > 1 and result.from_seq - 1 == chain.purged_through:
        scope = f" from record {result.from_seq} (the records before it were purged)"
    if chain.ok:
        click.echo(
            f"audit chain intact{scope}: {chain.records_checked} records, head record "
            f"{chain.head_seq} {chain.head_hash}"
        )
    else:
        click.echo(f"audit chain BROKEN at record {chain.first_bad_seq}: {chain.problem}", err=True)
        click.echo(f"{chain.records_checked} records verified before the break", err=True)
    if anchors is None and result.purges:
        click.echo(
            f"purged: {result.purges[-1].describe()}; whether a signed checkpoint vouches for "
            "where the chain now starts was not checked (pass --public-key)"
        )
    if anchors is None:
        _print_tables(result)
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
    _print_tables(result)
    if anchors.anchored_seq:
        at = format_timestamp(anchors.anchored_at) if anchors.anchored_at else "?"
        click.echo(
            f"anchored: record {anchors.anchored_seq} matches the checkpoint signed {at} by "
            f"{anchors.key_id} ({anchors.checkpoints} checkpoints checked)"
        )
    for finding in anchors.findings:
        if finding.kind == "purged":
            click.echo(finding.message)
        elif not finding.tampered:
            click.echo(f"warning: {finding.message}")


def _print_tables(result: TrailCheck) -> None:
    """The mutable tables against the chain: tampering first, then rows older than chaining."""
    if result.tables is None:
        return
    for d in result.tables:
        if d.tampering:
            click.echo(f"TAMPERED: {d.table} {d.key}: {d.problem}", err=True)
    older = [d for d in result.tables if not d.tampering]
    if older:
        click.echo(f"note: {len(older)} rows predate chained records of their kind (not checked)")
    if not any(d.tampering for d in result.tables):
        click.echo("tables: commands, approvals and webhook deliveries agree with the chain")


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


# --- the auditor API, with your own cluster credentials (or an auditor token) ---------------


def _auditor_options(func: Any) -> Any:
    func = click.option(
        "--token",
        envvar="KSC_AUDIT_TOKEN",
        show_envvar=True,
        help="An auditor token (canary audit token) instead of your cluster credentials.",
    )(func)
    return api_options(func)


def _auditor(
    api_url: str | None,
    api_ca: Path | None,
    tls_server_name: str | None,
    kubeconfig: Path | None,
    context: str | None,
    token: str | None,
) -> Any:
    from canary.remote import AuditorClient

    if not api_url:
        raise click.UsageError(
            "no API given: pass --api-url or set KSC_API_URL (for example https://localhost:8443 "
            "after 'kubectl -n kserve-canary port-forward svc/kserve-canary 8443')"
        )
    certificate = None
    if not token:
        found = credentials_of(ApiTarget(api_url, api_ca, tls_server_name, kubeconfig, context))
        token, certificate = found.token, found.certificate
    try:
        return AuditorClient(
            api_url, token, certificate=certificate, ca_file=api_ca,
            tls_server_name=tls_server_name,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _answer(client: Any, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON answer, or exit: 4 refused credentials, 2 a question the API refuses, 3 no
    answer."""
    from canary.remote import Unreachable

    try:
        answer = client.json(path, params)
    except Unreachable as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    if answer.status == 200:
        return dict(answer.body)
    _refused(answer.status, answer.error)
    raise AssertionError("unreachable")


def _refused(status: int, message: str) -> None:
    if status in (401, 403):
        _fail(EXIT_DENIED, message)
    if status in (400, 404, 422):
        _fail(EXIT_INVALID, message)
    _fail(EXIT_UNAVAILABLE, message)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _time(text: object) -> str:
    return str(text or "-").replace("T", " ").replace(".000000Z", "Z")


def _model(ref: object) -> str:
    if not isinstance(ref, dict):
        return "-"
    return str(ref.get("storage_uri") or ref.get("revision") or "-")


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
time_type = click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z"])


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


@audit.command("history")
@click.argument("target", required=False, metavar="[NAMESPACE/NAME | NAMESPACE]")
@click.option("--model", help="A revision name or storageUri the rollouts deployed or replaced.")
@click.option("--since", type=time_type, help="Started at or after (with a zone: ...Z or +01:00).")
@click.option("--until", type=time_type, help="Started at or before.")
@click.option("--outcome", help="A phase (Succeeded, RolledBack, ...), active or finished.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@output_option
@_auditor_options
def audit_history(
    target: str | None, model: str | None, since: Any, until: Any, outcome: str | None,
    limit: int, output: str, **api: Any,
) -> None:  # fmt: skip
    """Rollouts, newest first, from the audit trail (through the auditor API)."""
    params: dict[str, str] = {}
    if target:
        namespace, _, name = target.partition("/")
        params["namespace"] = namespace
        if name:
            params["name"] = name
    for key, value in (("model", model), ("since", _iso(since)), ("until", _iso(until)),
                       ("outcome", outcome)):  # fmt: skip
        if value is not None:
            params[key] = value
    found: list[dict[str, Any]] = []
    with _auditor(**api) as client:
        cursor: str | None = None
        while len(found) < limit:
            page = _answer(
                client, "/rollouts", {**params, "limit": str(min(500, limit - len(found))),
                                      **({"cursor": cursor} if cursor else {})},
            )  # fmt: skip
            found.extend(page["rollouts"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
    if output == "json":
        click.echo(json.dumps({"rollouts": found}, indent=2))
        return
    _table(
        [[_time(r["created_at"]), f"{r['namespace']}/{r['name']}", r["id"], r["phase"],
          _model(r.get("canary")), _model(r.get("stable")), r.get("started_by") or "-"]
         for r in found],
        ["STARTED (UTC)", "SERVICE", "ROLLOUT", "PHASE", "NEW MODEL", "OLD MODEL", "BY"],
    )  # fmt: skip


@audit.command("at")
@click.argument("when", type=time_type, metavar="TIME")
@click.argument("target", required=False, metavar="NAMESPACE/NAME")
@click.option("--model", help="Every service that served this revision name or storageUri.")
@output_option
@_auditor_options
def audit_at(when: Any, target: str | None, model: str | None, output: str, **api: Any) -> None:
    """Which model versions carried traffic at TIME, with what share, under which rollout,
    approved by whom, on what evidence."""
    if (target is None) == (model is None):
        raise click.UsageError("give NAMESPACE/NAME or --model (one of them)")
    params = {"time": when.isoformat()}
    if model is not None:
        params["model"] = model
    else:
        assert target is not None
        namespace, _, name = target.partition("/")
        if not namespace or not name:
            raise click.BadParameter(f"expected NAMESPACE/NAME, got {target!r}")
        params.update(namespace=namespace, name=name)
    with _auditor(**api) as client:
        answer = _answer(client, "/at", params)
    if output == "json":
        click.echo(json.dumps(answer, indent=2))
        return
    for single in answer.get("answers", [answer]):
        _print_point_in_time(single)


def _print_point_in_time(answer: dict[str, Any]) -> None:
    as_of = answer.get("as_of") or {}
    click.echo(
        f"{answer.get('namespace')}/{answer.get('name')} at {_time(answer.get('at'))}: "
        f"{answer.get('status', '')} (from record #{as_of.get('seq', '-')}, "
        f"{_time(as_of.get('at'))})"
    )
    for note in answer.get("notes") or ():
        click.echo(f"  note: {note}")
    rows = []
    for r in answer.get("revisions") or ():
        rollout = r.get("rollout") or {}
        approval = r.get("approval") or {}
        evidence = r.get("evidence") or {}
        who = approval.get("approver") or approval.get("status") or "-"
        change = approval.get("change_number") or ""
        rows.append([
            r.get("revision") or "-", f"{r.get('percent')}%", _model(r.get("model") or r),
            f"{rollout.get('id', '-')} ({rollout.get('phase', '-')})",
            f"{who} {change}".strip(), f"{evidence.get('evaluations', 0)} evaluations",
        ])  # fmt: skip
    _table(rows, ["REVISION", "SHARE", "MODEL", "ROLLOUT", "APPROVED BY", "EVIDENCE"])


@audit.command("show")
@click.argument("rollout_id", metavar="ROLLOUT")
@output_option
@_auditor_options
def audit_show(rollout_id: str, output: str, **api: Any) -> None:
    """One rollout: its summary, timeline, steps, approvals and people's actions."""
    from canary.remote import AuditorClient

    with _auditor(**api) as client:
        dossier = _answer(client, AuditorClient.rollout_path(rollout_id))
    if output == "json":
        click.echo(json.dumps(dossier, indent=2))
        return
    _print_dossier(dossier)


def _who(actor: object) -> str:
    if not isinstance(actor, dict):
        return "-"
    return f"{actor.get('id')} ({actor.get('kind')})"


def _print_dossier(dossier: dict[str, Any]) -> None:
    s = dossier.get("summary") or {}
    click.echo(f"rollout {s.get('rollout_id')}: {s.get('namespace')}/{s.get('name')} "
               f"(policy {s.get('policy')}, {s.get('mode')} mode)")  # fmt: skip
    click.echo(f"  phase      {s.get('phase')}: {s.get('reason') or '-'}")
    click.echo(f"  new model  {_model(s.get('canary'))}   old model {_model(s.get('stable'))}")
    click.echo(f"  started    {_time(s.get('started_at'))} by {_who(s.get('started_by'))}")
    click.echo(f"  ended      {_time(s.get('ended_at'))}")
    click.echo(f"  records    #{s.get('first_seq')} to #{s.get('last_seq')} ({s.get('records')})")
    for approval in dossier.get("approvals") or ():
        click.echo(
            f"  approval   {approval.get('state')} at {approval.get('percent')}%: "
            f"{approval.get('change_number') or '-'} by {approval.get('approver') or '-'} "
            f"at {_time(approval.get('decided_at'))}"
        )
    verification = dossier.get("verification") or {}
    chain = verification.get("chain") or verification
    if chain:
        click.echo(f"  chain      {'intact' if chain.get('ok', True) else 'BROKEN'} "
                   f"({chain.get('records_checked', '-')} records checked)")  # fmt: skip
    click.echo("")
    _table(
        [[f"#{r.get('seq')}", _time(r.get("at")), str(r.get("action")), _who(r.get("actor")),
          str(r.get("reason") or "")[:90]] for r in dossier.get("log") or ()],
        ["RECORD", "TIME (UTC)", "ACTION", "ACTOR", "WHY"],
    )  # fmt: skip


@audit.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default="json",
    show_default=True,
    help="json: JSON Lines with each record's exact hashed body.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="The file to write (default: standard output).")  # fmt: skip
@click.option("-n", "--namespace")
@click.option("--name")
@click.option("--rollout", help="One rollout's records.")
@click.option("--action", help="One action, e.g. approval.verified.")
@click.option("--since", type=time_type)
@click.option("--until", type=time_type)
@_auditor_options
def audit_export(
    fmt: str, output: Path | None, namespace: str | None, name: str | None,
    rollout: str | None, action: str | None, since: Any, until: Any, **api: Any,
) -> None:  # fmt: skip
    """Records from the audit trail, streamed as CSV or JSON Lines."""
    from canary.remote import Unreachable

    params = {"format": fmt}
    filters = {
        "namespace": namespace, "name": name, "rollout": rollout, "action": action,
        "since": _iso(since), "until": _iso(until),
    }  # fmt: skip
    params.update({k: v for k, v in filters.items() if v is not None})
    sink = sys.stdout.buffer if output is None else None
    target = output.with_name(output.name + ".part") if output is not None else None
    with _auditor(**api) as client:
        try:
            with open(target, "wb") if target is not None else _nullwriter(sink) as out:
                answer = client.download("/export", out.write, params)
        except OSError as exc:
            _fail(EXIT_INVALID, f"cannot write {output}: {exc.strerror}")
        except Unreachable as exc:
            if target is not None:
                target.unlink(missing_ok=True)
            _fail(EXIT_UNAVAILABLE, str(exc))
    if answer.status != 200:
        if target is not None:
            target.unlink(missing_ok=True)
        try:
            message = json.loads(answer.body).get("error") or f"HTTP {answer.status}"
        except ValueError:
            message = f"HTTP {answer.status}"
        _refused(answer.status, message)
    if target is not None and output is not None:
        target.replace(output)
        click.echo(f"exported to {output}", err=True)


class _nullwriter:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __enter__(self) -> Any:
        return self.stream

    def __exit__(self, *_: object) -> None:
        self.stream.flush()


@audit.command("report")
@click.argument("rollout_id", metavar="ROLLOUT")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The HTML file to write.")  # fmt: skip
@_auditor_options
def audit_report(rollout_id: str, output: Path, **api: Any) -> None:
    """The evidence report of one rollout: one self-contained, printable HTML file (summary,
    traffic over time, each step's checks against their thresholds, approvals, the chain's
    verification)."""
    from canary.remote import AuditorClient, Unreachable

    with _auditor(**api) as client:
        try:
            answer = client.get(AuditorClient.rollout_path(rollout_id, "/report"))
        except Unreachable as exc:
            _fail(EXIT_UNAVAILABLE, str(exc))
    if answer.status != 200:
        try:
            message = json.loads(answer.body).get("error") or f"HTTP {answer.status}"
        except ValueError:
            message = f"HTTP {answer.status}"
        _refused(answer.status, message)
    if not answer.content_type.startswith("text/html"):
        _fail(EXIT_UNAVAILABLE, f"expected an HTML report, got {answer.content_type!r}")
    try:
        output.write_bytes(answer.body)
    except OSError as exc:
        _fail(EXIT_INVALID, f"cannot write {output}: {exc.strerror}")
    click.echo(f"report of {rollout_id} written to {output} ({len(answer.body)} bytes)")


@audit.command("token")
@click.argument("name")
def audit_token(name: str) -> None:
    """Make an auditor token: the token (give it to the auditor, once) on standard output,
    and the entry for the auditor token file (auditor_tokens_file) on standard error."""
    from canary.auditor_access import new_token

    try:
        token, entry = new_token(name)
    except ValueError as exc:
        _fail(EXIT_INVALID, str(exc).splitlines()[-1])
        raise AssertionError("unreachable") from None
    click.echo(
        "add to the auditor token file:\n"
        f"  - name: {entry.name}\n    sha256: {entry.sha256}\n    roles: [auditor]",
        err=True,
    )
    click.echo(token)
