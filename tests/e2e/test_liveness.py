"""Liveness after faults, on the full test bed.

* Every rollout, however it was started (``canary rollout start``, a model change through
  the admission webhook, a plain model change), gets its first evaluation soon after its
  traffic shows, and one every analysis interval after that.
* A controller killed right after a start was written is replaced, and the new leader
  reconciles that service within a bounded time (it relists every service when it takes
  over, not only those with a rollout row).
* A Prometheus that hangs holds up neither a manual abort nor its rollback.
* A Prometheus that hangs on one look group's queries holds back that group only: the other
  groups' rollouts are evaluated on time.
* A leader frozen past its Lease creates no Kubernetes Events once it resumes.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from canary.app import Application, build
from canary.audit import AuditEntry, CommandRow
from canary.k8s.client import EVENT, Unavailable
from canary.model import EventReason, Phase
from canary.ops import submit_command
from canary.settings import load_settings
from tests.e2e.faults import FaultyPrometheus
from tests.e2e.harness import LEASE_SECONDS, Env, Replica

pytestmark = pytest.mark.e2e

FIRST_LOOK = 5.0  # s from the split showing to the first evaluation (a loaded machine)
FOLLOWER_POLL = 0.5  # how often a follower asks for the Lease (canary.controller)


def _report(message: str) -> None:
    """What was measured (shown with ``pytest -s``)."""
    sys.stderr.write(f"\n[measured] {message}\n")


def _mine(env: Env, rollout_id: str) -> list[AuditEntry]:
    return [r.entry for r in env.records() if r.entry.rollout_id == rollout_id]


def _wait_metric(replica: Replica, value: float, deadline: float = 30.0) -> float:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if replica.metric("kserve_canary_leader") == value:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{replica.identity}: leader metric never became {value}")


# ---------------------------------------------------------------------------------------
# Every start path is analysed from its first look
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["rollout-start", "webhook", "plain-with-first-step", "plain-at-zero"]
)
def test_every_rollout_is_evaluated_soon_after_its_traffic_shows(
    knative_env: Env, how: str
) -> None:
    """The slow policy holds each step for ten minutes and analyses every second: before,
    a rollout started by the command waited for the hold (or the resync) to be analysed.

    The plain model changes carry their own percent (written by kubectl or a GitOps tool,
    no webhook): the first step itself, or 0 % (the controller then writes the first step).
    Without any percent and without the webhook KServe serves the new model at 100 % at
    once, which is why the webhook exists."""
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="slow")
    env.start_controller(webhook=how == "webhook")
    model: dict[str, Any] = {"model": {"storageUri": v2}}
    if how == "rollout-start":
        assert env.command("start", "liveness", storage_uri=v2).state == "accepted"
    elif how == "webhook":
        env.patch({"spec": {"predictor": model}})  # the webhook adds the first step
    else:
        percent = 10 if how == "plain-with-first-step" else 0
        env.patch({"spec": {"predictor": {**model, "canaryTrafficPercent": percent}}})

    def evaluated(count: int) -> bool:
        doc = env.latest()
        if doc is None:
            return False
        actions = [e.action for e in _mine(env, doc.state.rollout_id)]
        return actions.count("analysis.evaluated") >= count

    env.wait("the first evaluation", lambda: evaluated(1), deadline=60)
    env.wait("four evaluations", lambda: evaluated(4), deadline=30)
    doc = env.latest()
    assert doc is not None
    mine = _mine(env, doc.state.rollout_id)
    (shown,) = [e for e in mine if e.action == "traffic.shifted"]
    evaluations = [e for e in mine if e.action == "analysis.evaluated"]
    first = evaluations[0]
    delay = (first.at - shown.at).total_seconds()
    _report(f"{how}: first evaluation {delay:.2f} s after the traffic showed")
    assert 0 <= delay <= FIRST_LOOK, delay
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(evaluations)]
    assert max(gaps) <= 1.0 + 3.0, gaps  # every analysis interval (1 s), with a margin
    started = [
        e
        for e in mine
        if e.action == "traffic.intent" and dict(e.evidence).get("purpose") == "start"
    ]
    # only a change at 0 % needs the controller to write the first step
    assert len(started) == (1 if how == "plain-at-zero" else 0)


# ---------------------------------------------------------------------------------------
# A kill right after a start is written
# ---------------------------------------------------------------------------------------


def _spec_uri(env: Env) -> str | None:
    predictor = (env.isvc().get("spec") or {}).get("predictor") or {}
    return (predictor.get("model") or {}).get("storageUri")


@pytest.mark.parametrize("moment", ["spec-written", "command-settled"])
def test_a_leader_killed_right_after_a_start_is_replaced_and_the_service_reconciled(
    knative_env: Env, tmp_path: Path, moment: str
) -> None:
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1, policy="slow")
    a = env.spawn("replica-a", tmp_path / "logs")
    _wait_metric(a, 1.0)
    b = env.spawn("replica-b", tmp_path / "logs")
    _wait_metric(b, 0.0)
    with env.store() as store:
        command = submit_command(store, namespace=env.namespace, name=env.name, command="start",
                                 actor="alice", reason="kill test", args={"storage_uri": v2},
                                 wait=0)  # fmt: skip
        end = time.monotonic() + 30
        while True:
            assert time.monotonic() < end, "the start was never written"
            if moment == "spec-written" and _spec_uri(env) == v2:
                break
            settled = store.get_command(command.id)
            if moment == "command-settled" and settled is not None and settled.state != "pending":
                break
            time.sleep(0.01)
    a.kill()
    killed_at = time.monotonic()
    rows_at_kill = len(env.rollouts())
    took_over = _wait_metric(b, 1.0, deadline=LEASE_SECONDS + 10)

    def reconciled_by_b() -> bool:
        doc = env.latest()
        return doc is not None and any(
            e.actor.id == "replica-b" for e in _mine(env, doc.state.rollout_id)
        )

    env.wait("replica-b to reconcile the service", reconciled_by_b, deadline=60)
    took = time.monotonic() - killed_at
    _report(
        f"{moment}: rollout rows at the kill {rows_at_kill}; leader after "
        f"{took_over - killed_at:.1f} s; service reconciled by the new leader after {took:.1f} s"
    )
    # Lease + a follower poll + the relist and one reconcile (with a margin for the load)
    assert took <= LEASE_SECONDS + FOLLOWER_POLL + 6.0, took
    doc = env.latest()
    assert doc is not None
    assert doc.state.phase is Phase.PROGRESSING
    assert doc.state.canary.storage_uri == v2
    mine = _mine(env, doc.state.rollout_id)
    assert [e.action for e in mine].count("rollout.started") == 1
    env.wait(
        "an evaluation by the new leader",
        lambda: any(
            e.action == "analysis.evaluated" and e.actor.id == "replica-b"
            for e in _mine(env, doc.state.rollout_id)
        ),
        deadline=20,
    )
    with env.store() as store:
        assert store.verify().ok


# ---------------------------------------------------------------------------------------
# A hung Prometheus: commands are served at once
# ---------------------------------------------------------------------------------------


def _at_first_step(env: Env) -> bool:
    doc = env.latest()
    return doc is not None and doc.state.step_reached_at is not None


def _start_with(env: Env, prometheus_url: str, **overrides: Any) -> Application:
    """Like ``Env.start_controller``, with settings of this test's own."""
    settings = load_settings(
        None,
        database_url=env.database_url,
        policy_path=env.policy_dir,
        kubeconfig=env.testbed.kubeconfig_path,
        prometheus_url=prometheus_url,
        namespaces=(env.namespace,),
        http_host="127.0.0.1",
        http_port=0,
        identity="replica-a",
        lease_namespace=env.namespace,
        lease_name="kserve-canary-leader",
        lease_duration_seconds=5,
        resync_seconds=30,
        metrics_delay_seconds=10,
        look_period_seconds=1.0,
        look_lag_seconds=1.5,
        analysis_window_seconds=10,
        environment="development",
        **overrides,
    )
    app = build(settings)
    app.start()
    env.app = app
    return app


@pytest.mark.parametrize(("hang", "services"), [(10.0, 2), (60.0, 1)])
def test_a_hung_prometheus_holds_up_neither_an_abort_nor_its_rollback(
    knative_env: Env, hang: float, services: int
) -> None:
    """Prometheus accepts every query and answers only after ``hang`` seconds, with one or
    two rollouts waiting on it; an abort of one is accepted and carried out at once."""
    env = knative_env
    others = [
        Env(
            env.testbed,
            env.mode,
            env.namespace,
            env.database_url,
            env.policy_dir,
            token=env.token,
            name=f"{env.name}-{n}",
        )
        for n in range(1, services)
    ]
    proxy = FaultyPrometheus(env.testbed.prometheus_url, delay=hang)
    try:
        for each in (env, *others):
            v1 = each.model("v1")
            each.model("v2")
            each.create(v1, policy="slow")
        # each query may take as long as the hang: only the look's deadline cuts it short
        _start_with(env, proxy.url, prometheus_timeout_seconds=hang, analysis_deadline_seconds=30)
        for each in (env, *others):
            started = each.command("start", "hung prometheus", storage_uri=each.uri("v2"))
            assert started.state == "accepted"
        for each in (env, *others):
            each.wait("the first step", partial(_at_first_step, each))
        proxy.fault = "slow"  # Prometheus accepts and does not answer for `hang` seconds
        asked = proxy.requests
        env.wait("looks waiting on Prometheus", lambda: proxy.requests > asked, deadline=20)
        time.sleep(0.5)  # the looks are now blocked inside Prometheus' hang
        with env.store() as store:
            submitted = time.monotonic()
            command = submit_command(store, namespace=env.namespace, name=env.name,
                                     command="abort", actor="alice", reason="hung prometheus",
                                     wait=0)  # fmt: skip
            settled: CommandRow | None = None
            while settled is None or settled.state == "pending":
                assert time.monotonic() - submitted < 30, "the abort was never settled"
                time.sleep(0.02)
                settled = store.get_command(command.id)
            accepted = time.monotonic() - submitted
            assert settled.state == "accepted", settled.result
            doc = env.wait_phase(Phase.ABORTED, deadline=30)
            finished = time.monotonic() - submitted
        _report(f"hang {hang:g} s, {services} rollout(s): abort accepted after {accepted:.2f} s, "
                f"finished after {finished:.2f} s")  # fmt: skip
        assert accepted <= 1.5, accepted
        assert finished <= 3.0, finished
        assert doc.state.aborted_by == "alice"
        assert doc.state.last_view is not None
        assert doc.state.last_view.split.get(doc.state.canary.name, 0) == 0
        for each in others:  # the other rollouts were left alone, still held at 10 %
            other = each.latest()
            assert other is not None
            assert other.state.phase is Phase.PROGRESSING
    finally:
        proxy.close()
        for each in others:
            each.stop()


def test_a_prometheus_hung_on_one_look_group_holds_back_only_that_group(
    knative_env: Env,
) -> None:
    """Two services in look groups of one: Prometheus hangs on every query of the first
    one's group; the second is evaluated every interval all the same, and the first one's
    looks are given up at their deadline (counted) instead of waiting for ever."""
    env = knative_env
    other = Env(env.testbed, env.mode, env.namespace, env.database_url, env.policy_dir,
                token=env.token, name=f"{env.name}-1")  # fmt: skip
    proxy = FaultyPrometheus(env.testbed.prometheus_url, delay=30.0)
    try:
        for each in (env, other):
            v1 = each.model("v1")
            each.model("v2")
            each.create(v1, policy="slow")
        app = _start_with(env, proxy.url, prometheus_timeout_seconds=30,
                          analysis_deadline_seconds=4, look_group_size=1)  # fmt: skip
        for each in (env, other):
            started = each.command("start", "one group hung", storage_uri=each.uri("v2"))
            assert started.state == "accepted"
        for each in (env, other):
            each.wait("the first step", partial(_at_first_step, each))

        def evaluated(each: Env) -> int:
            doc = each.latest()
            assert doc is not None
            return sum(1 for entry in _mine(each, doc.state.rollout_id)
                       if entry.action == "analysis.evaluated")  # fmt: skip

        env.wait("both evaluated", lambda: evaluated(env) >= 1 and evaluated(other) >= 1)
        proxy.only = f'"{env.name}-predictor-'  # the first service's group's queries only
        proxy.fault = "slow"
        began, count = time.monotonic(), evaluated(other)
        registry = app.metrics.registry
        # "slow" analyses every second: at least a few while the first group hangs
        other.wait("the other group evaluated on", lambda: evaluated(other) >= count + 5,
                   deadline=20)  # fmt: skip
        env.wait("the hung group's looks given up at their deadline", lambda: (
            registry.get_sample_value("kserve_canary_analysis_deadlines_total") or 0) >= 1,
            deadline=20)  # fmt: skip
        _report(f"one group hung: the other evaluated {evaluated(other) - count} times in "
                f"{time.monotonic() - began:.1f} s")  # fmt: skip
        for each in (env, other):  # a slow Prometheus is no verdict on either model
            doc = each.latest()
            assert doc is not None
            assert doc.state.phase is Phase.PROGRESSING
    finally:
        proxy.close()
        other.stop()


# ---------------------------------------------------------------------------------------
# A frozen leader creates no Events after losing its Lease
# ---------------------------------------------------------------------------------------


def _events_by(env: Env, instance: str) -> dict[str, int]:
    events, _ = env.kube.list(EVENT, env.namespace)
    return {
        str(e["metadata"]["name"]): int(e.get("count") or 1)
        for e in events
        if e.get("reportingInstance") == instance
    }


def _freeze(replica: Replica) -> None:
    os.killpg(replica.process.pid, signal.SIGSTOP)


def _thaw(replica: Replica) -> None:
    os.killpg(replica.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("freeze_at", ["mid-rollout"])
def test_a_leader_frozen_past_its_lease_creates_no_events_when_it_resumes(
    knative_env: Env, tmp_path: Path, freeze_at: str
) -> None:
    """The whole process is frozen (SIGSTOP) at a moment of the rollout and resumed after
    the other replica took over."""
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)  # the fast policy: steps, events and analyses every second or two
    a = env.spawn("replica-a", tmp_path / "logs")
    _wait_metric(a, 1.0)
    b = env.spawn("replica-b", tmp_path / "logs")
    _wait_metric(b, 0.0)
    assert env.command("start", "freeze test", storage_uri=v2).state == "accepted"
    step = 0 if freeze_at == "first-step" else 1
    env.wait(
        f"step {step + 1} reached",
        lambda: (
            (d := env.latest()) is not None
            and d.state.step_index >= step
            and d.state.step_reached_at is not None
        ),
    )
    _freeze(a)  # in the middle of whatever it was doing
    try:
        _wait_metric(b, 1.0, deadline=LEASE_SECONDS + 10)
        # let the new leader act for a while, so the frozen one has work to do on resume
        time.sleep(2.0)
        before = _events_by(env, "replica-a")
    finally:
        _thaw(a)
    thawed = time.monotonic()
    # the resumed process runs its timers, its queue and its half-done reconcile
    while time.monotonic() - thawed < 6.0:
        time.sleep(0.5)
        assert _events_by(env, "replica-a") == before, "the deposed leader wrote an Event"
    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.outcome
    assert _events_by(env, "replica-a") == before
    assert _events_by(env, "replica-b")  # the leader does write its Events
    with env.store() as store:
        assert store.verify().ok


def test_a_leader_paused_between_its_commit_and_its_event_creates_no_event_once_deposed(
    knative_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact window: the leader committed a step (its audit records are in) and is
    about to create the step's Event when it is paused; meanwhile its Lease lapses and the
    other replica takes over. Resumed, it must not create that Event."""
    env = knative_env
    v1, v2 = env.model("v1"), env.model("v2")
    env.create(v1)
    app = env.start_controller(identity="replica-a")
    env.wait("replica-a to lead", lambda: app.controller.leading, deadline=30)
    recorder = app.controller.engine._events
    assert recorder is not None
    original = recorder.emit
    paused, release = threading.Event(), threading.Event()

    def emit(target: Any, reason: EventReason, message: str, type_: Any = "Normal") -> Any:
        if reason is EventReason.STEP_ADVANCED and not paused.is_set():
            paused.set()
            release.wait(60)  # frozen here, after the commit, before the Event
        return original(target, reason, message, type_)

    monkeypatch.setattr(recorder, "emit", emit)
    assert env.command("start", "pause test", storage_uri=v2).state == "accepted"
    assert paused.wait(60), "the first step was never reached"

    def unreachable() -> None:
        raise Unavailable(0, "Unavailable", "the apiserver is unreachable from replica-a")

    try:
        # replica-a cannot renew any more; replica-b takes over once the Lease lapses
        monkeypatch.setattr(app.controller._elector, "try_acquire_or_renew", unreachable)
        b = env.spawn("replica-b", tmp_path / "logs")
        _wait_metric(b, 1.0, deadline=LEASE_SECONDS + 15)
        assert not app.controller.leading
        before = _events_by(env, "replica-a")
        reasons_before = _reasons_by(env, "replica-a")
    finally:
        release.set()
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        time.sleep(0.25)
        assert _events_by(env, "replica-a") == before, "the deposed leader wrote an Event"
    assert EventReason.STEP_ADVANCED.value not in _reasons_by(env, "replica-a") - reasons_before
    doc = env.wait_phase(Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.PAUSED, Phase.FAILED)
    assert doc.state.phase is Phase.SUCCEEDED, doc.state.outcome
    assert EventReason.STEP_ADVANCED.value in _reasons_by(env, "replica-b")
    with env.store() as store:
        assert store.verify().ok


def _reasons_by(env: Env, instance: str) -> set[str]:
    events, _ = env.kube.list(EVENT, env.namespace)
    return {str(e.get("reason")) for e in events if e.get("reportingInstance") == instance}
