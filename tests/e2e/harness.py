"""The controller on the full test bed, as production runs it (``canary.app.build``).

Each test gets its own namespace, its own PostgreSQL database, its own Lease and a
controller that watches only that namespace, so tests cannot see each other's rollouts.
Policies are the fast ones below (seconds instead of minutes); the traffic simulator
serves 200 requests per second per InferenceService, so every step has data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from canary.admission import ADMISSION_PATH
from canary.app import Application, build
from canary.audit import AuditRecord, AuditStore, CommandRow, RolloutRow
from canary.audit.checkpoint import (
    CheckpointSigner,
    SignedCheckpoint,
    generate_private_key_pem,
    public_key_pem,
)
from canary.engine import RolloutDocument
from canary.k8s.client import (
    EVENT,
    INFERENCE_SERVICE,
    NAMESPACE,
    Conflict,
    KubeClient,
    KubeError,
)
from canary.k8s.webhook_config import delete_webhook_configuration, ensure_webhook_configuration
from canary.model import Phase
from canary.ops import submit_command
from canary.settings import load_settings
from canary.witness import ConfigMapWitness
from testbed.behaviour import ModelBehaviour
from testbed.prometheus import PrometheusUnavailable
from testbed.testbed import Testbed

FAST_POLICY = """
name: fast
steps: [10, 25, 50, 100]
stepHold: 4s
analysisInterval: 1s
revisionReadyTimeout: 15s
trafficTimeout: 20s
maxStepDuration: 90s
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 1.0
    minSamples: 100
"""

SLOW_POLICY = """
name: slow
steps: [10, 50, 100]
stepHold: 10m
analysisInterval: 1s
revisionReadyTimeout: 15s
trafficTimeout: 20s
checks:
  - name: error-rate
    builtin: error-rate
    absoluteLimit: 0.05
    minSamples: 200
"""

GATED_POLICY = """
name: {name}
steps: [10, 50, 100]
stepHold: 4s
analysisInterval: 1s
revisionReadyTimeout: 15s
trafficTimeout: 20s
maxStepDuration: 90s
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200
approval:
  gate: {gate}
  beforeStep: 100
  riskOwnerGroup: {group}
  deadline: {deadline}
  onExpiry: {expiry}
"""


def gated_policy(
    gate: str,
    group: str,
    *,
    name: str = "credit",
    deadline: str = "10m",
    expiry: str = "rollback",
    approvers: tuple[str, ...] = (),
) -> str:
    """A fast policy whose promotion to 100 % needs an approval through ``gate``."""
    text = GATED_POLICY.format(name=name, gate=gate, group=group, deadline=deadline, expiry=expiry)
    if approvers:
        text += f"  approvers: [{', '.join(approvers)}]\n"
    return text


LEASE_SECONDS = 5
CHECKPOINTS = "kserve-canary-audit-checkpoints"  # the ConfigMap witness, per test namespace
RATE = 1000.0  # the canary gets 100 req/s at 10 %: enough evidence for a step in seconds
DEADLINE = 90.0

Mode = Literal["knative", "standard"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Replica:
    identity: str
    process: subprocess.Popen[bytes]
    port: int

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release, whatever it was doing."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def metric(self, name: str) -> float | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


@dataclass
class Env:
    testbed: Testbed
    mode: Mode
    namespace: str
    database_url: str
    policy_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    app: Application | None = None
    name: str = "fraud"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    webhook_name: str | None = None

    # --- the audit chain's signing key ----------------------------------------------------

    @property
    def signing_key(self) -> Path:
        """The Ed25519 key this test's controllers sign checkpoints with (made once)."""
        path = self.policy_dir.parent / f"audit-signing-{self.token}.pem"
        if not path.exists():
            path.write_bytes(generate_private_key_pem())
        return path

    @property
    def public_key(self) -> Path:
        path = self.policy_dir.parent / f"audit-signing-{self.token}.pub"
        if not path.exists():
            signer = CheckpointSigner.from_file(self.signing_key)
            path.write_bytes(public_key_pem(signer.public_key))
        return path

    def checkpoints(self) -> list[SignedCheckpoint]:
        """What the ConfigMap witness in this test's namespace keeps."""
        return ConfigMapWitness(self.kube, namespace=self.namespace, name=CHECKPOINTS).read()

    # --- models and services --------------------------------------------------------------

    @property
    def kube(self) -> KubeClient:
        return self.testbed.kube

    def uri(self, version: str) -> str:
        return f"s3://models-{self.token}/fraud/{version}"

    def model(self, version: str, behaviour: ModelBehaviour | None = None) -> str:
        uri = self.uri(version)
        book = self.testbed.behaviour().with_model(uri, behaviour or ModelBehaviour())
        self.testbed.set_behaviour(book.with_rate(self.namespace, self.name, RATE))
        return uri

    def create(
        self, uri: str, *, policy: str = "fast", extra: dict[str, str] | None = None
    ) -> None:
        annotations = {"kserve-canary.io/enabled": "true", "kserve-canary.io/policy": policy}
        if self.mode == "standard":
            annotations["serving.kserve.io/deploymentMode"] = "Standard"
        annotations.update(extra or {})
        self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": self.name, "annotations": annotations},
                "spec": {
                    "predictor": {
                        "minReplicas": 2,
                        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri},
                    }
                },
            },
        )
        self.wait("the first model serving 100%", self._first_ready)

    def _first_ready(self) -> bool:
        isvc = self.isvc()
        conditions = (isvc.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def isvc(self) -> dict[str, Any]:
        return self.kube.get(INFERENCE_SERVICE, self.namespace, self.name)

    def patch(self, body: dict[str, Any], *, field_manager: str | None = None) -> None:
        """A guarded merge patch; ``field_manager`` names who made it (a human's tool)."""
        for _ in range(20):
            try:
                self.kube.patch(
                    INFERENCE_SERVICE,
                    self.namespace,
                    self.name,
                    body,
                    resource_version=self.isvc()["metadata"]["resourceVersion"],
                    field_manager=field_manager,
                )
                return
            except Conflict:
                continue
        raise AssertionError("every patch conflicted")

    # --- the controller -------------------------------------------------------------------

    def start_controller(
        self,
        identity: str = "replica-a",
        *,
        webhook: bool = False,
        prometheus_url: str | None = None,
        **settings_overrides: Any,
    ) -> Application:
        tls: dict[str, Path] = {}
        if webhook:
            cluster = self.testbed.cluster
            assert cluster is not None
            cert, key = cluster.issue_certificate(f"webhook-{self.token}", ["127.0.0.1"])
            tls = {"tls_cert_file": cert, "tls_key_file": key}
        settings = load_settings(
            None,
            **tls,
            database_url=self.database_url,
            policy_path=self.policy_dir,
            kubeconfig=self.testbed.kubeconfig_path,
            prometheus_url=prometheus_url or self.testbed.prometheus_url,
            prometheus_timeout_seconds=1.0,
            namespaces=(self.namespace,),
            http_host="127.0.0.1",
            http_port=0,
            identity=identity,
            lease_namespace=self.namespace,
            lease_name="kserve-canary-leader",
            lease_duration_seconds=5,
            resync_seconds=30,
            metrics_delay_seconds=10,
            # Prometheus scrapes every second: a look each second, complete 1.5 s later.
            look_period_seconds=1.0,
            look_lag_seconds=1.5,
            analysis_window_seconds=10,
            environment="development",
            **{**self._checkpoint_settings(), **settings_overrides},
        )
        app = build(settings)
        app.start()
        if self.app is None:
            self.app = app
        if webhook:
            self._register_webhook(app)
        return app

    def _checkpoint_settings(self) -> dict[str, Any]:
        """Every controller of a test signs checkpoints, to a ConfigMap in its namespace."""
        return {
            "audit_signing_key_file": self.signing_key,
            "audit_checkpoint_interval_seconds": 5,
            "audit_checkpoint_configmap": CHECKPOINTS,
        }

    def _register_webhook(self, app: Application) -> None:
        """Point a MutatingWebhookConfiguration (scoped to this test's namespace) at the
        controller's HTTPS server, and wait until the apiserver calls it."""
        cluster = self.testbed.cluster
        assert cluster is not None
        scope = {"e2e.kserve-canary.io/scope": self.token}
        self.kube.patch(NAMESPACE, None, self.namespace, {"metadata": {"labels": scope}})
        self.webhook_name = f"kserve-canary-{self.namespace}"
        ensure_webhook_configuration(
            self.kube,
            ca_bundle=cluster.ca_path.read_bytes(),
            url=f"{app.url}{ADMISSION_PATH}",
            namespace_selector={"matchLabels": {"e2e.kserve-canary.io/scope": self.token}},
            name=self.webhook_name,
        )

        def active() -> bool:  # a dry run goes through admission and stores nothing
            if self.mode == "standard":  # a new canary entry gets its percent capped
                entry = {
                    "predictor": {
                        "name": "probe",
                        "model": {
                            "modelFormat": {"name": "sklearn"},
                            "name": "kserve-container",
                            "storageUri": self.uri("probe"),
                        },
                    }
                }
                stored = self.kube.patch(
                    INFERENCE_SERVICE, self.namespace, self.name,
                    {"spec": {"canary": [entry]}}, dry_run=True,
                )  # fmt: skip
                return "trafficPercent" in (stored["spec"].get("canary") or [{}])[0]
            probe = {"spec": {"predictor": {"model": {"storageUri": self.uri("probe")}}}}
            stored = self.kube.patch(
                INFERENCE_SERVICE, self.namespace, self.name, probe, dry_run=True
            )
            return "canaryTrafficPercent" in stored["spec"]["predictor"]

        self.wait("the webhook to be called", active, deadline=30)

    @contextmanager
    def store(self) -> Iterator[AuditStore]:
        with AuditStore.from_url(self.database_url) as audit_store:
            yield audit_store

    def command(
        self, command: str, reason: str = "e2e test", *, actor: str = "alice", **args: str
    ) -> CommandRow:
        with self.store() as store:
            return submit_command(
                store,
                namespace=self.namespace,
                name=self.name,
                command=command,
                actor=actor,
                reason=reason,
                args=args,
                wait=30.0,
            )

    # --- observations ---------------------------------------------------------------------

    def rollouts(self) -> list[RolloutRow]:
        with self.store() as store:
            return store.rollouts(namespace=self.namespace, name=self.name)

    def latest(self) -> RolloutDocument | None:
        rows = self.rollouts()
        return RolloutDocument.from_row(rows[0]) if rows else None

    def records(self) -> list[AuditRecord]:
        with self.store() as store:
            return [
                r
                for r in store.records()
                if r.entry.obj is not None and r.entry.obj.namespace == self.namespace
            ]

    def actions(self, rollout_id: str | None = None) -> list[str]:
        return [
            r.entry.action
            for r in self.records()
            if rollout_id is None or r.entry.rollout_id == rollout_id
        ]

    def event_reasons(self) -> list[str]:
        events, _ = self.kube.list(EVENT, self.namespace)
        return [str(e.get("reason")) for e in events]

    def wait(self, what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
        end = time.monotonic() + deadline
        while not check():
            if time.monotonic() > end:
                doc = self.latest()
                raise AssertionError(
                    f"timed out after {deadline:.0f}s waiting for {what}; rollout: "
                    f"{doc.state.phase if doc else None} "
                    f"{doc.state.waiting_for if doc else ''} "
                    f"{doc.state.outcome if doc else ''}; audit: {self.actions()[-12:]}; "
                    f"{self.scrape_health()}"
                )
            time.sleep(0.2)

    def scrape_health(self) -> str:
        """How Prometheus' scrapes of this test's targets fared, and the machine's load: a
        starved simulator or a failing scrape is the usual reason evidence came late."""
        prometheus = self.testbed.prometheus
        if prometheus is None:
            return "Prometheus: not running"
        ns = f'namespace="{self.namespace}"'
        try:
            up = prometheus.query(f"up{{{ns}}}")
            slow = prometheus.query(f"topk(3, scrape_duration_seconds{{{ns}}})")
            age = prometheus.query(f"max(time() - timestamp(up{{{ns}}}))")
            slowest = prometheus.query("max(scrape_duration_seconds)")
        except (PrometheusUnavailable, OSError) as exc:
            return f"Prometheus: no answer ({exc})"
        down = [r["metric"].get("pod", "?") for r in up if r["value"][1] != "1"]
        durations = ", ".join(
            f"{r['metric'].get('pod', '?')} {float(r['value'][1]):.2f} s" for r in slow
        )
        last = f"last scraped {float(age[0]['value'][1]):.1f} s ago" if age else "no scrape yet"
        anywhere = f"{float(slowest[0]['value'][1]):.2f} s" if slowest else "none"
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"Prometheus: {len(up)} targets of this test, {len(down)} down {down}, "
            f"slowest scrapes {durations or 'none'} (any target's: {anywhere}), "
            f"the stalest {last}; load average {load}"
        )

    def wait_phase(
        self, *phases: Phase, count: int = 1, deadline: float = DEADLINE
    ) -> RolloutDocument:
        def reached() -> bool:
            rows = self.rollouts()
            return len(rows) >= count and RolloutDocument.from_row(rows[0]).state.phase in phases

        self.wait(f"phase {'/'.join(p.value for p in phases)}", reached, deadline)
        doc = self.latest()
        assert doc is not None
        return doc

    def stop(self) -> None:
        if self.webhook_name is not None:
            delete_webhook_configuration(self.kube, self.webhook_name)
            self.webhook_name = None
        if self.app is not None:
            self.app.stop()
            self.app = None
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        # Stop this service's traffic and its pods' scrape targets: the test bed's simulator
        # process serves every service of the session, and the scenarios left running
        # (about thirty, at RATE each) starved it late in the suite (missed scrapes,
        # refused connections, a quarter of the nominal rate).
        self.testbed.set_behaviour(
            self.testbed.behaviour().with_rate(self.namespace, self.name, 0.0)
        )
        with suppress(KubeError):
            self.kube.delete(INFERENCE_SERVICE, self.namespace, self.name)

    # --- the controller as its own process (``canary run``), for kill tests ---------------

    def spawn(
        self,
        identity: str,
        log_dir: Path,
        *,
        environment: dict[str, str | None] | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> Replica:
        """Run ``canary run`` as a separate process, configured by KSC_* variables.
        ``environment`` overrides variables (``None`` removes one); ``wrapper`` is a command
        line the process is started under (e.g. a mount namespace that plays a pod)."""
        port = _free_port()
        env: dict[str, str] = {
            **os.environ,
            "KSC_DATABASE_URL": self.database_url,
            "KSC_POLICY_PATH": str(self.policy_dir),
            "KSC_KUBECONFIG": str(self.testbed.kubeconfig_path),
            "KSC_PROMETHEUS_URL": self.testbed.prometheus_url,
            "KSC_NAMESPACES": self.namespace,
            "KSC_HTTP_HOST": "127.0.0.1",
            "KSC_HTTP_PORT": str(port),
            "KSC_IDENTITY": identity,
            "KSC_LEASE_NAMESPACE": self.namespace,
            "KSC_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
            "KSC_METRICS_DELAY_SECONDS": "10",
            # Prometheus scrapes every second: a look each second, complete 1.5 s later.
            "KSC_LOOK_PERIOD_SECONDS": "1",
            "KSC_LOOK_LAG_SECONDS": "1.5",
            "KSC_ANALYSIS_WINDOW_SECONDS": "10",
            "KSC_RESYNC_SECONDS": "30",
            "KSC_ENVIRONMENT": "production",
            **{f"KSC_{k.upper()}": str(v) for k, v in self._checkpoint_settings().items()},
        }
        for key, value in (environment or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / f"{identity}.log").open("ab")
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "canary.cli", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return Replica(identity, process, port)
