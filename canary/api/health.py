"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``.

:class:`Health` is a small thread-safe object the controller updates.

* **Readiness** is a set of components, each ok or not with a detail: the controller
  reports ``database`` (the audit store answers), ``policies`` (loaded and valid) and
  ``watch`` (the InferenceService list/watch is synced). ``/readyz`` answers 200 only when
  every required component has reported ok and no reported component is failing; a
  required component that has not reported yet counts as not ready. A component reported
  with a ``ttl`` expires: unless it is reported again within ``ttl`` seconds it counts as
  failing ("no report for N s"), so a check that hangs (a frozen database answers nothing,
  not even an error) shows as not ready instead of keeping its last good answer.
* **Liveness** is about the process's loops: a loop that calls :meth:`Health.heartbeat`
  must beat again within ``liveness_timeout`` seconds (or the ``timeout`` it beat with), or
  ``/healthz`` answers 503 so the kubelet restarts the pod. :meth:`Health.set_alive` marks
  the process dead outright (a fatal error). Without heartbeats, ``/healthz`` answers 200
  while the HTTP server runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

__all__ = ["REQUIRED_COMPONENTS", "ComponentState", "Health", "router"]

REQUIRED_COMPONENTS = ("database", "policies", "watch")


@dataclass(frozen=True)
class ComponentState:
    ok: bool
    detail: str
    since: float  # clock value when ``ok`` last changed
    reported: float = 0.0  # clock value of the last report
    ttl: float | None = None  # seconds a report stays valid (None: until the next one)


class Health:
    def __init__(
        self,
        required: Iterable[str] = REQUIRED_COMPONENTS,
        *,
        liveness_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if liveness_timeout <= 0:
            raise ValueError("liveness_timeout must be positive")
        self._required = tuple(required)
        self._timeout = liveness_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._components: dict[str, ComponentState] = {}
        self._beats: dict[str, tuple[float, float]] = {}  # loop -> (last beat, timeout)
        self._dead: str | None = None

    # --- what the controller reports -------------------------------------------------------

    def set_ready(
        self, component: str, ok: bool, detail: str = "", ttl: float | None = None
    ) -> None:
        """Report ``component``; with ``ttl`` the report is valid for that many seconds."""
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be positive")
        with self._lock:
            now = self._clock()
            before = self._components.get(component)
            since = before.since if before is not None and before.ok == ok else now
            self._components[component] = ComponentState(ok, detail, since, now, ttl)

    def heartbeat(self, loop: str = "main", timeout: float | None = None) -> None:
        """``loop`` is alive now; from its first beat on it must beat again within
        ``timeout`` seconds (the liveness timeout by default)."""
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        with self._lock:
            self._beats[loop] = (self._clock(), timeout or self._timeout)

    def forget_loop(self, loop: str) -> None:
        """``loop`` ended on purpose (shutdown); stop expecting its heartbeat."""
        with self._lock:
            self._beats.pop(loop, None)

    def set_alive(self, alive: bool, detail: str = "") -> None:
        with self._lock:
            self._dead = None if alive else (detail or "marked dead")

    # --- what the probes read --------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(ready, {component: {"ok", "detail"}}) — required components first."""
        now = self._clock()
        with self._lock:
            components = dict(self._components)
        report: dict[str, dict[str, Any]] = {}
        for name in self._required:
            state = components.get(name)
            if state is None:
                report[name] = {"ok": False, "detail": "not reported yet"}
            else:
                report[name] = _entry(state, now)
        for name in sorted(set(components) - set(self._required)):
            report[name] = _entry(components[name], now)
        return all(entry["ok"] for entry in report.values()), report

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            dead = self._dead
            beats = dict(self._beats)
        stale = {
            loop: round(now - at, 3)
            for loop, (at, timeout) in sorted(beats.items())
            if now - at > timeout
        }
        alive = dead is None and not stale
        body: dict[str, Any] = {"status": "ok" if alive else "failing"}
        if dead is not None:
            body["detail"] = dead
        if stale:
            body["stale_loops"] = stale  # seconds since each one's last heartbeat
        return alive, body


def _entry(state: ComponentState, now: float) -> dict[str, Any]:
    age = now - state.reported
    if state.ttl is not None and age > state.ttl:
        return {"ok": False, "detail": f"no report for {age:.1f} s (last: {state.detail})"}
    return {"ok": state.ok, "detail": state.detail}


def router(health: Health) -> APIRouter:
    routes = APIRouter(tags=["health"])

    @routes.get("/healthz")
    def healthz() -> JSONResponse:
        alive, body = health.liveness()
        return JSONResponse(body, status_code=200 if alive else 503)

    @routes.get("/readyz")
    def readyz() -> JSONResponse:
        ready, components = health.readiness()
        return JSONResponse(
            {"ready": ready, "components": components}, status_code=200 if ready else 503
        )

    return routes
