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

  - **harm** (H0: rho <= 1 + tolerance/2, the canary is within half the tolerance): its
    e-value reaching ``1/alpha_fail`` proves the canary worse than that. It is an
    e-detector: the full-history test plus tests restarted at each step and periodically,
    with weights summing to 1, so that a regression that begins late is not hidden by a
    healthy past. By Ville's inequality the chance that it *ever* fires for a canary within
    half the tolerance is at most ``alpha_fail``, however often one looks.
  - **safety** (non-inferiority, H0: the canary is worse than the tolerance): its e-value
    reaching ``1/alpha_pass`` rules out a regression beyond the tolerance; the chance of
    that for a canary beyond the tolerance is at most ``alpha_pass``.

* Counts vary more than Poisson counts on real traffic: each look's log-likelihood
  ratios are tempered by a dispersion factor estimated from earlier looks, and capped.
* A step may advance on the safety test only with canary requests counted at that step
  (``step_canary_requests``, see :func:`at_step`).

The state of a test is a few hundred floats (the accumulated log-likelihood ratio of each
alternative of each test and restart, and the running totals), so it is persisted with the
rollout and a restarted controller resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "GRID",
    "HARM_FRACTION",
    "Counts",
    "Decision",
    "ErrorRateTest",
    "LatencyTest",
    "RatioTest",
    "SequentialState",
    "at_step",
    "count_above",
    "extra_variance",
    "fixed_horizon_power",
    "harm_log_e",
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
    # The harm tests restarted later (change-point detection): (the log of the restart's
    # weight, the log-likelihood ratio of each alternative since it began), oldest first.
    restarts: tuple[tuple[float, tuple[float, ...]], ...] = ()
    restarted: int = 0  # how many periodic restarts have begun
    step_restarted: int = 0  # how many restarts at a new step have begun
    since_restart: float = 0.0  # effective events since the latest periodic restart
    # Over-dispersion: the previous block's log-ratio and its Poisson variance, the total
    # precision and the precision-weighted sum of the pair estimates of the extra
    # variance, and the number of pairs.
    dispersion: tuple[float, ...] = ()
    # The current block's joined counts: (canary requests, canary events, baseline
    # requests, baseline events, looks spanned), or () before its first look.
    block: tuple[float, ...] = ()
    # Evidence per step: the step's number, and the canary requests counted at it since its
    # split showed in status (None before the first step is known).
    step: int | None = None
    step_canary_requests: float = 0.0
    # The safety test's log-likelihood ratios over the current step's looks only (empty
    # at the first step: the whole history is that step's).
    step_safe: tuple[float, ...] = ()

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
            "restarts": [[weight, list(lrs)] for weight, lrs in self.restarts],
            "restarted": self.restarted,
            "step_restarted": self.step_restarted,
            "since_restart": self.since_restart,
            "dispersion": list(self.dispersion),
            "block": list(self.block),
            "step": self.step,
            "step_canary_requests": self.step_canary_requests,
            "step_safe": list(self.step_safe),
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
        restarts = tuple(
            (float(weight), tuple(float(v) for v in lrs))
            for weight, lrs in data.get("restarts", ())
        )
        if any(len(lrs) != len(GRID) for _, lrs in restarts):
            raise ValueError(f"a restarted harm test must have {len(GRID)} alternatives")
        dispersion = tuple(float(v) for v in data.get("dispersion", ()))
        if len(dispersion) not in (0, _DISPERSION_FIELDS):
            raise ValueError(
                f"sequential state has {len(dispersion)} dispersion figures, expected "
                f"{_DISPERSION_FIELDS} or none"
            )
        block = tuple(float(v) for v in data.get("block", ()))
        if len(block) not in (0, _BLOCK_FIELDS):
            raise ValueError(
                f"sequential state has {len(block)} block counts, expected {_BLOCK_FIELDS} or none"
            )
        step = data.get("step")
        step_safe = tuple(float(v) for v in data.get("step_safe", ()))
        if len(step_safe) not in (0, len(GRID)):
            raise ValueError(f"the step's safety test must have {len(GRID)} alternatives")
        # A state written before these fields existed reads as: no restart yet, no
        # dispersion measured (the prior applies), and no step known (the next evaluation
        # starts counting the step's requests from zero).
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
            restarts=restarts,
            restarted=int(data.get("restarted", 0)),
            step_restarted=int(data.get("step_restarted", 0)),
            since_restart=float(data.get("since_restart", 0.0)),
            dispersion=dispersion,
            block=block,
            step=None if step is None else int(step),
            step_canary_requests=float(data.get("step_canary_requests", 0.0)),
            step_safe=step_safe,
        )


@dataclass(frozen=True)
class Decision:
    """What the evidence says now.

    ``estimate`` is the point estimate of the safety test's ratio divided by its null:
    above 1 means the canary looks worse than the tolerance allows. ``harm_log_e`` is the
    log of the harm detector's e-value (the full-history test and its restarts, weighted)
    and ``safe_log_e`` the safety test's, decided at ``harm_log_threshold`` and
    ``safe_log_threshold``. ``requests_to_pass`` estimates how many more canary requests
    the safety test needs at the present estimate (None when it is not heading there).
    ``step_canary_requests`` are the canary requests counted at the current step,
    ``step_safe_log_e`` the log e-value of the safety test over the current step's looks
    only (None at the first step) and ``extra_variance`` the variance of a look's log-ratio
    beyond Poisson noise the tests allow for (:func:`extra_variance`)."""

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
    step_canary_requests: float = 0.0
    extra_variance: float = 0.0
    step_safe_log_e: float | None = None

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


# --- the harm detector: the full-history test and its restarts ------------------------------

HARM_FRACTION = 0.5
"""A rollback proves the canary worse than the baseline by more than this fraction of the
tolerance: the harm test's null is ``rho <= 1 + HARM_FRACTION * tolerance``. A canary
within half the tolerance is rolled back with probability at most ``alpha_fail``; one
beyond the tolerance is promoted with probability at most ``alpha_pass``; between the two,
the tests may take a long time and the rollout pauses for a human."""

FULL_WEIGHT = 0.25
"""The share of ``alpha_fail`` given to the harm test over the whole history."""

STEP_WEIGHT = 0.5
"""The share given to the restarts at new steps, the ``k``-th getting
``STEP_WEIGHT / (k (k + 1))`` (a quarter for the second step, a twelfth for the third): a
step change is where a regression most often begins (a model that fails under more load),
so those restarts get the larger share."""

PERIODIC_WEIGHT = 1.0 - FULL_WEIGHT - STEP_WEIGHT
"""The share given to the periodic restarts, the ``j``-th getting
``PERIODIC_WEIGHT / (j (j + 1))``. The three shares sum to 1."""

RESTART_EVENTS = 40.0
"""A new periodic restart of the harm test begins each time this many *effective events*
(per look ``k_c k_b / (k_c + k_b)``, about the canary's events when the canary is the
smaller side) have been given to the tests since the previous one."""

MAX_RESTARTS = 6
"""How many restarts are kept (see :func:`_kept`). Dropping one can only lower the
detector, so the false-rollback bound holds."""


def harm_log_e(state: SequentialState) -> float:
    """The log e-value of the harm detector: ``FULL_WEIGHT`` times the full-history mixture
    plus each restart's weight times its mixture. The restarts begin at stopping times and
    all weights sum to at most 1, so (counting each restart as 1 before it begins) this is
    bounded by a non-negative supermartingale starting at 1 under the null, and Ville's
    inequality bounds the chance that it ever reaches ``1/alpha`` by ``alpha``."""
    terms = [math.log(FULL_WEIGHT) + _log_mixture(state.harm)]
    terms += [weight + _log_mixture(lrs) for weight, lrs in state.restarts]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _kept(
    restarts: tuple[tuple[float, tuple[float, ...]], ...],
) -> tuple[tuple[float, tuple[float, ...]], ...]:
    """At most :data:`MAX_RESTARTS`: the newest, and of the others those whose weighted
    e-values are largest (which ones are dropped may depend on the data: the bound covers
    every restart ever begun)."""
    if len(restarts) <= MAX_RESTARTS:
        return restarts
    older = sorted(range(len(restarts) - 1),
                   key=lambda i: restarts[i][0] + _log_mixture(restarts[i][1]))  # fmt: skip
    dropped = set(older[: len(restarts) - MAX_RESTARTS])
    return tuple(r for i, r in enumerate(restarts) if i not in dropped)


def _restart(state: SequentialState) -> SequentialState:
    number = state.restarted + 1
    weight = math.log(PERIODIC_WEIGHT / (number * (number + 1)))
    return replace(
        state,
        restarts=_kept((*state.restarts, (weight, _empty()))),
        restarted=number,
        since_restart=0.0,
    )


def at_step(state: SequentialState, step: int) -> SequentialState:
    """The evidence entering step ``step``: the step's canary requests count from zero and,
    once there is a history, the harm test restarts (a canary that turns bad under the new
    split is not weighed against its healthy past) and so does a copy of the safety test
    over the step's looks only. Nothing else is forgotten."""
    if state.step == step:
        return state
    entered = replace(state, step=step, step_canary_requests=0.0)
    if state.looks <= 0:
        return entered
    entered = replace(entered, step_safe=_empty())
    number = state.step_restarted + 1
    weight = math.log(STEP_WEIGHT / (number * (number + 1)))
    return replace(
        entered,
        restarts=_kept((*state.restarts, (weight, _empty()))),
        step_restarted=number,
    )


# --- over-dispersion ----------------------------------------------------------------------

PRIOR_EXTRA = 0.5
"""The extra variance of a look's log-ratio beyond Poisson noise assumed before any pair
of looks has been seen (the canary's and the baseline's squared coefficients of variation
added: 0.5 is a CV of 0.5 on each side), as precise as :data:`PRIOR_PAIRS` pairs of looks
whose extra variance is that."""
PRIOR_PAIRS = 0.25
DISPERSION_Z = 0.25
"""The extra variance used is this many standard errors above its estimate, so that it is
less often below the truth (too small a factor makes the tests anti-conservative)."""

_DISPERSION_FIELDS = 5
_BLOCK_FIELDS = 5


def _variance_estimate(state: SequentialState) -> tuple[float, float]:
    """The extra variance's precision-weighted mean (with the prior) and standard error."""
    _y, _w, precision, weighted, _count = state.dispersion or (0.0,) * _DISPERSION_FIELDS
    prior = 2 / (2 * PRIOR_EXTRA) ** 2 * PRIOR_PAIRS
    total = prior + precision
    return max((prior * PRIOR_EXTRA + weighted) / total, 0.0), 1 / math.sqrt(total)


def extra_variance(state: SequentialState) -> float:
    """A conservative estimate of the variance of a look's log-ratio beyond Poisson noise
    (the canary's and the baseline's squared coefficients of variation added): the
    precision-weighted mean of the pair estimates so far (:func:`_dispersed`) and the
    prior, plus :data:`DISPERSION_Z` standard errors. A pair estimate has variance
    ``(w1 + w2 + 2 v)^2 / 2`` for the looks' Poisson variances ``w`` (half a squared
    normal difference), so pairs of large looks weigh more: at high traffic a few looks
    tell a CV of 0.3 from none."""
    mean, error = _variance_estimate(state)
    return mean + DISPERSION_Z * error


def _dispersion_factor(
    state: SequentialState, counts: Counts, block_looks: int = 1, spans: float = 1.0
) -> float:
    """How much more a look's counts vary than the Poisson model says:
    ``1 + v h max(B / L, 1)`` for the extra variance ``v`` of a block's log-ratio
    (:func:`extra_variance`), the look's Poisson information ``h = 1 / (1/mu_c + 1/mu_b)``
    (``mu`` the expected events per side at the look's pooled rate: the tests condition on
    the look's total), the block's length ``B`` in looks and the ``L`` looks this one
    spans (held counts included).

    A rate that varies per burst is shared by the looks within it, so their ratios move
    together: each is tempered as their block would be (``h B / L`` is the block's
    information), and the block's product stays a supermartingale. A look that spans a
    block or more is a block by itself (:func:`_blocked`), so ``v`` applies to it as it
    is: with ``B = 1`` this is ``1 + v h``. Uses only earlier blocks' events."""
    total = counts.canary_events + counts.baseline_events
    if total <= 0:
        return 1.0
    rate = total / (counts.canary_requests + counts.baseline_requests)
    mu_c, mu_b = rate * counts.canary_requests, rate * counts.baseline_requests
    block_share = max(block_looks / max(spans, 1.0), 1.0)
    return 1.0 + extra_variance(state) / (1 / mu_c + 1 / mu_b) * block_share


def _blocked(
    state: SequentialState, look: Counts, spans: float, block_looks: int
) -> SequentialState:
    """Add one joined look (spanning ``spans`` looks) to the current block; a block of
    ``block_looks`` looks or more is complete and updates the dispersion sums."""
    n_c, k_c, n_b, k_b, length = state.block or (0.0,) * _BLOCK_FIELDS
    n_c, k_c = n_c + look.canary_requests, k_c + look.canary_events
    n_b, k_b = n_b + look.baseline_requests, k_b + look.baseline_events
    length += spans
    if length < block_looks:
        return replace(state, block=(n_c, k_c, n_b, k_b, length))
    return replace(state, block=(), dispersion=_dispersed(state, Counts(n_c, k_c, n_b, k_b)))


def _unpaired(state: SequentialState) -> SequentialState:
    """After a joined look (see :func:`_accumulate`): the over-dispersion estimate keeps
    its sums, but the half-built block is dropped and the next block pairs with none."""
    if not state.dispersion and not state.block:
        return state
    dispersion = state.dispersion
    if dispersion:
        _y, _w, precision, weighted, count = dispersion
        dispersion = (0.0, 0.0, precision, weighted, count)
    return replace(state, dispersion=dispersion, block=())


def _dispersed(state: SequentialState, look: Counts) -> tuple[float, ...]:
    """The dispersion sums after one more block (its joined looks added up). Each block
    gives the log-ratio
    ``y = log((k_c + 1/2) / (k_b + 1/2)) - log(n_c / n_b)`` with Poisson variance about
    ``w = 1/(k_c + 1/2) + 1/(k_b + 1/2)``; two consecutive blocks give the pair estimate
    ``((y2 - y1)^2 - w1 - w2) / 2`` of the extra variance. Differences of consecutive
    blocks ignore a change in the ratio (a regression that begins) except at the one pair
    that straddles it."""
    last_y, last_w, precision, weighted, count = state.dispersion or (0.0,) * _DISPERSION_FIELDS
    if look.canary_events + look.baseline_events <= 0:
        return state.dispersion  # no events: nothing to compare (and nothing judged)
    y = math.log((look.canary_events + 0.5) / (look.baseline_events + 0.5)) - math.log(
        look.canary_requests / look.baseline_requests
    )
    w = 1 / (look.canary_events + 0.5) + 1 / (look.baseline_events + 0.5)
    if last_w > 0:
        estimate = ((y - last_y) ** 2 - w - last_w) / 2
        spread = w + last_w + 2 * _variance_estimate(state)[0]
        weight = 2 / (spread * spread)
        precision, weighted, count = precision + weight, weighted + weight * estimate, count + 1
    return (y, w, precision, weighted, count)


@dataclass(frozen=True)
class _Pair:
    """The harm and safety tests of one check."""

    harm: RatioTest
    safe: RatioTest

    def decide(self, state: SequentialState, describe: str) -> Decision:
        harm_e = harm_log_e(state)
        safe_e = RatioTest.log_e_value(state.safe)
        ratio = _ratio_estimate(
            state.canary_safe_events,
            state.canary_requests,
            state.baseline_safe_events,
            state.baseline_requests,
        )
        estimate = None if ratio is None else ratio / self.safe.null
        if harm_e >= self.harm.log_threshold:
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
            step_canary_requests=state.step_canary_requests,
            extra_variance=extra_variance(state),
            step_safe_log_e=_log_mixture(state.step_safe) if state.step_safe else None,
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


LOOK_CAP = 4.0
"""The most one joined look may add to the log-likelihood ratio of any alternative. The
expectation of ``min(LR, C)`` is at most that of ``LR``, so capping keeps every guarantee,
and it keeps one extreme look (a burst far beyond the estimated over-dispersion) from
deciding alone; a real regression still gains up to this much per look."""


def _tempered(log_lrs: Sequence[float], factor: float, cap: float) -> tuple[float, ...]:
    return tuple(min(v / factor, cap) for v in log_lrs)


def _plus(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _accumulate(
    state: SequentialState,
    pair: _Pair,
    harm: Counts,
    safe: Counts,
    *,
    fresh: bool = True,
    block_looks: int = 1,
    looks: int = 1,
) -> SequentialState:
    """One more look: both tests updated with their counts, the totals added up. (The
    two count sets share their requests; only the events differ.) ``fresh``: the look lies
    wholly after the current step's split showed, so its canary requests count for it.
    ``block_looks``: how many consecutive looks share one draw of the over-dispersion (a
    burst lasts that long; see :func:`_dispersion_factor`). ``looks``: how many periods
    the counts span (see *Joined looks* below).

    Each look's log-likelihood ratios are divided by its dispersion factor (see
    :func:`_dispersion_factor`), estimated from earlier looks only: a tempered likelihood
    ratio keeps its expectation at most 1 under a null whose counts vary that much more
    than Poisson counts (exactly in the normal approximation), and a predictable factor
    keeps the product a supermartingale.

    Canary and baseline are scraped at different moments, so a look shorter than the
    scrape interval often sees only one side move. Such a look says nothing about the
    ratio (the side that served gets every event by construction), and dropping it would
    throw its events away: instead its counts are held back and given to the tests with
    the next look in which the other side has served too, for at most
    :data:`MAX_HELD_LOOKS` looks. Whether a look is held back or dropped depends only on
    the request counts, never on the events, so the tests' guarantees are unchanged.

    *Joined looks.* A rollout that missed several periods (a restart, a failover, a slow
    tick) reads them as one look whose counts are their sum (``looks`` > 1: the raw
    counters' difference between the last grid time read and now). The statistics stay
    valid, because nothing here is tied to the number or the timing of looks: each look
    multiplies the mixtures by a (tempered, capped) likelihood ratio whose conditional
    expectation under the null is at most 1, so the statistics are test supermartingales
    at whatever times they are updated, and Ville's inequality bounds the chance that they
    *ever* cross ``1/alpha`` by ``alpha``, over any number of looks, taken at any times
    chosen without looking at the counts. (An alpha-spending design, whose thresholds
    depend on how many looks there will be, would not allow this.) The joined look is one
    such factor, the likelihood ratio of the summed counts, as for counts held back
    (above); with a constant split it equals the product of the periods' ratios. How each
    part of a look is made predictable is kept conservative:

    * its dispersion factor treats it as one draw of the over-dispersion whatever its
      length (``1 + v h`` with ``h`` the joined look's information; the periods' draws
      average out over a long look, so its true extra variance is at most ``v``): a too
      large factor only lowers the expectation;
    * it may add up to ``LOOK_CAP`` per period it spans (any cap keeps the expectation
      at most that of the ratio, so this costs nothing; one capped at ``LOOK_CAP`` alone
      would throw away the evidence of a long catch-up);
    * it updates no over-dispersion estimate (a sum of many periods varies less than one
      period, so its pair estimates would understate ``v``): the estimate keeps what it
      had, its half-built block is dropped, and the next block pairs with none before it;
    * its canary requests count for the step only when it lies wholly after the step's
      split showed (``fresh``), and the harm detector restarts at most once for it.

    Whether a look is joined depends only on when the rollout is read, never on the
    counts, so joining is a choice of stopping times the guarantees already cover; the
    price is power (a catch-up look is tempered as one draw), never the error rates."""
    live = state.pending if state.pending and state.pending[-1] < MAX_HELD_LOOKS else ()
    held = live[-1] if live else 0.0
    joint_harm, joint_safe = _with_pending(live, harm, safe)
    restarts, since, step_safe = state.restarts, state.since_restart, state.step_safe
    if looks < 1:
        raise ValueError(f"a look spans at least one period, got {looks}")
    spans = held + looks
    cap = LOOK_CAP * looks
    if joint_harm.canary_requests > 0 and joint_harm.baseline_requests > 0:
        harm_factor = _dispersion_factor(state, joint_harm, block_looks, spans)
        safe_factor = _dispersion_factor(state, joint_safe, block_looks, spans)
        look_harm = _tempered(
            _log_lrs(joint_harm, pair.harm.null, pair.harm.side), harm_factor, cap
        )
        look_safe = _tempered(
            _log_lrs(joint_safe, pair.safe.null, pair.safe.side), safe_factor, cap
        )
        harm_lrs = _plus(state.harm, look_harm)
        safe_lrs = _plus(state.safe, look_safe)
        restarts = tuple((n, _plus(lrs, look_harm)) for n, lrs in state.restarts)
        step_safe = _plus(state.step_safe, look_safe) if state.step_safe else ()
        k_c, k_b = joint_harm.canary_events, joint_harm.baseline_events
        since += k_c * k_b / (k_c + k_b) if k_c > 0 and k_b > 0 else 0.0
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
            spans,
        )
    else:  # nobody served: nothing new to hold (stray events without requests are dropped)
        harm_lrs, safe_lrs = state.harm, state.safe
        pending = (*live[:-1], spans) if live else ()
    updated = replace(
        state,
        harm=harm_lrs,
        safe=safe_lrs,
        restarts=restarts,
        since_restart=since,
        step_safe=step_safe,
        pending=pending,
        canary_requests=state.canary_requests + harm.canary_requests,
        baseline_requests=state.baseline_requests + harm.baseline_requests,
        canary_harm_events=state.canary_harm_events + harm.canary_events,
        baseline_harm_events=state.baseline_harm_events + harm.baseline_events,
        canary_safe_events=state.canary_safe_events + safe.canary_events,
        baseline_safe_events=state.baseline_safe_events + safe.baseline_events,
        looks=state.looks + looks,
        step_canary_requests=state.step_canary_requests + (harm.canary_requests if fresh else 0.0),
    )
    if not pending and looks > 1:
        updated = _unpaired(updated)
    elif not pending:
        updated = _blocked(updated, joint_harm, spans, block_looks)
    if since >= RESTART_EVENTS:
        updated = _restart(updated)
    return _mark(updated, pair)


def _mark(state: SequentialState, pair: _Pair) -> SequentialState:
    """Remember that the safety test crossed its threshold. Stopping at the first crossing
    is what Ville's inequality covers, so the verdict stands even if the statistic later
    falls back (the harm test keeps watching for a regression). It does not carry a step:
    a step advances only once enough canary requests were counted at that step too."""
    if state.ruled_out or RatioTest.log_e_value(state.safe) < pair.safe.log_threshold:
        return state
    return replace(state, ruled_out=True)


def _validate(tolerance: float, alpha_fail: float, alpha_pass: float, block_looks: int) -> None:
    if block_looks < 1:
        raise ValueError(f"a block is at least one look, got {block_looks}")
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"the tolerance must be a positive fraction, got {tolerance}")
    for name, alpha in (("alpha_fail", alpha_fail), ("alpha_pass", alpha_pass)):
        if not 0 < alpha < 1:
            raise ValueError(f"{name} must be between 0 and 1, got {alpha}")


@dataclass(frozen=True)
class ErrorRateTest:
    """The canary's error rate against the baseline's, on request and 5xx counts.

    Harm: H0 "the canary's error rate is at most ``1 + HARM_FRACTION * tolerance`` times
    the baseline's". Safety: H0 "it is more than ``1 + tolerance`` times the baseline's"."""

    tolerance: float
    alpha_fail: float = 0.01
    alpha_pass: float = 0.05
    label: str = "5xx"  # what the events are, in messages
    block_looks: int = 1  # consecutive looks that share one burst (see _dispersion_factor)

    def __post_init__(self) -> None:
        _validate(self.tolerance, self.alpha_fail, self.alpha_pass, self.block_looks)

    @property
    def _pair(self) -> _Pair:
        return _Pair(
            RatioTest(1.0 + HARM_FRACTION * self.tolerance, "above", self.alpha_fail),
            RatioTest(1.0 + self.tolerance, "below", self.alpha_pass),
        )

    def update(
        self, state: SequentialState, counts: Counts, *, fresh: bool = True, looks: int = 1
    ) -> SequentialState:
        """Add one look's counts; ``looks``: how many periods they span (see
        :func:`_accumulate`)."""
        return _accumulate(state, self._pair, counts, counts, fresh=fresh,
                           block_looks=self.block_looks, looks=looks)  # fmt: skip

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

    * harm counts the canary's requests slower than ``(1 + HARM_FRACTION * tolerance) *
      reference`` against the baseline's slower than ``reference`` (H0: the canary's p99 is
      within that fraction of the tolerance);
    * safety counts the canary's requests slower than ``(1 + tolerance) * reference``
      against the baseline's slower than ``reference`` (H0: the canary's share beyond the
      tolerated p99 is at least the baseline's share beyond its p99, i.e. the canary's
      p99 is beyond the tolerance)."""

    tolerance: float
    alpha_fail: float = 0.01
    alpha_pass: float = 0.05
    q: float = 0.99
    calibration_requests: float = 1000.0
    block_looks: int = 1  # consecutive looks that share one burst (see _dispersion_factor)

    def __post_init__(self) -> None:
        _validate(self.tolerance, self.alpha_fail, self.alpha_pass, self.block_looks)
        if not 0.5 <= self.q < 1:
            raise ValueError(f"the quantile must be in [0.5, 1), got {self.q}")
        if self.calibration_requests < 1 / (1 - self.q):
            raise ValueError("calibration needs at least one expected request beyond the quantile")

    @property
    def _pair(self) -> _Pair:
        return _Pair(
            RatioTest(1.0, "above", self.alpha_fail), RatioTest(1.0, "below", self.alpha_pass)
        )

    def update(
        self,
        state: SequentialState,
        canary: Buckets,
        baseline: Buckets,
        *,
        fresh: bool = True,
        looks: int = 1,
    ) -> SequentialState:
        """Add one look's bucket increments (cumulative per bound, per side), spanning
        ``looks`` periods (see :func:`_accumulate`). The looks that fix the threshold are
        not evidence, and their requests count for no step."""
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
        baseline_slow = count_above(baseline_pairs, reference)
        harm = Counts(
            max(n_c, 0.0),
            count_above(canary_pairs, reference * (1 + HARM_FRACTION * self.tolerance)),
            max(n_b, 0.0),
            baseline_slow,
        )
        safe = Counts(
            harm.canary_requests,
            count_above(canary_pairs, reference * (1 + self.tolerance)),
            harm.baseline_requests,
            baseline_slow,
        )
        return _accumulate(state, self._pair, harm, safe, fresh=fresh,
                           block_looks=self.block_looks, looks=looks)  # fmt: skip

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
        halfway = reference * (1 + HARM_FRACTION * self.tolerance)
        describe = (
            f"baseline slower than {reference * 1000:.4g} ms (its p{self.q * 100:g}): "
            f"{_rate(state.baseline_harm_events, state.baseline_requests)}; canary slower "
            f"than {halfway * 1000:.4g} ms: "
            f"{_rate(state.canary_harm_events, state.canary_requests)}, than "
            f"{limit * 1000:.4g} ms: {_rate(state.canary_safe_events, state.canary_requests)}"
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
