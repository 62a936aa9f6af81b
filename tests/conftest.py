"""Shared fixtures.

* Every test is marked by its folder, so `-m unit` and friends select exactly that folder.
* A private PostgreSQL server and fresh databases (integration and e2e). PostgreSQL is
  required: if it cannot start, the tests that need it FAIL (never skip).
* The whole local test bed, started once per session and shared by tests/integration and
  tests/e2e.
* A ServiceNow simulator (``servicenow``), a fresh process per test that asks for it; not
  part of the test bed, so the test bed starts no slower.
"""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest

from canary.audit import AuditStore, upgrade_to_head
from canary.k8s.client import KubeClient
from testbed.postgres import PostgresServer, PostgresUnavailable
from testbed.servicenow.process import ServiceNowSim, ServiceNowSimError
from testbed.testbed import Testbed

_ROOT = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.path)).relative_to(_ROOT).parts[0]
        if folder in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, folder))


# A freshly made auditor token (``ksca_`` and 43 random characters) in a parameter's test
# ID: the same in every process, so the parallel workers (pytest-xdist) collect the same
# tests, and no token is printed in a test's name.
_TOKEN = re.compile(r"ksca_[A-Za-z0-9_-]{43}")


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    if isinstance(val, str) and _TOKEN.search(val):
        return _TOKEN.sub("ksca_<token>", val).encode("unicode_escape").decode("ascii")
    return None  # pytest's own ID


BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)


@dataclass(frozen=True)
class Database:
    """A test database, with raw (driver-level, autocommit) access for inspection and
    tampering that bypasses the store."""

    kind: Literal["sqlite", "postgresql"]
    url: str
    target: str  # SQLite file path or libpq conninfo

    @property
    def error(self) -> type[Exception]:
        """Base class of the driver's errors."""
        return sqlite3.Error if self.kind == "sqlite" else psycopg.Error

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) and return its rows, if any."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.target, isolation_level=None)) as conn:
                cursor = conn.execute(sql, tuple(params))
                return list(cursor.fetchall())
        with psycopg.connect(self.target, autocommit=True) as pg:
            pg_cursor = pg.execute(sql.replace("?", "%s"), tuple(params))
            return list(pg_cursor.fetchall()) if pg_cursor.description else []

    def script(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run several statements in one transaction."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.target, isolation_level=None)) as conn:
                conn.execute("BEGIN")
                for sql, params in statements:
                    conn.execute(sql, tuple(params))
                conn.execute("COMMIT")
            return
        with psycopg.connect(self.target) as pg, pg.transaction():
            for sql, params in statements:
                pg.execute(sql.replace("?", "%s"), tuple(params))

    def tables(self) -> set[str]:
        if self.kind == "sqlite":
            rows = self.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        else:
            rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {row[0] for row in rows}

    def triggers(self) -> set[str]:
        if self.kind == "sqlite":
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        else:
            rows = self.query("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        return {row[0] for row in rows}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    problem: str | None = None
    try:
        server.start()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if problem is not None:  # outside the except block, so the message is not repeated
        pytest.fail(
            f"PostgreSQL is required by the integration tests and could not start:\n{problem}",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[Database]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"ksc_test_{os.getpid()}_{next(_names)}"
    url = postgres_server.create_database(name)
    try:
        yield Database("postgresql", url, postgres_server.conninfo(name))
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Database:
    """A fresh, empty SQLite database file."""
    path = tmp_path / "audit.db"
    return Database("sqlite", f"sqlite:///{path}", str(path))


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest) -> Database:
    """An empty database (no schema) on each backend."""
    fixture = "sqlite_database" if request.param == "sqlite" else "pg_database"
    database: Database = request.getfixturevalue(fixture)
    return database


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A database on each backend, migrated to head."""
    upgrade_to_head(empty_db.url)
    return empty_db


@pytest.fixture
def db_url(db: Database) -> str:
    return db.url


@pytest.fixture
def store(db: Database) -> Iterator[AuditStore]:
    with AuditStore.from_url(db.url) as audit_store:
        yield audit_store


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """The whole local test bed (kube-apiserver + etcd with the real CRDs, the KServe and
    traffic simulators, Prometheus), started once per session with the same code as
    `python -m testbed up`. If any part cannot start, every test using it FAILS."""
    bed = Testbed(tmp_path_factory.mktemp("testbed"), detach=False)
    problem: str | None = None
    try:
        bed.up()
    except Exception as exc:  # any part: binaries, cluster, CRDs, simulators, Prometheus
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pytest.fail(
            f"the test bed is required by these tests and could not start:\n{problem}",
            pytrace=False,
        )
    try:
        yield bed
    finally:
        bed.down()


@pytest.fixture
def kube(testbed: Testbed) -> KubeClient:
    return testbed.kube


@pytest.fixture
def namespace(testbed: Testbed, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test."""
    return testbed.namespace(f"t{next(_names)}-{request.node.name[:30]}")


@pytest.fixture
def servicenow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceNowSim]:
    """A fresh ServiceNow simulator (testbed/servicenow/, docs/SERVICENOW.md) on a free
    loopback port with the default seed (testbed/servicenow/seed.yaml) and its own state
    file; ``restart()`` keeps both. If it cannot start, the test FAILS."""
    sim = ServiceNowSim(tmp_path_factory.mktemp("servicenow"))
    problem: str | None = None
    try:
        sim.start()
    except ServiceNowSimError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"the ServiceNow simulator could not start:\n{problem}", pytrace=False)
    try:
        yield sim
    finally:
        sim.stop()
