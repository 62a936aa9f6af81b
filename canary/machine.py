"""The rollout state machine. Pure: no I/O, no clock of its own.

``step(state, observation, policy, now) -> (state, actions)`` owns every rule of a
rollout. The engine feeds it what it observed (the InferenceService, analysis verdicts,
verified approval decisions, manual commands, or just the passing of time), audits the
intent of every action it returns, carries the actions out, and persists the new state.

Rules that shape everything below:
* An unanalysed revision never gets more than the first step (or 0 % while shadowing).
* A step counts as reached only when the observed status shows the commanded split.
* A step advances only after its hold time, on a Successful verdict with sufficient data
  taken while the step was in force, inside a promotion window, and with any required
  approval granted. No data never promotes.
* A Failed verdict rolls back from any live phase, whatever the schedule says.
* A newer revision supersedes the rollout; the engine then starts a new one at step 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from canary.model import (
    Action,
    AnalysisVerdict,
    ApprovalDecision,
    ApprovalState,
    ChallengerGone,
    ChangeOpened,
    CloseChange,
    CommandKind,
    EmitEvent,
    EventReason,
    LastVerdict,
    ManualCommand,
    Observation,
    OptedOut,
    Phase,
    RecordAudit,
    RejectCommand,
    RejectedWrite,
    RequestApproval,
    RolloutState,
    ServiceDeleted,
    ServiceObserved,
    SetMirror,
    SetTraffic,
    TrafficView,
    Verdict,
    WriteRejected,
    audit_details,
)
from canary.policy import RolloutPolicy, format_duration

__all__ = ["SHADOW_STEP", "Transition", "start", "start_challenger", "step"]

Transition = tuple[RolloutState, tuple[Action, ...]]

SHADOW_STEP = -1  # the step index analysis uses for the shadow comparison

_LIVE = frozenset({Phase.SHADOWING, Phase.PROGRESSING, Phase.AWAITING_APPROVAL, Phase.PAUSED})
_PAUSABLE = frozenset({Phase.PENDING, Phase.SHADOWING, Phase.PROGRESSING, Phase.AWAITING_APPROVAL})
_ABORTABLE = _PAUSABLE | {Phase.PAUSED}


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the state machine needs a timezone-aware 'now'")


def _check_named(view: TrafficView) -> None:
    """A canary is a revision KServe has named: a nameless one would be superseded by the
    name its status gives it next, a rollout begun and ended for nothing."""
    if not view.latest.name:
        raise ValueError(
            "the new revision has no name yet (KServe's status does not name it): a rollout "
            "waits for it"
        )


def _audit(action: str, reason: str, actor: str = "controller", **details: object) -> RecordAudit:
    return _audit_with(action, reason, actor, details)


def _audit_with(action: str, reason: str, actor: str, details: Mapping[str, object]) -> RecordAudit:
    return RecordAudit(
        action=action,
        reason=reason,
        actor=actor,
        details=audit_details(details),
    )


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def start(
    rollout_id: str,
    namespace: str,
    name: str,
    view: TrafficView,
    policy: RolloutPolicy,
    now: datetime,
    *,
    shadowed_by: str | None = None,
) -> Transition:
    """Begin a rollout of ``view.latest`` against ``view.stable``.

    ``shadowed_by``: the challenger rollout whose passing shadow comparison this model
    already had; the rollout then starts at the first step without shadowing again.

    The first target is the first step, or 0 % when the policy shadows first. If the spec
    does not already command it (the CLI path and the admission webhook make it so in the
    same write as the model change), the machine asks for it at once.
    """
    _check_now(now)
    if view.stable is None:
        raise ValueError(
            "no stable revision: a first deployment has nothing to compare against, so it is "
            "not a canary"
        )
    _check_named(view)
    shadow_first = policy.shadow.enabled and shadowed_by is None
    target = 0 if shadow_first else policy.first_step
    state = RolloutState(
        rollout_id=rollout_id,
        namespace=namespace,
        name=name,
        policy=policy.name,
        phase=Phase.PENDING,
        canary=view.latest,
        stable=view.stable,
        created_at=now,
        phase_entered_at=now,
        target_percent=target,
        traffic_requested_at=now,
        history=(Phase.PENDING,),
        shadowed_by=shadowed_by,
    )
    stable_name = view.stable.name if view.stable else "none"
    actions: list[Action] = [
        _audit(
            "rollout.started",
            f"new revision {view.latest.name} detected; canary against {stable_name}",
            revision=view.latest.name,
            storage_uri=view.latest.storage_uri,
            stable=stable_name,
            policy=policy.name,
            first_percent=target,
            shadowed_by=shadowed_by,
        ),
        EmitEvent(
            EventReason.ROLLOUT_STARTED,
            f"canary {view.latest.name} against {stable_name} under policy {policy.name}; "
            f"first step {target}%",
        ),
    ]
    if view.spec_percent != target or not view.routed:
        # also when the spec already commands it but our route does not carry it yet (a
        # Standard-mode canary entry added by GitOps, capped by the webhook)
        actions.append(SetTraffic(view.latest.name, target, "start"))
    state, more = step(state, ServiceObserved(view), policy, now)
    return state, (*actions, *more)


def start_challenger(
    rollout_id: str,
    namespace: str,
    champion: str,
    challenger: str,
    view: TrafficView,
    policy: RolloutPolicy,
    now: datetime,
) -> Transition:
    """Begin the shadow phase of the challenger InferenceService ``challenger`` against the
    champion ``champion``. ``view`` is the champion's traffic with the challenger's latest
    revision as ``latest`` (it serves 0 % of the champion's traffic, always): the rollout
    waits for it to be ready, then mirrors. It never writes the champion's traffic; a
    passing comparison under ``after: gate`` ends it Succeeded, and the engine then starts
    the canary of the challenger's model on the champion (a rollout of its own)."""
    _check_now(now)
    if view.stable is None:
        raise ValueError("the champion has no stable revision to compare against")
    _check_named(view)
    if not policy.shadow.enabled:
        raise ValueError(f"policy {policy.name!r} has no shadow phase")
    state = RolloutState(
        rollout_id=rollout_id,
        namespace=namespace,
        name=champion,
        policy=policy.name,
        phase=Phase.PENDING,
        canary=view.latest,
        stable=view.stable,
        created_at=now,
        phase_entered_at=now,
        target_percent=0,
        history=(Phase.PENDING,),
        challenger=challenger,
    )
    actions: list[Action] = [
        _audit(
            "shadow.challenger_detected",
            f"challenger {challenger} ({view.latest.name}, {view.latest.storage_uri}) to be "
            f"compared with {champion} ({view.stable.name})",
            challenger=challenger,
            revision=view.latest.name,
            storage_uri=view.latest.storage_uri,
            stable=view.stable.name,
            stable_storage_uri=view.stable.storage_uri,
            policy=policy.name,
            after=policy.shadow.after,
            mirror_percent=policy.shadow.mirror_percent,
        )
    ]
    state = replace(state, next_check_at=_next_check(state, policy, now))
    return state, tuple(actions)


def step(
    state: RolloutState, observation: Observation, policy: RolloutPolicy, now: datetime
) -> Transition:
    """Apply one observation, then every rule that depends on time."""
    _check_now(now)
    if isinstance(observation, WriteRejected) and observation.purpose == "rollback":
        # Also after the rollout ended (an opt-out's or a drift's revert): reported, and the
        # engine keeps retrying it. A rollback is the safety action; it is never given up.
        return _rollback_refused(state, observation, policy, now)
    if state.terminal:
        if isinstance(observation, ManualCommand):
            return state, _reject(
                observation, f"the rollout has already finished ({state.phase.value})"
            )
        return state, ()

    actions: list[Action] = []
    if isinstance(observation, ServiceObserved):
        state = _on_view(state, observation.view, policy, now, actions)
    elif isinstance(observation, ServiceDeleted):
        state = _finish(
            state,
            Phase.FAILED,
            "the InferenceService was deleted during the rollout",
            now,
            actions,
            audit_action="rollout.failed",
            event=EmitEvent(
                EventReason.SERVICE_DELETED,
                "InferenceService deleted; rollout stopped",
                "Warning",
            ),
            close_code="cancelled",
        )
    elif isinstance(observation, OptedOut):
        state = _on_opt_out(state, observation, policy, now, actions)
    elif isinstance(observation, ChallengerGone):
        if state.challenger is not None:
            state = _finish(
                state,
                Phase.FAILED,
                f"challenger {state.challenger}: {observation.reason}",
                now,
                actions,
                audit_action="shadow.ended",
                event=EmitEvent(
                    EventReason.CHALLENGER_GONE,
                    f"shadow of {state.challenger} stopped: {observation.reason}",
                    "Warning",
                ),
                close_code="cancelled",
                details={"challenger": state.challenger},
            )
    elif isinstance(observation, AnalysisVerdict):
        state = _on_verdict(state, observation, policy, now, actions)
    elif isinstance(observation, ApprovalDecision):
        state = _on_approval(state, observation, now, actions)
    elif isinstance(observation, ChangeOpened):
        state = _on_change_opened(state, observation, actions)
    elif isinstance(observation, ManualCommand):
        state = _on_command(state, observation, policy, now, actions)
    elif isinstance(observation, WriteRejected):
        state = _on_write_rejected(state, observation, now, actions)

    # Time rules run until the phase settles, so that, say, an approval that arrives after
    # the hold time advances at once instead of at the next tick.
    for _ in range(4):
        if state.terminal:
            break
        before = state.phase
        state = _on_time(state, policy, now, actions)
        if state.phase is before:
            break
    return replace(state, next_check_at=_next_check(state, policy, now)), tuple(actions)


# ---------------------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------------------


def _on_view(
    state: RolloutState,
    view: TrafficView,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    if _replaced(view, state):
        stable = state.stable
        if state.phase is Phase.ROLLING_BACK and stable and view.latest.name == stable.name:
            # Standard mode: the rollback removed the canary entry, so the spec is stable again.
            return replace(state, last_view=view)
        # The same name with a new model: Knative's status still names the old revision
        # (the new one is not created yet); in Standard mode the entry keeps its name. Never
        # pair the old name with the new model as if it were the new revision.
        renamed = view.latest.name != state.canary.name
        newcomer = (
            f"revision {view.latest.name}"
            if renamed
            else f"a new model ({view.latest.storage_uri or 'unknown storageUri'})"
        )
        return _finish(
            state,
            Phase.SUPERSEDED,
            f"{newcomer} replaced canary {state.canary.name} ({state.canary.storage_uri})",
            now,
            actions,
            audit_action="rollout.superseded",
            event=EmitEvent(
                EventReason.SUPERSEDED,
                f"canary {state.canary.name} superseded by {newcomer}; "
                "a new rollout restarts at the first step",
                "Warning",
            ),
            close_code="cancelled",
            details={
                "new_revision": view.latest.name if renamed else None,
                "new_storage_uri": view.latest.storage_uri,
                "replaced_revision": state.canary.name,
                "replaced_storage_uri": state.canary.storage_uri,
            },
        )

    previous = state.last_view
    state = replace(state, last_view=view)
    # Someone else changed the commanded split (a GitOps sync, kubectl): put ours back.
    # Only a change is reported, so a write that keeps failing is retried by the engine,
    # not re-audited on every observation.
    # Only while a step is held: a promotion or rollback in flight changes the spec itself
    # (in Standard mode the canary entry disappears) and has its own retry rule.
    held = (state.target_percent, previous.spec_percent if previous else None)
    drifted = state.phase in _LIVE and previous is not None and view.spec_percent not in held
    if not drifted:
        return state
    # Paused on a refused write: nothing is written until an operator resumes.
    paused = state.rejected_write is not None
    audit_note, event_note = (
        ("not reasserted while the rollout is paused on a refused write",
         "left as it is while the rollout is paused")
        if paused
        else (f"the rollout holds {state.target_percent}%; reasserting",
              f"restored to {state.target_percent}%")
    )  # fmt: skip
    actions.append(
        _audit(
            "traffic.drift",
            f"spec commands {view.spec_percent}% for {state.canary.name}"
            + ("; " if paused else ", ")
            + audit_note,
            revision=state.canary.name,
            observed=view.spec_percent,
            target=state.target_percent,
        )
    )
    actions.append(
        EmitEvent(
            EventReason.TRAFFIC_DRIFT,
            f"the canary's traffic was changed outside the controller to "
            f"{view.spec_percent}%; {event_note}",
            "Warning",
        )
    )
    if paused:
        return replace(state, target_percent=view.spec_percent)
    actions.append(SetTraffic(state.canary.name, state.target_percent, "reassert"))
    return state


def _on_opt_out(
    state: RolloutState,
    opted: OptedOut,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    """The model owner opted out: return the traffic to the stable revision (or, by policy,
    leave it as it stands), record it, and stop managing the service."""
    canary = state.canary.name
    newest = opted.latest or canary
    stable = state.stable.name if state.stable else "the stable revision"
    held = state.target_percent
    if state.phase is Phase.ROLLING_BACK:
        handling = "the rollback already written completes"
    elif policy.on_opt_out == "leave":
        handling = f"traffic left as it stands ({canary} commanded at {held}%)"
    else:
        handling = f"{newest} returned to 0%, {stable} serves 100%"
    reason = f"opted out by {opted.actor} during {state.phase.value}: {handling}"
    actions.append(
        RecordAudit(
            action="manual.opt_out",
            reason=reason,
            actor=opted.actor,
            actor_kind=opted.actor_kind,
            details=tuple(
                sorted(
                    {
                        "phase": state.phase.value,
                        "revision": canary,
                        "latest_revision": newest,
                        "percent_before": str(held),
                        "on_opt_out": policy.on_opt_out,
                        "identity_source": "metadata.managedFields"
                        if opted.actor_kind == "human"
                        else "none",
                    }.items()
                )
            ),
        )
    )
    returning = (
        policy.on_opt_out == "return-to-stable"
        and state.phase is not Phase.ROLLING_BACK
        and state.challenger is None  # a challenger never served the champion's traffic
    )
    if returning:
        actions.append(SetTraffic(newest, 0, "rollback"))
    return replace(
        _finish(
            state,
            Phase.OPTED_OUT,
            reason,
            now,
            actions,
            audit_action="rollout.opted_out",
            event=EmitEvent(
                EventReason.OPTED_OUT,
                f"{reason}; kserve-canary no longer manages this InferenceService",
                "Warning",
            ),
            close_code="cancelled",
            details={"on_opt_out": policy.on_opt_out, "changed_by": opted.actor},
        ),
        target_percent=0 if returning else held,
    )


def _replaced(view: TrafficView, state: RolloutState) -> bool:
    """A different revision, or (Standard mode, where the canary entry keeps its name) the
    same name now serving a different model."""
    latest, canary = view.latest, state.canary
    if latest.name != canary.name:
        return True
    return bool(
        latest.storage_uri and canary.storage_uri and latest.storage_uri != canary.storage_uri
    )


def _on_verdict(
    state: RolloutState,
    verdict: AnalysisVerdict,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    if verdict.revision != state.canary.name or state.phase not in _LIVE:
        return state
    shadowing = state.phase is Phase.SHADOWING or state.paused_from is Phase.SHADOWING
    if shadowing and verdict.ceiling is not None:
        actions.append(
            EmitEvent(
                EventReason.SHADOW_STOPPED,
                f"mirroring to {state.canary.name} stopped: {verdict.ceiling}",
                "Warning",
            )
        )
        return _rollback(state, f"shadow stopped: {verdict.ceiling}", now, actions)
    if (
        shadowing
        and verdict.verdict is Verdict.FAILED
        and policy.shadow.after == "report"
        and verdict.step_index == SHADOW_STEP
        and verdict.evaluated_at >= state.phase_entered_at
    ):
        # A reporting shadow records the failed comparison and decides nothing.
        return _end_shadow(state, policy, now, actions, f"failed: {verdict.summary}")
    if verdict.verdict is Verdict.FAILED:
        # Evidence of a bad canary counts whatever step it was taken at.
        actions.append(
            EmitEvent(EventReason.ANALYSIS_FAILED, f"analysis failed: {verdict.summary}", "Warning")
        )
        return _rollback(state, f"analysis failed: {verdict.summary}", now, actions)
    current_step = SHADOW_STEP if state.phase is Phase.SHADOWING else state.step_index
    if state.phase is Phase.PAUSED and state.paused_from is Phase.SHADOWING:
        current_step = SHADOW_STEP
    if verdict.step_index != current_step:
        return state
    started = state.step_reached_at if current_step != SHADOW_STEP else state.phase_entered_at
    if started is None or verdict.evaluated_at < started:
        return state  # taken before this step's split was in force
    state = replace(
        state,
        last_verdict=LastVerdict(
            verdict.verdict,
            verdict.step_index,
            verdict.evaluated_at,
            verdict.sufficient_data,
            verdict.summary,
        ),
    )
    if verdict.verdict is Verdict.SUCCESSFUL or state.phase is Phase.PAUSED:
        return state
    kind = "inconclusive" if verdict.verdict is Verdict.INCONCLUSIVE else "could not be evaluated"
    return _pause(state, f"analysis {kind}: {verdict.summary}", now, actions, actor="controller")


def _on_write_rejected(
    state: RolloutState, rejected: WriteRejected, now: datetime, actions: list[Action]
) -> RolloutState:
    """The apiserver refused a step, promotion, reassertion or the first step for good:
    pause with the traffic where it stands. Nothing is written until an operator resumes,
    which sends the refused write again."""
    if rejected.purpose == "rollback" or rejected.revision != state.canary.name:
        return state
    what = f"the apiserver refused the {rejected.purpose} write ({rejected.revision} at "
    reason = f"{what}{rejected.percent}%): {rejected.describe()}"
    actions.append(
        EmitEvent(
            EventReason.TRAFFIC_WRITE_REJECTED,
            f"{reason}; the rollout is paused and the traffic left as it stands until an "
            "operator resumes it",
            "Warning",
        )
    )
    view = state.last_view
    in_force = (
        view.spec_percent if view is not None and view.latest.name == rejected.revision else None
    )
    refused = RejectedWrite(
        revision=rejected.revision,
        percent=rejected.percent,
        purpose=rejected.purpose,
        status=rejected.status,
        reason=rejected.reason,
        message=rejected.message,
        at=now,
    )
    if state.phase is Phase.PAUSED:
        actions.append(_audit("rollout.paused", reason, phase=state.phase.value))
        paused = replace(state, pause_reason=reason, waiting_for="paused: " + reason)
    else:
        paused = _pause(state, reason, now, actions, actor="controller", event=False)
    return replace(
        paused,
        rejected_write=refused,
        target_percent=state.target_percent if in_force is None else in_force,
    )


def _rollback_refused(
    state: RolloutState, rejected: WriteRejected, policy: RolloutPolicy, now: datetime
) -> Transition:
    reason = (
        f"the apiserver refused the rollback write ({rejected.revision} at "
        f"{rejected.percent}%): {rejected.describe()}"
    )
    actions: list[Action] = [
        _audit(
            "traffic.rejected",
            f"{reason}; retrying with backoff",
            revision=rejected.revision,
            percent=rejected.percent,
            purpose=rejected.purpose,
            status=rejected.status,
            api_reason=rejected.reason,
            api_message=rejected.message,
            causes="; ".join(rejected.causes) or None,
        ),
        EmitEvent(
            EventReason.TRAFFIC_WRITE_REJECTED,
            f"{reason}; the rollback is retried with backoff until the apiserver accepts it",
            "Warning",
        ),
    ]
    if state.terminal:
        return state, tuple(actions)
    waiting = f"retrying the rollback the apiserver refused ({rejected.status} {rejected.reason})"
    state = replace(state, waiting_for=waiting)
    return replace(state, next_check_at=_next_check(state, policy, now)), tuple(actions)


def _on_change_opened(
    state: RolloutState, opened: ChangeOpened, actions: list[Action]
) -> RolloutState:
    approval = state.approval
    if opened.revision != state.canary.name or approval is None or approval.status != "pending":
        return state
    actions.append(
        _audit(
            "approval.change_opened",
            f"change {opened.change_number} opened for approval",
            change_number=opened.change_number,
            revision=state.canary.name,
        )
    )
    return replace(state, approval=replace(approval, change_number=opened.change_number))


def _on_approval(
    state: RolloutState, decision: ApprovalDecision, now: datetime, actions: list[Action]
) -> RolloutState:
    approval = state.approval
    if decision.revision != state.canary.name or approval is None or approval.status != "pending":
        return state
    decided = replace(
        approval,
        status="approved" if decision.approved else "rejected",
        approver=decision.approver,
        decided_at=decision.decided_at,
        change_number=decision.change_number or approval.change_number,
    )
    state = replace(state, approval=decided)
    if decision.approved:
        actions.append(
            _audit(
                "approval.verified",
                f"approved by {decision.approver}",
                actor=decision.approver,
                change_number=decided.change_number,
                revision=state.canary.name,
                comment=decision.comment or None,
            )
        )
        actions.append(
            EmitEvent(EventReason.APPROVED, f"promotion approved by {decision.approver}")
        )
        if state.phase is Phase.AWAITING_APPROVAL:
            state = replace(state.with_phase(Phase.PROGRESSING, now), waiting_for=None)
        return state
    actions.append(
        _audit(
            "approval.rejected",
            f"rejected by {decision.approver}: {decision.comment}".rstrip(": "),
            actor=decision.approver,
            change_number=decided.change_number,
            revision=state.canary.name,
        )
    )
    actions.append(
        EmitEvent(
            EventReason.APPROVAL_REJECTED, f"promotion rejected by {decision.approver}", "Warning"
        )
    )
    return _rollback(state, f"approval rejected by {decision.approver}", now, actions)


def _on_command(
    state: RolloutState,
    command: ManualCommand,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    kind = command.command
    phase = state.phase
    refusal = _refusal(state, command, policy, now)
    if refusal is not None:
        actions.extend(_reject(command, refusal))
        return state
    actions.append(
        _audit(
            f"manual.{kind.value}",
            command.reason,
            actor=command.actor,
            phase=phase.value,
            step=state.step_index,
            revision=state.canary.name,
        )
    )
    if kind is CommandKind.PAUSE:
        return _pause(
            state, f"paused by {command.actor}: {command.reason}", now, actions, actor=command.actor
        )
    if kind is CommandKind.RESUME:
        return _resume(state, command, policy, now, actions)
    if kind is CommandKind.PROMOTE:
        return _promote(state, f"promoted by {command.actor}: {command.reason}", now, actions)
    actions.append(
        EmitEvent(
            EventReason.ABORTED, f"abort requested by {command.actor}: {command.reason}", "Warning"
        )
    )
    why = f"aborted by {command.actor}: {command.reason}"
    if state.challenger is not None:  # nothing to roll back: the shadow just ends
        details: dict[str, str | None] = {"challenger": state.challenger}
        ended = _finish(state, Phase.ABORTED, why, now, actions, audit_action="shadow.aborted",
                        close_code="cancelled", details=details)  # fmt: skip
        return replace(ended, aborted_by=command.actor)
    return replace(_rollback(state, why, now, actions), aborted_by=command.actor)


def _refusal(
    state: RolloutState, command: ManualCommand, policy: RolloutPolicy, now: datetime
) -> str | None:
    """Why a manual command does not fit the current phase, or None if it does."""
    phase = state.phase
    kind = command.command
    if not command.reason.strip():
        return "a reason is required for every manual command"
    if kind is CommandKind.PAUSE:
        if phase is Phase.PAUSED:
            return "the rollout is already paused"
        if phase is Phase.PROMOTING:
            return "the promotion has been written and cannot be paused"
        if phase is Phase.ROLLING_BACK:
            return "a rollback is in progress and cannot be paused"
        return None
    if kind is CommandKind.RESUME:
        if phase is not Phase.PAUSED:
            return f"the rollout is not paused (phase {phase.value})"
        return None
    if kind is CommandKind.PROMOTE:
        if state.challenger is not None:
            return (
                f"challenger {state.challenger} is being compared in shadow; it reaches live "
                "traffic only through the canary that follows a passing comparison"
            )
        if phase is Phase.PENDING:
            return f"canary {state.canary.name} is not ready yet; it has served no traffic"
        if phase is Phase.SHADOWING or (
            phase is Phase.PAUSED and state.paused_from in {Phase.SHADOWING, Phase.PENDING}
        ):
            return "the canary has served no live traffic yet; resume the rollout first"
        if phase is Phase.PROMOTING:
            return "the rollout is already promoting"
        if phase is Phase.ROLLING_BACK:
            return "a rollback is in progress; deploy the model again to start a new rollout"
        if policy.approval.required and (
            state.approval is None or state.approval.status != "approved"
        ):
            change = state.approval.change_number if state.approval else None
            pending = f" (change {change} is pending)" if change else ""
            return f"policy {policy.name} requires an approved change before promotion{pending}"
        if not policy.schedule.is_open(now):
            return f"promotion is not allowed now: {policy.schedule.describe_closed(now)}"
        return None
    # abort
    if phase is Phase.PROMOTING:
        return (
            "the promotion has been written; to revert, deploy the previous model, which "
            "starts a new rollout"
        )
    if phase is Phase.ROLLING_BACK:
        return "the rollout is already rolling back"
    return None


def _reject(command: ManualCommand, reason: str) -> tuple[Action, ...]:
    return (
        RejectCommand(command.command, command.actor, reason),
        _audit("manual.rejected", reason, actor=command.actor, command=command.command.value),
        EmitEvent(
            EventReason.COMMAND_REJECTED,
            f"{command.command.value} by {command.actor} refused: {reason}",
            "Warning",
        ),
    )


# ---------------------------------------------------------------------------------------
# Time-driven rules
# ---------------------------------------------------------------------------------------


def _on_time(
    state: RolloutState, policy: RolloutPolicy, now: datetime, actions: list[Action]
) -> RolloutState:
    view = state.last_view
    phase = state.phase
    if phase is Phase.PENDING:
        return _pending(state, view, policy, now, actions)
    if phase is Phase.SHADOWING:
        return _shadowing(state, policy, now, actions)
    if phase is Phase.PROGRESSING:
        return _progressing(state, view, policy, now, actions)
    if phase is Phase.AWAITING_APPROVAL:
        return _awaiting_approval(state, policy, now, actions)
    if phase is Phase.PROMOTING:
        return _promoting(state, view, policy, now, actions)
    if phase is Phase.ROLLING_BACK:
        return _rolling_back(state, view, policy, now, actions)
    return state  # PAUSED waits for a human


def _pending(
    state: RolloutState,
    view: TrafficView | None,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    if view is not None and view.latest_failed:
        message = view.failure_message or "revision failed"
        actions.append(
            EmitEvent(
                EventReason.REVISION_NOT_READY,
                f"revision {state.canary.name} failed: {message}",
                "Warning",
            )
        )
        return _rollback(state, f"revision {state.canary.name} failed: {message}", now, actions)
    if view is not None and _at_target(view, state):
        if policy.shadow.enabled and state.shadowed_by is None:
            actions.append(SetMirror(state.canary.name, policy.shadow.mirror_percent))
            actions.append(
                _audit(
                    "shadow.started",
                    f"mirroring {policy.shadow.mirror_percent}% of live traffic to "
                    f"{state.canary.name}",
                    revision=state.canary.name,
                    mirror_percent=policy.shadow.mirror_percent,
                )
            )
            actions.append(
                EmitEvent(
                    EventReason.SHADOW_STARTED,
                    f"mirroring {policy.shadow.mirror_percent}% of traffic to "
                    f"{state.canary.name}; responses are discarded",
                )
            )
            return replace(state.with_phase(Phase.SHADOWING, now), waiting_for=None)
        return _reached(
            replace(state.with_phase(Phase.PROGRESSING, now), step_index=0), now, actions
        )
    if now - state.phase_entered_at >= policy.revision_ready_timeout:
        ready = view is not None and view.latest_ready
        what = (
            f"traffic did not converge to {state.target_percent}%"
            if ready
            else f"revision {state.canary.name} did not become ready"
        )
        reason = f"{what} within {format_duration(policy.revision_ready_timeout)}"
        kind = EventReason.TRAFFIC_NOT_CONVERGED if ready else EventReason.REVISION_NOT_READY
        actions.append(EmitEvent(kind, reason, "Warning"))
        return _rollback(state, reason, now, actions)
    waiting = (
        f"waiting for revision {state.canary.name} to become ready"
        if view is None or not view.latest_ready
        else f"waiting for the status to show {state.target_percent}%"
    )
    return replace(state, waiting_for=waiting)


def _shadowing(
    state: RolloutState, policy: RolloutPolicy, now: datetime, actions: list[Action]
) -> RolloutState:
    elapsed = now - state.phase_entered_at
    verdict = state.last_verdict
    decided = (
        verdict is not None
        and verdict.step_index == SHADOW_STEP
        and verdict.verdict is Verdict.SUCCESSFUL
        and verdict.sufficient_data
    )
    if elapsed >= policy.shadow.duration and decided:
        if not policy.schedule.is_open(now):
            return _wait_for_window(state, policy, now, actions)
        return _end_shadow(
            state, policy, now, actions, f"passed after {format_duration(elapsed)}", passed=True
        )
    if elapsed >= policy.shadow.deadline:
        why = f"did not reach a decision within {format_duration(policy.shadow.deadline)}"
        if policy.shadow.after == "report":
            if not policy.schedule.is_open(now):
                return _wait_for_window(state, policy, now, actions)
            return _end_shadow(state, policy, now, actions, why)
        return _pause(state, f"the shadow comparison {why}", now, actions, actor="controller")
    return replace(state, waiting_for="collecting shadow evidence")


def _end_shadow(
    state: RolloutState,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
    outcome: str,
    *,
    passed: bool = False,
) -> RolloutState:
    """Stop mirroring and give the canary its first step: after a passing comparison, or
    (``after: report``) whatever the comparison found."""
    if state.challenger is not None:
        return _end_challenger(state, policy, now, actions, outcome, passed=passed)
    actions.append(SetMirror(state.canary.name, 0))
    actions.append(
        _audit(
            "shadow.passed" if passed else "shadow.reported",
            f"shadow comparison {outcome}"
            + ("" if passed else "; the policy only reports it (after: report)"),
            revision=state.canary.name,
            after=policy.shadow.after,
            passed=passed,
        )
    )
    state = replace(state.with_phase(Phase.PROGRESSING, now), last_verdict=None)
    return _set_step(state, 0, policy, now, actions, "start")


def _end_challenger(
    state: RolloutState,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
    outcome: str,
    *,
    passed: bool,
) -> RolloutState:
    challenger = state.challenger
    gate = policy.shadow.after == "gate"
    if gate and passed:
        phase, then = (
            Phase.SUCCEEDED,
            f"the canary of {state.canary.storage_uri} on the champion starts",
        )
    else:
        phase, then = Phase.REPORTED, "recorded only (after: report); nothing rolls out"
    reason = f"challenger {challenger}: shadow comparison {outcome}; {then}"
    return _finish(
        state,
        phase,
        reason,
        now,
        actions,
        audit_action="shadow.passed" if passed else "shadow.reported",
        event=EmitEvent(EventReason.SHADOW_COMPLETED, reason),
        close_code="successful" if passed else "cancelled",
        details={
            "challenger": challenger,
            "after": policy.shadow.after,
            "passed": "true" if passed else "false",
        },
    )


def _progressing(
    state: RolloutState,
    view: TrafficView | None,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    if state.step_reached_at is None:
        if view is not None and _at_target(view, state):
            return _reached(state, now, actions)
        requested = state.traffic_requested_at or state.phase_entered_at
        if now - requested >= policy.traffic_timeout:
            reason = (
                f"traffic did not converge to {state.target_percent}% within "
                f"{format_duration(policy.traffic_timeout)}"
            )
            actions.append(EmitEvent(EventReason.TRAFFIC_NOT_CONVERGED, reason, "Warning"))
            return _rollback(state, reason, now, actions)
        return replace(state, waiting_for=f"waiting for the status to show {state.target_percent}%")

    reached = state.step_reached_at
    verdict = _fresh_verdict(state, policy, now)
    evidence_ok = verdict is not None and _passing(verdict)
    hold_over = now - reached >= policy.step_hold
    if hold_over and evidence_ok:
        next_index = state.step_index + 1
        next_percent = policy.steps[next_index]
        approval = state.approval
        if policy.needs_approval_for(next_percent) and (
            approval is None or approval.status != "approved"
        ):
            return _request_approval(state, next_index, policy, now, actions)
        if not policy.schedule.is_open(now):
            return _wait_for_window(state, policy, now, actions)
        if next_percent == 100:
            return _promote(state, "every step passed its analysis", now, actions)
        return _set_step(state, next_index, policy, now, actions, "step")
    current = _current_verdict(state)
    if current is not None and _passing(current) and not evidence_ok:
        # Passing, but older than one analysis interval (a restart, a leadership change):
        # nothing is decided on it, and the rollout is not paused for its age either; the
        # engine evaluates again before anything else happens.
        if hold_over and not policy.schedule.is_open(now):
            return _wait_for_window(state, policy, now, actions)
        age = format_duration(now - current.evaluated_at)
        return replace(state, waiting_for=f"waiting for a fresh evaluation (the last is {age} old)")
    if now - reached >= policy.step_deadline:
        if verdict is not None and verdict.verdict is Verdict.SUCCESSFUL:
            why = "the analysis passed without enough samples to rule out a regression"
        else:
            why = "no passing analysis"
        return _pause(
            state,
            f"{why} after {format_duration(policy.step_deadline)} at {state.target_percent}%; "
            "never promoting without evidence",
            now,
            actions,
            actor="controller",
        )
    if not hold_over:
        waiting = (
            f"holding {state.target_percent}% until {(reached + policy.step_hold).isoformat()}"
        )
    else:
        waiting = "waiting for a passing analysis with enough samples"
    return replace(state, waiting_for=waiting)


def _awaiting_approval(
    state: RolloutState, policy: RolloutPolicy, now: datetime, actions: list[Action]
) -> RolloutState:
    approval = state.approval
    if approval is None:  # defensive: nothing to wait for
        return state.with_phase(Phase.PROGRESSING, now)
    if approval.status == "approved":
        return state.with_phase(Phase.PROGRESSING, now)
    if approval.status == "pending" and now >= approval.deadline:
        expired = replace(approval, status="expired", decided_at=now)
        state = replace(state, approval=expired)
        reason = f"approval deadline {approval.deadline.isoformat()} passed without a decision"
        actions.append(
            _audit(
                "approval.expired",
                reason,
                change_number=approval.change_number,
                on_expiry=policy.approval.on_expiry,
            )
        )
        actions.append(EmitEvent(EventReason.APPROVAL_EXPIRED, reason, "Warning"))
        actions.append(CloseChange(approval.change_number, "cancelled", reason))
        if policy.approval.on_expiry == "rollback":
            return _rollback(state, reason, now, actions)
        return _pause(state, reason, now, actions, actor="controller")
    return replace(
        state,
        waiting_for=f"waiting for approval by {policy.approval.risk_owner_group} until "
        f"{approval.deadline.isoformat()}",
    )


def _promoting(
    state: RolloutState,
    view: TrafficView | None,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    if (
        view is not None
        and view.converged
        and view.stable is not None
        and view.stable.name == state.canary.name
        and view.share(state.canary.name) == 100
    ):
        actions.append(
            EmitEvent(EventReason.PROMOTED, f"{state.canary.name} now serves 100% of traffic")
        )
        return _finish(
            state,
            Phase.SUCCEEDED,
            f"{state.canary.name} promoted",
            now,
            actions,
            audit_action="promoted",
            close_code="successful",
        )
    return _retry_if_stuck(state, policy, now, actions, 100, "promote")


def _rolling_back(
    state: RolloutState,
    view: TrafficView | None,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    stable = state.stable
    if (
        view is not None
        and view.converged
        and view.share(state.canary.name) == 0
        and (view.spec_percent == 0 or (stable is not None and view.latest.name == stable.name))
    ):
        aborted = state.aborted_by is not None
        actions.append(
            EmitEvent(
                EventReason.ABORTED if aborted else EventReason.ROLLED_BACK,
                f"{state.canary.name} serves no traffic; "
                f"{stable.name if stable else 'the stable revision'} serves 100%",
                "Warning",
            )
        )
        return _finish(
            state,
            Phase.ABORTED if aborted else Phase.ROLLED_BACK,
            state.rollback_reason or "rolled back",
            now,
            actions,
            audit_action="rolled_back",
            close_code="unsuccessful",
        )
    return _retry_if_stuck(state, policy, now, actions, 0, "rollback")


# ---------------------------------------------------------------------------------------
# Transitions shared by several rules
# ---------------------------------------------------------------------------------------


VERDICT_TRANSIT = timedelta(seconds=2)
"""How long a verdict may take to arrive after its look's time (the look's queries run on
their own thread) and still count as taken within the last analysis interval."""


def _current_verdict(state: RolloutState) -> LastVerdict | None:
    """The latest verdict taken at the current step while its split was in force."""
    verdict = state.last_verdict
    reached = state.step_reached_at
    if (
        verdict is None
        or reached is None
        or verdict.step_index != state.step_index
        or verdict.evaluated_at < reached
    ):
        return None
    return verdict


def _fresh_verdict(state: RolloutState, policy: RolloutPolicy, now: datetime) -> LastVerdict | None:
    """The latest verdict taken at the current step while its split was in force, and no
    older than one analysis interval: a verdict from before a restart, a leadership change
    or a stalled analysis says nothing about the canary now, so the rollout waits for the
    next evaluation (which the engine runs before deciding) instead of acting on it."""
    verdict = _current_verdict(state)
    if verdict is None or now - verdict.evaluated_at > policy.analysis_interval + VERDICT_TRANSIT:
        return None
    return verdict


def _passing(verdict: LastVerdict) -> bool:
    return verdict.verdict is Verdict.SUCCESSFUL and verdict.sufficient_data


def _at_target(view: TrafficView, state: RolloutState) -> bool:
    return (
        view.converged
        and view.latest_ready
        and view.spec_percent == state.target_percent
        and view.share(state.canary.name) == state.target_percent
    )


def _reached(state: RolloutState, now: datetime, actions: list[Action]) -> RolloutState:
    actions.append(
        _audit(
            "traffic.shifted",
            f"status shows {state.canary.name} at {state.target_percent}%",
            revision=state.canary.name,
            percent=state.target_percent,
            step=state.step_index,
        )
    )
    actions.append(
        EmitEvent(
            EventReason.STEP_ADVANCED,
            f"step {state.step_index + 1}: {state.canary.name} serves {state.target_percent}%",
        )
    )
    return replace(state, step_reached_at=now, waiting_for=None)


def _set_step(
    state: RolloutState,
    index: int,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
    purpose: str,
) -> RolloutState:
    percent = policy.steps[index]
    actions.append(
        _audit(
            "rollout.step_advanced",
            f"step {index + 1} of {len(policy.steps)}: {percent}%",
            revision=state.canary.name,
            step=index,
            percent=percent,
        )
    )
    actions.append(
        SetTraffic(state.canary.name, percent, "start" if purpose == "start" else "step")
    )
    return replace(
        state,
        step_index=index,
        target_percent=percent,
        step_reached_at=None,
        traffic_requested_at=now,
        waiting_for=f"waiting for the status to show {percent}%",
    )


def _promote(
    state: RolloutState, reason: str, now: datetime, actions: list[Action]
) -> RolloutState:
    actions.append(_audit("rollout.promoting", reason, revision=state.canary.name))
    actions.append(EmitEvent(EventReason.PROMOTING, f"promoting {state.canary.name}: {reason}"))
    actions.append(SetTraffic(state.canary.name, 100, "promote"))
    return replace(
        state.with_phase(Phase.PROMOTING, now),
        target_percent=100,
        traffic_requested_at=now,
        paused_from=None,
        pause_reason=None,
        rejected_write=None,
        waiting_for="waiting for the status to show the promotion",
    )


def _rollback(
    state: RolloutState, reason: str, now: datetime, actions: list[Action]
) -> RolloutState:
    if state.challenger is not None:
        return _reject_challenger(state, reason, now, actions)
    if state.phase is Phase.SHADOWING or state.paused_from is Phase.SHADOWING:
        actions.append(SetMirror(state.canary.name, 0))
    actions.append(
        _audit(
            "rollout.rolling_back",
            reason,
            revision=state.canary.name,
            percent_before=state.target_percent,
        )
    )
    actions.append(EmitEvent(EventReason.ROLLING_BACK, reason, "Warning"))
    actions.append(SetTraffic(state.canary.name, 0, "rollback"))
    return replace(
        state.with_phase(Phase.ROLLING_BACK, now),
        target_percent=0,
        traffic_requested_at=now,
        rollback_reason=reason,
        paused_from=None,
        pause_reason=None,
        rejected_write=None,
        waiting_for="waiting for the status to show the rollback",
    )


def _reject_challenger(
    state: RolloutState, reason: str, now: datetime, actions: list[Action]
) -> RolloutState:
    """A challenger's shadow ends without a rollout: it never served live traffic, so there
    is nothing to roll back; the mirror stops (in ``_finish``)."""
    challenger = state.challenger
    return _finish(
        state,
        Phase.REJECTED,
        f"challenger {challenger} rejected: {reason}",
        now,
        actions,
        audit_action="shadow.rejected",
        event=EmitEvent(
            EventReason.CHALLENGER_REJECTED,
            f"challenger {challenger} rejected: {reason}; it gets no live traffic",
            "Warning",
        ),
        close_code="unsuccessful",
        details={"challenger": challenger},
    )


def _pause(
    state: RolloutState,
    reason: str,
    now: datetime,
    actions: list[Action],
    *,
    actor: str,
    event: bool = True,
) -> RolloutState:
    if actor == "controller":
        actions.append(_audit("rollout.paused", reason, phase=state.phase.value))
    if event:
        actions.append(EmitEvent(EventReason.PAUSED, reason, "Warning"))
    return replace(
        state.with_phase(Phase.PAUSED, now),
        paused_from=state.phase,
        pause_reason=reason,
        waiting_for="paused: " + reason,
    )


def _resume(
    state: RolloutState,
    command: ManualCommand,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
) -> RolloutState:
    back_to = state.paused_from or Phase.PROGRESSING
    actions.append(EmitEvent(EventReason.RESUMED, f"resumed by {command.actor}: {command.reason}"))
    resumed = replace(
        state.with_phase(back_to, now),
        paused_from=None,
        pause_reason=None,
        waiting_for=None,
        last_verdict=None,  # a resumed step needs fresh evidence
    )
    if back_to is Phase.PROGRESSING:
        # The hold restarts; a split still on its way gets a fresh traffic timeout.
        if resumed.step_reached_at is not None:
            resumed = replace(resumed, step_reached_at=now)
        else:
            resumed = replace(resumed, traffic_requested_at=now)
    refused = state.rejected_write
    if refused is not None:
        # Send the refused write again (the operator fixed what the apiserver objected to).
        actions.append(
            _audit(
                "traffic.retry",
                f"resumed: the {refused.purpose} write the apiserver refused "
                f"({refused.status} {refused.reason}) is sent again",
                revision=refused.revision,
                percent=refused.percent,
            )
        )
        actions.append(SetTraffic(refused.revision, refused.percent, refused.purpose))
        return replace(
            resumed, rejected_write=None, target_percent=refused.percent, traffic_requested_at=now
        )
    if back_to is Phase.AWAITING_APPROVAL and (
        resumed.approval is None or resumed.approval.status in {"expired", "rejected"}
    ):
        index = resumed.approval.step_index if resumed.approval else resumed.step_index + 1
        return _request_approval(
            replace(resumed, phase=Phase.PROGRESSING), index, policy, now, actions
        )
    return resumed


def _request_approval(
    state: RolloutState, index: int, policy: RolloutPolicy, now: datetime, actions: list[Action]
) -> RolloutState:
    deadline = now + policy.approval.deadline
    group = policy.approval.risk_owner_group or ""
    percent = policy.steps[index]
    actions.append(
        _audit(
            "approval.requested",
            f"approval needed before {percent}%",
            revision=state.canary.name,
            step=index,
            deadline=deadline.isoformat(),
            group=group,
            gate=policy.approval.gate.value,
        )
    )
    actions.append(RequestApproval(state.canary.name, index, percent, deadline, group))
    actions.append(
        EmitEvent(
            EventReason.APPROVAL_REQUESTED,
            f"promotion of {state.canary.name} to {percent}% awaits approval by {group} "
            f"until {deadline.isoformat()}",
        )
    )
    return replace(
        state.with_phase(Phase.AWAITING_APPROVAL, now),
        approval=ApprovalState(step_index=index, requested_at=now, deadline=deadline),
        waiting_for=f"waiting for approval by {group} until {deadline.isoformat()}",
    )


def _wait_for_window(
    state: RolloutState, policy: RolloutPolicy, now: datetime, actions: list[Action]
) -> RolloutState:
    message = policy.schedule.describe_closed(now)
    if state.waiting_for != message:
        actions.append(EmitEvent(EventReason.WAITING_FOR_WINDOW, f"ready to advance; {message}"))
    return replace(state, waiting_for=message)


def _retry_if_stuck(
    state: RolloutState,
    policy: RolloutPolicy,
    now: datetime,
    actions: list[Action],
    percent: int,
    purpose: str,
) -> RolloutState:
    """A promotion or rollback is never abandoned: re-issue it after each traffic timeout."""
    requested = state.traffic_requested_at or state.phase_entered_at
    if now - requested < policy.traffic_timeout:
        return state
    message = (
        f"{purpose} to {percent}% not visible in status after "
        f"{format_duration(now - requested)}; writing it again"
    )
    actions.append(EmitEvent(EventReason.TRAFFIC_NOT_CONVERGED, message, "Warning"))
    actions.append(_audit("traffic.retry", message, revision=state.canary.name, percent=percent))
    actions.append(
        SetTraffic(state.canary.name, percent, "promote" if purpose == "promote" else "rollback")
    )
    return replace(state, traffic_requested_at=now)


def _finish(
    state: RolloutState,
    phase: Phase,
    reason: str,
    now: datetime,
    actions: list[Action],
    *,
    audit_action: str,
    close_code: Literal["successful", "unsuccessful", "cancelled"],
    event: EmitEvent | None = None,
    details: dict[str, str | None] | None = None,
) -> RolloutState:
    if state.phase is Phase.SHADOWING or state.paused_from is Phase.SHADOWING:
        actions.append(SetMirror(state.canary.name, 0))
    actions.append(
        _audit_with(
            audit_action,
            reason,
            "controller",
            {"revision": state.canary.name, "phase": phase.value, **(details or {})},
        )
    )
    if event is not None:
        actions.append(event)
    approval = state.approval
    if approval is not None and approval.status != "expired":  # an expired one is closed
        code = close_code
        if code == "successful" and approval.status != "approved":
            code = "cancelled"
        actions.append(CloseChange(approval.change_number, code, reason))
    return replace(
        state.with_phase(phase, now),
        outcome=reason,
        waiting_for=None,
        paused_from=None,
        rejected_write=None,
        next_check_at=None,
    )


def _next_check(state: RolloutState, policy: RolloutPolicy, now: datetime) -> datetime | None:
    """The earliest moment a time-based rule could fire; the scheduler wakes up then."""
    phase = state.phase
    candidates: list[datetime] = []
    if phase is Phase.PENDING:
        candidates.append(state.phase_entered_at + policy.revision_ready_timeout)
    elif phase is Phase.SHADOWING:
        candidates.append(state.phase_entered_at + policy.shadow.duration)
        candidates.append(state.phase_entered_at + policy.shadow.deadline)
    elif phase is Phase.PROGRESSING:
        reached = state.step_reached_at
        if reached is None:
            requested = state.traffic_requested_at or state.phase_entered_at
            candidates.append(requested + policy.traffic_timeout)
        elif now < reached + policy.step_hold:
            candidates.append(reached + policy.step_hold)
        else:
            verdict = _fresh_verdict(state, policy, now)
            if verdict is not None and _passing(verdict) and not policy.schedule.is_open(now):
                opens = policy.schedule.next_open(now)
                if opens is not None:
                    candidates.append(opens)
            else:
                candidates.append(reached + policy.step_deadline)
    elif phase is Phase.AWAITING_APPROVAL and state.approval is not None:
        candidates.append(state.approval.deadline)
    elif phase in {Phase.PROMOTING, Phase.ROLLING_BACK}:
        requested = state.traffic_requested_at or state.phase_entered_at
        candidates.append(requested + policy.traffic_timeout)
    future = [c for c in candidates if c > now]
    return min(future) if future else (now + timedelta(seconds=1) if candidates else None)
