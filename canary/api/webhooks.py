"""The approval webhook receiver: signed deliveries that tell us an approval may have moved.

* ``POST /webhooks/v1/servicenow``: the callback a customer's business rule on
  ``sysapproval_approver`` sends after a decision (docs/SERVICENOW.md §7). It is only a hint:
  the inbox re-reads the change from ServiceNow and acts on what ServiceNow says.
* ``POST /webhooks/v1/approvals``: the generic signed-webhook gate, where a firm's own change
  system posts an approve or reject decision; the approver named in the signed payload is
  checked against the policy's approver list by the inbox.

Every request is handled in the same order, and a step that fails ends it:

1. the raw body is read with a hard size limit (``max_body``): a ``Content-Length`` above it
   is refused at once, and a body without one (chunked) is read until it passes the limit,
   never further (413);
2. its Standard Webhooks signature is verified over those raw bytes with the active secrets
   (:func:`approvals.signatures.verify`): a missing header, a bad, stale or future timestamp
   or no matching signature is 401, logged as ``webhook.rejected`` and counted, and nothing
   of it is stored. No secret configured, or one that is not ``whsec_<base64>``, is our
   configuration's fault, not the sender's: 503;
3. only then is the body parsed as JSON and validated (400 names the field);
4. the inbox (the database side: dedupe by ``webhook-id``, find the approval, nudge the
   re-read) answers: 202 accepted, 200 duplicate, 404 unknown, 410 gone, 403 refused; 503
   when the audit database cannot be reached (the sender retries).

Errors are JSON objects ``{"error": "..."}``; outcomes ``{"outcome": "...", "detail": "..."}``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from approvals.signatures import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    InvalidSecret,
    SignatureError,
    VerifiedDelivery,
    verify,
)
from canary import __version__
from canary.audit import AuditError
from canary.log import get_logger
from canary.policy import DNS_LABEL

__all__ = [
    "DEFAULT_MAX_BODY",
    "WEBHOOK_PREFIX",
    "ApprovalInbox",
    "ApproverHint",
    "ChangeHint",
    "Delivery",
    "GateDecision",
    "InboxAnswer",
    "InboxResult",
    "ServiceNowCallback",
    "WebhookError",
    "WebhookMetrics",
    "WebhookOutcome",
    "webhook_router",
]

WEBHOOK_PREFIX = "/webhooks/v1"
SERVICENOW_PATH = "/servicenow"
GATE_PATH = "/approvals"
OPENAPI_PATH = "/openapi.json"  # under WEBHOOK_PREFIX
DEFAULT_MAX_BODY = 64 * 1024

Source = Literal["servicenow", "webhook"]

log = get_logger("canary.api.webhooks")


# --- what a delivery carries -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery whose signature held: where it came from and which message it was."""

    source: Source
    webhook_id: str
    received_at: datetime  # clock() when the request arrived
    sent_at: datetime  # the verified webhook-timestamp
    payload_digest: str  # "sha256:" + hex sha256 of the raw body
    secret_index: int  # which configured secret matched


class ChangeHint(BaseModel):
    """The change the callback is about, as the business rule saw it."""

    model_config = ConfigDict(extra="ignore")

    sys_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the change's sys_id")
    # [0-9], not \d: the validator's \d would also take other scripts' digits
    number: str = Field(pattern=r"^[A-Z]{2,10}[0-9]{1,12}$", description="e.g. CHG0030001")
    approval: str | None = Field(default=None, max_length=40)
    state: str | None = Field(default=None, max_length=40)


class ApproverHint(BaseModel):
    """Who decided, as the business rule saw it (re-read from ServiceNow before it counts)."""

    model_config = ConfigDict(extra="ignore")

    sys_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    user_name: str | None = Field(default=None, max_length=256)


class ServiceNowCallback(BaseModel):
    """The body a customer's business rule sends; fields it adds are ignored."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["change.approval"]
    change: ChangeHint
    approver: ApproverHint | None = None
    comments: str = Field(default="", max_length=4000)
    correlation_id: str | None = Field(default=None, max_length=100)


class GateDecision(BaseModel):
    """An approve or reject decision from a firm's own change system. The approver is the
    identity the signed payload asserts; the inbox checks it against the policy."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["approval.decision"]
    namespace: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL.pattern)
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL.pattern)
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="if given, must be the canary revision awaiting approval",
    )
    decision: Literal["approve", "reject"]
    approver: str = Field(min_length=1, max_length=256, description="e-mail or user name")
    comment: str = Field(default="", max_length=4000)
    change_id: str | None = Field(
        default=None, alias="changeId", min_length=1, max_length=128,
        description="the firm's change number",
    )  # fmt: skip


# --- the inbox's contract --------------------------------------------------------------------


class InboxAnswer(StrEnum):
    ACCEPTED = "accepted"  # 202 {"outcome": "accepted", "detail": ...}
    DUPLICATE = "duplicate"  # 200 {"outcome": "duplicate", "detail": ...}
    UNKNOWN = "unknown"  # 404: no such change, or no approval awaited
    GONE = "gone"  # 410: decided, expired, or the rollout ended or was superseded
    REFUSED = "refused"  # 403: the approver is not allowed (generic gate)


@dataclass(frozen=True, slots=True)
class InboxResult:
    answer: InboxAnswer
    detail: str


class ApprovalInbox(Protocol):
    """The database side. Blocking; called on a worker thread. Raises
    :class:`canary.audit.AuditError` when the database cannot be reached."""

    def servicenow_callback(
        self, delivery: Delivery, callback: ServiceNowCallback
    ) -> InboxResult: ...

    def gate_decision(self, delivery: Delivery, decision: GateDecision) -> InboxResult: ...


class WebhookMetrics(Protocol):
    """Outcomes: accepted, duplicate, unknown, gone, refused, unauthorized, malformed,
    too_large, unavailable, error (a bug: answered 500)."""

    def record_webhook(self, source: str, outcome: str) -> None: ...


# --- answers ---------------------------------------------------------------------------------


class WebhookOutcome(BaseModel):
    """A delivery taken (202) or already taken before (200)."""

    outcome: Literal["accepted", "duplicate"]
    detail: str


class WebhookError(BaseModel):
    """Why a delivery was not taken."""

    error: str


_STATUS = {
    InboxAnswer.ACCEPTED: 202,
    InboxAnswer.DUPLICATE: 200,
    InboxAnswer.UNKNOWN: 404,
    InboxAnswer.GONE: 410,
    InboxAnswer.REFUSED: 403,
}


class _Refusal(Exception):
    """Ends a request early with an error answer and a counted outcome."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass(frozen=True, slots=True)
class _Route:
    source: Source
    path: str
    describe: str  # "the ServiceNow callback"
    model: type[BaseModel]
    secrets: Callable[[], Sequence[str]]


def webhook_router(
    *,
    inbox: ApprovalInbox,
    servicenow_secrets: Callable[[], Sequence[str]],
    gate_secrets: Callable[[], Sequence[str]],
    clock: Callable[[], datetime],
    metrics: WebhookMetrics | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> APIRouter:
    """The two webhook routes under :data:`WEBHOOK_PREFIX`.

    ``servicenow_secrets`` and ``gate_secrets`` are called for every delivery and return the
    active ``whsec_`` secrets (several during a rotation), so a reloaded configuration takes
    effect at once. ``clock`` gives timezone-aware now; ``max_body`` is in bytes.
    """
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1 byte, not {max_body}")
    routes = APIRouter(prefix=WEBHOOK_PREFIX, tags=["webhooks"])

    def count(source: str, outcome: str) -> None:
        if metrics is not None:
            metrics.record_webhook(source, outcome)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > max_body:
            raise _Refusal(413, "too_large", f"the body is larger than {max_body} bytes")
        received = bytearray()
        try:
            async for chunk in request.stream():
                received += chunk
                if len(received) > max_body:
                    raise _Refusal(413, "too_large", f"the body is larger than {max_body} bytes")
        except ClientDisconnect:
            raise _Refusal(400, "malformed", "the client went away before the body ended") from None
        return bytes(received)

    def authenticate(route: _Route, request: Request, body: bytes) -> VerifiedDelivery:
        try:
            configured = list(route.secrets())
        except Exception as exc:  # a secrets source that fails is our configuration's fault
            log.exception("webhook.secrets_unreadable", source=route.source)
            raise _Refusal(
                503, "unavailable", f"the webhook secrets for {route.describe} cannot be read "
                f"({type(exc).__name__})",
            ) from None  # fmt: skip
        if not configured:
            log.error("webhook.not_configured", source=route.source)
            raise _Refusal(
                503, "unavailable", f"no webhook secret is configured for {route.describe}"
            )
        try:
            return verify(configured, request.headers, body, clock())
        except InvalidSecret as exc:
            log.error("webhook.secret_invalid", source=route.source, error=str(exc))
            raise _Refusal(
                503, "unavailable",
                f"a webhook secret configured for {route.describe} is unusable: {exc}",
            ) from None  # fmt: skip
        except SignatureError as exc:
            log.warning(
                "webhook.rejected",
                source=route.source,
                reason=str(exc),
                kind=type(exc).__name__,
                remote=_remote(request),
                webhook_id=_clip(request.headers.get(HEADER_ID)),
            )
            raise _Refusal(401, "unauthorized", str(exc)) from None

    def parse(route: _Route, verified: VerifiedDelivery, body: bytes) -> BaseModel:
        try:
            return route.model.model_validate_json(body)
        except ValidationError as exc:
            message = _validation_message(route.describe, exc)
            log.info("webhook.malformed", source=route.source, webhook_id=verified.msg_id,
                     error=message)  # fmt: skip
            raise _Refusal(400, "malformed", message) from None

    async def receive(
        route: _Route,
        request: Request,
        call: Callable[[Delivery, Any], Awaitable[InboxResult]],
    ) -> JSONResponse:
        try:
            return await handle(route, request, call)
        except _Refusal as refusal:
            count(route.source, refusal.outcome)
            return _error(refusal.status, refusal.message)
        except Exception:  # a bug: logged with its traceback, never sent to the sender
            count(route.source, "error")
            log.exception("webhook.failed", source=route.source,
                          webhook_id=_clip(request.headers.get(HEADER_ID)))  # fmt: skip
            return _error(500, "internal error while taking the delivery; it was logged")

    async def handle(
        route: _Route,
        request: Request,
        call: Callable[[Delivery, Any], Awaitable[InboxResult]],
    ) -> JSONResponse:
        arrived = clock()
        body = await read_body(request)
        verified = authenticate(route, request, body)
        parsed = parse(route, verified, body)
        delivery = Delivery(
            source=route.source,
            webhook_id=verified.msg_id,
            received_at=arrived,
            sent_at=verified.timestamp,
            payload_digest="sha256:" + hashlib.sha256(body).hexdigest(),
            secret_index=verified.secret_index,
        )
        fields = {"source": route.source, "webhook_id": delivery.webhook_id}
        try:
            result: object = await call(delivery, parsed)
        except AuditError as exc:
            log.error("webhook.unavailable", error=str(exc), **fields)
            raise _Refusal(
                503, "unavailable", f"the audit database cannot be reached; retry later: {exc}"
            ) from None
        if not isinstance(result, InboxResult) or not isinstance(result.answer, InboxAnswer):
            raise TypeError(f"the inbox answered {result!r:.200}, not an InboxResult")
        count(route.source, result.answer.value)
        log.info("webhook.received", answer=result.answer.value, detail=result.detail,
                 secret_index=delivery.secret_index, **fields)  # fmt: skip
        status = _STATUS[result.answer]
        if result.answer in (InboxAnswer.ACCEPTED, InboxAnswer.DUPLICATE):
            outcome = WebhookOutcome(outcome=result.answer.value, detail=result.detail)
            return JSONResponse(outcome.model_dump(), status_code=status)
        return _error(status, result.detail)

    servicenow = _Route(
        "servicenow", SERVICENOW_PATH, "the ServiceNow callback", ServiceNowCallback,
        servicenow_secrets,
    )  # fmt: skip
    gate = _Route("webhook", GATE_PATH, "the approval webhook", GateDecision, gate_secrets)

    def run_servicenow(delivery: Delivery, callback: ServiceNowCallback) -> Awaitable[InboxResult]:
        return run_in_threadpool(inbox.servicenow_callback, delivery, callback)

    def run_gate(delivery: Delivery, decision: GateDecision) -> Awaitable[InboxResult]:
        return run_in_threadpool(inbox.gate_decision, delivery, decision)

    @routes.post(
        SERVICENOW_PATH,
        summary="ServiceNow approval callback",
        description=(
            "Sent by a business rule on sysapproval_approver after a decision. A hint only: "
            "the change and its approvals are re-read from ServiceNow before anything counts."
        ),
        status_code=202,
        response_model=None,
        responses=_responses(servicenow_route=True),
        openapi_extra=_openapi_extra(ServiceNowCallback, max_body),
    )
    async def servicenow_callback(request: Request) -> JSONResponse:
        return await receive(servicenow, request, run_servicenow)

    @routes.post(
        GATE_PATH,
        summary="Approval decision (generic signed-webhook gate)",
        description=(
            "An approve or reject decision from a firm's own change system. The approver is "
            "the identity this signed payload asserts, checked against the policy's approvers."
        ),
        status_code=202,
        response_model=None,
        responses=_responses(servicenow_route=False),
        openapi_extra=_openapi_extra(GateDecision, max_body),
    )
    async def gate_decision(request: Request) -> JSONResponse:
        return await receive(gate, request, run_gate)

    published = [r for r in routes.routes if getattr(r, "include_in_schema", False)]
    document = get_openapi(
        title="kserve-canary approval webhooks",
        version=__version__,
        description="Signed (Standard Webhooks v1) approval deliveries to the controller.",
        routes=published,
    )

    @routes.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        """The receiver's OpenAPI document (the webhook routes only)."""
        return JSONResponse(document)

    return routes


# --- helpers ---------------------------------------------------------------------------------


def _remote(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _clip(value: str | None, limit: int = 255) -> str | None:
    return None if value is None else value[:limit]


def _validation_message(describe: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "json_invalid":
            problems.append(f"the body is not valid JSON ({error['msg']})")
        elif error["type"] == "model_type" and not error["loc"]:
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"{where}: {error['msg']}")
    return f"invalid body for {describe}: " + "; ".join(problems)


def _responses(*, servicenow_route: bool) -> dict[int | str, dict[str, Any]]:
    refused = (
        "the approver may not decide (recorded)"
        if not servicenow_route
        else "the delivery was refused (recorded)"
    )
    return {
        200: {"model": WebhookOutcome, "description": "a duplicate of a delivery already taken"},
        202: {"model": WebhookOutcome, "description": "taken; the approval will be re-read"},
        400: {"model": WebhookError, "description": "the body is not valid JSON of this shape"},
        401: {
            "model": WebhookError,
            "description": "missing or malformed webhook headers, a timestamp outside the "
            "tolerance, or no signature matching an active secret",
        },
        403: {"model": WebhookError, "description": refused},
        404: {"model": WebhookError, "description": "no such change, or no approval awaited"},
        410: {
            "model": WebhookError,
            "description": "the approval was already decided or expired, or the rollout "
            "ended or was superseded (recorded)",
        },
        413: {"model": WebhookError, "description": "the body is larger than the limit"},
        500: {"model": WebhookError, "description": "an internal error (logged)"},
        503: {
            "model": WebhookError,
            "description": "no usable webhook secret is configured, or the audit database "
            "cannot be reached; retry later",
        },
    }


def _openapi_extra(model: type[BaseModel], max_body: int) -> dict[str, Any]:
    """The request body and the three ``webhook-*`` headers, declared by hand because the
    body is read raw (it must be verified before it is parsed)."""
    return {
        "parameters": [
            {
                "name": HEADER_ID,
                "in": "header",
                "required": True,
                "description": "unique per message; a retry of a message keeps it",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
            {
                "name": HEADER_TIMESTAMP,
                "in": "header",
                "required": True,
                "description": "when the message was signed, in Unix seconds (±300 s)",
                "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"},
            },
            {
                "name": HEADER_SIGNATURE,
                "in": "header",
                "required": True,
                "description": "space-separated v1,<base64 HMAC-SHA256> signatures of "
                "'<webhook-id>.<webhook-timestamp>.<body>', one per secret",
                "schema": {"type": "string", "minLength": 1},
            },
        ],
        "requestBody": {
            "required": True,
            "description": f"at most {max_body} bytes; verified before it is parsed",
            "content": {"application/json": {"schema": _inline_schema(model)}},
        },
    }


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` written in place: the schema is embedded in
    the operation, where ``#/$defs/...`` would point at the OpenAPI document's root."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
                rest = {key: value for key, value in node.items() if key != "$ref"}
                return expand({**target, **rest})
            return {key: expand(value) for key, value in node.items()}
        if isinstance(node, list):
            return [expand(item) for item in node]
        return node

    expanded: dict[str, Any] = expand(schema)
    return expanded
