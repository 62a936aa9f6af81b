"""The values approvals reason about: ServiceNow changes, their approver records and users,
and the change we ask for.

PURE: frozen dataclasses and enums, no I/O. ServiceNow's answers are checked (with Pydantic)
in :mod:`approvals.servicenow` and arrive here as these values; an unknown state or approval
value is an error there, never a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Self

__all__ = [
    "ApproverRecord",
    "ApproverState",
    "Change",
    "ChangeApproval",
    "ChangeDraft",
    "ChangeState",
    "CloseCode",
    "Group",
    "UnknownValue",
    "User",
    "check_query_value",
    "check_sys_id",
    "require_aware",
]

_SYS_ID = re.compile(r"[0-9a-f]{32}")
# ServiceNow's correlation_id column holds at most 100 characters.
CORRELATION_ID_MAX = 100


class UnknownValue(ValueError):
    """A value ServiceNow sent that is not one we know (a state, an approval, a close code)."""


class ChangeState(IntEnum):
    """A change request's ``state`` (its numeric choice value)."""

    NEW = -5
    ASSESS = -4
    AUTHORIZE = -3
    SCHEDULED = -2
    IMPLEMENT = -1
    REVIEW = 0
    CLOSED = 3
    CANCELED = 4

    @classmethod
    def parse(cls, value: object) -> ChangeState:
        """``-2``, ``"-2"``, ``3.0`` and ``"3.0"`` are states; anything else is an error."""
        number: float
        if isinstance(value, bool):
            raise UnknownValue(f"change state {value!r} is not a number")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise UnknownValue(f"change state {value!r} is not a number") from None
        else:
            raise UnknownValue(f"change state {value!r} is not a number")
        if not math.isfinite(number) or number != int(number):
            raise UnknownValue(f"change state {value!r} is not a whole number")
        try:
            return cls(int(number))
        except ValueError:
            known = ", ".join(f"{s.value} {s.name.title()}" for s in cls)
            raise UnknownValue(f"unknown change state {value!r} (known: {known})") from None


class _Choice(StrEnum):
    @classmethod
    def parse(cls, value: object) -> Self:
        for member in cls:
            if value == member.value:
                return member
        known = ", ".join(repr(m.value) for m in cls)
        raise UnknownValue(f"unknown {cls._label()} {value!r} (known: {known})")

    @classmethod
    def _label(cls) -> str:
        return cls.__name__


class ChangeApproval(_Choice):
    """A change request's overall ``approval`` field."""

    NOT_REQUESTED = "not requested"
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"

    @classmethod
    def _label(cls) -> str:
        return "change approval"


class ApproverState(_Choice):
    """The ``state`` of one ``sysapproval_approver`` record (one person asked)."""

    NOT_REQUESTED = "not requested"
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @classmethod
    def _label(cls) -> str:
        return "approver state"


class CloseCode(_Choice):
    SUCCESSFUL = "successful"
    SUCCESSFUL_ISSUES = "successful_issues"
    UNSUCCESSFUL = "unsuccessful"

    @classmethod
    def _label(cls) -> str:
        return "close code"


def check_sys_id(value: str, what: str = "sys_id") -> str:
    """``value`` if it is a ServiceNow sys_id (32 lowercase hex digits), else ValueError."""
    if not _SYS_ID.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a ServiceNow sys_id (32 lowercase hex digits)")
    return value


def check_query_value(value: str, what: str) -> str:
    """``value`` if it can stand in an encoded query (``field=value^...``) as one value.

    ``^`` separates the terms of an encoded query, so a value holding one would add terms of
    its own; control characters have no place in the names and ids we look up.
    """
    if not value or "^" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} must be non-empty, without '^' or control characters")
    return value


def require_aware(what: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")


@dataclass(frozen=True, slots=True)
class Change:
    """A change request as ServiceNow last described it."""

    sys_id: str
    number: str
    state: ChangeState
    approval: ChangeApproval
    correlation_id: str | None
    assignment_group: str | None
    requested_by: str | None
    planned_start: datetime | None
    planned_end: datetime | None
    close_code: CloseCode | None

    def __post_init__(self) -> None:
        check_sys_id(self.sys_id, "change sys_id")
        if not self.number:
            raise ValueError("a change needs a number")
        require_aware("Change.planned_start", self.planned_start)
        require_aware("Change.planned_end", self.planned_end)

    @property
    def finished(self) -> bool:
        """Closed or canceled: the change authorises nothing any more."""
        return self.state in (ChangeState.CLOSED, ChangeState.CANCELED)


@dataclass(frozen=True, slots=True)
class ApproverRecord:
    """One person asked to approve a change (a ``sysapproval_approver`` record)."""

    sys_id: str
    approver: str
    state: ApproverState
    comments: str
    updated_at: datetime

    def __post_init__(self) -> None:
        check_sys_id(self.sys_id, "approver record sys_id")
        check_sys_id(self.approver, "approver user sys_id")
        require_aware("ApproverRecord.updated_at", self.updated_at)


@dataclass(frozen=True, slots=True)
class User:
    sys_id: str
    user_name: str
    name: str
    email: str

    def __post_init__(self) -> None:
        check_sys_id(self.sys_id, "user sys_id")


@dataclass(frozen=True, slots=True)
class Group:
    sys_id: str
    name: str

    def __post_init__(self) -> None:
        check_sys_id(self.sys_id, "group sys_id")


@dataclass(frozen=True, slots=True)
class ChangeDraft:
    """The normal change we ask for, before ServiceNow has it.

    ``correlation_id`` is the idempotency key (``kserve-canary:<rollout id>:<gate step>``):
    one change per rollout and gate, found again after a restart. ``evidence`` holds one line
    per check (verdict, sample counts, evidence at the moment of the request);
    ``audit_links`` point at the audit records behind it. ``assignment_group`` is the sys_id of
    the risk-owner group; ``requested_by`` a user sys_id, or None to let ServiceNow name the
    authenticated user.
    """

    short_description: str
    description: str
    correlation_id: str
    model: str
    inference_service: str
    old_storage_uri: str | None
    new_storage_uri: str
    old_revision: str | None
    new_revision: str
    policy: str
    evidence: tuple[str, ...]
    audit_links: tuple[str, ...]
    assignment_group: str
    planned_start: datetime
    planned_end: datetime
    requested_by: str | None = None

    def __post_init__(self) -> None:
        if not self.short_description.strip():
            raise ValueError("a change needs a short description")
        check_query_value(self.correlation_id, "correlation id")
        if len(self.correlation_id) > CORRELATION_ID_MAX:
            raise ValueError(
                f"correlation id {self.correlation_id!r} is longer than ServiceNow keeps "
                f"({CORRELATION_ID_MAX} characters)"
            )
        check_sys_id(self.assignment_group, "assignment group")
        if self.requested_by is not None:
            check_sys_id(self.requested_by, "requested_by")
        require_aware("ChangeDraft.planned_start", self.planned_start)
        require_aware("ChangeDraft.planned_end", self.planned_end)
        if self.planned_end <= self.planned_start:
            raise ValueError(
                f"the planned window ends ({self.planned_end.isoformat()}) before it starts "
                f"({self.planned_start.isoformat()})"
            )
