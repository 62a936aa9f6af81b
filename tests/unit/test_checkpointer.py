"""The leader's checkpoints: when it signs, what it refuses to vouch for, and the alarm."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from canary.audit import (
    Actor,
    AuditEntry,
    AuditStore,
    Fence,
    ObjectRef,
    RolloutRow,
    StoreUnavailable,
    upgrade_to_head,
)
from canary.audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    SignedCheckpoint,
    TrustedKeys,
    generate_private_key_pem,
)
from canary.audit.records import ChainReport, format_timestamp
from canary.audit.retention import PurgeRow, plan_purge, retention_cutoff
from canary.checkpointer import SMALLEST_SLICE, VERIFY_SLICE, Checkpointer
from canary.k8s.events import ObjectReference
from canary.model import EventReason
from canary.witness import FileWitness, WitnessError
from tests.conftest import Database
from tests.tampering import cut_tail, forge_purge, rewrite_record, truncate_all

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
FENCE = Fence("kserve-canary-leader", "controller-0", 1)
TARGET = ObjectReference("kserve-canary", "kserve-canary-audit-checkpoints", kind="ConfigMap")


class MemoryWitness:
    """A witness that keeps checkpoints in memory and can be told to fail."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.kept: list[SignedCheckpoint] = []
        self.failing = False

    def publish(self, signed: SignedCheckpoint) -> None:
        if self.failing:
            raise WitnessError(f"{self.name} is down")
        self.kept.append(signed)

    def read(self) -> list[SignedCheckpoint]:
        if self.failing:
            raise WitnessError(f"{self.name} is down")
        return list(self.kept)


@dataclass
class Metrics:
    outcomes: list[str] = field(default_factory=list)
    witness_failures: list[str] = field(default_factory=list)
    anchored: int = 0
    broken: bool = False

    def record_checkpoint(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def record_witness_failure(self, witness: str) -> None:
        self.witness_failures.append(witness)

    def set_anchored_seq(self, seq: int) -> None:
        self.anchored = seq

    def set_anchor_broken(self, broken: bool) -> None:
        self.broken = broken


@dataclass
class Events:
    emitted: list[tuple[ObjectReference, EventReason, str, str]] = field(default_factory=list)

    def emit(
        self,
        target: ObjectReference,
        reason: EventReason,
        message: str,
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> None:
        self.emitted.append((target, reason, message, type_))


@dataclass
class World:
    db: Database
    store: AuditStore
    signer: CheckpointSigner
    witness: MemoryWitness
    metrics: Metrics
    events: Events
    now: datetime = T0
    leading: bool = True
    appended: int = 0
    verify_slice: int = VERIFY_SLICE

    def checkpointer(
        self, *witnesses: object, retired: tuple[CheckpointSigner, ...] = ()
    ) -> Checkpointer:
        return Checkpointer(
            store=self.store,
            signer=self.signer,
            witnesses=list(witnesses or (self.witness,)),  # type: ignore[arg-type]
            log_name="kserve-canary",
            leadership=lambda: FENCE if self.leading else None,
            clock=lambda: self.now,
            interval=timedelta(minutes=5),
            metrics=self.metrics,
            events=self.events,
            alarm_target=TARGET,
            retired_keys=[signer.public_key for signer in retired],
            verify_slice=self.verify_slice,
        )

    def append(self, count: int) -> None:
        entries = []
        for _ in range(count):
            self.appended += 1
            entries.append(
                AuditEntry(
                    at=self.now,
                    actor=Actor("controller", "controller-0"),
                    action="analysis.evaluated",
                    rollout_id="ro-1",
                    obj=ObjectRef("fraud", "scorer"),
                    reason=f"look {self.appended}",
                )
            )
        self.store.append(entries)

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(
    params=[
        pytest.param(VERIFY_SLICE, id="whole"),
        # every case again with the chain verified two records per database call
        pytest.param(2, id="sliced"),
    ]
)
def world(sqlite_database: Database, request: pytest.FixtureRequest) -> Iterator[World]:
    upgrade_to_head(sqlite_database.url)
    with AuditStore.from_url(sqlite_database.url) as store:
        yield World(
            sqlite_database,
            store,
            CheckpointSigner.from_pem(generate_private_key_pem()),
            MemoryWitness(),
            Metrics(),
            Events(),
            verify_slice=request.param,
        )


def test_the_first_pass_signs_the_head_keeps_it_and_hands_it_to_the_witness(world: World) -> None:
    checkpoints = world.checkpointer()
    assert checkpoints.run_once().outcome == "idle"  # nothing to sign yet
    world.append(4)
    result = checkpoints.run_once()
    assert result.outcome == "signed"
    assert result.signed is not None
    assert (result.signed.seq, result.signed.record_hash) == world.store.head()
    assert result.signed.checkpoint.at == T0
    assert world.store.latest_checkpoint() == result.signed
    assert world.witness.kept == [result.signed]
    assert world.metrics.outcomes == ["signed"]
    assert world.metrics.anchored == 4


def test_nothing_is_signed_until_the_interval_passes_or_a_rollout_ends(world: World) -> None:
    checkpoints = world.checkpointer()
    world.append(2)
    assert checkpoints.run_once().outcome == "signed"
    assert checkpoints.run_once().detail == "record 2 is already anchored"
    world.later(60)
    world.append(3)
    assert checkpoints.run_once().detail == "no checkpoint due"
    world.later(240)
    signed = checkpoints.run_once()
    assert signed.outcome == "signed"
    assert signed.signed is not None
    assert signed.signed.seq == 5
    # a rollout that ends is anchored within a tick, not after the interval
    world.later(10)
    world.append(1)
    assert checkpoints.run_once().detail == "no checkpoint due"
    world.store.commit([], rollout=_rollout(world.now, active=True))
    world.store.commit(
        [], rollout=_rollout(world.now, active=False), expected_version=1
    )  # the rollout ended
    ended = checkpoints.run_once()
    assert ended.outcome == "signed"
    assert ended.signed is not None
    assert ended.signed.seq == 6


def test_a_replica_that_does_not_lead_signs_nothing(world: World) -> None:
    world.leading = False
    world.append(3)
    assert world.checkpointer().run_once().outcome == "not_leader"
    assert world.store.latest_checkpoint() is None
    assert world.witness.kept == []


def test_a_failing_witness_is_counted_and_the_others_still_get_the_checkpoint(
    world: World,
) -> None:
    down = MemoryWitness("down")
    down.failing = True
    checkpoints = world.checkpointer(down, world.witness)
    world.append(3)
    result = checkpoints.run_once()
    assert result.outcome == "signed"
    assert world.witness.kept == [result.signed]
    assert world.metrics.witness_failures == ["down", "down"]  # read, then publish


def test_a_restarted_leader_carries_on_from_the_kept_checkpoint(world: World) -> None:
    world.append(5)
    first = world.checkpointer().run_once()
    assert first.signed is not None
    world.later(600)
    world.append(2)
    result = world.checkpointer().run_once()  # a new instance: nothing cached
    assert result.outcome == "signed"
    assert result.signed is not None
    assert result.signed.seq == 7


def test_stopping_a_leader_signs_the_head_even_when_no_checkpoint_is_due(world: World) -> None:
    checkpoints = world.checkpointer()
    world.append(2)
    checkpoints.run_once()
    world.append(1)
    checkpoints.stop()
    assert world.witness.kept[-1].seq == 3


@pytest.mark.parametrize(
    ("attack", "problem"),
    [
        (lambda db: cut_tail(db, 2), "the witness saw record 4; the database ends at 3"),
        (truncate_all, "the witness saw record 4; the database ends at 1"),
        (
            lambda db: rewrite_record(db, 2, lambda body: body.update(reason="nothing to see")),
            "rewritten history: the signed hash of record 4",
        ),
    ],
    ids=["tail-cut", "truncated", "rewritten"],
)
def test_a_database_that_lost_or_rewrote_signed_history_is_never_signed_again(
    world: World, attack: object, problem: str
) -> None:
    checkpoints = world.checkpointer()
    world.append(4)
    assert checkpoints.run_once().outcome == "signed"
    attack(world.db)  # type: ignore[operator]
    world.append(1)  # the controller carries on writing
    world.later(600)
    refused = checkpoints.run_once()
    assert refused.outcome == "refused"
    assert problem in refused.detail
    assert world.witness.kept[-1].seq == 4  # nothing new vouched for
    assert world.metrics.broken
    assert [(e[1], e[3]) for e in world.events.emitted] == [
        (EventReason.AUDIT_ANCHOR_BROKEN, "Warning")
    ]
    assert problem in world.events.emitted[0][2]
    # the alarm stays up, and is not repeated while nothing changes
    world.later(600)
    assert checkpoints.run_once().outcome == "refused"
    assert len(world.events.emitted) == 1
    assert world.metrics.outcomes == ["signed", "refused", "refused"]


def test_a_chain_broken_after_the_latest_checkpoint_is_refused(world: World) -> None:
    checkpoints = world.checkpointer()
    world.append(3)
    checkpoints.run_once()
    world.append(3)
    world.db.script([("DROP TRIGGER audit_log_no_update", ())])
    world.db.query("UPDATE audit_log SET body = replace(body, 'look 5', 'look 55') WHERE seq = 5")
    world.later(600)
    refused = checkpoints.run_once()
    assert refused.outcome == "refused"
    assert "the chain is broken at record 5" in refused.detail


def test_checkpoints_of_another_key_in_the_witness_do_not_stop_a_rotated_key(
    world: World,
) -> None:
    old = CheckpointSigner.from_pem(generate_private_key_pem())
    world.append(3)
    world.witness.kept.append(old.sign(_checkpoint_of(world, old)))
    result = world.checkpointer().run_once()
    assert result.outcome == "signed"


def test_the_file_witness_keeps_every_checkpoint_on_disk(world: World, tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    witness = FileWitness(path)
    checkpoints = world.checkpointer(witness)
    world.append(2)
    checkpoints.run_once()
    world.later(301)
    world.append(2)
    checkpoints.run_once()
    assert [c.seq for c in witness.read()] == [2, 4]
    assert len(path.read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------------
# purges beyond the retention
# --------------------------------------------------------------------------------------------

RETENTION = 2557


def _purge(world: World, checkpoints: list[SignedCheckpoint], *signers: CheckpointSigner) -> int:
    """``canary audit purge``, seven years and a day after now: ends on the latest of
    ``checkpoints`` that ``signers`` (default the controller's key) signed."""
    at = world.now + timedelta(days=RETENTION + 1)
    cutoff = retention_cutoff(at, RETENTION)
    scope = world.store.purge_scope(cutoff)
    plan = plan_purge(
        checkpoints,
        keys=TrustedKeys([s.public_key for s in signers or (world.signer,)]),
        log="kserve-canary",
        scope=scope,
        hashes=world.store.record_hashes(c.seq for c in checkpoints),
        cutoff=cutoff,
        retention_days=RETENTION,
    )
    return world.store.purge(plan, at=at).row.through_seq


def test_records_purged_beyond_the_retention_are_not_lost_history(world: World) -> None:
    checkpoints = world.checkpointer()
    world.append(3)
    checkpoints.run_once()
    world.later(600)
    world.append(3)
    checkpoints.run_once()
    assert [c.seq for c in world.witness.kept] == [3, 6]
    assert _purge(world, world.witness.kept) == 6  # its audit.purged record is record 7
    world.later(600)
    world.append(2)
    result = checkpoints.run_once()
    assert result.outcome == "signed", result.detail
    assert result.signed is not None
    assert result.signed.seq == 9
    assert result.anchors is not None
    assert result.anchors.purged_through == 6
    assert [f.kind for f in result.anchors.findings] == ["purged", "unanchored"]
    assert not world.metrics.broken
    assert world.events.emitted == []
    assert world.checkpointer().run_once().outcome == "idle"  # a new leader agrees


def test_a_purge_that_ended_on_a_retired_key_s_checkpoint_needs_that_key_configured(
    world: World,
) -> None:
    retired = CheckpointSigner.from_pem(generate_private_key_pem())
    world.append(4)
    old = retired.sign(_checkpoint_of(world, retired))
    _purge(world, [old], retired)
    world.append(1)
    refused = world.checkpointer().run_once()
    assert refused.outcome == "refused"
    assert f"the purge through record 4 ({_purge_time(world)}" in refused.detail
    assert f"signed by {retired.key_id}, which is not one of the pinned keys" in refused.detail
    assert world.checkpointer(retired=(retired,)).run_once().outcome == "signed"
    assert not world.metrics.broken


def test_a_purge_row_of_someone_else_s_making_raises_the_alarm(world: World) -> None:
    checkpoints = world.checkpointer()
    world.append(5)
    checkpoints.run_once()
    impostor = CheckpointSigner.from_pem(generate_private_key_pem())
    forged = impostor.sign(_checkpoint_of(world, impostor))
    at = world.now + timedelta(days=RETENTION + 1)
    forge_purge(
        world.db,
        PurgeRow(
            forged.seq, forged.record_hash, forged.statement, forged.signature, forged.key_id,
            at, "mallory", forged.seq, at - timedelta(days=RETENTION), RETENTION, forged.seq + 1,
        ),
    )  # fmt: skip
    world.append(1)
    world.later(600)
    refused = checkpoints.run_once()
    assert refused.outcome == "refused"
    assert "the purge through record 5" in refused.detail
    assert f"signed by {impostor.key_id}, which is not one of the pinned keys" in refused.detail
    assert world.metrics.broken


def _purge_time(world: World) -> str:
    return format_timestamp(world.store.purges()[-1].purged_at)


def _checkpoint_of(world: World, signer: CheckpointSigner) -> Checkpoint:
    seq, record_hash = world.store.head()
    return Checkpoint("kserve-canary", seq, record_hash, world.now)


def _rollout(at: datetime, *, active: bool) -> RolloutRow:
    return RolloutRow(
        id="ro-1",
        namespace="fraud",
        name="scorer",
        isvc_uid="uid-1",
        policy_name="fraud-scoring",
        mode="knative",
        phase="progressing" if active else "Succeeded",
        step_index=0,
        canary_revision="scorer-predictor-00002",
        stable_revision="scorer-predictor-00001",
        state={},
        created_at=at,
        updated_at=at,
        next_check_at=None,
        active=active,
    )


# --------------------------------------------------------------------------------------------
# a long unanchored stretch: verified in slices, each a database call within the deadline
# --------------------------------------------------------------------------------------------


@dataclass
class Calls:
    """Every ``verify`` call the checkpointer makes: (after, limit); ``fail_at`` makes that
    call (1-based) fail as a call past the database deadline does."""

    made: list[tuple[tuple[int, str] | None, int | None]] = field(default_factory=list)
    fail_at: int | None = None


@pytest.fixture
def calls(world: World, monkeypatch: pytest.MonkeyPatch) -> Calls:
    seen = Calls()
    verify = world.store.verify

    def recorded(
        batch_size: int = 5000,
        *,
        after: tuple[int, str] | None = None,
        workers: int | None = None,
        limit: int | None = None,
    ) -> ChainReport:
        seen.made.append((after, limit))
        if seen.fail_at == len(seen.made):
            raise StoreUnavailable("database audit.db: the call took longer than 5 s")
        return verify(batch_size, after=after, workers=workers, limit=limit)

    monkeypatch.setattr(world.store, "verify", recorded)
    return seen


def _behind_an_anchor(world: World, checkpoints: Checkpointer) -> int:
    world.append(3)
    assert checkpoints.run_once().outcome == "signed"
    world.later(600)
    return 3


def _a_new_key(world: World, checkpoints: Checkpointer) -> int:
    old = CheckpointSigner.from_pem(generate_private_key_pem())
    world.append(3)
    world.witness.kept.append(old.sign(_checkpoint_of(world, old)))
    return 0  # the new key vouches for nothing yet: from record 1


@pytest.mark.parametrize(
    ("situation", "records"),
    [
        pytest.param(lambda world, checkpoints: 0, 23, id="first-checkpoint"),
        pytest.param(_a_new_key, 20, id="rotated-key"),
        pytest.param(_behind_an_anchor, 20, id="leader-behind"),
    ],
)
def test_a_long_unanchored_stretch_is_verified_in_bounded_calls_and_the_head_signed(
    world: World, calls: Calls, situation: object, records: int
) -> None:
    checkpoints = world.checkpointer()
    anchored = situation(world, checkpoints)  # type: ignore[operator]
    calls.made.clear()
    world.append(records)
    result = checkpoints.run_once()
    assert result.outcome == "signed", result.detail
    assert result.signed is not None
    assert (result.signed.seq, result.signed.record_hash) == world.store.head()
    assert [limit for _, limit in calls.made] == [world.verify_slice] * len(calls.made)
    stretch = world.store.head()[0] - anchored
    assert len(calls.made) >= -(-stretch // world.verify_slice), "no call verified more"
    # each call goes on from the record the one before stopped at
    starts = [after[0] if after else 0 for after, _ in calls.made]
    assert starts == [anchored + i * world.verify_slice for i in range(len(calls.made))]


def test_a_pass_cut_short_goes_on_where_it_stopped_not_from_the_anchor(
    world: World, calls: Calls
) -> None:
    checkpoints = world.checkpointer()
    world.append(30)
    sliced = world.verify_slice < 30
    calls.fail_at = 2 if sliced else 1  # the second slice, or the one call
    failed = checkpoints.run_once()
    assert failed.outcome == "failed"
    assert "longer than 5 s" in failed.detail
    assert world.witness.kept == []
    calls.made.clear()
    calls.fail_at = None
    signed = checkpoints.run_once()
    assert signed.outcome == "signed", signed.detail
    assert signed.signed is not None
    assert signed.signed.seq == 30
    first_after, smaller = calls.made[0]
    expected = world.verify_slice if sliced else None
    assert (first_after[0] if first_after else None) == expected, "not from record 1 again"
    assert smaller == max(min(SMALLEST_SLICE, world.verify_slice), world.verify_slice // 2)
    # once a checkpoint is signed, calls are as large as configured again
    calls.made.clear()
    world.later(600)
    world.append(3)
    assert checkpoints.run_once().outcome == "signed"
    assert {limit for _, limit in calls.made} == {world.verify_slice}


@pytest.mark.parametrize("edited", [1, 2, 3, 8, 13, 14])
def test_a_record_rewritten_in_any_slice_is_refused_and_stays_refused(
    world: World, edited: int
) -> None:
    checkpoints = world.checkpointer()
    world.append(14)
    world.db.script([("DROP TRIGGER audit_log_no_update", ())])
    world.db.query(
        "UPDATE audit_log SET body = replace(body, ?, ?) WHERE seq = ?",
        (f"look {edited}", f"look {edited}x", edited),
    )
    refused = checkpoints.run_once()
    assert refused.outcome == "refused"
    assert f"the chain is broken at record {edited}" in refused.detail
    world.later(600)
    world.append(1)
    assert checkpoints.run_once().outcome == "refused", "what was verified before is no excuse"
    assert world.witness.kept == []
