"""The rows a record's body gives (its ``audit_log`` query columns and its ``measurements``
rows), and entries prepared for appending (pure: standard library only).

Appending a record (:meth:`ChainLog._append <canary.audit.chain.ChainLog._append>`) happens
under the chain's head lock, one transaction at a time, so the less done there the more
records the store appends per second. Nearly all of a record's serialisation does not
depend on its sequence number: :func:`prepare_entry` does it beforehand, in the caller's own
thread (normalising the entry, writing the canonical JSON of every key but ``seq``,
deriving its query columns and measurement rows), and under the lock only the number is
put in (:meth:`PreparedEntry.body`): the canonical JSON of a body sorts its keys, so the
text of the keys that sort before ``"seq"``, then ``"seq":N``, then the text of those after
it, is exactly ``canonical_json(entry_body(N, entry))``
(``tests/unit/test_audit_prepared.py`` holds the two against each other).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from canary.audit.records import (
    JSON,
    AuditEntry,
    canonical_json,
    canonical_text,
    decode_float,
    entry_body,
    parse_timestamp,
)

__all__ = [
    "MEASUREMENT_COLUMNS",
    "PROJECTION_COLUMNS",
    "PreparedEntry",
    "measurement_rows",
    "measurement_values",
    "prepare_entry",
    "projection",
]


def projection(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit_log`` query columns, derived from a body (at write and at verify time)."""
    obj = body["obj"] or {}
    canary = body["canary"] or {}
    stable = body["stable"] or {}
    return {
        "recorded_at": parse_timestamp(body["at"]),
        "action": body["action"],
        "actor_kind": body["actor"]["kind"],
        "actor_id": body["actor"]["id"],
        "rollout_id": body["rollout_id"],
        "namespace": obj.get("namespace"),
        "name": obj.get("name"),
        "canary_revision": canary.get("revision"),
        "stable_revision": stable.get("revision"),
        "change_number": body["change_number"],
        "correlation_id": body["correlation_id"],
    }


PROJECTION_COLUMNS: Final = (
    "recorded_at",
    "action",
    "actor_kind",
    "actor_id",
    "rollout_id",
    "namespace",
    "name",
    "canary_revision",
    "stable_revision",
    "change_number",
    "correlation_id",
)


def measurement_rows(seq: int, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``measurements`` rows of record ``seq``, derived from its body (as written, or as
    parsed from its text)."""
    return [{"audit_seq": seq, **values} for values in measurement_values(body)]


def measurement_values(
    body: Mapping[str, Any], *, normalised: bool = False
) -> list[dict[str, Any]]:
    """The ``measurements`` rows of a body less their ``audit_seq`` (which the body's own
    ``seq`` gives them): what :func:`measurement_rows` derives before the seq is known.

    A detail is stored as its canonical JSON. A body parsed from text may hold what
    canonical JSON writes otherwise (``1e999`` read as an infinite float is written
    ``"+Inf"``), so it is normalised first, unless the caller says the body is
    ``normalised`` already (:func:`prepare_entry`'s, made by ``normalise``)."""
    encode = canonical_text if normalised else canonical_json
    rows = []
    for position, m in enumerate(body["measurements"]):
        rows.append(
            {
                "position": position,
                "rollout_id": body["rollout_id"],
                "check_name": m["check"],
                "evaluated_at": parse_timestamp(m["evaluated_at"]),
                "query": m["query"],
                "prometheus_url": m["prometheus_url"],
                "response_digest": m["response_digest"],
                "canary_value": decode_float(m["canary_value"]),
                "baseline_value": decode_float(m["baseline_value"]),
                "canary_samples": m["canary_samples"],
                "baseline_samples": m["baseline_samples"],
                "statistic": decode_float(m["statistic"]),
                "threshold": decode_float(m["threshold"]),
                "verdict": m["verdict"],
                "dry_run": m["dry_run"],
                "detail": encode(m["detail"]),
            }
        )
    return rows


MEASUREMENT_COLUMNS: Final = (
    "audit_seq",
    "position",
    "rollout_id",
    "check_name",
    "evaluated_at",
    "query",
    "prometheus_url",
    "response_digest",
    "canary_value",
    "baseline_value",
    "canary_samples",
    "baseline_samples",
    "statistic",
    "threshold",
    "verdict",
    "dry_run",
    "detail",
)


_SEQ: Final = "seq"


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """An entry serialised but for its sequence number (:func:`prepare_entry`)."""

    entry: AuditEntry
    data: Mapping[str, JSON]
    """The body less ``seq``: ``entry_body(n, entry)`` without its ``seq`` key."""
    head: str
    """The body's canonical text up to where ``"seq":n`` goes."""
    tail: str
    """Its canonical text after ``"seq":n``."""
    columns: Mapping[str, Any]
    """The ``audit_log`` query columns (:func:`projection`)."""
    measurements: tuple[Mapping[str, Any], ...]
    """The ``measurements`` rows less ``audit_seq`` (:func:`measurement_values`)."""

    def body(self, seq: int) -> str:
        """The record's body text as record ``seq``: ``canonical_json(entry_body(seq,
        entry))``."""
        if type(seq) is not int or seq < 1:
            raise ValueError(f"seq must be an int >= 1, got {seq!r}")
        return f'{self.head}"seq":{seq}{self.tail}'

    def body_data(self, seq: int) -> dict[str, JSON]:
        """The body as data, as record ``seq``: ``entry_body(seq, entry)``."""
        return {**self.data, _SEQ: seq}

    def measurement_rows(self, seq: int) -> list[dict[str, Any]]:
        """The ``measurements`` rows of record ``seq``: ``measurement_rows(seq, body)``."""
        return [{"audit_seq": seq, **values} for values in self.measurements]


def prepare_entry(entry: AuditEntry) -> PreparedEntry:
    """Serialise ``entry`` for appending, all but its sequence number. Raises what
    ``entry_body`` and ``canonical_json`` raise for data an audit record cannot hold."""
    data = entry_body(1, entry)  # the body's layout is entry_body's alone
    del data[_SEQ]
    before = canonical_text({k: v for k, v in data.items() if k < _SEQ})
    after = canonical_text({k: v for k, v in data.items() if k > _SEQ})
    head = "{" if before == "{}" else before[:-1] + ","
    tail = "}" if after == "{}" else "," + after[1:]
    return PreparedEntry(
        entry=entry,
        data=data,
        head=head,
        tail=tail,
        columns=projection(data),
        measurements=tuple(measurement_values(data, normalised=True)),
    )
