"""Fixtures for the end-to-end tests: one controller environment per test.

The controller runs as production runs it on PostgreSQL: connected as an application role that
may read and append the audit history but not change it; the owner role migrated the database
and granted that role (``canary db grant``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.postgres import PostgresServer, RoleDatabase, provision_audit_database
from testbed.testbed import Testbed
from tests.e2e.harness import FAST_POLICY, SLOW_POLICY, Env, Mode

_count = itertools.count(1)


def _policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "fast.yaml").write_text(FAST_POLICY, encoding="utf-8")
    (directory / "slow.yaml").write_text(SLOW_POLICY, encoding="utf-8")
    return directory


@pytest.fixture
def audit_database(postgres_server: PostgresServer) -> Iterator[RoleDatabase]:
    """A fresh database, migrated by its owner role, with an application role granted what
    the controller uses; dropped afterwards, with both roles."""
    database = provision_audit_database(postgres_server, f"ksc_e2e_{os.getpid()}_{next(_count)}")
    try:
        yield database
    finally:
        postgres_server.drop_role_database(database)


def _env(mode: Mode, testbed: Testbed, database: RoleDatabase, tmp_path: Path) -> Iterator[Env]:
    namespace = testbed.namespace(f"e2e-{mode[:4]}-{next(_count)}")
    environment = Env(testbed, mode, namespace, database.app_url, _policies(tmp_path))
    try:
        yield environment
    finally:
        environment.stop()


@pytest.fixture(params=["knative", "standard"])
def env(
    request: pytest.FixtureRequest, testbed: Testbed, audit_database: RoleDatabase, tmp_path: Path
) -> Iterator[Env]:
    """A controller environment, once per KServe deployment mode."""
    yield from _env(request.param, testbed, audit_database, tmp_path)


@pytest.fixture
def knative_env(testbed: Testbed, audit_database: RoleDatabase, tmp_path: Path) -> Iterator[Env]:
    """A Knative-mode environment, for behaviour that does not depend on the mode."""
    yield from _env("knative", testbed, audit_database, tmp_path)


@pytest.fixture
def standard_env(testbed: Testbed, audit_database: RoleDatabase, tmp_path: Path) -> Iterator[Env]:
    """A Standard-mode environment, for what exists in that mode only."""
    yield from _env("standard", testbed, audit_database, tmp_path)
