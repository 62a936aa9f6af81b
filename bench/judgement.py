"""Decision quality of canary judges on synthetic streams with known ground truth.

``make bench-judgement`` (``python -m bench.judgement``). Three judges see the same
simulated canary and baseline counts, interval by interval (30 s, canary at 10 % of the
traffic, baseline 1 % errors and a lognormal latency with p99 40 ms):

* **ours**: the controller's own code: the checks (``CheckDefinition``) judged by
  ``analysis.sequential_check`` and ``analysis.assess.assess``, and the step's outcome by
  ``analysis.assess.step_outcome``, the function the controller uses. Error rate
  (tolerance +50 %) and p99 (tolerance +20 %), plus a business rate (false positives over
  legitimate transactions, tolerance +10 %) where the stream has one; the false-rollback
  budget of 1 % split among the gating checks, the false-promotion budget 5 % per check,
  ``minSamples`` 100. The rollout has three steps with a hold of 10 intervals each: a step
  advances at the first interval after its hold whose outcome is ``advance`` (which needs
  100 canary requests counted at that step), the third advance promotes; a rollout not
  promoted after 90 intervals pauses (inconclusive), as does a gating Inconclusive at any
  time; ``rollback`` rolls back at once. The p99 threshold is fixed as the controller fixes it,
  from the baseline's first 1,000 requests in histogram buckets (bounds every 5 ms up to
  100 ms, then 250 ms, 500 ms, 1 s), not from the true distribution. One look per
  interval here: the controller's faster looks only add evidence.
* **Flagger-style**: each interval, each metric of the canary is compared with an absolute
  threshold (the baseline's true value x (1 + tolerance): 1.5 % errors, p99 48 ms, 2.2 %
  false positives); an interval without canary requests has no value and counts as a
  failed check; rolled back when 5 checks have failed; promoted at 30 intervals otherwise.
* **Kayenta-style**: at a fixed horizon of 30 intervals, a two-sided Mann-Whitney U test
  (normal approximation with tie correction, 98 % confidence) of the canary's 30
  per-interval values against the baseline's, per metric; a metric significantly higher
  for the canary fails it (rollback), else promotion. Intervals without a canary value
  are dropped; a metric with fewer than 3 values left is "no data", which fails it.

The **oracle** is the number of whole intervals a fixed-horizon one-sided test for two
proportions (pooled variance under the null, unpooled under the alternative), told the
effect in advance, needs for 95 % power at alpha = 1 %: on 5xx for error regressions, on
the share of requests slower than the baseline's p99 for latency regressions, on false
positives for the business drift.

Sampling: Poisson counts per interval (requests, errors, latency buckets), canary and
baseline independent given the rates. With over-dispersion ``cv``, each side's 5xx rate is
multiplied, interval by interval and independently per side, by a gamma variable of mean 1
and that coefficient of variation (a noisy node, a bursty client). Regimes with ``onset``
turn bad only after that interval (counted from there); regimes with several ``shares``
change the canary's share at each step (ours at its own advances, the others every 10
intervals). The per-interval p99 a Flagger- or Kayenta-style judge reads is the lognormal
quantile plus its asymptotic sampling noise (``sqrt(p (1 - p) / n) / f(x_p)``), which is
what a histogram_quantile over an interval approximates.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from analysis import sequential_check
from analysis.assess import Evidence, Judgement, assess, evaluation, step_outcome
from analysis.sequential import (
    HARM_FRACTION,
    Counts,
    ErrorRateTest,
    LatencyTest,
    SequentialState,
    at_step,
    fixed_horizon_power,
)
from analysis.types import CheckDefinition, CheckEvaluation, CheckMemory, Reading

INTERVAL_SECONDS = 30.0
CANARY_SHARE = 0.10
BASE_ERROR = 0.01
BASE_P99 = 0.040
SIGMA = 0.5
MU = math.log(BASE_P99) - 2.326348 * SIGMA
BASE_FPR = 0.02
LEGIT = 0.99  # share of requests that are legitimate transactions (fraud prevalence 1 %)
TOLERANCE = {"error": 0.5, "latency": 0.2, "business": 0.1}
FALSE_ROLLBACK, FALSE_PROMOTION = 0.01, 0.05
MIN_SAMPLES = 100
STEPS, HOLD_INTERVALS = 3, 10
MIN_INTERVALS, MAX_INTERVALS = STEPS * HOLD_INTERVALS, 90
FLAGGER_THRESHOLD = 5
KAYENTA_HORIZON = 30
KAYENTA_CONFIDENCE = 0.98
TRAFFIC = {"low": 70.0, "reference": 200.0, "high": 1000.0}
JUDGES = ("ours", "flagger", "kayenta")
BOUNDS = (*(0.005 * i for i in range(1, 21)), 0.25, 0.5, 1.0, math.inf)
"""The latency histogram's bucket bounds (seconds)."""
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Regime:
    name: str
    kind: str  # healthy | error | latency | business | zero | resets
    factor: float = 1.0  # error-rate ratio, latency scale, or false-positive ratio
    traffic: str = "reference"
    # Canary and baseline scraped at different moments, with looks shorter than the scrape
    # interval: our judge sees each interval as a canary-only look, then a baseline-only one.
    phased: bool = False
    cv: float = 0.0  # over-dispersion of each side's 5xx rate between intervals
    onset: int = 0  # the effect begins after this interval (0: from the start)
    onset_step: int = 0  # ... or when the canary reaches this step (ours: at its advance)
    shares: tuple[float, ...] = (CANARY_SHARE,) * STEPS  # the canary's share per step
    table: str = "main"  # main | dispersion | onset | onset-looks | curve
    # Looks per interval for our judge (6: the controller's default 5 s look period); the
    # other judges see whole intervals and are not run when it is above 1.
    looks: int = 1

    @property
    def regression(self) -> bool:
        return self.kind in {"error", "latency", "business"}

    @property
    def beyond(self) -> bool:
        """Beyond the tolerance: a promotion is a false promotion."""
        return self.regression and self.factor > 1 + TOLERANCE[self.kind]


def regimes(curve: bool = True) -> list[Regime]:
    out: list[Regime] = []
    for traffic in TRAFFIC:
        out.append(Regime("healthy", "healthy", traffic=traffic))
        for f in (1.5, 2.0, 5.0):
            out.append(Regime(f"5xx x{f:g}", "error", f, traffic))
        for f in (1.2, 1.5, 3.0):
            out.append(Regime(f"p99 +{(f - 1) * 100:.0f}%", "latency", f, traffic))
        out.append(Regime("false positives +25%", "business", 1.25, traffic))
    out.append(Regime("healthy, scrapes out of phase", "healthy", phased=True))
    out.append(Regime("5xx x2, scrapes out of phase", "error", 2.0, phased=True))
    out.append(Regime("zero canary traffic", "zero"))
    out.append(Regime("counter resets (healthy)", "resets"))
    for cv in (0.1, 0.3, 0.5):
        for traffic in TRAFFIC:
            out.append(Regime(f"healthy, 5xx CV {cv:g}", "healthy", traffic=traffic, cv=cv,
                              table="dispersion"))  # fmt: skip
            out.append(Regime(f"5xx x2, CV {cv:g}", "error", 2.0, traffic, cv=cv,
                              table="dispersion"))  # fmt: skip
    for traffic in ("reference", "high"):
        out.append(Regime("5xx x2 from step 2 (10/25/50 %)", "error", 2.0, traffic,
                          onset_step=2, shares=(0.10, 0.25, 0.50), table="onset"))  # fmt: skip
        out.append(Regime("5xx x2 from step 3 (10/25/50 %)", "error", 2.0, traffic,
                          onset_step=3, shares=(0.10, 0.25, 0.50), table="onset"))  # fmt: skip
        out.append(Regime("5xx x2 after interval 20, constant 10 %", "error", 2.0, traffic,
                          onset=20, table="onset"))  # fmt: skip
    out += [replace(r, table="onset-looks", looks=LOOKS) for r in out if r.table == "onset"]
    if curve:
        for f in (1.0, 1.1, 1.2, 1.25, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0):
            kind = "error" if f > 1 else "healthy"
            out.append(Regime(f"5xx x{f:g}", kind, f, "high", table="curve"))
    return out


# --- sampling -------------------------------------------------------------------------------


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def slower(threshold: float, scale: float) -> float:
    """P(latency > threshold) for the lognormal scaled by ``scale``."""
    return 1 - _phi((math.log(threshold / scale) - MU) / SIGMA)


def quantile(q: float, scale: float) -> float:
    z = statistics.NormalDist().inv_cdf(q)
    return scale * math.exp(MU + SIGMA * z)


_BUCKET_SHARES: dict[float, tuple[float, ...]] = {}


def _bucket_shares(scale: float) -> tuple[float, ...]:
    if scale not in _BUCKET_SHARES:
        below = [1 - slower(b, scale) if math.isfinite(b) else 1.0 for b in BOUNDS]
        _BUCKET_SHARES[scale] = tuple(b - a for a, b in zip([0.0, *below[:-1]], below,
                                                               strict=True))  # fmt: skip
    return _BUCKET_SHARES[scale]


@dataclass(frozen=True)
class Side:
    requests: int
    errors: int
    p99: float | None  # the interval's p99 as an exporter's histogram would give it
    legit: int
    false_positives: int
    buckets: tuple[tuple[float, float], ...] = ()  # cumulative latency histogram


def _histogram(rng: random.Random, n: int, scale: float) -> tuple[tuple[float, float], ...]:
    out, total = [], 0.0
    for bound, share in zip(BOUNDS, _bucket_shares(scale), strict=True):
        total += poisson(rng, n * share)
        out.append((bound, total))
    return tuple(out)


def sample_side(rng: random.Random, n_mean: float, error: float, scale: float, fpr: float,
                *, histogram: bool = True) -> Side:  # fmt: skip
    n = poisson(rng, n_mean)
    errors = poisson(rng, n * error)
    p99: float | None = None
    if n > 0:
        x = quantile(0.99, scale)
        density = (
            math.exp(-((math.log(x / scale) - MU) ** 2) / (2 * SIGMA**2))
            / (x / scale * SIGMA * math.sqrt(2 * math.pi))
            / scale
        )
        p99 = max(x + rng.gauss(0, math.sqrt(0.99 * 0.01 / n) / density), 0.0)
    legit = poisson(rng, n * LEGIT)
    buckets = _histogram(rng, n, scale) if histogram else ()
    return Side(n, min(errors, n), p99, legit, min(poisson(rng, legit * fpr), legit), buckets)


LOOKS = 6
"""Looks per 30 s interval in the ``onset-looks`` table: the controller's default 5 s look
period."""


class Stream:
    """The traffic of one simulated rollout. ``interval(k, share, bad)`` is the ``k``-th
    interval (from 1) at the canary share ``share``, with the regression in force or not;
    its randomness depends only on the rollout and ``k``, so judges that see the same
    share and state see the same data."""

    def __init__(self, regime: Regime, seed: str) -> None:
        self.regime = regime
        self.seed = seed
        rng = random.Random(f"{seed}/resets")
        self.resets: set[int] = (
            set(rng.sample(range(1, MAX_INTERVALS + 1), 2)) if regime.kind == "resets" else set()
        )
        self._cache: dict[tuple[int, float, bool], tuple[Side, Side]] = {}
        # The interval after which our judge's rollout met the effect (it sets this: its
        # steps need not follow the fixed schedule the other judges see).
        self.met: int | None = None

    def interval(self, k: int, share: float, bad: bool) -> tuple[Side, Side]:
        key = (k, share, bad)
        if key not in self._cache:
            self._cache[key] = self._draw(k, share, bad)
        return self._cache[key]

    def _canary(self, bad: bool) -> tuple[float, float, float]:
        """The canary's 5xx rate, latency scale and false-positive rate, with the regression
        in force or not."""
        regime = self.regime
        factor = regime.factor if bad else 1.0
        return (
            BASE_ERROR * (factor if regime.kind == "error" else 1),
            factor if regime.kind == "latency" else 1.0,
            BASE_FPR * (factor if regime.kind == "business" else 1),
        )

    def _draw(self, k: int, share: float, bad: bool) -> tuple[Side, Side]:
        regime = self.regime
        rng = random.Random(f"{self.seed}/{k}")
        rate = TRAFFIC[regime.traffic] * INTERVAL_SECONDS
        error, scale, fpr = self._canary(bad)
        noise_c = noise_b = 1.0
        if regime.cv > 0:
            shape = 1 / regime.cv**2
            noise_c, noise_b = (
                rng.gammavariate(shape, 1 / shape),
                rng.gammavariate(shape, 1 / shape),
            )
        canary_share = 0.0 if regime.kind == "zero" else share
        canary = sample_side(rng, rate * canary_share, error * noise_c, scale, fpr)
        baseline = sample_side(rng, rate * (1 - share), BASE_ERROR * noise_b, 1.0, BASE_FPR)
        if k in self.resets:  # increase() over a restart loses part of the canary's counts
            keep = rng.random()
            canary = replace(
                canary,
                requests=round(canary.requests * keep),
                errors=round(canary.errors * keep),
                legit=round(canary.legit * keep),
                false_positives=round(canary.false_positives * keep),
                buckets=tuple((le, round(c * keep)) for le, c in canary.buckets),
            )
        return canary, baseline

    def looks(self, k: int, share: float, bad: bool) -> list[tuple[Side, Side]]:
        """The ``k``-th interval as ``regime.looks`` shorter looks, each drawn on its own
        (Poisson regimes only: no over-dispersion, resets or zero traffic)."""
        regime = self.regime
        if regime.looks == 1:
            return [self.interval(k, share, bad)]
        rng = random.Random(f"{self.seed}/{k}/looks")
        rate = TRAFFIC[regime.traffic] * INTERVAL_SECONDS / regime.looks
        error, scale, fpr = self._canary(bad)
        return [
            (
                sample_side(rng, rate * share, error, scale, fpr),
                sample_side(rng, rate * (1 - share), BASE_ERROR, 1.0, BASE_FPR),
            )
            for _ in range(regime.looks)
        ]

    def bad(self, k: int, step: int) -> bool:
        regime = self.regime
        if regime.onset_step:
            return step >= regime.onset_step
        return k > regime.onset

    def fixed(self) -> list[tuple[Side, Side]]:
        """The intervals on the fixed schedule (a step every ``HOLD_INTERVALS``)."""
        out = []
        for k in range(1, MAX_INTERVALS + 1):
            step = min((k - 1) // HOLD_INTERVALS, STEPS - 1)
            out.append(self.interval(k, self.regime.shares[step], self.bad(k, step + 1)))
        return out


# --- judges ---------------------------------------------------------------------------------

Decision = tuple[str, int]  # ("rollback" | "promote" | "inconclusive", interval)
NOBODY = Side(0, 0, None, 0, 0, ((math.inf, 0.0),))


def _check(name: str, builtin: str | None, tolerance: float, alpha: float) -> CheckDefinition:
    counted = builtin is None
    return CheckDefinition(
        name=name,
        builtin=builtin,
        query=None,
        direction="lowerIsBetter",
        relative_tolerance=tolerance,
        min_samples=MIN_SAMPLES,
        alpha_fail=alpha,
        alpha_pass=FALSE_PROMOTION,
        events="fp" if counted else None,
        requests="legit" if counted else None,
    )


def _checks(business: bool) -> list[CheckDefinition]:
    alpha = FALSE_ROLLBACK / (3 if business else 2)  # as the engine splits the budget
    checks = [
        _check("error-rate", "error-rate", TOLERANCE["error"], alpha),
        _check("latency-p99", "latency-p99", TOLERANCE["latency"], alpha),
    ]
    if business:
        checks.append(_check("false-positives", None, TOLERANCE["business"], alpha))
    return checks


def _update(check: CheckDefinition, state: SequentialState, c: Side, b: Side) -> SequentialState:
    test = sequential_check.test_for(check, block_looks=1)  # one look per interval
    if isinstance(test, LatencyTest):
        return test.update(state, c.buckets or NOBODY.buckets, b.buckets or NOBODY.buckets)
    assert isinstance(test, ErrorRateTest)
    if check.builtin == "error-rate":
        return test.update(state, Counts(c.requests, c.errors, b.requests, b.errors))
    return test.update(state, Counts(c.legit, c.false_positives, b.legit, b.false_positives))


def _reading(check: CheckDefinition, state: SequentialState, c: Side, b: Side) -> Reading:
    """What the controller shows: the interval's values (None without requests)."""
    if check.builtin == "error-rate":
        values = [s.errors / s.requests if s.requests else None for s in (c, b)]
    elif check.builtin == "latency-p99":
        values = [s.p99 for s in (c, b)]
    else:
        values = [s.false_positives / s.legit if s.legit else None for s in (c, b)]
    return Reading(values[0], values[1], round(state.canary_requests),
                   round(state.baseline_requests))  # fmt: skip


def _evaluate(check: CheckDefinition, state: SequentialState, memory: CheckMemory,
              reading: Reading, grace: bool,
              at: datetime) -> tuple[CheckEvaluation, CheckMemory]:  # fmt: skip
    """One check's evaluation as the controller's runner makes it."""

    def judge(c: CheckDefinition, r: Reading, _unit: object) -> Judgement:
        return sequential_check.judge(c, state, r, canary_rate=None)

    assessment = assess(check, reading, memory, grace=grace, judge=judge)
    done = evaluation(check, reading, assessment, evaluated_at=at, evidence=Evidence())
    return done, assessment.memory


def ours(regime: Regime, stream: Stream, rng: random.Random) -> Decision:
    checks = _checks(regime.kind == "business")
    states = {c.name: SequentialState() for c in checks}
    memory = {c.name: CheckMemory() for c in checks}
    step, step_started = 1, 0
    for k in range(1, MAX_INTERVALS + 1):
        share = regime.shares[step - 1]
        bad = stream.bad(k, step)
        if bad and stream.met is None:
            stream.met = k - 1
        if regime.looks > 1:
            looks = stream.looks(k, share, bad)
            whole_c, whole_b = looks[-1]  # what the reading shows: the latest look
        else:
            whole_c, whole_b = stream.interval(k, share, bad)
            looks = (
                [(whole_c, NOBODY), (NOBODY, whole_b)] if regime.phased else [(whole_c, whole_b)]
            )
        for check in checks:
            state = at_step(states[check.name], step)
            for c, b in looks:
                state = _update(check, state, c, b)
            states[check.name] = state
        at = EPOCH + timedelta(seconds=k * INTERVAL_SECONDS)
        grace = k - step_started < HOLD_INTERVALS
        evaluations = []
        for check in checks:
            reading = _reading(check, states[check.name], whole_c, whole_b)
            done, memory[check.name] = _evaluate(check, states[check.name], memory[check.name],
                                                 reading, grace, at)  # fmt: skip
            evaluations.append(done)
        action = step_outcome(evaluations).action
        if action == "rollback":
            return "rollback", k
        if action == "pause":
            return "inconclusive", k
        if action == "advance" and not grace:
            if step == STEPS:
                return "promote", k
            step, step_started = step + 1, k
    return "inconclusive", MAX_INTERVALS


def flagger(regime: Regime, data: list[tuple[Side, Side]], rng: random.Random) -> Decision:
    failed = 0
    limits = {
        "error": BASE_ERROR * (1 + TOLERANCE["error"]),
        "latency": BASE_P99 * (1 + TOLERANCE["latency"]),
        "business": BASE_FPR * (1 + TOLERANCE["business"]),
    }
    for k, (c, _b) in enumerate(data, start=1):
        values: dict[str, float | None] = {
            "error": c.errors / c.requests if c.requests else None,
            "latency": c.p99,
        }
        if regime.kind == "business":
            values["business"] = c.false_positives / c.legit if c.legit else None
        for name, value in values.items():
            if value is None or value > limits[name]:
                failed += 1  # "no values" is a failed check
        if failed >= FLAGGER_THRESHOLD:
            return "rollback", k
        if k >= MIN_INTERVALS:
            return "promote", k
    return "inconclusive", MAX_INTERVALS


def mann_whitney_z(canary: Sequence[float], baseline: Sequence[float]) -> float:
    """The normal-approximation z of U for "canary > baseline", with tie correction."""
    n1, n2 = len(canary), len(baseline)
    pooled = sorted([(v, 0) for v in canary] + [(v, 1) for v in baseline])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for m in range(i, j + 1):
            ranks[m] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 0.0
    return (u - n1 * n2 / 2) / math.sqrt(variance)


def kayenta(regime: Regime, data: list[tuple[Side, Side]], rng: random.Random) -> Decision:
    window = data[:KAYENTA_HORIZON]
    critical = statistics.NormalDist().inv_cdf(1 - (1 - KAYENTA_CONFIDENCE) / 2)
    metrics = ["error", "latency"] + (["business"] if regime.kind == "business" else [])
    for metric in metrics:
        series: list[list[float]] = [[], []]
        for pair in window:
            for index, side in enumerate(pair):
                value = _value(metric, side)
                if value is not None:
                    series[index].append(value)
        if len(series[0]) < 3 or len(series[1]) < 3:
            return "rollback", KAYENTA_HORIZON  # no data fails the metric
        if mann_whitney_z(series[0], series[1]) > critical:
            return "rollback", KAYENTA_HORIZON
    return "promote", KAYENTA_HORIZON


def _value(metric: str, side: Side) -> float | None:
    if metric == "error":
        return side.errors / side.requests if side.requests else None
    if metric == "latency":
        return side.p99
    return side.false_positives / side.legit if side.legit else None


# --- the oracle -----------------------------------------------------------------------------


def oracle(regime: Regime) -> int | None:
    """Intervals a fixed-horizon one-sided test told the effect needs for 95 % power at
    alpha 1 %, against the null our rollback disproves (the canary within
    ``HARM_FRACTION`` of the tolerance), at the canary's share when the effect is on."""
    if not regime.regression or regime.factor <= 1 + HARM_FRACTION * TOLERANCE[regime.kind]:
        return None
    share = regime.shares[max(regime.onset_step, 1) - 1]
    rate = TRAFFIC[regime.traffic] * INTERVAL_SECONDS
    per_c, per_b = rate * share, rate * (1 - share)
    null = 1 + HARM_FRACTION * TOLERANCE[regime.kind]
    if regime.kind == "error":
        p_b, p_c = BASE_ERROR * null, BASE_ERROR * regime.factor
    elif regime.kind == "latency":
        p_b, p_c = 0.01, slower(BASE_P99 * null, regime.factor)
    else:
        p_b, p_c = BASE_FPR * null, BASE_FPR * regime.factor
        per_c, per_b = per_c * LEGIT, per_b * LEGIT
    for k in range(1, 10_000):
        if fixed_horizon_power(per_c * k, per_b * k, p_b, p_c, 0.01) >= 0.95:
            return k
    return None


# --- running and reporting ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    regime: Regime
    judge: str
    decisions: tuple[Decision, ...]
    onsets: tuple[int, ...] = ()  # per rollout, the interval the effect began after

    def share(self, kind: str) -> float:
        return sum(d == kind for d, _ in self.decisions) / len(self.decisions)

    def times(self, kind: str) -> list[int]:
        """Intervals to ``kind``, counted from the onset of the effect."""
        onsets = self.onsets or (0,) * len(self.decisions)
        return sorted(k - o for (d, k), o in zip(self.decisions, onsets, strict=True)
                      if d == kind)  # fmt: skip


def run_regime(args: tuple[Regime, int, int]) -> list[Cell]:
    regime, reps, seed = args
    results: dict[str, list[Decision]] = {j: [] for j in JUDGES}
    onsets: dict[str, list[int]] = {j: [] for j in JUDGES}
    for rep in range(reps):
        stream = Stream(regime, f"{seed}/{regime.name}/{regime.traffic}/{rep}")
        rng = random.Random(f"{seed}/{regime.name}/{regime.traffic}/{rep}/judges")
        fixed = stream.fixed()
        ours_decision = ours(regime, stream, random.Random(rng.random()))
        results["ours"].append(ours_decision)
        onsets["ours"].append(regime.onset if stream.met is None else stream.met)
        for name, judge in (("flagger", flagger), ("kayenta", kayenta)):
            if regime.looks > 1:
                continue  # they judge whole intervals: the onset table has them
            results[name].append(judge(regime, fixed, random.Random(rng.random())))
            onsets[name].append((regime.onset_step - 1) * HOLD_INTERVALS
                                if regime.onset_step else regime.onset)  # fmt: skip
    return [Cell(regime, j, tuple(results[j]), tuple(onsets[j])) for j in JUDGES if results[j]]


def _median(values: list[int]) -> str:
    return f"{statistics.median(values):g}" if values else "–"


def _p95(values: list[int]) -> str:
    if not values:
        return "–"
    return f"{values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]:g}"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


_TITLES = {
    "main": "Main regimes (canary at 10 % throughout)",
    "dispersion": "Over-dispersion: each side's 5xx rate varies between intervals (gamma, "
    "coefficient of variation CV), independently",
    "onset": "Late onset: the canary turns bad at a later step, or after it was ruled "
    "non-inferior at a constant split (times counted from the onset)",
    "onset-looks": "Late onset with the controller's 5 s looks (six per interval, each drawn "
    "on its own; decisions at each interval's end; ours only)",
    "curve": "Rollback rate against the true 5xx ratio (high traffic, tolerance +50 %, "
    "rollback needs proof beyond +25 %)",
}


def report(cells: list[Cell], reps: int, seed: int, seconds: float, curve_reps: int = 0,
           looks_reps: int = 0) -> str:  # fmt: skip
    lines = [
        "# Judgement benchmark",
        "",
        "`make bench-judgement` (`python -m bench.judgement "
        f"--reps {reps}{f' --curve-reps {curve_reps}' if curve_reps else ''}"
        f"{f' --looks-reps {looks_reps}' if looks_reps else ''} --seed {seed}`), "
        f"{datetime.now(UTC).date().isoformat()}, {reps} simulated rollouts per row and judge"
        + (f" ({curve_reps} for the effect curve)" if curve_reps else "")
        + (f" ({looks_reps} with 5 s looks)" if looks_reps else "")
        + f", {seconds:.0f} s on 2 cores. Baseline 1 % 5xx, lognormal latency with p99 "
        "40 ms; tolerances +50 % (5xx), +20 % (p99), +10 % (false positives); three steps "
        "held at least 10 intervals (30 s) each, at most 90 intervals in all. Decisions: "
        "rollback / promote / "
        "inconclusive (paused for a human); times in intervals as median / p95; "
        '"x oracle" is the median time to roll back over the oracle\'s intervals '
        "(fixed-horizon test told the effect, 95 % power at alpha 1 %, against the null a "
        "rollback disproves: the canary within half the tolerance).",
    ]
    by = {(c.regime, c.judge): c for c in cells}
    for table, title in _TITLES.items():
        rows = [r for r in dict.fromkeys(c.regime for c in cells) if r.table == table]
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| traffic | regime | oracle | ours: rollback / promote / paused | ours: time "
            "median / p95 (x oracle) | Flagger-style: rollback / promote | Flagger time | "
            "Kayenta-style: rollback / promote | Kayenta time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for regime in rows:
            o = oracle(regime)
            row = [f"{regime.traffic} ({TRAFFIC[regime.traffic]:g} req/s)", regime.name,
                   str(o) if o else "–"]  # fmt: skip
            for judge in JUDGES:
                if (regime, judge) not in by:
                    row += ["–", "–"]
                    continue
                cell = by[(regime, judge)]
                decisions = f"{_pct(cell.share('rollback'))} / {_pct(cell.share('promote'))}"
                if judge == "ours":
                    decisions += f" / {_pct(cell.share('inconclusive'))}"
                kind = "rollback" if regime.regression else "promote"
                times = cell.times(kind)
                shown = f"{_median(times)} / {_p95(times)}"
                if regime.regression and o and cell.times("rollback"):
                    shown += f" ({statistics.median(cell.times('rollback')) / o:.2f}x)"
                row += [decisions, shown]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Findings", "", "What the tables show, the misses against the targets and "
              'why: the README, "How a canary is judged".']  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--curve-reps", type=int, default=0,
                        help="rollouts per row of the effect curve (default: --reps)")  # fmt: skip
    parser.add_argument("--looks-reps", type=int, default=0,
                        help="rollouts per row with 5 s looks (default: --reps)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("bench/results/judgement.md"))
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args(argv)
    started = time.monotonic()
    reps: int = options.reps
    curve_reps: int = options.curve_reps or reps
    looks_reps: int = options.looks_reps or reps

    def reps_for(regime: Regime) -> int:
        return {"curve": curve_reps, "onset-looks": looks_reps}.get(regime.table, reps)

    jobs = [(r, reps_for(r), options.seed) for r in regimes()]
    if options.workers > 1:
        with multiprocessing.Pool(options.workers) as pool:
            chunks = pool.map(run_regime, jobs, chunksize=1)
    else:
        chunks = [run_regime(job) for job in jobs]
    cells = [cell for chunk in chunks for cell in chunk]
    text = report(cells, options.reps, options.seed, time.monotonic() - started,
                  curve_reps if curve_reps != options.reps else 0,
                  looks_reps if looks_reps != options.reps else 0)  # fmt: skip
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
