"""``make demo``: the controller on the local test bed, start to finish.

It starts the test bed (kube-apiserver + etcd with the real CRDs, the KServe and traffic
simulators, real Prometheus) and a private PostgreSQL, runs the controller exactly as
``canary run`` builds it, and deploys four fraud-scoring models side by side:

* ``fraud-healthy``: a new model as good as the old one, promoted 10 → 25 → 50 → 100,
  each step only once the data rule out a regression;
* ``fraud-regressed``: a new model whose p99 latency jumps, rolled back automatically;
* ``fraud-erroring``: a new model that fails 5 % of requests (production: 1 %), rolled
  back by the sequential error-rate test;
* ``fraud-gitops``: a model change written the way ``kubectl apply`` or a GitOps sync
  writes it, without any percent. The controller's admission webhook (registered through a
  real MutatingWebhookConfiguration with the test bed's CA) adds the first step to that
  very write, so the new revision never gets more than 10% before analysis.

The first three start with ``canary rollout start`` (one write: new model + first step),
sent to the controller's operator API with the token of ``release-manager``, a
ServiceAccount bound to the ``kserve-canary-operator`` ClusterRole: the apiserver says who
is acting and RBAC decides. Before that, ``intern`` (bound only to the viewer role) tries
to promote and is refused; the refusal is in the audit trail.
Progress is printed live, with each check's distance to a decision; at the end a summary
is read back from the audit database, with the evaluation that decided each rollout and
its evidence (values, counts, e-value against its threshold, query, response digest), and
the hash chain is verified. Everything is torn down afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from functools import partial
from pathlib import Path

from analysis.sequential_check import describe
from canary.access import cluster_roles
from canary.admission import ADMISSION_PATH
from canary.app import Application, build
from canary.audit import AuditRecord, AuditStore, upgrade_to_head
from canary.engine import RolloutDocument, check_definitions
from canary.k8s.client import (
    INFERENCE_SERVICE,
    SERVICE_ACCOUNT,
    AlreadyExists,
    KubeClient,
    ResourceKind,
)
from canary.k8s.webhook_config import delete_webhook_configuration, ensure_webhook_configuration
from canary.log import configure_logging
from canary.remote import OperatorClient
from canary.settings import load_settings
from testbed.behaviour import LatencyProfile, ModelBehaviour
from testbed.postgres import PostgresServer
from testbed.testbed import Testbed

__all__ = ["DEMO_POLICY", "main"]

NAMESPACE = "fraud"
RATE = 2000.0  # requests per second per InferenceService: the canary gets 200 at 10 %
DEMO_POLICY = """\
# The demo's policy: the default shape (10/25/50/100, error rate and p99 against the
# stable revision), with seconds instead of minutes so the demo takes about two minutes.
# A step advances only when the data rule out a regression beyond each tolerance.
name: fraud-demo
steps: [10, 25, 50, 100]
stepHold: 5s
analysisInterval: 2s
revisionReadyTimeout: 30s
trafficTimeout: 30s
maxStepDuration: 90s
falseRollbackRate: 0.01       # over the whole rollout, however often it looks
falsePromotionRate: 0.05      # per check
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 0.5     # the 5xx rate may not rise more than 50% over the stable's
    minSamples: 200
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 0.5     # nor the p99 by more than 50%
    hardLimit: 0.5             # and p99 above 500 ms fails at once
    minSamples: 100
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    new: ModelBehaviour
    expect: str
    gitops: bool = False  # deployed by a plain model change, as kubectl apply would


SCENARIOS = (
    Scenario(
        "fraud-healthy",
        "a retrained model, as good as the one in production",
        ModelBehaviour(),
        "Succeeded",
    ),
    Scenario(
        "fraud-regressed",
        "a model whose p99 latency jumps from 40 ms to 150 ms",
        ModelBehaviour(latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.150)),
        "RolledBack",
    ),
    Scenario(
        "fraud-erroring",
        "a model that fails 5% of its requests where production fails 1%",
        ModelBehaviour(error_rate=0.05),
        "RolledBack",
    ),
    Scenario(
        "fraud-gitops",
        "a model change applied the GitOps way, with no traffic percent at all",
        ModelBehaviour(),
        "Succeeded",
        gitops=True,
    ),
)


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _uri(scenario: Scenario, version: str) -> str:
    return f"gs://fraud-models/{scenario.name}/{version}"


def _deploy(kube: KubeClient, scenario: Scenario) -> None:
    kube.create(
        INFERENCE_SERVICE,
        NAMESPACE,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": scenario.name,
                "annotations": {
                    "kserve-canary.io/enabled": "true",
                    "kserve-canary.io/policy": "fraud-demo",
                },
            },
            "spec": {
                "predictor": {
                    "minReplicas": 2,
                    "model": {
                        "modelFormat": {"name": "sklearn"},
                        "storageUri": _uri(scenario, "v1"),
                    },
                }
            },
        },
    )


def _serving(kube: KubeClient, name: str) -> bool:
    status = kube.get(INFERENCE_SERVICE, NAMESPACE, name).get("status") or {}
    rolled = ((status.get("components") or {}).get("predictor") or {}).get(
        "latestRolledoutRevision"
    )
    return bool(rolled)


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _webhook_active(kube: KubeClient) -> bool:
    """A dry-run update goes through admission and stores nothing."""
    probe = {"spec": {"predictor": {"model": {"storageUri": "gs://fraud-models/probe"}}}}
    stored = kube.patch(INFERENCE_SERVICE, NAMESPACE, SCENARIOS[0].name, probe, dry_run=True)
    return "canaryTrafficPercent" in stored["spec"]["predictor"]


def _progress(store: AuditStore, started: float, timeout: float) -> dict[str, RolloutDocument]:
    """Print each change of phase, step or verdict until every rollout has finished."""
    seen: dict[str, tuple[object, ...]] = {}
    final: dict[str, RolloutDocument] = {}
    end = time.monotonic() + timeout
    while len(final) < len(SCENARIOS):
        if time.monotonic() > end:
            raise RuntimeError(f"the rollouts did not finish within {timeout:.0f}s")
        for row in store.rollouts(namespace=NAMESPACE):
            doc = RolloutDocument.from_row(row)
            state = doc.state
            verdict = state.last_verdict
            key = (state.phase, state.step_index, state.step_reached_at is not None,
                   verdict.verdict if verdict else None)  # fmt: skip
            if seen.get(row.name) == key:
                continue
            seen[row.name] = key
            share = state.last_view.share(state.canary.name) if state.last_view else 0
            line = (
                f"  {time.monotonic() - started:5.1f}s  {row.name:16} {state.phase.value:12} "
                f"canary {share:3d}%"
            )
            if verdict is not None and not state.terminal:
                line += f"  {verdict.verdict.value}: {verdict.summary[:90]}"
            if state.terminal:
                line += f"  {state.outcome or ''}"[:140]
                final[row.name] = doc
            _say(line)
            if not state.terminal and state.step_reached_at is not None:
                for text in _evidence(doc):
                    _say(f"{'':26}{text}")
        time.sleep(0.25)
    return final


def _evidence(doc: RolloutDocument) -> list[str]:
    """How far each sequential check is from a decision (as ``canary status`` shows it)."""
    lines = []
    for check in check_definitions(doc.policy):
        if check.sequential:
            memory = doc.memory.get(check.name)
            lines.append(describe(check, memory.sequential if memory else None, 1.0))
    return lines


def _deciding(records: list[AuditRecord]) -> AuditRecord | None:
    """The evaluation that decided: the failing one, else the last one."""
    evaluations = [r for r in records if r.entry.action == "analysis.evaluated"]
    failed = [r for r in evaluations if r.entry.evidence.get("verdict") == "Failed"]
    chosen = failed or evaluations
    return chosen[-1] if chosen else None


def _show_evidence(record: AuditRecord) -> None:
    entry = record.entry
    when = entry.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    url = entry.measurements[0].prometheus_url if entry.measurements else "-"
    _say(f"  deciding evaluation #{record.seq} at {when} (Prometheus {url}):")
    for m in entry.measurements:
        detail = m.detail
        counts = f"{m.canary_samples or 0:,} canary / {m.baseline_samples or 0:,} baseline requests"
        test = ""
        if detail.get("test") == "sequential" and m.statistic is not None and m.threshold:
            test = f"; evidence {m.statistic:.3g} vs {m.threshold:.3g} ({detail.get('decision')})"
        _say(f"    {m.check:12} {m.verdict:12} {counts}{test}")
        _say(f"    {'':12} {str(detail.get('message', ''))[:150]}")
        first_query = m.query.splitlines()[0] if m.query else "-"
        _say(f"    {'':12} query {first_query[:110]}")
        _say(f"    {'':12} response sha256 {m.response_digest[:16]}...")


_RBAC = "rbac.authorization.k8s.io"
_CLUSTER_ROLE = ResourceKind(_RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False)
_ROLE = ResourceKind(_RBAC, "v1", "roles", "Role")
_ROLE_BINDING = ResourceKind(_RBAC, "v1", "rolebindings", "RoleBinding")


def _operators(kube: KubeClient) -> dict[str, str]:
    """Two people, as ServiceAccounts: ``release-manager`` (the operator role, and may
    patch InferenceServices) and ``intern`` (the viewer role). Their tokens."""
    for cluster_role in cluster_roles():
        kube.apply(_CLUSTER_ROLE, None, cluster_role, field_manager="demo")
    editor = {
        "apiVersion": f"{_RBAC}/v1",
        "kind": "Role",
        "metadata": {"name": "isvc-editor", "namespace": NAMESPACE},
        "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                   "verbs": ["get", "patch"]}],
    }  # fmt: skip
    kube.apply(_ROLE, NAMESPACE, editor, field_manager="demo")
    grants = {
        "release-manager": [("ClusterRole", "kserve-canary-operator"), ("Role", "isvc-editor")],
        "intern": [("ClusterRole", "kserve-canary-viewer")],
    }
    tokens: dict[str, str] = {}
    for who, roles in grants.items():
        with contextlib.suppress(AlreadyExists):
            kube.create(SERVICE_ACCOUNT, NAMESPACE, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                     "metadata": {"name": who}})  # fmt: skip
        for kind, role in roles:
            binding = {
                "apiVersion": f"{_RBAC}/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{who}-{role}", "namespace": NAMESPACE},
                "roleRef": {"apiGroup": _RBAC, "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": NAMESPACE}],
            }
            kube.apply(_ROLE_BINDING, NAMESPACE, binding, field_manager="demo")
        tokens[who] = kube.request_token(NAMESPACE, who, expiration_seconds=3600)
    return tokens


def _summary(store: AuditStore, final: dict[str, RolloutDocument]) -> bool:
    ok = True
    _say("\nWhat the audit database says")
    _say("=" * 28)
    records = store.records()
    for scenario in SCENARIOS:
        doc = final[scenario.name]
        state = doc.state
        mine = [r for r in records if r.entry.rollout_id == state.rollout_id]
        evaluations = sum(1 for r in mine if r.entry.action == "analysis.evaluated")
        measurements = sum(len(r.entry.measurements) for r in mine)
        _say(f"\n{scenario.name}: {scenario.story}")
        _say(
            f"  canary {state.canary.name} ({state.canary.storage_uri}) against "
            f"{state.stable.name if state.stable else '-'}; policy {doc.policy.name}"
        )
        _say(f"  {evaluations} analyses with {measurements} measurements recorded")
        for record in mine:
            entry = record.entry
            if entry.action in ("analysis.evaluated", "traffic.applied"):
                continue
            when = entry.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
            reason = (entry.reason or "").replace("\n", " ")
            _say(f"  #{record.seq:<4} {when}  {entry.action:22} {reason[:100]}")
        deciding = _deciding(mine)
        if deciding is not None:
            _show_evidence(deciding)
        verdict = "as expected" if state.phase.value == scenario.expect else "UNEXPECTED"
        _say(f"  => {state.phase.value} ({verdict})")
        ok = ok and state.phase.value == scenario.expect
    for record in records:
        entry = record.entry
        if entry.action == "manual.denied":
            _say(f"\n#{record.seq} manual.denied: {entry.reason}")
            _say(f"  recorded as {entry.actor.id} (uid {entry.actor.uid}, groups "
                 f"{', '.join(entry.actor.groups)})")  # fmt: skip
        if entry.action == "traffic.intent" and entry.evidence.get("purpose") == "start":
            obj = entry.obj.name if entry.obj else "?"
            _say(f"\n#{record.seq} {obj} started by {entry.actor.id} (uid {entry.actor.uid})")
    report = store.verify()
    if report.ok:
        _say(f"\naudit chain intact: {report.records_checked} records, head {report.head_hash}")
    else:
        _say(f"\naudit chain BROKEN at record {report.first_bad_seq}: {report.problem}")
    return ok and report.ok


def main(work_dir: Path | None = None, timeout: float = 150.0) -> int:
    began = time.monotonic()
    configure_logging("development", "warning")
    base = work_dir or Path(tempfile.mkdtemp(prefix="kserve-canary-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    policy_dir = base / "policies"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "fraud-demo.yaml").write_text(DEMO_POLICY, encoding="utf-8")
    testbed = Testbed(base / "testbed", log=lambda line: _say(f"  test bed: {line}"))
    postgres = PostgresServer()  # its own directory, owned by the server's user
    application: Application | None = None
    try:
        _say("Starting the test bed (kube-apiserver, etcd, KServe and traffic simulators, "
             "Prometheus) and PostgreSQL...")  # fmt: skip
        testbed.up()
        postgres.start()
        url = postgres.create_database("kserve_canary")
        upgrade_to_head(url)
        kube = testbed.kube
        testbed.namespace(NAMESPACE)
        book = testbed.behaviour()
        for scenario in SCENARIOS:
            book = book.with_model(_uri(scenario, "v1"), ModelBehaviour())
            book = book.with_model(_uri(scenario, "v2"), scenario.new)
            book = book.with_rate(NAMESPACE, scenario.name, RATE)
        testbed.set_behaviour(book)
        _say(f"Deploying {', '.join(s.name for s in SCENARIOS)} (model v1), opted in...")
        for scenario in SCENARIOS:
            _deploy(kube, scenario)
        for scenario in SCENARIOS:
            name = scenario.name
            _wait(f"{name} v1 serving", partial(_serving, kube, name), 60)

        cluster = testbed.cluster
        assert cluster is not None
        cert, key = cluster.issue_certificate("kserve-canary-demo", ["127.0.0.1"])
        settings = load_settings(
            None,
            tls_cert_file=cert,
            tls_key_file=key,
            database_url=url,
            policy_path=policy_dir,
            kubeconfig=testbed.kubeconfig_path,
            prometheus_url=testbed.prometheus_url,
            namespaces=(NAMESPACE,),
            http_host="127.0.0.1",
            http_port=0,
            identity="kserve-canary-demo",
            lease_namespace=NAMESPACE,
            lease_duration_seconds=10,
            metrics_delay_seconds=10,
            # Prometheus scrapes every second: a look each second, complete 1.5 s later.
            look_period_seconds=1.0,
            look_lag_seconds=1.5,
            analysis_window_seconds=10,
            environment="development",
            log_level="warning",
        )
        application = build(settings)
        application.start()
        _say(f"Controller running (health, metrics and admission webhook on {application.url}).")
        ensure_webhook_configuration(
            kube,
            ca_bundle=cluster.ca_path.read_bytes(),
            url=f"{application.url}{ADMISSION_PATH}",
        )
        _wait("the apiserver to call the webhook", partial(_webhook_active, kube), 30)
        tokens = _operators(kube)
        api = partial(OperatorClient, application.url, ca_file=cluster.ca_path)
        with api(tokens["intern"]) as client:
            _say(f"$ canary promote fraud-healthy -n {NAMESPACE} --reason 'looks fine'   "
                 "# as intern (viewer only)")  # fmt: skip
            answer = client.command(NAMESPACE, "fraud-healthy", "promote",
                                    reason="looks fine", wait=5)  # fmt: skip
            _say(f"  refused (HTTP {answer.status}): {answer.error}")
        with AuditStore.from_url(url) as store, api(tokens["release-manager"]) as client:
            for scenario in SCENARIOS:
                uri = _uri(scenario, "v2")
                if scenario.gitops:
                    change = {"spec": {"predictor": {"model": {"storageUri": uri}}}}
                    _say(f"$ kubectl patch inferenceservice {scenario.name} -n {NAMESPACE} "
                         f"--type merge -p '{json.dumps(change)}'")  # fmt: skip
                    stored = kube.patch(INFERENCE_SERVICE, NAMESPACE, scenario.name, change)
                    percent = stored["spec"]["predictor"].get("canaryTrafficPercent")
                    _say(f"  stored with canaryTrafficPercent={percent} (added by the webhook)")
                    continue
                _say(f"$ canary rollout start {scenario.name} -n {NAMESPACE} --storage-uri {uri} "
                     f"--reason 'deploy v2'   # as release-manager")  # fmt: skip
                answer = client.command(NAMESPACE, scenario.name, "start",
                                        reason=f"deploy {scenario.name} v2", wait=30,
                                        storage_uri=uri)  # fmt: skip
                who = (answer.body.get("caller") or {}).get("username", "?")
                outcome = answer.body.get("state", f"HTTP {answer.status}")
                _say(f"  {outcome} (as {who}): {answer.body.get('result') or answer.error}")
            _say("\nLive progress")
            started = time.monotonic()
            final = _progress(store, started, timeout)
            ok = _summary(store, final)
        _say(f"\nDemo finished in {time.monotonic() - began:.0f}s.")
        return 0 if ok else 1
    finally:
        if application is not None:
            with contextlib.suppress(Exception):
                delete_webhook_configuration(testbed.kube)
            application.stop()
        postgres.stop()
        testbed.down()
        if work_dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
