"""An installed wheel upgrades a database by itself: ``canary db upgrade`` finds the migrations
the wheel ships, with no source checkout and no ``alembic.ini`` around.

The wheel is built from this checkout and unpacked into a fresh virtualenv outside the source
tree (no pip, no network). The product's dependencies come from the running virtualenv through
a ``.pth`` line: a directory named in a ``.pth`` file is only appended to ``sys.path``, its own
``.pth`` files are not processed, so the editable install of this checkout stays inactive and
``canary`` can only come from the wheel (the test checks where it was imported from).
"""

from __future__ import annotations

import configparser
import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from canary.audit.schema import Base
from tests.wheel_build import REPO, build_wheel

pytestmark = pytest.mark.integration

PRODUCT = ("canary", "analysis", "approvals")

_WHERE_FROM = """
import json, sys
from importlib import resources
import analysis, approvals, canary, canary.cli
from canary.audit.database import _migrations_dir
print(json.dumps({
    "modules": {m.__name__: m.__file__ for m in (canary, canary.cli, analysis, approvals)},
    "package": str(resources.files("canary.migrations")),
    "migrations": str(_migrations_dir()),
    "editable_finder": any("__editable__" in name for name in sys.modules),
}))
"""


def _install(wheel: Path, venv: Path) -> None:
    """Unpack ``wheel`` into ``venv`` and write its console scripts, as an installer would."""
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, timeout=60, check=True, cwd=venv,
        ).stdout.strip()
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
        entry_points = next(n for n in archive.namelist() if n.endswith("/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    for name, target in parser["console_scripts"].items():
        module, function = target.split(":")
        script = venv / "bin" / name
        script.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        script.chmod(0o755)
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "_source_venv_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the source tree, with the built wheel installed."""
    wheel = build_wheel(tmp_path_factory.mktemp("build"))
    venv = tmp_path_factory.mktemp("installed") / "venv"
    assert not venv.is_relative_to(REPO)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    _install(wheel, venv)
    return venv


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def _run(
    venv: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``venv/bin/<args[0]>`` in ``workdir``, with no PYTHONPATH and no KSC_* settings."""
    environment = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("KSC_")
        },
        **(env or {}),
    }
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True, text=True, timeout=120, check=False, cwd=workdir, env=environment,
    )  # fmt: skip


def test_the_product_and_its_migrations_come_from_the_wheel(venv: Path, workdir: Path) -> None:
    result = _run(venv, workdir, "python", "-c", _WHERE_FROM)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    for module, path in found["modules"].items():
        assert Path(path).is_relative_to(venv), f"{module} imported from {path}"
    package = Path(found["package"])
    assert package.is_relative_to(venv)
    assert Path(found["migrations"]) == package.resolve()
    assert found["editable_finder"] is False


def test_db_upgrade_from_the_installed_wheel_creates_the_schema(venv: Path, workdir: Path) -> None:
    database = workdir / "audit.db"
    url = f"sqlite:///{database}"

    upgraded = _run(venv, workdir, "canary", "db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database schema is at the newest revision" in upgraded.stdout

    with closing(sqlite3.connect(database)) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        revisions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert revisions == [(ScriptDirectory(str(REPO / "migrations")).get_current_head(),)]

    verified = _run(venv, workdir, "canary", "audit", "verify", "--database-url", url)
    assert verified.returncode == 0, verified.stderr
    assert "audit chain intact: 0 records" in verified.stdout


def test_a_migrations_dir_override_without_migrations_is_refused(venv: Path, workdir: Path) -> None:
    empty = workdir / "elsewhere"
    empty.mkdir()
    database = workdir / "audit.db"
    result = _run(
        venv,
        workdir,
        *("canary", "db", "upgrade", "--database-url", f"sqlite:///{database}"),
        env={"KSC_MIGRATIONS_DIR": str(empty)},
    )
    assert result.returncode == 3
    assert f"database migrations not found at {empty}: it has no env.py" in result.stderr
    assert not database.exists()
