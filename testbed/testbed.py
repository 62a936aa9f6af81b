"""The local test bed: what `python -m testbed up` starts and what the test suite runs on.

Real: etcd and kube-apiserver (built from Go modules), the real CRDs (fetched from their
upstream Go modules at pinned versions, :mod:`testbed.crds`; ``$KSC_CRD_DIR``
overrides), Prometheus and PostgreSQL from Debian. Simulated, in one
Python process: KServe (status written exactly as v0.20.0 would) and the model traffic
(per-revision metrics under the real names). The same ``Testbed`` class serves the CLI
(detached, stopped later by ``down``) and the pytest session fixture (children of the test
process).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from canary.k8s.client import CRD, KubeClient, Unavailable
from testbed.behaviour import BehaviourBook
from testbed.binaries import BuildError, ensure_built
from testbed.cluster import Cluster
from testbed.crds import ensure_crds
from testbed.processes import alive, start_time, tail, terminate
from testbed.prometheus import PrometheusServer
from testbed.traffic import LatencyLayout, TrafficMode

__all__ = ["AUDITED_USER", "Scale", "Testbed", "TestbedError", "default_sandbox_dir"]

# The checkout this package lives in: the test bed is not installed with the product, so
# the simulator process finds it (and the product beside it) through PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parents[1]
FIELD_MANAGER = "kserve-canary-sandbox"
NAMESPACES = ("kserve-canary", "models")
SIMULATORS_MODULE = "testbed.simulators"
# The apiserver writes this user's requests, and only these, to its audit log
# (cluster/audit.log): a benchmark gives the controller a client certificate of this user
# (Cluster.issue_client_certificate) to count the controller's requests by verb.
AUDITED_USER = "kserve-canary-audited"
COLLECTOR_JOB = "shadow-collector"
CRD_FILES = (
    "serving.kserve.io_inferenceservices.yaml",
    "virtualservices.networking.istio.io.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
)


class TestbedError(RuntimeError):
    """A part of the test bed could not start; the message says which and why."""

    __test__ = False  # not a pytest test class


def default_sandbox_dir() -> Path:
    override = os.environ.get("KSC_SANDBOX_DIR")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"kserve-canary-sandbox-{os.getuid()}"


def _pythonpath() -> str:
    """``PYTHONPATH`` for a child Python process: this checkout first, so that
    ``python -m testbed.simulators`` works from any working directory."""
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(REPO_ROOT), *([inherited] if inherited else [])])


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the KServe CRD is 2 MB
    with path.open("rb") as handle:
        return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader


@dataclass(frozen=True)
class Scale:
    """How the test bed is set up for many InferenceServices (the defaults are the test
    suite's): the traffic simulator's ``traffic_mode``, ``tick_interval``, exposed
    ``profiles`` and ``latency_buckets`` layout (:mod:`testbed.traffic`), Prometheus'
    ``scrape_interval`` (seconds), and the users whose apiserver requests are written to
    the apiserver's audit log
    (``audit_users``, :attr:`testbed.cluster.Cluster.audit_log_path`; by default
    :data:`AUDITED_USER`, whom nothing uses unless a benchmark does)."""

    traffic_mode: TrafficMode = "per-request"
    tick_interval: float = 0.2
    profiles: tuple[str, ...] | None = None
    latency_buckets: LatencyLayout = "fine"
    scrape_interval: float = 1.0
    audit_users: tuple[str, ...] = (AUDITED_USER,)


@dataclass(frozen=True)
class Timings:
    binaries: float
    cluster: float
    crds: float
    simulators: float
    prometheus: float

    @property
    def total(self) -> float:
        return self.binaries + self.cluster + self.crds + self.simulators + self.prometheus


class Testbed:
    """Starts and stops every part of the test bed in ``work_dir``."""

    __test__ = False

    def __init__(
        self,
        work_dir: Path,
        *,
        detach: bool = False,
        crd_dir: Path | None = None,
        standard_routing: Literal["v0.20", "weighted"] = "v0.20",
        logger_url: str | None = None,
        log: Callable[[str], None] = lambda _: None,
        scale: Scale | None = None,
    ) -> None:
        # absolute: the processes started here (Prometheus's --config.file, the kubeconfig
        # they are handed) run with other working directories
        self.work_dir = Path(work_dir).resolve()
        self.detach = detach
        # "weighted" simulates KServe after v0.20 (#5912, #5984): Standard-mode canaries that
        # are Ready get their trafficPercent through the HTTPRoute (KSERVE.md §2.4).
        self.standard_routing = standard_routing
        # where the traffic simulator sends the payload-logger events of mirrored requests
        # (a shadow collector's URL); None: it sends none
        self.logger_url = logger_url
        self.crd_dir = crd_dir  # None: fetched from the pinned Go modules when starting
        self.scale = scale or Scale()
        self._log = log
        self.cluster: Cluster | None = None
        self.prometheus: PrometheusServer | None = None
        self._simulators: subprocess.Popen[bytes] | None = None
        self._collector: subprocess.Popen[bytes] | None = None
        self.collector_port: int | None = None
        self._kube: KubeClient | None = None
        self.timings: Timings | None = None

    # --- paths -----------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.json"

    @property
    def behaviour_path(self) -> Path:
        return self.work_dir / "behaviour.yaml"

    @property
    def sd_file(self) -> Path:
        return self.work_dir / "targets.json"

    @property
    def kubeconfig_path(self) -> Path:
        assert self.cluster is not None, "the test bed is not up"
        return self.cluster.kubeconfig_path

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            self._kube = KubeClient.from_kubeconfig(self.kubeconfig_path)
        return self._kube

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None, "the test bed is not up"
        return self.prometheus.url

    # --- lifecycle -------------------------------------------------------------------------

    def up(self) -> Testbed:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.crd_dir is None:
            try:
                self.crd_dir = ensure_crds(log=self._log)
            except BuildError as exc:
                raise TestbedError(f"the CRDs could not be fetched: {exc}") from None
        if not self.crd_dir.is_dir():
            raise TestbedError(
                f"CRD directory {self.crd_dir} not found (KSC_CRD_DIR names it; unset, the "
                "CRDs are fetched from their pinned Go modules)"
            )
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> Testbed:
        t0 = time.monotonic()
        binaries = ensure_built(log=self._log)
        t1 = time.monotonic()
        self._log("starting etcd and kube-apiserver")
        self.cluster = Cluster(
            self.work_dir / "cluster", binaries, detach=self.detach,
            audit_users=self.scale.audit_users,
        )  # fmt: skip
        self.cluster.start()
        t2 = time.monotonic()
        self._log("installing CRDs and namespaces")
        self.install_crds()
        for namespace in NAMESPACES:
            self.kube.ensure_namespace(namespace)
        if not self.behaviour_path.exists():
            BehaviourBook().save(self.behaviour_path)
        t3 = time.monotonic()
        self._log("starting the shadow collector, the KServe and traffic simulators")
        self._start_collector()
        self._start_simulators()
        t4 = time.monotonic()
        self._log("starting Prometheus")
        assert self.collector_port is not None
        self.prometheus = PrometheusServer(
            self.work_dir / "prometheus", self.sd_file, detach=self.detach,
            static_targets={COLLECTOR_JOB: f"127.0.0.1:{self.collector_port}"},
            scrape_interval=self.scale.scrape_interval,
        )  # fmt: skip
        self.prometheus.start()
        t5 = time.monotonic()
        self.timings = Timings(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        self._write_state()
        return self

    def install_crds(self, timeout: float = 60) -> None:
        names = []
        assert self.crd_dir is not None, "the test bed is not up"
        for file_name in CRD_FILES:
            path = self.crd_dir / file_name
            if not path.is_file():
                raise TestbedError(f"CRD file {path} is missing")
            for document in _as_documents(_load_yaml(path)):
                # The full InferenceService CRD is too large for client-side apply's
                # last-applied annotation; server-side apply has no such limit.
                self.kube.apply(CRD, None, document, field_manager=FIELD_MANAGER, force=True)
                names.append(document["metadata"]["name"])
        deadline = time.monotonic() + timeout
        for name in names:
            while not self.kube.crd_established(name):
                if time.monotonic() > deadline:
                    raise TestbedError(f"CRD {name} was not Established within {timeout:.0f} s")
                time.sleep(0.05)

    def _start_collector(self, timeout: float = 30) -> None:
        """The product's shadow collector (``canary shadow-collector``), as a cluster would
        run it: the traffic simulator's payload-logger events go to it, and Prometheus
        scrapes its pairs. Unless a ``logger_url`` was given, it is the logger's URL."""
        port = _free_port()
        log = (self.work_dir / "shadow-collector.log").open("ab")
        self._collector = subprocess.Popen(
            [sys.executable, "-m", "canary.cli", "shadow-collector",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.detach,
            env={**os.environ, "KSC_ENVIRONMENT": "production", "PYTHONPATH": _pythonpath()},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(f"http://127.0.0.1:{port}/healthz"):
            if self._collector.poll() is not None:
                raise TestbedError(
                    "the shadow collector exited during start-up:\n"
                    + tail(self.work_dir / "shadow-collector.log")
                )
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"the shadow collector did not answer within {timeout:.0f} s:\n"
                    + tail(self.work_dir / "shadow-collector.log")
                )
            time.sleep(0.05)
        self.collector_port = port
        if self.logger_url is None:
            self.logger_url = f"http://127.0.0.1:{port}/"

    def _start_simulators(self, timeout: float = 30) -> None:
        ready = self.work_dir / "simulators.ready"
        ready.unlink(missing_ok=True)
        log = (self.work_dir / "simulators.log").open("ab")
        command = [
            sys.executable, "-m", SIMULATORS_MODULE,
            "--kubeconfig", str(self.kubeconfig_path),
            "--behaviour", str(self.behaviour_path),
            "--sd-file", str(self.sd_file),
            "--ready-file", str(ready),
            "--standard-routing", self.standard_routing,
            *(["--logger-url", self.logger_url] if self.logger_url else []),
            "--traffic-mode", self.scale.traffic_mode,
            "--tick-interval", str(self.scale.tick_interval),
            *(["--profiles", ",".join(self.scale.profiles)] if self.scale.profiles else []),
            "--latency-buckets", self.scale.latency_buckets,
        ]  # fmt: skip
        self._simulators = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.detach,
            env={**os.environ, "KSC_ENVIRONMENT": "production", "PYTHONPATH": _pythonpath()},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self._simulators.poll() is not None:
                raise TestbedError(
                    "the simulators exited during start-up:\n"
                    + tail(self.work_dir / "simulators.log")
                )
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"the simulators were not ready within {timeout:.0f} s:\n"
                    + tail(self.work_dir / "simulators.log")
                )
            time.sleep(0.05)

    def _write_state(self) -> None:
        assert self.cluster is not None
        assert self.prometheus is not None
        assert self._simulators is not None
        state = {
            "work_dir": str(self.work_dir),
            "kubeconfig": str(self.cluster.kubeconfig_path),
            "server": self.cluster.server,
            "prometheus_url": self.prometheus.url,
            "behaviour": str(self.behaviour_path),
            "cluster": self.cluster.state(),
            "prometheus": self.prometheus.state(),
            "simulators_pid": self._simulators.pid,
            "simulators_start_time": start_time(self._simulators.pid),
            "collector_pid": self._collector.pid if self._collector else None,
            "collector_start_time": start_time(self._collector.pid) if self._collector else None,
            "collector_port": self.collector_port,
        }
        self.state_path.write_text(json.dumps(state, indent=2))

    @property
    def simulators_pid(self) -> int | None:
        """The simulators' process (KServe, traffic, Gateway, mirrors), while up."""
        return self._simulators.pid if self._simulators is not None else None

    @property
    def collector_pid(self) -> int | None:
        return self._collector.pid if self._collector is not None else None

    def down(self) -> None:
        if self._kube is not None:
            self._kube.close()
            self._kube = None
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        if self._simulators is not None:
            terminate(self._simulators.pid, None, self._simulators, name="simulators")
            self._simulators = None
        if self._collector is not None:
            terminate(self._collector.pid, None, self._collector, name="shadow collector")
            self._collector = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        self.state_path.unlink(missing_ok=True)

    def namespace(self, name: str) -> str:
        """Create a namespace (a valid DNS label derived from ``name``) and return its name."""
        label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-") or "ns"
        self.kube.ensure_namespace(label)
        return label

    # --- behaviour -------------------------------------------------------------------------

    def behaviour(self) -> BehaviourBook:
        return BehaviourBook.load(self.behaviour_path)

    def set_behaviour(self, book: BehaviourBook) -> None:
        book.save(self.behaviour_path)

    # --- another process's sandbox ---------------------------------------------------------

    @staticmethod
    def read_state(work_dir: Path) -> dict[str, Any] | None:
        path = work_dir / "state.json"
        if not path.exists():
            return None
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    @staticmethod
    def status_of(work_dir: Path) -> dict[str, bool] | None:
        state = Testbed.read_state(work_dir)
        if state is None:
            return None
        return {
            "kube-apiserver + etcd": Cluster.is_running(state["cluster"]),
            "simulators": alive(int(state["simulators_pid"]), state["simulators_start_time"]),
            "prometheus": PrometheusServer.is_running(state["prometheus"]),
            "shadow collector": state.get("collector_pid") is not None
            and alive(int(state["collector_pid"]), state.get("collector_start_time")),
        }

    @staticmethod
    def stop_from_state(work_dir: Path) -> bool:
        """Stop a detached sandbox; False if there was none."""
        state = Testbed.read_state(work_dir)
        if state is None:
            return False
        PrometheusServer.stop_from_state(state["prometheus"])
        terminate(int(state["simulators_pid"]), state["simulators_start_time"],
                  name="simulators")  # fmt: skip
        if state.get("collector_pid") is not None:
            terminate(int(state["collector_pid"]), state.get("collector_start_time"),
                      name="shadow collector")  # fmt: skip
        Cluster.stop_from_state(state["cluster"])
        (work_dir / "state.json").unlink(missing_ok=True)
        return True

    def api_ready(self) -> bool:
        try:
            self.kube.list(CRD, None)
        except Unavailable:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


def _as_documents(loaded: Any) -> list[dict[str, Any]]:
    if isinstance(loaded, dict) and loaded.get("kind") == "List":
        return list(loaded.get("items", []))
    if isinstance(loaded, dict):
        return [loaded]
    raise TestbedError("a CRD file must hold a CustomResourceDefinition")
