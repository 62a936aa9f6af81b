"""Carrying out committed traffic intents against the cluster (the engine's outbox).

The engine commits a ``traffic.intent`` record and the rollout's new state first; then
:func:`carry_out` sends each pending intent through the router for the rollout's KServe
mode and says what became of it. Writing the outcome records, and deciding what the
rollout does next, stay with the engine: this module keeps no audit trail and no state,
and never touches the database (an import contract holds it to that).

What a failed write means:

* **Retryable** (409 Conflict, 429, 5xx, a timeout or a lost connection, a write refused
  because this replica no longer leads): the intent stays pending and is tried again after
  :func:`retry_delay`; every further try counts in ``kserve_canary_kube_write_retries_total``.
* **Refused for good** (:data:`PERMANENT_STATUSES`: 400, 403, 404 of an InferenceService
  that still exists, 405, 413, 415, 422): sending the same write again cannot succeed, so
  the intent fails with the apiserver's answer (:class:`Refusal`) and the engine pauses the
  rollout. A rollback is the exception: it is the safety action, so a refused rollback stays
  pending and is retried with backoff like a conflict, and the refusal is reported.
* 404 of the InferenceService itself (re-read to tell): the write is abandoned, the
  service is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from canary import aftercare
from canary.k8s.client import KubeError, NotFound
from canary.log import get_logger
from canary.model import RolloutState, SetTraffic
from canary.routing.base import Observed, TrafficRouter

__all__ = [
    "MAX_RETRY",
    "OUTBOX_RETRY",
    "PERMANENT_STATUSES",
    "Execution",
    "Pending",
    "Refusal",
    "Rejected",
    "RetryCounter",
    "WriteResult",
    "carry_out",
    "refusal_of",
    "retry_delay",
]

log = get_logger("canary.execution")

OUTBOX_RETRY = timedelta(seconds=1)
MAX_RETRY = timedelta(seconds=30)

Purpose = Literal["start", "step", "promote", "rollback", "reassert"]

PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 413, 415, 422})
"""HTTP statuses with which the apiserver refuses a write for good: the same write sent
again gets the same answer (a 404 only when the InferenceService itself still exists)."""

RetryCounter = Callable[[], None]
"""Called once for every Kubernetes write sent again (``record_kube_write_retry``)."""


@dataclass(frozen=True)
class Refusal:
    """The apiserver's answer to a write it refused for good."""

    status: int
    reason: str
    message: str
    causes: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.status} {self.reason}: {self.message or '(no message)'}"
        if self.causes and not all(cause in self.message for cause in self.causes):
            text += f" [{'; '.join(self.causes)}]"
        return text

    def evidence(self) -> dict[str, object]:
        return {
            "status": self.status,
            "api_reason": self.reason,
            "api_message": self.message,
            "causes": list(self.causes),
        }


def refusal_of(exc: BaseException) -> Refusal | None:
    """The refusal, when ``exc`` is an apiserver answer that refuses the write for good."""
    if isinstance(exc, KubeError) and exc.status in PERMANENT_STATUSES:
        return Refusal(exc.status, exc.reason, exc.message, exc.causes)
    return None


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
    outcome: Literal["applied", "abandoned", "failed"]
    reason: str
    refusal: Refusal | None = None  # "failed": what the apiserver said


@dataclass(frozen=True)
class Rejected:
    """A refused rollback: kept pending (and retried), reported each time its error changes."""

    pending: Pending
    at: datetime
    refusal: Refusal
    changed: bool  # the first refusal, or a different answer than the last try got


@dataclass(frozen=True)
class Execution:
    """The intents settled by one pass, and those to try again at ``retry_at``."""

    results: tuple[WriteResult, ...]
    remaining: tuple[Pending, ...]
    retry_at: datetime | None
    rejected: tuple[Rejected, ...] = ()  # refused rollbacks, among ``remaining``


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
    *,
    retried: RetryCounter | None = None,
) -> Execution:
    """Send each intent (their ``attempts`` already counted by the caller's claim)."""
    stable = state.stable.name if state.stable else None
    results: list[WriteResult] = []
    remaining: list[Pending] = []
    rejected: list[Rejected] = []
    where = {"namespace": state.namespace, "name": state.name}
    for queued in pending:
        now = clock()
        latest = observed.view.latest.name
        aim = aftercare.retarget(state, mode, queued.revision, queued.purpose, latest)
        intent = replace(queued, revision=aim)
        if latest not in (intent.revision, stable):
            reason = f"revision {latest} replaced {intent.revision} before the write"
            results.append(WriteResult(intent, now, "abandoned", reason))
            continue
        if intent.attempts > 1 and retried is not None:
            retried()
        try:
            router.apply(
                state.namespace,
                state.name,
                intent.action(),
                resource_version=observed.resource_version,
            )
        except Exception as exc:
            refusal = refusal_of(exc)
            if isinstance(exc, NotFound):
                gone = _gone(router, state)
                if gone:
                    reason = "the InferenceService is gone"
                    results.append(WriteResult(intent, now, "abandoned", reason))
                    continue
                if gone is None:
                    refusal = None  # cannot tell which object is missing: try again later
            error = str(exc)[:500]
            if refusal is None or intent.purpose == "rollback":
                # Conflict, Unavailable, a timeout: retried later. A refused rollback too:
                # it is the safety action, never given up.
                log.warning(
                    "rollout.traffic_write_failed", **where, revision=intent.revision,
                    percent=intent.percent, purpose=intent.purpose, error=str(exc),
                    attempts=intent.attempts, retrying=True,
                )  # fmt: skip
                if refusal is not None:
                    changed = queued.last_error != error
                    rejected.append(Rejected(intent, now, refusal, changed))
                remaining.append(replace(intent, last_error=error))
                continue
            log.error(
                "rollout.traffic_write_rejected", **where, revision=intent.revision,
                percent=intent.percent, purpose=intent.purpose, status=refusal.status,
                reason=refusal.reason, message=refusal.message, causes=list(refusal.causes),
                attempts=intent.attempts,
            )  # fmt: skip
            why = f"the apiserver refused the {intent.purpose} write: {refusal.describe()}"
            results.append(WriteResult(intent, now, "failed", why, refusal))
        else:
            reason = f"{intent.purpose}: {intent.revision} at {intent.percent}% written"
            results.append(WriteResult(intent, now, "applied", reason))
            log.info(
                "rollout.traffic_written", **where, revision=intent.revision,
                percent=intent.percent, purpose=intent.purpose,
            )  # fmt: skip
    retry_at = None
    if remaining:
        retry_at = clock() + retry_delay(max(p.attempts for p in remaining))
    return Execution(tuple(results), tuple(remaining), retry_at, tuple(rejected))


def _gone(router: TrafficRouter, state: RolloutState) -> bool | None:
    """Whether the InferenceService itself is gone (a 404 of anything else, such as a route
    kind the cluster does not serve, is a refusal); None when it cannot be read now."""
    try:
        router.observe(state.namespace, state.name)
    except NotFound:
        return True
    except Exception:
        return None
    return False
