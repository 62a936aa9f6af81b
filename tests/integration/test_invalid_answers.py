"""Invalid answers from a real Prometheus never promote a canary, and never stop a bad
canary next to them from being rolled back.

A real Prometheus scrapes a misbehaving exporter written here (counters that go negative
or down without a reset, cumulative buckets that fall as ``le`` rises, a ``+Inf`` bucket
that disagrees with ``_count``, NaN, a 5xx counter frozen on an old explicit timestamp),
and the analyzer reads it through a fault proxy that rewrites some of Prometheus' answers
(sample timestamps an hour off, duplicated series, an unreadable value in a grouped
answer, warnings). Every rollout is in the same
group, so they share every query: one rollout's bad series must fail only its own checks
that read them.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from analysis.looks import LookSource
from analysis.providers.prometheus import PrometheusProvider
from analysis.runner import Analyzer
from analysis.types import CheckDefinition, CheckMemory, Outcome, StepAnalysis, Subject
from analysis.validate import with_sample_times
from testbed.prometheus import PrometheusServer, PrometheusUnavailable
from tests.exporter import Serving, exporter

pytestmark = pytest.mark.integration

NS = "fraud"
RATE = 2000.0  # requests per second of every revision
UPTIME = 3600.0  # every process has been counting for an hour when the test starts
FAST = {0.01: 0.6, 0.05: 0.99, 0.1: 1.0}  # cumulative share of requests under each le
RESET_AFTER = 9.0  # seconds into the test when the "reset" canary's process restarts
MAX_SAMPLE_AGE = timedelta(seconds=6)  # Prometheus scrapes every second


@dataclass(frozen=True)
class Behaviour:
    errors: float = 0.01  # share of 5xx
    fault: str = ""


# rollout name -> its canary's behaviour (every baseline is honest: 1 % 5xx, fast)
CANARIES: dict[str, Behaviour] = {
    "healthy": Behaviour(),
    "bad": Behaviour(errors=0.15),
    "decrease": Behaviour(fault="5xx-decrease"),
    "negative": Behaviour(fault="5xx-negative"),
    "nan": Behaviour(fault="2xx-nan"),
    "nonmono": Behaviour(errors=0.15, fault="buckets-fall"),
    "mismatch": Behaviour(fault="count-mismatch"),
    "reset": Behaviour(fault="reset"),
    "frozen": Behaviour(errors=0.15, fault="5xx-frozen"),  # its 5xx stuck at the start
    "shifted": Behaviour(),  # the proxy moves its samples an hour ahead
    "twice": Behaviour(),  # the proxy returns its raw series twice
    "garbled": Behaviour(),  # the proxy makes its values in grouped answers unreadable
}


def canary(name: str) -> str:
    return f"{name}-00002"


def baseline(name: str) -> str:
    return f"{name}-00001"


def _exposition(started: float) -> str:
    """Every revision's counters now, in Prometheus' text format."""
    lines: list[str] = []
    elapsed = time.time() - started
    for name, behaviour in CANARIES.items():
        for revision, spec in ((baseline(name), Behaviour()), (canary(name), behaviour)):
            seconds = UPTIME + elapsed
            if spec.fault == "reset" and elapsed >= RESET_AFTER:
                seconds = elapsed - RESET_AFTER  # a new process, counting from zero
            total = math.floor(RATE * seconds)
            errors = float(math.floor(RATE * spec.errors * seconds))
            ok = float(total) - errors
            if spec.fault == "5xx-decrease" and int(elapsed) // 2 % 2 == 1:
                errors = math.floor(errors * 0.6)  # down by 40 % every other 2 s
            if spec.fault == "5xx-negative":
                errors = -errors - 1
            if spec.fault == "2xx-nan":
                ok = math.nan
            base = f'namespace="{NS}",revision="{revision}",pod="{revision}-pod"'
            for code, count in (("200", ok), ("500", errors)):
                sample = f"{count}"
                if code == "500" and spec.fault == "5xx-frozen":
                    # an exporter stuck on an explicit timestamp: Prometheus keeps answering
                    # with that one old sample, which reads as "no more 5xx"
                    sample = f"{math.floor(RATE * spec.errors * UPTIME)} {int(started * 1000)}"
                lines.append(
                    f'http_server_request_duration_seconds_count{{container="queue-proxy",'
                    f'{base},http_response_status_code="{code}"}} {sample}'
                )
            buckets = {le: float(math.floor(total * share)) for le, share in FAST.items()}
            if spec.fault == "buckets-fall":
                buckets[0.05] = buckets[0.01] / 2
            count = float(total) + (7 if spec.fault == "count-mismatch" else 0)
            for le, value in (*buckets.items(), ("+Inf", float(total))):
                lines.append(f'kn_serving_invocation_duration_seconds_bucket{{{base},le="{le}"}} '
                             f"{value}")  # fmt: skip
            lines.append(f"kn_serving_invocation_duration_seconds_count{{{base}}} {count}")
    return "\n".join(lines) + "\n"


@dataclass
class Rewrites:
    """What the fault proxy does to Prometheus' answers."""

    shifted: set[str] = field(default_factory=lambda: {canary("shifted")})
    doubled: set[str] = field(default_factory=lambda: {canary("twice")})
    garbled: set[str] = field(default_factory=lambda: {canary("garbled")})
    warnings: tuple[str, ...] = ()  # added to every answer of the raw request counters

    def apply(self, query: str, payload: dict[str, Any]) -> dict[str, Any]:
        result = payload.get("data", {}).get("result")
        if payload.get("status") != "success" or not isinstance(result, list):
            return payload
        out: list[Any] = []
        for original in result:
            item = original
            revision = item.get("metric", {}).get("revision")
            if revision in self.shifted:
                item = {**item, "value": [item["value"][0] + 3600, item["value"][1]]}
            if revision in self.garbled and "sum by" in query:
                item = {**item, "value": [item["value"][0], "12,5"]}  # not a number
            out.append(item)
            raw = "sum by" not in query and "ksc_sample" not in item.get("metric", {})
            if revision in self.doubled and raw:
                out.append(item)  # a raw series, twice
        payload = {**payload, "data": {**payload["data"], "result": out}}
        raw_requests = query.startswith("http_server_request_duration_seconds_count{")
        if self.warnings and raw_requests:
            payload["warnings"] = list(self.warnings)
        return payload


def proxy(upstream: str, rewrites: Rewrites) -> Serving:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            with urllib.request.urlopen(f"{upstream}{self.path}", timeout=10) as answer:
                status, body = answer.status, answer.read()
            payload = rewrites.apply(params.get("query", [""])[0], json.loads(body))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Serving(Handler)


@dataclass
class Bed:
    started: float
    prometheus: PrometheusServer
    proxy_url: str
    rewrites: Rewrites


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    work: Path = tmp_path_factory.mktemp("invalid-answers")
    started = time.time()
    metrics = exporter(lambda: _exposition(started))
    sd_file = work / "targets.json"
    sd_file.write_text(json.dumps([{"targets": [metrics.address]}]))
    prometheus = PrometheusServer(work / "prometheus", sd_file)
    rewrites = Rewrites()
    problem: str | None = None
    try:
        prometheus.start()
    except PrometheusUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        metrics.close()
        pytest.fail(f"Prometheus is required and could not start:\n{problem}", pytrace=False)
    faults = proxy(prometheus.url, rewrites)
    try:
        yield Bed(started, prometheus, f"http://{faults.address}", rewrites)
    finally:
        faults.close()
        prometheus.stop()
        metrics.close()


def _check(builtin: str) -> CheckDefinition:
    return CheckDefinition(
        name=builtin,
        builtin=builtin,
        query=None,
        direction="lowerIsBetter",
        relative_tolerance=0.5 if builtin == "error-rate" else 0.2,
        min_samples=100,
        alpha_fail=0.01,
        alpha_pass=0.05,
        consecutive_error_limit=1000,
    )


CHECKS = [_check("error-rate"), _check("latency-p99")]


def _subject(name: str) -> Subject:
    return Subject(
        namespace=NS,
        isvc=name,
        mode="knative",
        canary_revision=canary(name),
        baseline_revision=baseline(name),
        metric_profile="knative-otel",
        window=timedelta(seconds=10),
    )


def _analyzer(bed: Bed) -> Analyzer:
    provider = PrometheusProvider(bed.proxy_url, timeout=5)
    looks = LookSource(
        provider, period=timedelta(seconds=2), lag=timedelta(seconds=3),
        window=timedelta(seconds=10), max_sample_age=MAX_SAMPLE_AGE,
    )  # fmt: skip
    return Analyzer(provider, looks=looks)


def _run(
    bed: Bed,
    names: list[str],
    done: Callable[[dict[str, list[StepAnalysis]]], bool],
    *,
    deadline: float = 45.0,
) -> dict[str, list[StepAnalysis]]:
    """Evaluate every rollout about once a second (the real clock: Prometheus has real
    data) until ``done`` or the deadline; every round of every rollout."""
    analyzer = _analyzer(bed)
    memory: dict[str, dict[str, CheckMemory]] = {name: {} for name in names}
    rounds: dict[str, list[StepAnalysis]] = {name: [] for name in names}
    wait_for_data = bed.started + 8 - time.time()
    if wait_for_data > 0:
        time.sleep(wait_for_data)  # a few scrapes, so that the first look has two instants
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        at = datetime.now(UTC)
        for name in names:
            step = analyzer.analyze(_subject(name), CHECKS, memory[name], at, grace=False)
            memory[name] = dict(step.memory)
            rounds[name].append(step)
        if done(rounds):
            break
        time.sleep(1.0)
    return rounds


def _failed(steps: list[StepAnalysis]) -> bool:
    return any(step.verdict is Outcome.FAILED for step in steps)


def _errors(steps: list[StepAnalysis], check: str) -> list[dict[str, Any]]:
    return [
        dict(step.evaluation(check).detail)
        for step in steps
        if step.evaluation(check).outcome is Outcome.ERROR
    ]


# rollout -> (check that must be an Error, error kind, rule, series text)
EXPECTED_ERRORS = {
    "decrease": ("error-rate", "invalid-counter", "decrease", 'http_response_status_code="500"'),
    "negative": ("error-rate", "invalid-counter", "negative", 'http_response_status_code="500"'),
    "nan": ("error-rate", "invalid-counter", "non-finite", 'http_response_status_code="200"'),
    "nonmono": ("latency-p99", "invalid-histogram", "monotonic", "kn_serving_invocation"),
    "mismatch": ("latency-p99", "invalid-histogram", "count-mismatch", "kn_serving_invocation"),
    "frozen": ("error-rate", "stale-sample", "sample-age", 'http_response_status_code="500"'),
    "shifted": ("error-rate", "stale-sample", "timestamp", "http_server_request"),
    "twice": ("error-rate", "duplicate-series", "duplicate", "http_server_request"),
    "garbled": ("error-rate", "unreadable-sample", "unreadable", '{namespace="fraud"'),
}


def test_invalid_answers_never_promote_and_a_bad_canary_beside_them_is_rolled_back(
    bed: Bed,
) -> None:
    names = list(CANARIES)
    reset_read = bed.started + RESET_AFTER + 6  # the look over the restart is due by then

    def done(rounds: dict[str, list[StepAnalysis]]) -> bool:
        errors_seen = all(
            any(d.get("error_rule") == rule for d in _errors(rounds[name], check))
            for name, (check, _kind, rule, _series) in EXPECTED_ERRORS.items()
        )
        return (
            errors_seen
            and _failed(rounds["bad"])
            and _failed(rounds["nonmono"])
            and time.time() > reset_read + 2
        )

    rounds = _run(bed, names, done)
    summary = {
        name: [(s.verdict.value, s.sufficient_data, s.summary[:160]) for s in steps[-2:]]
        for name, steps in rounds.items()
    }
    # the genuinely bad canaries are rolled back, one of them beside its own bad histogram
    assert _failed(rounds["bad"]), summary
    assert _failed(rounds["nonmono"]), summary
    failed = next(s for s in rounds["nonmono"] if s.verdict is Outcome.FAILED)
    assert failed.evaluation("error-rate").detail["decision"] == "regression"
    # every broken rollout: never sufficient, its check an Error naming series and rule
    for name, (check, kind, rule, series) in EXPECTED_ERRORS.items():
        steps = rounds[name]
        assert not any(s.sufficient_data for s in steps), (name, summary[name])
        found = [d for d in _errors(steps, check) if d.get("error_rule") == rule]
        assert found, (name, summary[name])
        detail = found[-1]
        assert detail["error_kind"] == kind
        assert canary(name) in str(detail["error_series"])
        assert series in str(detail["error_series"])
        assert detail["error_query"]
        assert len(str(detail["error_digest"])) == 64
        assert detail["error_at"]
        evaluation = next(
            s.evaluation(check) for s in reversed(steps)
            if s.evaluation(check).detail.get("error_rule") == rule
        )  # fmt: skip
        assert evaluation.query == detail["error_query"]
        assert evaluation.response_digest == detail["error_digest"]
        assert f"rule: {rule}" in evaluation.message
    # honest rollouts in the same group, a genuine restart included, read without error
    for name in ("healthy", "bad", "reset"):
        for check in ("error-rate", "latency-p99"):
            assert not _errors(rounds[name], check), (name, check, _errors(rounds[name], check))
    reset_memory = rounds["reset"][-1].memory["error-rate"]
    assert reset_memory.through is not None
    assert reset_memory.through.timestamp() > bed.started + RESET_AFTER  # read past it


def test_prometheus_sends_the_sample_times_of_old_samples_only(bed: Bed) -> None:
    """The raw queries as a real Prometheus evaluates them: the time of the frozen 5xx
    counter (its explicit timestamp, from the start), and no time for a current series."""
    frozen, healthy = canary("frozen"), canary("healthy")
    wait = bed.started + MAX_SAMPLE_AGE.total_seconds() + 2 - time.time()
    if wait > 0:
        time.sleep(wait)  # the frozen sample must be older than the bound
    selector = (
        f'http_server_request_duration_seconds_count{{namespace="{NS}",'
        f'revision=~"{frozen}|{healthy}"}}'
    )
    promql = with_sample_times(selector, max_age=MAX_SAMPLE_AGE)
    result = PrometheusProvider(bed.prometheus.url, timeout=5).query(promql, datetime.now(UTC))
    times = [s for s in result.series if s.labels.get("ksc_sample") == "time"]
    assert [(s.labels["revision"], s.labels["http_response_status_code"]) for s in times] == [
        (frozen, "500")
    ]
    assert times[0].value == int(bed.started * 1000) / 1000
    values = [s.labels["revision"] for s in result.series if "ksc_sample" not in s.labels]
    assert sorted(values) == sorted([frozen, frozen, healthy, healthy])


def test_a_partial_answer_never_promotes_but_a_bad_canary_is_still_rolled_back(
    bed: Bed,
) -> None:
    bed.rewrites.warnings = ("1 of 2 remote stores did not answer",)
    try:
        rounds = _run(
            bed, ["healthy", "bad"], lambda r: _failed(r["bad"]) and len(r["healthy"]) >= 8
        )
    finally:
        bed.rewrites.warnings = ()
    assert _failed(rounds["bad"])
    failed = next(s for s in rounds["bad"] if s.verdict is Outcome.FAILED)
    assert "1 of 2 remote stores" in str(failed.evaluation("error-rate").detail["partial"])
    for step in rounds["healthy"]:
        evaluation = step.evaluation("error-rate")
        assert not evaluation.sufficient
        assert not step.sufficient_data
        assert evaluation.outcome is Outcome.ERROR
        assert evaluation.detail["error_kind"] == "partial-answer"
        assert evaluation.query
        assert len(evaluation.response_digest) == 64
