"""The analyzer's look-based checks (analysis.runner with analysis.looks): what a rollout
gets from one evaluation round after another, with the evidence carried in its memory.

Prometheus is a fake that serves the same per-look counts at every grid time, so each
scenario is deterministic: a canary with twice the baseline's error rate, a healthy one,
one that serves nothing, and a Prometheus that goes away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from analysis.looks import LookSource
from analysis.runner import Analyzer
from analysis.types import (
    CheckDefinition,
    CheckMemory,
    Outcome,
    QueryResult,
    Series,
    StepAnalysis,
    Subject,
)
from tests.unit.test_looks import AT, SECOND, FakePrometheus, Revision

CANARY, BASELINE = "scorer-00002", "scorer-00001"
SUBJECT = Subject(
    namespace="fraud",
    isvc="scorer",
    mode="knative",
    canary_revision=CANARY,
    baseline_revision=BASELINE,
    metric_profile="knative-otel",
    window=timedelta(seconds=60),
)


def errors(**overrides: Any) -> CheckDefinition:
    base: dict[str, Any] = {
        "name": "error-rate",
        "builtin": "error-rate",
        "query": None,
        "direction": "lowerIsBetter",
        "relative_tolerance": 0.5,
        "min_samples": 100,
        "alpha_fail": 0.01,
        "alpha_pass": 0.05,
    }
    return CheckDefinition(**{**base, **overrides})


def latency(**overrides: Any) -> CheckDefinition:
    return errors(name="latency-p99", builtin="latency-p99", relative_tolerance=0.2, **overrides)


def setup(canary: Revision, baseline: Revision) -> tuple[FakePrometheus, Analyzer]:
    prometheus = FakePrometheus({("fraud", CANARY): canary, ("fraud", BASELINE): baseline})
    looks = LookSource(prometheus, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60)
    return prometheus, Analyzer(prometheus, looks=looks)


def rounds(
    analyzer: Analyzer,
    checks: list[CheckDefinition],
    count: int,
    *,
    grace: bool = False,
    memory: Mapping[str, CheckMemory] | None = None,
    start: int = 0,
) -> list[StepAnalysis]:
    """``count`` evaluations, one per 5 s look, each carrying the last one's memory."""
    results: list[StepAnalysis] = []
    current = dict(memory or {})
    for i in range(start, start + count):
        result = analyzer.analyze(SUBJECT, checks, current, AT + SECOND * (5 * i + 2),
                                  grace=grace)  # fmt: skip
        current = dict(result.memory)
        results.append(result)
    return results


HEALTHY = Revision(requests=600, errors=6)
BASE = Revision(requests=5400, errors=54)


def test_twice_the_baseline_error_rate_is_rolled_back_fast_at_any_sample_size() -> None:
    _, analyzer = setup(Revision(requests=600, errors=12), BASE)
    results = rounds(analyzer, [errors(min_samples=100_000)], 20)
    verdicts = [r.verdict for r in results]
    first = verdicts.index(Outcome.FAILED)
    # The oracle for this effect against "within half the tolerance" is 8 looks of this
    # size; the first looks are tempered by the over-dispersion assumed before any is seen.
    assert first < 2 * 8
    failed = results[first]
    assert failed.fast_fail
    evaluation = failed.evaluation("error-rate")
    assert evaluation.detail["decision"] == "regression"
    assert evaluation.statistic is not None
    assert evaluation.threshold is not None
    assert evaluation.threshold == pytest.approx(100)
    assert evaluation.statistic >= evaluation.threshold
    assert "proven worse than the baseline by more than +25%" in evaluation.message


def test_a_healthy_canary_becomes_sufficient_evidence_to_advance() -> None:
    _, analyzer = setup(HEALTHY, BASE)
    results = rounds(analyzer, [errors()], 30)
    assert all(r.verdict is Outcome.SUCCESSFUL for r in results)  # never fails
    first = next(i for i, r in enumerate(results) if r.sufficient_data)
    assert 0 < first < 30
    before = results[first - 1].evaluation("error-rate")
    assert before.outcome is Outcome.INCONCLUSIVE  # still collecting
    assert "collecting evidence" in before.message
    assert before.detail["seconds_to_pass"] is not None
    after = results[first].evaluation("error-rate")
    assert after.detail["decision"] == "non-inferior"
    assert after.sufficient


def test_evidence_survives_a_restart_through_the_persisted_memory() -> None:
    _, analyzer = setup(HEALTHY, BASE)
    straight = rounds(analyzer, [errors()], 12)
    _, fresh = setup(HEALTHY, BASE)  # a new process: new cache, new analyzer
    first = rounds(fresh, [errors()], 6)
    stored = {k: CheckMemory.from_json(v.to_json()) for k, v in first[-1].memory.items()}
    resumed = rounds(fresh, [errors()], 6, memory=stored, start=6)
    a = straight[-1].evaluation("error-rate").detail
    b = resumed[-1].evaluation("error-rate").detail
    assert a["safe_e_value"] == pytest.approx(b["safe_e_value"])
    assert a["looks"] == b["looks"] == 12


def test_looks_missed_while_the_controller_was_away_are_read_later() -> None:
    _, analyzer = setup(HEALTHY, BASE)
    first = analyzer.analyze(SUBJECT, [errors()], {}, AT + SECOND * 2, grace=False)
    later = analyzer.analyze(SUBJECT, [errors()], first.memory, AT + SECOND * 32, grace=False)
    assert later.evaluation("error-rate").detail["looks_read"] == 6


def test_prometheus_down_is_an_error_and_never_evidence() -> None:
    prometheus, analyzer = setup(HEALTHY, BASE)
    healthy = rounds(analyzer, [errors()], 3)
    prometheus.down = True
    down = rounds(analyzer, [errors(consecutive_error_limit=1)], 3,
                  memory=healthy[-1].memory, start=3)  # fmt: skip
    assert [r.evaluation("error-rate").outcome for r in down] == [Outcome.ERROR] * 3
    assert down[0].verdict is Outcome.SUCCESSFUL  # one error tolerated...
    assert down[1].verdict is Outcome.ERROR  # ...the second pauses the rollout
    assert not any(r.sufficient_data for r in down)
    memory = down[-1].memory["error-rate"]
    assert memory.through == healthy[-1].memory["error-rate"].through  # nothing skipped
    prometheus.down = False
    back = rounds(analyzer, [errors()], 1, memory=down[-1].memory, start=6)
    assert back[0].evaluation("error-rate").detail["looks_read"] == 4  # the missed looks


def test_a_canary_that_serves_nothing_never_passes() -> None:
    _, analyzer = setup(Revision(requests=0, errors=0, buckets={}, p99=0.0), BASE)
    in_grace = rounds(analyzer, [errors(), latency()], 3, grace=True)
    assert all(not r.sufficient_data for r in in_grace)
    assert all(r.verdict is Outcome.SUCCESSFUL for r in in_grace)  # still collecting
    after = rounds(analyzer, [errors(), latency()], 2, memory=in_grace[-1].memory, start=3)
    assert after[0].verdict is Outcome.INCONCLUSIVE  # pauses for a human
    assert "no canary data" in after[0].summary


def test_latency_calibrates_then_catches_a_slow_canary() -> None:
    slow = Revision(requests=600, buckets={0.01: 100.0, 0.05: 300.0}, p99=0.3)
    _, analyzer = setup(slow, Revision(requests=5400, buckets={0.01: 3240, 0.05: 2106}))
    results = rounds(analyzer, [latency()], 6)
    first = results[0].evaluation("latency-p99")
    assert first.detail["decision"] == "continue"  # the first look fixed the threshold
    assert first.detail["looks"] == 0  # and is not evidence itself
    assert first.detail["reference_seconds"] == pytest.approx(0.05 * 0.99 * 5400 / 5346, rel=0.1)
    assert Outcome.FAILED in [r.verdict for r in results]


def test_a_hard_limit_fails_at_the_first_look_beyond_it() -> None:
    _, analyzer = setup(Revision(requests=600, errors=6, p99=0.9), BASE)
    result = analyzer.analyze(SUBJECT, [latency(hard_limit=0.5)], {}, AT + SECOND * 2,
                              grace=True)  # fmt: skip
    assert result.verdict is Outcome.FAILED
    assert result.fast_fail


def test_the_fast_path_leaves_custom_checks_alone() -> None:
    prometheus, analyzer = setup(HEALTHY, BASE)
    custom = CheckDefinition(
        name="fraud-fpr",
        builtin=None,
        query='fraud_fp_rate{revision="${revision}"}',
        direction="lowerIsBetter",
        relative_tolerance=0.1,
    )
    result = analyzer.analyze(SUBJECT, [errors(), custom], {}, AT + SECOND * 2, grace=False,
                              looks_only=True)  # fmt: skip
    assert [e.check for e in result.evaluations] == ["error-rate"]
    assert not any("fraud_fp_rate" in q for q in prometheus.sent)


class CounterPrometheus:
    """Answers an events/requests check's four queries from cumulative counters that
    grow by a fixed amount per evaluation; ``reset`` restarts the canary's counters."""

    url = "http://prometheus.test:9090"

    def __init__(self, canary_rate: float, baseline_rate: float = 0.02) -> None:
        self.rates = {CANARY: canary_rate, BASELINE: baseline_rate}
        self.elapsed = {CANARY: 0.0, BASELINE: 0.0}
        self.sent: list[str] = []
        self.extra: dict[str, dict[str, str]] = {}  # more labels on a part's series
        self.added: list[tuple[str, float]] = []  # more series in the answer
        self.hidden: set[str] = set()  # parts whose series are missing from the answer

    def tick(self, *, reset: bool = False) -> None:
        for revision in self.elapsed:
            self.elapsed[revision] += 1
        if reset:
            self.elapsed[CANARY] = 0.5

    def query(self, promql: str, at: datetime) -> QueryResult:
        """Each ``label_replace(template, "ksc_counter", "<part>", "", "")`` joined by
        ``or`` becomes one series labelled with its part, as Prometheus answers."""
        self.sent.append(promql)
        series = []
        for template, part in re.findall(r'label_replace\((.*?), "ksc_counter", "(\w+)"',
                                         promql):  # fmt: skip
            revision = CANARY if CANARY in template else BASELINE
            requests = 10_000.0 * self.elapsed[revision] * (1 if revision == CANARY else 9)
            value = requests * self.rates[revision] if 'false_positive"' in template else requests
            if part not in self.hidden:
                series.append(Series({"ksc_counter": part, **self.extra.get(part, {})}, value))
        series += [Series({"ksc_counter": part}, value) for part, value in self.added]
        return QueryResult(tuple(series), raw_digest="f" * 64, url=self.url)


FPR = CheckDefinition(
    name="fraud-fpr",
    builtin=None,
    query=None,
    direction="lowerIsBetter",
    relative_tolerance=0.1,
    min_samples=100,
    events='sum(fraud_decisions_total{revision="${revision}",outcome="false_positive"})',
    requests='sum(fraud_decisions_total{revision="${revision}",outcome=~"false_positive|ok"})',
    alpha_fail=0.01,
)


def counted_rounds(
    prometheus: CounterPrometheus, count: int, reset_at: int = -1
) -> list[StepAnalysis]:
    analyzer = Analyzer(prometheus)
    memory: dict[str, CheckMemory] = {}
    results = []
    for i in range(count):
        prometheus.tick(reset=i == reset_at)
        result = analyzer.analyze(SUBJECT, [FPR], memory, AT + SECOND * 30 * i, grace=False)
        memory = dict(result.memory)
        results.append(result)
    return results


def test_a_drifting_business_rate_is_rolled_back_by_its_counters() -> None:
    results = counted_rounds(CounterPrometheus(canary_rate=0.04), 10)
    assert results[0].evaluation("fraud-fpr").detail["looks"] == 0  # first values only
    failed = next(r for r in results if r.verdict is Outcome.FAILED)
    evaluation = failed.evaluation("fraud-fpr")
    assert evaluation.detail["decision"] == "regression"
    assert evaluation.canary_value == pytest.approx(0.04)
    assert evaluation.baseline_value == pytest.approx(0.02)
    parts = evaluation.query.split("\nor\n")  # one query: one consistent view of the counters
    assert [p.count(CANARY) for p in parts] == [1, 1, 0, 0]
    assert ['"false_positive"}' in p for p in parts] == [True, False, True, False]


def test_a_steady_business_rate_is_ruled_non_inferior() -> None:
    results = counted_rounds(CounterPrometheus(canary_rate=0.02), 20)
    assert all(r.verdict is not Outcome.FAILED for r in results)
    assert results[-1].sufficient_data
    assert results[-1].evaluation("fraud-fpr").detail["decision"] == "non-inferior"


def test_a_counter_reset_skips_one_interval_instead_of_counting_a_negative_one() -> None:
    results = counted_rounds(CounterPrometheus(canary_rate=0.02), 4, reset_at=2)
    reset = results[2].evaluation("fraud-fpr")
    assert "a counter went down" in str(reset.detail["note"])
    assert reset.detail["looks"] == 1  # unchanged by the reset interval
    assert results[3].evaluation("fraud-fpr").detail["looks"] == 2


@pytest.mark.parametrize(
    ("spoil", "kind", "message"),
    [
        pytest.param(lambda p: p.added.append(("canary_events", 3.0)), "duplicate-series",
                     "several series with this label set", id="two-series-for-a-part"),
        pytest.param(lambda p: p.added.append(("somewhere_else", 3.0)), "bad-query",
                     "without a known ksc_counter", id="a-stray-series"),
        pytest.param(lambda p: p.rates.update({CANARY: math.nan}), "not-a-number",
                     "canary events counter is nan", id="nan-counter"),
        pytest.param(lambda p: p.rates.update({BASELINE: math.inf}), "infinite",
                     "baseline events counter is inf", id="infinite-counter"),
    ],
)  # fmt: skip
def test_a_bad_counters_answer_is_an_error_and_moves_no_evidence(
    spoil: Any, kind: str, message: str
) -> None:
    prometheus = CounterPrometheus(canary_rate=0.02)
    good = counted_rounds(prometheus, 3)[-1]
    spoil(prometheus)
    prometheus.tick()
    analyzer = Analyzer(prometheus)
    bad = analyzer.analyze(SUBJECT, [FPR], good.memory, AT + SECOND * 300, grace=False)
    evaluation = bad.evaluation("fraud-fpr")
    assert evaluation.outcome is Outcome.ERROR
    assert evaluation.detail["error_kind"] == kind
    assert message in evaluation.message
    assert bad.memory["fraud-fpr"].sequential == good.memory["fraud-fpr"].sequential
    assert bad.memory["fraud-fpr"].counters == good.memory["fraud-fpr"].counters


def test_a_missed_scrape_delays_counting_but_loses_no_requests() -> None:
    """The baseline's series vanish for one evaluation (a failed scrape marks them stale):
    the next complete reading counts the gap too, so every request is still counted."""
    prometheus = CounterPrometheus(canary_rate=0.02)
    analyzer = Analyzer(prometheus)
    memory: dict[str, CheckMemory] = {}
    notes = []
    for i in range(5):
        prometheus.tick()
        prometheus.hidden = {"baseline_events", "baseline_requests"} if i == 2 else set()
        result = analyzer.analyze(SUBJECT, [FPR], memory, AT + SECOND * 30 * i, grace=False)
        memory = dict(result.memory)
        notes.append(result.evaluation("fraud-fpr").detail.get("note"))
    assert "no series now" in str(notes[2])
    state = memory["fraud-fpr"].sequential
    assert state is not None
    # four increases after the first reading, none lost: 10,000 / 90,000 requests each
    assert (state.canary_requests, state.baseline_requests) == (40_000, 360_000)


# --- evidence per step ----------------------------------------------------------------------


class FrozenPrometheus(FakePrometheus):
    """Counters that stop moving after ``frozen_at`` (an exporter stuck, a scrape target
    lost with its last values kept): every later look counts nothing."""

    frozen_at: datetime | None = None

    def looks_since_start(self, at: datetime) -> float:
        if self.frozen_at is not None:
            at = min(at, self.frozen_at)
        return super().looks_since_start(at)


def frozen_setup(frozen_at: datetime | None) -> tuple[FrozenPrometheus, Analyzer]:
    prometheus = FrozenPrometheus({("fraud", CANARY): HEALTHY, ("fraud", BASELINE): BASE})
    prometheus.frozen_at = frozen_at
    looks = LookSource(prometheus, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60)
    return prometheus, Analyzer(prometheus, looks=looks)


def stepped(
    analyzer: Analyzer,
    checks: list[CheckDefinition],
    rounds_at: range,
    memory: Mapping[str, CheckMemory],
    step: tuple[int, datetime],
) -> list[StepAnalysis]:
    """Evaluations at the looks ``rounds_at`` (look numbers), all at ``step``."""
    results: list[StepAnalysis] = []
    current = dict(memory)
    for i in rounds_at:
        result = analyzer.analyze(SUBJECT, checks, current, AT + SECOND * (5 * i + 2),
                                  grace=False, step=step)  # fmt: skip
        current = dict(result.memory)
        results.append(result)
    return results


def ruled_out_at_step_zero(
    analyzer: Analyzer, checks: list[CheckDefinition]
) -> tuple[list[StepAnalysis], int]:
    results = stepped(analyzer, checks, range(40), {}, (0, AT - SECOND * 60))
    first = next(i for i, r in enumerate(results) if r.sufficient_data)
    return results[: first + 1], first


def test_a_new_step_needs_its_own_canary_requests_after_its_split_showed() -> None:
    """Non-inferiority is not carried to the next step: the step advances only once
    ``min_samples`` canary requests were counted in looks wholly after its split showed
    (600 per look here, so two looks for 1,000)."""
    _, analyzer = frozen_setup(None)
    checks = [errors(min_samples=1000)]
    results, n = ruled_out_at_step_zero(analyzer, checks)
    reached = AT + SECOND * (5 * n + 3)  # between two looks
    after = stepped(analyzer, checks, range(n + 1, n + 5), results[-1].memory, (1, reached))
    assert [r.sufficient_data for r in after] == [False, False, True, True]
    held = after[0].evaluation("error-rate")
    assert held.outcome is Outcome.INCONCLUSIVE
    assert held.gating_outcome is Outcome.SUCCESSFUL
    assert "0 of the 1000 canary requests needed were counted at this step" in held.message
    assert held.detail["decision"] == "non-inferior"  # the evidence itself stands
    assert after[1].evaluation("error-rate").detail["step_canary_requests"] == 600
    assert after[2].evaluation("error-rate").detail["step_canary_requests"] == 1200


@pytest.mark.parametrize(
    "frozen_after",
    [
        pytest.param(-1, id="frozen-before-the-step"),
        pytest.param(0, id="frozen-as-the-step-begins"),
        pytest.param(1, id="frozen-one-look-into-the-step"),
    ],
)
def test_frozen_counters_never_make_a_new_step_sufficient(frozen_after: int) -> None:
    """Counters that stop moving (the issue's "answers frozen from the 25 % step on") give
    looks of zero requests: the step never gets its fresh canary requests, so it holds
    (and the engine pauses it at maxStepDuration), however long it waits."""
    checks = [errors(min_samples=1000), latency(min_samples=1000)]
    _, probe = frozen_setup(None)
    _, n = ruled_out_at_step_zero(probe, checks)
    _, analyzer = frozen_setup(AT + SECOND * (5 * (n + 1 + frozen_after)))
    results, _ = ruled_out_at_step_zero(analyzer, checks)
    reached = AT + SECOND * (5 * n + 3)
    after = stepped(analyzer, checks, range(n + 1, n + 60), results[-1].memory, (1, reached))
    assert not any(r.sufficient_data for r in after)
    assert all(r.verdict is Outcome.SUCCESSFUL for r in after)  # holding, not failing
    counted = after[-1].evaluation("error-rate").detail["step_canary_requests"]
    assert isinstance(counted, float)
    assert counted <= 600


def test_looks_read_late_from_before_the_split_showed_do_not_count_for_the_step() -> None:
    """A controller back from a restart reads the looks it missed: those from before the
    new split showed in status are evidence, but not the new step's."""
    _, analyzer = frozen_setup(None)
    checks = [errors(min_samples=1000)]
    results, n = ruled_out_at_step_zero(analyzer, checks)
    reached = AT + SECOND * (5 * (n + 10) + 3)  # the split showed ten looks later
    late = analyzer.analyze(SUBJECT, checks, results[-1].memory, AT + SECOND * (5 * (n + 10) + 2),
                            grace=False, step=(1, reached))  # fmt: skip
    evaluation = late.evaluation("error-rate")
    assert evaluation.detail["looks_read"] == 10
    assert evaluation.detail["step_canary_requests"] == 0
    assert not late.sufficient_data


def test_a_counters_check_needs_fresh_intervals_at_a_new_step() -> None:
    prometheus = CounterPrometheus(canary_rate=0.02)
    analyzer = Analyzer(prometheus)
    memory: dict[str, CheckMemory] = {}
    check = replace(FPR, min_samples=20_000)
    results = []
    for i in range(40):
        prometheus.tick()
        at = AT + SECOND * 30 * i
        step = (0, AT - SECOND) if i < 20 else (1, AT + SECOND * (30 * 20 - 1))
        result = analyzer.analyze(SUBJECT, [check], memory, at, grace=False, step=step)
        memory = dict(result.memory)
        results.append(result)
    assert results[19].sufficient_data  # ruled out at step 0
    # at step 1: the interval ending at 20 began before the split showed; the next ones
    # count 10,000 canary requests each
    assert [r.sufficient_data for r in results[20:23]] == [False, False, True]


def test_the_steps_start_must_be_timezone_aware() -> None:
    _, analyzer = frozen_setup(None)
    with pytest.raises(ValueError, match="timezone-aware"):
        analyzer.analyze(SUBJECT, [errors()], {}, AT, grace=False,
                         step=(1, datetime(2026, 11, 24, 9, 30)))  # noqa: DTZ001  # fmt: skip


@pytest.mark.parametrize(("burst", "open_block"), [(None, False), (30, True)])
def test_the_looks_burst_length_reaches_the_tests(burst: int | None, open_block: bool) -> None:
    prometheus = FakePrometheus({("fraud", CANARY): HEALTHY, ("fraud", BASELINE): BASE})
    looks = LookSource(prometheus, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60,
                       burst=None if burst is None else SECOND * burst)  # fmt: skip
    results = rounds(Analyzer(prometheus, looks=looks), [errors()], 3)
    state = results[-1].memory["error-rate"].sequential
    assert state is not None
    assert state.looks >= 2
    assert bool(state.block) is open_block  # six looks to a 30 s block: still open
