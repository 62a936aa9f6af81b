"""A built-in check judged by a sequential test: looks in, evidence and a judgement out.

PURE. The runner reads looks (:mod:`analysis.looks`) and calls :func:`advance` for each,
in time order; :func:`reading` gives the values shown and judged against absolute and
hard limits (the last look's window values); :func:`judge` turns the accumulated evidence
into a :class:`~analysis.assess.Judgement`:

==================  =================================================================
evidence            judgement
==================  =================================================================
regression          Failed, decisive: rolled back at once, at any sample size
non-inferior        Successful: the data rule out a regression beyond the tolerance, and
                    at least ``min_samples`` canary requests were counted at this step
                    (before that: Inconclusive while collecting, not sufficient)
collecting          Inconclusive while collecting (gates Successful, never sufficient);
                    with ``progression: power``, Successful once the samples would have
                    shown a regression of twice the tolerance with 80 % power
==================  =================================================================
"""

from __future__ import annotations

import math

from analysis.assess import Judgement
from analysis.looks import SideLook, SubjectLook
from analysis.profiles import Unit
from analysis.sequential import (
    HARM_FRACTION,
    Counts,
    Decision,
    ErrorRateTest,
    LatencyTest,
    SequentialState,
    fixed_horizon_power,
    quantile,
)
from analysis.types import CheckDefinition, DetailValue, Outcome, Reading

__all__ = ["POWER_TARGET", "advance", "judge", "reading", "test_for"]

POWER_TARGET = 0.8
"""The power against a regression of twice the tolerance that ``progression: power``
requires before a step advances without a non-inferiority verdict."""

_NO_BUCKETS: tuple[tuple[float, float], ...] = ((math.inf, 0.0),)


def test_for(check: CheckDefinition, *, block_looks: int) -> ErrorRateTest | LatencyTest:
    """The sequential test of a sequential check; ``block_looks`` consecutive looks share
    one draw of the over-dispersion (a burst lasts that long)."""
    if not check.sequential:
        raise ValueError(f"check {check.name!r} is not sequential")
    assert check.relative_tolerance is not None
    assert check.alpha_fail is not None
    if check.builtin == "error-rate":
        return ErrorRateTest(check.relative_tolerance, check.alpha_fail, check.alpha_pass,
                             block_looks=block_looks)  # fmt: skip
    if check.counted:
        return ErrorRateTest(check.relative_tolerance, check.alpha_fail, check.alpha_pass,
                             label=check.name, block_looks=block_looks)  # fmt: skip
    return LatencyTest(check.relative_tolerance, check.alpha_fail, check.alpha_pass,
                       block_looks=block_looks)  # fmt: skip


def advance(
    check: CheckDefinition,
    state: SequentialState,
    look: SubjectLook,
    *,
    fresh: bool = True,
    block_looks: int = 1,
) -> SequentialState:
    """The evidence after one more look. ``fresh``: the look lies wholly after the current
    step's split showed in status, so its canary requests count for the step;
    ``block_looks``: see :func:`test_for`. A look that joins several periods (a rollout
    catching up, :meth:`analysis.looks.LookSource.reads`) is one look spanning
    ``look.looks`` periods (see ``analysis.sequential._accumulate`` for why the tests stay
    valid). Raises ValueError for a look the test cannot use (an error-rate check on a
    profile without status codes)."""
    test = test_for(check, block_looks=block_looks)
    if isinstance(test, ErrorRateTest):
        canary, baseline = look.canary, look.baseline
        if canary.errors is None or baseline.errors is None:
            raise ValueError("the metric profile has no status codes, so no error rate")
        return test.update(
            state,
            Counts(
                canary.requests,
                min(canary.errors, canary.requests),
                baseline.requests,
                min(baseline.errors, baseline.requests),
            ),
            fresh=fresh,
            looks=look.looks,
        )
    return test.update(state, look.canary.buckets or _NO_BUCKETS,
                       look.baseline.buckets or _NO_BUCKETS, fresh=fresh,
                       looks=look.looks)  # fmt: skip


def _window_value(
    check: CheckDefinition, side: SideLook, window_seconds: float, look_seconds: float
) -> float | None:
    """The value over the analysis window; while the window has no value yet (a series
    needs two samples in it) but the look counted requests, the look's own value. None
    only when neither saw a request: no data."""
    if side.window_requests > 0:
        if check.builtin == "request-rate":
            return side.window_requests / window_seconds
        if check.builtin == "error-rate":
            if side.window_errors is None:
                return None
            return min(side.window_errors / side.window_requests, 1.0)
        if side.p99 is not None:
            return side.p99
    if side.requests <= 0:
        return None if side.window_requests <= 0 else math.nan
    if check.builtin == "request-rate":
        return side.requests / look_seconds
    if check.builtin == "error-rate":
        return None if side.errors is None else min(side.errors / side.requests, 1.0)
    if side.buckets:
        found = quantile(side.buckets, 0.99)
        return math.nan if found is None else found
    return math.nan


def reading(
    check: CheckDefinition,
    state: SequentialState | None,
    latest: SubjectLook | None,
    *,
    window_seconds: float,
    look_seconds: float,
) -> Reading:
    """What a look-based check shows: the last look's window values (the 5xx ratio, the
    p99 or the request rate over the analysis window). The sample counts are the requests
    the sequential test has counted, or for a check without one the window's requests."""
    if state is not None:
        samples = (round(state.canary_requests), round(state.baseline_requests))
    elif latest is not None:
        samples = (round(latest.canary.window_requests), round(latest.baseline.window_requests))
    else:
        samples = (0, 0)
    if latest is None:
        return Reading(canary_samples=samples[0], baseline_samples=samples[1])
    return Reading(
        canary=_window_value(check, latest.canary, window_seconds, look_seconds),
        baseline=_window_value(check, latest.baseline, window_seconds, look_seconds),
        canary_samples=samples[0],
        baseline_samples=samples[1],
    )


def _evalue(log_e: float) -> float:
    return math.exp(min(log_e, 700.0))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _power(check: CheckDefinition, state: SequentialState) -> float:
    """Power of a fixed-horizon test with these samples against twice the tolerance."""
    assert check.relative_tolerance is not None
    assert check.alpha_fail is not None
    if state.baseline_requests <= 0:
        return 0.0
    # The baseline's 5xx ratio, or its share of requests slower than the reference.
    rate = state.baseline_harm_events / state.baseline_requests
    if rate <= 0:
        return 0.0
    worse = min(rate * (1 + 2 * check.relative_tolerance), 1.0)
    return fixed_horizon_power(
        state.canary_requests, state.baseline_requests, rate, worse, check.alpha_fail
    )


def judge(
    check: CheckDefinition,
    state: SequentialState,
    values: Reading,
    *,
    canary_rate: float | None,
) -> Judgement:
    """The judgement of the evidence so far (and of the absolute limit on the window
    value). ``canary_rate`` is the canary's requests per second at present, to estimate
    how long a decision will take."""
    test = test_for(check, block_looks=1)  # deciding does not depend on the blocks
    decision: Decision = test.decide(state)
    assert check.alpha_fail is not None
    assert check.relative_tolerance is not None
    fail_at, pass_at = 1 / check.alpha_fail, 1 / check.alpha_pass
    harm, safe = _evalue(decision.harm_log_e), _evalue(decision.safe_log_e)
    detail: dict[str, DetailValue] = {
        "test": "sequential",
        "decision": decision.kind,
        "harm_e_value": harm,
        "harm_threshold": fail_at,
        "safe_e_value": safe,
        "safe_threshold": pass_at,
        "estimate": decision.estimate,
        "canary_requests": decision.canary_requests,
        "baseline_requests": decision.baseline_requests,
        "canary_events": decision.canary_events,
        "baseline_events": decision.baseline_events,
        "looks": state.looks,
        "step_canary_requests": decision.step_canary_requests,
        "step_safe_e_value": None
        if decision.step_safe_log_e is None
        else _evalue(decision.step_safe_log_e),
        "extra_variance": round(decision.extra_variance, 6),
        "progress": round(decision.progress, 4),
        "alpha_fail": check.alpha_fail,
        "alpha_pass": check.alpha_pass,
    }
    if state.reference is not None:
        detail["reference_seconds"] = state.reference
    tolerance = f"+{check.relative_tolerance * 100:.3g}%"
    text = decision.message

    if (
        check.absolute_limit is not None
        and values.canary is not None
        and math.isfinite(values.canary)
        and values.canary > check.absolute_limit
    ):
        unit = Unit.RATIO if check.builtin == "error-rate" else Unit.SECONDS
        shown = f"{values.canary * 100:.3g}%" if unit is Unit.RATIO else f"{values.canary:.3f}s"
        limit = (
            f"{check.absolute_limit * 100:.3g}%"
            if unit is Unit.RATIO
            else f"{check.absolute_limit:.3f}s"
        )
        return Judgement(
            Outcome.FAILED,
            "breach",
            values.canary,
            check.absolute_limit,
            f"{shown} over the window, beyond the absolute limit {limit}; {text}",
            detail,
        )
    if decision.kind == "regression":
        halfway = f"+{check.relative_tolerance * HARM_FRACTION * 100:.3g}%"
        return Judgement(
            Outcome.FAILED,
            "regression",
            harm,
            fail_at,
            f"{text}; the canary is proven worse than the baseline by more than {halfway} "
            f"({HARM_FRACTION:g} x the tolerance {tolerance}): evidence {harm:.3g} >= "
            f"{fail_at:.3g}",
            detail,
            decisive=True,
        )
    if decision.kind == "non-inferior" and decision.step_canary_requests < check.min_samples:
        return Judgement(
            Outcome.INCONCLUSIVE,
            "collecting-evidence",
            decision.step_canary_requests,
            float(check.min_samples),
            f"{text}; a regression beyond {tolerance} is ruled out, but only "
            f"{decision.step_canary_requests:.0f} of the {check.min_samples} canary requests "
            "needed were counted at this step since its split showed",
            detail,
        )
    if (
        decision.kind == "non-inferior"
        and decision.step_safe_log_e is not None
        and decision.step_safe_log_e < 0
    ):
        return Judgement(
            Outcome.INCONCLUSIVE,
            "collecting-evidence",
            _evalue(decision.step_safe_log_e),
            1.0,
            f"{text}; a regression beyond {tolerance} was ruled out, but this step's own "
            "looks do not support it yet (their evidence "
            f"{_evalue(decision.step_safe_log_e):.3g} < 1): holding the step",
            detail,
        )
    if decision.kind == "non-inferior":
        return Judgement(
            Outcome.SUCCESSFUL,
            "non-inferior",
            safe,
            pass_at,
            f"{text}; a regression beyond {tolerance} is ruled out: evidence {safe:.3g} >= "
            f"{pass_at:.3g}",
            detail,
        )
    if check.progression == "power" and decision.kind == "continue":
        power = _power(check, state)
        detail["power"] = round(power, 4)
        if power >= POWER_TARGET and decision.step_canary_requests < check.min_samples:
            return Judgement(
                Outcome.INCONCLUSIVE,
                "collecting-evidence",
                decision.step_canary_requests,
                float(check.min_samples),
                f"{text}; no regression found with {power:.0%} power, but only "
                f"{decision.step_canary_requests:.0f} of the {check.min_samples} canary "
                "requests needed were counted at this step since its split showed",
                detail,
            )
        if power >= POWER_TARGET:
            return Judgement(
                Outcome.SUCCESSFUL,
                "power",
                power,
                POWER_TARGET,
                f"{text}; no regression found, and the samples had {power:.0%} power against "
                f"a regression of twice the tolerance",
                detail,
            )
    if decision.kind == "calibrating":
        return Judgement(Outcome.INCONCLUSIVE, "collecting-evidence", None, None, text, detail)
    wait = ""
    if decision.requests_to_pass is not None and canary_rate:
        seconds = decision.requests_to_pass / canary_rate
        detail["seconds_to_pass"] = round(seconds, 1)
        wait = f", about {_duration(seconds)} more at the present traffic"
    elif decision.requests_to_pass is None:
        wait = ", not converging at the present estimate"
    return Judgement(
        Outcome.INCONCLUSIVE,
        "collecting-evidence",
        safe,
        pass_at,
        f"{text}; collecting evidence: {decision.progress:.0%} of the way to ruling out "
        f"{tolerance}{wait}",
        detail,
    )


def describe(check: CheckDefinition, state: SequentialState | None, look_seconds: float) -> str:
    """One line for ``canary status``: how far the check's evidence is from a decision and
    about how long it will take at the traffic seen so far."""
    if state is None:
        return f"{check.name}: no look yet"
    decision = test_for(check, block_looks=1).decide(state)  # nor does describing
    assert check.relative_tolerance is not None
    tolerance = f"+{check.relative_tolerance * 100:.3g}%"
    if decision.kind == "calibrating":
        return f"{check.name}: {decision.message}"
    if state.canary_requests <= 0:
        return f"{check.name}: no canary request counted yet"
    if decision.kind == "regression":
        return f"{check.name}: regression proven (evidence {_evalue(decision.harm_log_e):.3g})"
    if decision.kind == "non-inferior":
        line = f"{check.name}: a regression beyond {tolerance} is ruled out"
        if decision.step_canary_requests < check.min_samples:
            line += (
                f"; {decision.step_canary_requests:.0f} of the {check.min_samples} canary "
                "requests needed at this step"
            )
        return line
    line = f"{check.name}: {decision.progress:.0%} of the evidence to rule out {tolerance}"
    elapsed = state.looks * look_seconds
    if decision.requests_to_pass is None:
        return line + ", not converging at the present estimate"
    if elapsed > 0 and state.canary_requests > 0:
        rate = state.canary_requests / elapsed
        line += f", about {_duration(decision.requests_to_pass / rate)} more at {rate:.3g} req/s"
    return line
