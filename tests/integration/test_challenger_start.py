"""A challenger's shadow starts on the revision KServe names, never before.

Knative mode names a revision in the InferenceService's status some time after the spec is
written (KSERVE.md §1.2): a challenger created just before its champion, or a champion
whose status has not caught up, has no revision name yet. The engine reads the real
Knative router's view of raw objects here, against a real audit database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from canary.audit import AuditStore, Fence
from canary.document import RolloutDocument
from canary.engine import Engine
from canary.k8s.client import KubeClient, NotFound, ResourceKind
from canary.model import Phase
from canary.policy import PolicySet, RolloutPolicy
from canary.routing.base import TrafficRouter
from canary.routing.knative import KnativeRouter
from tests.unit.test_mirroring import FakeMirrors

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
NS, CHAMPION, CHALLENGER = "credit", "scorer", "scorer-next"
LEASE = "kserve-canary-leader"
POLICY = RolloutPolicy.model_validate(
    {
        "name": "default",
        "steps": [10, 100],
        "stepHold": "30s",
        "analysisInterval": "10s",
        "revisionReadyTimeout": "2m",
        "trafficTimeout": "1m",
        "shadow": {"enabled": True, "duration": "10m", "mirrorPercent": 20},
    }
)


def knative(
    name: str,
    uri: str,
    *,
    created: str = "",
    ready: str = "",
    rolled_out: str = "",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An InferenceService in Knative mode as the apiserver returns it; the revision fields
    left empty are the ones KServe has not written yet."""
    predictor: dict[str, Any] = {}
    if created:
        predictor["latestCreatedRevision"] = created
    if ready:
        predictor["latestReadyRevision"] = ready
        predictor["traffic"] = [{"revisionName": ready, "latestRevision": True, "percent": 100}]
    if rolled_out:
        predictor["latestRolledoutRevision"] = rolled_out
    conditions = [{"type": "PredictorRouteReady", "status": "True"}] if ready else []
    status = {"components": {"predictor": predictor}, "conditions": conditions} if created else {}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "namespace": NS,
            "name": name,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "10",
            "annotations": dict(annotations or {}),
        },
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}},
        "status": status,
    }


@dataclass
class Objects:
    """The apiserver's InferenceServices, by name."""

    isvcs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        assert namespace == NS
        if name not in self.isvcs:
            raise NotFound(404, "NotFound", f'inferenceservices "{name}" not found')
        return self.isvcs[name]


def champion(**status: str) -> dict[str, Any]:
    annotations = {"kserve-canary.io/enabled": "true", "kserve-canary.io/challenger": CHALLENGER}
    return knative(CHAMPION, "s3://models/scorer/v1", annotations=annotations, **status)


STABLE = {"created": "scorer-predictor-00001", "ready": "scorer-predictor-00001",
          "rolled_out": "scorer-predictor-00001"}  # fmt: skip
NAMED = "scorer-next-predictor-00001"


@pytest.fixture
def engine(store: AuditStore) -> tuple[Engine, Objects]:
    assert store.claim_epoch(LEASE, "pod-a", 1, T0)
    fence = Fence(LEASE, "pod-a", 1)
    objects = Objects()
    return Engine(
        store=store,
        kube=cast(KubeClient, objects),
        routers={"knative": cast(TrafficRouter, KnativeRouter(cast(KubeClient, objects)))},
        policies=lambda: PolicySet([POLICY], {"default": "test"}),
        leadership=lambda: fence,
        clock=lambda: T0 + timedelta(seconds=5),
        instance="pod-a",
        mirror=FakeMirrors(),
    ), objects


def shadows(store: AuditStore) -> list[RolloutDocument]:
    return [RolloutDocument.from_row(r) for r in store.rollouts(namespace=NS, name=CHAMPION)]


@pytest.mark.parametrize(
    "unreconciled",
    [
        pytest.param({}, id="no-status-yet"),
        pytest.param(
            {"conditions": [], "components": {"predictor": {}}}, id="status-without-a-revision"
        ),
    ],
)
def test_a_challenger_kserve_has_not_named_is_compared_once_it_is(
    store: AuditStore, engine: tuple[Engine, Objects], unreconciled: dict[str, Any]
) -> None:
    controller, objects = engine
    objects.isvcs[CHALLENGER] = knative(CHALLENGER, "s3://models/scorer/v2")
    objects.isvcs[CHALLENGER]["status"] = unreconciled
    objects.isvcs[CHAMPION] = champion(**STABLE)

    for _ in range(3):
        assert controller.reconcile(NS, CHAMPION) is None
    assert shadows(store) == [], "no rollout of a revision without a name"
    assert store.records() == [], "and nothing recorded while there is nothing to compare"

    objects.isvcs[CHALLENGER] = knative(CHALLENGER, "s3://models/scorer/v2", created=NAMED)
    controller.reconcile(NS, CHAMPION)
    objects.isvcs[CHALLENGER] = knative(CHALLENGER, "s3://models/scorer/v2", created=NAMED,
                                        ready=NAMED, rolled_out=NAMED)  # fmt: skip
    controller.reconcile(NS, CHAMPION)

    (doc,) = shadows(store)
    assert (doc.state.challenger, doc.state.canary.name) == (CHALLENGER, NAMED)
    assert doc.state.phase is not Phase.SUPERSEDED
    actions = [r.entry.action for r in store.records()]
    assert actions[0] == "shadow.challenger_detected"
    assert "rollout.superseded" not in actions


def test_a_champion_whose_status_names_no_newest_revision_starts_nothing(
    store: AuditStore, engine: tuple[Engine, Objects]
) -> None:
    """A status that names the rolled-out revision and no created one (a status rewritten
    by hand, or one KServe has not finished) is not a new model."""
    controller, objects = engine
    objects.isvcs[CHALLENGER] = knative(CHALLENGER, "s3://models/scorer/v2", created=NAMED)
    objects.isvcs[CHAMPION] = champion(rolled_out="scorer-predictor-00001")
    objects.isvcs[CHAMPION]["status"] = {
        "components": {"predictor": {"latestRolledoutRevision": "scorer-predictor-00001"}}
    }
    assert controller.reconcile(NS, CHAMPION) is None
    assert shadows(store) == []
    assert store.records() == []
