"""The judgement benchmark's own parts: its oracle, its baselines' rules, its sampler."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from analysis.assess import StepOutcome, step_outcome
from analysis.sequential import SequentialState
from analysis.types import CheckDefinition, CheckEvaluation
from bench import judgement
from bench.judgement import (
    FLAGGER_THRESHOLD,
    Regime,
    Side,
    Stream,
    flagger,
    mann_whitney_z,
    oracle,
    poisson,
    regimes,
    report,
    run_regime,
)


@pytest.mark.parametrize(("traffic", "expected"), [("low", 23), ("reference", 8), ("high", 2)])
def test_the_oracle_for_a_2x_error_regression_tests_the_rollbacks_null(
    traffic: str, expected: int
) -> None:
    """Fixed-horizon, told the effect, against "within half the tolerance" (x1.25)."""
    assert oracle(Regime("5xx x2", "error", 2.0, traffic)) == expected


def test_mann_whitney_z_on_a_hand_computed_example() -> None:
    # canary ranks 4, 5, 6 of 6: U = 9 - 0 ... = 9, mean 4.5, variance 3*3*7/12 = 5.25
    assert mann_whitney_z([4, 5, 6], [1, 2, 3]) == pytest.approx(4.5 / 5.25**0.5)
    assert mann_whitney_z([1, 2, 3], [4, 5, 6]) == pytest.approx(-4.5 / 5.25**0.5)
    assert mann_whitney_z([1, 1], [1, 1]) == 0.0  # all tied: no evidence


def test_the_flagger_rule_rolls_back_at_the_fifth_failed_check_and_counts_no_values() -> None:
    empty = Side(0, 0, None, 0, 0)
    good = Side(600, 3, 0.030, 594, 10)
    data = [(good, good)] * 3 + [(empty, good)] * 10
    decision, at = flagger(Regime("x", "healthy"), data, random.Random(1))
    # each empty interval fails two checks (5xx and p99 have no value)
    assert (decision, at) == ("rollback", 3 + (FLAGGER_THRESHOLD + 1) // 2)


def test_the_poisson_sampler_has_the_right_mean_and_variance() -> None:
    rng = random.Random(3)
    for mean in (0.5, 7.0, 400.0):
        draws = [poisson(rng, mean) for _ in range(4000)]
        assert statistics.fmean(draws) == pytest.approx(mean, rel=0.05)
        assert statistics.pvariance(draws) == pytest.approx(mean, rel=0.1)


def test_a_quick_run_reports_every_judge() -> None:
    cells = run_regime((Regime("5xx x5", "error", 5.0), 5, 1))
    assert {c.judge for c in cells} == {"ours", "flagger", "kayenta"}
    text = report(cells, 5, 1, 0.1)
    assert "| reference (200 req/s) | 5xx x5 | 1 |" in text
    assert all(c.share("rollback") == 1.0 for c in cells if c.judge == "ours")


def test_ours_decides_each_interval_with_the_controllers_step_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark does not re-implement the step rule: every interval's decision is
    analysis.assess.step_outcome over evaluations made by assess()."""
    calls: list[int] = []

    def spy(evaluations: Sequence[CheckEvaluation]) -> StepOutcome:
        calls.append(len(evaluations))
        return step_outcome(evaluations)

    monkeypatch.setattr(judgement, "step_outcome", spy)
    regime = Regime("5xx x5", "error", 5.0)
    decision, at = judgement.ours(regime, Stream(regime, "spy"), random.Random(1))
    assert decision == "rollback"
    assert calls == [2] * at  # error rate and p99, once per interval


def test_ours_fixes_the_latency_threshold_from_histograms_as_the_controller_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[SequentialState] = []
    evaluate = judgement._evaluate

    def spy(check: CheckDefinition, state: SequentialState, *args: Any) -> Any:
        if check.builtin == "latency-p99":
            seen.append(state)
        return evaluate(check, state, *args)

    monkeypatch.setattr(judgement, "_evaluate", spy)
    regime = Regime("healthy", "healthy")
    judgement.ours(regime, Stream(regime, "calibration"), random.Random(1))
    assert seen[0].looks == 0  # the first look (5,400 baseline requests) fixes the threshold
    reference = seen[0].reference
    assert reference is not None
    assert reference == pytest.approx(0.040, rel=0.1)  # from the buckets, with their error
    assert reference != 0.040


def test_a_late_onset_is_timed_from_the_step_it_begins_at() -> None:
    regime = Regime("5xx x5 from step 2", "error", 5.0, "high", onset_step=2,
                    shares=(0.1, 0.25, 0.5), table="onset")  # fmt: skip
    cells = run_regime((regime, 3, 1))
    ours_cell = next(c for c in cells if c.judge == "ours")
    assert ours_cell.share("rollback") == 1.0
    assert all(o >= 10 for o in ours_cell.onsets)  # step 2 began after the hold
    assert all(0 < t <= 5 for t in ours_cell.times("rollback"))
    text = report(cells, 3, 1, 0.1)
    assert "## Late onset" in text
    assert "median / p95" in text


def test_every_regime_the_issue_asks_for_is_run() -> None:
    names = {(r.table, r.name, r.traffic) for r in regimes()}
    for cv in ("0.1", "0.3", "0.5"):
        for traffic in ("low", "reference", "high"):
            assert ("dispersion", f"healthy, 5xx CV {cv}", traffic) in names
            assert ("dispersion", f"5xx x2, CV {cv}", traffic) in names
    assert {r.factor for r in regimes() if r.table == "curve"} >= {1.0, 1.3, 1.5, 2.0}
    assert any(r.onset_step for r in regimes())
    assert any(r.onset and len(set(r.shares)) == 1 for r in regimes())


def test_a_late_onset_is_timed_from_our_own_step_not_the_fixed_schedule() -> None:
    # At 70 req/s our first step outlasts the fixed schedule's 10 intervals, so the effect
    # begins later for our rollout than for the other judges; timing it from the fixed
    # schedule would add the difference to our detection time.
    regime = Regime("5xx x5 from step 2", "error", 5.0, "low", onset_step=2,
                    shares=(0.1, 0.25, 0.5), table="onset")  # fmt: skip
    cells = run_regime((regime, 4, 1))
    ours_cell = next(c for c in cells if c.judge == "ours")
    others = next(c for c in cells if c.judge == "flagger")
    assert ours_cell.share("rollback") == 1.0
    assert set(others.onsets) == {10}
    assert max(ours_cell.onsets) > 10
    assert all(0 < t <= 10 for t in ours_cell.times("rollback"))


def test_the_controllers_look_period_is_simulated_for_our_judge_only() -> None:
    (regime,) = [r for r in regimes() if r.table == "onset-looks" and r.traffic == "high"
                 and r.onset_step == 2]  # fmt: skip
    assert regime.looks == 6
    stream = Stream(regime, "looks")
    looks = stream.looks(3, 0.25, True)
    assert len(looks) == 6
    assert 7_000 < sum(c.requests for c, _ in looks) < 8_000  # 30 s at 25 % of 1,000 req/s
    cells = run_regime((regime, 3, 1))
    assert [c.judge for c in cells] == ["ours"]  # the others judge whole intervals
    assert cells[0].share("rollback") == 1.0
    text = report(cells, 3, 1, 0.1)
    assert "5 s looks" in text
    assert "| – | – |" in text
