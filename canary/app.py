"""Wiring: build a running controller from :class:`~canary.settings.Settings`.

``canary run`` calls :func:`build`, then :meth:`Application.start`. Tests and the demo use
the same function, so what they exercise is what production runs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from analysis.looks import LookSource
from analysis.providers.prometheus import PrometheusProvider
from analysis.runner import Analyzer
from approvals.gate import ApprovalGate
from approvals.servicenow import (
    BasicAuth,
    OAuthClientCredentials,
    OAuthPassword,
    ServiceNowAuth,
    ServiceNowClient,
)
from approvals.servicenow_gate import ServiceNowGate
from approvals.transport import Transport
from canary import __version__
from canary.access import Gatekeeper
from canary.admission import ModelChange, TemplateRules
from canary.analysis_worker import AnalysisRunner, CircuitBreaker, GuardedProvider, Unanswered
from canary.anchoring import checkpointer, load_signer
from canary.api.app import create_app
from canary.api.auditor import from_settings as auditor_from_settings
from canary.api.health import Health
from canary.api.operator import router as operator_router
from canary.api.webhooks import webhook_router
from canary.approval_inbox import ApprovalInboxService
from canary.approval_worker import ApprovalWorker
from canary.audit import AuditStore, Fence, StoreUnavailable
from canary.audit.retention import retention_warning
from canary.checkpointer import Checkpointer
from canary.controller import Controller
from canary.engine import Engine
from canary.entries import admitted_entry
from canary.k8s.client import CONTROLLER_MANAGER, INFERENCE_SERVICE, KubeClient, KubeError
from canary.k8s.events import EventRecorder
from canary.k8s.informer import ObjectCache
from canary.k8s.lease import LeaseElector
from canary.log import get_logger
from canary.metrics import ControllerMetrics
from canary.policy_source import PolicySource
from canary.routing.base import TrafficRouter
from canary.routing.gateway_mirror import GatewayMirrorRouter
from canary.routing.istio_mirror import IstioMirrorRouter
from canary.routing.knative import KnativeRouter
from canary.routing.mirror import MirrorRouter
from canary.routing.standard import StandardRouter
from canary.server import HttpServer
from canary.settings import Settings

__all__ = [
    "Application",
    "build",
    "check_database",
    "check_retention",
    "default_identity",
    "mirror_router",
]

log = get_logger("canary.app")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Application:
    settings: Settings
    controller: Controller
    server: HttpServer
    store: AuditStore
    kube: KubeClient
    health: Health
    metrics: ControllerMetrics

    approvals: ApprovalWorker | None = None
    checkpoints: Checkpointer | None = None

    def start(self) -> None:
        self.server.start()
        self.controller.start()
        if self.approvals is not None:
            self.approvals.start()
        if self.checkpoints is not None:
            self.checkpoints.start()
        self.health.set_ready("process", True, "running")

    def stop(self) -> None:
        if self.approvals is not None:
            self.approvals.stop()
        if self.checkpoints is not None:
            self.checkpoints.stop()  # while still leading: signs the head one last time
        self.controller.stop()
        self.server.stop()
        self.store.close()
        self.kube.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.server.port}"


def mirror_router(settings: Settings, kube: KubeClient) -> MirrorRouter | None:
    """The router that writes shadow mirrors as ``shadow_mirror`` says, or None when it is
    ``none`` (shadow phases are then refused)."""
    if settings.shadow_mirror == "istio":
        return IstioMirrorRouter(
            kube,
            gateways=settings.shadow_istio_gateways,
            extra_hosts=settings.shadow_istio_hosts,
            cluster_domain=settings.cluster_domain,
        )
    if settings.shadow_mirror == "gateway-api":
        return GatewayMirrorRouter(
            kube,
            parent_refs=[ref.as_ref() for ref in settings.shadow_route_parent_refs],
            hostnames=settings.shadow_route_hostnames,
        )
    return None


def check_database(store: AuditStore, health: Health) -> None:
    """What the controller checks of its database at start.

    * A schema migrated by a newer kserve-canary is refused (:class:`SchemaTooNew` is
      raised, and ``canary run`` exits 3): this version might misread what it stores.
    * A role that could rewrite the history it writes (a superuser, the tables' owner, or one
      holding privileges the controller never uses) is logged as ``audit.privileged_role``
      with what it could do and the fix, and shown in the readiness details as the
      ``database_role`` component. It is not refused: the controller still works, the audit
      trail is only weaker.

    A database that does not answer yet is not waited for: the controller reports it not
    ready, as always, and these checks are not made.
    """
    try:
        revision = store.check_schema()
        access = store.role_access()
    except StoreUnavailable as exc:
        log.warning(
            "audit.startup_check_skipped",
            error=str(exc),
            detail="the database did not answer at start: its schema revision and the "
            "privileges of the role connected as were not checked",
        )
        return
    if access is None:  # SQLite: no roles
        return
    if access.privileged:
        log.warning(
            "audit.privileged_role",
            role=access.role,
            superuser=access.superuser,
            owns=list(access.owns),
            could=access.could(),
            fix=access.fix(),
        )
        health.set_ready(
            "database_role",
            True,  # a warning, not a reason to take the replica out of service
            f"warning: the controller connects as role {access.role}, and {access.could()}; "
            f"{access.fix()}",
        )
        return
    health.set_ready(
        "database_role",
        True,
        f"role {access.role}: reads and appends the audit history, updates only the "
        f"controller's state (schema revision {revision})",
    )


def check_retention(retention_days: int) -> None:
    """At start: warn (``audit.retention_short``) when the retention a purge may go down to
    is shorter than Reg B's 25 months. The controller itself never purges anything."""
    short = retention_warning(retention_days)
    if short is not None:
        log.warning("audit.retention_short", retention_days=retention_days, detail=short)


def build(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Application:
    now: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
    identity = settings.identity or default_identity()
    health = Health(liveness_timeout=settings.stall_timeout_seconds)
    metrics = ControllerMetrics()

    def policy_problem(problem: str | None) -> None:
        health.set_ready("policies", problem is None, problem or "loaded")

    policies = PolicySource(settings.policy_path, policy_problem)
    policies()  # fail fast: a controller without valid policies must not start
    kube = KubeClient.connect(
        settings.kubeconfig,
        timeout=settings.kube_timeout_seconds,
        agent=f"{CONTROLLER_MANAGER}/{__version__}",
    )
    kube.count_write_retries(metrics.record_kube_write_retry)
    # The controller's watch fills it; reconciles read their InferenceService from it.
    watched = ObjectCache()
    kube.read_through(INFERENCE_SERVICE, watched)
    store = AuditStore.from_url(
        settings.database_url.get_secret_value(), timeout=settings.database_timeout_seconds
    )
    check_database(store, health)
    check_retention(settings.audit_retention_days)
    if settings.standard_weights == "own-httproute" and not settings.standard_route_parent_refs:
        log.warning(
            "controller.route_unattached",
            detail="standard_route_parent_refs is empty: the Standard-mode HTTPRoute attaches "
            "to no Gateway, so on a real Gateway a canary gets no traffic",
        )
    routers: dict[str, TrafficRouter] = {
        "knative": KnativeRouter(kube),
        "standard": StandardRouter(
            kube,
            weights=settings.standard_weights,
            parent_refs=[ref.as_ref() for ref in settings.standard_route_parent_refs],
            hostnames=settings.standard_route_hostnames,
        ),
    }
    token = settings.prometheus_bearer_token
    provider = PrometheusProvider(
        settings.prometheus_url,
        timeout=settings.prometheus_timeout_seconds,
        bearer_token=token.get_secret_value() if token else None,
    )
    events = EventRecorder(kube, instance=identity, clock=now)
    breaker = CircuitBreaker(
        failures=settings.prometheus_breaker_failures,
        cooldown=timedelta(seconds=settings.prometheus_breaker_cooldown_seconds),
        clock=now,
    )
    guarded = GuardedProvider(provider, breaker)

    def look_source(source: GuardedProvider | Unanswered) -> LookSource:
        return LookSource(
            source,
            period=timedelta(seconds=settings.look_period_seconds),
            lag=timedelta(seconds=settings.look_lag_seconds),
            window=timedelta(seconds=settings.analysis_window_seconds),
            burst=None
            if settings.burst_seconds is None
            else timedelta(seconds=settings.burst_seconds),
            batch=settings.batch_looks,
            group_size=settings.look_group_size,
        )

    looks = look_source(guarded)
    analyzer = Analyzer(guarded, looks=looks)

    def failing(reason: str) -> Analyzer:
        # No I/O and a look source of its own: safe on the worker while a real look hangs.
        unanswered = Unanswered(reason, provider.url)
        return Analyzer(unanswered, looks=look_source(unanswered))

    runner = AnalysisRunner(
        analyzer,
        fallback=failing,
        breaker=breaker,
        deadline=timedelta(seconds=settings.analysis_deadline_seconds),
        clock=now,
        on_deadline=metrics.record_analysis_deadline,
        at_start=True,
    )
    metrics.watch_analyses(runner.waiting)
    metrics.watch_looks(looks.queries_by_kind)

    mirrors = mirror_router(settings, kube)

    def engine_factory(leadership: Callable[[], Fence | None]) -> Engine:
        return Engine(
            store=store,
            kube=kube,
            routers=routers,
            policies=policies,
            leadership=leadership,
            clock=now,
            instance=identity,
            analyzer=analyzer,
            events=events,
            metrics=metrics,
            prometheus_url=settings.prometheus_url,
            default_metric_profile=settings.metric_profile,
            standard_metric_profile=settings.standard_metric_profile,
            metrics_delay=timedelta(seconds=settings.metrics_delay_seconds),
            analysis_runner=runner,
            mirror=mirrors,
            mirror_namespaces=settings.namespaces,
        )

    elector = LeaseElector(
        kube,
        namespace=settings.lease_namespace,
        name=settings.lease_name,
        identity=identity,
        duration=timedelta(seconds=settings.lease_duration_seconds),
        clock=now,
    )
    controller = Controller(
        kube=kube,
        store=store,
        engine_factory=engine_factory,
        elector=elector,
        namespaces=settings.namespaces,
        resync=timedelta(seconds=settings.resync_seconds),
        health=health,
        metrics=metrics,
        clock=now,
        analysis=runner,
        health_expiry=settings.health_expiry_seconds,
        stall_timeout=settings.stall_timeout_seconds,
        workers=settings.workers,
        cache=watched,
    )
    rules = TemplateRules.with_extra(
        settings.kserve_annotation_disallowed,
        settings.kserve_label_disallowed,
        default_deployment_mode=settings.kserve_default_deployment_mode,
    )
    gates: dict[str, ApprovalGate] = {}
    servicenow = servicenow_gate(settings)
    if servicenow is not None:
        gates["servicenow"] = servicenow
    worker = ApprovalWorker(
        store=store,
        gates=gates,
        leadership=controller.fence,
        clock=now,
        enqueue=controller.enqueue,
        instance=identity,
        events=events,
        metrics=metrics,
        poll_interval=timedelta(seconds=settings.approval_poll_seconds),
        look_seconds=settings.look_period_seconds,
    )
    inbox = ApprovalInboxService(
        store=store,
        worker=worker,
        leadership=controller.fence,
        enqueue=controller.enqueue,
        instance=identity,
        events=events,
    )
    webhooks = webhook_router(
        inbox=inbox,
        servicenow_secrets=lambda: [
            s.get_secret_value() for s in settings.servicenow_callback_secrets
        ],
        gate_secrets=lambda: [s.get_secret_value() for s in settings.approval_webhook_secrets],
        clock=now,
        metrics=metrics,
    )
    operator_api = operator_router(
        Gatekeeper(kube.review_token, kube.review_access),
        store,
        metrics,
        clock=now,
        look_seconds=settings.look_period_seconds,
    )

    signer = load_signer(settings)
    auditor = auditor_from_settings(
        settings, store=store, kube=kube, signer=signer, clock=now, metrics=metrics
    )

    def model_changed(change: ModelChange) -> None:
        store.commit([admitted_entry(change, now())])

    app = create_app(
        health=health,
        policies=policies,
        metrics=metrics,
        admission_rules=rules,
        model_changes=model_changed,
        extra_routers=[r for r in (operator_api, webhooks, auditor) if r is not None],
    )
    client_ca: bytes | None = None
    if settings.tls_cert_file is not None:
        # Operators whose kubeconfig holds a client certificate authenticate with it, as they
        # do with the apiserver: trust the CA the apiserver publishes for that.
        try:
            client_ca = kube.client_ca_bundle()
        except KubeError as exc:
            log.warning("api.client_ca_unavailable", error=str(exc),
                        detail="operators can authenticate with bearer tokens only")  # fmt: skip
    server = HttpServer(
        app,
        client_ca=client_ca,
        host=settings.http_host,
        port=settings.http_port,
        certfile=settings.tls_cert_file,
        keyfile=settings.tls_key_file,
        reload_interval=settings.tls_reload_seconds,
        metrics=metrics,
    )
    checkpoints = checkpointer(
        settings,
        signer=signer,
        store=store,
        kube=kube,
        events=events,
        leadership=controller.fence,
        clock=now,
        metrics=metrics,
    )
    return Application(
        settings, controller, server, store, kube, health, metrics, worker, checkpoints
    )


def servicenow_gate(settings: Settings) -> ServiceNowGate | None:
    """The ServiceNow change gate the settings describe, or None without an instance URL."""
    if settings.servicenow_url is None:
        return None

    def secret(value: SecretStr | None) -> str:
        return value.get_secret_value() if value is not None else ""

    auth: ServiceNowAuth
    if settings.servicenow_auth == "basic":
        auth = BasicAuth(settings.servicenow_user or "", secret(settings.servicenow_password))
    elif settings.servicenow_auth == "oauth-password":
        auth = OAuthPassword(
            client_id=settings.servicenow_client_id or "",
            client_secret=secret(settings.servicenow_client_secret),
            username=settings.servicenow_user or "",
            password=secret(settings.servicenow_password),
        )
    else:
        auth = OAuthClientCredentials(
            client_id=settings.servicenow_client_id or "",
            client_secret=secret(settings.servicenow_client_secret),
        )
    transport = Transport(
        settings.servicenow_url.rstrip("/"),
        timeout=settings.servicenow_timeout_seconds,
        verify=settings.servicenow_ca_file or True,
    )
    client = ServiceNowClient(transport, auth, timeout=settings.servicenow_timeout_seconds)
    return ServiceNowGate(client, api=settings.servicenow_api)
