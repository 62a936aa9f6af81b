"""The controller as it runs in a cluster: ``canary run`` with no kubeconfig at all, only the
files the kubelet mounts into a pod (a ServiceAccount token and the cluster's CA) and the
apiserver's address in ``KUBERNETES_SERVICE_HOST``/``_PORT``, under the RBAC that the Helm
chart grants — nothing more. It must still promote a good model and roll back a bad one,
and the apiserver must refuse it what the chart does not grant.

The test bed has no kubelet: the test renders the chart, applies its ServiceAccount and
roles to the real apiserver, asks the TokenRequest API for the account's token, and starts
the controller in a mount namespace of its own where that token and CA sit at the path a pod
has them (``/var/run/secrets/kubernetes.io/serviceaccount``), with an empty home (no
``~/.kube/config``) and no ``KUBECONFIG``."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from canary.engine import RolloutDocument
from canary.k8s.client import INFERENCE_SERVICE, KubeClient, KubeError
from canary.model import Phase
from canary.witness import ConfigMapWitness
from testbed.binaries import BuildError, ensure_helm
from tests.e2e.harness import CHECKPOINTS, Env
from tests.e2e.test_rollouts import SLOW_MODEL
from tests.e2e.test_shadow import assert_no_mirror, create_challenger, mirror_objects, policy
from tests.integration.test_chart import applied, only, render, scoped
from tests.pod_secrets import pod_secrets

pytestmark = pytest.mark.e2e

# Kinds of the chart that grant the controller its rights (the rest needs a kubelet).
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
POD_SECRETS = "/run/secrets/kubernetes.io/serviceaccount"

# A private mount namespace: a fresh /run (so nothing of the machine's shows), the folder
# with the token and CA bound where a pod has them, then the controller.
POD = (
    "unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
    f'mount -t tmpfs tmpfs /run; mkdir -p {POD_SECRETS}; mount --bind "$1" {POD_SECRETS}; '
    'shift; exec "$@"',
    "pod",
)  # fmt: skip


def test_in_a_pod_under_the_chart_s_rbac_it_promotes_rolls_back_and_is_refused_the_rest(
    env: Env, tmp_path: Path
) -> None:
    # both RBAC variants of the chart, one per KServe mode
    scope = "namespaced" if env.mode == "knative" else "cluster"
    mirror = "istio" if env.mode == "knative" else "gateway-api"
    policy(env, duration="10m")  # a shadow that only an abort ends
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the controller a pod's files")
    try:
        helm = ensure_helm()
    except BuildError as exc:
        pytest.fail(f"helm could not be built: {exc}")
    testbed = env.testbed
    token = uuid.uuid4().hex[:8]
    release_ns = testbed.namespace(f"ksc-sys-{token}")
    values = scoped({"rbac": {"scope": scope}, "watchNamespaces": [env.namespace]}, token)
    objects = [o for o in render(helm, values, tmp_path, release_ns) if o["kind"] in RBAC_KINDS]
    account = only(objects, "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{release_ns}:{account}"

    with applied(testbed.kube, objects):
        pod_files = pod_secrets(testbed, release_ns, account, tmp_path / "serviceaccount")
        secrets = pod_files.folder
        server = urlsplit(pod_files.server)
        host, port = str(server.hostname), str(server.port or 443)
        home = tmp_path / "home"
        home.mkdir()
        assert testbed.cluster is not None
        cert, key = testbed.cluster.issue_certificate(f"in-pod-{token}", ["127.0.0.1"])
        replica = env.spawn(
            "in-pod",
            tmp_path / "logs",
            environment={
                "KSC_KUBECONFIG": None,
                "KUBECONFIG": None,
                "HOME": str(home),
                "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": port,
                "KSC_LEASE_NAMESPACE": release_ns,
                # HTTPS, so it also loads the cluster's client CA (for operators' certificates)
                # with the chart's grant in kube-system
                "KSC_TLS_CERT_FILE": str(cert),
                "KSC_TLS_KEY_FILE": str(key),
                # a shadow phase writes and removes its mirror object under the chart's RBAC
                "KSC_SHADOW_MIRROR": mirror,
            },
            wrapper=(*POD, str(secrets)),
        )
        log = tmp_path / "logs" / "in-pod.log"

        # a good model is promoted
        v1, v2, v3 = env.model("v1"), env.model("v2"), env.model("v3", SLOW_MODEL)
        env.create(v1)
        started = env.command("start", "new fraud model", storage_uri=v2)
        assert started.state == "accepted", (started.result, log.read_text()[-3000:])
        doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
        assert doc.state.phase is Phase.SUCCEEDED, (doc.state.outcome, log.read_text()[-3000:])

        # a bad one is rolled back
        bad = env.command("start", "latency regression", storage_uri=v3)
        assert bad.state == "accepted", bad.result
        env.wait(
            "the second rollout to start",
            lambda: (latest := env.latest()) is not None and latest.state.canary.storage_uri == v3,
        )
        doc = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.PAUSED, Phase.FAILED)
        assert doc.state.phase is Phase.ROLLED_BACK, doc.state.outcome
        assert "latency-p99" in (doc.state.rollback_reason or "")

        # a challenger's shadow: the mirror object written, then removed on abort
        champion = f"{env.name}-shadowed"
        create_challenger(env, f"{champion}-next", env.uri("v2"))
        shadowed = Env(env.testbed, env.mode, env.namespace, env.database_url, env.policy_dir,
                       token=env.token, name=champion)  # fmt: skip
        shadowed.create(
            v1, policy="shadow", extra={"kserve-canary.io/challenger": f"{champion}-next"}
        )
        shadowed.wait("the mirror object", lambda: bool(mirror_objects(shadowed, mirror)))
        aborted = shadowed.command("abort", "the RBAC test is done with it")
        assert aborted.state == "accepted", aborted.result
        assert_no_mirror(shadowed, mirror)
        with shadowed.store() as store:
            rows = store.rollouts(namespace=env.namespace, name=champion)
        assert [RolloutDocument.from_row(r).state.phase for r in rows] == [Phase.ABORTED]
        shadowed.stop()

        # the audit chain's head signed and witnessed in the release namespace, under the
        # chart's grants (the rollouts' ends make checkpoints due)
        witness = ConfigMapWitness(testbed.kube, namespace=release_ns, name=CHECKPOINTS)
        env.wait("a checkpoint in the release namespace", lambda: bool(witness.read()))

        # every write was the ServiceAccount's, through the chart's grants
        assert replica.process.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        assert "Forbidden" not in text, text[-3000:]
        assert "client_ca_unavailable" not in text, text[-3000:]
        field_managers = {
            entry.get("manager") for entry in env.isvc()["metadata"].get("managedFields", [])
        }
        assert "kserve-canary" in field_managers

        # and what the chart does not grant is refused to that very identity
        with KubeClient.in_cluster(
            f"https://{host}:{port}",
            token_file=secrets / "token",
            ca_file=secrets / "ca.crt",
            timeout=10.0,
        ) as pod:
            assert pod.authenticated_user() == user
            with pytest.raises(KubeError) as refused:
                pod.delete(INFERENCE_SERVICE, env.namespace, env.name)
            assert refused.value.status == 403
            assert env.isvc()["metadata"]["name"] == env.name  # still there
            if scope == "namespaced":  # no InferenceService outside the watched namespaces
                with pytest.raises(KubeError) as elsewhere:
                    pod.list(INFERENCE_SERVICE, release_ns)
                assert elsewhere.value.status == 403
