"""The Prometheus provider against the test bed's real Prometheus 2.42, and against a
scripted HTTP server for what a healthy Prometheus never does (answer 503, refuse a token,
stall).

What a user relies on: every answer is an instant vector of floats (NaN and ±Inf
included) with the SHA-256 of the exact response body, or a typed error that says what
went wrong: NoData, BadQuery with Prometheus' own message, Unreachable after a bounded
number of quick retries.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from analysis.providers.base import MetricProvider
from analysis.providers.prometheus import PrometheusProvider
from analysis.types import (
    BadQuery,
    MetricError,
    NoData,
    PartialAnswer,
    ProviderError,
    QueryResult,
    Unreachable,
)
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

TWO_SERIES = (
    'label_replace(vector(0.25), "revision", "canary", "", "")'
    ' or label_replace(vector(0.5), "revision", "baseline", "", "")'
)


@pytest.fixture(scope="module")
def prometheus(testbed: Testbed) -> Iterator[PrometheusProvider]:
    with PrometheusProvider(testbed.prometheus_url) as provider:
        yield provider


def _settled() -> datetime:
    """An evaluation time whose data can no longer change."""
    return datetime.now(UTC) - timedelta(seconds=2)


def test_vector_with_labels_and_the_digest_of_the_exact_body(
    prometheus: PrometheusProvider, testbed: Testbed
) -> None:
    at = _settled()
    result = prometheus.query(TWO_SERIES, at)
    assert isinstance(prometheus, MetricProvider)
    assert {s.labels["revision"]: s.value for s in result.series} == {
        "canary": 0.25,
        "baseline": 0.5,
    }
    assert result.url == testbed.prometheus_url
    body = httpx.get(
        f"{testbed.prometheus_url}/api/v1/query",
        params={"query": TWO_SERIES, "time": f"{at.timestamp():.3f}"},
    ).content
    assert result.raw_digest == hashlib.sha256(body).hexdigest()  # an auditor can re-check


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("vector(0) / 0", math.isnan),
        ("vector(1) / 0", lambda v: v == math.inf),
        ("-vector(1) / 0", lambda v: v == -math.inf),
    ],
    ids=["NaN", "+Inf", "-Inf"],
)
def test_non_finite_values_come_back_as_floats(
    prometheus: PrometheusProvider, query: str, check: Any
) -> None:
    (series,) = prometheus.query(query, _settled()).series
    assert check(series.value)


@pytest.mark.parametrize(
    ("query", "error", "says"),
    [
        ('up{job="no-such-job"}', NoData, "no series"),
        ("sum(rate(x[5m])", BadQuery, "(HTTP 400, bad_data): invalid parameter"),
        ("sum(rate(x[5m])", BadQuery, "parse error: unclosed left parenthesis"),
        (
            'vector(1) + on() group_left() (label_replace(vector(1), "a", "x", "", "")'
            ' or label_replace(vector(2), "a", "y", "", ""))',
            BadQuery,
            "(HTTP 422, execution): found duplicate series",
        ),
        ("1", BadQuery, "gives a scalar, not an instant vector"),
        ('"text"', BadQuery, "gives a string"),
        ("up[1m]", BadQuery, "gives a matrix"),
    ],
    ids=["empty", "parse-error", "parse-message", "execution-error", "scalar", "string", "matrix"],
)
def test_errors_are_typed_and_keep_prometheus_message(
    prometheus: PrometheusProvider, query: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as raised:
        prometheus.query(query, _settled())
    assert says in str(raised.value)
    assert getattr(raised.value, "query", None) == query
    assert len(getattr(raised.value, "raw_digest", "") or "") == 64  # the refusal is evidence


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_closed_port_is_unreachable_after_bounded_quick_retries() -> None:
    naps: list[float] = []
    provider = PrometheusProvider(f"http://127.0.0.1:{_closed_port()}", retries=2,
                                  sleep=naps.append)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"(?i)refused.*after 3 attempts"):
        provider.query("up", datetime.now(UTC))
    assert time.monotonic() - started < 2
    assert naps == [0.1, 0.2]


def test_real_backoff_is_short() -> None:
    provider = PrometheusProvider(f"http://127.0.0.1:{_closed_port()}", retries=2)
    started = time.monotonic()
    with pytest.raises(Unreachable):
        provider.query("up", datetime.now(UTC))
    assert 0.3 <= time.monotonic() - started < 2


def test_naive_time_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PrometheusProvider("http://127.0.0.1:9").query("up", datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="http"):
        PrometheusProvider("127.0.0.1:9090")
    with pytest.raises(ValueError, match="timeout"):
        PrometheusProvider("http://127.0.0.1:9", timeout=0)


# --- a scripted server for what a healthy Prometheus does not do -------------------------

VECTOR = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}'  # noqa: E501  # fmt: skip


class Script:
    """Answers in order (status, body, delay); the last one repeats. Records requests."""

    def __init__(self, *answers: tuple[int, bytes, float]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[dict[str, list[str]], str | None]] = []
        self.lock = threading.Lock()

    def next(self, query: dict[str, list[str]], auth: str | None) -> tuple[int, bytes, float]:
        with self.lock:
            self.requests.append((query, auth))
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, body, delay = self.server.script.next(
            parse_qs(urlsplit(self.path).query), self.headers.get("Authorization")
        )
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, script: Script) -> None:
        self.script = script
        super().__init__(("127.0.0.1", 0), _Handler)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[_Server] = []
    threads: list[threading.Thread] = []

    def start(script: Script) -> str:
        server = _Server(script)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        servers.append(server)
        threads.append(thread)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=5)


def test_503_is_retried_then_the_answer_is_used(serve: Any) -> None:
    script = Script(
        (503, b'{"status":"error","errorType":"unavailable","error":"starting"}', 0),
        (503, b"busy", 0),
        (200, VECTOR, 0),
    )
    at = datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)
    provider = PrometheusProvider(serve(script), bearer_token="s3cret", timeout=2.5,
                                  sleep=lambda _: None)  # fmt: skip
    result = provider.query("up", at)
    assert isinstance(result, QueryResult)
    assert result.series[0].value == 2.0
    assert result.raw_digest == hashlib.sha256(VECTOR).hexdigest()
    assert len(script.requests) == 3
    params, auth = script.requests[-1]
    assert params == {"query": ["up"], "time": [f"{at.timestamp():.3f}"], "timeout": ["2.5"]}
    assert auth == "Bearer s3cret"


def test_503_until_the_end_is_unreachable_with_the_servers_reason(serve: Any) -> None:
    script = Script((503, b'{"status":"error","errorType":"timeout","error":"query timed out"}',
                     0))  # fmt: skip
    provider = PrometheusProvider(serve(script), retries=1, sleep=lambda _: None)
    with pytest.raises(Unreachable, match=r"HTTP 503, timeout\): query timed out"):
        provider.query("up", datetime.now(UTC))
    assert len(script.requests) == 2


def test_a_stalled_server_is_unreachable_within_the_timeout(serve: Any) -> None:
    provider = PrometheusProvider(serve(Script((200, VECTOR, 3.0))), timeout=0.3, retries=0)
    started = time.monotonic()
    with pytest.raises(Unreachable, match=re.escape("did not answer within 0.3 s")):
        provider.query("up", datetime.now(UTC))
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (401, b"Unauthorized", "refused our credentials (HTTP 401): Unauthorized"),
        (404, b"no such page", "answered HTTP 404"),
        (200, b"<html>proxy login</html>", "not a Prometheus API success"),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"value":1}]}}',
            "malformed vector",
        ),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":'
            b'[{"metric":["a","b"],"value":[1,"1"]}]}}',
            "malformed vector",
        ),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":'
            b'[{"metric":null,"value":[1,"1"]}]}}',
            "malformed vector",
        ),
    ],
    ids=["401", "404", "html", "malformed", "labels-a-list", "labels-null"],
)
def test_other_answers_are_provider_errors_not_retried(
    serve: Any, status: int, body: bytes, says: str
) -> None:
    script = Script((status, body, 0))
    provider = PrometheusProvider(serve(script), sleep=lambda _: None)
    with pytest.raises(ProviderError, match=re.escape(says)):
        provider.query("up", datetime.now(UTC))
    assert len(script.requests) == 1


def test_label_values_that_are_not_text_are_read_as_text(serve: Any) -> None:
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":['
        b'{"metric":{"pod":"p1","shard":3,"canary":true,"zone":null},"value":[1,"2"]},'
        b'{"metric":{"pod":"p2"},"value":[1,"3"]}]}}'
    )
    result = PrometheusProvider(serve(Script((200, body, 0)))).query("up", datetime.now(UTC))
    assert isinstance(result, QueryResult)
    assert [dict(s.labels) for s in result.series] == [
        {"pod": "p1", "shard": "3", "canary": "True", "zone": "None"},
        {"pod": "p2"},
    ]


def test_credentials_in_the_url_are_not_recorded_as_evidence(serve: Any) -> None:
    url = serve(Script((200, VECTOR, 0)))
    provider = PrometheusProvider(url.replace("http://", "http://user:pw@") + "/")
    result = provider.query("up", datetime.now(UTC))
    assert result.url == url
    assert provider.url == url


# --- what validation needs from an answer: timestamps, warnings, the attempts -------------


def test_real_samples_carry_the_evaluation_time(prometheus: PrometheusProvider) -> None:
    at = _settled()
    result = prometheus.query(TWO_SERIES, at)
    assert [s.timestamp for s in result.series] == [round(at.timestamp(), 3)] * 2
    assert result.warnings == ()
    assert (result.attempts, result.failures) == (1, ())


def test_each_answer_is_decoded_once(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look answer is megabytes at scale: the client library must not decode it again."""
    decoded: list[int] = []
    loads = json.loads

    def counting(text: str | bytes, **kwargs: Any) -> Any:
        decoded.append(len(text))
        return loads(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    provider = PrometheusProvider(serve(Script((200, VECTOR, 0))))
    result = provider.query("up", datetime.now(UTC))
    assert result.series[0].value == 2.0
    assert decoded == [len(VECTOR)]


def _vector(*items: str, warnings: str | None = None) -> bytes:
    extra = f',"warnings":{warnings}' if warnings is not None else ""
    return ('{"status":"success","data":{"resultType":"vector","result":['
            + ",".join(items) + "]}" + extra + "}").encode()  # fmt: skip


@pytest.mark.parametrize(
    ("warnings", "expected"),
    [
        ('["remote store 2 timed out"]', ("remote store 2 timed out",)),
        ('["a","b"]', ("a", "b")),
        ("[]", ()),
        ("null", ()),
    ],
    ids=["one", "two", "empty-list", "null"],
)
def test_warnings_and_sample_timestamps_are_kept(
    serve: Any, warnings: str, expected: tuple[str, ...]
) -> None:
    body = _vector(
        '{"metric":{"pod":"a"},"value":[1764579600.5,"3"]}',
        '{"metric":{"pod":"b"},"value":[1764583200,"NaN"]}',
        warnings=warnings,
    )
    result = PrometheusProvider(serve(Script((200, body, 0)))).query("up", datetime.now(UTC))
    assert result.warnings == expected
    assert [s.timestamp for s in result.series] == [1764579600.5, 1764583200.0]
    assert result.series[0].value == 3.0


def test_an_empty_answer_with_warnings_is_partial_not_no_data(serve: Any) -> None:
    body = _vector(warnings='["1 of 2 shards did not answer"]')
    provider = PrometheusProvider(serve(Script((200, body, 0))))
    with pytest.raises(PartialAnswer, match="1 of 2 shards did not answer") as raised:
        provider.query("up", datetime.now(UTC))
    assert raised.value.rule == "partial"
    assert raised.value.raw_digest == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "item",
    [
        '{"metric":{"pod":"b"},"value":[null,"2"]}',
        '{"metric":{"pod":"b"},"value":[true,"2"]}',
        '{"metric":{"pod":"b"},"value":["noon","2"]}',
        '{"metric":{"pod":"b"},"value":[1]}',
        '{"metric":{"pod":"b"},"value":[1,"two"]}',
        '{"metric":{"pod":"b"},"value":[1,null]}',
        '{"metric":{"pod":"b"},"value":[1,"2",3]}',
        '{"metric":{"pod":"b"}}',
    ],
    ids=["null-time", "bool-time", "text-time", "no-value", "text-value", "null-value",
         "three-items", "no-sample"],
)  # fmt: skip
def test_one_unreadable_sample_spoils_its_series_not_the_answer(serve: Any, item: str) -> None:
    good = '{"metric":{"pod":"a"},"value":[1764579600,"3"]}'
    body = _vector(good, item)
    result = PrometheusProvider(serve(Script((200, body, 0)))).query("up", datetime.now(UTC))
    first, second = result.series
    assert (first.labels, first.value, first.unreadable) == ({"pod": "a"}, 3.0, None)
    assert second.labels == {"pod": "b"}
    assert math.isnan(second.value)
    assert second.unreadable


def test_warnings_that_are_not_a_list_are_refused(serve: Any) -> None:
    body = _vector('{"metric":{},"value":[1,"2"]}', warnings='"careful"')
    with pytest.raises(ProviderError, match="warnings that are not a list"):
        PrometheusProvider(serve(Script((200, body, 0)))).query("up", datetime.now(UTC))


def test_an_answer_after_retries_records_the_attempts_and_what_failed(serve: Any) -> None:
    script = Script(
        (503, b'{"status":"error","errorType":"unavailable","error":"starting"}', 0),
        (502, b"bad gateway", 0),
        (200, VECTOR, 0),
    )
    provider = PrometheusProvider(serve(script), retries=3, sleep=lambda _: None)
    result = provider.query("up", datetime.now(UTC))
    assert result.attempts == 3
    assert len(result.failures) == 2
    assert "HTTP 503, unavailable): starting" in result.failures[0]
    assert "HTTP 502): bad gateway" in result.failures[1]


@pytest.mark.parametrize(
    ("answers", "retries", "error", "attempts", "failed"),
    [
        pytest.param([(503, b"busy", 0)], 2, Unreachable, 3, 3, id="503-every-time"),
        pytest.param([(503, b"busy", 0), (401, b"no", 0)], 2, ProviderError, 2, 2,
                     id="503-then-refused"),
        pytest.param([(400, b'{"status":"error","errorType":"bad_data","error":"parse"}', 0)],
                     2, BadQuery, 1, 1, id="refused-at-once"),
        pytest.param([(503, b"busy", 0), (200, _vector(), 0)], 2, NoData, 2, 1,
                     id="503-then-empty"),
    ],
)  # fmt: skip
def test_an_error_records_its_attempts_failures_and_time(
    serve: Any,
    answers: list[tuple[int, bytes, float]],
    retries: int,
    error: type[Exception],
    attempts: int,
    failed: int,
) -> None:
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    provider = PrometheusProvider(serve(Script(*answers)), retries=retries, sleep=lambda _: None)
    with pytest.raises(error) as raised:
        provider.query("up", at)
    assert isinstance(raised.value, MetricError)
    assert raised.value.attempts == attempts
    assert len(raised.value.failures) == failed
    assert raised.value.at == at
    assert raised.value.query == "up"
