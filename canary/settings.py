"""Controller settings: environment variables (prefix ``KSC_``), an optional YAML config file,
and secrets held as ``SecretStr`` so they never reach logs or reprs.

Precedence, highest first: explicit arguments, ``KSC_*`` environment variables, the config
file (``KSC_CONFIG_FILE`` or ``--config``), then the defaults below.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from analysis.looks import DEFAULT_GROUP_SIZE
from approvals.signatures import InvalidSecret, parse_secret

__all__ = ["RouteParentRef", "Settings", "SettingsError", "load_settings"]

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("ksc_config_file", default=None)


class SettingsError(ValueError):
    """The configuration cannot be used; the message names the setting and the fix."""


class RouteParentRef(BaseModel):
    """One Gateway API ``parentRef`` of our Standard-mode or shadow mirror HTTPRoute."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"
    section_name: str | None = Field(default=None, alias="sectionName", min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)

    def as_ref(self) -> dict[str, Any]:
        """The parentRef as the HTTPRoute spec spells it (unset fields left out)."""
        ref: dict[str, Any] = {"group": self.group, "kind": self.kind, "name": self.name}
        if self.namespace is not None:
            ref["namespace"] = self.namespace
        if self.section_name is not None:
            ref["sectionName"] = self.section_name
        if self.port is not None:
            ref["port"] = self.port
        return ref


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KSC_",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    environment: Literal["production", "development"] = Field(
        default="production",
        description="production logs JSON; development logs for a console.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///kserve-canary.db"),
        description="SQLAlchemy URL of the audit database. SQLite (a file) is the embedded "
        "default; use postgresql+psycopg://… in production.",
    )
    policy_path: Path = Field(
        default=Path("/etc/kserve-canary/policies"),
        description="A policy YAML file or a directory of them (a mounted ConfigMap).",
    )
    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Namespaces to watch; empty means all namespaces.",
    )
    prometheus_url: str = "http://prometheus.monitoring:9090"
    prometheus_bearer_token: SecretStr | None = None
    prometheus_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="How long one Prometheus query may take (sent to Prometheus as its own "
        "timeout too); a query is tried three times before the look counts as an error.",
    )
    metrics_delay_seconds: int = Field(
        default=60,
        ge=0,
        description="How long after a step is reached Prometheus may still have no series for "
        "a new revision (service discovery + scrape interval + rate window). Until then a "
        "missing series means 'still collecting', never a verdict.",
    )
    look_period_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often the built-in checks read Prometheus (grouped queries shared by "
        "every rollout): the sequential tests' look and the fast-fail path. Aligned to a grid "
        "of multiples of it, so every replica reads the same looks.",
    )
    batch_looks: bool = Field(
        default=True,
        description="Whether the built-in checks' looks of every rollout of one metric profile "
        "share their queries (five per look, whatever the number of rollouts). False sends "
        "each rollout's own queries (five per look per rollout): for a Prometheus that cannot "
        "answer the grouped queries, and to measure what the grouping saves.",
    )
    look_group_size: int = Field(
        default=DEFAULT_GROUP_SIZE,
        ge=1,
        le=100_000,
        description="At most this many InferenceServices share one group of look queries "
        "(with batch_looks on). One group's answers grow with its services; groups are read "
        "at once, so a slow answer holds back only its own group's rollouts. Queries per look: "
        "five per group.",
    )
    burst_seconds: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="How long a burst that moves one revision's error rate or latency (a noisy "
        "node, a bursty client) lasts, if longer than a look. The looks within it are tempered "
        "together as one draw of over-dispersion, so a burst spread over many short looks is "
        "not read as many independent pieces of evidence: fewer false rollbacks on bursty "
        "traffic, but every rollback, a blatant one included, then needs about a burst's "
        "worth of looks more. Unset: each look varies on its own (the fastest rollback).",
    )
    look_lag_seconds: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="How long after a look's end its data are taken as complete in Prometheus "
        "(one scrape interval plus ingestion).",
    )
    analysis_window_seconds: int = Field(
        default=60,
        ge=1,
        description="The range of the values shown and judged against absolute and hard limits "
        "(5xx ratio, p99, request rate), shared by every rollout.",
    )
    http_port: int = Field(default=8443, ge=0, le=65535, description="0 picks a free port.")
    http_host: str = "0.0.0.0"  # noqa: S104 - the pod's address; probes and webhooks reach it
    tls_cert_file: Path | None = Field(
        default=None,
        description="Serving certificate (PEM). The apiserver calls admission webhooks over "
        "HTTPS only, so production sets it; without it the server speaks plain HTTP.",
    )
    tls_key_file: Path | None = None
    tls_reload_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often the serving certificate and key files are compared with the "
        "pair being served. A rotated pair (cert-manager renewing the Secret, the kubelet "
        "swapping the mounted files) is loaded for new connections without a restart; a pair "
        "that does not load keeps the previous one served and is tried again next time.",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file. Empty: the file KUBECONFIG names, else ~/.kube/config, "
        "else the pod's ServiceAccount (its token read again for every request).",
    )
    identity: str | None = Field(
        default=None,
        description="This replica's name in the leader Lease and the audit trail "
        "(default: hostname-pid; in a pod, set it to the pod name).",
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Reconciles that run at once. Two of one InferenceService never do; a "
        "slow one (a slow apiserver or database answer) holds one worker, not every rollout.",
    )
    resync_seconds: int = Field(
        default=300, ge=10, description="Full relist of InferenceServices, whatever the watch says."
    )
    kserve_annotation_disallowed: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Annotation keys the cluster's KServe adds to serviceAnnotationDisallowedList "
        "beyond its defaults (comma-separated), e.g. the kserve-canary.io/ keys. The admission "
        "webhook must know them: a change of such a key does not make a new revision.",
    )
    kserve_label_disallowed: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="The same for serviceLabelDisallowedList."
    )
    kserve_default_deployment_mode: Literal["Knative", "Standard"] = Field(
        default="Knative", description="The cluster's default KServe deployment mode."
    )
    standard_weights: Literal["own-httproute", "kserve-native"] = Field(
        default="own-httproute",
        description="Standard mode: split traffic with our own HTTPRoute (KServe v0.20), or "
        "through spec.canary[].trafficPercent where KServe routes it (after v0.20).",
    )
    standard_route_parent_refs: tuple[RouteParentRef, ...] = Field(
        default=(),
        description="Standard mode, own-httproute: the parentRefs of our HTTPRoute (the "
        "Gateway, or for mesh routing the stable Service, it attaches to), as a YAML list or "
        "JSON in KSC_STANDARD_ROUTE_PARENT_REFS. Without one the route attaches to nothing "
        "on a real Gateway and the canary gets no traffic.",
    )
    standard_route_hostnames: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Standard mode, own-httproute: the hostnames of our HTTPRoute "
        "(comma-separated), e.g. the InferenceService's external host.",
    )
    shadow_mirror: Literal["none", "istio", "gateway-api"] = Field(
        default="none",
        description="How challengers get copies of a champion's requests (shadow phases): "
        "an Istio VirtualService of ours with mirror and mirrorPercentage (istio), or a "
        "Gateway API HTTPRoute of ours with a RequestMirror filter (gateway-api). none: "
        "shadow phases are refused.",
    )
    shadow_istio_gateways: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("mesh",),
        description="shadow_mirror istio: the gateways of our VirtualService "
        "(comma-separated): mesh (the callers' sidecars) and/or Gateways as namespace/name.",
    )
    shadow_istio_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="shadow_mirror istio: hosts added to our VirtualService after the "
        "champion's predictor Service host (comma-separated), e.g. for traffic that enters "
        "through a Gateway.",
    )
    shadow_route_parent_refs: tuple[RouteParentRef, ...] = Field(
        default=(),
        description="shadow_mirror gateway-api: the parentRefs of our mirror HTTPRoute, like "
        "standard_route_parent_refs. Empty: the champion's predictor Service itself (a GAMMA "
        "mesh route).",
    )
    shadow_route_hostnames: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="shadow_mirror gateway-api: the hostnames of our mirror HTTPRoute "
        "(comma-separated).",
    )
    cluster_domain: str = Field(
        default="cluster.local",
        description="The cluster's DNS domain, in the Service host names our VirtualService "
        "names (<service>.<namespace>.svc.<cluster domain>).",
    )
    metric_profile: Literal[
        "knative-otel", "knative-opencensus", "istio", "kserve-model-server"
    ] = Field(
        default="knative-otel",
        description="Metric profile for Knative-mode services whose policy and annotations "
        "name none.",
    )
    standard_metric_profile: Literal["istio", "kserve-model-server"] = Field(
        default="istio",
        description="The same for Standard-mode services (no queue-proxy there).",
    )
    lease_name: str = "kserve-canary-leader"
    lease_namespace: str = "kserve-canary"
    lease_duration_seconds: int = Field(default=15, ge=5)
    kube_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="How long one apiserver request may take (connect and answer) before it "
        "counts as failed; watches have their own bound.",
    )
    database_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long connecting to the audit database, and each of its transactions, "
        "may take. A database that stops answering (frozen, not refusing) fails the call after "
        "this long: its connections are cut client-side, and the server cancels statements "
        "that run longer.",
    )
    analysis_deadline_seconds: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="How long one look (every query of one evaluation) may take. Looks run "
        "off the command path; one that is not done by then counts as an error for each of "
        "its checks, and its late answer is dropped.",
    )
    prometheus_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive failed Prometheus queries (unreachable, timed out, 5xx) or "
        "looks past their deadline that open the circuit breaker: while it is open, looks fail "
        "at once instead of waiting on Prometheus.",
    )
    prometheus_breaker_cooldown_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long the breaker stays open; then queries go through again, and the "
        "first that fails opens it for as long again.",
    )
    health_expiry_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long a readiness report (database, apiserver) stays valid: a "
        "dependency that stops answering shows as not ready this long after its last answer.",
    )
    stall_timeout_seconds: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="/healthz fails when a controller loop has not gone round for this long, "
        "or when this replica holds the Lease but cannot act on it (its epoch refused or "
        "never recorded), so Kubernetes restarts it and the Lease goes to a replica that can.",
    )

    # -- approvals ----------------------------------------------------------------------
    servicenow_url: str | None = Field(
        default=None,
        description="The ServiceNow instance (https://example.service-now.com). Unset: "
        "policies with gate servicenow wait until their deadline (nothing can approve them).",
    )
    servicenow_auth: Literal["basic", "oauth-password", "oauth-client-credentials"] = "basic"
    servicenow_user: str | None = Field(default=None, description="The integration user.")
    servicenow_password: SecretStr | None = None
    servicenow_client_id: str | None = None
    servicenow_client_secret: SecretStr | None = None
    servicenow_api: Literal["change", "table"] = Field(
        default="change",
        description="Open changes through the Change Management API (change) or the Table "
        "API (table).",
    )
    servicenow_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    servicenow_ca_file: Path | None = Field(
        default=None, description="CA bundle for the instance's certificate (default: system)."
    )
    approval_poll_seconds: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="How often a pending ServiceNow approval is read again (the source of "
        "truth: ServiceNow sends nothing by itself; a signed callback only makes it sooner). "
        "Each read costs about 3 + 2 per approver requests: keep within the instance's rate "
        "limit.",
    )
    servicenow_callback_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="whsec_ secrets the ServiceNow callback is signed with (several during a "
        "rotation), comma-separated in the environment.",
    )
    approval_webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="whsec_ secrets of the generic signed-webhook gate (a firm's own change "
        "system), comma-separated in the environment.",
    )

    # -- the audit chain's checkpoints (canary.checkpointer) -------------------------------
    audit_signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs checkpoints of the audit chain's "
        "head; mount it from a Secret that the database's administrators cannot read. Without "
        "it no checkpoint is signed and the controller warns at start (the chain is then "
        "tamper-evident only against people without database rights).",
    )
    audit_checkpoint_interval_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="How often the leader signs the chain's head when records were added "
        "(and within a few seconds of every rollout's end).",
    )
    audit_log_name: str = Field(
        default="kserve-canary",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The audit log's name in its checkpoints (one per installation, e.g. "
        "prod-eu1-kserve-canary): a checkpoint of another log never vouches for this one.",
    )
    audit_witnesses: Annotated[tuple[Literal["configmap", "log", "file"], ...], NoDecode] = Field(
        default=("configmap", "log"),
        description="Where signed checkpoints are published, comma-separated: configmap (a "
        "ConfigMap and Events in lease_namespace), log (the structured log), file "
        "(audit_witness_file).",
    )
    audit_checkpoint_configmap: str = Field(
        default="kserve-canary-audit-checkpoints",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The ConfigMap (in lease_namespace) that witnesses the checkpoints.",
    )
    audit_witness_file: Path | None = Field(
        default=None,
        description="The file the file witness appends checkpoints to (one JSON per line).",
    )

    audit_public_key_files: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Retired checkpoint public keys (PEM) the auditor API still trusts, "
        "comma-separated, besides the current signing key's; the leader also accepts a purge "
        "(canary audit purge) that ended on a checkpoint one of them signed.",
    )
    audit_retention_days: int = Field(
        default=2557,
        ge=31,
        le=36525,
        description="How long the audit trail is kept, in days (2557: 7 years). The controller "
        "never deletes anything: this is what `canary audit purge` may remove (records older "
        "than this, up to a signed checkpoint). Below 761 days (Reg B's 25 months) the "
        "controller warns at start.",
    )

    # -- the auditor API (/audit/v1) -------------------------------------------------------
    auditor_tokens_file: Path | None = Field(
        default=None,
        description="A YAML file (from a Secret or ConfigMap) listing auditor tokens by their "
        "SHA-256: tokens: [{name, sha256, roles: [auditor]}] (canary audit token makes one); "
        "re-read when it changes.",
    )
    auditor_kubernetes: bool = Field(
        default=True,
        description="Let cluster identities in whom RBAC grants the auditor role (get on "
        "audit.kserve-canary.io; ClusterRole kserve-canary-auditor) read the auditor API.",
    )

    # -- the shadow collector (canary shadow-collector, its own process) -----------------
    shadow_collector_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the pod's address; the InferenceServices' loggers post to it
        description="Where the shadow collector listens (plain HTTP: put a NetworkPolicy in "
        "front of it).",
    )
    shadow_collector_port: int = Field(default=9400, ge=0, le=65535, description="0 picks one.")
    shadow_collector_decision_field: str = Field(
        default="decision",
        min_length=1,
        max_length=256,
        description="The decision in a response: a v1 prediction object's key, or a v2 "
        "output's name.",
    )
    shadow_collector_score_field: str = Field(
        default="score",
        min_length=1,
        max_length=256,
        description="The score in a response: a v1 prediction object's key, or a v2 output's name.",
    )
    shadow_collector_ttl_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a response waits for its partner, and how long a request id is "
        "remembered so a replay does not count twice.",
    )
    shadow_collector_max_pending: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Request ids held at most (waiting or recently paired); when full, the "
        "oldest is dropped.",
    )
    shadow_collector_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="The largest request body the collector reads (413 above it).",
    )

    @field_validator("shadow_collector_score_field")
    @classmethod
    def _shadow_fields_differ(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("shadow_collector_decision_field"):
            raise ValueError(
                "the same as shadow_collector_decision_field; a response's decision and score "
                "are read from different fields"
            )
        return value

    @field_validator("servicenow_callback_secrets", "approval_webhook_secrets")
    @classmethod
    def _secrets_are_whsec(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, secret in enumerate(value):
            try:
                parse_secret(secret.get_secret_value())
            except InvalidSecret as exc:
                raise ValueError(f"secret #{index + 1}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _witness_file(self) -> Self:
        if "file" in self.audit_witnesses and self.audit_witness_file is None:
            raise ValueError("audit_witnesses names file, so audit_witness_file is needed")
        return self

    @model_validator(mode="after")
    def _servicenow_credentials(self) -> Self:
        if self.servicenow_url is None:
            return self
        if not self.servicenow_url.startswith(("https://", "http://")):
            raise ValueError("servicenow_url must start with https:// (or http:// in tests)")
        needs = {
            "basic": ("servicenow_user", "servicenow_password"),
            "oauth-password": (
                "servicenow_user", "servicenow_password", "servicenow_client_id",
                "servicenow_client_secret",
            ),
            "oauth-client-credentials": ("servicenow_client_id", "servicenow_client_secret"),
        }[self.servicenow_auth]  # fmt: skip
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"servicenow_auth {self.servicenow_auth} needs {', '.join(missing)} "
                "(environment KSC_" + ", KSC_".join(m.upper() for m in missing) + ")"
            )
        return self

    @field_validator(
        "namespaces",
        "kserve_annotation_disallowed",
        "kserve_label_disallowed",
        "standard_route_hostnames",
        "shadow_istio_gateways",
        "shadow_istio_hosts",
        "shadow_route_hostnames",
        "servicenow_callback_secrets",
        "approval_webhook_secrets",
        "audit_witnesses",
        "audit_public_key_files",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("kubeconfig", mode="before")
    @classmethod
    def _empty_kubeconfig_is_unset(cls, value: object) -> object:
        # KSC_KUBECONFIG="" would otherwise be the path "." (a directory, never a kubeconfig)
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("standard_route_hostnames", "shadow_route_hostnames", "shadow_istio_hosts")
    @classmethod
    def _hostnames_are_dns_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not _HOSTNAME.match(host) or len(host) > 253:
                raise ValueError(
                    f"{host!r} is not a hostname (lowercase DNS name, optionally starting "
                    "with '*.')"
                )
        return value

    @field_validator("shadow_istio_gateways")
    @classmethod
    def _istio_gateways(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(
                "name at least one gateway: mesh (the callers' sidecars) or namespace/name"
            )
        for gateway in value:
            namespace, _, name = gateway.rpartition("/")
            good_namespace = not namespace or (
                _DNS_LABEL.fullmatch(namespace) is not None and len(namespace) <= 63
            )
            good_name = _DNS_NAME.fullmatch(name) is not None and len(name) <= 253
            if not (good_namespace and good_name):
                raise ValueError(
                    f"{gateway!r} is not a gateway: mesh, a Gateway's name, or namespace/name "
                    "(lowercase DNS names)"
                )
        return value

    @field_validator("cluster_domain")
    @classmethod
    def _cluster_domain_is_a_dns_name(cls, value: str) -> str:
        if not _DNS_NAME.fullmatch(value) or len(value) > 253:
            raise ValueError(
                f"{value!r} is not a DNS name (lowercase, no trailing dot), e.g. cluster.local"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get() or os.environ.get("KSC_CONFIG_FILE")
        if config_file:
            sources.append(InitSettingsSource(settings_cls, _read_config_file(Path(config_file))))
        sources.append(file_secret_settings)
        return tuple(sources)


_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning validation errors into one readable SettingsError."""
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"])
            secret = any(word in name for word in ("secret", "password", "token", "url"))
            shown = "" if err["type"] == "missing" or secret else f" (got {err.get('input')!r})"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown setting"
            lines.append(f"setting {name}: {message}{shown}")
        raise SettingsError("; ".join(lines)) from None
    finally:
        _CONFIG_FILE.reset(token)
