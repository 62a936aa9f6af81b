"""Shadow mirroring: a copy of a share of a champion's requests goes to a challenger.

The copies are made by the mesh or the Gateway, through an object of our own per champion,
``<champion>-kserve-canary-shadow`` in the champion's namespace: an Istio VirtualService
(:mod:`canary.routing.istio_mirror`) or a Gateway API HTTPRoute
(:mod:`canary.routing.gateway_mirror`). Objects that KServe or Knative own are never
edited. The copies go to a *mirror Service* that reaches the challenger's pods without
Host routing (Envoy appends ``-shadow`` to a mirrored request's Host, which Knative's host
routing would not recognise); the engine chooses both Services, this module only writes
and reads the object.

This module holds what both kinds share: the values (:class:`MirrorSpec`, what to write;
:class:`MirrorObservation`, what an object says), the :class:`MirrorRouter` protocol, the
names and labels of our objects, and :class:`ManagedMirrorRouter`, the reads and writes
both routers make the same way. Our objects carry the labels of :func:`mirror_labels` and
an owner reference to the champion (no ``controller: true``): a real cluster's garbage
collector removes them with the champion, but the controller removes them itself too.

An object of our name that lacks ``app.kubernetes.io/managed-by: kserve-canary`` is never
overwritten or deleted: :class:`MirrorError` names it and the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from canary.k8s.client import (
    CONTROLLER_MANAGER,
    INFERENCE_SERVICE,
    KubeClient,
    NotFound,
    ResourceKind,
)
from canary.k8s.label_selector import check_label_value
from canary.log import get_logger

__all__ = [
    "CHALLENGER_LABEL",
    "CHAMPION_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "OWNED_SELECTOR",
    "PURPOSE_LABEL",
    "PURPOSE_SHADOW",
    "ROLLOUT_ID_LABEL",
    "SHADOW_SUFFIX",
    "ManagedMirrorRouter",
    "MirrorError",
    "MirrorKind",
    "MirrorObservation",
    "MirrorRouter",
    "MirrorSpec",
    "as_list",
    "as_mapping",
    "champion_of",
    "mirror_labels",
    "mirror_metadata",
    "mirror_object_name",
    "observation_from",
    "percent_number",
    "service_of_host",
]

JsonObject = dict[str, Any]
MirrorKind = Literal["istio", "gateway-api"]

log = get_logger("canary.routing.mirror")

SHADOW_SUFFIX = "kserve-canary-shadow"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = CONTROLLER_MANAGER  # "kserve-canary"
PURPOSE_LABEL = "kserve-canary.io/purpose"
PURPOSE_SHADOW = "shadow"
CHAMPION_LABEL = "kserve-canary.io/champion"
CHALLENGER_LABEL = "kserve-canary.io/challenger"
ROLLOUT_ID_LABEL = "kserve-canary.io/rollout-id"
OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{PURPOSE_LABEL}={PURPOSE_SHADOW}"
"""The label selector of every mirror object of ours, for cleanup sweeps."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # a DNS-1035 label


class MirrorError(Exception):
    """A mirror write refused: an object that is not ours is in the way, or the spec is
    invalid. The message names the object (or the field) and what to do."""


def mirror_object_name(champion: str) -> str:
    """The name of our mirror object for the InferenceService ``champion``."""
    return f"{champion}-{SHADOW_SUFFIX}"


def champion_of(name: str) -> str:
    """The champion's name in a mirror object's name, or "" when ``name`` is not one."""
    suffix = f"-{SHADOW_SUFFIX}"
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else ""


def _check_dns_label(what: str, value: object, pattern: re.Pattern[str] = _DNS_LABEL) -> None:
    if not isinstance(value, str) or len(value) > 63 or not pattern.fullmatch(value):
        kind = "a DNS-1035 label" if pattern is _SERVICE_NAME else "a DNS label"
        raise MirrorError(
            f"mirror spec: {what} {value!r} is not {kind} (1-63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit)"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class MirrorSpec:
    """What to mirror: ``percent`` % of the requests to ``source_service`` (the champion's
    predictor Service) copied to ``mirror_service`` (reaching the challenger's pods), both
    on ``port`` in ``namespace``. ``champion_uid`` goes into the owner reference;
    ``challenger`` is the champion's own name for a dark launch. Invalid values raise
    :class:`MirrorError` on construction."""

    namespace: str
    champion: str
    champion_uid: str
    rollout_id: str
    challenger: str
    source_service: str
    mirror_service: str
    percent: int
    port: int = 80

    def __post_init__(self) -> None:
        _check_dns_label("namespace", self.namespace)
        _check_dns_label("champion", self.champion)
        _check_dns_label("challenger", self.challenger)
        _check_dns_label("source_service", self.source_service, _SERVICE_NAME)
        _check_dns_label("mirror_service", self.mirror_service, _SERVICE_NAME)
        if not isinstance(self.champion_uid, str) or not self.champion_uid:
            raise MirrorError(
                "mirror spec: champion_uid is empty (the owner reference needs the "
                "InferenceService's metadata.uid)"
            )
        if not isinstance(self.rollout_id, str) or not self.rollout_id:
            raise MirrorError("mirror spec: rollout_id is empty")
        try:
            check_label_value(ROLLOUT_ID_LABEL, self.rollout_id)
        except ValueError as exc:
            raise MirrorError(f"mirror spec: rollout_id: {exc}") from None
        if not _is_int(self.percent) or not 1 <= self.percent <= 100:
            raise MirrorError(
                f"mirror spec: percent must be a whole number from 1 to 100, not {self.percent!r}"
                " (to stop mirroring, remove the mirror object)"
            )
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            raise MirrorError(f"mirror spec: port must be from 1 to 65535, not {self.port!r}")
        if self.mirror_service == self.source_service:
            raise MirrorError(
                f"mirror spec: the mirror Service {self.mirror_service!r} is the source "
                "Service itself; copies would go back to the champion"
            )

    @property
    def name(self) -> str:
        """Our mirror object's name."""
        return mirror_object_name(self.champion)


@dataclass(frozen=True)
class MirrorObservation:
    """What one mirror object says.

    ``percent`` is the share the object mirrors, as a float: Istio's ``mirrorPercentage``
    (absent means 100, as Istio reads it), or the Gateway API filter's ``percent`` or
    ``fraction`` (neither means 100, as Gateway API reads it). An object of ours that is not
    a mirror rule any more (edited by hand) mirrors nothing: ``percent`` 0.0 with empty
    Service names. ``managed`` is True when the object carries
    ``app.kubernetes.io/managed-by: kserve-canary``; ``champion``, ``challenger`` and
    ``rollout_id`` come from its labels (the champion from its name when the label is
    missing, "" when neither says). ``owner_uid`` is its InferenceService owner's uid."""

    kind: MirrorKind
    namespace: str
    name: str
    champion: str
    challenger: str
    rollout_id: str
    source_service: str
    mirror_service: str
    percent: float
    managed: bool
    owner_uid: str | None
    resource_version: str


class MirrorRouter(Protocol):
    """Writes, reads and removes the mirror object of one kind (Istio or Gateway API)."""

    @property
    def kind(self) -> MirrorKind:
        """``"istio"`` or ``"gateway-api"``."""
        ...

    def apply(self, spec: MirrorSpec) -> MirrorObservation:
        """Create or update the champion's mirror object by server-side apply; returns the
        object as written. Raises :class:`MirrorError` when an object of that name exists
        and is not ours."""
        ...

    def observe(self, namespace: str, champion: str) -> MirrorObservation | None:
        """The champion's mirror object now, or None when there is none."""
        ...

    def remove(self, namespace: str, champion: str) -> bool:
        """Delete the champion's mirror object: True if one was deleted, False if there was
        none. Raises :class:`MirrorError` (deleting nothing) when the object is not ours."""
        ...

    def owned(self, namespace: str | None) -> list[MirrorObservation]:
        """Every mirror object of ours (by :data:`OWNED_SELECTOR`) in ``namespace``, or in
        all namespaces when None, sorted by namespace and name: for cleanup sweeps."""
        ...


# --- pure helpers shared by the builders and the parsers ------------------------------------


def mirror_labels(spec: MirrorSpec) -> dict[str, str]:
    """The labels every mirror object carries."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        PURPOSE_LABEL: PURPOSE_SHADOW,
        CHAMPION_LABEL: spec.champion,
        CHALLENGER_LABEL: spec.challenger,
        ROLLOUT_ID_LABEL: spec.rollout_id,
    }


def mirror_metadata(spec: MirrorSpec) -> JsonObject:
    """``metadata`` of the champion's mirror object: name, namespace, labels and the owner
    reference to the champion (without ``controller: true``)."""
    return {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": mirror_labels(spec),
        "ownerReferences": [
            {
                "apiVersion": INFERENCE_SERVICE.api_version,
                "kind": INFERENCE_SERVICE.kind,
                "name": spec.champion,
                "uid": spec.champion_uid,
            }
        ],
    }


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (tolerant reading of hand edits)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def service_of_host(host: Any, namespace: str) -> str | None:
    """The Service name in a host that names a Service of ``namespace``: ``svc``,
    ``svc.ns``, ``svc.ns.svc`` or ``svc.ns.svc.<cluster domain>`` (any domain). None for
    anything else (another namespace, an external name, not a string)."""
    if not isinstance(host, str) or not host:
        return None
    parts = host.split(".")
    if not _SERVICE_NAME.fullmatch(parts[0]) or len(parts[0]) > 63:
        return None
    if len(parts) == 1:
        return parts[0]
    if parts[1] != namespace or (len(parts) > 2 and parts[2] != "svc"):
        return None
    if len(parts) > 3 and not all(_DNS_LABEL.fullmatch(p) for p in parts[3:]):
        return None
    return parts[0]


def observation_from(
    obj: Mapping[str, Any],
    kind: MirrorKind,
    *,
    source_service: str,
    mirror_service: str,
    percent: float,
) -> MirrorObservation | None:
    """A :class:`MirrorObservation` of ``obj`` with the given rule; the rest is read from
    its metadata. None when ``obj`` has no name or namespace, or ``percent`` is not a finite
    number from 0 to 100."""
    metadata = as_mapping(obj.get("metadata"))
    name, namespace = _text(metadata.get("name")), _text(metadata.get("namespace"))
    if not name or not namespace:
        return None
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        return None
    labels = as_mapping(metadata.get("labels"))
    owner_uid: str | None = None
    for entry in as_list(metadata.get("ownerReferences")):
        ref = as_mapping(entry)
        group = _text(ref.get("apiVersion")).partition("/")[0]
        if ref.get("kind") == INFERENCE_SERVICE.kind and group == INFERENCE_SERVICE.group:
            owner_uid = _text(ref.get("uid")) or None
            break
    return MirrorObservation(
        kind=kind,
        namespace=namespace,
        name=name,
        champion=_text(labels.get(CHAMPION_LABEL)) or champion_of(name),
        challenger=_text(labels.get(CHALLENGER_LABEL)),
        rollout_id=_text(labels.get(ROLLOUT_ID_LABEL)),
        source_service=source_service,
        mirror_service=mirror_service,
        percent=float(percent),
        managed=labels.get(MANAGED_BY_LABEL) == MANAGED_BY,
        owner_uid=owner_uid,
        resource_version=_text(metadata.get("resourceVersion")),
    )


def percent_number(value: Any) -> float | None:
    """A share as the object spells it: an int or float (not a bool, not a string), finite,
    from 0 to 100; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= 100 else None


# --- the reads and writes both kinds make the same way --------------------------------------


class ManagedMirrorRouter:
    """The shared implementation of :class:`MirrorRouter`: one object per champion of
    ``resource``, built by ``build`` and read by ``parse`` (the kind's pure functions).

    Writes are server-side applies as ``field_manager``, forced (we own every field we
    write). Before every write the object is read: one that lacks our managed-by label, or
    is ours but not a shadow mirror, is refused with :class:`MirrorError`."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        kind: MirrorKind,
        resource: ResourceKind,
        build: Callable[[MirrorSpec], JsonObject],
        parse: Callable[[Mapping[str, Any]], MirrorObservation | None],
        field_manager: str = CONTROLLER_MANAGER,
    ) -> None:
        self._kube = kube
        self._kind: MirrorKind = kind
        self._resource = resource
        self._build = build
        self._parse = parse
        self._field_manager = field_manager

    @property
    def kind(self) -> MirrorKind:
        return self._kind

    # --- reads -----------------------------------------------------------------------------

    def _get(self, namespace: str, champion: str) -> JsonObject | None:
        try:
            return self._kube.get(self._resource, namespace, mirror_object_name(champion))
        except NotFound:
            return None

    def _observation(self, obj: Mapping[str, Any]) -> MirrorObservation:
        """What ``obj`` says; an object that is not a mirror rule mirrors nothing."""
        observed = self._parse(obj)
        if observed is not None:
            return observed
        empty = observation_from(obj, self._kind, source_service="", mirror_service="",
                                 percent=0.0)  # fmt: skip
        if empty is None:  # the apiserver always gives a name and a namespace
            metadata = as_mapping(obj.get("metadata"))
            raise ValueError(f"{self._resource.kind} without a name or namespace: {metadata!r}")
        return empty

    def observe(self, namespace: str, champion: str) -> MirrorObservation | None:
        obj = self._get(namespace, champion)
        return None if obj is None else self._observation(obj)

    def owned(self, namespace: str | None) -> list[MirrorObservation]:
        items, _ = self._kube.list(self._resource, namespace, label_selector=OWNED_SELECTOR)
        found = [self._observation(item) for item in items]
        return sorted(found, key=lambda o: (o.namespace, o.name))

    # --- writes ----------------------------------------------------------------------------

    def _refuse_foreign(self, obj: Mapping[str, Any], doing: str) -> None:
        metadata = as_mapping(obj.get("metadata"))
        labels = as_mapping(metadata.get("labels"))
        where = f"{self._resource.kind} {metadata.get('namespace')}/{metadata.get('name')}"
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            log.warning("mirror.refused", object=where, doing=doing, reason="not managed")
            raise MirrorError(
                f"cannot {doing} {where}: it exists and is not managed by kserve-canary (no "
                f"label {MANAGED_BY_LABEL}={MANAGED_BY}); kserve-canary never overwrites or "
                "deletes an object it did not write. Rename or delete that object, then try "
                "again"
            )
        if labels.get(PURPOSE_LABEL) != PURPOSE_SHADOW:
            log.warning("mirror.refused", object=where, doing=doing, reason="not a mirror")
            raise MirrorError(
                f"cannot {doing} {where}: it is managed by kserve-canary but is not a shadow "
                f"mirror (label {PURPOSE_LABEL} is {labels.get(PURPOSE_LABEL)!r}, not "
                f"{PURPOSE_SHADOW!r}). Delete it by hand if nothing uses it, then try again"
            )

    def apply(self, spec: MirrorSpec) -> MirrorObservation:
        existing = self._get(spec.namespace, spec.champion)
        if existing is not None:
            self._refuse_foreign(existing, "write")
        written = self._kube.apply(
            self._resource,
            spec.namespace,
            self._build(spec),
            field_manager=self._field_manager,
            force=True,
        )
        log.info(
            "mirror.applied",
            kind=self._kind,
            namespace=spec.namespace,
            name=spec.name,
            challenger=spec.challenger,
            mirror_service=spec.mirror_service,
            percent=spec.percent,
            rollout_id=spec.rollout_id,
        )
        return self._observation(written)

    def remove(self, namespace: str, champion: str) -> bool:
        existing = self._get(namespace, champion)
        if existing is None:
            return False
        self._refuse_foreign(existing, "delete")
        name = mirror_object_name(champion)
        try:
            self._kube.delete(self._resource, namespace, name)
        except NotFound:  # removed in between (another sweep): nothing left to do
            return False
        log.info("mirror.removed", kind=self._kind, namespace=namespace, name=name)
        return True
