"""The Kubernetes client names its writer: the User-Agent's product is what the apiserver
records in ``managedFields`` for a write that names no field manager."""

from __future__ import annotations

from pathlib import Path

from canary.k8s.client import KubeClient

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: controller, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: controller}}]
current-context: x
"""


def test_the_agent_names_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    with KubeClient.from_kubeconfig(path, agent="kserve-canary/1.2.3") as named:
        assert named._api.user_agent == "kserve-canary/1.2.3"
        assert named.user == "controller"
    with KubeClient.from_kubeconfig(path) as plain:  # the library's own name
        assert not plain._api.user_agent.startswith("kserve-canary")
