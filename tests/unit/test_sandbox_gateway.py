"""The test bed's Gateway (``testbed.gateway``): kserve-canary's own HTTPRoute decides
where a Standard-mode InferenceService's simulated requests go.

The pure rules are table-driven over hand-built worlds; the :class:`GatewaySimulator` is
fed as the simulators process feeds it (KServe's splits and worlds, route events) and
records what it publishes; two tests drive it from the real KServe simulator loop and
from its own watch loop on a fake apiserver.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from canary.k8s.client import (
    INFERENCE_SERVICE,
    Gone,
    KubeClient,
    Unavailable,
    WatchEvent,
)
from canary.routing.standard import route_name
from testbed.behaviour import BehaviourBook, BehaviourWatcher, ModelBehaviour
from testbed.gateway import (
    GatewaySimulator,
    StandardTarget,
    backend_weights,
    gateway_split,
    route_owner,
    route_split,
    standard_targets,
)
from testbed.kserve.controller import KServeSimulator, SplitTarget
from testbed.kserve.standard import Deployment, StandardWorld
from testbed.kserve.template import RevisionTemplate
from tests.unit.test_kserve_knative import FakeKube

NS, ISVC = "ns", "m"
STABLE, CANARY, OTHER = "m-predictor", "m-canary-predictor", "m-other-predictor"
V1, V2, V3 = "s3://models/v1", "s3://models/v2", "s3://models/v3"
T0 = 1_800_000_000.0
Ref = tuple[str, int | None] | dict[str, Any]


def route(*refs: Ref, isvc: str = ISVC, namespace: str = NS) -> dict[str, Any]:
    """An HTTPRoute as :class:`~canary.routing.standard.StandardRouter` writes it; a ref is
    ``(service, weight)`` (``None``: no weight field) or a raw backendRef."""
    backends: list[dict[str, Any]] = []
    for ref in refs:
        if isinstance(ref, dict):
            backends.append(ref)
            continue
        service, weight = ref
        backend: dict[str, Any] = {"group": "", "kind": "Service", "name": service, "port": 80}
        if weight is not None:
            backend["weight"] = weight
        backends.append(backend)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": route_name(isvc), "namespace": namespace, "resourceVersion": "1"},
        "spec": {"rules": [{"backendRefs": backends}]},
    }


def _deployment(name: str, uri: str, ready: bool) -> Deployment:
    template = RevisionTemplate(annotations={}, labels={}, spec={}, storage_uri=uri, digest=uri)
    return Deployment(name=name, template=template, replicas=1, available_replicas=int(ready))


def world(**state: str) -> StandardWorld:
    """A Standard world whose KServe split lists the stable, ``m-canary`` and ``m-other``
    (all at 0/100, as v0.20 routes); ``state[name]`` is "ready" (default for the stable),
    "starting" (Deployment without an available replica) or "gone" (default for canaries)."""
    services = ((STABLE, V1), (CANARY, V2), (OTHER, V3))
    deployments: dict[str, Deployment] = {}
    for service, uri in services:
        kind = state.get(service, "ready" if service == STABLE else "gone")
        if kind != "gone":
            deployments[service] = _deployment(service, uri, kind == "ready")
    split = tuple((s, 100 if s == STABLE else 0, uri) for s, uri in services)
    return StandardWorld(deployments=deployments, ingress_created=True, split=split)


def percents(targets: list[SplitTarget]) -> list[tuple[str, int]]:
    return [(t.target, t.percent) for t in targets]


# --- which route belongs to which InferenceService ---------------------------------------


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("m-kserve-canary", (NS, "m")),
        ("scorer-v2-kserve-canary", (NS, "scorer-v2")),
        ("a-kserve-canary-kserve-canary", (NS, "a-kserve-canary")),
        ("kserve-canary", None),
        ("-kserve-canary", None),
        ("m-predictor", None),  # KServe's own route (post-v0.20) is not ours
        ("m-kserve-canary2", None),
        ("", None),
    ],
)
def test_route_owner(name: str, want: tuple[str, str] | None) -> None:
    assert route_owner({"metadata": {"name": name, "namespace": NS}}) == want


# --- the route's weights ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refs", "want"),
    [
        pytest.param([(STABLE, 90), (CANARY, 10)], [(STABLE, 90), (CANARY, 10)], id="weights"),
        pytest.param([(STABLE, None)], [(STABLE, 1)], id="weight-defaults-to-1"),
        pytest.param(
            [{"name": STABLE, "weight": 3}, {"name": CANARY, "kind": "Service", "group": ""}],
            [(STABLE, 3), (CANARY, 1)],
            id="group-and-kind-default-to-a-core-service",
        ),
        pytest.param(
            [(STABLE, 90), {"name": CANARY, "kind": "ServiceImport", "weight": 10}],
            [(STABLE, 90)],
            id="not-a-service",
        ),
        pytest.param(
            [(STABLE, 90), {"name": CANARY, "group": "multicluster.x-k8s.io", "weight": 10}],
            [(STABLE, 90)],
            id="another-group",
        ),
        pytest.param(
            [(STABLE, 90), {"name": CANARY, "namespace": "elsewhere", "weight": 10}],
            [(STABLE, 90)],
            id="another-namespace",
        ),
        pytest.param(
            [{"name": STABLE, "namespace": NS, "weight": 5}], [(STABLE, 5)], id="own-namespace"
        ),
        pytest.param([{"weight": 5}, {"name": "", "weight": 5}], [], id="no-name"),
        pytest.param(
            [{"name": STABLE, "weight": "5"}, {"name": CANARY, "weight": True}],
            [],
            id="weight-not-an-integer",
        ),
    ],
)
def test_backend_weights(refs: list[Ref], want: list[tuple[str, int]]) -> None:
    assert backend_weights(route(*refs)) == want


def test_only_the_first_rule_counts_and_no_rule_means_no_backend() -> None:
    two_rules = route((STABLE, 100))
    two_rules["spec"]["rules"].append(
        {"backendRefs": [{"name": CANARY, "kind": "Service", "weight": 100}]}
    )
    assert backend_weights(two_rules) == [(STABLE, 100)]
    assert backend_weights({"metadata": {"namespace": NS}, "spec": {}}) == []
    assert backend_weights({}) == []


# --- which Services exist ----------------------------------------------------------------


def test_standard_targets_follow_kserve_split_and_existing_deployments() -> None:
    assert standard_targets(world(**{CANARY: "starting"})) == [
        StandardTarget(STABLE, V1, ready=True, stable=True),
        StandardTarget(CANARY, V2, ready=False, stable=False),
    ]
    assert standard_targets(world(**{CANARY: "ready", OTHER: "ready"})) == [
        StandardTarget(STABLE, V1, ready=True, stable=True),
        StandardTarget(CANARY, V2, ready=True, stable=False),
        StandardTarget(OTHER, V3, ready=True, stable=False),
    ]
    assert standard_targets(StandardWorld()) == []  # stopped, or not reconciled yet


# --- the split ---------------------------------------------------------------------------

READY = {CANARY: "ready"}


@pytest.mark.parametrize(
    ("refs", "state", "want"),
    [
        pytest.param([(STABLE, 90), (CANARY, 10)], READY, [(STABLE, 90), (CANARY, 10)], id="90/10"),
        pytest.param([(STABLE, 75), (CANARY, 25)], READY, [(STABLE, 75), (CANARY, 25)], id="75/25"),
        pytest.param([(STABLE, 0), (CANARY, 100)], READY, [(STABLE, 0), (CANARY, 100)], id="0/100"),
        pytest.param(
            [(CANARY, 100)], READY, [(STABLE, 0), (CANARY, 100)], id="stable-not-in-the-route"
        ),
        pytest.param(
            [(STABLE, 100)], READY, [(STABLE, 100), (CANARY, 0)], id="canary-not-in-the-route"
        ),
        pytest.param(
            [(STABLE, 90), (CANARY, 10)],
            {},
            [(STABLE, 100)],
            id="missing-backend-renormalised",
        ),
        pytest.param(
            [(STABLE, 0), (CANARY, 100)],
            {},
            [(STABLE, 0)],
            id="missing-backend-leaves-nothing-with-weight",
        ),
        pytest.param(
            [(STABLE, 50), ("m-gone-predictor", 25), (CANARY, 25)],
            READY,
            [(STABLE, 67), (CANARY, 33)],
            id="missing-backend-among-three",
        ),
        pytest.param(
            [(STABLE, 75), (CANARY, 25)],
            {CANARY: "starting"},
            [(STABLE, 100), (CANARY, 0)],
            id="not-ready-canary-share-to-stable",
        ),
        pytest.param(
            [(STABLE, 0), (CANARY, 100)],
            {CANARY: "starting"},
            [(STABLE, 100), (CANARY, 0)],
            id="not-ready-canary-at-100",
        ),
        pytest.param(
            [(STABLE, 75), (CANARY, 25)],
            {STABLE: "starting", CANARY: "ready"},
            [(STABLE, 75), (CANARY, 25)],
            id="the-stable-gets-its-share-ready-or-not",
        ),
        pytest.param(
            [(STABLE, 50), (CANARY, 25), (OTHER, 25)],
            {CANARY: "ready", OTHER: "starting"},
            [(STABLE, 75), (CANARY, 25), (OTHER, 0)],
            id="two-canaries-one-not-ready",
        ),
        pytest.param(
            [(STABLE, None), (CANARY, None)], READY, [(STABLE, 50), (CANARY, 50)], id="no-weights"
        ),
        pytest.param(
            [(STABLE, 3), (CANARY, 1)], READY, [(STABLE, 75), (CANARY, 25)], id="weights-not-%"
        ),
        pytest.param(
            [(STABLE, 1), (CANARY, 1), (OTHER, 1)],
            {CANARY: "ready", OTHER: "ready"},
            [(STABLE, 34), (CANARY, 33), (OTHER, 33)],
            id="largest-remainder-ties-to-the-first",
        ),
        pytest.param(
            [(STABLE, 999), (CANARY, 1)],
            READY,
            [(STABLE, 100), (CANARY, 0)],
            id="under-half-a-percent-rounds-to-0",
        ),
        pytest.param(
            [(STABLE, 50), (CANARY, 25), (CANARY, 25)],
            READY,
            [(STABLE, 50), (CANARY, 50)],
            id="listed-twice-summed",
        ),
        pytest.param(
            [(STABLE, 0), (CANARY, 0)], READY, [(STABLE, 0), (CANARY, 0)], id="all-weights-0"
        ),
        pytest.param([], READY, [(STABLE, 0), (CANARY, 0)], id="no-backends"),
    ],
)
def test_route_split(refs: list[Ref], state: dict[str, str], want: list[tuple[str, int]]) -> None:
    targets = route_split(route(*refs), standard_targets(world(**state)))
    assert percents(targets) == want
    assert sum(t.percent for t in targets) in (0, 100)
    uris = {STABLE: V1, CANARY: V2, OTHER: V3}
    assert all(t.storage_uri == uris[t.target] and t.mode == "standard" for t in targets)


def test_a_stopped_inference_service_has_nothing_to_route_to() -> None:
    assert route_split(route((STABLE, 90), (CANARY, 10)), standard_targets(StandardWorld())) == []


KSERVE_STD = [SplitTarget(STABLE, 100, V1, "standard"), SplitTarget(CANARY, 0, V2, "standard")]
KSERVE_KN = [SplitTarget("m-predictor-00001", 100, V1, "knative")]


@pytest.mark.parametrize(
    ("kserve", "with_world", "with_route", "want"),
    [
        pytest.param(KSERVE_STD, True, True, [(STABLE, 75), (CANARY, 25)], id="route-wins"),
        pytest.param(KSERVE_STD, True, False, [(STABLE, 100), (CANARY, 0)], id="no-route"),
        pytest.param(KSERVE_KN, False, True, [("m-predictor-00001", 100)], id="knative-unaffected"),
        pytest.param([], False, True, [], id="gone"),
    ],
)
def test_gateway_split(
    kserve: list[SplitTarget], with_world: bool, with_route: bool, want: list[tuple[str, int]]
) -> None:
    w = world(**READY) if with_world else None
    r = route((STABLE, 75), (CANARY, 25)) if with_route else None
    assert percents(gateway_split(kserve, w, r)) == want


# --- the simulator's state ---------------------------------------------------------------


class Published:
    """What the gateway told the traffic simulator, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[tuple[str, int]]]] = []

    def __call__(self, namespace: str, name: str, targets: list[SplitTarget]) -> None:
        self.calls.append((namespace, name, percents(targets)))

    def last(self, name: str = ISVC) -> list[tuple[str, int]] | None:
        return next((c[2] for c in reversed(self.calls) if c[1] == name), None)


def gateway() -> tuple[GatewaySimulator, Published]:
    published = Published()
    return GatewaySimulator(cast(KubeClient, None), published), published


def event(kind: str, obj: dict[str, Any]) -> WatchEvent:
    return WatchEvent(cast(Any, kind), obj)


def standard_isvc(gw: GatewaySimulator, **state: str) -> None:
    gw.on_standard_world(NS, ISVC, world(**state))
    gw.on_split_change(NS, ISVC, KSERVE_STD)


def test_the_route_overrides_kserve_and_its_deletion_restores_kserve() -> None:
    gw, published = gateway()
    standard_isvc(gw, **READY)
    assert published.last() == [(STABLE, 100), (CANARY, 0)]
    gw.route_event(event("ADDED", route((STABLE, 90), (CANARY, 10))))
    assert published.last() == [(STABLE, 90), (CANARY, 10)]
    gw.route_event(event("MODIFIED", route((STABLE, 75), (CANARY, 25))))
    assert published.last() == [(STABLE, 75), (CANARY, 25)]
    assert percents(gw.split(NS, ISVC)) == [(STABLE, 75), (CANARY, 25)]
    gw.route_event(event("DELETED", route((STABLE, 75), (CANARY, 25))))
    assert published.last() == [(STABLE, 100), (CANARY, 0)]
    assert len(published.calls) == 4, "one publication per change"


def test_a_route_for_another_inference_service_is_ignored() -> None:
    gw, published = gateway()
    standard_isvc(gw, **READY)
    calls = len(published.calls)
    gw.route_event(event("ADDED", route((STABLE, 0), (CANARY, 100), isvc="other")))
    gw.route_event(event("ADDED", route((STABLE, 0), (CANARY, 100), namespace="elsewhere")))
    not_ours = route((STABLE, 0), (CANARY, 100))
    not_ours["metadata"]["name"] = STABLE  # e.g. KServe's own route
    gw.route_event(event("ADDED", not_ours))
    assert len(published.calls) == calls
    assert percents(gw.split(NS, ISVC)) == [(STABLE, 100), (CANARY, 0)]
    assert gw.split(NS, "other") == [], "no InferenceService, nothing to route"


def test_a_canary_gets_its_share_once_ready_and_loses_it_when_removed() -> None:
    gw, published = gateway()
    gw.route_event(event("ADDED", route((STABLE, 75), (CANARY, 25))))
    assert published.calls == [], "a route without an InferenceService routes nothing"
    standard_isvc(gw, **{CANARY: "starting"})
    assert published.last() == [(STABLE, 100), (CANARY, 0)]
    gw.on_standard_world(NS, ISVC, world(**READY))  # KServe's split does not move
    assert published.last() == [(STABLE, 75), (CANARY, 25)]
    gw.on_standard_world(NS, ISVC, world())  # rolled back: the canary is deleted
    gw.on_split_change(NS, ISVC, KSERVE_STD[:1])
    assert published.last() == [(STABLE, 100)]
    gw.on_standard_world(NS, ISVC, None)  # the InferenceService is gone
    gw.on_split_change(NS, ISVC, [])
    assert published.last() == []
    assert gw.split(NS, ISVC) == []


def test_knative_inference_services_keep_kserve_split() -> None:
    gw, published = gateway()
    gw.route_event(event("ADDED", route((STABLE, 0), ("m-predictor-00001", 100))))
    gw.on_split_change(NS, ISVC, KSERVE_KN)
    assert published.last() == [("m-predictor-00001", 100)]


def test_a_relist_replaces_every_route() -> None:
    gw, published = gateway()
    standard_isvc(gw, **READY)
    gw.on_standard_world(NS, "n", StandardWorld(split=(("n-predictor", 100, V1),)))
    gw.sync_routes([route((STABLE, 50), (CANARY, 50))])
    assert published.last() == [(STABLE, 50), (CANARY, 50)]
    gw.sync_routes([route((STABLE, 50), (CANARY, 50), isvc="n")])  # ours went while away
    assert published.last() == [(STABLE, 100), (CANARY, 0)]


def test_a_failing_publish_is_logged_and_the_gateway_goes_on() -> None:
    def refuse(_ns: str, _name: str, _targets: list[SplitTarget]) -> None:
        raise ValueError("refused")

    gw = GatewaySimulator(cast(KubeClient, None), refuse)
    standard_isvc(gw, **READY)
    gw.route_event(event("ADDED", route((STABLE, 90), (CANARY, 10))))
    assert percents(gw.split(NS, ISVC)) == [(STABLE, 90), (CANARY, 10)]


# --- wired to the KServe simulator, and its own watch loop ----------------------------------


def _isvc(canary: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1}}
    }
    if canary:
        model = {"modelFormat": {"name": "sklearn"}, "storageUri": V2}
        spec["canary"] = [{"predictor": {"name": "canary", "model": model}, "trafficPercent": 25}]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": ISVC,
            "namespace": NS,
            "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
        },
        "spec": spec,
    }


def test_driven_by_the_kserve_simulator(tmp_path: Path) -> None:
    path = tmp_path / "behaviour.yaml"
    BehaviourBook().with_model(V2, ModelBehaviour(ready_after_seconds=30)).save(path)
    kube = FakeKube()
    gw, published = gateway()
    sim = KServeSimulator(
        kube,
        BehaviourWatcher(path),
        namespaces=[NS],
        on_split_change=gw.on_split_change,
        on_standard_world=gw.on_standard_world,
    )
    gw.route_event(event("ADDED", route((STABLE, 75), (CANARY, 25))))
    kube.add(_isvc(canary=True))
    sim.run_once(T0)
    assert sim.effective_split(NS, ISVC) == KSERVE_STD
    assert published.last() == [(STABLE, 100), (CANARY, 0)], "the canary is starting"
    sim.run_once(T0 + 30)
    assert sim.effective_split(NS, ISVC) == KSERVE_STD, "v0.20: KServe routes nothing to it"
    assert published.last() == [(STABLE, 75), (CANARY, 25)], "ready: the route's share"
    kube.patch(INFERENCE_SERVICE, NS, ISVC, {"spec": {"canary": None}})
    sim.run_once(T0 + 31)
    assert published.last() == [(STABLE, 100)], "rolled back: the canary Service is gone"
    kube.delete(INFERENCE_SERVICE, NS, ISVC)
    sim.run_once(T0 + 32)
    assert published.last() == []


def test_the_watch_loop_relists_after_gone_and_backs_off_when_unavailable() -> None:
    kube = FakeKube()  # holds HTTPRoutes here
    kube.watch_failures = [
        Gone(410, "Expired", "too old resource version"),
        Unavailable(0, "Unavailable", "connection refused"),
    ]
    published = Published()
    gw = GatewaySimulator(kube, published, watch_timeout_seconds=1)
    standard_isvc(gw, **READY)
    first = route((STABLE, 90), (CANARY, 10))
    kube.objects[(NS, first["metadata"]["name"])] = first  # there before the first list
    before = set(threading.enumerate())

    def wait_for(want: list[tuple[str, int]]) -> None:
        deadline = time.monotonic() + 5
        while published.last() != want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert published.last() == want

    gw.start()
    try:
        wait_for([(STABLE, 90), (CANARY, 10)])
        kube.add(route((STABLE, 75), (CANARY, 25)))  # an ADDED event, once watching again
        wait_for([(STABLE, 75), (CANARY, 25)])
        kube.events.put(event("DELETED", route((STABLE, 75), (CANARY, 25))))
        wait_for([(STABLE, 100), (CANARY, 0)])
    finally:
        gw.stop()
    assert kube.lists == 2, "listed again after Gone, not after Unavailable"
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
