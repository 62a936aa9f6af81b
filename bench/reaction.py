"""Reaction time: how long after a canary turns bad the controller rolls it back, on the test bed.

``make bench-reaction`` (``python -m bench.reaction --runs 20``); ``--quick`` is a smoke
check (2 runs per configuration at a 10 s interval, nothing written unless ``--out``).

**The test bed.** The real kube-apiserver, the KServe simulator (Knative mode), the traffic
simulator and a real Prometheus scraping every target every second (the scrape interval
is read from :class:`testbed.prometheus.PrometheusServer`'s configuration), PostgreSQL for
the audit trail, and the controller as its own process (``canary run``, as the e2e harness
spawns it) with a look every scrape interval (``KSC_LOOK_PERIOD_SECONDS`` = the scrape
interval) taken as complete 1.5 s later (``KSC_LOOK_LAG_SECONDS``), as the e2e tests run it.

**A trial.** One InferenceService of its own, serving ``--rate`` requests per second
(200 by default; the canary gets 10 % of them at the first step): the stable model and
the new one both healthy (1 % errors, p99 40 ms). The new model is started as a canary
(``canary rollout start``); once the InferenceService status shows the first step, the
trial waits a random 10 s to 10 s + one analysis interval (so the bad instant falls at a
uniformly random phase of the analysis interval), then switches the new model's
behaviour in the behaviour book to 20 % errors and records that wall-clock instant, T0.
Each trial draws its own instant. Trials of both configurations run side by side, at most
``--parallel`` (8) at a time in all, each with its own InferenceService, all under one
controller. The bound is the test bed's: the traffic simulator renders every scrape of
every target in one Python process (about 10 ms of CPU for each, once a second), and with
many more targets on this 2-core machine its answers miss Prometheus's 0.9 s scrape
timeout, which would measure the test bed rather than the controller. Each trial counts
the failed scrapes of its canary (``up`` = 0) to show it did not happen.

**The two configurations**, both with steps 10/25/50/100, a step hold and an analysis
interval of ``--interval`` (30 s) and no approval:

* *ours*: the default checks (error rate +50 %, p99 +20 %, judged by the sequential tests)
  and the default fast path: every look between analysis intervals is judged, and a look
  that proves a regression rolls back at once.
* *Flagger-style*: the same controller, with custom ``query`` checks (PromQL over the
  last interval, like Flagger's metric templates: 5xx ratio at most 5 %, p99 at most
  100 ms), which are read only at each analysis interval (never on looks), and
  ``failureLimit`` = threshold - 1, so the threshold-th failed check in a row rolls back
  (``--threshold`` 5; Flagger counts failed checks without the "in a row", which is the
  same for a canary that stays bad). No product option was needed for it.

**What is measured** (all wall-clock times on this one machine):

* *First bad scrape*: the first successful Prometheus scrape of the canary's target after
  T0, taken from the sample timestamps of its ``up`` series (the scrape times). The traffic
  simulator reads the behaviour book every 0.2 s, so that scrape may hold up to 0.2 s less
  bad traffic than it could; measured from it, the times are if anything too long.
* *Patch committed*: when the bench's own watch of the InferenceServices receives the
  object whose ``canaryTrafficPercent`` is 0 (a new resourceVersion: the apiserver has
  committed the write and sent it to watchers, as KServe's controller would get it). The
  audit trail's ``traffic.applied`` record of the rollback carries the controller's clock
  just *before* it sent the write, so it is an earlier bound; both are kept, and the
  watch is the figure reported.
* *0 % observed*: the first watched object whose status (written by the KServe
  simulator) gives the canary revision 0 % of the traffic.
* *Evidence significant* (ours): the rollback's ``analysis.evaluated`` record names the
  look whose counts proved the regression (``look_at``; when the pass read several looks
  at once, the earliest of them, which only lengthens the figure); that look read the
  last scrape at or before its time, so the evidence was in Prometheus from that scrape.

Times are reported as median and p95 (nearest rank), in seconds and in scrape intervals.
The targets are shown, met or missed, never asserted: our median at most one scrape
interval + 2 s after the evidence became significant, and at least 10 times faster than
the Flagger-style configuration.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import machine, write_results
from canary.audit import AuditRecord, AuditStore
from canary.engine import RolloutDocument
from canary.k8s.client import INFERENCE_SERVICE, Gone, KubeClient, KubeError
from canary.log import get_logger
from canary.ops import submit_command
from canary.policy import parse_duration
from canary.routing.knative import observed_from
from testbed.behaviour import ModelBehaviour
from testbed.postgres import PostgresServer, provision_audit_database
from testbed.prometheus import PrometheusServer
from testbed.testbed import Testbed
from tests.e2e.harness import Env

__all__ = [
    "Configuration",
    "Spread",
    "TargetResult",
    "TrialResult",
    "first_after",
    "in_intervals",
    "last_at_or_before",
    "main",
    "readme_block",
    "significance_look",
    "spread",
    "summary_table",
    "targets",
]

log = get_logger("bench.reaction")

FIRST_STEP = 10
STEPS = "[10, 25, 50, 100]"
HEALTHY = ModelBehaviour()  # 1 % errors, p99 40 ms
BAD = ModelBehaviour(error_rate=0.20)
LOOK_LAG_SECONDS = 1.5
ERROR_LIMIT = 0.05  # the Flagger-style 5xx ratio threshold
P99_LIMIT_SECONDS = 0.1  # the Flagger-style p99 threshold (the healthy p99 is 0.04 s)
MIN_OFFSET_SECONDS = 10.0  # the canary's series are in Prometheus by then (discovery ~6 s)
START_SPACING_SECONDS = 1.5  # between two trials' first writes, so they do not all bunch up
CONTROLLER_CHECK_SECONDS = 2.0  # how often the trials check that the controller still runs
TARGET_EXTRA_SECONDS = 2.0  # our target: one scrape interval + 2 s after significance
TARGET_RATIO = 10.0  # and at least 10 x faster than the Flagger-style configuration


# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """One way of running the controller: a policy, by name and text."""

    key: str  # "ours" | "flagger-style"
    label: str
    policy: str
    text: str


def _common(name: str, interval: int) -> str:
    return (
        f"name: {name}\n"
        f"steps: {STEPS}\n"
        f"stepHold: {interval}s\n"
        f"analysisInterval: {interval}s\n"
        "maxStepDuration: 15m\n"
        "revisionReadyTimeout: 1m\n"
    )


def configurations(interval: int, threshold: int) -> tuple[Configuration, Configuration]:
    """Ours (default checks and fast path) and the Flagger-style one, at ``interval`` s."""
    if interval < 1 or threshold < 1:
        raise ValueError("the interval and the threshold must be at least 1")
    ours = Configuration(
        "ours",
        "ours (sequential tests, looks every scrape interval)",
        "reaction-ours",
        _common("reaction-ours", interval),
    )
    requests = (
        'http_server_request_duration_seconds_count{namespace="${namespace}",'
        'revision="${revision}",container="queue-proxy"'
    )
    window = f"[{interval}s]"
    error_query = (
        f'(sum(rate({requests},http_response_status_code=~"5.."}}{window})) or vector(0)) '
        f"/ sum(rate({requests}}}{window}))"
    )
    p99_query = (
        "histogram_quantile(0.99, sum by (le) (rate(kn_serving_invocation_duration_seconds_"
        f'bucket{{namespace="${{namespace}}",revision="${{revision}}"}}{window})))'
    )
    flagger_text = _common("reaction-flagger", interval) + (
        "checks:\n"
        "  - name: error-rate\n"
        f"    query: '{error_query}'\n"
        "    direction: lowerIsBetter\n"
        f"    absoluteLimit: {ERROR_LIMIT}\n"
        f"    failureLimit: {threshold - 1}\n"
        "  - name: latency-p99\n"
        f"    query: '{p99_query}'\n"
        "    direction: lowerIsBetter\n"
        f"    absoluteLimit: {P99_LIMIT_SECONDS}\n"
        f"    failureLimit: {threshold - 1}\n"
    )
    flagger = Configuration(
        "flagger-style",
        f"Flagger-style (checks every {interval} s, rollback at {threshold} failed)",
        "reaction-flagger",
        flagger_text,
    )
    return ours, flagger


# --------------------------------------------------------------------------------------------
# pure arithmetic
# --------------------------------------------------------------------------------------------


def first_after(instant: float, times: Sequence[float]) -> float | None:
    """The earliest of ``times`` strictly after ``instant`` (None if there is none)."""
    later = [t for t in times if t > instant]
    return min(later) if later else None


def last_at_or_before(instant: float, times: Sequence[float]) -> float | None:
    """The latest of ``times`` at or before ``instant`` (None if there is none): the
    sample an instant query at ``instant`` reads."""
    earlier = [t for t in times if t <= instant]
    return max(earlier) if earlier else None


def significance_look(
    look_at: float, looks_read: int, period: float, not_before: float | None = None
) -> float:
    """The time of the look that made the evidence significant, at the earliest: the
    evaluation that failed read ``looks_read`` looks ending with the one at ``look_at``,
    one ``period`` apart, and the regression was proven at one of them, but not at one
    before ``not_before`` (the first bad scrape), which read no bad data."""
    if period <= 0:
        raise ValueError("the look period must be positive")
    candidates = [look_at - i * period for i in range(max(looks_read, 1))]
    if not_before is not None:
        # a look at t reads the last scrape at or before t: none before the first bad scrape
        # holds bad data, so none of those can have proven the regression
        candidates = [t for t in candidates if t >= not_before] or [look_at]
    return min(candidates)


def in_intervals(seconds: float, interval: float) -> float:
    """``seconds`` as a number of scrape intervals."""
    if interval <= 0:
        raise ValueError("the scrape interval must be positive")
    return seconds / interval


@dataclass(frozen=True)
class Spread:
    """Median and p95 (nearest rank) of ``n`` values; None without values."""

    n: int
    median: float | None
    p95: float | None

    def scaled(self, factor: float) -> Spread:
        return Spread(
            self.n,
            None if self.median is None else self.median * factor,
            None if self.p95 is None else self.p95 * factor,
        )

    def text(self, digits: int = 1) -> str:
        if self.median is None or self.p95 is None:
            return "–"
        return f"{self.median:.{digits}f} / {self.p95:.{digits}f}"


def spread(values: Sequence[float]) -> Spread:
    """Median and nearest-rank p95 of ``values``."""
    if not values:
        return Spread(0, None, None)
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return Spread(len(ordered), statistics.median(ordered), p95)


# --------------------------------------------------------------------------------------------
# one trial's record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResult:
    """What one trial saw. Wall-clock seconds since the epoch; None when it did not
    happen (``problem`` says why the trial did not complete)."""

    config: str
    service: str
    canary_revision: str | None = None
    step_seen: float | None = None  # the watch saw the first step in status
    t0: float | None = None  # the canary model turned bad
    share_at_t0: int | None = None  # the canary's percent in status then (10, or 25 later)
    first_bad_scrape: float | None = None
    significant_scrape: float | None = None  # ours: the scrape that made it significant
    significant_look: float | None = None  # ours: the grid time of the look that read it
    last_look: float | None = None  # ours: the last look the failing pass read (look_at)
    last_look_scrape: float | None = None  # the scrape that last look read
    decided: float | None = None  # the rollback's traffic.intent record (the decision)
    write_sent: float | None = None  # its traffic.applied record (before the write)
    patch_seen: float | None = None  # the watch saw canaryTrafficPercent 0
    zero_seen: float | None = None  # the watch saw the canary at 0 % in status
    write_attempts: int | None = None
    failed_scrapes: int | None = None  # of the canary's target, from the step to the patch
    failed_check: str | None = None
    fast_path: bool | None = None
    looks_read: int | None = None
    phase: str | None = None
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return (
            self.problem is None
            and self.first_bad_scrape is not None
            and self.patch_seen is not None
            and self.zero_seen is not None
        )

    def since_bad(self, instant: float | None) -> float | None:
        if instant is None or self.first_bad_scrape is None:
            return None
        return instant - self.first_bad_scrape

    @property
    def to_patch(self) -> float | None:
        return self.since_bad(self.patch_seen)

    @property
    def to_zero(self) -> float | None:
        return self.since_bad(self.zero_seen)

    @property
    def after_significance(self) -> float | None:
        """From the scrape that made the evidence significant, taking the earliest look the
        failing pass read (an upper bound when it read several)."""
        if self.patch_seen is None or self.significant_scrape is None:
            return None
        return self.patch_seen - self.significant_scrape

    @property
    def after_last_look(self) -> float | None:
        """The same from the scrape of the last look that pass read (a lower bound)."""
        if self.patch_seen is None or self.last_look_scrape is None:
            return None
        return self.patch_seen - self.last_look_scrape


def _values(
    trials: Sequence[TrialResult], pick: Callable[[TrialResult], float | None]
) -> list[float]:
    return [v for t in trials if t.complete and (v := pick(t)) is not None]


# --------------------------------------------------------------------------------------------
# targets and rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetResult:
    what: str
    measured: str
    met: bool | None  # None: not measured


def targets(
    ours_after_significance: Spread,
    ours_to_patch: Spread,
    flagger_to_patch: Spread,
    scrape_interval: float,
    ours_after_last_look: Spread | None = None,
) -> list[TargetResult]:
    """Issue #16's two reaction targets, met or missed, with the measured figure. The first
    is judged on ``ours_after_significance`` (from the earliest look the failing pass read);
    ``ours_after_last_look`` (from its last look) is shown beside it."""
    limit = scrape_interval + TARGET_EXTRA_SECONDS
    first: TargetResult
    if ours_after_significance.median is None:
        first = TargetResult(f"ours: median ≤ {limit:g} s after significance", "–", None)
    else:
        value = ours_after_significance.median
        first = TargetResult(
            f"ours: median ≤ {limit:g} s (1 scrape interval + {TARGET_EXTRA_SECONDS:g} s) "
            "after the evidence became significant",
            f"{value:.2f} s ({in_intervals(value, scrape_interval):.1f} scrape intervals)"
            + (
                f"; {ours_after_last_look.median:.2f} s from the last look the pass read"
                if ours_after_last_look is not None and ours_after_last_look.median is not None
                else ""
            ),
            value <= limit,
        )
    second: TargetResult
    if not ours_to_patch.median or flagger_to_patch.median is None:
        second = TargetResult(f"ours ≥ {TARGET_RATIO:g}× faster than Flagger-style", "–", None)
    else:
        ratio = flagger_to_patch.median / ours_to_patch.median
        second = TargetResult(
            f"ours ≥ {TARGET_RATIO:g}× faster than Flagger-style (median to patch)",
            f"{ratio:.1f}× ({flagger_to_patch.median:.1f} s against {ours_to_patch.median:.1f} s)",
            ratio >= TARGET_RATIO,
        )
    return [first, second]


@dataclass(frozen=True)
class Row:
    """One configuration's line of the summary table."""

    label: str
    completed: int
    attempted: int
    to_patch: Spread
    to_zero: Spread


def summary_table(rows: Sequence[Row], scrape_interval: float) -> str:
    """The README table: configuration | runs | to patch | to 0 % | in scrape intervals."""
    lines = [
        "| configuration | runs | to patch: median / p95 s | to 0 %: median / p95 s | "
        "in scrape intervals (patch; 0 %) |",
        "|---|---|---|---|---|",
    ]
    per = 1 / scrape_interval
    for row in rows:
        runs = (
            f"{row.completed}"
            if row.completed == row.attempted
            else (f"{row.completed} of {row.attempted}")
        )
        intervals = f"{row.to_patch.scaled(per).text(1)}; {row.to_zero.scaled(per).text(1)}"
        lines.append(
            f"| {row.label} | {runs} | {row.to_patch.text(2)} | {row.to_zero.text(2)} | "
            f"{intervals} |"
        )
    return "\n".join(lines)


def _met(result: TargetResult) -> str:
    if result.met is None:
        return "not measured"
    return "met" if result.met else "**missed**"


def targets_table(results: Sequence[TargetResult]) -> str:
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {r.what} | {r.measured} | {_met(r)} |" for r in results]
    return "\n".join(lines)


@dataclass(frozen=True)
class Context:
    """What the run was: for the header of the results and the README block."""

    date: str
    machine: str
    command: str
    runs: int
    parallel: int
    interval: int
    threshold: int
    rate: float
    scrape_interval: float
    look_lag: float
    load_before: str
    load_after: str
    load_peak: float | None
    wall_seconds: float
    trials_seconds: float  # the part of the run the trials took (the controller's CPU share)
    controller_cpu_seconds: float | None


def explanation(
    ctx: Context,
    ours_to_patch: Spread,
    ours_accumulating: Spread,
    ours_after_significance: Spread,
    flagger_to_patch: Spread,
    patch_to_zero: Spread,
    ours_trials: Sequence[TrialResult] = (),
) -> str:
    """Two to four sentences on what the figures mean, every number from the data."""
    sentences: list[str] = []
    if ours_to_patch.median is not None and ours_accumulating.median is not None:
        after = ours_after_significance.median
        tail = (
            f"; the write followed a median {after:.1f} s after the scrape that made it so "
            f"(the look's {ctx.look_lag:g} s lag for a complete scrape, then the "
            "controller's pass and the write)"
            if after is not None
            else ""
        )
        sentences.append(
            f"Ours wrote the rollback a median {ours_to_patch.median:.1f} s after the first "
            f"bad scrape: its sequential test, fed a look every {ctx.scrape_interval:g} s, "
            f"needed a median {ours_accumulating.median:.1f} s of bad data before the "
            f"20 % errors were proven against the baseline's 1 %{tail}."
        )
    late = behind_text(ours_trials, ctx.scrape_interval)
    if late:
        sentences.append(late)
    if flagger_to_patch.median is not None:
        floor = (ctx.threshold - 1) * ctx.interval
        sentences.append(
            f"The Flagger-style configuration of the same controller reads its checks only "
            f"every {ctx.interval} s and rolls back at the {ctx.threshold}th failed one in a "
            f"row, so it cannot react in less than {floor} s after its first failed check; "
            f"it took a median {flagger_to_patch.median:.1f} s."
        )
    if patch_to_zero.median is not None:
        sentences.append(
            f"The status showed the canary at 0 % a median {patch_to_zero.median:.2f} s after "
            "the patch over all trials: the KServe simulator writes status at once, where a "
            "real KServe waits for Knative to reprogram its routes."
        )
    return " ".join(sentences)


def shares_text(trials: Sequence[TrialResult]) -> str:
    """The canary's share when the trials turned bad: "10 % (37 trials), 25 % (3 trials)"."""
    counts: dict[int, int] = {}
    for t in trials:
        if t.complete and t.share_at_t0 is not None:
            counts[t.share_at_t0] = counts.get(t.share_at_t0, 0) + 1
    parts = [f"{share} % ({n} trial{'s' if n != 1 else ''})" for share, n in sorted(counts.items())]
    return ", ".join(parts) if parts else "–"


def behind_text(trials: Sequence[TrialResult], period: float) -> str:
    """A sentence on the trials whose rolling-back pass read several looks at once (the
    controller behind its looks), with the delays of those and of the others."""
    done = [t for t in trials if t.complete and t.looks_read is not None]
    late = [t for t in done if (t.looks_read or 0) > 1]
    on_time = [t for t in done if t.looks_read == 1]
    upper = spread(_values(late, lambda t: t.after_significance))
    lower = spread(_values(late, lambda t: t.after_last_look))
    timely = spread(_values(on_time, lambda t: t.after_significance))
    if not late or upper.median is None or lower.median is None:
        return ""
    compared = (
        f", against {timely.median:.1f} s in the {len(on_time)} where it read one"
        if timely.median is not None
        else ""
    )
    return (
        f"In {len(late)} of {len(done)} trials the pass that rolled back read more than one "
        f"look at once (the controller was behind its {period:g} s looks): the write came "
        f"{upper.median:.1f} s (median) after the scrape of the earliest of them, "
        f"{lower.median:.1f} s after that of the last{compared}."
    )


def readme_block(
    ctx: Context,
    rows: Sequence[Row],
    results: Sequence[TargetResult],
    explained: str,
    trials: Sequence[TrialResult],
) -> str:
    """The README's block: date, machine, command, load, the table, targets, meaning."""
    cpu = (
        f"; the controller used {ctx.controller_cpu_seconds:.0f} s of CPU in the "
        f"{_minutes(ctx.trials_seconds)} of trials "
        f"({ctx.controller_cpu_seconds / ctx.trials_seconds:.2f} of a core)"
        if ctx.controller_cpu_seconds is not None and ctx.trials_seconds > 0
        else ""
    )
    peak = f", at most {ctx.load_peak:.2f} during the run" if ctx.load_peak is not None else ""
    failed = sum(t.failed_scrapes or 0 for t in trials if t.complete)
    return "\n".join(
        [
            f"`{ctx.command}`, {ctx.date}, on {ctx.machine}; {_minutes(ctx.wall_seconds)} in "
            f"all. Load average (1, 5, 15 min) before: {ctx.load_before}; after: "
            f"{ctx.load_after}{peak} (the machine is shared){cpu}. {ctx.runs} trials per "
            f"configuration, at most {ctx.parallel} at a time in all, each with its own "
            "InferenceService, all under one controller (Knative mode, "
            f"{ctx.rate:g} req/s per InferenceService). Each canary turns from 1 % to 20 % "
            "errors at its own random instant; its share of the traffic then: "
            f"{shares_text(trials)} (a Flagger-style canary advances when a check passes "
            "before that instant). Prometheus scrapes every "
            f"{ctx.scrape_interval:g} s; the completed trials' canary targets missed {failed} "
            "scrapes. Method and every trial: "
            "`bench/results/reaction.md`.",
            "",
            summary_table(rows, ctx.scrape_interval),
            "",
            targets_table(results),
            "",
            explained,
        ]
    )


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def trials_table(trials: Sequence[TrialResult]) -> str:
    lines = [
        "| configuration | service | T0 after step shown s | canary % at T0 | "
        "T0 → first bad scrape s | to patch s | to 0 % s | significance → patch s | check | "
        "looks read | fast path | write tries | failed scrapes | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        offset = None if t.t0 is None or t.step_seen is None else t.t0 - t.step_seen
        lag = None if t.t0 is None or t.first_bad_scrape is None else t.first_bad_scrape - t.t0
        fast = "–" if t.fast_path is None else ("yes" if t.fast_path else "no")
        lines.append(
            f"| {t.config} | {t.service} | {_cell(offset, 1)} | {t.share_at_t0 or '–'} | "
            f"{_cell(lag)} | "
            f"{_cell(t.to_patch)} | {_cell(t.to_zero)} | {_cell(t.after_significance)} | "
            f"{t.failed_check or '–'} | {t.looks_read or '–'} | {fast} | "
            f"{t.write_attempts or '–'} | "
            f"{'–' if t.failed_scrapes is None else t.failed_scrapes} | "
            f"{t.problem or ''} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# watching the InferenceServices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One version of an InferenceService as the watch received it."""

    at: float
    resource_version: str
    spec_percent: int | None  # spec.predictor.canaryTrafficPercent as written (None: unset)
    latest: str  # latestCreatedRevision
    stable: str | None  # latestRolledoutRevision
    split: Mapping[str, int]  # status traffic per revision


def seen_of(obj: Mapping[str, Any], at: float) -> Seen:
    observed = observed_from(obj)
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    raw = predictor.get("canaryTrafficPercent")
    return Seen(
        at=at,
        resource_version=observed.resource_version,
        spec_percent=None if raw is None else int(raw),
        latest=observed.view.latest.name,
        stable=observed.view.stable.name if observed.view.stable else None,
        split=dict(observed.view.split),
    )


class ServiceWatch:
    """Watches every InferenceService of a namespace and keeps what it received, stamped
    with this process's wall clock on receipt."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self._seen: dict[str, list[Seen]] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="isvc-watch", daemon=True)

    def start(self) -> ServiceWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(15)

    def _record(self, obj: Mapping[str, Any]) -> None:
        at = time.time()
        name = str((obj.get("metadata") or {}).get("name"))
        with self._changed:
            self._seen.setdefault(name, []).append(seen_of(obj, at))
            self._changed.notify_all()

    def _run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    items, version = self._kube.list(INFERENCE_SERVICE, self._namespace)
                    for item in items:
                        self._record(item)
                for event in self._kube.watch(
                    INFERENCE_SERVICE, self._namespace, resource_version=version,
                    timeout_seconds=5,
                ):  # fmt: skip
                    version = event.resource_version or version
                    if event.type in ("ADDED", "MODIFIED"):
                        self._record(event.object)
                    if self._stopping.is_set():
                        break
            except Gone:
                version = None
            except KubeError as exc:
                log.warning("bench.watch_interrupted", error=str(exc))
                time.sleep(0.2)

    def last_before(self, name: str, instant: float) -> Seen | None:
        """The last version of ``name`` received before ``instant``."""
        with self._changed:
            earlier = [s for s in self._seen.get(name, []) if s.at < instant]
        return earlier[-1] if earlier else None

    def wait(
        self, name: str, test: Callable[[Seen], bool], *, after: float, deadline: float
    ) -> Seen | None:
        """The first version of ``name`` received after ``after`` that passes ``test``;
        None if none did by the wall-clock ``deadline``."""
        with self._changed:
            while True:
                for seen in self._seen.get(name, []):
                    if seen.at >= after and test(seen):
                        return seen
                left = deadline - time.time()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 1.0))


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the trials share: the test bed, the store, the watch, the book's lock."""

    testbed: Testbed
    store: AuditStore
    watch: ServiceWatch
    namespace: str
    database_url: str
    policy_dir: Path
    interval: int
    threshold: int
    rate: float
    seed: int
    book_lock: threading.Lock = field(default_factory=threading.Lock)
    _gate: threading.Lock = field(default_factory=threading.Lock)
    _next_start: float = 0.0

    def _spaced_start(self) -> None:
        with self._gate:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next_start = time.monotonic() + START_SPACING_SECONDS

    def _set_models(self, env: Env, models: Mapping[str, ModelBehaviour], rate: float) -> float:
        """Write behaviours and the rate into the book; the wall-clock time it was in force."""
        with self.book_lock:
            book = self.testbed.behaviour()
            for uri, behaviour in models.items():
                book = book.with_model(uri, behaviour)
            self.testbed.set_behaviour(book.with_rate(env.namespace, env.name, rate))
            return time.time()

    def trial(self, config: Configuration, index: int) -> TrialResult:
        name = f"{config.key[:7].rstrip('-')}-{index:02d}"
        try:
            return self._trial(config, name, index)
        except Exception as exc:  # one trial's failure is reported, the others go on
            log.exception("bench.trial_failed", service=name)
            return TrialResult(config.key, name, problem=f"{type(exc).__name__}: {exc}")

    def _trial(self, config: Configuration, name: str, index: int) -> TrialResult:
        rng = random.Random(f"{self.seed}/{config.key}/{index}")
        env = Env(self.testbed, "knative", self.namespace, self.database_url, self.policy_dir,
                  name=name)  # fmt: skip
        result = TrialResult(config.key, name)
        v1, v2 = env.uri("v1"), env.uri("v2")
        self._spaced_start()
        self._set_models(env, {v1: HEALTHY, v2: HEALTHY}, self.rate)
        try:
            env.create(v1, policy=config.policy)
            started = time.time()
            command = submit_command(
                self.store, namespace=self.namespace, name=name, command="start",
                actor="bench", reason="reaction benchmark", args={"storage_uri": v2},
            )  # fmt: skip
            if command.state != "accepted":
                return _problem(result, f"the start command was {command.state}: {command.result}")
            step = self.watch.wait(
                name,
                lambda s: (
                    s.stable is not None
                    and s.latest != s.stable
                    and s.split.get(s.latest) == FIRST_STEP
                ),
                after=started,
                deadline=started + 60,
            )
            if step is None:
                return _problem(result, "the first step never showed in status")
            canary = step.latest
            result = _with(result, canary_revision=canary, step_seen=step.at)
            offset = rng.uniform(MIN_OFFSET_SECONDS, MIN_OFFSET_SECONDS + self.interval)
            time.sleep(max(0.0, step.at + offset - time.time()))
            early = self.watch.wait(name, lambda s: s.spec_percent == 0, after=step.at,
                                    deadline=time.time())  # fmt: skip
            if early is not None:
                return _problem(result, "rolled back before the canary turned bad")
            t0 = self._set_models(env, {v2: BAD}, self.rate)
            before = self.watch.last_before(name, t0)
            share = before.split.get(canary) if before is not None else None
            result = _with(result, t0=t0, share_at_t0=share)
            budget = (self.threshold + 2) * self.interval + 60
            patch = self.watch.wait(name, lambda s: s.spec_percent == 0 and s.latest == canary,
                                    after=t0, deadline=t0 + budget)  # fmt: skip
            if patch is None:
                return _problem(result, f"no rollback within {budget} s of the bad instant")
            zero = self.watch.wait(
                name,
                lambda s: s.spec_percent == 0 and s.split.get(canary, 0) == 0,
                after=patch.at,
                deadline=patch.at + 120,
            )
            result = _with(result, patch_seen=patch.at, zero_seen=zero.at if zero else None)
            if zero is None:
                return _problem(result, "the status never showed the canary at 0 %")
            self._wait_ended(name, deadline=time.time() + 20)
            return result
        finally:
            with self.book_lock, suppress(Exception):
                env.stop()  # its traffic stops and the InferenceService is deleted

    def _wait_ended(self, name: str, *, deadline: float) -> None:
        """Until the controller has seen the rollback in status and ended the rollout, so
        that deleting the InferenceService does not end it differently."""
        while time.time() < deadline:
            rows = self.store.rollouts(namespace=self.namespace, name=name)
            if rows and RolloutDocument.from_row(rows[0]).state.terminal:
                return
            time.sleep(0.5)


def _with(result: TrialResult, **changes: Any) -> TrialResult:
    return TrialResult(**{**asdict(result), **changes})


def _problem(result: TrialResult, problem: str) -> TrialResult:
    return _with(result, problem=problem)


# --------------------------------------------------------------------------------------------
# reading back what happened: Prometheus's scrape times, the audit trail
# --------------------------------------------------------------------------------------------


def scrapes(
    prometheus: PrometheusServer, namespace: str, revision: str, start: float, end: float
) -> list[tuple[float, bool]]:
    """When Prometheus scraped ``revision``'s target between ``start`` and ``end``, and
    whether the scrape succeeded: the samples of its ``up`` series (time, value 1 or 0)."""
    span = max(1, math.ceil(end - start) + 1)
    expr = f'up{{namespace="{namespace}",revision="{revision}"}}[{span}s]'
    found: list[tuple[float, bool]] = []
    for series in prometheus.query(expr, at=end):
        found.extend((float(ts), float(value) == 1) for ts, value in series.get("values", []))
    return sorted(t for t in found if t[0] >= start)


def _records(store: AuditStore, rollout_id: str) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    after = 0
    while True:
        page = store.rollout_records(rollout_id, after_seq=after, limit=100)
        records.extend(page.records)
        if page.next_after_seq is None:
            return records
        after = page.next_after_seq


def _stamp(value: datetime) -> float:
    return value.astimezone(UTC).timestamp()


def complete_from_records(
    result: TrialResult,
    store: AuditStore,
    prometheus: PrometheusServer,
    namespace: str,
    look_period: float,
) -> TrialResult:
    """Add what the audit trail and Prometheus say about a trial that saw its bad instant."""
    rows = store.rollouts(namespace=namespace, name=result.service)
    if not rows:
        return result
    doc = RolloutDocument.from_row(rows[0])
    result = _with(result, phase=doc.state.phase.value)
    records = _records(store, doc.state.rollout_id)
    for record in records:
        entry = record.entry
        purpose = dict(entry.evidence).get("purpose")
        if entry.action == "traffic.intent" and purpose == "rollback" and result.decided is None:
            result = _with(result, decided=_stamp(entry.at))
        if (
            entry.action == "traffic.applied"
            and purpose == "rollback"
            and result.write_sent is None
        ):
            attempts = dict(entry.evidence).get("attempts")
            result = _with(
                result,
                write_sent=_stamp(entry.at),
                write_attempts=int(attempts) if isinstance(attempts, int) else None,
            )
    failed = [r.entry for r in records if r.entry.action == "analysis.evaluated"
              and dict(r.entry.evidence).get("verdict") == "Failed"]  # fmt: skip
    last_look: float | None = None
    if failed:
        decisive = failed[0]
        gating = [m for m in decisive.measurements if m.verdict == "Failed" and not m.dry_run]
        measurement = gating[0] if gating else None
        detail = dict(measurement.detail) if measurement is not None else {}
        looks_read = detail.get("looks_read")
        look_at = detail.get("look_at")
        result = _with(
            result,
            failed_check=measurement.check if measurement is not None else None,
            fast_path=bool(dict(decisive.evidence).get("fast_path")),
            looks_read=int(looks_read) if isinstance(looks_read, int) else None,
        )
        if isinstance(look_at, str):
            last_look = _stamp(datetime.fromisoformat(look_at))
    if result.t0 is None or result.canary_revision is None:
        return result
    end = result.zero_seen or result.patch_seen or time.time()
    start = result.step_seen or result.t0 - 5
    found = scrapes(prometheus, namespace, result.canary_revision, start, end)
    times = [t for t, ok in found if ok]  # a failed scrape brought no data
    result = _with(
        result,
        first_bad_scrape=first_after(result.t0, times),
        failed_scrapes=sum(1 for _, ok in found if not ok),
    )
    if last_look is not None:
        look = significance_look(
            last_look, result.looks_read or 1, look_period, not_before=result.first_bad_scrape
        )
        result = _with(
            result,
            significant_look=look,
            significant_scrape=last_at_or_before(look, times),
            last_look=last_look,
            last_look_scrape=last_at_or_before(last_look, times),
        )
    return result


# --------------------------------------------------------------------------------------------
# load and CPU
# --------------------------------------------------------------------------------------------


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class LoadSampler:
    """The 1-minute load average every 5 s while the trials run; its peak."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        while not self._stopping.wait(5):
            self.peak = max(self.peak, os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(10)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    runs: int
    parallel: int
    interval: int
    threshold: int
    rate: float
    seed: int
    quick: bool
    out: Path | None
    work_dir: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reaction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=None, help="trials per configuration (20)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="trials at once, both configurations together (8)")  # fmt: skip
    parser.add_argument("--interval", type=int, default=None,
                        help="analysis interval and step hold in seconds (30)")  # fmt: skip
    parser.add_argument("--threshold", type=int, default=5,
                        help="Flagger-style: failed checks in a row to roll back (5)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests per second per InferenceService (200)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke check: 2 runs per configuration at a 10 s interval; "
                        "writes nothing unless --out is given")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="write the results under this directory instead of "
                        "bench/results (and leave the README alone)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the test bed's files and the controller's log here")  # fmt: skip
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (2 if args.quick else 20)
    parallel = args.parallel if args.parallel is not None else (4 if args.quick else 8)
    interval = args.interval if args.interval is not None else (10 if args.quick else 30)
    if runs < 1 or parallel < 1 or interval < 1 or args.threshold < 1 or args.rate <= 0:
        parser.error("--runs, --parallel, --interval, --threshold and --rate must be positive")
    return Options(runs, parallel, interval, args.threshold, args.rate, args.seed, args.quick,
                   args.out, args.work_dir)  # fmt: skip


def _command(options: Options, argv: Sequence[str]) -> str:
    if not options.quick and options.out is None and list(argv) == ["--runs", "20"]:
        return "make bench-reaction"
    return "python -m bench.reaction " + " ".join(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(arguments)
    owned = options.work_dir is None
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="ksc-bench-reaction-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _main(options, arguments, work)
    except ControllerExited as exc:
        _say(f"error: {exc}")
        log_file = work / "logs" / "bench-reaction.log"
        if log_file.exists():  # its end, before a work directory of our own is removed
            _say("".join(log_file.read_text(errors="replace").splitlines(True)[-30:]))
        return 2
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _say(text: str) -> None:
    print(text, flush=True)


def _main(options: Options, argv: Sequence[str], work: Path) -> int:
    load_before = _load()
    began = time.monotonic()
    ours, flagger = configurations(options.interval, options.threshold)
    policy_dir = work / "policies"
    policy_dir.mkdir(exist_ok=True)
    for config in (ours, flagger):
        (policy_dir / f"{config.policy}.yaml").write_text(config.text, encoding="utf-8")
    _say("starting the test bed and PostgreSQL")
    testbed = Testbed(work / "testbed")
    postgres = PostgresServer()
    cpu: float | None = None
    with LoadSampler() as sampler, ExitStack() as stack:
        testbed.up()
        stack.callback(testbed.down)
        postgres.start()
        stack.callback(postgres.stop)
        assert testbed.prometheus is not None
        prometheus = testbed.prometheus
        scrape = parse_duration(prometheus.config()["global"]["scrape_interval"]).total_seconds()
        database = provision_audit_database(postgres, "ksc_bench_reaction")
        namespace = testbed.namespace("bench-reaction")
        controller = Env(testbed, "knative", namespace, database.app_url, policy_dir,
                         name="controller")  # fmt: skip
        replica = controller.spawn(
            "bench-reaction", work / "logs",
            environment={"KSC_LOOK_PERIOD_SECONDS": f"{scrape:g}",
                         "KSC_LOOK_LAG_SECONDS": f"{LOOK_LAG_SECONDS:g}"},
        )  # fmt: skip
        stack.callback(_stop, replica.process)
        watch_kube = KubeClient.from_kubeconfig(testbed.kubeconfig_path)
        stack.callback(watch_kube.close)
        store = stack.enter_context(AuditStore.from_url(database.app_url))
        watch = ServiceWatch(watch_kube, namespace).start()
        stack.callback(watch.stop)
        run = Run(testbed, store, watch, namespace, database.app_url, policy_dir,
                  options.interval, options.threshold, options.rate, options.seed)  # fmt: skip
        _say(
            f"{options.runs} trials per configuration, at most {options.parallel} at a time; "
            f"interval {options.interval} s, scrape interval {scrape:g} s"
        )
        cpu_start = _cpu_seconds(replica.process.pid)
        trials_began = time.monotonic()
        trials = _run_trials(run, (ours, flagger), options, replica.process.poll,
                             work / "logs" / "bench-reaction.log")  # fmt: skip
        trials_seconds = time.monotonic() - trials_began
        cpu_end = _cpu_seconds(replica.process.pid)
        if cpu_start is not None and cpu_end is not None:
            cpu = cpu_end - cpu_start
        trials = [
            complete_from_records(t, store, prometheus, namespace, scrape)
            if t.t0 is not None
            else t
            for t in trials
        ]
    ctx = Context(
        date=datetime.now(UTC).date().isoformat(),
        machine=machine().describe(),
        command=_command(options, argv),
        runs=options.runs,
        parallel=options.parallel,
        interval=options.interval,
        threshold=options.threshold,
        rate=options.rate,
        scrape_interval=scrape,
        look_lag=LOOK_LAG_SECONDS,
        load_before=load_before,
        load_after=_load(),
        load_peak=sampler.peak or None,
        wall_seconds=time.monotonic() - began,
        trials_seconds=trials_seconds,
        controller_cpu_seconds=cpu,
    )
    markdown, data, block = report(ctx, (ours, flagger), trials)
    _say(block)
    if options.out is not None:
        write_results("reaction", markdown, data, results=options.out)
    elif not options.quick:
        write_results("reaction", markdown, data, readme_block=block)
    incomplete = [t for t in trials if not t.complete]
    for t in incomplete:
        _say(f"trial {t.service} ({t.config}) did not complete: {t.problem or 'no data'}")
    return 1 if incomplete else 0


class ControllerExited(RuntimeError):
    """The controller under test stopped during the trials: no trial after that measures
    anything, so the run ends at once instead of each waiting out its deadlines."""


def _run_trials(
    run: Run,
    configs: Sequence[Configuration],
    options: Options,
    exit_code: Callable[[], int | None] = lambda: None,
    controller_log: Path | None = None,
) -> list[TrialResult]:
    """Every configuration's trials side by side: at most ``parallel`` at a time in all,
    started in turn (one of each configuration, then the next of each). ``exit_code`` is
    the controller's (None while it runs): once it has one, the trials not begun are
    cancelled and :class:`ControllerExited` is raised."""
    pool = ThreadPoolExecutor(options.parallel, thread_name_prefix="trial")
    futures = [
        pool.submit(run.trial, config, index)
        for index in range(1, options.runs + 1)
        for config in configs
    ]
    results: list[TrialResult] = []
    for future in futures:
        while not future.done():
            wait([future], timeout=CONTROLLER_CHECK_SECONDS, return_when=FIRST_COMPLETED)
            code = exit_code()
            if code is not None:
                # Not waiting for the trials under way: they end as the test bed stops.
                pool.shutdown(wait=False, cancel_futures=True)
                where = f"; its log: {controller_log}" if controller_log else ""
                raise ControllerExited(
                    f"the controller exited with code {code} during the trials "
                    f"({len(results)} of {len(futures)} reported){where}"
                )
        result = future.result()
        results.append(result)
        _say(f"  {result.config} {result.service}: {_brief(result)}")
    pool.shutdown()
    return results


def _brief(result: TrialResult) -> str:
    if result.problem is not None:
        return result.problem
    if result.t0 is None or result.patch_seen is None:
        return "no result"
    return (
        f"patch {result.patch_seen - result.t0:.1f} s, 0 % "
        f"{_cell(None if result.zero_seen is None else result.zero_seen - result.t0, 1)} s "
        "after the bad instant"
    )


def _stop(process: Any) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except Exception:
            process.kill()
            process.wait(10)


def report(
    ctx: Context, configs: Sequence[Configuration], trials: Sequence[TrialResult]
) -> tuple[str, dict[str, Any], str]:
    """The results' Markdown, their JSON data and the README block."""
    by_config = {c.key: [t for t in trials if t.config == c.key] for c in configs}
    rows = []
    for config in configs:
        mine = by_config[config.key]
        rows.append(
            Row(
                config.label,
                sum(1 for t in mine if t.complete),
                len(mine),
                spread(_values(mine, lambda t: t.to_patch)),
                spread(_values(mine, lambda t: t.to_zero)),
            )
        )
    ours_trials = by_config.get("ours", [])
    flagger_trials = by_config.get("flagger-style", [])
    ours_after = spread(_values(ours_trials, lambda t: t.after_significance))
    ours_patch = spread(_values(ours_trials, lambda t: t.to_patch))
    flagger_patch = spread(_values(flagger_trials, lambda t: t.to_patch))
    accumulating = spread(
        _values(
            ours_trials,
            lambda t: (
                None
                if t.significant_scrape is None or t.first_bad_scrape is None
                else t.significant_scrape - t.first_bad_scrape
            ),
        )
    )
    patch_to_zero = spread(
        _values(
            list(trials),
            lambda t: (
                None if t.zero_seen is None or t.patch_seen is None else t.zero_seen - t.patch_seen
            ),
        )
    )
    ours_last = spread(_values(ours_trials, lambda t: t.after_last_look))
    results = targets(ours_after, ours_patch, flagger_patch, ctx.scrape_interval, ours_last)
    explained = explanation(ctx, ours_patch, accumulating, ours_after, flagger_patch,
                            patch_to_zero, ours_trials)  # fmt: skip
    block = readme_block(ctx, rows, results, explained, trials)
    stages = _stages(by_config, configs)
    markdown = "\n".join(
        [
            "# Reaction-time benchmark",
            "",
            block,
            "",
            "## Where the time goes (medians, seconds)",
            "",
            stages,
            "",
            "## Method",
            "",
            (__doc__ or "").split("\n\n", 1)[1].strip(),
            "",
            "## The policies",
            "",
            *(f"`{c.policy}`:\n\n```yaml\n{c.text}```\n" for c in configs),
            "## Every trial",
            "",
            trials_table(trials),
        ]
    )
    data: dict[str, Any] = {
        "context": asdict(ctx),
        "configurations": [asdict(c) for c in configs],
        "summary": {
            row.label: {
                "completed": row.completed,
                "attempted": row.attempted,
                "to_patch": asdict(row.to_patch),
                "to_zero": asdict(row.to_zero),
            }
            for row in rows
        },
        "ours_after_significance": asdict(ours_after),
        "ours_after_last_look": asdict(ours_last),
        "ours_evidence_accumulating": asdict(accumulating),
        "patch_to_zero": asdict(patch_to_zero),
        "targets": [asdict(r) for r in results],
        "trials": [asdict(t) for t in trials],
    }
    return markdown, data, block


def _stages(
    by_config: Mapping[str, Sequence[TrialResult]], configs: Sequence[Configuration]
) -> str:
    """Median time of each stage: first bad scrape → significant scrape (ours) → its look's
    grid time → decision (the rollback's intent) → write sent → patch seen → 0 % seen; ours
    also split by how many looks the pass that rolled back read."""

    def median(values: Iterator[float | None]) -> str:
        kept = [v for v in values if v is not None]
        return "–" if not kept else f"{statistics.median(kept):.2f}"

    def gap(start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else end - start

    groups: list[tuple[str, list[TrialResult]]] = []
    for config in configs:
        done = [t for t in by_config[config.key] if t.complete]
        groups.append((config.label, done))
        if config.key == "ours":
            groups.append(("… its pass read one look", [t for t in done if t.looks_read == 1]))
            groups.append(("… its pass read several", [t for t in done if (t.looks_read or 0) > 1]))
    lines = [
        "| trials | n | first bad scrape → evidence significant (its scrape; the earliest look "
        "the pass read) | → that look's grid time | → rollback decided (its intent record; "
        "Flagger-style: from the first bad scrape) | → write sent (`traffic.applied`) | → "
        "patch seen by the watch | → 0 % in status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, done in groups:
        significant = median(gap(t.first_bad_scrape, t.significant_scrape) for t in done)
        look = median(gap(t.significant_scrape, t.significant_look) for t in done)
        decided = median(
            gap(t.significant_look if t.significant_look is not None
                else t.first_bad_scrape, t.decided)
            for t in done
        )  # fmt: skip
        lines.append(
            f"| {label} | {len(done)} | {significant} | {look} | {decided} | "
            f"{median(gap(t.decided, t.write_sent) for t in done)} | "
            f"{median(gap(t.write_sent, t.patch_seen) for t in done)} | "
            f"{median(gap(t.patch_seen, t.zero_seen) for t in done)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
