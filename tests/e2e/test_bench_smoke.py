"""The scale benchmark's harness (``make bench-scale``) at a smoke size: 10 rollouts, short
intervals, windows and deadlines, on the session's test bed (its own namespace, database
and controller; per-request traffic and a 1 s scrape, where the benchmark proper starts a
test bed in aggregate mode). It must complete and produce every figure; no timing is
judged here (the figures are the benchmark's to report; a restart not done by the short
deadline is reported as how many rollouts were evaluated again), and nothing is written
into the repository (results and README block go to a temporary directory)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from bench import report
from bench.scale import Options, render, run
from testbed.postgres import PostgresServer
from testbed.testbed import Testbed

pytestmark = pytest.mark.e2e

SMOKE = Options(
    sizes=(10,),
    window=8.0,
    unbatched_window=6.0,
    interval=2.0,
    look_period=1.0,
    scrape_interval=1.0,
    tick=0.5,
    lease_seconds=5,
    create_deadline=60.0,
    progress_deadline=60.0,
    restart_deadline=10.0,
    unbatched_deadline=5.0,
)


def test_the_scale_benchmark_runs_and_produces_every_figure(
    testbed: Testbed, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    lines: list[str] = []
    options = replace(SMOKE, work_dir=tmp_path)  # the logs stay there if it fails
    (result,) = run(options, log=lines.append, postgres=postgres_server, testbed=testbed)
    assert result.missing() == [], "\n".join([*result.notes, *lines])
    assert result.in_progress == 10
    assert result.ticks
    assert result.apiserver_per_interval  # the controller's own requests were logged
    assert result.testbed_cpu_cores is not None
    assert {"simulators", "prometheus", "kube-apiserver", "postgresql"} <= set(
        result.testbed_cpu_cores
    )

    markdown, block = render([result], options, elapsed=60.0, load=("before", "after"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:scale -->\nNot measured yet.\n<!-- /bench:scale -->\n")
    written = report.write_results(
        "scale",
        markdown,
        {"sizes": [asdict(result)]},
        readme_block=block,
        readme=readme,
        results=tmp_path / "results",
    )
    text = readme.read_text()
    for figure in ("tick lag p50 / p99", "controller CPU", "peak RSS", "per rollout (batching off)",
                   "apiserver requests per interval", "audit records per second",
                   "restart: new leader", "test bed CPU"):  # fmt: skip
        assert figure in text, figure
    assert "Not measured yet" not in text
    assert written.read_text().startswith("# Many rollouts on one replica")
    assert json.loads((tmp_path / "results" / "scale.json").read_text())["sizes"][0]["n"] == 10
