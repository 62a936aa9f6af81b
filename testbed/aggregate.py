"""Counts drawn in aggregate: how many of ``n`` requests fall in each histogram bucket,
error out or decline, without drawing each request.

The traffic simulator's aggregate mode (:mod:`testbed.traffic`) uses these to serve
thousands of InferenceServices on a small machine: a tick of ``n`` requests on one target
costs a few draws per bucket that holds noticeable probability, whatever ``n`` is, instead
of several draws per request. The counts have the distribution the per-request draws would
give (exactly for small ``n``; for large ``n`` each bucket's conditional binomial is drawn
from its normal approximation once its mean is at least :data:`NORMAL_FROM_MEAN`), and a
histogram's sum is each bucket's count times the distribution's mean within that bucket,
so the mean latency and the mean score are right in expectation while the spread within a
bucket is not drawn.

PURE: no I/O, no clock; the random source is passed in.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate
from statistics import NormalDist

__all__ = [
    "NORMAL_FROM_MEAN",
    "PER_ITEM_FACTOR",
    "Categorical",
    "binomial",
    "clipped_normal_buckets",
    "lognormal_buckets",
]

NORMAL_FROM_MEAN = 12.0
"""A binomial whose mean (of the rarer outcome) is at least this is drawn from its normal
approximation (variance at least 6); below it, exactly, by geometric gaps between
successes (about ``mean + 1`` uniforms)."""

PER_ITEM_FACTOR = 8
"""A categorical sample of ``n`` items draws each item (one uniform and a bisection each:
exact, about 0.3 µs an item) while ``n`` is below this many times the number of categories
that hold all but 1e-4 of the probability; above, it draws conditional binomials per
category, likeliest first (a few µs each, whatever ``n``)."""

_STANDARD = NormalDist()
_NORMAL_FROM_UNIFORM = _STANDARD.inv_cdf
_PHI = _STANDARD.cdf


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Successes among ``n`` trials of probability ``p`` (see :data:`NORMAL_FROM_MEAN`)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    mean = n * p
    if mean < NORMAL_FROM_MEAN:
        log_q = math.log1p(-p)
        rnd = rng.random
        log = math.log
        successes, position = 0, 0
        while True:
            # trials up to and including the next success: geometric, at least 1
            position += int(log(1.0 - rnd()) / log_q) + 1
            if position > n:
                return successes
            successes += 1
    z = _NORMAL_FROM_UNIFORM(rng.random() or 0.5)  # random() may return 0.0, never 1.0
    drawn = round(mean + math.sqrt(mean * (1.0 - p)) * z)
    return 0 if drawn < 0 else n if drawn > n else drawn


class Categorical:
    """A distribution over categories ``0 .. len(probabilities) - 1``."""

    __slots__ = ("_cumulative", "_order", "_per_item_below", "probabilities")

    def __init__(self, probabilities: Sequence[float]) -> None:
        probabilities = tuple(float(p) for p in probabilities)
        if not probabilities:
            raise ValueError("a categorical distribution needs at least one category")
        if any(p < 0.0 or not math.isfinite(p) for p in probabilities):
            raise ValueError("probabilities must be finite and not negative")
        if not math.isclose(sum(probabilities), 1.0, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"probabilities must add up to 1, not {sum(probabilities)}")
        self.probabilities = probabilities
        self._cumulative = tuple(accumulate(probabilities))
        # (index, probability, probability of it and of every later one), likeliest first
        ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
        rests = list(accumulate(probabilities[i] for i in reversed(ranked)))[::-1]
        self._order = tuple(
            (index, probabilities[index], rests[k]) for k, index in enumerate(ranked)
        )
        notable = sum(1 for _, _, rest in self._order if rest > 1e-4)
        self._per_item_below = PER_ITEM_FACTOR * max(notable, 1)

    def __repr__(self) -> str:
        return f"Categorical({list(self.probabilities)!r})"

    def sample(self, rng: random.Random, n: int) -> dict[int, int]:
        """How many of ``n`` independent draws fall in each category (a multinomial), as
        ``{category: count}`` for the categories drawn at least once."""
        counts: dict[int, int] = {}
        if n <= 0:
            return counts
        if n < self._per_item_below:
            cumulative = self._cumulative
            total, last = cumulative[-1], len(cumulative) - 1
            rnd = rng.random
            get = counts.get
            for _ in range(n):
                index = bisect_right(cumulative, rnd() * total)
                index = index if index <= last else last
                counts[index] = get(index, 0) + 1
            return counts
        remaining = n
        for index, p, rest in self._order:
            if remaining == 0:
                break
            drawn = binomial(rng, remaining, 1.0 if rest <= p else p / rest)
            if drawn:
                counts[index] = drawn
                remaining -= drawn
        if remaining:  # only through rounding in the suffix sums: the likeliest takes them
            likeliest = self._order[0][0]
            counts[likeliest] = counts.get(likeliest, 0) + remaining
        return counts


@lru_cache(maxsize=256)
def lognormal_buckets(
    mu: float, sigma: float, bounds: Sequence[float]
) -> tuple[Categorical, tuple[float, ...]]:
    """A lognormal (``exp(mu + sigma * Z)``) in histogram buckets with upper ``bounds``
    (inclusive, increasing) and one more above them: each bucket's probability, and the
    distribution's mean within each bucket (0 for a bucket it cannot reach).
    ``bounds`` must be hashable (a tuple)."""
    if sigma <= 0.0:
        value = math.exp(mu)
        probabilities = [0.0] * (len(bounds) + 1)
        probabilities[_bucket_of(value, bounds)] = 1.0
        means = [0.0] * (len(bounds) + 1)
        means[_bucket_of(value, bounds)] = value
        return Categorical(tuple(probabilities)), tuple(means)
    scale = math.exp(mu + sigma * sigma / 2.0)  # the lognormal's mean

    def cdf(x: float) -> float:  # P(X <= x)
        return 0.0 if x <= 0.0 else _PHI((math.log(x) - mu) / sigma)

    def partial(x: float) -> float:  # E[X; X <= x]
        if x <= 0.0:
            return 0.0
        return scale * _PHI((math.log(x) - mu - sigma * sigma) / sigma)

    return _bucketed(cdf, partial, bounds, total_mean=scale)


@lru_cache(maxsize=256)
def clipped_normal_buckets(
    mean: float, sd: float, bounds: Sequence[float]
) -> tuple[Categorical, tuple[float, ...]]:
    """``min(max(mean + sd * Z, 0), 1)`` in histogram buckets with upper ``bounds``
    (inclusive, increasing; the last at least 1) and one more above them: each bucket's
    probability, and the clipped value's mean within each bucket."""
    if bounds[-1] < 1.0:
        raise ValueError("the bounds must reach 1: a clipped value is at most 1")
    if sd <= 0.0:
        value = min(max(mean, 0.0), 1.0)
        probabilities = [0.0] * (len(bounds) + 1)
        probabilities[_bucket_of(value, bounds)] = 1.0
        means = [0.0] * (len(bounds) + 1)
        means[_bucket_of(value, bounds)] = value
        return Categorical(tuple(probabilities)), tuple(means)
    pdf_scale = sd / math.sqrt(2.0 * math.pi)

    def raw_cdf(x: float) -> float:
        return _PHI((x - mean) / sd)

    def raw_partial(x: float) -> float:  # E[Y; Y <= x] for Y = mean + sd * Z
        z = (x - mean) / sd
        return mean * _PHI(z) - pdf_scale * math.exp(-z * z / 2.0)

    def cdf(x: float) -> float:  # of the clipped value
        return 0.0 if x < 0.0 else 1.0 if x >= 1.0 else raw_cdf(x)

    def partial(x: float) -> float:  # E[C; C <= x] for the clipped C (0 where Y < 0)
        if x < 0.0:
            return 0.0
        if x >= 1.0:
            return (raw_partial(1.0) - raw_partial(0.0)) + (1.0 - raw_cdf(1.0))
        return raw_partial(x) - raw_partial(0.0)

    return _bucketed(cdf, partial, bounds, total_mean=partial(1.0))


def _bucket_of(value: float, bounds: Sequence[float]) -> int:
    """The bucket a value is counted in: the first bound at or above it (``le``)."""
    return bisect_left(bounds, value)


def _bucketed(
    cdf: Callable[[float], float],
    partial: Callable[[float], float],
    bounds: Sequence[float],
    *,
    total_mean: float,
) -> tuple[Categorical, tuple[float, ...]]:
    """Bucket probabilities from ``cdf`` (P(X <= x)) and means within each bucket from
    ``partial`` (E[X; X <= x]); ``total_mean`` is E[X]."""
    cdfs = [0.0, *(float(cdf(b)) for b in bounds), 1.0]
    partials = [0.0, *(float(partial(b)) for b in bounds), total_mean]
    probabilities: list[float] = []
    means: list[float] = []
    for i in range(len(bounds) + 1):
        p = max(cdfs[i + 1] - cdfs[i], 0.0)
        probabilities.append(p)
        means.append(max(partials[i + 1] - partials[i], 0.0) / p if p > 0.0 else 0.0)
    total = sum(probabilities)
    return Categorical(tuple(p / total for p in probabilities)), tuple(means)
