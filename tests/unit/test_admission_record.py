"""Who changed the model, as the admission webhook records it (``model.change_admitted``):
every admitted update that changes the models of an opted-in InferenceService, with the
apiserver's ``userInfo``; never a dry run, never an update that was denied; and the record
never blocks the update, neither when it fails nor when the database is slow. The router
is the controller's own, spoken to as the apiserver does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from canary.admission import ADMISSION_PATH, ModelChange
from canary.api.admission import router as admission_router
from canary.audit import Actor
from canary.entries import admitted_entry
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet, RolloutPolicy

POLICIES = PolicySet([RolloutPolicy(name="default")], {})
ON = {"kserve-canary.io/enabled": "true"}
STANDARD = {**ON, "serving.kserve.io/deploymentMode": "Standard"}
V1, V2 = "s3://models/v1", "s3://models/v2"
GITOPS = {
    "username": "system:serviceaccount:argocd:argocd-application-controller",
    "uid": "0f5e1c2a-sa",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:argocd"],
}


def isvc(
    uri: str = V1,
    *,
    annotations: dict[str, str] | None = None,
    percent: int | None = None,
    canary: str | None = None,
) -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    spec: dict[str, Any] = {"predictor": predictor}
    if canary is not None:
        spec["canary"] = [{"predictor": {"name": "c", "model": {"storageUri": canary}},
                           "trafficPercent": 10}]  # fmt: skip
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "scorer", "namespace": "fraud", "uid": "isvc-1",
                     "annotations": dict(ON if annotations is None else annotations)},
        "spec": spec,
    }  # fmt: skip


def review(
    old: dict[str, Any], new: dict[str, Any], *, user: dict[str, Any] = GITOPS, **extra: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "adm-7",
            "kind": {"group": "serving.kserve.io", "version": "v1beta1",
                     "kind": "InferenceService"},
            "operation": "UPDATE",
            "namespace": "fraud",
            "name": "scorer",
            "userInfo": user,
            "object": new,
            "oldObject": old,
            **extra,
        },
    }  # fmt: skip


class Recorder:
    """The controller's recorder as the router meets it: may fail, may be slow."""

    def __init__(self, *, fail: bool = False, hold: threading.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.changes: list[ModelChange] = []
        self.written = threading.Event()

    def __call__(self, change: ModelChange) -> None:
        if self.hold is not None:
            self.hold.wait(10)
        if self.fail:
            raise RuntimeError("database unavailable: connection refused")
        self.changes.append(change)
        self.written.set()


def admit(
    body: dict[str, Any],
    recorder: Callable[[ModelChange], None],
    *,
    record_wait: float = 1.0,
    while_waiting: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], float]:
    """Post the review; returns the answer and how long it took. ``while_waiting`` runs
    once the answer is in and before the app's loop ends (it may release a held record)."""
    app = FastAPI()
    app.include_router(
        admission_router(
            lambda: POLICIES, ControllerMetrics(), recorder=recorder, record_wait=record_wait
        )
    )

    async def go() -> tuple[dict[str, Any], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            began = time.monotonic()
            answer = await c.post(ADMISSION_PATH, json=body)
            took = time.monotonic() - began
        if while_waiting is not None:
            while_waiting()
        assert answer.status_code == 200, answer.text
        response: dict[str, Any] = answer.json()["response"]
        return response, took

    return asyncio.run(go())


def test_a_gitops_model_change_names_its_service_account() -> None:
    recorder = Recorder()
    response, _ = admit(review(isvc(V1), isvc(V2)), recorder)
    assert response["allowed"] is True
    (change,) = recorder.changes
    assert (change.username, change.user_uid, change.groups) == (
        GITOPS["username"], GITOPS["uid"], tuple(GITOPS["groups"])
    )  # fmt: skip
    assert (change.namespace, change.name, change.uid) == ("fraud", "scorer", "isvc-1")
    assert change.storage_uris == (V2,)
    assert change.admission_uid == "adm-7"


def test_a_change_that_starts_no_rollout_is_recorded_too() -> None:
    """A Standard-mode promotion by hand: the canary's model becomes the stable one."""
    recorder = Recorder()
    old = isvc(V1, annotations=STANDARD, canary=V2)
    response, _ = admit(review(old, isvc(V2, annotations=STANDARD)), recorder)
    assert response["allowed"] is True
    (change,) = recorder.changes
    assert change.storage_uris == ()
    assert "spec.predictor: s3://models/v1 -> s3://models/v2" in change.changes


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("dry run", review(isvc(V1), isvc(V2), dryRun=True)),
        ("the controller's traffic step", review(isvc(V1, percent=10), isvc(V1, percent=25))),
        ("not opted in", review(isvc(V1, annotations={}), isvc(V2, annotations={}))),
        (
            "denied: a Standard stable model changed in place",
            review(isvc(V1, annotations=STANDARD), isvc(V2, annotations=STANDARD)),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_nothing_is_recorded_for(case: str, body: dict[str, Any]) -> None:
    recorder = Recorder()
    admit(body, recorder)
    assert recorder.changes == [], case


def test_a_failed_record_never_blocks_the_update() -> None:
    with capture_logs() as logs:
        response, _ = admit(review(isvc(V1), isvc(V2)), Recorder(fail=True))
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch", "the first step is still set"
    (failed,) = [e for e in logs if e["event"] == "admission.model_change_not_recorded"]
    assert failed["user"] == GITOPS["username"]
    assert "connection refused" in failed["error"]


def test_a_slow_record_does_not_hold_the_answer_past_its_wait() -> None:
    """The apiserver gives the webhook a few seconds; a database that takes longer must not
    turn the update into a refusal. The record still lands afterwards."""
    hold = threading.Event()
    recorder = Recorder(hold=hold)
    with capture_logs() as logs:
        response, took = admit(
            review(isvc(V1), isvc(V2)), recorder, record_wait=0.2, while_waiting=hold.set
        )
    assert response["allowed"] is True
    assert took < 2.0, f"answered after {took:.1f} s"
    assert [e["event"] for e in logs if e["event"].startswith("admission.model_change")] == [
        "admission.model_change_record_slow"
    ]
    # released, the record lands on its worker thread, after the answer
    assert recorder.written.wait(5), "the record never landed"
    assert [c.storage_uris for c in recorder.changes] == [(V2,)], "written once released"


def test_the_record_holds_the_authenticated_user_and_what_changed() -> None:
    change = ModelChange(
        namespace="fraud", name="scorer", uid="isvc-1", storage_uris=(V2,),
        username="dev@bank.example", user_uid="u-1", groups=("developers",),
        admission_uid="adm-7", previous_uris=(V1,),
        changes=("spec.predictor: s3://models/v1 -> s3://models/v2",),
    )  # fmt: skip
    at = datetime(2026, 11, 20, 2, 14, tzinfo=UTC)
    entry = admitted_entry(change, at)
    assert entry.action == "model.change_admitted"
    assert entry.actor == Actor("human", "dev@bank.example", uid="u-1", groups=("developers",))
    assert entry.canary is not None
    assert entry.canary.storage_uri == V2
    assert entry.evidence == {
        "storage_uris": [V2],
        "previous_storage_uris": [V1],
        "changes": ["spec.predictor: s3://models/v1 -> s3://models/v2"],
        "admission_uid": "adm-7",
    }
    nameless = admitted_entry(
        ModelChange("fraud", "scorer", None, (V2,), None, None, (), "adm-8"), at
    )
    assert nameless.actor.kind == "unknown"
