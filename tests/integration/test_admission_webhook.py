"""The admission webhook on the real test bed: kube-apiserver v1.37 calls our HTTPS server
through a MutatingWebhookConfiguration, and the KServe simulator acts on what got stored.

Each test runs its own server (TLS, certificate signed by the cluster CA) and its own
configuration, scoped by ``namespaceSelector`` to the test's namespace, which carries a
label unique to the test: other tests of the session never reach this webhook, even in
the moment between deleting the configuration and the apiserver noticing. The
configuration is deleted and the server stopped in the fixture's teardown.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from canary.admission import ADMISSION_PATH
from canary.api.app import create_app
from canary.api.health import Health
from canary.k8s.client import (
    INFERENCE_SERVICE,
    MUTATING_WEBHOOK_CONFIGURATION,
    NAMESPACE,
    KubeClient,
    KubeError,
    NotFound,
)
from canary.k8s.webhook_config import (
    MATCH_OPTED_IN,
    WEBHOOK_NAME,
    delete_webhook_configuration,
    ensure_webhook_configuration,
)
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet, RolloutPolicy
from canary.routing.knative import KnativeRouter
from canary.server import HttpServer
from testbed.behaviour import ModelBehaviour
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

SCOPE_LABEL = "test.kserve-canary.io/admission"
ON = {"kserve-canary.io/enabled": "true"}
DEADLINE = 30.0
T = TypeVar("T")

POLICIES = PolicySet(
    [RolloutPolicy(name="default"), RolloutPolicy(name="fraud-scoring", steps=(5, 25, 100))], {}
)


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    end = time.monotonic() + deadline
    last: T | None = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Hook:
    kube: KubeClient
    namespace: str
    token: str
    server: HttpServer
    configuration: str
    metrics: ControllerMetrics

    def uri(self, version: str) -> str:
        return f"s3://admission-{self.token}/{version}"

    def create(
        self, name: str, version: str, annotations: dict[str, str], **spec: Any
    ) -> dict[str, Any]:
        return self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": name, "annotations": annotations},
                "spec": {
                    "predictor": {
                        "model": {"modelFormat": {"name": "sklearn"},
                                  "storageUri": self.uri(version)}
                    },
                    **spec,
                },
            },
        )  # fmt: skip

    def get(self, name: str) -> dict[str, Any]:
        return self.kube.get(INFERENCE_SERVICE, self.namespace, name)

    def patch(self, name: str, patch: Any, patch_type: Any = "merge") -> dict[str, Any]:
        return self.kube.patch(INFERENCE_SERVICE, self.namespace, name, patch,
                               patch_type=patch_type)  # fmt: skip

    def new_model(self, name: str, version: str) -> dict[str, Any]:
        """What a GitOps sync does: change the model, say nothing about the percent."""
        return self.patch(
            name, {"spec": {"predictor": {"model": {"storageUri": self.uri(version)}}}}
        )

    def split(self, name: str) -> dict[str, int]:
        return dict(KnativeRouter(self.kube).observe(self.namespace, name).view.split)

    def rolled_out(self, name: str) -> None:
        """Wait until the first revision of ``name`` serves 100 %."""
        revision = f"{name}-predictor-00001"
        wait_for(f"{revision} at 100 %", lambda: self.split(name) == {revision: 100})


def finalizers_of(hook: Hook, name: str) -> Callable[[], list[str] | None]:
    def probe() -> list[str] | None:
        found: list[str] | None = hook.get(name)["metadata"].get("finalizers")
        return found

    return probe


def refusal(call: Callable[[], object]) -> KubeError:
    with pytest.raises(KubeError) as caught:
        call()
    return caught.value


@pytest.fixture
def hook(testbed: Testbed) -> Iterator[Hook]:
    kube = testbed.kube
    cluster = testbed.cluster
    assert cluster is not None, "the test bed is not up"
    token = uuid.uuid4().hex[:8]
    namespace = testbed.namespace(f"admission-{token}")
    kube.patch(NAMESPACE, None, namespace, {"metadata": {"labels": {SCOPE_LABEL: token}}})
    book = testbed.behaviour()
    for version in ("v1", "v2", "v3"):
        book = book.with_model(f"s3://admission-{token}/{version}", ModelBehaviour())
    testbed.set_behaviour(book)

    cert, key = cluster.issue_certificate(f"kserve-canary-webhook-{token}", ["127.0.0.1"])
    metrics = ControllerMetrics()
    app = create_app(health=Health(), policies=lambda: POLICIES, metrics=metrics)
    server = HttpServer(app, host="127.0.0.1", port=0, certfile=cert, keyfile=key)
    server.start()
    configuration = f"kserve-canary-test-{token}"
    try:
        ensure_webhook_configuration(
            kube,
            url=f"https://127.0.0.1:{server.port}{ADMISSION_PATH}",
            ca_bundle=cluster.ca_path.read_bytes(),
            namespace_selector={"matchLabels": {SCOPE_LABEL: token}},
            name=configuration,
        )
        bed = Hook(kube, namespace, token, server, configuration, metrics)
        _wait_until_active(bed)
        yield bed
    finally:
        delete_webhook_configuration(kube, configuration)
        server.stop()


def _wait_until_active(bed: Hook) -> None:
    """The apiserver picks configurations up from a watch: until then updates pass
    unchecked. Probe with an opted-in object whose every label change mints a revision."""
    bed.create("probe", "v1", ON)
    attempt = iter(range(10_000))

    def mutated() -> bool:
        stored = bed.patch("probe", {"metadata": {"labels": {"probe": str(next(attempt))}}})
        return "canaryTrafficPercent" in stored["spec"]["predictor"]

    wait_for("the webhook to be called", mutated)


# --- Knative mode ---------------------------------------------------------------------------


def test_model_change_without_a_percent_gets_the_first_step(hook: Hook) -> None:
    hook.create("m", "v1", ON)
    hook.rolled_out("m")

    stored = hook.new_model("m", "v2")

    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert stored["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v2")
    r1, r2 = "m-predictor-00001", "m-predictor-00002"
    wait_for("R2 at the first step", lambda: hook.split("m") == {r2: 10, r1: 90})
    text = hook.metrics.render().decode()
    assert 'kserve_canary_admission_reviews_total{result="patched"}' in text


def test_a_percent_above_the_first_step_is_lowered(hook: Hook) -> None:
    annotations = {**ON, "kserve-canary.io/policy": "fraud-scoring"}
    hook.create("m", "v1", annotations)
    hook.rolled_out("m")

    stored = hook.patch(
        "m",
        {"spec": {"predictor": {"canaryTrafficPercent": 100,
                                "model": {"storageUri": hook.uri("v2")}}}},
    )  # fmt: skip

    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 5


def test_traffic_only_writes_pass_untouched(hook: Hook) -> None:
    hook.create("m", "v1", ON)
    hook.rolled_out("m")
    hook.new_model("m", "v2")
    stored = hook.patch("m", {"spec": {"predictor": {"canaryTrafficPercent": 50}}})
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 50
    r1, r2 = "m-predictor-00001", "m-predictor-00002"
    wait_for("R2 at 50 %", lambda: hook.split("m") == {r2: 50, r1: 50})


def test_services_not_opted_in_are_untouched(hook: Hook) -> None:
    hook.create("plain", "v1", {})
    hook.rolled_out("plain")

    stored = hook.new_model("plain", "v2")

    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    wait_for("R2 at 100 %", lambda: hook.split("plain") == {"plain-predictor-00002": 100})


def test_a_malformed_annotation_is_refused_with_the_reason(hook: Hook) -> None:
    hook.create("m", "v1", ON)
    before = hook.get("m")

    error = refusal(
        lambda: hook.patch("m", {"metadata": {"annotations": {"kserve-canary.io/policy": "Bad_1"}}})
    )

    assert error.status == 403
    assert f'admission webhook "{WEBHOOK_NAME}" denied the request' in error.message
    assert "kserve-canary.io/policy: got 'Bad_1'" in error.message
    assert "allowed: a policy name" in error.message
    after = hook.get("m")
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]


def test_an_unknown_policy_is_refused(hook: Hook) -> None:
    hook.create("m", "v1", {**ON, "kserve-canary.io/policy": "nope"})

    error = refusal(lambda: hook.new_model("m", "v2"))

    assert error.status == 403
    assert "got 'nope'" in error.message
    assert "default, fraud-scoring" in error.message
    assert hook.get("m")["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v1")


@pytest.mark.parametrize("value", ["yes", "True", "1"])
def test_an_opt_in_that_is_not_a_boolean_is_denied_with_the_allowed_values(
    hook: Hook, value: str
) -> None:
    """The apiserver sends it to the webhook (matchConditions), which fails closed: the
    model never reaches KServe uncapped, whether the value arrives with the model or was
    stored earlier (a CREATE is not checked)."""
    hook.create("m", "v1", ON)
    hook.rolled_out("m")
    gitops = {
        "metadata": {"annotations": {"kserve-canary.io/enabled": value}},
        "spec": {"predictor": {"model": {"storageUri": hook.uri("v2")}}},
    }
    error = refusal(lambda: hook.patch("m", gitops))
    assert error.status == 403
    assert f"kserve-canary.io/enabled: got {value!r}" in error.message
    assert '"true" or "false"' in error.message
    stored = hook.get("m")
    assert stored["metadata"]["annotations"]["kserve-canary.io/enabled"] == "true"
    assert stored["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v1")

    hook.create("n", "v1", {"kserve-canary.io/enabled": value})
    hook.rolled_out("n")
    error = refusal(lambda: hook.new_model("n", "v2"))
    assert error.status == 403
    assert '"true" or "false"' in error.message
    assert hook.get("n")["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v1")


def test_an_explicit_opt_out_is_not_sent_to_the_webhook(hook: Hook) -> None:
    hook.create("m", "v1", {"kserve-canary.io/enabled": "false"})
    hook.rolled_out("m")
    stored = hook.new_model("m", "v2")
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]


# --- Standard mode --------------------------------------------------------------------------


def test_standard_mode_stable_change_canary_entry_and_promotion(hook: Hook) -> None:
    annotations = {**ON, "serving.kserve.io/deploymentMode": "Standard"}
    hook.create("s", "v1", annotations)

    error = refusal(lambda: hook.new_model("s", "v2"))
    assert error.status == 403
    assert "spec.canary[]" in error.message
    assert "canary rollout start" in error.message

    entry = {
        "predictor": {
            "name": "canary",
            "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                      "storageUri": hook.uri("v2")},
        },
        "trafficPercent": 50,
    }  # fmt: skip
    stored = hook.patch("s", {"spec": {"canary": [entry]}})
    assert stored["spec"]["canary"][0]["trafficPercent"] == 10

    # the controller's promotion (KSERVE.md §2.5), exactly as the Standard router writes it
    promoted = hook.patch(
        "s",
        [
            {"op": "test", "path": "/spec/canary/0/predictor/name", "value": "canary"},
            {"op": "add", "path": "/spec/predictor/name", "value": "canary"},
            {"op": "replace", "path": "/spec/predictor/model/storageUri",
             "value": hook.uri("v2")},
            {"op": "remove", "path": "/spec/canary"},
        ],
        patch_type="json",
    )  # fmt: skip
    assert promoted["spec"]["predictor"]["name"] == "canary"
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v2")
    assert "canary" not in promoted["spec"]


# --- the configuration and an outage ---------------------------------------------------------


def test_the_configuration_the_apiserver_stored(hook: Hook) -> None:
    stored = hook.kube.get(MUTATING_WEBHOOK_CONFIGURATION, None, hook.configuration)
    (webhook,) = stored["webhooks"]
    assert webhook["name"] == WEBHOOK_NAME
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["sideEffects"] == "None"
    assert webhook["matchConditions"] == [
        {"name": "kserve-canary-opted-in", "expression": MATCH_OPTED_IN}
    ]
    assert webhook["rules"][0]["operations"] == ["UPDATE"]
    # applying again is idempotent (server-side apply by our field manager)
    again = ensure_webhook_configuration(
        hook.kube,
        url=webhook["clientConfig"]["url"],
        ca_bundle=base64.b64decode(webhook["clientConfig"]["caBundle"]),
        namespace_selector=webhook["namespaceSelector"],
        name=hook.configuration,
    )
    assert again["metadata"]["generation"] == stored["metadata"]["generation"]


def test_while_the_server_is_down_only_opted_in_updates_fail(hook: Hook) -> None:
    hook.create("m", "v1", ON)
    hook.create("plain", "v1", {})
    for name in ("m", "plain"):  # the simulator's own update (its finalizer) comes first
        wait_for(f"{name}'s finalizer", finalizers_of(hook, name))
    hook.server.stop()

    error = refusal(lambda: hook.new_model("m", "v2"))
    assert error.status == 500
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in error.message
    assert hook.get("m")["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v1")

    stored = hook.new_model("plain", "v2")  # matchConditions keep it away from the webhook
    assert stored["spec"]["predictor"]["model"]["storageUri"] == hook.uri("v2")


def test_the_configuration_is_gone_after_teardown(testbed: Testbed) -> None:
    leftovers = [
        item["metadata"]["name"]
        for item in testbed.kube.list(MUTATING_WEBHOOK_CONFIGURATION)[0]
        if item["metadata"]["name"].startswith("kserve-canary-test-")
    ]
    assert leftovers == []
    with pytest.raises(NotFound):
        testbed.kube.get(MUTATING_WEBHOOK_CONFIGURATION, None, "kserve-canary-test-none")
