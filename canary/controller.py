"""The running controller: leader election, watching, timers, commands and one worker.

Threads, each with one job:

* **elector** renews the Lease every third of its duration. On becoming leader it claims
  its epoch in the database (the fence every later commit is checked against), rebuilds
  the timers from the persisted ``next_check_at`` of every active rollout, queues every
  active rollout once (which also replays traffic intents that have no outcome yet) and
  queues a fresh list of every InferenceService, so that a service whose canary was just
  written (no rollout row yet) is looked at at once, not at the next resync. On losing the
  Lease (or failing to renew before it would expire, or having its epoch refused or fenced
  out by the database) it stops acting at once, and claims the Lease again only as a new
  holder, with a new epoch. While it holds the Lease but cannot act on it, it stops
  beating, so ``/healthz`` fails and Kubernetes restarts it.
* **probe** asks the database whether it answers, every second, so ``/readyz`` follows it;
  the reports expire, so a database that hangs (answers nothing) shows as not ready.
* **watcher** lists and watches InferenceServices (one watch over all namespaces, or one per
  configured namespace, each on its own thread) and queues those that carry a
  ``kserve-canary.io/`` annotation, had one, or have an active rollout. A watch that
  expires (410 Gone) or breaks (apiserver restart) is followed by a fresh list, with
  backoff; every ``resync_seconds`` the list is redone anyway. What it lists and watches
  also fills the watch cache (:mod:`canary.k8s.informer`) the reconciles read their
  InferenceService from, so a reconcile costs the apiserver no request; while a watch is
  broken, its namespace is read from the apiserver again.
* **scheduler** (APScheduler) queues a rollout when its timer fires.
* **commands** polls the database for queued manual commands while leading.
* **workers** (``workers`` of them, 4 by default) take items from the de-duplicating queue
  and call the engine. Two items of one InferenceService never run at once (a command
  waits for its service's reconcile, and the other way round), so rollout logic never
  runs concurrently *for one service*, while a slow rollout (a slow apiserver answer, a
  large commit) holds one worker only. Manual commands go before rollouts, and a rollout
  whose look just failed goes before the other rollouts waiting (under load a generation
  of looks ends together and wakes hundreds of rollouts at once: the rollback does not
  wait for them). Looks at Prometheus do not run here but on the analysis runner's
  threads (:mod:`canary.analysis_worker`), so a hung Prometheus never holds a command up.

Every replica serves HTTP (health, metrics, the admission webhook); only the leader acts,
and only the leader writes to the cluster: every write the Kubernetes client sends (traffic,
routes, Events) passes the leadership check first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from canary.analysis_worker import AnalysisRunner
from canary.audit import AuditStore, Fence, FencedOut, StaleRollout, StoreUnavailable
from canary.engine import Engine, NotLeader
from canary.k8s.client import INFERENCE_SERVICE, Gone, KubeClient, KubeError, ResourceKind
from canary.k8s.informer import ObjectCache
from canary.k8s.lease import Leadership, LeaseElector
from canary.log import get_logger
from canary.model import ACTIVE_PHASES
from canary.scheduler import Key, RolloutScheduler

__all__ = ["Controller", "ControllerMetrics", "Health", "WorkQueue"]

log = get_logger("canary.controller")

_ANNOTATION_PREFIX = "kserve-canary.io/"
_CHALLENGER_ANNOTATION = _ANNOTATION_PREFIX + "challenger"
_COMMAND_POLL = 0.5
_PROBE_PERIOD = 1.0
_BACKOFF_MAX = 30.0
_RELIST: tuple[str, str] = ("", "relist")
_SWEEP: tuple[str, str] = ("", "sweep")


class Health(Protocol):
    def set_ready(
        self, component: str, ok: bool, detail: str = "", ttl: float | None = None
    ) -> None: ...
    def heartbeat(self, loop: str = "main", timeout: float | None = None) -> None: ...


class ControllerMetrics(Protocol):
    def set_leader(self, leader: bool) -> None: ...
    def observe_tick_lag(self, seconds: float) -> None: ...
    def set_phase_counts(self, counts: Mapping[str, int]) -> None: ...
    def record_kube_write_retry(self) -> None: ...
    def record_reconcile(self) -> None: ...
    def record_wake_held_back(self) -> None: ...


@dataclass(frozen=True)
class _Item:
    kind: str  # "rollout" | "command" | "relist" | "sweep"
    key: tuple[str, str]  # (namespace, name) or ("", command id)
    # The InferenceService the item acts on (a command's names it): two items of one
    # service never run at once. None: the item's own key (a rollout's is its service).
    service: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def scope(self) -> tuple[str, str] | None:
        """What the item holds while it runs: its service; nothing for a relist (it only
        reads and queues); everything for a sweep (:data:`_EVERYTHING`)."""
        if self.kind == "sweep":
            return _EVERYTHING
        if self.kind == "relist":
            return None
        if self.kind == "command":
            return self.service
        return self.key


# A sweep deletes mirror objects that no active rollout owns: it runs alone, so that no
# rollout creates its mirror while the sweep decides the mirror is nobody's.
_EVERYTHING: tuple[str, str] = ("", "*")


# Where an item goes in the queue (:meth:`WorkQueue.add`): each class after the ones
# before it, in the order added within a class.
FIRST = 0  # operators' commands, and the relist of a new leader
URGENT = 1  # a rollout whose look just failed: its rollback waits for nothing else
NORMAL = 2  # everything else: watch events, timers, looks that did not fail


class WorkQueue:
    """A queue of work items in which an item waiting to run is never queued twice, and
    two items of one InferenceService never run at once. Items go in by class
    (:data:`FIRST`, :data:`URGENT`, :data:`NORMAL`), first in first out within one; an
    item queued again in an earlier class moves up to it (a timer's check, then a failed
    look, of one rollout: the rollout is urgent).

    :meth:`get` hands an item out and holds its scope (:attr:`_Item.scope`) until
    :meth:`done`: an item of a held service waits in its place while the items behind it
    go to other workers. A sweep waits until nothing runs, and nothing starts after it
    until it is done (it is a barrier, so it cannot starve)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._order: list[_Item] = []
        self._queued: set[_Item] = set()
        self._not_before: dict[_Item, float] = {}
        self._class: dict[_Item, int] = {}  # the class of each queued item but NORMAL
        self._busy: dict[tuple[str, str], int] = {}  # held scopes (and how many hold them)

    def add(
        self, item: _Item, *, delay: float = 0.0, first: bool = False, urgent: bool = False
    ) -> None:
        """Queue ``item``: :data:`FIRST` with ``first`` (before everything queued without
        it), :data:`URGENT` with ``urgent``, else :data:`NORMAL`."""
        rank = FIRST if first else URGENT if urgent else NORMAL
        with self._cond:
            if delay > 0:
                self._not_before[item] = time.monotonic() + delay
            if item in self._queued:
                if rank >= self._class.get(item, NORMAL):
                    self._cond.notify()
                    return
                self._order.remove(item)  # queued again in an earlier class: moves up
            self._queued.add(item)
            if rank == NORMAL:
                self._order.append(item)
            else:
                self._class[item] = rank
                ahead = sum(1 for queued in self._order if self._class.get(queued, NORMAL) <= rank)
                self._order.insert(ahead, item)
            self._cond.notify()

    def get(self, timeout: float) -> _Item | None:
        """The first item that may run now, held until :meth:`done` (None after
        ``timeout`` seconds without one)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                item = self._runnable(now)
                if item is not None:
                    return item
                if now >= deadline:
                    return None
                waits = [t - now for t in self._not_before.values() if t > now]
                self._cond.wait(min([deadline - now, *waits]))

    def _runnable(self, now: float) -> _Item | None:
        if _EVERYTHING in self._busy:
            return None
        for index, item in enumerate(self._order):
            if self._not_before.get(item, 0.0) > now:
                continue
            scope = item.scope
            if scope == _EVERYTHING:
                if self._busy:
                    return None  # a barrier: nothing overtakes it
            elif scope is not None and scope in self._busy:
                continue
            del self._order[index]
            self._queued.discard(item)
            self._class.pop(item, None)
            self._not_before.pop(item, None)
            if scope is not None:
                self._busy[scope] = self._busy.get(scope, 0) + 1
            return item
        return None

    def done(self, item: _Item) -> None:
        """``item`` has run: its scope is free again."""
        scope = item.scope
        if scope is None:
            return
        with self._cond:
            count = self._busy.get(scope, 0) - 1
            if count > 0:
                self._busy[scope] = count
            else:
                self._busy.pop(scope, None)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._order)


class Controller:
    def __init__(
        self,
        *,
        kube: KubeClient,
        store: AuditStore,
        engine_factory: Callable[[Callable[[], Fence | None]], Engine],
        elector: LeaseElector,
        namespaces: tuple[str, ...] = (),
        resync: timedelta = timedelta(minutes=5),
        health: Health | None = None,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        analysis: AnalysisRunner | None = None,
        health_expiry: float = 5.0,
        stall_timeout: float = 60.0,
        workers: int = 4,
        cache: ObjectCache | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a controller needs at least one worker, not {workers}")
        self._kube = kube
        self._store = store
        self._elector = elector
        self._namespaces = namespaces
        self._resync = resync
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._stop = threading.Event()
        self._queue = WorkQueue()
        self._lock = threading.Lock()
        self._fence: Fence | None = None
        self._valid_until: datetime | None = None
        self._scheduled_at: dict[Key, datetime] = {}
        # Services that concerned us when last seen (our annotation, or an active rollout):
        # one of them that loses every annotation is still queued, once.
        self._known: set[Key] = set()
        self._challenger_of: dict[Key, str] = {}  # champion -> the challenger it names
        self._champions: dict[Key, set[str]] = {}  # challenger -> champions naming it
        self._scheduler = RolloutScheduler(self._timer_fired, clock=clock)
        self._analysis = analysis
        if analysis is not None:
            analysis.bind(self._look_done)
        self._expiry = health_expiry
        self._stall = stall_timeout
        self._unusable_since: float | None = None  # Lease held, but not acting on it
        self.engine = engine_factory(self.fence)
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self._failures: dict[_Item, int] = {}  # consecutive failures of an item, for backoff
        # Rollouts whose reconcile returned a wake-up already past, and how often in a row
        # for that same time (see _held_back).
        self._past_wakes: dict[Key, tuple[datetime, int]] = {}
        self._cache = cache
        # Only the leader writes to the cluster; the Lease itself is exempt.
        gate = getattr(kube, "gate_writes", None)
        if gate is not None:
            gate(self._may_write)

    # ------------------------------------------------------------------ leadership

    def fence(self) -> Fence | None:
        """The fence to write with, while this replica holds an unexpired Lease."""
        with self._lock:
            if self._fence is None or self._valid_until is None:
                return None
            if self._clock() >= self._valid_until:
                return None
            return self._fence

    @property
    def leading(self) -> bool:
        return self.fence() is not None

    def _may_write(self, _kind: ResourceKind) -> bool:
        return self.leading

    def _elect_loop(self) -> None:
        period = max(self._elector.duration.total_seconds() / 3, 0.5)
        while not self._stop.is_set():
            started = time.monotonic()
            self._beat("elector")
            self._elect_once()
            self._beat_leadership()
            # A follower (or a holder that could not act) asks more often than a leader
            # renews, so it takes over soon after the Lease expires.
            wait = period if self.leading else min(period, 0.5)
            self._stop.wait(max(wait - (time.monotonic() - started), 0.05))

    def _elect_once(self) -> None:
        """One election round: renew or acquire, then act on the answer."""
        try:
            leadership = self._elector.try_acquire_or_renew()
        except KubeError as exc:
            log.warning("leader.renew_failed", error=str(exc))
            self._set_ready("apiserver", False, f"Lease renewal failed: {exc}")
            if self.fence() is None:  # keep acting only while the Lease is valid
                self._step_down(f"the Lease could not be renewed: {exc}")
            self._unusable_since = None
            return
        self._set_ready("apiserver", True, "reachable")
        if leadership is None:
            self._step_down("the Lease is held by another replica")
            self._unusable_since = None
            return
        if self._lead(leadership):
            self._unusable_since = None
        elif self._unusable_since is None:
            self._unusable_since = time.monotonic()

    def _beat_leadership(self) -> None:
        """Beat unless this replica has held the Lease without being able to act on it
        for the stall timeout: then ``/healthz`` fails, Kubernetes restarts the process,
        and the Lease goes to a replica that can act."""
        since = self._unusable_since
        if since is not None and time.monotonic() - since >= self._stall:
            log.error("leader.stalled", seconds=round(time.monotonic() - since, 1))
            return
        if self._health is not None:
            self._health.heartbeat("leadership", self._stall)

    def _lead(self, leadership: Leadership) -> bool:
        """Act on a renewed or acquired Lease; False if this replica cannot lead on it."""
        valid_until = leadership.renewed_at + self._elector.duration
        with self._lock:
            current = self._fence
            lapsed = self._valid_until is not None and self._clock() >= self._valid_until
            if current is not None and current.epoch == leadership.epoch and not lapsed:
                self._valid_until = valid_until
                return True
        if current is not None and current.epoch == leadership.epoch:
            # The Lease lapsed by our clock before this renewal came back (a hung apiserver,
            # a paused process): another replica could have led meanwhile, and our timers
            # and queue went unserved. Give it up; the next round claims a new epoch and
            # takes over afresh (timers rebuilt, every service relisted).
            self._step_down("the Lease lapsed before its renewal was answered")
            return False
        if current is not None:  # a new epoch under our feet: start over with it
            why = f"the epoch changed from {current.epoch} to {leadership.epoch}"
            self._step_down(why, forfeit=False)
        fence = Fence(self._elector.name, leadership.identity, leadership.epoch)
        try:
            claimed = self._store.claim_epoch(
                fence.lease_name, fence.holder, fence.epoch, self._clock()
            )
        except StoreUnavailable as exc:
            log.warning("leader.claim_failed", error=str(exc))
            self._set_ready("database", False, str(exc))
            # Try this epoch again next round: the database never recorded it.
            return False
        if not claimed:
            # The database has seen this epoch (ours from before a lapse, or a later
            # holder's): never act on it. Claim the Lease again as a new holder.
            log.error("leader.epoch_refused", epoch=fence.epoch)
            self._elector.forfeit()
            return False
        with self._lock:
            self._fence = fence
            self._valid_until = valid_until
        log.info("leader.elected", identity=fence.holder, epoch=fence.epoch)
        if self._metrics is not None:
            self._metrics.set_leader(True)
        self._take_over()
        return True

    def _take_over(self) -> None:
        """Relist every InferenceService, rebuild timers from the database and look at
        every active rollout once."""
        # First in the queue: every opted-in service is reconciled at once, including one
        # whose canary was written just before the previous leader died (no rollout row).
        self._queue.add(_Item("relist", _RELIST), first=True)
        # Then the mirror objects no shadowing rollout owns (left by a crash, or by a
        # rollout that ended while no leader ran), and again every resync period.
        self._queue.add(_Item("sweep", _SWEEP))
        try:
            due = self.engine.active_keys()
        except StoreUnavailable as exc:
            log.warning("leader.rebuild_failed", error=str(exc))
            return  # the relist still queues every opted-in service
        self._scheduler.rebuild(due)
        for namespace, name, _ in due:
            self._queue.add(_Item("rollout", (namespace, name)))
        log.info("leader.timers_rebuilt", rollouts=len(due))

    def _step_down(self, why: str, *, forfeit: bool = True) -> None:
        with self._lock:
            was = self._fence is not None
            self._fence = None
            self._valid_until = None
        # Leadership resumes only under a new epoch (``forfeit=False``: this one is new).
        give_up = getattr(self._elector, "forfeit", None)
        if forfeit and give_up is not None:
            give_up()
        if was:
            log.warning("leader.lost", reason=why)
            self._scheduler.clear()
            with self._lock:
                self._past_wakes.clear()
            if self._analysis is not None:
                self._analysis.clear()
            forget = getattr(self.engine, "stop_leading", None)
            if forget is not None:
                forget()
            if self._metrics is not None:
                self._metrics.set_leader(False)

    # ------------------------------------------------------------------ inputs

    def _timer_fired(self, key: Key, at: datetime) -> None:
        with self._lock:
            self._scheduled_at.setdefault(key, at)
        self._queue.add(_Item("rollout", key))

    def enqueue(self, namespace: str, name: str) -> None:
        self._queue.add(_Item("rollout", (namespace, name)))

    def _look_done(self, key: Key, failed: bool) -> None:
        """A look ended: its rollout is queued, ahead of every other rollout when the look
        failed (under load, a generation of looks ends together and wakes hundreds of
        rollouts at once; the one to roll back does not wait for them)."""
        self._queue.add(_Item("rollout", key), urgent=failed)

    def _watch_loop(self, namespace: str | None = None) -> None:
        """List and watch one namespace (None: the whole cluster) until stopped: a watch
        that ends is resumed from its last version, one that expires or breaks is followed
        by a fresh list, with backoff. Each configured namespace has a loop of its own."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._list_and_watch(namespace)
                backoff = 0.5
            except Gone:
                log.info("watch.expired")
            except KubeError as exc:
                self._set_ready(self._watch_component(namespace), False, str(exc))
                log.warning("watch.failed", namespace=namespace, error=str(exc), retry_in=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception as exc:  # never let the watcher die
                log.exception("watch.crashed", error=str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _watch_component(self, namespace: str | None) -> str:
        """The readiness component of a namespace's watch: ``watch``, or ``watch:<ns>``
        when several namespaces are watched (each must be listed to be ready)."""
        return f"watch:{namespace}" if len(self._namespaces) > 1 else "watch"

    def _list_and_watch(self, namespace: str | None) -> None:
        try:
            self._list_and_follow(namespace)
        except BaseException:
            if self._cache is not None:  # served again after the next list
                self._cache.unsync(namespace)
            raise

    def _list_and_follow(self, namespace: str | None) -> None:
        items, version = self._kube.list(INFERENCE_SERVICE, namespace)
        if self._cache is not None:
            self._cache.replace(namespace, items, version)
        for item in items:
            self._consider(item)
        for namespace_, name, _ in self._active_safely():
            if namespace is None or namespace_ == namespace:
                with self._lock:
                    self._known.add((namespace_, name))
                self.enqueue(namespace_, name)
        self._set_ready(self._watch_component(namespace), True, "listed")
        deadline = time.monotonic() + self._resync.total_seconds()
        while not self._stop.is_set() and time.monotonic() < deadline:
            remaining = max(int(deadline - time.monotonic()), 1)
            for event in self._kube.watch(
                INFERENCE_SERVICE,
                namespace,
                resource_version=version,
                timeout_seconds=min(remaining, 10),
            ):
                version = event.resource_version or version
                if event.type in ("ADDED", "MODIFIED", "DELETED"):
                    if self._cache is not None:  # before queuing: the reconcile reads it
                        self._cache.apply(event.type, event.object)
                    self._consider(event.object, deleted=event.type == "DELETED")
                if self._stop.is_set():
                    return

    def _consider(self, isvc: Mapping[str, Any], *, deleted: bool = False) -> bool:
        """Queue a service that concerns us: one that carries a ``kserve-canary.io/``
        annotation, one deleted, or one that carried such an annotation (or had an active
        rollout) when last seen and has lost them all: an opt-out by removing the
        annotations is seen at once, not at the next timer."""
        meta = isvc.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        ours = any(str(k).startswith(_ANNOTATION_PREFIX) for k in annotations)
        named = annotations.get(_CHALLENGER_ANNOTATION)
        with self._lock:
            was_ours = key in self._known
            if ours and not deleted:
                self._known.add(key)
            else:
                self._known.discard(key)
            # A challenger carries no annotation of ours: its champions are looked at when
            # it changes (a new model to compare, a revision ready, its deletion).
            before = self._challenger_of.pop(key, None)
            if before is not None:
                self._champions.get((key[0], before), set()).discard(key[1])
            if isinstance(named, str) and named and not deleted:
                self._challenger_of[key] = named
                self._champions.setdefault((key[0], named), set()).add(key[1])
            champions = sorted(self._champions.get(key, ()))
        for champion in champions:
            self.enqueue(key[0], champion)
        if deleted or ours or was_ours:
            self.enqueue(*key)
            return True
        return bool(champions)

    def _active_safely(self) -> list[tuple[str, str, datetime | None]]:
        try:
            return self.engine.active_keys()
        except StoreUnavailable:
            return []

    def _command_loop(self) -> None:
        while not self._stop.wait(_COMMAND_POLL):
            if not self.leading:
                continue
            try:
                for command in self._store.pending_commands():
                    # Commands go before rollouts: an abort must not wait for a queue.
                    item = _Item("command", ("", command.id), (command.namespace, command.name))
                    self._queue.add(item, first=True)
                self._set_ready("database", True, "reachable")
            except StoreUnavailable as exc:
                self._set_ready("database", False, str(exc))

    # ------------------------------------------------------------------ the worker

    def _work_loop(self, index: int = 0) -> None:
        loop = f"worker-{index}"
        while not self._stop.is_set():
            self._beat(loop)
            item = self._queue.get(timeout=0.5)
            if item is None:
                continue
            try:
                if self.leading:  # else the leader-to-be rebuilds its work from the database
                    self._work(item)
            finally:
                self._queue.done(item)

    def _work(self, item: _Item) -> None:
        try:
            self._process(item)
            with self._lock:
                self._failures.pop(item, None)
        except (NotLeader, FencedOut) as exc:
            self._step_down(f"fenced out: {exc}")
        except StaleRollout:
            self._queue.add(item)  # someone wrote in between: read again
        except (StoreUnavailable, KubeError) as exc:
            count = self._failed(item)
            delay = min(0.5 * 2**count, _BACKOFF_MAX)
            if isinstance(exc, StoreUnavailable):
                self._set_ready("database", False, str(exc))
            log.warning(
                "rollout.retry", item=item.key, error=str(exc), attempt=count, retry_in=delay
            )
            self._queue.add(item, delay=delay)
        except Exception as exc:
            count = self._failed(item)
            log.exception("rollout.reconcile_crashed", item=item.key, error=str(exc))
            self._queue.add(item, delay=min(2.0 * count, _BACKOFF_MAX))

    def _failed(self, item: _Item) -> int:
        with self._lock:
            count = self._failures.get(item, 0) + 1
            self._failures[item] = count
            return count

    def _process(self, item: _Item) -> None:
        if item.kind == "relist":
            self._relist()
            return
        if item.kind == "sweep":
            removed = self.engine.sweep_mirrors()
            if removed:
                log.info("mirror.sweep_done", removed=removed)
            self._queue.add(item, delay=self._resync.total_seconds())
            return
        if item.kind == "command":
            command = self._store.get_command(item.key[1])
            if command is None or command.state != "pending":
                return
            state, result = self.engine.run_command(command)
            log.info(
                "command.settled",
                command=command.command,
                namespace=command.namespace,
                name=command.name,
                actor=command.actor,
                state=state,
                result=result,
            )
            self.enqueue(command.namespace, command.name)
            return
        key = item.key
        with self._lock:
            scheduled = self._scheduled_at.pop(key, None)
        if scheduled is not None and self._metrics is not None:
            lag = (self._clock() - scheduled).total_seconds()
            self._metrics.observe_tick_lag(max(lag, 0.0))
        wake = self.engine.reconcile(*key)
        if self._metrics is not None:
            self._metrics.record_reconcile()
        if self._analysis is not None and wake is not None and wake <= self._clock():
            # A look is due and runs off this thread: its end queues the rollout again;
            # the timer is the look's deadline, when it is given up.
            deadline = self._analysis.deadline(key)
            if deadline is not None:
                wake = deadline
        self._scheduler.schedule(key, self._held_back(key, wake))
        self._set_ready("database", True, "reachable")

    def _held_back(self, key: Key, wake: datetime | None) -> datetime | None:
        """``wake``, unless the rollout's reconciles keep returning one same time already
        past: then nothing they do moves it on, and left alone it would run in a loop at
        full speed (a state naming a time that nothing advances; an analysis that cannot
        start). The first such return runs at once, as a past time means; from the second
        in a row for the same time it waits 1 s, doubling up to the backoff ceiling, and
        says so once. A watch event or a command still queues the rollout at once."""
        now = self._clock()
        with self._lock:
            if wake is None or wake > now:
                self._past_wakes.pop(key, None)
                return wake
            last = self._past_wakes.get(key)
            repeats = last[1] + 1 if last is not None and last[0] == wake else 0
            self._past_wakes[key] = (wake, repeats)
        if repeats == 0:
            return wake
        delay = min(2.0 ** (repeats - 1), _BACKOFF_MAX)
        if self._metrics is not None:
            self._metrics.record_wake_held_back()
        if repeats == 1:
            log.warning(
                "rollout.wake_not_advanced",
                namespace=key[0],
                name=key[1],
                wake=wake.isoformat(),
                retry_in=delay,
            )
        return now + timedelta(seconds=delay)

    def _relist(self) -> None:
        """Queue every InferenceService that concerns us (leadership was just gained)."""
        count = 0
        for namespace in self._namespaces or (None,):
            items, _ = self._kube.list(INFERENCE_SERVICE, namespace)
            for item in items:
                count += self._consider(item)
        log.info("leader.relisted", queued=count)

    def _refresh_phase_counts(self) -> None:
        """Every few seconds, not per reconcile: the count is O(n) in the database."""
        if self._metrics is None or not self.leading:
            return
        counts = {phase.value: 0 for phase in ACTIVE_PHASES}
        try:
            counts.update(self._store.active_phase_counts())
        except StoreUnavailable:
            return
        self._metrics.set_phase_counts(counts)

    # ------------------------------------------------------------------ lifecycle

    def _beat(self, loop: str) -> None:
        if self._health is not None:
            self._health.heartbeat(loop, self._stall)

    def _check_database(self) -> None:
        try:
            self._store.ping()
        except StoreUnavailable as exc:
            self._set_ready("database", False, str(exc))
        else:
            self._set_ready("database", True, "reachable")

    def _probe_loop(self) -> None:
        """Ask the database every second, on a thread of its own: a database that hangs
        holds this loop up (for the store's timeout at most), never the Lease renewals."""
        rounds = 0
        while not self._stop.is_set():
            self._beat("probe")
            self._check_database()
            if rounds % 5 == 0:
                self._refresh_phase_counts()
            rounds += 1
            self._stop.wait(_PROBE_PERIOD)

    def _set_ready(self, component: str, ok: bool, detail: str) -> None:
        if self._health is None:
            return
        # The watch reports when it lists (a quiet watch says nothing for minutes); the
        # others report all the time and expire, so a hung dependency shows within seconds.
        ttl = None if component.split(":", 1)[0] == "watch" else self._expiry
        self._health.set_ready(component, ok, detail, ttl)

    def start(self) -> None:
        self._scheduler.start()
        loops: list[tuple[Callable[[], None], str]] = [
            (self._elect_loop, "elector"),
            (self._probe_loop, "probe"),
            (self._command_loop, "commands"),
        ]
        loops += [(partial(self._work_loop, i), f"worker-{i}") for i in range(self._workers)]
        # One watch per configured namespace, or one over the whole cluster.
        for namespace in self._namespaces or (None,):
            loops.append((partial(self._watch_loop, namespace), f"watcher-{namespace or 'all'}"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=f"ksc-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, *, release: bool = True) -> None:
        """Stop every loop; give the Lease up so another replica takes over at once."""
        self._stop.set()
        self._scheduler.shutdown()
        if self._analysis is not None:
            self._analysis.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        if release and self._fence is not None:
            try:
                self._elector.release()
            except KubeError as exc:
                log.warning("leader.release_failed", error=str(exc))
        self._step_down("stopping")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)
