"""The validation layer (analysis.validate): each rule, several ways of breaking it, and
what the error says (the series, the rule, the query, time and digest of the answer)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import pytest

from analysis.runner import Analyzer
from analysis.types import (
    CheckDefinition,
    DuplicateSeries,
    InvalidAnswer,
    InvalidCounter,
    InvalidHistogram,
    Outcome,
    PartialAnswer,
    QueryResult,
    Series,
    StaleSample,
    Subject,
    UnreadableSample,
)
from analysis.validate import (
    Origin,
    answer_problems,
    check_answer,
    count_problem,
    group_increase,
    histogram_problem,
    sample_age_problems,
    series_name,
    with_sample_times,
)

AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
T = AT.timestamp()
SKEW = timedelta(seconds=7)
QUERY = 'requests_total{namespace=~"a"}'
DIGEST = "d" * 64
ORIGIN = Origin(QUERY, AT, DIGEST, attempts=2, failures=("HTTP 503: busy",))
INF = math.inf


def answer(*series: Series, warnings: tuple[str, ...] = ()) -> QueryResult:
    return QueryResult(tuple(series), DIGEST, "http://prometheus.test", warnings, 2,
                       ("HTTP 503: busy",))  # fmt: skip


def s(pod: str, value: float = 1.0, at: float | None = T, **labels: str) -> Series:
    return Series({"__name__": "requests_total", "pod": pod, **labels}, value, at)


def assert_carries_origin(error: InvalidAnswer) -> None:
    assert error.query == QUERY
    assert error.at == AT
    assert error.raw_digest == DIGEST
    assert error.attempts == 2
    assert error.failures == ("HTTP 503: busy",)


def test_series_are_named_as_prometheus_writes_them() -> None:
    assert series_name({"__name__": "m", "b": "2", "a": "1"}) == 'm{a="1",b="2"}'
    assert series_name({"a": "1"}) == '{a="1"}'
    assert series_name([("__name__", "m")]) == "m{}"


@pytest.mark.parametrize(
    ("series", "bad", "error", "rule"),
    [
        pytest.param([s("p1"), s("p1")], ["p1"], DuplicateSeries, "duplicate", id="twice"),
        pytest.param([s("p1"), s("p2"), s("p1", 5.0)], ["p1"], DuplicateSeries, "duplicate",
                     id="same-labels-other-value"),
        pytest.param([s("p1"), s("p1"), s("p1")], ["p1", "p1"], DuplicateSeries, "duplicate",
                     id="three-times"),
        pytest.param([s("p1", code="200"), Series({"code": "200", "pod": "p1",
                                                   "__name__": "requests_total"}, 2.0, T)],
                     ["p1"], DuplicateSeries, "duplicate", id="same-labels-in-another-order"),
        pytest.param([Series({"pod": "p1", "__name__": "requests_total", "le": "1"}, 1.0, T),
                      s("p2"),
                      Series({"le": "1", "pod": "p1", "__name__": "requests_total"}, 1.0, T),
                      Series({"__name__": "requests_total", "le": "1", "pod": "p1"}, 1.0, T)],
                     ["p1", "p1"], DuplicateSeries, "duplicate",
                     id="three-orders-neither-sorted"),
        pytest.param([s("p1", at=T + 3600), s("p2")], ["p1"], StaleSample, "timestamp",
                     id="an-hour-ahead"),
        pytest.param([s("p1"), s("p2", at=T - 86400)], ["p2"], StaleSample, "timestamp",
                     id="a-day-behind"),
        pytest.param([s("p1", at=T + 7.001)], ["p1"], StaleSample, "timestamp",
                     id="just-beyond-the-bound"),
        pytest.param([s("p1", at=math.nan)], ["p1"], StaleSample, "timestamp",
                     id="nan-timestamp"),
        pytest.param([s("p1", at=0.0)], ["p1"], StaleSample, "timestamp", id="epoch"),
        pytest.param([s("p1"), Series({"pod": "p2"}, math.nan, None, "'x' is not a number")],
                     ["p2"], UnreadableSample, "unreadable", id="unreadable-sample"),
        pytest.param([Series({"pod": "p1"}, math.nan, None, "no sample"), s("p2"), s("p3")],
                     ["p1"], UnreadableSample, "unreadable", id="unreadable-first"),
    ],
)  # fmt: skip
def test_answer_rules_name_each_bad_series(
    series: list[Series], bad: list[str], error: type[InvalidAnswer], rule: str
) -> None:
    problems = answer_problems(answer(*series), query=QUERY, at=AT, skew=SKEW)
    assert [p.labels["pod"] for p, _ in problems] == bad
    for found_series, found in problems:
        assert isinstance(found, error)
        assert found.rule == rule
        assert found.series == series_name(found_series.labels)
        assert f"rule: {rule}" in str(found)
        assert found.series in str(found)
        assert_carries_origin(found)
    with pytest.raises(error):
        check_answer(answer(*series), query=QUERY, at=AT, skew=SKEW)


@pytest.mark.parametrize(
    "series",
    [
        pytest.param([s("p1"), s("p2")], id="distinct"),
        pytest.param([s("p1", at=T - 7), s("p2", at=T + 7)], id="at-the-bound"),
        pytest.param([s("p1", at=None)], id="no-timestamp-known"),
        pytest.param([s("p1", math.nan), s("p2", -1.0)], id="values-are-not-its-business"),
        pytest.param([s("p1", a="1", b="2"), s("p1", a="2", b="1")], id="values-swapped"),
        pytest.param([s("p1", a="1"), s("p1", b="1")], id="same-value-other-name"),
        pytest.param([s("p1"), s("p1", a="")], id="one-more-label"),
        pytest.param(
            [
                s("p1", a="1", b="2"),
                Series({"b": "1", "a": "2", "pod": "p1", "__name__": "requests_total"}, 1.0, T),
            ],
            id="another-order-other-values",
        ),
        pytest.param([], id="empty"),
    ],
)
def test_answers_that_keep_the_rules_pass(series: list[Series]) -> None:
    assert answer_problems(answer(*series), query=QUERY, at=AT, skew=SKEW) == []
    check_answer(answer(*series), query=QUERY, at=AT, skew=SKEW)


@pytest.mark.parametrize(
    "warnings",
    [("remote read: store 2 timed out",), ("a", "b"), ("",)],
    ids=["one", "several", "empty-text"],
)
def test_an_answer_with_warnings_is_partial(warnings: tuple[str, ...]) -> None:
    with pytest.raises(PartialAnswer) as raised:
        check_answer(answer(s("p1"), warnings=warnings), query=QUERY, at=AT, skew=SKEW)
    assert raised.value.rule == "partial"
    assert all(w in str(raised.value) for w in warnings)
    assert_carries_origin(raised.value)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (math.nan, "non-finite"),
        (INF, "non-finite"),
        (-INF, "non-finite"),
        (-1.0, "negative"),
        (-1e-9, "negative"),
        (-1e12, "negative"),
    ],
)
def test_a_count_must_be_finite_and_not_negative(value: float, rule: str) -> None:
    found = count_problem(value, series='m{pod="p1"}', what="the counter", origin=ORIGIN)
    assert isinstance(found, InvalidCounter)
    assert found.rule == rule
    assert found.series == 'm{pod="p1"}'
    assert_carries_origin(found)


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, 1e15])
def test_good_counts_pass(value: float) -> None:
    assert count_problem(value, series="m{}", what="x", origin=ORIGIN) is None


GOOD = {0.01: 60.0, 0.05: 99.0, INF: 100.0}


@pytest.mark.parametrize(
    ("buckets", "count", "error", "rule", "says"),
    [
        pytest.param({0.01: 61.0, 0.05: 60.0, INF: 100.0}, 100.0, InvalidHistogram, "monotonic",
                     'le="0.01" counts 61, le="0.05" only 60', id="middle-falls"),
        pytest.param({0.01: 60.0, 0.05: 99.0, INF: 98.0}, 98.0, InvalidHistogram, "monotonic",
                     'le="+Inf" only 98', id="inf-below-a-bucket"),
        pytest.param({0.01: 100.0, 0.05: 0.0, INF: 100.0}, 100.0, InvalidHistogram,
                     "monotonic", "le=\"0.05\" only 0", id="a-bucket-reads-zero"),
        pytest.param({0.01: 60.0, 0.05: 99.0}, 99.0, InvalidHistogram, "no-inf-bucket",
                     "+Inf", id="no-inf"),
        pytest.param({}, 5.0, InvalidHistogram, "no-inf-bucket", "+Inf", id="count-only"),
        pytest.param(GOOD, 101.0, InvalidHistogram, "count-mismatch", "_count is 101",
                     id="count-above-inf"),
        pytest.param(GOOD, 0.0, InvalidHistogram, "count-mismatch", "_count is 0",
                     id="count-zero"),
        pytest.param(GOOD, 100.5, InvalidHistogram, "count-mismatch", "_count is 100.5",
                     id="count-off-by-half"),
        pytest.param({**GOOD, 0.05: math.nan}, 100.0, InvalidCounter, "non-finite",
                     'le="0.05"', id="nan-bucket"),
        pytest.param({**GOOD, INF: INF}, 100.0, InvalidCounter, "non-finite", 'le="+Inf"',
                     id="inf-bucket-infinite"),
        pytest.param({**GOOD, 0.01: -1.0}, 100.0, InvalidCounter, "negative", 'le="0.01"',
                     id="negative-bucket"),
        pytest.param(GOOD, -100.0, InvalidCounter, "negative", "_count", id="negative-count"),
        pytest.param(GOOD, math.nan, InvalidCounter, "non-finite", "_count", id="nan-count"),
    ],
)  # fmt: skip
def test_histogram_rules(
    buckets: Mapping[float, float],
    count: float | None,
    error: type[InvalidAnswer],
    rule: str,
    says: str,
) -> None:
    found = histogram_problem(buckets, count, series='h{pod="p1"}', origin=ORIGIN)
    assert isinstance(found, error)
    assert found.rule == rule
    assert found.series == 'h{pod="p1"}'
    assert says in str(found)
    assert_carries_origin(found)


@pytest.mark.parametrize(
    ("buckets", "count"),
    [
        pytest.param(GOOD, 100.0, id="valid"),
        pytest.param(GOOD, None, id="no-count-in-the-answer"),
        pytest.param({INF: 0.0}, 0.0, id="empty-histogram"),
        pytest.param({0.1: 5.0, 0.2: 5.0, INF: 5.0}, 5.0, id="flat"),
    ],
)
def test_valid_histograms_pass(buckets: Mapping[float, float], count: float | None) -> None:
    assert histogram_problem(buckets, count, series="h{}", origin=ORIGIN) is None


def by_sum(values: Mapping[str, float]) -> float:
    return sum(values.values())


def by_inf(values: Mapping[float, float]) -> float:
    return values.get(INF, 0.0)


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 990.0, "5xx": 110.0},
                     {"2xx": 90.0, "5xx": 10.0}, id="growing"),
        pytest.param({"2xx": 900.0}, {"2xx": 950.0, "5xx": 3.0}, {"2xx": 50.0, "5xx": 3.0},
                     id="a-new-series-counts-from-zero"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 40.0, "5xx": 2.0},
                     {"2xx": 40.0, "5xx": 2.0}, id="reset-near-zero"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 0.0}, {"2xx": 0.0},
                     id="reset-to-zero-a-code-not-seen-since"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 90.0, "5xx": 10.0},
                     {"2xx": 90.0, "5xx": 10.0}, id="reset-at-the-ratio"),
        pytest.param({"2xx": 900.0, "5xx": 10.0}, {"2xx": 5.0, "5xx": 12.0},
                     {"2xx": 5.0, "5xx": 12.0}, id="reset-with-a-code-above-its-old-value"),
    ],
)  # fmt: skip
def test_counter_increases_and_consistent_resets(
    before: Mapping[str, float], now: Mapping[str, float], expected: Mapping[str, float]
) -> None:
    got = group_increase(before, now, total=by_sum, name=str, what="the counters", origin=ORIGIN)
    assert got == expected


@pytest.mark.parametrize(
    ("before", "now", "dropped"),
    [
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 990.0, "5xx": 90.0}, "5xx",
                     id="5xx-down-a-little"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 990.0, "5xx": 0.0}, "5xx",
                     id="5xx-to-zero-alone"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 0.0, "5xx": 150.0}, "2xx",
                     id="2xx-to-zero-alone"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 450.0, "5xx": 50.0}, "2xx",
                     id="halved"),
        pytest.param({"2xx": 900.0, "5xx": 100.0}, {"2xx": 91.0, "5xx": 10.0}, "2xx",
                     id="just-above-the-ratio"),
        pytest.param({"only": 10.0}, {"only": 9.0}, "only", id="a-single-series-down"),
    ],
)  # fmt: skip
def test_any_other_decrease_is_an_error_naming_the_series(
    before: Mapping[str, float], now: Mapping[str, float], dropped: str
) -> None:
    with pytest.raises(InvalidCounter) as raised:
        group_increase(before, now, total=by_sum, name=lambda k: f'm{{code="{k}"}}',
                       what="the counters", origin=ORIGIN)  # fmt: skip
    assert raised.value.rule == "decrease"
    assert raised.value.series == f'm{{code="{dropped}"}}'
    assert "rule: decrease" in str(raised.value)
    assert_carries_origin(raised.value)


HIST = {0.01: 600.0, 0.05: 990.0, INF: 1000.0}


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        pytest.param({0.01: 5.0, 0.05: 9.0, INF: 10.0}, True, id="all-near-zero"),
        pytest.param({0.01: 0.0, 0.05: 0.0, INF: 0.0}, True, id="all-zero"),
        pytest.param({0.01: 500.0, 0.05: 995.0, INF: 1005.0}, False, id="one-bucket-down"),
        pytest.param({0.01: 300.0, 0.05: 495.0, INF: 500.0}, False, id="halved"),
        pytest.param({0.01: 0.0, 0.05: 0.0, INF: 1000.0}, False, id="buckets-zero-inf-not"),
    ],
)
def test_a_histogram_resets_only_as_a_whole(now: Mapping[float, float], reset: bool) -> None:
    def increase() -> dict[float, float]:
        return group_increase(HIST, now, total=by_inf, name=str, what="buckets",
                              origin=ORIGIN)  # fmt: skip

    if reset:
        assert increase() == dict(now)
    else:
        with pytest.raises(InvalidCounter, match="rule: decrease"):
            increase()


# --- checks that run their own queries: every answer validated too ------------------------

SUBJECT = Subject(
    namespace="fraud",
    isvc="scorer",
    mode="knative",
    canary_revision="scorer-00002",
    baseline_revision="scorer-00001",
    metric_profile="knative-otel",
    window=timedelta(seconds=60),
)


class Stub:
    """Answers every query with ``series(at)`` and ``warnings``, after ``failures``."""

    url = "http://prometheus.test:9090"

    def __init__(
        self,
        series: Callable[[datetime], list[Series]],
        warnings: tuple[str, ...] = (),
        failures: tuple[str, ...] = (),
    ) -> None:
        self.series, self.warnings, self.failures = series, warnings, failures

    def query(self, promql: str, at: datetime) -> QueryResult:
        return QueryResult(tuple(self.series(at)), DIGEST, self.url, self.warnings,
                           1 + len(self.failures), self.failures)  # fmt: skip


def per_revision(at: datetime, shift: float = 0.0, twice: bool = False) -> list[Series]:
    out = []
    for revision in ("scorer-00002", "scorer-00001"):
        one = Series({"revision": revision}, 5000.0, at.timestamp() + shift)
        out += [one, one] if twice else [one]
    return out


RATE_CHECK = CheckDefinition(name="rps", builtin="request-rate", query=None,
                             direction="higherIsBetter", absolute_limit=1.0)  # fmt: skip
COUNTED = CheckDefinition(
    name="fpr",
    builtin=None,
    query=None,
    direction="lowerIsBetter",
    absolute_limit=0.5,
    events='sum(decisions_total{revision="${revision}",outcome="fp"})',
    requests='sum(decisions_total{revision="${revision}"})',
)


def counters(at: datetime, canary_events: float = 5.0) -> list[Series]:
    values = {"canary_events": canary_events, "canary_requests": 100.0,
              "baseline_events": 5.0, "baseline_requests": 100.0}  # fmt: skip
    return [Series({"ksc_counter": k}, v, at.timestamp()) for k, v in values.items()]


@pytest.mark.parametrize(
    ("check", "stub", "kind", "rule"),
    [
        pytest.param(RATE_CHECK, Stub(per_revision, warnings=("shard 2 down",)),
                     "partial-answer", "partial", id="warnings"),
        pytest.param(RATE_CHECK, Stub(lambda at: per_revision(at, shift=3600)),
                     "stale-sample", "timestamp", id="an-hour-ahead"),
        pytest.param(RATE_CHECK, Stub(lambda at: per_revision(at, shift=-86400)),
                     "stale-sample", "timestamp", id="a-day-behind"),
        pytest.param(RATE_CHECK, Stub(lambda at: per_revision(at, twice=True)),
                     "duplicate-series", "duplicate", id="duplicate-label-sets"),
        pytest.param(COUNTED, Stub(lambda at: counters(at, canary_events=-4.0)),
                     "invalid-counter", "negative", id="negative-counter"),
        pytest.param(COUNTED, Stub(counters, warnings=("partial",)), "partial-answer",
                     "partial", id="counters-with-warnings"),
    ],
)  # fmt: skip
def test_a_check_with_its_own_queries_is_an_error_on_an_invalid_answer(
    check: CheckDefinition, stub: Stub, kind: str, rule: str
) -> None:
    step = Analyzer(stub).analyze(SUBJECT, [check], {}, AT, grace=False)
    evaluation = step.evaluation(check.name)
    assert evaluation.outcome is Outcome.ERROR
    assert not step.sufficient_data
    assert evaluation.detail["error_kind"] == kind
    assert evaluation.detail["error_rule"] == rule
    assert evaluation.detail["error_query"]
    assert evaluation.detail["error_at"]
    assert evaluation.response_digest
    assert evaluation.query


def test_a_valid_answer_after_retries_records_them() -> None:
    stub = Stub(per_revision, failures=("HTTP 503: busy", "timed out"))
    step = Analyzer(stub).analyze(SUBJECT, [RATE_CHECK], {}, AT, grace=False)
    evaluation = step.evaluation("rps")
    assert evaluation.outcome is Outcome.SUCCESSFUL
    assert evaluation.detail["attempts"] == 6  # two queries, three attempts each
    assert evaluation.detail["failed_attempts"] == 4
    assert "HTTP 503: busy | timed out" in str(evaluation.detail["failures"])


def test_raw_queries_ask_for_the_times_of_old_samples_in_the_same_answer() -> None:
    assert with_sample_times('m{a="1"}', max_age=MAX_AGE) == (
        'm{a="1"} or label_replace(timestamp(m{a="1"}) < time() - 120.0, "ksc_sample", "time", '
        '"", "")'
    )


MAX_AGE = timedelta(seconds=120)


def timed(age: float | None, pod: str = "p1") -> list[Series]:
    """A raw series and, unless ``age`` is None, its sample time ``age`` s before AT."""
    value = Series({"__name__": "requests_total", "pod": pod}, 10.0, T)
    if age is None:
        return [value]
    return [value, Series({"pod": pod, "ksc_sample": "time"}, T - age, T)]


@pytest.mark.parametrize(
    ("series", "stale"),
    [
        pytest.param(timed(0.0), [], id="fresh"),
        pytest.param(timed(30.0), [], id="a-scrape-interval-old"),
        pytest.param(timed(120.0), [], id="at-the-bound"),
        pytest.param(timed(-7.0), [], id="within-the-skew-ahead"),
        pytest.param(timed(None), [], id="no-time-in-the-answer-is-current"),
        pytest.param(timed(120.5), ["p1"], id="just-too-old"),
        pytest.param(timed(600.0), ["p1"], id="frozen-ten-minutes"),
        pytest.param(timed(86400.0), ["p1"], id="a-day-old"),
        pytest.param(timed(-60.0), ["p1"], id="a-minute-in-the-future"),
        pytest.param([*timed(1.0), *timed(900.0, "p2"), *timed(2.0, "p3")], ["p2"],
                     id="one-frozen-among-fresh"),
        pytest.param(timed(math.nan), ["p1"], id="nan-time"),
        pytest.param(timed(-math.inf), ["p1"], id="infinite-time"),
    ],
)  # fmt: skip
def test_a_raw_series_last_sample_must_be_recent(series: list[Series], stale: list[str]) -> None:
    values, problems = sample_age_problems(
        answer(*series), query=QUERY, at=AT, max_age=MAX_AGE, skew=SKEW
    )
    assert all("ksc_sample" not in v.labels for v in values)
    assert len(values) == len({s.labels["pod"] for s in series})
    assert [s.labels["pod"] for s, _ in problems] == stale
    for found_series, found in problems:
        assert isinstance(found, StaleSample)
        assert found.rule == "sample-age"
        assert found.series == series_name(found_series.labels)
        assert_carries_origin(found)


def pod_of(labels: Mapping[str, str]) -> str:
    return labels["pod"].split("/")[0]  # "p1/200", "p1/500": one process, two codes


@pytest.mark.parametrize(
    ("ages", "stale"),
    [
        pytest.param({"p1/200": 1.0, "p1/500": 600.0}, ["p1/500"], id="5xx-frozen-2xx-moves"),
        pytest.param({"p1/200": 600.0, "p1/500": 1.0}, ["p1/200"], id="2xx-frozen-5xx-moves"),
        pytest.param({"p1/200": 600.0, "p1/500": 600.0}, [], id="whole-process-stopped"),
        pytest.param({"p1/200": 600.0, "p2/200": 1.0}, [], id="another-process-moves"),
        pytest.param({"p1/200": -60.0, "p1/500": -60.0}, ["p1/200", "p1/500"],
                     id="the-future-is-always-wrong"),
        pytest.param({"p1/200": 1.0, "p1/500": math.nan}, ["p1/500"], id="nan-time"),
        # as Prometheus answers: no time for a current series
        pytest.param({"p1/200": None, "p1/500": 600.0}, ["p1/500"], id="5xx-frozen-2xx-current"),
        pytest.param({"p1/200": 600.0, "p1/500": None}, ["p1/200"], id="2xx-frozen-5xx-current"),
        pytest.param({"p1/200": None, "p2/500": 600.0}, [], id="only-another-process-current"),
    ],
)  # fmt: skip
def test_an_old_sample_is_an_error_when_its_process_moves_on(
    ages: Mapping[str, float | None], stale: list[str]
) -> None:
    series = [one for pod, age in ages.items() for one in timed(age, pod)]
    _values, problems = sample_age_problems(
        answer(*series), query=QUERY, at=AT, max_age=MAX_AGE, skew=SKEW, group=pod_of
    )
    assert [s.labels["pod"] for s, _ in problems] == stale
