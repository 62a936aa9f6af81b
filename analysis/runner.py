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
from collections.abc import Callable, Hashable, Mapping, Sequence
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
from analysis.profiles import (
    COUNTER_PART_LABEL,
    COUNTER_PARTS,
    counter_query,
    identity,
    plan,
    requests_since_query,
)
from analysis.providers.base import MetricProvider
from analysis.sequential import Counts, ErrorRateTest, SequentialState, at_step
from analysis.shadow import (
    PAIRS_METRIC,
    SCORE_METRIC,
    AgreementVerdict,
    ScoreShiftVerdict,
    agreement_verdict,
    most_pairs,
    pair_counts,
    pairs_query,
    score_buckets,
    score_buckets_query,
    score_shift_verdict,
)
from analysis.shadow import evidence as shadow_evidence
from analysis.types import (
    BUILTIN_CHECKS,
    BadQuery,
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    DetailValue,
    InconsistentEvidence,
    Infinite,
    InvalidAnswer,
    InvalidCounter,
    InvalidHistogram,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    Outcome,
    PartialAnswer,
    ProviderError,
    QueryResult,
    Reading,
    Series,
    StepAnalysis,
    Subject,
)
from analysis.validate import Origin, check_answer, count_problem, series_name

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

    def expect(
        self,
        subject: Subject,
        checks: Sequence[CheckDefinition],
        at: datetime,
        memory: Mapping[str, CheckMemory] | None = None,
    ) -> None:
        """Say that ``subject`` is about to be evaluated with ``checks`` at ``at`` (before
        it is), from the evidence in ``memory``: its revisions join the next grouped looks'
        queries, so that rollouts asked for together share rounds, and a round at the grid
        time its evidence runs through (where it will begin reading) asks for it too
        (:meth:`analysis.looks.LookSource.expect`). Sends no query and never waits for
        one."""
        if self._looks is None:
            return
        based = [check for check in checks if self._look_based(check)]
        if not based:
            return
        known = [m.through for c in based if (m := (memory or {}).get(c.name)) and m.through]
        self._looks.expect(subject, at, min(known) if known else None)

    def lane(
        self, subject: Subject, checks: Sequence[CheckDefinition], at: datetime
    ) -> Hashable | None:
        """What the evaluation waits on besides its own queries: the group of looks it reads
        (evaluations of one group wait for each other's query rounds), or None (it reads no
        looks, so it waits on nothing shared)."""
        if self._looks is not None and any(self._look_based(check) for check in checks):
            return self._looks.group(subject, at)
        return None

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
        looks_read: Callable[[], None] | None = None,
    ) -> StepAnalysis:
        """Evaluate ``checks`` on ``subject`` at ``at``. ``memory`` is the previous
        round's :attr:`StepAnalysis.memory` (missing checks start from zero); ``grace`` is
        True while the step is younger than its hold time. ``looks_only`` evaluates only
        the look-based checks (the fast path between analysis intervals). ``step`` is the
        current step's index and the time its split showed in status: a sequential check
        is sufficient only with ``min_samples`` canary requests counted after that time
        (None: the whole rollout counts as one step). A shadow output check
        (:data:`~analysis.types.SHADOW_BUILTINS`) counts everything since that time, which
        for the shadow phase is when mirroring began: it needs ``step``.

        The look-based checks are evaluated first, then ``looks_read`` is called (the
        analysis runner lets the next analysis of the same look group start), then the
        checks with queries of their own; the evaluations keep the checks' order."""
        if step is not None and step[1].tzinfo is None:
            raise ValueError("the step's start must be timezone-aware")
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        names = [check.name for check in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        answers: dict[str, QueryResult | MetricError] = {}
        shadow_answers: dict[str, QueryResult | MetricError] = {}
        seen: dict[tuple[datetime, datetime], SubjectLook | MetricError] = {}
        evaluated: dict[str, CheckEvaluation] = {}
        new_memory: dict[str, CheckMemory] = {}
        from_looks = [c for c in checks if self._look_based(c)]  # no shadow check reads looks
        for check in from_looks:
            previous = memory.get(check.name, CheckMemory())
            evaluated[check.name], new_memory[check.name] = self._from_looks(
                check, subject, previous, at, grace, seen, step
            )
        if looks_read is not None:
            looks_read()
        for check in checks:
            if check.name in evaluated:  # read from the looks above
                continue
            previous = memory.get(check.name, CheckMemory())
            if check.shadow_output and not looks_only:
                evaluated[check.name], new_memory[check.name] = self._compare_outputs(
                    check, subject, previous, at, grace, step, shadow_answers
                )
                continue
            if looks_only:
                new_memory[check.name] = previous
                continue
            if check.counted:
                evaluated[check.name], new_memory[check.name] = self._from_counters(
                    check, subject, previous, at, grace, step
                )
                continue
            reading, evidence = self._read(check, subject, at, answers)
            assessment = assess(check, reading, previous, grace=grace, judge=self._judge)
            done = evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
            read = [answers[q] for q in evidence.queries if q in answers]
            evaluated[check.name] = _with_answers_detail(done, reading.error, read)
            new_memory[check.name] = assessment.memory
        evaluations = [evaluated[c.name] for c in checks if c.name in evaluated]
        ordered = {c.name: new_memory[c.name] for c in checks if c.name in new_memory}
        return combine(evaluations, ordered, evaluated_at=at)

    def _look_based(self, check: CheckDefinition) -> bool:
        return self._looks is not None and check.builtin in BUILTIN_CHECKS

    def _look(
        self,
        subject: Subject,
        since: datetime,
        at: datetime,
        seen: dict[tuple[datetime, datetime], SubjectLook | MetricError],
    ) -> SubjectLook | MetricError:
        assert self._looks is not None
        if (since, at) not in seen:
            try:
                seen[(since, at)] = self._looks.look(subject, at, since)
            except MetricError as error:
                seen[(since, at)] = error
        return seen[(since, at)]

    def _from_looks(
        self,
        check: CheckDefinition,
        subject: Subject,
        previous: CheckMemory,
        at: datetime,
        grace: bool,
        seen: dict[tuple[datetime, datetime], SubjectLook | MetricError],
        step: tuple[int, datetime] | None,
    ) -> tuple[CheckEvaluation, CheckMemory]:
        """A built-in check from the grouped looks (sequential when it has a tolerance).

        The periods due since the check last read are read as one look when their
        snapshots are not at hand (:meth:`analysis.looks.LookSource.reads`: a rollout
        catching up costs two snapshots, not one per period); ``looks_read`` counts the
        periods read, ``joined_looks`` those read as one look.

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
        read = uncounted = joined = 0
        for since, t in source.reads(subject, through, at):
            look = self._look(subject, since, t, seen)
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
                    fresh = step is None or since >= step[1]
                    state = sequential_check.advance(check, state, look, fresh=fresh,
                                                     block_looks=source.block_looks)  # fmt: skip
                except ValueError as exc:
                    error = BadQuery(str(exc), query="\n".join(look.queries), at=t)
                    break
            if not partial and through is None:
                # Nothing read before: should this look be partial, the next evaluation
                # starts from it rather than from whichever look is latest then.
                complete = (complete[0], since)
            through, latest = t, look
            digests.append(look.digest)
            read += look.looks
            joined += look.looks if look.looks > 1 else 0
            warned = look.partial(parts)
            if warned:
                # Read on, as if counted: consecutive partial looks together may prove a
                # regression; if they do not, the evidence reverts to before the first.
                partial = tuple(dict.fromkeys((*partial, *warned)))
            if partial:
                uncounted += look.looks
            else:
                complete = (state, through)
        if latest is None and error is None and through is not None:
            again = self._look(subject, through - source.period, through, seen)  # show the last
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
        if joined and not partial:
            detail["joined_looks"] = joined  # read as one look (a rollout catching up)
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

    def _compare_outputs(
        self,
        check: CheckDefinition,
        subject: Subject,
        previous: CheckMemory,
        at: datetime,
        grace: bool,
        step: tuple[int, datetime] | None,
        asked: dict[str, QueryResult | MetricError],
    ) -> tuple[CheckEvaluation, CheckMemory]:
        """A shadow output check: the shadow collector's pairs (decision agreement) or
        both sides' score histograms (score shift) counted since the shadow phase began
        (``step[1]``, when mirroring began), with the challenger's requests over the same
        window, read at ``at`` less the lag in one set of answers (``asked``, shared by
        the checks of this evaluation); judged by :mod:`analysis.shadow`.

        The counts are not kept between evaluations: each reads the whole phase again
        (``increase()`` counts across a counter reset), so the anytime-valid agreement
        test sees the totals it is built for, and a collector restart can neither subtract
        nor double-count pairs. More pairs than the challenger's requests allow
        (:func:`analysis.shadow.most_pairs`) are an
        :class:`~analysis.types.InconsistentEvidence` error: never a pass."""
        read_at = at - self._lag
        answers: list[QueryResult | MetricError] = []

        def finish(
            reading: Reading,
            evidence: Evidence,
            error: MetricError | None,
            verdict: AgreementVerdict | ScoreShiftVerdict | None = None,
            extra: Mapping[str, DetailValue] | None = None,
        ) -> tuple[CheckEvaluation, CheckMemory]:
            judge = self._judge if verdict is None else _shadow_judge(verdict)
            assessment = assess(check, reading, previous, grace=grace, judge=judge)
            detail = dict(assessment.detail)
            if verdict is not None:
                found = dict(shadow_evidence(verdict))
                found["verdict_reason"] = found.pop("reason")
                detail.update(found)
            detail.update(extra or {})
            message = assessment.message
            if verdict is not None and reading.canary is None and reading.error is None:
                message = f"{verdict.reason}; {message}"  # no data: say what is missing
            assessment = replace(assessment, detail=detail, message=message)
            done = evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
            return _with_answers_detail(done, error, answers), assessment.memory

        challenger = subject.challenger_isvc
        if challenger is None:
            return finish(*_failed(BadQuery(
                f"{check.builtin} compares a challenger InferenceService's outputs with the "
                f"champion {subject.isvc}'s, but no challenger InferenceService is named: a "
                "dark launch (a canary entry held at 0 %) logs its responses under the "
                "champion's name, so its outputs cannot be told apart from the champion's "
                "and it has no output comparison (its latency and errors are compared)"
            )))  # fmt: skip
        if step is None:
            return finish(*_failed(BadQuery(
                f"{check.builtin} counts every pair since the shadow phase began, and was not "
                "told when that was (the step's start)"
            )))  # fmt: skip
        since = step[1]
        seconds = math.floor((read_at - since).total_seconds())
        extra: dict[str, DetailValue] = {
            "challenger": challenger,
            "champion": subject.isvc,
            "since": since.isoformat(),
            "read_at": read_at.isoformat(),
            "window_seconds": max(seconds, 0),
            "max_predictions_per_request": check.max_predictions_per_request,
        }
        if seconds < 1:
            # Read a moment after mirroring began: nothing can have been counted yet.
            reading = Reading(canary_samples=0)
            return finish(reading, Evidence(), None, _nothing_yet(check), extra)
        window = timedelta(seconds=seconds)
        champion = subject.isvc
        try:
            requests_query, label = requests_since_query(replace(subject, window=window))
            if check.builtin == "decision-agreement":
                queries: tuple[str, ...] = (
                    pairs_query(subject.namespace, challenger, champion, window),
                )
            else:
                queries = (
                    score_buckets_query(subject.namespace, champion, challenger, window),
                    score_buckets_query(subject.namespace, challenger, champion, window),
                )
        except ValueError as exc:
            return finish(*_failed(BadQuery(str(exc))), extra=extra)
        queries = (*queries, requests_query)
        for query in queries:
            if query not in asked:
                asked[query] = self._ask(query, read_at)
            answers.append(asked[query])
        digests = [a.raw_digest or "" for a in answers]
        url = next((a.url for a in answers if isinstance(a, QueryResult)), "")
        evidence = Evidence(queries, url or str(getattr(self._provider, "url", "")),
                            combined_digest(digests) if any(digests) else "")  # fmt: skip

        def series(answer: QueryResult | MetricError) -> tuple[Series, ...]:
            if isinstance(answer, NoData):
                return ()  # nothing counted yet: no series
            if isinstance(answer, MetricError):
                raise answer
            return answer.series

        try:
            sides = _request_counts(
                series(answers[-1]),
                label,
                (identity(subject, subject.canary_revision),
                 identity(subject, subject.baseline_revision)),
                Origin(requests_query, read_at, digests[-1] or None),
            )  # fmt: skip
            requests = sides[0]
            extra["challenger_requests"] = requests
            extra["champion_requests"] = sides[1]
            limit = most_pairs(requests, check.max_predictions_per_request)
            extra["most_pairs"] = limit
            origins = [Origin(q, read_at, d or None) for q, d in zip(queries, digests, strict=True)]
            if check.builtin == "decision-agreement":
                found = series(answers[0])
                _counts_valid(found, origins[0], "the pairs counter")
                try:
                    pairs, agreed = pair_counts(found)
                    verdict: AgreementVerdict | ScoreShiftVerdict = agreement_verdict(
                        pairs, agreed, minimum=_limit(check), alpha=check.alpha_pass,
                        min_samples=check.min_samples,
                    )  # fmt: skip
                except ValueError as exc:  # a series it cannot read, counts beyond floats
                    raise origins[0].error(InvalidAnswer, str(exc), series=PAIRS_METRIC,
                                           rule="pairs-series") from None  # fmt: skip
                counted, subjects, metric = pairs, "paired predictions", PAIRS_METRIC
            else:
                found_base, found_cand = series(answers[0]), series(answers[1])
                _counts_valid(found_base, origins[0], "the champion's score buckets")
                _counts_valid(found_cand, origins[1], "the challenger's score buckets")
                try:
                    verdict = score_shift_verdict(
                        score_buckets(found_base), score_buckets(found_cand),
                        max_psi=_limit(check), min_samples=check.min_samples,
                    )  # fmt: skip
                except ValueError as exc:
                    both = Origin("\n".join(queries[:2]), read_at, combined_digest(digests[:2]))
                    raise both.error(InvalidHistogram, str(exc), series=f"{SCORE_METRIC}_bucket",
                                     rule="histogram") from None  # fmt: skip
                counted = max(verdict.baseline_count, verdict.candidate_count)
                subjects, metric = "scored pairs", f"{SCORE_METRIC}_count"
            if counted > limit:
                raise InconsistentEvidence(
                    f"the evidence is inconsistent: {counted:,.0f} {subjects} of {challenger} "
                    f"with {champion} since the shadow began, but {challenger} served "
                    f"{requests:,.0f} requests in the same window ({label}="
                    f"{identity(subject, subject.canary_revision)!r}), which allow at most "
                    f"{limit:,.0f} (maxPredictionsPerRequest "
                    f"{check.max_predictions_per_request}); "
                    "the collector counted predictions the challenger did not answer (forged or "
                    "replayed events, or several collectors writing one series): not judged, "
                    "never a pass",
                    series=series_name({"__name__": metric, "namespace": subject.namespace,
                                        "isvc": challenger, "peer": champion}),
                    rule="pairs-within-requests",
                    query="\n".join(queries),
                    raw_digest=evidence.digest or None,
                    at=read_at,
                )  # fmt: skip
        except MetricError as error:
            if error.at is None:
                error.at = read_at
            return finish(Reading.failed(error), evidence, error, extra=extra)
        if isinstance(verdict, AgreementVerdict):
            reading = Reading(canary=verdict.rate, canary_samples=verdict.pairs)
        else:
            reading = Reading(
                canary=verdict.psi,
                canary_samples=verdict.candidate_count,
                baseline_samples=verdict.baseline_count,
            )
        return finish(reading, evidence, None, verdict, extra)

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


def _failed(error: MetricError) -> tuple[Reading, Evidence, MetricError]:
    """A reading that could not be made, with the query that failed as its evidence."""
    queries = tuple(error.query.split("\n")) if error.query else ()
    return Reading.failed(error), Evidence(queries, "", error.raw_digest or ""), error


def _limit(check: CheckDefinition) -> float:
    assert check.absolute_limit is not None  # CheckDefinition requires it for these checks
    return check.absolute_limit


def _nothing_yet(check: CheckDefinition) -> AgreementVerdict | ScoreShiftVerdict:
    """The verdict on no pairs at all (read before anything could be counted)."""
    if check.builtin == "decision-agreement":
        return agreement_verdict(0, 0, minimum=_limit(check), alpha=check.alpha_pass,
                                 min_samples=check.min_samples)  # fmt: skip
    return score_shift_verdict([], [], max_psi=_limit(check), min_samples=check.min_samples)


def _shadow_judge(verdict: AgreementVerdict | ScoreShiftVerdict) -> Judge:
    """The judge of a shadow output check: its verdict from :mod:`analysis.shadow`.

    Agreement: Failed is decisive (the anytime-valid fail test: at any count, at once);
    Successful needs the test and ``min_samples`` pairs; anything else is still
    collecting evidence. The statistic is the bound that decided (the upper one for a
    failure, else the lower one) against the minimum. Score shift: the PSI against its
    maximum once both sides have ``min_samples`` scores, a point estimate (a failure is
    counted like any other); still collecting before."""

    def judge(_check: CheckDefinition, _reading: Reading, _unit: object) -> Judgement:
        if isinstance(verdict, AgreementVerdict):
            if verdict.outcome is Outcome.FAILED:
                return Judgement(Outcome.FAILED, "regression", verdict.upper, verdict.minimum,
                                 verdict.reason, decisive=True)  # fmt: skip
            if verdict.outcome is Outcome.SUCCESSFUL:
                return Judgement(Outcome.SUCCESSFUL, "non-inferior", verdict.lower,
                                 verdict.minimum, verdict.reason)  # fmt: skip
            return Judgement(Outcome.INCONCLUSIVE, "collecting-evidence", verdict.lower,
                             verdict.minimum, verdict.reason)  # fmt: skip
        if verdict.outcome is Outcome.FAILED:
            return Judgement(Outcome.FAILED, "breach", verdict.psi, verdict.max_psi,
                             verdict.reason)  # fmt: skip
        if verdict.outcome is Outcome.SUCCESSFUL:
            return Judgement(Outcome.SUCCESSFUL, "within", verdict.psi, verdict.max_psi,
                             verdict.reason)  # fmt: skip
        return Judgement(Outcome.INCONCLUSIVE, "collecting-evidence", verdict.psi,
                         verdict.max_psi, verdict.reason)  # fmt: skip

    return judge


def _counts_valid(found: Sequence[Series], origin: Origin, what: str) -> None:
    """Raise the error of the first count that is negative or not finite (``increase()``
    never gives one: the answer is broken or forged)."""
    for s in found:
        problem = count_problem(s.value, series=series_name(s.labels), what=what, origin=origin)
        if problem is not None:
            raise problem


def _request_counts(
    found: Sequence[Series], label: str, ids: tuple[str, str], origin: Origin
) -> tuple[float, float]:
    """The challenger's and the champion's requests from the grouped request count (0 for
    a side without a series: it served none in the window)."""
    counts: list[float] = []
    for wanted in ids:
        mine = [s for s in found if s.labels.get(label) == wanted]
        if len(mine) > 1:
            raise MultipleSeries(
                f"{len(mine)} request count series have {label}={wanted!r}; one was expected",
                query=origin.query,
                raw_digest=origin.raw_digest,
                at=origin.at,
            )
        _counts_valid(mine, origin, "the request count")
        counts.append(mine[0].value if mine else 0.0)
    return counts[0], counts[1]


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
