"""The sequential tests (analysis.sequential): inputs refused, histogram arithmetic, and
the statistical properties a user relies on, checked on simulated data with fixed seeds.

The properties are the guarantees of analysis/README.md: a healthy canary is rarely
rolled back however often one looks; a canary twice the tolerance is rarely promoted; a
2x error regression is found about as fast as a fixed-horizon test told the effect.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from analysis.sequential import (
    GRID,
    MAX_HELD_LOOKS,
    Counts,
    ErrorRateTest,
    LatencyTest,
    SequentialState,
    count_above,
    fixed_horizon_power,
    quantile,
)
from bench.judgement import poisson

INF = math.inf
HIST = ((0.01, 60.0), (0.05, 90.0), (0.1, 99.0), (INF, 100.0))


def look(rng: random.Random, rate: float, canary_error: float, share: float = 0.1) -> Counts:
    """One 30 s look at ``rate`` requests per second, the baseline at 1 % errors."""
    n_c, n_b = round(rate * 30 * share), round(rate * 30 * (1 - share))
    return Counts(n_c, min(poisson(rng, n_c * canary_error), n_c), n_b,
                  min(poisson(rng, n_b * 0.01), n_b))  # fmt: skip


def first(test: ErrorRateTest, rng: random.Random, kind: str, error: float, looks: int,
          rate: float = 200.0) -> int | None:  # fmt: skip
    """The look at which the test first decides ``kind`` (None: never within ``looks``)."""
    state = SequentialState()
    for k in range(1, looks + 1):
        state = test.update(state, look(rng, rate, error))
        if test.decide(state).kind == kind:
            return k
    return None


# --- refused inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Counts(-1, 0, 1, 0), "not negative", id="negative-count"),
        pytest.param(lambda: Counts(math.nan, 0, 1, 0), "finite", id="nan-count"),
        pytest.param(lambda: ErrorRateTest(0), "tolerance", id="zero-tolerance"),
        pytest.param(lambda: ErrorRateTest(0.5, alpha_fail=1.0), "alpha_fail", id="alpha-one"),
        pytest.param(lambda: LatencyTest(0.2, q=0.2), "quantile", id="low-quantile"),
        pytest.param(lambda: count_above(((0.1, 5.0),), 0.05), r"\+Inf", id="no-inf-bucket"),
        pytest.param(lambda: SequentialState.from_json({"harm": [0.0], "safe": [0.0]}),
                     "alternatives", id="wrong-grid"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_a_reason(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --- histogram arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        pytest.param(0.0, 100.0, id="below-everything"),
        pytest.param(0.005, 70.0, id="half-way-in-the-first-bucket-from-0"),
        pytest.param(0.01, 40.0, id="on-a-bound"),
        pytest.param(0.03, 25.0, id="interpolated"),
        pytest.param(0.1, 1.0, id="the-last-finite-bound"),
        pytest.param(5.0, 1.0, id="in-the-inf-bucket"),
    ],
)
def test_count_above_interpolates_as_histogram_quantile_does(
    threshold: float, expected: float
) -> None:
    assert count_above(HIST, threshold) == pytest.approx(expected)


def test_quantile_matches_histogram_quantile() -> None:
    assert quantile(HIST, 0.5) == pytest.approx(0.5 / 0.6 * 0.01)
    assert quantile(HIST, 0.9) == pytest.approx(0.05)
    assert quantile(HIST, 0.995) == pytest.approx(0.1)  # in +Inf: the largest finite bound
    assert quantile(((INF, 0.0),), 0.99) is None


def test_state_survives_json_exactly() -> None:
    test = LatencyTest(0.2, calibration_requests=100)
    state = test.update(SequentialState(), HIST, HIST)  # calibration
    state = test.update(state, HIST, HIST)
    again = SequentialState.from_json(state.to_json())
    assert again == state
    assert len(again.harm) == len(GRID)


# --- no information, no decision ----------------------------------------------------------


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param(Counts(0, 0, 900, 9), id="no-canary-requests"),
        pytest.param(Counts(100, 1, 0, 0), id="no-baseline-requests"),
        pytest.param(Counts(100, 0, 900, 0), id="no-events"),
        pytest.param(Counts(0, 3, 900, 9), id="events-without-requests"),
    ],
)
def test_an_uninformative_look_moves_nothing(counts: Counts) -> None:
    test = ErrorRateTest(0.5)
    state = SequentialState()
    for _ in range(100):
        state = test.update(state, counts)
    assert state.harm == SequentialState().harm
    assert state.safe == SequentialState().safe
    assert test.decide(state).kind == "continue"  # never promoted on no data


def split_in_phase(counts: Counts) -> tuple[Counts, Counts]:
    """One look as two shorter ones in which only one side's scrape landed."""
    canary = Counts(counts.canary_requests, counts.canary_events, 0, 0)
    return canary, Counts(0, 0, counts.baseline_requests, counts.baseline_events)


def test_a_look_where_only_one_side_moved_is_counted_with_the_next_one() -> None:
    """Looks shorter than the scrape interval see the canary's and the baseline's scrapes
    in turn. Each such look alone says nothing about the ratio; held back and joined with
    the next, they give the tests exactly what one look of both would."""
    test = ErrorRateTest(0.5)
    whole = split = SequentialState()
    for counts in (Counts(1000, 30, 9000, 90), Counts(1200, 25, 8800, 95)):
        canary_only, baseline_only = split_in_phase(counts)
        held = test.update(split, canary_only)
        assert held.pending  # held back...
        assert held.harm == split.harm  # ...nothing judged yet
        whole = test.update(whole, counts)
        split = test.update(held, baseline_only)
        assert split.harm == pytest.approx(whole.harm)
        assert split.safe == pytest.approx(whole.safe)
        assert not split.pending
    assert test.decide(split).kind == test.decide(whole).kind == "regression"
    assert (split.canary_requests, split.baseline_harm_events) == (2200, 185)


def test_held_back_counts_survive_a_restart() -> None:
    test = ErrorRateTest(0.5)
    state = test.update(SequentialState(), Counts(1000, 30, 0, 0))
    assert state.pending == (1000, 30, 30, 0, 0, 0, 1)  # ... and held for one look
    assert SequentialState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="pending"):
        SequentialState.from_json({**state.to_json(), "pending": [1.0, 2.0]})


def test_counts_held_too_long_are_dropped_not_compared_with_much_later_ones() -> None:
    """A baseline that served alone for a minute is not weighed against the canary's
    first seconds: held counts expire after MAX_HELD_LOOKS looks."""
    test = ErrorRateTest(0.5)
    state = test.update(SequentialState(), Counts(0, 0, 9000, 90))
    for _ in range(MAX_HELD_LOOKS - 1):  # nobody served: the baseline's counts wait
        state = test.update(state, Counts(0, 0, 0, 0))
    assert state.pending == (0, 0, 0, 9000, 90, 90, MAX_HELD_LOOKS)
    state = test.update(state, Counts(100, 5, 0, 0))  # too late to join them
    assert state.pending == (100, 5, 5, 0, 0, 0, 1)
    assert state.harm == SequentialState().harm
    assert state.baseline_requests == 9000  # still shown in the totals


@pytest.mark.parametrize(
    ("error", "kind", "bound"),
    [
        pytest.param(0.01, "regression", 0.08, id="healthy-rarely-rolled-back"),
        pytest.param(0.02, "non-inferior", 0.08, id="2x-tolerance-rarely-promoted"),
    ],
)
def test_out_of_phase_scrapes_keep_the_guarantees(error: float, kind: str, bound: float) -> None:
    """The same properties as below when every look sees only one side (alpha 5 %, 300
    rollouts of 60 intervals, each seen as a canary-only then a baseline-only look)."""
    rng = random.Random(21)
    test = ErrorRateTest(0.5, alpha_fail=0.05, alpha_pass=0.05)
    decided = 0
    for _ in range(300):
        state = SequentialState()
        for _ in range(60):
            for part in split_in_phase(look(rng, 200, error)):
                state = test.update(state, part)
            if test.decide(state).kind == kind:
                decided += 1
                break
    assert decided / 300 <= bound


def test_out_of_phase_scrapes_still_find_a_regression() -> None:
    rng = random.Random(22)
    test = ErrorRateTest(0.5, alpha_fail=0.005)
    found = 0
    for _ in range(100):
        state = SequentialState()
        for _ in range(30):
            for part in split_in_phase(look(rng, 200, 0.02)):
                state = test.update(state, part)
            if test.decide(state).kind == "regression":
                found += 1
                break
    assert found / 100 >= 0.95


# --- direction ----------------------------------------------------------------------------


def test_a_proven_but_tolerated_difference_is_neither_rolled_back_nor_promoted() -> None:
    test = ErrorRateTest(0.5)
    state = SequentialState()
    for _ in range(400):  # 1.2x the baseline's errors, known very precisely
        state = test.update(state, Counts(10_000, 120, 90_000, 900))
    decision = test.decide(state)
    assert decision.harm_log_e > math.log(100)  # it is proven worse...
    assert decision.kind == "non-inferior"  # ...but within the +50 % tolerance


def test_a_ruled_out_regression_stays_ruled_out() -> None:
    test = ErrorRateTest(0.5)
    state = SequentialState()
    for _ in range(50):
        state = test.update(state, Counts(1000, 5, 9000, 90))  # half the baseline's errors
    assert state.ruled_out
    for _ in range(3):  # a few bad looks later: not proven worse, so still ruled out
        state = test.update(state, Counts(1000, 15, 9000, 90))
    assert test.decide(state).kind == "non-inferior"


# --- statistical properties on simulated data ---------------------------------------------


def test_a_healthy_canary_is_rarely_rolled_back_however_often_one_looks() -> None:
    """alpha 5 %, 300 rollouts of 60 looks each: the share ever rolled back stays below
    alpha (with a binomial margin), counting every look."""
    rng = random.Random(11)
    test = ErrorRateTest(0.5, alpha_fail=0.05)
    rolled = sum(first(test, rng, "regression", 0.01, 60) is not None for _ in range(300))
    assert rolled / 300 <= 0.08


def test_looking_every_interval_with_a_fixed_horizon_test_would_not_be() -> None:
    """The same healthy streams judged by a one-sided z-test at 5 % at every look: the
    false alarms pile up, which is why the controller uses sequential tests."""
    rng = random.Random(11)
    alarms = 0
    for _ in range(300):
        e_c = n_c = e_b = n_b = 0.0
        for _ in range(60):
            counts = look(rng, 200, 0.01)
            e_c += counts.canary_events
            n_c += counts.canary_requests
            e_b += counts.baseline_events
            n_b += counts.baseline_requests
            pooled = (e_c + e_b) / (n_c + n_b)
            se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
            if se > 0 and (e_c / n_c - e_b / n_b) / se > 1.645:
                alarms += 1
                break
    assert alarms / 300 > 0.15  # several times the nominal 5 %


def test_a_canary_twice_the_tolerance_is_rarely_promoted() -> None:
    rng = random.Random(12)
    test = ErrorRateTest(0.5, alpha_pass=0.05)
    promoted = sum(first(test, rng, "non-inferior", 0.02, 60) is not None for _ in range(300))
    assert promoted / 300 <= 0.08


@pytest.mark.parametrize(("rate", "expected"), [(70, 12), (200, 5), (1000, 1)])
def test_the_oracle_for_a_2x_error_regression(rate: float, expected: int) -> None:
    n_c, n_b = rate * 30 * 0.1, rate * 30 * 0.9
    looks = next(k for k in range(1, 100)
                 if fixed_horizon_power(n_c * k, n_b * k, 0.01, 0.02, 0.01) >= 0.95)  # fmt: skip
    assert looks == expected


def test_a_2x_error_regression_is_found_about_as_fast_as_the_oracle() -> None:
    rng = random.Random(13)
    test = ErrorRateTest(0.5, alpha_fail=0.005)  # two gating checks share 1 %
    found = [first(test, rng, "regression", 0.02, 30) for _ in range(200)]
    times = sorted(k for k in found if k is not None)
    assert len(times) / 200 >= 0.95
    assert times[len(times) // 2] <= 1.5 * 5  # median within 1.5x the oracle's 5 looks


def test_a_healthy_canary_is_ruled_non_inferior_within_the_rollout() -> None:
    rng = random.Random(14)
    test = ErrorRateTest(0.5)
    found = [first(test, rng, "non-inferior", 0.01, 30) for _ in range(200)]
    assert sum(k is not None for k in found) / 200 >= 0.9


def _lognormal_histogram(
    rng: random.Random, n: int, scale: float
) -> tuple[tuple[float, float], ...]:
    mu = math.log(0.040) - 2.326348 * 0.5
    bounds = [0.001 * 1.1**i for i in range(100)]
    counts = [0] * (len(bounds) + 1)
    for _ in range(n):
        x = rng.lognormvariate(mu, 0.5) * scale
        index = next((i for i, b in enumerate(bounds) if x <= b), len(bounds))
        counts[index] += 1
    out, total = [], 0.0
    for bound, count in zip([*bounds, INF], counts, strict=True):
        total += count
        out.append((bound, total))
    return tuple(out)


@pytest.mark.parametrize(
    ("scale", "decision"),
    [
        pytest.param(1.0, "non-inferior", id="healthy"),
        pytest.param(1.5, "regression", id="p99+50%"),
    ],
)
def test_latency_is_judged_on_the_tail_after_calibration(scale: float, decision: str) -> None:
    rng = random.Random(15)
    test = LatencyTest(0.2, alpha_fail=0.005)
    state = SequentialState()
    decisions = []
    for _ in range(12):  # 30 s looks at 200 req/s
        state = test.update(state, _lognormal_histogram(rng, 600, scale),
                            _lognormal_histogram(rng, 5400, 1.0))  # fmt: skip
        decisions.append(test.decide(state).kind)
    assert state.reference == pytest.approx(0.040, rel=0.15)  # the baseline's p99
    assert decisions[0] == "continue"  # the first look fixed the threshold
    assert decision in decisions
    assert "regression" not in decisions if decision == "non-inferior" else True
