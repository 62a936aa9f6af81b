"""Memory and query cost of the grouped looks (issue #16). Dev-only: nothing here ships.

    PYTHONPATH=$PWD .venv/bin/python -m bench.looks_memory
    PYTHONPATH=$PWD .venv/bin/python -m bench.looks_memory --revisions 10,100,1000 --looks 36
    PYTHONPATH=$PWD .venv/bin/python -m bench.looks_memory --steady '' --restart 20:12,200:120

**Steady state** (``--revisions``): ``N`` revisions, half of them canaries, in ``N / 2``
rollouts of one metric profile (``knative-otel``) each in a namespace of its own. A fake
Prometheus answers the looks' queries the way the test bed's does (:mod:`testbed.traffic`):
per revision ``--pods`` pods, each with its raw request counters per status code (200 and
500) and the ``kn_serving_invocation_duration_seconds`` histogram per status code with the
test bed's 97 E24 bounds from 1 ms to 10 s plus ``+Inf`` and its ``_count`` (every sample
is current, so no sample time); the window values one series per revision. Every answer is
rendered as Prometheus' JSON and parsed back (as the real provider does), so no string is
shared between answers. The controller's path is driven as the engine drives it: every
rollout is evaluated at every 5 s look (``looks_only``, the fast path, keeping only the
sequential evidence), and a full evaluation every ``--interval`` looks. Per grid time the
retained memory (tracemalloc, after a GC) is recorded; at the end the top allocation
sites of what is still held, and how much of it the looks (the analyzer, its
``LookSource``) and the rollouts' memories each hold.

**Restart** (``--restart R:k``): ``R`` rollouts read looks up to a time, the controller
"restarts" (a new analyzer, an empty cache) ``k`` looks later, and every rollout is asked
for through the controller's :class:`~canary.analysis_worker.AnalysisRunner` (four
threads, which announce each look to the analyzer when it is asked for), as the engine
asks after becoming leader. Reported: the query rounds (one round
is one grouped raw-counter query) and the queries sent until every rollout was evaluated,
how long that took, and the CPU time of the controller's side (the fake Prometheus' own
time, making and parsing its answers, left out).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import re
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from statistics import NormalDist

from analysis.looks import LookSource
from analysis.runner import Analyzer
from analysis.types import (
    CheckDefinition,
    CheckMemory,
    NoData,
    QueryResult,
    Series,
    StepAnalysis,
    Subject,
)
from canary.analysis_worker import (
    AnalysisRequest,
    AnalysisRunner,
    CircuitBreaker,
    Unanswered,
    analysis_ticket,
)

PERIOD = timedelta(seconds=5)
LAG = timedelta(seconds=2)
WINDOW = timedelta(seconds=60)
ORIGIN = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)  # when every counter started
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # the first look
REPO = Path(__file__).resolve().parent.parent

# The test bed's latency bounds (testbed.traffic.LATENCY_BUCKETS_SECONDS), as Go prints them.
_MANTISSAS = (10, 11, 12, 13, 15, 16, 18, 20, 22, 24, 27, 30, 33, 36, 39, 43, 47, 51, 56, 62,
              68, 75, 82, 91)  # fmt: skip
BOUNDS: tuple[float, ...] = (
    *(m * 10 ** (d + 5) / 1e6 for d in range(-3, 1) for m in _MANTISSAS),
    10.0,
)


def _go(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


LE_TEXT = (*map(_go, BOUNDS), "+Inf")


# --- the fake Prometheus --------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    namespace: str
    name: str
    rate: float  # requests per second
    error_ratio: float
    median: float  # latency, seconds (lognormal, sigma 0.5)
    pods: int

    def per_look(self) -> dict[str, tuple[int, ...]]:
        """Requests per look in each latency bucket (the last one above every bound), per
        status code: whole numbers, so that every look adds the same counts to every bucket
        (a real histogram's increments are monotonic in ``le``)."""
        normal = NormalDist()
        shares = [normal.cdf((math.log(le) - math.log(self.median)) / 0.5) for le in BOUNDS]
        probabilities = [b - a for a, b in zip([0.0, *shares], [*shares, 1.0], strict=True)]
        requests = self.rate * PERIOD.total_seconds() / self.pods
        errors = round(requests * self.error_ratio)
        median = next(i for i, le in enumerate(BOUNDS) if le >= self.median)
        return {
            "200": tuple(round((requests - errors) * p) for p in probabilities),
            "500": tuple(errors if i == median else 0 for i in range(len(probabilities))),
        }


def _labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(labels, separators=(",", ":"))


@dataclass
class Bed:
    """Rollouts of one profile, a canary and a baseline each, in a namespace each."""

    rollouts: int
    pods: int = 1
    bad: frozenset[int] = frozenset()  # rollouts whose canary serves 5x the 5xx

    def __post_init__(self) -> None:
        self.revisions: dict[str, Revision] = {}
        self.subjects: list[Subject] = []
        for i in range(self.rollouts):
            ns, isvc = f"team-{i:04d}", f"fraud-{i:04d}"
            canary, baseline = f"{isvc}-00002", f"{isvc}-00001"
            errors = 0.05 if i in self.bad else 0.01
            self.revisions[canary] = Revision(ns, canary, 40.0, errors, 0.02, self.pods)
            self.revisions[baseline] = Revision(ns, baseline, 360.0, 0.01, 0.02, self.pods)
            self.subjects.append(
                Subject(
                    namespace=ns,
                    isvc=isvc,
                    mode="knative",
                    canary_revision=canary,
                    baseline_revision=baseline,
                    metric_profile="knative-otel",
                    window=WINDOW,
                )
            )


_SELECTED = re.compile(r'(?<![_a-z])revision=~"((?:[^"\\]|\\.)*)"')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.replace("\\\\", "\\"))


@dataclass
class FakePrometheus:
    """Answers the knative-otel look queries for the bed's revisions, as JSON parsed back."""

    bed: Bed
    url: str = "http://prometheus.bench:9090"
    sent: list[tuple[str, datetime]] = field(default_factory=list)
    delay: float = 0.0  # seconds each query takes (the server's time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cpu: float = 0.0  # CPU seconds spent making and parsing answers (Prometheus' share)

    def __post_init__(self) -> None:
        self._per_look = {name: rev.per_look() for name, rev in self.bed.revisions.items()}

    @property
    def rounds(self) -> int:
        """Grouped rounds: one raw request-counter query each."""
        return sum(1 for q, _ in self.sent if kind_of(q) == "requests")

    def query(self, promql: str, at: datetime) -> QueryResult:
        began = time.thread_time()
        try:
            return self._answer(promql, at)
        finally:
            with self.lock:
                self.cpu += time.thread_time() - began

    def _answer(self, promql: str, at: datetime) -> QueryResult:
        with self.lock:
            self.sent.append((promql, at))
        if self.delay:
            time.sleep(self.delay)
        found = _SELECTED.search(promql)
        names = _unescape(found.group(1)).split("|") if found else []
        kind = kind_of(promql)
        items: list[str] = []
        for name in names:
            rev = self.bed.revisions.get(name)
            if rev is not None:
                items += self._items(kind, rev, at)
        if not items:
            raise NoData("the query returned no series", query=promql, raw_digest="0" * 64)
        body = (
            '{"status":"success","data":{"resultType":"vector","result":[' + ",".join(items) + "]}}"
        ).encode()
        payload = json.loads(body)
        series = tuple(
            Series(
                {str(k): str(v) for k, v in item["metric"].items()},
                float(item["value"][1]),
                float(item["value"][0]),
            )
            for item in payload["data"]["result"]
        )
        return QueryResult(series, hashlib.sha256(body).hexdigest(), self.url)

    def _items(self, kind: str, rev: Revision, at: datetime) -> Iterator[str]:
        ts = f"{at.timestamp():.3f}"
        looks = (at - ORIGIN) / PERIOD  # a whole number at every grid time
        per_code = {
            code: list(accumulate(math.floor(looks * n) for n in counts))
            for code, counts in self._per_look[rev.name].items()
        }
        if kind in {"window_requests", "window_errors", "p99"}:
            grouped = _labels_json({"namespace": rev.namespace, "revision": rev.name})
            if kind == "p99":
                figure = rev.median * math.exp(2.326 * 0.5)
            else:
                figure = rev.rate * WINDOW.total_seconds()
                figure *= rev.error_ratio if kind == "window_errors" else 1.0
            yield f'{{"metric":{grouped},"value":[{ts},"{figure!r}"]}}'
            return
        if kind == "resets":
            return  # no counter restarted
        # (every sample is a second old: current, so the answer has no sample time)
        for pod in range(rev.pods):
            base = {
                "namespace": rev.namespace,
                "pod": f"{rev.name}-deployment-7d9f8c6b5d-{pod:05d}",
                "container": "queue-proxy",
                "revision": rev.name,
                "instance": f"10.{pod % 250}.{len(rev.name)}.{sum(map(ord, rev.name)) % 250}:9091",
                "job": "kserve-canary-testbed",
            }
            for code, cumulative in per_code.items():
                count = cumulative[-1]
                if kind == "requests":
                    labels = {**base, "http_request_method": "POST",
                              "http_response_status_code": code}  # fmt: skip
                    named = _labels_json(
                        {"__name__": "http_server_request_duration_seconds_count", **labels}
                    )
                    yield f'{{"metric":{named},"value":[{ts},"{count}"]}}'
                    continue
                labels = {**base, "http_response_status_code": code}
                for le, value in zip(LE_TEXT, cumulative, strict=True):
                    bucket = {"__name__": "kn_serving_invocation_duration_seconds_bucket",
                              **labels, "le": le}  # fmt: skip
                    yield f'{{"metric":{_labels_json(bucket)},"value":[{ts},"{value}"]}}'
                count_labels = {"__name__": "kn_serving_invocation_duration_seconds_count",
                                **labels}  # fmt: skip
                yield f'{{"metric":{_labels_json(count_labels)},"value":[{ts},"{count}"]}}'


def kind_of(promql: str) -> str:
    """Which of the looks' queries ``promql`` is."""
    if "histogram_quantile" in promql:
        return "p99"
    if promql.lstrip().startswith("resets(") or "resets(" in promql:
        return "resets"
    if "sum by" in promql:
        return "window_errors" if "5.." in promql else "window_requests"
    return "buckets" if "_bucket" in promql else "requests"


# --- the controller's path ------------------------------------------------------------------


def known(source: LookSource, subjects: Sequence[Subject], at: datetime) -> None:
    """Every rollout is known to the looks before the first is read (as the analysis
    runner tells them when each asks): rollouts that join one by one each widen the
    queries once, which is not what is measured here."""
    for subject in subjects:
        source.expect(subject, at)


def checks() -> tuple[CheckDefinition, ...]:
    def check(name: str, tolerance: float) -> CheckDefinition:
        return CheckDefinition(name=name, builtin=name, query=None, direction="lowerIsBetter",
                               relative_tolerance=tolerance, min_samples=100, alpha_fail=0.01,
                               alpha_pass=0.05)  # fmt: skip

    return check("error-rate", 0.5), check("latency-p99", 0.2)


def kept(memory: Mapping[str, CheckMemory], result: StepAnalysis) -> dict[str, CheckMemory]:
    """What the engine keeps after a fast-path look that did not fail (canary.engine)."""
    return {
        name: replace(memory.get(name, CheckMemory()), sequential=m.sequential, through=m.through)
        for name, m in result.memory.items()
    }


def evidence_bytes(result: StepAnalysis) -> int:
    """The size of the evaluation's measurements as the engine records them (JSON)."""
    rows = [
        {"check": e.check, "query": e.query, "digest": e.response_digest,
         "canary": e.canary_value, "baseline": e.baseline_value, "detail": dict(e.detail)}
        for e in result.evaluations
    ]  # fmt: skip
    return len(json.dumps(rows, default=str))


def memory_bytes(memory: Mapping[str, CheckMemory]) -> int:
    return len(json.dumps({k: m.to_json() for k, m in memory.items()}, default=str))


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


@dataclass
class SteadyResult:
    revisions: int
    looks: int
    per_look: list[int]  # traced bytes after each grid time
    looks_bytes: int  # held by the analyzer and its LookSource at the end
    memories_bytes: int  # held by the rollouts' memories at the end
    memory_json: tuple[int, int]  # one rollout's memory as JSON: after the first and last look
    evidence_json: tuple[int, int]  # one rollout's full evaluation as JSON: first and last
    rounds: int
    queries: int
    seconds: float
    top: list[tuple[str, int, int]]  # (site, bytes, blocks)
    snapshots: int  # kept by the looks at the end
    peak: int  # the most traced at any moment (a round's parsed answers are transient)


def steady(revisions: int, looks: int, pods: int, interval: int, top: int) -> SteadyResult:
    bed = Bed(rollouts=max(1, revisions // 2), pods=pods)
    prometheus = FakePrometheus(bed)
    gc.collect()
    tracemalloc.start(1)
    start_bytes = traced()
    source = LookSource(prometheus, period=PERIOD, lag=LAG, window=WINDOW)
    analyzer = Analyzer(prometheus, looks=source)
    known(source, bed.subjects, T0)
    defined = checks()
    memories: list[dict[str, CheckMemory]] = [{} for _ in bed.subjects]
    per_look: list[int] = []
    memory_json: list[int] = []
    evidence_json: list[int] = []
    began = time.perf_counter()
    for g in range(looks):
        now = T0 + PERIOD * g + LAG
        full = g % interval == 0
        for i, subject in enumerate(bed.subjects):
            result = analyzer.analyze(subject, defined, memories[i], now, grace=False,
                                      looks_only=not full, step=(0, T0 - PERIOD * 2))  # fmt: skip
            memories[i] = dict(result.memory) if full else kept(memories[i], result)
            if i == 0 and full:
                evidence_json.append(evidence_bytes(result))
            del result
        memory_json.append(memory_bytes(memories[0]))
        per_look.append(traced() - start_bytes)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] - start_bytes
    snapshot = tracemalloc.take_snapshot()
    kept_snapshots = source.held()
    with_all = traced()
    del analyzer, source
    looks_bytes = with_all - traced()
    with_memories = traced()
    memories.clear()
    memories_bytes = with_memories - traced()
    tracemalloc.stop()
    sites: list[tuple[str, int, int]] = []
    here = str(REPO)
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        if not frame.filename.startswith(here) or frame.filename.endswith("looks_memory.py"):
            continue
        where = f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno}"
        sites.append((where, stat.size, stat.count))
        if len(sites) >= top:
            break
    return SteadyResult(
        revisions=len(bed.revisions),
        looks=looks,
        per_look=per_look,
        looks_bytes=looks_bytes,
        memories_bytes=memories_bytes,
        memory_json=(memory_json[0], memory_json[-1]),
        evidence_json=(evidence_json[0], evidence_json[-1]),
        rounds=prometheus.rounds,
        queries=len(prometheus.sent),
        seconds=seconds,
        top=sites,
        snapshots=kept_snapshots,
        peak=peak,
    )


def report_steady(r: SteadyResult) -> str:
    rollouts = r.revisions // 2
    half = len(r.per_look) // 2
    tail = r.per_look[half:]
    growth = (tail[-1] - tail[0]) / max(len(tail) - 1, 1)
    lines = [
        f"## {r.revisions} revisions ({rollouts} rollouts), {r.looks} looks of 5 s",
        "",
        f"- retained after look 1 / {half} / {r.looks}: {mb(r.per_look[0])} / "
        f"{mb(r.per_look[half - 1])} / {mb(r.per_look[-1])}",
        f"- growth per look over the second half: {mb(growth)} "
        f"({mb(growth / rollouts)} per rollout)",
        f"- held by the looks (analyzer and cache) at the end: {mb(r.looks_bytes)} "
        f"({mb(r.looks_bytes / rollouts)} per rollout; {r.snapshots} snapshots)",
        f"- peak while running (a round's parsed answers, transient): {mb(r.peak)}",
        f"- held by the rollouts' memories at the end: {mb(r.memories_bytes)} "
        f"({r.memories_bytes / rollouts:,.0f} B per rollout)",
        f"- one rollout's memory as JSON after the first / last look: {r.memory_json[0]:,} / "
        f"{r.memory_json[1]:,} B; its full evaluation's evidence: {r.evidence_json[0]:,} / "
        f"{r.evidence_json[1]:,} B",
        f"- query rounds {r.rounds}, queries {r.queries} "
        f"({r.queries / r.looks:.1f} per look); {r.seconds:.1f} s "
        f"({r.seconds / r.looks / rollouts * 1000:.2f} ms per rollout-look, tracemalloc on)",
        "",
        "| top allocation sites still held | size | blocks |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{site}` | {mb(size)} | {count:,} |" for site, size, count in r.top]
    return "\n".join(lines) + "\n"


# --- a restart ------------------------------------------------------------------------------


@dataclass
class RestartResult:
    rollouts: int
    missed: int
    rounds: int
    queries: int
    seconds: float
    looks_read: list[int]
    cpu: float  # CPU seconds of the controller's side (the fake Prometheus' excluded)


def restart(rollouts: int, missed: int, pods: int, workers: int) -> RestartResult:
    bed = Bed(rollouts=rollouts, pods=pods)
    prometheus = FakePrometheus(bed)
    defined = checks()
    step = (0, T0 - PERIOD * 20)
    before = Analyzer(prometheus, looks=LookSource(prometheus, period=PERIOD, lag=LAG,
                                                    window=WINDOW))  # fmt: skip
    memories: list[Mapping[str, CheckMemory]] = []
    for subject in bed.subjects:  # every rollout read the looks up to T0, then the crash
        memory: Mapping[str, CheckMemory] = {}
        for g in range(2):
            now = T0 + PERIOD * g + LAG
            memory = before.analyze(subject, defined, memory, now, grace=False, step=step).memory
        memories.append(memory)
    del before
    prometheus.sent.clear()
    source = LookSource(prometheus, period=PERIOD, lag=LAG, window=WINDOW)
    analyzer = Analyzer(prometheus, looks=source)  # the restarted controller
    done = threading.Semaphore(0)
    runner = AnalysisRunner(
        analyzer,
        fallback=lambda why: Analyzer(
            Unanswered(why),
            looks=LookSource(Unanswered(why), period=PERIOD, lag=LAG, window=WINDOW),
        ),
        breaker=CircuitBreaker(failures=1000, cooldown=timedelta(seconds=30)),
        deadline=timedelta(hours=1),
        workers=workers,
    )
    runner.bind(lambda _key, _failed: done.release())
    now = T0 + PERIOD * (1 + missed) + LAG
    prometheus.cpu = 0.0
    began, cpu = time.perf_counter(), time.process_time()
    tickets = []
    for subject, memory in zip(bed.subjects, memories, strict=True):  # the engine's pass
        key = (subject.namespace, subject.isvc)
        ticket = analysis_ticket(subject.isvc, subject.canary_revision, 0, step[1], False,
                                 None, None, memory)  # fmt: skip
        request = AnalysisRequest(subject, defined, memory, now, False, False, step=step)
        assert runner.obtain(key, ticket, request) is None
        tickets.append((key, ticket, request))
    for _ in tickets:
        done.acquire()
    seconds = time.perf_counter() - began
    ours = time.process_time() - cpu - prometheus.cpu
    looks_read = []
    for key, ticket, request in tickets:
        answer = runner.obtain(key, ticket, request)
        assert answer is not None
        detail = answer[1].evaluation("error-rate").detail
        looks_read.append(int(str(detail.get("looks_read", 0))))
    runner.shutdown()
    return RestartResult(rollouts, missed, prometheus.rounds, len(prometheus.sent), seconds,
                         looks_read, ours)  # fmt: skip


def report_restart(r: RestartResult) -> str:
    return (
        f"- restart: {r.rollouts} rollouts, {r.missed} missed looks: {r.rounds} query rounds, "
        f"{r.queries} queries, every rollout evaluated after {r.seconds:.2f} s, "
        f"{r.cpu:.1f} CPU s on the controller's side "
        f"(looks read per rollout: {min(r.looks_read)}-{max(r.looks_read)})\n"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revisions", default="10,100,1000",
                        help="steady: revisions (two a rollout), comma-separated")  # fmt: skip
    parser.add_argument("--looks", type=int, default=36, help="5 s looks per steady run")
    parser.add_argument("--pods", type=int, default=1, help="pods per revision")
    parser.add_argument("--interval", type=int, default=6,
                        help="a full evaluation every this many looks")  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="allocation sites shown")
    parser.add_argument("--restart", default="10:12,100:12,100:120",
                        help="restart runs as rollouts:missed looks, comma-separated")  # fmt: skip
    parser.add_argument("--workers", type=int, default=4, help="the analysis runner's threads")
    args = parser.parse_args(argv)
    out = sys.stdout
    for revisions in _ints(args.revisions):
        result = steady(revisions, args.looks, args.pods, args.interval, args.top)
        out.write(report_steady(result) + "\n")
        out.flush()
    for spec in [s for s in args.restart.split(",") if s.strip()]:
        rollouts, missed = (int(x) for x in spec.split(":"))
        out.write(report_restart(restart(rollouts, missed, args.pods, args.workers)))
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
