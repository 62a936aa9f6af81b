"""schemathesis against the auditor API's own OpenAPI document (issue #15: "a schemathesis
run against the API's OpenAPI finds no 5xx").

Requests of every documented operation are generated from the published schema, valid and
invalid ones, and sent in process to the API over a store holding a real rollout's records.
Three in four carry an auditor token (so they reach the queries), the rest whatever was
generated (so they exercise the refusals). Every answer must be no server error and must
match the document: a documented status, content type and body schema.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from canary.access import Gatekeeper
from canary.api.auditor import AUDIT_PREFIX
from canary.audit import AuditStore, upgrade_to_head
from canary.audit.checkpoint import (
    CheckpointSigner,
    generate_private_key_pem,
)
from canary.auditor_access import AuditorGate, new_token
from tests.auditor_rig import auditor_app, fill
from tests.conftest import Database
from tests.unit.evidence_story import approved

TOKEN, ENTRY = new_token("schemathesis")
EXAMPLES = 40

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def _no_cluster(_spec: Any) -> dict[str, Any]:
    return {"authenticated": False, "allowed": False}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    path = tmp_path_factory.mktemp("auditor") / "audit.db"
    database = Database("sqlite", f"sqlite:///{path}", str(path))
    upgrade_to_head(database.url)
    story = approved()
    signer = CheckpointSigner.from_pem(generate_private_key_pem())
    with AuditStore.from_url(database.url) as store:
        fill(store, story, signer)
        gate = AuditorGate(lambda: (ENTRY,), Gatekeeper(_no_cluster, _no_cluster))
        application, _ = auditor_app(store, story, gate, signer)
        yield application


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    schema = schemathesis.openapi.from_asgi(f"{AUDIT_PREFIX}/openapi.json", app)
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        found.append((operation.path, operation.method.upper()))
    return found


def test_every_operation_is_documented_and_reads(app: FastAPI) -> None:
    operations = _operations(app)
    assert {method for _, method in operations} == {"GET"}
    assert len(operations) == 9


@pytest.mark.parametrize(
    "path",
    [
        "/rollouts", "/rollouts/{rollout_id}", "/rollouts/{rollout_id}/records",
        "/rollouts/{rollout_id}/approvals", "/rollouts/{rollout_id}/report", "/at",
        "/verify", "/checkpoints", "/export",
    ],
)  # fmt: skip
def test_generated_requests_get_no_server_error_and_answers_that_match_the_schema(
    app: FastAPI, path: str
) -> None:
    # the document the API publishes, not one the test builds
    schema = schemathesis.openapi.from_asgi(f"{AUDIT_PREFIX}/openapi.json", app)
    operation = schema[f"{AUDIT_PREFIX}{path}"]["GET"]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
        ],
    )  # fmt: skip
    @given(case=cases)
    def exchange(case: schemathesis.Case[Any]) -> None:
        headers = {}
        if zlib.crc32(repr(sorted((case.query or {}).items())).encode()) % 4:
            headers["Authorization"] = f"Bearer {TOKEN}"
        response = case.call(base_url="https://auditor.test", headers=headers)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    exchange()
    # most requests got past the credentials, to the queries and their own refusals
    assert statuses[401] < sum(statuses.values()) / 2, statuses
    assert set(statuses) - {401, 422}, statuses


def test_a_valid_request_of_each_kind_is_answered(app: FastAPI) -> None:
    async def get(url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="https://auditor.test") as c:
            return await c.get(url, headers={"Authorization": f"Bearer {TOKEN}"})

    for url in (
        f"{AUDIT_PREFIX}/rollouts",
        f"{AUDIT_PREFIX}/at?namespace=fraud&name=scorer&time=2026-11-23T10:10:00Z",
        f"{AUDIT_PREFIX}/verify",
        f"{AUDIT_PREFIX}/export?format=csv",
    ):
        assert asyncio.run(get(url)).status_code == 200, url
