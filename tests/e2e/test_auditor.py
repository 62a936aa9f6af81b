"""Auditors end to end: a person with their own kubeconfig, bound to the ClusterRole
kserve-canary-auditor, asks the controller's auditor API (over HTTPS, the apiserver naming
them and RBAC deciding) who served a service at an instant, for its history, its export and
its evidence report; someone without the role is refused; and the chain verifies against the
witnessed checkpoints with the public key."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from canary.audit import compute_record_hash
from canary.auditor_access import AUDITOR_ROLE, auditor_cluster_role
from canary.k8s.client import NotFound, ResourceKind
from canary.model import Phase
from tests.e2e.harness import CHECKPOINTS, Env
from tests.e2e.test_operator_commands import CANARY, CLUSTER_ROLE, RBAC, ROLE, _person

pytestmark = pytest.mark.e2e

CLUSTER_ROLE_BINDING = ResourceKind(
    RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
)


def _audit(kubeconfig: Path, api: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSC_")}
    env.update(KUBECONFIG=str(kubeconfig), KSC_API_URL=api, KSC_API_CA_FILE=str(ca))
    return subprocess.run([str(CANARY), "audit", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)  # fmt: skip


def test_an_auditor_asks_who_served_when_and_reads_the_evidence(
    knative_env: Env, tmp_path: Path
) -> None:
    env = knative_env
    env.kube.apply(CLUSTER_ROLE, None, auditor_cluster_role(), field_manager="e2e")
    # as the chart's Role kserve-canary-auditor-checkpoints: read the ConfigMap witness
    env.kube.apply(ROLE, env.namespace, {
        "apiVersion": f"{RBAC}/v1", "kind": "Role",
        "metadata": {"name": "kserve-canary-auditor-checkpoints", "namespace": env.namespace},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": [CHECKPOINTS], "verbs": ["get"]}],
    }, field_manager="e2e")  # fmt: skip
    auditor = _person(env, "model-risk", [("Role", "kserve-canary-auditor-checkpoints")], tmp_path)
    outsider = _person(env, "curious", [], tmp_path)
    binding = f"kserve-canary-auditor-{env.token}"
    env.kube.apply(CLUSTER_ROLE_BINDING, None, {
        "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": AUDITOR_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": "model-risk",
                      "namespace": env.namespace}],
    }, field_manager="e2e")  # fmt: skip
    try:
        env.create(env.model("v1"))
        app = env.start_controller(webhook=True)  # HTTPS: the auditor API takes credentials
        started = env.command("start", "CHG0042 new fraud model", storage_uri=env.model("v2"))
        assert started.state == "accepted", started.result
        doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
        assert doc.state.phase is Phase.SUCCEEDED, doc.state.outcome
        rollout = doc.state.rollout_id
        cluster = env.testbed.cluster
        assert cluster is not None
        api, ca = app.url, cluster.ca_path

        # someone without the role is refused, and told why
        refused = _audit(outsider, api, ca, "history")
        assert refused.returncode == 4, refused.stderr
        assert "is not an auditor" in refused.stderr

        history = _audit(auditor, api, ca, "history", env.namespace, "-o", "json")
        assert history.returncode == 0, history.stderr
        assert [r["id"] for r in json.loads(history.stdout)["rollouts"]] == [rollout]

        # mid-canary: both revisions, with their shares, at the instant the first step showed
        shifted = next(r for r in env.records() if r.entry.action == "traffic.shifted"
                       and r.entry.rollout_id == rollout)  # fmt: skip
        when = (shifted.entry.at).isoformat()
        at = _audit(auditor, api, ca, "at", when, f"{env.namespace}/{env.name}", "-o", "json")
        assert at.returncode == 0, at.stderr
        shares = sorted(r["percent"] for r in json.loads(at.stdout)["revisions"])
        assert shares == [10, 90], at.stdout

        report = tmp_path / "report.html"
        written = _audit(auditor, api, ca, "report", rollout, "-o", str(report))
        assert written.returncode == 0, written.stderr
        assert report.read_text().count("<svg") >= 2

        export = tmp_path / "trail.jsonl"
        exported = _audit(auditor, api, ca, "export", "--rollout", rollout, "-o", str(export))
        assert exported.returncode == 0, exported.stderr
        lines = [json.loads(line) for line in export.read_text().splitlines()]
        assert lines
        for record in lines:
            assert compute_record_hash(record["prev_hash"], record["body"]) == record["record_hash"]

        # the chain up to the promotion is signed and witnessed; it verifies against it
        promoted = next(r.seq for r in env.records() if r.entry.action == "promoted")
        env.wait("the promotion's checkpoint",
                 lambda: any(c.seq >= promoted for c in env.checkpoints()))  # fmt: skip
        verify = _audit(auditor, api, ca, "verify", "--database-url", env.database_url,
                        "--witness-configmap", f"{env.namespace}/{CHECKPOINTS}",
                        "--public-key", str(env.public_key))  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "anchored: record" in verify.stdout
    finally:
        with contextlib.suppress(NotFound):
            env.kube.delete(CLUSTER_ROLE_BINDING, None, binding)
