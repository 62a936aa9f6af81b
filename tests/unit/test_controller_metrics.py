"""The controller's own metrics (canary/metrics.py), read back as Prometheus would."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from analysis.looks import QUERY_KINDS, LookSource
from canary.metrics import ADMISSION_RESULTS, WEBHOOK_OUTCOMES, WEBHOOK_SOURCES, ControllerMetrics
from canary.model import Phase
from tests.unit.test_looks import AT, FakePrometheus, subject


def samples(metrics: ControllerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: ControllerMetrics, metric: str, /, **labels: str) -> float | None:
    return samples(metrics).get((metric, tuple(sorted(labels.items()))))


def test_every_series_is_there_from_the_start() -> None:
    metrics = ControllerMetrics()
    for phase in Phase:
        assert value(metrics, "kserve_canary_rollouts", phase=phase.value) == 0
    for result in ADMISSION_RESULTS:
        assert value(metrics, "kserve_canary_admission_reviews_total", result=result) == 0
    deliveries = "kserve_canary_webhook_deliveries_total"
    for source in WEBHOOK_SOURCES:
        for outcome in WEBHOOK_OUTCOMES:
            assert value(metrics, deliveries, source=source, outcome=outcome) == 0
    assert value(metrics, "kserve_canary_leader") == 0
    assert value(metrics, "kserve_canary_kube_write_retries_total") == 0
    assert value(metrics, "kserve_canary_reconciles_total") == 0
    assert value(metrics, "kserve_canary_wakes_held_back_total") == 0
    assert value(metrics, "kserve_canary_analysis_deadlines_total") == 0
    assert value(metrics, "kserve_canary_analyses_waiting") == 0
    assert value(metrics, "kserve_canary_tick_lag_seconds_count") == 0
    assert value(metrics, "kserve_canary_step_duration_seconds_count") == 0


def test_phase_counts_replace_the_previous_count() -> None:
    metrics = ControllerMetrics()
    metrics.set_phase_counts({"Progressing": 3, "Paused": 1})
    assert value(metrics, "kserve_canary_rollouts", phase="Progressing") == 3
    assert value(metrics, "kserve_canary_rollouts", phase="Paused") == 1
    metrics.set_phase_counts({"Progressing": 2})
    assert value(metrics, "kserve_canary_rollouts", phase="Progressing") == 2
    assert value(metrics, "kserve_canary_rollouts", phase="Paused") == 0
    assert value(metrics, "kserve_canary_rollouts", phase="Succeeded") == 0


def test_weights_per_service_and_forget() -> None:
    metrics = ControllerMetrics()
    metrics.set_weight("fraud", "scorer", 10)
    metrics.set_weight("fraud", "scorer", 25)
    metrics.set_weight("credit", "limits", 50)
    weight = "kserve_canary_canary_weight_percent"
    assert value(metrics, weight, namespace="fraud", name="scorer") == 25
    assert value(metrics, weight, namespace="credit", name="limits") == 50
    metrics.forget("fraud", "scorer")
    metrics.forget("fraud", "scorer")  # forgetting twice (or never set) is harmless
    metrics.forget("nowhere", "nothing")
    assert value(metrics, weight, namespace="fraud", name="scorer") is None
    assert value(metrics, weight, namespace="credit", name="limits") == 50


def test_counters() -> None:
    metrics = ControllerMetrics()
    metrics.record_analysis("latency-p99", "Successful")
    metrics.record_analysis("latency-p99", "Successful")
    metrics.record_analysis("error-rate", "Failed")
    metrics.record_rollback("analysis")
    metrics.record_kube_write_retry()
    metrics.record_admission("patched")
    metrics.record_admission("denied")
    metrics.record_admission("denied")
    results = "kserve_canary_analysis_results_total"
    assert value(metrics, results, check="latency-p99", outcome="Successful") == 2
    assert value(metrics, results, check="error-rate", outcome="Failed") == 1
    assert value(metrics, "kserve_canary_rollbacks_total", reason_kind="analysis") == 1
    assert value(metrics, "kserve_canary_kube_write_retries_total") == 1
    reviews = "kserve_canary_admission_reviews_total"
    assert value(metrics, reviews, result="patched") == 1
    assert value(metrics, reviews, result="denied") == 2
    assert value(metrics, reviews, result="allowed") == 0


def test_unknown_admission_result_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed"):
        ControllerMetrics().record_admission("maybe")


def test_webhook_deliveries_by_source_and_outcome() -> None:
    metrics = ControllerMetrics()
    metrics.record_webhook("servicenow", "accepted")
    metrics.record_webhook("servicenow", "unauthorized")
    metrics.record_webhook("servicenow", "unauthorized")
    metrics.record_webhook("webhook", "refused")
    deliveries = "kserve_canary_webhook_deliveries_total"
    assert value(metrics, deliveries, source="servicenow", outcome="accepted") == 1
    assert value(metrics, deliveries, source="servicenow", outcome="unauthorized") == 2
    assert value(metrics, deliveries, source="webhook", outcome="refused") == 1
    assert value(metrics, deliveries, source="webhook", outcome="accepted") == 0


@pytest.mark.parametrize(("source", "outcome"), [("email", "accepted"), ("webhook", "lost")])
def test_unknown_webhook_source_or_outcome_is_refused(source: str, outcome: str) -> None:
    with pytest.raises(ValueError, match="unknown webhook"):
        ControllerMetrics().record_webhook(source, outcome)


def test_leader_gauge() -> None:
    metrics = ControllerMetrics()
    metrics.set_leader(True)
    assert value(metrics, "kserve_canary_leader") == 1
    metrics.set_leader(False)
    assert value(metrics, "kserve_canary_leader") == 0


def test_histograms() -> None:
    metrics = ControllerMetrics()
    metrics.observe_tick_lag(0.03)
    metrics.observe_tick_lag(-1.0)  # a timer that fired early counts as on time
    metrics.observe_step_duration(400.0)
    lag = "kserve_canary_tick_lag_seconds"
    assert value(metrics, f"{lag}_count") == 2
    assert value(metrics, f"{lag}_sum") == pytest.approx(0.03)
    assert value(metrics, f"{lag}_bucket", le="0.01") == 1
    assert value(metrics, f"{lag}_bucket", le="0.05") == 2
    step = "kserve_canary_step_duration_seconds"
    assert value(metrics, f"{step}_bucket", le="300.0") == 0
    assert value(metrics, f"{step}_bucket", le="600.0") == 1
    assert value(metrics, f"{step}_bucket", le="+Inf") == 1


def test_registries_are_private() -> None:
    """Two instances never share series, and nothing lands in the global registry."""
    first, second = ControllerMetrics(), ControllerMetrics()
    first.set_leader(True)
    assert value(first, "kserve_canary_leader") == 1
    assert value(second, "kserve_canary_leader") == 0
    assert REGISTRY.get_sample_value("kserve_canary_leader") is None


def test_render_is_the_classic_text_format() -> None:
    metrics = ControllerMetrics()
    text = metrics.render().decode("utf-8")
    assert "# TYPE kserve_canary_rollouts gauge" in text
    assert "# TYPE kserve_canary_admission_reviews_total counter" in text
    assert metrics.content_type.startswith("text/plain; version=0.0.4")


def test_waiting_analyses_are_read_at_each_scrape_and_deadlines_counted() -> None:
    metrics = ControllerMetrics()
    waiting = [3]
    metrics.watch_analyses(lambda: waiting[0])
    assert value(metrics, "kserve_canary_analyses_waiting") == 3
    waiting[0] = 0
    assert value(metrics, "kserve_canary_analyses_waiting") == 0
    metrics.record_analysis_deadline()
    metrics.record_analysis_deadline()
    assert value(metrics, "kserve_canary_analysis_deadlines_total") == 2


def test_the_looks_queries_are_read_by_kind_at_each_scrape() -> None:
    """The counts the looks keep, read at each scrape: an operator sees rounds at old grid
    times grow when Prometheus falls behind the look period."""
    metrics = ControllerMetrics()
    looks = LookSource(FakePrometheus({}), period=timedelta(seconds=5),
                       lag=timedelta(seconds=2), window=timedelta(seconds=60))  # fmt: skip
    metrics.watch_looks(looks.queries_by_kind)
    for kind in QUERY_KINDS:
        assert value(metrics, "kserve_canary_look_queries_total", kind=kind) == 0
    s = subject("team", "m-00002", "m-00001")
    looks.look(s, AT)
    assert value(metrics, "kserve_canary_look_queries_total", kind="round") == 2 * 5
    assert value(metrics, "kserve_canary_look_queries_total", kind="older") == 0
