"""Shadow mirroring's own objects: the Istio VirtualService and the Gateway API HTTPRoute
(``canary.routing.istio_mirror``, ``canary.routing.gateway_mirror``, ``canary.routing.mirror``).

The pure builders write exactly the shared contract's shapes; the pure parsers read them
back and answer None for anything that is not such a mirror rule (the test bed's traffic
simulator reads our objects with them); the routers refuse to overwrite or delete an object
they did not write, and list only their own. The routers run against a fake apiserver that
keeps objects in memory and filters lists by equality label selectors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, cast

import pytest

from canary.k8s.client import (
    HTTP_ROUTE,
    VIRTUAL_SERVICE,
    KubeClient,
    NotFound,
    ResourceKind,
)
from canary.routing.gateway_mirror import GatewayMirrorRouter, http_route, observe_http_route
from canary.routing.istio_mirror import (
    IstioMirrorRouter,
    observe_virtual_service,
    virtual_service,
)
from canary.routing.mirror import (
    OWNED_SELECTOR,
    SHADOW_SUFFIX,
    MirrorError,
    MirrorObservation,
    MirrorRouter,
    MirrorSpec,
    champion_of,
    mirror_object_name,
    service_of_host,
)

NS = "fraud"
UID = "0b6f7c1e-4d2a-4f57-9a53-4c1d1f6c2a10"
ROLLOUT = "5f0c3a52-8f0e-4a4e-9d0c-2b8f1e7d6c11"
Json = dict[str, Any]


def spec(**changes: Any) -> MirrorSpec:
    values: dict[str, Any] = {
        "namespace": NS,
        "champion": "scorer",
        "champion_uid": UID,
        "rollout_id": ROLLOUT,
        "challenger": "scorer-next",
        "source_service": "scorer-predictor",
        "mirror_service": "scorer-next-predictor",
        "percent": 25,
    }
    values.update(changes)
    return MirrorSpec(**values)


LABELS = {
    "app.kubernetes.io/managed-by": "kserve-canary",
    "kserve-canary.io/purpose": "shadow",
    "kserve-canary.io/champion": "scorer",
    "kserve-canary.io/challenger": "scorer-next",
    "kserve-canary.io/rollout-id": ROLLOUT,
}
METADATA = {
    "name": "scorer-kserve-canary-shadow",
    "namespace": NS,
    "labels": LABELS,
    "ownerReferences": [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "name": "scorer",
            "uid": UID,
        }
    ],
}
SOURCE_FQDN = "scorer-predictor.fraud.svc.cluster.local"


# --- names and specs -------------------------------------------------------------------------


def test_the_object_name_carries_the_constant_suffix_and_gives_the_champion_back() -> None:
    assert SHADOW_SUFFIX == "kserve-canary-shadow"
    assert mirror_object_name("scorer") == "scorer-kserve-canary-shadow"
    assert spec().name == "scorer-kserve-canary-shadow"
    assert champion_of("scorer-kserve-canary-shadow") == "scorer"
    assert champion_of("scorer-kserve-canary") == ""  # the Standard router's route
    assert champion_of("-kserve-canary-shadow") == ""
    assert (
        OWNED_SELECTOR
        == "app.kubernetes.io/managed-by=kserve-canary,kserve-canary.io/purpose=shadow"
    )


@pytest.mark.parametrize("percent", [1, 50, 100])
def test_a_whole_percent_from_1_to_100_is_a_spec(percent: int) -> None:
    assert spec(percent=percent).percent == percent


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"percent": 0}, "from 1 to 100, not 0 (to stop mirroring, remove the mirror object)"),
        ({"percent": 101}, "from 1 to 100, not 101"),
        ({"percent": -5}, "from 1 to 100, not -5"),
        ({"percent": 12.5}, "from 1 to 100, not 12.5"),
        ({"percent": True}, "from 1 to 100, not True"),
        ({"percent": "10"}, "from 1 to 100, not '10'"),
        ({"port": 0}, "port must be from 1 to 65535, not 0"),
        ({"port": 70000}, "port must be from 1 to 65535"),
        ({"namespace": "Fraud"}, "namespace 'Fraud' is not a DNS label"),
        ({"champion": ""}, "champion '' is not a DNS label"),
        ({"challenger": "x" * 64}, "challenger"),
        ({"source_service": "9-predictor"}, "source_service '9-predictor' is not a DNS-1035 label"),
        ({"mirror_service": "a.b"}, "mirror_service 'a.b' is not a DNS-1035 label"),
        ({"champion_uid": ""}, "champion_uid is empty"),
        ({"rollout_id": ""}, "rollout_id is empty"),
        ({"rollout_id": "a b"}, "rollout_id: label 'kserve-canary.io/rollout-id'"),
        ({"mirror_service": "scorer-predictor"}, "copies would go back to the champion"),
    ],
)
def test_an_invalid_spec_is_refused_naming_the_field(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(MirrorError) as caught:
        spec(**changes)
    assert says in str(caught.value)


def test_a_dark_launch_names_the_champion_as_its_challenger() -> None:
    dark = spec(challenger="scorer", mirror_service="scorer-canary-predictor")
    labels = virtual_service(dark)["metadata"]["labels"]
    assert labels["kserve-canary.io/challenger"] == "scorer"
    assert labels["kserve-canary.io/champion"] == "scorer"


# --- builders: exactly the contract's shapes -------------------------------------------------


@pytest.mark.parametrize(
    ("options", "hosts", "gateways", "mirror_host"),
    [
        ({}, [SOURCE_FQDN], ["mesh"], "scorer-next-predictor.fraud.svc.cluster.local"),
        (
            {
                "gateways": ("mesh", "istio-system/knative-ingress"),
                "extra_hosts": ("scorer.fraud.models.example.com", SOURCE_FQDN),
            },
            [SOURCE_FQDN, "scorer.fraud.models.example.com"],  # the source host is not repeated
            ["mesh", "istio-system/knative-ingress"],
            "scorer-next-predictor.fraud.svc.cluster.local",
        ),
        (
            {"cluster_domain": "corp.internal"},
            ["scorer-predictor.fraud.svc.corp.internal"],
            ["mesh"],
            "scorer-next-predictor.fraud.svc.corp.internal",
        ),
    ],
)
def test_the_virtual_service_is_the_contract_s_shape(
    options: dict[str, Any], hosts: list[str], gateways: list[str], mirror_host: str
) -> None:
    assert virtual_service(spec(), **options) == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": METADATA,
        "spec": {
            "hosts": hosts,
            "gateways": gateways,
            "http": [
                {
                    "name": "kserve-canary-shadow",
                    "route": [{"destination": {"host": hosts[0], "port": {"number": 80}}}],
                    "mirror": {"host": mirror_host, "port": {"number": 80}},
                    "mirrorPercentage": {"value": 25.0},
                }
            ],
        },
    }


def _service(name: str, port: int = 80) -> Json:
    return {"group": "", "kind": "Service", "name": name, "port": port}


@pytest.mark.parametrize(
    ("options", "extra"),
    [
        ({}, {"parentRefs": [_service("scorer-predictor")]}),  # GAMMA: the source Service
        (
            {
                "parent_refs": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
                     "namespace": "gateways", "sectionName": "http"}
                ],
                "hostnames": ["scorer.fraud.models.example.com"],
            },
            {
                "parentRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
                     "namespace": "gateways", "sectionName": "http"}
                ],
                "hostnames": ["scorer.fraud.models.example.com"],
            },
        ),
    ],
)  # fmt: skip
def test_the_http_route_is_the_contract_s_shape(options: dict[str, Any], extra: Json) -> None:
    assert http_route(spec(), **options) == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": METADATA,
        "spec": {
            **extra,
            "rules": [
                {
                    "backendRefs": [_service("scorer-predictor")],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {
                                "backendRef": _service("scorer-next-predictor"),
                                "percent": 25,
                            },
                        }
                    ],
                }
            ],
        },
    }


def test_the_port_goes_to_every_service_reference() -> None:
    route = http_route(spec(port=8080))["spec"]
    assert route["parentRefs"] == [_service("scorer-predictor", 8080)]
    assert route["rules"][0]["backendRefs"] == [_service("scorer-predictor", 8080)]
    mirror = route["rules"][0]["filters"][0]["requestMirror"]["backendRef"]
    assert mirror == _service("scorer-next-predictor", 8080)
    rule = virtual_service(spec(port=8080))["spec"]["http"][0]
    assert rule["route"][0]["destination"]["port"] == {"number": 8080}
    assert rule["mirror"]["port"] == {"number": 8080}


def test_a_bad_cluster_domain_or_no_gateway_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cluster domain 'Cluster\.Local' is not a DNS name"):
        virtual_service(spec(), cluster_domain="Cluster.Local")
    with pytest.raises(ValueError, match=r"cluster domain 'cluster\.local\.' is not a DNS name"):
        IstioMirrorRouter(FakeKube(), cluster_domain="cluster.local.")
    with pytest.raises(ValueError, match="at least one gateway"):
        IstioMirrorRouter(FakeKube(), gateways=())


# --- parsers: round trips -------------------------------------------------------------------


def _expected(kind: str, percent: float, **changes: Any) -> MirrorObservation:
    values: dict[str, Any] = {
        "kind": kind,
        "namespace": NS,
        "name": "scorer-kserve-canary-shadow",
        "champion": "scorer",
        "challenger": "scorer-next",
        "rollout_id": ROLLOUT,
        "source_service": "scorer-predictor",
        "mirror_service": "scorer-next-predictor",
        "percent": percent,
        "managed": True,
        "owner_uid": UID,
        "resource_version": "",
    }
    values.update(changes)
    return MirrorObservation(**values)


@pytest.mark.parametrize("percent", [1, 25, 100])
def test_the_parsers_read_back_what_the_builders_write(percent: int) -> None:
    assert observe_virtual_service(virtual_service(spec(percent=percent))) == _expected(
        "istio", float(percent)
    )
    assert observe_http_route(http_route(spec(percent=percent))) == _expected(
        "gateway-api", float(percent)
    )
    with_gateway = http_route(spec(percent=percent), parent_refs=[{"name": "gw"}])
    assert observe_http_route(with_gateway) == _expected("gateway-api", float(percent))


def test_the_parsers_read_objects_as_the_apiserver_returns_them() -> None:
    """Defaults filled in (a rule's path match, a backend's weight), the percentage as the
    JSON number 25, a resourceVersion and managedFields."""
    vs = virtual_service(spec())
    vs["metadata"] |= {"resourceVersion": "812", "managedFields": [{"manager": "kserve-canary"}]}
    vs["spec"]["http"][0]["mirrorPercentage"]["value"] = 25
    assert observe_virtual_service(vs) == _expected("istio", 25.0, resource_version="812")
    route = http_route(spec())
    route["metadata"]["resourceVersion"] = "813"
    rule = route["spec"]["rules"][0]
    rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
    rule["backendRefs"][0]["weight"] = 1
    route["status"] = {"parents": []}
    assert observe_http_route(route) == _expected("gateway-api", 25.0, resource_version="813")


def _vs(edit: Callable[[Json], object]) -> Json:
    obj = virtual_service(spec())
    edit(obj)
    return obj


def _route(edit: Callable[[Json], object]) -> Json:
    obj = http_route(spec())
    edit(obj)
    return obj


def _fraction(fraction: Json) -> Callable[[Json], None]:
    """Replace the mirror filter's percent with ``fraction``."""

    def edit(obj: Json) -> None:
        mirror = _mirror_filter(obj)
        del mirror["percent"]
        mirror["fraction"] = fraction

    return edit


def _vs_rule(obj: Json) -> Json:
    rule: Json = obj["spec"]["http"][0]
    return rule


def _mirror_filter(obj: Json) -> Json:
    mirror: Json = obj["spec"]["rules"][0]["filters"][0]["requestMirror"]
    return mirror


@pytest.mark.parametrize(
    ("obj", "percent"),
    [
        (_vs(lambda o: _vs_rule(o).pop("mirrorPercentage")), 100.0),  # Istio: absent means all
        (_vs(lambda o: _vs_rule(o).update(mirrorPercentage={})), 0.0),  # the proto default
        (_vs(lambda o: _vs_rule(o).update(mirrorPercentage={"value": 0.5})), 0.5),
        (_vs(lambda o: _vs_rule(o).update(mirror={"host": "scorer-next-predictor"})), 25.0),
        (_vs(lambda o: _vs_rule(o).update(mirror={"host": "scorer-next-predictor.fraud"})), 25.0),
        (_route(lambda o: _mirror_filter(o).pop("percent")), 100.0),  # Gateway API: all
        (_route(lambda o: _mirror_filter(o).update(percent=0)), 0.0),
        (_route(_fraction({"numerator": 1, "denominator": 8})), 12.5),
        (_route(_fraction({"numerator": 30})), 30.0),  # the denominator defaults to 100
        (_route(lambda o: o["spec"]["rules"][0]["filters"].insert(0, {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": "ce-source", "value": "x"}]}})), 25.0),
    ],
)  # fmt: skip
def test_the_parsers_read_the_share_as_istio_and_gateway_api_define_it(
    obj: Json, percent: float
) -> None:
    parse = observe_virtual_service if obj["kind"] == "VirtualService" else observe_http_route
    observed = parse(obj)
    assert observed is not None
    assert observed.percent == pytest.approx(percent)
    assert observed.mirror_service == "scorer-next-predictor"


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(_vs(lambda o: o["spec"].pop("http")), id="vs-no-http"),
        pytest.param(_vs(lambda o: o["spec"].update(http=[])), id="vs-empty-http"),
        pytest.param(_vs(lambda o: o["spec"].update(http="x")), id="vs-http-not-a-list"),
        pytest.param(_vs(lambda o: o.update(spec=None)), id="vs-spec-null"),
        pytest.param(_vs(lambda o: o["spec"]["http"].append(_vs_rule(o))), id="vs-two-routes"),
        pytest.param(_vs(lambda o: _vs_rule(o).pop("mirror")), id="vs-mirror-missing"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirror={"port": {"number": 80}})),
                     id="vs-mirror-without-host"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirrorPercentage={"value": "25"})),
                     id="vs-percent-as-string"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirrorPercentage={"value": True})),
                     id="vs-percent-as-bool"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirrorPercentage={"value": 150})),
                     id="vs-percent-above-100"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirrorPercentage={"value": float("nan")})),
                     id="vs-percent-nan"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirrorPercentage=25)),
                     id="vs-percentage-not-an-object"),
        pytest.param(_vs(lambda o: _vs_rule(o)["route"].append(_vs_rule(o)["route"][0])),
                     id="vs-two-destinations"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(route=[])), id="vs-no-destination"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(
            mirror={"host": "scorer-next-predictor.other.svc.cluster.local"})),
            id="vs-mirror-in-another-namespace"),
        pytest.param(_vs(lambda o: _vs_rule(o).update(mirror={"host": "shadow.example.com"})),
                     id="vs-mirror-external-host"),
        pytest.param(_vs(lambda o: o.update(kind="DestinationRule")), id="vs-another-kind"),
        pytest.param(_vs(lambda o: o["metadata"].pop("namespace")), id="vs-no-namespace"),
        pytest.param(_vs(lambda o: o.update(metadata="x")), id="vs-metadata-not-an-object"),
        pytest.param(_route(lambda o: o["spec"].pop("rules")), id="route-no-rules"),
        pytest.param(_route(lambda o: o["spec"]["rules"].append(o["spec"]["rules"][0])),
                     id="route-two-rules"),
        pytest.param(_route(lambda o: o["spec"]["rules"][0].pop("filters")),
                     id="route-mirror-missing"),
        pytest.param(_route(lambda o: o["spec"]["rules"][0].update(filters=[1, "x"])),
                     id="route-filters-not-objects"),
        pytest.param(_route(lambda o: o["spec"]["rules"][0]["filters"].append(
            o["spec"]["rules"][0]["filters"][0])), id="route-two-mirror-filters"),
        pytest.param(_route(lambda o: _mirror_filter(o).update(percent="25")),
                     id="route-percent-as-string"),
        pytest.param(_route(lambda o: _mirror_filter(o).update(percent=25.0)),
                     id="route-percent-as-float"),
        pytest.param(_route(lambda o: _mirror_filter(o).update(percent=101)),
                     id="route-percent-above-100"),
        pytest.param(_route(lambda o: _mirror_filter(o).update(
            fraction={"numerator": 1, "denominator": 2})), id="route-percent-and-fraction"),
        pytest.param(_route(_fraction({"numerator": 3, "denominator": 2})),
                     id="route-fraction-above-one"),
        pytest.param(_route(_fraction({"numerator": 1, "denominator": 0})),
                     id="route-fraction-over-zero"),
        pytest.param(_route(_fraction({"numerator": "1"})), id="route-fraction-as-string"),
        pytest.param(_route(lambda o: _mirror_filter(o).pop("backendRef")),
                     id="route-mirror-without-backend"),
        pytest.param(_route(lambda o: _mirror_filter(o)["backendRef"].update(namespace="other")),
                     id="route-mirror-in-another-namespace"),
        pytest.param(_route(lambda o: _mirror_filter(o)["backendRef"].update(
            group="inference.networking.k8s.io", kind="InferencePool")),
            id="route-mirror-to-a-pool"),
        pytest.param(_route(lambda o: o["spec"]["rules"][0]["backendRefs"].append(
            _service("scorer-next-predictor"))), id="route-two-backends"),
        pytest.param(_route(lambda o: o.update(kind="GRPCRoute")), id="route-another-kind"),
    ],
)  # fmt: skip
def test_the_parsers_answer_none_for_what_is_not_a_mirror_rule(obj: Json) -> None:
    parse = observe_http_route if obj.get("kind") in ("HTTPRoute", "GRPCRoute") else (
        observe_virtual_service)  # fmt: skip
    assert parse(obj) is None


def test_the_parsers_read_labels_and_owner_of_an_object_not_ours() -> None:
    """A hand-written mirror rule is still read (the test bed mirrors what any such object
    says); it is reported as not managed, without our labels or owner."""
    vs = virtual_service(spec())
    vs["metadata"] = {"name": "scorer-kserve-canary-shadow", "namespace": NS}
    assert observe_virtual_service(vs) == _expected(
        "istio", 25.0, managed=False, challenger="", rollout_id="", owner_uid=None
    )
    route = http_route(spec())
    route["metadata"] = {
        "name": "hand-made",
        "namespace": NS,
        "labels": {"app.kubernetes.io/managed-by": "helm"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "uid": "d"}],
    }
    assert observe_http_route(route) == _expected(
        "gateway-api", 25.0, name="hand-made", champion="", challenger="", rollout_id="",
        managed=False, owner_uid=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("scorer-predictor", "scorer-predictor"),
        ("scorer-predictor.fraud", "scorer-predictor"),
        ("scorer-predictor.fraud.svc", "scorer-predictor"),
        ("scorer-predictor.fraud.svc.cluster.local", "scorer-predictor"),
        ("scorer-predictor.fraud.svc.corp.internal", "scorer-predictor"),
        ("scorer-predictor.other.svc.cluster.local", None),
        ("scorer-predictor.fraud.example.com", None),
        ("scorer.fraud.svc.Cluster.Local", None),
        ("*.fraud.svc.cluster.local", None),
        ("", None),
        (None, None),
        (80, None),
    ],
)
def test_a_host_names_a_service_of_the_namespace(host: Any, service: str | None) -> None:
    assert service_of_host(host, NS) == service


# --- the routers on a fake apiserver --------------------------------------------------------


class FakeKube(KubeClient):
    """Objects in memory by (resource, namespace, name); lists filtered by ``key=value``
    label selectors; server-side apply stores the body and bumps the resourceVersion."""

    def __init__(self) -> None:
        super().__init__(api=cast(Any, None))
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.version = 0
        self.writes: list[tuple[str, str, str]] = []  # (verb, resource, name)

    def put(self, kind: ResourceKind, obj: Mapping[str, Any]) -> None:
        stored = copy.deepcopy(dict(obj))
        self.version += 1
        stored["metadata"]["resourceVersion"] = str(self.version)
        meta = stored["metadata"]
        self.objects[(kind.plural, meta["namespace"], meta["name"])] = stored

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> Json:
        try:
            return copy.deepcopy(self.objects[(kind.plural, str(namespace), name)])
        except KeyError:
            raise NotFound(404, "NotFound", f'{kind.plural} "{name}" not found') from None

    def list(
        self, kind: ResourceKind, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[Json], str]:
        wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if part)
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self.objects.items(), reverse=True)
            if plural == kind.plural
            and namespace in (None, ns)
            and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return items, str(self.version)

    def apply(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = False,
    ) -> Json:
        assert (field_manager, force) == ("kserve-canary", True)
        assert body["metadata"]["namespace"] == namespace
        self.writes.append(("apply", kind.plural, body["metadata"]["name"]))
        self.put(kind, body)
        return self.get(kind, namespace, body["metadata"]["name"])

    def delete(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        self.writes.append(("delete", kind.plural, name))
        self.get(kind, namespace, name)
        del self.objects[(kind.plural, str(namespace), name)]


Kind = tuple[
    type[IstioMirrorRouter] | type[GatewayMirrorRouter],
    ResourceKind,
    Callable[[MirrorSpec], Json],
]
KINDS: dict[str, Kind] = {
    "istio": (IstioMirrorRouter, VIRTUAL_SERVICE, virtual_service),
    "gateway-api": (GatewayMirrorRouter, HTTP_ROUTE, http_route),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def router_for(kind: str, kube: FakeKube) -> MirrorRouter:
    router: MirrorRouter = KINDS[kind][0](kube)  # both satisfy the protocol
    return router


def test_apply_writes_the_object_and_observe_reads_it(kind: str) -> None:
    kube = FakeKube()
    router = router_for(kind, kube)
    assert router.kind == kind
    assert router.observe(NS, "scorer") is None
    written = router.apply(spec())
    assert written == _expected(kind, 25.0, resource_version="1")
    resource, build = KINDS[kind][1], KINDS[kind][2]
    stored = kube.get(resource, NS, "scorer-kserve-canary-shadow")
    assert stored == {**build(spec()), "metadata": {**METADATA, "resourceVersion": "1"}}
    updated = router.apply(spec(percent=60, rollout_id="r2"))  # in place, by apply again
    assert updated.percent == 60.0
    assert updated.rollout_id == "r2"
    assert router.observe(NS, "scorer") == updated
    assert kube.writes == [("apply", resource.plural, "scorer-kserve-canary-shadow")] * 2


def _foreign(kind: str, labels: dict[str, str]) -> Json:
    obj = KINDS[kind][2](spec(percent=5))
    obj["metadata"] = {"name": "scorer-kserve-canary-shadow", "namespace": NS, "labels": labels}
    return obj


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({}, "it exists and is not managed by kserve-canary (no label "
             "app.kubernetes.io/managed-by=kserve-canary)"),
        ({"app.kubernetes.io/managed-by": "helm", "kserve-canary.io/purpose": "shadow"},
         "is not managed by kserve-canary"),
        ({"app.kubernetes.io/managed-by": "kserve-canary"},
         "is managed by kserve-canary but is not a shadow mirror"),
    ],
)  # fmt: skip
def test_an_object_not_ours_is_never_overwritten_nor_deleted(
    kind: str, labels: dict[str, str], says: str
) -> None:
    kube = FakeKube()
    resource = KINDS[kind][1]
    kube.put(resource, _foreign(kind, labels))
    before = kube.get(resource, NS, "scorer-kserve-canary-shadow")
    router = router_for(kind, kube)
    where = f"{resource.kind} fraud/scorer-kserve-canary-shadow"
    with pytest.raises(MirrorError) as refused:
        router.apply(spec())
    assert f"cannot write {where}: " in str(refused.value)
    assert says in str(refused.value)
    assert "then try again" in str(refused.value)  # and what to do
    with pytest.raises(MirrorError) as refused:
        router.remove(NS, "scorer")
    assert f"cannot delete {where}: " in str(refused.value)
    assert kube.writes == []
    assert kube.get(resource, NS, "scorer-kserve-canary-shadow") == before
    seen = router.observe(NS, "scorer")  # still read, as what it is
    assert seen is not None
    assert seen.managed is (labels.get("app.kubernetes.io/managed-by") == "kserve-canary")
    assert seen.percent == 5.0


def test_remove_deletes_ours_and_is_false_when_there_is_none(kind: str) -> None:
    kube = FakeKube()
    router = router_for(kind, kube)
    assert router.remove(NS, "scorer") is False
    router.apply(spec())
    assert router.remove(NS, "scorer") is True
    assert router.observe(NS, "scorer") is None
    assert router.remove(NS, "scorer") is False
    plural = KINDS[kind][1].plural
    assert kube.writes == [("apply", plural, mirror_object_name("scorer")),
                           ("delete", plural, mirror_object_name("scorer"))]  # fmt: skip


def test_remove_is_false_when_the_object_went_between_read_and_delete(kind: str) -> None:
    class Racing(FakeKube):
        def delete(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
            del self.objects[(kind.plural, str(namespace), name)]  # another sweep got there
            super().delete(kind, namespace, name)

    kube = Racing()
    router = router_for(kind, kube)
    router.apply(spec())
    assert router.remove(NS, "scorer") is False


def test_a_hand_edited_object_of_ours_mirrors_nothing_and_is_still_swept(kind: str) -> None:
    kube = FakeKube()
    router = router_for(kind, kube)
    resource = KINDS[kind][1]
    router.apply(spec())
    edited = kube.get(resource, NS, "scorer-kserve-canary-shadow")
    edited["spec"].pop("http" if kind == "istio" else "rules")
    kube.put(resource, edited)
    seen = router.observe(NS, "scorer")
    assert seen is not None
    assert (seen.percent, seen.source_service, seen.mirror_service) == (0.0, "", "")
    assert (seen.managed, seen.champion, seen.owner_uid) == (True, "scorer", UID)
    assert [o.name for o in router.owned(NS)] == ["scorer-kserve-canary-shadow"]
    assert router.apply(spec()).percent == 25.0  # written whole again


def test_owned_lists_only_our_shadow_objects_of_its_kind(kind: str) -> None:
    kube = FakeKube()
    router = router_for(kind, kube)
    other_kind = IstioMirrorRouter(kube) if kind == "gateway-api" else GatewayMirrorRouter(kube)
    resource = KINDS[kind][1]
    router.apply(spec())
    router.apply(
        spec(namespace="risk", champion="limits", challenger="limits-b",
             source_service="limits-predictor", mirror_service="limits-b-predictor")
    )  # fmt: skip
    other_kind.apply(spec(champion="aml", source_service="aml-predictor"))
    foreign = _foreign(kind, {"app.kubernetes.io/managed-by": "kserve-canary"})  # not shadow
    foreign["metadata"]["name"] = "route-kserve-canary"
    kube.put(resource, foreign)
    hand_made = _foreign(kind, {"kserve-canary.io/purpose": "shadow"})  # not managed
    hand_made["metadata"]["name"] = "hand-made"
    kube.put(resource, hand_made)

    everywhere = router.owned(None)
    assert [(o.namespace, o.name) for o in everywhere] == [
        ("fraud", "scorer-kserve-canary-shadow"),
        ("risk", "limits-kserve-canary-shadow"),
    ]
    assert {o.kind for o in everywhere} == {kind}
    assert everywhere[1].challenger == "limits-b"
    assert [o.name for o in router.owned("risk")] == ["limits-kserve-canary-shadow"]
    assert router.owned("elsewhere") == []
