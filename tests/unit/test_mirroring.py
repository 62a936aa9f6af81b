"""The mirror keeper (canary.mirroring), the challenger helpers (canary.challengers) and the
shadow checks (canary.checks): what ends up in the cluster and in the audit trail for each
state a rollout can be in, with the router faked in memory."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis import CheckEvaluation, Outcome
from canary.challengers import challenger_problem, challenger_view, passed_shadow
from canary.checks import (
    CEILING_ERROR_RATE,
    CEILING_LATENCY,
    ceiling_breach,
    check_definitions,
    shadow_checks,
)
from canary.document import RolloutDocument
from canary.k8s.client import Unavailable
from canary.mirroring import MirrorKeeper, drift, mirror_service, predictor_service, wanted
from canary.model import CommandKind, Phase, Revision, RolloutState, TrafficView
from canary.policy import RolloutPolicy
from canary.routing.mirror import MirrorError, MirrorKind, MirrorObservation, MirrorSpec
from tests.unit.rollout_driver import challenging, make_policy, reach, shadowing

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


class FakeMirrors:
    """An in-memory MirrorRouter: one object per (namespace, champion)."""

    def __init__(self, kind: MirrorKind = "gateway-api") -> None:
        self._kind: MirrorKind = kind
        self.objects: dict[tuple[str, str], MirrorObservation] = {}
        self.writes: list[MirrorSpec] = []
        self.removals: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    @property
    def kind(self) -> MirrorKind:
        return self._kind

    def apply(self, spec: MirrorSpec) -> MirrorObservation:
        if self.fail is not None:
            raise self.fail
        current = self.objects.get((spec.namespace, spec.champion))
        if current is not None and not current.managed:
            raise MirrorError(f"{spec.name} exists and is not managed by kserve-canary")
        self.writes.append(spec)
        written = MirrorObservation(
            kind=self._kind, namespace=spec.namespace, name=spec.name, champion=spec.champion,
            challenger=spec.challenger, rollout_id=spec.rollout_id,
            source_service=spec.source_service, mirror_service=spec.mirror_service,
            percent=float(spec.percent), managed=True, owner_uid=spec.champion_uid,
            resource_version=str(len(self.writes)),
        )  # fmt: skip
        self.objects[(spec.namespace, spec.champion)] = written
        return written

    def observe(self, namespace: str, champion: str) -> MirrorObservation | None:
        if self.fail is not None:
            raise self.fail
        return self.objects.get((namespace, champion))

    def remove(self, namespace: str, champion: str) -> bool:
        current = self.objects.get((namespace, champion))
        if current is None:
            return False
        if not current.managed:
            raise MirrorError("not ours")
        del self.objects[(namespace, champion)]
        self.removals.append((namespace, champion))
        return True

    def owned(self, namespace: str | None) -> list[MirrorObservation]:
        return [
            o
            for (ns, _), o in sorted(self.objects.items())
            if o.managed and (namespace is None or ns == namespace)
        ]


def isvc(name: str = "scorer", predictor_name: str | None = None) -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"storageUri": "s3://models/r1"}}
    if predictor_name:
        predictor["name"] = predictor_name
    return {
        "metadata": {"name": name, "namespace": "fraud", "uid": "uid-1"},
        "spec": {"predictor": predictor},
    }


def document(state: RolloutState, policy: RolloutPolicy, mode: str = "standard") -> RolloutDocument:
    return RolloutDocument(
        state=state, policy=policy, mode=mode,  # type: ignore[arg-type]
        uid="uid-1", metric_profile="istio",
    )  # fmt: skip


def shadow_doc(mode: str = "standard") -> RolloutDocument:
    d = shadowing()
    assert d.state is not None
    return document(d.state, d.policy, mode)


def challenger_doc(mode: str = "knative", **shadow: Any) -> RolloutDocument:
    d = challenging(mirrorPercent=25, **shadow)
    assert d.state is not None
    return document(d.state, d.policy, mode)


# --- what the state asks for ------------------------------------------------------------


def test_a_dark_launch_mirrors_the_champion_service_to_the_canary_deployment() -> None:
    spec = wanted(shadow_doc("standard"), isvc())
    assert spec is not None
    assert (spec.source_service, spec.mirror_service, spec.percent) == (
        "scorer-predictor",
        "r2",
        100,
    )
    assert spec.challenger == "scorer", "a dark launch's challenger is the champion itself"


def test_a_knative_challenger_is_reached_through_its_revision_private_service() -> None:
    spec = wanted(challenger_doc("knative"), isvc(predictor_name="main"))
    assert spec is not None
    assert spec.source_service == "scorer-main-predictor"
    assert spec.mirror_service == "c1-private", "never the Host-routed Knative Service"
    assert (spec.challenger, spec.percent) == ("scorer-v2", 25)


@pytest.mark.parametrize(
    "phase",
    [p for p in Phase if p is not Phase.SHADOWING and p is not Phase.PAUSED],
)
def test_no_mirror_outside_a_shadow_phase(phase: Phase) -> None:
    d = reach(phase)
    assert d.state is not None
    assert wanted(document(d.state, d.policy), isvc()) is None


def test_a_paused_shadow_keeps_mirroring_a_paused_canary_does_not() -> None:
    paused_shadow = shadowing().command(CommandKind.PAUSE, "looking at the comparison")
    assert paused_shadow.state is not None
    assert wanted(document(paused_shadow.state, paused_shadow.policy), isvc()) is not None
    paused = reach(Phase.PAUSED)
    assert paused.state is not None
    assert wanted(document(paused.state, paused.policy), isvc()) is None


def test_mirror_service_per_mode() -> None:
    assert mirror_service("knative", "c-predictor-00003") == "c-predictor-00003-private"
    assert mirror_service("standard", "c-predictor") == "c-predictor"
    assert predictor_service(isvc()) == "scorer-predictor"


def _observation(spec: MirrorSpec, **changes: Any) -> MirrorObservation:
    base = MirrorObservation(
        kind="istio", namespace=spec.namespace, name=spec.name, champion=spec.champion,
        challenger=spec.challenger, rollout_id=spec.rollout_id,
        source_service=spec.source_service, mirror_service=spec.mirror_service,
        percent=float(spec.percent), managed=True, owner_uid=spec.champion_uid,
        resource_version="1",
    )  # fmt: skip
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({}, None),
        ({"percent": 100.0}, "mirrors 100% instead of 25%"),
        ({"mirror_service": "elsewhere"}, "mirrors to elsewhere instead of c1-private"),
        ({"source_service": "other-predictor"}, "routes other-predictor instead of"),
        ({"rollout_id": "ro-old"}, "labelled for rollout ro-old"),
        ({"percent": 0.0, "mirror_service": "", "source_service": ""}, "mirrors 0%"),
    ],
)
def test_drift_names_every_difference(changes: dict[str, Any], said: str | None) -> None:
    spec = wanted(challenger_doc(), isvc())
    assert spec is not None
    found = drift(_observation(spec, **changes), spec)
    if said is None:
        assert found is None
    else:
        assert found is not None
        assert said in found
    assert drift(None, spec) == "absent"


# --- the keeper ---------------------------------------------------------------------------


def test_the_first_write_is_recorded_as_applied_then_nothing_until_it_drifts() -> None:
    router = FakeMirrors()
    keeper = MirrorKeeper(router)
    doc = challenger_doc()
    upkeep = keeper.keep(doc, isvc())
    notes = upkeep.notes
    assert [n.action for n in notes] == ["mirror.applied"]
    assert upkeep.in_place
    assert notes[0].evidence["percent"] == 25.0
    assert notes[0].event is None
    doc = replace(doc, mirror_applied_at=T0)
    again = keeper.keep(doc, isvc())
    assert again.notes == [], "an object that matches is left alone"
    assert again.in_place, "and reported in place (its evidence counts)"
    assert len(router.writes) == 1


@pytest.mark.parametrize("edit", ["deleted", "percent", "target"])
def test_a_mirror_removed_or_edited_by_hand_is_restored_and_reported(edit: str) -> None:
    router = FakeMirrors()
    keeper = MirrorKeeper(router)
    doc = challenger_doc()
    keeper.keep(doc, isvc())
    doc = replace(doc, mirror_applied_at=T0)
    key = ("fraud", "scorer")
    if edit == "deleted":
        del router.objects[key]
    elif edit == "percent":
        router.objects[key] = replace(router.objects[key], percent=100.0)
    else:
        router.objects[key] = replace(router.objects[key], mirror_service="attacker")
    notes = keeper.keep(doc, isvc()).notes
    assert [n.action for n in notes] == ["mirror.restored"]
    assert notes[0].event is not None
    assert notes[0].event.type == "Warning"
    assert router.objects[key].percent == 25.0
    assert router.objects[key].mirror_service == "c1-private"


def test_the_mirror_is_removed_when_the_shadow_ends_and_an_unmanaged_object_is_never_touched() -> (
    None
):
    router = FakeMirrors()
    keeper = MirrorKeeper(router)
    doc = challenger_doc()
    keeper.keep(doc, isvc())
    ended = reach(Phase.REJECTED)
    assert ended.state is not None
    upkeep = keeper.keep(document(ended.state, ended.policy, "knative"), isvc())
    assert [n.action for n in upkeep.notes] == ["mirror.removed"]
    assert upkeep.gone
    assert router.objects == {}
    foreign = _observation(wanted(doc, isvc()) or _never(), managed=False)
    router.objects[("fraud", "scorer")] = foreign
    assert keeper.keep(document(ended.state, ended.policy, "knative"), isvc()).notes == []
    assert router.objects[("fraud", "scorer")] == foreign


def _never() -> MirrorSpec:
    raise AssertionError("a shadowing document always wants a mirror")


def test_a_failing_write_is_reported_once_and_retried_on_every_pass() -> None:
    router = FakeMirrors()
    router.fail = Unavailable(503, "ServiceUnavailable", "etcd leader changed")
    keeper = MirrorKeeper(router)
    doc = challenger_doc()
    first = keeper.keep(doc, isvc()).notes
    assert [n.action for n in first] == ["mirror.failed"]
    assert first[0].event is not None
    assert "etcd leader changed" in first[0].reason
    assert keeper.keep(doc, isvc()).notes == [], "the same failure is not recorded twice"
    router.fail = None
    assert [n.action for n in keeper.keep(doc, isvc()).notes] == ["mirror.applied"]


def test_without_mirroring_configured_a_shadow_is_told_why() -> None:
    keeper = MirrorKeeper(None)
    notes = keeper.keep(challenger_doc(), isvc()).notes
    assert [n.action for n in notes] == ["mirror.failed"]
    assert "KSC_SHADOW_MIRROR" in notes[0].reason


def test_the_sweep_removes_what_no_shadowing_rollout_owns() -> None:
    router = FakeMirrors()
    keeper = MirrorKeeper(router)
    live = challenger_doc()
    keeper.keep(live, isvc())
    stale_spec = replace(wanted(live, isvc()) or _never(), champion="other", rollout_id="ro-9")
    router.apply(stale_spec)
    old_spec = replace(wanted(live, isvc()) or _never(), champion="third", rollout_id="ro-8")
    router.apply(old_spec)
    ended = reach(Phase.SUCCEEDED)
    assert ended.state is not None
    active = {
        ("fraud", "scorer"): live,
        ("fraud", "third"): document(ended.state, ended.policy),
    }
    notes = keeper.sweep(lambda ns, name: active.get((ns, name)))
    assert sorted(n.name for n in notes) == ["other", "third"]
    assert all(n.action == "mirror.removed" for n in notes)
    assert list(router.objects) == [("fraud", "scorer")]


def test_the_sweep_lists_each_watched_namespace() -> None:
    router = FakeMirrors()
    keeper = MirrorKeeper(router, namespaces=("fraud",))
    spec = wanted(challenger_doc(), isvc()) or _never()
    router.apply(replace(spec, namespace="credit", champion="left"))
    router.apply(replace(spec, champion="left"))
    notes = keeper.sweep(lambda ns, name: None)
    assert [(n.namespace, n.name) for n in notes] == [("fraud", "left")]
    assert ("credit", "left") in router.objects, "outside the watched namespaces: not ours to judge"


# --- challengers --------------------------------------------------------------------------


def _view(latest: str, stable: str, *, ready: bool = True, spec: int = 100) -> TrafficView:
    return TrafficView(
        latest=Revision(latest, f"s3://{latest}"),
        stable=Revision(stable, f"s3://{stable}"),
        split={stable: 100},
        spec_percent=spec,
        converged=True,
        latest_ready=ready,
    )


def test_the_challenger_view_pairs_its_newest_revision_with_the_champion_stable() -> None:
    champion = _view("r1", "r1")
    theirs = _view("c2", "c1", ready=False)
    seen = challenger_view(champion, theirs, "knative")
    assert (seen.latest.name, seen.stable and seen.stable.name) == ("c2", "r1")
    assert (seen.spec_percent, seen.share("c2"), seen.latest_ready) == (0, 0, False)


def test_a_champion_with_a_new_model_of_its_own_is_seen_as_it_is() -> None:
    champion = _view("r2", "r1", spec=0)
    assert challenger_view(champion, _view("c1", "c1"), "knative") is champion


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"challenger": "scorer"}, "names the InferenceService itself"),
        ({"shadow_enabled": False}, "has no shadow phase"),
        ({"mirroring": False}, "KSC_SHADOW_MIRROR"),
        ({"challenger_obj": None}, "no such InferenceService"),
        ({"challenger_mode": "standard"}, "runs in standard mode and the champion in knative"),
    ],
)
def test_a_challenger_that_cannot_be_compared_is_refused_with_the_reason(
    kwargs: dict[str, Any], said: str
) -> None:
    arguments: dict[str, Any] = {
        "challenger": "scorer-v2",
        "shadow_enabled": True,
        "policy": "credit",
        "mirroring": True,
        "champion_mode": "knative",
        "challenger_obj": {"metadata": {}},
        "challenger_mode": "knative",
        **kwargs,
    }
    problem = challenger_problem("scorer", **arguments)
    assert problem is not None
    assert said in problem
    assert challenger_problem("scorer", **{**arguments, **_good(kwargs)}) is None


def _good(kwargs: dict[str, Any]) -> dict[str, Any]:
    fixes = {
        "challenger": "scorer-v2",
        "shadow_enabled": True,
        "mirroring": True,
        "challenger_obj": {"metadata": {}},
        "challenger_mode": "knative",
    }
    return {key: fixes[key] for key in kwargs}


def test_only_a_passed_gating_shadow_of_that_very_model_lets_its_canary_skip_the_shadow() -> None:
    passed = reach(Phase.SUCCEEDED)
    assert passed.state is not None
    won = challenging().at(timedelta(minutes=11))
    won.verdict(step=-1, revision="c1")
    won.at(timedelta(minutes=12))
    assert won.phase() is Phase.SUCCEEDED
    assert won.state is not None
    shadowed = document(won.state, won.policy, "knative")
    reported = challenging(after="report").at(timedelta(minutes=30))
    assert reported.state is not None
    docs = [document(passed.state, passed.policy), document(reported.state, reported.policy)]
    assert passed_shadow([*docs, shadowed], "s3://models/c1") is shadowed
    assert passed_shadow(docs, "s3://models/c1") is None, "a report gates nothing"
    assert passed_shadow([shadowed], "s3://models/other") is None
    assert passed_shadow([shadowed], None) is None


# --- shadow checks ------------------------------------------------------------------------


def test_shadow_checks_are_the_policy_checks_renamed_with_the_shadow_minimum_and_ceilings() -> None:
    policy = make_policy(shadow={"enabled": True, "minSamples": 500})
    names = [c.name for c in check_definitions(policy)]
    checks = {c.name: c for c in shadow_checks(policy)}
    assert [f"shadow-{n}" for n in names] == [n for n in checks if not n.startswith("shadow-ceil")]
    assert all(checks[f"shadow-{n}"].min_samples >= 500 for n in names)
    assert checks[CEILING_ERROR_RATE].dry_run
    assert checks[CEILING_LATENCY].absolute_limit == 5.0
    off = make_policy(shadow={"enabled": True, "maxErrorRate": None, "maxLatencyP99": None})
    assert not any(c.name.startswith("shadow-ceiling") for c in shadow_checks(off))


def _evaluation(check: str, value: float | None, samples: int | None) -> CheckEvaluation:
    return CheckEvaluation(
        check=check, evaluated_at=T0, outcome=Outcome.SUCCESSFUL,
        gating_outcome=Outcome.SUCCESSFUL, sufficient=True, query="q", prometheus_url="",
        response_digest="", canary_value=value, baseline_value=0.0, canary_samples=samples,
        baseline_samples=1000, statistic=None, threshold=None, dry_run=True, message="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("check", "value", "samples", "said"),
    [
        (CEILING_ERROR_RATE, 0.5, 100, "error rate 50.0% exceeds the ceiling 20.0%"),
        (CEILING_ERROR_RATE, 0.5, 19, None),
        (CEILING_ERROR_RATE, 0.2, 100, None),
        (CEILING_ERROR_RATE, None, 100, None),
        (CEILING_LATENCY, 7.5, 40, "p99 latency 7.500s exceeds the ceiling 5s"),
        (CEILING_LATENCY, 4.9, 40, None),
        ("shadow-error-rate", 0.9, 1000, None),
    ],
)
def test_a_ceiling_is_breached_only_on_enough_of_the_challengers_requests(
    check: str, value: float | None, samples: int | None, said: str | None
) -> None:
    policy = make_policy(shadow={"enabled": True})
    found = ceiling_breach(policy, [_evaluation(check, value, samples)])
    if said is None:
        assert found is None
    else:
        assert found is not None
        assert said in found


# --- canary status --------------------------------------------------------------------------


def test_status_shows_the_mirror_the_time_left_and_the_latest_comparison() -> None:
    from canary.audit import Measurement, StoredMeasurement
    from canary.ops import shadow_lines

    doc = challenger_doc()
    assert shadow_lines(doc, T0)[-1] == "mirror object not written yet"
    doc = replace(doc, mirror_applied_at=T0)

    def measured(check: str, value: float, samples: int, at: datetime) -> StoredMeasurement:
        m = Measurement(
            check=check, evaluated_at=at, query="q", prometheus_url="", response_digest="",
            canary_value=value, baseline_value=0.02, canary_samples=samples,
            baseline_samples=900, statistic=None, threshold=None, verdict="Successful",
            dry_run=False,
        )  # fmt: skip
        return StoredMeasurement(audit_seq=1, position=0, rollout_id="ro-1", measurement=m)

    history = [
        measured("shadow-latency-p99", 0.05, 40, T0 + timedelta(minutes=1)),
        measured("shadow-latency-p99", 0.04, 250, T0 + timedelta(minutes=2)),
        measured("latency-p99", 9.0, 10, T0),  # a canary step's: not the shadow's
    ]
    lines = shadow_lines(doc, T0 + timedelta(minutes=3), history)
    assert "challenger scorer-v2" in lines[0]
    assert "25% of live requests mirrored to c1" in lines[0]
    assert "mirroring for 3m" in lines[1]
    assert lines[2].startswith("shadow-latency-p99: challenger 0.04 vs champion 0.02")
    assert "(250 vs 900 samples)" in lines[2], "only the latest comparison, with enough samples"
    assert len(lines) == 3
    agreement = replace(measured("shadow-decision-agreement", 0.985, 150, T0).measurement,
                        baseline_value=None, baseline_samples=None, threshold=0.95)  # fmt: skip
    shift = replace(measured("shadow-score-shift", 0.031, 400, T0).measurement,
                    baseline_value=None, baseline_samples=410, threshold=0.1)  # fmt: skip
    outputs = [StoredMeasurement(audit_seq=2, position=i, rollout_id="ro-1", measurement=m)
               for i, m in enumerate((agreement, shift))]  # fmt: skip
    lines = shadow_lines(doc, T0 + timedelta(minutes=3), [*history, *outputs])
    assert lines[2] == (
        "shadow-decision-agreement: agreement 98.50% over 150 pairs, minimum 95.00%, 50 more "
        "samples needed -> Successful at 10:00:00"
    )
    assert lines[4] == (
        "shadow-score-shift: PSI 0.031 between 400 challenger and 410 champion scores, maximum "
        "0.1 -> Successful at 10:00:00"
    )
    ended = reach(Phase.REJECTED)
    assert ended.state is not None
    assert shadow_lines(document(ended.state, ended.policy), T0) == ()
