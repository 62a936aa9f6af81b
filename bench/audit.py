"""The audit trail at scale: appends, point-in-time answers, history pages and verification
against a PostgreSQL database of millions of chained records.

    make bench-audit
    # which runs: .venv/bin/python -m bench.audit --records 10000000 --services 1000
    #                 --queries 500 --budget 40

Run it as a module from the repository root (it uses the test bed's private PostgreSQL,
``testbed.postgres``, which is not installed with the product). Results go to
``bench/results/audit.md``; the README's figures come from that file.

**The data set.** ``--records`` audit records (default 10,000,000) across ``--services``
InferenceServices (default 1,000, in 50 namespaces), shaped like the engine's records of
real rollouts: each service has one rollout after another (0.5 to 4 days apart), each a
``rollout.started``, its traffic intents with their ``traffic.applied`` outcomes and the
``traffic.shifted`` the status confirmed, an ``analysis.evaluated`` every 30 s of each step
(6 to 12 per step, each with 2 to 4 measurements), ``rollout.step_advanced`` between steps,
for 45 % of them an approval before the promotion (ServiceNow: requested, change opened,
verified, change closed; or a Kubernetes approver), and ``rollout.promoting`` then
``promoted`` or, for 12 %, a failed analysis, ``rollout.rolling_back`` and
``rolled_back``. Policies of 2 to 4 steps. The trail is cut at exactly ``--records`` in time
order, so the rollouts under way at that moment stay in flight. Every record is built as an
:class:`~canary.audit.AuditEntry`, serialised by the product's ``entry_body`` and
``canonical_json``, its query columns and ``measurements`` rows derived by the product's
``projection`` and ``measurement_rows``, and chained with ``compute_record_hash``; the
``rollouts`` row of each rollout (its state document shaped like the controller's) and the
``approvals`` rows are written to match. The whole chain passes ``AuditStore.verify``.

How it is made fast: bodies are rendered by ``--workers`` processes, one day of the trail
at a time (their sequence numbers known beforehand from a count of every day's records);
the main process hashes them in order (the chain is sequential) and streams them with
PostgreSQL ``COPY`` into tables whose keys, indexes and foreign keys were dropped, then
rebuilt once, exactly as the migrations defined them (checked with ``schema_differences``).
The database is migrated by its owner role and read and written by the application role, as
production runs it. It is generated with durability off and kept, with its PostgreSQL data
directory, under ``--cache-dir`` (a directory per record count, service count, seed,
generator version and PostgreSQL version), so a second run starts at the measurements; a
cached database whose schema is older than the migrations' head is first migrated to it by
the owner role, as ``canary db upgrade`` would (timed, and shown in the report's data set).
The measurements run on a server restarted with durability on (``fsync``,
``synchronous_commit``, ``full_page_writes``), as production commits; the appends are
measured again on a server without it (the test bed's settings), which shows what the
flushes cost.

**The measurements** (median, p95, p99 and max; targets of issue #15 §8, shown met or missed,
never asserted):

* appends: for each of ``--writers`` (default 1, 8 and 64 concurrent rollouts), that many
  threads, each a rollout of its own committing one decision per commit as the engine
  does (``AuditStore.commit([entry], fence=..., rollout=..., expected_version=...)``) for
  ``--append-seconds``: records/s, the commit latency, the round trips per commit (SQL
  statements, BEGIN, COMMIT and the pool's pre-ping, counted with SQLAlchemy events) and
  how many commits shared a transaction (the store's group commit); target >= 2,000 records/s;
* point-in-time: ``AuditStore.point_in_time`` for sampled services, at instants inside
  sampled rollouts (mostly mid-canary) and at random instants, and
  ``point_in_time_by_model``; target p99 < 50 ms;
* history: ``find_rollouts`` with each filter, first pages and deep keyset cursors, and a
  rollout's timeline (``rollout_records``); target p99 < 100 ms;
* verification: ``AuditStore.verify()`` over the whole chain, in one process and with the
  worker processes it uses by default (one per CPU, at most 4, for 200,000 records or more),
  target >= 100,000 records/s,
  and incrementally (``verify(after=(seq, hash))``) over the last 1 % of it;
* each query's plan: EXPLAIN of every statement it runs, once, with the indexes used.

Records appended by the writers stay in the cached database (a later run measures on top
of them; the results say how many there are).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import psycopg
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, event
from sqlalchemy.pool import Pool

from canary.audit import (
    GENESIS_HASH,
    Actor,
    AuditEntry,
    AuditStore,
    Fence,
    Measurement,
    ModelRef,
    ObjectRef,
    RolloutRow,
    alembic_config,
    canonical_json,
    compute_record_hash,
    entry_body,
    schema_differences,
    upgrade_to_head,
)
from canary.audit.chain import MEASUREMENT_COLUMNS, PROJECTION_COLUMNS, measurement_rows, projection
from canary.audit.history import encode_cursor
from canary.audit.rollouts import storage_uris
from canary.audit.verify import default_workers
from canary.audit.verify_postgres import PARALLEL_MINIMUM
from canary.model import Phase
from testbed.postgres import (
    PostgresServer,
    RoleDatabase,
    find_postgres_bin,
    provision_audit_database,
)

__all__ = [
    "GENERATOR_VERSION",
    "Plan",
    "Stats",
    "build_entry",
    "main",
    "percentile",
    "plan_service",
    "timeline",
]

GENERATOR_VERSION: Final = 1
"""Bump whenever the generated data changes: cached databases of another version are not used."""

EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
US: Final = 1_000_000
DAY: Final = 86_400 * US
WINDOW: Final = DAY  # the trail is rendered one day at a time
NAMESPACES: Final = 50
INSTANCE: Final = "kserve-canary-7d9f4c-q2x8z"
PROMETHEUS: Final = "http://prometheus.monitoring.svc:9090"
DATABASE: Final = "audit"
WRITERS_NAMESPACE: Final = "bench-writers"
LEASE: Final = "kserve-canary-bench"

TARGETS: Final = {
    "append": 2_000.0,  # records/s
    "point_in_time": 0.050,  # s, p99
    "history": 0.100,  # s, p99
    "verify": 100_000.0,  # records/s
}

# Server settings: generation trades durability for speed; the measurements run durable.
LOAD_SETTINGS: Final = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "max_parallel_maintenance_workers": "2",
}
MEASURE_SETTINGS: Final = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
}
FAST_SETTINGS: Final = {"shared_buffers": "1GB"}  # the test bed's: durability off

POLICIES: Final = (
    ("quick", (10, 100)),
    ("default", (10, 50, 100)),
    ("careful", (5, 25, 50, 100)),
    ("stepped", (10, 25, 50, 100)),
)
CHECKS: Final = ("error-rate", "latency-p99", "latency-p50", "false-positive-rate")


# --------------------------------------------------------------------------------------------
# the rollouts: plans and their timelines (pure)
# --------------------------------------------------------------------------------------------


def namespace_of(service: int) -> str:
    return f"team-{service % NAMESPACES:02d}"


def name_of(service: int) -> str:
    return f"model-{service:04d}"


def revision_of(service: int, number: int) -> str:
    return f"{name_of(service)}-predictor-{number:05d}"


def uri_of(service: int, number: int) -> str:
    return f"s3://models/{namespace_of(service)}/{name_of(service)}/v{number}"


def stable_id(text: str) -> str:
    """A UUID that is always the same for ``text`` (the data set's ids are reproducible)."""
    return str(uuid.UUID(bytes=hashlib.md5(text.encode(), usedforsecurity=False).digest()))


def uid_of(service: int) -> str:
    return stable_id(f"isvc/{service}")


@dataclass(frozen=True, slots=True)
class Plan:
    """One rollout of the data set: everything its records say, decided up front."""

    service: int
    index: int  # the service's n-th rollout
    rollout_id: str
    start: int  # microseconds after EPOCH
    policy: int  # index into POLICIES
    rounds: tuple[int, ...]  # analysis rounds at each step before the promotion
    checks: int  # measurements per analysis round
    webhook: bool  # the admission webhook set the first step: no start intent
    gate: str | None  # "servicenow", "kubernetes" or None (no approval)
    wait: int  # seconds from the approval request to its decision
    fail: tuple[int, int] | None  # (step, round) of a failed analysis: rolled back
    canary: int  # revision numbers
    stable: int
    started_by: str | None
    end: int = 0  # time of its last record
    windows: tuple[tuple[int, int], ...] = ()  # (window, records in it)

    @property
    def steps(self) -> tuple[int, ...]:
        return POLICIES[self.policy][1]

    @property
    def count(self) -> int:
        return sum(c for _, c in self.windows)


Event = tuple[int, str, int, str, int]
"""(time in microseconds after EPOCH, action, step, detail, number): ``detail`` is an
intent's purpose or an analysis verdict, ``number`` the intent's ordinal or the round."""


def timeline(plan: Plan) -> list[Event]:
    """The records of one rollout in chain order, as the engine commits them (a decision
    and the records it causes share their instant; an intent's outcome follows it)."""
    out: list[Event] = []
    t = plan.start
    intents = 0

    def add(action: str, step: int = 0, detail: str = "", number: int = 0) -> None:
        out.append((t, action, step, detail, number))

    def write(step: int, purpose: str) -> None:
        nonlocal t, intents
        intents += 1
        add("traffic.intent", step, purpose, intents)
        t += 250_000
        add("traffic.applied", step, purpose, intents)

    add("rollout.started")
    if not plan.webhook:
        write(0, "start")
    t += 30 * US
    add("traffic.shifted", 0)
    last = len(plan.steps) - 1
    for step in range(last):
        for round_ in range(1, plan.rounds[step] + 1):
            t += 30 * US
            failed = plan.fail == (step, round_)
            add("analysis.evaluated", step, "Failed" if failed else "Successful", round_)
            if failed:
                add("rollout.rolling_back", step)
                write(step, "rollback")
                t += 30 * US
                add("rolled_back", step)
                return out
        if step + 1 < last:
            add("rollout.step_advanced", step + 1)
            write(step + 1, "step")
            t += 30 * US
            add("traffic.shifted", step + 1)
            continue
        if plan.gate is not None:
            add("approval.requested", last)
            if plan.gate == "servicenow":
                t += 60 * US
                add("approval.change_opened", last)
            t += plan.wait * US
            add("approval.verified", last)
            t += 30 * US  # a fresh verdict before the promotion
            add("analysis.evaluated", step, "Successful", plan.rounds[step] + 1)
        add("rollout.promoting", last)
        write(last, "promote")
        t += 30 * US
        add("promoted", last)
        if plan.gate == "servicenow":
            t += 60 * US
            add("approval.change_closed", last)
    return out


def _window_counts(events: Sequence[Event]) -> tuple[tuple[int, int], ...]:
    counts = Counter(e[0] // WINDOW for e in events)
    return tuple(sorted(counts.items()))


def plan_service(seed: int, service: int, until: int) -> list[Plan]:
    """The rollouts of one service that start before ``until``: one after another."""
    rng = random.Random(f"{seed}/service/{service}")
    t = int(rng.uniform(0, 2) * DAY)
    stable, number, index = 1, 2, 0
    plans = []
    while t < until:
        policy = rng.randrange(len(POLICIES))
        steps = POLICIES[policy][1]
        rounds = tuple(rng.randint(6, 12) for _ in steps[:-1])
        fail = None
        if rng.random() < 0.12:
            step = rng.randrange(len(rounds))
            fail = (step, rng.randint(1, rounds[step]))
        draw = rng.random()
        gate = "servicenow" if draw < 0.35 else "kubernetes" if draw < 0.45 else None
        human = rng.random() < 0.3
        plan = Plan(
            service=service,
            index=index,
            rollout_id=stable_id(f"{seed}/{service}/{index}"),
            start=t,
            policy=policy,
            rounds=rounds,
            checks=rng.randint(2, 4),
            webhook=rng.random() < 0.5,
            gate=gate,
            wait=rng.randint(600, 4 * 3600),
            fail=fail,
            canary=number,
            stable=stable,
            started_by=f"user{rng.randrange(200):03d}@bank.example" if human else None,
        )
        events = timeline(plan)
        plans.append(replace(plan, end=events[-1][0], windows=_window_counts(events)))
        if fail is None:
            stable = number
        number += 1
        index += 1
        t = events[-1][0] + int(rng.uniform(0.5, 4) * DAY)
    return plans


# --------------------------------------------------------------------------------------------
# records (pure)
# --------------------------------------------------------------------------------------------

_CONTROLLER: Final = Actor("controller", INSTANCE)
_PHASES: Final[Mapping[str, str]] = {
    "rollout.started": Phase.PENDING.value,
    "traffic.shifted": Phase.PROGRESSING.value,
    "rollout.step_advanced": Phase.PROGRESSING.value,
    "approval.requested": Phase.AWAITING_APPROVAL.value,
    "approval.verified": Phase.PROGRESSING.value,
    "rollout.promoting": Phase.PROMOTING.value,
    "promoted": Phase.SUCCEEDED.value,
    "rollout.rolling_back": Phase.ROLLING_BACK.value,
    "rolled_back": Phase.ROLLED_BACK.value,
}


def _noise(*keys: int) -> float:
    """A deterministic number in [0, 1) from the keys (no RNG state to carry)."""
    x = 0x9E3779B97F4A7C15
    for key in keys:
        x = ((x ^ key) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return (x & 0xFFFFFFFFFFFF) / float(1 << 48)


def _query(check: str, revision: str) -> str:
    where = f'revision="{revision}"'
    if check.startswith("latency"):
        quantile = "0.99" if check.endswith("p99") else "0.5"
        return (
            f"histogram_quantile({quantile}, sum by (le) "
            f"(rate(request_duration_seconds_bucket{{{where}}}[1m])))"
        )
    if check == "error-rate":
        errors = f'sum(rate(requests_total{{{where},code=~"5.."}}[1m]))'
        return f"{errors} / sum(rate(requests_total{{{where}}}[1m]))"
    return (
        f"sum(rate(fraud_false_positives_total{{{where}}}[1m])) / "
        f"sum(rate(fraud_legitimate_total{{{where}}}[1m]))"
    )


def _measurements(
    plan: Plan, step: int, round_: int, at: datetime, failed: bool
) -> tuple[Measurement, ...]:
    out = []
    revision = revision_of(plan.service, plan.canary)
    percent = plan.steps[step]
    for position, check in enumerate(CHECKS[: plan.checks]):
        noise = _noise(plan.service, plan.index, step, round_, position)
        bad = failed and position == 0
        if check == "error-rate":
            baseline = 0.002 + 0.002 * noise
            canary = baseline * (6.0 if bad else 0.8 + 0.4 * noise)
            statistic, threshold = canary, 0.02
            verdict = "Failed" if canary > threshold else "Successful"
            message = f"5xx {canary:.2%} vs baseline {baseline:.2%}, absolute limit 2%"
        else:
            base = {"latency-p99": 0.2, "latency-p50": 0.05, "false-positive-rate": 0.02}[check]
            baseline = base * (0.9 + 0.2 * noise)
            canary = baseline * (0.95 + 0.1 * _noise(plan.index, round_, position))
            statistic = (canary - baseline) / baseline
            threshold = 0.2 if check.startswith("latency") else 0.1
            verdict = "Failed" if statistic > threshold else "Successful"
            message = f"{check} {canary:.4g} vs baseline {baseline:.4g}, limit +{threshold:.0%}"
        digest = hashlib.sha256(f"{plan.rollout_id}/{step}/{round_}/{check}".encode()).hexdigest()
        out.append(
            Measurement(
                check=check,
                evaluated_at=at,
                query=_query(check, revision),
                prometheus_url=PROMETHEUS,
                response_digest=digest,
                canary_value=canary,
                baseline_value=baseline,
                canary_samples=int(120 * percent * (0.8 + 0.4 * noise)),
                baseline_samples=int(120 * (100 - percent) * (0.8 + 0.4 * noise)) or None,
                statistic=statistic,
                threshold=threshold,
                verdict=verdict,
                dry_run=False,
                detail={"gating_outcome": verdict, "sufficient": True, "message": message},
            )
        )
    return tuple(out)


def _approver(plan: Plan) -> tuple[str, str]:
    """(approver's name, their id) for a rollout's approval."""
    person = plan.service * 7 + plan.index
    return f"Approver {person % 97:02d}", f"{person % 97:02d}".ljust(32, "a")


def _change(plan: Plan) -> str:
    return f"CHG{plan.service:04d}{plan.index:05d}"


def build_entry(plan: Plan, event: Event) -> AuditEntry:
    """The audit entry the engine would commit for ``event`` of ``plan``."""
    at_us, action, step, detail, number = event
    s = plan.service
    at = EPOCH + timedelta(microseconds=at_us)
    canary_name = revision_of(s, plan.canary)
    stable_name = revision_of(s, plan.stable)
    steps = plan.steps
    percent = steps[step]
    actor = _CONTROLLER
    evidence: dict[str, Any] = {}
    measurements: tuple[Measurement, ...] = ()
    before: dict[str, int] | None = None
    after: dict[str, int] | None = None
    correlation: str | None = None
    if action == "rollout.started":
        evidence = {"revision": canary_name, "storage_uri": uri_of(s, plan.canary),
                    "stable": stable_name, "policy": POLICIES[plan.policy][0],
                    "first_percent": steps[0], "shadowed_by": None}  # fmt: skip
        reason = f"new revision {canary_name} detected; canary against {stable_name}"
    elif action in ("traffic.intent", "traffic.applied"):
        target = {"start": steps[0], "step": percent, "promote": 100, "rollback": 0}[detail]
        shown = {"start": 0, "step": steps[step - 1] if step else 0}.get(detail, percent)
        correlation = f"{plan.rollout_id}/{number}"
        if action == "traffic.intent":
            before = {canary_name: shown, stable_name: 100 - shown}
            after = {canary_name: target, stable_name: 100 - target}
            evidence = {"purpose": detail, "percent": target}
            reason = f"{detail}: give {canary_name} {target}%"
        else:
            evidence = {"purpose": detail, "percent": target, "attempts": 1}
            reason = f"{detail}: {canary_name} at {target}% written"
    elif action == "traffic.shifted":
        evidence = {"revision": canary_name, "percent": percent, "step": step}
        reason = f"status shows {canary_name} at {percent}%"
    elif action == "analysis.evaluated":
        failed = detail == "Failed"
        measurements = _measurements(plan, step, number, at, failed)
        evidence = {"verdict": detail, "sufficient_data": True, "fast_fail": False,
                    "step": step, "shadow": False, "ceiling": None, "grace": False,
                    "fast_path": False, "window_seconds": 60,
                    "metric_profile": "knative-otel"}  # fmt: skip
        reason = "; ".join(f"{m.check} {m.verdict.lower()}" for m in measurements)
    elif action == "rollout.step_advanced":
        evidence = {"revision": canary_name, "step": step, "percent": percent}
        reason = f"step {step + 1} of {len(steps)}: {percent}%"
    elif action == "approval.requested":
        deadline = at + timedelta(hours=8)
        evidence = {"revision": canary_name, "step": step, "deadline": deadline.isoformat(),
                    "group": "credit-risk", "gate": plan.gate}  # fmt: skip
        reason = f"approval needed before {percent}%"
    elif action == "approval.change_opened":
        evidence = {"change_number": _change(plan), "revision": canary_name}
        reason = f"change {_change(plan)} opened for approval"
    elif action == "approval.verified":
        person, person_id = _approver(plan)
        comment = "reviewed the canary evidence; fine to promote"
        if plan.gate == "servicenow":
            actor = Actor("servicenow", person, uid=person_id)
            change: str | None = _change(plan)
        else:
            actor = Actor("human", f"{person.lower().replace(' ', '.')}@bank.example",
                          uid=person_id, groups=("model-risk",))  # fmt: skip
            change = None
        decision: dict[str, Any] = {
            "gate": plan.gate, "outcome": "approved", "approver": person_id,
            "approver_name": person, "change_number": change, "decided_at": at.isoformat(),
            "comments": comment, "violations": [],
        }  # fmt: skip
        evidence = {"attempt": 1, "change_number": change, "comment": comment,
                    "decision": decision, "gate": plan.gate, "revision": canary_name}  # fmt: skip
        reason = f"approved by {actor.id}"
    elif action == "rollout.promoting":
        evidence = {"revision": canary_name}
        reason = "all steps passed" if plan.gate is None else f"approved: {_change(plan)}"
    elif action == "promoted":
        evidence = {"revision": canary_name, "phase": Phase.SUCCEEDED.value}
        reason = f"{canary_name} promoted"
    elif action == "approval.change_closed":
        evidence = {"change_number": _change(plan), "close_code": "successful"}
        reason = f"change {_change(plan)} closed: successful"
    elif action == "rollout.rolling_back":
        evidence = {"revision": canary_name, "percent_before": percent}
        reason = f"analysis failed at step {step + 1}: error-rate above its limit"
    elif action == "rolled_back":
        evidence = {"revision": canary_name, "phase": Phase.ROLLED_BACK.value}
        reason = f"analysis failed at step {step + 1}: error-rate above its limit"
    else:  # pragma: no cover - the timeline makes no other action
        raise ValueError(f"no entry for {action}")
    return AuditEntry(
        at=at,
        actor=actor,
        action=action,
        rollout_id=plan.rollout_id,
        obj=ObjectRef(
            namespace_of(s),
            name_of(s),
            uid_of(s),
            plan.index + 2,
            str(4_000_000 + at_us // (10 * US)),
        ),
        stable=ModelRef(None, uri_of(s, plan.stable), None, stable_name),
        canary=ModelRef(None, uri_of(s, plan.canary), None, canary_name),
        traffic_before=before,
        traffic_after=after,
        reason=reason,
        evidence=evidence,
        measurements=measurements,
        leader_epoch=1 + at_us // (30 * DAY),
        correlation_id=correlation,
    )


def _stamp(at_us: int) -> str:
    return (EPOCH + timedelta(microseconds=at_us)).isoformat().replace("+00:00", "Z")


def _policy_document(plan: Plan) -> dict[str, Any]:
    name, steps = POLICIES[plan.policy]
    checks = [
        {"name": check, "builtin": check if check != "false-positive-rate" else None,
         "query": None, "relativeTolerance": 0.2 if check.startswith("latency") else 0.5,
         "minSamples": 100, "onNoData": "inconclusive", "failureLimit": 0,
         "inconclusiveLimit": 0, "consecutiveErrorLimit": 4, "dryRun": False}
        for check in CHECKS[: plan.checks]
    ]  # fmt: skip
    approval = None
    if plan.gate is not None:
        approval = {"gate": plan.gate, "beforeStep": 100, "riskOwnerGroup": "credit-risk",
                    "approvers": [], "deadline": "8h", "onExpiry": "hold"}  # fmt: skip
    return {"name": name, "steps": list(steps), "stepHold": "5m", "maxStepDuration": None,
            "analysisInterval": "30s", "revisionReadyTimeout": "10m", "trafficTimeout": "2m",
            "metricProfile": "knative-otel", "checks": checks, "falseRollbackRate": 0.01,
            "falsePromotionRate": 0.05, "progression": "evidence", "approval": approval,
            "schedule": {"timezone": "UTC", "windows": [], "freezes": []},
            "afterRollback": "revert", "onOptOut": "return-to-stable"}  # fmt: skip


def state_document(plan: Plan, kept: Sequence[Event]) -> dict[str, Any]:
    """The ``rollouts.state`` document after the ``kept`` records, shaped like the
    controller's (``RolloutDocument.to_json``)."""
    s = plan.service
    last_at, last_action, last_step = kept[-1][0], kept[-1][1], kept[-1][2]
    phases = [_PHASES[e[1]] for e in kept if e[1] in _PHASES]
    phase = phases[-1]
    history = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    canary = {"name": revision_of(s, plan.canary), "storage_uri": uri_of(s, plan.canary),
              "artifact_digest": None}  # fmt: skip
    stable = {"name": revision_of(s, plan.stable), "storage_uri": uri_of(s, plan.stable),
              "artifact_digest": None}  # fmt: skip
    verdicts = [e for e in kept if e[1] == "analysis.evaluated"]
    approval = None
    requested = next((e for e in kept if e[1] == "approval.requested"), None)
    if requested is not None:
        decided = next((e for e in kept if e[1] == "approval.verified"), None)
        approval = {
            "step_index": requested[2], "requested_at": _stamp(requested[0]),
            "deadline": _stamp(requested[0] + 8 * 3600 * US),
            "status": "approved" if decided else "pending",
            "approver": _approver(plan)[0] if decided else None,
            "decided_at": _stamp(decided[0]) if decided else None,
            "change_number": _change(plan) if plan.gate == "servicenow" else None,
        }  # fmt: skip
    ended = phase in (Phase.SUCCEEDED.value, Phase.ROLLED_BACK.value)
    outcome = None
    if phase == Phase.SUCCEEDED.value:
        outcome = f"{canary['name']} promoted"
    elif phase == Phase.ROLLED_BACK.value:
        outcome = "analysis failed: error-rate above its limit"
    shown = {"start": 0}.get(last_action, plan.steps[last_step])
    split = {canary["name"]: shown, stable["name"]: 100 - shown}
    machine = {
        "rollout_id": plan.rollout_id, "namespace": namespace_of(s), "name": name_of(s),
        "policy": POLICIES[plan.policy][0], "phase": phase, "canary": canary,
        "stable": stable, "created_at": _stamp(plan.start),
        "phase_entered_at": _stamp(last_at), "step_index": last_step,
        "target_percent": plan.steps[last_step], "step_reached_at": _stamp(last_at),
        "traffic_requested_at": _stamp(last_at), "paused_from": None, "pause_reason": None,
        "approval": approval,
        "last_verdict": None if not verdicts else {
            "verdict": verdicts[-1][3], "step_index": verdicts[-1][2],
            "evaluated_at": _stamp(verdicts[-1][0]), "sufficient_data": True,
            "summary": "every check passed" if verdicts[-1][3] == "Successful"
            else "error-rate failed"},
        "last_view": {"latest": canary, "stable": stable, "split": split,
                      "spec_percent": shown, "converged": True, "latest_ready": True,
                      "latest_failed": False, "failure_message": None, "generation": None,
                      "resource_version": None, "routed": True},
        "waiting_for": None, "outcome": outcome,
        "rollback_reason": outcome if phase == Phase.ROLLED_BACK.value else None,
        "aborted_by": None,
        "next_check_at": None if ended else _stamp(last_at + 30 * US),
        "watched_percent": None, "rejected_write": None, "history": history,
        "started_by": plan.started_by, "challenger": None, "shadowed_by": None,
    }  # fmt: skip
    return {"v": 1, "machine": machine, "policy": _policy_document(plan), "mode": "knative",
            "uid": uid_of(s), "metric_profile": "knative-otel", "pending": [],
            "next_analysis_at": None, "retry_at": None, "next_look_at": None, "memory": {},
            "mirror_applied_at": None}  # fmt: skip


# --------------------------------------------------------------------------------------------
# COPY text
# --------------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Text in PostgreSQL's COPY text format (backslash, tab, newline, carriage return)."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_text(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    kind = type(value)
    if kind is str:
        return escape(value)
    if value is None:
        return "\\N"
    if kind is bool:
        return "t" if value else "f"
    if kind is int:
        return str(value)
    if kind is float:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, separators=(",", ":")))
    raise TypeError(f"{kind.__name__} has no COPY text form here")


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------

# Set in the parent before the rendering processes fork (they inherit them).
_PLANS: list[Plan] = []
_BY_WINDOW: dict[int, list[int]] = {}

Key = tuple[int, int, int, int]  # (time, service, rollout index, position in its timeline)
Task = tuple[int, int, Key | None]  # (window, seq before it, the cut or None)


@dataclass(frozen=True)
class Rendered:
    """One day of the trail: record bodies in chain order with their query columns (COPY
    text, without seq and hashes), and the measurement rows (COPY text)."""

    bodies: list[str]
    columns: list[str]
    measurements: str
    measurement_rows: int
    actions: Counter[str]


def _window_events(window: int, cut: Key | None) -> list[tuple[Key, int, Event]]:
    items = []
    for index in _BY_WINDOW.get(window, ()):
        plan = _PLANS[index]
        for position, ev in enumerate(timeline(plan)):
            if ev[0] // WINDOW != window:
                continue
            key = (ev[0], plan.service, plan.index, position)
            if cut is None or key <= cut:
                items.append((key, index, ev))
    items.sort(key=lambda item: item[0])
    return items


def _render(task: Task) -> Rendered:
    window, seq, cut = task
    bodies: list[str] = []
    columns: list[str] = []
    m_lines: list[str] = []
    actions: Counter[str] = Counter()
    for _key, index, ev in _window_events(window, cut):
        seq += 1
        data = entry_body(seq, build_entry(_PLANS[index], ev))
        bodies.append(canonical_json(data))
        derived = projection(data)
        columns.append("\t".join(copy_text(derived[c]) for c in PROJECTION_COLUMNS))
        for row in measurement_rows(seq, data):
            m_lines.append("\t".join(copy_text(row[c]) for c in MEASUREMENT_COLUMNS) + "\n")
        actions[ev[1]] += 1
    return Rendered(bodies, columns, "".join(m_lines), len(m_lines), actions)


def _plan_task(task: tuple[int, int, int]) -> list[Plan]:
    return plan_service(*task)


@dataclass
class Generated:
    """What generation made, and how long each part took (kept with the cache)."""

    records: int
    services: int
    seed: int
    rollouts: int
    active_rollouts: int
    approvals: int
    measurements: int
    actions: dict[str, int]
    first_at: str
    last_at: str
    seconds: dict[str, float]
    generated_on: str
    workers: int
    load_average: float
    schema_in_sync: bool
    cpu: str = ""
    migrations: list[dict[str, Any]] = field(default_factory=list)  # see _migrate


def _pool(workers: int) -> Any:
    return multiprocessing.get_context("fork").Pool(workers)


def _in_order(pool: Any, tasks: Sequence[Task], ahead: int) -> Iterator[Rendered]:
    """The rendered days in order, at most ``ahead`` of them rendered before they are
    loaded (so memory stays bounded when loading is the slower side)."""
    queue: deque[Any] = deque()
    todo = iter(tasks)
    for task in itertools.islice(todo, ahead):
        queue.append(pool.apply_async(_render, (task,)))
    while queue:
        rendered: Rendered = queue.popleft().get()
        following = next(todo, None)
        if following is not None:
            queue.append(pool.apply_async(_render, (following,)))
        yield rendered


def _plans(seed: int, services: int, records: int, workers: int) -> list[Plan]:
    """Every service's rollouts over a span long enough for ``records`` and 15 % more (the
    trail is cut at ``records`` in time order)."""
    sample = [p for s in range(8) for p in plan_service(seed + 7919, s, 200 * DAY)]
    spans = [b.start - a.start for a, b in itertools.pairwise(sample) if a.service == b.service]
    per_record = sum(spans) / sum(p.count for p in sample)
    until = int(records * 1.15 / services * per_record) + 3 * DAY
    while True:
        with _pool(workers) as pool:
            chunks = pool.map(_plan_task, [(seed, s, until) for s in range(services)])
        plans = [p for chunk in chunks for p in chunk]
        if sum(p.count for p in plans) >= records:
            return plans
        until = int(until * 1.3)


def _cut(records: int) -> tuple[list[Task], Key]:
    """The rendering tasks (window, seq before it, cut) and the key of the last record."""
    counts: Counter[int] = Counter()
    for plan in _PLANS:
        for window, count in plan.windows:
            counts[window] += count
    tasks: list[Task] = []
    seq = 0
    for window in sorted(counts):
        if seq + counts[window] < records:
            tasks.append((window, seq, None))
            seq += counts[window]
            continue
        events = _window_events(window, None)
        last = events[records - seq - 1][0]
        tasks.append((window, seq, last))
        return tasks, last
    raise AssertionError("the plans hold fewer records than asked")  # _plans made sure


def _kept(plan: Plan, cut: Key) -> list[Event]:
    if plan.start > cut[0]:
        return []
    events = timeline(plan)
    if plan.end < cut[0]:
        return events
    return [ev for i, ev in enumerate(events) if (ev[0], plan.service, plan.index, i) <= cut]


def _rollout_line(plan: Plan, kept: Sequence[Event]) -> tuple[str, bool]:
    """The ``rollouts`` row (COPY text) and whether the rollout is still active."""
    document = state_document(plan, kept)
    machine = document["machine"]
    ended = machine["phase"] in (Phase.SUCCEEDED.value, Phase.ROLLED_BACK.value)
    values = (
        plan.rollout_id, namespace_of(plan.service), name_of(plan.service),
        uid_of(plan.service), POLICIES[plan.policy][0], "knative", machine["phase"],
        machine["step_index"], machine["canary"]["name"], machine["stable"]["name"], document,
        EPOCH + timedelta(microseconds=plan.start),
        EPOCH + timedelta(microseconds=kept[-1][0]),
        None if ended else EPOCH + timedelta(microseconds=kept[-1][0] + 30 * US),
        not ended, len(kept), *storage_uris(document),  # as the store's writer derives them
    )  # fmt: skip
    return "\t".join(copy_text(v) for v in values) + "\n", not ended


ROLLOUT_COLUMNS: Final = (
    "id", "namespace", "name", "isvc_uid", "policy_name", "mode", "phase", "step_index",
    "canary_revision", "stable_revision", "state", "created_at", "updated_at",
    "next_check_at", "active", "version", "canary_storage_uri", "stable_storage_uri",
)  # fmt: skip
APPROVAL_COLUMNS: Final = (
    "id", "rollout_id", "revision", "step_index", "gate", "change_number", "change_sys_id",
    "risk_owner_group", "requested_by", "requested_at", "deadline", "state", "approver",
    "decided_at", "close_code", "percent", "requesters", "window_start", "window_end",
    "decision", "trigger", "closed_at", "close_note",
)  # fmt: skip


def _approval_line(plan: Plan, kept: Sequence[Event]) -> str | None:
    by_action = {ev[1]: ev for ev in kept}
    requested = by_action.get("approval.requested")
    if requested is None or plan.gate is None:
        return None
    decided = by_action.get("approval.verified")
    closed = by_action.get("approval.change_closed")
    promoted = "promoted" in by_action
    at = EPOCH + timedelta(microseconds=requested[0])
    deadline = at + timedelta(hours=8)
    person, person_id = _approver(plan)
    snow = plan.gate == "servicenow"
    decision = None
    if decided is not None:
        decision = {"gate": plan.gate, "outcome": "approved", "approver": person_id,
                    "approver_name": person, "change_number": _change(plan) if snow else None,
                    "decided_at": _stamp(decided[0])}  # fmt: skip
    requester = plan.started_by or INSTANCE
    values = (
        stable_id(f"approval/{plan.rollout_id}"),
        plan.rollout_id, revision_of(plan.service, plan.canary), requested[2], plan.gate,
        _change(plan) if snow else None,
        stable_id(_change(plan)).replace("-", "") if snow else None,
        "credit-risk", requester, at, deadline,
        "approved" if decided else "pending", person_id if decided else None,
        EPOCH + timedelta(microseconds=decided[0]) if decided else None,
        "successful" if promoted and snow else None, 100, [requester], at, deadline,
        decision, None, EPOCH + timedelta(microseconds=closed[0]) if closed else None,
        f"{revision_of(plan.service, plan.canary)} promoted" if promoted and snow else None,
    )  # fmt: skip
    return "\t".join(copy_text(v) for v in values) + "\n"


_LOADED_TABLES: Final = ("audit_log", "measurements", "rollouts", "approvals")


def _strip_keys(conn: psycopg.Connection[Any]) -> list[sql.SQL | sql.Composed]:
    """Drop the keys, foreign keys and indexes of the loaded tables; return the statements
    that recreate them exactly (keys, then indexes, then foreign keys)."""
    tables = list(_LOADED_TABLES)
    constraints = conn.execute(
        "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE contype IN ('p', 'u', 'f') "
        "AND (conrelid = ANY(%s::regclass[]) OR confrelid = ANY(%s::regclass[]))",
        [tables, tables],
    ).fetchall()
    indexes = conn.execute(
        "SELECT i.indrelid::regclass::text, c.relname, pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS (SELECT 1 FROM pg_constraint k "
        "WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))",
        [tables],
    ).fetchall()
    keys = [c for c in constraints if c[2] != "f"]
    foreign = [c for c in constraints if c[2] == "f"]
    for table, name, _kind, _definition in (*foreign, *keys):
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    for _table, name, _definition in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))

    def add(table: str, name: str, definition: str) -> sql.Composed:
        return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
        )

    return [
        *(add(table, name, definition) for table, name, _kind, definition in keys),
        *(sql.SQL(definition) for _table, _name, definition in indexes),
        *(add(table, name, definition) for table, name, _kind, definition in foreign),
    ]


def generate(
    database: RoleDatabase, *, records: int, services: int, seed: int, workers: int,
    say: Callable[[str], None],
) -> Generated:  # fmt: skip
    """Fill ``database`` (migrated, empty) with the data set."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    load = os.getloadavg()[0]
    say(f"planning the rollouts of {services} services")
    _PLANS[:] = _plans(seed, services, records, workers)
    _BY_WINDOW.clear()
    for index, plan in enumerate(_PLANS):
        for window, _count in plan.windows:
            _BY_WINDOW.setdefault(window, []).append(index)
    tasks, cut = _cut(records)
    seconds["plan"] = time.monotonic() - started
    say(f"{len(_PLANS)} rollouts planned; rendering and loading {records:,} records")

    mark = time.monotonic()
    actions: Counter[str] = Counter()
    m_count = 0
    with psycopg.connect(database.admin_conninfo, autocommit=True) as admin:
        admin.execute("SET maintenance_work_mem = '1GB'")
        rebuild = _strip_keys(admin)
        with (
            psycopg.connect(database.admin_conninfo) as log_conn,
            psycopg.connect(database.admin_conninfo) as m_conn,
        ):
            log_cols = ", ".join(("seq", "prev_hash", "record_hash", "body", *PROJECTION_COLUMNS))
            m_cols = ", ".join(MEASUREMENT_COLUMNS)
            with (
                log_conn.cursor().copy(f"COPY audit_log ({log_cols}) FROM STDIN") as log_copy,
                m_conn.cursor().copy(f"COPY measurements ({m_cols}) FROM STDIN") as m_copy,
                _pool(workers) as pool,
            ):
                seq, prev = 0, GENESIS_HASH
                for rendered in _in_order(pool, tasks, ahead=2 * workers + 2):
                    lines = []
                    for body, columns in zip(rendered.bodies, rendered.columns, strict=True):
                        seq += 1
                        record_hash = compute_record_hash(prev, body)
                        lines.append(f"{seq}\t{prev}\t{record_hash}\t{escape(body)}\t{columns}\n")
                        prev = record_hash
                    log_copy.write("".join(lines))
                    m_copy.write(rendered.measurements)
                    m_count += rendered.measurement_rows
                    actions.update(rendered.actions)
            assert seq == records, f"rendered {seq} records, not {records}"
        seconds["render, hash and load records"] = time.monotonic() - mark

        mark = time.monotonic()
        rollouts = approvals = active = 0
        with admin.cursor().copy(
            f"COPY rollouts ({', '.join(ROLLOUT_COLUMNS)}) FROM STDIN"
        ) as r_copy:
            approval_lines = []
            for plan in _PLANS:
                kept = _kept(plan, cut)
                if not kept:
                    continue
                line, in_flight = _rollout_line(plan, kept)
                r_copy.write(line)
                rollouts += 1
                active += in_flight
                approval = _approval_line(plan, kept)
                if approval is not None:
                    approval_lines.append(approval)
        with admin.cursor().copy(
            f"COPY approvals ({', '.join(APPROVAL_COLUMNS)}) FROM STDIN"
        ) as a_copy:
            for line in approval_lines:
                a_copy.write(line)
            approvals = len(approval_lines)
        seconds["rollouts and approvals"] = time.monotonic() - mark

        mark = time.monotonic()
        say("building the keys and indexes")
        for statement in rebuild:
            admin.execute(statement)
        seconds["keys and indexes"] = time.monotonic() - mark
        mark = time.monotonic()
        admin.execute("VACUUM (ANALYZE)")
        admin.execute("CHECKPOINT")
        seconds["vacuum and analyze"] = time.monotonic() - mark
    seconds["total"] = time.monotonic() - started
    in_sync = not schema_differences(database.admin_url)
    return Generated(
        records=records,
        services=services,
        seed=seed,
        rollouts=rollouts,
        active_rollouts=active,
        approvals=approvals,
        measurements=m_count,
        actions=dict(actions.most_common()),
        first_at=_stamp(min(p.start for p in _PLANS)),
        last_at=_stamp(cut[0]),
        seconds=seconds,
        generated_on=datetime.now(UTC).isoformat(timespec="seconds"),
        workers=workers,
        load_average=load,
        schema_in_sync=in_sync,
    )


# --------------------------------------------------------------------------------------------
# the database, kept between runs
# --------------------------------------------------------------------------------------------


def default_cache() -> Path:
    """Where generated databases are kept: ``$KSC_BENCH_CACHE``, else a directory under
    /var/tmp (kept across reboots; the PostgreSQL server's user must be able to reach it)."""
    kept = "/var/tmp/kserve-canary-bench"  # noqa: S108 - a cache directory, made 0755 by us
    return Path(os.environ.get("KSC_BENCH_CACHE", kept))


def _roles(server: PostgresServer) -> RoleDatabase:
    owner, app = f"{DATABASE}_owner", f"{DATABASE}_app"
    return RoleDatabase(
        name=DATABASE,
        owner=owner,
        app=app,
        owner_url=server.url_as(owner, DATABASE),
        app_url=server.url_as(app, DATABASE),
        admin_url=server.url_for(DATABASE),
        admin_conninfo=server.conninfo(DATABASE),
    )


@dataclass
class Prepared:
    server: PostgresServer
    database: RoleDatabase
    generated: Generated
    cached: bool
    directory: Path
    migrated: bool = False  # this run migrated the cached database


def _migrate(
    database: RoleDatabase, generated: Generated, ready: Path, say: Callable[[str], None]
) -> bool:
    """Bring a cached database whose schema is older than the migrations' head to the head,
    as its owner role (what ``canary db upgrade`` does in production) on the running
    (durable) server, then ``VACUUM (ANALYZE) rollouts`` as a DBA would after 0009 (its
    backfill leaves the old version of each rollout's row behind). What it took goes into
    ``generated.migrations`` and ``ready.json``, for the report. False when the schema is
    at the head already."""
    with AuditStore.from_url(database.owner_url) as store:
        found = store.check_schema()  # refuses a schema newer than these migrations
    head = ScriptDirectory.from_config(alembic_config(database.owner_url)).get_current_head()
    if found == head:
        return False
    say(f"the cached database's schema is at revision {found}: migrating it to {head} as the "
        f"owner role {database.owner}")  # fmt: skip
    load = os.getloadavg()[0]
    mark = time.monotonic()
    upgrade_to_head(database.owner_url)
    seconds = {"migration": time.monotonic() - mark}
    say(f"migrated in {seconds['migration']:.0f} s; VACUUM (ANALYZE) rollouts")
    mark = time.monotonic()
    with psycopg.connect(database.admin_conninfo, autocommit=True) as admin:
        admin.execute("VACUUM (ANALYZE) rollouts")
    seconds["vacuum and analyze"] = time.monotonic() - mark
    generated.migrations.append({
        "from": found, "to": head, "seconds": seconds, "load_average": load,
        "on": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema_in_sync": not schema_differences(database.admin_url),
    })  # fmt: skip
    ready.write_text(json.dumps(generated.__dict__, indent=2), encoding="utf-8")
    return True


def prepare(
    cache: Path, *, records: int, services: int, seed: int, workers: int, fresh: bool,
    say: Callable[[str], None],
) -> Prepared:  # fmt: skip
    """The data set's database, generated or found in the cache (and then migrated to the
    head if its schema is older), on a running server."""
    major = find_postgres_bin().parent.name
    directory = cache / f"audit-n{records}-s{services}-seed{seed}-g{GENERATOR_VERSION}-pg{major}"
    ready = directory / "ready.json"
    generated: Generated | None = None
    if ready.is_file() and not fresh:
        try:
            generated = Generated(**json.loads(ready.read_text(encoding="utf-8")))
        except (TypeError, ValueError):  # written by another version of this harness
            say(f"{ready} is not this harness's: generating again")
    cached = generated is not None
    if generated is not None:
        say(f"using the database generated on {generated.generated_on} ({directory})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for folder in (cache, directory):  # the server's OS user must reach its data
            folder.chmod(0o755)
        say(f"generating the data set in {directory}")
        server = PostgresServer(directory / "pgdata", settings=LOAD_SETTINGS)
        server.start()
        try:
            generated = generate(
                provision_audit_database(server, DATABASE),
                records=records, services=services, seed=seed, workers=workers, say=say,
            )  # fmt: skip
        finally:
            server.stop()
        os.sync()  # generated without fsync: on disk before it is trusted
        generated.cpu = _cpu()
        ready.write_text(json.dumps(generated.__dict__, indent=2), encoding="utf-8")
    server = PostgresServer(directory / "pgdata", settings=MEASURE_SETTINGS)
    server.start()
    database = _roles(server)
    try:
        migrated = cached and _migrate(database, generated, ready, say)
    except BaseException:
        server.stop()
        raise
    return Prepared(server, database, generated, cached, directory, migrated)


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 for p99) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class Stats:
    """Latencies of one kind of call, in seconds, against a p99 target."""

    label: str
    samples: tuple[float, ...]
    target: float | None = None
    note: str = ""

    def row(self) -> str:
        if not self.samples:
            return f"| {self.label} | 0 | – | – | – | – | – | {self.note} |"
        p99 = percentile(self.samples, 0.99)
        target = "–"
        if self.target is not None:
            met = "met" if p99 < self.target else "**missed**"
            target = f"< {self.target * 1000:.0f} ms: {met}"
        cells = [self.label, f"{len(self.samples):,}",
                 *(f"{v * 1000:.1f}" for v in (percentile(self.samples, 0.5),
                   percentile(self.samples, 0.95), p99, max(self.samples))),
                 target, self.note]  # fmt: skip
        return "| " + " | ".join(cells) + " |"


_TABLE_HEAD: Final = (
    "| query | samples | median ms | p95 ms | p99 ms | max ms | target (p99) | note |\n"
    "|---|---|---|---|---|---|---|---|"
)


class _Watch(threading.local):
    """Per thread: statements and round trips counted while ``counts`` is set, statements
    captured while ``captured`` is set."""

    counts: Counter[str] | None = None
    captured: list[tuple[str, Any]] | None = None


_WATCH = _Watch()
_LISTENING: list[bool] = []


def _listen() -> None:
    """Count what every engine sends (SQLAlchemy events, per thread)."""
    if _LISTENING:
        return
    _LISTENING.append(True)

    def execute(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if _WATCH.counts is not None:
            _WATCH.counts["statements"] += 1
        if _WATCH.captured is not None:
            _WATCH.captured.append((statement, parameters))

    def counter(kind: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            if _WATCH.counts is not None:
                _WATCH.counts[kind] += 1

        return count

    event.listen(Engine, "before_cursor_execute", execute)
    event.listen(Engine, "begin", counter("BEGIN"))
    event.listen(Engine, "commit", counter("COMMIT"))
    event.listen(Pool, "checkout", counter("pre-ping"))


def _timed(
    call: Callable[[int], Any], count: int, budget: float, *, warm: int = 3
) -> tuple[list[float], list[Any]]:
    """Run ``call(i)`` for i = 0, 1, ... until ``count`` calls or ``budget`` seconds (at
    least 10 calls); return the latencies and the results. ``warm`` calls first, untimed."""
    for i in range(warm):
        call(count + i)
    samples: list[float] = []
    results = []
    began = time.monotonic()
    for i in range(count):
        if i >= 10 and time.monotonic() - began > budget:
            break
        start = time.perf_counter()
        results.append(call(i))
        samples.append(time.perf_counter() - start)
    return samples, results


@dataclass(frozen=True)
class Sampled:
    """A rollout picked for the queries."""

    id: str
    namespace: str
    name: str
    created_at: datetime
    updated_at: datetime
    revision: str
    storage_uri: str


def _sample(database: RoleDatabase, count: int, seed: int) -> list[Sampled]:
    with psycopg.connect(database.admin_conninfo) as conn:
        rows = conn.execute(
            "SELECT id, namespace, name, created_at, updated_at, canary_revision, "
            "canary_storage_uri FROM rollouts "
            "WHERE namespace <> %s ORDER BY md5(id || %s) LIMIT %s",
            [WRITERS_NAMESPACE, str(seed), count],
        ).fetchall()
    return [Sampled(*row) for row in rows]


def _span(database: RoleDatabase) -> tuple[datetime, datetime]:
    with psycopg.connect(database.admin_conninfo) as conn:
        first = conn.execute("SELECT recorded_at FROM audit_log ORDER BY seq LIMIT 1").fetchone()
        last = conn.execute(
            "SELECT max(updated_at) FROM rollouts WHERE namespace <> %s", [WRITERS_NAMESPACE]
        ).fetchone()
    assert first is not None
    assert last is not None
    return first[0], last[0]


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + (end - start) * rng.random()


Verified = tuple[str, int, float, bool, str | None]  # label, records, seconds, ok, problem


@dataclass
class Measured:
    point_in_time: list[Stats] = field(default_factory=list)
    knowledge: Counter[str] = field(default_factory=Counter)
    history: list[Stats] = field(default_factory=list)
    verify: list[Verified] = field(default_factory=list)
    append: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, list[str]] = field(default_factory=dict)
    head: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    server_version: str = ""


def measure_queries(
    store: AuditStore, database: RoleDatabase, *, queries: int, budget: float, seed: int,
    say: Callable[[str], None],
) -> tuple[Measured, dict[str, Callable[[], Any]]]:  # fmt: skip
    """Point-in-time and history latencies; returns them and one call of each query kind
    (for its plan)."""
    out = Measured()
    rng = random.Random(seed)
    picks = _sample(database, max(queries, 50), seed)
    first, last = _span(database)
    pit_at = [
        _between(rng, p.created_at, p.updated_at) if i % 2 == 0 else _between(rng, first, last)
        for i, p in enumerate(picks)
    ]
    model_at = [_between(rng, p.created_at, p.updated_at + timedelta(days=1)) for p in picks]
    n = len(picks)

    def pit(i: int) -> Any:
        p = picks[i % n]
        return store.point_in_time(p.namespace, p.name, pit_at[i % n])

    def by_model(i: int) -> Any:
        p = picks[i % n]
        return store.point_in_time_by_model(p.revision if i % 2 else p.storage_uri, model_at[i % n])

    say("timing point-in-time queries")
    samples, answers = _timed(pit, queries, budget)
    out.knowledge.update(a.knowledge for a in answers)
    out.point_in_time.append(
        Stats(
            "point_in_time(namespace, name, T): T inside a rollout (even) or at random",
            tuple(samples),
            TARGETS["point_in_time"],
        )
    )
    samples, _ = _timed(by_model, queries, budget)
    out.point_in_time.append(
        Stats(
            "point_in_time_by_model(revision or storageUri, T)",
            tuple(samples),
            TARGETS["point_in_time"],
        )
    )

    week = timedelta(days=7)
    variants: dict[str, Callable[[int], Any]] = {
        "find_rollouts(): newest 50": lambda i: store.find_rollouts(),
        "find_rollouts(namespace, name)": lambda i: store.find_rollouts(
            namespace=picks[i % n].namespace, name=picks[i % n].name
        ),
        "find_rollouts(namespace)": lambda i: store.find_rollouts(namespace=picks[i % n].namespace),
        "find_rollouts(outcome=RolledBack)": lambda i: store.find_rollouts(outcome="RolledBack"),
        "find_rollouts(since, until): one week": lambda i: store.find_rollouts(
            since=pit_at[i % n], until=pit_at[i % n] + week
        ),
        "find_rollouts(model=storageUri)": lambda i: store.find_rollouts(
            model=picks[i % n].storage_uri
        ),
        "find_rollouts(cursor): a deep page": lambda i: store.find_rollouts(
            cursor=encode_cursor(picks[i % n].created_at, picks[i % n].id)
        ),
        "find_rollouts(namespace, name, cursor): a deep page": lambda i: store.find_rollouts(
            namespace=picks[i % n].namespace,
            name=picks[i % n].name,
            cursor=encode_cursor(picks[i % n].created_at, picks[i % n].id),
        ),
        "rollout_records(id): a timeline's first 100": lambda i: store.rollout_records(
            picks[i % n].id
        ),
    }
    for label, call in variants.items():
        say(f"timing {label}")
        samples, _ = _timed(call, queries, budget)
        out.history.append(Stats(label, tuple(samples), TARGETS["history"]))
    once: dict[str, Callable[[], Any]] = {
        "point_in_time": lambda: pit(0),
        "point_in_time_by_model (storageUri)": lambda: by_model(0),
        **{label: _bound(call, 1) for label, call in variants.items()},
    }
    return out, once


def _bound(call: Callable[[int], Any], argument: int) -> Callable[[], Any]:
    return lambda: call(argument)


def _scans(plan: Mapping[str, Any]) -> Iterator[str]:
    """The scans (and sorts) of a plan, outermost first."""
    kind = plan.get("Node Type", "")
    if kind in ("Sort", "Incremental Sort"):
        yield f"{kind} by {', '.join(plan.get('Sort Key', ()))}"
    if "Scan" in kind:
        shown = kind + (" backward" if plan.get("Scan Direction") == "Backward" else "")
        if plan.get("Index Name"):
            shown += f" using {plan['Index Name']}"
        if plan.get("Relation Name"):
            shown += f" on {plan['Relation Name']}"
        yield shown
    for child in plan.get("Plans", ()):
        yield from _scans(child)


def explain(conninfo: str, once: Mapping[str, Callable[[], Any]]) -> dict[str, list[str]]:
    """Each query kind run once, every statement it sent explained: the scans it uses."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(conninfo) as conn:
        for label, call in once.items():
            _WATCH.captured = []
            try:
                call()
                statements = _WATCH.captured
            finally:
                _WATCH.captured = None
            lines = []
            for statement, parameters in statements:
                row = conn.execute(
                    "EXPLAIN (FORMAT JSON) " + statement, parameters or None
                ).fetchone()
                assert row is not None
                plan = row[0][0]["Plan"]
                table = re.search(r"\bFROM (\w+)", statement)
                scans = "; ".join(dict.fromkeys(_scans(plan))) or plan.get("Node Type", "")
                lines.append(f"{table.group(1) if table else '?'}: {scans}")
            out[label] = lines
            conn.rollback()
    return out


def measure_verify(store: AuditStore, say: Callable[[str], None]) -> list[Verified]:
    """The whole chain in one process and, where verify() would use worker processes
    (several CPUs, a chain long enough), with them; then the last 1 % from a checkpoint."""
    runs: list[Verified] = []
    head, _ = store.head()
    workers = default_workers() if head >= PARALLEL_MINIMUM else 1
    for count in sorted({1, workers}):
        say(f"verifying the whole chain ({count} process{'es' if count > 1 else ''})")
        start = time.perf_counter()
        report = store.verify(workers=count)
        label = (
            "verify(): the whole chain, in one process"
            if count == 1
            else f"verify(): the whole chain, {count} worker processes"
        )
        runs.append((label, report.records_checked, time.perf_counter() - start, report.ok,
                     report.problem))  # fmt: skip
    after = max(0, head - max(1, head // 100))
    from_hash = store.records(after_seq=after - 1, limit=1)[0].record_hash if after else None
    start = time.perf_counter()
    report = store.verify(after=(after, from_hash) if from_hash else None)
    label = f"verify(after=(seq, hash)): the last 1 % from seq {after:,}"
    runs.append(
        (label, report.records_checked, time.perf_counter() - start, report.ok, report.problem)
    )
    return runs


def measure_appends(
    store: AuditStore, *, writers: int, seconds: float, after: datetime,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """``writers`` threads, each a rollout committing one decision per commit (an
    ``analysis.evaluated`` record with three measurements, and its rollout's new state) for
    ``seconds``: the engine's ``commit([entry], fence=..., rollout=..., expected_version=...)``."""
    say(f"timing appends: {writers} writers for {seconds:g} s")
    holder = f"bench-{os.getpid()}"
    epoch = int(time.time())
    store.claim_epoch(LEASE, holder, epoch, after)
    fence = Fence(LEASE, holder, epoch)
    run = f"{epoch % 10**8:08d}"
    barrier = threading.Barrier(writers + 1)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    counts: list[Counter[str]] = [Counter() for _ in range(writers)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        try:
            plan = Plan(service=100_000 + i, index=0, rollout_id=str(uuid.uuid4()),
                        start=0, policy=2, rounds=(10,) * 3, checks=3, webhook=True, gate=None,
                        wait=0, fail=None, canary=2, stable=1, started_by=None)  # fmt: skip
            name = f"w{run}-{i}"
            base = int((after - EPOCH).total_seconds() * US)
            started = (base, "rollout.started", 0, "", 0)
            obj = ObjectRef(WRITERS_NAMESPACE, name, str(uuid.uuid4()), 1, "1")

            def entry(ev: Event) -> AuditEntry:
                return replace(build_entry(plan, ev), obj=obj)

            row = RolloutRow(
                id=plan.rollout_id, namespace=WRITERS_NAMESPACE, name=name, isvc_uid=obj.uid,
                policy_name="careful", mode="knative", phase="Progressing", step_index=0,
                canary_revision=revision_of(plan.service, 2),
                stable_revision=revision_of(plan.service, 1),
                state=state_document(plan, [started, (base, "traffic.shifted", 0, "", 0)]),
                created_at=after, updated_at=after, next_check_at=after, active=True,
            )  # fmt: skip
            store.commit([entry(started)], fence=fence, rollout=row)
            version = 1
            barrier.wait()
            round_ = 0
            while not stop.is_set():
                round_ += 1
                at_us = base + round_ * 1000 + i
                at = EPOCH + timedelta(microseconds=at_us)
                decision = entry((at_us, "analysis.evaluated", 0, "Successful", round_))
                current = replace(row, updated_at=at, next_check_at=at + timedelta(seconds=30))
                _WATCH.counts = counts[i]
                start = time.perf_counter()
                store.commit([decision], fence=fence, rollout=current, expected_version=version)
                latencies[i].append(time.perf_counter() - start)
                _WATCH.counts = None
                version += 1
            end_us = base + (round_ + 1) * 1000 + i
            at = EPOCH + timedelta(microseconds=end_us)
            done = replace(row, phase="Succeeded", updated_at=at, next_check_at=None, active=False)
            store.commit([entry((end_us, "promoted", 3, "", 0))], fence=fence,
                         rollout=done, expected_version=version)  # fmt: skip
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            stop.set()
            if not barrier.broken:
                barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,), name=f"writer-{i}")
               for i in range(writers)]  # fmt: skip
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    batches_before, requests_before = store._group.batches, store._group.requests
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    grouped = (store._group.batches - batches_before, store._group.requests - requests_before)
    samples = [x for per in latencies for x in per]
    total: Counter[str] = Counter()
    for per in counts:
        total.update(per)
    commits = len(samples)
    return {
        "writers": writers,
        "commits": commits,
        "seconds": elapsed,
        "records_per_second": commits / elapsed,
        "latency": Stats("commit([entry], fence, rollout, expected_version)", tuple(samples)),
        "round_trips": {k: v / commits for k, v in sorted(total.items())} if commits else {},
        # commits per transaction (each writer's first and last commits are outside the
        # timed window; their transactions are counted here too, a negligible difference)
        "per_transaction": grouped[1] / grouped[0] if grouped[0] else 0.0,
    }


def _sizes(database: RoleDatabase) -> tuple[dict[str, int], str, int]:
    with psycopg.connect(database.admin_conninfo) as conn:
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        assert total is not None
        sizes = {"database": int(total[0])}
        for table in _LOADED_TABLES:
            row = conn.execute(
                "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)",
                [table, table],
            ).fetchone()
            assert row is not None
            sizes[f"{table} (table)"], sizes[f"{table} (indexes)"] = row
        version = conn.execute("SHOW server_version").fetchone()
        head = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_log").fetchone()
    assert version is not None
    assert head is not None
    return sizes, str(version[0]), int(head[0])


# --------------------------------------------------------------------------------------------
# the results
# --------------------------------------------------------------------------------------------


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value} B"
        value /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def _met(value: float, target: float) -> str:
    return "met" if value >= target else "**missed**"


def _migration_row(migration: Mapping[str, Any], *, this_run: bool) -> str:
    """A data-set table row: the cached database migrated (see :func:`_migrate`)."""
    seconds = migration["seconds"]
    when = "by this run" if this_run else "by an earlier run"
    in_sync = "no difference" if migration["schema_in_sync"] else "**differences found**"
    return (
        f"| schema migrated | {migration['from']} to {migration['to']} as the owner role, "
        f"{when} on {migration['on']}: {seconds['migration']:.0f} s (load average "
        f"{migration['load_average']:.1f} when it began), then `VACUUM (ANALYZE) rollouts` "
        f"{seconds['vacuum and analyze']:.0f} s; schema compared with the models "
        f"afterwards: {in_sync} |"
    )


SECTIONS: Final = (
    "## Machine",
    "## Data set",
    "## Appends",
    "## Point-in-time queries",
    "## History",
    "## Verification",
    "## Query plans",
)


def report(
    *, command: str, prepared: Prepared, measured: Measured, load_average: float,
    elapsed: float,
) -> str:  # fmt: skip
    g = prepared.generated
    full = g.records >= 10_000_000
    today = datetime.now(UTC).date().isoformat()
    lines = [
        "# Audit trail benchmark",
        "",
        f"`{command}`, {today}, {elapsed:.0f} s in all. Issue #15 §8's targets are for 10 "
        "million records across 1,000 InferenceServices.",
    ]
    if not full:
        lines += [
            "",
            f"**Small-scale run: {g.records:,} records across {g.services:,} "
            "InferenceServices, not the 10 million of the targets.** Its figures say that "
            "the harness works and how the queries behave on a small database; they are not "
            "the issue's figures.",
        ]
    settings = ", ".join(f"{k} = {v}" for k, v in MEASURE_SETTINGS.items())
    lines += [
        "",
        "## Machine",
        "",
        f"- {os.cpu_count()} cores ({_cpu()}), {_memory()}; load average {load_average:.1f} "
        "when the run began (the CPU is shared with other jobs)",
        f"- PostgreSQL {measured.server_version}: the test bed's private server "
        f"(`testbed.postgres`) on loopback TCP, measured with {settings} (defaults otherwise)",
        f"- Python {platform.python_version()}, psycopg {psycopg.__version__}; the store "
        "opened as the controller opens it (`AuditStore.from_url`), as the application "
        f"role `{prepared.database.app}`",
        "",
        "## Data set",
        "",
        "| | |",
        "|---|---|",
        f"| audit records | {g.records:,} generated"
        + (
            f", {measured.head - g.records:,} appended by this and earlier runs' append "
            f"measurements ({measured.head:,} in all)"
            if measured.head > g.records
            else ""
        )
        + " |",
        f"| InferenceServices | {g.services:,} in {min(g.services, NAMESPACES)} namespaces |",
        f"| rollouts (rows in `rollouts`) | {g.rollouts:,}, {g.active_rollouts:,} still in "
        "flight at the end |",
        f"| approvals (rows in `approvals`) | {g.approvals:,} |",
        f"| measurements (rows in `measurements`) | {g.measurements:,} |",
        f"| time span | {g.first_at} to {g.last_at} |",
    ]
    for i, migration in enumerate(g.migrations, 1):  # this run's, if any, is the last
        this_run = prepared.migrated and i == len(g.migrations)
        lines.append(_migration_row(migration, this_run=this_run))
    for label, value in measured.sizes.items():
        lines.append(f"| size: {label} | {_size(value)} |")
    lines += [
        "",
        "Records by action: "
        + ", ".join(f"`{action}` {count:,}" for action, count in g.actions.items())
        + ".",
        "",
        "Generated by `bench/audit.py` (its docstring says how the rollouts are shaped): the "
        "product's `entry_body`, `canonical_json`, `projection`, `measurement_rows` and "
        "`compute_record_hash` for every record, bodies rendered by "
        f"{g.workers} processes a day of the trail at a time, hashed in order by one, loaded "
        "with COPY into tables without their keys and indexes, which were rebuilt after as "
        "the migrations define them (schema compared with the models afterwards: "
        + ("no difference" if g.schema_in_sync else "**differences found**")
        + f"). Generation took {g.seconds['total']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in g.seconds.items() if k != "total")
        + f") on {g.cpu or 'this machine'}, load average {g.load_average:.1f} when it began"
        + (
            f"; this run reused the database generated on {g.generated_on} from the cache "
            f"(`{prepared.directory}`)."
            if prepared.cached
            else f"; kept in `{prepared.directory}` for the next run."
        ),
    ]
    if measured.append:
        first = measured.append[0]
        lines += [
            "",
            "## Appends",
            "",
            "Concurrent rollouts (writers), each committing one decision per "
            "commit as the engine does (`commit([entry], fence=..., rollout=..., "
            "expected_version=...)`: an `analysis.evaluated` record with three measurements "
            f"and the rollout's new state), for {first['seconds']:.0f} s; the store opened "
            "as the controller opens it (a 5 s deadline per call), one store for all the "
            "writers as in the controller, whose group commit lets the commits that arrive "
            "while a transaction runs share the next one (each caller still returns only once "
            "its own decision is committed). Durable: the server "
            "commits as production does (WAL flushed to disk at each commit); durability off: "
            "the same database on a server as the test bed runs it (fsync and "
            "synchronous_commit off), which shows what the flush costs.",
            "",
            "| server | writers | commits | records/s | target | commits per transaction "
            "| round trips per commit |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in measured.append:
            trips = run["round_trips"]
            rate = run["records_per_second"]
            lines.append(
                f"| {'durable' if run['durable'] else 'durability off'} | {run['writers']} | "
                f"{run['commits']:,} | {rate:,.0f} | >= 2,000: {_met(rate, TARGETS['append'])} "
                f"| {run.get('per_transaction', 1.0):.1f} | {sum(trips.values()):.1f} ("
                + ", ".join(f"{k} {v:.1f}" for k, v in trips.items())
                + ") |"
            )
        lines += ["", _TABLE_HEAD]
        for run in measured.append:
            latency = run["latency"]
            where = "durable" if run["durable"] else "durability off"
            label = f"{latency.label}, {run['writers']} writers, {where}"
            lines.append(replace(latency, label=label).row())
    answers = ", ".join(f"{k} {v:,}" for k, v in sorted(measured.knowledge.items()))
    lines += [
        "",
        "## Point-in-time queries",
        "",
        "Services and instants drawn from the rollouts (half the instants inside a sampled "
        "rollout, most of them mid-canary; half at random over the trail's span). "
        f"Answers: {answers}.",
        "",
        _TABLE_HEAD,
        *(s.row() for s in measured.point_in_time),
        "",
        "## History",
        "",
        "`find_rollouts` pages of 50 with each filter, a page after a cursor from the middle "
        "of the history (keyset), and a rollout's first 100 records.",
        "",
        _TABLE_HEAD,
        *(s.row() for s in measured.history),
        "",
        "## Verification",
        "",
        "| check | records | seconds | records/s | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for label, checked, seconds, ok, problem in measured.verify:
        rate = checked / seconds if seconds else 0.0
        verdict = "chain verified: ok" if ok else f"**failed**: {problem}"
        lines.append(
            f"| {label} | {checked:,} | {seconds:.1f} | {rate:,.0f} | >= 100,000/s: "
            f"{_met(rate, TARGETS['verify'])} | {verdict} |"
        )
    lines += [
        "",
        "## Query plans",
        "",
        "Each query run once more, every statement it sent explained (`EXPLAIN`, as the "
        "application role): the table it reads and the scans of its plan.",
    ]
    for label, statements in measured.plans.items():
        lines += ["", f"**{label}**", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(statements, 1)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"[bench-audit {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _counts(text: str) -> tuple[int, ...]:
    """``--writers``: positive whole numbers separated by commas."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"each count must be at least 1: {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--writers", type=_counts, default=(1, 8, 64),
                        help="concurrent appending rollouts, one run each: 1,8,64")  # fmt: skip
    parser.add_argument("--append-seconds", type=float, default=30.0)
    parser.add_argument("--queries", type=int, default=1000, help="timed calls per query kind")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds at most per query kind (at least 10 calls)")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=default_cache())
    parser.add_argument("--fresh", action="store_true", help="regenerate even if cached")
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit.md"))
    options = parser.parse_args(argv)
    if options.records < 1000 or options.services < 1 or options.records < options.services:
        parser.error("--records must be at least 1,000 and at least --services")
    command = "python -m bench.audit " + " ".join(argv if argv is not None else sys.argv[1:])
    if argv is None and options.records == 10_000_000 and options.services == 1000:
        command = f"make bench-audit ({command.strip()})"
    began = time.monotonic()
    load = os.getloadavg()[0]
    _listen()
    prepared = prepare(
        options.cache_dir, records=options.records, services=options.services,
        seed=options.seed, workers=options.workers, fresh=options.fresh, say=_say,
    )  # fmt: skip
    server = prepared.server
    try:
        database = prepared.database
        measured = Measured()
        # Read as the CLI and the auditor API read (no call deadline: a whole-chain verify
        # is one long call); append as the controller does (its default 5 s deadline).
        with AuditStore.from_url(database.app_url) as reader:
            measured.verify = measure_verify(reader, _say)
            queries, once = measure_queries(
                reader, database, queries=options.queries, budget=options.budget,
                seed=options.seed, say=_say,
            )  # fmt: skip
            measured.point_in_time = queries.point_in_time
            measured.knowledge = queries.knowledge
            measured.history = queries.history
            measured.plans = explain(
                f"host=127.0.0.1 port={server.port} user={database.app} dbname={database.name}",
                once,
            )
        _first, last = _span(database)
        after = max(last, datetime.now(UTC)) + timedelta(days=1)
        for durable in (True, False):
            if not durable:  # the same database on a server as the test bed runs it
                server.stop()
                server = PostgresServer(prepared.directory / "pgdata", settings=FAST_SETTINGS)
                server.start()
                database = _roles(server)
                after += timedelta(days=1)
            for writers in options.writers:
                after += timedelta(hours=1)
                with AuditStore.from_url(database.app_url, timeout=5.0) as writer:
                    run = measure_appends(
                        writer, writers=writers, seconds=options.append_seconds,
                        after=after, say=_say,
                    )  # fmt: skip
                run["durable"] = durable
                measured.append.append(run)
        measured.sizes, measured.server_version, measured.head = _sizes(database)
    finally:
        server.stop()
    text = report(command=command.strip(), prepared=prepared, measured=measured,
                  load_average=load, elapsed=time.monotonic() - began)  # fmt: skip
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
