"""InferenceService status as KServe v0.20.0 serialises it, and knative/pkg's condition algebra.

PURE. Both modes of the simulator build the status with these pieces:

* :class:`ConditionManager` reproduces ``knative.dev/pkg/apis/condition_set.go`` (pinned
  commit 4a022ed9999a): the happy condition (``Ready``) depends on a set of *dependents*;
  ``MarkTrue``/``MarkUnknown``/``MarkFalse``/``InitializeConditions`` propagate to it exactly
  as the Go code does, including the edge cases (an Unknown mark turns ``Ready`` False when a
  dependent is already False; the most recently changed unhappy dependent wins). Conditions
  that are not dependents carry ``severity: Info``. ``SetCondition`` keeps the old
  ``lastTransitionTime`` when nothing else changed.
* :class:`IsvcStatus` is a mutable working copy of ``InferenceServiceStatus`` (ST:33-61)
  with Go's ``omitempty`` rules in :meth:`IsvcStatus.to_dict`.
* :func:`canonical` applies the CRD's status defaults so a status we computed can be compared
  with the one the apiserver stored (KServe compares decoded Go structs, CTRL:421-456).

Times: a condition set during a pass gets ``now`` and a sequence number, so "most recent"
is exact within a pass; serialised times have one-second resolution, as ``metav1.Time`` has.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FALSE",
    "INFO",
    "TRUE",
    "UNKNOWN",
    "ComponentStatus",
    "Condition",
    "ConditionManager",
    "IsvcStatus",
    "ModelStatus",
    "PodView",
    "TrafficTarget",
    "canonical",
    "format_time",
    "parse_time",
    "propagate_model_status",
    "set_condition",
]

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
INFO = "Info"
READY = "Ready"

# InferenceService condition types (ST:125-160)
PREDICTOR_READY = "PredictorReady"
PREDICTOR_ROUTE_READY = "PredictorRouteReady"
PREDICTOR_CONFIGURATION_READY = "PredictorConfigurationReady"
INGRESS_READY = "IngressReady"
ROUTES_READY = "RoutesReady"
LATEST_DEPLOYMENT_READY = "LatestDeploymentReady"
CANARY_PREDICTOR_READY = "CanaryPredictorReady"
STOPPED = "Stopped"
ISVC_DEPENDENTS = (PREDICTOR_READY, INGRESS_READY)  # ST:294-298


def format_time(t: float) -> str:
    return datetime.fromtimestamp(math.floor(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    severity: str = ""  # "" is knative's ConditionSeverityError
    last_transition: float = 0.0

    def same_as(self, other: Condition) -> bool:
        """Equal in everything but the transition time (SetCondition's early return)."""
        return replace(self, last_transition=other.last_transition) == other

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "status": self.status}
        if self.severity:
            out["severity"] = self.severity
        if self.last_transition:
            out["lastTransitionTime"] = format_time(self.last_transition)
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(data.get("type", "")),
            status=str(data.get("status", "")),
            reason=str(data.get("reason", "") or ""),
            message=str(data.get("message", "") or ""),
            severity=str(data.get("severity", "") or ""),
            last_transition=parse_time(data.get("lastTransitionTime")),
        )


class ConditionManager:
    """knative/pkg's ``ConditionSet.Manage(status)`` over a working list of conditions."""

    def __init__(
        self,
        conditions: Iterable[Condition],
        *,
        now: float,
        happy: str = READY,
        dependents: Sequence[str] = (),
    ) -> None:
        self._conditions: dict[str, Condition] = {}
        for condition in conditions:
            self._conditions[condition.type] = condition
        self._happy = happy
        self._dependents = tuple(d for d in dict.fromkeys(dependents) if d != happy)
        self._now = now
        self._seq = 0
        self._order: dict[str, int] = {}

    # --- reading ---------------------------------------------------------------------------

    def get(self, kind: str) -> Condition | None:
        return self._conditions.get(kind)

    def status_of(self, kind: str) -> str | None:
        condition = self._conditions.get(kind)
        return condition.status if condition else None

    def is_true(self, kind: str) -> bool:
        return self.status_of(kind) == TRUE

    def is_false(self, kind: str) -> bool:
        return self.status_of(kind) == FALSE

    def is_unknown(self, kind: str) -> bool:
        """Go's ``Condition.IsUnknown``: a missing condition counts as Unknown."""
        return self.status_of(kind) in (None, UNKNOWN)

    def is_happy(self) -> bool:
        return self.is_true(self._happy)

    def conditions(self) -> tuple[Condition, ...]:
        """Sorted by type, as SetCondition stores them; times at one-second resolution."""
        return tuple(
            replace(c, last_transition=float(math.floor(c.last_transition)))
            for c in sorted(self._conditions.values(), key=lambda c: c.type)
        )

    # --- writing ---------------------------------------------------------------------------

    def _severity(self, kind: str) -> str:
        return "" if kind == self._happy or kind in self._dependents else INFO

    def set(self, condition: Condition) -> None:
        old = self._conditions.get(condition.type)
        if old is not None and condition.same_as(old):
            return
        self._seq += 1
        self._order[condition.type] = self._seq
        self._conditions[condition.type] = replace(condition, last_transition=self._now)

    def clear(self, kind: str) -> None:
        """ClearCondition: only for non-terminal conditions (the Go code refuses the others)."""
        if kind == self._happy or kind in self._dependents:
            return
        self._conditions.pop(kind, None)
        self._order.pop(kind, None)

    def reset(self) -> None:
        """Drop every condition (``isvc.Status = InferenceServiceStatus{}``)."""
        self._conditions.clear()
        self._order.clear()

    def mark_true(self, kind: str) -> None:
        self.set(Condition(kind, TRUE, severity=self._severity(kind)))
        self._recompute_happiness(kind)

    def mark_true_with_reason(self, kind: str, reason: str, message: str) -> None:
        self.set(Condition(kind, TRUE, reason, message, self._severity(kind)))
        self._recompute_happiness(kind)

    def mark_unknown(self, kind: str, reason: str, message: str) -> None:
        self.set(Condition(kind, UNKNOWN, reason, message, self._severity(kind)))
        is_dependent = False
        for dependent in self._dependents:
            if self.is_false(dependent):
                # failed conditions trump Unknown ones: make sure the happy one is False
                if not self.is_false(self._happy):
                    self.mark_false(self._happy, reason, message)
                return
            if dependent == kind:
                is_dependent = True
        if is_dependent:
            self.set(Condition(self._happy, UNKNOWN, reason, message, self._severity(self._happy)))

    def mark_false(self, kind: str, reason: str, message: str) -> None:
        kinds = [kind]
        if kind in self._dependents:
            kinds.append(self._happy)
        for each in kinds:
            self.set(Condition(each, FALSE, reason, message, self._severity(each)))

    def initialize(self) -> None:
        happy = self.get(self._happy)
        if happy is None:
            happy = Condition(self._happy, UNKNOWN)
            self.set(happy)
        status = TRUE if happy.status == TRUE else UNKNOWN
        for dependent in self._dependents:
            if self.get(dependent) is None:
                self.set(Condition(dependent, status))

    def _recompute_happiness(self, kind: str) -> None:
        unhappy = self._find_unhappy_dependent()
        if unhappy is not None:
            self.set(
                Condition(
                    self._happy,
                    unhappy.status,
                    unhappy.reason,
                    unhappy.message,
                    self._severity(self._happy),
                )
            )
        elif kind != self._happy:
            self.set(Condition(self._happy, TRUE, severity=self._severity(self._happy)))

    def _find_unhappy_dependent(self) -> Condition | None:
        if not self._dependents:
            return None
        terminal = [
            c
            for c in sorted(self._conditions.values(), key=lambda c: c.type)
            if c.severity == "" and c.type != self._happy
        ]
        # most recent first; ties keep the stored (alphabetical) order, as Go's
        # insertion sort does for these short lists
        terminal.sort(key=lambda c: (c.last_transition, self._order.get(c.type, 0)), reverse=True)
        for condition in terminal:
            if condition.status == FALSE:
                return condition
        for condition in terminal:
            if condition.status == UNKNOWN:
                return condition
        if len(self._dependents) > len(terminal):
            return Condition("", UNKNOWN)
        return None


def set_condition(manager: ConditionManager, kind: str, condition: Condition | None) -> None:
    """KServe's ``InferenceServiceStatus.SetCondition`` (ST:638-648)."""
    if condition is None:
        return
    if condition.status == UNKNOWN:
        manager.mark_unknown(kind, condition.reason, condition.message)
    elif condition.status == TRUE:
        manager.mark_true_with_reason(kind, condition.reason, condition.message)
    elif condition.status == FALSE:
        manager.mark_false(kind, condition.reason, condition.message)


@dataclass(frozen=True)
class TrafficTarget:
    """Knative's ``TrafficTarget`` (pointers become ``None``; JSON keeps Go's omitempty)."""

    percent: int | None = None
    latest_revision: bool | None = None
    revision_name: str = ""
    tag: str = ""
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tag:
            out["tag"] = self.tag
        if self.revision_name:
            out["revisionName"] = self.revision_name
        if self.latest_revision is not None:
            out["latestRevision"] = self.latest_revision
        if self.percent is not None:
            out["percent"] = self.percent
        if self.url:
            out["url"] = self.url
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrafficTarget:
        latest = data.get("latestRevision")
        percent = data.get("percent")
        return cls(
            percent=int(percent) if isinstance(percent, int) else None,
            latest_revision=bool(latest) if isinstance(latest, bool) else None,
            revision_name=str(data.get("revisionName", "") or ""),
            tag=str(data.get("tag", "") or ""),
            url=str(data.get("url", "") or ""),
        )


@dataclass
class ComponentStatus:
    """``ComponentStatusSpec`` (ST:64-98)."""

    latest_ready: str = ""
    latest_created: str = ""
    previous_rolledout: str = ""
    latest_rolledout: str = ""
    traffic: list[TrafficTarget] = field(default_factory=list)
    url: str = ""
    rest_url: str = ""
    grpc_url: str = ""
    address: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("latestReadyRevision", self.latest_ready),
            ("latestCreatedRevision", self.latest_created),
            ("previousRolledoutRevision", self.previous_rolledout),
            ("latestRolledoutRevision", self.latest_rolledout),
        ):
            if value:
                out[key] = value
        if self.traffic:
            out["traffic"] = [t.to_dict() for t in self.traffic]
        if self.url:
            out["url"] = self.url
        if self.rest_url:
            out["restUrl"] = self.rest_url
        if self.grpc_url:
            out["grpcUrl"] = self.grpc_url
        if self.address is not None:
            out["address"] = copy.deepcopy(self.address)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComponentStatus:
        traffic = data.get("traffic")
        address = data.get("address")
        return cls(
            latest_ready=str(data.get("latestReadyRevision", "") or ""),
            latest_created=str(data.get("latestCreatedRevision", "") or ""),
            previous_rolledout=str(data.get("previousRolledoutRevision", "") or ""),
            latest_rolledout=str(data.get("latestRolledoutRevision", "") or ""),
            traffic=[TrafficTarget.from_dict(t) for t in traffic]
            if isinstance(traffic, list)
            else [],
            url=str(data.get("url", "") or ""),
            rest_url=str(data.get("restUrl", "") or ""),
            grpc_url=str(data.get("grpcUrl", "") or ""),
            address=dict(address) if isinstance(address, Mapping) else None,
        )


@dataclass
class ModelStatus:
    """``ModelStatus`` (ST:163-182); ``states`` is (activeModelState, targetModelState)."""

    transition_status: str = ""
    states: tuple[str, str] | None = None
    last_failure: dict[str, Any] | None = None
    copies: tuple[int, int] | None = None  # (failedCopies, totalCopies)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transitionStatus": self.transition_status}
        if self.states is not None:
            states: dict[str, Any] = {"activeModelState": self.states[0]}
            if self.states[1]:
                states["targetModelState"] = self.states[1]
            out["states"] = states
        if self.last_failure is not None:
            out["lastFailureInfo"] = copy.deepcopy(self.last_failure)
        if self.copies is not None:
            copies: dict[str, Any] = {"failedCopies": self.copies[0]}
            if self.copies[1]:
                copies["totalCopies"] = self.copies[1]
            out["copies"] = copies
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ModelStatus:
        if not isinstance(data, Mapping):
            return cls()
        states = data.get("states")
        copies = data.get("copies")
        failure = data.get("lastFailureInfo")
        return cls(
            transition_status=str(data.get("transitionStatus", "") or ""),
            states=(
                str(states.get("activeModelState", "") or ""),
                str(states.get("targetModelState", "") or ""),
            )
            if isinstance(states, Mapping)
            else None,
            last_failure=dict(failure) if isinstance(failure, Mapping) else None,
            copies=(int(copies.get("failedCopies", 0) or 0), int(copies.get("totalCopies", 0) or 0))
            if isinstance(copies, Mapping)
            else None,
        )

    def update_states(self, state: str, info: Mapping[str, Any] | None = None) -> None:
        """``UpdateModelRevisionStates`` (ST:650-671)."""
        if self.states is None:
            self.states = ("", state)
        else:
            self.states = (self.states[0], state)
        if state in ("Pending", "Loading"):
            self.transition_status = "InProgress"
        elif state == "Loaded":
            self.transition_status = "UpToDate"
            self.states = ("Loaded", state)
        elif state == "FailedToLoad":
            self.transition_status = "BlockedByFailedLoad"
        if info is not None and dict(info) != self.last_failure:
            self.last_failure = dict(info)


@dataclass
class IsvcStatus:
    """A working copy of ``InferenceServiceStatus``; mutate it the way KServe does."""

    conditions: ConditionManager
    observed_generation: int = 0
    annotations: dict[str, Any] | None = None
    address: dict[str, Any] | None = None
    url: str = ""
    components: dict[str, ComponentStatus] = field(default_factory=dict)
    model_status: ModelStatus = field(default_factory=ModelStatus)
    canary_statuses: list[dict[str, Any]] = field(default_factory=list)
    deployment_mode: str = ""
    serving_runtime_name: str = ""
    cluster_serving_runtime_name: str = ""

    @classmethod
    def parse(cls, data: Any, *, now: float) -> IsvcStatus:
        status = data if isinstance(data, Mapping) else {}
        raw_conditions = status.get("conditions")
        conditions = (
            [Condition.from_dict(c) for c in raw_conditions if isinstance(c, Mapping)]
            if isinstance(raw_conditions, list)
            else []
        )
        components_raw = status.get("components")
        components = (
            {
                str(k): ComponentStatus.from_dict(v)
                for k, v in components_raw.items()
                if isinstance(v, Mapping)
            }
            if isinstance(components_raw, Mapping)
            else {}
        )
        annotations = status.get("annotations")
        address = status.get("address")
        canaries = status.get("canaryStatuses")
        og = status.get("observedGeneration")
        return cls(
            conditions=ConditionManager(
                conditions, now=now, happy=READY, dependents=ISVC_DEPENDENTS
            ),
            observed_generation=int(og) if isinstance(og, int) else 0,
            annotations=dict(annotations) if isinstance(annotations, Mapping) else None,
            address=dict(address) if isinstance(address, Mapping) else None,
            url=str(status.get("url", "") or ""),
            components=components,
            model_status=ModelStatus.from_dict(status.get("modelStatus")),
            canary_statuses=[copy.deepcopy(dict(c)) for c in canaries if isinstance(c, Mapping)]
            if isinstance(canaries, list)
            else [],
            deployment_mode=str(status.get("deploymentMode", "") or ""),
            serving_runtime_name=str(status.get("servingRuntimeName", "") or ""),
            cluster_serving_runtime_name=str(status.get("clusterServingRuntimeName", "") or ""),
        )

    def component(self, name: str = "predictor") -> ComponentStatus:
        """``ss.Components[component]``, created empty when missing (as KServe does)."""
        if name not in self.components:
            self.components[name] = ComponentStatus()
        return self.components[name]

    def wipe(self) -> None:
        """``isvc.Status = InferenceServiceStatus{}`` keeping ``deploymentMode``."""
        mode = self.deployment_mode
        self.conditions.reset()
        self.observed_generation = 0
        self.annotations = None
        self.address = None
        self.url = ""
        self.components = {}
        self.model_status = ModelStatus()
        self.canary_statuses = []
        self.serving_runtime_name = ""
        self.cluster_serving_runtime_name = ""
        self.deployment_mode = mode

    def is_ready(self) -> bool:
        return self.conditions.is_happy()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        conditions = self.conditions.conditions()
        if conditions:
            out["conditions"] = [c.to_dict() for c in conditions]
        if self.annotations:
            out["annotations"] = copy.deepcopy(self.annotations)
        if self.address is not None:
            out["address"] = copy.deepcopy(self.address)
        if self.url:
            out["url"] = self.url
        if self.components:
            out["components"] = {k: v.to_dict() for k, v in self.components.items()}
        out["modelStatus"] = self.model_status.to_dict()
        if self.canary_statuses:
            out["canaryStatuses"] = copy.deepcopy(self.canary_statuses)
        if self.deployment_mode:
            out["deploymentMode"] = self.deployment_mode
        if self.serving_runtime_name:
            out["servingRuntimeName"] = self.serving_runtime_name
        if self.cluster_serving_runtime_name:
            out["clusterServingRuntimeName"] = self.cluster_serving_runtime_name
        return out


@dataclass(frozen=True)
class PodView:
    """What KServe sees of the pods it lists for ``modelStatus`` (PRED:271-286).

    ``first`` describes the first pod's ``kserve-container``: ``running`` (not yet ready,
    or ready), ``waiting`` (e.g. ImagePullBackOff) or ``crashloop``.
    """

    total: int = 0
    ready: int = 0
    first: str = "running"
    failure_message: str = ""
    exit_code: int = 1


def mark_stopped(status: IsvcStatus) -> None:
    """``serving.kserve.io/stop``: wipe the status once and report PredictorReady False
    with reason Stopped (both modes do the same, KSERVE.md §1.5 notes)."""
    predictor_ready = status.conditions.get(PREDICTOR_READY)
    already = (
        predictor_ready is not None
        and predictor_ready.status == FALSE
        and predictor_ready.reason == "Stopped"
    )
    if not already:
        status.wipe()
        set_condition(
            status.conditions, PREDICTOR_READY, Condition(PREDICTOR_READY, FALSE, "Stopped")
        )


def propagate_model_status(
    status: IsvcStatus,
    component: ComponentStatus,
    pods: PodView,
    *,
    raw_deployment: bool,
    ksvc_conditions: Sequence[Condition] = (),
) -> None:
    """``PropagateModelStatus`` (ST:720-819) without the storage-initializer branch: the
    simulator's init containers finish at once (so the requeue path never triggers)."""
    model = status.model_status
    if model.copies is None:
        model.copies = (0, 0)
    model.copies = (model.copies[0], pods.ready)
    if pods.total == 0:
        if not raw_deployment and any(c.status == FALSE for c in ksvc_conditions):
            model.update_states("FailedToLoad")
            return
        model.update_states("Pending")
        return
    if status.is_ready() and (raw_deployment or component.latest_created == component.latest_ready):
        model.update_states("Loaded")
        return
    if pods.first == "crashloop":
        info: dict[str, Any] = {"reason": "ModelLoadFailed"}  # FailureInfo, omitempty fields
        if pods.failure_message:
            info["message"] = pods.failure_message
        if pods.exit_code:
            info["exitCode"] = pods.exit_code
        model.update_states("FailedToLoad", info)
    else:
        model.update_states("Pending")


_MODEL_DEFAULTS = {"transitionStatus": "UpToDate"}


def _default_model_status(data: Any) -> Any:
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    for key, value in _MODEL_DEFAULTS.items():
        out.setdefault(key, value)
    states = out.get("states")
    if isinstance(states, Mapping):
        states = dict(states)
        states.setdefault("activeModelState", "Pending")
        states.setdefault("targetModelState", "")
        out["states"] = states
    copies = out.get("copies")
    if isinstance(copies, Mapping):
        copies = dict(copies)
        copies.setdefault("failedCopies", 0)
        out["copies"] = copies
    return out


def canonical(status: Any) -> dict[str, Any]:
    """``status`` as KServe compares it before writing (CTRL:467-479): the CRD's structural
    defaults applied, and condition times left out — knative's ``VolatileTime`` is always
    semantically equal, so a change of ``lastTransitionTime`` alone is never written."""
    if not isinstance(status, Mapping):
        return {}
    out = copy.deepcopy(dict(status))
    conditions = out.get("conditions")
    if isinstance(conditions, list):
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            if isinstance(c, Mapping)
            else c
            for c in conditions
        ]
    if "modelStatus" in out:
        out["modelStatus"] = _default_model_status(out["modelStatus"])
    canaries = out.get("canaryStatuses")
    if isinstance(canaries, list):
        out["canaryStatuses"] = [
            {**c, "modelStatus": _default_model_status(c.get("modelStatus"))}
            if isinstance(c, Mapping) and "modelStatus" in c
            else c
            for c in canaries
        ]
    return out
