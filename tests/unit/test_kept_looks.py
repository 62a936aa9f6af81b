"""Looks that decide nothing are kept in memory on top of the row version they extend, and
never laid over a row that moved on or a rollout that ended."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from analysis import CheckMemory
from canary.document import RolloutDocument
from canary.evaluation import KeptLooks
from canary.model import Phase
from tests.unit.rollout_driver import progressing

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
