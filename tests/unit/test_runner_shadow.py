"""The shadow phase's output comparison as the analyzer evaluates it (analysis.runner with
analysis.shadow): decision agreement and score shift of a challenger InferenceService
against its champion, read from the shadow collector's counters since mirroring began.

Prometheus is a fake that answers only the exact queries a correct evaluation sends: the
collector's pairs and score buckets, and the challenger's and champion's requests, each
over the window from the start of the shadow phase to the reading (anything else fails the
test). It answers with the counts ``increase()`` gives, so a collector restart is seen the
way Prometheus reports it: the totals since the phase began, never a negative step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis.profiles import requests_since_query
from analysis.runner import Analyzer, combined_digest
from analysis.shadow import most_pairs, pairs_query, score_buckets_query
from analysis.types import (
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    MetricError,
    NoData,
    Outcome,
    QueryResult,
    Series,
    StepAnalysis,
    Subject,
    Unreachable,
)

NS, CHAMPION, CHALLENGER = "fraud", "scorer", "scorer-v3"
CANARY, BASELINE = "scorer-v3-predictor-00001", "scorer-predictor-00004"
SINCE = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # when mirroring began
AT = SINCE + timedelta(minutes=10)
LAG = timedelta(seconds=2)  # the analyzer's default: counters are read 2 s before AT
SUBJECT = Subject(
    namespace=NS,
    isvc=CHAMPION,
    mode="knative",
    canary_revision=CANARY,
    baseline_revision=BASELINE,
    metric_profile="knative-otel",
    window=timedelta(minutes=5),  # the engine's capped window: not what these checks read
    challenger_isvc=CHALLENGER,
)
STEP = (-1, SINCE)
BOUNDS = [f"{b / 20:g}" for b in range(1, 21)] + ["+Inf"]


def agreement(**overrides: Any) -> CheckDefinition:
    base: dict[str, Any] = {
        "name": "shadow-decision-agreement",
        "builtin": "decision-agreement",
        "query": None,
        "direction": "higherIsBetter",
        "absolute_limit": 0.9,
        "min_samples": 200,
        "alpha_pass": 0.05,
    }
    return CheckDefinition(**{**base, **overrides})


def score_shift(**overrides: Any) -> CheckDefinition:
    base: dict[str, Any] = {
        "name": "shadow-score-shift",
        "builtin": "score-shift",
        "query": None,
        "direction": "lowerIsBetter",
        "absolute_limit": 0.1,
        "min_samples": 200,
    }
    return CheckDefinition(**{**base, **overrides})


def histogram(shares: Sequence[float], total: float) -> list[tuple[str, float]]:
    """Cumulative buckets (``le``, count) of ``total`` scores spread over the 21 buckets
    by ``shares`` (the last bucket, ``+Inf``, takes what the shares leave)."""
    counts, running = [], 0.0
    for le, share in zip(BOUNDS, [*shares, 0.0][: len(BOUNDS)], strict=True):
        running += share * total
        counts.append((le, min(running, total)))
    counts[-1] = ("+Inf", total)
    return counts


EVEN = [1 / 20] * 20  # scores spread evenly over (0, 1]
LOW = [0.3, 0.3, 0.2, 0.1, 0.1] + [0.0] * 15  # the same scores pushed towards 0


@dataclass
class ShadowPrometheus:
    """Answers the shadow comparison's queries for a window that starts at SINCE.

    Each count is a number (a series), None (no series: nothing counted) or a MetricError
    the query raises. ``pairs`` and ``agreed`` are the challenger's pairs with the
    champion; ``scores`` each side's histogram."""

    pairs: float | None = 1000.0
    agreed: float | None = 990.0
    requests: float | None = 1000.0
    champion_requests: float | None = 1000.0
    scores: Mapping[str, list[tuple[str, float]] | None] = field(
        default_factory=lambda: {CHAMPION: histogram(EVEN, 1000), CHALLENGER: histogram(EVEN, 1000)}
    )
    failing: Mapping[str, MetricError] = field(default_factory=dict)  # by kind of query
    pairs_answer: list[Series] | None = None  # replaces the pairs series when set
    sent: list[tuple[str, datetime]] = field(default_factory=list)
    url: str = "http://prometheus.test:9090"

    def query(self, promql: str, at: datetime) -> QueryResult:
        self.sent.append((promql, at))
        window = timedelta(seconds=math.floor((at - SINCE).total_seconds()))
        expected = {
            pairs_query(NS, CHALLENGER, CHAMPION, window): "pairs",
            score_buckets_query(NS, CHAMPION, CHALLENGER, window): CHAMPION,
            score_buckets_query(NS, CHALLENGER, CHAMPION, window): CHALLENGER,
            requests_since_query(replace(SUBJECT, window=window))[0]: "requests",
        }
        kind = expected.get(promql)
        assert kind is not None, f"unexpected query (or window) at {at}: {promql}"
        if kind in self.failing:
            raise self.failing[kind]
        series: list[Series] = []
        if kind == "pairs" and self.pairs_answer is not None:
            series += self.pairs_answer
        elif kind == "pairs":
            if self.agreed is not None:
                series.append(Series({"agree": "true"}, self.agreed))
            if self.pairs is not None:
                series.append(Series({"agree": "false"}, self.pairs - (self.agreed or 0.0)))
        elif kind == "requests":
            for revision, count in ((CANARY, self.requests), (BASELINE, self.champion_requests)):
                if count is not None:
                    series.append(Series({"revision": revision}, count))
        else:
            buckets = self.scores.get(kind)
            series += [Series({"le": le}, count) for le, count in buckets or []]
        if not series:
            raise NoData("the query returned no series", query=promql, raw_digest="e" * 64)
        return QueryResult(tuple(series), raw_digest=kind[0] * 64, url=self.url)


def evaluate(
    prometheus: ShadowPrometheus,
    checks: Sequence[CheckDefinition],
    *,
    at: datetime = AT,
    grace: bool = False,
    subject: Subject = SUBJECT,
    step: tuple[int, datetime] | None = STEP,
    memory: Mapping[str, CheckMemory] | None = None,
) -> StepAnalysis:
    return Analyzer(prometheus).analyze(subject, checks, memory or {}, at, grace=grace, step=step)


def only(result: StepAnalysis) -> CheckEvaluation:
    assert len(result.evaluations) == 1
    return result.evaluations[0]


# --- decision agreement ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    pairs: float | None
    agreed: float | None
    outcome: Outcome
    gating: Outcome
    sufficient: bool
    message: str
    requests: float | None = 1000.0
    check: dict[str, Any] = field(default_factory=dict)
    grace: bool = False


AGREEMENT_CASES = {
    "agreeing": Case(1000, 990, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL, True,
                     "lower bound 9"),
    "disagreeing": Case(1000, 700, Outcome.FAILED, Outcome.FAILED, False,
                        "disagrees with the champion too often"),
    "disagreeing-early": Case(60, 30, Outcome.FAILED, Outcome.FAILED, False,
                              "disagrees with the champion too often"),
    "too-few-pairs": Case(60, 60, Outcome.INCONCLUSIVE, Outcome.SUCCESSFUL, False,
                          "only 60 of the 200 pairs required"),
    "undecided": Case(1000, 905, Outcome.INCONCLUSIVE, Outcome.SUCCESSFUL, False,
                      "lies within the 95% bounds"),
    "no-data-in-grace": Case(None, None, Outcome.INCONCLUSIVE, Outcome.SUCCESSFUL, False,
                             "no paired predictions yet", grace=True),
    "no-data": Case(None, None, Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE, False,
                    "no paired predictions yet"),
    "zero-pairs": Case(0, 0, Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE, False,
                       "no paired predictions yet"),
    "no-data-fails-when-told": Case(None, None, Outcome.FAILED, Outcome.FAILED, False,
                                    "onNoData: fail", check={"on_no_data": "fail"}),
    "forged-pairs": Case(5000, 5000, Outcome.ERROR, Outcome.ERROR, False,
                         "the evidence is inconsistent",
                         check={"consecutive_error_limit": 0}),
    "forged-pairs-tolerated-once": Case(5000, 5000, Outcome.ERROR, Outcome.SUCCESSFUL, False,
                                        "the evidence is inconsistent"),
    "pairs-without-requests": Case(300, 300, Outcome.ERROR, Outcome.ERROR, False,
                                   "served 0 requests", requests=None,
                                   check={"consecutive_error_limit": 0}),
    "batches-allow-more-pairs": Case(5000, 4990, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL, True,
                                     "lower bound 9",
                                     check={"max_predictions_per_request": 8}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(AGREEMENT_CASES.values()), ids=list(AGREEMENT_CASES))
def test_decision_agreement(case: Case) -> None:
    prometheus = ShadowPrometheus(pairs=case.pairs, agreed=case.agreed, requests=case.requests)
    found = only(evaluate(prometheus, [agreement(**case.check)], grace=case.grace))
    assert found.outcome is case.outcome, found.message
    assert found.gating_outcome is case.gating, found.message
    assert found.sufficient is case.sufficient
    assert case.message in found.message
    if case.outcome is not Outcome.SUCCESSFUL:
        assert not found.sufficient  # never a pass without the evidence


def test_a_passing_agreement_records_its_evidence() -> None:
    prometheus = ShadowPrometheus(pairs=1000, agreed=990, requests=1010, champion_requests=1200)
    found = only(evaluate(prometheus, [agreement()]))
    assert found.canary_value == pytest.approx(0.99)
    assert (found.canary_samples, found.baseline_samples) == (1000, None)
    assert found.threshold == 0.9
    assert found.statistic is not None
    assert 0.9 <= found.statistic < 0.99  # the lower bound that decided
    window = timedelta(seconds=598)  # since mirroring began, to the reading at AT - 2 s
    assert found.query.split("\n") == [
        pairs_query(NS, CHALLENGER, CHAMPION, window),
        requests_since_query(replace(SUBJECT, window=window))[0],
    ]
    assert found.response_digest == combined_digest(["p" * 64, "r" * 64])
    assert found.prometheus_url == prometheus.url
    assert {q for q, _ in prometheus.sent} == set(found.query.split("\n"))
    assert {t for _, t in prometheus.sent} == {AT - LAG}
    detail = found.detail
    assert detail["test"] == "shadow-agreement"
    assert (detail["pairs"], detail["agreed"], detail["minimum"]) == (1000, 990, 0.9)
    assert detail["pass_e_value"] is not None
    assert detail["threshold"] == pytest.approx(20.0)
    assert (detail["challenger_requests"], detail["champion_requests"]) == (1010, 1200)
    assert detail["most_pairs"] == pytest.approx(most_pairs(1010))
    assert (detail["since"], detail["window_seconds"]) == (SINCE.isoformat(), 598)
    assert (detail["challenger"], detail["champion"]) == (CHALLENGER, CHAMPION)
    assert "agreement 99% over 1,000 paired predictions" in str(detail["verdict_reason"])


def test_the_window_grows_with_the_phase_beyond_the_engines_analysis_window() -> None:
    """Agreement is judged on every pair since mirroring began: an hour into the phase
    the counts still reach back to its start, not over the 5-minute analysis window."""
    prometheus = ShadowPrometheus()
    found = only(evaluate(prometheus, [agreement()], at=SINCE + timedelta(hours=1)))
    assert found.detail["window_seconds"] == 3598
    assert "[3598s]" in found.query
    assert "[5m]" not in found.query


def test_forged_pairs_say_why_and_what_was_counted() -> None:
    prometheus = ShadowPrometheus(pairs=5000, agreed=5000, requests=1000)
    found = only(evaluate(prometheus, [agreement()]))
    assert found.detail["error_kind"] == "inconsistent-evidence"
    assert found.detail["error_rule"] == "pairs-within-requests"
    assert "5,000 paired predictions of scorer-v3 with scorer" in found.message
    assert "served 1,000 requests in the same window" in found.message
    assert "at most 1,270 (maxPredictionsPerRequest 1)" in found.message
    assert "never a pass" in found.message
    assert "pairs" not in found.detail  # not judged: no verdict on these counts
    assert found.statistic is None


def test_pairs_within_the_requests_allowance_are_judged() -> None:
    """Prometheus extrapolates each counter on its own: a few more pairs than requests
    (within the allowance) are how the counts are read, not forgery."""
    prometheus = ShadowPrometheus(pairs=1200, agreed=1190, requests=1000)
    found = only(evaluate(prometheus, [agreement()]))
    assert found.outcome is Outcome.SUCCESSFUL


# --- counter resets and broken answers ----------------------------------------------------


def test_a_collector_restart_neither_subtracts_nor_double_counts_pairs() -> None:
    """Before the restart Prometheus counts 600 pairs since mirroring began; after it,
    ``increase()`` reports 600 + the 200 counted since (a drop is read as a reset). Each
    evaluation judges the totals it is given: nothing is kept from the one before that a
    smaller total could be subtracted from, and nothing is added to it again."""
    prometheus = ShadowPrometheus(pairs=600, agreed=590)
    first = evaluate(prometheus, [agreement()], at=AT)
    assert only(first).canary_samples == 600
    prometheus.pairs, prometheus.agreed = 800, 787
    after = evaluate(prometheus, [agreement()], at=AT + timedelta(seconds=30),
                     memory=first.memory)  # fmt: skip
    assert only(after).canary_samples == 800
    assert only(after).detail["agreed"] == 787
    memory = after.memory["shadow-decision-agreement"]
    assert (memory.counters, memory.sequential) == (None, None)  # no counts carried over
    # Pairs joined after the last scrape before the restart were never scraped: the next
    # total can be lower. It is judged as it is, never as a negative increase.
    prometheus.pairs, prometheus.agreed = 780, 768
    lower = only(evaluate(prometheus, [agreement()], at=AT + timedelta(seconds=60),
                          memory=after.memory))  # fmt: skip
    assert lower.canary_samples == 780
    assert lower.outcome is Outcome.SUCCESSFUL


@pytest.mark.parametrize(
    ("spoil", "kind", "message"),
    [
        pytest.param({"pairs": 1000, "agreed": 1100}, "invalid-counter", "cannot be negative",
                     id="negative-pairs"),
        pytest.param({"requests": -5.0}, "invalid-counter", "cannot be negative",
                     id="negative-requests"),
        pytest.param({"agreed": math.inf}, "invalid-counter", "must be finite",
                     id="infinite-pairs"),
        pytest.param({"pairs_answer": [Series({"agree": "true"}, 1e308),
                                       Series({"agree": "false"}, 1e308)],
                      "requests": 1e308},
                     "invalid-answer", "pairs must be a finite count", id="pairs-beyond-floats"),
        pytest.param({"failing": {"pairs": Unreachable("connection refused")}}, "unreachable",
                     "connection refused", id="prometheus-down"),
        pytest.param({"failing": {"requests": Unreachable("timed out")}}, "unreachable",
                     "timed out", id="requests-unreadable"),
    ],
)  # fmt: skip
def test_an_unusable_answer_is_an_error_never_a_pass(
    spoil: dict[str, Any], kind: str, message: str
) -> None:
    prometheus = ShadowPrometheus(**spoil)
    found = only(evaluate(prometheus, [agreement(consecutive_error_limit=0)]))
    assert found.outcome is Outcome.ERROR
    assert found.gating_outcome is Outcome.ERROR
    assert not found.sufficient
    assert found.detail["error_kind"] == kind
    assert message in found.message


# --- score shift -------------------------------------------------------------------------


def test_score_shift_passes_when_the_scores_match() -> None:
    found = only(evaluate(ShadowPrometheus(), [score_shift()]))
    assert found.outcome is Outcome.SUCCESSFUL
    assert found.sufficient
    assert found.canary_value == pytest.approx(0.0)
    assert (found.canary_samples, found.baseline_samples) == (1000, 1000)
    assert found.statistic == pytest.approx(0.0)
    assert found.threshold == 0.1
    assert found.detail["test"] == "shadow-score-shift"
    assert found.query.split("\n")[:2] == [
        score_buckets_query(NS, CHAMPION, CHALLENGER, timedelta(seconds=598)),
        score_buckets_query(NS, CHALLENGER, CHAMPION, timedelta(seconds=598)),
    ]


def test_score_shift_fails_when_the_challengers_scores_moved() -> None:
    scores = {CHAMPION: histogram(EVEN, 1000), CHALLENGER: histogram(LOW, 1000)}
    found = only(evaluate(ShadowPrometheus(scores=scores), [score_shift()]))
    assert found.outcome is Outcome.FAILED
    assert found.gating_outcome is Outcome.FAILED
    assert not found.fast_fail  # a point estimate, not an anytime-valid test
    assert found.statistic is not None
    assert found.statistic > 0.1
    assert found.canary_value == found.statistic
    assert "moved from the champion's" in found.message


@pytest.mark.parametrize(
    ("scores", "grace", "gating", "message"),
    [
        pytest.param({CHAMPION: histogram(EVEN, 100), CHALLENGER: histogram(LOW, 100)}, False,
                     Outcome.SUCCESSFUL, "200 needed on each side", id="too-few-scores"),
        pytest.param({CHAMPION: histogram(EVEN, 1000), CHALLENGER: None}, False,
                     Outcome.INCONCLUSIVE, "the PSI needs scores on both sides",
                     id="challenger-without-scores"),
        pytest.param({CHAMPION: None, CHALLENGER: None}, True, Outcome.SUCCESSFUL,
                     "still collecting", id="no-data-in-grace"),
    ],
)  # fmt: skip
def test_score_shift_without_enough_scores_never_passes(
    scores: dict[str, list[tuple[str, float]] | None], grace: bool, gating: Outcome, message: str
) -> None:
    found = only(evaluate(ShadowPrometheus(scores=scores), [score_shift()], grace=grace))
    assert found.outcome is Outcome.INCONCLUSIVE
    assert found.gating_outcome is gating
    assert not found.sufficient
    assert message in found.message


def test_forged_scores_are_inconsistent_evidence_too() -> None:
    scores = {CHAMPION: histogram(EVEN, 9000), CHALLENGER: histogram(EVEN, 9000)}
    found = only(evaluate(ShadowPrometheus(scores=scores), [score_shift()]))
    assert found.outcome is Outcome.ERROR
    assert found.detail["error_kind"] == "inconsistent-evidence"
    assert "9,000 scored pairs" in found.message


def test_both_checks_share_one_reading_of_the_requests() -> None:
    prometheus = ShadowPrometheus()
    result = evaluate(prometheus, [agreement(), score_shift()])
    assert [e.outcome for e in result.evaluations] == [Outcome.SUCCESSFUL, Outcome.SUCCESSFUL]
    assert result.sufficient_data
    queries = [q for q, _ in prometheus.sent]
    assert len(queries) == len(set(queries)) == 4  # pairs, two histograms, requests once


# --- what cannot be compared ---------------------------------------------------------------


def test_a_dark_launch_has_no_output_comparison() -> None:
    prometheus = ShadowPrometheus()
    dark = replace(SUBJECT, challenger_isvc=None)
    result = evaluate(prometheus, [agreement(consecutive_error_limit=0), score_shift()],
                      subject=dark)  # fmt: skip
    for found in result.evaluations:
        assert found.outcome is Outcome.ERROR
        assert not found.sufficient
        assert "dark launch" in found.message
        assert "cannot be told apart from the champion's" in found.message
    assert result.verdict is Outcome.ERROR
    assert prometheus.sent == []


def test_without_the_phase_start_nothing_is_counted() -> None:
    prometheus = ShadowPrometheus()
    found = only(evaluate(prometheus, [agreement()], step=None))
    assert found.outcome is Outcome.ERROR
    assert "since the shadow phase began" in found.message
    assert prometheus.sent == []


def test_right_after_mirroring_began_it_is_still_collecting() -> None:
    prometheus = ShadowPrometheus()
    found = only(evaluate(prometheus, [agreement()], at=SINCE + LAG, grace=True))
    assert found.outcome is Outcome.INCONCLUSIVE
    assert found.gating_outcome is Outcome.SUCCESSFUL
    assert not found.sufficient
    assert "no paired predictions yet" in found.message
    assert prometheus.sent == []


def test_the_fast_path_leaves_the_output_checks_for_the_full_evaluation() -> None:
    prometheus = ShadowPrometheus()
    kept = {"shadow-decision-agreement": CheckMemory(consecutive_errors=2)}
    result = Analyzer(prometheus).analyze(SUBJECT, [agreement()], kept, AT, grace=False,
                                          looks_only=True, step=STEP)  # fmt: skip
    assert result.evaluations == ()
    assert result.memory == kept
    assert prometheus.sent == []


# --- the definitions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: agreement(absolute_limit=None, relative_tolerance=0.1),
                     "takes only absolute_limit", id="relative"),
        pytest.param(lambda: agreement(absolute_limit=None, hard_limit=0.5),
                     "needs absolute_limit (the minimum agreement)", id="no-minimum"),
        pytest.param(lambda: agreement(absolute_limit=1.5), "a share in (0, 1]",
                     id="minimum-above-one"),
        pytest.param(lambda: agreement(direction="lowerIsBetter"), "is higherIsBetter",
                     id="direction"),
        pytest.param(lambda: agreement(on_no_data="pass"), "cannot pass on no data",
                     id="pass-on-no-data"),
        pytest.param(lambda: agreement(max_predictions_per_request=0),
                     "max_predictions_per_request must be >= 1", id="batch"),
        pytest.param(lambda: score_shift(absolute_limit=-0.1), "a PSI > 0", id="psi"),
        pytest.param(lambda: score_shift(builtin="score-drift"), "unknown built-in",
                     id="unknown"),
    ],
)  # fmt: skip
def test_output_check_definitions_refuse_what_they_cannot_judge(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_a_subject_cannot_compare_the_champion_with_itself() -> None:
    with pytest.raises(ValueError, match="another InferenceService than the champion"):
        replace(SUBJECT, challenger_isvc=CHAMPION)
