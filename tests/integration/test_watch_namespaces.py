"""With several namespaces configured, the controller lists each once and then watches it
(one watch per namespace), against the real kube-apiserver: over a quiet stretch its
request count stays flat, and a change in any namespace is seen through the watch."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from canary.audit import AuditStore
from canary.controller import Controller
from canary.engine import Engine
from canary.k8s.client import INFERENCE_SERVICE, KubeClient, WatchEvent
from canary.k8s.lease import LeaseElector
from testbed.testbed import Testbed
from tests.integration.test_kube_api import isvc

pytestmark = pytest.mark.integration

QUIET_SECONDS = 12.0


class Counting:
    """The real client, with its lists and watches counted per namespace."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self.lists: Counter[str | None] = Counter()
        self.watches: Counter[str | None] = Counter()
        self._lock = threading.Lock()

    def list(self, kind: Any, namespace: str | None = None, **kw: Any) -> Any:
        with self._lock:
            self.lists[namespace] += 1
        return self._kube.list(kind, namespace, **kw)

    def watch(self, kind: Any, namespace: str | None = None, **kw: Any) -> Iterator[WatchEvent]:
        with self._lock:
            self.watches[namespace] += 1
        return self._kube.watch(kind, namespace, **kw)

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return sum(self.lists.values()), sum(self.watches.values())


class NoRollouts:
    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return []


def queued(ctl: Controller) -> set[tuple[str, str]]:
    keys = set()
    while (item := ctl._queue.get(timeout=0)) is not None:
        ctl._queue.done(item)
        keys.add(item.key)
    return keys


@pytest.mark.parametrize("count", [2, 3])
def test_several_namespaces_are_watched_not_relisted(testbed: Testbed, count: int) -> None:
    namespaces = tuple(testbed.namespace(f"watch{count}-{i}") for i in range(count))
    counting = Counting(testbed.kube)
    ctl = Controller(
        kube=cast(KubeClient, counting),
        store=cast(AuditStore, object()),
        engine_factory=lambda _: cast(Engine, NoRollouts()),
        elector=cast(LeaseElector, object()),
        resync=timedelta(seconds=300),
        clock=lambda: datetime.now(UTC),
        namespaces=namespaces,
    )
    threads = [threading.Thread(target=ctl._watch_loop, args=(ns,), daemon=True)
               for ns in namespaces]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while set(counting.watches) != set(namespaces):  # each listed, then watching
            assert time.monotonic() < deadline, f"not all watched: {dict(counting.watches)}"
            time.sleep(0.05)
        queued(ctl)
        before = counting.totals()
        time.sleep(QUIET_SECONDS)  # a quiet stretch of wall time on the real apiserver
        lists, watches = (a - b for a, b in zip(counting.totals(), before, strict=True))
        assert lists == 0  # no relist loop
        # a watch asks for at most 10 s, then is resumed: two per namespace at most
        assert watches <= count * (QUIET_SECONDS // 10 + 1)

        testbed.kube.create(INFERENCE_SERVICE, namespaces[-1], isvc("seen-by-watch"))
        deadline = time.monotonic() + 10
        seen: set[tuple[str, str]] = set()
        while (namespaces[-1], "seen-by-watch") not in seen:
            assert time.monotonic() < deadline, "the change was not seen through the watch"
            seen |= queued(ctl)
            time.sleep(0.05)
        assert dict(counting.lists) == dict.fromkeys(namespaces, 1)
    finally:
        ctl._stop.set()
        for thread in threads:
            thread.join(timeout=15)
