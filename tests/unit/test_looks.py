"""Grouped looks (analysis.looks): the queries every rollout of a profile shares.

A fake provider answers each query kind from a table of per-revision numbers and counts
what it was sent, so the tests can state what an operator cares about: how many queries
Prometheus gets as rollouts are added, and what each rollout reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis.looks import LookSource, grid_times
from analysis.runner import Analyzer
from analysis.types import (
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    DuplicateSeries,
    InvalidAnswer,
    InvalidCounter,
    InvalidHistogram,
    NoData,
    Outcome,
    QueryResult,
    Series,
    StaleSample,
    StepAnalysis,
    Subject,
    Unreachable,
    UnreadableSample,
)
from canary.settings import load_settings

AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
SECOND = timedelta(seconds=1)
ORIGIN = AT - timedelta(hours=1)  # when every fake counter started


@dataclass
class Revision:
    requests: float = 100.0
    errors: float = 1.0
    # non-cumulative latency counts per bucket bound (seconds); the rest go to +Inf
    buckets: Mapping[float, float] = field(default_factory=lambda: {0.01: 60.0, 0.05: 39.0})
    p99: float = 0.045


@dataclass
class FakePrometheus:
    """Answers the look queries from ``revisions[(namespace, name)]``, whose numbers are
    per 5 s look: the raw counters grow by that much every 5 s (one pod per revision),
    and the grouped window queries return the per-look figures."""

    revisions: dict[tuple[str, str], Revision]
    identity_label: str = "revision"
    namespace_label: str = "namespace"
    milliseconds: bool = False
    code_label: str = "http_response_status_code"
    down: bool = False
    duplicate: tuple[str, str] | None = None
    nan_requests: tuple[str, str] | None = None
    restart_at: datetime | None = None  # every counter restarts from 0 just before this
    origin: datetime = ORIGIN  # when every counter started
    sent: list[str] = field(default_factory=list)
    url: str = "http://prometheus.test:9090"
    # (kind, at, series) -> series: spoils an answer; kind is one of KINDS
    mutate: Callable[[str, datetime, list[Series]], list[Series]] | None = None
    warnings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> warnings
    stamp: bool = True  # samples carry the evaluation time, as Prometheus' do
    # how old each revision's last raw sample is (seconds; 1 s when not given)
    ages: dict[tuple[str, str], float] = field(default_factory=dict)
    frozen: Callable[[Mapping[str, str]], bool] = lambda labels: True  # which series ages hit

    def looks_since_start(self, at: datetime) -> float:
        start = self.origin
        if self.restart_at and at >= self.restart_at:
            start = self.restart_at - SECOND * 5  # one look's worth since the restart
        return (at - start) / (SECOND * 5)

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.sent.append(promql)
        if self.down:
            raise Unreachable("connection refused", query=promql)
        if promql.startswith("resets("):
            return self.resets(promql, at)
        raw = "sum by" not in promql and "histogram_quantile" not in promql
        k = self.looks_since_start(at) if raw else 1.0
        series: list[Series] = []
        for (ns, name), rev in self.revisions.items():
            if f'"{name}' not in promql and f"|{name}" not in promql:
                continue  # not selected by the identity matcher
            labels = {self.namespace_label: ns, self.identity_label: name}
            if raw:
                labels["pod"] = f"{name}-pod"
            if "_bucket" in promql and "histogram_quantile" not in promql:
                total = 0.0
                scale = 1000.0 if self.milliseconds else 1.0
                for le, count in sorted(rev.buckets.items()):
                    total += count
                    series.append(Series({**labels, "le": repr(le * scale)}, total * k))
                series.append(Series({**labels, "le": "+Inf"}, rev.requests * k))
                series.append(Series(labels, rev.requests * k))  # the histogram's _count
            elif "histogram_quantile" in promql:
                series.append(Series(labels, rev.p99 * (1000 if self.milliseconds else 1)))
            elif "5.." in promql or '"5xx"' in promql:
                assert not raw, "the raw 5xx counters are read from the raw request counters"
                series.append(Series(labels, rev.errors * k))
            elif raw:  # one series per status code, as the exporters write them
                error, ok = ("5xx", "2xx") if self.code_label.endswith("_class") else ("500", "200")
                value = math.nan if (ns, name) == self.nan_requests else rev.requests * k
                series.append(Series({**labels, self.code_label: ok}, value - rev.errors * k))
                series.append(Series({**labels, self.code_label: error}, rev.errors * k))
            else:
                value = math.nan if (ns, name) == self.nan_requests else rev.requests * k
                series.append(Series(labels, value))
                if (ns, name) == self.duplicate and not raw:
                    series.append(Series(labels, value))
        kind = kind_of(promql)
        if raw and "timestamp(" in promql:
            series += self.sample_times(promql, at, series)
        if self.stamp:
            series = [replace(s, timestamp=at.timestamp()) for s in series]
        if self.mutate is not None:
            series = self.mutate(kind, at, series)
        if not series:
            raise NoData("empty", query=promql, raw_digest="e" * 64)
        return QueryResult(
            tuple(series),
            raw_digest=f"{len(self.sent):064x}",
            url=self.url,
            warnings=self.warnings.get(kind, ()),
        )

    def sample_times(self, promql: str, at: datetime, values: list[Series]) -> list[Series]:
        """As Prometheus answers the sample times of a raw query: labelled "time", the
        last sample time of each series older than the query's bound. A negative age is a
        store that lies (an instant query never selects a sample after its time): its
        times are in the answer whatever was asked."""
        bound = re.search(r"< time\(\) - ([0-9.e+]+)", promql)
        assert bound is not None, promql
        limit = float(bound.group(1))
        out: list[Series] = []
        for one in values:
            ident = (one.labels[self.namespace_label], one.labels[self.identity_label])
            age = self.ages.get(ident, 1.0) if self.frozen(one.labels) else 1.0
            if age > limit or age < 0 or math.isnan(age):
                out.append(Series({**one.labels, "ksc_sample": "time"}, at.timestamp() - age))
        return out

    def resets(self, promql: str, at: datetime) -> QueryResult:
        """The restart check of a joined look: the selected revisions whose counters
        restarted within its range (every one, when ``restart_at`` falls in it)."""
        found = re.search(r"\[(\d+)s\]", promql)
        assert found is not None, promql
        since = at - SECOND * int(found.group(1))
        series = []
        selected = [(ns, n) for ns, n in self.revisions if f'"{n}' in promql or f"|{n}" in promql]
        if self.restart_at is not None:
            fell = self.restart_at - SECOND
            for ns, name in selected:
                # the fall is between the last sample before the restart (as old as the
                # revision's samples are) and the first after it: both must be in the range
                last_before = fell - SECOND * self.ages.get((ns, name), 1.0)
                if since <= last_before and fell <= at:
                    labels = {self.namespace_label: ns, self.identity_label: name}
                    series.append(Series({**labels, "pod": f"{name}-pod"}, 1.0, at.timestamp()))
        if not series:
            raise NoData("empty", query=promql, raw_digest="e" * 64)
        return QueryResult(tuple(series), raw_digest=f"{len(self.sent):064x}", url=self.url)


KINDS = ("requests", "buckets", "window_requests", "window_errors", "p99")


def kind_of(promql: str) -> str:
    """Which of the look's queries ``promql`` is."""
    if "histogram_quantile" in promql:
        return "p99"
    if "sum by" in promql:
        return "window_errors" if "5.." in promql or '"5xx"' in promql else "window_requests"
    return "buckets" if "_bucket" in promql else "requests"


def subject(ns: str, canary: str, baseline: str, profile: str = "knative-otel") -> Subject:
    return Subject(
        namespace=ns,
        isvc=canary.split("-", maxsplit=1)[0],
        mode="knative",
        canary_revision=canary,
        baseline_revision=baseline,
        metric_profile=profile,
        window=timedelta(seconds=60),
    )


def source(prometheus: FakePrometheus) -> LookSource:
    return LookSource(prometheus, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60)


@pytest.mark.parametrize(
    ("after", "until", "limit", "expected"),
    [
        pytest.param(None, AT + SECOND * 7, 10, [AT + SECOND * 5], id="first-look-is-the-latest"),
        pytest.param(
            AT, AT + SECOND * 16, 10, [AT + SECOND * 5, AT + SECOND * 10, AT + SECOND * 15],
            id="every-missed-look-in-order",
        ),
        pytest.param(AT, AT + SECOND * 4, 10, [], id="nothing-new-yet"),
        pytest.param(AT, AT + SECOND * 30, 2, [AT + SECOND * 25, AT + SECOND * 30],
                     id="a-long-gap-keeps-the-latest-looks"),
    ],
)  # fmt: skip
def test_grid_times_tile_time_on_a_fixed_grid(
    after: datetime | None, until: datetime, limit: int, expected: list[datetime]
) -> None:
    assert grid_times(after, until, SECOND * 5, limit=limit) == expected


def test_due_waits_for_the_lag_before_a_look_is_read() -> None:
    looks = source(FakePrometheus({}))
    assert looks.due(AT, AT + SECOND * 6) == []  # 5 s look, but 2 s lag
    assert looks.due(AT, AT + SECOND * 7) == [AT + SECOND * 5]


def test_query_count_does_not_grow_with_the_number_of_rollouts() -> None:
    revisions = {("ns", f"m{i}-0000{v}"): Revision() for i in range(20) for v in (1, 2)}
    prometheus = FakePrometheus(revisions)
    looks = source(prometheus)
    subjects = [subject("ns", f"m{i}-00002", f"m{i}-00001") for i in range(20)]
    for s in subjects:  # first grid time: each newcomer widens the selection once
        looks.look(s, AT)
    sent_before = len(prometheus.sent)
    for s in subjects:
        looks.look(s, AT + SECOND * 5)
    per_look = len(prometheus.sent) - sent_before
    assert per_look == 5  # raw requests and buckets; window requests, 5xx and p99
    assert looks.queries_sent == len(prometheus.sent)
    for s in subjects:  # the same look again is served from the cache
        looks.look(s, AT + SECOND * 5)
    assert len(prometheus.sent) - sent_before == 5


def test_without_batching_each_rollout_sends_its_own_queries() -> None:
    revisions = {("ns", f"m{i}-0000{v}"): Revision(requests=100.0 + i, errors=float(i))
                 for i in range(6) for v in (1, 2)}  # fmt: skip
    grouped, alone = FakePrometheus(revisions), FakePrometheus(revisions)
    batched = source(grouped)
    unbatched = LookSource(alone, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60,
                           batch=False)  # fmt: skip
    subjects = [subject("ns", f"m{i}-00002", f"m{i}-00001") for i in range(6)]
    for looks in (batched, unbatched):
        for s in subjects:
            looks.look(s, AT)
    sent = len(alone.sent)
    for s in subjects:
        looks_of = (batched.look(s, AT + SECOND * 5), unbatched.look(s, AT + SECOND * 5))
        # the same numbers either way
        assert looks_of[0].canary == looks_of[1].canary
        assert looks_of[0].baseline == looks_of[1].baseline
    assert len(alone.sent) - sent == 5 * len(subjects)  # five per look per rollout
    for promql in alone.sent:  # each selects one rollout's two revisions only
        assert re.search(r'revision=~"m(\d)-00002\|m\1-00001"|revision=~"m(\d)-00001\|m\2-00002"',
                         promql), promql  # fmt: skip
    assert unbatched.queries_sent == len(alone.sent)


def test_the_setting_turns_batching_off() -> None:
    assert load_settings().batch_looks is True
    settings = load_settings(None, batch_looks=False)
    assert settings.batch_looks is False


def test_each_rollout_reads_its_own_canary_and_baseline() -> None:
    prometheus = FakePrometheus(
        {
            ("a", "scorer-00001"): Revision(requests=900, errors=9),
            ("a", "scorer-00002"): Revision(requests=100, errors=7, p99=0.2),
            ("b", "scorer-00002"): Revision(requests=5, errors=0),
        }
    )
    looks = source(prometheus)
    look = looks.look(subject("a", "scorer-00002", "scorer-00001"), AT)
    assert (look.canary.requests, look.canary.errors, look.canary.p99) == (100, 7, 0.2)
    assert (look.baseline.requests, look.baseline.errors) == (900, 9)
    assert look.canary.buckets[-1] == (math.inf, 100)
    assert look.canary.buckets[0] == (0.01, 60)
    assert look.queries
    assert all('namespace=~"a"' in q for q in look.queries)
    assert look.url == prometheus.url
    assert len(look.digest) == 64


def test_a_revision_without_series_reads_as_zero_requests() -> None:
    looks = source(FakePrometheus({("a", "scorer-00001"): Revision()}))
    look = looks.look(subject("a", "scorer-00002", "scorer-00001"), AT)
    assert look.canary.requests == 0
    assert look.canary.buckets == ()
    assert look.canary.p99 is None


def test_millisecond_histograms_are_read_in_seconds() -> None:
    prometheus = FakePrometheus(
        {("a", "s-00001-deployment"): Revision(), ("a", "s-00002-deployment"): Revision()},
        identity_label="destination_workload",
        namespace_label="destination_workload_namespace",
        milliseconds=True,
        code_label="response_code",
    )
    look = source(prometheus).look(subject("a", "s-00002", "s-00001", profile="istio"), AT)
    assert (look.canary.requests, look.canary.errors) == (100, 1)
    assert look.canary.buckets[0] == (0.01, 60)
    assert look.canary.p99 == pytest.approx(0.045)


def test_an_unreachable_prometheus_fails_the_look_and_is_asked_again() -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision(), ("a", "s-00002"): Revision()})
    looks = source(prometheus)
    prometheus.down = True
    failed = looks.look(subject("a", "s-00002", "s-00001"), AT)
    assert len(prometheus.sent) == 1  # one query's timeouts, not ten
    for part in ("requests", "latency", "window_requests", "window_errors", "p99"):
        assert isinstance(failed.canary.problems[part], Unreachable)
        assert isinstance(failed.baseline.problems[part], Unreachable)
    error = failed.problem(["requests"])
    assert error is not None
    assert error.query
    assert error.at in (AT - SECOND * 5, AT)
    prometheus.down = False
    again = looks.look(subject("a", "s-00002", "s-00001"), AT)
    assert again.canary.requests == 100
    assert not again.canary.problems
    assert not again.baseline.problems


S2 = ("a", "s-00002")


def spoil(
    kind: str,
    change: Callable[[Series], list[Series]],
    *,
    at: datetime | None = None,
    who: tuple[str, str] = S2,
) -> Callable[[str, datetime, list[Series]], list[Series]]:
    """A mutation of ``who``'s series in the answers to the ``kind`` query (at ``at`` only,
    or at every time)."""

    def mutate(asked: str, when: datetime, series: list[Series]) -> list[Series]:
        if asked != kind or (at is not None and when != at):
            return series
        out: list[Series] = []
        for s in series:
            mine = (s.labels.get("namespace"), s.labels.get("revision")) == who
            out += change(s) if mine and "ksc_sample" not in s.labels else [s]
        return out

    return mutate


def value(v: float) -> Callable[[Series], list[Series]]:
    return lambda s: [replace(s, value=v)]


def bucket(le: str, change: Callable[[Series], list[Series]]) -> Callable[[Series], list[Series]]:
    """``change`` applied to the bucket ``le`` only (``"count"``: the _count series)."""

    def apply(s: Series) -> list[Series]:
        mine = s.labels.get("le") == le if le != "count" else "le" not in s.labels
        return change(s) if mine else [s]

    return apply


def shifted(seconds: float) -> Callable[[Series], list[Series]]:
    return lambda s: [replace(s, timestamp=(s.timestamp or 0.0) + seconds)]


def unreadable(s: Series) -> list[Series]:
    """The sample as the provider keeps one it could not parse."""
    return [replace(s, value=math.nan, timestamp=None, unreadable="'abc' is not a number")]


def twice(s: Series) -> list[Series]:
    return [s, s]


def relabel(**labels: str) -> Callable[[Series], list[Series]]:
    return lambda s: [replace(s, labels={**s.labels, **labels})]


# (query kind, change of s-00002's series, part spoilt, error type, rule)
BAD_SERIES = [
    pytest.param("requests", value(math.nan), "requests", InvalidCounter, "non-finite",
                 id="nan-counter"),
    pytest.param("requests", value(math.inf), "requests", InvalidCounter, "non-finite",
                 id="inf-counter"),
    pytest.param("requests", value(-math.inf), "requests", InvalidCounter, "non-finite",
                 id="minus-inf-counter"),
    pytest.param("requests", value(-3.0), "requests", InvalidCounter, "negative",
                 id="negative-counter"),
    pytest.param("requests", twice, "requests", DuplicateSeries, "duplicate",
                 id="duplicate-counter"),
    pytest.param("requests", shifted(3600), "requests", StaleSample, "timestamp",
                 id="counter-an-hour-ahead"),
    pytest.param("requests", shifted(-86400), "requests", StaleSample, "timestamp",
                 id="counter-a-day-behind"),
    pytest.param("buckets", bucket("0.01", value(1e9)), "latency", InvalidHistogram,
                 "monotonic", id="buckets-fall-as-le-rises"),
    pytest.param("buckets", bucket("0.05", value(0.0)), "latency", InvalidHistogram,
                 "monotonic", id="a-middle-bucket-reads-zero"),
    pytest.param("buckets", bucket("+Inf", lambda s: []), "latency", InvalidHistogram,
                 "no-inf-bucket", id="no-inf-bucket"),
    pytest.param("buckets", bucket("count", value(1.0)), "latency", InvalidHistogram,
                 "count-mismatch", id="count-below-inf"),
    pytest.param("buckets", bucket("+Inf", lambda s: [replace(s, value=s.value + 5)]),
                 "latency", InvalidHistogram, "count-mismatch", id="inf-above-count"),
    pytest.param("buckets", bucket("0.01", relabel(le="fast")), "latency", InvalidHistogram,
                 "le", id="le-not-a-number"),
    pytest.param("buckets", bucket("0.01", value(math.nan)), "latency", InvalidCounter,
                 "non-finite", id="nan-bucket"),
    pytest.param("buckets", bucket("count", value(-1.0)), "latency", InvalidCounter,
                 "negative", id="negative-count"),
    pytest.param("buckets", twice, "latency", DuplicateSeries, "duplicate",
                 id="duplicate-buckets"),
    pytest.param("buckets", shifted(-600), "latency", StaleSample, "timestamp",
                 id="buckets-ten-minutes-behind"),
    pytest.param("window_requests", value(math.nan), "window_requests", InvalidCounter,
                 "non-finite", id="nan-window-requests"),
    pytest.param("window_errors", value(-2.0), "window_errors", InvalidCounter, "negative",
                 id="negative-window-5xx"),
    pytest.param("window_requests", twice, "window_requests", DuplicateSeries, "duplicate",
                 id="duplicate-window-series"),
    pytest.param("p99", value(-0.5), "p99", InvalidHistogram, "negative", id="negative-p99"),
    pytest.param("p99", lambda s: [s, replace(s, labels={**s.labels, "pod": "x"})], "p99",
                 DuplicateSeries, "one-per-revision", id="two-p99-series-for-one-revision"),
    pytest.param("requests", unreadable, "requests", UnreadableSample, "unreadable",
                 id="unreadable-counter"),
    pytest.param("buckets", bucket("0.05", unreadable), "latency", UnreadableSample,
                 "unreadable", id="unreadable-bucket"),
    pytest.param("window_requests", unreadable, "window_requests", UnreadableSample,
                 "unreadable", id="unreadable-value-in-a-grouped-answer"),
    pytest.param("window_errors", unreadable, "window_errors", UnreadableSample,
                 "unreadable", id="unreadable-5xx-in-a-grouped-answer"),
    pytest.param("p99", shifted(30), "p99", StaleSample, "timestamp", id="p99-ahead"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "part", "error", "rule"), BAD_SERIES)
def test_a_bad_series_fails_only_its_part_of_its_rollouts_look(
    kind: str, change: Callable[[Series], list[Series]], part: str, error: type, rule: str
) -> None:
    """The answer's other series (rollout t, and s's other parts) are still evidence; the
    error names the series and the rule, and carries its query, time and digest."""
    revisions = {(ns, n): Revision() for ns, n in [("a", "s-00001"), S2, ("a", "t-00001"),
                                                  ("a", "t-00002")]}  # fmt: skip
    prometheus = FakePrometheus(revisions, mutate=spoil(kind, change))
    looks = source(prometheus)
    good = subject("a", "t-00002", "t-00001")
    bad = subject("a", "s-00002", "s-00001")
    looks.look(good, AT)
    look = looks.look(bad, AT)
    assert set(look.canary.problems) == {part}
    assert not look.baseline.problems  # s-00001's series are fine
    found = look.canary.problems[part]
    assert isinstance(found, error)
    assert isinstance(found, InvalidAnswer)
    assert found.rule == rule
    assert "s-00002" in found.series
    assert "s-00002" in str(found)
    assert f"rule: {rule}" in str(found)
    assert found.query
    assert found.query in look.queries
    assert found.at in (AT, AT - SECOND * 5)
    assert found.raw_digest
    assert len(found.raw_digest) == 64
    healthy = looks.look(good, AT)
    assert not healthy.canary.problems
    assert not healthy.baseline.problems
    assert (healthy.canary.requests, healthy.canary.errors) == (100, 1)
    assert healthy.canary.buckets[-1] == (math.inf, 100)
    if part != "requests":  # the other parts of the bad rollout's look are still read
        assert (look.canary.requests, look.canary.errors) == (100, 1)
    if part != "latency":
        assert look.canary.buckets[-1] == (math.inf, 100)


def test_a_bad_series_for_one_rollout_does_not_stop_a_bad_canary_of_another() -> None:
    """A 15 %-5xx canary in the same group is still read whole next to a broken one."""
    prometheus = FakePrometheus(
        {
            ("a", "s-00001"): Revision(),
            S2: Revision(),
            ("a", "t-00001"): Revision(requests=100, errors=1),
            ("a", "t-00002"): Revision(requests=100, errors=15),
        },
        mutate=spoil("requests", value(math.nan)),
    )
    looks = source(prometheus)
    assert looks.look(subject("a", "s-00002", "s-00001"), AT).canary.problems
    look = looks.look(subject("a", "t-00002", "t-00001"), AT)
    assert (look.canary.requests, look.canary.errors) == (100, 15)
    assert not look.canary.problems


def test_a_look_with_a_problem_is_not_cached_and_is_read_again() -> None:
    spoilt = {"on": True}

    def once(kind: str, at: datetime, series: list[Series]) -> list[Series]:
        if spoilt["on"] and kind == "requests":
            return spoil("requests", value(math.nan))(kind, at, series)
        return series

    prometheus = FakePrometheus({("a", "s-00001"): Revision(), S2: Revision()}, mutate=once)
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    assert "requests" in looks.look(s, AT).canary.problems
    sent = len(prometheus.sent)
    assert "requests" in looks.look(s, AT).canary.problems  # asked again, not cached
    assert len(prometheus.sent) > sent
    spoilt["on"] = False
    look = looks.look(s, AT)
    assert not look.canary.problems
    assert look.canary.requests == 100
    sent = len(prometheus.sent)
    looks.look(s, AT)  # a good look is cached
    assert len(prometheus.sent) == sent


@pytest.mark.parametrize("kind", KINDS)
def test_warnings_are_kept_per_part_and_the_look_is_asked_again(kind: str) -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision(), S2: Revision()})
    prometheus.warnings[kind] = ("remote read: 1 of 3 stores did not answer",)
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    look = looks.look(s, AT)
    part = {"buckets": "latency"}.get(kind, kind)
    assert look.partial([part]) == ("remote read: 1 of 3 stores did not answer",) * 2
    others = [p for p in ("requests", "latency", "window_requests", "window_errors", "p99")
              if p != part]  # fmt: skip
    assert look.partial(others) == ()
    sent = len(prometheus.sent)
    looks.look(s, AT)
    assert len(prometheus.sent) > sent  # a partial snapshot is not reused


def test_a_profile_without_status_codes_sends_no_error_query() -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision(), ("a", "s-00002"): Revision()})
    look = source(prometheus).look(
        subject("a", "s-00002", "s-00001", profile="kserve-model-server"), AT
    )
    assert look.canary.errors is None
    assert len(prometheus.sent) == 2 * 4  # two snapshots (the look is their difference)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="look period"):
        LookSource(FakePrometheus({}), period=SECOND * 10, lag=SECOND, window=SECOND * 5)
    with pytest.raises(ValueError, match="burst length"):
        LookSource(FakePrometheus({}), period=SECOND * 5, lag=SECOND, window=SECOND * 60,
                   burst=SECOND * 0)  # fmt: skip


@pytest.mark.parametrize(("burst", "block"), [(None, 1), (30, 6), (2, 1), (32, 6)])
def test_a_burst_spans_a_whole_number_of_looks(burst: int | None, block: int) -> None:
    source = LookSource(FakePrometheus({}), period=SECOND * 5, lag=SECOND, window=SECOND * 60,
                        burst=None if burst is None else SECOND * burst)  # fmt: skip
    assert source.block_looks == block


def test_a_counter_restart_counts_from_zero_not_as_a_negative_look() -> None:
    prometheus = FakePrometheus(
        {("a", "s-00001"): Revision(), ("a", "s-00002"): Revision()},
        restart_at=AT + SECOND * 10,
    )
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    counts = [looks.look(s, AT + SECOND * 5 * i).canary.requests for i in range(4)]
    assert counts == [100, 100, 100, 100]  # the restart look reads the new counter


def test_a_revision_that_appears_counts_its_requests_from_its_second_look() -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision()})
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    assert looks.look(s, AT).canary.requests == 0
    prometheus.revisions[("a", "s-00002")] = Revision(requests=7)
    prometheus.restart_at = AT + SECOND * 5  # its counter started one look ago
    # Its first series says nothing about when its total accrued: nothing is counted yet.
    assert looks.look(s, AT + SECOND * 5).canary.requests == 0
    assert looks.look(s, AT + SECOND * 10).canary.requests == 7


@pytest.mark.parametrize("missing_looks", [1, 2, 5])
def test_a_process_whose_series_come_back_is_not_counted_twice(missing_looks: int) -> None:
    """Failed scrapes leave a process' series stale, and a restarted Prometheus has lost
    them: when they come back with the process' whole lifetime in them, that total was
    already counted by earlier looks."""
    gone = {AT + SECOND * 5 * i for i in range(1, missing_looks + 1)}

    def stale(kind: str, at: datetime, series: list[Series]) -> list[Series]:
        if at not in gone or kind not in {"requests", "buckets"}:
            return series
        return [x for x in series if x.labels.get("revision") != "s-00002"]

    prometheus = FakePrometheus(
        {("a", "s-00001"): Revision(), ("a", "s-00002"): Revision(requests=50, errors=25)},
        mutate=stale,
    )
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    counted = [looks.look(s, AT + SECOND * 5 * i) for i in range(missing_looks + 3)]
    canary = [look.canary.requests for look in counted]
    assert canary == [50.0] + [0.0] * (missing_looks + 1) + [50.0], canary
    assert all(look.canary.errors in (0.0, 25.0) for look in counted)
    assert [look.baseline.requests for look in counted] == [100.0] * (missing_looks + 3)


def code_500(labels: Mapping[str, str]) -> bool:
    return labels.get("http_response_status_code") == "500"


def bucket_10ms(labels: Mapping[str, str]) -> bool:
    return labels.get("le") == "0.01"


@pytest.mark.parametrize(
    ("age", "frozen", "parts"),
    [
        pytest.param(121.0, code_500, {"requests"}, id="5xx-2-min-old-while-2xx-moves"),
        pytest.param(600.0, code_500, {"requests"}, id="5xx-frozen-10-min"),
        pytest.param(86400.0, code_500, {"requests"}, id="5xx-a-day-old"),
        pytest.param(600.0, bucket_10ms, {"latency"}, id="one-bucket-frozen"),
        pytest.param(-60.0, code_500, {"requests"}, id="5xx-in-the-future"),
        pytest.param(-60.0, lambda labels: True, {"requests", "latency"},
                     id="everything-in-the-future"),
    ],
)  # fmt: skip
def test_a_value_frozen_while_its_siblings_move_fails_only_its_rollout(
    age: float, frozen: Callable[[Mapping[str, str]], bool], parts: set[str]
) -> None:
    """Prometheus stamps every value with the time asked for; timestamp() tells that a 5xx
    counter stopped (an exporter stuck with explicit timestamps, a lagging remote store)
    while the same pod's 2xx counter moves: that reads as "no more errors"."""
    revisions = {(ns, n): Revision() for ns, n in [("a", "s-00001"), S2, ("a", "t-00001"),
                                                  ("a", "t-00002")]}  # fmt: skip
    prometheus = FakePrometheus(revisions, ages={S2: age}, frozen=frozen)
    looks = source(prometheus)
    look = looks.look(subject("a", "s-00002", "s-00001"), AT)
    assert set(look.canary.problems) == parts
    for part in parts:
        found = look.canary.problems[part]
        assert isinstance(found, StaleSample)
        assert found.rule == "sample-age"
        assert "s-00002" in found.series
        assert "timestamp(" in str(found.query)
    assert not look.baseline.problems
    other = looks.look(subject("a", "t-00002", "t-00001"), AT)
    assert not other.canary.problems
    assert other.canary.requests == 100


@pytest.mark.parametrize("age", [121.0, 600.0])
def test_a_process_whose_every_series_stopped_only_stops_counting(age: float) -> None:
    """A pod gone without staleness markers (Prometheus was down): all of its series are
    old together, which is not good news, only no news."""
    prometheus = FakePrometheus({("a", "s-00001"): Revision(), S2: Revision()}, ages={S2: age})
    look = source(prometheus).look(subject("a", "s-00002", "s-00001"), AT)
    assert not look.canary.problems


T = AT + SECOND * 10  # the instant where a counter misbehaves in the tests below


def scaled(factor: float, add: float = 0.0) -> Callable[[Series], list[Series]]:
    return lambda s: [replace(s, value=s.value * factor + add)]


def is_5xx(s: Series) -> bool:
    return s.labels.get("http_response_status_code", "").startswith("5")


def only(pick: Callable[[Series], bool], change: Callable[[Series], list[Series]]) -> Any:
    return lambda s: change(s) if pick(s) else [s]


# (query kind, change at T of s-00002's series, part, rule); every one a decrease that is
# not the whole series falling to near zero
NOT_A_RESET = [
    pytest.param("requests", only(is_5xx, scaled(0.9)), "requests", id="5xx-down-10-percent"),
    pytest.param("requests", only(is_5xx, scaled(0.0)), "requests",
                 id="5xx-to-zero-but-not-the-2xx"),
    pytest.param("requests", only(lambda s: not is_5xx(s), scaled(0.0)), "requests",
                 id="2xx-to-zero-but-not-the-5xx"),
    pytest.param("requests", scaled(0.5), "requests", id="all-codes-halved"),
    pytest.param("requests", scaled(0.2), "requests", id="all-codes-to-a-fifth"),
    pytest.param("buckets", bucket("0.01", scaled(0.5)), "latency",
                 id="one-bucket-down-the-rest-up"),
    pytest.param("buckets", scaled(0.5), "latency", id="whole-histogram-halved"),
    pytest.param("buckets", only(lambda s: s.labels.get("le") not in ("+Inf", None), scaled(0.0)),
                 "latency", id="finite-buckets-to-zero-but-not-inf-and-count"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "part"), NOT_A_RESET)
def test_a_decrease_that_is_not_a_consistent_reset_is_an_error_never_clamped(
    kind: str, change: Callable[[Series], list[Series]], part: str
) -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision(requests=100, errors=15), S2:
                                 Revision(requests=100, errors=15)},
                                mutate=spoil(kind, change, at=T))  # fmt: skip
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    assert not looks.look(s, T - SECOND * 5).canary.problems
    look = looks.look(s, T)
    found = look.canary.problems[part]
    assert isinstance(found, InvalidCounter)
    assert found.rule == "decrease"
    assert "s-00002" in found.series
    assert found.at == T
    assert found.query in look.queries
    assert found.raw_digest
    assert not look.baseline.problems
    assert set(look.canary.problems) == {part}  # the other part of the look still reads


@pytest.mark.parametrize(
    ("kind", "factor"),
    [
        pytest.param("requests", 0.0, id="request-counters-to-zero"),
        pytest.param("requests", 0.001, id="request-counters-near-zero"),
        pytest.param("buckets", 0.0, id="histogram-to-zero"),
        pytest.param("buckets", 0.01, id="histogram-near-zero"),
    ],
)
def test_a_consistent_drop_to_near_zero_is_a_reset_counted_from_zero(
    kind: str, factor: float
) -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision(), S2: Revision()},
                                mutate=spoil(kind, scaled(factor), at=T))  # fmt: skip
    looks = source(prometheus)
    look = looks.look(subject("a", "s-00002", "s-00001"), T)
    assert not look.canary.problems
    k = (T - ORIGIN) / (SECOND * 5)
    if kind == "requests":
        assert look.canary.requests == pytest.approx(100 * k * factor)
        assert look.canary.errors == pytest.approx(1 * k * factor)
    else:
        assert look.canary.buckets[-1][0] == math.inf
        assert look.canary.buckets[-1][1] == pytest.approx(100 * k * factor)


def test_bucket_increases_that_are_not_a_histogram_are_an_error() -> None:
    """Each instant is a valid histogram, but more requests were added under 10 ms than
    under 50 ms between them: the look cannot be read."""
    prometheus = FakePrometheus(
        {("a", "s-00001"): Revision(), S2: Revision()},
        mutate=spoil("buckets", bucket("0.01", scaled(1.0, add=50.0)), at=T),
    )
    look = source(prometheus).look(subject("a", "s-00002", "s-00001"), T)
    found = look.canary.problems["latency"]
    assert isinstance(found, InvalidHistogram)
    assert found.rule == "monotonic"
    assert set(look.canary.problems) == {"latency"}


# --- what the analyzer makes of bad looks: per check, per rollout, not cached ------------

CANARY, BASELINE = ("fraud", "scorer-00002"), ("fraud", "scorer-00001")
FRAUD = subject("fraud", "scorer-00002", "scorer-00001")
BASE = Revision(requests=5400, errors=54, buckets={0.01: 3240.0, 0.05: 2106.0})
HEALTHY = Revision(requests=600, errors=6, buckets={0.01: 360.0, 0.05: 234.0})
FIFTEEN_PERCENT = Revision(requests=600, errors=90, buckets={0.01: 360.0, 0.05: 234.0})
SLOW = Revision(requests=600, errors=6, buckets={0.01: 100.0, 0.05: 300.0}, p99=0.3)


def check(builtin: str, **overrides: Any) -> CheckDefinition:
    base: dict[str, Any] = {
        "name": builtin,
        "builtin": builtin,
        "query": None,
        "direction": "lowerIsBetter",
        "relative_tolerance": 0.5 if builtin == "error-rate" else 0.2,
        "min_samples": 100,
        "alpha_fail": 0.01,
        "alpha_pass": 0.05,
        "consecutive_error_limit": 100,
    }
    return CheckDefinition(**{**base, **overrides})


CHECKS = [check("error-rate"), check("latency-p99")]


def analyzer_for(prometheus: FakePrometheus) -> Analyzer:
    return Analyzer(prometheus, looks=source(prometheus))


def evaluate(
    analyzer: Analyzer,
    count: int,
    *,
    checks: list[CheckDefinition] = CHECKS,
    memory: Mapping[str, CheckMemory] | None = None,
    start: int = 0,
    who: Subject = FRAUD,
) -> list[StepAnalysis]:
    """``count`` evaluations, one per 5 s look, each carrying the last one's memory."""
    results: list[StepAnalysis] = []
    current = dict(memory or {})
    for i in range(start, start + count):
        result = analyzer.analyze(who, checks, current, AT + SECOND * (5 * i + 2), grace=False)
        current = dict(result.memory)
        results.append(result)
    return results


def assert_error_measurement(evaluation: CheckEvaluation, kind: str, rule: str) -> None:
    """An Error evaluation that carries the query, time and digest of what caused it."""
    assert evaluation.outcome is Outcome.ERROR
    assert not evaluation.sufficient
    detail = evaluation.detail
    assert detail["error_kind"] == kind
    assert detail["error_rule"] == rule
    assert "scorer-00002" in str(detail["error_series"])
    assert evaluation.query
    assert evaluation.query == detail["error_query"]
    assert len(evaluation.response_digest) == 64
    assert evaluation.response_digest == detail["error_digest"]
    assert datetime.fromisoformat(str(detail["error_at"])) <= evaluation.evaluated_at
    assert isinstance(detail["attempts"], int)
    assert detail["attempts"] >= 1
    assert f"rule: {rule}" in evaluation.message


@pytest.mark.parametrize(
    ("kind", "change", "rule"),
    [
        pytest.param("buckets", bucket("0.01", value(1e9)), "monotonic", id="non-monotonic"),
        pytest.param("buckets", bucket("count", value(3.0)), "count-mismatch",
                     id="inf-disagrees-with-count"),
        pytest.param("buckets", bucket("+Inf", lambda s: []), "no-inf-bucket", id="no-inf"),
        pytest.param("p99", twice, "duplicate", id="two-p99-series"),
        pytest.param("p99", value(-1.0), "negative", id="negative-p99"),
    ],
)  # fmt: skip
def test_a_bad_latency_answer_keeps_the_error_rate_evidence_that_rolls_back(
    kind: str, change: Callable[[Series], list[Series]], rule: str
) -> None:
    prometheus = FakePrometheus(
        {CANARY: FIFTEEN_PERCENT, BASELINE: BASE}, mutate=spoil(kind, change, who=CANARY)
    )
    results = evaluate(analyzer_for(prometheus), 6)
    for result in results:
        latency = result.evaluation("latency-p99")
        assert_error_measurement(latency, latency.detail["error_kind"], rule)  # type: ignore[arg-type]
        assert latency.detail["error_kind"] in {"invalid-histogram", "duplicate-series"}
    assert any(r.verdict is Outcome.FAILED for r in results)  # rolled back on 5xx
    failed = next(r for r in results if r.verdict is Outcome.FAILED)
    assert failed.evaluation("error-rate").detail["decision"] == "regression"
    assert not any(r.sufficient_data for r in results)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        pytest.param(only(is_5xx, value(math.nan)), "non-finite", id="nan-5xx"),
        pytest.param(only(is_5xx, value(-90.0)), "negative", id="negative-5xx"),
        pytest.param(twice, "duplicate", id="duplicate-counters"),
        pytest.param(shifted(3600), "timestamp", id="counters-an-hour-ahead"),
    ],
)
def test_a_bad_request_counter_keeps_the_latency_evidence_that_rolls_back(
    change: Callable[[Series], list[Series]], rule: str
) -> None:
    prometheus = FakePrometheus(
        {CANARY: SLOW, BASELINE: BASE}, mutate=spoil("requests", change, who=CANARY)
    )
    results = evaluate(analyzer_for(prometheus), 8)
    for result in results:
        assert result.evaluation("error-rate").outcome is Outcome.ERROR
        assert result.evaluation("error-rate").detail["error_rule"] == rule
    assert any(r.verdict is Outcome.FAILED for r in results)
    failed = next(r for r in results if r.verdict is Outcome.FAILED)
    assert failed.evaluation("latency-p99").outcome is Outcome.FAILED


@pytest.mark.parametrize("kind", ["window_requests", "window_errors", "p99", "requests"])
def test_one_unreadable_value_in_a_grouped_answer_fails_only_its_rollout(kind: str) -> None:
    """The 15 %-5xx canary beside it is still rolled back."""
    other_canary, other_baseline = ("fraud", "ranker-00002"), ("fraud", "ranker-00001")
    prometheus = FakePrometheus(
        {CANARY: HEALTHY, BASELINE: BASE, other_canary: FIFTEEN_PERCENT, other_baseline: BASE},
        mutate=spoil(kind, unreadable, who=CANARY),
    )
    analyzer = analyzer_for(prometheus)
    ranker = subject("fraud", "ranker-00002", "ranker-00001")
    broken, bad = evaluate(analyzer, 8), evaluate(analyzer, 8, who=ranker)
    assert not any(r.sufficient_data for r in broken)
    assert all(
        any(e.detail.get("error_rule") == "unreadable" for e in r.evaluations) for r in broken
    )
    assert any(r.verdict is Outcome.FAILED for r in bad)
    assert not any(e.outcome is Outcome.ERROR for r in bad for e in r.evaluations)


def test_one_rollouts_bad_series_never_fails_another_rollout_in_the_group() -> None:
    other_canary, other_baseline = ("fraud", "ranker-00002"), ("fraud", "ranker-00001")
    prometheus = FakePrometheus(
        {CANARY: HEALTHY, BASELINE: BASE, other_canary: FIFTEEN_PERCENT, other_baseline: BASE},
        mutate=spoil("requests", value(math.nan), who=CANARY),
    )
    analyzer = analyzer_for(prometheus)
    ranker = subject("fraud", "ranker-00002", "ranker-00001")
    broken, bad = evaluate(analyzer, 8), evaluate(analyzer, 8, who=ranker)
    assert all(r.evaluation("error-rate").outcome is Outcome.ERROR for r in broken)
    assert any(r.verdict is Outcome.FAILED for r in bad)  # the bad canary is rolled back
    assert all(r.evaluation("error-rate").outcome is not Outcome.ERROR for r in bad)


def test_a_failed_look_is_read_again_at_the_next_evaluation_not_cached() -> None:
    spoilt = {"on": True}

    def once(kind: str, at: datetime, series: list[Series]) -> list[Series]:
        if spoilt["on"]:
            return spoil("requests", only(is_5xx, value(math.nan)), who=CANARY)(kind, at, series)
        return series

    prometheus = FakePrometheus({CANARY: HEALTHY, BASELINE: BASE}, mutate=once)
    analyzer = analyzer_for(prometheus)
    first = evaluate(analyzer, 1)[0]
    assert first.evaluation("error-rate").outcome is Outcome.ERROR
    assert first.evaluation("latency-p99").outcome is not Outcome.ERROR
    again = evaluate(analyzer, 1, memory=first.memory)[0]  # the same time: still bad
    assert again.evaluation("error-rate").outcome is Outcome.ERROR
    spoilt["on"] = False
    fixed = evaluate(analyzer, 1, memory=again.memory)[0]
    evaluation = fixed.evaluation("error-rate")
    assert evaluation.outcome is not Outcome.ERROR
    assert evaluation.detail["looks_read"] == 1  # the look that failed, read again
    assert fixed.memory["error-rate"].through == AT


@pytest.mark.parametrize("kind", ["requests", "window_requests", "window_errors"])
def test_a_partial_answer_never_makes_a_check_sufficient(kind: str) -> None:
    prometheus = FakePrometheus({CANARY: HEALTHY, BASELINE: BASE})
    prometheus.warnings[kind] = ("1 of 2 shards did not answer",)
    results = evaluate(analyzer_for(prometheus), 40, checks=[check("error-rate")])
    for result in results:
        evaluation = result.evaluation("error-rate")
        assert evaluation.outcome is Outcome.ERROR
        assert not evaluation.sufficient
        assert not result.sufficient_data
        assert evaluation.detail["error_kind"] == "partial-answer"
        assert "1 of 2 shards" in str(evaluation.detail["partial"])
        assert evaluation.response_digest
        assert evaluation.query
    memory = results[-1].memory["error-rate"]
    assert memory.through == AT - SECOND * 5  # read again from the first partial look on
    assert memory.sequential is None or memory.sequential.looks == 0  # nothing counted
    del prometheus.warnings[kind]
    later = evaluate(analyzer_for(prometheus), 40, checks=[check("error-rate")], start=40)
    assert any(r.sufficient_data for r in later)  # the same canary, answered whole


def test_a_partial_answer_can_still_roll_back_a_bad_canary() -> None:
    prometheus = FakePrometheus({CANARY: FIFTEEN_PERCENT, BASELINE: BASE})
    prometheus.warnings["requests"] = ("1 of 2 shards did not answer",)
    # Every answer is partial: never counted, but the looks since the first one are read
    # together to see if they fail (one look alone caps what it can prove).
    results = evaluate(analyzer_for(prometheus), 10, checks=[check("error-rate")])
    assert not any(r.sufficient_data for r in results)
    failed = next(r for r in results if r.verdict is Outcome.FAILED)
    evaluation = failed.evaluation("error-rate")
    assert evaluation.detail["decision"] == "regression"
    assert "1 of 2 shards" in str(evaluation.detail["partial"])


def test_a_partial_latency_answer_does_not_hold_back_the_error_rate() -> None:
    prometheus = FakePrometheus({CANARY: HEALTHY, BASELINE: BASE})
    prometheus.warnings["buckets"] = ("1 of 2 shards did not answer",)
    results = evaluate(analyzer_for(prometheus), 40)
    assert any(r.evaluation("error-rate").sufficient for r in results)
    assert not any(r.evaluation("latency-p99").sufficient for r in results)
    assert not any(r.sufficient_data for r in results)
