"""Leader election on a real apiserver, and its epoch as the audit store's fence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from canary.audit import Actor, AuditEntry, AuditStore, Fence, FencedOut
from canary.k8s.client import LEASE, KubeClient
from canary.k8s.lease import Leadership, LeaseElector, parse_micro_time

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
