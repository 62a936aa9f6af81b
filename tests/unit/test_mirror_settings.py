"""The shadow mirroring settings and ``canary.app.mirror_router``: which router the
controller gets, and that what an operator configures ends up in the object it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from canary.app import mirror_router
from canary.k8s.client import HTTP_ROUTE, VIRTUAL_SERVICE
from canary.routing.mirror import MirrorSpec
from canary.settings import SettingsError, load_settings
from tests.unit.test_mirror_routers import FakeKube, spec


@pytest.fixture(autouse=True)
def _no_shadow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KSC_SHADOW_MIRROR", "KSC_SHADOW_ISTIO_GATEWAYS", "KSC_SHADOW_ISTIO_HOSTS",
        "KSC_SHADOW_ROUTE_PARENT_REFS", "KSC_SHADOW_ROUTE_HOSTNAMES", "KSC_CLUSTER_DOMAIN",
        "KSC_CONFIG_FILE",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_by_default_there_is_no_mirror_router() -> None:
    settings = load_settings()
    assert settings.shadow_mirror == "none"
    assert settings.shadow_istio_gateways == ("mesh",)
    assert settings.cluster_domain == "cluster.local"
    assert mirror_router(settings, FakeKube()) is None


def _written(settings_overrides: dict[str, Any], mirror: MirrorSpec) -> dict[str, Any]:
    kube = FakeKube()
    router = mirror_router(load_settings(**settings_overrides), kube)
    assert router is not None
    router.apply(mirror)
    (obj,) = kube.objects.values()
    return obj


def test_istio_settings_reach_the_virtual_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSC_SHADOW_MIRROR", "istio")
    monkeypatch.setenv("KSC_SHADOW_ISTIO_GATEWAYS", "mesh, istio-system/knative-ingress-gateway")
    monkeypatch.setenv("KSC_SHADOW_ISTIO_HOSTS", "scorer.fraud.models.example.com")
    monkeypatch.setenv("KSC_CLUSTER_DOMAIN", "corp.internal")
    router = mirror_router(load_settings(), FakeKube())
    assert router is not None
    assert router.kind == "istio"
    vs = _written({}, spec())
    assert vs["kind"] == VIRTUAL_SERVICE.kind
    assert vs["spec"]["gateways"] == ["mesh", "istio-system/knative-ingress-gateway"]
    assert vs["spec"]["hosts"] == [
        "scorer-predictor.fraud.svc.corp.internal",
        "scorer.fraud.models.example.com",
    ]
    assert vs["spec"]["http"][0]["mirror"]["host"] == (
        "scorer-next-predictor.fraud.svc.corp.internal"
    )


def test_gateway_api_settings_reach_the_http_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "shadow-mirror: gateway-api\n"
        "shadow-route-parent-refs:\n"
        "  - {name: inference-gateway, namespace: gateways, sectionName: http}\n"
        "shadow-route-hostnames: scorer.fraud.models.example.com\n"
    )
    monkeypatch.setenv("KSC_CONFIG_FILE", str(config))
    monkeypatch.setenv("KSC_SHADOW_ROUTE_PARENT_REFS", json.dumps([{"name": "env-gateway"}]))
    route = _written({}, spec())  # the environment beats the file
    assert [ref["name"] for ref in route["spec"]["parentRefs"]] == ["env-gateway"]
    monkeypatch.delenv("KSC_SHADOW_ROUTE_PARENT_REFS")
    route = _written({}, spec())
    assert route["kind"] == HTTP_ROUTE.kind
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gateway",
         "namespace": "gateways", "sectionName": "http"}
    ]  # fmt: skip
    assert route["spec"]["hostnames"] == ["scorer.fraud.models.example.com"]


def test_gateway_api_without_parent_refs_attaches_to_the_source_service() -> None:
    route = _written({"shadow_mirror": "gateway-api"}, spec())
    assert route["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "scorer-predictor", "port": 80}
    ]
    assert "hostnames" not in route["spec"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"shadow_mirror": "linkerd"}, "setting shadow_mirror: Input should be 'none', 'istio'"),
        ({"shadow_istio_gateways": ""}, "name at least one gateway"),
        ({"shadow_istio_gateways": "mesh,Istio-System/gw"}, "'Istio-System/gw' is not a gateway"),
        ({"shadow_istio_gateways": "a/b/c"}, "'a/b/c' is not a gateway"),
        ({"shadow_istio_hosts": "Scorer.example.com"}, "is not a hostname"),
        ({"shadow_route_hostnames": "http://scorer"}, "is not a hostname"),
        ({"shadow_route_parent_refs": [{"namespace": "x"}]}, "shadow_route_parent_refs.0.name"),
        ({"cluster_domain": "cluster.local."}, "setting cluster_domain: 'cluster.local.' is not"),
        ({"cluster_domain": "*.local"}, "is not a DNS name"),
        ({"cluster_domain": ""}, "is not a DNS name"),
    ],
)
def test_bad_shadow_settings_are_refused_by_name(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert says in str(caught.value)
