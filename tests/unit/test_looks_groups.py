"""Look groups of bounded size (analysis.looks): how many services share one round's
queries, and that a slow round holds back only the rollouts of its own group.

The fake Prometheus of ``test_looks`` answers from a table of per-revision numbers and
records every query, so the tests can count rounds and read which revisions each selects.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from analysis.looks import DEFAULT_GROUP_SIZE, LookSource, SubjectLook
from analysis.types import QueryResult, Subject
from canary.settings import SettingsError, load_settings
from tests.unit.test_looks import AT, SECOND, FakePrometheus, Revision, subject

PERIOD = SECOND * 5


def services(count: int) -> dict[tuple[str, str], Revision]:
    return {
        ("ns", f"m{i}-0000{v}"): Revision(requests=100.0 + 7 * i, errors=float(i % 5))
        for i in range(count)
        for v in (1, 2)
    }


def subjects(count: int) -> list[Subject]:
    return [subject("ns", f"m{i}-00002", f"m{i}-00001") for i in range(count)]


def source(
    prometheus: FakePrometheus, size: int | None, forget_after: timedelta = timedelta(minutes=15)
) -> LookSource:
    return LookSource(prometheus, period=PERIOD, lag=SECOND * 2, window=SECOND * 60,
                      group_size=size, forget_after=forget_after)  # fmt: skip


def selected(promql: str) -> set[str]:
    """The revisions a look query selects (its identity matcher)."""
    found = re.search(r'revision=~"([^"]*)"', promql)
    assert found is not None, promql
    return set(found.group(1).split("|"))


def numbers(look: SubjectLook) -> tuple[object, ...]:
    """What a rollout reads from a look (not which round it came from)."""
    return (look.canary, look.baseline, look.at, look.since, look.looks)


@pytest.mark.parametrize(
    ("count", "size", "groups"),
    [
        pytest.param(5, 2, 3, id="five-services-in-groups-of-two"),
        pytest.param(4, 2, 2, id="groups-filled-exactly"),
        pytest.param(3, 1, 3, id="a-service-per-group"),
        pytest.param(6, None, 1, id="unbounded-one-group"),
        pytest.param(6, 200, 1, id="fewer-services-than-a-group"),
    ],
)
def test_a_group_holds_at_most_its_size_and_rounds_grow_with_groups_not_rollouts(
    count: int, size: int | None, groups: int
) -> None:
    prometheus, whole = FakePrometheus(services(count)), FakePrometheus(services(count))
    looks, one_group = source(prometheus, size), source(whole, None)
    for s in subjects(count):
        looks.look(s, AT)
        one_group.look(s, AT)
    sent = len(prometheus.sent)
    for s in subjects(count):
        # the same numbers whatever the grouping
        assert numbers(looks.look(s, AT + PERIOD)) == numbers(one_group.look(s, AT + PERIOD))
    assert len(prometheus.sent) - sent == 5 * groups  # five queries per group per look
    assert looks.groups("knative-otel", "knative") == groups
    limit = 2 * (size or count)  # each service has two revisions
    assert all(len(selected(q)) <= limit for q in prometheus.sent)


def test_a_service_keeps_its_group_while_asked_about_and_frees_it_once_forgotten() -> None:
    prometheus = FakePrometheus(services(5))
    looks = source(prometheus, 2, forget_after=SECOND * 60)
    a, b, c, e, d = subjects(5)
    for s in (a, b, c, e):
        looks.look(s, AT)
    assert looks.groups("knative-otel", "knative") == 2  # a and b, c and e: both full
    at = AT
    for _ in range(14):  # 70 s: b is not asked about any more
        at += PERIOD
        for s in (a, c, e):
            looks.look(s, at)
    looks.look(d, at)  # takes b's place beside a: no third group
    assert looks.groups("knative-otel", "knative") == 2
    sent = len(prometheus.sent)
    at += PERIOD
    for s in (a, c, e, d):
        looks.look(s, at)
    rounds = {frozenset(selected(promql)) for promql in prometheus.sent[sent:]}
    assert len(prometheus.sent) - sent == 10  # five for each of the two groups
    assert rounds == {
        frozenset({"m0-00001", "m0-00002", "m4-00001", "m4-00002"}),  # a and d
        frozenset({"m2-00001", "m2-00002", "m3-00001", "m3-00002"}),  # c and e
    }


@dataclass
class HeldPrometheus:
    """Answers like ``inner``, but holds every query that selects ``held`` until
    ``release`` is set; ``waiting`` is set once such a query has arrived."""

    inner: FakePrometheus
    held: str
    release: threading.Event = field(default_factory=threading.Event)
    waiting: threading.Event = field(default_factory=threading.Event)
    url: str = "http://prometheus.test:9090"

    def query(self, promql: str, at: datetime) -> QueryResult:
        if self.held in selected(promql) and at > AT:
            self.waiting.set()
            assert self.release.wait(30), "the held query was never released"
        return self.inner.query(promql, at)


@pytest.fixture
def held() -> Iterator[HeldPrometheus]:
    prometheus = HeldPrometheus(FakePrometheus(services(2)), held="m0-00002")
    yield prometheus
    prometheus.release.set()  # never leave a test's thread blocked


@pytest.mark.parametrize(
    ("size", "waits"),
    [
        pytest.param(1, False, id="other-group-is-not-held-back"),
        pytest.param(2, True, id="same-group-waits-for-its-round"),
    ],
)
def test_a_slow_round_holds_back_only_the_rollouts_of_its_own_group(
    held: HeldPrometheus, size: int, waits: bool
) -> None:
    looks = LookSource(held, period=PERIOD, lag=SECOND * 2, window=SECOND * 60, group_size=size)
    slow, fast = subjects(2)
    for s in (slow, fast):
        looks.look(s, AT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stuck = pool.submit(looks.look, slow, AT + PERIOD)
        assert held.waiting.wait(30), "the slow round never started"
        other = pool.submit(looks.look, fast, AT + PERIOD)
        if waits:
            # the other rollout shares the round that is held: it cannot have a look yet
            assert not other.done()
            with pytest.raises(TimeoutError):
                other.result(timeout=0.2)
        else:
            assert other.result(timeout=30).canary.requests > 0  # read while one is held
            assert not stuck.done()
        held.release.set()
        assert stuck.result(timeout=30).canary.requests > 0
        assert other.result(timeout=30).canary.requests > 0


def test_looks_read_from_many_threads_are_the_numbers_read_one_by_one() -> None:
    count = 24
    threaded, alone = FakePrometheus(services(count)), FakePrometheus(services(count))
    looks, reference = source(threaded, 5), source(alone, 5)
    times = [AT + PERIOD * k for k in range(6)]
    every = [(s, t) for t in times for s in subjects(count)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for t in times:  # every rollout's look at one grid time at once, as the worker does
            batch = [pool.submit(looks.look, s, t) for s in subjects(count)]
            for future in batch:
                future.result(timeout=30)
    for s, t in every:
        assert numbers(looks.look(s, t)) == numbers(reference.look(s, t))
    assert looks.held() <= 3 * 5 * 4  # bounded per group: newest grid times only


def test_the_group_size_setting_defaults_and_rejects_an_empty_group() -> None:
    assert load_settings().look_group_size == DEFAULT_GROUP_SIZE
    assert load_settings(None, look_group_size=50).look_group_size == 50
    with pytest.raises(SettingsError, match="look_group_size"):
        load_settings(None, look_group_size=0)
    with pytest.raises(ValueError, match="at least one service"):
        source(FakePrometheus({}), 0)
