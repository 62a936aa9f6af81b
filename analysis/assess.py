"""Verdicts: one check's reading judged against its limits, and a step's checks combined.

PURE: values in, values out; no I/O and no clock. Three layers, each replaceable:

* :func:`reading_from_results` picks the canary's and the baseline's series out of the
  provider's answers (one series per identity, or an error);
* a :data:`Judge` says what the values mean (:func:`judge_thresholds`: absolute and
  relative limits against the baseline). A later statistical judge (sequential tests) can
  replace it without changing :func:`assess` or the types;
* :func:`assess` applies what no judge may change: errors, no data, grace, minimum samples,
  the hard limit, and the per-check limits with their counters; :func:`combine` gives the
  step verdict.

Rules (the controller's "never promote on no data"):

* NaN and ±Inf are errors, never passes. A NaN on a side that served no request in the
  window (0/0, a quantile of nothing) is that side having no data.
* A hard-limit breach fails at once: whatever the limits, samples and grace.
* With fewer canary requests than ``min_samples`` a check never passes and never fails on
  its absolute or relative limits: it is still collecting (gating Successful, not
  sufficient, counters untouched). So is a check without data while the step is younger
  than its hold time (``grace``).
* Later, no data follows ``on_no_data``: ``pass`` is Successful but never sufficient.
* Failed, Inconclusive and Error evaluations each count; the check gates with that
  outcome once its count exceeds the check's limit, and until then gates Successful but
  not sufficient. A Successful evaluation resets every count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol

from analysis.profiles import QueryPlan, Unit
from analysis.types import (
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    DetailValue,
    Direction,
    Infinite,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    Outcome,
    QueryResult,
    Reading,
    StepAnalysis,
)

__all__ = [
    "Assessment",
    "Evidence",
    "Judge",
    "Judgement",
    "StepOutcome",
    "assess",
    "combine",
    "evaluation",
    "judge_thresholds",
    "reading_from_results",
    "step_outcome",
    "unit_of",
]

Reason = Literal[
    "within",
    "breach",
    "baseline-missing",
    "baseline-zero",
    "regression",
    "non-inferior",
    "power",
    "collecting-evidence",
]


@dataclass(frozen=True)
class Judgement:
    """What a judge concluded from the values alone (before samples, grace and limits).

    ``outcome`` is Successful, Failed or Inconclusive; ``reason`` says why, so that
    :func:`assess` can tell a missing baseline (still collecting during grace) from a
    comparison that cannot be made. ``message`` is one sentence with the values."""

    outcome: Outcome
    reason: Reason
    statistic: float | None
    threshold: float | None
    message: str
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
    decisive: bool = False


Judge = Callable[[CheckDefinition, Reading, Unit], Judgement]
"""Judges a reading whose canary value is present and finite (the baseline's may be
missing); must not consider the hard limit, samples or counters."""


@dataclass(frozen=True)
class Assessment:
    """One check's evaluation, without its evidence (see :func:`evaluation`)."""

    outcome: Outcome
    gating_outcome: Outcome
    memory: CheckMemory
    sufficient: bool
    fast_fail: bool
    statistic: float | None
    threshold: float | None
    message: str
    detail: Mapping[str, DetailValue]


@dataclass(frozen=True)
class Evidence:
    """Where a reading came from: the queries sent, the server, the response digest."""

    queries: tuple[str, ...] = ()
    url: str = ""
    digest: str = ""


# --- formatting ---------------------------------------------------------------------------

_LABELS = {
    Unit.SECONDS: "p99",
    Unit.RATIO: "5xx ratio",
    Unit.PER_SECOND: "request rate",
    Unit.NUMBER: "value",
}


def unit_of(check: CheckDefinition) -> Unit:
    return {
        "error-rate": Unit.RATIO,
        "latency-p99": Unit.SECONDS,
        "request-rate": Unit.PER_SECOND,
    }.get(check.builtin or "", Unit.NUMBER)


def _fmt(value: float, unit: Unit) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit is Unit.SECONDS:
        return f"{value:.3f}s" if value == 0 or abs(value) >= 0.001 else f"{value:.2g}s"
    if unit is Unit.RATIO:
        return f"{value * 100:.3g}%"
    if unit is Unit.PER_SECOND:
        return f"{value:.4g} req/s"
    return f"{value:.4g}"


def _percent(change: float) -> str:
    scaled = change * 100
    return f"{scaled:+.0f}%" if abs(scaled) >= 100 else f"{scaled:+.3g}%"


def _tolerance(check: CheckDefinition) -> str:
    assert check.relative_tolerance is not None
    sign = "+" if check.direction == "lowerIsBetter" else "-"
    return f"{sign}{check.relative_tolerance * 100:.3g}%"


def _beyond(value: float, limit: float, direction: Direction) -> bool:
    return value > limit if direction == "lowerIsBetter" else value < limit


def _worse(canary: float, baseline: float, direction: Direction) -> bool:
    return _beyond(canary, baseline, direction)


def _values(check: CheckDefinition, reading: Reading, unit: Unit) -> str:
    """``p99 0.041s vs baseline 0.040s (+2.5%)`` (as far as the values go)."""
    assert reading.canary is not None
    text = f"{_LABELS[unit]} {_fmt(reading.canary, unit)}"
    baseline = reading.baseline
    if baseline is not None and math.isfinite(baseline):
        text += f" vs baseline {_fmt(baseline, unit)}"
        if baseline != 0 and math.isfinite(reading.canary):
            text += f" ({_percent((reading.canary - baseline) / abs(baseline))})"
    return text


# --- the default judge --------------------------------------------------------------------


def judge_thresholds(check: CheckDefinition, reading: Reading, unit: Unit) -> Judgement:
    """Absolute and relative limits: the canary fails when beyond ``absolute_limit``, or
    worse than the baseline by more than ``relative_tolerance`` (the statistic is
    ``(canary - baseline) / |baseline|``, i.e. ``canary / baseline - 1`` for a positive
    baseline). A relative limit without a baseline is Inconclusive; against a baseline of
    0 it passes a canary that is not worse, and otherwise leaves the decision to the
    absolute limit if there is one (else Inconclusive)."""
    canary, baseline = reading.canary, reading.baseline
    assert canary is not None
    assert math.isfinite(canary)
    direction = check.direction
    limits: list[str] = []
    notes: list[str] = []
    detail: dict[str, DetailValue] = {}
    breached: list[tuple[float, float]] = []  # (statistic, threshold) of each breach
    passed: list[tuple[float, float]] = []
    undefined: Reason | None = None

    if check.relative_tolerance is not None:
        tolerance = check.relative_tolerance
        signed = tolerance if direction == "lowerIsBetter" else -tolerance
        limits.append(f"limit {_tolerance(check)}")
        if baseline is None or not math.isfinite(baseline):
            undefined = "baseline-missing"
            notes.append("the baseline has no data, so the relative limit cannot be checked")
        elif baseline == 0:
            if _worse(canary, baseline, direction):
                detail["relative_change"] = None
                if check.absolute_limit is None:
                    undefined = "baseline-zero"
                    notes.append(
                        "the baseline is 0, so a relative change is undefined; set "
                        "absoluteLimit to judge this case"
                    )
            else:
                passed.append((0.0, signed))
                detail["relative_change"] = 0.0
        else:
            change = (canary - baseline) / abs(baseline)
            detail["relative_change"] = change
            worse = change > tolerance if direction == "lowerIsBetter" else change < -tolerance
            (breached if worse else passed).append((change, signed))

    if check.absolute_limit is not None:
        limits.append(f"absolute limit {_fmt(check.absolute_limit, unit)}")
        pair = (canary, check.absolute_limit)
        (breached if _beyond(canary, check.absolute_limit, direction) else passed).append(pair)

    message = ", ".join([_values(check, reading, unit), *limits])
    if notes:
        message += "; " + "; ".join(notes)
    if breached:
        statistic, threshold = breached[0]
        return Judgement(Outcome.FAILED, "breach", statistic, threshold, message, detail)
    if undefined is not None:
        shown: tuple[float | None, float | None] = passed[0] if passed else (None, None)
        return Judgement(Outcome.INCONCLUSIVE, undefined, *shown, message, detail)
    statistic, threshold = passed[0]
    return Judgement(Outcome.SUCCESSFUL, "within", statistic, threshold, message, detail)


# --- assessment ---------------------------------------------------------------------------


def _normalised(reading: Reading) -> Reading:
    """NaN on a side that served nothing becomes no data; any other NaN or ±Inf an error."""
    if reading.error is not None:
        return reading
    values = {"canary": reading.canary, "baseline": reading.baseline}
    samples = {"canary": reading.canary_samples, "baseline": reading.baseline_samples}
    for side, value in values.items():
        if value is None or math.isfinite(value):
            continue
        if math.isnan(value):
            if samples[side] == 0:
                reading = replace(reading, **{side: None})
                continue
            served = f" over {samples[side]} requests" if samples[side] else ""
            error: MetricError = NotANumber(f"the {side}'s value is NaN{served}")
        else:
            error = Infinite(f"the {side}'s value is {'+Inf' if value > 0 else '-Inf'}")
        return replace(reading, error=error)
    return reading


def _counted(
    outcome: Outcome, check: CheckDefinition, memory: CheckMemory
) -> tuple[Outcome, CheckMemory, str]:
    """Gating outcome, new counters, and a note when the outcome is tolerated."""
    new = memory.bump(outcome)
    count, limit, what = {
        Outcome.FAILED: (new.consecutive_failures, check.failure_limit, "failure"),
        Outcome.INCONCLUSIVE: (
            new.consecutive_inconclusive,
            check.inconclusive_limit,
            "inconclusive result",
        ),
        Outcome.ERROR: (new.consecutive_errors, check.consecutive_error_limit, "error"),
    }[outcome]
    if count > limit:
        note = f" ({count} in a row, {limit} tolerated)" if limit else ""
        return outcome, new, note
    return Outcome.SUCCESSFUL, new, f"; tolerated ({what} {count} of {limit} allowed)"


def assess(
    check: CheckDefinition,
    reading: Reading,
    memory: CheckMemory,
    *,
    grace: bool,
    judge: Judge = judge_thresholds,
) -> Assessment:
    """Judge one reading of ``check``. ``grace`` is True while the step is younger than its
    hold time: missing data and too few samples are then expected and count for nothing.
    ``memory`` is the check's counters after its previous evaluation."""
    unit = unit_of(check)
    reading = _normalised(reading)
    error = reading.error
    if isinstance(error, NoData):
        reading = Reading(canary_samples=reading.canary_samples,
                          baseline_samples=reading.baseline_samples)  # fmt: skip
        error = None
    samples = reading.canary_samples or 0
    detail: dict[str, DetailValue] = {
        "grace": grace,
        "min_samples": check.min_samples,
        "direction": check.direction,
        "relative_tolerance": check.relative_tolerance,
        "absolute_limit": check.absolute_limit,
        "hard_limit": check.hard_limit,
    }

    def done(
        outcome: Outcome,
        gating: Outcome,
        new_memory: CheckMemory,
        message: str,
        reason: str,
        *,
        sufficient: bool = False,
        fast_fail: bool = False,
        judgement: Judgement | None = None,
    ) -> Assessment:
        extra = dict(judgement.detail) if judgement is not None else {}
        return Assessment(
            outcome=outcome,
            gating_outcome=gating,
            memory=new_memory,
            sufficient=sufficient,
            fast_fail=fast_fail,
            statistic=judgement.statistic if judgement is not None else None,
            threshold=judgement.threshold if judgement is not None else None,
            message=message,
            detail={
                **detail,
                **extra,
                "reason": reason,
                "consecutive_failures": new_memory.consecutive_failures,
                "consecutive_inconclusive": new_memory.consecutive_inconclusive,
                "consecutive_errors": new_memory.consecutive_errors,
            },
        )

    def counted(
        outcome: Outcome, message: str, reason: str, judgement: Judgement | None = None
    ) -> Assessment:
        gating, new_memory, note = _counted(outcome, check, memory)
        return done(outcome, gating, new_memory, message + note, reason, judgement=judgement)

    def collecting(message: str, reason: str, judgement: Judgement | None = None) -> Assessment:
        return done(Outcome.INCONCLUSIVE, Outcome.SUCCESSFUL, memory, message, reason,
                    judgement=judgement)  # fmt: skip

    if error is not None:
        detail["error_kind"] = error.kind
        return counted(Outcome.ERROR, f"could not be read: {error.message}", "error")

    canary = reading.canary
    if canary is None:
        served = f" ({samples} canary requests in the window)" if samples else ""
        if grace:
            return collecting(f"no canary data yet{served}; still collecting", "no-data")
        if check.on_no_data == "pass":
            return done(
                Outcome.SUCCESSFUL,
                Outcome.SUCCESSFUL,
                memory,
                f"no canary data{served}; onNoData is pass, which never advances a step",
                "no-data",
            )
        outcome = Outcome.FAILED if check.on_no_data == "fail" else Outcome.INCONCLUSIVE
        return counted(outcome, f"no canary data{served} (onNoData: {check.on_no_data})",
                       "no-data")  # fmt: skip

    if check.hard_limit is not None and _beyond(canary, check.hard_limit, check.direction):
        message = (
            f"{_values(check, reading, unit)}, beyond the hard limit {_fmt(check.hard_limit, unit)}"
        )
        hard = Judgement(Outcome.FAILED, "breach", canary, check.hard_limit, message)
        return done(Outcome.FAILED, Outcome.FAILED, memory.bump(Outcome.FAILED), message,
                    "hard-limit", fast_fail=True, judgement=hard)  # fmt: skip

    judgement = judge(check, reading, unit)
    if judgement.decisive and judgement.outcome is Outcome.FAILED:
        # A sequential test's verdict is valid at any sample size and whatever the number
        # of looks: it fails at once, like a hard limit.
        return done(Outcome.FAILED, Outcome.FAILED, memory.bump(Outcome.FAILED),
                    judgement.message, judgement.reason, fast_fail=True,
                    judgement=judgement)  # fmt: skip
    if judgement.reason == "collecting-evidence":
        return collecting(judgement.message, judgement.reason, judgement=judgement)
    if samples < check.min_samples:
        return collecting(
            f"{judgement.message}; {samples} canary requests of the {check.min_samples} "
            "needed to judge",
            "insufficient-samples",
            judgement=judgement,
        )
    if judgement.outcome is Outcome.SUCCESSFUL:
        return done(Outcome.SUCCESSFUL, Outcome.SUCCESSFUL, memory.bump(Outcome.SUCCESSFUL),
                    judgement.message,
                    judgement.reason, sufficient=True, judgement=judgement)  # fmt: skip
    if grace and judgement.reason == "baseline-missing":
        return collecting(judgement.message, judgement.reason, judgement=judgement)
    return counted(judgement.outcome, judgement.message, judgement.reason, judgement=judgement)


# --- evidence and combination -------------------------------------------------------------


def evaluation(
    check: CheckDefinition,
    reading: Reading,
    assessment: Assessment,
    *,
    evaluated_at: datetime,
    evidence: Evidence,
) -> CheckEvaluation:
    """The :class:`CheckEvaluation` of an assessment, with its evidence."""
    return CheckEvaluation(
        check=check.name,
        evaluated_at=evaluated_at,
        outcome=assessment.outcome,
        gating_outcome=assessment.gating_outcome,
        sufficient=assessment.sufficient,
        query="\n".join(evidence.queries),
        prometheus_url=evidence.url,
        response_digest=evidence.digest,
        canary_value=reading.canary,
        baseline_value=reading.baseline,
        canary_samples=reading.canary_samples,
        baseline_samples=reading.baseline_samples,
        statistic=assessment.statistic,
        threshold=assessment.threshold,
        dry_run=check.dry_run,
        message=assessment.message,
        detail=assessment.detail,
        fast_fail=assessment.fast_fail,
    )


_SEVERITY = (Outcome.FAILED, Outcome.ERROR, Outcome.INCONCLUSIVE)
_SUMMARY_VERB = {
    Outcome.FAILED: "failed",
    Outcome.ERROR: "could not be evaluated",
    Outcome.INCONCLUSIVE: "inconclusive",
}


class _Gating(Protocol):
    """What :func:`step_outcome` reads of a check's evaluation (a :class:`CheckEvaluation`
    or an :class:`Assessment` with ``dry_run``)."""

    @property
    def gating_outcome(self) -> Outcome: ...
    @property
    def sufficient(self) -> bool: ...
    @property
    def fast_fail(self) -> bool: ...
    @property
    def dry_run(self) -> bool: ...


Action = Literal["rollback", "pause", "advance", "wait"]


@dataclass(frozen=True)
class StepOutcome:
    """A step's outcome from its checks. ``action``: ``rollback`` (Failed), ``pause``
    (a gating Error or Inconclusive: a human decides), ``advance`` (Successful with every
    gating check sufficient: the step may advance once its hold is over) or ``wait``
    (Successful, still collecting evidence: the step extends up to its maximum)."""

    verdict: Outcome
    sufficient: bool
    fast_fail: bool

    @property
    def action(self) -> Action:
        if self.verdict is Outcome.FAILED:
            return "rollback"
        if self.verdict is not Outcome.SUCCESSFUL:
            return "pause"
        return "advance" if self.sufficient else "wait"


def step_outcome(evaluations: Sequence[_Gating]) -> StepOutcome:
    """THE rule that turns a step's check evaluations into its outcome (the controller,
    through :func:`combine`, and the benchmark both use it): over the gating (not dry-run)
    checks, any Failed, else any Error, else any Inconclusive, else Successful; sufficient
    when there is a gating check and every gating check is sufficient; a fast fail when
    Failed by a check that fails at once (a hard limit, a proven regression)."""
    gating = [e for e in evaluations if not e.dry_run]
    verdict = next(
        (o for o in _SEVERITY if any(e.gating_outcome is o for e in gating)), Outcome.SUCCESSFUL
    )
    sufficient = bool(gating) and all(e.sufficient for e in gating)
    fast_fail = verdict is Outcome.FAILED and any(
        e.fast_fail and e.gating_outcome is Outcome.FAILED for e in gating
    )
    return StepOutcome(verdict, sufficient, fast_fail)


def combine(
    evaluations: Sequence[CheckEvaluation],
    memory: Mapping[str, CheckMemory],
    *,
    evaluated_at: datetime | None = None,
) -> StepAnalysis:
    """The step verdict over the gating (not dry-run) checks, by :func:`step_outcome`, with
    its summary. ``memory`` is the checks' new counters.
    ``evaluated_at`` defaults to the latest evaluation's time."""
    if evaluated_at is None:
        if not evaluations:
            raise ValueError("combine needs evaluated_at when there are no evaluations")
        evaluated_at = max(e.evaluated_at for e in evaluations)
    gating = [e for e in evaluations if not e.dry_run]
    outcome = step_outcome(evaluations)
    verdict, sufficient, fast_fail = outcome.verdict, outcome.sufficient, outcome.fast_fail
    if verdict is not Outcome.SUCCESSFUL:
        parts = [
            f"{e.check} {_SUMMARY_VERB[verdict]}: {e.message}"
            for e in gating
            if e.gating_outcome is verdict
        ]
    elif not gating:
        parts = ["no gating checks"]
    elif sufficient:
        checks = "the gating check" if len(gating) == 1 else f"all {len(gating)} gating checks"
        parts = [f"{checks} passed", *(f"{e.check}: {e.message}" for e in gating)]
    else:
        parts = [
            "waiting for evidence",
            *(f"{e.check}: {e.message}" for e in gating if not e.sufficient),
        ]
    parts += [
        f"dry run {e.check} {_SUMMARY_VERB[e.gating_outcome]}: {e.message}"
        for e in evaluations
        if e.dry_run and e.gating_outcome is not Outcome.SUCCESSFUL
    ]
    return StepAnalysis(
        evaluated_at=evaluated_at,
        evaluations=tuple(evaluations),
        verdict=verdict,
        sufficient_data=sufficient,
        fast_fail=fast_fail,
        summary="; ".join(parts),
        memory=dict(memory),
    )


# --- reading the provider's answers -------------------------------------------------------


def _grouped(
    plan: QueryPlan, answer: QueryResult | MetricError, query: str
) -> tuple[float | None, float | None]:
    """The canary's and the baseline's value from a query grouped by the identity label."""
    if isinstance(answer, NoData):
        return None, None
    if isinstance(answer, MetricError):
        raise answer
    values: list[float | None] = []
    for wanted in (plan.canary_id, plan.baseline_id):
        found = [s for s in answer.series if s.labels.get(plan.identity_label) == wanted]
        if len(found) > 1:
            raise MultipleSeries(
                f"{len(found)} series have {plan.identity_label}={wanted!r}; the query must "
                "give one per revision",
                query=query,
                raw_digest=answer.raw_digest,
            )
        values.append(found[0].value if found else None)
    return values[0], values[1]


def _single(answer: QueryResult | MetricError, query: str) -> float | None:
    if isinstance(answer, NoData):
        return None
    if isinstance(answer, MetricError):
        raise answer
    return answer.single(query).value


def _count(value: float | None, side: str, query: str) -> int:
    if value is None:
        return 0  # no series: no request in the window
    if math.isnan(value):
        raise NotANumber(f"the {side}'s request count is NaN", query=query)
    if math.isinf(value):
        raise Infinite(f"the {side}'s request count is {value}", query=query)
    return max(0, round(value))


def reading_from_results(
    plan: QueryPlan, answers: Mapping[str, QueryResult | MetricError]
) -> Reading:
    """The :class:`Reading` of ``plan`` from the provider's answer to each of its queries
    (a result, or the error the query raised). A failed query, or a revision with more than
    one series, makes the whole reading an error; a side without a series has no data."""
    try:
        canary_n, baseline_n = _grouped(plan, answers[plan.samples], plan.samples)
        canary_samples = _count(canary_n, "canary", plan.samples)
        baseline_samples = _count(baseline_n, "baseline", plan.samples)
        if plan.value is not None:
            canary, baseline = _grouped(plan, answers[plan.value], plan.value)
        else:
            assert plan.canary_value is not None
            assert plan.baseline_value is not None
            canary = _single(answers[plan.canary_value], plan.canary_value)
            baseline = _single(answers[plan.baseline_value], plan.baseline_value)
    except MetricError as error:
        return Reading.failed(error)
    return Reading(canary, baseline, canary_samples, baseline_samples)
