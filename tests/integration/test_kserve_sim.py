"""The KServe simulator on a real kube-apiserver with the real InferenceService CRD.

Each test runs its own :class:`KServeSimulator` (started and stopped by the ``sim`` fixture)
in a fresh namespace, on InferenceServices labelled for it, so the test bed's shared
simulator leaves them alone. Every change goes through a real JSON merge patch; every
status is written through the real status subresource and validated by the CRD schema.
Readiness is driven by editing the behaviour file, never by waiting out timers; waits poll
with a bounded deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from canary.k8s.client import INFERENCE_SERVICE, Conflict, KubeClient, NotFound
from testbed.behaviour import BehaviourBook, BehaviourWatcher, ModelBehaviour, Readiness
from testbed.kserve.controller import (
    FINALIZER,
    PRIVATE_LABEL,
    KServeSimulator,
    SplitTarget,
)

pytestmark = pytest.mark.integration

V1, V2, V3, BAD = "s3://models/v1", "s3://models/v2", "s3://models/v3", "s3://models/bad"
DEADLINE = 20.0
T = TypeVar("T")


class BedLike(Protocol):
    """The session fixture ``testbed`` from tests/conftest.py, as used here."""

    kube: KubeClient
    behaviour_path: Path

    def namespace(self, name: str) -> str: ...


@dataclass
class Sim:
    kube: KubeClient
    namespace: str
    token: str
    simulator: KServeSimulator
    behaviour_path: Path
    splits: list[tuple[str, list[SplitTarget]]]

    # --- the world outside -----------------------------------------------------------------

    def behave(self, **models: ModelBehaviour) -> None:
        book = BehaviourBook(default=ModelBehaviour(ready_after_seconds=0))
        for uri, behaviour in models.items():
            book = book.with_model(uri, behaviour)
        book.save(self.behaviour_path)

    def create(
        self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
    ) -> None:
        self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "labels": {PRIVATE_LABEL: self.token},
                    "annotations": annotations or {},
                },
                "spec": spec,
            },
        )

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch guarded by the resourceVersion we just read; like any client,
        it reads again and retries when a status write of the simulator got in between."""
        for _ in range(20):
            current = self.get(name)
            try:
                self.kube.patch(
                    INFERENCE_SERVICE,
                    self.namespace,
                    name,
                    patch,
                    resource_version=current["metadata"]["resourceVersion"],
                )
                return
            except Conflict:
                continue
        raise AssertionError(f"{name}: every patch attempt conflicted")

    def get(self, name: str) -> dict[str, Any]:
        return self.kube.get(INFERENCE_SERVICE, self.namespace, name)

    last_status: Any = None

    def wait(self, what: str, probe: Callable[[], T | None], deadline: float = DEADLINE) -> T:
        end = time.monotonic() + deadline
        last: T | None = None
        while time.monotonic() < end:
            try:
                last = probe()
            except (KeyError, StopIteration, IndexError, TypeError):
                last = None
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status: {self.last_status}")

    def until(
        self, name: str, what: str, check: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.get(name).get("status", {})
            self.last_status = status
            return status if check(status) else None

        return self.wait(what, probe)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def is_(status: dict[str, Any], kind: str, value: str, reason: str | None = None) -> bool:
    c = next((c for c in status.get("conditions", []) if c["type"] == kind), None)
    return c is not None and c["status"] == value and (reason is None or c.get("reason") == reason)


def predictor(status: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = status.get("components", {}).get("predictor", {})
    return result


def traffic(status: dict[str, Any]) -> list[tuple[str, bool, int]]:
    return [
        (t.get("revisionName", ""), bool(t.get("latestRevision")), int(t.get("percent", 0)))
        for t in predictor(status).get("traffic", [])
    ]


@pytest.fixture
def sim(testbed: BedLike, tmp_path: Path) -> Iterator[Sim]:
    token = uuid.uuid4().hex[:10]
    namespace = testbed.namespace(f"kserve-sim-{token}")
    behaviour_path = tmp_path / "behaviour.yaml"
    BehaviourBook(default=ModelBehaviour(ready_after_seconds=0)).save(behaviour_path)
    splits: list[tuple[str, list[SplitTarget]]] = []
    before = set(threading.enumerate())
    simulator = KServeSimulator(
        testbed.kube,
        BehaviourWatcher(behaviour_path),
        namespaces=[namespace],
        label_selector=f"{PRIVATE_LABEL}={token}",
        on_split_change=lambda _ns, name, targets: splits.append((name, targets)),
        watch_timeout_seconds=1,
        poll_interval=0.05,
    )
    simulator.start()
    try:
        yield Sim(testbed.kube, namespace, token, simulator, behaviour_path, splits)
    finally:
        simulator.stop()
        assert not {
            t for t in threading.enumerate() if t not in before and t.name.startswith("kserve-sim")
        }


def sklearn(uri: str) -> dict[str, Any]:
    return {"modelFormat": {"name": "sklearn"}, "storageUri": uri}


def canary_model(uri: str) -> dict[str, Any]:
    """The full v0.20.0 CRD requires ``name`` (and ``modelFormat``) on a canary's model."""
    return {**sklearn(uri), "name": "kserve-container"}


R1, R2, R3 = "m-predictor-00001", "m-predictor-00002", "m-predictor-00003"


def test_knative_canary_walkthrough(sim: Sim) -> None:
    sim.behave(
        **{
            V2: ModelBehaviour(readiness=Readiness.NEVER),
            BAD: ModelBehaviour(readiness=Readiness.CRASH_LOOP),
        }
    )
    sim.create("m", {"predictor": {"model": sklearn(V1)}})

    # i: create -> ready, R1 rolled out
    status = sim.until(
        "m", "R1 ready", lambda s: is_(s, "Ready", "True") and traffic(s) == [(R1, True, 100)]
    )
    assert predictor(status)["latestRolledoutRevision"] == R1
    assert status["deploymentMode"] == "Knative"
    assert status["url"] == f"http://m.{sim.namespace}.example.com"
    assert FINALIZER in sim.get("m")["metadata"]["finalizers"]
    assert sim.simulator.effective_split(sim.namespace, "m") == [
        SplitTarget(R1, 100, V1, "knative")
    ]

    # ii: one merge patch sets the new model and p=10; R2 is created but not ready yet
    sim.patch(
        "m", {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}}
    )
    status = sim.until(
        "m",
        "R2 created, not ready",
        lambda s: (
            predictor(s).get("latestCreatedRevision") == R2
            and traffic(s) == [(R1, True, 10), (R1, False, 90)]
            and is_(s, "PredictorRouteReady", "True")
        ),
    )
    assert predictor(status)["latestReadyRevision"] == R1
    assert is_(status, "PredictorReady", "Unknown")
    assert is_(status, "Ready", "Unknown")
    assert sim.simulator.effective_split(sim.namespace, "m") == [
        SplitTarget(R1, 100, V1, "knative")
    ]

    # the model becomes ready when the behaviour file says so: R2 gets its 10 %
    sim.behave(**{BAD: ModelBehaviour(readiness=Readiness.CRASH_LOOP)})
    status = sim.until(
        "m",
        "R2 at 10 %",
        lambda s: traffic(s) == [(R2, True, 10), (R1, False, 90)] and is_(s, "Ready", "True"),
    )
    assert predictor(status)["latestRolledoutRevision"] == R1
    assert sim.simulator.effective_split(sim.namespace, "m") == [
        SplitTarget(R2, 10, V2, "knative"),
        SplitTarget(R1, 90, V1, "knative"),
    ]
    assert sim.splits[-1] == (
        "m",
        [SplitTarget(R2, 10, V2, "knative"), SplitTarget(R1, 90, V1, "knative")],
    )

    # iii: p=25
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 25}}})
    sim.until(
        "m",
        "R2 at 25 %",
        lambda s: traffic(s) == [(R2, True, 25), (R1, False, 75)] and is_(s, "Ready", "True"),
    )

    # iv: promote with p=100
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    status = sim.until(
        "m", "R2 promoted", lambda s: traffic(s) == [(R2, True, 100)] and is_(s, "Ready", "True")
    )
    assert predictor(status)["latestRolledoutRevision"] == R2
    assert predictor(status)["previousRolledoutRevision"] == R1
    assert status["observedGeneration"] == 4, "the ksvc's generation, not the InferenceService's"

    # viii: a crash-looping model fails its revision at once; R2 keeps serving
    sim.patch(
        "m", {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": BAD}}}}
    )
    status = sim.until(
        "m", "R3 failed", lambda s: is_(s, "PredictorReady", "False", "RevisionFailed")
    )
    assert predictor(status)["latestCreatedRevision"] == R3
    assert traffic(status) == [(R2, True, 10), (R2, False, 90)]
    assert status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
    assert is_(status, "Ready", "False", "RevisionFailed")
    assert sim.simulator.effective_split(sim.namespace, "m") == [
        SplitTarget(R2, 100, V2, "knative")
    ]

    # ix: delete; the finalizer goes and the object with it
    sim.kube.delete(INFERENCE_SERVICE, sim.namespace, "m")

    def gone() -> bool:
        try:
            sim.get("m")
        except NotFound:
            return True
        return False

    sim.wait("deletion", gone)
    sim.wait("the split to empty", lambda: sim.splits[-1] == ("m", []))


def _canary_at_25(sim: Sim) -> None:
    """i → iii.1 on the real apiserver: R1 rolled out, R2 serving 25 %."""
    sim.create("m", {"predictor": {"model": sklearn(V1)}})
    sim.until(
        "m", "R1 ready", lambda s: is_(s, "Ready", "True") and traffic(s) == [(R1, True, 100)]
    )
    sim.patch(
        "m", {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}}
    )
    sim.until("m", "R2 at 10 %", lambda s: traffic(s) == [(R2, True, 10), (R1, False, 90)])
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 25}}})
    sim.until("m", "R2 at 25 %", lambda s: traffic(s) == [(R2, True, 25), (R1, False, 75)])


def test_promote_by_deleting_the_percent_is_like_100(sim: Sim) -> None:
    """iv.b: removing canaryTrafficPercent (merge patch null) promotes exactly like 100."""
    _canary_at_25(sim)
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    status = sim.until("m", "R2 promoted", lambda s: traffic(s) == [(R2, True, 100)])
    assert predictor(status)["latestRolledoutRevision"] == R2
    assert predictor(status)["previousRolledoutRevision"] == R1


def test_rollback_with_zero_before_promotion_keeps_the_canary_pods(sim: Sim) -> None:
    """v: p=0 during the canary sends everything back to R1; R2 stays routed at 0 %."""
    _canary_at_25(sim)
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    # Ready passes through Unknown while the route is reprogrammed (KSERVE.md §1.5 note ²)
    status = sim.until(
        "m",
        "R2 at 0 % and Ready",
        lambda s: traffic(s) == [(R2, True, 0), (R1, False, 100)] and is_(s, "Ready", "True"),
    )
    assert predictor(status)["latestRolledoutRevision"] == R1
    assert predictor(status).get("previousRolledoutRevision", "") == ""
    assert sim.simulator.effective_split(sim.namespace, "m") == [
        SplitTarget(R2, 0, V2, "knative"),
        SplitTarget(R1, 100, V1, "knative"),
    ]


def test_zero_after_promotion_falls_back_to_the_previous_release(sim: Sim) -> None:
    """vi: once R2 is promoted, p=0 without a new revision rolls traffic back to R1."""
    _canary_at_25(sim)
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    sim.until("m", "R2 promoted", lambda s: traffic(s) == [(R2, True, 100)])
    sim.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    status = sim.until(
        "m", "fallen back to R1", lambda s: traffic(s) == [(R2, True, 0), (R1, False, 100)]
    )
    assert predictor(status)["latestRolledoutRevision"] == R1
    assert predictor(status)["previousRolledoutRevision"] == R1
    # vi.2's extra ksvc update: the ksvc's counter runs ahead of the InferenceService's
    assert status["observedGeneration"] > sim.get("m")["metadata"]["generation"]


def test_new_model_mid_canary_keeps_the_old_canary_until_ready(sim: Sim) -> None:
    """vii: a new storageUri while p=25 creates R3; R2 keeps the 25 % until R3 is ready."""
    sim.behave(**{V3: ModelBehaviour(readiness=Readiness.NEVER)})
    _canary_at_25(sim)
    sim.patch("m", {"spec": {"predictor": {"model": {"storageUri": V3}}}})
    status = sim.until("m", "R3 created", lambda s: predictor(s).get("latestCreatedRevision") == R3)
    sim.until("m", "R2 still at 25 %", lambda s: traffic(s) == [(R2, True, 25), (R1, False, 75)])
    assert predictor(sim.get("m")["status"])["latestReadyRevision"] == R2
    sim.behave()  # R3 becomes ready
    status = sim.until("m", "R3 at 25 %", lambda s: traffic(s) == [(R3, True, 25), (R1, False, 75)])
    assert predictor(status)["latestRolledoutRevision"] == R1


def test_new_model_mid_canary_that_fails_leaves_the_old_canary(sim: Sim) -> None:
    """vii.2′: R3 fails; R2 keeps its 25 % and the InferenceService reports the failure."""
    sim.behave(**{BAD: ModelBehaviour(readiness=Readiness.CRASH_LOOP)})
    _canary_at_25(sim)
    sim.patch("m", {"spec": {"predictor": {"model": {"storageUri": BAD}}}})
    status = sim.until(
        "m", "R3 failed", lambda s: is_(s, "PredictorReady", "False", "RevisionFailed")
    )
    assert traffic(status) == [(R2, True, 25), (R1, False, 75)]
    assert predictor(status)["latestCreatedRevision"] == R3
    assert is_(status, "Ready", "False")


def test_standard_canary_add_promote_remove(sim: Sim) -> None:
    annotations = {
        "serving.kserve.io/deploymentMode": "Standard",
        "serving.kserve.io/autoscalerClass": "none",
    }
    sim.create("s", {"predictor": {"minReplicas": 4, "model": sklearn(V1)}}, annotations)
    status = sim.until("s", "stable ready", lambda s: is_(s, "Ready", "True"))
    assert status["deploymentMode"] == "Standard"
    assert status["url"] == f"http://s-{sim.namespace}.example.com"

    canary = {"predictor": {"name": "v2", "model": canary_model(V2)}, "trafficPercent": 25}
    sim.behave(**{V2: ModelBehaviour(readiness=Readiness.NEVER)})
    sim.patch("s", {"spec": {"canary": [canary]}})
    status = sim.until(
        "s", "canary listed", lambda s: s.get("canaryStatuses", [{}])[0].get("name") == "v2"
    )
    assert status["canaryStatuses"] == [
        {
            "name": "v2",
            "ready": False,
            "trafficPercent": 25,
            "modelStatus": {"transitionStatus": ""},
        }
    ]
    assert is_(status, "CanaryPredictorReady", "False", "CanariesNotReady")
    assert is_(status, "Ready", "True"), "a canary never affects Ready"
    world = sim.simulator.standard_world(sim.namespace, "s")
    assert world is not None
    assert {n: d.replicas for n, d in world.deployments.items()} == {
        "s-predictor": 3,
        "s-v2-predictor": 1,
    }

    sim.behave()
    status = sim.until(
        "s", "canary ready", lambda s: is_(s, "CanaryPredictorReady", "True", "AllCanariesReady")
    )
    assert status["canaryStatuses"][0]["ready"] is True
    assert sim.simulator.effective_split(sim.namespace, "s")[0] == SplitTarget(
        "s-predictor", 100, V1, "standard"
    )

    # promote by swapping the stable's name and model and dropping the entry, in one write
    sim.patch(
        "s", {"spec": {"predictor": {"name": "v2", "model": {"storageUri": V2}}, "canary": None}}
    )
    status = sim.until(
        "s",
        "v2 is the stable",
        lambda s: (
            s.get("address", {}).get("url")
            == f"http://s-v2-predictor.{sim.namespace}.svc.cluster.local"
            and "canaryStatuses" not in s
            and is_(s, "Ready", "True")
        ),
    )
    assert not any(c["type"] == "CanaryPredictorReady" for c in status["conditions"])
    world = sim.simulator.standard_world(sim.namespace, "s")
    assert world is not None
    assert list(world.deployments) == ["s-v2-predictor"]
    assert world.deployments["s-v2-predictor"].replicas == 4
    assert sim.simulator.effective_split(sim.namespace, "s") == [
        SplitTarget("s-v2-predictor", 100, V2, "standard")
    ]

    # a new canary, then roll it back by removing the list
    canary3 = {"predictor": {"name": "v3", "model": canary_model(V3)}, "trafficPercent": 50}
    sim.patch("s", {"spec": {"canary": [canary3]}})
    sim.until("s", "v3 ready", lambda s: s.get("canaryStatuses", [{}])[0].get("ready") is True)
    sim.patch("s", {"spec": {"canary": None}})
    status = sim.until(
        "s", "rolled back", lambda s: "canaryStatuses" not in s and is_(s, "Ready", "True")
    )
    world = sim.simulator.standard_world(sim.namespace, "s")
    assert world is not None
    assert {n: d.replicas for n, d in world.deployments.items()} == {"s-v2-predictor": 4}


def test_a_refused_spec_is_flagged_and_the_old_spec_keeps_serving(sim: Sim) -> None:
    sim.create("r", {"predictor": {"model": sklearn(V1)}})
    sim.until("r", "ready", lambda s: is_(s, "Ready", "True"))
    canary = {"predictor": {"name": "v2", "model": canary_model(V2)}, "trafficPercent": 10}
    sim.patch("r", {"spec": {"canary": [canary]}})
    status = sim.until(
        "r", "rejected", lambda s: is_(s, "PredictorReady", "False", "WebhookRejected")
    )
    assert (
        "canary is only supported in Standard deployment mode"
        in condition(status, "PredictorReady")["message"]
    )
    assert sim.simulator.effective_split(sim.namespace, "r") == [
        SplitTarget("r-predictor-00001", 100, V1, "knative")
    ]
