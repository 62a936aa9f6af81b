"""A small driver for the pure state machine: it plays a rollout forward with an explicit
clock, so tests read like the story of a rollout. No I/O, no sleeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from canary import aftercare, machine
from canary.aftercare import Identity
from canary.model import (
    Action,
    AnalysisVerdict,
    ApprovalDecision,
    CommandKind,
    EmitEvent,
    ManualCommand,
    Observation,
    OptedOut,
    Phase,
    RecordAudit,
    RejectCommand,
    Revision,
    RolloutState,
    ServiceDeleted,
    ServiceObserved,
    SetMirror,
    SetTraffic,
    Tick,
    TrafficView,
    Verdict,
)
from canary.policy import RolloutPolicy

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday
HAND = Identity("kubectl-edit", "Update", "2026-11-23T10:30:00Z")  # a human's field manager


def make_policy(**fields: Any) -> RolloutPolicy:
    base: dict[str, Any] = {
        "name": "default",
        "stepHold": "5m",
        "analysisInterval": "30s",
        "revisionReadyTimeout": "10m",
        "trafficTimeout": "2m",
    }
    base.update(fields)
    return RolloutPolicy.model_validate(base)


APPROVAL = {"gate": "servicenow", "riskOwnerGroup": "credit-risk", "deadline": "8h"}


def view(
    spec: int,
    *,
    share: int | None = None,
    ready: bool = True,
    converged: bool = True,
    latest: str = "r2",
    stable: str = "r1",
    failed: bool = False,
) -> TrafficView:
    """An InferenceService as the router reports it.

    By default the canary serves what the spec commands once it is ready; while it is not
    ready Knative routes its share to the stable revision (KSERVE.md §1.3).
    """
    if share is None:
        share = spec if ready else 0
    split = {latest: share} if latest == stable else {latest: share, stable: 100 - share}
    return TrafficView(
        latest=Revision(latest, f"s3://models/{latest}"),
        stable=Revision(stable, f"s3://models/{stable}"),
        split=split,
        spec_percent=spec,
        converged=converged,
        latest_ready=ready,
        latest_failed=failed,
        failure_message="container exited with code 1" if failed else None,
    )


def promoted_view(revision: str = "r2") -> TrafficView:
    return view(100, latest=revision, stable=revision)


@dataclass
class Driver:
    policy: RolloutPolicy = field(default_factory=make_policy)
    now: datetime = T0
    state: RolloutState | None = None
    actions: tuple[Action, ...] = ()
    log: list[Action] = field(default_factory=list)

    # --- driving -------------------------------------------------------------------------

    def start(self, spec: int = 10, ready: bool = False) -> Driver:
        self.state, self.actions = machine.start(
            "ro-1", "fraud", "scorer", view(spec, ready=ready), self.policy, self.now
        )
        self.log.extend(self.actions)
        return self

    def apply(self, observation: Observation) -> Driver:
        assert self.state is not None
        self.state, self.actions = machine.step(self.state, observation, self.policy, self.now)
        self.log.extend(self.actions)
        return self

    def at(self, delta: timedelta) -> Driver:
        """Move the clock to T0 + delta (never backwards) and tick."""
        target = T0 + delta
        assert target >= self.now, "the clock only moves forward"
        self.now = target
        return self.apply(Tick())

    def see(self, spec: int, **kwargs: Any) -> Driver:
        return self.apply(ServiceObserved(view(spec, **kwargs)))

    def verdict(
        self,
        verdict: Verdict = Verdict.SUCCESSFUL,
        *,
        sufficient: bool = True,
        step: int | None = None,
        revision: str = "r2",
        at: datetime | None = None,
        ceiling: str | None = None,
    ) -> Driver:
        assert self.state is not None
        return self.apply(
            AnalysisVerdict(
                verdict=verdict,
                revision=revision,
                step_index=self.state.step_index if step is None else step,
                evaluated_at=at or self.now,
                sufficient_data=sufficient,
                summary=f"{verdict.value.lower()} at step {self.state.step_index}",
                ceiling=ceiling,
            )
        )

    def decide(self, approved: bool, approver: str = "alice@bank") -> Driver:
        return self.apply(
            ApprovalDecision(approved, "r2", approver, self.now, change_number="CHG0001")
        )

    def command(self, kind: CommandKind, reason: str = "operator decision") -> Driver:
        return self.apply(ManualCommand(kind, "bob@bank", reason))

    def delete(self) -> Driver:
        return self.apply(ServiceDeleted())

    def opt_out(self, actor: str = "kubectl-annotate") -> Driver:
        return self.apply(OptedOut(actor, "human"))

    def watch(self, seen: TrafficView, who: Identity = HAND, mode: str = "knative") -> Driver:
        """A look after the rollout ended (canary.aftercare)."""
        assert self.state is not None
        assert mode in ("knative", "standard")
        self.state, self.actions = aftercare.watch(
            self.state, seen, self.policy, "knative" if mode == "knative" else "standard",
            who, self.now,
        )  # fmt: skip
        self.log.extend(self.actions)
        return self

    # --- reading -------------------------------------------------------------------------

    def phase(self) -> Phase:
        assert self.state is not None
        return self.state.phase

    def traffic(self, actions: Sequence[Action] | None = None) -> list[tuple[int, str]]:
        return [
            (a.percent, a.purpose)
            for a in (self.actions if actions is None else actions)
            if isinstance(a, SetTraffic)
        ]

    def mirrors(self) -> list[int]:
        return [a.percent for a in self.actions if isinstance(a, SetMirror)]

    def events(self, actions: Sequence[Action] | None = None) -> list[str]:
        return [
            a.reason.value
            for a in (self.actions if actions is None else actions)
            if isinstance(a, EmitEvent)
        ]

    def audits(self, actions: Sequence[Action] | None = None) -> list[str]:
        return [
            a.action
            for a in (self.actions if actions is None else actions)
            if isinstance(a, RecordAudit)
        ]

    def rejection(self) -> str | None:
        found = [a.reason for a in self.actions if isinstance(a, RejectCommand)]
        return found[0] if found else None


# --- reaching each phase ------------------------------------------------------------------


def progressing(policy: RolloutPolicy | None = None) -> Driver:
    """Canary r2 ready and serving the first step."""
    d = Driver(policy or make_policy()).start()
    d.see(d.policy.first_step)
    assert d.phase() is Phase.PROGRESSING
    return d


def awaiting_approval() -> Driver:
    d = progressing(make_policy(steps=[10, 100], approval=APPROVAL))
    d.at(timedelta(minutes=5)).verdict()  # the hold is over and the evidence is fresh
    assert d.phase() is Phase.AWAITING_APPROVAL
    return d


def promoting() -> Driver:
    d = progressing(make_policy(steps=[10, 100]))
    d.at(timedelta(minutes=5)).verdict()
    assert d.phase() is Phase.PROMOTING
    return d


def rolling_back() -> Driver:
    d = progressing()
    d.at(timedelta(minutes=1)).verdict(Verdict.FAILED)
    assert d.phase() is Phase.ROLLING_BACK
    return d


def shadowing() -> Driver:
    d = Driver(make_policy(shadow={"enabled": True, "duration": "10m"})).start(spec=0)
    d.see(0)
    assert d.phase() is Phase.SHADOWING
    return d


def reach(phase: Phase) -> Driver:
    """A driver whose rollout is in ``phase``, reached the way a real rollout gets there."""
    if phase is Phase.PENDING:
        return Driver().start()
    if phase is Phase.SHADOWING:
        return shadowing()
    if phase is Phase.PROGRESSING:
        return progressing()
    if phase is Phase.PAUSED:
        return progressing().command(CommandKind.PAUSE, "investigating")
    if phase is Phase.AWAITING_APPROVAL:
        return awaiting_approval()
    if phase is Phase.PROMOTING:
        return promoting()
    if phase is Phase.SUCCEEDED:
        return promoting().apply(ServiceObserved(promoted_view()))
    if phase is Phase.ROLLING_BACK:
        return rolling_back()
    if phase is Phase.ROLLED_BACK:
        return rolling_back().see(0)
    if phase is Phase.FAILED:
        return progressing().delete()
    if phase is Phase.SUPERSEDED:
        return progressing().see(10, latest="r3")
    if phase is Phase.ABORTED:
        return progressing().command(CommandKind.ABORT, "bad model").see(0)
    if phase is Phase.OPTED_OUT:
        return progressing().opt_out()
    if phase is Phase.DRIFT_REVERTED:
        return reach(Phase.ROLLED_BACK).watch(view(100))
    if phase is Phase.DRIFT_RECORDED:
        d = reach(Phase.ROLLED_BACK)
        d.policy = make_policy(afterRollback="record")
        return d.watch(view(100))
    if phase is Phase.MANUALLY_ROLLED_BACK:
        return reach(Phase.SUCCEEDED).watch(view(0, latest="r2", stable="r2"))
    raise AssertionError(phase)
