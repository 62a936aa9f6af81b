"""The controller's judgement on the full test bed: how fast a bad canary goes, and that
nothing is promoted when the evidence is missing or cannot be trusted.

Prometheus scrapes every second and the controller reads a look every second (complete
1.5 s later). "Its metrics appear" is the first moment Prometheus holds a series of the
canary's request counter, watched from the test every 0.2 s.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from analysis.profiles import identity, series_of
from analysis.types import Subject
from canary.audit import AuditRecord
from canary.model import Phase
from testbed.behaviour import LatencyProfile, ModelBehaviour
from tests.e2e.faults import FAULTS, Fault, FaultyPrometheus
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

REACTION_SECONDS = 10.0

ERROR_SPIKE = ModelBehaviour(error_rate=0.15)  # the stable serves 1 % errors
LATENCY_REGRESSION = ModelBehaviour(
    latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.150)  # stable: p99 0.040 s
)


@dataclass
class FirstSeries:
    """Watches Prometheus for the first series of one revision's request counter."""

    prometheus_url: str
    query: str
    seen_at: datetime | None = None
    stop: bool = False

    def run(self) -> None:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": self.query})
        while not self.stop and self.seen_at is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    result = json.loads(response.read())["data"]["result"]
            except OSError:
                result = []
            if result:
                self.seen_at = datetime.now(UTC)
            time.sleep(0.2)


@contextmanager
def first_series(env: Env, revision: str, profile: str) -> Iterator[FirstSeries]:
    series = series_of(profile, env.mode)
    subject = Subject(env.namespace, env.name, env.mode, revision, "stable", profile,
                      window=timedelta(seconds=10))  # fmt: skip
    query = (
        f'{series.requests}{{{series.namespace_label}="{env.namespace}",'
        f'{series.identity_label}="{identity(subject, revision)}"}}'
    )
    watcher = FirstSeries(env.testbed.prometheus_url, query)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop = True
        thread.join(5)


def _evaluations(records: list[AuditRecord], rollout: str) -> list[AuditRecord]:
    return [
        r
        for r in records
        if r.entry.rollout_id == rollout and r.entry.action == "analysis.evaluated"
    ]


@pytest.mark.parametrize(
    ("behaviour", "check"),
    [
        pytest.param(ERROR_SPIKE, "error-rate", id="error-spike"),
        pytest.param(LATENCY_REGRESSION, "latency-p99", id="latency-regression"),
    ],
)
def test_a_bad_canary_is_rolled_back_within_seconds_of_its_metrics_appearing(
    env: Env, behaviour: ModelBehaviour, check: str
) -> None:
    v1, v2 = env.model("v1"), env.model("v2", behaviour)
    env.create(v1)
    env.start_controller()
    assert env.command("start", f"{check} regression", storage_uri=v2).state == "accepted"
    env.wait("the rollout", lambda: env.latest() is not None)
    doc = env.latest()
    assert doc is not None
    with first_series(env, doc.state.canary.name, doc.metric_profile) as watcher:
        doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.ROLLED_BACK, doc.state.pause_reason or doc.state.outcome
    assert check in (doc.state.rollback_reason or "")
    assert watcher.seen_at is not None

    failed = [r for r in _evaluations(env.records(), doc.state.rollout_id)
              if r.entry.evidence.get("verdict") == "Failed"]  # fmt: skip
    assert len(failed) == 1
    decided = failed[0].entry
    reaction = (decided.at - watcher.seen_at).total_seconds()
    print(f"reaction: rolled back {reaction:.1f} s after the canary's metrics appeared")  # noqa: T201 - a figure for the README
    assert reaction <= REACTION_SECONDS, f"rolled back {reaction:.1f} s after its metrics appeared"

    # the evidence an auditor needs, for the check that decided
    measurement = next(m for m in decided.measurements if m.check == check)
    assert measurement.verdict == "Failed"
    assert measurement.detail["decision"] == "regression"
    assert measurement.query
    assert measurement.prometheus_url == env.testbed.prometheus_url
    assert len(measurement.response_digest) == 64
    assert measurement.canary_samples
    assert measurement.baseline_samples
    assert measurement.statistic is not None
    assert measurement.threshold is not None
    assert measurement.statistic >= measurement.threshold
    assert measurement.canary_value is not None
    assert measurement.baseline_value is not None
    assert measurement.canary_value > measurement.baseline_value


def test_a_canary_without_traffic_is_paused_never_promoted(knative_env: Env) -> None:
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller()
    book = env.testbed.behaviour()
    env.testbed.set_behaviour(book.with_rate(env.namespace, env.name, 0.0))
    assert env.command("start", "a night deploy", storage_uri=v2).state == "accepted"
    doc = env.wait_phase(Phase.PAUSED, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)
    assert doc.state.phase is Phase.PAUSED
    assert "no canary data" in (doc.state.pause_reason or "")
    actions = [r.entry.action for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    assert "promoted" not in actions
    assert doc.state.step_index == 0


_EXPECTED: dict[Fault, str] = {
    "down": "could not be read",
    "slow": "could not be read",
    "nan": "NaN",
    "inf": "Inf",
    "several": "several series",
    "empty": "no canary data",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_prometheus_that_cannot_be_trusted_holds_the_canary(
    knative_env: Env, fault: Fault
) -> None:
    env = knative_env
    proxy = FaultyPrometheus(env.testbed.prometheus_url)
    try:
        v1, v2 = env.model("v1"), env.model("v2")  # a healthy canary: only the data are bad
        env.create(v1)
        env.start_controller(prometheus_url=proxy.url)
        proxy.fault = fault
        assert env.command("start", f"prometheus {fault}", storage_uri=v2).state == "accepted"
        doc = env.wait_phase(Phase.PAUSED, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)
    finally:
        proxy.close()
    assert doc.state.phase is Phase.PAUSED, doc.state.outcome
    assert _EXPECTED[fault] in (doc.state.pause_reason or ""), doc.state.pause_reason
    records = [r for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    shifted = [r.entry.evidence["percent"] for r in records if r.entry.action == "traffic.shifted"]
    assert shifted == [10]  # held at the first step (a number in the audit)
    assert "promoted" not in [r.entry.action for r in records]
    evaluations = _evaluations(records, doc.state.rollout_id)
    assert evaluations
    assert not any(r.entry.evidence.get("sufficient_data") for r in evaluations)


CUSTOM_ONLY_POLICY = """
name: custom-only
steps: [10, 100]
stepHold: 1h
analysisInterval: 3s
revisionReadyTimeout: 15s
maxStepDuration: 2h
checks:
  - name: error-ratio
    query: >-
      (sum(rate(http_server_request_duration_seconds_count{namespace="${namespace}",
      revision="${revision}",http_response_status_code=~"5.."}[10s])) or vector(0))
      / sum(rate(http_server_request_duration_seconds_count{namespace="${namespace}",
      revision="${revision}"}[10s]))
    direction: lowerIsBetter
    absoluteLimit: 0.05
"""


def test_a_policy_of_custom_queries_only_is_checked_at_its_interval_not_in_a_loop(
    knative_env: Env,
) -> None:
    """Nothing reads looks for such a policy, so nothing moves its look time on: the
    controller once woke it again and again, a worker at full speed per rollout."""
    env = knative_env
    (env.policy_dir / "custom-only.yaml").write_text(CUSTOM_ONLY_POLICY, encoding="utf-8")
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="custom-only")
    app = env.start_controller()
    assert env.command("start", "a custom-only policy", storage_uri=v2).state == "accepted"

    def evaluated() -> int:
        return sum(1 for r in env.records() if r.entry.action == "analysis.evaluated")

    env.wait("the first analysis at the first step", lambda: evaluated() >= 1)
    registry = app.metrics.registry
    before = registry.get_sample_value("kserve_canary_reconciles_total") or 0.0
    began, count = time.monotonic(), evaluated()
    env.wait("three more analyses", lambda: evaluated() >= count + 3)
    seconds = time.monotonic() - began
    reconciles = (registry.get_sample_value("kserve_canary_reconciles_total") or 0.0) - before
    # An analysis every 3 s takes a few reconciles (asked, answered, status seen); a
    # rollout woken in a loop takes hundreds a second.
    assert reconciles < 10 * seconds, f"{reconciles:.0f} reconciles in {seconds:.1f} s"
    assert registry.get_sample_value("kserve_canary_wakes_held_back_total") == 0.0
    doc = env.wait_phase(Phase.PROGRESSING)
    assert doc.state.step_index == 0
