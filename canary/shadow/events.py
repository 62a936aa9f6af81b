"""KServe payload-logger CloudEvents, read from an HTTP request, and the predictions in them.

Pure: no I/O, no clock. :func:`delivery_mode` tells from the ``Content-Type`` how a request
carries its events (CloudEvents HTTP binding 1.0):

* **binary** (what KServe's logger sends): the attributes are ``ce-*`` headers and the body is
  the event's data, here the model's response body, which must be JSON;
* **structured** (``application/cloudevents+json``): the body is one JSON object with the
  attributes and the data in ``data`` (a JSON value) or ``data_base64``;
* **batch** (``application/cloudevents-batch+json``): a JSON array of structured events.

:func:`parse_binary`, :func:`parse_structured` and :func:`parse_batch` give typed
:class:`InferenceEvent` values or raise :class:`UnreadableEvent` (HTTP 400) with a message
that says what is wrong; :func:`delivery_mode` raises :class:`UnsupportedContentType` (415)
for a body it cannot read at all. Only response events have their data read: a request event
is passed on with ``data=None``, since the collector ignores it.

:func:`extract` reads the decisions and scores of a response body (KServe v1 or v2 shape); a
batch of k inputs gives k predictions.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from canary.policy import DNS_LABEL

__all__ = [
    "BATCH_CONTENT_TYPE",
    "MAX_ID_LENGTH",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "SHAPES",
    "SPEC_VERSION",
    "STRUCTURED_CONTENT_TYPE",
    "DeliveryMode",
    "InferenceEvent",
    "Prediction",
    "ShadowEventError",
    "UnreadableEvent",
    "UnsupportedContentType",
    "delivery_mode",
    "extract",
    "parse_batch",
    "parse_binary",
    "parse_structured",
]

RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
SPEC_VERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_ID_LENGTH = 1024
"""Longer ids are refused: every pending response keeps its id in memory."""

# Data content types read as JSON besides application/json and */*+json: clients often send
# JSON labelled text/plain, or with curl -d's default, and the logger passes the request's
# Content-Type on as the event's.
_JSON_AS_TEXT = frozenset({"text/plain", "application/x-www-form-urlencoded", "text/json"})
_READABLE = "application/json (or any +json type), text/plain or application/x-www-form-urlencoded"

SHAPES = (
    'v1 {"predictions": [...]} whose elements are objects holding the decision and/or score '
    "field, strings or booleans (a decision) or numbers (a score); or v2 "
    '{"outputs": [{"name": ..., "data": [...]}, ...]} with an output named like the decision '
    "and/or the score field"
)
"""The response shapes :func:`extract` understands, for error messages and documentation."""

DeliveryMode = Literal["binary", "structured", "batch"]


class ShadowEventError(ValueError):
    """An event the collector cannot use. ``reason`` is a short stable code (for logs and their
    rate limit); the message says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class UnsupportedContentType(ShadowEventError):
    """The request's content type is not one the collector reads (HTTP 415)."""


class UnreadableEvent(ShadowEventError):
    """The event, or the response in it, cannot be read (HTTP 400)."""

    def within(self, where: str) -> UnreadableEvent:
        """The same problem, its message prefixed with where it was found."""
        return type(self)(self.reason, f"{where}: {self.message}")


@dataclass(frozen=True, slots=True)
class InferenceEvent:
    """One logger event: which InferenceService answered which request.

    ``data`` is the response body as parsed JSON for a response event, None for any other
    type (its data are not read)."""

    id: str
    type: str
    namespace: str
    isvc: str
    component: str | None = None
    endpoint: str | None = None
    source: str | None = None
    data: object = None

    @property
    def is_response(self) -> bool:
        return self.type == RESPONSE_TYPE


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction of a response: its decision (compared as a string; booleans
    lower-cased) and its score (finite), either of which may be absent."""

    decision: str | None
    score: float | None


# --- the delivery mode -----------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def delivery_mode(content_type: str | None) -> DeliveryMode:
    """How a request with this ``Content-Type`` carries its events.

    Raises :class:`UnsupportedContentType` for another CloudEvents format (Avro, Protobuf...)
    or for a binary-mode body that is not JSON (or JSON labelled as text)."""
    media_type = _media_type(content_type)
    if media_type == STRUCTURED_CONTENT_TYPE:
        return "structured"
    if media_type == BATCH_CONTENT_TYPE:
        return "batch"
    if media_type.startswith("application/cloudevents"):
        raise UnsupportedContentType(
            "content_type",
            f"the CloudEvents format {media_type} is not read; send binary mode (ce-* headers "
            f"and a JSON body), {STRUCTURED_CONTENT_TYPE} or {BATCH_CONTENT_TYPE}",
        )
    if media_type and not _is_json(media_type) and media_type not in _JSON_AS_TEXT:
        raise UnsupportedContentType(
            "content_type",
            f"a binary-mode event's body of content type {media_type} cannot be read: the "
            f"model's response must be JSON, sent as {_READABLE}",
        )
    return "binary"


# --- the attributes, whatever the mode -------------------------------------------------------


_ATTRIBUTES = (
    "specversion", "id", "type", "source", "inferenceservicename", "namespace", "component",
    "endpoint",
)  # fmt: skip


def _build(
    attributes: Mapping[str, str | None],
    name: Callable[[str], str],
    load_data: Callable[[], object],
) -> InferenceEvent:
    """The event from its attributes (``name`` says how the message names one: a header or a
    JSON attribute); ``load_data`` is called for a response event only."""

    def required(attribute: str) -> str:
        value = attributes.get(attribute)
        if value is None or not value.strip():
            raise UnreadableEvent(f"missing_{attribute}", f"{name(attribute)} is missing or empty")
        return value

    specversion = attributes.get("specversion")
    if specversion is None:
        raise UnreadableEvent(
            "missing_specversion",
            f"{name('specversion')} is missing: this is not a CloudEvent (binary mode needs "
            f"ce-* headers; structured mode the content type {STRUCTURED_CONTENT_TYPE})",
        )
    if specversion != SPEC_VERSION:
        raise UnreadableEvent(
            "specversion",
            f"{name('specversion')} is {specversion[:40]!r}; only CloudEvents {SPEC_VERSION} "
            "is read",
        )
    event_id = required("id")
    if len(event_id) > MAX_ID_LENGTH:
        raise UnreadableEvent(
            "id_too_long", f"{name('id')} is longer than {MAX_ID_LENGTH} characters"
        )
    event_type = required("type")
    namespace = _dns_label(required("namespace"), name("namespace"), "a namespace")
    isvc = _dns_label(
        required("inferenceservicename"), name("inferenceservicename"), "an InferenceService name"
    )
    return InferenceEvent(
        id=event_id,
        type=event_type,
        namespace=namespace,
        isvc=isvc,
        component=attributes.get("component"),
        endpoint=attributes.get("endpoint"),
        source=attributes.get("source"),
        data=load_data() if event_type == RESPONSE_TYPE else None,
    )


def _dns_label(value: str, named: str, what: str) -> str:
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise UnreadableEvent(
            "bad_name",
            f"{named} is {value[:80]!r}, not {what} (a DNS label: lowercase letters, digits "
            "and '-', at most 63 characters)",
        )
    return value


def _json(raw: bytes, what: str) -> object:
    if not raw.strip():
        raise UnreadableEvent("not_json", f"{what} is empty; a response event carries JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableEvent("not_json", f"{what} is not UTF-8 text, so not JSON") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableEvent("not_json", f"{what} is JSON nested too deeply") from None
    except ValueError as exc:
        raise UnreadableEvent("not_json", f"{what} is not JSON ({exc})") from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean", int: "a number", float: "a number", str: "a string",
        list: "an array", dict: "an object",
    }.get(type(value), type(value).__name__)  # fmt: skip


# --- binary mode -----------------------------------------------------------------------------


def parse_binary(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    """A binary-mode event: attributes in ``ce-*`` headers (any case), data in the body."""
    lowered = {key.lower(): value for key, value in headers.items()}
    attributes = {attribute: lowered.get(f"ce-{attribute}") for attribute in _ATTRIBUTES}
    return _build(attributes, lambda attribute: f"the ce-{attribute} header",
                  lambda: _json(body, "the body"))  # fmt: skip


# --- structured mode and batches -------------------------------------------------------------


class _Envelope(BaseModel):
    """A structured-mode event: its attributes are JSON strings; other extensions are kept."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    specversion: str | None = None
    id: str | None = None
    type: str | None = None
    source: str | None = None
    inferenceservicename: str | None = None
    namespace: str | None = None
    component: str | None = None
    endpoint: str | None = None
    datacontenttype: str | None = None
    data: Any = None
    data_base64: str | None = None


def _structured(document: object) -> InferenceEvent:
    if not isinstance(document, dict):
        raise UnreadableEvent(
            "bad_envelope", f"a structured CloudEvent is a JSON object, not {_kind(document)}"
        )
    try:
        envelope = _Envelope.model_validate(document)
    except ValidationError as exc:
        problems = [
            f"the {'.'.join(str(part) for part in error['loc'])!r} attribute: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
        raise UnreadableEvent("bad_envelope", "; ".join(problems)) from None
    attributes = {attribute: getattr(envelope, attribute) for attribute in _ATTRIBUTES}
    return _build(attributes, lambda attribute: f"the {attribute!r} attribute",
                  lambda: _structured_data(envelope))  # fmt: skip


def _structured_data(envelope: _Envelope) -> object:
    has_data = "data" in envelope.model_fields_set
    media_type = _media_type(envelope.datacontenttype)
    as_json = not media_type or _is_json(media_type)
    if not as_json and media_type not in _JSON_AS_TEXT:
        raise UnreadableEvent(
            "content_type",
            f"the event's datacontenttype is {media_type}; the model's response must be JSON, "
            f"sent as {_READABLE}",
        )
    if has_data and envelope.data_base64 is not None:
        raise UnreadableEvent(
            "bad_data", "the event has both 'data' and 'data_base64'; a CloudEvent has one"
        )
    if envelope.data_base64 is not None:
        try:
            raw = base64.b64decode(envelope.data_base64, validate=True)
        except binascii.Error:
            raise UnreadableEvent("bad_data", "the 'data_base64' attribute is not base64") from None
        return _json(raw, "the decoded 'data_base64'")
    if not has_data:
        raise UnreadableEvent(
            "missing_data",
            "the event has neither 'data' nor 'data_base64'; a response event carries the "
            "model's response",
        )
    if not as_json:  # JSON labelled as text: the data are its text
        if not isinstance(envelope.data, str):
            raise UnreadableEvent(
                "bad_data", f"the 'data' of content type {media_type} is {_kind(envelope.data)}, "
                "not the response's text",
            )  # fmt: skip
        return _json(envelope.data.encode("utf-8"), "the 'data' attribute")
    return envelope.data


def parse_structured(body: bytes) -> InferenceEvent:
    """A structured-mode event: one JSON object."""
    return _structured(_json(body, "the body"))


def parse_batch(body: bytes) -> tuple[InferenceEvent | UnreadableEvent, ...]:
    """A batch: each element an event, or the problem with it (its message starting with
    ``batch[i]``). Raises :class:`UnreadableEvent` when the body is not a JSON array."""
    document = _json(body, "the batch")
    if not isinstance(document, list):
        raise UnreadableEvent(
            "bad_batch",
            f"a batch is a JSON array of structured CloudEvents, not {_kind(document)}",
        )
    results: list[InferenceEvent | UnreadableEvent] = []
    for index, item in enumerate(document):
        try:
            results.append(_structured(item))
        except UnreadableEvent as exc:
            results.append(exc.within(f"batch[{index}]"))
    return tuple(results)


# --- predictions -----------------------------------------------------------------------------


def _decision(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise UnreadableEvent(
        "bad_decision", f"{where} is {_kind(value)}; a decision is a string, a boolean or an "
        "integer",
    )  # fmt: skip


def _score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnreadableEvent("bad_score", f"{where} is {_kind(value)}; a score is a number")
    try:
        score = float(value)
    except OverflowError:
        score = math.inf
    if not math.isfinite(score):
        raise UnreadableEvent("not_finite", f"{where} is {value!r:.40}; a score must be finite")
    return score


def extract(
    body: object, decision_field: str = "decision", score_field: str = "score"
) -> tuple[Prediction, ...]:
    """The predictions of a response body (parsed JSON), in order; raises
    :class:`UnreadableEvent` naming the shapes understood (:data:`SHAPES`) when the body has
    none of them, and saying which element is wrong otherwise."""
    if isinstance(body, dict):
        if "predictions" in body:
            return _v1(body["predictions"], decision_field, score_field)
        if "outputs" in body:
            return _v2(body["outputs"], decision_field, score_field)
        keys = ", ".join(repr(str(key)[:40]) for key in list(body)[:8]) or "none"
        found = f"an object with the keys {keys}"
    else:
        found = _kind(body)
    raise UnreadableEvent("unknown_shape", f"the response is {found}; understood are {SHAPES}")


def _v1(predictions: object, decision_field: str, score_field: str) -> tuple[Prediction, ...]:
    if not isinstance(predictions, list):
        raise UnreadableEvent(
            "unknown_shape", f"'predictions' is {_kind(predictions)}, not an array"
        )
    if not predictions:
        raise UnreadableEvent("no_predictions", "'predictions' is empty")
    found: list[Prediction] = []
    for index, element in enumerate(predictions):
        where = f"predictions[{index}]"
        if isinstance(element, dict):
            decision = element.get(decision_field)
            score = element.get(score_field)
            if decision is None and score is None:
                raise UnreadableEvent(
                    "bad_prediction",
                    f"{where} has neither {decision_field!r} nor {score_field!r} (the decision "
                    "and score field settings)",
                )
            found.append(Prediction(
                None if decision is None else _decision(decision, f"{where}.{decision_field}"),
                None if score is None else _score(score, f"{where}.{score_field}"),
            ))  # fmt: skip
        elif isinstance(element, str | bool):
            found.append(Prediction(_decision(element, where), None))
        elif isinstance(element, int | float):
            found.append(Prediction(None, _score(element, where)))
        else:
            raise UnreadableEvent(
                "bad_prediction", f"{where} is {_kind(element)}; understood are {SHAPES}"
            )
    return tuple(found)


def _flat(data: object, where: str) -> list[object]:
    """A v2 output's data in row-major order (nested arrays flattened, without recursion)."""
    if not isinstance(data, list):
        raise UnreadableEvent("bad_prediction", f"{where} is {_kind(data)}, not an array")
    flat: list[object] = []
    stack: list[Iterator[object]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _v2(outputs: object, decision_field: str, score_field: str) -> tuple[Prediction, ...]:
    if not isinstance(outputs, list):
        raise UnreadableEvent("unknown_shape", f"'outputs' is {_kind(outputs)}, not an array")
    named: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if isinstance(output, dict) and isinstance(output.get("name"), str):
            named.setdefault(output["name"], output)
    if decision_field not in named and score_field not in named:
        wanted = f"{decision_field!r} or {score_field!r} (the decision and score field settings)"
        if not named:
            raise UnreadableEvent(
                "unknown_shape", f"the v2 response has no named outputs; one named {wanted} is read"
            )
        names = ", ".join(repr(name[:40]) for name in list(named)[:8])
        raise UnreadableEvent(
            "unknown_shape", f"the v2 response's outputs are {names}; none is named {wanted}"
        )
    decisions: list[str] | None = None
    scores: list[float] | None = None
    if decision_field in named:
        where = f"outputs[{decision_field!r}].data"
        values = _flat(named[decision_field].get("data"), where)
        decisions = [_decision(value, f"{where}[{i}]") for i, value in enumerate(values)]
    if score_field in named:
        where = f"outputs[{score_field!r}].data"
        values = _flat(named[score_field].get("data"), where)
        scores = [_score(value, f"{where}[{i}]") for i, value in enumerate(values)]
    if decisions is not None and scores is not None and len(decisions) != len(scores):
        raise UnreadableEvent(
            "length_mismatch",
            f"the v2 outputs {decision_field!r} ({len(decisions)} values) and {score_field!r} "
            f"({len(scores)} values) differ in length",
        )
    count = len(decisions) if decisions is not None else len(scores or ())
    if count == 0:
        raise UnreadableEvent("no_predictions", "the v2 outputs hold no values")
    return tuple(
        Prediction(
            decisions[i] if decisions is not None else None,
            scores[i] if scores is not None else None,
        )
        for i in range(count)
    )
