"""Who the auditor API lets in: auditor tokens known by their hash, or cluster identities
with the auditor role; everyone else is refused with the right status."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from canary.access import Gatekeeper, ReviewFailed, Unauthenticated
from canary.auditor_access import (
    AUDITOR_ROLE,
    AuditorGate,
    NotAnAuditor,
    TokenEntry,
    TokenFileError,
    TokenSource,
    auditor_cluster_role,
    hash_token,
    new_token,
    parse_token_file,
)

TOKEN, ENTRY = new_token("external-audit")
VIEWER_TOKEN, VIEWER = new_token("dashboards", roles=("metrics",))


def gate(
    *,
    tokens: tuple[TokenEntry, ...] | None = (ENTRY, VIEWER),
    reviews: Gatekeeper | None = None,
) -> AuditorGate:
    return AuditorGate((lambda: tokens) if tokens is not None else None, reviews)


class Apiserver:
    """TokenReview and SubjectAccessReview answers, as the apiserver would give them."""

    def __init__(self, users: Mapping[str, str], auditors: set[str], down: bool = False) -> None:
        self.users = users
        self.auditors = auditors
        self.down = down
        self.asked: list[dict[str, Any]] = []

    def review_token(self, token: str) -> Mapping[str, Any]:
        if self.down:
            raise ConnectionError("apiserver unreachable")
        user = self.users.get(token)
        if user is None:
            return {"authenticated": False, "error": "invalid bearer token"}
        return {"authenticated": True, "user": {"username": user, "uid": f"uid-{user}",
                                                "groups": ["system:authenticated"]}}  # fmt: skip

    def review_access(self, spec: dict[str, Any]) -> Mapping[str, Any]:
        self.asked.append(spec)
        allowed = spec["user"] in self.auditors
        return {"allowed": allowed, "reason": "" if allowed else "no binding"}

    def gatekeeper(self) -> Gatekeeper:
        return Gatekeeper(self.review_token, self.review_access)


def test_an_auditor_token_is_known_by_its_hash_only() -> None:
    assert ENTRY.sha256 == hash_token(TOKEN)
    assert TOKEN not in ENTRY.model_dump_json()
    assert TOKEN.startswith("ksca_")
    assert len(TOKEN) > 40
    auditor = gate().admit(f"Bearer {TOKEN}")
    assert (auditor.name, auditor.kind) == ("external-audit", "token")


@pytest.mark.parametrize(
    ("authorization", "status", "message"),
    [
        (None, Unauthenticated, "no credentials"),
        ("Basic dXNlcjpwYXNz", Unauthenticated, "Bearer <token>"),
        ("Bearer ", Unauthenticated, "Bearer <token>"),
        ("Bearer ksca_wrong", Unauthenticated, "not an auditor token"),
        (f"Bearer {VIEWER_TOKEN}", NotAnAuditor, "token 'dashboards' is not an auditor"),
    ],
)
def test_without_an_auditor_token_nobody_gets_in(
    authorization: str | None, status: type[Exception], message: str
) -> None:
    with pytest.raises(status, match=message):
        gate().admit(authorization)


def test_a_cluster_identity_needs_the_auditor_role() -> None:
    apiserver = Apiserver({"tok-carol": "carol", "tok-dave": "dave"}, auditors={"carol"})
    both = gate(reviews=apiserver.gatekeeper())
    carol = both.admit("Bearer tok-carol")
    assert (carol.name, carol.kind, carol.uid) == ("carol", "kubernetes", "uid-carol")
    assert apiserver.asked[-1]["resourceAttributes"] == {
        "verb": "get", "group": "kserve-canary.io", "resource": "audit",
    }  # fmt: skip
    with pytest.raises(NotAnAuditor, match=f"dave is not an auditor.*{AUDITOR_ROLE}"):
        both.admit("Bearer tok-dave")
    with pytest.raises(Unauthenticated, match="invalid bearer token"):
        both.admit("Bearer tok-nobody")
    # an auditor token still works beside the cluster's reviews, and is never sent to them
    asked = len(apiserver.asked)
    assert both.admit(f"Bearer {TOKEN}").kind == "token"
    assert len(apiserver.asked) == asked


def test_an_apiserver_that_cannot_answer_decides_nothing() -> None:
    down = Apiserver({}, set(), down=True)
    with pytest.raises(ReviewFailed):
        gate(tokens=None, reviews=down.gatekeeper()).admit("Bearer tok-carol")


def test_a_client_certificate_is_reviewed_as_the_apiserver_names_it() -> None:
    apiserver = Apiserver({}, auditors={"erin"})
    certificate = {"subject": ((("commonName", "erin"),), (("organizationName", "audit"),))}
    auditor = gate(tokens=None, reviews=apiserver.gatekeeper()).admit(None, certificate)
    assert (auditor.name, auditor.groups) == ("erin", ("audit", "system:authenticated"))


def test_a_gate_needs_some_way_in() -> None:
    with pytest.raises(ValueError, match="needs tokens"):
        AuditorGate(None, None)


# --------------------------------------------------------------------------------------------
# the token file
# --------------------------------------------------------------------------------------------

GOOD = f"""
tokens:
  - name: external-audit
    sha256: {ENTRY.sha256}
  - name: dashboards
    sha256: {VIEWER.sha256}
    roles: [metrics]
"""


def test_a_token_file_lists_names_hashes_and_roles() -> None:
    entries = parse_token_file(GOOD, source="tokens.yaml")
    assert [(e.name, e.roles) for e in entries] == [
        ("external-audit", ("auditor",)),
        ("dashboards", ("metrics",)),
    ]
    assert parse_token_file("", source="empty") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: [", "not YAML"),
        ("tokens:\n  - name: a\n    sha256: " + TOKEN, "64 lowercase hex"),
        ("tokens:\n  - name: a\n    sha256: " + "A" * 64, "64 lowercase hex"),
        ("tokens:\n  - name: '-bad'\n    sha256: " + "a" * 64, "letters, digits"),
        ("tokens:\n  - name: a\n    token: x\n    sha256: " + "a" * 64, "Extra inputs"),
        ("users: []", "Extra inputs"),
        (
            "tokens:\n  - {name: a, sha256: "
            + "a" * 64
            + "}\n  - {name: a, sha256: "
            + "b" * 64
            + "}",
            "'a' is listed twice",
        ),
        (
            "tokens:\n  - {name: a, sha256: "
            + "a" * 64
            + "}\n  - {name: b, sha256: "
            + "a" * 64
            + "}",
            "same hash",
        ),
    ],
)
def test_a_bad_token_file_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(TokenFileError, match=message):
        parse_token_file(text, source="tokens.yaml")


def test_the_token_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(GOOD)
    source = TokenSource(path)
    assert [e.name for e in source()] == ["external-audit", "dashboards"]
    rotated, entry = new_token("rotated")
    path.write_text(f"tokens:\n  - name: rotated\n    sha256: {entry.sha256}\n")
    os.utime(path, (1, 1))  # a new stamp even within the file system's time resolution
    assert [e.name for e in source()] == ["rotated"]
    assert AuditorGate(source, None).admit(f"Bearer {rotated}").name == "rotated"
    path.write_text("tokens: [")
    os.utime(path, (2, 2))
    assert [e.name for e in source()] == ["rotated"]  # the last good one stays
    with pytest.raises(TokenFileError, match="No such file"):
        TokenSource(tmp_path / "missing.yaml")


def test_the_auditor_role_grants_reading_the_audit_and_nothing_else() -> None:
    role = auditor_cluster_role()
    assert role["metadata"]["name"] == AUDITOR_ROLE
    assert role["rules"] == [
        {"apiGroups": ["kserve-canary.io"], "resources": ["audit"], "verbs": ["get"]}
    ]
