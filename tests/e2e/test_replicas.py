"""Two replicas: exactly one mutates; killing the leader hands over within the Lease
duration (plus one follower poll), and the rollout finishes with no double action."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from canary.model import Phase
from tests.e2e.harness import LEASE_SECONDS, Env, Replica

pytestmark = pytest.mark.e2e

FOLLOWER_POLL = 0.5  # how often a follower asks for the Lease (canary.controller)


def _wait_metric(replica: Replica, value: float, deadline: float = 30.0) -> float:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if replica.metric("kserve_canary_leader") == value:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{replica.identity}: leader metric never became {value}")


@pytest.mark.parametrize("env", ["knative"], indirect=True)
def test_one_leader_acts_and_a_killed_leader_is_replaced_without_double_action(
    env: Env, tmp_path: Path
) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    a = env.spawn("replica-a", tmp_path / "logs")
    _wait_metric(a, 1.0)
    b = env.spawn("replica-b", tmp_path / "logs")
    _wait_metric(b, 0.0)  # up, serving, and not leading

    assert env.command("start", "two replicas", storage_uri=v2).state == "accepted"
    env.wait(
        "the second step",
        lambda: (
            (d := env.latest()) is not None
            and d.state.step_index >= 1
            and d.state.step_reached_at is not None
        ),
    )
    assert b.metric("kserve_canary_leader") == 0.0
    before_kill = {r.entry.actor.id for r in env.records() if r.entry.actor.kind == "controller"}
    assert before_kill == {"replica-a"}  # only the leader wrote anything

    killed_at = time.monotonic()
    a.kill()
    took_over = _wait_metric(b, 1.0, deadline=LEASE_SECONDS + 10)
    handover = took_over - killed_at
    assert handover <= LEASE_SECONDS + FOLLOWER_POLL + 1.0, handover

    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.outcome
    records = [r for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    writers = [r.entry.actor.id for r in records if r.entry.actor.kind == "controller"]
    # a's records all come before b's: never both acting at once
    assert "replica-b" in writers
    first_b = writers.index("replica-b")
    assert set(writers[first_b:]) == {"replica-b"}
    epochs_a = {r.entry.leader_epoch for r in records if r.entry.actor.id == "replica-a"}
    epochs_b = {r.entry.leader_epoch for r in records if r.entry.actor.id == "replica-b"}
    assert max(e or 0 for e in epochs_a) < min(e or 0 for e in epochs_b)
    shifted = [int(str(dict(r.entry.evidence)["percent"])) for r in records
               if r.entry.action == "traffic.shifted"]  # fmt: skip
    assert shifted == [10, 25, 50]
    with env.store() as store:
        assert store.verify().ok
