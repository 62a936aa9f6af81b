"""The test bed's payload-logger stand-in (``testbed.payload_logger``): events wait in a
bounded queue and go to the collector as CloudEvents batches, one POST per batch over one
kept-alive connection, against a loopback HTTP server that records what it receives."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testbed.behaviour import BehaviourBook, ModelBehaviour
from testbed.payload_logger import BATCH_CONTENT_TYPE, EventSender, LoggerEvent
from testbed.traffic import Target, TrafficSimulator

NS = "models"


@dataclass
class Collector:
    """What the loopback collector received: (client port, headers, body) per POST."""

    url: str
    status: int = 202
    posts: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[dict[str, object]]:
        with self.lock:
            return [event for _, _, body in self.posts for event in json.loads(body)]


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.posts.append((self.client_address[1], dict(self.headers), body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/events?source=testbed"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def senders() -> Iterator[list[EventSender]]:
    """Senders a test makes, closed after it."""
    made: list[EventSender] = []
    yield made
    for sender in made:
        sender.stop()


def event(request_id: str, isvc: str = "scorer", decision: str = "approve") -> LoggerEvent:
    return LoggerEvent(
        request_id, NS, isvc, f"{isvc}-pod", decision, 0.125, "2030-01-01T00:00:00.000000Z"
    )


def test_a_batch_is_one_post_of_structured_events(
    collector: Collector, senders: list[EventSender]
) -> None:
    sender = EventSender(collector.url)
    senders.append(sender)
    sender.offer([event("a", "scorer", "decline"), event("a", "challenger")])
    assert sender.send_pending() == 2
    ((_, headers, body),) = collector.posts
    assert headers["Content-Type"] == BATCH_CONTENT_TYPE
    assert json.loads(body) == [
        {
            "specversion": "1.0",
            "id": "a",
            "type": "org.kubeflow.serving.inference.response",
            "source": "scorer-pod",
            "time": "2030-01-01T00:00:00.000000Z",
            "datacontenttype": "application/json",
            "inferenceservicename": "scorer",
            "namespace": NS,
            "component": "predictor",
            "endpoint": "default",
            "data": {"predictions": [{"decision": "decline", "score": 0.125}]},
        },
        {
            "specversion": "1.0",
            "id": "a",
            "type": "org.kubeflow.serving.inference.response",
            "source": "challenger-pod",
            "time": "2030-01-01T00:00:00.000000Z",
            "datacontenttype": "application/json",
            "inferenceservicename": "challenger",
            "namespace": NS,
            "component": "predictor",
            "endpoint": "default",
            "data": {"predictions": [{"decision": "approve", "score": 0.125}]},
        },
    ]
    assert sender.send_pending() == 0  # nothing left: no empty POST
    assert len(collector.posts) == 1


def test_batches_reuse_one_connection_and_respect_the_batch_limit(
    collector: Collector, senders: list[EventSender]
) -> None:
    sender = EventSender(collector.url, batch_limit=3)
    senders.append(sender)
    sender.offer([event(str(i)) for i in range(7)])
    assert [sender.send_pending() for _ in range(4)] == [3, 3, 1, 0]
    assert [len(json.loads(body)) for _, _, body in collector.posts] == [3, 3, 1]
    assert len({port for port, _, _ in collector.posts}) == 1  # kept alive
    assert [e["id"] for e in collector.events()] == [str(i) for i in range(7)]  # in order
    assert sender.stats().sent == 7
    assert sender.stats().posts == 3


def test_a_full_queue_drops_and_counts(collector: Collector, senders: list[EventSender]) -> None:
    sender = EventSender(collector.url, capacity=5)
    senders.append(sender)
    assert sender.offer([event(str(i)) for i in range(4)]) == 4
    assert sender.offer([event(str(i)) for i in range(4, 8)]) == 1
    stats = sender.stats()
    assert (stats.queued, stats.dropped) == (5, 3)
    sender.send_pending()
    assert [e["id"] for e in collector.events()] == ["0", "1", "2", "3", "4"]
    assert sender.offer([event("8")]) == 1  # room again


def test_failed_posts_lose_their_events_and_are_counted(
    collector: Collector, senders: list[EventSender]
) -> None:
    collector.status = 500
    sender = EventSender(collector.url)
    senders.append(sender)
    sender.offer([event("a"), event("a", "challenger")])
    assert sender.send_pending() == 0
    assert (sender.stats().failed, sender.stats().sent, sender.stats().queued) == (2, 0, 0)
    collector.status = 200
    sender.offer([event("b")])
    assert sender.send_pending() == 1
    assert sender.stats().sent == 1


def test_no_collector_listening_counts_failures_and_never_raises() -> None:
    sender = EventSender("http://127.0.0.1:9/", timeout=1.0)  # the discard port: refused
    sender.offer([event("a")])
    assert sender.send_pending() == 0
    assert sender.stats().failed == 1


@pytest.mark.parametrize("url", ["ftp://host/", "127.0.0.1:8080", "http:///path"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must be http"):
        EventSender(url)


def test_the_running_simulator_posts_its_events_and_flushes_them_on_stop(
    tmp_path: Path, collector: Collector
) -> None:
    ok = ModelBehaviour(error_rate=0.0)
    models = BehaviourBook(default_rate=50.0, default=ok).with_rate(NS, "challenger", 0.0)
    sim = TrafficSimulator(
        models,
        tmp_path / "targets.json",
        rng=random.Random(11),
        tick_interval=0.05,
        logger_url=collector.url,
    )
    sim.set_routes(NS, "scorer", [Target("scorer-predictor-00001", 100, "s3://m/v1")])
    sim.set_routes(NS, "challenger", [Target("challenger-predictor-00001", 100, "s3://m/ch")])
    sim.set_mirror(NS, "scorer", Target("challenger-predictor-00001", 0, "s3://m/ch"), 100)
    sim.start()
    try:
        deadline = time.monotonic() + 10
        while len(collector.events()) < 20:
            assert time.monotonic() < deadline, "no events reached the collector within 10 s"
            time.sleep(0.05)
    finally:
        sim.stop()
    stats = sim.stats()
    copies = sim.counts(NS, "challenger-predictor-00001").mirrored
    assert stats["logger_events_sent"] == 2 * copies == len(collector.events())
    assert stats["logger_events_queued"] == stats["logger_events_dropped"] == 0
    assert {e["inferenceservicename"] for e in collector.events()} == {"scorer", "challenger"}
    assert sim.logger is not None
    assert not sim.logger.running
