"""A traffic write the apiserver refuses for good (422 Invalid and its kin), as the pure state
machine handles it: the rollout pauses with the traffic where it stands, nothing is
written until an operator resumes (which sends the refused write again), and a refused
rollback is reported but never given up."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from canary.model import (
    CommandKind,
    Phase,
    RecordAudit,
    RolloutState,
    WriteRejected,
)
from tests.unit.rollout_driver import Driver, progressing, reach

MIN = timedelta(minutes=1)
MESSAGE = (
    'InferenceService.serving.kserve.io "scorer" is invalid: spec.predictor.'
    "canaryTrafficPercent: Invalid value: 25: must be a multiple of 10"
)


def refused(percent: int, purpose: str, revision: str = "r2", status: int = 422) -> WriteRejected:
    return WriteRejected(
        revision, percent, purpose, status, "Invalid", MESSAGE,  # type: ignore[arg-type]
        ("spec.predictor.canaryTrafficPercent: Invalid value: 25",),
    )  # fmt: skip


def first_step_written() -> Driver:
    d = Driver().start(spec=0)  # the model changed without a percent: the start is written
    assert d.traffic() == [(10, "start")]
    return d


def next_step_written() -> Driver:
    d = progressing()
    d.at(5 * MIN).verdict()
    assert d.traffic() == [(25, "step")]
    return d


def promotion_written() -> Driver:
    d = reach(Phase.PROMOTING)
    assert d.traffic() == [(100, "promote")]
    return d


def reassertion_written() -> Driver:
    d = progressing()
    d.see(100, share=100)  # someone cleared the percent
    assert d.traffic() == [(10, "reassert")]
    return d


@pytest.mark.parametrize(
    ("reach_it", "percent", "purpose", "paused_from", "in_force", "resumed_phase"),
    [
        pytest.param(first_step_written, 10, "start", Phase.PENDING, 0, Phase.PENDING, id="start"),
        pytest.param(
            next_step_written, 25, "step", Phase.PROGRESSING, 10, Phase.PROGRESSING, id="step"
        ),
        pytest.param(
            promotion_written, 100, "promote", Phase.PROMOTING, 10, Phase.PROMOTING, id="promote"
        ),
        pytest.param(
            reassertion_written,
            10,
            "reassert",
            Phase.PROGRESSING,
            100,
            Phase.PROGRESSING,
            id="reassert",
        ),
    ],
)
def test_a_refused_write_pauses_with_the_traffic_in_force_and_resume_sends_it_again(
    reach_it: Callable[[], Driver],
    percent: int,
    purpose: str,
    paused_from: Phase,
    in_force: int,
    resumed_phase: Phase,
) -> None:
    d = reach_it()
    d.apply(refused(percent, purpose))
    state = d.state
    assert state is not None
    assert d.phase() is Phase.PAUSED
    assert state.paused_from is paused_from
    assert d.traffic() == [], "nothing is written again on its own"
    assert d.events() == ["TrafficWriteRejected"]
    (event,) = [a for a in d.actions if not isinstance(a, RecordAudit)]
    assert MESSAGE in getattr(event, "message", "")
    assert d.audits() == ["rollout.paused"]
    assert MESSAGE in (state.pause_reason or "")
    assert "422 Invalid" in (state.waiting_for or "")
    assert state.target_percent == in_force, "the weight shown is the one the cluster has"
    assert state.rejected_write is not None
    assert (state.rejected_write.percent, state.rejected_write.purpose) == (percent, purpose)
    assert state.next_check_at is None, "a paused rollout waits for a human"

    d.at(90 * MIN)
    assert (d.phase(), d.traffic()) == (Phase.PAUSED, [])

    d.command(CommandKind.RESUME, "webhook fixed, OPS-7")
    assert d.phase() is resumed_phase
    assert d.traffic() == [(percent, purpose)], "resume sends the refused write again"
    assert d.state is not None
    assert d.state.rejected_write is None
    assert d.state.target_percent == percent
    assert "traffic.retry" in d.audits()


@pytest.mark.parametrize("status", [400, 403, 404, 405, 413, 422])
def test_every_refusal_for_good_pauses_alike(status: int) -> None:
    d = next_step_written().apply(refused(25, "step", status=status))
    assert d.phase() is Phase.PAUSED
    assert d.state is not None
    assert d.state.rejected_write is not None
    assert d.state.rejected_write.status == status


@pytest.mark.parametrize(
    "reach_it",
    [
        pytest.param(lambda: reach(Phase.ROLLING_BACK), id="rolling-back"),
        pytest.param(lambda: reach(Phase.OPTED_OUT), id="opt-out-revert-after-the-end"),
        pytest.param(lambda: reach(Phase.DRIFT_REVERTED), id="drift-revert-after-the-end"),
    ],
)
def test_a_refused_rollback_is_reported_and_never_given_up(reach_it: Callable[[], Driver]) -> None:
    d = reach_it()
    before = d.phase()
    d.apply(refused(0, "rollback"))
    assert d.phase() is before, "a rollback is never paused nor abandoned"
    assert d.events() == ["TrafficWriteRejected"]
    assert d.audits() == ["traffic.rejected"]
    (record,) = [a for a in d.actions if isinstance(a, RecordAudit)]
    details = dict(record.details)
    assert (details["status"], details["api_reason"]) == (422, "Invalid")
    assert details["api_message"] == MESSAGE
    assert "retrying" in record.reason
    assert d.traffic() == [], "the engine keeps the rollback pending and retries it"


def test_while_paused_on_a_refusal_an_outside_change_is_recorded_not_reasserted() -> None:
    d = next_step_written().apply(refused(25, "step"))
    d.see(50, share=50)  # someone edits the percent while the rollout waits for a human
    assert d.traffic() == [], "nothing is written until an operator resumes"
    assert d.audits() == ["traffic.drift"]
    assert d.events() == ["TrafficDrift"]
    assert d.state is not None
    assert d.state.target_percent == 50


def test_abort_while_paused_on_a_refusal_rolls_back_and_forgets_the_refused_write() -> None:
    d = promotion_written().apply(refused(100, "promote"))
    d.command(CommandKind.ABORT, "giving up on this model")
    assert d.phase() is Phase.ROLLING_BACK
    assert d.traffic() == [(0, "rollback")]
    assert d.state is not None
    assert d.state.rejected_write is None


def test_a_refusal_of_a_write_for_another_revision_changes_nothing() -> None:
    d = next_step_written()
    d.apply(refused(25, "step", revision="r9"))
    assert d.phase() is Phase.PROGRESSING
    assert d.actions == ()
    assert d.state is not None
    assert d.state.rejected_write is None


def test_the_pause_and_its_reason_survive_a_restart() -> None:
    d = promotion_written().apply(refused(100, "promote"))
    assert d.state is not None
    stored = RolloutState.from_document(d.state.to_document())
    assert stored == d.state
    assert stored.rejected_write is not None
    assert stored.rejected_write.message == MESSAGE
    d.state = stored
    d.see(10)  # the controller restarted and looks at the service again
    assert (d.phase(), d.traffic()) == (Phase.PAUSED, [])
    d.command(CommandKind.RESUME, "fixed")
    assert d.traffic() == [(100, "promote")]
    d.see(10)
    assert d.phase() is Phase.PROMOTING, "the old split is a promotion on its way, not a drift"
    assert d.traffic() == []
