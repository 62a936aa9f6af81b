"""Benchmark results into files and into the README, never by hand.

Each benchmark writes its full results (``bench/results/<name>.md``) and a machine-readable
copy (``bench/results/<name>.json``), and replaces its block in the README: the lines
between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``. A README without the
block is an error (the block is placed by a person once; its contents are the benchmark's).
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Machine", "machine", "replace_block", "write_results"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    python: str

    def describe(self) -> str:
        return f"{self.cpu}, {self.cores} cores, {self.memory_gib:.0f} GiB, Python {self.python}"


def machine() -> Machine:
    """The machine the figures were measured on (Linux: /proc)."""
    cpu = platform.processor() or platform.machine()
    cores = 0
    memory = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                cores += 1
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return Machine(cpu, cores, memory, platform.python_version())


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"a benchmark's name is lowercase letters, digits and '-': {name!r}")
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block of ``name`` holding ``body``. Raises ValueError when the
    block is missing, repeated or its markers are out of order."""
    start, end = _markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(
            f"the README must hold exactly one {start} ... {end} block for the results"
        )
    head, rest = text.split(start, 1)
    if end not in rest:
        raise ValueError(f"{end} comes before {start} in the README")
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def write_results(
    name: str,
    markdown: str,
    data: dict[str, Any],
    *,
    readme_block: str | None = None,
    readme: Path = README,
    results: Path = RESULTS,
) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` under ``results`` and, with ``readme_block``,
    replace the README's block of ``name``. Returns the Markdown file's path."""
    results.mkdir(parents=True, exist_ok=True)
    stamped = {"measured_at": datetime.now(UTC).isoformat(), "machine": machine().__dict__}
    stamped.update(data)
    (results / f"{name}.json").write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n")
    path = results / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    if readme_block is not None:
        readme.write_text(replace_block(readme.read_text(), name, readme_block))
    return path
