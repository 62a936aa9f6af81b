"""`canary audit history|at|show|export|report|token` against a running auditor API (the
product's HTTP server on this machine's loopback, over a SQLite store holding a real
rollout's records): readable tables, JSON for scripts, and clear exits."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result

from canary.access import Gatekeeper
from canary.audit import AuditStore, compute_record_hash, upgrade_to_head
from canary.audit.checkpoint import (
    CheckpointSigner,
    generate_private_key_pem,
)
from canary.auditor_access import AuditorGate, new_token
from canary.cli import main as canary
from canary.server import HttpServer
from tests.auditor_rig import auditor_app, fill
from tests.conftest import Database
from tests.unit.evidence_story import ROLLOUT_ID, approved

pytestmark = pytest.mark.integration

TOKEN, ENTRY = new_token("external-audit")


def _no_cluster(_spec: object) -> dict[str, object]:
    return {"authenticated": False, "allowed": False}


@dataclass
class Auditor:
    url: str
    records: int

    def run(self, *args: str, token: str = TOKEN) -> Result:
        return CliRunner().invoke(canary, ["audit", *args, "--api-url", self.url, "--token", token])


@pytest.fixture(scope="module")
def auditor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auditor]:
    # the server runs in this process: its logs must not mix with the command's output
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    path = tmp_path_factory.mktemp("audit-cli") / "audit.db"
    database = Database("sqlite", f"sqlite:///{path}", str(path))
    upgrade_to_head(database.url)
    story = approved()
    signer = CheckpointSigner.from_pem(generate_private_key_pem())
    with AuditStore.from_url(database.url) as store:
        fill(store, story, signer)
        gate = AuditorGate(lambda: (ENTRY,), Gatekeeper(_no_cluster, _no_cluster))
        app, _ = auditor_app(store, story, gate, signer)
        server = HttpServer(app, host="127.0.0.1", port=0, certfile=None, keyfile=None)
        server.start()
        try:
            yield Auditor(f"http://127.0.0.1:{server.port}", store.head()[0])
        finally:
            server.stop()
            structlog.configure(**saved)


def test_history_is_a_table_and_json(auditor: Auditor) -> None:
    table = auditor.run("history")
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split()[:3] == ["STARTED", "(UTC)", "SERVICE"]
    assert f"fraud/scorer  {ROLLOUT_ID}  Succeeded" in table.output
    as_json = json.loads(auditor.run("history", "fraud", "-o", "json").stdout)
    assert [r["id"] for r in as_json["rollouts"]] == [ROLLOUT_ID]
    assert json.loads(auditor.run("history", "credit", "-o", "json").stdout) == {"rollouts": []}


def test_at_answers_who_served_mid_canary(auditor: Auditor) -> None:
    result = auditor.run("at", "2026-11-23T10:10:00Z", "fraud/scorer")
    assert result.exit_code == 0, result.output
    assert "r1 " in result.output
    assert "90%" in result.output
    assert "r2 " in result.output
    assert "10%" in result.output
    after = json.loads(auditor.run("at", "2026-11-23T10:30:00Z", "fraud/scorer", "-o",
                                   "json").stdout)  # fmt: skip
    revision = next(r for r in after["revisions"] if r["percent"] == 100)
    assert revision["revision"] == "r2"
    assert revision["approval"]["change_number"] == "CHG0031337"
    by_model = auditor.run("at", "2026-11-23T10:30:00Z", "--model", "s3://models/r2")
    assert by_model.exit_code == 0
    assert "fraud/scorer" in by_model.output


def test_show_prints_the_rollout_and_its_timeline(auditor: Auditor) -> None:
    result = auditor.run("show", ROLLOUT_ID)
    assert result.exit_code == 0, result.output
    assert f"rollout {ROLLOUT_ID}: fraud/scorer" in result.output
    assert "approved at 100%: CHG0031337 by Alice Approver" in result.output
    assert "rollout.started" in result.output
    assert "promoted" in result.output


def test_export_writes_records_whose_hashes_recompute(auditor: Auditor, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    result = auditor.run("export", "--format", "json", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == auditor.records
    for line in lines:
        record = json.loads(line)
        assert compute_record_hash(record["prev_hash"], record["body"]) == record["record_hash"]
    rows = list(csv.DictReader(io.StringIO(auditor.run("export", "--format", "csv").stdout)))
    assert len(rows) == auditor.records
    assert {r["action"] for r in rows} >= {"rollout.started", "promoted"}


def test_report_writes_one_html_file(auditor: Auditor, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = auditor.run("report", ROLLOUT_ID, "-o", str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") >= 2


@pytest.mark.parametrize(
    ("args", "token", "code", "message"),
    [
        (["history"], "ksca_wrong", 4, "does not accept this token"),
        (["show", "no-such-rollout"], TOKEN, 2, "no rollout 'no-such-rollout'"),
        (["report", "no-such-rollout", "-o", "/tmp/x.html"], TOKEN, 2, "no rollout"),
        (["at", "2026-11-23T10:10:00Z"], TOKEN, 2, "NAMESPACE/NAME or --model"),
        (["history", "--outcome", "Great"], TOKEN, 2, "unknown outcome"),
    ],
)
def test_refusals_exit_with_their_own_codes(
    auditor: Auditor, args: list[str], token: str, code: int, message: str
) -> None:
    result = auditor.run(*args, token=token)
    assert result.exit_code == code, result.output
    assert message in result.output


def test_an_api_nobody_answers_is_exit_3() -> None:
    result = CliRunner().invoke(
        canary, ["audit", "history", "--api-url", "http://127.0.0.1:1", "--token", TOKEN]
    )
    assert result.exit_code == 3
    assert "no controller answered" in result.output


def test_token_prints_the_token_and_its_file_entry() -> None:
    result = CliRunner().invoke(canary, ["audit", "token", "external-audit-2027"])
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert token.startswith("ksca_")
    assert "name: external-audit-2027" in result.stderr
    assert token not in result.stderr
