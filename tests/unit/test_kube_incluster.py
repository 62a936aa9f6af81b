"""Where the controller's Kubernetes credentials come from (canary.k8s.client): a kubeconfig
when one is given or found, else the pod's ServiceAccount, whose token is read again for
every request so that a token the kubelet rotates is used at once.

Requests go through the whole Kubernetes client down to urllib3's pool manager, which is
replaced by a fake apiserver that records the headers each request carries."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import urllib3
from structlog.testing import capture_logs

from canary.app import build
from canary.k8s.client import NAMESPACE, KubeClient, KubeConfigError, Unauthorized
from canary.metrics import ControllerMetrics
from canary.settings import load_settings
from tests.unit.test_controller_metrics import value as metric_value

ROOT = Path(__file__).resolve().parents[2]
AGENT = "kserve-canary/1.2.3"
SERVICE_HOST = "https://10.96.0.1:443"


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned token shaped like a ServiceAccount's (header.payload.signature)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


def sa_token(namespace: str, name: str, serial: int = 0) -> str:
    return jwt({"sub": f"system:serviceaccount:{namespace}:{name}", "jti": str(serial)})


TOKEN_A = sa_token("canary-system", "kserve-canary", 1)
TOKEN_B = sa_token("canary-system", "kserve-canary", 2)


def kubeconfig(path: Path, user: str, server: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: c, cluster: {{server: "{server}"}}}}]\n'
        f"users: [{{name: {user}, user: {{token: t}}}}]\n"
        f"contexts: [{{name: x, context: {{cluster: c, user: {user}}}}}]\n"
        "current-context: x\n"
    )
    return path


class FakeApiserver:
    """Stands in for urllib3's pool manager: records every request's headers and answers
    200, or 401 when ``accept`` refuses the bearer token."""

    def __init__(
        self,
        accept: Callable[[str], bool] = lambda token: True,
        on_request: Callable[[str], None] = lambda token: None,
    ) -> None:
        self.accept = accept
        self.on_request = on_request
        self.headers: list[dict[str, str]] = []

    @property
    def tokens(self) -> list[str]:
        return [h.get("Authorization", "") for h in self.headers]

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        headers = dict(kwargs.get("headers") or {})
        self.headers.append(headers)
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        self.on_request(token)
        if self.accept(token):
            status, reason = 200, "OK"
            body: dict[str, Any] = {"kind": "Namespace", "metadata": {"name": "default"}}
        else:
            status, reason = 401, "Unauthorized"
            body = {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"}
        return urllib3.HTTPResponse(
            body=io.BytesIO(json.dumps(body).encode()),
            status=status,
            reason=reason,
            headers={"Content-Type": "application/json"},
            preload_content=False,
        )

    def clear(self) -> None:
        pass


def serve(kube: KubeClient, monkeypatch: pytest.MonkeyPatch, apiserver: FakeApiserver) -> None:
    monkeypatch.setattr(kube._api.rest_client, "pool_manager", apiserver)


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A process environment with no kubeconfig anywhere; the returned folder holds the
    ServiceAccount's ``token`` and ``ca.crt`` (the pod environment variables are unset)."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text(TOKEN_A)
    (secrets / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return secrets


def in_pod(monkeypatch: pytest.MonkeyPatch, host: str = "10.96.0.1") -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def connect(secrets: Path, kubeconfig: Path | None = None) -> KubeClient:
    return KubeClient.connect(
        kubeconfig,
        timeout=5.0,
        agent=AGENT,
        token_file=secrets / "token",
        ca_file=secrets / "ca.crt",
    )


# --- which credentials -----------------------------------------------------------------------


def test_a_given_kubeconfig_wins_over_everything_found(
    pod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pod(monkeypatch)
    env = kubeconfig(tmp_path / "env-kubeconfig", "from-env", "https://env:6443")
    monkeypatch.setenv("KUBECONFIG", str(env))
    kubeconfig(tmp_path / "home" / ".kube" / "config", "from-home", "https://home:6443")
    given = kubeconfig(tmp_path / "given", "operator", "https://given:6443")
    with connect(pod, given) as kube:
        assert kube.user == "operator"
        assert kube._api.configuration.host == "https://given:6443"
        assert kube._api.user_agent == AGENT


def test_kubeconfig_from_the_environment_comes_before_the_home_one(
    pod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pod(monkeypatch)
    env = kubeconfig(tmp_path / "env-kubeconfig", "from-env", "https://env:6443")
    monkeypatch.setenv("KUBECONFIG", str(env))
    kubeconfig(tmp_path / "home" / ".kube" / "config", "from-home", "https://home:6443")
    with connect(pod) as kube:
        assert (kube.user, kube._api.configuration.host) == ("from-env", "https://env:6443")


def test_the_home_kubeconfig_comes_before_the_service_account(
    pod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pod(monkeypatch)
    kubeconfig(tmp_path / "home" / ".kube" / "config", "from-home", "https://home:6443")
    with connect(pod) as kube:
        assert (kube.user, kube._api.configuration.host) == ("from-home", "https://home:6443")


def test_without_a_kubeconfig_a_pod_uses_its_service_account(
    pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pod(monkeypatch)
    with connect(pod) as kube:
        assert kube._api.configuration.host == SERVICE_HOST
        assert kube._api.configuration.ssl_ca_cert == str(pod / "ca.crt")
        # the token's own claim (not verified; only a label): what the audit names
        assert kube.user == "system:serviceaccount:canary-system:kserve-canary"
        apiserver = FakeApiserver()
        serve(kube, monkeypatch, apiserver)
        kube.get(NAMESPACE, None, "default")
    assert apiserver.tokens == [f"Bearer {TOKEN_A}"]
    assert apiserver.headers[0]["User-Agent"] == AGENT


def test_an_ipv6_service_host_is_bracketed(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_pod(monkeypatch, host="fd00:10:96::1")
    with connect(pod) as kube:
        assert kube._api.configuration.host == "https://[fd00:10:96::1]:443"


def test_outside_a_pod_without_a_kubeconfig_the_error_names_what_was_tried(
    pod: Path, tmp_path: Path
) -> None:
    with pytest.raises(KubeConfigError) as caught:
        connect(pod)
    message = str(caught.value)
    assert "KUBECONFIG is not set" in message
    assert f"{tmp_path / 'home' / '.kube' / 'config'} does not exist" in message
    assert "KUBERNETES_SERVICE_HOST is not set" in message


@pytest.mark.parametrize("missing", ["token", "ca.crt"])
def test_a_pod_without_its_service_account_files_says_which_is_missing(
    pod: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    in_pod(monkeypatch)
    (pod / missing).unlink()
    with pytest.raises(KubeConfigError, match=re.escape(f"{pod / missing} does not exist")):
        connect(pod)


def test_an_empty_token_is_refused_at_start(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_pod(monkeypatch)
    (pod / "token").write_text("\n")
    with pytest.raises(KubeConfigError, match=re.escape(f"token {pod / 'token'} is empty")):
        connect(pod)


def test_a_missing_kubeconfig_is_an_error_not_a_switch_to_another_identity(
    pod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_pod(monkeypatch)  # the ServiceAccount would work: it must not be used silently
    with pytest.raises(
        KubeConfigError, match=re.escape(f"the kubeconfig {tmp_path / 'nowhere'} does not exist")
    ):
        connect(pod, tmp_path / "nowhere")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    with pytest.raises(
        KubeConfigError,
        match=re.escape(f"KUBECONFIG={tmp_path / 'nowhere'} names no existing file"),
    ):
        connect(pod)


def test_an_empty_kubeconfig_setting_means_none_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSC_KUBECONFIG", "")
    assert load_settings().kubeconfig is None


def test_the_controller_refuses_to_start_without_credentials(pod: Path, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        policy_path=ROOT / "deploy" / "policies",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST is not set"):
        build(settings)
    assert not (tmp_path / "audit.db").exists()  # it stopped before opening anything


# --- the token as it rotates -----------------------------------------------------------------


def in_cluster(secrets: Path) -> KubeClient:
    return KubeClient.in_cluster(
        SERVICE_HOST, token_file=secrets / "token", ca_file=secrets / "ca.crt", agent=AGENT
    )


def test_each_request_carries_the_token_the_file_holds_now(
    pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apiserver = FakeApiserver()
    with in_cluster(pod) as kube:
        serve(kube, monkeypatch, apiserver)
        kube.get(NAMESPACE, None, "default")
        (pod / "token").write_text(TOKEN_B)  # the kubelet rotated it
        kube.get(NAMESPACE, None, "default")
        kube.list(NAMESPACE)
    assert apiserver.tokens == [f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}", f"Bearer {TOKEN_B}"]
    assert {h["User-Agent"] for h in apiserver.headers} == {AGENT}


def test_a_request_refused_while_the_token_rotated_is_sent_again_with_the_new_one(
    pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kubelet_rotates(token: str) -> None:
        if token == TOKEN_A:  # A expired just as it was sent; B is on disk by the answer
            (pod / "token").write_text(TOKEN_B)

    apiserver = FakeApiserver(accept=lambda token: token == TOKEN_B, on_request=kubelet_rotates)
    with in_cluster(pod) as kube:
        serve(kube, monkeypatch, apiserver)
        assert kube.get(NAMESPACE, None, "default")["metadata"]["name"] == "default"
    assert apiserver.tokens == [f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}"]


def test_a_refused_token_that_did_not_change_is_an_error_not_a_retry(
    pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apiserver = FakeApiserver(accept=lambda token: False)
    with in_cluster(pod) as kube:
        serve(kube, monkeypatch, apiserver)
        with pytest.raises(Unauthorized) as caught:
            kube.get(NAMESPACE, None, "default")
    assert caught.value.status == 401
    assert apiserver.tokens == [f"Bearer {TOKEN_A}"]


def test_an_unreadable_token_file_keeps_the_last_token_and_says_so(
    pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apiserver = FakeApiserver()
    with in_cluster(pod) as kube:
        serve(kube, monkeypatch, apiserver)
        (pod / "token").unlink()
        with capture_logs() as logs:
            kube.get(NAMESPACE, None, "default")
            kube.get(NAMESPACE, None, "default")
        (pod / "token").write_text(TOKEN_B)
        kube.get(NAMESPACE, None, "default")
    assert apiserver.tokens == [f"Bearer {TOKEN_A}"] * 2 + [f"Bearer {TOKEN_B}"]
    warnings = [e for e in logs if e["event"] == "kube.token_unreadable"]
    assert len(warnings) == 1  # once, not for every request
    assert str(pod / "token") in warnings[0]["error"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt({"sub": "alice@example.com"}),
        jwt({"sub": "system:serviceaccount:only-a-namespace"}),
        "a.!!!.c",
    ],
)
def test_a_token_that_names_no_service_account_leaves_the_user_unknown(
    pod: Path, token: str
) -> None:
    (pod / "token").write_text(token)
    with in_cluster(pod) as kube:
        assert kube.user is None


@pytest.mark.parametrize(
    ("rotate", "write", "counted"),
    [
        pytest.param(True, True, 1, id="a-write-sent-again-after-a-rotation"),
        pytest.param(True, False, 0, id="a-read-sent-again-is-not-a-write-retry"),
        pytest.param(False, True, 0, id="a-first-time-success"),
    ],
)
def test_a_write_sent_again_after_a_rotation_counts_as_a_write_retry(
    pod: Path, monkeypatch: pytest.MonkeyPatch, rotate: bool, write: bool, counted: int
) -> None:
    def kubelet_rotates(token: str) -> None:
        if rotate and token == TOKEN_A:
            (pod / "token").write_text(TOKEN_B)

    metrics = ControllerMetrics()
    accepted = TOKEN_B if rotate else TOKEN_A
    apiserver = FakeApiserver(accept=lambda token: token == accepted, on_request=kubelet_rotates)
    with in_cluster(pod) as kube:
        kube.count_write_retries(metrics.record_kube_write_retry)
        serve(kube, monkeypatch, apiserver)
        if write:
            kube.patch(NAMESPACE, None, "default", {"metadata": {"labels": {"a": "b"}}})
        else:
            kube.get(NAMESPACE, None, "default")
    assert len(apiserver.tokens) == (2 if rotate else 1)
    assert metric_value(metrics, "kserve_canary_kube_write_retries_total") == counted
