"""A private Kubernetes control plane on loopback: etcd plus kube-apiserver, nothing else.

``Cluster`` runs the binaries from :func:`testbed.binaries.ensure_built` on free
loopback ports, with certificates made by the ``openssl`` CLI (a CA, the apiserver's serving
certificate for 127.0.0.1/localhost, a service-account signing key) and one admin user,
``kserve-canary-admin`` in ``system:masters``, who authenticates with a random bearer token.
Anonymous requests are refused (401). There is no controller-manager and no scheduler: the
apiserver stores and serves objects, runs admission (webhooks included) and RBAC.

    with Cluster(work_dir, ensure_built(), detach=False) as cluster:
        cluster.kubeconfig_path  # server, CA and token, for any Kubernetes client

The work directory belongs to the cluster: ``pki/``, ``etcd-data/`` (wiped on every start),
``etcd.log``, ``kube-apiserver.log`` and ``kubeconfig``. With ``detach=True`` the processes
run in their own session and outlive this process; ``state()`` (JSON-serialisable) lets
another process check them (``Cluster.is_running``) and stop them (``Cluster.stop_from_state``).

Health checks use the standard library only; Kubernetes clients belong in ``canary.k8s``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from testbed.binaries import Binaries
from testbed.processes import (
    ProcessStillRunning,
    alive,
    free_ports,
    start_time,
    tail,
    terminate,
)

__all__ = [
    "ADMIN_GROUP",
    "ADMIN_USER",
    "Cluster",
    "ClusterError",
]

ADMIN_USER = "kserve-canary-admin"
ADMIN_GROUP = "system:masters"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTEXT_NAME = "kserve-canary-sandbox"

_LOG_TAIL_LINES = 40
# SIGTERM, then SIGKILL if still running 15 s later
_STOP_SIGNALS = ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0))
_POLL = 0.05
_PORT_ATTEMPTS = 3
_CERT_DAYS = 365
_CERT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_RESERVED_CERT_NAMES = frozenset({"ca", "apiserver", "service-account"})
_ORDER = ("kube-apiserver", "etcd")  # stop order; start is the reverse

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${ENV::KSC_SANS}
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class ClusterError(RuntimeError):
    """The control plane could not be started or stopped; the message says why."""


@dataclass
class _Process:
    name: str
    command: list[str]
    log_path: Path
    pid: int
    start_time: int | None
    popen: subprocess.Popen[bytes] | None = None

    def as_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "command": self.command,
            "log": str(self.log_path),
        }


# ---------------------------------------------------------------------- process helpers


def _terminate(
    name: str, pid: int, started: int | None, popen: subprocess.Popen[bytes] | None
) -> None:
    try:
        terminate(pid, started, popen, signals=_STOP_SIGNALS, name=name)
    except ProcessStillRunning as exc:
        raise ClusterError(str(exc)) from None


def _http_get(
    url: str, *, context: ssl.SSLContext | None, token: str | None, timeout: float
) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b"") if nothing answers. Proxies are never used."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url)  # noqa: S310 - loopback http(s) URLs built here
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# ---------------------------------------------------------------------- the cluster


class Cluster:
    """etcd + kube-apiserver on loopback, owned by this object (see the module docstring)."""

    def __init__(
        self,
        work_dir: Path | str,
        binaries: Binaries,
        *,
        detach: bool = False,
        audit_users: Sequence[str] = (),
    ) -> None:
        # the users whose requests the apiserver writes to its audit log (``audit_log_path``,
        # JSON lines, one per request at the Metadata level); none: no audit log
        self._audit_users = tuple(audit_users)
        self._dir = Path(work_dir).resolve()
        self._binaries = binaries
        self._detach = detach
        self._processes: dict[str, _Process] = {}
        self._ports: dict[str, int] = {}
        self._token: str | None = None
        self._atexit = False

    # ------------------------------------------------------------------ paths and properties

    @property
    def work_dir(self) -> Path:
        return self._dir

    @property
    def pki_dir(self) -> Path:
        return self._dir / "pki"

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the apiserver's serving certificate."""
        return self.pki_dir / "ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        return self._dir / "kubeconfig"

    @property
    def audit_log_path(self) -> Path:
        """The apiserver's audit log (only with ``audit_users``): one JSON event per
        request of those users, written when the request completes."""
        return self._dir / "audit.log"

    @property
    def server(self) -> str:
        """``https://127.0.0.1:PORT`` of the apiserver."""
        return f"https://127.0.0.1:{self._port('apiserver')}"

    @property
    def token(self) -> str:
        """The admin's bearer token (user ``kserve-canary-admin``, group ``system:masters``)."""
        if self._token is None:
            raise ClusterError("the cluster has not been started")
        return self._token

    @property
    def ports(self) -> dict[str, int]:
        """``etcd_client``, ``etcd_peer`` and ``apiserver`` ports of the last start."""
        return dict(self._ports)

    @property
    def running(self) -> bool:
        return bool(self._processes) and all(
            alive(proc.pid, proc.start_time) for proc in self._processes.values()
        )

    def _port(self, name: str) -> int:
        if name not in self._ports:
            raise ClusterError("the cluster has not been started")
        return self._ports[name]

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the cluster's CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def get(
        self, path: str, *, authenticated: bool = True, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """``GET path`` on the apiserver, as the admin or anonymously: (status, body).
        Status 0 means nothing answered."""
        return _http_get(
            self.server + path,
            context=self.ssl_context(),
            token=self.token if authenticated else None,
            timeout=timeout,
        )

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> Cluster:
        """Start etcd, then kube-apiserver; return once ``/readyz`` answers 200 to the admin.

        Raises :class:`ClusterError` (with the command line and the last lines of the log)
        if a process exits or the deadline passes; nothing is left running then.
        """
        if self._processes:
            raise ClusterError(f"the cluster in {self._dir} is already started")
        for binary in (self._binaries.etcd, self._binaries.kube_apiserver):
            if not os.access(binary, os.X_OK):
                raise ClusterError(f"{binary} is missing or not executable; run ensure_built()")
        deadline = time.monotonic() + timeout
        self._dir.mkdir(parents=True, exist_ok=True)
        self._token = secrets.token_urlsafe(32)
        self._make_pki()
        if not self._detach:
            atexit.register(self.stop)
            self._atexit = True
        try:
            for attempt in range(_PORT_ATTEMPTS):
                etcd_client, etcd_peer, apiserver = free_ports(3)
                self._ports = {
                    "etcd_client": etcd_client,
                    "etcd_peer": etcd_peer,
                    "apiserver": apiserver,
                }
                try:
                    self._launch(deadline, timeout)
                    break
                except ClusterError as exc:
                    self._stop_processes()
                    if attempt + 1 == _PORT_ATTEMPTS or "address already in use" not in str(exc):
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd (SIGTERM, SIGKILL after a bounded wait) and wait
        until both are gone. Safe to call more than once."""
        try:
            self._stop_processes()
        finally:
            if self._atexit:
                atexit.unregister(self.stop)
                self._atexit = False

    def stop_apiserver(self) -> None:
        """Stop the kube-apiserver process alone (etcd, and so every object, stays): clients
        see connections refused until :meth:`start_apiserver`."""
        proc = self._processes.pop("kube-apiserver", None)
        if proc is None:
            raise ClusterError("kube-apiserver is not running")
        _terminate(proc.name, proc.pid, proc.start_time, proc.popen)

    def pause_apiserver(self, paused: bool = True) -> None:
        """Freeze the kube-apiserver process (SIGSTOP) or let it go on (SIGCONT): while it
        is frozen, connections are accepted by the kernel and never answered."""
        proc = self._processes.get("kube-apiserver")
        if proc is None:
            raise ClusterError("kube-apiserver is not running")
        os.kill(proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port, with the same etcd and certificates;
        return once ``/readyz`` answers 200."""
        if "kube-apiserver" in self._processes:
            raise ClusterError("kube-apiserver is already running")
        if "etcd" not in self._processes:
            raise ClusterError("etcd is not running; start the cluster first")
        etcd_client = f"http://127.0.0.1:{self._ports['etcd_client']}"
        apiserver = self._spawn("kube-apiserver", self._apiserver_command(etcd_client))
        self._wait_for(
            apiserver,
            lambda: self.get("/readyz", timeout=2)[0] == 200,
            "kube-apiserver /readyz to answer 200 after a restart",
            time.monotonic() + timeout,
            timeout,
        )

    def _stop_processes(self) -> None:
        for name in _ORDER:
            proc = self._processes.get(name)
            if proc is not None:
                _terminate(name, proc.pid, proc.start_time, proc.popen)
                del self._processes[name]

    # ------------------------------------------------------------------ state for other processes

    def state(self) -> dict[str, Any]:
        """What another process needs to check or stop this cluster (JSON-serialisable)."""
        return {
            "work_dir": str(self._dir),
            "detached": self._detach,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig_path),
            "ca": str(self.ca_path),
            "ports": dict(self._ports),
            "pids": {name: proc.pid for name, proc in self._processes.items()},
            "processes": {name: proc.as_state() for name, proc in self._processes.items()},
            "logs": {name: str(proc.log_path) for name, proc in self._processes.items()},
            "versions": dict(self._binaries.versions),
        }

    @staticmethod
    def is_running(state: dict[str, Any]) -> bool:
        """Whether every process recorded in ``state`` is still alive."""
        processes: dict[str, Any] = state.get("processes", {})
        return bool(processes) and all(
            alive(int(entry["pid"]), entry.get("start_time")) for entry in processes.values()
        )

    @staticmethod
    def stop_from_state(state: dict[str, Any]) -> None:
        """Stop the processes recorded by ``state()``, from any process. Idempotent; a pid
        that now belongs to another program (start time differs) is left alone."""
        processes: dict[str, Any] = state.get("processes", {})
        for name in _ORDER:
            entry = processes.get(name)
            if entry is not None:
                _terminate(name, int(entry["pid"]), entry.get("start_time"), None)

    # ------------------------------------------------------------------ internals

    def _launch(self, deadline: float, timeout: float) -> None:
        etcd_client = f"http://127.0.0.1:{self._ports['etcd_client']}"
        data_dir = self._dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        etcd = self._spawn(
            "etcd",
            [
                str(self._binaries.etcd),
                f"--data-dir={data_dir}",
                "--name=kserve-canary",
                f"--listen-client-url={etcd_client}",
                f"--listen-peer-url=http://127.0.0.1:{self._ports['etcd_peer']}",
                "--unsafe-no-fsync",  # throwaway data: durability buys nothing here
                "--log-level=info",
            ],
        )
        self._wait_for(
            etcd,
            lambda: (
                _http_get(f"{etcd_client}/health", context=None, token=None, timeout=2)[0] == 200
            ),
            "etcd to report healthy",
            deadline,
            timeout,
        )
        self._write_kubeconfig()
        apiserver = self._spawn("kube-apiserver", self._apiserver_command(etcd_client))
        self._wait_for(
            apiserver,
            lambda: self.get("/readyz", timeout=2)[0] == 200,
            "kube-apiserver /readyz to answer 200",
            deadline,
            timeout,
        )

    def _apiserver_command(self, etcd_servers: str) -> list[str]:
        pki = self.pki_dir
        port = self._ports["apiserver"]
        return [
            str(self._binaries.kube_apiserver),
            f"--etcd-servers={etcd_servers}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The "kubernetes" Service's endpoints may not point at loopback (refused since
            # 1.37), and nothing here needs them.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_path}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--anonymous-auth=false",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{port}",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # No controller-manager mints service-account tokens here; without this plugin
            # pods need not wait for them. Every other default plugin (webhooks included) stays.
            "--disable-admission-plugins=ServiceAccount",
            *self._audit_flags(),
        ]

    def _audit_flags(self) -> list[str]:
        if not self._audit_users:
            return []
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            # one event per request, when it completes (a watch's too)
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "Metadata", "users": list(self._audit_users)},
                {"level": "None"},
            ],
        }
        path = self._dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
        return [
            f"--audit-policy-file={path}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-format=json",
            "--audit-log-maxsize=4096",  # MB: no rotation during a benchmark
        ]

    def _spawn(self, name: str, command: list[str]) -> _Process:
        log_path = self._dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=self._detach,
                close_fds=True,
            )
        proc = _Process(name, command, log_path, popen.pid, start_time(popen.pid), popen)
        self._processes[name] = proc
        return proc

    def _wait_for(
        self,
        proc: _Process,
        ready: Callable[[], bool],
        what: str,
        deadline: float,
        timeout: float,
    ) -> None:
        assert proc.popen is not None
        while True:
            for other in self._processes.values():
                assert other.popen is not None
                status = other.popen.poll()
                if status is not None:
                    raise self._failure(other, f"{other.name} exited with status {status}")
            if ready():
                return
            if time.monotonic() >= deadline:
                raise self._failure(proc, f"timed out after {timeout:g} s waiting for {what}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=_POLL)

    @staticmethod
    def _failure(proc: _Process, summary: str) -> ClusterError:
        return ClusterError(
            f"{summary}\ncommand: {shlex.join(proc.command)}\n"
            f"last {_LOG_TAIL_LINES} lines of {proc.log_path}:\n"
            f"{tail(proc.log_path, _LOG_TAIL_LINES)}"
        )

    # ------------------------------------------------------------------ certificates and config

    def _openssl(self, *args: str, sans: str = "") -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError(
                "the openssl command is needed to make the test bed's certificates and was not "
                "found on PATH (Debian: apt-get install openssl)"
            )
        env = dict(os.environ, KSC_SANS=sans or "DNS:localhost")
        result = subprocess.run(
            [openssl, *args],
            cwd=self.pki_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"openssl failed (exit status {result.returncode}): "
                f"{shlex.join(['openssl', *args])}\n{result.stderr.strip()}"
            )

    def _new_key(self, name: str) -> None:
        self._openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name
        )
        (self.pki_dir / name).chmod(0o600)

    def _make_pki(self) -> None:
        """A fresh CA, serving certificate, service-account key pair and token file."""
        shutil.rmtree(self.pki_dir, ignore_errors=True)
        self.pki_dir.mkdir(parents=True)
        self.pki_dir.chmod(0o700)
        (self.pki_dir / "openssl.cnf").write_text(_OPENSSL_CONFIG, encoding="utf-8")
        self._new_key("ca.key")
        self._openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kserve-canary test bed CA",
            "-days", str(_CERT_DAYS * 10), "-config", "openssl.cnf", "-extensions", "ca",
            "-out", "ca.crt",
        )  # fmt: skip
        self._issue("apiserver", ["127.0.0.1", "localhost"])
        self._new_key("service-account.key")
        self._openssl(
            "pkey", "-in", "service-account.key", "-pubout", "-out", "service-account.pub"
        )
        tokens = self.pki_dir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"{ADMIN_GROUP}"\n')
        tokens.chmod(0o600)

    def issue_certificate(self, name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
        """A serving certificate for ``hosts`` (IP addresses or DNS names) signed by the
        cluster's CA, e.g. for an admission webhook on 127.0.0.1: (cert path, key path).
        The apiserver trusts it when the webhook's ``caBundle`` is the CA at ``ca_path``."""
        if not _CERT_NAME.fullmatch(name) or name in _RESERVED_CERT_NAMES:
            raise ValueError(f"certificate name {name!r}: use [a-z0-9-], not one of the cluster's")
        if not (self.pki_dir / "ca.key").is_file():
            raise ClusterError("the cluster's CA does not exist yet: start the cluster first")
        return self._issue(name, hosts)

    def issue_client_certificate(
        self, name: str, user: str, groups: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A client certificate signed by the cluster's CA (the apiserver's client CA): the
        apiserver, and anything that trusts the CA it publishes, reads ``user`` from the
        subject's CN and a group from each O. (cert path, key path)."""
        if not _CERT_NAME.fullmatch(name) or name in _RESERVED_CERT_NAMES:
            raise ValueError(f"certificate name {name!r}: use [a-z0-9-], not one of the cluster's")
        if not (self.pki_dir / "ca.key").is_file():
            raise ClusterError("the cluster's CA does not exist yet: start the cluster first")
        for part in (user, *groups):
            if not part or any(c in part for c in "/=\\\n+,"):
                raise ValueError(f"{part!r} cannot be put in a certificate subject here")
        subject = "".join(f"/O={group}" for group in groups) + f"/CN={user}"
        key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.crt"
        self._new_key(key)
        self._openssl("req", "-new", "-key", key, "-subj", subject, "-config", "openssl.cnf",
                      "-out", csr)  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(_CERT_DAYS),
            "-extfile", "openssl.cnf", "-extensions", "client", "-out", cert,
        )  # fmt: skip
        (self.pki_dir / csr).unlink()
        return self.pki_dir / cert, self.pki_dir / key

    def _issue(self, name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
        sans = []
        for host in hosts:
            try:
                sans.append(f"IP:{ipaddress.ip_address(host)}")
            except ValueError:
                sans.append(f"DNS:{host}")
        key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.crt"
        self._new_key(key)
        self._openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-config",
                      "openssl.cnf", "-out", csr)  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(_CERT_DAYS),
            "-extfile", "openssl.cnf", "-extensions", "leaf", "-out", cert,
            sans=",".join(sans),
        )  # fmt: skip
        (self.pki_dir / csr).unlink()
        return self.pki_dir / cert, self.pki_dir / key

    def _write_kubeconfig(self) -> None:
        ca_data = base64.b64encode(self.ca_path.read_bytes()).decode("ascii")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT_NAME,
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": CONTEXT_NAME,
                    "context": {"cluster": CONTEXT_NAME, "user": ADMIN_USER},
                }
            ],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }
        temp = self.kubeconfig_path.with_name(".kubeconfig.tmp")
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            yaml.safe_dump(config, out, sort_keys=False)
        os.replace(temp, self.kubeconfig_path)
