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
the flusher is done, one of them becomes the next flusher. A caller returns only once its
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
    __slots__ = ("outcome", "request")

    def __init__(self, request: R) -> None:
        self.request = request
        self.outcome: Outcome[T] | None = None


class CommitGroup(Generic[R, T]):
    """Run requests in batches, one batch at a time (see the module doc)."""

    def __init__(
        self, run: Callable[[Sequence[R]], Sequence[Outcome[T]]], *, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self._max = max_batch
        self._cond = threading.Condition()
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
            while mine.outcome is None:
                if self._busy:
                    self._cond.wait()
                    continue
                batch = self._queue[: self._max]
                del self._queue[: self._max]
                self._busy = True
                try:
                    self._cond.release()
                    try:
                        outcomes = self._outcomes([w.request for w in batch])
                    finally:
                        self._cond.acquire()
                finally:
                    self._busy = False
                    self._cond.notify_all()
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    waiting.outcome = outcome
                self.batches += 1
                self.requests += len(batch)
        return mine.outcome.unwrap()

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
