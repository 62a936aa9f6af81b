"""The test bed's Gateway: a Gateway API implementation honouring kserve-canary's HTTPRoute.

In Standard mode KServe v0.20.0 sends every request to the stable Service (KSERVE.md §2.4),
so the controller splits the traffic with an HTTPRoute of its own, ``<isvc>-kserve-canary``,
whose one rule weights the stable and the canary Service
(:class:`~canary.routing.standard.StandardRouter`). On a cluster a Gateway implementation
(Envoy Gateway, say) applies those weights. On the test bed :class:`GatewaySimulator` does:
it watches HTTPRoutes and, while such a route exists for a Standard-mode InferenceService,
hands the traffic simulator the route's split instead of the one the KServe simulator
programs. Deleting the route brings KServe's split back. Knative-mode InferenceServices and
mirrors (``TrafficSimulator.set_mirror``) are not touched.

How a route becomes a split (pure: :func:`route_split`, the rules chosen here):

* The route is taken as attached and every simulated request as matching its **first rule**
  (ours has exactly one, without ``matches``); ``parentRefs``, ``hostnames`` and the route's
  status are ignored, since the test bed has no Gateway object to attach to.
* A ``backendRef`` names a Service of the route's namespace (``group`` "" and ``kind``
  Service, the defaults). Its ``weight`` defaults to 1, as in Gateway API; a Service listed
  twice gets the sum; a weight of 0 gets nothing.
* The Services that exist are the Deployments the KServe simulator runs for the
  InferenceService (KServe creates and deletes each predictor's Deployment and Service
  together), with the storage URIs of KServe's own split (:func:`standard_targets`).
* **A backend whose Service does not exist** (the canary was rolled back, a typo): Envoy
  answers its share with HTTP 500. The traffic simulator models no gateway errors, and
  those errors would be charged to no model, so the backend is dropped and the remaining
  weights are renormalised.
* **A backend whose Deployment is not Ready** (no available replica, so the Service has no
  endpoints): Envoy answers its share with 503. Here the share goes to the stable instead,
  so a starting canary serves nothing and no request is lost. The stable itself always
  gets its share, ready or not, as in the KServe simulator's split.
* Weights become whole percents by the largest remainder (they add up to 100, so a share
  below 0.5 % may round to 0). With no positive weight left, every target stays listed at
  0 % and nothing is served (on a cluster every request would fail).

Every Service that exists is listed, at 0 % if the route gives it nothing, so its simulated
pod and counters live exactly as long as with KServe's split.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from canary.k8s.client import HTTP_ROUTE, Gone, KubeClient, KubeError, Unavailable, WatchEvent
from canary.log import get_logger
from canary.routing.standard import ROUTE_SUFFIX
from testbed.kserve import standard
from testbed.kserve.controller import SplitTarget
from testbed.kserve.standard import StandardWorld

__all__ = [
    "GatewaySimulator",
    "StandardTarget",
    "backend_weights",
    "gateway_split",
    "route_owner",
    "route_split",
    "standard_targets",
]

Key = tuple[str, str]
Publish = Callable[[str, str, list[SplitTarget]], None]
_SUFFIX = f"-{ROUTE_SUFFIX}"


class StandardTarget(NamedTuple):
    """A Standard-mode predictor Service (and its Deployment) that exists."""

    service: str
    storage_uri: str | None
    ready: bool  # the Deployment has an available replica, so the Service has endpoints
    stable: bool


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def route_owner(route: Mapping[str, Any]) -> Key | None:
    """``(namespace, isvc)`` for a route named ``<isvc>-kserve-canary``, else ``None``."""
    metadata = _mapping(route.get("metadata"))
    name = str(metadata.get("name") or "")
    if not name.endswith(_SUFFIX) or len(name) == len(_SUFFIX):
        return None
    return str(metadata.get("namespace") or ""), name[: -len(_SUFFIX)]


def standard_targets(world: StandardWorld) -> list[StandardTarget]:
    """The Services of a Standard-mode InferenceService that exist, stable first.

    Names and storage URIs come from KServe's split (the stable, then each canary of the
    spec); a name counts while its Deployment exists."""
    targets: list[StandardTarget] = []
    for index, (service, _percent, uri) in enumerate(standard.effective_split(world)):
        deployment = world.deployments.get(service)
        if deployment is not None:
            ready = deployment.available_replicas > 0
            targets.append(StandardTarget(service, uri, ready, stable=index == 0))
    return targets


def backend_weights(route: Mapping[str, Any]) -> list[tuple[str, int]]:
    """``(Service name, weight)`` of the first rule's backends in the route's namespace;
    other kinds and namespaces are left out (they are no Service of this InferenceService)."""
    namespace = _mapping(route.get("metadata")).get("namespace")
    rules = _mapping(route.get("spec")).get("rules") or []
    if not rules:
        return []
    weights: list[tuple[str, int]] = []
    for entry in _mapping(rules[0]).get("backendRefs") or []:
        ref = _mapping(entry)
        name = ref.get("name")
        if not isinstance(name, str) or not name:
            continue
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
            continue
        if ref.get("namespace", namespace) != namespace:
            continue
        weight = ref.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int):
            continue
        weights.append((name, weight))
    return weights


def _percents(weights: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Whole percents adding up to 100, by the largest remainder (ties: first listed)."""
    total = sum(weight for _, weight in weights)
    if total <= 0:
        return {}
    percents: dict[str, int] = {}
    remainders: list[tuple[int, int, str]] = []
    for index, (name, weight) in enumerate(weights):
        whole, remainder = divmod(100 * weight, total)
        percents[name] = whole
        remainders.append((-remainder, index, name))
    for _, _, name in sorted(remainders)[: 100 - sum(percents.values())]:
        percents[name] += 1
    return percents


def route_split(route: Mapping[str, Any], targets: Sequence[StandardTarget]) -> list[SplitTarget]:
    """Where the Gateway sends an InferenceService's requests under ``route`` (module doc)."""
    existing = {t.service: t for t in targets}
    stable = next((t.service for t in targets if t.stable), None)
    shares: dict[str, int] = {}
    for service, weight in backend_weights(route):
        target = existing.get(service)
        if target is None or weight <= 0:
            continue  # a missing Service: dropped, the others renormalised (module doc)
        chosen = service
        if not target.ready and not target.stable:
            if stable is None:
                continue
            chosen = stable  # no endpoints: the share goes to the stable (module doc)
        shares[chosen] = shares.get(chosen, 0) + weight
    percents = _percents(list(shares.items()))
    return [
        SplitTarget(t.service, percents.get(t.service, 0), t.storage_uri, "standard")
        for t in targets
    ]


def gateway_split(
    kserve: Sequence[SplitTarget],
    world: StandardWorld | None,
    route: Mapping[str, Any] | None,
) -> list[SplitTarget]:
    """Our route's split for a Standard-mode InferenceService (``world`` given) that has
    one; otherwise KServe's split unchanged."""
    if route is None or world is None:
        return list(kserve)
    return route_split(route, standard_targets(world))


class GatewaySimulator:
    """Combines the KServe simulator's splits with the HTTPRoutes it watches, and tells
    ``publish(namespace, isvc, targets)`` (the traffic simulator) whenever the result for an
    InferenceService changes.

    Feed it ``on_split_change`` and ``on_standard_world`` from the
    :class:`~testbed.kserve.controller.KServeSimulator`; :meth:`start` watches
    HTTPRoutes in every namespace (list, then watch from the list's resourceVersion; list
    again after ``Gone`` or an error, backing off while the apiserver is unavailable).
    """

    def __init__(
        self,
        kube: KubeClient,
        publish: Publish,
        *,
        watch_timeout_seconds: int = 2,
    ) -> None:
        self._kube = kube
        self._publish = publish
        self._watch_timeout = max(1, watch_timeout_seconds)
        self._log = get_logger("sandbox.gateway")
        # held while publishing, so the traffic simulator sees the changes in order; never
        # held while calling into the KServe simulator (which calls us under its own lock)
        self._lock = threading.Lock()
        self._kserve: dict[Key, list[SplitTarget]] = {}
        self._worlds: dict[Key, StandardWorld] = {}
        self._routes: dict[Key, Mapping[str, Any]] = {}
        self._published: dict[Key, list[SplitTarget]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- inputs ----------------------------------------------------------------------------

    def on_split_change(self, namespace: str, name: str, targets: list[SplitTarget]) -> None:
        """The KServe simulator's split for ``namespace/name`` changed."""
        key = (namespace, name)
        with self._lock:
            if targets:
                self._kserve[key] = list(targets)
            else:
                self._kserve.pop(key, None)
            self._refresh(key)

    def on_standard_world(self, namespace: str, name: str, world: StandardWorld | None) -> None:
        """The simulated Deployments of a Standard-mode InferenceService changed (``None``:
        it is gone or not in Standard mode)."""
        key = (namespace, name)
        with self._lock:
            if world is None:
                self._worlds.pop(key, None)
            else:
                self._worlds[key] = world
            self._refresh(key)

    def sync_routes(self, routes: Iterable[Mapping[str, Any]]) -> None:
        """Every HTTPRoute there is (a fresh list)."""
        fresh: dict[Key, Mapping[str, Any]] = {}
        for route in routes:
            owner = route_owner(route)
            if owner is not None:
                fresh[owner] = route
        with self._lock:
            changed = set(self._routes) | set(fresh)
            self._routes = fresh
            for key in sorted(changed):
                self._refresh(key)

    def route_event(self, event: WatchEvent) -> None:
        """One watch event on an HTTPRoute."""
        owner = route_owner(event.object)
        if owner is None or event.type == "BOOKMARK":
            return
        with self._lock:
            if event.type == "DELETED":
                self._routes.pop(owner, None)
            else:
                self._routes[owner] = event.object
            self._refresh(owner)

    # --- queries ---------------------------------------------------------------------------

    def split(self, namespace: str, name: str) -> list[SplitTarget]:
        """What the traffic simulator was last told for ``namespace/name``."""
        with self._lock:
            return list(self._published.get((namespace, name), []))

    def _refresh(self, key: Key) -> None:
        """Recompute ``key``'s split and publish it if it moved. Callers hold the lock."""
        route = self._routes.get(key)
        wanted = gateway_split(self._kserve.get(key, []), self._worlds.get(key), route)
        if wanted == self._published.get(key, []):
            return
        if wanted:
            self._published[key] = wanted
        else:
            self._published.pop(key, None)
        self._log.info(
            "gateway.split_changed",
            namespace=key[0],
            name=key[1],
            by="httproute" if route is not None and key in self._worlds else "kserve",
            split=[(t.target, t.percent) for t in wanted],
        )
        try:
            self._publish(key[0], key[1], list(wanted))
        except Exception as exc:  # a refused split must not stop the gateway
            self._log.exception("gateway.publish_failed", error=str(exc))

    # --- the watch -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the gateway is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_loop, name="gateway-watch", daemon=True)
        self._thread.start()
        self._log.info("gateway.started")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a stuck apiserver call
                self._log.error("gateway.thread_stuck")
            self._thread = None
        self._log.info("gateway.stopped")

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    routes, resource_version = self._kube.list(HTTP_ROUTE)
                    self.sync_routes(routes)
                for event in self._kube.watch(
                    HTTP_ROUTE,
                    resource_version=resource_version,
                    timeout_seconds=self._watch_timeout,
                ):
                    resource_version = event.resource_version or resource_version
                    self.route_event(event)
                    if self._stop.is_set():
                        break
                backoff = 0.1
            except Gone:
                self._log.info("gateway.relist")
                resource_version = None
            except Unavailable as exc:
                self._log.warning("gateway.apiserver_unavailable", error=str(exc), retry_in=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except KubeError as exc:
                self._log.error("gateway.watch_failed", error=str(exc))
                resource_version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
