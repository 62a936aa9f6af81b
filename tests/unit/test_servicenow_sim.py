"""The ServiceNow simulator's pure parts: the encoded-query parser, the Standard Webhooks
signer (against the specification's published vector), and the change rules of the
in-memory instance (no state file, no HTTP). docs/SERVICENOW.md §4-§7."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.servicenow import signing
from testbed.servicenow.query import (
    Condition,
    EncodedQuery,
    Ordering,
    QueryError,
    parse,
    run,
)
from testbed.servicenow.store import Instance, Refused, Seed, canonical_number

# --- encoded queries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", EncodedQuery()),
        ("name=credit-risk", EncodedQuery((Condition("name", "credit-risk"),))),
        (
            "correlation_id=kserve-canary:abc:3^ORDERBYDESCsys_created_on",
            EncodedQuery(
                (Condition("correlation_id", "kserve-canary:abc:3"),),
                (Ordering("sys_created_on", True),),
            ),
        ),
        (
            "group=g1^user=u1",
            EncodedQuery((Condition("group", "g1"), Condition("user", "u1"))),
        ),
        (
            "element_id=abc^element=work_notes^ORDERBYsys_created_on",
            EncodedQuery(
                (Condition("element_id", "abc"), Condition("element", "work_notes")),
                (Ordering("sys_created_on", False),),
            ),
        ),
        ("short_description=a^^b", EncodedQuery((Condition("short_description", "a^b"),))),
        ("name=", EncodedQuery((Condition("name", ""),))),
        ("name=a=b", EncodedQuery((Condition("name", "a=b"),))),
        ("^name=x^", EncodedQuery((Condition("name", "x"),))),
    ],
)
def test_the_operators_of_the_contract_parse(text: str, expected: EncodedQuery) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "state!=3",
        "short_descriptionLIKEcredit",
        "stateIN-3,-2",
        "state>-3",
        "name=a^ORname=b",
        "name=a^NQname=b",
        "assignment_group.name=credit-risk",
        "ORDERBYDESC",
        "ORDERBYDESCsys created",
        "name",
        "Name=x",
        "name==x",
    ],
)
def test_anything_beyond_the_contract_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(QueryError, match=r"not supported|needs a field"):
        parse(text)


RECORDS = [
    {"sys_id": "1", "correlation_id": "a", "sys_created_on": "2026-01-01 10:00:00"},
    {"sys_id": "2", "correlation_id": "b", "sys_created_on": "2026-01-01 11:00:00"},
    {"sys_id": "3", "correlation_id": "a", "sys_created_on": "2026-01-01 12:00:00"},
]
FIELDS = ("sys_id", "correlation_id", "sys_created_on")


def ids(records: list[Any]) -> list[str]:
    return [r["sys_id"] for r in records]


def test_conditions_and_ordering_select_the_newest_first() -> None:
    query = parse("correlation_id=a^ORDERBYDESCsys_created_on")
    assert ids(run(query, RECORDS, FIELDS)) == ["3", "1"]
    assert ids(run(parse("ORDERBYsys_created_on"), RECORDS, FIELDS)) == ["1", "2", "3"]
    assert ids(run(parse("correlation_id=c"), RECORDS, FIELDS)) == []
    assert ids(run(parse(""), RECORDS, FIELDS)) == ["1", "2", "3"]


def test_a_condition_on_an_unknown_field_matches_nothing() -> None:
    assert run(parse("no_such_field=a"), RECORDS, FIELDS) == []


# --- the signer --------------------------------------------------------------------------


def test_the_signer_reproduces_the_published_standard_webhooks_vector() -> None:
    assert (
        signing.signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_several_secrets_give_one_signature_each() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    headers = signing.headers([first, second], "msg_1", 1700000000, b"{}")
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].split(" ") == [
        signing.signature(first, "msg_1", 1700000000, b"{}"),
        signing.signature(second, "msg_1", 1700000000, b"{}"),
    ]


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_%%%"])
def test_a_secret_that_is_not_whsec_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        signing.key_of(secret)


# --- the change rules --------------------------------------------------------------------

SEED = Seed.model_validate(
    {
        "integration_user": "kserve-canary",
        "users": [
            {"user_name": "kserve-canary", "password": "p"},
            {"user_name": "alice", "password": "a"},
            {"user_name": "bob"},
            {"user_name": "mallory"},
        ],
        "groups": [{"name": "credit-risk", "members": ["alice", "bob"]}],
    }
)


def instance_with_change() -> tuple[Instance, dict[str, str], str]:
    instance = Instance(SEED)
    group = instance.find("sys_user_group", parse("name=credit-risk"))[0]["sys_id"]
    change = instance.create_change(
        {"short_description": "promote credit", "assignment_group": group, "state": "3"},
        instance.integration_user,
    )
    return instance, change, group


def test_a_new_change_is_new_and_ignores_a_state_in_the_body() -> None:
    instance, change, _ = instance_with_change()
    assert (change["number"], change["state"], change["approval"]) == (
        "CHG0000001",
        "-5",
        "not requested",
    )
    assert change["requested_by"] == instance.integration_user
    again = instance.create_change({}, instance.integration_user)
    assert again["number"] == "CHG0000002"


def test_requesting_approval_asks_every_member_of_the_group_once() -> None:
    instance, change, _ = instance_with_change()
    updated = instance.update_change(change["sys_id"], {"state": -3}, instance.integration_user)
    assert (updated["state"], updated["approval"]) == ("-3", "requested")
    approvers = instance.find("sysapproval_approver", parse(f"sysapproval={change['sys_id']}"))
    names = {instance.get("sys_user", a["approver"])["user_name"] for a in approvers}
    assert names == {"alice", "bob"}
    assert {a["state"] for a in approvers} == {"requested"}


@pytest.mark.parametrize(
    ("given", "expected"), [(3, "3"), (-3.0, "-3"), ("-2", "-2"), ("4.0", "4")]
)
def test_numbers_are_accepted_where_strings_are_expected(given: object, expected: str) -> None:
    assert canonical_number(given, "state") == expected


@pytest.mark.parametrize("given", [True, "abc", 2.5, None, "7"])
def test_a_bad_state_is_refused_with_400(given: object) -> None:
    instance, change, _ = instance_with_change()
    with pytest.raises(Refused) as refused:
        instance.update_change(change["sys_id"], {"state": given}, instance.integration_user)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"state": "-2"}, 403),  # Scheduled needs an approved change
        ({"state": "-1"}, 403),  # New cannot jump to Implement
        ({"state": "3"}, 403),  # closing needs close_code and close_notes
        ({"state": "3", "close_code": "fine", "close_notes": "n"}, 400),
    ],
)
def test_invalid_moves_are_refused(body: dict[str, Any], status: int) -> None:
    instance, change, _ = instance_with_change()
    with pytest.raises(Refused) as refused:
        instance.update_change(change["sys_id"], body, instance.integration_user)
    assert refused.value.status == status
    assert instance.get("change_request", change["sys_id"])["state"] == "-5"


def test_an_approval_schedules_the_change_and_settles_the_other_approvers() -> None:
    instance, change, _ = instance_with_change()
    instance.update_change(change["sys_id"], {"state": "-3"}, instance.integration_user)
    decision = instance.decide(change["number"], "alice", "approved", "fine by me")
    assert (decision.change["state"], decision.change["approval"]) == ("-2", "approved")
    states = {
        instance.get("sys_user", a["approver"])["user_name"]: a["state"]
        for a in instance.find("sysapproval_approver", parse(f"sysapproval={change['sys_id']}"))
    }
    assert states == {"alice": "approved", "bob": "cancelled"}


def test_a_rejection_sends_the_change_back_to_new() -> None:
    instance, change, _ = instance_with_change()
    instance.update_change(change["sys_id"], {"state": "-3"}, instance.integration_user)
    decision = instance.decide(change["number"], "bob", "rejected", "not with this evidence")
    assert (decision.change["state"], decision.change["approval"]) == ("-5", "rejected")


def test_an_outsider_decides_only_when_forced() -> None:
    instance, change, _ = instance_with_change()
    instance.update_change(change["sys_id"], {"state": "-3"}, instance.integration_user)
    with pytest.raises(Refused) as refused:
        instance.decide(change["number"], "mallory", "approved", "")
    assert refused.value.status == 409
    decision = instance.decide(change["number"], "mallory", "approved", "", force=True)
    assert decision.approver["state"] == "approved"
    assert decision.change["approval"] == "approved"


def test_a_closed_change_stays_closed_and_a_late_approval_moves_nothing() -> None:
    instance, change, _ = instance_with_change()
    user = instance.integration_user
    instance.update_change(change["sys_id"], {"state": "-3"}, user)
    closed = instance.update_change(
        change["sys_id"],
        {"state": "3", "close_code": "unsuccessful", "close_notes": "rolled back"},
        user,
    )
    assert (closed["state"], closed["active"]) == ("3", "false")
    with pytest.raises(Refused) as refused:
        instance.update_change(change["sys_id"], {"state": "-3"}, user)
    assert refused.value.status == 403
    late = instance.decide(change["number"], "alice", "approved", "", force=True)
    assert not late.moved_change
    assert late.change["state"] == "3"
