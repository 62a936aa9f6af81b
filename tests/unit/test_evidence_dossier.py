"""The evidence dossier of a rollout, built from records written the way the engine writes
them (tests/unit/evidence_story.py plays the real state machine): what an auditor reads
from it (the outcome, the traffic, the steps and their evidence, the approvals, people's
actions, the verification) and its JSON round trip."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest

from canary.audit import ApprovalRow, AuditRecord, ChainReport, Measurement
from canary.evidence.dossier import (
    DOSSIER_VERSION,
    SHADOW_STEP,
    TERMINAL_PHASES,
    ChainVerification,
    Dossier,
    build_dossier,
    category_of,
    value_limit,
)
from canary.model import TERMINAL_PHASES as MACHINE_TERMINAL_PHASES
from canary.model import CommandKind
from tests.unit.evidence_story import (
    GOOD,
    ROLLOUT_ID,
    T0,
    Reading,
    Story,
    aborted,
    approved,
    awaiting_approval,
    expired,
    make_policy,
    passing_first_step,
    promote,
    rejected,
    rollback,
    shadow,
    unknown_actions,
    view,
)


@dataclass(frozen=True)
class Expected:
    phase: str
    reason: str  # a part of the reason an auditor reads
    split: dict[str, int]  # the last shares of traffic seen
    steps: list[tuple[int, int | None]]
    approvals: list[str]
    manual: list[tuple[str, bool]]
    other: list[str]


CASES: dict[str, tuple[Callable[[], Story], Expected]] = {
    "promote": (
        promote,
        Expected("Succeeded", "r2 promoted", {"r1": 0, "r2": 100}, [(0, 10), (1, 50)], [], [], []),
    ),
    "rollback": (
        rollback,
        Expected(
            "RolledBack",
            "analysis failed: latency-p99 failed",
            {"r1": 100, "r2": 0},
            [(0, 10)],
            [],
            [],
            [],
        ),
    ),
    "approval-approved": (
        approved,
        Expected("Succeeded", "r2 promoted", {"r1": 0, "r2": 100}, [(0, 10)], ["approved"], [], []),
    ),
    "approval-rejected": (
        rejected,
        Expected(
            "RolledBack",
            "approval rejected by Rita Reviewer",
            {"r1": 100, "r2": 0},
            [(0, 10)],
            ["rejected"],
            [],
            [],
        ),
    ),
    "approval-expired": (
        expired,
        Expected(
            "RolledBack",
            "passed without a decision",
            {"r1": 100, "r2": 0},
            [(0, 10)],
            ["expired"],
            [],
            [],
        ),
    ),
    "manual-abort": (
        aborted,
        Expected(
            "Aborted",
            "aborted by bob@bank.example",
            {"r1": 100, "r2": 0},
            [(0, 10), (1, 50)],
            [],
            [("resume", False), ("abort", True)],
            [],
        ),
    ),
    "shadow": (
        shadow,
        Expected(
            "Progressing", "", {"r1": 90, "r2": 10}, [(SHADOW_STEP, 100), (0, 10)], [], [], []
        ),
    ),
    "unknown-actions": (
        unknown_actions,
        Expected(
            # the version 1 record names no stable revision: only r2's share is known
            "Succeeded",
            "r2 promoted",
            {"r2": 100},
            [(0, 10), (1, 50), (2, 100)],
            [],
            [],
            ["retention.reviewed", "rollout.started"],
        ),
    ),
}


def story_of(name: str) -> Story:
    return CASES[name][0]()


@pytest.mark.parametrize("name", list(CASES))
def test_the_dossier_tells_how_the_rollout_went(name: str) -> None:
    make, expected = CASES[name]
    dossier = make().dossier()

    summary = dossier.summary
    assert (summary.namespace, summary.name, summary.rollout_id) == ("fraud", "scorer", ROLLOUT_ID)
    assert summary.phase == expected.phase
    assert summary.in_progress is (expected.phase not in TERMINAL_PHASES)
    assert (summary.ended_at is None) is summary.in_progress
    assert expected.reason in (summary.reason or "")
    assert summary.stable is not None
    assert summary.canary is not None
    assert (summary.stable.revision, summary.stable.storage_uri) == ("r1", "s3://models/r1")
    assert (summary.canary.revision, summary.canary.storage_uri) == ("r2", "s3://models/r2")
    last = dossier.traffic[-1]
    assert {s.revision: s.percent for s in last.shares} == expected.split
    assert [(s.index, s.percent) for s in dossier.steps] == expected.steps
    assert [a.state for a in dossier.approvals] == expected.approvals
    assert [(m.what, m.accepted) for m in dossier.manual] == expected.manual
    assert [o.action for o in dossier.other] == expected.other
    assert dossier.verification.status == "verified"
    assert [r.seq for r in dossier.log] == list(range(1, summary.records + 1))


@pytest.mark.parametrize("name", list(CASES))
def test_the_dossier_round_trips_through_json_exactly(name: str) -> None:
    dossier = story_of(name).dossier()

    data = dossier.to_json()
    text = json.dumps(data)

    assert Dossier.from_json(data) == dossier
    assert Dossier.from_json(text) == dossier
    assert Dossier.from_json(dossier.to_json_text()) == dossier
    assert data["version"] == DOSSIER_VERSION
    assert data["as_of"] == dossier.as_of.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_traffic_shows_what_was_asked_and_what_the_status_showed() -> None:
    dossier = promote().dossier()

    shown = [
        (p.at - T0, p.action, {s.revision: s.percent for s in p.shares}) for p in dossier.traffic
    ]
    assert shown == [
        (timedelta(seconds=30), "traffic.shifted", {"r1": 90, "r2": 10}),
        (timedelta(minutes=5, seconds=30), "traffic.intent", {"r1": 90, "r2": 10}),
        (timedelta(minutes=6), "traffic.shifted", {"r1": 50, "r2": 50}),
        (timedelta(minutes=11, seconds=30), "traffic.intent", {"r1": 50, "r2": 50}),
        (timedelta(minutes=12), "promoted", {"r1": 0, "r2": 100}),
    ]
    asked = [(i.purpose, i.revision, i.percent, i.outcome) for i in dossier.intents]
    assert asked == [("step", "r2", 50, "applied"), ("promote", "r2", 100, "applied")]
    assert [i.seen_at - T0 for i in dossier.intents if i.seen_at] == [
        timedelta(minutes=6), timedelta(minutes=12)
    ]  # fmt: skip
    assert all(i.outcome_seq is not None and i.outcome_seq > i.seq for i in dossier.intents)


def test_a_refused_write_and_an_intent_without_outcome_are_told_apart() -> None:
    story = Story(make_policy(steps=[10, 50, 100])).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    story.at(minutes=1).analyse(*GOOD)
    story.fail_next = (422, "Invalid", "spec.predictor.canaryTrafficPercent: Invalid value")
    story.at(minutes=5, seconds=30).analyse(*GOOD)  # the step to 50 % is refused: paused
    story.crash_next = True  # the resume sends it again; the controller dies before writing
    story.at(minutes=6).command(CommandKind.RESUME, "the webhook rule was fixed")

    dossier = story.dossier()

    outcomes = [(i.percent, i.outcome) for i in dossier.intents]
    assert outcomes == [(50, "failed"), (50, "unconfirmed")]
    failed = dossier.intents[0]
    assert failed.outcome_reason is not None
    assert "422 Invalid" in failed.outcome_reason
    assert failed.seen_at is None
    assert dossier.summary.phase == "Progressing"
    assert any(r.action == "rollout.paused" for r in dossier.log)


def test_an_approval_names_who_decided_on_which_change_with_the_callback() -> None:
    dossier = approved().dossier()

    (approval,) = dossier.approvals
    assert approval.state == "approved"
    assert (approval.step_index, approval.percent, approval.revision) == (1, 100, "r2")
    assert (approval.gate, approval.risk_owner_group) == ("servicenow", "credit-risk")
    assert approval.change_number == "CHG0031337"
    assert approval.approver == "Alice Approver"
    assert approval.approver_id == "b7" * 16
    assert approval.decided_at == T0 + timedelta(minutes=20)
    assert approval.comments == "reviewed the canary evidence; fine to promote"
    assert approval.webhook_id == "msg_2f9c"
    assert approval.payload_digest is not None
    assert approval.requested_by == "carol@bank.example"
    assert approval.deadline == T0 + timedelta(minutes=5, seconds=30, hours=8)
    assert (approval.close_code, approval.discrepancy) == ("successful", None)
    assert [e.action for e in approval.events] == [
        "approval.requested", "approval.change_opened", "approval.verified",
        "approval.change_closed",
    ]  # fmt: skip
    decided = approval.events[2]
    assert decided.actor is not None
    assert (decided.actor.kind, decided.actor.id) == ("servicenow", "Alice Approver")
    assert dossier.summary.started_by is not None
    assert dossier.summary.started_by.id == "carol@bank.example"


def test_a_rejection_and_an_expiry_end_the_approval_as_the_records_say() -> None:
    no = rejected().dossier().approvals[0]
    late = expired().dossier().approvals[0]

    assert (no.state, no.approver, no.comments) == (
        "rejected", "Rita Reviewer", "error budget exhausted this week",
    )  # fmt: skip
    assert no.close_code == "unsuccessful"
    assert (late.state, late.approver, late.discrepancy) == ("expired", None, None)
    assert late.decided_at == T0 + timedelta(minutes=6 + 8 * 60)
    assert [e.action for e in late.events][-1] == "approval.expired"


def test_an_approval_known_only_from_the_table_is_shown_as_such() -> None:
    story = awaiting_approval()
    (row,) = story.approvals()
    decided = replace(row, state="approved", approver="x1", decided_at=T0 + timedelta(hours=1),
                      decision={"approver_name": "Xavier", "comments": "ok"})  # fmt: skip
    # the table row was changed, but no decision record was chained
    dossier = build_dossier(
        rollout=story.row(), records=story.records, approvals=[decided], as_of=story.now
    )

    (approval,) = dossier.approvals
    assert (approval.state, approval.approver) == ("approved", "Xavier")
    assert approval.discrepancy is not None
    assert "no chained record" in approval.discrepancy
    assert approval.events[-1].seq is None


def test_a_table_that_contradicts_the_chained_decision_is_reported() -> None:
    story = rejected()
    rows = [replace(r, state="approved") for r in story.approvals()]

    dossier = build_dossier(
        rollout=story.row(), records=story.records, approvals=rows, as_of=story.now
    )

    (approval,) = dossier.approvals
    assert approval.state == "rejected"  # the chain wins
    assert approval.discrepancy == (
        "the approvals table says approved; the chained records say rejected"
    )


def test_manual_actions_name_the_person_their_reason_and_the_refusals() -> None:
    story = aborted().refused_command("resume", "the rollout has already finished", "retry")
    dossier = story.dossier()

    refused_by_machine, abort, refused_early = dossier.manual
    assert (abort.what, abort.accepted, abort.result) == ("abort", True, None)
    assert abort.reason == "fraud team saw false positives (INC-77)"
    assert (abort.actor.kind, abort.actor.id, abort.actor.groups) == (
        "human", "bob@bank.example", ("risk-ops",),
    )  # fmt: skip
    assert abort.actor.uid == "uid-bob@bank.example"
    assert (refused_by_machine.what, refused_by_machine.accepted) == ("resume", False)
    assert refused_by_machine.result == "the rollout is not paused (phase Progressing)"
    assert (refused_early.what, refused_early.reason) == ("resume", "retry")
    assert refused_early.result == "the rollout has already finished"
    assert dossier.summary.phase == "Aborted"


def test_the_shadow_comparison_is_a_step_of_its_own() -> None:
    dossier = shadow().dossier()

    comparison, first = dossier.steps
    assert comparison.shadow
    assert comparison.reached_at == T0 + timedelta(seconds=20)
    assert comparison.ended_at == T0 + timedelta(minutes=10, seconds=30)
    assert [c.name for c in comparison.checks] == ["error-rate"]
    assert len(comparison.checks[0].evaluations) == 3
    assert first.requested_at == T0 + timedelta(minutes=10, seconds=30)
    assert first.reached_at == T0 + timedelta(minutes=11)


def test_each_check_keeps_every_evaluation_with_its_evidence() -> None:
    dossier = rollback().dossier()

    (step,) = dossier.steps
    latency_check = next(c for c in step.checks if c.name == "latency-p99")
    verdicts = [e.verdict for e in latency_check.evaluations]
    assert verdicts == ["Successful", "Failed"]
    bad = latency_check.latest
    assert bad is not None
    assert (bad.canary_value, bad.baseline_value, bad.threshold) == (0.31, 0.2, 0.2)
    assert bad.limit == pytest.approx(0.24)  # +20 % of the baseline, in seconds
    assert (bad.canary_samples, bad.baseline_samples) == (1200, 10800)
    assert bad.query.startswith("histogram_quantile(0.99")
    assert bad.prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert len(bad.response_digest) == 64
    assert [r.verdict for r in step.rounds] == ["Successful", "Failed"]


def test_a_dossier_from_the_records_alone() -> None:
    story = rollback()

    dossier = story.dossier(rollout=False)

    assert dossier.summary.rollout_id == ROLLOUT_ID
    assert dossier.summary.policy == "default"
    assert dossier.summary.phase == "RolledBack"
    assert dossier.summary.policy_steps == ()
    assert [s.percent for s in dossier.steps] == [10]  # from the records


@pytest.mark.parametrize(
    ("records", "as_of", "message"),
    [
        ([], T0, "cannot tell which rollout"),
        (None, datetime(2026, 11, 23, 10, 0), "as_of must be timezone-aware"),  # noqa: DTZ001
    ],
)
def test_a_dossier_needs_a_rollout_and_an_aware_time(
    records: list[AuditRecord] | None, as_of: datetime, message: str
) -> None:
    story = promote()
    with pytest.raises(ValueError, match=message):
        build_dossier(
            rollout=None, records=story.records if records is None else records, as_of=as_of
        )


def test_an_intent_of_a_rollout_start_command_names_who_started_it() -> None:
    story = passing_first_step(Story(make_policy(steps=[10, 100])))
    (intent_first,) = [r for r in story.records if r.entry.action == "rollout.started"]
    starter = story.chain(
        [
            replace(
                intent_first.entry,
                action="traffic.intent",
                rollout_id=None,
                actor=replace(intent_first.entry.actor, kind="human", id="dana@bank.example"),
                evidence={"purpose": "start", "percent": 10, "storage_uri": "s3://models/r2"},
                correlation_id="start-1",
            )
        ]
    )

    dossier = story.dossier()

    assert dossier.summary.started_by is not None
    assert dossier.summary.started_by.id == "dana@bank.example"
    assert dossier.summary.started_by_source == "the rollout start command"
    (start,) = [m for m in dossier.manual if m.what == "start"]
    assert start.seq == starter[0].seq
    assert dossier.intents[-1].outcome == "unconfirmed"


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def test_a_record_edited_without_its_hash_fails_the_dossier() -> None:
    story = rollback()
    index = next(i for i, r in enumerate(story.records) if '"canary_value":0.31' in r.body)
    edited = story.records[index]
    story.records[index] = replace(edited, body=edited.body.replace("0.31", "0.19"))

    dossier = story.dossier()

    assert dossier.verification.records.mismatched == (edited.seq,)
    assert dossier.verification.status == "failed"


def test_a_broken_link_fails_the_dossier() -> None:
    story = rollback()
    story.records[5] = replace(story.records[5], prev_hash="f" * 64)

    dossier = story.dossier()

    assert story.records[5].seq in dossier.verification.records.broken_links
    assert dossier.verification.status == "failed"


def test_a_chain_that_fails_verification_marks_the_records_after_the_break() -> None:
    story = rollback()
    report = ChainReport(ok=False, records_checked=4, head_hash="a" * 64, first_bad_seq=5,
                         problem="record 5: hash mismatch")  # fmt: skip

    dossier = story.dossier(verification=ChainVerification.from_report(report, head_seq=4))

    assert dossier.verification.status == "failed"
    assert dossier.verification.records.after_break == len(story.records) - 4


def test_anchoring_counts_the_records_a_signed_checkpoint_covers() -> None:
    story = rollback()
    head = story.records[-1]
    chain = ChainVerification.from_report(
        ChainReport(True, len(story.records), head.record_hash, None, None),
        head_seq=head.seq,
        verified_at=story.now,
        anchored_seq=5,
        anchored_at=T0 + timedelta(minutes=1),
        anchor_key_id="ed25519:7f3a",
        anchor_witness="ConfigMap kserve-canary/audit-checkpoints",
    )

    dossier = story.dossier(verification=chain)

    assert chain.unanchored == len(story.records) - 5
    assert (dossier.verification.records.anchored, dossier.verification.records.unanchored) == (
        5, len(story.records) - 5,
    )  # fmt: skip
    assert dossier.verification.status == "verified"
    assert Dossier.from_json(dossier.to_json()) == dossier


def test_checkpoints_that_contradict_the_database_fail_a_consistent_chain() -> None:
    story = rollback()
    head = story.records[-1]
    truncated = "the witness saw record 40; the database ends at 12"
    chain = ChainVerification.from_report(
        ChainReport(True, head.seq, head.record_hash, None, None),
        head_seq=head.seq,
        anchored_seq=0,  # no checkpoint the database agrees with
        anchor_problems=[truncated],
    )

    dossier = story.dossier(verification=chain)

    assert dossier.verification.status == "failed"
    assert (chain.anchored, chain.unanchored) == (False, None)
    assert dossier.verification.records.anchored is None
    assert Dossier.from_json(dossier.to_json()).verification.chain == chain


def test_without_a_verification_the_dossier_says_unverified() -> None:
    story = promote()
    dossier = build_dossier(rollout=story.row(), records=story.records, as_of=story.now)

    assert dossier.verification.chain is None
    assert dossier.verification.status == "unverified"
    assert dossier.verification.records.checked == len(story.records)


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


def _measurement(
    canary: float | None, baseline: float | None, statistic: float | None, threshold: float | None
) -> Measurement:
    return Measurement(
        check="c", evaluated_at=T0, query="q", prometheus_url="", response_digest="",
        canary_value=canary, baseline_value=baseline, canary_samples=None,
        baseline_samples=None, statistic=statistic, threshold=threshold, verdict="Successful",
        dry_run=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("canary", "baseline", "statistic", "threshold", "limit"),
    [
        pytest.param(0.012, 0.010, 0.012, 0.05, 0.05, id="absolute-limit"),
        pytest.param(0.30, 0.20, 0.5, 0.2, 0.24, id="relative-to-baseline"),
        pytest.param(0.15, 0.20, -0.25, -0.1, 0.18, id="relative-higher-is-better"),
        pytest.param(0.012, 0.010, 3.7, 20.0, None, id="a-sequential-test-e-value"),
        pytest.param(0.012, 0.0, 0.5, 0.2, None, id="zero-baseline"),
        pytest.param(math.nan, 0.010, math.nan, 0.05, None, id="not-a-number"),
        pytest.param(0.012, 0.010, None, None, None, id="not-judged"),
    ],
)
def test_the_threshold_in_the_values_units(
    canary: float, baseline: float, statistic: float | None, threshold: float | None,
    limit: float | None,
) -> None:  # fmt: skip
    found = value_limit(_measurement(canary, baseline, statistic, threshold))
    assert found == (pytest.approx(limit) if limit is not None else None)


def test_non_finite_values_survive_the_round_trip() -> None:
    story = passing_first_step(Story(make_policy(steps=[10, 100])))
    story.at(minutes=5, seconds=40).analyse(
        Reading("latency-p99", math.nan, math.inf, None, 0.2, "Error"),
        Reading("error-rate", -math.inf, 0.0, None, 0.02, "Error"),
    )
    dossier = story.dossier()

    back = Dossier.from_json(json.loads(json.dumps(dossier.to_json())))

    assert back == dossier
    evaluations = [c.latest for c in back.steps[0].checks]
    assert evaluations[0] is not None
    assert evaluations[1] is not None
    assert math.isnan(evaluations[0].canary_value or 0.0)
    assert evaluations[0].baseline_value == math.inf
    assert evaluations[1].canary_value == -math.inf


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "layout version 2 is not 1"),
        ({"surprise": 1}, "unknown fields \\['surprise'\\]"),
        ({"as_of": 17}, "dossier.as_of: expected a timestamp"),
        ({"log": {}}, "dossier.log: expected an array"),
    ],
)
def test_from_json_refuses_what_it_did_not_write(change: dict[str, object], message: str) -> None:
    data = {**promote().dossier().to_json(), **change}
    with pytest.raises(ValueError, match=message):
        Dossier.from_json(data)


def test_the_terminal_phases_are_the_state_machines() -> None:
    assert {p.value for p in MACHINE_TERMINAL_PHASES} == TERMINAL_PHASES


@pytest.mark.parametrize(
    ("action", "category"),
    [
        ("rollout.started", "start"),
        ("traffic.failed", "traffic"),
        ("analysis.evaluated", "analysis"),
        ("approval.late", "approval"),
        ("manual.opt_out", "manual"),
        ("manual.something_new", "manual"),
        ("mirror.restored", "shadow"),
        ("promoted", "promotion"),
        ("rolled_back", "rollback"),
        ("audit.checkpoint_signed", "other"),
    ],
)
def test_actions_have_categories(action: str, category: str) -> None:
    assert category_of(action) == category


def test_approval_rows_without_records_become_requests() -> None:
    story = promote()
    row = ApprovalRow(
        id="ap-1", rollout_id=ROLLOUT_ID, revision="r2", step_index=1, gate="kubernetes",
        change_number=None, change_sys_id=None, risk_owner_group="credit-risk",
        requested_by="controller", requested_at=T0 + timedelta(minutes=6),
        deadline=T0 + timedelta(hours=8), state="cancelled", percent=50,
    )  # fmt: skip

    dossier = build_dossier(
        rollout=story.row(), records=story.records, approvals=[row], as_of=story.now
    )

    (approval,) = dossier.approvals
    assert (approval.state, approval.gate, approval.percent) == ("cancelled", "kubernetes", 50)
    assert [e.seq for e in approval.events] == [None]
