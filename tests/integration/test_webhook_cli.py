"""`canary webhook apply` against the test bed's kube-apiserver (v1.37), run as a user runs
it: a real process with the test bed's kubeconfig.

Every configuration here has a name unique to the test and a ``namespaceSelector`` on a
label unique to the test, so no other test's InferenceServices ever reach it; each is
deleted in teardown. No controller runs behind the Service they name, and no cert-manager
is installed: the annotation is stored and nothing fills the caBundle in.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.k8s.client import (
    INFERENCE_SERVICE,
    MUTATING_WEBHOOK_CONFIGURATION,
    NAMESPACE,
    KubeClient,
    KubeError,
)
from canary.k8s.webhook_config import WEBHOOK_NAME, delete_webhook_configuration
from testbed.testbed import Testbed
from tests.integration.test_admission_webhook import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY = Path(sys.executable).with_name("canary")
SCOPE_LABEL = "test.kserve-canary.io/webhook-cli"
INJECT = "cert-manager.io/inject-ca-from"


def canary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CANARY), "webhook", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


class Registration:
    """One test's configuration: its name, its scope and the options they give."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.kube: KubeClient = testbed.kube
        self.token = uuid.uuid4().hex[:8]
        self.name = f"kserve-canary-cli-{self.token}"

    def args(self, *ca: str, service_namespace: str = "kserve-canary") -> list[str]:
        return [
            "--service-namespace", service_namespace, "--service-name", "kserve-canary",
            "--port", "8443", *ca, "--namespace-selector", f"{SCOPE_LABEL}={self.token}",
            "--name", self.name,
        ]  # fmt: skip

    def apply(self, *args: str) -> subprocess.CompletedProcess[str]:
        return canary("apply", *args, "--kubeconfig", str(self.testbed.kubeconfig_path))

    def stored(self) -> dict[str, Any]:
        return self.kube.get(MUTATING_WEBHOOK_CONFIGURATION, None, self.name)

    @property
    def ca_file(self) -> str:
        cluster = self.testbed.cluster
        assert cluster is not None, "the test bed is not up"
        return str(cluster.ca_path)


@pytest.fixture
def registration(testbed: Testbed) -> Iterator[Registration]:
    bed = Registration(testbed)
    try:
        yield bed
    finally:
        delete_webhook_configuration(testbed.kube, bed.name)


def test_apply_stores_what_render_prints_and_a_second_apply_changes_nothing(
    registration: Registration,
) -> None:
    args = registration.args("--ca-file", registration.ca_file)
    rendered = yaml.safe_load(canary("render", *args).stdout)

    first = registration.apply(*args)

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(
        f"mutatingwebhookconfiguration {registration.name} created: UPDATEs of opted-in "
        "InferenceServices in namespaces matching the selector go to service "
        "kserve-canary/kserve-canary port 8443 path /admission/inferenceservices"
    )
    assert first.stdout.splitlines()[1] == f"caBundle: 1 certificate from {registration.ca_file}"
    stored = registration.stored()
    (hook,) = stored["webhooks"]
    (expected,) = rendered["webhooks"]
    for field, value in expected.items():  # the apiserver adds defaults (objectSelector…)
        assert hook[field] == value, field
    assert hook["clientConfig"]["caBundle"] == expected["clientConfig"]["caBundle"]
    assert stored["metadata"]["labels"] == rendered["metadata"]["labels"]
    managers = {(m["manager"], m["operation"]) for m in stored["metadata"]["managedFields"]}
    assert managers == {("kserve-canary", "Apply")}

    second = registration.apply(*args)

    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"mutatingwebhookconfiguration {registration.name} unchanged:")
    again = registration.stored()
    assert again["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == stored["metadata"]["generation"]


def test_the_cert_manager_form_is_stored_without_a_ca_bundle_and_forms_can_be_switched(
    registration: Registration,
) -> None:
    """The apiserver accepts a service webhook with no caBundle (it is optional: the
    apiserver would verify the webhook against its own trust roots) and stores the
    annotation as it is; without cert-manager nothing fills the caBundle in."""
    cert_manager = registration.args("--cert-manager-certificate", "kserve-canary/serving")

    result = registration.apply(*cert_manager)

    assert result.returncode == 0, result.stderr
    assert "caBundle: not injected yet" in result.stdout
    stored = registration.stored()
    assert stored["metadata"]["annotations"] == {INJECT: "kserve-canary/serving"}
    (hook,) = stored["webhooks"]
    assert hook["clientConfig"] == {
        "service": {
            "namespace": "kserve-canary",
            "name": "kserve-canary",
            "port": 8443,
            "path": "/admission/inferenceservices",
        }
    }

    # to a CA file: the caBundle appears and the annotation goes (cainjector stops)
    switched = registration.apply(*registration.args("--ca-file", registration.ca_file))
    assert switched.returncode == 0, switched.stderr
    assert f"{registration.name} configured:" in switched.stdout
    stored = registration.stored()
    assert INJECT not in (stored["metadata"].get("annotations") or {})
    assert stored["webhooks"][0]["clientConfig"]["caBundle"]

    # and back: the caBundle we set goes with it
    back = registration.apply(*cert_manager)
    assert back.returncode == 0, back.stderr
    stored = registration.stored()
    assert stored["metadata"]["annotations"] == {INJECT: "kserve-canary/serving"}
    assert "caBundle" not in stored["webhooks"][0]["clientConfig"]


def test_the_registration_holds_up_opted_in_updates_only(
    registration: Registration, namespace: str
) -> None:
    """With nothing answering behind the Service (as while the controller is down, or
    before cainjector has filled the caBundle in), updates of opted-in InferenceServices
    in the selected namespaces are refused (failurePolicy Fail); other updates pass."""
    kube = registration.kube
    scope = {"metadata": {"labels": {SCOPE_LABEL: registration.token}}}
    kube.patch(NAMESPACE, None, namespace, scope)
    for name, opt_in in (("opted", {"kserve-canary.io/enabled": "true"}), ("plain", {})):
        model = {"modelFormat": {"name": "sklearn"}, "storageUri": f"s3://cli-{name}/v1"}
        kube.create(
            INFERENCE_SERVICE,
            namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": name, "annotations": opt_in},
                "spec": {"predictor": {"model": model}},
            },
        )
    for name in ("opted", "plain"):  # the simulator's own update (its finalizer) comes first
        wait_for(f"{name}'s finalizer", partial(_finalizers, kube, namespace, name))

    result = registration.apply(
        *registration.args("--ca-file", registration.ca_file, service_namespace=namespace)
    )
    assert result.returncode == 0, result.stderr

    attempt = iter(range(10_000))

    def refused() -> str | None:  # the apiserver picks the configuration up from a watch
        patch = {"metadata": {"labels": {"probe": str(next(attempt))}}}
        try:
            kube.patch(INFERENCE_SERVICE, namespace, "opted", patch)
        except KubeError as exc:
            return exc.message
        return None

    message = wait_for("the opted-in update to be refused", refused)
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in message
    stored = kube.patch(INFERENCE_SERVICE, namespace, "plain", {"metadata": {"labels": {"a": "b"}}})
    assert stored["metadata"]["labels"]["a"] == "b"


def _finalizers(kube: KubeClient, namespace: str, name: str) -> list[str] | None:
    found: list[str] | None = kube.get(INFERENCE_SERVICE, namespace, name)["metadata"].get(
        "finalizers"
    )
    return found
