"""Crash safety: the controller process is SIGKILLed at random moments during rollouts and
restarted, at least 20 times. Every rollout must still end correctly, with no step
repeated or skipped; no traffic change may happen without an intent record committed
before it; and the audit chain must verify.

The controller runs as its own process (``canary run``), as in production; the test only
talks to it through the Kubernetes API and the database.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from canary.audit import AuditStore
from canary.engine import RolloutDocument
from canary.k8s.client import INFERENCE_SERVICE, KubeClient, KubeError
from canary.model import Phase
from canary.ops import submit_command
from testbed.behaviour import LatencyProfile, ModelBehaviour
from tests.e2e.harness import Env

pytestmark = pytest.mark.e2e

KILLS = 20
SEED = 20261123
HEALTHY = ModelBehaviour()
REGRESSED = ModelBehaviour(latency=LatencyProfile(median_seconds=0.060, p99_seconds=0.150))
PLAN = (("v2", HEALTHY, Phase.SUCCEEDED), ("v3", REGRESSED, Phase.ROLLED_BACK),
        ("v4", HEALTHY, Phase.SUCCEEDED))  # fmt: skip


class SpecRecorder:
    """Every value of spec.predictor.canaryTrafficPercent the apiserver stored, with when
    this test saw it (always after the write happened)."""

    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self.changes: list[tuple[datetime, int | None, str | None]] = []
        self._kube, self._namespace, self._name = kube, namespace, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: tuple[int | None, str | None] | None = None
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    items, version = self._kube.list(INFERENCE_SERVICE, self._namespace)
                    for item in items:
                        last = self._note(item, last)
                for event in self._kube.watch(
                    INFERENCE_SERVICE, self._namespace, resource_version=version, timeout_seconds=5
                ):
                    version = event.resource_version or version
                    last = self._note(event.object, last)
            except KubeError:
                version = ""

    def _note(
        self, isvc: dict[str, Any], last: tuple[int | None, str | None] | None
    ) -> tuple[int | None, str | None] | None:
        if (isvc.get("metadata") or {}).get("name") != self._name:
            return last
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        value = (predictor.get("canaryTrafficPercent"), (predictor.get("model") or {}).get(
            "storageUri"))  # fmt: skip
        if value != last:
            self.changes.append((datetime.now(UTC), value[0], value[1]))
        return value

    def __enter__(self) -> SpecRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("env", ["knative"], indirect=True)
def test_sigkill_at_random_moments_never_repeats_skips_or_acts_unaudited(
    env: Env, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    v1 = env.model("v1")
    uris = {version: env.model(version, behaviour) for version, behaviour, _ in PLAN}
    env.create(v1)
    kills = 0
    finished: list[RolloutDocument] = []
    with SpecRecorder(env.kube, env.namespace, env.name) as recorder, env.store() as store:
        for version, _, expected in PLAN:
            submit_command(store, namespace=env.namespace, name=env.name, command="start",
                           actor="crash-test", reason=f"deploy {version}",
                           args={"storage_uri": uris[version]}, wait=0)  # fmt: skip
            done = False
            while not done:
                replica = env.spawn("replica-a", tmp_path / "logs")
                if kills < KILLS:
                    alive_for = rng.uniform(0.5, 4.0)
                    end = time.monotonic() + alive_for
                    while time.monotonic() < end and not _finished(store, env, version, uris):
                        time.sleep(0.05)
                    replica.kill()
                    kills += 1
                else:
                    deadline = time.monotonic() + 90
                    while not _finished(store, env, version, uris):
                        assert time.monotonic() < deadline, f"{version} did not finish"
                        time.sleep(0.2)
                    replica.kill()
                done = _finished(store, env, version, uris)
            doc = env.latest()
            assert doc is not None
            assert doc.state.phase is expected, (version, doc.state.phase, doc.state.outcome)
            finished.append(doc)
        report = store.verify()
    assert kills >= KILLS
    assert report.ok, report.problem

    records = env.records()
    # No step repeated or skipped: each rollout shows its steps once each, in order.
    for doc, (_, _, expected) in zip(finished, PLAN, strict=True):
        mine = [r.entry for r in records if r.entry.rollout_id == doc.state.rollout_id]
        shifted = [int(str(dict(e.evidence)["percent"])) for e in mine
                   if e.action == "traffic.shifted"]  # fmt: skip
        advanced = [int(str(dict(e.evidence)["percent"])) for e in mine
                    if e.action == "rollout.step_advanced"]  # fmt: skip
        if expected is Phase.SUCCEEDED:
            assert shifted == [10, 25, 50], shifted
            assert advanced == [25, 50], advanced
            assert [e.action for e in mine].count("promoted") == 1
        else:
            assert shifted in ([10], []), shifted
            assert [e.action for e in mine].count("rolled_back") == 1
        assert [e.action for e in mine].count("rollout.started") == 1

    # No traffic change without a prior intent for exactly that value.
    intents = [
        (r.entry.at, int(str(dict(r.entry.evidence)["percent"])))
        for r in records
        if r.entry.action == "traffic.intent"
    ]
    seen = recorder.changes
    assert len(seen) > 5
    for when, percent, _ in seen[1:]:  # the first is the state before the test acted
        if percent is None:
            continue
        assert any(at <= when and p == percent for at, p in intents), (when, percent)
    # every outcome follows its intent
    by_id = {r.entry.correlation_id: r.seq for r in records if r.entry.action == "traffic.intent"}
    for r in records:
        if r.entry.action in ("traffic.applied", "traffic.abandoned", "traffic.failed"):
            assert r.entry.correlation_id in by_id
            assert by_id[r.entry.correlation_id] < r.seq


def _finished(store: AuditStore, env: Env, version: str, uris: dict[str, str]) -> bool:
    rows = store.rollouts(namespace=env.namespace, name=env.name, limit=1)
    if not rows:
        return False
    doc = RolloutDocument.from_row(rows[0])
    return doc.state.canary.storage_uri == uris[version] and doc.state.terminal
