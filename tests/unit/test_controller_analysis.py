"""Looks off the command path (canary.analysis_worker): the circuit breaker, the guarded
provider and the runner's deadline, with a fake clock and analyzers that answer when the
test lets them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis.looks import LookSource
from analysis.runner import Analyzer
from analysis.types import (
    BadQuery,
    CheckDefinition,
    CheckMemory,
    NoData,
    Outcome,
    ProviderError,
    QueryResult,
    StepAnalysis,
    Subject,
    Unreachable,
)
from canary.analysis_worker import (
    AnalysisRequest,
    AnalysisRunner,
    CircuitBreaker,
    GuardedProvider,
    Unanswered,
    analysis_ticket,
)

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
KEY = ("fraud", "scorer")
WAIT = 10.0  # seconds; reached only when a thread never gets there


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


SUBJECT = Subject(
    namespace="fraud",
    isvc="scorer",
    mode="knative",
    canary_revision="scorer-00002",
    baseline_revision="scorer-00001",
    metric_profile="knative-otel",
    window=timedelta(seconds=60),
)
CHECK = CheckDefinition(
    name="error-rate",
    builtin="error-rate",
    query=None,
    direction="lowerIsBetter",
    relative_tolerance=0.5,
    min_samples=100,
    alpha_fail=0.01,
    alpha_pass=0.05,
)


def request(at: datetime = T0, memory: Mapping[str, CheckMemory] | None = None) -> AnalysisRequest:
    return AnalysisRequest(SUBJECT, (CHECK,), memory or {}, at, False, False)


def passing(at: datetime) -> StepAnalysis:
    return StepAnalysis(at, (), Outcome.SUCCESSFUL, True, False, "all good", {})


def failing_analyzer(reason: str) -> Analyzer:
    source = Unanswered(reason, "http://prometheus:9090")
    looks = LookSource(source, period=timedelta(seconds=5), lag=timedelta(seconds=2),
                       window=timedelta(seconds=60))  # fmt: skip
    return Analyzer(source, looks=looks)


class Held:
    """An analyzer that answers only when the test releases it (a hung Prometheus)."""

    def __init__(self, verdict: Outcome = Outcome.SUCCESSFUL) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.verdict = verdict

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
        self.calls += 1
        self.entered.set()
        self.release.wait(WAIT)
        return replace(passing(at), verdict=self.verdict)


class Notified:
    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []
        self.failed: list[bool] = []
        self.event = threading.Event()

    def __call__(self, key: tuple[str, str], failed: bool) -> None:
        self.keys.append(key)
        self.failed.append(failed)
        self.event.set()


def runner(
    analyzer: Any,
    clock: Clock,
    *,
    failures: int = 3,
    deadline: float = 10.0,
    workers: int = 4,
    on_deadline: Any = lambda: None,
    at_start: bool = False,
) -> tuple[AnalysisRunner, CircuitBreaker, Notified]:
    breaker = CircuitBreaker(failures=failures, cooldown=timedelta(seconds=30), clock=clock)
    built = AnalysisRunner(
        analyzer,
        fallback=failing_analyzer,
        breaker=breaker,
        deadline=timedelta(seconds=deadline),
        clock=clock,
        workers=workers,
        on_deadline=on_deadline,
        at_start=at_start,
    )
    notified = Notified()
    built.bind(notified)
    return built, breaker, notified


# ---------------------------------------------------------------------------------------
# The circuit breaker
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "states"),
    [
        pytest.param("FF", ["closed", "closed"], id="below-the-limit"),
        pytest.param("FFF", ["closed", "closed", "open"], id="opens-at-the-limit"),
        pytest.param(
            "FFOFF",
            ["closed", "closed", "closed", "closed", "closed"],
            id="a-success-resets-the-count",
        ),
        pytest.param(
            "FFF+F", ["closed", "closed", "open", "half-open", "open"], id="a-failed-probe-reopens"
        ),
        pytest.param(
            "FFF+O", ["closed", "closed", "open", "half-open", "closed"], id="a-good-probe-closes"
        ),
        pytest.param(
            "FFF+OF",
            ["closed", "closed", "open", "half-open", "closed", "closed"],
            id="closed-again-counts-from-zero",
        ),
    ],
)
def test_the_breaker_opens_after_consecutive_failures_and_probes_after_cooldown(
    script: str, states: list[str]
) -> None:
    """F a failure, O a success, + the cooldown passing; each state is read after its step
    (+ shows the state the next call finds)."""
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=timedelta(seconds=30), clock=clock)
    seen = []
    for step in script:
        if step == "+":
            clock.advance(30)
            seen.append(breaker.state)
            continue
        breaker.record(step == "O", "timed out")
        seen.append(breaker.state)
    assert seen == states
    assert breaker.allow() is (seen[-1] != "open")


def test_the_breaker_says_why_and_until_when() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=timedelta(seconds=30), clock=clock)
    breaker.record(False, "Prometheus did not answer within 5 s")
    why = breaker.why_open()
    assert "1 consecutive failures" in why
    assert "did not answer" in why
    assert (T0 + timedelta(seconds=30)).isoformat() in why


@pytest.mark.parametrize(
    ("failures", "cooldown", "message"),
    [(0, 30, "failures must be >= 1"), (3, 0, "cooldown must be positive")],
)
def test_the_breaker_refuses_bad_settings(failures: int, cooldown: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(failures=failures, cooldown=timedelta(seconds=cooldown))


# ---------------------------------------------------------------------------------------
# The guarded provider
# ---------------------------------------------------------------------------------------


class Scripted:
    url = "http://prometheus:9090"

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent = 0

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.sent += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, QueryResult)
        return answer


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (Unreachable("timed out after 5 s"), True),
        (Unreachable("connection refused"), True),
        (NoData("empty"), False),
        (BadQuery("parse error"), False),
        (ProviderError("a 400 answer"), False),
    ],
    ids=["timeout", "refused", "no-data", "bad-query", "refusal"],
)
def test_only_a_prometheus_that_does_not_answer_counts_against_it(
    error: Exception, counts: bool
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown=timedelta(seconds=30), clock=clock)
    inner = Scripted([error, error, error])
    guarded = GuardedProvider(inner, breaker)
    for _ in range(2):
        with pytest.raises(type(error)):
            guarded.query("up", T0)
    assert (breaker.state == "open") is counts
    with pytest.raises(type(error) if not counts else Unreachable) as raised:
        guarded.query("up", T0)
    assert inner.sent == (2 if counts else 3)  # an open circuit sends nothing
    if counts:
        assert "circuit open" in str(raised.value)
    assert guarded.url == inner.url


# ---------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------


def test_a_look_runs_on_its_own_thread_and_its_answer_is_applied_once() -> None:
    clock = Clock()
    held = Held()
    run, _, notified = runner(held, clock)
    ticket = ("rollout-1", 0)
    assert run.obtain(KEY, ticket, request()) is None  # returns at once: off the worker
    assert held.entered.wait(WAIT)
    assert run.deadline(KEY) == T0 + timedelta(seconds=10)
    assert run.obtain(KEY, ticket, request(T0 + timedelta(seconds=1))) is None  # still running
    assert held.calls == 1  # not asked twice
    held.release.set()
    assert notified.event.wait(WAIT)
    assert notified.keys == [KEY]
    answer = run.obtain(KEY, ticket, request(T0 + timedelta(seconds=2)))
    assert answer is not None
    asked, result = answer
    assert asked.at == T0  # the look's own time, not the time it was collected
    assert result.verdict is Outcome.SUCCESSFUL
    assert run.deadline(KEY) is None


@pytest.mark.parametrize(
    ("verdict", "failed"),
    [
        (Outcome.FAILED, True),
        (Outcome.SUCCESSFUL, False),
        (Outcome.INCONCLUSIVE, False),
        (Outcome.ERROR, False),  # pauses: nothing moves while it waits its turn
    ],
    ids=str,
)
def test_the_end_of_a_failed_look_says_so_to_the_controller(verdict: Outcome, failed: bool) -> None:
    """The controller queues a rollout whose look failed ahead of the others."""
    held = Held(verdict)
    run, _, notified = runner(held, Clock())
    assert run.obtain(KEY, ("rollout-1", 0), request()) is None
    held.release.set()
    assert notified.event.wait(WAIT)
    assert (notified.keys, notified.failed) == ([KEY], [failed])


def test_a_look_past_its_deadline_is_an_error_for_each_check_and_its_late_answer_dropped() -> None:
    clock = Clock()
    held = Held()
    given_up: list[None] = []
    run, breaker, notified = runner(held, clock, on_deadline=lambda: given_up.append(None))
    ticket = ("rollout-1", 0)
    memory = {"error-rate": CheckMemory(consecutive_errors=2)}
    assert run.obtain(KEY, ticket, request(memory=memory)) is None
    assert held.entered.wait(WAIT)
    clock.advance(9)
    assert run.obtain(KEY, ticket, request(clock(), memory=memory)) is None  # not yet
    assert not given_up
    clock.advance(1)
    answer = run.obtain(KEY, ticket, request(clock(), memory=memory))
    assert answer is not None
    asked, result = answer
    assert asked.at == T0
    evaluation = result.evaluation("error-rate")
    assert evaluation.outcome is Outcome.ERROR
    assert "did not finish within 10 s" in evaluation.message
    assert not result.sufficient_data  # never evidence to promote on
    # counted like any error, so the check's own error limit applies
    assert result.memory["error-rate"].consecutive_errors == 3
    assert breaker.state == "closed"  # one strike
    assert len(given_up) == 1  # counted once (kserve_canary_analysis_deadlines_total)
    held.release.set()  # the hung look answers at last: dropped, nobody is queued
    clock.advance(1)
    assert not notified.event.wait(0.5)
    assert run.deadline(KEY) is None


def test_an_answer_for_a_rollout_that_moved_on_is_dropped_and_a_new_look_asked() -> None:
    clock = Clock()
    held = Held()
    held.release.set()
    run, _, notified = runner(held, clock)
    assert run.obtain(KEY, ("rollout-1", "step-0"), request()) is None
    assert notified.event.wait(WAIT)
    notified.event.clear()
    # the rollout advanced (or was aborted and restarted) meanwhile
    assert run.obtain(KEY, ("rollout-1", "step-1"), request(T0 + timedelta(seconds=5))) is None
    assert notified.event.wait(WAIT)
    answer = run.obtain(KEY, ("rollout-1", "step-1"), request())
    assert answer is not None
    assert answer[0].at == T0 + timedelta(seconds=5)
    assert held.calls == 2


def test_with_the_circuit_open_a_look_fails_at_once_without_a_thread() -> None:
    clock = Clock()
    held = Held()
    run, breaker, _ = runner(held, clock, failures=2)
    for _ in range(2):
        breaker.record(False, "Prometheus did not answer within 5 s")
    answer = run.obtain(KEY, ("rollout-1", 0), request())
    assert answer is not None
    _, result = answer
    assert result.evaluation("error-rate").outcome is Outcome.ERROR
    assert not result.sufficient_data
    assert "circuit open" in result.evaluation("error-rate").message
    assert held.calls == 0
    assert run.running() == 0


def test_looks_past_their_deadline_open_the_circuit() -> None:
    clock = Clock()
    held = Held()
    run, breaker, _ = runner(held, clock, failures=2)
    for n in range(2):
        key = ("fraud", f"svc-{n}")
        assert run.obtain(key, ("r", n), request(clock())) is None
        _until(lambda n=n: held.calls == n + 1)  # started: its deadline runs from now
        clock.advance(10)
        assert run.obtain(key, ("r", n), request(clock())) is not None
    assert breaker.state == "open"
    held.release.set()


def _until(check: Any) -> None:
    end = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        end.wait(0.01)
    raise AssertionError("never happened")


def test_a_look_waiting_for_a_thread_is_not_given_up_before_it_starts() -> None:
    clock = Clock()
    held = Held()
    run, breaker, notified = runner(held, clock, workers=1)
    first, second = ("fraud", "first"), ("fraud", "second")
    assert run.obtain(first, ("r", 1), request()) is None
    assert held.entered.wait(WAIT)
    assert run.obtain(second, ("r", 2), request()) is None  # waits for the only thread
    clock.advance(10)
    assert run.obtain(first, ("r", 1), request(clock())) is not None  # given up
    assert run.obtain(second, ("r", 2), request(clock())) is None  # not started: waits
    assert run.deadline(second) == clock() + timedelta(seconds=10)  # look again then
    held.release.set()  # the thread is free: the second look runs and answers
    _until(lambda: second in notified.keys)
    answer = run.obtain(second, ("r", 2), request(clock()))
    assert answer is not None
    assert answer[1].verdict is Outcome.SUCCESSFUL
    assert breaker.state == "closed"


def test_losing_leadership_drops_every_look_in_flight() -> None:
    clock = Clock()
    held = Held()
    run, _, notified = runner(held, clock)
    assert run.obtain(KEY, ("rollout-1", 0), request()) is None
    assert held.entered.wait(WAIT)
    run.clear()
    held.release.set()
    assert not notified.event.wait(0.5)
    assert run.deadline(KEY) is None
    run.shutdown()


def test_an_analysis_that_crashes_still_answers_with_an_error() -> None:
    class Crashing:
        def analyze(self, *args: Any, **kwargs: Any) -> StepAnalysis:
            raise RuntimeError("bug in a profile")

    clock = Clock()
    run, _, notified = runner(Crashing(), clock)
    assert run.obtain(KEY, ("rollout-1", 0), request()) is None
    assert notified.event.wait(WAIT)
    answer = run.obtain(KEY, ("rollout-1", 0), request())
    assert answer is not None
    assert answer[1].evaluation("error-rate").outcome is Outcome.ERROR
    assert "bug in a profile" in answer[1].evaluation("error-rate").message


def test_the_ticket_changes_with_the_step_the_due_times_and_the_evidence() -> None:
    base: dict[str, Any] = {
        "rollout_id": "r1",
        "revision": "scorer-00002",
        "step_index": 0,
        "step_reached_at": T0,
        "fast": False,
        "next_analysis_at": None,
        "next_look_at": None,
        "memory": {},
    }
    first = analysis_ticket(**base)
    assert analysis_ticket(**base) == first
    for change in (
        {"step_index": 1},
        {"step_reached_at": T0 + timedelta(seconds=1)},
        {"fast": True},
        {"next_analysis_at": T0},
        {"next_look_at": T0},
        {"memory": {"error-rate": CheckMemory(consecutive_errors=1)}},
        {"rollout_id": "r2"},
    ):
        assert analysis_ticket(**{**base, **change}) != first, change


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="deadline must be positive"):
        AnalysisRunner(
            Held(),
            fallback=failing_analyzer,
            breaker=CircuitBreaker(failures=1, cooldown=timedelta(seconds=1)),
            deadline=timedelta(0),
        )
