"""The simulated instance's records and the rules that change them (SERVICENOW.md §3-§6).

Every record is a flat ``dict[str, str]`` holding ServiceNow's *values* (choice values,
referenced sys_ids, UTC ``YYYY-MM-DD HH:MM:SS`` dates, ``""`` for empty); how they are shown
(display values, reference links, the Change Management API's value/display_value pairs)
is :mod:`testbed.servicenow.render`'s business. One lock guards everything; with a state
file, every change is written through (atomically) so a restarted simulator carries on.
No HTTP here.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from testbed.servicenow import query as encoded_query

__all__ = [
    "APPROVAL_VALUES",
    "CHANGE_STATES",
    "CLOSE_CODES",
    "TABLES",
    "Decision",
    "Instance",
    "OAuthClient",
    "Refused",
    "Seed",
    "SeedGroup",
    "SeedUser",
]

# change_request.state: value -> label (SERVICENOW.md §5.1)
CHANGE_STATES = {
    "-5": "New",
    "-4": "Assess",
    "-3": "Authorize",
    "-2": "Scheduled",
    "-1": "Implement",
    "0": "Review",
    "3": "Closed",
    "4": "Canceled",
}
APPROVAL_VALUES = {
    "not requested": "Not Yet Requested",
    "requested": "Requested",
    "approved": "Approved",
    "rejected": "Rejected",
}
APPROVER_STATES = {
    "not requested": "Not Yet Requested",
    "requested": "Requested",
    "approved": "Approved",
    "rejected": "Rejected",
    "cancelled": "Cancelled",
}
CLOSE_CODES = {
    "successful": "Successful",
    "successful_issues": "Successful with issues",
    "unsuccessful": "Unsuccessful",
}
TERMINAL_STATES = frozenset({"3", "4"})
# Moves a PATCH may make (SERVICENOW.md §5.2). Closing and cancelling are handled apart:
# allowed from every state that is not terminal. Scheduled needs an approved change.
TRANSITIONS: dict[str, frozenset[str]] = {
    "-5": frozenset({"-4", "-3"}),
    "-4": frozenset({"-5", "-3"}),
    "-3": frozenset({"-5", "-4", "-2"}),
    "-2": frozenset({"-3", "-1"}),
    "-1": frozenset({"0"}),
    "0": frozenset(),
}

# Per table: its fields, which are references (to which table) and which are choices.
CHANGE_TEXT_FIELDS = (
    "short_description",
    "description",
    "correlation_id",
    "correlation_display",
    "category",
    "justification",
    "risk_impact_analysis",
    "implementation_plan",
    "backout_plan",
    "test_plan",
    "close_notes",
    "risk",
    "impact",
    "priority",
)
CHANGE_DATE_FIELDS = ("start_date", "end_date")
CHANGE_REFERENCE_FIELDS = {
    "requested_by": "sys_user",
    "assignment_group": "sys_user_group",
    "assigned_to": "sys_user",
    "opened_by": "sys_user",
    "closed_by": "sys_user",
}
JOURNAL_FIELDS = ("work_notes", "comments")  # write-only on change_request


@dataclass(frozen=True)
class TableSpec:
    fields: tuple[str, ...]
    references: Mapping[str, str]
    choices: Mapping[str, Mapping[str, str]]
    display_field: str


_SYS_FIELDS = (
    "sys_id",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
)
TABLES: dict[str, TableSpec] = {
    "change_request": TableSpec(
        fields=(
            *_SYS_FIELDS,
            "number",
            "type",
            "state",
            "approval",
            "active",
            "opened_at",
            "closed_at",
            "approval_set",
            "close_code",
            *CHANGE_TEXT_FIELDS,
            *CHANGE_DATE_FIELDS,
            *CHANGE_REFERENCE_FIELDS,
            *JOURNAL_FIELDS,
        ),
        references=CHANGE_REFERENCE_FIELDS,
        choices={"state": CHANGE_STATES, "approval": APPROVAL_VALUES, "close_code": CLOSE_CODES},
        display_field="number",
    ),
    "sysapproval_approver": TableSpec(
        fields=(
            *_SYS_FIELDS,
            "approver",
            "state",
            "comments",
            "sysapproval",
            "document_id",
            "source_table",
        ),
        references={"approver": "sys_user", "sysapproval": "change_request"},
        choices={"state": APPROVER_STATES},
        display_field="sys_id",
    ),
    "sys_user": TableSpec(
        fields=(*_SYS_FIELDS, "user_name", "name", "email", "active"),
        references={},
        choices={},
        display_field="name",
    ),
    "sys_user_group": TableSpec(
        fields=(*_SYS_FIELDS, "name", "description", "active"),
        references={},
        choices={},
        display_field="name",
    ),
    "sys_user_grmember": TableSpec(
        fields=(*_SYS_FIELDS, "user", "group"),
        references={"user": "sys_user", "group": "sys_user_group"},
        choices={},
        display_field="sys_id",
    ),
    "sys_journal_field": TableSpec(
        fields=(*_SYS_FIELDS, "element", "element_id", "name", "value"),
        references={},
        choices={},
        display_field="sys_id",
    ),
}


class Refused(Exception):
    """A request the instance refuses; rendered in ServiceNow's error shape."""

    def __init__(self, status: int, message: str, detail: str) -> None:
        super().__init__(f"{status} {message}: {detail}")
        self.status = status
        self.message = message
        self.detail = detail


def not_found() -> Refused:
    return Refused(
        404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
    )


# --- seed ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedUser(_Strict):
    user_name: str = Field(min_length=1)
    name: str = ""
    email: str = ""
    password: str | None = None  # None: the user cannot authenticate
    sys_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class SeedGroup(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    members: list[str] = []  # user_names
    sys_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class OAuthClient(_Strict):
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    # the user a client_credentials token acts as
    user: str | None = None


class Seed(_Strict):
    """Who exists on the instance. ``integration_user`` is the product's account."""

    users: list[SeedUser] = []
    groups: list[SeedGroup] = []
    oauth_clients: list[OAuthClient] = []
    integration_user: str | None = None

    @classmethod
    def load(cls, path: Path) -> Seed:
        """A YAML or JSON file (JSON is YAML)."""
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


# --- the instance ----------------------------------------------------------------------------


def now_text(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d %H:%M:%S")


def new_sys_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Token:
    user: str  # sys_id
    expires_at: float  # Unix seconds


@dataclass(frozen=True)
class Decision:
    """What an approval or rejection did, for the callback and the admin API's answer."""

    change: dict[str, str]
    approver: dict[str, str]
    user: dict[str, str]
    comments: str
    moved_change: bool  # False when the change was no longer awaiting approval


def canonical_number(value: Any, field: str) -> str:
    """A choice that holds integers, given as ``-3``, ``"-3"`` or ``-3.0``."""
    if isinstance(value, bool):
        raise Refused(400, "Invalid value", f"{field}: {value!r} is not a valid value")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return str(int(number))
    raise Refused(400, "Invalid value", f"{field}: {value!r} is not a valid value")


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise Refused(400, "Invalid value", f"{field}: expected a string, got {type(value).__name__}")


def _date(value: Any, field: str) -> str:
    text = _text(value, field).strip()
    if not text:
        return ""
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, pattern).strftime("%Y-%m-%d %H:%M:%S")  # noqa: DTZ007
        except ValueError:
            continue
    raise Refused(400, "Invalid value", f"{field}: {text!r} is not a date (YYYY-MM-DD HH:MM:SS)")


class Instance:
    """The records of one simulated ServiceNow instance."""

    def __init__(
        self,
        seed: Seed | None = None,
        *,
        state_file: Path | None = None,
        token_lifetime: int = 1799,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.RLock()
        self._state_file = state_file
        self.token_lifetime = token_lifetime
        self._clock = clock
        self.tables: dict[str, list[dict[str, str]]] = {name: [] for name in TABLES}
        self.passwords: dict[str, str] = {}  # user sys_id -> password
        self.clients: list[OAuthClient] = []
        self.tokens: dict[str, Token] = {}  # access token -> token
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user sys_id
        self.integration_user = ""
        self.next_number = 1
        if state_file is not None and state_file.exists():
            self._load(state_file)
        else:
            self._apply_seed(seed or Seed())
            self._save()

    # --- persistence -----------------------------------------------------------------------

    def _apply_seed(self, seed: Seed) -> None:
        names: dict[str, str] = {}
        for user in seed.users:
            record = self._insert(
                "sys_user",
                {
                    "sys_id": user.sys_id or new_sys_id(),
                    "user_name": user.user_name,
                    "name": user.name or user.user_name,
                    "email": user.email,
                    "active": "true",
                },
                by="system",
            )
            names[user.user_name] = record["sys_id"]
            if user.password is not None:
                self.passwords[record["sys_id"]] = user.password
        for group in seed.groups:
            row = self._insert(
                "sys_user_group",
                {
                    "sys_id": group.sys_id or new_sys_id(),
                    "name": group.name,
                    "description": group.description,
                    "active": "true",
                },
                by="system",
            )
            for member in group.members:
                if member not in names:
                    raise ValueError(f"group {group.name!r}: member {member!r} is not a user")
                self._insert(
                    "sys_user_grmember",
                    {"user": names[member], "group": row["sys_id"]},
                    by="system",
                )
        for client in seed.oauth_clients:
            if client.user is not None and client.user not in names:
                raise ValueError(f"OAuth client {client.client_id!r}: no user {client.user!r}")
        self.clients = list(seed.oauth_clients)
        if seed.integration_user is not None and seed.integration_user not in names:
            raise ValueError(f"integration_user {seed.integration_user!r} is not a user")
        self.integration_user = names.get(seed.integration_user or "", "")

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        self.tables = {name: list(data["tables"].get(name, [])) for name in TABLES}
        self.passwords = dict(data["passwords"])
        self.clients = [OAuthClient.model_validate(c) for c in data["oauth_clients"]]
        self.tokens = {k: Token(**v) for k, v in data["tokens"].items()}
        self.refresh_tokens = dict(data["refresh_tokens"])
        self.integration_user = data["integration_user"]
        self.next_number = int(data["next_number"])

    def _save(self) -> None:
        if self._state_file is None:
            return
        data = {
            "tables": self.tables,
            "passwords": self.passwords,
            "oauth_clients": [c.model_dump() for c in self.clients],
            "tokens": {
                k: {"user": v.user, "expires_at": v.expires_at} for k, v in self.tokens.items()
            },
            "refresh_tokens": self.refresh_tokens,
            "integration_user": self.integration_user,
            "next_number": self.next_number,
        }
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_file.with_name(self._state_file.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(temporary, self._state_file)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            yield
            self._save()

    # --- records ---------------------------------------------------------------------------

    def now(self) -> str:
        return now_text(self._clock)

    def _insert(self, table: str, values: dict[str, str], *, by: str) -> dict[str, str]:
        stamp = self.now()
        record = dict.fromkeys(TABLES[table].fields, "")
        record.update(
            {
                "sys_id": new_sys_id(),
                "sys_created_on": stamp,
                "sys_created_by": by,
                "sys_updated_on": stamp,
                "sys_updated_by": by,
                "sys_mod_count": "0",
            }
        )
        record.update(values)
        self.tables[table].append(record)
        return record

    def _touch(self, record: dict[str, str], by: str) -> None:
        record["sys_updated_on"] = self.now()
        record["sys_updated_by"] = by
        record["sys_mod_count"] = str(int(record.get("sys_mod_count") or 0) + 1)

    def get(self, table: str, sys_id: str) -> dict[str, str]:
        """A copy of one record; :func:`not_found` if there is none."""
        with self._lock:
            for record in self.tables[table]:
                if record["sys_id"] == sys_id:
                    return dict(record)
        raise not_found()

    def find(self, table: str, query: encoded_query.EncodedQuery) -> list[dict[str, str]]:
        with self._lock:
            found = encoded_query.run(query, self.tables[table], TABLES[table].fields)
            return [dict(r) for r in found]

    def _row(self, table: str, sys_id: str) -> dict[str, str]:
        for record in self.tables[table]:
            if record["sys_id"] == sys_id:
                return record
        raise not_found()

    def user_by_name(self, user_name: str) -> dict[str, str] | None:
        with self._lock:
            for record in self.tables["sys_user"]:
                if record["user_name"] == user_name:
                    return dict(record)
        return None

    def change_by_number(self, number: str) -> dict[str, str]:
        with self._lock:
            for record in self.tables["change_request"]:
                if record["number"] == number:
                    return dict(record)
        raise not_found()

    def members(self, group_sys_id: str) -> list[str]:
        """User sys_ids of a group's members, in membership order."""
        return [m["user"] for m in self.tables["sys_user_grmember"] if m["group"] == group_sys_id]

    # --- authentication --------------------------------------------------------------------

    def basic(self, user_name: str, password: str) -> str | None:
        """The user's sys_id if the password is right."""
        with self._lock:
            user = self.user_by_name(user_name)
            if user is None or user["sys_id"] not in self.passwords:
                return None
            expected = self.passwords[user["sys_id"]]
            if secrets.compare_digest(expected.encode(), password.encode()):
                return user["sys_id"]
            return None

    def bearer(self, access_token: str) -> str | None:
        with self._lock:
            token = self.tokens.get(access_token)
            if token is None or token.expires_at <= self._clock():
                return None
            return token.user

    def issue_token(self, form: Mapping[str, str]) -> dict[str, Any] | None:
        """The token answer of ``/oauth_token.do`` (SERVICENOW.md §2.2); None if refused."""
        with self._writing():
            client = next((c for c in self.clients if c.client_id == form.get("client_id")), None)
            if client is None or not secrets.compare_digest(
                client.client_secret.encode(), form.get("client_secret", "").encode()
            ):
                return None
            grant = form.get("grant_type", "")
            user: str | None = None
            if grant == "password":
                user = self.basic(form.get("username", ""), form.get("password", ""))
            elif grant == "client_credentials" and client.user is not None:
                found = self.user_by_name(client.user)
                user = found["sys_id"] if found else None
            elif grant == "refresh_token":
                user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return None
            access, refresh = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
            self.tokens[access] = Token(user, self._clock() + self.token_lifetime)
            self.refresh_tokens[refresh] = user
            return {
                "access_token": access,
                "refresh_token": refresh,
                "scope": "useraccount",
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
            }

    def expire_tokens(self) -> int:
        """Every access token expires now (refresh tokens stay valid); how many there were."""
        with self._writing():
            count = len(self.tokens)
            self.tokens = {k: Token(t.user, self._clock() - 1) for k, t in self.tokens.items()}
            return count

    # --- change requests -------------------------------------------------------------------

    def create_change(self, body: Mapping[str, Any], user: str) -> dict[str, str]:
        """A new normal change in state New (SERVICENOW.md §5.1). System fields, ``state``
        and ``approval`` in the body are ignored; unknown fields too, as ServiceNow does."""
        with self._writing():
            by = self._user_name(user)
            values: dict[str, str] = {
                "number": f"CHG{self.next_number:07d}",
                "type": "normal",
                "state": "-5",
                "approval": "not requested",
                "active": "true",
                "opened_at": self.now(),
                "opened_by": user,
                "requested_by": user,
            }
            values.update(self._writable(body))
            if values.get("type", "normal") != "normal":
                raise Refused(
                    400,
                    "Invalid value",
                    f"type: {values['type']!r}; the simulator creates normal changes only",
                )
            self.next_number += 1
            record = self._insert("change_request", values, by=by)
            for element in JOURNAL_FIELDS:
                text = _text(body.get(element), element)
                if text:
                    self._journal(record, element, text, by)
            return dict(record)

    def _writable(self, body: Mapping[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for field, value in body.items():
            if field in CHANGE_TEXT_FIELDS or field == "type":
                values[field] = _text(value, field)
            elif field in CHANGE_DATE_FIELDS:
                values[field] = _date(value, field)
            elif field in CHANGE_REFERENCE_FIELDS and field not in ("opened_by", "closed_by"):
                values[field] = _text(value, field)
            elif field == "close_code":
                code = _text(value, field)
                if code and code not in CLOSE_CODES:
                    raise Refused(
                        400,
                        "Invalid value",
                        f"close_code: {code!r} is not one of {', '.join(CLOSE_CODES)}",
                    )
                values[field] = code
        return values

    def _user_name(self, user: str) -> str:
        for record in self.tables["sys_user"]:
            if record["sys_id"] == user:
                return record["user_name"]
        return "system"

    def _journal(self, change: dict[str, str], element: str, text: str, by: str) -> None:
        self._insert(
            "sys_journal_field",
            {
                "element": element,
                "element_id": change["sys_id"],
                "name": "change_request",
                "value": text,
            },
            by=by,
        )

    def update_change(self, sys_id: str, body: Mapping[str, Any], user: str) -> dict[str, str]:
        """A PATCH (SERVICENOW.md §5.2): fields, journal entries, then the state move."""
        with self._writing():
            change = self._row("change_request", sys_id)
            by = self._user_name(user)
            target: str | None = None
            if "state" in body:
                target = canonical_number(body["state"], "state")
                if target not in CHANGE_STATES:
                    raise Refused(
                        400, "Invalid value", f"state: {body['state']!r} is not a change state"
                    )
            if "approval" in body:
                approval = _text(body["approval"], "approval")
                if approval not in APPROVAL_VALUES:
                    raise Refused(
                        400,
                        "Invalid value",
                        f"approval: {approval!r} is not one of {', '.join(APPROVAL_VALUES)}",
                    )
            values = self._writable(body)
            if target is not None and target != change["state"]:
                self._check_move(change, target, {**change, **values})
            if change["state"] in TERMINAL_STATES and (values or target):
                label = CHANGE_STATES[change["state"]]
                raise Refused(
                    403,
                    "Operation Failed",
                    f"Error during update of change_request "
                    f"({change['number']}): the change is {label}",
                )
            change.update(values)
            if "approval" in body:
                change["approval"] = _text(body["approval"], "approval")
            for element in JOURNAL_FIELDS:
                text = _text(body.get(element), element)
                if text:
                    self._journal(change, element, text, by)
            if target is not None and target != change["state"]:
                self._move(change, target, user)
            self._touch(change, by)
            return dict(change)

    def _check_move(self, change: dict[str, str], target: str, after: Mapping[str, str]) -> None:
        current = change["state"]
        label = f"{CHANGE_STATES[current]} to {CHANGE_STATES[target]}"
        refused = Refused(
            403, "Operation Failed", f"Invalid state transition for {change['number']}: {label}"
        )
        if current in TERMINAL_STATES:
            raise refused
        if target == "3":
            missing = [f for f in ("close_code", "close_notes") if not after.get(f)]
            if missing:
                raise Refused(
                    403,
                    "Operation Failed",
                    f"Data Policy Exception: closing "
                    f"{change['number']} needs {' and '.join(missing)}",
                )
            return
        if target == "4":
            return
        if target not in TRANSITIONS[current]:
            raise refused
        if target == "-2" and change["approval"] != "approved":
            raise Refused(
                403,
                "Operation Failed",
                f"Invalid state transition for "
                f"{change['number']}: {label} needs an approved change",
            )

    def _move(self, change: dict[str, str], target: str, user: str) -> None:
        change["state"] = target
        if target == "-3" and change["approval"] != "approved":
            self._request_approval(change)
        if target in TERMINAL_STATES:
            change["active"] = "false"
            change["closed_at"] = self.now()
            change["closed_by"] = user
            self._settle_pending(change["sys_id"], "cancelled", except_id="")

    def _request_approval(self, change: dict[str, str]) -> None:
        """One approver record per member of the assignment group (SERVICENOW.md §6.1)."""
        change["approval"] = "requested"
        existing = {
            r["approver"]
            for r in self.tables["sysapproval_approver"]
            if r["sysapproval"] == change["sys_id"] and r["state"] == "requested"
        }
        for member in self.members(change["assignment_group"]):
            if member not in existing:
                self._new_approver(change, member)

    def _new_approver(self, change: dict[str, str], user: str) -> dict[str, str]:
        return self._insert(
            "sysapproval_approver",
            {
                "approver": user,
                "state": "requested",
                "sysapproval": change["sys_id"],
                "document_id": change["sys_id"],
                "source_table": "change_request",
            },
            by="system",
        )

    def _settle_pending(self, change_id: str, state: str, *, except_id: str) -> None:
        for record in self.tables["sysapproval_approver"]:
            if (
                record["sysapproval"] == change_id
                and record["state"] == "requested"
                and record["sys_id"] != except_id
            ):
                record["state"] = state
                self._touch(record, "system")

    # --- decisions (the admin API; SERVICENOW.md §6.2) -------------------------------------

    def decide(
        self,
        number: str,
        user_name: str,
        verdict: Literal["approved", "rejected"],
        comments: str,
        *,
        force: bool = False,
    ) -> Decision:
        """``user_name`` approves or rejects change ``number``. Without ``force`` the user
        must hold a pending approver record of it (be a member of its assignment group when
        approval was requested); with ``force`` anyone can, as an administrator could make
        ServiceNow do, so the product's segregation-of-duties checks can be tested."""
        with self._writing():
            change = next((c for c in self.tables["change_request"] if c["number"] == number), None)
            if change is None:
                raise Refused(404, "No Record found", f"no change request {number}")
            user = next((u for u in self.tables["sys_user"] if u["user_name"] == user_name), None)
            if user is None:
                raise Refused(400, "Invalid user", f"no user {user_name!r}")
            record = next(
                (
                    r
                    for r in self.tables["sysapproval_approver"]
                    if r["sysapproval"] == change["sys_id"]
                    and r["approver"] == user["sys_id"]
                    and r["state"] == "requested"
                ),
                None,
            )
            if record is None and not force:
                why = (
                    f"approval of {number} is {change['approval']!r}"
                    if change["approval"] != "requested"
                    else f"{user_name} is not an approver of {number} (not a member of its "
                    "assignment group)"
                )
                raise Refused(
                    409, "Not an approver", why + "; force=true makes the decision anyway"
                )
            if record is None:
                record = self._new_approver(change, user["sys_id"])
            record["state"] = verdict
            record["comments"] = comments
            self._touch(record, user_name)
            moved = change["state"] not in TERMINAL_STATES
            if moved:
                change["approval"] = verdict
                change["approval_set"] = self.now()
                change["state"] = "-2" if verdict == "approved" else "-5"
                self._settle_pending(change["sys_id"], "cancelled", except_id=record["sys_id"])
                if comments:
                    self._journal(change, "comments", comments, user_name)
                self._touch(change, user_name)
            return Decision(dict(change), dict(record), dict(user), comments, moved)
