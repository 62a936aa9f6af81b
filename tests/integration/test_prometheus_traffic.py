"""The traffic simulator scraped by a real Prometheus: the queries of KSERVE.md §4 give back,
per revision and for every metric profile, the latency and error rate the behaviour book
configured.

Prometheus is required: if it cannot start, these tests FAIL with the harness's message.

Sample size. A 5 % error rate measured on n requests has a relative standard error of
sqrt(0.95 / (0.05 n)); for "within 10 %" to be a four-sigma check, n must reach 30,400. The
canary's 10 % share therefore needs about 2,000 requests per second for 15 s, so the
InferenceService runs at 20,000 requests per second (which costs the simulator about 5 % of
a core). At 1,000 requests per second the same check would take five minutes.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.behaviour import BehaviourBook, LatencyProfile, ModelBehaviour
from testbed.prometheus import PrometheusServer, PrometheusUnavailable
from testbed.traffic import Target, TrafficSimulator

pytestmark = pytest.mark.integration

NS = "models"
ISVC = "scorer"
STABLE_REV, CANARY_REV = "scorer-predictor-00001", "scorer-predictor-00002"
STABLE_URI, CANARY_URI = "s3://models/scorer/v1", "s3://models/scorer/v2"
RATE = 20_000.0
# configured behaviour: (p99 seconds, error rate) per revision
EXPECTED = {STABLE_REV: (0.040, 0.01), CANARY_REV: (0.120, 0.05)}
TOLERANCE = 0.10
WINDOW = "60s"  # longer than the test runs: every query sees all data so far
DATA_DEADLINE = 40.0  # seconds to wait for enough data (first scrape takes ~5 s)


def _book() -> BehaviourBook:
    stable = ModelBehaviour(
        latency=LatencyProfile(median_seconds=0.020, p99_seconds=0.040), error_rate=0.01
    )
    canary = ModelBehaviour(
        latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.120), error_rate=0.05
    )
    return (
        BehaviourBook(default_rate=500.0)
        .with_model(STABLE_URI, stable)
        .with_model(CANARY_URI, canary)
        .with_rate(NS, ISVC, RATE)
    )


@dataclass
class Bed:
    simulator: TrafficSimulator
    prometheus: PrometheusServer

    def query(self, expr: str, at: float) -> dict[str, float]:
        """Instant query at ``at``; {value of the single grouping label: value}."""
        out: dict[str, float] = {}
        for row in self.prometheus.query(expr, at=at):
            labels: dict[str, str] = row["metric"]
            key = next(iter(labels.values())) if labels else ""
            out[key] = float(row["value"][1])
        return out


def _start_prometheus(server: PrometheusServer) -> None:
    problem: str | None = None
    try:
        server.start()
    except PrometheusUnavailable as exc:
        problem = str(exc)
    if problem is not None:  # outside the except block, so the message is not repeated
        pytest.fail(f"Prometheus is required and could not start:\n{problem}", pytrace=False)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    work = tmp_path_factory.mktemp("prometheus-traffic")
    simulator = TrafficSimulator(_book(), work / "targets.json", rng=random.Random(20))
    simulator.set_routes(
        NS, ISVC, [Target(STABLE_REV, 90, STABLE_URI), Target(CANARY_REV, 10, CANARY_URI)]
    )
    simulator.set_routes(
        NS,
        "ranker",
        [
            Target("ranker-predictor", 80, STABLE_URI, mode="standard"),
            Target("ranker-canary-predictor", 20, CANARY_URI, mode="standard"),
        ],
    )
    simulator.start()
    prometheus = PrometheusServer(work / "prometheus", simulator.sd_file)
    try:
        _start_prometheus(prometheus)
        yield Bed(simulator, prometheus)
    finally:
        prometheus.stop()
        simulator.stop()


def _needed_requests(error_rate: float) -> int:
    """Requests for TOLERANCE to be four standard errors of the measured error ratio."""
    return math.ceil((1 - error_rate) / (error_rate * (TOLERANCE / 4) ** 2))


@pytest.fixture(scope="module")
def at(bed: Bed) -> float:
    """An evaluation time at which Prometheus holds enough data for every check."""
    count = (
        f'sum by (revision) (increase(http_server_request_duration_seconds_count{{namespace="{NS}"'
        f"}}[{WINDOW}]))"
    )
    apps = f'count by (app) (request_predict_seconds_count{{namespace="{NS}",app!=""}})'
    deadline = time.monotonic() + DATA_DEADLINE
    seen: dict[str, float] = {}
    while True:
        now = time.time()
        seen = bed.query(count, now)
        enough = all(
            seen.get(rev, 0.0) >= _needed_requests(rate) for rev, (_, rate) in EXPECTED.items()
        )
        if enough and len(bed.query(apps, now)) == 2:
            return now
        if time.monotonic() > deadline:
            pytest.fail(
                f"Prometheus did not hold enough requests within {DATA_DEADLINE:.0f} s: {seen}; "
                f"needed { {r: _needed_requests(e) for r, (_, e) in EXPECTED.items()} }; "
                f"simulator: {bed.simulator.stats()}; log:\n{bed.prometheus.log_tail()}"
            )
        time.sleep(0.5)  # poll interval, bounded by the deadline above


def _assert_close(observed: dict[str, float], expected: dict[str, float], what: str) -> None:
    assert set(observed) == set(expected), f"{what}: series {sorted(observed)}"
    for key, value in expected.items():
        assert observed[key] == pytest.approx(value, rel=TOLERANCE), (
            f"{what} of {key}: {observed[key]:.4g}, configured {value:.4g}"
        )


P99 = {rev: p99 for rev, (p99, _) in EXPECTED.items()}
ERRORS = {rev: rate for rev, (_, rate) in EXPECTED.items()}
SELECT = f'namespace="{NS}",revision=~"{ISVC}-predictor-[0-9]+"'


def test_knative_otel_p99_and_error_ratio_per_revision(bed: Bed, at: float) -> None:
    p99 = bed.query(
        "histogram_quantile(0.99, sum by (revision, le) "
        f"(rate(kn_serving_invocation_duration_seconds_bucket{{{SELECT}}}[{WINDOW}])))",
        at,
    )
    _assert_close(p99, P99, "knative-otel p99")
    qp = f'{SELECT},container="queue-proxy"'
    errors = bed.query(
        "sum by (revision) (rate(http_server_request_duration_seconds_count"
        f'{{{qp},http_response_status_code=~"5.."}}[{WINDOW}]))'
        " / sum by (revision) (rate(http_server_request_duration_seconds_count"
        f"{{{qp}}}[{WINDOW}]))",
        at,
    )
    _assert_close(errors, ERRORS, "knative-otel 5xx ratio")


def test_target_info_join_finds_both_revisions_and_their_shares(bed: Bed, at: float) -> None:
    # a window shorter than the data: rate() over a window that starts before the first
    # sample under-reports (it extrapolates only part of the gap)
    rates = bed.query(
        "sum by (kn_revision_name) ("
        "rate(kn_serving_invocation_duration_seconds_count[5s])"
        " * on (job, instance) group_left (kn_revision_name) "
        f'target_info{{k8s_namespace_name="{NS}",kn_revision_name=~"{ISVC}-predictor-[0-9]+"}})',
        at,
    )
    assert set(rates) == {STABLE_REV, CANARY_REV}
    total = sum(rates.values())
    assert total == pytest.approx(RATE, rel=TOLERANCE)
    # The share over all the data: a 5 s window holds only a few scrapes per target, and
    # targets are scraped at different moments, so a short-window ratio jitters under load.
    counts = bed.query(
        "sum by (kn_revision_name) ("
        f"increase(kn_serving_invocation_duration_seconds_count[{WINDOW}])"
        " * on (job, instance) group_left (kn_revision_name) "
        f'target_info{{k8s_namespace_name="{NS}",kn_revision_name=~"{ISVC}-predictor-[0-9]+"}})',
        at,
    )
    share = counts[CANARY_REV] / sum(counts.values())
    assert share == pytest.approx(0.10, rel=TOLERANCE)


def test_istio_p99_and_error_ratio_per_workload(bed: Bed, at: float) -> None:
    select = (
        f'reporter="destination",destination_workload_namespace="{NS}",'
        f'destination_workload=~"{ISVC}-predictor-[0-9]+-deployment"'
    )
    p99_ms = bed.query(
        "histogram_quantile(0.99, sum by (destination_workload, le) "
        f"(rate(istio_request_duration_milliseconds_bucket{{{select}}}[{WINDOW}])))",
        at,
    )
    _assert_close(
        p99_ms, {f"{rev}-deployment": p99 * 1000 for rev, p99 in P99.items()}, "istio p99 (ms)"
    )
    errors = bed.query(
        f'sum by (destination_workload) (rate(istio_requests_total{{{select},response_code=~"5.."}}'
        f"[{WINDOW}])) / sum by (destination_workload) (rate(istio_requests_total{{{select}}}"
        f"[{WINDOW}]))",
        at,
    )
    _assert_close(
        errors, {f"{rev}-deployment": rate for rev, rate in ERRORS.items()}, "istio 5xx ratio"
    )


def test_opencensus_p99_and_error_ratio_per_revision(bed: Bed, at: float) -> None:
    select = f'namespace_name="{NS}",revision_name=~"{ISVC}-predictor-[0-9]+"'
    p99_ms = bed.query(
        "histogram_quantile(0.99, sum by (revision_name, le) "
        f"(rate(revision_request_latencies_bucket{{{select}}}[{WINDOW}])))",
        at,
    )
    _assert_close(p99_ms, {rev: p99 * 1000 for rev, p99 in P99.items()}, "opencensus p99 (ms)")
    errors = bed.query(
        f'sum by (revision_name) (rate(revision_request_count{{{select},response_code_class="5xx"}}'
        f"[{WINDOW}])) / sum by (revision_name) (rate(revision_request_count{{{select}}}"
        f"[{WINDOW}]))",
        at,
    )
    _assert_close(errors, ERRORS, "opencensus 5xx ratio")


def test_model_server_p99_by_revision_and_by_app(bed: Bed, at: float) -> None:
    p99 = bed.query(
        "histogram_quantile(0.99, sum by (revision, le) "
        f"(rate(request_predict_seconds_bucket{{{SELECT}}}[{WINDOW}])))",
        at,
    )
    _assert_close(p99, P99, "model-server p99")
    apps = 'app=~"isvc\\\\.ranker(-[a-z0-9-]+)?-predictor"'
    by_app = bed.query(
        "histogram_quantile(0.99, sum by (app, le) "
        f'(rate(request_predict_seconds_bucket{{namespace="{NS}",{apps}}}[{WINDOW}])))',
        at,
    )
    # Standard mode at 400 + 100 requests/s: p99 from fewer samples, so a looser bound
    assert by_app == {
        "isvc.ranker-predictor": pytest.approx(0.040, rel=0.2),
        "isvc.ranker-canary-predictor": pytest.approx(0.120, rel=0.2),
    }
    no_queue_proxy = bed.query(
        f'count by (app) (kn_serving_invocation_duration_seconds_count{{namespace="{NS}",{apps}}})',
        at,
    )
    assert no_queue_proxy == {}  # Standard mode has no queue-proxy metrics


# --- lifecycle ------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_simulator_serves_targets_and_stop_leaves_no_thread_or_port(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    simulator = TrafficSimulator(BehaviourBook(default_rate=1000.0), tmp_path / "targets.json")
    simulator.set_routes(NS, ISVC, [Target(STABLE_REV, 100, STABLE_URI)])
    simulator.start()
    port = simulator.port
    try:
        url = f"http://127.0.0.1:{port}/metrics/{NS}/{STABLE_REV}"
        deadline = time.monotonic() + 10
        while b"kn_serving_invocation_duration_seconds_count" not in httpx.get(url).content:
            assert time.monotonic() < deadline, "no requests were generated within 10 s"
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics/{NS}/nope").status_code == 404
    finally:
        simulator.stop()
    # A request thread that has answered may still be returning when stop() comes back;
    # it must be gone within a moment, and nothing else it started may be left. (Threads
    # of earlier tests that end meanwhile are no concern of this one.)
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before
    assert not _port_open(port)


def test_missing_binary_fails_with_an_actionable_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_PROMETHEUS_BIN", str(tmp_path / "no-such-prometheus"))
    server = PrometheusServer(tmp_path, tmp_path / "targets.json")
    with pytest.raises(PrometheusUnavailable, match=r"(?i)install Debian's prometheus package"):
        server.start()


def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\necho 'err: opening storage failed: no space left'\nexit 3\n")
    fake.chmod(0o755)
    server = PrometheusServer(tmp_path / "work", tmp_path / "targets.json", binary=fake)
    with pytest.raises(PrometheusUnavailable, match=r"(?s)code 3.*no space left"):
        server.start(timeout=10)
    assert not server.running


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_detached_server_is_stopped_from_its_state(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path / "prom", tmp_path / "targets.json", detach=True)
    _start_prometheus(server)
    state: dict[str, Any] = server.state()
    try:
        assert os.getsid(state["pid"]) == state["pid"]  # its own session: outlives the CLI
        assert PrometheusServer.is_running(state)
        assert httpx.get(f"{state['url']}/-/ready").status_code == 200
        assert PrometheusServer.stop_from_state(state)
        assert not PrometheusServer.is_running(state)
        assert not _pid_exists(state["pid"])
        assert not _port_open(state["port"])
        assert not PrometheusServer.stop_from_state(state)  # a second stop is a no-op
    finally:
        server.stop()


def test_stop_terminates_the_process_and_frees_the_port(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path / "prom", tmp_path / "targets.json")
    _start_prometheus(server)
    pid, port = server.pid, server.port
    assert pid is not None
    server.stop()
    assert not server.running
    assert not _pid_exists(pid)
    assert not _port_open(port)
