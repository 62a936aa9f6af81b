"""Policies loaded from a file or directory, reloaded when a file changes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from canary.log import get_logger
from canary.policy import PolicyError, PolicySet, load_policies

__all__ = ["PolicySource"]

log = get_logger("canary.policy_source")


class PolicySource:
    """The policies in a file or directory, reloaded when a file changes.

    A reload that fails keeps the last good set (rollouts in flight keep the policy they
    started with anyway) and reports the problem through ``on_problem``.
    """

    def __init__(
        self, path: Path, on_problem: Callable[[str | None], None] = lambda _: None
    ) -> None:
        self._path = path
        self._on_problem = on_problem
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._current: PolicySet | None = None

    def _fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        files = [self._path] if self._path.is_file() else sorted(self._path.glob("*.y*ml"))
        stamps = []
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            stamps.append((str(file), stat.st_mtime, stat.st_size))
        return tuple(stamps)

    def __call__(self) -> PolicySet:
        with self._lock:
            stamp = self._fingerprint()
            if self._current is not None and stamp == self._stamp:
                return self._current
            try:
                loaded = load_policies(self._path)
            except PolicyError as exc:
                problem = "; ".join(str(p) for p in exc.problems)
                log.error("policy.load_failed", path=str(self._path), problem=problem)
                self._on_problem(problem)
                if self._current is None:
                    raise
                self._stamp = stamp
                return self._current
            self._current, self._stamp = loaded, stamp
            self._on_problem(None)
            log.info("policy.loaded", path=str(self._path), policies=loaded.names())
            return loaded
