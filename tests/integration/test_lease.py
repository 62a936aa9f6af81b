"""Leader election on a real apiserver, and its epoch as the audit store's fence."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from canary.api.health import Health
from canary.audit import (
    Actor,
    AuditEntry,
    AuditStore,
    Fence,
    FencedOut,
    StoreUnavailable,
    upgrade_to_head,
)
from canary.controller import Controller
from canary.engine import Engine
from canary.k8s.client import LEASE, KubeClient
from canary.k8s.lease import Leadership, LeaseElector, parse_micro_time
from testbed.postgres import PostgresServer
from testbed.testbed import Testbed
from tests.conftest import Database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
DURATION = timedelta(seconds=15)
LEASE_NAME = "kserve-canary-leader"


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def elector(kube: KubeClient, namespace: str, clock: FakeClock, identity: str) -> LeaseElector:
    return LeaseElector(
        kube,
        namespace=namespace,
        name=LEASE_NAME,
        identity=identity,
        duration=DURATION,
        clock=clock,
    )


def leading(result: Leadership | None) -> Leadership:
    assert result is not None, "expected to lead"
    return result


def test_first_elector_creates_the_lease_and_others_wait(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    a = elector(kube, namespace, clock, "pod-a")
    b = elector(kube, namespace, clock, "pod-b")

    lead = leading(a.try_acquire_or_renew())
    assert lead == Leadership("pod-a", 1, T0, T0)
    spec = kube.get(LEASE, namespace, LEASE_NAME)["spec"]
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert parse_micro_time(spec["acquireTime"]) == T0
    assert parse_micro_time(spec["renewTime"]) == T0

    clock.advance(DURATION - timedelta(microseconds=1))
    assert b.try_acquire_or_renew() is None
    assert kube.get(LEASE, namespace, LEASE_NAME)["spec"]["holderIdentity"] == "pod-a"


def test_the_holder_renews_and_keeps_its_epoch(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    a = elector(kube, namespace, clock, "pod-a")
    b = elector(kube, namespace, clock, "pod-b")
    leading(a.try_acquire_or_renew())

    for _ in range(3):
        clock.advance(timedelta(seconds=10))
        lead = leading(a.try_acquire_or_renew())
        assert (lead.epoch, lead.acquired_at, lead.renewed_at) == (1, T0, clock.now)
        assert b.try_acquire_or_renew() is None  # renewed 0s ago, still fresh

    spec = kube.get(LEASE, namespace, LEASE_NAME)["spec"]
    assert parse_micro_time(spec["renewTime"]) == clock.now
    assert parse_micro_time(spec["acquireTime"]) == T0
    assert spec["leaseTransitions"] == 0


def test_an_expired_lease_is_taken_over_with_a_higher_epoch(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    a = elector(kube, namespace, clock, "pod-a")
    b = elector(kube, namespace, clock, "pod-b")
    leading(a.try_acquire_or_renew())

    clock.advance(DURATION)  # a did not renew (paused)
    lead = leading(b.try_acquire_or_renew())
    assert lead == Leadership("pod-b", 2, clock.now, clock.now)
    spec = kube.get(LEASE, namespace, LEASE_NAME)["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)

    assert a.try_acquire_or_renew() is None  # a resumes: it is no longer the leader
    assert leading(b.try_acquire_or_renew()).epoch == 2


def test_two_candidates_racing_for_an_expired_lease_one_wins(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    old = elector(kube, namespace, clock, "pod-old")
    b = elector(kube, namespace, clock, "pod-b")
    c = elector(kube, namespace, clock, "pod-c")
    leading(old.try_acquire_or_renew())
    clock.advance(DURATION + timedelta(seconds=1))

    seen_by_b = b.observe()
    seen_by_c = c.observe()
    assert seen_by_b is not None
    assert seen_by_c is not None
    assert seen_by_b["metadata"]["resourceVersion"] == seen_by_c["metadata"]["resourceVersion"]

    results = {"pod-b": b.attempt(seen_by_b), "pod-c": c.attempt(seen_by_c)}
    winners = {who: r for who, r in results.items() if r is not None}
    assert list(winners) == ["pod-b"]  # b wrote first; c's write conflicted
    assert winners["pod-b"].epoch == 2
    spec = kube.get(LEASE, namespace, LEASE_NAME)["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("pod-b", 1)
    assert c.try_acquire_or_renew() is None  # and the fresh lease now keeps c out


def test_the_epoch_fences_a_deposed_leader_out_of_the_audit_store(
    kube: KubeClient, namespace: str, clock: FakeClock, db_url: str
) -> None:
    a = elector(kube, namespace, clock, "pod-a")
    b = elector(kube, namespace, clock, "pod-b")
    with AuditStore.from_url(db_url) as store:
        old = leading(a.try_acquire_or_renew())
        assert store.claim_epoch(LEASE_NAME, old.identity, old.epoch, old.acquired_at)
        old_fence = Fence(LEASE_NAME, old.identity, old.epoch)
        store.commit([note(clock.now, "pod-a", old.epoch)], fence=old_fence)

        clock.advance(DURATION)
        new = leading(b.try_acquire_or_renew())
        assert new.epoch == old.epoch + 1
        assert store.claim_epoch(LEASE_NAME, new.identity, new.epoch, new.acquired_at)
        assert not store.claim_epoch(LEASE_NAME, old.identity, old.epoch, clock.now)
        new_fence = Fence(LEASE_NAME, new.identity, new.epoch)
        assert store.current_fence(LEASE_NAME) == new_fence

        # The old leader still believes it leads and tries to write with its old fence.
        head = store.head()
        with pytest.raises(FencedOut):
            store.commit([note(clock.now, "pod-a", old.epoch)], fence=old_fence)
        assert store.head() == head
        assert len(store.records()) == 1

        records = store.commit([note(clock.now, "pod-b", new.epoch)], fence=new_fence)
        assert [r.seq for r in records] == [2]
        assert store.verify().ok


def test_release_lets_another_elector_acquire_at_once(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    a = elector(kube, namespace, clock, "pod-a")
    b = elector(kube, namespace, clock, "pod-b")
    leading(a.try_acquire_or_renew())

    assert not b.release()  # not the holder: nothing to release
    assert a.release()
    assert not kube.get(LEASE, namespace, LEASE_NAME)["spec"].get("holderIdentity")

    lead = leading(b.try_acquire_or_renew())  # no time has passed
    assert (lead.identity, lead.epoch) == ("pod-b", 2)
    assert a.try_acquire_or_renew() is None


def note(at: datetime, holder: str, epoch: int) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor=Actor("controller", holder),
        action="leader.write",
        reason=f"written by {holder}",
        leader_epoch=epoch,
    )


def test_a_restarted_replica_with_the_same_name_takes_over_with_a_new_epoch(
    kube: KubeClient, namespace: str, clock: FakeClock
) -> None:
    """A pod killed and restarted keeps its name. Its new process must not inherit the old
    epoch: the old process (if it were somehow still running) has to be fenced out."""
    before = leading(elector(kube, namespace, clock, "pod-a").try_acquire_or_renew())
    clock.advance(timedelta(seconds=1))  # well before the Lease expires
    restarted = elector(kube, namespace, clock, "pod-a")
    after = leading(restarted.try_acquire_or_renew())
    assert after.epoch == before.epoch + 1
    assert after.acquired_at == clock.now
    clock.advance(timedelta(seconds=1))
    assert leading(restarted.try_acquire_or_renew()).epoch == after.epoch  # then it renews


# ---------------------------------------------------------------------------------------
# The running controller after faults: a frozen database, an apiserver restarted
# ---------------------------------------------------------------------------------------

LIVE_LEASE = timedelta(seconds=3)
DB_TIMEOUT = 1.0
EXPIRY = 2.0


class NoRollouts:
    """The engine's part the controller calls on its own: there is nothing to do."""

    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return []


@dataclass
class Running:
    controller: Controller
    health: Health
    store: AuditStore
    kube: KubeClient

    def epoch(self) -> int | None:
        fence = self.controller.fence()
        return fence.epoch if fence is not None else None

    def ready(self, component: str | None = None) -> bool:
        ok, report = self.health.readiness()
        # A component not reported (yet, or any more) is not ready.
        return ok if component is None else bool(report.get(component, {}).get("ok", False))


def eventually(what: str, check: Callable[[], bool], within: float) -> float:
    """Poll ``check`` until it holds; returns how long that took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@contextmanager
def running(
    testbed: Testbed, namespace: str, database_url: str, identity: str = "pod-a"
) -> Iterator[Running]:
    """A controller as ``canary run`` wires it (its own Kubernetes client, whose writes it
    gates, and a store with timeouts), on a 3 s Lease."""
    kube = KubeClient.from_kubeconfig(testbed.kubeconfig_path, timeout=2.0)
    store = AuditStore.from_url(database_url, timeout=DB_TIMEOUT)
    health = Health()
    health.set_ready("policies", True, "loaded")
    controller = Controller(
        kube=kube,
        store=store,
        engine_factory=lambda _: cast(Engine, NoRollouts()),
        elector=LeaseElector(
            kube,
            namespace=namespace,
            name=LEASE_NAME,
            identity=identity,
            duration=LIVE_LEASE,
            clock=lambda: datetime.now(UTC),
        ),
        namespaces=(namespace,),
        health=health,
        health_expiry=EXPIRY,
        stall_timeout=30.0,
    )
    controller.start()
    try:
        yield Running(controller, health, store, kube)
    finally:
        controller.stop()
        store.close()
        kube.close()


def _postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every backend it forked (what a frozen host would freeze)."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == postmaster:
            pids.append(int(entry.name))
    return pids


class Blackhole:
    """A TCP proxy to PostgreSQL that, once frozen, accepts and reads but never forwards
    nor answers: a database host that stopped without closing anything."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():  # hold it: nothing goes through, nothing closes
                time.sleep(0.05)
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.frozen.clear()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()


@pytest.mark.parametrize("freeze", ["sigstop", "blackhole"])
def test_a_frozen_database_fails_readiness_within_seconds_and_the_lease_is_kept(
    testbed: Testbed,
    namespace: str,
    postgres_server: PostgresServer,
    pg_database: Database,
    freeze: str,
) -> None:
    upgrade_to_head(pg_database.url)
    url = pg_database.url
    proxy: Blackhole | None = None
    if freeze == "blackhole":
        proxy = Blackhole(postgres_server.port)
        url = url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    with running(testbed, namespace, url) as live:
        eventually("leading", lambda: live.epoch() is not None, 20)
        eventually("ready", live.ready, 10)
        epoch = live.epoch()
        renewed = _renew_time(testbed, namespace)
        stopped: list[int] = []
        try:
            if proxy is not None:
                proxy.frozen.set()
            else:
                stopped = _postgres_pids(postgres_server)
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
            took = eventually("/readyz to fail", lambda: not live.ready(), 10)
            # the probe's call times out (DB_TIMEOUT) or its last report expires (EXPIRY)
            assert took < DB_TIMEOUT + EXPIRY + 2.0
            assert not live.ready("database")
            # every call has a deadline: a direct one fails instead of hanging
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                live.store.active_rollouts()
            assert time.monotonic() - started < DB_TIMEOUT + 1.5
            # the Lease is renewed throughout: renewals never wait on the database
            eventually(
                "a renewal during the freeze",
                lambda: _renew_time(testbed, namespace) > renewed,
                LIVE_LEASE.total_seconds() * 2,
            )
            assert live.epoch() == epoch
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            if proxy is not None:
                proxy.frozen.clear()
        eventually("ready again", live.ready, 15)
        assert live.epoch() == epoch
        assert live.health.liveness()[0]
    if proxy is not None:
        proxy.close()


def _renew_time(testbed: Testbed, namespace: str) -> datetime:
    lease = testbed.kube.get(LEASE, namespace, LEASE_NAME)
    return parse_micro_time(lease["spec"]["renewTime"])


@pytest.mark.parametrize(
    ("fault", "replicas"), [("restart", 1), ("restart", 2), ("freeze", 1), ("freeze", 2)]
)
def test_after_an_apiserver_outage_leadership_resumes_under_a_new_epoch(
    testbed: Testbed, namespace: str, pg_database: Database, fault: str, replicas: int
) -> None:
    """The apiserver process is stopped (or frozen: it accepts and never answers) for
    longer than the Lease, then started again (or resumed). etcd, and so the Lease naming
    the old leader, survives. The old epoch is refused by the database, so whoever leads
    next claims a new one, and acts."""
    upgrade_to_head(pg_database.url)
    cluster = testbed.cluster
    assert cluster is not None
    with ExitStack() as stack:
        lives = [
            stack.enter_context(running(testbed, namespace, pg_database.url, f"pod-{n}"))
            for n in range(replicas)
        ]
        eventually("a leader", lambda: any(r.epoch() for r in lives), 20)
        (before,) = [r.epoch() for r in lives if r.epoch()]
        assert before is not None
        if fault == "restart":
            cluster.stop_apiserver()
        else:
            cluster.pause_apiserver()
        try:
            eventually("the leader to stop acting", lambda: not any(r.epoch() for r in lives),
                       LIVE_LEASE.total_seconds() + 5)  # fmt: skip
            eventually("/readyz to say the apiserver is down",
                       lambda: not any(r.ready("apiserver") for r in lives), 10)  # fmt: skip
        finally:
            if fault == "restart":
                cluster.start_apiserver()
            else:
                cluster.pause_apiserver(False)
        eventually("a leader again", lambda: any(r.epoch() for r in lives), 30)
        leaders = [r for r in lives if r.epoch()]
        assert len(leaders) == 1
        (leader,) = leaders
        after = leader.epoch()
        assert after is not None
        assert after > before
        fence = leader.store.current_fence(LEASE_NAME)
        assert fence is not None
        assert fence.epoch == after
        # and it acts: its writes pass the gate again
        assert leader.controller._may_write(LEASE)
        eventually("ready", lambda: all(r.ready("apiserver") for r in lives), 15)
        assert all(r.health.liveness()[0] for r in lives)
