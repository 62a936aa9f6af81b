"""The auditor API: read-only access to the audit trail, under ``/audit/v1``.

Every route reads; none writes (``tests/unit/test_auditor_api.py`` checks that the router
has GET routes only). Callers are auditors (:mod:`canary.auditor_access`): an auditor token,
or a cluster identity with the ``auditor`` role. Credentials travel over HTTPS only (plain
HTTP is accepted on the loopback address, for a port-forward).

* ``GET /rollouts``: rollouts, newest first, filtered by ``namespace``, ``name``, ``model``
  (a revision name or storageUri), ``since``/``until`` (started) and ``outcome`` (a phase,
  ``active`` or ``finished``); pages of ``limit`` with an opaque ``cursor``.
* ``GET /rollouts/{id}``: one rollout's dossier: summary, traffic over time, steps with every
  evaluation, approvals, people's actions, each of its records checked
  (:mod:`canary.evidence.dossier`).
* ``GET /rollouts/{id}/records``: its records in chain order (decisions with their evidence
  and measurements, each with its hash), by pages (``after_seq``).
* ``GET /rollouts/{id}/approvals``: its approval requests as the controller keeps them.
* ``GET /rollouts/{id}/report``: the evidence report, one self-contained HTML file.
* ``GET /at``: which revisions carried traffic at ``time``, for ``namespace`` + ``name``
  (one InferenceService) or for ``model`` (every service that served it).
* ``GET /verify``: the chain verified, against the checkpoints the witness keeps; from the
  latest matching checkpoint on, or the whole chain with ``full=true`` (one at a time).
* ``GET /checkpoints``: the signed checkpoints the database keeps.
* ``GET /export``: records matching filters, streamed as JSON Lines (``format=json``: the
  exact hashed body of each, so hashes can be re-checked) or CSV (``format=csv``).
* ``GET /openapi.json``: this API's OpenAPI document (no credentials needed).

Answers: 200; 400 a query that cannot be answered as asked (a time without a zone, an
unknown outcome, a bad cursor); 401 no or unknown credentials; 403 not an auditor; 404 no
such rollout; 422 a parameter of the wrong type; 429 too many requests at once (or a
verification already running); 503 the database or the apiserver cannot be asked. Errors
are ``{"error": "..."}``; no answer ever contains a credential.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Protocol

from fastapi import APIRouter, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from canary import __version__
from canary.access import AccessDenied, Gatekeeper, ReviewFailed, Unauthenticated
from canary.anchoring import witnesses
from canary.api.operator import insecure_transport
from canary.audit import AuditError, AuditRecord, AuditStore
from canary.audit.checkpoint import CheckpointError, CheckpointSigner, SignedCheckpoint, TrustedKeys
from canary.audit.history import InvalidQuery
from canary.audit.listing import RecordFilter
from canary.audit.records import normalise
from canary.auditor_access import Auditor, AuditorGate, NotAnAuditor, TokenSource
from canary.evidence import build_dossier, render_html
from canary.k8s.client import KubeClient
from canary.log import get_logger
from canary.server import PEER_CERTIFICATE
from canary.settings import Settings, SettingsError
from canary.trail_check import TrailCheck, check_trail

__all__ = ["AUDITOR_OUTCOMES", "AUDIT_PREFIX", "AnchorSource", "router"]

AUDIT_PREFIX: Final = "/audit/v1"
MAX_IN_FLIGHT: Final = 4
"""Auditor requests served at once (each may read a lot); the admission webhook shares the
worker threads and must never queue behind them."""
MAX_RECORDS_PER_ROLLOUT: Final = 50_000
EXPORT_PAGE: Final = 2000
AUDITOR_OUTCOMES: Final = (
    "ok", "invalid", "unauthenticated", "forbidden", "not_found", "busy", "unavailable",
)  # fmt: skip

log = get_logger("canary.api.auditor")

RolloutId = Annotated[str, Path(min_length=1, max_length=128)]


@dataclass(frozen=True)
class AnchorSource:
    """Where the API finds checkpoints to judge the chain by, and the keys it trusts: the
    controller's own signing key and any retired public keys it is configured with."""

    read: Callable[[], Sequence[SignedCheckpoint]]
    keys: TrustedKeys | None
    log_name: str
    witness: str | None


class _Refused(Exception):
    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="kserve-canary audit"'} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the query cannot be answered as asked (the message says why)"},
    401: {"description": "no credentials, or credentials nobody knows"},
    403: {"description": "authenticated, but not an auditor; or credentials over plain HTTP"},
    429: {"description": "too many auditor requests at once; retry"},
    503: {"description": "the audit database or the apiserver cannot be asked; retry"},
}
_JSON_OBJECT: dict[str, Any] = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _responses(ok: str, *, not_found: bool = False, media: str = "json") -> dict[int | str, Any]:
    content = (
        _JSON_OBJECT["content"] if media == "json" else {media: {"schema": {"type": "string"}}}
    )
    out: dict[int | str, Any] = {200: {"description": ok, "content": content}, **_ERRORS}
    if not_found:
        out[404] = {"description": "no such rollout"}
    return out


def router(
    gate: AuditorGate,
    store: AuditStore,
    *,
    clock: Callable[[], datetime],
    anchors: AnchorSource,
    count: Callable[[str], None] = lambda _outcome: None,
) -> APIRouter:
    """The auditor API. ``count`` is told each request's outcome (one of
    :data:`AUDITOR_OUTCOMES`), for the metrics."""
    routes = APIRouter(prefix=AUDIT_PREFIX)
    in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
    verifying = threading.Lock()

    def admit(request: Request) -> Auditor:
        refused = insecure_transport(request)
        if refused is not None:
            raise _Refused(403, "the auditor API accepts credentials only over HTTPS", "forbidden")
        certificate = getattr(request.state, PEER_CERTIFICATE, None)
        try:
            auditor = gate.admit(request.headers.get("authorization"), certificate)
        except Unauthenticated as exc:
            log.warning("auditor.auth_failed", path=request.url.path, client=_client(request),
                        why=str(exc))  # fmt: skip
            raise _Refused(401, str(exc), "unauthenticated") from None
        except (NotAnAuditor, AccessDenied) as exc:
            log.warning("auditor.auth_failed", path=request.url.path, client=_client(request),
                        why=str(exc))  # fmt: skip
            raise _Refused(403, str(exc), "forbidden") from None
        except ReviewFailed as exc:
            raise _Refused(503, str(exc), "unavailable") from None
        log.info("auditor.read", auditor=auditor.name, kind=auditor.kind, path=request.url.path,
                 query=str(request.url.query)[:500])  # fmt: skip
        return auditor

    async def serve(request: Request, work: Callable[[], Response]) -> Response:
        """Admit the caller, then do ``work`` on a worker thread, bounded."""
        if not in_flight.acquire(blocking=False):
            count("busy")
            return _error(429, f"{MAX_IN_FLIGHT} auditor requests are in progress; try again")
        try:
            return await run_in_threadpool(_guarded, request, work)
        finally:
            in_flight.release()

    def _guarded(request: Request, work: Callable[[], Response]) -> Response:
        try:
            admit(request)
            answer = work()
        except _Refused as refused:
            count(refused.outcome)
            return _error(refused.status, str(refused))
        except (InvalidQuery, ValueError, OverflowError) as exc:
            count("invalid")
            return _error(400, str(exc))
        except AuditError as exc:
            count("unavailable")
            log.warning("auditor.store_unavailable", path=request.url.path, error=str(exc))
            return _error(503, f"the audit database cannot be read: {exc}")
        count("ok")
        return answer

    def _json(data: Any) -> JSONResponse:
        return JSONResponse(data)

    # -- rollouts ------------------------------------------------------------------------------

    @routes.get(
        "/rollouts",
        summary="Rollouts, newest first",
        responses=_responses("a page of rollouts and the cursor of the next"),
        response_model=None,
    )
    async def list_rollouts(
        request: Request,
        namespace: Annotated[str | None, Query(max_length=253)] = None,
        name: Annotated[str | None, Query(max_length=253)] = None,
        model: Annotated[str | None, Query(max_length=2048)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=1024)] = None,
    ) -> Response:
        def work() -> Response:
            page = store.find_rollouts(
                namespace=namespace, name=name, model=model, since=since, until=until,
                outcome=outcome, limit=limit, cursor=cursor,
            )  # fmt: skip
            return _json(page.to_json())

        return await serve(request, work)

    def _records_of(rollout_id: str) -> list[AuditRecord]:
        records: list[AuditRecord] = []
        after = 0
        while True:
            page = store.rollout_records(rollout_id, after_seq=after, limit=500)
            records.extend(page.records)
            if page.next_after_seq is None:
                return records
            if len(records) >= MAX_RECORDS_PER_ROLLOUT:
                raise ValueError(
                    f"rollout {rollout_id} has more than {MAX_RECORDS_PER_ROLLOUT} records; "
                    "read them by pages from /records"
                )
            after = page.next_after_seq

    def _dossier(rollout_id: str, check: TrailCheck | None) -> Any:
        rollout = store.get_rollout(rollout_id)
        records = _records_of(rollout_id)
        if rollout is None and not records:
            raise _Refused(404, f"no rollout {rollout_id!r}", "not_found")
        now = clock()
        return build_dossier(
            rollout=rollout,
            records=records,
            approvals=store.approvals_for(rollout_id),
            verification=None if check is None else check.for_dossier(now),
            as_of=now,
        )

    @routes.get(
        "/rollouts/{rollout_id}",
        summary="One rollout's dossier: its timeline, steps, evidence and approvals",
        responses=_responses("the dossier (JSON)", not_found=True),
        response_model=None,
    )
    async def show_rollout(request: Request, rollout_id: RolloutId) -> Response:
        def work() -> Response:
            return Response(
                _dossier(rollout_id, None).to_json_text(), media_type="application/json"
            )

        return await serve(request, work)

    @routes.get(
        "/rollouts/{rollout_id}/records",
        summary="One rollout's records in chain order, with their evidence and hashes",
        responses=_responses("a page of records"),
        response_model=None,
    )
    async def rollout_records(
        request: Request,
        rollout_id: RolloutId,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Response:
        def work() -> Response:
            page = store.rollout_records(rollout_id, after_seq=after_seq, limit=limit)
            return _json(page.to_json())

        return await serve(request, work)

    @routes.get(
        "/rollouts/{rollout_id}/approvals",
        summary="One rollout's approval requests",
        responses=_responses("its approvals, oldest first"),
        response_model=None,
    )
    async def rollout_approvals(request: Request, rollout_id: RolloutId) -> Response:
        def work() -> Response:
            rows = store.approvals_for(rollout_id)
            return _json({"rollout_id": rollout_id, "approvals": normalise(rows)})

        return await serve(request, work)

    @routes.get(
        "/rollouts/{rollout_id}/report",
        summary="The evidence report: one self-contained, printable HTML file",
        responses=_responses("the report", not_found=True, media="text/html"),
        response_model=None,
    )
    async def rollout_report(request: Request, rollout_id: RolloutId) -> Response:
        def work() -> Response:
            dossier = _dossier(rollout_id, _check(full=False))
            return HTMLResponse(render_html(dossier))

        return await serve(request, work)

    # -- point in time -------------------------------------------------------------------------

    @routes.get(
        "/at",
        summary="Which revisions carried traffic at an instant",
        responses=_responses("the answer, with the record it rests on"),
        response_model=None,
    )
    async def at(
        request: Request,
        time: datetime,
        namespace: Annotated[str | None, Query(max_length=253)] = None,
        name: Annotated[str | None, Query(max_length=253)] = None,
        model: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> Response:
        def work() -> Response:
            if model is not None and (namespace is not None or name is not None):
                raise ValueError("ask for a model, or for namespace and name, not both")
            if model is not None:
                return _json(store.point_in_time_by_model(model, time).to_json())
            if namespace is None or name is None:
                raise ValueError("give namespace and name (one InferenceService), or model")
            return _json(store.point_in_time(namespace, name, time).to_json())

        return await serve(request, work)

    # -- the chain -----------------------------------------------------------------------------

    def _check(*, full: bool) -> TrailCheck:
        checkpoints: Sequence[SignedCheckpoint] = ()
        if anchors.keys is not None:
            try:
                checkpoints = anchors.read()
            except Exception as exc:  # a witness that cannot be read: say so, still verify
                log.warning("auditor.witness_unreadable", error=str(exc))
        return check_trail(
            store,
            checkpoints=checkpoints,
            keys=anchors.keys,
            log_name=anchors.log_name,
            since_checkpoint=not full,
            witness=anchors.witness,
        )

    @routes.get(
        "/verify",
        summary="Verify the chain against the witnessed checkpoints",
        responses=_responses("the verification: the chain, and what the checkpoints say"),
        response_model=None,
    )
    async def verify(request: Request, full: bool = False) -> Response:
        def work() -> Response:
            if not verifying.acquire(blocking=False):
                raise _Refused(429, "a verification is already running; try again", "busy")
            try:
                return _json(_check(full=full).to_json())
            finally:
                verifying.release()

        return await serve(request, work)

    @routes.get(
        "/checkpoints",
        summary="The signed checkpoints the database keeps",
        responses=_responses("checkpoint envelopes, oldest first"),
        response_model=None,
    )
    async def checkpoints(
        request: Request,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        def work() -> Response:
            found = store.checkpoints(after_seq=after_seq, limit=limit)
            return _json({"checkpoints": [c.envelope() for c in found]})

        return await serve(request, work)

    # -- export --------------------------------------------------------------------------------

    @routes.get(
        "/export",
        summary="Records matching filters, streamed (JSON Lines or CSV)",
        responses={
            200: {
                "description": "the records in chain order",
                "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            **_ERRORS,
        },
        response_model=None,
    )
    async def export(
        request: Request,
        format: Literal["json", "csv"] = "json",
        namespace: Annotated[str | None, Query(max_length=253)] = None,
        name: Annotated[str | None, Query(max_length=253)] = None,
        rollout: Annotated[str | None, Query(max_length=128)] = None,
        action: Annotated[str | None, Query(max_length=128)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Response:
        def work() -> Response:
            where = RecordFilter(namespace, name, rollout, action, since, until)
            first, after = store.find_records(where, limit=EXPORT_PAGE)  # errors before 200

            def pages() -> Iterator[list[AuditRecord]]:
                yield first
                next_after = after
                while next_after is not None:
                    page, next_after = store.find_records(
                        where, after_seq=next_after, limit=EXPORT_PAGE
                    )
                    yield page

            lines = _csv_lines(pages()) if format == "csv" else _json_lines(pages())
            media = "text/csv" if format == "csv" else "application/x-ndjson"
            filename = f"kserve-canary-audit.{'csv' if format == 'csv' else 'jsonl'}"
            return StreamingResponse(
                iterate_in_threadpool(lines),
                media_type=media,
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )

        return await serve(request, work)

    published = [r for r in routes.routes if getattr(r, "include_in_schema", False)]
    document = get_openapi(
        title="kserve-canary auditor API",
        version=__version__,
        description="Read-only access to the tamper-evident audit trail (auditor role).",
        routes=published,
    )
    document.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    document["security"] = [{"bearer": []}]

    @routes.get("/openapi.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        """This API's OpenAPI document."""
        return JSONResponse(document)

    return routes


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _json_lines(pages: Iterator[list[AuditRecord]]) -> Iterator[str]:
    """One JSON object per record: seq, prev_hash, record_hash and the exact hashed body."""
    for page in pages:
        yield "".join(
            json.dumps(
                {"seq": r.seq, "prev_hash": r.prev_hash, "record_hash": r.record_hash,
                 "body": r.body},
                ensure_ascii=False, separators=(",", ":"),
            ) + "\n"
            for r in page
        )  # fmt: skip


CSV_COLUMNS: Final = (
    "seq", "recorded_at", "action", "actor_kind", "actor_id", "actor_uid", "namespace",
    "name", "rollout_id", "stable_revision", "canary_revision", "canary_storage_uri",
    "traffic_after", "change_number", "approver", "reason", "prev_hash", "record_hash", "body",
)  # fmt: skip


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a tab or a
    carriage return) gets a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_lines(pages: Iterator[list[AuditRecord]]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue()
    for page in pages:
        out.seek(0)
        out.truncate()
        for r in page:
            e = r.entry
            writer.writerow(
                _cell(v)
                for v in (
                    r.seq, normalise(e.at), e.action, e.actor.kind, e.actor.id, e.actor.uid,
                    e.obj.namespace if e.obj else None, e.obj.name if e.obj else None,
                    e.rollout_id, e.stable.revision if e.stable else None,
                    e.canary.revision if e.canary else None,
                    e.canary.storage_uri if e.canary else None,
                    json.dumps(dict(e.traffic_after), sort_keys=True) if e.traffic_after else None,
                    e.change_number, e.approver, e.reason, r.prev_hash, r.record_hash, r.body,
                )
            )  # fmt: skip
        yield out.getvalue()


class AuditorMetrics(Protocol):
    def record_auditor_request(self, outcome: str) -> None: ...


def from_settings(
    settings: Settings,
    *,
    store: AuditStore,
    kube: KubeClient,
    signer: CheckpointSigner | None,
    clock: Callable[[], datetime],
    metrics: AuditorMetrics,
) -> APIRouter | None:
    """The auditor API (``/audit/v1``), or None when no way in is configured."""
    tokens = TokenSource(settings.auditor_tokens_file) if settings.auditor_tokens_file else None
    reviews = Gatekeeper(kube.review_token, kube.review_access)
    if tokens is None and not settings.auditor_kubernetes:
        log.info("auditor.api_disabled", detail="no auditor_tokens_file and auditor_kubernetes "
                 "is false: the auditor API is not served")  # fmt: skip
        return None
    keys: TrustedKeys | None = None
    public = [signer.public_key] if signer is not None else []
    try:
        if settings.audit_public_key_files:
            public.extend(TrustedKeys.from_files(list(settings.audit_public_key_files)).keys)
    except CheckpointError as exc:
        raise SettingsError(f"audit_public_key_files: {exc}") from None
    if public:
        keys = TrustedKeys(public)
    readable = [w for w in witnesses(settings, kube, None) if w.name != "log"]

    def read() -> list[SignedCheckpoint]:
        found = {c.seq: c for c in store.checkpoints(limit=1000)}
        for witness in readable:
            found.update({c.seq: c for c in witness.read()})
        return [found[seq] for seq in sorted(found)]

    return router(
        AuditorGate(tokens, reviews if settings.auditor_kubernetes else None),
        store,
        clock=clock,
        anchors=AnchorSource(
            read=read,
            keys=keys,
            log_name=settings.audit_log_name,
            witness=", ".join(w.name for w in readable) or "the database's copy",
        ),
        count=metrics.record_auditor_request,
    )
