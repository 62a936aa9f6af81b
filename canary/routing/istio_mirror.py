"""Shadow mirroring through an Istio VirtualService of our own (``networking.istio.io/v1``).

One VirtualService per champion, ``<champion>-kserve-canary-shadow``, for the champion's
source Service: its one HTTP route sends every request on to the source Service, and copies
``mirrorPercentage`` % of them to the mirror Service::

    spec:
      hosts: [<source>.<ns>.svc.<cluster domain>, <extra hosts>...]
      gateways: [mesh]                       # or the configured gateways
      http:
      - name: kserve-canary-shadow
        route: [{destination: {host: <source FQDN>, port: {number: 80}}}]
        mirror: {host: <mirror>.<ns>.svc.<cluster domain>, port: {number: 80}}
        mirrorPercentage: {value: <percent>}

:func:`virtual_service` builds it and :func:`observe_virtual_service` reads one back; both
are pure, so the test bed's traffic simulator mirrors what our object says by reading it
with the same parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from canary.k8s.client import CONTROLLER_MANAGER, VIRTUAL_SERVICE, KubeClient
from canary.routing.mirror import (
    SHADOW_SUFFIX,
    ManagedMirrorRouter,
    MirrorObservation,
    MirrorSpec,
    as_list,
    as_mapping,
    mirror_metadata,
    observation_from,
    percent_number,
    service_of_host,
)

__all__ = [
    "DEFAULT_CLUSTER_DOMAIN",
    "IstioMirrorRouter",
    "observe_virtual_service",
    "service_host",
    "virtual_service",
]

JsonObject = dict[str, Any]

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
_ROUTE_NAME = SHADOW_SUFFIX
_DOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _check_domain(cluster_domain: str) -> None:
    if len(cluster_domain) > 253 or not _DOMAIN.fullmatch(cluster_domain):
        raise ValueError(
            f"cluster domain {cluster_domain!r} is not a DNS name (e.g. cluster.local)"
        )


def service_host(service: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    """A Service's cluster host name: ``<service>.<namespace>.svc.<cluster domain>``."""
    return f"{service}.{namespace}.svc.{cluster_domain}"


def virtual_service(
    spec: MirrorSpec,
    *,
    gateways: Sequence[str] = ("mesh",),
    extra_hosts: Sequence[str] = (),
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> JsonObject:
    """The champion's mirror VirtualService (the whole object, for server-side apply)."""
    _check_domain(cluster_domain)
    source = service_host(spec.source_service, spec.namespace, cluster_domain)
    hosts = [source, *(host for host in dict.fromkeys(extra_hosts) if host != source)]
    return {
        "apiVersion": VIRTUAL_SERVICE.api_version,
        "kind": VIRTUAL_SERVICE.kind,
        "metadata": mirror_metadata(spec),
        "spec": {
            "hosts": hosts,
            "gateways": list(gateways),
            "http": [
                {
                    "name": _ROUTE_NAME,
                    "route": [{"destination": {"host": source, "port": {"number": spec.port}}}],
                    "mirror": {
                        "host": service_host(spec.mirror_service, spec.namespace, cluster_domain),
                        "port": {"number": spec.port},
                    },
                    "mirrorPercentage": {"value": float(spec.percent)},
                }
            ],
        },
    }


def _mirror_percent(rule: Mapping[str, Any]) -> float | None:
    """``mirrorPercentage.value``: absent means 100 (Istio mirrors everything then); a
    ``mirrorPercentage`` without a value means 0 (the proto default)."""
    if "mirrorPercentage" not in rule:
        return 100.0
    share = rule["mirrorPercentage"]
    if not isinstance(share, Mapping):
        return None
    return percent_number(share.get("value", 0))


def observe_virtual_service(obj: Mapping[str, Any]) -> MirrorObservation | None:
    """What a VirtualService mirrors, or None when it is not a mirror rule of the shape
    :func:`virtual_service` writes: exactly one HTTP route with exactly one destination
    and a ``mirror``, both Services of the object's own namespace, and a numeric
    ``mirrorPercentage`` from 0 to 100 (or none: 100). Anything else (no ``http``, two
    routes, no mirror, a percentage written as a string, another kind) gives None; it
    never raises. Pure: the test bed reads our objects with it too."""
    if obj.get("kind", VIRTUAL_SERVICE.kind) != VIRTUAL_SERVICE.kind:
        return None
    namespace = as_mapping(obj.get("metadata")).get("namespace")
    if not isinstance(namespace, str):
        return None
    http = as_list(as_mapping(obj.get("spec")).get("http"))
    if len(http) != 1 or not isinstance(http[0], Mapping):
        return None
    rule = http[0]
    route = as_list(rule.get("route"))
    if len(route) != 1:
        return None
    destination = as_mapping(as_mapping(route[0]).get("destination"))
    source = service_of_host(destination.get("host"), namespace)
    mirror = service_of_host(as_mapping(rule.get("mirror")).get("host"), namespace)
    percent = _mirror_percent(rule)
    if source is None or mirror is None or percent is None:
        return None
    return observation_from(
        obj, "istio", source_service=source, mirror_service=mirror, percent=percent
    )


class IstioMirrorRouter(ManagedMirrorRouter):
    """:class:`~canary.routing.mirror.MirrorRouter` with an Istio VirtualService.

    ``gateways`` are the VirtualService's ``gateways`` (``mesh``: the sidecars of the
    callers; a Gateway as ``<namespace>/<name>`` for traffic that enters through it);
    ``extra_hosts`` are added to its ``hosts`` after the source Service's cluster host
    (e.g. the InferenceService's external host, for traffic through a Gateway)."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        gateways: Sequence[str] = ("mesh",),
        extra_hosts: Sequence[str] = (),
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        field_manager: str = CONTROLLER_MANAGER,
    ) -> None:
        if not gateways:
            raise ValueError("an Istio mirror needs at least one gateway ('mesh': the sidecars)")
        _check_domain(cluster_domain)
        self._gateways = tuple(gateways)
        self._extra_hosts = tuple(extra_hosts)
        self._cluster_domain = cluster_domain
        super().__init__(
            kube,
            kind="istio",
            resource=VIRTUAL_SERVICE,
            build=self._virtual_service,
            parse=observe_virtual_service,
            field_manager=field_manager,
        )

    def _virtual_service(self, spec: MirrorSpec) -> JsonObject:
        return virtual_service(
            spec,
            gateways=self._gateways,
            extra_hosts=self._extra_hosts,
            cluster_domain=self._cluster_domain,
        )
