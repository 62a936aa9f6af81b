"""The Knative traffic router against a real kube-apiserver, the real InferenceService CRD
and the test bed's KServe v0.20 simulator.

Each test works in its own namespace on an InferenceService ``m``; revisions are therefore
``m-predictor-0000N``. Model URIs are unique per test, so the shared behaviour file only
ever gains entries. Waits poll ``router.observe`` with a bounded deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from canary.k8s.client import INFERENCE_SERVICE, Conflict, KubeClient
from canary.model import SetTraffic, TrafficView
from canary.routing.base import Observed, TrafficRouter
from canary.routing.knative import KnativeRouter
from testbed.behaviour import ModelBehaviour, Readiness
from testbed.kserve.controller import PRIVATE_LABEL
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

NAME = "m"
R1, R2 = f"{NAME}-predictor-00001", f"{NAME}-predictor-00002"
DEADLINE = 30.0
T = TypeVar("T")


class Bed:
    """One test's namespace, models and router."""

    def __init__(self, testbed: Testbed, **models: ModelBehaviour) -> None:
        token = uuid.uuid4().hex[:8]
        self.kube: KubeClient = testbed.kube
        self.namespace = testbed.namespace(f"knative-router-{token}")
        self.v1 = f"s3://router-{token}/v1"
        self.v2 = f"s3://router-{token}/v2"
        book = testbed.behaviour().with_model(self.v1, ModelBehaviour())
        for version, behaviour in models.items():
            book = book.with_model(getattr(self, version), behaviour)
        testbed.set_behaviour(book)
        self.router = KnativeRouter(self.kube)
        self.typed: TrafficRouter = self.router  # KnativeRouter satisfies the protocol

    def create(
        self,
        uri: str,
        name: str = NAME,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self.kube.create(
            INFERENCE_SERVICE,
            self.namespace,
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "labels": labels or {},
                    "annotations": annotations or {},
                },
                "spec": {
                    "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
                },
            },
        )

    def observe(self, name: str = NAME) -> Observed:
        return self.router.observe(self.namespace, name)

    def wait(
        self,
        what: str,
        check: Callable[[TrafficView], bool],
        *,
        name: str = NAME,
        every: Callable[[TrafficView], None] | None = None,
    ) -> Observed:
        end = time.monotonic() + DEADLINE
        while True:
            observed = self.observe(name)
            if every is not None:
                every(observed.view)
            if check(observed.view):
                return observed
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; last view: {observed.view}")
            time.sleep(0.05)

    def retrying(self, write: Callable[[str], T]) -> T:
        """Run a write guarded by a fresh resourceVersion; read again and retry when a
        status write of the simulator got in between."""
        for _ in range(30):
            try:
                return write(self.observe().resource_version)
            except Conflict:
                continue
        raise AssertionError("every write attempt conflicted")

    def start(self, percent: int) -> Observed:
        return self.retrying(
            lambda rv: self.router.start(
                self.namespace, NAME, self.v2, percent, resource_version=rv
            )
        )

    def apply(self, action: SetTraffic) -> None:
        self.retrying(
            lambda rv: self.router.apply(self.namespace, NAME, action, resource_version=rv)
        )

    def rolled_out(self) -> Observed:
        """Create ``m`` on v1 and wait until R1 serves 100 %."""
        self.create(self.v1)
        return self.wait(
            "R1 ready at 100 %",
            lambda v: (
                v.converged
                and v.latest_ready
                and v.latest.name == R1
                and v.stable is not None
                and v.stable.name == R1
                and v.split == {R1: 100}
            ),
        )

    def canary_at(self, percent: int) -> Observed:
        """From R1 rolled out, start v2 at ``percent`` and wait until the split shows it."""
        self.start(percent)
        return self.wait(
            f"R2 at {percent} %",
            lambda v: (
                v.converged and v.latest_ready and v.split == {R2: percent, R1: 100 - percent}
            ),
        )


def step(percent: int) -> SetTraffic:
    return SetTraffic(R2, percent, "step")


def spec_of(isvc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = isvc["spec"]
    return spec


def test_canary_steps_through_to_promotion(testbed: Testbed) -> None:
    bed = Bed(testbed, v2=ModelBehaviour(ready_after_seconds=1.0))
    before = bed.rolled_out()
    assert before.mode == "Knative"
    assert before.storage_uri == bed.v1
    assert before.view.spec_percent == 100  # unset means 100
    assert before.uid

    written = bed.start(10)
    # the write's answer carries the new spec but the old status: not converged
    assert written.storage_uri == bed.v2
    assert written.view.spec_percent == 10
    assert not written.view.converged
    assert written.uid == before.uid
    assert written.generation == before.generation + 1

    created = bed.wait("R2 created", lambda v: v.latest.name == R2)
    assert created.view.latest.storage_uri == bed.v2
    assert created.view.stable is not None
    assert created.view.stable.name == R1
    if not created.view.latest_ready:  # Knative keeps routing to the ready R1
        assert created.view.share(R2) == 0
        assert created.view.share(R1) == 100

    at10 = bed.wait("R2 at 10 %", lambda v: v.converged and v.latest_ready)
    assert at10.view.split == {R2: 10, R1: 90}
    assert at10.view.spec_percent == 10
    assert at10.view.stable is not None
    assert at10.view.stable.name == R1
    assert [(t.get("revisionName"), t.get("tag"), t.get("percent")) for t in
            at10.status_traffic] == [(R2, None, 10), (R1, "prev", 90)]  # fmt: skip

    previous = at10.view.split
    for percent in (25, 50):
        expected = {R2: percent, R1: 100 - percent}

        def never_wrongly_converged(view: TrafficView, expected: dict[str, int] = expected) -> None:
            assert not view.converged or view.split == expected, view

        bed.apply(step(percent))
        right_after = bed.observe().view
        assert right_after.spec_percent == percent
        # the status lags a reconcile: either it still shows the old split (not converged)
        # or the simulator already caught up, but never "converged" at the old split
        assert right_after.split in (previous, expected)
        never_wrongly_converged(right_after)
        reached = bed.wait(
            f"R2 at {percent} %", lambda v: v.converged, every=never_wrongly_converged
        )
        assert reached.view.split == expected
        previous = expected

    bed.apply(SetTraffic(R2, 100, "promote"))
    assert bed.observe().view.spec_percent == 100
    promoted = bed.wait(
        "R2 promoted", lambda v: v.converged and v.stable is not None and v.stable.name == R2
    )
    assert promoted.view.split == {R2: 100}
    assert promoted.view.latest.name == R2
    assert promoted.view.latest_ready


def test_rollback_returns_all_traffic_to_the_stable_revision(testbed: Testbed) -> None:
    bed = Bed(testbed, v2=ModelBehaviour())
    bed.rolled_out()
    bed.canary_at(10)
    bed.apply(step(25))
    bed.wait("R2 at 25 %", lambda v: v.converged and v.split == {R2: 25, R1: 75})

    bed.apply(SetTraffic(R2, 25, "rollback"))  # a rollback writes 0 whatever the percent
    rolled_back = bed.wait("rolled back", lambda v: v.converged and v.spec_percent == 0)
    assert rolled_back.view.split == {R2: 0, R1: 100}
    assert rolled_back.view.share(R2) == 0
    assert rolled_back.view.stable is not None
    assert rolled_back.view.stable.name == R1
    assert rolled_back.storage_uri == bed.v2  # the spec still names v2 (KSERVE.md §1.5)


def test_crash_looping_canary_is_reported_failed_and_can_be_rolled_back(
    testbed: Testbed,
) -> None:
    bed = Bed(testbed, v2=ModelBehaviour(readiness=Readiness.CRASH_LOOP))
    bed.rolled_out()
    bed.start(10)
    failed = bed.wait("R2 failed", lambda v: v.latest.name == R2 and v.latest_failed)
    assert failed.view.failure_message
    assert not failed.view.latest_ready
    assert failed.view.share(R1) == 100
    assert failed.view.share(R2) == 0
    assert failed.view.stable is not None
    assert failed.view.stable.name == R1

    bed.apply(SetTraffic(R2, 0, "rollback"))
    rolled_back = bed.wait("rolled back", lambda v: v.converged and v.spec_percent == 0)
    assert rolled_back.view.share(R2) == 0
    assert rolled_back.view.share(R1) == 100
    assert rolled_back.view.latest_failed


def test_start_refuses_a_stale_version_and_a_service_never_rolled_out(testbed: Testbed) -> None:
    bed = Bed(testbed, v2=ModelBehaviour())
    stale = bed.rolled_out()
    # A change that moves resourceVersion but not the revision template (KServe leaves this
    # annotation out of it): a label would mint a revision, and whether the simulator had
    # minted it by the time of the check below would be a race.
    bed.retrying(
        lambda rv: bed.kube.patch(
            INFERENCE_SERVICE,
            bed.namespace,
            NAME,
            {
                "metadata": {
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
                }
            },
            resource_version=rv,
        )
    )
    with pytest.raises(Conflict):
        bed.router.start(bed.namespace, NAME, bed.v2, 10, resource_version=stale.resource_version)
    after = bed.observe()
    assert after.storage_uri == bed.v1
    assert after.view.spec_percent == 100
    assert after.generation == stale.generation
    assert after.view.latest.name == R1

    never = "never"
    testbed.set_behaviour(
        testbed.behaviour().with_model(f"{bed.v1}-never", ModelBehaviour(readiness=Readiness.NEVER))
    )
    bed.create(f"{bed.v1}-never", never)
    pending = bed.wait(
        "first revision created", lambda v: v.latest.name == f"{never}-predictor-00001", name=never
    )
    assert pending.view.stable is None
    assert not pending.view.latest_ready
    with pytest.raises(ValueError, match="no rolled-out revision"):
        bed.router.start(
            bed.namespace, never, bed.v2, 10, resource_version=pending.resource_version
        )
    unchanged = bed.observe(never)
    assert unchanged.storage_uri == f"{bed.v1}-never"
    assert unchanged.generation == pending.generation


def test_writes_touch_only_the_predictor_traffic_and_model(testbed: Testbed) -> None:
    bed = Bed(testbed, v2=ModelBehaviour())
    labels = {"team": "fraud", "tier": "gold"}
    annotations = {"example.com/owner": "risk", "serving.kserve.io/enable-tag-routing": "false"}
    bed.create(bed.v1, labels=labels, annotations=annotations)
    bed.wait("R1 ready", lambda v: v.converged and v.latest_ready and v.split == {R1: 100})

    def isvc() -> dict[str, Any]:
        return bed.kube.get(INFERENCE_SERVICE, bed.namespace, NAME)

    writes: list[tuple[str, Callable[[], object]]] = [
        ("start", lambda: bed.start(10)),
        ("step", lambda: bed.apply(step(25))),
        ("promote", lambda: bed.apply(SetTraffic(R2, 100, "promote"))),
    ]
    for what, write in writes:
        before = isvc()
        write()
        after = isvc()
        assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1, what
        assert after["metadata"].get("labels") == labels, what
        assert after["metadata"].get("annotations") == annotations, what
        expected = spec_of(before)
        expected["predictor"]["canaryTrafficPercent"] = {"start": 10, "step": 25}.get(what, 100)
        if what == "start":
            expected["predictor"]["model"]["storageUri"] = bed.v2
        assert spec_of(after) == expected, what
        if what == "start":
            bed.wait("R2 at 10 %", lambda v: v.converged and v.latest_ready and v.share(R2) == 10)


def test_view_is_not_converged_until_the_status_shows_the_written_split(
    testbed: Testbed,
) -> None:
    """KServe copies the status from before its own write (KSERVE.md §1.4.5). Here no
    simulator manages the InferenceService: the test writes each status KServe would, so
    the lagging window is observed deterministically."""
    bed = Bed(testbed)
    bed.create(bed.v2, labels={PRIVATE_LABEL: f"manual-{uuid.uuid4().hex[:8]}"})
    bed.kube.patch(
        INFERENCE_SERVICE,
        bed.namespace,
        NAME,
        {"spec": {"predictor": {"canaryTrafficPercent": 10}}},
    )

    def kserve_reports(traffic: list[tuple[str, bool, int]], *, rolled_out: str = R1) -> None:
        isvc = bed.kube.get(INFERENCE_SERVICE, bed.namespace, NAME)
        isvc["status"] = {
            "deploymentMode": "Knative",
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
                for kind in ("PredictorReady", "PredictorRouteReady", "Ready")
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": R2,
                    "latestReadyRevision": R2,
                    "latestRolledoutRevision": rolled_out,
                    "traffic": [
                        {"revisionName": revision, "latestRevision": latest, "percent": percent}
                        | ({} if latest else {"tag": "prev"})
                        for revision, latest, percent in traffic
                    ],
                }
            },
        }
        bed.kube.replace_status(INFERENCE_SERVICE, bed.namespace, NAME, isvc)

    kserve_reports([(R2, True, 10), (R1, False, 90)])
    at10 = bed.observe().view
    assert at10.converged
    assert at10.latest_ready
    assert at10.split == {R2: 10, R1: 90}

    bed.router.apply(bed.namespace, NAME, step(25), resource_version=None)
    lagging = bed.observe().view
    assert lagging.spec_percent == 25
    assert lagging.split == {R2: 10, R1: 90}
    assert not lagging.converged
    kserve_reports([(R2, True, 25), (R1, False, 75)])
    at25 = bed.observe().view
    assert at25.converged
    assert at25.split == {R2: 25, R1: 75}

    bed.router.apply(bed.namespace, NAME, SetTraffic(R2, 25, "promote"), resource_version=None)
    assert not bed.observe().view.converged
    kserve_reports([(R2, True, 100)], rolled_out=R2)
    promoted = bed.observe().view
    assert promoted.converged
    assert promoted.stable is not None
    assert promoted.stable.name == R2
    assert promoted.split == {R2: 100}

    bed.router.apply(bed.namespace, NAME, SetTraffic(R2, 0, "rollback"), resource_version=None)
    # the fall-back rule's intermediate state (KSERVE.md §1.5 vi.1): prev names R2 while
    # the rolled-out revision has already moved back to R1, so it is not converged yet
    kserve_reports([(R2, True, 0), (R2, False, 100)], rolled_out=R1)
    assert not bed.observe().view.converged
    kserve_reports([(R2, True, 0), (R1, False, 100)], rolled_out=R1)
    settled = bed.observe().view
    assert settled.converged
    assert settled.split == {R2: 0, R1: 100}
