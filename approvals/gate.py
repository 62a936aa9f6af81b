"""Approval gates: the interface the controller uses, the storage they need, and the
ServiceNow gate's decision.

The flow, for a gate before a step (by default before 100 %):

1. ``request`` opens the approval, or finds it again: for ServiceNow, the normal change for
   the rollout and gate step (found by its correlation id, so a restart never opens a second
   one), then asks for approval (state Authorize). What was asked is saved through
   :class:`ApprovalStore` as a :class:`PendingApproval`.
2. ``decision`` re-reads the source of truth: for ServiceNow, the change and its approver
   records, the approvers' users and whether they belong to the risk-owner group. A webhook
   delivery only says *when* to look, never *what* was decided: a forged or replayed
   callback can at most cause a re-read.
3. The answer is a :class:`Decision`. Segregation of duties applies to approvals: the
   approver must be in the risk-owner group and must not be the requester, and the approval
   must fall inside the planned window. An approval that breaks a rule is a
   :class:`Violation`, recorded with the decision, and never counts as approval. A rejection
   stops the rollout whoever made it (refusing to promote is always safe).

:func:`servicenow_decision` is step 3 for ServiceNow, PURE: it takes what was read and the
time, and returns the decision. The gates' I/O and the store's implementation (the audit
store) live elsewhere; this package declares only what it needs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Literal, Protocol

from approvals.types import (
    ApproverRecord,
    ApproverState,
    Change,
    ChangeApproval,
    ChangeState,
    User,
    require_aware,
)

__all__ = [
    "ApprovalGate",
    "ApprovalKey",
    "ApprovalRequest",
    "ApprovalStore",
    "Decision",
    "GateKind",
    "Outcome",
    "PendingApproval",
    "PlannedWindow",
    "Rule",
    "Violation",
    "kubernetes_decision",
    "servicenow_decision",
    "webhook_decision",
]

GateKind = Literal["servicenow", "kubernetes", "webhook"]


class Outcome(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REFUSED = "refused"  # approved in the source, but no approval satisfies the rules


class Rule(StrEnum):
    NOT_IN_GROUP = "not_in_group"
    SELF_APPROVAL = "self_approval"
    OUTSIDE_WINDOW = "outside_window"
    UNKNOWN_APPROVER = "unknown_approver"
    NO_APPROVER = "no_approver"


@dataclass(frozen=True, slots=True)
class ApprovalKey:
    """One gate instance: a rollout's revision at one step."""

    rollout_id: str
    revision: str
    step_index: int
    attempt: int = 1  # asked again (after an expiry and a resume): a new change

    @property
    def correlation_id(self) -> str:
        base = f"kserve-canary:{self.rollout_id}:{self.step_index}"
        return base if self.attempt == 1 else f"{base}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        require_aware("PlannedWindow.start", self.start)
        require_aware("PlannedWindow.end", self.end)
        if self.end <= self.start:
            raise ValueError("a planned window must end after it starts")

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment <= self.end


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What the controller asks a gate for.

    ``requesters`` identify who asked (the person who started the rollout, the integration
    user): ServiceNow user sys_ids, user names or e-mail addresses; none of them may approve.
    """

    key: ApprovalKey
    risk_owner_group: str
    requesters: frozenset[str]
    deadline: datetime
    window: PlannedWindow
    short_description: str
    description: str
    model: str
    inference_service: str
    old_storage_uri: str | None
    new_storage_uri: str
    old_revision: str | None
    policy: str
    evidence: tuple[str, ...]
    audit_links: tuple[str, ...]

    def __post_init__(self) -> None:
        require_aware("ApprovalRequest.deadline", self.deadline)


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """An approval asked for and not yet decided, as the store keeps it."""

    key: ApprovalKey
    gate: GateKind
    risk_owner_group: str
    requesters: frozenset[str]
    requested_at: datetime
    deadline: datetime
    window: PlannedWindow
    change_number: str | None = None
    change_sys_id: str | None = None

    def __post_init__(self) -> None:
        require_aware("PendingApproval.requested_at", self.requested_at)
        require_aware("PendingApproval.deadline", self.deadline)


@dataclass(frozen=True, slots=True)
class Violation:
    """An approval that does not count, and why."""

    rule: Rule
    message: str
    approver: str | None = None  # user sys_id
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the source of truth says now. ``approver`` is whose answer decided (for an
    approval, one that satisfies every rule); ``violations`` lists approvals that did not
    count, to be recorded whatever the outcome."""

    outcome: Outcome
    reason: str
    checked_at: datetime
    change_number: str | None = None
    change_sys_id: str | None = None
    approver: str | None = None  # user sys_id (ServiceNow) or user name (other gates)
    approver_name: str | None = None
    decided_at: datetime | None = None
    comments: str = ""
    violations: tuple[Violation, ...] = field(default=())

    @property
    def counts_as_approval(self) -> bool:
        return self.outcome is Outcome.APPROVED


class ApprovalStore(Protocol):
    """The storage a gate needs (the audit store implements it)."""

    def pending(self, key: ApprovalKey) -> PendingApproval | None:
        """The approval asked for ``key``, if one was saved and not yet decided."""
        ...

    def save_pending(self, pending: PendingApproval) -> None: ...

    def record_decision(self, pending: PendingApproval, decision: Decision) -> None:
        """Keep a decision (and its violations) with the approval it answers."""
        ...


class ApprovalGate(Protocol):
    """A gate whose source of truth is a system we ask (ServiceNow). The Kubernetes and the
    signed-webhook gates decide from what reaches the controller, with
    :func:`kubernetes_decision` and :func:`webhook_decision`."""

    @property
    def kind(self) -> GateKind: ...

    def request(self, request: ApprovalRequest, now: datetime) -> PendingApproval:
        """Ask for approval, or find the request made before (idempotent per key)."""
        ...

    def decision(self, pending: PendingApproval, now: datetime) -> Decision:
        """Re-read the source of truth and decide; never trusts a callback's payload."""
        ...

    def asked(self, pending: PendingApproval) -> tuple[str, ...]:
        """Who has been asked and not answered yet (user names), for ``canary status``."""
        ...

    def add_note(self, pending: PendingApproval, text: str) -> None:
        """Tell the approvers something new (the evidence since the request)."""
        ...

    def close(
        self,
        pending: PendingApproval,
        code: Literal["successful", "successful_issues", "unsuccessful", "cancelled"],
        note: str,
    ) -> None:
        """Close (or cancel) the request when the rollout no longer needs it."""
        ...


# ------------------------------------------------------------------------------------------
# ServiceNow: the decision, pure
# ------------------------------------------------------------------------------------------


def servicenow_decision(
    change: Change,
    approvers: Sequence[ApproverRecord],
    users: Mapping[str, User],
    members: Collection[str],
    requesters: Collection[str],
    window: PlannedWindow | None,
    now: datetime,
) -> Decision:
    """Decide from what ServiceNow says now.

    ``users`` maps an approver's sys_id to its user; ``members`` holds the
    sys_ids of approvers that belong to the risk-owner group; ``requesters`` the sys_ids,
    user names or e-mails of whoever asked. The change's ``approval`` field gives the overall
    answer; the approver records say who gave it.
    """
    require_aware("now", now)
    base = partial(
        Decision, checked_at=now, change_number=change.number, change_sys_id=change.sys_id
    )
    by_time = sorted(approvers, key=lambda r: r.updated_at)

    if change.approval is ChangeApproval.REJECTED:
        rejecting = [r for r in by_time if r.state is ApproverState.REJECTED]
        if not rejecting:
            return base(Outcome.REJECTED, f"{change.number} was rejected in ServiceNow")
        first = rejecting[0]
        rejecter = users.get(first.approver)
        name = rejecter.user_name if rejecter is not None else first.approver
        comments = "\n".join(r.comments for r in rejecting if r.comments)
        return base(
            Outcome.REJECTED,
            f"{change.number} was rejected by {name}",
            approver=first.approver,
            approver_name=rejecter.user_name if rejecter is not None else None,
            decided_at=first.updated_at,
            comments=comments,
        )

    if change.state in (ChangeState.CANCELED, ChangeState.CLOSED):
        ended = "canceled" if change.state is ChangeState.CANCELED else "closed"
        return base(
            Outcome.REJECTED,
            f"{change.number} was {ended} in ServiceNow before the promotion",
        )

    if change.approval is not ChangeApproval.APPROVED:
        answered = sum(r.state is not ApproverState.REQUESTED for r in approvers)
        waiting = (
            "approval not requested yet"
            if change.approval is ChangeApproval.NOT_REQUESTED
            else f"awaiting approval ({answered} of {len(approvers)} approvers answered)"
        )
        return base(Outcome.PENDING, f"{change.number}: {waiting}")

    wanted = {r.casefold() for r in requesters}
    violations: list[Violation] = []
    for record in by_time:
        if record.state is not ApproverState.APPROVED:
            continue
        found = _check(record, users, members, wanted, window)
        if found:
            violations.extend(found)
            continue
        user_name = users[record.approver].user_name
        return base(
            Outcome.APPROVED,
            f"{change.number} was approved by {user_name}",
            approver=record.approver,
            approver_name=user_name,
            decided_at=record.updated_at,
            comments=record.comments,
            violations=tuple(violations) + _later_violations(by_time, record, users, members,
                                                            wanted, window),
        )  # fmt: skip
    if not violations:
        violations.append(
            Violation(
                Rule.NO_APPROVER,
                f"{change.number} is approved in ServiceNow, but no approver record shows who "
                "approved it",
            )
        )
    return base(
        Outcome.REFUSED,
        f"{change.number} is approved in ServiceNow, but no approval satisfies segregation of "
        "duties: " + "; ".join(v.message for v in violations),
        violations=tuple(violations),
    )


def _later_violations(
    by_time: Sequence[ApproverRecord],
    counted: ApproverRecord,
    users: Mapping[str, User],
    members: Collection[str],
    wanted: set[str],
    window: PlannedWindow | None,
) -> tuple[Violation, ...]:
    """Violations among the approvals after the one that counted: recorded too."""
    later = by_time[by_time.index(counted) + 1 :]
    found: list[Violation] = []
    for record in later:
        if record.state is ApproverState.APPROVED:
            found.extend(_check(record, users, members, wanted, window))
    return tuple(found)


def _check(
    record: ApproverRecord,
    users: Mapping[str, User],
    members: Collection[str],
    wanted: set[str],
    window: PlannedWindow | None,
) -> list[Violation]:
    def violation(rule: Rule, message: str) -> Violation:
        return Violation(rule, message, approver=record.approver, at=record.updated_at)

    if record.approver not in users:
        return [violation(Rule.UNKNOWN_APPROVER, f"approver {record.approver} is not a known user")]
    user = users[record.approver]
    user_name, email = user.user_name, user.email
    found: list[Violation] = []
    if record.approver not in members:
        found.append(violation(Rule.NOT_IN_GROUP, f"{user_name} is not in the risk-owner group"))
    identities = {record.approver.casefold(), user_name.casefold()}
    if email:
        identities.add(email.casefold())
    if identities & wanted:
        found.append(violation(Rule.SELF_APPROVAL, f"{user_name} requested this change"))
    if window is not None and not window.contains(record.updated_at):
        found.append(
            violation(
                Rule.OUTSIDE_WINDOW,
                f"{user_name} approved at {record.updated_at.isoformat()}, outside the planned "
                f"window {window.start.isoformat()} to {window.end.isoformat()}",
            )
        )
    return found


# ------------------------------------------------------------------------------------------
# The Kubernetes gate and the signed-webhook gate: the decision, pure
# ------------------------------------------------------------------------------------------


def kubernetes_decision(
    *,
    approved: bool,
    user: str,
    groups: Collection[str],
    risk_owner_group: str,
    requesters: Collection[str],
    window: PlannedWindow | None,
    comment: str,
    now: datetime,
) -> Decision:
    """A person's ``canary approve|reject``, as the apiserver identified them (TokenReview:
    ``user`` and ``groups``; RBAC already allowed the verb). An approval counts only from a
    member of ``risk_owner_group`` who did not start the rollout, inside the window; a
    rejection counts from anyone allowed to decide (refusing to promote is always safe)."""
    require_aware("now", now)
    if not approved:
        return Decision(
            Outcome.REJECTED, f"rejected by {user}", checked_at=now, approver=user,
            approver_name=user, decided_at=now, comments=comment,
        )  # fmt: skip
    violations: list[Violation] = []
    if risk_owner_group not in groups:
        violations.append(
            Violation(
                Rule.NOT_IN_GROUP,
                f"{user} is not in the risk-owner group {risk_owner_group} (the cluster says "
                f"their groups are: {', '.join(sorted(groups)) or 'none'})",
                approver=user,
                at=now,
            )
        )
    return _identity_checked(user, requesters, window, comment, now, violations)


def webhook_decision(
    *,
    approved: bool,
    approver: str,
    allowed: Collection[str],
    requesters: Collection[str],
    window: PlannedWindow | None,
    comment: str,
    now: datetime,
) -> Decision:
    """A signed decision from a firm's change system: the approver is who the signed payload
    names, and counts only if listed in the policy's ``approvers`` (compared without regard
    to case), did not start the rollout, and decided inside the window. A rejection by
    anyone the policy lists counts; one by someone else is refused like an approval."""
    require_aware("now", now)
    listed = {a.casefold() for a in allowed}
    violations: list[Violation] = []
    if approver.casefold() not in listed:
        violations.append(
            Violation(
                Rule.NOT_IN_GROUP, f"{approver} is not one of the policy's approvers",
                approver=approver, at=now,
            )
        )  # fmt: skip
    if not approved:
        if violations:
            return Decision(
                Outcome.REFUSED, violations[0].message, checked_at=now,
                violations=tuple(violations),
            )  # fmt: skip
        return Decision(
            Outcome.REJECTED, f"rejected by {approver}", checked_at=now, approver=approver,
            approver_name=approver, decided_at=now, comments=comment,
        )  # fmt: skip
    return _identity_checked(approver, requesters, window, comment, now, violations)


def _identity_checked(
    user: str,
    requesters: Collection[str],
    window: PlannedWindow | None,
    comment: str,
    now: datetime,
    violations: list[Violation],
) -> Decision:
    if user.casefold() in {r.casefold() for r in requesters}:
        violations.append(
            Violation(Rule.SELF_APPROVAL, f"{user} started this rollout", approver=user, at=now)
        )
    if window is not None and not window.contains(now):
        violations.append(
            Violation(
                Rule.OUTSIDE_WINDOW,
                f"{user} approved at {now.isoformat()}, outside the window "
                f"{window.start.isoformat()} to {window.end.isoformat()}",
                approver=user,
                at=now,
            )
        )
    if violations:
        return Decision(
            Outcome.REFUSED,
            "the approval does not count: " + "; ".join(v.message for v in violations),
            checked_at=now,
            violations=tuple(violations),
        )
    return Decision(
        Outcome.APPROVED, f"approved by {user}", checked_at=now, approver=user,
        approver_name=user, decided_at=now, comments=comment,
    )  # fmt: skip
