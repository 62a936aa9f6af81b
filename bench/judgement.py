"""Decision quality of canary judges on synthetic streams with known ground truth.

``make bench-judgement`` (``python -m bench.judgement``). Three judges see the same
simulated canary and baseline counts, interval by interval (30 s, canary at 10 % of the
traffic, baseline 1 % errors and a lognormal latency with p99 40 ms):

* **ours**: the product's sequential tests (``analysis.sequential``), as the controller
  uses them: error rate (tolerance +50 %) and p99 (tolerance +20 %), plus a business rate
  (false positives over legitimate transactions, tolerance +10 %) where the stream has
  one; the false-rollback budget of 1 % split among the gating checks, the false-promotion
  budget 5 % per check. Rolled back at the first look that proves a regression beyond the
  tolerance; promoted once every check has ruled out a regression beyond its tolerance and
  the rollout's minimum time (3 steps x 5 min = 30 intervals) has passed; otherwise
  inconclusive (paused for a human) at 90 intervals. One look per interval here: the
  controller's faster looks only add evidence, and the tests stay valid under them.
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

Sampling: independent Poisson counts per interval (requests, errors, latency bins), so the
canary and the baseline are independent given the rates. The per-interval p99 a Flagger-
or Kayenta-style judge reads is the lognormal quantile plus its asymptotic sampling noise
(``sqrt(p (1 - p) / n) / f(x_p)``), which is what a histogram_quantile over an interval
approximates.
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
from datetime import UTC, datetime
from pathlib import Path

from analysis.sequential import (
    Counts,
    ErrorRateTest,
    LatencyTest,
    SequentialState,
    fixed_horizon_power,
)

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
MIN_INTERVALS, MAX_INTERVALS = 30, 90
FLAGGER_THRESHOLD = 5
KAYENTA_HORIZON = 30
KAYENTA_CONFIDENCE = 0.98
TRAFFIC = {"low": 70.0, "reference": 200.0, "high": 1000.0}
JUDGES = ("ours", "flagger", "kayenta")


@dataclass(frozen=True)
class Regime:
    name: str
    kind: str  # healthy | error | latency | business | zero | resets
    factor: float = 1.0  # error-rate ratio, latency scale, or false-positive ratio
    traffic: str = "reference"
    # Canary and baseline scraped at different moments, with looks shorter than the scrape
    # interval: our judge sees each interval as a canary-only look, then a baseline-only one.
    phased: bool = False

    @property
    def regression(self) -> bool:
        return self.kind in {"error", "latency", "business"}


def regimes() -> list[Regime]:
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


@dataclass(frozen=True)
class Side:
    requests: int
    errors: int
    p99: float | None  # the interval's p99 as an exporter's histogram would give it
    legit: int
    false_positives: int


def sample_side(rng: random.Random, n_mean: float, error: float, scale: float,
                fpr: float) -> Side:  # fmt: skip
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
    return Side(n, min(errors, n), p99, legit, min(poisson(rng, legit * fpr), legit))


def stream(regime: Regime, rng: random.Random) -> list[tuple[Side, Side]]:
    rate = TRAFFIC[regime.traffic] * INTERVAL_SECONDS
    error = BASE_ERROR * (regime.factor if regime.kind == "error" else 1)
    scale = regime.factor if regime.kind == "latency" else 1.0
    fpr = BASE_FPR * (regime.factor if regime.kind == "business" else 1)
    canary_share = 0.0 if regime.kind == "zero" else CANARY_SHARE
    resets = set(rng.sample(range(MAX_INTERVALS), 2)) if regime.kind == "resets" else set()
    out = []
    for k in range(MAX_INTERVALS):
        canary = sample_side(rng, rate * canary_share, error, scale, fpr)
        baseline = sample_side(rng, rate * (1 - CANARY_SHARE), BASE_ERROR, 1.0, BASE_FPR)
        if k in resets:  # increase() over a restart loses part of the canary's counts
            keep = rng.random()
            canary = replace(
                canary,
                requests=round(canary.requests * keep),
                errors=round(canary.errors * keep),
                legit=round(canary.legit * keep),
                false_positives=round(canary.false_positives * keep),
            )
        out.append((canary, baseline))
    return out


# --- judges ---------------------------------------------------------------------------------

Decision = tuple[str, int]  # ("rollback" | "promote" | "inconclusive", interval)


def ours(regime: Regime, data: list[tuple[Side, Side]], rng: random.Random) -> Decision:
    business = regime.kind == "business"
    gating = 3 if business else 2
    alpha = FALSE_ROLLBACK / gating
    errors = ErrorRateTest(TOLERANCE["error"], alpha, FALSE_PROMOTION)
    latency = LatencyTest(TOLERANCE["latency"], alpha, FALSE_PROMOTION)
    fprs = ErrorRateTest(TOLERANCE["business"], alpha, FALSE_PROMOTION, label="false positives")
    # The reference is fixed from the baseline's first 1,000 requests (not used as evidence).
    sample = sorted(rng.lognormvariate(MU, SIGMA) for _ in range(1000))
    reference = sample[989]
    states = {"error": SequentialState(), "latency": SequentialState(reference=reference)}
    if business:
        states["business"] = SequentialState()
    tolerated = reference * (1 + TOLERANCE["latency"])
    nobody = Side(0, 0, None, 0, 0)
    empty = ((reference, 0.0), (tolerated, 0.0), (math.inf, 0.0))
    for k, (whole_c, whole_b) in enumerate(data, start=1):
        # exact counts above the reference and the tolerated p99, as 3-bucket histograms
        whole_c_hist = _resample(whole_c, reference, tolerated, 1.0 if regime.kind != "latency"
                                 else regime.factor, rng)  # fmt: skip
        whole_b_hist = _resample(whole_b, reference, tolerated, 1.0, rng)
        looks = (
            [(whole_c, nobody, whole_c_hist, empty), (nobody, whole_b, empty, whole_b_hist)]
            if regime.phased
            else [(whole_c, whole_b, whole_c_hist, whole_b_hist)]
        )
        for c, b, c_hist, b_hist in looks:
            counts = Counts(c.requests, c.errors, b.requests, b.errors)
            states["error"] = errors.update(states["error"], counts)
            states["latency"] = latency.update(states["latency"], c_hist, b_hist)
            if business:
                states["business"] = fprs.update(states["business"], Counts(
                    c.legit, c.false_positives, b.legit, b.false_positives))  # fmt: skip
        tests: dict[str, ErrorRateTest | LatencyTest] = {
            "error": errors,
            "latency": latency,
            "business": fprs,
        }
        decisions = [tests[name].decide(state).kind for name, state in states.items()]
        if "regression" in decisions:
            return "rollback", k
        if all(d == "non-inferior" for d in decisions) and k >= MIN_INTERVALS:
            return "promote", k
    return "inconclusive", MAX_INTERVALS


def _resample(side: Side, reference: float, tolerated: float, scale: float,
              rng: random.Random) -> tuple[tuple[float, float], ...]:  # fmt: skip
    """The side's latency counts as a histogram with bounds at the two thresholds."""
    above_ref = slower(reference, scale)
    above_tol = slower(tolerated, scale)
    n = side.requests
    slow_tol = min(poisson(rng, n * above_tol), n)
    slow_ref = min(slow_tol + poisson(rng, n * max(above_ref - above_tol, 0.0)), n)
    return ((reference, float(n - slow_ref)), (tolerated, float(n - slow_tol)),
            (math.inf, float(n)))  # fmt: skip


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
    if not regime.regression:
        return None
    rate = TRAFFIC[regime.traffic] * INTERVAL_SECONDS
    if regime.kind == "error":
        p_b, p_c = BASE_ERROR, BASE_ERROR * regime.factor
        per_c, per_b = rate * CANARY_SHARE, rate * (1 - CANARY_SHARE)
    elif regime.kind == "latency":
        p_b, p_c = 0.01, slower(BASE_P99, regime.factor)
        per_c, per_b = rate * CANARY_SHARE, rate * (1 - CANARY_SHARE)
    else:
        p_b, p_c = BASE_FPR, BASE_FPR * regime.factor
        per_c, per_b = rate * CANARY_SHARE * LEGIT, rate * (1 - CANARY_SHARE) * LEGIT
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

    def share(self, kind: str) -> float:
        return sum(d == kind for d, _ in self.decisions) / len(self.decisions)

    def times(self, kind: str) -> list[int]:
        return sorted(k for d, k in self.decisions if d == kind)


def run_regime(args: tuple[Regime, int, int]) -> list[Cell]:
    regime, reps, seed = args
    results: dict[str, list[Decision]] = {j: [] for j in JUDGES}
    judges = {"ours": ours, "flagger": flagger, "kayenta": kayenta}
    for rep in range(reps):
        rng = random.Random(f"{seed}/{regime.name}/{regime.traffic}/{rep}")
        data = stream(regime, rng)
        for name, judge in judges.items():
            results[name].append(judge(regime, data, random.Random(rng.random())))
    return [Cell(regime, j, tuple(results[j])) for j in JUDGES]


def _median(values: list[int]) -> str:
    return f"{statistics.median(values):g}" if values else "–"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def report(cells: list[Cell], reps: int, seed: int, seconds: float) -> str:
    lines = [
        "# Judgement benchmark",
        "",
        f"`make bench-judgement` (`python -m bench.judgement --reps {reps} --seed {seed}`), "
        f"{datetime.now(UTC).date().isoformat()}, {reps} simulated rollouts per row and judge, "
        f"{seconds:.0f} s on 2 cores. Canary at 10 %, 30 s intervals, baseline 1 % 5xx, "
        "lognormal latency with p99 40 ms; tolerances +50 % (5xx), +20 % (p99), +10 % "
        "(false positives); rollout minimum 30 intervals, maximum 90. Decisions: "
        "rollback / promote / inconclusive (paused for a human); times are medians in "
        'intervals; "x oracle" is the median time to roll back over the oracle\'s '
        "intervals (fixed-horizon test told the effect, 95 % power at alpha 1 %).",
        "",
        "| traffic | regime | oracle | ours: rollback / promote / paused | ours: time (x oracle) "
        "| Flagger-style: rollback / promote | Flagger time | Kayenta-style: rollback / "
        "promote | Kayenta time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(c.regime, c.judge): c for c in cells}
    for regime in dict.fromkeys(c.regime for c in cells):
        o = oracle(regime)
        row = [f"{regime.traffic} ({TRAFFIC[regime.traffic]:g} req/s)", regime.name,
               str(o) if o else "–"]  # fmt: skip
        for judge in JUDGES:
            cell = by[(regime, judge)]
            decisions = f"{_pct(cell.share('rollback'))} / {_pct(cell.share('promote'))}"
            if judge == "ours":
                decisions += f" / {_pct(cell.share('inconclusive'))}"
            kind = "rollback" if regime.regression else "promote"
            median = _median(cell.times(kind))
            if regime.regression and o and cell.times("rollback"):
                median += f" ({statistics.median(cell.times('rollback')) / o:.2f}x)"
            row += [decisions, median]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("bench/results/judgement.md"))
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args(argv)
    started = time.monotonic()
    jobs = [(r, options.reps, options.seed) for r in regimes()]
    if options.workers > 1:
        with multiprocessing.Pool(options.workers) as pool:
            chunks = pool.map(run_regime, jobs)
    else:
        chunks = [run_regime(job) for job in jobs]
    cells = [cell for chunk in chunks for cell in chunk]
    text = report(cells, options.reps, options.seed, time.monotonic() - started)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
