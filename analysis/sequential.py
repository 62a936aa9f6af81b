"""Anytime-valid sequential tests of a canary against its baseline.

PURE: numbers in, numbers out; no I/O, no clock. ``analysis/README.md`` explains the
method and its guarantees; in short:

* Both revisions serve at the same time, so every look gives, per side, a number of
  requests (the exposure) and a number of *events* among them: 5xx responses for the
  error rate, requests slower than a latency threshold for the p99.
* Conditional on the events of one look, each event is the canary's with probability
  ``pi(rho) = n_c * rho / (n_c * rho + n_b)``, where ``rho`` is the ratio of the canary's
  event rate to the baseline's. This holds whatever the traffic does over time (Poisson
  counts, as in Lindon, Sanden & Shirikian, KDD 2022) and whatever the split is, so looks
  at different traffic steps multiply.
* Two one-sided tests run on those counts, each a mixture of likelihood ratios over a
  fixed grid of alternatives (a non-negative supermartingale under its null):

  - **harm** (H0: rho <= 1, the canary is no worse): its e-value reaching ``1/alpha_fail``
    proves the canary worse. By Ville's inequality the chance that this *ever* happens to
    a canary that is no worse is at most ``alpha_fail``, however often one looks.
  - **safety** (non-inferiority, H0: the canary is worse than the tolerance): its e-value
    reaching ``1/alpha_pass`` rules out a regression beyond the tolerance; the chance of
    that for a canary beyond the tolerance is at most ``alpha_pass``.

* A regression is declared when the harm test rejects *and* the point estimate is beyond
  the tolerance (a proven but tolerated difference is neither rolled back nor promoted);
  the step may advance when the safety test rejects.

The state of a test is a handful of floats (the accumulated log-likelihood ratio of each
alternative and the running totals), so it is persisted with the rollout and a restarted
controller resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "GRID",
    "Counts",
    "Decision",
    "ErrorRateTest",
    "LatencyTest",
    "RatioTest",
    "SequentialState",
    "count_above",
    "fixed_horizon_power",
    "quantile",
]

Side = Literal["above", "below"]
DecisionKind = Literal["regression", "non-inferior", "continue", "calibrating"]


def _grid(points: int = 32, smallest: float = 0.04, largest: float = 4.6) -> tuple[float, ...]:
    """Distances in log-ratio from a null, spaced geometrically from ``smallest`` (a 4 %
    change) to ``largest`` (a factor of 100)."""
    step = (largest / smallest) ** (1 / (points - 1))
    return tuple(smallest * step**i for i in range(points))


GRID: tuple[float, ...] = _grid()
"""The alternatives of every test, as log-ratio distances from its null, equally weighted.

A discrete mixture of likelihood ratios is a martingale under the null for any fixed
weights; spacing the points geometrically makes the test nearly as fast as one told the
true effect, for any effect between +4 % and x100."""

_LOG_WEIGHT = -math.log(len(GRID))


@dataclass(frozen=True)
class Counts:
    """One look: requests and events per side since the previous look."""

    canary_requests: float
    canary_events: float
    baseline_requests: float
    baseline_events: float

    def __post_init__(self) -> None:
        values = (
            self.canary_requests,
            self.canary_events,
            self.baseline_requests,
            self.baseline_events,
        )
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"counts must be finite and not negative, got {values}")

    @property
    def informative(self) -> bool:
        """Whether this look can move a test: both sides served and some event happened.
        A side with events but no requests is inconsistent and is skipped too."""
        if self.canary_requests <= 0 or self.baseline_requests <= 0:
            return False
        return self.canary_events + self.baseline_events > 0


def _log_lrs(counts: Counts, null: float, side: Side) -> tuple[float, ...]:
    """The log-likelihood ratio of each alternative against ``null`` for one look."""
    if not counts.informative:
        return (0.0,) * len(GRID)
    n_c, n_b = counts.canary_requests, counts.baseline_requests
    k_c, k_b = counts.canary_events, counts.baseline_events

    def logs(rho: float) -> tuple[float, float]:
        # log pi and log (1 - pi) for pi = n_c rho / (n_c rho + n_b), stably.
        a, b = math.log(n_c) + math.log(rho), math.log(n_b)
        top = max(a, b)
        total = top + math.log(math.exp(a - top) + math.exp(b - top))
        return a - total, b - total

    null_in, null_out = logs(null)
    sign = 1.0 if side == "above" else -1.0
    out: list[float] = []
    for distance in GRID:
        alt_in, alt_out = logs(null * math.exp(sign * distance))
        out.append(k_c * (alt_in - null_in) + k_b * (alt_out - null_out))
    return tuple(out)


def _log_mixture(log_lrs: Sequence[float]) -> float:
    """log of the equally weighted mean of exp(log_lrs)."""
    top = max(log_lrs)
    return top + math.log(sum(math.exp(v - top) for v in log_lrs)) + _LOG_WEIGHT


@dataclass(frozen=True)
class RatioTest:
    """One mixture test on the ratio ``rho`` of the canary's event rate to the baseline's.

    ``side="above"``: H0 is ``rho <= null`` and the alternatives lie above it (harm);
    ``"below"``: H0 is ``rho >= null`` with alternatives below (non-inferiority)."""

    null: float
    side: Side
    alpha: float

    def __post_init__(self) -> None:
        if not (self.null > 0 and math.isfinite(self.null)):
            raise ValueError(f"the null ratio must be a positive number, got {self.null}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")

    @property
    def log_threshold(self) -> float:
        return math.log(1 / self.alpha)

    def update(self, log_lrs: Sequence[float], counts: Counts) -> tuple[float, ...]:
        look = _log_lrs(counts, self.null, self.side)
        return tuple(a + b for a, b in zip(log_lrs, look, strict=True))

    @staticmethod
    def log_e_value(log_lrs: Sequence[float]) -> float:
        return _log_mixture(log_lrs)


def _empty() -> tuple[float, ...]:
    return (0.0,) * len(GRID)


@dataclass(frozen=True)
class SequentialState:
    """A check's accumulated evidence: one log-likelihood ratio per alternative of each
    test, the totals of every count, and the latency threshold once it is fixed.

    ``harm_*`` events are what the harm test counts, ``safe_*`` what the safety test
    counts (the same events for the error rate; for latency the canary's requests slower
    than ``(1 + tolerance) * reference`` against the baseline's slower than
    ``reference``)."""

    harm: tuple[float, ...] = field(default_factory=_empty)
    safe: tuple[float, ...] = field(default_factory=_empty)
    canary_requests: float = 0.0
    baseline_requests: float = 0.0
    canary_harm_events: float = 0.0
    baseline_harm_events: float = 0.0
    canary_safe_events: float = 0.0
    baseline_safe_events: float = 0.0
    looks: int = 0
    # Counts not yet given to the tests because one side served nothing since they began:
    # (canary requests, canary harm events, canary safe events, baseline requests,
    # baseline harm events, baseline safe events, looks held), or () when nothing is held.
    pending: tuple[float, ...] = ()
    ruled_out: bool = False  # the safety test has crossed its threshold (it stays crossed)
    reference: float | None = None  # latency only: the threshold in seconds
    calibration: tuple[tuple[float, float], ...] = ()  # latency only: baseline buckets

    def to_json(self) -> dict[str, Any]:
        return {
            "harm": list(self.harm),
            "safe": list(self.safe),
            "canary_requests": self.canary_requests,
            "baseline_requests": self.baseline_requests,
            "canary_harm_events": self.canary_harm_events,
            "baseline_harm_events": self.baseline_harm_events,
            "canary_safe_events": self.canary_safe_events,
            "baseline_safe_events": self.baseline_safe_events,
            "looks": self.looks,
            "pending": list(self.pending),
            "ruled_out": self.ruled_out,
            "reference": self.reference,
            # JSON has no infinity: the +Inf bound is written as Prometheus writes it.
            "calibration": [
                ["+Inf" if math.isinf(le) else le, count] for le, count in self.calibration
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SequentialState:
        harm = tuple(float(v) for v in data.get("harm", ()))
        safe = tuple(float(v) for v in data.get("safe", ()))
        if len(harm) != len(GRID) or len(safe) != len(GRID):
            raise ValueError(
                f"sequential state has {len(harm)}/{len(safe)} alternatives, expected {len(GRID)}"
            )
        pending = tuple(float(v) for v in data.get("pending", ()))
        if len(pending) not in (0, _PENDING_FIELDS):
            raise ValueError(
                f"sequential state has {len(pending)} pending counts, expected "
                f"{_PENDING_FIELDS} or none"
            )
        reference = data.get("reference")
        return cls(
            harm=harm,
            safe=safe,
            canary_requests=float(data.get("canary_requests", 0.0)),
            baseline_requests=float(data.get("baseline_requests", 0.0)),
            canary_harm_events=float(data.get("canary_harm_events", 0.0)),
            baseline_harm_events=float(data.get("baseline_harm_events", 0.0)),
            canary_safe_events=float(data.get("canary_safe_events", 0.0)),
            baseline_safe_events=float(data.get("baseline_safe_events", 0.0)),
            looks=int(data.get("looks", 0)),
            pending=pending,
            ruled_out=bool(data.get("ruled_out", False)),
            reference=None if reference is None else float(reference),
            calibration=tuple(
                (float(le), float(count)) for le, count in data.get("calibration", ())
            ),
        )


@dataclass(frozen=True)
class Decision:
    """What the evidence says now.

    ``estimate`` is the point estimate of the safety test's ratio divided by its null:
    above 1 means the canary looks worse than the tolerance allows. ``harm_log_e`` and
    ``safe_log_e`` are the tests' log e-values, decided at ``harm_log_threshold`` and
    ``safe_log_threshold``. ``requests_to_pass`` estimates how many more canary requests
    the safety test needs at the present estimate (None when it is not heading there)."""

    kind: DecisionKind
    harm_log_e: float
    harm_log_threshold: float
    safe_log_e: float
    safe_log_threshold: float
    estimate: float | None
    canary_requests: float
    baseline_requests: float
    canary_events: float
    baseline_events: float
    requests_to_pass: float | None
    message: str

    @property
    def progress(self) -> float:
        """How far the safety test is towards passing, 0..1."""
        return min(max(self.safe_log_e / self.safe_log_threshold, 0.0), 1.0)


def _ratio_estimate(k_c: float, n_c: float, k_b: float, n_b: float) -> float | None:
    if n_c <= 0 or n_b <= 0:
        return None
    if k_b <= 0:
        return math.inf if k_c > 0 else None
    return (k_c / n_c) / (k_b / n_b)


def _requests_to_pass(state: SequentialState, threshold: float) -> float | None:
    """More canary requests the safety test needs, if its best alternative keeps its
    average gain per canary request so far."""
    if state.canary_requests <= 0:
        return None
    best = max(range(len(GRID)), key=lambda i: state.safe[i])
    gain = state.safe[best]
    if gain <= 0:
        return None
    needed = threshold - _LOG_WEIGHT  # one alternative alone must carry the e-value
    if gain >= needed:
        return 0.0
    per_request = gain / state.canary_requests
    return (needed - gain) / per_request


@dataclass(frozen=True)
class _Pair:
    """The harm and safety tests of one check."""

    harm: RatioTest
    safe: RatioTest

    def decide(self, state: SequentialState, describe: str) -> Decision:
        harm_e = RatioTest.log_e_value(state.harm)
        safe_e = RatioTest.log_e_value(state.safe)
        ratio = _ratio_estimate(
            state.canary_safe_events,
            state.canary_requests,
            state.baseline_safe_events,
            state.baseline_requests,
        )
        estimate = None if ratio is None else ratio / self.safe.null
        beyond = estimate is not None and estimate > 1
        if harm_e >= self.harm.log_threshold and beyond:
            kind: DecisionKind = "regression"
        elif state.ruled_out or safe_e >= self.safe.log_threshold:
            kind = "non-inferior"
        else:
            kind = "continue"
        return Decision(
            kind=kind,
            harm_log_e=harm_e,
            harm_log_threshold=self.harm.log_threshold,
            safe_log_e=safe_e,
            safe_log_threshold=self.safe.log_threshold,
            estimate=estimate,
            canary_requests=state.canary_requests,
            baseline_requests=state.baseline_requests,
            canary_events=state.canary_harm_events,
            baseline_events=state.baseline_harm_events,
            requests_to_pass=None
            if kind != "continue"
            else _requests_to_pass(state, self.safe.log_threshold),
            message=describe,
        )


_PENDING_FIELDS = 7

MAX_HELD_LOOKS = 12
"""How many looks counts may be held back for (see :func:`_accumulate`). With 5 s looks
and a 30 s scrape interval a side moves every sixth look. Older held counts are dropped,
so that the two sides are always compared over nearby times: a baseline that served
alone for minutes (while the canary had no traffic) is not weighed against the canary's
first seconds."""


def _with_pending(pending: tuple[float, ...], harm: Counts, safe: Counts) -> tuple[Counts, Counts]:
    """This look's counts plus the ``pending`` ones held back from earlier looks."""
    if not pending:
        return harm, safe
    n_c, kh_c, ks_c, n_b, kh_b, ks_b, _held = pending
    return (
        Counts(
            n_c + harm.canary_requests,
            kh_c + harm.canary_events,
            n_b + harm.baseline_requests,
            kh_b + harm.baseline_events,
        ),
        Counts(
            n_c + safe.canary_requests,
            ks_c + safe.canary_events,
            n_b + safe.baseline_requests,
            ks_b + safe.baseline_events,
        ),
    )


def _accumulate(state: SequentialState, pair: _Pair, harm: Counts, safe: Counts) -> SequentialState:
    """One more look: both tests updated with their counts, the totals added up. (The
    two count sets share their requests; only the events differ.)

    Canary and baseline are scraped at different moments, so a look shorter than the
    scrape interval often sees only one side move. Such a look says nothing about the
    ratio (the side that served gets every event by construction), and dropping it would
    throw its events away: instead its counts are held back and given to the tests with
    the next look in which the other side has served too, for at most
    :data:`MAX_HELD_LOOKS` looks. Whether a look is held back or dropped depends only on
    the request counts, never on the events, so the tests' guarantees are unchanged."""
    live = state.pending if state.pending and state.pending[-1] < MAX_HELD_LOOKS else ()
    held = live[-1] if live else 0.0
    joint_harm, joint_safe = _with_pending(live, harm, safe)
    if joint_harm.canary_requests > 0 and joint_harm.baseline_requests > 0:
        harm_lrs = pair.harm.update(state.harm, joint_harm)
        safe_lrs = pair.safe.update(state.safe, joint_safe)
        pending: tuple[float, ...] = ()
    elif joint_harm.canary_requests > 0 or joint_harm.baseline_requests > 0:
        harm_lrs, safe_lrs = state.harm, state.safe
        pending = (
            joint_harm.canary_requests,
            joint_harm.canary_events,
            joint_safe.canary_events,
            joint_harm.baseline_requests,
            joint_harm.baseline_events,
            joint_safe.baseline_events,
            held + 1,
        )
    else:  # nobody served: nothing new to hold (stray events without requests are dropped)
        harm_lrs, safe_lrs = state.harm, state.safe
        pending = (*live[:-1], held + 1) if live else ()
    updated = replace(
        state,
        harm=harm_lrs,
        safe=safe_lrs,
        pending=pending,
        canary_requests=state.canary_requests + harm.canary_requests,
        baseline_requests=state.baseline_requests + harm.baseline_requests,
        canary_harm_events=state.canary_harm_events + harm.canary_events,
        baseline_harm_events=state.baseline_harm_events + harm.baseline_events,
        canary_safe_events=state.canary_safe_events + safe.canary_events,
        baseline_safe_events=state.baseline_safe_events + safe.baseline_events,
        looks=state.looks + 1,
    )
    return _mark(updated, pair)


def _mark(state: SequentialState, pair: _Pair) -> SequentialState:
    """Remember that the safety test crossed its threshold. Stopping at the first crossing
    is what Ville's inequality covers, so the verdict stands even if the statistic later
    falls back (the harm test keeps watching for a regression)."""
    if state.ruled_out or RatioTest.log_e_value(state.safe) < pair.safe.log_threshold:
        return state
    return replace(state, ruled_out=True)


def _validate(tolerance: float, alpha_fail: float, alpha_pass: float) -> None:
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"the tolerance must be a positive fraction, got {tolerance}")
    for name, alpha in (("alpha_fail", alpha_fail), ("alpha_pass", alpha_pass)):
        if not 0 < alpha < 1:
            raise ValueError(f"{name} must be between 0 and 1, got {alpha}")


@dataclass(frozen=True)
class ErrorRateTest:
    """The canary's error rate against the baseline's, on request and 5xx counts.

    Harm: H0 "the canary's error rate is at most the baseline's". Safety: H0 "it is more
    than ``1 + tolerance`` times the baseline's"."""

    tolerance: float
    alpha_fail: float = 0.01
    alpha_pass: float = 0.05
    label: str = "5xx"  # what the events are, in messages

    def __post_init__(self) -> None:
        _validate(self.tolerance, self.alpha_fail, self.alpha_pass)

    @property
    def _pair(self) -> _Pair:
        return _Pair(
            RatioTest(1.0, "above", self.alpha_fail),
            RatioTest(1.0 + self.tolerance, "below", self.alpha_pass),
        )

    def update(self, state: SequentialState, counts: Counts) -> SequentialState:
        return _accumulate(state, self._pair, counts, counts)

    def decide(self, state: SequentialState) -> Decision:
        canary = _rate(state.canary_harm_events, state.canary_requests)
        baseline = _rate(state.baseline_harm_events, state.baseline_requests)
        describe = (
            f"{self.label} {canary} of {state.canary_requests:.0f} canary requests vs "
            f"{baseline} of {state.baseline_requests:.0f} baseline requests"
        )
        return self._pair.decide(state, describe)


def _rate(events: float, requests: float) -> str:
    if requests <= 0:
        return "n/a"
    return f"{events / requests * 100:.3g}%"


# --- latency --------------------------------------------------------------------------------

Buckets = Sequence[tuple[float, float]]
"""A histogram as cumulative ``(upper bound, count)`` pairs in increasing order of bound,
the last bound being +Inf (Prometheus' ``le`` buckets)."""


def _checked(buckets: Buckets) -> list[tuple[float, float]]:
    pairs = sorted((float(le), float(count)) for le, count in buckets)
    if not pairs or not math.isinf(pairs[-1][0]):
        raise ValueError("a histogram needs its +Inf bucket")
    return pairs


def count_above(buckets: Buckets, threshold: float) -> float:
    """How many observations exceed ``threshold``, interpolating linearly inside the
    bucket that holds it (as ``histogram_quantile`` does; the first bucket starts at 0).
    Cumulative counts that decrease (a scrape straddling a reset) are clamped."""
    pairs = _checked(buckets)
    total = max(pairs[-1][1], 0.0)
    lower_bound, lower_count = 0.0, 0.0
    for le, raw in pairs:
        count = min(max(raw, lower_count), total)
        if threshold < le:
            if math.isinf(le):
                return total - lower_count
            inside = (threshold - lower_bound) / (le - lower_bound) if le > lower_bound else 1
            below = lower_count + (count - lower_count) * max(inside, 0.0)
            return max(total - below, 0.0)
        lower_bound, lower_count = le, count
    return 0.0


def quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile by linear interpolation (None without observations; the
    largest finite bound when it falls in the +Inf bucket)."""
    pairs = _checked(buckets)
    total = pairs[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in pairs:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            inside = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (le - lower_bound) * inside
        lower_bound, lower_count = le, max(count, lower_count)
    return lower_bound


def _merge(a: Buckets, b: Buckets) -> tuple[tuple[float, float], ...]:
    """Two histograms added bound by bound; one without observations adds nothing."""
    checked = _checked(b)
    if not a or a[-1][1] <= 0:
        return tuple(checked)
    if checked[-1][1] <= 0:
        return tuple(a)
    left, right = dict(_checked(a)), dict(_checked(b))
    if left.keys() != right.keys():
        differ = sorted(left.keys() ^ right.keys())
        shown = ", ".join("+Inf" if math.isinf(le) else f"{le:g}" for le in differ[:5])
        raise ValueError(
            f"the histogram's bucket bounds changed between looks (bounds {shown} are in one "
            "look only)"
        )
    return tuple((le, left[le] + right[le]) for le in sorted(left))


@dataclass(frozen=True)
class LatencyTest:
    """The canary's tail latency against the baseline's, on histogram bucket counts.

    The threshold ``reference`` is the baseline's ``q`` quantile (p99), fixed from the
    baseline's first ``calibration_requests`` observations, which the test itself does not
    use. After that, per look:

    * harm counts the requests slower than ``reference`` on each side (H0: the canary's
      share is at most the baseline's);
    * safety counts the canary's requests slower than ``(1 + tolerance) * reference``
      against the baseline's slower than ``reference`` (H0: the canary's share beyond the
      tolerated p99 is at least the baseline's share beyond its p99, i.e. the canary's
      p99 is beyond the tolerance)."""

    tolerance: float
    alpha_fail: float = 0.01
    alpha_pass: float = 0.05
    q: float = 0.99
    calibration_requests: float = 1000.0

    def __post_init__(self) -> None:
        _validate(self.tolerance, self.alpha_fail, self.alpha_pass)
        if not 0.5 <= self.q < 1:
            raise ValueError(f"the quantile must be in [0.5, 1), got {self.q}")
        if self.calibration_requests < 1 / (1 - self.q):
            raise ValueError("calibration needs at least one expected request beyond the quantile")

    @property
    def _pair(self) -> _Pair:
        return _Pair(
            RatioTest(1.0, "above", self.alpha_fail), RatioTest(1.0, "below", self.alpha_pass)
        )

    def update(self, state: SequentialState, canary: Buckets, baseline: Buckets) -> SequentialState:
        """Add one look's bucket increments (cumulative per bound, per side)."""
        canary_pairs, baseline_pairs = _checked(canary), _checked(baseline)
        if state.reference is None:
            calibration = _merge(state.calibration, baseline_pairs)
            reference = None
            if calibration[-1][1] >= self.calibration_requests:
                reference = quantile(calibration, self.q)
                if reference is not None and reference <= 0:
                    reference = None
            if reference is not None:
                calibration = ()  # no longer needed
            return replace(state, calibration=calibration, reference=reference)
        reference = state.reference
        n_c, n_b = canary_pairs[-1][1], baseline_pairs[-1][1]
        harm = Counts(
            max(n_c, 0.0),
            count_above(canary_pairs, reference),
            max(n_b, 0.0),
            count_above(baseline_pairs, reference),
        )
        safe = Counts(
            harm.canary_requests,
            count_above(canary_pairs, reference * (1 + self.tolerance)),
            harm.baseline_requests,
            harm.baseline_events,
        )
        return _accumulate(state, self._pair, harm, safe)

    def decide(self, state: SequentialState) -> Decision:
        if state.reference is None:
            seen = state.calibration[-1][1] if state.calibration else 0.0
            return Decision(
                kind="calibrating",
                harm_log_e=0.0,
                harm_log_threshold=self._pair.harm.log_threshold,
                safe_log_e=0.0,
                safe_log_threshold=self._pair.safe.log_threshold,
                estimate=None,
                canary_requests=0.0,
                baseline_requests=0.0,
                canary_events=0.0,
                baseline_events=0.0,
                requests_to_pass=None,
                message=(
                    f"fixing the latency threshold from the baseline: {seen:.0f} of "
                    f"{self.calibration_requests:.0f} baseline requests"
                ),
            )
        reference = state.reference
        limit = reference * (1 + self.tolerance)
        describe = (
            f"slower than {reference * 1000:.4g} ms (the baseline's p{self.q * 100:g}): "
            f"{_rate(state.canary_harm_events, state.canary_requests)} of the canary vs "
            f"{_rate(state.baseline_harm_events, state.baseline_requests)} of the baseline; "
            f"canary slower than {limit * 1000:.4g} ms: "
            f"{_rate(state.canary_safe_events, state.canary_requests)}"
        )
        return self._pair.decide(state, describe)


# --- power (for the policy's "advance on power" option and the benchmark's oracle) ----------


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _z(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)  # fmt: skip
    low = 0.02425
    if p < low:
        u = math.sqrt(-2 * math.log(p))
        return (((((c[0] * u + c[1]) * u + c[2]) * u + c[3]) * u + c[4]) * u + c[5]) / (
            (((d[0] * u + d[1]) * u + d[2]) * u + d[3]) * u + 1
        )
    if p > 1 - low:
        return -_z(1 - p)
    u = p - 0.5
    r = u * u
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * u
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def fixed_horizon_power(
    canary_requests: float,
    baseline_requests: float,
    baseline_rate: float,
    canary_rate: float,
    alpha: float,
) -> float:
    """The power of a one-sided two-proportion z-test at level ``alpha`` (pooled variance
    under the null, unpooled under the alternative) with these sample sizes, when the
    baseline's event rate is ``baseline_rate`` and the canary's ``canary_rate``."""
    if canary_requests <= 0 or baseline_requests <= 0:
        return 0.0
    n_c, n_b = canary_requests, baseline_requests
    pooled = (n_c * canary_rate + n_b * baseline_rate) / (n_c + n_b)
    null_se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
    alt_se = math.sqrt(
        canary_rate * (1 - canary_rate) / n_c + baseline_rate * (1 - baseline_rate) / n_b
    )
    if alt_se == 0:
        return 1.0 if canary_rate > baseline_rate else 0.0
    effect = canary_rate - baseline_rate
    return _phi((effect - _z(1 - alpha) * null_se) / alt_se)
