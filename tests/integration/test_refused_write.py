"""A traffic write genuinely refused by the real kube-apiserver: a ValidatingAdmissionPolicy
(CEL, evaluated by the apiserver itself) refuses a canaryTrafficPercent that is not a
multiple of 10 in the test's namespace. The write is carried out as the engine carries it
out (``canary.execution.carry_out`` through the Knative router), the refusal is handed
to the state machine, and its Event is written to the apiserver through the controller's
recorder. The engine's bookkeeping of the same refusal (the failed intent's audit record,
the stored pause surviving a leader change, resume) is in tests/integration/test_engine.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from canary import machine
from canary.execution import Pending, carry_out
from canary.k8s.client import EVENT, INFERENCE_SERVICE, KubeClient, KubeError, ResourceKind
from canary.k8s.events import EventRecorder, ObjectReference
from canary.model import (
    EmitEvent,
    Phase,
    Revision,
    RolloutState,
    TrafficView,
    WriteRejected,
)
from canary.policy import RolloutPolicy
from canary.routing.base import Observed
from canary.routing.knative import KnativeRouter, observed_from
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

NAME = "scorer"
MESSAGE = "canaryTrafficPercent must be a multiple of 10 in this namespace"
POLICY = ResourceKind(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
    "ValidatingAdmissionPolicy", namespaced=False,
)  # fmt: skip
BINDING = ResourceKind(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
    "ValidatingAdmissionPolicyBinding", namespaced=False,
)  # fmt: skip
DEADLINE = 30.0


@pytest.fixture
def refusing(testbed: Testbed) -> Iterator[tuple[KubeClient, str]]:
    """A namespace whose InferenceServices refuse a percent that is not a multiple of 10."""
    kube = testbed.kube
    token = uuid.uuid4().hex[:8]
    namespace = testbed.namespace(f"refused-write-{token}")
    name = f"ksc-refuse-{token}"
    kube.create(
        POLICY,
        None,
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["serving.kserve.io"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": ["inferenceservices"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.spec.predictor.canaryTrafficPercent) || "
                        "object.spec.predictor.canaryTrafficPercent % 10 == 0",
                        "message": MESSAGE,
                        "reason": "Invalid",
                    }
                ],
            },
        },
    )
    kube.create(
        BINDING,
        None,
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    )
    kube.create(
        INFERENCE_SERVICE,
        namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": NAME},
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": 10,
                    "model": {
                        "modelFormat": {"name": "sklearn"},
                        "storageUri": f"s3://refused-{token}/v1",
                    },
                }
            },
        },
    )
    try:
        _wait_until_refused(kube, namespace)
        yield kube, namespace
    finally:
        kube.delete(BINDING, None, name)
        kube.delete(POLICY, None, name)


def _wait_until_refused(kube: KubeClient, namespace: str) -> None:
    """The apiserver loads a new policy asynchronously: probe with dry runs."""
    probe = {"spec": {"predictor": {"canaryTrafficPercent": 25}}}
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            kube.patch(INFERENCE_SERVICE, namespace, NAME, probe, dry_run=True)
        except KubeError as exc:
            if MESSAGE in exc.message:
                return
        time.sleep(0.2)
    raise AssertionError(f"the admission policy was not in force within {DEADLINE} s")


def _observed(kube: KubeClient, state: RolloutState) -> Observed:
    """The object as stored (its resourceVersion guards the write), with the revisions the
    rollout knows (no KServe status is needed for a write to be refused)."""
    read = observed_from(kube.get(INFERENCE_SERVICE, state.namespace, NAME))
    assert state.last_view is not None
    return replace(read, view=state.last_view)


def _state(namespace: str, now: datetime) -> RolloutState:
    view = TrafficView(
        latest=Revision(f"{NAME}-predictor-00002"),
        stable=Revision(f"{NAME}-predictor-00001"),
        split={f"{NAME}-predictor-00001": 90, f"{NAME}-predictor-00002": 10},
        spec_percent=10,
        converged=True,
        latest_ready=True,
    )
    return RolloutState(
        rollout_id="ro-refused",
        namespace=namespace,
        name=NAME,
        policy="default",
        phase=Phase.PROGRESSING,
        canary=view.latest,
        stable=view.stable,
        created_at=now,
        phase_entered_at=now,
        step_index=1,
        target_percent=25,
        last_view=view,
    )


def test_a_step_refused_by_an_admission_policy_fails_pauses_and_says_why(
    refusing: tuple[KubeClient, str],
) -> None:
    kube, namespace = refusing
    now = datetime.now(UTC)
    state = _state(namespace, now)
    router = KnativeRouter(kube)
    observed = _observed(kube, state)
    pending = Pending("c-1", state.canary.name, 25, "step", attempts=1)
    counted: list[int] = []

    execution = carry_out(
        router, state, "knative", [pending], observed, lambda: now,
        retried=lambda: counted.append(1),
    )  # fmt: skip

    (result,) = execution.results
    assert result.outcome == "failed"
    assert result.refusal is not None
    assert (result.refusal.status, result.refusal.reason) == (422, "Invalid")
    assert MESSAGE in result.refusal.message
    assert execution.remaining == (), "a refusal for good is not retried"
    assert counted == []
    stored = kube.get(INFERENCE_SERVICE, namespace, NAME)
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 10, "the traffic did not move"
    assert stored["metadata"]["resourceVersion"] == observed.resource_version

    refusal = result.refusal
    policy = RolloutPolicy.model_validate({"name": "default", "steps": [10, 25, 100]})
    paused, actions = machine.step(
        state,
        WriteRejected(
            pending.revision, 25, "step", refusal.status, refusal.reason, refusal.message,
            refusal.causes,
        ),
        policy,
        now,
    )  # fmt: skip
    assert paused.phase is Phase.PAUSED
    assert paused.target_percent == 10
    assert paused.rejected_write is not None
    (event,) = [a for a in actions if isinstance(a, EmitEvent)]

    recorder = EventRecorder(kube, instance="test")
    recorder.emit(ObjectReference.of(stored), event.reason, event.message, event.type)
    events, _ = kube.list(EVENT, namespace)
    (seen,) = [e for e in events if e.get("reason") == "TrafficWriteRejected"]
    assert seen["type"] == "Warning"
    assert seen["involvedObject"]["name"] == NAME
    assert MESSAGE in seen["message"]
    assert "422 Invalid" in seen["message"]


def test_an_allowed_percent_passes_the_same_policy(refusing: tuple[KubeClient, str]) -> None:
    """The policy refuses only what it should: the same write at 50 % is applied."""
    kube, namespace = refusing
    now = datetime.now(UTC)
    state = _state(namespace, now)
    observed = _observed(kube, state)
    pending = Pending("c-2", state.canary.name, 50, "step", attempts=1)
    execution = carry_out(KnativeRouter(kube), state, "knative", [pending], observed, lambda: now)
    assert [r.outcome for r in execution.results] == ["applied"]
    stored = kube.get(INFERENCE_SERVICE, namespace, NAME)
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 50
