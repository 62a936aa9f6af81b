"""The judgement benchmark's own parts: its oracle, its baselines' rules, its sampler."""

from __future__ import annotations

import random
import statistics

import pytest

from bench.judgement import (
    FLAGGER_THRESHOLD,
    Regime,
    Side,
    flagger,
    mann_whitney_z,
    oracle,
    poisson,
    report,
    run_regime,
)


@pytest.mark.parametrize(("traffic", "expected"), [("low", 12), ("reference", 5), ("high", 1)])
def test_the_oracle_for_a_2x_error_regression_is_the_issues_figure(
    traffic: str, expected: int
) -> None:
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
