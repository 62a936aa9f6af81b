"""Lanes (canary.analysis_worker): evaluations that read one group of looks run one at a
time, waiting without a thread, so a slow query round holds back its own group only.

The analyzer double answers each rollout when the test releases it, and says which lane
each rollout is in; the clock is the test's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime, timedelta

import pytest

from analysis.looks import LookSource
from analysis.runner import Analyzer
from analysis.types import CheckDefinition, CheckMemory, Outcome, QueryResult, StepAnalysis, Subject
from canary.analysis_worker import AnalysisRequest, AnalysisRunner
from tests.unit.test_controller_analysis import (
    CHECK,
    SUBJECT,
    WAIT,
    Clock,
    _until,
    passing,
    runner,
)
from tests.unit.test_looks import FakePrometheus

Key = tuple[str, str]


def key(lane: str, name: str) -> Key:
    return (lane, name)


def ask(name: Key, clock: Clock) -> AnalysisRequest:
    """A look for the rollout ``name``: its lane is its namespace ("-" for none)."""
    subject = Subject(name[0], name[1], "knative", f"{name[1]}-00002", f"{name[1]}-00001",
                      "knative-otel", timedelta(seconds=60))  # fmt: skip
    return AnalysisRequest(subject, (CHECK,), {}, clock(), False, False)


class Lanes:
    """An analyzer whose looks each wait until the test releases their rollout: while
    reading its looks, or with ``custom`` after (running queries of its own)."""

    def __init__(self, custom: bool = False) -> None:
        self.custom = custom
        self.release: dict[Key, threading.Event] = {}
        self.started: list[Key] = []
        self.evaluated_at: dict[Key, datetime] = {}
        self.crash: set[Key] = set()
        self._lock = threading.Lock()

    def lane(
        self, subject: Subject, checks: Sequence[CheckDefinition], at: datetime
    ) -> Hashable | None:
        return None if subject.namespace == "-" else subject.namespace

    def gate(self, name: Key) -> threading.Event:
        with self._lock:
            return self.release.setdefault(name, threading.Event())

    def analyze(
        self,
        subject: Subject,
        checks: Sequence[CheckDefinition],
        memory: Mapping[str, CheckMemory],
        at: datetime,
        *,
        grace: bool,
        looks_only: bool = False,
        step: tuple[int, datetime] | None = None,
        looks_read: Callable[[], None] | None = None,
    ) -> StepAnalysis:
        name = (subject.namespace, subject.isvc)
        with self._lock:
            self.started.append(name)
            self.evaluated_at[name] = at
        if self.custom and looks_read is not None:
            looks_read()
        assert self.gate(name).wait(WAIT), f"{name} was never released"
        if looks_read is not None:
            looks_read()
        if name in self.crash:
            raise RuntimeError("a bug in the analysis")
        return passing(at)


def answered(run: AnalysisRunner, name: Key, clock: Clock) -> StepAnalysis:
    found = run.obtain(name, ("t", name), ask(name, clock))
    assert found is not None, f"{name} has no answer yet"
    return found[1]


@pytest.fixture
def lanes() -> Lanes:
    return Lanes()


def test_a_lane_runs_one_look_at_a_time_and_its_waiting_looks_hold_no_thread(
    lanes: Lanes,
) -> None:
    clock = Clock()
    run, breaker, notified = runner(lanes, clock, workers=2)
    a1, a2, a3, b1 = key("a", "1"), key("a", "2"), key("a", "3"), key("b", "1")
    for name in (a1, a2, a3, b1):
        assert run.obtain(name, ("t", name), ask(name, clock)) is None
    # a1 holds a thread; a2 and a3 wait in lane a without one, so b1 has the other thread
    _until(lambda: set(lanes.started) == {a1, b1})
    assert run.waiting() == 2
    lanes.gate(b1).set()
    _until(lambda: b1 in notified.keys)
    assert answered(run, b1, clock).verdict is Outcome.SUCCESSFUL
    assert lanes.started.count(a2) == 0  # still behind a1
    clock.advance(60)  # far past the deadline: a look waiting for its lane is not given up
    assert run.obtain(a2, ("t", a2), ask(a2, clock)) is None
    assert run.deadline(a2) == clock() + timedelta(seconds=10)
    for name in (a1, a2, a3):
        lanes.gate(name).set()
    _until(lambda: {a2, a3} <= set(notified.keys))
    assert lanes.started in ([a1, b1, a2, a3], [b1, a1, a2, a3])
    assert answered(run, a3, clock).verdict is Outcome.SUCCESSFUL
    assert breaker.state == "closed"
    assert run.waiting() == 0
    run.shutdown()


def test_an_analysis_leaves_its_lane_once_its_looks_are_read() -> None:
    """Its checks with queries of their own then run beside the lane's next analysis."""
    custom = Lanes(custom=True)
    clock = Clock()
    run, _, notified = runner(custom, clock, workers=2)
    a1, a2 = key("a", "1"), key("a", "2")
    for name in (a1, a2):
        assert run.obtain(name, ("t", name), ask(name, clock)) is None
    _until(lambda: set(custom.started) == {a1, a2})  # a1 still runs its own queries
    assert not notified.keys
    for name in (a1, a2):
        custom.gate(name).set()
    _until(lambda: {a1, a2} <= set(notified.keys))
    assert run.waiting() == 0
    run.shutdown()


def test_looks_in_no_lane_run_side_by_side(lanes: Lanes) -> None:
    clock = Clock()
    run, _, notified = runner(lanes, clock, workers=2)
    first, second = key("-", "1"), key("-", "2")
    for name in (first, second):
        assert run.obtain(name, ("t", name), ask(name, clock)) is None
    _until(lambda: set(lanes.started) == {first, second})  # neither waits for the other
    for name in (first, second):
        lanes.gate(name).set()
    _until(lambda: {first, second} <= set(notified.keys))
    run.shutdown()


@pytest.mark.parametrize("how", ["crash", "leadership lost"])
def test_a_lane_is_free_again_after_a_crash_or_losing_leadership(lanes: Lanes, how: str) -> None:
    clock = Clock()
    run, _, notified = runner(lanes, clock, workers=1)
    a1, a2, later = key("a", "1"), key("a", "2"), key("a", "3")
    for name in (a1, a2):
        assert run.obtain(name, ("t", name), ask(name, clock)) is None
    _until(lambda: lanes.started == [a1])
    if how == "crash":
        lanes.crash.add(a1)
    else:
        run.clear()  # the waiting a2 is dropped with every other look
    lanes.gate(a1).set()
    lanes.gate(a2).set()
    lanes.gate(later).set()
    if how == "crash":
        _until(lambda: a2 in notified.keys)  # the crash answered with an error, a2 ran
        crashed = answered(run, a1, clock).evaluation("error-rate")
        assert crashed.outcome is Outcome.ERROR
        assert "a bug in the analysis" in crashed.message
    assert run.obtain(later, ("t", later), ask(later, clock)) is None
    _until(lambda: later in notified.keys)  # the lane is not stuck behind a1
    assert (a2 in lanes.started) is (how == "crash")
    run.shutdown()


def test_the_analyzer_puts_rollouts_of_one_look_group_in_one_lane() -> None:
    def analyzer(size: int) -> Analyzer:
        prometheus = FakePrometheus({})
        looks = LookSource(prometheus, period=timedelta(seconds=5), lag=timedelta(seconds=2),
                           window=timedelta(seconds=60), group_size=size)  # fmt: skip
        return Analyzer(prometheus, looks=looks)

    other = Subject("fraud", "other", "knative", "other-00002", "other-00001", "knative-otel",
                    timedelta(seconds=60))  # fmt: skip
    custom = CheckDefinition(name="fpr", builtin=None, query="sum(fpr)",
                             direction="lowerIsBetter", absolute_limit=0.1)  # fmt: skip
    at = Clock()()
    shared = analyzer(2)
    assert shared.lane(SUBJECT, (CHECK,), at) == shared.lane(other, (CHECK,), at)
    alone = analyzer(1)
    assert alone.lane(SUBJECT, (CHECK,), at) != alone.lane(other, (CHECK,), at)
    assert shared.lane(SUBJECT, (custom,), at) is None  # reads no looks: waits on nothing


def test_the_analyzer_reads_its_looks_first_and_keeps_the_checks_order() -> None:
    events: list[str] = []

    class Recorded(FakePrometheus):
        def query(self, promql: str, at: datetime) -> QueryResult:
            events.append(promql)
            return super().query(promql, at)

    prometheus = Recorded({})
    looks = LookSource(prometheus, period=timedelta(seconds=5), lag=timedelta(seconds=2),
                       window=timedelta(seconds=60))  # fmt: skip
    analyzer = Analyzer(prometheus, looks=looks)
    custom = CheckDefinition(name="fpr", builtin=None, query="sum(fpr)",
                             direction="lowerIsBetter", absolute_limit=0.1)  # fmt: skip
    done = analyzer.analyze(SUBJECT, (custom, CHECK), {}, Clock()(), grace=False,
                            looks_read=lambda: events.append("looks read"))  # fmt: skip
    # every query of the looks before, the custom check's own after
    assert events.index("looks read") == looks.queries_sent
    assert "sum(fpr)" in events[events.index("looks read") :]
    assert [e.check for e in done.evaluations] == ["fpr", "error-rate"]


def test_looks_that_waited_for_their_lane_share_its_leading_looks_time(lanes: Lanes) -> None:
    """The controller's setting (``at_start``): a look asked for before its lane's last
    leading look started is evaluated at that look's time (its round fetched what it
    reads); a look asked for later leads, evaluated when it starts. So a lane whose rounds
    are slower than the look period costs one round per generation of looks, not one per
    look; and no look is evaluated earlier than it was asked for."""
    clock = Clock()
    run, _, notified = runner(lanes, clock, workers=2, at_start=True)
    t0 = clock()
    a1, a2, a3, a4, a5 = (key("a", str(i)) for i in range(1, 6))
    assert run.obtain(a1, ("t", a1), ask(a1, clock)) is None  # leads at once
    _until(lambda: a1 in lanes.started)
    for name in (a2, a3):  # asked while a1's round runs
        clock.advance(1)
        assert run.obtain(name, ("t", name), ask(name, clock)) is None
    clock.advance(20)  # a1's round is slow
    second = clock()
    lanes.gate(a1).set()
    _until(lambda: a2 in lanes.started)  # a2 leads the next generation, now
    clock.advance(1)
    assert run.obtain(a4, ("t", a4), ask(a4, clock)) is None  # asked while a2's round runs
    clock.advance(20)
    third = clock()
    for name in (a2, a3):
        lanes.gate(name).set()
    _until(lambda: a4 in lanes.started)
    lanes.gate(a4).set()
    _until(lambda: {a1, a2, a3, a4} <= set(notified.keys))
    assert lanes.evaluated_at == {a1: t0, a2: second, a3: second, a4: third}
    for name in (a1, a2, a3, a4):
        found = run.obtain(name, ("t", name), ask(name, clock))
        assert found is not None
        assert found[0].at == lanes.evaluated_at[name]  # the request answered says so
    # the lane empty, a new look leads again, at its own time
    clock.advance(5)
    assert run.obtain(a5, ("t", a5), ask(a5, clock)) is None
    lanes.gate(a5).set()
    _until(lambda: a5 in notified.keys)
    assert lanes.evaluated_at[a5] == clock()
    run.shutdown()
