"""Evidence ages: a verdict taken before the controller went away says nothing about the
canary now.

A canary passes its analysis at 10 % and waits for a change freeze to end; the controller
stops as if it crashed (its Lease left to expire), the canary turns bad
while nobody watches, and the freeze ends.
When a controller comes back, the old passing verdict is past the analysis interval: it
must evaluate again before it decides, and so roll the canary back instead of promoting it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from canary.model import Phase, Verdict
from testbed.behaviour import LatencyProfile, ModelBehaviour
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

FREEZE_SECONDS = 90  # room for a loaded machine to reach the first step's evidence (60 was
# too little once under the whole suite: the passing verdict came 57 s after the start)


def restart_policy(freeze_end: datetime) -> str:
    """Steps 10 and 100 behind a change freeze that ends at ``freeze_end``: the canary
    passes its analysis at 10 % and waits for the freeze, with a passing verdict in hand."""
    start = (freeze_end - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = freeze_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""
name: restart
steps: [10, 100]
stepHold: 4s
analysisInterval: 1s
revisionReadyTimeout: 15s
trafficTimeout: 20s
maxStepDuration: 300s
schedule:
  freezes:
    - start: "{start}"
      end: "{end}"
      reason: e2e
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 1.0
    minSamples: 100
"""


TURNED_BAD = ModelBehaviour(
    error_rate=0.30, latency=LatencyProfile(median_seconds=0.150, p99_seconds=0.400)
)


def test_a_canary_that_turns_bad_while_the_controller_is_away_is_rolled_back(
    knative_env: Env,
) -> None:
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="restart")
    freeze_end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=FREEZE_SECONDS)
    (env.policy_dir / "restart.yaml").write_text(restart_policy(freeze_end), encoding="utf-8")
    first = env.start_controller()
    assert env.command("start", "a model that goes bad later", storage_uri=v2).state == "accepted"

    def passing() -> bool:
        doc = env.latest()
        verdict = doc.state.last_verdict if doc else None
        return (
            doc is not None
            and doc.state.phase is Phase.PROGRESSING
            and doc.state.step_reached_at is not None
            and verdict is not None
            and verdict.verdict is Verdict.SUCCESSFUL
            and verdict.sufficient_data
            and "freeze" in (doc.state.waiting_for or "")
        )

    env.wait("a passing verdict at 10 %, waiting for the freeze to end", passing)
    assert datetime.now(UTC) < freeze_end - timedelta(seconds=5), "the freeze ended too early"

    # The controller goes away during the freeze; then the canary turns bad.
    first.controller.stop(release=False)  # its Lease is left to expire, as after a crash
    first.server.stop()
    first.store.close()
    first.kube.close()
    env.app = None
    env.model("v2", TURNED_BAD)
    while datetime.now(UTC) < freeze_end + timedelta(seconds=4):
        time.sleep(0.2)  # the freeze is over and Prometheus holds seconds of bad data

    back_at = datetime.now(UTC)
    env.start_controller()
    doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED)
    records = [r for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    story = "\n".join(
        f"{r.entry.at.time()} {r.entry.action} {(r.entry.reason or '')[:150]}" for r in records
    )
    assert doc.state.phase is Phase.ROLLED_BACK, f"back at {back_at.time()}:\n{story}"

    after = [r.entry for r in records if r.entry.at >= back_at]
    actions = [e.action for e in after]
    assert "promoted" not in actions
    percents = [str(e.evidence.get("percent")) for e in after if e.action == "traffic.intent"]
    assert "100" not in percents, percents
    # The first thing decided after the restart is a new evaluation of the canary.
    decisions = [a for a in actions if a in {"analysis.evaluated", "rollout.rolling_back"}]
    assert decisions[:1] == ["analysis.evaluated"], actions
    evaluated = next(e for e in after if e.action == "analysis.evaluated")
    assert evaluated.evidence.get("verdict") == "Failed", evaluated.reason
