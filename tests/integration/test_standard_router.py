"""The Standard-mode traffic router against a real kube-apiserver, the real KServe and
Gateway API CRDs and the test bed's KServe v0.20 simulator (``trafficPercent`` routes
nothing, so the router weights an HTTPRoute of its own).

Each test works in its own namespace on an InferenceService ``m``: the stable Service is
``m-predictor`` and the first canary ``m-canary-predictor``. Waits poll ``router.observe``
with a bounded deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from canary.k8s.client import HTTP_ROUTE, INFERENCE_SERVICE, Conflict, KubeClient, NotFound
from canary.model import SetTraffic, TrafficView
from canary.routing.base import Observed, TrafficRouter
from canary.routing.standard import StandardRouter, route_name
from testbed.behaviour import ModelBehaviour
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

NAME = "m"
STABLE, CANARY = f"{NAME}-predictor", f"{NAME}-canary-predictor"
ROUTE = route_name(NAME)
STANDARD = {"serving.kserve.io/deploymentMode": "Standard"}
DEADLINE = 30.0
T = TypeVar("T")


class Bed:
    """One test's namespace, models and router."""

    def __init__(self, testbed: Testbed) -> None:
        token = uuid.uuid4().hex[:8]
        self.kube: KubeClient = testbed.kube
        self.namespace = testbed.namespace(f"standard-router-{token}")
        self.v1 = f"s3://std-router-{token}/v1"
        self.v2 = f"s3://std-router-{token}/v2"
        book = testbed.behaviour().with_model(self.v1, ModelBehaviour())
        testbed.set_behaviour(book.with_model(self.v2, ModelBehaviour()))
        self.router = StandardRouter(self.kube)
        self.typed: TrafficRouter = self.router  # StandardRouter satisfies the protocol

    def create(self, annotations: dict[str, str] | None = None, name: str = NAME) -> None:
        self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "annotations": STANDARD if annotations is None else annotations,
                },
                "spec": {
                    "predictor": {
                        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": self.v1}
                    }
                },
            },
        )

    def isvc(self, name: str = NAME) -> dict[str, Any]:
        return self.kube.get(INFERENCE_SERVICE, self.namespace, name)

    def route(self) -> dict[str, Any] | None:
        try:
            return self.kube.get(HTTP_ROUTE, self.namespace, ROUTE)
        except NotFound:
            return None

    def weights(self) -> list[tuple[str, int]]:
        route = self.route()
        assert route is not None
        rules = route["spec"]["rules"]
        assert len(rules) == 1
        return [(ref["name"], ref["weight"]) for ref in rules[0]["backendRefs"]]

    def observe(self, name: str = NAME) -> Observed:
        return self.router.observe(self.namespace, name)

    def wait(self, what: str, check: Callable[[TrafficView], bool], name: str = NAME) -> Observed:
        end = time.monotonic() + DEADLINE
        while True:
            observed = self.observe(name)
            if check(observed.view):
                return observed
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; last view: {observed.view}")
            time.sleep(0.05)

    def retrying(self, write: Callable[[str], T]) -> T:
        """A write guarded by a fresh resourceVersion, retried when a status write of the
        simulator got in between."""
        for _ in range(30):
            try:
                return write(self.observe().resource_version)
            except Conflict:
                continue
        raise AssertionError("every write attempt conflicted")

    def start(self, percent: int) -> Observed:
        return self.retrying(
            lambda rv: self.router.start(
                self.namespace, NAME, self.v2, percent, resource_version=rv
            )
        )

    def apply(self, action: SetTraffic) -> None:
        self.retrying(
            lambda rv: self.router.apply(self.namespace, NAME, action, resource_version=rv)
        )

    def rolled_out(self) -> Observed:
        self.create()
        return self.wait(
            "stable ready",
            lambda v: v.converged and v.latest_ready and v.latest.name == STABLE,
        )

    def canary_at(self, percent: int) -> Observed:
        self.start(percent)
        return self.wait(
            f"canary at {percent} %",
            lambda v: v.converged and v.split == {STABLE: 100 - percent, CANARY: percent},
        )


def test_start_adds_one_canary_and_our_route_in_step(testbed: Testbed) -> None:
    bed = Bed(testbed)
    before = bed.rolled_out()
    assert before.mode == "Standard"
    assert before.view.split == {STABLE: 100}
    assert before.view.spec_percent == 0
    assert bed.route() is None
    original = bed.isvc()

    written = bed.start(10)
    assert written.generation == before.generation + 1
    assert written.view.latest.name == CANARY
    assert written.view.latest.storage_uri == bed.v2
    assert written.view.spec_percent == 10
    assert not written.view.converged  # the status is the one from before the write

    after = bed.isvc()
    assert after["spec"]["canary"] == [
        {
            "predictor": {
                "name": "canary",
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "name": "kserve-container",
                    "storageUri": bed.v2,
                },
            },
            "trafficPercent": 10,
        }
    ]
    # nothing else of KServe's object changed
    assert after["spec"]["predictor"] == original["spec"]["predictor"]
    assert after["metadata"].get("annotations") == original["metadata"].get("annotations")
    assert after["metadata"].get("labels") == original["metadata"].get("labels")

    route = bed.route()
    assert route is not None
    assert route["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kserve-canary"}
    [owner] = route["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("InferenceService", NAME, before.uid)
    assert bed.weights() == [(STABLE, 90), (CANARY, 10)]
    assert all(ref["port"] == 80 for ref in route["spec"]["rules"][0]["backendRefs"])
    # the only HTTPRoute in the namespace is ours
    routes, _ = bed.kube.list(HTTP_ROUTE, bed.namespace)
    assert [r["metadata"]["name"] for r in routes] == [ROUTE]

    at10 = bed.wait("canary ready at 10 %", lambda v: v.converged)
    assert at10.view.latest_ready
    assert at10.view.split == {STABLE: 90, CANARY: 10}
    assert at10.view.stable is not None
    assert at10.view.stable.name == STABLE
    assert at10.storage_uri == bed.v1


def test_steps_then_promotion(testbed: Testbed) -> None:
    bed = Bed(testbed)
    bed.rolled_out()
    bed.canary_at(10)
    for percent in (25, 50):
        bed.apply(SetTraffic(CANARY, percent, "step"))
        assert bed.isvc()["spec"]["canary"][0]["trafficPercent"] == percent
        assert bed.weights() == [(STABLE, 100 - percent), (CANARY, percent)]
        reached = bed.wait(f"{percent} %", lambda v: v.converged)
        assert reached.view.split == {STABLE: 100 - percent, CANARY: percent}
        assert reached.view.spec_percent == percent

    bed.apply(SetTraffic(CANARY, 50, "promote"))
    spec = bed.isvc()["spec"]
    assert "canary" not in spec
    assert spec["predictor"]["name"] == "canary"
    assert spec["predictor"]["model"]["storageUri"] == bed.v2
    assert bed.weights() == [(CANARY, 100)]
    promoted = bed.wait("promoted", lambda v: v.converged)
    assert promoted.view.stable is not None
    assert promoted.view.stable.name == CANARY
    assert promoted.view.stable.storage_uri == bed.v2
    assert promoted.view.latest.name == CANARY
    assert promoted.view.latest_ready
    assert promoted.view.split == {CANARY: 100}
    assert promoted.view.spec_percent == 0

    # a next canary gets a name different from the promoted stable's
    bed.retrying(lambda rv: bed.router.start(bed.namespace, NAME, bed.v1, 10, resource_version=rv))
    assert bed.isvc()["spec"]["canary"][0]["predictor"]["name"] == "canary-1"
    assert bed.weights() == [(CANARY, 90), (f"{NAME}-canary-1-predictor", 10)]


def test_rollback_returns_all_traffic_to_the_stable(testbed: Testbed) -> None:
    bed = Bed(testbed)
    bed.rolled_out()
    bed.canary_at(25)
    bed.apply(SetTraffic(CANARY, 25, "rollback"))
    spec = bed.isvc()["spec"]
    assert "canary" not in spec
    assert spec["predictor"]["model"]["storageUri"] == bed.v1
    assert "name" not in spec["predictor"]
    assert bed.weights() == [(STABLE, 100)]
    rolled_back = bed.wait("rolled back", lambda v: v.converged)
    assert rolled_back.view.split == {STABLE: 100}
    assert rolled_back.view.latest.name == STABLE
    assert rolled_back.view.stable is not None
    assert rolled_back.view.stable.name == STABLE
    assert rolled_back.view.spec_percent == 0


def test_start_is_refused_outside_standard_mode_and_over_an_existing_canary(
    testbed: Testbed,
) -> None:
    bed = Bed(testbed)
    bed.create({"serving.kserve.io/deploymentMode": "Knative"}, name="kn")
    knative = bed.wait("Knative service observed", lambda v: bool(v.latest.name), name="kn")
    with pytest.raises(ValueError, match="not in Standard deployment mode"):
        bed.router.start(bed.namespace, "kn", bed.v2, 10, resource_version=knative.resource_version)
    assert "canary" not in bed.isvc("kn")["spec"]

    bed.rolled_out()
    bed.start(10)
    before = bed.isvc()
    with pytest.raises(ValueError, match="already has a canary"):
        bed.router.start(
            bed.namespace, NAME, f"{bed.v2}-again", 20,
            resource_version=before["metadata"]["resourceVersion"],
        )  # fmt: skip
    after = bed.isvc()
    assert after["spec"] == before["spec"]
    assert bed.weights() == [(STABLE, 90), (CANARY, 10)]


def test_a_stale_resource_version_conflicts_and_changes_nothing(testbed: Testbed) -> None:
    bed = Bed(testbed)
    stale = bed.rolled_out()
    bed.retrying(
        lambda rv: bed.kube.patch(
            INFERENCE_SERVICE, bed.namespace, NAME, {"metadata": {"labels": {"team": "fraud"}}},
            resource_version=rv,
        )
    )  # fmt: skip
    before = bed.isvc()
    with pytest.raises(Conflict):
        bed.router.start(bed.namespace, NAME, bed.v2, 10, resource_version=stale.resource_version)
    after = bed.isvc()
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert bed.route() is None

    # a step guarded by a stale version conflicts as well
    started = bed.start(10)
    with pytest.raises(Conflict):
        bed.router.apply(
            bed.namespace, NAME, SetTraffic(CANARY, 25, "step"),
            resource_version=stale.resource_version,
        )  # fmt: skip
    assert bed.isvc()["spec"]["canary"][0]["trafficPercent"] == 10
    assert bed.weights() == [(STABLE, 90), (CANARY, 10)]
    assert started.view.spec_percent == 10


@pytest.fixture(scope="module")
def weighted_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A second test bed whose simulator weights Ready canaries itself (post-v0.20 KServe)."""
    bed = Testbed(tmp_path_factory.mktemp("weighted"), standard_routing="weighted")
    problem: str | None = None
    try:
        bed.up()
    except Exception as exc:  # any part of the bed
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pytest.fail(f"the weighted test bed could not start:\n{problem}", pytrace=False)
    try:
        yield bed
    finally:
        bed.down()


def test_kserve_native_weights_drive_traffic_percent_only(weighted_testbed: Testbed) -> None:
    bed = Bed(weighted_testbed)
    bed.router = StandardRouter(bed.kube, weights="kserve-native")
    bed.rolled_out()
    bed.canary_at(10)
    assert bed.route() is None
    bed.apply(SetTraffic(CANARY, 40, "step"))
    assert bed.isvc()["spec"]["canary"][0]["trafficPercent"] == 40
    reached = bed.wait("40 %", lambda v: v.converged)
    assert reached.view.split == {STABLE: 60, CANARY: 40}
    bed.apply(SetTraffic(CANARY, 40, "promote"))
    promoted = bed.wait("promoted", lambda v: v.converged)
    assert promoted.view.split == {CANARY: 100}
    assert promoted.view.stable is not None
    assert promoted.view.stable.name == CANARY
    assert bed.route() is None


@pytest.mark.parametrize("percent", [5, 10])
def test_a_canary_entry_added_by_gitops_is_unrouted_until_the_start_write(
    testbed: Testbed, percent: int
) -> None:
    """A GitOps sync adds the spec.canary[] entry itself (the webhook caps its percent): no
    route of ours carries it, so the view says so and the controller's start write fixes it."""
    bed = Bed(testbed)
    bed.rolled_out()
    entry = {
        "predictor": {
            "name": "canary",
            "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                      "storageUri": bed.v2},
        },
        "trafficPercent": percent,
    }  # fmt: skip
    bed.kube.patch(INFERENCE_SERVICE, bed.namespace, NAME, {"spec": {"canary": [entry]}})
    seen = bed.observe().view
    assert seen.latest.name == CANARY
    assert seen.spec_percent == percent
    assert not seen.routed
    assert not seen.converged
    assert bed.route() is None
    time.sleep(1)  # the status catches up, still unrouted: it would never converge alone
    assert not bed.observe().view.converged

    bed.apply(SetTraffic(CANARY, percent, "start"))

    assert bed.weights() == [(STABLE, 100 - percent), (CANARY, percent)]
    done = bed.wait("the GitOps canary routed", lambda v: v.converged)
    assert done.view.routed
    assert done.view.split == {STABLE: 100 - percent, CANARY: percent}
    assert bed.isvc()["spec"]["canary"][0]["trafficPercent"] == percent


def test_the_route_carries_the_configured_parent_refs_and_hostnames(testbed: Testbed) -> None:
    """Without parentRefs an HTTPRoute attaches to no Gateway; the settings provide them
    (canary.settings.RouteParentRef), and the real Gateway API CRD accepts what we write."""
    from canary.settings import load_settings

    settings = load_settings(
        standard_route_parent_refs=[
            {"name": "inference-gateway", "namespace": "gateways", "sectionName": "http"}
        ],
        standard_route_hostnames="fraud.models.example.com",
    )
    bed = Bed(testbed)
    bed.router = StandardRouter(
        bed.kube,
        parent_refs=[ref.as_ref() for ref in settings.standard_route_parent_refs],
        hostnames=settings.standard_route_hostnames,
    )
    bed.rolled_out()
    bed.start(10)
    route = bed.route()
    assert route is not None
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateways",
            "sectionName": "http",
        }
    ]
    assert route["spec"]["hostnames"] == ["fraud.models.example.com"]
    bed.apply(SetTraffic(CANARY, 25, "step"))  # every later write keeps them
    route = bed.route()
    assert route is not None
    assert route["spec"]["hostnames"] == ["fraud.models.example.com"]
    assert len(route["spec"]["parentRefs"]) == 1
