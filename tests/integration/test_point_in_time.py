"""The auditor's queries against a real audit database: point-in-time answers, rollout
history and timelines (canary.audit.history over canary.evidence.pointintime).

The records come from the real engine (the rig of tests/integration/test_engine.py: the
cluster faked, the store real), driven through a story an auditor would ask about:

1. ro-1 rolls r2 out against r1: 10 %, 50 %, a ServiceNow approval (CHG0042, by alice;
   the approval worker's writes are made by hand here), 100 %;
2. ro-2 brings r3 against r2 (the controller writes the first step);
3. r4 arrives while r3 serves 10 % (the admission webhook set 10 % for it): ro-2 is
   superseded, ro-3 starts, r3 keeps its share until r4 is ready;
4. ro-3 is aborted at 10 % and rolled back.

Both backends; the index plans are checked on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import event

from analysis import Outcome, StepAnalysis, Subject
from analysis.types import CheckEvaluation
from canary.audit import (
    Actor,
    AuditEntry,
    AuditRecord,
    AuditStore,
    ObjectRef,
    RolloutRow,
    upgrade_to_head,
)
from canary.audit.history import InvalidQuery, encode_cursor
from canary.engine import Engine
from canary.evidence.pointintime import (
    ApprovalAt,
    Evidence,
    PointInTime,
    RevisionAt,
    RolloutAt,
    point_in_time,
)
from canary.k8s.client import KubeClient
from canary.model import Revision
from canary.policy import PolicySet, RolloutPolicy
from canary.routing.base import TrafficRouter
from tests.conftest import Database
from tests.integration.test_engine import (
    NAME,
    NS,
    POLICY,
    R1,
    R2,
    T0,
    URI1,
    URI2,
    FakeKube,
    Rig,
    make_rig,
    new_revision_view,
)

pytestmark = pytest.mark.integration

R3, R4 = "scorer-predictor-00003", "scorer-predictor-00004"
URI3, URI4 = "s3://models/scorer/v3", "s3://models/scorer/v4"
GUARDED = RolloutPolicy.model_validate(
    {
        **POLICY.model_dump(by_alias=True),
        "approval": {"gate": "servicenow", "riskOwnerGroup": "credit-risk", "deadline": "8h"},
    }
)


class Passing:
    """Prometheus says the canary is fine: latency and error rate, with samples."""

    looks = None

    def analyze(
        self,
        subject: Subject,
        checks: Any,
        memory: Any,
        at: datetime,
        *,
        grace: bool,
        looks_only: bool = False,
        step: tuple[int, datetime] | None = None,
        looks_read: Callable[[], None] | None = None,
    ) -> StepAnalysis:
        seconds = (at - T0).total_seconds()
        evaluations = tuple(
            CheckEvaluation(
                check=check,
                evaluated_at=at,
                outcome=Outcome.SUCCESSFUL,
                gating_outcome=Outcome.SUCCESSFUL,
                sufficient=True,
                query=f"{check}{{revision={subject.canary_revision!r}}}",
                prometheus_url="http://prometheus:9090",
                response_digest=hashlib.sha256(f"{check}{at}".encode()).hexdigest(),
                canary_value=value + seconds / 1e6,
                baseline_value=value,
                canary_samples=1200,
                baseline_samples=12000,
                statistic=0.4,
                threshold=2.0,
                dry_run=False,
                message="within bounds",
            )
            for check, value in (("latency-p99", 0.041), ("error-rate", 0.002))
        )
        return StepAnalysis(at, evaluations, Outcome.SUCCESSFUL, True, False, "passing", {})


# --------------------------------------------------------------------------------------------
# the story
# --------------------------------------------------------------------------------------------


@dataclass
class Story:
    rig: Rig
    ids: dict[str, str]  # ro-1 .. ro-3 -> rollout id

    @property
    def store(self) -> AuditStore:
        return self.rig.store

    def record(self, action: str, rollout: str, nth: int = 0) -> AuditRecord:
        timeline = self.store.rollout_records(self.ids[rollout], limit=500)
        assert timeline.next_after_seq is None
        return [r for r in timeline.records if r.entry.action == action][nth]

    def when(self, action: str, rollout: str, nth: int = 0) -> datetime:
        return self.record(action, rollout, nth).entry.at

    def approvals(self) -> dict[str, list[Any]]:
        return {rid: list(self.store.approvals_for(rid)) for rid in self.ids.values()}

    def pure(self, at: datetime) -> PointInTime:
        """The answer computed from the whole trail, every record in memory."""
        return point_in_time(NS, NAME, at, self.store.records(), self.approvals())


def until(rig: Rig, phase: str, *, steps: int = 400) -> None:
    for _ in range(steps):
        if rig.last_rollout().phase == phase:
            return
        rig.clock.advance(5)
        rig.engine.reconcile(NS, NAME)
    raise AssertionError(f"never reached {phase}; at {rig.last_rollout().phase}")


def servicenow_decides(rig: Rig, approver: str) -> None:
    """What the approval worker writes: the change it opened, then the verified decision."""
    row = rig.last_rollout()
    pending = [a for a in rig.store.approvals_for(row.id) if a.state == "pending"]
    assert len(pending) == 1
    (approval,) = pending
    created = AuditEntry(
        at=rig.clock(),
        actor=Actor("controller", "pod-a"),
        action="approval.change_created",
        rollout_id=row.id,
        obj=ObjectRef(NS, NAME),
        reason="change CHG0042 opened",
    )
    assert rig.store.update_approval(
        approval.id,
        only_if_state="pending",
        record=created,
        change_number="CHG0042",
        change_sys_id="sys-0042",
    )
    rig.clock.advance(5)
    rig.engine.reconcile(NS, NAME)  # the change opened
    rig.clock.advance(60)
    now = rig.clock()
    decision: dict[str, Any] = {
        "gate": "servicenow", "outcome": "approved", "reason": "approved in ServiceNow",
        "checked_at": now.isoformat(), "change_number": "CHG0042",
        "change_sys_id": "sys-0042", "approver": "sys-user-alice", "approver_name": approver,
        "decided_at": now.isoformat(), "comments": "evidence reviewed", "violations": [],
        "webhook_id": None, "payload_digest": None,
    }  # fmt: skip
    read = AuditEntry(
        at=now,
        actor=Actor("servicenow", approver),
        action="approval.decision_verified",
        rollout_id=row.id,
        obj=ObjectRef(NS, NAME),
        reason=f"approved by {approver}",
    )
    assert rig.store.update_approval(
        approval.id,
        only_if_state="pending",
        record=read,
        state="approved",
        approver=approver,
        decided_at=now,
        decision=decision,
    )
    rig.engine.reconcile(NS, NAME)


def tell(store: AuditStore) -> Story:
    rig = make_rig(store)
    rig.engine = Engine(
        store=store,
        kube=cast(KubeClient, FakeKube(rig.cluster)),
        routers={"knative": cast(TrafficRouter, rig.router)},
        policies=lambda: PolicySet([GUARDED], {"default": "test"}),
        leadership=lambda: rig.fence,
        clock=rig.clock,
        instance="pod-a",
        analyzer=Passing(),
    )
    ids: dict[str, str] = {}
    # 1. r2 against r1, to promotion
    rig.cluster.view = new_revision_view()
    rig.engine.reconcile(NS, NAME)
    ids["ro-1"] = rig.last_rollout().id
    until(rig, "AwaitingApproval")
    servicenow_decides(rig, "alice@bank.example")
    until(rig, "Succeeded")
    # 2. r3 against r2: a model change without a percent, the controller writes 10 %
    rig.clock.advance(600)
    view = rig.cluster.view
    rig.cluster.view = replace(
        view, latest=Revision(R3, URI3), spec_percent=100, split={R2: 100, R3: 0}
    )
    rig.engine.reconcile(NS, NAME)
    ids["ro-2"] = rig.last_rollout().id
    until(rig, "Progressing")
    # 3. r4 with the webhook's 10 %: KServe keeps r3's share until r4 is ready
    rig.clock.advance(5)
    rig.cluster.view = replace(
        rig.cluster.view,
        latest=Revision(R4, URI4),
        spec_percent=10,
        split={R2: 90, R3: 10},
        latest_ready=False,
    )
    rig.engine.reconcile(NS, NAME)
    ids["ro-3"] = rig.last_rollout().id
    assert ids["ro-3"] != ids["ro-2"]
    rig.clock.advance(20)
    rig.cluster.view = replace(rig.cluster.view, split={R2: 90, R4: 10}, latest_ready=True)
    until(rig, "Progressing")
    # 4. aborted at 10 %, rolled back
    rig.clock.advance(5)
    state, _ = rig.engine.run_command(rig.command("abort"))
    assert state == "accepted"
    until(rig, "Aborted")
    return Story(rig, ids)


@pytest.fixture
def story(store: AuditStore) -> Story:
    return tell(store)


def split_of(answer: PointInTime) -> dict[str | None, Any]:
    if answer.knowledge == "settled":
        return {r.revision: r.percent for r in answer.revisions}
    return {r.revision: (r.percent_before, r.percent_after) for r in answer.revisions}


def by_revision(answer: PointInTime) -> dict[str | None, RevisionAt]:
    return {r.revision: r for r in answer.revisions}


def rollout_of(revision: RevisionAt) -> tuple[str, str | None]:
    rollout: RolloutAt | None = revision.rollout
    assert rollout is not None, revision
    return rollout.id, rollout.phase


def approval_of(revision: RevisionAt) -> ApprovalAt:
    assert revision.approval is not None, revision
    return revision.approval


def evidence_of(revision: RevisionAt) -> Evidence:
    assert revision.evidence is not None, revision
    return revision.evidence


SECOND = timedelta(seconds=1)


# --------------------------------------------------------------------------------------------
# point in time
# --------------------------------------------------------------------------------------------


def test_before_during_and_after_a_canary(story: Story) -> None:
    store = story.store
    started = story.when("rollout.started", "ro-1")
    ten = story.when("traffic.shifted", "ro-1")
    step = story.record("traffic.intent", "ro-1", 1)
    fifty = story.when("traffic.shifted", "ro-1", 1)
    promoted = story.when("promoted", "ro-1")

    before = store.point_in_time(NS, NAME, started - SECOND)
    at_start = store.point_in_time(NS, NAME, started)
    at_ten = store.point_in_time(NS, NAME, ten)
    moving = store.point_in_time(NS, NAME, step.entry.at + SECOND)
    mid = store.point_in_time(NS, NAME, fifty + SECOND)
    after = store.point_in_time(NS, NAME, promoted + timedelta(minutes=5))

    assert (before.knowledge, before.revisions, before.as_of) == ("unknown", (), None)
    assert at_start.knowledge == "in_transition"
    assert split_of(at_start) == {R1: (100, 90), R2: (0, 10)}
    assert split_of(at_ten) == {R1: 90, R2: 10}
    assert at_ten.as_of is not None
    assert (at_ten.as_of.action, at_ten.as_of.at) == ("traffic.shifted", ten)
    assert moving.knowledge == "in_transition"
    assert split_of(moving) == {R1: (90, 50), R2: (10, 50)}
    assert moving.as_of is not None
    assert moving.as_of.seq == step.seq
    assert moving.written is not None
    assert moving.written.action == "traffic.applied"
    assert split_of(mid) == {R1: 50, R2: 50}  # two revisions share the traffic exactly
    canary = by_revision(mid)[R2]
    assert canary.model.storage_uri == URI2
    assert rollout_of(canary) == (story.ids["ro-1"], "Progressing")
    assert approval_of(canary).status == "not_requested"
    checks = evidence_of(canary).checks
    assert {c.check for c in checks} == {"latency-p99", "error-rate"}
    assert all(c.latest.evaluated_at <= fifty + SECOND for c in checks)
    assert split_of(after) == {R2: 100}
    (served,) = after.revisions
    assert rollout_of(served) == (story.ids["ro-1"], "Succeeded")
    approval = approval_of(served)
    assert (approval.status, approval.change_number) == ("approved", "CHG0042")
    assert approval.approver == "alice@bank.example"
    assert approval.approved_at is not None
    assert approval.approved_at < promoted
    measured = story.store.measurements_for(story.ids["ro-1"])
    assert evidence_of(served).evaluations == len(measured)


def test_the_stable_revision_answers_with_the_rollout_that_promoted_it(story: Story) -> None:
    shown = story.when("traffic.shifted", "ro-2")

    answer = story.store.point_in_time(NS, NAME, shown + SECOND)

    assert split_of(answer) == {R2: 90, R3: 10}
    stable, canary = answer.revisions
    assert (stable.revision, stable.model.storage_uri) == (R2, URI2)
    assert rollout_of(stable) == (story.ids["ro-1"], "Succeeded")
    assert stable.rollout is not None
    assert stable.rollout.started is not None
    assert stable.rollout.started.seq == story.record("rollout.started", "ro-1").seq
    assert (approval_of(stable).status, approval_of(stable).change_number) == (
        "approved",
        "CHG0042",
    )
    assert evidence_of(stable).evaluations > 0
    assert (canary.revision, canary.model.storage_uri) == (R3, URI3)
    assert rollout_of(canary) == (story.ids["ro-2"], "Progressing")
    assert approval_of(canary).status == "not_requested"


def test_across_a_supersede_the_replaced_canary_keeps_its_share_until_the_records_say(
    story: Story,
) -> None:
    superseded = story.record("rollout.superseded", "ro-2")
    shown = story.when("traffic.shifted", "ro-3")

    across = story.store.point_in_time(NS, NAME, superseded.entry.at + SECOND)
    after = story.store.point_in_time(NS, NAME, shown)

    assert across.knowledge == "in_transition"
    assert split_of(across) == {R2: (90, 90), R3: (10, 0), R4: (0, 10)}
    assert across.as_of is not None
    assert across.as_of.action == "rollout.started"
    revisions = by_revision(across)
    assert rollout_of(revisions[R3]) == (
        story.ids["ro-2"],
        "Superseded",
    )
    assert rollout_of(revisions[R4]) == (
        story.ids["ro-3"],
        "Pending",
    )
    assert revisions[R4].model.storage_uri == URI4
    assert split_of(after) == {R2: 90, R4: 10}


def test_after_a_rollback_the_stable_revision_serves_everything(story: Story) -> None:
    intent = story.record("traffic.intent", "ro-3")  # the abort's rollback write
    rolled_back = story.when("rolled_back", "ro-3")

    moving = story.store.point_in_time(NS, NAME, intent.entry.at)
    after = story.store.point_in_time(NS, NAME, rolled_back + timedelta(hours=1))

    assert intent.entry.evidence["purpose"] == "rollback"
    assert split_of(moving) == {R2: (90, 100), R4: (10, 0)}
    assert split_of(after) == {R2: 100}
    assert after.as_of is not None
    assert after.as_of.action == "rolled_back"
    (stable,) = after.revisions
    assert rollout_of(stable) == (story.ids["ro-1"], "Succeeded")


def test_the_bounded_window_answers_exactly_as_the_whole_trail(story: Story) -> None:
    """At every record's time and between them, the store's answer (a bounded window,
    evidence from the measurement rows) equals the pure answer over every record."""
    times = sorted({r.entry.at for r in story.store.records()})
    between = [a + (b - a) / 2 for a, b in itertools.pairwise(times)]
    instants = [times[0] - SECOND, *times, *between]

    for at in instants:
        assert story.store.point_in_time(NS, NAME, at) == story.pure(at), at


def test_the_window_starts_at_the_split_before_the_last_rollout(story: Story) -> None:
    shown = story.when("traffic.shifted", "ro-2")
    promoted = story.record("promoted", "ro-1")

    window = story.store.records_for_service(NS, NAME, until=shown)

    assert window[0].seq == promoted.seq
    assert all(r.entry.action != "analysis.evaluated" for r in window)
    assert window[-1].entry.at <= shown
    everything = [r for r in story.store.records() if r.entry.at <= shown]
    assert len(window) < len(everything)
    assert story.store.records_for_service(NS, NAME, until=T0 - SECOND) == ()


def test_which_services_served_a_model_at_an_instant(story: Story) -> None:
    mid = story.when("traffic.shifted", "ro-1", 1) + SECOND
    early = story.when("rollout.started", "ro-1") - SECOND

    by_uri = story.store.point_in_time_by_model(URI2, mid)
    by_name = story.store.point_in_time_by_model(R2, mid)
    not_yet = story.store.point_in_time_by_model(URI4, mid)
    nothing_known = story.store.point_in_time_by_model(URI1, early)

    assert [(a.namespace, a.name) for a in by_uri.answers] == [(NS, NAME)]
    assert by_uri.answers[0] == story.store.point_in_time(NS, NAME, mid)
    assert by_name.answers == by_uri.answers
    assert (not_yet.answers, not_yet.more) == ((), False)
    assert nothing_known.answers == ()
    shown = json.loads(json.dumps(by_uri.to_json()))
    assert shown["answers"][0]["split"] == {R1: 50, R2: 50}


# --------------------------------------------------------------------------------------------
# rollout history and timelines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({}, ["ro-3", "ro-2", "ro-1"], id="all-newest-first"),
        pytest.param({"namespace": NS, "name": NAME}, ["ro-3", "ro-2", "ro-1"], id="service"),
        pytest.param({"namespace": "elsewhere"}, [], id="other-namespace"),
        pytest.param({"model": URI3}, ["ro-2"], id="canary-storage-uri"),
        pytest.param({"model": URI2}, ["ro-3", "ro-2", "ro-1"], id="canary-or-stable-uri"),
        pytest.param({"model": URI1}, ["ro-1"], id="stable-uri"),
        pytest.param({"model": R4}, ["ro-3"], id="revision-name"),
        pytest.param({"outcome": "Succeeded"}, ["ro-1"], id="succeeded"),
        pytest.param({"outcome": "Superseded"}, ["ro-2"], id="superseded"),
        pytest.param({"outcome": "Aborted"}, ["ro-3"], id="aborted"),
        pytest.param({"outcome": "Superseded", "model": URI2}, ["ro-2"], id="combined"),
        pytest.param(
            {"outcome": "finished", "name": NAME}, ["ro-3", "ro-2", "ro-1"], id="finished-by-name"
        ),
        pytest.param({"outcome": "active"}, [], id="none-active"),
    ],
)
def test_find_rollouts_filters(story: Story, filters: dict[str, Any], expected: list[str]) -> None:
    page = story.store.find_rollouts(**filters)

    assert [r.id for r in page.rollouts] == [story.ids[k] for k in expected]
    assert page.next_cursor is None


def test_find_rollouts_by_time_range_and_summary(story: Story) -> None:
    second_start = story.when("rollout.started", "ro-2")

    page = story.store.find_rollouts(since=second_start)
    earlier = story.store.find_rollouts(until=second_start - SECOND)

    assert [r.id for r in page.rollouts] == [story.ids["ro-3"], story.ids["ro-2"]]
    (first,) = earlier.rollouts
    assert (first.id, first.phase, first.active) == (story.ids["ro-1"], "Succeeded", False)
    assert (first.canary.revision, first.canary.storage_uri) == (R2, URI2)
    assert first.stable is not None
    assert first.stable.revision == R1
    assert first.outcome == f"{R2} promoted"
    assert first.policy == "default"
    shown = json.loads(json.dumps(earlier.to_json()))
    assert shown["rollouts"][0]["created_at"] == "2026-11-23T10:00:00.000000Z"


def _rollout(n: int, created_at: datetime, name: str = "svc") -> RolloutRow:
    return RolloutRow(
        id=f"ro-{n:04d}",
        namespace="paging",
        name=f"{name}-{n}",
        isvc_uid=None,
        policy_name="default",
        mode="knative",
        phase="Succeeded",
        step_index=0,
        canary_revision=f"{name}-{n}-predictor-00002",
        stable_revision=f"{name}-{n}-predictor-00001",
        state={"machine": {"canary": {"name": f"{name}-{n}-predictor-00002"}}},
        created_at=created_at,
        updated_at=created_at,
        next_check_at=None,
        active=False,
    )


def test_pages_have_no_duplicates_or_gaps_while_rollouts_start(store: AuditStore) -> None:
    # 23 rollouts, several started in the same microsecond (the id breaks the tie)
    existing = [_rollout(n, T0 + timedelta(seconds=n // 3)) for n in range(23)]
    for row in existing:
        store.commit([], rollout=row)
    expected = [r.id for r in sorted(existing, key=lambda r: (r.created_at, r.id), reverse=True)]
    seen: list[str] = []
    cursor: str | None = None
    newer = 100
    for _ in range(20):
        page = store.find_rollouts(namespace="paging", limit=4, cursor=cursor)
        seen.extend(r.id for r in page.rollouts)
        for _ in range(2):  # new rollouts start between two pages
            newer += 1
            store.commit([], rollout=_rollout(newer, T0 + timedelta(hours=1, seconds=newer)))
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == expected
    assert len(store.find_rollouts(namespace="paging", limit=500).rollouts) == 23 + len(
        range(101, newer + 1)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param({"outcome": "Done"}, "unknown outcome 'Done'", id="outcome"),
        pytest.param({"cursor": "not-a-cursor"}, "invalid cursor", id="cursor"),
        pytest.param({"cursor": encode_cursor(T0, "x")[:-3]}, "invalid cursor", id="cut-cursor"),
        pytest.param({"limit": 0}, "limit must be a whole number from 1 to 500", id="limit"),
        pytest.param({"since": datetime(2026, 11, 23)}, "since must be a time with its zone",  # noqa: DTZ001
                     id="naive-time"),
        pytest.param({"model": " "}, "model must not be empty", id="empty-model"),
    ],
)  # fmt: skip
def test_invalid_history_queries_are_refused_by_name(
    store: AuditStore, call: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidQuery, match=message):
        store.find_rollouts(**call)


def test_a_point_in_time_query_needs_a_time_with_its_zone(store: AuditStore) -> None:
    with pytest.raises(InvalidQuery, match="at must be a time with its zone"):
        store.point_in_time(NS, NAME, datetime(2026, 11, 20, 2, 14))  # noqa: DTZ001


def test_a_rollouts_timeline_pages_through_its_records_in_chain_order(story: Story) -> None:
    rid = story.ids["ro-1"]
    mine = [r for r in story.store.records() if r.entry.rollout_id == rid]
    pages = []
    after = 0
    while True:
        page = story.store.rollout_records(rid, after_seq=after, limit=7)
        pages.append(page)
        if page.next_after_seq is None:
            break
        after = page.next_after_seq

    assert [r for p in pages for r in p.records] == mine
    assert len(pages) == -(-len(mine) // 7)
    shown = pages[0].to_json()["records"]
    assert isinstance(shown, list)
    first = shown[0]
    assert isinstance(first, dict)
    text = str(first["prev_hash"]) + str(first["body"])
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == first["record_hash"]
    assert story.store.rollout_records("no-such-rollout").records == ()


# --------------------------------------------------------------------------------------------
# every query uses an index (PostgreSQL plans, on a table far larger than the story)
# --------------------------------------------------------------------------------------------

FILLER = [
    # 300 other services' records over the story's day (a chain is not needed to read
    # plans; the story's records are appended after them), their measurements, rollouts
    # and approvals
    """INSERT INTO audit_log (seq, prev_hash, record_hash, body, recorded_at, action,
           actor_kind, actor_id, rollout_id, namespace, name, canary_revision,
           stable_revision, change_number, correlation_id)
       SELECT g, repeat('0', 64), lpad(to_hex(g), 64, '0'), '{}',
              timestamp with time zone '2026-11-23 00:00:00+00' + g * interval '432 ms',
              (ARRAY['analysis.evaluated', 'analysis.evaluated', 'traffic.intent',
                     'traffic.applied', 'traffic.shifted', 'rollout.started'])[1 + mod(g, 6)],
              'controller', 'pod-x', 'filler-' || (g / 60), 'ns-' || mod(g, 300), 'svc',
              'rev-' || (g / 60), 'rev-0', NULL, NULL
       FROM generate_series(1, 200000) AS g""",
    """INSERT INTO measurements (audit_seq, position, rollout_id, check_name, evaluated_at,
           query, prometheus_url, response_digest, canary_value, baseline_value,
           canary_samples, baseline_samples, statistic, threshold, verdict, dry_run, detail)
       SELECT g, p, 'filler-' || (g / 60), (ARRAY['latency-p99', 'error-rate'])[1 + p],
              timestamp with time zone '2026-11-23 00:00:00+00' + g * interval '432 ms',
              'q', 'http://p', 'd', 0.1, 0.1, 10, 10, 0, 1, 'Successful', false, '{}'
       FROM generate_series(1, 200000) AS g, generate_series(0, 1) AS p
       WHERE mod(g, 6) < 2""",
    """INSERT INTO rollouts (id, namespace, name, isvc_uid, policy_name, mode, phase,
           step_index, canary_revision, stable_revision, state, created_at, updated_at,
           next_check_at, active, version)
       SELECT 'filler-' || g, 'ns-' || mod(g, 300), 'svc', NULL, 'default', 'knative',
              'Succeeded', 0, 'rev-' || g, 'rev-0', '{"machine": {}}',
              timestamp with time zone '2026-01-01 00:00:00+00' + g * interval '1 hour',
              timestamp with time zone '2026-01-01 00:00:00+00' + g * interval '1 hour',
              NULL, false, 1
       FROM generate_series(0, 3333) AS g""",
    """INSERT INTO approvals (id, rollout_id, revision, step_index, gate, change_number,
           change_sys_id, risk_owner_group, requested_by, requested_at, deadline, state,
           attempt)
       SELECT 'filler-approval-' || g, 'filler-' || g, 'rev-' || g, 2, 'servicenow',
              'CHG' || g, NULL, 'credit-risk', 'controller',
              timestamp with time zone '2026-01-01 00:00:00+00', NULL, 'approved', 1
       FROM generate_series(0, 3333) AS g""",
]


@dataclass
class Plan:
    sql: str
    scans: list[tuple[str, str, str | None]]  # (node type, table, index)
    bounds: list[str]  # the index conditions ("Index Cond") of its scans


def _bounds(node: dict[str, Any]) -> Iterator[str]:
    if "Index Cond" in node:
        yield node["Index Cond"]
    for child in node.get("Plans", ()):
        yield from _bounds(child)


def _scans(node: dict[str, Any], table: str = "") -> Iterator[tuple[str, str, str | None]]:
    """(node type, table, index) of every scan; a bitmap index scan is named after the
    table of the heap scan above it."""
    table = node.get("Relation Name", table)
    if "Relation Name" in node or "Index Name" in node:
        yield node["Node Type"], table, node.get("Index Name")
    for child in node.get("Plans", ()):
        yield from _scans(child, table)


def plans_of(store: AuditStore, run: Any) -> list[Plan]:
    """Run ``run``, then EXPLAIN every SELECT it sent, with the parameters it sent."""
    engine = store._engine
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            if "pg_advisory" in statement or statement.strip() == "SELECT 1":
                continue
            explained = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
            found: Any = explained.scalar_one()
            tree: list[dict[str, Any]] = json.loads(found) if isinstance(found, str) else found
            plan = tree[0]["Plan"]
            plans.append(Plan(statement, list(_scans(plan)), list(_bounds(plan))))
    return plans


def test_every_history_query_is_served_by_an_index_on_postgresql(pg_database: Database) -> None:
    upgrade_to_head(pg_database.url)
    pg_database.script([(sql, ()) for sql in FILLER])
    with AuditStore.from_url(pg_database.url) as store:
        story = tell(store)
        mid = story.when("traffic.shifted", "ro-2") + SECOND
        for table in ("audit_log", "measurements", "rollouts", "approvals"):
            pg_database.query(f"ANALYZE {table}")

        queries: dict[str, Any] = {
            "point_in_time": lambda: store.point_in_time(NS, NAME, mid),
            "rollout_records": lambda: store.rollout_records(story.ids["ro-1"], limit=5),
            "find_rollouts": lambda: store.find_rollouts(limit=20),
            "find_rollouts_service": lambda: store.find_rollouts(namespace=NS, name=NAME),
            "find_rollouts_namespace": lambda: store.find_rollouts(namespace=NS),
            "find_rollouts_next_page": lambda: store.find_rollouts(
                cursor=encode_cursor(T0, "filler-9"), limit=20
            ),
            "find_rollouts_model": lambda: store.find_rollouts(model=URI2),
            "point_in_time_by_model": lambda: store.point_in_time_by_model(URI2, mid),
        }
        plans = {name: plans_of(store, run) for name, run in queries.items()}

    for name, found in plans.items():
        assert found, name
        for plan in found:
            for node, table, index in plan.scans:
                assert node != "Seq Scan", f"{name}: {node} on {table}:\n{plan.sql}"
                assert index is not None or node == "Bitmap Heap Scan", (name, node, table)
    used = {name: {i for p in found for _, _, i in p.scans if i} for name, found in plans.items()}
    assert {
        "ix_audit_log_target_action_time",  # the window's start (one scan per action)
        "ix_audit_log_rollout_id_seq",  # the start of the stable revision's rollout
        "ix_measurements_rollout_check_time",  # the evidence
    } <= used["point_in_time"]
    # the window itself: the service's records by time, from either index on (namespace,
    # name, ...), as the planner prefers
    assert used["point_in_time"] & {"ix_audit_log_target_time", "ix_audit_log_target_action_time"}
    assert used["rollout_records"] == {"ix_audit_log_rollout_id_seq"}
    assert used["find_rollouts"] == {"ix_rollouts_created_at_id"}
    assert used["find_rollouts_service"] == {"ix_rollouts_target_created_at_id"}
    assert used["find_rollouts_namespace"] == {"ix_rollouts_namespace_created_at_id"}
    assert used["find_rollouts_next_page"] == {"ix_rollouts_created_at_id"}
    (next_page,) = plans["find_rollouts_next_page"]  # starts at the cursor, reads no newer
    assert any("created_at <=" in bound for bound in next_page.bounds), next_page.bounds
    by_model = {  # the model filter: either revision's name or storageUri, none read from JSON
        "ix_rollouts_canary_revision",
        "ix_rollouts_stable_revision",
        "ix_rollouts_canary_storage_uri",
        "ix_rollouts_stable_storage_uri",
    }
    assert used["find_rollouts_model"] == by_model
    assert by_model <= used["point_in_time_by_model"]
