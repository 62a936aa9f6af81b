"""The reaction benchmark's pure parts: scrape-time arithmetic, statistics, targets, the
tables it writes, and that its two configurations are what they claim to be."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
import yaml

from analysis.assess import assess
from analysis.looks import LookSource
from analysis.runner import Analyzer
from analysis.types import CheckMemory, Outcome, Reading, Subject
from bench import reaction
from bench.reaction import (
    Context,
    ControllerExited,
    Row,
    Run,
    Spread,
    TrialResult,
    _run_trials,
    behind_text,
    configurations,
    first_after,
    in_intervals,
    last_at_or_before,
    parse_args,
    report,
    significance_look,
    spread,
    summary_table,
    targets,
)
from canary.checks import check_definitions
from canary.policy import RolloutPolicy
from tests.unit.test_looks import AT, SECOND, FakePrometheus, Revision

SCRAPES = (10.3, 11.3, 12.3, 13.3)


@pytest.mark.parametrize(
    ("instant", "after", "at_or_before"),
    [
        (10.0, 10.3, None),  # before every scrape
        (10.3, 11.3, 10.3),  # on a scrape: "after" is the next one, "at or before" is it
        (11.9, 12.3, 11.3),
        (13.3, None, 13.3),
        (20.0, None, 13.3),  # after every scrape
    ],
)
def test_scrapes_around_an_instant(
    instant: float, after: float | None, at_or_before: float | None
) -> None:
    assert first_after(instant, SCRAPES) == after
    assert last_at_or_before(instant, SCRAPES) == at_or_before
    assert first_after(instant, SCRAPES[::-1]) == after  # order does not matter


@pytest.mark.parametrize(
    ("look_at", "looks_read", "period", "expected"),
    [
        (100.0, 1, 1.0, 100.0),  # one look read: it is the one
        (100.0, 3, 1.0, 98.0),  # three read at once: the earliest could have proven it
        (100.0, 2, 5.0, 95.0),
        (100.0, 0, 1.0, 100.0),
    ],
)
def test_the_significant_look_is_the_earliest_the_failing_pass_read(
    look_at: float, looks_read: int, period: float, expected: float
) -> None:
    assert significance_look(look_at, looks_read, period) == expected


@pytest.mark.parametrize(
    ("looks_read", "first_bad_scrape", "expected"),
    [
        (10, 96.4, 97.0),  # looks at 91..96 read no bad data: 97 is the first that could
        (10, 97.0, 97.0),  # a look at the scrape's own time reads it
        (3, 90.0, 98.0),  # the bound is below every look read: the earliest stays
        (3, 100.5, 100.0),  # no look read bad data (cannot happen): the last one
    ],
)
def test_no_look_before_the_first_bad_scrape_can_have_proven_the_regression(
    looks_read: int, first_bad_scrape: float, expected: float
) -> None:
    assert significance_look(100.0, looks_read, 1.0, not_before=first_bad_scrape) == expected


@pytest.mark.parametrize(
    ("seconds", "interval", "expected"),
    [(6.0, 1.0, 6.0), (2.5, 1.0, 2.5), (45.0, 30.0, 1.5), (0.0, 15.0, 0.0)],
)
def test_seconds_in_scrape_intervals(seconds: float, interval: float, expected: float) -> None:
    assert in_intervals(seconds, interval) == expected


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_a_scrape_interval_or_look_period_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        in_intervals(1.0, interval)
    with pytest.raises(ValueError, match="positive"):
        significance_look(1.0, 1, interval)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], Spread(0, None, None)),
        ([4.0], Spread(1, 4.0, 4.0)),
        ([3.0, 1.0, 2.0], Spread(3, 2.0, 3.0)),
        ([float(v) for v in range(1, 21)], Spread(20, 10.5, 19.0)),  # p95: the 19th of 20
        ([float(v) for v in range(1, 101)], Spread(100, 50.5, 95.0)),
    ],
)
def test_median_and_nearest_rank_p95(values: list[float], expected: Spread) -> None:
    assert spread(values) == expected


@pytest.mark.parametrize(
    ("after_significance", "ours", "flagger", "expected"),
    [
        (2.6, 6.0, 140.0, (True, True)),
        (3.0, 6.0, 60.0, (True, True)),  # exactly at both limits counts as met
        (3.2, 7.0, 60.0, (False, False)),  # 60 / 7 = 8.6x
        (None, None, 140.0, (None, None)),  # not measured, never "met"
    ],
)
def test_targets_are_met_or_missed_on_the_medians(
    after_significance: float | None,
    ours: float | None,
    flagger: float | None,
    expected: tuple[bool | None, bool | None],
) -> None:
    def one(value: float | None) -> Spread:
        return Spread(0, None, None) if value is None else Spread(20, value, value * 1.5)

    results = targets(one(after_significance), one(ours), one(flagger), scrape_interval=1.0)
    assert tuple(r.met for r in results) == expected
    if ours is not None and flagger is not None:
        assert f"{flagger / ours:.1f}×" in results[1].measured


def test_the_summary_table_shows_seconds_intervals_and_incomplete_runs() -> None:
    rows = [
        Row("ours", 20, 20, Spread(20, 6.0, 8.0), Spread(20, 6.04, 8.04)),
        Row("flagger", 19, 20, Spread(19, 140.0, 150.0), Spread(19, 140.1, 150.1)),
    ]
    assert summary_table(rows, scrape_interval=2.0).splitlines() == [
        "| configuration | runs | to patch: median / p95 s | to 0 %: median / p95 s | "
        "in scrape intervals (patch; 0 %) |",
        "|---|---|---|---|---|",
        "| ours | 20 | 6.00 / 8.00 | 6.04 / 8.04 | 3.0 / 4.0; 3.0 / 4.0 |",
        "| flagger | 19 of 20 | 140.00 / 150.00 | 140.10 / 150.10 | 70.0 / 75.0; 70.0 / 75.0 |",
    ]


def _trial(config: str, index: int, to_patch: float, **changes: object) -> TrialResult:
    bad = 1000.0 + 100 * index
    trial = TrialResult(
        config,
        f"{config}-{index:02d}",
        canary_revision="r-00002",
        step_seen=bad - 20,
        t0=bad - 0.5,
        share_at_t0=10,
        first_bad_scrape=bad,
        significant_scrape=bad + 3 if config == "ours" else None,
        last_look_scrape=bad + 3 if config == "ours" else None,
        looks_read=1 if config == "ours" else None,
        decided=bad + to_patch - 0.05,
        write_sent=bad + to_patch - 0.02,
        patch_seen=bad + to_patch,
        zero_seen=bad + to_patch + 0.04,
        write_attempts=1,
    )
    return replace(trial, **changes)  # type: ignore[arg-type]


def _context() -> Context:
    return Context(
        date="2026-12-06", machine="a test machine", command="make bench-reaction", runs=3,
        parallel=2, interval=30, threshold=5, rate=200.0, scrape_interval=1.0, look_lag=1.5,
        load_before="1.00, 1.00, 1.00", load_after="2.00, 1.50, 1.00", load_peak=2.5,
        wall_seconds=600.0, trials_seconds=500.0, controller_cpu_seconds=50.0,
    )  # fmt: skip


def test_the_report_counts_only_completed_trials_and_says_why_one_did_not() -> None:
    ours, flagger = configurations(30, 5)
    trials = [
        _trial("ours", 1, 5.0),
        _trial("ours", 2, 6.0),
        _trial("ours", 3, 7.0),
        _trial("flagger-style", 1, 130.0),
        _trial("flagger-style", 2, 140.0, share_at_t0=25),
        _trial("flagger-style", 3, 0.0, patch_seen=None, zero_seen=None,
               problem="no rollback within 270 s of the bad instant"),
    ]  # fmt: skip
    markdown, data, block = report(_context(), (ours, flagger), trials)
    assert f"| {ours.label} | 3 | 6.00 / 7.00 |" in block
    assert f"| {flagger.label} | 2 of 3 | 135.00 / 140.00 |" in block
    # after significance: patch at +5/+6/+7 s, significant scrape at +3 s: median 3.0 s
    assert "| 3.00 s (3.0 scrape intervals); 3.00 s from the last look the pass read | met |" in (
        block
    )
    assert "| 22.5× (135.0 s against 6.0 s) | met |" in block
    assert "10 % (4 trials), 25 % (1 trial)" in block
    assert "make bench-reaction" in block
    assert "a test machine" in block
    assert "no rollback within 270 s of the bad instant" in markdown
    assert data["summary"][flagger.label]["completed"] == 2
    assert len(data["trials"]) == 6


SUBJECT = Subject(
    namespace="fraud",
    isvc="scorer",
    mode="knative",
    canary_revision="scorer-00002",
    baseline_revision="scorer-00001",
    metric_profile="knative-otel",
    window=timedelta(seconds=60),
)


def _policy(text: str) -> RolloutPolicy:
    return RolloutPolicy.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("key", "judged_on_looks"),
    [("ours", {"error-rate", "latency-p99"}), ("flagger-style", set())],
)
def test_only_ours_is_judged_on_the_looks_between_analysis_intervals(
    key: str, judged_on_looks: set[str]
) -> None:
    config = next(c for c in configurations(30, 5) if c.key == key)
    prometheus = FakePrometheus(
        {("fraud", "scorer-00002"): Revision(), ("fraud", "scorer-00001"): Revision()}
    )
    looks = LookSource(prometheus, period=SECOND * 5, lag=SECOND * 2, window=SECOND * 60)
    analyzer = Analyzer(prometheus, looks=looks)
    checks = check_definitions(_policy(config.text))
    result = analyzer.analyze(SUBJECT, checks, {}, AT + SECOND * 7, grace=False,
                              looks_only=True)  # fmt: skip
    assert {e.check for e in result.evaluations} == judged_on_looks
    if not judged_on_looks:
        assert prometheus.sent == []  # not even a query between intervals


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_the_flagger_style_checks_roll_back_at_the_threshold_th_failure_in_a_row(
    threshold: int,
) -> None:
    _, flagger = configurations(30, threshold)
    policy = _policy(flagger.text)
    assert policy.analysis_interval == policy.step_hold == timedelta(seconds=30)
    check = next(c for c in check_definitions(policy) if c.name == "error-rate")
    assert check.builtin is None
    assert check.query is not None
    assert "[30s]" in check.query
    bad = Reading(canary=0.20, baseline=0.01, canary_samples=600, baseline_samples=5400)
    memory, gated = CheckMemory(), []
    for _ in range(threshold):
        assessed = assess(check, bad, memory, grace=False)
        memory = assessed.memory
        gated.append(assessed.gating_outcome)
    assert gated == [Outcome.SUCCESSFUL] * (threshold - 1) + [Outcome.FAILED]


@pytest.mark.parametrize(("interval", "threshold"), [(0, 5), (30, 0)])
def test_configurations_refuse_a_zero_interval_or_threshold(interval: int, threshold: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        configurations(interval, threshold)


def test_passes_that_read_several_looks_at_once_are_told_apart_from_timely_ones() -> None:
    # each trial's first bad scrape is at 1000 + 100 * index
    trials = [
        _trial("ours", 1, 5.0),  # one look read: the patch 2 s after its scrape (+3)
        _trial("ours", 2, 7.0, looks_read=3, significant_scrape=1201.0, last_look_scrape=1203.0),
        _trial("ours", 3, 8.0, looks_read=2, significant_scrape=1302.0, last_look_scrape=1304.0),
        _trial("ours", 4, 0.0, looks_read=5, patch_seen=None, problem="no rollback"),
    ]
    assert behind_text(trials, 1.0) == (
        "In 2 of 3 trials the pass that rolled back read more than one look at once (the "
        "controller was behind its 1 s looks): the write came 6.0 s (median) after the "
        "scrape of the earliest of them, 4.0 s after that of the last, against 2.0 s in the "
        "1 where it read one."
    )
    assert behind_text(trials[:1], 1.0) == ""  # none behind: nothing to say


class _Trials:
    """Stands in for the run: each trial blocks until released, as a trial waiting for a
    controller that no longer answers would (until its own deadlines)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.begun = 0

    def trial(self, config: object, index: int) -> TrialResult:
        self.begun += 1
        self.release.wait(30)
        return TrialResult("ours", f"ours-{index:02d}")


def test_a_controller_that_exits_ends_the_run_at_once_and_names_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(reaction, "CONTROLLER_CHECK_SECONDS", 0.01)
    trials = _Trials()
    exits = iter([None, None, 1])
    options = parse_args(["--runs", "20", "--parallel", "2"])
    ours, flagger = configurations(30, 5)
    try:
        with pytest.raises(ControllerExited, match=r"exited with code 1 .*0 of 40 reported"):
            _run_trials(cast(Run, trials), (ours, flagger), options,
                        lambda: next(exits, 1), tmp_path / "controller.log")  # fmt: skip
    finally:
        trials.release.set()
    assert trials.begun <= 2  # the trials not begun were cancelled, not waited out
