"""The evidence dossier of rollouts the real engine ran against a real audit store (SQLite,
the cluster faked as in tests/integration/test_engine.py): the row, the records and the
chain's verification exactly as the store returns them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from canary.audit import AuditStore, upgrade_to_head
from canary.evidence import ChainVerification, Dossier, build_dossier, render_html
from tests.conftest import Database
from tests.integration.test_engine import NAME, NS, R1, R2, FailingAnalyzer, Rig, make_rig

pytestmark = pytest.mark.integration


@pytest.fixture
def lite_store(sqlite_database: Database) -> Iterator[AuditStore]:
    upgrade_to_head(sqlite_database.url)
    with AuditStore.from_url(sqlite_database.url) as audit_store:
        yield audit_store


def dossier_of(rig: Rig) -> Dossier:
    """What the auditor API will do: the rollout's row, its records, its approvals, and the
    chain verified."""
    store = rig.store
    row = store.last_rollout_for(NS, NAME)
    assert row is not None
    records = [r for r in store.records() if r.entry.rollout_id in (row.id, None)]
    head_seq, _ = store.head()
    verification = ChainVerification.from_report(
        store.verify(), head_seq=head_seq, verified_at=rig.clock()
    )
    return build_dossier(
        rollout=row,
        records=records,
        approvals=store.approvals_for(row.id),
        verification=verification,
        as_of=rig.clock(),
    )


def test_the_dossier_of_a_failed_analysis_and_its_rollback(lite_store: AuditStore) -> None:
    rig = make_rig(lite_store, analyzer=FailingAnalyzer())
    rig.to_first_step()  # the first analysis fails at once and rolls back
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)  # the status shows 0 %: RolledBack

    dossier = dossier_of(rig)

    summary = dossier.summary
    assert (summary.phase, summary.in_progress) == ("RolledBack", False)
    assert summary.reason is not None
    assert summary.reason.startswith("analysis failed: latency-p99 failed")
    assert summary.stable is not None
    assert summary.canary is not None
    assert (summary.stable.revision, summary.canary.revision) == (R1, R2)
    assert [(i.purpose, i.percent, i.outcome) for i in dossier.intents] == [
        ("start", 10, "applied"),
        ("rollback", 0, "applied"),
    ]
    assert all(i.seen_at is not None for i in dossier.intents)
    last = dossier.traffic[-1]
    assert (last.action, last.share(R1), last.share(R2)) == ("rolled_back", 100, 0)
    (step,) = dossier.steps
    assert [r.verdict for r in step.rounds] == ["Failed"]
    assert dossier.verification.status == "verified"
    assert dossier.verification.chain is not None
    assert dossier.verification.chain.head_seq == dossier.log[-1].seq
    assert Dossier.from_json(dossier.to_json()) == dossier
    assert 'class="box verified"' in render_html(dossier)


def test_the_dossier_of_an_abort_names_the_person(lite_store: AuditStore) -> None:
    rig = make_rig(lite_store)
    rig.to_first_step()
    rig.engine.run_command(rig.command("abort"))
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)  # the status shows 0 %: Aborted

    dossier = dossier_of(rig)

    assert dossier.summary.phase == "Aborted"
    (abort,) = dossier.manual
    assert (abort.what, abort.accepted, abort.reason) == ("abort", True, "ticket OPS-42")
    assert (abort.actor.kind, abort.actor.id) == ("human", "alice@bank.example")
    assert [o.action for o in dossier.other] == []
