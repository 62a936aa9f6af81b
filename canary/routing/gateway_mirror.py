"""Shadow mirroring through a Gateway API HTTPRoute of our own (``gateway.networking.k8s.io/v1``).

One HTTPRoute per champion, ``<champion>-kserve-canary-shadow``: its one rule sends every
request on to the champion's source Service and, with a ``RequestMirror`` filter, copies
``percent`` % of them to the mirror Service::

    spec:
      parentRefs: [{group: "", kind: Service, name: <source>, port: 80}]   # or configured
      hostnames: [...]                                                    # when configured
      rules:
      - backendRefs: [{group: "", kind: Service, name: <source>, port: 80}]
        filters:
        - type: RequestMirror
          requestMirror:
            backendRef: {group: "", kind: Service, name: <mirror>, port: 80}
            percent: <percent>

Without configured ``parentRefs`` the route is attached to the source Service itself (a
GAMMA mesh route: it applies to the mesh's requests to that Service); with them, to the
named Gateways (and the hostnames should then name the InferenceService's host).

:func:`http_route` builds it and :func:`observe_http_route` reads one back; both are pure,
so the test bed's traffic simulator mirrors what our object says with the same parser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canary.k8s.client import CONTROLLER_MANAGER, HTTP_ROUTE, KubeClient
from canary.routing.mirror import (
    ManagedMirrorRouter,
    MirrorObservation,
    MirrorSpec,
    as_list,
    as_mapping,
    mirror_metadata,
    observation_from,
    percent_number,
)

__all__ = ["GatewayMirrorRouter", "http_route", "observe_http_route"]

JsonObject = dict[str, Any]

_MIRROR_FILTER = "RequestMirror"


def _service_ref(name: str, port: int) -> JsonObject:
    return {"group": "", "kind": "Service", "name": name, "port": port}


def http_route(
    spec: MirrorSpec,
    *,
    parent_refs: Sequence[Mapping[str, Any]] = (),
    hostnames: Sequence[str] = (),
) -> JsonObject:
    """The champion's mirror HTTPRoute (the whole object, for server-side apply). Empty
    ``parent_refs`` attach it to the source Service (GAMMA); empty ``hostnames`` are left
    out."""
    parents = [dict(ref) for ref in parent_refs] or [_service_ref(spec.source_service, spec.port)]
    route_spec: JsonObject = {"parentRefs": parents}
    if hostnames:
        route_spec["hostnames"] = list(hostnames)
    route_spec["rules"] = [
        {
            "backendRefs": [_service_ref(spec.source_service, spec.port)],
            "filters": [
                {
                    "type": _MIRROR_FILTER,
                    "requestMirror": {
                        "backendRef": _service_ref(spec.mirror_service, spec.port),
                        "percent": spec.percent,
                    },
                }
            ],
        }
    ]
    return {
        "apiVersion": HTTP_ROUTE.api_version,
        "kind": HTTP_ROUTE.kind,
        "metadata": mirror_metadata(spec),
        "spec": route_spec,
    }


def _local_service(ref: Any, namespace: str) -> str | None:
    """The name of the Service a ``backendRef`` names in ``namespace`` (``group`` "" and
    ``kind`` Service are the defaults), else None."""
    if not isinstance(ref, Mapping):
        return None
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        return None
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        return None
    if ref.get("namespace", namespace) != namespace:
        return None
    return name


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _filter_percent(mirror: Mapping[str, Any]) -> float | None:
    """``percent``, or ``fraction`` as ``numerator / denominator`` (denominator 100 when
    left out); neither means 100 (Gateway API mirrors everything then); both, or values of
    the wrong type or range, give None."""
    has_percent, has_fraction = "percent" in mirror, "fraction" in mirror
    if has_percent and has_fraction:
        return None
    if has_percent:
        value = mirror["percent"]
        return None if _whole(value) is None else percent_number(value)
    if not has_fraction:
        return 100.0
    fraction = mirror["fraction"]
    if not isinstance(fraction, Mapping):
        return None
    numerator, denominator = (
        _whole(fraction.get("numerator")),
        _whole(fraction.get("denominator", 100)),
    )
    if numerator is None or denominator is None:
        return None
    if denominator < 1 or not 0 <= numerator <= denominator:
        return None
    return 100.0 * numerator / denominator


def observe_http_route(obj: Mapping[str, Any]) -> MirrorObservation | None:
    """What an HTTPRoute mirrors, or None when it is not a mirror rule of the shape
    :func:`http_route` writes: exactly one rule with exactly one backend and exactly one
    ``RequestMirror`` filter (other filters are ignored), both Services of the object's own
    namespace, and a whole ``percent`` from 0 to 100, a ``fraction``, or neither (100).
    Anything else (no rules, two rules, no mirror filter, a percent written as a string,
    another kind) gives None; it never raises. ``parentRefs`` and ``hostnames`` are not
    read. Pure: the test bed reads our objects with it too."""
    if obj.get("kind", HTTP_ROUTE.kind) != HTTP_ROUTE.kind:
        return None
    namespace = as_mapping(obj.get("metadata")).get("namespace")
    if not isinstance(namespace, str):
        return None
    rules = as_list(as_mapping(obj.get("spec")).get("rules"))
    if len(rules) != 1 or not isinstance(rules[0], Mapping):
        return None
    rule = rules[0]
    backends = as_list(rule.get("backendRefs"))
    mirrors = [
        as_mapping(f.get("requestMirror"))
        for f in as_list(rule.get("filters"))
        if isinstance(f, Mapping) and f.get("type") == _MIRROR_FILTER
    ]
    if len(backends) != 1 or len(mirrors) != 1:
        return None
    source = _local_service(backends[0], namespace)
    mirror = _local_service(mirrors[0].get("backendRef"), namespace)
    percent = _filter_percent(mirrors[0])
    if source is None or mirror is None or percent is None:
        return None
    return observation_from(
        obj, "gateway-api", source_service=source, mirror_service=mirror, percent=percent
    )


class GatewayMirrorRouter(ManagedMirrorRouter):
    """:class:`~canary.routing.mirror.MirrorRouter` with a Gateway API HTTPRoute.

    ``parent_refs`` and ``hostnames`` go into every route as given; without parent
    references the route attaches to the champion's source Service (GAMMA)."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        parent_refs: Sequence[Mapping[str, Any]] = (),
        hostnames: Sequence[str] = (),
        field_manager: str = CONTROLLER_MANAGER,
    ) -> None:
        self._parent_refs = tuple(dict(ref) for ref in parent_refs)
        self._hostnames = tuple(hostnames)
        super().__init__(
            kube,
            kind="gateway-api",
            resource=HTTP_ROUTE,
            build=self._http_route,
            parse=observe_http_route,
            field_manager=field_manager,
        )

    def _http_route(self, spec: MirrorSpec) -> JsonObject:
        return http_route(spec, parent_refs=self._parent_refs, hostnames=self._hostnames)
