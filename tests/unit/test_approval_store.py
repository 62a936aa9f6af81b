"""The approvals row is written by two parties: the engine (the request, a close request, a
Kubernetes-gate decision) and the approval worker (the change it opened, a decision it
verified). Neither may erase what the other wrote in between: a change left open in
ServiceNow asks risk owners to approve a rollout that no longer exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from canary.audit import ApprovalRow
from canary.audit.actors import approval_snapshot
from tests.unit.approval_rig import ASKED_AT, Clock, Rollout, migrated, noted

CHANGE = ("CHG0000042", "0" * 31 + "1")


def _awaiting(tmp_path: Path) -> tuple[Rollout, ApprovalRow]:
    store = migrated(f"sqlite:///{tmp_path / 'audit.db'}")
    rollout = Rollout(store, Clock())
    rollout.awaiting_approval()
    return rollout, rollout.row()


def test_a_close_request_keeps_the_change_the_worker_opened_meanwhile(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)  # the engine read the row: no change yet
    store = rollout.store
    assert store.update_approval(read.id, only_if_state="pending", change_number=CHANGE[0],
                                 change_sys_id=CHANGE[1], record=noted())  # fmt: skip
    closing = replace(read, state="cancelled", close_code="cancelled", close_note="superseded",
                      closed_at=ASKED_AT)  # fmt: skip
    store.upsert_approval(closing)  # the engine's write, from what it had read
    stored = store.approval_by_id(read.id)
    assert stored is not None
    assert (stored.change_number, stored.change_sys_id) == CHANGE
    assert stored.close_code == "cancelled"
    assert stored.closed_at is None, "the worker still has a change to close"
    assert [r.id for r in store.approvals_to_close()] == [read.id]


def test_a_close_request_never_undoes_a_decision_the_worker_verified(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)
    store = rollout.store
    store.update_approval(read.id, only_if_state="pending", state="approved", approver="alice",
                          decided_at=ASKED_AT, decision={"approver_name": "alice"},
                          record=noted())  # fmt: skip
    store.upsert_approval(replace(read, state="cancelled", close_code="cancelled",
                                  close_note="x"))  # fmt: skip
    stored = store.approval_by_id(read.id)
    assert stored is not None
    assert (stored.state, stored.approver, stored.decision) == (
        "approved",
        "alice",
        {"approver_name": "alice"},
    )


def test_a_decision_is_written_only_from_pending(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)
    store = rollout.store
    store.update_approval(read.id, state="expired", record=noted())
    store.upsert_approval(replace(read, state="approved", approver="alice",
                                  decided_at=ASKED_AT, decision={"late": True}))  # fmt: skip
    stored = store.approval_by_id(read.id)
    assert stored is not None
    assert (stored.state, stored.approver, stored.decision) == ("expired", None, None)


def test_an_approval_asked_again_is_a_row_of_its_own_and_the_first_keeps_its_change(
    tmp_path: Path,
) -> None:
    rollout, first = _awaiting(tmp_path)
    store = rollout.store
    store.update_approval(first.id, change_number=CHANGE[0], change_sys_id=CHANGE[1],
                          record=noted())  # fmt: skip
    store.upsert_approval(replace(first, state="expired", close_code="cancelled",
                                  close_note="deadline passed"))  # fmt: skip
    second = replace(first, id="second", attempt=2, requested_at=ASKED_AT)
    store.upsert_approval(second)
    latest = store.get_approval(first.rollout_id, first.revision, first.step_index)
    assert latest is not None
    assert (latest.id, latest.attempt, latest.change_number) == ("second", 2, None)
    assert [r.id for r in store.approvals_to_close()] == [first.id]
    assert [a.attempt for a in store.approvals_for(first.rollout_id)] == [1, 2]


def test_closing_without_a_change_is_done_at_once(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)
    store = rollout.store
    store.upsert_approval(replace(read, state="cancelled", close_code="cancelled",
                                  close_note="superseded", closed_at=ASKED_AT))  # fmt: skip
    stored = store.approval_by_id(read.id)
    assert stored is not None
    assert stored.closed_at == ASKED_AT
    assert store.approvals_to_close() == []


def test_a_field_an_auditor_reads_is_never_written_without_its_record(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)
    store = rollout.store
    head = store.head()
    with pytest.raises(ValueError, match=r"approver, state on approval .* give the audit record"):
        store.update_approval(read.id, state="approved", approver="mallory")
    assert store.approval_by_id(read.id) == read
    assert store.head() == head
    # the worker's books need none, and get none
    assert store.update_approval(read.id, last_checked_at=ASKED_AT, last_error="timeout")
    assert store.head() == head


def test_a_write_that_does_not_happen_is_not_recorded(tmp_path: Path) -> None:
    rollout, read = _awaiting(tmp_path)
    store = rollout.store
    assert store.update_approval(read.id, state="expired", record=noted("approval.expired"))
    head = store.head()
    assert not store.update_approval(read.id, only_if_state="pending", state="approved",
                                     approver="alice", record=noted())  # fmt: skip
    assert store.head() == head
    (last,) = store.records(after_seq=head[0] - 1)
    assert last.entry.action == "approval.expired"
    assert last.entry.evidence["approval"] == approval_snapshot(replace(read, state="expired"))
