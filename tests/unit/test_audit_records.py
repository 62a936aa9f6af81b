"""The canonical JSON format and hash chain that auditors re-implement.

If a test here fails after a code change, every stored hash would change meaning: the
format must stay byte-for-byte identical (or get a new FORMAT_VERSION).
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.audit.records import (
    GENESIS_HASH,
    Actor,
    AuditEntry,
    Measurement,
    ModelRef,
    ObjectRef,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
    normalise,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))
CONTROLLER = Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": 2}, '{"a":2,"b":1}', id="keys-sorted"),
        pytest.param({"z": {"y": 1, "x": [3, 2]}}, '{"z":{"x":[3,2],"y":1}}', id="nested-sorted"),
        pytest.param({"a": 1, "B": 2, "É": 3}, '{"B":2,"a":1,"É":3}', id="code-point-order"),
        pytest.param("café ✓", '"café ✓"', id="non-ascii-kept"),
        pytest.param((1, (2, 3)), "[1,[2,3]]", id="tuples-are-arrays"),
        pytest.param([True, False, None], "[true,false,null]", id="literals"),
        pytest.param(0.1, "0.1", id="float-shortest"),
        pytest.param(1e16, "1e+16", id="float-exponent"),
        pytest.param(-0.0, "-0.0", id="negative-zero"),
        pytest.param(12345678901234567890, "12345678901234567890", id="big-int"),
        pytest.param(math.nan, '"NaN"', id="nan"),
        pytest.param(math.inf, '"+Inf"', id="inf"),
        pytest.param(-math.inf, '"-Inf"', id="minus-inf"),
        pytest.param(
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC), '"2026-03-01T12:00:00.000000Z"', id="utc"
        ),
        pytest.param(
            datetime(2026, 3, 1, 13, 0, 0, 7, tzinfo=CET),
            '"2026-03-01T12:00:00.000007Z"',
            id="offset-converted-to-utc",
        ),
        pytest.param(
            ObjectRef("ns", "isvc"),
            '{"generation":null,"name":"isvc","namespace":"ns","resource_version":null,"uid":null}',
            id="dataclass-all-fields",
        ),
    ],
)
def test_canonical_json(value: object, expected: str) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        pytest.param(datetime(2026, 3, 1, 12, 0), ValueError, "naive", id="naive-datetime"),  # noqa: DTZ001
        pytest.param(
            {"a": [datetime(2026, 3, 1)]},  # noqa: DTZ001
            ValueError,
            "naive",
            id="nested-naive-datetime",
        ),
        pytest.param({1: "x"}, TypeError, "not a string", id="non-string-key"),
        pytest.param(b"bytes", TypeError, "bytes", id="bytes"),
        pytest.param({1, 2}, TypeError, "set", id="set"),
        pytest.param("\ud800", ValueError, "Unicode", id="lone-surrogate"),
    ],
)
def test_canonical_json_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        canonical_json(value)


@pytest.mark.parametrize(
    ("prev_hash", "body", "expected"),
    [
        (GENESIS_HASH, "{}", "5508d2b710e64bc470079e1b211d9c58e21011e59d0559e422345dc19d659a75"),
        ("ab" * 32, '{"a":1}', "72e04e73240ddb98ecac6ec82538179bffc86ac1498da4358e21b0fe551b3ac0"),
    ],
)
def test_record_hash_is_sha256_of_prev_hash_then_body(
    prev_hash: str, body: str, expected: str
) -> None:
    # Expected values computed independently: printf '%s%s' PREV BODY | sha256sum
    assert compute_record_hash(prev_hash, body) == expected


def _golden_entry() -> AuditEntry:
    return AuditEntry(
        at=datetime(2026, 3, 1, 13, 30, 0, 250, tzinfo=CET),
        actor=CONTROLLER,
        action="analysis.evaluated",
        rollout_id="r-0001",
        obj=ObjectRef("fraud", "scorer", uid="uid-1", generation=7, resource_version="4242"),
        stable=ModelRef("scorer", "s3://models/scorer/v1", "sha256:aaaa", "scorer-predictor-00001"),
        canary=ModelRef("scorer", "s3://models/scorer/v2", None, "scorer-predictor-00002"),
        traffic_before={"scorer-predictor-00001": 90, "scorer-predictor-00002": 10},
        traffic_after={"scorer-predictor-00002": 10, "scorer-predictor-00001": 90},
        reason="p99 latency within threshold — café",
        evidence={"z": [1, 2.5, None], "a": {"nested": True}},
        measurements=(
            Measurement(
                check="latency_p99",
                evaluated_at=datetime(2026, 3, 1, 12, 29, 59, tzinfo=UTC),
                query="histogram_quantile(0.99, rate(x[1m]))",
                prometheus_url="http://prometheus:9090",
                response_digest="sha256:bbbb",
                canary_value=0.125,
                baseline_value=math.nan,
                canary_samples=120,
                baseline_samples=0,
                statistic=math.inf,
                threshold=0.2,
                verdict="inconclusive",
                dry_run=False,
            ),
        ),
        leader_epoch=3,
        correlation_id="c-1",
    )


GOLDEN_BODY = (
    '{"action":"analysis.evaluated","actor":{"groups":[],"id":"system:serviceaccount:'
    'kserve-canary:controller/pod-0","kind":"controller","uid":null},"approval_time":null,'
    '"approver":null,'
    '"at":"2026-03-01T12:30:00.000250Z","canary":{"artifact_digest":null,"model_name":"scorer",'
    '"revision":"scorer-predictor-00002","storage_uri":"s3://models/scorer/v2"},'
    '"change_number":null,"change_sys_id":null,"correlation_id":"c-1","evidence":{"a":'
    '{"nested":true},"z":[1,2.5,null]},"leader_epoch":3,"measurements":[{"baseline_samples":0,'
    '"baseline_value":"NaN","canary_samples":120,"canary_value":0.125,"check":"latency_p99",'
    '"detail":{},"dry_run":false,"evaluated_at":"2026-03-01T12:29:59.000000Z",'
    '"prometheus_url":"http://prometheus:9090","query":"histogram_quantile(0.99, rate(x[1m]))",'
    '"response_digest":"sha256:bbbb","statistic":"+Inf","threshold":0.2,'
    '"verdict":"inconclusive"}],"obj":{"generation":7,"name":"scorer","namespace":"fraud",'
    '"resource_version":"4242","uid":"uid-1"},"payload_digest":null,'
    '"reason":"p99 latency within threshold — café","rollout_id":"r-0001","seq":1,'
    '"stable":{"artifact_digest":"sha256:aaaa","model_name":"scorer",'
    '"revision":"scorer-predictor-00001","storage_uri":"s3://models/scorer/v1"},'
    '"traffic_after":{"scorer-predictor-00001":90,"scorer-predictor-00002":10},'
    '"traffic_before":{"scorer-predictor-00001":90,"scorer-predictor-00002":10},"v":3,'
    '"webhook_id":null}'
)
# sha256 of GENESIS_HASH + GOLDEN_BODY, cross-checked with coreutils sha256sum.
GOLDEN_HASH = "3d62a66fb5b739dbab68ef0018535a9a2d4a6cfb888992e74b093e407aa3ba04"

# The same record as formats 2 and 1 wrote it (the actor had no uid and no groups): stored
# records of those formats still verify and read.
GOLDEN_BODY_V2 = GOLDEN_BODY.replace(
    '{"groups":[],"id":"system:serviceaccount:kserve-canary:controller/pod-0",'
    '"kind":"controller","uid":null}',
    '{"id":"system:serviceaccount:kserve-canary:controller/pod-0","kind":"controller"}',
).replace('"v":3,', '"v":2,')
GOLDEN_HASH_V2 = "7948a13e6eaedfb80253fe58567c963b6e0c95df41a6a2ac15096016b4b9c611"
GOLDEN_BODY_V1 = GOLDEN_BODY_V2.replace('"v":2,', '"v":1,')
GOLDEN_HASH_V1 = "c0a8266c020f9c89adfc8dffb14aa696ce4bf261f3b0058fde06bab6a2f828d4"


def test_golden_vector_body_is_byte_identical() -> None:
    assert canonical_json(entry_body(1, _golden_entry())) == GOLDEN_BODY


def test_golden_vector_hash() -> None:
    body = canonical_json(entry_body(1, _golden_entry()))
    assert compute_record_hash(GENESIS_HASH, body) == GOLDEN_HASH


def test_format_1_and_2_records_still_verify_and_read() -> None:
    assert compute_record_hash(GENESIS_HASH, GOLDEN_BODY_V2) == GOLDEN_HASH_V2
    assert compute_record_hash(GENESIS_HASH, GOLDEN_BODY_V1) == GOLDEN_HASH_V1
    assert decode_body(GOLDEN_BODY_V2) == decode_body(GOLDEN_BODY)
    assert decode_body(GOLDEN_BODY_V1) == decode_body(GOLDEN_BODY)


def test_an_authenticated_person_is_recorded_with_uid_and_groups() -> None:
    person = Actor("human", "alice@bank.example", uid="7f3c-uid", groups=("risk", "oncall"))
    entry = dataclasses.replace(_golden_entry(), actor=person, measurements=())
    body = canonical_json(entry_body(1, entry))
    assert (
        '"actor":{"groups":["risk","oncall"],"id":"alice@bank.example","kind":"human",'
        '"uid":"7f3c-uid"}' in body
    )
    assert decode_body(body).actor == person


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported audit body format 4"):
        decode_body(GOLDEN_BODY.replace('"v":3,', '"v":4,'))


def test_hash_depends_on_the_previous_record() -> None:
    body = canonical_json(entry_body(1, _golden_entry()))
    assert compute_record_hash("1" * 64, body) != GOLDEN_HASH


def test_body_round_trips_to_an_equal_entry() -> None:
    entry = dataclasses.replace(
        _golden_entry(),
        measurements=(),
        approval_time=datetime(2026, 3, 1, 12, 45, tzinfo=UTC),
        change_number="CHG0012345",
        approver="risk.owner@example.com",
    )
    decoded = decode_body(canonical_json(entry_body(4, entry)))
    assert decoded == entry


def test_decoded_measurement_keeps_non_finite_values() -> None:
    decoded = decode_body(GOLDEN_BODY)
    (m,) = decoded.measurements
    assert m.baseline_value is not None
    assert math.isnan(m.baseline_value)
    assert m.statistic == math.inf
    assert m.canary_value == 0.125
    assert decoded.at == datetime(2026, 3, 1, 12, 30, 0, 250, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"v": 4}, "unsupported audit body format", id="future-version"),
        pytest.param({"extra": 1}, "unknown fields", id="unknown-field"),
        pytest.param({"at": None}, "expected a timestamp string, got None", id="no-time"),
    ],
)
def test_decode_rejects_unknown_layouts(change: dict[str, Any], message: str) -> None:
    data = json.loads(GOLDEN_BODY) | change
    with pytest.raises(ValueError, match=message):
        decode_body(json.dumps(data))


def test_decode_rejects_nan_literals() -> None:
    with pytest.raises(ValueError, match="non-standard JSON constant"):
        decode_body(GOLDEN_BODY.replace('"NaN"', "NaN"))


@pytest.mark.parametrize(
    "action",
    ["rollout.started", "traffic.intent", "promoted", "manual.pause", "approval.verified_v2"],
)
def test_valid_actions(action: str) -> None:
    assert AuditEntry(at=T0, actor=CONTROLLER, action=action).action == action


@pytest.mark.parametrize(
    "action", ["", "Rollout.started", "rollout..started", "rollout.", ".x", "2fa", "a-b", "a b"]
)
def test_invalid_actions_are_rejected(action: str) -> None:
    with pytest.raises(ValueError, match="dotted lower_snake_case"):
        AuditEntry(at=T0, actor=CONTROLLER, action=action)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            {"at": datetime(2026, 3, 1)},  # noqa: DTZ001
            ValueError,
            "timezone-aware",
            id="naive-at",
        ),
        pytest.param(
            {"approval_time": datetime(2026, 3, 1)},  # noqa: DTZ001
            ValueError,
            "timezone-aware",
            id="naive-approval-time",
        ),
        pytest.param({"traffic_after": {"rev": 50.5}}, TypeError, "str to int", id="float-pct"),
        pytest.param({"traffic_after": {"rev": True}}, TypeError, "str to int", id="bool-pct"),
        pytest.param({"leader_epoch": -1}, ValueError, "negative", id="negative-epoch"),
    ],
)
def test_entry_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    base: dict[str, Any] = {"at": T0, "actor": CONTROLLER, "action": "promoted"}
    with pytest.raises(error, match=message):
        AuditEntry(**(base | kwargs))


def test_unknown_actor_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="actor kind"):
        Actor("robot", "r2")  # type: ignore[arg-type]


def test_measurement_values_are_stored_as_floats() -> None:
    m = Measurement("c", T0, "q", "u", "d", 1, None, 1, 1, 2, 3, "pass", True)
    assert canonical_json([m.canary_value, m.statistic, m.threshold]) == "[1.0,2.0,3.0]"


_text = st.text(alphabet=st.characters(codec="utf-8"))
_json_scalars = st.none() | st.booleans() | st.integers() | _text | st.floats()
_json = st.recursive(
    _json_scalars,
    lambda children: st.lists(children) | st.dictionaries(_text, children),
    max_leaves=10,
)


@settings(derandomize=True, database=None, max_examples=50)
@given(st.dictionaries(_text, _json))
def test_canonical_json_ignores_insertion_order_and_round_trips(data: dict[str, Any]) -> None:
    reordered = dict(reversed(list(data.items())))
    text = canonical_json(data)
    assert canonical_json(reordered) == text
    assert json.loads(text) == normalise(data)
