"""The traffic simulator, driven tick by tick with a seeded RNG: traffic splits, errors,
latency and fraud outcomes follow the behaviour book, and each target's scrape shows the
series of every metric profile under KServe's real names and labels. Mirrored copies decide
on the live requests' draws, so agreement between two models follows their profiles, and
each pair both sides answered yields two payload-logger events with one id.

Statistical checks use four standard errors, so a correct simulator fails them about once
in 15,000 runs (and never with the fixed seeds used here)."""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from testbed.behaviour import (
    BehaviourBook,
    BehaviourWatcher,
    BusinessProfile,
    LatencyProfile,
    ModelBehaviour,
)
from testbed.payload_logger import LoggerEvent
from testbed.traffic import LATENCY_BUCKETS_SECONDS, RequestCounts, Target, TrafficSimulator

NS = "models"
STABLE = "s3://models/scorer/v1"
CANARY = "s3://models/scorer/v2"
SHADOW = "s3://models/scorer/challenger"


def book(rate: float = 1000.0, models: dict[str, ModelBehaviour] | None = None) -> BehaviourBook:
    result = BehaviourBook(default_rate=rate)
    for uri, behaviour in (models or {}).items():
        result = result.with_model(uri, behaviour)
    return result


def behaviour(
    median: float, p99: float, error_rate: float = 0.0, **business: Any
) -> ModelBehaviour:
    return ModelBehaviour(
        latency=LatencyProfile(median_seconds=median, p99_seconds=p99),
        error_rate=error_rate,
        business=BusinessProfile(**business),
    )


def simulator(tmp_path: Path, source: Any, seed: int = 7) -> TrafficSimulator:
    return TrafficSimulator(source, tmp_path / "targets.json", rng=random.Random(seed))


def run(sim: TrafficSimulator, seconds: float, dt: float = 0.2) -> None:
    for _ in range(round(seconds / dt)):
        sim.tick(dt)


def within_sampling_error(observed: int, n: int, p: float) -> bool:
    """``observed`` successes of ``n`` trials are within four standard errors of ``p``."""
    return abs(observed - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] as Prometheus would parse the scrape."""
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def label_names(registry: CollectorRegistry) -> dict[str, set[frozenset[str]]]:
    return {
        name: {frozenset(labels) for labels, _ in rows} for name, rows in samples(registry).items()
    }


Rows = dict[str, list[tuple[dict[str, str], float]]]


def quantile(q: float, rows: Rows, metric: str, scale: float = 1.0) -> float:
    """``histogram_quantile`` as Prometheus computes it (linear within a bucket), over every
    series of ``metric`` summed, in seconds."""
    cumulative: dict[float, float] = {}
    for labels, value in rows[f"{metric}_bucket"]:
        bound = float(labels["le"])
        cumulative[bound] = cumulative.get(bound, 0.0) + value
    bounds = sorted(cumulative)
    rank = q * cumulative[math.inf]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        if cumulative[bound] >= rank:
            if math.isinf(bound):
                return lower_bound / scale
            fraction = (rank - lower_count) / (cumulative[bound] - lower_count)
            return (lower_bound + (bound - lower_bound) * fraction) / scale
        lower_bound, lower_count = bound, cumulative[bound]
    raise AssertionError("no +Inf bucket")


# --- traffic split --------------------------------------------------------------------------


def test_requests_follow_the_rate_and_split_by_percent(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book(rate=1000.0))
    sim.set_routes(
        NS,
        "scorer",
        [
            Target("scorer-predictor-00001", 70, STABLE),
            Target("scorer-predictor-00002", 25, CANARY),
            Target("scorer-predictor-00003", 5, CANARY + "-b"),
        ],
    )
    run(sim, 30)
    served = {
        name: sim.counts(NS, name).requests
        for name in ("scorer-predictor-00001", "scorer-predictor-00002", "scorer-predictor-00003")
    }
    assert sum(served.values()) == 30_000  # the aggregate rate is exact
    for (name, count), percent in zip(served.items(), (70, 25, 5), strict=True):
        assert within_sampling_error(count, 30_000, percent / 100), (name, count)


def test_a_small_share_at_a_low_rate_still_gets_traffic(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book(rate=3.0))  # 0.6 requests per tick
    sim.set_routes(
        NS, "scorer", [Target("scorer-predictor-00001", 99), Target("scorer-predictor-00002", 1)]
    )
    run(sim, 1000)
    assert sim.counts(NS, "scorer-predictor-00001").requests + sim.counts(
        NS, "scorer-predictor-00002"
    ).requests == pytest.approx(3000, abs=1)
    assert 10 <= sim.counts(NS, "scorer-predictor-00002").requests <= 60


def test_a_revision_at_zero_percent_gets_nothing_but_stays_scrapable(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    sim.set_routes(
        NS,
        "scorer",
        [
            Target("scorer-predictor-00001", 100, STABLE),
            Target("scorer-predictor-00002", 0, CANARY),
        ],
    )
    run(sim, 10)
    assert sim.counts(NS, "scorer-predictor-00001").requests == 10_000
    assert sim.counts(NS, "scorer-predictor-00002").requests == 0
    idle = samples(sim.registry(NS, "scorer-predictor-00002"))
    assert "target_info" in idle  # the pod is up ...
    assert "kn_serving_invocation_duration_seconds_count" not in idle  # ... and served nothing


def test_mirrored_copies_count_on_the_mirror_only(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book(rate=500.0, models={SHADOW: behaviour(0.03, 0.09, 0.2)}))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.set_mirror(NS, "scorer", Target("scorer-challenger-predictor-00001", 0, SHADOW), 20)
    run(sim, 20)
    primary = sim.counts(NS, "scorer-predictor-00001")
    mirror = sim.counts(NS, "scorer-challenger-predictor-00001")
    assert primary.requests == 10_000  # every live request, no more
    assert primary.mirrored == 0
    assert within_sampling_error(mirror.requests, 10_000, 0.20)
    assert mirror.mirrored == mirror.requests
    assert within_sampling_error(mirror.errors, mirror.requests, 0.2)  # the mirror's behaviour

    sim.set_mirror(NS, "scorer", None, 0)
    run(sim, 2)
    assert sim.counts(NS, "scorer-predictor-00001").requests == 11_000
    with pytest.raises(KeyError, match="scorer-challenger-predictor-00001"):
        sim.counts(NS, "scorer-challenger-predictor-00001")


# --- mirroring: the copies are the live requests ---------------------------------------------

CHALLENGER_REV = "challenger-predictor-00001"
LOGGER = "http://127.0.0.1:9/collector"  # never contacted: the sender is not started


def shadowed(
    tmp_path: Path,
    champion: ModelBehaviour,
    challenger: ModelBehaviour,
    *,
    percent: float = 100,
    rate: float = 1000.0,
    seed: int = 7,
) -> TrafficSimulator:
    """``scorer`` (STABLE) mirrored to the challenger InferenceService's own revision
    (SHADOW), which gets no live traffic of its own; payload-logger events are queued."""
    models = book(rate=rate, models={STABLE: champion, SHADOW: challenger})
    sim = TrafficSimulator(
        models.with_rate(NS, "challenger", 0.0),
        tmp_path / "targets.json",
        rng=random.Random(seed),
        logger_url=LOGGER,
    )
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.set_routes(NS, "challenger", [Target(CHALLENGER_REV, 100, SHADOW)])
    sim.set_mirror(NS, "scorer", Target(CHALLENGER_REV, 0, SHADOW), percent)
    return sim


def pairs(sim: TrafficSimulator) -> dict[str, dict[str, LoggerEvent]]:
    """Queued events by id, then by InferenceService."""
    assert sim.logger is not None
    by_id: dict[str, dict[str, LoggerEvent]] = {}
    for event in sim.logger.take():
        side = by_id.setdefault(event.id, {})
        assert event.isvc not in side, f"two events of {event.isvc} for {event.id}"
        side[event.isvc] = event
    return by_id


def collect_pairs(sim: TrafficSimulator, seconds: float) -> dict[str, dict[str, LoggerEvent]]:
    """Run, taking the queued events after every tick; the events by id and isvc."""
    assert sim.logger is not None
    events: list[LoggerEvent] = []
    for _ in range(round(seconds / 0.2)):
        sim.tick(0.2)
        events.extend(sim.logger.take())
    return pairs_of(events)


def agreement(p: float, q: float, noise_p: float, noise_q: float) -> float:
    """Chance two models deciding at rates ``p`` and ``q`` agree on a shared request: on
    the shared uniform unless either model's decision noise redraws it."""
    both_shared = (1 - noise_p) * (1 - noise_q)
    return both_shared * (1 - abs(p - q)) + (1 - both_shared) * (p * q + (1 - p) * (1 - q))


def test_equal_profiles_agree_on_every_mirrored_request(tmp_path: Path) -> None:
    profile = {"fraud_rate": 0.2, "detection_rate": 0.7, "false_positive_rate": 0.1}
    sim = shadowed(
        tmp_path,
        behaviour(0.02, 0.04, 0.0, **profile),
        behaviour(0.05, 0.20, 0.0, **profile),  # another latency: decisions still match
        percent=50,
    )
    run(sim, 10)
    by_id = pairs(sim)
    mirror = sim.counts(NS, CHALLENGER_REV)
    assert len(by_id) == mirror.requests  # no errors: one pair per copy
    assert within_sampling_error(mirror.requests, 10_000, 0.5)
    decisions = [side["scorer"].decision for side in by_id.values()]
    assert 0.1 < decisions.count("decline") / len(decisions) < 0.4  # both kinds occur
    for side in by_id.values():
        assert side["scorer"].decision == side["challenger"].decision
        assert side["scorer"].score == side["challenger"].score


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param({}, {"false_positive_rate": 0.10}, id="false-positive-rate"),
        pytest.param({}, {"detection_rate": 0.5}, id="detection-rate"),
        pytest.param({}, {"decision_noise": 0.3}, id="challenger-noise"),
        pytest.param(
            {"decision_noise": 0.2},
            {"false_positive_rate": 0.25, "decision_noise": 0.5},
            id="noise-on-both-and-a-rate",
        ),
    ],
)
def test_divergent_profiles_agree_as_often_as_the_profiles_predict(
    tmp_path: Path, champion: dict[str, float], challenger: dict[str, float]
) -> None:
    base = {"fraud_rate": 0.3, "detection_rate": 0.9, "false_positive_rate": 0.05}
    live, copy = {**base, **champion}, {**base, **challenger}
    sim = shadowed(tmp_path, behaviour(0.02, 0.04, 0.0, **live), behaviour(0.02, 0.04, 0.0, **copy))
    by_id = collect_pairs(sim, 20)  # 20,000 pairs: more than the queue holds at once
    agreed = sum(side["scorer"].decision == side["challenger"].decision for side in by_id.values())
    noise_p, noise_q = live.get("decision_noise", 0.0), copy.get("decision_noise", 0.0)
    expected = base["fraud_rate"] * agreement(
        live["detection_rate"], copy["detection_rate"], noise_p, noise_q
    ) + (1 - base["fraud_rate"]) * agreement(
        live["false_positive_rate"], copy["false_positive_rate"], noise_p, noise_q
    )
    assert len(by_id) == 20_000
    assert expected < 0.97  # the profiles do diverge
    assert within_sampling_error(agreed, len(by_id), expected), (agreed / len(by_id), expected)


def test_the_copies_count_on_the_challenger_and_never_on_the_champion(tmp_path: Path) -> None:
    sim = shadowed(
        tmp_path, behaviour(0.02, 0.04, 0.0), behaviour(0.02, 0.04, 0.5), percent=30, rate=500.0
    )
    run(sim, 20)
    champion = sim.counts(NS, "scorer-predictor-00001")
    assert champion == RequestCounts(requests=10_000, errors=0, mirrored=0)
    rows = samples(sim.registry(NS, "scorer-predictor-00001"))
    assert sum(v for _, v in rows["fraud_decisions_total"]) == 10_000  # one per live request
    challenger = sim.counts(NS, CHALLENGER_REV)
    assert within_sampling_error(challenger.requests, 10_000, 0.3)
    assert challenger.mirrored == challenger.requests  # it has no live traffic of its own
    assert within_sampling_error(challenger.errors, challenger.requests, 0.5)
    assert sim.stats()["requests"] == 10_000 + challenger.requests


def test_a_challengers_own_routes_and_the_mirror_share_one_endpoint(tmp_path: Path) -> None:
    models = book(rate=1000.0).with_rate(NS, "challenger", 200.0)
    sim = TrafficSimulator(models, tmp_path / "targets.json", rng=random.Random(3))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    # the mirror first: a pod of the champion's until the challenger routes it
    sim.set_mirror(NS, "scorer", Target(CHALLENGER_REV, 0, SHADOW), 50)
    sim.set_routes(NS, "challenger", [Target(CHALLENGER_REV, 100, SHADOW)])
    run(sim, 10)
    shared = sim.counts(NS, CHALLENGER_REV)
    assert within_sampling_error(shared.mirrored, 10_000, 0.5)
    assert shared.requests == 2_000 + shared.mirrored  # its own live requests and the copies
    rows = samples(sim.registry(NS, CHALLENGER_REV))
    assert {labels["model_name"] for labels, _ in rows["request_predict_seconds_count"]} == {
        "challenger"
    }
    sim.bind()
    try:
        paths = [
            entry["labels"]["__metrics_path__"] for entry in json.loads(sim.sd_file.read_text())
        ]
        assert sorted(paths) == [
            f"/metrics/{NS}/{CHALLENGER_REV}",
            f"/metrics/{NS}/scorer-predictor-00001",
        ]

        sim.set_mirror(NS, "scorer", None, 0)  # the shadow ends: the challenger's pod stays
        run(sim, 1)
        after = sim.counts(NS, CHALLENGER_REV)
        assert after.requests == shared.requests + 200
        assert after.mirrored == shared.mirrored
    finally:
        sim.stop()


def test_a_mirror_follows_the_model_its_target_is_routed_with(tmp_path: Path) -> None:
    models = book(models={SHADOW: behaviour(0.02, 0.04, 1.0)}).with_rate(NS, "challenger", 0.0)
    sim = TrafficSimulator(models, tmp_path / "targets.json", rng=random.Random(3))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.set_routes(NS, "challenger", [Target(CHALLENGER_REV, 100, SHADOW)])
    sim.set_mirror(NS, "scorer", Target(CHALLENGER_REV, 0, CANARY), 100)  # a stale model
    run(sim, 2)
    assert sim.counts(NS, CHALLENGER_REV) == RequestCounts(2_000, 2_000, 2_000)  # SHADOW's


def test_only_one_inference_service_may_mirror_to_a_target_nobody_routes(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.set_routes(NS, "ranker", [Target("ranker-predictor-00001", 100, STABLE)])
    sim.set_mirror(NS, "scorer", Target(CHALLENGER_REV, 0, SHADOW), 10)
    with pytest.raises(ValueError, match="mirrored to by both scorer and ranker"):
        sim.set_mirror(NS, "ranker", Target(CHALLENGER_REV, 0, SHADOW), 10)
    sim.set_routes(NS, "challenger", [Target(CHALLENGER_REV, 100, SHADOW)])
    sim.set_mirror(NS, "ranker", Target(CHALLENGER_REV, 0, SHADOW), 10)  # routed: shared
    run(sim, 1)
    assert sim.counts(NS, CHALLENGER_REV).mirrored > 0


# --- payload-logger events of mirrored requests ----------------------------------------------


def test_each_request_both_sides_answered_gives_two_events_with_one_id(tmp_path: Path) -> None:
    sim = shadowed(tmp_path, behaviour(0.02, 0.04, 0.0), behaviour(0.02, 0.04, 0.0), percent=20)
    sim.tick(1.0)
    copies = sim.counts(NS, CHALLENGER_REV).mirrored
    assert sim.logger is not None
    events = sim.logger.take()
    assert len(events) == 2 * copies
    by_id = pairs_of(events)
    assert len(by_id) == copies
    assert all(len(uuid.UUID(request_id).hex) == 32 for request_id in by_id)
    pods = {
        "scorer": samples(sim.registry(NS, "scorer-predictor-00001"))["target_info"][0][0][
            "k8s_pod_name"
        ],
        "challenger": samples(sim.registry(NS, CHALLENGER_REV))["target_info"][0][0][
            "k8s_pod_name"
        ],
    }
    for side in by_id.values():
        assert set(side) == {"scorer", "challenger"}
        for isvc, event in side.items():
            assert event.namespace == NS
            assert event.source == pods[isvc]
            body = event.structured()
            assert body["type"] == "org.kubeflow.serving.inference.response"
            assert body["inferenceservicename"] == isvc
            assert body["data"] == {
                "predictions": [{"decision": event.decision, "score": event.score}]
            }
            assert event.decision in ("approve", "decline")
            assert 0.0 <= event.score <= 1.0


def pairs_of(events: list[LoggerEvent]) -> dict[str, dict[str, LoggerEvent]]:
    by_id: dict[str, dict[str, LoggerEvent]] = {}
    for event in events:
        by_id.setdefault(event.id, {})[event.isvc] = event
    return by_id


@pytest.mark.parametrize(("live_errors", "copy_errors"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_no_events_for_a_request_either_side_failed(
    tmp_path: Path, live_errors: float, copy_errors: float
) -> None:
    sim = shadowed(tmp_path, behaviour(0.02, 0.04, live_errors), behaviour(0.02, 0.04, copy_errors))
    run(sim, 10)
    by_id = pairs(sim)
    both_ok = (1 - live_errors) * (1 - copy_errors)
    assert within_sampling_error(len(by_id), 10_000, both_ok)
    assert all(set(side) == {"scorer", "challenger"} for side in by_id.values())


def test_a_dark_launch_sends_no_events_and_counts_copies_on_the_canary_entry(
    tmp_path: Path,
) -> None:
    sim = TrafficSimulator(
        book(), tmp_path / "targets.json", rng=random.Random(5), logger_url=LOGGER
    )
    sim.set_routes(
        NS,
        "ranker",
        [
            Target("ranker-predictor", 100, STABLE, mode="standard"),
            Target("ranker-shadow-predictor", 0, CANARY, mode="standard"),
        ],
    )
    sim.set_mirror(NS, "ranker", Target("ranker-shadow-predictor", 0, CANARY, "standard"), 100)
    run(sim, 2)
    assert sim.counts(NS, "ranker-predictor").mirrored == 0
    assert sim.counts(NS, "ranker-predictor").requests == 2_000
    assert sim.counts(NS, "ranker-shadow-predictor").mirrored == 2_000
    assert sim.stats()["logger_events_queued"] == 0


def test_no_logger_url_no_events(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book().with_rate(NS, "challenger", 0.0))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    sim.set_routes(NS, "challenger", [Target(CHALLENGER_REV, 100, SHADOW)])
    sim.set_mirror(NS, "scorer", Target(CHALLENGER_REV, 0, SHADOW), 100)
    run(sim, 1)
    assert sim.logger is None
    assert "logger_events_queued" not in sim.stats()
    sim.set_logger_url(LOGGER)
    run(sim, 1)
    assert sim.stats()["logger_events_queued"] > 1_500  # about 2 x 1000 x 0.99 x 0.99
    sim.set_logger_url(None)
    run(sim, 1)
    assert "logger_events_queued" not in sim.stats()


def test_events_that_do_not_fit_in_the_queue_are_dropped_and_counted(tmp_path: Path) -> None:
    sim = shadowed(tmp_path, behaviour(0.02, 0.04, 0.0), behaviour(0.02, 0.04, 0.0), rate=5000)
    run(sim, 3)  # 15,000 pairs: 30,000 events, more than the queue holds
    stats = sim.stats()
    assert stats["logger_events_queued"] == 20_000
    assert stats["logger_events_dropped"] == 30_000 - 20_000
    assert sim.logger is not None
    assert len(sim.logger.take()) == 20_000
    run(sim, 0.2)  # room again
    assert sim.stats()["logger_events_queued"] == 2_000


# --- what each request looks like -----------------------------------------------------------


@pytest.mark.parametrize("error_rate", [0.0, 0.01, 0.05, 0.3])
def test_error_share_matches_the_error_rate(tmp_path: Path, error_rate: float) -> None:
    sim = simulator(tmp_path, book(models={STABLE: behaviour(0.02, 0.04, error_rate)}))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    run(sim, 40)
    counts = sim.counts(NS, "scorer-predictor-00001")
    assert counts.requests == 40_000
    assert within_sampling_error(counts.errors, counts.requests, error_rate)
    rows = samples(sim.registry(NS, "scorer-predictor-00001"))
    by_code = {
        labels["http_response_status_code"]: value
        for labels, value in rows["http_server_request_duration_seconds_count"]
    }
    assert by_code.get("500", 0.0) == counts.errors
    assert by_code["200"] == counts.requests - counts.errors


@pytest.mark.parametrize(
    ("median", "p99"),
    [(0.002, 0.005), (0.020, 0.040), (0.050, 0.120), (0.100, 0.900), (0.800, 2.0)],
)
def test_latency_reproduces_the_configured_median_and_p99(
    tmp_path: Path, median: float, p99: float
) -> None:
    sim = simulator(tmp_path, book(rate=5000.0, models={STABLE: behaviour(median, p99, 0.02)}))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    run(sim, 20)  # 100,000 requests
    rows = samples(sim.registry(NS, "scorer-predictor-00001"))
    for metric, scale in (
        ("kn_serving_invocation_duration_seconds", 1.0),
        ("istio_request_duration_milliseconds", 1000.0),
        ("revision_request_latencies", 1000.0),
        ("request_predict_seconds", 1.0),
    ):
        assert quantile(0.5, rows, metric, scale) == pytest.approx(median, rel=0.05), metric
        assert quantile(0.99, rows, metric, scale) == pytest.approx(p99, rel=0.05), metric
    # the sums carry the real durations: mean of a lognormal is exp(mu + sigma^2 / 2)
    total = sum(v for _, v in rows["request_predict_seconds_sum"])
    count = sum(v for _, v in rows["request_predict_seconds_count"])
    profile = LatencyProfile(median_seconds=median, p99_seconds=p99)
    assert total / count == pytest.approx(math.exp(profile.mu + profile.sigma**2 / 2), rel=0.02)


def test_fraud_outcomes_follow_the_business_profile(tmp_path: Path) -> None:
    model = behaviour(
        0.02, 0.04, 0.0, fraud_rate=0.05, detection_rate=0.8, false_positive_rate=0.03
    )
    sim = simulator(tmp_path, book(models={STABLE: model}))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    run(sim, 60)
    rows = samples(sim.registry(NS, "scorer-predictor-00001"))
    decisions = {
        (labels["decision"], labels["outcome"]): int(value)
        for labels, value in rows["fraud_decisions_total"]
    }
    assert set(decisions) == {
        ("decline", "true_positive"),
        ("approve", "false_negative"),
        ("decline", "false_positive"),
        ("approve", "true_negative"),
    }
    total = sum(decisions.values())
    assert total == 60_000
    fraud = decisions["decline", "true_positive"] + decisions["approve", "false_negative"]
    legit = total - fraud
    assert within_sampling_error(fraud, total, 0.05)
    assert within_sampling_error(decisions["decline", "true_positive"], fraud, 0.8)
    assert within_sampling_error(decisions["decline", "false_positive"], legit, 0.03)
    # declined requests score high, approved ones low
    scores = {float(labels["le"]): v for labels, v in rows["fraud_score_bucket"]}
    declined = decisions["decline", "true_positive"] + decisions["decline", "false_positive"]
    assert scores[0.5] == pytest.approx(total - declined, rel=0.01)
    assert scores[math.inf] == total


def test_behaviour_file_changes_take_effect_on_the_next_tick(tmp_path: Path) -> None:
    path = tmp_path / "behaviour.yaml"
    book(models={STABLE: behaviour(0.02, 0.04, 0.0)}).save(path)
    sim = simulator(tmp_path, BehaviourWatcher(path))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    run(sim, 5)
    assert sim.counts(NS, "scorer-predictor-00001").errors == 0

    book(rate=2000.0, models={STABLE: behaviour(0.02, 0.04, 1.0)}).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a distinct mtime
    run(sim, 5)
    counts = sim.counts(NS, "scorer-predictor-00001")
    assert counts.requests == 5_000 + 10_000
    assert counts.errors == 10_000


# --- the scrape: every profile's names and labels -------------------------------------------

KNATIVE_SERIES = {
    "target_info": {
        "k8s_namespace_name",
        "k8s_pod_name",
        "kn_configuration_name",
        "kn_revision_name",
        "kn_service_name",
    },
    "kn_serving_invocation_duration_seconds_bucket": {"http_response_status_code", "le"},
    "kn_serving_invocation_duration_seconds_count": {"http_response_status_code"},
    "kn_serving_invocation_duration_seconds_sum": {"http_response_status_code"},
    "http_server_request_duration_seconds_bucket": {
        "http_response_status_code",
        "http_request_method",
        "le",
    },
    "http_server_request_duration_seconds_count": {
        "http_response_status_code",
        "http_request_method",
    },
    "http_server_request_duration_seconds_sum": {
        "http_response_status_code",
        "http_request_method",
    },
}
OPENCENSUS_LABELS = {
    "namespace_name",
    "configuration_name",
    "revision_name",
    "response_code",
    "response_code_class",
}
OPENCENSUS_SERIES = {
    "revision_request_count": OPENCENSUS_LABELS,
    "revision_request_latencies_bucket": OPENCENSUS_LABELS | {"le"},
    "revision_request_latencies_count": OPENCENSUS_LABELS,
    "revision_request_latencies_sum": OPENCENSUS_LABELS,
}
ISTIO_LABELS = {
    "reporter",
    "destination_workload",
    "destination_workload_namespace",
    "response_code",
}
COMMON_SERIES = {
    "istio_requests_total": ISTIO_LABELS,
    "istio_request_duration_milliseconds_bucket": ISTIO_LABELS | {"le"},
    "istio_request_duration_milliseconds_count": ISTIO_LABELS,
    "istio_request_duration_milliseconds_sum": ISTIO_LABELS,
    "request_predict_seconds_bucket": {"model_name", "le"},
    "request_predict_seconds_count": {"model_name"},
    "request_predict_seconds_sum": {"model_name"},
    "fraud_decisions_total": {"decision", "outcome"},
    "fraud_score_bucket": {"le"},
    "fraud_score_count": set(),
    "fraud_score_sum": set(),
}


def _exposed(registry: CollectorRegistry) -> dict[str, set[str]]:
    names = label_names(registry)
    assert all(len(sets) == 1 for sets in names.values()), names  # one label set per name
    return {name: set(next(iter(sets))) for name, sets in names.items()}


def test_a_knative_revision_exposes_every_profile_under_the_real_names(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book(models={STABLE: behaviour(0.02, 0.04, 0.05)}))
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00002", 100, STABLE)])
    run(sim, 2)
    registry = sim.registry(NS, "scorer-predictor-00002")
    assert _exposed(registry) == KNATIVE_SERIES | OPENCENSUS_SERIES | COMMON_SERIES

    rows = samples(registry)
    (info_labels, info_value), *_ = rows["target_info"]
    assert info_value == 1
    assert info_labels["kn_revision_name"] == "scorer-predictor-00002"
    assert info_labels["kn_configuration_name"] == "scorer-predictor"
    assert info_labels["kn_service_name"] == "scorer-predictor"
    assert info_labels["k8s_namespace_name"] == NS
    assert info_labels["k8s_pod_name"].startswith("scorer-predictor-00002-deployment-")
    codes = {labels["response_code"]: labels for labels, _ in rows["revision_request_count"]}
    assert codes["500"]["response_code_class"] == "5xx"
    assert codes["200"]["response_code_class"] == "2xx"
    assert codes["200"]["revision_name"] == "scorer-predictor-00002"
    assert codes["200"]["configuration_name"] == "scorer-predictor"
    assert codes["200"]["namespace_name"] == NS
    istio = rows["istio_requests_total"][0][0]
    assert istio["reporter"] == "destination"
    assert istio["destination_workload"] == "scorer-predictor-00002-deployment"
    assert istio["destination_workload_namespace"] == NS
    assert {labels["model_name"] for labels, _ in rows["request_predict_seconds_count"]} == {
        "scorer"
    }
    assert {labels["http_request_method"] for labels, _ in rows[
        "http_server_request_duration_seconds_count"
    ]} == {"POST"}  # fmt: skip

    text = generate_latest(registry).decode()
    assert "# TYPE kn_serving_invocation_duration_seconds histogram" in text
    assert "# TYPE istio_requests_total counter" in text
    assert "\nrevision_request_count{" in text  # OpenCensus' name, without _total
    buckets = [float(labels["le"]) for labels, _ in rows["request_predict_seconds_bucket"]]
    assert buckets == [*LATENCY_BUCKETS_SECONDS, math.inf]
    ms = [labels["le"] for labels, _ in rows["istio_request_duration_milliseconds_bucket"]]
    assert ms[:4] == ["1", "1.1", "1.2", "1.3"]  # exact decimal bounds, formatted as Go does


def test_a_standard_deployment_has_no_knative_series(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    sim.set_routes(
        NS,
        "ranker",
        [
            Target("ranker-predictor", 80, STABLE, mode="standard"),
            Target("ranker-canary-predictor", 20, CANARY, mode="standard"),
        ],
    )
    run(sim, 2)
    registry = sim.registry(NS, "ranker-canary-predictor")
    assert _exposed(registry) == COMMON_SERIES
    istio = samples(registry)["istio_requests_total"][0][0]
    assert istio["destination_workload"] == "ranker-canary-predictor"


def test_the_metrics_path_serves_the_target_registry(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, STABLE)])
    run(sim, 1)
    body = sim.exposition(f"/metrics/{NS}/scorer-predictor-00001")
    assert body is not None
    assert b"kn_serving_invocation_duration_seconds_bucket" in body
    assert sim.exposition(f"/metrics/{NS}/scorer-predictor-00009") is None
    assert sim.exposition("/metrics") is None


# --- service discovery ----------------------------------------------------------------------


def _sd(sim: TrafficSimulator) -> dict[str, dict[str, str]]:
    entries = json.loads(sim.sd_file.read_text())
    for entry in entries:
        assert entry["targets"] == [f"127.0.0.1:{sim.port}"]
    return {entry["labels"]["__metrics_path__"]: entry["labels"] for entry in entries}


def test_the_file_sd_lists_each_target_with_podmonitor_labels(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    sim.set_routes(
        NS,
        "scorer",
        [
            Target("scorer-predictor-00001", 90, STABLE),
            Target("scorer-predictor-00002", 10, CANARY),
        ],
    )
    sim.set_routes(
        "team-b",
        "ranker",
        [
            Target("ranker-predictor", 100, STABLE, mode="standard"),
            Target("ranker-canary-predictor", 0, CANARY, mode="standard"),
        ],
    )
    assert not sim.sd_file.exists()  # nothing to point at until the server has a port
    sim.bind()
    try:
        targets = _sd(sim)
        assert set(targets) == {
            "/metrics/models/scorer-predictor-00001",
            "/metrics/models/scorer-predictor-00002",
            "/metrics/team-b/ranker-predictor",
            "/metrics/team-b/ranker-canary-predictor",
        }
        knative = targets["/metrics/models/scorer-predictor-00002"]
        assert knative["namespace"] == NS
        assert knative["container"] == "queue-proxy"
        assert knative["revision"] == "scorer-predictor-00002"
        assert knative["pod"].startswith("scorer-predictor-00002-deployment-")
        assert "app" not in knative
        standard = targets["/metrics/team-b/ranker-canary-predictor"]
        assert standard["namespace"] == "team-b"
        assert standard["container"] == "kserve-container"
        assert standard["app"] == "isvc.ranker-canary-predictor"
        assert standard["pod"].startswith("ranker-canary-predictor-")
        assert "revision" not in standard
        instances = [labels["instance"] for labels in targets.values()]
        assert len(set(instances)) == len(instances)  # joins on (job, instance) stay apart

        # a new revision replaces the old one; the file follows
        sim.set_routes(
            NS,
            "scorer",
            [
                Target("scorer-predictor-00002", 100, CANARY),
                Target("scorer-predictor-00003", 0, CANARY + "-fix"),
            ],
        )
        after = _sd(sim)
        assert "/metrics/models/scorer-predictor-00001" not in after
        assert "/metrics/models/scorer-predictor-00003" in after
        assert after["/metrics/models/scorer-predictor-00002"] == knative  # same pod

        sim.clear_routes("team-b", "ranker")
        assert {path.split("/")[2] for path in _sd(sim)} == {NS}
        assert not list(tmp_path.glob(".targets-*"))  # atomic writes leave no temp files
    finally:
        sim.stop()
    assert json.loads(sim.sd_file.read_text()) == []


def test_routing_errors_are_refused(tmp_path: Path) -> None:
    sim = simulator(tmp_path, book())
    with pytest.raises(ValueError, match="percent"):
        Target("scorer-predictor-00001", 101)
    with pytest.raises(ValueError, match="twice with different models"):
        sim.set_routes(
            NS,
            "scorer",
            [
                Target("scorer-predictor-00001", 50, STABLE),
                Target("scorer-predictor-00001", 50, CANARY),
            ],
        )
    # the same revision listed twice (as latestRevision and by a tag) gets both shares
    sim.set_routes(
        NS, "scorer", [Target("scorer-predictor-00001", 60), Target("scorer-predictor-00001", 40)]
    )
    assert sim.routes(NS, "scorer") == (Target("scorer-predictor-00001", 100),)
    with pytest.raises(ValueError, match="routed by both"):
        sim.set_routes(NS, "other", [Target("scorer-predictor-00001", 100)])
    assert sim.routes(NS, "other") == ()  # a refused change changes nothing
    run(sim, 1)
    assert sim.counts(NS, "scorer-predictor-00001").requests == 1000
