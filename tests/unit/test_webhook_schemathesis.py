"""schemathesis against the webhook receiver's own OpenAPI document (issue #13: "a
schemathesis run against the receiver's OpenAPI finds no 5xx").

Requests are generated from the published schema, both valid and invalid ones (headers and
bodies), and sent to the receiver in process. Three in four are then signed with the
configured secret at the receiver's current time, over the exact bytes sent, so they pass
the signature check and exercise the parser and the inbox paths; the rest keep their
generated headers and exercise the refusals. The inbox (its database healthy) gives each of
its answers in turn. Every response must be no server error (no 5xx) and must match the
document: a documented status, content type and body schema. A database outage (503) is
covered in test_webhook_receiver.py.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from approvals.signatures import sign
from canary.api.webhooks import (
    WEBHOOK_PREFIX,
    Delivery,
    GateDecision,
    InboxAnswer,
    InboxResult,
    ServiceNowCallback,
    webhook_router,
)

SECRET = "whsec_" + base64.b64encode(b"schemathesis-webhook-key-0123").decode()
NOW = datetime(2026, 12, 5, 17, 0, 0, tzinfo=UTC)
EXAMPLES = 150

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


class TakingTurnsInbox:
    """Answers accepted, duplicate, unknown, gone and refused, in turn."""

    def __init__(self) -> None:
        self.calls = 0

    def _next(self) -> InboxResult:
        answer = list(InboxAnswer)[self.calls % len(InboxAnswer)]
        self.calls += 1
        return InboxResult(answer, f"call {self.calls}: {answer.value}")

    def servicenow_callback(self, delivery: Delivery, callback: ServiceNowCallback) -> InboxResult:
        return self._next()

    def gate_decision(self, delivery: Delivery, decision: GateDecision) -> InboxResult:
        return self._next()


def wire(body: Any) -> bytes:
    """The bytes to send for a generated body."""
    if isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    text = json.dumps(body, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: send it escaped
        return json.dumps(body).encode()


@pytest.mark.parametrize("route", ["servicenow", "approvals"])
def test_generated_requests_get_no_server_error_and_answers_that_match_the_schema(
    route: str,
) -> None:
    inbox = TakingTurnsInbox()
    app = FastAPI(title="kserve-canary webhooks")
    app.include_router(
        webhook_router(
            inbox=inbox,
            servicenow_secrets=lambda: [SECRET],
            gate_secrets=lambda: [SECRET],
            clock=lambda: NOW,
        )
    )
    # the document the controller publishes, not one the test builds
    schema = schemathesis.openapi.from_asgi(f"{WEBHOOK_PREFIX}/openapi.json", app)
    operation = schema[f"{WEBHOOK_PREFIX}/{route}"]["POST"]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    statuses: Counter[int] = Counter()
    timestamp = int(NOW.timestamp())

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=cases)
    def exchange(case: schemathesis.Case[Any]) -> None:
        body = wire(case.body)
        headers: dict[str, str] = {}
        if zlib.crc32(body) % 4:  # three in four, the same ones on every run
            msg_id = f"msg_{zlib.crc32(body):08x}"
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(SECRET, msg_id, timestamp, body),
            }
        response = case.call(data=body, headers=headers)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    exchange()

    sent = sum(statuses.values())
    assert sent >= EXAMPLES // 2
    # The signed share got past the signature: to the parser (400) and to the inbox, whose
    # every answer came back with its own status.
    assert statuses[401] < sent / 2, statuses
    assert statuses[400] > 0, statuses
    assert {202, 200, 404, 410, 403} <= set(statuses), statuses
    assert inbox.calls >= 10
