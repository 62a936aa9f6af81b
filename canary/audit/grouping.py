"""Group commit: concurrent writers' commits share one database transaction.

Every decision the controller makes is committed before it acts on it, so with many
rollouts reconciling at once the audit store's throughput is bounded by how many
transactions per second it can finish, each of which holds the chain head's lock from its
first append to its COMMIT. :class:`CommitGroup` lets the callers that arrive while a
transaction is running wait for the next one, which then carries all of their requests:
one lock, one read of the head, one insert for their records, one flush of the WAL.

No thread of its own: the first caller to find no batch running becomes the *flusher*,
takes the waiting requests (at most ``max_batch``, its own among them), runs them through
``run`` and hands every caller its own outcome. Callers that arrived meanwhile wait; when
the flusher is done, the first of them becomes the next flusher. A caller returns only once its
own request was carried out (or failed), so "committed before acting" still holds for each.

What a batch means for each request is decided by ``run`` (the store): it must return one
outcome per request, in order; an exception it raises is every request's failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CommitGroup", "Outcome"]

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The outcome of one request: its ``value``, or the ``error`` to raise to its caller."""

    value: T | None = None
    error: BaseException | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class _Waiting(Generic[R, T]):
    """A caller's request, and how it is woken: once, when its outcome is in or when it is
    handed the flusher's role."""

    __slots__ = ("lead", "outcome", "request", "wake")

    def __init__(self, request: R) -> None:
        self.request = request
        self.outcome: Outcome[T] | None = None
        self.lead = False
        self.wake = threading.Event()


class CommitGroup(Generic[R, T]):
    """Run requests in batches, one batch at a time (see the module doc).

    Wake-ups are targeted: a finished batch wakes its own callers and hands the flusher's
    role to the first caller still queued, if any (so a batch follows the last without a
    race for it); the others keep sleeping. Waking every waiter after every batch would
    cost a thread switch per waiter per batch (with 64 concurrent rollouts, thousands a
    second), all of them fighting for the interpreter while the flusher needs it."""

    def __init__(
        self, run: Callable[[Sequence[R]], Sequence[Outcome[T]]], *, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self._max = max_batch
        self._cond = threading.Condition()  # guards the queue and the flusher's role
        self._queue: list[_Waiting[R, T]] = []
        self._busy = False
        self.batches = 0  # batches run, and requests carried in them (for the benchmark)
        self.requests = 0

    def submit(self, request: R) -> T:
        """Carry out ``request`` (in a batch with whatever else is waiting) and return its
        value, or raise its error."""
        mine: _Waiting[R, T] = _Waiting(request)
        with self._cond:
            self._queue.append(mine)
            if not self._busy:  # nothing running (so nobody queued before us): flush
                self._busy = True
                mine.lead = True
        if not mine.lead:
            try:
                mine.wake.wait()
            except BaseException:  # interrupted (KeyboardInterrupt in the main thread)
                self._abandon(mine)
                raise
        if mine.outcome is None:  # handed the flusher's role: first in the queue
            self._flush(mine)
        assert mine.outcome is not None
        return mine.outcome.unwrap()

    def _abandon(self, mine: _Waiting[R, T]) -> None:
        """A caller that stopped waiting: its request leaves the queue if no batch took it
        yet (one that did may still be carried out), and a flusher's role handed to it
        goes on to the next caller, or is given up: never lost with the caller."""
        following = None
        with self._cond:
            if mine in self._queue:
                self._queue.remove(mine)
            if mine.lead and mine.outcome is None:
                mine.lead = False
                following = self._hand_on()
        if following is not None:
            following.wake.set()

    def _hand_on(self) -> _Waiting[R, T] | None:
        """Under the lock: the flusher's role to the first caller still queued (returned, to
        be woken once the lock is released), or given up when nobody is."""
        following = self._queue[0] if self._queue else None
        if following is None:
            self._busy = False
        else:
            following.lead = True
        return following

    def _flush(self, mine: _Waiting[R, T]) -> None:
        """As the flusher: run the first ``max_batch`` queued requests (``mine`` first),
        give each caller its outcome, and hand the role on (or give it up)."""
        with self._cond:
            batch = self._queue[: self._max]
            del self._queue[: self._max]
        assert batch, "the flusher's own request is queued"
        assert batch[0] is mine, "the flusher runs its own request first"
        outcomes: Sequence[Outcome[T]] = ()
        try:
            outcomes = self._outcomes([w.request for w in batch])
        finally:
            if len(outcomes) != len(batch):  # interrupted (KeyboardInterrupt, say)
                error = RuntimeError("group commit: the batch was interrupted")
                outcomes = [Outcome(error=error) for _ in batch]
            with self._cond:
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    waiting.outcome = outcome
                self.batches += 1
                self.requests += len(batch)
                following = self._hand_on()
            for waiting in batch[1:]:
                waiting.wake.set()
            if following is not None:
                following.wake.set()

    def _outcomes(self, requests: Sequence[R]) -> Sequence[Outcome[T]]:
        try:
            outcomes = self._run(requests)
        except BaseException as exc:
            return [Outcome(error=exc) for _ in requests]
        if len(outcomes) != len(requests):  # a bug in `run`: never leave a caller hanging
            error = RuntimeError(
                f"group commit: {len(outcomes)} outcomes for {len(requests)} requests"
            )
            return [Outcome(error=error) for _ in requests]
        return outcomes
