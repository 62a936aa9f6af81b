"""Looks: the counts every sequential test needs, read with grouped queries shared by all
rollouts of one metric profile.

A *look* is what happened in one period ``(t - period, t]``, for times ``t`` on a fixed
grid (multiples of the period since the epoch), so that consecutive looks tile time and
any controller, restarted or not, reads exactly the same ones.

The counts of a look are differences of the raw counters (every pod's series, not
summed) between two grid times, series by series. Differences of instant values tile
time exactly, which an ``increase`` over a range as short as the look cannot (it needs two
samples inside the range and extrapolates to its edges), and they are whole numbers.
Every answer is validated first (:mod:`analysis.validate`): a counter that went down is
a restart only when its whole series (a histogram's buckets and count, a process' request
counters) fell to near zero; any other decrease, a negative or non-finite count, buckets
that fall as ``le`` rises or disagree with ``_count``, a duplicate label set, a sample
time far from the grid time, or a raw series whose last sample is too old while its
process' other series move on (its value frozen: the raw queries ask for each series'
``timestamp()`` in the same answer) is an error, never clamped.

Errors are kept per revision and per *part* of a look (``requests``: the raw request and
5xx counters; ``latency``: the raw histogram; ``window_requests``, ``window_errors``,
``p99``: the window values), so a bad series fails only its own revision's part, and a
check fails only on the parts it reads (:data:`PARTS`). Answers with ``warnings``
(partial) are marked per part too. A snapshot that failed, was partial or had a problem
for a revision is not reused for that revision: the look is asked again next time.

For each group (metric profile and deployment mode) and each grid time, :class:`LookSource`
sends a fixed set of instant queries, whatever the number of rollouts:

* the raw request counters (the 5xx ones are picked out of the same answer, so a look's
  errors and requests come from the same scrapes) and the raw latency histogram buckets
  and ``_count``, each raw series with the time of its last sample;
* grouped by namespace and revision over the analysis window: requests, 5xx and the p99
  (the values shown to people and judged against absolute and hard limits).

The queries select every revision some rollout asked about recently (one regex matcher per
label), so a rollout that joins later causes one more round for the same time, and the
next grid time serves everyone again. With ``batch=False`` (the ``batch_looks`` setting
off) every rollout is a group of its own: the same queries per look, selecting only its
two revisions, so Prometheus gets them once per rollout (for a Prometheus that cannot
answer the grouped queries, and to measure what grouping saves). Snapshots are cached
per group and time, so every rollout of the group reads the same numbers, and a rollout
that missed some looks (a restart, a slow tick) reads them later at their own times.

This module does no I/O of its own: it calls the injected
:class:`~analysis.providers.base.MetricProvider`.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from analysis.profiles import (
    identity,
    label_matcher,
    promql_duration,
    regex_escape,
    series_of,
    string_literal,
)
from analysis.providers.base import MetricProvider
from analysis.types import (
    DuplicateSeries,
    InvalidAnswer,
    InvalidHistogram,
    MetricError,
    NoData,
    ProviderError,
    QueryResult,
    Subject,
    Unreachable,
)
from analysis.validate import (
    DEFAULT_MAX_SAMPLE_AGE,
    DEFAULT_RESET_RATIO,
    Origin,
    answer_problems,
    count_problem,
    group_increase,
    histogram_problem,
    le_text,
    sample_age_problems,
    series_name,
    with_sample_times,
)

__all__ = [
    "PARTS",
    "GroupKey",
    "LookSource",
    "SideLook",
    "SubjectLook",
    "grid_times",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


PARTS: Mapping[str, tuple[str, ...]] = {
    "error-rate": ("requests", "window_requests", "window_errors"),
    "latency-p99": ("latency", "window_requests", "p99"),
    "request-rate": ("requests", "window_requests"),
}
"""The parts of a look each built-in check reads (and fails on)."""

_PART_OF_QUERY = {
    "requests": "requests",
    "buckets": "latency",
    "window_requests": "window_requests",
    "window_errors": "window_errors",
    "p99": "p99",
}


def grid_times(
    after: datetime | None, until: datetime, period: timedelta, *, limit: int
) -> list[datetime]:
    """The grid times ``t`` with ``after < t <= until``, at most the last ``limit``."""
    if period <= timedelta(0):
        raise ValueError("the look period must be positive")
    last = _EPOCH + ((until - _EPOCH) // period) * period
    times: list[datetime] = []
    t = last
    while len(times) < limit and (after is None or t > after):
        times.append(t)
        t -= period
        if after is None and len(times) >= 1:
            break  # without a previous look, start from the latest only
    return sorted(times)


@dataclass(frozen=True)
class GroupKey:
    """Rollouts whose looks share queries; ``service`` (namespace, InferenceService) only
    when looks are not batched, each rollout then a group of its own."""

    profile: str
    mode: str
    service: tuple[str, str] | None = None


@dataclass(frozen=True)
class SideLook:
    """One revision in one look. ``errors`` is None for a profile without status codes;
    ``buckets`` are cumulative ``(le seconds, count)`` pairs ending at +Inf (empty when the
    revision has no histogram series). Window values may be None (no series) or NaN.

    ``problems`` maps a part of the look (see :data:`PARTS`) to the error that makes it
    unusable; that part's fields are then zero (or empty, or None) and must not be read."""

    requests: float
    errors: float | None
    buckets: tuple[tuple[float, float], ...]
    window_requests: float
    window_errors: float | None
    p99: float | None
    problems: Mapping[str, MetricError] = field(default_factory=dict)


@dataclass(frozen=True)
class SubjectLook:
    """One look for one rollout: the canary and the baseline, and the evidence.

    ``warnings`` maps a part to the warnings of its partial answers; ``attempts`` is how
    many requests the look's answers took, ``failures`` what went wrong in the failed
    ones."""

    at: datetime
    canary: SideLook
    baseline: SideLook
    queries: tuple[str, ...]
    digest: str
    url: str
    warnings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    attempts: int = 0
    failures: tuple[str, ...] = ()

    def problem(self, parts: Iterable[str]) -> MetricError | None:
        """The first error among ``parts``, the canary's before the baseline's."""
        wanted = tuple(parts)
        for side in (self.canary, self.baseline):
            for part in wanted:
                if part in side.problems:
                    return side.problems[part]
        return None

    def partial(self, parts: Iterable[str]) -> tuple[str, ...]:
        """The warnings of the answers ``parts`` were read from (empty: complete)."""
        return tuple(w for part in parts for w in self.warnings.get(part, ()))


def _label_value(labels: Mapping[str, str], name: str) -> str:
    return labels.get(name, "")


SeriesKey = frozenset[tuple[str, str]]
Ident = tuple[str, str]


@dataclass(frozen=True)
class _Counter:
    """One raw request counter series; ``group`` is its labels without the status code
    (the counters that reset together)."""

    ident: Ident
    group: SeriesKey
    name: str
    value: float


@dataclass(frozen=True)
class _Histogram:
    """One raw histogram series: cumulative ``le -> count`` in the exporter's unit."""

    ident: Ident
    name: str
    buckets: Mapping[float, float]


@dataclass(frozen=True)
class _Snapshot:
    """A group's raw answers at one grid time, validated. ``failed`` holds the parts whose
    query failed (for every revision), ``problems`` each revision's invalid parts."""

    at: datetime
    covered: frozenset[Ident]
    requests: Mapping[SeriesKey, _Counter]
    histograms: Mapping[SeriesKey, _Histogram]
    window: Mapping[Ident, Mapping[str, float]]
    failed: Mapping[str, MetricError]
    problems: Mapping[Ident, Mapping[str, MetricError]]
    warnings: Mapping[str, tuple[str, ...]]
    origins: Mapping[str, Origin]
    queries: tuple[str, ...]
    digest: str
    url: str
    errors_matcher: str | None
    histogram: str
    scale: float
    attempts: int
    failures: tuple[str, ...]

    def reusable_for(self, needed: set[Ident]) -> bool:
        return (
            needed <= self.covered
            and not self.failed
            and not self.warnings
            and not any(ident in self.problems for ident in needed)
        )


def _code_label(matcher: str | None) -> str | None:
    """The status-code label of an errors matcher (``response_code=~"5.."``)."""
    if matcher is None:
        return None
    found = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", matcher)
    return found.group(1) if found else None


class LookSource:
    """Grouped, cached looks for every rollout (see the module doc).

    ``period`` is the grid step; ``lag`` how long after a grid time its data are taken as
    complete (a scrape interval and the ingestion delay); ``window`` the range of the
    window values (at least two scrape intervals). ``cache`` bounds how many (group, time)
    snapshots are kept; ``forget_after`` how long an identity nobody asks about stays in
    the queries. ``skew`` bounds how far a sample's timestamp may be from the grid time it
    was asked for (default: one period plus the lag); ``max_sample_age`` how old the last
    sample of a raw counter may be at a grid time (a few scrape intervals; older, its value
    is frozen); ``reset_ratio`` is the fraction of its previous total a series must fall
    to for a decrease to read as a counter reset. ``batch`` (default True) groups every
    rollout of a metric profile and mode; False makes each rollout its own group."""

    def __init__(
        self,
        provider: MetricProvider,
        *,
        period: timedelta,
        lag: timedelta,
        window: timedelta,
        cache: int = 256,
        forget_after: timedelta = timedelta(minutes=15),
        skew: timedelta | None = None,
        reset_ratio: float = DEFAULT_RESET_RATIO,
        max_sample_age: timedelta = DEFAULT_MAX_SAMPLE_AGE,
        burst: timedelta | None = None,
        batch: bool = True,
    ) -> None:
        if period <= timedelta(0) or lag < timedelta(0) or window < period:
            raise ValueError("look period must be > 0, lag >= 0 and window >= period")
        if burst is not None and burst <= timedelta(0):
            raise ValueError(f"the burst length must be > 0, got {burst}")
        if skew is not None and skew < timedelta(0):
            raise ValueError(f"the timestamp skew must be >= 0, got {skew}")
        if max_sample_age <= timedelta(0):
            raise ValueError(f"the maximum sample age must be > 0, got {max_sample_age}")
        if not 0 <= reset_ratio < 1:
            raise ValueError(f"reset_ratio must be in [0, 1), got {reset_ratio}")
        self._provider = provider
        self.batch = batch
        self.period = period
        self.lag = lag
        self.window = window
        self.skew = period + lag if skew is None else skew
        self.reset_ratio = reset_ratio
        self.max_sample_age = max_sample_age
        # Consecutive looks that share one draw of the over-dispersion: a burst (a noisy
        # node, a bursty client) moves the rate of every look it spans. None: one look.
        self.block_looks = 1 if burst is None else max(1, round(burst / period))
        self._cache_size = cache
        self._forget_after = forget_after
        self._cache: OrderedDict[tuple[GroupKey, datetime], _Snapshot] = OrderedDict()
        self._wanted: dict[GroupKey, dict[Ident, datetime]] = {}
        self._lock = threading.Lock()
        self.queries_sent = 0

    @property
    def url(self) -> str:
        return str(getattr(self._provider, "url", ""))

    def due(self, after: datetime | None, now: datetime, *, limit: int = 120) -> list[datetime]:
        """The grid times a rollout has not read yet whose data are complete at ``now``."""
        return grid_times(after, now - self.lag, self.period, limit=limit)

    def look(self, subject: Subject, at: datetime) -> SubjectLook:
        """The canary's and the baseline's look ending at grid time ``at``. Failed queries
        and invalid series are not raised: they are the ``problems`` of the parts they
        spoil (:attr:`SideLook.problems`), and such a look is asked again next time."""
        key = GroupKey(
            subject.metric_profile,
            subject.mode,
            None if self.batch else (subject.namespace, subject.isvc),
        )
        canary = (subject.namespace, identity(subject, subject.canary_revision))
        baseline = (subject.namespace, identity(subject, subject.baseline_revision))
        with self._lock:
            wanted = self._wanted.setdefault(key, {})
            wanted[canary] = wanted[baseline] = at
            before = self._snapshot(key, at - self.period, {canary, baseline})
            # a Prometheus that does not answer is not asked again for the same look
            down = next((e for e in before.failed.values() if isinstance(e, Unreachable)), None)
            now = self._snapshot(key, at, {canary, baseline}, unreachable=down)
            sides = [_side(ident, before, now, self.reset_ratio) for ident in (canary, baseline)]
            if any(side.problems for side in sides):
                # not cached: the next evaluation reads both instants again
                for t in (at - self.period, at):
                    self._cache.pop((key, t), None)
        warnings: dict[str, tuple[str, ...]] = {}
        for snap in (before, now):
            for part, notes in snap.warnings.items():
                warnings[part] = (*warnings.get(part, ()), *notes)
        return SubjectLook(
            at=at,
            canary=sides[0],
            baseline=sides[1],
            queries=now.queries,
            digest=hashlib.sha256(f"{before.digest}\n{now.digest}".encode()).hexdigest(),
            url=now.url,
            warnings=warnings,
            attempts=before.attempts + now.attempts,
            failures=(*before.failures, *now.failures),
        )

    # ------------------------------------------------------------------ internals

    def _snapshot(
        self,
        key: GroupKey,
        at: datetime,
        needed: set[Ident],
        *,
        unreachable: MetricError | None = None,
    ) -> _Snapshot:
        cached = self._cache.get((key, at))
        if cached is not None and cached.reusable_for(needed):
            self._cache.move_to_end((key, at))
            return cached
        wanted = self._wanted[key]
        for ident, last in list(wanted.items()):
            if abs(at - last) > self._forget_after and ident not in needed:
                del wanted[ident]
        found = self._ask(key, at, frozenset(wanted) | frozenset(needed), unreachable)
        if unreachable is not None:
            return found  # nothing was asked: nothing to keep
        self._cache[(key, at)] = found
        self._cache.move_to_end((key, at))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def _ask(
        self,
        key: GroupKey,
        at: datetime,
        idents: frozenset[Ident],
        unreachable: MetricError | None = None,
    ) -> _Snapshot:
        """The group's snapshot at ``at``. Once a query finds Prometheus unreachable (or
        ``unreachable`` is given), the remaining queries are not sent: they fail with that
        error, so a Prometheus that does not answer costs one query's timeouts, not five."""
        series = series_of(key.profile, key.mode)
        namespaces = sorted({ns for ns, _ in idents})
        names = sorted({name for _, name in idents})
        ns_label, id_label = series.namespace_label, series.identity_label
        selected = (
            f"{ns_label}=~{string_literal('|'.join(map(regex_escape, namespaces)))}",
            f"{id_label}=~{string_literal('|'.join(map(regex_escape, names)))}",
        )
        window = promql_duration(self.window)
        by = f"{ns_label}, {id_label}"

        def selector(matchers: Iterable[str]) -> str:
            return "{" + ",".join((*matchers, *selected)) + "}"

        requests_sel = selector(series.request_matchers)
        latency_sel = selector(series.latency_matchers)
        # The buckets and the _count of the histogram in one answer (one set of scrapes),
        # so that the +Inf bucket can be checked against the count.
        histogram_sel = selector(
            (
                f"__name__=~{string_literal(f'{series.histogram}_bucket|{series.histogram}_count')}",
                *series.latency_matchers,
            )
        )
        queries: dict[str, str] = {
            "requests": with_sample_times(f"{series.requests}{requests_sel}"),
            "buckets": with_sample_times(histogram_sel),
            "window_requests": f"sum by ({by}) (increase({series.requests}{requests_sel}"
            f"[{window}]))",
            "p99": f"histogram_quantile(0.99, sum by ({by}, le) (rate({series.histogram}_bucket"
            f"{latency_sel}[{window}])))",
        }
        if series.errors is not None:
            # The raw 5xx counters are picked out of the raw request counters' answer, not
            # asked for separately: one query sees each scrape whole (Prometheus' isolation),
            # so a look's errors and requests always come from the same scrapes.
            errors_sel = selector((*series.request_matchers, series.errors))
            queries["window_errors"] = (
                f"sum by ({by}) (increase({series.requests}{errors_sel}[{window}]))"
            )

        def ident_of(labels: Mapping[str, str]) -> Ident:
            return (_label_value(labels, ns_label), _label_value(labels, id_label))

        answers: dict[str, QueryResult | None] = {}
        failed: dict[str, MetricError] = {}
        problems: dict[Ident, dict[str, MetricError]] = {}
        warnings: dict[str, tuple[str, ...]] = {}
        origins: dict[str, Origin] = {}
        digests: list[str] = []
        failures: list[str] = []
        attempts = 0
        url = ""

        code_label = _code_label(series.errors)
        apart = {"__name__", "le", code_label}

        def process_of(labels: Mapping[str, str]) -> SeriesKey:
            """The series one process writes together (all codes, buckets and count)."""
            return frozenset((k, v) for k, v in labels.items() if k not in apart)

        def spoil(ident: Ident, part: str, error: MetricError) -> None:
            problems.setdefault(ident, {}).setdefault(part, error)

        for name, promql in queries.items():
            part = _PART_OF_QUERY[name]
            origins[part] = Origin(promql, at)
            if unreachable is not None:
                failed[part] = unreachable
                digests.append("")
                continue
            self.queries_sent += 1
            try:
                result = self._provider.query(promql, at)
            except NoData as empty:
                answers[name] = None
                digests.append(empty.raw_digest or "")
                origins[part] = Origin(promql, at, empty.raw_digest, empty.attempts,
                                       empty.failures)  # fmt: skip
                attempts += empty.attempts
                failures += empty.failures
                continue
            except MetricError as error:
                if error.at is None:
                    error.at = at
                error.query = error.query or promql
                failed[part] = error
                digests.append(error.raw_digest or "")
                attempts += error.attempts
                failures += error.failures
                if isinstance(error, Unreachable):
                    unreachable = error
                continue
            except Exception as exc:  # a provider bug must not look like data
                failed[part] = ProviderError(
                    f"the metric provider failed: {type(exc).__name__}: {exc}",
                    query=promql,
                    at=at,
                )
                digests.append("")
                attempts += 1
                failures.append(failed[part].message)
                continue
            digests.append(result.raw_digest)
            url = url or result.url
            attempts += result.attempts
            failures += result.failures
            origins[part] = Origin.of(result, query=promql, at=at)
            if result.warnings:
                warnings[part] = result.warnings
            bad = answer_problems(result, query=promql, at=at, skew=self.skew)
            kept = list(result.series)
            if name in {"requests", "buckets"}:  # raw series: how old is each last sample?
                kept, old = sample_age_problems(
                    result,
                    query=promql,
                    at=at,
                    max_age=self.max_sample_age,
                    skew=self.skew,
                    group=process_of,
                )
                bad += old
            for s, invalid in bad:
                spoil(ident_of(s.labels), part, invalid)
            dropped = {id(s) for s, _ in bad}
            answers[name] = QueryResult(
                tuple(s for s in kept if id(s) not in dropped), result.raw_digest, result.url
            )

        # raw request counters (and the 5xx among them)
        counters: dict[SeriesKey, _Counter] = {}
        raw = answers.get("requests")
        for s in raw.series if raw is not None else ():
            ident = ident_of(s.labels)
            name = series_name(s.labels)
            problem = count_problem(s.value, series=name, what="the counter",
                                    origin=origins["requests"])  # fmt: skip
            if problem is not None:
                spoil(ident, "requests", problem)
                continue
            group = frozenset((k, v) for k, v in s.labels.items() if k != code_label)
            counters[frozenset(s.labels.items())] = _Counter(ident, group, name, s.value)

        # raw histogram: buckets and _count per series
        origin = origins["latency"]
        gathered: dict[SeriesKey, tuple[Ident, dict[float, float], list[float]]] = {}
        raw = answers.get("buckets")
        for s in raw.series if raw is not None else ():
            ident = ident_of(s.labels)
            labels = {k: v for k, v in s.labels.items() if k not in {"le", "__name__"}}
            hist_key = frozenset(labels.items())
            entry = gathered.setdefault(hist_key, (ident, {}, []))
            le_text = s.labels.get("le")
            if le_text is None:
                entry[2].append(s.value)  # the series' _count
                continue
            try:
                le = float(le_text)
            except ValueError:
                le = math.nan
            if math.isnan(le):
                spoil(ident, "latency", origin.error(
                    InvalidHistogram, f'a bucket has le="{le_text}", not a number',
                    series=series_name(s.labels), rule="le"))  # fmt: skip
                continue
            entry[1][le] = s.value
        histograms: dict[SeriesKey, _Histogram] = {}
        for hist_key, (ident, buckets, counts) in gathered.items():
            name = series_name({"__name__": series.histogram, **dict(hist_key)})
            problem = histogram_problem(
                buckets, counts[0] if counts else None, series=name, origin=origin
            )
            if problem is not None:
                spoil(ident, "latency", problem)
                continue
            histograms[hist_key] = _Histogram(ident, name, buckets)

        # window values, grouped by revision
        window_values: dict[Ident, dict[str, float]] = {}
        for kind in ("window_requests", "window_errors", "p99"):
            grouped = answers.get(kind)
            if grouped is None:
                continue
            for s in grouped.series:
                ident = ident_of(s.labels)
                values = window_values.setdefault(ident, {})
                name = f"{kind}{series_name(s.labels)}"
                if kind in values:
                    spoil(ident, kind, origins[kind].error(
                        DuplicateSeries,
                        f"several series for {ident[1]} in {ident[0]} where the query groups "
                        "them into one", series=name, rule="one-per-revision"))  # fmt: skip
                    continue
                if kind == "p99":
                    if s.value < 0:  # NaN (no observation in the window) stays no data
                        spoil(ident, kind, origins[kind].error(
                            InvalidHistogram, f"the p99 is {s.value}, below zero",
                            series=name, rule="negative"))  # fmt: skip
                        continue
                else:
                    problem = count_problem(s.value, series=name, what="the window's count",
                                            origin=origins[kind])  # fmt: skip
                    if problem is not None:
                        spoil(ident, kind, problem)
                        continue
                values[kind] = s.value

        return _Snapshot(
            at=at,
            covered=idents,
            requests=counters,
            histograms=histograms,
            window=window_values,
            failed=failed,
            problems=problems,
            warnings=warnings,
            origins=origins,
            queries=tuple(queries.values()),
            digest=hashlib.sha256("\n".join(digests).encode()).hexdigest(),
            url=url or self.url,
            errors_matcher=series.errors,
            histogram=series.histogram,
            scale=1000.0 if series.milliseconds else 1.0,
            attempts=attempts,
            failures=tuple(failures),
        )


def _counts(
    ident: Ident, before: _Snapshot, now: _Snapshot, reset_ratio: float
) -> tuple[float, float | None]:
    """The revision's requests and 5xx in the look, reset by reset (raises InvalidAnswer)."""
    groups: dict[SeriesKey, tuple[dict[SeriesKey, float], dict[SeriesKey, float]]] = {}
    names: dict[SeriesKey, str] = {}
    for snap, slot in ((before, 0), (now, 1)):
        for key, counter in snap.requests.items():
            if counter.ident == ident:
                groups.setdefault(counter.group, ({}, {}))[slot][key] = counter.value
                names[key] = counter.name
    is_error = label_matcher(now.errors_matcher) if now.errors_matcher is not None else None
    requests, errors = 0.0, 0.0
    for old, new in groups.values():
        increases = group_increase(
            old,
            new,
            total=lambda values: sum(values.values()),
            name=names.__getitem__,
            what="the process' request counters",
            origin=now.origins["requests"],
            reset_ratio=reset_ratio,
        )
        for key, increase in increases.items():
            requests += increase
            if is_error is not None and is_error(dict(key)):
                errors += increase
    return requests, errors if is_error is not None else None


def _buckets(
    ident: Ident, before: _Snapshot, now: _Snapshot, reset_ratio: float
) -> tuple[tuple[float, float], ...]:
    """The revision's cumulative buckets in the look, in seconds (raises InvalidAnswer)."""
    per_le: dict[float, float] = {}
    name = ""
    for key, histogram in now.histograms.items():
        if histogram.ident != ident:
            continue
        name = name or histogram.name
        old = before.histograms.get(key)

        def label(le: float, of: str = histogram.name) -> str:
            sep = "" if of.endswith("{}") else ","
            return f'{of[:-1]}{sep}le="{le_text(le)}"}}'

        increases = group_increase(
            old.buckets if old is not None else {},
            histogram.buckets,
            total=lambda values: values.get(math.inf, 0.0),
            name=label,
            what="the histogram's buckets and count",
            origin=now.origins["latency"],
            reset_ratio=reset_ratio,
        )
        for le, increase in increases.items():
            per_le[le] = per_le.get(le, 0.0) + increase
    if not per_le:
        return ()
    where = f"{now.histogram}{{{ident[1]} in {ident[0]}}}"
    problem = histogram_problem(per_le, None, series=where, origin=now.origins["latency"])
    if problem is not None:  # each instant valid, but their difference is not a histogram
        raise problem
    return tuple(
        sorted((le if math.isinf(le) else le / now.scale, count) for le, count in per_le.items())
    )


def _side(ident: Ident, before: _Snapshot, now: _Snapshot, reset_ratio: float) -> SideLook:
    problems: dict[str, MetricError] = {}
    for part in ("requests", "latency"):  # raw counters: both instants count
        for snap in (before, now):
            found = snap.failed.get(part) or snap.problems.get(ident, {}).get(part)
            if found is not None:
                problems.setdefault(part, found)
    for part in ("window_requests", "window_errors", "p99"):  # window values: now only
        found = now.failed.get(part) or now.problems.get(ident, {}).get(part)
        if found is not None:
            problems[part] = found
    requests, errors = 0.0, (0.0 if now.errors_matcher is not None else None)
    if "requests" not in problems:
        try:
            requests, errors = _counts(ident, before, now, reset_ratio)
        except InvalidAnswer as error:
            problems["requests"] = error
    buckets: tuple[tuple[float, float], ...] = ()
    if "latency" not in problems:
        try:
            buckets = _buckets(ident, before, now, reset_ratio)
        except InvalidAnswer as error:
            problems["latency"] = error
    values = now.window.get(ident, {})
    p99 = values.get("p99")
    return SideLook(
        requests=requests,
        errors=errors,
        buckets=buckets,
        window_requests=values.get("window_requests", 0.0),
        window_errors=values.get("window_errors", 0.0) if now.errors_matcher is not None else None,
        p99=None if p99 is None else p99 / now.scale,
        problems=problems,
    )
