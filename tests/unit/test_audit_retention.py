"""Retention (pure): the cutoff, where a purge may end, what its row and record must say,
and how the signed checkpoints judge a database after a purge."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from canary.app import check_retention
from canary.audit import PurgeRefused, canonical_json, entry_body
from canary.audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    SignedCheckpoint,
    TrustedKeys,
    generate_private_key_pem,
    judge_anchors,
    public_key_pem,
)
from canary.audit.records import GENESIS_HASH, compute_record_hash, parse_body
from canary.audit.retention import (
    PURGE_ACTION,
    PurgePlan,
    PurgeRow,
    PurgeScope,
    plan_purge,
    purge_entry,
    purge_record_problem,
    purge_rows_problem,
    retention_cutoff,
    retention_warning,
)
from canary.settings import SettingsError, load_settings

NOW = datetime(2033, 12, 1, 9, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=2557)
SIGNED_AT = datetime(2026, 11, 20, 2, 15, tzinfo=UTC)
LOG = "kserve-canary"


def h(n: int) -> str:
    return compute_record_hash(GENESIS_HASH, f"record {n}")


@pytest.fixture(scope="module")
def signer() -> CheckpointSigner:
    return CheckpointSigner.from_pem(generate_private_key_pem())


@pytest.fixture(scope="module")
def other() -> CheckpointSigner:
    return CheckpointSigner.from_pem(generate_private_key_pem())


def keys_of(*signers: CheckpointSigner) -> TrustedKeys:
    return TrustedKeys.from_pem([(s.key_id, public_key_pem(s.public_key)) for s in signers])


def signed(
    by: CheckpointSigner, seq: int, *, record_hash: str | None = None, log: str = LOG
) -> SignedCheckpoint:
    return by.sign(Checkpoint(log, seq, record_hash or h(seq), SIGNED_AT + timedelta(minutes=seq)))


def purge_row(
    by: CheckpointSigner, through: int, *, floor: int = 0, record_seq: int = 13, **changes: object
) -> PurgeRow:
    checkpoint = signed(by, through)
    row = PurgeRow(
        through_seq=through,
        through_hash=h(through),
        statement=checkpoint.statement,
        signature=checkpoint.signature,
        key_id=checkpoint.key_id,
        purged_at=NOW,
        purged_by="ksc_owner",
        records=through - floor,
        cutoff=CUTOFF,
        retention_days=2557,
        record_seq=record_seq,
    )
    return replace(row, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# the retention
# --------------------------------------------------------------------------------------------


def test_the_cutoff_is_the_retention_before_now_and_never_within_a_month() -> None:
    assert retention_cutoff(NOW, 2557) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert retention_cutoff(NOW, 31) == NOW - timedelta(days=31)
    with pytest.raises(ValueError, match="a retention of 30 days is below the minimum of 31"):
        retention_cutoff(NOW, 30)
    with pytest.raises(ValueError, match="naive"):
        retention_cutoff(datetime(2033, 12, 1), 2557)  # noqa: DTZ001 - the naive time refused


def test_the_retention_setting_is_seven_years_by_default_and_at_least_a_month(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().audit_retention_days == 2557
    monkeypatch.setenv("KSC_AUDIT_RETENTION_DAYS", "761")
    assert load_settings().audit_retention_days == 761
    monkeypatch.setenv("KSC_AUDIT_RETENTION_DAYS", "30")
    with pytest.raises(SettingsError, match="setting audit_retention_days: Input should be "
                       "greater than or equal to 31"):  # fmt: skip
        load_settings()


def test_a_retention_shorter_than_reg_b_s_25_months_is_warned_about_at_start() -> None:
    assert retention_warning(2557) is None
    assert retention_warning(761) is None
    warning = retention_warning(760)
    assert warning is not None
    assert warning.startswith("audit_retention_days is 760: a purge may remove records younger")
    assert "761 days (25 months), which Regulation B requires" in warning
    with capture_logs() as quiet:
        check_retention(2557)
    assert quiet == []
    with capture_logs() as logs:
        check_retention(400)
    assert logs == [
        {
            "component": "canary.app",
            "event": "audit.retention_short",
            "log_level": "warning",
            "retention_days": 400,
            "detail": retention_warning(400),
        }
    ]


# --------------------------------------------------------------------------------------------
# where a purge ends
# --------------------------------------------------------------------------------------------

HASHES = {n: h(n) for n in range(1, 13)}


def scope(*, floor: int = 0, old_through: int = 8, head: int = 12) -> PurgeScope:
    young = (old_through + 1, CUTOFF + timedelta(days=1)) if old_through < head else None
    return PurgeScope(floor, h(floor) if floor else GENESIS_HASH, head, old_through, young)


def plan(checkpoints: list[SignedCheckpoint], keys: TrustedKeys, **kwargs: object) -> PurgePlan:
    return plan_purge(
        checkpoints,
        keys=keys,
        log=LOG,
        scope=scope(**kwargs),  # type: ignore[arg-type]
        hashes=HASHES,
        cutoff=CUTOFF,
        retention_days=2557,
    )


def test_a_purge_ends_on_the_latest_checkpoint_of_a_record_beyond_the_retention(
    signer: CheckpointSigner,
) -> None:
    chosen = plan([signed(signer, s) for s in (3, 6, 9, 12)], keys_of(signer))
    assert (chosen.floor, chosen.through_seq, chosen.records) == (0, 6, 6)
    assert chosen.through_hash == h(6)
    assert chosen.checkpoint.seq == 6
    assert chosen.lines() == [
        "records 1 to 6 (6) recorded before the cutoff 2026-12-01T09:00:00.000000Z "
        "(retention 2557 days)",
        f"the purge ends on the checkpoint of record 6 signed 2026-11-20T02:21:00.000000Z by "
        f"{signer.key_id}; the chain will start at record 7, linked to hash {h(6)}",
        "records 7 to 8: beyond the retention too, but no checkpoint given vouches for a later "
        "record: kept for a later purge",
    ]


def test_a_checkpoint_that_does_not_vouch_for_the_stored_record_is_never_where_a_purge_ends(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    candidates = [
        signed(signer, 2),
        signed(other, 7),  # a key nobody pinned
        signed(signer, 6, log="staging"),  # another log
        signed(signer, 5, record_hash=h(105)),  # not the hash the database holds
        signed(signer, 8, record_hash="f" * 64),
    ]
    assert plan(candidates, keys_of(signer)).through_seq == 2
    assert plan(candidates, keys_of(signer, other)).through_seq == 7


def test_a_second_purge_starts_after_the_first(signer: CheckpointSigner) -> None:
    chosen = plan([signed(signer, s) for s in (3, 5, 7)], keys_of(signer), floor=5)
    assert (chosen.floor, chosen.through_seq, chosen.records) == (5, 7, 2)
    assert chosen.lines()[0].startswith("records 6 to 7 (2) recorded before the cutoff")
    with pytest.raises(PurgeRefused, match="no checkpoint of the log 'kserve-canary'"):
        plan([signed(signer, s) for s in (3, 5)], keys_of(signer), floor=5)


def test_nothing_beyond_the_retention_is_refused(signer: CheckpointSigner) -> None:
    with pytest.raises(PurgeRefused) as refused:
        plan([signed(signer, 3)], keys_of(signer), old_through=0)
    assert str(refused.value) == (
        "nothing to purge: record 1, the oldest kept, was recorded 2026-12-02T09:00:00.000000Z, "
        "after the cutoff 2026-12-01T09:00:00.000000Z (retention 2557 days)"
    )
    with pytest.raises(PurgeRefused, match="nothing to purge: record 6, the oldest kept"):
        plan([signed(signer, 3)], keys_of(signer), floor=5, old_through=5)


def test_records_beyond_the_retention_without_a_checkpoint_are_refused(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    with pytest.raises(PurgeRefused) as refused:
        plan([signed(signer, 9), signed(other, 4)], keys_of(signer))
    assert str(refused.value).startswith(
        "records 1 to 8: beyond the retention (recorded before 2026-12-01T09:00:00.000000Z), "
        "but no checkpoint of the log 'kserve-canary' signed by a pinned key vouches for any "
        "of them, and a purge must end on one"
    )
    assert "canary audit checkpoints -o FILE" in str(refused.value)


def test_a_plan_carried_out_later_takes_its_cutoff_from_then(signer: CheckpointSigner) -> None:
    chosen = plan([signed(signer, 6)], keys_of(signer))
    later = chosen.made_at(NOW + timedelta(minutes=3))
    assert later.cutoff == CUTOFF + timedelta(minutes=3)
    assert (later.through_seq, later.through_hash) == (6, h(6))
    with pytest.raises(ValueError, match="before it was planned"):
        chosen.made_at(NOW - timedelta(days=1))


# --------------------------------------------------------------------------------------------
# the purge's record and row
# --------------------------------------------------------------------------------------------


def _record_of(chosen: PurgePlan, seq: int, by: str = "ksc_owner") -> dict[str, object]:
    entry = purge_entry(chosen, at=NOW, purged_by=by, measurements=4, reason="CHG0042")
    return parse_body(canonical_json(entry_body(seq, entry)))


def test_the_purged_record_names_the_role_and_repeats_its_row(signer: CheckpointSigner) -> None:
    chosen = plan([signed(signer, 6)], keys_of(signer))
    entry = purge_entry(chosen, at=NOW, purged_by="ksc_owner", measurements=4, reason=None)
    assert entry.action == PURGE_ACTION
    assert (entry.actor.kind, entry.actor.id) == ("human", "ksc_owner")
    assert entry.reason == (
        "retention: records 1 to 6, recorded before 2026-12-01T09:00:00.000000Z (2557 days), purged"
    )
    assert entry.evidence == {
        "through_seq": 6,
        "through_hash": h(6),
        "records": 6,
        "measurements": 4,
        "previous_floor": 0,
        "cutoff": "2026-12-01T09:00:00.000000Z",
        "retention_days": 2557,
        "checkpoint": chosen.checkpoint.envelope(),
        "purged_by": "ksc_owner",
    }
    row = chosen.row(purged_at=NOW, purged_by="ksc_owner", record_seq=13)
    assert purge_record_problem(row, _record_of(chosen, 13)) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"through_seq": 8, "records": 8}, "says through_seq 6, but its purge row says 8"),
        ({"through_hash": h(8)}, "says through_hash"),
        ({"retention_days": 31}, "says retention_days 2557, but its purge row says 31"),
        ({"purged_by": "mallory"}, "says purged_by 'ksc_owner', but its purge row says 'mallory'"),
        ({"purged_at": NOW + timedelta(days=1)}, "was recorded at 2033-12-01T09:00:00.000000Z"),
    ],
)
def test_a_purge_row_that_disagrees_with_its_record_is_named(
    signer: CheckpointSigner, change: dict[str, object], problem: str
) -> None:
    chosen = plan([signed(signer, 6)], keys_of(signer))
    row = replace(chosen.row(purged_at=NOW, purged_by="ksc_owner", record_seq=13), **change)  # type: ignore[arg-type]
    found = purge_record_problem(row, _record_of(chosen, 13))
    assert found is not None
    assert found.startswith("record 13 (audit.purged) ")
    assert problem in found
    assert found.endswith("(purge row edited?)")


def test_a_purge_row_pointing_at_another_record_is_named(signer: CheckpointSigner) -> None:
    chosen = plan([signed(signer, 6)], keys_of(signer))
    row = chosen.row(purged_at=NOW, purged_by="ksc_owner", record_seq=9)
    body = parse_body(canonical_json(entry_body(9, purge_entry(chosen, at=NOW, purged_by="x",
                                                               measurements=0))))  # fmt: skip
    body["action"] = "analysis.evaluated"
    assert purge_record_problem(row, body) == (
        "record 9 is a 'analysis.evaluated' record, but the purge through record 6 names it as "
        "its audit.purged record (purge row edited?)"
    )


def test_purge_rows_hold_together(signer: CheckpointSigner) -> None:
    first = purge_row(signer, 3, record_seq=10)
    second = purge_row(signer, 7, floor=3, record_seq=15)
    assert purge_rows_problem([second, first]) is None
    assert purge_rows_problem([first, replace(second, through_seq=9)]) == (
        9,
        "the purge through record 9 says it removed 4 records, but records 4 to 9 are 6 "
        "(purge row edited?)",
    )
    assert purge_rows_problem([first, replace(second, record_seq=7)]) == (
        7,
        "the purge through record 7: its audit.purged record 7 is not after it (purge row edited?)",
    )
    assert purge_rows_problem([first, replace(second, record_seq=9)]) == (
        7,
        "the purge through record 7: its audit.purged record 9 is not after the previous "
        "purge's (10) (purge row edited?)",
    )
    longer = replace(first, retention_days=4000)
    assert purge_rows_problem([longer]) == (
        3,
        "the purge through record 3: its cutoff 2026-12-01T09:00:00.000000Z is not 4000 days "
        "before it was made (2033-12-01T09:00:00.000000Z) (purge row edited?)",
    )
    shortened = replace(first, retention_days=7, cutoff=NOW - timedelta(days=7))
    assert purge_rows_problem([shortened]) == (
        3,
        "the purge through record 3 used a retention of 7 days, below the minimum of 31 that "
        "every purge keeps (purge row edited?)",
    )


# --------------------------------------------------------------------------------------------
# judging a database after a purge
# --------------------------------------------------------------------------------------------


def test_checkpoints_below_a_vouched_for_purge_are_purged_not_missing(
    signer: CheckpointSigner,
) -> None:
    report = judge_anchors(
        [signed(signer, s) for s in (2, 4, 6, 9)],
        keys=keys_of(signer), log=LOG, head_seq=13, hashes={9: h(9)},
        purges=[purge_row(signer, 6)],
    )  # fmt: skip
    assert not report.tampered
    assert (report.purged_through, report.anchored_seq, report.unanchored) == (6, 9, 4)
    assert [f.kind for f in report.findings] == ["purged", "unanchored"]
    assert report.findings[0].message == (
        "purged through record 6 on 2033-12-01T09:00:00.000000Z by ksc_owner (retention 2557 "
        "days, cutoff 2026-12-01T09:00:00.000000Z), vouched for by the checkpoint signed "
        f"2026-11-20T02:21:00.000000Z by {signer.key_id}; 2 checkpoints given are of purged "
        "records"
    )
    assert "records 10 to 13 (4) not yet anchored" in report.findings[1].message


def test_the_purge_s_own_checkpoint_anchors_the_chain_where_it_now_starts(
    signer: CheckpointSigner,
) -> None:
    report = judge_anchors(
        [], keys=keys_of(signer), log=LOG, head_seq=13, hashes={}, purges=[purge_row(signer, 6)]
    )
    assert not report.tampered
    assert (report.anchored_seq, report.key_id, report.unanchored) == (6, signer.key_id, 7)


def test_a_witnessed_checkpoint_of_the_last_purged_record_is_held_against_the_purge_row(
    signer: CheckpointSigner,
) -> None:
    rewritten = judge_anchors(
        [signed(signer, 6, record_hash=h(106))],
        keys=keys_of(signer), log=LOG, head_seq=13, hashes={}, purges=[purge_row(signer, 6)],
    )  # fmt: skip
    assert [f.kind for f in rewritten.findings] == ["rewritten", "purged"]
    assert f"the signed hash of record 6 is {h(106)}, the database has {h(6)}" in (
        rewritten.findings[0].message
    )


def _with_checkpoint(row: PurgeRow, checkpoint: SignedCheckpoint) -> PurgeRow:
    return replace(
        row,
        statement=checkpoint.statement,
        signature=checkpoint.signature,
        key_id=checkpoint.key_id,
    )


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ("another key", "which is not one of the pinned keys"),
        ("another record", "says record 8 had the hash"),
        ("another hash", "says record 6 had the hash " + "a" * 64),
        ("another log", "its checkpoint is for the log 'staging'"),
        ("garbage", "carries an unreadable checkpoint"),
    ],
)
def test_a_purge_its_checkpoint_does_not_vouch_for_is_tampering(
    signer: CheckpointSigner, other: CheckpointSigner, forge: str, message: str
) -> None:
    row = {
        "another key": purge_row(other, 6),
        "another record": replace(
            purge_row(signer, 6), through_seq=8, through_hash=h(8), records=8
        ),
        "another hash": replace(purge_row(signer, 6), through_hash="a" * 64),
        "another log": _with_checkpoint(purge_row(signer, 6), signed(signer, 6, log="staging")),
        "garbage": replace(purge_row(signer, 6), statement="{}"),
    }[forge]
    report = judge_anchors(
        [signed(signer, 3), signed(signer, 9)],
        keys=keys_of(signer), log=LOG, head_seq=13, hashes={9: h(9)}, purges=[row],
    )  # fmt: skip
    assert report.tampered
    assert report.purged_through == 0
    kinds = [f.kind for f in report.findings]
    assert kinds[0] == "purge"
    assert report.findings[0].message.startswith(
        f"the purge through record {row.through_seq} (2033-12-01T09:00:00.000000Z, by ksc_owner)"
    )
    assert message in report.findings[0].message
    # without a vouched-for purge, the signed record 3 is simply missing
    assert "truncated" in kinds
    assert "record 3, signed 2026-11-20T02:18:00.000000Z, is missing" in (
        " ".join(f.message for f in report.findings)
    )


def test_an_earlier_good_purge_still_counts_when_a_later_one_is_forged(
    signer: CheckpointSigner, other: CheckpointSigner
) -> None:
    report = judge_anchors(
        [signed(signer, 2), signed(signer, 5)],
        keys=keys_of(signer), log=LOG, head_seq=13, hashes={},
        purges=[purge_row(signer, 3, record_seq=10), purge_row(other, 6, floor=3)],
    )  # fmt: skip
    assert report.purged_through == 3
    assert [f.kind for f in report.findings] == ["purge", "truncated", "purged"]
    assert "record 5, signed" in report.findings[1].message
