"""PromQL for each check, per metric profile and deployment mode (KSERVE.md §4).

PURE. :func:`plan` turns a check and a subject into a :class:`QueryPlan`: the value query
and the sample-count query. A built-in check's value query is ONE query grouped by the
profile's identity label, selecting canary and baseline with one regex matcher, so it
returns both series and the number of queries does not grow with revisions. Latencies are
always in seconds (the millisecond histograms of Istio and OpenCensus are divided by 1000).

=====================  ================================  ===================================
profile                identity label (Knative/Standard)  series
=====================  ================================  ===================================
knative-otel           ``revision`` (Knative only)        ``http_server_request_duration_
                                                          seconds_count`` (requests, 5xx),
                                                          ``kn_serving_invocation_duration_
                                                          seconds`` (latency)
knative-opencensus     ``revision_name`` (Knative only)   ``revision_request_count``,
                                                          ``revision_request_latencies`` (ms)
istio                  ``destination_workload``:          ``istio_requests_total``,
                       ``<revision>-deployment`` /        ``istio_request_duration_
                       ``<deployment>``                   milliseconds``
kserve-model-server    ``revision`` / ``app`` =           ``request_predict_seconds``; no
                       ``isvc.<deployment>``              status code, so no error rate
=====================  ================================  ===================================

The ``namespace``, ``container``, ``revision`` and ``app`` labels are scrape-time labels
(a PodMonitor's relabeling), as KSERVE.md §4 assumes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from analysis.types import CheckDefinition, Subject

__all__ = [
    "COUNTER_PARTS",
    "COUNTER_PART_LABEL",
    "TEMPLATE_VARIABLES",
    "ProfileSeries",
    "QueryPlan",
    "Unit",
    "counter_query",
    "identity",
    "label_matcher",
    "plan",
    "promql_duration",
    "regex_escape",
    "render_template",
    "request_count_query",
    "requests_since_query",
    "series_of",
    "string_literal",
    "template_variables",
]

TEMPLATE_VARIABLES = (
    "namespace",
    "isvc",
    "revision",
    "canary_revision",
    "baseline_revision",
    "window",
)

Side = Literal["canary", "baseline"]


class Unit(StrEnum):
    """What a check's values measure; used to write them in messages."""

    SECONDS = "seconds"
    RATIO = "ratio"
    PER_SECOND = "per-second"
    NUMBER = "number"


_BUILTIN_UNITS = {
    "error-rate": Unit.RATIO,
    "latency-p99": Unit.SECONDS,
    "request-rate": Unit.PER_SECOND,
}


@dataclass(frozen=True)
class QueryPlan:
    """The queries of one check for one subject.

    A built-in check has ``value``: one query whose series carry ``identity_label`` equal to
    ``canary_id`` or ``baseline_id``. A custom check has ``canary_value`` and
    ``baseline_value``: its template rendered for each side, one series each. ``samples``
    is always a grouped query: requests per side in the window."""

    check: str
    unit: Unit
    identity_label: str
    canary_id: str
    baseline_id: str
    samples: str
    value: str | None = None
    canary_value: str | None = None
    baseline_value: str | None = None

    @property
    def queries(self) -> tuple[str, ...]:
        """Every query of the plan, in the order they are sent."""
        values = (self.value, self.canary_value, self.baseline_value)
        return (*(query for query in values if query is not None), self.samples)


# --- PromQL text --------------------------------------------------------------------------

_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def regex_escape(text: str) -> str:
    """``text`` as a literal inside a (RE2) regular expression."""
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


def string_literal(text: str) -> str:
    """``text`` as a double-quoted PromQL string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def promql_duration(window: timedelta) -> str:
    """A positive duration in PromQL's syntax, in its largest whole unit: ``90s``, ``2m``,
    ``1h``, ``1500ms``."""
    millis, remainder = divmod(window, timedelta(milliseconds=1))
    if millis <= 0 or remainder:
        raise ValueError(f"a PromQL window must be a positive whole number of ms, got {window}")
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


# --- profiles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSeries:
    """Where one profile keeps its request counter and latency histogram, in one mode.
    The matchers exclude the namespace, which is ``namespace_label``."""

    namespace_label: str
    identity_label: str
    requests: str  # a counter of requests (a histogram's _count counts too)
    request_matchers: tuple[str, ...]  # besides the namespace and identity matchers
    errors: str | None  # the matcher that keeps 5xx responses; None: no status code
    histogram: str  # base name: _bucket and _count are appended
    latency_matchers: tuple[str, ...]
    milliseconds: bool


_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')


def label_matcher(matcher: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate that keeps the series PromQL's ``matcher`` (``name="v"``, ``!=``, ``=~``,
    ``!~``) keeps, for matching series already read (regular expressions are anchored at
    both ends, as PromQL's are). The profiles' own matchers only; a ValueError for any
    other form."""
    found = _MATCHER.match(matcher)
    if found is None:
        raise ValueError(f"not a label matcher: {matcher!r}")
    name, op, quoted = found.groups()
    value = re.sub(r"\\(.)", r"\1", quoted)
    if op in {"=~", "!~"}:
        pattern = re.compile(value)
        keep = op == "=~"
        return lambda labels: (pattern.fullmatch(labels.get(name, "")) is not None) == keep
    if op == "=":
        return lambda labels: labels.get(name, "") == value
    return lambda labels: labels.get(name, "") != value


def identity(subject: Subject, revision: str) -> str:
    """The identity label's value for ``revision`` under the subject's profile and mode."""
    if subject.metric_profile == "istio" and subject.mode == "knative":
        return f"{revision}-deployment"
    if subject.metric_profile == "kserve-model-server" and subject.mode == "standard":
        return f"isvc.{revision}"
    return revision


def series_of(profile: str, mode: str) -> ProfileSeries:
    """The series of ``profile`` in ``mode``; a ValueError when they cannot go together."""
    if profile in {"knative-otel", "knative-opencensus"} and mode != "knative":
        raise ValueError(
            f"metric profile {profile} reads Knative's queue-proxy, which Standard-mode "
            "InferenceServices do not have; use istio or kserve-model-server"
        )
    if profile == "knative-otel":
        return ProfileSeries(
            namespace_label="namespace",
            identity_label="revision",
            requests="http_server_request_duration_seconds_count",
            request_matchers=('container="queue-proxy"',),
            errors='http_response_status_code=~"5.."',
            histogram="kn_serving_invocation_duration_seconds",
            latency_matchers=(),
            milliseconds=False,
        )
    if profile == "knative-opencensus":
        return ProfileSeries(
            namespace_label="namespace_name",
            identity_label="revision_name",
            requests="revision_request_count",
            request_matchers=(),
            errors='response_code_class="5xx"',
            histogram="revision_request_latencies",
            latency_matchers=(),
            milliseconds=True,
        )
    if profile == "istio":
        return ProfileSeries(
            namespace_label="destination_workload_namespace",
            identity_label="destination_workload",
            requests="istio_requests_total",
            request_matchers=('reporter="destination"',),
            errors='response_code=~"5.."',
            histogram="istio_request_duration_milliseconds",
            latency_matchers=('reporter="destination"',),
            milliseconds=True,
        )
    if profile == "kserve-model-server":
        return ProfileSeries(
            namespace_label="namespace",
            identity_label="revision" if mode == "knative" else "app",
            requests="request_predict_seconds_count",
            request_matchers=(),
            errors=None,
            histogram="request_predict_seconds",
            latency_matchers=(),
            milliseconds=False,
        )
    raise ValueError(f"unknown metric profile {profile!r}")


@dataclass(frozen=True)
class _Series:
    """A profile's series with the subject's namespace matcher in front."""

    identity_label: str
    requests: str
    request_matchers: tuple[str, ...]
    errors: str | None
    histogram: str
    latency_matchers: tuple[str, ...]
    milliseconds: bool


def _series(subject: Subject) -> _Series:
    s = series_of(subject.metric_profile, subject.mode)
    namespace = f"{s.namespace_label}={string_literal(subject.namespace)}"
    return _Series(
        identity_label=s.identity_label,
        requests=s.requests,
        request_matchers=(*s.request_matchers[:1], namespace, *s.request_matchers[1:])
        if s.namespace_label == "destination_workload_namespace"
        else (namespace, *s.request_matchers),
        errors=s.errors,
        histogram=s.histogram,
        latency_matchers=(*s.latency_matchers[:1], namespace, *s.latency_matchers[1:])
        if s.namespace_label == "destination_workload_namespace"
        else (namespace, *s.latency_matchers),
        milliseconds=s.milliseconds,
    )


class _Builder:
    """The PromQL of one profile for one subject."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.series = _series(subject)
        self.canary_id = identity(subject, subject.canary_revision)
        self.baseline_id = identity(subject, subject.baseline_revision)
        self.window = promql_duration(subject.window)
        both = f"{regex_escape(self.canary_id)}|{regex_escape(self.baseline_id)}"
        self.identity_matcher = f"{self.series.identity_label}=~{string_literal(both)}"

    def _selector(self, matchers: tuple[str, ...], *extra: str, only: str | None = None) -> str:
        """Both revisions' series, or only the one whose identity is ``only``."""
        identity = self.identity_matcher
        if only is not None:
            identity = f"{self.series.identity_label}={string_literal(only)}"
        return "{" + ",".join((*matchers, identity, *extra)) + "}"

    def _sum(self, function: str, metric: str, selector: str, by: str = "") -> str:
        labels = self.series.identity_label + by
        return f"sum by ({labels}) ({function}({metric}{selector}[{self.window}]))"

    def request_rate(self) -> str:
        s = self.series
        return self._sum("rate", s.requests, self._selector(s.request_matchers))

    def request_count(self) -> str:
        s = self.series
        return self._sum("increase", s.requests, self._selector(s.request_matchers))

    def error_rate(self) -> str:
        s = self.series
        if s.errors is None:
            raise ValueError(
                f"the error-rate check is not available with metric profile "
                f"{self.subject.metric_profile}: its series carry no status code; use "
                "istio, or a custom query on a metric that counts errors"
            )
        errors = self._sum("rate", s.requests, self._selector(s.request_matchers, s.errors))
        total = self.request_rate()
        # A revision without a single 5xx has no 5xx series; `or total * 0` gives it 0
        # rather than dropping it from the result (which would read as "no data").
        return f"({errors} or ({total} * 0)) / {total}"

    def latency_p99(self) -> str:
        s = self.series
        buckets = self._sum(
            "rate", f"{s.histogram}_bucket", self._selector(s.latency_matchers), by=", le"
        )
        query = f"histogram_quantile(0.99, {buckets})"
        return f"{query} / 1000" if s.milliseconds else query

    def latency_count(self) -> str:
        s = self.series
        return self._sum("increase", f"{s.histogram}_count", self._selector(s.latency_matchers))

    def requests_since(self) -> str:
        s = self.series
        counter = f"{s.requests}{self._selector(s.request_matchers)}"
        counted = f"increase({counter}[{self.window}])"
        # The canary's series with no sample at the window's start began within it, from
        # zero: add its first value, which increase() leaves out.
        canary = f"{s.requests}{self._selector(s.request_matchers, only=self.canary_id)}"
        began = f"(min_over_time({canary}[{self.window}]) unless {canary} offset {self.window})"
        return f"sum by ({s.identity_label}) (({counted} + {began}) or {counted} or {began})"

    def variables(self, revision: str) -> dict[str, str]:
        return template_variables(self.subject, revision)


def request_count_query(subject: Subject) -> tuple[str, str]:
    """The requests the canary and the baseline served over the subject's window (the
    profile's request counter under ``increase()``: the sample count of the error-rate and
    request-rate checks), one series per side, and the label that tells them apart (its
    values are :func:`identity` of each revision). A ValueError when the profile cannot be
    used in the subject's mode."""
    build = _Builder(subject)
    return build.request_count(), build.series.identity_label


def requests_since_query(subject: Subject) -> tuple[str, str]:
    """The requests the canary and the baseline served since the start of the subject's
    window, the canary's counted whole even when its series began within the window: the
    bound for a count of what the canary answered (a shadow's pairs). Returns the query and
    the label that tells the sides apart, as :func:`request_count_query` does.

    ``increase()`` alone reads a series born within the window without its first value. A
    challenger with no traffic of its own gets its request counter's series at its first
    mirrored request, and the requests it served before Prometheus' first scrape of that
    series (one scrape interval's traffic; several when scrapes fail) would be missing:
    early in a shadow phase, a large share of the window. So a canary series with no
    sample at the window's start (none within Prometheus' lookback before it) is counted
    from zero: ``increase()`` plus its lowest value in the window (its first, unless its
    process restarted), or that one value when it has a single sample. This can read more
    than was served by what ``increase()`` extrapolates towards the window's start (about
    half a scrape interval's traffic), and by everything the canary served before the
    window if Prometheus had lost its series for the whole lookback before it. The
    baseline's count is ``increase()``'s. A ValueError when the profile cannot be used in
    the subject's mode."""
    build = _Builder(subject)
    return build.requests_since(), build.series.identity_label


def template_variables(subject: Subject, revision: str) -> dict[str, str]:
    """The values of a custom template's variables, for one revision of ``subject``."""
    return {
        "namespace": subject.namespace,
        "isvc": subject.isvc,
        "revision": revision,
        "canary_revision": subject.canary_revision,
        "baseline_revision": subject.baseline_revision,
        "window": promql_duration(subject.window),
    }


def render_template(template: str, variables: dict[str, str]) -> str:
    """Fill a custom query's ``${name}`` variables; unknown ones are a ValueError."""
    try:
        return string.Template(template).substitute(variables)
    except KeyError as exc:
        raise ValueError(
            f"unknown template variable ${{{exc.args[0]}}}; allowed: "
            + ", ".join(f"${{{name}}}" for name in TEMPLATE_VARIABLES)
        ) from None
    except ValueError as exc:  # a "$" that is not a variable
        raise ValueError(f"invalid query template: {exc}") from None


COUNTER_PART_LABEL = "ksc_counter"
"""The label :func:`counter_query` adds to tell its four parts apart in the one answer."""

COUNTER_PARTS: tuple[str, str, str, str] = (
    "canary_events",
    "canary_requests",
    "baseline_events",
    "baseline_requests",
)


def counter_query(check: CheckDefinition, subject: Subject) -> str:
    """An events/requests check's one query: the events and requests templates rendered
    for the canary and for the baseline, each tagged with :data:`COUNTER_PART_LABEL`
    (values :data:`COUNTER_PARTS`) and joined with ``or``.

    One query, not four, because Prometheus answers one query from one consistent view:
    a target's scrape is seen whole or not at all (TSDB isolation). Four queries can each
    see a different set of scrapes, and a canary whose events counter was read one scrape
    later than its requests counter looks, for that interval, as if its rate had jumped,
    which is exactly what the sequential test is built to notice."""
    if check.events is None or check.requests is None:
        raise ValueError(f"check {check.name!r} has no events/requests templates")
    canary = template_variables(subject, subject.canary_revision)
    baseline = template_variables(subject, subject.baseline_revision)
    rendered = (
        render_template(check.events, canary),
        render_template(check.requests, canary),
        render_template(check.events, baseline),
        render_template(check.requests, baseline),
    )
    label = string_literal(COUNTER_PART_LABEL)
    return "\nor\n".join(
        f'label_replace({query}, {label}, {string_literal(part)}, "", "")'
        for part, query in zip(COUNTER_PARTS, rendered, strict=True)
    )


def plan(check: CheckDefinition, subject: Subject) -> QueryPlan:
    """The queries for ``check`` on ``subject``. A ValueError names what is not possible
    (a built-in the profile cannot measure, a Knative profile in Standard mode, a bad
    template)."""
    build = _Builder(subject)
    if check.query is not None:
        return QueryPlan(
            check=check.name,
            unit=Unit.NUMBER,
            identity_label=build.series.identity_label,
            canary_id=build.canary_id,
            baseline_id=build.baseline_id,
            samples=build.request_count(),
            canary_value=render_template(check.query, build.variables(subject.canary_revision)),
            baseline_value=render_template(check.query, build.variables(subject.baseline_revision)),
        )
    if check.builtin == "error-rate":
        value, samples = build.error_rate(), build.request_count()
    elif check.builtin == "latency-p99":
        value, samples = build.latency_p99(), build.latency_count()
    elif check.builtin == "request-rate":
        value, samples = build.request_rate(), build.request_count()
    else:
        raise ValueError(f"check {check.name!r}: unknown built-in {check.builtin!r}")
    return QueryPlan(
        check=check.name,
        unit=_BUILTIN_UNITS[check.builtin],
        identity_label=build.series.identity_label,
        canary_id=build.canary_id,
        baseline_id=build.baseline_id,
        samples=samples,
        value=value,
    )
