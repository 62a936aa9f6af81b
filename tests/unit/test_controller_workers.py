"""Several workers: one slow rollout never holds the others up, two items of one
InferenceService never run at once, and a sweep runs alone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from canary.audit import AuditStore, Fence
from canary.controller import Controller, WorkQueue, _Item
from canary.engine import Engine
from canary.k8s.client import KubeClient
from canary.k8s.lease import LeaseElector

NS = "fraud"


def rollout(name: str) -> _Item:
    return _Item("rollout", (NS, name))


def command(cid: str, service: str) -> _Item:
    return _Item("command", ("", cid), (NS, service))


def take(queue: WorkQueue) -> list[str]:
    """Everything runnable now, held (not done)."""
    names = []
    while (item := queue.get(timeout=0)) is not None:
        names.append(item.key[1])
    return names


@pytest.mark.parametrize(
    ("held", "queued", "runnable"),
    [
        # a service's second item waits; the items behind it are not held up
        ([rollout("a")], [rollout("a"), rollout("b")], ["b"]),
        # a command waits for its service's reconcile, and goes first when free
        ([rollout("a")], [command("abort-1", "a"), rollout("c")], ["c"]),
        ([command("abort-1", "a")], [rollout("a"), rollout("b")], ["b"]),
        # a command of another service runs alongside
        ([rollout("a")], [command("pause-2", "b")], ["pause-2"]),
        # a relist holds nothing
        ([_Item("relist", ("", "relist"))], [_Item("relist", ("", "relist")), rollout("a")],
         ["relist", "a"]),
        # a sweep waits for everything running, and nothing overtakes it
        ([rollout("a")], [_Item("sweep", ("", "sweep")), rollout("b")], []),
        # while a sweep runs, nothing else starts
        ([_Item("sweep", ("", "sweep"))], [rollout("a"), command("c-1", "b")], []),
    ],
    ids=["same-service", "command-waits", "rollout-waits", "other-service", "relist",
         "sweep-barrier", "sweep-alone"],
)  # fmt: skip
def test_what_may_run_beside_what_runs(
    held: list[_Item], queued: list[_Item], runnable: list[str]
) -> None:
    queue = WorkQueue()
    for item in held:
        queue.add(item)
        assert queue.get(timeout=0) == item
    for item in queued:
        queue.add(item, first=item.kind == "command")
    assert take(queue) == runnable


def urgent(name: str) -> tuple[_Item, str]:
    return rollout(name), "urgent"


def normal(name: str) -> tuple[_Item, str]:
    return rollout(name), "normal"


def first(item: _Item) -> tuple[_Item, str]:
    return item, "first"


@pytest.mark.parametrize(
    ("added", "order"),
    [
        # a failed look's rollout goes ahead of the rollouts queued before it
        ([normal("a"), normal("b"), urgent("bad")], ["bad", "a", "b"]),
        # urgent ones keep their order among themselves, behind commands
        ([normal("a"), urgent("bad-1"), first(command("abort-1", "x")), urgent("bad-2")],
         ["abort-1", "bad-1", "bad-2", "a"]),
        # a rollout already queued by its timer moves up when its look fails
        ([normal("a"), normal("bad"), normal("b"), urgent("bad")], ["bad", "a", "b"]),
        # ... and is not moved back down by a later timer or watch event
        ([urgent("bad"), normal("a"), normal("bad")], ["bad", "a"]),
        # a relist of a new leader stays ahead of them
        ([urgent("bad"), first(_Item("relist", ("", "relist")))], ["relist", "bad"]),
        # a failed look goes before a queued sweep: the sweep still waits for it to end
        ([normal("a"), (_Item("sweep", ("", "sweep")), "normal"), urgent("bad")],
         ["bad", "a", "sweep"]),
    ],
    ids=["ahead", "behind-commands", "moves-up", "not-down", "relist", "sweep"],
)  # fmt: skip
def test_a_rollout_whose_look_failed_runs_before_the_others_waiting(
    added: list[tuple[_Item, str]], order: list[str]
) -> None:
    queue = WorkQueue()
    for item, rank in added:
        queue.add(item, first=rank == "first", urgent=rank == "urgent")
    ran = []
    while (got := queue.get(timeout=0)) is not None:
        ran.append(got.key[1])
        queue.done(got)
    assert ran == order


def test_a_held_service_runs_again_once_done_and_in_its_turn() -> None:
    queue = WorkQueue()
    queue.add(rollout("a"))
    first = queue.get(timeout=0)
    assert first is not None
    queue.add(rollout("a"))  # changed again while it runs
    queue.add(rollout("b"))
    assert take(queue) == ["b"]
    queue.done(first)
    assert take(queue) == ["a"]


def test_a_sweep_runs_once_the_running_items_are_done() -> None:
    queue = WorkQueue()
    queue.add(rollout("a"))
    running = queue.get(timeout=0)
    assert running is not None
    queue.add(_Item("sweep", ("", "sweep")))
    queue.add(rollout("b"))
    assert take(queue) == []
    queue.done(running)
    sweep = queue.get(timeout=0)
    assert sweep is not None
    assert sweep.kind == "sweep"
    assert take(queue) == []
    queue.done(sweep)
    assert take(queue) == ["b"]


def test_a_waiting_worker_wakes_when_a_service_is_freed() -> None:
    queue = WorkQueue()
    queue.add(rollout("a"))
    running = queue.get(timeout=0)
    assert running is not None
    queue.add(rollout("a"))
    got: list[_Item | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get(timeout=30)))
    waiter.start()
    queue.done(running)
    waiter.join(timeout=30)
    assert got == [rollout("a")]


# ---------------------------------------------------------------------------------------
# the controller's workers
# ---------------------------------------------------------------------------------------


class SlowEngine:
    """``slow`` blocks until released; every reconcile is recorded, with how many of one
    service ran at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.done: list[str] = []
        self.inside: dict[str, int] = {}
        self.overlap = False
        self.all_done = threading.Event()
        self.entered = threading.Event()  # ``slow`` is running
        self.expect = 0

    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return []

    def reconcile(self, namespace: str, name: str) -> datetime | None:
        with self.lock:
            self.inside[name] = self.inside.get(name, 0) + 1
            self.overlap |= self.inside[name] > 1
        try:
            if name == "slow":
                self.entered.set()
                assert self.release.wait(30)
        finally:
            with self.lock:
                self.inside[name] -= 1
                self.done.append(name)
                if len(self.done) >= self.expect:
                    self.all_done.set()
        return None


class Scheduler:
    def schedule(self, key: Any, wake: Any) -> None: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def clear(self) -> None: ...


class Looks:
    """The analysis runner's side the controller binds: ``done(key, failed)`` ends a look."""

    def __init__(self) -> None:
        self.done: Any = None

    def bind(self, notify: Any) -> None:
        self.done = notify


def running_controller(engine: SlowEngine, workers: int, looks: Looks | None = None) -> Controller:
    ctl = Controller(
        analysis=cast(Any, looks),
        kube=cast(KubeClient, object()),
        store=cast(AuditStore, object()),
        engine_factory=lambda _: cast(Engine, engine),
        elector=cast(LeaseElector, object()),
        clock=lambda: datetime.now(UTC),
        workers=workers,
        resync=timedelta(seconds=30),
    )
    ctl._fence = Fence("lease", "me", 1)
    ctl._valid_until = datetime.now(UTC) + timedelta(hours=1)
    ctl._scheduler = cast(Any, Scheduler())
    for i in range(workers):
        threading.Thread(target=ctl._work_loop, args=(i,), daemon=True).start()
    return ctl


def test_one_slow_reconcile_does_not_hold_the_other_rollouts_up() -> None:
    engine = SlowEngine()
    engine.expect = 20
    ctl = running_controller(engine, workers=4)
    try:
        ctl.enqueue(NS, "slow")
        for n in range(20):
            ctl.enqueue(NS, f"svc-{n}")
        assert engine.all_done.wait(30), engine.done
        assert "slow" not in engine.done  # still stuck, yet the twenty others were served
        ctl.enqueue(NS, "slow")  # changed again while it runs: waits, never alongside
        engine.expect = 22
        engine.all_done.clear()
        engine.release.set()
        assert engine.all_done.wait(30), engine.done
        assert engine.done.count("slow") == 2
        assert not engine.overlap
    finally:
        engine.release.set()
        ctl._stop.set()


def test_a_rollout_whose_look_failed_is_reconciled_before_hundreds_of_others_waiting() -> None:
    """A generation of looks ends together and wakes its rollouts at once: the one whose
    look failed (its rollback) is not queued behind the rest."""
    engine = SlowEngine()
    engine.expect = 202
    looks = Looks()
    ctl = running_controller(engine, workers=1, looks=looks)
    try:
        ctl.enqueue(NS, "slow")  # the worker is busy with it while the looks end
        assert engine.entered.wait(30)
        for n in range(100):
            looks.done((NS, f"passed-{n}"), False)
            ctl.enqueue(NS, f"timer-{n}")
        looks.done((NS, "failed"), True)
        looks.done((NS, "passed-7"), False)  # its wake again: stays where it was
        engine.release.set()
        assert engine.all_done.wait(30), engine.done
    finally:
        engine.release.set()
        ctl._stop.set()
    assert engine.done[:3] == ["slow", "failed", "passed-0"]
    assert len(engine.done) == 202


def test_one_service_changing_all_the_time_never_runs_twice_at_once() -> None:
    engine = SlowEngine()
    engine.expect = 50
    ctl = running_controller(engine, workers=4)
    try:
        while not engine.all_done.is_set():
            ctl.enqueue(NS, "busy")
            ctl.enqueue(NS, "other")
    finally:
        ctl._stop.set()
    assert "busy" in engine.done
    assert "other" in engine.done
    assert not engine.overlap


def test_a_controller_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        running_controller(SlowEngine(), workers=0)


class PastWakeEngine:
    """Each reconcile returns ``wake``, whatever the time (a state naming a time nothing
    advances)."""

    def __init__(self, wake: datetime) -> None:
        self.wake: datetime | None = wake
        self.calls = 0

    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        return []

    def reconcile(self, namespace: str, name: str) -> datetime | None:
        self.calls += 1
        return self.wake


class RecordingScheduler(Scheduler):
    def __init__(self) -> None:
        self.timers: list[datetime | None] = []

    def schedule(self, key: Any, wake: Any) -> None:
        self.timers.append(wake)


NOW = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
PAST = NOW - timedelta(seconds=30)


def test_a_wake_up_that_never_moves_on_backs_off_instead_of_spinning() -> None:
    engine = PastWakeEngine(PAST)
    clock = [NOW]
    ctl = Controller(
        kube=cast(KubeClient, object()), store=cast(AuditStore, object()),
        engine_factory=lambda _: cast(Engine, engine), elector=cast(LeaseElector, object()),
        clock=lambda: clock[0], resync=timedelta(seconds=30),
    )  # fmt: skip
    scheduler = RecordingScheduler()
    ctl._scheduler = cast(Any, scheduler)
    second = timedelta(seconds=1)
    for _ in range(8):
        ctl._process(rollout("stuck"))
    # the first past time runs at once; then 1, 2, 4 ... s, never more than the ceiling
    assert scheduler.timers == [PAST] + [NOW + n * second for n in (1, 2, 4, 8, 16, 30, 30)]
    engine.wake = PAST + second  # moved on, though still past: runs at once again
    ctl._process(rollout("stuck"))
    assert scheduler.timers[-1] == PAST + second
    engine.wake = NOW + 5 * second  # a time to come is kept as it is, and forgets the past
    ctl._process(rollout("stuck"))
    engine.wake = PAST + second
    ctl._process(rollout("stuck"))
    assert scheduler.timers[-2:] == [NOW + 5 * second, PAST + second]
    engine.wake = None
    ctl._process(rollout("stuck"))
    assert scheduler.timers[-1] is None
