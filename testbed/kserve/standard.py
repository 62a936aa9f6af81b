"""Standard (RawDeployment) mode with ``spec.canary[]`` (KSERVE.md §2).

PURE. :func:`reconcile_isvc` is one KServe v0.20.0 reconcile of a Standard-mode
InferenceService: it sizes and creates/updates the stable Deployment and one Deployment per
canary, derives ``PredictorReady`` and ``observedGeneration`` from the **stable** Deployment
only (as it was before this reconcile's update), fills ``canaryStatuses`` (top level of
``status``) and ``CanaryPredictorReady``, deletes orphaned Deployments, and reports the
ingress. :func:`deployment_step` is Kubernetes' side: the Deployment controller rolling out
a new ReplicaSet and pods becoming ready (or not) as the behaviour book says.

``config.standard_routing`` selects what ``trafficPercent`` does:

* ``"v0.20"`` (the tag): it only sizes replicas; every request goes to the stable Service;
* ``"weighted"`` (master after the tag: #5912 + #5984): canaries reported Ready get their
  ``trafficPercent`` as a route weight and the stable gets 100 − Σ; only Ready canaries
  reduce the stable minimum, and canaries are reconciled before the stable.

:func:`validate` returns what KServe's validating webhook would refuse (we have none); the
controller turns a refusal into a status condition and leaves the world untouched.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from testbed.behaviour import BehaviourBook, Readiness
from testbed.kserve.knative import reconcile_stopped_condition
from testbed.kserve.status import (
    CANARY_PREDICTOR_READY,
    FALSE,
    INGRESS_READY,
    PREDICTOR_READY,
    READY,
    TRUE,
    UNKNOWN,
    Condition,
    IsvcStatus,
    PodView,
    mark_stopped,
    propagate_model_status,
    set_condition,
)
from testbed.kserve.template import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    DISABLE_AUTO_UPDATE_ANNOTATION,
    KServeConfig,
    RevisionTemplate,
    build_template,
    effective_annotations,
    force_stop,
    implementations,
    min_replicas,
    predictor_service_name,
    storage_uri,
)

__all__ = [
    "Deployment",
    "ReplicaSet",
    "StandardWorld",
    "build_canary_predictor",
    "canary_replica_count",
    "deployment_step",
    "effective_split",
    "next_wakeup",
    "reconcile_isvc",
    "stable_min_replicas",
    "validate",
]

AVAILABLE, PROGRESSING = "Available", "Progressing"
_RS_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # pod-template-hash characters


@dataclass(frozen=True)
class ReplicaSet:
    name: str
    template_digest: str
    storage_uri: str | None
    created_at: float
    ready: bool = False
    pods: str = "starting"  # starting | ready | crashloop | waiting
    failure_message: str = ""


@dataclass(frozen=True)
class Deployment:
    """A Deployment (``current`` is the newest ReplicaSet; ``previous`` an older one still
    serving during a rolling update). ``conditions`` hold Available and Progressing."""

    name: str
    template: RevisionTemplate
    replicas: int
    generation: int = 1
    observed_generation: int = 0
    current: ReplicaSet | None = None
    previous: ReplicaSet | None = None
    available_replicas: int = 0
    conditions: tuple[Condition, ...] = ()
    progress_since: float = 0.0

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True)
class StandardWorld:
    deployments: Mapping[str, Deployment] = field(default_factory=dict)
    ingress_created: bool = False
    # the routing KServe programmed in the last reconcile: (Service, percent, storage URI)
    split: tuple[tuple[str, int, str | None], ...] = ()

    def with_deployment(self, deployment: Deployment) -> StandardWorld:
        return replace(self, deployments={**self.deployments, deployment.name: deployment})

    def without(self, name: str) -> StandardWorld:
        return replace(self, deployments={k: v for k, v in self.deployments.items() if k != name})


# --- sizing (§2.3) -----------------------------------------------------------------------


def _canaries(isvc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    canaries = (isvc.get("spec") or {}).get("canary")
    return [c for c in canaries if isinstance(c, Mapping)] if isinstance(canaries, list) else []


def _canary_name(canary: Mapping[str, Any]) -> str:
    return str((canary.get("predictor") or {}).get("name", "") or "")


def _traffic_percent(canary: Mapping[str, Any]) -> int:
    value = canary.get("trafficPercent")
    return int(value) if isinstance(value, int) else 0


def canary_replica_count(stable_min: int | None, canary: Mapping[str, Any]) -> int:
    """The canary's ``minReplicas``, else ceil(stableMin × trafficPercent / 100) with
    stableMin = the stable ``minReplicas`` or 1 (PRED:886-895)."""
    own = min_replicas(canary.get("predictor") or {})
    if own is not None:
        return own
    base = 1 if stable_min is None else stable_min
    return -(-(base * _traffic_percent(canary)) // 100)


def stable_min_replicas(
    predictor: Mapping[str, Any],
    canaries: Sequence[Mapping[str, Any]],
    *,
    weighted: bool = False,
    ready: Mapping[str, bool] | None = None,
) -> int | None:
    """The stable's minimum: reduced by the canaries' replicas, floored at 1, only when
    ``minReplicas`` is set (PRED:794-803); with ``weighted`` only Ready canaries count and
    nothing changes when none is (#5984)."""
    stable = min_replicas(predictor)
    if not canaries or stable is None:
        return stable
    if weighted:
        readiness = ready or {}
        total = sum(
            canary_replica_count(stable, c) for c in canaries if readiness.get(_canary_name(c))
        )
        return max(stable - total, 1) if total > 0 else stable
    total = sum(canary_replica_count(stable, c) for c in canaries)
    return max(stable - total, 1)


def _is_empty(value: Any) -> bool:
    if value is None or value is False:
        return True
    return value in ("", 0, [], {})


def _overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``mergo.Merge(&dst, src, mergo.WithOverride)``: non-empty fields of ``over`` win,
    nested objects merge (an approximation: Go maps and structs both merge here)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if _is_empty(value):
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_canary_predictor(
    stable: Mapping[str, Any], canary: Mapping[str, Any], replicas: int
) -> dict[str, Any]:
    """PRED:897-911: the stable predictor overlaid with the canary's, autoscaling cleared."""
    merged = _overlay(stable, canary.get("predictor") or {})
    for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
        merged.pop(key, None)
    merged["minReplicas"] = replicas
    return merged


def _pod_count(count: int, annotations: Mapping[str, str]) -> int:
    """Class ``none`` sets Deployment replicas; ``hpa`` (the default) clamps its min at 1."""
    if annotations.get(AUTOSCALER_CLASS_ANNOTATION, "hpa") == "none":
        return max(count, 0)
    return max(count, 1)


# --- validation (§2.2) -------------------------------------------------------------------

_GO_IMPLEMENTATIONS = (
    "SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, HuggingFace, PMML, LightGBM, "
    "Paddle, Model"
)


def validate(
    isvc: Mapping[str, Any],
    *,
    previous: Mapping[str, Any] | None = None,
    config: KServeConfig | None = None,
) -> list[str]:
    """What KServe's validating webhook would refuse (VAL:74-266, 691-713), in its order.

    ``previous`` is the last accepted object (for the update-only rules). The webhook
    answers with the first message only. The defaulting webhook's rewrites are applied
    first (legacy deploymentMode values; the annotation added in Standard-default clusters).
    """
    cfg = config or KServeConfig()
    annotations = effective_annotations(isvc)
    if DEPLOYMENT_MODE_ANNOTATION not in annotations and cfg.default_deployment_mode in (
        "Standard",
        "ModelMesh",
    ):
        annotations[DEPLOYMENT_MODE_ANNOTATION] = cfg.default_deployment_mode
    errors: list[str] = []
    status_mode = str((isvc.get("status") or {}).get("deploymentMode", "") or "")
    if status_mode:
        recorded = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(
            status_mode, status_mode
        )
        wanted = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
        if wanted is not None and wanted != recorded:
            errors.append(
                f"update rejected: deploymentMode cannot be changed from '{recorded}' to '{wanted}'"
            )
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    if previous is not None:
        old = (previous.get("spec") or {}).get("predictor") or {}
        if old.get("name") != predictor.get("name") and storage_uri(old) == storage_uri(predictor):
            errors.append("predictor.name change requires a model change (e.g. storageUri)")
    if len(implementations(predictor)) != 1:
        errors.append(f"exactly one of [{_GO_IMPLEMENTATIONS}] must be specified in PredictorSpec")
    errors.extend(_validate_canaries(isvc, annotations))
    return errors


def _validate_canaries(isvc: Mapping[str, Any], annotations: Mapping[str, str]) -> list[str]:
    canaries = _canaries(isvc)
    if not canaries:
        return []
    if annotations.get(DEPLOYMENT_MODE_ANNOTATION) != "Standard":
        return ["canary is only supported in Standard deployment mode"]
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    if storage_uri(predictor) is None and not isinstance(predictor.get("model"), Mapping):
        return [
            "canary requires a stable predictor with a model "
            "(multi-model serving is not supported with canary)"
        ]
    names: set[str] = set()
    total = 0
    stable_min = min_replicas(predictor)
    for index, canary in enumerate(canaries):
        spec = canary.get("predictor") or {}
        name = _canary_name(canary)
        if not name:
            return [f"canary[{index}] predictor.name is required"]
        if name in names:
            return [f'canary predictor.name "{name}" is duplicated']
        names.add(name)
        if name == predictor.get("name"):
            return [f'canary predictor.name "{name}" conflicts with stable predictor name']
        percent = _traffic_percent(canary)
        if not 0 <= percent <= 100:
            return [f'canary "{name}" trafficPercent must be between 0 and 100, got {percent}']
        total += percent
        if len(implementations(spec)) != 1:
            return [
                f'canary "{name}" predictor: exactly one of [{_GO_IMPLEMENTATIONS}] '
                "must be specified in PredictorSpec"
            ]
        if spec.get("workerSpec") is not None:
            return [
                f'canary "{name}" must not set workerSpec '
                "(multi-node is not yet supported for canary)"
            ]
        for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            value = spec.get(key)
            if value is not None and not (key == "maxReplicas" and value == 0):
                return [f'canary "{name}" must not set {key} (canary uses fixed replicas)']
        own = min_replicas(spec)
        limit = 1 if stable_min is None else stable_min
        if own is not None and own > limit:
            return [
                f'canary "{name}" minReplicas ({own}) must not exceed stable predictor '
                f"minReplicas ({limit})"
            ]
    if total > 100:
        return [f"sum of canary trafficPercent values ({total}) must be <= 100"]
    return []


# --- the Deployment controller -----------------------------------------------------------


def _rs_name(deployment: str, digest: str) -> str:
    raw = hashlib.sha256(digest.encode()).digest()
    suffix = "".join(_RS_ALPHABET[b % len(_RS_ALPHABET)] for b in raw[:10])
    return f"{deployment}-{suffix}"


def _progress_pods(rs: ReplicaSet, book: BehaviourBook, now: float) -> ReplicaSet:
    if rs.ready:
        return rs
    behaviour = book.for_model(rs.storage_uri)
    if behaviour.readiness is Readiness.READY:
        if now >= rs.created_at + behaviour.ready_after_seconds:
            return replace(rs, ready=True, pods="ready")
        return replace(rs, pods="starting")
    if behaviour.readiness is Readiness.CRASH_LOOP:
        return replace(rs, pods="crashloop", failure_message=behaviour.failure_message)
    return replace(rs, pods="waiting")


def _deployment_conditions(d: Deployment, now: float, deadline: float, created: bool) -> Deployment:
    """Kubernetes' Deployment conditions; maxUnavailable is 25 % rounded down.

    Simplified (inferred): pods of a ReplicaSet become ready together, a scale change of a
    ready ReplicaSet is immediate, and during a rollout the old ReplicaSet serves at full
    size until the new one is ready (maxUnavailable rounds to 0 for small replica counts).
    """
    current = d.current
    assert current is not None
    if current.ready:
        available = d.replicas
    elif d.previous is not None:
        available = d.replicas  # the old ReplicaSet keeps serving until the new one is up
    else:
        available = 0
    minimum = d.replicas - (d.replicas * 25) // 100
    if available >= minimum:
        avail = Condition(
            AVAILABLE, TRUE, "MinimumReplicasAvailable", "Deployment has minimum availability."
        )
    else:
        avail = Condition(
            AVAILABLE,
            FALSE,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    rs = current.name
    if current.ready:
        progressing = Condition(
            PROGRESSING,
            TRUE,
            "NewReplicaSetAvailable",
            f'ReplicaSet "{rs}" has successfully progressed.',
        )
    elif now - d.progress_since >= deadline:
        progressing = Condition(
            PROGRESSING,
            FALSE,
            "ProgressDeadlineExceeded",
            f'ReplicaSet "{rs}" has timed out progressing.',
        )
    elif created:
        progressing = Condition(
            PROGRESSING, TRUE, "NewReplicaSetCreated", f'Created new replica set "{rs}"'
        )
    else:
        progressing = Condition(
            PROGRESSING, TRUE, "ReplicaSetUpdated", f'ReplicaSet "{rs}" is progressing.'
        )
    return replace(d, available_replicas=available, conditions=(avail, progressing))


def _step_deployment(d: Deployment, book: BehaviourBook, now: float, deadline: float) -> Deployment:
    created = False
    if d.observed_generation != d.generation:
        if d.current is None or d.current.template_digest != d.template.digest:
            serving = d.current if d.current is not None and d.current.ready else d.previous
            if serving is not None and serving.template_digest == d.template.digest:
                current, previous = serving, None  # back to a ReplicaSet that still serves
            else:
                current = ReplicaSet(
                    name=_rs_name(d.name, d.template.digest),
                    template_digest=d.template.digest,
                    storage_uri=d.template.storage_uri,
                    created_at=now,
                )
                previous = serving
                created = True
            d = replace(d, current=current, previous=previous, progress_since=now)
        d = replace(d, observed_generation=d.generation)
    else:
        assert d.current is not None
        d = replace(d, current=_progress_pods(d.current, book, now))
    assert d.current is not None
    if d.current.ready and d.previous is not None:
        d = replace(d, previous=None)
    return _deployment_conditions(d, now, deadline, created)


def deployment_step(
    world: StandardWorld, behaviour: BehaviourBook, now: float, config: KServeConfig | None = None
) -> StandardWorld:
    """One round of the Deployment controller and the pods; ``world`` itself if idle."""
    cfg = config or KServeConfig()
    deployments = {
        name: _step_deployment(
            world.deployments[name], behaviour, now, cfg.progress_deadline_seconds
        )
        for name in sorted(world.deployments)
    }
    stepped = replace(world, deployments=deployments)
    return world if stepped == world else stepped


def next_wakeup(
    world: StandardWorld, behaviour: BehaviourBook, config: KServeConfig | None = None
) -> float | None:
    cfg = config or KServeConfig()
    times: list[float] = []
    for d in world.deployments.values():
        if d.current is None or d.current.ready:
            continue
        model = behaviour.for_model(d.current.storage_uri)
        if model.readiness is Readiness.READY:
            times.append(d.current.created_at + model.ready_after_seconds)
        progressing = d.condition(PROGRESSING)
        if progressing is None or progressing.status != FALSE:
            times.append(d.progress_since + cfg.progress_deadline_seconds)
    return min(times) if times else None


def effective_split(world: StandardWorld) -> list[tuple[str, int, str | None]]:
    return list(world.split)


# --- the KServe InferenceService reconcile -----------------------------------------------


def _upsert(
    world: StandardWorld, name: str, template: RevisionTemplate, replicas: int
) -> tuple[StandardWorld, Deployment | None]:
    """Create or update a Deployment; returns the object as read BEFORE the update."""
    existing = world.deployments.get(name)
    if existing is None:
        return world.with_deployment(
            Deployment(name=name, template=template, replicas=replicas)
        ), None
    if existing.template.digest == template.digest and existing.replicas == replicas:
        return world, existing
    updated = replace(
        existing, template=template, replicas=replicas, generation=existing.generation + 1
    )
    return world.with_deployment(updated), existing


def _propagate_raw_status(status: IsvcStatus, deployment: Deployment | None, url: str) -> None:
    """``PropagateRawStatus`` for one Deployment (ST:360-458)."""
    component = status.component("predictor")
    available = deployment.condition(AVAILABLE) if deployment else None
    progressing = deployment.condition(PROGRESSING) if deployment else None
    ready = Condition(PREDICTOR_READY, FALSE)
    if available is not None and available.status == TRUE:
        ready = Condition(PREDICTOR_READY, TRUE, available.reason, available.message)
    if progressing is not None:
        if progressing.status == FALSE:
            if progressing.message:
                ready = Condition(PREDICTOR_READY, FALSE, progressing.reason, progressing.message)
        elif progressing.status == TRUE:
            if progressing.reason == "NewReplicaSetAvailable":
                ready = Condition(PREDICTOR_READY, TRUE, progressing.reason, progressing.message)
            elif available is None or available.status != TRUE:
                ready = Condition(PREDICTOR_READY, UNKNOWN, progressing.reason, progressing.message)
    if available is not None and available.status == FALSE:
        ready = Condition(PREDICTOR_READY, FALSE, available.reason, available.message)
    if ready.status == TRUE:
        component.url = url
    set_condition(status.conditions, PREDICTOR_READY, ready)
    status.observed_generation = deployment.observed_generation if deployment else 0


def _stable_pods(deployment: Deployment | None) -> PodView:
    if deployment is None or deployment.current is None:
        return PodView()
    total = deployment.replicas + (deployment.replicas if deployment.previous else 0)
    current = deployment.current
    first = {"crashloop": "crashloop", "waiting": "waiting"}.get(current.pods, "running")
    return PodView(
        total=total,
        ready=deployment.available_replicas,
        first=first,
        failure_message=current.failure_message,
    )


def reconcile_isvc(
    world: StandardWorld,
    isvc: Mapping[str, Any],
    now: float,
    config: KServeConfig | None = None,
) -> tuple[StandardWorld, dict[str, Any] | None]:
    """One KServe reconcile of a Standard-mode InferenceService (not being deleted, spec
    already validated). Returns the new world and the status to write (``None``: KServe
    returns without writing)."""
    cfg = config or KServeConfig()
    weighted = cfg.standard_routing == "weighted"
    metadata = isvc.get("metadata") or {}
    name, namespace = str(metadata.get("name", "")), str(metadata.get("namespace", ""))
    all_annotations = effective_annotations(isvc)
    annotations = {k: v for k, v in all_annotations.items() if k not in cfg.annotation_disallowed}
    status = IsvcStatus.parse(isvc.get("status"), now=now)
    if annotations.get(DISABLE_AUTO_UPDATE_ANNOTATION) == "true" and status.is_ready():
        return world, None
    if status.conditions.get(READY) is None:
        status.conditions.initialize()
    stop = force_stop(all_annotations)
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    canaries = _canaries(isvc)
    stable_name = predictor_service_name(name, predictor.get("name"))
    stable_uri = storage_uri(predictor)

    def reconcile_canaries(world: StandardWorld) -> StandardWorld:
        stable_min = min_replicas(predictor)
        statuses: list[dict[str, Any]] = []
        for canary in canaries:
            canary_name = predictor_service_name(name, _canary_name(canary))
            replicas = canary_replica_count(stable_min, canary)
            merged = build_canary_predictor(predictor, canary, replicas)
            if stop:
                world = world.without(canary_name)
            else:
                template = build_template(isvc, cfg, knative=False, predictor=merged)
                world, _ = _upsert(
                    world, canary_name, template, _pod_count(replicas, all_annotations)
                )
        for canary in canaries:
            deployment = world.deployments.get(predictor_service_name(name, _canary_name(canary)))
            statuses.append(
                {
                    "name": _canary_name(canary),
                    "ready": deployment is not None and deployment.available_replicas > 0,
                    "trafficPercent": _traffic_percent(canary),
                    "modelStatus": {"transitionStatus": ""},
                }
            )
        status.canary_statuses = statuses
        if canaries:
            all_ready = all(s["ready"] for s in statuses)
            if stop:
                condition = Condition(CANARY_PREDICTOR_READY, FALSE, "Stopped")
            elif all_ready:
                condition = Condition(CANARY_PREDICTOR_READY, TRUE, "AllCanariesReady")
            else:
                condition = Condition(CANARY_PREDICTOR_READY, FALSE, "CanariesNotReady")
            set_condition(status.conditions, CANARY_PREDICTOR_READY, condition)
        else:
            status.conditions.clear(CANARY_PREDICTOR_READY)
        # cleanup of orphaned predictor Deployments and Services (PRED:1002-1037)
        expected = {stable_name} | {predictor_service_name(name, _canary_name(c)) for c in canaries}
        for orphan in [n for n in world.deployments if n not in expected]:
            world = world.without(orphan)
        return world

    def reconcile_stable(world: StandardWorld) -> tuple[StandardWorld, Deployment | None]:
        ready = {str(s.get("name")): bool(s.get("ready")) for s in status.canary_statuses}
        minimum = stable_min_replicas(predictor, canaries, weighted=weighted, ready=ready)
        if stop:
            return world.without(stable_name), None
        template = build_template(isvc, cfg, knative=False)
        count = _pod_count(1 if minimum is None else minimum, all_annotations)
        world, snapshot = _upsert(world, stable_name, template, count)
        url = f"http://{stable_name}-{namespace}.{cfg.ingress_domain}"
        _propagate_raw_status(status, snapshot, url)
        return world, snapshot

    if weighted:  # #5984: canaries first, so the stable sees fresh readiness
        world = reconcile_canaries(world)
        world, _ = reconcile_stable(world)
    else:
        world, _ = reconcile_stable(world)
        world = reconcile_canaries(world)

    if stop:
        mark_stopped(status)
    else:
        propagate_model_status(
            status,
            status.component("predictor"),
            _stable_pods(world.deployments.get(stable_name)),
            raw_deployment=True,
        )
    reconcile_stopped_condition(status, stop)
    world = _ingress(world, status, name, namespace, stable_name, stop, cfg)

    # what the route sends where
    split: list[tuple[str, int, str | None]] = []
    if not stop:
        canary_percent = {
            str(s["name"]): int(s["trafficPercent"]) if (weighted and s["ready"]) else 0
            for s in status.canary_statuses
        }
        split.append((stable_name, 100 - sum(canary_percent.values()), stable_uri))
        for canary in canaries:
            canary_name = _canary_name(canary)
            merged_uri = storage_uri(build_canary_predictor(predictor, canary, 0))
            split.append(
                (
                    predictor_service_name(name, canary_name),
                    canary_percent.get(canary_name, 0),
                    merged_uri,
                )
            )
    world = replace(world, split=tuple(split))
    status.deployment_mode = "Standard"
    return world, status.to_dict()


def _ingress(
    world: StandardWorld,
    status: IsvcStatus,
    name: str,
    namespace: str,
    stable_name: str,
    stop: bool,
    cfg: KServeConfig,
) -> StandardWorld:
    """The Kubernetes Ingress reconciler (kube_ingress_reconciler.go:62-145), the default
    (``enableGatewayApi: false``). (inferred) The "weighted" routing needs Gateway API; its
    HTTPRoute reconciler is modelled with the same IngressReady/url rules, since the test
    bed has no gateway controller to report route acceptance."""
    manager = status.conditions
    if stop:
        if world.ingress_created:
            set_condition(manager, INGRESS_READY, Condition(INGRESS_READY, FALSE, "Stopped"))
        return replace(world, ingress_created=False)
    if not manager.is_true(PREDICTOR_READY):
        set_condition(
            manager, INGRESS_READY, Condition(INGRESS_READY, FALSE, "Predictor ingress not created")
        )
        return world
    status.url = f"{cfg.url_scheme}://{name}-{namespace}.{cfg.ingress_domain}"
    status.address = {"url": f"http://{stable_name}.{namespace}.svc.cluster.local"}
    set_condition(manager, INGRESS_READY, Condition(INGRESS_READY, TRUE))
    return replace(world, ingress_created=True)
