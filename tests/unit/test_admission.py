"""The admission decision (canary/admission.py), row by row.

Each row is an UPDATE of an InferenceService (old object → new object) and what the webhook
must answer: allowed untouched, allowed with a JSON patch, or denied, with the words the
user must see. The KSERVE.md section behind each rule is named in the row's id where it
is not obvious.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from canary.admission import (
    DEFAULT_RULES,
    PERCENT_PATH,
    AdmissionDecision,
    TemplateRules,
    failure,
    first_target,
    knative_template,
    response_for,
    review,
)
from canary.annotations import ENABLED, AnnotationError, parse_annotations
from canary.api.admission import decide
from canary.policy import PolicySet, RolloutPolicy, ShadowPolicy

Obj = dict[str, Any]

V1, V2, V3 = "s3://models/v1", "s3://models/v2", "s3://models/v3"
ON = {"kserve-canary.io/enabled": "true"}
STANDARD = {"serving.kserve.io/deploymentMode": "Standard"}

POLICIES = PolicySet(
    [
        RolloutPolicy(name="default"),  # steps 10, 25, 50, 100
        RolloutPolicy(name="fraud-scoring", steps=(5, 10, 25, 50, 100)),
        RolloutPolicy(name="shadow-first", shadow=ShadowPolicy(enabled=True)),
        RolloutPolicy(
            name="shadow-report",
            shadow=ShadowPolicy(enabled=True, after="report"),
        ),
    ],
    {},
)


def isvc(
    uri: str = V1,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    percent: Any = None,
    predictor: Mapping[str, Any] | None = None,
    canary: list[Obj] | None = None,
    status: Mapping[str, Any] | None = None,
) -> Obj:
    """An InferenceService in the stored (defaulted) ``model:`` form."""
    pred: Obj = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        pred["canaryTrafficPercent"] = percent
    pred.update(predictor or {})
    obj: Obj = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "scorer",
            "namespace": "fraud",
            "annotations": dict(ON if annotations is None else annotations),
            "labels": dict(labels or {}),
            "resourceVersion": "42",
        },
        "spec": {"predictor": pred},
        "status": dict(status or {}),
    }
    if canary is not None:
        obj["spec"]["canary"] = canary
    return obj


def std(uri: str = V1, **kwargs: Any) -> Obj:
    """A Standard-mode InferenceService (the annotation as KServe's defaulter stores it)."""
    annotations = {**ON, **STANDARD, **kwargs.pop("annotations", {})}
    return isvc(uri, annotations=annotations, **kwargs)


def entry(name: str, uri: str, percent: int | None = 10, **predictor: Any) -> Obj:
    """A spec.canary[] entry as the Standard router writes it."""
    out: Obj = {
        "predictor": {
            "name": name,
            "model": {
                "modelFormat": {"name": "sklearn"},
                "name": "kserve-container",
                "storageUri": uri,
            },
            **predictor,
        }
    }
    if percent is not None:
        out["trafficPercent"] = percent
    return out


def request(old: Obj | None, new: Obj | None, operation: str = "UPDATE", **extra: Any) -> Obj:
    return {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"},
        "resource": {
            "group": "serving.kserve.io",
            "version": "v1beta1",
            "resource": "inferenceservices",
        },
        "requestKind": {"group": "serving.kserve.io", "version": "v1beta1", "kind": "Inference"},
        "operation": operation,
        "namespace": "fraud",
        "name": "scorer",
        "userInfo": {"username": "argocd", "groups": ["system:authenticated"]},
        "object": new,
        "oldObject": old,
        "dryRun": False,
        "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
        **extra,
    }


def edited(obj: Obj, edit: Callable[[Obj], None]) -> Obj:
    out = copy.deepcopy(obj)
    edit(out)
    return out


def set_uri(uri: str) -> Callable[[Obj], None]:
    def edit(obj: Obj) -> None:
        obj["spec"]["predictor"]["model"]["storageUri"] = uri

    return edit


def percent_op(value: int) -> list[Obj]:
    return [{"op": "add", "path": PERCENT_PATH, "value": value}]


@dataclass(frozen=True)
class Row:
    id: str
    old: Obj | None
    new: Obj | None
    allowed: bool = True
    patch: list[Obj] = field(default_factory=list)
    says: tuple[str, ...] = ()  # words in the message (denied) or the warnings (allowed)
    operation: str = "UPDATE"
    rules: TemplateRules = DEFAULT_RULES


# A rolled-out Knative service (R1 at 100 %) and one mid-canary at 25 %.
ROLLED_OUT = isvc(V1)
PROMOTED = isvc(V2, percent=100)
MID_CANARY = isvc(V2, percent=25)

KNATIVE_ROWS = [
    Row(
        "model change without percent: first step added",
        ROLLED_OUT,
        isvc(V2),
        patch=percent_op(10),
        says=("canaryTrafficPercent set to 10", "'default'", "spec.predictor.model.storageUri"),
    ),
    Row(
        "model change with 100 in the same write: lowered",
        ROLLED_OUT,
        isvc(V2, percent=100),
        patch=percent_op(10),
        says=("lowered from 100", "in this update"),
    ),
    Row(
        "model change after a promotion keeps 100 from before: lowered",
        PROMOTED,
        isvc(V3, percent=100),
        patch=percent_op(10),
        says=("kept from before",),
    ),
    Row(
        "new model mid-canary (KSERVE.md §1.5 vii): 25 lowered to the first step",
        MID_CANARY,
        isvc(V3, percent=25),
        patch=percent_op(10),
        says=("from 25",),
    ),
    Row(
        "model change at the first step (the controller's start write): untouched",
        ROLLED_OUT,
        isvc(V2, percent=10),
    ),
    Row("model change below the first step: kept", ROLLED_OUT, isvc(V2, percent=5)),
    Row(
        "revert the model at 0 (finishing a rollback, KSERVE.md §1.5): untouched",
        isvc(V2, percent=0),
        isvc(V1, percent=0),
    ),
    Row(
        "field removed together with a model change: added",
        PROMOTED,
        isvc(V3),
        patch=percent_op(10),
    ),
    Row(
        "percent that is not a whole number: replaced",
        ROLLED_OUT,
        isvc(V2, percent="10"),
        patch=percent_op(10),
        says=("not a whole number",),
    ),
    Row(
        "only canaryTrafficPercent changes (a step): untouched",
        isvc(V2, percent=10),
        isvc(V2, percent=25),
    ),
    Row("promotion by 100: untouched", isvc(V2, percent=50), isvc(V2, percent=100)),
    Row("promotion by removing the field: untouched", isvc(V2, percent=50), isvc(V2)),
    Row(
        "rollback to 0 after promotion: untouched (the controller's own write)",
        PROMOTED,
        isvc(V2, percent=0),
    ),
    Row(
        "annotation that propagates (§1.2): added",
        ROLLED_OUT,
        isvc(annotations={**ON, "example.com/owner": "risk"}),
        patch=percent_op(10),
        says=("annotation example.com/owner",),
    ),
    Row(
        "kubectl rollout restart annotation propagates: added",
        ROLLED_OUT,
        isvc(annotations={**ON, "kubectl.kubernetes.io/restartedAt": "2026-11-24T10:00:00Z"}),
        patch=percent_op(10),
    ),
    Row(
        "label that propagates: added",
        ROLLED_OUT,
        isvc(labels={"team": "fraud"}),
        patch=percent_op(10),
        says=("label team",),
    ),
    Row(
        "predictor annotation: added",
        ROLLED_OUT,
        isvc(predictor={"annotations": {"example.com/x": "1"}}),
        patch=percent_op(10),
    ),
    Row(
        "last-applied-configuration is disallowed: untouched",
        ROLLED_OUT,
        isvc(annotations={**ON, "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
    ),
    Row(
        "min-scale annotation is disallowed (rewritten from minReplicas): untouched",
        ROLLED_OUT,
        isvc(annotations={**ON, "autoscaling.knative.dev/min-scale": "3"}),
    ),
    Row(
        "label on the disallowed list: untouched",
        ROLLED_OUT,
        isvc(labels={"networking.knative.dev/visibility": "cluster-local"}),
    ),
    Row(
        "rollout-duration moves onto the ksvc, not the template: untouched",
        ROLLED_OUT,
        isvc(annotations={**ON, "serving.knative.dev/rollout-duration": "60s"}),
    ),
    Row(
        "kserve-canary keys disallowed by the operator: editing them is untouched",
        ROLLED_OUT,
        isvc(annotations={**ON, "kserve-canary.io/policy": "fraud-scoring"}),
        rules=TemplateRules.with_extra(["kserve-canary.io/enabled", "kserve-canary.io/policy"]),
    ),
    Row(
        "kserve-canary keys not disallowed: switching policy mints a revision",
        ROLLED_OUT,
        isvc(annotations={**ON, "kserve-canary.io/policy": "fraud-scoring"}),
        patch=percent_op(5),
        says=("'fraud-scoring'",),
    ),
    Row(
        "minReplicas unset -> 1 is the same min-scale: untouched",
        ROLLED_OUT,
        isvc(predictor={"minReplicas": 1}),
    ),
    Row(
        "minReplicas 1 -> 2 changes min-scale: added",
        isvc(predictor={"minReplicas": 1}),
        isvc(predictor={"minReplicas": 2}),
        patch=percent_op(10),
        says=("annotation autoscaling.knative.dev/min-scale",),
    ),
    Row("maxReplicas 0 is no max-scale: untouched", ROLLED_OUT, isvc(predictor={"maxReplicas": 0})),
    Row(
        "scaleTarget becomes a template annotation: added",
        ROLLED_OUT,
        isvc(predictor={"scaleTarget": 5}),
        patch=percent_op(10),
    ),
    Row(
        "explicit kpa class equals the default: untouched",
        ROLLED_OUT,
        isvc(annotations={**ON, "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"}),
    ),
    Row(
        "deploymentStrategy does not reach a Knative template: untouched",
        ROLLED_OUT,
        isvc(predictor={"deploymentStrategy": {"type": "Recreate"}}),
    ),
    Row(
        "Serverless is stored as Knative by the defaulter: untouched",
        isvc(annotations={**ON, "serving.kserve.io/deploymentMode": "Knative"}),
        isvc(annotations={**ON, "serving.kserve.io/deploymentMode": "Serverless"}),
    ),
    Row(
        "resources change the pod spec: added",
        ROLLED_OUT,
        isvc(
            predictor={
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "storageUri": V1,
                    "resources": {"limits": {"cpu": "2"}},
                }
            }
        ),
        patch=percent_op(10),
        says=("spec.predictor.model.resources",),
    ),
    Row(
        "timeout reaches the revision spec: added",
        ROLLED_OUT,
        isvc(predictor={"timeout": 30}),
        patch=percent_op(10),
    ),
    Row(
        "status-only difference: untouched",
        ROLLED_OUT,
        edited(ROLLED_OUT, lambda o: o.update(status={"url": "http://x"})),
    ),
    # policies and the first target
    Row(
        "fraud-scoring policy: its first step 5",
        isvc(annotations={**ON, "kserve-canary.io/policy": "fraud-scoring"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/policy": "fraud-scoring"}),
        patch=percent_op(5),
    ),
    Row(
        "shadow before canary: 0",
        isvc(annotations={**ON, "kserve-canary.io/policy": "shadow-first"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/policy": "shadow-first"}),
        patch=percent_op(0),
    ),
    Row(
        "a shadow that only reports still shadows first: 0",
        isvc(annotations={**ON, "kserve-canary.io/policy": "shadow-report"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/policy": "shadow-report"}),
        patch=percent_op(0),
    ),
    Row(
        "shadow before canary with 10 in the write: lowered to 0",
        isvc(annotations={**ON, "kserve-canary.io/policy": "shadow-first"}),
        isvc(V2, percent=10, annotations={**ON, "kserve-canary.io/policy": "shadow-first"}),
        patch=percent_op(0),
    ),
    # not opted in
    Row("no kserve-canary annotation: untouched", isvc(annotations={}), isvc(V2, annotations={})),
    Row(
        "enabled false: untouched",
        isvc(annotations={"kserve-canary.io/enabled": "false"}),
        isvc(V2, annotations={"kserve-canary.io/enabled": "false"}),
    ),
    Row(
        "opted out in the same update: untouched",
        ROLLED_OUT,
        isvc(V2, annotations={"kserve-canary.io/enabled": "false"}),
    ),
    Row(
        "malformed keys on an object opted out: untouched",
        isvc(annotations={"kserve-canary.io/enabled": "false", "kserve-canary.io/polcy": "x"}),
        isvc(V2, annotations={"kserve-canary.io/enabled": "false", "kserve-canary.io/polcy": "x"}),
    ),
    # malformed annotations and unknown policies
    Row(
        "unknown kserve-canary key with a model change: denied",
        isvc(annotations={**ON, "kserve-canary.io/polcy": "x"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/polcy": "x"}),
        allowed=False,
        says=("kserve-canary.io/polcy", "unknown kserve-canary annotation", "allowed:"),
    ),
    Row(
        "adding a malformed policy value mints a revision: denied",
        ROLLED_OUT,
        isvc(annotations={**ON, "kserve-canary.io/policy": "Fraud_Scoring"}),
        allowed=False,
        says=("kserve-canary.io/policy", "'Fraud_Scoring'", "allowed:"),
    ),
    Row(
        "enabled is not true/false: denied",
        isvc(annotations={"kserve-canary.io/enabled": "yes"}),
        isvc(V2, annotations={"kserve-canary.io/enabled": "yes"}),
        allowed=False,
        says=("kserve-canary.io/enabled", "'yes'", '"true" or "false"'),
    ),
    Row(
        "bad metric profile: denied",
        isvc(annotations={**ON, "kserve-canary.io/metric-profile": "x"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/metric-profile": "x"}),
        allowed=False,
        says=("kserve-canary.io/metric-profile", "knative-otel"),
    ),
    Row(
        "malformed annotation but no template change: untouched",
        isvc(annotations={**ON, "kserve-canary.io/polcy": "x"}, percent=10),
        isvc(annotations={**ON, "kserve-canary.io/polcy": "x"}, percent=25),
    ),
    Row(
        "unknown policy with a model change: denied",
        isvc(annotations={**ON, "kserve-canary.io/policy": "nope"}),
        isvc(V2, annotations={**ON, "kserve-canary.io/policy": "nope"}),
        allowed=False,
        says=("kserve-canary.io/policy", "'nope'", "default, fraud-scoring"),
    ),
    # operations and objects the webhook leaves alone
    Row(
        "CREATE: untouched (KServe ignores the percent on a first deployment)",
        None,
        isvc(V1),
        operation="CREATE",
    ),
    Row("DELETE: untouched", ROLLED_OUT, None, operation="DELETE"),
]

STANDARD_ROWS = [
    Row("stable model change without a canary: denied", std(V1), std(V2), allowed=False,
        says=("Standard deployment mode", "spec.predictor.model.storageUri", "spec.canary[]",
              "canary rollout start")),
    Row("stable pod spec change: denied", std(V1),
        std(predictor={"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1,
                                 "env": [{"name": "X", "value": "1"}]}}),
        allowed=False, says=("spec.predictor.model.env",)),
    Row("RawDeployment annotation is Standard: denied",
        isvc(annotations={**ON, "serving.kserve.io/deploymentMode": "RawDeployment"}),
        isvc(V2, annotations={**ON, "serving.kserve.io/deploymentMode": "RawDeployment"}),
        allowed=False, says=("Standard",)),
    Row("recorded status.deploymentMode wins over a missing annotation: denied",
        isvc(status={"deploymentMode": "Standard"}), isvc(V2), allowed=False,
        says=("Standard",)),
    Row("cluster default Standard: denied", isvc(), isvc(V2), allowed=False,
        rules=TemplateRules(default_deployment_mode="Standard"), says=("Standard",)),
    Row("promotion as the controller writes it (KSERVE.md §2.5): allowed",
        std(V1, canary=[entry("canary", V2, 50)]),
        std(V2, predictor={"name": "canary"})),
    Row("promotion by model change only: allowed", std(V1, canary=[entry("canary", V2, 50)]),
        std(V2)),
    Row("promotion of one of two canaries, the other kept: allowed",
        std(V1, canary=[entry("a", V2, 20), entry("b", V3, 20)]),
        std(V3, predictor={"name": "b"}, canary=[entry("a", V2, 20)])),
    Row("promotion-looking change that keeps the entry: denied",
        std(V1, canary=[entry("canary", V2, 50)]),
        std(V2, predictor={"name": "canary"}, canary=[entry("canary", V2, 50)]),
        allowed=False),
    Row("stable change to a model no removed entry ran: denied",
        std(V1, canary=[entry("canary", V2, 50)]), std(V3), allowed=False),
    Row("promotion when the canary had its own resources: they must come along",
        std(V1, canary=[entry("canary", V2, 50, resources={"limits": {"cpu": "2"}})]),
        std(V2), allowed=False),
    Row("new canary entry at 50: trafficPercent set to the first step", std(V1),
        std(V1, canary=[entry("canary", V2, 50)]),
        patch=[{"op": "add", "path": "/spec/canary/0/trafficPercent", "value": 10}],
        says=("new canary model 'canary': trafficPercent 50 -> 10",)),
    Row("new canary entry at the first step (the controller's start write): untouched",
        std(V1), std(V1, canary=[entry("canary", V2, 10)])),
    Row("new canary entry without trafficPercent: added", std(V1),
        std(V1, canary=[entry("canary", V2, None)]),
        patch=[{"op": "add", "path": "/spec/canary/0/trafficPercent", "value": 10}]),
    Row("second entry added: its own index", std(V1, canary=[entry("a", V2, 20)]),
        std(V1, canary=[entry("a", V2, 20), entry("b", V3, 40)]),
        patch=[{"op": "add", "path": "/spec/canary/1/trafficPercent", "value": 10}]),
    Row("canary model changed under the same name: lowered", std(V1, canary=[entry("c", V2, 25)]),
        std(V1, canary=[entry("c", V3, 25)]),
        patch=[{"op": "add", "path": "/spec/canary/0/trafficPercent", "value": 10}]),
    Row("canary step (trafficPercent only): untouched", std(V1, canary=[entry("c", V2, 10)]),
        std(V1, canary=[entry("c", V2, 25)])),
    Row("canary replicas only: untouched", std(V1, canary=[entry("c", V2, 10)]),
        std(V1, canary=[entry("c", V2, 10, minReplicas=2)])),
    Row("rollback (entry removed, stable unchanged): untouched",
        std(V1, canary=[entry("c", V2, 50)]), std(V1)),
    Row("stable scaling change: untouched", std(V1), std(V1, predictor={"minReplicas": 3})),
    Row("metadata change (rolls pods, same model): untouched", std(V1),
        std(V1, annotations={"example.com/owner": "risk"})),
    Row("canaryTrafficPercent is ignored in Standard mode: untouched", std(V1),
        std(V1, percent=30)),
    Row("new canary with the shadow-first policy: 0",
        std(V1, annotations={"kserve-canary.io/policy": "shadow-first"}),
        std(V1, annotations={"kserve-canary.io/policy": "shadow-first"},
            canary=[entry("c", V2, 10)]),
        patch=[{"op": "add", "path": "/spec/canary/0/trafficPercent", "value": 0}]),
    Row("new canary with an unknown policy: denied",
        std(V1, annotations={"kserve-canary.io/policy": "nope"}),
        std(V1, annotations={"kserve-canary.io/policy": "nope"}, canary=[entry("c", V2, 10)]),
        allowed=False, says=("'nope'",)),
    Row("promotion needs no policy: allowed even with an unknown one",
        std(V1, annotations={"kserve-canary.io/policy": "nope"}, canary=[entry("c", V2, 50)]),
        std(V2, annotations={"kserve-canary.io/policy": "nope"}, predictor={"name": "c"})),
    Row("not opted in: untouched", isvc(annotations=STANDARD), isvc(V2, annotations=STANDARD)),
]  # fmt: skip


def decision_for(row: Row) -> AdmissionDecision:
    return review(request(row.old, row.new, row.operation), POLICIES, rules=row.rules)


def check(row: Row, decision: AdmissionDecision) -> None:
    assert decision.allowed is row.allowed, decision
    if row.allowed:
        assert list(decision.patch) == row.patch, decision
        text = " | ".join(decision.warnings)
        if not row.patch:
            assert decision.warnings == (), decision
    else:
        assert decision.patch == ()
        assert decision.code == 403
        text = decision.message
        assert text.startswith("kserve-canary"), text
    for words in row.says:
        assert words in text, f"{words!r} not in {text!r}"


@pytest.mark.parametrize("row", KNATIVE_ROWS, ids=lambda r: r.id)
def test_knative(row: Row) -> None:
    check(row, decision_for(row))


@pytest.mark.parametrize("row", STANDARD_ROWS, ids=lambda r: r.id)
def test_standard(row: Row) -> None:
    check(row, decision_for(row))


def apply_patch(obj: Obj, ops: list[Obj]) -> Obj:
    """The RFC 6902 ``add`` op on an object member, as the apiserver applies it."""
    out = copy.deepcopy(obj)
    for op in ops:
        assert op["op"] == "add"
        *parents, last = op["path"].lstrip("/").split("/")
        target: Any = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = op["value"]
    return out


@pytest.mark.parametrize(
    "row",
    [r for r in KNATIVE_ROWS + STANDARD_ROWS if r.patch and r.new is not None],
    ids=lambda r: r.id,
)
def test_patched_object_passes_untouched_on_reinvocation(row: Row) -> None:
    """reinvocationPolicy IfNeeded may call the webhook again on its own result: the second
    answer must change nothing."""
    assert row.new is not None
    once = apply_patch(row.new, row.patch)
    again = review(request(row.old, once), POLICIES, rules=row.rules)
    assert again.allowed
    assert again.patch == ()


def test_the_patch_sets_the_percent_on_the_object() -> None:
    decision = review(request(ROLLED_OUT, isvc(V2, percent=100)), POLICIES)
    patched = apply_patch(isvc(V2, percent=100), list(decision.patch))
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patched["spec"]["predictor"]["model"]["storageUri"] == V2


# --- requests the webhook leaves alone or cannot read -------------------------------------


def test_status_subresource_is_untouched() -> None:
    decision = review(request(ROLLED_OUT, isvc(V2), subResource="status"), POLICIES)
    assert decision.allowed
    assert decision.patch == ()


def test_other_kinds_are_untouched() -> None:
    req = request(ROLLED_OUT, isvc(V2))
    req["kind"] = {"group": "serving.kserve.io", "version": "v1alpha1", "kind": "ServingRuntime"}
    assert review(req, POLICIES) == AdmissionDecision(
        allowed=True, message="not an InferenceService update; nothing to check"
    )


def test_unmanaged_deployment_mode_passes_with_a_warning() -> None:
    mode = {**ON, "serving.kserve.io/deploymentMode": "ModelMesh"}
    decision = review(request(isvc(annotations=mode), isvc(V2, annotations=mode)), POLICIES)
    assert decision.allowed
    assert decision.patch == ()
    assert "'ModelMesh'" in decision.warnings[0]


def test_update_without_old_object_of_an_opted_in_service_is_denied() -> None:
    decision = review(request(None, isvc(V2)), POLICIES)
    assert not decision.allowed
    assert decision.internal_error
    assert decision.code == 500
    assert "without object and oldObject" in decision.message


def test_malformed_request_of_an_object_not_opted_in_is_allowed() -> None:
    req = request(isvc(annotations={}), isvc(V2, annotations={}))
    del req["uid"]
    decision = review(req, POLICIES)
    assert decision.allowed
    assert decision.result == "error"
    assert "uid" in decision.message


def test_malformed_request_of_an_opted_in_object_is_denied() -> None:
    req = request(ROLLED_OUT, isvc(V2))
    req["kind"] = "InferenceService"  # not a GroupVersionKind
    decision = review(req, POLICIES)
    assert not decision.allowed
    assert decision.result == "error"
    assert "malformed AdmissionReview request: kind" in decision.message


def test_a_request_too_broken_to_tell_is_denied() -> None:
    decision = review({}, POLICIES)
    assert not decision.allowed
    assert decision.internal_error


@pytest.mark.parametrize(
    ("req", "allowed"),
    [
        (request(ROLLED_OUT, isvc(V2)), False),
        (request(isvc(annotations={}), isvc(V2, annotations={})), True),
        (request(None, isvc(V2), operation="CREATE"), True),
        ("not even a mapping", False),
    ],
    ids=["opted in", "not opted in", "create", "garbage"],
)
def test_failure_blocks_only_opted_in_updates(req: Any, allowed: bool) -> None:
    decision = failure(req, "the database is on fire")
    assert decision.allowed is allowed
    assert decision.result == "error"
    assert "the database is on fire" in decision.message


# --- the HTTP layer's decision (canary/api/admission.py) -----------------------------------


def broken_policies() -> PolicySet:
    raise RuntimeError("policy directory unreadable")


def test_policies_that_cannot_load_deny_only_what_needs_them() -> None:
    rules = TemplateRules()
    needs = decide(request(ROLLED_OUT, isvc(V2)), broken_policies, rules)
    assert not needs.allowed
    assert needs.result == "error"
    assert "policy directory unreadable" in needs.message
    step = decide(request(isvc(V2, percent=10), isvc(V2, percent=25)), broken_policies, rules)
    assert step.allowed
    assert step.result == "allowed"
    other = decide(request(isvc(annotations={}), isvc(V2, annotations={})), broken_policies, rules)
    assert other.allowed


def test_decide_turns_a_bug_into_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any, **__: Any) -> AdmissionDecision:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr("canary.api.admission.review", explode)
    rules = TemplateRules()
    opted_in = decide(request(ROLLED_OUT, isvc(V2)), lambda: POLICIES, rules)
    assert not opted_in.allowed
    assert "ZeroDivisionError" in opted_in.message
    plain = decide(request(isvc(annotations={}), isvc(V2, annotations={})), lambda: POLICIES, rules)
    assert plain.allowed
    assert plain.result == "error"


# --- the response envelope -----------------------------------------------------------------


def envelope(req: Obj) -> Obj:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def test_response_with_a_patch() -> None:
    req = request(ROLLED_OUT, isvc(V2))
    decision = review(req, POLICIES)
    response = response_for(envelope(req), decision)
    assert response["apiVersion"] == "admission.k8s.io/v1"
    assert response["kind"] == "AdmissionReview"
    body = response["response"]
    assert body["uid"] == req["uid"]
    assert body["allowed"] is True
    assert body["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(body["patch"])) == percent_op(10)
    assert body["warnings"] == list(decision.warnings)
    assert "status" not in body


def test_response_when_denied() -> None:
    req = request(std(V1), std(V2))
    response = response_for(envelope(req), review(req, POLICIES))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "spec.canary[]" in response["status"]["message"]
    assert "patch" not in response
    assert "patchType" not in response


def test_response_when_untouched() -> None:
    req = request(isvc(V2, percent=10), isvc(V2, percent=25))
    response = response_for(envelope(req), review(req, POLICIES))
    assert response["response"] == {"uid": req["uid"], "allowed": True}


def test_warnings_fit_the_apiserver_limit() -> None:
    """Kubernetes advises warnings of at most 120 characters and may cut those over 256."""
    for row in KNATIVE_ROWS + STANDARD_ROWS:
        for warning in decision_for(row).warnings:
            assert len(warning) <= 256, warning


# --- helpers -------------------------------------------------------------------------------


def test_first_target() -> None:
    assert first_target(POLICIES.get("default")) == 10
    assert first_target(POLICIES.get("fraud-scoring")) == 5
    assert first_target(POLICIES.get("shadow-first")) == 0
    assert first_target(POLICIES.get("shadow-report")) == 0


def test_knative_template_ignores_only_what_stays_off_the_template() -> None:
    base = knative_template(isvc(V1))
    assert base["annotations"]["autoscaling.knative.dev/min-scale"] == "1"
    assert base["annotations"]["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert "canaryTrafficPercent" not in base["spec"]
    assert knative_template(isvc(V1, percent=30)) == base
    assert knative_template(isvc(V2)) != base


def test_decision_results() -> None:
    assert AdmissionDecision(allowed=True).result == "allowed"
    assert AdmissionDecision(allowed=True, patch=({"op": "add"},)).result == "patched"
    assert AdmissionDecision(allowed=False).result == "denied"
    assert AdmissionDecision(allowed=True, internal_error=True).result == "error"


# --- kserve-canary.io/enabled that is not a boolean: fail closed ---------------------------

NOT_BOOLEANS = ("yes", "True", "1", "on", "", "TRUE", " false")


@pytest.mark.parametrize("value", NOT_BOOLEANS)
@pytest.mark.parametrize("make", [isvc, std], ids=["knative", "standard"])
def test_setting_enabled_to_a_non_boolean_is_denied_with_the_allowed_values(
    value: str, make: Callable[..., Obj]
) -> None:
    """Whatever else the update does (here nothing else at all)."""
    old = make(annotations={"kserve-canary.io/enabled": "true"})
    new = make(annotations={"kserve-canary.io/enabled": value})
    decision = review(request(old, new), POLICIES)
    assert not decision.allowed
    assert "kserve-canary.io/enabled" in decision.message
    assert repr(value) in decision.message
    assert '"true" or "false"' in decision.message


@pytest.mark.parametrize("value", NOT_BOOLEANS)
def test_a_new_model_under_a_non_boolean_opt_in_is_denied_not_passed_uncapped(
    value: str,
) -> None:
    for old, new in (
        (isvc(annotations={ENABLED: value}), isvc(V2, annotations={ENABLED: value})),
        (isvc(annotations={}), isvc(V2, annotations={ENABLED: value})),
        (std(annotations={ENABLED: value}), std(annotations={ENABLED: value},
                                                canary=[entry("canary", V2, None)])),
    ):  # fmt: skip
        decision = review(request(old, new), POLICIES)
        assert not decision.allowed, decision
        assert '"true" or "false"' in decision.message


def test_an_unrelated_update_keeping_an_old_non_boolean_value_passes() -> None:
    """A finalizer or a label that reaches no template: nothing to cap, nothing denied."""
    old = isvc(annotations={ENABLED: "yes"}, percent=10)
    new = isvc(annotations={ENABLED: "yes"}, percent=10)
    new["metadata"]["finalizers"] = ["inferenceservice.finalizers"]
    assert review(request(old, new), POLICIES).allowed


@pytest.mark.parametrize("value", NOT_BOOLEANS)
def test_an_outage_blocks_updates_under_a_non_boolean_opt_in(value: str) -> None:
    req = request(isvc(annotations={ENABLED: value}), isvc(V2, annotations={ENABLED: value}))
    assert not failure(req, "boom").allowed


def test_the_webhook_and_the_controller_read_the_opt_in_the_same_way() -> None:
    """Every value: the webhook leaves alone exactly what the controller does not manage."""
    for value in ("true", "false", *NOT_BOOLEANS):
        annotations = {ENABLED: value}
        try:
            controller_manages: bool | None = parse_annotations(annotations).enabled
        except AnnotationError:
            controller_manages = None  # reported as PolicyInvalid, not managed
        decision = review(
            request(isvc(annotations=annotations), isvc(V2, annotations=annotations)), POLICIES
        )
        if controller_manages is None:
            assert not decision.allowed, value
            continue
        assert decision.allowed, value
        assert bool(decision.patch) is controller_manages, value
