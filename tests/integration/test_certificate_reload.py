"""The HTTPS server picks up a rotated serving certificate without a restart, over real
sockets: the certificate files are replaced the way the kubelet updates a mounted Secret
(the ``..data`` symlink swapped), and a new TLS connection is then handed the new
certificate; a half-written rotation keeps the old one served until it completes; and the
watching ends with the server. The reload logic itself: tests/unit/test_tls_reload.py."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from canary.api.app import create_app
from canary.api.health import Health
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet, RolloutPolicy
from canary.server import HttpServer
from tests.tls_pairs import Pair, SecretVolume, make_pair

pytestmark = pytest.mark.integration

POLICIES = PolicySet([RolloutPolicy(name="default")], {})
INTERVAL = 0.05  # the poll interval the server is given here (production: 5 s)


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the server is handed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def watching(server: HttpServer) -> bool:
    return server.watching_certificates


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(INTERVAL / 2)
    return condition()


class Server:
    def __init__(self, cert: Path, key: Path) -> None:
        self.metrics = ControllerMetrics()
        app = create_app(health=Health(), policies=lambda: POLICIES, metrics=self.metrics)
        self.server = HttpServer(
            app, host="127.0.0.1", port=0, certfile=cert, keyfile=key,
            reload_interval=INTERVAL, metrics=self.metrics,
        )  # fmt: skip
        self.server.start()

    def count(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    @property
    def reloads(self) -> float:
        return self.count("kserve_canary_certificate_reloads_total")

    @property
    def failures(self) -> float:
        return self.count("kserve_canary_certificate_reload_failures_total")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    root = tmp_path_factory.mktemp("pairs")
    return {"a": make_pair(root / "a", 0xA1), "b": make_pair(root / "b", 0xB2)}


@pytest.fixture
def volume(tmp_path: Path, pairs: dict[str, Pair]) -> SecretVolume:
    mounted = SecretVolume(tmp_path / "serving-cert")
    mounted.publish(pairs["a"])
    return mounted


@pytest.fixture
def server(volume: SecretVolume) -> Iterator[Server]:
    running = Server(volume.cert, volume.key)
    try:
        yield running
    finally:
        running.server.stop()


def test_a_rotated_secret_is_served_to_new_connections_without_a_restart(
    server: Server, volume: SecretVolume, pairs: dict[str, Pair]
) -> None:
    port = server.server.port
    assert served_certificate(port) == pairs["a"].der
    context = ssl.create_default_context(cafile=str(pairs["a"].cert))
    with httpx.Client(verify=context, timeout=5) as before:
        assert before.get(f"https://127.0.0.1:{port}/healthz").status_code == 200

        volume.publish(pairs["b"], older_mtime=True)  # the kubelet's ..data swap

        assert eventually(lambda: served_certificate(port) == pairs["b"].der)
        assert server.server.running
        assert server.server.port == port
        assert server.reloads == 1
        assert server.failures == 0
        # a client that trusts only the new certificate now connects ...
        trusting_b = ssl.create_default_context(cafile=str(pairs["b"].cert))
        with httpx.Client(verify=trusting_b, timeout=5) as after:
            response = after.get(f"https://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert "kserve_canary_certificate_reloads_total 1.0" in response.text
        # ... and one that trusts only the old one no longer can, on a new connection
        with httpx.Client(verify=context, timeout=5) as stale, pytest.raises(httpx.ConnectError):
            stale.get(f"https://127.0.0.1:{port}/healthz")


def test_a_half_written_rotation_keeps_the_old_certificate_until_it_completes(
    tmp_path: Path, pairs: dict[str, Pair]
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    cert, key = folder / "tls.crt", folder / "tls.key"
    cert.write_bytes(pairs["a"].cert.read_bytes())
    key.write_bytes(pairs["a"].key.read_bytes())
    running = Server(cert, key)
    try:
        port = running.server.port
        cert.write_bytes(pairs["b"].cert.read_bytes())  # the new certificate, the old key
        assert eventually(lambda: running.failures >= 2)  # tried on every poll
        assert served_certificate(port) == pairs["a"].der
        assert running.reloads == 0

        key.write_bytes(pairs["b"].key.read_bytes())  # the rotation completes
        assert eventually(lambda: served_certificate(port) == pairs["b"].der)
        assert running.reloads == 1
    finally:
        running.server.stop()


def test_the_watching_ends_with_the_server(
    server: Server, volume: SecretVolume, pairs: dict[str, Pair]
) -> None:
    assert watching(server.server)
    server.server.stop()
    assert not server.server.running
    assert not watching(server.server)
    volume.publish(pairs["b"])
    time.sleep(INTERVAL * 10)
    assert server.reloads == 0
    assert server.failures == 0


def test_plain_http_watches_nothing() -> None:
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics())
    server = HttpServer(app, host="127.0.0.1", port=0, certfile=None, keyfile=None)
    server.start()
    try:
        assert server.certificate_reloader is None
        assert not watching(server)
    finally:
        server.stop()


def test_a_non_positive_reload_interval_is_refused(pairs: dict[str, Pair]) -> None:
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics())
    with pytest.raises(ValueError, match="reload_interval must be positive"):
        HttpServer(
            app, host="127.0.0.1", port=0, certfile=pairs["a"].cert, keyfile=pairs["a"].key,
            reload_interval=0,
        )  # fmt: skip
