"""Prometheus goes away in the middle of a step and comes back empty.

Each test runs its own Prometheus (scraping the test bed's targets on a fixed port), so it
can be stopped and started again without touching the session's. A restarted Prometheus
has lost its history: the counters it sees next look new. Whatever happens meanwhile, the
controller's promise holds: a canary that turned bad during the outage is never promoted,
and a healthy one is never rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary.model import Phase
from testbed.behaviour import LatencyProfile, ModelBehaviour
from testbed.processes import free_ports
from testbed.prometheus import PrometheusServer
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

OUTAGE_POLICY = """
name: outage
steps: [10, 100]
stepHold: 15s
analysisInterval: 1s
revisionReadyTimeout: 15s
trafficTimeout: 20s
maxStepDuration: 120s
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200
    consecutiveErrorLimit: 60
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 1.0
    minSamples: 100
    consecutiveErrorLimit: 60
"""

TURNED_BAD = ModelBehaviour(
    error_rate=0.30, latency=LatencyProfile(median_seconds=0.150, p99_seconds=0.400)
)


@pytest.fixture
def own_prometheus(knative_env: Env, tmp_path: Path) -> Iterator[PrometheusServer]:
    port = free_ports(1)[0]
    server = PrometheusServer(tmp_path / "prometheus", knative_env.testbed.sd_file, port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("turns_bad", [True, False], ids=["turns-bad", "stays-healthy"])
def test_a_prometheus_restarted_empty_mid_step_never_promotes_a_bad_canary(
    knative_env: Env, own_prometheus: PrometheusServer, turns_bad: bool
) -> None:
    env = knative_env
    (env.policy_dir / "outage.yaml").write_text(OUTAGE_POLICY, encoding="utf-8")
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="outage")
    env.start_controller(prometheus_url=own_prometheus.url)
    assert env.command("start", "Prometheus will restart", storage_uri=v2).state == "accepted"

    def evaluated_at_step() -> bool:
        doc = env.latest()
        return doc is not None and doc.state.last_verdict is not None

    env.wait("a first verdict at 10 %", evaluated_at_step)
    own_prometheus.stop()  # SIGTERM; the controller now reads errors
    if turns_bad:
        env.model("v2", TURNED_BAD)
    time.sleep(4)  # an outage of a few seconds (real processes, not a clock to inject)
    own_prometheus.start()  # the same port, an empty database

    doc = env.wait_phase(
        Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED, deadline=150
    )
    records = [r.entry for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    actions = [e.action for e in records]
    story = "\n".join(f"{e.at.time()} {e.action} {(e.reason or '')[:150]}" for e in records)
    errors = [
        m
        for e in records
        if e.action == "analysis.evaluated"
        for m in e.measurements
        if m.verdict == "Error"
    ]
    assert errors, f"the outage must show in the audit trail as errors:\n{story}"
    if turns_bad:
        assert doc.state.phase in {Phase.ROLLED_BACK, Phase.PAUSED}, story
        assert "promoted" not in actions
        intents = [str(e.evidence.get("percent")) for e in records if e.action == "traffic.intent"]
        assert "100" not in intents, intents
    else:
        assert doc.state.phase in {Phase.SUCCEEDED, Phase.PAUSED}, story
        assert "rolled_back" not in actions
