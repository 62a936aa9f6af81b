"""What the operator commands do: queue a manual command and wait for the leader's answer,
and describe rollouts for ``canary status``.

Manual commands go through the database, not to a particular replica: any replica's
operator API (:mod:`canary.api.operator`) queues the command once the apiserver has
authenticated and authorised the caller, the leader carries it out and settles it in the
same transaction as the audit records it causes, and the API waits for that result.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from analysis.sequential_check import describe
from canary.access import COMMAND_NAMES
from canary.audit import AuditStore, CommandRow, Measurement, RolloutRow, StoredMeasurement
from canary.checks import (
    AGREEMENT_CHECK,
    SCORE_SHIFT_CHECK,
    SHADOW_PREFIX,
    check_definitions,
    shadow_checks,
)
from canary.engine import RolloutDocument, describe_wait
from canary.mirroring import mirroring
from canary.model import Phase
from canary.policy import format_duration

__all__ = [
    "StatusLine",
    "parse_target",
    "render_status",
    "shadow_lines",
    "status_lines",
    "submit_command",
]


def parse_target(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` → (namespace, name), with a clear error otherwise."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def submit_command(
    store: AuditStore,
    *,
    namespace: str,
    name: str,
    command: str,
    actor: str,
    reason: str,
    actor_uid: str | None = None,
    actor_groups: Sequence[str] = (),
    args: Mapping[str, Any] | None = None,
    wait: float = 30.0,
    poll: float = 0.2,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    command_id: str | None = None,
) -> CommandRow:
    """Queue ``command`` and wait up to ``wait`` seconds for the leader to settle it.

    ``actor``, ``actor_uid`` and ``actor_groups`` are the caller as the apiserver
    authenticated them (see :mod:`canary.access`). Returns the command as last read: still
    ``pending`` when no leader answered in time (it stays queued and a leader will carry it
    out later).
    """
    if command not in COMMAND_NAMES:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(COMMAND_NAMES)}")
    if not reason.strip():
        raise ValueError(
            "a reason is required for every manual command (--reason; --comment for approve "
            "and reject)"
        )
    if not actor.strip():
        raise ValueError("the caller is unknown: a command needs an authenticated user")
    row = store.submit_command(
        CommandRow(
            id=command_id or str(uuid.uuid4()),
            namespace=namespace,
            name=name,
            command=command,
            actor=actor,
            actor_uid=actor_uid,
            actor_groups=tuple(actor_groups),
            reason=reason,
            args=dict(args or {}),
            requested_at=clock(),
        )
    )
    deadline = time.monotonic() + wait
    while True:
        current = store.get_command(row.id) or row
        if current.state != "pending" or time.monotonic() >= deadline:
            return current
        time.sleep(poll)


@dataclass(frozen=True)
class StatusLine:
    namespace: str
    name: str
    phase: str
    step: str
    weights: str
    verdict: str
    next_action: str
    started: str
    evidence: tuple[str, ...] = ()
    approval: tuple[str, ...] = ()  # the approval awaited: change, state, deadline, who
    shadow: tuple[str, ...] = ()  # a shadow phase: the mirror, the comparison so far


def evidence_lines(doc: RolloutDocument, look_seconds: float) -> tuple[str, ...]:
    """Per sequential check, how far the evidence is from a decision (see
    :func:`analysis.sequential_check.describe`)."""
    if doc.state.terminal:
        return ()
    lines = []
    shadowing = doc.state.phase is Phase.SHADOWING
    checks = shadow_checks(doc.policy) if shadowing else check_definitions(doc.policy)
    for check in checks:
        if check.sequential:
            memory = doc.memory.get(check.name)
            state = memory.sequential if memory is not None else None
            lines.append(describe(check, state, look_seconds))
    return tuple(lines)


def shadow_lines(
    doc: RolloutDocument, now: datetime, measurements: Sequence[StoredMeasurement] = ()
) -> tuple[str, ...]:
    """For a rollout in its shadow phase: what is mirrored where, for how long, and the
    latest comparison of the challenger with the champion (each check's challenger and
    champion values and samples, as the last analysis recorded them)."""
    state = doc.state
    if not mirroring(doc):
        return ()
    shadow = doc.policy.shadow
    who = f"challenger {state.challenger}" if state.challenger else "dark launch"
    champion = state.stable.name if state.stable else "the stable revision"
    lines = [
        f"shadow ({who}, after: {shadow.after}): {shadow.mirror_percent}% of live requests "
        f"mirrored to {state.canary.name}, compared with {champion}; responses discarded"
    ]
    since = doc.mirror_applied_at
    if since is None:
        lines.append("mirror object not written yet")
    else:
        ran = max(now - since, timedelta(0))
        decide_by = state.phase_entered_at + shadow.deadline
        lines.append(
            f"mirroring for {format_duration(ran)} (minimum {format_duration(shadow.duration)}; "
            f"undecided at {decide_by:%H:%M:%S} UTC it "
            + ("pauses)" if shadow.after == "gate" else "ends as reported)")
        )
    latest: dict[str, Measurement] = {}
    for stored in measurements:
        m = stored.measurement
        if m.check.startswith(SHADOW_PREFIX):
            latest[m.check] = m
    for name, m in sorted(latest.items()):
        lines.append(f"{name}: {_compared(m, shadow.min_samples)}")
    return tuple(lines)


def _shadow(store: AuditStore | None, doc: RolloutDocument, now: datetime) -> tuple[str, ...]:
    """The shadow lines, reading the rollout's measurements only while it shadows."""
    if not mirroring(doc):
        return ()
    measured = store.measurements_for(doc.state.rollout_id) if store is not None else ()
    return shadow_lines(doc, now, measured)


def _compared(m: Measurement, min_samples: int) -> str:
    def value(v: float | None) -> str:
        return "no data" if v is None else f"{v:.4g}"

    samples = m.canary_samples if m.canary_samples is not None else 0
    more = "" if samples >= min_samples else f", {min_samples - samples} more samples needed"
    verdict = f"-> {m.verdict} at {m.evaluated_at:%H:%M:%S}"
    if m.check == AGREEMENT_CHECK:  # one value from both sides' decisions on the same pairs
        rate = "no data" if m.canary_value is None else f"{m.canary_value:.2%}"
        minimum = "" if m.threshold is None else f", minimum {m.threshold:.2%}"
        return f"agreement {rate} over {samples} pairs{minimum}{more} {verdict}"
    if m.check == SCORE_SHIFT_CHECK:
        limit = "" if m.threshold is None else f", maximum {m.threshold:g}"
        return (
            f"PSI {value(m.canary_value)} between {samples} challenger and "
            f"{m.baseline_samples or 0} champion scores{limit}{more} {verdict}"
        )
    return (
        f"challenger {value(m.canary_value)} vs champion {value(m.baseline_value)} "
        f"({samples} vs {m.baseline_samples or 0} samples{more}) {verdict}"
    )


def _approval(store: AuditStore, doc: RolloutDocument, now: datetime) -> tuple[str, ...]:
    """For a rollout awaiting approval: the change, its state, the deadline, who was asked,
    and the change system's last error."""
    state = doc.state
    approval = state.approval
    if approval is None or state.terminal or approval.status == "approved":
        return ()
    row = store.get_approval(state.rollout_id, state.canary.name, approval.step_index)
    gate = doc.policy.approval.gate.value
    group = doc.policy.approval.risk_owner_group or "-"
    left = approval.deadline - now
    due = (
        f"deadline {approval.deadline:%Y-%m-%d %H:%M:%S} UTC "
        f"({format_duration(max(left, timedelta(0)))} left, then "
        f"{doc.policy.approval.on_expiry})"
    )
    if row is None:
        return (f"approval ({gate}): {approval.status}, requested; {due}",)
    change = row.change_number or ("not opened yet" if gate == "servicenow" else "-")
    lines = [f"approval ({gate}): change {change}, {row.state}; {due}"]
    if gate == "webhook":
        asked = ", ".join(doc.policy.approval.approvers)
    else:
        asked = ", ".join(row.asked) or f"members of {group}"
    lines.append(f"asked: {asked} (group {group})")
    if row.last_error:
        lines.append(f"change system error: {row.last_error}")
    return tuple(lines)


def _line(
    row: RolloutRow, now: datetime, look_seconds: float = 5.0, store: AuditStore | None = None
) -> StatusLine:
    doc = RolloutDocument.from_row(row)
    state = doc.state
    steps = doc.policy.steps
    step = f"{state.step_index + 1}/{len(steps)}" if not state.terminal else "-"
    if state.terminal:
        weights = "-"
    else:
        stable = state.stable.name if state.stable else "stable"
        view = state.last_view
        canary_share = view.share(state.canary.name) if view else 0
        weights = (
            f"{state.canary.name}={canary_share}% {stable}={100 - canary_share}% "
            f"(target {state.target_percent}%)"
        )
    verdict = "-"
    if state.last_verdict is not None:
        v = state.last_verdict
        enough = "" if v.sufficient_data else ", collecting samples"
        verdict = f"{v.verdict.value}{enough} at {v.evaluated_at:%H:%M:%S}"
    return StatusLine(
        namespace=row.namespace,
        name=row.name,
        phase=state.phase.value,
        step=step,
        weights=weights,
        verdict=verdict,
        next_action=describe_wait(doc, now),
        started=f"{state.created_at:%Y-%m-%d %H:%M:%S}",
        evidence=evidence_lines(doc, look_seconds),
        approval=_approval(store, doc, now) if store is not None else (),
        shadow=_shadow(store, doc, now),
    )


def status_lines(
    store: AuditStore,
    *,
    namespace: str | None = None,
    name: str | None = None,
    include_finished: bool = False,
    now: datetime | None = None,
    look_seconds: float = 5.0,
) -> list[StatusLine]:
    """The rollouts' status; ``look_seconds`` is the controller's look period (to turn
    evidence per request into time)."""
    at = now or datetime.now(UTC)
    if include_finished or name is not None:
        rows = store.rollouts(namespace=namespace, name=name, limit=50)
        if name is not None and not include_finished:
            # the newest rollout of NAME in each namespace (one name may live in several)
            newest: dict[str, RolloutRow] = {}
            for row in rows:
                newest.setdefault(row.namespace, row)
            rows = list(newest.values())
    else:
        rows = store.rollouts(namespace=namespace, active=True)
    return [_line(row, at, look_seconds, store) for row in rows]


def render_status(lines: Sequence[StatusLine]) -> str:
    headers = ("NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHTS", "LAST VERDICT", "NEXT")
    table = [headers] + [
        (s.namespace, s.name, s.phase, s.step, s.weights, s.verdict, s.next_action) for s in lines
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
    out = []
    for index, row in enumerate(table):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.append("  ".join([*cells, row[-1]]).rstrip())
        if index > 0:
            out.extend(f"  {line}" for line in lines[index - 1].shadow)
            out.extend(f"  {line}" for line in lines[index - 1].approval)
            out.extend(f"  {line}" for line in lines[index - 1].evidence)
    return "\n".join(out)
