"""Operator commands end to end: the ``canary`` CLI of a person with their own kubeconfig, the
controller's operator API over HTTPS, the apiserver deciding who they are and what they may
do, and the leader carrying the command out — with that person, as the apiserver named them,
in every audit record the command causes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.access import cluster_roles
from canary.k8s.client import SERVICE_ACCOUNT, AlreadyExists, ResourceKind
from canary.model import Phase
from tests.e2e.harness import Env, gated_policy

pytestmark = pytest.mark.e2e

CANARY = Path(sys.executable).with_name("canary")
RBAC = "rbac.authorization.k8s.io"
CLUSTER_ROLE = ResourceKind(RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False)
ROLE = ResourceKind(RBAC, "v1", "roles", "Role")
ROLE_BINDING = ResourceKind(RBAC, "v1", "rolebindings", "RoleBinding")


def _person(env: Env, who: str, grants: list[tuple[str, str]], folder: Path) -> Path:
    """A ServiceAccount ``who`` bound to ``grants`` (kind, role) in the test's namespace, and
    a kubeconfig of their own with its token."""
    kube, namespace = env.kube, env.namespace
    with contextlib.suppress(AlreadyExists):
        kube.create(SERVICE_ACCOUNT, namespace, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {"name": who}})  # fmt: skip
    for kind, role in grants:
        kube.apply(ROLE_BINDING, namespace, {
            "apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{who}-{role}", "namespace": namespace},
            "roleRef": {"apiGroup": RBAC, "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": namespace}],
        }, field_manager="e2e")  # fmt: skip
    config = yaml.safe_load(env.testbed.kubeconfig_path.read_text())
    token = kube.request_token(namespace, who, expiration_seconds=3600)
    path = folder / f"{who}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": config["clusters"][0]["cluster"]}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                               "namespace": namespace}}],
    }))  # fmt: skip
    return path


def _canary(kubeconfig: Path, api: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSC_")}
    env.update(KUBECONFIG=str(kubeconfig), KSC_API_URL=api, KSC_API_CA_FILE=str(ca))
    return subprocess.run([str(CANARY), *args], capture_output=True, text=True, timeout=120,
                          check=False, env=env)  # fmt: skip


def test_a_person_starts_and_pauses_a_rollout_and_every_record_names_them(
    knative_env: Env, tmp_path: Path
) -> None:
    env = knative_env
    for role in cluster_roles():
        env.kube.apply(CLUSTER_ROLE, None, role, field_manager="e2e")
    env.kube.apply(ROLE, env.namespace, {
        "apiVersion": f"{RBAC}/v1", "kind": "Role",
        "metadata": {"name": "isvc-editor", "namespace": env.namespace},
        "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                   "verbs": ["get", "patch"]}],
    }, field_manager="e2e")  # fmt: skip
    release = _person(env, "release-manager",
                      [("ClusterRole", "kserve-canary-operator"), ("Role", "isvc-editor")],
                      tmp_path)  # fmt: skip
    viewer = _person(env, "auditor", [("ClusterRole", "kserve-canary-viewer")], tmp_path)
    manager = f"system:serviceaccount:{env.namespace}:release-manager"
    uid = env.kube.get(SERVICE_ACCOUNT, env.namespace, "release-manager")["metadata"]["uid"]

    env.create(env.model("v1"))
    app = env.start_controller(webhook=True)  # HTTPS: the operator API takes credentials
    cluster = env.testbed.cluster
    assert cluster is not None
    api, ca = app.url, cluster.ca_path

    started = _canary(release, api, ca, "rollout", "start", env.name, "--storage-uri",
                      env.model("v2"), "--reason", "CHG0042: new fraud model")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert f"accepted (as {manager})" in started.stdout

    refused = _canary(viewer, api, ca, "pause", env.name, "--reason", "looks odd")
    assert refused.returncode == 4, refused.stderr
    assert "may not create rollouts/pause" in refused.stderr

    env.wait("the canary's first step", lambda: (d := env.latest()) is not None
             and d.state.phase is Phase.PROGRESSING)  # fmt: skip
    paused = _canary(release, api, ca, "pause", env.name, "--reason", "INC-9 investigate")
    assert paused.returncode == 0, paused.stderr
    doc = env.wait_phase(Phase.PAUSED)
    assert doc.state.phase is Phase.PAUSED

    status = _canary(viewer, api, ca, "status", env.name, "-o", "json")
    assert status.returncode == 0, status.stderr
    assert '"phase": "Paused"' in status.stdout

    def by(action: str) -> list[Any]:
        return [r.entry for r in env.records() if r.entry.action == action]

    # every record the manager's commands caused names them as the apiserver did
    (intent,) = [e for e in by("traffic.intent") if e.evidence.get("purpose") == "start"]
    caused = [intent, *by("manual.pause")]
    assert len(caused) == 2, [r.entry.action for r in env.records()]
    for entry in caused:
        assert (entry.actor.kind, entry.actor.id, entry.actor.uid) == ("human", manager, uid)
        assert f"system:serviceaccounts:{env.namespace}" in entry.actor.groups
    (denied,) = by("manual.denied")
    assert denied.actor.id == f"system:serviceaccount:{env.namespace}:auditor"
    assert denied.evidence["reason"] == "looks odd"


def test_the_kubernetes_gate_through_the_cli_counts_only_a_risk_owner_who_did_not_start_it(
    knative_env: Env, tmp_path: Path
) -> None:
    """`canary approve` with each person's own credentials: the starter (who also holds the
    risk-owner role) and an administrator outside the group are refused by the leader
    (exit 1, recorded); a risk owner's approval promotes, and the record names her."""
    env = knative_env
    group = f"system:serviceaccounts:{env.namespace}"  # every ServiceAccount of the namespace
    (env.policy_dir / "credit.yaml").write_text(gated_policy("kubernetes", group))
    for role in cluster_roles():
        env.kube.apply(CLUSTER_ROLE, None, role, field_manager="e2e")
    env.kube.apply(ROLE, env.namespace, {
        "apiVersion": f"{RBAC}/v1", "kind": "Role",
        "metadata": {"name": "isvc-editor", "namespace": env.namespace},
        "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                   "verbs": ["get", "patch"]}],
    }, field_manager="e2e")  # fmt: skip
    release = _person(env, "release-manager", [
        ("ClusterRole", "kserve-canary-operator"), ("Role", "isvc-editor"),
        ("ClusterRole", "kserve-canary-risk-owner"),
    ], tmp_path)  # fmt: skip
    rita = _person(env, "rita", [("ClusterRole", "kserve-canary-risk-owner")], tmp_path)
    admin = env.testbed.kubeconfig_path  # allowed everything by RBAC, not in the group

    env.create(env.model("v1"), policy="credit")
    app = env.start_controller(webhook=True)
    cluster = env.testbed.cluster
    assert cluster is not None
    api, ca = app.url, cluster.ca_path
    started = _canary(release, api, ca, "rollout", "start", env.name, "--storage-uri",
                      env.model("v2"), "--reason", "new credit model")  # fmt: skip
    assert started.returncode == 0, started.stderr
    env.wait_phase(Phase.AWAITING_APPROVAL)

    own = _canary(release, api, ca, "approve", env.name, "-n", env.namespace, "--comment", "mine")
    assert own.returncode == 1, own.stderr
    assert "started this rollout" in own.stderr + own.stdout
    outsider = _canary(admin, api, ca, "approve", env.name, "-n", env.namespace,
                       "--comment", "lgtm")  # fmt: skip
    assert outsider.returncode == 1, outsider.stderr
    assert "not in the risk-owner group" in outsider.stderr + outsider.stdout
    assert env.wait_phase(Phase.AWAITING_APPROVAL).state.phase is Phase.AWAITING_APPROVAL

    approved = _canary(rita, api, ca, "approve", env.name, "-n", env.namespace,
                       "--comment", "RSK-12: back-test reviewed")  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)
    assert done.state.phase is Phase.SUCCEEDED
    records = env.records()
    refused = [r.entry for r in records if r.entry.action == "approval.refused"]
    assert [e.actor.id for e in refused] == [
        f"system:serviceaccount:{env.namespace}:release-manager",
        refused[1].actor.id,
    ]
    (verified,) = [r.entry for r in records if r.entry.action == "approval.verified"]
    assert verified.actor.id == f"system:serviceaccount:{env.namespace}:rita"
    assert group in verified.actor.groups
    decision: Any = verified.evidence["decision"]
    assert decision["comments"] == "RSK-12: back-test reviewed"
