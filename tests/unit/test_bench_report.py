"""The benchmarks' README blocks are replaced whole, and a missing block is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import replace_block, write_results

README = "# Title\n\n<!-- bench:scale -->\nold figures\n<!-- /bench:scale -->\n\nafter\n"


def test_the_block_is_replaced_and_the_rest_kept() -> None:
    out = replace_block(README, "scale", "| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert out == (
        "# Title\n\n<!-- bench:scale -->\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        "<!-- /bench:scale -->\n\nafter\n"
    )
    assert replace_block(out, "scale", "new") == replace_block(README, "scale", "new")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("no block here\n", "scale"),
        (README + README, "scale"),
        ("<!-- /bench:scale -->\n<!-- bench:scale -->\n", "scale"),
        (README, "Scale!"),
    ],
    ids=["missing", "repeated", "out-of-order", "bad-name"],
)
def test_a_missing_or_broken_block_is_refused(text: str, name: str) -> None:
    with pytest.raises(ValueError, match="bench"):
        replace_block(text, name, "figures")


def test_results_are_written_with_the_machine(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    path = write_results(
        "scale",
        "# results\n",
        {"p99": 0.5},
        readme_block="figures",
        readme=readme,
        results=tmp_path / "results",
    )
    assert path.read_text() == "# results\n"
    data = json.loads((tmp_path / "results" / "scale.json").read_text())
    assert data["p99"] == 0.5
    assert data["machine"]["cores"] >= 1
    assert "measured_at" in data
    assert "figures" in readme.read_text()
