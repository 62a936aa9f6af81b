"""The auditor's queries: rollout history, one rollout's timeline, point-in-time answers.

Read-only, and every query is bounded (a page, or :data:`MAX_WINDOW`). Each is served by
indexes: those of the first migration and those migration 0009 added for these queries
(:data:`MIGRATION_NOTE`); ``tests/integration/test_point_in_time.py`` checks the PostgreSQL
plans. What each query reads:

* :meth:`AuditHistory.find_rollouts`: the ``rollouts`` table, newest first, filtered, in
  pages with an opaque keyset cursor (no OFFSET: a page never repeats or skips a rollout
  while new ones are started). ``model`` matches the canary's or the stable revision's
  name or storageUri: four indexed columns (the storageUris are copies of the ``state``
  document's, written with it).
* :meth:`AuditHistory.rollout_records`: one rollout's records in chain order, by page.
* :meth:`AuditHistory.records_for_service`: the records the point-in-time logic needs for
  one InferenceService up to T, and no more (see its docstring).
* :meth:`AuditHistory.point_in_time` and :meth:`AuditHistory.point_in_time_by_model`: the
  answer of :mod:`canary.evidence.pointintime`, with the approvals of the rollouts involved
  and their evidence, read from the ``measurements`` rows (the latest per check and a
  count, without decoding every ``analysis.evaluated`` body, in one query for all the
  rollouts). Each answer is a fixed handful of round trips whatever the service's
  history: the window's start is found by one backward index scan per action, stopping at
  the first row, never by reading and sorting the service's older records.

:class:`AuditHistory` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, bindparam, func, or_, select, union_all
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.elements import BindParameter

from canary.audit.chain import _stored_measurement, decoded_records
from canary.audit.errors import AuditError
from canary.audit.records import (
    JSON,
    ApprovalRow,
    AuditRecord,
    ModelRef,
    canonical_json,
    format_timestamp,
    normalise,
    parse_timestamp,
)
from canary.audit.schema import ApprovalModel, AuditLog, MeasurementRow, RolloutModel
from canary.evidence import pointintime as pit
from canary.model import Phase

__all__ = [
    "MAX_PAGE",
    "MAX_WINDOW",
    "MIGRATION_NOTE",
    "OUTCOMES",
    "SPLIT_ACTIONS",
    "AuditHistory",
    "InvalidQuery",
    "ModelAt",
    "RolloutPage",
    "RolloutSummary",
    "TimelinePage",
    "decode_cursor",
    "encode_cursor",
]

MAX_PAGE: Final = 500
"""The largest page any history query returns."""

MAX_WINDOW: Final = 20_000
"""The most records one point-in-time answer may read (a service's records from the start
of its last rollout before T); beyond it the query fails rather than run unbounded."""

SPLIT_ACTIONS: Final = ("traffic.intent", "traffic.shifted", "promoted", "rolled_back")
"""Records that establish a service's split on their own (an intent holds the split the
status showed): the point-in-time window never needs anything older than the last one."""

OUTCOMES: Final = frozenset({p.value for p in Phase} | {"active", "finished"})
"""What ``find_rollouts(outcome=...)`` accepts: a phase, or ``active`` / ``finished``."""

MIGRATION_NOTE: Final = """\
What migration 0009 added for these queries at 10 million records (before it, the model
filter read the JSON state document of every rollout, and find_rollouts sorted the table):
  rollouts (created_at DESC, id DESC)                      find_rollouts, unfiltered, and
      its keyset pages
  rollouts (namespace, name, created_at DESC, id DESC)     find_rollouts by service
  rollouts.canary_storage_uri, rollouts.stable_storage_uri (the state document's, written
      with it and filled from existing rows), indexed, and canary_revision and
      stable_revision indexed: the model filter of find_rollouts and point_in_time_by_model
  audit_log (rollout_id, seq)                              rollout_records, in seq order
      (it replaced the index on rollout_id alone)
  audit_log (namespace, name, action, recorded_at)         a service's last record of an
      action by T: the window's start and the stable revision's promotion
"""
"""Kept as the record of what each index is for (the README points here)."""

_ANALYSIS = "analysis.evaluated"
_STARTS: Final = ("rollout.started", "shadow.challenger_detected")
_AFTER_PROMOTION: Final = ("traffic.manual_rollback", "traffic.manual_restore")
_NO_RECORD: Final = datetime(1970, 1, 1, tzinfo=UTC)  # the time of "no record" (seq 0)
_CURSOR_VERSION = 1


class InvalidQuery(AuditError, ValueError):
    """A history query's input is invalid (an unknown outcome, a bad cursor, a naive time)."""


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutSummary:
    """One rollout as ``rollouts`` keeps it (the controller's live state, not the chain:
    its timeline, :meth:`AuditHistory.rollout_records`, is the evidence)."""

    id: str
    namespace: str
    name: str
    phase: str
    active: bool
    outcome: str | None  # why it ended, once it has
    policy: str
    mode: str
    canary: ModelRef
    stable: ModelRef | None
    challenger: str | None  # a challenger InferenceService's shadow rollout
    started_by: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, JSON]:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class RolloutPage:
    """A page of rollouts, newest first; ``next_cursor`` fetches the next (None: the last)."""

    rollouts: tuple[RolloutSummary, ...]
    next_cursor: str | None

    def to_json(self) -> dict[str, JSON]:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class TimelinePage:
    """A page of one rollout's records in chain order; ``next_after_seq`` continues it.

    In JSON each record is its ``seq``, ``prev_hash``, ``record_hash`` and the exact
    ``body`` that was hashed (``record_hash = sha256(prev_hash + body)``), and the body
    decoded as ``entry``."""

    rollout_id: str
    records: tuple[AuditRecord, ...]
    next_after_seq: int | None

    def to_json(self) -> dict[str, JSON]:
        return {
            "rollout_id": self.rollout_id,
            "next_after_seq": self.next_after_seq,
            "records": [
                {
                    "seq": r.seq,
                    "prev_hash": r.prev_hash,
                    "record_hash": r.record_hash,
                    "body": r.body,
                    "entry": normalise(r.entry),
                }
                for r in self.records
            ],
        }


@dataclass(frozen=True, slots=True)
class ModelAt:
    """Which InferenceServices served ``model`` at ``at``: each one's whole answer.
    ``more``: other services named the model and were not looked at (raise ``limit``)."""

    model: str
    at: datetime
    answers: tuple[pit.PointInTime, ...]
    more: bool

    def to_json(self) -> dict[str, JSON]:
        return _plain(self)


def _plain(value: object) -> dict[str, JSON]:
    data = normalise(value)
    assert isinstance(data, dict)
    return data


# --------------------------------------------------------------------------------------------
# input checks and the cursor
# --------------------------------------------------------------------------------------------


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidQuery(f"{name} must be a time with its zone, got {value.isoformat()}")


def _limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise InvalidQuery(f"limit must be a whole number from 1 to {MAX_PAGE}, got {value!r}")
    return value


def encode_cursor(created_at: datetime, rollout_id: str) -> str:
    """The opaque cursor after the rollout (``created_at``, ``rollout_id``)."""
    text = canonical_json({"v": _CURSOR_VERSION, "t": created_at, "id": rollout_id})
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last rollout of the previous page."""
    problem = f"invalid cursor {cursor[:80]!r}: pass back a next_cursor exactly as it was given"
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            raise InvalidQuery(problem)
        rollout_id, created = data["id"], data["t"]
        if not isinstance(rollout_id, str) or not isinstance(created, str):
            raise InvalidQuery(problem)
        return parse_timestamp(created), rollout_id
    except (UnicodeError, binascii.Error, ValueError, KeyError) as exc:
        if isinstance(exc, InvalidQuery):
            raise
        raise InvalidQuery(problem) from None


# --------------------------------------------------------------------------------------------
# row conversions
# --------------------------------------------------------------------------------------------


def _ref(value: Any) -> ModelRef | None:
    if not isinstance(value, Mapping) or not value.get("name"):
        return None
    return ModelRef(
        model_name=None,
        storage_uri=value.get("storage_uri"),
        artifact_digest=value.get("artifact_digest"),
        revision=value.get("name"),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _summary(m: Mapping[Any, Any]) -> RolloutSummary:
    machine = _mapping(_mapping(m["state"]).get("machine"))
    canary = _ref(machine.get("canary")) or ModelRef(None, None, None, m["canary_revision"])
    return RolloutSummary(
        id=m["id"],
        namespace=m["namespace"],
        name=m["name"],
        phase=m["phase"],
        active=bool(m["active"]),
        outcome=machine.get("outcome"),
        policy=m["policy_name"],
        mode=m["mode"],
        canary=canary,
        stable=_ref(machine.get("stable")),
        challenger=machine.get("challenger"),
        started_by=machine.get("started_by"),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _approval(mapping: Mapping[Any, Any]) -> ApprovalRow:
    values = dict(mapping)
    values["requesters"] = tuple(values.get("requesters") or ())
    values["asked"] = tuple(values.get("asked") or ())
    return ApprovalRow(**values)


_RECORD_COLUMNS: Final = (AuditLog.seq, AuditLog.prev_hash, AuditLog.record_hash, AuditLog.body)


# The point-in-time statements, built once with bound parameters (SQLAlchemy then compiles
# each once): an answer is a handful of round trips whatever the service's history.
_NO_SEQ_BOUND: Final = 2**63 - 1  # the largest bigint: no bound on seq


def _newest(actions: Sequence[str], *conditions: ColumnElement[bool]) -> Select[Any]:
    """The newest record (seq, time) of each of ``actions`` meeting ``conditions``: one
    LIMIT 1 per action, sent together as a UNION ALL. Each walks the (namespace, name,
    action, recorded_at) index backwards from the bound and stops at its first row, where
    ``action IN (...)`` reads and sorts every such record of the service (thousands, for a
    service with a long history)."""
    branches = [
        select(AuditLog.seq, AuditLog.recorded_at)
        .where(*conditions, AuditLog.action == action)
        .order_by(AuditLog.recorded_at.desc(), AuditLog.seq.desc())
        .limit(1)
        .subquery()
        for action in actions
    ]
    if len(branches) == 1:
        return select(branches[0].c.seq, branches[0].c.recorded_at)
    union = union_all(*(select(b.c.seq, b.c.recorded_at) for b in branches)).subquery()
    return select(union.c.seq, union.c.recorded_at)


_SERVICE: Final = (
    AuditLog.namespace == bindparam("namespace"),
    AuditLog.name == bindparam("name"),
)
_LAST_STARTED: Final = _newest(
    ("rollout.started",), *_SERVICE, AuditLog.recorded_at <= bindparam("until")
)
"""The service's last rollout start at or before ``until``."""
_LAST_SPLIT: Final = _newest(
    SPLIT_ACTIONS,
    *_SERVICE,
    AuditLog.recorded_at <= bindparam("until"),
    AuditLog.seq < bindparam("before_seq"),
)
"""The service's last record that sets its split on its own, at or before ``until`` and
before seq ``before_seq``."""
_WINDOW: Final = (
    select(*_RECORD_COLUMNS)
    .where(
        *_SERVICE,
        AuditLog.recorded_at >= bindparam("start_at"),
        AuditLog.recorded_at <= bindparam("until"),
        AuditLog.seq >= bindparam("start_seq"),
        AuditLog.action != _ANALYSIS,
    )
    .order_by(AuditLog.seq)
    .limit(MAX_WINDOW + 1)
)
"""The service's records from the window's start to ``until`` (no analyses: the evidence
is read from the measurement rows)."""


def _evidence_statement() -> Select[Any]:
    m = MeasurementRow
    check = (m.rollout_id, m.check_name)
    newest_first = (m.evaluated_at.desc(), m.audit_seq.desc(), m.position.desc())
    at: BindParameter[Any] = bindparam("at")
    ranked = (
        select(
            m.__table__,
            func.row_number().over(partition_by=check, order_by=newest_first).label("pick"),
            func.count().over(partition_by=check).label("evaluations"),
        )
        .join(AuditLog, AuditLog.seq == m.audit_seq)
        .where(
            m.rollout_id.in_(bindparam("rollouts", expanding=True)),
            m.evaluated_at <= at,
            AuditLog.recorded_at <= at,
        )
        .subquery()
    )
    return select(ranked).where(ranked.c.pick == 1)


_EVIDENCE: Final = _evidence_statement()
"""Per rollout of ``rollouts`` and check, its newest measurement evaluated at or before
``at`` in a record written at or before it, and how many there are: one query for all the
rollouts (a window over each rollout's checks), not one per check."""


def _model_matches(model: str) -> ColumnElement[bool]:
    """Rollouts whose canary or stable revision has this name or storageUri (the storageUri
    columns hold the state document's, :func:`canary.audit.rollouts.storage_uris`): an OR of
    four indexed columns."""
    return or_(
        RolloutModel.canary_revision == model,
        RolloutModel.stable_revision == model,
        RolloutModel.canary_storage_uri == model,
        RolloutModel.stable_storage_uri == model,
    )


# --------------------------------------------------------------------------------------------
# the queries
# --------------------------------------------------------------------------------------------


class AuditHistory:
    """The auditor's read-only queries (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    # -- rollout history ---------------------------------------------------------------------

    def find_rollouts(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RolloutPage:
        """Rollouts newest first (by start, then id), every filter given applying:

        * ``namespace`` / ``name``: the InferenceService (either alone too);
        * ``model``: the canary's or the stable revision's name or storageUri, exactly;
        * ``since`` / ``until``: started at or after / at or before (times with a zone);
        * ``outcome``: a phase (``Succeeded``, ``RolledBack``, ...), ``active`` or
          ``finished``.

        ``cursor`` is a page's ``next_cursor``: the next page continues after that page's
        last rollout (keyset, so rollouts started meanwhile never shift the pages).
        """
        _aware("since", since)
        _aware("until", until)
        size = _limit(limit)
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidQuery(
                f"unknown outcome {outcome!r}; use one of {', '.join(sorted(OUTCOMES))}"
            )
        if model is not None and not model.strip():
            raise InvalidQuery("model must not be empty")
        table = RolloutModel
        query: Select[Any] = select(table.__table__)
        if namespace is not None:
            query = query.where(table.namespace == namespace)
        if name is not None:
            query = query.where(table.name == name)
        if since is not None:
            query = query.where(table.created_at >= since)
        if until is not None:
            query = query.where(table.created_at <= until)
        if outcome == "active":
            query = query.where(table.active.is_(True))
        elif outcome == "finished":
            query = query.where(table.active.is_(False))
        elif outcome is not None:
            query = query.where(table.phase == outcome)
        if model is not None:
            query = query.where(_model_matches(model))
        if cursor is not None:
            after, after_id = decode_cursor(cursor)
            # (created_at, id) < (after, after_id), written so that the bound on created_at
            # is an index condition: the scan starts at the cursor, not at the newest rollout
            query = query.where(
                table.created_at <= after,
                or_(table.created_at < after, table.id < after_id),
            )
        query = query.order_by(table.created_at.desc(), table.id.desc()).limit(size + 1)
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        found = [_summary(row._mapping) for row in rows[:size]]
        more = len(rows) > size
        next_cursor = encode_cursor(found[-1].created_at, found[-1].id) if more else None
        return RolloutPage(tuple(found), next_cursor)

    def rollout_records(
        self, rollout_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> TimelinePage:
        """One rollout's records (its timeline) in chain order, after ``after_seq``."""
        size = _limit(limit)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise InvalidQuery(f"after_seq must be a whole number >= 0, got {after_seq!r}")
        query = (
            select(*_RECORD_COLUMNS)
            .where(AuditLog.rollout_id == rollout_id, AuditLog.seq > after_seq)
            .order_by(AuditLog.seq)
            .limit(size + 1)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        records = decoded_records(rows[:size])
        more = len(rows) > size
        return TimelinePage(rollout_id, tuple(records), records[-1].seq if more else None)

    # -- point in time -----------------------------------------------------------------------

    def records_for_service(
        self, namespace: str, name: str, *, until: datetime
    ) -> tuple[AuditRecord, ...]:
        """The records of ``namespace/name`` the point-in-time logic needs at ``until``.

        The window starts at the last record that establishes the split on its own
        (:data:`SPLIT_ACTIONS`) *before* the last ``rollout.started`` at or before
        ``until`` (or at or before ``until`` when no rollout started by then), so that:

        * the split in force when the last rollout started is known (its first step may
          not have shown yet; across a supersede the replaced canary keeps its share);
        * every record of that rollout is there, for its phase at ``until``.

        ``analysis.evaluated`` records are left out: the evidence is read from the
        ``measurements`` rows. Empty when no record establishes a split by ``until``. More
        than :data:`MAX_WINDOW` records fails with :class:`AuditError`.
        """
        _aware("until", until)
        with self._tx(write=False) as conn:
            return tuple(self._window(conn, namespace, name, until))

    def point_in_time(self, namespace: str, name: str, at: datetime) -> pit.PointInTime:
        """Which revisions of ``namespace/name`` carried its traffic at ``at``, with their
        models, rollouts, approvals and evidence (:mod:`canary.evidence.pointintime`)."""
        _aware("at", at)
        with self._tx(write=False) as conn:
            return self._point_in_time(conn, namespace, name, at)

    def point_in_time_by_model(self, model: str, at: datetime, *, limit: int = 50) -> ModelAt:
        """The InferenceServices that served ``model`` (a revision name or a storageUri) at
        ``at``, each with its whole answer: those whose rollouts started by ``at`` name it
        as canary or stable, and whose answer gives it a share (either side of a
        transition counts). At most ``limit`` services are looked at."""
        _aware("at", at)
        size = _limit(limit)
        if not model.strip():
            raise InvalidQuery("model must not be empty")
        query = (
            select(RolloutModel.namespace, RolloutModel.name)
            .where(RolloutModel.created_at <= at, _model_matches(model))
            .group_by(RolloutModel.namespace, RolloutModel.name)
            .order_by(RolloutModel.namespace, RolloutModel.name)
            .limit(size + 1)
        )
        answers = []
        with self._tx(write=False) as conn:
            services = conn.execute(query).all()
            for service in services[:size]:
                answer = self._point_in_time(conn, service.namespace, service.name, at)
                if any(_serves(r, model) for r in answer.revisions):
                    answers.append(answer)
        return ModelAt(model, at, tuple(answers), len(services) > size)

    # -- the parts ---------------------------------------------------------------------------

    def _point_in_time(
        self, conn: Connection, namespace: str, name: str, at: datetime
    ) -> pit.PointInTime:
        records = self._window(conn, namespace, name, at)
        answer = pit.traffic_at(namespace, name, at, records)
        if records:
            first = records[0].seq
            earlier = self._provenance(
                conn, namespace, name, at, pit.provenance_names(answer), first
            )
            for rollout in {r.rollout for r in answer.revisions if r.rollout is not None}:
                if rollout.started is None:  # started before the window: its first record
                    earlier.extend(self._started(conn, rollout.id, first))
            if earlier:
                answer = pit.traffic_at(namespace, name, at, records, earlier=earlier)
        rollouts = answer.rollout_ids()
        if not rollouts:
            return answer
        approvals: dict[str, list[ApprovalRow]] = {}
        for row in conn.execute(
            select(ApprovalModel.__table__)
            .where(ApprovalModel.rollout_id.in_(rollouts))
            .order_by(ApprovalModel.requested_at, ApprovalModel.id)
        ).all():
            approval = _approval(row._mapping)
            approvals.setdefault(approval.rollout_id, []).append(approval)
        evidence = self._evidence(conn, rollouts, at)
        return pit.with_support(answer, approvals, evidence)

    @staticmethod
    def _last(conn: Connection, statement: Select[Any], **bounds: Any) -> tuple[int, datetime]:
        """The seq and time of the newest record (by time, then seq) ``statement`` finds
        (:data:`_LAST_STARTED`, :data:`_LAST_SPLIT`); ``(0, _NO_RECORD)`` when none."""
        rows = conn.execute(statement, bounds).all()
        if not rows:
            return (0, _NO_RECORD)
        newest = max(rows, key=lambda row: (row.recorded_at, row.seq))
        return (int(newest.seq), newest.recorded_at)

    def _window(
        self, conn: Connection, namespace: str, name: str, until: datetime
    ) -> list[AuditRecord]:
        service = {"namespace": namespace, "name": name}
        started_seq, started_at = self._last(conn, _LAST_STARTED, **service, until=until)
        base_seq, base_at = self._last(
            conn,
            _LAST_SPLIT,
            **service,
            until=started_at if started_seq else until,
            before_seq=started_seq if started_seq else _NO_SEQ_BOUND,
        )
        start_seq, start_at = (base_seq, base_at) if base_seq else (started_seq, started_at)
        if not start_seq:
            return []
        rows = conn.execute(
            _WINDOW, {**service, "start_at": start_at, "until": until, "start_seq": start_seq}
        ).all()
        if len(rows) > MAX_WINDOW:
            raise AuditError(
                f"{namespace}/{name} has more than {MAX_WINDOW} records between seq "
                f"{start_seq} and {format_timestamp(until)}; a point-in-time answer does not "
                "read that many"
            )
        return decoded_records(rows)

    def _provenance(
        self,
        conn: Connection,
        namespace: str,
        name: str,
        at: datetime,
        revisions: Sequence[str],
        before_seq: int,
    ) -> list[AuditRecord]:
        """For each revision, the ``promoted`` record of the newest rollout that promoted a
        revision of that name before the window, with that rollout's start and the records
        that changed its phase after the promotion (a promoted revision's share set by hand)
        before the window."""
        out: list[AuditRecord] = []
        for revision in revisions:
            promoted = conn.execute(
                select(*_RECORD_COLUMNS, AuditLog.rollout_id)
                .where(
                    AuditLog.namespace == namespace,
                    AuditLog.name == name,
                    AuditLog.action == "promoted",
                    AuditLog.canary_revision == revision,
                    AuditLog.recorded_at <= at,
                    AuditLog.seq < before_seq,
                )
                .order_by(AuditLog.recorded_at.desc(), AuditLog.seq.desc())
                .limit(1)
            ).first()
            if promoted is None:
                continue
            later = conn.execute(
                select(*_RECORD_COLUMNS).where(
                    AuditLog.rollout_id == promoted.rollout_id,
                    AuditLog.action.in_(_AFTER_PROMOTION),
                    AuditLog.seq > promoted.seq,
                    AuditLog.seq < before_seq,
                )
            ).all()
            out.extend(self._started(conn, promoted.rollout_id, before_seq))
            out.extend(decoded_records(sorted([promoted, *later], key=lambda row: int(row.seq))))
        return out

    @staticmethod
    def _started(conn: Connection, rollout_id: str, before_seq: int) -> list[AuditRecord]:
        """A rollout's start record, when it lies before ``before_seq``. (No ORDER BY seq:
        PostgreSQL would walk the primary key from the chain's start to find it.)"""
        rows = conn.execute(
            select(*_RECORD_COLUMNS).where(
                AuditLog.rollout_id == rollout_id,
                AuditLog.action.in_(_STARTS),
                AuditLog.seq < before_seq,
            )
        ).all()
        return decoded_records(sorted(rows, key=lambda row: int(row.seq))[:1])

    @staticmethod
    def _evidence(
        conn: Connection, rollout_ids: Sequence[str], at: datetime
    ) -> dict[str, pit.Evidence]:
        """Per rollout, its measurements evaluated at or before ``at``, in records written at
        or before it: per check the latest and a count (:data:`_EVIDENCE`)."""
        rows = conn.execute(_EVIDENCE, {"rollouts": list(rollout_ids), "at": at}).all()
        checks: dict[str, list[pit.CheckEvidence]] = {rid: [] for rid in rollout_ids}
        for row in sorted(rows, key=lambda row: (row.rollout_id, row.check_name)):
            stored = _stored_measurement(row._mapping)
            checks[row.rollout_id].append(
                pit.CheckEvidence(
                    row.check_name, int(row.evaluations), stored.measurement, row.audit_seq
                )
            )
        return {
            rid: pit.Evidence(rid, sum(c.evaluations for c in found), tuple(found))
            for rid, found in checks.items()
        }


def _serves(revision: pit.RevisionAt, model: str) -> bool:
    names = {revision.revision, revision.model.storage_uri, revision.model.model_name}
    if model not in names:
        return False
    shares = (revision.percent, revision.percent_before, revision.percent_after)
    return any(share for share in shares if share is not None)
