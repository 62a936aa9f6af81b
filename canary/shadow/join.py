"""The join: responses to the same request from different InferenceServices, paired.

Responses are keyed by (namespace, event id, component): the logger gives both copies of a
request the caller's ``Ce-Id``, and a predictor's answer pairs with a predictor's only.
Within a key the first response of each InferenceService is kept; a response from another
InferenceService pairs with every earlier one, prediction by prediction (a batch of k inputs
gives k pairs; responses of different lengths are *mismatched* and give none). A second
response of the same InferenceService for the same key is a *duplicate* and changes nothing,
so a replay (or a forged flood) cannot count twice.

A key is held for ``ttl_seconds`` from its first response, joined or not, so a duplicate
arriving after the join is still known. A key that never found a partner within that time
has *expired* (its response is dropped), and so has the oldest waiting key pushed out when
``max_pending`` keys are held. Expiry is amortised: keys are held in arrival order and only
the expired ones at the front are looked at, on every :meth:`Joiner.take` and
:meth:`Joiner.sweep`. Thread-safe: one lock around each call.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from canary.shadow.events import InferenceEvent, Prediction

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TTL_SECONDS",
    "Joiner",
    "Outcome",
    "Pair",
    "Taken",
]

DEFAULT_TTL_SECONDS = 30.0
DEFAULT_MAX_PENDING = 100_000

Outcome = Literal["joined", "waiting", "duplicate", "ignored", "mismatched"]
"""What became of one offered event (``expired`` is what later becomes of a waiting one)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One prediction of a request answered by two InferenceServices: ``isvc`` answered
    first (``mine``), ``peer`` later (``theirs``); ``index`` is the prediction's position."""

    namespace: str
    event_id: str
    index: int
    isvc: str
    peer: str
    mine: Prediction
    theirs: Prediction

    @property
    def agree(self) -> bool | None:
        """Whether the two decisions are equal; None when either side has no decision."""
        if self.mine.decision is None or self.theirs.decision is None:
            return None
        return self.mine.decision == self.theirs.decision

    def swapped(self) -> Pair:
        """The same pair seen from the peer's side."""
        return Pair(self.namespace, self.event_id, self.index, self.peer, self.isvc,
                    self.theirs, self.mine)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`Joiner.take` did: the event's outcome, the pairs it made, and how many
    waiting responses expired (or were evicted) on the way."""

    outcome: Outcome
    pairs: tuple[Pair, ...] = ()
    expired: int = 0


_Key = tuple[str, str, str | None]  # namespace, event id, component


@dataclass(slots=True)
class _Entry:
    arrived: float
    sides: dict[str, tuple[Prediction, ...]]  # isvc -> its first response's predictions


class Joiner:
    """The in-memory join. ``clock`` is monotonic seconds."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self._clock = clock
        self._ttl = ttl_seconds
        self._max = max_pending
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._waiting = 0  # entries with one side only

    @property
    def pending(self) -> int:
        """Responses waiting for a partner (as of the last call)."""
        return self._waiting

    @property
    def held(self) -> int:
        """Keys held: waiting, or joined and kept to recognise duplicates."""
        return len(self._entries)

    def offer(self, event: InferenceEvent, predictions: Sequence[Prediction]) -> list[Pair]:
        """The pairs ``event`` makes with earlier responses (see :meth:`take`)."""
        return list(self.take(event, predictions).pairs)

    def take(self, event: InferenceEvent, predictions: Sequence[Prediction]) -> Taken:
        """Join one event: a response is kept, paired, or recognised as a duplicate; any
        other type is ignored. Expired keys are dropped first."""
        with self._lock:
            now = self._clock()
            expired = self._expire(now)
            if not event.is_response:
                return Taken("ignored", (), expired)
            mine = tuple(predictions)
            key = (event.namespace, event.id, event.component)
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self._max:
                    expired += self._evict_oldest()
                self._entries[key] = _Entry(now, {event.isvc: mine})
                self._waiting += 1
                return Taken("waiting", (), expired)
            if event.isvc in entry.sides:
                return Taken("duplicate", (), expired)
            pairs: list[Pair] = []
            for isvc, earlier in entry.sides.items():
                if len(earlier) != len(mine):
                    continue
                pairs.extend(
                    Pair(event.namespace, event.id, index, isvc, event.isvc, theirs, ours)
                    for index, (theirs, ours) in enumerate(zip(earlier, mine, strict=True))
                )
            if len(entry.sides) == 1:
                self._waiting -= 1
            entry.sides[event.isvc] = mine
            return Taken("joined" if pairs else "mismatched", tuple(pairs), expired)

    def sweep(self) -> int:
        """Drop the keys past their time now; the number of waiting responses that expired."""
        with self._lock:
            return self._expire(self._clock())

    def _expire(self, now: float) -> int:
        expired = 0
        while self._entries:
            entry = next(iter(self._entries.values()))
            if now - entry.arrived < self._ttl:
                break
            expired += self._evict_oldest()
        return expired

    def _evict_oldest(self) -> int:
        _, entry = self._entries.popitem(last=False)
        if len(entry.sides) == 1:
            self._waiting -= 1
            return 1
        return 0
