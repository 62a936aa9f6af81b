"""What a verified approval webhook delivery does (:class:`canary.api.webhooks.ApprovalInbox`).

The receiver has already checked the signature and the body's shape. Here:

* **ServiceNow callback**: only a hint. The approval it names (by the change's sys_id and
  number) is marked for a re-read, and the approval worker reads the change and its approver
  records from ServiceNow and decides from that alone (:mod:`canary.approval_worker`). A
  forged or stale payload can at most cause one more read.
* **Generic signed-webhook gate**: the decision itself. The firm's change system signs who
  decided; the policy's ``approvers`` list and the rules of :func:`approvals.gate.
  webhook_decision` say whether it counts.

Every delivery is stored once by its ``webhook-id`` and chained with it
(``webhook.delivered``: the sender the signature vouches for, the digest, the outcome); a
duplicate, sent twice or twice at once, is answered 200, changes nothing and is not chained
again. A verified decision is written on the approval row with its record
(``approval.decision_verified``, carrying the row) in one transaction. A delivery for an
approval that was already decided, expired or closed, or for a superseded revision, changes
nothing and is recorded (``approval.late``). A decision that breaks the rules is recorded
(``approval.refused``) and never counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from approvals.gate import Decision, Outcome, webhook_decision
from canary.api.webhooks import (
    Delivery,
    GateDecision,
    InboxAnswer,
    InboxResult,
    ServiceNowCallback,
)
from canary.approval_flow import decision_json, pending_of, violations_json
from canary.approval_worker import ApprovalWorker
from canary.audit import Actor, ActorKind, ApprovalRow, AuditEntry, AuditStore, Fence, ObjectRef
from canary.audit.actors import APPROVAL_DECISION_VERIFIED
from canary.document import RolloutDocument
from canary.entries import Entries
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.model import EventReason
from canary.policy import ApprovalGateKind

__all__ = ["ApprovalInboxService"]

log = get_logger("canary.approval_inbox")


def _trigger(delivery: Delivery) -> dict[str, Any]:
    return {
        "webhook_id": delivery.webhook_id,
        "payload_digest": delivery.payload_digest,
        "received_at": delivery.received_at.isoformat(),
        "sent_at": delivery.sent_at.isoformat(),
        "source": delivery.source,
    }


class ApprovalInboxService:
    def __init__(
        self,
        *,
        store: AuditStore,
        worker: ApprovalWorker | None,
        leadership: Callable[[], Fence | None],
        enqueue: Callable[[str, str], None],
        instance: str,
        events: EventSink | None = None,
    ) -> None:
        self._store = store
        self._worker = worker
        self._leadership = leadership
        self._enqueue = enqueue
        self._entries = Entries(instance, leadership)
        self._events = events

    # -- ServiceNow --------------------------------------------------------------------------

    def servicenow_callback(self, delivery: Delivery, callback: ServiceNowCallback) -> InboxResult:
        change = callback.change
        row = self._store.approval_by_change(sys_id=change.sys_id)
        outcome = "accepted"
        detail = f"{change.number}: ServiceNow will be read again"
        if row is None or row.change_number != change.number:
            outcome = "unknown"
            detail = f"no approval waits on change {change.number} ({change.sys_id})"
        elif row.state != "pending":
            outcome = "gone"
            detail = f"{change.number}: the approval is already {row.state}; nothing changes"
        about = row.rollout_id if row is not None and outcome != "unknown" else None
        first = self._store.record_delivery(
            delivery.webhook_id,
            received_at=delivery.received_at,
            source="servicenow",
            payload_digest=delivery.payload_digest,
            signature_valid=True,
            outcome=outcome,
            actor=Actor("servicenow", "callback"),
            rollout_id=about,
            obj=self._service_of(about),
            context={
                "change_number": change.number,
                "change_sys_id": change.sys_id,
                "sent_at": delivery.sent_at,
                "detail": detail,
            },
        )
        if not first:
            return InboxResult(InboxAnswer.DUPLICATE, f"delivery {delivery.webhook_id} seen before")
        log.info(
            "webhook.servicenow_callback",
            change=change.number,
            webhook_id=delivery.webhook_id,
            outcome=outcome,
        )
        if row is None or outcome == "unknown":
            return InboxResult(InboxAnswer.UNKNOWN, detail)
        if outcome == "gone":
            self._late(row, delivery, detail, {"hint": callback.model_dump(mode="json")})
            return InboxResult(InboxAnswer.GONE, detail)
        if self._worker is not None:
            self._worker.recheck(row.id, _trigger(delivery))
        else:
            self._store.update_approval(
                row.id,
                only_if_state="pending",
                recheck_requested_at=delivery.received_at,
                trigger=_trigger(delivery),
            )
        return InboxResult(InboxAnswer.ACCEPTED, detail)

    # -- the generic signed-webhook gate ----------------------------------------------------

    def gate_decision(self, delivery: Delivery, decision: GateDecision) -> InboxResult:
        target = f"{decision.namespace}/{decision.name}"
        rollout = self._store.rollout_for(decision.namespace, decision.name)
        row: ApprovalRow | None = None
        doc: RolloutDocument | None = None
        answer, detail = InboxAnswer.ACCEPTED, ""
        if rollout is None:
            last = self._store.last_rollout_for(decision.namespace, decision.name)
            if last is None:
                answer, detail = InboxAnswer.UNKNOWN, f"no rollout of {target}"
            else:
                doc = RolloutDocument.from_row(last)
                answer = InboxAnswer.GONE
                detail = f"the rollout of {target} ended ({last.phase}); nothing changes"
        else:
            doc = RolloutDocument.from_row(rollout)
            state, policy = doc.state, doc.policy
            approval = state.approval
            if policy.approval.gate is not ApprovalGateKind.WEBHOOK:
                answer = InboxAnswer.UNKNOWN
                detail = (
                    f"{target} is under policy {policy.name}, which does not use the webhook gate"
                )
            elif decision.revision is not None and decision.revision != state.canary.name:
                answer = InboxAnswer.GONE
                detail = (
                    f"{decision.revision} is not the canary of {target} any more "
                    f"({state.canary.name} is); nothing changes"
                )
            elif approval is None or approval.status != "pending":
                answer = InboxAnswer.GONE
                status = approval.status if approval else "not asked"
                detail = f"{target} is not awaiting approval (approval {status}); nothing changes"
            else:
                row = self._store.get_approval(rollout.id, state.canary.name, approval.step_index)
                if row is None:
                    answer = InboxAnswer.UNKNOWN
                    detail = f"{target}: the approval request is not recorded yet; send it again"
        verdict: Decision | None = None
        if answer is InboxAnswer.ACCEPTED:
            assert row is not None
            assert doc is not None
            verdict = webhook_decision(
                approved=decision.decision == "approve",
                approver=decision.approver,
                allowed=doc.policy.approval.approvers,
                requesters=row.requesters,
                window=pending_of(row).window,
                comment=decision.comment,
                now=delivery.received_at,
            )
            if verdict.outcome is Outcome.REFUSED:  # stored as refused, not accepted
                answer = InboxAnswer.REFUSED
        first = self._store.record_delivery(
            delivery.webhook_id,
            received_at=delivery.received_at,
            source="webhook",
            payload_digest=delivery.payload_digest,
            signature_valid=True,
            outcome=answer.value,
            actor=Actor("webhook", decision.approver),
            rollout_id=doc.state.rollout_id if doc is not None else None,
            obj=ObjectRef(decision.namespace, decision.name),
            context={
                "decision": decision.model_dump(mode="json", by_alias=True),
                "sent_at": delivery.sent_at,
                "detail": detail,
            },
        )
        if not first:
            return InboxResult(InboxAnswer.DUPLICATE, f"delivery {delivery.webhook_id} seen before")
        evidence = {"decision": decision.model_dump(mode="json", by_alias=True)}
        if answer is InboxAnswer.GONE and doc is not None:
            self._late_doc(doc, delivery, detail, evidence, actor=decision.approver)
        if verdict is None:
            return InboxResult(answer, detail)
        assert row is not None
        assert doc is not None
        trigger = _trigger(delivery)
        if verdict.outcome is Outcome.REFUSED:
            entry = self._entries.entry(
                doc,
                delivery.received_at,
                action="approval.refused",
                reason=verdict.reason,
                actor=Actor("webhook", decision.approver),
                evidence={
                    "gate": "webhook",
                    "violations": violations_json(verdict.violations),
                    "comment": decision.comment,
                    "change_id": decision.change_id,
                    "revision": row.revision,
                    **trigger,
                },
            )
            self._store.commit([entry], fence=None)
            self._event(doc, EventReason.APPROVAL_REFUSED, f"{target}: {verdict.reason}")
            return InboxResult(InboxAnswer.REFUSED, verdict.reason)
        record = decision_json(verdict, "webhook", trigger) | {"change_id": decision.change_id}
        change_number = decision.change_id or row.change_number
        verified = self._entries.entry(
            doc,
            delivery.received_at,
            action=APPROVAL_DECISION_VERIFIED,
            reason=f"{target}: {verdict.reason}",
            actor=Actor("webhook", decision.approver),
            evidence={
                "gate": "webhook",
                "revision": row.revision,
                "decision": record,
                "change_number": change_number,
                **trigger,
            },
        )
        decided = self._store.update_approval(
            row.id,
            only_if_state="pending",
            record=replace(
                verified,
                change_number=change_number,
                approver=decision.approver,
                approval_time=delivery.received_at,
                webhook_id=delivery.webhook_id,
                payload_digest=delivery.payload_digest,
            ),
            state=verdict.outcome.value,
            approver=decision.approver,
            decided_at=delivery.received_at,
            decision=record,
            trigger=trigger,
            change_number=change_number,
        )
        if not decided:
            detail = f"{target}: the approval was decided meanwhile; nothing changes"
            self._late_doc(doc, delivery, detail, evidence, actor=decision.approver)
            return InboxResult(InboxAnswer.GONE, detail)
        self._enqueue(decision.namespace, decision.name)
        return InboxResult(InboxAnswer.ACCEPTED, f"{target}: {verdict.reason}")

    # -- helpers -----------------------------------------------------------------------------

    def _service_of(self, rollout_id: str | None) -> ObjectRef | None:
        rollout = self._store.get_rollout(rollout_id) if rollout_id is not None else None
        if rollout is None:
            return None
        return ObjectRef(rollout.namespace, rollout.name, rollout.isvc_uid)

    def _late(
        self, row: ApprovalRow, delivery: Delivery, detail: str, extra: dict[str, Any]
    ) -> None:
        rollout = self._store.get_rollout(row.rollout_id)
        if rollout is None:
            entry = AuditEntry(
                at=delivery.received_at,
                actor=Actor("servicenow", "callback"),
                action="approval.late",
                obj=ObjectRef("", row.rollout_id),
                reason=detail,
                evidence={"change_number": row.change_number, **_trigger(delivery), **extra},
            )
            self._store.commit([entry], fence=None)
            return
        doc = RolloutDocument.from_row(rollout)
        self._late_doc(
            doc,
            delivery,
            detail,
            {
                "change_number": row.change_number,
                "change_sys_id": row.change_sys_id,
                "approval_state": row.state,
                "revision": row.revision,
                **extra,
            },
        )

    def _late_doc(
        self,
        doc: RolloutDocument,
        delivery: Delivery,
        detail: str,
        extra: dict[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        kind: ActorKind = "servicenow" if delivery.source == "servicenow" else "webhook"
        entry = self._entries.entry(
            doc,
            delivery.received_at,
            action="approval.late",
            reason=detail,
            actor=Actor(kind, actor or "callback"),
            evidence={**_trigger(delivery), **extra},
        )
        self._store.commit([entry], fence=None)
        log.info("webhook.late", detail=detail, webhook_id=delivery.webhook_id)

    def _event(self, doc: RolloutDocument, reason: EventReason, message: str) -> None:
        if self._events is None:
            return
        target = ObjectReference(doc.state.namespace, doc.state.name, doc.uid)
        try:
            self._events.emit(target, reason, message, "Warning")
        except Exception as exc:  # events are best effort; the audit trail is not
            log.warning("webhook.event_failed", reason=reason.value, error=str(exc))
