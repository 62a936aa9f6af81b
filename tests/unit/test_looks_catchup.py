"""Catching up after a restart or a failover (analysis.looks, the analyzer and the analysis
runner): what it costs Prometheus, what the rollouts conclude, and what the looks keep in
memory while rollouts run.

Prometheus is the fake of ``test_looks``, which counts every query it is sent; a *round*
is one grouped raw-counter query (with it go the histogram and the window queries), a
*restart check* the ``resets()`` query that guards a joined look. Clocks are the
evaluation times given to the analyzer.
"""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest

from analysis.looks import IDLE_LOOKS, OLDER_KEPT, RECENT_LOOKS, WAITED_KEPT, LookSource
from analysis.runner import Analyzer
from analysis.types import (
    BadQuery,
    CheckDefinition,
    CheckMemory,
    Outcome,
    QueryResult,
    Series,
    StepAnalysis,
    Subject,
)
from canary.analysis_worker import AnalysisRequest, AnalysisRunner, CircuitBreaker, Unanswered
from tests.unit.test_looks import AT, SECOND, FakePrometheus, Revision, subject
from tests.unit.test_runner_sequential import BASE, HEALTHY, errors, latency

PERIOD = SECOND * 5
WAIT = 30.0  # seconds; reached only when a thread never gets there


def source(prometheus: FakePrometheus) -> LookSource:
    return LookSource(prometheus, period=PERIOD, lag=SECOND * 2, window=SECOND * 60)


def rounds(prometheus: FakePrometheus) -> int:
    return sum(1 for q in prometheus.sent if _kind(q) == "round")


def restart_checks(prometheus: FakePrometheus) -> int:
    return sum(1 for q in prometheus.sent if _kind(q) == "restart-check")


def _kind(promql: str) -> str:
    if promql.startswith("resets("):
        return "restart-check"
    raw = "sum by" not in promql and "histogram_quantile" not in promql
    return "round" if raw and "_bucket" not in promql else "other"


def fleet(
    rollouts: int, canary: Revision = HEALTHY, cls: type[FakePrometheus] = FakePrometheus
) -> tuple[FakePrometheus, list[Subject]]:
    """``rollouts`` rollouts in a namespace each, the canary serving ``canary``'s numbers
    and the baseline nine times the canary's traffic at 1 % 5xx (per 5 s look)."""
    revisions: dict[tuple[str, str], Revision] = {}
    subjects = []
    for i in range(rollouts):
        ns = f"team-{i}"
        revisions[(ns, f"m{i}-00002")] = canary
        revisions[(ns, f"m{i}-00001")] = BASE
        subjects.append(subject(ns, f"m{i}-00002", f"m{i}-00001"))
    return cls(revisions), subjects


CHECKS = (errors(), latency())


def evaluate(
    analyzer: Analyzer,
    s: Subject,
    memory: Mapping[str, CheckMemory],
    look: int,
    checks: Sequence[CheckDefinition] = CHECKS,
) -> StepAnalysis:
    """The evaluation just after look ``look`` (its grid time AT + 5 s * look) is due."""
    return analyzer.analyze(s, checks, memory, AT + PERIOD * look + SECOND * 2, grace=False)


def before_the_crash(
    prometheus: FakePrometheus, subjects: Sequence[Subject], looks: int = 2
) -> list[Mapping[str, CheckMemory]]:
    """Every rollout read looks 0 .. looks - 1; the controller then stops."""
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    memories: list[Mapping[str, CheckMemory]] = []
    for s in subjects:
        memory: Mapping[str, CheckMemory] = {}
        for i in range(looks):
            memory = evaluate(analyzer, s, memory, i).memory
        memories.append(memory)
    prometheus.sent.clear()
    return memories


# --- what a restart costs Prometheus --------------------------------------------------------


@pytest.mark.parametrize(
    ("rollouts", "missed"),
    [(1, 1), (1, 2), (1, 120), (20, 2), (20, 12), (20, 120), (100, 12), (100, 120)],
)
def test_a_restart_costs_two_rounds_per_group_whatever_was_missed_by_how_many(
    rollouts: int, missed: int
) -> None:
    """Back from a restart, every rollout is asked for (the analysis runner tells the
    looks before it runs them, with the evidence each starts from), and each reads the
    ``missed`` looks at once: one round at the grid time they last read, one at the latest,
    and one restart check, whatever the number of rollouts or of looks missed. Each rollout
    still reads every missed look."""
    prometheus, subjects = fleet(rollouts)
    memories = before_the_crash(prometheus, subjects)
    analyzer = Analyzer(prometheus, looks=source(prometheus))  # a new process
    last = 1 + missed
    for s, m in zip(subjects, memories, strict=True):
        analyzer.expect(s, CHECKS, AT + PERIOD * last, m)
    results = [evaluate(analyzer, s, m, last) for s, m in zip(subjects, memories, strict=True)]
    assert rounds(prometheus) == 2
    assert restart_checks(prometheus) == (1 if missed > 1 else 0)
    assert len(prometheus.sent) <= 2 * 5 + 1
    for result in results:
        assert result.verdict is not Outcome.ERROR
        for check in ("error-rate", "latency-p99"):
            detail = result.evaluation(check).detail
            assert detail["looks_read"] == missed
            assert detail.get("joined_looks", 1) == missed


@pytest.mark.parametrize("missed", [2, 120])
def test_rollouts_not_announced_cost_a_round_each_however_many_looks_they_missed(
    missed: int,
) -> None:
    """Without being told who is coming, each rollout widens the two instants' rounds once
    (for its own revisions only): the cost grows with the rollouts, never with the looks
    missed."""
    prometheus, subjects = fleet(20)
    memories = before_the_crash(prometheus, subjects)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    for s, m in zip(subjects, memories, strict=True):
        evaluate(analyzer, s, m, 1 + missed)
    assert rounds(prometheus) == 2 * 20
    assert restart_checks(prometheus) == 20


@dataclass
class GatedPrometheus(FakePrometheus):
    """Holds its first answer until ``gate`` opens: the engine queues every rollout while
    the first look is still waiting for Prometheus."""

    gate: threading.Event | None = None

    def query(self, promql: str, at: datetime) -> QueryResult:
        if self.gate is not None:
            assert self.gate.wait(WAIT)
        return super().query(promql, at)


@pytest.mark.parametrize(("rollouts", "missed"), [(10, 12), (10, 120), (60, 12), (60, 120)])
def test_through_the_analysis_runner_a_restart_costs_at_most_two_generations_of_rounds(
    rollouts: int, missed: int
) -> None:
    """The controller's path: the engine asks the runner for every rollout's look (one
    starts at once and waits on Prometheus while the others are queued), and the runner
    tells the looks about each before it runs. The first look's rounds cover its own
    rollout; the next cover everyone queued meanwhile: at most four rounds and two restart
    checks, and every rollout evaluated on every look it missed."""
    prometheus, subjects = fleet(rollouts, cls=GatedPrometheus)
    memories = before_the_crash(prometheus, subjects)
    assert isinstance(prometheus, GatedPrometheus)
    prometheus.gate = threading.Event()
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    runner = AnalysisRunner(
        analyzer,
        fallback=lambda why: Analyzer(Unanswered(why)),
        breaker=CircuitBreaker(failures=1000, cooldown=timedelta(seconds=30)),
        deadline=timedelta(minutes=10),
        workers=2,
    )
    done = threading.Semaphore(0)
    runner.bind(lambda _key, _failed: done.release())
    now = AT + PERIOD * (1 + missed) + SECOND * 2
    asked = []
    try:
        for s, memory in zip(subjects, memories, strict=True):
            key, ticket = (s.namespace, s.isvc), ("ticket", s.namespace)
            request = AnalysisRequest(s, CHECKS, memory, now, False, False)
            assert runner.obtain(key, ticket, request) is None
            asked.append((key, ticket, request))
        prometheus.gate.set()
        for _ in asked:
            assert done.acquire(timeout=WAIT)
        for key, ticket, request in asked:
            answer = runner.obtain(key, ticket, request)
            assert answer is not None
            assert answer[1].evaluation("error-rate").detail["looks_read"] == missed
    finally:
        runner.shutdown()
    assert rounds(prometheus) <= 4
    assert restart_checks(prometheus) <= 2


@dataclass
class HeldPrometheus(FakePrometheus):
    """Holds every query until ``gate`` opens, and says when the first one arrived."""

    gate: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.arrived.set()
        assert self.gate.wait(WAIT)
        return super().query(promql, at)


@pytest.mark.parametrize("at_start", [True, False])
def test_a_lane_that_fell_behind_costs_a_round_per_grid_time_not_one_per_look(
    at_start: bool,
) -> None:
    """A loaded Prometheus holds one look of a group while the group's other rollouts ask
    for theirs, each a grid time later than the one before, and they queue in the group's
    lane. Evaluated when they start (the controller's setting), they read the grid time at
    hand then: one round for the whole queue, and each rollout's evidence reaches the time
    it was evaluated at. Evaluated at the times they were asked for, each costs a round of
    its own grid time (a queue as long as a round is slow would never shrink)."""
    prometheus, subjects = fleet(12, cls=HeldPrometheus)
    assert isinstance(prometheus, HeldPrometheus)
    prometheus.gate.set()
    memories = before_the_crash(prometheus, subjects)  # through look 1
    prometheus.gate.clear()
    prometheus.arrived.clear()
    clock = [AT + PERIOD * 2 + SECOND * 2]
    runner = AnalysisRunner(
        Analyzer(prometheus, looks=source(prometheus)),
        fallback=lambda why: Analyzer(Unanswered(why)),
        breaker=CircuitBreaker(failures=1000, cooldown=timedelta(seconds=30)),
        deadline=timedelta(minutes=10),
        workers=4,
        clock=lambda: clock[0],
        at_start=at_start,
    )
    done = threading.Semaphore(0)
    runner.bind(lambda _key, _failed: done.release())
    asked = []
    try:
        for i, (s, memory) in enumerate(zip(subjects, memories, strict=True)):
            clock[0] = AT + PERIOD * (2 + i) + SECOND * 2  # look 2 + i is due
            key, ticket = (s.namespace, s.isvc), ("ticket", s.namespace)
            request = AnalysisRequest(s, CHECKS, memory, clock[0], False, False)
            assert runner.obtain(key, ticket, request) is None
            asked.append((key, ticket, request))
            if i == 0:
                assert prometheus.arrived.wait(WAIT)  # the first look runs, and is held
        assert runner.waiting() == len(subjects) - 1  # the others wait in the group's lane
        clock[0] += PERIOD * 3  # Prometheus answers a while later
        evaluated_at = clock[0]
        sent = len(prometheus.sent)
        prometheus.gate.set()
        for _ in asked:
            assert done.acquire(timeout=WAIT)
        for n, (key, ticket, request) in enumerate(asked):
            answer = runner.obtain(key, ticket, request)
            assert answer is not None
            started, result = answer
            assert result.verdict is not Outcome.ERROR
            if at_start and n > 0:
                assert started.at == evaluated_at
                assert result.evaluation("error-rate").detail["looks_read"] == len(subjects) + 3
            else:
                assert started == request
    finally:
        runner.shutdown()
    queued = [q for q in prometheus.sent[sent:] if _kind(q) == "round"]
    if at_start:
        # the held look's two, then one at the queue's start and one at the latest
        assert rounds(prometheus) <= 4
    else:
        assert len(queued) >= len(subjects) - 1


def test_a_request_started_later_is_evaluated_then_its_grace_judged_then() -> None:
    s = subject("team", "m-00002", "m-00001")
    asked = AT + SECOND * 2
    request = AnalysisRequest(s, CHECKS, {}, asked, True, False, grace_until=asked + SECOND * 10)
    assert request.started_at(asked - SECOND) is request  # never earlier than asked
    assert request.started_at(asked + SECOND * 5) == replace(request, at=asked + SECOND * 5)
    later = request.started_at(asked + SECOND * 10)
    assert (later.at, later.grace) == (asked + SECOND * 10, False)
    unknown = replace(request, grace_until=None).started_at(asked + SECOND * 60)
    assert (unknown.at, unknown.grace) == (asked + SECOND * 60, True)


# --- what the rollouts conclude --------------------------------------------------------------


@dataclass
class OnsetPrometheus(FakePrometheus):
    """The canaries serve ``bad`` numbers from ``onset`` on (their counters keep what they
    counted before). ``replay``: the restart check says every counter restarted, so the
    looks are read one by one, as before joining existed."""

    onset: datetime | None = None
    bad: Revision | None = None
    replay: bool = False

    def query(self, promql: str, at: datetime) -> QueryResult:
        if promql.startswith("resets(") and self.replay:
            self.sent.append(promql)
            every = tuple(Series({"namespace": ns, "revision": name}, 1.0, at.timestamp())
                          for ns, name in self.revisions)  # fmt: skip
            return QueryResult(every, "f" * 64, self.url)
        if self.onset is None or self.bad is None or promql.startswith("resets("):
            return super().query(promql, at)
        looks, healthy = self.looks_since_start(at), self.looks_since_start(min(at, self.onset))
        bad = self.bad
        saved = self.revisions
        self.revisions = {
            ident: replace(rev, errors=(rev.errors * healthy + bad.errors * (looks - healthy))
                           / looks) if ident[1].endswith("-00002") else rev
            for ident, rev in saved.items()
        }  # fmt: skip
        try:
            return super().query(promql, at)
        finally:
            self.revisions = saved


def looks_to_roll_back(bad: Revision, missed: int, *, replay: bool, more: int = 20) -> int | None:
    """A rollout read 12 healthy looks; the controller stops and the canary turns ``bad``;
    ``missed`` looks later it is back. How many evaluations after the one that catches up
    until the rollout is rolled back (0: that one; None: not within ``more``)."""
    prometheus, subjects = fleet(1, cls=OnsetPrometheus)
    assert isinstance(prometheus, OnsetPrometheus)
    prometheus.replay = replay
    (memory,) = before_the_crash(prometheus, subjects, looks=12)
    prometheus.onset, prometheus.bad = AT + PERIOD * 11, bad
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    for extra in range(more + 1):
        result = evaluate(analyzer, subjects[0], memory, 11 + missed + extra, [errors()])
        if result.verdict is Outcome.FAILED:
            assert result.fast_fail
            return extra
        memory = result.memory
    return None


@pytest.mark.parametrize(
    ("canary", "missed", "joined_within", "replayed_within"),
    [
        pytest.param(Revision(600, 30), 12, 0, 0, id="5x-12-missed"),
        pytest.param(Revision(600, 30), 120, 0, 0, id="5x-120-missed"),
        pytest.param(Revision(600, 18), 24, 0, 0, id="3x-24-missed"),
        pytest.param(Revision(600, 12), 24, 12, 0, id="2x-24-missed"),
        pytest.param(Revision(600, 12), 120, 12, 0, id="2x-120-missed"),
        pytest.param(HEALTHY, 120, None, None, id="healthy-120-missed"),
        pytest.param(Revision(600, 3), 120, None, None, id="better-120-missed"),
    ],
)
def test_the_catch_up_look_reaches_the_replays_verdict(
    canary: Revision, missed: int, joined_within: int | None, replayed_within: int | None
) -> None:
    """A canary that turned bad while the controller was away is rolled back when it is
    back, as reading the missed looks one by one would: at once when it is clearly bad
    (5x and 3x the baseline's 5xx). A 2x canary is rolled back too, within a minute of
    looks: the joined look is tempered as one draw of the over-dispersion, so it weighs
    less than the periods one by one. A healthy or better canary is never rolled back."""
    joined = looks_to_roll_back(canary, missed, replay=False)
    replayed = looks_to_roll_back(canary, missed, replay=True)
    if joined_within is None:
        assert joined is None
        assert replayed is None
        return
    assert joined is not None
    assert joined <= joined_within
    assert replayed is not None
    assert replayed_within is not None
    assert replayed <= replayed_within


def test_a_counter_restart_inside_the_missed_looks_is_read_look_by_look() -> None:
    """A pod that restarted while the controller was away: one difference across its
    restart would count it wrong (here, only what it counted since), so the restart check
    sends the rollout back to reading each look, and it counts exactly what a controller
    that never stopped counted."""
    prometheus, subjects = fleet(1)
    (memory,) = before_the_crash(prometheus, subjects)
    prometheus.restart_at = AT + PERIOD * 6
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    result = evaluate(analyzer, subjects[0], memory, 13, [errors()])
    detail = result.evaluation("error-rate").detail
    assert detail["looks_read"] == 12
    assert "joined_looks" not in detail
    assert restart_checks(prometheus) == 1
    assert rounds(prometheus) == 13  # the grid time last read and the 12 missed ones
    state = result.memory["error-rate"].sequential
    assert state is not None
    assert state.canary_requests == 14 * 600  # 2 looks before, 12 after, none lost


@pytest.mark.parametrize("age", [1.0, 8.0, 110.0, 300.0])
def test_a_restart_just_after_an_old_sample_at_the_joins_start_is_still_seen(age: float) -> None:
    """The value read at the start of a joined look may be a sample older than a period
    (a slow scrape, a lagging remote store): a pod that restarted just after the start
    fell between that sample and the next, so the restart check's range reaches back as
    far as a sample read may be old: the maximum sample age, or further when the answer
    gives the time of an older one."""
    prometheus, subjects = fleet(1)
    (memory,) = before_the_crash(prometheus, subjects)
    prometheus.ages = dict.fromkeys(prometheus.revisions, age)
    prometheus.restart_at = AT + PERIOD + SECOND * 1.5  # just after the last look read
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    result = evaluate(analyzer, subjects[0], memory, 13, [errors()])
    detail = result.evaluation("error-rate").detail
    assert restart_checks(prometheus) == 1
    assert "joined_looks" not in detail  # read look by look
    assert detail["looks_read"] == 12


@dataclass
class NoResetsPrometheus(FakePrometheus):
    """A Prometheus that refuses the restart check."""

    def query(self, promql: str, at: datetime) -> QueryResult:
        if promql.startswith("resets("):
            self.sent.append(promql)
            raise BadQuery("unknown function resets", query=promql)
        return super().query(promql, at)


def test_when_prometheus_cannot_tell_about_restarts_the_looks_are_read_one_by_one() -> None:
    prometheus, subjects = fleet(1, cls=NoResetsPrometheus)
    (memory,) = before_the_crash(prometheus, subjects)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    result = evaluate(analyzer, subjects[0], memory, 7, [errors()])
    assert result.verdict is not Outcome.ERROR
    assert result.evaluation("error-rate").detail["looks_read"] == 6
    assert rounds(prometheus) == 7


def test_a_rollout_a_look_or_two_late_reads_them_one_by_one_at_no_cost() -> None:
    """A slow tick: the snapshots are still cached (another rollout read them), so the
    late rollout reads each look, with no round and no restart check of its own."""
    prometheus, (late, punctual) = fleet(2)
    memories = before_the_crash(prometheus, [late, punctual])
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    analyzer.expect(late, CHECKS, AT)
    memory = memories[1]
    for look in (2, 3):
        memory = evaluate(analyzer, punctual, memory, look).memory
    sent = len(prometheus.sent)
    result = evaluate(analyzer, late, memories[0], 3)
    assert len(prometheus.sent) == sent
    detail = result.evaluation("error-rate").detail
    assert detail["looks_read"] == 2
    assert "joined_looks" not in detail


@pytest.mark.parametrize("behind", [RECENT_LOOKS + IDLE_LOOKS + 1, 12, 40])
def test_a_rollout_left_behind_costs_no_round_at_the_time_it_last_read(behind: int) -> None:
    """A loaded Prometheus: one rollout's look waits while the group's rounds move on
    ``behind`` grid times. When it runs, it reads what it missed as one look from the
    snapshot where its last look ended, still at hand, not from a round of its own at that
    old time (which would hold every other rollout of the group back by one more round)."""
    prometheus, (late, punctual) = fleet(2)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    memories: list[Mapping[str, CheckMemory]] = [{}, {}]
    for look in range(2):
        for i, s in enumerate((late, punctual)):
            memories[i] = evaluate(analyzer, s, memories[i], look).memory
    for look in range(2, 2 + behind):
        memories[1] = evaluate(analyzer, punctual, memories[1], look).memory
    sent = rounds(prometheus)
    result = evaluate(analyzer, late, memories[0], 1 + behind)
    assert rounds(prometheus) == sent
    detail = result.evaluation("error-rate").detail
    assert detail["joined_looks"] == behind
    assert result.evaluation("error-rate").outcome is not Outcome.ERROR


def test_snapshots_kept_for_rollouts_left_behind_are_bounded() -> None:
    """Twenty rollouts each left behind at a grid time of its own: the group keeps the
    snapshots of the newest few of those times only (the others cost a round when their
    rollouts come back), so a long queue cannot grow the looks' memory without bound."""
    prometheus, subjects = fleet(21)
    looks_source = source(prometheus)
    for s in subjects:
        looks_source.expect(s, AT)
    punctual, others = subjects[0], subjects[1:]
    for look in range(len(others) + 10):
        looks_source.look(punctual, AT + PERIOD * look)
        if look < len(others):
            looks_source.look(others[look], AT + PERIOD * look)  # its last look
    assert looks_source.held() <= RECENT_LOOKS + OLDER_KEPT + WAITED_KEPT
    assert looks_source.held() >= RECENT_LOOKS + WAITED_KEPT


@dataclass
class TimedPrometheus(FakePrometheus):
    """Also records the time each query was asked at."""

    asked: list[tuple[str, datetime]] = field(default_factory=list)

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.asked.append((promql, at))
        return super().query(promql, at)


def selected(promql: str, subjects: Sequence[Subject]) -> set[str]:
    """The namespaces of the ``subjects`` whose canary a query selects."""
    names = {s.namespace: s.canary_revision for s in subjects}
    return {ns for ns, name in names.items() if f'"{name}' in promql or f"|{name}" in promql}


def test_rollouts_left_behind_at_times_of_their_own_each_cost_a_round_of_their_own_only() -> None:
    """A loaded Prometheus has left rollouts behind, each at a grid time of its own, more
    of them than the group keeps snapshots for. When each comes back, the round at its old
    grid time and its restart check select its own revisions only, not every revision of
    the group: a round for the whole group at an old time costs what a new grid time's
    round costs, once per rollout left behind, which puts the others further behind (the
    group then never catches up). Each still reads every look it missed, as one look."""
    prometheus, subjects = fleet(WAITED_KEPT + 6, cls=TimedPrometheus)
    assert isinstance(prometheus, TimedPrometheus)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    looks = analyzer.looks
    assert looks is not None
    punctual, late = subjects[0], subjects[1:]
    memories: list[Mapping[str, CheckMemory]] = [{} for _ in subjects]
    last = len(late) + 12
    for look in range(last):
        memories[0] = evaluate(analyzer, punctual, memories[0], look).memory
        for i, s in enumerate(late):
            if look <= i + 1:  # late[i] last reads the look ending at grid time i + 1
                memories[i + 1] = evaluate(analyzer, s, memories[i + 1], look).memory
    for s, memory in zip(late, memories[1:], strict=True):
        analyzer.expect(s, CHECKS, AT + PERIOD * last, memory)  # the runner announces each
    before = looks.queries_by_kind()
    older_rounds = sent = 0
    for i, s in enumerate(late):
        prometheus.asked.clear()
        result = evaluate(analyzer, s, memories[i + 1], last)
        detail = result.evaluation("error-rate").detail
        assert detail.get("joined_looks") == last - (i + 1)
        assert result.verdict is not Outcome.ERROR
        sent += len(prometheus.asked)
        recent = AT + PERIOD * (last - RECENT_LOOKS)
        old = [promql for promql, at in prometheus.asked if at < recent]
        # at most one round, at its own old time, however many checks read the look
        assert len(old) <= 5
        assert {at for _, at in prometheus.asked if at < recent} <= {AT + PERIOD * (i + 1)}
        checks = [promql for promql, _ in prometheus.asked if _kind(promql) == "restart-check"]
        for promql in [*old, *checks]:
            assert selected(promql, subjects) == {s.namespace}
        older_rounds += len(old) // 5
    after = looks.queries_by_kind()
    assert after["restart_check"] - before["restart_check"] == len(late)
    assert after["older"] - before["older"] == 5 * older_rounds
    # the snapshots kept for WAITED_KEPT of those times cost no round
    assert older_rounds <= len(late) - WAITED_KEPT + 1
    assert sum(after.values()) - sum(before.values()) == sent
    assert sum(after.values()) == looks.queries_sent


def test_rollouts_back_from_a_restart_share_the_round_at_the_time_they_last_read() -> None:
    """After a restart, half the rollouts last read one grid time and half the next one:
    announced with their evidence, each half shares one round at its time (and one restart
    check), which selects that half's revisions only."""
    prometheus, subjects = fleet(10, cls=TimedPrometheus)
    assert isinstance(prometheus, TimedPrometheus)
    first, second = subjects[:5], subjects[5:]
    memories = before_the_crash(prometheus, first, looks=2)
    memories += before_the_crash(prometheus, second, looks=3)
    analyzer = Analyzer(prometheus, looks=source(prometheus))  # a new process
    last = 20
    for s, m in zip(subjects, memories, strict=True):
        analyzer.expect(s, CHECKS, AT + PERIOD * last, m)
    prometheus.sent.clear()
    prometheus.asked.clear()
    for s, m in zip(subjects, memories, strict=True):
        result = evaluate(analyzer, s, m, last)
        assert result.verdict is not Outcome.ERROR
    assert rounds(prometheus) == 3  # one at each half's time, one at the latest
    assert restart_checks(prometheus) == 2
    halves = {AT + PERIOD: first, AT + PERIOD * 2: second}
    checked = 0
    for promql, at in prometheus.asked:
        if _kind(promql) == "restart-check":
            assert selected(promql, subjects) in ({x.namespace for x in h} for h in halves.values())
        elif at in halves:
            assert selected(promql, subjects) == {x.namespace for x in halves[at]}
            checked += 1
    assert checked == 2 * 5  # both halves' rounds, five queries each


# --- what the looks keep in memory -----------------------------------------------------------


def held_bytes(looks: int, rollouts: int = 10) -> tuple[int, int]:
    """Bytes the looks still hold (tracemalloc, after a GC) when ``rollouts`` rollouts have
    each read ``looks`` looks, and how many snapshots they keep."""
    prometheus, subjects = fleet(rollouts)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        looks_source = source(prometheus)
        for s in subjects:
            looks_source.expect(s, AT)
        for i in range(looks):
            for s in subjects:
                looks_source.look(s, AT + PERIOD * i)
            prometheus.sent.clear()  # the fake's own record of queries
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        snapshots = looks_source.held()
        del looks_source
    finally:
        tracemalloc.stop()
    return held, snapshots


def test_what_the_looks_hold_does_not_grow_with_how_long_rollouts_run() -> None:
    """10 rollouts read every 5 s look for 5 and for 50 minutes: the looks hold about as
    much after the one as after the other (the snapshots of the newest grid times; the
    margin is the interpreter's free lists filling up), where the cache used to keep every
    snapshot up to its 256th (about ten times as much after 50 minutes as after 5)."""
    short, short_snapshots = held_bytes(60)
    long, long_snapshots = held_bytes(600)
    assert short_snapshots == long_snapshots == RECENT_LOOKS
    assert long <= short * 1.25


def test_a_catch_up_snapshot_is_dropped_once_nobody_reads_it() -> None:
    prometheus, subjects = fleet(3)
    memories = before_the_crash(prometheus, subjects)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    looks_source = analyzer.looks
    assert looks_source is not None
    for s, m in zip(subjects, memories, strict=True):  # back 30 looks later
        memories[subjects.index(s)] = evaluate(analyzer, s, m, 31).memory
    assert looks_source.held() == 2  # where they had read, and the latest
    for look in range(32, 32 + RECENT_LOOKS + 1):
        for i, s in enumerate(subjects):
            memories[i] = evaluate(analyzer, s, memories[i], look).memory
    assert looks_source.held() <= RECENT_LOOKS < RECENT_LOOKS + OLDER_KEPT


def test_what_a_rollout_keeps_does_not_grow_with_how_long_it_runs() -> None:
    """The evidence a rollout carries from one evaluation to the next (its checks'
    memory, persisted with it) and the evidence of an evaluation are as large after 400
    looks as after 60."""
    prometheus, (s,) = fleet(1)
    analyzer = Analyzer(prometheus, looks=source(prometheus))
    memory: Mapping[str, CheckMemory] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for look in range(400):
        result = evaluate(analyzer, s, memory, look)
        memory = result.memory
        if look + 1 in (60, 400):
            kept = json.dumps({k: m.to_json() for k, m in memory.items()})
            evidence = json.dumps([e.detail for e in result.evaluations], default=str)
            sizes[look + 1] = (len(kept), len(evidence))
    assert sizes[400][0] <= sizes[60][0] * 1.1
    assert sizes[400][1] <= sizes[60][1] * 1.1
