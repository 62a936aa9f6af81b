"""The ``canary`` command as a user runs it: a real process, real files, a real database."""

from __future__ import annotations

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


def test_status_on_an_empty_database_says_nothing_is_in_progress(tmp_path: Path) -> None:
    url = _empty_database(tmp_path / "audit.db")
    result = run("status", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no rollouts in progress\n"


def test_a_command_with_no_controller_to_answer_stays_queued_and_exits_3(tmp_path: Path) -> None:
    url = _empty_database(tmp_path / "audit.db")
    result = run(
        "pause", "fraud/scorer", "--reason", "investigating alert", "--actor", "alice",
        "--wait", "0.5", "--database-url", url,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "pause queued (id " in result.stderr
    assert "but no leader answered within 0.5s" in result.stderr
    assert "it will be carried out when a controller leads" in result.stderr
    with AuditStore.from_url(url) as store:  # a leader that starts later will find it
        (queued,) = store.pending_commands()
    assert (queued.namespace, queued.name, queued.command) == ("fraud", "scorer", "pause")
    assert (queued.actor, queued.reason) == ("alice", "investigating alert")
    assert f"id {queued.id})" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("pause", "nope", "--reason", "x", "--actor", "a"),
            "expected NAMESPACE/NAME, got 'nope'",
            id="target-without-namespace",
        ),
        pytest.param(
            ("pause", "fraud/scorer", "--actor", "a"),
            "Missing option '--reason'",
            id="pause-without-reason",
        ),
        pytest.param(
            ("abort", "fraud/scorer", "--actor", "a"),
            "Missing option '--reason'",
            id="abort-without-reason",
        ),
        pytest.param(
            ("rollout", "start", "fraud/scorer", "--reason", "CHG0031337", "--actor", "a"),
            "Missing option '--storage-uri'",
            id="rollout-start-without-storage-uri",
        ),
    ],
)
def test_bad_command_lines_exit_2_and_queue_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    url = _empty_database(tmp_path / "audit.db")
    result = run(*args, "--database-url", url, "--wait", "0")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    with AuditStore.from_url(url) as store:
        assert store.pending_commands() == []


def _finished_rollout(
    store: AuditStore, namespace: str, phase: str, outcome: str, at: datetime
) -> None:
    from dataclasses import replace

    from canary import machine
    from canary.engine import RolloutDocument
    from canary.model import Phase, Revision, TrafficView
    from canary.policy import RolloutPolicy

    stable, canary = Revision("scorer-predictor-00001"), Revision("scorer-predictor-00002")
    view = TrafficView(canary, stable, {stable.name: 100}, 10, False, False)
    policy = RolloutPolicy(name="default")
    state, _ = machine.start(f"ro-{namespace}", namespace, "scorer", view, policy, at)
    state = replace(state.with_phase(Phase(phase), at), outcome=outcome)
    doc = RolloutDocument(state, policy, "knative", f"uid-{namespace}", "knative-otel")
    store.commit([], rollout=doc.row(state.rollout_id, at))


def test_status_by_name_shows_each_namespace_and_the_post_rollout_truth(tmp_path: Path) -> None:
    url = _empty_database(tmp_path / "audit.db")
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with AuditStore.from_url(url) as store:
        _finished_rollout(store, "fraud", "DriftReverted", "drift reverted by the controller", t0)
        _finished_rollout(
            store, "credit", "ManuallyRolledBack", "rolled back by hand by kubectl-patch",
            t0 + timedelta(minutes=1),
        )  # fmt: skip
    result = run("status", "scorer", "--database-url", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # a header and one line per namespace
    assert any("credit" in x and "ManuallyRolledBack" in x and "kubectl-patch" in x for x in lines)
    assert any("fraud" in x and "DriftReverted" in x and "reverted" in x for x in lines)
    only = run("status", "fraud/scorer", "--database-url", url)
    assert "credit" not in only.stdout
    assert "DriftReverted" in only.stdout
