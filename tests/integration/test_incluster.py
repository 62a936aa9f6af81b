"""The controller in a pod, on a real apiserver: it authenticates as its ServiceAccount from
the files the kubelet mounts, and follows the token as it is rotated (canary.k8s.client).

The test bed has no kubelet, so the test plays its part: it asks the TokenRequest API for
bound tokens, writes them where a pod would find them, and rewrites the file to rotate."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from canary.k8s.client import SERVICE_ACCOUNT, AlreadyExists, KubeClient, Unauthorized
from testbed.testbed import Testbed
from tests.pod_secrets import pod_secrets

pytestmark = pytest.mark.integration

ACCOUNT = "kserve-canary"
AGENT = "kserve-canary/0.0.0-test"


def service_account(testbed: Testbed, name: str) -> str:
    """A fresh namespace holding the ServiceAccount ``kserve-canary``; its name."""
    namespace = testbed.namespace(name)
    with contextlib.suppress(AlreadyExists):
        testbed.kube.create(
            SERVICE_ACCOUNT,
            namespace,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
        )
    return namespace


def mounted_secrets(testbed: Testbed, namespace: str, folder: Path) -> tuple[str, Path, Path]:
    """The apiserver's URL, and ``token`` and ``ca.crt`` files as the kubelet would mount
    them."""
    secrets = pod_secrets(testbed, namespace, ACCOUNT, folder)
    return secrets.server, secrets.token, secrets.ca


def test_a_pod_is_its_service_account_and_follows_the_token_as_it_rotates(
    testbed: Testbed, tmp_path: Path
) -> None:
    namespace = service_account(testbed, "incluster-rotation")
    server, token, ca = mounted_secrets(testbed, namespace, tmp_path / "serviceaccount")
    identity = f"system:serviceaccount:{namespace}:{ACCOUNT}"
    with KubeClient.in_cluster(
        server, token_file=token, ca_file=ca, timeout=10.0, agent=AGENT
    ) as kube:
        assert kube.user == identity
        assert kube.authenticated_user() == identity  # the apiserver agrees

        first = token.read_text()
        second = testbed.kube.request_token(namespace, ACCOUNT, expiration_seconds=3600)
        assert second != first
        token.write_text(second)  # the kubelet rotates the token
        assert kube.authenticated_user() == identity

        # The file is read for every request: a token the apiserver refuses fails the
        # very next one, and a good one written back makes the client work again.
        token.write_text("not-a-token-the-apiserver-issued")
        with pytest.raises(Unauthorized):
            kube.authenticated_user()
        token.write_text(second)
        assert kube.authenticated_user() == identity


def test_without_a_kubeconfig_the_controller_connects_as_the_pod_s_service_account(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = service_account(testbed, "incluster-connect")
    server, token, ca = mounted_secrets(testbed, namespace, tmp_path / "serviceaccount")
    address = urlsplit(server)
    assert address.hostname is not None
    assert address.port is not None
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config there
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", address.hostname)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(address.port))
    with KubeClient.connect(None, timeout=10.0, agent=AGENT, token_file=token, ca_file=ca) as kube:
        assert kube.authenticated_user() == f"system:serviceaccount:{namespace}:{ACCOUNT}"
