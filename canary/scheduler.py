"""One timer per active rollout, on APScheduler 3.x.

The timers hold no state of their own: each rollout's next wake-up is the ``next_check_at``
the engine persisted with the rollout, so after a restart (or a change of leader)
:meth:`RolloutScheduler.rebuild` recreates every timer from the database and a rollout
waits exactly as long as it has left. A timer whose moment passed while no controller
ran fires at once. Firing only *enqueues* the rollout; the controller's worker does the
reconcile, so timers never run rollout logic concurrently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from canary.log import get_logger

__all__ = ["Key", "RolloutScheduler"]

log = get_logger("canary.scheduler")

Key = tuple[str, str]  # (namespace, name)


def _job_id(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


class RolloutScheduler:
    """``fire(key, scheduled_at)`` is called at (or as soon as possible after) each timer."""

    def __init__(
        self,
        fire: Callable[[Key, datetime], None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._lock = threading.Lock()
        self._due: dict[Key, datetime] = {}
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            # A firing only queues the rollout, but a timer re-armed while the previous
            # firing for the same rollout is still returning must not be skipped (with one
            # instance APScheduler drops it), hence several instances per job.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 16},
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)  # firings only queue work: this is quick

    def schedule(self, key: Key, at: datetime | None) -> None:
        """Wake ``key`` at ``at`` (replacing its timer); ``None`` cancels it."""
        if at is None:
            self.cancel(key)
            return
        if at.tzinfo is None:
            raise ValueError("timers need timezone-aware datetimes")
        with self._lock:
            if self._due.get(key) == at:
                return
            self._due[key] = at
        self._scheduler.add_job(
            self._run,
            trigger=DateTrigger(run_date=at, timezone=UTC),
            args=(key, at),
            id=_job_id(key),
            replace_existing=True,
        )

    def cancel(self, key: Key) -> None:
        with self._lock:
            self._due.pop(key, None)
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(_job_id(key))

    def clear(self) -> None:
        """Drop every timer (this replica stopped leading)."""
        with self._lock:
            keys = list(self._due)
        for key in keys:
            self.cancel(key)

    def rebuild(self, due: Iterable[tuple[str, str, datetime | None]]) -> int:
        """Recreate the timers from persisted wake-up times; returns how many were set."""
        self.clear()
        count = 0
        for namespace, name, at in due:
            self.schedule((namespace, name), at or self._clock())
            count += 1
        return count

    def due(self) -> dict[Key, datetime]:
        with self._lock:
            return dict(self._due)

    def _run(self, key: Key, at: datetime) -> None:
        with self._lock:
            if self._due.get(key) == at:
                del self._due[key]
        try:
            self._fire(key, at)
        except Exception:  # a failing callback must not kill the scheduler thread
            log.exception("scheduler.fire_failed", namespace=key[0], name=key[1])
