"""The ``canary`` command as a user runs it: a real process, real files, a real database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from canary.audit import Actor, AuditEntry, AuditStore, ObjectRef, upgrade_to_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY = Path(sys.executable).with_name("canary")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CANARY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=REPO,
    )


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("policy", "audit", "db"):
        assert command in result.stdout


def test_policy_validate_accepts_the_shipped_policies() -> None:
    result = run("policy", "validate", "deploy/policies")
    assert result.returncode == 0, result.stderr
    assert "3 policies valid" in result.stdout


def test_policy_validate_reports_every_problem_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: fraud\nsteps: [50, 25, 100]\nstepHold: soon\napproval: {gate: email}\n"
    )
    result = run("policy", "validate", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "field steps: steps must be strictly increasing (got [50, 25, 100])" in result.stderr
    assert "field stepHold: must be a duration" in result.stderr
    assert "field approval.gate:" in result.stderr
    assert "3 problems found; nothing loaded" in result.stderr


def test_policy_show_prints_defaults_filled_in() -> None:
    result = run("policy", "show", "deploy/policies", "credit-decisioning")
    assert result.returncode == 0, result.stderr
    assert '"riskOwnerGroup": "credit-risk-owners"' in result.stdout
    assert '"trafficTimeout": "2m"' in result.stdout
    unknown = run("policy", "show", "deploy/policies", "nope")
    assert unknown.returncode == 2
    assert "known policies: credit-decisioning, default, fraud-scoring" in unknown.stderr


def _audited_database(path: Path, records: int = 6) -> str:
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    t0 = datetime(2026, 11, 23, 2, 14, tzinfo=UTC)
    with AuditStore.from_url(url) as store:
        store.append(
            [
                AuditEntry(
                    at=t0 + timedelta(seconds=i),
                    actor=Actor("controller", "kserve-canary-0"),
                    action="rollout.step_advanced",
                    rollout_id="ro-1",
                    obj=ObjectRef("fraud", "scorer"),
                    reason=f"step {i}",
                )
                for i in range(records)
            ]
        )
    return url


def test_db_upgrade_then_audit_verify_on_an_intact_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgraded = run("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    url = _audited_database(tmp_path / "fresh.db")
    result = run("audit", "verify", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert "audit chain intact: 6 records" in result.stdout


def test_audit_verify_names_the_first_tampered_record(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    url = _audited_database(db)
    with sqlite3.connect(db) as conn:  # an attacker with write access to the file
        triggers = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        ]
        for name in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE audit_log SET body = replace(body, 'step 3', 'step 9') WHERE seq = 4")
    result = run("audit", "verify", "--database-url", url)
    assert result.returncode == 1
    assert "BROKEN at record 4" in result.stderr
    assert "3 records verified before the break" in result.stderr


def test_audit_verify_on_an_unreachable_database_says_so(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    result = run("audit", "verify", "--database-url", url)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:1" in result.stderr


def test_database_url_comes_from_the_environment(tmp_path: Path) -> None:
    url = _audited_database(tmp_path / "env.db", records=2)
    import os

    result = run("audit", "verify", env={**os.environ, "KSC_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert "2 records" in result.stdout


# --- operating rollouts ---------------------------------------------------------------------


def _empty_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    return url


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("pause", "a/b/c", "--reason", "x"),
            "expected NAME or NAMESPACE/NAME, got 'a/b/c'",
            id="bad-target",
        ),
        pytest.param(
            ("pause", "fraud/scorer", "-n", "credit", "--reason", "x"),
            "names namespace 'fraud' but -n says 'credit'",
            id="two-namespaces",
        ),
        pytest.param(("pause", "scorer"), "Missing option '--reason'", id="pause-without-reason"),
        pytest.param(("abort", "scorer"), "Missing option '--reason'", id="abort-without-reason"),
        pytest.param(
            ("promote", "scorer", "--reason", "  "), "must not be empty", id="blank-reason"
        ),
        pytest.param(
            ("rollout", "start", "scorer", "--reason", "CHG0031337"),
            "Missing option '--storage-uri'",
            id="rollout-start-without-storage-uri",
        ),
        pytest.param(
            ("pause", "scorer", "--reason", "x", "--wait", "500"),
            "500.0 is not in the range 0<=x<=120",
            id="wait-too-long",
        ),
        pytest.param(("status", "-A", "-n", "fraud"), "-A lists every namespace", id="A-with-n"),
    ],
)
def test_bad_command_lines_exit_2_before_anything_is_sent(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    env = dict(os.environ, KUBECONFIG=str(_kubeconfig(tmp_path, "user: {token: abc}")))
    env["KSC_API_URL"] = "http://127.0.0.1:9"
    result = run(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _kubeconfig(folder: Path, user: str) -> Path:
    path = folder / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        f"users: [{{name: u, {user}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    return path


def test_a_command_with_no_api_named_says_how_to_reach_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KSC_API_URL"}
    env["KUBECONFIG"] = str(_kubeconfig(tmp_path, "user: {token: abc}"))
    result = run("pause", "scorer", "--reason", "x", env=env)
    assert result.returncode == 2, result.stderr
    assert "no operator API given: pass --api-url or set KSC_API_URL" in result.stderr


def test_a_context_with_no_credentials_is_told_what_is_needed(tmp_path: Path) -> None:
    env = dict(os.environ, KUBECONFIG=str(_kubeconfig(tmp_path, "user: {}")))
    env["KSC_API_URL"] = "https://127.0.0.1:1"
    result = run("promote", "scorer", "--reason", "x", env=env)
    assert result.returncode == 2, result.stderr
    assert "has neither a bearer token nor a client certificate" in result.stderr


def test_a_client_certificate_that_does_not_load_is_named(tmp_path: Path) -> None:
    from tests.unit.webhook_pems import CA_ONE, KEY_BLOCK

    (tmp_path / "c.crt").write_bytes(CA_ONE)
    (tmp_path / "c.key").write_bytes(KEY_BLOCK)  # not a usable key
    user = f"user: {{client-certificate: {tmp_path / 'c.crt'}, client-key: {tmp_path / 'c.key'}}}"
    env = dict(os.environ, KUBECONFIG=str(_kubeconfig(tmp_path, user)))
    env["KSC_API_URL"] = "https://127.0.0.1:1"
    result = run("promote", "scorer", "--reason", "x", env=env)
    assert result.returncode == 2, result.stderr
    assert "cannot use the client certificate" in result.stderr
    assert "Traceback" not in result.stderr
