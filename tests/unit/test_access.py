"""Who may run which operator command (canary.access): the RBAC checks per command, and how
the apiserver's answers are read — never trusting a malformed or missing one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from canary.access import (
    API_GROUP,
    OPERATOR_ROLE,
    RISK_OWNER_ROLE,
    VIEWER_ROLE,
    AccessDenied,
    Caller,
    Gatekeeper,
    Permission,
    ReviewFailed,
    Unauthenticated,
    cluster_roles,
    command_permissions,
    read_permission,
)

ALICE = {"username": "alice@bank.example", "uid": "u-1", "groups": ["risk", "system:authenticated"]}


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("pause", [("create", API_GROUP, "rollouts", "pause")]),
        ("resume", [("create", API_GROUP, "rollouts", "resume")]),
        ("promote", [("create", API_GROUP, "rollouts", "promote")]),
        ("abort", [("create", API_GROUP, "rollouts", "abort")]),
        (
            "start",
            [
                ("create", API_GROUP, "rollouts", "start"),
                ("patch", "serving.kserve.io", "inferenceservices", None),
            ],
        ),
        # an approval decision, either way, is the right to approve the rollout itself
        ("approve", [("approve", API_GROUP, "rollouts", None)]),
        ("reject", [("approve", API_GROUP, "rollouts", None)]),
    ],
)
def test_each_command_is_checked_on_its_own_subresource_in_the_namespace(
    command: str, expected: list[tuple[str, str, str, str | None]]
) -> None:
    checks = command_permissions(command, "fraud", "scorer")
    assert [(p.verb, p.group, p.resource, p.subresource) for p in checks] == expected
    assert all((p.namespace, p.name) == ("fraud", "scorer") for p in checks)


def test_an_unknown_command_has_no_permission_to_check() -> None:
    with pytest.raises(ValueError, match="unknown command 'delete'"):
        command_permissions("delete", "fraud", "scorer")


@pytest.mark.parametrize(
    ("namespace", "name", "verb", "attributes"),
    [
        ("fraud", "scorer", "get", {"namespace": "fraud", "name": "scorer"}),
        ("fraud", None, "list", {"namespace": "fraud"}),
        (None, None, "list", {}),
    ],
)
def test_status_needs_get_for_one_and_list_for_many(
    namespace: str | None, name: str | None, verb: str, attributes: dict[str, str]
) -> None:
    permission = read_permission(namespace, name)
    assert permission.attributes() == {
        "verb": verb,
        "group": API_GROUP,
        "resource": "rollouts",
        **attributes,
    }


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _allows(role: dict[str, Any], permission: Permission) -> bool:
    """What RBAC would answer for ``permission`` under ``role`` (no wildcards are used)."""
    resource = permission.resource + (f"/{permission.subresource}" if permission.subresource
                                      else "")  # fmt: skip
    return (permission.group, resource, permission.verb) in _granted(role)


def _roles() -> dict[str, dict[str, Any]]:
    return {role["metadata"]["name"]: role for role in cluster_roles()}


def test_the_roles_are_the_operator_the_viewer_and_the_risk_owner() -> None:
    assert list(_roles()) == [OPERATOR_ROLE, VIEWER_ROLE, RISK_OWNER_ROLE]
    assert (OPERATOR_ROLE, VIEWER_ROLE, RISK_OWNER_ROLE) == (
        "kserve-canary-operator", "kserve-canary-viewer", "kserve-canary-risk-owner",
    )  # fmt: skip


def test_the_operator_role_grants_every_command_and_the_viewer_only_reads() -> None:
    roles = _roles()
    operator, viewer = roles[OPERATOR_ROLE], roles[VIEWER_ROLE]
    for command in ("pause", "resume", "promote", "abort", "start"):
        (own, *_) = command_permissions(command, "ns", "x")
        assert _allows(operator, own), command
    assert viewer["rules"] == [
        {"apiGroups": [API_GROUP], "resources": ["rollouts"], "verbs": ["get", "list"]}
    ]


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_only_the_risk_owner_may_decide_an_approval(command: str) -> None:
    roles = _roles()
    (decide,) = command_permissions(command, "credit", "decider")
    assert _allows(roles[RISK_OWNER_ROLE], decide)
    # segregation of duties: whoever may promote a canary may not also approve it
    assert not _allows(roles[OPERATOR_ROLE], decide)
    assert not _allows(roles[VIEWER_ROLE], decide)


def test_the_risk_owner_reads_rollouts_but_drives_none() -> None:
    risk_owner = _roles()[RISK_OWNER_ROLE]
    assert _allows(risk_owner, read_permission("credit", "decider"))
    assert _allows(risk_owner, read_permission("credit", None))
    for command in ("pause", "resume", "promote", "abort", "start"):
        (own, *_) = command_permissions(command, "credit", "decider")
        assert not _allows(risk_owner, own), command
    assert _granted(risk_owner) == {
        (API_GROUP, "rollouts", "get"),
        (API_GROUP, "rollouts", "list"),
        (API_GROUP, "rollouts", "approve"),
    }


class Reviews:
    """The apiserver, as the gatekeeper sees it: canned answers, and what it was asked."""

    def __init__(
        self,
        token_answer: Mapping[str, Any] | Exception,
        access_answers: list[Mapping[str, Any] | Exception] | None = None,
    ) -> None:
        self.token_answer = token_answer
        self.access_answers = list(access_answers or [])
        self.tokens: list[str] = []
        self.specs: list[dict[str, Any]] = []

    def token(self, token: str) -> Mapping[str, Any]:
        self.tokens.append(token)
        if isinstance(self.token_answer, Exception):
            raise self.token_answer
        return self.token_answer

    def access(self, spec: dict[str, Any]) -> Mapping[str, Any]:
        self.specs.append(spec)
        answer = self.access_answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_token_the_apiserver_accepts_names_the_caller_with_uid_and_groups() -> None:
    reviews = Reviews({"authenticated": True, "user": {**ALICE, "extra": {"scopes": ["a"]}}})
    caller = Gatekeeper(reviews.token, reviews.access).authenticate("Bearer  tok-123 ")
    assert caller == Caller("alice@bank.example", "u-1", ("risk", "system:authenticated"),
                            {"scopes": ("a",)})  # fmt: skip
    assert reviews.tokens == ["tok-123"]
    assert caller.actor.id == "alice@bank.example"
    assert (caller.actor.uid, caller.actor.groups) == ("u-1", ("risk", "system:authenticated"))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "no credentials"),
        ("", "no credentials"),
        ("Basic YWxpY2U6cGFzcw==", "must be 'Bearer <token>'"),
        ("Bearer ", "must be 'Bearer <token>'"),
        ("tok-123", "must be 'Bearer <token>'"),
    ],
)
def test_a_request_without_a_bearer_token_is_unauthenticated_without_asking(
    header: str | None, message: str
) -> None:
    reviews = Reviews({"authenticated": True, "user": ALICE})
    with pytest.raises(Unauthenticated, match=message):
        Gatekeeper(reviews.token, reviews.access).authenticate(header)
    assert reviews.tokens == []


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ({"authenticated": False, "error": "token expired"}, Unauthenticated, "token expired"),
        ({"authenticated": False}, Unauthenticated, "does not accept this token"),
        # what the apiserver says of a token it never issued
        ({"user": {}, "error": "invalid bearer token"}, Unauthenticated, "invalid bearer"),
        ({}, Unauthenticated, "does not accept"),
        # authenticated, but no user to record: nobody may act anonymously
        ({"authenticated": True}, Unauthenticated, "does not accept"),
        ({"authenticated": True, "user": {"username": ""}}, ReviewFailed, "malformed"),
        ({"authenticated": "yes", "user": ALICE}, ReviewFailed, "malformed"),
        ({"authenticated": True, "user": {**ALICE, "groups": "risk"}}, ReviewFailed, "malformed"),
        (ConnectionError("apiserver down"), ReviewFailed, "apiserver down"),
    ],
)
def test_a_refused_or_unreadable_token_review_never_lets_anyone_in(
    answer: Mapping[str, Any] | Exception, error: type[Exception], message: str
) -> None:
    reviews = Reviews(answer)
    with pytest.raises(error, match=message):
        Gatekeeper(reviews.token, reviews.access).authenticate("Bearer tok")


CALLER = Caller("alice@bank.example", "u-1", ("risk",), {"scopes": ("a", "b")})


def test_authorisation_asks_about_the_authenticated_identity_and_each_permission() -> None:
    reviews = Reviews({}, [{"allowed": True}, {"allowed": True}])
    Gatekeeper(reviews.token, reviews.access).authorize(
        CALLER, command_permissions("start", "credit", "decider")
    )
    first, second = reviews.specs
    assert first == {
        "user": "alice@bank.example",
        "uid": "u-1",
        "groups": ["risk"],
        "extra": {"scopes": ["a", "b"]},
        "resourceAttributes": {
            "verb": "create",
            "group": API_GROUP,
            "resource": "rollouts",
            "subresource": "start",
            "namespace": "credit",
            "name": "decider",
        },
    }
    assert second["resourceAttributes"]["resource"] == "inferenceservices"


@pytest.mark.parametrize(
    ("answers", "error", "message"),
    [
        ([{"allowed": False}], AccessDenied, "no RBAC rule grants it"),
        ([{"allowed": False, "reason": "RBAC: not bound"}], AccessDenied, "RBAC: not bound"),
        # an explicit deny wins even if another authorizer said yes
        ([{"allowed": True, "denied": True, "reason": "policy"}], AccessDenied, "policy"),
        (
            [{"allowed": False, "evaluationError": "webhook timeout"}],
            AccessDenied,
            "evaluation error: webhook timeout",
        ),
        ([{}], AccessDenied, "no RBAC rule"),
        ([{"allowed": "true"}], ReviewFailed, "malformed"),
        ([RuntimeError("forbidden to review")], ReviewFailed, "forbidden to review"),
    ],
)
def test_anything_but_a_clear_allow_refuses(
    answers: list[Mapping[str, Any] | Exception], error: type[Exception], message: str
) -> None:
    reviews = Reviews({}, answers)
    with pytest.raises(error, match=message):
        Gatekeeper(reviews.token, reviews.access).authorize(
            CALLER, command_permissions("promote", "fraud", "scorer")
        )


def test_start_is_refused_when_the_caller_may_not_patch_the_service_themselves() -> None:
    reviews = Reviews({}, [{"allowed": True}, {"allowed": False, "reason": "no edit role"}])
    with pytest.raises(AccessDenied) as refused:
        Gatekeeper(reviews.token, reviews.access).authorize(
            CALLER, command_permissions("start", "credit", "decider")
        )
    assert refused.value.permission == Permission(
        "patch", "credit", "decider", group="serving.kserve.io", resource="inferenceservices"
    )
    assert "patch inferenceservices.serving.kserve.io 'decider' in namespace credit" in str(
        refused.value
    )


def test_an_approval_is_asked_as_the_verb_approve_on_the_rollout_itself() -> None:
    reviews = Reviews({}, [{"allowed": False, "reason": "no RBAC policy matched"}])
    with pytest.raises(AccessDenied) as refused:
        Gatekeeper(reviews.token, reviews.access).authorize(
            CALLER, command_permissions("reject", "credit", "decider")
        )
    (spec,) = reviews.specs
    assert spec["resourceAttributes"] == {
        "verb": "approve",
        "group": API_GROUP,
        "resource": "rollouts",
        "namespace": "credit",
        "name": "decider",
    }
    assert str(refused.value) == (
        "alice@bank.example may not approve rollouts.kserve-canary.io 'decider' in namespace "
        "credit: no RBAC policy matched"
    )


def _subject(*pairs: tuple[str, str]) -> dict[str, Any]:
    """A verified peer certificate as ssl.SSLSocket.getpeercert() describes it."""
    return {"subject": tuple(((key, value),) for key, value in pairs)}


@pytest.mark.parametrize(
    ("certificate", "expected"),
    [
        (_subject(("commonName", "dora")), Caller("dora", None, ("system:authenticated",))),
        (
            _subject(("organizationName", "risk"), ("organizationName", "oncall"),
                     ("commonName", "dora")),
            Caller("dora", None, ("risk", "oncall", "system:authenticated")),
        ),
        (
            _subject(("countryName", "GB"), ("organizationName", "system:authenticated"),
                     ("commonName", "dora")),
            Caller("dora", None, ("system:authenticated",)),
        ),
    ],
)  # fmt: skip
def test_a_verified_client_certificate_names_the_user_as_kubernetes_reads_it(
    certificate: dict[str, Any], expected: Caller
) -> None:
    reviews = Reviews({"authenticated": True, "user": ALICE})
    # the certificate wins over a token in the same request, as in the apiserver
    caller = Gatekeeper(reviews.token, reviews.access).authenticate("Bearer tok", certificate)
    assert caller == expected
    assert reviews.tokens == []


@pytest.mark.parametrize(
    "certificate",
    [
        _subject(("organizationName", "risk")),
        _subject(("commonName", "a"), ("commonName", "b")),
        _subject(("commonName", "  ")),
        {"subject": ()},
    ],
)
def test_a_certificate_that_names_no_single_user_is_refused(certificate: dict[str, Any]) -> None:
    reviews = Reviews({"authenticated": True, "user": ALICE})
    with pytest.raises(Unauthenticated, match="names no single user"):
        Gatekeeper(reviews.token, reviews.access).authenticate(None, certificate)
