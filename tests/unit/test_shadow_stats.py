"""The statistics of the shadow comparison (analysis.shadow): decision agreement judged by
an anytime-valid test, score shift by PSI and KS over histogram buckets, the ceilings that
stop mirroring, and the PromQL that reads the collector's metrics.

The agreement test's guarantee is checked the way a user relies on it: a challenger is
judged after every 10 pairs up to 20,000, and the share of simulated challengers that
ever pass (below the minimum) or ever fail (at the minimum) stays within alpha.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

import pytest

from analysis.shadow import (
    FULL_FAILURE_REQUESTS,
    AgreementVerdict,
    agreement_log_e_values,
    agreement_verdict,
    ceiling_breach,
    evidence,
    ks_statistic,
    pair_counts,
    pairs_query,
    psi,
    score_buckets,
    score_buckets_query,
    score_shift_verdict,
)
from analysis.types import Outcome, Series

INF = math.inf
RANK = {Outcome.FAILED: 0, Outcome.INCONCLUSIVE: 1, Outcome.SUCCESSFUL: 2}


def verdict(pairs: float, agreed: float, **overrides: Any) -> AgreementVerdict:
    settings: dict[str, Any] = {"minimum": 0.95, "alpha": 0.05, "min_samples": 0}
    return agreement_verdict(pairs, agreed, **{**settings, **overrides})


# --- decision agreement: refused inputs ---------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "agreed", "overrides", "message"),
    [
        pytest.param(10, 11, {}, r"agreed \(11\) exceeds pairs \(10\)", id="more-agreed"),
        pytest.param(-1, 0, {}, "pairs must not be negative", id="negative-pairs"),
        pytest.param(10, -2, {}, "agreed must not be negative", id="negative-agreed"),
        pytest.param(math.nan, 0, {}, "pairs must be a finite count", id="nan-pairs"),
        pytest.param(10, INF, {}, "agreed must be a finite count", id="infinite-agreed"),
        pytest.param(10, 5, {"minimum": 0.0}, r"minimum must be a share in \(0, 1\]",
                     id="zero-minimum"),
        pytest.param(10, 5, {"minimum": 1.2}, "minimum must be", id="minimum-above-one"),
        pytest.param(10, 5, {"minimum": math.nan}, "minimum must be", id="nan-minimum"),
        pytest.param(10, 5, {"alpha": 0.0}, "alpha must be between 0 and 1", id="zero-alpha"),
        pytest.param(10, 5, {"alpha": 1.0}, "alpha must be between 0 and 1", id="alpha-one"),
        pytest.param(10, 5, {"min_samples": -1}, "min_samples must be a count >= 0",
                     id="negative-min-samples"),
    ],
)  # fmt: skip
def test_agreement_refuses_bad_input_with_a_specific_reason(
    pairs: float, agreed: float, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        verdict(pairs, agreed, **overrides)


def test_agreement_names_every_problem_at_once() -> None:
    with pytest.raises(ValueError, match=r"pairs must not be negative.*alpha must be"):
        verdict(-1, 0, alpha=2.0)


# --- decision agreement: known cases --------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "agreed", "overrides", "outcome", "in_reason"),
    [
        pytest.param(0, 0, {}, Outcome.INCONCLUSIVE, "no paired predictions yet", id="no-pairs"),
        pytest.param(1, 1, {}, Outcome.INCONCLUSIVE, "more pairs to decide", id="one-agreeing"),
        pytest.param(1, 0, {}, Outcome.INCONCLUSIVE, "lies within", id="one-disagreeing"),
        pytest.param(10, 10, {}, Outcome.INCONCLUSIVE, "more pairs to decide", id="ten-agree"),
        pytest.param(1000, 1000, {}, Outcome.SUCCESSFUL, "is at or above the minimum 95%",
                     id="all-agree"),
        pytest.param(1000, 0, {}, Outcome.FAILED, "is below the minimum 95%",
                     id="all-disagree"),
        pytest.param(3, 0, {}, Outcome.FAILED, "disagrees with the champion too often",
                     id="three-disagree-fail-at-once"),
        pytest.param(10_000, 9_500, {}, Outcome.INCONCLUSIVE, "no number of pairs decides",
                     id="exactly-at-the-minimum"),
        pytest.param(1000, 980, {}, Outcome.SUCCESSFUL, "lower bound 96.", id="clearly-above"),
        pytest.param(1000, 900, {}, Outcome.FAILED, "upper bound", id="clearly-below"),
        pytest.param(1000, 960, {}, Outcome.INCONCLUSIVE, "more pairs to decide",
                     id="a-little-above-not-yet"),
        pytest.param(200, 200, {"min_samples": 500}, Outcome.INCONCLUSIVE,
                     "only 200 of the 500 pairs required", id="proven-but-too-few"),
        pytest.param(20, 10, {"min_samples": 500}, Outcome.FAILED, "disagrees",
                     id="fails-before-min-samples"),
        pytest.param(1000, 1000, {"minimum": 1.0}, Outcome.INCONCLUSIVE, "can only fail",
                     id="minimum-one-never-passes"),
        pytest.param(10_000, 9_999, {"minimum": 1.0}, Outcome.FAILED,
                     "needs every pair to agree", id="minimum-one-fails-on-one-disagreement"),
        pytest.param(100.4, 99.6, {}, Outcome.SUCCESSFUL, "over 100 paired predictions",
                     id="extrapolated-floats-rounded"),
    ],
)  # fmt: skip
def test_agreement_known_cases(
    pairs: float, agreed: float, overrides: dict[str, Any], outcome: Outcome, in_reason: str
) -> None:
    found = verdict(pairs, agreed, **overrides)
    assert found.outcome is outcome, found.reason
    assert in_reason in found.reason


def test_no_pairs_reads_as_nothing_known() -> None:
    found = verdict(0, 0)
    assert (found.rate, found.lower, found.upper, found.needed) == (None, 0.0, 1.0, None)


def test_rounded_counts_are_what_the_verdict_reports() -> None:
    found = verdict(100.4, 99.6)
    assert (found.pairs, found.agreed, found.rate) == (100, 100, 1.0)


def test_the_anytime_bound_is_wider_than_a_fixed_sample_bound_but_not_wildly() -> None:
    """At 980 of 1,000 the one-sided 95 % Wilson bound (valid for one look only) is 97.13 %.
    A bound valid at every look must be lower, by a price of the same order as its width."""
    wilson = 0.97132
    lower = verdict(1000, 980).lower
    assert lower < wilson
    assert (0.98 - lower) < 3 * (0.98 - wilson)


@pytest.mark.parametrize(("pairs", "agreed"), [(10, 10), (50, 40), (1000, 960), (5000, 4990)])
def test_the_bounds_are_where_the_tests_stop_rejecting(pairs: int, agreed: int) -> None:
    found = verdict(pairs, agreed)
    threshold = math.log(1 / 0.05)
    assert agreement_log_e_values(pairs, agreed, found.lower - 1e-6)[0] >= threshold
    assert agreement_log_e_values(pairs, agreed, found.lower + 1e-6)[0] < threshold
    if found.upper < 1:
        assert agreement_log_e_values(pairs, agreed, found.upper + 1e-6)[1] >= threshold
        assert agreement_log_e_values(pairs, agreed, found.upper - 1e-6)[1] < threshold


@pytest.mark.parametrize("pairs", [1, 2, 7, 40, 250])
def test_outcome_and_bounds_agree_at_every_count(pairs: int) -> None:
    for agreed in range(pairs + 1):
        found = verdict(pairs, agreed, minimum=0.9)
        assert found.lower <= agreed / pairs <= found.upper
        if found.outcome is Outcome.SUCCESSFUL:
            assert found.lower >= 0.9
        elif found.outcome is Outcome.FAILED:
            assert found.upper < 0.9
        else:
            assert found.lower < 0.9 <= found.upper


@pytest.mark.parametrize(
    ("pairs", "overrides"),
    [(6, {}), (60, {}), (400, {"minimum": 0.8}), (400, {"min_samples": 300, "alpha": 0.01})],
)
def test_more_agreeing_pairs_never_turn_a_pass_into_a_fail(
    pairs: int, overrides: dict[str, Any]
) -> None:
    """At a fixed number of pairs, more of them agreeing never lowers the outcome; nor does
    adding agreeing pairs to what was seen."""
    ranks = [RANK[verdict(pairs, agreed, **overrides).outcome] for agreed in range(pairs + 1)]
    assert ranks == sorted(ranks)
    for agreed in range(0, pairs + 1, max(pairs // 6, 1)):
        before = RANK[verdict(pairs, agreed, **overrides).outcome]
        for more in (1, 10, 100):
            assert RANK[verdict(pairs + more, agreed + more, **overrides).outcome] >= before


@pytest.mark.parametrize(("pairs", "agreed"), [(1000, 960), (500, 470), (40, 40)])
def test_needed_is_about_the_pairs_a_decision_takes_at_the_same_rate(
    pairs: int, agreed: int
) -> None:
    found = verdict(pairs, agreed)
    assert found.outcome is Outcome.INCONCLUSIVE
    assert found.needed is not None
    rate = agreed / pairs
    after = pairs + found.needed + 5
    assert verdict(after, round(rate * after)).outcome is not Outcome.INCONCLUSIVE
    halfway = pairs + found.needed // 2
    assert verdict(halfway, round(rate * halfway)).outcome is Outcome.INCONCLUSIVE


def test_needed_counts_up_to_min_samples_once_the_evidence_is_in() -> None:
    assert verdict(200, 200, min_samples=500).needed == 300
    assert verdict(20, 20, min_samples=500).needed == 480


# --- decision agreement: the guarantee under continuous monitoring --------------------------

MINIMUM, ALPHA = 0.95, 0.05
LOOKS = range(10, 20_001, 10)  # checked after every 10 pairs, up to 20,000


def first_true(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest ``s`` in ``[lo, hi]`` for which ``holds`` (rising in ``s``), else hi+1."""
    hi += 1
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@cache
def decision_thresholds() -> tuple[dict[int, int], dict[int, int]]:
    """Per look, the fewest agreeing pairs that pass and the most that fail (the outcome
    rises with the agreeing pairs: tested above). From look to look the first can rise by
    at most 10 and the second likewise, which bounds each search."""
    threshold = math.log(1 / ALPHA)
    passes: dict[int, int] = {}
    fails: dict[int, int] = {}
    lowest_pass, highest_fail = 0, -1
    for n in LOOKS:

        def passing(s: int, n: int = n) -> bool:
            return agreement_log_e_values(n, s, MINIMUM)[0] >= threshold

        def not_failing(s: int, n: int = n) -> bool:
            return agreement_log_e_values(n, s, MINIMUM)[1] < threshold

        lowest_pass = first_true(passing, lowest_pass, min(lowest_pass + 10, n))
        highest_fail = first_true(not_failing, highest_fail + 1, min(highest_fail + 11, n)) - 1
        passes[n], fails[n] = lowest_pass, highest_fail
    return passes, fails


def binomial_cdf(p: float, k: int = 10) -> list[float]:
    cdf, total = [], 0.0
    for j in range(k + 1):
        total += math.comb(k, j) * p**j * (1 - p) ** (k - j)
        cdf.append(total)
    cdf[-1] = 1.0
    return cdf


def monitored(agreement: float, runs: int, seed: int) -> tuple[int, int]:
    """How many of ``runs`` simulated challengers ever pass and ever fail when judged
    after every 10 pairs (each pair agreeing with probability ``agreement``)."""
    passes, fails = decision_thresholds()
    rng = random.Random(seed)
    cdf = binomial_cdf(agreement)
    ever_passed = ever_failed = 0
    for _ in range(runs):
        agreed, passed, failed = 0, False, False
        for n in LOOKS:
            agreed += bisect.bisect_right(cdf, rng.random())
            passed = passed or agreed >= passes[n]
            failed = failed or agreed <= fails[n]
        ever_passed += passed
        ever_failed += failed
    return ever_passed, ever_failed


def test_the_thresholds_are_the_verdicts() -> None:
    passes, fails = decision_thresholds()
    for n in list(LOOKS)[::150]:
        if passes[n] <= n:
            assert verdict(n, passes[n]).outcome is Outcome.SUCCESSFUL
        assert verdict(n, passes[n] - 1).outcome is not Outcome.SUCCESSFUL
        if fails[n] >= 0:
            assert verdict(n, fails[n]).outcome is Outcome.FAILED
        assert verdict(n, fails[n] + 1).outcome is not Outcome.FAILED


@pytest.mark.parametrize(
    "agreement",
    [pytest.param(0.945, id="below-the-minimum"), pytest.param(MINIMUM, id="at-the-minimum")],
)
def test_a_challenger_below_the_minimum_rarely_ever_passes(agreement: float) -> None:
    """Checked 2,000 times over 20,000 pairs, at most alpha of the runs ever pass (a
    fixed-sample 95 % bound checked this often passes far more than 5 % at the minimum)."""
    runs = 1000
    ever_passed, _ = monitored(agreement, runs, seed=20261)
    assert ever_passed / runs <= ALPHA


@pytest.mark.parametrize(
    "agreement",
    [pytest.param(0.955, id="above-the-minimum"), pytest.param(MINIMUM, id="at-the-minimum")],
)
def test_a_challenger_at_or_above_the_minimum_rarely_ever_fails(agreement: float) -> None:
    runs = 1000
    _, ever_failed = monitored(agreement, runs, seed=20262)
    assert ever_failed / runs <= ALPHA


@pytest.mark.parametrize(
    ("agreement", "passing"),
    [pytest.param(0.97, True, id="clearly-above"), pytest.param(0.93, False, id="clearly-below")],
)
def test_a_clear_difference_is_decided_within_20000_pairs(agreement: float, passing: bool) -> None:
    """The guarantee is not bought by never deciding."""
    runs = 200
    ever_passed, ever_failed = monitored(agreement, runs, seed=20263)
    assert (ever_passed if passing else ever_failed) >= 0.99 * runs


# --- score shift: PSI and KS ----------------------------------------------------------------

HALVES: list[tuple[float | str, float]] = [(0.5, 50.0), ("+Inf", 100.0)]


@pytest.mark.parametrize(
    ("baseline", "candidate", "expected_psi", "expected_ks"),
    [
        pytest.param(HALVES, HALVES, 0.0, 0.0, id="identical"),
        pytest.param([(0.5, 5.0), (INF, 10.0)], HALVES, 0.0, 0.0, id="same-shares-other-counts"),
        # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
        pytest.param(HALVES, [(0.5, 25.0), (INF, 100.0)], 0.25 * math.log(2) + 0.25 * math.log(1.5),
                     0.25, id="quarter-moved"),
        # a bucket empty on one side counts as a share of 1e-4
        pytest.param([(0.5, 100.0), (1.0, 100.0), (INF, 100.0)],
                     [(0.5, 90.0), (1.0, 100.0), (INF, 100.0)],
                     -0.1 * math.log(0.9) + (0.1 - 1e-4) * math.log(0.1 / 1e-4), 0.1,
                     id="empty-bucket-epsilon"),
        # scores above the largest finite bound land in +Inf, which is a bucket like any other
        pytest.param([(1.0, 100.0), (INF, 100.0)], [(1.0, 80.0), (INF, 100.0)],
                     -0.2 * math.log(0.8) + (0.2 - 1e-4) * math.log(0.2 / 1e-4), 0.2,
                     id="inf-bucket-counts"),
        pytest.param([("+Inf", 100.0), ("0.5", 50.0)], [(INF, 100.0), (0.5, 25.0)],
                     0.25 * math.log(2) + 0.25 * math.log(1.5), 0.25,
                     id="any-order-text-bounds"),
        pytest.param([(0.5, 50.0000000001), (INF, 50.0)], [(0.5, 50.0), (INF, 100.0)],
                     0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4), 0.5,
                     id="float-noise-levelled"),
    ],
)  # fmt: skip
def test_psi_and_ks_known_values(
    baseline: Any, candidate: Any, expected_psi: float, expected_ks: float
) -> None:
    assert psi(baseline, candidate) == pytest.approx(expected_psi, abs=1e-9)
    assert psi(candidate, baseline) == pytest.approx(expected_psi, abs=1e-9)
    assert ks_statistic(baseline, candidate) == pytest.approx(expected_ks, abs=1e-9)


@pytest.mark.parametrize(
    ("baseline", "candidate", "message"),
    [
        pytest.param(HALVES, [(0.6, 50.0), (INF, 100.0)],
                     r"different bucket bounds \(0.5 only in the baseline; 0.6 only in the "
                     r"candidate\)", id="mismatched-bounds"),
        pytest.param(HALVES, [(0.5, 50.0), (1.0, 60.0), (INF, 100.0)],
                     "1 only in the candidate", id="extra-bound"),
        pytest.param([(0.5, 50.0), (1.0, 100.0)], HALVES, r"baseline histogram has no \+Inf bucket",
                     id="no-inf"),
        pytest.param(HALVES, [(0.5, 60.0), (INF, 50.0)],
                     "candidate histogram's cumulative count falls from 60 to 50 at le=\\+Inf",
                     id="not-monotone"),
        pytest.param([(0.5, -1.0), (INF, 100.0)], HALVES, "le=0.5 has a negative count",
                     id="negative-count"),
        pytest.param([(0.5, math.nan), (INF, 100.0)], HALVES, "count that is not finite",
                     id="nan-count"),
        pytest.param([(0.5, 1.0), (0.5, 2.0), (INF, 3.0)], HALVES, "le=0.5 twice",
                     id="duplicate-bound"),
        pytest.param([("high", 1.0), (INF, 3.0)], HALVES, "bound that is not a number",
                     id="bad-bound"),
        pytest.param([], HALVES, "baseline histogram has no buckets", id="empty"),
        pytest.param([(0.5, 0.0), (INF, 0.0)], HALVES, "baseline histogram has no observations",
                     id="no-observations"),
    ],
)  # fmt: skip
def test_psi_and_ks_refuse_histograms_that_cannot_be_compared(
    baseline: Any, candidate: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        psi(baseline, candidate)
    with pytest.raises(ValueError, match=message):
        ks_statistic(baseline, candidate)


def shares_to_buckets(counts: list[float]) -> list[tuple[float, float]]:
    """Per-bucket counts (bounds 0.05, 0.10, ..., then +Inf) as cumulative buckets."""
    bounds = [round(0.05 * (i + 1), 2) for i in range(len(counts) - 1)] + [INF]
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    return list(zip(bounds, cumulative, strict=True))


@pytest.mark.parametrize(
    ("candidate", "min_samples", "outcome", "in_reason"),
    [
        pytest.param([250, 250, 250, 250, 0], 100, Outcome.SUCCESSFUL, "PSI 0 is within",
                     id="same-scores"),
        pytest.param([300, 250, 250, 200, 0], 100, Outcome.SUCCESSFUL, "within the maximum 0.25",
                     id="slight-shift"),
        pytest.param([700, 100, 100, 100, 0], 100, Outcome.FAILED, "is above the maximum 0.25",
                     id="major-shift"),
        pytest.param([70, 10, 10, 10, 0], 101, Outcome.INCONCLUSIVE,
                     "101 needed on each side (PSI", id="too-few-challenger-scores"),
        pytest.param([0, 0, 0, 0, 0], 0, Outcome.INCONCLUSIVE, "needs scores on both sides",
                     id="no-challenger-scores"),
    ],
)  # fmt: skip
def test_score_shift_verdict(
    candidate: list[float], min_samples: int, outcome: Outcome, in_reason: str
) -> None:
    champion = shares_to_buckets([250, 250, 250, 250, 0])
    found = score_shift_verdict(
        champion, shares_to_buckets(candidate), max_psi=0.25, min_samples=min_samples
    )
    assert found.outcome is outcome, found.reason
    assert in_reason in found.reason
    assert found.baseline_count == 1000
    assert found.candidate_count == round(sum(candidate))


@pytest.mark.parametrize(
    ("baseline", "candidate", "counts"),
    [
        pytest.param([], HALVES, (0, 100), id="no-champion-series-yet"),
        pytest.param(HALVES, [], (100, 0), id="no-challenger-series-yet"),
        pytest.param([], [], (0, 0), id="neither"),
        pytest.param([(0.5, 0.0), (INF, 0.0)], HALVES, (0, 100), id="series-without-scores"),
    ],
)
def test_a_side_without_scores_is_inconclusive_not_an_error(
    baseline: Any, candidate: Any, counts: tuple[int, int]
) -> None:
    found = score_shift_verdict(baseline, candidate, max_psi=0.1, min_samples=0)
    assert found.outcome is Outcome.INCONCLUSIVE
    assert (found.psi, found.ks) == (None, None)
    assert (found.baseline_count, found.candidate_count) == counts
    assert "needs scores on both sides" in found.reason


def test_the_other_side_is_still_checked_when_one_has_no_series() -> None:
    with pytest.raises(ValueError, match="candidate histogram has no \\+Inf bucket"):
        score_shift_verdict([], [(0.5, 3.0)], max_psi=0.1, min_samples=0)


def test_score_shift_is_judged_only_once_both_sides_have_min_samples() -> None:
    big = shares_to_buckets([700, 100, 100, 100])
    small = shares_to_buckets([25, 25, 25, 25])
    found = score_shift_verdict(small, big, max_psi=0.1, min_samples=101)
    assert found.outcome is Outcome.INCONCLUSIVE
    assert found.psi is not None
    assert found.psi > 0.1  # shown, not judged
    assert score_shift_verdict(small, big, max_psi=0.1, min_samples=100).outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"max_psi": 0.0}, "max_psi must be a positive number", id="zero-max"),
        pytest.param({"max_psi": math.inf}, "max_psi must be a positive number", id="inf-max"),
        pytest.param({"min_samples": -5}, "min_samples must be a count >= 0", id="negative-min"),
    ],
)
def test_score_shift_refuses_bad_settings(overrides: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"max_psi": 0.25, "min_samples": 10, **overrides}
    with pytest.raises(ValueError, match=message):
        score_shift_verdict(HALVES, HALVES, **settings)


# --- ceilings -------------------------------------------------------------------------------

CEILINGS: dict[str, Any] = {"max_error_rate": 0.05, "max_p99_seconds": 0.25, "min_requests": 100}


@pytest.mark.parametrize(
    ("error_rate", "p99", "requests", "overrides", "expected"),
    [
        pytest.param(0.01, 0.1, 500, {}, None, id="healthy"),
        pytest.param(0.10, 0.1, 500, {}, "error rate 10% over 500 mirrored requests is above "
                     "its ceiling 5%", id="errors-above"),
        pytest.param(0.05, 0.1, 500, {}, None, id="errors-at-the-ceiling"),
        pytest.param(0.01, 0.4, 500, {}, "p99 400 ms over 500 mirrored requests is above its "
                     "ceiling 250 ms", id="slow"),
        pytest.param(0.2, 0.4, 500, {}, "ceiling 5%; the challenger's p99 400 ms", id="both"),
        pytest.param(1.0, None, 1, {}, None, id="one-error-at-start"),
        pytest.param(0.5, 2.0, 99, {}, None, id="below-min-requests"),
        pytest.param(1.0, None, 19, {}, None, id="full-failure-too-few"),
        pytest.param(1.0, None, FULL_FAILURE_REQUESTS, {},
                     "failed every one of its 20 mirrored requests", id="full-failure"),
        pytest.param(1.0000001, None, 20.4, {"max_error_rate": None, "min_requests": 1000},
                     "failed every one", id="full-failure-without-a-ceiling"),
        pytest.param(0.9, 5.0, 5000, {"max_error_rate": None, "max_p99_seconds": None}, None,
                     id="no-ceilings"),
        pytest.param(None, None, 5000, {}, None, id="nothing-known"),
        pytest.param(0.001, None, 100, {"max_error_rate": 0.0}, "above its ceiling 0%",
                     id="zero-ceiling"),
    ],
)  # fmt: skip
def test_ceiling_breach(
    error_rate: float | None,
    p99: float | None,
    requests: float,
    overrides: dict[str, Any],
    expected: str | None,
) -> None:
    found = ceiling_breach(error_rate, p99, requests, **{**CEILINGS, **overrides})
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert expected in found


@pytest.mark.parametrize(
    ("error_rate", "p99", "requests", "overrides", "message"),
    [
        pytest.param(math.nan, None, 10, {}, "error_rate must be a finite number", id="nan-rate"),
        pytest.param(-0.1, None, 10, {}, "error_rate must be", id="negative-rate"),
        pytest.param(None, math.inf, 10, {}, "p99_seconds must be", id="infinite-p99"),
        pytest.param(None, None, -1, {}, "requests must be a finite count", id="negative-requests"),
        pytest.param(None, None, 10, {"max_error_rate": 1.5}, r"max_error_rate must be a share",
                     id="rate-ceiling-above-one"),
        pytest.param(None, None, 10, {"max_p99_seconds": 0.0}, "max_p99_seconds must be a "
                     "positive number", id="zero-p99-ceiling"),
        pytest.param(None, None, 10, {"min_requests": -1}, "min_requests must be a count",
                     id="negative-min-requests"),
    ],
)  # fmt: skip
def test_ceiling_breach_refuses_bad_input(
    error_rate: float | None,
    p99: float | None,
    requests: float,
    overrides: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        ceiling_breach(error_rate, p99, requests, **{**CEILINGS, **overrides})


# --- PromQL and reading the answers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(
            lambda: pairs_query("fraud", "scorer-v3", "scorer", timedelta(minutes=5)),
            'sum by (agree) (increase(kserve_canary_shadow_pairs_total{namespace="fraud",'
            'isvc="scorer-v3",peer="scorer"}[5m]))',
            id="pairs",
        ),
        pytest.param(
            lambda: score_buckets_query("fraud", "scorer", "scorer-v3", timedelta(seconds=90.7)),
            'sum by (le) (increase(kserve_canary_shadow_score_bucket{namespace="fraud",'
            'isvc="scorer",peer="scorer-v3"}[90s]))',
            id="buckets-window-rounded-down",
        ),
        pytest.param(
            lambda: pairs_query('odd"ns', "a\\b", "c", timedelta(hours=2)),
            'sum by (agree) (increase(kserve_canary_shadow_pairs_total{namespace="odd\\"ns",'
            'isvc="a\\\\b",peer="c"}[2h]))',
            id="escaped",
        ),
    ],
)
def test_queries_are_exact(build: Callable[[], str], expected: str) -> None:
    assert build() == expected


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: pairs_query("fraud", "a", "b", timedelta(milliseconds=999)),
                     "at least 1s", id="too-short"),
        pytest.param(lambda: pairs_query("fraud", "a", "a", timedelta(minutes=1)),
                     "'a' twice", id="same-isvc"),
        pytest.param(lambda: score_buckets_query("", "a", "b", timedelta(minutes=1)),
                     "needs a namespace", id="no-namespace"),
    ],
)  # fmt: skip
def test_queries_refuse_what_cannot_be_meant(build: Callable[[], str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_pair_counts_adds_both_series_and_keeps_the_agreeing_one() -> None:
    answer = [Series({"agree": "false"}, 4.8), Series({"agree": "true"}, 95.3)]
    assert pair_counts(answer) == pytest.approx((100.1, 95.3))
    assert pair_counts([Series({"agree": "false"}, 3.0)]) == (3.0, 0.0)
    assert pair_counts([]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        pytest.param([Series({"agree": "maybe"}, 1.0)], "agree='maybe'", id="odd-label"),
        pytest.param([Series({"agree": "true"}, 1.0), Series({"agree": "true"}, 2.0)],
                     "two pairs series", id="twice"),
        pytest.param([Series({"agree": "true"}, math.nan)], "its value is nan", id="nan"),
        pytest.param([Series({"agree": "true"}, math.nan, unreadable="not a float: 'x'")],
                     "not a float", id="unreadable"),
    ],
)  # fmt: skip
def test_pair_counts_refuses_answers_it_cannot_read(answer: list[Series], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_counts(answer)


def test_score_buckets_feed_the_verdict() -> None:
    answer = [Series({"le": "+Inf"}, 100.0), Series({"le": "0.5"}, 50.0)]
    assert score_buckets(answer) == [("+Inf", 100.0), ("0.5", 50.0)]
    found = score_shift_verdict(score_buckets(answer), HALVES, max_psi=0.1, min_samples=10)
    assert found.outcome is Outcome.SUCCESSFUL
    with pytest.raises(ValueError, match="without an le label"):
        score_buckets([Series({}, 1.0)])


# --- evidence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: verdict(0, 0), id="agreement-nothing"),
        pytest.param(lambda: verdict(1000, 990), id="agreement-pass"),
        pytest.param(lambda: verdict(10, 9, minimum=1.0), id="agreement-certain-fail"),
        pytest.param(lambda: verdict(10**7, 0), id="agreement-overwhelming"),
        pytest.param(lambda: score_shift_verdict(HALVES, HALVES, max_psi=0.1, min_samples=1),
                     id="score-pass"),
        pytest.param(lambda: score_shift_verdict([], HALVES, max_psi=0.1, min_samples=0),
                     id="score-nothing"),
    ],
)  # fmt: skip
def test_evidence_is_json_safe(build: Callable[[], Any]) -> None:
    found = build()
    detail = evidence(found)
    text = json.dumps(detail, allow_nan=False)  # refuses NaN and infinities
    assert json.loads(text)["outcome"] == found.outcome.value
    assert detail["reason"] == found.reason


def test_agreement_evidence_carries_the_numbers_an_auditor_needs() -> None:
    detail = evidence(verdict(1000, 990, min_samples=100))
    assert detail["test"] == "shadow-agreement"
    assert (detail["pairs"], detail["agreed"], detail["minimum"]) == (1000, 990, 0.95)
    assert detail["threshold"] == pytest.approx(20.0)
    assert isinstance(detail["pass_e_value"], float)
    assert detail["pass_e_value"] >= 20.0
    lower, upper = detail["lower"], detail["upper"]
    assert isinstance(lower, float)
    assert isinstance(upper, float)
    assert 0.95 <= lower < 0.99 < upper
