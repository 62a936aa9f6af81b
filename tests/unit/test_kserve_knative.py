"""KServe v0.20.0 in Knative mode, row by row through KSERVE.md §1.5 (and its notes).

A :class:`Kn` driver plays the cluster around the pure core: it applies an edit to the
InferenceService, then alternates KServe reconciles (writing the status only when it
changes, as KServe does) with Knative steps until nothing moves, at an injected clock.
Revisions take 30 s to become ready unless the behaviour book says otherwise; tests move
the clock instead of waiting.

Each row of the scenario table is one test that replays its path from the first create
and checks what a user reads in ``status``: latestCreated/Ready/Rolledout/PreviousRolledout
revisions, the traffic block (the effective routing), the conditions
P(redictorReady) / PC (PredictorConfigurationReady) / PR (PredictorRouteReady) /
I(ngressReady) / R(eady), and ``observedGeneration``.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from canary.k8s.client import (
    INFERENCE_SERVICE,
    Conflict,
    Gone,
    KubeClient,
    KubeError,
    NotFound,
    ResourceKind,
    Unavailable,
    WatchEvent,
)
from testbed.behaviour import BehaviourBook, BehaviourWatcher, ModelBehaviour, Readiness
from testbed.kserve.controller import (
    FINALIZER,
    KServeSimulator,
    SplitTarget,
    deployment_mode,
)
from testbed.kserve.knative import (
    KnativeService,
    KnativeWorld,
    compute_traffic,
    effective_split,
    knative_step,
    reconcile_isvc,
    validate_traffic,
)
from testbed.kserve.status import (
    FALSE,
    TRUE,
    UNKNOWN,
    Condition,
    ConditionManager,
    TrafficTarget,
    canonical,
)
from testbed.kserve.template import KServeConfig

T0 = 1_800_000_000.0
V1, V2, V3, BAD = "s3://models/v1", "s3://models/v2", "s3://models/v3", "s3://models/bad"
R1, R2, R3 = "m-predictor-00001", "m-predictor-00002", "m-predictor-00003"
UNSET: Any = object()


def short(name: str) -> str:
    return {R1: "R1", R2: "R2", R3: "R3"}.get(name, name)


def book(**models: ModelBehaviour) -> BehaviourBook:
    base = BehaviourBook(default=ModelBehaviour(ready_after_seconds=30))
    crash = ModelBehaviour(readiness=Readiness.CRASH_LOOP, failure_message="model file is corrupt")
    base = base.with_model(BAD, crash)
    for uri, behaviour in models.items():
        base = base.with_model(uri, behaviour)
    return base


class Kn:
    """The cluster around one Knative-mode InferenceService ``ns/m``."""

    def __init__(
        self, behaviour: BehaviourBook | None = None, config: KServeConfig | None = None
    ) -> None:
        self.book = behaviour or book()
        self.config = config or KServeConfig()
        self.world = KnativeWorld()
        self.now = T0
        self.isvc: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []

    # --- edits -----------------------------------------------------------------------------

    def create(
        self, uri: str = V1, p: int | None = None, annotations: dict[str, str] | None = None
    ) -> Kn:
        predictor: dict[str, Any] = {
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}
        }
        if p is not None:
            predictor["canaryTrafficPercent"] = p
        self.isvc = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": "m",
                "namespace": "ns",
                "generation": 1,
                "annotations": dict(annotations or {}),
            },
            "spec": {"predictor": predictor},
        }
        return self

    def patch(self, *, uri: Any = UNSET, p: Any = UNSET, name: Any = UNSET) -> Kn:
        """A JSON merge patch on the spec (``None`` deletes the field); bumps the generation."""
        predictor = self.isvc["spec"]["predictor"]
        if uri is not UNSET:
            predictor["model"]["storageUri"] = uri
        for key, value in (("canaryTrafficPercent", p), ("name", name)):
            if value is UNSET:
                continue
            if value is None:
                predictor.pop(key, None)
            else:
                predictor[key] = value
        self.isvc["metadata"]["generation"] += 1
        return self

    def annotate(self, key: str, value: str | None) -> Kn:
        """A metadata edit: no generation bump on the InferenceService."""
        annotations = self.isvc["metadata"]["annotations"]
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
        return self

    # --- the cluster -----------------------------------------------------------------------

    def reconcile(self) -> bool:
        """One KServe reconcile; True if it wrote the status."""
        self.world, status = reconcile_isvc(self.world, self.isvc, self.now, self.config)
        if status is not None and canonical(status) != canonical(self.isvc.get("status")):
            self.isvc["status"] = status
            self.writes.append(copy.deepcopy(status))
            return True
        return False

    def settle(self, until: Callable[[Kn], bool] | None = None) -> Kn:
        for _ in range(200):
            if self.reconcile():
                if until is not None and until(self):
                    return self
                continue
            stepped = knative_step(self.world, self.book, self.now, self.config)
            if stepped is self.world:
                return self
            self.world = stepped
        raise AssertionError("no fixpoint")

    def advance(self, seconds: float) -> Kn:
        self.now += seconds
        return self.settle()

    # --- what a user reads -----------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.isvc.get("status", {})
        return result

    @property
    def predictor(self) -> dict[str, Any]:
        result: dict[str, Any] = self.status.get("components", {}).get("predictor", {})
        return result

    def revisions(self) -> tuple[str, str, str, str]:
        p = self.predictor
        return (
            short(p.get("latestCreatedRevision", "")),
            short(p.get("latestReadyRevision", "")),
            short(p.get("latestRolledoutRevision", "")),
            short(p.get("previousRolledoutRevision", "")),
        )

    def traffic(self) -> list[str]:
        """``R2*:10`` for the latestRevision entry, ``R1^prev:90`` for a tagged one."""
        out = []
        for t in self.predictor.get("traffic", []):
            mark = "*" if t.get("latestRevision") else ""
            tag = f"^{t['tag']}" if t.get("tag") else ""
            out.append(f"{short(t.get('revisionName', ''))}{mark}{tag}:{t.get('percent')}")
        return out

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions", []) if c["type"] == kind), None)

    def conds(self) -> str:
        """P PC PR I R as T/F/U, ``-`` when absent."""
        kinds = (
            "PredictorReady",
            "PredictorConfigurationReady",
            "PredictorRouteReady",
            "IngressReady",
            "Ready",
        )
        out = []
        for kind in kinds:
            c = self.condition(kind)
            out.append("-" if c is None else c["status"][0])
        return " ".join(out)

    def og(self) -> int:
        return int(self.status.get("observedGeneration", 0))

    @property
    def ksvc(self) -> KnativeService:
        return self.world.services["m-predictor"]

    def ksvc_traffic(self) -> list[str]:
        out = []
        for t in self.ksvc.traffic:
            name = "*" if t.latest_revision else short(t.revision_name)
            out.append(f"{name}{'^' + t.tag if t.tag else ''}:{t.percent}")
        return out

    def split(self) -> list[tuple[str, int]]:
        return [(short(r), p) for r, p, _ in effective_split(self.world, "m-predictor")]


# --- the scenario table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    after: str | None
    action: Callable[[Kn], object]
    revisions: tuple[str, str, str, str]  # LC / LRdy / LRO / PRO
    traffic: list[str]
    conds: str  # P PC PR I R; "?" accepts T or a brief U (note ²)
    og: int
    ksvc: list[str] | None = None
    kg: int | None = None
    extra: Callable[[Kn], None] | None = None
    notes: list[str] = field(default_factory=list)


def _i1_extra(k: Kn) -> None:
    latest_deployment, routes = k.condition("LatestDeploymentReady"), k.condition("RoutesReady")
    assert latest_deployment is not None
    assert latest_deployment["status"] == UNKNOWN
    assert routes is not None
    assert routes["status"] == UNKNOWN
    ingress = k.condition("IngressReady")
    assert ingress is not None
    assert ingress.get("reason") == "Predictor ingress not created"
    assert "observedGeneration" not in k.status
    assert [r.name for r in k.world.services["m-predictor"].revisions] == []  # Knative's job


def _i2_extra(k: Kn) -> None:
    route = k.condition("PredictorRouteReady")
    assert route is not None
    assert route.get("reason") == "RevisionMissing"
    assert k.status["modelStatus"]["transitionStatus"] == "InProgress"


def _i3_extra(k: Kn) -> None:
    assert k.status["url"] == "http://m.ns.example.com"
    assert k.predictor["url"] == "http://m-predictor.ns.example.com"
    assert k.status["modelStatus"]["states"] == {
        "activeModelState": "Loaded",
        "targetModelState": "Loaded",
    }
    assert k.split() == [("R1", 100)]


def _ii1(k: Kn) -> None:
    k.patch(uri=V2, p=10)
    k.writes.clear()
    k.reconcile()  # exactly one KServe reconcile: the one that performs the ksvc update


def _ii1_extra(k: Kn) -> None:
    assert [r.name for r in k.ksvc.revisions] == [R1], "R2 is created by Knative, not KServe"
    assert len(k.writes) == 0, "the snapshot status is unchanged, so nothing is written"


def _ii2_extra(k: Kn) -> None:
    configuration = k.condition("PredictorConfigurationReady")
    assert configuration is not None
    assert "reason" not in configuration, "Knative leaves it Unknown with no reason while R2 starts"
    assert k.split() == [("R1", 100)], "latestRevision resolves to the latest READY revision"
    assert k.status["modelStatus"]["states"]["activeModelState"] == "Loaded"


def _iva_extra(k: Kn) -> None:
    assert k.split() == [("R2", 100)], "R1 leaves the route"


def _v_extra(k: Kn) -> None:
    assert k.split() == [("R2", 0), ("R1", 100)], "R2 stays routed at 0 % (keeps its pods)"


def _vi2_extra(k: Kn) -> None:
    assert k.og() > k.isvc["metadata"]["generation"] == 6
    assert k.split() == [("R2", 0), ("R1", 100)], "it really rolls back to R1"


def _vii2_extra(k: Kn) -> None:
    assert ("R2", 25) not in k.split()
    assert k.split() == [("R3", 25), ("R1", 75)]


def _failed_extra(k: Kn) -> None:
    for kind in ("PredictorReady", "PredictorConfigurationReady", "Ready"):
        condition = k.condition(kind)
        assert condition is not None, kind
        assert condition.get("reason") == "RevisionFailed", kind
    latest_deployment = k.condition("LatestDeploymentReady")
    assert latest_deployment is not None
    assert latest_deployment["status"] == FALSE
    assert latest_deployment["reason"] == "PredictorConfigurationReady not ready"


def _viii_extra(k: Kn) -> None:
    _failed_extra(k)
    message = k.condition("PredictorReady")
    assert message is not None
    assert message["message"] == (
        f'Revision "{R2}" failed with message: Container failed with: model file is corrupt.'
    )
    model = k.status["modelStatus"]
    assert model["transitionStatus"] == "BlockedByFailedLoad"
    assert model["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert model["lastFailureInfo"] == {
        "reason": "ModelLoadFailed",
        "message": "model file is corrupt",
        "exitCode": 1,
    }
    assert k.split() == [("R1", 100)]


def _fallback_seen(k: Kn) -> bool:
    return k.revisions()[2] == "R1"


ROWS: dict[str, Row] = {
    "i.1": Row(
        None,
        lambda k: (k.create(), k.reconcile()),
        ("", "", "", ""),
        [],
        "U - - U U",
        0,
        ["*:100"],
        1,
        _i1_extra,
    ),
    "i.2": Row("i.1", Kn.settle, ("R1", "", "", ""), [], "U U U U U", 1, extra=_i2_extra),
    "i.3": Row(
        "i.2",
        lambda k: k.advance(30),
        ("R1", "R1", "R1", ""),
        ["R1*:100"],
        "T T T T T",
        1,
        ["*:100"],
        1,
        _i3_extra,
    ),
    "ii.1": Row(
        "i.3",
        _ii1,
        ("R1", "R1", "R1", ""),
        ["R1*:100"],
        "T T T T T",
        1,
        ["*:10", "R1^prev:90"],
        2,
        _ii1_extra,
    ),
    "ii.2": Row(
        "ii.1",
        Kn.settle,
        ("R2", "R1", "R1", ""),
        ["R1*:10", "R1^prev:90"],
        "U U T T U",
        2,
        extra=_ii2_extra,
    ),
    "ii.3": Row(
        "ii.2",
        lambda k: k.advance(30),
        ("R2", "R2", "R1", ""),
        ["R2*:10", "R1^prev:90"],
        "T T T T T",
        2,
    ),
    "iii.1": Row(
        "ii.3",
        lambda k: k.patch(p=25).settle(),
        ("R2", "R2", "R1", ""),
        ["R2*:25", "R1^prev:75"],
        "T T T T T",
        3,
        ["*:25", "R1^prev:75"],
        3,
    ),
    "iii.2": Row(
        "iii.1",
        lambda k: k.patch(p=50).settle(),
        ("R2", "R2", "R1", ""),
        ["R2*:50", "R1^prev:50"],
        "T T T T T",
        4,
        ["*:50", "R1^prev:50"],
        4,
    ),
    "iv.a": Row(
        "iii.2",
        lambda k: k.patch(p=100).settle(),
        ("R2", "R2", "R2", "R1"),
        ["R2*:100"],
        "T T T T T",
        5,
        ["*:100"],
        5,
        _iva_extra,
    ),
    "iv.b": Row(
        "iii.2",
        lambda k: k.patch(p=None).settle(),
        ("R2", "R2", "R2", "R1"),
        ["R2*:100"],
        "T T T T T",
        5,
        ["*:100"],
        5,
        _iva_extra,
    ),
    "v": Row(
        "iii.2",
        lambda k: k.patch(p=0).settle(),
        ("R2", "R2", "R1", ""),
        ["R2*:0", "R1^prev:100"],
        "T T T T T",
        5,
        ["*:0", "R1^prev:100"],
        5,
        _v_extra,
    ),
    "vi.1": Row(
        "iv.a",
        lambda k: k.patch(p=0).settle(until=_fallback_seen),
        ("R2", "R2", "R1", "R1"),
        ["R2*:0", "R2^prev:100"],
        "? T ? T ?",
        6,
        ["*:0", "R2^prev:100"],
        6,
    ),
    "vi.2": Row(
        "vi.1",
        Kn.settle,
        ("R2", "R2", "R1", "R1"),
        ["R2*:0", "R1^prev:100"],
        "T T T T T",
        7,
        ["*:0", "R1^prev:100"],
        7,
        _vi2_extra,
    ),
    "vii.1": Row(
        "iii.1",
        lambda k: k.patch(uri=V3).settle(),
        ("R3", "R2", "R1", ""),
        ["R2*:25", "R1^prev:75"],
        "U U T T U",
        4,
        ["*:25", "R1^prev:75"],
        4,
    ),
    "vii.2": Row(
        "vii.1",
        lambda k: k.advance(30),
        ("R3", "R3", "R1", ""),
        ["R3*:25", "R1^prev:75"],
        "T T T T T",
        4,
        extra=_vii2_extra,
    ),
    "vii.2'": Row(
        "iii.1",
        lambda k: k.patch(uri=BAD).settle(),
        ("R3", "R2", "R1", ""),
        ["R2*:25", "R1^prev:75"],
        "F F T T F",
        4,
        ["*:25", "R1^prev:75"],
        4,
        _failed_extra,
    ),
    "viii": Row(
        "i.3",
        lambda k: k.patch(uri=BAD, p=10).settle(),
        ("R2", "R1", "R1", ""),
        ["R1*:10", "R1^prev:90"],
        "F F T T F",
        2,
        ["*:10", "R1^prev:90"],
        2,
        _viii_extra,
    ),
}


def replay(row_id: str, driver: Kn | None = None) -> Kn:
    path: list[str] = []
    current: str | None = row_id
    while current is not None:
        path.append(current)
        current = ROWS[current].after
    k = driver or Kn()
    for step in reversed(path):
        ROWS[step].action(k)
    return k


@pytest.mark.parametrize("row_id", list(ROWS))
def test_scenario_row(row_id: str) -> None:
    row = ROWS[row_id]
    k = replay(row_id)
    assert k.revisions() == row.revisions, "LC / LRdy / LRO / PRO"
    assert k.traffic() == row.traffic, "status traffic (effective routing)"
    got = k.conds().split()
    for want, have, name in zip(row.conds.split(), got, ("P", "PC", "PR", "I", "R"), strict=True):
        allowed = {"T", "U"} if want == "?" else {want}
        assert have in allowed, f"{name}: {k.conds()} != {row.conds}"
    assert k.og() == row.og, "observedGeneration is the ksvc's"
    if row.ksvc is not None:
        assert k.ksvc_traffic() == row.ksvc, "ksvc spec.traffic"
    if row.kg is not None:
        assert k.ksvc.generation == row.kg, "ksvc generation"
    if row.extra is not None:
        row.extra(k)


def test_viii_with_p_unset_routes_everything_to_r1() -> None:
    k = replay("i.3").patch(uri=BAD).settle()
    assert k.revisions() == ("R2", "R1", "R1", "")
    assert k.traffic() == ["R1*:100"]
    assert k.conds() == "F F T T F"


# --- notes on the scenarios -----------------------------------------------------------------


def test_p0_alone_does_not_recover_from_viii() -> None:
    k = replay("viii").patch(p=0).settle()
    assert k.conds() == "F F T T F", "the Configuration stays failed"
    assert k.traffic() == ["R1*:0", "R1^prev:100"]


def test_getting_out_of_viii_reverts_to_a_new_revision_r3_then_promotes_it() -> None:
    k = replay("viii").patch(p=0).settle()
    k.patch(uri=V1).settle()
    assert k.revisions() == ("R3", "R1", "R1", ""), "the revert is a new revision R3"
    k.advance(30)
    assert k.revisions() == ("R3", "R3", "R1", "")
    assert k.traffic() == ["R3*:0", "R1^prev:100"]
    assert k.conds() == "T T T T T", "Ready comes back once R3 is ready"
    assert k.split() == [("R3", 0), ("R1", 100)]
    k.patch(p=None).settle()
    assert k.revisions() == ("R3", "R3", "R3", "R1")
    assert k.traffic() == ["R3*:100"]


def test_reverting_and_clearing_p_together_after_v_sends_everything_to_r2() -> None:
    k = replay("v").patch(uri=V1, p=None).settle()
    assert k.revisions()[:2] == ("R3", "R2"), "R3 is not ready yet"
    assert k.traffic() == ["R2*:100"], "latest resolves to the rejected R2 (inferred, §1.5)"
    assert k.split() == [("R2", 100)]


def test_clearing_p_after_v_gives_r2_everything() -> None:
    k = replay("v").patch(p=None).settle()
    assert k.traffic() == ["R2*:100"]
    assert k.revisions()[2:] == ("R2", "R1")


def test_reraising_p_after_vi_canaries_r2_against_r1_again() -> None:
    k = replay("vi.2").patch(p=25).settle()
    assert k.revisions() == ("R2", "R2", "R1", "R1")
    assert k.traffic() == ["R2*:25", "R1^prev:75"]
    assert k.conds() == "T T T T T"


def test_setting_p_below_100_in_advance_before_any_promotion_is_harmless() -> None:
    k = replay("i.3").patch(p=10).settle()
    assert k.revisions() == ("R1", "R1", "R1", "")
    assert k.traffic() == ["R1*:10", "R1^prev:90"]
    assert k.split() == [("R1", 100)]


def test_first_deploy_ignores_canary_traffic_percent() -> None:
    k = Kn().create(p=10).settle()
    assert k.ksvc_traffic() == ["*:100"], "no rolled-out revision yet: p is ignored"
    k.advance(30)
    assert k.revisions() == ("R1", "R1", "R1", ""), "R1 reached 100 % and was rolled out"
    # from then on p applies, and splits R1 against itself
    assert k.ksvc_traffic() == ["*:10", "R1^prev:90"]
    assert k.traffic() == ["R1*:10", "R1^prev:90"]
    assert k.split() == [("R1", 100)]


@pytest.mark.parametrize("p", [150, 101, -5])
def test_percent_out_of_range_after_a_rollout_fails_the_reconcile(p: int) -> None:
    k = replay("i.3")
    before = k.ksvc
    k.patch(p=p).settle()
    ready = k.condition("PredictorReady")
    assert ready is not None
    assert ready["status"] == FALSE
    assert ready["reason"] == "ReconcileFailed"
    assert "denied the request" in ready["message"]
    overall = k.condition("Ready")
    assert overall is not None
    assert overall["status"] == FALSE
    assert k.ksvc is before, "the dry-run update is refused: the ksvc is untouched"
    assert k.split() == [("R1", 100)], "the old revision keeps serving"
    k.patch(p=None).settle()
    assert k.conds() == "T T T T T"


def test_percent_out_of_range_is_ignored_until_the_first_rollout() -> None:
    k = Kn().create(p=150).settle()
    assert k.ksvc_traffic() == ["*:100"]
    assert k.conds() == "U U U U U", "no error while nothing has been rolled out"
    k.advance(30)
    assert k.revisions()[2] == "R1", "R1 was rolled out by the reconcile that saw R1*:100"
    ready = k.condition("PredictorReady")
    assert ready is not None
    assert ready["reason"] == "ReconcileFailed", "...and then p=150 fails"
    assert k.split() == [("R1", 100)]


def test_route_reprogramming_shows_a_brief_unknown() -> None:
    k = replay("ii.3")
    k.writes.clear()
    k.patch(p=25).settle()
    routes = [
        next(c for c in w["conditions"] if c["type"] == "PredictorRouteReady")["status"]
        for w in k.writes
    ]
    assert UNKNOWN in routes
    assert routes[-1] == TRUE


def test_status_lags_one_reconcile_behind_the_ksvc_update() -> None:
    k = replay("iii.1")
    k.patch(p=100)
    k.reconcile()
    assert k.ksvc_traffic() == ["*:100"], "KServe updated the ksvc..."
    assert k.traffic() == ["R2*:25", "R1^prev:75"], "...but copied the status from before"


def test_nil_and_100_give_the_same_traffic_so_the_ksvc_is_not_updated() -> None:
    k = replay("iv.a")
    generation = k.ksvc.generation
    k.patch(p=None).settle()
    assert k.ksvc.generation == generation
    assert k.og() < k.isvc["metadata"]["generation"], "og never catches up after nil ↔ 100"


def test_metadata_only_edit_creates_a_revision_and_og_runs_ahead() -> None:
    k = replay("i.3")
    k.annotate("example.com/owner", "risk").settle()
    assert k.revisions()[0] == "R2", "any non-filtered annotation mints a revision"
    assert k.og() == 2 > k.isvc["metadata"]["generation"] == 1


def test_disallowed_annotation_edit_creates_no_revision() -> None:
    k = replay("i.3")
    k.annotate("kubectl.kubernetes.io/last-applied-configuration", "{}").settle()
    assert k.revisions()[0] == "R1"
    assert k.ksvc.generation == 1


def test_tag_routing_adds_a_latest_tag_with_its_own_url() -> None:
    k = (
        Kn()
        .create(annotations={"serving.kserve.io/enable-tag-routing": "true"})
        .settle()
        .advance(30)
    )
    k.patch(uri=V2, p=10).settle().advance(30)
    traffic = k.predictor["traffic"]
    assert traffic[0]["tag"] == "latest"
    assert traffic[0]["url"] == "http://latest-m-predictor.ns.example.com"
    assert traffic[1]["url"] == "http://prev-m-predictor.ns.example.com"


def test_a_never_ready_revision_fails_only_at_the_progress_deadline() -> None:
    never = ModelBehaviour(readiness=Readiness.NEVER)
    k = replay("i.3", Kn(book(**{V2: never}))).patch(uri=V2, p=10).settle()
    assert k.conds() == "U U T T U"
    assert k.status["modelStatus"]["transitionStatus"] == "InProgress"
    k.advance(599)
    assert k.conds() == "U U T T U", "still waiting before 600 s"
    k.advance(1)
    assert k.conds() == "F F T T F"
    ready = k.condition("PredictorReady")
    assert ready is not None
    assert ready["reason"] == "RevisionFailed"
    assert "Initial scale was never achieved" in ready["message"]
    assert k.status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"


def test_editing_the_behaviour_makes_a_waiting_revision_ready_without_timers() -> None:
    never = ModelBehaviour(readiness=Readiness.NEVER)
    k = replay("i.3", Kn(book(**{V2: never}))).patch(uri=V2, p=10).settle()
    k.book = k.book.with_model(V2, ModelBehaviour(ready_after_seconds=0))
    k.advance(1)
    assert k.revisions() == ("R2", "R2", "R1", "")
    assert k.traffic() == ["R2*:10", "R1^prev:90"]


def test_crash_loop_on_first_deploy_fails_with_no_route() -> None:
    k = Kn().create(uri=BAD).settle()
    assert k.revisions() == ("R1", "", "", "")
    ready = k.condition("PredictorReady")
    assert ready is not None
    assert ready["status"] == FALSE
    route = k.condition("PredictorRouteReady")
    assert route is not None
    assert route["status"] == FALSE
    assert route["reason"] == "RevisionMissing"
    assert k.split() == []


def test_disable_auto_update_ignores_changes_while_ready() -> None:
    k = Kn().create(annotations={"serving.kserve.io/disable-auto-update": "true"}).settle()
    assert k.revisions()[0] == "R1", "not Ready yet: reconciled normally"
    k.advance(30)
    k.patch(uri=V2, p=10).settle()
    assert k.ksvc_traffic() == ["*:100"], "Ready: the change is ignored"
    assert k.revisions()[0] == "R1"


def test_stop_deletes_the_ksvc_and_wipes_the_status_and_resume_restarts_numbering() -> None:
    k = replay("iii.1")
    k.annotate("serving.kserve.io/stop", "true").settle()
    assert "m-predictor" not in k.world.services
    assert k.status["deploymentMode"] == "Knative"
    assert "components" not in k.status
    for kind in ("PredictorReady", "IngressReady", "Ready"):
        c = k.condition(kind)
        assert c is not None, kind
        assert (c["status"], c.get("reason")) == (FALSE, "Stopped"), kind
    stopped = k.condition("Stopped")
    assert stopped is not None
    assert stopped["status"] == TRUE
    writes = len(k.writes)
    k.settle()
    assert len(k.writes) == writes, "stopped: nothing more to write"
    k.annotate("serving.kserve.io/stop", None).settle().advance(30)
    assert k.revisions() == ("R1", "R1", "R1", ""), "a new ksvc numbers from 00001 again"
    stopped = k.condition("Stopped")
    assert stopped is not None
    assert stopped["status"] == FALSE
    assert k.conds() == "T T T T T"


def test_renaming_the_predictor_creates_a_second_ksvc_whose_route_cannot_use_lro() -> None:
    k = replay("i.3").patch(name="blue", p=10).settle().advance(30)
    assert "m-predictor" in k.world.services, "the old ksvc is never cleaned up"
    blue = k.world.services["m-blue-predictor"]
    assert [r.name for r in blue.revisions] == ["m-blue-predictor-00001"]
    route = k.condition("PredictorRouteReady")
    assert route is not None
    assert route["status"] == FALSE
    assert route["reason"] == "RevisionNotOwned"


# --- building blocks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "lro", "want"),
    [
        (None, "", [(100, True, "", "")]),
        (0, "", [(100, True, "", "")]),
        (50, "", [(100, True, "", "")]),
        (100, "", [(100, True, "", "")]),
        (None, "r1", [(100, True, "", "")]),
        (0, "r1", [(0, True, "", ""), (100, False, "r1", "prev")]),
        (30, "r1", [(30, True, "", ""), (70, False, "r1", "prev")]),
        (100, "r1", [(100, True, "", "")]),
    ],
)
def test_traffic_table_of_section_1_3(
    p: int | None, lro: str, want: list[tuple[int, bool, str, str]]
) -> None:
    got = [(t.percent, t.latest_revision, t.revision_name, t.tag) for t in compute_traffic(p, lro)]
    assert got == want


def test_knative_validation_messages() -> None:
    assert validate_traffic(compute_traffic(150, "r1")) == [
        "Traffic targets sum to 150, want 100: spec.traffic",
        "expected 0 <= 150 <= 100: spec.traffic[0].percent",
    ]
    assert validate_traffic(compute_traffic(-5, "r1")) == [
        "expected 0 <= -5 <= 100: spec.traffic[0].percent",
        "expected 0 <= 105 <= 100: spec.traffic[1].percent",
    ]
    assert validate_traffic([TrafficTarget(percent=100, latest_revision=True)]) == []


def test_condition_algebra_ready_follows_dependents() -> None:
    m = ConditionManager([], now=T0, dependents=("PredictorReady", "IngressReady"))
    m.initialize()
    assert m.status_of("Ready") == UNKNOWN
    m.mark_true("PredictorReady")
    assert m.status_of("Ready") == UNKNOWN, "IngressReady is still Unknown"
    m.mark_true("IngressReady")
    assert m.is_happy()
    m.mark_false("PredictorReady", "RevisionFailed", "boom")
    assert m.get("Ready") == Condition("Ready", FALSE, "RevisionFailed", "boom", "", T0)
    m.mark_true_with_reason("RoutesReady", "", "")
    routes = m.get("RoutesReady")
    assert routes is not None
    assert routes.severity == "Info"
    assert m.status_of("Ready") == FALSE, "non-dependents never make Ready happy"


def test_condition_algebra_unknown_on_a_non_dependent_with_a_false_dependent() -> None:
    m = ConditionManager(
        [Condition("PredictorReady", FALSE, "X", "x"), Condition("Ready", UNKNOWN)],
        now=T0,
        dependents=("PredictorReady", "IngressReady"),
    )
    m.mark_unknown("RoutesReady", "Why", "because")
    ready = m.get("Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == (FALSE, "Why", "because")


def test_condition_algebra_most_recent_unhappy_dependent_wins() -> None:
    m = ConditionManager([], now=T0, dependents=("PredictorReady", "IngressReady"))
    m.initialize()
    m.mark_unknown("IngressReady", "First", "")
    m.mark_unknown("PredictorReady", "Second", "")
    m.mark_true_with_reason("Stopped", "", "")
    ready = m.get("Ready")
    assert ready is not None
    assert ready.reason == "Second"


def test_condition_times_only_move_on_change() -> None:
    m = ConditionManager(
        [Condition("Stopped", FALSE, severity="Info", last_transition=T0)], now=T0 + 50
    )
    m.mark_false("Stopped", "", "")
    stopped = m.get("Stopped")
    assert stopped is not None
    assert stopped.last_transition == T0


# --- the loop on a fake apiserver (row ix and friends) --------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKube(KubeClient):
    """Just enough of an apiserver for one resource: resourceVersions, conflicts, the
    status subresource, merge patches and finalizers."""

    def __init__(self) -> None:
        super().__init__(api=cast(Any, None))
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.status_puts = 0
        self.conflicts = 0
        self.lists = 0
        self.watch_failures: list[KubeError] = []
        self.events: queue.Queue[WatchEvent] = queue.Queue()

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    def add(self, obj: dict[str, Any]) -> None:
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("generation", 1)
        self.objects[(stored["metadata"]["namespace"], stored["metadata"]["name"])] = stored
        self.events.put(WatchEvent("ADDED", self._bump(stored)))

    def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
    ) -> Iterator[WatchEvent]:
        if self.watch_failures:
            raise self.watch_failures.pop(0)
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # a server-side watch timeout, as the apiserver does
            try:
                yield self.events.get(timeout=0.02)
            except queue.Empty:
                continue

    def list(
        self, kind: ResourceKind, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        items = [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.objects.items())
            if namespace in (None, ns)
        ]
        return items, str(self.version)

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.objects[(str(namespace), name)])
        except KeyError:
            raise NotFound(404, "NotFound", name) from None

    def replace_status(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Any
    ) -> dict[str, Any]:
        stored = self.objects.get((str(namespace), name))
        if stored is None:
            raise NotFound(404, "NotFound", name)
        if self.conflicts:
            self.conflicts -= 1
            raise Conflict(409, "Conflict", "the object has been modified")
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        stored["status"] = copy.deepcopy(body["status"])
        self.status_puts += 1
        return self._bump(stored)

    def patch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: Any = "merge",
        resource_version: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        assert not dry_run, "the simulator never dry-runs"
        key = (str(namespace), name)
        stored = self.objects.get(key)
        if stored is None:
            raise NotFound(404, "NotFound", name)
        old_spec = copy.deepcopy(stored.get("spec"))
        merged: dict[str, Any] = merge_patch(stored, patch)
        if merged.get("spec") != old_spec:
            merged["metadata"]["generation"] += 1
        if merged["metadata"].get("deletionTimestamp") and not merged["metadata"].get("finalizers"):
            del self.objects[key]
            return merged
        self.objects[key] = merged
        return self._bump(merged)

    def delete(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        key = (str(namespace), name)
        stored = self.objects[key]
        if stored["metadata"].get("finalizers"):
            stored["metadata"]["deletionTimestamp"] = "2027-01-15T08:00:00Z"
            self._bump(stored)
        else:
            del self.objects[key]


@dataclass
class Loop:
    kube: FakeKube
    sim: KServeSimulator
    splits: list[tuple[str, str, list[SplitTarget]]]
    path: Path

    def set_behaviour(self, behaviour: BehaviourBook) -> None:
        behaviour.save(self.path)

    def isvc(self) -> dict[str, Any]:
        return self.kube.get(INFERENCE_SERVICE, "ns", "m")


@pytest.fixture
def loop(tmp_path: Path) -> Loop:
    path = tmp_path / "behaviour.yaml"
    book().save(path)
    kube = FakeKube()
    splits: list[tuple[str, str, list[SplitTarget]]] = []
    sim = KServeSimulator(
        kube,
        BehaviourWatcher(path),
        namespaces=["ns"],
        on_split_change=lambda ns, name, targets: splits.append((ns, name, targets)),
    )
    return Loop(kube, sim, splits, path)


def isvc_object(
    spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "m", "namespace": "ns", "annotations": annotations or {}},
        "spec": spec
        or {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V1}}},
    }


def test_row_ix_delete_removes_the_finalizer_and_writes_no_status(loop: Loop) -> None:
    loop.kube.add(isvc_object())
    loop.sim.run_once(T0)
    assert FINALIZER in loop.isvc()["metadata"]["finalizers"]
    loop.sim.run_once(T0 + 30)
    assert loop.sim.effective_split("ns", "m") == [SplitTarget(R1, 100, V1, "knative")]
    assert loop.splits[-1] == ("ns", "m", [SplitTarget(R1, 100, V1, "knative")])
    loop.kube.delete(INFERENCE_SERVICE, "ns", "m")
    puts = loop.kube.status_puts
    loop.sim.run_once(T0 + 31)
    assert ("ns", "m") not in loop.kube.objects, "the finalizer was removed, so the object is gone"
    assert loop.kube.status_puts == puts, "no status write during deletion"
    assert loop.sim.effective_split("ns", "m") == []
    assert loop.splits[-1] == ("ns", "m", [])
    assert loop.sim.knative_world("ns", "m") is None, "the world is forgotten"


def test_the_loop_writes_only_changes_and_follows_revisions(loop: Loop) -> None:
    loop.kube.add(isvc_object())
    loop.sim.run_once(T0)
    first = loop.kube.status_puts
    loop.sim.run_once(T0 + 1)
    assert loop.kube.status_puts == first, "nothing changed, nothing written"
    loop.sim.run_once(T0 + 30)
    status = loop.isvc()["status"]
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == TRUE
    loop.kube.patch(
        INFERENCE_SERVICE,
        "ns",
        "m",
        {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}},
    )
    loop.sim.run_once(T0 + 40)
    loop.sim.run_once(T0 + 70)
    predictor = loop.isvc()["status"]["components"]["predictor"]
    assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [(R2, 10), (R1, 90)]
    assert loop.sim.effective_split("ns", "m") == [
        SplitTarget(R2, 10, V2, "knative"),
        SplitTarget(R1, 90, V1, "knative"),
    ]


def test_the_threaded_loop_relists_after_gone_and_backs_off_when_unavailable(loop: Loop) -> None:
    loop.kube.watch_failures = [
        Gone(410, "Expired", "too old resource version"),
        Unavailable(0, "Unavailable", "connection refused"),
    ]
    sim = KServeSimulator(
        loop.kube,
        BehaviourWatcher(loop.path),
        namespaces=["ns"],
        watch_timeout_seconds=1,
        poll_interval=0.02,
        clock=lambda: T0,  # frozen: readiness comes from the behaviour, not from time
    )
    loop.set_behaviour(book(**{V1: ModelBehaviour(ready_after_seconds=0)}))
    before = set(threading.enumerate())
    sim.start()
    try:
        loop.kube.add(isvc_object())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sim.effective_split("ns", "m"):
            time.sleep(0.02)
        assert sim.effective_split("ns", "m") == [SplitTarget(R1, 100, V1, "knative")]
    finally:
        sim.stop()
    assert loop.kube.lists >= 2, "listed again after Gone"
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_a_conflicting_status_write_is_retried_on_a_fresh_read(loop: Loop) -> None:
    loop.kube.add(isvc_object())
    loop.kube.conflicts = 2
    loop.sim.run_once(T0)
    assert "status" in loop.isvc(), "written after re-reading twice"


def test_the_behaviour_file_drives_readiness(loop: Loop) -> None:
    loop.set_behaviour(book(**{V1: ModelBehaviour(readiness=Readiness.NEVER)}))
    loop.kube.add(isvc_object())
    loop.sim.run_once(T0)
    loop.sim.run_once(T0 + 100)
    assert loop.sim.effective_split("ns", "m") == []
    loop.set_behaviour(book(**{V1: ModelBehaviour(ready_after_seconds=0)}))
    loop.sim.run_once(T0 + 101)
    assert loop.sim.effective_split("ns", "m") == [SplitTarget(R1, 100, V1, "knative")]


def test_a_spec_the_webhook_would_refuse_is_flagged_and_not_acted_on(loop: Loop) -> None:
    loop.kube.add(isvc_object())
    loop.sim.run_once(T0)
    loop.sim.run_once(T0 + 30)
    canary = [{"predictor": {"name": "v2", "model": {"storageUri": V2}}, "trafficPercent": 10}]
    loop.kube.patch(INFERENCE_SERVICE, "ns", "m", {"spec": {"canary": canary}})
    loop.sim.run_once(T0 + 31)
    status = loop.isvc()["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "PredictorReady")
    assert ready["status"] == FALSE
    assert ready["reason"] == "WebhookRejected"
    assert "canary is only supported in Standard deployment mode" in ready["message"]
    assert loop.sim.rejections
    assert loop.sim.rejections[-1].name == "m"
    assert loop.sim.effective_split("ns", "m") == [SplitTarget(R1, 100, V1, "knative")]
    loop.kube.patch(INFERENCE_SERVICE, "ns", "m", {"spec": {"canary": None}})
    loop.sim.run_once(T0 + 32)
    ready = next(c for c in loop.isvc()["status"]["conditions"] if c["type"] == "PredictorReady")
    assert ready["status"] == TRUE


@pytest.mark.parametrize(
    ("status_mode", "annotation", "default", "want"),
    [
        ("", None, "Knative", "Knative"),
        ("", None, "Standard", "Standard"),
        ("", None, "Serverless", "Knative"),
        ("", "RawDeployment", "Knative", "Standard"),
        ("", "Serverless", "Standard", "Knative"),
        ("", "bogus", "Knative", "Knative"),
        ("Knative", "Standard", "Standard", "Knative"),
        ("RawDeployment", None, "Knative", "Standard"),
    ],
)
def test_deployment_mode_resolution(
    status_mode: str, annotation: str | None, default: str, want: str
) -> None:
    obj: dict[str, Any] = isvc_object()
    if annotation is not None:
        obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = annotation
    if status_mode:
        obj["status"] = {"deploymentMode": status_mode}
    assert deployment_mode(obj, default) == want
