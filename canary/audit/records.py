"""Audit record types, canonical JSON and the hash chain (pure: standard library only).

The audit trail is a hash chain. Record ``n`` stores::

    body        = canonical_json(entry_body(n, entry))
    record_hash = sha256_hex(prev_hash + body)        # both as UTF-8 text

where ``prev_hash`` is the ``record_hash`` of record ``n - 1`` (``GENESIS_HASH`` for the
first record).

**The canonical JSON format is a published contract.** Auditors re-implement it (or at
least the hash over the stored body text) in their own tools, and every stored hash depends
on it byte for byte. It must never change silently: any change needs a new ``FORMAT_VERSION``
and a verifier that understands both. ``tests/unit/test_audit_records.py`` pins it with a
golden vector. The rules, applied recursively before serialising:

* objects: keys sorted by code point, no whitespace (``separators=(",", ":")``), UTF-8
  output with non-ASCII characters written as themselves (``ensure_ascii=False``);
* ``datetime``: must be timezone-aware; converted to UTC and written as
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fractional digits); naive ones are rejected;
* floats: finite values as Python's shortest round-trip ``repr``; NaN, +inf and -inf as the
  *strings* ``"NaN"``, ``"+Inf"`` and ``"-Inf"`` (JSON has no literal for them);
* tuples and lists: arrays; mappings: objects, whose keys must be strings;
* dataclasses: objects with one key per field (absent optional values are ``null``).

A verifier does not need to re-serialise anything: it hashes ``prev_hash + body`` exactly as
stored, so float formatting differences between languages do not matter for verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, get_args

__all__ = [
    "ACTION_PATTERN",
    "ACTOR_KINDS",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "JSON",
    "Actor",
    "ActorKind",
    "ApprovalGateKind",
    "ApprovalRow",
    "ApprovalState",
    "AuditEntry",
    "AuditRecord",
    "ChainReport",
    "CommandRow",
    "CommandState",
    "Fence",
    "Measurement",
    "ModelRef",
    "ObjectRef",
    "RolloutMode",
    "RolloutRow",
    "StoredMeasurement",
    "canonical_json",
    "canonical_text",
    "compute_record_hash",
    "decode_body",
    "decode_float",
    "entry_body",
    "format_timestamp",
    "is_hash",
    "normalise",
    "parse_body",
    "parse_timestamp",
]

JSON: TypeAlias = str | int | float | bool | Sequence["JSON"] | Mapping[str, "JSON"] | None

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first record in the chain."""

FORMAT_VERSION: Final = 3
"""Version of the body layout; stored in every body under the key ``"v"``.

* 1: the values of a decision's ``detail`` (and ``evidence``) written by the rollout state
  machine were all strings (a percent read ``"10"``).
* 2: they keep their JSON types (a percent is the number ``10``). The canonical JSON rules
  are unchanged, so both verify the same way; a reader of ``detail`` checks ``v``.
* 3: the ``actor`` object also holds ``uid`` and ``groups``: the identity the apiserver
  authenticated (TokenReview) for a person's command, ``null`` and ``[]`` otherwise.
  Versions 1 and 2 have only ``kind`` and ``id`` and read back with no uid and no groups."""

READABLE_VERSIONS: Final = frozenset({1, 2, FORMAT_VERSION})
"""Body versions :func:`decode_body` reads (every version ever written)."""

ActorKind = Literal["controller", "human", "servicenow", "webhook", "unknown"]
ACTOR_KINDS: Final[frozenset[str]] = frozenset(get_args(ActorKind))

ACTION_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NON_FINITE_OUT: Final[dict[str, float]] = {
    "NaN": math.nan,
    "+Inf": math.inf,
    "-Inf": -math.inf,
}


# --------------------------------------------------------------------------------------------
# canonical JSON
# --------------------------------------------------------------------------------------------


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} rejected: audit times need a zone")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse a timestamp written by :func:`format_timestamp` (returns an aware UTC datetime)."""
    if not text.endswith("Z"):
        raise ValueError(f"timestamp {text!r} does not end in 'Z'")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def _float_out(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


_SCALARS: Final = (str, int, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def normalise(value: object) -> JSON:
    """Turn ``value`` into plain JSON data following the canonical rules (see module doc)."""
    kind = type(value)
    if kind in _SCALARS:  # the common case first: exact types, no subclass checks
        return value  # type: ignore[return-value]
    if kind is dict:
        return _normalise_mapping(value)  # type: ignore[arg-type]
    if kind is float:
        return _float_out(value)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return [
            item if type(item) in _SCALARS else normalise(item)
            for item in value  # type: ignore[attr-defined]
        ]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _float_out(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, JSON] = {}
        for name in _field_names(kind):
            item = getattr(value, name)
            out[name] = item if type(item) in _SCALARS else normalise(item)
        return out
    if isinstance(value, Mapping):
        return _normalise_mapping(value)
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not allowed in audit records")


def _normalise_mapping(value: Mapping[Any, Any]) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for key, item in value.items():
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"mapping key {key!r} is not a string")
        out[key] = item if type(item) in _SCALARS else normalise(item)
    return out


_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: object) -> str:
    """Serialise ``value`` as canonical JSON text (the exact text that gets hashed)."""
    return canonical_text(normalise(value))


def canonical_text(data: JSON) -> str:
    """:func:`canonical_json` of data already normalised (:func:`normalise`,
    :func:`entry_body`): the same text, without normalising it a second time."""
    text = _CANONICAL.encode(data)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be hashed as UTF-8
        raise ValueError(f"audit data is not valid Unicode: {exc}") from exc
    return text


def compute_record_hash(prev_hash: str, body_json: str) -> str:
    """``sha256(prev_hash + body_json)`` over UTF-8, as lowercase hex."""
    return hashlib.sha256((prev_hash + body_json).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# record types
# --------------------------------------------------------------------------------------------


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _optional_float(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: ``controller`` (service account + pod), ``human``, ``servicenow``...

    For a person, ``id`` is the user name the apiserver authenticated, ``uid`` and
    ``groups`` what it said with it (a TokenReview); never text the person typed."""

    kind: ActorKind
    id: str
    uid: str | None = None
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"actor kind {self.kind!r} is not one of {sorted(ACTOR_KINDS)}")
        if not self.id:
            raise ValueError("actor id must not be empty")
        object.__setattr__(self, "groups", tuple(self.groups))


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The InferenceService a record is about."""

    namespace: str
    name: str
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model version as deployed: name, storage URI, artifact digest and revision."""

    model_name: str | None
    storage_uri: str | None
    artifact_digest: str | None
    revision: str | None


@dataclass(frozen=True, slots=True)
class Measurement:
    """One metric evaluation with everything needed to reproduce and judge it."""

    check: str
    evaluated_at: datetime
    query: str
    prometheus_url: str
    response_digest: str
    canary_value: float | None
    baseline_value: float | None
    canary_samples: int | None
    baseline_samples: int | None
    statistic: float | None
    threshold: float | None
    verdict: str
    dry_run: bool
    detail: Mapping[str, JSON] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require_aware("Measurement.evaluated_at", self.evaluated_at)
        for name in ("canary_value", "baseline_value", "statistic", "threshold"):
            object.__setattr__(self, name, _optional_float(name, getattr(self, name)))
        if not self.check:
            raise ValueError("Measurement.check must not be empty")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What a caller asks to append. Treat the mappings as immutable.

    ``correlation_id`` links an intent (``traffic.intent``) to its outcome
    (``traffic.shifted``); ``leader_epoch`` is the epoch of the writing leader.
    """

    at: datetime
    actor: Actor
    action: str
    rollout_id: str | None = None
    obj: ObjectRef | None = None
    stable: ModelRef | None = None
    canary: ModelRef | None = None
    traffic_before: Mapping[str, int] | None = field(default=None, hash=False)
    traffic_after: Mapping[str, int] | None = field(default=None, hash=False)
    reason: str | None = None
    evidence: Mapping[str, JSON] = field(default_factory=dict, hash=False)
    measurements: tuple[Measurement, ...] = ()
    change_number: str | None = None
    change_sys_id: str | None = None
    approver: str | None = None
    approval_time: datetime | None = None
    webhook_id: str | None = None
    payload_digest: str | None = None
    leader_epoch: int | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        _require_aware("AuditEntry.at", self.at)
        _require_aware("AuditEntry.approval_time", self.approval_time)
        if not ACTION_PATTERN.match(self.action):
            raise ValueError(
                f"action {self.action!r} is not dotted lower_snake_case (e.g. 'traffic.intent')"
            )
        for name in ("traffic_before", "traffic_after"):
            split: Mapping[str, int] | None = getattr(self, name)
            if split is None:
                continue
            for key, weight in split.items():
                if not isinstance(key, str) or isinstance(weight, bool):
                    raise TypeError(f"{name} must map str to int, got {key!r}: {weight!r}")
                if not isinstance(weight, int):
                    raise TypeError(f"{name} must map str to int, got {key!r}: {weight!r}")
        object.__setattr__(self, "measurements", tuple(self.measurements))
        if self.leader_epoch is not None and self.leader_epoch < 0:
            raise ValueError("leader_epoch must not be negative")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored record: the chain fields, the exact body text and the decoded entry."""

    seq: int
    prev_hash: str
    record_hash: str
    body: str
    entry: AuditEntry


# --------------------------------------------------------------------------------------------
# bodies
# --------------------------------------------------------------------------------------------

_ENTRY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(AuditEntry))


def entry_body(seq: int, entry: AuditEntry) -> dict[str, JSON]:
    """The normalised body of record ``seq``: every entry field, plus ``seq`` and ``v``.

    All fields are always present (``null`` when absent), so every body has the same shape.
    """
    if seq < 1:
        raise ValueError(f"seq must be >= 1, got {seq}")
    data = normalise(entry)
    assert isinstance(data, dict)
    body: dict[str, JSON] = {"v": FORMAT_VERSION, "seq": seq}
    body.update(data)
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} in audit body")


def _ts(value: Any) -> datetime | None:
    return None if value is None else _required_ts(value)


def _required_ts(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string, got {value!r}")
    return parse_timestamp(value)


def decode_float(value: Any) -> float | None:
    """Read a float written by :func:`normalise` (the strings "NaN", "+Inf", "-Inf" too)."""
    if isinstance(value, str):
        if value not in _NON_FINITE_OUT:
            raise ValueError(f"unexpected string {value!r} where a number was expected")
        return _NON_FINITE_OUT[value]
    return None if value is None else float(value)


def _model(value: Any) -> ModelRef | None:
    if value is None:
        return None
    return ModelRef(
        model_name=value["model_name"],
        storage_uri=value["storage_uri"],
        artifact_digest=value["artifact_digest"],
        revision=value["revision"],
    )


def _measurement(value: Mapping[str, Any]) -> Measurement:
    evaluated_at = _required_ts(value["evaluated_at"])
    return Measurement(
        check=value["check"],
        evaluated_at=evaluated_at,
        query=value["query"],
        prometheus_url=value["prometheus_url"],
        response_digest=value["response_digest"],
        canary_value=decode_float(value["canary_value"]),
        baseline_value=decode_float(value["baseline_value"]),
        canary_samples=value["canary_samples"],
        baseline_samples=value["baseline_samples"],
        statistic=decode_float(value["statistic"]),
        threshold=decode_float(value["threshold"]),
        verdict=value["verdict"],
        dry_run=value["dry_run"],
        detail=value["detail"],
    )


def parse_body(body: str) -> dict[str, Any]:
    """Parse body text strictly (no NaN/Infinity literals; the result must be an object)."""
    data = json.loads(body, parse_constant=_reject_constant)
    if not isinstance(data, dict):
        raise ValueError("audit body is not a JSON object")
    return data


def decode_body(body: str | Mapping[str, Any]) -> AuditEntry:
    """Rebuild the :class:`AuditEntry` from a stored body (text or already parsed).

    Arrays inside ``evidence``/``detail`` come back as lists, and non-finite floats inside
    them come back as the strings ``"NaN"``, ``"+Inf"`` and ``"-Inf"``; measurement values
    come back as floats.
    """
    data = parse_body(body) if isinstance(body, str) else body
    if data.get("v") not in READABLE_VERSIONS:
        raise ValueError(f"unsupported audit body format {data.get('v')!r}")
    unknown = set(data) - set(_ENTRY_FIELDS) - {"v", "seq"}
    if unknown:
        raise ValueError(f"unknown fields in audit body: {sorted(unknown)}")
    at = _required_ts(data["at"])
    obj = data["obj"]
    actor = data["actor"]
    return AuditEntry(
        at=at,
        actor=Actor(
            kind=actor["kind"],
            id=actor["id"],
            uid=actor.get("uid"),
            groups=tuple(actor.get("groups") or ()),
        ),
        action=data["action"],
        rollout_id=data["rollout_id"],
        obj=None
        if obj is None
        else ObjectRef(
            namespace=obj["namespace"],
            name=obj["name"],
            uid=obj["uid"],
            generation=obj["generation"],
            resource_version=obj["resource_version"],
        ),
        stable=_model(data["stable"]),
        canary=_model(data["canary"]),
        traffic_before=data["traffic_before"],
        traffic_after=data["traffic_after"],
        reason=data["reason"],
        evidence=data["evidence"],
        measurements=tuple(_measurement(m) for m in data["measurements"]),
        change_number=data["change_number"],
        change_sys_id=data["change_sys_id"],
        approver=data["approver"],
        approval_time=_ts(data["approval_time"]),
        webhook_id=data["webhook_id"],
        payload_digest=data["payload_digest"],
        leader_epoch=data["leader_epoch"],
        correlation_id=data["correlation_id"],
    )


def is_hash(value: str) -> bool:
    """True when ``value`` looks like a lowercase SHA-256 hex digest."""
    return bool(_HEX64.match(value))


# --------------------------------------------------------------------------------------------
# values exchanged with the store (plain data, no database types)
# --------------------------------------------------------------------------------------------

RolloutMode = Literal["knative", "standard"]
ApprovalGateKind = Literal["webhook", "servicenow", "kubernetes"]
ApprovalState = Literal["pending", "approved", "rejected", "expired", "cancelled"]


@dataclass(frozen=True, slots=True)
class Fence:
    """The leader's claim: a fenced commit succeeds only while this is the stored fence."""

    lease_name: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """The controller's live state of one rollout, as stored in ``rollouts``.

    ``state`` is the controller's whole serialized state document (JSON data). ``version``
    is assigned by the store (1 on insert, +1 on each update); the value passed in is ignored.
    """

    id: str
    namespace: str
    name: str
    isvc_uid: str | None
    policy_name: str
    mode: RolloutMode
    phase: str
    step_index: int
    canary_revision: str | None
    stable_revision: str | None
    state: Mapping[str, Any] = field(hash=False)
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None
    active: bool
    version: int = 0

    def __post_init__(self) -> None:
        for name in ("created_at", "updated_at", "next_check_at"):
            _require_aware(f"RolloutRow.{name}", getattr(self, name))
        if self.mode not in get_args(RolloutMode):
            raise ValueError(f"rollout mode {self.mode!r} is not 'knative' or 'standard'")


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """One approval gate instance, unique per (rollout_id, revision, step_index)."""

    id: str
    rollout_id: str
    revision: str
    step_index: int
    gate: ApprovalGateKind
    change_number: str | None
    change_sys_id: str | None
    risk_owner_group: str | None
    requested_by: str
    requested_at: datetime
    deadline: datetime | None
    state: ApprovalState
    approver: str | None = None
    decided_at: datetime | None = None
    close_code: str | None = None
    last_checked_at: datetime | None = None
    attempt: int = 1
    percent: int | None = None
    requesters: tuple[str, ...] = ()  # who may not approve (started the rollout)
    window_start: datetime | None = None  # an approval counts only inside the window
    window_end: datetime | None = None
    decision: dict[str, Any] | None = None  # the verified decision, with its evidence
    recheck_requested_at: datetime | None = None  # a callback asked for a re-read
    trigger: dict[str, Any] | None = None  # that callback: webhook id, payload digest
    noted_at: datetime | None = None  # the last work note sent to the change
    noted_digest: str | None = None
    close_note: str | None = None  # set with close_code: the change is to be closed
    closed_at: datetime | None = None  # ... and was closed in the change system
    last_error: str | None = None  # the change system's last error, for status
    refused_digest: str | None = None  # the refusals already recorded
    asked: tuple[str, ...] = ()  # who was asked and has not answered

    def __post_init__(self) -> None:
        object.__setattr__(self, "requesters", tuple(self.requesters))
        object.__setattr__(self, "asked", tuple(self.asked))
        for name in (
            "requested_at", "deadline", "decided_at", "last_checked_at", "window_start",
            "window_end", "recheck_requested_at", "noted_at", "closed_at",
        ):  # fmt: skip
            _require_aware(f"ApprovalRow.{name}", getattr(self, name))
        if self.gate not in get_args(ApprovalGateKind):
            raise ValueError(
                f"approval gate {self.gate!r} is not one of {get_args(ApprovalGateKind)}"
            )
        if self.state not in get_args(ApprovalState):
            raise ValueError(
                f"approval state {self.state!r} is not one of {get_args(ApprovalState)}"
            )


@dataclass(frozen=True, slots=True)
class StoredMeasurement:
    """A measurement as stored, with the audit record it belongs to."""

    audit_seq: int
    position: int
    rollout_id: str | None
    measurement: Measurement


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of a chain verification.

    ``records_checked`` counts the records that passed every check; ``head_hash`` is the
    ``record_hash`` of the last of them (``GENESIS_HASH`` if none). ``first_bad_seq`` is the
    lowest sequence number at which the stored data departs from a valid chain (for a
    deleted record, the missing number), and ``problem`` says what is wrong there.
    ``head_seq`` is the seq of the last record that passed (after an incremental check it
    counts from where the check started). ``purged_through``: the last record a purge
    removed (0 when none was); the chain was checked from the record after it.
    ``complete``: the check reached the chain's end (False after a check limited to a
    number of records stopped short of it; ``head_seq`` is then where it stopped).
    """

    ok: bool
    records_checked: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None
    head_seq: int = 0
    purged_through: int = 0
    complete: bool = True


CommandState = Literal["pending", "accepted", "rejected", "failed"]


@dataclass(frozen=True, slots=True)
class CommandRow:
    """A manual command (pause, resume, promote, abort, start) queued for the leader.

    Any replica or the CLI inserts it as ``pending``; the leader carries it out and records
    the result in the same transaction as the audit records it causes. ``args`` holds the
    command's parameters (for ``start``: the new ``storage_uri``).
    """

    id: str
    namespace: str
    name: str
    command: str
    actor: str
    reason: str
    args: Mapping[str, Any] = field(hash=False)
    requested_at: datetime
    state: CommandState = "pending"
    result: str | None = None
    decided_at: datetime | None = None
    actor_uid: str | None = None
    actor_groups: tuple[str, ...] = ()

    @property
    def who(self) -> Actor:
        """The person who sent it, as the apiserver authenticated them."""
        return Actor("human", self.actor, uid=self.actor_uid, groups=self.actor_groups)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor_groups", tuple(self.actor_groups))
        _require_aware("CommandRow.requested_at", self.requested_at)
        _require_aware("CommandRow.decided_at", self.decided_at)
