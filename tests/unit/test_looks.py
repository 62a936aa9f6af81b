"""Grouped looks (analysis.looks): the queries every rollout of a profile shares.

A fake provider answers each query kind from a table of per-revision numbers and counts
what it was sent, so the tests can state what an operator cares about: how many queries
Prometheus gets as rollouts are added, and what each rollout reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from analysis.looks import LookSource, grid_times
from analysis.types import (
    MultipleSeries,
    NoData,
    NotANumber,
    QueryResult,
    Series,
    Subject,
    Unreachable,
)

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

    def looks_since_start(self, at: datetime) -> float:
        start = self.origin
        if self.restart_at and at >= self.restart_at:
            start = self.restart_at - SECOND * 5  # one look's worth since the restart
        return (at - start) / (SECOND * 5)

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.sent.append(promql)
        if self.down:
            raise Unreachable("connection refused", query=promql)
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
        if not series:
            raise NoData("empty", query=promql, raw_digest="e" * 64)
        return QueryResult(tuple(series), raw_digest=f"{len(self.sent):064x}", url=self.url)


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
    with pytest.raises(Unreachable):
        looks.look(subject("a", "s-00002", "s-00001"), AT)
    prometheus.down = False
    assert looks.look(subject("a", "s-00002", "s-00001"), AT).canary.requests == 100


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param("nan_requests", NotANumber, id="nan-count"),
        pytest.param("duplicate", MultipleSeries, id="two-series-for-one-revision"),
    ],
)
def test_a_bad_series_fails_only_the_rollout_it_belongs_to(fault: str, error: type) -> None:
    prometheus = FakePrometheus(
        {
            ("a", "s-00001"): Revision(),
            ("a", "s-00002"): Revision(),
            ("a", "t-00001"): Revision(),
            ("a", "t-00002"): Revision(),
        }
    )
    setattr(prometheus, fault, ("a", "s-00002"))
    looks = source(prometheus)
    good = subject("a", "t-00002", "t-00001")
    looks.look(good, AT)
    with pytest.raises(error):
        looks.look(subject("a", "s-00002", "s-00001"), AT)
    assert looks.look(good, AT).canary.requests == 100


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


def test_a_counter_restart_counts_from_zero_not_as_a_negative_look() -> None:
    prometheus = FakePrometheus(
        {("a", "s-00001"): Revision(), ("a", "s-00002"): Revision()},
        restart_at=AT + SECOND * 10,
    )
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    counts = [looks.look(s, AT + SECOND * 5 * i).canary.requests for i in range(4)]
    assert counts == [100, 100, 100, 100]  # the restart look reads the new counter


def test_a_revision_that_appears_counts_its_requests_from_its_first_series() -> None:
    prometheus = FakePrometheus({("a", "s-00001"): Revision()})
    looks = source(prometheus)
    s = subject("a", "s-00002", "s-00001")
    assert looks.look(s, AT).canary.requests == 0
    prometheus.revisions[("a", "s-00002")] = Revision(requests=7)
    prometheus.restart_at = AT + SECOND * 5  # its counter started one look ago
    assert looks.look(s, AT + SECOND * 5).canary.requests == 7
