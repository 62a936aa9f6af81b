"""The traffic router for KServe's Knative ("Serverless") mode.

Traffic in this mode is one number, ``spec.predictor.canaryTrafficPercent`` (p): the newest
revision gets p % and the rolled-out revision keeps 100 − p (KSERVE.md §1.3). Reads come
only from ``status.components.predictor``; ``status.observedGeneration`` is the Knative
Service's counter, not the InferenceService's, so it is never used (KSERVE.md §3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary.k8s.client import INFERENCE_SERVICE, KubeClient
from canary.model import Revision, SetTraffic, TrafficView
from canary.routing.base import Observed

__all__ = ["KnativeRouter", "observed_from"]

JsonObject = dict[str, Any]

_LEGACY_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_PREV_TAG = "prev"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def _is_true(status: Mapping[str, Any], kind: str) -> bool:
    condition = _condition(status, kind)
    return condition is not None and condition.get("status") == "True"


def _mode(isvc: Mapping[str, Any]) -> str:
    recorded = str(_mapping(isvc.get("status")).get("deploymentMode") or "")
    if recorded:
        return recorded
    annotations = _mapping(_mapping(isvc.get("metadata")).get("annotations"))
    wanted = str(annotations.get(_MODE_ANNOTATION) or "")
    return _LEGACY_MODES.get(wanted, wanted)


def _spec_percent(predictor_spec: Mapping[str, Any]) -> int:
    """``canaryTrafficPercent``; unset means 100 (nil and 100 route the same, §1.3)."""
    value = predictor_spec.get("canaryTrafficPercent")
    return 100 if value is None else int(value)


def _split(traffic: list[Mapping[str, Any]], latest_ready: str) -> dict[str, int]:
    """Effective share per revision: a ``latestRevision`` entry serves the revision Knative
    resolved it to (its ``revisionName``, i.e. the latest *ready* revision)."""
    split: dict[str, int] = {}
    for entry in traffic:
        revision = str(entry.get("revisionName") or "")
        if not revision and entry.get("latestRevision"):
            revision = latest_ready
        if not revision:
            continue
        split[revision] = split.get(revision, 0) + int(entry.get("percent") or 0)
    return split


def _traffic_matches(traffic: list[Mapping[str, Any]], percent: int, rolled_out: str) -> bool:
    """Whether the status traffic is what KServe programs for ``percent`` (§1.3)."""
    latest = [e for e in traffic if e.get("latestRevision")]
    if len(latest) != 1:
        return False
    latest_percent = int(latest[0].get("percent") or 0)
    if not rolled_out or percent == 100:  # a first rollout ignores p; 100 is one entry
        return len(traffic) == 1 and latest_percent == 100
    if not 0 <= percent < 100 or len(traffic) != 2 or latest_percent != percent:
        return False
    prev = next((e for e in traffic if not e.get("latestRevision")), None)
    return (
        prev is not None
        and prev.get("tag") == _PREV_TAG
        and prev.get("revisionName") == rolled_out
        and int(prev.get("percent") or 0) == 100 - percent
    )


def _failure(status: Mapping[str, Any]) -> tuple[bool, str | None]:
    """``PredictorReady`` False/RevisionFailed, or a model that failed to load (which KServe
    reports earlier, from the newest revision's first pod)."""
    ready = _condition(status, "PredictorReady")
    if (
        ready is not None
        and ready.get("status") == "False"
        and ready.get("reason") == "RevisionFailed"
    ):
        return True, str(ready.get("message") or "the latest revision failed")
    model_status = _mapping(status.get("modelStatus"))
    if model_status.get("transitionStatus") == "BlockedByFailedLoad":
        info = _mapping(model_status.get("lastFailureInfo"))
        message = str(info.get("message") or info.get("reason") or "the model failed to load")
        return True, message
    return False, None


def observed_from(isvc: Mapping[str, Any]) -> Observed:
    """Reduce an InferenceService object (as the API returns it) to an :class:`Observed`."""
    metadata = _mapping(isvc.get("metadata"))
    spec = _mapping(_mapping(isvc.get("spec")).get("predictor"))
    status = _mapping(isvc.get("status"))
    predictor = _mapping(_mapping(status.get("components")).get("predictor"))
    traffic = [e for e in predictor.get("traffic") or [] if isinstance(e, Mapping)]

    storage_uri_value = _mapping(spec.get("model")).get("storageUri")
    storage_uri = str(storage_uri_value) if storage_uri_value else None
    created = str(predictor.get("latestCreatedRevision") or "")
    ready = str(predictor.get("latestReadyRevision") or "")
    rolled_out = str(predictor.get("latestRolledoutRevision") or "")
    spec_percent = _spec_percent(spec)
    failed, message = _failure(status)

    view = TrafficView(
        latest=Revision(created, storage_uri),
        stable=Revision(rolled_out) if rolled_out else None,
        split=_split(traffic, ready),
        spec_percent=spec_percent,
        converged=_traffic_matches(traffic, spec_percent, rolled_out)
        and _is_true(status, "PredictorRouteReady"),
        latest_ready=bool(created) and created == ready and not failed,
        latest_failed=failed,
        failure_message=message,
        generation=int(metadata.get("generation") or 0),
        resource_version=str(metadata.get("resourceVersion") or ""),
    )
    return Observed(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        view=view,
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        resource_version=str(metadata.get("resourceVersion") or ""),
        mode=_mode(isvc),
        storage_uri=storage_uri,
        status_traffic=tuple(dict(e) for e in traffic),
    )


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ValueError(f"canaryTrafficPercent must be between 0 and 100, not {percent!r}")


class KnativeRouter:
    """:class:`~canary.routing.base.TrafficRouter` for KServe Knative mode."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    def observe(self, namespace: str, name: str) -> Observed:
        return observed_from(self._kube.get(INFERENCE_SERVICE, namespace, name))

    def start(
        self, namespace: str, name: str, storage_uri: str, percent: int, *, resource_version: str
    ) -> Observed:
        _check_percent(percent)
        if not storage_uri:
            raise ValueError("a canary needs the new model's storageUri")
        current = observed_from(self._kube.get(INFERENCE_SERVICE, namespace, name))
        if current.view.stable is None:
            raise ValueError(
                f"{namespace}/{name} has no rolled-out revision yet (status.components."
                "predictor.latestRolledoutRevision is empty): KServe ignores "
                "canaryTrafficPercent on a first deploy, so this would not be a canary"
            )
        patch = {"spec": {"predictor": {"canaryTrafficPercent": percent,
                                        "model": {"storageUri": storage_uri}}}}  # fmt: skip
        written = self._kube.patch(
            INFERENCE_SERVICE, namespace, name, patch, resource_version=resource_version
        )
        return observed_from(written)

    def apply(
        self, namespace: str, name: str, action: SetTraffic, *, resource_version: str | None
    ) -> None:
        """Write the canary's share. Only ``canaryTrafficPercent`` is written: a promotion is
        100 (same routing as unset), a rollback 0 (keep it until the model spec has been
        reverted and the new revision is ready, KSERVE.md §1.5)."""
        if action.purpose == "promote":
            percent = 100
        elif action.purpose == "rollback":
            percent = 0
        else:
            percent = action.percent
        _check_percent(percent)
        patch = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        self._kube.patch(
            INFERENCE_SERVICE, namespace, name, patch, resource_version=resource_version
        )
