"""The scale benchmark's own parts (bench/scale.py): reading metrics text, the tick-lag
quantiles from histogram buckets, the profile summary, and the met/missed verdicts. No
timing is asserted: the figures are the benchmark's to report."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale import (
    MALLOC_ARENA_MAX,
    Options,
    SizeResult,
    _mean_query_seconds,
    cpu_seconds,
    histogram_quantile,
    render,
    samples,
    summarise_profile,
    total,
    tree_cpu_seconds,
    verdicts,
    warning_events,
)

TEXT = """\
# HELP prometheus_http_requests_total Counter of HTTP requests.
# TYPE prometheus_http_requests_total counter
prometheus_http_requests_total{code="200",handler="/api/v1/query"} 120
prometheus_http_requests_total{code="400",handler="/api/v1/query"} 3
prometheus_http_requests_total{code="200",handler="/metrics"} 9
prometheus_http_requests_total_created{code="200",handler="/metrics"} 1.7e+09
kserve_canary_tick_lag_seconds_bucket{le="0.5"} 4.0
kserve_canary_tick_lag_seconds_count 4.0
"""


def test_samples_and_totals_read_the_text_format() -> None:
    assert total(TEXT, "prometheus_http_requests_total", handler="/api/v1/query") == 123
    assert total(TEXT, "prometheus_http_requests_total") == 132  # not the _created series
    assert list(samples(TEXT, "kserve_canary_tick_lag_seconds_bucket")) == [({"le": "0.5"}, 4.0)]
    assert total(TEXT, "no_such_metric") == 0


def test_prometheus_time_per_query_is_the_windows_sum_over_its_count() -> None:
    def text(seconds: float, count: float) -> str:
        return (
            "prometheus_http_request_duration_seconds_sum"
            f'{{handler="/api/v1/query"}} {seconds}\n'
            f'prometheus_http_request_duration_seconds_count{{handler="/api/v1/query"}} {count}\n'
            'prometheus_http_request_duration_seconds_sum{handler="/metrics"} 99\n'
            'prometheus_http_request_duration_seconds_count{handler="/metrics"} 1\n'
        )

    assert _mean_query_seconds(text(10.0, 100), text(40.0, 110)) == pytest.approx(3.0)
    assert _mean_query_seconds(text(10.0, 100), text(10.0, 100)) is None  # no query


def test_the_controllers_warnings_are_counted_by_event_from_its_json_log() -> None:
    lines = [
        '{"event": "rollout.retry", "level": "warning", "item": ["ns", "a"]}',
        '{"event": "rollout.retry", "level": "warning", "item": ["ns", "b"]}',
        '{"event": "rollout.step_advanced", "level": "info"}',
        '{"event": "analysis.crashed", "level": "error"}',
        "Traceback (most recent call last):",  # a traceback's continuation: skipped
        '["not", "an", "object"]',
    ]
    assert warning_events("\n".join(lines).encode()) == {"rollout.retry": 2, "analysis.crashed": 1}
    assert warning_events(b"") == {}


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 50.0), (1.0, 100.0), (math.inf, 100.0)], 0.1),
        (0.75, [(0.1, 50.0), (1.0, 100.0), (math.inf, 100.0)], 0.55),
        (0.99, [(0.01, 99.0), (0.05, 100.0), (math.inf, 100.0)], 0.01),
        (0.99, [(1.0, 10.0), (60.0, 10.0), (math.inf, 100.0)], 60.0),  # above every bound
        (0.5, [(1.0, 0.0), (math.inf, 0.0)], None),  # nothing observed
    ],
)
def test_histogram_quantile_interpolates_as_prometheus_does(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    found = histogram_quantile(q, buckets)
    if expected is None:
        assert found is None
    else:
        assert found == pytest.approx(expected)


def test_the_profile_summary_counts_each_frame_once_per_sample() -> None:
    raw = (
        "Thread._bootstrap (threading.py:1);work (a.py:1);parse (b.py:2) 6\n"
        "Thread._bootstrap (threading.py:1);work (a.py:1);work (a.py:1) 2\n"
        "Thread._bootstrap (threading.py:1);wait (c.py:3) 2\n"
    )
    on_stack, on_top = summarise_profile(raw)
    assert on_stack[0] == ("work (a.py:1)", 0.8)  # recursion counted once
    assert ("parse (b.py:2)", 0.6) in on_stack
    assert all(not frame.startswith("Thread._bootstrap") for frame, _ in on_stack)
    assert on_top[0] == ("parse (b.py:2)", 0.6)


def _result(n: int, **figures: object) -> SizeResult:
    result = SizeResult(n)
    for name, value in figures.items():
        setattr(result, name, value)
    return result


def test_the_verdicts_judge_the_largest_size_and_the_worst_restart() -> None:
    small = _result(10, tick_lag_p99=0.1, controller_cpu_cores=0.1, controller_rss_peak_mib=150,
                    restart_all_evaluated_seconds=12.0, prometheus_queries_per_interval=10,
                    unbatched_queries_per_interval=100,
                    apiserver_by_resource={"get inferenceservices": 20.0,
                                           "create events": 2.0})  # fmt: skip
    large = _result(1000, tick_lag_p99=4.0, controller_cpu_cores=0.9, controller_rss_peak_mib=480,
                    restart_all_evaluated_seconds=None, prometheus_queries_per_interval=12,
                    unbatched_queries_per_interval=9000,
                    apiserver_by_resource={"get inferenceservices": 2000.0,
                                           "patch inferenceservices": 50.0})  # fmt: skip
    judged = {v.target.split(" ")[0]: v for v in verdicts([small, large])}
    assert judged["tick"].ok is False
    assert judged["controller"].ok is True
    assert judged["peak"].ok is False  # 480 MiB is 503 MB
    assert judged["after"].ok is False  # not every rollout evaluated again at 1,000
    assert judged["apiserver"].ok is False  # 22 → 2,000 (the step writes left out)
    assert "×90.9" in judged["apiserver"].figure
    assert judged["Prometheus"].ok is True
    assert "×750" in judged["Prometheus"].figure


def test_render_writes_every_row_even_without_figures() -> None:
    markdown, block = render([_result(10), _result(100)], Options(sizes=(10, 100)), elapsed=60.0,
                             load=("load average 1", "load average 2"))  # fmt: skip
    assert "| tick lag p50 / p99 | – / – | – / – |" in block
    assert "| reconciles per interval (per rollout) | – (–) | – (–) |" in block
    assert "| controller warnings in the window, by event | – | – |" in block
    assert "load average 1" in block
    assert markdown.startswith("# Many rollouts on one replica")
    assert "## How each figure is measured" in markdown
    assert "latency histograms of 15 buckets: the `coarse` layout" in block


def test_the_bucket_layout_is_in_the_command_and_the_setup() -> None:
    """A run with the test suite's fine bounds says so, and how to reproduce it."""
    options = Options(sizes=(10,), latency_buckets="fine")
    assert options.command() == "python -m bench.scale --sizes 10 --latency-buckets fine"
    assert Options(sizes=(10,)).command() == "python -m bench.scale --sizes 10"
    _, block = render([_result(10)], options, elapsed=60.0, load=("1", "2"))
    assert "latency histograms of 98 buckets: the `fine` layout" in block


@pytest.mark.parametrize(
    ("small_requests", "large_requests", "ok", "figures"),
    [
        # requests that grow with the checks: 4 more for each more check, scaled up to
        # 2.5 checks per rollout: 150 + 4 x (2,500 - 50)
        (50.0, 150.0, False, ("4.0000 more requests per more check: 9,950.0", "(×199.0)")),
        # a flat background (Lease renewals, the watch) is not scaled up with the checks
        (5.0, 5.04, True, ("0.0016 more requests per more check: 9.0", "(×1.8)")),
        (5.0, 5.0, True, ("0.0000 more requests per more check: 5.0", "(×1.0)")),
    ],
    ids=["growing", "nearly-flat", "flat"],
)
def test_a_controller_that_falls_behind_is_judged_at_the_smaller_sizes_check_rate(
    small_requests: float, large_requests: float, ok: bool, figures: tuple[str, str]
) -> None:
    common = {"window_seconds": 120.0, "interval_seconds": 10.0}
    # 25 checks an interval at 10 (2.5 per rollout); 50 at 1,000 (0.05 per rollout)
    small = _result(10, ticks=300, in_progress=10,
                    apiserver_by_resource={"get leases": small_requests}, **common)  # fmt: skip
    large = _result(1000, ticks=600, in_progress=1000,
                    apiserver_by_resource={"get leases": large_requests}, **common)  # fmt: skip
    (judged,) = [v for v in verdicts([small, large]) if v.target.startswith("apiserver")]
    assert judged.ok is ok
    assert "0.05 times per interval against 2.50" in judged.figure
    for figure in figures:
        assert figure in judged.figure


def test_the_controller_is_measured_with_the_image_s_allocator_setting() -> None:
    """What the benchmark measures is what the image runs: the same malloc arenas."""
    dockerfile = Path(__file__).parents[2] / "deploy" / "Dockerfile"
    (value,) = re.findall(r"MALLOC_ARENA_MAX=(\d+)", dockerfile.read_text(encoding="utf-8"))
    assert value == MALLOC_ARENA_MAX


def test_a_process_trees_cpu_keeps_the_time_of_children_that_ended() -> None:
    """PostgreSQL's backends end during a window: their CPU stays in the tree's count
    (it had gone with them, and the window's difference came out below zero)."""
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    with subprocess.Popen(
        [sys.executable, "-c",
         f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}]); "
         "print('done', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as parent:  # fmt: skip
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline().strip() == "done"  # its child burned 0.3 s, ended
            own = cpu_seconds(parent.pid)
            total = tree_cpu_seconds(parent.pid)
            assert own is not None
            assert total is not None
            assert total - own >= 0.25
        finally:
            parent.kill()
