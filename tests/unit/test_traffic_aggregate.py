"""The traffic simulator's aggregate mode and its scrape text.

Aggregate mode draws each target's counts per tick (``testbed.aggregate``) instead of
each request; it must expose the same series as the per-request mode, with counts that
add up, rates that follow the behaviour book, and counters that never go down. The fast
scrape renderer must write exactly what ``generate_latest`` writes for the collector.

Statistical checks use four standard errors (or a stated relative tolerance) and fixed
seeds, as in test_traffic_sim.py."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from testbed.aggregate import (
    Categorical,
    binomial,
    clipped_normal_buckets,
    lognormal_buckets,
)
from testbed.behaviour import BehaviourBook, BusinessProfile, LatencyProfile, ModelBehaviour
from testbed.traffic import (
    COARSE_LATENCY_BUCKETS_SECONDS,
    FRAUD_SCORE_BUCKETS,
    LATENCY_BUCKETS_SECONDS,
    PROFILES,
    LatencyLayout,
    Target,
    TrafficSimulator,
)

NS = "models"
STABLE = "s3://models/scorer/v1"
CANARY = "s3://models/scorer/v2"
Rows = dict[str, list[tuple[dict[str, str], float]]]


def model(median: float, p99: float, error_rate: float, **business: Any) -> ModelBehaviour:
    return ModelBehaviour(
        latency=LatencyProfile(median_seconds=median, p99_seconds=p99),
        error_rate=error_rate,
        business=BusinessProfile(**business),
    )


def simulator(
    tmp_path: Path,
    rate: float,
    models: dict[str, ModelBehaviour],
    *,
    mode: str = "aggregate",
    seed: int = 11,
    profiles: tuple[str, ...] | None = None,
    latency_buckets: LatencyLayout = "fine",
) -> TrafficSimulator:
    book = BehaviourBook(default_rate=rate)
    for uri, behaviour in models.items():
        book = book.with_model(uri, behaviour)
    return TrafficSimulator(
        book,
        tmp_path / "targets.json",
        rng=random.Random(seed),
        mode=mode,  # type: ignore[arg-type]
        profiles=profiles,
        latency_buckets=latency_buckets,
    )


def scrape(sim: TrafficSimulator, name: str) -> Rows:
    """What Prometheus parses from the target's scrape (the served text)."""
    body = sim.exposition(f"/metrics/{NS}/{name}")
    assert body is not None
    rows: Rows = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            rows.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return rows


def within(observed: float, n: float, p: float) -> bool:
    """Within four standard errors of a binomial(n, p)."""
    return abs(observed - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def quantile(q: float, rows: Rows, metric: str, scale: float = 1.0) -> float:
    """Prometheus' ``histogram_quantile`` over every series of ``metric``, in seconds."""
    cumulative: dict[float, float] = {}
    for labels, value in rows[f"{metric}_bucket"]:
        cumulative[float(labels["le"])] = cumulative.get(float(labels["le"]), 0.0) + value
    rank = q * cumulative[math.inf]
    lower, below = 0.0, 0.0
    for bound in sorted(cumulative):
        if cumulative[bound] >= rank:
            if math.isinf(bound):
                return lower / scale
            return (lower + (bound - lower) * (rank - below) / (cumulative[bound] - below)) / scale
        lower, below = bound, cumulative[bound]
    raise AssertionError("no +Inf bucket")


def total(rows: Rows, name: str, **match: str) -> float:
    return sum(
        v for labels, v in rows.get(name, []) if all(labels[k] == x for k, x in match.items())
    )


# --- testbed.aggregate: the draws -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p"),
    [(0, 0.3), (10, 0.0), (10, 1.0), (5, 0.01), (100, 0.01), (100, 0.2), (40, 0.5),
     (1000, 0.9), (10_000, 0.01), (1_000_000, 0.3)],
)  # fmt: skip
def test_binomial_draws_have_the_binomial_mean_and_variance(n: int, p: float) -> None:
    rng = random.Random(3)
    draws = [binomial(rng, n, p) for _ in range(4000)]
    assert all(0 <= d <= n for d in draws)
    mean = sum(draws) / len(draws)
    variance = sum((d - mean) ** 2 for d in draws) / len(draws)
    expected = n * p * (1 - p)
    assert abs(mean - n * p) <= 4 * math.sqrt(expected / len(draws)) + 1e-9
    # the sample variance's standard error is about variance * sqrt(2 / draws)
    assert variance == pytest.approx(expected, rel=0.15, abs=1e-9)


@pytest.mark.parametrize("n", [0, 1, 7, 30, 200, 5000, 1_000_000])
@pytest.mark.parametrize(
    "probabilities",
    [(1.0,), (0.7, 0.3), (0.5, 0.0, 0.5), (0.01, 0.04, 0.15, 0.6, 0.15, 0.04, 0.01)],
)
def test_a_categorical_sample_adds_up_to_n_and_follows_the_probabilities(
    n: int, probabilities: tuple[float, ...]
) -> None:
    rng = random.Random(5)
    categorical = Categorical(probabilities)
    totals = [0] * len(probabilities)
    rounds = 200 if n < 1000 else 20
    for _ in range(rounds):
        drawn = categorical.sample(rng, n)
        assert sum(drawn.values()) == n
        assert all(count > 0 for count in drawn.values())
        for index, count in drawn.items():
            assert probabilities[index] > 0  # an impossible category is never drawn
            totals[index] += count
    for index, p in enumerate(probabilities):
        assert within(totals[index], n * rounds, p), (index, totals)


def test_a_categorical_distribution_refuses_what_is_not_one() -> None:
    with pytest.raises(ValueError, match="add up to 1"):
        Categorical((0.5, 0.4))
    with pytest.raises(ValueError, match="not negative"):
        Categorical((1.5, -0.5))
    with pytest.raises(ValueError, match="at least one"):
        Categorical(())


@pytest.mark.parametrize(
    ("median", "p99"), [(0.002, 0.005), (0.020, 0.040), (0.100, 0.900), (0.800, 2.0)]
)
def test_lognormal_buckets_hold_the_distribution_and_its_mean(median: float, p99: float) -> None:
    profile = LatencyProfile(median_seconds=median, p99_seconds=p99)
    categorical, means = lognormal_buckets(profile.mu, profile.sigma, LATENCY_BUCKETS_SECONDS)
    probabilities = categorical.probabilities
    assert len(probabilities) == len(LATENCY_BUCKETS_SECONDS) + 1
    assert math.fsum(probabilities) == pytest.approx(1.0)
    mean = math.fsum(p * m for p, m in zip(probabilities, means, strict=True))
    assert mean == pytest.approx(math.exp(profile.mu + profile.sigma**2 / 2), rel=1e-6)
    bounds = (0.0, *LATENCY_BUCKETS_SECONDS, math.inf)
    for i, (p, m) in enumerate(zip(probabilities, means, strict=True)):
        if p > 1e-12:  # a bucket's mean lies inside it
            assert bounds[i] <= m * (1 + 1e-9), i
            assert m <= bounds[i + 1] * (1 + 1e-9), i


@pytest.mark.parametrize(
    ("mean", "sd"), [(0.85, 0.08), (0.10, 0.08), (0.5, 0.3), (0.0, 0.2), (1.0, 0.2), (0.4, 0.0)]
)
def test_clipped_normal_buckets_hold_the_clipped_distribution(mean: float, sd: float) -> None:
    categorical, means = clipped_normal_buckets(mean, sd, FRAUD_SCORE_BUCKETS)
    rng = random.Random(9)
    draws = [min(max(rng.gauss(mean, sd), 0.0), 1.0) for _ in range(50_000)]
    expected_mean = math.fsum(p * m for p, m in zip(categorical.probabilities, means, strict=True))
    assert expected_mean == pytest.approx(sum(draws) / len(draws), abs=0.002)
    assert categorical.probabilities[-1] == 0.0  # a clipped score is never above 1
    at_most_half = sum(1 for d in draws if d <= 0.5) / len(draws)
    assert math.fsum(categorical.probabilities[:10]) == pytest.approx(at_most_half, abs=0.005)


# --- the simulator in aggregate mode --------------------------------------------------------


def test_counts_add_up_on_every_tick(tmp_path: Path) -> None:
    sim = simulator(
        tmp_path, 1000.0, {STABLE: model(0.02, 0.04, 0.05), CANARY: model(0.03, 0.06, 0.1)}
    )
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 90, STABLE),
                                  Target("scorer-predictor-00002", 10, CANARY)])  # fmt: skip
    names = ("scorer-predictor-00001", "scorer-predictor-00002")
    for tick in range(1, 13):
        assert sim.tick(0.5) == 500  # the rate is exact, as in per-request mode
        served = {name: sim.counts(NS, name) for name in names}
        assert sum(c.requests for c in served.values()) == 500 * tick
        for name, counts in served.items():
            rows = scrape(sim, name)
            histogram = total(rows, "kn_serving_invocation_duration_seconds_count")
            assert histogram == counts.requests  # every request is in the histograms
            assert total(rows, "kn_serving_invocation_duration_seconds_bucket", le="+Inf") == (
                counts.requests
            )
            assert total(rows, "istio_requests_total", response_code="500") == counts.errors
            assert total(rows, "request_predict_seconds_count") == counts.requests
            ok = counts.requests - counts.errors
            assert total(rows, "fraud_decisions_total") == ok  # every answer decided
            assert total(rows, "fraud_score_count") == ok


REGIMES = [
    # (stable, canary, canary percent, rate)
    (model(0.02, 0.04, 0.01), model(0.02, 0.04, 0.01), 10, 200.0),
    (model(0.02, 0.04, 0.01), model(0.05, 0.12, 0.05), 25, 1000.0),
    (model(0.002, 0.005, 0.0), model(0.1, 0.9, 0.3), 50, 5000.0),
]


@pytest.mark.parametrize(("stable", "canary", "percent", "rate"), REGIMES)
def test_rates_follow_the_behaviour(
    tmp_path: Path, stable: ModelBehaviour, canary: ModelBehaviour, percent: int, rate: float
) -> None:
    sim = simulator(tmp_path, rate, {STABLE: stable, CANARY: canary})
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100 - percent, STABLE),
                                  Target("scorer-predictor-00002", percent, CANARY)])  # fmt: skip
    seconds = 200_000 / rate
    for _ in range(round(seconds)):
        sim.tick(1.0)
    n = round(seconds) * rate
    canary_counts = sim.counts(NS, "scorer-predictor-00002")
    assert within(canary_counts.requests, n, percent / 100)
    for name, behaviour in (("scorer-predictor-00001", stable), ("scorer-predictor-00002", canary)):
        counts = sim.counts(NS, name)
        assert within(counts.errors, counts.requests, behaviour.error_rate), name
        rows = scrape(sim, name)
        for metric, scale in (
            ("kn_serving_invocation_duration_seconds", 1.0),
            ("istio_request_duration_milliseconds", 1000.0),
        ):
            latency = behaviour.latency
            assert quantile(0.5, rows, metric, scale) == pytest.approx(
                latency.median_seconds, rel=0.05
            ), (name, metric)
            assert quantile(0.99, rows, metric, scale) == pytest.approx(
                latency.p99_seconds, rel=0.05
            ), (name, metric)
        mean = total(rows, "request_predict_seconds_sum") / total(
            rows, "request_predict_seconds_count"
        )
        lognormal = math.exp(behaviour.latency.mu + behaviour.latency.sigma**2 / 2)
        assert mean == pytest.approx(lognormal, rel=0.02), name


def test_fraud_outcomes_follow_the_business_profile(tmp_path: Path) -> None:
    behaviour = model(
        0.02, 0.04, 0.0, fraud_rate=0.05, detection_rate=0.8, false_positive_rate=0.03
    )
    sim = simulator(tmp_path, 1000.0, {STABLE: behaviour})
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    for _ in range(60):
        sim.tick(1.0)
    rows = scrape(sim, "scorer-predictor-00001")
    decisions = {(labels["decision"], labels["outcome"]): int(v)
                 for labels, v in rows["fraud_decisions_total"]}  # fmt: skip
    assert sum(decisions.values()) == 60_000
    fraud = decisions["decline", "true_positive"] + decisions["approve", "false_negative"]
    assert within(fraud, 60_000, 0.05)
    assert within(decisions["decline", "true_positive"], fraud, 0.8)
    assert within(decisions["decline", "false_positive"], 60_000 - fraud, 0.03)
    declined = decisions["decline", "true_positive"] + decisions["decline", "false_positive"]
    scores = {float(labels["le"]): v for labels, v in rows["fraud_score_bucket"]}
    assert scores[0.5] == pytest.approx(60_000 - declined, rel=0.01)  # approvals score low
    # the mean score is the per-request mode's (clipping at 0 and 1 included)
    reference = simulator(tmp_path / "per-request", 1000.0, {STABLE: behaviour},
                          mode="per-request")  # fmt: skip
    reference.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    for _ in range(60):
        reference.tick(1.0)
    drawn = scrape(reference, "scorer-predictor-00001")
    mean = total(rows, "fraud_score_sum") / total(rows, "fraud_score_count")
    per_request = total(drawn, "fraud_score_sum") / total(drawn, "fraud_score_count")
    assert mean == pytest.approx(per_request, rel=0.01)


@pytest.mark.parametrize("mode", ["per-request", "aggregate"])
def test_counters_never_decrease(tmp_path: Path, mode: str) -> None:
    sim = simulator(tmp_path, 300.0, {CANARY: model(0.02, 0.2, 0.2)}, mode=mode)
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 97, STABLE),
                                  Target("scorer-predictor-00002", 3, CANARY)])  # fmt: skip
    last: dict[tuple[str, str], float] = {}
    for _ in range(40):
        sim.tick(0.25)
        for name in ("scorer-predictor-00001", "scorer-predictor-00002"):
            body = sim.exposition(f"/metrics/{NS}/{name}")
            assert body is not None
            for line in body.decode().splitlines():
                if line.startswith(("#", "target_info")):
                    continue
                series, value = line.rsplit(" ", 1)  # every sample is a counter, bucket or sum
                assert float(value) >= last.get((name, series), 0.0), (name, series)
                last[(name, series)] = float(value)
    assert len(last) > 1000


# --- the same series in both modes, and the scrape text -------------------------------------


def _series(sim: TrafficSimulator, name: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {
        (sample, frozenset(labels.items()))
        for sample, rows in scrape(sim, name).items()
        for labels, _ in rows
    }


@pytest.mark.parametrize("target_mode", ["knative", "standard"])
def test_both_modes_expose_the_same_series(tmp_path: Path, target_mode: str) -> None:
    exposed = []
    for mode in ("per-request", "aggregate"):
        sim = simulator(tmp_path / mode, 500.0, {STABLE: model(0.02, 0.04, 0.05)}, mode=mode)
        sim.set_routes(NS, "scorer", [Target("scorer-predictor", 100, STABLE, target_mode)])  # type: ignore[arg-type]
        for _ in range(10):
            sim.tick(1.0)
        exposed.append(_series(sim, "scorer-predictor"))
    assert exposed[0] == exposed[1]
    assert len(exposed[0]) > 300


@pytest.mark.parametrize("mode", ["per-request", "aggregate"])
@pytest.mark.parametrize("target_mode", ["knative", "standard"])
@pytest.mark.parametrize("profiles", [None, ("knative-otel",), ("istio", "business")])
def test_the_served_text_is_what_generate_latest_writes(
    tmp_path: Path, mode: str, target_mode: str, profiles: tuple[str, ...] | None
) -> None:
    sim = simulator(tmp_path, 800.0, {STABLE: model(0.02, 0.04, 0.05)}, mode=mode,
                    profiles=profiles)  # fmt: skip
    sim.set_routes(NS, "scorer", [Target("scorer-predictor", 90, STABLE, target_mode),  # type: ignore[arg-type]
                                  Target("scorer-canary", 10, CANARY, target_mode)])  # type: ignore[arg-type]  # fmt: skip
    for ticks in (0, 1, 5):  # nothing served yet, then more and more
        for _ in range(ticks):
            sim.tick(0.5)
        for name in ("scorer-predictor", "scorer-canary"):
            served = sim.exposition(f"/metrics/{NS}/{name}")
            assert served == generate_latest(sim.registry(NS, name)), (ticks, name)


@pytest.mark.parametrize("mode", ["per-request", "aggregate"])
def test_the_coarse_layout_exposes_the_exporters_bounds_in_every_histogram(
    tmp_path: Path, mode: str
) -> None:
    """What a benchmark of many services asks for: every latency histogram with the 14
    bounds real exporters use (seconds, or ×1000 in milliseconds) and +Inf, counting the
    same requests, scraped exactly as ``generate_latest`` writes it."""
    sim = simulator(tmp_path, 800.0, {STABLE: model(0.02, 0.04, 0.05)}, mode=mode,
                    latency_buckets="coarse")  # fmt: skip
    sim.set_routes(NS, "scorer", [Target("scorer-predictor", 100, STABLE)])
    for _ in range(5):
        sim.tick(1.0)
    rows = scrape(sim, "scorer-predictor")
    seconds = [*COARSE_LATENCY_BUCKETS_SECONDS, math.inf]
    for family, scale in [
        ("kn_serving_invocation_duration_seconds", 1.0),
        ("http_server_request_duration_seconds", 1.0),
        ("request_predict_seconds", 1.0),
        ("revision_request_latencies", 1000.0),
        ("istio_request_duration_milliseconds", 1000.0),
    ]:
        by_series: dict[frozenset[tuple[str, str]], list[tuple[float, float]]] = {}
        for labels, value in rows[f"{family}_bucket"]:
            key = frozenset((k, v) for k, v in labels.items() if k != "le")
            by_series.setdefault(key, []).append((float(labels["le"]), value))
        counts = {frozenset(labels.items()): value for labels, value in rows[f"{family}_count"]}
        assert by_series, family
        for key, buckets in by_series.items():
            assert [le for le, _ in buckets] == [b * scale for b in seconds], family
            assert buckets[-1][1] == counts[key] > 0, family
    assert sum(v for _, v in rows["request_predict_seconds_count"]) == 4000
    served = sim.exposition(f"/metrics/{NS}/scorer-predictor")
    assert served == generate_latest(sim.registry(NS, "scorer-predictor"))
    assert served is not None
    assert b'le="2.5"' in served  # as Go writes the bounds
    assert b'le="7500"' in served


def test_an_unknown_bucket_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown latency bucket layout 'medium'"):
        simulator(tmp_path, 1.0, {}, latency_buckets="medium")  # type: ignore[arg-type]


def test_a_count_of_millions_is_written_as_go_writes_it(tmp_path: Path) -> None:
    sim = simulator(tmp_path, 2_000_000.0, {STABLE: model(0.02, 0.04, 0.01)})
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.tick(1.0)
    served = sim.exposition(f"/metrics/{NS}/scorer-predictor-00001")
    assert served == generate_latest(sim.registry(NS, "scorer-predictor-00001"))
    assert served is not None
    assert b"e+06" in served


def test_profiles_select_the_exposed_series(tmp_path: Path) -> None:
    sim = simulator(tmp_path, 500.0, {}, profiles=("knative-otel",))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.tick(1.0)
    names = {sample for sample, _ in _series(sim, "scorer-predictor-00001")}
    assert names == {
        "target_info",
        *(f"{family}_{part}" for family in ("kn_serving_invocation_duration_seconds",
                                             "http_server_request_duration_seconds")
          for part in ("bucket", "count", "sum")),
    }  # fmt: skip
    assert set(PROFILES) >= {"knative-otel", "istio"}
    with pytest.raises(ValueError, match="unknown or no profiles"):
        simulator(tmp_path, 1.0, {}, profiles=("prometheus",))
    with pytest.raises(ValueError, match="unknown traffic mode"):
        simulator(tmp_path, 1.0, {}, mode="batch")


def test_a_split_change_does_not_rewrite_the_discovery_file(tmp_path: Path) -> None:
    sim = simulator(tmp_path, 100.0, {})
    sim.bind()
    try:
        sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE),
                                      Target("scorer-predictor-00002", 0, CANARY)])  # fmt: skip
        written = sim.sd_file.stat().st_mtime_ns, sim.sd_file.stat().st_ino
        sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 90, STABLE),
                                      Target("scorer-predictor-00002", 10, CANARY)])  # fmt: skip
        assert (sim.sd_file.stat().st_mtime_ns, sim.sd_file.stat().st_ino) == written
        sim.set_routes(NS, "scorer", [Target("scorer-predictor-00002", 100, CANARY)])
        assert sim.sd_file.stat().st_ino != written[1]  # a target left: rewritten
    finally:
        sim.stop()
