"""``ServiceNowSim``: the simulator as a process of its own, for tests and the demo.

Started on a free loopback port (or a given one), ready once ``/__sim/health`` answers,
stopped with SIGTERM (then SIGKILL). ``restart()`` stops it and starts it again on the same
port with the same state file, so a client configured with its URL carries on and finds
its changes again. Not part of ``testbed up``: tests that need it start it themselves (the
``servicenow`` fixture in tests/conftest.py), so the test bed's start time does not grow.

    with ServiceNowSim(work_dir) as sim:
        sim.url, sim.admin.approve("CHG0000001", "alice")
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from testbed.processes import free_port, tail, terminate
from testbed.servicenow.admin import AdminError, SimAdmin

__all__ = ["DEFAULT_SEED", "ServiceNowSim", "ServiceNowSimError"]

DEFAULT_SEED = Path(__file__).with_name("seed.yaml")
# The checkout this package lives in (the test bed is not installed with the product).
_REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceNowSimError(RuntimeError):
    """The simulator could not start; the message carries its log's tail."""


class ServiceNowSim:
    def __init__(
        self,
        work_dir: Path,
        *,
        seed: Path = DEFAULT_SEED,
        port: int = 0,
        callback_url: str | None = None,
        callback_secrets: list[str] | None = None,
        callback_ca_file: Path | None = None,
        token_lifetime: int | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.seed = seed
        self._port = port
        self.callback_url = callback_url
        self.callback_secrets = list(callback_secrets or [])
        self.callback_ca_file = callback_ca_file
        self.token_lifetime = token_lifetime
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        return self.work_dir / "servicenow-state.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "servicenow.log"

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the ServiceNow simulator is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> SimAdmin:
        return SimAdmin(self.url)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> ServiceNowSim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        command = [
            sys.executable, "-m", "testbed", "servicenow", "serve",
            "--port", str(self._port), "--seed", str(self.seed),
            "--state", str(self.state_file),
        ]  # fmt: skip
        if self.callback_url:
            command += ["--callback-url", self.callback_url]
        for secret in self.callback_secrets:
            command += ["--callback-secret", secret]
        if self.callback_ca_file is not None:
            command += ["--callback-ca-file", str(self.callback_ca_file)]
        if self.token_lifetime is not None:
            command += ["--token-lifetime", str(self.token_lifetime)]
        return command

    def start(self, timeout: float = 20) -> ServiceNowSim:
        if self.running:
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self._port:
            self._port = free_port()
        inherited = os.environ.get("PYTHONPATH")
        python_path = os.pathsep.join([str(_REPO_ROOT), *([inherited] if inherited else [])])
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": python_path},
            )
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                raise ServiceNowSimError(
                    f"the ServiceNow simulator exited with code {code} during start-up on port "
                    f"{self._port}; log ({self.log_path}):\n{tail(self.log_path)}"
                )
            try:
                SimAdmin(self.url, timeout=1).call("GET", "/__sim/health")
                return self
            except AdminError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceNowSimError(
                    f"the ServiceNow simulator did not answer within {timeout:.0f} s ({last}); "
                    f"log ({self.log_path}):\n{tail(self.log_path)}"
                )
            time.sleep(0.05)

    def set_callback(self, url: str, secrets: list[str]) -> None:
        """Where decisions are POSTed, signed with ``secrets``; kept across ``restart()``."""
        self.callback_url, self.callback_secrets = url, list(secrets)
        self.admin.set_callback(url, secrets)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; returns once the process (and its port) is gone. The state
        file stays."""
        process, self._process = self._process, None
        if process is not None:
            terminate(process.pid, None, process, name="servicenow simulator")

    def restart(self, timeout: float = 20) -> ServiceNowSim:
        """Stop and start again on the same port, with the same state file."""
        self.stop()
        return self.start(timeout)
