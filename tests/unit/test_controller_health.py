"""Readiness reports that expire and liveness beats with their own timeouts (canary.api.health),
on a fake clock: a dependency that stops answering is not ready a few seconds after its
last answer, and a loop that stops going round fails /healthz."""

from __future__ import annotations

import pytest

from canary.api.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ready_health(clock: Clock) -> Health:
    health = Health(("database", "policies", "watch"), clock=clock)
    health.set_ready("database", True, "reachable", ttl=5.0)
    health.set_ready("policies", True, "loaded")
    health.set_ready("watch", True, "listed")
    return health


@pytest.mark.parametrize(
    ("silence", "ready"),
    [(0.0, True), (4.9, True), (5.0, True), (5.1, False), (60.0, False)],
)
def test_a_report_with_a_ttl_expires_when_not_refreshed(silence: float, ready: bool) -> None:
    clock = Clock()
    health = ready_health(clock)
    clock.now += silence
    ok, report = health.readiness()
    assert ok is ready
    assert report["database"]["ok"] is ready
    if not ready:
        assert report["database"]["detail"].startswith(f"no report for {silence:.1f} s")
        assert "(last: reachable)" in report["database"]["detail"]


def test_a_refreshed_report_stays_valid_and_a_failure_shows_at_once() -> None:
    clock = Clock()
    health = ready_health(clock)
    for _ in range(10):
        clock.now += 3
        health.set_ready("database", True, "reachable", ttl=5.0)
        assert health.readiness()[0]
    health.set_ready("database", False, "connection refused", ttl=5.0)
    ok, report = health.readiness()
    assert not ok
    assert report["database"] == {"ok": False, "detail": "connection refused"}


def test_a_report_without_a_ttl_never_expires() -> None:
    clock = Clock()
    health = ready_health(clock)
    health.set_ready("database", True, "reachable")
    clock.now += 3600
    assert health.readiness()[0]


def test_an_optional_component_that_expires_makes_the_replica_unready() -> None:
    clock = Clock()
    health = ready_health(clock)
    health.set_ready("apiserver", True, "reachable", ttl=5.0)
    clock.now += 4
    health.set_ready("database", True, "reachable", ttl=5.0)
    clock.now += 2
    ok, report = health.readiness()
    assert not ok
    assert not report["apiserver"]["ok"]
    assert report["database"]["ok"]


@pytest.mark.parametrize(
    ("timeout", "silence", "alive"),
    [(None, 119.0, True), (None, 121.0, False), (20.0, 19.0, True), (20.0, 21.0, False)],
)
def test_each_loop_beats_within_its_own_timeout(
    timeout: float | None, silence: float, alive: bool
) -> None:
    clock = Clock()
    health = Health(clock=clock, liveness_timeout=120.0)
    health.heartbeat("worker", timeout)
    health.heartbeat("elector")
    clock.now += silence
    health.heartbeat("elector")
    ok, body = health.liveness()
    assert ok is alive
    if not alive:
        assert body["stale_loops"] == {"worker": silence}


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_ttl_and_timeout_must_be_positive(bad: float) -> None:
    health = Health()
    with pytest.raises(ValueError, match="ttl must be positive"):
        health.set_ready("database", True, ttl=bad)
    with pytest.raises(ValueError, match="timeout must be positive"):
        health.heartbeat("worker", bad)
