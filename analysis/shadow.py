"""Statistics of the shadow comparison: decision agreement, score shift and ceilings.

PURE: counts and histogram buckets in, verdicts and PromQL text out; no I/O, no clock.

A challenger sees copies of the champion's live traffic (issue #14). The shadow collector
joins their payload-logger responses on ``Ce-Id`` and exports, per ordered pair of
InferenceServices, ``kserve_canary_shadow_pairs_total{namespace, isvc, peer, agree}`` and
the histogram ``kserve_canary_shadow_score{namespace, isvc, peer}``. This module judges
them:

* :func:`agreement_verdict`: do the challenger's decisions agree with the champion's on at
  least a ``minimum`` share of the paired predictions? An anytime-valid test, safe to
  re-evaluate every few seconds as pairs accrue (see below).
* :func:`score_shift_verdict`: did the challenger's score distribution move away from the
  champion's on the same requests? The population stability index (PSI), with the
  Kolmogorov-Smirnov distance shown beside it. A point estimate, not a test.
* :func:`ceiling_breach`: has the challenger failed so badly (errors, p99) that mirroring
  to it should stop?
* :func:`pairs_query`, :func:`score_buckets_query`: the PromQL that reads the counts;
  :func:`pair_counts` and :func:`score_buckets` read their answers.
* :func:`most_pairs`: the most pairs the challenger's requests can give (more are
  inconsistent evidence: forged or replayed collector events).
* :func:`evidence`: a verdict as a JSON-safe dict for the audit record.

Decision agreement
------------------
Number the paired predictions 1, 2, ...; pair ``i`` agrees (``X_i = 1``) with probability
``p_i`` given everything before it. Two one-sided tests run on the totals ``n`` (pairs)
and ``S`` (agreed), in the style of :mod:`analysis.sequential`:

* **pass** (H0: every ``p_i <= minimum``). For an alternative ``p'`` above the minimum,
  ``prod_i (p'/m)^X_i ((1 - p')/(1 - m))^(1 - X_i)`` is a non-negative supermartingale
  under H0: each factor's conditional mean ``p_i p'/m + (1 - p_i)(1 - p')/(1 - m)`` rises
  with ``p_i`` and is 1 at ``p_i = m``. The e-value is the equally weighted mean of these
  likelihood ratios over alternatives whose log-odds lie ``u`` above the minimum's, ``u``
  in :data:`analysis.sequential.GRID` (0.04 to 4.6: from a hair above the minimum to odds
  a hundred times better). A mean of supermartingales is one, so by Ville's inequality
  the chance that the e-value *ever* reaches ``1/alpha`` is at most ``alpha``, however
  often it is looked at and whenever mirroring stops. It depends on the pairs only through
  ``(n, S)``, so the verdict needs no state: the counts since the shadow phase began.
* **fail** (H0: every ``p_i >= minimum``): the same with alternatives below.

The verdict passes when the pass e-value reaches ``1/alpha`` and at least ``min_samples``
pairs were seen; it fails when the fail e-value reaches ``1/alpha`` (at any count: strong
evidence of disagreement stops the shadow early); otherwise it is inconclusive. So a
challenger whose agreement is below the minimum passes with probability at most
``alpha``, and one at or above it fails with probability at most ``alpha``, over the whole
shadow phase.

Inverting the tests gives the bounds reported: ``lower`` is the smallest minimum the pass
test would not reject, ``upper`` the largest the fail test would not reject. Each is an
anytime-valid one-sided ``1 - alpha`` confidence bound (a confidence sequence), so the
interval between them holds the true agreement at every check with probability at least
``1 - 2 alpha``; the verdict passes exactly when ``lower >= minimum`` (and ``min_samples``
were seen) and fails exactly when the minimum is above the interval.

Assumptions: pairs agree independently given the past (a batch request of ``k``
predictions counts as ``k`` pairs; if its predictions tend to agree or disagree together,
the evidence is overstated), and agreement may drift over time as long as it stays on one
side of the minimum (a mixed history is judged by neither guarantee exactly). Only pairs
that were joined count: if the challenger drops the requests it would disagree on (a
timeout, a 5xx), agreement is measured on the rest; the ceilings watch its errors.

Counts read with ``increase()`` are floats (Prometheus extrapolates to the window's edges:
99.7 for 100 pairs): they are rounded to the nearest whole number. The rounding, and the
extrapolation it hides, move the counts by far less than one look's pairs; a count that
is NaN, infinite or negative is refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from analysis.profiles import promql_duration, string_literal
from analysis.sequential import GRID
from analysis.types import DetailValue, Outcome, Series

__all__ = [
    "FULL_FAILURE_REQUESTS",
    "PAIRS_ALLOWANCE",
    "PAIRS_METRIC",
    "PAIRS_SLACK",
    "PSI_EPSILON",
    "SCORE_METRIC",
    "AgreementVerdict",
    "Buckets",
    "ScoreShiftVerdict",
    "agreement_log_e_values",
    "agreement_verdict",
    "ceiling_breach",
    "evidence",
    "ks_statistic",
    "most_pairs",
    "pair_counts",
    "pairs_query",
    "psi",
    "score_buckets",
    "score_buckets_query",
    "score_shift_verdict",
]

PAIRS_METRIC = "kserve_canary_shadow_pairs_total"
"""The collector's counter of paired predictions (labels namespace, isvc, peer, agree)."""
SCORE_METRIC = "kserve_canary_shadow_score"
"""The collector's histogram of ``isvc``'s scores in its pairs with ``peer``."""
PSI_EPSILON = 1e-4
"""The share an empty bucket counts as in the PSI (0.01 %), so that a bucket one side
never used adds a large but finite term: ``(q - 0.0001) * ln(q / 0.0001)``, 0.69 for a
bucket holding 10 % of one side's scores and none of the other's."""
PAIRS_SLACK = 0.25
"""How far above what the challenger's requests give the pairs may read before they are
taken for more than it answered (see :func:`most_pairs`)."""
PAIRS_ALLOWANCE = 20
"""Pairs always allowed beyond what the challenger's requests give (see :func:`most_pairs`)."""
FULL_FAILURE_REQUESTS = 20
"""A challenger that failed every one of at least this many mirrored requests breaches its
ceilings whatever they are and however few requests they ask for."""

_LOG_CAP = 700.0  # e-values are written as exp(min(log e, 700)): finite in JSON
_MONOTONE_SLACK = 1e-9  # relative: float noise of summed buckets, not a falling count
_FULL_FAILURE = 1.0 - 1e-9
_LOGIT_RANGE = 40.0  # bounds are searched for in log-odds within +-40 (1e-18 of 0 or 1)


# --- decision agreement ---------------------------------------------------------------------


def _softplus(z: float) -> float:
    """log(1 + e^z), without overflow."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _log_mean_exp(values: Sequence[float]) -> float:
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _log_e(pairs: int, agreed: int, logit: float, sign: Literal[1, -1]) -> float:
    """The log e-value of the mixture test against "agreement = sigmoid(logit)", with the
    alternatives above it (``sign`` 1) or below it (-1).

    The log-likelihood ratio of the alternative ``sigmoid(logit + sign * u)`` over ``pairs``
    pairs of which ``agreed`` agree is ``sign * u * agreed + pairs * (softplus(logit) -
    softplus(logit + sign * u))``."""
    if pairs == 0:
        return 0.0
    base = _softplus(logit)
    return _log_mean_exp(
        [sign * u * agreed + pairs * (base - _softplus(logit + sign * u)) for u in GRID]
    )


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def agreement_log_e_values(pairs: int, agreed: int, minimum: float) -> tuple[float, float]:
    """The natural logs of the two e-values at ``minimum``: evidence that agreement is
    above it (against H0 "at most the minimum": the pass test) and that it is below it
    (against "at least the minimum": the fail test). Whole counts, already checked.

    A minimum of 1 is "agree on every pair": nothing is evidence of more, and a single
    disagreement proves less (its fail value is +inf). ValueError for counts that are not
    whole numbers with ``0 <= agreed <= pairs``, or a minimum outside (0, 1]."""
    whole = all(math.isfinite(v) and v == round(v) for v in (pairs, agreed))
    if not (whole and 0 <= agreed <= pairs):
        raise ValueError(f"need whole counts with 0 <= agreed <= pairs, got {agreed!r} of "
                         f"{pairs!r}")  # fmt: skip
    if not 0 < minimum <= 1:
        raise ValueError(f"minimum must be a share in (0, 1], got {minimum!r}")
    if minimum >= 1.0:
        return 0.0, (math.inf if agreed < pairs else 0.0)
    logit = _logit(minimum)
    return _log_e(pairs, agreed, logit, 1), _log_e(pairs, agreed, logit, -1)


def _edge(test: Callable[[float], bool], rejected: float, kept: float) -> float:
    """Between a null that ``test`` rejects and one it keeps (log-odds), the last rejected
    one to within 1e-9 by bisection. The rejected nulls form a half-line: every
    alternative sits a fixed log-odds distance from its null, so the pass test's
    likelihood ratios fall as its null rises, and the fail test's as its null falls."""
    while abs(kept - rejected) > 1e-9:
        mid = (rejected + kept) / 2
        if test(mid):
            rejected = mid
        else:
            kept = mid
    return rejected


def _bounds(pairs: int, agreed: int, alpha: float) -> tuple[float, float]:
    """The agreement shares at the edges of what the pass test (lower) and the fail test
    (upper) would not reject at ``alpha``, each rounded outwards (a bound that errs
    towards caution). At the observed rate neither test rejects (every alternative fits
    worse than it), so the search runs from there outwards, to 1e-18 of 0 or 1."""
    if pairs == 0:
        return 0.0, 1.0
    threshold = math.log(1 / alpha)
    rate = agreed / pairs
    lower, upper = 0.0, 1.0
    if agreed > 0:

        def pass_rejects(x: float) -> bool:
            return _log_e(pairs, agreed, x, 1) >= threshold

        if pass_rejects(-_LOGIT_RANGE):
            kept = min(_logit(rate), _LOGIT_RANGE) if rate < 1 else _LOGIT_RANGE
            lower = _sigmoid(_edge(pass_rejects, -_LOGIT_RANGE, kept))
    if agreed < pairs:

        def fail_rejects(x: float) -> bool:
            return _log_e(pairs, agreed, x, -1) >= threshold

        if fail_rejects(_LOGIT_RANGE):
            kept = max(_logit(rate), -_LOGIT_RANGE) if rate > 0 else -_LOGIT_RANGE
            upper = _sigmoid(_edge(fail_rejects, _LOGIT_RANGE, kept))
    return lower, upper


def _pairs_to_decide(pairs: int, agreed: int, minimum: float, alpha: float) -> float | None:
    """How many pairs in all the test needs to decide if agreement stays at the rate seen
    so far (None: no pairs, the rate is the minimum itself, or it is too close to the
    minimum for any alternative of the mixture to gain)."""
    if pairs == 0 or minimum >= 1.0:
        return None
    rate = agreed / pairs
    if rate == minimum:
        return None
    sign: Literal[1, -1] = 1 if rate > minimum else -1
    logit = _logit(minimum)
    base = _softplus(logit)
    # Per pair at this rate, each alternative's log-likelihood ratio grows by its slope;
    # the log e-value after n pairs is log_mean_exp(n * slope), convex in n and 0 at 0.
    slopes = [sign * u * rate + base - _softplus(logit + sign * u) for u in GRID]
    steepest = max(slopes)
    if steepest <= 0:
        return None
    threshold = math.log(1 / alpha)

    def short(n: float) -> float:
        return threshold - _log_mean_exp([n * s for s in slopes])

    lo, hi = float(pairs), (threshold + math.log(len(GRID))) / steepest
    if short(lo) <= 0:
        return lo
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if short(mid) > 0 else (lo, mid)
    return hi


def _count(name: str, value: float) -> int:
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite count, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return round(value)


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


def _number(count: float) -> str:
    return f"{count:,.0f}" if count < 1e9 else f"{count:.3g}"


@dataclass(frozen=True)
class AgreementVerdict:
    """Whether the challenger's decisions agree with the champion's often enough.

    ``rate`` is ``agreed / pairs`` (None without pairs); ``lower`` and ``upper`` are the
    anytime-valid one-sided ``1 - alpha`` confidence bounds on the true agreement (0 and 1
    without pairs); ``needed`` estimates how many more pairs a decision takes if agreement
    stays at ``rate`` (None once decided, without pairs, or when the rate is too close to
    the minimum to decide at all). ``pass_e_value`` and ``fail_e_value`` are the two tests'
    e-values, each decided at ``1 / alpha`` (capped at e^700 to stay finite)."""

    outcome: Outcome
    rate: float | None
    lower: float
    upper: float
    pairs: int
    agreed: int
    needed: int | None
    reason: str
    minimum: float
    alpha: float
    min_samples: int
    pass_e_value: float
    fail_e_value: float


def agreement_verdict(
    pairs: float, agreed: float, *, minimum: float, alpha: float, min_samples: int
) -> AgreementVerdict:
    """Judge decision agreement on the pairs counted since the shadow phase began.

    Successful when the lower bound is at or above ``minimum`` and at least
    ``min_samples`` pairs were counted; Failed when the upper bound is below ``minimum``
    (at any count); Inconclusive otherwise. Valid however often it is called as the counts
    grow (see the module's docstring): a challenger below the minimum passes, and one at
    or above it fails, each with probability at most ``alpha`` over the whole phase.

    ``pairs`` and ``agreed`` may be the floats ``increase()`` returns: they are rounded to
    whole numbers. ValueError for a count that is negative or not finite, ``agreed`` above
    ``pairs``, a ``minimum`` outside (0, 1], an ``alpha`` outside (0, 1) or a negative
    ``min_samples``."""
    problems: list[str] = []
    counted: dict[str, int] = {}
    for name, value in (("pairs", pairs), ("agreed", agreed)):
        try:
            counted[name] = _count(name, value)
        except ValueError as error:
            problems.append(str(error))
    if not (0 < minimum <= 1):  # also refuses NaN
        problems.append(f"minimum must be a share in (0, 1], got {minimum!r}")
    if not (0 < alpha < 1):
        problems.append(f"alpha must be between 0 and 1, got {alpha!r}")
    if isinstance(min_samples, bool) or min_samples < 0:
        problems.append(f"min_samples must be a count >= 0, got {min_samples!r}")
    if not problems and counted["agreed"] > counted["pairs"]:
        problems.append(
            f"agreed ({agreed:g}) exceeds pairs ({pairs:g}): agreeing pairs are a subset of "
            "all pairs"
        )
    if problems:
        raise ValueError("decision agreement: " + "; ".join(problems))
    n, s = counted["pairs"], counted["agreed"]

    log_pass, log_fail = agreement_log_e_values(n, s, minimum)
    threshold = math.log(1 / alpha)
    lower, upper = _bounds(n, s, alpha)
    # The decisions are the tests'; the bounds, found numerically, are kept consistent
    # with them (any value between the true bound and the minimum is a valid bound too).
    if log_pass >= threshold:
        lower = max(lower, minimum)
    if log_fail >= threshold:
        upper = min(upper, math.nextafter(minimum, 0.0))
    rate = s / n if n else None
    level = f"{(1 - alpha) * 100:g}%"
    shown = "no paired predictions yet" if rate is None else (
        f"agreement {_percent(rate)} over {_number(n)} paired prediction{'' if n == 1 else 's'}"
    )  # fmt: skip
    needed: int | None = None

    if log_fail >= threshold:
        outcome = Outcome.FAILED
        if minimum >= 1:
            why = "the minimum 100% needs every pair to agree, and some did not"
        else:
            why = (
                f"the {level} upper bound {_percent(upper)} is below the minimum "
                f"{_percent(minimum)}"
            )
        reason = f"{shown}; {why}: the challenger disagrees with the champion too often"
    elif log_pass >= threshold and n >= min_samples:
        outcome = Outcome.SUCCESSFUL
        reason = (
            f"{shown}; the {level} lower bound {_percent(lower)} is at or above the minimum "
            f"{_percent(minimum)}"
        )
    else:
        outcome = Outcome.INCONCLUSIVE
        if log_pass >= threshold:
            needed = min_samples - n
            reason = (
                f"{shown}; the {level} lower bound {_percent(lower)} clears the minimum "
                f"{_percent(minimum)}, but only {_number(n)} of the {_number(min_samples)} "
                "pairs required were counted"
            )
        elif rate is None:
            reason = f"{shown}: nothing to judge (the collector pairs responses on Ce-Id)"
        else:
            total = _pairs_to_decide(n, s, minimum, alpha)
            if total is not None:
                if rate > minimum:
                    total = max(total, float(min_samples))
                needed = max(math.ceil(total) - n, 1)
            if minimum >= 1:
                wait = "a minimum of 100% can only fail (on the first disagreement)"
            elif needed is None:
                wait = "at this rate, too close to the minimum, no number of pairs decides"
            else:
                wait = f"about {_number(needed)} more pairs to decide if the rate holds"
            reason = (
                f"{shown}; the minimum {_percent(minimum)} lies within the {level} bounds "
                f"{_percent(lower)} to {_percent(upper)}: {wait}"
            )
    return AgreementVerdict(
        outcome=outcome,
        rate=rate,
        lower=lower,
        upper=upper,
        pairs=n,
        agreed=s,
        needed=needed,
        reason=reason,
        minimum=minimum,
        alpha=alpha,
        min_samples=min_samples,
        pass_e_value=math.exp(min(log_pass, _LOG_CAP)),
        fail_e_value=math.exp(min(log_fail, _LOG_CAP)),
    )


# --- score-distribution shift ---------------------------------------------------------------

Buckets = Sequence[tuple[float | str, float]]
"""A histogram as Prometheus returns it: ``(le, cumulative count)`` per bucket, in any
order, ``le`` a number or its label text (``"0.05"``, ``"+Inf"``), the ``+Inf`` bucket
included. Counts may be the floats ``increase()`` returns."""


def _bound(le: float | str, side: str) -> float:
    try:
        bound = float(le)
    except (TypeError, ValueError):
        raise ValueError(f"the {side} histogram has a bucket bound that is not a number: "
                         f"le={le!r}") from None  # fmt: skip
    if math.isnan(bound):
        raise ValueError(f"the {side} histogram has a bucket bound that is not a number: NaN")
    return bound


def _shown(le: float) -> str:
    return "+Inf" if math.isinf(le) else f"{le:g}"


def _cumulative(buckets: Buckets, side: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The bounds in increasing order and their cumulative counts, checked: no duplicate
    bound, a ``+Inf`` bucket, finite counts that are not negative and do not fall as ``le``
    rises (beyond the float noise of summing series, 1e-9 of the count, which is
    levelled)."""
    pairs: list[tuple[float, float]] = []
    for le, count in buckets:
        bound = _bound(le, side)
        if not math.isfinite(count):
            raise ValueError(f"the {side} histogram's bucket le={_shown(bound)} has a count "
                             f"that is not finite: {count!r}")  # fmt: skip
        if count < 0:
            raise ValueError(f"the {side} histogram's bucket le={_shown(bound)} has a negative "
                             f"count: {count!r}")  # fmt: skip
        pairs.append((bound, float(count)))
    if not pairs:
        raise ValueError(f"the {side} histogram has no buckets")
    pairs.sort()
    for (a, _), (b, _) in itertools.pairwise(pairs):
        if a == b:
            raise ValueError(f"the {side} histogram has the bucket le={_shown(a)} twice")
    if not math.isinf(pairs[-1][0]) or pairs[-1][0] < 0:
        raise ValueError(f"the {side} histogram has no +Inf bucket")
    counts: list[float] = []
    for bound, count in pairs:
        previous = counts[-1] if counts else 0.0
        if previous - count > _MONOTONE_SLACK * max(1.0, previous):
            raise ValueError(
                f"the {side} histogram's cumulative count falls from {previous:g} to "
                f"{count:g} at le={_shown(bound)}: cumulative buckets never fall as le rises"
            )
        counts.append(max(count, previous))
    return tuple(bound for bound, _ in pairs), tuple(counts)


def _aligned(
    baseline: Buckets, candidate: Buckets
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The shared bounds and both sides' cumulative counts; ValueError when the bounds
    differ (the two sides would not be comparable bucket by bucket)."""
    bounds, base = _cumulative(baseline, "baseline")
    other_bounds, cand = _cumulative(candidate, "candidate")
    if bounds != other_bounds:
        only_base = sorted(set(bounds) - set(other_bounds))
        only_cand = sorted(set(other_bounds) - set(bounds))
        parts = [
            f"{', '.join(_shown(b) for b in only[:5])} only in the {side}"
            for only, side in ((only_base, "baseline"), (only_cand, "candidate"))
            if only
        ]
        raise ValueError("the baseline and candidate histograms have different bucket bounds ("
                         + "; ".join(parts) + ")")  # fmt: skip
    return bounds, base, cand


def _shares(cumulative: Sequence[float], side: str) -> list[float]:
    total = cumulative[-1]
    if total <= 0:
        raise ValueError(f"the {side} histogram has no observations")
    previous = 0.0
    shares = []
    for count in cumulative:
        shares.append((count - previous) / total)
        previous = count
    return shares


def psi(baseline: Buckets, candidate: Buckets) -> float:
    """The population stability index of ``candidate`` against ``baseline``:
    ``sum over buckets of (q - p) * ln(q / p)`` where ``p`` and ``q`` are each side's share
    of its observations in the bucket (the ``+Inf`` bucket holds those above the largest
    finite bound), an empty bucket counting as :data:`PSI_EPSILON`. 0 for identical
    shares; symmetric in the two sides.

    ValueError for bucket bounds that differ between the sides, a histogram without
    observations, and any histogram :data:`Buckets` does not describe."""
    _, base, cand = _aligned(baseline, candidate)
    total = 0.0
    for p_raw, q_raw in zip(_shares(base, "baseline"), _shares(cand, "candidate"), strict=True):
        p, q = max(p_raw, PSI_EPSILON), max(q_raw, PSI_EPSILON)
        total += (q - p) * math.log(q / p)
    return total


def ks_statistic(baseline: Buckets, candidate: Buckets) -> float:
    """The largest gap between the two cumulative distributions at the bucket bounds
    (the Kolmogorov-Smirnov distance as far as the buckets show it: a lower bound on the
    distance between the unbinned scores). Between 0 and 1. ValueError as for
    :func:`psi`."""
    _, base, cand = _aligned(baseline, candidate)
    n_base, n_cand = base[-1], cand[-1]
    if n_base <= 0:
        raise ValueError("the baseline histogram has no observations")
    if n_cand <= 0:
        raise ValueError("the candidate histogram has no observations")
    return max(abs(b / n_base - c / n_cand) for b, c in zip(base, cand, strict=True))


@dataclass(frozen=True)
class ScoreShiftVerdict:
    """Whether the challenger's scores moved away from the champion's on the same requests.

    ``psi`` and ``ks`` are None when either side has no observation; the counts are each
    side's observations (its ``+Inf`` bucket), rounded."""

    outcome: Outcome
    psi: float | None
    ks: float | None
    baseline_count: int
    candidate_count: int
    max_psi: float
    min_samples: int
    reason: str


def score_shift_verdict(
    baseline: Buckets, candidate: Buckets, *, max_psi: float, min_samples: int
) -> ScoreShiftVerdict:
    """Judge the shift of the challenger's scores (``candidate``) from the champion's
    (``baseline``), both histograms of the paired predictions since the shadow phase began.

    Inconclusive while either side has fewer than ``min_samples`` scores (a side given
    no buckets at all, as an empty answer gives before its first score, has none); then
    Failed when the PSI exceeds ``max_psi``, Successful otherwise.

    The PSI is a point estimate judged once there are ``min_samples`` on each side, not a
    test: it has no error rate, and judging it again as scores accrue raises the chance of
    a spurious failure. The usual reading is below 0.1 no real shift, 0.1 to 0.25 a
    moderate one, above 0.25 a major one. Sampling noise alone gives a PSI of about
    ``(k - 1) * (1/n_baseline + 1/n_candidate)`` for ``k`` used buckets (0.04 with 21
    buckets and 1,000 scores a side), so ``min_samples`` should make that small beside
    ``max_psi``.

    ValueError for an invalid histogram or bucket bounds that differ (see :func:`psi`), a
    ``max_psi`` that is not a positive number, or a negative ``min_samples``."""
    if not (max_psi > 0 and math.isfinite(max_psi)):
        raise ValueError(f"score shift: max_psi must be a positive number, got {max_psi!r}")
    if isinstance(min_samples, bool) or min_samples < 0:
        raise ValueError(f"score shift: min_samples must be a count >= 0, got {min_samples!r}")
    if baseline and candidate:
        _, base, cand = _aligned(baseline, candidate)
        total_base, total_cand = base[-1], cand[-1]
    else:  # a side without series has seen no score yet; the other must still be valid
        total_base = _cumulative(baseline, "baseline")[1][-1] if baseline else 0.0
        total_cand = _cumulative(candidate, "candidate")[1][-1] if candidate else 0.0
    n_base, n_cand = round(total_base), round(total_cand)
    value = ks = None
    if total_base > 0 and total_cand > 0:
        value, ks = psi(baseline, candidate), ks_statistic(baseline, candidate)
    counts = f"{_number(n_cand)} challenger and {_number(n_base)} champion scores"
    if value is None or ks is None or min(n_base, n_cand) < min_samples:
        if value is None or ks is None:
            wait = "the PSI needs scores on both sides"
        else:
            wait = (f"{_number(min_samples)} needed on each side (PSI {value:.3g}, KS "
                    f"{ks:.3g} so far, not judged)")  # fmt: skip
        return ScoreShiftVerdict(
            Outcome.INCONCLUSIVE, value, ks, n_base, n_cand, max_psi, min_samples,
            f"{counts}: {wait}",
        )  # fmt: skip
    if value > max_psi:
        return ScoreShiftVerdict(
            Outcome.FAILED,
            value,
            ks,
            n_base,
            n_cand,
            max_psi,
            min_samples,
            f"the challenger's scores moved from the champion's: PSI {value:.3g} is above the "
            f"maximum {max_psi:g} (KS {ks:.3g}) over {counts}",
        )
    return ScoreShiftVerdict(
        Outcome.SUCCESSFUL,
        value,
        ks,
        n_base,
        n_cand,
        max_psi,
        min_samples,
        f"PSI {value:.3g} is within the maximum {max_psi:g} (KS {ks:.3g}) over {counts}",
    )


# --- ceilings -------------------------------------------------------------------------------


def ceiling_breach(
    error_rate: float | None,
    p99_seconds: float | None,
    requests: float,
    *,
    max_error_rate: float | None,
    max_p99_seconds: float | None,
    min_requests: int,
) -> str | None:
    """Why mirroring to the challenger should stop, or None while it may go on.

    ``error_rate`` (a share; values above 1 from ``increase()`` extrapolation read as 1)
    and ``p99_seconds`` are the challenger's over its ``requests`` mirrored requests, None
    when unknown. Once ``requests`` reaches ``min_requests``, an error rate above
    ``max_error_rate`` or a p99 above ``max_p99_seconds`` breaches (a ceiling of None is
    not checked), so one error at the start does not stop mirroring. A challenger that
    failed every one of at least :data:`FULL_FAILURE_REQUESTS` requests always breaches.

    ValueError for a value that is negative or not finite (NaN included: pass None for an
    unknown value), a ``max_error_rate`` outside [0, 1], a ``max_p99_seconds`` that is not
    positive, or a negative ``min_requests``."""
    problems: list[str] = []
    for name, value in (("error_rate", error_rate), ("p99_seconds", p99_seconds)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(f"{name} must be a finite number >= 0 or None, got {value!r}")
    if not (math.isfinite(requests) and requests >= 0):
        problems.append(f"requests must be a finite count >= 0, got {requests!r}")
    if max_error_rate is not None and not 0 <= max_error_rate <= 1:
        problems.append(f"max_error_rate must be a share in [0, 1] or None, got "
                        f"{max_error_rate!r}")  # fmt: skip
    ceiling = max_p99_seconds
    if ceiling is not None and not (ceiling > 0 and math.isfinite(ceiling)):
        problems.append(f"max_p99_seconds must be a positive number or None, got "
                        f"{max_p99_seconds!r}")  # fmt: skip
    if isinstance(min_requests, bool) or min_requests < 0:
        problems.append(f"min_requests must be a count >= 0, got {min_requests!r}")
    if problems:
        raise ValueError("shadow ceilings: " + "; ".join(problems))
    n = round(requests)
    errors = None if error_rate is None else min(error_rate, 1.0)
    if errors is not None and errors >= _FULL_FAILURE and n >= FULL_FAILURE_REQUESTS:
        return f"the challenger failed every one of its {_number(n)} mirrored requests"
    if n < min_requests:
        return None
    breaches: list[str] = []
    if errors is not None and max_error_rate is not None and errors > max_error_rate:
        breaches.append(
            f"the challenger's error rate {_percent(errors)} over {_number(n)} mirrored requests "
            f"is above its ceiling {_percent(max_error_rate)}"
        )
    if p99_seconds is not None and max_p99_seconds is not None and p99_seconds > max_p99_seconds:
        breaches.append(
            f"the challenger's p99 {p99_seconds * 1000:.4g} ms over {_number(n)} mirrored "
            f"requests is above its ceiling {max_p99_seconds * 1000:.4g} ms"
        )
    return "; ".join(breaches) or None


# --- consistency ----------------------------------------------------------------------------


def most_pairs(requests: float, per_request: int = 1) -> float:
    """The most paired predictions a challenger that served ``requests`` requests can
    have, both counted by ``increase()`` over the same window: at most ``per_request``
    predictions per request (a batch of ``k`` is ``k`` pairs), plus :data:`PAIRS_SLACK` of that
    and :data:`PAIRS_ALLOWANCE` pairs.

    The room is for how the two counts are read, not for pairs the challenger never
    answered: Prometheus extrapolates each counter to the window's edges on its own (the
    collector and the model server are scraped at different moments), which at a steady
    rate is close to exact and otherwise moves a count by about one scrape interval's
    traffic at each edge, a small share of a window that spans the whole shadow phase;
    the requests served in the second before the window's start (the window is whole
    seconds, rounded down) are missed. The requests are read with
    :func:`analysis.profiles.requests_since_query`, which counts a challenger series born
    within the window from zero (``increase()`` alone would leave out its first value, a
    scrape interval's traffic or more, while the pairs may have been seen from their
    start). Pairs lag the requests they pair (a pair is counted
    once both responses reached the collector), which only lowers them. More pairs than
    this were not all answered by the challenger: forged or replayed collector events, or
    several collectors writing one series (which ``increase()`` reads as resets and
    inflates).

    ValueError for ``requests`` that is not a finite count or a ``per_request`` below 1.
    """
    if isinstance(requests, bool) or not (math.isfinite(requests) and requests >= 0):
        raise ValueError(f"requests must be a finite count >= 0, got {requests!r}")
    if isinstance(per_request, bool) or per_request < 1:
        raise ValueError(f"per_request must be a count >= 1, got {per_request!r}")
    return per_request * requests * (1 + PAIRS_SLACK) + PAIRS_ALLOWANCE


# --- PromQL ---------------------------------------------------------------------------------


def _selector(namespace: str, isvc: str, peer: str) -> str:
    for name, value in (("namespace", namespace), ("isvc", isvc), ("peer", peer)):
        if not value:
            raise ValueError(f"a shadow query needs a {name}")
    if isvc == peer:
        raise ValueError(f"a shadow query compares two InferenceServices, got {isvc!r} twice")
    return (
        f"{{namespace={string_literal(namespace)},isvc={string_literal(isvc)},"
        f"peer={string_literal(peer)}}}"
    )


def _window(window: timedelta) -> str:
    """The window in whole seconds, rounded down so that it never reaches back before the
    shadow phase began (where an earlier phase's pairs could be)."""
    seconds = math.floor(window.total_seconds())
    if seconds < 1:
        raise ValueError(f"a shadow window must be at least 1s, got {window}")
    return promql_duration(timedelta(seconds=seconds))


def pairs_query(namespace: str, challenger: str, champion: str, window: timedelta) -> str:
    """The challenger's paired predictions with the champion over ``window`` (the time
    since the shadow phase began, rounded down to whole seconds): one series per ``agree``
    value, ``"true"`` and ``"false"``; read the answer with :func:`pair_counts`."""
    return (
        f"sum by (agree) (increase({PAIRS_METRIC}{_selector(namespace, challenger, champion)}"
        f"[{_window(window)}]))"
    )


def score_buckets_query(namespace: str, isvc: str, peer: str, window: timedelta) -> str:
    """``isvc``'s scores in its pairs with ``peer`` over ``window`` (as for
    :func:`pairs_query`): one series per ``le``; read the answer with :func:`score_buckets`.
    The champion's scores (``isvc`` = champion, ``peer`` = challenger) are the baseline of
    :func:`score_shift_verdict`, the challenger's the candidate."""
    return (
        f"sum by (le) (increase({SCORE_METRIC}_bucket{_selector(namespace, isvc, peer)}"
        f"[{_window(window)}]))"
    )


def _value(series: Series, what: str) -> float:
    if series.unreadable is not None or not math.isfinite(series.value):
        why = series.unreadable or f"its value is {series.value!r}"
        raise ValueError(f"{what}: {why}")
    return series.value


def pair_counts(answer: Iterable[Series]) -> tuple[float, float]:
    """``(pairs, agreed)`` from the answer to :func:`pairs_query`: the sum of both series
    and the ``agree="true"`` one (a value missing for a series that does not exist yet is
    0). ValueError for another ``agree`` value, a value given twice or a sample that is not
    a finite number."""
    seen: dict[str, float] = {}
    for series in answer:
        agree = series.labels.get("agree")
        if agree not in ("true", "false"):
            raise ValueError(f"a pairs series with agree={agree!r}; expected true or false")
        if agree in seen:
            raise ValueError(f"two pairs series with agree={agree!r}")
        seen[agree] = _value(series, f"the pairs series agree={agree!r}")
    agreed = seen.get("true", 0.0)
    return agreed + seen.get("false", 0.0), agreed


def score_buckets(answer: Iterable[Series]) -> list[tuple[str, float]]:
    """The ``(le, count)`` buckets of the answer to :func:`score_buckets_query`, as
    :func:`score_shift_verdict` takes them (an empty answer, before the first score, gives
    an empty list: no scores). ValueError for a series without ``le`` or a sample that is
    not a finite number."""
    buckets: list[tuple[str, float]] = []
    for series in answer:
        le = series.labels.get("le")
        if le is None:
            raise ValueError("a score bucket series without an le label")
        buckets.append((le, _value(series, f"the score bucket le={le}")))
    return buckets


# --- evidence -------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def evidence(verdict: AgreementVerdict | ScoreShiftVerdict) -> dict[str, DetailValue]:
    """The verdict as an audit record's detail: JSON-safe (every float finite or None)."""
    if isinstance(verdict, AgreementVerdict):
        return {
            "test": "shadow-agreement",
            "outcome": verdict.outcome.value,
            "pairs": verdict.pairs,
            "agreed": verdict.agreed,
            "rate": _finite(verdict.rate),
            "lower": _finite(verdict.lower),
            "upper": _finite(verdict.upper),
            "minimum": _finite(verdict.minimum),
            "alpha": _finite(verdict.alpha),
            "min_samples": verdict.min_samples,
            "needed": verdict.needed,
            "pass_e_value": _finite(verdict.pass_e_value),
            "fail_e_value": _finite(verdict.fail_e_value),
            "threshold": _finite(1 / verdict.alpha),
            "reason": verdict.reason,
        }
    return {
        "test": "shadow-score-shift",
        "outcome": verdict.outcome.value,
        "psi": _finite(verdict.psi),
        "ks": _finite(verdict.ks),
        "baseline_count": verdict.baseline_count,
        "candidate_count": verdict.candidate_count,
        "max_psi": _finite(verdict.max_psi),
        "min_samples": verdict.min_samples,
        "psi_epsilon": PSI_EPSILON,
        "reason": verdict.reason,
    }
