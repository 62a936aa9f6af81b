"""A private, throwaway PostgreSQL cluster for tests and demos.

``PostgresServer`` runs Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, the
highest version; override with ``KSC_PG_BIN``) on a free loopback port, with its own data
directory and unix socket, trust authentication for loopback only, and durability switched
off for speed. When run as root it runs the server as the ``postgres`` OS user (override with
``KSC_PG_USER``), because PostgreSQL refuses to run as root.

    with PostgresServer() as server:
        url = server.create_database("audit_test")

A database as production runs it, with an owner role that migrates it and an application
role the controller connects as (:func:`provision_audit_database`):

    database = provision_audit_database(server, "audit_test")
    database.app_url  # for the controller; database.admin_url to inspect or tamper
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from canary.audit import AuditStore, upgrade_to_head
from testbed.processes import free_port, tail, terminate

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "RoleDatabase",
    "find_postgres_bin",
    "provision_audit_database",
]

DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
REQUIRED_BINARIES = (
    "initdb", "postgres", "pg_isready", "createdb", "dropdb", "createuser", "dropuser",
)  # fmt: skip
SUPERUSER = "postgres"
# PostgreSQL's own shutdown modes: fast (SIGINT), then immediate (SIGQUIT), then kill.
_STOP_SIGNALS = ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing, or the server could not start."""


@dataclass(frozen=True)
class RoleDatabase:
    """A database with production's roles: ``owner`` owns the database (and, once migrated,
    its tables) and runs the migrations and the grants; ``app`` is the role the controller
    connects as; the cluster's superuser (``admin_url``) is for tests that inspect or
    tamper. Trust authentication on loopback: no passwords."""

    name: str
    owner: str
    app: str
    owner_url: str
    app_url: str
    admin_url: str
    admin_conninfo: str  # libpq, for psycopg or psql as the superuser


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", path.parent.name)
    return tuple(int(d) for d in digits)


def find_postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    ``KSC_PG_BIN`` (a bin directory) wins; else the highest ``/usr/lib/postgresql/*/bin``;
    else a directory on ``PATH`` that has both binaries.
    """
    looked: list[str] = []
    override = os.environ.get("KSC_PG_BIN")
    if override:
        candidates = [Path(override)]
        looked.append(f"$KSC_PG_BIN={override}")
    else:
        candidates = sorted(Path("/").glob(DEBIAN_GLOB.lstrip("/")), key=_version_key)[::-1]
        looked.append(DEBIAN_GLOB)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
        looked.append("initdb on $PATH")
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in REQUIRED_BINARIES):
            return directory
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(REQUIRED_BINARIES)}) not found; looked in "
        f"{', '.join(looked)}. Install the Debian package postgresql (make test does this), "
        "or set KSC_PG_BIN to a directory that contains them."
    )


class PostgresServer:
    """A PostgreSQL cluster owned by this process. ``stop()`` leaves nothing behind (a
    ``data_dir`` given is kept, so a later server can start on it again).

    ``settings`` are server parameters that replace or extend the defaults (which switch
    durability off for speed): ``{"fsync": "on"}`` for a benchmark of commits, say.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        bin_dir: Path | str | None = None,
        start_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self._settings = dict(settings or {})
        self._fixed_port = port
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._start_timeout = start_timeout
        self._clock = clock
        self._base: Path | None = None
        self._temp = False
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._user: pwd.struct_passwd | None = None
        self._bin: Path | None = None

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("PostgresServer is not running")
        return self._port

    @property
    def data_dir(self) -> Path:
        if self._base is None:
            raise RuntimeError("PostgresServer is not running")
        return self._base / "data" if self._temp else self._base

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string of ``database`` (for psycopg or psql)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        """Initialise the cluster if needed and start the server; wait until it accepts
        connections. Raises :class:`PostgresUnavailable` with the server log on failure."""
        if self.running:
            return self
        bin_dir = self._bin_dir or find_postgres_bin()
        self._bin = bin_dir
        self._user = self._os_user()
        if self._given_dir is None:
            self._base = Path(tempfile.mkdtemp(prefix="ksc-pg-"))
            self._temp = True
        else:
            self._base = self._given_dir
            self._base.parent.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._chown(self._base)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir)
            attempts = 1 if self._fixed_port is not None else 3
            for attempt in range(attempts):
                self._port = self._fixed_port or free_port()
                try:
                    self._launch(bin_dir)
                    return self
                except PostgresUnavailable as exc:
                    port_taken = "could not bind" in str(exc) or "in use" in str(exc)
                    if attempt + 1 == attempts or not port_taken:
                        raise
        except BaseException:
            self.stop()
            raise
        return self  # pragma: no cover - the loop returns or raises

    def stop(self) -> None:
        """Fast shutdown, then remove the data directory if it is a temporary one."""
        self._terminate()
        if self._temp and self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        self._port = None
        atexit.unregister(self.stop)

    def _terminate(self) -> None:
        """Stop the server process: fast shutdown (SIGINT), then immediate, then kill."""
        process, self._process = self._process, None
        if process is not None:
            terminate(process.pid, None, process, signals=_STOP_SIGNALS, name="postgres")

    # ------------------------------------------------------------------ databases

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        self._check_name(name)
        self._client("createdb", "--template=template0", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting any sessions still using it."""
        self._check_name(name)
        self._client("dropdb", "--if-exists", "--force", name)

    def url_as(self, role: str, database: str) -> str:
        """SQLAlchemy URL of ``database`` for ``role`` (trusted on loopback: no password)."""
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"

    def create_role(self, name: str) -> None:
        """A role that can log in and nothing more (no superuser, no CREATEDB, CREATEROLE)."""
        self._check_name(name)
        self._client(
            "createuser", "--login", "--no-superuser", "--no-createdb", "--no-createrole", name
        )

    def drop_role(self, name: str) -> None:
        self._check_name(name)
        self._client("dropuser", "--if-exists", name)

    def create_role_database(self, name: str) -> RoleDatabase:
        """An empty database ``name`` owned by a new role ``<name>_owner``, and a new role
        ``<name>_app`` with no privileges yet (roles are cluster-wide: the names are the
        database's). :func:`provision_audit_database` migrates it and grants the app role."""
        owner, app = f"{name}_owner", f"{name}_app"
        for role in (owner, app):
            self._check_name(role)
        self.create_role(owner)
        try:
            self.create_role(app)
            self._check_name(name)
            self._client("createdb", "--template=template0", f"--owner={owner}", name)
        except BaseException:
            self.drop_role(app)
            self.drop_role(owner)
            raise
        return RoleDatabase(
            name=name,
            owner=owner,
            app=app,
            owner_url=self.url_as(owner, name),
            app_url=self.url_as(app, name),
            admin_url=self.url_for(name),
            admin_conninfo=self.conninfo(name),
        )

    def drop_role_database(self, database: RoleDatabase) -> None:
        """Drop the database, then its two roles."""
        self.drop_database(database.name)
        self.drop_role(database.app)
        self.drop_role(database.owner)

    def _client(self, program: str, *args: str) -> None:
        if self._bin is None or not self.running:
            raise RuntimeError("PostgresServer is not running")
        command = [
            str(self._bin / program),
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--username={SUPERUSER}",
            "--no-password",
            *args,
        ]
        result = subprocess.run(command, capture_output=True, check=False, env=self._client_env())
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise PostgresUnavailable(f"{' '.join(command)} failed: {output}")

    @staticmethod
    def _client_env() -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "PGCONNECT_TIMEOUT": "5",
        }

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")

    # ------------------------------------------------------------------ internals

    def _os_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        name = os.environ.get("KSC_PG_USER", "postgres")
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, but the OS user {name!r} to run PostgreSQL as does not "
                "exist; install the Debian package postgresql (make test does this) or set "
                "KSC_PG_USER"
            ) from None

    def _chown(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)
        path.chmod(0o700)

    def _run_kwargs(self) -> dict[str, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        kwargs: dict[str, Any] = {"env": env, "cwd": str(self._base)}
        if self._user is not None:
            env["HOME"] = self._user.pw_dir
            env["USER"] = self._user.pw_name
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return kwargs

    def _initdb(self, bin_dir: Path) -> None:
        command = [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        result = subprocess.run(command, capture_output=True, check=False, **self._run_kwargs())
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresUnavailable(
                f"initdb failed (exit {result.returncode}): {' '.join(command)}\n{output[-2000:]}"
            )
        # Trust only the unix socket (inside the data dir) and IPv4 loopback.
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )

    def _server_args(self, bin_dir: Path) -> Sequence[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "logging_collector": "off",
            **self._settings,
        }
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    @property
    def _log_path(self) -> Path:
        assert self._base is not None
        return self._base / "server.log" if self._temp else self._base / "ksc-server.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        return tail(self._log_path, lines)

    def _launch(self, bin_dir: Path) -> None:
        log = self._log_path
        with log.open("ab") as log_file:
            if self._user is not None:
                os.chown(log, self._user.pw_uid, self._user.pw_gid)
            self._process = subprocess.Popen(
                self._server_args(bin_dir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_kwargs(),
            )
        deadline = self._clock() + self._start_timeout
        last_error = "no attempt made"
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise PostgresUnavailable(
                    f"postgres exited with code {code} during start-up on port {self.port}; "
                    f"server log ({log}):\n{self.log_tail()}"
                )
            probe = subprocess.run(
                [
                    str(bin_dir / "pg_isready"),
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    f"--username={SUPERUSER}",
                    "--dbname=postgres",
                    "--timeout=2",
                ],
                capture_output=True,
                check=False,
                env=self._client_env(),
            )
            if probe.returncode == 0:
                return
            last_error = probe.stdout.decode(errors="replace").strip() or f"exit {probe.returncode}"
            if self._clock() >= deadline:
                self._terminate()
                raise PostgresUnavailable(
                    f"postgres did not accept connections on 127.0.0.1:{self.port} within "
                    f"{self._start_timeout:.0f}s (last error: {last_error}); "
                    f"server log ({log}):\n{self.log_tail()}"
                )
            time.sleep(0.05)  # poll interval while the server starts


def provision_audit_database(server: PostgresServer, name: str) -> RoleDatabase:
    """An audit database as production runs it: created with its owner and application roles
    (:meth:`PostgresServer.create_role_database`), migrated by the owner (what `canary db
    upgrade` does), and the application role granted what the controller uses (what `canary
    db grant --app-role` does). Give the controller ``app_url``."""
    database = server.create_role_database(name)
    try:
        upgrade_to_head(database.owner_url)
        with AuditStore.from_url(database.owner_url) as store:
            store.grant_application_role(database.app)
    except BaseException:
        server.drop_role_database(database)
        raise
    return database
