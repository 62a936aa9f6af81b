"""Rollout policies: the validated, typed form of what platform teams write in YAML.

A policy file holds one policy document, or a list of them, or several YAML documents
separated by ``---``. A directory is read file by file (``*.yaml`` / ``*.yml``), which is
how a mounted ConfigMap looks. Keys are camelCase, as everywhere else in Kubernetes.

Everything here is pure: loading reads files, but the models and the window logic take
explicit times and do no I/O.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from analysis.profiles import COUNTER_PART_LABEL
from analysis.types import SHADOW_BUILTINS

__all__ = [
    "BUILTIN_CHECKS",
    "TEMPLATE_VARIABLES",
    "ApprovalGateKind",
    "ApprovalPolicy",
    "CheckSpec",
    "Direction",
    "Duration",
    "Freeze",
    "NoDataPolicy",
    "PolicyError",
    "PolicyProblem",
    "PolicySet",
    "PromotionWindow",
    "RolloutPolicy",
    "Schedule",
    "ShadowPolicy",
    "format_duration",
    "load_policies",
    "parse_duration",
]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# ---------------------------------------------------------------------------------------
# Durations
# ---------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """Parse ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m, 1h30m or 2d, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("must be a duration such as 30s, 5m, 1h30m or 2d")
    text = value.strip()
    if not text or _DURATION_PART.sub("", text) != "":
        raise ValueError("must be a duration such as 30s, 5m, 1h30m or 2d (units: ms, s, m, h, d)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a duration the way policies write it (``1h30m``, ``45s``)."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


class Direction(StrEnum):
    LOWER_IS_BETTER = "lowerIsBetter"
    HIGHER_IS_BETTER = "higherIsBetter"


class NoDataPolicy(StrEnum):
    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"
    PASS = "pass"  # noqa: S105 - an outcome, not a password


# The built-in checks. Each has a query per metric profile (analysis/) and a natural
# direction: all three are "lower is better" except the request rate, which is a guard
# against a canary that silently receives no traffic.
BUILTIN_CHECKS: Mapping[str, Direction] = {
    "error-rate": Direction.LOWER_IS_BETTER,
    "latency-p99": Direction.LOWER_IS_BETTER,
    "request-rate": Direction.HIGHER_IS_BETTER,
}

# The shadow comparison's own built-ins (analysis.types.SHADOW_BUILTINS): generated from
# these fields of `shadow`, never listed in `checks`.
_SHADOW_FIELDS: Mapping[str, str] = {
    "decision-agreement": "minAgreement",
    "score-shift": "maxScoreShift",
}

# Variables a custom PromQL template may use, written ``${name}``. ``$`` never occurs in
# PromQL, so templates need no escaping of PromQL's own braces.
TEMPLATE_VARIABLES: Mapping[str, str] = {
    "namespace": "namespace of the InferenceService",
    "isvc": "name of the InferenceService",
    "revision": "the revision being measured (the query runs once for canary, once for baseline)",
    "canary_revision": "the canary revision",
    "baseline_revision": "the stable (baseline) revision",
    "window": "the analysis window, as a PromQL duration such as 2m",
}


class CheckSpec(_Model):
    """One metric check: a ``builtin``, a ``query`` (one value per revision, judged by
    thresholds at each evaluation), or ``events`` with ``requests`` (two counters per
    revision, judged by the sequential test on their ratio)."""

    name: str
    builtin: str | None = None
    query: str | None = None
    events: str | None = Field(
        default=None,
        description="PromQL template of a counter of events for ${revision} (e.g. false "
        "positives); with 'requests', the rate events/requests is compared with the "
        "baseline's by the sequential test.",
    )
    requests: str | None = Field(
        default=None,
        description="PromQL template of the counter the events are a share of (e.g. "
        "legitimate transactions scored).",
    )
    direction: Direction | None = None
    absolute_limit: float | None = Field(
        default=None, description="The canary fails when its value is beyond this."
    )
    relative_tolerance: float | None = Field(
        default=None,
        gt=0,
        description="The canary fails when it is worse than the baseline by more than this "
        "fraction (0.1 = 10%).",
    )
    hard_limit: float | None = Field(
        default=None, description="An SLO ceiling: one evaluation beyond it fails at once."
    )
    min_samples: int = Field(default=100, ge=0)
    on_no_data: NoDataPolicy = NoDataPolicy.INCONCLUSIVE
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=0, ge=0)
    consecutive_error_limit: int = Field(default=4, ge=0)
    dry_run: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        if not DNS_LABEL.match(value) or len(value) > 63:
            raise ValueError(
                "must be a lowercase DNS label: letters, digits and '-', at most 63 characters"
            )
        return value

    @field_validator("builtin")
    @classmethod
    def _builtin_known(cls, value: str | None) -> str | None:
        if value is not None and value in SHADOW_BUILTINS:
            field = _SHADOW_FIELDS[value]
            raise ValueError(
                f"{value} is not a check a policy can list: it compares a challenger "
                "InferenceService's outputs with the champion's during the shadow phase, and "
                f"is generated from shadow.{field}; set that instead"
            )
        if value is not None and value not in BUILTIN_CHECKS:
            raise ValueError(f"unknown built-in check; allowed: {', '.join(BUILTIN_CHECKS)}")
        return value

    @field_validator("query", "events", "requests")
    @classmethod
    def _query_variables_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        template = string.Template(value)
        if not template.is_valid():
            raise ValueError(
                "has a '$' that is not a template variable; write variables as ${name} and "
                "a literal dollar sign as $$"
            )
        unknown = sorted(set(template.get_identifiers()) - set(TEMPLATE_VARIABLES))
        if unknown:
            raise ValueError(
                f"uses unknown template variable(s) {', '.join(unknown)}; allowed: "
                + ", ".join(f"${{{v}}}" for v in TEMPLATE_VARIABLES)
            )
        return value

    @field_validator("events", "requests")
    @classmethod
    def _counter_label_free(cls, value: str | None) -> str | None:
        if value is not None and COUNTER_PART_LABEL in value:
            raise ValueError(
                f"must not use the label {COUNTER_PART_LABEL!r}: the controller adds it to "
                "read the events and requests counters in one query"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.events is None) != (self.requests is None):
            raise ValueError("'events' and 'requests' go together: the rate is events/requests")
        kinds = [self.builtin is not None, self.query is not None, self.events is not None]
        if sum(kinds) != 1:
            raise ValueError(
                "set exactly one of 'builtin' (a built-in check), 'query' (PromQL, one value "
                "per revision) or 'events' with 'requests' (two counters per revision)"
            )
        if self.query is not None and self.direction is None:
            raise ValueError("a custom query needs 'direction': lowerIsBetter or higherIsBetter")
        if self.events is not None:
            if self.direction is Direction.HIGHER_IS_BETTER:
                raise ValueError(
                    "an events/requests check judges a rate that must not rise; for a rate "
                    "that must not fall, count its complement (e.g. declines, not approvals)"
                )
            if self.relative_tolerance is None:
                raise ValueError(
                    "an events/requests check needs 'relativeTolerance': how much the rate "
                    "may rise over the baseline's (0.1 = 10%)"
                )
        if (
            self.absolute_limit is None
            and self.relative_tolerance is None
            and (self.hard_limit is None)
        ):
            raise ValueError(
                "set at least one threshold: absoluteLimit, relativeTolerance or hardLimit"
            )
        return self

    @property
    def effective_direction(self) -> Direction:
        if self.direction is not None:
            return self.direction
        if self.events is not None:
            return Direction.LOWER_IS_BETTER
        assert self.builtin is not None  # guaranteed by the validator
        return BUILTIN_CHECKS[self.builtin]

    def render(self, variables: Mapping[str, str]) -> str:
        """Fill a custom query's template. Only for ``query`` checks."""
        if self.query is None:
            raise ValueError(f"check {self.name!r} is built-in; its query comes from a profile")
        return string.Template(self.query).substitute(variables)


def _default_checks() -> tuple[CheckSpec, ...]:
    return (
        CheckSpec(name="error-rate", builtin="error-rate", relative_tolerance=0.5),
        CheckSpec(name="latency-p99", builtin="latency-p99", relative_tolerance=0.2),
    )


# ---------------------------------------------------------------------------------------
# Approvals
# ---------------------------------------------------------------------------------------


class ApprovalGateKind(StrEnum):
    NONE = "none"
    WEBHOOK = "webhook"  # a firm's own change system posts a signed approve/reject
    SERVICENOW = "servicenow"  # a normal change request in ServiceNow
    KUBERNETES = "kubernetes"  # `canary approve|reject`, identity and groups from the cluster


class ApprovalPolicy(_Model):
    gate: ApprovalGateKind = ApprovalGateKind.NONE
    before_step: int = Field(
        default=100,
        description="Approval is needed before traffic reaches this step (a value in steps).",
    )
    risk_owner_group: str | None = Field(
        default=None,
        max_length=255,
        description="Who may approve: the ServiceNow group (servicenow gate, also the change's "
        "assignment group), the Kubernetes group (kubernetes gate), or a label for the "
        "approvers list (webhook gate).",
    )
    approvers: tuple[str, ...] = Field(
        default=(),
        max_length=200,
        description="webhook gate only: the identities (as the change system signs them, e.g. "
        "e-mail addresses) whose decisions count.",
    )
    deadline: Duration = timedelta(hours=24)
    on_expiry: Literal["hold", "rollback"] = "hold"

    @field_validator("approvers")
    @classmethod
    def _approvers_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for approver in value:
            if not approver.strip() or len(approver) > 256 or approver != approver.strip():
                raise ValueError(
                    f"approver {approver!r} must be a non-empty identity of at most 256 "
                    "characters without surrounding spaces"
                )
            if approver.casefold() in seen:
                raise ValueError(f"approver {approver!r} is listed twice")
            seen.add(approver.casefold())
        return value

    @model_validator(mode="after")
    def _group_required(self) -> Self:
        if self.gate is not ApprovalGateKind.NONE and not self.risk_owner_group:
            raise ValueError(f"gate {self.gate.value!r} needs 'riskOwnerGroup': who may approve")
        if self.gate is ApprovalGateKind.WEBHOOK and not self.approvers:
            raise ValueError(
                "gate 'webhook' needs 'approvers': the identities whose signed decisions count"
            )
        if self.approvers and self.gate is not ApprovalGateKind.WEBHOOK:
            raise ValueError(
                f"'approvers' applies to gate 'webhook' only; gate {self.gate.value!r} takes its "
                "approvers from 'riskOwnerGroup'"
            )
        if self.deadline <= timedelta(0):
            raise ValueError("'deadline' must be longer than 0s")
        return self

    @property
    def required(self) -> bool:
        return self.gate is not ApprovalGateKind.NONE


# ---------------------------------------------------------------------------------------
# Promotion windows and freezes
# ---------------------------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _parse_hhmm(value: object) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:00 as a sexagesimal integer (540).
        hours, minutes = divmod(value, 60)
        if 0 <= hours < 24:
            return time(hours, minutes)
    if isinstance(value, str):
        match = _HHMM.match(value.strip())
        if match:
            return time(int(match.group(1)), int(match.group(2)))
    raise ValueError('must be a time of day "HH:MM" (24-hour clock), e.g. "09:00"')


TimeOfDay = Annotated[
    time,
    BeforeValidator(_parse_hhmm),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
]


class PromotionWindow(_Model):
    days: tuple[Weekday, ...] = WEEKDAYS
    start: TimeOfDay
    end: TimeOfDay

    @field_validator("days", mode="before")
    @classmethod
    def _lower_days(cls, value: object) -> object:
        # Accept full day names ("Monday") as well as the three-letter form.
        full = {
            "monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu",
            "friday": "fri", "saturday": "sat", "sunday": "sun",
        }  # fmt: skip
        if isinstance(value, list | tuple):
            return tuple(
                full.get(d.strip().lower(), d.strip().lower()) if isinstance(d, str) else d
                for d in value
            )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("'start' and 'end' are equal: the window would be empty")
        if not self.days:
            raise ValueError("'days' is empty: the window would never open")
        return self

    def contains(self, local: datetime) -> bool:
        """Whether a local (policy time zone) wall-clock time is inside this window.

        A window whose end is before its start crosses midnight; it belongs to the day on
        which it starts.
        """
        t = local.time().replace(tzinfo=None)
        today = WEEKDAYS[local.weekday()]
        if self.start < self.end:
            return today in self.days and self.start <= t < self.end
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return (today in self.days and t >= self.start) or (yesterday in self.days and t < self.end)


class Freeze(_Model):
    start: datetime
    end: datetime
    reason: str = "change freeze"

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (
            self.start.tzinfo is not None
            and self.end.tzinfo is not None
            and (self.end <= self.start)
        ):
            raise ValueError("'end' must be after 'start'")
        return self


class Schedule(_Model):
    """When a rollout may advance. Rollbacks are never held back by the schedule."""

    timezone: str = "UTC"
    windows: tuple[PromotionWindow, ...] = ()
    freezes: tuple[Freeze, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                "unknown time zone; use an IANA name such as UTC, Europe/London or America/New_York"
            ) from exc
        return value

    @model_validator(mode="after")
    def _freezes_in_zone(self) -> Self:
        # A freeze written without an offset is read in the schedule's time zone.
        zone = ZoneInfo(self.timezone)
        fixed = []
        for freeze in self.freezes:
            start = freeze.start if freeze.start.tzinfo else freeze.start.replace(tzinfo=zone)
            end = freeze.end if freeze.end.tzinfo else freeze.end.replace(tzinfo=zone)
            if end <= start:
                raise ValueError(f"freeze {freeze.reason!r}: 'end' must be after 'start'")
            fixed.append(freeze.model_copy(update={"start": start, "end": end}))
        object.__setattr__(self, "freezes", tuple(fixed))
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def freeze_at(self, at: datetime) -> Freeze | None:
        _require_aware(at)
        for freeze in self.freezes:
            if freeze.start <= at < freeze.end:
                return freeze
        return None

    def is_open(self, at: datetime) -> bool:
        """Whether a rollout may advance at ``at`` (an aware datetime)."""
        if self.freeze_at(at) is not None:
            return False
        if not self.windows:
            return True
        local = at.astimezone(self.zone)
        return any(w.contains(local) for w in self.windows)

    def next_open(self, at: datetime, horizon: timedelta = timedelta(days=400)) -> datetime | None:
        """The earliest instant at or after ``at`` when the schedule is open.

        Candidates are ``at`` itself, every window start and every freeze end; the first
        candidate that is open wins. Returns None if nothing opens within the horizon.
        """
        _require_aware(at)
        if self.is_open(at):
            return at
        candidates: set[datetime] = {f.end for f in self.freezes if f.end > at}
        zone = self.zone
        local_day: date = at.astimezone(zone).date()
        days = min(horizon.days + 1, 400)
        for offset in range(-1, days):
            day = local_day + timedelta(days=offset)
            for window in self.windows:
                if WEEKDAYS[day.weekday()] in window.days:
                    # fold=0 and a round trip through UTC resolve DST gaps and overlaps.
                    start = datetime.combine(day, window.start, tzinfo=zone)
                    start_utc = start.astimezone(ZoneInfo("UTC"))
                    if start_utc > at:
                        candidates.add(start_utc)
        limit = at + horizon
        for candidate in sorted(candidates):
            if candidate > limit:
                break
            if self.is_open(candidate):
                return candidate
        return None

    def describe_closed(self, at: datetime) -> str:
        freeze = self.freeze_at(at)
        opens = self.next_open(at)
        when = opens.isoformat() if opens else "not within 400 days"
        if freeze is not None:
            return f"change freeze ({freeze.reason}) until {freeze.end.isoformat()}; opens {when}"
        return f"outside the promotion windows ({self.timezone}); next opens {when}"


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("times must be timezone-aware")


# ---------------------------------------------------------------------------------------
# Shadow: mirror live traffic to a challenger and compare before (or instead of) a canary
# ---------------------------------------------------------------------------------------


class ShadowPolicy(_Model):
    """The shadow phase: a share of the champion's live requests is copied to the challenger
    (a separate InferenceService named by ``kserve-canary.io/challenger``, or in Standard
    mode the new canary entry held at 0 %), whose answers are discarded and compared with
    the champion's."""

    enabled: bool = False
    mirror_percent: int = Field(
        default=100, ge=1, le=100, description="The share of live requests copied."
    )
    duration: Duration = Field(
        default=timedelta(minutes=10),
        description="The shortest shadow phase: the comparison is judged only after it.",
    )
    timeout: Duration | None = Field(
        default=None,
        description="When the comparison has not decided by then (default 3 x duration), a "
        "gating shadow pauses for a human and a reporting one ends inconclusive.",
    )
    min_samples: int = Field(
        default=200,
        ge=1,
        le=10_000_000,
        description="Mirrored requests (and, for the output checks, paired responses) the "
        "comparison needs before it can pass.",
    )
    after: Literal["gate", "report"] = Field(
        default="gate",
        description="gate: the canary (or, for a challenger InferenceService, the canary of "
        "its model on the champion) starts only if the comparison passes; report: the "
        "comparison is recorded and decides nothing.",
    )
    min_agreement: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Decision agreement the challenger must show on the same requests "
        "(payload-logger pairs; challenger InferenceServices only).",
    )
    max_score_shift: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="Largest population stability index between the champion's and the "
        "challenger's scores on the same requests (0.1 minor, 0.25 major).",
    )
    max_predictions_per_request: int = Field(
        default=1,
        ge=1,
        le=100_000,
        description="The most predictions one request carries (a batch of k is k pairs): "
        "the output checks refuse, as inconsistent evidence, more pairs than this many per "
        "request the challenger served.",
    )
    max_error_rate: float | None = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Ceiling: mirroring stops at once when the challenger's error rate "
        "exceeds it, so a failing challenger adds no load.",
    )
    max_latency_p99: Duration | None = Field(
        default=timedelta(seconds=5),
        description="Ceiling: mirroring stops at once when the challenger's p99 latency "
        "exceeds it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (
            "requiredBeforeCanary" in data or "required_before_canary" in data
        ):
            raise ValueError(
                "requiredBeforeCanary was replaced by after: gate (the canary waits for a "
                "passing comparison) or after: report (the comparison only reports)"
            )
        return data

    @model_validator(mode="after")
    def _timeout_after_duration(self) -> ShadowPolicy:
        if self.timeout is not None and self.timeout < self.duration:
            raise ValueError(
                f"timeout ({format_duration(self.timeout)}) must not be shorter than duration "
                f"({format_duration(self.duration)})"
            )
        if self.max_latency_p99 is not None and self.max_latency_p99 <= timedelta(0):
            raise ValueError("maxLatencyP99 must be positive")
        return self

    @property
    def deadline(self) -> timedelta:
        """How long the comparison may take to decide."""
        return self.timeout if self.timeout is not None else self.duration * 3

    @property
    def gates(self) -> bool:
        """Whether a passing comparison is required before live traffic."""
        return self.enabled and self.after == "gate"


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------

MetricProfile = Literal["knative-otel", "knative-opencensus", "istio", "kserve-model-server"]


class RolloutPolicy(_Model):
    name: str
    steps: tuple[int, ...] = (10, 25, 50, 100)
    step_hold: Duration = timedelta(minutes=5)
    max_step_duration: Duration | None = Field(
        default=None,
        description="How long a step may extend while evidence is insufficient before the "
        "rollout pauses for a human. Defaults to 3 x stepHold.",
    )
    analysis_interval: Duration = timedelta(seconds=30)
    revision_ready_timeout: Duration = timedelta(minutes=10)
    traffic_timeout: Duration = Field(
        default=timedelta(minutes=2),
        description="How long a traffic change may take to show in the InferenceService "
        "status before the rollout rolls back.",
    )
    metric_profile: MetricProfile = "knative-otel"
    checks: tuple[CheckSpec, ...] = Field(default_factory=_default_checks)
    false_rollback_rate: float = Field(
        default=0.01,
        gt=0,
        lt=0.5,
        description="The chance, over a whole rollout and however often it is analysed, that "
        "the sequential tests roll back a canary that is no worse than its baseline; split "
        "evenly among the gating checks with a relative tolerance.",
    )
    false_promotion_rate: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="The chance, per check, that a step advances although the canary is worse "
        "than the check's tolerance.",
    )
    progression: Literal["evidence", "power"] = Field(
        default="evidence",
        description="evidence: a step advances only when the data rule out a regression "
        "beyond each tolerance. power: it may also advance after the hold when no regression "
        "was found and the samples had 80% power against twice the tolerance.",
    )
    approval: ApprovalPolicy = ApprovalPolicy()
    schedule: Schedule = Schedule()
    shadow: ShadowPolicy = ShadowPolicy()
    after_rollback: Literal["revert", "record"] = Field(
        default="revert",
        description="What the controller does when, after a rollback, traffic is given to "
        "the rolled-back revision again (by hand, by GitOps): revert puts it back to 0%; "
        "record only records it. Either way it is a traffic.drift record and a Warning Event.",
    )
    on_opt_out: Literal["return-to-stable", "leave"] = Field(
        default="return-to-stable",
        description="What the controller does when the opt-in annotation is removed or set "
        'to "false" during a rollout: return-to-stable gives the canary 0% before it stops '
        "managing the service; leave stops with the traffic as it stands. Either way the "
        "rollout ends as OptedOut, recorded, with an Event.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        if not DNS_LABEL.match(value) or len(value) > 63:
            raise ValueError(
                "must be a lowercase DNS label: letters, digits and '-', at most 63 characters"
            )
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_are_integers(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise ValueError(
                        "steps must be whole percentages (integers 1..100), e.g. [10, 25, 50, 100]"
                    )
        return value

    @field_validator("steps")
    @classmethod
    def _steps_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) < 2:
            raise ValueError("needs at least one canary step before 100, e.g. [10, 100]")
        if any(s < 1 or s > 100 for s in value):
            raise ValueError("every step must be between 1 and 100")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("steps must be strictly increasing")
        if value[-1] != 100:
            raise ValueError("the last step must be 100 (promotion)")
        return value

    @field_validator("checks")
    @classmethod
    def _unique_check_names(cls, value: tuple[CheckSpec, ...]) -> tuple[CheckSpec, ...]:
        seen: set[str] = set()
        for check in value:
            if check.name in seen:
                raise ValueError(f"check name {check.name!r} is used twice; names must be unique")
            seen.add(check.name)
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        if self.approval.required and self.approval.before_step not in self.steps:
            raise ValueError(
                f"approval.beforeStep {self.approval.before_step} is not one of the steps "
                f"{list(self.steps)}"
            )
        if self.step_hold < self.analysis_interval:
            raise ValueError(
                f"stepHold ({format_duration(self.step_hold)}) is shorter than analysisInterval "
                f"({format_duration(self.analysis_interval)}): a step would end before its "
                "first analysis"
            )
        if self.analysis_interval <= timedelta(0):
            raise ValueError("analysisInterval must be longer than 0s")
        if self.max_step_duration is not None and self.max_step_duration < self.step_hold:
            raise ValueError("maxStepDuration must not be shorter than stepHold")
        generated = {
            "decision-agreement": self.shadow.min_agreement is not None,
            "score-shift": self.shadow.max_score_shift is not None,
        }
        for check in self.checks:
            if generated.get(check.name):
                raise ValueError(
                    f"check name {check.name!r} is taken while shadow."
                    f"{_SHADOW_FIELDS[check.name]} is set: the shadow phase adds its own "
                    f"check shadow-{check.name}, and the policy's checks run there as "
                    "shadow-<name> too; rename the check"
                )
        if not any(not c.dry_run for c in self.checks):
            raise ValueError(
                "at least one check must gate the rollout (not dryRun): a rollout with no "
                "gating check would promote on no evidence"
            )
        return self

    @property
    def step_deadline(self) -> timedelta:
        """How long a step may last before insufficient evidence pauses the rollout."""
        return self.max_step_duration or self.step_hold * 3

    @property
    def first_step(self) -> int:
        return self.steps[0]

    def needs_approval_for(self, percent: int) -> bool:
        return self.approval.required and percent >= self.approval.before_step


# ---------------------------------------------------------------------------------------
# Loading and error reporting
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyProblem:
    """One validation problem, phrased for the person who wrote the policy."""

    source: str
    policy: str | None
    path: str
    value: object
    message: str

    def __str__(self) -> str:
        where = self.source + (f": policy {self.policy!r}" if self.policy else "")
        field = f" field {self.path}:" if self.path else ""
        shown = "" if self.value is _MISSING else f" (got {_show(self.value)})"
        return f"{where}:{field} {self.message}{shown}"


class PolicyError(Exception):
    """Raised when policies cannot be loaded; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_fields(model: type[BaseModel], loc: Sequence[int | str]) -> list[str] | None:
    """Walk a model along an error location to list the keys allowed at that place."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for n, f in current.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def problems_from(
    error: ValidationError, *, source: str, policy: str | None, model: type[BaseModel]
) -> list[PolicyProblem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc[:-1])
            message = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif item["type"] == "missing":
            message = "required field is missing"
        value = _MISSING if item["type"] == "missing" else item.get("input", _MISSING)
        if item["type"] in {"model_type", "model_attributes_type"}:
            message = "must be a mapping of fields"
        problems.append(
            PolicyProblem(source=source, policy=policy, path=path, value=value, message=message)
        )
    return problems


class PolicySet:
    """Policies by name, as loaded from a file or a directory."""

    def __init__(self, policies: Iterable[RolloutPolicy], sources: Mapping[str, str]) -> None:
        self._policies = {p.name: p for p in policies}
        self._sources = dict(sources)

    def __contains__(self, name: object) -> bool:
        return name in self._policies

    def __iter__(self) -> Iterator[RolloutPolicy]:
        return iter(self._policies.values())

    def __len__(self) -> int:
        return len(self._policies)

    def names(self) -> list[str]:
        return sorted(self._policies)

    def source_of(self, name: str) -> str:
        return self._sources[name]

    def get(self, name: str) -> RolloutPolicy:
        try:
            return self._policies[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown policy {name!r}; known policies: {known}") from None


def _policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        # A ConfigMap mount holds ..data symlinks and dot-directories; skip hidden entries.
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".") and p.is_file()
        )
    return [path]


def load_policies(path: str | Path) -> PolicySet:
    """Load and validate every policy under ``path``. Raises PolicyError listing all problems."""
    root = Path(path)
    if not root.exists():
        raise PolicyError(
            [PolicyProblem(str(root), None, "", _MISSING, "no such file or directory")]
        )
    files = _policy_files(root)
    if not files:
        raise PolicyError(
            [
                PolicyProblem(
                    str(root), None, "", _MISSING, "directory holds no *.yaml or *.yml file"
                )
            ]
        )
    problems: list[PolicyProblem] = []
    policies: list[RolloutPolicy] = []
    sources: dict[str, str] = {}
    for file in files:
        source = str(file)
        try:
            documents = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(source, None, "", _MISSING, f"cannot read: {exc}"))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(exc, "problem", None) or str(exc)
            problems.append(
                PolicyProblem(source, None, "", _MISSING, f"invalid YAML{where}: {reason}")
            )
            continue
        items: list[object] = []
        for document in documents:
            if document is None:
                continue
            if isinstance(document, list):
                items.extend(document)
            else:
                items.append(document)
        for index, item in enumerate(items):
            label = f"{source}[{index}]" if len(items) > 1 else source
            if not isinstance(item, dict):
                problems.append(
                    PolicyProblem(label, None, "", item, "a policy must be a mapping of fields")
                )
                continue
            name = item.get("name")
            shown_name = name if isinstance(name, str) else None
            try:
                policy = RolloutPolicy.model_validate(item)
            except ValidationError as exc:
                problems.extend(
                    problems_from(exc, source=label, policy=shown_name, model=RolloutPolicy)
                )
                continue
            if policy.name in sources:
                problems.append(
                    PolicyProblem(
                        label,
                        policy.name,
                        "name",
                        policy.name,
                        f"policy name already defined in {sources[policy.name]}",
                    )
                )
                continue
            sources[policy.name] = label
            policies.append(policy)
    if problems:
        raise PolicyError(problems)
    return PolicySet(policies, sources)
