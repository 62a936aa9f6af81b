"""The liveness settings: their defaults, where they come from, and bad values refused by
name (canary.settings)."""

from __future__ import annotations

import pytest

from canary.settings import SettingsError, load_settings

DEFAULTS = {
    "kube_timeout_seconds": 10.0,
    "database_timeout_seconds": 5.0,
    "analysis_deadline_seconds": 20.0,
    "prometheus_breaker_failures": 5,
    "prometheus_breaker_cooldown_seconds": 30.0,
    "health_expiry_seconds": 5.0,
    "stall_timeout_seconds": 60.0,
}


def test_the_defaults_bound_every_wait() -> None:
    settings = load_settings()
    assert {name: getattr(settings, name) for name in DEFAULTS} == DEFAULTS
    # a hung dependency shows before the controller is declared stuck
    assert settings.health_expiry_seconds < settings.stall_timeout_seconds
    assert settings.database_timeout_seconds < settings.stall_timeout_seconds


def test_each_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSC_DATABASE_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("KSC_PROMETHEUS_BREAKER_FAILURES", "3")
    monkeypatch.setenv("KSC_STALL_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("KSC_BURST_SECONDS", "30")
    settings = load_settings()
    assert settings.burst_seconds == 30.0
    assert settings.database_timeout_seconds == 2.5
    assert settings.prometheus_breaker_failures == 3
    assert settings.stall_timeout_seconds == 30.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kube_timeout_seconds", 0),
        ("kube_timeout_seconds", 600),
        ("database_timeout_seconds", -1),
        ("analysis_deadline_seconds", 0),
        ("prometheus_breaker_failures", 0),
        ("prometheus_breaker_cooldown_seconds", 0),
        ("health_expiry_seconds", 0),
        ("stall_timeout_seconds", 1),
        ("burst_seconds", 0),
        ("burst_seconds", 601),
    ],
)
def test_a_bad_value_is_refused_by_name(name: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"setting {name}: "):
        load_settings(None, **{name: value})
