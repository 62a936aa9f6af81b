"""Kubernetes Events as a model owner reads them with `kubectl describe`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from canary.k8s.client import EVENT, INFERENCE_SERVICE, KubeClient, NotFound
from canary.k8s.events import MAX_MESSAGE, EventRecorder, ObjectReference
from canary.model import EventReason

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 2, 14, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _isvc(kube: KubeClient, namespace: str) -> ObjectReference:
    created = kube.create(
        INFERENCE_SERVICE,
        namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "scorer", "labels": {"sandbox.kserve-canary.io/simulator": "off"}},
            "spec": {
                "predictor": {
                    "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/v1"}
                }
            },
        },
    )
    return ObjectReference.of(created)


def _events(kube: KubeClient, namespace: str) -> list[dict[str, object]]:
    items, _ = kube.list(EVENT, namespace)
    return items


def test_each_decision_is_an_event_with_its_own_reason(kube: KubeClient, namespace: str) -> None:
    target = _isvc(kube, namespace)
    recorder = EventRecorder(kube, instance="kserve-canary-0", clock=Clock())
    recorder.emit(target, EventReason.ROLLOUT_STARTED, "canary r2 against r1; first step 10%")
    recorder.emit(target, EventReason.ROLLED_BACK, "r2 serves no traffic", "Warning")
    events = {e["reason"]: e for e in _events(kube, namespace)}
    assert set(events) == {"RolloutStarted", "RolledBack"}
    started = events["RolloutStarted"]
    assert started["type"] == "Normal"
    assert started["message"] == "canary r2 against r1; first step 10%"
    involved = started["involvedObject"]
    assert isinstance(involved, dict)
    assert involved["kind"] == "InferenceService"
    assert involved["name"] == "scorer"
    assert involved["uid"] == target.uid
    assert events["RolledBack"]["type"] == "Warning"
    assert started["reportingComponent"] == "kserve-canary"


def test_a_repeated_event_raises_its_count_instead_of_flooding(
    kube: KubeClient, namespace: str
) -> None:
    target = _isvc(kube, namespace)
    clock = Clock()
    recorder = EventRecorder(kube, instance="kserve-canary-0", clock=clock)
    for _ in range(3):
        recorder.emit(target, EventReason.WAITING_FOR_WINDOW, "next window opens at 09:00")
        clock.now += timedelta(minutes=1)
    events = _events(kube, namespace)
    assert len(events) == 1
    assert events[0]["count"] == 3
    clock.now += timedelta(minutes=30)  # outside the repeat window: a new event
    recorder.emit(target, EventReason.WAITING_FOR_WINDOW, "next window opens at 09:00")
    assert len(_events(kube, namespace)) == 2


def test_overlong_messages_are_cut_not_refused(kube: KubeClient, namespace: str) -> None:
    target = _isvc(kube, namespace)
    recorder = EventRecorder(kube, instance="kserve-canary-0", clock=Clock())
    recorder.emit(target, EventReason.ANALYSIS_FAILED, "é" * 5000, "Warning")
    (event,) = _events(kube, namespace)
    message = event["message"]
    assert isinstance(message, str)
    assert len(message.encode("utf-8")) <= MAX_MESSAGE
    assert message.startswith("éé")
    assert message.endswith("...")


def test_a_re_created_service_does_not_inherit_the_old_ones_events(
    kube: KubeClient, namespace: str
) -> None:
    first = _isvc(kube, namespace)
    clock = Clock()
    recorder = EventRecorder(kube, instance="kserve-canary-0", clock=clock)
    recorder.emit(first, EventReason.ROLLED_BACK, "r2 serves no traffic", "Warning")
    kube.delete(INFERENCE_SERVICE, namespace, "scorer")
    for _ in range(50):  # the simulator is off: deletion completes without finalizers
        try:
            kube.get(INFERENCE_SERVICE, namespace, "scorer")
        except NotFound:
            break
    second = _isvc(kube, namespace)
    assert second.uid != first.uid
    clock.now += timedelta(minutes=1)  # well inside the repeat window
    recorder.emit(second, EventReason.ROLLED_BACK, "r2 serves no traffic", "Warning")
    recorder.emit(second, EventReason.ROLLED_BACK, "r2 serves no traffic", "Warning")

    events = _events(kube, namespace)
    by_uid = {str(e["involvedObject"]["uid"]): e["count"] for e in events}  # type: ignore[index]
    assert by_uid == {first.uid: 1, second.uid: 2}
