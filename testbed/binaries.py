"""Build, or reuse, the kube-apiserver and etcd binaries of the local test bed, and the helm
command the chart's tests run.

The Go sources live in ``testbed/go/`` (one Go module per binary). They are compiled once per
machine into a cache outside the repository::

    $KSC_TESTBED_CACHE/<key>/bin/{kube-apiserver,etcd}
    $KSC_TESTBED_CACHE/<helm key>/bin/helm
    (default root: ${XDG_CACHE_HOME:-~/.cache}/kserve-canary/testbed)

``<key>`` names the Kubernetes and etcd versions and ends in a short hash of their Go sources
(``go.mod``, ``go.sum``, ``*.go``), so changed sources rebuild and unchanged ones are reused;
``<helm key>`` does the same for helm on its own, so moving helm to another version rebuilds
helm only, never the control plane. Reuse only reads those few files and checks that the
binaries exist: ``go`` is not run. A file lock serialises concurrent builders; binaries
appear by atomic rename, complete or not at all.

    binaries = ensure_built(log=print_to_stderr)
    binaries.kube_apiserver, binaries.etcd
    helm = ensure_helm(log=print_to_stderr)
    helm.path, helm.version
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BINARY_NAMES",
    "HELM",
    "Binaries",
    "BuildError",
    "Tool",
    "cache_key",
    "cache_root",
    "ensure_built",
    "ensure_helm",
    "helm_cache_key",
    "locked",
    "source_dir",
    "stderr_line",
]

BINARY_NAMES = ("kube-apiserver", "etcd")
# The Go module (under testbed/go/) that builds each binary, and the module whose
# required version is that binary's version.
_VERSION_MODULES = {
    "kube-apiserver": ("kubernetes", "k8s.io/kubernetes"),
    "etcd": ("etcd", "go.etcd.io/etcd/server/v3"),
}
# kube-apiserver reports its version (GET /version, kubectl version) from variables that
# Kubernetes' own release build sets with -X; without them it says v0.0.0-master.
_K8S_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
_EXPECTED_TIME = {
    "kube-apiserver": "several minutes",
    "etcd": "about a minute",
    "helm": "a minute or two",
}
HELM = "helm"
"""The Go module directory (under testbed/go/) and the binary of the helm command."""
_HELM_MODULE = "helm.sh/helm/v4"
# helm reports its version (helm version) from a variable its release build sets with -X.
_HELM_VERSION_PACKAGE = "helm.sh/helm/v4/internal/version"
_BUILD_TIMEOUT = 3600.0
_TAIL_LINES = 40


class BuildError(RuntimeError):
    """The test-bed binaries could not be built (or Go is missing)."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the built binaries and the versions they were built from."""

    kube_apiserver: Path
    etcd: Path
    versions: dict[str, str]


@dataclass(frozen=True)
class Tool:
    """A command-line tool built for the tests (helm): its path and version."""

    path: Path
    version: str


def stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def source_dir() -> Path:
    """``testbed/go`` of this checkout, beside this module (``KSC_TESTBED_SRC`` overrides)."""
    override = os.environ.get("KSC_TESTBED_SRC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "go"


def cache_root() -> Path:
    """``$KSC_TESTBED_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/kserve-canary/testbed``."""
    override = os.environ.get("KSC_TESTBED_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "kserve-canary" / "testbed"


def _source_files(src: Path, binaries: tuple[str, ...] = BINARY_NAMES) -> list[Path]:
    files: list[Path] = []
    for binary in binaries:
        module = src / binary
        if not (module / "go.mod").is_file():
            raise BuildError(
                f"the Go sources of {binary} are missing: no {module / 'go.mod'}. "
                "Run from a checkout of kserve-canary, or set KSC_TESTBED_SRC to its "
                "testbed/go directory."
            )
        files.extend(
            path
            for path in sorted(module.iterdir())
            if path.is_file() and (path.name in {"go.mod", "go.sum"} or path.suffix == ".go")
        )
    return files


def _required_version(go_mod_path: Path, module_path: str) -> str:
    go_mod = go_mod_path.read_text(encoding="utf-8")
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module_path)}\s+(v\S+)", go_mod, re.M)
    if match is None:
        raise BuildError(f"{go_mod_path} does not require {module_path}")
    return match.group(1)


def _versions(src: Path) -> dict[str, str]:
    return {
        label: _required_version(src / binary / "go.mod", module_path)
        for binary, (label, module_path) in _VERSION_MODULES.items()
    }


def _ldflags(binary: str, versions: dict[str, str]) -> str:
    flags = ["-s", "-w"]
    if binary == "kube-apiserver":
        version = versions["kubernetes"]
        match = re.match(r"v(\d+)\.(\d+)\.", version)
        major, minor = match.groups() if match else ("", "")
        values = {
            "gitVersion": version,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
            "gitCommit": "",
        }
        flags += [
            f"-X={package}.{name}={value}"
            for package in _K8S_VERSION_PACKAGES
            for name, value in values.items()
        ]
    return " ".join(flags)


def cache_key(src: Path | None = None) -> tuple[str, dict[str, str]]:
    """The cache directory name for these sources, and the versions they pin."""
    src = src or source_dir()
    versions = _versions(src)
    digest = hashlib.sha256()
    for binary in BINARY_NAMES:  # how they are built is part of what they are
        digest.update(f"{binary}: {_ldflags(binary, versions)}\0".encode())
    for path in _source_files(src):
        digest.update(path.relative_to(src).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    key = (
        f"k8s-{versions['kubernetes']}-etcd-{versions['etcd']}-{_machine()}-"
        f"{digest.hexdigest()[:12]}"
    )
    return key, versions


def _machine() -> str:
    return f"{sys.platform}-{platform.machine().lower()}"


def _helm_ldflags(version: str) -> str:
    return " ".join(
        [
            "-s",
            "-w",
            f"-X={_HELM_VERSION_PACKAGE}.version={version}",
            f"-X={_HELM_VERSION_PACKAGE}.gitTreeState=clean",
        ]
    )


def helm_cache_key(src: Path | None = None) -> tuple[str, str]:
    """The cache directory name of helm built from these sources, and helm's version.
    Independent of :func:`cache_key`: a new helm never rebuilds the control plane."""
    src = src or source_dir()
    files = _source_files(src, (HELM,))  # first: a clear error if the module is missing
    version = _required_version(src / HELM / "go.mod", _HELM_MODULE)
    digest = hashlib.sha256()
    digest.update(f"{HELM}: {_helm_ldflags(version)}\0".encode())
    for path in files:
        digest.update(path.relative_to(src).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return f"helm-{version}-{_machine()}-{digest.hexdigest()[:12]}", version


def _present(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextmanager
def locked(lock_path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the exclusive file lock ``lock_path`` (a build, or a CRD fetch, of the test bed's
    cache), saying so if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is filling the test-bed cache; waiting for it ({lock_path})")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _build_one(
    go: str, binary: str, module_dir: Path, target: Path, ldflags: str, log: Callable[[str], None]
) -> None:
    temp = target.with_name(f".{binary}.tmp-{os.getpid()}")
    command = [
        go,
        "build",
        "-trimpath",
        "-buildvcs=false",
        f"-ldflags={ldflags}",
        "-o",
        str(temp),
        ".",
    ]
    env = dict(os.environ, CGO_ENABLED="0")
    shown = f"cd {shlex.quote(str(module_dir))} && CGO_ENABLED=0 {shlex.join(command)}"
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=module_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        temp.unlink(missing_ok=True)
        output = exc.output if isinstance(exc.output, str) else ""
        raise BuildError(
            f"building {binary} took longer than {_BUILD_TIMEOUT:.0f} s\n"
            f"command: {shown}\n{_tail(output)}"
        ) from None
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise BuildError(f"could not run Go to build {binary}: {exc}\ncommand: {shown}") from None
    if result.returncode != 0 or not _present(temp):
        temp.unlink(missing_ok=True)
        raise BuildError(
            f"building {binary} failed (exit status {result.returncode})\n"
            f"command: {shown}\n"
            f"last lines of Go's output:\n{_tail(result.stdout)}"
        )
    os.replace(temp, target)
    log(f"built {binary} in {time.monotonic() - started:.0f} s → {target}")


def ensure_built(*, log: Callable[[str], None] = stderr_line) -> Binaries:
    """Return the test-bed binaries, building whichever are missing from the cache.

    Raises :class:`BuildError` if Go is not installed or a build fails (with the command and
    the tail of Go's output).
    """
    src = source_dir()
    key, versions = cache_key(src)
    bin_dir = cache_root() / key / "bin"
    paths = {binary: bin_dir / binary for binary in BINARY_NAMES}
    binaries = Binaries(
        kube_apiserver=paths["kube-apiserver"], etcd=paths["etcd"], versions=versions
    )
    if all(_present(path) for path in paths.values()):
        return binaries

    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not on PATH: the test bed builds kube-apiserver and etcd from source "
            f"({src}). Install Go {_required_go(src)} or newer (https://go.dev/dl/) and retry."
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    with locked(bin_dir.parent / "build.lock", log):
        # Another process may have built them while this one waited for the lock.
        for binary, path in paths.items():
            if _present(path):
                continue
            label, _module = _VERSION_MODULES[binary]
            log(
                f"building {binary} {versions[label]} (first time on this machine for these "
                f"sources, {_EXPECTED_TIME[binary]})…"
            )
            _build_one(go, binary, src / binary, path, _ldflags(binary, versions), log)
    return binaries


def ensure_helm(*, log: Callable[[str], None] = stderr_line) -> Tool:
    """Return helm (built from ``testbed/go/helm`` at its pinned version), building it if
    this machine has not yet. A second call only checks the cache: ``go`` is not run.

    Raises :class:`BuildError` if Go is not installed or the build fails."""
    src = source_dir()
    key, version = helm_cache_key(src)
    bin_dir = cache_root() / key / "bin"
    tool = Tool(bin_dir / HELM, version)
    if _present(tool.path):
        return tool
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"Go is not on PATH: the chart's tests build helm {version} from source "
            f"({src / HELM}). Install Go {_required_go(src)} or newer (https://go.dev/dl/) "
            "and retry."
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    with locked(bin_dir.parent / "build.lock", log):
        if not _present(tool.path):  # another process may have built it meanwhile
            log(
                f"building helm {version} (first time on this machine for these sources, "
                f"{_EXPECTED_TIME[HELM]})…"
            )
            _build_one(go, HELM, src / HELM, tool.path, _helm_ldflags(version), log)
    return tool


def _required_go(src: Path) -> str:
    go_mod = (src / "kube-apiserver" / "go.mod").read_text(encoding="utf-8")
    match = re.search(r"^go\s+(\S+)", go_mod, re.M)
    return match.group(1) if match else "(see testbed/go/*/go.mod)"
