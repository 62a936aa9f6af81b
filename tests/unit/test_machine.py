"""The rollout state machine, rule by rule. Every test drives the pure ``step`` function
with an explicit clock and checks what a user would see: traffic written, phase, events,
audit records, and the reason a command was refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary import machine
from canary.model import (
    TERMINAL_PHASES,
    ChallengerGone,
    ChangeOpened,
    CloseChange,
    CommandKind,
    ManualCommand,
    Phase,
    RecordAudit,
    RequestApproval,
    Revision,
    RolloutState,
    ServiceObserved,
    SetMirror,
    SetTraffic,
    Tick,
    TrafficView,
    Verdict,
)
from tests.unit.rollout_driver import (
    APPROVAL,
    T0,
    Driver,
    challenger_view,
    challenging,
    make_policy,
    progressing,
    promoted_view,
    reach,
    view,
)

MIN = timedelta(minutes=1)


def test_healthy_canary_walks_every_step_and_is_promoted() -> None:
    d = Driver().start(spec=0)  # a model change applied without a percent
    assert d.phase() is Phase.PENDING
    assert d.traffic() == [(10, "start")], "the first write pins the canary to the first step"
    assert d.events() == ["RolloutStarted"]

    d.see(10, ready=False)
    assert d.phase() is Phase.PENDING
    d.see(10)  # ready, status shows 10 %
    assert d.phase() is Phase.PROGRESSING
    assert d.audits() == ["traffic.shifted"]

    written = []
    minute = 0
    for percent in (25, 50):
        minute += 1
        d.at(minute * MIN).verdict()
        assert d.traffic() == [], "the hold is not over"
        minute += 4
        d.at(minute * MIN).verdict()  # a fresh verdict at the end of the hold
        written += d.traffic()
        assert d.traffic() == [(percent, "step")]
        assert d.audits() == ["rollout.step_advanced"]
        d.see(percent)
        assert d.state is not None
        assert d.state.step_reached_at == d.now
    minute += 1
    d.at(minute * MIN).verdict()
    minute += 4
    d.at(minute * MIN)
    assert d.phase() is Phase.PROGRESSING, "a verdict four minutes old decides nothing"
    d.verdict()
    assert d.phase() is Phase.PROMOTING
    assert d.traffic() == [(100, "promote")]
    d.apply(ServiceObserved(promoted_view()))
    assert d.phase() is Phase.SUCCEEDED
    assert d.events() == ["Promoted"]
    assert d.audits() == ["promoted"]
    assert written == [(25, "step"), (50, "step")]
    assert d.state is not None
    assert d.state.next_check_at is None
    assert list(d.state.history) == ["Pending", "Progressing", "Promoting", "Succeeded"]


def test_a_rollout_needs_a_stable_revision() -> None:
    first = view(100, latest="r1", stable="r1")
    no_stable = first.__class__(**{**first.__dict__, "stable": None})
    with pytest.raises(ValueError, match="first deployment"):
        machine.start("x", "ns", "m", no_stable, make_policy(), T0)


@pytest.mark.parametrize(
    "begin",
    [
        pytest.param(lambda v: machine.start("x", "ns", "m", v, make_policy(), T0), id="own-model"),
        pytest.param(
            lambda v: machine.start_challenger(
                "x", "ns", "m", "m-next", v, make_policy(shadow={"enabled": True}), T0
            ),
            id="challenger",
        ),
    ],
)
def test_a_revision_kserve_has_not_named_is_never_a_canary(
    begin: Callable[[TrafficView], object],
) -> None:
    """Knative names a revision in the status after the spec changes: a rollout of the
    nameless one would be superseded by its own name a moment later."""
    nameless = replace(view(0, ready=False), latest=Revision("", "s3://models/r2"))
    with pytest.raises(ValueError, match="no name yet"):
        begin(nameless)


def test_naive_clock_is_refused() -> None:
    d = progressing()
    assert d.state is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        machine.step(d.state, Tick(), d.policy, datetime(2026, 11, 23, 10, 0))  # noqa: DTZ001


# --- a step is reached only when the observed traffic matches ---------------------------


@pytest.mark.parametrize(
    ("observed", "reached"),
    [
        pytest.param({"spec": 10, "share": 0}, False, id="spec-written-status-not-yet"),
        pytest.param({"spec": 10, "converged": False}, False, id="not-converged"),
        pytest.param({"spec": 10, "ready": False}, False, id="revision-not-ready"),
        pytest.param({"spec": 25, "share": 25}, False, id="someone-else's-percent"),
        pytest.param({"spec": 10}, True, id="status-shows-the-split"),
    ],
)
def test_first_step_counts_only_when_status_shows_it(
    observed: dict[str, int | bool], reached: bool
) -> None:
    d = Driver().start()
    d.apply(ServiceObserved(view(**observed)))  # type: ignore[arg-type]
    assert (d.phase() is Phase.PROGRESSING) is reached


def test_later_step_waits_for_status_then_times_out_into_rollback() -> None:
    d = progressing()
    d.at(5 * MIN).verdict()
    assert d.traffic() == [(25, "step")]
    d.see(25, share=10)  # spec written, Knative still routing the old split
    assert d.state is not None
    assert d.state.step_reached_at is None
    d.at(6 * MIN)
    assert d.phase() is Phase.PROGRESSING
    d.at(7 * MIN)  # trafficTimeout of 2m since the write
    assert d.phase() is Phase.ROLLING_BACK
    assert d.traffic() == [(0, "rollback")]
    assert "TrafficNotConverged" in d.events()


# --- analysis verdicts ------------------------------------------------------------------


def test_failed_verdict_rolls_back_at_once_and_completes_when_status_shows_zero() -> None:
    d = progressing()
    d.at(MIN).verdict(Verdict.FAILED)
    assert d.phase() is Phase.ROLLING_BACK
    assert d.traffic() == [(0, "rollback")]
    assert d.events() == ["AnalysisFailed", "RollingBack"]
    d.see(0, share=5)  # not yet
    assert d.phase() is Phase.ROLLING_BACK
    d.see(0)
    assert d.phase() is Phase.ROLLED_BACK
    assert d.audits() == ["rolled_back"]
    assert d.state is not None
    assert "analysis failed" in (d.state.outcome or "")


def test_inconclusive_pauses_for_a_human_and_resume_needs_fresh_evidence() -> None:
    d = progressing()
    d.at(MIN).verdict(Verdict.INCONCLUSIVE)
    assert d.phase() is Phase.PAUSED
    assert d.events() == ["Paused"]
    d.at(30 * MIN)
    assert d.phase() is Phase.PAUSED, "a paused rollout waits for a human, not the clock"
    d.command(CommandKind.RESUME, "metrics fixed")
    assert d.phase() is Phase.PROGRESSING
    assert d.state is not None
    assert d.state.step_reached_at == d.now
    d.at(33 * MIN).verdict()
    assert d.traffic() == [], "the hold restarts at resume"
    d.at(35 * MIN).verdict()
    assert d.traffic() == [(25, "step")]


def test_error_verdict_holds_and_never_promotes() -> None:
    d = progressing(make_policy(steps=[10, 100]))
    d.at(MIN).verdict(Verdict.ERROR)
    assert d.phase() is Phase.PAUSED
    d.at(60 * MIN)
    assert d.traffic() == []


@pytest.mark.parametrize(
    "verdict_kwargs",
    [
        pytest.param({"revision": "r0"}, id="another-revision"),
        pytest.param({"step": 2}, id="another-step"),
        pytest.param({"at": T0 - MIN}, id="taken-before-the-step-was-reached"),
    ],
)
def test_stale_verdicts_do_not_advance(verdict_kwargs: dict[str, object]) -> None:
    d = progressing()
    d.at(MIN).verdict(**verdict_kwargs)  # type: ignore[arg-type]
    d.at(5 * MIN)
    assert d.traffic() == []
    assert d.phase() is Phase.PROGRESSING


@pytest.mark.parametrize(
    ("age", "advances"),
    [
        pytest.param(timedelta(0), True, id="taken-now"),
        pytest.param(timedelta(seconds=30), True, id="one-interval-old"),
        pytest.param(timedelta(seconds=32), True, id="one-interval-and-its-transit"),
        pytest.param(timedelta(seconds=33), False, id="just-past-one-interval-and-transit"),
        pytest.param(timedelta(seconds=41), False, id="from-before-a-restart"),
        pytest.param(timedelta(minutes=4), False, id="from-early-in-the-hold"),
    ],
)
def test_only_a_verdict_younger_than_one_analysis_interval_advances(
    age: timedelta, advances: bool
) -> None:
    d = progressing()  # analysisInterval 30s, stepHold 5m
    written = d.at(5 * MIN - age).verdict().traffic()
    written += d.at(5 * MIN).traffic()
    assert written == ([(25, "step")] if advances else [])
    if not advances:
        assert d.phase() is Phase.PROGRESSING
        assert d.state is not None
        assert "waiting for a fresh evaluation" in (d.state.waiting_for or "")


def test_a_canary_that_went_bad_during_a_restart_is_judged_on_new_evidence() -> None:
    d = progressing(make_policy(steps=[10, 100]))
    d.at(4 * MIN).verdict()  # passing before the controller went away
    d.at(6 * MIN).see(10)  # back: the hold is over, the old verdict is two minutes old
    assert d.phase() is Phase.PROGRESSING
    assert d.traffic() == [], "no promotion on a verdict from before the restart"
    d.verdict(Verdict.FAILED)  # the first evaluation after the restart
    assert d.phase() is Phase.ROLLING_BACK
    assert d.traffic() == [(0, "rollback")]


def test_a_stale_passing_verdict_does_not_pause_at_the_deadline_before_a_new_evaluation() -> None:
    d = progressing(make_policy(steps=[10, 100]))
    d.at(4 * MIN).verdict()  # passing during the hold; then the controller is away
    d.at(20 * MIN)  # back past maxStepDuration (15m): the passing verdict is 16m old
    assert d.phase() is Phase.PROGRESSING, d.state
    d.verdict()
    assert d.phase() is Phase.PROMOTING


def test_a_failed_verdict_from_an_earlier_step_still_rolls_back() -> None:
    d = progressing()
    d.at(5 * MIN).verdict().see(25)
    d.verdict(Verdict.FAILED, step=0)
    assert d.phase() is Phase.ROLLING_BACK


def test_no_data_never_promotes_and_pauses_at_the_step_deadline() -> None:
    d = progressing(make_policy(steps=[10, 100]))
    for minute in range(1, 15):
        d.at(minute * MIN).verdict(sufficient=False)
        assert d.traffic() == [], f"advanced on no data at minute {minute}"
    d.at(15 * MIN)  # maxStepDuration defaults to 3 x stepHold
    assert d.phase() is Phase.PAUSED
    assert d.state is not None
    assert "never promoting without evidence" in (d.state.pause_reason or "")


def test_evidence_arriving_after_the_hold_advances_at_once() -> None:
    d = progressing()
    d.at(7 * MIN)
    assert d.traffic() == []
    assert d.state is not None
    assert "passing analysis" in (d.state.waiting_for or "")
    d.verdict()
    assert d.traffic() == [(25, "step")]


# --- revision readiness -----------------------------------------------------------------


def test_revision_that_never_becomes_ready_is_rolled_back_at_the_timeout() -> None:
    d = Driver().start()
    d.see(10, ready=False)
    d.at(9 * MIN)
    assert d.phase() is Phase.PENDING
    d.at(10 * MIN)
    assert d.phase() is Phase.ROLLING_BACK
    assert d.events() == ["RevisionNotReady", "RollingBack"]
    assert d.traffic() == [(0, "rollback")]
    d.see(0, ready=False)
    assert d.phase() is Phase.ROLLED_BACK


def test_failed_revision_is_rolled_back_without_waiting_for_the_timeout() -> None:
    d = Driver().start()
    d.see(10, ready=False, failed=True)
    assert d.phase() is Phase.ROLLING_BACK
    assert d.state is not None
    assert "container exited" in (d.state.rollback_reason or "")


# --- supersede --------------------------------------------------------------------------


def test_newer_revision_mid_canary_supersedes_and_restarts_at_first_step() -> None:
    d = progressing()
    d.at(5 * MIN).verdict().see(25)
    d.see(25, latest="r3", ready=False, share=0)
    assert d.phase() is Phase.SUPERSEDED
    assert d.events() == ["Superseded"]
    assert d.traffic() == [], "the old rollout writes nothing; the new one sets step 1"

    new_state, actions = machine.start(
        "ro-2", "fraud", "scorer", view(25, latest="r3", ready=False, share=0), d.policy, d.now
    )
    assert new_state.phase is Phase.PENDING
    assert new_state.canary.name == "r3"
    assert d.traffic(actions) == [(10, "start")]


def test_supersede_while_shadowing_removes_the_mirror() -> None:
    d = reach(Phase.SHADOWING)
    d.see(0, latest="r3")
    assert d.phase() is Phase.SUPERSEDED
    assert d.mirrors() == [0]


# --- approvals --------------------------------------------------------------------------


def test_approval_requested_before_gated_step_then_promotes_when_approved() -> None:
    d = reach(Phase.AWAITING_APPROVAL)
    requests = [a for a in d.actions if isinstance(a, RequestApproval)]
    assert len(requests) == 1
    assert requests[0].percent == 100
    assert requests[0].deadline == d.now + timedelta(hours=8)
    assert d.traffic() == []
    d.at(6 * MIN).decide(approved=True)
    assert d.phase() is Phase.PROGRESSING, "an approval does not stand in for fresh evidence"
    assert d.traffic() == []
    d.verdict()
    assert d.phase() is Phase.PROMOTING
    assert d.traffic() == [(100, "promote")]
    d.apply(ServiceObserved(promoted_view()))
    closes = [a for a in d.actions if isinstance(a, CloseChange)]
    assert [(c.change_number, c.close_code) for c in closes] == [("CHG0001", "successful")]


def test_the_opened_change_is_remembered_and_cancelled_if_superseded() -> None:
    d = reach(Phase.AWAITING_APPROVAL)
    d.apply(ChangeOpened("r2", "CHG0042", d.now))
    assert d.audits() == ["approval.change_opened"]
    assert d.state is not None
    assert d.state.approval is not None
    assert d.state.approval.change_number == "CHG0042"
    d.see(10, latest="r3", ready=False, share=0)
    assert d.phase() is Phase.SUPERSEDED
    closes = [(a.change_number, a.close_code) for a in d.actions if isinstance(a, CloseChange)]
    assert closes == [("CHG0042", "cancelled")]


def test_resuming_a_step_whose_split_never_showed_gets_a_fresh_traffic_timeout() -> None:
    d = progressing()
    d.at(5 * MIN).verdict()  # 25 % written, status not there yet
    d.command(CommandKind.PAUSE, "hold on")
    d.at(60 * MIN).command(CommandKind.RESUME, "go on")
    assert d.phase() is Phase.PROGRESSING, "not rolled back for time spent paused"
    d.see(25)
    assert d.state is not None
    assert d.state.step_reached_at == d.now


def test_rejected_approval_rolls_back_and_closes_the_change_unsuccessful() -> None:
    d = reach(Phase.AWAITING_APPROVAL)
    d.decide(approved=False, approver="carol@bank")
    assert d.phase() is Phase.ROLLING_BACK
    assert d.audits()[0] == "approval.rejected"
    d.see(0)
    assert d.phase() is Phase.ROLLED_BACK
    closes = [a for a in d.actions if isinstance(a, CloseChange)]
    assert [c.close_code for c in closes] == ["unsuccessful"]


@pytest.mark.parametrize(
    ("on_expiry", "phase"),
    [("hold", Phase.PAUSED), ("rollback", Phase.ROLLING_BACK)],
)
def test_expired_approval_follows_the_policy(on_expiry: str, phase: Phase) -> None:
    policy = make_policy(steps=[10, 100], approval={**APPROVAL, "onExpiry": on_expiry})
    d = progressing(policy)
    d.at(5 * MIN).verdict()
    assert d.phase() is Phase.AWAITING_APPROVAL
    d.at(5 * MIN + timedelta(hours=8))
    assert d.phase() is phase
    assert "approval.expired" in d.audits()
    assert any(isinstance(a, CloseChange) and a.close_code == "cancelled" for a in d.actions)


def test_resume_after_expiry_requests_a_new_approval() -> None:
    d = progressing(make_policy(steps=[10, 100], approval=APPROVAL))
    d.at(5 * MIN).verdict().at(5 * MIN + timedelta(hours=8))
    assert d.phase() is Phase.PAUSED
    d.command(CommandKind.RESUME, "risk owner back from holiday")
    assert d.phase() is Phase.AWAITING_APPROVAL
    assert [a.kind for a in d.actions if isinstance(a, RequestApproval)] == ["request_approval"]


def test_approval_for_another_revision_is_ignored() -> None:
    d = reach(Phase.AWAITING_APPROVAL)
    assert d.state is not None
    from canary.model import ApprovalDecision

    d.apply(ApprovalDecision(True, "r9", "mallory", d.now))
    assert d.phase() is Phase.AWAITING_APPROVAL
    assert d.state.approval is not None
    assert d.state.approval.status == "pending"


def test_failed_analysis_while_awaiting_approval_rolls_back() -> None:
    d = reach(Phase.AWAITING_APPROVAL)
    d.verdict(Verdict.FAILED)
    assert d.phase() is Phase.ROLLING_BACK


# --- promotion windows ------------------------------------------------------------------


def test_window_closing_during_the_hold_defers_the_step_to_the_next_window() -> None:
    schedule = {
        "timezone": "Europe/London",
        "windows": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "10:05"}
        ],
    }
    d = progressing(make_policy(schedule=schedule))  # T0 is Monday 10:00 in London (UTC+0)
    d.at(5 * MIN).verdict()  # 10:05: the window has just closed (its end is exclusive)
    assert d.traffic() == []
    assert d.state is not None
    tuesday_nine = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert d.state.next_check_at == tuesday_nine
    d.at(timedelta(hours=3)).verdict()  # the analysis keeps running while it waits
    assert d.traffic() == []
    assert d.phase() is Phase.PROGRESSING, "passing evidence waits for the window, no pause"
    d.at(tuesday_nine - T0)
    assert d.traffic() == [], "Monday's verdict is too old to act on"
    d.verdict()
    assert d.traffic() == [(25, "step")]


def test_outside_the_window_the_rollout_waits_and_says_until_when() -> None:
    schedule = {"timezone": "UTC", "windows": [{"start": "12:00", "end": "13:00"}]}
    d = progressing(make_policy(schedule=schedule))
    d.at(5 * MIN).verdict()
    assert d.traffic() == []
    assert d.events() == ["WaitingForWindow"]
    assert d.state is not None
    assert d.state.next_check_at == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert "next opens 2026-11-23T12:00:00+00:00" in (d.state.waiting_for or "")
    d.at(timedelta(minutes=30)).verdict()
    assert d.events() == [], "the wait is announced once"
    d.at(timedelta(hours=2)).verdict()  # 12:00 UTC, with fresh evidence
    assert d.traffic() == [(25, "step")]


def test_freeze_blocks_advancing_but_never_a_rollback() -> None:
    schedule = {
        "freezes": [
            {"start": "2026-11-23T00:00:00Z", "end": "2026-11-24T00:00:00Z", "reason": "close"}
        ]
    }
    d = progressing(make_policy(schedule=schedule))
    d.at(5 * MIN).verdict()
    assert d.traffic() == []
    assert d.state is not None
    assert "change freeze (close)" in (d.state.waiting_for or "")
    d.verdict(Verdict.FAILED)
    assert d.traffic() == [(0, "rollback")]


def test_manual_promote_outside_the_window_is_refused() -> None:
    schedule = {"timezone": "UTC", "windows": [{"start": "12:00", "end": "13:00"}]}
    d = progressing(make_policy(schedule=schedule))
    d.command(CommandKind.PROMOTE, "urgent")
    assert d.phase() is Phase.PROGRESSING
    assert "not allowed now" in (d.rejection() or "")


# --- manual commands in every phase ----------------------------------------------------

ACCEPT = "accepted"
COMMAND_TABLE: dict[Phase, dict[CommandKind, tuple[str, Phase | str]]] = {
    Phase.PENDING: {
        CommandKind.PAUSE: (ACCEPT, Phase.PAUSED),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: ("rejected", "not ready"),
        CommandKind.ABORT: (ACCEPT, Phase.ROLLING_BACK),
    },
    Phase.SHADOWING: {
        CommandKind.PAUSE: (ACCEPT, Phase.PAUSED),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: ("rejected", "no live traffic"),
        # the canary serves 0 % while shadowing, so the rollback is complete at once
        CommandKind.ABORT: (ACCEPT, Phase.ABORTED),
    },
    Phase.PROGRESSING: {
        CommandKind.PAUSE: (ACCEPT, Phase.PAUSED),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: (ACCEPT, Phase.PROMOTING),
        CommandKind.ABORT: (ACCEPT, Phase.ROLLING_BACK),
    },
    Phase.PAUSED: {
        CommandKind.PAUSE: ("rejected", "already paused"),
        CommandKind.RESUME: (ACCEPT, Phase.PROGRESSING),
        CommandKind.PROMOTE: (ACCEPT, Phase.PROMOTING),
        CommandKind.ABORT: (ACCEPT, Phase.ROLLING_BACK),
    },
    Phase.AWAITING_APPROVAL: {
        CommandKind.PAUSE: (ACCEPT, Phase.PAUSED),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: ("rejected", "requires an approved change"),
        CommandKind.ABORT: (ACCEPT, Phase.ROLLING_BACK),
    },
    Phase.PROMOTING: {
        CommandKind.PAUSE: ("rejected", "cannot be paused"),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: ("rejected", "already promoting"),
        CommandKind.ABORT: ("rejected", "promotion has been written"),
    },
    Phase.ROLLING_BACK: {
        CommandKind.PAUSE: ("rejected", "cannot be paused"),
        CommandKind.RESUME: ("rejected", "not paused"),
        CommandKind.PROMOTE: ("rejected", "rollback is in progress"),
        CommandKind.ABORT: ("rejected", "already rolling back"),
    },
    **{
        terminal: dict.fromkeys(CommandKind, ("rejected", "already finished"))
        for terminal in TERMINAL_PHASES
    },
}


def test_command_table_covers_every_phase_and_command() -> None:
    assert set(COMMAND_TABLE) == set(Phase)
    assert all(set(row) == set(CommandKind) for row in COMMAND_TABLE.values())


@pytest.mark.parametrize(
    ("phase", "kind"),
    [(phase, kind) for phase in Phase for kind in CommandKind],
    ids=lambda v: str(v.value),
)
def test_manual_command_in_every_phase(phase: Phase, kind: CommandKind) -> None:
    d = reach(phase)
    before = d.state
    outcome, expected = COMMAND_TABLE[phase][kind]
    d.command(kind, "operator decision")
    if outcome == ACCEPT:
        assert d.phase() is expected
        assert f"manual.{kind.value}" in d.audits()
        assert d.rejection() is None
        if kind is CommandKind.ABORT:
            assert d.traffic() == [(0, "rollback")]
    else:
        assert d.state == before, "a refused command changes nothing"
        assert isinstance(expected, str)
        assert expected in (d.rejection() or ""), d.rejection()
        assert d.audits() == ["manual.rejected"]
        assert d.events() == ["CommandRejected"]
        assert d.traffic() == []


def test_a_command_without_a_reason_is_refused() -> None:
    d = progressing()
    d.command(CommandKind.PAUSE, "   ")
    assert d.phase() is Phase.PROGRESSING
    assert "reason is required" in (d.rejection() or "")


def test_abort_ends_in_aborted_with_the_actor_recorded() -> None:
    d = progressing().command(CommandKind.ABORT, "wrong model")
    d.see(0)
    assert d.phase() is Phase.ABORTED
    assert d.state is not None
    assert d.state.aborted_by == "bob@bank"
    assert "aborted by bob@bank: wrong model" in (d.state.outcome or "")


def test_manual_promote_requires_an_approved_change_under_an_approval_policy() -> None:
    d = progressing(make_policy(approval=APPROVAL))
    d.command(CommandKind.PROMOTE, "looks fine")
    assert "requires an approved change" in (d.rejection() or "")


# --- the rest of the phases -------------------------------------------------------------


def test_deleting_the_inference_service_stops_the_rollout() -> None:
    d = progressing().delete()
    assert d.phase() is Phase.FAILED
    assert d.events() == ["ServiceDeleted"]
    assert d.traffic() == []


@pytest.mark.parametrize("phase", sorted(TERMINAL_PHASES))
def test_terminal_phases_ignore_everything_but_report_commands(phase: Phase) -> None:
    d = reach(phase)
    before = d.state
    d.at(24 * 60 * MIN).see(100).verdict(Verdict.FAILED).delete()
    assert d.state == before
    assert d.actions == ()


def test_outside_change_to_the_percent_is_put_back() -> None:
    d = progressing()
    d.see(100, share=100)  # a GitOps sync cleared canaryTrafficPercent
    assert d.traffic() == [(10, "reassert")]
    assert d.events() == ["TrafficDrift"]
    d.see(100, share=100)
    assert d.traffic() == [], "reported once; the engine retries a failing write"


def test_stuck_promotion_is_written_again_never_abandoned() -> None:
    d = reach(Phase.PROMOTING)
    d.at(7 * MIN)
    assert d.traffic() == [(100, "promote")]
    assert d.phase() is Phase.PROMOTING
    d.at(9 * MIN)
    assert d.traffic() == [(100, "promote")]


def test_stuck_rollback_is_written_again() -> None:
    d = reach(Phase.ROLLING_BACK)
    d.at(3 * MIN)
    assert d.traffic() == [(0, "rollback")]
    assert d.phase() is Phase.ROLLING_BACK


def test_shadow_first_mirrors_then_starts_the_canary_after_a_passing_comparison() -> None:
    d = Driver(make_policy(shadow={"enabled": True, "duration": "10m"})).start(spec=10)
    assert d.traffic() == [(0, "start")], "while shadowing the canary gets no live traffic"
    d.see(0)
    assert d.phase() is Phase.SHADOWING
    assert d.mirrors() == [100]
    d.at(5 * MIN).verdict(step=machine.SHADOW_STEP)
    assert d.phase() is Phase.SHADOWING
    d.at(10 * MIN)
    assert d.phase() is Phase.PROGRESSING
    assert d.mirrors() == [0]
    assert d.traffic() == [(10, "start")]


def test_failed_shadow_comparison_rolls_back_and_removes_the_mirror() -> None:
    d = reach(Phase.SHADOWING)
    d.verdict(Verdict.FAILED, step=machine.SHADOW_STEP)
    assert d.phase() is Phase.ROLLED_BACK, "no live traffic to move: done at once"
    assert d.mirrors() == [0]


def shadowing(**shadow: Any) -> Driver:
    d = Driver(make_policy(shadow={"enabled": True, "duration": "10m", **shadow})).start(spec=0)
    d.see(0)
    assert d.phase() is Phase.SHADOWING
    return d


@pytest.mark.parametrize("after", ["gate", "report"])
def test_a_challenger_over_a_ceiling_stops_the_mirror_and_rolls_back_whatever_after_says(
    after: str,
) -> None:
    d = shadowing(after=after).at(MIN)
    d.verdict(Verdict.FAILED, step=machine.SHADOW_STEP, ceiling="error rate 0.4 > 0.2")
    assert d.mirrors() == [0]
    assert "ShadowStopped" in d.events()
    assert d.phase() is Phase.ROLLED_BACK
    assert d.traffic() == [(0, "rollback")], "a failing challenger never gets live traffic"


def test_a_reporting_shadow_records_a_failed_comparison_and_starts_the_canary() -> None:
    d = shadowing(after="report").at(3 * MIN)
    d.verdict(Verdict.FAILED, step=machine.SHADOW_STEP)
    assert d.mirrors() == [0]
    assert "shadow.reported" in d.audits()
    assert d.phase() is Phase.PROGRESSING
    assert d.traffic() == [(10, "start")], "the canary's own analysis now decides"


def test_a_gating_shadow_pauses_at_its_deadline_a_reporting_one_moves_on() -> None:
    gate = shadowing(timeout="25m")
    gate.at(5 * MIN).verdict(step=machine.SHADOW_STEP, sufficient=False)
    gate.at(24 * MIN)
    assert gate.phase() is Phase.SHADOWING
    gate.at(25 * MIN)
    assert gate.phase() is Phase.PAUSED
    assert gate.traffic() == []

    report = shadowing(timeout="25m", after="report")
    report.at(25 * MIN)
    assert report.phase() is Phase.PROGRESSING
    assert report.mirrors() == [0]
    assert report.traffic() == [(10, "start")]


def test_an_insufficient_comparison_never_ends_a_gating_shadow_early() -> None:
    d = shadowing()
    d.at(11 * MIN).verdict(step=machine.SHADOW_STEP, sufficient=False)
    assert d.phase() is Phase.SHADOWING
    assert d.traffic() == []


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (Phase.PENDING, T0 + timedelta(minutes=10)),
        (Phase.PROGRESSING, T0 + timedelta(minutes=5)),
        (Phase.PAUSED, None),
        (Phase.AWAITING_APPROVAL, T0 + timedelta(minutes=5, hours=8)),
        (Phase.PROMOTING, T0 + timedelta(minutes=7)),
        (Phase.ROLLING_BACK, T0 + timedelta(minutes=3)),
        (Phase.SUCCEEDED, None),
    ],
)
def test_next_check_is_the_next_moment_a_rule_can_fire(
    phase: Phase, expected: datetime | None
) -> None:
    d = reach(phase)
    assert d.state is not None
    assert d.state.next_check_at == expected


@pytest.mark.parametrize("phase", list(Phase))
def test_state_survives_a_round_trip_through_its_stored_document(phase: Phase) -> None:
    d = reach(phase)
    assert d.state is not None
    restored = RolloutState.from_document(d.state.to_document())
    assert restored == d.state
    # and the machine carries on identically from the restored state
    later = d.now + timedelta(minutes=3)
    assert machine.step(restored, Tick(), d.policy, later) == machine.step(
        d.state, Tick(), d.policy, later
    )


def test_every_refusal_and_decision_is_audited_with_its_actor() -> None:
    d = progressing()
    d.apply(ManualCommand(CommandKind.PAUSE, "dana@bank", "check dashboards"))
    from canary.model import RecordAudit

    audit = [a for a in d.actions if isinstance(a, RecordAudit)]
    assert [(a.action, a.actor, a.reason) for a in audit] == [
        ("manual.pause", "dana@bank", "check dashboards")
    ]


@pytest.mark.parametrize("spec", [0, 25])
def test_a_promotion_in_flight_is_not_mistaken_for_an_outside_change(spec: int) -> None:
    """Standard mode: the promotion removes the canary entry, so the spec commands nothing
    for the (former) canary any more; that is the promotion, not drift."""
    d = reach(Phase.PROMOTING)
    d.see(100, share=50)
    d.see(spec, share=50)
    assert d.traffic() == []
    assert "TrafficDrift" not in d.events()
    assert "traffic.drift" not in d.audits()


@pytest.mark.parametrize(
    ("spec", "routed", "written"),
    [
        (10, False, [(10, "start")]),  # a GitOps canary entry our route does not carry yet
        (10, True, []),  # the webhook's first step, already routed (Knative, or ours)
        (100, True, [(10, "start")]),
        (100, False, [(10, "start")]),
    ],
)
def test_start_writes_the_first_step_unless_spec_and_route_carry_it(
    spec: int, routed: bool, written: list[tuple[int, str]]
) -> None:
    seen = replace(view(spec), routed=routed)
    policy = make_policy()
    _, actions = machine.start("ro-1", "fraud", "scorer", seen, policy, T0)
    assert [(a.percent, a.purpose) for a in actions if isinstance(a, SetTraffic)] == written


@pytest.mark.parametrize(
    ("latest", "uri", "new_revision", "says"),
    [
        # Knative: the spec has the new model, the status still names the old revision
        ("r2", "s3://models/r3", None, "a new model (s3://models/r3) replaced canary r2"),
        ("r3", "s3://models/r3", "r3", "revision r3 replaced canary r2"),
    ],
)
def test_the_supersede_record_never_pairs_the_old_name_with_the_new_model(
    latest: str, uri: str, new_revision: str | None, says: str
) -> None:
    d = progressing()
    seen = replace(view(10), latest=Revision(latest, uri))
    d.apply(ServiceObserved(seen))
    assert d.phase() is Phase.SUPERSEDED
    (record,) = [a for a in d.actions if isinstance(a, RecordAudit)]
    details = dict(record.details)
    assert details.get("new_revision") == new_revision
    assert details["new_storage_uri"] == uri
    assert details["replaced_revision"] == "r2"
    assert details["replaced_storage_uri"] == "s3://models/r2"
    assert says in record.reason


@pytest.mark.parametrize(
    ("ready", "reason"),
    [(True, "TrafficNotConverged"), (False, "RevisionNotReady")],
)
def test_a_pending_timeout_names_what_did_not_happen(ready: bool, reason: str) -> None:
    d = Driver().start()
    d.see(10, ready=ready, converged=False, share=0)
    d.at(10 * MIN)
    assert d.phase() is Phase.ROLLING_BACK
    assert d.events() == [reason, "RollingBack"]


def test_audited_details_keep_their_types() -> None:
    """An auditor reads a percent as a number and a step as an index, not as text."""
    d = Driver().start(spec=0)
    started = [a for a in d.actions if isinstance(a, RecordAudit) and a.action == "rollout.started"]
    (record,) = started
    details = dict(record.details)
    assert details["first_percent"] == 10
    assert isinstance(details["first_percent"], int)
    assert isinstance(details["revision"], str)
    d = progressing()
    d.apply(ManualCommand(CommandKind.PAUSE, "dana@bank", "check dashboards"))
    (pause,) = [a for a in d.actions if isinstance(a, RecordAudit)]
    assert dict(pause.details)["step"] == 0
    assert dict(pause.details)["phase"] == "Progressing"  # an enum as its value


# --- challenger InferenceServices ---------------------------------------------------------


def see_challenger(d: Driver, **kwargs: Any) -> Driver:
    return d.apply(ServiceObserved(challenger_view(**kwargs)))


def never_wrote_traffic(d: Driver) -> bool:
    """A challenger's rollout never writes the champion's traffic, whatever happens."""
    return not any(isinstance(a, SetTraffic) for a in d.log)


def test_a_challenger_waits_for_its_revision_then_mirrors_without_touching_traffic() -> None:
    d = Driver(make_policy(shadow={"enabled": True, "mirrorPercent": 25})).start_challenger()
    assert d.phase() is Phase.PENDING
    assert d.audits() == ["shadow.challenger_detected"]
    see_challenger(d, ready=False)
    assert d.phase() is Phase.PENDING
    see_challenger(d)
    assert d.phase() is Phase.SHADOWING
    assert d.mirrors() == [25]
    assert never_wrote_traffic(d)


@pytest.mark.parametrize(
    ("after", "verdict", "phase", "record"),
    [
        ("gate", Verdict.SUCCESSFUL, Phase.SUCCEEDED, "shadow.passed"),
        ("gate", Verdict.FAILED, Phase.REJECTED, "shadow.rejected"),
        ("report", Verdict.SUCCESSFUL, Phase.REPORTED, "shadow.passed"),
        ("report", Verdict.FAILED, Phase.REPORTED, "shadow.reported"),
    ],
)
def test_a_challenger_comparison_ends_the_shadow_and_stops_the_mirror(
    after: str, verdict: Verdict, phase: Phase, record: str
) -> None:
    d = challenging(after=after).at(11 * MIN)
    d.verdict(verdict, step=machine.SHADOW_STEP, revision="c1")
    if verdict is Verdict.SUCCESSFUL:
        d.at(12 * MIN)
    assert d.phase() is phase
    assert record in [a.action for a in d.log if isinstance(a, RecordAudit)]
    assert 0 in [a.percent for a in d.log if isinstance(a, SetMirror)]
    assert never_wrote_traffic(d)


def test_a_challenger_over_a_ceiling_is_rejected_at_once() -> None:
    d = challenging(after="report").at(MIN)
    d.verdict(Verdict.FAILED, step=machine.SHADOW_STEP, revision="c1", ceiling="errors 50%")
    assert d.phase() is Phase.REJECTED
    assert "ShadowStopped" in d.events()
    assert d.mirrors() == [0]
    assert never_wrote_traffic(d)


@pytest.mark.parametrize(
    ("change", "phase"),
    [
        ("challenger-new-model", Phase.SUPERSEDED),
        ("champion-new-model", Phase.SUPERSEDED),
        ("challenger-gone", Phase.FAILED),
        ("champion-deleted", Phase.FAILED),
        ("abort", Phase.ABORTED),
        ("opt-out", Phase.OPTED_OUT),
        ("not-ready-in-time", Phase.REJECTED),
    ],
)
def test_a_challenger_shadow_that_cannot_go_on_ends_without_a_traffic_write(
    change: str, phase: Phase
) -> None:
    d = (
        challenging()
        if change != "not-ready-in-time"
        else Driver(make_policy(shadow={"enabled": True})).start_challenger()
    )
    if change == "challenger-new-model":
        see_challenger(d, revision="c2")
    elif change == "champion-new-model":
        d.see(10, latest="r2")
    elif change == "challenger-gone":
        d.apply(ChallengerGone("its InferenceService was deleted"))
    elif change == "champion-deleted":
        d.delete()
    elif change == "abort":
        d.command(CommandKind.ABORT, "wrong model")
    elif change == "opt-out":
        d.opt_out()
    else:
        d.at(11 * MIN)
    assert d.phase() is phase
    if change != "not-ready-in-time":
        assert 0 in [a.percent for a in d.log if isinstance(a, SetMirror)]
    assert never_wrote_traffic(d)


def test_a_challenger_cannot_be_promoted_by_hand() -> None:
    d = challenging()
    d.command(CommandKind.PROMOTE, "looks fine")
    assert d.phase() is Phase.SHADOWING
    assert any("only through the canary" in a.reason for a in d.actions if hasattr(a, "reason"))
    assert never_wrote_traffic(d)


def test_a_model_that_passed_its_shadow_starts_its_canary_without_shadowing_again() -> None:
    policy = make_policy(shadow={"enabled": True})
    state, actions = machine.start(
        "ro-2", "fraud", "scorer", view(0), policy, T0, shadowed_by="ro-1"
    )
    assert state.shadowed_by == "ro-1"
    assert [(a.percent, a.purpose) for a in actions if isinstance(a, SetTraffic)] == [(10, "start")]
    state, actions = machine.step(state, ServiceObserved(view(10)), policy, T0 + MIN)
    assert state.phase is Phase.PROGRESSING
    assert not any(isinstance(a, SetMirror) for a in actions)
