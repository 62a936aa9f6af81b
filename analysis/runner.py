"""One evaluation round: every check of a step queried, read, assessed and combined.

:class:`Analyzer` does no I/O of its own: it calls the injected
:class:`~analysis.providers.base.MetricProvider`, and everything else is the pure
:mod:`analysis.profiles` and :mod:`analysis.assess`. Each check costs a fixed number of
queries (a built-in two: its value grouped by revision, and its sample count; a custom
check three), all at the same evaluation time; a query two checks share is sent once. A
check whose queries fail is an Error evaluation and never stops the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from analysis import sequential_check
from analysis.assess import (
    Evidence,
    Judge,
    Judgement,
    assess,
    combine,
    evaluation,
    judge_thresholds,
    reading_from_results,
)
from analysis.looks import PARTS, LookSource, SubjectLook
from analysis.profiles import COUNTER_PART_LABEL, COUNTER_PARTS, counter_query, plan
from analysis.providers.base import MetricProvider
from analysis.sequential import Counts, ErrorRateTest, SequentialState, at_step
from analysis.types import (
    BUILTIN_CHECKS,
    BadQuery,
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    DetailValue,
    Infinite,
    InvalidAnswer,
    InvalidCounter,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    Outcome,
    PartialAnswer,
    ProviderError,
    QueryResult,
    Reading,
    StepAnalysis,
    Subject,
)
from analysis.validate import check_answer, series_name

__all__ = ["DEFAULT_SKEW", "Analyzer", "combined_digest"]

DEFAULT_SKEW = timedelta(seconds=30)
"""Without looks: how far a sample's timestamp may be from the time it was asked for
(a few scrape intervals; Prometheus stamps an instant query's samples with that time)."""


def combined_digest(digests: Sequence[str]) -> str:
    """One digest for the responses of several queries: the digest itself when there is
    one, else the SHA-256 of the digests joined by newlines, in query order (an empty
    string standing for a query that got no response)."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


class Analyzer:
    """Evaluates a step's checks against one metric provider. ``judge`` replaces how values
    are judged (:func:`analysis.assess.judge_thresholds` by default).

    With ``looks`` (:class:`~analysis.looks.LookSource`), the built-in checks read grouped
    looks shared by every rollout, and those with a relative tolerance and a false-rollback
    budget are judged by sequential tests (:mod:`analysis.sequential_check`); custom
    checks always run their own queries. Every answer is validated first
    (:mod:`analysis.validate`); ``skew`` bounds a sample's distance from the time asked
    for (the looks' own bound, or :data:`DEFAULT_SKEW`)."""

    def __init__(
        self,
        provider: MetricProvider,
        *,
        judge: Judge = judge_thresholds,
        looks: LookSource | None = None,
        lag: timedelta = timedelta(seconds=2),
        skew: timedelta | None = None,
    ) -> None:
        self._provider = provider
        self._judge = judge
        self._looks = looks
        # Counters are read this long before the evaluation time, so that every query of
        # one evaluation sees the same scrapes (the looks' own lag when there are looks).
        self._lag = looks.lag if looks is not None else lag
        # How far a sample's timestamp may be from the time asked for (the looks' bound).
        if skew is None:
            skew = looks.skew if looks is not None else DEFAULT_SKEW
        self._skew = skew

    @property
    def looks(self) -> LookSource | None:
        return self._looks

    def analyze(
        self,
        subject: Subject,
        checks: Sequence[CheckDefinition],
        memory: Mapping[str, CheckMemory],
        at: datetime,
        *,
        grace: bool,
        looks_only: bool = False,
        step: tuple[int, datetime] | None = None,
    ) -> StepAnalysis:
        """Evaluate ``checks`` on ``subject`` at ``at``. ``memory`` is the previous
        round's :attr:`StepAnalysis.memory` (missing checks start from zero); ``grace`` is
        True while the step is younger than its hold time. ``looks_only`` evaluates only
        the look-based checks (the fast path between analysis intervals). ``step`` is the
        current step's index and the time its split showed in status: a sequential check
        is sufficient only with ``min_samples`` canary requests counted after that time
        (None: the whole rollout counts as one step)."""
        if step is not None and step[1].tzinfo is None:
            raise ValueError("the step's start must be timezone-aware")
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        names = [check.name for check in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        answers: dict[str, QueryResult | MetricError] = {}
        seen: dict[datetime, SubjectLook | MetricError] = {}
        evaluations: list[CheckEvaluation] = []
        new_memory: dict[str, CheckMemory] = {}
        for check in checks:
            previous = memory.get(check.name, CheckMemory())
            if self._look_based(check):
                done, new_memory[check.name] = self._from_looks(
                    check, subject, previous, at, grace, seen, step
                )
                evaluations.append(done)
                continue
            if looks_only:
                new_memory[check.name] = previous
                continue
            if check.counted:
                done, new_memory[check.name] = self._from_counters(
                    check, subject, previous, at, grace, step
                )
                evaluations.append(done)
                continue
            reading, evidence = self._read(check, subject, at, answers)
            assessment = assess(check, reading, previous, grace=grace, judge=self._judge)
            done = evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
            read = [answers[q] for q in evidence.queries if q in answers]
            evaluations.append(_with_answers_detail(done, reading.error, read))
            new_memory[check.name] = assessment.memory
        return combine(evaluations, new_memory, evaluated_at=at)

    def _look_based(self, check: CheckDefinition) -> bool:
        return self._looks is not None and check.builtin in BUILTIN_CHECKS

    def _look(
        self, subject: Subject, at: datetime, seen: dict[datetime, SubjectLook | MetricError]
    ) -> SubjectLook | MetricError:
        assert self._looks is not None
        if at not in seen:
            try:
                seen[at] = self._looks.look(subject, at)
            except MetricError as error:
                seen[at] = error
        return seen[at]

    def _from_looks(
        self,
        check: CheckDefinition,
        subject: Subject,
        previous: CheckMemory,
        at: datetime,
        grace: bool,
        seen: dict[datetime, SubjectLook | MetricError],
        step: tuple[int, datetime] | None,
    ) -> tuple[CheckEvaluation, CheckMemory]:
        """A built-in check from the grouped looks (sequential when it has a tolerance).

        Only the parts of a look the check reads (:data:`analysis.looks.PARTS`) can fail
        it; a look that fails stops the check's reading there, and is read again at the
        next evaluation. A look from a partial answer (``warnings``) is read only to fail:
        it and the looks after it are read as if counted, and unless the check then gates
        Failed, the evaluation is an Error (never sufficient), the evidence reverts to
        before that look, and it is read again at the next evaluation."""
        source = self._looks
        assert source is not None
        assert check.builtin is not None
        parts = PARTS[check.builtin]
        sequential = check.sequential
        state = previous.sequential or SequentialState() if sequential else None
        if state is not None and step is not None:
            state = at_step(state, step[0])
        through = previous.through
        complete = (state, through)  # the evidence before any partial look
        latest: SubjectLook | None = None
        error: MetricError | None = None
        partial: tuple[str, ...] = ()
        digests: list[str] = []
        attempts, failures = 0, list[str]()
        read = uncounted = 0
        for t in source.due(through, at):
            look = self._look(subject, t, seen)
            if isinstance(look, MetricError):
                error = look
                attempts, failures = attempts + look.attempts, [*failures, *look.failures]
                break
            attempts, failures = attempts + look.attempts, [*failures, *look.failures]
            error = look.problem(parts)
            if error is not None:
                break
            look = _for_check(check, look)
            if state is not None:
                try:
                    fresh = step is None or t - source.period >= step[1]
                    state = sequential_check.advance(check, state, look, fresh=fresh,
                                                     block_looks=source.block_looks)  # fmt: skip
                except ValueError as exc:
                    error = BadQuery(str(exc), query="\n".join(look.queries), at=t)
                    break
            if not partial and through is None:
                # Nothing read before: should this look be partial, the next evaluation
                # starts from it rather than from whichever look is latest then.
                complete = (complete[0], t - source.period)
            through, latest = t, look
            digests.append(look.digest)
            read += 1
            warned = look.partial(parts)
            if warned:
                # Read on, as if counted: consecutive partial looks together may prove a
                # regression; if they do not, the evidence reverts to before the first.
                partial = tuple(dict.fromkeys((*partial, *warned)))
            if partial:
                uncounted += 1
            else:
                complete = (state, through)
        if latest is None and error is None and through is not None:
            again = self._look(subject, through, seen)  # no new look: show the last one
            if isinstance(again, SubjectLook) and again.problem(parts) is None:
                latest = _for_check(check, again)
        window_seconds = source.window.total_seconds()
        if error is not None and read == 0:
            reading = Reading.failed(error)
        else:
            reading = sequential_check.reading(
                check,
                state,
                latest,
                window_seconds=window_seconds,
                look_seconds=source.period.total_seconds(),
            )
        memory = replace(previous, sequential=state, through=through)
        judge = self._judge
        if state is not None:
            rate = latest.canary.window_requests / window_seconds if latest else None
            evidence_state = state

            def judge(c: CheckDefinition, r: Reading, _unit: object) -> Judgement:
                return sequential_check.judge(c, evidence_state, r, canary_rate=rate)

        assessment = assess(check, reading, memory, grace=grace, judge=judge)
        if partial and assessment.gating_outcome is not Outcome.FAILED:
            # A partial answer may fail a check (the data it has are already bad enough),
            # never pass one: an Error, and the evidence stays as before that look.
            assert latest is not None
            error = PartialAnswer(
                f"Prometheus warned that the answer may be partial: {'; '.join(partial)}",
                series="(whole answer)",
                rule="partial",
                query="\n".join(latest.queries),
                raw_digest=latest.digest,
                at=latest.at,
            )
            state, through = complete
            reading = Reading.failed(error)
            memory = replace(previous, sequential=state, through=through)
            assessment = assess(check, reading, memory, grace=grace, judge=self._judge)
            read -= uncounted
        detail = dict(assessment.detail)
        detail["looks_read"] = read
        if latest is not None:
            detail["look_at"] = latest.at.isoformat()
        if through is not None:
            detail["through"] = through.isoformat()
        if error is not None and read:
            detail["look_error"] = f"{error.kind}: {error.message}"
        if partial:
            detail["partial"] = "; ".join(partial)
        if error is not None:
            detail.update(_error_detail(error))
        detail["attempts"] = attempts
        if failures:
            detail["failed_attempts"] = len(failures)
            detail["failures"] = _joined(failures)
        assessment = replace(assessment, detail=detail)
        queries = latest.queries if latest is not None else ()
        url = latest.url if latest is not None else source.url
        if error is not None and (read == 0 or partial):
            # an Error measurement: the query, time and answer that caused it
            queries = tuple(error.query.split("\n")) if error.query else queries
            digest = error.raw_digest or ""
        elif digests:
            digest = combined_digest(digests)
        elif latest is not None:
            digest = latest.digest  # no new look: the evidence is the last one read
        else:
            digest = (error.raw_digest or "") if error is not None else ""
        done = evaluation(
            check, reading, assessment, evaluated_at=at, evidence=Evidence(queries, url, digest)
        )
        return done, assessment.memory

    def _from_counters(
        self,
        check: CheckDefinition,
        subject: Subject,
        previous: CheckMemory,
        at: datetime,
        grace: bool,
        step: tuple[int, datetime] | None,
    ) -> tuple[CheckEvaluation, CheckMemory]:
        """An events/requests check: its counters' increase since the previous evaluation
        is one more look of its sequential test (or, without a tolerance budget, just the
        rate judged by the limits)."""
        try:
            query = counter_query(check, subject)
        except ValueError as exc:
            reading = Reading.failed(BadQuery(str(exc)))
            assessment = assess(check, reading, previous, grace=grace, judge=self._judge)
            done = evaluation(check, reading, assessment, evaluated_at=at, evidence=Evidence())
            return done, assessment.memory
        answer = self._ask(query, at - self._lag)
        values, error = _counter_values(answer, query)
        if error is not None and error.at is None:
            error.at = at - self._lag
        url = answer.url if isinstance(answer, QueryResult) else ""
        evidence = Evidence((query,), url or str(getattr(self._provider, "url", "")),
                            answer.raw_digest or "")  # fmt: skip
        if error is not None:
            reading = Reading.failed(error)
            assessment = assess(check, reading, previous, grace=grace, judge=self._judge)
            done = evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
            return _with_answers_detail(done, error, [answer]), assessment.memory

        state = previous.sequential or SequentialState()
        if check.sequential and step is not None:
            state = at_step(state, step[0])
        note = ""
        last, now = previous.counters, tuple(values)
        canary_rate: float | None = None
        if last is not None and None not in last and None not in now:
            increase = [float(b or 0.0) - float(a or 0.0) for a, b in zip(last, now, strict=True)]
            if min(increase) < 0:
                note = "a counter went down (a restart): this interval is not counted"
            elif check.sequential:
                events_c, requests_c, events_b, requests_b = increase
                test = sequential_check.test_for(check, block_looks=1)  # one look per evaluation
                assert isinstance(test, ErrorRateTest)
                look = Counts(
                    requests_c, min(events_c, requests_c), requests_b, min(events_b, requests_b)
                )
                fresh = step is None or (
                    previous.through is not None and previous.through >= step[1]
                )
                state = test.update(state, look, fresh=fresh)
                if previous.through is not None and at > previous.through:
                    canary_rate = requests_c / (at - previous.through).total_seconds()
        # A series missing now (a missed scrape, a restarting pod) after complete readings:
        # keep the last complete ones, so the next complete reading counts this interval too.
        bridge = None in now and last is not None and None not in last
        if bridge:
            note = "a counter has no series now: the next complete reading covers this interval"
        memory = replace(
            previous,
            sequential=state if check.sequential else None,
            through=previous.through if bridge else at,
            counters=last if bridge else now,
        )

        def rate(events: float, requests: float) -> float | None:
            return events / requests if requests > 0 else None

        def shown(events: float, requests: float, at: int) -> float | None:
            # Before the first increase, the counters' lifetime ratio (shown, not judged).
            if requests > 0 or now[at] is None or now[at + 1] is None:
                return rate(events, requests)
            return rate(float(now[at] or 0.0), float(now[at + 1] or 0.0))

        reading = Reading(
            canary=shown(state.canary_harm_events, state.canary_requests, 0),
            baseline=shown(state.baseline_harm_events, state.baseline_requests, 2),
            canary_samples=round(state.canary_requests),
            baseline_samples=round(state.baseline_requests),
        )
        judge = self._judge
        if check.sequential:
            evidence_state = state

            def judge(c: CheckDefinition, r: Reading, _unit: object) -> Judgement:
                return sequential_check.judge(c, evidence_state, r, canary_rate=canary_rate)

        assessment = assess(check, reading, memory, grace=grace, judge=judge)
        if note:
            assessment = replace(assessment, detail={**assessment.detail, "note": note})
        done = evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
        return _with_answers_detail(done, None, [answer]), assessment.memory

    def _read(
        self,
        check: CheckDefinition,
        subject: Subject,
        at: datetime,
        answers: dict[str, QueryResult | MetricError],
    ) -> tuple[Reading, Evidence]:
        try:
            queries = plan(check, subject)
        except ValueError as exc:
            return Reading.failed(BadQuery(str(exc))), Evidence()
        for query in queries.queries:
            if query not in answers:
                answers[query] = self._ask(query, at)
        digests: list[str] = []  # "" for a query that got no response at all
        url = ""
        for query in queries.queries:
            answer = answers[query]
            if isinstance(answer, QueryResult):
                digests.append(answer.raw_digest)
                url = url or answer.url
            else:
                digests.append(answer.raw_digest or "")
        url = url or str(getattr(self._provider, "url", ""))
        digest = combined_digest(digests) if any(digests) else ""
        return reading_from_results(queries, answers), Evidence(queries.queries, url, digest)

    def _ask(self, query: str, at: datetime) -> QueryResult | MetricError:
        """The validated answer to ``query`` at ``at`` (:func:`analysis.validate.check_answer`:
        a partial answer, a duplicate label set or a sample time too far from ``at`` is an
        error), or the error."""
        try:
            result = self._provider.query(query, at)
            check_answer(result, query=query, at=at, skew=self._skew)
        except MetricError as error:
            if error.at is None:
                error.at = at
            return error
        except Exception as exc:  # a provider bug must not stop the other checks
            return ProviderError(f"the metric provider failed: {type(exc).__name__}: {exc}",
                                 query=query, at=at)  # fmt: skip
        return result


def _for_check(check: CheckDefinition, look: SubjectLook) -> SubjectLook:
    """The look as ``check`` reads it: a latency check whose side's request counters are
    unusable counts that side's requests from its own histogram."""
    if check.builtin != "latency-p99":
        return look
    sides = []
    for side in (look.canary, look.baseline):
        if "requests" in side.problems:
            counted = side.buckets[-1][1] if side.buckets else 0.0
            sides.append(replace(side, requests=counted))
        else:
            sides.append(side)
    return replace(look, canary=sides[0], baseline=sides[1])


def _joined(texts: Sequence[str], limit: int = 1000) -> str:
    text = " | ".join(texts)
    return text if len(text) <= limit else text[:limit] + "…"


def _with_answers_detail(
    done: CheckEvaluation, error: MetricError | None, answers: Sequence[QueryResult | MetricError]
) -> CheckEvaluation:
    """``done`` with the attempts its answers took, what failed, and the error's origin."""
    attempts, failures = 0, list[str]()
    for answer in answers:
        attempts += answer.attempts
        failures += answer.failures
    detail = dict(done.detail)
    if error is not None:
        detail.update(_error_detail(error))
    detail["attempts"] = attempts
    if failures:
        detail["failed_attempts"] = len(failures)
        detail["failures"] = _joined(failures)
    return replace(done, detail=detail)


def _error_detail(error: MetricError) -> dict[str, DetailValue]:
    """What an evaluation's detail records of the error that stopped its reading."""
    detail: dict[str, DetailValue] = {"error_kind": error.kind}
    if error.at is not None:
        detail["error_at"] = error.at.isoformat()
    if error.query:
        detail["error_query"] = error.query
    if error.raw_digest:
        detail["error_digest"] = error.raw_digest
    if isinstance(error, InvalidAnswer):
        detail["error_series"] = error.series
        detail["error_rule"] = error.rule
    return detail


def _counter_values(
    answer: QueryResult | MetricError, query: str
) -> tuple[list[float | None], MetricError | None]:
    """The four counters of an events/requests check from its one answer (None for a part
    with no series yet), or the error that makes the answer unusable."""
    if isinstance(answer, NoData):
        return [None] * len(COUNTER_PARTS), None
    if isinstance(answer, MetricError):
        return [], answer
    found: dict[str, list[float]] = {}
    for series in answer.series:
        found.setdefault(series.labels.get(COUNTER_PART_LABEL, ""), []).append(series.value)
    stray = sorted(set(found) - set(COUNTER_PARTS))
    if stray:
        return [], BadQuery(
            f"the counters query returned series without a known {COUNTER_PART_LABEL} label "
            f"({', '.join(map(repr, stray))}): a template must not set or drop that label",
            query=query,
            raw_digest=answer.raw_digest,
        )
    values: list[float | None] = []
    for part in COUNTER_PARTS:
        got = found.get(part, [])
        if len(got) > 1:
            return [], MultipleSeries(
                f"the {part.replace('_', ' ')} template returned {len(got)} series where one "
                "was expected (sum it)",
                query=query,
                raw_digest=answer.raw_digest,
            )
        value = got[0] if got else None
        if value is not None and not math.isfinite(value):
            kind = NotANumber if math.isnan(value) else Infinite
            return [], kind(
                f"the {part.replace('_', ' ')} counter is {value}",
                query=query,
                raw_digest=answer.raw_digest,
            )
        if value is not None and value < 0:
            return [], InvalidCounter(
                f"the {part.replace('_', ' ')} counter is {value:g}; a count cannot be negative",
                series=series_name({COUNTER_PART_LABEL: part}),
                rule="negative",
                query=query,
                raw_digest=answer.raw_digest,
            )
        values.append(value)
    return values, None
