"""KServe v0.20.0 in Standard (RawDeployment) mode with ``spec.canary[]`` (KSERVE.md §2).

A :class:`Std` driver alternates KServe reconciles with Deployment-controller steps at an
injected clock, writing the status only when it changes. Pods take 20 s to become ready
unless the behaviour book says otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from testbed.behaviour import BehaviourBook, ModelBehaviour, Readiness
from testbed.kserve import standard
from testbed.kserve.standard import (
    StandardWorld,
    build_canary_predictor,
    canary_replica_count,
    stable_min_replicas,
    validate,
)
from testbed.kserve.status import canonical
from testbed.kserve.template import KServeConfig, RoutingMode

T0 = 1_800_000_000.0
V1, V2, V3, BAD = "s3://models/v1", "s3://models/v2", "s3://models/v3", "s3://models/bad"
MODE = {"serving.kserve.io/deploymentMode": "Standard"}


def model(uri: str) -> dict[str, Any]:
    return {"modelFormat": {"name": "sklearn"}, "storageUri": uri}


def canary(name: str, percent: int, uri: str = V2, **extra: Any) -> dict[str, Any]:
    return {"predictor": {"name": name, "model": model(uri), **extra}, "trafficPercent": percent}


def book() -> BehaviourBook:
    base = BehaviourBook(default=ModelBehaviour(ready_after_seconds=20))
    return base.with_model(BAD, ModelBehaviour(readiness=Readiness.CRASH_LOOP))


class Std:
    def __init__(
        self, routing: RoutingMode = "v0.20", behaviour: BehaviourBook | None = None
    ) -> None:
        self.config = KServeConfig(standard_routing=routing)
        self.book = behaviour or book()
        self.world = StandardWorld()
        self.now = T0
        self.isvc: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []

    def create(
        self,
        min_replicas: int | None = None,
        canaries: list[dict[str, Any]] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Std:
        predictor: dict[str, Any] = {"model": model(V1)}
        if min_replicas is not None:
            predictor["minReplicas"] = min_replicas
        spec: dict[str, Any] = {"predictor": predictor}
        if canaries is not None:
            spec["canary"] = canaries
        self.isvc = {
            "metadata": {
                "name": "m",
                "namespace": "ns",
                "generation": 1,
                "annotations": {**MODE, **(annotations or {})},
            },
            "spec": spec,
        }
        return self

    def edit(self, change: Callable[[dict[str, Any]], None]) -> Std:
        change(self.isvc["spec"])
        self.isvc["metadata"]["generation"] += 1
        return self

    def settle(self) -> Std:
        for _ in range(200):
            assert validate(self.isvc, config=self.config) == []
            self.world, status = standard.reconcile_isvc(
                self.world, self.isvc, self.now, self.config
            )
            if status is not None and canonical(status) != canonical(self.isvc.get("status")):
                self.isvc["status"] = status
                self.writes.append(copy.deepcopy(status))
                continue
            stepped = standard.deployment_step(self.world, self.book, self.now, self.config)
            if stepped is self.world:
                return self
            self.world = stepped
        raise AssertionError("no fixpoint")

    def advance(self, seconds: float) -> Std:
        self.now += seconds
        return self.settle()

    # --- views -----------------------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.isvc.get("status", {})
        return result

    def replicas(self) -> dict[str, int]:
        return {name: d.replicas for name, d in sorted(self.world.deployments.items())}

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions", []) if c["type"] == kind), None)

    def state(self, kind: str) -> str | None:
        c = self.condition(kind)
        return None if c is None else f"{c['status']}/{c.get('reason', '')}"

    def canary_ready(self) -> list[bool]:
        return [bool(c["ready"]) for c in self.status.get("canaryStatuses", [])]

    def split(self) -> list[tuple[str, int]]:
        return [(t, p) for t, p, _ in standard.effective_split(self.world)]


NONE_CLASS = {"serving.kserve.io/autoscalerClass": "none"}


# --- replica sizing (§2.3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_replicas", "canaries", "want"),
    [
        (4, [canary("v2", 25)], {"m-predictor": 3, "m-v2-predictor": 1}),
        (4, [canary("v2", 50)], {"m-predictor": 2, "m-v2-predictor": 2}),
        (
            4,
            [canary("a", 25), canary("b", 25, V3)],
            {"m-predictor": 2, "m-a-predictor": 1, "m-b-predictor": 1},
        ),
        (4, [], {"m-predictor": 4}),
        (4, [canary("v2", 10)], {"m-predictor": 3, "m-v2-predictor": 1}),
        (4, [canary("v2", 100)], {"m-predictor": 1, "m-v2-predictor": 4}),
        (4, [canary("v2", 25, minReplicas=2)], {"m-predictor": 2, "m-v2-predictor": 2}),
        (4, [canary("v2", 0)], {"m-predictor": 4, "m-v2-predictor": 0}),
        (None, [canary("v2", 25)], {"m-predictor": 1, "m-v2-predictor": 1}),
        (None, [canary("v2", 0)], {"m-predictor": 1, "m-v2-predictor": 0}),
    ],
)
def test_replica_sizing_with_autoscaler_class_none(
    min_replicas: int | None, canaries: list[dict[str, Any]], want: dict[str, int]
) -> None:
    s = Std().create(min_replicas, canaries, NONE_CLASS).settle()
    assert s.replicas() == want


def test_hpa_class_clamps_a_zero_percent_canary_to_one_pod() -> None:
    s = Std().create(4, [canary("v2", 0)]).settle()
    assert s.replicas() == {"m-predictor": 4, "m-v2-predictor": 1}


def test_removing_the_canary_restores_the_stable_minimum() -> None:
    s = Std().create(4, [canary("v2", 25)], NONE_CLASS).settle().advance(20)
    assert s.replicas() == {"m-predictor": 3, "m-v2-predictor": 1}
    s.edit(lambda spec: spec.pop("canary")).settle()
    assert s.replicas() == {"m-predictor": 4}


def test_v020_reduces_the_stable_before_the_canary_is_ready() -> None:
    s = Std().create(4, [canary("v2", 50)], NONE_CLASS).settle()
    assert s.status["canaryStatuses"][0]["ready"] is False
    assert s.replicas()["m-predictor"] == 2


def test_weighted_mode_reduces_the_stable_only_for_ready_canaries() -> None:
    s = Std("weighted").create(4, [canary("v2", 50)], NONE_CLASS).settle()
    assert s.canary_ready() == [False]
    assert s.replicas()["m-predictor"] == 4
    s.advance(20)
    assert s.canary_ready() == [True]
    assert s.replicas()["m-predictor"] == 2


@pytest.mark.parametrize(
    ("stable", "canaries", "weighted", "ready", "want"),
    [
        (4, [canary("a", 25)], False, {}, 3),
        (4, [canary("a", 25)], True, {}, 4),
        (4, [canary("a", 25)], True, {"a": True}, 3),
        (2, [canary("a", 100)], False, {}, 1),
        (None, [canary("a", 50)], False, {}, None),
        (0, [canary("a", 50)], False, {}, 1),
        (0, [canary("a", 50)], True, {}, 0),
    ],
)
def test_stable_min_replicas(
    stable: int | None,
    canaries: list[dict[str, Any]],
    weighted: bool,
    ready: dict[str, bool],
    want: int | None,
) -> None:
    predictor: dict[str, Any] = {"model": model(V1)}
    if stable is not None:
        predictor["minReplicas"] = stable
    assert stable_min_replicas(predictor, canaries, weighted=weighted, ready=ready) == want


def test_canary_replica_count_rounds_up() -> None:
    assert canary_replica_count(3, canary("a", 10)) == 1
    assert canary_replica_count(3, canary("a", 34)) == 2
    assert canary_replica_count(None, canary("a", 1)) == 1
    assert canary_replica_count(5, canary("a", 40, minReplicas=1)) == 1


def test_canary_predictor_is_the_stable_overlaid_with_the_canary() -> None:
    stable = {
        "minReplicas": 4,
        "maxReplicas": 8,
        "scaleTarget": 5,
        "timeout": 30,
        "model": model(V1),
    }
    merged = build_canary_predictor(stable, canary("v2", 25), 1)
    assert merged["model"]["storageUri"] == V2
    assert merged["model"]["modelFormat"] == {"name": "sklearn"}
    assert merged["timeout"] == 30, "inherited from the stable"
    assert merged["minReplicas"] == 1
    assert "maxReplicas" not in merged
    assert "scaleTarget" not in merged
    assert merged["name"] == "v2"


# --- status: canaryStatuses, conditions, observedGeneration ---------------------------------


def test_canary_statuses_sit_at_the_top_level_of_status() -> None:
    s = Std().create(4, [canary("v2", 25)]).settle()
    assert s.status["canaryStatuses"] == [
        {
            "name": "v2",
            "ready": False,
            "trafficPercent": 25,
            "modelStatus": {"transitionStatus": ""},
        }
    ]
    assert "canaryStatuses" not in s.status["components"]["predictor"]
    assert s.state("CanaryPredictorReady") == "False/CanariesNotReady"
    s.advance(20)
    assert s.status["canaryStatuses"][0]["ready"] is True
    assert s.state("CanaryPredictorReady") == "True/AllCanariesReady"
    severity = s.condition("CanaryPredictorReady")
    assert severity is not None
    assert severity["severity"] == "Info"


def test_canary_traffic_percent_is_copied_from_the_spec() -> None:
    s = Std().create(4, [canary("v2", 25)]).settle().advance(20)
    s.edit(lambda spec: spec["canary"][0].update(trafficPercent=60)).settle()
    assert s.status["canaryStatuses"][0]["trafficPercent"] == 60


def test_canary_predictor_ready_is_removed_without_canaries() -> None:
    s = Std().create(4, [canary("v2", 25)]).settle().advance(20)
    s.edit(lambda spec: spec.update(canary=[])).settle()
    assert s.condition("CanaryPredictorReady") is None
    assert "canaryStatuses" not in s.status


def test_a_failing_canary_does_not_affect_ready() -> None:
    s = Std().create(4).settle().advance(20)
    s.edit(lambda spec: spec.update(canary=[canary("bad", 25, BAD)])).settle().advance(600)
    assert s.state("CanaryPredictorReady") == "False/CanariesNotReady"
    assert s.state("Ready") == "True/"
    assert s.state("PredictorReady") == "True/NewReplicaSetAvailable"


def test_predictor_ready_and_observed_generation_come_from_the_stable_only() -> None:
    s = Std().create(4).settle()
    assert s.state("PredictorReady") == "False/MinimumReplicasUnavailable"
    assert s.state("IngressReady") == "False/Predictor ingress not created"
    assert s.state("Ready") == "False/Predictor ingress not created"
    s.advance(20)
    assert s.state("Ready") == "True/"
    assert s.status["url"] == "http://m-ns.example.com"
    assert s.status["components"]["predictor"]["url"] == "http://m-predictor-ns.example.com"
    assert s.status["address"] == {"url": "http://m-predictor.ns.svc.cluster.local"}
    og = s.status["observedGeneration"]
    s.edit(lambda spec: spec.update(canary=[canary("v2", 25)])).settle().advance(20)
    # the stable's replicas changed (4 -> 3): its Deployment generation moved, not the canary's
    assert s.status["observedGeneration"] == og + 1
    assert s.world.deployments["m-v2-predictor"].generation == 1


def test_the_stable_stays_ready_during_a_rolling_update_until_the_progress_deadline() -> None:
    s = Std().create(2).settle().advance(20)
    s.edit(lambda spec: spec["predictor"]["model"].update(storageUri=BAD)).settle()
    assert s.state("PredictorReady") == "True/MinimumReplicasAvailable", "old pods still serve"
    s.advance(599)
    assert s.state("Ready") == "True/"
    s.advance(1)
    assert s.state("PredictorReady") == "False/ProgressDeadlineExceeded"
    ready = s.condition("PredictorReady")
    assert ready is not None
    assert "has timed out progressing" in ready["message"]


# --- validation (§2.2) ----------------------------------------------------------------------


def isvc(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "annotations": annotations if annotations is not None else dict(MODE),
        },
        "spec": spec,
    }


STABLE = {"model": model(V1)}
REJECTIONS: list[tuple[str, dict[str, Any], dict[str, str] | None, str]] = [
    (
        "Knative mode",
        {"predictor": STABLE, "canary": [canary("v2", 10)]},
        {},
        "canary is only supported in Standard deployment mode",
    ),
    (
        "Serverless mode",
        {"predictor": STABLE, "canary": [canary("v2", 10)]},
        {"serving.kserve.io/deploymentMode": "Serverless"},
        "only supported in Standard",
    ),
    (
        "no stable model",
        {"predictor": {"containers": [{"image": "x"}]}, "canary": [canary("v2", 10)]},
        None,
        "canary requires a stable predictor with a model",
    ),
    (
        "no name",
        {
            "predictor": STABLE,
            "canary": [{"predictor": {"model": model(V2)}, "trafficPercent": 10}],
        },
        None,
        "canary[0] predictor.name is required",
    ),
    (
        "duplicate",
        {"predictor": STABLE, "canary": [canary("v2", 10), canary("v2", 10)]},
        None,
        'canary predictor.name "v2" is duplicated',
    ),
    (
        "same as stable",
        {"predictor": {**STABLE, "name": "v2"}, "canary": [canary("v2", 10)]},
        None,
        "conflicts with stable predictor name",
    ),
    (
        "percent > 100",
        {"predictor": STABLE, "canary": [canary("v2", 101)]},
        None,
        "trafficPercent must be between 0 and 100, got 101",
    ),
    (
        "percent < 0",
        {"predictor": STABLE, "canary": [canary("v2", -1)]},
        None,
        "trafficPercent must be between 0 and 100, got -1",
    ),
    (
        "sum > 100",
        {"predictor": STABLE, "canary": [canary("a", 60), canary("b", 50)]},
        None,
        "sum of canary trafficPercent values (110) must be <= 100",
    ),
    (
        "two implementations",
        {
            "predictor": STABLE,
            "canary": [
                {
                    "predictor": {"name": "v2", "model": model(V2), "sklearn": {"storageUri": V2}},
                    "trafficPercent": 10,
                }
            ],
        },
        None,
        'canary "v2" predictor: exactly one of',
    ),
    (
        "no implementation",
        {"predictor": STABLE, "canary": [{"predictor": {"name": "v2"}, "trafficPercent": 10}]},
        None,
        'canary "v2" predictor: exactly one of',
    ),
    (
        "workerSpec",
        {"predictor": STABLE, "canary": [canary("v2", 10, workerSpec={})]},
        None,
        "must not set workerSpec",
    ),
    (
        "maxReplicas",
        {"predictor": STABLE, "canary": [canary("v2", 10, maxReplicas=3)]},
        None,
        "must not set maxReplicas",
    ),
    (
        "scaleTarget",
        {"predictor": STABLE, "canary": [canary("v2", 10, scaleTarget=5)]},
        None,
        "must not set scaleTarget",
    ),
    (
        "scaleMetric",
        {"predictor": STABLE, "canary": [canary("v2", 10, scaleMetric="cpu")]},
        None,
        "must not set scaleMetric",
    ),
    (
        "autoScaling",
        {"predictor": STABLE, "canary": [canary("v2", 10, autoScaling={})]},
        None,
        "must not set autoScaling",
    ),
    (
        "minReplicas above stable default",
        {"predictor": STABLE, "canary": [canary("v2", 10, minReplicas=2)]},
        None,
        "minReplicas (2) must not exceed stable predictor minReplicas (1)",
    ),
    (
        "minReplicas above stable",
        {"predictor": {**STABLE, "minReplicas": 3}, "canary": [canary("v2", 10, minReplicas=4)]},
        None,
        "minReplicas (4) must not exceed stable predictor minReplicas (3)",
    ),
    (
        "stable with two implementations",
        {"predictor": {**STABLE, "sklearn": {"storageUri": V1}}},
        None,
        "exactly one of",
    ),
]


@pytest.mark.parametrize(
    ("spec", "annotations", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_the_webhook_rejects(
    spec: dict[str, Any], annotations: dict[str, str] | None, message: str
) -> None:
    errors = validate(isvc(spec, annotations))
    assert errors
    assert message in errors[0]


@pytest.mark.parametrize(
    ("spec", "annotations"),
    [
        ({"predictor": STABLE, "canary": [canary("v2", 10)]}, None),
        (
            {"predictor": STABLE, "canary": [canary("v2", 10)]},
            {"serving.kserve.io/deploymentMode": "RawDeployment"},
        ),
        ({"predictor": STABLE, "canary": [canary("a", 50), canary("b", 50)]}, None),
        (
            {"predictor": {**STABLE, "minReplicas": 3}, "canary": [canary("v2", 0, minReplicas=3)]},
            None,
        ),
        ({"predictor": STABLE, "canary": [canary("v2", 10, maxReplicas=0)]}, None),
        ({"predictor": STABLE}, {}),
    ],
)
def test_the_webhook_accepts(spec: dict[str, Any], annotations: dict[str, str] | None) -> None:
    assert validate(isvc(spec, annotations)) == []


def test_canaries_are_accepted_without_annotation_in_a_standard_default_cluster() -> None:
    obj = isvc({"predictor": STABLE, "canary": [canary("v2", 10)]}, {})
    assert validate(obj) != []
    assert validate(obj, config=KServeConfig(default_deployment_mode="Standard")) == []


def test_renaming_the_stable_needs_a_model_change_in_the_same_update() -> None:
    old = isvc({"predictor": STABLE})
    renamed = isvc({"predictor": {**STABLE, "name": "v2"}})
    assert validate(renamed, previous=old) == [
        "predictor.name change requires a model change (e.g. storageUri)"
    ]
    promoted = isvc({"predictor": {"name": "v2", "model": model(V2)}})
    assert validate(promoted, previous=old) == []


def test_the_deployment_mode_cannot_change_once_recorded() -> None:
    obj = isvc({"predictor": STABLE}, {"serving.kserve.io/deploymentMode": "Knative"})
    obj["status"] = {"deploymentMode": "Standard"}
    assert validate(obj) == [
        "update rejected: deploymentMode cannot be changed from 'Standard' to 'Knative'"
    ]
    obj["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    assert validate(obj) == []


# --- promotion and rollback (§2.5) ----------------------------------------------------------


def promote_by_name(spec: dict[str, Any]) -> None:
    spec["predictor"]["name"] = "v2"
    spec["predictor"]["model"]["storageUri"] = V2
    spec.pop("canary")


def test_promote_by_name_swap_keeps_the_canary_pods() -> None:
    s = Std().create(4, [canary("v2", 25)], NONE_CLASS).settle().advance(20)
    replica_set = s.world.deployments["m-v2-predictor"].current
    assert replica_set is not None
    old = copy.deepcopy(s.isvc)
    s.edit(promote_by_name)
    assert validate(s.isvc, previous=old) == []
    s.settle()
    assert s.replicas() == {"m-v2-predictor": 4}, "old stable deleted; back to the stable minimum"
    current = s.world.deployments["m-v2-predictor"].current
    assert current is not None
    assert current.name == replica_set.name, "pod template unchanged: no new ReplicaSet"
    assert s.state("Ready") == "True/"
    assert s.status["address"] == {"url": "http://m-v2-predictor.ns.svc.cluster.local"}
    assert s.split() == [("m-v2-predictor", 100)]
    assert "canaryStatuses" not in s.status


def test_promote_by_model_change_rolls_the_stable_and_deletes_the_canary() -> None:
    s = Std().create(4, [canary("v2", 25)], NONE_CLASS).settle().advance(20)
    rs = s.world.deployments["m-predictor"].current
    assert rs is not None

    def promote(spec: dict[str, Any]) -> None:
        spec["predictor"]["model"]["storageUri"] = V2
        spec.pop("canary")

    s.edit(promote).settle()
    assert s.replicas() == {"m-predictor": 4}
    rolling = s.world.deployments["m-predictor"]
    assert rolling.current is not None
    assert rolling.current.name != rs.name, "a rolling update"
    assert s.state("PredictorReady") == "True/MinimumReplicasAvailable", "old pods serve meanwhile"
    s.advance(20)
    assert s.state("PredictorReady") == "True/NewReplicaSetAvailable"
    assert s.split() == [("m-predictor", 100)]


@pytest.mark.parametrize(
    "remove",
    [lambda spec: spec.pop("canary"), lambda spec: spec.update(canary=None)],
    ids=["remove the entry", "canary set to null"],
)
def test_rollback_deletes_the_canary_and_restores_the_stable(
    remove: Callable[[dict[str, Any]], Any],
) -> None:
    s = Std().create(4, [canary("v2", 25)], NONE_CLASS).settle().advance(20)
    s.edit(remove).settle()
    assert s.replicas() == {"m-predictor": 4}
    assert s.condition("CanaryPredictorReady") is None
    assert s.split() == [("m-predictor", 100)]


def test_orphaned_deployments_are_cleaned_up() -> None:
    s = Std().create(4, [canary("a", 25), canary("b", 25, V3)]).settle().advance(20)
    s.edit(lambda spec: spec.update(canary=[canary("b", 25, V3)])).settle()
    assert sorted(s.world.deployments) == ["m-b-predictor", "m-predictor"]


def test_stop_deletes_deployments_and_marks_everything_stopped() -> None:
    s = Std().create(4, [canary("v2", 25)]).settle().advance(20)
    s.isvc["metadata"]["annotations"]["serving.kserve.io/stop"] = "true"
    s.settle()
    assert s.world.deployments == {}
    assert s.state("PredictorReady") == "False/Stopped"
    assert s.state("IngressReady") == "False/Stopped"
    assert s.state("Stopped") == "True/"
    assert s.state("CanaryPredictorReady") == "False/Stopped"
    assert s.split() == []


# --- routing: v0.20 versus weighted ---------------------------------------------------------


def test_v020_routes_everything_to_the_stable_service() -> None:
    s = Std().create(4, [canary("v2", 25)]).settle().advance(20)
    assert s.status["canaryStatuses"][0]["ready"] is True
    assert s.split() == [("m-predictor", 100), ("m-v2-predictor", 0)]


def test_weighted_routes_ready_canaries_by_their_percent() -> None:
    s = Std("weighted").create(4, [canary("a", 25), canary("b", 10, BAD)]).settle()
    assert s.split() == [("m-predictor", 100), ("m-a-predictor", 0), ("m-b-predictor", 0)]
    s.advance(20)
    assert s.split() == [("m-predictor", 75), ("m-a-predictor", 25), ("m-b-predictor", 0)]
    targets = standard.effective_split(s.world)
    assert targets[1][2] == V2, "the canary's storage URI"
