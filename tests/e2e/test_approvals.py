"""Approval gates on the full test bed: a regulated model reaches 100 % only under a verified
approval. ServiceNow is the test bed's simulator (testbed/servicenow/), which sends the signed
callback a customer's business rule would; the controller is built as ``canary run`` builds
it, with its webhook receiver on its own HTTP server.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from approvals.signatures import sign
from canary.app import Application
from canary.audit import AuditRecord
from canary.model import Phase
from canary.ops import status_lines, submit_command
from testbed.servicenow.process import ServiceNowSim
from tests.e2e.harness import Env, gated_policy

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"callback-key-for-the-e2e-tests!!").decode()
OTHER = "whsec_" + base64.b64encode(b"someone-else-s-key-0123456789abc").decode()


def _policy(env: Env, gate: str, group: str, **options: Any) -> None:
    (env.policy_dir / "credit.yaml").write_text(gated_policy(gate, group, **options))


@pytest.fixture
def sn_env(knative_env: Env, servicenow: ServiceNowSim) -> tuple[Env, ServiceNowSim]:
    _policy(knative_env, "servicenow", "credit-risk")
    return knative_env, servicenow


def _start(env: Env, sim: ServiceNowSim | None = None, **settings: Any) -> Application:
    if sim is not None:
        settings = {
            "servicenow_url": sim.url,
            "servicenow_user": "kserve-canary",
            "servicenow_password": "integration-password",
            "servicenow_callback_secrets": (SECRET,),
            "approval_poll_seconds": 5.0,
            **settings,
        }
    app = env.start_controller(**settings)
    if sim is not None:
        sim.set_callback(f"{app.url}/webhooks/v1/servicenow", [SECRET])
    return app


def _awaiting(env: Env, v2: str) -> str:
    """Start the credit canary as release-manager; wait for its change; return its number."""
    with env.store() as store:
        started = submit_command(
            store, namespace=env.namespace, name=env.name, command="start",
            actor="release-manager", reason="new credit model", args={"storage_uri": v2},
            wait=30.0,
        )  # fmt: skip
    assert started.state == "accepted", started.result
    env.wait_phase(Phase.AWAITING_APPROVAL)

    def opened() -> bool:
        doc = env.latest()
        return (
            doc is not None
            and doc.state.approval is not None
            and bool(doc.state.approval.change_number)
        )

    env.wait("the change to be opened", opened, deadline=60)
    doc = env.latest()
    assert doc is not None
    assert doc.state.approval is not None
    assert doc.state.approval.change_number is not None
    return doc.state.approval.change_number


def _credit_canary_waiting(env: Env, sim: ServiceNowSim) -> tuple[Application, str]:
    """The credit model v1 serving, the controller running, v2 started and waiting for
    approval under a change: the controller and the change's number."""
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="credit")
    app = _start(env, sim)
    return app, _awaiting(env, v2)


def _change(sim: ServiceNowSim, number: str) -> dict[str, Any]:
    return next(c for c in sim.admin.changes() if c["number"] == number)


def _evidence(record: AuditRecord) -> Any:
    return json.loads(json.dumps(dict(record.entry.evidence)))


def _records(env: Env, action: str) -> list[AuditRecord]:
    return [r for r in env.records() if r.entry.action == action]


def test_servicenow_approval_by_a_risk_owner_promotes_and_closes_the_change(
    sn_env: tuple[Env, ServiceNowSim],
) -> None:
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)

    change = _change(sim, number)
    assert change["state"] == "-3"  # Authorize: the risk owners were asked
    doc = env.latest()
    assert doc is not None
    assert doc.state.target_percent == 50  # held below the gated step while waiting
    with env.store() as store:
        shown = status_lines(store, namespace=env.namespace)[0].approval
    assert shown[0].startswith(f"approval (servicenow): change {number}, pending; deadline ")
    assert shown[1] == "asked: alice, bob (group credit-risk)"

    answer = sim.admin.approve(number, "alice", "evidence reviewed, go")
    assert answer["deliveries"][0]["status"] == 202, answer

    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.SUCCEEDED, done.state.outcome
    verified = _records(env, "approval.verified")
    assert len(verified) == 1
    entry = verified[0].entry
    evidence = _evidence(verified[0])
    assert evidence["change_number"] == number
    assert evidence["change_sys_id"] == change["sys_id"]
    decision = evidence["decision"]
    assert decision["approver_name"] == "alice"
    assert decision["comments"] == "evidence reviewed, go"
    assert decision["webhook_id"].startswith("msg_")
    assert decision["payload_digest"].startswith("sha256:")
    assert entry.actor.kind == "servicenow"
    assert entry.actor.id == "alice"
    # the promotion came after the verified approval
    actions = env.actions(done.state.rollout_id)
    assert actions.index("approval.verified") < actions.index("promoted")

    def closed() -> bool:
        return bool(_change(sim, number)["state"] == "3")

    env.wait("the change to be closed", closed, deadline=30)
    assert _change(sim, number)["close_code"] == "successful"
    assert "Approved" in env.event_reasons()


def test_servicenow_rejection_rolls_back_with_the_comments(
    sn_env: tuple[Env, ServiceNowSim],
) -> None:
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)

    sim.admin.reject(number, "bob", "approval rate shift too large")
    done = env.wait_phase(Phase.ROLLED_BACK, Phase.SUCCEEDED, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.ROLLED_BACK
    rejected = _records(env, "approval.rejected")
    assert len(rejected) == 1
    decision = _evidence(rejected[0])["decision"]
    assert decision["approver_name"] == "bob"
    assert decision["comments"] == "approval rate shift too large"

    env.wait("the change to be closed", lambda: _change(sim, number)["state"] == "3", 30)
    assert _change(sim, number)["close_code"] == "unsuccessful"


def test_approvals_that_break_segregation_of_duties_never_count(
    sn_env: tuple[Env, ServiceNowSim],
) -> None:
    """An outsider's approval and the requester's own approval are recorded as refused and
    the rollout keeps waiting; a risk owner's approval then promotes."""
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)

    sim.admin.approve(number, "mallory", "lgtm", force=True)  # not in credit-risk
    env.wait("the refusal to be recorded", lambda: bool(_records(env, "approval.refused")), 30)
    refused = _evidence(_records(env, "approval.refused")[0])
    assert refused["change_number"] == number
    assert {v["rule"] for v in refused["violations"]} == {"not_in_group"}
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.AWAITING_APPROVAL
    assert "ApprovalRefused" in env.event_reasons()
    assert not _records(env, "approval.verified")


def test_a_forged_callback_changes_nothing(sn_env: tuple[Env, ServiceNowSim]) -> None:
    env, sim = sn_env
    app, number = _credit_canary_waiting(env, sim)
    change = _change(sim, number)

    body = json.dumps(
        {"type": "change.approval",
         "change": {"sys_id": change["sys_id"], "number": number, "approval": "approved"},
         "approver": {"user_name": "alice"}, "comments": "forged"}
    ).encode()  # fmt: skip
    now = int(time.time())
    request = urllib.request.Request(
        f"{app.url}/webhooks/v1/servicenow",
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "webhook-id": "msg_forged1",
            "webhook-timestamp": str(now),
            "webhook-signature": sign(OTHER, "msg_forged1", now, body),
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    env.wait("a poll of the change", lambda: _approval_checked(env), deadline=30)
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.AWAITING_APPROVAL
    assert not _records(env, "approval.verified")


def _approval_checked(env: Env) -> bool:
    with env.store() as store:
        return any(a.last_checked_at is not None for a in store.pending_approvals())


def test_kubernetes_gate_counts_only_a_risk_owner_who_did_not_start_the_rollout(
    knative_env: Env,
) -> None:
    env = knative_env
    _policy(env, "kubernetes", "credit-risk-owners")
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="credit")
    _start(env)
    with env.store() as store:
        started = submit_command(
            store, namespace=env.namespace, name=env.name, command="start",
            actor="rita", actor_groups=("credit-risk-owners",), reason="new credit model",
            args={"storage_uri": v2}, wait=30.0,
        )  # fmt: skip
    assert started.state == "accepted", started.result
    env.wait_phase(Phase.AWAITING_APPROVAL)

    def decide(command: str, actor: str, groups: tuple[str, ...]) -> tuple[str, str | None]:
        with env.store() as store:
            row = submit_command(
                store, namespace=env.namespace, name=env.name, command=command, actor=actor,
                actor_groups=groups, reason="reviewed", wait=30.0,
            )  # fmt: skip
        return row.state, row.result

    state, why = decide("approve", "mallory", ("developers",))
    assert state == "rejected"
    assert "not in the risk-owner group" in (why or "")
    state, why = decide("approve", "rita", ("credit-risk-owners",))
    assert state == "rejected"
    assert "started this rollout" in (why or "")
    assert len(_records(env, "approval.refused")) == 2
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.AWAITING_APPROVAL

    state, why = decide("approve", "alice", ("credit-risk-owners",))
    assert state == "accepted", why
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.SUCCEEDED
    verified = _records(env, "approval.verified")[0].entry
    assert verified.actor.id == "alice"
    assert "credit-risk-owners" in verified.actor.groups


# --- deadlines, duplicates, faults, restarts, late answers ---------------------------------


@pytest.mark.parametrize(
    ("expiry", "phase"), [("rollback", Phase.ROLLED_BACK), ("hold", Phase.PAUSED)]
)
def test_an_approval_that_never_comes_expires_into_the_policys_outcome(
    knative_env: Env, servicenow: ServiceNowSim, expiry: str, phase: Phase
) -> None:
    env, sim = knative_env, servicenow
    _policy(env, "servicenow", "credit-risk", deadline="15s", expiry=expiry)
    _, number = _credit_canary_waiting(env, sim)

    doc = env.wait_phase(phase, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=60)
    assert doc.state.phase is phase
    assert _records(env, "approval.expired")
    assert "ApprovalExpired" in env.event_reasons()
    # the change is cancelled: nobody can approve an expired request into a promotion
    env.wait("the change to be cancelled", lambda: _change(sim, number)["state"] == "4", 30)


@pytest.mark.parametrize("mode", ["twice", "concurrent"])
def test_a_duplicated_callback_is_accepted_once(
    sn_env: tuple[Env, ServiceNowSim], mode: str
) -> None:
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)

    answer = sim.admin.approve(number, "alice", "ok", callback=mode)
    statuses = sorted(d["status"] for d in answer["deliveries"])
    assert statuses == [200, 202], answer  # one accepted, the same webhook-id a duplicate
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.SUCCEEDED
    assert len(_records(env, "approval.verified")) == 1


@pytest.mark.parametrize(("status", "count"), [(500, 6), (429, 6), (503, 12)])
def test_servicenow_failing_holds_the_rollout_and_never_opens_a_second_change(
    sn_env: tuple[Env, ServiceNowSim], status: int, count: int
) -> None:
    env, sim = sn_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="credit")
    _start(env, sim)
    sim.admin.fail_next(status, count=count, retry_after=1)
    number = _awaiting(env, v2)  # opened once ServiceNow answers again
    ours = [c for c in sim.admin.changes() if c["correlation_id"].startswith("kserve-canary:")]
    assert [c["number"] for c in ours] == [number]
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.AWAITING_APPROVAL  # held, never promoted meanwhile
    assert doc.state.target_percent == 50


def test_a_restart_while_awaiting_approval_finds_the_same_change(
    sn_env: tuple[Env, ServiceNowSim],
) -> None:
    env, sim = sn_env
    app, number = _credit_canary_waiting(env, sim)

    app.stop()
    env.app = None
    _start(env, sim, identity="replica-b")
    sim.admin.approve(number, "alice", "approved after the restart")
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.SUCCEEDED
    assert len(sim.admin.changes()) == 1
    assert _evidence(_records(env, "approval.verified")[0])["change_number"] == number


def test_the_requester_cannot_approve_their_own_change(sn_env: tuple[Env, ServiceNowSim]) -> None:
    """The change is requested by the integration user; its approval never counts."""
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)

    sim.admin.approve(number, "kserve-canary", "self-approved", force=True)
    env.wait("the refusal to be recorded", lambda: bool(_records(env, "approval.refused")), 30)
    rules = {v["rule"] for v in _evidence(_records(env, "approval.refused")[0])["violations"]}
    assert "self_approval" in rules
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.AWAITING_APPROVAL


def test_an_approval_after_the_rollback_changes_nothing_and_is_recorded(
    sn_env: tuple[Env, ServiceNowSim],
) -> None:
    env, sim = sn_env
    _, number = _credit_canary_waiting(env, sim)
    sim.admin.reject(number, "bob", "no")
    env.wait_phase(Phase.ROLLED_BACK, deadline=60)
    env.wait("the change to be closed", lambda: _change(sim, number)["state"] == "3", 30)

    answer = sim.admin.approve(number, "alice", "too late", force=True)
    assert answer["deliveries"][0]["status"] == 410, answer
    late = _records(env, "approval.late")
    assert len(late) == 1
    assert _evidence(late[0])["change_number"] == number
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.ROLLED_BACK
    assert not _records(env, "approval.verified")


def _post(app: Application, path: str, body: dict[str, Any], secret: str) -> int:
    data = json.dumps(body).encode()
    now = int(time.time())
    msg = f"msg_{uuid.uuid4().hex[:16]}"
    request = urllib.request.Request(
        f"{app.url}{path}",
        data=data,
        method="POST",
        headers={
            "content-type": "application/json",
            "webhook-id": msg,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(secret, msg, now, data),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_the_signed_webhook_gate_counts_only_the_policys_approvers(knative_env: Env) -> None:
    env = knative_env
    _policy(env, "webhook", "credit-committee",
            approvers=("alice@bank.example", "bob@bank.example"))  # fmt: skip
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="credit")
    app = _start(env, approval_webhook_secrets=(SECRET,))
    with env.store() as store:
        submit_command(
            store, namespace=env.namespace, name=env.name, command="start",
            actor="release-manager", reason="new credit model", args={"storage_uri": v2},
            wait=30.0,
        )  # fmt: skip
    env.wait_phase(Phase.AWAITING_APPROVAL)

    decision = {"type": "approval.decision", "namespace": env.namespace, "name": env.name,
                "decision": "approve", "comment": "ok", "changeId": "CR-77"}  # fmt: skip
    path = "/webhooks/v1/approvals"
    assert _post(app, path, {**decision, "approver": "mallory@bank.example"}, SECRET) == 403
    assert _post(app, path, {**decision, "approver": "ALICE@bank.example"}, OTHER) == 401
    refused = _records(env, "approval.refused")
    assert len(refused) == 1
    assert refused[0].entry.actor.id == "mallory@bank.example"
    assert _post(app, path, {**decision, "approver": "Alice@Bank.example"}, SECRET) == 202
    done = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, deadline=90)
    assert done.state.phase is Phase.SUCCEEDED
    verified = _evidence(_records(env, "approval.verified")[0])
    assert verified["decision"]["approver_name"] == "Alice@Bank.example"
    assert verified["decision"]["webhook_id"].startswith("msg_")
    assert verified["change_number"] == "CR-77"


def test_whoever_changed_the_model_through_the_cluster_cannot_approve_it(knative_env: Env) -> None:
    """A GitOps-style apply: the admission webhook records who sent it (the apiserver's
    userInfo), and that identity's approval does not count."""
    env = knative_env
    _policy(env, "kubernetes", "credit-risk-owners")
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="credit")
    _start(env, webhook=True)
    env.patch({"spec": {"predictor": {"model": {"storageUri": v2}}}})
    env.wait_phase(Phase.AWAITING_APPROVAL)
    admitted = _records(env, "model.change_admitted")
    assert len(admitted) == 1
    who = admitted[0].entry.actor
    assert _evidence(admitted[0])["storage_uris"] == [v2]

    with env.store() as store:
        row = submit_command(
            store, namespace=env.namespace, name=env.name, command="approve", actor=who.id,
            actor_groups=("credit-risk-owners",), reason="my own change", wait=30.0,
        )  # fmt: skip
    assert row.state == "rejected"
    assert "started this rollout" in (row.result or "")
    doc = env.latest()
    assert doc is not None
    assert doc.state.started_by == who.id
    assert doc.state.phase is Phase.AWAITING_APPROVAL
