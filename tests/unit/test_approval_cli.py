"""`canary approve` and `canary reject` as a risk owner types them: the target forms, the
comment that must come with every decision, what is sent to the operator API, and the exit
code for each answer. The operator API is a stand-in here (the real one, with the test
bed's apiserver deciding, is in tests/integration/test_operator_api.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from approvals.transport import Transport
from canary import remote
from canary.cli import main as canary

API = "http://127.0.0.1:8443"
RITA = "system:serviceaccount:credit:rita"


@dataclass
class OperatorApi:
    """Records what the CLI sent and answers as the operator API would."""

    status: int = 200
    answer: dict[str, Any] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.answer)

    @property
    def sent(self) -> tuple[str, str, dict[str, Any], str | None]:
        (request,) = self.requests
        body = json.loads(request.content)
        return request.method, request.url.path, body, request.headers.get("authorization")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> OperatorApi:
    stand_in = OperatorApi()

    def transport(*args: Any, **kwargs: Any) -> Transport:
        return Transport(*args, **kwargs, http_transport=httpx.MockTransport(stand_in.handle))

    monkeypatch.setattr(remote, "Transport", transport)
    return stand_in


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rita's kubeconfig: her own token, in a context whose namespace is ``credit``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KSC_API_URL", "KSC_API_CA_FILE", "KSC_API_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "rita.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "bank", "cluster": {"server": "https://10.0.0.1:6443"}}],
                "users": [{"name": "rita", "user": {"token": "rita-token"}}],
                "contexts": [
                    {
                        "name": "bank",
                        "context": {"cluster": "bank", "user": "rita", "namespace": "credit"},
                    }
                ],
                "current-context": "bank",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(api: OperatorApi, kubeconfig: Path) -> Invoke:
    def run(*args: str) -> Result:
        return CliRunner().invoke(canary, [*args, "--api-url", API])

    return run


def _accepted(command: str, namespace: str, name: str, result: str) -> dict[str, Any]:
    return {"id": "c-1", "command": command, "namespace": namespace, "name": name,
            "state": "accepted", "result": result,
            "caller": {"username": RITA, "uid": "u-9", "groups": ["risk-owners"]}}  # fmt: skip


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_a_decision_is_sent_with_the_comment_as_its_reason_and_the_caller_s_own_token(
    command: str, api: OperatorApi, invoke: Invoke
) -> None:
    api.answer = _accepted(command, "credit", "decider", f"{command}d by {RITA}")
    result = invoke(command, "decider", "--comment", "RSK-12: back-test and bias review signed")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{command} credit/decider accepted (as {RITA}): {command}d by {RITA}\n"
    )
    method, path, body, authorization = api.sent
    assert (method, path) == ("POST", f"/api/v1/namespaces/credit/rollouts/decider/{command}")
    assert body == {"reason": "RSK-12: back-test and bias review signed", "waitSeconds": 30.0}
    # who decides is for the apiserver to say: the CLI sends no name and no group of its own
    assert authorization == "Bearer rita-token"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (["decider"], "/namespaces/credit/rollouts/decider/"),  # the context's namespace
        (["decider", "-n", "lending"], "/namespaces/lending/rollouts/decider/"),
        (["lending/decider"], "/namespaces/lending/rollouts/decider/"),
        (["lending/decider", "-n", "lending"], "/namespaces/lending/rollouts/decider/"),
    ],
)
def test_the_target_takes_the_same_forms_as_the_other_commands(
    target: list[str], expected: str, api: OperatorApi, invoke: Invoke
) -> None:
    api.answer = _accepted("approve", "lending", "decider", "approved")
    result = invoke("approve", *target, "--comment", "ok", "--wait", "5")
    assert result.exit_code == 0, result.output
    _, path, body, _ = api.sent
    assert path == f"/api/v1{expected}approve"
    assert body["waitSeconds"] == 5.0


def test_reason_is_accepted_as_another_name_for_the_comment(
    api: OperatorApi, invoke: Invoke
) -> None:
    api.answer = _accepted("reject", "credit", "decider", "rejected")
    result = invoke("reject", "decider", "--reason", "fails the fairness threshold")
    assert result.exit_code == 0, result.output
    assert api.sent[2]["reason"] == "fails the fairness threshold"


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_a_decision_without_a_comment_is_refused_before_anything_is_sent(
    command: str, api: OperatorApi, invoke: Invoke
) -> None:
    result = invoke(command, "decider")
    assert result.exit_code == 2
    assert f"{command} needs --comment: say why" in result.stderr
    assert api.requests == []


def test_an_empty_comment_is_refused_naming_the_option(api: OperatorApi, invoke: Invoke) -> None:
    result = invoke("approve", "decider", "--comment", "   ")
    assert result.exit_code == 2
    assert "Invalid value for --comment: must not be empty" in result.stderr
    assert api.requests == []


def test_a_target_in_two_namespaces_at_once_is_refused(api: OperatorApi, invoke: Invoke) -> None:
    result = invoke("approve", "lending/decider", "-n", "credit", "--comment", "ok")
    assert result.exit_code == 2
    assert "names namespace 'lending' but -n says 'credit'" in result.stderr
    assert api.requests == []


@pytest.mark.parametrize(
    ("status", "answer", "code", "message"),
    [
        # the leader refused (today: no approval awaited, or no such rollout)
        (409, {"state": "rejected", "result": "unknown command 'approve'"}, 1,
         "approve credit/decider rejected: unknown command 'approve'"),
        (202, {"state": "pending", "id": "c-7"}, 3, "queued (id c-7) but no leader answered"),
        (403, {"error": f"{RITA} may not approve rollouts.kserve-canary.io 'decider' in "
                        "namespace credit: no RBAC policy matched"}, 4,
         "may not approve rollouts.kserve-canary.io 'decider'"),
        (401, {"error": "the apiserver does not accept this token"}, 4, "does not accept"),
        (400, {"error": "invalid command body: reason: String should have at least 1 character"},
         2, "invalid command body"),
        (503, {"error": "the audit database cannot be reached"}, 3, "cannot be reached"),
    ],
)  # fmt: skip
def test_each_answer_has_the_exit_code_of_the_other_commands(
    status: int, answer: dict[str, Any], code: int, message: str, api: OperatorApi,
    invoke: Invoke,
) -> None:  # fmt: skip
    api.status, api.answer = status, answer
    result = invoke("approve", "decider", "--comment", "RSK-12")
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_the_help_says_where_the_approver_s_identity_comes_from() -> None:
    result = CliRunner().invoke(canary, ["approve", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "from your cluster credentials" in text
    assert "kserve-canary-risk-owner" in text
    assert "--comment is required" in text
