"""Operator commands authenticated and authorised by the cluster, as a user runs them: the
``canary`` CLI with a kubeconfig of their own, the controller's operator API in front of a
real audit database, and the test bed's real kube-apiserver deciding who is who (TokenReview)
and who may do what (SubjectAccessReview, with the kserve-canary ClusterRoles bound by
ordinary RoleBindings).

Who is who: ServiceAccounts, whose tokens the apiserver issues and reviews like any user's:
``alice`` is bound to kserve-canary-operator in the namespace, ``bob`` to
kserve-canary-viewer, ``carol`` to the operator role and may also patch InferenceServices,
``rita`` to kserve-canary-risk-owner (she approves or rejects), ``mallory`` to nothing.
``dora`` authenticates with a client certificate signed by the cluster's client CA (user
``dora``, group ``risk-owners``, the group bound to the operator role). A command that
reaches the queue is settled by a stand-in for the
leader (the e2e tests run the real one)."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from canary.access import RISK_OWNER_ROLE, Gatekeeper, cluster_roles
from canary.api.app import create_app
from canary.api.health import Health
from canary.api.operator import MAX_IN_FLIGHT
from canary.api.operator import router as operator_router
from canary.audit import AuditStore, upgrade_to_head
from canary.k8s.client import SERVICE_ACCOUNT, AlreadyExists, ResourceKind
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet
from canary.server import HttpServer
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY = Path(sys.executable).with_name("canary")
CLUSTER_ROLE = ResourceKind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                            namespaced=False)  # fmt: skip
ROLE = ResourceKind("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDING = ResourceKind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
MANAGER = "operator-api-test"


@dataclass
class Bed:
    namespace: str
    url: str
    database_url: str
    kubeconfigs: dict[str, Path]
    uids: dict[str, str]
    settle: dict[str, tuple[str, str]]  # command -> (state, result) the stand-in leader gives
    ca: Path  # the serving certificate's CA
    tokens: dict[str, str]

    def user(self, who: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{who}"


def _bind(testbed: Testbed, namespace: str, who: str, role_kind: str, role: str) -> None:
    testbed.kube.apply(
        ROLE_BINDING,
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{who}-{role}", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": namespace}],
        },
        field_manager=MANAGER,
    )


def _kubeconfig(
    testbed: Testbed, path: Path, token: str | dict[str, str], namespace: str | None
) -> Path:
    config = yaml.safe_load(testbed.kubeconfig_path.read_text())
    context: dict[str, Any] = {"cluster": "bed", "user": "me"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "bed", "cluster": config["clusters"][0]["cluster"]}],
                "users": [
                    {"name": "me", "user": {"token": token} if isinstance(token, str) else token}
                ],
                "contexts": [{"name": "bed", "context": context}],
                "current-context": "bed",
            }
        )
    )
    path.chmod(0o600)
    return path


def _leader(url: str, settle: dict[str, tuple[str, str]], stop: threading.Event) -> None:
    """Settle queued commands as a leader would (state and result per command)."""
    with AuditStore.from_url(url) as store:
        while not stop.is_set():
            for command in store.pending_commands():
                if command.command in settle:
                    state, result = settle[command.command]
                    store.settle_command(command.id, state, result, datetime.now(UTC))  # type: ignore[arg-type]
            stop.wait(0.05)


@pytest.fixture(scope="module")
def bed(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    folder = tmp_path_factory.mktemp("operator-api")
    namespace = testbed.namespace("operator-api")
    for role in cluster_roles():
        testbed.kube.apply(CLUSTER_ROLE, None, role, field_manager=MANAGER)
    testbed.kube.apply(
        ROLE,
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "isvc-editor", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices"],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        field_manager=MANAGER,
    )
    kubeconfigs, uids, tokens = {}, {}, {}
    for who in ("alice", "bob", "carol", "rita", "mallory"):
        with contextlib.suppress(AlreadyExists):
            testbed.kube.create(
                SERVICE_ACCOUNT,
                namespace,
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": who}},
            )
        uids[who] = testbed.kube.get(SERVICE_ACCOUNT, namespace, who)["metadata"]["uid"]
        token = testbed.kube.request_token(namespace, who, expiration_seconds=3600)
        tokens[who] = token
        kubeconfigs[who] = _kubeconfig(testbed, folder / f"{who}.kubeconfig", token, namespace)
    _bind(testbed, namespace, "alice", "ClusterRole", "kserve-canary-operator")
    _bind(testbed, namespace, "bob", "ClusterRole", "kserve-canary-viewer")
    _bind(testbed, namespace, "carol", "ClusterRole", "kserve-canary-operator")
    _bind(testbed, namespace, "carol", "Role", "isvc-editor")
    _bind(testbed, namespace, "rita", "ClusterRole", RISK_OWNER_ROLE)
    testbed.kube.apply(
        ROLE_BINDING,
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "risk-owners-operator", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "kserve-canary-operator"},
            "subjects": [{"kind": "Group", "name": "risk-owners",
                          "apiGroup": "rbac.authorization.k8s.io"}],
        },
        field_manager=MANAGER,
    )  # fmt: skip
    assert testbed.cluster is not None
    for who, groups in (("dora", ["risk-owners"]), ("eve", [])):
        cert, key = testbed.cluster.issue_client_certificate(f"user-{who}", who, groups)
        user = {"client-certificate": str(cert), "client-key": str(key)}
        kubeconfigs[who] = _kubeconfig(testbed, folder / f"{who}.kubeconfig", user, namespace)

    database_url = f"sqlite:///{folder / 'audit.db'}"
    upgrade_to_head(database_url)
    store = AuditStore.from_url(database_url)
    metrics = ControllerMetrics()
    app = create_app(
        health=Health(),
        policies=lambda: PolicySet([], {}),
        metrics=metrics,
        extra_routers=[
            operator_router(
                Gatekeeper(testbed.kube.review_token, testbed.kube.review_access),
                store,
                metrics,
                clock=lambda: datetime.now(UTC),
                look_seconds=5.0,
            )
        ],
    )
    cluster = testbed.cluster
    assert cluster is not None
    cert, key = cluster.issue_certificate("operator-api", ["127.0.0.1"])
    client_ca = testbed.kube.client_ca_bundle()
    assert client_ca, "the apiserver publishes no client CA"
    server = HttpServer(app, host="127.0.0.1", port=0, certfile=cert, keyfile=key,
                        client_ca=client_ca)  # fmt: skip
    server.start()
    settle: dict[str, tuple[str, str]] = {}
    stop = threading.Event()
    leader = threading.Thread(target=_leader, args=(database_url, settle, stop), daemon=True)
    leader.start()
    try:
        yield Bed(namespace, f"https://127.0.0.1:{server.port}", database_url, kubeconfigs, uids,
                  settle, cluster.ca_path, tokens)  # fmt: skip
    finally:
        stop.set()
        leader.join(5)
        server.stop()
        store.close()


def canary(
    bed: Bed, who: str, *args: str, api: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSC_")}
    env["KUBECONFIG"] = str(bed.kubeconfigs[who])
    env["KSC_API_URL"] = api or bed.url
    env["KSC_API_CA_FILE"] = str(bed.ca)
    return subprocess.run(
        [str(CANARY), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env=env,
        cwd=REPO,
    )


def _records(bed: Bed) -> list[Any]:
    with AuditStore.from_url(bed.database_url) as store:
        return [r.entry for r in store.records()]


def _commands(bed: Bed) -> list[Any]:
    with AuditStore.from_url(bed.database_url) as store:
        return list(reversed(store.recent_commands(limit=1000)))


def test_a_granted_command_is_carried_out_and_recorded_with_the_apiserver_s_identity(
    bed: Bed,
) -> None:
    bed.settle["pause"] = ("accepted", "paused at step 2/4")
    result = canary(bed, "alice", "pause", "scorer", "--reason", "INC-77 latency alert")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"pause {bed.namespace}/scorer accepted (as {bed.user('alice')}): paused at step 2/4\n"
    )
    (row,) = [c for c in _commands(bed) if c.command == "pause" and c.name == "scorer"]
    assert (row.actor, row.actor_uid, row.reason) == (
        bed.user("alice"), bed.uids["alice"], "INC-77 latency alert",
    )  # fmt: skip
    # the groups are the apiserver's, not anything the CLI said
    assert {"system:serviceaccounts", f"system:serviceaccounts:{bed.namespace}",
            "system:authenticated"} <= set(row.actor_groups)  # fmt: skip
    assert row.who.uid == bed.uids["alice"]


def test_a_command_without_the_grant_is_refused_audited_and_changes_nothing(bed: Bed) -> None:
    before = len(_commands(bed))
    result = canary(bed, "mallory", "promote", "scorer", "--reason", "ship it")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"{bed.user('mallory')} may not create rollouts/promote.kserve-canary.io 'scorer' "
        f"in namespace {bed.namespace}" in result.stderr
    )
    assert len(_commands(bed)) == before  # nothing queued
    denied = [e for e in _records(bed) if e.action == "manual.denied"]
    record = denied[-1]
    assert (record.actor.kind, record.actor.id) == ("human", bed.user("mallory"))
    assert record.actor.uid == bed.uids["mallory"]
    assert "system:authenticated" in record.actor.groups
    assert (record.obj.namespace, record.obj.name) == (bed.namespace, "scorer")
    assert record.evidence["command"] == "promote"
    assert record.evidence["reason"] == "ship it"
    assert "create rollouts/promote" in str(record.evidence["required"])


def test_a_viewer_reads_status_but_may_not_pause(bed: Bed) -> None:
    listed = canary(bed, "bob", "status", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"items": []}
    paused = canary(bed, "bob", "pause", "scorer", "--reason", "curious")
    assert paused.returncode == 4
    assert "may not create rollouts/pause" in paused.stderr
    # bob may read his namespace only: listing every namespace needs a cluster-wide grant
    everywhere = canary(bed, "bob", "status", "-A")
    assert everywhere.returncode == 4
    assert "may not list rollouts.kserve-canary.io in every namespace" in everywhere.stderr


def test_start_also_needs_the_right_to_patch_the_service_yourself(bed: Bed) -> None:
    bed.settle["start"] = ("accepted", "rollout started")
    refused = canary(bed, "alice", "rollout", "start", "decider", "--storage-uri",
                     "s3://models/decider/v7", "--reason", "CHG0031337")  # fmt: skip
    assert refused.returncode == 4, refused.stderr
    assert "may not patch inferenceservices.serving.kserve.io 'decider'" in refused.stderr
    started = canary(bed, "carol", "rollout", "start", "decider", "--storage-uri",
                     "s3://models/decider/v7", "--reason", "CHG0031337")  # fmt: skip
    assert started.returncode == 0, started.stderr
    (row,) = [c for c in _commands(bed) if c.command == "start"]
    assert (row.actor, dict(row.args)) == (
        bed.user("carol"),
        {"storage_uri": "s3://models/decider/v7"},
    )


def test_a_refusal_by_the_leader_exits_1_with_its_reason(bed: Bed) -> None:
    bed.settle["resume"] = ("rejected", "not paused: nothing to resume")
    result = canary(bed, "alice", "resume", "scorer", "--reason", "all clear")
    assert result.returncode == 1
    assert (
        result.stderr == f"resume {bed.namespace}/scorer rejected: not paused: nothing to resume\n"
    )


def test_with_no_leader_to_answer_the_command_stays_queued_and_exits_3(bed: Bed) -> None:
    bed.settle.pop("abort", None)
    result = canary(bed, "alice", "abort", "fraud-model", "--reason", "bad", "--wait", "0.5")
    assert result.returncode == 3, result.stderr
    assert "abort " + bed.namespace + "/fraud-model queued (id " in result.stderr
    assert "no leader answered within 0.5s" in result.stderr
    pending = [c for c in _commands(bed) if c.command == "abort" and c.state == "pending"]
    assert [c.actor for c in pending] == [bed.user("alice")]


def test_a_token_the_apiserver_did_not_issue_is_refused_and_nothing_is_recorded(
    bed: Bed, tmp_path: Path, testbed: Testbed
) -> None:
    records, commands = len(_records(bed)), len(_commands(bed))
    forged = _kubeconfig(testbed, tmp_path / "forged", "eyJhbGciOiJSUzI1NiJ9.forged.sig", None)
    bed.kubeconfigs["forged"] = forged
    result = canary(bed, "forged", "promote", "scorer", "-n", bed.namespace, "--reason", "x")
    assert result.returncode == 4
    assert "the apiserver does not accept this token" in result.stderr
    assert (len(_records(bed)), len(_commands(bed))) == (records, commands)


def test_status_reads_through_the_api_with_kubectl_style_targets(bed: Bed) -> None:
    one = canary(bed, "bob", "status", "-n", bed.namespace, "nothing-here")
    assert one.returncode == 2
    assert f"no rollout for {bed.namespace}/nothing-here" in one.stderr
    table = canary(bed, "bob", "status")
    assert table.returncode == 0, table.stderr
    assert table.stdout == f"no rollouts in progress in namespace {bed.namespace}\n"


def test_an_unreachable_api_exits_3_and_says_where_it_looked(bed: Bed) -> None:
    result = canary(bed, "alice", "pause", "scorer", "--reason", "x", api="http://127.0.0.1:9")
    assert result.returncode == 3
    assert "no controller answered at http://127.0.0.1:9" in result.stderr


def test_a_client_certificate_of_the_cluster_identifies_its_user_and_groups(bed: Bed) -> None:
    bed.settle["promote"] = ("accepted", "promoting")
    result = canary(bed, "dora", "promote", "scorer", "--reason", "risk sign-off RSK-12")
    assert result.returncode == 0, result.stderr
    assert "accepted (as dora)" in result.stdout
    (row,) = [c for c in _commands(bed) if c.command == "promote" and c.actor == "dora"]
    assert row.actor_uid is None  # certificates carry no UID
    assert set(row.actor_groups) == {"risk-owners", "system:authenticated"}
    # the group decides: eve's certificate is as valid, but no group of hers is bound
    refused = canary(bed, "eve", "promote", "scorer", "--reason", "me too")
    assert refused.returncode == 4
    assert "eve may not create rollouts/promote" in refused.stderr
    denied = [e for e in _records(bed) if e.action == "manual.denied" and e.actor.id == "eve"]
    assert len(denied) == 1
    assert denied[0].actor.groups == ("system:authenticated",)


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    bed: Bed, tmp_path: Path, testbed: Testbed
) -> None:
    from tests.tls_pairs import make_pair

    pair = make_pair(tmp_path / "impostor-pki", 7)  # self-signed: not the cluster's CA
    user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    bed.kubeconfigs["impostor"] = _kubeconfig(testbed, tmp_path / "impostor", user, None)
    commands, records = len(_commands(bed)), len(_records(bed))
    result = canary(bed, "impostor", "abort", "scorer", "-n", bed.namespace, "--reason", "x")
    assert result.returncode == 3, result.stderr
    assert "no controller answered" in result.stderr
    assert (len(_commands(bed)), len(_records(bed))) == (commands, records)


def test_credentials_are_never_sent_in_clear_to_another_machine(bed: Bed) -> None:
    result = canary(bed, "alice", "pause", "scorer", "--reason", "x", api="http://10.0.0.1:8443")
    assert result.returncode == 2
    assert "refusing to send your credentials over plain HTTP to 10.0.0.1" in result.stderr


def test_operator_requests_are_counted_by_outcome(bed: Bed) -> None:
    assert canary(bed, "mallory", "abort", "scorer", "--reason", "x").returncode == 4
    context = ssl.create_default_context(cafile=str(bed.ca))
    with urllib.request.urlopen(f"{bed.url}/metrics", timeout=10, context=context) as response:
        text = response.read().decode()
    assert 'kserve_canary_operator_requests_total{command="abort",outcome="denied"}' in text


# --- approval decisions (a Kubernetes approval gate) ---------------------------------------


def test_a_risk_owner_s_decision_is_queued_with_the_apiserver_s_identity_and_groups(
    bed: Bed,
) -> None:
    bed.settle["approve"] = ("accepted", "approved: the rollout goes on to 100%")
    result = canary(bed, "rita", "approve", "decider", "--comment", "RSK-12 back-test signed")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"approve {bed.namespace}/decider accepted (as {bed.user('rita')}): "
        "approved: the rollout goes on to 100%\n"
    )
    (row,) = [c for c in _commands(bed) if c.command == "approve"]
    assert (row.namespace, row.name, row.reason) == (
        bed.namespace, "decider", "RSK-12 back-test signed",
    )  # fmt: skip
    # the leader judges the approver by these: the apiserver's identity and groups
    assert (row.actor, row.actor_uid) == (bed.user("rita"), bed.uids["rita"])
    assert {f"system:serviceaccounts:{bed.namespace}", "system:authenticated"} <= set(
        row.actor_groups
    )


def test_a_decision_the_leader_refuses_exits_1_with_its_reason(bed: Bed) -> None:
    bed.settle["reject"] = ("rejected", f"no approval is awaited for {bed.namespace}/scorer")
    result = canary(bed, "rita", "reject", f"{bed.namespace}/scorer", "--comment", "bias")
    assert result.returncode == 1
    assert result.stderr == (
        f"reject {bed.namespace}/scorer rejected: no approval is awaited for "
        f"{bed.namespace}/scorer\n"
    )
    (row,) = [c for c in _commands(bed) if c.command == "reject"]
    assert (row.actor, row.reason) == (bed.user("rita"), "bias")


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_an_operator_may_drive_a_rollout_but_not_decide_its_approval(
    bed: Bed, command: str
) -> None:
    before = len(_commands(bed))
    result = canary(bed, "alice", command, "decider", "--comment", "LGTM, ship it")
    assert result.returncode == 4, result.stderr
    assert (
        f"{bed.user('alice')} may not approve rollouts.kserve-canary.io 'decider' in namespace "
        f"{bed.namespace}" in result.stderr
    )
    assert len(_commands(bed)) == before  # nothing queued
    record = [e for e in _records(bed) if e.action == "manual.denied"][-1]
    assert (record.actor.id, record.actor.uid) == (bed.user("alice"), bed.uids["alice"])
    assert (record.obj.namespace, record.obj.name) == (bed.namespace, "decider")
    assert record.evidence["command"] == command
    assert record.evidence["reason"] == "LGTM, ship it"
    assert str(record.evidence["required"]).startswith("approve rollouts.kserve-canary.io")
    assert f"{command} refused: " in str(record.reason)


def test_a_viewer_and_a_stranger_may_not_approve(bed: Bed) -> None:
    for who in ("bob", "mallory"):
        before = len(_commands(bed))
        result = canary(bed, who, "approve", "decider", "--comment", "looks fine to me")
        assert result.returncode == 4, result.stderr
        assert f"{bed.user(who)} may not approve rollouts.kserve-canary.io" in result.stderr
        assert len(_commands(bed)) == before
        denied = [e for e in _records(bed) if e.action == "manual.denied"]
        assert (denied[-1].actor.id, denied[-1].evidence["command"]) == (bed.user(who), "approve")


def test_a_risk_owner_may_read_but_not_drive_a_rollout(bed: Bed) -> None:
    listed = canary(bed, "rita", "status", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    promoted = canary(bed, "rita", "promote", "decider", "--reason", "approved anyway")
    assert promoted.returncode == 4
    assert f"{bed.user('rita')} may not create rollouts/promote" in promoted.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "reason: Field required"),
        ({"reason": ""}, "reason: String should"),
        ({"reason": "ok", "storageUri": "s3://m"}, "storageUri is only for start, not approve"),
        ({"reason": "ok", "approver": "ceo"}, "approver: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_decision_is_refused_clearly_and_queues_nothing(
    bed: Bed, body: dict[str, Any], message: str
) -> None:
    before = len(_commands(bed))
    response = _post(bed, "rita", f"/namespaces/{bed.namespace}/rollouts/decider/approve", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert len(_commands(bed)) == before


def _finished_rollout(store: AuditStore, namespace: str, name: str, phase: str, outcome: str,
                      at: datetime) -> None:  # fmt: skip
    from dataclasses import replace

    from canary import machine
    from canary.engine import RolloutDocument
    from canary.model import Phase, Revision, TrafficView
    from canary.policy import RolloutPolicy

    stable, canary = Revision(f"{name}-predictor-00001"), Revision(f"{name}-predictor-00002")
    view = TrafficView(canary, stable, {stable.name: 100}, 10, False, False)
    policy = RolloutPolicy(name="default")
    state, _ = machine.start(f"ro-{namespace}-{name}", namespace, name, view, policy, at)
    state = replace(state.with_phase(Phase(phase), at), outcome=outcome)
    doc = RolloutDocument(state, policy, "knative", f"uid-{namespace}-{name}", "knative-otel")
    store.commit([], rollout=doc.row(state.rollout_id, at))


def test_status_by_name_shows_the_post_rollout_truth_as_a_table_or_json(bed: Bed) -> None:
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with AuditStore.from_url(bed.database_url) as store:
        _finished_rollout(store, bed.namespace, "ranker", "ManuallyRolledBack",
                          "rolled back by hand by kubectl-patch", at)  # fmt: skip
        _finished_rollout(store, "elsewhere", "ranker", "DriftReverted", "drift reverted", at)
    table = canary(bed, "bob", "status", "ranker")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:3] == ["NAMESPACE", "NAME", "PHASE"]
    assert line.split()[:3] == [bed.namespace, "ranker", "ManuallyRolledBack"]
    assert "kubectl-patch" in line
    as_json = canary(bed, "bob", "status", "-n", bed.namespace, "ranker", "-o", "json")
    (item,) = json.loads(as_json.stdout)["items"]
    assert (item["namespace"], item["name"], item["phase"]) == (
        bed.namespace, "ranker", "ManuallyRolledBack",
    )  # fmt: skip
    # another namespace's rollout needs a grant there
    other = canary(bed, "bob", "status", "elsewhere/ranker")
    assert other.returncode == 4
    assert "may not get rollouts.kserve-canary.io 'ranker' in namespace elsewhere" in other.stderr


def _post(bed: Bed, who: str, path: str, body: Any) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(bed.ca)), timeout=30) as client:
        return client.post(
            f"{bed.url}/api/v1{path}",
            content=body if isinstance(body, bytes) else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {bed.tokens[who]}"},
        )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/rollouts/scorer/pause", {"reason": "x"}, 404, "Not Found"),
        ("/namespaces/Bad_NS/rollouts/scorer/pause", {"reason": "x"}, 400, "not a Kubernetes name"),
        ("/namespaces/{ns}/rollouts/-scorer/pause", {"reason": "x"}, 400, "not a Kubernetes name"),
        ("/namespaces/{ns}/rollouts/scorer/delete", {"reason": "x"}, 404, "unknown command"),
        ("/namespaces/{ns}/rollouts/scorer/pause", {}, 400, "reason: Field required"),
        ("/namespaces/{ns}/rollouts/scorer/pause", {"reason": ""}, 400, "reason: String should"),
        ("/namespaces/{ns}/rollouts/scorer/pause", {"reason": "x", "actor": "ceo"}, 400,
         "actor: Extra inputs are not permitted"),
        ("/namespaces/{ns}/rollouts/scorer/pause", {"reason": "x", "waitSeconds": 1e9}, 400,
         "waitSeconds"),
        ("/namespaces/{ns}/rollouts/scorer/pause", {"reason": "x", "storageUri": "s3://m"}, 400,
         "storageUri is only for start"),
        ("/namespaces/{ns}/rollouts/scorer/pause", b"{not json", 400, "invalid command body"),
        ("/namespaces/{ns}/rollouts/scorer/pause", b"[1, 2]", 400, "invalid command body"),
        ("/namespaces/{ns}/rollouts/scorer/pause", b"x" * 70_000, 413, "larger than"),
    ],
)  # fmt: skip
def test_a_malformed_request_is_refused_clearly_and_queues_nothing(
    bed: Bed, path: str, body: Any, status: int, message: str
) -> None:
    before = len(_commands(bed))
    response = _post(bed, "alice", path.replace("{ns}", bed.namespace), body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert len(_commands(bed)) == before


def test_a_burst_of_waiting_commands_never_takes_every_worker(bed: Bed) -> None:
    """Commands wait for the leader on worker threads that the admission webhook shares: at
    most MAX_IN_FLIGHT at once; the rest are told to come back (429), and health answers."""
    bed.settle.pop("resume", None)  # no leader answers: each command waits its full time
    path = f"/namespaces/{bed.namespace}/rollouts/burst/resume"
    body = {"reason": "burst", "waitSeconds": 4}
    with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT + 4) as pool:
        futures = [pool.submit(_post, bed, "alice", path, body) for _ in range(MAX_IN_FLIGHT + 4)]
        codes = sorted(f.result().status_code for f in futures)
    assert codes.count(202) == MAX_IN_FLIGHT, codes
    assert codes.count(429) == 4, codes
