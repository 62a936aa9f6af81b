"""Shadow mirroring on the full test bed: the controller writes its own Istio VirtualService
or Gateway API HTTPRoute, the test bed mirrors live traffic the way the mesh would for that
object (testbed.mirror), the challenger's copies are compared with the champion, the result
gates the canary, and the mirror object is gone afterwards whatever the ending: checked by
listing the objects on the apiserver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from canary.engine import RolloutDocument
from canary.k8s.client import HTTP_ROUTE, INFERENCE_SERVICE, VIRTUAL_SERVICE, ResourceKind
from canary.model import Phase
from canary.routing.mirror import OWNED_SELECTOR, mirror_object_name
from testbed.behaviour import BusinessProfile, ModelBehaviour
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

SHADOW_POLICY = """
name: shadow
steps: [10, 50, 100]
stepHold: 4s
analysisInterval: 1s
revisionReadyTimeout: 20s
trafficTimeout: 20s
maxStepDuration: 90s
checks:{errors}
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 1.0
    minSamples: 100
shadow:
  enabled: true
  mirrorPercent: 20
  duration: {duration}
  timeout: {timeout}
  minSamples: 200
  after: {after}{outputs}
"""
ERROR_RATE_CHECK = """
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200"""

TERMINAL = (Phase.SUCCEEDED, Phase.REJECTED, Phase.REPORTED, Phase.FAILED, Phase.ABORTED)
FAILING = ModelBehaviour(error_rate=0.4)  # over the default 20 % ceiling


def policy(
    env: Env,
    after: str = "gate",
    duration: str = "8s",
    errors: bool = True,
    agreement: float | None = None,
    score_shift: float | None = None,
) -> str:
    timeout = "80s" if duration == "8s" else "30m"
    outputs = "".join(
        f"\n  {key}: {value}"
        for key, value in (("minAgreement", agreement), ("maxScoreShift", score_shift))
        if value is not None
    )
    text = SHADOW_POLICY.format(
        after=after,
        duration=duration,
        timeout=timeout,
        errors=ERROR_RATE_CHECK if errors else "",
        outputs=outputs,
    )
    (env.policy_dir / "shadow.yaml").write_text(text)
    return "shadow"


def resource(mirror: str) -> ResourceKind:
    return VIRTUAL_SERVICE if mirror == "istio" else HTTP_ROUTE


def mirror_objects(env: Env, mirror: str) -> list[dict[str, Any]]:
    """Every mirror object of ours in the test's namespace, of either kind."""
    found: list[dict[str, Any]] = []
    for kind in (VIRTUAL_SERVICE, HTTP_ROUTE):
        items, _ = env.kube.list(kind, env.namespace, label_selector=OWNED_SELECTOR)
        found.extend(items)
    return found


def create_challenger(env: Env, name: str, uri: str) -> None:
    """A plain InferenceService (not opted in) that receives no traffic of its own."""
    book = env.testbed.behaviour().with_rate(env.namespace, name, 0.0)
    env.testbed.set_behaviour(book)
    annotations = {"serving.kserve.io/deploymentMode": "Standard"} if env.mode == "standard" else {}
    env.kube.create(
        INFERENCE_SERVICE,
        env.namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "predictor": {
                    "minReplicas": 1,
                    "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri},
                }
            },
        },
    )


def shadows(env: Env) -> list[RolloutDocument]:
    return [
        doc
        for doc in (RolloutDocument.from_row(r) for r in env.rollouts())
        if doc.state.challenger is not None
    ]


def wait_shadow(env: Env, check: Callable[[RolloutDocument], bool], what: str) -> RolloutDocument:
    env.wait(what, lambda: any(check(d) for d in shadows(env)))
    return next(d for d in shadows(env) if check(d))


def shadow_ended(env: Env) -> RolloutDocument:
    return wait_shadow(env, lambda d: d.state.phase in TERMINAL, "the shadow to end")


def assert_no_mirror(env: Env, mirror: str) -> None:
    env.wait("the mirror object to be removed", lambda: not mirror_objects(env, mirror))


def challenger_setup(env: Env, mirror: str, challenger_model: ModelBehaviour | None = None,
                     **policy_args: Any) -> tuple[str, str, str]:  # fmt: skip
    v1 = env.model("v1")
    v2 = env.uri("v2")
    book = env.testbed.behaviour().with_model(v2, challenger_model or ModelBehaviour())
    env.testbed.set_behaviour(book)
    challenger = f"{env.name}-next"
    create_challenger(env, challenger, v2)
    name = policy(env, **policy_args)
    env.create(v1, policy=name, extra={"kserve-canary.io/challenger": challenger})
    env.start_controller(shadow_mirror=mirror)
    return v1, v2, challenger


@pytest.mark.parametrize("mirror", ["istio", "gateway-api"])
def test_an_agreeing_challenger_is_mirrored_then_its_model_s_canary_runs_and_the_mirror_is_gone(
    env: Env, mirror: str
) -> None:
    v1, v2, challenger = challenger_setup(env, mirror, agreement=0.9, score_shift=0.25)

    # our object, with the policy's share, from the champion's Service to the challenger's pods
    env.wait("the mirror object", lambda: bool(mirror_objects(env, mirror)))
    (obj,) = mirror_objects(env, mirror)
    assert obj["kind"] == ("VirtualService" if mirror == "istio" else "HTTPRoute")
    assert obj["metadata"]["name"] == mirror_object_name(env.name)
    labels = obj["metadata"]["labels"]
    assert labels["kserve-canary.io/champion"] == env.name
    assert labels["kserve-canary.io/challenger"] == challenger
    assert obj["metadata"]["ownerReferences"][0]["uid"] == env.isvc()["metadata"]["uid"]
    shadow = wait_shadow(env, lambda d: d.state.phase is Phase.SHADOWING, "shadowing")
    revision = shadow.state.canary.name
    target = f"{revision}-private" if env.mode == "knative" else revision
    if mirror == "istio":
        (rule,) = obj["spec"]["http"]
        assert rule["mirrorPercentage"] == {"value": 20.0}
        assert rule["mirror"]["host"] == f"{target}.{env.namespace}.svc.cluster.local"
        assert rule["route"][0]["destination"]["host"].startswith(f"{env.name}-predictor.")
    else:
        (rule,) = obj["spec"]["rules"]
        (mirroring,) = rule["filters"]
        assert mirroring["requestMirror"]["percent"] == 20
        assert mirroring["requestMirror"]["backendRef"]["name"] == target
        assert rule["backendRefs"][0]["name"] == f"{env.name}-predictor"

    # while shadowing, the champion's live traffic is not touched
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == v1

    ended = shadow_ended(env)
    assert ended.state.phase is Phase.SUCCEEDED, ended.state.outcome
    assert_no_mirror(env, mirror)

    # the comparison gated the canary of the challenger's model on the champion
    canary = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, count=2)
    assert canary.state.phase is Phase.SUCCEEDED, canary.state.outcome
    assert canary.state.canary.storage_uri == v2
    assert canary.state.shadowed_by == ended.state.rollout_id
    assert Phase.SHADOWING not in canary.state.history, "no second shadow"

    # the evidence: shadow checks with the challenger's and the champion's samples
    with env.store() as store:
        measured = [m.measurement for m in store.measurements_for(ended.state.rollout_id)]
    names = {m.check for m in measured}
    assert {"shadow-error-rate", "shadow-latency-p99", "shadow-decision-agreement",
            "shadow-score-shift"} <= names  # fmt: skip
    agreed = [
        m for m in measured if m.check == "shadow-decision-agreement" and m.verdict == "Successful"
    ]
    assert agreed, "the agreement passed on paired answers"
    assert (agreed[-1].canary_samples or 0) >= 200, "pairs counted"
    assert (agreed[-1].canary_value or 0) >= 0.9, "the agreement rate is the evidence"
    shifted = [m for m in measured if m.check == "shadow-score-shift" and m.verdict == "Successful"]
    assert shifted
    assert (shifted[-1].canary_samples or 0) >= 200
    passing = [m for m in measured if m.check == "shadow-error-rate" and m.verdict == "Successful"]
    assert passing
    assert (passing[-1].canary_samples or 0) >= 200
    assert (passing[-1].baseline_samples or 0) > 0
    actions = env.actions(ended.state.rollout_id)
    for expected in ("shadow.challenger_detected", "shadow.started", "mirror.applied",
                     "analysis.evaluated", "shadow.passed", "mirror.removed"):  # fmt: skip
        assert expected in actions, actions
    assert "traffic.intent" in env.actions(ended.state.rollout_id), "the start write's intent"


def test_a_challenger_over_the_ceiling_is_rejected_and_never_reaches_the_champion(env: Env) -> None:
    mirror = "gateway-api" if env.mode == "standard" else "istio"
    # only the ceiling watches errors here: the comparison's own checks see latency alone
    v1, _, _ = challenger_setup(env, mirror, FAILING, errors=False)
    ended = shadow_ended(env)
    assert ended.state.phase is Phase.REJECTED, ended.state.outcome
    assert "ceiling" in (ended.state.outcome or "")
    assert_no_mirror(env, mirror)
    assert "ShadowStopped" in env.event_reasons()
    # nothing rolled out: the champion still runs its model, and no canary started
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == v1
    assert len(env.rollouts()) == 1
    assert "traffic.intent" not in env.actions()


def test_a_challenger_that_decides_differently_is_rejected_on_agreement(env: Env) -> None:
    mirror = "istio" if env.mode == "standard" else "gateway-api"
    # declines 30 % of legitimate requests where the champion declines 2 %: about a quarter of
    # the same requests decided differently, with latency and errors like the champion's
    divergent = ModelBehaviour(business=BusinessProfile(false_positive_rate=0.3))
    v1, _, _ = challenger_setup(env, mirror, divergent, agreement=0.95)
    ended = shadow_ended(env)
    assert ended.state.phase is Phase.REJECTED, ended.state.outcome
    assert "decision-agreement" in (ended.state.outcome or ""), ended.state.outcome
    assert_no_mirror(env, mirror)
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == v1
    assert len(env.rollouts()) == 1, "no canary follows a rejected challenger"
    with env.store() as store:
        measured = [m.measurement for m in store.measurements_for(ended.state.rollout_id)]
    failed = [
        m for m in measured if m.check == "shadow-decision-agreement" and m.verdict == "Failed"
    ]
    assert failed
    assert (failed[-1].canary_value or 1.0) < 0.95
    assert (failed[-1].canary_samples or 0) > 0


def test_a_divergent_challenger_under_report_is_recorded_and_nothing_rolls_out(env: Env) -> None:
    mirror = "istio" if env.mode == "standard" else "gateway-api"
    slow = ModelBehaviour(business=BusinessProfile(decision_noise=0.5))
    slow = slow.model_copy(update={"latency": slow.latency.model_copy(
        update={"median_seconds": 0.08, "p99_seconds": 0.3})})  # fmt: skip
    v1, _, _ = challenger_setup(env, mirror, slow, after="report")
    ended = shadow_ended(env)
    assert ended.state.phase is Phase.REPORTED, ended.state.outcome
    assert "failed" in (ended.state.outcome or ""), ended.state.outcome
    assert_no_mirror(env, mirror)
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == v1
    assert len(env.rollouts()) == 1


def test_the_mirror_is_removed_on_abort_on_deletion_and_after_a_restart(env: Env) -> None:
    mirror = "istio" if env.mode == "knative" else "gateway-api"
    # a long shadow: nothing ends it but us
    _, _, challenger = challenger_setup(env, mirror, duration="10m")
    env.wait("the mirror object", lambda: bool(mirror_objects(env, mirror)))
    first = wait_shadow(env, lambda d: d.state.phase is Phase.SHADOWING, "shadowing")

    # abort: removed
    aborted = env.command("abort", "wrong challenger")
    assert aborted.state == "accepted", aborted.result
    assert_no_mirror(env, mirror)
    assert shadow_ended(env).state.phase is Phase.ABORTED

    # a left-behind object (a crash between the end and the removal) is swept at takeover
    assert env.app is not None
    env.app.stop()
    env.app = None
    metadata = {
        "name": mirror_object_name(env.name),
        "namespace": env.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "kserve-canary",
            "kserve-canary.io/purpose": "shadow",
            "kserve-canary.io/champion": env.name,
            "kserve-canary.io/challenger": challenger,
            "kserve-canary.io/rollout-id": first.state.rollout_id,
        },
    }
    source = f"{env.name}-predictor"
    if mirror == "istio":
        leftover = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": metadata,
            "spec": {
                "hosts": [f"{source}.{env.namespace}.svc.cluster.local"],
                "http": [
                    {
                        "route": [{"destination": {"host": "x"}}],
                        "mirror": {"host": "y"},
                        "mirrorPercentage": {"value": 100.0},
                    }
                ],
            },
        }
    else:
        leftover = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": metadata,
            "spec": {
                "rules": [
                    {
                        "backendRefs": [{"name": source, "port": 80}],
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": {"name": "elsewhere", "port": 80},
                                    "percent": 100,
                                },
                            }
                        ],
                    }
                ]
            },
        }
    env.kube.create(resource(mirror), env.namespace, leftover)
    app = env.start_controller(shadow_mirror=mirror)
    assert_no_mirror(env, mirror)
    assert "mirror.removed" in env.actions(first.state.rollout_id)

    # a controller stopped mid-shadow: the object stays while it is down, and the shadow
    # goes on with it when it is back (a new model of the challenger starts a new shadow)
    env.kube.patch(
        INFERENCE_SERVICE, env.namespace, challenger,
        {"spec": {"predictor": {"model": {"storageUri": env.uri("v2b")}}}},
    )  # fmt: skip
    second = wait_shadow(
        env,
        lambda d: d.state.phase is Phase.SHADOWING and d.state.rollout_id != first.state.rollout_id,
        "a second shadow",
    )
    env.wait("the mirror object", lambda: bool(mirror_objects(env, mirror)))
    app.stop()
    env.app = None
    assert mirror_objects(env, mirror), "nobody removes it while no controller runs"
    env.start_controller(shadow_mirror=mirror, identity="replica-b")
    env.wait(
        "the restarted controller to keep shadowing",
        lambda: (
            any(
                d.state.rollout_id == second.state.rollout_id and d.state.phase is Phase.SHADOWING
                for d in shadows(env)
            )
            and bool(mirror_objects(env, mirror))
        ),
    )

    # the champion deleted: the shadow fails and the object goes
    env.kube.delete(INFERENCE_SERVICE, env.namespace, env.name)
    assert_no_mirror(env, mirror)
    ended = wait_shadow(
        env,
        lambda d: d.state.rollout_id == second.state.rollout_id and d.state.terminal,
        "the second shadow to end",
    )
    assert ended.state.phase is Phase.FAILED


def test_a_dark_launch_mirrors_to_the_canary_entry_then_the_canary_steps_start(
    standard_env: Env,
) -> None:
    env = standard_env
    mirror = "gateway-api"
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy=policy(env))
    env.start_controller(shadow_mirror=mirror)
    started = env.command("start", "new fraud model, shadow first", storage_uri=v2)
    assert started.state == "accepted", started.result
    env.wait("the mirror object", lambda: bool(mirror_objects(env, mirror)))
    (obj,) = mirror_objects(env, mirror)
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.SHADOWING
    (rule,) = obj["spec"]["rules"]
    assert rule["filters"][0]["requestMirror"]["backendRef"]["name"] == doc.state.canary.name
    assert doc.state.target_percent == 0, "no live traffic while shadowing"
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED)
    assert done.state.phase is Phase.SUCCEEDED, done.state.outcome
    assert list(done.state.history)[:3] == ["Pending", "Shadowing", "Progressing"]
    assert_no_mirror(env, mirror)
