"""The wheel holds the product and nothing else: ``canary``, ``analysis`` and ``approvals``
with their ``py.typed`` markers, and the database migrations as ``canary.migrations`` (built
from the repository's top-level ``migrations/`` folder); not the test bed (``testbed/``:
simulators, the sandbox launchers, the Go sources), nor tests or benchmarks.

The wheel is built for real from a copy of the checkout (:mod:`tests.wheel_build`);
tests/integration/test_wheel_install.py installs it and runs ``canary db upgrade``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.wheel_build import REPO, build_wheel

PRODUCT = ("canary", "analysis", "approvals")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def wheel(built: Path) -> list[str]:
    """The names in the wheel."""
    with zipfile.ZipFile(built) as archive:
        return archive.namelist()


def test_the_product_packages_are_in_the_wheel(wheel: list[str]) -> None:
    for package in PRODUCT:
        assert f"{package}/__init__.py" in wheel
        assert f"{package}/py.typed" in wheel
    assert "canary/cli.py" in wheel
    assert "analysis/providers/prometheus.py" in wheel


def test_the_wheel_holds_nothing_but_the_product(wheel: list[str]) -> None:
    tops = {name.split("/", 1)[0] for name in wheel}
    dist_info = {top for top in tops if top.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == set(PRODUCT)


def test_every_module_of_the_product_is_in_the_wheel(wheel: list[str]) -> None:
    # pyproject.toml lists the packages by hand (for the migrations mapping): a package left
    # out of that list would be missing from an installed controller.
    sources = sorted(
        path.relative_to(REPO).as_posix()
        for package in PRODUCT
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    assert sources
    assert [name for name in sources if name not in wheel] == []


def test_the_migrations_ship_inside_canary(wheel: list[str]) -> None:
    for name in ("__init__.py", "env.py", "script.py.mako"):
        assert f"canary/migrations/{name}" in wheel
    versions = sorted(
        path.name for path in (REPO / "migrations" / "versions").iterdir() if path.is_file()
    )
    assert "0001_initial.py" in versions
    shipped = sorted(
        name.removeprefix("canary/migrations/versions/")
        for name in wheel
        if name.startswith("canary/migrations/versions/")
    )
    assert shipped == versions
    assert [name for name in wheel if name.startswith("migrations/")] == []


def test_the_test_bed_is_not_in_the_wheel(wheel: list[str]) -> None:
    assert [name for name in wheel if name.startswith("testbed/")] == []
    leaked = [
        name
        for name in wheel
        if "sandbox" in name.lower() or "simulator" in name.lower() or name.endswith(".go")
    ]
    assert leaked == []


def test_the_only_command_is_the_product_one(built: Path, wheel: list[str]) -> None:
    entry_points = next(name for name in wheel if name.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(built) as archive:
        text = archive.read(entry_points).decode()
    assert "canary = canary.cli:main" in text
    assert "testbed" not in text
