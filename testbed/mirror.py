"""The test bed's mesh for shadow traffic: Istio or Envoy Gateway honouring kserve-canary's
mirror objects.

For shadow mirroring the controller writes one object per champion InferenceService,
``<champion>-kserve-canary-shadow``, labelled ``kserve-canary.io/purpose: shadow`` and
``kserve-canary.io/champion: <champion>``: an Istio VirtualService whose rule has ``mirror``
and ``mirrorPercentage``, or a Gateway API HTTPRoute whose rule has a ``RequestMirror``
filter. On a cluster Envoy then copies that share of the champion's requests to the mirror
Service. On the test bed :class:`MirrorSimulator` does: it watches both kinds (by the label)
and tells the traffic simulator ``set_mirror(namespace, champion, target, percent)``;
deleting the object stops the mirror.

It reads the objects itself, independently of the product's code, so that a test on the
test bed checks what the controller wrote against what a mesh would do with it. How an
object becomes a mirror (pure: :func:`read_mirror`, :func:`cluster_services`,
:func:`mirror_target`):

* The champion is the ``kserve-canary.io/champion`` label; an object without it is
  unreadable (logged, ignored). The object's hosts, gateways, parentRefs and route
  backends are not checked: every simulated request of the champion is taken to match.
* Only the **first rule** counts (``spec.http[0]``, ``spec.rules[0]``; ours have one),
  as with the test bed's Gateway.
* Istio: the mirror Service is the first DNS label of ``mirror.host`` (``scorer-v3-predictor``
  of ``scorer-v3-predictor.models.svc.cluster.local``); a host naming another namespace (its
  second label) reaches no Service of the champion's. The share is
  ``mirrorPercentage.value``; without ``mirrorPercentage`` the deprecated integer
  ``mirrorPercent`` applies, and without either every request is copied (100). An empty
  ``mirrorPercentage`` is 0, as the protobuf default. Without ``mirror`` the first entry of
  the newer ``mirrors`` list is read the same way (``destination.host``,
  ``percentage.value``): the traffic simulator has one mirror per InferenceService.
* Gateway API: the first ``RequestMirror`` filter of the rule; its ``backendRef`` must be a
  core Service (``group`` "", ``kind`` Service, the defaults) in the route's namespace. The
  share is ``percent``, else ``fraction`` (``numerator`` / ``denominator``, denominator
  100 by default), else 100.
* Shares are clamped to 0..100.

Which Services exist (:func:`cluster_services`), as the KServe simulator runs them:

* Standard mode: each predictor Deployment's Service, by name (``scorer-predictor``,
  ``scorer-canary-predictor``: :func:`~testbed.gateway.standard_targets`), while its
  Deployment exists. One without an available replica has no endpoints: Envoy's copies
  would fail, so nothing is mirrored.
* Knative mode: ``<revision>-private`` (Knative's private Service of a revision, straight to
  its pods) for each revision in an InferenceService's route, which is the revision
  ``<revision>``. Revisions no route lists (older ones) are not simulated, so their private
  Services count as missing.
* **A mirror Service that does not exist** (a typo, the challenger's revision replaced, a
  cross-namespace host): Envoy's copies would get 503s and go nowhere; here nothing is
  mirrored, and the problem is logged (``mirror.service_missing``) and counted
  (:attr:`MirrorSimulator.missing_total`).

If several shadow objects name one champion, the first by (kind, name) wins and the others
are logged. The traffic simulator decides where the copies count: a target the challenger
InferenceService routes is shared with it (see :mod:`testbed.traffic`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from canary.k8s.client import (
    HTTP_ROUTE,
    VIRTUAL_SERVICE,
    Gone,
    KubeClient,
    KubeError,
    ResourceKind,
    Unavailable,
    WatchEvent,
)
from canary.log import get_logger
from testbed.gateway import standard_targets
from testbed.kserve.controller import SplitTarget
from testbed.kserve.standard import StandardWorld
from testbed.traffic import Target

__all__ = [
    "CHAMPION_LABEL",
    "PURPOSE_LABEL",
    "SHADOW_SELECTOR",
    "Backend",
    "MirrorSimulator",
    "MirrorSpec",
    "MirrorState",
    "UnreadableMirror",
    "cluster_services",
    "mirror_target",
    "read_http_route",
    "read_mirror",
    "read_virtual_service",
]

PURPOSE_LABEL = "kserve-canary.io/purpose"
CHAMPION_LABEL = "kserve-canary.io/champion"
SHADOW_SELECTOR = f"{PURPOSE_LABEL}=shadow"
PRIVATE_SUFFIX = "-private"
WATCHED = (VIRTUAL_SERVICE, HTTP_ROUTE)

Key = tuple[str, str]
ObjectKey = tuple[str, str, str]  # kind, namespace, name
Publish = Callable[[str, str, Target | None, float], None]


class UnreadableMirror(ValueError):
    """A shadow object this mesh cannot act on at all (the message says why)."""


@dataclass(frozen=True)
class MirrorSpec:
    """What one shadow object asks for. ``service`` is the mirror Service in ``namespace``,
    or None when the object mirrors to nothing the champion's namespace has (``note``
    says why)."""

    kind: str
    namespace: str
    name: str
    champion: str
    service: str | None
    percent: float
    note: str = ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first(value: Any) -> Mapping[str, Any]:
    return _mapping(value[0]) if isinstance(value, list) and value else {}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnreadableMirror(f"{what} is not a number: {value!r}")
    return float(value)


def _share(value: float) -> float:
    return min(100.0, max(0.0, value))


def _identity(obj: Mapping[str, Any], kind: str) -> tuple[str, str, str]:
    metadata = _mapping(obj.get("metadata"))
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    champion = _mapping(metadata.get("labels")).get(CHAMPION_LABEL)
    if not isinstance(champion, str) or not champion:
        raise UnreadableMirror(f"{kind} {namespace}/{name} has no {CHAMPION_LABEL} label")
    return namespace, name, champion


def read_virtual_service(obj: Mapping[str, Any]) -> MirrorSpec:
    """The mirror an Istio VirtualService asks for (module doc)."""
    namespace, name, champion = _identity(obj, "VirtualService")
    rule = _first(_mapping(obj.get("spec")).get("http"))
    mirror = _mapping(rule.get("mirror"))
    if mirror:
        if "mirrorPercentage" in rule:
            value = _mapping(rule.get("mirrorPercentage")).get("value", 0.0)
            percent = _number(value, "mirrorPercentage.value")
        else:
            legacy = rule.get("mirrorPercent", rule.get("mirror_percent"))
            percent = 100.0 if legacy is None else _number(legacy, "mirrorPercent")
    else:
        mirror = _mapping(_first(rule.get("mirrors")).get("destination"))
        percentage = _first(rule.get("mirrors")).get("percentage")
        value = 100.0 if percentage is None else _mapping(percentage).get("value", 0.0)
        percent = _number(value, "mirrors[0].percentage.value")
    spec = MirrorSpec("VirtualService", namespace, name, champion, None, _share(percent))
    host = mirror.get("host")
    if not isinstance(host, str) or not host:
        return _note(spec, "the first http rule has no mirror host")
    labels = host.split(".")
    if len(labels) > 1 and labels[1] != namespace:
        return _note(spec, f"mirror host {host} is not in namespace {namespace}")
    return _with_service(spec, labels[0])


def read_http_route(obj: Mapping[str, Any]) -> MirrorSpec:
    """The mirror a Gateway API HTTPRoute asks for (module doc)."""
    namespace, name, champion = _identity(obj, "HTTPRoute")
    rule = _first(_mapping(obj.get("spec")).get("rules"))
    filters = rule.get("filters")
    if not isinstance(filters, list):
        filters = []
    found = next((_mapping(f) for f in filters if _mapping(f).get("type") == "RequestMirror"), None)
    mirror = _mapping(found.get("requestMirror")) if found is not None else {}
    if "percent" in mirror:
        percent = _number(mirror["percent"], "requestMirror.percent")
    elif "fraction" in mirror:
        fraction = _mapping(mirror["fraction"])
        numerator = _number(fraction.get("numerator"), "requestMirror.fraction.numerator")
        denominator = _number(fraction.get("denominator", 100), "fraction.denominator")
        if denominator <= 0:
            raise UnreadableMirror(f"requestMirror.fraction.denominator is {denominator:g}")
        percent = 100.0 * numerator / denominator
    else:
        percent = 100.0
    spec = MirrorSpec("HTTPRoute", namespace, name, champion, None, _share(percent))
    if found is None:
        return _note(spec, "the first rule has no RequestMirror filter")
    ref = _mapping(mirror.get("backendRef"))
    service = ref.get("name")
    if not isinstance(service, str) or not service:
        return _note(spec, "the RequestMirror filter has no backendRef name")
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        return _note(spec, f"the mirror backend {service} is not a Service")
    if ref.get("namespace", namespace) != namespace:
        return _note(spec, f"the mirror backend {service} is not in namespace {namespace}")
    return _with_service(spec, service)


def _note(spec: MirrorSpec, note: str) -> MirrorSpec:
    return replace(spec, service=None, note=note)


def _with_service(spec: MirrorSpec, service: str) -> MirrorSpec:
    return replace(spec, service=service, note="")


def read_mirror(obj: Mapping[str, Any]) -> MirrorSpec:
    """A VirtualService or HTTPRoute (by ``kind``) as a :class:`MirrorSpec`."""
    kind = obj.get("kind")
    if kind == VIRTUAL_SERVICE.kind:
        return read_virtual_service(obj)
    if kind == HTTP_ROUTE.kind:
        return read_http_route(obj)
    raise UnreadableMirror(f"not a VirtualService or HTTPRoute: kind {kind!r}")


class Backend(NamedTuple):
    """A Service of the simulated cluster and the simulated pods behind it."""

    isvc: str
    target: Target
    ready: bool  # has endpoints


def cluster_services(
    splits: Mapping[str, Sequence[SplitTarget]], worlds: Mapping[str, StandardWorld]
) -> dict[str, Backend]:
    """The Services of one namespace that reach simulated pods, by name (module doc):
    ``splits`` are the KServe simulator's splits and ``worlds`` its Standard-mode worlds,
    by InferenceService."""
    services: dict[str, Backend] = {}
    for isvc, split in sorted(splits.items()):
        for entry in split:
            if entry.mode == "knative":
                target = Target(entry.target, 0, entry.storage_uri, "knative")
                services[f"{entry.target}{PRIVATE_SUFFIX}"] = Backend(isvc, target, ready=True)
    for isvc, world in sorted(worlds.items()):
        for existing in standard_targets(world):
            target = Target(existing.service, 0, existing.storage_uri, "standard")
            services[existing.service] = Backend(isvc, target, existing.ready)
    return services


def mirror_target(spec: MirrorSpec, services: Mapping[str, Backend]) -> tuple[Target | None, str]:
    """Where ``spec``'s copies go: ``(target, "")``, or ``(None, why nothing is mirrored)``."""
    if spec.service is None:
        return None, spec.note
    backend = services.get(spec.service)
    if backend is None:
        return None, f"Service {spec.namespace}/{spec.service} does not exist"
    if not backend.ready:
        return None, f"Service {spec.namespace}/{spec.service} has no ready endpoints"
    return backend.target, ""


class MirrorState(NamedTuple):
    """What the traffic simulator was told for one champion, and why not more."""

    target: Target | None
    percent: float
    problem: str  # "" while mirroring (or mirroring 0 %)


class MirrorSimulator:
    """Turns the shadow objects it watches into ``publish(namespace, champion, target,
    percent)`` calls (the traffic simulator's ``set_mirror``), whenever an object or the
    Services it names change.

    Feed it ``on_split_change`` and ``on_standard_world`` from the KServe simulator, after
    the Gateway (so a challenger's own routes reach the traffic simulator before the mirror
    that shares them); :meth:`start` watches VirtualServices and HTTPRoutes labelled
    ``kserve-canary.io/purpose=shadow`` in every namespace (list, then watch from the list's
    resourceVersion; list again after ``Gone`` or an error, backing off while the apiserver
    is unavailable).
    """

    def __init__(
        self, kube: KubeClient, publish: Publish, *, watch_timeout_seconds: int = 2
    ) -> None:
        self._kube = kube
        self._publish = publish
        self._watch_timeout = max(1, watch_timeout_seconds)
        self._log = get_logger("sandbox.mirror")
        # held while publishing, so the traffic simulator sees changes in order; never held
        # while calling into the KServe simulator (which calls us under its own lock)
        self._lock = threading.Lock()
        self._specs: dict[ObjectKey, MirrorSpec] = {}
        self._splits: dict[str, dict[str, list[SplitTarget]]] = {}
        self._worlds: dict[str, dict[str, StandardWorld]] = {}
        self._published: dict[Key, MirrorState] = {}
        self._missing_total = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- inputs ----------------------------------------------------------------------------

    def on_split_change(self, namespace: str, name: str, targets: list[SplitTarget]) -> None:
        """The KServe simulator's split for ``namespace/name`` changed."""
        with self._lock:
            splits = self._splits.setdefault(namespace, {})
            if targets:
                splits[name] = list(targets)
            else:
                splits.pop(name, None)
            self._refresh(namespace)

    def on_standard_world(self, namespace: str, name: str, world: StandardWorld | None) -> None:
        """The Deployments of a Standard-mode InferenceService changed (None: gone)."""
        with self._lock:
            worlds = self._worlds.setdefault(namespace, {})
            if world is None:
                worlds.pop(name, None)
            else:
                worlds[name] = world
            self._refresh(namespace)

    def sync_objects(self, kind: ResourceKind, objects: Iterable[Mapping[str, Any]]) -> None:
        """Every shadow object of ``kind`` there is (a fresh list)."""
        fresh: dict[ObjectKey, MirrorSpec] = {}
        for obj in objects:
            spec = self._read(kind, obj)
            if spec is not None:
                fresh[(kind.kind, spec.namespace, spec.name)] = spec
        with self._lock:
            stale = {key: spec for key, spec in self._specs.items() if key[0] == kind.kind}
            for key in stale:
                del self._specs[key]
            self._specs.update(fresh)
            namespaces = {key[1] for key in stale} | {key[1] for key in fresh}
            for namespace in sorted(namespaces):
                self._refresh(namespace)

    def object_event(self, kind: ResourceKind, event: WatchEvent) -> None:
        """One watch event on a shadow object of ``kind``."""
        if event.type == "BOOKMARK":
            return
        metadata = _mapping(event.object.get("metadata"))
        key = (kind.kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        spec = None if event.type == "DELETED" else self._read(kind, event.object)
        with self._lock:
            if spec is None:
                self._specs.pop(key, None)  # deleted, or no longer readable
            else:
                self._specs[key] = spec
            self._refresh(key[1])

    def _read(self, kind: ResourceKind, obj: Mapping[str, Any]) -> MirrorSpec | None:
        try:
            return read_mirror({**obj, "kind": obj.get("kind") or kind.kind})
        except UnreadableMirror as exc:
            metadata = _mapping(obj.get("metadata"))
            self._log.warning(
                "mirror.unreadable",
                kind=kind.kind,
                namespace=metadata.get("namespace"),
                name=metadata.get("name"),
                error=str(exc),
            )
            return None

    # --- queries ---------------------------------------------------------------------------

    def state(self, namespace: str, champion: str) -> MirrorState | None:
        """What the traffic simulator was last told for ``champion`` (None: no mirror)."""
        with self._lock:
            return self._published.get((namespace, champion))

    @property
    def missing_total(self) -> int:
        """How many times a champion's mirror found its Service missing or without
        endpoints (each time it went from another state to that one)."""
        with self._lock:
            return self._missing_total

    def _refresh(self, namespace: str) -> None:
        """Recompute every champion of ``namespace`` and publish what moved. Callers hold
        the lock."""
        by_champion: dict[str, list[tuple[ObjectKey, MirrorSpec]]] = {}
        for key, spec in sorted(self._specs.items()):
            if key[1] == namespace:
                by_champion.setdefault(spec.champion, []).append((key, spec))
        services = cluster_services(
            self._splits.get(namespace, {}), self._worlds.get(namespace, {})
        )
        champions = set(by_champion) | {c for ns, c in self._published if ns == namespace}
        for champion in sorted(champions):
            candidates = by_champion.get(champion, [])
            wanted: MirrorState | None = None
            if candidates:
                (_, spec), *others = candidates
                if others:
                    self._log.warning(
                        "mirror.duplicate",
                        namespace=namespace,
                        champion=champion,
                        used=f"{spec.kind}/{spec.name}",
                        ignored=[f"{key[0]}/{key[2]}" for key, _ in others],
                    )
                target, problem = mirror_target(spec, services)
                wanted = MirrorState(target, spec.percent if target is not None else 0.0, problem)
            self._set(namespace, champion, wanted, candidates[0][1] if candidates else None)

    def _set(
        self, namespace: str, champion: str, wanted: MirrorState | None, spec: MirrorSpec | None
    ) -> None:
        key = (namespace, champion)
        before = self._published.get(key)
        if wanted == before:
            return
        target, percent = (wanted.target, wanted.percent) if wanted else (None, 0.0)
        told = (before.target, before.percent) if before else (None, 0.0)
        try:
            if told != (target, percent):
                self._publish(namespace, champion, target, percent)
        except Exception as exc:  # a refused mirror must not stop the mesh; tried again later
            self._log.exception(
                "mirror.publish_failed", namespace=namespace, champion=champion, error=str(exc)
            )
            return
        if wanted is None:
            self._published.pop(key, None)
        else:
            self._published[key] = wanted
        if wanted is not None and wanted.problem and (before is None or not before.problem):
            self._missing_total += 1
        if wanted is not None and wanted.problem:
            self._log.warning(
                "mirror.service_missing",
                namespace=namespace,
                champion=champion,
                object=f"{spec.kind}/{spec.name}" if spec else None,
                problem=wanted.problem,
            )
        else:
            self._log.info(
                "mirror.changed",
                namespace=namespace,
                champion=champion,
                target=target.revision if target else None,
                percent=percent,
            )

    # --- the watches -----------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the mirror simulator is already running")
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._watch_loop, args=(kind,), name=f"mirror-{kind.plural}", daemon=True
            )
            for kind in WATCHED
        ]
        for thread in self._threads:
            thread.start()
        self._log.info("mirror.started")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():  # pragma: no cover - a stuck apiserver call
                self._log.error("mirror.thread_stuck", thread=thread.name)
        self._threads = []
        self._log.info("mirror.stopped")

    def _watch_loop(self, kind: ResourceKind) -> None:
        resource_version: str | None = None
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    objects, resource_version = self._kube.list(
                        kind, label_selector=SHADOW_SELECTOR
                    )
                    self.sync_objects(kind, objects)
                for event in self._kube.watch(
                    kind,
                    resource_version=resource_version,
                    timeout_seconds=self._watch_timeout,
                    label_selector=SHADOW_SELECTOR,
                ):
                    resource_version = event.resource_version or resource_version
                    self.object_event(kind, event)
                    if self._stop.is_set():
                        break
                backoff = 0.1
            except Gone:
                self._log.info("mirror.relist", kind=kind.kind)
                resource_version = None
            except Unavailable as exc:
                self._log.warning(
                    "mirror.apiserver_unavailable", kind=kind.kind, error=str(exc), retry_in=backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except KubeError as exc:
                self._log.error("mirror.watch_failed", kind=kind.kind, error=str(exc))
                resource_version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
