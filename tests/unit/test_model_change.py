"""Who changes the model, from the admission request's ``userInfo`` (the apiserver's
authentication, never text the user typed): the starter of the rollout that follows, who
may not approve its promotion."""

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


def _isvc(
    uri: str, annotations: dict[str, str] | None = None, canary: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    }
    if canary is not None:
        spec["canary"] = [{"predictor": {"name": "c", "model": {"storageUri": canary}}}]
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
    )  # fmt: skip


def test_a_standard_mode_canary_entry_is_a_model_change() -> None:
    change = model_change(_request(_isvc("s3://m/v1"), _isvc("s3://m/v1", canary="s3://m/v2")))
    assert change is not None
    assert change.storage_uris == ("s3://m/v2",)


@pytest.mark.parametrize(
    ("case", "request_"),
    [
        ("same model", _request(_isvc("s3://m/v1"), _isvc("s3://m/v1"))),
        ("dry run", _request(_isvc("s3://m/v1"), _isvc("s3://m/v2"), dryRun=True)),
        ("not opted in", _request(_isvc("s3://m/v1", {}), _isvc("s3://m/v2", {}))),
        (
            "malformed opt-in",
            _request(_isvc("s3://m/v1"), _isvc("s3://m/v2", {"kserve-canary.io/enabled": "yes!"})),
        ),
        ("create", {**_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")), "operation": "CREATE"}),
        ("no user", {**_request(_isvc("s3://m/v1"), _isvc("s3://m/v2")), "userInfo": {}}),
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
