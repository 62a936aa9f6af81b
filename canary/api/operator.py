"""The operator API: manual commands and rollout status, authenticated by the cluster.

* ``POST /api/v1/namespaces/{namespace}/rollouts/{name}/{command}`` with a JSON body
  ``{"reason": "...", "storageUri": "..." (start only), "waitSeconds": 30}``, where
  ``command`` is ``pause``, ``resume``, ``promote``, ``abort``, ``start``, or ``approve`` or
  ``reject`` (a Kubernetes approval gate's decision; ``reason`` is the approver's comment);
* ``GET /api/v1/namespaces/{namespace}/rollouts/{name}``, ``GET
  /api/v1/namespaces/{namespace}/rollouts`` and ``GET /api/v1/rollouts`` (``?all=true``
  includes finished rollouts).

Every request carries the caller's own Kubernetes bearer token. The controller asks the
apiserver who it belongs to (TokenReview) and whether they may do this (SubjectAccessReview,
see :mod:`canary.access`), in that order and before the body is read. Any replica answers:
a command is queued in the database for the leader, which carries it out and settles it in
the same transaction as the audit records it causes; the request waits for that. The command
is queued with the caller's user name, UID and groups as the apiserver gave them, never as
the body says (the leader checks an approver's groups against the policy's risk-owner
group).

Answers: 200 accepted; 202 queued but no leader settled it in time; 400 a bad body or a
namespace or name that is no Kubernetes name; 401 no or unknown credentials; 403 refused by
RBAC (recorded in the audit trail as ``manual.denied``, with who tried and why); 404 no such
rollout (status) or command; 409 the leader refused the command (it explains why); 429 too
many operator requests at once (:data:`MAX_IN_FLIGHT`); 503 the apiserver or the database
cannot be asked. Errors are JSON objects ``{"error": "..."}``.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from canary.access import (
    COMMAND_NAMES,
    AccessDenied,
    Gatekeeper,
    ReviewFailed,
    Unauthenticated,
    command_permissions,
    read_permission,
)
from canary.audit import AuditEntry, AuditError, AuditStore, ObjectRef
from canary.log import get_logger
from canary.metrics import ControllerMetrics
from canary.ops import status_lines, submit_command
from canary.policy import DNS_LABEL
from canary.server import PEER_CERTIFICATE

__all__ = ["API_PREFIX", "CommandBody", "insecure_transport", "router"]

API_PREFIX = "/api/v1"
MAX_WAIT_SECONDS = 120.0
MAX_IN_FLIGHT = 8
"""Operator requests served at once. A command may wait up to ``MAX_WAIT_SECONDS`` for the
leader on a worker thread; the admission webhook shares those threads, and must never
queue behind a burst of commands (with ``failurePolicy: Fail`` that would block updates)."""
_MAX_BODY = 64 * 1024

log = get_logger("canary.api.operator")


class CommandBody(BaseModel):
    """What an operator sends with a command."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    reason: str = Field(min_length=1, max_length=2000)
    storage_uri: str | None = Field(default=None, alias="storageUri", min_length=1, max_length=2048)
    wait_seconds: float = Field(default=30.0, alias="waitSeconds", ge=0, le=MAX_WAIT_SECONDS)


def insecure_transport(request: Request) -> JSONResponse | None:
    """Credentials travel only over HTTPS, or over plain HTTP on this machine's loopback."""
    if request.url.scheme == "https":
        return None
    host = request.client.host if request.client is not None else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return _error(
        403,
        "the operator API accepts credentials only over HTTPS: configure tls_cert_file and "
        "tls_key_file",
    )


def _bad_target(namespace: str | None, name: str | None) -> JSONResponse | None:
    for what, value in (("namespace", namespace), ("name", name)):
        if value is not None and (not DNS_LABEL.match(value) or len(value) > 63):
            return _error(400, f"{what} {value[:80]!r} is not a Kubernetes name (a DNS label)")
    return None


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="kserve-canary"'} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def router(
    gate: Gatekeeper,
    store: AuditStore,
    metrics: ControllerMetrics,
    *,
    clock: Callable[[], datetime],
    look_seconds: float,
) -> APIRouter:
    routes = APIRouter(prefix=API_PREFIX)
    in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    async def limited(call: Callable[..., JSONResponse], *args: Any) -> JSONResponse:
        if not in_flight.acquire(blocking=False):
            return _error(429, f"{MAX_IN_FLIGHT} operator requests are in progress; try again",
                          retry_after=1)  # fmt: skip
        try:
            return await run_in_threadpool(call, *args)
        finally:
            in_flight.release()

    def audit_denial(
        denied: AccessDenied, namespace: str, name: str, command: str, reason: str | None
    ) -> bool:
        entry = AuditEntry(
            at=clock(),
            actor=denied.caller.actor,
            action="manual.denied",
            obj=ObjectRef(namespace, name),
            reason=f"{command} refused: {denied.caller.username} may not "
            f"{denied.permission.describe()} ({denied.why})",
            evidence={
                "command": command,
                "reason": reason,
                "required": denied.permission.describe(),
                "authorizer": denied.why,
            },
        )
        try:
            store.append([entry])
        except AuditError as exc:
            log.error("api.denial_not_audited", command=command, user=denied.caller.username,
                      namespace=namespace, name=name, error=str(exc))  # fmt: skip
            return False
        return True

    def run_command(
        request_headers: dict[str, str],
        certificate: Mapping[str, Any] | None,
        raw: bytes,
        namespace: str,
        name: str,
        command: str,
    ) -> JSONResponse:
        if command not in COMMAND_NAMES:
            return _error(404, f"unknown command {command!r}; one of {', '.join(COMMAND_NAMES)}")
        try:
            caller = gate.authenticate(request_headers.get("authorization"), certificate)
        except Unauthenticated as exc:
            metrics.count_operator_request(command, "unauthenticated")
            log.warning("api.unauthenticated", command=command, namespace=namespace, name=name,
                        error=str(exc))  # fmt: skip
            return _error(401, str(exc))
        except ReviewFailed as exc:
            metrics.count_operator_request(command, "unavailable")
            return _error(503, str(exc))
        body_reason = _reason_of(raw)
        try:
            gate.authorize(caller, command_permissions(command, namespace, name))
        except AccessDenied as denied:
            metrics.count_operator_request(command, "denied")
            audited = audit_denial(denied, namespace, name, command, body_reason)
            log.warning("api.command_denied", command=command, user=caller.username,
                        namespace=namespace, name=name, why=denied.why)  # fmt: skip
            return _error(403, str(denied), audited=audited)
        except ReviewFailed as exc:
            metrics.count_operator_request(command, "unavailable")
            return _error(503, str(exc))
        try:
            body = CommandBody.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            metrics.count_operator_request(command, "invalid")
            return _error(400, _validation_message(exc))
        if command == "start" and body.storage_uri is None:
            metrics.count_operator_request(command, "invalid")
            return _error(400, "start needs storageUri: where the new model is")
        if command != "start" and body.storage_uri is not None:
            metrics.count_operator_request(command, "invalid")
            return _error(400, f"storageUri is only for start, not {command}")
        args = {"storage_uri": body.storage_uri} if body.storage_uri else {}
        try:
            row = submit_command(
                store,
                namespace=namespace,
                name=name,
                command=command,
                actor=caller.username,
                actor_uid=caller.uid,
                actor_groups=caller.groups,
                reason=body.reason,
                args=args,
                wait=body.wait_seconds,
                clock=clock,
                command_id=str(uuid.uuid4()),
            )
        except AuditError as exc:
            metrics.count_operator_request(command, "unavailable")
            return _error(503, f"the audit database cannot be reached: {exc}")
        answer = {
            "id": row.id,
            "command": command,
            "namespace": namespace,
            "name": name,
            "state": row.state,
            "result": row.result,
            "caller": caller.as_json(),
        }
        metrics.count_operator_request(command, row.state)
        log.info("api.command", command=command, user=caller.username, namespace=namespace,
                 name=name, state=row.state)  # fmt: skip
        status = {"accepted": 200, "pending": 202}.get(row.state, 409)
        return JSONResponse(answer, status_code=status)

    @routes.post("/namespaces/{namespace}/rollouts/{name}/{command}")
    async def command_endpoint(
        namespace: str, name: str, command: str, request: Request
    ) -> JSONResponse:
        refused = insecure_transport(request) or _bad_target(namespace, name)
        if refused is not None:
            return refused
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return _error(413, f"the body is larger than {_MAX_BODY} bytes")
        headers = {"authorization": request.headers.get("authorization") or ""}
        return await limited(run_command, headers, _peer(request), raw, namespace, name, command)

    def read(
        authorization: str | None,
        certificate: Mapping[str, Any] | None,
        namespace: str | None,
        name: str | None,
        include_finished: bool,
    ) -> JSONResponse:
        try:
            caller = gate.authenticate(authorization, certificate)
            gate.authorize(caller, (read_permission(namespace, name),))
        except Unauthenticated as exc:
            return _error(401, str(exc))
        except AccessDenied as denied:
            log.info("api.read_denied", user=denied.caller.username, why=denied.why)
            return _error(403, str(denied))
        except ReviewFailed as exc:
            return _error(503, str(exc))
        try:
            lines = status_lines(
                store,
                namespace=namespace,
                name=name,
                include_finished=include_finished,
                now=clock(),
                look_seconds=look_seconds,
            )
        except AuditError as exc:
            return _error(503, f"the audit database cannot be reached: {exc}")
        if name is not None and not lines:
            return _error(404, f"no rollout for {namespace}/{name}")
        items = [
            {
                **asdict(line),
                "evidence": list(line.evidence),
                "approval": list(line.approval),
                "shadow": list(line.shadow),
            }
            for line in lines
        ]
        return JSONResponse({"items": items})

    async def answer_read(
        request: Request, namespace: str | None, name: str | None, include_finished: bool
    ) -> JSONResponse:
        refused = insecure_transport(request) or _bad_target(namespace, name)
        if refused is not None:
            return refused
        auth = request.headers.get("authorization")
        return await limited(read, auth, _peer(request), namespace, name, include_finished)

    @routes.get("/rollouts")
    async def list_everywhere(request: Request, all: bool = False) -> JSONResponse:
        return await answer_read(request, None, None, all)

    @routes.get("/namespaces/{namespace}/rollouts")
    async def list_in(namespace: str, request: Request, all: bool = False) -> JSONResponse:
        return await answer_read(request, namespace, None, all)

    @routes.get("/namespaces/{namespace}/rollouts/{name}")
    async def get_one(namespace: str, name: str, request: Request) -> JSONResponse:
        return await answer_read(request, namespace, name, False)

    return routes


def _peer(request: Request) -> Mapping[str, Any] | None:
    """The client certificate verified in the TLS handshake (see :mod:`canary.server`)."""
    peer = getattr(request.state, PEER_CERTIFICATE, None)
    return peer if isinstance(peer, Mapping) and peer else None


def _reason_of(raw: bytes) -> str | None:
    """The reason a refused caller gave, for the record of the refusal (best effort)."""
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason[:2000] if isinstance(reason, str) else None


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "invalid command body: " + "; ".join(problems)
