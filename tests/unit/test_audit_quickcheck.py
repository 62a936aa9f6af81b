"""The quick check of verify never accepts a record the full check rejects.

:class:`QuickCheck` proves most records sound without the full check (which decodes the
body and compares every derived value); whenever it says yes, the full check must say yes
too, or verify would let a tampered record through. It may say no to a sound record (the
full check then runs, and accepts it). Each case below stores a record as PostgreSQL's
driver gives it back (typed values) and holds the two against each other: records as the
controller writes them, bodies edited in every way decoding must refuse, stored values
edited, and random edits of both.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json

from canary.audit.chain import (
    MEASUREMENT_COLUMNS,
    PROJECTION_COLUMNS,
    measurement_rows,
    projection,
)
from canary.audit.quickcheck import QuickCheck, _canonical_detail
from canary.audit.records import (
    Actor,
    AuditEntry,
    Measurement,
    ModelRef,
    ObjectRef,
    canonical_json,
    compute_record_hash,
    entry_body,
)
from canary.audit.verifier import ChainVerifier

SEQ = 7
PREV = "ab" * 32
T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
CONTROLLER = Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0")
ISVC = ObjectRef("fraud", "scorer", uid="uid-1", generation=3, resource_version="100")
STABLE = ModelRef("scorer", "s3://models/scorer/v1", "sha256:aa", "scorer-predictor-00001")
CANARY = ModelRef("scorer", "s3://models/scorer/v2", None, "scorer-predictor-00002")
INF_MARK = "__written as 1e999__"  # JSON has no infinity: put into the body text by hand

# What a PostgreSQL column gives back: the quick check relies on these types.
_TEXT = (str, type(None))
_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "recorded_at": (datetime,),
    "evaluated_at": (datetime,),
    "audit_seq": (int,),
    "position": (int,),
    "canary_samples": (int, type(None)),
    "baseline_samples": (int, type(None)),
    "canary_value": (float, type(None)),
    "baseline_value": (float, type(None)),
    "statistic": (float, type(None)),
    "threshold": (float, type(None)),
    "dry_run": (bool,),
}


def measurement(i: int, **changes: Any) -> Measurement:
    fields: dict[str, Any] = {
        "check": "error-rate",
        "evaluated_at": T0 + timedelta(seconds=30 * i),
        "query": f'sum(rate(errors{{revision="scorer-predictor-00002"}}[1m])) # {i}',
        "prometheus_url": "http://prometheus:9090",
        "response_digest": f"{i:064x}",
        "canary_value": 0.0123,
        "baseline_value": 0.02,
        "canary_samples": 100 + i,
        "baseline_samples": 900,
        "statistic": 1.5,
        "threshold": 0.05,
        "verdict": "Successful",
        "dry_run": False,
        "detail": {"message": "5xx 1.2% vs 2%", "sufficient": True, "window": [1, 2.5]},
    }
    return Measurement(**(fields | changes))


def entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "at": T0,
        "actor": CONTROLLER,
        "action": "analysis.evaluated",
        "rollout_id": "ro-1",
        "obj": ISVC,
        "stable": STABLE,
        "canary": CANARY,
        "reason": "step 1",
        "evidence": {"step": 1, "verdict": "Successful"},
        "measurements": (measurement(0), measurement(1, check="latency-p99")),
        "correlation_id": "corr-1",
        "leader_epoch": 1,
    }
    return AuditEntry(**(fields | changes))


WRITTEN = {
    "analysis": entry(),
    "no-measurements": entry(measurements=()),
    "no-object-no-models": entry(obj=None, stable=None, canary=None, rollout_id=None),
    "traffic": entry(
        action="traffic.shifted",
        traffic_before={"a": 90, "b": 10},
        traffic_after={"a": 75, "b": 25},
        measurements=(),
    ),
    "approval": entry(
        action="approval.verified",
        actor=Actor("human", "alice", uid="u-1", groups=("risk", "ops")),
        change_number="CHG0001",
        change_sys_id="sys-1",
        approver="alice",
        approval_time=T0 - timedelta(minutes=5),
        measurements=(),
    ),
    "missing-values": entry(
        measurements=(
            measurement(
                0,
                canary_value=None,
                baseline_value=None,
                canary_samples=None,
                baseline_samples=None,
                statistic=None,
                threshold=None,
                dry_run=True,
                detail={},
            ),
        )
    ),
    "non-ascii": entry(
        reason="Ablehnung: Risikoprüfung ✓",
        measurements=(measurement(0, detail={"message": "größer als 2 % — 😀"}),),
    ),
    "nan-and-infinite": entry(
        measurements=(measurement(0, canary_value=math.inf, statistic=-math.inf),)
    ),
}


@dataclass
class Stored:
    """A record as PostgreSQL's driver gives it back."""

    body: str
    columns: tuple[Any, ...]
    rows: list[tuple[Any, ...]]


def derived(data: dict[str, Any]) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    columns = projection(data)
    rows = measurement_rows(SEQ, data)
    return (
        tuple(columns[c] for c in PROJECTION_COLUMNS),
        [tuple(row[c] for c in MEASUREMENT_COLUMNS) for row in rows],
    )


def written(record: AuditEntry) -> Stored:
    body = canonical_json(entry_body(SEQ, record))
    return Stored(body, *derived(json.loads(body)))


def text_of(data: Any) -> str:
    """A body as someone might have written it (not canonical: that is allowed too)."""
    return json.dumps(data, ensure_ascii=True).replace(f'"{INF_MARK}"', "1e999")


def _typed(column: str, value: Any, fallback: Any) -> Any:
    wanted = _COLUMN_TYPES.get(column, _TEXT)
    ok = type(value) in wanted and not (bool not in wanted and isinstance(value, bool))
    return value if ok else fallback


def restored(body: str, original: Stored) -> Stored:
    """The record with ``body``, its columns and rows derived from it where a PostgreSQL
    column could hold the value (the original value elsewhere), so that only the rules the
    body breaks, if any, tell the two checks apart."""
    try:
        columns, rows = derived(json.loads(body))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return Stored(body, original.columns, original.rows)
    typed_columns = tuple(
        _typed(name, value, before)
        for name, value, before in zip(PROJECTION_COLUMNS, columns, original.columns, strict=True)
    )
    typed_rows = [
        tuple(
            _typed(name, value, before[i] if i < len(before) else None)
            for i, (name, value) in enumerate(zip(MEASUREMENT_COLUMNS, row, strict=True))
        )
        for row, before in zip(rows, original.rows + [()] * len(rows), strict=False)
    ]
    return Stored(body, typed_columns, typed_rows)


def full_check_passes(stored: Stored) -> bool:
    verifier = ChainVerifier()
    verifier.begin(SEQ, PREV)
    row = {
        "seq": SEQ,
        "prev_hash": PREV,
        "record_hash": compute_record_hash(PREV, stored.body),
        "body": stored.body,
        **dict(zip(PROJECTION_COLUMNS, stored.columns, strict=True)),
    }
    rows = [dict(zip(MEASUREMENT_COLUMNS, r, strict=True)) for r in stored.rows]
    return verifier.check(row, rows) is None


def quick_proves(stored: Stored) -> bool:
    """Whether the quick check proves the record, given the body as verify parses it or as
    the standard library does (which also keeps lone surrogates): either must be sound."""
    parsed = []
    for parse in (lambda text: from_json(text, allow_inf_nan=False), json.loads):
        try:
            parsed.append(parse(stored.body))
        except ValueError:
            continue
    return any(QuickCheck().proves(SEQ, data, stored.columns, stored.rows) for data in parsed)


@pytest.mark.parametrize("name", WRITTEN)
def test_records_as_the_controller_writes_them_are_proven(name: str) -> None:
    stored = written(WRITTEN[name])
    assert full_check_passes(stored)
    assert quick_proves(stored)


def test_the_measurements_timestamp_is_reparsed_when_it_differs() -> None:
    quick = QuickCheck()
    for i in range(3):  # a new time each record, some shared with its measurements
        record = entry(at=T0 + timedelta(seconds=i), measurements=(measurement(i),))
        stored = written(record)
        assert quick.proves(SEQ, json.loads(stored.body), stored.columns, stored.rows)
        wrong = [(*stored.rows[0][:4], T0, *stored.rows[0][5:])]
        assert not quick.proves(SEQ, json.loads(stored.body), stored.columns, wrong) or i == 0


Edit = Callable[[dict[str, Any]], None]


def _set(path: Sequence[str | int], value: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


def _drop(path: Sequence[str | int]) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return edit


M0 = ("measurements", 0)
BODY_EDITS: dict[str, tuple[Edit, bool]] = {  # the edit, and whether the full check passes
    "unknown-field": (_set(["extra"], 1), False),
    "missing-field": (_drop(["reason"]), False),
    "missing-seq": (_drop(["seq"]), False),
    "version-unknown": (_set(["v"], 4), False),
    "version-true": (_set(["v"], True), True),
    "version-float": (_set(["v"], 3.0), True),
    "version-list": (_set(["v"], [3]), False),
    "seq-other": (_set(["seq"], SEQ + 1), False),
    "seq-float": (_set(["seq"], float(SEQ)), True),
    "seq-string": (_set(["seq"], str(SEQ)), False),
    "actor-not-object": (_set(["actor"], "controller"), False),
    "actor-kind-unknown": (_set(["actor", "kind"], "robot"), False),
    "actor-kind-list": (_set(["actor", "kind"], ["controller"]), False),
    "actor-id-empty": (_set(["actor", "id"], ""), False),
    "actor-id-number": (_set(["actor", "id"], 5), False),  # a text column cannot say 5
    "actor-groups-number": (_set(["actor", "groups"], 5), False),
    "actor-groups-string": (_set(["actor", "groups"], "ops"), True),
    "actor-uid-missing": (_drop(["actor", "uid"]), True),
    "action-pattern": (_set(["action"], "Analysis Evaluated"), False),
    "action-newline": (_set(["action"], "analysis.evaluated\n"), True),  # `$` allows it
    "action-number": (_set(["action"], 5), False),
    "at-no-z": (_set(["at"], "2026-03-01T12:00:00.250000"), False),
    "at-garbage": (_set(["at"], "yesterdayZ"), False),
    "at-null": (_set(["at"], None), False),
    "at-offset": (_set(["at"], "2026-03-01T13:00:00.250000+01:00Z"), True),
    "obj-missing-key": (_drop(["obj", "uid"]), False),
    "obj-extra-key": (_set(["obj", "color"], "red"), True),
    "obj-list": (_set(["obj"], ["fraud", "scorer"]), False),
    "obj-empty": (_set(["obj"], {}), False),
    "model-missing-key": (_drop(["canary", "artifact_digest"]), False),
    "model-string": (_set(["stable"], "scorer"), False),
    "traffic-bool": (_set(["traffic_before"], {"a": True}), False),
    "traffic-float": (_set(["traffic_after"], {"a": 1.5}), False),
    "traffic-list": (_set(["traffic_after"], [90, 10]), False),
    "approval-time-bad": (_set(["approval_time"], "soon"), False),
    "approval-time-number": (_set(["approval_time"], 5), False),
    "epoch-negative": (_set(["leader_epoch"], -1), False),
    "epoch-string": (_set(["leader_epoch"], "1"), False),
    "epoch-fraction": (_set(["leader_epoch"], 0.5), True),
    "epoch-true": (_set(["leader_epoch"], True), True),
    "measurements-object": (_set(["measurements"], {"check": "x"}), False),
    "measurement-not-object": (_set([*M0], "error-rate"), False),
    "measurement-missing-key": (_drop([*M0, "verdict"]), False),
    "measurement-extra-key": (_set([*M0, "note"], "x"), True),
    "measurement-check-empty": (_set([*M0, "check"], ""), False),
    "measurement-time-null": (_set([*M0, "evaluated_at"], None), False),
    "measurement-time-bad": (_set([*M0, "evaluated_at"], "2026-13-01T00:00:00Z"), False),
    "measurement-value-string": (_set([*M0, "canary_value"], "0.5"), False),
    "measurement-value-nan": (_set([*M0, "canary_value"], "NaN"), True),
    "measurement-value-int": (_set([*M0, "threshold"], 1), True),
    "measurement-value-true": (_set([*M0, "statistic"], True), True),
    "measurement-value-infinite": (_set([*M0, "baseline_value"], INF_MARK), True),
    "measurement-samples-true": (_set([*M0, "canary_samples"], True), False),
    "measurement-samples-float": (_set([*M0, "baseline_samples"], 900.0), True),
    "measurement-dry-run-number": (_set([*M0, "dry_run"], 0), False),
    "measurement-dry-run-null": (_set([*M0, "dry_run"], None), False),
    "measurement-detail-infinite": (_set([*M0, "detail"], {"x": INF_MARK}), True),
    "measurement-detail-lone-surrogate": (_set([*M0, "detail"], {"x": "\ud800"}), False),
    "measurement-detail-big-int": (_set([*M0, "detail"], {"x": 2**80}), True),
    "measurement-verdict-bool": (_set([*M0, "verdict"], True), False),
}


@pytest.mark.parametrize("name", BODY_EDITS)
def test_a_body_the_full_check_refuses_is_never_proven(name: str) -> None:
    edit, passes = BODY_EDITS[name]
    original = written(WRITTEN["analysis"])
    data = json.loads(original.body)
    edit(data)
    stored = restored(text_of(data), original)
    assert full_check_passes(stored) is passes
    if not passes:
        assert not quick_proves(stored)


def _column(name: str, value: Any) -> Callable[[Stored], None]:
    def edit(stored: Stored) -> None:
        at = PROJECTION_COLUMNS.index(name)
        stored.columns = (*stored.columns[:at], value, *stored.columns[at + 1 :])

    return edit


def _row(position: int, name: str, value: Any) -> Callable[[Stored], None]:
    def edit(stored: Stored) -> None:
        at = MEASUREMENT_COLUMNS.index(name)
        row = stored.rows[position]
        stored.rows[position] = (*row[:at], value, *row[at + 1 :])

    return edit


def _rows(change: Callable[[list[tuple[Any, ...]]], object]) -> Callable[[Stored], None]:
    def edit(stored: Stored) -> None:
        change(stored.rows)

    return edit


CET = timezone(timedelta(hours=1))
STORED_EDITS: dict[str, tuple[Callable[[Stored], None], bool]] = {
    "action": (_column("action", "promoted"), False),
    "rollout-null": (_column("rollout_id", None), False),
    "recorded-other-time": (_column("recorded_at", T0 + timedelta(microseconds=1)), False),
    "recorded-same-instant-other-zone": (_column("recorded_at", T0.astimezone(CET)), True),
    "namespace-case": (_column("namespace", "Fraud"), False),
    "value": (_row(0, "canary_value", 0.5), False),
    "value-null": (_row(0, "canary_value", None), False),
    "value-nan": (_row(0, "canary_value", math.nan), False),
    "value-negative-zero": (_row(1, "baseline_value", 0.02 * -1), False),
    "samples": (_row(1, "canary_samples", 102), False),
    "dry-run": (_row(0, "dry_run", True), False),
    "detail-spaced": (_row(0, "detail", '{"message": "5xx 1.2% vs 2%"}'), False),
    "detail-keys-unsorted": (
        _row(0, "detail", '{"window":[1,2.5],"sufficient":true,"message":"5xx 1.2% vs 2%"}'),
        False,
    ),
    "position": (_row(1, "position", 2), False),
    "audit-seq": (_row(1, "audit_seq", SEQ + 1), False),
    "evaluated-at": (_row(1, "evaluated_at", T0), False),
    "row-deleted": (_rows(lambda rows: rows.pop()), False),
    "row-added": (_rows(lambda rows: rows.append(rows[0])), False),
    "rows-swapped": (_rows(lambda rows: rows.reverse()), False),
}


BOTH_EDITS: dict[str, tuple[Edit, Callable[[Stored], None], bool]] = {
    "samples-true-stored-one": (
        _set([*M0, "canary_samples"], True),
        _row(0, "canary_samples", 1),
        False,
    ),
    "samples-false-stored-zero": (
        _set([*M0, "baseline_samples"], False),
        _row(0, "baseline_samples", 0),
        False,
    ),
    "dry-run-one-stored-true": (_set([*M0, "dry_run"], 1), _row(0, "dry_run", True), False),
    "dry-run-zero-stored-false": (_set([*M0, "dry_run"], 0), _row(0, "dry_run", False), False),
    "detail-infinite-stored-as-javascript": (
        _set([*M0, "detail"], {"x": INF_MARK}),
        _row(0, "detail", '{"x":Infinity}'),
        False,
    ),
    "detail-infinite-stored-canonical": (
        _set([*M0, "detail"], {"x": INF_MARK}),
        _row(0, "detail", '{"x":"+Inf"}'),
        True,
    ),
    "detail-lone-surrogate-stored-as-is": (
        _set([*M0, "detail"], {"x": "\ud800"}),
        _row(0, "detail", '{"x":"\ud800"}'),
        False,
    ),
    "value-true-stored-one": (_set([*M0, "statistic"], True), _row(0, "statistic", 1.0), True),
}


@pytest.mark.parametrize("name", BOTH_EDITS)
def test_a_body_and_its_rows_edited_together_are_never_proven_unless_sound(name: str) -> None:
    edit_body, edit_stored, passes = BOTH_EDITS[name]
    original = written(WRITTEN["analysis"])
    data = json.loads(original.body)
    edit_body(data)
    stored = Stored(text_of(data), original.columns, list(original.rows))
    edit_stored(stored)
    assert full_check_passes(stored) is passes
    if not passes:
        assert not quick_proves(stored)


@pytest.mark.parametrize("name", STORED_EDITS)
def test_stored_values_that_differ_are_never_proven(name: str) -> None:
    edit, passes = STORED_EDITS[name]
    stored = written(WRITTEN["analysis"])
    edit(stored)
    assert full_check_passes(stored) is passes
    if not passes:
        assert not quick_proves(stored)


# --------------------------------------------------------------------------------------------
# random edits
# --------------------------------------------------------------------------------------------

TRICKY: list[Any] = [
    None, True, False, 0, 1, -1, 7, 1.0, 0.5, -0.0, 2**70, INF_MARK, "", "x", "NaN", "+Inf",
    "2026-03-01T12:00:00.250000Z", "2026-03-01T12:00:00Z", "analysis.evaluated", "a.b\n",
    "controller", "ro-1", "\ud800", [], [1], ["ops"], {}, {"a": 1}, {"revision": "r"},
]  # fmt: skip


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(WRITTEN)),
    choices=st.lists(
        st.tuples(
            st.integers(min_value=0),
            st.sampled_from(["set", "drop", "add"]),
            st.sampled_from(TRICKY),
        ),
        min_size=1,
        max_size=3,
    ),
    keep_stored=st.booleans(),
)
def test_random_edits_are_never_proven_unless_sound(
    name: str, choices: list[tuple[int, str, Any]], keep_stored: bool
) -> None:
    original = written(WRITTEN[name])
    data = json.loads(original.body)
    for index, how, value in choices:
        paths = _paths(data)
        path = paths[index % len(paths)]
        parent: Any = data
        for step in path[:-1]:
            parent = parent[step]
        if how == "set":
            parent[path[-1]] = copy.deepcopy(value)
        elif how == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[f"added_{index % 5}"] = copy.deepcopy(value)
    body = text_of(data)
    stored = Stored(body, original.columns, original.rows) if keep_stored else None
    stored = stored or restored(body, original)
    if quick_proves(stored):
        assert full_check_passes(stored), body


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_a_detail_is_written_as_canonical_json_writes_it(value: Any) -> None:
    try:
        expected = canonical_json(value)
    except ValueError:  # text UTF-8 cannot hold: canonical_json refuses it
        return
    assert _canonical_detail(value) == expected


def test_a_detail_with_an_infinite_number_is_refused() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        _canonical_detail({"x": [1, -math.inf]})


# --------------------------------------------------------------------------------------------
# the parser verify uses
# --------------------------------------------------------------------------------------------


def _same_json(left: Any, right: Any) -> bool:
    """Equal, type for type (Python's == takes 1, 1.0 and True for one another)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_json, left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def _refuse(name: str) -> Any:
    raise ValueError(name)


def _fast(text: str) -> Any:
    return from_json(text, allow_inf_nan=False, cache_strings="keys")


def _standard(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse)


def _both(text: str) -> tuple[Any, Any]:
    """What verify's parser and the standard library make of ``text`` (None: refused)."""
    results: list[Any] = []
    for parse in (_fast, _standard):
        try:
            results.append(("ok", parse(text)))
        except ValueError:
            results.append(None)
    return results[0], results[1]


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}', '{"a":1e999}', '{"a":-1e999}', '{"a":1e-400}', '{"a":NaN}',
        '{"a":Infinity}', '{"a":-0.0}', '{"a":-0}', '{"a":1E5}', '{"a":1.0}',
        '{"a":123456789012345678901234567890}', '{"a":9007199254740993.0}',
        '{"a":2.2250738585072014e-308}', '{"a":4.9e-324}', '{"a":0.30000000000000004}',
        '{"a":"\\ud800"}', '{"a":"\\ud83d\\ude00"}', '{"a":"\\u0000"}', '{"a":"\\/"}',
        '{"a":"\x01"}', '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":[1,]}', '{"a":1,}', '{} x',
        ' {}\n', '\ufeff{}', '{\x0b"a":1}', '{"a":"x\x7f"}', '[1]', '"x"', "null",
        '{"a":' + "1" * 5000 + "}", "[" * 300 + "]" * 300,
    ],
)  # fmt: skip
def test_verify_s_parser_reads_a_text_as_the_standard_library_does_or_refuses_it(
    text: str,
) -> None:
    fast, standard = _both(text)
    if fast is not None:
        assert standard is not None, text
        assert _same_json(fast[1], standard[1]), text


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_verify_s_parser_reads_json_as_the_standard_library_does(
    value: Any, ascii_only: bool, indent: int | None
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    fast, standard = _both(text)
    assert standard is not None
    if fast is not None:
        assert _same_json(fast[1], standard[1]), text
