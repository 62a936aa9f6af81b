"""A quick proof that a stored record's body, query columns and measurement rows agree.

:meth:`ChainCheck.verify <canary.audit.verify.ChainCheck.verify>` checks every record's body
against the record and its derived rows (:meth:`ChainVerifier.check
<canary.audit.verifier.ChainVerifier.check>`: decode the body, derive the query columns and
the measurement rows, compare each value). Done for each of millions of records, that costs
more than reading and hashing them. :class:`QuickCheck` reaches the same outcome with less
work for records as the controller writes them: it accepts a record only when every value
has the plain type the controller writes, every rule that decoding the body enforces holds,
and the stored values equal the derived ones. Anything else (an unusual type, a rule
broken, a value that differs, an exception on the way) makes it decline, and the caller
runs the full check, which finds and words the problem, or accepts what the quick check
could not prove (a NaN measurement, say).

So it must never accept what the full check rejects; it may decline what the full check
accepts (``tests/unit/test_audit_quickcheck.py`` holds the two against each other). Why
comparing tuples is enough: the stored values come from PostgreSQL's typed columns (text as
``str`` or None, ``bigint`` as ``int``, ``double precision`` as ``float``, ``boolean`` as
``bool``, ``timestamptz`` as an aware ``datetime``), and ``==`` on them differs from
:func:`~canary.audit.verifier.same` only for NaN (``==`` says unequal: declined) and for a
``bool`` against a number (``True == 1``), which requiring ``int`` or None for the sample
counts and ``bool`` for ``dry_run`` excludes. SQLite's rows (dynamic typing) are not for
this check.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, Final

from canary.audit.records import (
    ACTION_PATTERN,
    ACTOR_KINDS,
    READABLE_VERSIONS,
    AuditEntry,
    canonical_json,
    decode_float,
    parse_timestamp,
)

__all__ = ["QuickCheck"]

_BODY_KEYS: Final = frozenset(f.name for f in dataclasses.fields(AuditEntry)) | {"v", "seq"}
_OBJECT_KEYS: Final = frozenset({"namespace", "name", "uid", "generation", "resource_version"})
_MODEL_KEYS: Final = frozenset({"model_name", "storage_uri", "artifact_digest", "revision"})
_KNOWN_ACTIONS: Final = 4096  # valid actions remembered (there are a few dozen)

# canonical_json without normalise(): for parsed JSON data (dicts with string keys, lists,
# strings, ints, floats, bools, None) normalise changes nothing but non-finite floats, which
# this encoder refuses (allow_nan=False) instead of writing them as strings.
_DETAIL_JSON: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_SAMPLE: Final = {"b": [1, -0.5, 1e16, None, True], "a": {"ä": 'x\ny\u2028"😀'}, "A": ""}


def _detail_encoder() -> Callable[[Any], str]:
    """``_DETAIL_JSON.encode``, faster: the standard library's C encoder, made once with the
    arguments ``JSONEncoder.encode`` makes it with on every call (less the check for cycles,
    which parsed JSON cannot have). ``_DETAIL_JSON.encode`` itself without a C encoder, or if
    this one does not write exactly what canonical_json writes and refuse what it refuses."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _DETAIL_JSON.encode
    try:
        encode = make(None, _DETAIL_JSON.default, encode_basestring, None, ":", ",", True,
                      False, False)  # fmt: skip

        def fast(value: Any) -> str:
            return "".join(encode(value, 0))

        same = fast(_SAMPLE) == canonical_json(_SAMPLE)
    except Exception:  # another C encoder than the one known: do without
        return _DETAIL_JSON.encode
    if not same:
        return _DETAIL_JSON.encode
    try:
        fast({"x": math.inf})
    except ValueError:  # refused, as it must be
        return fast
    return _DETAIL_JSON.encode


_canonical_detail: Final = _detail_encoder()


class QuickCheck:
    """Proves records sound, one after the other. It remembers the last timestamp it parsed
    (a record's measurements usually share its time) and the actions that matched the
    action pattern (a few dozen, repeated)."""

    def __init__(self) -> None:
        self._stamp_text: str | None = None
        self._stamp: datetime | None = None
        self._actions: set[str] = set()

    def proves(
        self,
        seq: int,
        data: Any,
        columns: tuple[Any, ...],
        measurements: Sequence[tuple[Any, ...]],
    ) -> bool:
        """True only when the full check of record ``seq`` would find nothing wrong with its
        body ``data`` (parsed JSON), its query ``columns`` (as PostgreSQL's driver read them,
        in ``PROJECTION_COLUMNS`` order) and its ``measurements`` rows (likewise, in
        ``MEASUREMENT_COLUMNS`` order, by position); False when it cannot tell."""
        try:
            return self._proves(seq, data, columns, measurements)
        except Exception:  # a missing key, a value of an unexpected type...: not proven
            return False

    def _timestamp(self, text: str) -> datetime:
        """parse_timestamp(text), remembering the last one."""
        if text != self._stamp_text or self._stamp is None:
            self._stamp = parse_timestamp(text)
            self._stamp_text = text
        return self._stamp

    def _proves(
        self,
        seq: int,
        data: Any,
        columns: tuple[Any, ...],
        measurements: Sequence[tuple[Any, ...]],
    ) -> bool:
        # What decode_body requires: exactly the entry's fields plus v and seq, a known
        # version, and each value of a type and form the entry accepts. Each key read below
        # with [] is one decode_body, projection or measurement_rows reads with []: a missing
        # one raises KeyError, and so does any value that has no such item.
        if type(data) is not dict or data.keys() != _BODY_KEYS:
            return False
        version, body_seq, actor = data["v"], data["seq"], data["actor"]
        if type(version) is not int or version not in READABLE_VERSIONS:
            return False
        if type(body_seq) is not int or body_seq != seq or type(actor) is not dict:
            return False
        kind, actor_id, groups = actor["kind"], actor["id"], actor.get("groups")
        if type(kind) is not str or kind not in ACTOR_KINDS:
            return False
        if type(actor_id) is not str or not actor_id:
            return False
        if groups is not None and type(groups) is not list:
            return False
        action = data["action"]
        if type(action) is not str:
            return False
        if action not in self._actions:
            if ACTION_PATTERN.match(action) is None:
                return False
            if len(self._actions) < _KNOWN_ACTIONS:
                self._actions.add(action)
        obj, stable, canary = data["obj"], data["stable"], data["canary"]
        if obj is not None and (type(obj) is not dict or not obj.keys() >= _OBJECT_KEYS):
            return False
        for model in (stable, canary):
            if model is not None and (type(model) is not dict or not model.keys() >= _MODEL_KEYS):
                return False
        for split in (data["traffic_before"], data["traffic_after"]):
            if split is not None and (
                type(split) is not dict or not all(type(w) is int for w in split.values())
            ):
                return False
        approval_time, epoch, at = data["approval_time"], data["leader_epoch"], data["at"]
        if approval_time is not None and type(parse_timestamp(approval_time)) is not datetime:
            return False  # (parse_timestamp raises for anything but a timestamp string)
        if epoch is not None and (type(epoch) is not int or epoch < 0):
            return False
        if type(at) is not str:
            return False
        # The query columns, derived as projection() derives them.
        rollout_id = data["rollout_id"]
        derived = (
            self._timestamp(at),
            action,
            kind,
            actor_id,
            rollout_id,
            None if obj is None else obj.get("namespace"),
            None if obj is None else obj.get("name"),
            None if canary is None else canary.get("revision"),
            None if stable is None else stable.get("revision"),
            data["change_number"],
            data["correlation_id"],
        )
        if columns != derived:
            return False
        # The measurement rows, derived as measurement_rows() derives them.
        listed = data["measurements"]
        if type(listed) is not list or len(listed) != len(measurements):
            return False
        for position, m in enumerate(listed):
            check, evaluated_at, dry_run = m["check"], m["evaluated_at"], m["dry_run"]
            canary_samples, baseline_samples = m["canary_samples"], m["baseline_samples"]
            if type(check) is not str or not check or type(evaluated_at) is not str:
                return False
            if type(dry_run) is not bool:
                return False
            if not (canary_samples is None or type(canary_samples) is int):
                return False
            if not (baseline_samples is None or type(baseline_samples) is int):
                return False
            canary_value, baseline_value = m["canary_value"], m["baseline_value"]
            statistic, threshold = m["statistic"], m["threshold"]
            if canary_value is not None and type(canary_value) is not float:
                canary_value = decode_float(canary_value)
            if baseline_value is not None and type(baseline_value) is not float:
                baseline_value = decode_float(baseline_value)
            if statistic is not None and type(statistic) is not float:
                statistic = decode_float(statistic)
            if threshold is not None and type(threshold) is not float:
                threshold = decode_float(threshold)
            detail = _canonical_detail(m["detail"])
            if not detail.isascii():
                detail.encode("utf-8")  # canonical_json refuses what UTF-8 cannot hold
            expected = (
                seq,
                position,
                rollout_id,
                check,
                self._timestamp(evaluated_at),
                m["query"],
                m["prometheus_url"],
                m["response_digest"],
                canary_value,
                baseline_value,
                canary_samples,
                baseline_samples,
                statistic,
                threshold,
                m["verdict"],
                dry_run,
                detail,
            )
            if measurements[position] != expected:
                return False
        return True
