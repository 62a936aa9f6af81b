"""The rollout engine against a real audit database (SQLite, and PostgreSQL for the cases
that matter most) with the cluster faked: one InferenceService whose traffic view the
test controls, a router that records every write, a fake clock and a claimed leader epoch.

What is checked is what an operator or an auditor would see: the audit records and their
order, the stored rollout, and which traffic writes reached the cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import uuid4

import pytest

from analysis import CheckDefinition, CheckMemory, Outcome, StepAnalysis, Subject
from analysis.looks import LookSource
from analysis.runner import Analyzer
from canary.admission import ModelChange
from canary.analysis_worker import AnalysisRunner, CircuitBreaker
from canary.audit import (
    MANUAL_LINKED,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    AuditStore,
    CommandRow,
    CommandState,
    Fence,
    FencedOut,
    RolloutRow,
    StoreUnavailable,
    upgrade_to_head,
)
from canary.audit.actors import approval_snapshot
from canary.audit.records import format_timestamp
from canary.engine import Engine, RolloutAnalyzer, RolloutDocument
from canary.entries import admitted_entry
from canary.k8s.client import Conflict, KubeClient, KubeError, NotFound, ResourceKind, Unavailable
from canary.metrics import ControllerMetrics
from canary.model import Revision, SetTraffic, TrafficView
from canary.policy import PolicySet, RolloutPolicy
from canary.routing.base import Observed, TrafficRouter
from tests.conftest import Database
from tests.unit.test_controller_metrics import value
from tests.unit.test_looks import FakePrometheus
from tests.unit.test_looks import Revision as Served


def metrics_value(metrics: ControllerMetrics, metric: str, *where: str) -> float | None:
    labels = dict(zip(("namespace", "name"), where, strict=False))
    return value(metrics, metric, **labels)


pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LEASE = "kserve-canary-leader"
NS, NAME = "fraud", "scorer"
R1, R2 = "scorer-predictor-00001", "scorer-predictor-00002"
URI1, URI2 = "s3://models/scorer/v1", "s3://models/scorer/v2"
OPTED_IN = {"kserve-canary.io/enabled": "true"}
READY_TIMEOUT = timedelta(minutes=2)

POLICY = RolloutPolicy.model_validate(
    {
        "name": "default",
        "steps": [10, 50, 100],
        "stepHold": "30s",
        "analysisInterval": "10s",
        "revisionReadyTimeout": "2m",
        "trafficTimeout": "1m",
    }
)
POLICIES = PolicySet([POLICY], {"default": "test"})


# ---------------------------------------------------------------------------------------
# Fakes
# ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class ControllerKilled(BaseException):
    """The process dies in the middle of a traffic write (SIGKILL, OOM)."""


def steady_view() -> TrafficView:
    """KServe with one model, fully rolled out: nothing to do."""
    return TrafficView(
        latest=Revision(R1, URI1),
        stable=Revision(R1, URI1),
        split={R1: 100},
        spec_percent=100,
        converged=True,
        latest_ready=True,
    )


def new_revision_view(spec_percent: int = 100) -> TrafficView:
    """KServe right after a model change: a new latest revision next to the stable one.
    A change without a percent commands 100 % for the new revision (Knative's unset)."""
    share = spec_percent if spec_percent < 100 else 0
    return TrafficView(
        latest=Revision(R2, URI2),
        stable=Revision(R1, URI1),
        split={R2: share, R1: 100 - share},
        spec_percent=spec_percent,
        converged=True,
        latest_ready=True,
    )


@dataclass
class Cluster:
    """One InferenceService as the apiserver and KServe report it. Every write bumps the
    resourceVersion; KServe converges a commanded split at once."""

    view: TrafficView
    annotations: dict[str, str] = field(default_factory=lambda: dict(OPTED_IN))
    uid: str = "uid-1"
    generation: int = 1
    resource_version: int = 100
    exists: bool = True
    managed: list[dict[str, Any]] = field(default_factory=list)  # metadata.managedFields

    def isvc(self) -> dict[str, Any]:
        if not self.exists:
            raise NotFound(
                404, "NotFound", f'inferenceservices.serving.kserve.io "{NAME}" not found'
            )
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "namespace": NS,
                "name": NAME,
                "uid": self.uid,
                "generation": self.generation,
                "resourceVersion": str(self.resource_version),
                "annotations": dict(self.annotations),
                "managedFields": list(self.managed),
            },
            "spec": {"predictor": {"model": {"storageUri": self.view.latest.storage_uri}}},
            "status": {},
        }

    def write_percent(self, percent: int) -> None:
        view = self.view
        stable = view.stable.name if view.stable else R1
        if percent == 100:  # Knative rolls the latest revision out
            self.view = replace(
                view, stable=view.latest, split={view.latest.name: 100}, spec_percent=100
            )
        else:
            split = {view.latest.name: percent, stable: 100 - percent}
            self.view = replace(view, split=split, spec_percent=percent)
        self.generation += 1
        self.resource_version += 1


class FakeKube:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        assert (namespace, name) == (NS, NAME)
        return self.cluster.isvc()


class FakeRouter:
    """Observes the cluster and records every write attempt; ``failures`` are raised by the
    next writes, in order, before anything reaches the cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.attempts: list[SetTraffic] = []
        self.written: list[SetTraffic] = []
        self.starts: list[tuple[str, int]] = []
        self.failures: list[BaseException] = []
        self.probe: Callable[[SetTraffic], None] | None = None

    def observe(self, namespace: str, name: str) -> Observed:
        isvc = self.cluster.isvc()
        meta = isvc["metadata"]
        return Observed(
            namespace=namespace,
            name=name,
            view=self.cluster.view,
            uid=meta["uid"],
            generation=meta["generation"],
            resource_version=meta["resourceVersion"],
            mode="Knative",
            storage_uri=self.cluster.view.latest.storage_uri,
        )

    def start(
        self, namespace: str, name: str, storage_uri: str, percent: int, *, resource_version: str
    ) -> Observed:
        if self.failures:
            raise self.failures.pop(0)
        self.starts.append((storage_uri, percent))
        return self.observe(namespace, name)

    def apply(
        self, namespace: str, name: str, action: SetTraffic, *, resource_version: str | None
    ) -> None:
        self.attempts.append(action)
        if self.probe is not None:
            self.probe(action)
        if self.failures:
            raise self.failures.pop(0)
        if not self.cluster.exists:
            raise NotFound(404, "NotFound", "gone")
        if resource_version is not None and resource_version != str(self.cluster.resource_version):
            raise Conflict(409, "Conflict", "the object has been modified")
        self.written.append(action)
        self.cluster.write_percent(action.percent)


class FailingAnalyzer:
    """Prometheus says the canary is bad."""

    def __init__(self) -> None:
        self.calls = 0

    looks = None

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
        self.calls += 1
        return StepAnalysis(
            evaluated_at=at,
            evaluations=(),
            verdict=Outcome.FAILED,
            sufficient_data=True,
            fast_fail=True,
            summary="latency-p99 failed: p99 0.216s vs baseline 0.041s",
            memory={},
        )


class FlakyStore(AuditStore):
    """The real store, whose writes fail while ``down`` is set (the database went away)."""

    down = False

    def commit(
        self,
        entries: Sequence[AuditEntry],
        *,
        fence: Fence | None = None,
        rollout: RolloutRow | None = None,
        expected_version: int | None = None,
        command: tuple[str, CommandState, str, datetime] | None = None,
        approvals: Sequence[ApprovalRow] = (),
    ) -> list[AuditRecord]:
        if self.down:
            raise StoreUnavailable("database audit.db unavailable: connection refused")
        return super().commit(
            entries,
            fence=fence,
            rollout=rollout,
            expected_version=expected_version,
            command=command,
            approvals=approvals,
        )


# ---------------------------------------------------------------------------------------
# The rig
# ---------------------------------------------------------------------------------------


@dataclass
class Rig:
    store: AuditStore
    cluster: Cluster
    clock: Clock
    router: FakeRouter
    engine: Engine
    fence: Fence

    def leader(
        self, holder: str, epoch: int, analyzer: RolloutAnalyzer | None = None
    ) -> tuple[Engine, FakeRouter]:
        """Another controller process on the same database and cluster, leading at
        ``epoch`` (it claims the epoch first, as a new leader does)."""
        assert self.store.claim_epoch(LEASE, holder, epoch, self.clock())
        fence = Fence(LEASE, holder, epoch)
        router = FakeRouter(self.cluster)
        return engine_for(self.store, self.cluster, router, self.clock, fence, analyzer), router

    def actions(self) -> list[str]:
        return [r.entry.action for r in self.store.records()]

    def records(self, action: str) -> list[AuditEntry]:
        return [r.entry for r in self.store.records() if r.entry.action == action]

    def last_rollout(self) -> RolloutRow:
        row = self.store.last_rollout_for(NS, NAME)
        assert row is not None
        return row

    def command(self, command: str, **args: str) -> CommandRow:
        return self.store.submit_command(
            CommandRow(
                id=str(uuid4()),
                namespace=NS,
                name=NAME,
                command=command,
                actor="alice@bank.example",
                reason="ticket OPS-42",
                args=dict(args),
                requested_at=self.clock(),
            )
        )

    def to_first_step(self) -> None:
        """A new revision: the rollout starts, writes 10 % and sees it in the status."""
        self.cluster.view = new_revision_view()
        self.engine.reconcile(NS, NAME)
        self.clock.advance(1)
        self.engine.reconcile(NS, NAME)


def engine_for(
    store: AuditStore,
    cluster: Cluster,
    router: FakeRouter,
    clock: Clock,
    fence: Fence,
    analyzer: RolloutAnalyzer | None = None,
) -> Engine:
    return Engine(
        store=store,
        kube=cast(KubeClient, FakeKube(cluster)),
        routers={"knative": cast(TrafficRouter, router)},
        policies=lambda: POLICIES,
        leadership=lambda: fence,
        clock=clock,
        instance=fence.holder,
        analyzer=analyzer,
    )


def make_rig(store: AuditStore, analyzer: RolloutAnalyzer | None = None) -> Rig:
    clock = Clock(T0)
    assert store.claim_epoch(LEASE, "pod-a", 1, T0)
    fence = Fence(LEASE, "pod-a", 1)
    cluster = Cluster(view=steady_view())
    router = FakeRouter(cluster)
    engine = engine_for(store, cluster, router, clock, fence, analyzer)
    return Rig(store, cluster, clock, router, engine, fence)


@pytest.fixture
def lite_store(sqlite_database: Database) -> Iterator[AuditStore]:
    """A migrated SQLite audit database (the cases not repeated on PostgreSQL)."""
    upgrade_to_head(sqlite_database.url)
    with AuditStore.from_url(sqlite_database.url) as audit_store:
        yield audit_store


@pytest.fixture
def flaky_store(sqlite_database: Database) -> Iterator[FlakyStore]:
    upgrade_to_head(sqlite_database.url)
    audit_store = FlakyStore.from_url(sqlite_database.url)
    assert isinstance(audit_store, FlakyStore)
    with audit_store:
        yield audit_store


# ---------------------------------------------------------------------------------------
# Starting a rollout (both backends)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_percent", "actions", "written", "phase"),
    [
        pytest.param(
            100,
            ["rollout.started", "traffic.intent", "traffic.applied"],
            [SetTraffic(R2, 10, "start")],
            "Pending",
            id="model-changed-without-a-percent",
        ),
        pytest.param(
            10,
            ["rollout.started", "traffic.shifted"],
            [],
            "Progressing",
            id="webhook-already-set-the-first-step",
        ),
    ],
)
def test_a_new_revision_starts_a_rollout_and_audits_the_intent_before_writing(
    store: AuditStore,
    spec_percent: int,
    actions: list[str],
    written: list[SetTraffic],
    phase: str,
) -> None:
    rig = make_rig(store)
    rig.cluster.view = new_revision_view(spec_percent)
    at_write: list[list[str]] = []
    rig.router.probe = lambda _: at_write.append(rig.actions())

    wake = rig.engine.reconcile(NS, NAME)

    assert rig.actions() == actions
    assert rig.router.written == written
    row = rig.last_rollout()
    assert (row.phase, row.canary_revision, row.stable_revision) == (phase, R2, R1)
    assert row.active
    assert row.state["pending"] == []
    started = rig.records("rollout.started")[0]
    assert started.actor == Actor("controller", "pod-a")
    assert started.leader_epoch == 1
    assert started.evidence["revision"] == R2
    assert started.evidence["storage_uri"] == URI2
    assert started.evidence["first_percent"] == 10  # a number, as it was decided
    if written:
        # The intent was durable when the write happened, and nothing claimed success yet.
        assert at_write == [["rollout.started", "traffic.intent"]]
        (intent,) = rig.records("traffic.intent")
        (applied,) = rig.records("traffic.applied")
        assert intent.correlation_id is not None
        assert applied.correlation_id == intent.correlation_id
        assert intent.traffic_before == {R2: 0, R1: 100}
        assert intent.traffic_after == {R2: 10, R1: 90}
        assert wake == T0 + READY_TIMEOUT  # waiting for the status to show 10 %
        assert row.next_check_at == wake
    else:
        assert at_write == []


def test_the_same_revision_already_serving_is_not_a_rollout(lite_store: AuditStore) -> None:
    rig = make_rig(lite_store)  # latest == stable: nothing new deployed

    assert rig.engine.reconcile(NS, NAME) is None

    assert rig.actions() == []
    assert rig.store.last_rollout_for(NS, NAME) is None
    assert rig.router.attempts == []


# ---------------------------------------------------------------------------------------
# Nothing moves without a durable, fenced intent
# ---------------------------------------------------------------------------------------


def _deploy_new_revision(rig: Rig) -> None:
    rig.cluster.view = new_revision_view()


def _reconcile(rig: Rig) -> None:
    rig.engine.reconcile(NS, NAME)


def _abort_queued(rig: Rig) -> None:
    """At the first step, with an abort queued (queuing records who asked for it)."""
    rig.to_first_step()
    rig.command("abort")


def _abort(rig: Rig) -> None:
    """Carry out the queued abort (queued now if there is none yet)."""
    queued = rig.store.pending_commands() or [rig.command("abort")]
    rig.engine.run_command(queued[0])


@pytest.mark.parametrize(
    ("before", "act"),
    [
        pytest.param(_deploy_new_revision, _reconcile, id="a-new-revision"),
        pytest.param(_abort_queued, _abort, id="an-abort-command"),
    ],
)
def test_an_unreachable_database_means_no_traffic_change(
    flaky_store: FlakyStore,
    before: Callable[[Rig], None],
    act: Callable[[Rig], None],
) -> None:
    rig = make_rig(flaky_store)
    before(rig)
    records_before = rig.actions()
    writes_before = list(rig.router.attempts)
    view_before = rig.cluster.view
    flaky_store.down = True

    with pytest.raises(StoreUnavailable, match="unavailable"):
        act(rig)

    assert rig.router.attempts == writes_before
    assert rig.cluster.view == view_before
    assert rig.actions() == records_before
    flaky_store.down = False  # the database is back: the same work goes through
    act(rig)
    assert len(rig.router.written) == len(writes_before) + 1
    assert [a for a in rig.actions() if a.startswith("traffic.")][-2:] == [
        "traffic.intent", "traffic.applied"
    ]  # fmt: skip
    assert rig.actions()[-1] == "traffic.applied"
    assert rig.store.pending_commands() == []  # a command queued meanwhile is carried out


def _drifted(rig: Rig) -> None:
    """Progressing at 10 %, then someone edits the percent by hand: a reassert is due."""
    rig.to_first_step()
    rig.cluster.view = replace(rig.cluster.view, spec_percent=30)
    rig.cluster.resource_version += 1


def _crashed_mid_write(rig: Rig) -> None:
    """The rollout's first write was interrupted: its intent is committed, not applied."""
    rig.cluster.view = new_revision_view()
    rig.router.failures.append(ControllerKilled())
    with pytest.raises(ControllerKilled):
        rig.engine.reconcile(NS, NAME)


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(_deploy_new_revision, id="a-new-revision"),
        pytest.param(_drifted, id="a-traffic-drift-to-put-back"),
        pytest.param(_crashed_mid_write, id="an-intent-left-unapplied"),
    ],
)
def test_a_deposed_leader_is_fenced_out_before_it_touches_traffic(
    store: AuditStore, before: Callable[[Rig], None]
) -> None:
    rig = make_rig(store)
    before(rig)
    traffic_before = (rig.cluster.view.spec_percent, rig.cluster.resource_version)
    writes_before = list(rig.router.attempts)
    written_before = len(rig.router.written)
    records_before = rig.actions()
    rig.leader("pod-b", 2)  # another replica won the Lease and claimed a higher epoch

    with pytest.raises(FencedOut, match="epoch 2 held by 'pod-b'"):
        rig.engine.reconcile(NS, NAME)

    # pod-a changed nothing after losing: no write reached the cluster, and the audit
    # trail (which has no record of any such write) is unchanged.
    assert (rig.cluster.view.spec_percent, rig.cluster.resource_version) == traffic_before, (
        f"the deposed leader wrote {rig.router.written[written_before:]} to the cluster"
    )
    assert rig.router.attempts == writes_before
    assert rig.actions() == records_before


# ---------------------------------------------------------------------------------------
# The outbox: intents without an outcome
# ---------------------------------------------------------------------------------------


def test_a_write_interrupted_by_a_crash_is_replayed_once_by_the_next_leader(
    store: AuditStore,
) -> None:
    rig = make_rig(store)
    _crashed_mid_write(rig)

    (intent,) = rig.records("traffic.intent")
    assert rig.records("traffic.applied") == []
    assert rig.cluster.view.spec_percent == 100  # the write never reached the cluster
    row = rig.last_rollout()
    assert [p["correlation_id"] for p in row.state["pending"]] == [intent.correlation_id]
    assert row.next_check_at == T0  # due at once: a restarted leader replays it first

    rig.clock.advance(20)
    engine, router = rig.leader("pod-b", 2)  # the restarted controller
    engine.reconcile(NS, NAME)

    assert router.written == [SetTraffic(R2, 10, "start")]
    (applied,) = rig.records("traffic.applied")
    assert applied.correlation_id == intent.correlation_id
    assert applied.leader_epoch == 2
    assert applied.actor == Actor("controller", "pod-b")
    assert rig.last_rollout().state["pending"] == []
    assert rig.last_rollout().phase == "Progressing"  # and it saw the 10 % in the status

    for _ in range(3):
        rig.clock.advance(5)
        engine.reconcile(NS, NAME)
    assert router.attempts == [SetTraffic(R2, 10, "start")]  # never written twice
    assert len(rig.records("traffic.intent")) == 1
    assert len(rig.records("traffic.applied")) == 1


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(Conflict(409, "Conflict", "the object has been modified"), id="409"),
        pytest.param(Unavailable(503, "ServiceUnavailable", "apiserver is restarting"), id="503"),
    ],
)
def test_a_refused_write_stays_pending_and_is_retried_with_backoff(
    store: AuditStore, error: KubeError
) -> None:
    rig = make_rig(store)
    rig.cluster.view = new_revision_view()
    rig.router.failures = [error, error]

    wake = rig.engine.reconcile(NS, NAME)

    (intent,) = rig.records("traffic.intent")
    assert rig.records("traffic.applied") == []
    assert rig.records("traffic.failed") == []
    row = rig.last_rollout()
    (pending,) = row.state["pending"]
    assert pending["correlation_id"] == intent.correlation_id
    assert pending["attempts"] == 1
    assert error.message in pending["last_error"]
    assert wake == T0 + timedelta(seconds=1)  # the first retry after a second
    assert row.next_check_at == wake

    rig.clock.now = wake
    wake = rig.engine.reconcile(NS, NAME)
    assert wake == rig.clock() + timedelta(seconds=2)  # doubling
    assert rig.last_rollout().next_check_at == wake
    assert rig.last_rollout().state["pending"][0]["attempts"] == 2

    rig.clock.now = wake
    rig.engine.reconcile(NS, NAME)
    assert rig.router.written == [SetTraffic(R2, 10, "start")]
    (applied,) = rig.records("traffic.applied")
    assert applied.correlation_id == intent.correlation_id
    assert applied.evidence["attempts"] == 3
    assert rig.last_rollout().state["pending"] == []
    assert len(rig.router.attempts) == 3


# ---------------------------------------------------------------------------------------
# How rollouts end, and stay ended
# ---------------------------------------------------------------------------------------


def _deleted(cluster: Cluster) -> None:
    cluster.exists = False


def _recreated(cluster: Cluster) -> None:
    cluster.uid = "uid-2"  # deleted and created again under the same name
    cluster.generation = 1


@pytest.mark.parametrize(
    "change",
    [pytest.param(_deleted, id="deleted"), pytest.param(_recreated, id="recreated")],
)
def test_an_inference_service_deleted_mid_rollout_fails_it_without_a_write(
    lite_store: AuditStore, change: Callable[[Cluster], None]
) -> None:
    rig = make_rig(lite_store)
    rig.to_first_step()
    assert rig.last_rollout().phase == "Progressing"
    writes_before = list(rig.router.attempts)
    change(rig.cluster)
    rig.clock.advance(3)

    assert rig.engine.reconcile(NS, NAME) is None  # no timer for a finished rollout

    row = rig.last_rollout()
    assert (row.phase, row.active, row.next_check_at) == ("Failed", False, None)
    assert rig.store.rollout_for(NS, NAME) is None
    (failed,) = rig.records("rollout.failed")
    assert failed.reason == "the InferenceService was deleted during the rollout"
    assert rig.actions()[-1] == "rollout.failed"
    assert rig.router.attempts == writes_before


def _abort_and_settle(rig: Rig) -> None:
    rig.to_first_step()
    rig.engine.run_command(rig.command("abort"))
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)  # the status shows 0 %: Aborted


def _fail_analysis_and_settle(rig: Rig) -> None:
    rig.to_first_step()  # the first analysis fails at once and rolls back
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)  # the status shows 0 %: RolledBack


@pytest.mark.parametrize(
    ("analyzer", "end", "phase", "ending"),
    [
        pytest.param(None, _abort_and_settle, "Aborted", "manual.abort", id="aborted-by-a-human"),
        pytest.param(
            FailingAnalyzer,
            _fail_analysis_and_settle,
            "RolledBack",
            "analysis.evaluated",
            id="failed-analysis",
        ),
    ],
)
def test_a_rolled_back_revision_does_not_get_a_second_rollout(
    lite_store: AuditStore,
    analyzer: type[FailingAnalyzer] | None,
    end: Callable[[Rig], None],
    phase: str,
    ending: str,
) -> None:
    rig = make_rig(lite_store, analyzer=analyzer() if analyzer else None)
    end(rig)
    row = rig.last_rollout()
    assert (row.phase, row.active) == (phase, False)
    assert ending in rig.actions()
    assert rig.router.written == [SetTraffic(R2, 10, "start"), SetTraffic(R2, 0, "rollback")]
    # Knative keeps the rolled-back model as its latest revision, at 0 %.
    assert rig.cluster.view.latest.name == R2
    assert rig.cluster.view.stable == Revision(R1, URI1)
    records_before = rig.actions()

    for _ in range(3):
        rig.clock.advance(30)
        assert rig.engine.reconcile(NS, NAME) is None

    assert rig.actions() == records_before
    assert len(rig.store.rollouts(namespace=NS, name=NAME)) == 1
    assert len(rig.router.attempts) == 2


# ---------------------------------------------------------------------------------------
# Bad opt-ins
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "problem"),
    [
        pytest.param(
            {"kserve-canary.io/enabled": "yes"},
            "malformed kserve-canary annotation: kserve-canary.io/enabled: got 'yes'; "
            'allowed: "true" or "false"',
            id="malformed-enabled",
        ),
        pytest.param(
            {"kserve-canary.io/enabled": "true", "kserve-canary.io/policy": "fraud-scoring"},
            "policy 'fraud-scoring': unknown policy 'fraud-scoring'; known policies: default",
            id="unknown-policy",
        ),
    ],
)
def test_a_bad_opt_in_is_audited_once_per_generation_and_changes_nothing(
    lite_store: AuditStore, annotations: dict[str, str], problem: str
) -> None:
    rig = make_rig(lite_store)
    rig.cluster.view = new_revision_view()
    rig.cluster.annotations = annotations

    for _ in range(3):  # resyncs and timers see the same object again and again
        assert rig.engine.reconcile(NS, NAME) is None
        rig.clock.advance(60)

    (invalid,) = rig.records("policy.invalid")
    assert invalid.reason == problem
    assert invalid.actor == Actor("controller", "pod-a")
    assert invalid.obj is not None
    assert (invalid.obj.namespace, invalid.obj.name, invalid.obj.generation) == (NS, NAME, 1)
    assert rig.store.last_rollout_for(NS, NAME) is None
    assert rig.router.attempts == []

    rig.cluster.generation = 2  # the owner edits the object (still wrong): reported again
    rig.engine.reconcile(NS, NAME)
    assert len(rig.records("policy.invalid")) == 2
    assert rig.router.attempts == []


# ---------------------------------------------------------------------------------------
# Who started a rollout, linked in the chain
# ---------------------------------------------------------------------------------------


def test_a_start_command_and_the_rollout_it_causes_name_each_other(
    db: Database, store: AuditStore
) -> None:
    rig = make_rig(store)
    queued = rig.command("start", storage_uri=URI2)
    assert rig.engine.run_command(queued)[0] == "accepted"
    chained = rig.store.command_records(queued)
    requested, settled = chained["manual.requested"], chained["manual.settled"]
    assert settled.entry.rollout_id is None, "settled when the model is written: no rollout yet"
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(10)
    # whoever edits the queue afterwards does not change who started it
    db.query("UPDATE commands SET actor = ? WHERE id = ?", ("mallory@bank.example", queued.id))

    rig.engine.reconcile(NS, NAME)

    rollout = rig.last_rollout()
    assert RolloutDocument.from_row(rollout).state.started_by == "alice@bank.example"
    (started,) = rig.records("rollout.started")
    assert {k: started.evidence[k] for k in (
        "command_id", "command_requested_seq", "command_settled_seq", "started_by"
    )} == {
        "command_id": queued.id, "command_requested_seq": requested.seq,
        "command_settled_seq": settled.seq, "started_by": "alice@bank.example",
    }  # fmt: skip
    (linked,) = rig.records(MANUAL_LINKED)
    assert (linked.correlation_id, linked.rollout_id) == (queued.id, rollout.id)
    assert linked.evidence == {
        "command_id": queued.id, "command_requested_seq": requested.seq,
        "command_settled_seq": settled.seq, "rollout_id": rollout.id,
    }  # fmt: skip
    # from the command, its correlation id leads to the rollout
    ours = [r.entry.action for r in rig.store.records() if r.entry.correlation_id == queued.id]
    assert ours == ["manual.requested", "manual.settled", MANUAL_LINKED]
    assert rig.store.verify().ok
    (edited,) = rig.store.crosscheck()  # and the edit itself is named
    assert (edited.key, edited.kind, edited.seq) == (queued.id, "edited", requested.seq)
    assert "actor is 'mallory@bank.example' in the table but 'alice@bank.example'" in (
        edited.problem
    )


def test_a_rollout_started_by_an_admitted_model_change_names_its_record(
    lite_store: AuditStore,
) -> None:
    rig = make_rig(lite_store)
    change = ModelChange(
        namespace=NS, name=NAME, uid="uid-1", storage_uris=(URI2,),
        username="system:serviceaccount:argocd:argocd-application-controller",
        user_uid="sa-1", groups=("system:serviceaccounts",), admission_uid="adm-1",
        previous_uris=(URI1,), changes=(f"spec.predictor: {URI1} -> {URI2}",),
    )  # fmt: skip
    (admitted,) = rig.store.commit([admitted_entry(change, rig.clock())])
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(10)

    rig.engine.reconcile(NS, NAME)

    (started,) = rig.records("rollout.started")
    assert started.evidence["model_change_seq"] == admitted.seq
    assert started.evidence["started_by"] == change.username
    assert "command_id" not in started.evidence
    assert rig.records(MANUAL_LINKED) == []


# ---------------------------------------------------------------------------------------
# Manual commands
# ---------------------------------------------------------------------------------------

ALICE = Actor("human", "alice@bank.example")


@pytest.mark.parametrize(
    ("before", "command", "state", "result", "audited", "written", "phase"),
    [
        pytest.param(
            [], "pause", "accepted", "fraud/scorer paused at 10%",
            ["manual.pause"], [], "Paused", id="pause",
        ),
        pytest.param(
            ["pause"], "resume", "accepted", "fraud/scorer resumed (Progressing)",
            ["manual.resume"], [], "Progressing", id="resume",
        ),
        pytest.param(
            [], "promote", "accepted", f"fraud/scorer: promoting {R2} to 100%",
            ["manual.promote", "rollout.promoting", "traffic.intent", "traffic.applied"],
            [SetTraffic(R2, 100, "promote")], "Promoting", id="promote",
        ),
        pytest.param(
            [], "abort", "accepted", f"fraud/scorer: rolling back {R2} to 0% (aborted)",
            ["manual.abort", "rollout.rolling_back", "traffic.intent", "traffic.applied"],
            [SetTraffic(R2, 0, "rollback")], "RollingBack", id="abort",
        ),
        pytest.param(
            [], "resume", "rejected", "the rollout is not paused (phase Progressing)",
            ["manual.rejected"], [], "Progressing", id="resume-refused",
        ),
        pytest.param(
            ["pause"], "pause", "rejected", "the rollout is already paused",
            ["manual.rejected"], [], "Paused", id="pause-refused",
        ),
    ],
)  # fmt: skip
def test_manual_commands_are_settled_with_the_audit_records_they_cause(
    lite_store: AuditStore,
    before: list[str],
    command: str,
    state: CommandState,
    result: str,
    audited: list[str],
    written: list[SetTraffic],
    phase: str,
) -> None:
    rig = make_rig(lite_store)
    rig.to_first_step()
    for earlier in before:
        assert rig.engine.run_command(rig.command(earlier))[0] == "accepted"
    mark = rig.store.head()[0]
    writes_before = len(rig.router.written)
    queued = rig.command(command)

    assert rig.engine.run_command(queued) == (state, result)

    settled = rig.store.get_command(queued.id)
    assert settled is not None
    assert (settled.state, settled.result) == (state, result)
    new = [r.entry for r in rig.store.records(after_seq=mark)]
    # asked (queued), decided and settled in one commit, then the write's outcome
    committed = audited[:-1] if written else audited
    assert [e.action for e in new] == [
        "manual.requested",
        *committed,
        "manual.settled",
        *audited[len(committed) :],
    ]
    requested, *caused = new
    assert requested.actor == ALICE
    assert requested.correlation_id == queued.id
    assert requested.evidence == {
        "command_id": queued.id, "command": command, "args": {}, "reason": "ticket OPS-42",
        "requested_at": format_timestamp(queued.requested_at),
    }  # fmt: skip
    (settle,) = [e for e in caused if e.action == "manual.settled"]
    assert settle.actor == Actor("controller", "pod-a")
    assert (settle.correlation_id, settle.rollout_id) == (queued.id, rig.last_rollout().id)
    assert {k: settle.evidence[k] for k in ("command_id", "state", "result")} == {
        "command_id": queued.id, "state": state, "result": result,
    }  # fmt: skip
    decided = [e for e in caused if e.action != "manual.settled"]
    assert decided[0].actor == ALICE
    assert decided[0].reason == (result if state == "rejected" else "ticket OPS-42")
    assert rig.router.written[writes_before:] == written
    assert rig.last_rollout().phase == phase
    if written:
        assert decided[-1].correlation_id == decided[-2].correlation_id


@pytest.mark.parametrize(
    ("history", "result"),
    [
        pytest.param(None, "no active rollout for fraud/scorer", id="never-rolled-out"),
        pytest.param(
            _abort_and_settle,
            "no active rollout for fraud/scorer (the last one ended Aborted)",
            id="after-an-abort",
        ),
    ],
)
def test_a_command_for_a_service_without_a_rollout_is_rejected_by_name(
    lite_store: AuditStore, history: Callable[[Rig], None] | None, result: str
) -> None:
    rig = make_rig(lite_store)
    if history is not None:
        history(rig)
    writes_before = list(rig.router.attempts)
    queued = rig.command("pause")

    assert rig.engine.run_command(queued) == ("rejected", result)

    settled = rig.store.get_command(queued.id)
    assert settled is not None
    assert (settled.state, settled.result) == ("rejected", result)
    rejected = rig.records("manual.rejected")[-1]
    assert (rejected.actor, rejected.reason) == (ALICE, result)
    assert rig.router.attempts == writes_before


def test_a_start_whose_write_conflicts_stays_pending_and_is_carried_out_when_run_again(
    lite_store: AuditStore,
) -> None:
    """KServe writes the InferenceService's status all the time, so the version a start
    command read may be gone when it writes: that is no reason to fail the command."""
    rig = make_rig(lite_store)
    queued = rig.command("start", storage_uri=URI2)
    rig.router.failures = [Conflict(409, "Conflict", "the object has been modified")]

    with pytest.raises(Conflict):  # the controller runs the command again after a backoff
        rig.engine.run_command(queued)

    pending = rig.store.get_command(queued.id)
    assert pending is not None
    assert pending.state == "pending"
    assert rig.router.starts == []
    (conflicted,) = rig.records("traffic.failed")
    assert "changed since it was read" in (conflicted.reason or "")
    state, _ = rig.engine.run_command(pending)
    assert state == "accepted"
    assert rig.router.starts == [(URI2, 10)]
    settled = rig.store.get_command(queued.id)
    assert settled is not None
    assert settled.state == "accepted"
    ours = [a for a in rig.actions() if a.startswith("traffic.")]
    assert ours == ["traffic.intent", "traffic.failed", "traffic.intent", "traffic.applied"]


def test_rollout_start_for_a_service_not_opted_in_is_rejected_and_writes_nothing(
    lite_store: AuditStore,
) -> None:
    rig = make_rig(lite_store)
    rig.cluster.annotations = {}
    queued = rig.command("start", storage_uri="s3://models/scorer/v3")

    state, result = rig.engine.run_command(queued)

    assert state == "rejected"
    assert result == (
        'fraud/scorer is not opted in: set the annotation kserve-canary.io/enabled: "true" first'
    )
    settled = rig.store.get_command(queued.id)
    assert settled is not None
    assert (settled.state, settled.result) == ("rejected", result)
    assert rig.actions() == ["manual.requested", "manual.rejected", "manual.settled"]
    assert rig.records("manual.rejected")[0].actor == ALICE
    assert rig.router.starts == []
    assert rig.router.attempts == []
    assert rig.cluster.view.latest == Revision(R1, URI1)
    assert rig.store.last_rollout_for(NS, NAME) is None


# ---------------------------------------------------------------------------------------
# The fast path: grouped looks between analysis intervals
# ---------------------------------------------------------------------------------------

LOOK_POLICY = RolloutPolicy.model_validate(
    {
        "name": "default",
        "steps": [10, 50, 100],
        "stepHold": "60s",
        "analysisInterval": "30s",
        "revisionReadyTimeout": "2m",
        "trafficTimeout": "1m",
    }
)


def looks_rig(store: AuditStore, prometheus: FakePrometheus) -> Rig:
    source = LookSource(prometheus, period=timedelta(seconds=5), lag=timedelta(seconds=2),
                        window=timedelta(seconds=60))  # fmt: skip
    rig = make_rig(store, analyzer=Analyzer(prometheus, looks=source))
    rig.engine._policies = lambda: PolicySet([LOOK_POLICY], {"default": "test"})
    return rig


def run_until(rig: Rig, seconds: float) -> None:
    """Call the engine whenever it asks, for ``seconds`` of fake time."""
    end = rig.clock() + timedelta(seconds=seconds)
    while rig.clock() < end:
        wake = rig.engine.reconcile(NS, NAME)
        if wake is None or wake >= end:
            break
        rig.clock.now = max(wake, rig.clock() + timedelta(milliseconds=1))


def test_a_failing_look_between_intervals_rolls_back_at_once(lite_store: AuditStore) -> None:
    healthy, baseline = Served(requests=600, errors=6), Served(requests=5400, errors=54)
    prometheus = FakePrometheus({(NS, R2): healthy, (NS, R1): baseline}, origin=T0)
    rig = looks_rig(lite_store, prometheus)
    rig.to_first_step()  # the step is reached and the first (full) evaluation runs
    (first,) = rig.records("analysis.evaluated")
    assert first.evidence["fast_path"] is False
    prometheus.revisions[(NS, R2)] = Served(requests=600, errors=60)  # 10x the errors
    run_until(rig, 28)  # less than one analysis interval
    rig.clock.advance(1)
    rig.engine.reconcile(NS, NAME)  # the status shows the rollback

    row = rig.last_rollout()
    assert row.phase == "RolledBack"
    evaluations = rig.records("analysis.evaluated")
    assert len(evaluations) == 2  # the quiet looks wrote nothing; the failing one did
    deciding = evaluations[-1]
    assert deciding.evidence["fast_path"] is True
    assert deciding.evidence["verdict"] == "Failed"
    assert (deciding.at - first.at) < timedelta(seconds=30)
    (measurement,) = [m for m in deciding.measurements if m.check == "error-rate"]
    assert measurement.detail["decision"] == "regression"
    assert rig.router.written[-1] == SetTraffic(R2, 0, "rollback")


def test_quiet_looks_keep_the_evidence_without_writing(lite_store: AuditStore) -> None:
    prometheus = FakePrometheus(
        {(NS, R2): Served(requests=600, errors=6), (NS, R1): Served(requests=5400, errors=54)},
        origin=T0,
    )
    rig = looks_rig(lite_store, prometheus)
    rig.to_first_step()  # the step is reached and the first (full) evaluation runs
    run_until(rig, 7)  # the first look that counts: where the evidence starts, written
    written = rig.last_rollout()
    memory = RolloutDocument.from_row(written).memory["error-rate"]
    assert memory.sequential is not None
    assert memory.sequential.looks == 1
    run_until(rig, 22)  # the next full one is due 30 s after the first
    assert len(rig.records("analysis.evaluated")) == 1  # the fast looks are not records
    row = rig.last_rollout()
    assert (row.version, row.updated_at) == (written.version, written.updated_at)  # nor rows
    held = rig.engine._kept.overlay(row.id, RolloutDocument.from_row(row))
    memory = held.memory["error-rate"]
    assert memory.sequential is not None
    assert memory.sequential.looks >= 5  # one per 5 s look since the step was reached
    assert memory.through is not None
    assert rig.clock() - memory.through < timedelta(seconds=8)
    # the next full evaluation writes them, with its record
    run_until(rig, 5)
    assert len(rig.records("analysis.evaluated")) == 2
    stored = RolloutDocument.from_row(rig.last_rollout()).memory["error-rate"]
    assert stored.sequential is not None
    assert stored.sequential.looks >= memory.sequential.looks
    assert len(rig.engine._kept) == 0


def test_looks_lost_with_a_restart_are_read_again_to_the_same_evidence(
    lite_store: AuditStore,
) -> None:
    """A controller that restarts between two evaluations has lost the quiet looks it kept
    in memory; the next one reads the same looks again and holds the same evidence."""
    prometheus = FakePrometheus(
        {(NS, R2): Served(requests=600, errors=6), (NS, R1): Served(requests=5400, errors=54)},
        origin=T0,
    )
    rig = looks_rig(lite_store, prometheus)
    rig.to_first_step()
    run_until(rig, 20)
    row = rig.last_rollout()
    before = rig.engine._kept.overlay(row.id, RolloutDocument.from_row(row))
    rig.engine.stop_leading()  # as a restart or a failover would
    assert len(rig.engine._kept) == 0
    rig.engine.reconcile(NS, NAME)  # at the same time: the lost looks are read again
    row = rig.last_rollout()
    after = rig.engine._kept.overlay(row.id, RolloutDocument.from_row(row))
    for check in ("error-rate",):
        was, now = before.memory[check], after.memory[check]
        assert was.sequential is not None
        assert now.sequential is not None
        assert (now.sequential.looks, now.through) == (was.sequential.looks, was.through), (
            rig.clock(),
            was.through,
            now.through,
        )
        assert now.sequential == was.sequential


# ---------------------------------------------------------------------------------------
# Every rollout is analysed from its first look after its split shows (liveness)
# ---------------------------------------------------------------------------------------


class Collecting:
    """Prometheus has too few samples yet: nothing advances, every evaluation is kept."""

    looks = None

    def __init__(self) -> None:
        self.asked: list[datetime] = []

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
        self.asked.append(at)
        return StepAnalysis(at, (), Outcome.SUCCESSFUL, False, False, "too few samples", {})


def _start_by_command(rig: Rig) -> None:
    """``canary rollout start``: one write sets the model and 10 %; KServe then shows the
    new revision at 10 % at once."""
    state, _ = rig.engine.run_command(rig.command("start", storage_uri=URI2))
    assert state == "accepted"
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(10)


def _start_by_webhook(rig: Rig) -> None:
    """The admission webhook put 10 % into the same write as the model change."""
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(10)


def _start_by_model_change(rig: Rig) -> None:
    """A plain model change (kubectl apply, GitOps): the controller writes 10 % itself,
    and the watch brings the status that shows it a second later."""
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(100)
    rig.engine.reconcile(NS, NAME)
    assert rig.router.written == [SetTraffic(R2, 10, "start")]
    rig.clock.advance(1)


@pytest.mark.parametrize(
    "start",
    [_start_by_command, _start_by_webhook, _start_by_model_change],
    ids=["rollout-start-command", "webhook", "plain-model-change"],
)
def test_every_rollout_is_analysed_as_soon_as_its_split_shows_and_at_every_interval(
    lite_store: AuditStore, start: Callable[[Rig], None]
) -> None:
    analyzer = Collecting()
    rig = make_rig(lite_store, analyzer=analyzer)
    start(rig)
    shown_at = rig.clock()
    wake = rig.engine.reconcile(NS, NAME)  # the reconcile that sees the split
    (_shifted,) = rig.records("traffic.shifted")
    row = rig.last_rollout()
    assert row.phase == "Progressing"
    # Analysed in that very pass, or due at once: not at the end of the step hold (30 s).
    if not analyzer.asked:
        assert wake is not None
        assert wake <= shown_at
        assert row.next_check_at is not None
        assert row.next_check_at <= shown_at
    run_until(rig, 0.5)
    assert analyzer.asked[0] == shown_at
    first = rig.records("analysis.evaluated")[0]
    assert first.measurements == ()
    assert first.evidence["step"] == 0
    # From then on a timer for the next analysis always exists, every analysis interval.
    for _ in range(6):  # a minute, within the step's deadline
        wake = rig.engine.reconcile(NS, NAME)
        assert wake is not None
        doc = RolloutDocument.from_row(rig.last_rollout())
        assert doc.next_analysis_at is not None
        assert wake <= doc.next_analysis_at
        rig.clock.now = max(wake, rig.clock() + timedelta(milliseconds=1))
    gaps = [b - a for a, b in zip(analyzer.asked, analyzer.asked[1:], strict=False)]
    assert gaps
    assert all(gap == POLICY.analysis_interval for gap in gaps)


class HungPrometheus:
    """Every look waits until the test lets it go (a Prometheus that accepts and hangs)."""

    looks = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

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
        self.entered.set()
        self.release.wait(30)
        return StepAnalysis(at, (), Outcome.SUCCESSFUL, True, False, "healthy", {})


def _runner_rig(store: AuditStore, prometheus: HungPrometheus) -> tuple[Rig, AnalysisRunner]:
    rig = make_rig(store, analyzer=prometheus)
    runner = AnalysisRunner(
        prometheus,
        fallback=lambda reason: Collecting(),
        breaker=CircuitBreaker(failures=3, cooldown=timedelta(seconds=30), clock=rig.clock),
        deadline=timedelta(seconds=20),
        clock=rig.clock,
    )
    rig.engine._analysis._runner = runner
    return rig, runner


def test_a_hung_prometheus_holds_up_neither_reconciles_nor_an_abort(
    lite_store: AuditStore,
) -> None:
    prometheus = HungPrometheus()
    rig, runner = _runner_rig(lite_store, prometheus)
    rig.cluster.view = new_revision_view(10)
    started = time.monotonic()
    rig.engine.reconcile(NS, NAME)
    wake = rig.engine.reconcile(NS, NAME)  # the look is asked for, and hangs
    assert prometheus.entered.wait(10)
    assert runner.deadline((NS, NAME)) == rig.clock() + timedelta(seconds=20)
    assert wake is not None
    assert wake <= rig.clock()
    state, result = rig.engine.run_command(rig.command("abort"))
    assert (state, result) == ("accepted", f"{NS}/{NAME}: rolling back {R2} to 0% (aborted)")
    assert rig.router.written[-1] == SetTraffic(R2, 0, "rollback")
    assert time.monotonic() - started < 5  # nothing waited on Prometheus
    assert rig.records("analysis.evaluated") == []
    prometheus.release.set()  # its answer comes too late to matter
    rig.clock.advance(1)
    rig.engine.reconcile(NS, NAME)
    assert rig.last_rollout().phase == "Aborted"
    assert rig.records("analysis.evaluated") == []
    runner.shutdown()


def test_a_look_past_its_deadline_is_recorded_as_an_error_not_a_pass(
    lite_store: AuditStore,
) -> None:
    prometheus = HungPrometheus()
    rig, runner = _runner_rig(lite_store, prometheus)
    rig.cluster.view = new_revision_view(10)
    rig.engine.reconcile(NS, NAME)
    rig.engine.reconcile(NS, NAME)
    assert prometheus.entered.wait(10)
    asked_at = rig.clock()
    rig.clock.advance(20)
    rig.engine.reconcile(NS, NAME)
    (evaluated,) = rig.records("analysis.evaluated")
    assert evaluated.evidence["sufficient_data"] is False  # the fallback's: never a pass
    doc = RolloutDocument.from_row(rig.last_rollout())
    assert doc.state.last_verdict is not None
    assert doc.state.last_verdict.evaluated_at == asked_at
    assert doc.next_analysis_at == asked_at + POLICY.analysis_interval
    prometheus.release.set()
    runner.shutdown()


# ---------------------------------------------------------------------------------------
# After the rollout: drift, hand rollbacks, opt-out (canary.aftercare)
# ---------------------------------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def emit(self, target: Any, reason: Any, message: str, type_: str = "Normal") -> None:
        self.seen.append((str(reason.value), message, type_))


def aftercare_rig(store: AuditStore, policy: dict[str, Any] | None = None) -> tuple[Rig, Events]:
    rig = make_rig(store, analyzer=FailingAnalyzer())
    pinned = RolloutPolicy.model_validate({**POLICY.model_dump(by_alias=True), **(policy or {})})
    events = Events()
    rig.engine = Engine(
        store=store,
        kube=cast(KubeClient, FakeKube(rig.cluster)),
        routers={"knative": cast(TrafficRouter, rig.router)},
        policies=lambda: PolicySet([pinned], {"default": "test"}),
        leadership=lambda: rig.fence,
        clock=rig.clock,
        instance="pod-a",
        analyzer=rig.engine._analysis._analyzer,
        events=events,
    )
    return rig, events


def by_hand(manager: str, at: str = "2026-11-23T10:05:00Z") -> dict[str, Any]:
    """A managedFields entry: ``manager`` set canaryTrafficPercent by an Update."""
    return {
        "manager": manager,
        "operation": "Update",
        "apiVersion": "serving.kserve.io/v1beta1",
        "time": at,
        "fieldsV1": {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}},
    }


def intents_precede_outcomes(rig: Rig) -> None:
    intents: dict[str, int] = {}
    for record in rig.store.records():
        entry = record.entry
        if entry.action == "traffic.intent":
            intents[str(entry.correlation_id)] = record.seq
        elif entry.action in ("traffic.applied", "traffic.failed", "traffic.abandoned"):
            assert intents[str(entry.correlation_id)] < record.seq


@pytest.mark.parametrize("end", [_fail_analysis_and_settle, _abort_and_settle])
@pytest.mark.parametrize("given", [100, 40])
def test_traffic_given_back_to_a_rolled_back_revision_is_recorded_and_reverted(
    lite_store: AuditStore, end: Callable[[Rig], None], given: int
) -> None:
    rig, events = aftercare_rig(lite_store)
    end(rig)
    finished = rig.last_rollout().phase
    mark = rig.store.head()[0]
    # an operator clears (or raises) the percent by hand; the status has not caught up
    rig.cluster.view = replace(rig.cluster.view, spec_percent=given)
    rig.cluster.managed = [by_hand("kserve-canary", "2026-11-23T10:01:00Z"), by_hand("ops-bob")]
    rig.cluster.resource_version += 1
    rig.clock.advance(60)

    assert rig.engine.reconcile(NS, NAME) is None

    new = [r.entry for r in rig.store.records(after_seq=mark)]
    assert [e.action for e in new] == ["traffic.drift", "traffic.intent", "traffic.applied"]
    drift = new[0]
    assert drift.actor == Actor("human", "ops-bob")
    assert dict(drift.evidence)["observed"] == given
    assert dict(drift.evidence)["after"] == finished
    assert new[1].correlation_id == new[2].correlation_id
    assert rig.router.written[-1] == SetTraffic(R2, 0, "rollback")
    assert rig.cluster.view.spec_percent == 0
    row = rig.last_rollout()
    assert (row.phase, row.active) == ("DriftReverted", False)
    assert ("TrafficDrift", "Warning") in [(r, t) for r, _, t in events.seen]
    assert any("ops-bob" in m for r, m, _ in events.seen if r == "TrafficDrift")
    intents_precede_outcomes(rig)

    # the status catches up; nothing more is recorded or written
    writes = len(rig.router.attempts)
    for _ in range(3):
        rig.clock.advance(30)
        rig.engine.reconcile(NS, NAME)
    assert len(rig.router.attempts) == writes
    assert len(rig.store.rollouts(namespace=NS, name=NAME)) == 1


def test_record_only_policy_records_the_drift_and_writes_nothing(lite_store: AuditStore) -> None:
    rig, events = aftercare_rig(lite_store, {"afterRollback": "record"})
    _fail_analysis_and_settle(rig)
    writes = len(rig.router.attempts)
    rig.cluster.view = replace(rig.cluster.view, spec_percent=100)
    rig.clock.advance(60)
    rig.engine.reconcile(NS, NAME)
    rig.engine.reconcile(NS, NAME)  # a resync records nothing new

    assert rig.actions().count("traffic.drift") == 1
    (drift,) = rig.records("traffic.drift")
    assert drift.actor == Actor("unknown", "unknown")  # nobody owns a removed field
    assert len(rig.router.attempts) == writes
    assert rig.last_rollout().phase == "DriftRecorded"
    assert "TrafficDrift" in [r for r, _, _ in events.seen]


def test_a_revert_that_fails_stays_pending_and_is_retried(lite_store: AuditStore) -> None:
    rig, _ = aftercare_rig(lite_store)
    _fail_analysis_and_settle(rig)
    rig.cluster.view = replace(rig.cluster.view, spec_percent=100)
    rig.router.failures.append(Unavailable(503, "Unavailable", "apiserver restarting"))
    rig.clock.advance(60)

    wake = rig.engine.reconcile(NS, NAME)

    assert wake is not None  # the retry is scheduled
    row = rig.last_rollout()
    assert (row.phase, row.active) == ("DriftReverted", True)
    assert row.state["pending"]
    assert rig.cluster.view.spec_percent == 100
    rig.clock.advance(5)
    rig.engine.reconcile(NS, NAME)
    assert rig.cluster.view.spec_percent == 0
    row = rig.last_rollout()
    assert (row.active, row.state["pending"]) == (False, [])
    assert rig.actions().count("traffic.intent") == 3  # start, rollback, the revert
    assert rig.actions()[-1] == "traffic.applied"
    intents_precede_outcomes(rig)


def test_a_hand_rollback_after_a_promotion_is_recorded_with_its_field_manager(
    lite_store: AuditStore,
) -> None:
    rig, events = aftercare_rig(lite_store)
    rig.engine._analysis._analyzer = None
    rig.to_first_step()
    assert rig.engine.run_command(rig.command("promote"))[0] == "accepted"
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)
    assert rig.last_rollout().phase == "Succeeded"
    writes = len(rig.router.attempts)

    rig.cluster.view = replace(rig.cluster.view, spec_percent=0)  # kubectl patch ... 0
    rig.cluster.managed = [by_hand("kubectl-patch")]
    rig.clock.advance(60)
    rig.engine.reconcile(NS, NAME)
    rig.engine.reconcile(NS, NAME)

    (manual,) = rig.records("traffic.manual_rollback")
    assert manual.actor == Actor("human", "kubectl-patch")
    assert dict(manual.evidence)["percent"] == 0
    assert len(rig.router.attempts) == writes  # recorded, not undone
    row = rig.last_rollout()
    assert row.phase == "ManuallyRolledBack"
    doc = RolloutDocument.from_row(row)
    assert "kubectl-patch" in (doc.state.outcome or "")
    assert ("ManualRollback", "Warning") in [(r, t) for r, _, t in events.seen]


@pytest.mark.parametrize("annotations", [{"kserve-canary.io/enabled": "false"}, {}])
@pytest.mark.parametrize("on_opt_out", ["return-to-stable", "leave"])
def test_opting_out_mid_rollout_ends_it_and_stops_managing(
    lite_store: AuditStore, annotations: dict[str, str], on_opt_out: str
) -> None:
    rig, events = aftercare_rig(lite_store, {"onOptOut": on_opt_out})
    rig.engine._analysis._analyzer = None
    rig.to_first_step()
    mark = rig.store.head()[0]
    rig.cluster.annotations = dict(annotations)
    rig.cluster.managed = [
        {
            "manager": "kubectl-annotate",
            "operation": "Update",
            "time": "2026-11-23T10:03:00Z",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:kserve-canary.io/enabled": {}}}},
        }
    ]
    rig.clock.advance(5)

    assert rig.engine.reconcile(NS, NAME) is None

    new = [r.entry for r in rig.store.records(after_seq=mark)]
    row = rig.last_rollout()
    assert (row.phase, row.active) == ("OptedOut", False)
    if on_opt_out == "return-to-stable":
        assert [e.action for e in new] == [
            "manual.opt_out", "traffic.intent", "rollout.opted_out", "traffic.applied"
        ]  # fmt: skip
        assert rig.router.written[-1] == SetTraffic(R2, 0, "rollback")
        assert rig.cluster.view.split == {R2: 0, R1: 100}
    else:
        assert [e.action for e in new] == ["manual.opt_out", "rollout.opted_out"]
        assert rig.cluster.view.split == {R2: 10, R1: 90}
    opt_out = new[0]
    if annotations:
        assert opt_out.actor == Actor("human", "kubectl-annotate")
    assert ("OptedOut", "Warning") in [(r, t) for r, _, t in events.seen]
    intents_precede_outcomes(rig)

    # no longer managed: a later hand change is neither reasserted nor recorded
    writes, records = len(rig.router.attempts), rig.actions()
    rig.cluster.view = replace(rig.cluster.view, spec_percent=50)
    rig.clock.advance(30)
    rig.engine.reconcile(NS, NAME)
    assert (len(rig.router.attempts), rig.actions()) == (writes, records)


def test_an_opt_outs_return_to_stable_survives_a_conflict_and_a_minted_revision(
    lite_store: AuditStore,
) -> None:
    """Knative without the annotation on KServe's disallowed list: the opt-out mints R3,
    which inherits the canary's percent; the first write conflicts, the retry sets 0."""
    rig, _ = aftercare_rig(lite_store)
    rig.engine._analysis._analyzer = None
    rig.to_first_step()
    rig.cluster.annotations = {"kserve-canary.io/enabled": "false"}
    rig.router.failures.append(Conflict(409, "Conflict", "the object has been modified"))
    rig.clock.advance(5)
    rig.engine.reconcile(NS, NAME)
    assert rig.last_rollout().active  # the write is still owed
    r3 = "scorer-predictor-00003"
    rig.cluster.view = replace(
        rig.cluster.view, latest=Revision(r3, URI2), split={r3: 10, R1: 90}, spec_percent=10
    )
    rig.clock.advance(5)
    rig.engine.reconcile(NS, NAME)

    assert rig.router.written[-1] == SetTraffic(r3, 0, "rollback")
    assert rig.cluster.view.split == {r3: 0, R1: 100}
    row = rig.last_rollout()
    assert (row.phase, row.active) == ("OptedOut", False)
    assert "traffic.abandoned" not in rig.actions()
    intents_precede_outcomes(rig)


# ---------------------------------------------------------------------------------------
# Writes the apiserver refuses for good (422 Invalid and its kin)
# ---------------------------------------------------------------------------------------

INVALID = KubeError(
    422,
    "Invalid",
    'InferenceService.serving.kserve.io "scorer" is invalid: spec.predictor.'
    "canaryTrafficPercent: Invalid value: 10: refused by policy",
    causes=("spec.predictor.canaryTrafficPercent: Invalid value: 10: refused by policy",),
)


def observed_rig(store: AuditStore) -> tuple[Rig, Events, ControllerMetrics]:
    """A rig whose engine emits Events and feeds the controller's metrics."""
    rig = make_rig(store)
    events, metrics = Events(), ControllerMetrics()
    rig.engine = Engine(
        store=store,
        kube=cast(KubeClient, FakeKube(rig.cluster)),
        routers={"knative": cast(TrafficRouter, rig.router)},
        policies=lambda: POLICIES,
        leadership=lambda: rig.fence,
        clock=rig.clock,
        instance="pod-a",
        events=events,
        metrics=metrics,
    )
    return rig, events, metrics


def test_a_refused_first_step_fails_the_intent_pauses_and_writes_nothing_until_resumed(
    lite_store: AuditStore,
) -> None:
    rig, events, _ = observed_rig(lite_store)
    rig.cluster.view = new_revision_view()
    rig.router.failures = [INVALID]

    wake = rig.engine.reconcile(NS, NAME)

    (intent,) = rig.records("traffic.intent")
    (failed,) = rig.records("traffic.failed")
    assert failed.correlation_id == intent.correlation_id
    assert failed.evidence["status"] == 422
    assert failed.evidence["api_reason"] == "Invalid"
    assert failed.evidence["api_message"] == INVALID.message
    assert failed.evidence["causes"] == list(INVALID.causes)
    assert "refused by policy" in (failed.reason or "")
    assert rig.actions()[-1] == "rollout.paused"
    row = rig.last_rollout()
    assert (row.phase, row.state["pending"], wake) == ("Paused", [], None)
    assert [(r, t) for r, _, t in events.seen][-1] == ("TrafficWriteRejected", "Warning")
    assert INVALID.message in events.seen[-1][1]
    assert rig.router.written == []

    # Time passes and the controller restarts: the pause and its reason are still there,
    # and nothing is written again.
    rig.clock.advance(600)
    restarted, router = rig.leader("pod-b", 2)
    restarted.reconcile(NS, NAME)
    assert router.attempts == []
    row = rig.last_rollout()
    assert row.phase == "Paused"
    assert "422 Invalid" in row.state["machine"]["pause_reason"]
    assert row.state["machine"]["rejected_write"]["status"] == 422

    # The operator fixed the cause and resumes: the refused write is sent again.
    rig.fence = Fence(LEASE, "pod-b", 2)
    assert restarted.run_command(rig.command("resume"))[0] == "accepted"
    assert router.written == [SetTraffic(R2, 10, "start")]
    assert rig.last_rollout().phase == "Pending"
    intents_precede_outcomes(rig)


def test_a_refused_promotion_leaves_the_traffic_at_the_last_step(lite_store: AuditStore) -> None:
    rig, events, metrics = observed_rig(lite_store)
    rig.to_first_step()
    rig.router.failures = [INVALID]

    assert rig.engine.run_command(rig.command("promote"))[0] == "accepted"

    assert rig.router.written == [SetTraffic(R2, 10, "start")]
    assert rig.cluster.view.spec_percent == 10
    row = rig.last_rollout()
    assert row.phase == "Paused"
    assert row.state["machine"]["paused_from"] == "Promoting"
    assert row.state["machine"]["target_percent"] == 10
    assert "TrafficWriteRejected" in [r for r, _, _ in events.seen]
    weight = metrics_value(metrics, "kserve_canary_canary_weight_percent", NS, NAME)
    assert weight == 10, "the weight shown is the one in force, not the refused 100"


def test_a_refused_rollback_is_retried_reported_once_and_counted(lite_store: AuditStore) -> None:
    rig, events, metrics = observed_rig(lite_store)
    rig.to_first_step()
    rig.router.failures = [INVALID, INVALID, INVALID]

    rig.engine.run_command(rig.command("abort"))
    for _ in range(3):  # within the traffic timeout: the same intent, sent again
        rig.clock.advance(10)
        rig.engine.reconcile(NS, NAME)

    assert rig.last_rollout().phase in ("RollingBack", "Aborted")
    assert rig.router.attempts.count(SetTraffic(R2, 0, "rollback")) == 4
    assert rig.router.written == [SetTraffic(R2, 10, "start"), SetTraffic(R2, 0, "rollback")]
    assert len(rig.records("traffic.rejected")) == 1, "the same refusal is recorded once"
    assert rig.records("traffic.failed") == [], "a rollback is never given up"
    assert [r for r, _, _ in events.seen].count("TrafficWriteRejected") == 1
    assert metrics_value(metrics, "kserve_canary_kube_write_retries_total") == 3


def test_a_retryable_failure_is_still_retried_and_counted(lite_store: AuditStore) -> None:
    rig, events, metrics = observed_rig(lite_store)
    rig.cluster.view = new_revision_view()
    rig.router.failures = [Unavailable(500, "InternalError", "etcdserver: leader changed")]

    wake = rig.engine.reconcile(NS, NAME)
    assert metrics_value(metrics, "kserve_canary_kube_write_retries_total") == 0
    assert wake is not None
    rig.clock.now = wake
    rig.engine.reconcile(NS, NAME)

    assert rig.router.written == [SetTraffic(R2, 10, "start")]
    assert rig.records("traffic.failed") == []
    assert "TrafficWriteRejected" not in [r for r, _, _ in events.seen]
    assert metrics_value(metrics, "kserve_canary_kube_write_retries_total") == 1


# ---------------------------------------------------------------------------------------
# Shadow mirroring configured: a rollout without a shadow never pays for it
# ---------------------------------------------------------------------------------------


class CountingMirrors:
    """A mirror router that counts every call (none is expected here)."""

    kind = "istio"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def apply(self, spec: Any) -> Any:
        self.calls.append("apply")
        raise AssertionError("no shadow: nothing to write")

    def observe(self, namespace: str, champion: str) -> None:
        self.calls.append("observe")

    def remove(self, namespace: str, champion: str) -> bool:
        self.calls.append("remove")
        return False

    def owned(self, namespace: str | None) -> list[Any]:
        self.calls.append("owned")
        return []


def test_with_mirroring_configured_a_canary_without_shadow_makes_no_mirror_calls(
    lite_store: AuditStore,
) -> None:
    rig = make_rig(lite_store)
    mirrors = CountingMirrors()
    rig.engine = Engine(
        store=lite_store,
        kube=cast(KubeClient, FakeKube(rig.cluster)),
        routers={"knative": cast(TrafficRouter, rig.router)},
        policies=lambda: POLICIES,
        leadership=lambda: rig.fence,
        clock=rig.clock,
        instance="pod-a",
        mirror=cast(Any, mirrors),
    )
    rig.to_first_step()
    for _ in range(5):
        rig.clock.advance(2)
        rig.engine.reconcile(NS, NAME)
    assert mirrors.calls == [], "no apiserver request per reconcile for a mirror never written"
    assert rig.engine.sweep_mirrors() == 0
    assert mirrors.calls == ["owned"], "the sweep lists our objects, once"
    assert not any(a.startswith("mirror.") for a in rig.actions())


# ---------------------------------------------------------------------------------------
# Approvals in the chain
# ---------------------------------------------------------------------------------------


class Passing(Collecting):
    """Every evaluation passes with enough samples."""

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
        self.asked.append(at)
        return StepAnalysis(at, (), Outcome.SUCCESSFUL, True, False, "all checks pass", {})


GATED = RolloutPolicy.model_validate(
    {
        "name": "default",
        "steps": [10, 100],
        "stepHold": "30s",
        "analysisInterval": "10s",
        "revisionReadyTimeout": "2m",
        "trafficTimeout": "1m",
        "approval": {"gate": "kubernetes", "riskOwnerGroup": "credit-risk", "deadline": "8h"},
    }
)


def test_an_approval_through_the_engine_is_chained_at_every_write(store: AuditStore) -> None:
    """The request (in the engine's commit), the Kubernetes gate's decision (in the
    command's commit) and the close at the end each carry the approval row as written, and
    the tables agree with the chain throughout."""
    rig = make_rig(store, analyzer=Passing())
    rig.engine._policies = lambda: PolicySet([GATED], {"default": "test"})
    assert rig.engine.run_command(rig.command("start", storage_uri=URI2))[0] == "accepted"
    rig.clock.advance(2)
    rig.cluster.view = new_revision_view(10)
    run_until(rig, 120)
    assert rig.last_rollout().phase == "AwaitingApproval"
    (row,) = rig.store.approvals_for(rig.last_rollout().id)
    (requested,) = rig.records("approval.requested")
    assert requested.evidence["approval"] == approval_snapshot(row)
    assert rig.store.crosscheck() == []

    approve = rig.store.submit_command(
        CommandRow(
            id=str(uuid4()), namespace=NS, name=NAME, command="approve", actor="bob@bank.example",
            actor_uid="u-bob", actor_groups=("credit-risk",), reason="evidence reviewed",
            args={}, requested_at=rig.clock(),
        )
    )  # fmt: skip
    assert rig.engine.run_command(approve)[0] == "accepted"
    (verified,) = rig.records("approval.verified")
    decided = rig.store.approval_by_id(row.id)
    assert decided is not None
    assert (decided.state, decided.approver) == ("approved", "bob@bank.example")
    assert verified.actor == Actor("human", "bob@bank.example", uid="u-bob",
                                   groups=("credit-risk",))  # fmt: skip
    assert verified.evidence["approval"] == approval_snapshot(decided)
    assert rig.store.crosscheck() == []

    run_until(rig, 120)
    rig.clock.advance(2)
    rig.engine.reconcile(NS, NAME)
    assert rig.last_rollout().phase == "Succeeded"
    closed = rig.store.approval_by_id(row.id)
    assert closed is not None
    assert closed.close_code == "successful"
    assert rig.store.crosscheck() == []
    assert rig.store.verify().ok
