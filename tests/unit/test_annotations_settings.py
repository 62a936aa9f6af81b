"""Opt-in annotations and controller settings."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from canary.annotations import AnnotationError, OptIn, parse_annotations, parse_enabled
from canary.log import configure_logging, get_logger
from canary.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, OptIn(enabled=False)),
        (None, OptIn(enabled=False)),
        ({"kserve-canary.io/enabled": "true"}, OptIn(enabled=True)),
        ({"kserve-canary.io/enabled": "false"}, OptIn(enabled=False)),
        (
            {"kserve-canary.io/enabled": "true", "kserve-canary.io/policy": "credit-decisioning"},
            OptIn(enabled=True, policy="credit-decisioning"),
        ),
        (
            {"kserve-canary.io/enabled": "true", "kserve-canary.io/challenger": "scorer-v3"},
            OptIn(enabled=True, challenger="scorer-v3"),
        ),
        (
            {"kserve-canary.io/enabled": "true", "kserve-canary.io/metric-profile": "istio"},
            OptIn(enabled=True, metric_profile="istio"),
        ),
        ({"serving.kserve.io/deploymentMode": "Standard"}, OptIn(enabled=False)),
    ],
)
def test_valid_annotations(annotations: dict[str, str] | None, expected: OptIn) -> None:
    assert parse_annotations(annotations) == expected


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"kserve-canary.io/enabled": "yes"}, "kserve-canary.io/enabled: got 'yes'; allowed: "),
        ({"kserve-canary.io/enabled": "True"}, '"true" or "false"'),
        ({"kserve-canary.io/policy": "Credit_Policy"}, "kserve-canary.io/policy: got"),
        ({"kserve-canary.io/challenger": "9lives"}, "a DNS-1035 label"),
        ({"kserve-canary.io/metric-profile": "datadog"}, "allowed: knative-otel"),
        ({"kserve-canary.io/polciy": "x"}, "kserve-canary.io/polciy: unknown"),
    ],
)
def test_malformed_annotations_name_key_value_and_allowed(
    annotations: dict[str, str], message: str
) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_annotations(annotations)
    assert message in str(caught.value)


def test_every_bad_annotation_is_reported_at_once() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_annotations({"kserve-canary.io/enabled": "1", "kserve-canary.io/policy": "A"})
    assert len(caught.value.problems) == 2


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "database-url: postgresql+psycopg://ksc:hunter2@db/audit\n"
        "namespaces: [fraud, credit]\n"
        "log_level: debug\n"
    )
    monkeypatch.setenv("KSC_LOG_LEVEL", "warning")  # the environment beats the file
    monkeypatch.setenv("KSC_PROMETHEUS_BEARER_TOKEN", "old-secret")
    settings = load_settings(config)
    assert settings.log_level == "warning"
    assert settings.namespaces == ("fraud", "credit")
    token = settings.prometheus_bearer_token
    assert token is not None
    assert token.get_secret_value() == "old-secret"
    assert "hunter2" not in repr(settings)
    assert "old-secret" not in repr(settings)
    assert settings.database_url.get_secret_value().endswith("@db/audit")


def test_settings_errors_name_the_setting_and_hide_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_HTTP_PORT", "99999")
    with pytest.raises(SettingsError, match=r"setting http_port: .*65535.*\(got '99999'\)"):
        load_settings()
    monkeypatch.delenv("KSC_HTTP_PORT")
    config = tmp_path / "c.yaml"
    config.write_text("databse_url: x\n")
    with pytest.raises(SettingsError, match="setting databse_url: unknown setting"):
        load_settings(config)
    config.write_text("- not a mapping\n")
    with pytest.raises(SettingsError, match="must be a mapping"):
        load_settings(config)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize("removed", ["webhook_secrets"])
def test_a_setting_that_did_nothing_is_gone_and_refused_by_name(
    tmp_path: Path, removed: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{removed}: x\n")
    with pytest.raises(SettingsError, match=f"setting {removed}: unknown setting"):
        load_settings(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("servicenow_url: https://sn.example\n", "needs servicenow_user, servicenow_password"),
        (
            "servicenow_url: https://sn.example\nservicenow_auth: oauth-client-credentials\n"
            "servicenow_client_id: c\n",
            "needs servicenow_client_secret",
        ),
        ("servicenow_url: sn.example\nservicenow_user: u\nservicenow_password: p\n", "https://"),
        ("servicenow_callback_secrets: [nope]\n", "secret #1: a webhook secret is written whsec_"),
        ("approval_webhook_secrets: [whsec_!!]\n", "secret #1: the part after whsec_"),
        ("approval_poll_seconds: 1\n", "approval_poll_seconds"),
    ],
)
def test_approval_settings_are_refused_with_the_fix(
    tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(path)


def test_webhook_secrets_come_from_a_comma_list_and_never_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = "whsec_" + base64.b64encode(b"k" * 32).decode()
    two = "whsec_" + base64.b64encode(b"j" * 32).decode()
    monkeypatch.setenv("KSC_SERVICENOW_CALLBACK_SECRETS", f"{one}, {two}")
    settings = load_settings(None)
    assert [s.get_secret_value() for s in settings.servicenow_callback_secrets] == [one, two]
    assert one not in repr(settings)


@pytest.mark.parametrize("environment", ["production", "development"])
def test_logs_carry_dotted_events_and_fields(environment: str) -> None:
    stream = io.StringIO()
    configure_logging(environment, "info", stream=stream)  # type: ignore[arg-type]
    get_logger("engine").info("rollout.step_advanced", rollout="ro-1", percent=25)
    get_logger("engine").debug("rollout.noise")
    out = stream.getvalue()
    assert "rollout.noise" not in out
    if environment == "production":
        record = json.loads(out.strip())
        assert record["event"] == "rollout.step_advanced"
        assert record["percent"] == 25
        assert record["component"] == "engine"
        assert record["level"] == "info"
    else:
        assert "rollout.step_advanced" in out
        assert "percent=25" in out


def test_kserve_disallowed_keys_reach_the_admission_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator lists the keys KServe does not copy onto revisions; the webhook must
    then not treat a change of them as a new revision (no first-step percent injected)."""
    from canary.admission import TemplateRules, knative_template

    monkeypatch.setenv(
        "KSC_KSERVE_ANNOTATION_DISALLOWED", "kserve-canary.io/enabled, kserve-canary.io/policy"
    )
    settings = load_settings(None)
    assert settings.kserve_annotation_disallowed == (
        "kserve-canary.io/enabled",
        "kserve-canary.io/policy",
    )
    rules = TemplateRules.with_extra(settings.kserve_annotation_disallowed)
    base = {
        "metadata": {"annotations": {"kserve-canary.io/policy": "default"}},
        "spec": {"predictor": {"model": {"storageUri": "s3://m/v1"}}},
    }
    changed = {**base, "metadata": {"annotations": {"kserve-canary.io/policy": "fraud"}}}
    assert knative_template(base, rules) == knative_template(changed, rules)
    assert knative_template(base) != knative_template(changed)  # KServe's defaults alone


# --- the one reading of kserve-canary.io/enabled (webhook and controller alike) -------------


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, False),
        ({}, False),
        ({"other": "true"}, False),
        ({"kserve-canary.io/enabled": "true"}, True),
        ({"kserve-canary.io/enabled": "false"}, False),
    ],
)
def test_parse_enabled_accepts_exactly_true_and_false(
    annotations: dict[str, str] | None, expected: bool
) -> None:
    assert parse_enabled(annotations) is expected


@pytest.mark.parametrize(
    "value",
    ["yes", "no", "True", "FALSE", "1", "0", "on", "", " true", "true ", "t", "y", "enabled"],
)
def test_parse_enabled_denies_every_other_value_naming_the_allowed_ones(value: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_enabled({"kserve-canary.io/enabled": value})
    message = str(caught.value)
    assert "kserve-canary.io/enabled" in message
    assert repr(value) in message
    assert '"true" or "false"' in message
    # the controller's full parse says the same thing
    with pytest.raises(AnnotationError) as full:
        parse_annotations({"kserve-canary.io/enabled": value})
    assert full.value.problems == caught.value.problems


# --- the Standard-mode HTTPRoute's parentRefs and hostnames --------------------------------


def test_route_parent_refs_and_hostnames_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "standard-route-parent-refs:\n"
        "  - {name: inference-gateway, namespace: gateways, sectionName: https}\n"
        "  - {name: fraud-predictor, kind: Service, group: '', port: 80}\n"
    )
    monkeypatch.setenv("KSC_STANDARD_ROUTE_HOSTNAMES", "fraud.models.example.com, *.models.local")
    settings = load_settings(config)
    assert [ref.as_ref() for ref in settings.standard_route_parent_refs] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateways",
            "sectionName": "https",
        },
        {"group": "", "kind": "Service", "name": "fraud-predictor", "port": 80},
    ]
    assert settings.standard_route_hostnames == ("fraud.models.example.com", "*.models.local")
    monkeypatch.setenv(
        "KSC_STANDARD_ROUTE_PARENT_REFS", json.dumps([{"name": "gw", "namespace": "infra"}])
    )
    assert [r.name for r in load_settings().standard_route_parent_refs] == ["gw"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"standard_route_hostnames": "Fraud.Example.com"}, "is not a hostname"),
        ({"standard_route_hostnames": "a..b"}, "is not a hostname"),
        ({"standard_route_hostnames": "http://x"}, "is not a hostname"),
        ({"standard_route_parent_refs": [{"namespace": "x"}]}, "standard_route_parent_refs.0.name"),
        ({"standard_route_parent_refs": [{"name": "gw", "port": 0}]}, "port"),
        ({"standard_route_parent_refs": [{"name": "gw", "colour": "x"}]}, "unknown setting"),
    ],
)
def test_bad_route_settings_are_refused_by_name(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert says in str(caught.value)
