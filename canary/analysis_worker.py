"""Analysis off the command path: looks run on their own threads, with a deadline and a
circuit breaker.

The controller's worker runs one rollout at a time; a look (the Prometheus queries of one
evaluation) that waited on a hung Prometheus in that worker would hold up every manual
command and rollback behind it. So the engine only *asks* :class:`AnalysisRunner` for a
look and moves on; the look runs on a small thread pool, and when it is done the runner
queues the rollout again, whose next reconcile applies the answer (if the rollout is still
where it was when the look was asked for: same rollout, step, split and evidence).

* **Deadline.** A look not done ``deadline`` after it started is given up: it counts as an
  error for each of its checks (exactly as if Prometheus had not answered, so the checks'
  error limits apply) and its late answer, if any, is dropped. (A look still waiting for a
  thread is not given up: the threads are only ever held by queries that have their own
  timeout, or that the breaker stops.)
* **Circuit breaker.** :class:`GuardedProvider` wraps the metric provider: after
  ``failures`` consecutive failed queries (unreachable, timed out, refused) or looks past
  their deadline, the circuit opens for ``cooldown``; meanwhile every query fails at once
  (no thread waits on Prometheus); then queries go through again (half-open): the first
  answer closes the circuit, the first failure opens it for another ``cooldown``.

* **Announced looks.** A look is announced to the analyzer (``expect``) when it is asked
  for, before it waits for a thread: the grouped looks then include its rollout's
  revisions in their next queries, so rollouts asked for together (every one, after a
  restart or a failover) share the same query rounds instead of each widening them once.

* **Lanes.** Evaluations that read the same group of looks wait for each other's query
  rounds (:meth:`analysis.looks.LookSource.group`); so they read their looks one at a time,
  in a lane of their own (``lane`` of the analyzer), and a look waiting for its lane holds
  no thread. A slow round (a loaded Prometheus, a large group) then holds one thread and its
  own group's rollouts, never every thread (nor does a look's deadline run while it waits:
  it starts when the look does). An evaluation leaves its lane once its looks are read
  (``looks_read``): its checks with queries of their own run beside the lane's next one.
  The next look of a lane goes to the back of the threads' queue, so lanes take turns.

* **Generations.** In the controller a look that waited for its lane is evaluated later
  than it was asked for (``at_start``): at the time of the lane's last look that started
  afresh, if it was asked for before that one started (it then reads what that look's
  round fetched), else when it starts. A lane whose rounds are slower than the look period
  then costs one round per generation of looks, however long its queue, and a rollout's
  next analysis is due an interval after the evaluation it got, not after the one it
  asked for.

Nothing here decides anything: the verdicts are the analysis package's, applied by the
engine through the state machine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

from analysis import CheckDefinition, CheckMemory, Outcome, StepAnalysis, Subject
from analysis.providers.base import MetricProvider
from analysis.types import MetricError, QueryResult, Unreachable
from canary.log import get_logger

__all__ = [
    "AnalysisRequest",
    "AnalysisRunner",
    "Analyzes",
    "CircuitBreaker",
    "Expects",
    "GuardedProvider",
    "Lanes",
    "Unanswered",
    "analysis_ticket",
]

log = get_logger("canary.analysis_worker")

Key = tuple[str, str]  # (namespace, name)
BreakerState = Literal["closed", "open", "half-open"]


@runtime_checkable
class Expects(Protocol):
    """An analyzer told which rollouts are about to be evaluated, before they are
    (``analysis.runner.Analyzer``): rollouts asked for together then share the grouped
    looks' query rounds instead of each widening them once."""

    def expect(
        self,
        subject: Subject,
        checks: Sequence[CheckDefinition],
        at: datetime,
        memory: Mapping[str, CheckMemory] | None = None,
    ) -> None: ...


@runtime_checkable
class Lanes(Protocol):
    """An analyzer that says what an evaluation waits on besides its own queries (the
    group of looks it reads; ``analysis.runner.Analyzer``): evaluations of one lane run
    one at a time. None: the evaluation shares nothing."""

    def lane(
        self, subject: Subject, checks: Sequence[CheckDefinition], at: datetime
    ) -> Hashable | None: ...


class Analyzes(Protocol):
    """What runs one evaluation round: ``analysis.runner.Analyzer`` or a test double."""

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
    ) -> StepAnalysis: ...


# ---------------------------------------------------------------------------------------
# The circuit breaker (pure: the clock is injected)
# ---------------------------------------------------------------------------------------


class CircuitBreaker:
    """Closed: calls go through. ``failures`` failures in a row open it for ``cooldown``;
    then it is half-open: calls go through again, the first success closes it and a failure
    opens it for another ``cooldown``."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        if cooldown <= timedelta(0):
            raise ValueError(f"cooldown must be positive, got {cooldown}")
        self._limit = failures
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failed = 0
        self._open_until: datetime | None = None
        self._last_error = ""

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: datetime) -> BreakerState:
        if self._open_until is None:
            return "closed"
        return "open" if now < self._open_until else "half-open"

    def allow(self) -> bool:
        """Whether a call may go through now."""
        return self.state != "open"

    def why_open(self) -> str:
        with self._lock:
            until = self._open_until
            return (
                f"Prometheus circuit open after {self._failed} consecutive failures "
                f"(last: {self._last_error}); next try at "
                f"{until.isoformat() if until else 'once closed'}"
            )

    def record(self, ok: bool, error: str = "") -> None:
        with self._lock:
            now = self._clock()
            if ok:
                self._failed = 0
                self._open_until = None
                return
            self._failed += 1
            self._last_error = error[:200] or "failed"
            state = self._state(now)
            if state == "half-open" or (state == "closed" and self._failed >= self._limit):
                self._open_until = now + self._cooldown
                log.warning(
                    "analysis.breaker_opened",
                    failures=self._failed,
                    until=self._open_until.isoformat(),
                    error=self._last_error,
                )


class GuardedProvider:
    """A :class:`MetricProvider` behind a :class:`CircuitBreaker`: an ``Unreachable`` answer
    (connection refused, timed out, 429/5xx after retries) counts as a failure, any answer
    from Prometheus (a result, no data, a bad query) as a success; while the circuit is open
    every query raises ``Unreachable`` at once."""

    def __init__(self, inner: MetricProvider, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self._breaker = breaker

    @property
    def url(self) -> str:
        return str(getattr(self._inner, "url", ""))

    def query(self, promql: str, at: datetime) -> QueryResult:
        if not self._breaker.allow():
            raise Unreachable(self._breaker.why_open(), query=promql)
        try:
            result = self._inner.query(promql, at)
        except Unreachable as exc:
            self._breaker.record(False, exc.message)
            raise
        except MetricError:
            self._breaker.record(True)
            raise
        self._breaker.record(True)
        return result


class Unanswered:
    """A provider whose every query fails with ``reason``: what a look that was given up
    (or skipped, the circuit being open) is evaluated against, so each check records the
    error the usual way."""

    def __init__(self, reason: str, url: str = "") -> None:
        self._reason = reason
        self.url = url

    def query(self, promql: str, at: datetime) -> QueryResult:
        raise Unreachable(self._reason, query=promql)


# ---------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisRequest:
    """Everything one look needs, fixed when it is asked for."""

    subject: Subject
    checks: tuple[CheckDefinition, ...]
    memory: Mapping[str, CheckMemory]
    at: datetime
    grace: bool
    looks_only: bool
    # The step being judged and when its split showed: only canary requests observed
    # after that moment can make the step's evidence sufficient.
    step: tuple[int, datetime] | None = None
    # Until when missing data are forgiven (``grace`` is ``at < grace_until``): known, a
    # request evaluated later than asked (:meth:`started_at`) has its grace judged then.
    grace_until: datetime | None = None

    def started_at(self, now: datetime) -> AnalysisRequest:
        """This request evaluated at ``now``, when it starts, if that is later than it was
        asked for: on the data at hand then, its grace judged at that time (the window's
        length stays the one asked for)."""
        if now <= self.at:
            return self
        grace = self.grace if self.grace_until is None else now < self.grace_until
        return replace(self, at=now, grace=grace)

    def run(self, analyzer: Analyzes, looks_read: Callable[[], None] | None = None) -> StepAnalysis:
        """The analysis; ``looks_read`` is called once its looks are read."""
        return analyzer.analyze(
            self.subject,
            self.checks,
            self.memory,
            self.at,
            grace=self.grace,
            looks_only=self.looks_only,
            step=self.step,
            looks_read=looks_read,
        )


def analysis_ticket(
    rollout_id: str,
    revision: str,
    step_index: int,
    step_reached_at: datetime | None,
    fast: bool,
    next_analysis_at: datetime | None,
    next_look_at: datetime | None,
    memory: Mapping[str, CheckMemory],
) -> Hashable:
    """What an answer must match to be applied: the rollout where the look was asked for
    (step, split, due times) and the evidence it started from."""
    body = json.dumps({k: m.to_json() for k, m in sorted(memory.items())}, sort_keys=True,
                      default=str)  # fmt: skip
    return (
        rollout_id,
        revision,
        step_index,
        step_reached_at,
        fast,
        next_analysis_at,
        next_look_at,
        hashlib.sha256(body.encode()).hexdigest(),
    )


@dataclass
class _Job:
    ticket: Hashable
    request: AnalysisRequest
    deadline: datetime | None = None  # set when a thread starts it
    result: StepAnalysis | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AnalysisRunner:
    """Runs looks on ``workers`` threads; see the module doc.

    ``fallback(reason)`` builds an analyzer that does no I/O and fails every query with
    ``reason`` (an analyzer over :class:`Unanswered`, with looks of its own).
    ``notify(key, failed)`` is called when a look is done, ``failed`` when its verdict is
    Failed (the controller queues the rollout, a failed one ahead of the others);
    :meth:`bind` sets it.

    ``at_start`` evaluates a look later than it was asked for when it waited for its lane
    (:meth:`AnalysisRequest.started_at`; the request answered is that one): a look asked
    for before the lane's last *leading* look started is evaluated at that look's time,
    and reads what its round fetched; any other look leads, evaluated when it starts. So
    a lane costs one round per generation of looks (those asked for while the previous
    round ran), however long its queue and however slow its rounds. Evaluated at the
    times they were asked for, the looks of a long queue would each ask for a grid time of
    their own, each a round; evaluated each when it starts, every look after a round
    longer than the look period would find a newer grid time due, and cost a round again.
    The controller sets it; without it (tests with fixed evaluation times) a look is
    evaluated at the time it was asked for.
    """

    def __init__(
        self,
        analyzer: Analyzes,
        *,
        fallback: Callable[[str], Analyzes],
        breaker: CircuitBreaker,
        deadline: timedelta,
        workers: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_deadline: Callable[[], None] = lambda: None,
        at_start: bool = False,
    ) -> None:
        if deadline <= timedelta(0):
            raise ValueError(f"deadline must be positive, got {deadline}")
        self._analyzer = analyzer
        self._fallback = fallback
        self.breaker = breaker
        self._deadline = deadline
        self._clock = clock
        self._on_deadline = on_deadline
        self._at_start = at_start
        self._lock = threading.Lock()
        self._jobs: dict[Key, _Job] = {}
        # a lane is here while one of its looks is running or queued for a thread; the
        # looks behind it wait in its deque
        self._lanes: dict[Hashable, deque[tuple[Key, _Job]]] = {}
        # each lane's last leading look's evaluation time (at_start)
        self._led: dict[Hashable, datetime] = {}
        self._notify: Callable[[Key, bool], None] = lambda _key, _failed: None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ksc-analysis")

    def bind(self, notify: Callable[[Key, bool], None]) -> None:
        self._notify = notify

    def obtain(
        self, key: Key, ticket: Hashable, request: AnalysisRequest
    ) -> tuple[AnalysisRequest, StepAnalysis] | None:
        """The answer to the look ``ticket`` names, with the request it answers (its
        evaluation time, grace and window are the request's); or ``None`` while it runs:
        ``notify`` is called when it is done, and the caller looks again at
        :meth:`deadline` at the latest."""
        now = self._clock()
        given_up: _Job | None = None
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                if job.done.is_set():
                    del self._jobs[key]
                    if job.ticket == ticket and job.result is not None:
                        return job.request, job.result
                    # an answer for a rollout that has moved on since: dropped
                elif job.deadline is not None and now >= job.deadline:
                    del self._jobs[key]  # given up: its late answer is dropped
                    given_up = job
                else:
                    return None
        if given_up is not None:
            seconds = self._deadline.total_seconds()
            why = f"the look did not finish within {seconds:g} s"
            self.breaker.record(False, why)
            self._on_deadline()
            log.warning("analysis.deadline_passed", namespace=key[0], name=key[1], deadline=seconds)
            if given_up.ticket == ticket:
                return given_up.request, given_up.request.run(self._fallback(why))
        if not self.breaker.allow():
            # Prometheus keeps failing: answer at once instead of tying a thread up.
            return request, request.run(self._fallback(self.breaker.why_open()))
        fresh = _Job(ticket, request)
        with self._lock:
            self._jobs[key] = fresh
        if isinstance(self._analyzer, Expects):
            # Before it runs: the looks already running or waiting then ask for this
            # rollout's revisions too (after a restart, every rollout is asked for at once).
            self._analyzer.expect(request.subject, request.checks, request.at, request.memory)
        lane = None
        if isinstance(self._analyzer, Lanes):
            lane = self._analyzer.lane(request.subject, request.checks, request.at)
        if lane is None:
            self._pool.submit(self._run, key, fresh)
            return None
        with self._lock:
            waiting = self._lanes.get(lane)
            if waiting is not None:
                waiting.append((key, fresh))  # after the lane's running look
                return None
            self._lanes[lane] = deque()
            self._pool.submit(self._run_in_lane, lane, key, fresh)
        return None

    def deadline(self, key: Key) -> datetime | None:
        """When to look again at the look asked for ``key``: its deadline once started, a
        deadline from now while it waits for a thread (``None``: none is running)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.done.is_set():
                return None
            return job.deadline or self._clock() + self._deadline

    def running(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if not job.done.is_set())

    def clear(self) -> None:
        """Forget every look (this replica stopped leading): answers still to come are
        dropped."""
        with self._lock:
            self._jobs.clear()
            for waiting in self._lanes.values():
                waiting.clear()
            self._led.clear()

    def waiting(self) -> int:
        """How many looks are asked for and not started: waiting for a thread, or for
        their lane."""
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.deadline is None)

    def shutdown(self) -> None:
        self.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run_in_lane(self, lane: Hashable, key: Key, job: _Job) -> None:
        left = False  # read and set under the runner's lock

        def leave() -> None:
            """Start the lane's next look (once: when the looks are read, or at the end)."""
            nonlocal left
            with self._lock:
                if left:
                    return
                left = True
                waiting = self._lanes[lane]
                while waiting:
                    after, next_job = waiting.popleft()
                    if self._jobs.get(after) is next_job:  # not dropped while it waited
                        self._pool.submit(self._run_in_lane, lane, after, next_job)
                        return
                del self._lanes[lane]
                self._led.pop(lane, None)

        try:
            self._run(key, job, leave, lane)
        finally:
            leave()

    def _run(
        self,
        key: Key,
        job: _Job,
        looks_read: Callable[[], None] | None = None,
        lane: Hashable | None = None,
    ) -> None:
        with self._lock:
            if self._jobs.get(key) is not job:
                return  # dropped while it waited (leadership lost, or the rollout moved on)
            now = self._clock()
            if self._at_start:
                at = now
                led = self._led.get(lane) if lane is not None else None
                if led is not None and job.request.at <= led:
                    at = led  # it waited while the lane's last round was asked for: share it
                elif lane is not None:
                    self._led[lane] = now  # it leads: its round serves those asked meanwhile
                job.request = job.request.started_at(at)
            job.deadline = now + self._deadline
        try:
            result = job.request.run(self._analyzer, looks_read)
        except Exception as exc:  # an analysis bug must not lose the rollout's timer
            log.exception("analysis.crashed", namespace=key[0], name=key[1], error=str(exc))
            result = job.request.run(self._fallback(f"the analysis failed: {exc}"))
        with self._lock:
            current = self._jobs.get(key) is job
            job.result = result
            job.done.set()
        if current:
            self._notify(key, result.verdict is Outcome.FAILED)
