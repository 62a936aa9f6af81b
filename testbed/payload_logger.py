"""The test bed's stand-in for KServe's payload logger: response CloudEvents of mirrored
requests, posted in batches to a collector.

On a cluster each model pod's logger (``spec.predictor.logger: {url, mode: response}``)
POSTs one CloudEvent per 200 response in **binary mode** (the attributes as ``ce-*``
headers, the response body as the HTTP body), one event per POST. The traffic simulator
produces thousands of responses a second on a shared machine, so it sends the same events
more cheaply: every event of a tick in one POST in the CloudEvents **batch** format
(``Content-Type: application/cloudevents-batch+json``, a JSON array of structured events
whose ``data`` is the response body as JSON), over one keep-alive connection. A collector
must accept both forms to be tested here and to work on a cluster.

Events wait in a bounded queue (:class:`EventSender`); a tick whose events do not fit loses
the rest (counted as dropped), as a logger whose queue is full drops. A POST that fails (no
collector listening, a non-2xx answer) loses its events too (counted as failed): the
simulator never blocks on the collector and never retries.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from canary.log import get_logger

__all__ = [
    "BATCH_CONTENT_TYPE",
    "RESPONSE_EVENT_TYPE",
    "EventSender",
    "LoggerEvent",
    "SenderStats",
]

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
RESPONSE_EVENT_TYPE = "org.kubeflow.serving.inference.response"

_log = get_logger("sandbox.payload_logger")


class LoggerEvent(NamedTuple):  # a tuple: the simulator makes thousands a second
    """One 200 response as the payload logger of ``isvc``'s pod reports it.

    ``id`` is the request's ``Ce-Id`` (a mirrored copy keeps the live request's, so the
    champion's and the challenger's events of one request share it); ``source`` is the pod
    that answered; the body is KServe's v1 protocol with one prediction."""

    id: str
    namespace: str
    isvc: str
    source: str
    decision: str
    score: float
    time: str  # RFC 3339, when the response was logged

    def body(self) -> dict[str, Any]:
        return {"predictions": [{"decision": self.decision, "score": self.score}]}

    def structured(self) -> dict[str, Any]:
        """The event in structured mode (a JSON object), as an element of a batch."""
        return {
            "specversion": "1.0",
            "id": self.id,
            "type": RESPONSE_EVENT_TYPE,
            "source": self.source,
            "time": self.time,
            "datacontenttype": "application/json",
            "inferenceservicename": self.isvc,
            "namespace": self.namespace,
            "component": "predictor",
            "endpoint": "default",
            "data": self.body(),
        }


@dataclass(frozen=True)
class SenderStats:
    queued: int  # waiting to be sent
    sent: int  # accepted by the collector (a 2xx answer)
    dropped: int  # did not fit in the queue
    failed: int  # lost with a POST that failed
    posts: int  # POSTs attempted


class EventSender:
    """A bounded queue of :class:`LoggerEvent` and a thread that POSTs them as batches.

    ``offer`` never blocks: what does not fit in ``capacity`` events is dropped (counted).
    The thread wakes on each ``offer`` and sends everything waiting, at most
    ``batch_limit`` events per POST. ``send_pending`` does one such POST in the caller's
    thread (the thread's own step; tests call it directly)."""

    def __init__(
        self,
        url: str,
        *,
        capacity: int = 20_000,
        batch_limit: int = 5_000,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the logger URL must be http(s)://host[:port][/path], got {url!r}")
        if capacity < 1 or batch_limit < 1:
            raise ValueError("capacity and batch_limit must be positive")
        self._url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._capacity = capacity
        self._batch_limit = batch_limit
        self._timeout = timeout
        self._pending: deque[LoggerEvent] = deque()
        self._wake = threading.Condition()
        self._connection: http.client.HTTPConnection | None = None
        self._sent = self._dropped = self._failed = self._posts = 0
        self._last_problem = ""
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self._url

    def stats(self) -> SenderStats:
        with self._wake:
            return SenderStats(
                len(self._pending), self._sent, self._dropped, self._failed, self._posts
            )

    def offer(self, events: Sequence[LoggerEvent]) -> int:
        """Queue ``events`` (one tick's); returns how many fit, the rest are dropped."""
        if not events:
            return 0
        with self._wake:
            room = max(0, self._capacity - len(self._pending))
            accepted = min(room, len(events))
            self._pending.extend(events[:accepted])
            self._dropped += len(events) - accepted
            self._wake.notify()
        return accepted

    def take(self, limit: int | None = None) -> list[LoggerEvent]:
        """Remove and return up to ``limit`` waiting events (all when None), oldest first."""
        with self._wake:
            count = len(self._pending) if limit is None else min(limit, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]

    def send_pending(self) -> int:
        """POST what is waiting (up to ``batch_limit`` events); returns how many the
        collector accepted. A failed POST loses its events (counted as failed)."""
        batch = self.take(self._batch_limit)
        if not batch:
            return 0
        body = json.dumps([event.structured() for event in batch], separators=(",", ":"))
        problem = self._post(body.encode())
        with self._wake:
            self._posts += 1
            if problem:
                self._failed += len(batch)
            else:
                self._sent += len(batch)
        if problem != self._last_problem:  # log each new problem once, and the recovery
            if problem:
                _log.warning("payload_logger.post_failed", url=self._url, error=problem)
            else:
                _log.info("payload_logger.post_recovered", url=self._url)
            self._last_problem = problem
        return 0 if problem else len(batch)

    def _post(self, body: bytes) -> str:
        """One POST; returns "" or what went wrong. A kept-alive connection the collector
        has closed meanwhile is reopened once."""
        headers = {"Content-Type": BATCH_CONTENT_TYPE, "Content-Length": str(len(body))}
        for attempt in (1, 2):
            connection = self._connection or self._connect()
            try:
                connection.request("POST", self._path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()  # the connection can be reused only once the answer is read
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if attempt == 2:
                    return f"{type(exc).__name__}: {exc}"
                continue
            if response.will_close:
                self._close()
            if not 200 <= response.status < 300:
                return f"HTTP {response.status} {response.reason}"
            return ""
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._connection = kind(self._host, self._port, timeout=self._timeout)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # --- the thread ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._wake:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="payload-logger", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is still waiting (one last POST), then stop the thread and close the
        connection (without a thread, only close it)."""
        thread, self._thread = self._thread, None
        if thread is None:
            self._close()
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        thread.join(timeout)
        if thread.is_alive():  # pragma: no cover - a collector that never answers
            _log.error("payload_logger.thread_stuck", url=self._url)

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._pending and not self._stopping:
                        self._wake.wait()
                    stopping = self._stopping
                self.send_pending()
                if stopping:
                    return
        finally:
            self._close()
