"""Carrying out committed traffic intents against the cluster (the engine's outbox).

The engine commits a ``traffic.intent`` record and the rollout's new state first; then
:func:`carry_out` sends each pending intent through the router for the rollout's KServe
mode and says what became of it. Writing the outcome records, and deciding what the
rollout does next, stay with the engine: this module keeps no audit trail and no state,
and never touches the database (an import contract holds it to that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from canary import aftercare
from canary.k8s.client import NotFound
from canary.log import get_logger
from canary.model import RolloutState, SetTraffic
from canary.routing.base import Observed, TrafficRouter

__all__ = [
    "MAX_RETRY",
    "OUTBOX_RETRY",
    "Execution",
    "Pending",
    "WriteResult",
    "carry_out",
    "retry_delay",
]

log = get_logger("canary.execution")

OUTBOX_RETRY = timedelta(seconds=1)
MAX_RETRY = timedelta(seconds=30)

Purpose = Literal["start", "step", "promote", "rollback", "reassert"]


@dataclass(frozen=True)
class Pending:
    """A traffic intent committed but not yet known to be applied (the outbox)."""

    correlation_id: str
    revision: str
    percent: int
    purpose: Purpose
    attempts: int = 0
    last_error: str | None = None

    def action(self) -> SetTraffic:
        return SetTraffic(self.revision, self.percent, self.purpose)


@dataclass(frozen=True)
class WriteResult:
    """What became of one intent that will not be tried again."""

    pending: Pending  # as it was sent (retargeted, attempts counted)
    at: datetime
    outcome: Literal["applied", "abandoned"]
    reason: str


@dataclass(frozen=True)
class Execution:
    """The intents settled by one pass, and those to try again at ``retry_at``."""

    results: tuple[WriteResult, ...]
    remaining: tuple[Pending, ...]
    retry_at: datetime | None


def retry_delay(attempts: int) -> timedelta:
    """The wait before the next try of an intent tried ``attempts`` times: 1 s doubling
    to 30 s."""
    return min(OUTBOX_RETRY * (1 << min(max(attempts, 1) - 1, 16)), MAX_RETRY)


def carry_out(
    router: TrafficRouter,
    state: RolloutState,
    mode: str,
    pending: Sequence[Pending],
    observed: Observed,
    clock: Callable[[], datetime],
) -> Execution:
    """Send each intent (their ``attempts`` already counted by the caller's claim)."""
    stable = state.stable.name if state.stable else None
    results: list[WriteResult] = []
    remaining: list[Pending] = []
    for queued in pending:
        now = clock()
        latest = observed.view.latest.name
        aim = aftercare.retarget(state, mode, queued.revision, queued.purpose, latest)
        intent = replace(queued, revision=aim)
        if latest not in (intent.revision, stable):
            reason = f"revision {latest} replaced {intent.revision} before the write"
            results.append(WriteResult(intent, now, "abandoned", reason))
            continue
        try:
            router.apply(
                state.namespace,
                state.name,
                intent.action(),
                resource_version=observed.resource_version,
            )
        except NotFound:
            results.append(WriteResult(intent, now, "abandoned", "the InferenceService is gone"))
        except Exception as exc:  # Conflict, Unavailable, Invalid...: retried later
            log.warning(
                "rollout.traffic_write_failed",
                namespace=state.namespace,
                name=state.name,
                revision=intent.revision,
                percent=intent.percent,
                error=str(exc),
                attempts=intent.attempts,
            )
            remaining.append(replace(intent, last_error=str(exc)[:500]))
        else:
            reason = f"{intent.purpose}: {intent.revision} at {intent.percent}% written"
            results.append(WriteResult(intent, now, "applied", reason))
            log.info(
                "rollout.traffic_written",
                namespace=state.namespace,
                name=state.name,
                revision=intent.revision,
                percent=intent.percent,
                purpose=intent.purpose,
            )
    retry_at = None
    if remaining:
        retry_at = clock() + retry_delay(max(p.attempts for p in remaining))
    return Execution(tuple(results), tuple(remaining), retry_at)
