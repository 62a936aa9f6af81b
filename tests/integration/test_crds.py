"""The test bed's CRDs come from their upstream Go modules at the pinned versions, checked
by go.sum, and are fetched once per machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed import crds
from testbed.binaries import BuildError

pytestmark = pytest.mark.integration


def _copy_pins(tmp_path: Path) -> Path:
    src = tmp_path / "testbed"
    shutil.copytree(crds.module_dir(), src / "crds")
    return src


def test_the_crds_are_fetched_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KSC_CRD_DIR", raising=False)
    lines: list[str] = []
    directory = crds.ensure_crds(log=lines.append)
    assert any("fetching the CRDs" in line for line in lines)
    for crd in crds.CRDS:
        document = yaml.safe_load((directory / crd.file).read_text())
        assert document["kind"] == "CustomResourceDefinition"
    isvc = yaml.safe_load((directory / "serving.kserve.io_inferenceservices.yaml").read_text())
    assert isvc["metadata"]["name"] == "inferenceservices.serving.kserve.io"
    vs = yaml.safe_load((directory / "virtualservices.networking.istio.io.yaml").read_text())
    assert vs["metadata"]["name"] == "virtualservices.networking.istio.io"

    again: list[str] = []
    assert crds.ensure_crds(log=again.append) == directory
    assert again == []  # nothing fetched, Go not run


def test_content_that_does_not_match_go_sum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _copy_pins(tmp_path)
    go_sum = src / "crds" / "go.sum"
    lines = go_sum.read_text().splitlines()
    tampered = [
        line.replace(" h1:", " h1:A") if line.startswith("sigs.k8s.io/gateway-api v1.6.1 h1:")
        else line
        for line in lines
    ]  # fmt: skip
    go_sum.write_text("\n".join(tampered) + "\n")
    monkeypatch.setenv("KSC_TESTBED_SRC", str(src))
    monkeypatch.setenv("KSC_TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KSC_CRD_DIR", raising=False)
    with pytest.raises(BuildError, match="gateway-api"):
        crds.ensure_crds(log=lambda _: None)
    assert not list((tmp_path / "cache").glob("crds-*/*.yaml"))  # nothing half-written


def test_testbed_build_reports_where_the_crds_are() -> None:
    """`python -m testbed build`, run as `make testbed-binaries` runs it: from the
    repository root (the test bed is not installed with the product)."""
    result = subprocess.run(
        [sys.executable, "-m", "testbed", "build"],
        capture_output=True, text=True, timeout=1800, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "CRDs:" in result.stdout
