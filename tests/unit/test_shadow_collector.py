"""The shadow collector as KServe's payload logger (and the test bed) meets it: the app of
canary/api/shadow.py around canary/shadow/collector.py, through httpx's ASGI transport.

A champion's and a challenger's responses to the same request become a pair in
``kserve_canary_shadow_pairs_total`` from both sides, with each side's score in the
histogram; an unreadable event is 400 naming the problem, counted, and logged at most once per
reason per 10 s; a body over the limit is 413 without being read to the end; a content type
the collector cannot read is 415 before the body is read; a replayed or forged event never
raises the agreement count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from canary.api.shadow import DEFAULT_MAX_BODY, collector_app
from canary.shadow.collector import SCORE_BUCKETS, ShadowCollector, ShadowMetrics
from canary.shadow.events import REQUEST_TYPE, RESPONSE_TYPE, InferenceEvent, Prediction
from canary.shadow.join import Joiner

LIMIT = 4096


@dataclass
class Clock:
    now: float = 500.0

    def __call__(self) -> float:
        return self.now


def v1(decision: str, score: float) -> dict[str, Any]:
    return {"predictions": [{"decision": decision, "score": score}]}


def binary(isvc: str, event_id: str = "req-1", *, namespace: str = "credit",
           event_type: str = RESPONSE_TYPE) -> dict[str, str]:  # fmt: skip
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": "http://localhost:9081/",
        "ce-inferenceservicename": isvc,
        "ce-namespace": namespace,
        "ce-component": "predictor",
        "ce-endpoint": "default",
        "content-type": "application/json",
    }


def structured(isvc: str, event_id: str, data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "type": RESPONSE_TYPE,
        "source": "testbed",
        "inferenceservicename": isvc,
        "namespace": "credit",
        "component": "predictor",
        "datacontenttype": "application/json",
        "data": data,
    }


BATCH = {"content-type": "application/cloudevents-batch+json"}


@dataclass
class Sink:
    app: FastAPI
    collector: ShadowCollector
    clock: Clock

    def post(
        self, body: bytes | AsyncIterator[bytes], headers: dict[str, str], path: str = "/"
    ) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("10.1.2.3", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://collector") as c:
                return await c.post(path, content=body, headers=headers)

        return asyncio.run(go())

    def get(self, path: str) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://collector") as c:
                return await c.get(path)

        return asyncio.run(go())

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def events(self, outcome: str) -> float | None:
        return self.value("kserve_canary_shadow_events_total", outcome=outcome)


def build(*, max_body: int = LIMIT, ttl: float = 30.0) -> Sink:
    clock = Clock()
    collector = ShadowCollector(Joiner(clock=clock, ttl_seconds=ttl), ShadowMetrics(), clock=clock)
    return Sink(collector_app(collector, max_body=max_body), collector, clock)


@pytest.fixture
def sink() -> Sink:
    return build()


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- pairs ------------------------------------------------------------------------------------


def test_a_champion_and_a_challenger_response_become_a_pair_seen_from_both_sides(
    sink: Sink,
) -> None:
    first = sink.post(encode(v1("approve", 0.72)), binary("champion"))
    assert first.status_code == 202
    assert first.json() == {"events": 1, "pairs": 0, "outcomes": {"waiting": 1}}
    assert sink.value("kserve_canary_shadow_pending") == 1
    second = sink.post(encode(v1("approve", 0.31)), binary("challenger"), path="/events")
    assert second.status_code == 202
    assert second.json() == {"events": 1, "pairs": 1, "outcomes": {"joined": 1}}

    pairs = "kserve_canary_shadow_pairs_total"
    for isvc, peer in (("champion", "challenger"), ("challenger", "champion")):
        assert sink.value(pairs, namespace="credit", isvc=isvc, peer=peer, agree="true") == 1
        assert sink.value(pairs, namespace="credit", isvc=isvc, peer=peer, agree="false") is None
    score = {"namespace": "credit", "isvc": "champion", "peer": "challenger"}
    assert sink.value("kserve_canary_shadow_score_count", **score) == 1
    assert sink.value("kserve_canary_shadow_score_sum", **score) == pytest.approx(0.72)
    assert sink.value("kserve_canary_shadow_score_bucket", le="0.7", **score) == 0
    assert sink.value("kserve_canary_shadow_score_bucket", le="0.75", **score) == 1
    other = {"namespace": "credit", "isvc": "challenger", "peer": "champion"}
    assert sink.value("kserve_canary_shadow_score_sum", **other) == pytest.approx(0.31)
    assert sink.value("kserve_canary_shadow_score_bucket", le="0.3", **other) == 0
    assert sink.value("kserve_canary_shadow_score_bucket", le="0.35", **other) == 1
    assert sink.events("waiting") == 1
    assert sink.events("joined") == 1
    assert sink.value("kserve_canary_shadow_pending") == 0


def test_the_score_buckets_are_the_contracts() -> None:
    assert SCORE_BUCKETS == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
                             0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)  # fmt: skip


def test_disagreement_is_counted_as_agree_false(sink: Sink) -> None:
    sink.post(encode(v1("approve", 0.6)), binary("champion"))
    sink.post(encode(v1("decline", 0.4)), binary("challenger"))
    labels = {"namespace": "credit", "isvc": "challenger", "peer": "champion"}
    assert sink.value("kserve_canary_shadow_pairs_total", agree="false", **labels) == 1
    assert sink.value("kserve_canary_shadow_pairs_total", agree="true", **labels) is None


def test_a_batch_of_structured_events_pairs_in_one_post(sink: Sink) -> None:
    batch = [
        structured("champion", "a", v1("approve", 0.9)),
        structured("challenger", "a", v1("approve", 0.8)),
        structured("champion", "b", {"predictions": [{"decision": "decline", "score": 0.2}]}),
        structured("challenger", "b", {"predictions": [{"decision": "approve", "score": 0.55}]}),
        {**structured("champion", "c", None), "type": REQUEST_TYPE},
    ]
    response = sink.post(encode(batch), BATCH)
    assert response.status_code == 202
    assert response.json() == {
        "events": 5, "pairs": 2, "outcomes": {"waiting": 2, "joined": 2, "ignored": 1},
    }  # fmt: skip
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger"}
    assert sink.value("kserve_canary_shadow_pairs_total", agree="true", **labels) == 1
    assert sink.value("kserve_canary_shadow_pairs_total", agree="false", **labels) == 1
    assert sink.events("ignored") == 1


def test_a_structured_event_is_taken(sink: Sink) -> None:
    headers = {"content-type": "application/cloudevents+json; charset=utf-8"}
    response = sink.post(encode(structured("champion", "s", v1("approve", 0.5))), headers)
    assert response.status_code == 202
    assert response.json()["outcomes"] == {"waiting": 1}


def test_a_batch_response_gives_one_pair_per_prediction(sink: Sink) -> None:
    three = {"predictions": [{"decision": d, "score": 0.5} for d in ("a", "b", "c")]}
    sink.post(encode(three), binary("champion"))
    other = {"predictions": [{"decision": d, "score": 0.5} for d in ("a", "x", "c")]}
    assert sink.post(encode(other), binary("challenger")).json()["pairs"] == 3
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger"}
    assert sink.value("kserve_canary_shadow_pairs_total", agree="true", **labels) == 2
    assert sink.value("kserve_canary_shadow_pairs_total", agree="false", **labels) == 1
    assert sink.value("kserve_canary_shadow_score_count", **labels) == 3


def test_responses_of_different_lengths_are_counted_as_mismatched(sink: Sink) -> None:
    sink.post(encode({"predictions": ["a", "b"]}), binary("champion"))
    response = sink.post(encode({"predictions": ["a"]}), binary("challenger"))
    assert response.status_code == 202
    assert response.json()["outcomes"] == {"mismatched": 1}
    assert sink.events("mismatched") == 1
    assert not any(name == "kserve_canary_shadow_pairs_total" for name, _ in sink.samples())


def test_a_score_only_response_feeds_the_histogram_but_not_agreement(sink: Sink) -> None:
    sink.post(encode({"predictions": [0.4]}), binary("champion"))
    sink.post(encode({"predictions": [0.45]}), binary("challenger"))
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger"}
    assert sink.value("kserve_canary_shadow_score_count", **labels) == 1
    assert not any(name == "kserve_canary_shadow_pairs_total" for name, _ in sink.samples())


def test_the_field_settings_choose_what_is_read() -> None:
    clock = Clock()
    collector = ShadowCollector(Joiner(clock=clock), ShadowMetrics(), decision_field="label",
                                score_field="p_fraud", clock=clock)  # fmt: skip
    sink = Sink(collector_app(collector), collector, clock)
    body = {"predictions": [{"label": "fraud", "p_fraud": 0.93}]}
    sink.post(encode(body), binary("champion"))
    assert sink.post(encode(body), binary("challenger")).json()["pairs"] == 1
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger", "agree": "true"}
    assert sink.value("kserve_canary_shadow_pairs_total", **labels) == 1


@pytest.mark.parametrize(
    ("decision", "score", "message"),
    [("x", "x", "both 'x'"), ("", "score", "must be named")],
)
def test_the_field_settings_are_checked(decision: str, score: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShadowCollector(Joiner(), ShadowMetrics(), decision_field=decision, score_field=score)


# --- what must never count --------------------------------------------------------------------


def test_a_forged_flood_of_one_inferenceservice_cannot_raise_the_agreement_count() -> None:
    sink = build(max_body=DEFAULT_MAX_BODY)
    sink.post(encode(v1("approve", 0.5)), binary("champion", "victim"))
    sink.post(encode(v1("approve", 0.5)), binary("challenger", "victim"))
    flood = [structured("challenger", "victim", v1("approve", 0.5))] * 200
    response = sink.post(encode(flood), BATCH)
    assert response.status_code == 202
    assert response.json()["outcomes"] == {"duplicate": 200}
    for _ in range(20):
        assert sink.post(encode(v1("approve", 0.5)), binary("champion", "victim")).json()[
            "outcomes"
        ] == {"duplicate": 1}
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger", "agree": "true"}
    assert sink.value("kserve_canary_shadow_pairs_total", **labels) == 1
    assert sink.events("duplicate") == 220


def test_request_events_are_accepted_and_ignored(sink: Sink) -> None:
    response = sink.post(b"{not json: a request body}", binary("champion", event_type=REQUEST_TYPE))
    assert response.status_code == 202
    assert response.json()["outcomes"] == {"ignored": 1}
    assert sink.events("ignored") == 1
    assert sink.value("kserve_canary_shadow_pending") == 0


def test_the_same_id_in_another_namespace_never_pairs(sink: Sink) -> None:
    sink.post(encode(v1("approve", 0.5)), binary("champion", namespace="credit"))
    response = sink.post(encode(v1("approve", 0.5)), binary("challenger", namespace="fraud"))
    assert response.json()["outcomes"] == {"waiting": 1}
    assert sink.value("kserve_canary_shadow_pending") == 2


def test_a_response_whose_partner_never_comes_expires_by_the_next_scrape(sink: Sink) -> None:
    sink.post(encode(v1("approve", 0.5)), binary("champion", "lonely"))
    assert sink.value("kserve_canary_shadow_pending") == 1
    sink.clock.now += 30
    assert sink.events("expired") == 1
    assert sink.value("kserve_canary_shadow_pending") == 0
    assert sink.get("/healthz").json() == {"status": "ok", "pending": 0}


# --- unreadable events ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (binary("champion"), b"<html>oops</html>", "the body is not JSON (Expecting value"),
        ({**binary("champion"), "ce-id": ""}, encode(v1("a", 0.5)),
         "the ce-id header is missing or empty"),
        ({k: v for k, v in binary("champion").items() if k != "ce-namespace"},
         encode(v1("a", 0.5)), "the ce-namespace header is missing or empty"),
        ({**binary("champion"), "ce-specversion": "0.3"}, encode(v1("a", 0.5)),
         "the ce-specversion header is '0.3'; only CloudEvents 1.0 is read"),
        ({"content-type": "application/json"}, encode(v1("a", 0.5)),
         "the ce-specversion header is missing: this is not a CloudEvent"),
        (binary("champion"), encode({"prediction": 1}), "the response of credit/champion: the "
         "response is an object with the keys 'prediction'; understood are v1"),
        (binary("champion"), encode({"predictions": [float("nan")]}), "the response of "
         "credit/champion: predictions[0] is nan; a score must be finite"),
        ({"content-type": "application/cloudevents+json"}, b"[]", "a structured CloudEvent is "
         "a JSON object, not an array"),
        (BATCH, b"{}", "a batch is a JSON array of structured CloudEvents, not an object"),
    ],
)  # fmt: skip
def test_an_unreadable_event_is_400_naming_the_problem_and_counted(
    sink: Sink, headers: dict[str, str], body: bytes, message: str
) -> None:
    response = sink.post(body, headers)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert sink.events("unreadable") == 1


def test_the_readable_events_of_a_batch_are_taken_beside_the_unreadable_ones(sink: Sink) -> None:
    batch = [
        structured("champion", "a", v1("approve", 0.9)),
        {**structured("challenger", "a", None), "id": None},
        structured("challenger", "a", v1("approve", 0.8)),
        structured("challenger", "b", {"outputs": []}),
    ]
    response = sink.post(encode(batch), BATCH)
    assert response.status_code == 400
    assert response.json() == {
        "error": "batch[1]: the 'id' attribute is missing or empty; the response of "
        "credit/challenger: the v2 response has no named outputs; one named 'decision' or "
        "'score' (the decision and score field settings) is read",
        "events": 4,
        "pairs": 1,
        "outcomes": {"waiting": 1, "joined": 1, "unreadable": 2},
    }
    assert sink.events("unreadable") == 2
    # sending the same batch again is harmless: the pair is not counted twice
    assert sink.post(encode(batch), BATCH).json()["pairs"] == 0
    labels = {"namespace": "credit", "isvc": "champion", "peer": "challenger", "agree": "true"}
    assert sink.value("kserve_canary_shadow_pairs_total", **labels) == 1


def test_a_400_lists_ten_problems_and_counts_the_rest() -> None:
    sink = build(max_body=DEFAULT_MAX_BODY)
    batch = [structured("champion", f"r{i}", {"nothing": i}) for i in range(25)]
    error = sink.post(encode(batch), BATCH).json()["error"]
    assert error.count("the response of credit/champion") == 10
    assert error.endswith("; and 15 more")
    assert sink.events("unreadable") == 25


def test_unreadable_events_are_logged_once_per_reason_per_ten_seconds(sink: Sink) -> None:
    with capture_logs() as logs:
        for _ in range(5):
            sink.post(b"not json", binary("champion"))
        sink.post(encode({"other": 1}), binary("champion", "x"))
        sink.clock.now += 10
        sink.post(b"not json", binary("champion"))
    lines = [(e["reason"], e["held_back"]) for e in logs if e["event"] == "shadow.event_unreadable"]
    assert lines == [("not_json", 0), ("unknown_shape", 0), ("not_json", 4)]
    shape = next(e for e in logs if e.get("reason") == "unknown_shape")
    assert (shape["namespace"], shape["isvc"], shape["event_id"]) == ("credit", "champion", "x")
    assert shape["remote"] == "10.1.2.3"
    assert sink.events("unreadable") == 7


# --- sizes and content types ------------------------------------------------------------------


def padded(size: int) -> bytes:
    body = encode(v1("approve", 0.5))
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_the_limit_is_taken(sink: Sink) -> None:
    assert sink.post(padded(LIMIT), binary("champion")).status_code == 202


def test_a_body_over_the_limit_is_413(sink: Sink) -> None:
    response = sink.post(padded(LIMIT + 1), binary("champion"))
    assert response.status_code == 413
    assert response.json() == {"error": f"the body is larger than {LIMIT} bytes"}
    assert sink.events("unreadable") == 1
    assert sink.value("kserve_canary_shadow_pending") == 0


def test_a_chunked_body_over_the_limit_is_413(sink: Sink) -> None:
    body = padded(LIMIT + 100)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    response = sink.post(chunks(), binary("champion"))
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert sink.events("unreadable") == 1


def test_the_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_BODY == 1024 * 1024


@dataclass
class Sent:
    status: int
    body: dict[str, Any]
    chunks_read: int


def send_raw(app: FastAPI, headers: dict[str, str], chunks: Iterable[bytes]) -> Sent:
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
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("192.0.2.7", 40000), "server": ("collector", 9400),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in out if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return Sent(start["status"], json.loads(payload), read)


def test_a_declared_length_over_the_limit_is_refused_before_reading(sink: Sink) -> None:
    headers = binary("champion") | {"content-length": str(10 * LIMIT)}
    sent = send_raw(sink.app, headers, [b" " * 1024] * 40)
    assert sent.status == 413
    assert sent.chunks_read == 0


def test_a_stream_without_length_is_read_only_until_it_passes_the_limit(sink: Sink) -> None:
    sent = send_raw(sink.app, binary("champion"), [b" " * 256] * 100)
    assert sent.status == 413
    assert sent.chunks_read == LIMIT // 256 + 1


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("application/octet-stream", "a binary-mode event's body of content type "
         "application/octet-stream cannot be read"),
        ("application/cloudevents+protobuf", "the CloudEvents format "
         "application/cloudevents+protobuf is not read"),
    ],
)  # fmt: skip
def test_a_content_type_that_cannot_be_read_is_415_before_the_body_is_read(
    sink: Sink, content_type: str, message: str
) -> None:
    headers = binary("champion") | {"content-type": content_type}
    sent = send_raw(sink.app, headers, [b"x" * 100] * 5)
    assert sent.status == 415
    assert sent.body["error"].startswith(message)
    assert sent.chunks_read == 0
    assert sink.events("unreadable") == 1


def test_json_labelled_as_text_is_read(sink: Sink) -> None:
    headers = binary("champion") | {"content-type": "application/x-www-form-urlencoded"}
    assert sink.post(encode(v1("approve", 0.5)), headers).status_code == 202


# --- the rest of the app ----------------------------------------------------------------------


def test_every_outcome_is_exported_from_the_start(sink: Sink) -> None:
    for outcome in ("joined", "waiting", "duplicate", "expired", "ignored", "unreadable",
                    "mismatched"):  # fmt: skip
        assert sink.events(outcome) == 0
    assert sink.value("kserve_canary_shadow_pending") == 0


def test_the_openapi_document_describes_the_event_routes(sink: Sink) -> None:
    document = sink.get("/openapi.json").json()
    for path in ("/", "/events"):
        operation = document["paths"][path]["post"]
        assert set(operation["requestBody"]["content"]) == {
            "application/json", "application/cloudevents+json",
            "application/cloudevents-batch+json",
        }  # fmt: skip
        assert {"202", "400", "413", "415"} <= set(operation["responses"])


class BrokenJoiner(Joiner):
    def take(self, event: InferenceEvent, predictions: Any) -> Any:
        raise RuntimeError("a bug")


def test_a_bug_is_500_without_details_and_logged() -> None:
    collector = ShadowCollector(BrokenJoiner(), ShadowMetrics())
    app = collector_app(collector)
    with capture_logs() as logs:
        sent = send_raw(app, binary("champion"), [encode(v1("approve", 0.5))])
    assert sent.status == 500
    assert sent.body == {"error": "internal error; it was logged"}
    assert [e["event"] for e in logs] == ["shadow.collector_failed"]


def test_predictions_reach_the_join_as_extracted() -> None:
    seen: list[tuple[InferenceEvent, tuple[Prediction, ...]]] = []

    class Recording(Joiner):
        def take(self, event: InferenceEvent, predictions: Any) -> Any:
            seen.append((event, tuple(predictions)))
            return super().take(event, predictions)

    collector = ShadowCollector(Recording(), ShadowMetrics())
    body = {"outputs": [{"name": "decision", "data": [True]}, {"name": "score", "data": [0.2]}]}
    send_raw(collector_app(collector), binary("champion"), [encode(body)])
    [(event, predictions)] = seen
    assert (event.isvc, event.id) == ("champion", "req-1")
    assert predictions == (Prediction("true", 0.2),)
