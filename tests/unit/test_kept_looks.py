"""Looks that decide nothing are kept in memory on top of the row version they extend, and
never laid over a row that moved on or a rollout that ended."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from analysis import CheckMemory
from canary.document import RolloutDocument
from canary.entries import Entries
from canary.evaluation import AnalysisAdapter, KeptLooks, RolloutAnalyzer
from canary.model import Phase
from tests.unit.rollout_driver import make_policy, progressing

AT = datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)
LOOKED = {"error-rate": CheckMemory(through=AT)}


def row_doc(version: int = 3) -> RolloutDocument:
    d = progressing()
    assert d.state is not None
    return RolloutDocument(
        state=d.state, policy=d.policy, mode="knative", uid="uid-1",
        metric_profile="knative-otel", version=version,
    )  # fmt: skip


def looked(doc: RolloutDocument) -> RolloutDocument:
    return replace(doc, memory=LOOKED, next_look_at=AT)


@pytest.mark.parametrize(
    ("read", "laid_over"),
    [
        (row_doc(3), True),  # the row as the looks left it
        (row_doc(4), False),  # written since (by us or a command): its evidence wins
        (row_doc(2), False),  # an older read than the looks: never mixed
    ],
    ids=["same-version", "row-moved-on", "older-read"],
)
def test_kept_looks_go_on_top_of_their_own_version_only(
    read: RolloutDocument, laid_over: bool
) -> None:
    kept = KeptLooks()
    kept.keep("r-1", looked(row_doc(3)))
    out = kept.overlay("r-1", read)
    assert (out.memory == LOOKED) is laid_over
    assert (out.next_look_at == AT) is laid_over
    assert out.state == read.state  # only the evidence: the row's state is the row's
    assert len(kept) == (1 if laid_over else 0)  # a stale entry goes at once


def test_an_ended_rollout_takes_nothing_kept() -> None:
    kept = KeptLooks()
    kept.keep("r-1", looked(row_doc(3)))
    ended = row_doc(3)
    ended = replace(ended, state=replace(ended.state, phase=Phase.ROLLED_BACK))
    assert kept.overlay("r-1", ended) == ended
    assert len(kept) == 0


def test_another_rollout_and_a_lost_leadership_take_nothing() -> None:
    kept = KeptLooks()
    kept.keep("r-1", looked(row_doc(3)))
    assert kept.overlay("r-2", row_doc(3)) == row_doc(3)
    kept.clear()
    assert kept.overlay("r-1", row_doc(3)) == row_doc(3)
    kept.keep("r-1", looked(row_doc(3)))
    kept.drop("r-1")  # committed with the rollout's next write
    assert len(kept) == 0


# ---------------------------------------------------------------------------------------
# when a look is due
# ---------------------------------------------------------------------------------------

CUSTOM = {
    "name": "error-ratio",
    "query": 'sum(rate(errors{revision="${revision}"}[30s]))',
    "direction": "lowerIsBetter",
    "absoluteLimit": 0.05,
}


class WithLooks:
    looks = object()  # any LookSource will do: only its presence matters here


def adapter() -> AnalysisAdapter:
    return AnalysisAdapter(
        cast(RolloutAnalyzer, WithLooks()),
        runner=None,
        entries=cast(Entries, None),
        metrics=None,
        prometheus_url="",
        metrics_delay=timedelta(seconds=60),
    )


MIXED = {"name": "errors", "builtin": "error-rate", "relativeTolerance": 0.5}


def at_step(
    checks: list[dict[str, Any]] | None, analysis_in: float, look_in: float
) -> tuple[RolloutDocument, datetime]:
    """A rollout 40 s into its first step, its next analysis and look ``analysis_in`` and
    ``look_in`` seconds from then (negative: past); and that moment."""
    policy = make_policy() if checks is None else make_policy(checks=checks)
    d = progressing(policy)
    assert d.state is not None
    reached = d.state.step_reached_at
    assert reached is not None
    now = reached + timedelta(seconds=40)
    doc = RolloutDocument(
        state=d.state, policy=policy, mode="knative", uid="uid-1",
        metric_profile="knative-otel",
        next_analysis_at=now + timedelta(seconds=analysis_in),
        next_look_at=now + timedelta(seconds=look_in),
    )  # fmt: skip
    return doc, now


@pytest.mark.parametrize(
    ("checks", "interval_due", "look_due", "due"),
    [
        (None, False, True, "look"),  # the default built-in checks are read on every look
        (None, False, False, None),  # the next look is not due yet
        (None, True, True, "full"),  # the interval's evaluation goes first
        ([CUSTOM], False, True, None),  # custom queries only: nothing to read on a look
        ([CUSTOM], True, True, "full"),
        ([CUSTOM, MIXED], False, True, "look"),
    ],
    ids=["builtin", "not-yet", "interval", "custom-only", "custom-interval", "mixed"],
)  # fmt: skip
def test_a_look_is_due_only_for_a_rollout_that_reads_looks(
    checks: list[dict[str, Any]] | None, interval_due: bool, look_due: bool, due: str | None
) -> None:
    doc, now = at_step(checks, 0 if interval_due else 20, -1 if look_due else 1)
    assert adapter().due(doc, now) == due


@pytest.mark.parametrize(
    ("checks", "wakes_for_the_look"),
    [
        (None, True),
        ([CUSTOM], False),  # nothing advances its look time: it would be past for ever
        ([CUSTOM, MIXED], True),
    ],
    ids=["builtin", "custom-only", "mixed"],
)
def test_a_look_time_wakes_only_a_rollout_that_reads_looks(
    checks: list[dict[str, Any]] | None, wakes_for_the_look: bool
) -> None:
    # a look time from before (an older controller's row)
    doc, _now = at_step(checks, 20, -9)
    assert doc.reads_looks is wakes_for_the_look
    interval, look = doc.next_analysis_at, doc.next_look_at
    assert interval is not None
    assert look is not None
    check = doc.state.next_check_at or interval
    assert doc.wake_at() == (look if wakes_for_the_look else min(interval, check))
