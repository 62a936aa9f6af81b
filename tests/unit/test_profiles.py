"""PromQL per metric profile and mode (analysis.profiles), against KSERVE.md §4 and the
series the test bed's traffic simulator exports.

Each built-in check is ONE query grouped by the profile's identity label, selecting canary
and baseline with a single regex matcher, so the query count does not grow with revisions;
its sample count is a grouped ``increase`` of the matching counter. That the queries are
valid PromQL and read the right series is proven on a real Prometheus in
tests/integration/test_analysis_runner.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from analysis.profiles import (
    Unit,
    identity,
    label_matcher,
    plan,
    promql_duration,
    regex_escape,
    render_template,
    request_count_query,
    requests_since_query,
    series_of,
    string_literal,
)
from analysis.types import CheckDefinition, Direction, Subject

KN = ("scorer-predictor-00002", "scorer-predictor-00001")
STD = ("scorer-canary-predictor", "scorer-predictor")


def subject(profile: str, mode: str = "knative", **overrides: Any) -> Subject:
    canary, baseline = KN if mode == "knative" else STD
    fields: dict[str, Any] = {
        "namespace": "fraud",
        "isvc": "scorer",
        "mode": mode,
        "canary_revision": canary,
        "baseline_revision": baseline,
        "metric_profile": profile,
        "window": timedelta(minutes=2),
    }
    return Subject(**{**fields, **overrides})


def builtin(name: str) -> CheckDefinition:
    direction: Direction = "higherIsBetter" if name == "request-rate" else "lowerIsBetter"
    return CheckDefinition(name, name, None, direction, relative_tolerance=0.1)


ONE_OF_KN = 'revision=~"scorer-predictor-00002|scorer-predictor-00001"'
OC_KN = 'revision_name=~"scorer-predictor-00002|scorer-predictor-00001"'
ISTIO_KN = (
    'destination_workload=~"scorer-predictor-00002-deployment|scorer-predictor-00001-deployment"'
)
ISTIO_STD = 'destination_workload=~"scorer-canary-predictor|scorer-predictor"'
APP_STD = 'app=~"isvc\\\\.scorer-canary-predictor|isvc\\\\.scorer-predictor"'
QP = 'namespace="fraud",container="queue-proxy"'
ISTIO_SEL = 'reporter="destination",destination_workload_namespace="fraud"'

# (profile, mode, builtin) -> substrings of the value query, of the sample-count query
EXPECTED: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("knative-otel", "knative", "error-rate",
     ("sum by (revision) (rate(http_server_request_duration_seconds_count{" + QP, ONE_OF_KN,
      'http_response_status_code=~"5.."', "[2m]", " * 0)) / sum by (revision)"),
     ("sum by (revision) (increase(http_server_request_duration_seconds_count{" + QP,)),
    ("knative-otel", "knative", "latency-p99",
     ("histogram_quantile(0.99, sum by (revision, le) "
      '(rate(kn_serving_invocation_duration_seconds_bucket{namespace="fraud",' + ONE_OF_KN,),
     ("sum by (revision) (increase(kn_serving_invocation_duration_seconds_count{",)),
    ("knative-otel", "knative", "request-rate",
     ("sum by (revision) (rate(http_server_request_duration_seconds_count{" + QP + ","
      + ONE_OF_KN + "}[2m]))",),
     ("increase(http_server_request_duration_seconds_count{",)),
    ("knative-opencensus", "knative", "error-rate",
     ('sum by (revision_name) (rate(revision_request_count{namespace_name="fraud",' + OC_KN,
      'response_code_class="5xx"'),
     ("sum by (revision_name) (increase(revision_request_count{",)),
    ("knative-opencensus", "knative", "latency-p99",
     ("sum by (revision_name, le) (rate(revision_request_latencies_bucket{", "))) / 1000"),
     ("increase(revision_request_latencies_count{",)),
    ("knative-opencensus", "knative", "request-rate", ("rate(revision_request_count{",),
     ("increase(revision_request_count{",)),
    ("istio", "knative", "error-rate",
     ("sum by (destination_workload) (rate(istio_requests_total{" + ISTIO_SEL, ISTIO_KN,
      'response_code=~"5.."'),
     ("sum by (destination_workload) (increase(istio_requests_total{" + ISTIO_SEL,)),
    ("istio", "knative", "latency-p99",
     ("sum by (destination_workload, le) (rate(istio_request_duration_milliseconds_bucket{"
      + ISTIO_SEL + "," + ISTIO_KN, "))) / 1000"),
     ("increase(istio_request_duration_milliseconds_count{",)),
    ("istio", "standard", "error-rate",
     ("rate(istio_requests_total{" + ISTIO_SEL + "," + ISTIO_STD, 'response_code=~"5.."'),
     ("increase(istio_requests_total{" + ISTIO_SEL + "," + ISTIO_STD,)),
    ("istio", "standard", "latency-p99",
     ("istio_request_duration_milliseconds_bucket{" + ISTIO_SEL + "," + ISTIO_STD, "/ 1000"),
     ("istio_request_duration_milliseconds_count{",)),
    ("istio", "standard", "request-rate", ("rate(istio_requests_total{",),
     ("increase(istio_requests_total{",)),
    ("kserve-model-server", "knative", "latency-p99",
     ("sum by (revision, le) (rate(request_predict_seconds_bucket{namespace=\"fraud\","
      + ONE_OF_KN,),
     ("sum by (revision) (increase(request_predict_seconds_count{",)),
    ("kserve-model-server", "knative", "request-rate",
     ("sum by (revision) (rate(request_predict_seconds_count{",),
     ("increase(request_predict_seconds_count{",)),
    ("kserve-model-server", "standard", "latency-p99",
     ("sum by (app, le) (rate(request_predict_seconds_bucket{namespace=\"fraud\"," + APP_STD,),
     ("sum by (app) (increase(request_predict_seconds_count{namespace=\"fraud\"," + APP_STD,)),
    ("kserve-model-server", "standard", "request-rate",
     ("sum by (app) (rate(request_predict_seconds_count{",), ("increase(",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "mode", "check", "value_has", "samples_has"),
    EXPECTED,
    ids=[f"{p}-{m}-{c}" for p, m, c, *_ in EXPECTED],
)
def test_builtin_queries_use_the_profiles_series_and_labels(
    profile: str, mode: str, check: str, value_has: tuple[str, ...], samples_has: tuple[str, ...]
) -> None:
    queries = plan(builtin(check), subject(profile, mode))
    assert queries.value is not None
    for text in value_has:
        assert text in queries.value
    for text in samples_has:
        assert text in queries.samples
    # one grouped query per purpose, whatever the number of revisions
    assert queries.queries == (queries.value, queries.samples)
    assert queries.canary_value is None
    assert queries.baseline_value is None
    for query in queries.queries:
        assert "[2m]" in query
        assert query.count("(") == query.count(")")
        assert query.count("{") == query.count("}")


@pytest.mark.parametrize(
    ("profile", "mode", "label", "canary_id", "baseline_id"),
    [
        ("knative-otel", "knative", "revision", *KN),
        ("knative-opencensus", "knative", "revision_name", *KN),
        ("istio", "knative", "destination_workload", *(f"{r}-deployment" for r in KN)),
        ("istio", "standard", "destination_workload", *STD),
        ("kserve-model-server", "knative", "revision", *KN),
        ("kserve-model-server", "standard", "app", *(f"isvc.{n}" for n in STD)),
    ],
)
def test_identity_label_and_values_match_the_simulators_scrape_labels(
    profile: str, mode: str, label: str, canary_id: str, baseline_id: str
) -> None:
    queries = plan(builtin("latency-p99"), subject(profile, mode))
    assert (queries.identity_label, queries.canary_id, queries.baseline_id) == (
        label,
        canary_id,
        baseline_id,
    )
    assert f"sum by ({label}, le)" in (queries.value or "")


@pytest.mark.parametrize(
    ("profile", "mode"),
    [
        ("knative-otel", "knative"),
        ("knative-opencensus", "knative"),
        ("istio", "knative"),
        ("istio", "standard"),
        ("kserve-model-server", "knative"),
        ("kserve-model-server", "standard"),
    ],
)
def test_requests_since_count_a_canary_series_born_in_the_window_from_zero(
    profile: str, mode: str
) -> None:
    """Both sides' increase(), plus the first value of a canary series that had no sample
    at the window's start; never the baseline's (it would count its whole life)."""
    s = subject(profile, mode)
    query, label = requests_since_query(s)
    plain, plain_label = request_count_query(s)
    assert label == plain_label
    counted = plain.removeprefix(f"sum by ({label}) (").removesuffix(")")
    canary = f"{label}={string_literal(identity(s, s.canary_revision))}"
    baseline = identity(s, s.baseline_revision)
    assert query.startswith(f"sum by ({label}) (({counted} + (min_over_time(")
    assert query.count(counted) == 2
    assert query.count("[2m]) unless ") == 2
    assert query.count(" offset 2m)") == 2
    born = query.removeprefix(f"sum by ({label}) (({counted} + ")
    assert canary in born
    assert baseline not in born.replace(counted, "")  # the plain increase() names both
    assert query.count("(") == query.count(")")


@pytest.mark.parametrize(
    ("check", "unit"),
    [("error-rate", Unit.RATIO), ("latency-p99", Unit.SECONDS), ("request-rate", Unit.PER_SECOND)],
)
def test_units(check: str, unit: Unit) -> None:
    assert plan(builtin(check), subject("istio")).unit is unit


def test_latency_is_in_seconds_for_every_profile() -> None:
    """Milliseconds histograms (Istio, OpenCensus) are divided by 1000; seconds ones not."""
    for profile, divided in [
        ("knative-otel", False),
        ("knative-opencensus", True),
        ("istio", True),
        ("kserve-model-server", False),
    ]:
        value = plan(builtin("latency-p99"), subject(profile)).value or ""
        assert value.endswith(" / 1000") is divided, profile


def test_an_error_free_revision_still_has_an_error_rate() -> None:
    """A revision that never returned a 5xx has no 5xx series; the query gives it 0 rather
    than dropping it (which would read as no data)."""
    value = plan(builtin("error-rate"), subject("knative-otel")).value or ""
    errors, _, total = value.partition(" or ")
    assert "5.." in errors
    assert total.startswith("(sum by (revision) (rate(")
    assert "5.." not in total


@pytest.mark.parametrize(
    ("profile", "mode", "check", "problem"),
    [
        ("kserve-model-server", "standard", "error-rate", "kserve-model-server"),
        ("kserve-model-server", "knative", "error-rate", "no status code"),
        ("knative-otel", "standard", "latency-p99", "knative-otel reads Knative's queue-proxy"),
        ("knative-opencensus", "standard", "error-rate", "Standard-mode"),
    ],
)
def test_unsupported_combinations_say_why(
    profile: str, mode: str, check: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        plan(builtin(check), subject(profile, mode))


def test_custom_query_renders_once_per_side() -> None:
    check = CheckDefinition(
        "fraud-fpr",
        None,
        'sum(rate(fraud_decisions_total{namespace="${namespace}",revision="${revision}",'
        'outcome="false_positive"}[${window}])) / sum(rate(fraud_decisions_total'
        '{namespace="${namespace}",revision="${revision}"}[${window}]))',
        "lowerIsBetter",
        relative_tolerance=0.1,
    )
    queries = plan(check, subject("knative-otel", window=timedelta(seconds=30)))
    assert queries.value is None
    assert queries.canary_value is not None
    assert queries.baseline_value is not None
    assert 'revision="scorer-predictor-00002",outcome="false_positive"}[30s]' in (
        queries.canary_value
    )
    assert 'revision="scorer-predictor-00001"}[30s]' in queries.baseline_value
    assert "scorer-predictor-00001" not in queries.canary_value
    assert queries.unit is Unit.NUMBER
    # its sample count is the canary's requests under the profile
    assert queries.samples.startswith(
        "sum by (revision) (increase(http_server_request_duration_seconds_count{"
    )
    assert queries.queries == (queries.canary_value, queries.baseline_value, queries.samples)


def test_every_template_variable_renders() -> None:
    check = CheckDefinition(
        "all",
        None,
        "${namespace} ${isvc} ${revision} ${canary_revision} ${baseline_revision} ${window}",
        "higherIsBetter",
        absolute_limit=1.0,
    )
    queries = plan(check, subject("istio", "standard", window=timedelta(seconds=90)))
    assert queries.canary_value == (
        "fraud scorer scorer-canary-predictor scorer-canary-predictor scorer-predictor 90s"
    )
    assert queries.baseline_value == (
        "fraud scorer scorer-predictor scorer-canary-predictor scorer-predictor 90s"
    )
    # Standard mode with istio: the sample count is istio's request counter per Deployment
    assert "istio_requests_total" in queries.samples


@pytest.mark.parametrize(
    ("template", "problem"),
    [('up{x="${pod}"}', r"unknown template variable \$\{pod\}"), ("cost in $", "invalid")],
)
def test_bad_templates_are_refused(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        render_template(template, {"namespace": "n"})


@pytest.mark.parametrize(
    ("window", "text"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=2), "2m"),
        (timedelta(hours=1), "1h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(milliseconds=1500), "1500ms"),
    ],
)
def test_window_as_promql_duration(window: timedelta, text: str) -> None:
    assert promql_duration(window) == text


@pytest.mark.parametrize("window", [timedelta(0), timedelta(microseconds=1500)])
def test_window_must_be_whole_positive_milliseconds(window: timedelta) -> None:
    with pytest.raises(ValueError, match="window"):
        promql_duration(window)


def test_escaping() -> None:
    assert regex_escape("isvc.a-b(1)|c+") == "isvc\\.a-b\\(1\\)\\|c\\+"
    assert string_literal('a"b\\c') == '"a\\"b\\\\c"'
    assert identity(subject("kserve-model-server", "standard"), "x") == "isvc.x"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"canary_revision": "scorer-predictor-00001"}, "the same"),
        ({"metric_profile": "datadog"}, "unknown metric profile"),
        ({"mode": "serverless"}, "mode"),
        ({"window": timedelta(0)}, "window must be positive"),
        ({"namespace": ""}, "namespace must not be empty"),
    ],
)
def test_subject_refuses_what_cannot_be_queried(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        subject("knative-otel", **overrides)


@pytest.mark.parametrize(
    ("matcher", "labels", "kept"),
    [
        pytest.param('http_response_status_code=~"5.."', {"http_response_status_code": "503"},
                     True, id="regex-keeps-a-5xx"),
        pytest.param('http_response_status_code=~"5.."', {"http_response_status_code": "5030"},
                     False, id="regex-is-anchored"),
        pytest.param('response_code=~"5.."', {}, False, id="absent-label-is-empty"),
        pytest.param('response_code_class="5xx"', {"response_code_class": "5xx"}, True,
                     id="equality"),
        pytest.param('response_code_class!="5xx"', {"response_code_class": "2xx"}, True,
                     id="inequality"),
        pytest.param('code!~"5..|4.."', {"code": "404"}, False, id="negative-regex"),
        pytest.param('path="a\\"b"', {"path": 'a"b'}, True, id="escaped-quote"),
    ],
)  # fmt: skip
def test_a_profile_matcher_keeps_what_prometheus_would(
    matcher: str, labels: dict[str, str], kept: bool
) -> None:
    assert label_matcher(matcher)(labels) is kept


@pytest.mark.parametrize("profile", ["knative-otel", "knative-opencensus", "istio"])
def test_every_profile_error_matcher_is_readable(profile: str) -> None:
    errors = series_of(profile, "knative").errors
    assert errors is not None
    label_matcher(errors)  # the looks pick 5xx series out of the request counters with it


def test_a_malformed_matcher_is_refused() -> None:
    with pytest.raises(ValueError, match="not a label matcher"):
        label_matcher("code=5..")
