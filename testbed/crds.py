"""Fetch the CustomResourceDefinitions the test bed installs from their upstream Go modules.

The versions are pinned in ``testbed/go/crds/go.mod`` and checked by its ``go.sum``:
``go mod download`` (read-only module mode) refuses a module whose content does not match.
The files are copied once per machine into the same cache as the test-bed binaries::

    $KSC_TESTBED_CACHE/crds-<hash of go.mod, go.sum and this list>/<file>

Reuse reads those two files and checks that every CRD file exists: ``go`` is not run. A file
lock serialises concurrent fetchers; the directory appears by atomic rename, complete or not
at all. ``$KSC_CRD_DIR`` still overrides the whole directory (for an air-gapped machine).

    directory = ensure_crds(log=print_to_stderr)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.binaries import BuildError, cache_root, locked, source_dir, stderr_line

__all__ = ["CRDS", "CrdSource", "crd_cache_dir", "ensure_crds", "module_dir", "split_documents"]


@dataclass(frozen=True)
class CrdSource:
    """One CRD file: where it lies in which module, and under which name it is cached.
    ``document`` picks one CustomResourceDefinition (by ``metadata.name``) out of a file
    that holds several."""

    file: str
    module: str
    path: str
    document: str | None = None


CRDS: tuple[CrdSource, ...] = (
    CrdSource(
        "serving.kserve.io_inferenceservices.yaml",
        "github.com/kserve/kserve",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
    ),
    CrdSource(
        "gateway.networking.k8s.io_httproutes.yaml",
        "sigs.k8s.io/gateway-api",
        "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
    ),
    CrdSource(
        "gateway.networking.k8s.io_backendtlspolicies.yaml",
        "sigs.k8s.io/gateway-api",
        "config/crd/standard/gateway.networking.k8s.io_backendtlspolicies.yaml",
    ),
    CrdSource(
        "virtualservices.networking.istio.io.yaml",
        "istio.io/api",
        "kubernetes/customresourcedefinitions.gen.yaml",
        document="virtualservices.networking.istio.io",
    ),
    CrdSource(
        "monitoring.coreos.com_servicemonitors.yaml",
        "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
    CrdSource(
        "monitoring.coreos.com_prometheusrules.yaml",
        "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
    CrdSource(
        "cert-manager.io_certificates.yaml",
        "github.com/cert-manager/cert-manager",
        "deploy/crds/cert-manager.io_certificates.yaml",
    ),
    CrdSource(
        "cert-manager.io_issuers.yaml",
        "github.com/cert-manager/cert-manager",
        "deploy/crds/cert-manager.io_issuers.yaml",
    ),
)
"""Every CRD file the test bed and the chart's tests need, from its upstream module."""

_FETCH_TIMEOUT = 900.0


def module_dir() -> Path:
    """The Go module that pins the CRDs' sources: ``testbed/go/crds``."""
    return source_dir() / "crds"


def crd_cache_dir(src: Path | None = None) -> Path:
    """Where these pins' CRD files are cached (the name changes with go.mod and go.sum)."""
    src = src or module_dir()
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        path = src / name
        if not path.is_file():
            raise BuildError(
                f"the CRD pins are missing: no {path}. Run from a checkout of kserve-canary, "
                "or set KSC_TESTBED_SRC to its testbed/go directory."
            )
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for crd in CRDS:
        digest.update(f"{crd}\0".encode())
    return cache_root() / f"crds-{digest.hexdigest()[:12]}"


def split_documents(text: str) -> Iterator[str]:
    """The YAML documents of a multi-document file, as text (``---`` separators)."""
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.rstrip() == "---":
            if "".join(current).strip():
                yield "".join(current)
            current = []
        else:
            current.append(line)
    if "".join(current).strip():
        yield "".join(current)


def _pick(text: str, name: str, origin: str) -> str:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for document in split_documents(text):
        loaded = yaml.load(document, Loader=loader)  # noqa: S506 - a safe loader
        if isinstance(loaded, dict) and (loaded.get("metadata") or {}).get("name") == name:
            return document
    raise BuildError(f"{origin} holds no CustomResourceDefinition named {name}")


def _download(go: str, src: Path, modules: list[str]) -> dict[str, Path]:
    """``go mod download -json`` in read-only module mode: each module's directory in the
    module cache, verified against go.sum."""
    command = [go, "mod", "download", "-json", *modules]
    env = dict(os.environ, GOFLAGS="-mod=readonly")
    try:
        result = subprocess.run(
            command,
            cwd=src,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FETCH_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"downloading the CRD modules took longer than {_FETCH_TIMEOUT:.0f} s "
            f"(cd {src} && {' '.join(command)})"
        ) from None
    except OSError as exc:
        raise BuildError(f"could not run Go to download the CRD modules: {exc}") from None
    dirs: dict[str, Path] = {}
    errors: list[str] = []
    for entry in _json_objects(result.stdout):
        if entry.get("Error"):
            errors.append(f"{entry.get('Path')}: {entry['Error']}")
        elif entry.get("Dir"):
            dirs[str(entry["Path"])] = Path(str(entry["Dir"]))
    if result.returncode != 0 or errors or set(modules) - dirs.keys():
        detail = "\n".join(errors) or result.stderr.strip() or "no module directory reported"
        raise BuildError(
            f"downloading the CRD modules failed (cd {src} && GOFLAGS=-mod=readonly "
            f"{' '.join(command)}):\n{detail}"
        )
    return dirs


def _json_objects(text: str) -> Iterator[dict[str, object]]:
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        value, position = decoder.raw_decode(text, position)
        if isinstance(value, dict):
            yield value


def ensure_crds(*, log: Callable[[str], None] = stderr_line) -> Path:
    """The directory of the test bed's CRD files, fetching them if this machine has not yet.

    Raises :class:`BuildError` if Go is missing, a module cannot be downloaded, its content
    does not match go.sum, or a pinned file is not in it."""
    override = os.environ.get("KSC_CRD_DIR")
    if override:
        return Path(override)
    src = module_dir()
    target = crd_cache_dir(src)
    if all((target / crd.file).is_file() for crd in CRDS):
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not on PATH: the test bed fetches its CRDs from their Go modules "
            f"({src / 'go.mod'}). Install Go (https://go.dev/dl/) and retry, or point "
            "KSC_CRD_DIR at a directory holding them."
        )
    with locked(target.with_name(target.name + ".lock"), log):
        if all((target / crd.file).is_file() for crd in CRDS):
            return target  # fetched by another process while this one waited
        log(f"fetching the CRDs from their Go modules ({src / 'go.mod'})…")
        modules = sorted({crd.module for crd in CRDS})
        dirs = _download(go, src, modules)
        staging = Path(tempfile.mkdtemp(prefix=".crds-", dir=target.parent))
        try:
            for crd in CRDS:
                origin = dirs[crd.module] / crd.path
                if not origin.is_file():
                    raise BuildError(f"{crd.module} has no {crd.path} ({origin} is missing)")
                text = origin.read_text(encoding="utf-8")
                if crd.document is not None:
                    text = _pick(text, crd.document, str(origin))
                (staging / crd.file).write_text(text, encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"CRDs ready in {target}")
    return target
