"""Point-in-time answers from audit records: which revisions served, with what share, under
which rollout, approved by whom, on what evidence (canary.evidence.pointintime).

Each story below is the sequence of records the engine writes for a situation (the same
actions, in the same order and commits); each case asks the story a question at one instant
and checks what an auditor reads in the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary.audit.records import (
    GENESIS_HASH,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    Measurement,
    ModelRef,
    ObjectRef,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
)
from canary.evidence.pointintime import (
    PointInTime,
    approval_at,
    evidence_from,
    point_in_time,
    provenance_names,
    traffic_at,
)

NS, NAME = "fraud", "scorer"
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
CONTROLLER = Actor("controller", "kserve-canary/pod-0")
REF = {
    rev: ModelRef(None, f"s3://models/scorer/{rev}", f"sha256:{rev * 8}", rev)
    for rev in ("r1", "r2", "r3")
}
CHALLENGER_REV = ModelRef(None, "s3://models/scorer-v9", None, "scorer-v2-predictor-00001")


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --------------------------------------------------------------------------------------------
# writing stories as the engine records them
# --------------------------------------------------------------------------------------------


@dataclass
class Story:
    records: list[AuditRecord] = field(default_factory=list)
    prev: str = GENESIS_HASH
    correlations: int = 0

    def add(
        self,
        at: datetime,
        action: str,
        rollout: str | None,
        *,
        canary: str | ModelRef | None = None,
        stable: str | ModelRef | None = None,
        before: Mapping[str, int] | None = None,
        after: Mapping[str, int] | None = None,
        evidence: Mapping[str, Any] | None = None,
        correlation: str | None = None,
        measurements: tuple[Measurement, ...] = (),
        actor: Actor = CONTROLLER,
    ) -> AuditRecord:
        seq = len(self.records) + 1
        entry = AuditEntry(
            at=at,
            actor=actor,
            action=action,
            rollout_id=rollout,
            obj=ObjectRef(NS, NAME, "uid-1", seq, str(100 + seq)),
            stable=stable if isinstance(stable, ModelRef) else (REF[stable] if stable else None),
            canary=canary if isinstance(canary, ModelRef) else (REF[canary] if canary else None),
            traffic_before=before,
            traffic_after=after,
            evidence=dict(evidence or {}),
            measurements=measurements,
            correlation_id=correlation,
        )
        body = canonical_json(entry_body(seq, entry))
        record_hash = compute_record_hash(self.prev, body)
        record = AuditRecord(seq, self.prev, record_hash, body, decode_body(body))
        self.prev = record_hash
        self.records.append(record)
        return record

    # -- what the engine writes, commit by commit ---------------------------------------------

    def write(
        self,
        at: datetime,
        rollout: str | None,
        canary: str,
        stable: str,
        before: Mapping[str, int],
        percent: int,
        purpose: str,
        *,
        outcome: str | None = "traffic.applied",
        outcome_at: datetime | None = None,
    ) -> None:
        """A traffic.intent, and its outcome (the same correlation id)."""
        self.correlations += 1
        cid = f"corr-{self.correlations}"
        after = {canary: percent, stable: 100 - percent}
        evidence = {"purpose": purpose, "percent": percent}
        self.add(at, "traffic.intent", rollout, before=before, after=after, evidence=evidence,
                 canary=canary, stable=stable, correlation=cid)  # fmt: skip
        if outcome is not None:
            self.add(outcome_at or at, outcome, rollout, evidence={**evidence, "attempts": 1},
                     canary=canary, stable=stable, correlation=cid)  # fmt: skip

    def start(
        self,
        at: datetime,
        rollout: str,
        canary: str,
        stable: str,
        *,
        before: Mapping[str, int] | None,
        first: int = 10,
    ) -> None:
        """rollout.started; with ``before`` also the controller's first write (its intent
        holds the split the status showed); without, the spec already commanded the step."""
        self.add(at, "rollout.started", rollout, canary=canary, stable=stable,
                 evidence={"revision": canary, "first_percent": first, "stable": stable,
                           "storage_uri": REF[canary].storage_uri})  # fmt: skip
        if before is not None:
            self.write(at, rollout, canary, stable, before, first, "start")

    def shifted(self, at: datetime, rollout: str, canary: str, stable: str, percent: int) -> None:
        self.add(at, "traffic.shifted", rollout, canary=canary, stable=stable,
                 evidence={"revision": canary, "percent": percent, "step": 0})  # fmt: skip

    def step(
        self, at: datetime, rollout: str, canary: str, stable: str, before: int, percent: int
    ) -> None:
        self.add(at, "rollout.step_advanced", rollout, canary=canary, stable=stable,
                 evidence={"revision": canary, "percent": percent, "step": 1})  # fmt: skip
        self.write(at, rollout, canary, stable, {canary: before, stable: 100 - before}, percent,
                   "step")  # fmt: skip

    def end(self, at: datetime, action: str, rollout: str, canary: str, stable: str,
            phase: str, **details: Any) -> None:  # fmt: skip
        self.add(at, action, rollout, canary=canary, stable=stable,
                 evidence={"revision": canary, "phase": phase, **details})  # fmt: skip

    def analysis(self, at: datetime, rollout: str, canary: str, stable: str,
                 *measured: Measurement) -> None:  # fmt: skip
        self.add(at, "analysis.evaluated", rollout, canary=canary, stable=stable,
                 evidence={"verdict": "Successful", "step": 0}, measurements=measured)  # fmt: skip


def measured(check: str, at: datetime, value: float, verdict: str = "Successful") -> Measurement:
    return Measurement(
        check=check,
        evaluated_at=at,
        query=f"{check} query",
        prometheus_url="http://prometheus:9090",
        response_digest="ab" * 32,
        canary_value=value,
        baseline_value=0.05,
        canary_samples=900,
        baseline_samples=9000,
        statistic=1.5,
        threshold=2.0,
        verdict=verdict,
        dry_run=False,
    )


def canary_to_promotion(story: Story, rollout: str = "ro-1", offset: float = 0) -> Story:
    """r2 against r1: 10 %, 50 %, an approval, then 100 % (minutes from ``offset``)."""

    def at(minutes: float) -> datetime:
        return m(offset + minutes)

    story.start(at(0), rollout, "r2", "r1", before={"r1": 100, "r2": 0})  # seq 1-3
    story.shifted(at(1), rollout, "r2", "r1", 10)  # 4
    story.analysis(at(2), rollout, "r2", "r1", measured("latency-p99", at(2), 0.041),
                   measured("error-rate", at(2), 0.001))  # fmt: skip  # 5
    story.step(at(5), rollout, "r2", "r1", 10, 50)  # 6-8
    story.shifted(at(6), rollout, "r2", "r1", 50)  # 9
    story.analysis(at(8), rollout, "r2", "r1", measured("latency-p99", at(8), 0.043))  # 10
    story.add(at(10), "approval.requested", rollout, canary="r2", stable="r1",
              evidence={"revision": "r2", "step": 2})  # fmt: skip  # 11
    story.add(at(14), "approval.verified", rollout, canary="r2", stable="r1",
              evidence={"revision": "r2", "change_number": "CHG0042"})  # fmt: skip  # 12
    story.add(at(14), "rollout.promoting", rollout, canary="r2", stable="r1",
              evidence={"revision": "r2"})  # fmt: skip  # 13
    story.write(at(14), rollout, "r2", "r1", {"r1": 50, "r2": 50}, 100, "promote")  # 14-15
    story.end(at(15), "promoted", rollout, "r2", "r1", "Succeeded")  # 16
    return story


def approved(rollout: str = "ro-1", revision: str = "r2") -> ApprovalRow:
    """ro-1's approval of r2, decided at 02:14."""
    return ApprovalRow(
        id=f"appr-{rollout}",
        rollout_id=rollout,
        revision=revision,
        step_index=2,
        gate="servicenow",
        change_number="CHG0042",
        change_sys_id="sys-1",
        risk_owner_group="credit-risk",
        requested_by="controller",
        requested_at=m(10),
        deadline=m(10 + 8 * 60),
        state="approved",
        approver="alice@bank.example",
        decided_at=m(14),
        percent=100,
    )


def _fields(row: ApprovalRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__dataclass_fields__}


# --------------------------------------------------------------------------------------------
# the stories
# --------------------------------------------------------------------------------------------


def promotion() -> Story:
    return canary_to_promotion(Story())


def failed_step() -> Story:
    """The apiserver refuses the 50 % write for good two seconds after the intent."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.add(m(5), "rollout.step_advanced", "ro-1", canary="r2", stable="r1",
              evidence={"percent": 50})  # fmt: skip
    story.write(m(5), "ro-1", "r2", "r1", {"r1": 90, "r2": 10}, 50, "step",
                outcome="traffic.failed", outcome_at=m(5) + timedelta(seconds=2))  # fmt: skip
    story.add(m(5) + timedelta(seconds=2), "rollout.paused", "ro-1", canary="r2", stable="r1",
              evidence={"phase": "Progressing"})  # fmt: skip
    return story


def abandoned_step() -> Story:
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.write(m(5), "ro-1", "r2", "r1", {"r1": 90, "r2": 10}, 50, "step",
                outcome="traffic.abandoned")  # fmt: skip
    return story


def drift_reasserted() -> Story:
    """Someone sets the canary to 40 % by hand; the controller puts 10 % back."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.add(m(3), "traffic.drift", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "observed": 40, "target": 10})  # fmt: skip
    story.write(m(3), "ro-1", "r2", "r1", {"r1": 60, "r2": 40}, 10, "reassert",
                outcome_at=m(3) + timedelta(seconds=1))  # fmt: skip
    return story


def drift_while_paused() -> Story:
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.add(m(2), "manual.pause", "ro-1", canary="r2", stable="r1",
              evidence={"phase": "Progressing"}, actor=Actor("human", "bob"))  # fmt: skip
    story.add(m(3), "traffic.drift", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "observed": 40, "target": 10})  # fmt: skip
    return story


def supersede() -> Story:
    """r3 arrives while r2 is at 10 %; the webhook already set 10 % for it, so the new
    rollout writes nothing and waits for the status."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.end(m(3), "rollout.superseded", "ro-1", "r2", "r1", "Superseded",
              new_revision="r3", replaced_revision="r2")  # fmt: skip
    story.start(m(3), "ro-2", "r3", "r1", before=None)
    story.shifted(m(4), "ro-2", "r3", "r1", 10)
    return story


def supersede_with_write() -> Story:
    """The same, but the new rollout writes its first step: its intent shows r2 still
    serving 10 % (Knative routes the new revision's share to the newest ready one)."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.end(m(3), "rollout.superseded", "ro-1", "r2", "r1", "Superseded")
    story.start(m(3), "ro-2", "r3", "r1", before={"r1": 90, "r2": 10, "r3": 0})
    story.shifted(m(4), "ro-2", "r3", "r1", 10)
    return story


def rollback() -> Story:
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.analysis(m(2), "ro-1", "r2", "r1", measured("latency-p99", m(2), 0.9, "Failed"))
    story.add(m(2), "rollout.rolling_back", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "percent_before": 10})  # fmt: skip
    story.write(m(2), "ro-1", "r2", "r1", {"r1": 90, "r2": 10}, 0, "rollback")
    story.end(m(3), "rolled_back", "ro-1", "r2", "r1", "RolledBack")
    return story


def two_rollouts() -> Story:
    """r2 promoted by ro-1 (approved), then ro-2 brings r3 against it."""
    story = canary_to_promotion(Story())
    story.start(m(60), "ro-2", "r3", "r2", before={"r2": 100, "r3": 0})
    story.shifted(m(61), "ro-2", "r3", "r2", 10)
    story.analysis(m(62), "ro-2", "r3", "r2", measured("latency-p99", m(62), 0.040))
    return story


NEW_MODEL = ModelRef(None, "s3://models/scorer/r2", None, None)  # no revision yet
MODEL_CHANGE = {"purpose": "start", "percent": 10, "storage_uri": "s3://models/scorer/r2"}


def start_command() -> Story:
    """`canary rollout start`: the model change is written by the controller (no rollout
    yet, no revision name), then the rollout starts and the status shows 10 %."""
    story = Story()
    human = Actor("human", "alice@bank.example")
    story.add(m(0), "traffic.intent", None, before={"r1": 100}, evidence=MODEL_CHANGE,
              correlation="start-1", actor=human, canary=NEW_MODEL, stable="r1")  # fmt: skip
    story.add(s(1), "traffic.applied", None, evidence=MODEL_CHANGE, correlation="start-1",
              actor=human, canary=NEW_MODEL, stable="r1")  # fmt: skip
    story.start(s(30), "ro-1", "r2", "r1", before=None)
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    return story


def start_command_refused() -> Story:
    story = Story()
    story.add(m(0), "traffic.intent", None, before={"r1": 100}, evidence=MODEL_CHANGE,
              correlation="start-1", canary=NEW_MODEL, stable="r1")  # fmt: skip
    story.add(s(1), "traffic.failed", None, evidence=MODEL_CHANGE, correlation="start-1",
              canary=NEW_MODEL, stable="r1")  # fmt: skip
    return story


def challenger_shadow() -> Story:
    """r1 is promoted; a challenger InferenceService's model is compared in shadow: it is
    mirrored only and never carries the champion's traffic."""
    story = Story()
    story.start(m(-30), "ro-0", "r1", "r3", before={"r3": 100, "r1": 0})
    story.end(m(-20), "promoted", "ro-0", "r1", "r3", "Succeeded")
    story.add(m(0), "shadow.challenger_detected", "ch-1", canary=CHALLENGER_REV, stable="r1",
              evidence={"challenger": "scorer-v2"})  # fmt: skip
    story.add(m(1), "shadow.started", "ch-1", canary=CHALLENGER_REV, stable="r1",
              evidence={"revision": CHALLENGER_REV.revision})  # fmt: skip
    story.add(m(20), "shadow.passed", "ch-1", canary=CHALLENGER_REV, stable="r1",
              evidence={"phase": "Succeeded", "challenger": "scorer-v2"})  # fmt: skip
    return story


def drift_after_rollback() -> Story:
    """After the rollback someone gives r2 40 % by hand; the policy only records it."""
    story = rollback()
    story.add(m(10), "traffic.drift", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "observed": 40, "spec_percent": 40,
                        "status_share": 40, "after": "RolledBack", "handling": "record",
                        "post_rollout": True},
              actor=Actor("human", "ops-bob"))  # fmt: skip
    return story


def hand_rollback_after_promotion() -> Story:
    story = canary_to_promotion(Story())
    story.add(m(30), "traffic.manual_rollback", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "percent": 30, "previous_revision": "r1",
                        "post_rollout": True},
              actor=Actor("human", "ops-bob"))  # fmt: skip
    return story


def deleted() -> Story:
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.end(m(2), "rollout.failed", "ro-1", "r2", "r1", "Failed")
    return story


def opted_out() -> Story:
    """The owner opts out at 10 %: the controller returns the traffic to r1 (its intent
    comes before the rollout's end record, in the same commit)."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    story.add(m(3), "manual.opt_out", "ro-1", canary="r2", stable="r1",
              evidence={"phase": "Progressing"}, actor=Actor("human", "owner"))  # fmt: skip
    story.write(m(3), "ro-1", "r2", "r1", {"r1": 90, "r2": 10}, 0, "rollback", outcome=None)
    story.end(m(3), "rollout.opted_out", "ro-1", "r2", "r1", "OptedOut")
    story.add(m(3) + timedelta(seconds=1), "traffic.applied", "ro-1", canary="r2", stable="r1",
              evidence={"purpose": "rollback", "percent": 0},
              correlation=f"corr-{story.correlations}")  # fmt: skip
    return story


def first_step_already_set() -> Story:
    """The webhook set 10 % with the model change: rollout.started alone, nothing before it
    in the trail (the controller's first record for this service)."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before=None)
    story.shifted(m(1), "ro-1", "r2", "r1", 10)
    return story


# --------------------------------------------------------------------------------------------
# the questions
# --------------------------------------------------------------------------------------------

Shares = Mapping[str, int | tuple[int | None, int | None]]


@dataclass(frozen=True)
class Case:
    story: Callable[[], Story]
    at: datetime
    knowledge: str
    shares: Shares  # settled: revision -> percent; in transition: revision -> (before, after)
    as_of: int | None  # the seq of the record the answer rests on
    basis: str = ""
    said: str = ""  # a phrase the note must hold


CASES = {
    # one canary, start to promotion
    "before-everything": Case(promotion, m(0) - timedelta(seconds=1), "unknown", {}, None,
                              "none", "no record"),
    "exactly-at-the-first-intent": Case(promotion, m(0), "in_transition",
                                        {"r1": (100, 90), "r2": (0, 10)}, 2, "observed",
                                        "accepted"),
    "first-step-written-not-yet-shown": Case(promotion, s(30), "in_transition",
                                             {"r1": (100, 90), "r2": (0, 10)}, 2, "observed"),
    "exactly-when-the-status-shows-10": Case(promotion, m(1), "settled", {"r1": 90, "r2": 10},
                                             4, "status"),
    "step-to-50-in-transition": Case(promotion, m(5), "in_transition",
                                     {"r1": (90, 50), "r2": (10, 50)}, 7, "observed"),
    "mid-canary-two-revisions-share": Case(promotion, m(7), "settled", {"r1": 50, "r2": 50}, 9,
                                           "status"),
    "promotion-written-not-shown": Case(promotion, m(14.5), "in_transition",
                                        {"r2": (50, 100), "r1": (50, 0)}, 14, "observed"),
    "promoted": Case(promotion, m(15), "settled", {"r2": 100}, 16, "status"),
    "long-after-promotion": Case(promotion, m(600), "settled", {"r2": 100}, 16, "status"),
    # failed and abandoned intents change nothing
    "failed-intent-before-its-outcome": Case(failed_step, m(5) + timedelta(seconds=1),
                                             "in_transition", {"r1": (90, 50), "r2": (10, 50)},
                                             6),
    "failed-intent": Case(failed_step, m(6), "settled", {"r1": 90, "r2": 10}, 7, "failed",
                          "refused"),
    "abandoned-intent": Case(abandoned_step, m(5), "settled", {"r1": 90, "r2": 10}, 6,
                             "failed", "abandoned"),
    # hand edits
    "before-the-drift-is-observed": Case(drift_reasserted, m(3) - timedelta(seconds=1),
                                         "settled", {"r1": 90, "r2": 10}, 4, "status"),
    "drift-observed-and-reasserted": Case(drift_reasserted, m(3), "in_transition",
                                          {"r1": (60, 90), "r2": (40, 10)}, 6, "observed",
                                          "reassert"),
    "reassertion-accepted": Case(drift_reasserted, m(4), "settled", {"r1": 90, "r2": 10}, 7,
                                 "written"),
    "drift-while-paused": Case(drift_while_paused, m(4), "settled", {"r1": 60, "r2": 40}, 6,
                               "drift", "observed at 2026-11-20T02:03:00+00:00"),
    "drift-after-rollback-recorded": Case(drift_after_rollback, m(11), "settled",
                                          {"r1": 60, "r2": 40}, 10, "drift", "observed at"),
    "hand-rollback-after-promotion": Case(hand_rollback_after_promotion, m(31), "settled",
                                          {"r1": 70, "r2": 30}, 17, "drift", "by hand"),
    # a new model arrives mid-canary
    "supersede-old-canary-keeps-its-share": Case(supersede, m(3), "in_transition",
                                                 {"r1": (90, 90), "r2": (10, 0), "r3": (0, 10)},
                                                 6, "rollout"),
    "after-supersede-new-canary-shown": Case(supersede, m(4), "settled", {"r1": 90, "r3": 10},
                                             7, "status"),
    "supersede-intent-shows-old-canary": Case(supersede_with_write, m(3), "in_transition",
                                              {"r1": (90, 90), "r2": (10, 0), "r3": (0, 10)},
                                              7, "observed"),
    # rollback
    "rollback-written-not-shown": Case(rollback, m(2.5), "in_transition",
                                       {"r1": (90, 100), "r2": (10, 0)}, 7, "observed"),
    "rolled-back": Case(rollback, m(3), "settled", {"r1": 100}, 9, "status"),
    # two rollouts one after the other
    "second-rollout-mid-canary": Case(two_rollouts, m(62), "settled", {"r2": 90, "r3": 10},
                                      20, "status"),
    "between-the-two-rollouts": Case(two_rollouts, m(30), "settled", {"r2": 100}, 16,
                                     "status"),
    # the controller writes the model change itself
    "model-change-intended": Case(start_command, m(0), "in_transition", {"r1": (100, None)}, 1,
                                 "observed", "new revision"),
    "rollout-of-the-model-change-started": Case(start_command, s(30), "in_transition",
                                                {"r1": (100, 90), "r2": (0, 10)}, 3,
                                                "rollout"),
    "model-change-shown": Case(start_command, m(1), "settled", {"r1": 90, "r2": 10}, 4,
                               "status"),
    "model-change-refused": Case(start_command_refused, m(1), "settled", {"r1": 100}, 2,
                                 "failed"),
    # other endings
    "challenger-never-carries-traffic": Case(challenger_shadow, m(10), "settled", {"r1": 100},
                                             4, "status"),
    "service-deleted": Case(deleted, m(5), "unknown", {}, 5, "none", "deleted"),
    "opt-out-return-intended": Case(opted_out, m(3), "in_transition",
                                    {"r1": (90, 100), "r2": (10, 0)}, 6, "observed"),
    "opt-out-return-accepted": Case(opted_out, m(4), "settled", {"r1": 100}, 8, "written",
                                    "accepted"),
    "first-step-preset-nothing-known-before": Case(first_step_already_set, s(30),
                                                   "in_transition", {"r1": (None, 90),
                                                                     "r2": (None, 10)}, 1,
                                                   "rollout", "no record before it"),
}  # fmt: skip


def shares_of(answer: PointInTime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for revision in answer.revisions:
        assert revision.revision is not None
        if answer.knowledge == "settled":
            out[revision.revision] = revision.percent
        else:
            out[revision.revision] = (revision.percent_before, revision.percent_after)
    return out


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_split_at_an_instant(case: Case) -> None:
    story = case.story()

    answer = point_in_time(NS, NAME, case.at, story.records)

    assert answer.knowledge == case.knowledge
    assert shares_of(answer) == dict(case.shares)
    assert (answer.as_of.seq if answer.as_of else None) == case.as_of
    if case.basis:
        assert answer.basis == case.basis
    assert case.said in answer.note
    if answer.as_of is not None:  # the record named is the one at that seq, at or before T
        record = story.records[answer.as_of.seq - 1]
        assert (record.entry.at, record.entry.action) == (answer.as_of.at, answer.as_of.action)
        assert record.entry.at <= case.at
    if answer.knowledge == "settled":
        assert sum(dict(answer.split or {}).values()) == 100
    if answer.knowledge == "unknown":
        assert (answer.split, answer.before, answer.revisions) == (None, None, ())


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_records_after_the_instant_never_change_the_answer(case: Case) -> None:
    story = case.story()
    upto = [r for r in story.records if r.entry.at <= case.at]

    assert point_in_time(NS, NAME, case.at, story.records) == point_in_time(NS, NAME, case.at, upto)


# --------------------------------------------------------------------------------------------
# who each revision belongs to, its approval and its evidence
# --------------------------------------------------------------------------------------------


def test_the_auditors_question_mid_canary_names_models_rollouts_approvals_and_evidence() -> None:
    """Which model served fraud/scorer at 03:02 on 2026-11-20, with what share, who
    approved it, on what evidence? (ro-1 promoted r2 with CHG0042; ro-2 runs r3 at 10 %.)"""
    story = two_rollouts()
    approvals = {"ro-1": [approved()]}

    answer = point_in_time(NS, NAME, m(62), story.records, approvals)

    stable, canary = answer.revisions
    assert (stable.revision, stable.percent, canary.revision, canary.percent) == (
        "r2",
        90,
        "r3",
        10,
    )
    assert stable.model == REF["r2"]
    assert canary.model.storage_uri == "s3://models/scorer/r3"
    assert canary.model.artifact_digest == "sha256:r3r3r3r3r3r3r3r3"
    assert stable.rollout is not None
    assert canary.rollout is not None
    assert (stable.rollout.id, stable.rollout.phase) == ("ro-1", "Succeeded")
    assert (canary.rollout.id, canary.rollout.phase) == ("ro-2", "Progressing")
    assert stable.rollout.started is not None
    assert stable.rollout.started.seq == 1
    assert stable.approval is not None
    assert (stable.approval.status, stable.approval.change_number) == ("approved", "CHG0042")
    assert (stable.approval.approver, stable.approval.approved_at) == ("alice@bank.example", m(14))
    assert canary.approval is not None
    assert canary.approval.status == "not_requested"
    assert stable.evidence is not None
    assert canary.evidence is not None
    latency = {c.check: c for c in stable.evidence.checks}["latency-p99"]
    assert (latency.evaluations, latency.latest.canary_value, latency.audit_seq) == (2, 0.043, 10)
    assert stable.evidence.evaluations == 3  # two latency looks, one error rate
    assert [c.check for c in canary.evidence.checks] == ["latency-p99"]


def test_the_stable_revision_without_its_rollout_in_the_records_has_none() -> None:
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})

    answer = point_in_time(NS, NAME, m(0), story.records)

    first = {r.revision: r for r in answer.revisions}
    assert first["r1"].rollout is None
    assert first["r1"].approval is None
    assert provenance_names(answer) == ("r1",)
    assert first["r2"].rollout is not None
    assert first["r2"].rollout.phase == "Pending"


def test_earlier_records_name_the_rollout_of_the_stable_revision_and_set_no_split() -> None:
    story = two_rollouts()
    window = [r for r in story.records if r.seq >= 17]  # from ro-2's start
    earlier = [story.records[0], story.records[15]]  # ro-1's start and its promotion

    alone = traffic_at(NS, NAME, m(62), window)
    helped = traffic_at(NS, NAME, m(62), window, earlier=earlier)

    assert provenance_names(alone) == ("r2",)
    assert alone.split == helped.split == {"r2": 90, "r3": 10}
    ro1 = {r.revision: r.rollout for r in helped.revisions}["r2"]
    assert ro1 is not None
    assert (ro1.id, ro1.phase) == ("ro-1", "Succeeded")
    only_earlier = traffic_at(NS, NAME, m(62), [], earlier=earlier)
    assert only_earlier.knowledge == "unknown"


def test_a_name_that_now_holds_another_model_is_not_credited_to_the_old_rollout() -> None:
    """KServe's Standard mode names revisions after Services: a promoted canary keeps its
    name, and a model replaced under that name by hand is no longer that rollout's."""
    story = Story()
    promoted = ModelRef(None, "s3://models/scorer/v2", None, "scorer-canary-predictor")
    by_hand = ModelRef(None, "s3://models/scorer/v9", None, "scorer-canary-predictor")
    story.add(m(0), "rollout.started", "ro-1", canary=promoted, stable="r1",
              evidence={"first_percent": 10})  # fmt: skip
    story.add(m(1), "traffic.shifted", "ro-1", canary=promoted, stable="r1",
              evidence={"percent": 10})  # fmt: skip
    story.add(m(2), "promoted", "ro-1", canary=promoted, stable="r1",
              evidence={"phase": "Succeeded"})  # fmt: skip
    kept = point_in_time(NS, NAME, m(3), story.records)
    story.add(m(10), "rollout.started", "ro-2", canary="r3", stable=promoted,
              evidence={"first_percent": 10})  # fmt: skip
    story.add(m(20), "rollout.started", "ro-3", canary="r2", stable=by_hand,
              evidence={"first_percent": 10})  # fmt: skip

    same = {r.revision: r for r in point_in_time(NS, NAME, m(11), story.records).revisions}
    other = {r.revision: r for r in point_in_time(NS, NAME, m(21), story.records).revisions}

    assert kept.revisions[0].rollout is not None
    assert kept.revisions[0].rollout.id == "ro-1"
    assert same["scorer-canary-predictor"].rollout is not None
    assert same["scorer-canary-predictor"].rollout.id == "ro-1"
    assert other["scorer-canary-predictor"].rollout is None
    assert other["scorer-canary-predictor"].model == by_hand


def test_a_superseded_canary_keeps_its_rollout_and_phase_while_it_still_serves() -> None:
    answer = point_in_time(NS, NAME, m(3), supersede().records)

    by_name = {r.revision: r for r in answer.revisions}
    old, new = by_name["r2"].rollout, by_name["r3"].rollout
    assert old is not None
    assert (old.id, old.phase) == ("ro-1", "Superseded")
    assert new is not None
    assert (new.id, new.phase) == ("ro-2", "Pending")
    assert by_name["r3"].model == REF["r3"]


@pytest.mark.parametrize(
    ("rows", "at", "phase", "status", "approver"),
    [
        pytest.param([], m(20), "Succeeded", "none_required", None, id="promoted-without-asking"),
        pytest.param([], m(5), "Progressing", "not_requested", None, id="not-asked-yet"),
        pytest.param([approved()], m(9), "Progressing", "not_requested", None,
                     id="before-the-request"),
        pytest.param([approved()], m(12), "AwaitingApproval", "pending", None,
                     id="asked-not-decided-by-then"),
        pytest.param([approved()], m(14), "Progressing", "approved", "alice@bank.example",
                     id="exactly-at-the-decision"),
        pytest.param([approved()], m(99), "Succeeded", "approved", "alice@bank.example",
                     id="after-promotion"),
        pytest.param([ApprovalRow(**{**_fields(approved()), "state": "rejected"})], m(20),
                     "RolledBack", "rejected", "alice@bank.example", id="rejected"),
        pytest.param([ApprovalRow(**{**_fields(approved()), "state": "expired",
                                     "decided_at": None, "deadline": m(12)})],
                     m(13), "Paused", "expired", None, id="expired"),
        pytest.param([ApprovalRow(**{**_fields(approved()), "state": "pending",
                                     "decided_at": None, "approver": None})],
                     m(20), "RolledBack", "cancelled", None, id="undecided-when-it-ended"),
    ],
)  # fmt: skip
def test_the_approval_as_it_stood(
    rows: list[ApprovalRow], at: datetime, phase: str, status: str, approver: str | None
) -> None:
    found = approval_at(rows, "r2", at, phase=phase)

    assert found.status == status
    assert found.approver == approver
    if rows and status != "not_requested":
        assert found.change_number == "CHG0042"


def test_an_approval_of_another_revision_does_not_count() -> None:
    assert approval_at([approved(revision="r9")], "r2", m(20), phase="Succeeded").status == (
        "none_required"
    )


def test_evidence_counts_only_what_was_measured_and_recorded_by_the_instant() -> None:
    story = Story()
    story.analysis(m(2), "ro-1", "r2", "r1", measured("latency-p99", m(2), 0.041))
    story.analysis(m(4), "ro-1", "r2", "r1", measured("latency-p99", m(4), 0.048),
                   measured("error-rate", m(4), 0.002, "Inconclusive"))  # fmt: skip
    # measured before 05:00 but written after it: not evidence yet at 05:00
    story.analysis(m(5.5), "ro-1", "r2", "r1", measured("latency-p99", m(4.9), 0.2, "Failed"))
    story.analysis(m(6), "ro-9", "r3", "r1", measured("latency-p99", m(6), 0.5))

    at_five = evidence_from(story.records, "ro-1", m(5))
    later = evidence_from(story.records, "ro-1", m(6))

    assert [(c.check, c.evaluations, c.latest.verdict) for c in at_five.checks] == [
        ("error-rate", 1, "Inconclusive"),
        ("latency-p99", 2, "Successful"),
    ]
    assert at_five.evaluations == 3
    # by 06:00 the late record counts: its look, at 04:54, is the latest
    assert {c.check: c.latest.canary_value for c in later.checks}["latency-p99"] == 0.2
    assert {c.check: c.evaluations for c in later.checks}["latency-p99"] == 3
    assert evidence_from(story.records, "ro-1", m(1)).checks == ()


# --------------------------------------------------------------------------------------------
# the answer as JSON, and what is refused
# --------------------------------------------------------------------------------------------


def test_the_answer_serialises_under_the_canonical_rules() -> None:
    answer = point_in_time(NS, NAME, m(62), two_rollouts().records, {"ro-1": [approved()]})

    data = answer.to_json()

    assert canonical_json(answer) == canonical_json(data)
    parsed = json.loads(canonical_json(data))
    assert parsed["at"] == "2026-11-20T03:02:00.000000Z"
    assert parsed["split"] == {"r2": 90, "r3": 10}
    assert parsed["as_of"] == {"seq": 20, "at": "2026-11-20T03:01:00.000000Z",
                               "action": "traffic.shifted"}  # fmt: skip
    assert parsed["revisions"][0]["approval"]["approved_at"] == "2026-11-20T02:14:00.000000Z"
    assert parsed["revisions"][0]["model"]["storage_uri"] == "s3://models/scorer/r2"


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        point_in_time(NS, NAME, datetime(2026, 11, 20, 2, 14), [])  # noqa: DTZ001


def test_a_record_of_another_service_is_refused() -> None:
    records = promotion().records
    other = records[3]
    moved = AuditRecord(other.seq, other.prev_hash, other.record_hash, other.body,
                        _with_obj(other.entry, ObjectRef(NS, "other")))  # fmt: skip

    with pytest.raises(ValueError, match="record 4 is about fraud/other, not fraud/scorer"):
        point_in_time(NS, NAME, m(5), [*records[:3], moved])


def _with_obj(entry: AuditEntry, obj: ObjectRef) -> AuditEntry:
    return AuditEntry(**{**{n: getattr(entry, n) for n in entry.__dataclass_fields__}, "obj": obj})


def test_format_1_bodies_with_details_as_text_read_the_same() -> None:
    """Records written before body format 2 kept every detail as a string ("10")."""
    story = Story()
    story.start(m(0), "ro-1", "r2", "r1", before={"r1": 100, "r2": 0})
    story.add(m(1), "traffic.shifted", "ro-1", canary="r2", stable="r1",
              evidence={"revision": "r2", "percent": "10", "step": "0"})  # fmt: skip

    assert point_in_time(NS, NAME, m(1), story.records).split == {"r1": 90, "r2": 10}
