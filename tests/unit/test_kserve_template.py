"""Which InferenceService edits mint a new Knative revision (KSERVE.md §1.2).

KServe rebuilds the ksvc template on every reconcile and Knative creates a revision exactly
when the template changes, so each row below edits an InferenceService and checks whether
the template digest moved — that is, whether a user would see a new ``-NNNNN`` revision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from testbed.kserve.template import (
    KServeConfig,
    build_template,
    effective_annotations,
    implementations,
    predictor_service_name,
    storage_uri,
)

Isvc = dict[str, Any]


def base_isvc() -> Isvc:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "fraud",
            "namespace": "models",
            "annotations": {"team": "risk"},
            "labels": {"app.kubernetes.io/part-of": "scoring"},
        },
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/v1"}
            }
        },
    }


def predictor(isvc: Isvc) -> dict[str, Any]:
    result: dict[str, Any] = isvc["spec"]["predictor"]
    return result


def annotate(key: str, value: str) -> Callable[[Isvc], None]:
    def edit(isvc: Isvc) -> None:
        isvc["metadata"]["annotations"][key] = value

    return edit


def label(key: str, value: str) -> Callable[[Isvc], None]:
    def edit(isvc: Isvc) -> None:
        isvc["metadata"]["labels"][key] = value

    return edit


def set_predictor(key: str, value: Any) -> Callable[[Isvc], None]:
    def edit(isvc: Isvc) -> None:
        predictor(isvc)[key] = value

    return edit


def set_storage(uri: str) -> Callable[[Isvc], None]:
    def edit(isvc: Isvc) -> None:
        predictor(isvc)["model"]["storageUri"] = uri

    return edit


EDITS: list[tuple[str, Callable[[Isvc], None], bool]] = [
    ("canaryTrafficPercent set", set_predictor("canaryTrafficPercent", 10), False),
    ("canaryTrafficPercent 100", set_predictor("canaryTrafficPercent", 100), False),
    ("new storageUri", set_storage("s3://models/v2"), True),
    ("example.com/foo annotation", annotate("example.com/foo", "bar"), True),
    ("changed annotation value", annotate("team", "fraud-ops"), True),
    ("serving.kserve.io/* annotations propagate", annotate("serving.kserve.io/x", "1"), True),
    (
        "kubectl last-applied is disallowed",
        annotate("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        False,
    ),
    ("user min-scale is disallowed", annotate("autoscaling.knative.dev/min-scale", "3"), False),
    ("user max-scale is disallowed", annotate("autoscaling.knative.dev/max-scale", "9"), False),
    (
        "source-uri annotation is disallowed",
        annotate("internal.serving.kserve.io/storage-initializer-sourceuri", "s3://x"),
        False,
    ),
    ("modelFormat key is disallowed", annotate("modelFormat", "x"), False),
    ("match is exact: modelFormat2 passes", annotate("modelFormat2", "x"), True),
    (
        "initial-scale annotation propagates",
        annotate("autoscaling.knative.dev/initial-scale", "2"),
        True,
    ),
    ("restartedAt propagates", annotate("kubectl.kubernetes.io/restartedAt", "now"), True),
    (
        "rollout-duration moves to the ksvc",
        annotate("serving.knative.dev/rollout-duration", "60s"),
        False,
    ),
    (
        "deploymentMode annotation propagates",
        annotate("serving.kserve.io/deploymentMode", "Knative"),
        True,
    ),
    ("new label", label("owner", "risk"), True),
    (
        "visibility label is disallowed",
        label("networking.knative.dev/visibility", "cluster-local"),
        False,
    ),
    ("minReplicas 1 → 2 (min-scale written back)", set_predictor("minReplicas", 2), True),
    ("minReplicas 1 explicit equals the default", set_predictor("minReplicas", 1), False),
    ("maxReplicas 0 adds nothing", set_predictor("maxReplicas", 0), False),
    ("maxReplicas 5 adds max-scale", set_predictor("maxReplicas", 5), True),
    ("scaleTarget", set_predictor("scaleTarget", 10), True),
    ("timeout", set_predictor("timeout", 30), True),
    ("containerConcurrency", set_predictor("containerConcurrency", 4), True),
    ("predictor annotation", set_predictor("annotations", {"example.com/x": "1"}), True),
    ("predictor label", set_predictor("labels", {"tier": "gold"}), True),
    ("predictor.name changes the ksvc, not the template", set_predictor("name", "blue"), False),
    ("logger", set_predictor("logger", {"mode": "all", "url": "http://sink"}), True),
    ("resources", set_predictor("resources", {"limits": {"cpu": "1"}}), True),
]


@pytest.mark.parametrize(
    ("edit", "new_revision"), [(e, n) for _, e, n in EDITS], ids=[d for d, _, _ in EDITS]
)
def test_which_edits_create_a_revision(edit: Callable[[Isvc], None], new_revision: bool) -> None:
    before = base_isvc()
    after = copy.deepcopy(before)
    edit(after)
    changed = build_template(before).digest != build_template(after).digest
    assert changed is new_revision


def test_changing_canary_percent_between_steps_keeps_the_revision() -> None:
    ten, twenty_five, none = base_isvc(), base_isvc(), base_isvc()
    predictor(ten)["canaryTrafficPercent"] = 10
    predictor(twenty_five)["canaryTrafficPercent"] = 25
    assert (
        build_template(ten).digest
        == build_template(twenty_five).digest
        == build_template(none).digest
    )


def test_a_key_added_to_the_disallowed_list_stops_minting_revisions() -> None:
    before = base_isvc()
    after = copy.deepcopy(before)
    after["metadata"]["annotations"]["kserve-canary.io/state"] = "progressing"
    default, configured = KServeConfig(), KServeConfig().with_disallowed(["kserve-canary.io/state"])
    assert build_template(before, default).digest != build_template(after, default).digest
    assert build_template(before, configured).digest == build_template(after, configured).digest
    # appended to, not replacing, the defaults
    assert "kubectl.kubernetes.io/last-applied-configuration" in configured.annotation_disallowed


def test_label_disallowed_list_is_configurable() -> None:
    before = base_isvc()
    after = copy.deepcopy(before)
    after["metadata"]["labels"]["kserve-canary.io/step"] = "2"
    configured = KServeConfig().with_disallowed(labels=["kserve-canary.io/step"])
    assert build_template(before, configured).digest == build_template(after, configured).digest
    assert build_template(after, configured).ksvc_labels["kserve-canary.io/step"] == "2"


def test_template_annotations_carry_what_kserve_writes_back() -> None:
    isvc = base_isvc()
    isvc["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = "7"  # filtered
    isvc["metadata"]["annotations"]["serving.knative.dev/rollout-duration"] = "120s"
    template = build_template(isvc)
    assert template.annotations["autoscaling.knative.dev/min-scale"] == "1"  # default, not 7
    assert "autoscaling.knative.dev/max-scale" not in template.annotations
    assert template.annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert (
        template.annotations["internal.serving.kserve.io/storage-initializer-sourceuri"]
        == "s3://models/v1"
    )
    assert template.annotations["team"] == "risk"
    assert "serving.knative.dev/rollout-duration" not in template.annotations
    assert template.ksvc_annotations == {"serving.knative.dev/rollout-duration": "120s"}


def test_min_and_max_scale_follow_the_replica_fields() -> None:
    isvc = base_isvc()
    predictor(isvc).update(minReplicas=0, maxReplicas=4, scaleTarget=5, scaleMetric="rps")
    annotations = build_template(isvc).annotations
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    assert annotations["autoscaling.knative.dev/target"] == "5"
    assert annotations["autoscaling.knative.dev/metric"] == "rps"


def test_a_user_autoscaling_class_is_kept() -> None:
    isvc = base_isvc()
    isvc["metadata"]["annotations"]["autoscaling.knative.dev/class"] = "hpa.autoscaling.knative.dev"
    assert (
        build_template(isvc).annotations["autoscaling.knative.dev/class"]
        == "hpa.autoscaling.knative.dev"
    )


def test_predictor_annotations_win_over_the_inference_service() -> None:
    isvc = base_isvc()
    predictor(isvc)["annotations"] = {"team": "platform"}
    assert build_template(isvc).annotations["team"] == "platform"


def test_template_labels_are_filtered_but_ksvc_labels_are_not() -> None:
    isvc = base_isvc()
    isvc["metadata"]["labels"]["networking.knative.dev/visibility"] = "cluster-local"
    template = build_template(isvc)
    assert template.labels["serving.kserve.io/inferenceservice"] == "fraud"
    assert template.labels["component"] == "predictor"
    assert "networking.knative.dev/visibility" not in template.labels
    assert template.ksvc_labels["networking.knative.dev/visibility"] == "cluster-local"


def test_revision_spec_holds_the_model_and_timeouts_but_not_traffic() -> None:
    isvc = base_isvc()
    predictor(isvc).update(timeout=45, containerConcurrency=2, canaryTrafficPercent=10)
    spec = build_template(isvc).spec
    assert spec["timeoutSeconds"] == spec["responseStartTimeoutSeconds"] == 45
    assert spec["containerConcurrency"] == 2
    assert spec["predictor"]["model"]["storageUri"] == "s3://models/v1"
    assert "canaryTrafficPercent" not in spec["predictor"]


def test_standard_mode_templates_have_no_knative_autoscaling_keys() -> None:
    template = build_template(base_isvc(), knative=False)
    assert not any(k.startswith("autoscaling.knative.dev/") for k in template.annotations)


def test_digest_is_stable_and_ignores_key_order() -> None:
    one = base_isvc()
    two = base_isvc()
    two["metadata"]["annotations"] = {"team": "risk"}
    two["spec"]["predictor"] = {
        "model": {"storageUri": "s3://models/v1", "modelFormat": {"name": "sklearn"}}
    }
    assert build_template(one).digest == build_template(two).digest == build_template(one).digest


@pytest.mark.parametrize(
    ("spec", "uri", "impls"),
    [
        ({"model": {"storageUri": "s3://a"}}, "s3://a", ["model"]),
        ({"sklearn": {"storageUri": "gs://b"}}, "gs://b", ["sklearn"]),
        (
            {"storageUris": [{"uri": "s3://c"}], "containers": [{"image": "x"}]},
            "s3://c",
            ["containers"],
        ),
        ({"containers": [{"image": "x"}]}, None, ["containers"]),
        (
            {"model": {"storageUri": "s3://a"}, "sklearn": {"storageUri": "s3://a"}},
            "s3://a",
            ["model", "sklearn"],
        ),
    ],
)
def test_storage_uri_and_implementations(
    spec: dict[str, Any], uri: str | None, impls: list[str]
) -> None:
    assert storage_uri(spec) == uri
    assert implementations(spec) == impls


def test_framework_form_and_model_form_with_the_same_uri_differ_only_by_form() -> None:
    framework = base_isvc()
    framework["spec"]["predictor"] = {"sklearn": {"storageUri": "s3://models/v1"}}
    assert build_template(framework).storage_uri == "s3://models/v1"
    moved = copy.deepcopy(framework)
    moved["spec"]["predictor"]["sklearn"]["storageUri"] = "s3://models/v2"
    assert build_template(framework).digest != build_template(moved).digest


def test_names_and_annotation_normalisation() -> None:
    assert predictor_service_name("fraud") == "fraud-predictor"
    assert predictor_service_name("fraud", "blue") == "fraud-blue-predictor"
    legacy = base_isvc()
    legacy["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    assert effective_annotations(legacy)["serving.kserve.io/deploymentMode"] == "Standard"
    # the defaulting webhook stores "Knative" for "Serverless": no revision from the rename
    serverless, knative = base_isvc(), base_isvc()
    serverless["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    knative["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Knative"
    assert build_template(serverless).digest == build_template(knative).digest


def test_naming_the_model_container_kserve_container_changes_nothing() -> None:
    named = base_isvc()
    predictor(named)["model"]["name"] = "kserve-container"
    renamed = base_isvc()
    predictor(renamed)["model"]["name"] = "my-container"
    assert build_template(named).digest == build_template(base_isvc()).digest
    assert build_template(renamed).digest != build_template(base_isvc()).digest
