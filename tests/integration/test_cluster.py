"""The test-bed control plane: a real kube-apiserver on a real etcd, built from source.

If Go cannot build the binaries or the cluster cannot start, these tests FAIL with the
harness's explanation; they never skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from testbed.binaries import Binaries, BuildError, cache_key, ensure_built
from testbed.cluster import ADMIN_GROUP, ADMIN_USER, Cluster, ClusterError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- helpers


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (an exited child that nobody reaped holds no port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _port_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except (ConnectionRefusedError, TimeoutError):
            return False
        return True


def _assert_nothing_left(state: dict[str, Any]) -> None:
    pids: dict[str, int] = state["pids"]
    ports: dict[str, int] = state["ports"]
    assert set(pids) == {"etcd", "kube-apiserver"}
    assert set(ports) == {"etcd_client", "etcd_peer", "apiserver"}
    alive = {name: pid for name, pid in pids.items() if _pid_alive(pid)}
    assert alive == {}, f"processes still running: {alive}"
    listening = {name: port for name, port in ports.items() if _port_listening(port)}
    assert listening == {}, f"ports still listening: {listening}"


def _api_client(kubeconfig: Path | str) -> k8s.ApiClient:
    api_client: k8s.ApiClient = new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api_client


def _namespace_names(api_client: k8s.ApiClient) -> set[str]:
    return {
        ns.metadata.name
        for ns in k8s.CoreV1Api(api_client).list_namespace().items
        if ns.metadata is not None and ns.metadata.name is not None
    }


def _start(cluster: Cluster) -> Cluster:
    problem: str | None = None
    try:
        cluster.start()
    except ClusterError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"the test-bed cluster could not start:\n{problem}", pytrace=False)
    return cluster


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    problem: str | None = None
    try:
        return ensure_built()
    except BuildError as exc:
        problem = str(exc)
    pytest.fail(f"the test-bed binaries could not be built:\n{problem}", pytrace=False)


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = _start(Cluster(tmp_path_factory.mktemp("cluster"), binaries, detach=False))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def api(cluster: Cluster) -> Iterator[k8s.ApiClient]:
    with _api_client(cluster.kubeconfig_path) as api_client:
        yield api_client


# ---------------------------------------------------------------------- the running cluster


def test_readyz_answers_the_admin_and_refuses_anonymous_requests(cluster: Cluster) -> None:
    assert cluster.get("/readyz")[0] == 200
    assert cluster.get("/readyz", authenticated=False)[0] == 401
    assert cluster.get("/api/v1/namespaces", authenticated=False)[0] == 401
    status, body = cluster.get("/version")
    assert status == 200
    assert json.loads(body)["gitVersion"] == cluster.state()["versions"]["kubernetes"]


def test_the_kubeconfig_works_with_the_kubernetes_client(
    cluster: Cluster, api: k8s.ApiClient
) -> None:
    assert {"default", "kube-system"} <= _namespace_names(api)

    name = f"ksc-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    assert name in _namespace_names(api)

    review = k8s.AuthenticationV1Api(api).create_self_subject_review(
        k8s.V1SelfSubjectReview(metadata=k8s.V1ObjectMeta())
    )
    assert review.status is not None
    assert review.status.user_info is not None
    assert review.status.user_info.username == ADMIN_USER
    assert ADMIN_GROUP in (review.status.user_info.groups or [])


def test_a_wrong_token_is_rejected(cluster: Cluster) -> None:
    config = k8s.Configuration()
    config.host = cluster.server
    config.ssl_ca_cert = str(cluster.ca_path)
    config.api_key = {"authorization": "Bearer not-the-token"}
    with k8s.ApiClient(config) as api_client, pytest.raises(ApiException) as raised:
        k8s.CoreV1Api(api_client).list_namespace()
    assert raised.value.status == 401


class _LabelingWebhook(BaseHTTPRequestHandler):
    """Admits every object and adds the label ``mutated-by: test-webhook``."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"mutated-by": "test-webhook"}}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_mutating_webhook_on_loopback_is_called(cluster: Cluster, api: k8s.ApiClient) -> None:
    cert, key = cluster.issue_certificate("test-webhook", ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LabelingWebhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    core = k8s.CoreV1Api(api)
    admission = k8s.AdmissionregistrationV1Api(api)
    namespace = f"ksc-hook-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    hook_name = f"{namespace}-labels"
    ca_bundle = base64.b64encode(cluster.ca_path.read_bytes()).decode()
    webhook = k8s.V1MutatingWebhook(
        name="labels.test.kserve-canary.io",
        client_config=k8s.AdmissionregistrationV1WebhookClientConfig(
            url=f"https://127.0.0.1:{server.server_address[1]}/mutate", ca_bundle=ca_bundle
        ),
        rules=[
            k8s.V1RuleWithOperations(
                operations=["CREATE"],
                api_groups=[""],
                api_versions=["v1"],
                resources=["configmaps"],
            )
        ],
        namespace_selector=k8s.V1LabelSelector(
            match_labels={"kubernetes.io/metadata.name": namespace}
        ),
        admission_review_versions=["v1"],
        side_effects="None",
        failure_policy="Fail",
        timeout_seconds=5,
    )
    admission.create_mutating_webhook_configuration(
        k8s.V1MutatingWebhookConfiguration(
            metadata=k8s.V1ObjectMeta(name=hook_name), webhooks=[webhook]
        )
    )
    try:
        # The apiserver learns of new webhook configurations through a watch: poll briefly.
        deadline = time.monotonic() + 10
        labels: dict[str, str] | None = None
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            created = core.create_namespaced_config_map(
                namespace,
                k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=f"cm-{attempt}"), data={"a": "b"}),
            )
            labels = created.metadata.labels if created.metadata is not None else None
            if labels:
                break
        assert labels == {"mutated-by": "test-webhook"}
    finally:
        admission.delete_mutating_webhook_configuration(hook_name)
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------- stopping


def test_stop_leaves_no_process_and_no_listening_port(binaries: Binaries, tmp_path: Path) -> None:
    cluster = _start(Cluster(tmp_path / "cluster", binaries, detach=False))
    state = cluster.state()
    assert all(_pid_alive(pid) for pid in state["pids"].values())
    assert Cluster.is_running(state)

    cluster.stop()

    _assert_nothing_left(state)
    assert not Cluster.is_running(state)
    cluster.stop()  # idempotent
    assert (tmp_path / "cluster" / "kube-apiserver.log").stat().st_size > 0


_START_DETACHED = """
import json, sys
from pathlib import Path
from testbed.binaries import ensure_built
from testbed.cluster import Cluster
cluster = Cluster(Path(sys.argv[1]), ensure_built(), detach=True)
cluster.start()
print(json.dumps(cluster.state()))
"""


def test_a_detached_cluster_outlives_its_starter_and_stops_from_its_state(
    binaries: Binaries, tmp_path: Path
) -> None:
    work = tmp_path / "detached"
    started = subprocess.run(
        [sys.executable, "-c", _START_DETACHED, str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    state: dict[str, Any] = json.loads(started.stdout)
    try:
        # The starting process has exited; the cluster still serves.
        assert Cluster.is_running(state)
        with _api_client(state["kubeconfig"]) as api_client:
            assert "default" in _namespace_names(api_client)
    finally:
        Cluster.stop_from_state(state)

    _assert_nothing_left(state)
    assert not Cluster.is_running(state)
    Cluster.stop_from_state(state)  # idempotent


def test_a_process_that_dies_at_start_is_reported_with_its_log(
    binaries: Binaries, tmp_path: Path
) -> None:
    fake = tmp_path / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'fake apiserver: refusing to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    broken = Binaries(kube_apiserver=fake, etcd=binaries.etcd, versions=binaries.versions)
    cluster = Cluster(tmp_path / "cluster", broken, detach=False)

    with pytest.raises(ClusterError) as raised:
        cluster.start(timeout=30)

    message = str(raised.value)
    assert "kube-apiserver exited with status 3" in message
    assert "fake apiserver: refusing to start" in message
    assert f"{fake} --etcd-servers=http://127.0.0.1:" in message
    # etcd, which did start, was stopped again.
    assert not _port_listening(cluster.ports["etcd_client"])
    assert not cluster.running


# ---------------------------------------------------------------------- the binaries cache


def test_ensure_built_a_second_time_is_fast_and_runs_no_go(
    binaries: Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ensure_built ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setenv("PATH", "")
    began = time.monotonic()
    again = ensure_built()
    elapsed = time.monotonic() - began

    assert again == binaries
    assert elapsed < 1.0
    assert os.access(again.kube_apiserver, os.X_OK)
    assert os.access(again.etcd, os.X_OK)
    assert again.versions == {"kubernetes": "v1.37.2", "etcd": "v3.6.16"}


def test_changed_go_sources_get_a_new_cache_key(tmp_path: Path) -> None:
    copy = tmp_path / "testbed"
    shutil.copytree(REPO / "testbed" / "go", copy)
    before, versions = cache_key(copy)
    assert before.startswith("k8s-v1.37.2-etcd-v3.6.16-")

    (copy / "README.md").write_text("docs do not change the binaries\n")
    assert cache_key(copy)[0] == before

    main_go = copy / "etcd" / "main.go"
    main_go.write_text(main_go.read_text() + "\n// changed\n")
    assert cache_key(copy)[0] != before
    assert versions == {"kubernetes": "v1.37.2", "etcd": "v3.6.16"}


def test_without_go_a_build_fails_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_TESTBED_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    lines: list[str] = []

    with pytest.raises(BuildError, match="Go is not on PATH"):
        ensure_built(log=lines.append)
    assert not any((tmp_path / "empty-cache").rglob("kube-apiserver"))
