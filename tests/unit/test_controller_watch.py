"""The controller's watcher survives an expired watch (410 Gone) and an apiserver that goes
away, relisting each time, and queues exactly the InferenceServices that concern it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from canary.audit import AuditStore
from canary.controller import Controller, WorkQueue
from canary.engine import Engine
from canary.k8s.client import Gone, KubeClient, Unavailable, WatchEvent
from canary.k8s.lease import LeaseElector


def isvc(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "fraud", "name": name, "annotations": annotations or {}}}


OPTED = {"kserve-canary.io/enabled": "true"}


class FakeKube:
    """Answers lists, and plays a script of watch outcomes, one per watch call."""

    def __init__(self, script: list[Any], stop: threading.Event) -> None:
        self.script = script
        self.stop = stop
        self.lists = 0

    def list(self, kind: Any, namespace: str | None = None, **_: Any) -> tuple[list[Any], str]:
        self.lists += 1
        return [isvc("listed", OPTED), isvc("plain")], str(self.lists)

    def watch(self, kind: Any, namespace: str | None = None, **_: Any) -> Iterator[WatchEvent]:
        if not self.script:
            self.stop.set()
            return
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


class FakeEngine:
    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return [("fraud", "active-rollout", None)]


def controller(kube: FakeKube) -> Controller:
    built = Controller(
        kube=cast(KubeClient, kube),
        store=cast(AuditStore, object()),
        engine_factory=lambda _: cast(Engine, FakeEngine()),
        elector=cast(LeaseElector, object()),
        resync=timedelta(seconds=30),
        clock=lambda: datetime.now(UTC),
    )
    return built


def drain(queue: WorkQueue) -> set[tuple[str, str]]:
    keys = set()
    while (item := queue.get(timeout=0)) is not None:
        queue.done(item)
        keys.add(item.key)
    return keys


def test_gone_and_unavailable_lead_to_a_fresh_list_and_events_are_queued() -> None:
    stop = threading.Event()
    events = [
        WatchEvent("MODIFIED", isvc("changed", OPTED)),
        WatchEvent("MODIFIED", isvc("not-ours")),
        WatchEvent("DELETED", isvc("deleted")),
    ]
    kube = FakeKube([Gone(410, "Gone", "too old"), Unavailable(0, "Unavailable", "down"),
                     iter(events)], stop)  # fmt: skip
    ctl = controller(kube)
    ctl._stop = stop  # the fake ends the loop when its script is played

    ctl._watch_loop()

    assert kube.lists == 3  # the first list, then one after Gone and one after the outage
    keys = drain(ctl._queue)
    assert ("fraud", "listed") in keys  # opted in
    assert ("fraud", "active-rollout") in keys  # has an active rollout in the database
    assert ("fraud", "changed") in keys  # a watch event for an opted-in object
    assert ("fraud", "deleted") in keys  # deletions always matter
    assert ("fraud", "plain") not in keys
    assert ("fraud", "not-ours") not in keys


def test_the_queue_never_holds_an_item_twice_and_honours_delays() -> None:
    ctl = controller(FakeKube([], threading.Event()))
    ctl.enqueue("fraud", "a")
    ctl.enqueue("fraud", "a")
    ctl.enqueue("fraud", "b")
    assert len(ctl._queue) == 2
    first = ctl._queue.get(timeout=0)
    assert first is not None
    assert first.key == ("fraud", "a")
    queue = WorkQueue()
    item = first
    queue.add(item, delay=60)
    assert queue.get(timeout=0) is None  # not before its delay


def test_a_service_that_loses_every_annotation_is_queued_once() -> None:
    # Opting out by deleting the annotations (not setting enabled: "false") must reach the
    # engine at once; the watcher used to drop such an event as not ours.
    stop = threading.Event()
    ctl = controller(FakeKube([iter([])], stop))
    ctl._stop = stop
    ctl._watch_loop()  # the list: "listed" carries our annotation
    assert ("fraud", "listed") in drain(ctl._queue)

    def play(*events: WatchEvent) -> set[tuple[str, str]]:
        kube = FakeKube([iter(events)], stop)
        kube.list = lambda *_, **__: ([], "9")  # type: ignore[method-assign]
        ctl._kube = cast(KubeClient, kube)
        stop.clear()
        ctl._watch_loop()
        return drain(ctl._queue) - {("fraud", "active-rollout")}  # queued by every list

    removed = WatchEvent("MODIFIED", isvc("listed", {"team": "risk"}))
    assert play(removed, WatchEvent("MODIFIED", isvc("plain", {"team": "risk"}))) == {
        ("fraud", "listed")
    }
    assert play(removed) == set()  # no longer ours: not queued again


class CountingKube(FakeKube):
    """Counts lists and watches per namespace; stops everything after too many lists (a
    relist loop) so that a regression fails instead of spinning."""

    def __init__(self, script: list[Any], stop: threading.Event) -> None:
        super().__init__(script, stop)
        self.listed: list[str | None] = []
        self.watched: list[str | None] = []

    def list(self, kind: Any, namespace: str | None = None, **_: Any) -> tuple[list[Any], str]:
        self.listed.append(namespace)
        if len(self.listed) > 20:
            self.stop.set()
        return [], "1"

    def watch(self, kind: Any, namespace: str | None = None, **kw: Any) -> Iterator[WatchEvent]:
        self.watched.append(namespace)
        yield from super().watch(kind, namespace, **kw)


def test_each_configured_namespace_is_listed_once_then_watched() -> None:
    stop = threading.Event()
    for namespaces in (("fraud", "credit"), ("fraud", "credit", "payments")):
        kube = CountingKube([iter([]) for _ in namespaces], stop)
        ctl = controller(kube)
        ctl._namespaces = namespaces
        ctl._stop = stop
        for namespace in namespaces:  # each on its own thread in the controller
            stop.clear()
            ctl._watch_loop(namespace)
        assert kube.listed == list(namespaces)  # once each: no relist loop
        assert set(kube.watched) == set(namespaces)  # and each is watched (resumed when a
        # watch ends, never relisted)


def test_the_controller_starts_one_watcher_per_namespace() -> None:
    stop = threading.Event()
    ctl = controller(CountingKube([], stop))
    ctl._namespaces = ("fraud", "credit", "payments")
    started: list[str] = []

    class Recorder:
        def __init__(self, *, target: Any, name: str, daemon: bool) -> None:
            started.append(name)

        def start(self) -> None:
            pass

    ctl._scheduler = cast(Any, type("S", (), {"start": lambda self: None})())
    original = threading.Thread
    threading.Thread = Recorder  # type: ignore[misc,assignment]
    try:
        ctl.start()
    finally:
        threading.Thread = original  # type: ignore[misc]
    watchers = [n for n in started if n.startswith("ksc-watcher")]
    assert watchers == ["ksc-watcher-fraud", "ksc-watcher-credit", "ksc-watcher-payments"]
