"""The controller's HTTP server over real sockets: health, readiness, metrics, the admission
endpoint, TLS, and the server's own start/stop contract."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from canary.admission import ADMISSION_PATH
from canary.api.app import create_app
from canary.api.health import Health
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet, RolloutPolicy
from canary.server import HttpServer, HttpServerError

pytestmark = pytest.mark.integration

POLICIES = PolicySet([RolloutPolicy(name="default")], {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Served:
    def __init__(self, tmp_path: Path, **server: Any) -> None:
        self.clock = Clock()
        self.health = Health(liveness_timeout=30.0, clock=self.clock)
        self.metrics = ControllerMetrics()
        extra = APIRouter()

        @extra.get("/extra")
        def extra_route() -> dict[str, str]:
            return {"hello": "extra"}

        app = create_app(
            health=self.health,
            policies=lambda: POLICIES,
            metrics=self.metrics,
            extra_routers=[extra],
        )
        self.server = HttpServer(
            app, host="127.0.0.1", port=0, certfile=None, keyfile=None, **server
        )
        self.server.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.server.port}", timeout=5)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    instance = Served(tmp_path)
    try:
        yield instance
    finally:
        instance.close()


def running(server: HttpServer) -> bool:
    return server.running


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --- health ------------------------------------------------------------------------------


def test_healthz_while_alive(served: Served) -> None:
    response = served.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_fails_when_a_loop_stops_beating(served: Served) -> None:
    served.health.heartbeat("worker")
    served.clock.now += 29
    assert served.client.get("/healthz").status_code == 200
    served.clock.now += 2
    response = served.client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "stale_loops": {"worker": 31.0}}
    served.health.heartbeat("worker")
    assert served.client.get("/healthz").status_code == 200
    served.clock.now += 100
    served.health.forget_loop("worker")  # a loop that ended on purpose is not expected
    assert served.client.get("/healthz").status_code == 200


def test_healthz_fails_when_marked_dead(served: Served) -> None:
    served.health.set_alive(False, "the worker thread crashed")
    response = served.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["detail"] == "the worker thread crashed"


def test_readyz_needs_database_policies_and_watch(served: Served) -> None:
    response = served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "components": {
            "database": {"ok": False, "detail": "not reported yet"},
            "policies": {"ok": False, "detail": "not reported yet"},
            "watch": {"ok": False, "detail": "not reported yet"},
        },
    }
    served.health.set_ready("database", True, "reachable")
    served.health.set_ready("policies", True, "loaded")
    assert served.client.get("/readyz").status_code == 503
    served.health.set_ready("watch", True, "listed")
    served.health.set_ready("process", True, "running")
    response = served.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["ready"] is True
    assert response.json()["components"]["process"] == {"ok": True, "detail": "running"}
    served.health.set_ready("database", False, "connection refused")
    response = served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["components"]["database"] == {
        "ok": False,
        "detail": "connection refused",
    }


# --- metrics ------------------------------------------------------------------------------


def review_body(uid: str = "uid-1") -> dict[str, Any]:
    def obj(uri: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": "m",
                "namespace": "ns",
                "annotations": {"kserve-canary.io/enabled": "true"},
            },
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                             "storageUri": uri}}},
        }  # fmt: skip

    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "serving.kserve.io", "version": "v1beta1",
                     "kind": "InferenceService"},
            "operation": "UPDATE",
            "object": obj("s3://m/v2"),
            "oldObject": obj("s3://m/v1"),
        },
    }  # fmt: skip


def test_metrics_in_the_prometheus_text_format(served: Served) -> None:
    served.metrics.set_leader(True)
    served.metrics.set_weight("ns", "m", 25)
    response = served.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "kserve_canary_leader 1.0" in text
    assert 'kserve_canary_canary_weight_percent{name="m",namespace="ns"} 25.0' in text
    assert "# TYPE kserve_canary_tick_lag_seconds histogram" in text


def test_admission_over_http_counts_its_result(served: Served) -> None:
    response = served.client.post(ADMISSION_PATH, json=review_body("abc-123"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["uid"] == "abc-123"
    assert answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert patch == [{"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 10}]
    metrics = served.client.get("/metrics").text
    assert 'kserve_canary_admission_reviews_total{result="patched"} 1.0' in metrics


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"kind": "AdmissionReview"}'], ids=["text", "list", "no request"]
)
def test_admission_refuses_what_is_not_an_admission_review(served: Served, body: bytes) -> None:
    response = served.client.post(ADMISSION_PATH, content=body)
    assert response.status_code == 400
    assert "AdmissionReview" in response.json()["error"]
    assert 'kserve_canary_admission_reviews_total{result="error"} 1.0' in (
        served.client.get("/metrics").text
    )


def test_extra_routers_are_served(served: Served) -> None:
    assert served.client.get("/extra").json() == {"hello": "extra"}


def test_no_api_docs_are_served(served: Served) -> None:
    assert served.client.get("/docs").status_code == 404
    assert served.client.get("/openapi.json").status_code == 404


# --- the server ---------------------------------------------------------------------------


def test_port_zero_picks_a_free_port_and_stop_releases_it(tmp_path: Path) -> None:
    instance = Served(tmp_path)
    port = instance.server.port
    assert port > 0
    assert running(instance.server)
    assert instance.client.get("/healthz").status_code == 200
    instance.close()
    assert not running(instance.server)
    assert refused(port)
    instance.server.stop()  # idempotent


def test_a_server_starts_once(served: Served) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        served.server.start()


def test_a_taken_port_fails_in_start(served: Served) -> None:
    other = HttpServer(
        create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics()),
        host="127.0.0.1",
        port=served.server.port,
        certfile=None,
        keyfile=None,
    )
    with pytest.raises(HttpServerError, match="cannot listen"):
        other.start()


def test_port_before_start_is_an_error() -> None:
    server = HttpServer(
        create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics()),
        host="127.0.0.1",
        port=0,
        certfile=None,
        keyfile=None,
    )
    with pytest.raises(RuntimeError, match="not been started"):
        _ = server.port


def test_tls_needs_both_files(tmp_path: Path) -> None:
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics())
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        HttpServer(app, host="127.0.0.1", port=0, certfile=tmp_path / "c", keyfile=None)


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed (the test bed needs it too)"
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics())
    server = HttpServer(app, host="127.0.0.1", port=0, certfile=cert, keyfile=key)
    server.start()
    try:
        assert server.scheme == "https"
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context, timeout=5) as client:
            response = client.get(f"https://127.0.0.1:{server.port}/healthz")
            assert response.status_code == 200
            answer = client.post(f"https://127.0.0.1:{server.port}{ADMISSION_PATH}",
                                 json=review_body())  # fmt: skip
            assert answer.json()["response"]["allowed"] is True
        with httpx.Client(timeout=5) as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()


def test_a_bad_certificate_fails_in_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=ControllerMetrics())
    server = HttpServer(app, host="127.0.0.1", port=0, certfile=cert, keyfile=key)
    with pytest.raises(HttpServerError, match="TLS certificate"):
        server.start()
