"""Approvals off the command path: the change system is asked on a thread of its own.

The engine writes what the state machine decided into ``approvals`` rows (a request; later,
a close request) in the same transaction as the rollout (:mod:`canary.approval_flow`). This
worker, on the leader only, carries them out against the ServiceNow change gate and writes
back what ServiceNow said; the engine, woken through ``enqueue``, hands it to the machine:

* **open**: a pending row without a change gets one (found again by its correlation id after
  a restart or a lost answer, so never two); then its approvers are asked.
* **reconcile**: every ``poll_interval`` (60 s by default), and at once after a signed
  callback asked for it (:meth:`ApprovalWorker.recheck`), the change and its approver
  records are read again and decided by :func:`approvals.gate.servicenow_decision`. ServiceNow
  sends nothing by itself, so polling is the source of truth; a callback only makes it
  sooner. An approval that breaks segregation of duties is recorded (``approval.refused``,
  an ``ApprovalRefused`` Event) once per distinct set of violations, and never counts.
* **notes**: while the change waits, new evidence (the latest analysis verdict) is added as
  a work note, at most once per ``stepHold`` of the policy.
* **close**: a row whose rollout ended is closed in ServiceNow with its close code
  (``successful``, ``unsuccessful``) or cancelled, with the reason as close notes.

Every write of the row that an auditor reads is chained in the same transaction, with the
row as written (:mod:`canary.audit.actors`): ``approval.change_created``,
``approval.asked``, ``approval.decision_verified``, ``approval.refused``,
``approval.change_closed`` / ``approval.closed``; the worker's bookkeeping (when it last
read, its last error, notes sent) is not.

ServiceNow down, rate-limiting or failing: the row keeps its state (the rollout keeps waiting,
and the machine's deadline still applies), the error is kept on the row for ``canary
status``, counted, and the call is tried again with a growing delay.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from approvals.gate import (
    ApprovalGate,
    ApprovalRequest,
    Decision,
    Outcome,
    PendingApproval,
)
from approvals.servicenow import ServiceNowError
from canary.approval_flow import decision_json, pending_of, violations_json
from canary.audit import Actor, ApprovalRow, AuditEntry, AuditError, AuditStore, Fence
from canary.audit.actors import (
    APPROVAL_ASKED,
    APPROVAL_CHANGE_CLOSED,
    APPROVAL_CHANGE_CREATED,
    APPROVAL_CLOSED,
    APPROVAL_DECISION_VERIFIED,
    APPROVAL_REFUSED,
)
from canary.document import RolloutDocument
from canary.entries import Entries
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.model import EventReason
from canary.ops import evidence_lines

__all__ = ["ApprovalMetrics", "ApprovalWorker"]

log = get_logger("canary.approval_worker")

_MAX_BACKOFF = timedelta(minutes=5)
_FIRST_BACKOFF = timedelta(seconds=2)


class ApprovalMetrics(Protocol):
    def record_approval(self, gate: str, outcome: str) -> None: ...
    def record_change_system_error(self, system: str, operation: str) -> None: ...
    def set_pending_approvals(self, count: int, oldest_seconds: float) -> None: ...


@dataclass
class _Backoff:
    until: datetime
    delay: timedelta


class ApprovalWorker:
    def __init__(
        self,
        *,
        store: AuditStore,
        gates: Mapping[str, ApprovalGate],
        leadership: Callable[[], Fence | None],
        clock: Callable[[], datetime],
        enqueue: Callable[[str, str], None],
        instance: str,
        events: EventSink | None = None,
        metrics: ApprovalMetrics | None = None,
        poll_interval: timedelta = timedelta(seconds=60),
        tick: float = 1.0,
        look_seconds: float = 5.0,
    ) -> None:
        if poll_interval <= timedelta(0):
            raise ValueError("the approval poll interval must be positive")
        self._store = store
        self._gates = dict(gates)
        self._leadership = leadership
        self._clock = clock
        self._enqueue = enqueue
        self._instance = instance
        self._entries = Entries(instance, leadership)
        self._events = events
        self._metrics = metrics
        self._poll = poll_interval
        self._tick = tick
        self._look_seconds = look_seconds  # the controller's look period, to tell time
        self._backoff: dict[str, _Backoff] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ksc-approvals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._leadership() is not None:
                try:
                    self.run_once()
                except AuditError as exc:
                    log.warning("approvals.store_unavailable", error=str(exc))
                except Exception:  # the loop must survive a bug in one pass
                    log.exception("approvals.pass_failed")
            self._wake.wait(self._tick)
            self._wake.clear()

    def recheck(self, approval_id: str, trigger: Mapping[str, object]) -> None:
        """A signed callback asked for a re-read of this approval (its payload is only a
        hint: what counts is what the change system says when it is read)."""
        self._store.update_approval(
            approval_id,
            only_if_state="pending",
            recheck_requested_at=self._clock(),
            trigger=dict(trigger),
        )
        self._backoff.pop(approval_id, None)
        self.wake()

    # -- one pass ----------------------------------------------------------------------------

    def run_once(self) -> None:
        now = self._clock()
        pending = self._store.pending_approvals()
        self._report_pending(pending, now)
        for row in pending:
            gate = self._gates.get(row.gate)
            if gate is None:
                self._unconfigured(row)
                continue
            if self._waiting(row.id, now):
                continue
            doc = self._document(row)
            if doc is None:
                continue  # the engine closes what its rollout no longer needs
            try:
                if row.change_sys_id is None:
                    self._open(gate, row, doc, now)
                else:
                    if self._due(row, now):
                        self._check(gate, row, doc, now)
                    self._note(gate, row, doc, now)
            except ServiceNowError as exc:
                self._failed(row, "open" if row.change_sys_id is None else "read", exc, now)
        for row in self._store.approvals_to_close():
            self._close(row, now)

    def _document(self, row: ApprovalRow) -> RolloutDocument | None:
        rollout = self._store.get_rollout(row.rollout_id)
        if rollout is None or not rollout.active:
            return None
        doc = RolloutDocument.from_row(rollout)
        approval = doc.state.approval
        if (
            approval is None
            or approval.status != "pending"
            or doc.state.canary.name != row.revision
            or approval.step_index != row.step_index
        ):
            return None
        return doc

    def _unconfigured(self, row: ApprovalRow) -> None:
        """A gate that asks a change system this controller is not configured for: say so
        on the row (``canary status``), once. The approval cannot arrive; its deadline
        still applies."""
        if row.gate != "servicenow" or row.last_error is not None:
            return
        why = (
            "ServiceNow is not configured (servicenow_url): no change can be opened, and the "
            "approval will expire at its deadline"
        )
        self._store.update_approval(row.id, last_error=why)
        log.error("approvals.gate_not_configured", gate=row.gate, approval=row.id)

    def _due(self, row: ApprovalRow, now: datetime) -> bool:
        if row.last_checked_at is None:
            return True
        if row.recheck_requested_at is not None and row.recheck_requested_at >= row.last_checked_at:
            return True
        return now - row.last_checked_at >= self._poll

    # -- open --------------------------------------------------------------------------------

    def _open(
        self, gate: ApprovalGate, row: ApprovalRow, doc: RolloutDocument, now: datetime
    ) -> None:
        request = _request(row, doc, self._look_seconds)
        opened = gate.request(request, now)
        asked = _asked(gate, opened)
        record = self._change_record(
            doc,
            now,
            APPROVAL_CHANGE_CREATED,
            f"change {opened.change_number} opened for {row.revision} at {row.percent}%; "
            f"asked: {', '.join(asked) or 'nobody yet'}",
            row,
            opened,
            asked=list(asked),
        )
        stored = self._store.update_approval(
            row.id,
            only_if_state="pending",
            record=record,
            change_number=opened.change_number,
            change_sys_id=opened.change_sys_id,
            last_error=None,
            asked=asked,
            noted_digest=_evidence_digest(doc),
            noted_at=now,
        )
        self._backoff.pop(row.id, None)
        if not stored:  # the rollout stopped needing it while the change was being opened
            log.info("approvals.opened_too_late", change=opened.change_number, approval=row.id)
            self._cancel_late(gate, row, doc, opened, now)
            return
        log.info(
            "approvals.change_opened",
            change=opened.change_number,
            namespace=doc.state.namespace,
            name=doc.state.name,
            revision=row.revision,
            asked=list(asked),
        )
        self._event(
            doc,
            EventReason.APPROVAL_REQUESTED,
            f"change {opened.change_number} asks {row.risk_owner_group} to approve "
            f"{row.revision} at {row.percent}% (asked: {', '.join(asked) or 'nobody yet'})",
        )
        self._enqueue(doc.state.namespace, doc.state.name)

    def _cancel_late(
        self,
        gate: ApprovalGate,
        row: ApprovalRow,
        doc: RolloutDocument,
        opened: PendingApproval,
        now: datetime,
    ) -> None:
        """A change opened for a row the engine closed meanwhile (it saw no change to close)
        is put on the row to be cancelled like any other: tried again while ServiceNow
        fails, and recorded. Cancelled at once only if the row moved on to a new attempt."""
        current = self._store.approval_by_id(row.id)
        if (
            current is not None
            and current.state != "pending"
            and current.attempt == row.attempt
            and current.change_sys_id is None
        ):
            note = current.close_note or "the rollout no longer needed this approval"
            record = self._change_record(
                doc,
                now,
                APPROVAL_CHANGE_CREATED,
                f"change {opened.change_number} opened after the approval ended "
                f"({current.state}); it is to be cancelled",
                row,
                opened,
                late=True,
            )
            self._store.update_approval(
                row.id,
                record=record,
                change_number=opened.change_number,
                change_sys_id=opened.change_sys_id,
                close_code="cancelled",
                close_note=note,
                closed_at=None,
            )
            return
        gate.close(opened, "cancelled", "the rollout no longer needed this approval")

    def _change_record(
        self,
        doc: RolloutDocument,
        at: datetime,
        action: str,
        reason: str,
        row: ApprovalRow,
        change: PendingApproval | None = None,
        **evidence: Any,
    ) -> AuditEntry:
        """A record of what the worker did to ``row`` (the store adds the row as written)."""
        number = change.change_number if change is not None else row.change_number
        sys_id = change.change_sys_id if change is not None else row.change_sys_id
        entry = self._entries.entry(
            doc,
            at,
            action=action,
            reason=reason,
            evidence={
                "gate": row.gate,
                "change_number": number,
                "change_sys_id": sys_id,
                "revision": row.revision,
                **evidence,
            },
        )
        return replace(entry, change_number=number, change_sys_id=sys_id)

    # -- decide ------------------------------------------------------------------------------

    def _check(
        self, gate: ApprovalGate, row: ApprovalRow, doc: RolloutDocument, now: datetime
    ) -> None:
        pending = pending_of(row)
        decision = gate.decision(pending, now)
        self._backoff.pop(row.id, None)
        asked = _asked(gate, pending) if decision.outcome is Outcome.PENDING else row.asked
        if asked != row.asked:
            self._store.update_approval(
                row.id,
                last_checked_at=now,
                last_error=None,
                asked=asked,
                record=self._change_record(
                    doc,
                    now,
                    APPROVAL_ASKED,
                    f"{row.change_number} asks {', '.join(asked) or 'nobody'}",
                    row,
                    asked=list(asked),
                    previously_asked=list(row.asked),
                ),
            )
        else:
            self._store.update_approval(row.id, last_checked_at=now, last_error=None)
        if decision.violations:
            self._refused(row, doc, decision, now)
        if decision.outcome in (Outcome.APPROVED, Outcome.REJECTED):
            record = decision_json(decision, row.gate, row.trigger)
            decided_at = decision.decided_at or now
            verified = self._change_record(
                doc,
                now,
                APPROVAL_DECISION_VERIFIED,
                f"{row.change_number} {decision.outcome.value} by "
                f"{decision.approver_name or decision.approver}: {decision.reason}",
                row,
                decision=record,
            )
            if decision.approver_name or decision.approver:
                verified = replace(
                    verified,
                    actor=Actor(
                        "servicenow" if row.gate == "servicenow" else "webhook",
                        str(decision.approver_name or decision.approver),
                        uid=decision.approver,
                    ),
                )
            decided = self._store.update_approval(
                row.id,
                only_if_state="pending",
                record=replace(verified, approver=decision.approver, approval_time=decided_at),
                state=decision.outcome.value,
                approver=decision.approver,
                decided_at=decided_at,
                decision=record,
            )
            if decided:
                log.info(
                    "approvals.decided",
                    change=row.change_number,
                    outcome=decision.outcome.value,
                    approver=decision.approver_name,
                    webhook_id=record["webhook_id"],
                )
                if self._metrics is not None:
                    self._metrics.record_approval(row.gate, decision.outcome.value)
                self._enqueue(doc.state.namespace, doc.state.name)

    def _refused(
        self, row: ApprovalRow, doc: RolloutDocument, decision: Decision, now: datetime
    ) -> None:
        """Record approvals that did not count, once per distinct set."""
        found = violations_json(decision.violations)
        digest = hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()
        if digest == row.refused_digest:
            return
        fence = self._leadership()
        if fence is None:
            return
        trigger = row.trigger or {}
        entry = self._entries.entry(
            doc,
            self._clock(),
            action=APPROVAL_REFUSED,
            reason=f"{row.change_number}: an approval that does not count: "
            + "; ".join(v["message"] for v in found),
            evidence={
                "gate": row.gate,
                "change_number": row.change_number,
                "change_sys_id": row.change_sys_id,
                "revision": row.revision,
                "violations": found,
                "webhook_id": trigger.get("webhook_id"),
                "payload_digest": trigger.get("payload_digest"),
                "outcome": decision.outcome.value,
            },
        )
        # one write: a refusal is recorded exactly once
        self._store.update_approval(row.id, refused_digest=digest, record=entry, fence=fence)
        if self._metrics is not None:
            self._metrics.record_approval(row.gate, "refused")
        log.warning("approvals.refused", change=row.change_number, violations=found)
        self._event(
            doc,
            EventReason.APPROVAL_REFUSED,
            f"{row.change_number}: approval does not count: "
            + "; ".join(v["message"] for v in found),
            "Warning",
        )

    # -- notes -------------------------------------------------------------------------------

    def _note(
        self, gate: ApprovalGate, row: ApprovalRow, doc: RolloutDocument, now: datetime
    ) -> None:
        digest = _evidence_digest(doc)
        verdict = doc.state.last_verdict
        if verdict is None or digest == row.noted_digest:
            return
        if row.noted_at is not None and now - row.noted_at < doc.policy.step_hold:
            return
        text = "\n".join(
            (
                f"kserve-canary: new evidence for {row.revision} at "
                f"{doc.state.target_percent}% ({verdict.evaluated_at.isoformat()}): "
                f"{verdict.verdict.value}; {verdict.summary}",
                *evidence_lines(doc, self._look_seconds),
            )
        )
        # Marked first: a note whose answer is lost is not sent twice.
        self._store.update_approval(row.id, noted_digest=digest, noted_at=now)
        try:
            gate.add_note(pending_of(row), text)
        except ServiceNowError as exc:
            log.warning("approvals.note_failed", change=row.change_number, error=str(exc))
            if self._metrics is not None:
                self._metrics.record_change_system_error(row.gate, "note")

    # -- close -------------------------------------------------------------------------------

    def _close(self, row: ApprovalRow, now: datetime) -> None:
        gate = self._gates.get(row.gate)
        if gate is None or row.change_sys_id is None:
            reason = (
                f"approval {row.id} ({row.state}) closed: no change was opened"
                if row.change_sys_id is None
                else f"{row.change_number} left open: the {row.gate} gate is not configured"
            )
            self._store.update_approval(
                row.id, closed_at=now, record=self._close_record(row, now, APPROVAL_CLOSED, reason)
            )
            return
        if self._waiting(row.id, now):
            return
        code = row.close_code or "cancelled"
        if code not in ("successful", "successful_issues", "unsuccessful", "cancelled"):
            code = "cancelled"
        try:
            gate.close(pending_of(row), code, row.close_note or "closed by kserve-canary")  # type: ignore[arg-type]
        except ServiceNowError as exc:
            self._failed(row, "close", exc, now)
            return
        closed_at = self._clock()  # when it was closed, not when this pass began
        reason = f"{row.change_number} closed {code}: {row.close_note or ''}".rstrip(": ")
        record = self._close_record(row, closed_at, APPROVAL_CHANGE_CLOSED, reason, code)
        self._store.update_approval(row.id, closed_at=now, last_error=None, record=record)
        self._backoff.pop(row.id, None)
        log.info("approvals.change_closed", change=row.change_number, close_code=code)

    def _close_record(
        self, row: ApprovalRow, at: datetime, action: str, reason: str, code: str | None = None
    ) -> AuditEntry:
        evidence: dict[str, Any] = {
            "change_number": row.change_number,
            "change_sys_id": row.change_sys_id,
            "close_code": code or row.close_code,
            "revision": row.revision,
        }
        rollout = self._store.get_rollout(row.rollout_id)
        if rollout is not None:
            doc = RolloutDocument.from_row(rollout)
            entry = self._entries.entry(doc, at, action=action, reason=reason, evidence=evidence)
        else:
            fence = self._leadership()
            entry = AuditEntry(
                at=at,
                actor=Actor("controller", self._instance),
                action=action,
                rollout_id=row.rollout_id,
                reason=reason,
                evidence=evidence,
                leader_epoch=fence.epoch if fence is not None else None,
            )
        return replace(entry, change_number=row.change_number, change_sys_id=row.change_sys_id)

    # -- helpers -----------------------------------------------------------------------------

    def _failed(
        self, row: ApprovalRow, operation: str, exc: ServiceNowError, now: datetime
    ) -> None:
        previous = self._backoff.get(row.id)
        delay = min(previous.delay * 2, _MAX_BACKOFF) if previous else _FIRST_BACKOFF
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            delay = max(delay, timedelta(seconds=float(retry_after)))
        self._backoff[row.id] = _Backoff(now + delay, delay)
        self._store.update_approval(row.id, last_error=f"{operation}: {exc}"[:2000])
        if self._metrics is not None:
            self._metrics.record_change_system_error(row.gate, operation)
        log.warning(
            "approvals.change_system_failed",
            change=row.change_number,
            operation=operation,
            error=str(exc),
            retry_in=delay.total_seconds(),
        )

    def _waiting(self, approval_id: str, now: datetime) -> bool:
        backoff = self._backoff.get(approval_id)
        return backoff is not None and now < backoff.until

    def _report_pending(self, rows: list[ApprovalRow], now: datetime) -> None:
        if self._metrics is None:
            return
        oldest = min((r.requested_at for r in rows), default=None)
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        self._metrics.set_pending_approvals(len(rows), max(age, 0.0))

    def _event(
        self,
        doc: RolloutDocument,
        reason: EventReason,
        message: str,
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> None:
        if self._events is None:
            return
        target = ObjectReference(doc.state.namespace, doc.state.name, doc.uid)
        try:
            self._events.emit(target, reason, message, type_)
        except Exception as exc:  # events are best effort; the audit trail is not
            log.warning("approvals.event_failed", reason=reason.value, error=str(exc))


def _asked(gate: ApprovalGate, pending: PendingApproval) -> tuple[str, ...]:
    try:
        return gate.asked(pending)
    except ServiceNowError as exc:
        log.warning("approvals.asked_unknown", change=pending.change_number, error=str(exc))
        return ()


def _evidence_digest(doc: RolloutDocument) -> str:
    verdict = doc.state.last_verdict
    if verdict is None:
        return ""
    text = f"{verdict.step_index}|{verdict.verdict.value}|{verdict.summary}"
    return hashlib.sha256(text.encode()).hexdigest()


def _request(row: ApprovalRow, doc: RolloutDocument, look_seconds: float) -> ApprovalRequest:
    state, policy = doc.state, doc.policy
    pending = pending_of(row)
    stable = state.stable
    verdict = state.last_verdict
    evidence: list[str] = []
    if verdict is not None:
        evidence.append(
            f"step {verdict.step_index + 1} ({policy.steps[verdict.step_index]}%): "
            f"{verdict.verdict.value} at {verdict.evaluated_at.isoformat()}"
            + ("" if verdict.sufficient_data else " (not enough data yet)")
            + (f" - {verdict.summary}" if verdict.summary else "")
        )
    evidence.extend(evidence_lines(doc, look_seconds))
    target = f"{state.namespace}/{state.name}"
    percent = row.percent if row.percent is not None else policy.steps[row.step_index]
    return ApprovalRequest(
        key=pending.key,
        risk_owner_group=pending.risk_owner_group,
        requesters=pending.requesters,
        deadline=pending.deadline,
        window=pending.window,
        short_description=f"Promote {state.canary.name} of {target} to {percent}%",
        description=(
            f"kserve-canary asks to promote the canary {state.canary.name} of the "
            f"InferenceService {target} to {percent}% of traffic, under policy {policy.name}. "
            f"The approval must arrive before {pending.deadline.isoformat()}; after that the "
            f"policy will {policy.approval.on_expiry} the rollout."
        ),
        model=state.canary.storage_uri or state.canary.name,
        inference_service=target,
        old_storage_uri=stable.storage_uri if stable else None,
        new_storage_uri=state.canary.storage_uri or "(unknown)",
        old_revision=stable.name if stable else None,
        policy=policy.name,
        evidence=tuple(evidence) or ("no analysis verdict yet",),
        audit_links=(
            f"kserve-canary audit trail: rollout {state.rollout_id} "
            f"(`canary audit verify`; records approval.requested and traffic.*)",
        ),
    )
