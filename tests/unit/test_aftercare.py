"""After a rollout ends (canary/aftercare.py) and opting out mid-rollout, decision by
decision: what is recorded, which Event is emitted, which traffic write is asked for."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import pytest

from canary import aftercare
from canary.aftercare import Identity, field_manager, opted_out, watching
from canary.model import (
    ACTIVE_PHASES,
    EmitEvent,
    OptedOut,
    Phase,
    RecordAudit,
    Revision,
    TrafficView,
)
from tests.unit.rollout_driver import HAND, Driver, make_policy, reach, view

AFTER_ROLLBACK = (Phase.ROLLED_BACK, Phase.ABORTED)
UNKNOWN = Identity()


def audit(d: Driver, action: str) -> RecordAudit:
    (found,) = [a for a in d.actions if isinstance(a, RecordAudit) and a.action == action]
    return found


def warning_events(d: Driver) -> list[str]:
    return [a.reason.value for a in d.actions if isinstance(a, EmitEvent) and a.type == "Warning"]


def rolled_back(phase: Phase, after_rollback: str = "revert") -> Driver:
    d = reach(phase)
    d.policy = make_policy(afterRollback=after_rollback)
    return d


def standard_view(
    *, canary: str | None, uri: str = "s3://models/r2", spec: int = 10
) -> TrafficView:
    """Standard mode: the stable predictor r1, and a canary entry when ``canary`` is set."""
    stable = Revision("r1", "s3://models/r1")
    if canary is None:
        return TrafficView(stable, stable, {"r1": 100}, 0, True, True)
    return TrafficView(Revision(canary, uri), stable, {"r1": 100}, spec, False, True)


# --- after a rollback: traffic reaching the rolled-back revision ----------------------------

DRIFTS = [
    pytest.param(view(100), "knative", 100, id="knative-percent-cleared-by-hand"),
    pytest.param(view(30, converged=False), "knative", 30, id="knative-percent-set-to-30"),
    pytest.param(view(1, converged=False), "knative", 1, id="knative-percent-set-to-1"),
    pytest.param(view(0, share=10), "knative", 10, id="knative-status-shows-it-serving"),
    pytest.param(standard_view(canary="r2"), "standard", 10, id="standard-entry-re-added"),
    pytest.param(
        standard_view(canary="r2", spec=0), "standard", 0, id="standard-entry-at-0-is-no-drift"
    ),
]


@pytest.mark.parametrize("phase", AFTER_ROLLBACK, ids=lambda p: p.value)
@pytest.mark.parametrize(("seen", "mode", "share"), DRIFTS)
@pytest.mark.parametrize("policy", ["revert", "record"])
def test_traffic_reaching_a_rolled_back_revision(
    phase: Phase, seen: TrafficView, mode: str, share: int, policy: str
) -> None:
    d = rolled_back(phase, policy).watch(seen, mode=mode)
    if share == 0:
        assert d.actions == ()
        assert d.phase() is phase
        return
    record = audit(d, "traffic.drift")
    details = dict(record.details)
    assert (record.actor, record.actor_kind) == ("kubectl-edit", "human")
    assert details["observed"] == share
    assert details["revision"] == "r2"
    assert details["post_rollout"] is True
    assert details["identity_source"] == "metadata.managedFields"
    assert warning_events(d) == ["TrafficDrift"]
    (event,) = [a for a in d.actions if isinstance(a, EmitEvent)]
    assert "kubectl-edit" in event.message
    assert f"{share}%" in event.message
    if policy == "revert":
        assert d.traffic() == [(0, "rollback")]
        assert d.phase() is Phase.DRIFT_REVERTED
        assert d.state is not None
        assert "reverted to 0%" in (d.state.outcome or "")
    else:
        assert d.traffic() == []
        assert d.phase() is Phase.DRIFT_RECORDED
        assert d.state is not None
        assert "recorded, not reverted" in (d.state.outcome or "")
    assert d.state is not None
    assert d.state.terminal
    assert d.state.rollback_reason  # the original reason is kept


NO_DRIFT = [
    pytest.param(view(0, share=0), "knative", id="knative-still-at-0"),
    pytest.param(view(0, share=100, converged=False), "knative", id="knative-status-lagging"),
    pytest.param(view(10, latest="r3"), "knative", id="knative-a-new-revision"),
    pytest.param(view(0, share=0, latest="r2", stable="r2"), "knative", id="knative-falling-back"),
    pytest.param(view(100, latest="r3", stable="r3"), "knative", id="knative-new-model-out"),
    pytest.param(standard_view(canary=None), "standard", id="standard-no-canary"),
    pytest.param(
        standard_view(canary="r2", uri="s3://models/r9"), "standard", id="standard-new-model"
    ),
]


@pytest.mark.parametrize("phase", AFTER_ROLLBACK, ids=lambda p: p.value)
@pytest.mark.parametrize(("seen", "mode"), NO_DRIFT)
def test_no_drift_no_record(phase: Phase, seen: TrafficView, mode: str) -> None:
    d = rolled_back(phase).watch(seen, mode=mode)
    assert d.actions == ()
    assert d.phase() is phase


def test_a_revert_is_asked_once_and_a_later_drift_again() -> None:
    d = rolled_back(Phase.ROLLED_BACK).watch(view(100))
    assert d.traffic() == [(0, "rollback")]
    d.watch(view(0, share=100, converged=False))  # our revert written, status lagging
    assert d.actions == ()
    d.watch(view(0, share=0))
    assert d.actions == ()
    d.watch(view(50, converged=False))  # someone does it again
    assert d.traffic() == [(0, "rollback")]
    assert d.audits() == ["traffic.drift"]
    assert d.phase() is Phase.DRIFT_REVERTED


def test_record_only_records_each_change_once() -> None:
    d = rolled_back(Phase.ROLLED_BACK, "record").watch(view(100))
    assert d.audits() == ["traffic.drift"]
    d.watch(view(100))
    assert d.actions == ()
    d.watch(view(40, converged=False))
    assert d.audits() == ["traffic.drift"]
    assert dict(audit(d, "traffic.drift").details)["observed"] == 40
    d.watch(view(0, share=0))
    assert d.audits() == ["traffic.drift"]
    assert "back to 0%" in audit(d, "traffic.drift").reason
    assert d.traffic() == []
    d.watch(view(0, share=0))
    assert d.actions == ()


def test_a_drift_nobody_owns_is_recorded_as_unknown() -> None:
    """A removed canaryTrafficPercent belongs to no field manager."""
    d = rolled_back(Phase.ROLLED_BACK).watch(view(100), who=UNKNOWN)
    record = audit(d, "traffic.drift")
    assert (record.actor, record.actor_kind) == ("unknown", "unknown")
    assert dict(record.details)["identity_source"] == "none"
    assert d.traffic() == [(0, "rollback")]


# --- after a promotion: rolled back by hand ------------------------------------------------


@pytest.mark.parametrize("percent", [0, 1, 30, 99])
def test_a_hand_rollback_after_a_promotion_is_recorded_with_its_manager(percent: int) -> None:
    d = reach(Phase.SUCCEEDED).watch(view(percent, latest="r2", stable="r2"))
    record = audit(d, "traffic.manual_rollback")
    assert (record.actor, record.actor_kind) == ("kubectl-edit", "human")
    assert dict(record.details)["percent"] == percent
    assert warning_events(d) == ["ManualRollback"]
    assert d.traffic() == []  # a human's rollback to the previous release is not undone
    assert d.phase() is Phase.MANUALLY_ROLLED_BACK
    assert d.state is not None
    assert "rolled back by hand" in (d.state.outcome or "")
    assert "kubectl-edit" in (d.state.outcome or "")


def test_after_a_hand_rollback_the_fall_back_and_a_restore_are_seen() -> None:
    d = reach(Phase.SUCCEEDED).watch(view(0, latest="r2", stable="r2"))
    d.watch(view(0, share=0, latest="r2", stable="r1"))  # KServe falls back to r1
    assert d.actions == ()
    d.watch(view(100, latest="r2", stable="r2"))
    assert d.audits() == ["traffic.manual_restore"]
    assert d.phase() is Phase.SUCCEEDED


@pytest.mark.parametrize(
    "seen",
    [
        pytest.param(view(100, latest="r2", stable="r2"), id="still-100"),
        pytest.param(view(10, latest="r3", stable="r2"), id="a-new-revision"),
    ],
)
def test_a_promoted_service_left_alone_is_not_recorded(seen: TrafficView) -> None:
    d = reach(Phase.SUCCEEDED).watch(seen)
    assert d.actions == ()
    assert d.phase() is Phase.SUCCEEDED


def test_standard_a_stable_model_replaced_by_hand_after_a_promotion() -> None:
    d = reach(Phase.SUCCEEDED)
    assert d.state is not None
    promoted = Revision("r2", "s3://models/r2")
    d.state = replace(d.state, canary=promoted)
    d.watch(TrafficView(promoted, promoted, {"r2": 100}, 0, True, True), mode="standard")
    assert d.actions == ()
    old = Revision("r2", "s3://models/r1")  # the predictor keeps its name, the model changed
    d.watch(TrafficView(old, old, {"r2": 100}, 0, True, True), mode="standard")
    assert d.audits() == ["traffic.manual_rollback"]
    assert "s3://models/r1" in audit(d, "traffic.manual_rollback").reason
    canary = Revision("r2-canary", "s3://models/r3")
    d2 = reach(Phase.SUCCEEDED)
    d2.state = replace(d2.state or d.state, canary=promoted)
    d2.watch(TrafficView(canary, promoted, {"r2": 100}, 10, False, True), mode="standard")
    assert d2.actions == ()  # a new canary entry is a new rollout's business


@pytest.mark.parametrize(
    "phase", [Phase.FAILED, Phase.SUPERSEDED, Phase.OPTED_OUT], ids=lambda p: p.value
)
def test_other_finished_phases_are_not_watched(phase: Phase) -> None:
    d = reach(phase).watch(view(100))
    assert d.actions == ()


# --- opt-out mid-rollout -------------------------------------------------------------------

ACTIVE = sorted(ACTIVE_PHASES, key=lambda p: p.value)


@pytest.mark.parametrize("phase", ACTIVE, ids=lambda p: p.value)
@pytest.mark.parametrize("policy", ["return-to-stable", "leave"])
def test_opt_out_in_every_active_phase(phase: Phase, policy: str) -> None:
    d = reach(phase)
    d.policy = make_policy(**{**d.policy.model_dump(by_alias=True), "onOptOut": policy})
    assert d.state is not None
    held = d.state.target_percent
    d.opt_out("kubectl-annotate")
    assert d.phase() is Phase.OPTED_OUT
    assert d.state.terminal
    assert d.audits()[0] == "manual.opt_out"
    assert "rollout.opted_out" in d.audits()
    owner = audit(d, "manual.opt_out")
    assert (owner.actor, owner.actor_kind) == ("kubectl-annotate", "human")
    assert dict(owner.details)["phase"] == phase.value
    assert "OptedOut" in warning_events(d)
    if policy == "return-to-stable" and phase is not Phase.ROLLING_BACK:
        assert d.traffic() == [(0, "rollback")]
        assert d.state.target_percent == 0
    else:
        assert d.traffic() == []  # left as it stands (or the rollback already written)
        assert d.state.target_percent == held
    if phase is Phase.SHADOWING:
        assert d.mirrors() == [0]
    assert "opted out by kubectl-annotate" in (d.state.outcome or "")
    d.see(50)  # no longer managed: a later change is not reasserted
    assert d.actions == ()


def test_opt_out_after_the_rollout_ended_changes_nothing() -> None:
    d = reach(Phase.ROLLED_BACK).opt_out()
    assert d.actions == ()
    assert d.phase() is Phase.ROLLED_BACK


# --- reading the cluster: opt-out and managedFields ----------------------------------------


def isvc(annotations: dict[str, str] | None, managed: list[dict[str, Any]] | None = None) -> Any:
    meta: dict[str, Any] = {"name": "scorer", "namespace": "fraud"}
    if annotations is not None:
        meta["annotations"] = annotations
    if managed is not None:
        meta["managedFields"] = managed
    return {"metadata": meta}


def entry(manager: str, time: str, fields: dict[str, Any], operation: str = "Update") -> Any:
    return {"manager": manager, "operation": operation, "time": time, "fieldsV1": fields}


PERCENT: dict[str, Any] = {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}}
MODEL: dict[str, Any] = {"f:spec": {"f:predictor": {"f:model": {"f:storageUri": {}}}}}
CANARY: dict[str, Any] = {"f:spec": {"f:canary": {}}}
ENABLED: dict[str, Any] = {"f:metadata": {"f:annotations": {"f:kserve-canary.io/enabled": {}}}}


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, True),
        ({}, True),
        ({"other": "x"}, True),
        ({"kserve-canary.io/enabled": "false"}, True),
        ({"kserve-canary.io/enabled": "true"}, False),
        ({"kserve-canary.io/enabled": "yes"}, False),  # not a boolean: not an opt-out
        ({"kserve-canary.io/enabled": "False"}, False),
    ],
)
def test_what_counts_as_an_opt_out(annotations: dict[str, str] | None, expected: bool) -> None:
    active = reach(Phase.PROGRESSING).state
    assert active is not None
    assert (opted_out(isvc(annotations), active) is not None) is expected
    finished = reach(Phase.ROLLED_BACK).state
    assert finished is not None
    assert opted_out(isvc(annotations), finished) is None
    assert watching(isvc(annotations), finished) is (
        annotations == {"kserve-canary.io/enabled": "true"}
    )


def test_the_opt_out_names_the_manager_of_the_annotation() -> None:
    obj = isvc(
        {"kserve-canary.io/enabled": "false"},
        [
            entry("kubectl-client-side-apply", "2026-11-23T09:00:00Z", ENABLED),
            entry("argocd-controller", "2026-11-23T10:05:00Z", ENABLED),
            entry("kserve-canary", "2026-11-23T10:06:00Z", PERCENT),
        ],
    )
    state = reach(Phase.PROGRESSING).state
    assert state is not None
    assert opted_out(obj, state) == OptedOut("argocd-controller", "human")
    assert opted_out(isvc({}), state) == OptedOut("unknown", "unknown")


@pytest.mark.parametrize(
    ("managed", "mode", "expected"),
    [
        ([], "knative", None),
        ([entry("alice", "2026-11-23T10:00:00Z", MODEL)], "knative", None),
        ([entry("alice", "2026-11-23T10:00:00Z", PERCENT)], "knative", "alice"),
        (
            [
                entry("kserve-canary", "2026-11-23T10:00:00Z", PERCENT),
                entry("kubectl-edit", "2026-11-23T10:01:00Z", PERCENT),
                entry("bob", "2026-11-23T10:02:00Z", MODEL),
            ],
            "knative",
            "kubectl-edit",
        ),
        (
            [
                entry("kubectl-edit", "2026-11-23T10:01:00Z", PERCENT),
                entry("kserve-canary", "2026-11-23T10:03:00Z", PERCENT),
            ],
            "knative",
            "kserve-canary",
        ),
        ([entry("argocd", "2026-11-23T10:00:00Z", CANARY)], "standard", "argocd"),
        ([entry("alice", "2026-11-23T10:00:00Z", MODEL)], "standard", "alice"),
        ([entry("alice", "2026-11-23T10:00:00Z", PERCENT)], "standard", None),
        ([{"manager": "", "time": "2026-11-23T10:00:00Z", "fieldsV1": PERCENT}], "knative", None),
        ([{"manager": "x", "time": "2026-11-23T10:00:00Z", "fieldsV1": "junk"}], "knative", None),
    ],
)
def test_field_manager_is_the_newest_owner_of_the_traffic_field(
    managed: list[dict[str, Any]], mode: str, expected: str | None
) -> None:
    mode_: Literal["knative", "standard"] = "knative" if mode == "knative" else "standard"
    found = field_manager(isvc({}, managed), aftercare.traffic_fields(mode_))
    assert found.manager == expected
    assert found.actor == (expected or "unknown")
    assert found.kind == ("human" if expected else "unknown")


def test_watch_needs_an_aware_clock() -> None:
    d = reach(Phase.ROLLED_BACK)
    assert d.state is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        aftercare.watch(d.state, view(100), d.policy, "knative", HAND, d.now.replace(tzinfo=None))


def test_an_opt_out_that_minted_a_revision_returns_the_newest_one_to_0() -> None:
    """Knative: the annotation change itself made a new revision (r3, still the canary's
    model) that inherits the canary's percent; the return to stable zeroes the newest."""
    d = reach(Phase.PROGRESSING)
    d.apply(OptedOut("kubectl-annotate", "human", latest="r3"))
    assert d.traffic() == [(0, "rollback")]
    (write,) = [a for a in d.actions if a.kind == "set_traffic"]
    assert getattr(write, "revision", None) == "r3"
    assert "r3 returned to 0%" in audit(d, "manual.opt_out").reason


@pytest.mark.parametrize(
    ("phase", "mode", "purpose", "aimed"),
    [
        (Phase.OPTED_OUT, "knative", "rollback", "r3"),
        (Phase.OPTED_OUT, "standard", "rollback", "r2"),  # another entry is not ours to drop
        (Phase.OPTED_OUT, "knative", "step", "r2"),
        (Phase.ROLLING_BACK, "knative", "rollback", "r2"),
        (Phase.DRIFT_REVERTED, "knative", "rollback", "r2"),
    ],
)
def test_only_an_opt_outs_knative_return_to_stable_is_aimed_at_the_newest(
    phase: Phase, mode: str, purpose: str, aimed: str
) -> None:
    state = reach(Phase.PROGRESSING).state
    assert state is not None
    state = replace(state, phase=phase)
    assert aftercare.retarget(state, mode, "r2", purpose, "r3") == aimed
    assert aftercare.retarget(state, mode, "r2", purpose, "r2") == "r2"
