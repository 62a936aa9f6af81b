"""What ``canary status`` says about a sequential check's evidence
(analysis.sequential_check.describe), one row per situation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from analysis.assess import Judgement
from analysis.sequential import Counts, ErrorRateTest, SequentialState, at_step
from analysis.sequential_check import describe, judge
from analysis.types import CheckDefinition, Outcome, Reading


def check(**overrides: Any) -> CheckDefinition:
    base: dict[str, Any] = {
        "name": "error-rate",
        "builtin": "error-rate",
        "query": None,
        "direction": "lowerIsBetter",
        "relative_tolerance": 0.5,
        "alpha_fail": 0.01,
        "alpha_pass": 0.05,
    }
    return CheckDefinition(**{**base, **overrides})


def looks(canary_errors: int, count: int) -> SequentialState:
    """``count`` 5 s looks of 100 canary and 900 baseline requests (baseline 1 % errors)."""
    test = ErrorRateTest(0.5, 0.01, 0.05)
    state = SequentialState()
    for _ in range(count):
        state = test.update(state, Counts(100, canary_errors, 900, 9))
    return state


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(None, "error-rate: no look yet", id="never-read"),
        pytest.param(SequentialState(), "error-rate: no canary request counted yet",
                     id="no-traffic-yet"),
        pytest.param(looks(10, 5), "error-rate: regression proven (evidence ", id="regression"),
        pytest.param(looks(0, 40), "error-rate: a regression beyond +50% is ruled out",
                     id="ruled-out"),
        pytest.param(looks(1, 3), "error-rate: ", id="collecting"),
    ],
)  # fmt: skip
def test_describe_says_how_far_the_evidence_is(
    state: SequentialState | None, expected: str
) -> None:
    assert describe(check(), state, 5.0).startswith(expected)


def test_collecting_evidence_gives_the_share_and_the_time_at_present_traffic() -> None:
    text = describe(check(), looks(1, 3), 5.0)
    assert "of the evidence to rule out +50%" in text
    assert "more at 20 req/s" in text  # 100 canary requests per 5 s look


def test_a_ruled_out_regression_stays_ruled_out() -> None:
    state = replace(looks(1, 2), ruled_out=True)
    assert describe(check(), state, 5.0) == "error-rate: a regression beyond +50% is ruled out"


def test_the_false_rollback_budget_is_split_among_the_gating_sequential_checks() -> None:
    from canary.checks import check_definitions
    from canary.policy import RolloutPolicy

    policy = RolloutPolicy.model_validate(
        {
            "name": "fraud",
            "falseRollbackRate": 0.02,
            "falsePromotionRate": 0.1,
            "checks": [
                {"name": "error-rate", "builtin": "error-rate", "relativeTolerance": 0.5},
                {"name": "latency-p99", "builtin": "latency-p99", "relativeTolerance": 0.2},
                {"name": "p99-trial", "builtin": "latency-p99", "relativeTolerance": 0.1,
                 "dryRun": True},
                {"name": "ceiling", "builtin": "latency-p99", "hardLimit": 0.5},
            ],
        }
    )  # fmt: skip
    checks = {c.name: c for c in check_definitions(policy)}
    assert [n for n, c in checks.items() if c.sequential] == [
        "error-rate",
        "latency-p99",
        "p99-trial",
    ]
    assert checks["error-rate"].alpha_fail == pytest.approx(0.01)  # two gating: 2 % / 2
    assert checks["latency-p99"].alpha_fail == pytest.approx(0.01)
    assert all(c.alpha_pass == pytest.approx(0.1) for c in checks.values())
    assert not checks["ceiling"].sequential  # a hard limit alone is judged per look


# --- judging a step: evidence from this step ------------------------------------------------


def ruled_out() -> SequentialState:
    state = at_step(SequentialState(), 0)
    test = ErrorRateTest(0.5, 0.01, 0.05)
    for _ in range(40):
        state = test.update(state, Counts(1000, 5, 9000, 90))
    return state


def judged(state: SequentialState, **overrides: Any) -> Judgement:
    definition = check(min_samples=500, **overrides)
    return judge(definition, state, Reading(0.005, 0.01, 1000, 9000), canary_rate=None)


def then(state: SequentialState, *looks: Counts) -> SequentialState:
    test = ErrorRateTest(0.5, 0.01, 0.05)
    for counts in looks:
        state = test.update(state, counts)
    return state


@pytest.mark.parametrize(
    ("state", "outcome", "says"),
    [
        pytest.param(ruled_out(), Outcome.SUCCESSFUL, "is ruled out", id="first-step"),
        pytest.param(at_step(ruled_out(), 1), Outcome.INCONCLUSIVE,
                     "only 0 of the 500 canary requests", id="new-step-nothing-yet"),
        pytest.param(then(at_step(ruled_out(), 1), Counts(400, 2, 3600, 36)),
                     Outcome.INCONCLUSIVE, "only 400 of the 500", id="new-step-too-few"),
        pytest.param(then(at_step(ruled_out(), 1), Counts(0, 0, 0, 0), Counts(0, 0, 0, 0)),
                     Outcome.INCONCLUSIVE, "only 0 of the 500", id="new-step-frozen"),
        pytest.param(then(at_step(ruled_out(), 1), Counts(600, 3, 5400, 54)),
                     Outcome.SUCCESSFUL, "is ruled out", id="new-step-enough"),
        pytest.param(then(at_step(ruled_out(), 1), Counts(2000, 40, 2000, 20)),
                     Outcome.INCONCLUSIVE, "this step's own looks do not support it",
                     id="new-step-bad-looks"),
    ],
)  # fmt: skip
def test_a_step_advances_only_on_evidence_from_that_step(
    state: SequentialState, outcome: Outcome, says: str
) -> None:
    judgement = judged(state)
    assert judgement.outcome is outcome
    assert says in judgement.message
    assert judgement.detail["decision"] == "non-inferior"  # the cumulative verdict stands


def test_status_says_when_a_step_waits_for_its_own_requests() -> None:
    assert describe(check(), at_step(ruled_out(), 1), 5.0) == (
        "error-rate: a regression beyond +50% is ruled out; 0 of the 100 canary requests "
        "needed at this step"
    )


def test_progression_by_power_also_needs_requests_at_this_step() -> None:
    test = ErrorRateTest(0.5, 0.01, 0.05)
    state = at_step(SequentialState(), 0)
    for _ in range(10):  # x1.4, inside the tolerance: no verdict yet, but much power
        state = test.update(state, Counts(5000, 70, 5000, 50))
    assert judged(state, progression="power").reason == "power"
    held = judged(at_step(state, 1), progression="power")
    assert held.outcome is Outcome.INCONCLUSIVE
    assert "only 0 of the 500 canary requests" in held.message
