"""The database commands' failures as a user meets them (``canary audit verify``, ``canary db
upgrade``, ``canary db grant``, and ``canary run`` at start): bounded, one line, no traceback,
nothing created, and an exit code that says which kind of failure it is."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from canary.audit import Actor, AuditEntry, AuditStore, upgrade_to_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY = Path(sys.executable).with_name("canary")
COMMANDS = [
    pytest.param(("audit", "verify"), id="audit-verify"),
    pytest.param(("db", "upgrade"), id="db-upgrade"),
    pytest.param(("db", "grant", "--app-role", "ksc_app"), id="db-grant"),
]
NEWER = "the database schema is at revision 0099, newer than this kserve-canary knows (head 0009)"


def run(
    *args: str, env: dict[str, str] | None = None, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``canary ARGS``; with ``python``, that code runs first in the same interpreter."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KSC_")}
    command = [str(CANARY)]
    if python is not None:
        command = [sys.executable, "-c", f"{python}\nfrom canary.cli import main\nmain()"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**environment, **(env or {})},
        cwd=REPO,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --------------------------------------------------------------------------------------------
# a PostgreSQL server that never answers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port whose listener takes connections (the kernel completes the handshake) and
    never says a word: a frozen database host."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("args", COMMANDS)
def test_a_server_that_never_answers_fails_within_the_connect_timeout(
    silent_server: int, args: tuple[str, ...]
) -> None:
    url = f"postgresql+psycopg://auditor:s3cret@127.0.0.1:{silent_server}/audit"
    began = time.monotonic()
    result = run(*args, "--database-url", url, "--connect-timeout", "3")
    took = time.monotonic() - began
    assert result.returncode == 3, result.stderr
    line = one_line_error(result)
    assert f"auditor:***@127.0.0.1:{silent_server}/audit" in line
    assert "timeout expired" in line
    assert "s3cret" not in line
    assert 3 <= took < 3 + 8  # waited for the timeout, and no longer (the margin: start-up)


def test_the_connect_timeout_comes_from_the_environment(silent_server: int) -> None:
    url = f"postgresql+psycopg://auditor@127.0.0.1:{silent_server}/audit"
    began = time.monotonic()
    result = run("audit", "verify", env={"KSC_DATABASE_URL": url,
                                         "KSC_DATABASE_CONNECT_TIMEOUT": "2"})  # fmt: skip
    took = time.monotonic() - began
    assert result.returncode == 3, result.stderr
    assert "timeout expired" in one_line_error(result)
    assert 2 <= took < 2 + 8


def test_a_connect_timeout_that_is_not_a_positive_number_is_invalid_input() -> None:
    result = run("audit", "verify", "--database-url", "sqlite:///x.db", "--connect-timeout", "0")
    assert result.returncode == 2
    assert "Invalid value for '--connect-timeout'" in result.stderr


# --------------------------------------------------------------------------------------------
# URLs of other databases and drivers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", COMMANDS)
@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            "mysql://x/y",
            "error: database URL mysql://x/y: kserve-canary keeps its audit trail in PostgreSQL "
            "or SQLite, not 'mysql'; give postgresql+psycopg://user@host/database or "
            "sqlite:///path/file.db",
            id="mysql",
        ),
        pytest.param(
            "postgresql+asyncpg://u:pw@db/audit",
            "error: database URL postgresql+asyncpg://u:***@db/audit: the driver 'asyncpg' is "
            "not supported for postgresql",
            id="asyncpg",
        ),
        pytest.param(
            "nosuchdb://x/y", "not 'nosuchdb'; give postgresql+psycopg://", id="unknown-scheme"
        ),
        pytest.param("not a url", "error: invalid database URL: ", id="not-a-url"),
    ],
)
def test_an_unsupported_database_url_is_invalid_input(
    args: tuple[str, ...], url: str, message: str
) -> None:
    result = run(*args, "--database-url", url)
    assert result.returncode == 2, result.stderr
    assert message in one_line_error(result)


@pytest.mark.parametrize("args", COMMANDS)
def test_a_missing_driver_is_invalid_input(args: tuple[str, ...]) -> None:
    # psycopg made unimportable, as in an installation without it
    result = run(
        *args,
        "--database-url",
        "postgresql://auditor@127.0.0.1:1/audit",
        python="import sys; sys.modules['psycopg'] = None",
    )
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert "error: " in line
    assert "driver is not installed" in line
    assert "psycopg" in line


# --------------------------------------------------------------------------------------------
# a database migrated by a newer kserve-canary
# --------------------------------------------------------------------------------------------


def _audited(path: Path) -> str:
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    with AuditStore.from_url(url) as store:
        store.append(
            [
                AuditEntry(
                    at=datetime(2026, 12, 6, 2, 14, tzinfo=UTC),
                    actor=Actor("controller", "kserve-canary-0"),
                    action="rollout.started",
                    reason=f"record {i}",
                )
                for i in range(3)
            ]
        )
    return url


def _dump(path: Path) -> list[str]:
    """The schema and every row, as SQL."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def _from_the_future(path: Path) -> str:
    url = _audited(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    return url


@pytest.mark.parametrize(
    "args", [pytest.param(("audit", "verify"), id="audit-verify"), COMMANDS[1]]
)
def test_a_schema_from_a_newer_kserve_canary_is_refused_without_a_change(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    url = _from_the_future(tmp_path / "audit.db")
    before = _dump(tmp_path / "audit.db")
    result = run(*args, "--database-url", url)
    assert result.returncode == 3, result.stderr
    assert one_line_error(result) == f"error: {NEWER}: upgrade kserve-canary"
    assert _dump(tmp_path / "audit.db") == before


def test_the_controller_refuses_to_start_on_a_schema_from_a_newer_kserve_canary(
    tmp_path: Path,
) -> None:
    url = _from_the_future(tmp_path / "audit.db")
    kubeconfig = tmp_path / "kubeconfig"  # an apiserver that is never reached: the database
    kubeconfig.write_text(  # is checked before the controller talks to it
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    result = run(
        "run",
        env={
            "KSC_DATABASE_URL": url,
            "KSC_KUBECONFIG": str(kubeconfig),
            "KSC_POLICY_PATH": str(REPO / "deploy" / "policies"),
            "KSC_PROMETHEUS_URL": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {NEWER}: upgrade kserve-canary" in result.stderr.splitlines()


# --------------------------------------------------------------------------------------------
# SQLite paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [COMMANDS[0], COMMANDS[1]])
def test_a_sqlite_path_in_a_missing_directory_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "nowhere" / "audit.db"
    result = run(*args, "--database-url", f"sqlite:///{path}")
    assert result.returncode == 3, result.stderr
    assert one_line_error(result) == (
        f"error: no such database file: {path} (the directory {path.parent} does not exist; "
        "nothing was created)"
    )
    assert list(tmp_path.iterdir()) == []


def test_verify_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    result = run("audit", "verify", "--database-url", f"sqlite:///{path}")
    assert result.returncode == 3, result.stderr
    assert one_line_error(result) == (
        f"error: no such database file: {path} (nothing was created; `canary db upgrade` "
        "creates a new database)"
    )
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    result = run("db", "upgrade", "--database-url", f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    assert path.is_file()


def test_verify_reads_a_sqlite_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    url = _audited(path)
    path.chmod(0o444)  # an auditor's copy they may not write
    try:
        result = run("audit", "verify", "--database-url", url)
    finally:
        path.chmod(0o644)
    assert result.returncode == 0, result.stderr
    assert "audit chain intact: 3 records" in result.stdout
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (3,)


def test_db_grant_on_sqlite_says_it_has_no_roles_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    result = run("db", "grant", "--app-role", "ksc_app", "--database-url", f"sqlite:///{path}")
    assert result.returncode == 2, result.stderr
    assert one_line_error(result).startswith("error: SQLite has no roles: ")
    assert list(tmp_path.iterdir()) == []
