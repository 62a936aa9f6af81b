"""Many rollouts on one controller replica (issue #16 §2).

    make bench-scale     # .venv/bin/python -m bench.scale --sizes 10,100,1000

For each size N, on a fresh test bed and a private PostgreSQL: N opted-in Knative
InferenceServices (the KServe simulator), N rollouts started at once by `canary rollout
start`'s command and held at their first step (a long ``stepHold``, healthy canaries), and
ONE controller process, started as production runs it (``canary run``, the e2e harness's
:meth:`~tests.e2e.harness.Env.spawn`). Once every rollout is in progress and has been
evaluated, a window is measured (:data:`MEASURES`); then a restart (SIGKILL, and a new
controller under another identity, as a new pod), and last the same controller with
``KSC_BATCH_LOOKS=false`` (each rollout its own look group) for the Prometheus queries
per interval without grouping.

Results: ``bench/results/scale.md`` and ``.json`` and the README's ``bench:scale`` block
(:func:`bench.report.write_results`). Targets are shown as met or missed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench import report
from canary.audit import AuditStore
from canary.k8s.client import INFERENCE_SERVICE, KubeError
from canary.ops import submit_command
from testbed.postgres import PostgresServer, RoleDatabase, provision_audit_database
from testbed.testbed import AUDITED_USER, Scale, Testbed
from testbed.traffic import LATENCY_LAYOUTS, LatencyLayout
from tests.e2e.harness import Env, Replica

__all__ = ["Options", "SizeResult", "main", "measure_size", "run"]

MEASURES = """\
- **tick lag p50 / p99**: the controller's `kserve_canary_tick_lag_seconds` histogram on its
  /metrics (how late a scheduled rollout check ran after its due time, queueing included),
  its buckets' increase over the window, interpolated within a bucket as
  `histogram_quantile` does (the buckets: 10, 50, 100, 250, 500 ms, 1, 2.5, 5, 10, 30, 60 s);
- **controller CPU**: utime + stime of its process (/proc/<pid>/stat) over the window, in
  cores; **peak RSS**: VmHWM (/proc/<pid>/status) at the window's end;
- **Prometheus queries per analysis interval**: the increase of Prometheus' own
  `prometheus_http_requests_total{handler="/api/v1/query"}` (every instant query; the
  benchmark sends none during a window) over the window, divided by the window in
  analysis intervals; `prometheus_engine_query_duration_seconds_count{slice="inner_eval"}`
  (the engine's evaluations, no rules are configured) is shown beside it in the details;
- **apiserver requests per interval, by verb**: the controller authenticates with a client
  certificate of its own user, and the apiserver writes that user's requests (and only
  those) to its audit log, one event per request when it completes (a watch when it
  ends); `apiserver_request_total` has no user or user-agent label, so its increase for
  `inferenceservices` (every client's, the KServe simulator's too) is in the details;
- **audit records per second**: the audit chain's last `seq` over the window; and the
  `analysis.evaluated` records per second;
- **the controller's own counts**: the increase of `kserve_canary_reconciles_total` and
  `kserve_canary_analysis_deadlines_total` (analyses given up at their deadline) per
  interval, and `kserve_canary_analyses_waiting` (asked for, not started) at the window's
  end; **the looks' queries** by kind, the increase of `kserve_canary_look_queries_total`
  per interval: rounds at a look group's newest grid times, rounds at older ones (for
  rollouts left behind there), and the restart checks that guard a look joined over
  several periods; **Prometheus' time per query**: the increase of
  `prometheus_http_request_duration_seconds` sum over count for `/api/v1/query`; the
  controller's **warnings**: the warning and error events its JSON log wrote in the window,
  by event name;
- **restart**: SIGKILL, a new controller started at once under another identity; the time
  until it holds the Lease, and until every rollout that was in progress has a new
  `analysis.evaluated` record;
- **the test bed's CPU** over the window (/proc: simulators, Prometheus, kube-apiserver,
  etcd, PostgreSQL with its backends, the shadow collector, this benchmark) and the whole
  machine's busy time (/proc/stat), so what the test bed and other work took is known.
"""

CONTROLLER_USER = AUDITED_USER  # the user whose requests the apiserver's audit log keeps
PROFILE = "knative-otel"
SECTION = "Many rollouts on one replica"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

POLICY = """\
name: scale
steps: [10, 50, 100]
stepHold: 2h
maxStepDuration: 6h
analysisInterval: {interval}
revisionReadyTimeout: 30m
trafficTimeout: 30m
falseRollbackRate: 0.001
checks:
  - name: error-rate
    builtin: error-rate
    relativeTolerance: 1.0
    minSamples: 200
  - name: latency-p99
    builtin: latency-p99
    relativeTolerance: 1.0
    minSamples: 200
"""

# Imported by the controller's interpreter (a directory of it first on PYTHONPATH) when
# --tracemalloc is given: traces allocations, and on SIGUSR2 writes the largest by line.
_TRACEMALLOC_HOOK = """\
import os, signal, tracemalloc

_out = os.environ.get("KSC_BENCH_TRACEMALLOC")
if _out:
    tracemalloc.start(1)

    def _dump(signum, frame):
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")
        with open(_out + ".tmp", "w") as out:
            peak = tracemalloc.get_traced_memory()[1]
            out.write(f"total {sum(s.size for s in stats)} peak {peak}\\n")
            for stat in stats[:40]:
                where = stat.traceback[0]
                out.write(f"{stat.size} {stat.count} {where.filename}:{where.lineno}\\n")
        os.replace(_out + ".tmp", _out)

    signal.signal(signal.SIGUSR2, _dump)
"""

# targets of issue #16 §2, shown as met or missed
TARGET_TICK_LAG_P99 = 1.0  # seconds
# The controller's environment as the image (deploy/Dockerfile) sets it.
MALLOC_ARENA_MAX = "2"
TARGET_CPU = 1.0  # cores, at the largest size
TARGET_RSS_MIB = 500.0  # at the largest size
TARGET_RESTART = 30.0  # seconds until every rollout is evaluated again
TARGET_QUERY_RATIO = 10.0  # per-rollout queries / grouped queries, at the largest size
TARGET_APISERVER_GROWTH = 2.0  # requests per interval (but step writes), largest / smallest


@dataclass(frozen=True)
class Options:
    """What the benchmark runs; the defaults are ``make bench-scale``'s."""

    sizes: tuple[int, ...] = (10, 100, 1000)
    window: float = 120.0  # seconds measured once every rollout is in progress
    unbatched_window: float = 60.0
    interval: float = 10.0  # the policy's analysisInterval
    look_period: float = 5.0  # look_period_seconds (the production default)
    scrape_interval: float = 5.0
    rate: float = 100.0  # requests per second per InferenceService
    tick: float = 1.0  # the traffic simulator's tick
    # the latency histograms' bounds (testbed.traffic.LATENCY_LAYOUTS): "coarse" (15
    # buckets, what real exporters send) or "fine" (98, the test suite's, for accurate
    # quantiles: six times the bucket series for Prometheus to hold and the looks to read)
    latency_buckets: LatencyLayout = "coarse"
    lease_seconds: int = 15  # the production default
    create_deadline: float = 900.0
    progress_deadline: float = 1200.0
    restart_deadline: float = 300.0
    unbatched_deadline: float = 300.0  # for every rollout's first look without batching
    work_dir: Path | None = None
    py_spy: Path | None = None  # with it, the controller's CPU is sampled after the window
    profile_seconds: float = 30.0
    # the first controller runs under tracemalloc and reports its largest allocations after
    # the window: a profiling run (tracemalloc slows every allocation; its figures are not
    # the benchmark's)
    tracemalloc: bool = False

    @property
    def look_lag(self) -> float:
        """A scrape interval plus ingestion, as the setting's documentation asks."""
        return self.scrape_interval + 2.0

    @property
    def analysis_window(self) -> int:
        return max(60, math.ceil(4 * self.scrape_interval))

    def command(self) -> str:
        parts = ["python -m bench.scale", f"--sizes {','.join(map(str, self.sizes))}"]
        defaults = Options()
        for name in NUMBER_OPTIONS:
            if getattr(self, name) != getattr(defaults, name):
                parts.append(f"--{name.replace('_', '-')} {getattr(self, name):g}")
        if self.latency_buckets != defaults.latency_buckets:
            parts.append(f"--latency-buckets {self.latency_buckets}")
        return " ".join(parts)


# The options given as numbers on the command line (``--look-period 5``), in their order.
NUMBER_OPTIONS = (
    "window",
    "unbatched_window",
    "interval",
    "look_period",
    "scrape_interval",
    "rate",
    "tick",
    "lease_seconds",
    "create_deadline",
    "progress_deadline",
    "restart_deadline",
    "unbatched_deadline",
)


@dataclass
class SizeResult:
    """Every figure of one size; None where it could not be measured (``notes`` say why)."""

    n: int
    created_seconds: float | None = None
    started_seconds: float | None = None
    started_evaluated: int | None = None  # rollouts progressing and evaluated by the deadline
    in_progress: int | None = None  # active rollouts when the window began
    evaluated_before_window: int | None = None
    window_seconds: float | None = None
    interval_seconds: float | None = None  # the policy's analysisInterval
    ticks: int | None = None
    tick_lag_p50: float | None = None
    tick_lag_p99: float | None = None
    tick_lag_mean: float | None = None
    controller_cpu_cores: float | None = None
    controller_rss_peak_mib: float | None = None
    controller_rss_mib: float | None = None
    prometheus_queries_per_interval: float | None = None
    prometheus_engine_queries_per_interval: float | None = None
    unbatched_queries_per_interval: float | None = None
    unbatched_engine_queries_per_interval: float | None = None
    unbatched_controller_cpu_cores: float | None = None
    unbatched_demand_per_interval: float | None = None  # 5 per look per rollout
    apiserver_per_interval: dict[str, float] | None = None  # verb -> requests (controller)
    apiserver_by_resource: dict[str, float] | None = None  # "verb resource" -> requests
    apiserver_isvc_all_clients: dict[str, float] | None = None  # verb -> requests
    audit_records_per_second: float | None = None
    evaluations_per_second: float | None = None
    log_warnings: dict[str, int] | None = None  # the controller's warnings in the window
    reconciles_per_interval: float | None = None  # kserve_canary_reconciles_total
    analysis_deadlines_per_interval: float | None = None  # looks given up at their deadline
    analyses_waiting: float | None = None  # asked for and not started, at the window's end
    # kserve_canary_look_queries_total by kind (round, older, restart_check), per interval
    look_queries_per_interval: dict[str, float] | None = None
    prometheus_query_seconds: float | None = None  # mean instant query, Prometheus' own timing
    restart_leader_seconds: float | None = None
    restart_all_evaluated_seconds: float | None = None
    restart_evaluated: int | None = None  # rollouts evaluated again within the deadline
    restart_rollouts: int | None = None
    restart_p50_seconds: float | None = None
    restart_max_seconds: float | None = None
    testbed_cpu_cores: dict[str, float] | None = None
    machine_busy_cores: float | None = None
    prometheus_series: int | None = None
    phases_after: dict[str, int] | None = None
    profile_top: list[tuple[str, float]] | None = None  # (frame, share of samples)
    profile_self: list[tuple[str, float]] | None = None
    memory_top: list[tuple[str, float, int]] | None = None  # (where, MiB, blocks)
    memory_traced_mib: float | None = None
    memory_traced_peak_mib: float | None = None  # the most traced at once since the start
    notes: list[str] = field(default_factory=list)

    @property
    def apiserver_total_per_interval(self) -> float | None:
        if self.apiserver_per_interval is None:
            return None
        return sum(self.apiserver_per_interval.values())

    @property
    def apiserver_non_step_per_interval(self) -> float | None:
        """Every request of the controller but its writes of InferenceServices (the step
        writes, of which a window at a held step should have none)."""
        if self.apiserver_by_resource is None:
            return None
        return sum(
            count
            for key, count in self.apiserver_by_resource.items()
            if key not in {"patch inferenceservices", "update inferenceservices"}
        )

    @property
    def checks_per_interval(self) -> float | None:
        """Rollout checks (ticks of the controller's timers) per analysis interval."""
        if self.ticks is None or not self.window_seconds or not self.interval_seconds:
            return None
        return self.ticks / (self.window_seconds / self.interval_seconds)

    @property
    def checks_per_rollout_interval(self) -> float | None:
        checks = self.checks_per_interval
        return None if checks is None or not self.in_progress else checks / self.in_progress

    @property
    def reconciles_per_rollout_interval(self) -> float | None:
        reconciles = self.reconciles_per_interval
        return None if reconciles is None or not self.in_progress else reconciles / self.in_progress

    @property
    def apiserver_per_check(self) -> float | None:
        """The controller's apiserver requests (step writes aside) per rollout check."""
        checks, requests = self.checks_per_interval, self.apiserver_non_step_per_interval
        return None if not checks or requests is None else requests / checks

    @property
    def query_ratio(self) -> float | None:
        if not self.unbatched_queries_per_interval or not self.prometheus_queries_per_interval:
            return None
        return self.unbatched_queries_per_interval / self.prometheus_queries_per_interval

    def missing(self) -> list[str]:
        """The figures this size did not produce."""
        required = (
            "created_seconds",
            "started_evaluated",  # every rollout, or how many by the deadline
            "in_progress",
            "tick_lag_p50",
            "tick_lag_p99",
            "controller_cpu_cores",
            "controller_rss_peak_mib",
            "prometheus_queries_per_interval",
            "unbatched_queries_per_interval",
            "apiserver_per_interval",
            "apiserver_isvc_all_clients",
            "audit_records_per_second",
            "restart_leader_seconds",
            "restart_evaluated",  # every rollout, or how many by the deadline
            "testbed_cpu_cores",
            "machine_busy_cores",
        )
        return [name for name in required if getattr(self, name) is None]


# --- reading /proc and /metrics ---------------------------------------------------------------


def cpu_seconds(pid: int, *, reaped: bool = False) -> float | None:
    """utime + stime of a process (every thread), in seconds; with ``reaped``, and the
    cutime + cstime of its children that ended and were waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if reaped else 0)) / _CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of ``root`` and every descendant, those alive now and those that ended
    (PostgreSQL's backends come and go): each live process's own time and its reaped
    children's, so a backend that ends in a window moves its time to its parent's count
    instead of taking it away."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, stack, seen = 0.0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        value = cpu_seconds(pid, reaped=True)
        if value is None and pid == root:
            return None
        total += value or 0.0
        stack.extend(children.get(pid, ()))
    return total


def memory_mib(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0]) / 1024
    except OSError:
        return None, None
    return found.get("VmRSS"), found.get("VmHWM")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle or waiting) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _CLOCK_TICKS


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in Prometheus text: (labels, value)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        found = _SAMPLE.match(line)
        if found is None or found.group(1) != name:
            continue
        labels = dict(_LABEL.findall(found.group(3) or ""))
        yield labels, float(found.group(4))


def total(text: str, name: str, **match: str) -> float:
    return sum(
        v for labels, v in samples(text, name) if all(labels.get(k) == x for k, x in match.items())
    )


def http_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        body: bytes = response.read()
    return body.decode()


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(le, count)`` pairs (ending at
    +Inf): linear within the bucket; the highest finite bound when it falls above it."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


# --- snapshots ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic seconds
    controller_text: str
    controller_cpu: float | None
    prometheus_text: str
    apiserver_text: str
    audit_offset: int
    seq: int
    evaluations: int
    cpu: Mapping[str, float | None]
    machine: float
    log_offset: int = 0  # the controller's log file


@dataclass
class Bed:
    """One size's running parts, and how to read them."""

    testbed: Testbed
    postgres: PostgresServer
    database: RoleDatabase
    env: Env
    namespace: str
    kubeconfig: Path
    logs: Path
    names: list[str]
    options: Options

    # --- the database ------------------------------------------------------------------

    @contextmanager
    def sql(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        with psycopg.connect(self.database.admin_conninfo, autocommit=True) as conn:
            yield conn

    def scalar(self, statement: str, *params: Any) -> Any:
        with self.sql() as conn:
            row = conn.execute(statement, params).fetchone()
        return row[0] if row else None

    def max_seq(self) -> int:
        return int(self.scalar("SELECT coalesce(max(seq), 0) FROM audit_log"))

    def evaluations(self) -> int:
        return int(
            self.scalar("SELECT count(*) FROM audit_log WHERE action = 'analysis.evaluated'")
        )

    def active(self) -> dict[str, str]:
        """Active rollouts: id -> phase."""
        with self.sql() as conn:
            rows = conn.execute("SELECT id, phase FROM rollouts WHERE active").fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def phases(self) -> dict[str, int]:
        with self.sql() as conn:
            rows = conn.execute("SELECT phase, count(*) FROM rollouts GROUP BY phase").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def evaluated_since(self, seq: int, rollouts: Sequence[str]) -> dict[str, datetime]:
        """Each of ``rollouts`` evaluated after record ``seq``: its first such record's time."""
        with self.sql() as conn:
            rows = conn.execute(
                "SELECT rollout_id, min(recorded_at) FROM audit_log WHERE seq > %s AND "
                "action = 'analysis.evaluated' AND rollout_id = ANY(%s) GROUP BY rollout_id",
                (seq, list(rollouts)),
            ).fetchall()
        return {str(r[0]): _utc(r[1]) for r in rows}

    # --- processes ---------------------------------------------------------------------

    def part_pids(self) -> dict[str, tuple[int, bool]]:
        """The test bed's processes: name -> (pid, whether to count its descendants)."""
        bed = self.testbed
        pids: dict[str, tuple[int, bool]] = {}
        if bed.simulators_pid is not None:
            pids["simulators"] = (bed.simulators_pid, False)
        if bed.prometheus is not None and bed.prometheus.pid is not None:
            pids["prometheus"] = (bed.prometheus.pid, False)
        if bed.cluster is not None:
            state = bed.cluster.state()
            pids["kube-apiserver"] = (int(state["pids"]["kube-apiserver"]), False)
            pids["etcd"] = (int(state["pids"]["etcd"]), False)
        if bed.collector_pid is not None:
            pids["shadow collector"] = (bed.collector_pid, False)
        postmaster = self.postgres.data_dir / "postmaster.pid"
        with suppress(OSError, ValueError, IndexError):
            pids["postgresql"] = (int(postmaster.read_text().splitlines()[0]), True)
        pids["benchmark"] = (os.getpid(), False)
        return pids

    def snapshot(self, replica: Replica) -> Snapshot:
        cpu: dict[str, float | None] = {}
        for part, (pid, tree) in self.part_pids().items():
            cpu[part] = tree_cpu_seconds(pid) if tree else cpu_seconds(pid)
        cluster = self.testbed.cluster
        assert cluster is not None
        status, body = cluster.get("/metrics", timeout=30)
        return Snapshot(
            at=time.monotonic(),
            controller_text=_controller_metrics(replica),
            controller_cpu=cpu_seconds(replica.process.pid),
            prometheus_text=http_text(f"{self.testbed.prometheus_url}/metrics"),
            apiserver_text=body.decode() if status == 200 else "",
            audit_offset=_size(cluster.audit_log_path),
            seq=self.max_seq(),
            evaluations=self.evaluations(),
            cpu=cpu,
            machine=machine_busy_seconds(),
            log_offset=_size(self.logs / f"{replica.identity}.log"),
        )

    def log_warnings(self, replica: Replica, start: int, end: int) -> dict[str, int]:
        """The controller's warnings and errors between two offsets of its log (JSON
        lines), counted by event name, most frequent first."""
        with (self.logs / f"{replica.identity}.log").open("rb") as log:
            log.seek(start)
            text = log.read(max(end - start, 0))
        return warning_events(text)

    def audit_events(self, start: int, end: int) -> list[dict[str, Any]]:
        """The controller's apiserver requests logged between two offsets of the log."""
        cluster = self.testbed.cluster
        assert cluster is not None
        with cluster.audit_log_path.open("rb") as log:
            log.seek(start)
            chunk = log.read(max(end - start, 0))
        events = []
        for line in chunk.splitlines():
            with suppress(ValueError):
                event = json.loads(line)
                if (event.get("user") or {}).get("username") == CONTROLLER_USER:
                    events.append(event)
        return events

    def spawn(self, identity: str, **environment: str | None) -> Replica:
        o = self.options
        env: dict[str, str | None] = {
            "KSC_KUBECONFIG": str(self.kubeconfig),
            "KSC_LOOK_PERIOD_SECONDS": f"{o.look_period:g}",
            "KSC_LOOK_LAG_SECONDS": f"{o.look_lag:g}",
            "KSC_ANALYSIS_WINDOW_SECONDS": str(o.analysis_window),
            "KSC_METRICS_DELAY_SECONDS": str(math.ceil(6 * o.scrape_interval + 10)),
            "KSC_LEASE_DURATION_SECONDS": str(o.lease_seconds),
            # production's defaults, not the e2e harness's fast ones
            "KSC_RESYNC_SECONDS": None,
            "KSC_AUDIT_CHECKPOINT_INTERVAL_SECONDS": None,
            # as the image sets it (deploy/Dockerfile): two allocator arenas
            "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
            **environment,
        }
        return self.env.spawn(identity, self.logs, environment=env)


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _controller_metrics(replica: Replica) -> str:
    try:
        return http_text(f"http://127.0.0.1:{replica.port}/metrics", timeout=10)
    except OSError:
        return ""


# --- one size ---------------------------------------------------------------------------------


def _wait(
    what: str,
    check: Callable[[], bool],
    deadline: float,
    log: Callable[[str], None],
    every: float = 1.0,
    progress: Callable[[], str] | None = None,
) -> bool:
    """Poll ``check`` until true (True) or ``deadline`` seconds pass (False)."""
    end = time.monotonic() + deadline
    last_note = time.monotonic()
    while not check():
        if time.monotonic() > end:
            log(f"  gave up waiting for {what} after {deadline:.0f} s")
            return False
        if progress is not None and time.monotonic() - last_note > 30:
            log(f"  waiting for {what}: {progress()}")
            last_note = time.monotonic()
        time.sleep(every)
    return True


def _isvc(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {"kserve-canary.io/enabled": "true", "kserve-canary.io/policy": "scale"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri},
            }
        },
    }


def _ready(items: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        1
        for item in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (item.get("status") or {}).get("conditions") or []
        )
    )


def _controller_kubeconfig(testbed: Testbed, directory: Path, token: str) -> Path:
    """A kubeconfig for the controller's own user (a client certificate in
    system:masters): the apiserver's audit log then holds its requests and only those."""
    cluster = testbed.cluster
    assert cluster is not None
    cert, key = cluster.issue_client_certificate(
        f"bench-controller-{token}", CONTROLLER_USER, ["system:masters"]
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_path),
                },
            }
        ],
        "users": [
            {
                "name": CONTROLLER_USER,
                "user": {"client-certificate": str(cert), "client-key": str(key)},
            }
        ],
        "contexts": [{"name": "bench", "context": {"cluster": "testbed", "user": CONTROLLER_USER}}],
        "current-context": "bench",
    }
    path = directory / "controller.kubeconfig"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@contextmanager
def _bed(
    n: int,
    options: Options,
    postgres: PostgresServer,
    directory: Path,
    log: Callable[[str], None],
    shared: Testbed | None = None,
) -> Iterator[Bed]:
    """A fresh test bed set up for scale, or ``shared`` (a running one, e.g. the test
    suite's: its traffic mode, series and scrape interval are its own), with a database,
    a namespace and the policy for ``n`` rollouts."""
    token = f"{os.getpid()}-{n}-{int(time.time()) % 100_000}"
    names = [f"m{i:04d}" for i in range(n)]
    with ExitStack() as stack:
        if shared is None:
            testbed = Testbed(directory / "testbed", scale=Scale(
                traffic_mode="aggregate",
                tick_interval=options.tick,
                profiles=(PROFILE,),
                latency_buckets=options.latency_buckets,
                scrape_interval=options.scrape_interval,
                audit_users=(CONTROLLER_USER,),
            ))  # fmt: skip
            stack.callback(testbed.down)
            testbed.up()
        else:
            testbed = shared
        database = provision_audit_database(postgres, f"ksc_bench_scale_{token.replace('-', '_')}")
        stack.callback(postgres.drop_role_database, database)
        namespace = testbed.namespace(f"scale-{n}" if shared is None else f"bench-scale-{token}")
        policies = directory / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        (policies / "scale.yaml").write_text(POLICY.format(interval=f"{options.interval:g}s"))
        book = testbed.behaviour()
        if shared is None:
            testbed.set_behaviour(book.model_copy(update={"default_rate": options.rate}))
        else:  # the other users' rates stay as they are
            for name in names:
                book = book.with_rate(namespace, name, options.rate)
            testbed.set_behaviour(book)
            stack.callback(_leave, testbed, namespace, names)
        env = Env(testbed, "knative", namespace, database.app_url, policies)
        stack.callback(_stop_processes, env)
        yield Bed(
            testbed=testbed,
            postgres=postgres,
            database=database,
            env=env,
            namespace=namespace,
            kubeconfig=_controller_kubeconfig(testbed, directory, token),
            logs=directory / "logs",
            names=names,
            options=options,
        )


def _leave(testbed: Testbed, namespace: str, names: Sequence[str]) -> None:
    """On a shared test bed: no more traffic for our services, and the services gone."""
    book = testbed.behaviour()
    for name in names:
        book = book.with_rate(namespace, name, 0.0)
    testbed.set_behaviour(book)
    for name in names:
        with suppress(KubeError):
            testbed.kube.delete(INFERENCE_SERVICE, namespace, name)


def _stop_processes(env: Env) -> None:
    for process in env.processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def measure_size(
    n: int,
    options: Options,
    postgres: PostgresServer,
    log: Callable[[str], None] = print,
    *,
    testbed: Testbed | None = None,
) -> SizeResult:
    """Every figure for ``n`` rollouts (see the module doc), on a fresh test bed or on
    ``testbed``."""
    result = SizeResult(n)
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix=f"ksc-scale-{n}-", dir=options.work_dir))
        if options.work_dir is None:  # given one, everything is kept there (the logs)
            stack.callback(shutil.rmtree, directory, True)
        log(f"N = {n}: starting the test bed in {directory}")
        bed = stack.enter_context(_bed(n, options, postgres, directory, log, testbed))
        traced: dict[str, str] = {}
        if options.tracemalloc:
            hook = directory / "tracemalloc-hook"
            hook.mkdir(exist_ok=True)
            (hook / "sitecustomize.py").write_text(_TRACEMALLOC_HOOK)
            traced = {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(hook), os.environ.get("PYTHONPATH")])
                ),
                "KSC_BENCH_TRACEMALLOC": str(directory / "tracemalloc.txt"),
            }
        replica = bed.spawn("replica-a", **traced)  # it starts while the services are made
        log(f"  controller pid {replica.process.pid}, logs in {bed.logs}")
        _create(bed, result, log)
        if not _wait(
            "the controller to lead", lambda: replica.metric("kserve_canary_leader") == 1, 120, log
        ):
            result.notes.append("the controller did not take the Lease within 120 s")
            return result
        _start_rollouts(bed, result, log)
        time.sleep(options.interval)  # every rollout settled into its rhythm
        _measure_window(bed, replica, result, log)
        if options.py_spy is not None:
            _profile(bed, replica, result, log)
        if options.tracemalloc:
            _memory(replica, Path(traced["KSC_BENCH_TRACEMALLOC"]), result, log)
        replica = _restart(bed, replica, result, log)
        _measure_unbatched(bed, replica, result, log)
        result.phases_after = bed.phases()
    return result


def _create(bed: Bed, result: SizeResult, log: Callable[[str], None]) -> None:
    kube = bed.testbed.kube
    started = time.monotonic()
    for name in bed.names:
        kube.create(INFERENCE_SERVICE, bed.namespace, _isvc(name, f"s3://bench/{name}/v1"))

    def ready() -> int:
        items, _ = kube.list(INFERENCE_SERVICE, bed.namespace)
        return _ready(items)

    if _wait(
        f"{len(bed.names)} InferenceServices to be Ready",
        lambda: ready() == len(bed.names),
        bed.options.create_deadline,
        log,
        every=2.0,
        progress=lambda: f"{ready()} Ready",
    ):
        result.created_seconds = time.monotonic() - started
        log(f"  {len(bed.names)} InferenceServices Ready in {result.created_seconds:.0f} s")
    else:
        result.notes.append(
            f"only {ready()} of {len(bed.names)} InferenceServices were Ready after "
            f"{bed.options.create_deadline:.0f} s"
        )


def _start_rollouts(bed: Bed, result: SizeResult, log: Callable[[str], None]) -> None:
    started = time.monotonic()
    with AuditStore.from_url(bed.database.app_url) as store:
        for name in bed.names:
            submit_command(
                store,
                namespace=bed.namespace,
                name=name,
                command="start",
                actor="bench",
                reason="scale benchmark",
                args={"storage_uri": f"s3://bench/{name}/v2"},
                wait=0,
            )
    n = len(bed.names)

    def in_progress() -> tuple[int, int]:
        active = bed.active()
        progressing = [rid for rid, phase in active.items() if phase == "Progressing"]
        evaluated = bed.evaluated_since(0, progressing)
        return len(progressing), len(evaluated)

    def done() -> bool:
        progressing, evaluated = in_progress()
        return progressing == n and evaluated == n

    if _wait(
        f"{n} rollouts in progress and evaluated",
        done,
        bed.options.progress_deadline,
        log,
        every=2.0,
        progress=lambda: "{} progressing, {} evaluated".format(*in_progress()),
    ):
        result.started_seconds = time.monotonic() - started
        log(f"  {n} rollouts in progress and evaluated in {result.started_seconds:.0f} s")
    progressing, evaluated = in_progress()
    result.started_evaluated = min(progressing, evaluated)
    if result.started_seconds is None:
        result.notes.append(
            f"after {bed.options.progress_deadline:.0f} s only {progressing} of {n} rollouts "
            f"were progressing and {evaluated} evaluated; measured as they were"
        )


def _per_interval(count: float, seconds: float, interval: float) -> float:
    return count / (seconds / interval)


def _measure_window(
    bed: Bed, replica: Replica, result: SizeResult, log: Callable[[str], None]
) -> None:
    o = bed.options
    result.in_progress = len(bed.active())
    log(f"  measuring {o.window:.0f} s with {result.in_progress} rollouts in progress")
    before = bed.snapshot(replica)
    time.sleep(o.window)
    after = bed.snapshot(replica)
    seconds = after.at - before.at
    result.window_seconds = seconds
    result.interval_seconds = o.interval

    # tick lag
    def buckets(text: str) -> dict[float, float]:
        return {
            float(labels["le"]): value
            for labels, value in samples(text, "kserve_canary_tick_lag_seconds_bucket")
        }

    start, end = buckets(before.controller_text), buckets(after.controller_text)
    if end:
        grown = [(le, end[le] - start.get(le, 0.0)) for le in end]
        result.tick_lag_p50 = histogram_quantile(0.5, grown)
        result.tick_lag_p99 = histogram_quantile(0.99, grown)
        count = total(after.controller_text, "kserve_canary_tick_lag_seconds_count") - total(
            before.controller_text, "kserve_canary_tick_lag_seconds_count"
        )
        lag_sum = total(after.controller_text, "kserve_canary_tick_lag_seconds_sum") - total(
            before.controller_text, "kserve_canary_tick_lag_seconds_sum"
        )
        result.ticks = round(count)
        result.tick_lag_mean = lag_sum / count if count else None
    if before.controller_cpu is not None and after.controller_cpu is not None:
        result.controller_cpu_cores = (after.controller_cpu - before.controller_cpu) / seconds
    result.controller_rss_mib, result.controller_rss_peak_mib = memory_mib(replica.process.pid)

    # Prometheus
    queries = _query_counts(before.prometheus_text, after.prometheus_text)
    result.prometheus_queries_per_interval = _per_interval(queries[0], seconds, o.interval)
    result.prometheus_engine_queries_per_interval = _per_interval(queries[1], seconds, o.interval)
    result.prometheus_series = round(total(after.prometheus_text, "prometheus_tsdb_head_series"))
    result.prometheus_query_seconds = _mean_query_seconds(
        before.prometheus_text, after.prometheus_text
    )

    # the controller's own counts
    def counted(name: str) -> float:
        return total(after.controller_text, name) - total(before.controller_text, name)

    result.reconciles_per_interval = _per_interval(
        counted("kserve_canary_reconciles_total"), seconds, o.interval
    )
    result.analysis_deadlines_per_interval = _per_interval(
        counted("kserve_canary_analysis_deadlines_total"), seconds, o.interval
    )
    result.analyses_waiting = total(after.controller_text, "kserve_canary_analyses_waiting")
    kinds = sorted({labels["kind"] for labels, _ in samples(after.controller_text,
                    "kserve_canary_look_queries_total") if "kind" in labels})  # fmt: skip
    result.look_queries_per_interval = {
        kind: _per_interval(
            total(after.controller_text, "kserve_canary_look_queries_total", kind=kind)
            - total(before.controller_text, "kserve_canary_look_queries_total", kind=kind),
            seconds,
            o.interval,
        )
        for kind in kinds
    }
    result.log_warnings = bed.log_warnings(replica, before.log_offset, after.log_offset)

    # the apiserver
    events = bed.audit_events(before.audit_offset, after.audit_offset)
    verbs = Counter(str(e.get("verb")) for e in events)
    resources = Counter(
        f"{e.get('verb')} {(e.get('objectRef') or {}).get('resource', '-')}"
        + (f"/{sub}" if (sub := (e.get("objectRef") or {}).get("subresource")) else "")
        for e in events
    )
    result.apiserver_per_interval = {
        verb: _per_interval(count, seconds, o.interval) for verb, count in sorted(verbs.items())
    }
    result.apiserver_by_resource = {
        key: _per_interval(count, seconds, o.interval) for key, count in sorted(resources.items())
    }
    if before.apiserver_text and after.apiserver_text:
        result.apiserver_isvc_all_clients = _isvc_requests(
            before.apiserver_text, after.apiserver_text, seconds, o.interval
        )

    # the audit trail
    result.audit_records_per_second = (after.seq - before.seq) / seconds
    result.evaluations_per_second = (after.evaluations - before.evaluations) / seconds
    result.evaluated_before_window = before.evaluations

    # the test bed and the machine
    parts: dict[str, float] = {}
    for part, used in after.cpu.items():
        was = before.cpu.get(part)
        if used is not None and was is not None:
            parts[part] = (used - was) / seconds
    result.testbed_cpu_cores = parts
    result.machine_busy_cores = (after.machine - before.machine) / seconds
    log(
        f"  tick lag p50 {_secs(result.tick_lag_p50)} p99 {_secs(result.tick_lag_p99)}, "
        f"controller {_num(result.controller_cpu_cores, 2)} cores, peak RSS "
        f"{_num(result.controller_rss_peak_mib, 0)} MiB, "
        f"{_num(result.prometheus_queries_per_interval, 1)} queries per interval"
    )


def _query_counts(before: str, after: str) -> tuple[float, float]:
    """Instant queries over HTTP, and query evaluations by Prometheus' engine."""
    http = total(after, "prometheus_http_requests_total", handler="/api/v1/query") - total(
        before, "prometheus_http_requests_total", handler="/api/v1/query"
    )
    engine = total(
        after, "prometheus_engine_query_duration_seconds_count", slice="inner_eval"
    ) - total(before, "prometheus_engine_query_duration_seconds_count", slice="inner_eval")
    return http, engine


def warning_events(text: bytes) -> dict[str, int]:
    """Warning, error and critical log events in JSON lines, by event name, most frequent
    first (lines that are not JSON objects are skipped: a traceback's continuation)."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in {"warning", "error", "critical"}:
            found[str(entry.get("event"))] += 1
    return dict(found.most_common())


def _mean_query_seconds(before: str, after: str) -> float | None:
    """The mean time Prometheus took per instant query in the window (its own timing)."""

    def grown(name: str) -> float:
        return total(after, name, handler="/api/v1/query") - total(
            before, name, handler="/api/v1/query"
        )

    count = grown("prometheus_http_request_duration_seconds_count")
    return grown("prometheus_http_request_duration_seconds_sum") / count if count else None


def _isvc_requests(before: str, after: str, seconds: float, interval: float) -> dict[str, float]:
    def by_verb(text: str) -> dict[str, float]:
        counts: dict[str, float] = {}
        for labels, value in samples(text, "apiserver_request_total"):
            if labels.get("resource") == "inferenceservices":
                verb = labels.get("verb", "?")
                counts[verb] = counts.get(verb, 0.0) + value
        return counts

    start, end = by_verb(before), by_verb(after)
    return {
        verb: _per_interval(end[verb] - start.get(verb, 0.0), seconds, interval)
        for verb in sorted(end)
        if end[verb] - start.get(verb, 0.0) > 0
    }


def _restart(bed: Bed, replica: Replica, result: SizeResult, log: Callable[[str], None]) -> Replica:
    o = bed.options
    rollouts = [rid for rid, phase in bed.active().items() if phase == "Progressing"]
    result.restart_rollouts = len(rollouts)
    seq = bed.max_seq()
    log(f"  restart: SIGKILL, then a new controller; {len(rollouts)} rollouts to evaluate")
    killed_at = datetime.now(UTC)
    started = time.monotonic()
    replica.kill()
    fresh = bed.spawn("replica-b")
    if _wait(
        "the new controller to lead",
        lambda: fresh.metric("kserve_canary_leader") == 1,
        o.restart_deadline,
        log,
        every=0.2,
    ):
        result.restart_leader_seconds = time.monotonic() - started
    seen: dict[str, datetime] = {}

    def all_evaluated() -> bool:
        seen.update(bed.evaluated_since(seq, rollouts))
        return len(seen) >= len(rollouts)

    if _wait(
        "every rollout evaluated again",
        all_evaluated,
        o.restart_deadline,
        log,
        every=0.5,
        progress=lambda: f"{len(seen)} of {len(rollouts)}",
    ):
        result.restart_all_evaluated_seconds = time.monotonic() - started
    result.restart_evaluated = len(seen)
    delays = sorted((at - killed_at).total_seconds() for at in seen.values())
    if delays:
        result.restart_p50_seconds = delays[len(delays) // 2]
        result.restart_max_seconds = delays[-1]
    log(
        f"  leader after {_secs(result.restart_leader_seconds)}, every rollout evaluated "
        f"after {_secs(result.restart_all_evaluated_seconds)}"
    )
    return fresh


def _measure_unbatched(
    bed: Bed, replica: Replica, result: SizeResult, log: Callable[[str], None]
) -> None:
    o = bed.options
    rollouts = [rid for rid, phase in bed.active().items() if phase == "Progressing"]
    seq = bed.max_seq()
    replica.kill()
    alone = bed.spawn("replica-c", KSC_BATCH_LOOKS="false")
    log("  batching off (KSC_BATCH_LOOKS=false): waiting for every rollout's next evaluation")
    _wait(
        "the unbatched controller to lead",
        lambda: alone.metric("kserve_canary_leader") == 1,
        o.restart_deadline,
        log,
        every=0.2,
    )
    seen: dict[str, datetime] = {}

    def all_evaluated() -> bool:
        seen.update(bed.evaluated_since(seq, rollouts))
        return len(seen) >= len(rollouts)

    if not _wait(
        "every rollout evaluated, batching off",
        all_evaluated,
        o.unbatched_deadline,
        log,
        every=1.0,
        progress=lambda: f"{len(seen)} of {len(rollouts)}",
    ):
        result.notes.append(
            f"batching off: {len(seen)} of {len(rollouts)} rollouts evaluated within "
            f"{o.unbatched_deadline:.0f} s; the queries were measured anyway"
        )
    time.sleep(o.interval)
    before = http_text(f"{bed.testbed.prometheus_url}/metrics")
    cpu_before, started = cpu_seconds(alone.process.pid), time.monotonic()
    time.sleep(o.unbatched_window)
    after = http_text(f"{bed.testbed.prometheus_url}/metrics")
    cpu_after, seconds = cpu_seconds(alone.process.pid), time.monotonic() - started
    http, engine = _query_counts(before, after)
    result.unbatched_demand_per_interval = 5 * o.interval / o.look_period * len(rollouts)
    result.unbatched_queries_per_interval = _per_interval(http, seconds, o.interval)
    result.unbatched_engine_queries_per_interval = _per_interval(engine, seconds, o.interval)
    if cpu_before is not None and cpu_after is not None:
        result.unbatched_controller_cpu_cores = (cpu_after - cpu_before) / seconds
    log(f"  batching off: {_num(result.unbatched_queries_per_interval, 1)} queries per interval")
    alone.kill()


# --- the controller's profile (optional: --py-spy) --------------------------------------------


def _profile(bed: Bed, replica: Replica, result: SizeResult, log: Callable[[str], None]) -> None:
    """Sample the controller's threads holding the GIL (CPU, not waiting) for a while with
    py-spy; the frames most often on the stack, and most often on top."""
    o = bed.options
    assert o.py_spy is not None
    out = bed.logs / f"controller-{result.n}.pyspy.txt"
    log(f"  profiling the controller for {o.profile_seconds:.0f} s (py-spy)")
    done = subprocess.run(
        [
            str(o.py_spy),
            "record",
            "--pid",
            str(replica.process.pid),
            "--duration",
            str(int(o.profile_seconds)),
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=o.profile_seconds + 60,
    )
    if done.returncode != 0 or not out.exists():
        result.notes.append(f"py-spy failed: {done.stderr.strip()[-300:]}")
        return
    result.profile_top, result.profile_self = summarise_profile(out.read_text())
    if o.work_dir is not None:
        shutil.copy(out, o.work_dir / out.name)


def _memory(replica: Replica, path: Path, result: SizeResult, log: Callable[[str], None]) -> None:
    """Ask the controller (under tracemalloc) for its largest allocations by line."""
    log("  asking the controller for its allocations (tracemalloc)")
    os.kill(replica.process.pid, signal.SIGUSR2)
    if not _wait("the allocation report", path.exists, 300, log, every=1.0):
        result.notes.append("tracemalloc: no allocation report within 300 s")
        return
    lines = path.read_text().splitlines()
    head = lines[0].split()
    result.memory_traced_mib = int(head[1]) / 2**20
    if len(head) >= 4:
        result.memory_traced_peak_mib = int(head[3]) / 2**20
    top = []
    for line in lines[1:]:
        size, count, where = line.split(" ", 2)
        top.append((_short(where), int(size) / 2**20, int(count)))
    result.memory_top = top


def _short(where: str) -> str:
    """A file path from the site-packages or the checkout on."""
    for marker in ("site-packages/", "python3.11/", "/wt-scale/", "/main/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def summarise_profile(
    raw: str, *, top: int = 25
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw format (``frame;frame;... count`` per line): the frames on the
    stack in the largest share of samples (threading's bootstrap frames left out), and the
    frames most often on top."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    count = 0
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples_ = int(number)
        count += samples_
        frames = stack.split(";")
        own[frames[-1]] += samples_
        for frame in set(frames):
            inclusive[frame] += samples_
    boring = ("Thread._bootstrap", "Thread.run ", "<module>", "_run_module", "run_module")
    ranked = [(f, c / count) for f, c in inclusive.most_common() if not f.startswith(boring)]
    return ranked[:top], [(f, c / count) for f, c in own.most_common(top)] if count else []


# --- the whole run and its report -------------------------------------------------------------


def run(
    options: Options,
    log: Callable[[str], None] = print,
    *,
    postgres: PostgresServer | None = None,
    testbed: Testbed | None = None,
) -> list[SizeResult]:
    """Measure every size, each on a fresh test bed (or all on ``testbed``), with one
    PostgreSQL for all (``postgres`` if given, else a private one)."""
    results = []
    with ExitStack() as stack:
        if postgres is None:
            postgres = stack.enter_context(PostgresServer())
        for n in options.sizes:
            started = time.monotonic()
            result = measure_size(n, options, postgres, log, testbed=testbed)
            log(
                f"N = {n} done in {time.monotonic() - started:.0f} s; missing: "
                f"{', '.join(result.missing()) or 'nothing'}"
            )
            results.append(result)
    return results


def _secs(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _events(counts: Mapping[str, int] | None) -> str:
    if counts is None:
        return "–"
    if not counts:
        return "none"
    shown = [f"`{event}` {count:,}" for event, count in list(counts.items())[:4]]
    rest = sum(list(counts.values())[4:])
    return ", ".join(shown) + (f", {rest:,} others" if rest else "")


def _verbs(counts: Mapping[str, float] | None) -> str:
    if not counts:
        return "–"
    return ", ".join(f"{verb} {value:.1f}" for verb, value in counts.items())


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


@dataclass(frozen=True)
class Verdict:
    target: str
    figure: str
    ok: bool | None


def verdicts(results: Sequence[SizeResult]) -> list[Verdict]:
    """Each target of issue #16 §2 with the figure it is judged on (the largest size, or
    the worst size for the restart)."""
    if not results:
        return []
    largest, smallest = results[-1], results[0]
    at = f"at {largest.n:,}"
    out = [
        Verdict(
            f"tick lag p99 < {TARGET_TICK_LAG_P99:g} s",
            f"{_secs(largest.tick_lag_p99)} {at}",
            None if largest.tick_lag_p99 is None else largest.tick_lag_p99 < TARGET_TICK_LAG_P99,
        ),
        Verdict(
            f"controller CPU < {TARGET_CPU:g} core",
            f"{_num(largest.controller_cpu_cores, 2)} cores {at}",
            None
            if largest.controller_cpu_cores is None
            else largest.controller_cpu_cores < TARGET_CPU,
        ),
        Verdict(
            f"peak RSS < {TARGET_RSS_MIB:g} MB",
            f"{_num(largest.controller_rss_peak_mib, 0)} MiB {at}",
            None
            if largest.controller_rss_peak_mib is None
            else largest.controller_rss_peak_mib * 1.048576 < TARGET_RSS_MIB,
        ),
    ]
    restarts = [r.restart_all_evaluated_seconds for r in results]
    worst = max((r for r in results), key=lambda r: r.restart_all_evaluated_seconds or math.inf)
    out.append(
        Verdict(
            f"after a restart every rollout evaluated within {TARGET_RESTART:g} s",
            ", ".join(
                f"{_secs(s) if s is not None else 'not all'} at {r.n:,}"
                for s, r in zip(restarts, results, strict=True)
            ),
            None
            if not results
            else (
                worst.restart_all_evaluated_seconds is not None
                and worst.restart_all_evaluated_seconds < TARGET_RESTART
            ),
        )
    )
    low, high = smallest.apiserver_non_step_per_interval, largest.apiserver_non_step_per_interval
    figure = f"{_num(low, 1)} at {smallest.n:,} → {_num(high, 1)} at {largest.n:,}"
    # A controller that falls behind checks each rollout less often, and so asks the
    # apiserver less per interval than it would: judged then at the smaller size's checks
    # per rollout. Only what grows with the checks is scaled up (the marginal requests per
    # check between the two sizes); what does not (the Lease's renewals, the watch) is not.
    small_rate = smallest.checks_per_rollout_interval
    large_rate = largest.checks_per_rollout_interval
    small_checks, large_checks = smallest.checks_per_interval, largest.checks_per_interval
    if (
        low is not None
        and high is not None
        and small_rate is not None
        and large_rate is not None
        and small_checks is not None
        and large_checks is not None
        and large_checks > small_checks
        and large_rate < small_rate / 2
        and largest.in_progress
    ):
        marginal = max(high - low, 0.0) / (large_checks - small_checks)
        wanted = small_rate * largest.in_progress
        high = high + marginal * (wanted - large_checks)
        figure += (
            f" measured, the controller checking each rollout {large_rate:.2f} times per "
            f"interval against {small_rate:.2f} at {smallest.n:,}; at that rate, with "
            f"{marginal:.4f} more requests per more check: {high:,.1f}"
        )
    growth = None if low is None or high is None or len(results) < 2 else high / max(low, 1.0)
    out.append(
        Verdict(
            "apiserver requests per interval not growing with rollouts (step writes aside)",
            figure + (f" (×{growth:.1f})" if growth is not None else ""),
            None if growth is None else growth <= TARGET_APISERVER_GROWTH,
        )
    )
    ratio = largest.query_ratio
    out.append(
        Verdict(
            f"Prometheus queries per interval ≥ {TARGET_QUERY_RATIO:g}× fewer than per-rollout",
            f"{_num(largest.prometheus_queries_per_interval, 1)} vs "
            f"{_num(largest.unbatched_queries_per_interval, 1)} {at}"
            + (f" (×{ratio:.0f})" if ratio is not None else ""),
            None if ratio is None else ratio >= TARGET_QUERY_RATIO,
        )
    )
    return out


def _table(results: Sequence[SizeResult]) -> list[str]:
    head = "| Figure | " + " | ".join(f"N = {r.n:,}" for r in results) + " |"
    rows = [head, "|---|" + "---|" * len(results)]

    def row(label: str, render: Callable[[SizeResult], str]) -> None:
        rows.append(f"| {label} | " + " | ".join(render(r) for r in results) + " |")

    row("InferenceServices created and Ready", lambda r: _secs(r.created_seconds))
    row(
        "rollouts started, in progress and evaluated",
        lambda r: (
            _secs(r.started_seconds)
            if r.started_seconds is not None
            else f"{_num(r.started_evaluated, 0)} of {r.n:,} in time"
        ),
    )
    row("rollouts in progress in the window", lambda r: _num(r.in_progress, 0))
    row("tick lag p50 / p99", lambda r: f"{_secs(r.tick_lag_p50)} / {_secs(r.tick_lag_p99)}")
    row(
        "ticks in the window (mean lag)", lambda r: f"{_num(r.ticks, 0)} ({_secs(r.tick_lag_mean)})"
    )
    row("controller CPU (cores)", lambda r: _num(r.controller_cpu_cores, 2))
    row("controller peak RSS (MiB)", lambda r: _num(r.controller_rss_peak_mib, 0))
    row(
        "Prometheus queries per interval, grouped",
        lambda r: _num(r.prometheus_queries_per_interval, 1),
    )
    row(
        "Prometheus queries per interval, per rollout (batching off)",
        lambda r: _num(r.unbatched_queries_per_interval, 1),
    )
    row(
        "apiserver requests per interval (controller), by verb",
        lambda r: _verbs(r.apiserver_per_interval),
    )
    row(
        "… of them not InferenceService writes",
        lambda r: _num(r.apiserver_non_step_per_interval, 1),
    )
    row(
        "rollout checks per interval (per rollout)",
        lambda r: f"{_num(r.checks_per_interval, 1)} ({_num(r.checks_per_rollout_interval, 2)})",
    )
    row(
        "apiserver requests per rollout check (step writes aside)",
        lambda r: _num(r.apiserver_per_check, 2),
    )
    row(
        "reconciles per interval (per rollout)",
        lambda r: (
            f"{_num(r.reconciles_per_interval, 1)} ({_num(r.reconciles_per_rollout_interval, 2)})"
        ),
    )
    row("audit records per second", lambda r: _num(r.audit_records_per_second, 1))
    row("analyses per second (`analysis.evaluated`)", lambda r: _num(r.evaluations_per_second, 1))
    row(
        "analyses given up at their deadline per interval / waiting at the end",
        lambda r: f"{_num(r.analysis_deadlines_per_interval, 1)} / {_num(r.analyses_waiting, 0)}",
    )
    row(
        "the looks' queries per interval: rounds / older rounds / restart checks",
        lambda r: " / ".join(
            _num((r.look_queries_per_interval or {}).get(kind), 1)
            for kind in ("round", "older", "restart_check")
        ),
    )
    row("Prometheus: mean time per instant query", lambda r: _secs(r.prometheus_query_seconds))
    row("controller warnings in the window, by event", lambda r: _events(r.log_warnings))
    row(
        "restart: new leader / every rollout evaluated",
        lambda r: (
            f"{_secs(r.restart_leader_seconds)} / "
            + (
                _secs(r.restart_all_evaluated_seconds)
                if r.restart_all_evaluated_seconds is not None
                else f"{_num(r.restart_evaluated, 0)} of {_num(r.restart_rollouts, 0)} in time"
            )
        ),
    )
    row(
        "test bed CPU in the window (cores)",
        lambda r: _num(sum((r.testbed_cpu_cores or {}).values()) or None, 2),
    )
    row("whole machine busy (cores)", lambda r: _num(r.machine_busy_cores, 2))
    return rows


def _explanation(results: Sequence[SizeResult], options: Options) -> list[str]:
    """What the figures say, in sentences built from them."""
    lines: list[str] = []
    if not results:
        return lines
    first, last = results[0], results[-1]
    if first.controller_cpu_cores is not None and last.controller_cpu_cores is not None:
        per = (last.controller_cpu_cores - first.controller_cpu_cores) / max(last.n - first.n, 1)
        lines.append(
            f"Controller CPU grows from {first.controller_cpu_cores:.2f} to "
            f"{last.controller_cpu_cores:.2f} cores between {first.n:,} and {last.n:,} rollouts "
            f"(about {per * 1000:.1f} millicores per rollout); the tick lag p99 from "
            f"{_secs(first.tick_lag_p99)} to {_secs(last.tick_lag_p99)}."
        )
    if last.evaluations_per_second is not None and last.in_progress:
        expected = last.in_progress / options.interval
        lines.append(
            f"At {last.n:,} the controller recorded {last.evaluations_per_second:.1f} analyses "
            f"per second where {last.in_progress:,} rollouts every {options.interval:g} s ask "
            f"for {expected:.1f}."
        )
    if last.testbed_cpu_cores and last.machine_busy_cores is not None:
        bed = sum(v for k, v in last.testbed_cpu_cores.items() if k != "benchmark")
        ours = bed + (last.controller_cpu_cores or 0.0)
        others = max(last.machine_busy_cores - ours - last.testbed_cpu_cores.get("benchmark", 0), 0)
        top = sorted(last.testbed_cpu_cores.items(), key=lambda kv: -kv[1])[:3]
        lines.append(
            f"What the test bed limits: at {last.n:,} its processes used {bed:.2f} of the "
            f"machine's {report.machine().cores} cores during the window ("
            + ", ".join(f"{k} {v:.2f}" for k, v in top)
            + f"); other work on the machine {others:.2f}."
        )
    if last.restart_leader_seconds is not None and last.restart_all_evaluated_seconds is not None:
        lines.append(
            f"After the restart at {last.n:,}, {_secs(last.restart_leader_seconds)} went to "
            f"taking the Lease over (a new identity waits for the old Lease of "
            f"{options.lease_seconds} s to expire) and "
            f"{_secs(last.restart_all_evaluated_seconds - last.restart_leader_seconds)} "
            "to evaluate every rollout."
        )
    return lines


def render(
    results: Sequence[SizeResult],
    options: Options,
    *,
    elapsed: float,
    load: tuple[str, str],
    when: str | None = None,
) -> tuple[str, str]:
    """The results file and the README block (``when``: the day measured, default today)."""
    when = when or datetime.now(UTC).strftime("%Y-%m-%d")
    machine = report.machine().describe()
    setup = (
        f"Each size on a fresh test bed: the traffic simulator in aggregate mode "
        f"({options.rate:g} requests/s per InferenceService, {options.tick:g} s ticks, the "
        f"`{PROFILE}` series only, latency histograms of "
        f"{len(LATENCY_LAYOUTS[options.latency_buckets][0]) + 1} buckets: the "
        f"`{options.latency_buckets}` layout), Prometheus scraping every "
        f"{options.scrape_interval:g} s, "
        f"Knative-mode InferenceServices, policy steps [10, 50, 100] held 2 h (healthy "
        f"canaries: every rollout stays at 10 %), analysisInterval {options.interval:g} s, "
        f"look period {options.look_period:g} s, Lease {options.lease_seconds} s; one "
        f"controller process (`canary run`) on PostgreSQL as its application role."
    )
    block = [
        f"`make bench-scale` (`{options.command()}`), {when}, on {machine}; "
        f"{elapsed / 60:.0f} min in all. Machine load (`uptime`) before: {load[0]}; after: "
        f"{load[1]}.",
        "",
        setup,
        "",
        *_table(results),
        "",
        "| Target | Measured | |",
        "|---|---|---|",
        *(f"| {v.target} | {v.figure} | {_met(v.ok)} |" for v in verdicts(results)),
        "",
        *(f"- {line}" for line in _explanation(results, options)),
    ]
    notes = [f"- N = {r.n:,}: {note}" for r in results for note in r.notes]
    if notes:
        block += ["", "Notes:", *notes]
    block += ["", "Every figure, how each is measured and the profile: `bench/results/scale.md`."]
    details = [f"# {SECTION}", "", *block[:-1], "", _how_measured(), ""]
    for r in results:
        details += _details(r)
    return "\n".join(details), "\n".join(block)


def _how_measured() -> str:
    return "## How each figure is measured\n\n" + MEASURES.strip()


def _details(r: SizeResult) -> list[str]:
    lines = [f"## N = {r.n:,}", ""]
    if r.apiserver_by_resource:
        lines += [
            "apiserver requests per analysis interval, the controller's (audit log):",
            "",
            "| verb resource | per interval |",
            "|---|---|",
            *(f"| {k} | {v:.2f} |" for k, v in r.apiserver_by_resource.items()),
            "",
        ]
    if r.apiserver_isvc_all_clients:
        lines += [
            '`apiserver_request_total{resource="inferenceservices"}` per interval, '
            f"every client (the KServe simulator's too): {_verbs(r.apiserver_isvc_all_clients)}",
            "",
        ]
    if r.testbed_cpu_cores:
        lines += [
            "CPU in the window (cores): "
            + ", ".join(
                f"{k} {v:.2f}"
                for k, v in sorted(r.testbed_cpu_cores.items(), key=lambda kv: -kv[1])
            )
            + f"; controller {_num(r.controller_cpu_cores, 2)}; whole machine "
            f"{_num(r.machine_busy_cores, 2)}.",
            "",
        ]
    lines += [
        f"Prometheus: {_num(r.prometheus_series, 0)} head series; engine evaluations per "
        f"interval {_num(r.prometheus_engine_queries_per_interval, 1)} grouped, "
        f"{_num(r.unbatched_engine_queries_per_interval, 1)} per rollout; controller CPU with "
        f"batching off {_num(r.unbatched_controller_cpu_cores, 2)} cores. Without batching "
        f"every rollout's looks would take {_num(r.unbatched_demand_per_interval, 0)} queries "
        "per interval (five per look per rollout); fewer were measured when the controller "
        "did not read every look.",
        "",
        f"Restart: first evaluation of each rollout after the kill p50 "
        f"{_secs(r.restart_p50_seconds)}, max {_secs(r.restart_max_seconds)} "
        f"({_num(r.restart_evaluated, 0)} of {_num(r.restart_rollouts, 0)} rollouts).",
        "",
        f"Rollouts by phase at the end: {r.phases_after or '–'}.",
        "",
    ]
    if r.profile_top:
        lines += [
            "Controller profile (py-spy, threads holding the GIL), frames on the stack:",
            "",
            "| share | frame |",
            "|---|---|",
            *(f"| {share:.0%} | `{frame}` |" for frame, share in r.profile_top),
            "",
        ]
    if r.memory_top:
        lines += [
            "Controller allocations alive at the window's end (tracemalloc, by line; "
            f"{_num(r.memory_traced_mib, 0)} MiB traced in all; at most "
            f"{_num(r.memory_traced_peak_mib, 0)} MiB at once since the start, against a "
            f"peak RSS of {_num(r.controller_rss_peak_mib, 0)} MiB):",
            "",
            "| MiB | blocks | where |",
            "|---|---|---|",
            *(f"| {mib:.1f} | {n:,} | `{where}` |" for where, mib, n in r.memory_top[:25]),
            "",
        ]
    if r.profile_self:
        lines += [
            "Frames on top of the stack:",
            "",
            "| share | frame |",
            "|---|---|",
            *(f"| {share:.0%} | `{frame}` |" for frame, share in r.profile_self),
            "",
        ]
    return lines


def _uptime() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return "load average " + ", ".join(load)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    defaults = Options()
    parser.add_argument("--sizes", default=",".join(map(str, defaults.sizes)))
    for name in NUMBER_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int if name == "lease_seconds" else float,
            default=getattr(defaults, name),
            help="seconds" if name.endswith("_deadline") else None,
        )
    parser.add_argument(
        "--latency-buckets",
        choices=sorted(LATENCY_LAYOUTS),
        default=defaults.latency_buckets,
        help="the latency histograms' bounds: fine (the test suite's) or coarse (what real "
        "exporters send)",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="sample the controller with this py-spy after each window",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="a profiling run: the first controller traces its allocations (slower)",
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="write bench/results only, not the README block"
    )
    parser.add_argument(
        "--rerender",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: write the results and the README block again from the figures "
        "of an earlier run's JSON (after a change to how they are judged or shown)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results directory (default bench/results)"
    )
    args = parser.parse_args(argv)
    if args.rerender is not None:
        return _rerender(args.rerender, readme=not args.no_readme, out=args.out)
    options = replace(
        defaults,
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        **{name: getattr(args, name) for name in NUMBER_OPTIONS},
        work_dir=args.work_dir,
        latency_buckets=args.latency_buckets,
        py_spy=args.py_spy,
        tracemalloc=args.tracemalloc,
    )
    load_before = _uptime()
    started = time.monotonic()
    results = run(options, log=lambda line: print(line, flush=True))
    elapsed = time.monotonic() - started
    load = (load_before, _uptime())
    markdown, block = render(results, options, elapsed=elapsed, load=load)
    data = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "elapsed_seconds": elapsed,
        "load": list(load),
        "sizes": [asdict(r) for r in results],
    }
    kwargs: dict[str, Any] = {} if args.out is None else {"results": args.out}
    path = report.write_results(
        "scale", markdown, data, readme_block=None if args.no_readme else block, **kwargs
    )
    print(f"wrote {path}")
    print(block)
    return 0 if all(not r.missing() for r in results) else 1


def _rerender(path: Path, *, readme: bool, out: Path | None) -> int:
    """The results and the README block again from ``path`` (a run's JSON): the figures
    are the run's, its date and load too; only how they are judged and shown is today's."""
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Options)}
    raw = {k: v for k, v in data["options"].items() if k in known}
    raw["sizes"] = tuple(raw["sizes"])
    raw.setdefault("latency_buckets", "fine")  # every run before the option had 98 buckets
    for name in ("work_dir", "py_spy"):
        raw[name] = None if raw.get(name) in (None, "None") else Path(raw[name])
    options = Options(**raw)
    results = [SizeResult(**size) for size in data["sizes"]]
    load = data.get("load")
    if load is None:  # a run from before the load was kept: read it from its Markdown
        found = re.search(r"before: (.*?); after: (.*?)\.\n", path.with_suffix(".md").read_text())
        load = [found.group(1), found.group(2)] if found else ["not recorded", "not recorded"]
    markdown, block = render(
        results,
        options,
        elapsed=float(data["elapsed_seconds"]),
        load=(load[0], load[1]),
        when=str(data["measured_at"])[:10],
    )
    kept = {k: v for k, v in data.items() if k != "machine"}
    kept["load"] = list(load)
    kwargs: dict[str, Any] = {} if out is None else {"results": out}
    written = report.write_results(
        "scale", markdown, kept, readme_block=block if readme else None, **kwargs
    )
    print(f"wrote {written}")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
