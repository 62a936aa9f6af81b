"""The values canary analysis works on: what to check, on which revisions, what was read,
and what was concluded.

PURE: frozen dataclasses, enums and exception types; no I/O. The controller builds
:class:`CheckDefinition` and :class:`Subject` from its policy and InferenceService, keeps
the :class:`CheckMemory` of each check between evaluations, and receives a
:class:`StepAnalysis`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal, get_args

from analysis.sequential import SequentialState

__all__ = [
    "BUILTIN_CHECKS",
    "METRIC_PROFILES",
    "SHADOW_BUILTINS",
    "BadQuery",
    "CheckDefinition",
    "CheckEvaluation",
    "CheckMemory",
    "DetailValue",
    "Direction",
    "DuplicateSeries",
    "InconsistentEvidence",
    "Infinite",
    "InvalidAnswer",
    "InvalidCounter",
    "InvalidHistogram",
    "MetricError",
    "MetricProfile",
    "Mode",
    "MultipleSeries",
    "NoData",
    "NoDataPolicy",
    "NotANumber",
    "Outcome",
    "PartialAnswer",
    "ProviderError",
    "QueryResult",
    "Reading",
    "Series",
    "StaleSample",
    "StepAnalysis",
    "Subject",
    "Unreachable",
    "UnreadableSample",
]

Direction = Literal["lowerIsBetter", "higherIsBetter"]
NoDataPolicy = Literal["inconclusive", "fail", "pass"]
Progression = Literal["evidence", "power"]
Mode = Literal["knative", "standard"]
MetricProfile = Literal["knative-otel", "knative-opencensus", "istio", "kserve-model-server"]
DetailValue = str | int | float | bool | None

METRIC_PROFILES: tuple[MetricProfile, ...] = get_args(MetricProfile)
BUILTIN_CHECKS: Mapping[str, Direction] = {
    "error-rate": "lowerIsBetter",
    "latency-p99": "lowerIsBetter",
    "request-rate": "higherIsBetter",
}
"""The built-in checks and their natural direction (the same table as the policy's)."""
SEQUENTIAL_BUILTINS = frozenset({"error-rate", "latency-p99"})
"""The built-ins that have a sequential test (counts of 5xx, histogram buckets)."""
SHADOW_BUILTINS: Mapping[str, Direction] = {
    "decision-agreement": "higherIsBetter",
    "score-shift": "lowerIsBetter",
}
"""The built-ins of the shadow comparison only, and their direction: the challenger
InferenceService's outputs against the champion's on the same requests, from the shadow
collector's pairs (:mod:`analysis.shadow`). ``absolute_limit`` is the minimum agreement
(a share) or the largest PSI. The controller generates them from a policy's
``shadow.minAgreement`` and ``shadow.maxScoreShift``; a policy cannot name them."""


class Outcome(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


# --- errors -------------------------------------------------------------------------------


class MetricError(Exception):
    """A metric could not be read as one finite number per revision.

    ``query`` is the PromQL concerned, when known; ``raw_digest`` the SHA-256 of the raw
    response body when there was one (a refusal from Prometheus is evidence too); ``at``
    the evaluation time the query was sent for. ``attempts`` is how many requests were
    made for the answer and ``failures`` what went wrong with each failed one (retries are
    evidence too)."""

    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        query: str | None = None,
        raw_digest: str | None = None,
        at: datetime | None = None,
        attempts: int = 1,
        failures: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.query = query
        self.raw_digest = raw_digest
        self.at = at
        self.attempts = attempts
        self.failures = failures


class NoData(MetricError):
    """The query returned no series (for this revision)."""

    kind = "no-data"


class NotANumber(MetricError):
    """A series' value is NaN, typically 0/0 or a quantile over no observations."""

    kind = "not-a-number"


class Infinite(MetricError):
    """A series' value is +Inf or -Inf."""

    kind = "infinite"


class MultipleSeries(MetricError):
    """Several series where one was expected: the query is ambiguous, so it is not read."""

    kind = "multiple-series"


class Unreachable(MetricError):
    """The metric server did not answer (connection refused, timeout, 5xx after retries)."""

    kind = "unreachable"


class BadQuery(MetricError):
    """The metric server refused the query, or it cannot be built for this subject."""

    kind = "bad-query"


class ProviderError(MetricError):
    """Any other unusable answer: refused credentials, a body that is not the API's JSON."""

    kind = "provider-error"


class InvalidAnswer(MetricError):
    """An answer that breaks a rule every answer must keep; ``series`` names the series
    (``metric{label="value",...}``) and ``rule`` the rule broken (see
    :mod:`analysis.validate`). Never evidence: the check is an Error, never a pass."""

    kind = "invalid-answer"

    def __init__(
        self,
        message: str,
        *,
        series: str,
        rule: str,
        query: str | None = None,
        raw_digest: str | None = None,
        at: datetime | None = None,
        attempts: int = 1,
        failures: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            f"{series}: {message} (rule: {rule})",
            query=query,
            raw_digest=raw_digest,
            at=at,
            attempts=attempts,
            failures=failures,
        )
        self.series = series
        self.rule = rule


class InvalidCounter(InvalidAnswer):
    """A count that is negative, NaN or infinite, or a counter that went down without a
    consistent reset to near zero."""

    kind = "invalid-counter"


class InvalidHistogram(InvalidAnswer):
    """Cumulative buckets that fall as ``le`` rises, no ``+Inf`` bucket, or a ``+Inf``
    bucket that disagrees with ``_count``."""

    kind = "invalid-histogram"


class StaleSample(InvalidAnswer):
    """A sample whose timestamp is too far from the time it was asked for."""

    kind = "stale-sample"


class DuplicateSeries(InvalidAnswer):
    """Two series with the same label set in one answer."""

    kind = "duplicate-series"


class UnreadableSample(InvalidAnswer):
    """A series whose sample (value or timestamp) is not a number."""

    kind = "unreadable-sample"


class InconsistentEvidence(InvalidAnswer):
    """Answers that cannot all be true together: more paired predictions than the
    challenger's requests allow (forged or duplicated collector events). Never evidence."""

    kind = "inconsistent-evidence"


class PartialAnswer(InvalidAnswer):
    """Prometheus answered with ``warnings``: the answer may be missing series."""

    kind = "partial-answer"


# --- what to check, on what ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckDefinition:
    """One check of a policy, as the analysis needs it (the engine converts the policy's
    ``CheckSpec``). Exactly one of ``builtin`` and ``query`` is set.

    ``query`` is a PromQL template (``${namespace}``, ``${isvc}``, ``${revision}``,
    ``${canary_revision}``, ``${baseline_revision}``, ``${window}``) that returns one series
    for ``${revision}``; it runs once for the canary and once for the baseline.
    ``relative_tolerance`` is a fraction (0.1: 10 % worse than the baseline fails);
    ``hard_limit`` is an SLO ceiling in the check's unit (seconds for latency) that fails
    the check at the first evaluation beyond it, whatever the limits and sample counts.

    A shadow output check (``builtin`` in :data:`SHADOW_BUILTINS`) takes ``absolute_limit``
    only: the minimum agreement (judged at ``alpha_pass``) or the largest PSI, each over
    ``min_samples`` pairs; ``max_predictions_per_request`` is the most predictions one
    request carries, so that the challenger's requests bound the pairs it can have."""

    name: str
    builtin: str | None
    query: str | None
    direction: Direction
    absolute_limit: float | None = None
    relative_tolerance: float | None = None
    hard_limit: float | None = None
    min_samples: int = 100
    on_no_data: NoDataPolicy = "inconclusive"
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = 4
    dry_run: bool = False
    alpha_fail: float | None = None
    alpha_pass: float = 0.05
    progression: Progression = "evidence"
    events: str | None = None
    requests: str | None = None
    max_predictions_per_request: int = 1

    @property
    def counted(self) -> bool:
        """A custom check on two counters (``events`` over ``requests``)."""
        return self.events is not None

    @property
    def sequential(self) -> bool:
        """Whether the check is judged by the sequential tests (``analysis.sequential``):
        a built-in error rate or p99, or an events/requests check, with a relative
        tolerance, given a false-rollback budget ``alpha_fail``. Other checks are judged
        per evaluation by their limits."""
        return (
            (self.builtin in SEQUENTIAL_BUILTINS or self.counted)
            and self.relative_tolerance is not None
            and self.alpha_fail is not None
        )

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, alpha in (("alpha_fail", self.alpha_fail), ("alpha_pass", self.alpha_pass)):
            if alpha is not None and not 0 < alpha < 1:
                problems.append(f"{name} must be between 0 and 1, got {alpha}")
        if self.progression not in get_args(Progression):
            problems.append(f"progression must be evidence or power, got {self.progression!r}")
        if (self.events is None) != (self.requests is None):
            problems.append("events and requests go together")
        if sum(x is not None for x in (self.builtin, self.query, self.events)) != 1:
            problems.append("set exactly one of builtin, query and events/requests")
        known = (*BUILTIN_CHECKS, *SHADOW_BUILTINS)
        if self.builtin is not None and self.builtin not in known:
            problems.append(f"unknown built-in {self.builtin!r}; allowed: {', '.join(known)}")
        if self.shadow_output:
            problems += self._shadow_output_problems()
        if self.max_predictions_per_request < 1:
            problems.append(f"max_predictions_per_request must be >= 1, got "
                            f"{self.max_predictions_per_request}")  # fmt: skip
        if self.direction not in get_args(Direction):
            problems.append(f"direction must be lowerIsBetter or higherIsBetter, got "
                            f"{self.direction!r}")  # fmt: skip
        limits = (self.absolute_limit, self.relative_tolerance, self.hard_limit)
        if all(limit is None for limit in limits):
            problems.append("set at least one of absolute_limit, relative_tolerance, hard_limit")
        if any(limit is not None and not math.isfinite(limit) for limit in limits):
            problems.append("limits must be finite numbers")
        if self.relative_tolerance is not None and not self.relative_tolerance > 0:
            problems.append(f"relative_tolerance must be > 0, got {self.relative_tolerance}")
        if self.on_no_data not in get_args(NoDataPolicy):
            problems.append(f"on_no_data must be inconclusive, fail or pass, got "
                            f"{self.on_no_data!r}")  # fmt: skip
        counts = {
            "min_samples": self.min_samples,
            "failure_limit": self.failure_limit,
            "inconclusive_limit": self.inconclusive_limit,
            "consecutive_error_limit": self.consecutive_error_limit,
        }
        problems += [f"{key} must be >= 0, got {v}" for key, v in counts.items() if v < 0]
        if problems:
            raise ValueError(f"check {self.name!r}: " + "; ".join(problems))

    @property
    def shadow_output(self) -> bool:
        """A comparison of the challenger's outputs with the champion's (``SHADOW_BUILTINS``)."""
        return self.builtin in SHADOW_BUILTINS

    def _shadow_output_problems(self) -> list[str]:
        assert self.builtin is not None
        problems: list[str] = []
        natural = SHADOW_BUILTINS[self.builtin]
        if self.direction != natural:
            problems.append(f"{self.builtin} is {natural}, got direction {self.direction!r}")
        if self.relative_tolerance is not None or self.hard_limit is not None:
            problems.append(f"{self.builtin} takes only absolute_limit (no relative_tolerance "
                            "or hard_limit: the champion is compared pair by pair)")  # fmt: skip
        limit = self.absolute_limit
        if limit is None:
            what = "the minimum agreement" if natural == "higherIsBetter" else "the largest PSI"
            problems.append(f"{self.builtin} needs absolute_limit ({what})")
        elif self.builtin == "decision-agreement" and not 0 < limit <= 1:
            problems.append(f"decision-agreement's absolute_limit is a share in (0, 1], got "
                            f"{limit}")  # fmt: skip
        elif self.builtin == "score-shift" and not limit > 0:
            problems.append(f"score-shift's absolute_limit is a PSI > 0, got {limit}")
        if self.on_no_data == "pass":
            problems.append(f"{self.builtin} cannot pass on no data (on_no_data: pass): no "
                            "paired predictions is no evidence")  # fmt: skip
        return problems


@dataclass(frozen=True)
class Subject:
    """The two things compared, and how their metrics are named.

    Knative mode: revision names (``scorer-predictor-00002`` vs ``scorer-predictor-00001``).
    Standard mode: Deployment (= Service) names (``scorer-canary-predictor`` vs
    ``scorer-predictor``). ``window`` is the range of the rate queries.

    ``challenger_isvc`` is set while a challenger InferenceService is compared in shadow:
    its name, the ``isvc`` label the shadow collector gives its responses (the champion is
    ``isvc``; the canary revision is then the challenger's). Only with it can the output
    comparison (``SHADOW_BUILTINS``) tell the two models' answers apart."""

    namespace: str
    isvc: str
    mode: Mode
    canary_revision: str
    baseline_revision: str
    metric_profile: str
    window: timedelta
    challenger_isvc: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("namespace", "isvc", "canary_revision", "baseline_revision"):
            if not getattr(self, name):
                problems.append(f"{name} must not be empty")
        if self.canary_revision and self.canary_revision == self.baseline_revision:
            problems.append(f"canary and baseline are the same ({self.canary_revision!r})")
        if self.mode not in get_args(Mode):
            problems.append(f"mode must be knative or standard, got {self.mode!r}")
        if self.metric_profile not in METRIC_PROFILES:
            problems.append(f"unknown metric profile {self.metric_profile!r}; allowed: "
                            f"{', '.join(METRIC_PROFILES)}")  # fmt: skip
        if self.window <= timedelta(0):
            problems.append(f"window must be positive, got {self.window}")
        if self.challenger_isvc is not None and self.challenger_isvc in ("", self.isvc):
            problems.append(f"challenger_isvc must name another InferenceService than the "
                            f"champion {self.isvc!r}, got {self.challenger_isvc!r}")  # fmt: skip
        if problems:
            raise ValueError("analysis subject: " + "; ".join(problems))


# --- what was read ------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series of an instant-vector result. ``value`` may be NaN or ±Inf;
    ``timestamp`` is the sample's time in seconds since the epoch (None when unknown).
    ``unreadable`` says why the sample could not be read (the value is then NaN): one bad
    sample spoils its own series, not the answer."""

    labels: Mapping[str, str]
    value: float
    timestamp: float | None = None
    unreadable: str | None = None


@dataclass(frozen=True)
class QueryResult:
    """A provider's answer: the series, the SHA-256 of the raw response and where from.

    ``warnings`` are the server's warnings (a partial answer); ``attempts`` how many
    requests it took and ``failures`` what went wrong with the failed ones."""

    series: tuple[Series, ...]
    raw_digest: str
    url: str
    warnings: tuple[str, ...] = ()
    attempts: int = 1
    failures: tuple[str, ...] = ()

    def single(self, query: str | None = None) -> Series:
        """The one series; MultipleSeries if there are several, NoData if none."""
        if not self.series:
            raise NoData("the query returned no series", query=query, raw_digest=self.raw_digest)
        if len(self.series) > 1:
            raise MultipleSeries(
                f"the query returned {len(self.series)} series where one was expected",
                query=query,
                raw_digest=self.raw_digest,
            )
        return self.series[0]


@dataclass(frozen=True)
class Reading:
    """What one check read: the canary's and the baseline's value and sample counts.

    ``None`` as a value means that side has no series (no data). ``error`` set means the
    check could not be read at all (NoData for both sides, NotANumber, Infinite,
    MultipleSeries, Unreachable, BadQuery, ProviderError); the other fields are then
    ignored. Sample counts are requests in the window; ``None`` means unknown (treated as
    none). Values may be NaN or ±Inf here; the assessment turns those into errors."""

    canary: float | None = None
    baseline: float | None = None
    canary_samples: int | None = None
    baseline_samples: int | None = None
    error: MetricError | None = None

    @classmethod
    def failed(cls, error: MetricError) -> Reading:
        return cls(error=error)


# --- what was concluded -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckMemory:
    """Per-check state carried from one evaluation to the next (the engine persists it).

    The counters: a Successful evaluation resets all three; an evaluation that is still
    collecting data (no data in grace, too few samples) leaves them as they were.
    ``sequential`` is a sequential check's accumulated evidence and ``through`` the last
    look it has read; no outcome resets them."""

    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    consecutive_errors: int = 0
    sequential: SequentialState | None = None
    through: datetime | None = None
    counters: tuple[float | None, ...] | None = None  # events/requests checks: last values

    def bump(self, outcome: Outcome) -> CheckMemory:
        """The counters after one more evaluation with ``outcome``."""
        if outcome is Outcome.SUCCESSFUL:
            return replace(
                self, consecutive_failures=0, consecutive_inconclusive=0, consecutive_errors=0
            )
        if outcome is Outcome.FAILED:
            return replace(self, consecutive_failures=self.consecutive_failures + 1)
        if outcome is Outcome.INCONCLUSIVE:
            return replace(self, consecutive_inconclusive=self.consecutive_inconclusive + 1)
        return replace(self, consecutive_errors=self.consecutive_errors + 1)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "consecutive_failures": self.consecutive_failures,
            "consecutive_inconclusive": self.consecutive_inconclusive,
            "consecutive_errors": self.consecutive_errors,
        }
        if self.sequential is not None:
            data["sequential"] = self.sequential.to_json()
        if self.through is not None:
            data["through"] = self.through.isoformat()
        if self.counters is not None:
            data["counters"] = list(self.counters)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckMemory:
        sequential = data.get("sequential")
        through = data.get("through")
        counters = data.get("counters")
        return cls(
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            consecutive_inconclusive=int(data.get("consecutive_inconclusive", 0)),
            consecutive_errors=int(data.get("consecutive_errors", 0)),
            sequential=None if sequential is None else SequentialState.from_json(sequential),
            through=None if through is None else datetime.fromisoformat(through),
            counters=None
            if counters is None
            else tuple(None if v is None else float(v) for v in counters),
        )


@dataclass(frozen=True)
class CheckEvaluation:
    """One check evaluated once, with its evidence.

    ``outcome`` is this evaluation alone; ``gating_outcome`` is after the check's limits and
    is what the step verdict uses (a dry-run check's is computed but not combined).
    ``sufficient`` is True only when this evaluation is evidence that the check passes
    (enough canary samples, a real comparison); a step never advances without it.
    ``query`` holds every PromQL sent for the check (joined by newlines), and
    ``response_digest`` the SHA-256 of the raw response (of the newline-joined response
    digests when there were several). ``fast_fail`` marks a hard-limit failure."""

    check: str
    evaluated_at: datetime
    outcome: Outcome
    gating_outcome: Outcome
    sufficient: bool
    query: str
    prometheus_url: str
    response_digest: str
    canary_value: float | None
    baseline_value: float | None
    canary_samples: int | None
    baseline_samples: int | None
    statistic: float | None
    threshold: float | None
    dry_run: bool
    message: str
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
    fast_fail: bool = False


@dataclass(frozen=True)
class StepAnalysis:
    """Every check of one evaluation round, and the step verdict they give.

    ``verdict`` combines the gating outcomes of the checks that are not dry runs: any
    Failed gives Failed, else any Error gives Error, else any Inconclusive gives
    Inconclusive, else Successful. ``sufficient_data`` is True only when every such check
    is sufficient (and there is at least one): no data never promotes. ``memory`` is the
    updated counters of every check, for the next evaluation."""

    evaluated_at: datetime
    evaluations: tuple[CheckEvaluation, ...]
    verdict: Outcome
    sufficient_data: bool
    fast_fail: bool
    summary: str
    memory: Mapping[str, CheckMemory]

    def evaluation(self, check: str) -> CheckEvaluation:
        """The evaluation of the check named ``check``."""
        for evaluation in self.evaluations:
            if evaluation.check == check:
                return evaluation
        raise KeyError(f"no evaluation of a check named {check!r}")
