"""AuditStore against real databases: SQLite and a private PostgreSQL server."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary.audit import (
    GENESIS_HASH,
    ActiveRolloutExists,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditError,
    AuditStore,
    Fence,
    FencedOut,
    Measurement,
    ModelRef,
    ObjectRef,
    RolloutRow,
    StaleRollout,
    StoreUnavailable,
    canonical_json,
    compute_record_hash,
    entry_body,
    upgrade_to_head,
)
from canary.audit.checkpoint import Checkpoint, CheckpointSigner, generate_private_key_pem
from tests.conftest import Database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
CONTROLLER = Actor("controller", "system:serviceaccount:kserve-canary:controller/pod-0")
ISVC = ObjectRef("fraud", "scorer", uid="uid-1", generation=3, resource_version="100")
STABLE = ModelRef("scorer", "s3://models/scorer/v1", "sha256:aa", "scorer-predictor-00001")
CANARY = ModelRef("scorer", "s3://models/scorer/v2", "sha256:bb", "scorer-predictor-00002")


def measurement(i: int, *, check: str = "error_rate", value: float | None = 0.01) -> Measurement:
    return Measurement(
        check=check,
        evaluated_at=T0 + timedelta(seconds=30 * i),
        query=f'sum(rate(errors{{revision="scorer-predictor-00002"}}[1m])) # {i}',
        prometheus_url="http://prometheus:9090",
        response_digest=f"sha256:{i:064x}",
        canary_value=value,
        baseline_value=0.02,
        canary_samples=100 + i,
        baseline_samples=900,
        statistic=1.5,
        threshold=0.05,
        verdict="pass",
        dry_run=False,
        detail={"window": "1m", "i": i},
    )


def entry(
    i: int,
    *,
    action: str = "analysis.evaluated",
    rollout_id: str = "ro-1",
    measurements: tuple[Measurement, ...] = (),
    **extra: Any,
) -> AuditEntry:
    fields: dict[str, Any] = {
        "at": T0 + timedelta(seconds=i),
        "actor": CONTROLLER,
        "action": action,
        "rollout_id": rollout_id,
        "obj": ISVC,
        "stable": STABLE,
        "canary": CANARY,
        "traffic_before": {"scorer-predictor-00001": 90, "scorer-predictor-00002": 10},
        "traffic_after": {"scorer-predictor-00001": 75, "scorer-predictor-00002": 25},
        "reason": f"step {i}",
        "evidence": {"step": i, "notes": ["ok"]},
        "measurements": measurements,
        "correlation_id": f"corr-{i}",
        "leader_epoch": 1,
    }
    return AuditEntry(**(fields | extra))


def rollout(
    rollout_id: str = "ro-1", *, active: bool = True, phase: str = "progressing", step: int = 0
) -> RolloutRow:
    return RolloutRow(
        id=rollout_id,
        namespace="fraud",
        name="scorer",
        isvc_uid="uid-1",
        policy_name="fraud-scoring",
        mode="knative",
        phase=phase,
        step_index=step,
        canary_revision="scorer-predictor-00002",
        stable_revision="scorer-predictor-00001",
        state={"phase": phase, "step": step, "history": [1, 2]},
        created_at=T0,
        updated_at=T0 + timedelta(minutes=step),
        next_check_at=T0 + timedelta(minutes=step + 1),
        active=active,
    )


# --------------------------------------------------------------------------------------------
# appending and reading
# --------------------------------------------------------------------------------------------


def test_empty_store(store: AuditStore) -> None:
    assert store.head() == (0, GENESIS_HASH)
    assert store.records() == []
    report = store.verify()
    assert (report.ok, report.records_checked, report.head_hash) == (True, 0, GENESIS_HASH)


def test_append_and_read_back(store: AuditStore) -> None:
    entries = [
        entry(1, action="rollout.started"),
        entry(
            2,
            action="approval.verified",
            change_number="CHG0001",
            change_sys_id="sys-1",
            approver="alice",
            approval_time=T0 + timedelta(minutes=5),
            webhook_id="wh-1",
            payload_digest="sha256:cc",
        ),
        entry(3, action="promoted", measurements=(measurement(1),)),
    ]
    written = store.append(entries)
    assert [r.seq for r in written] == [1, 2, 3]

    read = store.records()
    assert read == written
    assert [r.entry for r in read] == entries
    for record, original in zip(read, entries, strict=True):
        assert record.body == canonical_json(entry_body(record.seq, original))
    assert store.head() == (3, read[-1].record_hash)
    assert [r.seq for r in store.records(after_seq=1, limit=1)] == [2]
    assert store.records(after_seq=3) == []


def test_records_form_a_hash_chain_across_commits(store: AuditStore) -> None:
    store.append([entry(1), entry(2)])
    store.append([entry(3)])
    store.append([])  # appending nothing changes nothing
    records = store.records()
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.record_hash
    for record in records:
        assert record.record_hash == compute_record_hash(record.prev_hash, record.body)


def test_measurements_are_stored_and_queryable_per_rollout(store: AuditStore) -> None:
    store.append(
        [
            entry(1, rollout_id="ro-1", measurements=(measurement(2), measurement(1, value=None))),
            entry(2, rollout_id="ro-2", measurements=(measurement(3),)),
            entry(
                3,
                rollout_id="ro-1",
                measurements=(measurement(4, check="latency_p99", value=math.nan),),
            ),
        ]
    )
    stored = store.measurements_for("ro-1")
    # ordered by evaluation time, each linked to its audit record
    assert [(s.audit_seq, s.position, s.measurement.check) for s in stored] == [
        (1, 1, "error_rate"),
        (1, 0, "error_rate"),
        (3, 0, "latency_p99"),
    ]
    assert stored[1].measurement == measurement(2)
    assert stored[0].measurement.canary_value is None
    nan_value = stored[2].measurement.canary_value
    assert nan_value is not None
    assert math.isnan(nan_value)
    assert [s.audit_seq for s in store.measurements_for("ro-2")] == [2]
    assert store.measurements_for("nope") == []
    assert store.verify().ok


def test_concurrent_writers_produce_one_gapless_chain(db: Database) -> None:
    writers, per_writer = 2, 20
    barrier = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            with AuditStore.from_url(db.url) as own_store:
                barrier.wait(timeout=30)
                for i in range(per_writer):
                    batch = [entry(i, rollout_id=f"writer-{writer}")] * (1 + i % 2)
                    own_store.append(batch)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []

    with AuditStore.from_url(db.url) as audit_store:
        records = audit_store.records()
        expected_total = writers * sum(1 + i % 2 for i in range(per_writer))
        assert [r.seq for r in records] == list(range(1, expected_total + 1))
        report = audit_store.verify()
        assert report.ok, report.problem
        for w in range(writers):
            mine = [r.entry.reason for r in records if r.entry.rollout_id == f"writer-{w}"]
            assert mine == [f"step {i}" for i in range(per_writer) for _ in range(1 + i % 2)]


class HeldOpen:
    """Holds the store's first transaction open at the head lock until released, so the
    commits started meanwhile queue up and share the next transaction."""

    def __init__(self, store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.together: list[int] = []  # the size of every transaction the store ran
        lock_head, together = store._lock_head, store._commit_together

        def held(conn: Any) -> None:
            if not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(30), "the test never released the transaction"
            lock_head(conn)

        def counted(requests: Any) -> Any:
            self.together.append(len(requests))
            return together(requests)

        monkeypatch.setattr(store, "_lock_head", held)
        monkeypatch.setattr(store, "_commit_together", counted)

    def run(
        self, first: Callable[[], object], calls: dict[str, Callable[[], object]]
    ) -> dict[str, object]:
        """``first`` alone, then ``calls`` concurrently while it is held; every outcome."""
        results: dict[str, object] = {}

        def call(name: str, fn: Callable[[], object]) -> None:
            try:
                results[name] = fn()
            except BaseException as exc:
                results[name] = exc

        threads = [threading.Thread(target=call, args=("first", first))]
        threads[0].start()
        assert self.entered.wait(30)
        threads += [threading.Thread(target=call, args=item) for item in calls.items()]
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 30
        while self.store._group.requests + len(self.store._group._queue) < len(calls):
            assert time.monotonic() < deadline, "the callers never queued"
            time.sleep(0.001)
        self.release.set()
        for thread in threads:
            thread.join(60)
        return results


def service_rollout(i: int, *, step: int = 0) -> RolloutRow:
    return dataclasses.replace(rollout(f"ro-{i}", step=step), namespace="fraud", name=f"svc-{i}")


def decision(i: int, step: int) -> AuditEntry:
    return entry(step, rollout_id=f"ro-{i}", measurements=(measurement(step),))


def step_up(store: AuditStore, i: int) -> Callable[[], object]:
    """Rollout ``ro-i``'s next decision, from version 1 to 2."""
    return lambda: store.commit(
        [decision(i, 1)], rollout=service_rollout(i, step=1), expected_version=1
    )


def test_concurrent_commits_share_one_transaction_and_each_is_committed(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        store.commit([decision(i, 0)], rollout=service_rollout(i))
    held = HeldOpen(store, monkeypatch)
    results = held.run(
        lambda: store.append([entry(100, rollout_id="other")]),
        {f"ro-{i}": step_up(store, i) for i in range(6)},
    )
    assert held.together == [1, 6]  # the six that queued went in one transaction
    for i in range(6):
        records = results[f"ro-{i}"]
        assert isinstance(records, list)
        assert [r.entry.rollout_id for r in records] == [f"ro-{i}"]
        stored = store.get_rollout(f"ro-{i}")
        assert stored is not None
        assert (stored.step_index, stored.version) == (1, 2)
    assert store.head()[0] == 6 + 1 + 6
    assert [len(store.measurements_for(f"ro-{i}")) for i in range(6)] == [2] * 6
    report = store.verify()
    assert report.ok, report.problem


def test_a_failing_commit_in_a_group_fails_alone(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.claim_epoch("kserve-canary", "pod-a", 2, T0)
    leader, deposed = Fence("kserve-canary", "pod-a", 2), Fence("kserve-canary", "pod-z", 1)
    for i in range(4):
        store.commit([decision(i, 0)], fence=leader, rollout=service_rollout(i))
    held = HeldOpen(store, monkeypatch)
    results = held.run(
        lambda: store.append([entry(100, rollout_id="other")], fence=leader),
        {
            "ok-0": lambda: store.commit(
                [decision(0, 1)], fence=leader, rollout=service_rollout(0, step=1),
                expected_version=1,
            ),
            "stale": lambda: store.commit(
                [decision(1, 1)], fence=leader, rollout=service_rollout(1, step=1),
                expected_version=7,
            ),
            "deposed": lambda: store.commit(
                [decision(2, 1)], fence=deposed, rollout=service_rollout(2, step=1),
                expected_version=1,
            ),
            "ok-3": lambda: store.commit(
                [decision(3, 1)], fence=leader, rollout=service_rollout(3, step=1),
                expected_version=1,
            ),
        },
    )  # fmt: skip
    assert isinstance(results["stale"], StaleRollout)
    assert "expected version 7, stored is 1" in str(results["stale"])
    assert isinstance(results["deposed"], FencedOut)
    # the group was undone and each carried out alone: the two good ones are committed once
    assert held.together == [1, 4, 1, 1, 1, 1]
    assert [store.get_rollout(f"ro-{i}").version for i in range(4)] == [2, 1, 1, 2]  # type: ignore[union-attr]
    records = store.records()
    assert len(records) == 4 + 1 + 2
    assert [r.entry.rollout_id for r in records[-2:]] in (["ro-0", "ro-3"], ["ro-3", "ro-0"])
    report = store.verify()
    assert report.ok, report.problem


def test_two_writers_of_one_rollout_in_a_group_cannot_both_win(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two callers updating the same rollout from the same version (a split brain inside
    one process, say) land in one group: exactly one update is applied, the other caller
    gets StaleRollout, and a new rollout started in the same group is kept."""
    store.commit([decision(0, 0)], rollout=service_rollout(0))
    held = HeldOpen(store, monkeypatch)
    results = held.run(
        lambda: store.append([entry(100, rollout_id="other")]),
        {
            "a": step_up(store, 0),
            "b": step_up(store, 0),
            "new": lambda: store.commit([decision(1, 0)], rollout=service_rollout(1)),
        },
    )
    outcomes = sorted(type(results[k]).__name__ for k in ("a", "b"))
    assert outcomes == ["StaleRollout", "list"]
    assert isinstance(results["new"], list)
    stored = store.get_rollout("ro-0")
    assert stored is not None
    assert stored.version == 2
    assert store.get_rollout("ro-1") is not None
    assert [r.entry.rollout_id for r in store.records()].count("ro-0") == 2
    report = store.verify()
    assert report.ok, report.problem


def test_a_group_whose_database_fails_is_not_retried(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMIT that failed on a connection error may have been applied: carrying the group
    out again could write every decision twice. Each caller gets the error, as it would
    alone, and decides what to do (the engine re-reads its state)."""
    for i in range(3):
        store.commit([decision(i, 0)], rollout=service_rollout(i))
    held = HeldOpen(store, monkeypatch)
    append = store._append_prepared

    def failing(conn: Any, entries: Any) -> Any:
        if len(entries) > 1:
            raise StoreUnavailable("database test unavailable: connection lost")
        return append(conn, entries)

    monkeypatch.setattr(store, "_append_prepared", failing)
    results = held.run(
        lambda: store.append([entry(100, rollout_id="other")]),
        {f"ro-{i}": step_up(store, i) for i in range(3)},
    )
    assert held.together == [1, 3]
    for i in range(3):
        assert isinstance(results[f"ro-{i}"], StoreUnavailable)
    assert store.head()[0] == 3 + 1
    assert [store.get_rollout(f"ro-{i}").version for i in range(3)] == [1, 1, 1]  # type: ignore[union-attr]


def test_a_failing_entry_aborts_the_whole_commit(store: AuditStore) -> None:
    store.append([entry(1)])
    bad = dataclasses.replace(entry(3), evidence={"blob": b"raw bytes"})
    with pytest.raises(TypeError, match="bytes"):
        store.commit([entry(2), bad], rollout=rollout())
    assert store.head()[0] == 1
    assert store.get_rollout("ro-1") is None


# --------------------------------------------------------------------------------------------
# leader fence
# --------------------------------------------------------------------------------------------


def test_epochs_only_move_forward(store: AuditStore) -> None:
    assert store.claim_epoch("kserve-canary", "pod-a", 1, T0)
    assert not store.claim_epoch("kserve-canary", "pod-b", 1, T0)  # same epoch
    assert not store.claim_epoch("kserve-canary", "pod-b", 0, T0)  # older epoch
    assert store.current_fence("kserve-canary") == Fence("kserve-canary", "pod-a", 1)
    assert store.claim_epoch("kserve-canary", "pod-b", 5, T0)
    assert store.current_fence("kserve-canary") == Fence("kserve-canary", "pod-b", 5)
    assert store.current_fence("other") is None


def test_the_current_leader_can_commit(store: AuditStore) -> None:
    store.claim_epoch("kserve-canary", "pod-a", 1, T0)
    fence = Fence("kserve-canary", "pod-a", 1)
    records = store.commit([entry(1)], fence=fence, rollout=rollout())
    assert [r.seq for r in records] == [1]
    assert store.get_rollout("ro-1") is not None


@pytest.mark.parametrize(
    ("fence", "message"),
    [
        pytest.param(Fence("kserve-canary", "pod-a", 1), "epoch 2 held by 'pod-b'", id="deposed"),
        pytest.param(Fence("kserve-canary", "pod-a", 2), "held by 'pod-b'", id="wrong-holder"),
        pytest.param(Fence("kserve-canary", "pod-b", 3), "epoch 2", id="future-epoch"),
        pytest.param(
            Fence("unknown-lease", "pod-b", 2), "no epoch has been claimed", id="no-lease"
        ),
    ],
)
def test_a_fenced_out_writer_writes_nothing(store: AuditStore, fence: Fence, message: str) -> None:
    store.claim_epoch("kserve-canary", "pod-a", 1, T0)
    store.commit([entry(1)], fence=Fence("kserve-canary", "pod-a", 1), rollout=rollout(step=0))
    store.claim_epoch("kserve-canary", "pod-b", 2, T0 + timedelta(seconds=15))
    head = store.head()

    with pytest.raises(FencedOut, match=message):
        store.commit(
            [entry(2, action="traffic.intent")],
            fence=fence,
            rollout=rollout(step=1),
            expected_version=1,
        )

    assert store.head() == head
    stored = store.get_rollout("ro-1")
    assert stored is not None
    assert (stored.step_index, stored.version) == (0, 1)


# --------------------------------------------------------------------------------------------
# rollouts
# --------------------------------------------------------------------------------------------


def test_rollout_insert_and_optimistic_update(store: AuditStore) -> None:
    store.commit([entry(1, action="rollout.started")], rollout=rollout())
    stored = store.get_rollout("ro-1")
    assert stored == dataclasses.replace(rollout(), version=1)
    assert stored is not None
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)

    store.commit([entry(2, action="traffic.shifted")], rollout=rollout(step=1), expected_version=1)
    updated = store.get_rollout("ro-1")
    assert updated == dataclasses.replace(rollout(step=1), version=2)
    assert store.rollout_for("fraud", "scorer") == updated
    assert store.active_rollouts() == [updated]


def _with_models(row: RolloutRow, canary: str | None, stable: str | None) -> RolloutRow:
    machine = {"canary": {"name": row.canary_revision, "storage_uri": canary},
               "stable": {"name": row.stable_revision, "storage_uri": stable}}  # fmt: skip
    return dataclasses.replace(row, state={**row.state, "machine": machine})


def test_a_rollouts_storage_uris_are_written_from_its_state_on_insert_and_update(
    store: AuditStore, db: Database
) -> None:
    def stored() -> list[tuple[Any, ...]]:
        return db.query(
            "SELECT canary_storage_uri, stable_storage_uri FROM rollouts WHERE id = 'ro-1'"
        )

    first = _with_models(rollout(), "s3://models/scorer/v2", None)
    store.commit([entry(1, action="rollout.started")], rollout=first)
    assert stored() == [("s3://models/scorer/v2", None)]
    assert [r.id for r in store.find_rollouts(model="s3://models/scorer/v2").rollouts] == ["ro-1"]

    # an update writes them again from its document: a new value, and one gone
    later = _with_models(rollout(step=1), None, "s3://models/scorer/v1")
    store.commit([entry(2, action="traffic.shifted")], rollout=later, expected_version=1)
    assert stored() == [(None, "s3://models/scorer/v1")]
    assert store.find_rollouts(model="s3://models/scorer/v2").rollouts == ()
    assert [r.id for r in store.find_rollouts(model="s3://models/scorer/v1").rollouts] == ["ro-1"]
    assert store.get_rollout("ro-1") == dataclasses.replace(later, version=2)


def test_a_stale_rollout_update_writes_nothing(store: AuditStore) -> None:
    store.commit([entry(1)], rollout=rollout())
    store.commit([entry(2)], rollout=rollout(step=1), expected_version=1)
    head = store.head()

    with pytest.raises(StaleRollout, match="expected version 1, stored is 2"):
        store.commit([entry(3)], rollout=rollout(step=5), expected_version=1)
    with pytest.raises(StaleRollout, match="already exists"):
        store.commit([entry(3)], rollout=rollout(step=5))
    with pytest.raises(StaleRollout, match="does not exist"):
        store.commit([entry(3)], rollout=rollout("ro-missing"), expected_version=1)

    assert store.head() == head
    stored = store.get_rollout("ro-1")
    assert stored is not None
    assert (stored.step_index, stored.version) == (1, 2)


def test_only_one_active_rollout_per_inference_service(store: AuditStore) -> None:
    store.commit([], rollout=rollout("ro-1"))
    with pytest.raises(ActiveRolloutExists, match="ro-1 is already active for fraud/scorer"):
        store.commit([entry(1)], rollout=rollout("ro-2"))
    assert store.get_rollout("ro-2") is None
    assert store.head()[0] == 0

    store.commit([], rollout=rollout("ro-1", active=False, phase="succeeded"), expected_version=1)
    store.commit([], rollout=rollout("ro-2"))
    assert store.rollout_for("fraud", "scorer") == dataclasses.replace(rollout("ro-2"), version=1)
    assert [r.id for r in store.active_rollouts()] == ["ro-2"]


def test_phase_counts_and_schedule_cover_active_rollouts_only(store: AuditStore) -> None:
    """What the phase gauge and the scheduler after a failover read: every active rollout,
    none that finished."""
    for i, (name, phase, active) in enumerate(
        [
            ("b", "progressing", True),
            ("a", "progressing", True),
            ("c", "paused", True),
            ("d", "succeeded", False),
            ("e", "rolled_back", False),
        ]
    ):
        row = dataclasses.replace(rollout(f"ro-{i}", active=active, phase=phase, step=i),
                                  name=name)  # fmt: skip
        store.commit([], rollout=row)
    assert store.active_phase_counts() == {"progressing": 2, "paused": 1}
    assert store.active_schedule() == [
        ("fraud", "a", T0 + timedelta(minutes=2)),
        ("fraud", "b", T0 + timedelta(minutes=1)),
        ("fraud", "c", T0 + timedelta(minutes=3)),
    ]


def test_the_database_itself_refuses_a_second_active_rollout(
    store: AuditStore, db: Database
) -> None:
    store.commit([], rollout=rollout("ro-1"))
    insert = (
        "INSERT INTO rollouts (id, namespace, name, policy_name, mode, phase, step_index, "
        "state, created_at, updated_at, active, version) "
        "VALUES (?, 'fraud', 'scorer', 'p', 'knative', 'progressing', 0, '{}', ?, ?, ?, 1)"
    )
    with pytest.raises(db.error, match=r"(?i)unique"):
        db.query(insert, ("ro-raw", T0, T0, True))
    db.query(insert, ("ro-inactive", T0, T0, False))  # inactive rows are not limited
    assert [r.id for r in store.active_rollouts()] == ["ro-1"]


# --------------------------------------------------------------------------------------------
# webhook deliveries and approvals
# --------------------------------------------------------------------------------------------


def test_a_duplicate_webhook_delivery_is_reported_not_raised(
    store: AuditStore, db: Database
) -> None:
    kwargs: dict[str, Any] = {
        "received_at": T0,
        "source": "servicenow",
        "payload_digest": "sha256:01",
        "signature_valid": True,
        "outcome": "accepted",
    }
    assert store.record_delivery("msg_1", **kwargs) is True
    assert store.record_delivery("msg_1", **(kwargs | {"payload_digest": "sha256:02"})) is False
    assert store.record_delivery("msg_2", **kwargs) is True
    rows = db.query("SELECT webhook_id, payload_digest FROM webhook_deliveries ORDER BY 1")
    assert rows == [("msg_1", "sha256:01"), ("msg_2", "sha256:01")]


def approval(state: str = "pending", *, approval_id: str = "ap-1", **extra: Any) -> ApprovalRow:
    fields: dict[str, Any] = {
        "id": approval_id,
        "rollout_id": "ro-1",
        "revision": "scorer-predictor-00002",
        "step_index": 2,
        "gate": "servicenow",
        "change_number": "CHG0001",
        "change_sys_id": "sys-1",
        "risk_owner_group": "credit-risk-owners",
        "requested_by": "kserve-canary",
        "requested_at": T0,
        "deadline": T0 + timedelta(hours=4),
        "state": state,
    }
    return ApprovalRow(**(fields | extra))


def test_approvals_upsert_by_rollout_revision_and_step(store: AuditStore) -> None:
    store.commit([], rollout=rollout())
    assert store.get_approval("ro-1", "scorer-predictor-00002", 2) is None
    assert store.upsert_approval(approval()) == approval()
    assert store.pending_approvals() == [approval()]

    decided = approval(
        "approved",
        approval_id="ap-other",
        approver="bob",
        decided_at=T0 + timedelta(hours=1),
        close_code="successful",
    )
    stored = store.upsert_approval(decided)
    assert stored == dataclasses.replace(decided, id="ap-1")  # the row keeps its identity
    assert store.get_approval("ro-1", "scorer-predictor-00002", 2) == stored
    assert store.pending_approvals() == []


# --------------------------------------------------------------------------------------------
# verification and errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 5000])
def test_verify_accepts_an_intact_chain_in_any_batch_size(
    store: AuditStore, batch_size: int
) -> None:
    for i in range(10):
        store.append([entry(i, measurements=(measurement(i),) * (i % 3))])
    report = store.verify(batch_size=batch_size)
    assert report.ok, report.problem
    assert report.records_checked == 10
    assert report.head_hash == store.head()[1]
    assert (report.first_bad_seq, report.problem) == (None, None)


def test_store_without_schema_says_to_upgrade(empty_db: Database) -> None:
    with (
        AuditStore.from_url(empty_db.url) as audit_store,
        pytest.raises(AuditError, match="canary db upgrade"),
    ):
        audit_store.head()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://auditor:s3cret@127.0.0.1:1/audit",
        "sqlite:////nonexistent-dir/for/sure/audit.db",
    ],
)
def test_an_unreachable_database_raises_store_unavailable_without_the_password(url: str) -> None:
    with AuditStore.from_url(url) as audit_store, pytest.raises(StoreUnavailable) as info:
        audit_store.ping()
    assert "s3cret" not in str(info.value)
    assert "unavailable" in str(info.value)
    if "127.0.0.1:1" in url:
        assert "auditor:***@127.0.0.1:1/audit" in str(info.value)


# --------------------------------------------------------------------------------------------
# append-only protection
# --------------------------------------------------------------------------------------------

APPEND_ONLY = {
    "audit_log": "body",
    "measurements": "verdict",
    "webhook_deliveries": "outcome",
    "audit_checkpoints": "signature",
}


def _fill_append_only_tables(audit_store: AuditStore) -> None:
    audit_store.append([entry(i, measurements=(measurement(i),)) for i in range(3)])
    seq, record_hash = audit_store.head()
    signer = CheckpointSigner.from_pem(generate_private_key_pem())
    audit_store.add_checkpoint(signer.sign(Checkpoint("kserve-canary", seq, record_hash, T0)))
    audit_store.record_delivery(
        "msg_1",
        received_at=T0,
        source="servicenow",
        payload_digest="sha256:01",
        signature_valid=True,
        outcome="accepted",
    )


def _snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    return {table: db.query(f"SELECT * FROM {table} ORDER BY 1, 2") for table in APPEND_ONLY}


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
@pytest.mark.parametrize("table", sorted(APPEND_ONLY))
def test_postgresql_rejects_changes_to_audit_tables(
    pg_database: Database, table: str, operation: str
) -> None:
    upgrade_to_head(pg_database.url)
    with AuditStore.from_url(pg_database.url) as audit_store:
        _fill_append_only_tables(audit_store)
        before = _snapshot(pg_database)
        statement = {
            "UPDATE": f"UPDATE {table} SET {APPEND_ONLY[table]} = 'tampered'",
            "DELETE": f"DELETE FROM {table}",
            "TRUNCATE": f"TRUNCATE {table} CASCADE",
        }[operation]
        with pytest.raises(
            pg_database.error,
            match=rf"audit tables are append-only: {operation} on \w+ rejected",
        ):
            pg_database.query(statement)
        assert _snapshot(pg_database) == before
        assert all(before.values())
        assert audit_store.verify().ok


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE"])
@pytest.mark.parametrize("table", sorted(APPEND_ONLY))
def test_sqlite_triggers_stop_accidental_changes(
    sqlite_database: Database, table: str, operation: str
) -> None:
    upgrade_to_head(sqlite_database.url)
    with AuditStore.from_url(sqlite_database.url) as audit_store:
        _fill_append_only_tables(audit_store)
    before = _snapshot(sqlite_database)
    statement = {
        "UPDATE": f"UPDATE {table} SET {APPEND_ONLY[table]} = 'tampered'",
        "DELETE": f"DELETE FROM {table}",
    }[operation]
    with pytest.raises(
        sqlite_database.error, match=f"audit tables are append-only: {operation} on {table}"
    ):
        sqlite_database.query(statement)
    assert _snapshot(sqlite_database) == before


# --------------------------------------------------------------------------------------------
# tampering (SQLite: an attacker with write access to the file drops the triggers first)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tampered(sqlite_database: Database) -> Iterator[tuple[Database, AuditStore]]:
    """Ten records (seq i has i % 2 + 1 measurements), with the SQLite triggers dropped."""
    upgrade_to_head(sqlite_database.url)
    with AuditStore.from_url(sqlite_database.url) as audit_store:
        for i in range(1, 11):
            audit_store.append(
                [entry(i, measurements=tuple(measurement(i + k) for k in range(i % 2 + 1)))]
            )
        assert audit_store.verify().ok
        for (name,) in sqlite_database.query(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ):
            sqlite_database.query(f'DROP TRIGGER "{name}"')
        yield sqlite_database, audit_store


def _renumber(db: Database, moves: list[tuple[int, int]]) -> list[tuple[str, list[Any]]]:
    statements: list[tuple[str, list[Any]]] = []
    for old, new in moves:
        statements.append(("UPDATE audit_log SET seq = ? WHERE seq = ?", [new, old]))
        statements.append(("UPDATE measurements SET audit_seq = ? WHERE audit_seq = ?", [new, old]))
    return statements


def _hash_of(db: Database, seq: int) -> str:
    ((value,),) = db.query("SELECT record_hash FROM audit_log WHERE seq = ?", (seq,))
    return str(value)


def test_tampering_a_body_field_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.query("UPDATE audit_log SET body = replace(body, 'step 7', 'step 9') WHERE seq = 7")
    report = audit_store.verify()
    assert (report.ok, report.first_bad_seq, report.records_checked) == (False, 7, 6)
    assert report.problem == (
        "record 7: stored record_hash does not match its contents (field changed?)"
    )
    assert report.head_hash == _hash_of(db, 6)


def test_a_rehashed_body_breaks_the_link_to_the_next_record(
    tampered: tuple[Database, AuditStore],
) -> None:
    db, audit_store = tampered
    ((prev_hash, body),) = db.query("SELECT prev_hash, body FROM audit_log WHERE seq = 7")
    forged = str(body).replace("step 7", "step 9")
    db.query(
        "UPDATE audit_log SET body = ?, record_hash = ? WHERE seq = 7",
        (forged, compute_record_hash(str(prev_hash), forged)),
    )
    report = audit_store.verify()
    assert report.first_bad_seq == 8
    assert report.problem is not None
    assert "record 8: prev_hash does not match record 7" in report.problem


def test_tampering_a_query_column_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.query("UPDATE audit_log SET action = 'promoted' WHERE seq = 3")
    report = audit_store.verify()
    assert report.first_bad_seq == 3
    assert report.problem == (
        "record 3: column action is 'promoted' but the record says 'analysis.evaluated' "
        "(column edited?)"
    )


def test_tampering_a_measurement_row_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.query("UPDATE measurements SET canary_value = 0.5 WHERE audit_seq = 5 AND position = 1")
    report = audit_store.verify()
    assert report.first_bad_seq == 5
    assert report.problem == (
        "record 5: measurement 1 column canary_value is 0.5 but the record says 0.01 "
        "(measurement row edited?)"
    )


def test_deleting_a_measurement_row_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.query("DELETE FROM measurements WHERE audit_seq = 9 AND position = 0")
    report = audit_store.verify()
    assert report.first_bad_seq == 9
    assert report.problem is not None
    assert "1 measurement rows stored but the record lists 2" in report.problem


def test_a_measurement_row_for_a_missing_record_is_detected(
    tampered: tuple[Database, AuditStore],
) -> None:
    db, audit_store = tampered
    db.query(
        "INSERT INTO measurements SELECT 50, position, rollout_id, check_name, evaluated_at, "
        "query, prometheus_url, response_digest, canary_value, baseline_value, canary_samples, "
        "baseline_samples, statistic, threshold, verdict, dry_run, detail "
        "FROM measurements WHERE audit_seq = 2"
    )
    report = audit_store.verify(batch_size=4)
    assert report.first_bad_seq == 50
    assert report.problem == "measurement rows reference record 50, which does not exist"


def test_deleting_a_record_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.script(
        [
            ("DELETE FROM measurements WHERE audit_seq = 8", []),
            ("DELETE FROM audit_log WHERE seq = 8", []),
        ]
    )
    report = audit_store.verify(batch_size=3)
    assert (report.first_bad_seq, report.records_checked) == (8, 7)
    assert report.problem == "record 9: seq 8 is missing (record deleted?)"


def test_a_forged_record_inserted_in_the_middle_is_detected(
    tampered: tuple[Database, AuditStore],
) -> None:
    db, audit_store = tampered
    # Make room at seq 5 by renumbering the later records, then insert a forged record
    # whose own hash is correct and which links to record 4.
    statements = _renumber(db, [(seq, seq + 1) for seq in range(10, 4, -1)])
    forged_body = canonical_json(entry_body(5, entry(4, reason="forged approval")))
    prev_hash = _hash_of(db, 4)
    statements.append(
        (
            "INSERT INTO audit_log SELECT 5, ?, ?, ?, recorded_at, action, actor_kind, actor_id, "
            "rollout_id, namespace, name, canary_revision, stable_revision, change_number, "
            "correlation_id FROM audit_log WHERE seq = 4",
            [prev_hash, compute_record_hash(prev_hash, forged_body), forged_body],
        )
    )
    db.script(statements)
    report = audit_store.verify()
    assert (report.first_bad_seq, report.records_checked) == (6, 5)
    assert report.problem == (
        "record 6: prev_hash does not match record 5 (record inserted, deleted or reordered?)"
    )


def test_swapping_two_records_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    db.script(_renumber(db, [(4, 1000), (5, 4), (1000, 5)]))
    report = audit_store.verify()
    assert report.first_bad_seq == 4
    assert report.problem == (
        "record 4: prev_hash does not match record 3 (record inserted, deleted or reordered?)"
    )


def test_a_renumbered_record_is_detected(tampered: tuple[Database, AuditStore]) -> None:
    db, audit_store = tampered
    # Delete record 10, then move record 9 to seq 10: hashes still link, but the body says 9.
    db.script(
        [
            ("DELETE FROM measurements WHERE audit_seq = 10", []),
            ("DELETE FROM audit_log WHERE seq = 10", []),
            *_renumber(db, [(9, 10)]),
        ]
    )
    report = audit_store.verify()
    assert report.first_bad_seq == 9
    assert report.problem == "record 10: seq 9 is missing (record deleted?)"


def test_removing_the_newest_records_needs_an_external_anchor(
    tampered: tuple[Database, AuditStore],
) -> None:
    db, audit_store = tampered
    anchored = audit_store.head()
    db.script(
        [
            ("DELETE FROM measurements WHERE audit_seq > 8", []),
            ("DELETE FROM audit_log WHERE seq > 8", []),
        ]
    )
    report = audit_store.verify()
    # The shorter chain is internally consistent (documented limitation)...
    assert (report.ok, report.records_checked) == (True, 8)
    # ...but no longer ends at the head that was exported earlier.
    assert (report.records_checked, report.head_hash) != anchored
