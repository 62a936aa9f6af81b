"""``make demo``: the controller on the local test bed, start to finish.

It starts the test bed (kube-apiserver + etcd with the real CRDs, the KServe and traffic
simulators, real Prometheus) and a private PostgreSQL (migrated by an owner role; the
controller connects as an application role that may read and append the audit history but
not change it), runs the controller exactly as ``canary run`` builds it, and deploys four
fraud-scoring models side by side:

* ``fraud-healthy``: a new model as good as the old one, promoted 10 → 25 → 50 → 100,
  each step only once the data rule out a regression;
* ``fraud-regressed``: a new model whose p99 latency jumps, rolled back automatically;
* ``fraud-erroring``: a new model that fails 5 % of requests (production: 1 %), rolled
  back by the sequential error-rate test;
* ``fraud-gitops``: a model change written the way ``kubectl apply`` or a GitOps sync
  writes it, without any percent. The controller's admission webhook (registered through a
  real MutatingWebhookConfiguration with the test bed's CA) adds the first step to that
  very write, so the new revision never gets more than 10% before analysis;

and two regulated credit models, in namespace ``credit``, on the shipped
``deploy/policies/credit-decisioning.yaml`` (its copy for the demo keeps its steps, checks
and ServiceNow approval gate, takes the demo's timings and drops its schedule; see
:func:`regulated_policy`). The test bed's ServiceNow simulator plays the change system:

* ``credit-approved``: the canary waits before 100% under change request ``CHG...``, until
  ``alice``, a risk owner, approves it with ``python -m testbed servicenow approve``; the
  simulator's signed callback reaches the controller's ``/webhooks/v1/servicenow``, the
  controller reads the approval back from ServiceNow, and promotes;
* ``credit-rejected``: ``bob`` rejects its change with a comment; it is rolled back.

and two challengers in shadow (policy ``fraud-shadow``: 25 % of the champion's live
requests mirrored through the controller's own Istio VirtualService, the challenger's
answers discarded and compared with the champion's: latency, errors, decision agreement and
score shift on the same requests, from the payload logger through the shadow collector):

* ``fraud-champion`` names ``fraud-champion-challenger``, a retrained model that decides
  like it: the comparison passes, so the controller writes the challenger's model onto the
  champion and its canary runs to 100%;
* ``fraud-rival`` names ``fraud-rival-challenger``, a model that declines 30% of legitimate
  transactions where the champion declines 2%: rejected on agreement, it never serves a
  customer.

Every model but the GitOps one and the challengers starts with ``canary rollout start`` (one
write: new model + first step), sent to the controller's operator API with the token of
``release-manager``, a ServiceAccount bound to the ``kserve-canary-operator`` ClusterRole:
the apiserver says who is acting and RBAC decides. Before that, ``intern`` (bound only to
the viewer role) tries to promote and is refused; the refusal is in the audit trail.
Progress is printed live, with each check's distance to a decision; at the end a summary
is read back from the audit database, with the evaluation that decided each rollout and
its evidence (values, counts, e-value against its threshold, query, response digest), and
the hash chain is verified; for the credit models the summary names the change, who
decided and what they wrote, and how ServiceNow closed the change. Everything is torn down
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml

from analysis.sequential_check import describe
from canary.access import cluster_roles
from canary.admission import ADMISSION_PATH
from canary.app import Application, build
from canary.audit import AuditRecord, AuditStore
from canary.audit.checkpoint import CheckpointSigner, generate_private_key_pem, public_key_pem
from canary.checks import check_definitions
from canary.engine import RolloutDocument
from canary.k8s.client import (
    INFERENCE_SERVICE,
    SERVICE_ACCOUNT,
    VIRTUAL_SERVICE,
    AlreadyExists,
    KubeClient,
    ResourceKind,
)
from canary.k8s.webhook_config import delete_webhook_configuration, ensure_webhook_configuration
from canary.log import configure_logging
from canary.model import Phase
from canary.ops import shadow_lines
from canary.policy import RolloutPolicy, format_duration, load_policies
from canary.remote import OperatorClient
from canary.routing.mirror import CHAMPION_LABEL, OWNED_SELECTOR
from canary.settings import load_settings
from testbed.behaviour import BusinessProfile, LatencyProfile, ModelBehaviour
from testbed.postgres import PostgresServer, provision_audit_database
from testbed.servicenow import signing
from testbed.servicenow.process import ServiceNowSim
from testbed.testbed import Testbed

__all__ = [
    "DEMO_POLICY",
    "SHADOW_POLICY",
    "SHIPPED_CREDIT_POLICY",
    "DemoPolicy",
    "main",
    "regulated_policy",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]

NAMESPACE = "fraud"
RATE = 2000.0  # requests per second per InferenceService: the canary gets 200 at 10 %
CREDIT_NAMESPACE = "credit"
# The shipped credit policy allows only +25% on the error rate (the fraud demo +50%): ruling
# that out takes about four times the requests, so the credit services get five times the rate.
CREDIT_RATE = 10000.0
SHIPPED_CREDIT_POLICY = _REPO_ROOT / "deploy" / "policies" / "credit-decisioning.yaml"
# The policy fields the demo shortens, in every policy it runs: seconds instead of minutes.
DEMO_TIMINGS = (
    "stepHold",
    "analysisInterval",
    "revisionReadyTimeout",
    "trafficTimeout",
    "maxStepDuration",
)
# How long a risk owner lets a change wait before deciding: long enough to see the rollout
# hold at the gate (and the controller poll the change at least once).
RISK_OWNER_PAUSE = 6.0
SERVICENOW_USER, SERVICENOW_PASSWORD = "kserve-canary", "integration-password"  # seed.yaml
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
maxStepDuration: 3m            # a healthy canary unlucky in its errors needs more evidence
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


SHADOW_POLICY = (
    DEMO_POLICY.replace("name: fraud-demo", "name: fraud-shadow")
    + """\
shadow:
  enabled: true
  mirrorPercent: 25            # of the champion's live requests, copied to the challenger
  duration: 15s                # judged only after this (production: hours)
  timeout: 3m
  minSamples: 300              # mirrored requests per check, and paired answers
  after: gate                  # the canary of its model starts only after a pass
  minAgreement: 0.97           # the same decision on at least 97% of the same requests
  maxScoreShift: 0.2           # population stability index of the scores
"""
)


@dataclass(frozen=True)
class DemoPolicy:
    """A shipped policy as the demo runs it: the YAML to load, and what was changed."""

    name: str
    text: str
    notes: tuple[str, ...]


def _shown(policy: RolloutPolicy, key: str) -> str:
    value = policy.model_dump(mode="json", by_alias=True)[key]
    if value is None and key == "maxStepDuration":
        return f"{format_duration(policy.step_deadline)} (3 x stepHold)"
    return str(value)


def _schedule_story(policy: RolloutPolicy, now: datetime) -> str:
    schedule = policy.schedule
    parts = [f"{'/'.join(w.days)} {w.start:%H:%M}-{w.end:%H:%M}" for w in schedule.windows] + [
        f"{f.reason} {f.start:%Y-%m-%d} to {f.end:%Y-%m-%d}" for f in schedule.freezes
    ]
    shipped = f"{'; '.join(parts)} ({schedule.timezone})" if parts else "none"
    if schedule.is_open(now):
        verdict = "it would let this run advance now"
    else:
        verdict = f"it would hold this run: {schedule.describe_closed(now)}"
    return f"schedule removed (as shipped: {shipped}; {verdict})"


def regulated_policy(
    shipped: Path = SHIPPED_CREDIT_POLICY, *, now: datetime | None = None
) -> DemoPolicy:
    """The shipped policy file with the demo's timings (those of ``DEMO_POLICY``) and no
    schedule, so that the demo runs in a minute on any day: a promotion window or a change
    freeze would otherwise hold it for hours or weeks. Everything else (steps, checks and
    tolerances, the approval gate, its group, deadline and expiry) is as shipped. Raises
    ValueError if the file is not one valid policy or the result does not validate."""
    document = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{shipped} does not hold one policy mapping")
    original = RolloutPolicy.model_validate(document)
    demo_timings = yaml.safe_load(DEMO_POLICY)
    changed: dict[str, Any] = dict(document)
    timings = []
    for key in DEMO_TIMINGS:
        changed[key] = demo_timings[key]
        timings.append(f"{key} {_shown(original, key)} -> {demo_timings[key]}")
    changed.pop("schedule", None)
    RolloutPolicy.model_validate(changed)  # fails loudly if the shipped file moved on
    header = f"# Generated by the demo from {shipped.name}: the demo's timings, no schedule.\n"
    return DemoPolicy(
        name=original.name,
        text=header + yaml.safe_dump(changed, sort_keys=False, allow_unicode=True),
        notes=(
            "timings as in the demo's other policy: " + ", ".join(timings),
            _schedule_story(original, now or datetime.now(UTC)),
        ),
    )


@dataclass(frozen=True)
class RiskOwnerDecision:
    """What a risk owner does in ServiceNow once the change waits for her."""

    action: Literal["approve", "reject"]
    user: str
    comment: str

    @property
    def record(self) -> str:
        return "approval.verified" if self.action == "approve" else "approval.rejected"

    @property
    def close_code(self) -> str:
        return "successful" if self.action == "approve" else "unsuccessful"


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    new: ModelBehaviour
    expect: str
    gitops: bool = False  # deployed by a plain model change, as kubectl apply would
    namespace: str = NAMESPACE
    policy: str = "fraud-demo"
    rate: float = RATE
    decision: RiskOwnerDecision | None = None
    # a challenger InferenceService running the new model, shadowed before any canary
    challenger: bool = False

    @property
    def challenger_name(self) -> str:
        return f"{self.name}-challenger"


SCENARIOS: tuple[Scenario, ...] = (
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
    Scenario(
        "credit-approved",
        "a retrained credit model; the risk owner approves its change",
        ModelBehaviour(),
        "Succeeded",
        namespace=CREDIT_NAMESPACE,
        policy="credit-decisioning",
        rate=CREDIT_RATE,
        decision=RiskOwnerDecision(
            "approve", "alice", "evidence reviewed: error rate within tolerance, go"
        ),
    ),
    Scenario(
        "credit-rejected",
        "a credit model the risk owner turns down",
        ModelBehaviour(),
        "RolledBack",
        namespace=CREDIT_NAMESPACE,
        policy="credit-decisioning",
        rate=CREDIT_RATE,
        decision=RiskOwnerDecision(
            "reject", "bob", "not before the model risk committee has seen the bias review"
        ),
    ),
)
SCENARIOS += (
    Scenario(
        "fraud-champion",
        "a challenger that decides like the champion: shadow, then its canary",
        ModelBehaviour(),
        "Succeeded",
        policy="fraud-shadow",
        challenger=True,
    ),
    Scenario(
        "fraud-rival",
        "a challenger that declines 30% of legitimate transactions (the champion 2%)",
        ModelBehaviour(business=BusinessProfile(false_positive_rate=0.3)),
        "Rejected",
        policy="fraud-shadow",
        challenger=True,
    ),
)
NAMESPACES = tuple(dict.fromkeys(s.namespace for s in SCENARIOS))


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _uri(scenario: Scenario, version: str) -> str:
    return f"gs://{scenario.namespace}-models/{scenario.name}/{version}"


def _deploy(kube: KubeClient, scenario: Scenario) -> None:
    annotations = {
        "kserve-canary.io/enabled": "true",
        "kserve-canary.io/policy": scenario.policy,
    }
    if scenario.challenger:
        annotations["kserve-canary.io/challenger"] = scenario.challenger_name
    kube.create(
        INFERENCE_SERVICE,
        scenario.namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": scenario.name, "annotations": annotations},
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


def _deploy_challenger(kube: KubeClient, scenario: Scenario) -> None:
    """The challenger: a plain InferenceService (not opted in) with the new model, called
    by nobody; its payload logger and the champion's post to the shadow collector."""
    kube.create(
        INFERENCE_SERVICE,
        scenario.namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": scenario.challenger_name},
            "spec": {
                "predictor": {
                    "minReplicas": 1,
                    "model": {
                        "modelFormat": {"name": "sklearn"},
                        "storageUri": _uri(scenario, "v2"),
                    },
                }
            },
        },
    )


def _serving(kube: KubeClient, namespace: str, name: str) -> bool:
    status = kube.get(INFERENCE_SERVICE, namespace, name).get("status") or {}
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


class _RiskOwners:
    """The credit risk owners at their ServiceNow desks: once a scenario's change has waited
    ``RISK_OWNER_PAUSE`` seconds, its risk owner decides it with the simulator's command line,
    as a person would (``python -m testbed servicenow approve|reject``)."""

    def __init__(self, servicenow_url: str, store: AuditStore) -> None:
        self._url = servicenow_url
        self._store = store
        self._waiting: dict[str, float] = {}
        self.changes: dict[str, str] = {}  # scenario name -> the change number decided

    def look(self, scenario: Scenario, doc: RolloutDocument) -> list[str]:
        approval = doc.state.approval
        decision = scenario.decision
        if (
            decision is None
            or scenario.name in self.changes
            or doc.state.phase is not Phase.AWAITING_APPROVAL
            or approval is None
            or not approval.change_number
        ):
            return []
        number = approval.change_number
        if scenario.name not in self._waiting:
            self._waiting[scenario.name] = time.monotonic()
            row = next(
                (r for r in self._store.approvals_for(doc.state.rollout_id)
                 if r.change_number == number),
                None,
            )  # fmt: skip
            group = (row.risk_owner_group if row else None) or doc.policy.approval.risk_owner_group
            asked = f" ({', '.join(row.asked)})" if row and row.asked else ""
            return [
                f"change {number} opened in ServiceNow for {group}{asked}; the canary waits "
                f"before {doc.policy.approval.before_step}% until a risk owner decides"
            ]
        if time.monotonic() - self._waiting[scenario.name] < RISK_OWNER_PAUSE:
            return []
        self.changes[scenario.name] = number
        return self._decide(decision, number)

    def _decide(self, decision: RiskOwnerDecision, number: str) -> list[str]:
        args = [decision.action, number, "--as", decision.user, "--comment", decision.comment]
        inherited = os.environ.get("PYTHONPATH")
        result = subprocess.run(
            [sys.executable, "-m", "testbed", "servicenow", *args, "--url", self._url],
            cwd=_REPO_ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(_REPO_ROOT), *([inherited] if inherited else [])]
                ),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [f"$ python -m testbed servicenow {shlex.join(args)}   # {decision.user}, "
                 "a risk owner, in ServiceNow"]  # fmt: skip
        lines += [f"  {line}" for line in (result.stdout + result.stderr).splitlines()]
        if result.returncode != 0:
            raise RuntimeError(
                f"the risk owner's {decision.action} of {number} failed (exit code "
                f"{result.returncode}):\n" + "\n".join(lines)
            )
        return lines


def _progress(
    store: AuditStore, started: float, timeout: float, risk_owners: _RiskOwners
) -> dict[str, RolloutDocument]:
    """Print each change of phase, step or verdict until every rollout has finished; let the
    risk owners decide the changes that wait for them."""
    scenarios = {s.name: s for s in SCENARIOS}
    seen: dict[str, tuple[object, ...]] = {}
    final: dict[str, RolloutDocument] = {}
    end = time.monotonic() + timeout
    while len(final) < len(SCENARIOS):
        if time.monotonic() > end:
            raise RuntimeError(f"the rollouts did not finish within {timeout:.0f}s")
        rows = [row for namespace in NAMESPACES for row in store.rollouts(namespace=namespace)]
        newest: set[str] = set()
        for row in rows:
            doc = RolloutDocument.from_row(row)
            state = doc.state
            latest = row.name not in newest  # rollouts come newest first
            newest.add(row.name)
            verdict = state.last_verdict
            key = (state.phase, state.step_index, state.step_reached_at is not None,
                   verdict.verdict if verdict else None)  # fmt: skip
            elapsed = f"{time.monotonic() - started:5.1f}s"
            if seen.get(row.id) != key:
                seen[row.id] = key
                share = state.last_view.share(state.canary.name) if state.last_view else 0
                what = f"canary {share:3d}%"
                if state.challenger is not None:
                    what = f"shadow {state.challenger}"
                line = f"  {elapsed}  {row.name:16} {state.phase.value:16} {what}"
                if verdict is not None and not state.terminal:
                    line += f"  {verdict.verdict.value}: {verdict.summary[:90]}"
                if state.terminal:
                    line += f"  {state.outcome or ''}"[:160]
                _say(line)
                if state.phase is Phase.SHADOWING:
                    now = datetime.now(UTC)
                    for text in shadow_lines(doc, now, store.measurements_for(row.id)):
                        _say(f"{'':26}{text}")
                elif not state.terminal and state.step_reached_at is not None:
                    for text in _evidence(doc):
                        _say(f"{'':26}{text}")
            # the challenger's passed shadow is followed by its model's canary
            follows = state.challenger is not None and state.phase is Phase.SUCCEEDED
            if latest and state.terminal and not follows:
                final[row.name] = doc
            scenario = scenarios.get(row.name)
            if scenario is not None:
                for text in risk_owners.look(scenario, doc):
                    _say(f"  {elapsed}  {text}")
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
    """Two people, as ServiceAccounts of the fraud namespace: ``release-manager`` (the
    operator role, and may patch InferenceServices, in every namespace of the demo) and
    ``intern`` (the viewer role). Their tokens."""
    for cluster_role in cluster_roles():
        kube.apply(_CLUSTER_ROLE, None, cluster_role, field_manager="demo")
    grants = {
        "release-manager": [("ClusterRole", "kserve-canary-operator"), ("Role", "isvc-editor")],
        "intern": [("ClusterRole", "kserve-canary-viewer")],
    }
    for namespace in NAMESPACES:
        editor = {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "Role",
            "metadata": {"name": "isvc-editor", "namespace": namespace},
            "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                       "verbs": ["get", "patch"]}],
        }  # fmt: skip
        kube.apply(_ROLE, namespace, editor, field_manager="demo")
    tokens: dict[str, str] = {}
    for who, roles in grants.items():
        with contextlib.suppress(AlreadyExists):
            kube.create(SERVICE_ACCOUNT, NAMESPACE, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                     "metadata": {"name": who}})  # fmt: skip
        for namespace in NAMESPACES:
            for kind, role in roles:
                binding = {
                    "apiVersion": f"{_RBAC}/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": f"{who}-{role}", "namespace": namespace},
                    "roleRef": {"apiGroup": _RBAC, "kind": kind, "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": NAMESPACE}],
                }
                kube.apply(_ROLE_BINDING, namespace, binding, field_manager="demo")
        tokens[who] = kube.request_token(NAMESPACE, who, expiration_seconds=3600)
    return tokens


def _closed_changes(sim: ServiceNowSim, numbers: list[str], timeout: float) -> dict[str, Any]:
    """The simulator's changes by number, once the given ones are closed (the controller
    closes a change when its rollout ends) or ``timeout`` has passed."""
    end = time.monotonic() + timeout
    while True:
        changes = {c["number"]: c for c in sim.admin.changes()}
        closed = all(changes.get(n, {}).get("state") == "3" for n in numbers)
        if closed or time.monotonic() > end:
            return changes
        time.sleep(0.5)


def _approval_summary(
    decision: RiskOwnerDecision,
    mine: list[AuditRecord],
    acted_on: str | None,
    changes: Mapping[str, Any],
) -> bool:
    """The recorded decision, who took it and what they wrote, and how ServiceNow closed the
    change; whether all of it is what the risk owner did."""
    found = [r for r in mine if r.entry.action == decision.record]
    if not found:
        _say(f"  no {decision.record} record for change {acted_on or '-'} (UNEXPECTED)")
        return False
    record = found[-1]
    evidence: dict[str, Any] = json.loads(json.dumps(dict(record.entry.evidence)))
    number = evidence.get("change_number")
    decided = evidence.get("decision") or {}
    approver, comments = decided.get("approver_name"), decided.get("comments", "")
    verb = "approved" if decision.action == "approve" else "rejected"
    _say(f"  #{record.seq} change {number} {verb} by {approver} in ServiceNow: {comments!r}")
    if decided.get("webhook_id"):
        digest = str(decided.get("payload_digest"))[:23]
        _say(f"  {'':5} read back from ServiceNow after the signed callback "
             f"{decided['webhook_id']} (payload {digest}...)")  # fmt: skip
    else:
        _say(f"  {'':5} found by polling ServiceNow (no callback was involved)")
    change = changes.get(str(number)) or {}
    closed = change.get("state") == "3"
    if closed:
        _say(f"  ServiceNow: {number} closed, close code {change.get('close_code')}")
    else:
        _say(f"  ServiceNow: {number} NOT closed (state {change.get('state', '?')})")
    return (
        number == acted_on
        and approver == decision.user
        and comments == decision.comment
        and closed
        and change.get("close_code") == decision.close_code
    )


def _shadow_summary(
    store: AuditStore,
    kube: KubeClient,
    scenario: Scenario,
    final: RolloutDocument,
    records: list[AuditRecord],
) -> bool:
    """The challenger's shadow: what the audit trail recorded, the comparison that decided
    it (agreement over how many pairs, latency and errors against the champion), and
    whether the mirror object is gone."""
    shadows = [
        RolloutDocument.from_row(r)
        for r in store.rollouts(namespace=scenario.namespace, name=scenario.name)
        if RolloutDocument.from_row(r).state.challenger is not None
    ]
    if not shadows:
        _say(f"\n{scenario.name}: no shadow rollout (UNEXPECTED)")
        return False
    shadow = shadows[0].state
    mine = [r for r in records if r.entry.rollout_id == shadow.rollout_id]
    _say(f"\n{scenario.name}: {scenario.story}")
    _say(f"  shadow of {shadow.challenger} ({shadow.canary.name}, {shadow.canary.storage_uri}) "
         f"against {shadow.stable.name if shadow.stable else '-'}")  # fmt: skip
    for record in mine:
        entry = record.entry
        if entry.action in ("analysis.evaluated",):
            continue
        when = entry.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
        reason = (entry.reason or "").replace("\n", " ")
        _say(f"  #{record.seq:<4} {when}  {entry.action:26} {reason[:96]}")
    deciding = _deciding(mine)
    if deciding is not None:
        _show_evidence(deciding)
    items, _ = kube.list(VIRTUAL_SERVICE, scenario.namespace, label_selector=OWNED_SELECTOR)
    left = [i for i in items if (i["metadata"].get("labels") or {}).get(CHAMPION_LABEL)
            == scenario.name]  # fmt: skip
    _say(f"  mirror objects left on the apiserver: {len(left)}")
    expected_shadow = "Succeeded" if scenario.expect == "Succeeded" else scenario.expect
    passed = shadow.phase.value == expected_shadow and not left
    if scenario.expect == "Rejected":
        _say(f"  => {shadow.phase.value} ({'as expected' if passed else 'UNEXPECTED'})")
        return passed and final.state.challenger is not None
    return passed


def _summary(
    store: AuditStore,
    kube: KubeClient,
    final: dict[str, RolloutDocument],
    sim: ServiceNowSim,
    acted_on: Mapping[str, str],
) -> bool:
    ok = True
    changes = _closed_changes(sim, list(acted_on.values()), timeout=20)
    _say("\nWhat the audit database says")
    _say("=" * 28)
    records = store.records()
    for scenario in SCENARIOS:
        doc = final[scenario.name]
        state = doc.state
        if scenario.challenger:
            ok = _shadow_summary(store, kube, scenario, doc, records) and ok
            if state.challenger is not None:
                continue  # rejected in shadow: no canary followed
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
        expected = state.phase.value == scenario.expect
        if scenario.decision is not None:
            decided = _approval_summary(
                scenario.decision, mine, acted_on.get(scenario.name), changes
            )
            expected = expected and decided
        verdict = "as expected" if expected else "UNEXPECTED"
        _say(f"  => {state.phase.value} ({verdict})")
        ok = ok and expected
    for record in records:
        entry = record.entry
        if entry.action == "manual.denied":
            _say(f"\n#{record.seq} manual.denied: {entry.reason}")
            _say(f"  recorded as {entry.actor.id} (uid {entry.actor.uid}, groups "
                 f"{', '.join(entry.actor.groups)})")  # fmt: skip
        if entry.action == "traffic.intent" and entry.evidence.get("purpose") == "start":
            obj = entry.obj.name if entry.obj else "?"
            _say(f"\n#{record.seq} {obj} started by {entry.actor.id} (uid {entry.actor.uid})")
    return ok


def _verify_chain(application: Application, url: str, kubeconfig: Path, public_key: Path) -> bool:
    """Sign the head now (as the leader does at every rollout's end and every interval),
    then verify the chain as an auditor would: against the ConfigMap witness's checkpoints,
    with the public key, through the real command line."""
    if application.checkpoints is not None:
        application.checkpoints.run_once(force=True)
    witness = f"{NAMESPACE}/{application.settings.audit_checkpoint_configmap}"
    _say(f"\n$ canary audit verify --witness-configmap {witness} --public-key {public_key.name}")
    verified = subprocess.run(
        [sys.executable, "-m", "canary.cli", "audit", "verify", "--database-url", url,
         "--witness-configmap", witness, "--kubeconfig", str(kubeconfig),
         "--public-key", str(public_key)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    for line in (verified.stdout + verified.stderr).splitlines():
        _say(f"  {line}")
    return verified.returncode == 0


def main(work_dir: Path | None = None, timeout: float = 300.0) -> int:
    began = time.monotonic()
    configure_logging("development", "warning")
    base = work_dir or Path(tempfile.mkdtemp(prefix="kserve-canary-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    policy_dir = base / "policies"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "fraud-demo.yaml").write_text(DEMO_POLICY, encoding="utf-8")
    (policy_dir / "fraud-shadow.yaml").write_text(SHADOW_POLICY, encoding="utf-8")
    credit = regulated_policy()
    (policy_dir / f"{credit.name}.yaml").write_text(credit.text, encoding="utf-8")
    testbed = Testbed(base / "testbed", log=lambda line: _say(f"  test bed: {line}"))
    postgres = PostgresServer()  # its own directory, owned by the server's user
    application: Application | None = None
    sim: ServiceNowSim | None = None
    try:
        _say("Starting the test bed (kube-apiserver, etcd, KServe and traffic simulators, "
             "Prometheus) and PostgreSQL...")  # fmt: skip
        testbed.up()
        postgres.start()
        database = provision_audit_database(postgres, "kserve_canary")
        _say(f"PostgreSQL: migrated by role {database.owner}; the controller connects as role "
             f"{database.app} (canary db grant: SELECT and INSERT on the audit history, "
             "UPDATE only on its own state)")  # fmt: skip
        url = database.app_url
        kube = testbed.kube
        for namespace in NAMESPACES:
            testbed.namespace(namespace)
        book = testbed.behaviour()
        for scenario in SCENARIOS:
            book = book.with_model(_uri(scenario, "v1"), ModelBehaviour())
            book = book.with_model(_uri(scenario, "v2"), scenario.new)
            book = book.with_rate(scenario.namespace, scenario.name, scenario.rate)
            if scenario.challenger:  # nobody calls a challenger: it sees mirrored copies only
                book = book.with_rate(scenario.namespace, scenario.challenger_name, 0.0)
        testbed.set_behaviour(book)
        _say(f"Policy {credit.name} for the credit models: {SHIPPED_CREDIT_POLICY.name} as "
             "shipped (steps, checks, the ServiceNow approval gate before 100%), "
             "except")  # fmt: skip
        for note in credit.notes:
            _say(f"  {note}")
        for check in load_policies(policy_dir).get(credit.name).checks:
            if check.dry_run:
                _say(f"  (its dry-run check {check.name} queries series the test bed's traffic "
                     "does not produce: it stays Inconclusive and, being dry-run, never "
                     "gates)")  # fmt: skip
        for namespace in NAMESPACES:
            names = ", ".join(s.name for s in SCENARIOS if s.namespace == namespace)
            _say(f"Deploying {names} in {namespace} (model v1), opted in...")
        for scenario in SCENARIOS:
            _deploy(kube, scenario)
            if scenario.challenger:
                _deploy_challenger(kube, scenario)
        for scenario in SCENARIOS:
            name = scenario.name
            _wait(f"{name} v1 serving", partial(_serving, kube, scenario.namespace, name), 60)
            if scenario.challenger:
                rival = scenario.challenger_name
                _wait(f"{rival} serving", partial(_serving, kube, scenario.namespace, rival), 60)

        cluster = testbed.cluster
        assert cluster is not None
        # ServiceNow: the simulator, whose signed approval callback reaches the controller's
        # receiver over HTTPS (its certificate comes from the test bed's CA).
        callback_secret = signing.new_secret()
        sim = ServiceNowSim(base / "servicenow", callback_ca_file=cluster.ca_path).start()
        cert, key = cluster.issue_certificate("kserve-canary-demo", ["127.0.0.1"])
        # The audit chain's head is signed with a key the database never holds, and each
        # checkpoint is published to a ConfigMap (and an Event) the auditor reads.
        signing_key = base / "audit-signing.pem"
        signing_key.write_bytes(generate_private_key_pem())
        public_key = base / "audit-signing.pub"
        public_key.write_bytes(public_key_pem(CheckpointSigner.from_file(signing_key).public_key))
        settings = load_settings(
            None,
            tls_cert_file=cert,
            tls_key_file=key,
            audit_signing_key_file=signing_key,
            audit_checkpoint_interval_seconds=30,  # production: 300 s (and every rollout's end)
            database_url=url,
            policy_path=policy_dir,
            kubeconfig=testbed.kubeconfig_path,
            prometheus_url=testbed.prometheus_url,
            namespaces=NAMESPACES,
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
            servicenow_url=sim.url,
            servicenow_user=SERVICENOW_USER,
            servicenow_password=SERVICENOW_PASSWORD,
            servicenow_callback_secrets=(callback_secret,),
            approval_poll_seconds=5.0,  # production: 60 s; the callback makes it sooner
            shadow_mirror="istio",  # our own VirtualService per champion
        )
        application = build(settings)
        application.start()
        _say(f"Controller running (health, metrics, admission webhook and approval webhooks "
             f"on {application.url}).")  # fmt: skip
        receiver = f"{application.url}/webhooks/v1/servicenow"
        sim.set_callback(receiver, [callback_secret])
        _say(f"ServiceNow simulator on {sim.url} (risk owners alice and bob). A decision "
             f"there is POSTed to {receiver}, signed with a whsec_ secret the controller "
             "shares; the controller also reads each pending change every 5 s.")  # fmt: skip
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
                uri, namespace = _uri(scenario, "v2"), scenario.namespace
                if scenario.challenger:
                    _say(f"# {scenario.name} names its challenger {scenario.challenger_name} "
                         f"({uri}); the controller shadows it on its own")  # fmt: skip
                    continue
                if scenario.gitops:
                    change = {"spec": {"predictor": {"model": {"storageUri": uri}}}}
                    _say(f"$ kubectl patch inferenceservice {scenario.name} -n {namespace} "
                         f"--type merge -p '{json.dumps(change)}'")  # fmt: skip
                    stored = kube.patch(INFERENCE_SERVICE, namespace, scenario.name, change)
                    percent = stored["spec"]["predictor"].get("canaryTrafficPercent")
                    _say(f"  stored with canaryTrafficPercent={percent} (added by the webhook)")
                    continue
                _say(f"$ canary rollout start {scenario.name} -n {namespace} --storage-uri {uri} "
                     f"--reason 'deploy v2'   # as release-manager")  # fmt: skip
                answer = client.command(namespace, scenario.name, "start",
                                        reason=f"deploy {scenario.name} v2", wait=30,
                                        storage_uri=uri)  # fmt: skip
                who = (answer.body.get("caller") or {}).get("username", "?")
                outcome = answer.body.get("state", f"HTTP {answer.status}")
                _say(f"  {outcome} (as {who}): {answer.body.get('result') or answer.error}")
            _say("\nLive progress")
            started = time.monotonic()
            risk_owners = _RiskOwners(sim.url, store)
            final = _progress(store, started, timeout, risk_owners)
            ok = _summary(store, kube, final, sim, risk_owners.changes)
            ok = _verify_chain(application, url, testbed.kubeconfig_path, public_key) and ok
        _say(f"\nDemo finished in {time.monotonic() - began:.0f}s.")
        return 0 if ok else 1
    finally:
        if application is not None:
            with contextlib.suppress(Exception):
                delete_webhook_configuration(testbed.kube)
            application.stop()
        if sim is not None:
            sim.stop()
        postgres.stop()
        testbed.down()
        if work_dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
