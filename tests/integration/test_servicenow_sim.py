"""The ServiceNow simulator over real HTTP (docs/SERVICENOW.md), as the product's client and
the demo's risk owner will use it: each test gets a fresh simulator process (the
``servicenow`` fixture) and talks to it with httpx, the way a ServiceNow client would.
Callbacks are received by a small HTTP server in the test, and their signatures are checked
with an HMAC computed here, independently of the simulator's signer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.servicenow.admin import AdminError
from testbed.servicenow.process import ServiceNowSim

pytestmark = pytest.mark.integration

INTEGRATION = ("kserve-canary", "integration-password")
CLIENT = {"client_id": "kserve-canary", "client_secret": "kserve-canary-client-secret"}
SECRET = "whsec_" + base64.b64encode(b"a risk owner's business rule key!").decode()
UNAUTHENTICATED = {
    "error": {
        "message": "User Not Authenticated",
        "detail": "Required to provide Auth information",
    },
    "status": "failure",
}
NOT_FOUND = {
    "error": {
        "message": "No Record found",
        "detail": "Record doesn't exist or ACL restricts the record retrieval",
    },
    "status": "failure",
}
TABLE = "/api/now/table"
CHANGE_API = "/api/sn_chg_rest/change/normal"


def client(sim: ServiceNowSim, auth: Any = INTEGRATION, timeout: float = 10) -> httpx.Client:
    return httpx.Client(
        base_url=sim.url, auth=auth, headers={"Accept": "application/json"}, timeout=timeout
    )


def one(api: httpx.Client, table: str, query: str) -> dict[str, Any]:
    answer = api.get(f"{TABLE}/{table}", params={"sysparm_query": query})
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()["result"]
    assert len(records) == 1, records
    return records[0]


def create(api: httpx.Client, correlation_id: str, **fields: str) -> dict[str, Any]:
    group = one(api, "sys_user_group", "name=credit-risk")["sys_id"]
    body = {
        "short_description": "Promote credit-scorer to 100 %",
        "description": "evidence summary",
        "correlation_id": correlation_id,
        "correlation_display": "kserve-canary",
        "assignment_group": group,
        "start_date": "2026-12-05 10:00:00",
        "end_date": "2026-12-05 18:00:00",
        "category": "Software",
        "type": "normal",
        **fields,
    }
    answer = api.post(
        f"{TABLE}/change_request",
        json=body,
        params={"sysparm_exclude_reference_link": "true"},
    )
    assert answer.status_code == 201, answer.text
    record: dict[str, Any] = answer.json()["result"]
    return record


def request_approval(api: httpx.Client, sys_id: str) -> dict[str, Any]:
    answer = api.patch(f"{TABLE}/change_request/{sys_id}", json={"state": "-3"})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["result"]
    return result


def approvers(api: httpx.Client, change_sys_id: str) -> dict[str, dict[str, Any]]:
    """Approver records by user_name."""
    answer = api.get(
        f"{TABLE}/sysapproval_approver",
        params={
            "sysparm_query": f"sysapproval={change_sys_id}",
            "sysparm_exclude_reference_link": "true",
        },
    )
    by_name: dict[str, dict[str, Any]] = {}
    for record in answer.json()["result"]:
        user = api.get(f"{TABLE}/sys_user/{record['approver']}").json()["result"]
        by_name[user["user_name"]] = record
    return by_name


# --- a callback receiver -----------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[Delivery] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                got.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks/servicenow", got)
    finally:
        server.shutdown()
        server.server_close()


def verifies(delivery: Delivery, secret: str) -> bool:
    """Standard Webhooks v1, computed here from the specification, not with the simulator."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = b".".join(
        [
            delivery.headers["webhook-id"].encode(),
            delivery.headers["webhook-timestamp"].encode(),
            delivery.body,
        ]
    )
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.partition(",")[2] for s in delivery.headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, s) for s in offered)


# --- authentication ----------------------------------------------------------------------


def test_basic_auth_accepts_the_right_password_only(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        assert api.get(f"{TABLE}/change_request").json() == {"result": []}
    for auth in [("kserve-canary", "wrong"), ("nobody", "x"), None]:
        with client(servicenow, auth=auth) as api:
            answer = api.get(f"{TABLE}/change_request")
        assert answer.status_code == 401
        assert answer.json() == UNAUTHENTICATED
        assert "WWW-Authenticate" in answer.headers
    with client(servicenow) as api:  # one kept-alive connection
        refused = api.post(f"{TABLE}/change_request", json={"x": "y" * 5000}, auth=("a", "b"))
        assert refused.status_code == 401
        assert api.get(f"{TABLE}/change_request").json() == {"result": []}


def test_oauth_tokens_are_issued_used_expired_and_refreshed(servicenow: ServiceNowSim) -> None:
    with httpx.Client(base_url=servicenow.url, timeout=10) as http:
        issued = http.post(
            "/oauth_token.do",
            data={
                **CLIENT,
                "grant_type": "password",
                "username": INTEGRATION[0],
                "password": INTEGRATION[1],
            },
        )
        assert issued.status_code == 200, issued.text
        token = issued.json()
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "useraccount"
        assert token["expires_in"] == 1799
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert http.get(f"{TABLE}/change_request", headers=bearer).status_code == 200

        assert servicenow.admin.expire_tokens() == 1
        expired = http.get(f"{TABLE}/change_request", headers=bearer)
        assert expired.status_code == 401
        assert expired.json() == UNAUTHENTICATED

        refreshed = http.post(
            "/oauth_token.do",
            data={**CLIENT, "grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        )
        fresh = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert http.get(f"{TABLE}/change_request", headers=fresh).status_code == 200

        machine = http.post("/oauth_token.do", data={**CLIENT, "grant_type": "client_credentials"})
        as_client = {"Authorization": f"Bearer {machine.json()['access_token']}"}
        assert http.get(f"{TABLE}/change_request", headers=as_client).status_code == 200

        refused = http.post(
            "/oauth_token.do",
            data={**CLIENT, "client_secret": "guess", "grant_type": "client_credentials"},
        )
        assert refused.status_code == 401
        assert "access_token" not in refused.json()
        unknown = http.get(f"{TABLE}/change_request", headers={"Authorization": "Bearer forged"})
        assert unknown.status_code == 401


# --- creating and finding changes --------------------------------------------------------


def test_the_table_api_creates_a_change_of_plain_strings(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        me = one(api, "sys_user", "user_name=kserve-canary")["sys_id"]
        change = create(api, "kserve-canary:r1:3")
        assert re.fullmatch(r"CHG\d{7}", change["number"])
        assert re.fullmatch(r"[0-9a-f]{32}", change["sys_id"])
        assert change["state"] == "-5"
        assert change["approval"] == "not requested"
        assert change["requested_by"] == me
        assert change["correlation_id"] == "kserve-canary:r1:3"
        assert change["start_date"] == "2026-12-05 10:00:00"
        assert change["close_code"] == ""
        assert all(isinstance(v, str) for v in change.values())
        # without sysparm_exclude_reference_link, references carry a link
        read = api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]
        group = read["assignment_group"]
        assert group["value"] == change["assignment_group"]
        assert group["link"].endswith(f"/api/now/table/sys_user_group/{group['value']}")
        shown = api.get(
            f"{TABLE}/change_request/{change['sys_id']}",
            params={
                "sysparm_display_value": "true",
                "sysparm_exclude_reference_link": "true",
                "sysparm_fields": "number,state,approval,assignment_group",
            },
        ).json()["result"]
        assert shown == {
            "number": change["number"],
            "state": "New",
            "approval": "Not Yet Requested",
            "assignment_group": "credit-risk",
        }


def test_the_change_management_api_wraps_every_field(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        group = one(api, "sys_user_group", "name=credit-risk")["sys_id"]
        answer = api.post(
            CHANGE_API,
            json={
                "short_description": "Promote",
                "correlation_id": "kserve-canary:r2:3",
                "assignment_group": group,
            },
        )
        assert answer.status_code == 200, answer.text
        change = answer.json()["result"]
        assert change["state"] == {"value": "-5", "display_value": "New"}
        assert change["assignment_group"] == {"value": group, "display_value": "credit-risk"}
        assert re.fullmatch(r"CHG\d{7}", change["number"]["value"])
        sys_id = change["sys_id"]["value"]
        patched = api.patch(f"{CHANGE_API}/{sys_id}", json={"state": -3}).json()["result"]
        assert patched["state"] == {"value": "-3", "display_value": "Authorize"}
        assert patched["approval"]["value"] == "requested"
        # the same record through the Table API
        assert api.get(f"{TABLE}/change_request/{sys_id}").json()["result"]["state"] == "-3"


def test_a_change_is_found_again_by_its_correlation_id(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        wanted = create(api, "kserve-canary:r3:3")
        create(api, "kserve-canary:r3:4")
        params = {
            "sysparm_query": "correlation_id=kserve-canary:r3:3^ORDERBYDESCsys_created_on",
            "sysparm_limit": "1",
        }
        found = api.get(f"{TABLE}/change_request", params=params).json()["result"]
        assert [c["sys_id"] for c in found] == [wanted["sys_id"]]
        params["sysparm_query"] = "correlation_id=kserve-canary:nothing:3"
        assert api.get(f"{TABLE}/change_request", params=params).json() == {"result": []}


def test_work_notes_are_journaled_not_shown_on_the_change(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        change = create(api, "kserve-canary:r4:3")
        for note in ("step 1: 5xx non-inferior", "step 2: latency non-inferior"):
            answer = api.patch(
                f"{TABLE}/change_request/{change['sys_id']}", json={"work_notes": note}
            )
            assert answer.status_code == 200
            assert answer.json()["result"]["work_notes"] == ""
        journal = api.get(
            f"{TABLE}/sys_journal_field",
            params={
                "sysparm_query": f"element_id={change['sys_id']}^element=work_notes"
                "^ORDERBYsys_created_on"
            },
        ).json()["result"]
        assert [entry["value"] for entry in journal] == [
            "step 1: 5xx non-inferior",
            "step 2: latency non-inferior",
        ]


# --- approvals ---------------------------------------------------------------------------


def test_requesting_approval_asks_each_member_of_the_group(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        change = create(api, "kserve-canary:r5:3")
        updated = request_approval(api, change["sys_id"])
        assert (updated["state"], updated["approval"]) == ("-3", "requested")
        asked = approvers(api, change["sys_id"])
        assert set(asked) == {"alice", "bob"}
        assert {r["state"] for r in asked.values()} == {"requested"}
        assert {r["sysapproval"] for r in asked.values()} == {change["sys_id"]}
        group = change["assignment_group"]
        for user_name, member in (("alice", True), ("mallory", False)):
            user = one(api, "sys_user", f"user_name={user_name}")
            assert set(user) >= {"sys_id", "user_name", "name", "email"}
            rows = api.get(
                f"{TABLE}/sys_user_grmember",
                params={"sysparm_query": f"group={group}^user={user['sys_id']}"},
            ).json()["result"]
            assert bool(rows) is member


def test_an_approval_schedules_the_change_and_sends_a_signed_callback(
    servicenow: ServiceNowSim, receiver: Receiver
) -> None:
    servicenow.set_callback(receiver.url, [SECRET])
    with client(servicenow) as api:
        change = create(api, "kserve-canary:r6:3")
        request_approval(api, change["sys_id"])
        answer = servicenow.admin.approve(change["number"], "alice", "evidence is convincing")
        assert [d["status"] for d in answer["deliveries"]] == [204]
        read = api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]
        assert (read["state"], read["approval"]) == ("-2", "approved")
        asked = approvers(api, change["sys_id"])
        assert asked["alice"]["state"] == "approved"
        assert asked["alice"]["comments"] == "evidence is convincing"
        assert asked["bob"]["state"] == "cancelled"
        alice = one(api, "sys_user", "user_name=alice")["sys_id"]
    assert len(receiver.deliveries) == 1
    delivery = receiver.deliveries[0]
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["webhook-timestamp"].isdigit()
    assert verifies(delivery, SECRET)
    assert not verifies(delivery, "whsec_" + base64.b64encode(b"another key").decode())
    assert json.loads(delivery.body) == {
        "type": "change.approval",
        "change": {
            "sys_id": change["sys_id"],
            "number": change["number"],
            "approval": "approved",
            "state": "-2",
        },
        "approver": {"sys_id": alice, "user_name": "alice"},
        "comments": "evidence is convincing",
        "correlation_id": "kserve-canary:r6:3",
    }


def test_a_rejection_sends_the_change_back_to_new(
    servicenow: ServiceNowSim, receiver: Receiver
) -> None:
    servicenow.set_callback(receiver.url, [SECRET])
    with client(servicenow) as api:
        change = create(api, "kserve-canary:r7:3")
        request_approval(api, change["sys_id"])
        servicenow.admin.reject(change["number"], "bob", "latency evidence too thin")
        read = api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]
        assert (read["state"], read["approval"]) == ("-5", "rejected")
        assert approvers(api, change["sys_id"])["bob"]["state"] == "rejected"
    (delivery,) = receiver.deliveries
    assert verifies(delivery, SECRET)
    body = json.loads(delivery.body)
    assert body["change"]["approval"] == "rejected"
    assert body["comments"] == "latency evidence too thin"


@pytest.mark.parametrize("mode", ["twice", "concurrent"])
def test_a_duplicate_delivery_repeats_the_same_signed_message(
    servicenow: ServiceNowSim, receiver: Receiver, mode: str
) -> None:
    servicenow.set_callback(receiver.url, [SECRET])
    with client(servicenow) as api:
        change = create(api, f"kserve-canary:dup-{mode}:3")
        request_approval(api, change["sys_id"])
    servicenow.admin.approve(change["number"], "alice", callback=mode)
    first, second = receiver.deliveries
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert verifies(first, SECRET)
    assert verifies(second, SECRET)


def test_a_forged_callback_does_not_verify_and_none_sends_nothing(
    servicenow: ServiceNowSim, receiver: Receiver
) -> None:
    servicenow.set_callback(receiver.url, [SECRET])
    with client(servicenow) as api:
        forged, silent = create(api, "kserve-canary:f:3"), create(api, "kserve-canary:s:3")
        request_approval(api, forged["sys_id"])
        request_approval(api, silent["sys_id"])
    servicenow.admin.approve(forged["number"], "alice", callback="forged")
    (delivery,) = receiver.deliveries
    assert not verifies(delivery, SECRET)
    servicenow.admin.approve(silent["number"], "alice", callback="none")
    assert len(receiver.deliveries) == 1  # polling must find this one
    with client(servicenow) as api:
        read = api.get(f"{TABLE}/change_request/{silent['sys_id']}").json()["result"]
    assert read["approval"] == "approved"


def test_an_outsider_approves_only_when_forced(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        change = create(api, "kserve-canary:r8:3")
        request_approval(api, change["sys_id"])
        with pytest.raises(AdminError) as refused:
            servicenow.admin.approve(change["number"], "mallory")
        assert refused.value.status == 409
        assert "not an approver" in str(refused.value)
        assert (
            api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]["approval"]
            == "requested"
        )
        servicenow.admin.approve(change["number"], "mallory", force=True)
        assert approvers(api, change["sys_id"])["mallory"]["state"] == "approved"


def test_states_can_be_answered_as_numbers(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        change = create(api, "kserve-canary:numbers:3")
        servicenow.admin.numeric_state()
        read = api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]
        assert read["state"] == -5
        servicenow.admin.numeric_state(False)
        read = api.get(f"{TABLE}/change_request/{change['sys_id']}").json()["result"]
        assert read["state"] == "-5"


# --- closing -----------------------------------------------------------------------------


def test_closing_and_cancelling_end_the_change(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        done, dropped = create(api, "kserve-canary:c1:3"), create(api, "kserve-canary:c2:3")
        request_approval(api, done["sys_id"])
        servicenow.admin.approve(done["number"], "alice")
        closed = api.patch(
            f"{TABLE}/change_request/{done['sys_id']}",
            json={"state": "3", "close_code": "successful", "close_notes": "promoted"},
        ).json()["result"]
        assert (closed["state"], closed["close_code"], closed["active"]) == (
            "3",
            "successful",
            "false",
        )
        request_approval(api, dropped["sys_id"])
        cancelled = api.patch(
            f"{TABLE}/change_request/{dropped['sys_id']}",
            json={"state": 4, "close_notes": "rolled back"},
        ).json()["result"]
        assert cancelled["state"] == "4"
        assert {r["state"] for r in approvers(api, dropped["sys_id"]).values()} == {"cancelled"}
        reopened = api.patch(f"{TABLE}/change_request/{done['sys_id']}", json={"state": "-3"})
        assert reopened.status_code == 403
        assert reopened.json()["status"] == "failure"


# --- errors ------------------------------------------------------------------------------


def test_errors_come_in_servicenows_shape(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        missing = api.get(f"{TABLE}/change_request/{'0' * 32}")
        assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
        missing_patch = api.patch(f"{CHANGE_API}/{'0' * 32}", json={"work_notes": "x"})
        assert (missing_patch.status_code, missing_patch.json()) == (404, NOT_FOUND)
        change = create(api, "kserve-canary:e:3")
        url = f"{TABLE}/change_request/{change['sys_id']}"
        cases = [
            (api.patch(url, json={"state": "banana"}), 400),
            (api.patch(url, json={"state": 7}), 400),
            (api.patch(url, json={"state": "-2"}), 403),  # not approved
            (api.patch(url, json={"state": "3", "close_code": "great", "close_notes": "x"}), 400),
            (
                api.patch(url, content=b"{not json", headers={"Content-Type": "application/json"}),
                400,
            ),
            (api.get(f"{TABLE}/change_request", params={"sysparm_query": "state!=3"}), 400),
            (api.get(f"{TABLE}/no_such_table"), 400),
        ]
        for answer, status in cases:
            assert answer.status_code == status, answer.text
            error = answer.json()
            assert error["status"] == "failure"
            assert error["error"]["message"]
            assert error["error"]["detail"]
        assert api.get(url).json()["result"]["state"] == "-5"


# --- faults and counts -------------------------------------------------------------------


def test_faults_on_demand_and_request_counts(servicenow: ServiceNowSim) -> None:
    admin = servicenow.admin
    with client(servicenow) as api:
        admin.fail_next(429, retry_after=7)
        limited = api.get(f"{TABLE}/change_request")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
        assert limited.json()["status"] == "failure"
        assert api.get(f"{TABLE}/change_request").status_code == 200

        admin.fail_next(500, count=2, path_prefix=f"{TABLE}/change_request")
        failing = [api.post(f"{TABLE}/change_request", json={}).status_code for _ in range(2)]
        assert failing == [500, 500]
        create(api, "kserve-canary:fault:3")  # the third attempt gets through

        admin.fail_next(503)
        assert api.get(f"{TABLE}/sys_user").status_code == 503

    admin.hang_next(2.0)
    with client(servicenow, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(f"{TABLE}/change_request")

    counts = admin.counts()
    assert counts["POST /api/now/table/change_request"] == 3
    assert len(admin.changes()) == 1  # the two refused attempts created nothing
    assert counts["GET /api/now/table/change_request"] == 3
    admin.reset_counts()
    assert admin.counts() == {}


# --- persistence -------------------------------------------------------------------------


def test_a_restarted_simulator_keeps_changes_approvers_and_tokens(
    servicenow: ServiceNowSim,
) -> None:
    with httpx.Client(base_url=servicenow.url, timeout=10) as http:
        token = http.post(
            "/oauth_token.do",
            data={
                **CLIENT,
                "grant_type": "password",
                "username": INTEGRATION[0],
                "password": INTEGRATION[1],
            },
        ).json()["access_token"]
    with client(servicenow) as api:
        change = create(api, "kserve-canary:restart:3")
        request_approval(api, change["sys_id"])
        api.patch(f"{TABLE}/change_request/{change['sys_id']}", json={"work_notes": "before"})
    servicenow.restart()
    with client(servicenow, auth=None) as api:
        api.headers["Authorization"] = f"Bearer {token}"
        found = one(api, "change_request", "correlation_id=kserve-canary:restart:3")
        assert (found["sys_id"], found["state"], found["approval"]) == (
            change["sys_id"],
            "-3",
            "requested",
        )
        assert set(approvers(api, change["sys_id"])) == {"alice", "bob"}
        assert create(api, "kserve-canary:restart:4")["number"] != change["number"]
    servicenow.admin.approve(change["number"], "alice")
    assert servicenow.admin.changes()[0]["approval"] == "approved"


# --- the risk owner's command ------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "testbed", "servicenow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_risk_owner_approves_from_the_command_line(servicenow: ServiceNowSim) -> None:
    with client(servicenow) as api:
        change = create(api, "kserve-canary:cli:3")
        request_approval(api, change["sys_id"])
    listed = run_cli("list", "--url", servicenow.url)
    assert listed.returncode == 0, listed.stderr
    assert change["number"] in listed.stdout
    assert "alice: requested" in listed.stdout

    outsider = run_cli("approve", change["number"], "--as", "mallory", "--url", servicenow.url)
    assert outsider.returncode == 1
    assert "not an approver" in outsider.stderr

    approved = run_cli(
        "approve", change["number"], "--as", "alice", "--comment", "ok", "--url", servicenow.url
    )
    assert approved.returncode == 0, approved.stderr
    assert f"{change['number']} approved by alice" in approved.stdout
    assert servicenow.admin.changes()[0]["state"] == "-2"

    unknown = run_cli("reject", "CHG9999999", "--as", "alice", "--url", servicenow.url)
    assert unknown.returncode == 1
    down = run_cli("list", "--url", "http://127.0.0.1:9")
    assert down.returncode == 3
