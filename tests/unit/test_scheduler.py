"""RolloutScheduler: one timer per rollout, on APScheduler's background thread.

Every timer here is already due (a moment in the past), so it fires as soon as the
scheduler runs; the tests wait for the callback with a bounded wait and never for time to
pass. "Did not fire" is shown by a sentinel timer, due after all the others, firing: the
scheduler hands due timers to its workers in time order, so by then it has gone past them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from canary.scheduler import Key, RolloutScheduler

NOW = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)  # the injected clock (in the real past)
PAST = NOW - timedelta(days=400)
WAIT = 10.0  # seconds; reached only when a timer never fires
SENTINEL: Key = ("kserve-canary", "sentinel")
SENTINEL_AT = NOW + timedelta(minutes=1)  # due after every other timer in these tests


class Fired:
    """The fire callback: records (key, scheduled time) and wakes up whoever waits."""

    def __init__(self, fail_for: frozenset[Key] = frozenset()) -> None:
        self.calls: list[tuple[Key, datetime]] = []
        self.fail_for = fail_for
        self.hold: threading.Event | None = None  # the first call blocks on it, if set
        self.entered = threading.Event()
        self._changed = threading.Condition()

    def __call__(self, key: Key, at: datetime) -> None:
        with self._changed:
            self.calls.append((key, at))
            first = len(self.calls) == 1
            self._changed.notify_all()
        if first and self.hold is not None:
            self.entered.set()
            self.hold.wait(WAIT)
        if key in self.fail_for:
            raise RuntimeError(f"engine blew up for {key}")

    def wait(self, key: Key, times: int = 1, timeout: float = WAIT) -> None:
        """Wait (bounded) until ``key`` has fired ``times`` times."""
        with self._changed:
            done = self._changed.wait_for(lambda: len(self._of(key)) >= times, timeout=timeout)
        assert done, f"{key} fired at {self.of(key)}, expected {times} time(s)"

    def _of(self, key: Key) -> list[datetime]:
        return [at for k, at in self.calls if k == key]

    def of(self, key: Key) -> list[datetime]:
        with self._changed:
            return self._of(key)

    def keys(self) -> list[Key]:
        with self._changed:
            return sorted(k for k, _ in self.calls if k != SENTINEL)


@pytest.fixture
def fired() -> Fired:
    return Fired()


def stop(sched: RolloutScheduler) -> None:
    """Shut down once APScheduler's thread has finished handing out due timers.

    ``cancel`` takes the job-store lock that thread holds while it hands out timers, so it
    returns only between two rounds. (Shutting down in the middle of a round makes that
    thread die on a JobLookupError, which pytest reports for whichever test ran last.)
    """
    sched.cancel(SENTINEL)
    sched.shutdown()


@pytest.fixture
def scheduler(fired: Fired) -> Iterator[RolloutScheduler]:
    sched = RolloutScheduler(fired, clock=lambda: NOW)
    try:
        yield sched
    finally:
        stop(sched)


def settle(sched: RolloutScheduler, fired: Fired) -> None:
    """Schedule the sentinel and wait for it: every timer due before it has been handled."""
    sched.schedule(SENTINEL, SENTINEL_AT)
    fired.wait(SENTINEL)


def test_a_timer_in_the_past_fires_at_once_with_its_scheduled_time(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    scheduler.start()
    key = ("fraud", "scorer")

    scheduler.schedule(key, PAST)

    fired.wait(key)
    assert fired.of(key) == [PAST]
    assert key not in scheduler.due()  # a fired timer is gone


def test_rescheduling_a_key_replaces_its_earlier_timer(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    key = ("fraud", "scorer")
    scheduler.schedule(key, PAST)
    scheduler.schedule(key, PAST + timedelta(minutes=5))  # replaces the first, before start
    other = ("fraud", "other")
    scheduler.schedule(other, NOW + timedelta(days=3650))
    scheduler.start()

    fired.wait(key)
    scheduler.schedule(other, PAST)  # a running scheduler: the far-off timer is replaced
    fired.wait(other)
    settle(scheduler, fired)

    assert fired.of(key) == [PAST + timedelta(minutes=5)]  # once, at the newer time
    assert fired.of(other) == [PAST]
    assert scheduler.due() == {}  # the ten-year timer is not pending any more


def test_scheduling_the_same_time_again_keeps_one_timer(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    key = ("fraud", "scorer")
    for _ in range(3):
        scheduler.schedule(key, PAST)
    assert scheduler.due() == {key: PAST}
    scheduler.start()

    fired.wait(key)
    settle(scheduler, fired)

    assert fired.of(key) == [PAST]


def _cancel_a(sched: RolloutScheduler) -> None:
    sched.cancel(("fraud", "a"))


def _schedule_a_for_never(sched: RolloutScheduler) -> None:
    sched.schedule(("fraud", "a"), None)


def _clear(sched: RolloutScheduler) -> None:
    sched.clear()


@pytest.mark.parametrize(
    ("drop", "kept"),
    [
        pytest.param(_cancel_a, [("fraud", "b")], id="cancel-one"),
        pytest.param(_schedule_a_for_never, [("fraud", "b")], id="schedule-none-cancels"),
        pytest.param(_clear, [], id="clear-all"),
    ],
)
def test_cancelled_and_cleared_timers_never_fire(
    scheduler: RolloutScheduler,
    fired: Fired,
    drop: Callable[[RolloutScheduler], None],
    kept: list[Key],
) -> None:
    for key in [("fraud", "a"), ("fraud", "b")]:
        scheduler.schedule(key, PAST)
    drop(scheduler)
    assert set(scheduler.due()) == set(kept)
    scheduler.start()

    for key in kept:
        fired.wait(key)
    settle(scheduler, fired)

    assert fired.keys() == kept


def test_cancelling_twice_or_an_unknown_key_is_harmless_and_the_key_can_be_rearmed(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    scheduler.start()
    key = ("fraud", "scorer")
    scheduler.schedule(key, NOW + timedelta(days=3650))
    scheduler.cancel(key)
    scheduler.cancel(key)  # cancelling twice (or an unknown key) is harmless
    scheduler.cancel(("fraud", "unknown"))

    scheduler.schedule(key, PAST)  # the key can be armed again afterwards
    fired.wait(key)

    assert fired.of(key) == [PAST]


def test_rebuild_schedules_every_persisted_time_and_none_means_now(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    stale = ("fraud", "finished-meanwhile")
    scheduler.schedule(stale, PAST)  # a timer from before this replica lost the lead
    rows: list[tuple[str, str, datetime | None]] = [
        ("fraud", "scorer", PAST),
        ("credit", "pd-model", PAST + timedelta(seconds=30)),
        ("credit", "replayed", None),  # no persisted time: look at it now
    ]

    assert scheduler.rebuild(rows) == 3

    assert scheduler.due() == {
        ("fraud", "scorer"): PAST,
        ("credit", "pd-model"): PAST + timedelta(seconds=30),
        ("credit", "replayed"): NOW,
    }
    scheduler.start()
    for namespace, name, _ in rows:
        fired.wait((namespace, name))
    settle(scheduler, fired)
    assert fired.keys() == sorted((ns, name) for ns, name, _ in rows)
    assert fired.of(("fraud", "scorer")) == [PAST]
    assert fired.of(("credit", "replayed")) == [NOW]
    assert fired.of(stale) == []


def test_a_failing_callback_does_not_stop_later_timers() -> None:
    bad: Key = ("fraud", "bad")
    fired = Fired(fail_for=frozenset({bad}))
    sched = RolloutScheduler(fired, clock=lambda: NOW)
    try:
        sched.start()
        sched.schedule(bad, PAST)
        fired.wait(bad)
        later: list[Key] = [("fraud", "good"), ("credit", "pd-model")]
        for key in later:
            sched.schedule(key, PAST)
        for key in later:
            fired.wait(key)
        settle(sched, fired)
    finally:
        stop(sched)

    assert fired.of(bad) == [PAST]
    assert fired.keys() == sorted([bad, *later])


def test_a_timer_rearmed_while_its_previous_callback_still_runs_still_fires(
    scheduler: RolloutScheduler, fired: Fired
) -> None:
    """The controller's worker reconciles a rollout as soon as its timer enqueued it and
    re-arms the timer with the next wake-up, which is often already due (an unapplied
    intent, a retry). That must not depend on the timer's previous callback having
    returned: here it is still running when the timer is re-armed."""
    key = ("fraud", "scorer")
    fired.hold = threading.Event()
    scheduler.start()
    scheduler.schedule(key, PAST)
    assert fired.entered.wait(WAIT)  # the first callback is running (and held)

    scheduler.schedule(key, PAST + timedelta(seconds=1))  # re-armed, due at once
    settle(scheduler, fired)  # the scheduler has handled the re-armed timer
    fired.hold.set()

    fired.wait(key, times=2, timeout=3.0)
    assert fired.of(key) == [PAST, PAST + timedelta(seconds=1)]


def test_a_timer_needs_a_timezone_aware_time(scheduler: RolloutScheduler) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduler.schedule(("fraud", "scorer"), datetime(2026, 11, 23, 10, 0))  # noqa: DTZ001
    assert scheduler.due() == {}
