"""A real Prometheus on a private loopback port, scraping the simulated models.

``PrometheusServer`` runs Debian's ``/usr/bin/prometheus`` (override with
``KSC_PROMETHEUS_BIN``) with a generated configuration: one job, ``simulated-models``, that
discovers its targets from the traffic simulator's ``file_sd`` file, and a 1 s scrape and
evaluation interval, so tests see new data within seconds (``scrape_interval`` sets
another, e.g. for thousands of targets).

    with PrometheusServer(work_dir, sd_file) as prometheus:
        prometheus.query('up')

With ``detach=True`` Prometheus runs in its own session and outlives this process (for
``python -m testbed up``); another process stops it with ``PrometheusServer.stop_from_state``
given the dict ``state()`` returned.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from testbed.processes import alive, free_port, start_time, tail, terminate

__all__ = ["DEFAULT_BIN", "JOB_NAME", "PrometheusServer", "PrometheusUnavailable"]

DEFAULT_BIN = "/usr/bin/prometheus"
JOB_NAME = "simulated-models"
_POLL_SECONDS = 0.05


class PrometheusUnavailable(RuntimeError):
    """The Prometheus binary is missing, or the server could not start."""


def find_prometheus_bin() -> Path:
    """``$KSC_PROMETHEUS_BIN``, else Debian's ``/usr/bin/prometheus``, else one on ``PATH``."""
    override = os.environ.get("KSC_PROMETHEUS_BIN")
    candidates = [override] if override else [DEFAULT_BIN, shutil.which("prometheus")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    where = f"$KSC_PROMETHEUS_BIN={override}" if override else f"{DEFAULT_BIN} or $PATH"
    raise PrometheusUnavailable(
        f"the Prometheus server binary was not found ({where}). Install Debian's prometheus "
        "package (`apt-get install --no-install-recommends prometheus`; make test does this), "
        "or set KSC_PROMETHEUS_BIN to a prometheus binary."
    )


class PrometheusServer:
    """A Prometheus process owned by this object (or, detached, by a state dict)."""

    def __init__(
        self,
        work_dir: Path,
        sd_file: Path,
        port: int = 0,
        *,
        detach: bool = False,
        retention: str = "6h",
        binary: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        static_targets: Mapping[str, str] | None = None,
        scrape_interval: float = 1.0,
    ) -> None:
        if not 0.1 <= scrape_interval <= 300:
            raise ValueError(f"the scrape interval must be 0.1..300 s, got {scrape_interval}")
        self.scrape_interval = scrape_interval
        self.work_dir = Path(work_dir)
        self.sd_file = Path(sd_file)
        # job name -> host:port scraped as is (e.g. the shadow collector)
        self._static_targets = dict(static_targets or {})
        self._fixed_port = port
        self._detach = detach
        self._retention = retention
        self._binary = binary
        self._clock = clock
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Prometheus is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def config_path(self) -> Path:
        return self.work_dir / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": _duration(self.scrape_interval),
                "scrape_timeout": _duration(min(self.scrape_interval * 0.9, 10.0)),
                "evaluation_interval": _duration(self.scrape_interval),
            },
            "scrape_configs": [
                {
                    "job_name": JOB_NAME,
                    "file_sd_configs": [
                        {"files": [str(self.sd_file.resolve())], "refresh_interval": "1s"}
                    ],
                },
                *(
                    {"job_name": job, "static_configs": [{"targets": [target]}]}
                    for job, target in sorted(self._static_targets.items())
                ),
            ],
        }

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> PrometheusServer:
        """Write the configuration, start Prometheus with a fresh database, and wait until
        ``/-/ready`` answers 200. Raises :class:`PrometheusUnavailable` (with the log tail)."""
        if self.running:
            return self
        binary = self._binary or find_prometheus_bin()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        if not self.sd_file.exists():  # Prometheus accepts an empty target list
            self.sd_file.parent.mkdir(parents=True, exist_ok=True)
            self.sd_file.write_text("[]\n")
        if not self._detach:
            atexit.register(self.stop)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._port = self._fixed_port or free_port()
            try:
                self._launch(binary, timeout)
                return self
            except PrometheusUnavailable as exc:
                if attempt + 1 == attempts or "address already in use" not in str(exc):
                    self.stop()
                    raise
        return self  # pragma: no cover - the loop returns or raises

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone
        (and with it the port)."""
        process, self._process = self._process, None
        self._port = None
        atexit.unregister(self.stop)
        if process is not None:
            terminate(process.pid, None, process, signals=_signals(grace), name="prometheus")

    def log_tail(self, lines: int = 25) -> str:
        return tail(self.log_path, lines)

    def _command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self._retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]

    def _launch(self, binary: Path, timeout: float) -> None:
        with self.log_path.open("wb") as log:  # one run per log
            self._process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=self._detach,
            )
        deadline = self._clock() + timeout
        last_error = "no answer yet"
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise PrometheusUnavailable(
                    f"prometheus exited with code {code} during start-up on port {self.port}; "
                    f"log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                status, _ = self._get("/-/ready", timeout=1)
                if status == 200:
                    return
                last_error = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"  # 503 while the TSDB opens
            except OSError as exc:
                last_error = str(exc)
            if self._clock() >= deadline:
                self.stop()
                raise PrometheusUnavailable(
                    f"prometheus was not ready on {self.url} within {timeout:.0f} s "
                    f"(last answer: {last_error}); log ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(_POLL_SECONDS)

    # ------------------------------------------------------------------ queries

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        url = f"{self.url}{path}"  # always http://127.0.0.1:<port>
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status, response.read()

    def query(self, expr: str, at: float | None = None, timeout: float = 10) -> list[Any]:
        """Evaluate an instant query; the ``data.result`` list of Prometheus' answer."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            _, text = self._get(f"/api/v1/query?{urllib.parse.urlencode(params)}", timeout)
            body = json.loads(text)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PrometheusUnavailable(f"query {expr!r} failed: HTTP {exc.code} {detail}") from exc
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"query {expr!r} failed: {body}")
        result: list[Any] = body["data"]["result"]
        return result

    # ------------------------------------------------------------------ detached servers

    def state(self) -> dict[str, Any]:
        """What another process needs to find and stop this server."""
        if self._process is None:
            raise RuntimeError("Prometheus is not running")
        return {
            "pid": self._process.pid,
            "start_time": start_time(self._process.pid),
            "port": self.port,
            "url": self.url,
            "work_dir": str(self.work_dir),
        }

    @staticmethod
    def is_running(state: dict[str, Any]) -> bool:
        """Whether the server described by ``state`` is still alive (not a reused pid)."""
        started = state.get("start_time")
        return started is not None and alive(int(state["pid"]), started)

    @staticmethod
    def stop_from_state(state: dict[str, Any], grace: float = 10) -> bool:
        """Stop a (detached) server from another process: SIGTERM, then SIGKILL after
        ``grace`` seconds. False if it was not running."""
        if not PrometheusServer.is_running(state):
            return False
        terminate(int(state["pid"]), state["start_time"], signals=_signals(grace),
                  name="prometheus")  # fmt: skip
        return True


def _duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``1s``, ``900ms``)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _signals(grace: float) -> tuple[tuple[signal.Signals, float], ...]:
    return ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0))
