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
from collections.abc import Mapping, Sequence
from datetime import datetime

from analysis.assess import (
    Evidence,
    Judge,
    assess,
    combine,
    evaluation,
    judge_thresholds,
    reading_from_results,
)
from analysis.profiles import plan
from analysis.providers.base import MetricProvider
from analysis.types import (
    BadQuery,
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    MetricError,
    ProviderError,
    QueryResult,
    Reading,
    StepAnalysis,
    Subject,
)

__all__ = ["Analyzer", "combined_digest"]


def combined_digest(digests: Sequence[str]) -> str:
    """One digest for the responses of several queries: the digest itself when there is
    one, else the SHA-256 of the digests joined by newlines, in query order (an empty
    string standing for a query that got no response)."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


class Analyzer:
    """Evaluates a step's checks against one metric provider. ``judge`` replaces how values
    are judged (:func:`analysis.assess.judge_thresholds` by default)."""

    def __init__(self, provider: MetricProvider, *, judge: Judge = judge_thresholds) -> None:
        self._provider = provider
        self._judge = judge

    def analyze(
        self,
        subject: Subject,
        checks: Sequence[CheckDefinition],
        memory: Mapping[str, CheckMemory],
        at: datetime,
        *,
        grace: bool,
    ) -> StepAnalysis:
        """Evaluate ``checks`` on ``subject`` at ``at``. ``memory`` is the previous
        round's :attr:`StepAnalysis.memory` (missing checks start from zero); ``grace`` is
        True while the step is younger than its hold time."""
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        names = [check.name for check in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        answers: dict[str, QueryResult | MetricError] = {}
        evaluations: list[CheckEvaluation] = []
        new_memory: dict[str, CheckMemory] = {}
        for check in checks:
            reading, evidence = self._read(check, subject, at, answers)
            previous = memory.get(check.name, CheckMemory())
            assessment = assess(check, reading, previous, grace=grace, judge=self._judge)
            evaluations.append(
                evaluation(check, reading, assessment, evaluated_at=at, evidence=evidence)
            )
            new_memory[check.name] = assessment.memory
        return combine(evaluations, new_memory, evaluated_at=at)

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
        try:
            return self._provider.query(query, at)
        except MetricError as error:
            return error
        except Exception as exc:  # a provider bug must not stop the other checks
            return ProviderError(f"the metric provider failed: {type(exc).__name__}: {exc}",
                                 query=query)  # fmt: skip
