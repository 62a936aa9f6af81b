"""The shadow phase's checks from a policy (canary.checks.shadow_checks): the output
comparison is added for a challenger InferenceService when the policy sets its
thresholds, never for a dark launch, and evaluates as the policy says."""

from __future__ import annotations

from typing import Any

import pytest

from analysis.runner import Analyzer
from analysis.types import Outcome
from canary.checks import (
    AGREEMENT_CHECK,
    CEILING_ERROR_RATE,
    CEILING_LATENCY,
    SCORE_SHIFT_CHECK,
    shadow_checks,
)
from canary.policy import RolloutPolicy
from tests.unit.test_runner_shadow import AT, CHALLENGER, STEP, SUBJECT, ShadowPrometheus

OUTPUTS = {AGREEMENT_CHECK, SCORE_SHIFT_CHECK}


def policy(**shadow: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(
        {"name": "fraud", "falsePromotionRate": 0.02, "shadow": {"enabled": True, **shadow}}
    )


def test_a_challenger_gets_the_output_checks_its_policy_sets() -> None:
    checks = shadow_checks(
        policy(minAgreement=0.95, maxScoreShift=0.2, minSamples=500, maxPredictionsPerRequest=4),
        CHALLENGER,
    )
    by_name = {c.name: c for c in checks}
    assert set(by_name) == {
        "shadow-error-rate", "shadow-latency-p99", AGREEMENT_CHECK, SCORE_SHIFT_CHECK,
        CEILING_ERROR_RATE, CEILING_LATENCY,
    }  # fmt: skip
    agreement, shift = by_name[AGREEMENT_CHECK], by_name[SCORE_SHIFT_CHECK]
    assert (agreement.builtin, agreement.direction) == ("decision-agreement", "higherIsBetter")
    assert (shift.builtin, shift.direction) == ("score-shift", "lowerIsBetter")
    assert (agreement.absolute_limit, shift.absolute_limit) == (0.95, 0.2)
    for check in (agreement, shift):
        assert check.min_samples == 500
        assert check.max_predictions_per_request == 4
        assert not check.dry_run  # they gate (after: report decides what a result does)
        assert check.relative_tolerance is None
        assert check.hard_limit is None
    assert agreement.alpha_pass == 0.02  # the policy's false promotion rate


@pytest.mark.parametrize(
    ("settings", "challenger", "expected"),
    [
        pytest.param({"minAgreement": 0.95, "maxScoreShift": 0.2}, None, set(), id="dark-launch"),
        pytest.param({}, CHALLENGER, set(), id="no-thresholds"),
        pytest.param({"minAgreement": 0.9}, CHALLENGER, {AGREEMENT_CHECK}, id="agreement-only"),
        pytest.param({"maxScoreShift": 0.1}, CHALLENGER, {SCORE_SHIFT_CHECK}, id="shift-only"),
    ],
)  # fmt: skip
def test_which_output_checks_a_shadow_phase_gets(
    settings: dict[str, Any], challenger: str | None, expected: set[str]
) -> None:
    names = [c.name for c in shadow_checks(policy(**settings), challenger)]
    assert OUTPUTS & set(names) == expected
    assert len(names) == len(set(names))
    assert "shadow-error-rate" in names  # latency and errors are compared either way


def test_the_generated_checks_are_judged_as_the_policy_says() -> None:
    checks = [
        c
        for c in shadow_checks(policy(minAgreement=0.999, maxScoreShift=0.2), CHALLENGER)
        if c.name in OUTPUTS
    ]
    prometheus = ShadowPrometheus(pairs=1000, agreed=990)
    result = Analyzer(prometheus).analyze(SUBJECT, checks, {}, AT, grace=False, step=STEP)
    assert result.evaluation(SCORE_SHIFT_CHECK).outcome is Outcome.SUCCESSFUL
    agreement = result.evaluation(AGREEMENT_CHECK)
    assert agreement.outcome is Outcome.FAILED  # 99 % is below the minimum 99.9 %
    assert agreement.threshold == 0.999
    assert result.verdict is Outcome.FAILED
