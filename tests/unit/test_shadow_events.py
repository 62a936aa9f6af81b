"""Payload-logger CloudEvents as the collector reads them (canary/shadow/events.py): binary
mode as KServe sends it, structured mode and batches as the test bed sends them, each problem
with a message that says what is wrong; and the decisions and scores of v1 and v2 responses."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from canary.shadow.events import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    InferenceEvent,
    Prediction,
    UnreadableEvent,
    UnsupportedContentType,
    delivery_mode,
    extract,
    parse_batch,
    parse_binary,
    parse_structured,
)

V1 = {"predictions": [{"decision": "approve", "score": 0.82}]}


def binary_headers(**changes: str | None) -> dict[str, str]:
    """KServe's logger headers for a response of credit/champion; None drops a header."""
    headers: dict[str, str | None] = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "4f1c2a",
        "Ce-Type": RESPONSE_TYPE,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Inferenceservicename": "champion",
        "Ce-Namespace": "credit",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "default",
        "Content-Type": "application/json",
    }
    for key, value in changes.items():
        headers[key.replace("_", "-").title()] = value
    return {key: value for key, value in headers.items() if value is not None}


def structured(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "4f1c2a",
        "type": RESPONSE_TYPE,
        "source": "testbed",
        "inferenceservicename": "challenger",
        "namespace": "credit",
        "component": "predictor",
        "datacontenttype": "application/json",
        "data": V1,
    }
    event.update(changes)
    return {key: value for key, value in event.items() if value is not None}


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the delivery mode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "mode"),
    [
        ("application/json", "binary"),
        ("application/json; charset=utf-8", "binary"),
        ("application/vnd.example+json", "binary"),
        ("text/plain", "binary"),
        ("application/x-www-form-urlencoded", "binary"),  # curl -d's default
        (None, "binary"),
        ("application/cloudevents+json", "structured"),
        ("Application/CloudEvents+JSON; charset=UTF-8", "structured"),
        ("application/cloudevents-batch+json", "batch"),
    ],
)
def test_the_content_type_says_how_events_are_carried(content_type: str | None, mode: str) -> None:
    assert delivery_mode(content_type) == mode


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        ("application/cloudevents+avro", "the CloudEvents format application/cloudevents+avro"),
        ("application/cloudevents-batch+protobuf", "is not read"),
        ("application/octet-stream", "content type application/octet-stream cannot be read"),
        ("image/png", "the model's response must be JSON"),
    ],
)
def test_a_content_type_that_cannot_be_read_is_unsupported(content_type: str, says: str) -> None:
    with pytest.raises(UnsupportedContentType, match=re.escape(says)):
        delivery_mode(content_type)


# --- binary mode ------------------------------------------------------------------------------


def test_a_binary_response_event_is_read_from_headers_and_body() -> None:
    event = parse_binary(binary_headers(), encode(V1))
    assert event == InferenceEvent(
        id="4f1c2a",
        type=RESPONSE_TYPE,
        namespace="credit",
        isvc="champion",
        component="predictor",
        endpoint="default",
        source="http://localhost:9081/",
        data=V1,
    )
    assert event.is_response


def test_header_names_are_read_in_any_case() -> None:
    lowered = {key.lower(): value for key, value in binary_headers().items()}
    assert parse_binary(lowered, encode(V1)).isvc == "champion"


def test_the_body_of_a_request_event_is_not_read() -> None:
    event = parse_binary(binary_headers(ce_type=REQUEST_TYPE), b"\x00 not json at all")
    assert event.type == REQUEST_TYPE
    assert not event.is_response
    assert event.data is None


@pytest.mark.parametrize(
    ("changes", "body", "message"),
    [
        ({"ce_specversion": None}, V1, "the ce-specversion header is missing: this is not a "
         "CloudEvent"),
        ({"ce_specversion": "0.3"}, V1, "the ce-specversion header is '0.3'; only CloudEvents "
         "1.0 is read"),
        ({"ce_id": None}, V1, "the ce-id header is missing or empty"),
        ({"ce_id": "  "}, V1, "the ce-id header is missing or empty"),
        ({"ce_id": "x" * 1025}, V1, "the ce-id header is longer than 1024 characters"),
        ({"ce_type": None}, V1, "the ce-type header is missing or empty"),
        ({"ce_inferenceservicename": None}, V1, "the ce-inferenceservicename header is missing"),
        ({"ce_namespace": None}, V1, "the ce-namespace header is missing or empty"),
        ({"ce_namespace": "Credit_Team"}, V1, "the ce-namespace header is 'Credit_Team', not a "
         "namespace"),
        ({"ce_inferenceservicename": "a" * 64}, V1, "not an InferenceService name"),
    ],
)  # fmt: skip
def test_a_binary_event_without_what_the_join_needs_is_unreadable(
    changes: dict[str, str | None], body: Any, message: str
) -> None:
    with pytest.raises(UnreadableEvent) as caught:
        parse_binary(binary_headers(**changes), encode(body))
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is empty; a response event carries JSON"),
        (b"<html>", "the body is not JSON (Expecting value"),
        (b"\xff\xfe{}", "the body is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is JSON nested too deeply"),
    ],
)
def test_a_response_body_that_is_not_json_is_unreadable(body: bytes, message: str) -> None:
    with pytest.raises(UnreadableEvent, match="^" + re.escape(message)):
        parse_binary(binary_headers(), body)


# --- structured mode and batches --------------------------------------------------------------


def test_a_structured_event_carries_its_data_as_json() -> None:
    event = parse_structured(encode(structured()))
    assert (event.id, event.isvc, event.namespace, event.component) == (
        "4f1c2a", "challenger", "credit", "predictor",
    )  # fmt: skip
    assert event.data == V1


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"datacontenttype": None}, id="no-datacontenttype"),
        pytest.param(
            {"data": None, "data_base64": base64.b64encode(encode(V1)).decode()}, id="base64"
        ),
        pytest.param({"datacontenttype": "text/plain", "data": json.dumps(V1)}, id="as-text"),
    ],
)
def test_structured_data_may_be_json_base64_or_json_text(changes: dict[str, Any]) -> None:
    assert parse_structured(encode(structured(**changes))).data == V1


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (["not", "an", "object"], "a structured CloudEvent is a JSON object, not an array"),
        (structured(id=42), "the 'id' attribute: Input should be a valid string"),
        (structured(specversion=None), "the 'specversion' attribute is missing: this is not"),
        (structured(specversion="0.3"), "the 'specversion' attribute is '0.3'; only"),
        (structured(id=""), "the 'id' attribute is missing or empty"),
        (structured(namespace=None), "the 'namespace' attribute is missing or empty"),
        (structured(inferenceservicename=None), "the 'inferenceservicename' attribute is "
         "missing or empty"),
        (structured(data=None), "the event has neither 'data' nor 'data_base64'"),
        (structured(data_base64="e30="), "the event has both 'data' and 'data_base64'"),
        (structured(data=None, data_base64="not base64!"), "the 'data_base64' attribute is not "
         "base64"),
        (structured(data=None, data_base64=base64.b64encode(b"<xml/>").decode()),
         "the decoded 'data_base64' is not JSON"),
        (structured(datacontenttype="application/xml"), "the event's datacontenttype is "
         "application/xml; the model's response must be JSON"),
        (structured(datacontenttype="text/plain", data={"a": 1}), "the 'data' of content type "
         "text/plain is an object, not the response's text"),
    ],
)  # fmt: skip
def test_a_structured_event_that_cannot_be_used_says_why(event: Any, message: str) -> None:
    with pytest.raises(UnreadableEvent) as caught:
        parse_structured(encode(event))
    assert caught.value.message.startswith(message)


def test_a_batch_gives_each_event_or_the_problem_with_it() -> None:
    batch = [
        structured(),
        structured(id=None),
        structured(inferenceservicename="champion", type=REQUEST_TYPE, data="ignored"),
    ]
    first, second, third = parse_batch(encode(batch))
    assert isinstance(first, InferenceEvent)
    assert first.data == V1
    assert isinstance(second, UnreadableEvent)
    assert second.message == "batch[1]: the 'id' attribute is missing or empty"
    assert isinstance(third, InferenceEvent)
    assert third.type == REQUEST_TYPE
    assert third.data is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (encode(structured()), "a batch is a JSON array of structured CloudEvents, not an object"),
        (b"[{", "the batch is not JSON"),
    ],
)
def test_a_batch_that_is_not_an_array_is_unreadable(body: bytes, message: str) -> None:
    with pytest.raises(UnreadableEvent) as caught:
        parse_batch(body)
    assert caught.value.message.startswith(message)


def test_an_empty_batch_has_no_events() -> None:
    assert parse_batch(b"[]") == ()


# --- predictions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "predictions"),
    [
        pytest.param(V1, (Prediction("approve", 0.82),), id="v1-object"),
        pytest.param(
            {"predictions": [{"decision": "approve"}, {"score": 1}]},
            (Prediction("approve", None), Prediction(None, 1.0)),
            id="v1-objects-with-one-field-each",
        ),
        pytest.param(
            {"predictions": ["approve", True, False]},
            (Prediction("approve", None), Prediction("true", None), Prediction("false", None)),
            id="v1-scalar-decisions-bools-lower-cased",
        ),
        pytest.param(
            {"predictions": [0.25, 1]},
            (Prediction(None, 0.25), Prediction(None, 1.0)),
            id="v1-numbers-are-scores",
        ),
        pytest.param(
            {"predictions": [{"decision": 3, "score": 0.5}]},
            (Prediction("3", 0.5),),
            id="v1-integer-decision-as-string",
        ),
        pytest.param(
            {
                "outputs": [
                    {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.9, 0.1]},
                    {
                        "name": "decision",
                        "datatype": "BYTES",
                        "shape": [2],
                        "data": ["decline", "approve"],
                    },
                ]
            },
            (Prediction("decline", 0.9), Prediction("approve", 0.1)),
            id="v2-batch-of-two",
        ),
        pytest.param(
            {"outputs": [{"name": "decision", "datatype": "BOOL", "data": [[True], [False]]}]},
            (Prediction("true", None), Prediction("false", None)),
            id="v2-nested-data-flattened",
        ),
        pytest.param(
            {"outputs": [{"name": "score", "data": [0.4]}, {"name": "other", "data": [1, 2]}]},
            (Prediction(None, 0.4),),
            id="v2-score-only",
        ),
    ],
)
def test_predictions_are_read_from_v1_and_v2_responses(
    body: Any, predictions: tuple[Prediction, ...]
) -> None:
    assert extract(body) == predictions


def test_the_field_names_are_settings() -> None:
    v1 = {"predictions": [{"label": "fraud", "probability": 0.97, "decision": "ignored"}]}
    assert extract(v1, "label", "probability") == (Prediction("fraud", 0.97),)
    v2 = {"outputs": [{"name": "label", "data": ["ok"]}, {"name": "probability", "data": [0.1]}]}
    assert extract(v2, "label", "probability") == (Prediction("ok", 0.1),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"result": 1, "model": "x"}, "the response is an object with the keys 'result', "
         "'model'; understood are v1"),
        ([0.1, 0.2], "the response is an array; understood are v1"),
        ({"predictions": {"decision": "x"}}, "'predictions' is an object, not an array"),
        ({"predictions": []}, "'predictions' is empty"),
        ({"predictions": [[0.1, 0.9]]}, "predictions[0] is an array; understood are v1"),
        ({"predictions": [{"label": "x"}]}, "predictions[0] has neither 'decision' nor 'score'"),
        ({"predictions": [{"decision": 0.5}]}, "predictions[0].decision is a number; a "
         "decision is a string, a boolean or an integer"),
        ({"predictions": [{"score": "0.5"}]}, "predictions[0].score is a string; a score is a "
         "number"),
        ({"predictions": [{"score": True}]}, "predictions[0].score is a boolean; a score is"),
        ({"predictions": [0.3, float("nan")]}, "predictions[1] is nan; a score must be finite"),
        ({"predictions": [{"score": float("inf")}]}, "predictions[0].score is inf; a score must "
         "be finite"),
        ({"predictions": [10**400]}, "predictions[0] is 1000"),
        ({"outputs": [{"data": [1]}]}, "the v2 response has no named outputs; one named "
         "'decision' or 'score' (the decision and score field settings) is read"),
        ({"outputs": [{"name": "logits", "data": [1]}]}, "the v2 response's outputs are "
         "'logits'; none is named 'decision' or 'score'"),
        ({"outputs": [{"name": "decision", "data": ["a", "b"]},
                      {"name": "score", "data": [0.1]}]},
         "the v2 outputs 'decision' (2 values) and 'score' (1 values) differ in length"),
        ({"outputs": [{"name": "score", "data": [0.1, float("-inf")]}]},
         "outputs['score'].data[1] is -inf; a score must be finite"),
        ({"outputs": [{"name": "score", "data": "0.1"}]}, "outputs['score'].data is a string, "
         "not an array"),
        ({"outputs": [{"name": "score", "data": []}]}, "the v2 outputs hold no values"),
    ],
)  # fmt: skip
def test_a_response_without_readable_predictions_says_why(body: Any, message: str) -> None:
    with pytest.raises(UnreadableEvent) as caught:
        extract(body)
    assert caught.value.message.startswith(message)


def test_nan_written_by_a_python_model_server_is_unreadable_after_parsing() -> None:
    # json.dumps writes NaN for float("nan"); the collector parses it and refuses the score
    event = parse_binary(binary_headers(), b'{"predictions": [{"decision": "a", "score": NaN}]}')
    with pytest.raises(UnreadableEvent, match="a score must be finite"):
        extract(event.data)
