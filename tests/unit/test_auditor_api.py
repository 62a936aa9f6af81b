"""The auditor API in process: who gets in, that nothing writes, and what each route answers
about a real rollout's records (a SQLite store filled by the state machine's story)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from canary.access import Gatekeeper
from canary.api.auditor import AUDIT_PREFIX
from canary.audit import AuditStore, compute_record_hash, upgrade_to_head
from canary.audit.checkpoint import (
    CheckpointSigner,
    generate_private_key_pem,
)
from canary.auditor_access import AuditorGate, new_token
from tests.auditor_rig import auditor_app, fill
from tests.conftest import Database
from tests.tampering import rewrite_record
from tests.unit.evidence_story import ROLLOUT_ID, T0, Story, approved

AUDITOR_TOKEN, AUDITOR = new_token("external-audit")
OTHER_TOKEN, OTHER = new_token("dashboards", roles=("metrics",))
NAMESPACE, NAME = "fraud", "scorer"


class Client:
    """Requests through httpx's ASGI transport, from a non-loopback address."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(
                transport=transport, base_url="https://auditor.test"
            ) as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


class Apiserver:
    """carol is an auditor by RBAC; dave is a cluster user without the role."""

    def review_token(self, token: str) -> dict[str, Any]:
        user = {"tok-carol": "carol", "tok-dave": "dave"}.get(token)
        if user is None:
            return {"authenticated": False}
        return {"authenticated": True, "user": {"username": user, "uid": f"uid-{user}"}}

    def review_access(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"allowed": spec["user"] == "carol"}


@dataclass
class Api:
    client: Client
    routes: APIRouter
    store: AuditStore
    db: Database
    story: Story
    outcomes: list[str] = field(default_factory=list)

    def get(self, path: str, token: str | None = AUDITOR_TOKEN, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(f"{AUDIT_PREFIX}{path}", params=params, headers=headers)


@pytest.fixture
def api(sqlite_database: Database) -> Iterator[Api]:
    upgrade_to_head(sqlite_database.url)
    story = approved()
    signer = CheckpointSigner.from_pem(generate_private_key_pem())
    with AuditStore.from_url(sqlite_database.url) as store:
        fill(store, story, signer, unanchored=2)
        outcomes: list[str] = []
        reviews = Gatekeeper(Apiserver().review_token, Apiserver().review_access)
        app, routes = auditor_app(
            store, story, AuditorGate(lambda: (AUDITOR, OTHER), reviews), signer,
            count=outcomes.append,
        )  # fmt: skip
        yield Api(Client(app), routes, store, sqlite_database, story, outcomes)


def _hash_at(store: AuditStore, seq: int) -> str:
    return store.record_hashes([seq])[seq]


# --------------------------------------------------------------------------------------------
# who gets in
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        (None, 401, "no credentials"),
        ("ksca_not-a-known-token", 401, "does not accept this token"),
        (OTHER_TOKEN, 403, "token 'dashboards' is not an auditor"),
        ("tok-dave", 403, "dave is not an auditor"),
    ],
    ids=["missing", "wrong", "non-auditor token", "cluster user without the role"],
)
def test_only_auditors_get_in(api: Api, token: str | None, status: int, message: str) -> None:
    for path in ("/rollouts", f"/rollouts/{ROLLOUT_ID}", "/verify", "/export"):
        answer = api.get(path, token)
        assert answer.status_code == status, (path, answer.text)
        assert message in answer.json()["error"]
        if status == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(api.outcomes) == {"unauthenticated" if status == 401 else "forbidden"}


def test_an_auditor_token_and_a_cluster_auditor_get_in(api: Api) -> None:
    assert api.get("/rollouts").status_code == 200
    assert api.get("/rollouts", "tok-carol").status_code == 200


def test_credentials_over_plain_http_are_refused(api: Api) -> None:
    answer = api.client.get(
        f"http://auditor.test{AUDIT_PREFIX}/rollouts",
        headers={"Authorization": f"Bearer {AUDITOR_TOKEN}"},
    )
    assert answer.status_code == 403
    assert "only over HTTPS" in answer.json()["error"]


def test_no_route_writes(api: Api) -> None:
    routes = [r for r in api.routes.routes if isinstance(r, APIRoute)]
    assert routes
    for route in routes:
        assert set(route.methods or ()) <= {"GET", "HEAD"}, route.path
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            path = route.path.replace("{rollout_id}", ROLLOUT_ID)
            assert path.startswith(AUDIT_PREFIX)
            answer = api.client.request(
                method, path, headers={"Authorization": f"Bearer {AUDITOR_TOKEN}"}
            )
            assert answer.status_code == 405, (method, path)


def test_no_answer_contains_a_credential(api: Api) -> None:
    bodies = [
        api.get(path, token).text
        for path in ("/rollouts", f"/rollouts/{ROLLOUT_ID}", "/verify", "/checkpoints")
        for token in (AUDITOR_TOKEN, OTHER_TOKEN, "tok-dave", "ksca_guess")
    ]
    for body in bodies:
        for secret in (AUDITOR_TOKEN, OTHER_TOKEN, "tok-dave", "ksca_guess"):
            assert secret not in body


# --------------------------------------------------------------------------------------------
# what it answers
# --------------------------------------------------------------------------------------------


def test_rollouts_are_listed_and_filtered(api: Api) -> None:
    page = api.get("/rollouts").json()
    assert [r["id"] for r in page["rollouts"]] == [ROLLOUT_ID]
    assert page["next_cursor"] is None
    assert api.get("/rollouts", namespace="credit").json()["rollouts"] == []
    assert [r["id"] for r in api.get("/rollouts", outcome="Succeeded").json()["rollouts"]] == [
        ROLLOUT_ID
    ]
    bad = api.get("/rollouts", outcome="Great")
    assert bad.status_code == 400
    assert "unknown outcome" in bad.json()["error"]
    assert api.get("/rollouts", limit=0).status_code == 422


def test_one_rollout_is_its_dossier(api: Api) -> None:
    dossier = api.get(f"/rollouts/{ROLLOUT_ID}").json()
    assert dossier["summary"]["rollout_id"] == ROLLOUT_ID
    assert dossier["summary"]["phase"] == "Succeeded"
    missing = api.get("/rollouts/no-such-rollout")
    assert missing.status_code == 404
    assert "no rollout 'no-such-rollout'" in missing.json()["error"]


def test_a_rollouts_records_come_with_their_hashes_and_evidence(api: Api) -> None:
    page = api.get(f"/rollouts/{ROLLOUT_ID}/records", limit=5).json()
    assert len(page["records"]) == 5
    for record in page["records"]:
        assert compute_record_hash(record["prev_hash"], record["body"]) == record["record_hash"]
    rest = api.get(f"/rollouts/{ROLLOUT_ID}/records", after_seq=page["next_after_seq"]).json()
    seqs = [r["seq"] for r in page["records"] + rest["records"]]
    assert seqs == sorted(set(seqs))
    assert any(r["entry"]["measurements"] for r in page["records"] + rest["records"])
    approvals = api.get(f"/rollouts/{ROLLOUT_ID}/approvals").json()["approvals"]
    assert [(a["id"], a["state"], a["change_number"]) for a in approvals] == [
        (row.id, "approved", row.change_number) for row in api.story.approvals()
    ]


def test_the_report_is_html_with_plots_and_the_anchored_verification(api: Api) -> None:
    answer = api.get(f"/rollouts/{ROLLOUT_ID}/report")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text.count("<svg") >= 2
    for fetch in ("src=", "<link", "url(", "<script", "@import"):
        assert fetch not in answer.text  # nothing is fetched: the file stands alone


def test_point_in_time_answers_mid_canary_and_refuses_unclear_questions(api: Api) -> None:
    middle = (T0 + timedelta(minutes=10)).isoformat()
    answer = api.get("/at", namespace=NAMESPACE, name=NAME, time=middle).json()
    shares = {r["revision"]: r["percent"] for r in answer["revisions"]}
    assert shares == {"r1": 90, "r2": 10}
    by_model = api.get("/at", model="s3://models/r2", time=middle).json()
    assert [a["name"] for a in by_model["answers"]] == [NAME]
    for params, message in (
        ({"namespace": NAMESPACE, "name": NAME, "time": "2026-11-23T10:10:00"}, "zone"),
        ({"model": "r2", "namespace": NAMESPACE, "time": middle}, "not both"),
        ({"time": middle}, "give namespace and name"),
    ):
        refused = api.get("/at", **params)
        assert refused.status_code == 400, params
        assert message in refused.json()["error"]


def test_verify_anchors_the_chain_and_names_a_rewritten_history(api: Api) -> None:
    clean = api.get("/verify").json()
    assert clean["tampered"] is False
    head, _ = api.store.head()
    assert clean["anchors"]["anchored_seq"] == head - 2
    assert clean["anchors"]["unanchored"] == 2
    full = api.get("/verify", full="true").json()
    assert full["chain"]["from_seq"] == 1
    assert full["chain"]["records_checked"] == head
    rewrite_record(api.db, 3, lambda body: body.update(reason="nothing happened"))
    tampered = api.get("/verify").json()
    assert tampered["tampered"] is True
    assert tampered["anchors"]["findings"][0]["kind"] == "rewritten"


def test_checkpoints_are_listed_as_envelopes(api: Api) -> None:
    (envelope,) = api.get("/checkpoints").json()["checkpoints"]
    assert set(envelope) == {"statement", "signature", "keyId"}


def test_the_export_streams_records_whose_hashes_recompute(api: Api) -> None:
    lines = api.get("/export").text.splitlines()
    assert len(lines) == api.store.head()[0]
    for line in lines:
        record = json.loads(line)
        assert compute_record_hash(record["prev_hash"], record["body"]) == record["record_hash"]
    only = api.get("/export", action="analysis.evaluated").text.splitlines()
    assert 0 < len(only) < len(lines)


def test_the_csv_export_never_hands_a_spreadsheet_a_formula(api: Api) -> None:
    from canary.audit import Actor, AuditEntry, ObjectRef

    before = api.store.head()[0]
    api.store.append([AuditEntry(
        at=api.story.now, actor=Actor("human", "mallory"), action="manual.pause",
        obj=ObjectRef(NAMESPACE, NAME), reason='=HYPERLINK("http://evil","click")',
    )])  # fmt: skip
    answer = api.get("/export", format="csv")
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == before + 1
    assert rows[-1]["reason"] == '\'=HYPERLINK("http://evil","click")'
    assert rows[-1]["actor_id"] == "mallory"


def test_the_openapi_document_lists_get_routes_only(api: Api) -> None:
    document = api.client.get(f"{AUDIT_PREFIX}/openapi.json").json()
    methods = {m for path in document["paths"].values() for m in path}
    assert methods == {"get"}
    assert f"{AUDIT_PREFIX}/at" in document["paths"]


def test_a_store_that_cannot_be_read_is_503(api: Api, tmp_path: Path) -> None:
    api.store.close()
    Path(api.db.target).unlink()
    answer = api.get("/rollouts")
    assert answer.status_code == 503
    assert "cannot be read" in answer.json()["error"]
