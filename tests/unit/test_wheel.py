"""The wheel holds the product and nothing else: ``canary``, ``analysis`` and ``approvals``
with their ``py.typed`` markers; not the test bed (``testbed/``: simulators, the sandbox
launchers, the Go sources), nor tests, benchmarks or migrations.

The wheel is built for real (``pip wheel --no-deps --no-build-isolation``: no network) from a
copy of the repository without build artefacts, because setuptools packs whatever an earlier
build left in ``build/lib``. If it cannot be built, the test fails: it never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("canary", "analysis", "approvals")
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    ".make", "*.db",
)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source, out = work / "source", work / "out"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES, symlinks=True)
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "--disable-pip-version-check", "--quiet", "-w", str(out), str(source),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"the wheel could not be built (exit status {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {[w.name for w in wheels]}"
    return wheels[0]


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
