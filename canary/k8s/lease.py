"""Leader election over a ``coordination.k8s.io/v1`` Lease, with a monotonic epoch.

Only one controller replica may drive rollouts at a time. Replicas compete for one Lease:
the holder renews ``renewTime`` well within ``leaseDurationSeconds``; a candidate may take
the Lease over only once ``renewTime + leaseDurationSeconds`` is past by its own clock. Every
write is a replace carrying the ``resourceVersion`` that was read, so when two candidates
race for the same expired Lease the apiserver accepts one write and answers the other with
409 Conflict: the loser simply is not the leader this round.

Each change of holder increments ``leaseTransitions``, and the leader's **epoch** is
``leaseTransitions + 1``: it only ever grows, whoever holds the Lease.

Why the Lease alone is not enough
---------------------------------
Holding the Lease is a belief, not a guarantee. A leader can be paused (a long garbage
collection, a frozen VM, a partitioned node) after it last renewed. While it is paused the
Lease expires, another replica takes over with a higher epoch, and when the old leader
resumes it still believes it leads until its next renewal attempt fails — and it may do
database writes in that window. Clock checks cannot close this gap: the pause can happen
between any check and the write.

So the epoch is also enforced where the writes land. A new leader first records its epoch
with :meth:`canary.audit.AuditStore.claim_epoch` (which refuses to go backwards), and every
write it makes passes ``Fence(lease_name, identity, epoch)`` to ``AuditStore.commit(...,
fence=...)``. The store compares that fence with the stored one *inside the same database
transaction* as the write, so a deposed leader's commit fails with ``FencedOut`` and writes
nothing, however stale its view of the Lease.

Errors other than a lost race (for example :class:`~canary.k8s.client.Unavailable`) are
raised to the caller, who should back off and stop acting as leader once its Lease may have
expired. A leader that stops acting calls :meth:`LeaseElector.forfeit`: it claims the Lease
again as a new holder, with a new epoch, instead of renewing the one it gave up (which the
database would refuse, since epochs only go forward).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from canary.k8s.client import LEASE, AlreadyExists, Conflict, KubeClient, NotFound

__all__ = ["Leadership", "LeaseElector", "format_micro_time", "parse_micro_time"]


def format_micro_time(at: datetime) -> str:
    """An aware datetime as a Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    if at.tzinfo is None:
        raise ValueError("lease times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> datetime:
    """Read a MicroTime (or a plain RFC 3339 time) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Leadership:
    """What a successful acquire or renew tells its caller.

    ``epoch`` is ``leaseTransitions + 1`` and grows with every change of holder; use it in
    the audit store's fence.
    """

    identity: str
    epoch: int
    acquired_at: datetime
    renewed_at: datetime


class LeaseElector:
    """Acquire, renew and release one Lease as ``identity``.

    ``clock`` gives the current time (aware); expiry is always judged by this clock.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: timedelta = timedelta(seconds=15),
        clock: Callable[[], datetime],
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        seconds = int(duration.total_seconds())
        if seconds < 1 or timedelta(seconds=seconds) != duration:
            raise ValueError(f"duration must be a whole number of seconds >= 1, got {duration}")
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._clock = clock
        # Whether THIS elector holds the Lease. A Lease that names our identity but that we
        # never acquired belongs to an earlier incarnation (a restarted pod keeps its name):
        # we take it over as a new holder, so the epoch grows and that incarnation, should
        # it still be running, is fenced out.
        self._held = False

    # --- the two halves of one attempt -----------------------------------------------------

    def observe(self) -> dict[str, Any] | None:
        """Read the Lease (``None`` if it does not exist)."""
        try:
            return self._kube.get(LEASE, self.namespace, self.name)
        except NotFound:
            return None

    def attempt(self, observed: Mapping[str, Any] | None) -> Leadership | None:
        """Act on a Lease read by :meth:`observe`: create, renew or take over.

        Returns ``None`` when another holder's Lease is still fresh, or when another writer
        changed the Lease since ``observed`` was read (it won the race).
        """
        now = self._now()
        if observed is None:
            return self._create(now)
        spec: Mapping[str, Any] = observed.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity and self._held:
            acquired = spec.get("acquireTime")
            acquired_at = parse_micro_time(acquired) if acquired else now
            changes: dict[str, Any] = {"renewTime": format_micro_time(now)}
            if not acquired:
                changes["acquireTime"] = format_micro_time(now)
            return self._replace(observed, changes, transitions, acquired_at, now)
        if holder and holder != self.identity and not self._expired(spec, now):
            self._held = False
            return None
        changes = {
            "holderIdentity": self.identity,
            "acquireTime": format_micro_time(now),
            "renewTime": format_micro_time(now),
            "leaseTransitions": transitions + 1,
        }
        return self._replace(observed, changes, transitions + 1, now, now)

    # --- public operations -----------------------------------------------------------------

    def try_acquire_or_renew(self) -> Leadership | None:
        """One election round: the current leadership, or ``None`` if we do not lead."""
        return self.attempt(self.observe())

    def forfeit(self) -> None:
        """Forget that we hold the Lease, without writing anything.

        The next round then takes the Lease over as a new holder (once it names us or has
        expired), so ``leaseTransitions`` and the epoch grow. The controller calls this when
        it stops acting as leader (the Lease lapsed, a renewal failed for too long, or the
        database refused or fenced out its epoch): leadership is only ever resumed under an
        epoch the database has not seen, never under the one it gave up."""
        self._held = False

    def release(self) -> bool:
        """Give the Lease up if we hold it, so another replica need not wait for expiry.

        Returns True if the holder was cleared. ``leaseTransitions`` is kept, so the next
        holder's epoch is still higher than ours.
        """
        observed = self.observe()
        if observed is None:
            return False
        spec: Mapping[str, Any] = observed.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return False
        body = copy.deepcopy(dict(observed))
        new_spec = dict(spec)
        new_spec.pop("holderIdentity", None)
        body["spec"] = new_spec
        try:
            self._kube.replace(LEASE, self.namespace, self.name, body)
        except (Conflict, NotFound):
            return False
        self._held = False
        return True

    # --- helpers ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the elector's clock must return timezone-aware datetimes")
        return now

    @property
    def _seconds(self) -> int:
        return int(self.duration.total_seconds())

    @staticmethod
    def _expired(spec: Mapping[str, Any], now: datetime) -> bool:
        last = spec.get("renewTime") or spec.get("acquireTime")
        seconds = spec.get("leaseDurationSeconds")
        if not last or seconds is None:
            return True
        return parse_micro_time(last) + timedelta(seconds=int(seconds)) <= now

    def _create(self, now: datetime) -> Leadership | None:
        stamp = format_micro_time(now)
        body = {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            self._kube.create(LEASE, self.namespace, body)
        except AlreadyExists:
            return None
        self._held = True
        return Leadership(self.identity, 1, now, now)

    def _replace(
        self,
        observed: Mapping[str, Any],
        changes: Mapping[str, Any],
        transitions: int,
        acquired_at: datetime,
        now: datetime,
    ) -> Leadership | None:
        # The body keeps the resourceVersion that was read: the PUT is conditional on it.
        body = copy.deepcopy(dict(observed))
        body["spec"] = {
            **(observed.get("spec") or {}),
            **changes,
            "leaseDurationSeconds": self._seconds,
        }
        try:
            self._kube.replace(LEASE, self.namespace, self.name, body)
        except (Conflict, NotFound):
            self._held = False
            return None
        self._held = True
        return Leadership(self.identity, transitions + 1, acquired_at, now)
