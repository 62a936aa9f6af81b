"""After a rollout ends, opt-out, and GitOps canaries, on the full test bed: what an operator
who edits the InferenceService by hand, or a model owner who opts out, sees happen."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from canary import aftercare
from canary.audit import AuditRecord
from canary.engine import mode_of
from canary.k8s.client import CONTROLLER_MANAGER, INFERENCE_SERVICE, KubeError
from canary.model import Phase
from canary.ops import status_lines
from canary.routing.knative import observed_from
from testbed.behaviour import LatencyProfile, ModelBehaviour
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

SLOW_MODEL = ModelBehaviour(latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.150))


def _intents_precede_outcomes(records: Sequence[AuditRecord]) -> None:
    intents: dict[str, int] = {}
    for record in records:
        entry = record.entry
        if entry.action == "traffic.intent":
            assert entry.correlation_id
            intents[entry.correlation_id] = record.seq
        elif entry.action in ("traffic.applied", "traffic.failed", "traffic.abandoned"):
            assert entry.correlation_id in intents, f"outcome without intent: {entry}"
            assert intents[entry.correlation_id] < record.seq


def _status(env: Env) -> str:
    with env.store() as store:
        (line,) = status_lines(store, namespace=env.namespace, name=env.name)
    return f"{line.phase} {line.next_action}"


def _rolled_back(env: Env) -> str:
    """v2 regresses and is rolled back; returns the rolled-back revision's name."""
    v1, v2 = env.model("v1"), env.model("v2", SLOW_MODEL)
    env.create(v1)
    env.start_controller()
    assert env.command("start", "latency regression", storage_uri=v2).state == "accepted"
    doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.ROLLED_BACK, doc.state.outcome
    return doc.state.canary.name


def test_traffic_given_back_to_a_rolled_back_model_is_reverted_and_recorded(env: Env) -> None:
    bad = _rolled_back(env)
    v2 = env.uri("v2")
    if env.mode == "knative":  # the operator clears the percent: 100 % to the bad model
        env.patch({"spec": {"predictor": {"canaryTrafficPercent": None}}}, field_manager="ops-bob")
    else:  # the operator puts the rolled-back canary entry back
        entry = {
            "predictor": {
                "name": "canary",
                "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                          "storageUri": v2},
            },
            "trafficPercent": 50,
        }  # fmt: skip
        env.patch({"spec": {"canary": [entry]}}, field_manager="ops-bob")

    doc = env.wait_phase(Phase.DRIFT_REVERTED)

    # The phase is committed with the revert's intent; the write follows it (and is retried
    # when it races the operator's own write: a 409 on its resourceVersion guard).
    def reverted() -> bool:
        spec = env.isvc()["spec"]
        if env.mode == "knative":
            return bool(spec["predictor"].get("canaryTrafficPercent") == 0)
        return not spec.get("canary")

    env.wait("the revert written", reverted, deadline=15)
    mine = [r for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    actions = [r.entry.action for r in mine]
    drift = actions.index("traffic.drift")
    assert actions[drift + 1 :][:2] == ["traffic.intent", "traffic.applied"]
    record = mine[drift].entry
    assert dict(record.evidence)["revision"] == bad
    if env.mode == "standard":  # who added the entry is in managedFields
        assert (record.actor.kind, record.actor.id) == ("human", "ops-bob")
    else:  # a removed field belongs to no manager: never guessed
        assert record.actor.kind in ("human", "unknown")
    assert "TrafficDrift" in env.event_reasons()
    assert "DriftReverted" in _status(env)
    _intents_precede_outcomes(env.records())
    env.wait("the rolled-back model serving nothing", lambda: _no_share(env, bad))


def _stable_serves_all(env: Env, stable: str) -> bool:
    isvc = env.isvc()
    if mode_of(isvc) == "knative":
        view = observed_from(isvc).view
        return view.converged and view.share(stable) == 100
    return not isvc["spec"].get("canary")


def _no_share(env: Env, revision: str) -> bool:
    isvc = env.isvc()
    if mode_of(isvc) == "knative":
        return observed_from(isvc).view.share(revision) == 0
    return not isvc["spec"].get("canary")


def test_a_hand_rollback_after_a_promotion_is_recorded_with_its_manager(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller()
    assert env.command("start", "new model", storage_uri=v2).state == "accepted"
    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.outcome

    if env.mode == "knative":  # KServe falls back to the previous rollout
        # the promotion's write is the controller's by name, not the client library's
        owner = aftercare.field_manager(env.isvc(), aftercare.traffic_fields("knative"))
        assert owner.manager == CONTROLLER_MANAGER
        env.patch({"spec": {"predictor": {"canaryTrafficPercent": 0}}}, field_manager="ops-carol")
    else:  # no webhook here: the stable model is put back by hand
        env.patch({"spec": {"predictor": {"model": {"storageUri": v1}}}}, field_manager="ops-carol")

    doc = env.wait_phase(Phase.MANUALLY_ROLLED_BACK)
    (manual,) = [r.entry for r in env.records() if r.entry.action == "traffic.manual_rollback"]
    assert (manual.actor.kind, manual.actor.id) == ("human", "ops-carol")
    assert "ManualRollback" in env.event_reasons()
    status = _status(env)
    assert "ManuallyRolledBack" in status
    assert "ops-carol" in status
    # recorded, not undone: what the human set stays
    predictor = env.isvc()["spec"]["predictor"]
    if env.mode == "knative":
        assert predictor["canaryTrafficPercent"] == 0
    else:
        assert predictor["model"]["storageUri"] == v1
    actions = [r.entry.action for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    after = actions[actions.index("traffic.manual_rollback") :]
    assert "traffic.intent" not in after  # nothing written back


def test_opting_out_mid_rollout_returns_traffic_to_the_stable_and_stops(env: Env) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="slow")
    env.start_controller()
    assert env.command("start", "v2", storage_uri=v2).state == "accepted"
    env.wait(
        "v2 at its first step",
        lambda: (d := env.latest()) is not None and d.state.step_reached_at is not None,
    )

    env.patch(
        {"metadata": {"annotations": {"kserve-canary.io/enabled": "false"}}},
        field_manager="owner-dave",
    )

    doc = env.wait_phase(Phase.OPTED_OUT)
    assert doc.state.stable is not None
    stable = doc.state.stable.name
    env.wait("the stable serving 100 %", lambda: _stable_serves_all(env, stable))
    mine = [r.entry for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    (opt_out,) = [e for e in mine if e.action == "manual.opt_out"]
    assert (opt_out.actor.kind, opt_out.actor.id) == ("human", "owner-dave")
    assert "rollout.opted_out" in [e.action for e in mine]
    assert "OptedOut" in env.event_reasons()
    assert "OptedOut" in _status(env)
    _intents_precede_outcomes(env.records())

    if env.mode == "knative":  # no longer managed: a later change is left alone
        before = len(env.records())
        env.patch({"spec": {"predictor": {"canaryTrafficPercent": 30}}})
        env.wait("KServe at 30 %", lambda: observed_from(env.isvc()).view.share(stable) == 70)
        assert env.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 30
        assert len(env.records()) == before
        assert len(env.rollouts()) == 1


@pytest.mark.parametrize("env", ["standard"], indirect=True)
def test_a_gitops_canary_entry_gets_its_route_and_is_promoted(env: Env) -> None:
    """Standard mode: a GitOps sync adds the canary entry itself (no percent); the webhook
    caps it at the first step and the controller writes the HTTPRoute that routes it."""
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller(webhook=True)
    entry = {
        "predictor": {
            "name": "canary",
            "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                      "storageUri": v2},
        }
    }  # fmt: skip
    env.patch({"spec": {"canary": [entry]}})
    assert env.isvc()["spec"]["canary"][0]["trafficPercent"] == 10  # capped by the webhook

    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.pause_reason or doc.state.outcome
    mine = [r.entry for r in env.records() if r.entry.rollout_id == doc.state.rollout_id]
    shifted = [int(str(dict(e.evidence)["percent"])) for e in mine
               if e.action == "traffic.shifted"]  # fmt: skip
    assert shifted == [10, 25, 50]
    starts = [e for e in mine if e.action == "traffic.intent"
              and dict(e.evidence).get("purpose") == "start"]  # fmt: skip
    assert len(starts) == 1  # the route for the GitOps canary was written by the controller
    assert any(e.action == "analysis.evaluated" for e in mine)
    spec = env.isvc()["spec"]
    assert spec["predictor"]["model"]["storageUri"] == v2
    assert not spec.get("canary")
    _intents_precede_outcomes(env.records())


@pytest.mark.parametrize("env", ["knative"], indirect=True)
@pytest.mark.parametrize("value", ["yes", "True"])
def test_an_opt_in_that_is_not_a_boolean_is_denied_by_the_webhook(env: Env, value: str) -> None:
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    env.start_controller(webhook=True)
    with pytest.raises(KubeError) as caught:
        env.kube.patch(
            INFERENCE_SERVICE,
            env.namespace,
            env.name,
            {
                "metadata": {"annotations": {"kserve-canary.io/enabled": value}},
                "spec": {"predictor": {"model": {"storageUri": v2}}},
            },
        )
    assert caught.value.status == 403
    assert f"kserve-canary.io/enabled: got {value!r}" in caught.value.message
    assert '"true" or "false"' in caught.value.message
    stored = env.isvc()
    assert stored["spec"]["predictor"]["model"]["storageUri"] == v1
    assert stored["metadata"]["annotations"]["kserve-canary.io/enabled"] == "true"
    assert env.rollouts() == []
