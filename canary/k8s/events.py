"""Kubernetes Events on InferenceServices, so `kubectl describe` tells a model owner what the
controller decided and why.

Each kind of decision has its own reason (``EventReason``), unlike tools whose every event
says "Synced". A repeated event (same object, reason and message) within ``repeat_window`` is
folded into the first one by raising its ``count``, as kubectl's recorder does, so a rollout
waiting on a window does not flood the namespace. Events are for people; the audit database
is the record.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from canary.k8s.client import EVENT, KubeClient, NotFound
from canary.model import EventReason

__all__ = ["EventRecorder", "EventSink", "ObjectReference"]

MAX_MESSAGE = 1024  # what the apiserver accepts (in bytes); longer messages are cut


@dataclass(frozen=True)
class ObjectReference:
    namespace: str
    name: str
    uid: str | None = None
    resource_version: str | None = None
    kind: str = "InferenceService"
    api_version: str = "serving.kserve.io/v1beta1"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectReference:
        meta = obj.get("metadata") or {}
        return cls(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion"),
            kind=str(obj.get("kind") or "InferenceService"),
            api_version=str(obj.get("apiVersion") or "serving.kserve.io/v1beta1"),
        )


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventSink(Protocol):
    """What records Kubernetes Events: :class:`EventRecorder`, or a test double."""

    def emit(
        self,
        target: ObjectReference,
        reason: EventReason,
        message: str,
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> object: ...


class EventRecorder:
    def __init__(
        self,
        kube: KubeClient,
        *,
        instance: str,
        component: str = "kserve-canary",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        repeat_window: timedelta = timedelta(minutes=10),
    ) -> None:
        self._kube = kube
        self._instance = instance
        self._component = component
        self._clock = clock
        self._window = repeat_window
        # (namespace, name, uid, reason, message) -> (event name, count, first seen); the
        # uid keeps a deleted and re-created service from inheriting the old one's Events
        self._seen: dict[tuple[str, str, str, str, str], tuple[str, int, datetime]] = {}

    def emit(
        self,
        target: ObjectReference,
        reason: EventReason,
        message: str,
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> dict[str, Any]:
        """Create the event, or raise the count of the same recent event. Returns it."""
        now = self._clock()
        if len(message.encode("utf-8")) > MAX_MESSAGE:
            cut = message.encode("utf-8")[: MAX_MESSAGE - 3].decode("utf-8", "ignore")
            message = cut + "..."
        key = (target.namespace, target.name, target.uid or "", reason.value, message)
        known = self._seen.get(key)
        if known is not None and now - known[2] < self._window:
            name, count, first = known
            try:
                event = self._kube.patch(
                    EVENT,
                    target.namespace,
                    name,
                    {"count": count + 1, "lastTimestamp": _timestamp(now)},
                )
            except NotFound:  # expired or deleted meanwhile: start a new one
                pass
            else:
                self._seen[key] = (name, count + 1, first)
                return event
        name = f"{target.name}.{secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": target.namespace},
            "involvedObject": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "namespace": target.namespace,
                "name": target.name,
                **({"uid": target.uid} if target.uid else {}),
                **({"resourceVersion": target.resource_version} if target.resource_version else {}),
            },
            "reason": reason.value,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": _timestamp(now),
            "lastTimestamp": _timestamp(now),
            "eventTime": _micro(now),
            "action": reason.value,
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
        }
        event = self._kube.create(EVENT, target.namespace, body)
        self._seen[key] = (name, 1, now)
        return event
