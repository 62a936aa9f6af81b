"""Verdicts on readings (analysis.assess): one table row per situation a rollout meets.

Each row gives a check, what was read, the counters carried from the previous evaluation
and whether the step is still in its hold time, and states what the user sees: the
evaluation's outcome, the outcome that gates the step, whether it counts as evidence to
advance, the counters after it, and the sentence explaining it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from analysis.assess import (
    Evidence,
    assess,
    combine,
    evaluation,
    reading_from_results,
    step_outcome,
)
from analysis.profiles import QueryPlan, Unit
from analysis.types import (
    BadQuery,
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    Infinite,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    Outcome,
    QueryResult,
    Reading,
    Series,
    Unreachable,
)

S, F, INC, ERR = Outcome.SUCCESSFUL, Outcome.FAILED, Outcome.INCONCLUSIVE, Outcome.ERROR
AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
NAN, INF = math.nan, math.inf


def p99(**overrides: Any) -> CheckDefinition:
    """The default latency check: p99 at most 20 % above the baseline, 100 samples."""
    base: dict[str, Any] = {
        "name": "latency-p99",
        "builtin": "latency-p99",
        "query": None,
        "direction": "lowerIsBetter",
        "relative_tolerance": 0.2,
        "min_samples": 100,
    }
    return CheckDefinition(**{**base, **overrides})


def errors(**overrides: Any) -> CheckDefinition:
    return p99(**{"name": "error-rate", "builtin": "error-rate", **overrides})


def rate(**overrides: Any) -> CheckDefinition:
    return p99(
        **{
            "name": "request-rate",
            "builtin": "request-rate",
            "direction": "higherIsBetter",
            **overrides,
        }
    )


def read(
    canary: float | None = 0.041,
    baseline: float | None = 0.040,
    canary_samples: int | None = 500,
    baseline_samples: int | None = 5000,
) -> Reading:
    return Reading(canary, baseline, canary_samples, baseline_samples)


def mem(failures: int = 0, inconclusive: int = 0, errs: int = 0) -> CheckMemory:
    return CheckMemory(failures, inconclusive, errs)


@dataclass(frozen=True)
class Row:
    id: str
    check: CheckDefinition
    reading: Reading
    outcome: Outcome
    gating: Outcome
    sufficient: bool
    memory_after: CheckMemory
    memory: CheckMemory = field(default_factory=CheckMemory)
    grace: bool = False
    fast_fail: bool = False
    message: str | None = None  # exact message, when the row is about wording
    says: tuple[str, ...] = ()  # substrings of the message


ROWS = [
    # --- the canary is as good as the baseline, or worse -------------------------------
    Row("pass", p99(), read(), S, S, True, mem(),
        message="p99 0.041s vs baseline 0.040s (+2.5%), limit +20%"),
    Row("pass resets every counter", p99(failure_limit=3), read(), S, S, True, mem(),
        memory=mem(2, 1, 3)),
    Row("relative fail", p99(), read(0.120, 0.040), F, F, False, mem(1),
        message="p99 0.120s vs baseline 0.040s (+200%), limit +20%"),
    Row("relative fail just beyond the tolerance", p99(), read(0.0484, 0.040), F, F, False,
        mem(1), says=("(+21%)",)),
    Row("just within the tolerance passes", p99(), read(0.0476, 0.040), S, S, True, mem()),
    Row("absolute fail", errors(relative_tolerance=None, absolute_limit=0.05),
        read(0.08, 0.01), F, F, False, mem(1),
        message="5xx ratio 8% vs baseline 1% (+700%), absolute limit 5%"),
    Row("absolute fail although relative passes",
        errors(relative_tolerance=0.5, absolute_limit=0.02), read(0.025, 0.02), F, F, False,
        mem(1), says=("absolute limit 2%",)),
    Row("clear regression counts during grace", p99(), read(0.120, 0.040), F, F, False,
        mem(1), grace=True),
    # --- hard limit: fails at once --------------------------------------------------
    Row("hard limit with few samples fails at once", p99(hard_limit=0.008, failure_limit=3),
        read(0.012, 0.005, canary_samples=3), F, F, False, mem(1), grace=True, fast_fail=True,
        message="p99 0.012s vs baseline 0.005s (+140%), beyond the hard limit 0.008s"),
    Row("hard limit beats a tolerated failure count", p99(hard_limit=0.1, failure_limit=5),
        read(0.2, 0.19), F, F, False, mem(1), fast_fail=True),
    Row("under the hard limit, the other limits decide", p99(hard_limit=0.1), read(0.05, 0.049),
        S, S, True, mem()),
    # --- no data --------------------------------------------------------------------
    Row("grace: no canary series is still collecting", p99(), read(None, 0.040, 0), INC, S,
        False, mem(1), memory=mem(1), grace=True, says=("still collecting",)),
    Row("after grace, onNoData pass: successful but never sufficient", p99(on_no_data="pass"),
        read(None, 0.040, 0), S, S, False, mem(0, 2), memory=mem(0, 2),
        says=("never advances",)),
    Row("after grace, onNoData fail", p99(on_no_data="fail"), read(None, 0.040, 0), F, F,
        False, mem(1), says=("onNoData: fail",)),
    Row("after grace, onNoData inconclusive", p99(), read(None, 0.040, 0), INC, INC, False,
        mem(0, 1), says=("no canary data",)),
    Row("a NoData reading is no data for both sides", p99(on_no_data="fail"),
        Reading.failed(NoData("empty")), F, F, False, mem(1)),
    Row("NaN over zero requests is no data, not an error", errors(), read(NAN, 0.01, 0), INC, S,
        False, mem(), grace=True),
    # --- too few samples ------------------------------------------------------------
    Row("too few samples: waits, never passes", p99(), read(canary_samples=40), INC, S, False,
        mem(), says=("40 canary requests of the 100 needed",)),
    Row("too few samples: a breach is not a failure", p99(), read(0.2, 0.04, 40), INC, S, False,
        mem(2), memory=mem(2)),
    Row("too few samples in grace", p99(), read(canary_samples=0), INC, S, False, mem(),
        grace=True),
    Row("unknown sample count counts as none", p99(), read(canary_samples=None), INC, S, False,
        mem()),
    Row("min_samples 0 passes on any data", p99(min_samples=0), read(canary_samples=0), S, S,
        True, mem()),
    # --- limits ---------------------------------------------------------------------
    Row("failure_limit 0: the first failure gates", p99(failure_limit=0), read(0.1, 0.04), F, F,
        False, mem(1)),
    Row("failure_limit 2: first failure tolerated", p99(failure_limit=2), read(0.1, 0.04), F, S,
        False, mem(1), says=("tolerated (failure 1 of 2 allowed)",)),
    Row("failure_limit 2: second failure tolerated", p99(failure_limit=2), read(0.1, 0.04), F,
        S, False, mem(2), memory=mem(1)),
    Row("failure_limit 2: third failure gates", p99(failure_limit=2), read(0.1, 0.04), F, F,
        False, mem(3), memory=mem(2), says=("3 in a row, 2 tolerated",)),
    Row("inconclusive_limit 1: first tolerated", p99(inconclusive_limit=1), read(0.04, None),
        INC, S, False, mem(0, 1), says=("baseline has no data",)),
    Row("inconclusive_limit 1: second gates", p99(inconclusive_limit=1), read(0.04, None), INC,
        INC, False, mem(0, 2), memory=mem(0, 1)),
    Row("error under the limit is tolerated", p99(),
        Reading.failed(Unreachable("connection refused")), ERR, S, False, mem(0, 0, 1),
        says=("could not be read: connection refused",)),
    Row("error beyond consecutive_error_limit gates", p99(consecutive_error_limit=4),
        Reading.failed(BadQuery("parse error")), ERR, ERR, False, mem(0, 0, 5),
        memory=mem(0, 0, 4)),
    Row("errors count during grace too", p99(consecutive_error_limit=0),
        Reading.failed(Unreachable("timeout")), ERR, ERR, False, mem(0, 0, 1), grace=True),
    Row("an error keeps the failure count", p99(failure_limit=1),
        Reading.failed(Unreachable("timeout")), ERR, S, False, mem(1, 0, 1), memory=mem(1)),
    # --- NaN and infinities never pass ----------------------------------------------
    Row("NaN canary with requests is an error", p99(consecutive_error_limit=0),
        read(NAN, 0.04), ERR, ERR, False, mem(0, 0, 1), says=("NaN",)),
    Row("NaN baseline with requests is an error", p99(consecutive_error_limit=0),
        read(0.04, NAN), ERR, ERR, False, mem(0, 0, 1)),
    Row("+Inf canary is an error", p99(consecutive_error_limit=0), read(INF, 0.04), ERR, ERR, False,
        mem(0, 0, 1), says=("the canary's value is +Inf",)),
    Row("-Inf baseline is an error", p99(consecutive_error_limit=0), read(0.04, -INF), ERR, ERR,
        False, mem(0, 0, 1)),
    Row("NaN is not a pass even with onNoData pass", p99(on_no_data="pass"), read(NAN, 0.04),
        ERR, S, False, mem(0, 0, 1)),
    Row("several series per revision is an error", p99(consecutive_error_limit=0),
        Reading.failed(MultipleSeries("2 series")), ERR, ERR, False, mem(0, 0, 1)),
    # --- higher is better -----------------------------------------------------------
    Row("higherIsBetter: more passes", rate(relative_tolerance=0.05), read(120, 100), S, S,
        True, mem(), message="request rate 120 req/s vs baseline 100 req/s (+20%), limit -5%"),
    Row("higherIsBetter: 10% less fails a 5% tolerance", rate(relative_tolerance=0.05),
        read(90, 100), F, F, False, mem(1), says=("(-10%)",)),
    Row("higherIsBetter: below the absolute floor fails",
        rate(relative_tolerance=None, absolute_limit=50), read(40, 400), F, F, False, mem(1)),
    Row("higherIsBetter: hard floor fails at once", rate(hard_limit=1.0, min_samples=1000),
        read(0.5, 100, 10), F, F, False, mem(1), fast_fail=True),
    # --- the baseline ---------------------------------------------------------------
    Row("baseline 0, canary 0 passes", errors(), read(0.0, 0.0), S, S, True, mem()),
    Row("baseline 0, canary above: the absolute limit decides (pass)",
        errors(absolute_limit=0.05), read(0.01, 0.0), S, S, True, mem()),
    Row("baseline 0, canary above: the absolute limit decides (fail)",
        errors(absolute_limit=0.05), read(0.06, 0.0), F, F, False, mem(1)),
    Row("baseline 0, canary above, no absolute limit: inconclusive", errors(),
        read(0.01, 0.0), INC, INC, False, mem(0, 1), says=("baseline is 0",)),
    Row("baseline 0, higherIsBetter: not worse passes", rate(relative_tolerance=0.1),
        read(5.0, 0.0), S, S, True, mem()),
    Row("no baseline after grace: inconclusive", p99(), read(0.04, None), INC, INC, False,
        mem(0, 1), says=("relative limit cannot be checked",)),
    Row("no baseline during grace: still collecting", p99(), read(0.04, None), INC, S, False,
        mem(), grace=True),
    Row("no baseline: the absolute limit still fails", p99(absolute_limit=0.1),
        read(0.2, None), F, F, False, mem(1)),
    Row("no baseline, absolute only: passes", p99(relative_tolerance=None, absolute_limit=0.1),
        read(0.05, None), S, S, True, mem(), message="p99 0.050s, absolute limit 0.100s"),
    # --- dry run: assessed like any other check -------------------------------------
    Row("dry run is assessed normally", p99(dry_run=True), read(0.1, 0.04), F, F, False, mem(1)),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_assess(row: Row) -> None:
    result = assess(row.check, row.reading, row.memory, grace=row.grace)
    assert (result.outcome, result.gating_outcome) == (row.outcome, row.gating), result.message
    assert result.sufficient is row.sufficient, result.message
    assert result.memory == row.memory_after
    assert result.fast_fail is row.fast_fail
    if row.message is not None:
        assert result.message == row.message
    for text in row.says:
        assert text in result.message


@pytest.mark.parametrize(
    ("check", "reading", "statistic", "threshold"),
    [
        (p99(), read(0.050, 0.040), pytest.approx(0.25), 0.2),
        (rate(relative_tolerance=0.1), read(80, 100), pytest.approx(-0.2), -0.1),
        (p99(relative_tolerance=None, absolute_limit=0.1), read(0.05, 0.04), 0.05, 0.1),
        (p99(hard_limit=0.03), read(0.05, 0.04), 0.05, 0.03),
        (p99(), read(None, 0.04), None, None),
    ],
    ids=["relative", "relative-higher", "absolute", "hard", "no-data"],
)
def test_statistic_and_threshold_are_recorded(
    check: CheckDefinition, reading: Reading, statistic: object, threshold: float | None
) -> None:
    result = assess(check, reading, CheckMemory(), grace=False)
    assert result.statistic == statistic
    assert result.threshold == threshold


def test_detail_records_the_limits_and_counters() -> None:
    result = assess(p99(failure_limit=1), read(0.1, 0.04), CheckMemory(), grace=False)
    assert result.detail["reason"] == "breach"
    assert result.detail["relative_change"] == pytest.approx(1.5)
    assert result.detail["relative_tolerance"] == 0.2
    assert result.detail["consecutive_failures"] == 1
    assert result.detail["grace"] is False


def test_a_replacement_judge_decides_but_the_safety_rules_stay() -> None:
    """A judge (the statistics of a later issue) can replace the threshold comparison;
    samples, hard limits and counters still apply around it."""
    from analysis.assess import Judgement

    def always_fail(check: CheckDefinition, reading: Reading, unit: Unit) -> Judgement:
        return Judgement(F, "breach", 9.9, 0.01, "sequential test rejects")

    few = assess(p99(), read(canary_samples=5), CheckMemory(), grace=False, judge=always_fail)
    assert (few.outcome, few.gating_outcome) == (INC, S)
    many = assess(p99(), read(), CheckMemory(), grace=False, judge=always_fail)
    assert (many.outcome, many.gating_outcome, many.statistic) == (F, F, 9.9)
    assert many.message == "sequential test rejects"


# --- combination ----------------------------------------------------------------------


def ev(
    name: str,
    gating: Outcome,
    *,
    sufficient: bool | None = None,
    dry_run: bool = False,
    fast_fail: bool = False,
    message: str = "msg",
) -> CheckEvaluation:
    return CheckEvaluation(
        check=name,
        evaluated_at=AT,
        outcome=gating,
        gating_outcome=gating,
        sufficient=(gating is S) if sufficient is None else sufficient,
        query="q",
        prometheus_url="http://prom",
        response_digest="d",
        canary_value=None,
        baseline_value=None,
        canary_samples=None,
        baseline_samples=None,
        statistic=None,
        threshold=None,
        dry_run=dry_run,
        message=message,
        detail={},
        fast_fail=fast_fail,
    )


COMBINATIONS = [
    ("all pass", [ev("a", S), ev("b", S)], S, True, False, "all 2 gating checks passed"),
    ("one passes", [ev("a", S)], S, True, False, "the gating check passed"),
    ("a check still collecting", [ev("a", S), ev("b", S, sufficient=False, message="40 of 100")],
     S, False, False, "waiting for evidence; b: 40 of 100"),
    ("failed beats error and inconclusive", [ev("a", INC), ev("b", ERR), ev("c", F, message="bad")],
     F, False, False, "c failed: bad"),
    ("error beats inconclusive", [ev("a", INC), ev("b", ERR, message="timeout"), ev("c", S)], ERR,
     False, False, "b could not be evaluated: timeout"),
    ("inconclusive beats successful", [ev("a", S), ev("b", INC, message="no baseline")], INC, False,
     False, "b inconclusive: no baseline"),
    ("two failures both named", [ev("a", F, message="x"), ev("b", F, message="y")], F, False,
     False, "a failed: x; b failed: y"),
    ("a dry-run failure never gates", [ev("a", S), ev("biz", F, dry_run=True, message="fpr up")],
     S, True, False, "the gating check passed"),
    ("dry-run failures are still reported",
     [ev("a", S), ev("biz", F, dry_run=True, fast_fail=True, message="fpr up")], S, True,
     False, "dry run biz failed: fpr up"),
    ("dry-run checks alone are never sufficient", [ev("biz", S, dry_run=True)], S, False, False,
     "no gating checks"),
    ("a dry-run success does not make an insufficient step sufficient",
     [ev("a", S, sufficient=False), ev("biz", S, dry_run=True)], S, False, False, "waiting"),
    ("hard-limit failure is a fast fail", [ev("a", F, fast_fail=True), ev("b", S)], F, False,
     True, "a failed"),
    ("a gating dry-run fast fail is not", [ev("a", F), ev("b", F, dry_run=True, fast_fail=True)],
     F, False, False, "a failed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("evaluations", "verdict", "sufficient", "fast_fail", "summary"),
    [row[1:] for row in COMBINATIONS],
    ids=[row[0] for row in COMBINATIONS],
)
def test_combine(
    evaluations: list[CheckEvaluation],
    verdict: Outcome,
    sufficient: bool,
    fast_fail: bool,
    summary: str,
) -> None:
    memory = {e.check: CheckMemory() for e in evaluations}
    step = combine(evaluations, memory)
    assert step.verdict is verdict
    assert step.sufficient_data is sufficient
    assert step.fast_fail is fast_fail
    assert summary in step.summary
    assert step.evaluated_at == AT
    assert step.memory == memory


ACTIONS = {F: "rollback", ERR: "pause", INC: "pause"}


@pytest.mark.parametrize(
    ("evaluations", "verdict", "sufficient", "fast_fail", "summary"),
    [row[1:] for row in COMBINATIONS],
    ids=[row[0] for row in COMBINATIONS],
)
def test_one_public_rule_decides_the_step_and_combine_uses_it(
    evaluations: list[CheckEvaluation],
    verdict: Outcome,
    sufficient: bool,
    fast_fail: bool,
    summary: str,
) -> None:
    """The controller (through combine) and the benchmark call step_outcome: the same
    verdict, the same sufficiency, and one action a step takes from them."""
    outcome = step_outcome(evaluations)
    step = combine(evaluations, {})
    assert (outcome.verdict, outcome.sufficient, outcome.fast_fail) == (
        step.verdict,
        step.sufficient_data,
        step.fast_fail,
    )
    expected = ACTIONS.get(verdict) or ("advance" if sufficient else "wait")
    assert outcome.action == expected


def test_a_step_with_no_gating_check_never_advances() -> None:
    assert step_outcome([]).action == "wait"
    assert step_outcome([ev("biz", S, dry_run=True)]).action == "wait"


def test_end_to_end_summary_names_the_failing_check() -> None:
    checks = [p99(), errors(relative_tolerance=0.5)]
    readings = [read(0.120, 0.040), read(0.010, 0.010)]
    evaluations = []
    for check, reading in zip(checks, readings, strict=True):
        result = assess(check, reading, CheckMemory(), grace=False)
        evaluations.append(
            evaluation(check, reading, result, evaluated_at=AT, evidence=Evidence(("q1", "q2")))
        )
    step = combine(evaluations, {})
    assert step.verdict is F
    assert step.summary == ("latency-p99 failed: p99 0.120s vs baseline 0.040s (+200%), limit +20%")
    assert step.evaluation("latency-p99").query == "q1\nq2"
    assert step.evaluation("error-rate").gating_outcome is S


def test_combine_without_evaluations_needs_a_time() -> None:
    with pytest.raises(ValueError, match="evaluated_at"):
        combine([], {})
    assert combine([], {}, evaluated_at=AT).sufficient_data is False


# --- reading the provider's answers ---------------------------------------------------

PLAN = QueryPlan(
    check="latency-p99",
    unit=Unit.SECONDS,
    identity_label="revision",
    canary_id="m-predictor-00002",
    baseline_id="m-predictor-00001",
    samples="COUNT",
    value="VALUE",
)
CUSTOM = replace(PLAN, value=None, canary_value="CANARY", baseline_value="BASELINE")


def result(*series: tuple[str | None, float]) -> QueryResult:
    return QueryResult(
        tuple(Series({"revision": rev} if rev else {}, value) for rev, value in series),
        "digest",
        "http://prom",
    )


C, B = "m-predictor-00002", "m-predictor-00001"
Answer = QueryResult | MetricError
READINGS: list[tuple[str, QueryPlan, dict[str, Answer], Reading | type[MetricError]]] = [
    ("both sides", PLAN,
     {"VALUE": result((C, 0.05), (B, 0.04)), "COUNT": result((B, 900.4), (C, 99.6))},
     Reading(0.05, 0.04, 100, 900)),
    ("other revisions are ignored", PLAN,
     {"VALUE": result((C, 0.05), (B, 0.04), ("m-predictor-00003", 9.0)),
      "COUNT": result((C, 10), (B, 10))},
     Reading(0.05, 0.04, 10, 10)),
    ("canary missing", PLAN, {"VALUE": result((B, 0.04)), "COUNT": result((B, 900))},
     Reading(None, 0.04, 0, 900)),
    ("empty value query", PLAN, {"VALUE": NoData("empty"), "COUNT": NoData("empty")},
     Reading(None, None, 0, 0)),
    ("NaN is kept for the assessment", PLAN,
     {"VALUE": result((C, NAN), (B, 0.04)), "COUNT": result((C, 0), (B, 9))},
     Reading(NAN, 0.04, 0, 9)),
    ("two series for the canary", PLAN,
     {"VALUE": result((C, 0.05), (C, 0.06), (B, 0.04)), "COUNT": result((C, 10), (B, 10))},
     MultipleSeries),
    ("value query failed", PLAN,
     {"VALUE": Unreachable("refused"), "COUNT": result((C, 10), (B, 10))}, Unreachable),
    ("count query failed", PLAN, {"VALUE": result((C, 1), (B, 1)), "COUNT": BadQuery("nope")},
     BadQuery),
    ("NaN count", PLAN, {"VALUE": result((C, 1), (B, 1)), "COUNT": result((C, NAN), (B, 1))},
     NotANumber),
    ("infinite count", PLAN, {"VALUE": result((C, 1), (B, 1)), "COUNT": result((C, INF))},
     Infinite),
    ("custom: one series per side", CUSTOM,
     {"CANARY": result((None, 0.02)), "BASELINE": result((None, 0.019)),
      "COUNT": result((C, 5000), (B, 45000))},
     Reading(0.02, 0.019, 5000, 45000)),
    ("custom: canary has no series", CUSTOM,
     {"CANARY": NoData("empty"), "BASELINE": result((None, 0.019)), "COUNT": NoData("empty")},
     Reading(None, 0.019, 0, 0)),
    ("custom: several series", CUSTOM,
     {"CANARY": result((C, 0.02), (B, 0.02)), "BASELINE": result((None, 0.019)),
      "COUNT": result((C, 1))},
     MultipleSeries),
]  # fmt: skip


@pytest.mark.parametrize(
    ("plan", "answers", "expected"),
    [row[1:] for row in READINGS],
    ids=[row[0] for row in READINGS],
)
def test_reading_from_results(
    plan: QueryPlan, answers: dict[str, Answer], expected: Reading | type[MetricError]
) -> None:
    reading = reading_from_results(plan, answers)
    if isinstance(expected, Reading):
        assert reading.error is None
        assert (reading.canary_samples, reading.baseline_samples) == (
            expected.canary_samples,
            expected.baseline_samples,
        )
        for got, want in ((reading.canary, expected.canary), (reading.baseline, expected.baseline)):
            assert got == want or (got is not None and want is not None and math.isnan(got))
    else:
        assert isinstance(reading.error, expected)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"builtin": None}, "exactly one of builtin, query and events/requests"),
        ({"query": "up"}, "exactly one of builtin, query and events/requests"),
        ({"builtin": "p50"}, "unknown built-in"),
        ({"direction": "up"}, "direction"),
        ({"relative_tolerance": None}, "at least one"),
        ({"relative_tolerance": 0.0}, "relative_tolerance must be > 0"),
        ({"absolute_limit": math.inf}, "finite"),
        ({"on_no_data": "ignore"}, "on_no_data"),
        ({"failure_limit": -1}, "failure_limit must be >= 0"),
    ],
)
def test_check_definition_refuses_what_cannot_be_judged(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        p99(**overrides)
