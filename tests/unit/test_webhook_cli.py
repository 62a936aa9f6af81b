"""`canary webhook render` and `canary webhook apply` as a user runs them. Render needs no
cluster; apply talks to a stand-in for the apiserver here (the real one is in
tests/integration/test_webhook_cli.py)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from canary.cli import main as canary
from canary.k8s.client import (
    MUTATING_WEBHOOK_CONFIGURATION,
    Invalid,
    KubeClient,
    KubeError,
    NotFound,
    ResourceKind,
    Unavailable,
)
from canary.k8s.webhook_config import MATCH_OPTED_IN
from tests.unit.webhook_pems import CA_ONE, CA_TWO, CSR_BLOCK, DER, KEY_BLOCK, NOT_X509

SERVICE = ["--service-namespace", "kserve-canary", "--service-name", "kserve-canary"]
OPTED_IN = (
    "has(object.metadata.annotations) && "
    "'kserve-canary.io/enabled' in object.metadata.annotations && "
    "object.metadata.annotations['kserve-canary.io/enabled'] != 'false'"
)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(canary, ["webhook", *args], env=env)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(CA_ONE + CA_TWO)
    return path


@pytest.fixture(autouse=True)
def no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig anywhere: not in KUBECONFIG, not in ~/.kube."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --- render --------------------------------------------------------------------------------


def test_render_with_a_ca_file_prints_the_configuration_as_yaml(ca_file: Path) -> None:
    result = invoke("render", *SERVICE, "--ca-file", str(ca_file))

    assert result.exit_code == 0, result.stderr
    configuration = yaml.safe_load(result.stdout)
    assert configuration["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert configuration["kind"] == "MutatingWebhookConfiguration"
    assert configuration["metadata"]["name"] == "kserve-canary"
    assert "annotations" not in configuration["metadata"]
    (hook,) = configuration["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "namespace": "kserve-canary",
        "name": "kserve-canary",
        "port": 443,
        "path": "/admission/inferenceservices",
    }
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == CA_ONE + CA_TWO
    assert hook["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "apiVersions": ["v1beta1"],
            "operations": ["UPDATE"],
            "resources": ["inferenceservices"],
            "scope": "Namespaced",
        }
    ]
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5
    assert hook["matchConditions"] == [{"name": "kserve-canary-opted-in", "expression": OPTED_IN}]
    assert OPTED_IN == MATCH_OPTED_IN
    assert "namespaceSelector" not in hook  # every namespace


def test_render_with_cert_manager_has_the_annotation_and_no_ca_bundle() -> None:
    result = invoke(
        "render", *SERVICE, "--cert-manager-certificate", "kserve-canary/webhook-serving",
        "-o", "json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    configuration = json.loads(result.stdout)
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kserve-canary/webhook-serving"
    }
    (hook,) = configuration["webhooks"]
    assert hook["clientConfig"] == {
        "service": {
            "namespace": "kserve-canary",
            "name": "kserve-canary",
            "port": 443,
            "path": "/admission/inferenceservices",
        }
    }
    assert hook["rules"][0]["operations"] == ["UPDATE"]
    assert hook["matchConditions"] == [{"name": "kserve-canary-opted-in", "expression": OPTED_IN}]


def test_render_carries_every_option(ca_file: Path) -> None:
    result = invoke(
        "render", "--service-namespace", "ml-platform", "--service-name", "canary-webhook",
        "--port", "8443", "--path", "/mutate", "--ca-file", str(ca_file),
        "--namespace-selector", "kserve-canary.io/managed=true,env notin (dev,test)",
        "--timeout-seconds", "10", "--name", "kserve-canary-prod",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    configuration = yaml.safe_load(result.stdout)
    assert configuration["metadata"]["name"] == "kserve-canary-prod"
    (hook,) = configuration["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "namespace": "ml-platform",
        "name": "canary-webhook",
        "port": 8443,
        "path": "/mutate",
    }
    assert hook["timeoutSeconds"] == 10
    assert hook["namespaceSelector"] == {
        "matchLabels": {"kserve-canary.io/managed": "true"},
        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev", "test"]}],
    }


def test_render_needs_no_cluster_at_all(ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cluster(*_: object, **__: object) -> KubeClient:
        raise AssertionError("render must not connect to a cluster")

    monkeypatch.setattr(KubeClient, "from_kubeconfig", staticmethod(no_cluster))
    monkeypatch.delenv("KUBECONFIG")

    result = invoke("render", *SERVICE, "--ca-file", str(ca_file))

    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["kind"] == "MutatingWebhookConfiguration"


# --- invalid input: exit 2, a message naming the problem, nothing printed or applied ---------

CA_CASES: list[tuple[bytes, str]] = [
    (KEY_BLOCK, "the CA holds a private key (PEM block 1, 'PRIVATE KEY')"),
    (CA_ONE + KEY_BLOCK, "the CA holds a private key (PEM block 2, 'PRIVATE KEY')"),
    (CSR_BLOCK, "the CA holds a 'CERTIFICATE REQUEST' block"),
    (DER, "the CA is not PEM text"),
    (b"not a certificate\n", "the CA holds no PEM block"),
    (NOT_X509, "certificate 1 of the CA is not an X.509 certificate"),
]


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    good = tmp / "good.crt"
    good.write_bytes(CA_ONE)
    cases: list[tuple[list[str], str]] = [
        (SERVICE, "give exactly one of --ca-file (the CA's PEM goes into the caBundle) and "
                  "--cert-manager-certificate (cert-manager's cainjector fills the caBundle "
                  "in); neither was given"),
        ([*SERVICE, "--ca-file", str(good), "--cert-manager-certificate", "ns/cert"],
         "give exactly one of --ca-file (the CA's PEM goes into the caBundle) and "
         "--cert-manager-certificate (cert-manager's cainjector fills the caBundle in); "
         "both were given"),
        ([*SERVICE, "--ca-file", str(tmp / "missing.crt")],
         f"Invalid value for '--ca-file': cannot read {tmp / 'missing.crt'}: "
         "No such file or directory"),
        ([*SERVICE, "--cert-manager-certificate", "webhook-serving"],
         "Invalid value for '--cert-manager-certificate': the cert-manager Certificate "
         "'webhook-serving' must be given as NAMESPACE/NAME"),
        ([*SERVICE, "--ca-file", str(good), "--namespace-selector", "team in (a,b"],
         "Invalid value for '--namespace-selector': unclosed '(' in label selector"),
        ([*SERVICE, "--ca-file", str(good), "--namespace-selector", "team=a,team=b"],
         "Invalid value for '--namespace-selector': label 'team' is required to equal both"),
        ([*SERVICE, "--ca-file", str(good), "--port", "0"],
         "Invalid value for '--port': 0 is not in the range 1<=x<=65535"),
        ([*SERVICE, "--ca-file", str(good), "--port", "https"],
         "Invalid value for '--port': 'https' is not a valid integer"),
        ([*SERVICE, "--ca-file", str(good), "--path", "admission"],
         "Invalid value for '--path': the webhook path 'admission' must start with '/'"),
        ([*SERVICE, "--ca-file", str(good), "--path", "/admission//isvc"],
         "Invalid value for '--path': the webhook path '/admission//isvc' has an empty segment"),
        ([*SERVICE, "--ca-file", str(good), "--path", "/Admission"],
         "Invalid value for '--path': the webhook path '/Admission': segment 1 ('Admission')"),
        ([*SERVICE, "--ca-file", str(good), "--timeout-seconds", "31"],
         "Invalid value for '--timeout-seconds': 31 is not in the range 1<=x<=30"),
        ([*SERVICE, "--ca-file", str(good), "--name", "canary"],
         "Invalid value for '--name': the configuration name 'canary' sorts before KServe's "
         "'inferenceservice.serving.kserve.io'"),
        (["--service-namespace", "Kserve", "--service-name", "x", "--ca-file", str(good)],
         "Invalid value for '--service-namespace': the service namespace 'Kserve' must be a "
         "DNS label"),
        (["--service-namespace", "kserve-canary", "--ca-file", str(good)],
         "Missing option '--service-name'"),
    ]  # fmt: skip
    for i, (pem, message) in enumerate(CA_CASES):
        bad = tmp / f"bad-{i}.pem"
        bad.write_bytes(pem)
        cases.append(([*SERVICE, "--ca-file", str(bad)],
                      f"Invalid value for '--ca-file': {bad}: {message}"))  # fmt: skip
    return cases


@pytest.mark.parametrize("command", ["render", "apply"])
def test_invalid_input_exits_2_with_the_reason_and_applies_nothing(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections: list[object] = []

    def connect(*args: object, **kwargs: object) -> KubeClient:
        connections.append(args)
        raise AssertionError("invalid input must not reach the cluster")

    monkeypatch.setattr(KubeClient, "from_kubeconfig", staticmethod(connect))
    for args, message in _bad_inputs(tmp_path):
        result = invoke(command, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
        assert result.stdout == "", args
        assert "Traceback" not in result.output
    assert connections == []


# --- apply ---------------------------------------------------------------------------------


class FakeApiserver:
    """Stands in for KubeClient: keeps what is applied as the apiserver does (defaults filled
    in, the resourceVersion moved only by a change), or fails as told."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.applies: list[tuple[str, bool]] = []
        self.error: KubeError | None = None
        self.drops: str | None = None  # a webhook field an old apiserver does not know
        self.injects: bytes | None = None  # a caBundle cainjector wrote
        self.version = 100

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        assert kind == MUTATING_WEBHOOK_CONFIGURATION
        assert namespace is None
        if name not in self.objects:
            raise NotFound(404, "NotFound", f"{name} not found")
        return copy.deepcopy(self.objects[name])

    def apply(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: dict[str, Any],
        *,
        field_manager: str,
        force: bool = False,
    ) -> dict[str, Any]:
        assert kind == MUTATING_WEBHOOK_CONFIGURATION
        assert namespace is None
        if self.error is not None:
            raise self.error
        self.applies.append((field_manager, force))
        stored = copy.deepcopy(body)
        for hook in stored["webhooks"]:
            hook.setdefault("namespaceSelector", {})
            hook.setdefault("objectSelector", {})
            if self.drops:
                hook.pop(self.drops, None)
            if self.injects is not None:
                hook["clientConfig"]["caBundle"] = base64.b64encode(self.injects).decode()
        name = body["metadata"]["name"]
        old = self.objects.get(name)
        if old is not None:
            unchanged = copy.deepcopy(old)
            del unchanged["metadata"]["resourceVersion"]
            if unchanged == stored:
                return copy.deepcopy(old)
        self.version += 1
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = stored
        return copy.deepcopy(stored)

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeApiserver:
        return self

    def __exit__(self, *_: object) -> None:
        pass


@pytest.fixture
def apiserver(monkeypatch: pytest.MonkeyPatch) -> FakeApiserver:
    fake = FakeApiserver()
    monkeypatch.setattr(KubeClient, "from_kubeconfig", staticmethod(lambda *_, **__: fake))
    return fake


def test_apply_creates_then_leaves_an_unchanged_configuration_alone(
    apiserver: FakeApiserver, ca_file: Path
) -> None:
    args = [*SERVICE, "--ca-file", str(ca_file)]
    first = invoke("apply", *args)

    assert first.exit_code == 0, first.output
    assert first.stdout == (
        "mutatingwebhookconfiguration kserve-canary created: UPDATEs of opted-in "
        "InferenceServices go to service kserve-canary/kserve-canary port 443 path "
        "/admission/inferenceservices (failurePolicy Fail, timeout 5s)\n"
        f"caBundle: 2 certificates from {ca_file}\n"
    )
    assert apiserver.applies == [("kserve-canary", True)]  # server-side apply, our manager
    rendered = yaml.safe_load(invoke("render", *args).stdout)
    stored = apiserver.objects["kserve-canary"]
    assert stored["webhooks"][0]["clientConfig"] == rendered["webhooks"][0]["clientConfig"]

    again = invoke("apply", *args)
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("mutatingwebhookconfiguration kserve-canary unchanged:")
    assert apiserver.objects["kserve-canary"] == stored

    scoped = invoke("apply", *args, "--namespace-selector", "team=fraud")
    assert scoped.exit_code == 0, scoped.output
    assert scoped.stdout.startswith(
        "mutatingwebhookconfiguration kserve-canary configured: UPDATEs of opted-in "
        "InferenceServices in namespaces matching the selector go to service"
    )
    assert apiserver.objects["kserve-canary"]["webhooks"][0]["namespaceSelector"] == {
        "matchLabels": {"team": "fraud"}
    }


def test_apply_with_cert_manager_says_whether_the_ca_is_injected_yet(
    apiserver: FakeApiserver,
) -> None:
    args = [*SERVICE, "--cert-manager-certificate", "kserve-canary/webhook-serving"]
    waiting = invoke("apply", *args)

    assert waiting.exit_code == 0, waiting.output
    assert waiting.stdout.splitlines()[1] == (
        "caBundle: not injected yet; cert-manager's cainjector fills it in from Certificate "
        "kserve-canary/webhook-serving, and until it does the apiserver cannot verify the "
        "webhook and refuses updates of opted-in InferenceServices"
    )
    stored = apiserver.objects["kserve-canary"]
    assert stored["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kserve-canary/webhook-serving"
    }

    apiserver.injects = CA_ONE
    injected = invoke("apply", *args)
    assert injected.exit_code == 0, injected.output
    assert injected.stdout.splitlines()[1] == (
        "caBundle: injected by cert-manager from Certificate kserve-canary/webhook-serving"
    )


def test_apply_reports_an_apiserver_that_dropped_the_match_conditions(
    apiserver: FakeApiserver, ca_file: Path
) -> None:
    """An apiserver on which matchConditions are not enabled drops them without an error:
    the webhook would then be called for every InferenceService update."""
    apiserver.drops = "matchConditions"

    result = invoke("apply", *SERVICE, "--ca-file", str(ca_file))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: the apiserver stored matchConditions None, not [{'name': 'kserve-canary-" in (
        result.stderr
    )
    assert "matchConditions are enabled by default from Kubernetes 1.28" in result.stderr
    assert "kubectl delete mutatingwebhookconfiguration kserve-canary" in result.stderr


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (Unavailable(0, "Unavailable", "connection refused"), 3,
         "error: cannot reach the apiserver: 0 Unavailable: connection refused"),
        (Invalid(422, "Invalid", "webhooks[0].timeoutSeconds: Invalid value"), 2,
         "error: the apiserver finds the configuration invalid: 422 Invalid: "
         "webhooks[0].timeoutSeconds"),
        (KubeError(403, "Forbidden", 'user "dev" cannot patch'), 1,
         "error: the apiserver refused mutatingwebhookconfiguration kserve-canary: "
         '403 Forbidden: user "dev" cannot patch'),
    ],
)  # fmt: skip
def test_apply_exit_codes_for_apiserver_answers(
    apiserver: FakeApiserver, ca_file: Path, error: KubeError, code: int, message: str
) -> None:
    apiserver.error = error

    result = invoke("apply", *SERVICE, "--ca-file", str(ca_file))

    assert result.exit_code == code
    assert message in result.stderr
    assert result.stdout == ""
    assert apiserver.objects == {}


def test_apply_without_a_kubeconfig_says_so(ca_file: Path) -> None:
    result = invoke("apply", *SERVICE, "--ca-file", str(ca_file))

    assert result.exit_code == 2
    assert "error: cannot load the kubeconfig (" in result.stderr
    assert "pass --kubeconfig" in result.stderr
    assert "Traceback" not in result.output
