"""The controller keeps going after faults: leadership that lapses or is refused is claimed
again under a new epoch, a replica that holds the Lease but cannot act stops saying it is
alive, a new leader looks at every opted-in service at once, commands go before rollouts,
and only the leader writes to the cluster.

The controller's loops are driven one round at a time here (no threads), with a fake clock
and a fake apiserver that keeps one Lease the way the real one does (resourceVersion checks).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from canary.audit import AuditStore, StoreUnavailable
from canary.controller import Controller, WorkQueue, _Item
from canary.engine import Engine
from canary.k8s.client import (
    EVENT,
    INFERENCE_SERVICE,
    LEASE,
    AlreadyExists,
    Conflict,
    KubeClient,
    NotFound,
    NotLeading,
    ResourceKind,
    Unavailable,
    WatchEvent,
)
from canary.k8s.lease import LeaseElector

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
NS = "fraud"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def isvc(name: str, namespace: str = NS, opted: bool = True) -> dict[str, Any]:
    annotations = {"kserve-canary.io/enabled": "true"} if opted else {"team": "risk"}
    return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations}}


class FakeApiserver:
    """Leases kept as the apiserver keeps them (conditional replace), a fixed list of
    InferenceServices, and a switch that makes every call fail as if it were down."""

    def __init__(self, services: list[dict[str, Any]] | None = None) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.down = False
        self.services = services if services is not None else []
        self.lists: list[str | None] = []

    def _check(self) -> None:
        if self.down:
            raise Unavailable(0, "Unavailable", "connection refused")

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        self._check()
        if name not in self.leases:
            raise NotFound(404, "NotFound", name)
        return copy.deepcopy(self.leases[name])

    def create(self, kind: ResourceKind, namespace: str | None, body: Any) -> dict[str, Any]:
        self._check()
        name = body["metadata"]["name"]
        if name in self.leases:
            raise AlreadyExists(409, "AlreadyExists", name)
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        return copy.deepcopy(stored)

    def replace(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Any
    ) -> dict[str, Any]:
        self._check()
        current = self.leases[name]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "modified")
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        return copy.deepcopy(stored)

    def list(self, kind: ResourceKind, namespace: str | None = None, **_: Any) -> Any:
        self._check()
        self.lists.append(namespace)
        items = [s for s in self.services if namespace is None or
                 s["metadata"]["namespace"] == namespace]  # fmt: skip
        return items, "1"

    def watch(self, *_: Any, **__: Any) -> Iterator[WatchEvent]:
        return iter(())


@dataclass
class FakeStore:
    """The epoch fence as the audit store keeps it: claims must go forward."""

    epoch: int = 0
    holder: str = ""
    down: bool = False
    refuse_all: bool = False
    claims: list[int] = field(default_factory=list)
    active: list[tuple[str, str, datetime | None]] = field(default_factory=list)

    def claim_epoch(self, lease_name: str, holder: str, epoch: int, at: datetime) -> bool:
        if self.down:
            raise StoreUnavailable("database unavailable: timed out")
        self.claims.append(epoch)
        if self.refuse_all or epoch <= self.epoch:
            return False
        self.epoch, self.holder = epoch, holder
        return True

    def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("database unavailable: timed out")

    def pending_commands(self) -> list[Any]:
        return []

    def active_phase_counts(self) -> dict[str, int]:
        return {}


class FakeEngine:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return list(self.store.active)


class Beats:
    def __init__(self) -> None:
        self.beats: list[str] = []
        self.ready: dict[str, tuple[bool, str, float | None]] = {}

    def heartbeat(self, loop: str = "main", timeout: float | None = None) -> None:
        self.beats.append(loop)

    def set_ready(
        self, component: str, ok: bool, detail: str = "", ttl: float | None = None
    ) -> None:
        self.ready[component] = (ok, detail, ttl)


@dataclass
class Rig:
    api: FakeApiserver
    store: FakeStore
    clock: Clock
    controller: Controller
    elector: LeaseElector
    health: Beats

    def round(self) -> None:
        """One election round, as the elector thread runs it."""
        self.controller._elect_once()
        self.controller._beat_leadership()

    def leads(self) -> bool:
        return self.controller.leading

    def queued(self) -> list[_Item]:
        items = []
        while (item := self.controller._queue.get(timeout=0)) is not None:
            self.controller._queue.done(item)
            items.append(item)
        return items


def rig(
    *,
    identity: str = "pod-a",
    services: list[dict[str, Any]] | None = None,
    namespaces: tuple[str, ...] = (),
    stall: float = 30.0,
    api: FakeApiserver | None = None,
    store: FakeStore | None = None,
    clock: Clock | None = None,
) -> Rig:
    api = api or FakeApiserver(services)
    store = store or FakeStore()
    clock = clock or Clock()
    elector = LeaseElector(
        cast(KubeClient, api),
        namespace="kserve-canary",
        name="leader",
        identity=identity,
        duration=timedelta(seconds=15),
        clock=clock,
    )
    health = Beats()
    controller = Controller(
        kube=cast(KubeClient, api),
        store=cast(AuditStore, store),
        engine_factory=lambda _: cast(Engine, FakeEngine(store)),
        elector=elector,
        namespaces=namespaces,
        health=health,
        clock=clock,
        stall_timeout=stall,
    )
    return Rig(api, store, clock, controller, elector, health)


# ---------------------------------------------------------------------------------------
# Leadership that lapses or is refused comes back under a new epoch
# ---------------------------------------------------------------------------------------


def test_a_leader_cut_off_from_the_apiserver_past_its_lease_resumes_with_a_new_epoch() -> None:
    r = rig()
    r.round()
    assert r.leads()
    assert r.store.epoch == 1
    r.api.down = True  # the apiserver process is stopped
    for _ in range(7):  # 35 s: the Lease (15 s) lapses on the way
        r.clock.advance(5)
        r.round()
    assert not r.leads()
    r.api.down = False  # ...and started again, the Lease still naming us in etcd
    r.clock.advance(5)
    r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 2
    assert r.store.claims == [1, 2]
    assert r.api.leases["leader"]["spec"]["leaseTransitions"] == 1


def test_a_short_outage_within_the_lease_keeps_the_same_epoch() -> None:
    r = rig()
    r.round()
    r.api.down = True
    r.clock.advance(5)
    r.round()
    assert r.leads()  # the Lease is still valid by our clock
    r.api.down = False
    r.clock.advance(5)
    r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 1
    assert r.store.claims == [1]


@pytest.mark.parametrize("stored_epoch", [1, 2, 5])
def test_an_epoch_the_database_refuses_is_given_up_and_a_new_one_claimed(
    stored_epoch: int,
) -> None:
    """The database has seen this epoch (or a later one): the holder never acts on it, and
    keeps claiming the Lease again until its epoch is new to the database."""
    store = FakeStore(epoch=stored_epoch, holder="pod-a")
    r = rig(store=store)
    for _ in range(stored_epoch + 1):
        r.round()
        r.clock.advance(0.5)
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == stored_epoch + 1
    assert r.store.claims == list(range(1, stored_epoch + 2))  # one new epoch per round


def test_a_leader_fenced_out_by_the_database_claims_a_new_epoch() -> None:
    r = rig()
    r.round()
    assert r.store.epoch == 1
    r.controller._step_down("fenced out: epoch 1 is stale")  # what the worker does
    r.clock.advance(5)
    r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 2


def test_a_lease_taken_by_another_replica_is_not_taken_back_before_it_expires() -> None:
    clock = Clock()
    api = FakeApiserver()
    store = FakeStore()
    a = rig(identity="pod-a", api=api, store=store, clock=clock)
    b = rig(identity="pod-b", api=api, store=store, clock=clock)
    a.round()
    b.round()
    assert a.leads()
    assert not b.leads()
    a.controller._step_down("fenced out")
    clock.advance(5)
    b.round()
    assert not b.leads()  # pod-a's Lease is still fresh
    a.round()
    assert a.leads()
    assert store.epoch == 2


@pytest.mark.parametrize(
    ("why", "fault"),
    [
        ("the database refuses every epoch", "refuse"),
        ("the database does not answer", "down"),
    ],
)
def test_holding_the_lease_without_acting_stops_the_liveness_beat(why: str, fault: str) -> None:
    r = rig(stall=20.0)
    r.store.refuse_all = fault == "refuse"
    r.store.down = fault == "down"
    r.round()
    assert not r.leads()
    assert "leadership" in r.health.beats  # not stalled yet
    r.health.beats.clear()
    r.controller._unusable_since = time.monotonic() - 25.0  # held 25 s without acting
    r.round()
    assert "leadership" not in r.health.beats, why
    r.store.refuse_all = r.store.down = False
    r.round()  # it can act again: the beat comes back
    assert r.leads()
    assert "leadership" in r.health.beats


def test_a_follower_keeps_beating() -> None:
    clock = Clock()
    api = FakeApiserver()
    a = rig(identity="pod-a", api=api, clock=clock)
    b = rig(identity="pod-b", api=api, clock=clock)
    a.round()
    b.round()
    assert not b.leads()
    assert b.health.beats.count("leadership") == 1


def test_the_apiserver_readiness_follows_the_lease_rounds() -> None:
    r = rig()
    r.round()
    assert r.health.ready["apiserver"][0] is True
    r.api.down = True
    r.round()
    ok, detail, ttl = r.health.ready["apiserver"]
    assert not ok
    assert "renewal failed" in detail
    assert ttl is not None


# ---------------------------------------------------------------------------------------
# A new leader looks at every opted-in service at once
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [
        ((), {("fraud", "new-canary"), ("fraud", "steady"), ("credit", "other")}),
        (("fraud",), {("fraud", "new-canary"), ("fraud", "steady")}),
        (("fraud", "credit"), {("fraud", "new-canary"), ("fraud", "steady"), ("credit", "other")}),
    ],
)
def test_gaining_leadership_relists_and_queues_every_opted_in_service(
    namespaces: tuple[str, ...], expected: set[tuple[str, str]]
) -> None:
    services = [
        isvc("new-canary"),  # its canary was written just before the old leader died
        isvc("steady"),
        isvc("not-ours", opted=False),
        isvc("other", namespace="credit"),
    ]
    r = rig(services=services, namespaces=namespaces)
    r.store.active = [("fraud", "rolling", T0)]
    r.round()
    items = r.queued()
    assert items[0].kind == "relist"  # first, before the rollouts with a row
    assert ("fraud", "rolling") in {i.key for i in items if i.kind == "rollout"}
    r.controller._process(items[0])
    relisted = {i.key for i in r.queued() if i.kind == "rollout"}
    assert relisted == expected


def test_a_relist_that_fails_is_retried_by_the_worker() -> None:
    r = rig(services=[isvc("new-canary")])
    r.round()
    (relist,) = [i for i in r.queued() if i.kind == "relist"]
    r.api.down = True
    with pytest.raises(Unavailable):
        r.controller._process(relist)  # the worker backs off and queues it again


def test_the_first_list_before_leadership_is_not_lost() -> None:
    """A follower drops what it is queued; the relist at take-over queues it again."""
    r = rig(services=[isvc("new-canary")])
    r.controller._consider(isvc("new-canary"))
    r.queued()  # dropped: not leading yet
    r.round()
    relist = r.queued()[0]
    r.controller._process(relist)
    assert [i.key for i in r.queued()] == [("fraud", "new-canary")]


# ---------------------------------------------------------------------------------------
# Commands first; only the leader writes
# ---------------------------------------------------------------------------------------


def test_commands_go_before_queued_rollouts_in_the_order_they_came() -> None:
    queue = WorkQueue()
    for n in range(3):
        queue.add(_Item("rollout", (NS, f"svc-{n}")))
    queue.add(_Item("command", ("", "abort-1")), first=True)
    queue.add(_Item("command", ("", "pause-2")), first=True)
    queue.add(_Item("rollout", (NS, "svc-3")))
    order = []
    while (item := queue.get(timeout=0)) is not None:
        queue.done(item)
        order.append(item.key[1])
    assert order == ["abort-1", "pause-2", "svc-0", "svc-1", "svc-2", "svc-3"]


class Unreached:
    """An ApiClient that must not be called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the write reached the apiserver ({name})")


@pytest.mark.parametrize(
    "write",
    [
        lambda k: k.create(EVENT, NS, {"metadata": {"name": "e"}}),
        lambda k: k.patch(INFERENCE_SERVICE, NS, "svc", {"spec": {}}),
        lambda k: k.replace(INFERENCE_SERVICE, NS, "svc", {"metadata": {}}),
        lambda k: k.replace_status(INFERENCE_SERVICE, NS, "svc", {"metadata": {}}),
        lambda k: k.apply(
            INFERENCE_SERVICE, NS, {"metadata": {"name": "svc"}}, field_manager="kserve-canary"
        ),
        lambda k: k.delete(EVENT, NS, "e"),
    ],
    ids=["create-event", "patch", "replace", "replace-status", "apply", "delete"],
)
def test_a_replica_that_is_not_leading_writes_nothing_to_the_cluster(write: Any) -> None:
    kube = KubeClient(cast(Any, Unreached()))
    seen: list[ResourceKind] = []

    def gate(kind: ResourceKind) -> bool:
        seen.append(kind)
        return False

    kube.gate_writes(gate)
    with pytest.raises(NotLeading, match="not leading"):
        write(kube)
    assert seen


def test_the_lease_and_dry_runs_pass_the_gate() -> None:
    kube = KubeClient(cast(Any, Unreached()))
    kube.gate_writes(lambda kind: False)
    with pytest.raises(AssertionError, match="reached the apiserver"):
        kube.replace(LEASE, "kserve-canary", "leader", {"metadata": {}})
    with pytest.raises(AssertionError, match="reached the apiserver"):
        kube.patch(INFERENCE_SERVICE, NS, "svc", {"spec": {}}, dry_run=True)


def test_the_controller_gates_its_client_on_leadership() -> None:
    api = FakeApiserver()
    calls: list[Any] = []
    api.gate_writes = calls.append  # type: ignore[attr-defined]
    r = rig(api=api)
    (gate,) = calls
    assert gate(EVENT) is False  # not leading yet
    r.round()
    assert gate(EVENT) is True
    r.clock.advance(16)  # the Lease lapsed by our clock (a freeze): no more writes
    assert gate(EVENT) is False


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        KubeClient(cast(Any, Unreached()), timeout=0)


def test_a_new_epoch_under_a_leader_is_claimed_once_not_round_after_round() -> None:
    r = rig()
    r.round()
    assert r.store.epoch == 1
    r.elector.forfeit()  # as if a takeover of our own Lease had happened meanwhile
    r.clock.advance(5)
    r.round()
    assert r.store.epoch == 2
    for _ in range(3):
        r.clock.advance(5)
        r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 2
    assert r.store.claims == [1, 2]


class SlowRenewal:
    """The apiserver hangs: the renewal is answered only after the Lease lapsed."""

    def __init__(self, r: Rig, seconds: float) -> None:
        self.r = r
        self.seconds = seconds
        self.inner = r.elector.try_acquire_or_renew

    def __call__(self) -> Any:
        answer = self.inner()
        self.r.clock.advance(self.seconds)
        return answer


def test_a_renewal_answered_after_the_lease_lapsed_is_a_loss_and_a_new_epoch_follows() -> None:
    r = rig()
    r.round()
    r.controller._scheduler.schedule(("fraud", "rolling"), T0 + timedelta(minutes=5))
    r.queued()
    slow = SlowRenewal(r, 20)  # longer than the 15 s Lease
    r.elector.try_acquire_or_renew = slow  # type: ignore[method-assign]
    r.clock.advance(5)
    r.round()
    assert not r.leads()  # not acting on it again as if nothing happened
    assert r.controller._scheduler.due() == {}  # its timers went with it
    r.elector.try_acquire_or_renew = slow.inner  # type: ignore[method-assign]
    r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 2
    assert r.queued()[0].kind == "relist"  # a full take-over: relist and timers rebuilt


def test_a_renewal_answered_within_the_lease_keeps_the_epoch() -> None:
    r = rig()
    r.round()
    slow = SlowRenewal(r, 4)
    r.elector.try_acquire_or_renew = slow  # type: ignore[method-assign]
    for _ in range(5):
        r.clock.advance(1)
        r.round()
    fence = r.controller.fence()
    assert fence is not None
    assert fence.epoch == 1
    assert r.store.claims == [1]
