"""The watch cache: reconciles read their InferenceService from memory, never an older
version than one already seen, and never from a scope whose watch is broken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canary.k8s.client import INFERENCE_SERVICE, LEASE, Conflict, KubeClient
from canary.k8s.informer import ObjectCache


def obj(name: str, version: str, namespace: str = "fraud", **spec: Any) -> dict[str, Any]:
    meta = {"namespace": namespace, "name": name, "resourceVersion": version}
    return {"metadata": meta, "spec": dict(spec)}


def version_of(cache: ObjectCache, name: str, namespace: str = "fraud") -> str | None:
    found = cache.get(namespace, name)
    return None if found is None else found["metadata"]["resourceVersion"]


def test_nothing_is_served_before_a_list_nor_after_the_watch_breaks() -> None:
    cache = ObjectCache()
    cache.apply("ADDED", obj("a", "5"))
    assert cache.get("fraud", "a") is None  # seen, but the scope was never listed
    cache.replace(None, [obj("a", "6")], "6")
    assert version_of(cache, "a") == "6"
    cache.unsync(None)
    assert cache.get("fraud", "a") is None
    cache.replace(None, [obj("a", "7")], "7")
    assert version_of(cache, "a") == "7"


def test_a_namespace_scope_serves_its_namespace_only() -> None:
    cache = ObjectCache()
    cache.replace("fraud", [obj("a", "5")], "5")
    cache.apply("ADDED", obj("b", "6", namespace="credit"))
    assert version_of(cache, "a") == "5"
    assert cache.get("credit", "b") is None
    cache.replace("credit", [obj("b", "6", namespace="credit")], "6")
    cache.unsync("fraud")
    assert cache.get("fraud", "a") is None
    assert version_of(cache, "b", "credit") == "6"


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # a write's answer, then the watch's older event for an earlier change: kept ours
        ([("offer", "12"), ("MODIFIED", "11")], "12"),
        ([("offer", "12"), ("MODIFIED", "13")], "13"),
        # a list taken before our write does not undo it
        ([("offer", "12"), ("list", "10")], "12"),
        ([("MODIFIED", "12"), ("list", "14")], "14"),
        # a delete older than what we hold is ignored; a newer one removes it
        ([("MODIFIED", "12"), ("DELETED", "11")], "12"),
        ([("MODIFIED", "12"), ("DELETED", "13")], None),
        # versions that are not numbers: the last one seen wins
        ([("MODIFIED", "x2"), ("MODIFIED", "x1")], "x1"),
        # bookmarks and errors carry no object change
        ([("MODIFIED", "12"), ("BOOKMARK", "15")], "12"),
    ],
    ids=["write-then-old-event", "write-then-new-event", "write-then-old-list", "new-list",
         "old-delete", "new-delete", "opaque-versions", "bookmark"],
)  # fmt: skip
def test_an_older_version_never_replaces_a_newer_one(
    steps: list[tuple[str, str]], expected: str | None
) -> None:
    cache = ObjectCache()
    cache.replace(None, [obj("a", "1")], "1")
    for kind, version in steps:
        if kind == "offer":
            cache.offer(obj("a", version))
        elif kind == "list":
            cache.replace(None, [obj("a", version)], version)
        else:
            cache.apply(kind, obj("a", version))
    assert version_of(cache, "a") == expected


def test_a_list_drops_what_was_deleted_while_the_watch_was_down() -> None:
    cache = ObjectCache()
    cache.replace(None, [obj("a", "3"), obj("b", "4")], "4")
    cache.offer(obj("c", "9"))  # written by us after the next list was taken
    cache.replace(None, [obj("a", "3")], "8")
    assert cache.get("fraud", "b") is None
    assert version_of(cache, "c") == "9"
    assert len(cache) == 2


def test_readers_get_their_own_copy() -> None:
    cache = ObjectCache()
    written = obj("a", "3", canaryTrafficPercent=10)
    cache.replace(None, [], "1")
    cache.offer(written)
    written["spec"]["canaryTrafficPercent"] = 100  # the writer's copy
    mine = cache.get("fraud", "a")
    assert mine is not None
    assert mine["spec"]["canaryTrafficPercent"] == 10
    mine["spec"]["canaryTrafficPercent"] = 50
    again = cache.get("fraud", "a")
    assert again is not None
    assert again["spec"]["canaryTrafficPercent"] == 10


# ---------------------------------------------------------------------------------------
# KubeClient.read_through
# ---------------------------------------------------------------------------------------

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: controller, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: controller}}]
current-context: x
"""


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.answer: dict[str, Any] = obj("a", "20")

    def __call__(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.sent.append((method, path))
        return dict(self.answer)


@pytest.fixture
def client(tmp_path: Path) -> tuple[KubeClient, Recorder, ObjectCache]:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    kube = KubeClient.from_kubeconfig(path)
    recorder = Recorder()
    kube._request = recorder  # type: ignore[method-assign]
    cache = ObjectCache()
    kube.read_through(INFERENCE_SERVICE, cache)
    return kube, recorder, cache


def test_gets_are_served_from_a_synced_cache_and_go_out_otherwise(
    client: tuple[KubeClient, Recorder, ObjectCache],
) -> None:
    kube, sent, cache = client
    assert kube.get(INFERENCE_SERVICE, "fraud", "a")["metadata"]["resourceVersion"] == "20"
    assert len(sent.sent) == 1  # not listed yet: asked
    cache.replace(None, [obj("a", "21")], "21")
    for _ in range(5):
        assert kube.get(INFERENCE_SERVICE, "fraud", "a")["metadata"]["resourceVersion"] == "21"
    assert len(sent.sent) == 1
    kube.get(INFERENCE_SERVICE, "fraud", "unknown")  # never seen: asked, not "not found"
    kube.get_fresh(INFERENCE_SERVICE, "fraud", "a")
    kube.get(LEASE, "fraud", "a")  # another kind: never cached
    assert len(sent.sent) == 4


def test_the_clients_own_writes_are_read_back(
    client: tuple[KubeClient, Recorder, ObjectCache],
) -> None:
    kube, sent, cache = client
    cache.replace(None, [obj("a", "21")], "21")
    sent.answer = obj("a", "25", canaryTrafficPercent=50)
    kube.patch(INFERENCE_SERVICE, "fraud", "a", {"spec": {}}, resource_version="21")
    found = kube.get(INFERENCE_SERVICE, "fraud", "a")
    assert found["metadata"]["resourceVersion"] == "25"
    assert found["spec"]["canaryTrafficPercent"] == 50
    sent.answer = obj("a", "30")
    kube.patch(INFERENCE_SERVICE, "fraud", "a", {"spec": {}}, dry_run=True)  # stores nothing
    assert kube.get(INFERENCE_SERVICE, "fraud", "a")["metadata"]["resourceVersion"] == "25"


@pytest.mark.parametrize("write", ["patch", "replace", "replace_status"])
def test_a_write_refused_with_a_conflict_makes_the_next_read_go_to_the_apiserver(
    client: tuple[KubeClient, Recorder, ObjectCache], write: str
) -> None:
    """The cached copy was stale (KServe wrote status since): whoever reads it again, to
    try again, must not get the same stale copy and conflict for ever."""
    kube, sent, cache = client
    cache.replace(None, [obj("a", "21"), obj("b", "21")], "21")

    def refuse(method: str, path: str, **_: Any) -> dict[str, Any]:
        sent.sent.append((method, path))
        raise Conflict(409, "Conflict", "the object has been modified")

    kube._request = refuse  # type: ignore[method-assign]
    if write == "patch":
        with pytest.raises(Conflict):
            kube.patch(INFERENCE_SERVICE, "fraud", "a", {"spec": {}}, resource_version="21")
    else:
        with pytest.raises(Conflict):
            getattr(kube, write)(INFERENCE_SERVICE, "fraud", "a", obj("a", "21"))
    kube._request = sent  # type: ignore[method-assign]
    sent.answer = obj("a", "24")
    before = len(sent.sent)
    assert kube.get(INFERENCE_SERVICE, "fraud", "a")["metadata"]["resourceVersion"] == "24"
    assert len(sent.sent) == before + 1  # asked the apiserver
    assert kube.get(INFERENCE_SERVICE, "fraud", "b")["metadata"]["resourceVersion"] == "21"
    assert len(sent.sent) == before + 1  # the others are still served from the cache
    cache.apply("MODIFIED", obj("a", "25"))  # the watch brings it again: served again
    assert kube.get(INFERENCE_SERVICE, "fraud", "a")["metadata"]["resourceVersion"] == "25"
    assert len(sent.sent) == before + 1
