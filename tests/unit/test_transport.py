"""The one HTTP module: what it sends, what it returns, and how a request that got no answer
is reported (whether it may have reached the server decides whether callers may repeat it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from approvals.transport import Transport, TransportError


def test_request_goes_to_the_base_url_with_default_and_call_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True}, headers={"X-Thing": "1"})

    with Transport(
        "https://sn.example/",
        headers={"Accept": "application/json"},
        http_transport=httpx.MockTransport(handler),
    ) as transport:
        answer = transport.request(
            "POST",
            "/api/now/table/change_request",
            json={"a": "b"},
            params={"sysparm_limit": "1"},
            headers={"Authorization": "Bearer t"},
        )
    assert answer.status == 201
    assert answer.json() == {"ok": True}
    assert answer.header("x-thing") == "1"
    assert answer.header("X-Thing") == "1"
    (request,) = seen
    assert str(request.url) == "https://sn.example/api/now/table/change_request?sysparm_limit=1"
    assert request.headers["accept"] == "application/json"
    assert request.headers["authorization"] == "Bearer t"
    assert json.loads(request.content) == {"a": "b"}


def test_form_bodies_and_absolute_urls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"not json")

    transport = Transport(http_transport=httpx.MockTransport(handler))
    answer = transport.request("POST", "https://other.example/oauth_token.do", data={"a": "b c"})
    assert seen[0].content == b"a=b+c"
    assert seen[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert answer.text == "not json"
    with pytest.raises(ValueError):  # noqa: PT011 - json.loads' own error
        answer.json()
    with pytest.raises(ValueError, match="no base URL"):
        transport.request("GET", "/relative")


@pytest.mark.parametrize(
    ("error", "kind", "maybe_sent", "message"),
    [
        (httpx.ConnectError("Connection refused"), "connect", False, "cannot connect"),
        (httpx.ConnectTimeout("timed out"), "timeout", False, "cannot connect"),
        (httpx.ReadTimeout("timed out"), "timeout", True, "no answer within 2.5 s"),
        (httpx.RemoteProtocolError("peer closed"), "protocol", True, "peer closed"),
    ],
)
def test_no_answer_is_a_transport_error(
    error: Exception, kind: str, maybe_sent: bool, message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    transport = Transport("https://sn.example", http_transport=httpx.MockTransport(handler))
    with pytest.raises(TransportError, match=message) as raised:
        transport.request("GET", "/x", timeout=2.5)
    assert raised.value.kind == kind
    assert raised.value.maybe_sent is maybe_sent
    assert "GET https://sn.example/x" in str(raised.value)


def test_unusable_tls_files_are_refused_at_construction(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot use the CA file"):
        Transport("https://sn.example", verify=bogus)
    with pytest.raises(ValueError, match="cannot use the client certificate"):
        Transport("https://sn.example", client_certificate=(bogus, bogus))
    with pytest.raises(ValueError, match="timeout must be positive"):
        Transport("https://sn.example", timeout=0)
