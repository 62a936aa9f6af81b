"""The test bed's mesh for shadow traffic (``testbed.mirror``): kserve-canary's
VirtualService or HTTPRoute decides which share of a champion's simulated requests is
copied, and to which simulated pod.

The pure readers and the Service mapping are table-driven (the contract's shapes and
hand-edited odd ones); the :class:`MirrorSimulator` is fed as the simulators process feeds
it and records what it publishes; two tests drive it with the real KServe and traffic
simulators, and one runs its own watch loops on a fake apiserver.
"""

from __future__ import annotations

import copy
import queue
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from canary.k8s.client import (
    HTTP_ROUTE,
    INFERENCE_SERVICE,
    VIRTUAL_SERVICE,
    Gone,
    KubeClient,
    ResourceKind,
    Unavailable,
    WatchEvent,
)
from testbed.behaviour import BehaviourBook, BehaviourWatcher, ModelBehaviour
from testbed.gateway import GatewaySimulator
from testbed.kserve.controller import KServeSimulator, SplitTarget
from testbed.kserve.standard import Deployment, StandardWorld
from testbed.kserve.template import RevisionTemplate
from testbed.mirror import (
    SHADOW_SELECTOR,
    Backend,
    MirrorSimulator,
    MirrorSpec,
    MirrorState,
    UnreadableMirror,
    cluster_services,
    mirror_target,
    read_http_route,
    read_mirror,
    read_virtual_service,
)
from testbed.traffic import Target, TrafficSimulator
from tests.unit.test_kserve_knative import FakeKube

NS = "models"
CHAMPION, CHALLENGER = "scorer", "scorer-v3"
V1, V3 = "s3://models/v1", "s3://models/v3"
REV = "scorer-v3-predictor-00001"
T0 = 1_800_000_000.0
LABELS = {
    "app.kubernetes.io/managed-by": "kserve-canary",
    "kserve-canary.io/purpose": "shadow",
    "kserve-canary.io/champion": CHAMPION,
    "kserve-canary.io/challenger": CHALLENGER,
    "kserve-canary.io/rollout-id": "r-1",
}


def metadata(name: str = f"{CHAMPION}-kserve-canary-shadow", **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NS,
        "resourceVersion": "1",
        "labels": {**LABELS, **labels},
    }


def virtual_service(
    rule: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The contract's VirtualService; ``rule`` replaces its one http rule, ``meta`` its
    metadata."""
    source = f"{CHAMPION}-predictor.{NS}.svc.cluster.local"
    if rule is None:
        rule = {
            "name": "kserve-canary-shadow",
            "route": [{"destination": {"host": source, "port": {"number": 80}}}],
            "mirror": {
                "host": f"{CHALLENGER}-predictor.{NS}.svc.cluster.local",
                "port": {"number": 80},
            },
            "mirrorPercentage": {"value": 12.5},
        }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata() if meta is None else meta,
        "spec": {"hosts": [source], "gateways": ["mesh"], "http": [rule]},
    }


def http_route(
    mirror: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The contract's HTTPRoute; ``mirror`` replaces its requestMirror, ``meta`` its
    metadata."""
    source = {"group": "", "kind": "Service", "name": f"{CHAMPION}-predictor", "port": 80}
    if mirror is None:
        mirror = {
            "backendRef": {
                "group": "",
                "kind": "Service",
                "name": f"{CHALLENGER}-predictor",
                "port": 80,
            },
            "percent": 25,
        }
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata() if meta is None else meta,
        "spec": {
            "parentRefs": [source],
            "rules": [
                {
                    "backendRefs": [source],
                    "filters": [{"type": "RequestMirror", "requestMirror": mirror}],
                }
            ],
        },
    }


def spec(kind: str, service: str | None, percent: float, note: str = "") -> MirrorSpec:
    return MirrorSpec(
        kind, NS, f"{CHAMPION}-kserve-canary-shadow", CHAMPION, service, percent, note
    )


CHALLENGER_SVC = f"{CHALLENGER}-predictor"
VS_RULE_BASE = {"route": [{"destination": {"host": "scorer-predictor"}}]}


def vs_rule(**fields: Any) -> dict[str, Any]:
    return {**VS_RULE_BASE, **fields}


# --- reading a VirtualService -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "want"),
    [
        pytest.param(None, spec("VirtualService", CHALLENGER_SVC, 12.5), id="as-written"),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}),
            spec("VirtualService", CHALLENGER_SVC, 100.0),
            id="no-percentage-mirrors-everything",
        ),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}, mirrorPercentage={}),
            spec("VirtualService", CHALLENGER_SVC, 0.0),
            id="empty-percentage-is-zero",
        ),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}, mirrorPercentage={"value": 30}),
            spec("VirtualService", CHALLENGER_SVC, 30.0),
            id="integer-value",
        ),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}, mirrorPercent=40),
            spec("VirtualService", CHALLENGER_SVC, 40.0),
            id="deprecated-mirrorPercent",
        ),
        pytest.param(
            vs_rule(
                mirror={"host": CHALLENGER_SVC}, mirrorPercentage={"value": 5}, mirrorPercent=40
            ),
            spec("VirtualService", CHALLENGER_SVC, 5.0),
            id="mirrorPercentage-wins",
        ),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}, mirrorPercentage={"value": 250.0}),
            spec("VirtualService", CHALLENGER_SVC, 100.0),
            id="clamped-above",
        ),
        pytest.param(
            vs_rule(mirror={"host": CHALLENGER_SVC}, mirrorPercentage={"value": -3}),
            spec("VirtualService", CHALLENGER_SVC, 0.0),
            id="clamped-below",
        ),
        pytest.param(
            vs_rule(mirror={"host": f"{CHALLENGER_SVC}.{NS}"}),
            spec("VirtualService", CHALLENGER_SVC, 100.0),
            id="host-with-namespace",
        ),
        pytest.param(
            vs_rule(mirror={"host": f"{CHALLENGER_SVC}.{NS}.svc.corp.example"}),
            spec("VirtualService", CHALLENGER_SVC, 100.0),
            id="another-cluster-domain",
        ),
        pytest.param(
            vs_rule(mirror={"host": f"{CHALLENGER_SVC}.elsewhere.svc.cluster.local"}),
            spec(
                "VirtualService",
                None,
                100.0,
                f"mirror host {CHALLENGER_SVC}.elsewhere.svc.cluster.local is not in namespace "
                f"{NS}",
            ),
            id="another-namespace",
        ),
        pytest.param(
            vs_rule(
                mirrors=[
                    {"destination": {"host": CHALLENGER_SVC}, "percentage": {"value": 7.5}},
                    {"destination": {"host": "other-predictor"}},
                ]
            ),
            spec("VirtualService", CHALLENGER_SVC, 7.5),
            id="mirrors-list-first-entry",
        ),
        pytest.param(
            vs_rule(mirrors=[{"destination": {"host": CHALLENGER_SVC}}]),
            spec("VirtualService", CHALLENGER_SVC, 100.0),
            id="mirrors-list-without-percentage",
        ),
        pytest.param(
            vs_rule(),
            spec("VirtualService", None, 100.0, "the first http rule has no mirror host"),
            id="no-mirror",
        ),
        pytest.param(
            vs_rule(mirror={"port": {"number": 80}}),
            spec("VirtualService", None, 100.0, "the first http rule has no mirror host"),
            id="mirror-without-host",
        ),
    ],
)
def test_read_virtual_service(rule: dict[str, Any] | None, want: MirrorSpec) -> None:
    assert read_virtual_service(virtual_service(rule)) == want


def test_only_the_first_http_rule_counts() -> None:
    obj = virtual_service(vs_rule())
    obj["spec"]["http"].append(vs_rule(mirror={"host": CHALLENGER_SVC}))
    assert read_virtual_service(obj).service is None
    no_rules = virtual_service()
    no_rules["spec"] = {}
    assert read_virtual_service(no_rules).note == "the first http rule has no mirror host"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(
            virtual_service(meta={"name": "x", "namespace": NS, "labels": {}}),
            "VirtualService models/x has no kserve-canary.io/champion label",
            id="no-champion",
        ),
        pytest.param(
            virtual_service(vs_rule(mirror={"host": "a"}, mirrorPercentage={"value": "50"})),
            "mirrorPercentage.value is not a number: '50'",
            id="string-value",
        ),
        pytest.param(
            virtual_service(vs_rule(mirror={"host": "a"}, mirrorPercent=True)),
            "mirrorPercent is not a number: True",
            id="bool-percent",
        ),
    ],
)
def test_an_unreadable_virtual_service_says_why(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(UnreadableMirror, match=message):
        read_virtual_service(obj)


# --- reading an HTTPRoute -----------------------------------------------------------------

REF = {"group": "", "kind": "Service", "name": CHALLENGER_SVC, "port": 80}


@pytest.mark.parametrize(
    ("mirror", "want"),
    [
        pytest.param(None, spec("HTTPRoute", CHALLENGER_SVC, 25.0), id="as-written"),
        pytest.param(
            {"backendRef": {"name": CHALLENGER_SVC, "port": 80}},
            spec("HTTPRoute", CHALLENGER_SVC, 100.0),
            id="defaults-core-service-and-100-percent",
        ),
        pytest.param(
            {"backendRef": REF, "fraction": {"numerator": 1, "denominator": 8}},
            spec("HTTPRoute", CHALLENGER_SVC, 12.5),
            id="fraction",
        ),
        pytest.param(
            {"backendRef": REF, "fraction": {"numerator": 5}},
            spec("HTTPRoute", CHALLENGER_SVC, 5.0),
            id="fraction-denominator-defaults-to-100",
        ),
        pytest.param(
            {"backendRef": REF, "percent": 0},
            spec("HTTPRoute", CHALLENGER_SVC, 0.0),
            id="zero",
        ),
        pytest.param(
            {"backendRef": {**REF, "namespace": NS}, "percent": 10},
            spec("HTTPRoute", CHALLENGER_SVC, 10.0),
            id="own-namespace",
        ),
        pytest.param(
            {"backendRef": {**REF, "namespace": "elsewhere"}, "percent": 10},
            spec(
                "HTTPRoute",
                None,
                10.0,
                f"the mirror backend {CHALLENGER_SVC} is not in namespace {NS}",
            ),
            id="another-namespace",
        ),
        pytest.param(
            {"backendRef": {**REF, "kind": "ServiceImport"}, "percent": 10},
            spec("HTTPRoute", None, 10.0, f"the mirror backend {CHALLENGER_SVC} is not a Service"),
            id="not-a-service",
        ),
        pytest.param(
            {"backendRef": {**REF, "group": "multicluster.x-k8s.io"}, "percent": 10},
            spec("HTTPRoute", None, 10.0, f"the mirror backend {CHALLENGER_SVC} is not a Service"),
            id="another-group",
        ),
        pytest.param(
            {"backendRef": {"port": 80}, "percent": 10},
            spec("HTTPRoute", None, 10.0, "the RequestMirror filter has no backendRef name"),
            id="no-name",
        ),
    ],
)
def test_read_http_route(mirror: dict[str, Any] | None, want: MirrorSpec) -> None:
    assert read_http_route(http_route(mirror)) == want


def test_the_first_request_mirror_filter_of_the_first_rule_counts() -> None:
    route = http_route()
    rule = route["spec"]["rules"][0]
    rule["filters"].insert(0, {"type": "RequestHeaderModifier", "requestHeaderModifier": {}})
    rule["filters"].append(
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "other"}}}
    )
    assert read_http_route(route) == spec("HTTPRoute", CHALLENGER_SVC, 25.0)
    route["spec"]["rules"].insert(0, {"backendRefs": rule["backendRefs"]})
    assert read_http_route(route) == spec(
        "HTTPRoute", None, 100.0, "the first rule has no RequestMirror filter"
    )


@pytest.mark.parametrize(
    ("mirror", "message"),
    [
        ({"backendRef": REF, "percent": "25"}, "requestMirror.percent is not a number"),
        ({"backendRef": REF, "fraction": {}}, "fraction.numerator is not a number: None"),
        (
            {"backendRef": REF, "fraction": {"numerator": 1, "denominator": 0}},
            "denominator is 0",
        ),
    ],
)
def test_an_unreadable_http_route_says_why(mirror: dict[str, Any], message: str) -> None:
    with pytest.raises(UnreadableMirror, match=message):
        read_http_route(http_route(mirror))


def test_read_mirror_dispatches_on_the_kind() -> None:
    assert read_mirror(virtual_service()).kind == "VirtualService"
    assert read_mirror(http_route()).kind == "HTTPRoute"
    with pytest.raises(UnreadableMirror, match="kind 'DestinationRule'"):
        read_mirror({**virtual_service(), "kind": "DestinationRule"})


# --- which Services exist, and where a mirror goes ------------------------------------------


def _deployment(name: str, uri: str, ready: bool = True) -> Deployment:
    template = RevisionTemplate(annotations={}, labels={}, spec={}, storage_uri=uri, digest=uri)
    return Deployment(name=name, template=template, replicas=1, available_replicas=int(ready))


def standard_world(*deployments: tuple[str, str, bool]) -> StandardWorld:
    """Deployments (name, storage URI, ready); KServe's split lists them in order."""
    return StandardWorld(
        deployments={name: _deployment(name, uri, ready) for name, uri, ready in deployments},
        ingress_created=True,
        split=tuple(
            (name, 100 if i == 0 else 0, uri) for i, (name, uri, _) in enumerate(deployments)
        ),
    )


def test_cluster_services_of_both_modes() -> None:
    splits = {
        CHALLENGER: [SplitTarget(REV, 100, V3, "knative")],
        "ranker": [SplitTarget("ranker-predictor", 100, V1, "standard")],  # the world decides
    }
    worlds = {
        "ranker": standard_world(
            ("ranker-predictor", V1, True), ("ranker-shadow-predictor", V3, False)
        )
    }
    assert cluster_services(splits, worlds) == {
        f"{REV}-private": Backend(CHALLENGER, Target(REV, 0, V3, "knative"), ready=True),
        "ranker-predictor": Backend(
            "ranker", Target("ranker-predictor", 0, V1, "standard"), ready=True
        ),
        "ranker-shadow-predictor": Backend(
            "ranker", Target("ranker-shadow-predictor", 0, V3, "standard"), ready=False
        ),
    }


@pytest.mark.parametrize(
    ("service", "want"),
    [
        pytest.param(f"{REV}-private", (Target(REV, 0, V3, "knative"), ""), id="private-service"),
        pytest.param(
            REV, (None, f"Service {NS}/{REV} does not exist"), id="knative-public-name-not-ours"
        ),
        pytest.param(
            "scorer-v3-predictor-00002-private",
            (None, f"Service {NS}/scorer-v3-predictor-00002-private does not exist"),
            id="revision-not-routed",
        ),
        pytest.param(
            "scorer-canary-predictor",
            (Target("scorer-canary-predictor", 0, V3, "standard"), ""),
            id="dark-launch-canary-entry",
        ),
        pytest.param(
            "scorer-starting-predictor",
            (None, f"Service {NS}/scorer-starting-predictor has no ready endpoints"),
            id="no-ready-endpoints",
        ),
        pytest.param(None, (None, "the first http rule has no mirror host"), id="no-service"),
    ],
)
def test_mirror_target(service: str | None, want: tuple[Target | None, str]) -> None:
    services = cluster_services(
        {CHALLENGER: [SplitTarget(REV, 100, V3, "knative")]},
        {
            CHAMPION: standard_world(
                ("scorer-predictor", V1, True),
                ("scorer-canary-predictor", V3, True),
                ("scorer-starting-predictor", V3, False),
            )
        },
    )
    note = "" if service else "the first http rule has no mirror host"
    assert mirror_target(spec("VirtualService", service, 50.0, note), services) == want


# --- the simulator, fed by hand --------------------------------------------------------------


class Published:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Target | None, float]] = []

    def __call__(
        self, namespace: str, champion: str, target: Target | None, percent: float
    ) -> None:
        self.calls.append((namespace, champion, target, percent))

    def last(self) -> tuple[str | None, float] | None:
        if not self.calls:
            return None
        _, _, target, percent = self.calls[-1]
        return (target.revision if target else None, percent)


def event(kind: str, obj: dict[str, Any]) -> WatchEvent:
    return WatchEvent(cast(Any, kind), obj)


def knative_challenger(sim: MirrorSimulator, revision: str = REV) -> None:
    sim.on_split_change(NS, CHALLENGER, [SplitTarget(revision, 100, V3, "knative")])


def vs_to(host: str, percent: float = 10.0) -> dict[str, Any]:
    return virtual_service(vs_rule(mirror={"host": host}, mirrorPercentage={"value": percent}))


def test_a_mirror_follows_its_object_and_the_services_that_exist() -> None:
    published = Published()
    sim = MirrorSimulator(cast(KubeClient, None), published)
    sim.object_event(
        VIRTUAL_SERVICE, event("ADDED", vs_to(f"{REV}-private.{NS}.svc.cluster.local"))
    )
    assert published.calls == []  # nothing to mirror to yet, nothing said
    state = sim.state(NS, CHAMPION)
    assert state == MirrorState(None, 0.0, f"Service {NS}/{REV}-private does not exist")
    assert sim.missing_total == 1

    knative_challenger(sim)  # the challenger's revision comes up
    assert published.calls == [(NS, CHAMPION, Target(REV, 0, V3, "knative"), 10.0)]

    knative_challenger(sim, "scorer-v3-predictor-00002")  # replaced; the object is stale
    assert published.last() == (None, 0.0)
    assert sim.missing_total == 2

    sim.object_event(
        VIRTUAL_SERVICE, event("MODIFIED", vs_to("scorer-v3-predictor-00002-private", 50.0))
    )
    assert published.last() == ("scorer-v3-predictor-00002", 50.0)
    sim.object_event(VIRTUAL_SERVICE, event("DELETED", vs_to("whatever")))
    assert published.last() == (None, 0.0)
    assert sim.state(NS, CHAMPION) is None
    assert sim.missing_total == 2


def test_a_standard_mode_challenger_is_mirrored_once_its_deployment_is_ready() -> None:
    published = Published()
    sim = MirrorSimulator(cast(KubeClient, None), published)
    sim.object_event(HTTP_ROUTE, event("ADDED", http_route()))
    world = standard_world((CHALLENGER_SVC, V3, False))
    sim.on_standard_world(NS, CHALLENGER, world)
    assert published.calls == []
    assert sim.state(NS, CHAMPION) == MirrorState(
        None, 0.0, f"Service {NS}/{CHALLENGER_SVC} has no ready endpoints"
    )
    sim.on_standard_world(NS, CHALLENGER, standard_world((CHALLENGER_SVC, V3, True)))
    assert published.calls == [(NS, CHAMPION, Target(CHALLENGER_SVC, 0, V3, "standard"), 25.0)]
    sim.on_standard_world(NS, CHALLENGER, None)  # the challenger was deleted
    assert published.last() == (None, 0.0)


def test_a_relist_replaces_every_object_of_its_kind() -> None:
    published = Published()
    sim = MirrorSimulator(cast(KubeClient, None), published)
    knative_challenger(sim)
    sim.sync_objects(VIRTUAL_SERVICE, [vs_to(f"{REV}-private")])
    assert published.last() == (REV, 10.0)
    sim.sync_objects(HTTP_ROUTE, [])  # the other kind's relist changes nothing
    assert len(published.calls) == 1
    sim.sync_objects(VIRTUAL_SERVICE, [])  # deleted while the watch was away
    assert published.last() == (None, 0.0)


def test_an_unreadable_object_mirrors_nothing_and_duplicates_use_the_first() -> None:
    published = Published()
    sim = MirrorSimulator(cast(KubeClient, None), published)
    knative_challenger(sim)
    sim.object_event(VIRTUAL_SERVICE, event("ADDED", vs_to(f"{REV}-private", 10.0)))
    assert published.last() == (REV, 10.0)
    route = http_route(
        {"backendRef": {"name": f"{REV}-private"}, "percent": 60}, meta=metadata("hand-made")
    )
    sim.object_event(HTTP_ROUTE, event("ADDED", route))
    assert published.last() == (REV, 60.0)  # HTTPRoute/hand-made sorts first
    sim.object_event(HTTP_ROUTE, event("DELETED", route))
    assert published.last() == (REV, 10.0)
    broken = vs_to(f"{REV}-private", 10.0)
    del broken["metadata"]["labels"]["kserve-canary.io/champion"]
    sim.object_event(VIRTUAL_SERVICE, event("MODIFIED", broken))
    assert published.last() == (None, 0.0)


def test_a_refused_publish_is_logged_and_tried_again_on_the_next_change() -> None:
    calls: list[float] = []

    def refuse_once(_ns: str, _champion: str, _target: Target | None, percent: float) -> None:
        calls.append(percent)
        if len(calls) == 1:
            raise ValueError("refused")

    sim = MirrorSimulator(cast(KubeClient, None), refuse_once)
    knative_challenger(sim)
    sim.object_event(VIRTUAL_SERVICE, event("ADDED", vs_to(f"{REV}-private", 10.0)))
    assert sim.state(NS, CHAMPION) is None
    knative_challenger(sim)  # any later change of the namespace
    assert calls == [10.0, 10.0]
    assert sim.state(NS, CHAMPION) == MirrorState(Target(REV, 0, V3, "knative"), 10.0, "")


# --- wired to the KServe, Gateway and traffic simulators ------------------------------------


def _isvc(name: str, uri: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": NS,
            "annotations": {"serving.kserve.io/deploymentMode": mode},
        },
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}},
    }


@pytest.mark.parametrize(
    ("mode", "shadow_object", "mirror"),
    [
        pytest.param(
            "Knative",
            vs_to(f"{REV}-private.{NS}.svc.cluster.local", 40.0),
            Target(REV, 0, V3, "knative"),
            id="knative-virtualservice",
        ),
        pytest.param(
            "Standard",
            http_route({"backendRef": REF, "percent": 40}),
            Target(CHALLENGER_SVC, 0, V3, "standard"),
            id="standard-httproute",
        ),
    ],
)
def test_driven_by_the_kserve_simulator(
    tmp_path: Path, mode: str, shadow_object: dict[str, Any], mirror: Target
) -> None:
    path = tmp_path / "behaviour.yaml"
    models = BehaviourBook(default_rate=1000.0).with_rate(NS, CHALLENGER, 0.0)
    models.with_model(V3, ModelBehaviour(error_rate=0.0)).save(path)
    traffic = TrafficSimulator(
        BehaviourWatcher(path), tmp_path / "targets.json", rng=random.Random(9)
    )

    def publish(namespace: str, name: str, targets: list[SplitTarget]) -> None:
        traffic.set_routes(
            namespace, name, [Target(t.target, t.percent, t.storage_uri, t.mode) for t in targets]
        )

    gateway = GatewaySimulator(cast(KubeClient, None), publish)
    mesh = MirrorSimulator(cast(KubeClient, None), traffic.set_mirror)

    def on_split_change(namespace: str, name: str, targets: list[SplitTarget]) -> None:
        gateway.on_split_change(namespace, name, targets)
        mesh.on_split_change(namespace, name, targets)

    def on_standard_world(namespace: str, name: str, world: StandardWorld | None) -> None:
        gateway.on_standard_world(namespace, name, world)
        mesh.on_standard_world(namespace, name, world)

    kube = FakeKube()
    kserve = KServeSimulator(
        kube,
        BehaviourWatcher(path),
        namespaces=[NS],
        on_split_change=on_split_change,
        on_standard_world=on_standard_world,
    )
    kind = VIRTUAL_SERVICE if shadow_object["kind"] == "VirtualService" else HTTP_ROUTE
    mesh.object_event(kind, event("ADDED", shadow_object))
    kube.add(_isvc(CHAMPION, V1, mode))
    kube.add(_isvc(CHALLENGER, V3, mode))
    kserve.run_once(T0)
    assert mesh.state(NS, CHAMPION) == MirrorState(mirror, 40.0, "")
    for _ in range(10):
        traffic.tick(1.0)
    champion = traffic.routes(NS, CHAMPION)[0].revision
    assert traffic.counts(NS, champion).requests == 10_000
    assert traffic.counts(NS, champion).mirrored == 0
    copies = traffic.counts(NS, mirror.revision)
    assert copies.mirrored == copies.requests  # the challenger has no traffic of its own
    assert abs(copies.requests - 4_000) < 4 * (10_000 * 0.4 * 0.6) ** 0.5

    kube.delete(INFERENCE_SERVICE, NS, CHALLENGER)
    kserve.run_once(T0 + 1)
    state = mesh.state(NS, CHAMPION)
    assert state is not None
    assert state.target is None
    with pytest.raises(KeyError):
        traffic.counts(NS, mirror.revision)  # the pod is gone with its InferenceService


# --- its own watch loops ----------------------------------------------------------------------


class ShadowKube(KubeClient):
    """Holds VirtualServices and HTTPRoutes; records the label selectors it is asked for."""

    def __init__(self) -> None:
        super().__init__(api=cast(Any, None))
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            VIRTUAL_SERVICE.kind: {},
            HTTP_ROUTE.kind: {},
        }
        self.events: dict[str, queue.Queue[WatchEvent]] = {
            VIRTUAL_SERVICE.kind: queue.Queue(),
            HTTP_ROUTE.kind: queue.Queue(),
        }
        self.failures: dict[str, list[Exception]] = {VIRTUAL_SERVICE.kind: [], HTTP_ROUTE.kind: []}
        self.lists: dict[str, int] = {VIRTUAL_SERVICE.kind: 0, HTTP_ROUTE.kind: 0}
        self.selectors: set[str | None] = set()
        self.version = 0

    def put(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        key = (stored["metadata"]["namespace"], stored["metadata"]["name"])
        if type_ == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = stored
        self.events[kind].put(WatchEvent(cast(Any, type_), stored))

    def list(
        self, kind: ResourceKind, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        self.selectors.add(label_selector)
        self.lists[kind.kind] += 1
        items = [copy.deepcopy(o) for o in self.objects[kind.kind].values()]
        for item in items:
            del item["kind"]  # list items need not say their kind
        return items, str(self.version)

    def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
    ) -> Iterator[WatchEvent]:
        self.selectors.add(label_selector)
        if self.failures[kind.kind]:
            raise self.failures[kind.kind].pop(0)
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:
            try:
                yield self.events[kind.kind].get(timeout=0.02)
            except queue.Empty:
                continue


def test_the_watch_loops_relist_after_gone_and_back_off_when_unavailable() -> None:
    kube = ShadowKube()
    kube.failures[VIRTUAL_SERVICE.kind] = [
        Gone(410, "Expired", "too old resource version"),
        Unavailable(0, "Unavailable", "connection refused"),
    ]
    kube.objects[VIRTUAL_SERVICE.kind][(NS, "scorer-kserve-canary-shadow")] = vs_to(
        f"{REV}-private", 10.0
    )  # there before the first list
    published = Published()
    sim = MirrorSimulator(kube, published, watch_timeout_seconds=1)
    knative_challenger(sim)
    before = set(threading.enumerate())

    def wait_for(want: tuple[str | None, float]) -> None:
        deadline = time.monotonic() + 5
        while published.last() != want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert published.last() == want

    sim.start()
    try:
        wait_for((REV, 10.0))
        kube.put(VIRTUAL_SERVICE.kind, "MODIFIED", vs_to(f"{REV}-private", 30.0))
        wait_for((REV, 30.0))
        kube.put(VIRTUAL_SERVICE.kind, "DELETED", vs_to(f"{REV}-private", 30.0))
        wait_for((None, 0.0))
        route = http_route({"backendRef": {"name": f"{REV}-private"}, "percent": 20})
        kube.put(HTTP_ROUTE.kind, "ADDED", route)
        wait_for((REV, 20.0))
    finally:
        sim.stop()
    assert kube.lists[VIRTUAL_SERVICE.kind] == 2, "listed again after Gone, not after Unavailable"
    assert kube.selectors == {SHADOW_SELECTOR}
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
