"""Fixtures for the end-to-end tests: one controller environment per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary.audit import upgrade_to_head
from testbed.testbed import Testbed
from tests.conftest import Database
from tests.e2e.harness import FAST_POLICY, SLOW_POLICY, Env, Mode

_count = itertools.count(1)


def _policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "fast.yaml").write_text(FAST_POLICY, encoding="utf-8")
    (directory / "slow.yaml").write_text(SLOW_POLICY, encoding="utf-8")
    return directory


def _env(mode: Mode, testbed: Testbed, database: Database, tmp_path: Path) -> Iterator[Env]:
    upgrade_to_head(database.url)
    namespace = testbed.namespace(f"e2e-{mode[:4]}-{next(_count)}")
    environment = Env(testbed, mode, namespace, database.url, _policies(tmp_path))
    try:
        yield environment
    finally:
        environment.stop()


@pytest.fixture(params=["knative", "standard"])
def env(
    request: pytest.FixtureRequest, testbed: Testbed, pg_database: Database, tmp_path: Path
) -> Iterator[Env]:
    """A controller environment, once per KServe deployment mode."""
    yield from _env(request.param, testbed, pg_database, tmp_path)


@pytest.fixture
def knative_env(testbed: Testbed, pg_database: Database, tmp_path: Path) -> Iterator[Env]:
    """A Knative-mode environment, for behaviour that does not depend on the mode."""
    yield from _env("knative", testbed, pg_database, tmp_path)


@pytest.fixture
def standard_env(testbed: Testbed, pg_database: Database, tmp_path: Path) -> Iterator[Env]:
    """A Standard-mode environment, for what exists in that mode only."""
    yield from _env("standard", testbed, pg_database, tmp_path)
