"""Entries prepared for appending (``canary.audit.rows.prepare_entry``) give, once numbered,
exactly the body, hash, query columns and measurement rows that serialising the numbered
entry gives: the store prepares entries before it takes the head lock and only numbers them
under it, so any difference would be a record whose stored text is not the canonical one."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.audit.records import (
    Actor,
    AuditEntry,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
)
from canary.audit.rows import measurement_rows, prepare_entry, projection
from tests.unit.test_audit_quickcheck import WRITTEN, entry, measurement
from tests.unit.test_audit_records import GOLDEN_BODY, GOLDEN_HASH, _golden_entry

pytestmark = pytest.mark.unit

SEQS = (1, 9, 10, 99, 1_000_000, 2**63 - 1)


def same_as_serialised(original: AuditEntry, seq: int) -> None:
    prepared = prepare_entry(original)
    data = entry_body(seq, original)
    assert prepared.body(seq) == canonical_json(data)
    assert prepared.body_data(seq) == data
    assert dict(prepared.columns) == projection(data)
    assert prepared.measurement_rows(seq) == measurement_rows(seq, data)
    assert decode_body(prepared.body(seq)) == decode_body(data)


def test_the_golden_record_prepared_then_numbered_is_byte_identical() -> None:
    prepared = prepare_entry(_golden_entry())
    assert prepared.body(1) == GOLDEN_BODY
    assert compute_record_hash("0" * 64, prepared.body(1)) == GOLDEN_HASH


@pytest.mark.parametrize("name", sorted(WRITTEN))
@pytest.mark.parametrize("seq", SEQS)
def test_every_kind_of_record_numbered_later_is_the_one_serialised(name: str, seq: int) -> None:
    same_as_serialised(WRITTEN[name], seq)


# keys around "seq" in code-point order: "reason", "rollout_id" before it; "stable",
# "traffic_*", "v", "webhook_id" after it; nested "seq" keys must not be touched
_TEXT = st.text(max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["seq", "s", "sequence", "a", "z", "é"]) | _TEXT, inner)
    ),
    max_leaves=8,
)


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(
    evidence=st.dictionaries(_TEXT | st.just("seq"), _JSON, max_size=4),
    reason=st.none() | _TEXT,
    rollout_id=st.none() | _TEXT.filter(bool),
    correlation_id=st.none() | _TEXT,
    detail=st.dictionaries(_TEXT | st.just("seq"), _JSON, max_size=3),
    value=st.none() | st.floats(),
    offset=st.integers(min_value=-14 * 60, max_value=14 * 60),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_any_entry_numbered_later_is_the_one_serialised(
    evidence: dict[str, Any],
    reason: str | None,
    rollout_id: str | None,
    correlation_id: str | None,
    detail: dict[str, Any],
    value: float | None,
    offset: int,
    seq: int,
) -> None:
    at = datetime(2026, 11, 20, 2, 14, tzinfo=timezone(timedelta(minutes=offset)))
    original = entry(
        at=at,
        reason=reason,
        rollout_id=rollout_id,
        correlation_id=correlation_id,
        evidence=evidence,
        measurements=(measurement(0, detail=detail, canary_value=value),),
    )
    try:
        canonical_json(entry_body(seq, original))
    except ValueError as exc:  # what cannot be serialised cannot be prepared either
        with pytest.raises(ValueError, match=str(exc)[:20]):
            prepare_entry(original)
        return
    same_as_serialised(original, seq)


@pytest.mark.parametrize("seq", [0, -1, 1.0, True, "2"])
def test_a_record_is_numbered_from_one_with_an_int(seq: Any) -> None:
    with pytest.raises(ValueError, match="seq must be an int >= 1"):
        prepare_entry(entry()).body(seq)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence": {"when": datetime(2026, 11, 20, 2, 14)}}, "naive datetime"),  # noqa: DTZ001
        ({"reason": "lone \ud800 surrogate"}, "not valid Unicode"),
        ({"evidence": {"x": object()}}, "not allowed in audit records"),
    ],
)
def test_what_cannot_be_recorded_is_refused_when_prepared(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        prepare_entry(replace(entry(), **change))


def test_non_finite_measurements_survive_preparation() -> None:
    original = entry(
        measurements=(measurement(0, canary_value=math.nan, statistic=-math.inf),),
        actor=Actor("human", "ana", uid="u-7", groups=("risk",)),
        at=datetime(2026, 11, 20, 2, 14, tzinfo=UTC),
    )
    same_as_serialised(original, 42)
    (row,) = prepare_entry(original).measurement_rows(42)
    assert math.isnan(row["canary_value"])
    assert row["statistic"] == -math.inf
