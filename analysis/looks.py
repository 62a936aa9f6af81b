"""Looks: the counts every sequential test needs, read with grouped queries shared by all
rollouts of one metric profile.

A *look* is what happened in one period ``(t - period, t]``, for times ``t`` on a fixed
grid (multiples of the period since the epoch), so that consecutive looks tile time and
any controller, restarted or not, reads exactly the same ones.

The counts of a look are differences of the raw counters (every pod's series, not
summed) between two grid times, series by series, with a counter that went down taken as
restarted from zero (as Prometheus' ``increase`` does). Differences of instant values tile
time exactly, which an ``increase`` over a range as short as the look cannot (it needs two
samples inside the range and extrapolates to its edges), and they are whole numbers.

For each group (metric profile and deployment mode) and each grid time, :class:`LookSource`
sends a fixed set of instant queries, whatever the number of rollouts:

* the raw request counters (the 5xx ones are picked out of the same answer, so a look's
  errors and requests come from the same scrapes) and the raw latency histogram buckets;
* grouped by namespace and revision over the analysis window: requests, 5xx and the p99
  (the values shown to people and judged against absolute and hard limits).

The queries select every revision some rollout asked about recently (one regex matcher per
label), so a rollout that joins later causes one more round for the same time, and the
next grid time serves everyone again. Snapshots are cached per group and time, so every
rollout of the group reads the same numbers, and a rollout that missed some looks (a
restart, a slow tick) reads them later at their own times.

This module does no I/O of its own: it calls the injected
:class:`~analysis.providers.base.MetricProvider`.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    Infinite,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    ProviderError,
    QueryResult,
    Subject,
)

__all__ = ["GroupKey", "LookSource", "SideLook", "SubjectLook", "grid_times"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    """Rollouts whose looks share queries."""

    profile: str
    mode: str


@dataclass(frozen=True)
class SideLook:
    """One revision in one look. ``errors`` is None for a profile without status codes;
    ``buckets`` are cumulative ``(le seconds, count)`` pairs ending at +Inf (empty when the
    revision has no histogram series). Window values may be None (no series) or NaN."""

    requests: float
    errors: float | None
    buckets: tuple[tuple[float, float], ...]
    window_requests: float
    window_errors: float | None
    p99: float | None


@dataclass(frozen=True)
class SubjectLook:
    """One look for one rollout: the canary and the baseline, and the evidence."""

    at: datetime
    canary: SideLook
    baseline: SideLook
    queries: tuple[str, ...]
    digest: str
    url: str


def _label_value(labels: Mapping[str, str], name: str) -> str:
    return labels.get(name, "")


def _count(value: float, what: str) -> float:
    if math.isnan(value):
        raise NotANumber(f"{what} is NaN")
    if math.isinf(value):
        raise Infinite(f"{what} is {'+Inf' if value > 0 else '-Inf'}")
    return max(value, 0.0)


SeriesKey = frozenset[tuple[str, str]]
Ident = tuple[str, str]


@dataclass(frozen=True)
class _Snapshot:
    """A group's raw answers at one grid time."""

    at: datetime
    covered: frozenset[Ident]
    counters: Mapping[str, Mapping[SeriesKey, tuple[Ident, float, float]]]  # (ident, le, value)
    window: Mapping[Ident, tuple[float, float | None, float | None] | MetricError]
    queries: tuple[str, ...]
    digest: str
    url: str
    errors_counted: bool
    scale: float


class LookSource:
    """Grouped, cached looks for every rollout (see the module doc).

    ``period`` is the grid step; ``lag`` how long after a grid time its data are taken as
    complete (a scrape interval and the ingestion delay); ``window`` the range of the
    window values (at least two scrape intervals). ``cache`` bounds how many (group, time)
    snapshots are kept; ``forget_after`` how long an identity nobody asks about stays in
    the queries."""

    def __init__(
        self,
        provider: MetricProvider,
        *,
        period: timedelta,
        lag: timedelta,
        window: timedelta,
        cache: int = 256,
        forget_after: timedelta = timedelta(minutes=15),
    ) -> None:
        if period <= timedelta(0) or lag < timedelta(0) or window < period:
            raise ValueError("look period must be > 0, lag >= 0 and window >= period")
        self._provider = provider
        self.period = period
        self.lag = lag
        self.window = window
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
        """The canary's and the baseline's look ending at grid time ``at`` (raises a
        :class:`MetricError` when the group's queries fail or the subject's series cannot
        be read)."""
        key = GroupKey(subject.metric_profile, subject.mode)
        canary = (subject.namespace, identity(subject, subject.canary_revision))
        baseline = (subject.namespace, identity(subject, subject.baseline_revision))
        with self._lock:
            wanted = self._wanted.setdefault(key, {})
            wanted[canary] = wanted[baseline] = at
            before = self._snapshot(key, at - self.period, {canary, baseline})
            now = self._snapshot(key, at, {canary, baseline})
        sides = [_side(ident, before, now) for ident in (canary, baseline)]
        return SubjectLook(
            at=at,
            canary=sides[0],
            baseline=sides[1],
            queries=now.queries,
            digest=hashlib.sha256(f"{before.digest}\n{now.digest}".encode()).hexdigest(),
            url=now.url,
        )

    # ------------------------------------------------------------------ internals

    def _snapshot(self, key: GroupKey, at: datetime, needed: set[Ident]) -> _Snapshot:
        cached = self._cache.get((key, at))
        if cached is not None and needed <= cached.covered:
            self._cache.move_to_end((key, at))
            return cached
        wanted = self._wanted[key]
        for ident, last in list(wanted.items()):
            if abs(at - last) > self._forget_after and ident not in needed:
                del wanted[ident]
        found = self._ask(key, at, frozenset(wanted) | frozenset(needed))
        self._cache[(key, at)] = found
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def _ask(self, key: GroupKey, at: datetime, idents: frozenset[Ident]) -> _Snapshot:
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
        queries: dict[str, str] = {
            "requests": f"{series.requests}{requests_sel}",
            "buckets": f"{series.histogram}_bucket{latency_sel}",
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
        answers: dict[str, QueryResult | None] = {}
        digests: list[str] = []
        url = ""
        for name, promql in queries.items():
            self.queries_sent += 1
            try:
                result = self._provider.query(promql, at)
            except NoData as empty:
                answers[name] = None
                digests.append(empty.raw_digest or "")
                continue
            except MetricError:
                raise
            except Exception as exc:  # a provider bug must not look like data
                raise ProviderError(
                    f"the metric provider failed: {type(exc).__name__}: {exc}", query=promql
                ) from exc
            answers[name] = result
            digests.append(result.raw_digest)
            url = url or result.url

        def ident_of(labels: Mapping[str, str]) -> Ident:
            return (_label_value(labels, ns_label), _label_value(labels, id_label))

        counters: dict[str, dict[SeriesKey, tuple[Ident, float, float]]] = {}
        for kind in ("requests", "buckets"):
            table: dict[SeriesKey, tuple[Ident, float, float]] = {}
            raw = answers.get(kind)
            for s in raw.series if raw is not None else ():
                le = math.nan
                if kind == "buckets":
                    try:
                        le = float(s.labels.get("le", "nan"))
                    except ValueError:
                        continue
                    if math.isnan(le):
                        continue
                table[frozenset(s.labels.items())] = (ident_of(s.labels), le, s.value)
            counters[kind] = table
        if series.errors is not None:
            is_error = label_matcher(series.errors)
            counters["errors"] = {
                key: entry for key, entry in counters["requests"].items() if is_error(dict(key))
            }

        window_values: dict[Ident, dict[str, float]] = {}
        bad: dict[Ident, MetricError] = {}
        for kind in ("window_requests", "window_errors", "p99"):
            grouped = answers.get(kind)
            if grouped is None:
                continue
            for s in grouped.series:
                ident = ident_of(s.labels)
                values = window_values.setdefault(ident, {})
                if kind in values:
                    bad[ident] = MultipleSeries(
                        f"several series for {ident[1]} in {ident[0]} where the query groups "
                        "them into one",
                        query=queries[kind],
                        raw_digest=grouped.raw_digest,
                    )
                values[kind] = s.value
        windows: dict[Ident, tuple[float, float | None, float | None] | MetricError] = {}
        for ident in idents:
            if ident in bad:
                windows[ident] = bad[ident]
                continue
            values = window_values.get(ident, {})
            p99 = values.get("p99")
            windows[ident] = (
                values.get("window_requests", 0.0),
                values.get("window_errors", 0.0) if series.errors is not None else None,
                p99,
            )
        return _Snapshot(
            at=at,
            covered=idents,
            counters=counters,
            window=windows,
            queries=tuple(queries.values()),
            digest=hashlib.sha256("\n".join(digests).encode()).hexdigest(),
            url=url or self.url,
            errors_counted=series.errors is not None,
            scale=1000.0 if series.milliseconds else 1.0,
        )


def _increase(before: float | None, now: float) -> float:
    """One series' increase between two instants; a counter that went down restarted."""
    if before is None:
        return now  # a new series (a new pod) counted from zero
    return now - before if now >= before else now


def _side(ident: Ident, before: _Snapshot, now: _Snapshot) -> SideLook:
    where = f"{ident[1]} in {ident[0]}"

    def total(kind: str) -> float:
        previous = before.counters.get(kind, {})
        out = 0.0
        for key, (owner, _le, value) in now.counters.get(kind, {}).items():
            if owner != ident:
                continue
            old = previous.get(key)
            out += _increase(None if old is None else old[2], value)
        return out

    def buckets() -> tuple[tuple[float, float], ...]:
        previous = before.counters.get("buckets", {})
        per_le: dict[float, float] = {}
        for key, (owner, le, value) in now.counters.get("buckets", {}).items():
            if owner != ident:
                continue
            old = previous.get(key)
            per_le[le] = per_le.get(le, 0.0) + _increase(None if old is None else old[2], value)
        pairs = sorted(
            (le if math.isinf(le) else le / now.scale, _count(c, f"a latency bucket of {where}"))
            for le, c in per_le.items()
        )
        if pairs and not math.isinf(pairs[-1][0]):
            return ()  # a histogram without its +Inf bucket cannot be read
        return tuple(pairs)

    window = now.window.get(ident, (0.0, 0.0 if now.errors_counted else None, None))
    if isinstance(window, MetricError):
        raise window
    window_requests, window_errors, p99 = window
    return SideLook(
        requests=_count(total("requests"), f"the request count of {where}"),
        errors=_count(total("errors"), f"the 5xx count of {where}") if now.errors_counted else None,
        buckets=buckets(),
        window_requests=_count(window_requests, f"the window's requests of {where}"),
        window_errors=None
        if window_errors is None
        else _count(window_errors, f"the window's 5xx of {where}"),
        p99=None if p99 is None else p99 / now.scale,
    )
