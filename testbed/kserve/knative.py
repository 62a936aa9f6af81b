"""Knative mode: one InferenceService's Knative world and KServe's reconcile (KSERVE.md §1).

PURE. Two functions drive everything, both taking an explicit ``now``:

* :func:`reconcile_isvc` is one KServe v0.20.0 InferenceService reconcile (§1.4 steps 2-11):
  it builds the revision template (§1.2) and the traffic (§1.3), creates or updates the
  Knative Service, and copies the ksvc status **as it was before this reconcile's update**
  (the one-reconcile lag of §1.4 step 5) into the InferenceService status, with the
  rolled-out-revision tracking, the condition algebra, ``modelStatus`` and ingress.
* :func:`knative_step` is Knative's own progress, one controller round at a time: the
  Service reconciler pushing a new ksvc generation to its Configuration and Route (and
  reporting ``OutOfDate`` meanwhile), the Configuration creating revisions
  ``<ksvc>-NNNNN`` (NNNNN = Configuration generation), revisions becoming ready or failing
  as the :class:`~testbed.behaviour.BehaviourBook` says, the Route resolving
  ``latestRevision`` to the latest *ready* revision and programming the ingress (one step
  later the ingress is ready and the data plane switches), and the Service copying it all
  into the ksvc status.

A driver alternates them: every change of the ksvc status triggers an InferenceService
reconcile (the ISVC owns the ksvc, CTRL:672-673) and every status write triggers one too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from testbed.behaviour import BehaviourBook, ModelBehaviour, Readiness
from testbed.kserve.status import (
    FALSE,
    INGRESS_READY,
    LATEST_DEPLOYMENT_READY,
    PREDICTOR_CONFIGURATION_READY,
    PREDICTOR_READY,
    PREDICTOR_ROUTE_READY,
    READY,
    ROUTES_READY,
    STOPPED,
    TRUE,
    UNKNOWN,
    ComponentStatus,
    Condition,
    ConditionManager,
    IsvcStatus,
    PodView,
    TrafficTarget,
    mark_stopped,
    propagate_model_status,
    set_condition,
)
from testbed.kserve.template import (
    DISABLE_AUTO_UPDATE_ANNOTATION,
    MIN_SCALE_ANNOTATION,
    TAG_ROUTING_ANNOTATION,
    KServeConfig,
    RevisionTemplate,
    build_template,
    canary_traffic_percent,
    effective_annotations,
    force_stop,
    predictor_service_name,
)

__all__ = [
    "Configuration",
    "KnativeService",
    "KnativeWorld",
    "KsvcStatus",
    "Revision",
    "Route",
    "compute_traffic",
    "effective_split",
    "knative_step",
    "next_wakeup",
    "reconcile_isvc",
    "validate_traffic",
]

PENDING, READY_STATE, FAILED = "pending", "ready", "failed"
CONFIGURATIONS_READY = "ConfigurationsReady"
KSVC_ROUTES_READY = "RoutesReady"
ALL_TRAFFIC_ASSIGNED = "AllTrafficAssigned"
CERTIFICATE_PROVISIONED = "CertificateProvisioned"
ROUTE_INGRESS_READY = "IngressReady"
NEW_GENERATION = ("NewObservedGenFailure", "unsuccessfully observed a new generation")
KNATIVE_WEBHOOK = 'admission webhook "validation.webhook.serving.knative.dev" denied the request'


@dataclass(frozen=True)
class Revision:
    """A Knative revision and the state of its pods (``pods``: starting, ready, crashloop,
    waiting — e.g. ImagePullBackOff — or gone)."""

    name: str
    number: int
    storage_uri: str | None
    created_at: float
    min_scale: int = 1
    state: str = PENDING
    reason: str = ""
    message: str = ""
    pods: str = "starting"
    failure_message: str = ""

    @property
    def ready(self) -> bool:
        return self.state == READY_STATE

    @property
    def failed(self) -> bool:
        return self.state == FAILED


@dataclass(frozen=True)
class Configuration:
    template_digest: str
    generation: int = 1
    observed_generation: int = 0
    latest_created: str = ""
    latest_ready: str = ""
    conditions: tuple[Condition, ...] = ()

    def ready_condition(self) -> Condition | None:
        return next((c for c in self.conditions if c.type == READY), None)

    def is_failed(self) -> bool:
        ready = self.ready_condition()
        return (
            self.observed_generation == self.generation
            and ready is not None
            and (ready.status == FALSE)
        )


@dataclass(frozen=True)
class Route:
    """The Route: ``traffic`` is its spec; ``ingress_spec`` what it asked the KIngress to
    serve and ``serving`` what the data plane serves (the last programmed ingress)."""

    traffic: tuple[TrafficTarget, ...]
    generation: int = 1
    observed_generation: int = 0
    status_traffic: tuple[TrafficTarget, ...] = ()
    url: str = ""
    address: str = ""
    conditions: tuple[Condition, ...] = ()
    ingress_spec: tuple[TrafficTarget, ...] | None = None
    ingress_ready: bool = False
    serving: tuple[TrafficTarget, ...] = ()


@dataclass(frozen=True)
class KsvcStatus:
    observed_generation: int = 0
    latest_created: str = ""
    latest_ready: str = ""
    traffic: tuple[TrafficTarget, ...] = ()
    url: str = ""
    address: str = ""
    conditions: tuple[Condition, ...] = ()

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True)
class KnativeService:
    name: str
    namespace: str
    template: RevisionTemplate
    traffic: tuple[TrafficTarget, ...]
    generation: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: KsvcStatus = field(default_factory=KsvcStatus)
    configuration: Configuration | None = None
    route: Route | None = None
    revisions: tuple[Revision, ...] = ()

    def revision(self, name: str) -> Revision | None:
        return next((r for r in self.revisions if r.name == name), None)


@dataclass(frozen=True)
class KnativeWorld:
    """Every Knative Service an InferenceService owns (more than one after a rename of
    ``spec.predictor.name``: the old one is never cleaned up, §1.1)."""

    services: Mapping[str, KnativeService] = field(default_factory=dict)

    def with_service(self, service: KnativeService) -> KnativeWorld:
        return KnativeWorld({**self.services, service.name: service})

    def without(self, name: str) -> KnativeWorld:
        return KnativeWorld({k: v for k, v in self.services.items() if k != name})


# --- traffic (§1.3) ----------------------------------------------------------------------


def compute_traffic(
    percent: int | None, latest_rolledout: str, tag_routing: bool = False
) -> tuple[TrafficTarget, ...]:
    """KR:123-164: split only when ``canaryTrafficPercent`` is set and a revision has been
    rolled out; ``prev`` is always tagged, ``latest`` only with tag routing."""
    tag = "latest" if tag_routing else ""
    if percent is not None and latest_rolledout:
        targets = [TrafficTarget(percent=percent, latest_revision=True, tag=tag)]
        if percent < 100:
            targets.append(
                TrafficTarget(
                    percent=100 - percent,
                    latest_revision=False,
                    revision_name=latest_rolledout,
                    tag="prev",
                )
            )
        return tuple(targets)
    return (TrafficTarget(percent=100, latest_revision=True, tag=tag),)


def validate_traffic(traffic: Sequence[TrafficTarget]) -> list[str]:
    """Knative's route validation (kn:route_validation.go:48-93), as FieldError prints it:
    one line per problem, sorted by message."""
    errors: list[str] = []
    total = 0
    for index, target in enumerate(traffic):
        if target.percent is None:
            continue
        total += target.percent
        if not 0 <= target.percent <= 100:
            errors.append(f"expected 0 <= {target.percent} <= 100: spec.traffic[{index}].percent")
    if total != 100:
        errors.append(f"Traffic targets sum to {total}, want 100: spec.traffic")
    return sorted(errors)


# --- Knative's controllers ---------------------------------------------------------------


def _progress_revision(
    revision: Revision, behaviour: ModelBehaviour, now: float, deadline: float
) -> Revision:
    """A pending revision's pods, per the model's behaviour (kn: revision reconciler)."""
    if revision.state != PENDING:
        return revision
    if behaviour.readiness is Readiness.READY:
        if now >= revision.created_at + behaviour.ready_after_seconds:
            return replace(revision, state=READY_STATE, pods="ready")
        return revision
    if behaviour.readiness is Readiness.CRASH_LOOP:
        # A container that has restarted once fails the revision at once, with
        # ContainerHealthy=False reason ExitCode<N> (reconcile_resources.go:89-141).
        return replace(
            revision,
            state=FAILED,
            reason="ExitCode1",
            message=f"Container failed with: {behaviour.failure_message}",
            pods="crashloop",
            failure_message=behaviour.failure_message,
        )
    # NEVER: pods wait (image pull back-off / never ready); Knative only gives up at the
    # progress deadline. (inferred) The reason/message are those Knative reports when the
    # initial scale is not reached in time (revision_lifecycle.go:225-233), and the
    # failed, unrouted revision is then scaled to zero.
    if now >= revision.created_at + deadline:
        return replace(
            revision,
            state=FAILED,
            reason="ProgressDeadlineExceeded",
            message="Initial scale was never achieved",
            pods="gone",
        )
    return replace(revision, pods="waiting")


def _reconcile_configuration(
    config: Configuration, revisions: tuple[Revision, ...], service: KnativeService, now: float
) -> tuple[Configuration, tuple[Revision, ...]]:
    """kn: configuration.go:60-140 and configuration_lifecycle.go."""
    manager = ConditionManager(config.conditions, now=now)
    manager.initialize()
    if config.observed_generation != config.generation:
        manager.mark_unknown(READY, *NEW_GENERATION)
    name = f"{service.name}-{config.generation:05d}"
    latest = next((r for r in revisions if r.name == name), None)
    if latest is None:
        min_scale = service.template.annotations.get(MIN_SCALE_ANNOTATION, "1")
        latest = Revision(
            name=name,
            number=config.generation,
            storage_uri=service.template.storage_uri,
            created_at=now,
            min_scale=int(min_scale) if min_scale.isdigit() else 1,
        )
        revisions = (*revisions, latest)
    latest_ready = config.latest_ready
    if latest_ready != name:  # SetLatestCreatedRevisionName
        manager.mark_unknown(READY, "", "")
    if latest.failed:
        manager.mark_false(
            READY, "RevisionFailed", f'Revision "{name}" failed with message: {latest.message}.'
        )
    # findAndSetLatestReadyRevision: newest ready one between the latest ready and now
    floor = next((r.number for r in revisions if r.name == latest_ready), 0)
    for candidate in sorted(revisions, key=lambda r: r.number, reverse=True):
        if candidate.number < floor or candidate.number > config.generation:
            continue
        if candidate.ready:
            latest_ready = candidate.name
            if latest_ready == name:
                manager.mark_true(READY)
            break
    return (
        replace(
            config,
            observed_generation=config.generation,
            latest_created=name,
            latest_ready=latest_ready,
            conditions=manager.conditions(),
        ),
        revisions,
    )


@dataclass(frozen=True)
class _TargetError:
    reason: str
    message: str
    failure: bool

    def mark(self, manager: ConditionManager) -> None:
        if self.failure:
            manager.mark_false(ALL_TRAFFIC_ASSIGNED, self.reason, self.message)
        else:
            manager.mark_unknown(ALL_TRAFFIC_ASSIGNED, self.reason, self.message)


def _resolve(
    target: TrafficTarget,
    service: KnativeService,
    config: Configuration,
    revisions: tuple[Revision, ...],
    world: KnativeWorld,
) -> TrafficTarget | _TargetError:
    """kn: traffic.go addConfigurationTarget / addRevisionTarget and errors.go."""
    if target.latest_revision:
        if not config.latest_ready:
            if config.is_failed():
                return _TargetError(
                    "RevisionMissing",
                    f'Configuration "{service.name}" does not have any ready Revision.',
                    failure=True,
                )
            return _TargetError(
                "RevisionMissing",
                f'Configuration "{service.name}" is waiting for a Revision to become ready.',
                failure=False,
            )
        return replace(target, revision_name=config.latest_ready)
    name = target.revision_name
    own = next((r for r in revisions if r.name == name), None)
    if own is None:
        owner = next((s.name for s in world.services.values() if s.revision(name)), None)
        if owner is not None and owner != service.name:
            return _TargetError(
                "RevisionNotOwned",
                f'Revision "{name}" belongs to Service "{owner}", not Service "{service.name}".',
                failure=True,
            )
        return _TargetError(
            "RevisionMissing", f'Revision "{name}" referenced in traffic not found.', failure=True
        )
    if not own.ready:
        if own.failed:
            return _TargetError(
                "RevisionMissing", f'Revision "{name}" failed to become ready.', failure=True
            )
        return _TargetError("RevisionMissing", f'Revision "{name}" is not yet ready.', False)
    return target


def _reconcile_route(
    route: Route,
    service: KnativeService,
    config: Configuration,
    revisions: tuple[Revision, ...],
    world: KnativeWorld,
    now: float,
    cfg: KServeConfig,
) -> Route:
    """kn: route.go ReconcileKind, configureTraffic and route_lifecycle.go."""
    manager = ConditionManager(
        route.conditions,
        now=now,
        dependents=(ALL_TRAFFIC_ASSIGNED, ROUTE_INGRESS_READY, CERTIFICATE_PROVISIONED),
    )
    manager.initialize()
    new_generation = route.observed_generation != route.generation
    if new_generation:
        manager.mark_unknown(READY, *NEW_GENERATION)
        manager.mark_unknown(
            ROUTE_INGRESS_READY, "IngressNotConfigured", "Ingress has not yet been reconciled."
        )
    host = f"{service.name}.{service.namespace}.{cfg.ingress_domain}"
    url = f"http://{host}"
    resolved: list[TrafficTarget] = []
    error: _TargetError | None = None
    for target in route.traffic:
        outcome = _resolve(target, service, config, revisions, world)
        if isinstance(outcome, _TargetError):
            if error is None or outcome.failure:  # deferTargetError
                error = outcome
            continue
        if outcome.tag:
            outcome = replace(outcome, url=f"http://{outcome.tag}-{host}")
        resolved.append(outcome)
    if error is not None:
        error.mark(manager)
        return replace(
            route,
            observed_generation=route.generation,
            url=url,
            conditions=manager.conditions(),
        )
    manager.mark_true(ALL_TRAFFIC_ASSIGNED)
    manager.mark_true_with_reason(
        CERTIFICATE_PROVISIONED, "TLSNotEnabled", "external-domain-tls is not enabled"
    )
    desired = tuple(resolved)
    ingress_spec, ingress_ready = route.ingress_spec, route.ingress_ready
    if desired != ingress_spec:
        ingress_spec, ingress_ready = desired, False
    if ingress_ready:
        manager.mark_true(ROUTE_INGRESS_READY)
    else:
        manager.mark_unknown(
            ROUTE_INGRESS_READY, "IngressNotConfigured", "Ingress has not yet been reconciled."
        )
    return replace(
        route,
        observed_generation=route.generation,
        status_traffic=desired,
        url=url,
        address=f"http://{service.name}.{service.namespace}.svc.cluster.local",
        conditions=manager.conditions(),
        ingress_spec=ingress_spec,
        ingress_ready=ingress_ready,
    )


def _copy_condition(manager: ConditionManager, kind: str, source: Condition | None) -> None:
    if source is None:
        return
    if source.status == TRUE:
        manager.mark_true(kind)
    elif source.status == FALSE:
        manager.mark_false(kind, source.reason, source.message)
    else:
        manager.mark_unknown(kind, source.reason, source.message)


def _service_status(service: KnativeService, now: float) -> KsvcStatus:
    """kn: service.go ReconcileKind and service_lifecycle.go (the ksvc status)."""
    assert service.configuration is not None
    assert service.route is not None
    config, route, old = service.configuration, service.route, service.status
    manager = ConditionManager(
        old.conditions, now=now, dependents=(CONFIGURATIONS_READY, KSVC_ROUTES_READY)
    )
    manager.initialize()
    if old.observed_generation != service.generation:
        manager.mark_unknown(READY, *NEW_GENERATION)
    latest_created, latest_ready = old.latest_created, old.latest_ready
    traffic, url, address = old.traffic, old.url, old.address
    if config.generation != config.observed_generation:
        manager.mark_unknown(
            CONFIGURATIONS_READY,
            "OutOfDate",
            "The Configuration is still working to reflect the latest desired specification.",
        )
    else:
        latest_created, latest_ready = config.latest_created, config.latest_ready
        _copy_condition(manager, CONFIGURATIONS_READY, config.ready_condition())
    if route.generation != route.observed_generation:
        manager.mark_unknown(
            KSVC_ROUTES_READY,
            "OutOfDate",
            "The Route is still working to reflect the latest desired specification.",
        )
    else:
        traffic, url, address = route.status_traffic, route.url, route.address
        route_ready = next((c for c in route.conditions if c.type == READY), None)
        _copy_condition(manager, KSVC_ROUTES_READY, route_ready)
    if manager.is_true(KSVC_ROUTES_READY):  # checkRoutesNotReady
        want = [
            (t.tag, config.latest_ready if t.latest_revision else t.revision_name, t.percent)
            for t in route.traffic
        ]
        got = [(t.tag, t.revision_name, t.percent) for t in route.status_traffic]
        if want != got:
            manager.mark_unknown(
                KSVC_ROUTES_READY,
                "TrafficNotMigrated",
                "Traffic is not yet migrated to the latest revision.",
            )
    return KsvcStatus(
        observed_generation=service.generation,
        latest_created=latest_created,
        latest_ready=latest_ready,
        traffic=traffic,
        url=url,
        address=address,
        conditions=manager.conditions(),
    )


def _step_service(
    service: KnativeService,
    world: KnativeWorld,
    book: BehaviourBook,
    now: float,
    cfg: KServeConfig,
) -> KnativeService:
    if (
        service.configuration is None
        or service.route is None
        or service.generation != service.status.observed_generation
    ):
        # the Service reconciler pushes the new spec to its Configuration and Route
        config = service.configuration
        if config is None:
            config = Configuration(template_digest=service.template.digest)
        elif config.template_digest != service.template.digest:
            config = replace(
                config, template_digest=service.template.digest, generation=config.generation + 1
            )
        route = service.route
        if route is None:
            route = Route(traffic=service.traffic)
        elif route.traffic != service.traffic:
            route = replace(route, traffic=service.traffic, generation=route.generation + 1)
        service = replace(service, configuration=config, route=route)
        return replace(service, status=_service_status(service, now))
    revisions = tuple(
        _progress_revision(r, book.for_model(r.storage_uri), now, cfg.progress_deadline_seconds)
        for r in service.revisions
    )
    config, revisions = _reconcile_configuration(service.configuration, revisions, service, now)
    route = service.route
    if route.ingress_spec is not None and not route.ingress_ready:
        # the ingress (net-istio) has programmed what the Route asked for last time
        route = replace(route, ingress_ready=True, serving=route.ingress_spec)
    route = _reconcile_route(route, service, config, revisions, world, now, cfg)
    service = replace(service, configuration=config, route=route, revisions=revisions)
    return replace(service, status=_service_status(service, now))


def knative_step(
    world: KnativeWorld, behaviour: BehaviourBook, now: float, config: KServeConfig | None = None
) -> KnativeWorld:
    """One round of Knative's controllers for every ksvc; returns ``world`` itself (equal)
    when nothing can progress at ``now``."""
    cfg = config or KServeConfig()
    services = {
        name: _step_service(world.services[name], world, behaviour, now, cfg)
        for name in sorted(world.services)
    }
    stepped = KnativeWorld(services)
    return world if stepped == world else stepped


def next_wakeup(
    world: KnativeWorld, behaviour: BehaviourBook, config: KServeConfig | None = None
) -> float | None:
    """When a pending revision may next change state (for the driver's timer)."""
    cfg = config or KServeConfig()
    times: list[float] = []
    for service in world.services.values():
        for revision in service.revisions:
            if revision.state != PENDING:
                continue
            model = behaviour.for_model(revision.storage_uri)
            if model.readiness is Readiness.READY:
                times.append(revision.created_at + model.ready_after_seconds)
            elif model.readiness is Readiness.CRASH_LOOP:
                times.append(revision.created_at)
            else:
                times.append(revision.created_at + cfg.progress_deadline_seconds)
    return min(times) if times else None


def effective_split(world: KnativeWorld, service_name: str) -> list[tuple[str, int, str | None]]:
    """What the data plane serves: (revision, percent, storage URI), entries for the same
    revision merged, in route order."""
    service = world.services.get(service_name)
    if service is None or service.route is None:
        return []
    merged: dict[str, int] = {}
    for target in service.route.serving:
        merged[target.revision_name] = merged.get(target.revision_name, 0) + (target.percent or 0)
    out: list[tuple[str, int, str | None]] = []
    for name, percent in merged.items():
        revision = service.revision(name)
        out.append((name, percent, revision.storage_uri if revision else None))
    return out


# --- the KServe InferenceService reconcile (§1.4) ----------------------------------------


def _update_service(
    existing: KnativeService, template: RevisionTemplate, traffic: tuple[TrafficTarget, ...]
) -> KnativeService:
    """KR reconcileKsvc/semanticEquals: update on any difference; only spec changes bump
    the generation (labels and annotations are metadata)."""
    spec_changed = existing.template.digest != template.digest or existing.traffic != traffic
    meta_changed = dict(existing.labels) != dict(template.ksvc_labels) or dict(
        existing.annotations
    ) != dict(template.ksvc_annotations)
    if not spec_changed and not meta_changed:
        return existing
    return replace(
        existing,
        template=template,
        traffic=traffic,
        labels=dict(template.ksvc_labels),
        annotations=dict(template.ksvc_annotations),
        generation=existing.generation + (1 if spec_changed else 0),
    )


def _propagate_status(status: IsvcStatus, snapshot: KsvcStatus) -> None:
    """``PropagateStatus`` (ST:567-636)."""
    component = status.component("predictor")
    component.latest_created = snapshot.latest_created
    by_revision: dict[str, int] = {}
    for target in snapshot.traffic:
        if target.percent is not None:
            by_revision[target.revision_name] = (
                by_revision.get(target.revision_name, 0) + target.percent
            )
    for target in snapshot.traffic:
        if target.revision_name != snapshot.latest_ready or not target.latest_revision:
            continue
        if component.latest_rolledout != snapshot.latest_ready:
            if target.percent == 100:  # a promotion
                component.previous_rolledout = component.latest_rolledout
                component.latest_rolledout = snapshot.latest_ready
        elif (
            snapshot.latest_ready == snapshot.latest_created
            and target.percent is not None
            and target.percent < 100
            and by_revision.get(target.revision_name) == 100
            and component.previous_rolledout != ""
        ):
            # traffic split over the same revision: fall back to the previous rollout
            component.latest_rolledout = component.previous_rolledout
    if snapshot.latest_ready != component.latest_ready:
        component.latest_ready = snapshot.latest_ready
    ready = snapshot.condition(READY)
    if ready is not None and ready.status == TRUE:
        if snapshot.address:
            component.address = {"url": snapshot.address}
        if snapshot.url:
            component.url = snapshot.url
    set_condition(status.conditions, PREDICTOR_READY, ready)
    set_condition(status.conditions, PREDICTOR_ROUTE_READY, snapshot.condition(KSVC_ROUTES_READY))
    component.traffic = list(snapshot.traffic)
    set_condition(
        status.conditions, PREDICTOR_CONFIGURATION_READY, snapshot.condition(CONFIGURATIONS_READY)
    )
    status.observed_generation = snapshot.observed_generation


def _pods(service: KnativeService | None, revision_name: str) -> PodView:
    """Pods labelled ``serving.knative.dev/revision=<latestCreatedRevision>``."""
    revision = service.revision(revision_name) if service and revision_name else None
    if revision is None or revision.pods == "gone":
        return PodView()
    count = max(1, revision.min_scale)
    if revision.pods == "ready":
        return PodView(total=count, ready=count)
    if revision.pods == "crashloop":
        return PodView(total=count, first="crashloop", failure_message=revision.failure_message)
    return PodView(total=count, first="waiting" if revision.pods == "waiting" else "running")


def propagate_cross_component(manager: ConditionManager, kind: str, source: str) -> None:
    """``PropagateCrossComponentStatus`` for the predictor only (ST:546-565)."""
    condition = Condition(kind, TRUE)
    if not manager.is_true(source):
        state = UNKNOWN if manager.is_unknown(source) else FALSE
        condition = Condition(kind, state, f"{source} not ready")
    set_condition(manager, kind, condition)


def reconcile_stopped_condition(status: IsvcStatus, stop: bool) -> None:
    """CTRL:307-339: ``Stopped`` defaults to False and follows the stop annotation."""
    manager = status.conditions
    existing = manager.get(STOPPED)
    if existing is None:
        set_condition(manager, STOPPED, Condition(STOPPED, FALSE))
        existing = manager.get(STOPPED)
    assert existing is not None
    if stop and existing.status == FALSE:
        set_condition(manager, STOPPED, Condition(STOPPED, TRUE))
    elif not stop and existing.status == TRUE:
        set_condition(manager, STOPPED, Condition(STOPPED, FALSE))


def _ingress(status: IsvcStatus, name: str, namespace: str, stop: bool, cfg: KServeConfig) -> None:
    """The Istio ingress reconciler (ING:82-127, 484-498)."""
    manager = status.conditions
    if cfg.virtual_service_available and not manager.is_true(PREDICTOR_READY):
        state = UNKNOWN if manager.is_unknown(PREDICTOR_READY) else FALSE
        set_condition(
            manager, INGRESS_READY, Condition(INGRESS_READY, state, "Predictor ingress not created")
        )
    if stop:
        set_condition(manager, INGRESS_READY, Condition(INGRESS_READY, FALSE, "Stopped"))
        return
    component = status.components.get("predictor")
    if component is None or not component.url:
        return
    _, separator, rest = component.url.partition("://")
    url = f"{cfg.url_scheme}://{rest}" if separator else component.url
    if "-predictor-default" in url:
        url = url.replace("-predictor-default", "", 1)
    else:
        url = url.replace("-predictor", "", 1)
    status.url = url
    status.address = {"url": f"http://{name}.{namespace}.svc.cluster.local"}
    set_condition(manager, INGRESS_READY, Condition(INGRESS_READY, TRUE))


def reconcile_isvc(
    world: KnativeWorld,
    isvc: Mapping[str, Any],
    now: float,
    config: KServeConfig | None = None,
) -> tuple[KnativeWorld, dict[str, Any] | None]:
    """One KServe reconcile of a Knative-mode InferenceService (not being deleted).

    Returns the new world and the status KServe would write, or ``None`` when KServe
    returns without touching the status (``disable-auto-update`` on a Ready service). The
    caller writes only if the status differs from the stored one (CTRL:421-456).
    """
    cfg = config or KServeConfig()
    metadata = isvc.get("metadata") or {}
    name, namespace = str(metadata.get("name", "")), str(metadata.get("namespace", ""))
    all_annotations = effective_annotations(isvc)
    annotations = {k: v for k, v in all_annotations.items() if k not in cfg.annotation_disallowed}
    status = IsvcStatus.parse(isvc.get("status"), now=now)
    if annotations.get(DISABLE_AUTO_UPDATE_ANNOTATION) == "true" and status.is_ready():
        return world, None
    if status.conditions.get(READY) is None:
        status.conditions.initialize()
    stop = force_stop(all_annotations)
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    template = build_template(isvc, cfg, knative=True)
    service_name = predictor_service_name(name, predictor.get("name"))
    rolled_out = status.components.get("predictor", ComponentStatus()).latest_rolledout
    traffic = compute_traffic(
        canary_traffic_percent(predictor),
        rolled_out,
        template.annotations.get(TAG_ROUTING_ANNOTATION) == "true",
    )
    existing = world.services.get(service_name)
    error: str | None = None
    if stop:
        snapshot = existing.status if existing is not None else KsvcStatus()
        if existing is not None:  # the ksvc is deleted; GC takes its children
            world = world.without(service_name)
    elif existing is None:
        snapshot = KsvcStatus()
        problems = validate_traffic(traffic)
        if problems:
            error = "fails to reconcile predictor: " + _webhook_message(problems)
        else:
            world = world.with_service(
                KnativeService(
                    name=service_name,
                    namespace=namespace,
                    template=template,
                    traffic=traffic,
                    labels=dict(template.ksvc_labels),
                    annotations=dict(template.ksvc_annotations),
                )
            )
    else:
        snapshot = existing.status  # taken BEFORE this reconcile's update (KR:317)
        problems = validate_traffic(traffic)
        if problems:  # the dry-run update is refused (KR:293-299)
            error = (
                "fails to reconcile predictor: fails to reconcile knative service: "
                + _webhook_message(problems)
            )
        else:
            world = world.with_service(_update_service(existing, template, traffic))
    if error is not None:
        # PRED:239-242 then CTRL writes the status and returns the error
        status.component("predictor")
        set_condition(
            status.conditions,
            PREDICTOR_READY,
            Condition(PREDICTOR_READY, FALSE, "ReconcileFailed", error),
        )
        status.deployment_mode = "Knative"
        return world, status.to_dict()
    if not stop:
        _propagate_status(status, snapshot)
    if stop:
        mark_stopped(status)
    else:
        component = status.component("predictor")
        propagate_model_status(
            status,
            component,
            _pods(world.services.get(service_name), component.latest_created),
            raw_deployment=False,
            ksvc_conditions=snapshot.conditions,
        )
    reconcile_stopped_condition(status, stop)
    if not stop:
        propagate_cross_component(status.conditions, ROUTES_READY, PREDICTOR_ROUTE_READY)
        propagate_cross_component(
            status.conditions, LATEST_DEPLOYMENT_READY, PREDICTOR_CONFIGURATION_READY
        )
    _ingress(status, name, namespace, stop, cfg)
    status.deployment_mode = "Knative"
    return world, status.to_dict()


def _webhook_message(problems: Sequence[str]) -> str:
    # (inferred) the text of Knative's admission rejection, wrapped as controller-runtime
    # returns it; only the ReconcileFailed reason is documented in KSERVE.md
    return f"{KNATIVE_WEBHOOK}: validation failed: " + "\n".join(problems)
