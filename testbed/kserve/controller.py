"""The KServe simulator's loop: list+watch InferenceServices, reconcile, write status.

It plays KServe v0.20.0's InferenceService controller and, underneath, Knative Serving or
the Kubernetes Deployment controller, on a real apiserver that has neither:

* a watcher thread per namespace (or one cluster-wide) lists, then watches; it lists again
  after ``Gone`` and backs off on ``Unavailable``;
* the loop thread keeps one simulated world per InferenceService and, whenever the object
  changes, the simulated Knative/Deployment state changes, a readiness timer fires or the
  behaviour file changes, alternates KServe reconciles (:mod:`.knative` / :mod:`.standard`)
  with Knative or Deployment-controller steps until nothing moves, writing the status with
  ``replace_status`` whenever it differs from the stored one (CTRL:421-456);
* it adds and removes KServe's finalizer, forgets a deleted InferenceService, honours
  ``serving.kserve.io/stop`` and ``disable-auto-update``, and reports where traffic goes
  (:meth:`KServeSimulator.effective_split`, ``on_split_change``) for the traffic simulator,
  and which Standard-mode Deployments exist (``on_standard_world``) for the test bed's
  Gateway.

No webhook runs on the test bed, so a spec KServe's validating webhook would refuse is
accepted by the apiserver. The simulator then keeps reconciling the last accepted spec (as
KServe would, the write never having happened) and marks the refusal in the status:
``PredictorReady=False`` with reason ``WebhookRejected`` (a simulator-only reason) and the
webhook's message, which also turns ``Ready`` False.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from canary.k8s.client import (
    INFERENCE_SERVICE,
    Conflict,
    Gone,
    KubeClient,
    KubeError,
    NotFound,
    Unavailable,
    WatchEvent,
)
from canary.log import get_logger
from testbed.behaviour import BehaviourBook, BehaviourWatcher
from testbed.kserve import knative, standard
from testbed.kserve.knative import KnativeWorld
from testbed.kserve.standard import StandardWorld
from testbed.kserve.status import (
    FALSE,
    PREDICTOR_READY,
    READY,
    Condition,
    IsvcStatus,
    canonical,
    set_condition,
)
from testbed.kserve.template import (
    DEPLOYMENT_MODE_ANNOTATION,
    KServeConfig,
    RoutingMode,
    predictor_service_name,
)

__all__ = [
    "FINALIZER",
    "PRIVATE_LABEL",
    "KServeSimulator",
    "Rejection",
    "SplitTarget",
    "WorldCallback",
    "deployment_mode",
]

FINALIZER = "inferenceservice.finalizers"
# InferenceServices carrying this label belong to a private simulator (a test's own
# instance, selecting ``PRIVATE_LABEL=<token>``); the shared one skips them.
PRIVATE_LABEL = "sandbox.kserve-canary.io/simulator"
KSERVE_WEBHOOK = (
    'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request'
)
_MAX_ROUNDS = 200
_LEGACY_MODES = {"RawDeployment": "Standard", "Serverless": "Knative"}
Key = tuple[str, str]


SplitMode = Literal["knative", "standard"]


class SplitTarget(NamedTuple):
    """Where a share of an InferenceService's requests goes: a Knative revision or a
    Standard-mode Service/Deployment, with its model's storage URI."""

    target: str
    percent: int
    storage_uri: str | None
    mode: SplitMode


SplitCallback = Callable[[str, str, list[SplitTarget]], None]
WorldCallback = Callable[[str, str, StandardWorld | None], None]


@dataclass(frozen=True)
class Rejection:
    """A spec KServe's validating webhook would have refused."""

    namespace: str
    name: str
    resource_version: str
    message: str


def deployment_mode(isvc: Mapping[str, Any], default: str = "Knative") -> str:
    """§1.1 (utils.go:224-248): ``status.deploymentMode`` if set, else the annotation with
    the legacy values mapped, else the configured default."""
    recorded = str((isvc.get("status") or {}).get("deploymentMode", "") or "")
    if recorded:
        return _LEGACY_MODES.get(recorded, recorded)
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if isinstance(value, str):
        value = _LEGACY_MODES.get(value, value)
        if value in ("Standard", "Knative", "ModelMesh"):
            return value
    return _LEGACY_MODES.get(default, default)


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _rv(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion", ""))


def _newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether ``candidate`` is not older than ``current`` (resourceVersions are etcd
    revisions on every real apiserver; if they do not parse, trust the newcomer)."""
    try:
        return int(_rv(candidate)) >= int(_rv(current))
    except ValueError:
        return True


class _WallClock:
    """Wall-clock seconds that never go backwards (``time.time`` at start + monotonic)."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._mono = time.monotonic()

    def __call__(self) -> float:
        return self._wall + (time.monotonic() - self._mono)


@dataclass
class _Entry:
    obj: dict[str, Any] | None = None
    knative: KnativeWorld = field(default_factory=KnativeWorld)
    standard: StandardWorld = field(default_factory=StandardWorld)
    mode: str = ""
    accepted: dict[str, Any] | None = None
    service: str = ""  # the ksvc the spec names (Knative)
    split: list[SplitTarget] = field(default_factory=list)
    told_world: StandardWorld | None = None  # the last world given to on_standard_world
    dirty: bool = True
    # when a timer may next move this entry, as of its last sync (its world changes only
    # in a sync, and a new behaviour book marks every entry dirty): each pass reads this
    # instead of asking every entry's world again (thousands of entries)
    wakeup: float | None = None


class KServeSimulator:
    """Plays KServe v0.20.0 for the InferenceServices in ``namespaces`` (all if ``None``).

    ``standard_routing`` is ``"v0.20"`` (``trafficPercent`` routes nothing) or
    ``"weighted"`` (post-v0.20 HTTPRoute weights). ``clock`` returns wall-clock seconds (by
    default ``time.time`` at start plus monotonic time). ``on_split_change(namespace, name,
    targets)`` is called whenever :meth:`effective_split` changes (``[]`` once nothing
    serves or the object is gone); ``on_standard_world(namespace, name, world)`` whenever
    the simulated Deployments of a Standard-mode InferenceService change (``None`` once it
    is gone), for the test bed's Gateway (:mod:`testbed.gateway`), which routes by
    which Deployments exist and are Ready. ``label_selector`` picks the InferenceServices
    handled: by default every one without :data:`PRIVATE_LABEL`, so a test can run a
    private instance (``label_selector=f"{PRIVATE_LABEL}=<token>"``) next to the shared one.
    ``watch_timeout_seconds`` bounds how long :meth:`stop` waits for a watch to return;
    ``poll_interval`` is how often the behaviour file is re-read.
    """

    def __init__(
        self,
        kube: KubeClient,
        behaviour: BehaviourWatcher,
        *,
        namespaces: Sequence[str] | None = None,
        standard_routing: RoutingMode = "v0.20",
        clock: Callable[[], float] | None = None,
        config: KServeConfig | None = None,
        on_split_change: SplitCallback | None = None,
        on_standard_world: WorldCallback | None = None,
        watch_timeout_seconds: int = 2,
        poll_interval: float = 0.2,
        manage_finalizer: bool = True,
        label_selector: str | None = f"!{PRIVATE_LABEL}",
    ) -> None:
        self.config = replace(config or KServeConfig(), standard_routing=standard_routing)
        self._kube = kube
        self._behaviour = behaviour
        self._namespaces: tuple[str | None, ...] = tuple(namespaces) if namespaces else (None,)
        self._clock = clock or _WallClock()
        self._on_split_change = on_split_change
        self._on_standard_world = on_standard_world
        self._watch_timeout = max(1, watch_timeout_seconds)
        self._poll = poll_interval
        self._manage_finalizer = manage_finalizer
        self._selector = label_selector
        self._log = get_logger("kserve_sim")
        self._lock = threading.RLock()
        self._entries: dict[Key, _Entry] = {}
        self._events: queue.Queue[tuple[str, str | None, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._book: BehaviourBook | None = None
        self.rejections: list[Rejection] = []
        self.status_writes = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the simulator is already running")
        self._stop.clear()
        for namespace in self._namespaces:
            thread = threading.Thread(
                target=self._watch_loop,
                args=(namespace,),
                name=f"kserve-sim-watch-{namespace or 'all'}",
                daemon=True,
            )
            self._threads.append(thread)
        self._threads.append(
            threading.Thread(target=self._main_loop, name="kserve-sim-loop", daemon=True)
        )
        for thread in self._threads:
            thread.start()
        self._log.info("kserve_sim.started", namespaces=list(self._namespaces))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and join every thread this simulator started."""
        self._stop.set()
        self._events.put(("wake", None, None))
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():  # pragma: no cover - a stuck apiserver call
                self._log.error("kserve_sim.thread_stuck", thread=thread.name)
        self._threads = []
        self._log.info("kserve_sim.stopped")

    def __enter__(self) -> KServeSimulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def run_once(self, now: float | None = None) -> None:
        """List every InferenceService afresh and run one full pass at ``now`` (tests)."""
        for namespace in self._namespaces:
            items, _ = self._kube.list(INFERENCE_SERVICE, namespace, label_selector=self._selector)
            self._events.put(("sync", namespace, items))
        with self._lock:
            self._drain()
            for entry in self._entries.values():
                entry.dirty = True
            self._pass(self._clock() if now is None else now)

    # --- queries ---------------------------------------------------------------------------

    def effective_split(self, namespace: str, name: str) -> list[SplitTarget]:
        """Where requests for ``namespace/name`` go now (empty when nothing serves)."""
        with self._lock:
            entry = self._entries.get((namespace, name))
            return list(entry.split) if entry else []

    def knative_world(self, namespace: str, name: str) -> KnativeWorld | None:
        with self._lock:
            entry = self._entries.get((namespace, name))
            return entry.knative if entry else None

    def standard_world(self, namespace: str, name: str) -> StandardWorld | None:
        with self._lock:
            entry = self._entries.get((namespace, name))
            return entry.standard if entry else None

    # --- watching --------------------------------------------------------------------------

    def _watch_loop(self, namespace: str | None) -> None:
        resource_version: str | None = None
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    items, resource_version = self._kube.list(
                        INFERENCE_SERVICE, namespace, label_selector=self._selector
                    )
                    self._events.put(("sync", namespace, items))
                for event in self._kube.watch(
                    INFERENCE_SERVICE,
                    namespace,
                    resource_version=resource_version,
                    timeout_seconds=self._watch_timeout,
                    label_selector=self._selector,
                ):
                    resource_version = event.resource_version or resource_version
                    if event.type != "BOOKMARK":
                        self._events.put(("event", namespace, event))
                    if self._stop.is_set():
                        break
                backoff = 0.1
            except Gone:
                self._log.info("kserve_sim.relist", namespace=namespace)
                resource_version = None
            except Unavailable as exc:
                self._log.warning(
                    "kserve_sim.apiserver_unavailable", error=str(exc), retry_in=backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except KubeError as exc:
                self._log.error("kserve_sim.watch_failed", error=str(exc), namespace=namespace)
                resource_version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _main_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first: tuple[str, str | None, Any] | None = self._events.get(
                    timeout=self._timeout()
                )
            except queue.Empty:
                first = None
            if self._stop.is_set():
                break
            try:
                with self._lock:
                    if first is not None:
                        self._apply(first)
                    self._drain()
                    self._pass(self._clock())
            except Exception as exc:  # keep simulating; the next event retries
                self._log.exception("kserve_sim.pass_failed", error=str(exc))
                self._stop.wait(0.2)

    def _timeout(self) -> float:
        with self._lock:
            now = self._clock()
            wakeups = [e.wakeup for e in self._entries.values() if e.wakeup]
        soonest = min(wakeups, default=now + self._poll)
        return max(0.0, min(self._poll, soonest - now))

    def _drain(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            self._apply(item)

    def _apply(self, item: tuple[str, str | None, Any]) -> None:
        kind, namespace, payload = item
        if kind == "sync":
            self._apply_sync(namespace, payload)
        elif kind == "event":
            self._apply_event(payload)

    def _apply_sync(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            key = _key(obj)
            seen.add(key)
            self._remember(key, obj)
        for key in [k for k in self._entries if namespace is None or k[0] == namespace]:
            if key not in seen:
                self._forget(key)

    def _apply_event(self, event: WatchEvent) -> None:
        key = _key(event.object)
        if event.type == "DELETED":
            self._forget(key)
        else:
            self._remember(key, event.object)

    def _remember(self, key: Key, obj: dict[str, Any]) -> None:
        entry = self._entries.setdefault(key, _Entry())
        if entry.obj is not None and _rv(obj) == _rv(entry.obj):
            return  # an echo of what we already hold (e.g. our own status write)
        if entry.obj is None or _newer_or_equal(obj, entry.obj):
            entry.obj = obj
            entry.dirty = True

    def _forget(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._log.info("kserve_sim.forgotten", namespace=key[0], name=key[1])
        if entry.told_world is not None:
            self._tell_world(key, None)
        if entry.split:
            self._notify(key, [])

    # --- one pass ------------------------------------------------------------------------

    def _wakeup(self, entry: _Entry, book: BehaviourBook) -> float | None:
        if entry.mode == "Knative":
            return knative.next_wakeup(entry.knative, book, self.config)
        if entry.mode == "Standard":
            return standard.next_wakeup(entry.standard, book, self.config)
        return None

    def _pass(self, now: float) -> None:
        book = self._behaviour.current()
        if book is not self._book:
            self._book = book
            for stale in self._entries.values():
                stale.dirty = True
        due = sorted(
            key
            for key, candidate in self._entries.items()
            if candidate.dirty or (candidate.wakeup is not None and candidate.wakeup <= now)
        )
        for key in due:
            found = self._entries.get(key)
            if found is None:  # forgotten during this pass
                continue
            entry = found
            entry.dirty = False
            try:
                self._sync(key, entry, now, book)
            except Unavailable as exc:
                entry.dirty = True
                self._log.warning(
                    "kserve_sim.sync_deferred", namespace=key[0], name=key[1], error=str(exc)
                )
            except KubeError as exc:  # e.g. a status the CRD refuses: a simulator bug
                self._log.error(
                    "kserve_sim.sync_failed", namespace=key[0], name=key[1], error=str(exc)
                )
            entry.wakeup = self._wakeup(entry, book)

    def _sync(self, key: Key, entry: _Entry, now: float, book: BehaviourBook) -> None:
        namespace, name = key
        target = ""
        for _ in range(_MAX_ROUNDS):
            obj = entry.obj
            if obj is None:
                return
            metadata = obj.get("metadata") or {}
            if metadata.get("deletionTimestamp"):
                self._finalize(key, obj)
                return
            if self._manage_finalizer and FINALIZER not in (metadata.get("finalizers") or []):
                patched = self._patch_finalizers(
                    key, [*(metadata.get("finalizers") or []), FINALIZER]
                )
                if patched is None:
                    return
                entry.obj = patched
                continue
            mode = deployment_mode(obj, self.config.default_deployment_mode)
            entry.mode = mode
            status, target = self._reconcile(key, entry, obj, now)
            if status is not None and canonical(status) != canonical(obj.get("status")):
                written = self._write_status(key, obj, status)
                if written is None:
                    return
                entry.obj = written
                continue
            if not self._step(key, entry, mode, book, now):
                break
        else:
            self._log.error("kserve_sim.no_fixpoint", namespace=namespace, name=name)
        self._update_split(key, entry, target if entry.obj is not None else "")

    def _reconcile(
        self, key: Key, entry: _Entry, obj: dict[str, Any], now: float
    ) -> tuple[dict[str, Any] | None, str]:
        """One KServe reconcile; returns the status to write and the ksvc name."""
        errors = standard.validate(obj, previous=entry.accepted, config=self.config)
        subject = obj
        message = f"{KSERVE_WEBHOOK}: {errors[0]}" if errors else ""
        if errors:
            if not any(
                r.resource_version == _rv(obj)
                for r in self.rejections
                if (r.namespace, r.name) == key
            ):
                self.rejections.append(Rejection(key[0], key[1], _rv(obj), message))
                self._log.error(
                    "kserve_sim.spec_rejected", namespace=key[0], name=key[1], reason=errors[0]
                )
            if entry.accepted is None:  # refused at creation: nothing was ever accepted
                fresh = IsvcStatus.parse(obj.get("status"), now=now)
                if fresh.conditions.get(READY) is None:
                    fresh.conditions.initialize()
                return self._rejected(fresh, message), ""
            # the apiserver would still hold the last accepted spec
            subject = {
                **obj,
                "metadata": {
                    **(obj.get("metadata") or {}),
                    "annotations": copy.deepcopy(
                        (entry.accepted.get("metadata") or {}).get("annotations")
                    ),
                    "labels": copy.deepcopy((entry.accepted.get("metadata") or {}).get("labels")),
                },
                "spec": copy.deepcopy(entry.accepted.get("spec")),
            }
        else:
            entry.accepted = {
                "metadata": copy.deepcopy(obj.get("metadata")),
                "spec": copy.deepcopy(obj.get("spec")),
            }
        mode = entry.mode
        service = ""
        status: dict[str, Any] | None
        if mode == "Knative":
            before = entry.knative
            entry.knative, status = knative.reconcile_isvc(entry.knative, subject, now, self.config)
            predictor = (subject.get("spec") or {}).get("predictor") or {}
            service = predictor_service_name(key[1], predictor.get("name"))
            self._log_knative(key, before, entry.knative)
        elif mode == "Standard":
            before_std = entry.standard
            entry.standard, status = standard.reconcile_isvc(
                entry.standard, subject, now, self.config
            )
            self._log_standard(key, before_std, entry.standard)
        else:  # ModelMesh without a transformer: KServe only initialises the status
            parsed = IsvcStatus.parse(subject.get("status"), now=now)
            if parsed.conditions.get(READY) is None:
                parsed.conditions.initialize()
            parsed.deployment_mode = mode
            status = parsed.to_dict()
        if errors and status is not None:
            status = self._rejected(IsvcStatus.parse(status, now=now), message)
        return status, service

    @staticmethod
    def _rejected(status: IsvcStatus, message: str) -> dict[str, Any]:
        status.component("predictor")
        set_condition(
            status.conditions,
            PREDICTOR_READY,
            Condition(PREDICTOR_READY, FALSE, "WebhookRejected", message),
        )
        return status.to_dict()

    def _step(self, key: Key, entry: _Entry, mode: str, book: BehaviourBook, now: float) -> bool:
        """One Knative / Deployment-controller round; whether anything changed."""
        if mode == "Knative":
            before = entry.knative
            after = knative.knative_step(before, book, now, self.config)
            if after is before:
                return False
            entry.knative = after
            self._log_knative(key, before, after)
            return True
        if mode == "Standard":
            before_std = entry.standard
            after_std = standard.deployment_step(before_std, book, now, self.config)
            if after_std is before_std:
                return False
            entry.standard = after_std
            self._log_standard(key, before_std, after_std)
            return True
        return False

    # --- writes ----------------------------------------------------------------------------

    def _write_status(
        self, key: Key, obj: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any] | None:
        body = {**obj, "status": status}
        try:
            written = self._kube.replace_status(INFERENCE_SERVICE, key[0], key[1], body)
        except Conflict:
            try:
                return self._kube.get(INFERENCE_SERVICE, key[0], key[1])
            except NotFound:
                self._forget(key)
                return None
        except NotFound:
            self._forget(key)
            return None
        self.status_writes += 1
        self._log.debug("kserve_sim.status_written", namespace=key[0], name=key[1], rv=_rv(written))
        return written

    def _patch_finalizers(self, key: Key, finalizers: list[str]) -> dict[str, Any] | None:
        try:
            patched = self._kube.patch(
                INFERENCE_SERVICE, key[0], key[1], {"metadata": {"finalizers": finalizers}}
            )
        except NotFound:
            self._forget(key)
            return None
        return patched

    def _finalize(self, key: Key, obj: dict[str, Any]) -> None:
        """CTRL:193-214: remove the finalizer, write no status; GC takes the children."""
        finalizers = list((obj.get("metadata") or {}).get("finalizers") or [])
        if self._manage_finalizer and FINALIZER in finalizers:
            self._patch_finalizers(key, [f for f in finalizers if f != FINALIZER])
            self._log.info("kserve_sim.finalizer_removed", namespace=key[0], name=key[1])
        self._forget(key)  # nothing to reconcile for a deleted object; GC does the rest

    # --- traffic ---------------------------------------------------------------------------

    def _update_split(self, key: Key, entry: _Entry, service: str) -> None:
        world = entry.standard if entry.mode == "Standard" else None
        if world != entry.told_world:  # before the split, so both are current when it moves
            entry.told_world = world
            self._tell_world(key, world)
        if entry.mode == "Knative":
            if service:
                entry.service = service
            targets = [
                SplitTarget(revision, percent, uri, "knative")
                for revision, percent, uri in knative.effective_split(entry.knative, entry.service)
            ]
        elif entry.mode == "Standard":
            targets = [
                SplitTarget(target, percent, uri, "standard")
                for target, percent, uri in standard.effective_split(entry.standard)
            ]
        else:
            targets = []
        if targets != entry.split:
            entry.split = targets
            self._log.info(
                "kserve_sim.split_changed",
                namespace=key[0],
                name=key[1],
                split=[(t.target, t.percent) for t in targets],
            )
            self._notify(key, targets)

    def _tell_world(self, key: Key, world: StandardWorld | None) -> None:
        if self._on_standard_world is None:
            return
        try:
            self._on_standard_world(key[0], key[1], world)
        except Exception as exc:  # a broken callback must not stop KServe
            self._log.exception("kserve_sim.world_callback_failed", error=str(exc))

    def _notify(self, key: Key, targets: list[SplitTarget]) -> None:
        if self._on_split_change is None:
            return
        try:
            self._on_split_change(key[0], key[1], list(targets))
        except Exception as exc:  # a broken callback must not stop KServe
            self._log.exception("kserve_sim.split_callback_failed", error=str(exc))

    # --- logging -------------------------------------------------------------------------

    def _log_standard(self, key: Key, before: StandardWorld, after: StandardWorld) -> None:
        if before is after:
            return
        for name, deployment in after.deployments.items():
            old = before.deployments.get(name)
            if old is None:
                self._log.info(
                    "kserve_sim.deployment_created", namespace=key[0], isvc=key[1],
                    deployment=name, replicas=deployment.replicas,
                )  # fmt: skip
            elif old.generation != deployment.generation:
                self._log.info(
                    "kserve_sim.deployment_updated", namespace=key[0], isvc=key[1],
                    deployment=name, replicas=deployment.replicas,
                )  # fmt: skip
            if (
                deployment.current is not None
                and deployment.current.ready
                and not (
                    old is not None
                    and old.current is not None
                    and old.current.ready
                    and old.current.name == deployment.current.name
                )
            ):
                self._log.info(
                    "kserve_sim.replicaset_ready", namespace=key[0], isvc=key[1],
                    replicaset=deployment.current.name,
                )  # fmt: skip
        for name in before.deployments:
            if name not in after.deployments:
                self._log.info(
                    "kserve_sim.deployment_deleted", namespace=key[0], isvc=key[1], deployment=name
                )

    def _log_knative(self, key: Key, before: KnativeWorld, after: KnativeWorld) -> None:
        if before is after:
            return
        for name, service in after.services.items():
            old = before.services.get(name)
            if old is None:
                self._log.info("kserve_sim.ksvc_created", namespace=key[0], isvc=key[1], ksvc=name)
            elif old.generation != service.generation:
                self._log.info(
                    "kserve_sim.ksvc_updated", namespace=key[0], isvc=key[1], ksvc=name,
                    generation=service.generation,
                )  # fmt: skip
            previous = {r.name: r for r in (old.revisions if old else ())}
            for revision in service.revisions:
                was = previous.get(revision.name)
                if was is None:
                    self._log.info(
                        "kserve_sim.revision_created", namespace=key[0], isvc=key[1],
                        revision=revision.name, storage_uri=revision.storage_uri,
                    )  # fmt: skip
                elif was.state != revision.state:
                    self._log.info(
                        f"kserve_sim.revision_{revision.state}", namespace=key[0], isvc=key[1],
                        revision=revision.name, reason=revision.reason or None,
                    )  # fmt: skip
        for name in before.services:
            if name not in after.services:
                self._log.info("kserve_sim.ksvc_deleted", namespace=key[0], isvc=key[1], ksvc=name)
