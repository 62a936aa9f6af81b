"""The Helm chart (deploy/helm/kserve-canary), checked with helm v4 built from its Go module
(testbed/go/helm) and, for what the apiserver accepts, against the test bed's kube-apiserver.

What a platform team relies on: the values are checked (schema and cross-field rules with
clear messages), the pods follow the restricted Pod Security profile, the controller's
ServiceAccount gets exactly the calls canary/ makes, every KSC_ variable is a real setting,
and the webhook is the one `canary webhook render` makes. The objects applied to the test
bed's apiserver are stored, but nothing runs them (no kubelet, no controller-manager, no
cert-manager): the webhook configurations applied here are scoped to a label no namespace
carries, and every cluster-scoped object is deleted afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from canary.access import cluster_roles
from canary.admission import ADMISSION_PATH
from canary.api.operator import API_PREFIX
from canary.api.webhooks import GATE_PATH, SERVICENOW_PATH, WEBHOOK_PREFIX
from canary.audit.checkpoint import Checkpoint, CheckpointSigner, generate_private_key_pem
from canary.cli import main as canary_cli
from canary.k8s.client import (
    CONFIG_MAP,
    CRD,
    EVENT,
    HTTP_ROUTE,
    INFERENCE_SERVICE,
    LEASE,
    SERVICE_ACCOUNT,
    VIRTUAL_SERVICE,
    KubeClient,
    KubeError,
    NotFound,
    ResourceKind,
)
from canary.k8s.events import EventRecorder
from canary.policy import load_policies
from canary.routing.mirror import OWNED_SELECTOR
from canary.settings import Settings, load_settings
from canary.witness import ConfigMapWitness
from testbed.binaries import BuildError, Tool, cache_key, ensure_helm, helm_cache_key
from testbed.testbed import Testbed
from tests.pod_secrets import pod_secrets
from tests.unit.webhook_pems import CA_ONE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "kserve-canary"
RELEASE = "ksc"
NAMESPACE = "kserve-canary"
T_CHECKPOINT = datetime(2026, 11, 20, 2, 14, tzinfo=UTC)
FULLNAME = "ksc-kserve-canary"
COLLECTOR = f"{FULLNAME}-shadow-collector"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
SCOPE_LABEL = "test.kserve-canary.io/chart"

OWN_SECRET: dict[str, Any] = {
    "tls": {"source": "secret", "secret": {"name": "ksc-serving"}, "caBundle": CA_ONE.decode()},
}
HOOKS_HOST = "change-hooks.bank.example"
# The approval gates wired to Secrets by name, and both routes to the webhooks.
APPROVALS: dict[str, Any] = {
    **OWN_SECRET,
    "servicenow": {
        "url": "https://bank.service-now.com",
        "auth": "oauth-password",
        "api": "table",
        "existingSecret": "servicenow-credentials",
    },
    "approvals": {
        "pollSeconds": 30,
        "callbackSecretsSecret": "servicenow-callback",
        "webhookSecretsSecret": "change-system-webhook",
    },
    "webhookRoute": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": HOOKS_HOST,
            "tls": [{"secretName": "change-hooks-tls", "hosts": [HOOKS_HOST]}],
        },
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
            "hostnames": [HOOKS_HOST],
        },
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-monitored": {"serviceMonitor": {"enabled": True}, "watchNamespaces": ["team-a"]},
    "namespaced": {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
    "own-secret": {**OWN_SECRET, "serviceMonitor": {"enabled": True}},
    "own-issuer": {
        "tls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}
    },
    "url-secret": {"database": {"url": "postgresql+psycopg://canary:pw@db.example:5432/audit"}},
    "sqlite": {"database": {"type": "sqlite"}, "replicas": 1},
    "aggregated": {"rbac": {"aggregateToDefaultRoles": True}},
    "approvals": APPROVALS,
    "tuned": {
        "controller": {
            "kserveDefaultDeploymentMode": "Standard",
            "standardRouteParentRefs": [
                {"name": "gw", "namespace": "kserve", "sectionName": "http"}
            ],
            "standardRouteHostnames": ["models.example.com"],
            "kserveAnnotationDisallowed": ["kserve-canary.io/enabled"],
            "extraEnv": {"KSC_LOOK_PERIOD_SECONDS": "10", "KSC_RESYNC_SECONDS": 120},
            "prometheusBearerToken": {"secretName": "prom-token", "key": "token"},
        }
    },
    "shadow-istio": {
        "shadow": {
            "mirror": "istio",
            "istio": {
                "gateways": ["mesh", "istio-system/knative-ingress-gateway"],
                "hosts": ["scorer.fraud.models.example.com"],
            },
        },
        "clusterDomain": "corp.internal",
    },
    "shadow-gateway-api": {
        "shadow": {
            "mirror": "gateway-api",
            "route": {
                "parentRefs": [{"name": "kserve-ingress-gateway", "namespace": "kserve"}],
                "hostnames": ["scorer.fraud.models.example.com"],
            },
        },
    },
    "shadow-collector": {
        "shadow": {"mirror": "istio"},
        "shadowCollector": {
            "enabled": True,
            "decisionField": "label",
            "scoreField": "probability",
            "ttlSeconds": 12.5,
            "maxPending": 2_000_000,  # large integers must not print as 2e+06
            "maxBodyBytes": 4_194_304,
        },
        "serviceMonitor": {"enabled": True},
    },
}

# The controller's calls (canary/k8s, canary/routing, canary/controller.py, canary/engine.py,
# and the operator API's reviews), as (apiGroup, resource, verb).
WORKLOAD_GRANTS = {
    *{("serving.kserve.io", "inferenceservices", v) for v in ("get", "list", "watch", "patch")},
    # our Standard-mode route and our shadow mirror routes: server-side apply (create +
    # patch), the mirror cleanup's list by label, and delete
    *{
        ("gateway.networking.k8s.io", "httproutes", v)
        for v in ("get", "list", "create", "patch", "delete")
    },
    *{
        ("networking.istio.io", "virtualservices", v)
        for v in ("get", "list", "create", "patch", "delete")
    },
    ("", "events", "create"),
    ("", "events", "patch"),
}
REVIEW_GRANTS = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}
LEASE_GRANTS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
# The audit chain's checkpoints: the ConfigMap witness (get and update by name only) and the
# Event written on it for each checkpoint.
CHECKPOINT_GRANTS = {("", "configmaps", v) for v in ("create", "get", "update")} | {
    ("", "events", v) for v in ("create", "patch")
}
# The cluster's client CA (for operators' client certificates), through the Role every
# apiserver bootstraps for that in kube-system.
CLIENT_CA_READER = ("Role", "kube-system", "extension-apiserver-authentication-reader")
BUILTIN_ROLES: dict[tuple[str, str | None, str], dict[str, Any]] = {
    CLIENT_CA_READER: {
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "watch"],
                   "resourceNames": ["extension-apiserver-authentication"]}],
    },
}  # fmt: skip
CLIENT_CA_GRANTS = {("", "configmaps", v) for v in ("get", "list", "watch")}
# What a pod would read from each Secret, standing in for the Secrets' values (the database
# URL and the whsec_ lists must parse; any text will do for the other credentials).
WHSEC = "whsec_" + base64.b64encode(b"a stand-in key of 32 bytes......").decode()
SECRET_STAND_INS = {
    "KSC_DATABASE_URL": "postgresql+psycopg://u:p@db/audit",
    "KSC_SERVICENOW_CALLBACK_SECRETS": WHSEC,
    "KSC_APPROVAL_WEBHOOK_SECRETS": WHSEC,
}


# ---------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm() -> Tool:
    problem: str | None = None
    try:
        return ensure_helm()
    except BuildError as exc:
        problem = str(exc)
    pytest.fail(f"helm could not be built:\n{problem}", pytrace=False)


def run_helm(
    helm: Tool, command: str, values: dict[str, Any], tmp_path: Path, namespace: str = NAMESPACE
) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / f"values-{uuid.uuid4().hex[:8]}.yaml"
    # JSON is YAML whose strings are always quoted: a generated value such as "1e123456"
    # stays a string for helm's YAML parser (which would read it as a number).
    values_file.write_text(json.dumps(values))
    args = [str(helm.path), command]
    if command == "template":
        args.append(RELEASE)
    args += [str(CHART), "--namespace", namespace, "--values", str(values_file)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def render(
    helm: Tool, values: dict[str, Any], tmp_path: Path, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    result = run_helm(helm, "template", values, tmp_path, namespace)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r}"
    return found[0]


def of_kind(objects: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in kinds]


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in container["env"]}


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def controller_grants(objects: list[dict[str, Any]]) -> dict[str | None, set[tuple[str, str, str]]]:
    """What the controller's ServiceAccount is granted, by namespace (None: cluster-wide),
    following the chart's bindings to their roles."""
    roles: dict[tuple[str, str | None, str], dict[str, Any]] = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in of_kind(objects, "ClusterRole", "Role")
    }
    roles.update(BUILTIN_ROLES)
    granted: dict[str | None, set[tuple[str, str, str]]] = {}
    for binding in of_kind(objects, "ClusterRoleBinding", "RoleBinding"):
        subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding.get("subjects", [])}
        if ("ServiceAccount", NAMESPACE, FULLNAME) not in subjects:
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role_ns = None if ref["kind"] == "ClusterRole" else namespace
        role = roles[(ref["kind"], role_ns, ref["name"])]
        granted.setdefault(namespace, set()).update(grants(role["rules"]))
    return granted


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in of_kind(objects, "Deployment", "Job")
    ]


def settings_of(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container with this environment loads (a Secret's value stands in)."""
    fields = set(Settings.model_fields)
    for name in env:
        assert name.startswith("KSC_"), name
        assert name.removeprefix("KSC_").lower() in fields, f"{name} is not a setting"
    for name in [k for k in os.environ if k.startswith("KSC_")]:
        monkeypatch.delenv(name)
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            monkeypatch.setenv(name, SECRET_STAND_INS.get(name, "stand-in-credential"))
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            monkeypatch.setenv(name, "ksc-kserve-canary-7d9f-abcde")
    return load_settings()


def webhook_render(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(canary_cli, ["webhook", "render", "-o", "json", *args])
    assert result.exit_code == 0, result.output
    rendered: dict[str, Any] = json.loads(result.output)
    return rendered


# ---------------------------------------------------------------------- helm itself


def test_helm_is_the_pinned_version_and_a_second_build_only_checks_the_cache(
    helm: Tool, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = subprocess.run(
        [str(helm.path), "version", "--short"], capture_output=True, text=True, check=False
    )
    assert result.stdout.startswith("v4.3.2"), result.stdout + result.stderr

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ensure_helm ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setenv("PATH", "")
    began = time.monotonic()
    assert ensure_helm() == helm
    assert time.monotonic() - began < 1.0


def test_helm_and_the_control_plane_are_cached_independently(tmp_path: Path) -> None:
    copy = tmp_path / "go"
    shutil.copytree(REPO / "testbed" / "go", copy)
    control_plane = cache_key(copy)[0]
    before, version = helm_cache_key(copy)
    assert before.startswith("helm-v4.3.2-")
    assert version == "v4.3.2"
    # another helm: a new helm key, the same control-plane key (kube-apiserver not rebuilt)
    go_mod = copy / "helm" / "go.mod"
    go_mod.write_text(
        go_mod.read_text().replace("helm.sh/helm/v4 v4.3.2", "helm.sh/helm/v4 v4.3.3")
    )
    bumped = helm_cache_key(copy)[0]
    assert bumped.startswith("helm-v4.3.3-")
    assert cache_key(copy)[0] == control_plane
    # another etcd: a new control-plane key, the same helm key
    main_go = copy / "etcd" / "main.go"
    main_go.write_text(main_go.read_text() + "\n// changed\n")
    assert cache_key(copy)[0] != control_plane
    assert helm_cache_key(copy)[0] == bumped


# ---------------------------------------------------------------------- lint and values


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes(helm: Tool, variant: str, tmp_path: Path) -> None:
    result = run_helm(helm, "lint", VARIANTS[variant], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "funcMap fail" not in result.stderr  # no cross-field rule broken either


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    (
        "sqlite-two-replicas",
        {"database": {"type": "sqlite"}, "replicas": 2},
        "database.type sqlite keeps the audit database in a file on one volume, so it needs "
        "replicas: 1 (got replicas: 2)",
    ),
    (
        "secret-without-name",
        {"tls": {"source": "secret", "caBundle": CA_ONE.decode()}},
        "tls.source secret needs tls.secret.name",
    ),
    (
        "secret-without-ca",
        {"tls": {"source": "secret", "secret": {"name": "mine"}}},
        "tls.source secret needs tls.caBundle",
    ),
    (
        "ca-in-base64",
        {**OWN_SECRET, "tls": {**OWN_SECRET["tls"], "caBundle": base64.b64encode(CA_ONE).decode()}},
        "tls.caBundle must be the CA's PEM",
    ),
    (
        "no-database-url",
        {"database": {"existingSecret": {"name": ""}}},
        "database.type postgresql needs the database URL",
    ),
    (
        "app-role-without-owner-secret",
        {"migration": {"appRole": "ksc_app"}},
        "migration.appRole needs migration.ownerSecret.name",
    ),
    (
        "owner-secret-on-sqlite",
        {
            "database": {"type": "sqlite"},
            "replicas": 1,
            "migration": {"ownerSecret": {"name": "owner"}},
        },
        "migration.ownerSecret and migration.appRole are for database.type postgresql",
    ),
    (
        "namespaced-without-namespaces",
        {"rbac": {"scope": "namespaced"}},
        "rbac.scope namespaced needs watchNamespaces",
    ),
    (
        "webhook-sorted-before-kserve",
        {"webhook": {"configurationName": "aaa-canary"}},
        "must sort after KServe's inferenceservice.serving.kserve.io",
    ),
    (
        "servicenow-without-credentials",
        {"servicenow": {"url": "https://bank.service-now.com", "auth": "oauth-client-credentials"}},
        "servicenow.url needs servicenow.existingSecret: the name of a Secret in the release "
        "namespace with the keys clientId and clientSecret (servicenow.auth "
        "oauth-client-credentials)",
    ),
    (
        "ingress-without-host",
        {**APPROVALS, "webhookRoute": {"ingress": {"enabled": True}}},
        "webhookRoute.ingress.enabled needs webhookRoute.ingress.host",
    ),
    (
        "http-route-without-parents",
        {**APPROVALS, "webhookRoute": {"httpRoute": {"enabled": True}}},
        "webhookRoute.httpRoute.enabled needs webhookRoute.httpRoute.parentRefs",
    ),
    (
        "route-without-any-secret",
        {**APPROVALS, "approvals": {"callbackSecretsSecret": "", "webhookSecretsSecret": ""}},
        "webhookRoute exposes /webhooks/v1/, but no secret would verify a delivery",
    ),
    (
        "backend-tls-without-ca-under-cert-manager",
        {key: value for key, value in APPROVALS.items() if key != "tls"},
        "webhookRoute.httpRoute.backendTLSPolicy needs caConfigMap with tls.source cert-manager",
    ),
    (
        "collector-decision-and-score-from-one-field",
        {"shadowCollector": {"enabled": True, "scoreField": "decision"}},
        'shadowCollector.decisionField and shadowCollector.scoreField are both "decision"',
    ),
    (
        "collector-open-to-every-pod",
        {
            "shadowCollector": {
                "enabled": True,
                "allowFrom": [
                    {"namespaceSelector": {"matchLabels": {"team": "fraud"}}},
                    {"namespaceSelector": {}},
                ],
            }
        },
        "shadowCollector.allowFrom[1] admits every pod of every namespace",
    ),
    (
        "collector-scraped-by-every-pod",
        {
            "shadowCollector": {
                "enabled": True,
                "prometheusFrom": [{"namespaceSelector": {"matchLabels": {}}, "podSelector": {}}],
            }
        },
        "shadowCollector.prometheusFrom[0] admits every pod of every namespace",
    ),
]


@pytest.mark.parametrize(("values", "message"), [v[1:] for v in BAD_VALUES],
                         ids=[v[0] for v in BAD_VALUES])  # fmt: skip
def test_bad_values_fail_rendering_with_a_clear_message(
    helm: Tool, values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = run_helm(helm, "template", values, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


SCHEMA_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-key", {"replica": 2}, "additional properties 'replica' not allowed"),
    ("unknown-nested-key", {"tls": {"sorce": "secret"}}, "additional properties 'sorce'"),
    ("unknown-tls-source", {"tls": {"source": "vault"}}, "/tls/source"),
    (
        "not-a-setting",
        {"controller": {"extraEnv": {"KSC_NO_SUCH_SETTING": "1"}}},
        "invalid propertyName 'KSC_NO_SUCH_SETTING'",
    ),
    (
        "chart-managed-setting",
        {"controller": {"extraEnv": {"KSC_DATABASE_URL": "x"}}},
        "invalid propertyName 'KSC_DATABASE_URL'",
    ),
    ("replicas-zero", {"replicas": 0}, "/replicas"),
    # credentials and webhook secrets have no place in values: only Secrets' names do
    (
        "servicenow-password-in-values",
        {"servicenow": {"password": "hunter2"}},
        "additional properties 'password' not allowed",
    ),
    (
        "secret-setting-through-extra-env",
        {"controller": {"extraEnv": {"KSC_SERVICENOW_CALLBACK_SECRETS": "whsec_abc"}}},
        "invalid propertyName 'KSC_SERVICENOW_CALLBACK_SECRETS'",
    ),
    (
        "plain-http-servicenow",
        {"servicenow": {"url": "http://bank.service-now.com", "existingSecret": "sn"}},
        "/servicenow/url",
    ),
    ("poll-below-five-seconds", {"approvals": {"pollSeconds": 1}}, "/approvals/pollSeconds"),
    ("bad-log-level", {"controller": {"logLevel": "verbose"}}, "/controller/logLevel"),
    # the mirror settings: refused here rather than by a controller that will not start
    (
        "unknown-mirror",
        {"shadow": {"mirror": "linkerd"}},
        "at '/shadow/mirror': value must be one of 'none', 'istio', 'gateway-api'",
    ),
    ("no-istio-gateway", {"shadow": {"istio": {"gateways": []}}}, "/shadow/istio/gateways"),
    (
        "uppercase-istio-gateway",
        {"shadow": {"istio": {"gateways": ["Istio-System/gw"]}}},
        "'Istio-System/gw' does not match pattern",
    ),
    (
        "url-as-istio-host",
        {"shadow": {"istio": {"hosts": ["http://scorer.example.com"]}}},
        "/shadow/istio/hosts/0",
    ),
    (
        "parent-ref-without-name",
        {"shadow": {"route": {"parentRefs": [{"namespace": "kserve"}]}}},
        "at '/shadow/route/parentRefs/0': missing property 'name'",
    ),
    (
        "wildcard-in-the-middle-of-a-hostname",
        {"shadow": {"route": {"hostnames": ["models.*.example.com"]}}},
        "/shadow/route/hostnames/0",
    ),
    ("cluster-domain-with-a-dot", {"clusterDomain": "cluster.local."}, "/clusterDomain"),
    ("misspelt-mirror-key", {"shadow": {"mirrors": "istio"}}, "additional properties 'mirrors'"),
    # the collector: one replica, always; and never a NetworkPolicy rule that admits everyone
    (
        "collector-replicas",
        {"shadowCollector": {"enabled": True, "replicas": 2}},
        "at '/shadowCollector': additional properties 'replicas' not allowed",
    ),
    (
        "collector-without-loggers",
        {"shadowCollector": {"enabled": True, "allowFrom": []}},
        "at '/shadowCollector/allowFrom': minItems",
    ),
    (
        "collector-empty-peer",
        {"shadowCollector": {"allowFrom": [{}]}},
        "at '/shadowCollector/allowFrom/0': minProperties",
    ),
    (
        "collector-ip-block",
        {"shadowCollector": {"allowFrom": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}},
        "additional properties 'ipBlock' not allowed",
    ),
    (
        "collector-bad-selector-operator",
        {
            "shadowCollector": {
                "prometheusFrom": [
                    {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}}
                ]
            }
        },
        "/shadowCollector/prometheusFrom/0/podSelector/matchExpressions/0/operator",
    ),
    (
        "collector-body-limit-too-small",
        {"shadowCollector": {"maxBodyBytes": 100}},
        "/shadowCollector/maxBodyBytes",
    ),
]


@pytest.mark.parametrize(("values", "message"), [v[1:] for v in SCHEMA_ERRORS],
                         ids=[v[0] for v in SCHEMA_ERRORS])  # fmt: skip
def test_values_outside_the_schema_fail_lint_and_rendering(
    helm: Tool, values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    lint = run_helm(helm, "lint", values, tmp_path)
    assert lint.returncode != 0
    assert message in lint.stdout + lint.stderr
    template = run_helm(helm, "template", values, tmp_path)
    assert template.returncode != 0
    assert "values don't meet the specifications of the schema" in template.stderr
    assert message in template.stderr


def test_extra_env_accepts_only_settings_the_chart_does_not_set_itself(
    helm: Tool, tmp_path: Path
) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    extra = schema["properties"]["controller"]["properties"]["extraEnv"]["propertyNames"]["enum"]
    fields = {f"KSC_{name.upper()}" for name in Settings.model_fields}
    assert set(extra) <= fields
    deployment = only(render(helm, {}, tmp_path), "Deployment")
    assert not set(extra) & set(env_of(deployment))  # the chart never sets one twice
    secrets = {"KSC_DATABASE_URL", "KSC_SERVICENOW_PASSWORD", "KSC_WEBHOOK_SECRETS",
               "KSC_PROMETHEUS_BEARER_TOKEN"}  # fmt: skip
    assert not set(extra) & secrets


# ---------------------------------------------------------------------- the controller's pods


def test_two_replicas_with_probes_on_the_one_https_port(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, {}, tmp_path)
    deployment = only(objects, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = container["ports"]
    assert port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    assert env_of(deployment)["KSC_HTTP_PORT"]["value"] == "8443"
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz", "port": "https", "scheme": "HTTPS"
    }  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz", "port": "https", "scheme": "HTTPS"
    }  # fmt: skip
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert container["command"] == ["canary", "run"]
    assert "args" not in container
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    # replicas land on different nodes where they can
    spread = spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"
    }  # fmt: skip
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_follows_the_restricted_pod_security_profile(
    helm: Tool, variant: str, tmp_path: Path
) -> None:
    specs = pod_specs(render(helm, VARIANTS[variant], tmp_path))
    collector = {COLLECTOR} if variant == "shadow-collector" else set()
    assert {name for name, _ in specs} == {FULLNAME, f"{FULLNAME}-migrate", *collector}
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == 65532, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name
            tmp = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in tmp, name
        for volume in spec["volumes"]:
            assert "hostPath" not in volume, name


def test_the_pod_disruption_budget_keeps_one_replica(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, {}, tmp_path)
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    deployment = only(objects, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    single = render(helm, VARIANTS["sqlite"], tmp_path)
    assert not of_kind(single, "PodDisruptionBudget")  # with one replica it would block drains


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_ksc_variable_is_a_setting_and_the_controller_accepts_them(
    helm: Tool, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(helm, VARIANTS[variant], tmp_path)
    env = env_of(only(objects, "Deployment", FULLNAME))
    settings = settings_of(env, monkeypatch)
    assert settings.lease_namespace == NAMESPACE
    assert settings.http_port == 8443
    assert str(settings.tls_cert_file) == "/etc/kserve-canary/tls/tls.crt"
    assert str(settings.policy_path) == "/etc/kserve-canary/policies"
    assert settings.namespaces == tuple(VARIANTS[variant].get("watchNamespaces", ()))
    assert env["KSC_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    if variant == "tuned":
        assert settings.look_period_seconds == 10.0
        assert settings.resync_seconds == 120
        assert [r.as_ref() for r in settings.standard_route_parent_refs] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
             "namespace": "kserve", "sectionName": "http"}
        ]  # fmt: skip
        assert settings.standard_route_hostnames == ("models.example.com",)
        assert env["KSC_PROMETHEUS_BEARER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "prom-token", "key": "token"
        }  # fmt: skip
    if variant == "approvals":
        assert settings.servicenow_url == "https://bank.service-now.com"
        assert (settings.servicenow_auth, settings.servicenow_api) == ("oauth-password", "table")
        assert settings.approval_poll_seconds == 30.0
        assert [s.get_secret_value() for s in settings.servicenow_callback_secrets] == [WHSEC]
        assert [s.get_secret_value() for s in settings.approval_webhook_secrets] == [WHSEC]
    else:
        assert settings.servicenow_url is None
        assert settings.approval_poll_seconds == 60.0
    shadow = VARIANTS[variant].get("shadow", {})
    assert settings.shadow_mirror == shadow.get("mirror", "none")
    assert settings.cluster_domain == VARIANTS[variant].get("clusterDomain", "cluster.local")
    if variant == "shadow-istio":
        assert settings.shadow_istio_gateways == ("mesh", "istio-system/knative-ingress-gateway")
        assert settings.shadow_istio_hosts == ("scorer.fraud.models.example.com",)
    else:
        assert settings.shadow_istio_gateways == ("mesh",)
        assert settings.shadow_istio_hosts == ()
    if variant == "shadow-gateway-api":
        assert [r.as_ref() for r in settings.shadow_route_parent_refs] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway",
             "name": "kserve-ingress-gateway", "namespace": "kserve"}
        ]  # fmt: skip
        assert settings.shadow_route_hostnames == ("scorer.fraud.models.example.com",)
    else:
        assert settings.shadow_route_parent_refs == ()
        assert settings.shadow_route_hostnames == ()
    collectors = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == COLLECTOR]
    assert len(collectors) == (1 if variant == "shadow-collector" else 0)
    if collectors:
        collector = settings_of(env_of(collectors[0]), monkeypatch)
        assert collector.shadow_collector_port == 9400
        assert collector.shadow_collector_decision_field == "label"
        assert collector.shadow_collector_score_field == "probability"
        assert collector.shadow_collector_ttl_seconds == 12.5
        assert collector.shadow_collector_max_pending == 2_000_000
        assert collector.shadow_collector_max_body_bytes == 4_194_304


def test_the_mirror_values_are_the_controller_s_mirror_settings(
    helm: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mirror value at once, in the forms the settings read (comma-separated lists,
    JSON parentRefs): a GAMMA parentRef keeps its empty core group."""
    parent_refs = [
        {"group": "", "kind": "Service", "name": "scorer-predictor", "port": 80},
        {"name": "edge", "namespace": "gateways", "sectionName": "https"},
    ]
    values = {
        "shadow": {
            "mirror": "gateway-api",
            "istio": {"gateways": ["mesh", "istio-system/gw"], "hosts": ["a.example.com"]},
            "route": {
                "parentRefs": parent_refs,
                "hostnames": ["scorer.example.com", "*.models.example.com"],
            },
        },
        "clusterDomain": "corp.internal",
    }
    env = env_of(only(render(helm, values, tmp_path), "Deployment", FULLNAME))
    assert {name: env[name]["value"] for name in env if "SHADOW" in name or "DOMAIN" in name} == {
        "KSC_SHADOW_MIRROR": "gateway-api",
        "KSC_SHADOW_ISTIO_GATEWAYS": "mesh,istio-system/gw",
        "KSC_SHADOW_ISTIO_HOSTS": "a.example.com",
        "KSC_SHADOW_ROUTE_PARENT_REFS": json.dumps(
            parent_refs, separators=(",", ":"), sort_keys=True
        ),
        "KSC_SHADOW_ROUTE_HOSTNAMES": "scorer.example.com,*.models.example.com",
        "KSC_CLUSTER_DOMAIN": "corp.internal",
    }
    settings = settings_of(env, monkeypatch)
    assert settings.shadow_mirror == "gateway-api"
    assert settings.shadow_istio_gateways == ("mesh", "istio-system/gw")
    assert settings.shadow_istio_hosts == ("a.example.com",)
    assert [r.as_ref() for r in settings.shadow_route_parent_refs] == [
        {"group": "", "kind": "Service", "name": "scorer-predictor", "port": 80},
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge",
         "namespace": "gateways", "sectionName": "https"},
    ]  # fmt: skip
    assert settings.shadow_route_hostnames == ("scorer.example.com", "*.models.example.com")
    assert settings.cluster_domain == "corp.internal"


def test_tls_policies_and_database_are_mounted_where_the_settings_point(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, {}, tmp_path)
    deployment = only(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    env = env_of(deployment)
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    tls = volumes["tls"]["secret"]
    assert tls["secretName"] == f"{FULLNAME}-tls"
    for key in ("tls.crt", "tls.key"):
        assert {"key": key, "path": key} in tls["items"]
    assert env["KSC_TLS_CERT_FILE"]["value"] == f"{mounts['tls']}/tls.crt"
    assert env["KSC_TLS_KEY_FILE"]["value"] == f"{mounts['tls']}/tls.key"
    assert env["KSC_POLICY_PATH"]["value"] == mounts["policies"]
    assert volumes["policies"]["configMap"]["name"] == f"{FULLNAME}-policies"
    assert env["KSC_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "kserve-canary-database", "key": "database-url"
    }  # fmt: skip

    # The policies the chart ships are valid, and are the repository's default policy.
    config_map = only(objects, "ConfigMap", f"{FULLNAME}-policies")
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, text in config_map["data"].items():
        (folder / name).write_text(text)
    assert load_policies(folder).names() == ["default"]
    shipped = yaml.safe_load((REPO / "deploy" / "policies" / "default.yaml").read_text())
    assert yaml.safe_load(config_map["data"]["default.yaml"]) == shipped

    # An existing ConfigMap replaces the chart's own.
    theirs = render(helm, {"policies": {"existingConfigMap": "team-policies"}}, tmp_path)
    spec = only(theirs, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec["volumes"]}["policies"]["configMap"]["name"] == (
        "team-policies"
    )
    assert not [c for c in of_kind(theirs, "ConfigMap") if "policies" in c["metadata"]["name"]]


def test_the_signing_key_is_mounted_from_its_secret_where_the_settings_read_it(
    helm: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = only(render(helm, {}, tmp_path), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in spec["volumes"]}["audit-signing-key"]["secret"]
    assert volume["secretName"] == "kserve-canary-audit-signing-key"
    assert volume["items"] == [{"key": "key.pem", "path": "key.pem"}]
    assert volume["defaultMode"] == 0o400
    assert mounts["audit-signing-key"]["readOnly"] is True
    settings = settings_of(env_of(deployment), monkeypatch)
    assert str(settings.audit_signing_key_file) == (
        f"{mounts['audit-signing-key']['mountPath']}/key.pem"
    )
    assert settings.audit_witnesses == ("configmap", "log")
    assert settings.audit_checkpoint_configmap == "kserve-canary-audit-checkpoints"
    assert settings.audit_checkpoint_interval_seconds == 300.0
    assert settings.audit_log_name == "kserve-canary"

    tuned = {"audit": {"checkpoints": {
        "signingKeySecret": "hsm-backed", "signingKeyKey": "ed25519.pem", "intervalSeconds": 60,
        "logName": "prod-eu1", "witnesses": ["log"], "configMapName": "unused",
    }}}  # fmt: skip
    objects = render(helm, tuned, tmp_path)
    deployment = only(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in spec["volumes"]}["audit-signing-key"]["secret"]
    assert (volume["secretName"], volume["items"]) == (
        "hsm-backed",
        [{"key": "ed25519.pem", "path": "key.pem"}],
    )
    settings = settings_of(env_of(deployment), monkeypatch)
    assert (settings.audit_log_name, settings.audit_witnesses) == ("prod-eu1", ("log",))
    assert settings.audit_checkpoint_interval_seconds == 60.0
    # no ConfigMap witness: no grant for one
    assert controller_grants(objects)[NAMESPACE] == LEASE_GRANTS

    off = render(helm, {"audit": {"checkpoints": {"enabled": False}}}, tmp_path)
    deployment = only(off, "Deployment")
    assert "audit-signing-key" not in {
        v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]
    }
    assert not [k for k in env_of(deployment) if k.startswith("KSC_AUDIT_")]
    assert controller_grants(off)[NAMESPACE] == LEASE_GRANTS


def test_a_database_url_in_the_values_becomes_a_secret_the_pods_read(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["url-secret"], tmp_path)
    secret = only(objects, "Secret", f"{FULLNAME}-database")
    assert secret["stringData"] == {
        "database-url": "postgresql+psycopg://canary:pw@db.example:5432/audit"
    }
    # it must exist before the migration hook runs
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for _, spec in pod_specs(objects):
        (container,) = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["KSC_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-database"
        )


def test_the_migration_hook_runs_canary_db_upgrade_on_the_same_database(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, {}, tmp_path)
    job = only(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["canary", "db", "upgrade"]
    assert "args" not in container
    assert (
        container["image"]
        == only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    job_env = {e["name"]: e for e in container["env"]}
    assert job_env["KSC_DATABASE_URL"] == env_of(only(objects, "Deployment"))["KSC_DATABASE_URL"]


def test_with_an_owner_and_an_app_role_the_hook_migrates_as_the_owner_then_grants(
    helm: Tool, tmp_path: Path
) -> None:
    values = {
        "database": {"existingSecret": {"name": "app-db", "key": "url"}},
        "migration": {"ownerSecret": {"name": "owner-db"}, "appRole": "ksc_app"},
    }
    objects = render(helm, values, tmp_path)
    spec = only(objects, "Job")["spec"]["template"]["spec"]
    (migrate,) = spec["initContainers"]  # first the schema, as the tables' owner
    (grant,) = spec["containers"]  # then the controller's role is granted what it uses
    assert migrate["command"] == ["canary", "db", "upgrade"]
    assert grant["command"] == ["canary", "db", "grant", "--app-role", "ksc_app"]
    owner_url = {"secretKeyRef": {"name": "owner-db", "key": "database-url"}}
    for container in (migrate, grant):
        (url,) = container["env"]
        assert url == {"name": "KSC_DATABASE_URL", "valueFrom": owner_url}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    controller_url = env_of(only(objects, "Deployment"))["KSC_DATABASE_URL"]
    assert controller_url["valueFrom"] == {"secretKeyRef": {"name": "app-db", "key": "url"}}


def test_sqlite_lives_on_a_claim_made_before_the_hook_and_never_deleted_by_helm(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["sqlite"], tmp_path)
    claim = only(objects, "PersistentVolumeClaim")
    job = only(objects, "Job")
    annotations = claim["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert "pre-install" in annotations["helm.sh/hook"]
    assert int(annotations["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    # Without a delete policy Helm applies before-hook-creation: the claim would be deleted
    # (with the audit trail) before every upgrade.
    assert "before-hook-creation" not in annotations["helm.sh/hook-delete-policy"]
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for _, spec in pod_specs(objects):
        (container,) = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        path = env["KSC_DATABASE_URL"]["value"].removeprefix("sqlite:///")
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert Path(path).parent == Path(mounts["sqlite"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["sqlite"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


# ---------------------------------------------------------------------- services and TLS


def test_the_webhook_service_keeps_not_ready_replicas_and_the_api_service_does_not(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, {}, tmp_path)
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    webhook = only(objects, "Service", f"{FULLNAME}-webhook")
    api = only(objects, "Service", FULLNAME)
    assert webhook["spec"]["publishNotReadyAddresses"] is True
    assert not api["spec"].get("publishNotReadyAddresses")
    for service in (webhook, api):
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "https"
    assert webhook["spec"]["ports"][0]["port"] == 443
    assert api["spec"]["ports"][0]["port"] == 8443


def test_cert_manager_certificate_names_both_services(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, {}, tmp_path)
    serving = only(objects, "Certificate", f"{FULLNAME}-serving")
    assert serving["spec"]["secretName"] == f"{FULLNAME}-tls"
    for service in (f"{FULLNAME}-webhook", FULLNAME):
        assert f"{service}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    ca_issuer = only(objects, "Issuer", f"{FULLNAME}-ca")
    assert serving["spec"]["issuerRef"]["name"] == ca_issuer["metadata"]["name"]
    assert only(objects, "Certificate", f"{FULLNAME}-ca")["spec"]["isCA"] is True

    theirs = render(helm, VARIANTS["own-issuer"], tmp_path)
    assert not of_kind(theirs, "Issuer")
    assert only(theirs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"
    }  # fmt: skip

    own = render(helm, VARIANTS["own-secret"], tmp_path)
    assert not of_kind(own, "Certificate", "Issuer")
    spec = only(own, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec["volumes"]}["tls"]["secret"]["secretName"] == "ksc-serving"


def test_the_service_monitor_scrapes_metrics_over_https_with_the_serving_ca(
    helm: Tool, tmp_path: Path
) -> None:
    assert not of_kind(render(helm, {}, tmp_path), "ServiceMonitor")
    objects = render(helm, VARIANTS["cluster-monitored"], tmp_path)
    monitor = only(objects, "ServiceMonitor")
    api = only(objects, "Service", FULLNAME)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    webhook_labels = only(objects, "Service", f"{FULLNAME}-webhook")["metadata"]["labels"]
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= webhook_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == f"{FULLNAME}.{NAMESPACE}.svc"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": f"{FULLNAME}-tls", "key": "ca.crt"}}

    own = render(helm, VARIANTS["own-secret"], tmp_path)
    ca = only(own, "ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"]["ca"]["configMap"]
    assert only(own, "ConfigMap", ca["name"])["data"][ca["key"]].strip() == CA_ONE.decode().strip()


def test_the_notes_say_how_to_reach_the_api_and_verify(
    helm: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster"))  # a client dry run
    result = subprocess.run(
        [str(helm.path), "install", "kserve-canary", str(CHART), "--namespace", "ops",
         "--dry-run=client"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ops port-forward service/kserve-canary 8443:8443" in notes
    assert "kubectl -n ops rollout status deployment/kserve-canary" in notes
    assert "https://kserve-canary.ops.svc:8443/readyz" in notes
    assert "mutatingwebhookconfiguration kserve-canary" in notes


# ---------------------------------------------------------------------- the shadow collector


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector applied to labels, as Kubernetes does (empty: everything)."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def admits(
    policy: dict[str, Any], namespace: str, pod: dict[str, str], port: int, **ns_labels: str
) -> bool:
    """Whether a NetworkPolicy lets a pod (its labels) of `namespace` reach the pods it selects
    on TCP `port`. Rules without ports admit every port, rules without peers every source, as
    Kubernetes reads them."""
    labels = {"kubernetes.io/metadata.name": namespace, **ns_labels}
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports") or [{"protocol": "TCP"}]
        if not any(
            p.get("protocol", "TCP") == "TCP" and p.get("port", port) == port for p in ports
        ):
            continue
        peers = rule.get("from") or [{"namespaceSelector": {}}]
        for peer in peers:
            if "namespaceSelector" in peer:
                in_namespace = selects(peer["namespaceSelector"], labels)
            else:
                in_namespace = namespace == policy["metadata"]["namespace"]
            if in_namespace and selects(peer.get("podSelector"), pod):
                return True
    return False


PREDICTOR = {"component": "predictor", "serving.kserve.io/inferenceservice": "scorer"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}


def test_by_default_there_is_no_shadow_collector_and_no_mirroring(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, {}, tmp_path)
    assert not [o for o in objects if "shadow" in o["metadata"]["name"]]
    assert not of_kind(objects, "NetworkPolicy")
    assert env_of(only(objects, "Deployment", FULLNAME))["KSC_SHADOW_MIRROR"]["value"] == "none"


def test_the_collector_is_one_canary_shadow_collector_pod_without_credentials(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["shadow-collector"], tmp_path)
    collector = only(objects, "Deployment", COLLECTOR)
    controller = only(objects, "Deployment", FULLNAME)
    assert collector["spec"]["replicas"] == 1
    assert collector["spec"]["strategy"] == {"type": "Recreate"}  # never two pods at once
    spec = collector["spec"]["template"]["spec"]
    controller_spec = controller["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (controller_container,) = controller_spec["containers"]
    assert container["command"] == ["canary", "shadow-collector"]
    assert "args" not in container
    assert container["image"] == controller_container["image"]
    assert container["ports"] == [{"name": "http", "containerPort": 9400, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert spec["securityContext"] == controller_spec["securityContext"]
    assert container["securityContext"] == controller_container["securityContext"]
    # no Kubernetes credentials, no database, no secret of any kind
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    env = env_of(collector)
    assert all("value" in entry for entry in env.values())
    assert not [name for name in env if "DATABASE" in name or "PROMETHEUS" in name]
    # Its pod is its own: none of the controller's selectors takes it, and the collector's
    # selectors take nothing but it.
    pod = collector["spec"]["template"]["metadata"]["labels"]
    controller_pod = controller["spec"]["template"]["metadata"]["labels"]
    pdb = only(objects, "PodDisruptionBudget")
    for selector in (
        controller["spec"]["selector"],
        pdb["spec"]["selector"],
        {"matchLabels": only(objects, "Service", FULLNAME)["spec"]["selector"]},
        {"matchLabels": only(objects, "Service", f"{FULLNAME}-webhook")["spec"]["selector"]},
    ):
        assert selects(selector, controller_pod)
        assert not selects(selector, pod)
    for selector in (
        collector["spec"]["selector"],
        {"matchLabels": only(objects, "Service", COLLECTOR)["spec"]["selector"]},
        only(objects, "NetworkPolicy", COLLECTOR)["spec"]["podSelector"],
    ):
        assert selects(selector, pod)
        assert not selects(selector, controller_pod)


def test_the_collector_service_is_the_logger_url_s_port_9400(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, VARIANTS["shadow-collector"], tmp_path)
    service = only(objects, "Service", COLLECTOR)
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["protocol"]) == (9400, "http", "TCP")
    # a long release name still gives a Service name that is a DNS label
    long_name = "a" * 48
    objects = render(
        helm, {**VARIANTS["shadow-collector"], "fullnameOverride": long_name}, tmp_path
    )
    names = {o["metadata"]["name"] for o in objects if "shadow" in o["metadata"]["name"]}
    (name,) = names
    assert len(name) <= 63
    assert name.endswith("-shadow-collector")
    assert {o["kind"] for o in objects if o["metadata"]["name"] == name} == {
        "Deployment", "Service", "NetworkPolicy", "ServiceMonitor"
    }  # fmt: skip


def test_the_network_policy_admits_the_predictors_loggers_and_prometheus_only(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["shadow-collector"], tmp_path)
    policy = only(objects, "NetworkPolicy", COLLECTOR)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    controller_pod = only(objects, "Deployment", FULLNAME)["spec"]["template"]["metadata"]
    # KServe's predictor pods in any namespace, and Prometheus, on the collector's port
    assert admits(policy, "fraud", PREDICTOR, 9400)
    assert admits(policy, "retail", PREDICTOR, 9400)
    assert admits(policy, "monitoring", PROMETHEUS, 9400)
    # and nothing else: other pods, the controller itself, other ports
    assert not admits(policy, "fraud", {"app": "curl"}, 9400)
    assert not admits(policy, "fraud", {"component": "transformer"}, 9400)
    assert not admits(policy, NAMESPACE, {}, 9400)
    assert not admits(policy, NAMESPACE, controller_pod["labels"], 9400)
    assert not admits(policy, "fraud", PREDICTOR, 8080)
    for rule in policy["spec"]["ingress"]:
        assert rule["from"]  # a rule without peers would admit every source
        assert rule["ports"] == [{"protocol": "TCP", "port": 9400}]

    # narrowed to the teams whose models are compared, and scraped by one Prometheus
    values = {
        "shadowCollector": {
            "enabled": True,
            "allowFrom": [
                {
                    "namespaceSelector": {"matchLabels": {"team": "fraud"}},
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "component", "operator": "In", "values": ["predictor"]}
                        ]
                    },
                }
            ],
            "prometheusFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    },
                    "podSelector": {"matchLabels": {"prometheus": "k8s"}},
                }
            ],
        }
    }
    policy = only(render(helm, values, tmp_path), "NetworkPolicy", COLLECTOR)
    assert [rule["from"] for rule in policy["spec"]["ingress"]] == [
        values["shadowCollector"]["allowFrom"], values["shadowCollector"]["prometheusFrom"]
    ]  # fmt: skip
    assert admits(policy, "fraud-prod", PREDICTOR, 9400, team="fraud")
    assert not admits(policy, "retail", PREDICTOR, 9400, team="retail")
    assert admits(policy, "monitoring", PROMETHEUS, 9400)
    assert not admits(policy, "team-metrics", PROMETHEUS, 9400)

    # no Prometheus peers: no scraping rule at all (never one without peers)
    values["shadowCollector"]["prometheusFrom"] = []
    policy = only(render(helm, values, tmp_path), "NetworkPolicy", COLLECTOR)
    assert len(policy["spec"]["ingress"]) == 1
    assert not admits(policy, "monitoring", PROMETHEUS, 9400)
    assert admits(policy, "fraud-prod", PREDICTOR, 9400, team="fraud")


def test_the_collector_is_scraped_over_http_with_its_own_namespace_label_kept(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["shadow-collector"], tmp_path)
    monitor = only(objects, "ServiceMonitor", COLLECTOR)
    collector_service = only(objects, "Service", COLLECTOR)["metadata"]["labels"]
    api_service = only(objects, "Service", FULLNAME)["metadata"]["labels"]
    assert selects(monitor["spec"]["selector"], collector_service)
    assert not selects(monitor["spec"]["selector"], api_service)
    assert not selects(only(objects, "ServiceMonitor", FULLNAME)["spec"]["selector"],
                       collector_service)  # fmt: skip
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("http", "/metrics", "http")
    # the series' own `namespace` (the InferenceServices') wins over the target's
    assert endpoint["honorLabels"] is True
    # without serviceMonitor.enabled, no monitor for either
    unmonitored = {**VARIANTS["shadow-collector"], "serviceMonitor": {"enabled": False}}
    assert not of_kind(render(helm, unmonitored, tmp_path), "ServiceMonitor")


def test_the_notes_give_the_logger_url_of_the_collector(
    helm: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster"))  # a client dry run
    result = subprocess.run(
        [str(helm.path), "install", "kserve-canary", str(CHART), "--namespace", "ops",
         "--dry-run=client", "--set", "shadowCollector.enabled=true",
         "--set", "clusterDomain=corp.internal"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "url: http://kserve-canary-shadow-collector.ops.svc.corp.internal:9400/" in notes
    assert "mode: response" in notes
    assert "shadow.mirror is none: shadow phases are refused" in notes


# ---------------------------------------------------------------------- approvals


SERVICENOW_CREDENTIALS = {
    "basic": {"KSC_SERVICENOW_USER": "user", "KSC_SERVICENOW_PASSWORD": "password"},
    "oauth-password": {
        "KSC_SERVICENOW_USER": "user",
        "KSC_SERVICENOW_PASSWORD": "password",
        "KSC_SERVICENOW_CLIENT_ID": "clientId",
        "KSC_SERVICENOW_CLIENT_SECRET": "clientSecret",
    },
    "oauth-client-credentials": {
        "KSC_SERVICENOW_CLIENT_ID": "clientId",
        "KSC_SERVICENOW_CLIENT_SECRET": "clientSecret",
    },
}


@pytest.mark.parametrize("auth", sorted(SERVICENOW_CREDENTIALS))
def test_approval_settings_read_credentials_and_secrets_from_secrets_named_in_the_values(
    helm: Tool, auth: str, tmp_path: Path
) -> None:
    values = {**APPROVALS, "servicenow": {**APPROVALS["servicenow"], "auth": auth}}
    env = env_of(only(render(helm, values, tmp_path), "Deployment"))
    assert env["KSC_SERVICENOW_URL"]["value"] == "https://bank.service-now.com"
    assert env["KSC_SERVICENOW_AUTH"]["value"] == auth
    assert env["KSC_SERVICENOW_API"]["value"] == "table"
    assert env["KSC_APPROVAL_POLL_SECONDS"]["value"] == "30"
    credentials = {n: e for n, e in env.items() if n in SERVICENOW_CREDENTIALS["oauth-password"]}
    assert {n: e["valueFrom"]["secretKeyRef"] for n, e in credentials.items()} == {
        name: {"name": "servicenow-credentials", "key": key}
        for name, key in SERVICENOW_CREDENTIALS[auth].items()
    }
    assert env["KSC_SERVICENOW_CALLBACK_SECRETS"]["valueFrom"]["secretKeyRef"] == {
        "name": "servicenow-callback", "key": "secrets"
    }  # fmt: skip
    assert env["KSC_APPROVAL_WEBHOOK_SECRETS"]["valueFrom"]["secretKeyRef"] == {
        "name": "change-system-webhook", "key": "secrets"
    }  # fmt: skip


def test_without_servicenow_values_no_servicenow_variable_is_set(
    helm: Tool, tmp_path: Path
) -> None:
    env = env_of(only(render(helm, {}, tmp_path), "Deployment"))
    assert not [name for name in env if "SERVICENOW" in name or "WEBHOOK_SECRETS" in name]
    assert env["KSC_APPROVAL_POLL_SECONDS"]["value"] == "60"


def test_no_secret_value_is_rendered_only_references_to_secrets(helm: Tool, tmp_path: Path) -> None:
    """Every setting that holds a secret (a SecretStr in Settings) reaches the pod through a
    secretKeyRef; the chart makes no Secret of its own for them, and no whsec_ value or
    credential appears anywhere in the rendered manifests."""
    result = run_helm(helm, "template", APPROVALS, tmp_path)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    secret_settings = {
        f"KSC_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    for _, spec in pod_specs(objects):
        (container,) = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        present = secret_settings & set(env)
        for name in present:
            assert "value" not in env[name], name
            assert set(env[name]["valueFrom"]) == {"secretKeyRef"}, name
    deployment_env = env_of(only(objects, "Deployment"))
    assert {
        "KSC_DATABASE_URL", "KSC_SERVICENOW_PASSWORD", "KSC_SERVICENOW_CLIENT_SECRET",
        "KSC_SERVICENOW_CALLBACK_SECRETS", "KSC_APPROVAL_WEBHOOK_SECRETS",
    } <= secret_settings & set(deployment_env)  # fmt: skip
    assert not of_kind(objects, "Secret")
    assert "whsec_" not in result.stdout
    assert "stringData" not in result.stdout


def _prefix_matches(prefix: str, path: str) -> bool:
    """Kubernetes Ingress ``Prefix`` and Gateway API ``PathPrefix`` matching: element by
    element, a trailing slash of the prefix ignored (/webhooks/v1/ matches /webhooks/v1/x,
    not /webhooks/v10)."""
    wanted = [p for p in prefix.split("/") if p]
    return path.split("/")[1 : len(wanted) + 1] == wanted


# Every other path the controller serves on its HTTPS port (canary/api/).
INSIDE_ONLY = (
    f"{API_PREFIX}/rollouts",
    f"{API_PREFIX}/namespaces/fraud/rollouts/scorer/promote",
    "/metrics",
    "/healthz",
    "/readyz",
    ADMISSION_PATH,
)
WEBHOOKS = (f"{WEBHOOK_PREFIX}{SERVICENOW_PATH}", f"{WEBHOOK_PREFIX}{GATE_PATH}")


def test_the_webhook_routes_expose_only_the_approval_webhooks(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, APPROVALS, tmp_path)
    api = only(objects, "Service", FULLNAME)
    (api_port,) = api["spec"]["ports"]

    ingress = only(objects, "Ingress", f"{FULLNAME}-webhooks")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "change-hooks-tls", "hosts": [HOOKS_HOST]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == HOOKS_HOST
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/webhooks/v1/", "Prefix")
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": api_port["name"]}}
    # the controller speaks HTTPS only: ingress-nginx is told so by default
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"

    route = only(objects, "HTTPRoute", f"{FULLNAME}-webhooks")
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateways", "sectionName": "https"}
    ]
    assert route["spec"]["hostnames"] == [HOOKS_HOST]
    (route_rule,) = route["spec"]["rules"]
    (match,) = route_rule["matches"]
    assert match == {"path": {"type": "PathPrefix", "value": "/webhooks/v1/"}}
    assert route_rule["backendRefs"] == [{"name": FULLNAME, "port": api_port["port"]}]

    for prefix in (path["path"], match["path"]["value"]):
        assert [p for p in WEBHOOKS if _prefix_matches(prefix, p)] == list(WEBHOOKS)
        assert not [p for p in INSIDE_ONLY if _prefix_matches(prefix, p)]
        assert not _prefix_matches(prefix, "/webhooks/v10/servicenow")


def test_the_gateway_speaks_tls_to_the_controller_and_verifies_it_with_the_serving_ca(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, APPROVALS, tmp_path)
    policy = only(objects, "BackendTLSPolicy", f"{FULLNAME}-webhooks")
    assert policy["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": FULLNAME, "sectionName": "https"}
    ]
    validation = policy["spec"]["validation"]
    assert validation["hostname"] == f"{FULLNAME}.{NAMESPACE}.svc"
    (ca_ref,) = validation["caCertificateRefs"]
    assert (ca_ref["group"], ca_ref["kind"]) == ("", "ConfigMap")
    ca = only(objects, "ConfigMap", ca_ref["name"])
    assert ca["data"]["ca.crt"].strip() == CA_ONE.decode().strip()
    # the serving certificate cert-manager issues is for that very name
    issued = only(render(helm, {}, tmp_path), "Certificate", f"{FULLNAME}-serving")
    assert validation["hostname"] in issued["spec"]["dnsNames"]

    # with cert-manager, a ConfigMap of the serving CA named in the values (none is made)
    theirs = {key: value for key, value in APPROVALS.items() if key != "tls"}
    theirs["webhookRoute"] = {
        **APPROVALS["webhookRoute"],
        "httpRoute": {**APPROVALS["webhookRoute"]["httpRoute"],
                      "backendTLSPolicy": {"caConfigMap": "serving-ca-bundle"}},
    }  # fmt: skip
    objects = render(helm, theirs, tmp_path)
    policy = only(objects, "BackendTLSPolicy")
    assert policy["spec"]["validation"]["caCertificateRefs"][0]["name"] == "serving-ca-bundle"
    assert not [c for c in of_kind(objects, "ConfigMap") if "serving-ca" in c["metadata"]["name"]]

    # a Gateway told about backend TLS its own way: no policy
    theirs["webhookRoute"]["httpRoute"]["backendTLSPolicy"] = {"enabled": False}
    assert not of_kind(render(helm, theirs, tmp_path), "BackendTLSPolicy")


def test_by_default_nothing_routes_to_the_webhooks(helm: Tool, tmp_path: Path) -> None:
    for variant in ("default", "own-secret"):
        objects = render(helm, VARIANTS[variant], tmp_path)
        assert not of_kind(objects, "Ingress", "HTTPRoute", "BackendTLSPolicy"), variant
    # the approval settings alone open no route either
    values = {key: value for key, value in APPROVALS.items() if key != "webhookRoute"}
    assert not of_kind(render(helm, values, tmp_path), "Ingress", "HTTPRoute", "BackendTLSPolicy")


# ---------------------------------------------------------------------- RBAC


def test_the_controller_is_granted_exactly_the_calls_it_makes(helm: Tool, tmp_path: Path) -> None:
    granted = controller_grants(render(helm, {}, tmp_path))
    assert granted == {
        None: WORKLOAD_GRANTS | REVIEW_GRANTS,
        NAMESPACE: LEASE_GRANTS | CHECKPOINT_GRANTS,
        "kube-system": CLIENT_CA_GRANTS,
    }


def test_the_namespaced_variant_grants_workloads_only_in_the_watched_namespaces(
    helm: Tool, tmp_path: Path
) -> None:
    objects = render(helm, VARIANTS["namespaced"], tmp_path)
    granted = controller_grants(objects)
    assert granted == {
        None: REVIEW_GRANTS,
        "team-a": WORKLOAD_GRANTS,
        "team-b": WORKLOAD_GRANTS,
        NAMESPACE: LEASE_GRANTS | CHECKPOINT_GRANTS,
        "kube-system": CLIENT_CA_GRANTS,
    }
    for role in of_kind(objects, "ClusterRole"):
        resources = {r for _, r, _ in grants(role["rules"])}
        assert not resources & {"inferenceservices", "httproutes", "virtualservices", "events"}, (
            role
        )
    assert env_of(only(objects, "Deployment"))["KSC_NAMESPACES"]["value"] == "team-a,team-b"


@pytest.mark.parametrize("aggregate", [False, True])
def test_the_operator_viewer_and_risk_owner_roles_of_the_api_contract(
    helm: Tool, aggregate: bool, tmp_path: Path
) -> None:
    objects = render(helm, {"rbac": {"aggregateToDefaultRoles": aggregate}}, tmp_path)
    viewer = only(objects, "ClusterRole", "kserve-canary-viewer")
    operator = only(objects, "ClusterRole", "kserve-canary-operator")
    risk_owner = only(objects, "ClusterRole", "kserve-canary-risk-owner")
    reads = {("kserve-canary.io", "rollouts", "get"), ("kserve-canary.io", "rollouts", "list")}
    assert grants(viewer["rules"]) == reads
    commands = {
        ("kserve-canary.io", f"rollouts/{c}", "create")
        for c in ("pause", "resume", "promote", "abort", "start")
    }
    assert grants(operator["rules"]) == reads | commands
    # segregation of duties: only the risk owner may approve, and may not drive the rollout
    assert grants(risk_owner["rules"]) == reads | {("kserve-canary.io", "rollouts", "approve")}
    # the very grants the controller checks (canary.access), so chart and code cannot drift
    product = {role["metadata"]["name"]: grants(role["rules"]) for role in cluster_roles()}
    assert product == {
        "kserve-canary-operator": grants(operator["rules"]),
        "kserve-canary-viewer": grants(viewer["rules"]),
        "kserve-canary-risk-owner": grants(risk_owner["rules"]),
    }
    aggregation = {k for k in operator["metadata"]["labels"] if k.startswith("rbac.")}
    assert bool(aggregation) is aggregate
    # a namespace editor or admin never becomes an approver by aggregation
    assert not [k for k in risk_owner["metadata"]["labels"] if k.startswith("rbac.")]
    if aggregate:
        assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == (
            "true"
        )
        assert "rbac.authorization.k8s.io/aggregate-to-view" not in operator["metadata"]["labels"]
        assert operator["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == (
            "true"
        )


# ---------------------------------------------------------------------- the webhook


COMPARED = (
    "name", "rules", "namespaceSelector", "objectSelector", "matchConditions", "failurePolicy",
    "sideEffects", "timeoutSeconds", "admissionReviewVersions", "matchPolicy",
    "reinvocationPolicy",
)  # fmt: skip


def test_the_webhook_is_the_one_canary_webhook_render_makes(helm: Tool, tmp_path: Path) -> None:
    objects = render(helm, {}, tmp_path)
    (chart,) = only(objects, "MutatingWebhookConfiguration")["webhooks"]
    cli = webhook_render(
        "--service-namespace", NAMESPACE, "--service-name", f"{FULLNAME}-webhook",
        "--cert-manager-certificate", f"{NAMESPACE}/{FULLNAME}-serving",
    )  # fmt: skip
    (expected,) = cli["webhooks"]
    for field in COMPARED:
        assert chart.get(field) == expected.get(field), field
    assert chart["clientConfig"] == expected["clientConfig"]
    configuration = only(objects, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == cli["metadata"]["name"]
    assert configuration["metadata"]["annotations"] == cli["metadata"]["annotations"]
    # the cert-manager form: the Certificate it names is the chart's serving certificate
    serving = only(objects, "Certificate", f"{FULLNAME}-serving")
    assert cli["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{serving['metadata']['namespace']}/{serving['metadata']['name']}"
    )


def test_the_webhook_with_a_given_ca_and_namespace_selector(helm: Tool, tmp_path: Path) -> None:
    values = {
        **OWN_SECRET,
        "webhook": {"namespaceSelector": {"matchLabels": {"canary": "on"}}, "timeoutSeconds": 7},
    }
    configuration = only(render(helm, values, tmp_path), "MutatingWebhookConfiguration")
    (chart,) = configuration["webhooks"]
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(CA_ONE)
    cli = webhook_render(
        "--service-namespace", NAMESPACE, "--service-name", f"{FULLNAME}-webhook",
        "--ca-file", str(ca_file), "--namespace-selector", "canary=on", "--timeout-seconds", "7",
    )  # fmt: skip
    (expected,) = cli["webhooks"]
    for field in COMPARED:
        assert chart.get(field) == expected.get(field), field
    assert chart["clientConfig"] == expected["clientConfig"]
    assert base64.b64decode(chart["clientConfig"]["caBundle"]) == CA_ONE
    assert "annotations" not in configuration["metadata"]


# ---------------------------------------------------------------------- on the apiserver


_KINDS: dict[str, ResourceKind] = {
    kind.kind: kind
    for kind in (
        SERVICE_ACCOUNT,
        CONFIG_MAP,
        ResourceKind("", "v1", "secrets", "Secret"),
        ResourceKind("", "v1", "services", "Service"),
        ResourceKind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
        ResourceKind("apps", "v1", "deployments", "Deployment"),
        ResourceKind("batch", "v1", "jobs", "Job"),
        ResourceKind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
        ResourceKind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        ResourceKind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        ResourceKind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                     namespaced=False),
        ResourceKind("rbac.authorization.k8s.io", "v1", "clusterrolebindings",
                     "ClusterRoleBinding", namespaced=False),
        ResourceKind("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                     "MutatingWebhookConfiguration", namespaced=False),
        ResourceKind("cert-manager.io", "v1", "certificates", "Certificate"),
        ResourceKind("cert-manager.io", "v1", "issuers", "Issuer"),
        ResourceKind("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
        ResourceKind("networking.k8s.io", "v1", "ingresses", "Ingress"),
        ResourceKind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
        HTTP_ROUTE,
        ResourceKind("gateway.networking.k8s.io", "v1", "backendtlspolicies", "BackendTLSPolicy"),
    )
}  # fmt: skip
_CHART_CRDS = (
    "cert-manager.io_certificates.yaml",
    "cert-manager.io_issuers.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "gateway.networking.k8s.io_backendtlspolicies.yaml",
)


@pytest.fixture(scope="module")
def chart_crds(testbed: Testbed) -> None:
    """cert-manager's and the Prometheus Operator's CRDs, fetched by testbed/crds.py."""
    assert testbed.crd_dir is not None
    names = []
    for file_name in _CHART_CRDS:
        document = yaml.safe_load((testbed.crd_dir / file_name).read_text())
        testbed.kube.apply(CRD, None, document, field_manager="chart-test", force=True)
        names.append(document["metadata"]["name"])
    for name in names:
        wait_until(lambda name=name: testbed.kube.crd_established(name), f"CRD {name}")


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def applied(kube: KubeClient, objects: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Server-side apply every object (no dry run); delete the cluster-scoped ones after."""
    stored: list[dict[str, Any]] = []
    try:
        for body in objects:
            kind = _KINDS[body["kind"]]
            namespace = body["metadata"].get("namespace") if kind.namespaced else None
            stored.append(kube.apply(kind, namespace, body, field_manager="helm", force=True))
        yield stored
    finally:
        for body in objects:
            kind = _KINDS[body["kind"]]
            if not kind.namespaced:
                with contextlib.suppress(NotFound):
                    kube.delete(kind, None, body["metadata"]["name"])


def scoped(values: dict[str, Any], token: str) -> dict[str, Any]:
    """The values with a webhook that no namespace reaches and a name unique to the test."""
    return {
        **values,
        "webhook": {
            "configurationName": f"kserve-canary-chart-{token}",
            "namespaceSelector": {"matchLabels": {SCOPE_LABEL: token}},
        },
    }


@pytest.mark.parametrize("token", ["8e123456", "12345678", "0x1f", "true", "null"])
def test_a_generated_value_that_reads_as_a_number_stays_a_string(
    helm: Tool, token: str, tmp_path: Path
) -> None:
    """Values reach helm as text; a random label like 8e123456 must not become a float."""
    objects = render(helm, scoped({}, token), tmp_path)
    (webhook,) = only(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"]["matchLabels"] == {SCOPE_LABEL: token}


@pytest.mark.parametrize(
    "variant",
    ["default", "cluster-monitored", "own-secret", "namespaced", "sqlite", "approvals",
     "shadow-collector"],
)  # fmt: skip
def test_the_rendered_chart_is_accepted_by_the_apiserver(
    testbed: Testbed, chart_crds: None, helm: Tool, variant: str, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex[:8]
    namespace = testbed.namespace(f"chart-{variant}-{token}")
    values = scoped(VARIANTS[variant], token)
    if "watchNamespaces" in values:
        values["watchNamespaces"] = [
            testbed.namespace(f"{n}-{token}") for n in values["watchNamespaces"]
        ]
    objects = render(helm, values, tmp_path, namespace)
    if variant == "namespaced":
        assert {o["metadata"].get("namespace") for o in of_kind(objects, "Role")} == {
            namespace, *values["watchNamespaces"]
        }  # fmt: skip
    with applied(testbed.kube, objects) as stored:
        assert len(stored) == len(objects)
        for body, answer in zip(objects, stored, strict=True):
            assert answer["kind"] == body["kind"]
            assert answer["metadata"]["name"] == body["metadata"]["name"]
            assert answer["metadata"]["uid"]
        deployment = next(
            s for s in stored if s["kind"] == "Deployment" and s["metadata"]["name"] == FULLNAME
        )
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        webhook = next(s for s in stored if s["kind"] == "MutatingWebhookConfiguration")
        rendered = only(objects, "MutatingWebhookConfiguration")
        assert (
            webhook["webhooks"][0]["matchConditions"] == rendered["webhooks"][0]["matchConditions"]
        )  # the apiserver kept them (a server without the feature drops them silently)


def _service_account_client(
    testbed: Testbed, namespace: str, account: str, folder: Path
) -> KubeClient:
    secrets = pod_secrets(testbed, namespace, account, folder)
    return KubeClient.in_cluster(secrets.server, token_file=secrets.token, ca_file=secrets.ca,
                                 timeout=10.0, agent="kserve-canary/chart-test")  # fmt: skip


def _forbidden(call: Any) -> bool:
    try:
        call()
    except KubeError as exc:
        return exc.status == 403
    return False


def test_the_controller_s_service_account_can_make_its_calls_and_no_others(
    testbed: Testbed, chart_crds: None, helm: Tool, tmp_path: Path
) -> None:
    """The namespaced variant on the apiserver, as the controller's ServiceAccount: what
    the code calls is allowed in the watched namespace, and the rest is refused."""
    token = uuid.uuid4().hex[:8]
    namespace = testbed.namespace(f"chart-rbac-{token}")
    watched = testbed.namespace(f"chart-watched-{token}")
    other = testbed.namespace(f"chart-other-{token}")
    values = scoped({"rbac": {"scope": "namespaced"}, "watchNamespaces": [watched]}, token)
    objects = render(helm, values, tmp_path, namespace)
    account = only(objects, "ServiceAccount")["metadata"]["name"]
    with (
        applied(testbed.kube, objects),
        _service_account_client(testbed, namespace, account, tmp_path / "serviceaccount") as kube,
    ):
        assert kube.authenticated_user() == f"system:serviceaccount:{namespace}:{account}"
        assert kube.client_ca_bundle()  # the cluster's client CA, for operators' certificates
        # what the controller does in a watched namespace
        kube.list(INFERENCE_SERVICE, watched)
        route = {
            "apiVersion": HTTP_ROUTE.api_version, "kind": HTTP_ROUTE.kind,
            "metadata": {"name": "r", "namespace": watched}, "spec": {},
        }  # fmt: skip
        kube.apply(HTTP_ROUTE, watched, route, field_manager="kserve-canary", force=True)
        kube.apply(HTTP_ROUTE, watched, route, field_manager="kserve-canary", force=True)
        kube.get(HTTP_ROUTE, watched, "r")
        kube.list(HTTP_ROUTE, watched, label_selector=OWNED_SELECTOR)
        # the Istio shadow mirror: written, read, listed by label and removed
        virtual_service = {
            "apiVersion": VIRTUAL_SERVICE.api_version, "kind": VIRTUAL_SERVICE.kind,
            "metadata": {"name": "v", "namespace": watched}, "spec": {"hosts": ["v"]},
        }  # fmt: skip
        for _ in range(2):  # the first apply creates, the second patches
            kube.apply(VIRTUAL_SERVICE, watched, virtual_service, field_manager="kserve-canary",
                       force=True)  # fmt: skip
        kube.get(VIRTUAL_SERVICE, watched, "v")
        kube.list(VIRTUAL_SERVICE, watched, label_selector=OWNED_SELECTOR)
        assert _forbidden(lambda: kube.list(VIRTUAL_SERVICE, other))
        stored = kube.get(VIRTUAL_SERVICE, watched, "v")
        assert _forbidden(lambda: kube.replace(VIRTUAL_SERVICE, watched, "v", stored))
        kube.delete(VIRTUAL_SERVICE, watched, "v")
        kube.create(EVENT, watched, {
            "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "c-"},
            "involvedObject": {"kind": "InferenceService", "namespace": watched, "name": "m"},
            "reason": "Test", "message": "chart test", "type": "Normal",
        })  # fmt: skip
        # leader election in its own namespace
        lease = {
            "apiVersion": LEASE.api_version, "kind": LEASE.kind,
            "metadata": {"name": "kserve-canary-leader"}, "spec": {"holderIdentity": "x"},
        }  # fmt: skip
        created = kube.create(LEASE, namespace, lease)
        kube.replace(LEASE, namespace, "kserve-canary-leader", created)
        kube.get(LEASE, namespace, "kserve-canary-leader")
        # the audit chain's checkpoints: the ConfigMap witness (created, then replaced) and
        # its Events, in its own namespace; another ConfigMap there stays out of reach
        signer = CheckpointSigner.from_pem(generate_private_key_pem())
        witness = ConfigMapWitness(
            kube, namespace=namespace, name="kserve-canary-audit-checkpoints",
            events=EventRecorder(kube, instance="chart-test"),
        )  # fmt: skip
        for seq in (1, 2):
            witness.publish(signer.sign(Checkpoint("kserve-canary", seq, "a" * 64, T_CHECKPOINT)))
        assert [c.seq for c in witness.read()] == [1, 2]
        other_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
        testbed.kube.create(CONFIG_MAP, namespace, other_map)
        assert _forbidden(lambda: kube.get(CONFIG_MAP, namespace, "x"))
        # and nothing else
        assert _forbidden(lambda: kube.list(INFERENCE_SERVICE, other))
        assert _forbidden(lambda: kube.list(INFERENCE_SERVICE, None))
        assert _forbidden(lambda: kube.delete(INFERENCE_SERVICE, watched, "m"))
        assert _forbidden(
            lambda: kube.replace(HTTP_ROUTE, watched, "r", kube.get(HTTP_ROUTE, watched, "r"))
        )
        assert _forbidden(lambda: kube.list(HTTP_ROUTE, other))
        kube.delete(HTTP_ROUTE, watched, "r")  # a mirror route is removed when its phase ends
        assert _forbidden(lambda: kube.list(CONFIG_MAP, namespace))
        assert _forbidden(lambda: kube.list(ResourceKind("", "v1", "secrets", "Secret"), namespace))
        assert _forbidden(lambda: kube.create(LEASE, watched, lease))
        # the operator API's reviews (cluster-scoped)
        review = ResourceKind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview",
                              namespaced=False)  # fmt: skip
        answer = kube.create(review, None, {
            "apiVersion": review.api_version, "kind": review.kind,
            "spec": {"token": "not-a-token"},
        })  # fmt: skip
        assert answer["status"].get("authenticated") is not True
        access = ResourceKind("authorization.k8s.io", "v1", "subjectaccessreviews",
                              "SubjectAccessReview", namespaced=False)  # fmt: skip
        decision = kube.create(access, None, {
            "apiVersion": access.api_version, "kind": access.kind,
            "spec": {"user": "alice", "resourceAttributes": {
                "group": "kserve-canary.io", "resource": "rollouts", "verb": "get",
                "namespace": watched}},
        })  # fmt: skip
        assert decision["status"]["allowed"] is False
        assert _forbidden(lambda: kube.delete(LEASE, namespace, "kserve-canary-leader"))
