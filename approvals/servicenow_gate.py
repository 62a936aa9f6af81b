"""The ServiceNow change gate: :class:`approvals.gate.ApprovalGate` over
:class:`approvals.servicenow.ServiceNowClient`.

* ``request`` opens the normal change for the approval's correlation id (or finds the one a
  previous try or a previous process opened), then asks for approval (state Authorize).
* ``decision`` reads the change, its approver records, the approvers' users and whether each
  belongs to the risk-owner group, and lets :func:`approvals.gate.servicenow_decision`
  decide. The change's own ``requested_by`` is added to the requesters, so whoever the change
  names as its requester can never approve it.
* ``close`` closes the change with a close code, or cancels it.

Every call may raise :class:`approvals.servicenow.ServiceNowError`; the caller (the
controller's approval worker) keeps the approval pending and tries again later. Nothing here
keeps state beyond a cache of group sys_ids and of users (both read-only in ServiceNow for
our purposes, and re-read when the process restarts).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from approvals.gate import ApprovalRequest, Decision, PendingApproval, servicenow_decision
from approvals.servicenow import ChangeApi, ServiceNowClient, ServiceNowError
from approvals.types import ApproverState, Change, ChangeApproval, ChangeDraft, CloseCode, User

__all__ = ["ServiceNowGate"]


class ServiceNowGate:
    kind: Literal["servicenow"] = "servicenow"

    def __init__(self, client: ServiceNowClient, *, api: ChangeApi = "change") -> None:
        self._client = client
        self._api: ChangeApi = api
        self._groups: dict[str, str] = {}
        self._users: dict[str, User] = {}

    # -- asking ------------------------------------------------------------------------------

    def request(self, request: ApprovalRequest, now: datetime) -> PendingApproval:
        group = self._group_id(request.risk_owner_group)
        draft = ChangeDraft(
            short_description=request.short_description,
            description=request.description,
            correlation_id=request.key.correlation_id,
            model=request.model,
            inference_service=request.inference_service,
            old_storage_uri=request.old_storage_uri,
            new_storage_uri=request.new_storage_uri,
            old_revision=request.old_revision,
            new_revision=request.key.revision,
            policy=request.policy,
            evidence=request.evidence,
            audit_links=request.audit_links,
            assignment_group=group,
            planned_start=request.window.start,
            planned_end=request.window.end,
        )
        change = self._client.open_change(draft, api=self._api)
        if change.approval is ChangeApproval.NOT_REQUESTED and not change.finished:
            change = self._client.request_approval(change)
        return PendingApproval(
            key=request.key,
            gate="servicenow",
            risk_owner_group=request.risk_owner_group,
            requesters=request.requesters,
            requested_at=now,
            deadline=request.deadline,
            window=request.window,
            change_number=change.number,
            change_sys_id=change.sys_id,
        )

    # -- deciding ----------------------------------------------------------------------------

    def decision(self, pending: PendingApproval, now: datetime) -> Decision:
        change = self._change(pending)
        records = self._client.approvers(change)
        users: dict[str, User] = {}
        for record in records:
            if record.state is ApproverState.REQUESTED:
                continue
            users[record.approver] = self._user(record.approver)
        group = self._group_id(pending.risk_owner_group)
        members = {
            sys_id for sys_id in users if self._client.is_member(sys_id, group)
        }  # asked each time: a membership can be withdrawn while the change waits
        requesters = set(pending.requesters)
        if change.requested_by:
            requesters.add(change.requested_by)
        return servicenow_decision(change, records, users, members, requesters, pending.window, now)

    def asked(self, pending: PendingApproval) -> tuple[str, ...]:
        change = self._change(pending)
        names = [
            self._user(r.approver).user_name
            for r in self._client.approvers(change)
            if r.state is ApproverState.REQUESTED
        ]
        return tuple(sorted(names))

    # -- telling and closing -----------------------------------------------------------------

    def add_note(self, pending: PendingApproval, text: str) -> None:
        self._client.add_work_note(self._change(pending), text)

    def close(
        self,
        pending: PendingApproval,
        code: Literal["successful", "successful_issues", "unsuccessful", "cancelled"],
        note: str,
    ) -> None:
        change = self._change(pending)
        if code == "cancelled":
            self._client.cancel_change(change, note)
        else:
            self._client.close_change(change, CloseCode(code), note)

    # -- helpers -----------------------------------------------------------------------------

    def _change(self, pending: PendingApproval) -> Change:
        if pending.change_sys_id is None:
            raise ServiceNowError(
                None, f"no change has been opened yet for {pending.key.correlation_id}"
            )
        change = self._client.read_change(pending.change_sys_id)
        if change.correlation_id not in (None, "", pending.key.correlation_id):
            raise ServiceNowError(
                None,
                f"{change.number} carries correlation id {change.correlation_id!r}, not "
                f"{pending.key.correlation_id!r}: it is not this rollout's change",
            )
        return change

    def _group_id(self, name: str) -> str:
        if name not in self._groups:
            group = self._client.group(name)
            if group is None:
                raise ServiceNowError(
                    None,
                    f"ServiceNow has no group named {name!r} (the policy's riskOwnerGroup): "
                    "nobody could approve; create the group or fix the policy",
                )
            self._groups[name] = group.sys_id
        return self._groups[name]

    def _user(self, sys_id: str) -> User:
        if sys_id not in self._users:
            self._users[sys_id] = self._client.user(sys_id)
        return self._users[sys_id]

    def forget(self) -> None:
        """Drop the caches (a group renamed or recreated in ServiceNow)."""
        self._groups.clear()
        self._users.clear()
