"""The traffic router for KServe's Standard ("RawDeployment") mode with ``spec.canary[]``.

A canary is one entry of ``spec.canary`` (an atomic list, KSERVE.md §2.1 and §3). KServe
v0.20.0 runs one Deployment and Service per entry, ``<isvc>-<entry name>-predictor``, but
its ``trafficPercent`` only sizes replicas: KServe's routes keep pointing at the stable
Service alone (§2.4). So by default (``weights="own-httproute"``) this router splits the
traffic with a Gateway API HTTPRoute of its own, ``<isvc>-kserve-canary``, whose one rule
weights the stable and the canary Service; KServe's own routes are never touched (DESIGN.md
§2, "Ownership"). With ``weights="kserve-native"`` (KServe after v0.20: #5912, #5984) the
canary's ``trafficPercent`` is the route weight and no route of ours is written.

Revision names are Service names: the stable is ``<isvc>-predictor`` or
``<isvc>-<spec.predictor.name>-predictor``, a canary ``<isvc>-<canary predictor.name>-
predictor``. A promotion makes the canary's Service the stable one (§2.5), so the promoted
revision keeps its name.

``converged`` means (chosen here, in both modes):

* ``PredictorReady`` is True (KServe's stable Deployment serves);
* ``status.canaryStatuses`` names exactly the spec's canaries (KServe has reconciled the
  list, so the old stable/canary Deployments of a promotion or rollback are gone), and
  when there is a canary its status entry is ``ready`` with the spec's ``trafficPercent``
  (replicas sized for the share);
* own-httproute: our route's weights are exactly ``{stable: 100 − p, canary: p}`` (with a
  canary) or ``{stable: 100}`` (without one; no route at all also counts when there is no
  canary, since KServe then sends everything to the stable);
* kserve-native: the status conditions above are the whole test, because KServe weights
  exactly the Ready canaries with their status ``trafficPercent``.

``latest_failed`` is always False: v0.20.0 reports no failure for a canary (``modelStatus``
is never filled, ``CanaryPredictorReady`` False/``CanariesNotReady`` is also what a canary
still starting shows), so a crash loop shows only as ``latest_ready`` staying False and the
engine's readiness deadline has to decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from canary.k8s.client import (
    CONTROLLER_MANAGER,
    HTTP_ROUTE,
    INFERENCE_SERVICE,
    Conflict,
    Invalid,
    KubeClient,
    NotFound,
)
from canary.model import Revision, SetTraffic, TrafficView
from canary.routing.base import Observed

__all__ = ["ROUTE_SUFFIX", "StandardRouter", "route_name"]

JsonObject = dict[str, Any]
WeightsMode = Literal["own-httproute", "kserve-native"]

ROUTE_SUFFIX = "kserve-canary"
_MANAGED_BY = "app.kubernetes.io/managed-by"
_MANAGER = CONTROLLER_MANAGER
_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_LEGACY_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
_CANARY_BASE = "canary"
_CONTAINER_NAME = "kserve-container"
_SERVICE_PORT = 80


def route_name(isvc: str) -> str:
    """The name of the HTTPRoute this router owns for the InferenceService ``isvc``."""
    return f"{isvc}-{ROUTE_SUFFIX}"


def _service_name(isvc: str, predictor_name: str | None) -> str:
    """``PredictorServiceName``: ``<isvc>-predictor`` or ``<isvc>-<name>-predictor``."""
    return f"{isvc}-{predictor_name}-predictor" if predictor_name else f"{isvc}-predictor"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_true(status: Mapping[str, Any], kind: str) -> bool:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition.get("status") == "True"
    return False


def _mode(isvc: Mapping[str, Any]) -> str:
    recorded = str(_mapping(isvc.get("status")).get("deploymentMode") or "")
    if not recorded:
        annotations = _mapping(_mapping(isvc.get("metadata")).get("annotations"))
        recorded = str(annotations.get(_MODE_ANNOTATION) or "")
    return _LEGACY_MODES.get(recorded, recorded)


def _canaries(isvc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = _mapping(isvc.get("spec")).get("canary") or []
    return [entry for entry in entries if isinstance(entry, Mapping)]


def _entry_name(entry: Mapping[str, Any]) -> str:
    return str(_mapping(entry.get("predictor")).get("name") or "")


def _storage_uri(predictor: Mapping[str, Any]) -> str | None:
    value = _mapping(predictor.get("model")).get("storageUri") or predictor.get("storageUri")
    return str(value) if value else None


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ValueError(f"trafficPercent must be between 0 and 100, not {percent!r}")


class _Reading:
    """The parts of one InferenceService read that every method needs."""

    def __init__(self, isvc: Mapping[str, Any]) -> None:
        self.isvc = isvc
        metadata = _mapping(isvc.get("metadata"))
        self.namespace = str(metadata.get("namespace") or "")
        self.name = str(metadata.get("name") or "")
        self.uid = str(metadata.get("uid") or "")
        self.generation = int(metadata.get("generation") or 0)
        self.resource_version = str(metadata.get("resourceVersion") or "")
        self.predictor = _mapping(_mapping(isvc.get("spec")).get("predictor"))
        self.status = _mapping(isvc.get("status"))
        self.canaries = _canaries(isvc)
        self.stable_name = _service_name(self.name, self.predictor.get("name") or None)
        self.stable_uri = _storage_uri(self.predictor)
        self.canary = self.canaries[0] if len(self.canaries) == 1 else None

    @property
    def canary_service(self) -> str | None:
        return None if self.canary is None else _service_name(self.name, _entry_name(self.canary))

    @property
    def canary_uri(self) -> str | None:
        if self.canary is None:
            return None
        return _storage_uri(_mapping(self.canary.get("predictor"))) or self.stable_uri

    @property
    def spec_percent(self) -> int:
        return 0 if self.canary is None else int(self.canary.get("trafficPercent") or 0)

    def canary_statuses(self) -> dict[str, Mapping[str, Any]]:
        entries = self.status.get("canaryStatuses") or []
        return {str(e.get("name") or ""): e for e in entries if isinstance(e, Mapping)}


def _route_weights(route: Mapping[str, Any] | None) -> dict[str, int] | None:
    if route is None:
        return None
    weights: dict[str, int] = {}
    for rule in _mapping(route.get("spec")).get("rules") or []:
        for ref in _mapping(rule).get("backendRefs") or []:
            name = str(_mapping(ref).get("name") or "")
            if name:
                weight = _mapping(ref).get("weight")
                weights[name] = weights.get(name, 0) + (1 if weight is None else int(weight))
    return weights


class StandardRouter:
    """:class:`~canary.routing.base.TrafficRouter` for KServe Standard mode.

    ``parent_refs`` and ``hostnames`` go into our HTTPRoute as given: without parent
    references it is attached to no Gateway, so a deployment has to name the Gateway (or,
    for mesh routing, the stable Service) and a hostname of its own.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        field_manager: str = CONTROLLER_MANAGER,
        weights: WeightsMode = "own-httproute",
        parent_refs: Sequence[Mapping[str, Any]] = (),
        hostnames: Sequence[str] = (),
    ) -> None:
        if weights not in ("own-httproute", "kserve-native"):
            raise ValueError(f"unknown weights mode {weights!r}")
        self._kube = kube
        self._field_manager = field_manager
        self._weights: WeightsMode = weights
        self._parent_refs = [dict(ref) for ref in parent_refs]
        self._hostnames = list(hostnames)

    # --- reads -----------------------------------------------------------------------------

    def _route(self, namespace: str, name: str) -> JsonObject | None:
        try:
            return self._kube.get(HTTP_ROUTE, namespace, route_name(name))
        except NotFound:
            return None

    def observe(self, namespace: str, name: str) -> Observed:
        isvc = self._kube.get(INFERENCE_SERVICE, namespace, name)
        route = self._route(namespace, name) if self._weights == "own-httproute" else None
        return self._observed(isvc, route)

    def _observed(self, isvc: Mapping[str, Any], route: Mapping[str, Any] | None) -> Observed:
        r = _Reading(isvc)
        statuses = r.canary_statuses()
        stable = Revision(r.stable_name, r.stable_uri)
        canary = r.canary_service
        percent = r.spec_percent
        canary_status = statuses.get(_entry_name(r.canary)) if r.canary is not None else None
        canary_ready = canary_status is not None and bool(canary_status.get("ready"))

        status_converged = _is_true(r.status, "PredictorReady") and set(statuses) == {
            _entry_name(c) for c in r.canaries
        }
        if canary_status is not None:
            status_converged = (
                status_converged
                and canary_ready
                and int(canary_status.get("trafficPercent") or 0) == percent
            )

        routed = True
        if self._weights == "kserve-native":
            split = {r.stable_name: 100}
            for entry in r.canaries:
                entry_status = statuses.get(_entry_name(entry))
                share = 0
                if entry_status is not None and entry_status.get("ready"):
                    share = int(entry_status.get("trafficPercent") or 0)
                split[_service_name(r.name, _entry_name(entry))] = share
                split[r.stable_name] -= share
            converged = status_converged
        else:
            weights = _route_weights(route)
            split = weights if weights is not None else {r.stable_name: 100}
            wanted = {r.stable_name: 100} if canary is None else {
                r.stable_name: 100 - percent, canary: percent}  # fmt: skip
            routed = weights == wanted or (weights is None and canary is None)
            converged = status_converged and routed

        if canary is not None:
            latest = Revision(canary, r.canary_uri)
            latest_ready = canary_ready
        else:
            latest = stable
            latest_ready = _is_true(r.status, "PredictorReady")
        view = TrafficView(
            latest=latest,
            stable=stable,
            split=split,
            spec_percent=percent,
            converged=converged and len(r.canaries) <= 1,
            latest_ready=latest_ready,
            latest_failed=False,  # v0.20.0 has no failure signal for a canary (module doc)
            failure_message=None,
            generation=r.generation,
            resource_version=r.resource_version,
            routed=routed,
        )
        return Observed(
            namespace=r.namespace,
            name=r.name,
            view=view,
            uid=r.uid,
            generation=r.generation,
            resource_version=r.resource_version,
            mode=_mode(isvc),
            storage_uri=r.stable_uri,
        )

    # --- writes ----------------------------------------------------------------------------

    def start(
        self, namespace: str, name: str, storage_uri: str, percent: int, *, resource_version: str
    ) -> Observed:
        """Add ``spec.canary`` with one entry in ONE merge patch (the list is atomic, so it
        is written whole), guarded by ``resource_version``; then, in own-httproute mode,
        weight our HTTPRoute ``100 − percent`` / ``percent``."""
        _check_percent(percent)
        if not storage_uri:
            raise ValueError("a canary needs the new model's storageUri")
        r = _Reading(self._kube.get(INFERENCE_SERVICE, namespace, name))
        if _mode(r.isvc) != "Standard":
            raise ValueError(
                f"{namespace}/{name} is not in Standard deployment mode "
                f"(mode {_mode(r.isvc) or 'unknown'!r}); spec.canary needs Standard mode"
            )
        if r.canaries:
            names = ", ".join(_entry_name(c) or "?" for c in r.canaries)
            raise ValueError(f"{namespace}/{name} already has a canary in spec.canary ({names})")
        model = _mapping(self._stable_model(r))
        if "modelFormat" not in model:
            raise ValueError(f"{namespace}/{name}: spec.predictor.model has no modelFormat")
        canary_name = self._canary_name(r)
        entry = {
            "predictor": {
                "name": canary_name,
                "model": {
                    "modelFormat": dict(_mapping(model["modelFormat"])),
                    "name": _CONTAINER_NAME,
                    "storageUri": storage_uri,
                },
            },
            "trafficPercent": percent,
        }
        written = self._kube.patch(
            INFERENCE_SERVICE,
            namespace,
            name,
            {"spec": {"canary": [entry]}},
            resource_version=resource_version,
        )
        route: JsonObject | None = None
        if self._weights == "own-httproute":
            w = _Reading(written)
            route = self._write_route(w, {w.stable_name: 100 - percent,
                                          _service_name(name, canary_name): percent})  # fmt: skip
        return self._observed(written, route)

    def apply(
        self, namespace: str, name: str, action: SetTraffic, *, resource_version: str | None
    ) -> None:
        """Step (also ``start``/``reassert``): the canary's ``trafficPercent`` (JSON patch
        guarded by ``test`` ops), then our route. Promote: one update making the canary the
        stable (§2.5), then our route 100 % to it. Rollback: our route 100 % to the stable
        first (so no request goes to a Service KServe is about to delete), then remove
        ``spec.canary``."""
        r = _Reading(self._kube.get(INFERENCE_SERVICE, namespace, name))
        if len(r.canaries) > 1:
            raise ValueError(f"{namespace}/{name} has {len(r.canaries)} canaries; expected one")
        if action.purpose == "promote":
            self._promote(r, action, resource_version)
        elif action.purpose == "rollback":
            self._rollback(r, action, resource_version)
        else:
            self._step(r, action, resource_version)

    def _step(self, r: _Reading, action: SetTraffic, resource_version: str | None) -> None:
        _check_percent(action.percent)
        canary = self._require_canary(r, action)
        self._json_patch(
            r,
            resource_version,
            canary,
            [{"op": "replace", "path": "/spec/canary/0/trafficPercent", "value": action.percent}],
        )
        if self._weights == "own-httproute":
            self._write_route(r, {r.stable_name: 100 - action.percent,
                                  _service_name(r.name, canary): action.percent})  # fmt: skip

    def _promote(self, r: _Reading, action: SetTraffic, resource_version: str | None) -> None:
        if r.canary is None and action.revision == r.stable_name:  # already promoted
            new_stable = r.stable_name
        else:
            canary = self._require_canary(r, action)
            uri = r.canary_uri
            if uri is None:
                raise ValueError(f"{r.namespace}/{r.name}: the canary has no storageUri")
            model_path = "/spec/predictor/model/storageUri"
            if "storageUri" not in _mapping(self._stable_model(r)):
                raise ValueError(f"{r.namespace}/{r.name}: spec.predictor.model has no storageUri")
            self._json_patch(
                r,
                resource_version,
                canary,
                [
                    {"op": "add", "path": "/spec/predictor/name", "value": canary},
                    {"op": "replace", "path": model_path, "value": uri},
                    {"op": "remove", "path": "/spec/canary"},
                ],
            )
            new_stable = _service_name(r.name, canary)
        if self._weights == "own-httproute":
            self._write_route(r, {new_stable: 100})

    def _rollback(self, r: _Reading, action: SetTraffic, resource_version: str | None) -> None:
        if self._weights == "own-httproute":
            self._write_route(r, {r.stable_name: 100})
        if r.canary is None:
            return  # already rolled back
        canary = self._require_canary(r, action)
        self._json_patch(r, resource_version, canary, [{"op": "remove", "path": "/spec/canary"}])

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _stable_model(r: _Reading) -> Mapping[str, Any]:
        model = r.predictor.get("model")
        if not isinstance(model, Mapping):
            raise ValueError(
                f"{r.namespace}/{r.name}: spec.predictor has no model (write it in the "
                "model: form KServe's defaulter produces)"
            )
        return model

    @staticmethod
    def _canary_name(r: _Reading) -> str:
        """``canary``, or ``canary-N`` when the stable predictor already has that name (it
        does after a promotion)."""
        taken = str(r.predictor.get("name") or "")
        candidate, index = _CANARY_BASE, 0
        while candidate == taken:
            index += 1
            candidate = f"{_CANARY_BASE}-{index}"
        return candidate

    @staticmethod
    def _require_canary(r: _Reading, action: SetTraffic) -> str:
        """The canary entry's name, checking that ``action`` is about this canary."""
        if r.canary is None:
            raise ValueError(f"{r.namespace}/{r.name} has no canary in spec.canary")
        if action.revision != r.canary_service:
            raise ValueError(
                f"{r.namespace}/{r.name}: the action is for {action.revision!r} but the canary "
                f"is {r.canary_service!r}"
            )
        return _entry_name(r.canary)

    def _json_patch(
        self,
        r: _Reading,
        resource_version: str | None,
        canary: str,
        ops: list[JsonObject],
    ) -> None:
        """Apply ``ops`` after ``test`` guards on the resourceVersion (when given) and on the
        canary's name. A failed guard raises :class:`Conflict`."""
        guards: list[JsonObject] = []
        if resource_version is not None:
            guards.append(
                {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
            )
        guards.append({"op": "test", "path": "/spec/canary/0/predictor/name", "value": canary})
        try:
            self._kube.patch(
                INFERENCE_SERVICE, r.namespace, r.name, guards + ops, patch_type="json"
            )
        except Invalid as exc:
            # the apiserver answers a failed ``test`` op with a bare 422; tell it apart from a
            # refused object by reading again: if a guarded value moved, it is a conflict
            current = _Reading(self._kube.get(INFERENCE_SERVICE, r.namespace, r.name))
            moved = current.canary is None or _entry_name(current.canary) != canary
            if resource_version is not None and current.resource_version != resource_version:
                moved = True
            if moved:
                raise Conflict(409, "Conflict", f"a guard failed: {exc.message}") from None
            raise

    def _write_route(self, r: _Reading, weights: Mapping[str, int]) -> JsonObject:
        """Server-side apply our HTTPRoute with ``weights`` (Service name → weight)."""
        name = route_name(r.name)
        try:
            existing: JsonObject | None = self._kube.get(HTTP_ROUTE, r.namespace, name)
        except NotFound:
            existing = None
        if existing is not None:
            labels = _mapping(_mapping(existing.get("metadata")).get("labels"))
            if labels.get(_MANAGED_BY) != _MANAGER:
                raise ValueError(
                    f"HTTPRoute {r.namespace}/{name} exists and is not managed by kserve-canary"
                )
        spec: JsonObject = {
            "rules": [
                {
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": service,
                            "port": _SERVICE_PORT,
                            "weight": weight,
                        }
                        for service, weight in weights.items()
                    ]
                }
            ]
        }
        if self._parent_refs:
            spec["parentRefs"] = self._parent_refs
        if self._hostnames:
            spec["hostnames"] = self._hostnames
        body: JsonObject = {
            "apiVersion": HTTP_ROUTE.api_version,
            "kind": HTTP_ROUTE.kind,
            "metadata": {
                "name": name,
                "namespace": r.namespace,
                "labels": {_MANAGED_BY: _MANAGER},
                "ownerReferences": [
                    {
                        "apiVersion": INFERENCE_SERVICE.api_version,
                        "kind": INFERENCE_SERVICE.kind,
                        "name": r.name,
                        "uid": r.uid,
                    }
                ],
            },
            "spec": spec,
        }
        return self._kube.apply(
            HTTP_ROUTE, r.namespace, body, field_manager=self._field_manager, force=True
        )
