"""The shadow collector's metrics and the handling of one delivery from the payload logger.

:class:`ShadowCollector` reads the events of one HTTP request (:mod:`canary.shadow.events`),
extracts each response's predictions, joins them (:class:`canary.shadow.join.Joiner`) and
counts the pairs in :class:`ShadowMetrics`. It knows nothing of HTTP frameworks: the app in
:mod:`canary.api.shadow` reads the body (with its size limit) and turns the result into
answers.

Series (a private registry, served at ``GET /metrics``):

* ``kserve_canary_shadow_pairs_total{namespace, isvc, peer, agree}``: one per paired
  prediction whose two sides both have a decision, written for both orderings;
* ``kserve_canary_shadow_score{namespace, isvc, peer}``: histogram of ``isvc``'s score in each
  pair whose ``isvc`` side has one (buckets 0.05 to 1.0 by 0.05);
* ``kserve_canary_shadow_events_total{outcome}``: joined, waiting, duplicate, expired
  (waiting responses dropped at their time or when the join was full), ignored (events other
  than responses), unreadable (events, or whole requests refused with 413/415),
  mismatched (responses of different lengths);
* ``kserve_canary_shadow_pending``: responses waiting for a partner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from canary.log import get_logger
from canary.shadow.events import (
    DeliveryMode,
    InferenceEvent,
    Prediction,
    UnreadableEvent,
    UnsupportedContentType,
    delivery_mode,
    extract,
    parse_batch,
    parse_binary,
    parse_structured,
)
from canary.shadow.join import Joiner, Pair

__all__ = [
    "DEFAULT_DECISION_FIELD",
    "DEFAULT_SCORE_FIELD",
    "LOG_INTERVAL_SECONDS",
    "OUTCOMES",
    "SCORE_BUCKETS",
    "Received",
    "ShadowCollector",
    "ShadowMetrics",
]

OUTCOMES = ("joined", "waiting", "duplicate", "expired", "ignored", "unreadable", "mismatched")
SCORE_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 21))  # 0.05 ... 1.0
DEFAULT_DECISION_FIELD = "decision"
DEFAULT_SCORE_FIELD = "score"
LOG_INTERVAL_SECONDS = 10.0
"""At most one ``shadow.event_unreadable`` line per reason in this long."""

log = get_logger("canary.shadow.collector")


class ShadowMetrics:
    """The collector's series in a private registry; thread-safe like prometheus_client."""

    # Classic names only, so the output is the 0.0.4 text format every Prometheus reads.
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._pairs = Counter(
            "kserve_canary_shadow_pairs",
            "Predictions answered by two InferenceServices (isvc and peer), by whether their "
            "decisions agree; each pair is counted from both sides.",
            ["namespace", "isvc", "peer", "agree"],
            registry=r,
        )
        self._score = Histogram(
            "kserve_canary_shadow_score",
            "The score isvc gave in each pair with peer.",
            ["namespace", "isvc", "peer"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self._events = Counter(
            "kserve_canary_shadow_events",
            "Payload-logger events, by outcome (joined, waiting, duplicate, expired, ignored, "
            "unreadable, mismatched).",
            ["outcome"],
            registry=r,
        )
        self._pending = Gauge(
            "kserve_canary_shadow_pending", "Responses waiting for a partner.", registry=r
        )
        for outcome in OUTCOMES:
            self._events.labels(outcome=outcome)

    def record_pair(self, pair: Pair) -> None:
        """Count ``pair`` from both sides."""
        for side in (pair, pair.swapped()):
            agree = side.agree
            if agree is not None:
                self._pairs.labels(
                    namespace=side.namespace, isvc=side.isvc, peer=side.peer,
                    agree="true" if agree else "false",
                ).inc()  # fmt: skip
            if side.mine.score is not None:
                self._score.labels(
                    namespace=side.namespace, isvc=side.isvc, peer=side.peer
                ).observe(side.mine.score)

    def record_events(self, outcome: str, count: int = 1) -> None:
        """``outcome`` is one of :data:`OUTCOMES`."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown shadow event outcome {outcome!r}; allowed: {OUTCOMES}")
        if count:
            self._events.labels(outcome=outcome).inc(count)

    def set_pending(self, count: int) -> None:
        self._pending.set(count)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class Received:
    """What became of one request's events."""

    events: int
    outcomes: Mapping[str, int]
    pairs: int
    problems: tuple[UnreadableEvent, ...] = field(default=())

    def answer(self) -> dict[str, object]:
        """The JSON answer's fields (without the problems)."""
        return {"events": self.events, "pairs": self.pairs, "outcomes": dict(self.outcomes)}


class _LogLimit:
    """At most one log line per key per ``interval`` seconds; counts what it held back."""

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None when a line for ``key`` was written within the interval; otherwise the number
        of lines held back since the last one."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


class ShadowCollector:
    """Reads, joins and counts the events of one request at a time (thread-safe).

    ``decision_field`` and ``score_field`` name the decision and the score in a response
    (:func:`canary.shadow.events.extract`); ``clock`` (monotonic seconds) times the log's
    rate limit."""

    def __init__(
        self,
        joiner: Joiner,
        metrics: ShadowMetrics,
        *,
        decision_field: str = DEFAULT_DECISION_FIELD,
        score_field: str = DEFAULT_SCORE_FIELD,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = LOG_INTERVAL_SECONDS,
    ) -> None:
        if not decision_field or not score_field:
            raise ValueError("the decision and score fields must be named")
        if decision_field == score_field:
            raise ValueError(f"the decision and score fields are both {decision_field!r}")
        self.joiner = joiner
        self.metrics = metrics
        self.decision_field = decision_field
        self.score_field = score_field
        self._log_limit = _LogLimit(clock, log_interval)

    def receive(
        self, headers: Mapping[str, str], body: bytes, *, remote: str | None = None
    ) -> Received:
        """Take the events of one request: ``headers`` (any case) and its whole body.

        Raises :class:`canary.shadow.events.UnsupportedContentType` (counted as unreadable)
        when the content type cannot be read; an unreadable event is counted and listed in
        :attr:`Received.problems`, and the other events of a batch are still taken."""
        lowered = {key.lower(): value for key, value in headers.items()}
        mode = self.check_content_type(lowered, remote=remote)
        events: list[InferenceEvent | UnreadableEvent]
        try:
            if mode == "binary":
                events = [parse_binary(lowered, body)]
            elif mode == "structured":
                events = [parse_structured(body)]
            else:
                events = list(parse_batch(body))
        except UnreadableEvent as exc:
            events = [exc]
        outcomes: dict[str, int] = {}
        problems: list[UnreadableEvent] = []
        pairs = 0
        for event in events:
            if isinstance(event, UnreadableEvent):
                problems.append(event)
                self._unreadable(event, remote, None)
                continue
            try:
                predictions = self._predictions(event)
            except UnreadableEvent as exc:
                problems.append(exc)
                self._unreadable(exc, remote, event)
                continue
            taken = self.joiner.take(event, predictions)
            outcomes[taken.outcome] = outcomes.get(taken.outcome, 0) + 1
            self.metrics.record_events(taken.outcome)
            self.metrics.record_events("expired", taken.expired)
            for pair in taken.pairs:
                self.metrics.record_pair(pair)
            pairs += len(taken.pairs)
        if problems:
            outcomes["unreadable"] = len(problems)
        self.metrics.set_pending(self.joiner.pending)
        return Received(len(events), outcomes, pairs, tuple(problems))

    def check_content_type(
        self, headers: Mapping[str, str], *, remote: str | None = None
    ) -> DeliveryMode:
        """How the request carries its events, told from its ``content-type`` header (a
        lower-case key, or a case-insensitive mapping); raises (and counts)
        :class:`canary.shadow.events.UnsupportedContentType`."""
        try:
            return delivery_mode(headers.get("content-type"))
        except UnsupportedContentType as exc:
            self.refused(exc.reason, exc.message, remote=remote)
            raise

    def _predictions(self, event: InferenceEvent) -> tuple[Prediction, ...]:
        if not event.is_response:
            return ()
        try:
            return extract(event.data, self.decision_field, self.score_field)
        except UnreadableEvent as exc:
            raise exc.within(f"the response of {event.namespace}/{event.isvc}") from None

    def refused(self, reason: str, message: str, *, remote: str | None = None) -> None:
        """Count and log (rate-limited) a request refused whole: too large, a content type
        that cannot be read, a body that ended early."""
        self.metrics.record_events("unreadable")
        held = self._log_limit.admit(reason)
        if held is not None:
            log.warning("shadow.event_unreadable", reason=reason, error=message, remote=remote,
                        held_back=held)  # fmt: skip

    def _unreadable(
        self, problem: UnreadableEvent, remote: str | None, event: InferenceEvent | None
    ) -> None:
        self.metrics.record_events("unreadable")
        held = self._log_limit.admit(problem.reason)
        if held is None:
            return
        context = {}
        if event is not None:
            context = {"namespace": event.namespace, "isvc": event.isvc, "event_id": event.id}
        log.warning("shadow.event_unreadable", reason=problem.reason, error=problem.message,
                    remote=remote, held_back=held, **context)  # fmt: skip

    def render(self) -> bytes:
        """The metrics, after dropping the responses whose time is up."""
        self.metrics.record_events("expired", self.joiner.sweep())
        self.metrics.set_pending(self.joiner.pending)
        return self.metrics.render()
