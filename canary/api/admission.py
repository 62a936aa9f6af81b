"""``POST /admission/inferenceservices``: the mutating admission webhook.

The apiserver sends an ``admission.k8s.io/v1`` AdmissionReview; :func:`canary.admission.review`
decides and :func:`canary.admission.response_for` builds the answer. Every replica serves
it: the decision needs only the request and the policies, never the leader's state.

When the decision cannot be taken (the policies cannot be loaded, a bug), the answer comes
from :func:`canary.admission.failure`: an object that is not opted in is never blocked by
our trouble, and an opted-in update is refused with a clear message rather than let
through unchecked. A body that is not an AdmissionReview at all gets 400.

Every admitted update that changes the models of an opted-in InferenceService
(:func:`canary.admission.model_change`; dry runs excepted) is handed to ``recorder``, which
records who sent it (``model.change_admitted``). The record never holds up the answer for
long nor decides it: the answer waits at most ``record_wait`` seconds for it (the
apiserver's own timeout for the webhook is short, and a slow audit database must not make
it refuse the update), and a record that fails or comes late is logged
(``admission.model_change_not_recorded``, ``admission.model_change_record_slow``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from canary.admission import (
    ADMISSION_PATH,
    DEFAULT_RULES,
    AdmissionDecision,
    ModelChange,
    TemplateRules,
    failure,
    model_change,
    response_for,
    review,
)
from canary.log import get_logger
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet

__all__ = ["ADMISSION_PATH", "RECORD_WAIT_SECONDS", "router"]

log = get_logger("canary.api.admission")

RECORD_WAIT_SECONDS: Final = 1.0
"""How long an answer waits for the record of who changed the model (see the module)."""

# Records still being written after their answer went out (kept so they are not collected).
_late: set[asyncio.Future[None]] = set()


def decide(
    request: Mapping[str, Any], policies: Callable[[], PolicySet], rules: TemplateRules
) -> AdmissionDecision:
    """Review ``request``; never raises."""
    try:
        try:
            policy_set = policies()
        except Exception as exc:  # any loader failure is answered, not raised
            # Without policies an update that needs the first step cannot be decided; one
            # that does not (or an object not opted in) still can.
            decision = review(request, PolicySet([], {}), rules=rules)
            if decision.allowed:
                return decision
            return failure(request, f"the rollout policies could not be loaded ({exc})")
        return review(request, policy_set, rules=rules)
    except Exception as exc:  # a bug must still produce an answer
        log.exception("admission.internal_error", uid=str(request.get("uid") or ""))
        return failure(request, f"internal error ({type(exc).__name__}: {exc})")


def record(change: ModelChange, recorder: Callable[[ModelChange], None]) -> None:
    """Keep who changed the model; never fails the admission (the change is allowed either
    way: a lost record only means the starter of that rollout is not known)."""
    try:
        recorder(change)
    except Exception as exc:
        log.warning(
            "admission.model_change_not_recorded",
            namespace=change.namespace,
            name=change.name,
            user=change.username,
            admission_uid=change.admission_uid,
            error=str(exc),
        )


async def _record_within(
    change: ModelChange, recorder: Callable[[ModelChange], None], wait: float
) -> None:
    """Record ``change`` on a worker thread, waiting at most ``wait`` seconds for it."""
    task = asyncio.ensure_future(run_in_threadpool(record, change, recorder))
    done, _ = await asyncio.wait({task}, timeout=wait)
    if done:
        return
    _late.add(task)
    task.add_done_callback(_late.discard)
    log.warning(
        "admission.model_change_record_slow",
        namespace=change.namespace,
        name=change.name,
        user=change.username,
        admission_uid=change.admission_uid,
        waited_seconds=wait,
        detail="answered without waiting longer; the record is still being written",
    )


def router(
    policies: Callable[[], PolicySet],
    metrics: ControllerMetrics,
    *,
    rules: TemplateRules = DEFAULT_RULES,
    recorder: Callable[[ModelChange], None] | None = None,
    record_wait: float = RECORD_WAIT_SECONDS,
) -> APIRouter:
    routes = APIRouter(tags=["admission"])

    @routes.post(ADMISSION_PATH)
    async def admit(http_request: Request) -> JSONResponse:
        body = await http_request.body()
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("request"), dict):
            metrics.record_admission("error")
            return JSONResponse(
                {"error": "the body must be an admission.k8s.io/v1 AdmissionReview with a request"},
                status_code=400,
            )
        request: dict[str, Any] = document["request"]
        decision = await run_in_threadpool(decide, request, policies, rules)
        if recorder is not None and decision.allowed:
            change = model_change(request, rules)
            if change is not None:
                await _record_within(change, recorder, record_wait)
        metrics.record_admission(decision.result)
        _log(request, decision)
        return JSONResponse(response_for(document, decision))

    return routes


def _log(request: Mapping[str, Any], decision: AdmissionDecision) -> None:
    fields = {
        "uid": str(request.get("uid") or ""),
        "operation": str(request.get("operation") or ""),
        "namespace": str(request.get("namespace") or ""),
        "name": str(request.get("name") or ""),
        "result": decision.result,
    }
    if decision.result == "error":
        log.error("admission.failed", message=decision.message, **fields)
    elif decision.result == "denied":
        log.info("admission.denied", message=decision.message, **fields)
    elif decision.result == "patched":
        log.info("admission.patched", patch=list(decision.patch), warnings=list(decision.warnings),
                 **fields)  # fmt: skip
    else:
        log.debug("admission.allowed", message=decision.message, **fields)
