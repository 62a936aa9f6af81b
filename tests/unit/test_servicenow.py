"""The ServiceNow client against scripted answers (httpx.MockTransport through the transport):
each test lists exactly the requests ServiceNow receives and what it answers, so a second
POST, a missing retry or an extra wait fails the test. The clock and sleep are fakes: no test
waits."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from approvals.servicenow import (
    BasicAuth,
    ChangeApi,
    OAuthClientCredentials,
    OAuthPassword,
    RetryPolicy,
    ServiceNowAuth,
    ServiceNowClient,
    ServiceNowError,
    change_fields,
)
from approvals.transport import Transport
from approvals.types import (
    ApproverState,
    Change,
    ChangeApproval,
    ChangeDraft,
    ChangeState,
    CloseCode,
    Group,
)

CHANGE = "c" * 32
GROUP = "9" * 32
REQUESTER = "1" * 32
ALICE = "a" * 32
BOB = "b" * 32
CORRELATION = "kserve-canary:ro-42:100"
TABLE = "/api/now/table/change_request"
CHANGE_API = "/api/sn_chg_rest/change/normal"
TOKEN = "/oauth_token.do"
START = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
END = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)

Reply = httpx.Response | Exception


@dataclass
class FakeServiceNow:
    """Answers the scripted (method, path) requests in order, and keeps what it received."""

    script: list[tuple[str, str, Reply]]
    received: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        assert self.script, f"unexpected request {request.method} {request.url}"
        method, path, reply = self.script.pop(0)
        assert (request.method, request.url.path) == (method, path), (
            f"expected {method} {path}, got {request.method} {request.url.path}"
        )
        if isinstance(reply, Exception):
            raise reply
        # A fresh response each time: one scripted answer may be given more than once.
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    def bodies(self, method: str) -> list[Any]:
        return [json.loads(r.content) for r in self.received if r.method == method]


@dataclass
class FakeTime:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(
    script: list[tuple[str, str, Reply]],
    auth: ServiceNowAuth | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[ServiceNowClient, FakeServiceNow, FakeTime]:
    fake = FakeServiceNow(script)
    time = FakeTime()
    transport = Transport("https://acme.service-now.com", http_transport=httpx.MockTransport(fake))
    client = ServiceNowClient(
        transport,
        auth or BasicAuth("kserve-canary", "s3cret"),
        timeout=3.0,
        retry=retry,
        clock=time.clock,
        sleep=time.sleep,
    )
    return client, fake, time


def record(**override: Any) -> dict[str, Any]:
    """A change_request as the Table API answers it (plain strings)."""
    base: dict[str, Any] = {
        "sys_id": CHANGE,
        "number": "CHG0030001",
        "state": "-5",
        "approval": "not requested",
        "correlation_id": CORRELATION,
        "correlation_display": "kserve-canary",
        "assignment_group": GROUP,
        "requested_by": REQUESTER,
        "start_date": "2026-12-05 17:00:00",
        "end_date": "2026-12-06 01:00:00",
        "close_code": "",
        "type": "normal",
    }
    return base | override


def wrapped(fields: dict[str, Any]) -> dict[str, Any]:
    """The Change Management API's shape: every field as value and display value."""
    return {k: {"value": v, "display_value": f"shown {v}"} for k, v in fields.items()}


def ok(result: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"result": result}, headers=headers)


def failure(status: int, message: str, detail: str = "", **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return httpx.Response(status, json=body, headers=headers)


def draft() -> ChangeDraft:
    return ChangeDraft(
        short_description="Promote credit-scorer to revision 00007",
        description="kserve-canary asks to promote a canary that passed its analysis.",
        correlation_id=CORRELATION,
        model="credit-scorer",
        inference_service="risk/credit-scorer",
        old_storage_uri="s3://models/credit/v6",
        new_storage_uri="s3://models/credit/v7",
        old_revision="credit-scorer-predictor-00006",
        new_revision="credit-scorer-predictor-00007",
        policy="credit-decisioning",
        evidence=("error-rate: non-inferior, 41210 vs 40987 requests",),
        audit_links=("https://canary.example/api/v1/audit/1234",),
        assignment_group=GROUP,
        planned_start=START,
        planned_end=END,
    )


NONE_FOUND = ("GET", TABLE, ok([]))
GROUPS = "/api/now/table/sys_user_group"
MEMBERS = "/api/now/table/sys_user_grmember"
CREDIT_RISK = {"sys_id": GROUP, "name": "credit-risk"}
NOT_FOUND_DETAIL = "Record doesn't exist or ACL restricts the record retrieval"

# ------------------------------------------------------------------------------------------
# opening a change
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "path", "created"),
    [
        ("change", CHANGE_API, ok(wrapped(record()))),
        ("table", TABLE, ok(record(), status=201)),
    ],
    ids=["change-api-value-objects", "table-api-plain-strings"],
)
def test_open_change_creates_one_when_none_exists(
    api: ChangeApi, path: str, created: httpx.Response
) -> None:
    client, fake, time = make([NONE_FOUND, ("POST", path, created)])
    change = client.open_change(draft(), api=api)
    assert change == Change(
        sys_id=CHANGE,
        number="CHG0030001",
        state=ChangeState.NEW,
        approval=ChangeApproval.NOT_REQUESTED,
        correlation_id=CORRELATION,
        assignment_group=GROUP,
        requested_by=REQUESTER,
        planned_start=START,
        planned_end=END,
        close_code=None,
    )
    lookup = fake.received[0].url.params
    assert lookup["sysparm_query"] == f"correlation_id={CORRELATION}^ORDERBYDESCsys_created_on"
    assert lookup["sysparm_limit"] == "1"
    (sent,) = fake.bodies("POST")
    assert sent["correlation_id"] == CORRELATION
    assert sent["assignment_group"] == GROUP
    assert (sent["start_date"], sent["end_date"]) == ("2026-12-05 17:00:00", "2026-12-06 01:00:00")
    assert sent.get("type") == ("normal" if api == "table" else None)
    assert "s3://models/credit/v7" in sent["description"]
    assert "41210 vs 40987" in sent["risk_impact_analysis"]
    assert fake.received[1].headers["authorization"] == "Basic a3NlcnZlLWNhbmFyeTpzM2NyZXQ="
    assert time.slept == []


@pytest.mark.parametrize("shape", [record, lambda: wrapped(record())], ids=["plain", "wrapped"])
def test_open_change_finds_the_existing_change_and_does_not_post(
    shape: Callable[[], dict[str, Any]],
) -> None:
    client, fake, _ = make([("GET", TABLE, ok([shape()]))])
    change = client.open_change(draft())
    assert change.number == "CHG0030001"
    assert [r.method for r in fake.received] == ["GET"]


def test_a_lost_answer_to_the_create_is_found_again_not_created_twice() -> None:
    client, fake, time = make(
        [
            NONE_FOUND,
            ("POST", CHANGE_API, httpx.ReadTimeout("timed out")),
            ("GET", TABLE, ok([record()])),  # the first POST did create it
        ]
    )
    assert client.open_change(draft()).sys_id == CHANGE
    assert [r.method for r in fake.received] == ["GET", "POST", "GET"]
    assert time.slept == [0.5]


def test_a_failed_create_is_tried_again_after_looking_again() -> None:
    client, fake, time = make(
        [
            NONE_FOUND,
            ("POST", TABLE, failure(503, "Service Unavailable")),
            NONE_FOUND,
            ("POST", TABLE, ok(record(), status=201)),
        ]
    )
    assert client.open_change(draft(), api="table").number == "CHG0030001"
    assert len(fake.bodies("POST")) == 2
    assert time.slept == [0.5]


def test_a_change_created_without_our_correlation_id_is_an_error() -> None:
    client, _, _ = make([NONE_FOUND, ("POST", CHANGE_API, ok(wrapped(record(correlation_id=""))))])
    with pytest.raises(ServiceNowError, match="created without our correlation id"):
        client.open_change(draft())


def test_an_ignored_query_is_not_taken_for_our_change() -> None:
    client, _, _ = make([("GET", TABLE, ok([record(correlation_id="someone-else")]))])
    with pytest.raises(ServiceNowError, match="got CHG0030001 with 'someone-else'"):
        client.find_change(CORRELATION)


def test_change_fields_describe_the_rollout() -> None:
    fields = change_fields(draft())
    assert fields["short_description"] == "Promote credit-scorer to revision 00007"
    assert fields["correlation_display"] == "kserve-canary"
    assert fields["category"] == "Software"
    assert "credit-scorer-predictor-00006 (s3://models/credit/v6)" in fields["backout_plan"]
    assert "https://canary.example/api/v1/audit/1234" in fields["description"]
    assert "Policy: credit-decisioning" in fields["description"]
    assert "requested_by" not in fields


# ------------------------------------------------------------------------------------------
# values as ServiceNow sends them
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("-2", ChangeState.SCHEDULED),
        (-2, ChangeState.SCHEDULED),
        ("3", ChangeState.CLOSED),
        (3.0, ChangeState.CLOSED),
        ("3.0", ChangeState.CLOSED),
        ({"value": "-3", "display_value": "Authorize"}, ChangeState.AUTHORIZE),
        (" 0 ", ChangeState.REVIEW),
    ],
)
def test_states_are_read_in_every_shape(value: Any, state: ChangeState) -> None:
    client, _, _ = make([("GET", f"{TABLE}/{CHANGE}", ok(record(state=value)))])
    assert client.read_change(CHANGE).state is state


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"state": "7"}, "unknown change state '7'"),
        ({"state": "2.5"}, "not a whole number"),
        ({"state": "Scheduled"}, "not a number"),
        ({"state": True}, "not a number"),
        ({"state": ""}, "not a number"),
        ({"approval": "notrequested"}, "unknown change approval"),
        ({"approval": "Approved"}, "unknown change approval"),
        ({"close_code": "done"}, "unknown close code"),
        ({"sys_id": "C" * 32}, "not a ServiceNow sys_id"),
        ({"requested_by": "admin"}, "not a ServiceNow sys_id"),
        ({"start_date": "2026-12-05T17:00:00Z"}, "is not a date-time"),
        ({"number": ""}, "number"),
        ({"state": {"display_value": "New"}}, "without 'value'"),
    ],
)
def test_a_malformed_change_is_an_error_not_a_guess(override: dict[str, Any], problem: str) -> None:
    client, _, _ = make([("GET", f"{TABLE}/{CHANGE}", ok(record(**override)))])
    with pytest.raises(ServiceNowError, match="malformed answer for a change") as raised:
        client.read_change(CHANGE)
    assert problem in raised.value.detail


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(200, content=b"<html>login</html>"), "the answer is not JSON"),
        (httpx.Response(200, json={"results": {}}), "no 'result' object"),
        (httpx.Response(200, json=[1, 2]), "no 'result' object"),
        (ok([record()]), "no 'result' object"),
    ],
)
def test_a_malformed_answer_is_an_error(answer: httpx.Response, message: str) -> None:
    client, _, _ = make([("GET", f"{TABLE}/{CHANGE}", answer)])
    with pytest.raises(ServiceNowError, match=message):
        client.read_change(CHANGE)


# ------------------------------------------------------------------------------------------
# errors, retries, timeouts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "message", "detail"),
    [
        (
            failure(404, "No Record found", NOT_FOUND_DETAIL),
            404,
            "No Record found",
            NOT_FOUND_DETAIL,
        ),
        (failure(400, "Invalid value for state", "state: 9"), 400, "Invalid value for state",
         "state: 9"),
        (failure(403, "Operation Failed", ""), 403, "Operation Failed", ""),
        (httpx.Response(400, content=b"Bad request (proxy)"), 400, "HTTP 400",
         "Bad request (proxy)"),
        (httpx.Response(404, content=b'{"status": "failure"}'), 404, "HTTP 404",
         '{"status": "failure"}'),
    ],
)  # fmt: skip
def test_servicenow_error_shape_becomes_a_clear_error(
    answer: httpx.Response, status: int, message: str, detail: str
) -> None:
    client, fake, time = make([("GET", f"{TABLE}/{CHANGE}", answer)])
    with pytest.raises(ServiceNowError) as raised:
        client.read_change(CHANGE)
    error = raised.value
    assert (error.status, error.detail, error.retryable) == (status, detail, False)
    assert error.message.endswith(message)
    assert f"[HTTP {status}]" in str(error)
    assert len(fake.received) == 1
    assert time.slept == []


@pytest.mark.parametrize(
    ("retry_after", "slept"),
    [("7", [7.0]), ("0", [0.0]), ("1000", [60.0]), ("Wed, 21 Oct 2026 07:28:00 GMT", [0.5])],
    ids=["seconds", "zero", "capped", "http-date-uses-backoff"],
)
def test_429_waits_for_retry_after_then_succeeds(retry_after: str, slept: list[float]) -> None:
    busy = failure(429, "Too many requests", **{"Retry-After": retry_after})
    client, _, time = make(
        [
            ("GET", f"{TABLE}/{CHANGE}", busy),
            ("GET", f"{TABLE}/{CHANGE}", ok(record(state="-3", approval="requested"))),
        ]
    )  # fmt: skip
    assert client.read_change(CHANGE).approval is ChangeApproval.REQUESTED
    assert time.slept == slept


def test_429_beyond_the_call_budget_gives_up_without_waiting() -> None:
    policy = RetryPolicy(budget=30.0)
    client, _, time = make(
        [("GET", f"{TABLE}/{CHANGE}", failure(429, "Too many", **{"Retry-After": "45"}))],
        retry=policy,
    )
    with pytest.raises(ServiceNowError, match="Too many") as raised:
        client.read_change(CHANGE)
    assert "would pass the call's budget of 30 s" in raised.value.detail
    assert raised.value.retryable
    assert time.slept == []


def test_a_create_after_429_is_sent_again_as_it_was_not_processed() -> None:
    client, fake, time = make(
        [
            NONE_FOUND,
            ("POST", CHANGE_API, failure(429, "Too many", **{"Retry-After": "2"})),
            ("POST", CHANGE_API, ok(wrapped(record()))),
        ]
    )
    client.open_change(draft())
    assert len(fake.bodies("POST")) == 2
    assert time.slept == [2.0]


def test_5xx_is_retried_with_backoff_then_gives_up() -> None:
    client, fake, time = make(
        [("GET", f"{TABLE}/{CHANGE}", failure(503, "Service Unavailable"))] * 4
    )
    with pytest.raises(ServiceNowError, match="Service Unavailable") as raised:
        client.read_change(CHANGE)
    assert raised.value.status == 503
    assert raised.value.retryable
    assert "gave up after 4 attempts" in raised.value.detail
    assert time.slept == [0.5, 1.0, 2.0]
    assert len(fake.received) == 4


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("Connection refused"), httpx.ConnectTimeout("timed out"),
     httpx.ReadTimeout("timed out")],
)  # fmt: skip
def test_no_answer_is_retried_then_recovers(error: Exception) -> None:
    client, _, time = make(
        [("GET", f"{TABLE}/{CHANGE}", error), ("GET", f"{TABLE}/{CHANGE}", ok(record()))]
    )
    assert client.read_change(CHANGE).sys_id == CHANGE
    assert time.slept == [0.5]


def test_every_request_carries_the_timeout() -> None:
    client, fake, _ = make([("GET", f"{TABLE}/{CHANGE}", ok(record()))])
    client.read_change(CHANGE)
    timeout = fake.received[0].extensions["timeout"]
    assert timeout == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}


def test_timeouts_every_time_end_in_an_error_naming_them() -> None:
    client, _, time = make([("GET", f"{TABLE}/{CHANGE}", httpx.ReadTimeout("slow"))] * 4)
    with pytest.raises(ServiceNowError, match="no answer") as raised:
        client.read_change(CHANGE)
    assert "no answer within 3 s" in raised.value.detail
    assert raised.value.status is None
    assert time.slept == [0.5, 1.0, 2.0]


def test_a_work_note_is_not_repeated_once_it_may_have_been_written() -> None:
    client, fake, time = make([("PATCH", f"{TABLE}/{CHANGE}", failure(500, "Internal error"))])
    change = _change()
    with pytest.raises(ServiceNowError, match="Internal error") as raised:
        client.add_work_note(change, "step 3: error-rate non-inferior")
    assert raised.value.retryable
    assert "not repeated" in raised.value.detail
    assert len(fake.received) == 1
    assert time.slept == []


def test_a_work_note_is_appended() -> None:
    client, fake, _ = make([("PATCH", f"{TABLE}/{CHANGE}", ok(record()))])
    client.add_work_note(_change(), "step 3: error-rate non-inferior")
    assert fake.bodies("PATCH") == [{"work_notes": "step 3: error-rate non-inferior"}]


# ------------------------------------------------------------------------------------------
# authentication
# ------------------------------------------------------------------------------------------


def token(value: str, expires_in: Any = 1799) -> httpx.Response:
    return httpx.Response(
        200,
        json={"access_token": value, "refresh_token": "r", "scope": "useraccount",
              "token_type": "Bearer", "expires_in": expires_in},
    )  # fmt: skip


UNAUTHENTICATED = failure(401, "User Not Authenticated", "Required to provide Auth information")


@pytest.mark.parametrize(
    ("auth", "form"),
    [
        (OAuthPassword("cid", "csecret", "svc", "pw"),
         {"grant_type": "password", "username": "svc", "password": "pw", "client_id": "cid",
          "client_secret": "csecret"}),
        (OAuthClientCredentials("cid", "csecret"),
         {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "csecret"}),
    ],
    ids=["password", "client-credentials"],
)  # fmt: skip
def test_oauth_401_fetches_a_new_token_once(auth: ServiceNowAuth, form: dict[str, str]) -> None:
    client, fake, _ = make(
        [
            ("POST", TOKEN, token("first")),
            ("GET", f"{TABLE}/{CHANGE}", UNAUTHENTICATED),
            ("POST", TOKEN, token("second")),
            ("GET", f"{TABLE}/{CHANGE}", ok(record())),
        ],
        auth=auth,
    )
    assert client.read_change(CHANGE).sys_id == CHANGE
    sent = httpx.QueryParams(fake.received[0].content.decode())
    assert dict(sent) == form
    assert fake.received[1].headers["authorization"] == "Bearer first"
    assert fake.received[3].headers["authorization"] == "Bearer second"


def test_oauth_a_second_401_fails() -> None:
    client, _, time = make(
        [
            ("POST", TOKEN, token("first")),
            ("GET", f"{TABLE}/{CHANGE}", UNAUTHENTICATED),
            ("POST", TOKEN, token("second")),
            ("GET", f"{TABLE}/{CHANGE}", UNAUTHENTICATED),
        ],
        auth=OAuthClientCredentials("cid", "csecret"),
    )
    with pytest.raises(ServiceNowError, match="User Not Authenticated") as raised:
        client.read_change(CHANGE)
    assert raised.value.status == 401
    assert not raised.value.retryable
    assert time.slept == []


def test_basic_auth_401_fails_at_once() -> None:
    client, fake, _ = make([("GET", f"{TABLE}/{CHANGE}", UNAUTHENTICATED)])
    with pytest.raises(ServiceNowError, match="User Not Authenticated"):
        client.read_change(CHANGE)
    assert len(fake.received) == 1


def test_the_token_is_kept_until_shortly_before_it_expires() -> None:
    read = ("GET", f"{TABLE}/{CHANGE}", ok(record()))
    client, fake, time = make(
        [("POST", TOKEN, token("first", "1800")), read, read, ("POST", TOKEN, token("second")),
         read],
        auth=OAuthClientCredentials("cid", "csecret"),
    )  # fmt: skip
    client.read_change(CHANGE)
    time.now += 1739  # 1800 s less a minute's margin, not yet reached
    client.read_change(CHANGE)
    time.now += 2
    client.read_change(CHANGE)
    assert [r.headers["authorization"] for r in fake.received if r.method == "GET"] == [
        "Bearer first", "Bearer first", "Bearer second",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(401, json={"error": "access_denied",
                                   "error_description": "invalid client credentials"}),
         "no OAuth token \\(client_credentials grant\\): POST /oauth_token.do: access_denied"),
        (httpx.Response(200, json={"access_token": "", "expires_in": 1799}), "an OAuth token"),
        (httpx.Response(200, json={"access_token": "t", "expires_in": -5}), "an OAuth token"),
    ],
)  # fmt: skip
def test_a_refused_or_malformed_token_is_a_clear_error(
    answer: httpx.Response, message: str
) -> None:
    client, fake, _ = make([("POST", TOKEN, answer)], auth=OAuthClientCredentials("c", "s"))
    with pytest.raises(ServiceNowError, match=message):
        client.read_change(CHANGE)
    assert len(fake.received) == 1


# ------------------------------------------------------------------------------------------
# approval, approvers, users, groups, closing
# ------------------------------------------------------------------------------------------


def _change(**override: Any) -> Change:
    client, _, _ = make([("GET", f"{TABLE}/{CHANGE}", ok(record(**override)))])
    return client.read_change(CHANGE)


def test_request_approval_moves_a_new_change_to_authorize() -> None:
    client, fake, _ = make(
        [("PATCH", f"{TABLE}/{CHANGE}", ok(record(state="-3", approval="requested")))]
    )
    change = client.request_approval(_change())
    assert (change.state, change.approval) == (ChangeState.AUTHORIZE, ChangeApproval.REQUESTED)
    assert fake.bodies("PATCH") == [{"state": "-3"}]


@pytest.mark.parametrize(
    "override",
    [
        {"state": "-3", "approval": "requested"},
        {"state": "-2", "approval": "approved"},
        {"state": "-5", "approval": "rejected"},
    ],
)
def test_request_approval_leaves_a_change_already_asked(override: dict[str, str]) -> None:
    client, fake, _ = make([])
    change = _change(**override)
    assert client.request_approval(change) is change
    assert fake.received == []


def test_request_approval_after_a_lost_answer_rereads_instead_of_asking_twice() -> None:
    client, fake, time = make(
        [
            ("PATCH", f"{TABLE}/{CHANGE}", httpx.ReadTimeout("slow")),
            ("GET", f"{TABLE}/{CHANGE}", ok(record(state="-3", approval="requested"))),
        ]
    )
    assert client.request_approval(_change()).approval is ChangeApproval.REQUESTED
    assert [r.method for r in fake.received] == ["PATCH", "GET"]
    assert time.slept == [0.5]


@pytest.mark.parametrize(
    ("call", "sent"),
    [
        (lambda c, ch: c.close_change(ch, CloseCode.SUCCESSFUL, "promoted"),
         {"state": "3", "close_code": "successful", "close_notes": "promoted"}),
        (lambda c, ch: c.close_change(ch, CloseCode.UNSUCCESSFUL, "analysis failed"),
         {"state": "3", "close_code": "unsuccessful", "close_notes": "analysis failed"}),
        (lambda c, ch: c.cancel_change(ch, "superseded"),
         {"state": "4", "close_notes": "superseded"}),
    ],
    ids=["successful", "unsuccessful", "cancel"],
)  # fmt: skip
def test_closing_and_cancelling(
    call: Callable[[ServiceNowClient, Change], Change], sent: dict[str, str]
) -> None:
    client, fake, _ = make([("PATCH", f"{TABLE}/{CHANGE}", ok(record(state=sent["state"])))])
    call(client, _change(state="-2", approval="approved"))
    assert fake.bodies("PATCH") == [sent]


def test_a_finished_change_is_not_closed_again() -> None:
    client, fake, _ = make([])
    closed = _change(state="3", close_code="successful")
    assert client.close_change(closed, CloseCode.UNSUCCESSFUL, "late") is closed
    assert client.cancel_change(closed, "late") is closed
    assert fake.received == []


def test_approvers_are_read_with_their_answers() -> None:
    rows = [
        {"sys_id": "e" * 32, "approver": ALICE, "state": "approved", "comments": "fine",
         "sys_updated_on": "2026-12-05 18:30:00", "sysapproval": CHANGE},
        {"sys_id": "f" * 32, "approver": {"value": BOB, "display_value": "Bob"},
         "state": "requested", "comments": "", "sys_updated_on": "2026-12-05 17:00:01",
         "sysapproval": CHANGE},
    ]  # fmt: skip
    client, fake, _ = make([("GET", "/api/now/table/sysapproval_approver", ok(rows))])
    alice, bob = client.approvers(_change())
    assert fake.received[0].url.params["sysparm_query"] == f"sysapproval={CHANGE}"
    assert (alice.approver, alice.state, alice.comments) == (ALICE, ApproverState.APPROVED, "fine")
    assert alice.updated_at == datetime(2026, 12, 5, 18, 30, tzinfo=UTC)
    assert (bob.approver, bob.state) == (BOB, ApproverState.REQUESTED)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"state": "maybe"}, "unknown approver state"),
        ({"approver": ""}, "not a ServiceNow sys_id"),
        ({"sys_updated_on": ""}, "sys_updated_on"),
        ({"sysapproval": "d" * 32}, "got one for"),
    ],
)
def test_malformed_approver_records_are_errors(row: dict[str, str], message: str) -> None:
    base = {"sys_id": "e" * 32, "approver": ALICE, "state": "approved", "comments": "",
            "sys_updated_on": "2026-12-05 18:30:00", "sysapproval": CHANGE}  # fmt: skip
    client, _, _ = make([("GET", "/api/now/table/sysapproval_approver", ok([base | row]))])
    with pytest.raises(ServiceNowError, match=message):
        client.approvers(_change())


def test_users_groups_and_membership() -> None:
    client, fake, _ = make(
        [
            ("GET", f"/api/now/table/sys_user/{ALICE}",
             ok({"sys_id": ALICE, "user_name": "alice", "name": "Alice Risk",
                 "email": "alice@bank.example"})),
            ("GET", GROUPS, ok([{"sys_id": GROUP, "name": "credit-risk"}])),
            ("GET", GROUPS, ok([])),
            ("GET", MEMBERS, ok([{"group": GROUP, "user": ALICE}])),
            ("GET", MEMBERS, ok([])),
        ]
    )  # fmt: skip
    alice = client.user(ALICE)
    assert (alice.user_name, alice.name, alice.email) == (
        "alice",
        "Alice Risk",
        "alice@bank.example",
    )
    assert client.group("credit-risk") == Group(GROUP, "credit-risk")
    assert client.group("nobody") is None
    assert client.is_member(ALICE, GROUP) is True
    assert client.is_member(BOB, GROUP) is False
    assert fake.received[1].url.params["sysparm_query"] == "name=credit-risk"
    assert fake.received[3].url.params["sysparm_query"] == f"group={GROUP}^user={ALICE}"


@pytest.mark.parametrize(
    ("call", "path", "answer", "message"),
    [
        (lambda c: c.group("credit-risk"), GROUPS,
         ok([CREDIT_RISK, {"sys_id": 32 * "8", "name": "credit-risk"}]),
         "more than one group is named 'credit-risk'"),
        (lambda c: c.group("credit-risk"), GROUPS, ok([{"sys_id": GROUP, "name": "other"}]),
         "asked for group 'credit-risk', got 'other'"),
        (lambda c: c.is_member(BOB, GROUP), MEMBERS, ok([{"group": GROUP, "user": ALICE}]),
         "got the membership of " + ALICE),
    ],
    ids=["two-groups", "other-group", "ignored-membership-query"],
)  # fmt: skip
def test_answers_that_do_not_fit_the_question_are_errors(
    call: Callable[[ServiceNowClient], object], path: str, answer: httpx.Response, message: str
) -> None:
    client, _, _ = make([("GET", path, answer)])
    with pytest.raises(ServiceNowError, match=message):
        call(client)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.group("a^ORname=admins"), "without '\\^'"),
        (lambda c: c.find_change("x^ORcorrelation_idISNOTEMPTY"), "without '\\^'"),
        (lambda c: c.user("alice"), "not a ServiceNow sys_id"),
        (lambda c: c.is_member(ALICE, "credit-risk"), "not a ServiceNow sys_id"),
    ],
)
def test_values_that_would_change_the_query_are_refused_before_sending(
    call: Callable[[ServiceNowClient], object], message: str
) -> None:
    client, fake, _ = make([])
    with pytest.raises(ValueError, match=message):
        call(client)
    assert fake.received == []
