"""The shadow mirror routers against a real kube-apiserver with the real Istio
VirtualService and Gateway API HTTPRoute CRDs (installed by the test bed).

What a platform team relies on: the objects we write are accepted by the CRDs' schemas (and
the schemas do check them: a share they refuse is refused), they read back as written
(after the apiserver's defaulting), a new share is written in place, removal is final and
idempotent, the cleanup sweep finds ours in every namespace, and an object of the same name
that we did not write is never touched.

Each test works in namespaces of its own; no InferenceService is needed (the owner
reference names a uid, and the test bed runs no garbage collector).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from canary.k8s.client import (
    HTTP_ROUTE,
    VIRTUAL_SERVICE,
    Invalid,
    KubeClient,
    NotFound,
    ResourceKind,
)
from canary.routing.gateway_mirror import GatewayMirrorRouter, http_route
from canary.routing.istio_mirror import IstioMirrorRouter, virtual_service
from canary.routing.mirror import MirrorError, MirrorRouter, MirrorSpec, mirror_object_name
from canary.settings import load_settings
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

CHAMPION = "scorer"
NAME = mirror_object_name(CHAMPION)
Json = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    resource: ResourceKind
    make: Callable[[KubeClient], MirrorRouter]
    build: Callable[[MirrorSpec], Json]


def _configured_istio(kube: KubeClient) -> MirrorRouter:
    settings = load_settings(
        shadow_mirror="istio",
        shadow_istio_gateways="mesh,istio-system/knative-ingress-gateway",
        shadow_istio_hosts="scorer.fraud.models.example.com",
    )
    return IstioMirrorRouter(
        kube,
        gateways=settings.shadow_istio_gateways,
        extra_hosts=settings.shadow_istio_hosts,
        cluster_domain=settings.cluster_domain,
    )


def _configured_gateway(kube: KubeClient) -> MirrorRouter:
    settings = load_settings(
        shadow_mirror="gateway-api",
        shadow_route_parent_refs=[
            {"name": "inference-gateway", "namespace": "gateways", "sectionName": "http"}
        ],
        shadow_route_hostnames="scorer.fraud.models.example.com",
    )
    return GatewayMirrorRouter(
        kube,
        parent_refs=[ref.as_ref() for ref in settings.shadow_route_parent_refs],
        hostnames=settings.shadow_route_hostnames,
    )


KINDS = {
    "istio-mesh": Kind(VIRTUAL_SERVICE, IstioMirrorRouter, virtual_service),
    "istio-configured": Kind(VIRTUAL_SERVICE, _configured_istio, virtual_service),
    "gateway-api-gamma": Kind(HTTP_ROUTE, GatewayMirrorRouter, http_route),
    "gateway-api-configured": Kind(HTTP_ROUTE, _configured_gateway, http_route),
}


class Bed:
    """One test's namespaces and router."""

    def __init__(self, testbed: Testbed, kind: Kind) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.kube = testbed.kube
        self.testbed = testbed
        self.kind = kind
        self.router = kind.make(self.kube)
        self.namespace = testbed.namespace(f"mirror-{self.token}")
        self.uid = str(uuid.uuid4())

    def spec(self, namespace: str | None = None, **changes: Any) -> MirrorSpec:
        values: Json = {
            "namespace": namespace or self.namespace,
            "champion": CHAMPION,
            "champion_uid": self.uid,
            "rollout_id": f"rollout-{self.token}",
            "challenger": "scorer-next",
            "source_service": "scorer-predictor",
            "mirror_service": "scorer-next-predictor",
            "percent": 10,
        }
        values.update(changes)
        return MirrorSpec(**values)

    def stored(self, namespace: str | None = None) -> Json:
        return self.kube.get(self.kind.resource, namespace or self.namespace, NAME)


@pytest.fixture(params=sorted(KINDS))
def bed(request: pytest.FixtureRequest, testbed: Testbed) -> Bed:
    return Bed(testbed, KINDS[request.param])


def test_the_crd_accepts_the_object_and_observe_reads_it_back(bed: Bed) -> None:
    written = bed.router.apply(bed.spec())
    stored = bed.stored()
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kserve-canary",
        "kserve-canary.io/purpose": "shadow",
        "kserve-canary.io/champion": CHAMPION,
        "kserve-canary.io/challenger": "scorer-next",
        "kserve-canary.io/rollout-id": f"rollout-{bed.token}",
    }
    assert stored["metadata"]["ownerReferences"] == [
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
         "name": CHAMPION, "uid": bed.uid}
    ]  # fmt: skip
    managers = {entry["manager"] for entry in stored["metadata"]["managedFields"]}
    assert managers == {"kserve-canary"}
    # what we wrote survived the schema's pruning (an unknown field would have been dropped)
    built = bed.kind.build(bed.spec())["spec"]
    for field in built:
        if field not in ("rules",):  # the apiserver adds a rule's default match
            assert stored["spec"][field] == built[field], field
    observed = bed.router.observe(bed.namespace, CHAMPION)
    assert observed == written
    assert observed is not None
    assert (observed.source_service, observed.mirror_service) == (
        "scorer-predictor", "scorer-next-predictor"
    )  # fmt: skip
    assert (observed.percent, observed.managed, observed.owner_uid) == (10.0, True, bed.uid)
    assert observed.resource_version == stored["metadata"]["resourceVersion"]


def test_a_new_share_is_written_in_place(bed: Bed) -> None:
    first = bed.router.apply(bed.spec())
    uid = bed.stored()["metadata"]["uid"]
    second = bed.router.apply(bed.spec(percent=75))
    assert second.percent == 75.0
    assert second.resource_version != first.resource_version
    assert bed.stored()["metadata"]["uid"] == uid  # the same object, not a new one
    observed = bed.router.observe(bed.namespace, CHAMPION)
    assert observed is not None
    assert observed.percent == 75.0


def test_remove_deletes_and_a_second_remove_finds_nothing(bed: Bed) -> None:
    assert bed.router.remove(bed.namespace, CHAMPION) is False
    bed.router.apply(bed.spec())
    assert bed.router.remove(bed.namespace, CHAMPION) is True
    with pytest.raises(NotFound):
        bed.stored()
    assert bed.router.observe(bed.namespace, CHAMPION) is None
    assert bed.router.remove(bed.namespace, CHAMPION) is False


def test_owned_finds_ours_across_namespaces_and_nothing_else(bed: Bed) -> None:
    other = bed.testbed.namespace(f"mirror-other-{bed.token}")
    bed.router.apply(bed.spec())
    bed.router.apply(bed.spec(other, percent=50))
    foreign = bed.kind.build(bed.spec())
    foreign["metadata"] = {"name": "hand-made", "labels": {"kserve-canary.io/purpose": "shadow"}}
    bed.kube.create(bed.kind.resource, bed.namespace, foreign)

    ours = {bed.namespace, other}
    everywhere = [(o.namespace, o.name, o.percent) for o in bed.router.owned(None)]
    assert [entry for entry in everywhere if entry[0] in ours] == sorted(
        [(bed.namespace, NAME, 10.0), (other, NAME, 50.0)]
    )
    assert [(o.namespace, o.name) for o in bed.router.owned(other)] == [(other, NAME)]
    assert bed.router.remove(other, CHAMPION) is True
    assert [o.namespace for o in bed.router.owned(None) if o.namespace in ours] == [bed.namespace]


def test_an_object_of_that_name_that_is_not_ours_is_left_intact(bed: Bed) -> None:
    theirs = bed.kind.build(bed.spec(percent=3))
    theirs["metadata"] = {"name": NAME, "labels": {"team": "fraud-platform"}}
    bed.kube.create(bed.kind.resource, bed.namespace, theirs)
    before = bed.stored()

    with pytest.raises(MirrorError) as refused:
        bed.router.apply(bed.spec())
    assert f"{bed.kind.resource.kind} {bed.namespace}/{NAME}" in str(refused.value)
    assert "is not managed by kserve-canary" in str(refused.value)
    with pytest.raises(MirrorError):
        bed.router.remove(bed.namespace, CHAMPION)

    after = bed.stored()
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"] == before["spec"]
    observed = bed.router.observe(bed.namespace, CHAMPION)
    assert observed is not None
    assert (observed.managed, observed.percent) == (False, 3.0)
    assert bed.router.owned(bed.namespace) == []


def _share_as_text(obj: Json) -> None:
    obj["spec"]["http"][0]["mirrorPercentage"]["value"] = "10"


def _percent_101(obj: Json) -> None:
    obj["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"] = 101


def _percent_and_fraction(obj: Json) -> None:
    obj["spec"]["rules"][0]["filters"][0]["requestMirror"]["fraction"] = {"numerator": 1}


@pytest.mark.parametrize(
    ("resource", "build", "spoil", "field", "apply"),
    [
        pytest.param(VIRTUAL_SERVICE, virtual_service, _share_as_text, "mirrorPercentage.value",
                     False, id="istio-share-as-text"),
        pytest.param(HTTP_ROUTE, http_route, _percent_101, "requestMirror.percent", True,
                     id="gateway-api-percent-101"),
        pytest.param(HTTP_ROUTE, http_route, _percent_and_fraction,
                     "Only one of percent or fraction", True, id="gateway-api-both-forms"),
    ],
)  # fmt: skip
def test_a_share_the_schema_refuses_is_refused_by_the_apiserver(
    testbed: Testbed,
    resource: ResourceKind,
    build: Callable[[MirrorSpec], Json],
    spoil: Callable[[Json], None],
    field: str,
    apply: bool,
) -> None:
    """The CRDs' schemas are in play: a mirror object spoilt by hand after the builder is
    refused (422), and nothing is stored. Values of the right type go through server-side
    apply, as the routers write; a value of the wrong type is created instead, because
    server-side apply may fail such a body before validation, with a 500."""
    namespace = testbed.namespace(f"mirror-schema-{uuid.uuid4().hex[:8]}")
    mirror = MirrorSpec(
        namespace=namespace, champion=CHAMPION, champion_uid=str(uuid.uuid4()),
        rollout_id="r1", challenger="scorer-next", source_service="scorer-predictor",
        mirror_service="scorer-next-predictor", percent=10,
    )  # fmt: skip
    body = copy.deepcopy(build(mirror))
    spoil(body)
    kube = testbed.kube

    def write() -> Json:
        if apply:
            return kube.apply(resource, namespace, body, field_manager="kserve-canary", force=True)
        return kube.create(resource, namespace, body)

    with pytest.raises(Invalid) as refused:
        write()
    assert field in f"{refused.value.message} {refused.value.causes}"
    with pytest.raises(NotFound):
        testbed.kube.get(resource, namespace, NAME)
