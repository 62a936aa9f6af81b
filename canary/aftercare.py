"""Watching an InferenceService after its rollout ended. PURE: no I/O, no clock.

A rollout that ended is not forgotten: its state stays in the audit store (``canary
status`` shows it) and every later reconcile of the service passes through :func:`watch`
while the service is still opted in and no newer rollout has started.

* **After a rollback** (RolledBack, Aborted, and the two drift phases below) the rolled-back
  revision must serve nothing. If the spec commands traffic for it again (a hand-cleared
  ``canaryTrafficPercent`` in Knative mode, a re-added ``spec.canary[]`` entry in Standard
  mode), or the status shows it serving, that is a drift: always a ``traffic.drift`` record
  and a Warning Event naming who did it, then, by the policy's ``afterRollback``, a traffic
  write back to 0 (``revert``, the default; phase DriftReverted) or nothing more
  (``record``; phase DriftRecorded, and each later change of the share is recorded too).
* **After a promotion** (Succeeded) the promoted revision should serve 100 %. A hand-set
  ``canaryTrafficPercent`` below 100 (KServe then falls back to the previous rollout,
  KSERVE.md §1.4) or a stable model replaced by hand is recorded as a manual rollback
  (phase ManuallyRolledBack). The controller does not undo it: going back to the previously
  released model is a human's call. Setting it back to 100 is recorded and returns the
  phase to Succeeded.

"Who" comes from the cluster only: the InferenceService's ``metadata.managedFields`` entry
that owns the traffic field, the newest by ``time`` (:func:`field_manager`). When no entry
owns it (a removed field belongs to nobody), the actor is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from canary.annotations import AnnotationError, parse_enabled
from canary.model import (
    Action,
    EmitEvent,
    EventReason,
    OptedOut,
    Phase,
    RecordAudit,
    Revision,
    RolloutState,
    SetTraffic,
    TrafficView,
    audit_details,
)
from canary.policy import RolloutPolicy

__all__ = [
    "AFTER_PROMOTION",
    "AFTER_ROLLBACK",
    "ENABLED_FIELD",
    "Identity",
    "exposure",
    "field_manager",
    "opted_out",
    "retarget",
    "traffic_fields",
    "watch",
    "watching",
]

Transition = tuple[RolloutState, tuple[Action, ...]]
Mode = Literal["knative", "standard"]

AFTER_ROLLBACK = frozenset(
    {Phase.ROLLED_BACK, Phase.ABORTED, Phase.DRIFT_REVERTED, Phase.DRIFT_RECORDED}
)
AFTER_PROMOTION = frozenset({Phase.SUCCEEDED, Phase.MANUALLY_ROLLED_BACK})
WATCHED = AFTER_ROLLBACK | AFTER_PROMOTION

# managedFields paths (fieldsV1 keys) of the fields that decide traffic, per mode
_KNATIVE_TRAFFIC = (("f:spec", "f:predictor", "f:canaryTrafficPercent"),)
_STANDARD_TRAFFIC = (
    ("f:spec", "f:canary"),
    ("f:spec", "f:predictor", "f:model"),
    ("f:spec", "f:predictor", "f:name"),
)
ENABLED_FIELD = (("f:metadata", "f:annotations", "f:kserve-canary.io/enabled"),)


# ---------------------------------------------------------------------------------------
# Who changed it: managedFields
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The field manager the cluster names for a change (``manager`` None: nobody)."""

    manager: str | None = None
    operation: str | None = None
    time: str | None = None

    @property
    def actor(self) -> str:
        return self.manager or "unknown"

    @property
    def kind(self) -> Literal["human", "unknown"]:
        return "human" if self.manager else "unknown"

    def details(self) -> dict[str, object]:
        return {
            "changed_by": self.actor,
            "identity_source": "metadata.managedFields" if self.manager else "none",
            "field_manager_operation": self.operation,
            "field_manager_time": self.time,
        }


def traffic_fields(mode: Mode) -> tuple[tuple[str, ...], ...]:
    return _KNATIVE_TRAFFIC if mode == "knative" else _STANDARD_TRAFFIC


def _covers(fields: Any, path: Sequence[str]) -> bool:
    node = fields
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def field_manager(obj: Mapping[str, Any], paths: Iterable[Sequence[str]]) -> Identity:
    """The ``managedFields`` entry owning any of ``paths`` with the latest ``time``
    (RFC 3339 in UTC, so the strings order as times). Identity() if none owns them."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    wanted = [tuple(p) for p in paths]
    best: Identity | None = None
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("manager"):
            continue
        fields = entry.get("fieldsV1")
        if not any(_covers(fields, path) for path in wanted):
            continue
        time = str(entry.get("time") or "")
        if best is None or time >= (best.time or ""):
            best = Identity(str(entry["manager"]), str(entry.get("operation") or "") or None, time)
    return best or Identity()


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations if isinstance(annotations, Mapping) else {}


def opted_out(
    obj: Mapping[str, Any], state: RolloutState, latest: str | None = None
) -> OptedOut | None:
    """The opt-out of an active rollout's service, if its owner opted out: the annotation
    removed or exactly "false". A value that is not a boolean is not an opt-out (the
    webhook denies it; the rollout keeps its safety net), and neither is a finished
    rollout. ``latest`` is the newest revision now (see :class:`OptedOut`)."""
    if state.terminal:
        return None
    try:
        if parse_enabled(_annotations(obj)):
            return None
    except AnnotationError:
        return None
    who = field_manager(obj, ENABLED_FIELD)
    return OptedOut(actor=who.actor, actor_kind=who.kind, latest=latest)


def retarget(state: RolloutState, mode: str, revision: str, purpose: str, latest: str) -> str:
    """Which revision an unapplied traffic write is aimed at now. An opt-out's return to the
    stable revision, carried out after a newer revision appeared (in Knative mode the
    opt-out's own annotation change can mint one), is ``canaryTrafficPercent: 0``, which
    gives the newest revision 0 % whichever it is: it is aimed at the newest instead of
    being abandoned. Every other write keeps its revision."""
    if (
        state.phase is Phase.OPTED_OUT
        and mode == "knative"
        and purpose == "rollback"
        and latest
        and revision != latest
    ):
        return latest
    return revision


def watching(obj: Mapping[str, Any], state: RolloutState) -> bool:
    """Whether a finished rollout's service is still watched: its phase is one aftercare
    looks after and the service is still opted in."""
    if state.phase not in WATCHED or state.challenger is not None:
        return False  # a challenger's shadow never gave the champion's traffic to anyone
    try:
        return parse_enabled(_annotations(obj))
    except AnnotationError:
        return False


# ---------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------


def _same(mode: Mode, a: Revision, b: Revision) -> bool:
    if mode == "knative":
        return a.name == b.name
    return a.name == b.name and (a.storage_uri or None) == (b.storage_uri or None)


def _audit(action: str, reason: str, who: Identity, details: Mapping[str, object]) -> RecordAudit:
    merged = {**details, **who.details()}
    return RecordAudit(
        action=action,
        reason=reason,
        actor=who.actor,
        actor_kind=who.kind,
        details=audit_details(merged),
    )


def watch(
    state: RolloutState,
    view: TrafficView,
    policy: RolloutPolicy,
    mode: Mode,
    who: Identity,
    now: datetime,
) -> Transition:
    """One look at a finished rollout's service; ``who`` is the manager of its traffic
    field. Returns the state to store and the actions (audit, Event, traffic write)."""
    if now.tzinfo is None:
        raise ValueError("aftercare needs a timezone-aware 'now'")
    if state.phase in AFTER_ROLLBACK:
        return _after_rollback(state, view, policy, mode, who, now)
    if state.phase in AFTER_PROMOTION:
        return _after_promotion(state, view, mode, who, now)
    return state, ()


def exposure(state: RolloutState, view: TrafficView, mode: Mode) -> int:
    """The share the rolled-back revision is given: commanded by the spec, or (when the
    status reflects the spec) served."""
    commanded = view.spec_percent if _same(mode, view.latest, state.canary) else 0
    served = view.share(state.canary.name) if view.converged else 0
    if view.stable is not None and view.stable.name == state.canary.name:
        # KServe marked the rolled-back revision rolled out (a hand-cleared percent was
        # briefly 100 %): with the spec at 0 it falls back to the previous rollout on its
        # own (KSERVE.md §1.4), so only what the spec commands counts here
        served = 0
    return max(commanded, served)


def _after_rollback(
    state: RolloutState,
    view: TrafficView,
    policy: RolloutPolicy,
    mode: Mode,
    who: Identity,
    now: datetime,
) -> Transition:
    share = exposure(state, view, mode)
    seen = state.watched_percent or 0
    if share == seen or (share == 0 and state.phase is not Phase.DRIFT_RECORDED):
        return state, ()
    revision = state.canary.name
    stable = state.stable.name if state.stable else "the stable revision"
    revert = policy.after_rollback == "revert" and share > 0
    if share == 0:  # record-only: the share went back to 0 (by hand)
        reason = f"rolled-back revision {revision} is back to 0%"
    elif revert:
        reason = (
            f"rolled-back revision {revision} was given {share}% by {who.actor} after the "
            f"rollout ended ({state.phase.value}); reverting it to 0%"
        )
    else:
        reason = (
            f"rolled-back revision {revision} was given {share}% by {who.actor} after the "
            f"rollout ended ({state.phase.value}); recorded only (policy afterRollback: record)"
        )
    actions: list[Action] = [
        _audit(
            "traffic.drift",
            reason,
            who,
            {
                "revision": revision,
                "observed": share,
                "spec_percent": view.spec_percent,
                "status_share": view.share(revision),
                "after": state.phase.value,
                "handling": "revert" if revert else "record",
                "post_rollout": True,
            },
        ),
        EmitEvent(
            EventReason.TRAFFIC_DRIFT,
            (
                f"{reason}; {stable} serves the rest"
                if share
                else f"{reason} ({who.actor}); {stable} serves 100%"
            ),
            "Warning",
        ),
    ]
    if revert:
        actions.append(SetTraffic(revision, 0, "rollback"))
        phase = Phase.DRIFT_REVERTED
        outcome = (
            f"{state.rollback_reason or 'rolled back'}; {who.actor} later gave {revision} "
            f"{share}% at {now.isoformat()}: reverted to 0%"
        )
        watched = 0  # the revert is written; a later drift is a new one
    else:
        phase = Phase.DRIFT_RECORDED
        outcome = (
            f"{state.rollback_reason or 'rolled back'}; {revision} serves {share}% since "
            f"{now.isoformat()} (set by {who.actor}; recorded, not reverted)"
        )
        watched = share
    return (
        replace(state.with_phase(phase, now), outcome=outcome, watched_percent=watched),
        tuple(actions),
    )


def _after_promotion(
    state: RolloutState, view: TrafficView, mode: Mode, who: Identity, now: datetime
) -> Transition:
    promoted = state.canary
    previous = state.stable.name if state.stable else "the previous revision"
    replaced_by: str | None = None
    if mode == "knative":
        if view.latest.name != promoted.name:
            return state, ()  # a new revision: a new rollout takes it
        share = view.spec_percent  # what the spec commands for the promoted revision
    else:
        if view.stable is None or not _same(mode, view.latest, view.stable):
            return state, ()  # a canary entry: a new rollout takes it
        if _same(mode, view.stable, promoted):
            share = 100  # no canary: the stable predictor serves everything
        else:
            share = 0  # the stable model itself was replaced by hand, outside a rollout
            replaced_by = view.stable.storage_uri or view.stable.name
    seen = 100 if state.watched_percent is None else state.watched_percent
    if share == seen:
        return state, ()
    details: dict[str, object] = {
        "revision": promoted.name,
        "percent": share,
        "previous_revision": previous,
        "replaced_by": replaced_by,
        "post_rollout": True,
    }
    if share == 100:
        reason = f"{promoted.name} serves 100% again (set by {who.actor})"
        actions: list[Action] = [
            _audit("traffic.manual_restore", reason, who, details),
            EmitEvent(EventReason.PROMOTED, reason),
        ]
        return (
            replace(
                state.with_phase(Phase.SUCCEEDED, now),
                outcome=f"{promoted.name} promoted; {reason} at {now.isoformat()}",
                watched_percent=None,
            ),
            tuple(actions),
        )
    if replaced_by is not None:
        reason = (
            f"the promoted model {promoted.storage_uri or promoted.name} was replaced by hand "
            f"with {replaced_by} by {who.actor}, outside a rollout"
        )
    else:
        reason = (
            f"promoted revision {promoted.name} rolled back by hand to {share}% by "
            f"{who.actor}; {previous} serves the rest"
        )
    actions = [
        _audit("traffic.manual_rollback", reason, who, details),
        EmitEvent(EventReason.MANUAL_ROLLBACK, reason, "Warning"),
    ]
    return (
        replace(
            state.with_phase(Phase.MANUALLY_ROLLED_BACK, now),
            outcome=f"{promoted.name} promoted, then {reason} at {now.isoformat()}",
            watched_percent=share,
        ),
        tuple(actions),
    )
