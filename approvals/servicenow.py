"""The ServiceNow client: normal changes, their approvals, approver records, users and groups.

Over :class:`approvals.transport.Transport` (the product's one HTTP module). Every answer is
checked with Pydantic before it becomes a value of :mod:`approvals.types`; an answer that
does not have the shape ServiceNow documents is a :class:`ServiceNowError`, never a guess.
Both value shapes are read: plain strings (the Table API with
``sysparm_display_value=false``) and ``{"value", "display_value"}`` objects (the Change
Management API); numbers are accepted where strings are expected.

Robustness:

* every request has a timeout;
* 429 waits for ``Retry-After`` (seconds, capped at :attr:`RetryPolicy.max_retry_after`);
  5xx answers and connection failures are retried with doubling backoff, at most
  :attr:`RetryPolicy.attempts` tries, and never past the call's total
  :attr:`RetryPolicy.budget` (waits included);
* a request that is not safe to repeat (creating a change, adding a work note, asking for
  approval) is repeated only when it certainly never reached ServiceNow (no connection, or a
  429). Otherwise creating and asking for approval first re-read ServiceNow to see whether
  the first try took effect, so a restart or a lost answer never opens a second change;
* OAuth tokens are cached until shortly before ``expires_in``; a 401 fetches a new one once,
  then fails.

The clock and the sleep are injected: tests never sleep. Log events are ``servicenow.*``.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import structlog
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from approvals.transport import HttpResponse, Transport, TransportError
from approvals.types import (
    ApproverRecord,
    ApproverState,
    Change,
    ChangeApproval,
    ChangeDraft,
    ChangeState,
    CloseCode,
    Group,
    User,
    check_query_value,
    check_sys_id,
)

__all__ = [
    "CHANGE_API_PATH",
    "TABLE_API_PATH",
    "TOKEN_PATH",
    "BasicAuth",
    "ChangeApi",
    "OAuthClientCredentials",
    "OAuthPassword",
    "RetryPolicy",
    "ServiceNowAuth",
    "ServiceNowClient",
    "ServiceNowError",
    "change_fields",
]

ChangeApi = Literal["change", "table"]
CHANGE_API_PATH = "/api/sn_chg_rest/change/normal"
TABLE_API_PATH = "/api/now/table"
TOKEN_PATH = "/oauth_token.do"  # noqa: S105 - a path, not a secret
_CHANGES = f"{TABLE_API_PATH}/change_request"
# Plain values: choice values, references as sys_ids, dates as UTC "YYYY-MM-DD HH:MM:SS".
_PLAIN = {"sysparm_display_value": "false", "sysparm_exclude_reference_link": "true"}
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

_log = structlog.get_logger("approvals.servicenow")


# ------------------------------------------------------------------------------------------
# errors, authentication, retry policy
# ------------------------------------------------------------------------------------------


class ServiceNowError(Exception):
    """ServiceNow refused, failed, did not answer, or answered something malformed.

    ``status`` is the HTTP status (None when there was no answer); ``message`` and
    ``detail`` come from ServiceNow's error body when it sent one. ``retryable`` says that
    asking again later may succeed (a 429, a 5xx, no answer).
    """

    def __init__(
        self, status: int | None, message: str, detail: str = "", *, retryable: bool = False
    ) -> None:
        self.status = status
        self.message = message
        self.detail = detail
        self.retryable = retryable
        text = f"ServiceNow: {message}"
        if detail:
            text += f" ({detail})"
        if status is not None:
            text += f" [HTTP {status}]"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OAuthPassword:
    """OAuth's password grant: the integration user's credentials and the OAuth client's."""

    client_id: str
    client_secret: str = field(repr=False)
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class OAuthClientCredentials:
    client_id: str
    client_secret: str = field(repr=False)


ServiceNowAuth = BasicAuth | OAuthPassword | OAuthClientCredentials


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4  # tries of one request, the first included
    backoff: float = 0.5  # seconds before the second try; doubled for each further one
    max_backoff: float = 8.0
    max_retry_after: float = 60.0  # a longer Retry-After is cut to this
    budget: float = 120.0  # one call's total time, waits included

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.backoff, self.max_backoff, self.max_retry_after, self.budget) < 0:
            raise ValueError("backoff, max_backoff, max_retry_after and budget must be >= 0")


# ------------------------------------------------------------------------------------------
# answers, checked
# ------------------------------------------------------------------------------------------


def _unwrap(value: Any) -> Any:
    """``{"value": v, "display_value": ...}`` (or a reference ``{"link", "value"}``) → v."""
    if isinstance(value, dict):
        if "value" not in value:
            raise ValueError(f"an object without 'value': {sorted(value)}")
        return value["value"]
    return value


def _text(value: Any) -> str:
    value = _unwrap(value)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def _optional_sys_id(value: Any) -> str | None:
    text = _text(value)
    return check_sys_id(text) if text else None


def _when(value: Any) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        return datetime.strptime(text, _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a date-time 'YYYY-MM-DD HH:MM:SS'") from None


def _optional_close_code(value: Any) -> CloseCode | None:
    text = _text(value)
    return CloseCode.parse(text) if text else None


_Text = Annotated[str, BeforeValidator(_text)]
_SysId = Annotated[str, BeforeValidator(_text), AfterValidator(check_sys_id)]
_OptionalSysId = Annotated[str | None, BeforeValidator(_optional_sys_id)]
_When = Annotated[datetime | None, BeforeValidator(_when)]
_State = Annotated[ChangeState, BeforeValidator(lambda v: ChangeState.parse(_unwrap(v)))]
_Approval = Annotated[ChangeApproval, BeforeValidator(lambda v: ChangeApproval.parse(_text(v)))]
_ApproverState = Annotated[ApproverState, BeforeValidator(lambda v: ApproverState.parse(_text(v)))]
_OptionalCloseCode = Annotated[CloseCode | None, BeforeValidator(_optional_close_code)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _ChangeRecord(_Record):
    sys_id: _SysId
    number: Annotated[_Text, Field(min_length=1)]
    state: _State
    approval: _Approval
    correlation_id: _Text = ""
    assignment_group: _OptionalSysId = None
    requested_by: _OptionalSysId = None
    start_date: _When = None
    end_date: _When = None
    close_code: _OptionalCloseCode = None

    def value(self) -> Change:
        return Change(
            sys_id=self.sys_id,
            number=self.number,
            state=self.state,
            approval=self.approval,
            correlation_id=self.correlation_id or None,
            assignment_group=self.assignment_group,
            requested_by=self.requested_by,
            planned_start=self.start_date,
            planned_end=self.end_date,
            close_code=self.close_code,
        )


class _ApproverRecord(_Record):
    sys_id: _SysId
    approver: _SysId
    state: _ApproverState
    comments: _Text = ""
    sys_updated_on: Annotated[datetime, BeforeValidator(_when)]
    sysapproval: _OptionalSysId = None


class _User(_Record):
    sys_id: _SysId
    user_name: _Text
    name: _Text = ""
    email: _Text = ""


class _Group(_Record):
    sys_id: _SysId
    name: _Text


class _Membership(_Record):
    group: _SysId
    user: _SysId


class _Token(_Record):
    access_token: Annotated[str, Field(min_length=1)]
    expires_in: Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _results(body: Any, what: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise ServiceNowError(None, f"malformed answer for {what}: no 'result' list")
    return list(body["result"])


def _result(body: Any, what: str) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("result"), dict):
        raise ServiceNowError(None, f"malformed answer for {what}: no 'result' object")
    return body["result"]


_M = TypeVar("_M", bound="_Record")


def _parse(model: type[_M], data: Any, what: str) -> _M:
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()
        )
        raise ServiceNowError(None, f"malformed answer for {what}", problems) from None


def _error_text(response: HttpResponse) -> tuple[str, str]:
    """ServiceNow's ``{"error": {"message", "detail"}, "status": "failure"}``, or OAuth's
    ``{"error": "...", "error_description": "..."}``; else the status and the body's start."""
    fallback = (f"HTTP {response.status}", response.text[:200].strip())
    try:
        body = response.json()
    except ValueError:
        return fallback
    if not isinstance(body, dict):
        return fallback
    error = body.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or "").strip()
        detail = str(error.get("detail") or "").strip()
        return (message or fallback[0], detail)
    if isinstance(error, str) and error:
        return (error, str(body.get("error_description") or "").strip())
    return fallback


def _retry_after(response: HttpResponse) -> float | None:
    raw = response.header("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None  # an HTTP date or junk: fall back to our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _when_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_DATE_FORMAT)


def change_fields(draft: ChangeDraft) -> dict[str, str]:
    """The fields of the normal change we open for ``draft`` (plain strings, dates UTC)."""
    old_uri = draft.old_storage_uri or "(none)"
    old_revision = draft.old_revision or "(none)"
    details = [
        f"Model: {draft.model}",
        f"InferenceService: {draft.inference_service}",
        f"New storageUri: {draft.new_storage_uri} (revision {draft.new_revision})",
        f"Current storageUri: {old_uri} (revision {old_revision})",
        f"Policy: {draft.policy}",
    ]
    evidence = list(draft.evidence) or ["(no evidence yet)"]
    links = list(draft.audit_links) or ["(none)"]
    description = "\n".join(
        [draft.description.strip(), "", *details, "", "Audit records:", *links]
    ).strip()
    fields = {
        "short_description": draft.short_description,
        "description": description,
        "correlation_id": draft.correlation_id,
        "correlation_display": "kserve-canary",
        "assignment_group": draft.assignment_group,
        "start_date": _when_text(draft.planned_start),
        "end_date": _when_text(draft.planned_end),
        "category": "Software",
        "justification": (
            f"Promote {draft.model} ({draft.inference_service}) to revision "
            f"{draft.new_revision} for all traffic, under policy {draft.policy}."
        ),
        "risk_impact_analysis": "\n".join(
            ["Canary analysis at the time of the request:", *evidence]
        ),
        "implementation_plan": (
            "kserve-canary moves the remaining traffic to the new revision once this change "
            "is approved, within the planned window."
        ),
        "backout_plan": (
            f"kserve-canary routes all traffic back to revision {old_revision} ({old_uri})."
        ),
        "test_plan": (
            "Sequential checks against the baseline revision, as the policy defines them; "
            "new evidence is added to this change as work notes."
        ),
    }
    if draft.requested_by is not None:
        fields["requested_by"] = draft.requested_by
    return fields


# ------------------------------------------------------------------------------------------
# the client
# ------------------------------------------------------------------------------------------


class ServiceNowClient:
    def __init__(
        self,
        transport: Transport,
        auth: ServiceNowAuth,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the timeout must be positive, not {timeout}")
        self._transport = transport
        self._auth = auth
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._token: str | None = None
        self._token_until = 0.0

    # -- changes ---------------------------------------------------------------------------

    def find_change(self, correlation_id: str) -> Change | None:
        """The newest change carrying ``correlation_id``, or None."""
        return self._find_change(correlation_id, None)

    def _find_change(self, correlation_id: str, deadline: float | None) -> Change | None:
        check_query_value(correlation_id, "correlation id")
        body = self._send(
            "GET",
            _CHANGES,
            params={
                **_PLAIN,
                "sysparm_query": f"correlation_id={correlation_id}^ORDERBYDESCsys_created_on",
                "sysparm_limit": "1",
            },
            deadline=deadline,
        )
        records = _results(body, "a change by correlation id")
        if not records:
            return None
        change = _parse(_ChangeRecord, records[0], "a change by correlation id").value()
        if change.correlation_id != correlation_id:
            # ServiceNow ignores a query it cannot apply and answers every record instead.
            raise ServiceNowError(
                None,
                f"asked for the change with correlation id {correlation_id!r}, got "
                f"{change.number} with {change.correlation_id!r}",
            )
        return change

    def open_change(self, draft: ChangeDraft, *, api: ChangeApi = "change") -> Change:
        """The change for ``draft.correlation_id``: the existing one if ServiceNow has it
        (after a restart, or when an earlier try's answer was lost), else a new one."""
        deadline = self._clock() + self._retry.budget
        attempt = 0
        while True:
            attempt += 1
            existing = self._find_change(draft.correlation_id, deadline)
            if existing is not None:
                _log.info(
                    "servicenow.change_found",
                    number=existing.number,
                    sys_id=existing.sys_id,
                    correlation_id=draft.correlation_id,
                    state=existing.state.name,
                    approval=existing.approval.value,
                )
                return existing
            try:
                created = self._create(draft, api, deadline)
            except ServiceNowError as exc:
                if not exc.retryable:
                    raise
                self._pause_or_raise(exc, attempt, deadline, None, "POST", "a new change")
                continue
            if created.correlation_id != draft.correlation_id:
                raise ServiceNowError(
                    None,
                    f"{created.number} was created without our correlation id "
                    f"{draft.correlation_id!r} (it has {created.correlation_id!r}): it could "
                    "not be found again after a restart; check the integration user's rights "
                    "on change_request.correlation_id",
                )
            _log.info(
                "servicenow.change_opened",
                number=created.number,
                sys_id=created.sys_id,
                correlation_id=draft.correlation_id,
                api=api,
            )
            return created

    def _create(self, draft: ChangeDraft, api: ChangeApi, deadline: float) -> Change:
        fields = change_fields(draft)
        params: Mapping[str, str] | None = None
        path = CHANGE_API_PATH
        if api == "table":
            path, params = _CHANGES, _PLAIN
            fields["type"] = "normal"
        body = self._send(
            "POST", path, json=fields, params=params, repeatable=False, deadline=deadline
        )
        return _parse(_ChangeRecord, _result(body, "a new change"), "a new change").value()

    def read_change(self, sys_id: str) -> Change:
        return self._read_change(sys_id, None)

    def _read_change(self, sys_id: str, deadline: float | None) -> Change:
        check_sys_id(sys_id, "change sys_id")
        body = self._send("GET", f"{_CHANGES}/{sys_id}", params=_PLAIN, deadline=deadline)
        change = _parse(_ChangeRecord, _result(body, "a change"), "a change").value()
        if change.sys_id != sys_id:
            raise ServiceNowError(None, f"asked for change {sys_id}, got {change.sys_id}")
        return change

    def request_approval(self, change: Change) -> Change:
        """Move a new change to Authorize (``state`` -3), which asks its approvers. A change
        whose approval was already requested (or decided) is returned as it is."""
        deadline = self._clock() + self._retry.budget
        attempt = 0
        current = change
        while True:
            attempt += 1
            if attempt > 1:
                current = self._read_change(change.sys_id, deadline)
            if current.approval is not ChangeApproval.NOT_REQUESTED or current.state not in (
                ChangeState.NEW,
                ChangeState.ASSESS,
            ):
                _log.info(
                    "servicenow.approval_already_requested",
                    number=current.number,
                    state=current.state.name,
                    approval=current.approval.value,
                )
                return current
            try:
                updated = self._patch(
                    current.sys_id, {"state": str(int(ChangeState.AUTHORIZE))}, False, deadline
                )
            except ServiceNowError as exc:
                if not exc.retryable:
                    raise
                self._pause_or_raise(exc, attempt, deadline, None, "PATCH", change.number)
                continue
            _log.info(
                "servicenow.approval_requested",
                number=updated.number,
                state=updated.state.name,
                approval=updated.approval.value,
            )
            return updated

    def add_work_note(self, change: Change, text: str) -> None:
        """Append a work note. Not repeated once it may have reached ServiceNow (a second
        copy would be a second journal entry): a retryable error is left to the caller."""
        if not text.strip():
            raise ValueError("a work note needs text")
        self._patch(change.sys_id, {"work_notes": text}, False, None)
        _log.info("servicenow.work_note_added", number=change.number, characters=len(text))

    def close_change(self, change: Change, code: CloseCode, notes: str) -> Change:
        if change.finished:
            _log.info("servicenow.change_already_finished", number=change.number)
            return change
        fields = {"state": str(int(ChangeState.CLOSED)), "close_code": code.value}
        updated = self._patch(change.sys_id, {**fields, "close_notes": notes}, True, None)
        _log.info("servicenow.change_closed", number=change.number, close_code=code.value)
        return updated

    def cancel_change(self, change: Change, notes: str) -> Change:
        if change.finished:
            _log.info("servicenow.change_already_finished", number=change.number)
            return change
        fields = {"state": str(int(ChangeState.CANCELED)), "close_notes": notes}
        updated = self._patch(change.sys_id, fields, True, None)
        _log.info("servicenow.change_cancelled", number=change.number)
        return updated

    def _patch(
        self, sys_id: str, fields: Mapping[str, str], repeatable: bool, deadline: float | None
    ) -> Change:
        check_sys_id(sys_id, "change sys_id")
        body = self._send(
            "PATCH",
            f"{_CHANGES}/{sys_id}",
            json=dict(fields),
            params=_PLAIN,
            repeatable=repeatable,
            deadline=deadline,
        )
        return _parse(
            _ChangeRecord, _result(body, "an updated change"), "an updated change"
        ).value()

    # -- approvers, users, groups ----------------------------------------------------------

    def approvers(self, change: Change) -> tuple[ApproverRecord, ...]:
        """The approver records of ``change``: who was asked, and what each answered."""
        body = self._send(
            "GET",
            f"{TABLE_API_PATH}/sysapproval_approver",
            params={**_PLAIN, "sysparm_query": f"sysapproval={change.sys_id}"},
        )
        records: list[ApproverRecord] = []
        for raw in _results(body, f"the approvers of {change.number}"):
            parsed = _parse(_ApproverRecord, raw, f"an approver of {change.number}")
            if parsed.sysapproval is not None and parsed.sysapproval != change.sys_id:
                raise ServiceNowError(
                    None,
                    f"asked for the approvers of {change.number}, got one for {parsed.sysapproval}",
                )
            records.append(
                ApproverRecord(
                    sys_id=parsed.sys_id,
                    approver=parsed.approver,
                    state=parsed.state,
                    comments=parsed.comments,
                    updated_at=parsed.sys_updated_on,
                )
            )
        return tuple(records)

    def user(self, sys_id: str) -> User:
        check_sys_id(sys_id, "user sys_id")
        body = self._send("GET", f"{TABLE_API_PATH}/sys_user/{sys_id}", params=_PLAIN)
        parsed = _parse(_User, _result(body, "a user"), "a user")
        if parsed.sys_id != sys_id:
            raise ServiceNowError(None, f"asked for user {sys_id}, got {parsed.sys_id}")
        return User(
            sys_id=parsed.sys_id, user_name=parsed.user_name, name=parsed.name, email=parsed.email
        )

    def group(self, name: str) -> Group | None:
        """The group named ``name``, or None; two groups of that name are an error."""
        check_query_value(name, "group name")
        body = self._send(
            "GET",
            f"{TABLE_API_PATH}/sys_user_group",
            params={**_PLAIN, "sysparm_query": f"name={name}", "sysparm_limit": "2"},
        )
        found = [_parse(_Group, r, "a group") for r in _results(body, f"group {name!r}")]
        if any(g.name != name for g in found):
            raise ServiceNowError(None, f"asked for group {name!r}, got {found[0].name!r}")
        if len(found) > 1:
            raise ServiceNowError(None, f"more than one group is named {name!r}")
        return Group(sys_id=found[0].sys_id, name=found[0].name) if found else None

    def is_member(self, user_sys_id: str, group_sys_id: str) -> bool:
        check_sys_id(user_sys_id, "user sys_id")
        check_sys_id(group_sys_id, "group sys_id")
        body = self._send(
            "GET",
            f"{TABLE_API_PATH}/sys_user_grmember",
            params={
                **_PLAIN,
                "sysparm_query": f"group={group_sys_id}^user={user_sys_id}",
                "sysparm_limit": "1",
            },
        )
        found = [_parse(_Membership, r, "a membership") for r in _results(body, "a membership")]
        for membership in found:
            if (membership.user, membership.group) != (user_sys_id, group_sys_id):
                # A query ServiceNow could not apply would list every membership.
                raise ServiceNowError(
                    None,
                    f"asked whether {user_sys_id} is in group {group_sys_id}, got the "
                    f"membership of {membership.user} in {membership.group}",
                )
        return bool(found)

    # -- requests --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        repeatable: bool = True,
        authenticate: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """One call: the JSON body of its 2xx answer, or a ServiceNowError."""
        if deadline is None:
            deadline = self._clock() + self._retry.budget
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            headers = {"Accept": "application/json"}
            if authenticate:
                headers["Authorization"] = self._authorization(deadline)
            try:
                response = self._transport.request(
                    method,
                    path,
                    json=json,
                    data=form,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                )
            except TransportError as exc:
                failure = ServiceNowError(None, f"{method} {path}: no answer", str(exc))
                if exc.maybe_sent and not repeatable:
                    raise _retryable(failure, "not repeated: it may have taken effect") from exc
                self._pause_or_raise(failure, attempt, deadline, None, method, path)
                continue
            status = response.status
            if 200 <= status < 300:
                try:
                    return response.json()
                except ValueError:
                    raise ServiceNowError(
                        status, f"{method} {path}: the answer is not JSON", response.text[:200]
                    ) from None
            message, detail = _error_text(response)
            failure = ServiceNowError(status, f"{method} {path}: {message}", detail)
            if status == 401 and authenticate and self._uses_oauth and not renewed:
                renewed = True
                attempt -= 1
                self._token = None
                _log.info("servicenow.reauthenticating", method=method, path=path)
                continue
            if status == 429:
                wait = _retry_after(response)
                self._pause_or_raise(failure, attempt, deadline, wait, method, path)
                continue
            if status >= 500:
                if not repeatable:
                    raise _retryable(failure, "not repeated: it may have taken effect")
                self._pause_or_raise(failure, attempt, deadline, None, method, path)
                continue
            _log.warning(
                "servicenow.request_refused", method=method, path=path, status=status,
                message=message, detail=detail,
            )  # fmt: skip
            raise failure

    def _pause_or_raise(
        self,
        failure: ServiceNowError,
        attempt: int,
        deadline: float,
        retry_after: float | None,
        method: str,
        what: str,
    ) -> None:
        """Sleep before the next try, or raise ``failure`` when none is left."""
        policy = self._retry
        if attempt >= policy.attempts:
            _log.warning("servicenow.gave_up", method=method, what=what, attempts=attempt,
                         error=str(failure))  # fmt: skip
            raise _retryable(failure, f"gave up after {attempt} attempts")
        if retry_after is not None:
            wait = min(retry_after, policy.max_retry_after)
        else:
            wait = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
        left = deadline - self._clock()
        if wait > left:
            _log.warning("servicenow.gave_up", method=method, what=what, attempts=attempt,
                         error=str(failure), budget=policy.budget)  # fmt: skip
            raise _retryable(
                failure,
                f"gave up after {attempt} attempts: waiting {wait:g} s more would pass the "
                f"call's budget of {policy.budget:g} s",
            )
        _log.info(
            "servicenow.retrying", method=method, what=what, attempt=attempt, wait=wait,
            status=failure.status, error=failure.message,
        )  # fmt: skip
        self._sleep(wait)

    # -- authentication --------------------------------------------------------------------

    @property
    def _uses_oauth(self) -> bool:
        return not isinstance(self._auth, BasicAuth)

    def _authorization(self, deadline: float) -> str:
        auth = self._auth
        if isinstance(auth, BasicAuth):
            pair = f"{auth.username}:{auth.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if self._token is None or self._clock() >= self._token_until:
            self._token = None
            self._fetch_token(auth, deadline)
        assert self._token is not None
        return f"Bearer {self._token}"

    def _fetch_token(self, auth: OAuthPassword | OAuthClientCredentials, deadline: float) -> None:
        form: dict[str, str]
        if isinstance(auth, OAuthPassword):
            form = {"grant_type": "password", "username": auth.username, "password": auth.password}
        else:
            form = {"grant_type": "client_credentials"}
        form |= {"client_id": auth.client_id, "client_secret": auth.client_secret}
        try:
            body = self._send("POST", TOKEN_PATH, form=form, authenticate=False, deadline=deadline)
        except ServiceNowError as exc:
            raise ServiceNowError(
                exc.status,
                f"no OAuth token ({form['grant_type']} grant): {exc.message}",
                exc.detail,
                retryable=exc.retryable,
            ) from exc
        token = _parse(_Token, body, "an OAuth token")
        # Renew shortly before it expires: a tenth of its life early, at most a minute.
        margin = min(60.0, token.expires_in / 10)
        self._token = token.access_token
        self._token_until = self._clock() + token.expires_in - margin
        _log.info(
            "servicenow.token_obtained", grant=form["grant_type"], expires_in=token.expires_in
        )


def _retryable(failure: ServiceNowError, why: str) -> ServiceNowError:
    detail = f"{failure.detail}; {why}" if failure.detail else why
    return ServiceNowError(failure.status, failure.message, detail, retryable=True)
