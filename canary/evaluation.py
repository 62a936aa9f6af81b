"""The engine's analysis adapter: when a rollout is due for a look or an evaluation, what
the analysis answered, and what the engine keeps of the looks between its commits.

* A **full evaluation** (at the analysis interval) runs every check and yields a verdict and
  its ``analysis.evaluated`` record, which the engine steps the state machine with and
  commits.
* A **look** (between evaluations, on the grouped looks' grid) runs the look-based checks
  only. One that fails is recorded and acted on like a full evaluation. One that does not
  only adds to the evidence the checks accumulate (their sequential memory): nothing was
  decided, so nothing is written. :class:`KeptLooks` holds that evidence in memory, on top
  of the version of the rollout's row it extends, until the rollout's next commit carries it
  (at the latest the next full evaluation). A rollout's row is therefore written when
  something material happens, not at every look: a decision, or the first look a check
  reads at a step (where its evidence starts).

  What a restart or a failover loses is only those looks' memory: the next controller
  starts from the row's evidence and reads the same looks again from Prometheus (each look
  is a fixed period on a fixed grid: the same numbers whoever reads them, and when).

Nothing here decides anything: the verdicts are the analysis package's, applied by the
engine through the state machine.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

from analysis import CheckMemory, Outcome, Subject
from analysis.looks import LookSource
from canary import machine
from canary.analysis_worker import AnalysisRequest, AnalysisRunner, Analyzes, analysis_ticket
from canary.audit import AuditEntry, Measurement
from canary.checks import ceiling_breach, check_definitions, shadow_checks
from canary.document import RolloutDocument
from canary.entries import Entries
from canary.model import AnalysisVerdict, Phase, Verdict
from canary.routing.base import Observed

__all__ = [
    "AnalysisAdapter",
    "AnalysisMetrics",
    "Evaluated",
    "KeptLooks",
    "Looked",
    "RolloutAnalyzer",
]

_MIN_WINDOW = timedelta(seconds=10)
_MAX_WINDOW = timedelta(minutes=5)

_VERDICTS: Mapping[Outcome, Verdict] = {
    Outcome.SUCCESSFUL: Verdict.SUCCESSFUL,
    Outcome.FAILED: Verdict.FAILED,
    Outcome.INCONCLUSIVE: Verdict.INCONCLUSIVE,
    Outcome.ERROR: Verdict.ERROR,
}


class RolloutAnalyzer(Analyzes, Protocol):
    """``analysis.runner.Analyzer`` or a test double: an evaluation round, and the looks."""

    @property
    def looks(self) -> LookSource | None:
        """The grouped looks of the fast path, if the analyzer reads them."""
        ...


class AnalysisMetrics(Protocol):
    def record_analysis(self, check: str, outcome: str) -> None: ...


@dataclass(frozen=True)
class Looked:
    """A look that decided nothing: the document with the evidence it added.

    ``material`` when the look started a check's evidence (the first look it read at this
    step, from which a restarted controller reads the later ones again): that is written
    at once, the rest is kept (:class:`KeptLooks`)."""

    doc: RolloutDocument
    material: bool = False


@dataclass(frozen=True)
class Evaluated:
    """An evaluation to act on: the document with its new memory and times, the verdict
    for the state machine, and the record that carries its evidence."""

    doc: RolloutDocument
    verdict: AnalysisVerdict
    entry: AuditEntry


class KeptLooks:
    """The evidence of looks not yet written, per rollout, on top of the row version it
    extends. Bounded by the active rollouts: an entry goes with the rollout's next commit,
    when its row moves on without it, or when this replica stops leading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, RolloutDocument] = {}

    def keep(self, rollout_id: str, doc: RolloutDocument) -> None:
        with self._lock:
            self._kept[rollout_id] = doc

    def overlay(self, rollout_id: str, doc: RolloutDocument) -> RolloutDocument:
        """``doc`` (as read from its row) with the looks kept on top of that same version;
        ``doc`` unchanged if none are, or the row has moved on since (then they are
        dropped: whoever wrote it decided from the row's evidence)."""
        with self._lock:
            kept = self._kept.get(rollout_id)
            if kept is None:
                return doc
            if kept.version != doc.version or doc.state.terminal:
                del self._kept[rollout_id]
                return doc
        return replace(doc, memory=kept.memory, next_look_at=kept.next_look_at)

    def drop(self, rollout_id: str) -> None:
        with self._lock:
            self._kept.pop(rollout_id, None)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


class AnalysisAdapter:
    """Asks the analysis for a rollout's look or evaluation, and turns its answer into
    what the engine acts on."""

    def __init__(
        self,
        analyzer: RolloutAnalyzer | None,
        *,
        runner: AnalysisRunner | None,
        entries: Entries,
        metrics: AnalysisMetrics | None,
        prometheus_url: str,
        metrics_delay: timedelta,
    ) -> None:
        self._analyzer = analyzer
        self._runner = runner
        self._entries = entries
        self._metrics = metrics
        self._prometheus_url = prometheus_url
        self._metrics_delay = metrics_delay

    def due(self, doc: RolloutDocument, now: datetime) -> Literal["full", "look"] | None:
        """``full`` at the analysis interval (every check, an audit record, a verdict);
        ``look`` when only a new grouped look is due (the fast path: the look-based checks,
        recorded and acted on only when they fail)."""
        if self._analyzer is None or doc.pending or doc.evidence_since() is None:
            return None
        if doc.next_analysis_at is None or now >= doc.next_analysis_at:
            return "full"
        if (
            self._analyzer.looks is not None
            and (doc.next_look_at is None or now >= doc.next_look_at)
            and doc.reads_looks
        ):
            return "look"
        return None

    def next_look(self, now: datetime) -> datetime | None:
        looks = self._analyzer.looks if self._analyzer is not None else None
        if looks is None:
            return None
        due = looks.due(None, now)
        last = due[-1] if due else now
        return last + looks.period + looks.lag

    def run(
        self,
        rollout_id: str,
        doc: RolloutDocument,
        observed: Observed,
        now: datetime,
        *,
        fast: bool,
    ) -> Looked | Evaluated | None:
        """The look or evaluation of ``doc``; None while it runs on the runner's threads
        (its end queues the rollout again)."""
        assert self._analyzer is not None
        state = doc.state
        reached = doc.evidence_since()
        assert reached is not None
        assert state.stable is not None
        policy = doc.policy
        shadow = state.phase is Phase.SHADOWING
        step = machine.SHADOW_STEP if shadow else state.step_index
        window = min(max(now - reached, _MIN_WINDOW), _MAX_WINDOW)
        subject = Subject(
            namespace=state.namespace,
            isvc=state.name,
            mode=doc.mode,
            canary_revision=state.canary.name,
            baseline_revision=state.stable.name,
            metric_profile=doc.metric_profile,
            window=timedelta(seconds=int(window.total_seconds())),
            # The output comparison counts from `reached` (step below), not over `window`.
            challenger_isvc=state.challenger if shadow else None,
        )
        checks = shadow_checks(policy, state.challenger) if shadow else check_definitions(policy)
        # Missing data counts only once the hold is over and Prometheus has had time to
        # discover and scrape the new revision's pods.
        grace_until = reached + max(policy.step_hold, self._metrics_delay)
        request = AnalysisRequest(
            subject, tuple(checks), doc.memory, now, now < grace_until, fast,
            step=(step, reached), grace_until=grace_until,
        )  # fmt: skip
        if self._runner is None:
            result = request.run(self._analyzer)
        else:
            ticket = analysis_ticket(
                rollout_id, state.canary.name, step, reached, fast,
                doc.next_analysis_at, doc.next_look_at, doc.memory,
            )  # fmt: skip
            answer = self._runner.obtain((state.namespace, state.name), ticket, request)
            if answer is None:
                return None
            request, result = answer
        # The evidence is the look's: taken at its time, over its window.
        at, grace, window = request.at, request.grace, request.subject.window
        ceiling = ceiling_breach(policy, result.evaluations) if shadow else None
        if fast and result.verdict is not Outcome.FAILED and ceiling is None:
            # Between analysis intervals only the accumulated evidence is kept: counters,
            # records and verdicts belong to the interval's evaluation.
            kept = {
                name: replace(
                    doc.memory.get(name, CheckMemory()), sequential=m.sequential, through=m.through
                )
                for name, m in result.memory.items()
            }
            started = any(
                m.through is not None and doc.memory.get(name, CheckMemory()).through is None
                for name, m in kept.items()
            )
            return Looked(replace(doc, memory=kept, next_look_at=self.next_look(now)), started)
        verdict = AnalysisVerdict(
            verdict=_VERDICTS[result.verdict],
            revision=state.canary.name,
            step_index=step,
            evaluated_at=at,
            sufficient_data=result.sufficient_data,
            summary=result.summary,
            fast_fail=result.fast_fail,
            ceiling=ceiling,
        )
        if self._metrics is not None:
            for evaluation in result.evaluations:
                self._metrics.record_analysis(evaluation.check, evaluation.outcome.value)
        evaluated = self._entries.entry(
            doc,
            now,
            action="analysis.evaluated",
            reason=result.summary or f"analysis {result.verdict.value}",
            observed=observed,
            evidence={
                "verdict": result.verdict.value,
                "sufficient_data": result.sufficient_data,
                "fast_fail": result.fast_fail,
                "step": step,
                "shadow": shadow,
                "ceiling": ceiling,
                "grace": grace,
                "fast_path": fast,
                "window_seconds": int(window.total_seconds()),
                "metric_profile": doc.metric_profile,
            },
            measurements=tuple(
                Measurement(
                    check=e.check,
                    evaluated_at=e.evaluated_at,
                    query=e.query,
                    prometheus_url=e.prometheus_url or self._prometheus_url,
                    response_digest=e.response_digest,
                    canary_value=e.canary_value,
                    baseline_value=e.baseline_value,
                    canary_samples=e.canary_samples,
                    baseline_samples=e.baseline_samples,
                    statistic=e.statistic,
                    threshold=e.threshold,
                    verdict=e.outcome.value,
                    dry_run=e.dry_run,
                    detail={
                        "gating_outcome": e.gating_outcome.value,
                        "sufficient": e.sufficient,
                        "message": e.message,
                        **dict(e.detail),
                    },
                )
                for e in result.evaluations
            ),
        )
        doc = replace(
            doc,
            memory=dict(result.memory),
            next_analysis_at=at + policy.analysis_interval,
            next_look_at=self.next_look(now) if doc.reads_looks else None,
        )
        return Evaluated(doc, verdict, evaluated)
