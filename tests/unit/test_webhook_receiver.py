"""The approval webhook receiver (canary/api/webhooks.py) as a sender meets it.

A genuine delivery reaches the inbox with its id, times, digest and the secret that matched;
a forged, stale, future or unsigned one is refused with 401 before its body is parsed and
never reaches the inbox; a body over the limit is refused with 413 without being read to the
end; a signed body of the wrong shape is 400 naming the field; each inbox answer has its own
status; a database outage is 503 and a bug 500 without a traceback; a missing or unusable
secret is 503, never 401 or 500. The app is the controller's own (``create_app``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from structlog.testing import capture_logs

from approvals.signatures import sign
from canary.api.app import create_app
from canary.api.health import Health
from canary.api.webhooks import (
    WEBHOOK_PREFIX,
    Delivery,
    GateDecision,
    InboxAnswer,
    InboxResult,
    ServiceNowCallback,
    webhook_router,
)
from canary.audit import AuditError, StoreUnavailable
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet
from testbed.servicenow import signing as simulator_signing

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
GATE = "whsec_" + base64.b64encode(b"g" * 32).decode()
NOW = datetime(2026, 12, 5, 17, 0, 0, tzinfo=UTC)
SENT = NOW - timedelta(seconds=30)
TS = int(SENT.timestamp())
MSG = "msg_2b8Yq0aZ"
SNOW = f"{WEBHOOK_PREFIX}/servicenow"
GATE_PATH = f"{WEBHOOK_PREFIX}/approvals"
SYS_ID = "0123456789abcdef0123456789abcdef"
USER_ID = "fedcba9876543210fedcba9876543210"
LIMIT = 8 * 1024  # room for a 4000-character comment

CALLBACK: dict[str, Any] = {
    "type": "change.approval",
    "change": {"sys_id": SYS_ID, "number": "CHG0030001", "approval": "approved", "state": "-3"},
    "approver": {"sys_id": USER_ID, "user_name": "rita.risk"},
    "comments": "fine by me",
    "correlation_id": "kserve-canary:42:100",
}
DECISION: dict[str, Any] = {
    "type": "approval.decision",
    "namespace": "credit",
    "name": "limits",
    "revision": "limits-predictor-00002",
    "decision": "approve",
    "approver": "rita@example.com",
    "comment": "reviewed the evidence",
    "changeId": "CR-2211",
}


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def signed(
    body: bytes, secret: str = OLD, *, msg_id: str = MSG, timestamp: int = TS
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


@dataclass
class FakeInbox:
    """Records what it was given and answers as told."""

    result: Any = field(default_factory=lambda: InboxResult(InboxAnswer.ACCEPTED, "taken"))
    error: Exception | None = None
    calls: list[tuple[str, Delivery, BaseModel]] = field(default_factory=list)

    def _answer(self, kind: str, delivery: Delivery, body: BaseModel) -> InboxResult:
        self.calls.append((kind, delivery, body))
        if self.error is not None:
            raise self.error
        result: InboxResult = self.result
        return result

    def servicenow_callback(self, delivery: Delivery, callback: ServiceNowCallback) -> InboxResult:
        return self._answer("servicenow", delivery, callback)

    def gate_decision(self, delivery: Delivery, decision: GateDecision) -> InboxResult:
        return self._answer("gate", delivery, decision)


PEER = "203.0.113.9"


@dataclass
class Receiver:
    app: FastAPI
    inbox: FakeInbox
    metrics: ControllerMetrics
    servicenow_secrets: list[str]
    gate_secrets: list[str]

    def post(
        self, path: str, body: bytes | AsyncIterator[bytes], headers: dict[str, str]
    ) -> httpx.Response:
        """One request through httpx's ASGI transport, from the address ``PEER``."""

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(PEER, 51000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.post(path, content=body, headers=headers)

        return asyncio.run(go())

    def counted(self, source: str, outcome: str) -> float:
        text = self.metrics.render().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kserve_canary_webhook_deliveries_total" and sample.labels == {
                    "source": source,
                    "outcome": outcome,
                }:
                    return sample.value
        raise AssertionError(f"no webhook series for {source}/{outcome}")


def build(
    *,
    servicenow_secrets: Callable[[], Sequence[str]] | None = None,
    gate_secrets: Callable[[], Sequence[str]] | None = None,
    max_body: int = LIMIT,
) -> Receiver:
    inbox = FakeInbox()
    metrics = ControllerMetrics()
    snow_list, gate_list = [OLD], [GATE]
    router = webhook_router(
        inbox=inbox,
        servicenow_secrets=servicenow_secrets or (lambda: snow_list),
        gate_secrets=gate_secrets or (lambda: gate_list),
        clock=lambda: NOW,
        metrics=metrics,
        max_body=max_body,
    )
    app = create_app(
        health=Health(),
        policies=lambda: PolicySet([], {}),
        metrics=metrics,
        extra_routers=[router],
    )
    return Receiver(app, inbox, metrics, snow_list, gate_list)


@pytest.fixture
def receiver() -> Receiver:
    return build()


# --- genuine deliveries ----------------------------------------------------------------------


def test_a_signed_servicenow_callback_reaches_the_inbox_with_its_delivery(
    receiver: Receiver,
) -> None:
    body = encode(CALLBACK)
    response = receiver.post(SNOW, body, signed(body))
    assert response.status_code == 202
    assert response.json() == {"outcome": "accepted", "detail": "taken"}
    [(kind, delivery, callback)] = receiver.inbox.calls
    assert kind == "servicenow"
    assert delivery == Delivery(
        source="servicenow",
        webhook_id=MSG,
        received_at=NOW,
        sent_at=SENT,
        payload_digest="sha256:" + hashlib.sha256(body).hexdigest(),
        secret_index=0,
    )
    assert isinstance(callback, ServiceNowCallback)
    assert callback.change.sys_id == SYS_ID
    assert callback.change.number == "CHG0030001"
    assert callback.change.approval == "approved"
    assert callback.approver is not None
    assert callback.approver.user_name == "rita.risk"
    assert callback.comments == "fine by me"
    assert callback.correlation_id == "kserve-canary:42:100"
    assert receiver.counted("servicenow", "accepted") == 1


def test_a_signed_gate_decision_reaches_the_inbox_with_its_delivery(receiver: Receiver) -> None:
    body = encode(DECISION)
    response = receiver.post(GATE_PATH, body, signed(body, GATE, msg_id="evt_77"))
    assert response.status_code == 202
    [(kind, delivery, decision)] = receiver.inbox.calls
    assert kind == "gate"
    assert delivery.source == "webhook"
    assert delivery.webhook_id == "evt_77"
    assert delivery.sent_at == SENT
    assert delivery.payload_digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert decision == GateDecision(
        type="approval.decision",
        namespace="credit",
        name="limits",
        revision="limits-predictor-00002",
        decision="approve",
        approver="rita@example.com",
        comment="reviewed the evidence",
        change_id="CR-2211",
    )
    assert receiver.counted("webhook", "accepted") == 1


def test_the_digest_is_of_the_bytes_as_sent_not_of_re_serialised_json(
    receiver: Receiver,
) -> None:
    body = json.dumps(CALLBACK, indent=3, sort_keys=True).encode()
    assert receiver.post(SNOW, body, signed(body)).status_code == 202
    [(_, delivery, _)] = receiver.inbox.calls
    assert delivery.payload_digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert delivery.payload_digest != "sha256:" + hashlib.sha256(encode(CALLBACK)).hexdigest()


@pytest.mark.parametrize(
    ("configured", "signers", "index"),
    [
        pytest.param([NEW, OLD], [OLD], 1, id="sender-still-on-the-old-secret"),
        pytest.param([NEW, OLD], [NEW], 0, id="sender-on-the-new-secret"),
        pytest.param([NEW], [OTHER, NEW], 0, id="one-of-several-signatures-matches"),
    ],
)
def test_a_rotation_accepts_any_active_secret_and_says_which(
    configured: list[str], signers: list[str], index: int
) -> None:
    built = build(servicenow_secrets=lambda: configured)
    body = encode(CALLBACK)
    headers = signed(body)
    headers["webhook-signature"] = " ".join(sign(s, MSG, TS, body) for s in signers)
    assert built.post(SNOW, body, headers).status_code == 202
    [(_, delivery, _)] = built.inbox.calls
    assert delivery.secret_index == index


def test_secrets_are_read_for_every_delivery_so_a_retired_one_stops_at_once(
    receiver: Receiver,
) -> None:
    body = encode(CALLBACK)
    assert receiver.post(SNOW, body, signed(body, OLD)).status_code == 202
    receiver.servicenow_secrets[:] = [NEW]
    response = receiver.post(SNOW, body, signed(body, OLD, msg_id="msg_second"))
    assert response.status_code == 401
    assert len(receiver.inbox.calls) == 1


def test_the_simulators_callback_signed_by_its_own_signer_is_accepted(
    receiver: Receiver,
) -> None:
    # The body and headers exactly as testbed/servicenow/server.py sends them (SERVICENOW.md
    # §7), signed by the simulator's signer, written apart from ours, under two secrets.
    body = encode(CALLBACK)
    headers = simulator_signing.headers([NEW, OLD], "msg_0a1b2c", TS, body)
    headers |= {"Content-Type": "application/json", "User-Agent": "ServiceNow-simulator"}
    response = receiver.post(SNOW, body, headers)
    assert response.status_code == 202
    [(_, delivery, _)] = receiver.inbox.calls
    assert delivery.webhook_id == "msg_0a1b2c"


def test_fields_a_business_rule_adds_to_the_callback_are_ignored(receiver: Receiver) -> None:
    payload = {**CALLBACK, "instance": "acme-prod"}
    payload["change"] = {**CALLBACK["change"], "short_description": "promote limits"}
    body = encode(payload)
    assert receiver.post(SNOW, body, signed(body)).status_code == 202


def test_a_gate_decision_without_the_optional_fields(receiver: Receiver) -> None:
    payload = {k: v for k, v in DECISION.items() if k not in {"revision", "comment", "changeId"}}
    body = encode({**payload, "decision": "reject"})
    assert receiver.post(GATE_PATH, body, signed(body, GATE)).status_code == 202
    [(_, _, decision)] = receiver.inbox.calls
    assert isinstance(decision, GateDecision)
    assert (decision.decision, decision.revision, decision.change_id) == ("reject", None, None)


# --- refused signatures ----------------------------------------------------------------------


def _forged(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"approved", b"rejected"), signed(body)


def _without(header: str) -> Callable[[bytes], tuple[bytes, dict[str, str]]]:
    def make(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = signed(body)
        del headers[header]
        return body, headers

    return make


def _with(**changes: str) -> Callable[[bytes], tuple[bytes, dict[str, str]]]:
    def make(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, signed(body) | {k.replace("_", "-"): v for k, v in changes.items()}

    return make


STALE = int((NOW - timedelta(seconds=301)).timestamp())
FUTURE = int((NOW + timedelta(seconds=301)).timestamp())

UNAUTHORIZED = [
    pytest.param(_forged, "no v1 signature matches", MSG, id="forged-body"),
    pytest.param(
        lambda body: (body, signed(body, OTHER)),
        "no v1 signature matches",
        MSG,
        id="wrong-secret",
    ),
    pytest.param(
        lambda body: (body, signed(body, timestamp=STALE)),
        "before now, beyond the 300 s",
        MSG,
        id="stale",
    ),
    pytest.param(
        lambda body: (body, signed(body, timestamp=FUTURE)),
        "after now, beyond the 300 s",
        MSG,
        id="future",
    ),
    pytest.param(
        lambda body: (body, signed(body) | {"webhook-id": "msg_other"}),
        "no v1 signature matches",
        "msg_other",
        id="signature-moved-to-another-id",
    ),
    pytest.param(_without("webhook-id"), "the webhook-id header is missing", None, id="no-id"),
    pytest.param(
        _without("webhook-timestamp"),
        "the webhook-timestamp header is missing",
        MSG,
        id="no-timestamp",
    ),
    pytest.param(
        _without("webhook-signature"),
        "the webhook-signature header is missing",
        MSG,
        id="no-signature",
    ),
    pytest.param(
        _with(webhook_timestamp="2026-12-05T16:59:30Z"),
        "is not Unix seconds",
        MSG,
        id="timestamp-not-seconds",
    ),
    pytest.param(
        _with(webhook_signature="v2,c2lnbmF0dXJl"),
        "holds no v1 signature",
        MSG,
        id="no-v1-entry",
    ),
]


@pytest.mark.parametrize(("make", "message", "logged_id"), UNAUTHORIZED)
def test_an_unproven_delivery_is_401_logged_counted_and_never_reaches_the_inbox(
    receiver: Receiver,
    make: Callable[[bytes], tuple[bytes, dict[str, str]]],
    message: str,
    logged_id: str | None,
) -> None:
    body, headers = make(encode(CALLBACK))
    with capture_logs() as logs:
        response = receiver.post(SNOW, body, headers)
    assert response.status_code == 401
    assert message in response.json()["error"]
    assert receiver.inbox.calls == []
    assert receiver.counted("servicenow", "unauthorized") == 1
    [rejected] = [entry for entry in logs if entry["event"] == "webhook.rejected"]
    assert rejected["reason"] == response.json()["error"]
    assert rejected["remote"] == PEER
    assert rejected["webhook_id"] == logged_id
    assert rejected["source"] == "servicenow"


def test_a_body_that_is_not_json_but_unsigned_is_401_not_400(receiver: Receiver) -> None:
    """The signature is checked before anything is parsed."""
    response = receiver.post(SNOW, b"not json at all", {"webhook-id": MSG})
    assert response.status_code == 401
    assert receiver.counted("servicenow", "malformed") == 0


def test_each_route_has_its_own_secrets(receiver: Receiver) -> None:
    snow_body, gate_body = encode(CALLBACK), encode(DECISION)
    assert receiver.post(SNOW, snow_body, signed(snow_body, GATE)).status_code == 401
    assert receiver.post(GATE_PATH, gate_body, signed(gate_body, OLD)).status_code == 401
    assert receiver.inbox.calls == []
    assert receiver.counted("webhook", "unauthorized") == 1


# --- size limit ------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid callback of exactly ``size`` bytes (padded with JSON whitespace)."""
    body = encode(CALLBACK)
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_the_limit_is_taken(receiver: Receiver) -> None:
    body = padded(LIMIT)
    assert receiver.post(SNOW, body, signed(body)).status_code == 202


def test_a_body_over_the_limit_is_413_even_when_signed(receiver: Receiver) -> None:
    body = padded(LIMIT + 1)
    response = receiver.post(SNOW, body, signed(body))
    assert response.status_code == 413
    assert response.json() == {"error": f"the body is larger than {LIMIT} bytes"}
    assert receiver.inbox.calls == []
    assert receiver.counted("servicenow", "too_large") == 1


def test_a_chunked_body_over_the_limit_is_413(receiver: Receiver) -> None:
    body = padded(LIMIT + 100)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    headers = signed(body, GATE)
    response = receiver.post(GATE_PATH, chunks(), headers)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert receiver.inbox.calls == []


@dataclass
class Sent:
    status: int
    body: dict[str, Any]
    chunks_read: int


def send_raw(app: FastAPI, path: str, headers: dict[str, str], chunks: Iterable[bytes]) -> Sent:
    """One request straight through ASGI, counting the body chunks the app asks for."""
    source = iter(chunks)
    read = 0
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("192.0.2.7", 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in out if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return Sent(start["status"], json.loads(payload), read)


def test_a_declared_length_over_the_limit_is_refused_before_any_of_the_body_is_read() -> None:
    built = build()
    headers = signed(b"") | {"content-length": str(10 * LIMIT)}
    sent = send_raw(built.app, SNOW, headers, [b"x" * 1024] * 100)
    assert sent.status == 413
    assert sent.chunks_read == 0


def test_a_stream_without_length_is_read_only_until_it_passes_the_limit() -> None:
    built = build()
    # A hundred 256-byte chunks (25 kB) are on offer; the 8 kB limit is passed in the 33rd.
    sent = send_raw(built.app, GATE_PATH, signed(b"", GATE), [b" " * 256] * 100)
    assert sent.status == 413
    assert sent.chunks_read == LIMIT // 256 + 1
    assert built.inbox.calls == []


# --- malformed bodies (correctly signed) -----------------------------------------------------


def _snow(**changes: Any) -> bytes:
    return encode({**CALLBACK, **changes})


def _change(**changes: Any) -> bytes:
    return encode({**CALLBACK, "change": {**CALLBACK["change"], **changes}})


def _gate(**changes: Any) -> bytes:
    return encode({**DECISION, **changes})


MALFORMED = [
    pytest.param(SNOW, b'{"type": "change.approval",', "not valid JSON", id="truncated-json"),
    pytest.param(SNOW, b"", "not valid JSON", id="empty-body"),
    pytest.param(SNOW, b"\xff\xfe{}", "not valid JSON", id="not-utf8"),
    pytest.param(SNOW, b'[{"type": "change.approval"}]', "must be a JSON object", id="array"),
    pytest.param(SNOW, b'"change.approval"', "must be a JSON object", id="string"),
    pytest.param(SNOW, _snow(type="change.created"), "type: Input should be", id="unknown-type"),
    pytest.param(
        SNOW,
        encode({k: v for k, v in CALLBACK.items() if k != "change"}),
        "change: Field required",
        id="no-change",
    ),
    pytest.param(SNOW, _change(sys_id=123), "change.sys_id: Input should be", id="sys-id-int"),
    pytest.param(SNOW, _change(sys_id="ABC"), "change.sys_id: String should match", id="sys-id"),
    pytest.param(SNOW, _change(number="chg1"), "change.number", id="number-lower-case"),
    pytest.param(SNOW, _change(number="CHG٣"), "change.number", id="number-other-digits"),
    pytest.param(SNOW, _snow(comments="x" * 4001), "comments:", id="comments-too-long"),
    pytest.param(SNOW, _snow(approver=["rita"]), "approver:", id="approver-not-object"),
    pytest.param(GATE_PATH, _gate(approvedBy="rita"), "approvedBy: Extra inputs", id="extra"),
    pytest.param(GATE_PATH, _gate(type="change.approval"), "type:", id="gate-wrong-type"),
    pytest.param(
        GATE_PATH,
        _gate(namespace="Credit_Team"),
        "namespace: String should match",
        id="namespace-not-dns-label",
    ),
    pytest.param(
        GATE_PATH, _gate(name="x" * 64), "name: String should have at most 63", id="name-too-long"
    ),
    pytest.param(
        GATE_PATH, _gate(name="limits-"), "name: String should match", id="name-ends-with-dash"
    ),
    pytest.param(
        GATE_PATH,
        _gate(namespace=5),
        "namespace: Input should be a valid string",
        id="namespace-int",
    ),
    pytest.param(GATE_PATH, _gate(decision="maybe"), "decision: Input should be", id="decision"),
    pytest.param(
        GATE_PATH,
        _gate(approver=""),
        "approver: String should have at least 1",
        id="approver-empty",
    ),
    pytest.param(GATE_PATH, _gate(changeId="C" * 129), "changeId:", id="change-id-too-long"),
    pytest.param(
        GATE_PATH,
        encode({k: v for k, v in DECISION.items() if k != "approver"}),
        "approver: Field required",
        id="no-approver",
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), MALFORMED)
def test_a_signed_body_of_the_wrong_shape_is_400_naming_the_problem(
    receiver: Receiver, path: str, body: bytes, message: str
) -> None:
    secret = OLD if path == SNOW else GATE
    response = receiver.post(path, body, signed(body, secret))
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error
    describe = "the ServiceNow callback" if path == SNOW else "the approval webhook"
    assert error.startswith(f"invalid body for {describe}: ")
    assert receiver.inbox.calls == []
    assert receiver.counted("servicenow" if path == SNOW else "webhook", "malformed") == 1


# --- the inbox's answers ---------------------------------------------------------------------

ANSWERS = [
    pytest.param(InboxAnswer.ACCEPTED, 202, {"outcome": "accepted", "detail": "d"}, id="accepted"),
    pytest.param(
        InboxAnswer.DUPLICATE, 200, {"outcome": "duplicate", "detail": "d"}, id="duplicate"
    ),
    pytest.param(InboxAnswer.UNKNOWN, 404, {"error": "d"}, id="unknown"),
    pytest.param(InboxAnswer.GONE, 410, {"error": "d"}, id="gone"),
    pytest.param(InboxAnswer.REFUSED, 403, {"error": "d"}, id="refused"),
]


@pytest.mark.parametrize("path", [SNOW, GATE_PATH], ids=["servicenow", "gate"])
@pytest.mark.parametrize(("answer", "status", "expected"), ANSWERS)
def test_each_inbox_answer_has_its_status(
    receiver: Receiver, path: str, answer: InboxAnswer, status: int, expected: dict[str, str]
) -> None:
    receiver.inbox.result = InboxResult(answer, "d")
    body = encode(CALLBACK if path == SNOW else DECISION)
    response = receiver.post(path, body, signed(body, OLD if path == SNOW else GATE))
    assert response.status_code == status
    assert response.json() == expected
    assert len(receiver.inbox.calls) == 1
    source = "servicenow" if path == SNOW else "webhook"
    assert receiver.counted(source, answer.value) == 1


@pytest.mark.parametrize(
    "error",
    [AuditError("connection refused"), StoreUnavailable("connection refused")],
    ids=["audit-error", "store-unavailable"],
)
def test_a_database_outage_is_503_so_the_sender_retries(
    receiver: Receiver, error: Exception
) -> None:
    receiver.inbox.error = error
    body = encode(CALLBACK)
    response = receiver.post(SNOW, body, signed(body))
    assert response.status_code == 503
    assert response.json() == {
        "error": "the audit database cannot be reached; retry later: connection refused"
    }
    assert receiver.counted("servicenow", "unavailable") == 1


def test_a_bug_in_the_inbox_is_500_without_its_details(receiver: Receiver) -> None:
    receiver.inbox.error = KeyError("internal-table-name")
    body = encode(DECISION)
    with capture_logs() as logs:
        response = receiver.post(GATE_PATH, body, signed(body, GATE))
    assert response.status_code == 500
    assert response.json() == {"error": "internal error while taking the delivery; it was logged"}
    assert "internal-table-name" not in response.text
    [failed] = [entry for entry in logs if entry["event"] == "webhook.failed"]
    assert failed["webhook_id"] == MSG
    assert failed["exc_info"] is True
    assert receiver.counted("webhook", "error") == 1


def test_an_inbox_answer_that_is_no_result_is_500(receiver: Receiver) -> None:
    receiver.inbox.result = "accepted"
    body = encode(CALLBACK)
    response = receiver.post(SNOW, body, signed(body))
    assert response.status_code == 500
    assert "error" in response.json()


# --- our own configuration -------------------------------------------------------------------


def _unreadable() -> Sequence[str]:
    raise OSError("/etc/kserve-canary/webhook/secrets: permission denied")


CONFIGURATION = [
    pytest.param(list, "no webhook secret is configured for the ServiceNow callback", id="none"),
    pytest.param(
        lambda: ["whsec_" + base64.b64encode(b"short").decode()],
        "a webhook secret configured for the ServiceNow callback is unusable: a webhook "
        "secret's key must be at least 24 bytes, not 5",
        id="key-too-short",
    ),
    pytest.param(
        lambda: [OLD, "s3cr3t"],
        "a webhook secret configured for the ServiceNow callback is unusable: a webhook "
        "secret is written whsec_<base64 of the key bytes>",
        id="not-whsec",
    ),
    pytest.param(
        _unreadable,
        "the webhook secrets for the ServiceNow callback cannot be read (OSError)",
        id="source-fails",
    ),
]


@pytest.mark.parametrize(("secrets", "message"), CONFIGURATION)
def test_a_missing_or_unusable_secret_is_503_whatever_the_sender_did(
    secrets: Callable[[], Sequence[str]], message: str
) -> None:
    built = build(servicenow_secrets=secrets)
    body = encode(CALLBACK)
    genuine = built.post(SNOW, body, signed(body))
    unsigned = built.post(SNOW, body, {})
    for response in (genuine, unsigned):
        assert response.status_code == 503
        assert response.json() == {"error": message}
    assert built.inbox.calls == []
    assert built.counted("servicenow", "unavailable") == 2


def test_the_other_route_works_while_one_has_no_secret() -> None:
    built = build(servicenow_secrets=list)
    body = encode(DECISION)
    assert built.post(GATE_PATH, body, signed(body, GATE)).status_code == 202


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_body must be at least 1 byte, not 0"):
        webhook_router(
            inbox=FakeInbox(), servicenow_secrets=list, gate_secrets=list,
            clock=lambda: NOW, max_body=0,
        )  # fmt: skip


# --- the OpenAPI document --------------------------------------------------------------------


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


@pytest.mark.parametrize(
    ("path", "required", "some_properties"),
    [
        pytest.param(SNOW, {"type", "change"}, {"change", "approver", "comments"}, id="servicenow"),
        pytest.param(
            GATE_PATH,
            {"type", "namespace", "name", "decision", "approver"},
            {"revision", "comment", "changeId"},
            id="gate",
        ),
    ],
)
def test_the_openapi_document_describes_each_route(
    receiver: Receiver, path: str, required: set[str], some_properties: set[str]
) -> None:
    document = receiver.app.openapi()
    operation = document["paths"][path]["post"]
    assert operation["tags"] == ["webhooks"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert all(p["required"] for p in headers.values())
    body = operation["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["required"]) == required
    assert some_properties <= set(schema["properties"])
    assert set(operation["responses"]) == {
        "200", "202", "400", "401", "403", "404", "410", "413", "500", "503"
    }  # fmt: skip
    # Every reference resolves inside the document (the body's nested models are inlined).
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]


def test_the_gate_schema_forbids_unknown_fields_and_the_callback_schema_allows_them(
    receiver: Receiver,
) -> None:
    paths = receiver.app.openapi()["paths"]
    gate = paths[GATE_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    snow = paths[SNOW]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert gate["additionalProperties"] is False
    assert "additionalProperties" not in snow
    assert gate["properties"]["namespace"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert snow["properties"]["change"]["properties"]["sys_id"]["pattern"] == "^[0-9a-f]{32}$"


def test_the_controller_publishes_the_receivers_openapi_document(receiver: Receiver) -> None:
    """The controller's app has no /openapi.json of its own: the receiver publishes its
    routes' document under its prefix, and nothing else is in it."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=receiver.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(f"{WEBHOOK_PREFIX}/openapi.json")

    answer = asyncio.run(go())
    assert answer.status_code == 200
    document = answer.json()
    assert document["info"]["title"] == "kserve-canary approval webhooks"
    assert set(document["paths"]) == {SNOW, GATE_PATH}
    assert document["paths"][GATE_PATH]["post"]["requestBody"]["required"] is True
