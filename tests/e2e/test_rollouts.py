"""The controller on the full test bed, in both KServe modes: what a model owner sees.

Every test deploys a fraud model, opts it in, and lets the controller (built exactly as
``canary run`` builds it) drive the rollout against the KServe simulator, the traffic
simulator and real Prometheus, with its state and audit trail in real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from click.testing import CliRunner

from canary.audit import AuditRecord
from canary.cli import main as canary
from canary.model import Phase
from testbed.behaviour import LatencyProfile, ModelBehaviour, Readiness
from tests.e2e.harness import CHECKPOINTS, Env

pytestmark = pytest.mark.e2e

SLOW_MODEL = ModelBehaviour(latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.150))


def _intents_precede_outcomes(records: Sequence[AuditRecord]) -> None:
    """Every traffic write has a committed intent before its outcome, with the same id."""
    intents: dict[str, int] = {}
    for record in records:
        entry = record.entry
        if entry.action == "traffic.intent":
            assert entry.correlation_id
            intents[entry.correlation_id] = record.seq
        elif entry.action in ("traffic.applied", "traffic.failed", "traffic.abandoned"):
            assert entry.correlation_id in intents, f"outcome without intent: {entry}"
            assert intents[entry.correlation_id] < record.seq


def _split(env: Env) -> dict[str, int]:
    doc = env.latest()
    assert doc is not None
    assert doc.state.last_view is not None
    return doc.state.last_view.split


def test_a_healthy_model_is_promoted_step_by_step(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller()

    result = env.command("start", "new fraud model", storage_uri=v2)
    assert result.state == "accepted", result.result

    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.pause_reason or doc.state.outcome
    assert doc.state.canary.storage_uri == v2
    rollout = doc.state.rollout_id

    records = [r for r in env.records() if r.entry.rollout_id == rollout]
    shifted = [dict(r.entry.evidence)["percent"] for r in records
               if r.entry.action == "traffic.shifted"]  # fmt: skip
    assert shifted == [10, 25, 50]  # each step seen in status, in order, once (numbers)
    actions = [r.entry.action for r in records]
    assert actions[0] == "rollout.started"
    assert actions[-1] == "promoted"
    evaluations = [r for r in records if r.entry.action == "analysis.evaluated"]
    assert evaluations
    assert all(r.entry.measurements for r in evaluations)
    _intents_precede_outcomes(env.records())

    # KServe now serves the new model only
    if env.mode == "knative":
        predictor = env.isvc()["spec"]["predictor"]
        assert predictor["model"]["storageUri"] == v2
        assert predictor.get("canaryTrafficPercent", 100) == 100
    else:
        spec = env.isvc()["spec"]
        assert spec["predictor"]["model"]["storageUri"] == v2
        assert not spec.get("canary")
    reasons = env.event_reasons()
    for reason in ("RolloutStarted", "StepAdvanced", "Promoted"):
        assert reason in reasons

    # within seconds of the end, the chain up to the promotion is signed and witnessed
    promoted = next(r.seq for r in records if r.entry.action == "promoted")
    env.wait(
        "a checkpoint of the promotion in the ConfigMap witness",
        lambda: any(c.seq >= promoted for c in env.checkpoints()),
    )
    verified = CliRunner().invoke(
        canary,
        ["audit", "verify", "--database-url", env.database_url,
         "--witness-configmap", f"{env.namespace}/{CHECKPOINTS}",
         "--kubeconfig", str(env.testbed.kubeconfig_path),
         "--public-key", str(env.public_key)],
    )  # fmt: skip
    assert verified.exit_code == 0, verified.output
    assert "audit chain intact" in verified.output
    assert "anchored: record" in verified.output
    assert "TAMPERED" not in verified.output


def test_a_regressed_model_is_rolled_back_automatically(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2", SLOW_MODEL)
    env.create(v1)
    env.start_controller()
    assert env.command("start", "latency regression", storage_uri=v2).state == "accepted"

    doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.ROLLED_BACK, doc.state.pause_reason or doc.state.outcome
    assert "latency-p99" in (doc.state.rollback_reason or "")
    assert doc.state.step_index == 0  # never got past the first step
    failed = [
        m
        for r in env.records()
        if r.entry.action == "analysis.evaluated"
        for m in r.entry.measurements
        if m.verdict == "Failed"
    ]
    assert failed
    assert failed[0].canary_value is not None
    assert failed[0].baseline_value is not None
    assert failed[0].canary_value > failed[0].baseline_value
    stable = doc.state.stable
    assert stable is not None
    env.wait("the stable serving 100%", lambda: _split(env).get(stable.name) == 100)
    assert {"AnalysisFailed", "RolledBack"} <= set(env.event_reasons())
    _intents_precede_outcomes(env.records())


def test_a_revision_that_never_becomes_ready_is_rolled_back(env: Env) -> None:
    v1 = env.model("v1")
    v2 = env.model("v2", ModelBehaviour(readiness=Readiness.NEVER))
    env.create(v1)
    env.start_controller()
    assert env.command("start", "image that never pulls", storage_uri=v2).state == "accepted"

    doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.FAILED)
    assert doc.state.phase is Phase.ROLLED_BACK
    assert "ready" in (doc.state.rollback_reason or "")
    assert "RevisionNotReady" in env.event_reasons()
    assert _split(env).get(doc.state.canary.name, 0) == 0


def test_a_new_model_mid_canary_supersedes_and_restarts_at_the_first_step(env: Env) -> None:
    v1, v2, v3 = env.model("v1"), env.model("v2"), env.model("v3")
    env.create(v1, policy="slow")
    env.start_controller()
    assert env.command("start", "v2", storage_uri=v2).state == "accepted"
    env.wait(
        "v2 at its first step",
        lambda: (d := env.latest()) is not None and d.state.step_reached_at is not None,
    )
    if env.mode == "knative":
        env.patch({"spec": {"predictor": {"model": {"storageUri": v3}}}})
    else:  # GitOps rewrites the canary entry's model
        canary = env.isvc()["spec"]["canary"]
        canary[0]["predictor"]["model"]["storageUri"] = v3
        env.patch({"spec": {"canary": canary}})

    env.wait("a second rollout", lambda: len(env.rollouts()) == 2)
    rows = env.rollouts()
    first = [r for r in rows if r.phase == Phase.SUPERSEDED.value]
    assert len(first) == 1
    second = env.latest()
    assert second is not None
    assert second.state.canary.storage_uri == v3
    assert second.state.step_index == 0
    assert second.state.target_percent == 10
    assert "Superseded" in env.event_reasons()


def test_an_invalid_opt_in_is_reported_and_changes_no_traffic(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="no-such-policy")
    env.start_controller()

    refused = env.command("start", "try it", storage_uri=v2)
    assert refused.state == "rejected"
    assert "no-such-policy" in (refused.result or "")
    assert "fast" in (refused.result or "")  # names the known policies
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == v1

    # a malformed annotation on a service with a new revision: PolicyInvalid, nothing moved
    env.patch({"metadata": {"annotations": {"kserve-canary.io/enabled": "yes"}}})
    env.wait("a PolicyInvalid event", lambda: "PolicyInvalid" in env.event_reasons())
    env.wait("a policy.invalid audit record", lambda: "policy.invalid" in env.actions())
    assert "traffic.intent" not in env.actions()
    assert env.rollouts() == []


def test_manual_commands_are_audited_and_refused_when_they_do_not_fit(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="slow")
    env.start_controller()
    assert env.command("promote", "too early").state == "rejected"  # no rollout yet
    assert env.command("start", "v2", storage_uri=v2).state == "accepted"
    env.wait(
        "v2 at its first step",
        lambda: (d := env.latest()) is not None and d.state.step_reached_at is not None,
    )

    paused = env.command("pause", "investigating an alert", actor="alice")
    assert paused.state == "accepted", paused.result
    again = env.command("pause", "twice", actor="alice")
    assert again.state == "rejected"
    assert "already paused" in (again.result or "")
    resumed = env.command("resume", "alert was noise", actor="bob")
    assert resumed.state == "accepted", resumed.result
    assert env.command("resume", "again", actor="bob").state == "rejected"
    promoted = env.command("promote", "business sign-off", actor="carol")
    assert promoted.state == "accepted", promoted.result
    doc = env.wait_phase(Phase.SUCCEEDED)
    late = env.command("abort", "too late", actor="dave")
    assert late.state == "rejected"

    humans = [(r.entry.action, r.entry.actor.id) for r in env.records()
              if r.entry.actor.kind == "human"]  # fmt: skip
    assert ("manual.pause", "alice") in humans
    assert ("manual.rejected", "alice") in humans
    assert ("manual.resume", "bob") in humans
    assert ("manual.promote", "carol") in humans
    assert ("manual.rejected", "dave") in humans
    assert {"Paused", "Resumed", "Promoted"} <= set(env.event_reasons())

    # a second rollout, aborted by a human
    v3 = env.model("v3")
    assert env.command("start", "v3", storage_uri=v3).state == "accepted"
    env.wait("a second rollout", lambda: len(env.rollouts()) == 2)
    env.wait(
        "v3 at its first step",
        lambda: (d := env.latest()) is not None and d.state.step_reached_at is not None,
    )
    assert env.command("abort", "wrong model", actor="erin").state == "accepted"
    doc = env.wait_phase(Phase.ABORTED)
    assert doc.state.aborted_by == "erin"
    assert _split(env).get(doc.state.canary.name, 0) == 0


@pytest.mark.parametrize("env", ["knative"], indirect=True)
def test_a_gitops_model_change_is_held_to_the_first_step_by_the_webhook(env: Env) -> None:
    """kubectl apply / a GitOps sync changes the model without any percent. Without the
    webhook KServe would send 100% to the new revision once ready; with it the stored
    object carries the first step, and the controller takes it from there."""
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller(webhook=True)

    env.patch({"spec": {"predictor": {"model": {"storageUri": v2}}}})  # no percent at all
    stored = env.isvc()["spec"]["predictor"]
    assert stored["canaryTrafficPercent"] == 10  # set by the webhook in the same write
    assert stored["model"]["storageUri"] == v2

    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.pause_reason or doc.state.outcome
    mine = [r.entry for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    shifted = [int(str(dict(e.evidence)["percent"])) for e in mine
               if e.action == "traffic.shifted"]  # fmt: skip
    assert shifted == [10, 25, 50]
    # the first step was already in the spec: the controller wrote no "start" traffic
    assert not any(
        e.action == "traffic.intent" and dict(e.evidence).get("purpose") == "start" for e in mine
    )
