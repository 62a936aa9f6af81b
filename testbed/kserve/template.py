"""The predictor's revision (or pod) template, as KServe v0.20.0 builds it (KSERVE.md §1.2).

PURE. KServe rebuilds the desired Knative Service from scratch on every reconcile, and
Knative creates a new revision exactly when ``spec.template`` differs from the stored one.
:func:`build_template` reproduces what goes into that template and :attr:`RevisionTemplate.digest`
fingerprints it, so "a new revision is created" becomes "the digest changed".

What is modelled:

* template annotations: the InferenceService's annotations minus the disallowed list (exact
  key match), internal annotations derived from the spec (storage-initializer source URI,
  logger, batcher), ``spec.predictor.annotations`` (which win on clashes), then, in Knative
  mode, the autoscaling keys (class ``kpa`` unless present, target, metric, ``min-scale``
  always — ``minReplicas`` or 1 — and ``max-scale`` when ``maxReplicas`` is not 0); the
  ``rollout-duration`` and OpenShift passthrough annotations move out of the template onto
  the ksvc's own metadata;
* template labels: InferenceService labels and ``spec.predictor.labels`` plus
  ``serving.kserve.io/inferenceservice`` and ``component``, minus the disallowed labels (the
  ksvc's own labels keep the unfiltered set);
* template spec: the predictor spec (it determines the pod spec, including the storage URI)
  without the fields that do not reach the pod template, plus ``timeoutSeconds``,
  ``responseStartTimeoutSeconds`` (both ``spec.predictor.timeout``) and
  ``containerConcurrency``.

No ServingRuntime is simulated, so runtime annotations and labels are empty. The webhook's
framework → ``model`` defaulting is not performed either: ``spec.predictor.sklearn.storageUri``
and ``spec.predictor.model.storageUri`` are both read as the storage URI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_ANNOTATION_DISALLOWED",
    "DEFAULT_LABEL_DISALLOWED",
    "FRAMEWORKS",
    "KServeConfig",
    "RevisionTemplate",
    "build_template",
    "canary_traffic_percent",
    "deployment_mode_annotation",
    "effective_annotations",
    "force_stop",
    "implementations",
    "min_replicas",
    "predictor_service_name",
    "storage_uri",
]

# KServe constants (pkg/constants/constants.go at v0.20.0)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STOP_ANNOTATION = "serving.kserve.io/stop"
DISABLE_AUTO_UPDATE_ANNOTATION = "serving.kserve.io/disable-auto-update"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
LOGGER_ANNOTATION = "internal.serving.kserve.io/logger"
LOGGER_SINK_ANNOTATION = "internal.serving.kserve.io/logger-sink-url"
LOGGER_MODE_ANNOTATION = "internal.serving.kserve.io/logger-mode"
BATCHER_ANNOTATION = "internal.serving.kserve.io/batcher"
BATCHER_SIZE_ANNOTATION = "internal.serving.kserve.io/batcher-max-batchsize"
BATCHER_LATENCY_ANNOTATION = "internal.serving.kserve.io/batcher-max-latency"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
CONTAINER_NAME = "kserve-container"
COMPONENT_LABEL = "component"
# Knative autoscaling keys
KPA_CLASS = "kpa.autoscaling.knative.dev"
CLASS_ANNOTATION = "autoscaling.knative.dev/class"
TARGET_ANNOTATION = "autoscaling.knative.dev/target"
METRIC_ANNOTATION = "autoscaling.knative.dev/metric"
MIN_SCALE_ANNOTATION = "autoscaling.knative.dev/min-scale"
MAX_SCALE_ANNOTATION = "autoscaling.knative.dev/max-scale"
# moved from the template onto the ksvc's own metadata (KR:50-54)
MANAGED_KSVC_ANNOTATIONS = (
    "serving.knative.dev/rollout-duration",
    "serving.knative.openshift.io/enablePassthrough",
)

DEFAULT_ANNOTATION_DISALLOWED: tuple[str, ...] = (
    MIN_SCALE_ANNOTATION,
    MAX_SCALE_ANNOTATION,
    SOURCE_URI_ANNOTATION,
    "kubectl.kubernetes.io/last-applied-configuration",
    "modelFormat",
)
DEFAULT_LABEL_DISALLOWED: tuple[str, ...] = ("networking.knative.dev/visibility",)

# The predictor implementations (v1beta1 PredictorSpec); ``model`` is the generic one.
FRAMEWORKS: tuple[str, ...] = (
    "model",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
)

# Predictor fields that do not reach the revision's pod spec: traffic and scaling (they
# become annotations or Deployment/HPA settings), metadata, fields copied into the
# revision spec separately, and Standard- or multi-node-only settings.
_NOT_IN_POD_SPEC = frozenset(
    {
        "canaryTrafficPercent",
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "scaleMetricType",
        "autoScaling",
        "timeout",
        "containerConcurrency",
        "annotations",
        "labels",
        "name",
        "logger",
        "batcher",
        "deploymentStrategy",
        "workerSpec",
    }
)

DeploymentModeName = Literal["Knative", "Standard", "ModelMesh"]
RoutingMode = Literal["v0.20", "weighted"]


@dataclass(frozen=True)
class KServeConfig:
    """The parts of KServe's ``inferenceservice-config`` (and cluster facts) that matter here.

    Lists given to :meth:`with_disallowed` are appended to the defaults, as KServe does when
    the config map has an ``inferenceService`` key (CFG:234-253).
    """

    default_deployment_mode: DeploymentModeName = "Knative"
    annotation_disallowed: tuple[str, ...] = DEFAULT_ANNOTATION_DISALLOWED
    label_disallowed: tuple[str, ...] = DEFAULT_LABEL_DISALLOWED
    ingress_domain: str = "example.com"  # Knative's default domain and KServe's ingressDomain
    url_scheme: str = "http"
    # The test bed installs the Istio VirtualService CRD, so KServe's ingress reconciler
    # reports IngressReady=Unknown "Predictor ingress not created" before the first Ready.
    virtual_service_available: bool = True
    standard_routing: RoutingMode = "v0.20"
    # Knative's (config-deployment) and Kubernetes' Deployment progress deadline.
    progress_deadline_seconds: float = 600.0

    def with_disallowed(
        self, annotations: Iterable[str] = (), labels: Iterable[str] = ()
    ) -> KServeConfig:
        return KServeConfig(
            default_deployment_mode=self.default_deployment_mode,
            annotation_disallowed=(*DEFAULT_ANNOTATION_DISALLOWED, *annotations),
            label_disallowed=(*DEFAULT_LABEL_DISALLOWED, *labels),
            ingress_domain=self.ingress_domain,
            url_scheme=self.url_scheme,
            virtual_service_available=self.virtual_service_available,
            standard_routing=self.standard_routing,
            progress_deadline_seconds=self.progress_deadline_seconds,
        )


@dataclass(frozen=True)
class RevisionTemplate:
    """What KServe puts into ``ksvc.spec.template`` (Knative) or the pod template (Standard)."""

    annotations: Mapping[str, str]
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    storage_uri: str | None
    digest: str
    # not part of the template: the ksvc's own metadata
    ksvc_annotations: Mapping[str, str] = field(default_factory=dict)
    ksvc_labels: Mapping[str, str] = field(default_factory=dict)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def deployment_mode_annotation(annotations: Mapping[str, str]) -> str | None:
    """The annotation as the defaulting webhook stores it: ``RawDeployment`` → ``Standard``,
    ``Serverless`` → ``Knative`` (DEF:163-186). We have no webhook, so we normalise on read."""
    value = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if value == "RawDeployment":
        return "Standard"
    if value == "Serverless":
        return "Knative"
    return value


def effective_annotations(isvc: Mapping[str, Any]) -> dict[str, str]:
    """``metadata.annotations`` after the defaulting webhook's deploymentMode normalisation."""
    annotations = _str_map(_mapping(isvc.get("metadata")).get("annotations"))
    mode = deployment_mode_annotation(annotations)
    if mode is not None:
        annotations[DEPLOYMENT_MODE_ANNOTATION] = mode
    return annotations


def _filter(mapping: Mapping[str, str], disallowed: Iterable[str]) -> dict[str, str]:
    blocked = set(disallowed)
    return {k: v for k, v in mapping.items() if k not in blocked}


def implementations(predictor: Mapping[str, Any]) -> list[str]:
    """The implementations a predictor sets: framework keys, ``model``, or custom containers."""
    found = [name for name in FRAMEWORKS if isinstance(predictor.get(name), Mapping)]
    if not found and predictor.get("containers"):
        found = ["containers"]
    return found


def storage_uri(predictor: Mapping[str, Any]) -> str | None:
    """The model's storage URI: ``model.storageUri``, a framework's ``storageUri``, else the
    first of ``storageUris``."""
    for name in FRAMEWORKS:
        impl = predictor.get(name)
        if isinstance(impl, Mapping) and impl.get("storageUri"):
            return str(impl["storageUri"])
    uris = predictor.get("storageUris")
    if isinstance(uris, list) and uris and isinstance(uris[0], Mapping) and uris[0].get("uri"):
        return str(uris[0]["uri"])
    return None


def predictor_service_name(isvc_name: str, predictor_name: str | None = None) -> str:
    """``<isvc>-predictor``, or ``<isvc>-<name>-predictor`` (CONST:799-804)."""
    if predictor_name:
        return f"{isvc_name}-{predictor_name}-predictor"
    return f"{isvc_name}-predictor"


def min_replicas(predictor: Mapping[str, Any]) -> int | None:
    value = predictor.get("minReplicas")
    return int(value) if isinstance(value, int) else None


def canary_traffic_percent(predictor: Mapping[str, Any]) -> int | None:
    value = predictor.get("canaryTrafficPercent")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def force_stop(annotations: Mapping[str, str]) -> bool:
    """``serving.kserve.io/stop`` compared case-insensitively with ``true`` (utils.go:333)."""
    return annotations.get(STOP_ANNOTATION, "").lower() == "true"


def _derived_annotations(predictor: Mapping[str, Any], uri: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    logger = predictor.get("logger")
    if isinstance(logger, Mapping):
        out[LOGGER_ANNOTATION] = "true"
        if logger.get("url"):
            out[LOGGER_SINK_ANNOTATION] = str(logger["url"])
        out[LOGGER_MODE_ANNOTATION] = str(logger.get("mode", ""))
    batcher = predictor.get("batcher")
    if isinstance(batcher, Mapping):
        out[BATCHER_ANNOTATION] = "true"
        if batcher.get("maxBatchSize") is not None:
            out[BATCHER_SIZE_ANNOTATION] = str(batcher["maxBatchSize"])
        if batcher.get("maxLatency") is not None:
            out[BATCHER_LATENCY_ANNOTATION] = str(batcher["maxLatency"])
    # Only the single-URI form goes through the annotation (PRED:114-119); several
    # storageUris are injected straight into the template, which the spec part covers.
    single = None
    for name in FRAMEWORKS:
        impl = predictor.get(name)
        if isinstance(impl, Mapping) and impl.get("storageUri"):
            single = str(impl["storageUri"])
            break
    if single is not None and single == uri:
        out[SOURCE_URI_ANNOTATION] = single
    return out


def _digest(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def build_template(
    isvc: Mapping[str, Any],
    config: KServeConfig | None = None,
    *,
    knative: bool = True,
    predictor: Mapping[str, Any] | None = None,
) -> RevisionTemplate:
    """Build the predictor's revision template for ``isvc``.

    ``predictor`` overrides ``spec.predictor`` (Standard-mode canaries are built from the
    merged canary predictor on a copy of the InferenceService, PRED:927-930). With
    ``knative=False`` the Knative autoscaling keys are not added and nothing moves to the
    ksvc, which gives the Standard-mode pod template.
    """
    cfg = config or KServeConfig()
    metadata = _mapping(isvc.get("metadata"))
    name = str(metadata.get("name", ""))
    pred = _mapping(
        predictor if predictor is not None else _mapping(isvc.get("spec")).get("predictor")
    )
    uri = storage_uri(pred)

    # 1. InferenceService annotations minus the disallowed keys (exact match)
    annotations = _filter(effective_annotations(isvc), cfg.annotation_disallowed)
    # 2. internal annotations derived from the spec
    annotations.update(_derived_annotations(pred, uri))
    # 3. predictor annotations, filtered the same way, win over the InferenceService's
    annotations.update(_filter(_str_map(pred.get("annotations")), cfg.annotation_disallowed))
    ksvc_annotations: dict[str, str] = {}
    if knative:
        # 4. autoscaling keys (pkg/controller/v1alpha1/utils/utils.go:48-81)
        annotations.setdefault(CLASS_ANNOTATION, KPA_CLASS)
        if pred.get("scaleTarget") is not None:
            annotations[TARGET_ANNOTATION] = str(pred["scaleTarget"])
        if pred.get("scaleMetric") is not None:
            annotations[METRIC_ANNOTATION] = str(pred["scaleMetric"])
        minimum = min_replicas(pred)
        annotations[MIN_SCALE_ANNOTATION] = str(1 if minimum is None else minimum)
        maximum = pred.get("maxReplicas")
        if isinstance(maximum, int) and maximum != 0:
            annotations[MAX_SCALE_ANNOTATION] = str(maximum)
        # 5. rollout-duration and the OpenShift passthrough key go onto the ksvc
        for key in MANAGED_KSVC_ANNOTATIONS:
            if key in annotations:
                ksvc_annotations[key] = annotations.pop(key)

    unfiltered_labels = {
        **_str_map(metadata.get("labels")),
        **_str_map(pred.get("labels")),
        ISVC_LABEL: name,
        COMPONENT_LABEL: "predictor",
    }
    labels = _filter(unfiltered_labels, cfg.label_disallowed)

    pod_spec = {k: v for k, v in pred.items() if k not in _NOT_IN_POD_SPEC}
    for framework in FRAMEWORKS:
        impl = pod_spec.get(framework)
        if isinstance(impl, Mapping) and impl.get("name") == CONTAINER_NAME:
            # (inferred) the runtime's container is already called kserve-container, so
            # naming it again does not change the merged pod spec (utils.go:485-520);
            # the full CRD even requires a name on canary models (spec.canary[].predictor)
            pod_spec[framework] = {k: v for k, v in impl.items() if k != "name"}
    spec: dict[str, Any] = {"predictor": pod_spec}
    timeout = pred.get("timeout")
    if timeout is not None:
        spec["timeoutSeconds"] = timeout
        spec["responseStartTimeoutSeconds"] = timeout
    if pred.get("containerConcurrency") is not None:
        spec["containerConcurrency"] = pred["containerConcurrency"]

    digest = _digest({"annotations": annotations, "labels": labels, "spec": spec})
    return RevisionTemplate(
        annotations=annotations,
        labels=labels,
        spec=spec,
        storage_uri=uri,
        digest=digest,
        ksvc_annotations=ksvc_annotations,
        ksvc_labels=unfiltered_labels,
    )
