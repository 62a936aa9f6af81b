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
(partial) are marked per part too. A revision whose raw series at a grid time failed, were
partial or had a problem is not reused: it is asked again next time.

For each group (metric profile and deployment mode, at most ``group_size`` services) and each
grid time, :class:`LookSource` sends a fixed set of instant queries (a *round*), whatever the
number of rollouts in the group:

* the raw request counters (the 5xx ones are picked out of the same answer, so a look's
  errors and requests come from the same scrapes) and the raw latency histogram buckets
  and ``_count``, each raw series with the time of its last sample;
* grouped by namespace and revision over the analysis window: requests, 5xx and the p99
  (the values shown to people and judged against absolute and hard limits).

The queries select every revision some rollout asked about recently, or is about to ask
about (:meth:`LookSource.expect`; one regex matcher per label). A rollout that joins after
a grid time's round causes one more round for that time, for the revisions the round
lacked only, and the next grid time serves everyone again. With ``batch=False`` (the
``batch_looks`` setting off) every rollout is a group of its own: the same queries per
look, selecting only its two revisions, so Prometheus gets them once per rollout (for a
Prometheus that cannot answer the grouped queries, and to measure what grouping saves).

**Group size.** One round's answers grow with its services (every revision's raw series), and
a round is slow when Prometheus is loaded. So a group holds at most ``group_size`` services:
a service joins the first group of its profile and mode with room, and keeps its place while
it is asked about (its place is freed once nobody asked about it for ``forget_after``). Each
group has its own lock, so rounds of different groups run at once: one slow round holds back
only the rollouts of its own group, and the queries per look grow with the number of groups
(``ceil(services / group_size)`` per profile and mode), not with the rollouts. Which group a
service is in changes which queries are sent, never the counts: a look's counts are
differences of each revision's own raw series.

**Catching up.** A rollout that has not read for several periods (a restart, a failover)
reads them as ONE look, the difference between the grid time it last read and the latest
(:meth:`LookSource.reads`): differences tile, so its counts are exactly the sum of the
periods' counts, and it costs two snapshots, not one per period. (A rollout only a period
or two late, whose snapshots are still cached, reads them one by one: that costs nothing.)
A difference over a long span would hide a counter that restarted inside it (a pod that
restarted and counted past its old total reads as an ordinary increase), so such a span is
read only once one more query (``resets()`` over the span, for the raw request counters and
the histogram's ``_count``) shows that no process of the rollout's revisions restarted in
it; otherwise, or when Prometheus cannot tell, the span is read period by period as before.
A round at a grid time older than the group's newest :data:`RECENT_LOOKS` (and the restart
check of a span beginning there) selects only the revisions whose next look begins at that
time (announced with their evidence, :meth:`LookSource.expect`, or known from the looks
they read), never the whole group: after a restart the rollouts that last read the same
grid time share one such round, and a rollout left behind at a time of its own costs a
small round for its own revisions, not one as large as a new grid time's (a group whose
every straggler cost a full round would fall further behind with each, and never catch up).
The sequential tests take the joined look as one look spanning that many periods
(:func:`analysis.sequential_check.advance`); ``analysis/README.md`` explains why their
guarantees hold, and what it costs.

**Memory.** A snapshot keeps, per revision, only what the looks take differences of: each
raw counter's value and each histogram's cumulative counts as an array of floats, with the
series' label sets, names and bucket bounds held once however many snapshots refer to them
(interned). Snapshots are kept per group only for the newest grid times
(:data:`RECENT_LOOKS`) and, for the starts of catch-up reads, a few older ones
(:data:`OLDER_KEPT`), each only while rollouts keep reading it (:data:`IDLE_LOOKS`), and
those where a rollout left behind will begin its next look (:data:`WAITED_KEPT`). So what
the looks hold is proportional to the revisions asked about (at most
``RECENT_LOOKS + OLDER_KEPT + WAITED_KEPT`` snapshots per group), and independent of how
long anything has run.

This module does no I/O of its own: it calls the injected
:class:`~analysis.providers.base.MetricProvider`.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from analysis.profiles import (
    ProfileSeries,
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
    SAMPLE_LABEL,
    Origin,
    answer_problems,
    count_problem,
    group_increase,
    histogram_problem,
    is_count,
    le_text,
    sample_age_problems,
    series_name,
    with_sample_times,
)

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "IDLE_LOOKS",
    "OLDER_KEPT",
    "PARTS",
    "QUERY_KINDS",
    "RECENT_LOOKS",
    "WAITED_KEPT",
    "GroupKey",
    "LookSource",
    "SideLook",
    "SubjectLook",
    "grid_times",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RECENT_LOOKS = 3
"""Snapshots at a group's newest this many grid times are always kept: rollouts read
every period (the look ending at the newest grid time needs the one before it), or a
period or two late."""

OLDER_KEPT = 4
"""Older snapshots kept per group: the starts of catch-up reads (rollouts back from a
restart read from the grid time each last read, which many of them share). The least
recently read goes first, and any not read while the group's newest grid time moved on by
:data:`IDLE_LOOKS` periods goes at once."""

IDLE_LOOKS = 2
"""An older snapshot nobody read while the newest grid time moved on by this many periods
is dropped: the rollouts that catch up from it all do so within seconds."""

WAITED_KEPT = 8
"""Older snapshots kept per group because a rollout's next look begins there (the grid time
its last look ended at), however long ago they were read: a rollout the group's rounds left
behind (a loaded Prometheus, a long queue) then reads what it missed as one look from a
snapshot at hand, instead of a round at its old grid time. The least recently read go first
beyond this many (a rollout whose snapshot went costs a round of its own revisions only:
see :meth:`LookSource._beginning_at`)."""

DEFAULT_GROUP_SIZE = 200
"""Services per look group (see the module doc): at 1,000 services, five rounds per look
that run at once, each answer a fifth of one group's."""

QUERY_KINDS = ("round", "older", "restart_check")
"""What the looks' queries are for: a round at one of a group's newest
:data:`RECENT_LOOKS` grid times (``round``), a round at an older one for the rollouts whose
next look begins there (``older``), and the check for restarted counters that guards a
joined look (``restart_check``)."""

_RESETS_KEPT = 16  # answers to the restart check per group, by span; each a few idents
_BOUND_SETS_KEPT = 64  # distinct sets of bucket bounds held once (exporters share a few)

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
_WINDOW_PARTS = ("window_requests", "window_errors", "p99")


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
    """Rollouts whose looks share queries: the ``shard``-th group of a metric profile and
    mode (see the module doc); ``service`` (namespace, InferenceService) only when looks are
    not batched, each rollout then a group of its own."""

    profile: str
    mode: str
    service: tuple[str, str] | None = None
    shard: int = 0


@dataclass(slots=True)
class _Place:
    shard: int
    last: datetime  # when the service was last asked about


class _Shards:
    """Which group of its profile and mode each service is in: the first with fewer than
    ``size`` services (None: one group), kept while the service is asked about. Not
    thread-safe: the caller holds a lock."""

    def __init__(self, size: int | None, forget_after: timedelta) -> None:
        if size is not None and size < 1:
            raise ValueError(f"a look group holds at least one service, got {size}")
        self.size = size
        self.forget_after = forget_after
        self._places: dict[tuple[str, str], dict[tuple[str, str], _Place]] = {}
        self._members: dict[tuple[str, str], list[int]] = {}
        self._latest: dict[tuple[str, str], datetime] = {}

    def place(self, family: tuple[str, str], service: tuple[str, str], at: datetime) -> int:
        """The group of ``service``, asked about at ``at``, among its ``family``'s."""
        if self.size is None:
            self._members.setdefault(family, [1])  # one group, whoever is in it
            return 0
        places = self._places.setdefault(family, {})
        latest = max(self._latest.get(family, at), at)
        self._latest[family] = latest
        found = places.get(service)
        if found is not None:
            found.last = max(found.last, at)
            return found.shard
        members = self._members.setdefault(family, [])
        if all(count >= self.size for count in members):
            self._forget(family, latest)  # free the places of services nobody asks about
        shard = next((i for i, count in enumerate(members) if count < self.size), len(members))
        if shard == len(members):
            members.append(0)
        members[shard] += 1
        places[service] = _Place(shard, at)
        return shard

    def groups(self, family: tuple[str, str]) -> int:
        """How many groups the family's services are in (for tests and the benchmark)."""
        return sum(1 for count in self._members.get(family, ()) if count > 0)

    def _forget(self, family: tuple[str, str], latest: datetime) -> None:
        places, members = self._places[family], self._members[family]
        for service, place in list(places.items()):
            if latest - place.last > self.forget_after:
                del places[service]
                members[place.shard] -= 1


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

    ``since`` is where the look begins (``at`` less one period, or for a look that joins
    several periods, the grid time the rollout last read); ``looks`` is how many periods
    it spans. ``warnings`` maps a part to the warnings of its partial answers; ``attempts``
    is how many requests the look's answers took, ``failures`` what went wrong in the
    failed ones."""

    at: datetime
    canary: SideLook
    baseline: SideLook
    queries: tuple[str, ...]
    digest: str
    url: str
    warnings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    attempts: int = 0
    failures: tuple[str, ...] = ()
    since: datetime | None = None
    looks: int = 1

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


class _CounterInfo:
    """What one raw request counter series is: its label set, its ``group`` (the labels
    without the status code: the counters that reset together), its name for messages,
    and whether it counts 5xx. Interned: every snapshot holding the series refers to one."""

    __slots__ = ("__weakref__", "error", "group", "key", "name")

    def __init__(self, key: SeriesKey, group: SeriesKey, name: str, error: bool) -> None:
        self.key = key
        self.group = group
        self.name = name
        self.error = error


class _HistogramInfo:
    """What one raw histogram series is: its label set (without ``le``), its name, and its
    bucket bounds in the exporter's unit, ``+Inf`` last (interned, like the counters)."""

    __slots__ = ("__weakref__", "bounds", "key", "name")

    def __init__(self, key: SeriesKey, name: str, bounds: tuple[float, ...]) -> None:
        self.key = key
        self.name = name
        self.bounds = bounds


@dataclass(frozen=True, eq=False)
class _Round:
    """One round of queries at one grid time: what every revision read from it shares.
    ``failed`` holds the parts whose query failed (for every revision of the round)."""

    at: datetime
    queries: tuple[str, ...]
    digest: str
    url: str
    failed: Mapping[str, MetricError]
    warnings: Mapping[str, tuple[str, ...]]
    origins: Mapping[str, Origin]
    attempts: int
    failures: tuple[str, ...]
    errors_matcher: str | None
    histogram: str
    scale: float


_NO_PROBLEMS: Mapping[str, MetricError] = MappingProxyType({})
_NO_WINDOW: tuple[float | None, float | None, float | None] = (None, None, None)


@dataclass(frozen=True, eq=False, slots=True)
class _Raw:
    """One revision's raw series at one grid time, validated: each counter's value, each
    histogram's cumulative counts (in the order of its bounds), the window values
    (requests, 5xx, p99; None: no series), the time of its oldest raw sample when one is
    older than the maximum sample age (None: every sample is younger), and the parts its
    own series made unusable."""

    round: _Round
    counters: tuple[tuple[_CounterInfo, float], ...]
    histograms: tuple[tuple[_HistogramInfo, array[float]], ...]
    window: tuple[float | None, float | None, float | None]
    oldest: float | None
    problems: Mapping[str, MetricError]

    def usable(self) -> bool:
        return not self.round.failed and not self.round.warnings and not self.problems


@dataclass(eq=False)
class _Snapshot:
    """A group's revisions at one grid time (several rounds may have filled it in);
    ``used`` is the group's newest grid time when it was last read."""

    at: datetime
    revisions: dict[Ident, _Raw]
    used: datetime


def _code_label(matcher: str | None) -> str | None:
    """The status-code label of an errors matcher (``response_code=~"5.."``)."""
    if matcher is None:
        return None
    found = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*", matcher)
    return found.group(1) if found else None


def _idents(subject: Subject, batch: bool, shard: int = 0) -> tuple[GroupKey, Ident, Ident]:
    if batch:
        key = GroupKey(subject.metric_profile, subject.mode, shard=shard)
    else:
        key = GroupKey(subject.metric_profile, subject.mode, (subject.namespace, subject.isvc))
    canary = (subject.namespace, identity(subject, subject.canary_revision))
    baseline = (subject.namespace, identity(subject, subject.baseline_revision))
    return key, canary, baseline


def _digest(rounds: Iterable[_Round]) -> str:
    """The digest of the answers ``rounds`` read: a round's own, or several joined."""
    digests = [r.digest for r in rounds]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


class LookSource:
    """Grouped, cached looks for every rollout (see the module doc).

    ``period`` is the grid step; ``lag`` how long after a grid time its data are taken as
    complete (a scrape interval and the ingestion delay); ``window`` the range of the
    window values (at least two scrape intervals). ``forget_after`` is how long an identity
    nobody asks about stays in the queries. ``skew`` bounds how far a sample's timestamp
    may be from the grid time it was asked for (default: one period plus the lag);
    ``max_sample_age`` how old the last sample of a raw counter may be at a grid time (a
    few scrape intervals; older, its value is frozen); ``reset_ratio`` is the fraction of
    its previous total a series must fall to for a decrease to read as a counter reset.
    How many snapshots are kept is not a setting: see :data:`RECENT_LOOKS`,
    :data:`OLDER_KEPT` and :data:`WAITED_KEPT`. ``batch`` (default True) groups the
    rollouts of a metric profile and mode, at most ``group_size`` services to a group
    (None: all of them); False makes each rollout its own group.

    Thread-safe: a group's rounds run one at a time (its lock), different groups' at once."""

    def __init__(
        self,
        provider: MetricProvider,
        *,
        period: timedelta,
        lag: timedelta,
        window: timedelta,
        forget_after: timedelta = timedelta(minutes=15),
        skew: timedelta | None = None,
        reset_ratio: float = DEFAULT_RESET_RATIO,
        max_sample_age: timedelta = DEFAULT_MAX_SAMPLE_AGE,
        burst: timedelta | None = None,
        batch: bool = True,
        group_size: int | None = DEFAULT_GROUP_SIZE,
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
        self._forget_after = forget_after
        self._shards = _Shards(group_size if batch else None, forget_after)
        # per group, each guarded by the group's lock: its snapshots by grid time (least
        # recently read first), its newest grid time, its restart checks by span
        self._cache: dict[GroupKey, OrderedDict[datetime, _Snapshot]] = {}
        self._newest: dict[GroupKey, datetime] = {}
        # the grid time each revision's last look ended at, or where a rollout announced
        # with its evidence will begin reading (expect): where its next look begins.
        # Guarded by the wanted lock (expect writes it without waiting for a round).
        self._through: dict[GroupKey, dict[Ident, datetime]] = {}
        self._restarts: dict[
            GroupKey,
            OrderedDict[tuple[datetime, datetime], tuple[frozenset[Ident], frozenset[Ident]]],
        ] = {}
        self._locks: dict[GroupKey, threading.Lock] = {}  # one round of a group at a time
        self._wanted: dict[GroupKey, dict[Ident, datetime]] = {}
        self._wanted_lock = threading.Lock()  # never held while a query runs
        self._counter_infos: weakref.WeakValueDictionary[
            tuple[GroupKey, SeriesKey], _CounterInfo
        ] = weakref.WeakValueDictionary()
        self._histogram_infos: weakref.WeakValueDictionary[
            tuple[GroupKey, SeriesKey, tuple[float, ...]], _HistogramInfo
        ] = weakref.WeakValueDictionary()
        self._texts: dict[GroupKey, tuple[frozenset[Ident], dict[str, str]]] = {}
        self._bounds: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._matchers: dict[GroupKey, Callable[[Mapping[str, str]], bool]] = {}
        self._sent: dict[str, int] = dict.fromkeys(QUERY_KINDS, 0)

    @property
    def queries_sent(self) -> int:
        """How many queries the looks have sent (for tests and the benchmark)."""
        with self._wanted_lock:
            return sum(self._sent.values())

    def queries_by_kind(self) -> dict[str, int]:
        """The queries sent so far by :data:`QUERY_KINDS` (the controller's /metrics)."""
        with self._wanted_lock:
            return dict(self._sent)

    def groups(self, profile: str, mode: str) -> int:
        """How many groups the services of a metric profile and mode are in (batched)."""
        with self._wanted_lock:
            return self._shards.groups((profile, mode))

    @property
    def url(self) -> str:
        return str(getattr(self._provider, "url", ""))

    def due(self, after: datetime | None, now: datetime, *, limit: int = 120) -> list[datetime]:
        """The grid times a rollout has not read yet whose data are complete at ``now``."""
        return grid_times(after, now - self.lag, self.period, limit=limit)

    def expect(self, subject: Subject, at: datetime, since: datetime | None = None) -> None:
        """Include the subject's revisions in the next round of its group, before it asks
        for a look (what the analysis runner does when a rollout asks for one): rollouts
        asked for together, as after a restart, are read by the same rounds instead of
        each widening them once. ``since`` is the grid time the rollout's evidence runs
        through (where its next look begins), if known: an older round at that time then
        asks for its revisions too, and its snapshot is kept for it. Sends no query and
        never waits for one."""
        key, canary, baseline = self._idents(subject, at)
        self._want(key, (canary, baseline), at)
        if since is not None:
            with self._wanted_lock:
                through = self._through.setdefault(key, {})
                for ident in (canary, baseline):
                    through[ident] = since  # its evidence, not the last look read, decides

    def group(self, subject: Subject, at: datetime) -> GroupKey:
        """The group whose rounds the subject's looks are read in (its place kept as asked
        about at ``at``): looks of one group wait for each other's rounds, looks of
        different groups do not."""
        return self._idents(subject, at)[0]

    def reads(
        self, subject: Subject, after: datetime | None, now: datetime, *, limit: int = 120
    ) -> list[tuple[datetime, datetime]]:
        """The looks a rollout that has read through ``after`` reads at ``now``, as
        ``(since, until)`` spans in time order: the periods :meth:`due` gives, one look
        each while their snapshots are at hand (every grid time but the newest is cached:
        a rollout a period or two late costs no round), else joined into one look, unless
        a raw counter of the canary or the baseline restarted within them (or Prometheus
        cannot tell): then one per period. May send the queries of the joined look's first
        snapshot, and the restart check."""
        due = self.due(after, now, limit=limit)
        spans = [(t - self.period, t) for t in due]
        if len(spans) <= 1:
            return spans
        since, until = spans[0][0], spans[-1][1]
        key, canary, baseline = self._idents(subject, now)
        needed = {canary, baseline}
        self._want(key, needed, now)
        with self._lock(key):
            if all(self._at_hand(key, start, needed) for start, _ in spans):
                return spans
            self._reach(key, until)
            first = self._snapshot(key, since, needed)
            if not all(first[ident].usable() for ident in needed):
                return spans  # the first period fails as it would on its own
            restarted = self._restarted(key, since, until, frozenset(needed))
        if restarted is None or restarted:
            return spans
        return [(since, until)]

    def look(self, subject: Subject, at: datetime, since: datetime | None = None) -> SubjectLook:
        """The canary's and the baseline's look ending at grid time ``at`` and beginning at
        grid time ``since`` (default: one period before; see :meth:`reads` for longer
        looks). Failed queries and invalid series are not raised: they are the
        ``problems`` of the parts they spoil (:attr:`SideLook.problems`), and such a look
        is asked again next time."""
        start = at - self.period if since is None else since
        if not start < at:
            raise ValueError(f"a look must begin before it ends: {start} .. {at}")
        key, canary, baseline = self._idents(subject, at)
        needed = {canary, baseline}
        self._want(key, needed, at)
        with self._lock(key):
            self._reach(key, at)  # the look's start counts as read at its end
            before = self._snapshot(key, start, needed)
            # a Prometheus that does not answer is not asked again for the same look
            down = next(
                (
                    e
                    for raw in before.values()
                    for e in raw.round.failed.values()
                    if isinstance(e, Unreachable)
                ),
                None,
            )
            now = self._snapshot(key, at, needed, unreachable=down)
            sides = [
                _side(ident, before[ident], now[ident], self.reset_ratio)
                for ident in (canary, baseline)
            ]
            for ident, side in zip((canary, baseline), sides, strict=True):
                with self._wanted_lock:
                    # read again from the start when the look has problems
                    self._through.setdefault(key, {})[ident] = start if side.problems else at
                if side.problems:
                    # not kept: the next evaluation reads both instants again
                    for t in (start, at):
                        entry = self._cache[key].get(t)
                        if entry is not None:
                            entry.revisions.pop(ident, None)
        rounds_before = tuple(dict.fromkeys(before[i].round for i in (canary, baseline)))
        rounds_now = tuple(dict.fromkeys(now[i].round for i in (canary, baseline)))
        warnings: dict[str, tuple[str, ...]] = {}
        for r in (*rounds_before, *rounds_now):
            for part, notes in r.warnings.items():
                warnings[part] = (*warnings.get(part, ()), *notes)
        return SubjectLook(
            at=at,
            canary=sides[0],
            baseline=sides[1],
            queries=tuple(dict.fromkeys(q for r in rounds_now for q in r.queries)),
            digest=hashlib.sha256(
                f"{_digest(rounds_before)}\n{_digest(rounds_now)}".encode()
            ).hexdigest(),
            url=rounds_now[0].url,
            warnings=warnings,
            attempts=sum(r.attempts for r in (*rounds_before, *rounds_now)),
            failures=tuple(f for r in (*rounds_before, *rounds_now) for f in r.failures),
            since=start,
            looks=max(1, round((at - start) / self.period)),
        )

    def held(self) -> int:
        """How many snapshots are kept (for tests and the benchmark)."""
        return sum(len(kept) for kept in list(self._cache.values()))

    # ------------------------------------------------------------------ internals

    def _idents(self, subject: Subject, at: datetime) -> tuple[GroupKey, Ident, Ident]:
        """The subject's group (its place kept as asked about at ``at``) and revisions."""
        shard = 0
        if self.batch:
            with self._wanted_lock:
                shard = self._shards.place(
                    (subject.metric_profile, subject.mode), (subject.namespace, subject.isvc), at
                )
        return _idents(subject, self.batch, shard)

    def _lock(self, key: GroupKey) -> threading.Lock:
        """The group's lock (its cache, and one round at a time)."""
        with self._wanted_lock:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
                self._cache[key] = OrderedDict()
                self._restarts[key] = OrderedDict()
            return lock

    def _count_query(self, kind: str) -> None:
        with self._wanted_lock:
            self._sent[kind] += 1

    def _want(self, key: GroupKey, idents: Iterable[Ident], at: datetime) -> None:
        with self._wanted_lock:
            wanted = self._wanted.setdefault(key, {})
            for ident in idents:
                wanted[ident] = at

    def _reach(self, key: GroupKey, at: datetime) -> None:
        """The group's newest grid time is at least ``at``."""
        self._newest[key] = max(self._newest.get(key, at), at)

    def _at_hand(self, key: GroupKey, at: datetime, needed: set[Ident]) -> bool:
        """Whether every needed revision at ``at`` is cached and usable."""
        entry = self._cache[key].get(at)
        if entry is None:
            return False
        return all(i in entry.revisions and entry.revisions[i].usable() for i in needed)

    def _wanted_now(self, key: GroupKey, at: datetime, needed: set[Ident]) -> set[Ident]:
        """Every identity the group's rounds select at ``at``: the needed ones, and those
        asked about within ``forget_after`` (the others are forgotten)."""
        with self._wanted_lock:
            wanted = self._wanted.setdefault(key, {})
            for ident, last in list(wanted.items()):
                if abs(at - last) > self._forget_after and ident not in needed:
                    del wanted[ident]
            return set(wanted) | needed

    def _older(self, key: GroupKey, at: datetime) -> bool:
        """Whether ``at`` is before the group's newest :data:`RECENT_LOOKS` grid times."""
        return at < self._newest[key] - (RECENT_LOOKS - 1) * self.period

    def _beginning_at(self, key: GroupKey, at: datetime, needed: set[Ident]) -> set[Ident]:
        """Who a round (or a restart check) at an older grid time is for: the needed
        revisions, and the wanted ones whose next look begins at ``at`` (nobody else reads
        it: everyone else's next look begins elsewhere and ends at a recent grid time)."""
        with self._wanted_lock:
            wanted = self._wanted.get(key, {})
            through = self._through.get(key, {})
            return needed | {i for i, t in through.items() if t == at and i in wanted}

    def _snapshot(
        self,
        key: GroupKey,
        at: datetime,
        needed: set[Ident],
        *,
        unreachable: MetricError | None = None,
    ) -> dict[Ident, _Raw]:
        """Each needed revision at ``at``: from the cache, or from one more round that also
        asks for every wanted revision the cached snapshot lacks (or cannot reuse)."""
        self._reach(key, at)
        newest = self._newest[key]
        kept = self._cache[key]
        entry = kept.get(at)
        have = entry.revisions if entry is not None else {}
        if all(ident in have and have[ident].usable() for ident in needed):
            assert entry is not None
            entry.used = newest
            kept.move_to_end(at)
            return {ident: have[ident] for ident in needed}
        older = self._older(key, at)
        # At an older grid time only the rollouts whose next look begins there read it: a
        # round for the whole group there would cost what a new grid time's round costs,
        # once per rollout left behind, and put the others further behind.
        chosen = self._beginning_at(key, at, needed) if older else self._wanted_now(key, at, needed)
        missing = {ident for ident in chosen if not (ident in have and have[ident].usable())}
        found = self._ask(key, at, frozenset(missing), unreachable, "older" if older else "round")
        if unreachable is not None:
            # nothing was asked: nothing to keep
            return {ident: found[ident] if ident in found else have[ident] for ident in needed}
        if entry is None:
            entry = _Snapshot(at, {}, newest)
            kept[at] = entry
        entry.revisions.update(found)
        entry.used = newest
        kept.move_to_end(at)
        self._evict(key, at)
        return {ident: entry.revisions[ident] for ident in needed}

    def _waited(self, key: GroupKey) -> set[datetime]:
        """The grid times where the next look of a revision still asked about begins (the
        others' are forgotten)."""
        with self._wanted_lock:
            through = self._through.get(key)
            if not through:
                return set()
            wanted = self._wanted.get(key, {})
            for ident in [i for i in through if i not in wanted]:
                del through[ident]
            return set(through.values())

    def _evict(self, key: GroupKey, reading: datetime) -> None:
        """Keep the group's snapshots at its newest :data:`RECENT_LOOKS` grid times; older
        ones where a rollout's next look begins, at most :data:`WAITED_KEPT` (the most
        recently read) besides the one at ``reading`` (just asked for, and about to be read
        again by the same evaluation: dropping it would cost its reader the same round
        again); and at most :data:`OLDER_KEPT` other
        older ones, each only while it is read."""
        newest = self._newest[key]
        recent = newest - (RECENT_LOOKS - 1) * self.period
        idle = IDLE_LOOKS * self.period
        kept = self._cache[key]
        waited = self._waited(key)
        older = [t for t in kept if t < recent]  # least recently read first
        fresh = []
        for t in older:
            if t in waited or t == reading:
                continue
            if newest - kept[t].used >= idle:
                del kept[t]
            else:
                fresh.append(t)
        for t in fresh[: max(len(fresh) - OLDER_KEPT, 0)]:
            del kept[t]
        held = [t for t in older if t in waited and t != reading]  # least recently read first
        for t in held[: max(len(held) - WAITED_KEPT, 0)]:
            del kept[t]

    def _restarted(
        self, key: GroupKey, since: datetime, until: datetime, idents: frozenset[Ident]
    ) -> frozenset[Ident] | None:
        """Which of ``idents`` had a raw request counter or histogram count restart
        between the samples read at ``since`` and those read at ``until`` (its snapshot
        at ``since`` is cached); None when Prometheus could not tell. One query for every
        wanted revision of the group, kept per span."""
        checks = self._restarts[key]
        span = (since, until)
        covered, restarted = checks.get(span, (frozenset[Ident](), frozenset[Ident]()))
        if idents <= covered:
            checks.move_to_end(span)
            return restarted & idents
        ask = frozenset(self._beginning_at(key, since, set(idents))) - covered
        entry = self._cache[key].get(since)
        oldest = [
            raw.oldest
            for raw in (entry.revisions.values() if entry is not None else ())
            if raw.oldest is not None
        ]
        # From the oldest sample an instant query at `since` returned, so that a fall
        # between it and the next sample is in the range: the answer at `since` has the
        # times of the samples older than the maximum sample age, and the others are
        # younger. (A range that reaches back before a sample can only find a restart
        # that is not in the span: the look is then read period by period, never wrong.)
        floor = since - max(self.period, self.max_sample_age)
        first = min([*oldest, floor.timestamp()])
        seconds = max(math.ceil(until.timestamp() - first) + 1, 1)
        promql = _resets_query(series_of(key.profile, key.mode), ask, seconds)
        self._count_query("restart_check")
        found: set[Ident] = set()
        try:
            result = self._provider.query(promql, until)
        except NoData:
            result = None
        except Exception:  # unreachable, refused, a provider bug: it cannot tell
            return None
        if result is not None:
            if result.warnings:
                return None  # partial: a restart may be missing from it
            series = series_of(key.profile, key.mode)
            for s in result.series:
                found.add(
                    (
                        _label_value(s.labels, series.namespace_label),
                        _label_value(s.labels, series.identity_label),
                    )
                )
        covered, restarted = covered | ask, restarted | (frozenset(found) & ask)
        checks[span] = (covered, restarted)
        checks.move_to_end(span)
        while len(checks) > _RESETS_KEPT:
            checks.popitem(last=False)
        return restarted & idents

    def _counter_info(
        self,
        key: GroupKey,
        labels: Mapping[str, str],
        code_label: str | None,
        is_error: Callable[[Mapping[str, str]], bool] | None,
    ) -> _CounterInfo:
        series_key = frozenset(labels.items())
        info = self._counter_infos.get((key, series_key))
        if info is None:
            group = frozenset((k, v) for k, v in labels.items() if k != code_label)
            error = is_error is not None and is_error(labels)
            info = _CounterInfo(series_key, group, series_name(labels), error)
            self._counter_infos[(key, series_key)] = info
        return info

    def _is_error(
        self, key: GroupKey, series: ProfileSeries
    ) -> Callable[[Mapping[str, str]], bool] | None:
        """Whether a raw request counter counts 5xx (the profile's matcher, built once)."""
        if series.errors is None:
            return None
        if key not in self._matchers:
            self._matchers[key] = label_matcher(series.errors)
        return self._matchers[key]

    def _bound_set(self, bounds: tuple[float, ...]) -> tuple[float, ...]:
        """One tuple for every histogram with these bucket bounds (exporters share a few)."""
        if len(self._bounds) >= _BOUND_SETS_KEPT and bounds not in self._bounds:
            self._bounds.clear()
        return self._bounds.setdefault(bounds, bounds)

    def _histogram_info(
        self, key: GroupKey, hist_key: SeriesKey, bounds: tuple[float, ...], name: str
    ) -> _HistogramInfo:
        info = self._histogram_infos.get((key, hist_key, bounds))
        if info is None:
            info = _HistogramInfo(hist_key, name, bounds)
            self._histogram_infos[(key, hist_key, bounds)] = info
        return info

    def _queries(self, key: GroupKey, idents: frozenset[Ident]) -> dict[str, str]:
        """The round's PromQL for ``idents`` (the last set built is reused: its text is as
        long as the list of revisions)."""
        last = self._texts.get(key)
        if last is not None and last[0] == idents:
            return last[1]
        series = series_of(key.profile, key.mode)
        selected = _selected(series, idents)
        window = promql_duration(self.window)
        ns_label, id_label = series.namespace_label, series.identity_label
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

        def raw(selector: str) -> str:
            return with_sample_times(selector, max_age=self.max_sample_age)

        queries: dict[str, str] = {
            "requests": raw(f"{series.requests}{requests_sel}"),
            "buckets": raw(histogram_sel),
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
        self._texts[key] = (idents, queries)
        return queries

    def _ask(
        self,
        key: GroupKey,
        at: datetime,
        idents: frozenset[Ident],
        unreachable: MetricError | None = None,
        purpose: str = "round",
    ) -> dict[Ident, _Raw]:
        """One round at ``at`` for ``idents``: each one's raw series. Once a query finds
        Prometheus unreachable (or ``unreachable`` is given), the remaining queries are not
        sent: they fail with that error, so a Prometheus that does not answer costs one
        query's timeouts, not five. ``purpose`` is what the queries are counted as
        (:data:`QUERY_KINDS`)."""
        series = series_of(key.profile, key.mode)
        ns_label, id_label = series.namespace_label, series.identity_label
        queries = self._queries(key, idents)

        def ident_of(labels: Mapping[str, str]) -> Ident:
            return (_label_value(labels, ns_label), _label_value(labels, id_label))

        answers: dict[str, QueryResult | None] = {}
        failed: dict[str, MetricError] = {}
        problems: dict[Ident, dict[str, MetricError]] = {}
        warnings: dict[str, tuple[str, ...]] = {}
        origins: dict[str, Origin] = {}
        oldest: dict[Ident, float] = {}
        digests: list[str] = []
        failures: list[str] = []
        attempts = 0
        url = ""

        code_label = _code_label(series.errors)
        apart = {"__name__", "le"} | ({code_label} if code_label is not None else set())

        def process_of(labels: Mapping[str, str]) -> SeriesKey:
            """The series one process writes together (all codes, buckets and count)."""
            cut = dict(labels)  # copied and cut, not filtered label by label: answers are big
            for name in apart:
                cut.pop(name, None)
            return frozenset(cut.items())

        def spoil(ident: Ident, part: str, error: MetricError) -> None:
            problems.setdefault(ident, {}).setdefault(part, error)

        for name, promql in queries.items():
            part = _PART_OF_QUERY[name]
            origins[part] = Origin(promql, at)
            if unreachable is not None:
                failed[part] = unreachable
                digests.append("")
                continue
            self._count_query(purpose)
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
                timed = () if len(kept) == len(result.series) else result.series
                for s in timed:  # the times of samples older than the bound, if any
                    if s.labels.get(SAMPLE_LABEL) == "time" and math.isfinite(s.value):
                        ident = ident_of(s.labels)
                        oldest[ident] = min(oldest.get(ident, s.value), s.value)
            for s, invalid in bad:
                spoil(ident_of(s.labels), part, invalid)
            dropped = {id(s) for s, _ in bad}
            answers[name] = QueryResult(
                tuple(s for s in kept if id(s) not in dropped), result.raw_digest, result.url
            )

        # raw request counters (and the 5xx among them)
        is_error = self._is_error(key, series)
        counters: dict[Ident, list[tuple[_CounterInfo, float]]] = {}
        raw = answers.get("requests")
        for s in raw.series if raw is not None else ():
            ident = ident_of(s.labels)
            info = self._counter_info(key, s.labels, code_label, is_error)
            problem = count_problem(s.value, series=info.name, what="the counter",
                                    origin=origins["requests"])  # fmt: skip
            if problem is not None:
                spoil(ident, "requests", problem)
                continue
            counters.setdefault(ident, []).append((info, s.value))

        # raw histogram: buckets and _count per series
        origin = origins["latency"]
        gathered: dict[SeriesKey, tuple[Ident, dict[float, float], list[float]]] = {}
        raw = answers.get("buckets")
        for s in raw.series if raw is not None else ():
            ident = ident_of(s.labels)
            labels = dict(s.labels)
            labels.pop("le", None)
            labels.pop("__name__", None)
            hist_key = frozenset(labels.items())
            entry = gathered.setdefault(hist_key, (ident, {}, []))
            text = s.labels.get("le")
            if text is None:
                entry[2].append(s.value)  # the series' _count
                continue
            try:
                le = float(text)
            except ValueError:
                le = math.nan
            if math.isnan(le):
                spoil(ident, "latency", origin.error(
                    InvalidHistogram, f'a bucket has le="{text}", not a number',
                    series=series_name(s.labels), rule="le"))  # fmt: skip
                continue
            entry[1][le] = s.value
        histograms: dict[Ident, list[tuple[_HistogramInfo, array[float]]]] = {}
        for hist_key, (ident, buckets, counts) in gathered.items():
            bounds = self._bound_set(tuple(sorted(buckets)))
            known = self._histogram_infos.get((key, hist_key, bounds))
            name = (
                known.name
                if known is not None
                else series_name({"__name__": series.histogram, **dict(hist_key)})
            )
            problem = histogram_problem(
                buckets, counts[0] if counts else None, series=name, origin=origin
            )
            if problem is not None:
                spoil(ident, "latency", problem)
                continue
            kind_of = known or self._histogram_info(key, hist_key, bounds, name)
            histograms.setdefault(ident, []).append(
                (kind_of, array("d", [buckets[le] for le in bounds]))
            )

        # window values, grouped by revision
        window_values: dict[Ident, dict[str, float]] = {}
        for kind in _WINDOW_PARTS:
            grouped = answers.get(kind)
            if grouped is None:
                continue
            for s in grouped.series:
                ident = ident_of(s.labels)
                values = window_values.setdefault(ident, {})
                if kind not in values and is_count(s.value):
                    values[kind] = s.value  # valid for every kind: no name to write
                    continue
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

        round_ = _Round(
            at=at,
            queries=tuple(queries.values()),
            digest=hashlib.sha256("\n".join(digests).encode()).hexdigest(),
            url=url or self.url,
            failed=failed,
            warnings=warnings,
            origins=origins,
            errors_matcher=series.errors,
            histogram=series.histogram,
            scale=1000.0 if series.milliseconds else 1.0,
            attempts=attempts,
            failures=tuple(failures),
        )
        found: dict[Ident, _Raw] = {}
        for ident in idents:
            window = window_values.get(ident)
            found[ident] = _Raw(
                round_,
                tuple(counters.get(ident, ())),
                tuple(histograms.get(ident, ())),
                _NO_WINDOW
                if window is None
                else (
                    window.get("window_requests"),
                    window.get("window_errors"),
                    window.get("p99"),
                ),
                oldest.get(ident),
                problems.get(ident) or _NO_PROBLEMS,
            )
        return found


def _selected(series: ProfileSeries, idents: Iterable[Ident]) -> tuple[str, str]:
    """The namespace and identity matchers that select ``idents``."""
    namespaces = sorted({ns for ns, _ in idents})
    names = sorted({name for _, name in idents})
    return (
        f"{series.namespace_label}=~{string_literal('|'.join(map(regex_escape, namespaces)))}",
        f"{series.identity_label}=~{string_literal('|'.join(map(regex_escape, names)))}",
    )


def _resets_query(series: ProfileSeries, idents: Iterable[Ident], seconds: int) -> str:
    """The raw request counters and histogram counts of ``idents`` that went down within
    the last ``seconds`` (a process that restarted): empty when none did."""
    selected = _selected(series, idents)
    span = promql_duration(timedelta(seconds=seconds))

    def selector(matchers: Iterable[str]) -> str:
        return "{" + ",".join((*matchers, *selected)) + "}"

    counters = f"{series.requests}{selector(series.request_matchers)}"
    counts = f"{series.histogram}_count{selector(series.latency_matchers)}"
    return f"resets({counters}[{span}]) > 0 or resets({counts}[{span}]) > 0"


def _counts(before: _Raw, now: _Raw, reset_ratio: float) -> tuple[float, float | None]:
    """The revision's requests and 5xx in the look, reset by reset (raises InvalidAnswer)."""
    groups: dict[SeriesKey, tuple[dict[SeriesKey, float], dict[SeriesKey, float]]] = {}
    names: dict[SeriesKey, str] = {}
    errors_of: dict[SeriesKey, bool] = {}
    for raw, slot in ((before, 0), (now, 1)):
        for info, value in raw.counters:
            groups.setdefault(info.group, ({}, {}))[slot][info.key] = value
            names[info.key] = info.name
            errors_of[info.key] = info.error
    counted = now.round.errors_matcher is not None
    requests, errors = 0.0, 0.0
    for old, new in groups.values():
        increases = group_increase(
            old,
            new,
            total=lambda values: sum(values.values()),
            name=names.__getitem__,
            what="the process' request counters",
            origin=now.round.origins["requests"],
            reset_ratio=reset_ratio,
        )
        for key, increase in increases.items():
            requests += increase
            if counted and errors_of[key]:
                errors += increase
    return requests, errors if counted else None


def _buckets(
    ident: Ident, before: _Raw, now: _Raw, reset_ratio: float
) -> tuple[tuple[float, float], ...]:
    """The revision's cumulative buckets in the look, in seconds (raises InvalidAnswer)."""
    per_le: dict[float, float] = {}
    earlier = {info.key: (info.bounds, values) for info, values in before.histograms}
    for info, values in now.histograms:
        old = earlier.get(info.key)

        def label(le: float, of: str = info.name) -> str:
            sep = "" if of.endswith("{}") else ","
            return f'{of[:-1]}{sep}le="{le_text(le)}"}}'

        increases = group_increase(
            dict(zip(old[0], old[1], strict=True)) if old is not None else {},
            dict(zip(info.bounds, values, strict=True)),
            total=lambda counts: counts.get(math.inf, 0.0),
            name=label,
            what="the histogram's buckets and count",
            origin=now.round.origins["latency"],
            reset_ratio=reset_ratio,
        )
        for le, increase in increases.items():
            per_le[le] = per_le.get(le, 0.0) + increase
    if not per_le:
        return ()
    where = f"{now.round.histogram}{{{ident[1]} in {ident[0]}}}"
    problem = histogram_problem(per_le, None, series=where, origin=now.round.origins["latency"])
    if problem is not None:  # each instant valid, but their difference is not a histogram
        raise problem
    scale = now.round.scale
    return tuple(
        sorted((le if math.isinf(le) else le / scale, count) for le, count in per_le.items())
    )


def _side(ident: Ident, before: _Raw, now: _Raw, reset_ratio: float) -> SideLook:
    problems: dict[str, MetricError] = {}
    for part in ("requests", "latency"):  # raw counters: both instants count
        for raw in (before, now):
            found = raw.round.failed.get(part) or raw.problems.get(part)
            if found is not None:
                problems.setdefault(part, found)
    for part in _WINDOW_PARTS:  # window values: now only
        found = now.round.failed.get(part) or now.problems.get(part)
        if found is not None:
            problems[part] = found
    counted = now.round.errors_matcher is not None
    requests, errors = 0.0, (0.0 if counted else None)
    if "requests" not in problems:
        try:
            requests, errors = _counts(before, now, reset_ratio)
        except InvalidAnswer as error:
            problems["requests"] = error
    buckets: tuple[tuple[float, float], ...] = ()
    if "latency" not in problems:
        try:
            buckets = _buckets(ident, before, now, reset_ratio)
        except InvalidAnswer as error:
            problems["latency"] = error
    window_requests, window_errors, p99 = now.window
    return SideLook(
        requests=requests,
        errors=errors,
        buckets=buckets,
        window_requests=0.0 if window_requests is None else window_requests,
        window_errors=(0.0 if window_errors is None else window_errors) if counted else None,
        p99=None if p99 is None else p99 / now.round.scale,
        problems=problems,
    )
