"""The shadow collector's HTTP app, where KServe's payload logger posts its events.

* ``POST /`` and ``POST /events``: one CloudEvent in binary mode (what the logger sends),
  one in structured mode (``application/cloudevents+json``), or a batch
  (``application/cloudevents-batch+json``). Answers: 202 when every event was taken (request
  events and duplicates included: they are counted, not refused); 400 naming what is wrong
  when an event cannot be read (the other events of a batch are still taken, and sending the
  batch again is harmless: duplicates count once); 413 when the body is larger than
  ``max_body`` (a declared ``Content-Length`` is refused before reading, a chunked body as soon
  as it passes the limit); 415 for a content type the collector cannot read, before the body
  is read.
* ``GET /metrics``: the collector's series (:mod:`canary.shadow.collector`).
* ``GET /healthz``: 200 while the process serves.
* ``GET /openapi.json``: this app's OpenAPI document.

Plain HTTP with no authentication: it is an in-cluster sink that only the InferenceServices'
logger should reach, so a NetworkPolicy must keep everything else out (anyone who can post
can forge pairs). Errors are JSON objects ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from canary import __version__
from canary.log import get_logger
from canary.shadow.collector import ShadowCollector
from canary.shadow.events import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    UnsupportedContentType,
)

__all__ = ["DEFAULT_MAX_BODY", "EVENT_PATHS", "ShadowAnswer", "ShadowError", "collector_app"]

DEFAULT_MAX_BODY = 1024 * 1024
EVENT_PATHS = ("/", "/events")
_LISTED_PROBLEMS = 10  # a 400 answer names this many unreadable events at most

log = get_logger("canary.api.shadow")


class ShadowAnswer(BaseModel):
    """The events of a request were taken."""

    events: int
    pairs: int
    outcomes: dict[str, int]


class ShadowError(BaseModel):
    """Why (some of) a request's events were not taken."""

    error: str


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def collector_app(collector: ShadowCollector, *, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The collector's app; ``max_body`` is in bytes."""
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1 byte, not {max_body}")
    app = FastAPI(
        title="kserve-canary shadow collector",
        version=__version__,
        description="Receives KServe payload-logger CloudEvents and pairs the responses of "
        "different InferenceServices to the same request.",
        docs_url=None,
        redoc_url=None,
    )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "").strip()
        too_large = f"the body is larger than {max_body} bytes"
        if declared.isascii() and declared.isdigit() and int(declared) > max_body:
            raise _Refusal(413, "too_large", too_large)
        received = bytearray()
        try:
            async for chunk in request.stream():
                received += chunk
                if len(received) > max_body:
                    raise _Refusal(413, "too_large", too_large)
        except ClientDisconnect:
            raise _Refusal(
                400, "disconnected", "the client went away before the body ended"
            ) from None
        return bytes(received)

    async def take(request: Request) -> JSONResponse:
        remote = request.client.host if request.client is not None else None
        try:
            collector.check_content_type(request.headers, remote=remote)
            body = await read_body(request)
            received = collector.receive(request.headers, body, remote=remote)
        except UnsupportedContentType as exc:  # counted and logged by the collector
            return JSONResponse({"error": exc.message}, status_code=415)
        except _Refusal as refusal:
            collector.refused(refusal.reason, refusal.message, remote=remote)
            return JSONResponse({"error": refusal.message}, status_code=refusal.status)
        except Exception:  # a bug: logged with its traceback, never sent to the sender
            log.exception("shadow.collector_failed", remote=remote)
            return JSONResponse({"error": "internal error; it was logged"}, status_code=500)
        if received.problems:
            shown = [problem.message for problem in received.problems[:_LISTED_PROBLEMS]]
            more = len(received.problems) - len(shown)
            if more:
                shown.append(f"and {more} more")
            return JSONResponse({"error": "; ".join(shown), **received.answer()}, status_code=400)
        return JSONResponse(received.answer(), status_code=202)

    for path in EVENT_PATHS:
        app.add_api_route(
            path,
            take,
            methods=["POST"],
            summary="Payload-logger events",
            description="CloudEvents from KServe's payload logger (response events are "
            "joined; request events are ignored).",
            status_code=202,
            response_model=None,
            responses=_RESPONSES,
            openapi_extra=_openapi_extra(max_body),
            tags=["events"],
        )

    @app.get("/metrics", tags=["metrics"])
    def scrape() -> Response:
        return Response(content=collector.render(), media_type=collector.metrics.content_type)

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "pending": collector.joiner.pending})

    return app


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": ShadowAnswer, "description": "every event was taken (or ignored)"},
    400: {
        "model": ShadowError,
        "description": "an event, or the response in it, cannot be read (counted); the other "
        "events of a batch were taken",
    },
    413: {"model": ShadowError, "description": "the body is larger than the limit"},
    415: {"model": ShadowError, "description": "a content type the collector cannot read"},
    500: {"model": ShadowError, "description": "an internal error (logged)"},
}


def _openapi_extra(max_body: int) -> dict[str, Any]:
    """The request body, declared by hand: it is read raw, with a size limit."""
    event = {
        "type": "object",
        "required": ["specversion", "id", "type", "inferenceservicename", "namespace"],
        "properties": {
            "specversion": {"type": "string", "enum": ["1.0"]},
            "id": {"type": "string", "minLength": 1},
            "type": {"type": "string"},
            "source": {"type": "string"},
            "inferenceservicename": {"type": "string"},
            "namespace": {"type": "string"},
            "component": {"type": "string"},
            "endpoint": {"type": "string"},
            "datacontenttype": {"type": "string"},
            "data": {"description": "the model's response (JSON)"},
            "data_base64": {"type": "string"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "description": f"at most {max_body} bytes. Binary mode: the attributes in ce-* "
            "headers (ce-specversion, ce-id, ce-type, ce-inferenceservicename, ce-namespace) "
            "and the model's JSON response as the body.",
            "content": {
                "application/json": {"schema": {"description": "binary mode: the response"}},
                STRUCTURED_CONTENT_TYPE: {"schema": event},
                BATCH_CONTENT_TYPE: {"schema": {"type": "array", "items": event}},
            },
        }
    }
