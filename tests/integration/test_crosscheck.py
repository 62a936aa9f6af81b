"""The mutable tables against the hash chain (``AuditStore.crosscheck``), on PostgreSQL and
SQLite.

A database administrator can rewrite a command's reason, an approval's approver or a
webhook delivery's outcome without breaking the chain: ``verify`` still passes. The
cross-check names each such change by table, row, field and both values, and the record it
was compared with; it tells a row inserted or deleted by hand, and rows older than chaining
(written by the previous version, no records) are told apart from tampering.

Tampering is done as the database superuser: the mutable tables have no triggers; the
append-only ``webhook_deliveries`` is changed with its triggers bypassed as
``tests.tampering`` does it (a replica session with the ``ENABLE ALWAYS`` triggers
disabled for the transaction on PostgreSQL; dropped and re-created on SQLite).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from canary.audit import (
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditStore,
    CommandRow,
    Discrepancy,
    Fence,
    RolloutRow,
)
from canary.audit import crosscheck as crosscheck_module
from canary.audit.schema import ApprovalModel, CommandModel, WebhookDeliveryRow
from tests.conftest import Database
from tests.tampering import untriggered

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 20, 2, 14, tzinfo=UTC)
LEASE = "kserve-canary-leader"
FENCE = Fence(LEASE, "pod-a", 1)
NS, NAME = "fraud", "scorer"
ALICE = "alice@bank.example"
DIGEST = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Seqs:
    """Where the records of the population are."""

    requested: int  # cmd-1's manual.requested
    settled: int  # cmd-1's manual.settled
    start_requested: int  # cmd-2's
    delivered: int
    approval: int  # the approval's latest record


def _rollout(rollout_id: str = "r-1") -> RolloutRow:
    return RolloutRow(
        id=rollout_id, namespace=NS, name=NAME, isvc_uid="uid-1", policy_name="default",
        mode="knative", phase="AwaitingApproval", step_index=0, canary_revision="rev-2",
        stable_revision="rev-1", state={}, created_at=T0, updated_at=T0, next_check_at=None,
        active=True,
    )  # fmt: skip


def _approval(approval_id: str = "ap-1", rollout_id: str = "r-1") -> ApprovalRow:
    return ApprovalRow(
        id=approval_id, rollout_id=rollout_id, revision="rev-2", step_index=1,
        gate="servicenow", change_number=None, change_sys_id=None,
        risk_owner_group="credit-risk", requested_by="carol@bank.example",
        requested_at=T0 + timedelta(seconds=4), deadline=T0 + timedelta(hours=8),
        state="pending", requesters=("carol@bank.example",),
    )  # fmt: skip


def populate(store: AuditStore) -> Seqs:
    """What a controller writes: a settled command, a pending start, a delivery, an approval
    requested and then decided."""
    assert store.claim_epoch(LEASE, FENCE.holder, FENCE.epoch, T0)
    store.submit_command(
        CommandRow(
            id="cmd-1", namespace=NS, name=NAME, command="pause", actor=ALICE,
            actor_uid="u-1", actor_groups=("risk",), reason="ticket OPS-42", args={},
            requested_at=T0,
        )
    )  # fmt: skip
    settled = store.settle_command(
        "cmd-1", "accepted", "fraud/scorer paused at 10%", T0 + timedelta(seconds=1),
        fence=FENCE,
    )  # fmt: skip
    store.submit_command(
        CommandRow(
            id="cmd-2", namespace=NS, name=NAME, command="start", actor=ALICE,
            reason="new model", args={"storage_uri": "s3://models/v2"},
            requested_at=T0 + timedelta(seconds=2),
        )
    )  # fmt: skip
    assert store.record_delivery(
        "msg-1", received_at=T0 + timedelta(seconds=3), source="webhook", payload_digest=DIGEST,
        signature_valid=True, outcome="accepted",
    )  # fmt: skip
    requested = AuditEntry(
        at=T0 + timedelta(seconds=4), actor=Actor("controller", "pod-a"),
        action="approval.requested", rollout_id="r-1", reason="approval needed before 100%",
        evidence={"approval_id": "ap-1"},
    )  # fmt: skip
    store.commit([requested], fence=FENCE, rollout=_rollout(), approvals=[_approval()])
    verified = AuditEntry(
        at=T0 + timedelta(seconds=5), actor=Actor("servicenow", "rita"),
        action="approval.decision_verified", rollout_id="r-1", reason="approved by rita",
    )  # fmt: skip
    assert store.update_approval(
        "ap-1", only_if_state="pending", record=verified, state="approved",
        approver="rita@bank.example", decided_at=T0 + timedelta(seconds=5),
        decision={"approver_name": "rita", "comments": "fine"}, change_number="CHG0030001",
    )  # fmt: skip
    by_action: dict[tuple[str, str], int] = {}
    for record in store.records():
        entry = record.entry
        key = entry.correlation_id or entry.webhook_id or str(entry.evidence.get("approval_id"))
        by_action[(entry.action, key)] = record.seq
    return Seqs(
        requested=by_action[("manual.requested", "cmd-1")],
        settled=settled.seq,
        start_requested=by_action[("manual.requested", "cmd-2")],
        delivered=by_action[("webhook.delivered", "msg-1")],
        approval=by_action[("approval.decision_verified", "ap-1")],
    )


def as_superuser(db: Database, table: str, statement: str) -> None:
    """Run ``statement`` on an append-only ``table`` as its administrator would: the triggers
    refuse it first, so they are bypassed (``tests.tampering.untriggered``)."""
    with pytest.raises(db.error, match="append-only"):
        db.query(statement)
    untriggered(db, [(statement, ())])


def only(store: AuditStore) -> Discrepancy:
    assert store.verify().ok, "the chain itself is intact: only the tables were changed"
    (found,) = store.crosscheck()
    return found


# --------------------------------------------------------------------------------------------


def test_the_tables_as_the_controller_wrote_them_agree_with_the_chain(store: AuditStore) -> None:
    populate(store)
    assert store.crosscheck() == []


@pytest.mark.parametrize(
    ("statement", "key", "record", "named"),
    [
        pytest.param(
            "UPDATE commands SET reason = 'routine' WHERE id = 'cmd-1'", "cmd-1", "requested",
            "reason is 'routine' in the table but 'ticket OPS-42' in the chain", id="reason",
        ),
        pytest.param(
            "UPDATE commands SET actor = 'bob@bank.example' WHERE id = 'cmd-1'", "cmd-1",
            "requested", "actor is 'bob@bank.example' in the table but 'alice@bank.example'",
            id="who",
        ),
        pytest.param(
            """UPDATE commands SET actor_groups = '["risk", "admins"]' WHERE id = 'cmd-1'""",
            "cmd-1", "requested",
            "actor_groups is ['risk', 'admins'] in the table but ['risk'] in the chain",
            id="their-groups",
        ),
        pytest.param(
            """UPDATE commands SET args = '{"storage_uri": "s3://evil/v9"}' WHERE id = 'cmd-2'""",
            "cmd-2", "start_requested",
            "args is {'storage_uri': 's3://evil/v9'} in the table but "
            "{'storage_uri': 's3://models/v2'} in the chain",
            id="the-model-started",
        ),
        pytest.param(
            "UPDATE commands SET result = 'nothing happened' WHERE id = 'cmd-1'", "cmd-1",
            "settled", "result is 'nothing happened' in the table but 'fraud/scorer paused at "
            "10%' in the chain", id="result",
        ),
        pytest.param(
            "UPDATE commands SET state = 'pending', result = NULL, decided_at = NULL "
            "WHERE id = 'cmd-1'", "cmd-1", "settled",
            "state is 'pending' in the table but 'accepted' in the chain", id="unsettled",
        ),
    ],
)  # fmt: skip
def test_an_edited_command_is_named_with_both_values(
    db: Database, store: AuditStore, statement: str, key: str, record: str, named: str
) -> None:
    seqs = populate(store)
    db.query(statement)
    found = only(store)
    assert (found.table, found.key, found.kind) == ("commands", key, "edited")
    assert found.seq == getattr(seqs, record)
    assert named in found.problem
    assert found.tampering


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        pytest.param(
            "UPDATE approvals SET approver = 'mallory@bank.example' WHERE id = 'ap-1'",
            "approver is 'mallory@bank.example' in the table but 'rita@bank.example' in the "
            "chain", id="approver",
        ),
        pytest.param(
            "UPDATE approvals SET change_number = 'CHG0099999' WHERE id = 'ap-1'",
            "change_number is 'CHG0099999' in the table but 'CHG0030001' in the chain",
            id="change-number",
        ),
        pytest.param(
            "UPDATE approvals SET state = 'rejected' WHERE id = 'ap-1'",
            "state is 'rejected' in the table but 'approved' in the chain", id="state",
        ),
        pytest.param(
            "UPDATE approvals SET decided_at = NULL WHERE id = 'ap-1'",
            "decided_at is None in the table but '2026-11-20T02:14:05.000000Z' in the chain",
            id="decision-time",
        ),
    ],
)  # fmt: skip
def test_an_edited_approval_is_named_with_both_values(
    db: Database, store: AuditStore, statement: str, named: str
) -> None:
    seqs = populate(store)
    db.query(statement)
    found = only(store)
    assert (found.table, found.key, found.kind, found.seq) == (
        "approvals", "ap-1", "edited", seqs.approval,
    )  # fmt: skip
    assert named in found.problem


def test_a_delivery_outcome_edited_by_the_superuser_is_named(
    db: Database, store: AuditStore
) -> None:
    seqs = populate(store)
    as_superuser(db, "webhook_deliveries", "UPDATE webhook_deliveries SET outcome = 'refused'")
    found = only(store)
    assert (found.table, found.key, found.kind, found.seq) == (
        "webhook_deliveries", "msg-1", "edited", seqs.delivered,
    )  # fmt: skip
    assert "outcome is 'refused' in the table but 'accepted' in the chain" in found.problem


@pytest.mark.parametrize(
    ("table", "statement", "key"),
    [
        ("commands", "DELETE FROM commands WHERE id = 'cmd-2'", "cmd-2"),
        ("approvals", "DELETE FROM approvals WHERE id = 'ap-1'", "ap-1"),
        ("webhook_deliveries", "DELETE FROM webhook_deliveries", "msg-1"),
    ],
)
def test_a_deleted_row_is_named_from_its_record(
    db: Database, store: AuditStore, table: str, statement: str, key: str
) -> None:
    populate(store)
    if table == "webhook_deliveries":
        as_superuser(db, table, statement)
    else:
        db.query(statement)
    found = only(store)
    assert (found.table, found.key, found.kind) == (table, key, "deleted")
    assert "row deleted?" in found.problem


def test_a_command_inserted_by_hand_is_not_in_the_chain(db: Database, store: AuditStore) -> None:
    populate(store)
    db.query(
        "INSERT INTO commands (id, namespace, name, command, actor, actor_uid, actor_groups, "
        "reason, args, requested_at, state, result, decided_at) "
        "SELECT 'cmd-forged', namespace, name, 'approve', 'rita@bank.example', actor_uid, "
        "actor_groups, 'looks fine', args, requested_at, state, result, decided_at "
        "FROM commands WHERE id = 'cmd-1'"
    )
    found = only(store)
    assert (found.table, found.key, found.kind) == ("commands", "cmd-forged", "not_in_chain")
    assert "not in the chain (edited or inserted outside the controller?)" in found.problem
    assert found.tampering


def test_rows_older_than_chaining_are_told_apart_from_tampering(
    db: Database, store: AuditStore
) -> None:
    """Rows a controller of the previous version wrote, without records, a day before the
    first chained record: reported, but not as tampering."""
    old = T0 - timedelta(days=1)
    store.commit([], rollout=replace(_rollout("r-old"), active=False))
    engine = create_engine(db.url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(CommandModel).values(
                    id="cmd-old", namespace=NS, name=NAME, command="pause", actor=ALICE,
                    actor_uid=None, actor_groups=[], reason="old", args={}, requested_at=old,
                    state="accepted", result="paused", decided_at=old,
                )
            )  # fmt: skip
            conn.execute(
                insert(WebhookDeliveryRow).values(
                    webhook_id="msg-old", received_at=old, source="servicenow",
                    payload_digest=DIGEST, signature_valid=True, outcome="accepted",
                )
            )  # fmt: skip
            values = {c.name: getattr(_approval("ap-old", "r-old"), c.name)
                      for c in ApprovalModel.__table__.columns}  # fmt: skip
            values.update(requested_at=old, requesters=[], asked=[])
            conn.execute(insert(ApprovalModel).values(**values))
    finally:
        engine.dispose()

    populate(store)

    found = store.crosscheck()
    assert [(d.table, d.key, d.kind) for d in found] == [
        ("approvals", "ap-old", "predates"),
        ("commands", "cmd-old", "predates"),
        ("webhook_deliveries", "msg-old", "predates"),
    ]
    assert not any(d.tampering for d in found)
    assert all("predates chained" in d.problem for d in found)
    assert "2026-11-20T02:14:00.000000Z" in found[0].problem  # when chaining began


def test_writes_while_it_reads_are_not_mistaken_for_tampering(
    db: Database, store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command queued between reading the chain and reading the tables would look like a
    row without its record if the two reads saw different moments: they see one."""
    populate(store)
    read_chain = crosscheck_module._read_chain

    def then_a_command_arrives(conn: Any) -> Any:
        chained = read_chain(conn)
        with AuditStore.from_url(db.url) as other:
            other.submit_command(
                CommandRow(
                    id="cmd-meanwhile", namespace=NS, name=NAME, command="resume",
                    actor=ALICE, reason="go on", args={},
                    requested_at=T0 + timedelta(minutes=1),
                )
            )  # fmt: skip
        return chained

    monkeypatch.setattr(crosscheck_module, "_read_chain", then_a_command_arrives)
    assert store.crosscheck() == []
    monkeypatch.undo()
    assert store.crosscheck() == []  # and once both are there, they agree
    assert store.get_command("cmd-meanwhile") is not None
