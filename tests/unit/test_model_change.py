"""Who changes the model, from the admission request's ``userInfo`` (the apiserver's
authentication, never text the user typed): recorded for every update that changes the
models of an opted-in InferenceService, whether or not a rollout follows (the sender of the
update that set a model is the starter of its rollout, who may not approve its promotion)."""

from __future__ import annotations

from typing import Any

import pytest

from canary.admission import ModelChange, model_change

OPTED_IN = {"kserve-canary.io/enabled": "true"}
USER = {
    "username": "dev@bank.example",
    "uid": "u-1",
    "groups": ["developers", "system:authenticated"],
}


STANDARD = {**OPTED_IN, "serving.kserve.io/deploymentMode": "Standard"}


def _isvc(
    uri: str,
    annotations: dict[str, str] | None = None,
    canary: str | None = None,
    *,
    percent: int | None = None,
    canary_percent: int | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    if image is not None:
        predictor["model"]["runtimeVersion"] = image
    spec: dict[str, Any] = {"predictor": predictor}
    if canary is not None:
        entry: dict[str, Any] = {"predictor": {"name": "c", "model": {"storageUri": canary}}}
        if canary_percent is not None:
            entry["trafficPercent"] = canary_percent
        spec["canary"] = [entry]
    return {
        "metadata": {"name": "scorer", "namespace": "credit", "uid": "isvc-1",
                     "annotations": OPTED_IN if annotations is None else annotations},
        "spec": spec,
    }  # fmt: skip


def _request(old: dict[str, Any], new: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "uid": "adm-1",
        "kind": {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"},
        "operation": "UPDATE",
        "namespace": "credit",
        "name": "scorer",
        "object": new,
        "oldObject": old,
        "userInfo": USER,
        **extra,
    }


def test_a_new_model_is_recorded_with_who_sent_it() -> None:
    change = model_change(_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")))
    assert change == ModelChange(
        namespace="credit", name="scorer", uid="isvc-1", storage_uris=("s3://m/v2",),
        username="dev@bank.example", user_uid="u-1",
        groups=("developers", "system:authenticated"), admission_uid="adm-1",
        previous_uris=("s3://m/v1",), changes=("spec.predictor: s3://m/v1 -> s3://m/v2",),
    )  # fmt: skip


def test_a_standard_mode_canary_entry_is_a_model_change() -> None:
    change = model_change(
        _request(_isvc("s3://m/v1", STANDARD), _isvc("s3://m/v1", STANDARD, canary="s3://m/v2"))
    )
    assert change is not None
    assert change.storage_uris == ("s3://m/v2",)
    assert change.changes == ("spec.canary[c]: added s3://m/v2",)


def test_a_promotion_by_hand_is_recorded_though_it_brings_no_new_model() -> None:
    """Standard mode: the canary entry's model becomes the stable one and the entry goes.
    Nothing new arrives, but who made the canary model the stable one is in the trail."""
    old = _isvc("s3://m/v1", STANDARD, canary="s3://m/v2")
    change = model_change(_request(old, _isvc("s3://m/v2", STANDARD)))
    assert change is not None
    assert change.storage_uris == ()
    assert change.previous_uris == ("s3://m/v1", "s3://m/v2")
    assert change.changes == (
        "spec.canary[c]: removed (s3://m/v2)",
        "spec.predictor: s3://m/v1 -> s3://m/v2",
    )
    assert change.username == "dev@bank.example"


def test_removing_a_canary_model_is_recorded() -> None:
    old = _isvc("s3://m/v1", STANDARD, canary="s3://m/v2")
    change = model_change(_request(old, _isvc("s3://m/v1", STANDARD)))
    assert change is not None
    assert change.changes == ("spec.canary[c]: removed (s3://m/v2)",)


def test_a_new_knative_revision_without_a_new_model_is_recorded() -> None:
    """A new runtime under the same storageUri mints a revision, and a rollout follows."""
    change = model_change(_request(_isvc("s3://m/v1"), _isvc("s3://m/v1", image="1.5.0")))
    assert change is not None
    assert change.storage_uris == ()
    assert change.changes == ("new revision: spec.predictor.model.runtimeVersion",)


def test_without_a_user_the_change_is_still_recorded_with_no_name() -> None:
    """The apiserver always names one; a review without it must not hide the change."""
    for info in ({}, {"uid": "u-2"}, {"username": ""}):
        request = {**_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")), "userInfo": info}
        change = model_change(request)
        assert change is not None
        assert change.username is None
        assert change.storage_uris == ("s3://m/v2",)


@pytest.mark.parametrize(
    ("case", "request_"),
    [
        ("same model", _request(_isvc("s3://m/v1"), _isvc("s3://m/v1"))),
        (
            "a traffic step (Knative)",
            _request(_isvc("s3://m/v1", percent=10), _isvc("s3://m/v1", percent=25)),
        ),
        (
            "a traffic step (Standard)",
            _request(
                _isvc("s3://m/v1", STANDARD, canary="s3://m/v2", canary_percent=10),
                _isvc("s3://m/v1", STANDARD, canary="s3://m/v2", canary_percent=25),
            ),
        ),
        ("dry run", _request(_isvc("s3://m/v1"), _isvc("s3://m/v2"), dryRun=True)),
        ("not opted in", _request(_isvc("s3://m/v1", {}), _isvc("s3://m/v2", {}))),
        (
            "malformed opt-in",
            _request(_isvc("s3://m/v1"), _isvc("s3://m/v2", {"kserve-canary.io/enabled": "yes!"})),
        ),
        ("create", {**_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")), "operation": "CREATE"}),
        ("status", {**_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")), "subResource": "status"}),
        (
            "not an isvc",
            {
                **_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")),
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            },
        ),
        ("garbage", {"uid": 3}),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_no_model_change_is_recorded(case: str, request_: dict[str, Any]) -> None:
    assert model_change(request_) is None, case
