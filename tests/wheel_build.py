"""Builds the product's wheel from this checkout, for the tests that inspect or install it.

The wheel is built for real (``pip wheel --no-deps --no-build-isolation --no-index``: no
network) from a copy of the repository without build artefacts, because setuptools packs
whatever an earlier build left in ``build/lib``. If it cannot be built, the calling test fails:
it never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    ".make", "*.db",
)  # fmt: skip


def build_wheel(work: Path) -> Path:
    """Build the wheel under ``work`` (an empty directory) and return its path."""
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
