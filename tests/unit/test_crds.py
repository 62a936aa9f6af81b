"""Which CRD files the test bed takes from which upstream module, and how one document is
picked out of a file that holds many."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import crds
from testbed.binaries import BuildError

ISTIO_LIKE = """# generated
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: destinationrules.networking.istio.io
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: virtualservices.networking.istio.io
spec:
  group: networking.istio.io
---
"""


def test_one_document_is_picked_by_name_with_its_text_unchanged() -> None:
    picked = crds._pick(ISTIO_LIKE, "virtualservices.networking.istio.io", "istio")
    assert picked.startswith("apiVersion: apiextensions.k8s.io/v1\n")
    assert "group: networking.istio.io" in picked
    assert "destinationrules" not in picked


def test_a_missing_document_is_named() -> None:
    with pytest.raises(BuildError, match=r"no CustomResourceDefinition named gateways\.x"):
        crds._pick(ISTIO_LIKE, "gateways.x", "istio")


def test_documents_split_on_separator_lines_only() -> None:
    text = "a: 1\n---\nb: '---'\n---\n\n---\nc: 3\n"
    assert list(crds.split_documents(text)) == ["a: 1\n", "b: '---'\n", "c: 3\n"]


def test_every_pinned_module_is_required_by_the_go_module() -> None:
    go_mod = (crds.module_dir() / "go.mod").read_text()
    go_sum = (crds.module_dir() / "go.sum").read_text()
    for crd in crds.CRDS:
        assert f"\t{crd.module} v" in go_mod
        assert f"{crd.module} v" in go_sum  # checked content, not only a version
    assert len({c.file for c in crds.CRDS}) == len(crds.CRDS)


def test_the_cache_directory_follows_the_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_TESTBED_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "crds"
    src.mkdir()
    for name in ("go.mod", "go.sum"):
        (src / name).write_text((crds.module_dir() / name).read_text())
    first = crds.crd_cache_dir(src)
    assert first.parent == tmp_path / "cache"
    (src / "go.sum").write_text((src / "go.sum").read_text().replace("v1.6.1", "v1.6.2"))
    assert crds.crd_cache_dir(src) != first
    (src / "go.sum").unlink()
    with pytest.raises(BuildError, match="CRD pins are missing"):
        crds.crd_cache_dir(src)
