"""What the kubelet mounts into a pod for its ServiceAccount, made on the test bed (which has
no kubelet): a bound token from the TokenRequest API and the cluster's CA, as files."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.testbed import Testbed

__all__ = ["PodSecrets", "pod_secrets"]


@dataclass(frozen=True)
class PodSecrets:
    server: str  # the apiserver's URL
    folder: Path
    token: Path
    ca: Path


def pod_secrets(testbed: Testbed, namespace: str, account: str, folder: Path) -> PodSecrets:
    """Write ``token``, ``ca.crt`` and ``namespace`` into the new ``folder`` as the kubelet
    would for ``account`` (the CA taken from the test bed's kubeconfig)."""
    config = yaml.safe_load(testbed.kubeconfig_path.read_text())
    cluster = config["clusters"][0]["cluster"]
    folder.mkdir()
    ca = folder / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    token = folder / "token"
    token.write_text(testbed.kube.request_token(namespace, account, expiration_seconds=3600))
    (folder / "namespace").write_text(namespace)
    return PodSecrets(str(cluster["server"]), folder, token, ca)
