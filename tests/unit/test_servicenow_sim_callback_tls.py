"""The simulator's callback to an https receiver whose certificate comes from a private CA (as
the demo's controller has one from the test bed's CA): trusted with ``callback_ca_file``,
refused without it. In-process, on loopback, with a certificate made by openssl."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testbed.servicenow import signing
from testbed.servicenow.query import parse
from testbed.servicenow.server import CallbackTarget, ServiceNowServer
from testbed.servicenow.store import Decision, Instance, Seed
from tests.tls_pairs import Pair, make_pair

SEED = Seed.model_validate(
    {
        "integration_user": "kserve-canary",
        "users": [{"user_name": "kserve-canary", "password": "p"}, {"user_name": "alice"}],
        "groups": [{"name": "credit-risk-owners", "members": ["alice"]}],
    }
)


class _Receiver:
    """An https server that answers 202 and keeps the bodies it was sent."""

    def __init__(self, pair: Pair) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.cert, pair.key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}/webhooks/v1/servicenow"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path / "receiver", 7)


@pytest.fixture
def receiver(pair: Pair) -> Iterator[_Receiver]:
    running = _Receiver(pair)
    yield running
    running.stop()


def _approved(instance: Instance) -> Decision:
    group = instance.find("sys_user_group", parse("name=credit-risk-owners"))[0]["sys_id"]
    change = instance.create_change({"assignment_group": group}, instance.integration_user)
    instance.update_change(change["sys_id"], {"state": "-3"}, instance.integration_user)
    return instance.decide(change["number"], "alice", "approved", "evidence reviewed")


def _deliver(receiver: _Receiver, ca_file: Path | None) -> list[dict[str, object]]:
    instance = Instance(SEED)
    server = ServiceNowServer(
        instance,
        callback=CallbackTarget(receiver.url, [signing.new_secret()]),
        callback_ca_file=ca_file,
    ).start()  # stop() needs it serving
    try:
        return server.deliver(_approved(instance), "signed")
    finally:
        server.stop()


def test_a_callback_to_a_receiver_of_a_private_ca_is_delivered_with_that_ca(
    receiver: _Receiver, pair: Pair
) -> None:
    (outcome,) = _deliver(receiver, pair.cert)
    assert outcome["status"] == 202, outcome
    (body,) = receiver.bodies
    payload = json.loads(body)
    assert payload["approver"]["user_name"] == "alice"
    assert payload["comments"] == "evidence reviewed"


def test_without_the_ca_the_receiver_s_certificate_is_refused(receiver: _Receiver) -> None:
    (outcome,) = _deliver(receiver, None)
    assert "status" not in outcome
    assert "CERTIFICATE_VERIFY_FAILED" in str(outcome["error"])
    assert receiver.bodies == []
