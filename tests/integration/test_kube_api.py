"""The real apiserver with the real KServe CRD behaves the way our controller must cope with.

These are the behaviours a mock would hide: the CRD schema rejecting a string percent (422),
strategic-merge patches refused on custom resources (415), stale writes refused (409), the
status subresource ignoring spec, and watches delivering changes in order.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from canary.k8s.client import (
    INFERENCE_SERVICE,
    Conflict,
    Invalid,
    KubeClient,
    UnsupportedMediaType,
    WatchEvent,
)

pytestmark = pytest.mark.integration

# Objects with this label are left alone by the test bed's KServe simulator.
UNMANAGED_LABEL = "sandbox.kserve-canary.io/simulator"


def isvc(name: str, storage_uri: str = "s3://models/fraud/v1") -> dict[str, Any]:
    """An InferenceService the KServe simulator leaves alone, so that only the apiserver's
    own behaviour is under test here."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {"kserve-canary.io/enabled": "true"},
            "labels": {UNMANAGED_LABEL: "off"},
        },
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": storage_uri},
            }
        },
    }


def test_create_get_list_and_merge_patch(kube: KubeClient, namespace: str) -> None:
    created = kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    assert created["metadata"]["generation"] == 1
    fetched = kube.get(INFERENCE_SERVICE, namespace, "scorer")
    assert fetched["spec"]["predictor"]["model"]["storageUri"] == "s3://models/fraud/v1"
    items, version = kube.list(INFERENCE_SERVICE, namespace)
    assert [i["metadata"]["name"] for i in items] == ["scorer"]
    assert version

    # The one write that starts a canary: new model and first step together.
    patched = kube.patch(
        INFERENCE_SERVICE,
        namespace,
        "scorer",
        {
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": 10,
                    "model": {"storageUri": "s3://models/fraud/v2"},
                }
            }
        },
        resource_version=fetched["metadata"]["resourceVersion"],
    )
    predictor = patched["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == "s3://models/fraud/v2"
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}, "merge patch keeps siblings"
    assert patched["metadata"]["generation"] == 2


def test_strategic_merge_patch_is_refused_with_415(kube: KubeClient, namespace: str) -> None:
    kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    with pytest.raises(UnsupportedMediaType) as caught:
        kube.patch(
            INFERENCE_SERVICE,
            namespace,
            "scorer",
            {"spec": {"predictor": {"canaryTrafficPercent": 10}}},
            patch_type="strategic",
        )
    assert caught.value.status == 415
    current = kube.get(INFERENCE_SERVICE, namespace, "scorer")
    assert "canaryTrafficPercent" not in current["spec"]["predictor"]


def test_stale_resource_version_is_refused_with_409(kube: KubeClient, namespace: str) -> None:
    first = kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    stale = first["metadata"]["resourceVersion"]
    kube.patch(INFERENCE_SERVICE, namespace, "scorer",
               {"spec": {"predictor": {"canaryTrafficPercent": 25}}})  # fmt: skip
    with pytest.raises(Conflict) as caught:
        kube.patch(
            INFERENCE_SERVICE,
            namespace,
            "scorer",
            {"spec": {"predictor": {"canaryTrafficPercent": 50}}},
            resource_version=stale,
        )
    assert caught.value.status == 409
    with pytest.raises(Conflict):
        kube.replace(INFERENCE_SERVICE, namespace, "scorer", first)
    current = kube.get(INFERENCE_SERVICE, namespace, "scorer")
    assert current["spec"]["predictor"]["canaryTrafficPercent"] == 25, "nothing was lost"


def test_the_crd_schema_rejects_a_string_percent_with_422(kube: KubeClient, namespace: str) -> None:
    kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    with pytest.raises(Invalid) as caught:
        kube.patch(INFERENCE_SERVICE, namespace, "scorer",
                   {"spec": {"predictor": {"canaryTrafficPercent": "ten"}}})  # fmt: skip
    assert caught.value.status == 422
    assert "canaryTrafficPercent" in caught.value.message
    bad = isvc("other")
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(Invalid):
        kube.create(INFERENCE_SERVICE, namespace, bad)


def test_status_subresource_ignores_spec(kube: KubeClient, namespace: str) -> None:
    created = kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    body = {**created, "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                                         "storageUri": "s3://evil"}}}}  # fmt: skip
    body["status"] = {"url": "http://scorer.example.com"}
    updated = kube.replace_status(INFERENCE_SERVICE, namespace, "scorer", body)
    assert updated["status"]["url"] == "http://scorer.example.com"
    assert updated["spec"]["predictor"]["model"]["storageUri"] == "s3://models/fraud/v1"
    assert updated["metadata"]["generation"] == 1, "a status write is not a spec change"


def test_watch_delivers_changes_in_order(kube: KubeClient, namespace: str) -> None:
    _, version = kube.list(INFERENCE_SERVICE, namespace)
    seen: list[WatchEvent] = []
    done = threading.Event()

    def watch() -> None:
        for event in kube.watch(INFERENCE_SERVICE, namespace, resource_version=version,
                                timeout_seconds=20):  # fmt: skip
            if event.type != "BOOKMARK":
                seen.append(event)
            if event.type == "DELETED":
                break
        done.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    kube.create(INFERENCE_SERVICE, namespace, isvc("scorer"))
    kube.patch(INFERENCE_SERVICE, namespace, "scorer",
               {"spec": {"predictor": {"canaryTrafficPercent": 10}}})  # fmt: skip
    kube.delete(INFERENCE_SERVICE, namespace, "scorer")
    assert done.wait(20), "the watch did not report the deletion"
    types = [e.type for e in seen]
    assert types[0] == "ADDED"
    assert types[-1] == "DELETED"
    assert "MODIFIED" in types
    versions = [int(e.resource_version) for e in seen]
    assert versions == sorted(versions)
