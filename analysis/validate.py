"""Validation: a Prometheus answer becomes evidence only once it keeps these rules.

PURE: answers in, typed errors out; no I/O and no clock (the times compared are given).
Every error is an :class:`~analysis.types.InvalidAnswer` that names the series
(``metric{label="value",...}``) and the rule broken, and carries the query, the
evaluation time, the digest of the raw answer, and the attempts it took.

=====================  ==================================================================
rule                   what breaks it
=====================  ==================================================================
``partial``            the answer came with ``warnings`` (some series may be missing)
``unreadable``         a sample whose value or time is not a number
``duplicate``          two series with the same label set in one answer
``timestamp``          a sample time further than ``skew`` from the time asked for
``sample-age``         a raw series' last sample older than ``max_age`` at the time asked
                       for while its process' other series are fresh (a value frozen
                       while time moves), or after that time
``non-finite``         a count (counter, bucket, ``_count``, window count) that is NaN/±Inf
``negative``           a count below zero
``no-inf-bucket``      a histogram series without its ``le="+Inf"`` bucket
``le``                 a bucket whose ``le`` is not a number
``monotonic``          cumulative buckets that fall as ``le`` rises
``count-mismatch``     the ``+Inf`` bucket disagrees with the series' ``_count``
``decrease``           a counter that went down without a consistent reset
=====================  ==================================================================

A counter reset (a restarted process counting from zero again) is recognised only when it
is consistent: the series' *group* (one histogram's buckets and count; one process'
request counters across status codes) falls as a whole to at most ``reset_ratio`` of its
previous total. Then every series of the group counts from zero; any other decrease is a
``decrease`` error, never clamped and never taken for a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from analysis.types import (
    DuplicateSeries,
    InvalidAnswer,
    InvalidCounter,
    InvalidHistogram,
    PartialAnswer,
    QueryResult,
    Series,
    StaleSample,
    UnreadableSample,
)

__all__ = [
    "DEFAULT_MAX_SAMPLE_AGE",
    "DEFAULT_RESET_RATIO",
    "SAMPLE_LABEL",
    "Origin",
    "answer_problems",
    "check_answer",
    "count_problem",
    "group_increase",
    "histogram_problem",
    "is_count",
    "le_text",
    "sample_age_problems",
    "series_name",
    "with_sample_times",
]

DEFAULT_RESET_RATIO = 0.1
"""A drop to at most this fraction of a group's previous total reads as a counter reset."""

DEFAULT_MAX_SAMPLE_AGE = timedelta(minutes=2)
"""How old the last sample of a raw counter may be at the time asked for: several scrape
intervals (Prometheus itself answers with samples up to 5 minutes old)."""

SAMPLE_LABEL = "ksc_sample"
"""The label that marks, in a raw answer, the series that carry sample times rather than
values (see :func:`with_sample_times`)."""

K = TypeVar("K", bound=Hashable)


def le_text(le: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf`` for infinity)."""
    return "+Inf" if le == math.inf else f"{le:g}"


def series_name(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``metric{a="x",b="y"}`` for a label set (the metric name from ``__name__``)."""
    items = dict(labels.items() if isinstance(labels, Mapping) else labels)
    name = items.pop("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    return f"{name}{{{inner}}}"


@dataclass(frozen=True)
class Origin:
    """Where a value came from: what an error about it must carry."""

    query: str | None
    at: datetime | None
    raw_digest: str | None = None
    attempts: int = 1
    failures: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: QueryResult, *, query: str, at: datetime) -> Origin:
        return cls(query, at, result.raw_digest, result.attempts, result.failures)

    def error(
        self, kind: type[InvalidAnswer], message: str, *, series: str, rule: str
    ) -> InvalidAnswer:
        return kind(
            message,
            series=series,
            rule=rule,
            query=self.query,
            raw_digest=self.raw_digest,
            at=self.at,
            attempts=self.attempts,
            failures=self.failures,
        )


def answer_problems(
    result: QueryResult, *, query: str, at: datetime, skew: timedelta
) -> list[tuple[Series, InvalidAnswer]]:
    """The series of ``result`` that break a rule of every answer (an unreadable sample, a
    duplicate label set, a sample time more than ``skew`` from ``at``), each with its
    error. Warnings are not a series' problem: see :func:`check_answer`."""
    origin = Origin.of(result, query=query, at=at)
    problems: list[tuple[Series, InvalidAnswer]] = []
    # A label set's key: its names in order and its values in that order. Prometheus
    # writes the names sorted, and an answer has a few name lists: each list's order is
    # found once, and a list in another order is put in it, so that no reordering hides a
    # duplicate. (Names are shared by the JSON decoder, values are not: this hashes each
    # value once and builds no set per series; answers are big.)
    orders: dict[tuple[str, ...], tuple[tuple[str, ...], bool]] = {}
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    asked = at.timestamp()
    bound = skew.total_seconds()
    for s in result.series:  # (a series' name is written only for an error: answers are big)
        names = tuple(s.labels)
        known = orders.get(names)
        if known is None:
            ranked = tuple(sorted(names))
            known = orders[names] = (ranked, ranked == names)
        order, in_order = known
        key = (
            order,
            tuple(s.labels.values()) if in_order else tuple(s.labels[n] for n in order),
        )
        if s.unreadable is not None:
            problems.append((s, origin.error(
                UnreadableSample, f"the sample cannot be read: {s.unreadable}",
                series=series_name(s.labels), rule="unreadable")))  # fmt: skip
            continue
        if key in seen:
            problems.append((s, origin.error(
                DuplicateSeries, "several series with this label set in one answer",
                series=series_name(s.labels), rule="duplicate")))  # fmt: skip
            continue
        seen.add(key)
        if s.timestamp is not None and not abs(s.timestamp - asked) <= bound:
            off = s.timestamp - asked
            when = "ahead of" if off > 0 else "behind"
            problems.append((s, origin.error(
                StaleSample,
                f"the sample is {abs(off):.3f} s {when} the time asked for "
                f"({at.isoformat()}); at most {bound:g} s allowed",
                series=series_name(s.labels), rule="timestamp")))  # fmt: skip
    return problems


def with_sample_times(selector: str, *, max_age: timedelta) -> str:
    """PromQL for the raw series of ``selector`` and, in the same answer (one set of
    scrapes), labelled ``ksc_sample="time"``, the time of the last sample of each series
    whose sample is more than ``max_age`` old at the time asked for. An instant query
    stamps every value with the time asked for, so only ``timestamp()`` tells how old a
    sample is; Prometheus keeps only the old ones, so the normal answer has no second
    series per series (every series' time would double what Prometheus encodes and the
    controller decodes). A sample later than the time asked for is not asked about: an
    instant query selects only samples at or before its time, so only a store that lies
    answers one, and a time in the answer is judged whatever the query asked."""
    old = f"timestamp({selector}) < time() - {max_age.total_seconds()!r}"
    return f'{selector} or label_replace({old}, "{SAMPLE_LABEL}", "time", "", "")'


def sample_age_problems(
    result: QueryResult,
    *,
    query: str,
    at: datetime,
    max_age: timedelta,
    skew: timedelta,
    group: Callable[[Mapping[str, str]], Hashable] | None = None,
) -> tuple[list[Series], list[tuple[Series, InvalidAnswer]]]:
    """The value series of an answer to :func:`with_sample_times`, and those whose last
    sample is older than ``max_age`` at ``at`` or later than ``at`` (beyond ``skew``),
    each with its error. A value series with no time in the answer is current: the query
    asks only for the times of the others. A time is judged again here, whatever the
    answer's reason to include it.

    With ``group`` (the series one process writes together), an old sample is an error
    only when another series of its group is current: a value frozen while its siblings
    move (a 5xx counter stuck while the 2xx one counts) looks like good news, whereas a
    process whose every series stopped (a pod gone while Prometheus was down) only stops
    counting. A sample after ``at`` is always an error."""
    origin = Origin.of(result, query=query, at=at)
    times: dict[frozenset[tuple[str, str]], float] = {}
    values: list[Series] = []
    # (the label sets are copied and cut, not filtered label by label: answers are big)
    for s in result.series:
        if s.labels.get(SAMPLE_LABEL) == "time":
            cut = dict(s.labels)
            del cut[SAMPLE_LABEL]
            times[frozenset(cut.items())] = s.value
        else:
            values.append(s)
    if not times:
        return values, []  # every sample is current: the normal case costs nothing more
    asked = at.timestamp()
    limit = max_age.total_seconds()

    def stamp_of(s: Series) -> float | None:
        cut = dict(s.labels)
        cut.pop("__name__", None)
        return times.get(frozenset(cut.items()))

    stamps = [stamp_of(s) for s in values]  # once each: answers are big
    current: set[Hashable] = set()
    if group is not None:
        for s, stamp in zip(values, stamps, strict=True):
            if stamp is None or (math.isfinite(stamp) and asked - stamp <= limit):
                current.add(group(s.labels))
    problems: list[tuple[Series, InvalidAnswer]] = []
    for s, stamp in zip(values, stamps, strict=True):
        if stamp is None:
            continue
        age = asked - stamp
        if group is not None and age > limit and group(s.labels) not in current:
            continue  # the whole process stopped: its counters no longer move
        if not math.isfinite(stamp):
            shown = "NaN" if math.isnan(stamp) else ("+Inf" if stamp > 0 else "-Inf")
            problems.append((s, origin.error(
                StaleSample, f"the last sample's time is {shown}, not a time",
                series=series_name(s.labels), rule="sample-age")))  # fmt: skip
        elif not -skew.total_seconds() <= age <= limit:
            when = f"{age:.3f} s old" if age >= 0 else f"{-age:.3f} s after it"
            problems.append((s, origin.error(
                StaleSample,
                f"the last sample is {when} at the time asked for ({at.isoformat()}); at most "
                f"{max_age.total_seconds():g} s old allowed: the value is frozen or not yet "
                "current",
                series=series_name(s.labels), rule="sample-age")))  # fmt: skip
    return values, problems


def check_answer(result: QueryResult, *, query: str, at: datetime, skew: timedelta) -> None:
    """Raise the first rule ``result`` breaks as a whole: warnings (a partial answer), a
    duplicate label set, a sample time too far from ``at``."""
    if result.warnings:
        raise Origin.of(result, query=query, at=at).error(
            PartialAnswer,
            f"Prometheus warned that the answer may be partial: {'; '.join(result.warnings)}",
            series="(whole answer)",
            rule="partial",
        )
    for _series, problem in answer_problems(result, query=query, at=at, skew=skew):
        raise problem


def is_count(value: float) -> bool:
    """Whether ``value`` is a finite number >= 0 (checked before any message is written:
    answers are big)."""
    return 0.0 <= value < math.inf


def count_problem(value: float, *, series: str, what: str, origin: Origin) -> InvalidAnswer | None:
    """The error for a count that is not a finite number >= 0, else None."""
    if is_count(value):
        return None
    if math.isnan(value) or math.isinf(value):
        shown = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        return origin.error(InvalidCounter, f"{what} is {shown}; a count must be finite",
                            series=series, rule="non-finite")  # fmt: skip
    if value < 0:
        return origin.error(InvalidCounter, f"{what} is {value:g}; a count cannot be negative",
                            series=series, rule="negative")  # fmt: skip
    return None


def histogram_problem(
    buckets: Mapping[float, float], count: float | None, *, series: str, origin: Origin
) -> InvalidAnswer | None:
    """The error for one histogram series (its cumulative ``le -> count`` buckets and its
    ``_count``, None when the answer has none), else None."""
    ordered = sorted(buckets.items())
    for le, value in ordered:
        if is_count(value):
            continue
        problem = count_problem(value, series=series, what=f'the bucket le="{le_text(le)}"',
                                origin=origin)  # fmt: skip
        if problem is not None:
            return problem
    if count is not None:
        problem = count_problem(count, series=series, what="_count", origin=origin)
        if problem is not None:
            return problem
    if math.inf not in buckets:
        return origin.error(InvalidHistogram, "the histogram has no le=\"+Inf\" bucket",
                            series=series, rule="no-inf-bucket")  # fmt: skip
    previous: tuple[float, float] | None = None
    for le, value in ordered:
        if previous is not None and value < previous[1]:
            return origin.error(
                InvalidHistogram,
                f'cumulative buckets fall as le rises: le="{le_text(previous[0])}" counts '
                f'{previous[1]:g}, le="{le_text(le)}" only {value:g}',
                series=series,
                rule="monotonic",
            )
        previous = (le, value)
    total = buckets[math.inf]
    if count is not None and not math.isclose(count, total, rel_tol=1e-9, abs_tol=1e-9):
        return origin.error(
            InvalidHistogram,
            f'the le="+Inf" bucket counts {total:g} but _count is {count:g}',
            series=series,
            rule="count-mismatch",
        )
    return None


def group_increase(
    before: Mapping[K, float],
    now: Mapping[K, float],
    *,
    total: Callable[[Mapping[K, float]], float],
    name: Callable[[K], str],
    what: str,
    origin: Origin,
    reset_ratio: float = DEFAULT_RESET_RATIO,
) -> dict[K, float]:
    """Each series' increase from ``before`` to ``now`` for one group of series that reset
    together (values already checked finite and >= 0). ``total`` is the group's total (the
    sum of its counters, or its ``+Inf`` bucket); ``what`` names the group in messages. A
    series new in ``now`` beside others of its group counts from zero (a first 5xx, a
    first slow request). A group with no series at all in ``before`` counts nothing in
    this look: its totals accrued over an unknown time (a new process scraped late, a
    process whose series went stale after failed scrapes, a Prometheus restarted without
    its history), and counting them here would count requests that earlier looks already
    counted. Whether a group counts depends only on which series exist, never on their
    values, so no event is favoured; the group counts from the next look on.
    Raises :class:`~analysis.types.InvalidCounter` for a decrease that is not a
    consistent reset of the whole group to at most ``reset_ratio`` of its total."""
    if not before:
        return dict.fromkeys(now, 0.0)
    dropped = [k for k, v in now.items() if k in before and v < before[k]]
    if not dropped:
        return {k: v - before.get(k, 0.0) for k, v in now.items()}
    old, new = total(before), total(now)
    if new <= reset_ratio * old:
        return dict(now)  # the whole group restarted from zero
    key = dropped[0]
    raise origin.error(
        InvalidCounter,
        f"the counter went down from {before[key]:g} to {now[key]:g} without a reset: "
        f"{what} fell in total from {old:g} to {new:g}, and a reset is a fall to at most "
        f"{reset_ratio:g} x {old:g}",
        series=name(key),
        rule="decrease",
    )
