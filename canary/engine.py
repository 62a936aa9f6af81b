"""The rollout engine: one reconcile of one InferenceService.

``load -> observe -> machine.step -> audit intent -> act -> audit outcome``

* **State lives in the database.** A rollout's document (machine state, the policy pinned
  when it started, traffic intents not yet applied, analysis memory) is the ``state`` column
  of its ``rollouts`` row, written in the same transaction as the audit records.
* **Audit before acting.** Every traffic change is preceded by a committed
  ``traffic.intent`` record (fenced by the leader epoch, in the same transaction as the new
  state) and followed by a ``traffic.applied`` / ``traffic.failed`` outcome with the same
  correlation id. An intent without an outcome is an outbox entry: the next reconcile, on
  this leader or the next one, carries it out (the writes are idempotent).
* **Only the leader acts.** Every commit is fenced by the leader's epoch; a deposed leader's
  commit fails with ``FencedOut`` before it can touch the cluster.
* The engine never sleeps and takes its clock as a parameter; the controller loop
  (``canary.controller``) decides when to call it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from approvals.gate import Outcome as ApprovalOutcome
from approvals.gate import kubernetes_decision
from canary import aftercare, machine
from canary.analysis_worker import AnalysisRunner
from canary.annotations import AnnotationError, OptIn, parse_annotations
from canary.approval_flow import (
    close_row,
    decision_actor,
    decision_evidence,
    decision_json,
    name_row,
    observations,
    pending_of,
    request_row,
    violations_json,
)
from canary.audit import (
    MANUAL_LINKED,
    MANUAL_REQUESTED,
    MANUAL_SETTLED,
    Actor,
    ApprovalRow,
    AuditEntry,
    AuditStore,
    CommandRow,
    CommandState,
    Fence,
    ModelRef,
    ObjectRef,
)
from canary.challengers import challenger_problem, challenger_view, passed_shadow
from canary.document import DOCUMENT_VERSION, RolloutDocument, mode_of
from canary.entries import Entries, model_ref, object_ref
from canary.evaluation import AnalysisAdapter, KeptLooks, Looked, RolloutAnalyzer
from canary.execution import Pending, carry_out
from canary.k8s.client import INFERENCE_SERVICE, Conflict, KubeClient, NotFound
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.mirroring import MirrorKeeper, mirroring
from canary.model import (
    Action,
    ApprovalDecision,
    ChallengerGone,
    CloseChange,
    CommandKind,
    EmitEvent,
    EventReason,
    ManualCommand,
    Observation,
    Phase,
    RecordAudit,
    RejectCommand,
    RequestApproval,
    Revision,
    RolloutState,
    ServiceDeleted,
    ServiceObserved,
    SetMirror,
    SetTraffic,
    WriteRejected,
)
from canary.policy import (
    ApprovalGateKind,
    PolicyError,
    PolicySet,
    RolloutPolicy,
    format_duration,
)
from canary.routing.base import Observed, TrafficRouter
from canary.routing.mirror import MirrorRouter

__all__ = [
    "DOCUMENT_VERSION",
    "Engine",
    "EventSink",
    "Metrics",
    "NotLeader",
    "Pending",
    "RolloutAnalyzer",
    "RolloutDocument",
    "mode_of",
]

log = get_logger("canary.engine")


class NotLeader(Exception):
    """This replica is not (or no longer) the leader: it must not act."""


class Metrics(Protocol):
    """The part of ``canary.metrics.ControllerMetrics`` the engine feeds."""

    def set_weight(self, namespace: str, name: str, percent: int) -> None: ...
    def forget(self, namespace: str, name: str) -> None: ...
    def record_analysis(self, check: str, outcome: str) -> None: ...
    def record_rollback(self, kind: str) -> None: ...
    def observe_step_duration(self, seconds: float) -> None: ...
    def record_kube_write_retry(self) -> None: ...


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------


@dataclass
class _Pass:
    """What one reconcile accumulates before it commits."""

    before: RolloutState | None = None  # the state before the step (None: a new rollout)
    entries: list[AuditEntry] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    rejected: RejectCommand | None = None
    pending: tuple[Pending, ...] = ()  # a new intent replaces any older one not carried out
    approvals: list[ApprovalRow] = field(default_factory=list)  # requests and close requests


class Engine:
    """Drives rollouts. Call :meth:`reconcile` whenever an InferenceService changed or a
    rollout's timer fired, and :meth:`run_command` for each queued manual command."""

    def __init__(
        self,
        *,
        store: AuditStore,
        kube: KubeClient,
        routers: Mapping[str, TrafficRouter],
        policies: Callable[[], PolicySet],
        leadership: Callable[[], Fence | None],
        clock: Callable[[], datetime],
        instance: str,
        analyzer: RolloutAnalyzer | None = None,
        events: EventSink | None = None,
        metrics: Metrics | None = None,
        prometheus_url: str = "",
        default_metric_profile: str = "knative-otel",
        standard_metric_profile: str = "istio",
        metrics_delay: timedelta = timedelta(seconds=60),
        analysis_runner: AnalysisRunner | None = None,
        mirror: MirrorRouter | None = None,
        mirror_namespaces: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._mirrors = MirrorKeeper(mirror, namespaces=tuple(mirror_namespaces))
        self._kube = kube
        self._routers = routers
        self._policies = policies
        self._leadership = leadership
        self._clock = clock
        self._instance = instance
        self._entries = Entries(instance, leadership)
        self._events = events
        self._metrics = metrics
        self._default_profiles = {
            "knative": default_metric_profile,
            "standard": standard_metric_profile,
        }
        self._analysis = AnalysisAdapter(
            analyzer,
            runner=analysis_runner,
            entries=self._entries,
            metrics=metrics,
            prometheus_url=prometheus_url,
            metrics_delay=metrics_delay,
        )
        self._kept = KeptLooks()  # looks' evidence not yet written (canary.evaluation)
        # Problems already reported per object, so a bad annotation is reported once per
        # (uid, generation), not on every resync. Lost on restart: then reported once more.
        self._reported: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ public entry points

    def reconcile(self, namespace: str, name: str) -> datetime | None:
        """Bring one InferenceService's rollout up to date. Returns when to call again."""
        fence = self._fence()
        row = self._store.rollout_for(namespace, name)
        isvc = self._get(namespace, name)
        if row is not None:
            doc = self._kept.overlay(row.id, RolloutDocument.from_row(row))
            doc = self._advance(fence, row.id, doc, isvc)
            if not doc.state.terminal or doc.pending:
                return doc.wake_at()
            # A newer model replaced it, or a challenger's shadow passed and gates its
            # canary: look again at once (start the next rollout, write its model).
            passed = doc.state.challenger is not None and doc.state.phase is Phase.SUCCEEDED
            if doc.state.phase is not Phase.SUPERSEDED and not passed:
                return None
            isvc = self._get(namespace, name)
        if isvc is None:
            self._reported.pop((namespace, name), None)
            return None
        watched = self._aftercare(fence, isvc)  # a finished rollout's service
        if watched is not None and watched.pending:
            return watched.wake_at()
        started = self._maybe_start(fence, isvc)
        return started.wake_at() if started is not None else None

    def stop_leading(self) -> None:
        """This replica no longer leads: what it kept in memory of the rollouts' looks is
        another leader's to read again (from the rows and Prometheus)."""
        self._kept.clear()

    def run_command(self, command: CommandRow) -> tuple[CommandState, str]:
        """Carry out a queued manual command and settle it; returns (state, result)."""
        fence = self._fence()
        now = self._clock()
        if command.command == "start":
            return self._start_command(fence, command, now)
        if command.command in ("approve", "reject"):
            return self._decide_command(fence, command, now)
        try:
            kind = CommandKind(command.command)
        except ValueError:
            why = f"unknown command {command.command!r}"
            return self._settle(fence, command, "rejected", why, now)
        row = self._store.rollout_for(command.namespace, command.name)
        if row is None:
            last = self._store.last_rollout_for(command.namespace, command.name)
            why = f"no active rollout for {command.namespace}/{command.name}" + (
                f" (the last one ended {last.phase})" if last is not None else ""
            )
            return self._refuse_command(fence, command, why, now)
        doc = self._kept.overlay(row.id, RolloutDocument.from_row(row))
        isvc = self._get(command.namespace, command.name)
        observed = self._observe(doc.mode, isvc) if isvc is not None else None
        obs: Observation = ManualCommand(kind, command.actor, command.reason)
        doc, work = self._step(doc, obs, now)
        # the machine knows the person by name; the record keeps what the apiserver said
        work.entries = [
            replace(e, actor=command.who)
            if e.actor.kind == "human" and e.actor.id == command.actor
            else e
            for e in work.entries
        ]
        state: CommandState = "rejected" if work.rejected is not None else "accepted"
        result = work.rejected.reason if work.rejected is not None else _accepted(kind, doc)
        self._commit_and_act(
            fence, row.id, doc, work, observed, now, command=(command.id, state, result, now)
        )
        return state, result

    def _decide_command(
        self, fence: Fence, command: CommandRow, now: datetime
    ) -> tuple[CommandState, str]:
        """``canary approve|reject``: the Kubernetes gate. RBAC allowed the caller to decide
        (the operator API checked the ``approve`` verb); here the policy's rules apply: an
        approval counts only from a member of the risk-owner group (the groups the
        apiserver gave for the caller) who did not start the rollout, before the deadline."""
        approved = command.command == "approve"
        row = self._store.rollout_for(command.namespace, command.name)
        target = f"{command.namespace}/{command.name}"
        if row is None:
            return self._refuse_command(fence, command, f"no active rollout for {target}", now)
        doc = RolloutDocument.from_row(row)
        state, policy = doc.state, doc.policy
        approval = state.approval
        if policy.approval.gate is not ApprovalGateKind.KUBERNETES:
            gate = policy.approval.gate.value
            why = (
                f"{target} is under policy {policy.name}, whose approvals go through the "
                f"{gate} gate, not `canary {command.command}`"
            )
            return self._refuse_command(fence, command, why, now, rollout_id=row.id)
        if approval is None or approval.status != "pending":
            why = f"{target} is not awaiting approval (phase {state.phase.value})"
            if approval is not None:
                why += f"; its approval is {approval.status}"
            return self._refuse_command(fence, command, why, now, rollout_id=row.id)
        stored = self._store.get_approval(row.id, state.canary.name, approval.step_index)
        if stored is None:
            why = f"{target}: the approval request is not recorded yet; try again"
            return self._refuse_command(fence, command, why, now, rollout_id=row.id)
        decision = kubernetes_decision(
            approved=approved,
            user=command.actor,
            groups=command.actor_groups,
            risk_owner_group=policy.approval.risk_owner_group or "",
            requesters=stored.requesters,
            window=pending_of(stored).window,
            comment=command.reason,
            now=now,
        )
        isvc = self._get(command.namespace, command.name)
        observed = self._observe(doc.mode, isvc) if isvc is not None else None
        if decision.outcome is ApprovalOutcome.REFUSED:
            entry = self._entries.entry(
                doc,
                now,
                action="approval.refused",
                reason=decision.reason,
                observed=observed,
                actor=command.who,
                evidence={
                    "gate": "kubernetes",
                    "violations": violations_json(decision.violations),
                    "comment": command.reason,
                    "command_id": command.id,
                    "revision": state.canary.name,
                },
            )
            self._store.commit(
                [entry], fence=fence, command=(command.id, "rejected", decision.reason, now)
            )
            refusal = EmitEvent(
                EventReason.APPROVAL_REFUSED,
                f"approval by {command.actor} does not count: {decision.reason}",
                "Warning",
            )
            self._emit(_reference(doc, observed), refusal)
            return "rejected", decision.reason
        record = decision_json(decision, "kubernetes") | {
            "command_id": command.id,
            "groups": list(command.actor_groups),
            "uid": command.actor_uid,
        }
        found = ApprovalDecision(
            approved, state.canary.name, command.actor, now, None, command.reason
        )
        doc, work = self._step(doc, found, now)
        closing = next((a for a in work.approvals if a.id == stored.id), stored)
        decided = replace(
            closing,
            state="approved" if approved else "rejected",
            approver=command.actor,
            decided_at=now,
            decision=record,
        )
        work.approvals = [a for a in work.approvals if a.id != stored.id] + [decided]
        work.entries = [
            replace(e, actor=command.who, evidence={**e.evidence, **decision_evidence(decided)})
            if e.action in _DECISION_RECORDS
            else e
            for e in work.entries
        ]  # decision_evidence names the row: these records carry it as stored
        verb = "approved" if approved else "rejected"
        result = f"{target}: {state.canary.name} {verb} by {command.actor}" + (
            "; the promotion proceeds" if approved else "; rolling back"
        )
        self._commit_and_act(
            fence, row.id, doc, work, observed, now, command=(command.id, "accepted", result, now)
        )
        return "accepted", result

    def _refuse_command(
        self,
        fence: Fence,
        command: CommandRow,
        why: str,
        now: datetime,
        *,
        rollout_id: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> tuple[CommandState, str]:
        """Settle a command the leader refuses, with its ``manual.rejected`` record."""
        entry = AuditEntry(
            at=now,
            actor=command.who,
            action="manual.rejected",
            rollout_id=rollout_id,
            obj=ObjectRef(command.namespace, command.name),
            reason=why,
            evidence={"command": command.command, "reason": command.reason, **(evidence or {})},
            leader_epoch=fence.epoch,
        )
        self._store.commit([entry], fence=fence, command=(command.id, "rejected", why, now))
        return "rejected", why

    def active_keys(self) -> list[tuple[str, str, datetime | None]]:
        """Every active rollout and when it wants to be looked at (for the scheduler)."""
        return self._store.active_schedule()

    # ------------------------------------------------------------------ rollouts in flight

    def _advance(
        self, fence: Fence, rollout_id: str, doc: RolloutDocument, isvc: dict[str, Any] | None
    ) -> RolloutDocument:
        now = self._clock()
        uid = ((isvc or {}).get("metadata") or {}).get("uid")
        if isvc is None or uid != doc.uid:
            doc, work = self._step(doc, ServiceDeleted(), now)
            doc = self._commit_and_act(fence, rollout_id, doc, work, None, now)
            return self._keep_mirror(fence, rollout_id, doc, None, None)
        observed = self._observe(doc.mode, isvc)
        if doc.pending:
            doc = self._drain(fence, rollout_id, doc, observed, claimed=False)
            isvc = self._get(doc.state.namespace, doc.state.name)
            if isvc is None:
                return self._advance(fence, rollout_id, doc, None)
            observed = self._observe(doc.mode, isvc)
        doc = self._take_approval(fence, rollout_id, doc, observed, now)
        opted_out = aftercare.opted_out(isvc, doc.state, observed.view.latest.name)
        if opted_out is not None:  # the owner opted out mid-rollout
            doc, work = self._step(doc, opted_out, now)
            doc = self._commit_and_act(fence, rollout_id, doc, work, observed, now)
            return self._keep_mirror(fence, rollout_id, doc, isvc, observed)
        seen: Observation = ServiceObserved(observed.view)
        if doc.state.challenger is not None:
            seen = self._challenger_observation(doc, isvc, observed)
        doc, work = self._step(doc, seen, now)
        doc = self._commit_and_act(fence, rollout_id, doc, work, observed, now)
        due = self._analysis.due(doc, now)
        if due is not None:
            doc = self._analyse(fence, rollout_id, doc, observed, now, fast=due == "look")
        return self._keep_mirror(fence, rollout_id, doc, isvc, observed)

    def _take_approval(
        self,
        fence: Fence,
        rollout_id: str,
        doc: RolloutDocument,
        observed: Observed,
        now: datetime,
    ) -> RolloutDocument:
        """Hand the machine what the approval worker found: the change it opened, the
        decision it verified with the change system (canary.approval_flow)."""
        approval = doc.state.approval
        if approval is None or approval.status != "pending":
            return doc
        row = self._store.get_approval(rollout_id, doc.state.canary.name, approval.step_index)
        for found in observations(doc.state, row):
            assert row is not None
            doc, work = self._step(doc, found, now)
            work.entries = [_with_decision(e, row) for e in work.entries]
            doc = self._commit_and_act(fence, rollout_id, doc, work, observed, now)
        return doc

    def _approval_row(self, state: RolloutState, work: _Pass) -> ApprovalRow | None:
        """The row of the machine's current approval (written in this pass, or stored)."""
        if state.approval is None:
            return None
        for row in work.approvals:
            if (row.revision, row.step_index) == (state.canary.name, state.approval.step_index):
                return row
        return self._store.get_approval(
            state.rollout_id, state.canary.name, state.approval.step_index
        )

    def _aftercare(self, fence: Fence, isvc: dict[str, Any]) -> RolloutDocument | None:
        """Keep watching the service of a rollout that ended (canary.aftercare); returns
        the finished rollout's document when it was looked at."""
        meta = isvc.get("metadata") or {}
        last = self._store.last_rollout_for(str(meta.get("namespace")), str(meta.get("name")))
        if last is None or last.active or last.isvc_uid != meta.get("uid"):
            return None
        doc = RolloutDocument.from_row(last)
        if not aftercare.watching(isvc, doc.state):
            return None
        observed = self._observe(doc.mode, isvc)
        now = self._clock()
        who = aftercare.field_manager(isvc, aftercare.traffic_fields(doc.mode))
        state, actions = aftercare.watch(doc.state, observed.view, doc.policy, doc.mode, who, now)
        if not actions:
            return doc
        work = self._collect(replace(doc, state=state), actions)
        work.before = doc.state
        doc = replace(doc, state=state)
        return self._commit_and_act(fence, last.id, doc, work, observed, now)

    def _analyse(
        self,
        fence: Fence,
        rollout_id: str,
        doc: RolloutDocument,
        observed: Observed,
        now: datetime,
        *,
        fast: bool = False,
    ) -> RolloutDocument:
        outcome = self._analysis.run(rollout_id, doc, observed, now, fast=fast)
        if outcome is None:
            return doc  # the look runs on its own thread; its answer queues us again
        if isinstance(outcome, Looked):
            if outcome.material:
                return self._save(fence, rollout_id, outcome.doc, now)
            # Nothing decided: the look's evidence is kept in memory, and written with the
            # rollout's next commit (canary.evaluation).
            self._kept.keep(rollout_id, outcome.doc)
            return outcome.doc
        doc, work = self._step(outcome.doc, outcome.verdict, now)
        work.entries.insert(0, outcome.entry)
        return self._commit_and_act(fence, rollout_id, doc, work, observed, now)

    # ------------------------------------------------------------------ starting rollouts

    def _maybe_start(self, fence: Fence, isvc: dict[str, Any]) -> RolloutDocument | None:
        meta = isvc.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        annotations = meta.get("annotations") or {}
        try:
            opt_in = parse_annotations(annotations)
        except AnnotationError as exc:
            self._invalid(fence, isvc, f"malformed kserve-canary annotation: {exc}")
            return None
        if not opt_in.enabled:
            return None
        try:
            policy = self._policies().get(opt_in.policy)
        except (KeyError, PolicyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            self._invalid(fence, isvc, f"policy {opt_in.policy!r}: {message}")
            return None
        mode = mode_of(isvc)
        observed = self._observe(mode, isvc)
        view = observed.view
        if not view.latest.name:
            # KServe has not named the newest revision yet (its status comes after the
            # spec): the status update that names it is the next observation.
            return None
        if view.stable is None or _same(mode, view.latest, view.stable):
            if opt_in.challenger is not None and view.stable is not None:
                return self._maybe_shadow(fence, isvc, opt_in, policy, mode, observed)
            return None
        last = self._store.last_rollout_for(namespace, name)
        if last is not None and last.isvc_uid == observed.uid:
            previous = RolloutDocument.from_row(last).state.canary
            if _same(mode, previous, view.latest):
                return None  # this revision already had its rollout
        shadowed = self._shadowed(observed)
        refusal = None if shadowed is not None else self._shadow_refusal(policy, mode)
        if refusal is not None:
            self._invalid(fence, isvc, refusal)
            return None
        self._reported.pop((namespace, name), None)
        if view.stable.storage_uri is None and last is not None:
            # Knative status names the stable revision but not its model: take it from the
            # rollout that made it stable, so the audit trail has the old storageUri too.
            known = RolloutDocument.from_row(last).state
            for revision in (known.canary, known.stable):
                if revision is not None and revision.name == view.stable.name:
                    view = replace(view, stable=revision)
                    break
        now = self._clock()
        rollout_id = str(uuid.uuid4())
        state, actions = machine.start(
            rollout_id, namespace, name, view, policy, now,
            shadowed_by=shadowed.state.rollout_id if shadowed is not None else None,
        )  # fmt: skip
        assert state.stable is not None
        starter = self._store.starter(namespace, name, view.latest.storage_uri)
        started_by, link = self._started_by(starter, namespace, name, view.latest.storage_uri)
        if started_by is not None:
            state = replace(state, started_by=started_by)
        doc = RolloutDocument(
            state=state,
            policy=policy,
            mode=mode,
            uid=observed.uid,
            metric_profile=self._profile(opt_in.metric_profile, policy, mode),
        )
        work = self._collect(doc, actions)
        work.entries = [
            replace(e, evidence={**e.evidence, "started_by": started_by, **link})
            if e.action == "rollout.started"
            else e
            for e in work.entries
        ]
        if starter is not None:
            work.entries.append(
                self._entries.entry(
                    doc,
                    now,
                    action=MANUAL_LINKED,
                    reason=f"rollout {rollout_id} of {view.latest.name} started for the model "
                    f"that {started_by}'s start command {starter.id} set",
                    evidence={**link, "rollout_id": rollout_id},
                    correlation_id=starter.id,
                )
            )
        log.info(
            "rollout.started",
            namespace=namespace,
            name=name,
            revision=state.canary.name,
            stable=state.stable.name if state.stable else None,
            policy=policy.name,
        )
        return self._commit_and_act(fence, rollout_id, doc, work, observed, now, new=True)

    def _started_by(
        self, starter: CommandRow | None, namespace: str, name: str, storage_uri: str | None
    ) -> tuple[str | None, dict[str, Any]]:
        """Who started the rollout of ``storage_uri``, and the records that say so: the
        ``start`` command that set the model (its chained ``manual.requested`` record names
        the person; the row only for a command queued before commands were chained), or
        else the admitted update that did (``model.change_admitted``)."""
        if starter is not None:
            chained = self._store.command_records(starter)
            requested = chained.get(MANUAL_REQUESTED)
            settled = chained.get(MANUAL_SETTLED)
            who = requested.entry.actor.id if requested is not None else starter.actor
            return who, {
                "command_id": starter.id,
                "command_requested_seq": requested.seq if requested is not None else None,
                "command_settled_seq": settled.seq if settled is not None else None,
            }
        admitted = self._store.model_change_record(namespace, name, storage_uri)
        if admitted is None or admitted.entry.actor.kind == "unknown":
            return None, {}
        return admitted.entry.actor.id, {"model_change_seq": admitted.seq}

    # ------------------------------------------------------------------ challengers

    def _shadowed(self, observed: Observed) -> RolloutDocument | None:
        """The challenger rollout whose passing shadow gated the champion's new model, if
        the new model is that challenger's."""
        latest = observed.view.latest.storage_uri or observed.storage_uri
        rows = self._store.rollouts(namespace=observed.namespace, name=observed.name, limit=20)
        docs = [RolloutDocument.from_row(r) for r in rows if r.isvc_uid == observed.uid]
        return passed_shadow(docs, latest)

    def _maybe_shadow(
        self,
        fence: Fence,
        isvc: dict[str, Any],
        opt_in: OptIn,
        policy: RolloutPolicy,
        mode: Literal["knative", "standard"],
        observed: Observed,
    ) -> RolloutDocument | None:
        """The champion is stable and names a challenger: compare the challenger's newest
        model in shadow, unless it already was (then, after a passing comparison that
        gates, write its model onto the champion, once)."""
        namespace, name = observed.namespace, observed.name
        challenger = opt_in.challenger
        assert challenger is not None
        other = self._get(namespace, challenger) if challenger != name else None
        problem = challenger_problem(
            name,
            challenger,
            shadow_enabled=policy.shadow.enabled,
            policy=policy.name,
            mirroring=self._mirrors.router is not None,
            champion_mode=mode,
            challenger_obj=other,
            challenger_mode=mode_of(other) if other is not None else None,
        )
        if problem is not None or other is None:
            self._invalid(fence, isvc, problem or f"challenger {challenger} not found")
            return None
        theirs = self._observe(mode, other)
        if not theirs.view.latest.name:
            # A challenger KServe has not reconciled yet: comparing it now would name no
            # revision, and the one its status names next would supersede that rollout.
            # That status update wakes the champion (the controller maps challengers).
            return None
        view = challenger_view(observed.view, theirs.view, mode)
        if view is observed.view:
            return None  # the champion is not stable: its own canary comes first
        if theirs.storage_uri is not None and theirs.storage_uri == observed.storage_uri:
            return None  # the champion already runs the challenger's model
        for row in self._store.rollouts(namespace=namespace, name=name, limit=20):
            doc = RolloutDocument.from_row(row)
            if (
                row.isvc_uid == observed.uid
                and doc.state.challenger == challenger
                and _same(mode, doc.state.canary, view.latest)
            ):
                if doc.state.phase is Phase.SUCCEEDED and doc.policy.shadow.after == "gate":
                    self._start_after_shadow(fence, doc, observed)
                return None  # this model of the challenger was compared already
        self._reported.pop((namespace, name), None)
        now = self._clock()
        rollout_id = str(uuid.uuid4())
        state, actions = machine.start_challenger(
            rollout_id, namespace, name, challenger, view, policy, now
        )
        doc = RolloutDocument(
            state=state,
            policy=policy,
            mode=mode,
            uid=observed.uid,
            metric_profile=self._profile(opt_in.metric_profile, policy, mode),
        )
        work = self._collect(doc, actions)
        log.info("shadow.challenger_started", namespace=namespace, name=name,
                 challenger=challenger, revision=view.latest.name)  # fmt: skip
        return self._commit_and_act(fence, rollout_id, doc, work, observed, now, new=True)

    def _start_after_shadow(
        self, fence: Fence, shadow: RolloutDocument, observed: Observed
    ) -> None:
        """Write the challenger's model onto the champion with the first step, in one write
        with its intent and outcome records (the canary that follows is the champion's
        rollout of that model). Idempotent: nothing is written when the champion already
        runs it."""
        state = shadow.state
        uri = state.canary.storage_uri
        if not uri or uri in (observed.storage_uri, observed.view.latest.storage_uri):
            return
        now = self._clock()
        percent = shadow.policy.first_step
        intent = AuditEntry(
            at=now,
            actor=Actor("controller", self._instance),
            action="traffic.intent",
            rollout_id=state.rollout_id,
            obj=object_ref(observed),
            stable=model_ref(observed.view.stable),
            canary=ModelRef(None, uri, None, None),
            traffic_before=dict(observed.view.split),
            reason=f"challenger {state.challenger} passed its shadow comparison: its model "
            f"goes to {observed.name} as a canary at {percent}%",
            evidence={
                "purpose": "start",
                "percent": percent,
                "storage_uri": uri,
                "previous_storage_uri": observed.storage_uri,
                "policy": shadow.policy.name,
                "challenger": state.challenger,
                "shadow_rollout_id": state.rollout_id,
            },
            leader_epoch=fence.epoch,
            correlation_id=str(uuid.uuid4()),
        )
        self._store.commit([intent], fence=fence)
        try:
            self._routers[shadow.mode].start(
                observed.namespace, observed.name, uri, percent,
                resource_version=observed.resource_version,
            )  # fmt: skip
        except Exception as exc:  # recorded; the next pass tries again
            why = f"the write was refused: {exc}"
            failed = replace(intent, at=self._clock(), action="traffic.failed", reason=why,
                             traffic_before=None)  # fmt: skip
            self._store.commit([failed], fence=fence)
            log.warning("shadow.canary_start_failed", namespace=observed.namespace,
                        name=observed.name, error=str(exc))  # fmt: skip
            return
        applied = replace(
            intent,
            at=self._clock(),
            action="traffic.applied",
            reason=f"{observed.name}: model set to {uri} with {percent}% for the new revision "
            f"after challenger {state.challenger}'s shadow passed",
            traffic_before=None,
        )
        self._store.commit([applied], fence=fence)

    def _challenger_observation(
        self, doc: RolloutDocument, champion: Mapping[str, Any], observed: Observed
    ) -> ServiceObserved | ChallengerGone:
        """What a challenger's rollout sees: its challenger's newest revision against the
        champion (canary.challengers), or that the challenger is gone."""
        state = doc.state
        assert state.challenger is not None
        try:
            named = parse_annotations((champion.get("metadata") or {}).get("annotations"))
        except AnnotationError:
            named = None
        if named is None or named.challenger != state.challenger:
            return ChallengerGone(
                "the champion's kserve-canary.io/challenger annotation no longer names it"
            )
        other = self._get(state.namespace, state.challenger)
        if other is None:
            return ChallengerGone("its InferenceService was deleted")
        theirs = self._observe(doc.mode, other)
        return ServiceObserved(challenger_view(observed.view, theirs.view, doc.mode))

    def _shadow_refusal(self, policy: RolloutPolicy, mode: str) -> str | None:
        """Why a rollout of the champion's own new model cannot shadow under ``policy``
        (nothing is written then: the new revision stays at the 0 % admission gave it)."""
        if not policy.shadow.enabled:
            return None
        if self._mirrors.router is None:
            return (
                f"policy {policy.name!r} shadows the new model first, but this controller has "
                "no mirroring configured (set KSC_SHADOW_MIRROR to istio or gateway-api)"
            )
        needs = [
            name
            for name, value in (
                ("minAgreement", policy.shadow.min_agreement),
                ("maxScoreShift", policy.shadow.max_score_shift),
            )
            if value is not None
        ]
        if needs:
            return (
                f"policy {policy.name!r} requires {' and '.join(needs)}, which compare the "
                "champion's and the challenger's answers per request; a new model of the "
                "champion itself logs under the champion's name, so they cannot be measured: "
                "deploy it as a challenger InferenceService, or use a policy without them"
            )
        if mode == "knative":
            return (
                f"policy {policy.name!r} shadows the new model first, but a Knative revision "
                "cannot be mirrored to on its own (a mirrored request's Host gets a -shadow "
                "suffix that Knative cannot route); deploy the new model as a challenger "
                "InferenceService, or use a policy without shadow"
            )
        return None

    def _start_command(
        self, fence: Fence, command: CommandRow, now: datetime
    ) -> tuple[CommandState, str]:
        """``canary rollout start``: one write that changes the model and sets the first
        step, preceded by its intent record and followed by its outcome."""
        uri = str(command.args.get("storage_uri") or "")
        isvc = self._get(command.namespace, command.name)
        target = f"{command.namespace}/{command.name}"
        problem: str | None = None
        policy: RolloutPolicy | None = None
        if not uri:
            problem = "a storage URI is required"
        elif isvc is None:
            problem = f"InferenceService {target} not found"
        else:
            try:
                opt_in = parse_annotations((isvc.get("metadata") or {}).get("annotations"))
            except AnnotationError as exc:
                problem = f"malformed kserve-canary annotation: {exc}"
            else:
                if not opt_in.enabled:
                    problem = (
                        f"{target} is not opted in: set the annotation "
                        'kserve-canary.io/enabled: "true" first'
                    )
                else:
                    try:
                        policy = self._policies().get(opt_in.policy)
                    except KeyError as exc:
                        problem = f"policy {opt_in.policy!r}: {exc.args[0] if exc.args else exc}"
        if problem is None and isvc is not None and policy is not None:
            problem = self._shadow_refusal(policy, mode_of(isvc))
        if problem is not None or isvc is None or policy is None:
            why = problem or "cannot start"
            return self._refuse_command(fence, command, why, now, evidence={"storage_uri": uri})
        mode = mode_of(isvc)
        observed = self._observe(mode, isvc)
        if uri in (observed.storage_uri, observed.view.latest.storage_uri):
            # Already written (a retry of this command after a crash, or a repeat): writing
            # the first step again would pull a rollout in progress back to it.
            result = f"{target} already runs {uri}; nothing written"
            return self._settle(fence, command, "accepted", result, now)
        shadow_first = policy.shadow.enabled
        percent = 0 if shadow_first else policy.first_step
        correlation = str(uuid.uuid4())
        obj = object_ref(observed)
        before = dict(observed.view.split)
        intent = AuditEntry(
            at=now,
            actor=command.who,
            action="traffic.intent",
            obj=obj,
            stable=model_ref(observed.view.stable),
            canary=ModelRef(None, uri, None, None),
            traffic_before=before,
            reason=f"rollout start requested by {command.actor}: {command.reason}",
            evidence={
                "purpose": "start",
                "percent": percent,
                "storage_uri": uri,
                "previous_storage_uri": observed.storage_uri,
                "policy": policy.name,
                "command_id": command.id,
            },
            leader_epoch=fence.epoch,
            correlation_id=correlation,
        )
        self._store.commit([intent], fence=fence)
        router = self._routers[mode]
        try:
            router.start(
                command.namespace,
                command.name,
                uri,
                percent,
                resource_version=observed.resource_version,
            )
        except Conflict as exc:
            # The InferenceService changed since it was read (KServe writes its status all
            # the time): recorded, and the command stays pending; the controller runs it
            # again shortly, from a fresh read (the client dropped its cached copy).
            why = f"the InferenceService changed since it was read; read again: {exc}"
            conflicted = replace(intent, at=self._clock(), action="traffic.failed", reason=why,
                                 traffic_before=None)  # fmt: skip
            self._store.commit([conflicted], fence=fence)
            raise
        except Exception as exc:  # every failure is recorded, then reported to the caller
            why = f"the write was refused: {exc}"
            outcome = replace(
                intent,
                at=self._clock(),
                action="traffic.failed",
                reason=why,
                traffic_before=None,
            )
            self._store.commit([outcome], fence=fence, command=(command.id, "failed", why, now))
            return "failed", why
        result = (
            f"{target}: model set to {uri} with {percent}% for the new revision; "
            "the rollout starts when KServe creates it"
        )
        applied = replace(
            intent, at=self._clock(), action="traffic.applied", reason=result, traffic_before=None
        )
        self._store.commit([applied], fence=fence, command=(command.id, "accepted", result, now))
        return "accepted", result

    def _invalid(self, fence: Fence, isvc: Mapping[str, Any], problem: str) -> None:
        meta = isvc.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        key = (namespace, name)
        marker = f"{meta.get('uid')}/{meta.get('generation')}/{problem}"
        if self._reported.get(key) == marker:
            return
        now = self._clock()
        entry = AuditEntry(
            at=now,
            actor=Actor("controller", self._instance),
            action="policy.invalid",
            obj=ObjectRef(
                namespace,
                name,
                meta.get("uid"),
                meta.get("generation"),
                meta.get("resourceVersion"),
            ),
            reason=problem,
            evidence={
                "annotations": {
                    k: str(v)
                    for k, v in (meta.get("annotations") or {}).items()
                    if k.startswith("kserve-canary.io/")
                }
            },
            leader_epoch=fence.epoch,
        )
        self._store.commit([entry], fence=fence)
        self._reported[key] = marker
        log.warning("rollout.policy_invalid", namespace=namespace, name=name, problem=problem)
        self._emit(
            ObjectReference.of(isvc),
            EmitEvent(
                EventReason.POLICY_INVALID,
                f"{problem}; kserve-canary does not manage this InferenceService until this "
                "is fixed (it wrote no traffic)",
                "Warning",
            ),
        )

    # ------------------------------------------------------------------ transitions

    def _step(
        self, doc: RolloutDocument, observation: Observation, now: datetime
    ) -> tuple[RolloutDocument, _Pass]:
        state, actions = machine.step(doc.state, observation, doc.policy, now)
        before = doc.state
        doc = replace(doc, state=state)
        work = self._collect(doc, actions)
        work.before = before
        if (
            self._metrics is not None
            and before.step_reached_at is not None
            and (state.step_index != before.step_index or state.terminal)
        ):
            self._metrics.observe_step_duration((now - before.step_reached_at).total_seconds())
        return doc, work

    def _collect(self, doc: RolloutDocument, actions: Sequence[Action]) -> _Pass:
        work = _Pass()
        for action in actions:
            if isinstance(action, RecordAudit):
                work.entries.append(self._entries.from_action(doc, action))
            elif isinstance(action, EmitEvent):
                work.events.append(action)
            elif isinstance(action, RejectCommand):
                work.rejected = action
            elif isinstance(action, SetTraffic):
                pending = Pending(str(uuid.uuid4()), action.revision, action.percent,
                                  action.purpose)  # fmt: skip
                work.pending = (pending,)
                work.entries.append(self._entries.intent(doc, pending))
            elif isinstance(action, RequestApproval):
                previous = self._store.get_approval(
                    doc.state.rollout_id, action.revision, action.step_index
                )
                now = doc.state.phase_entered_at
                request = request_row(doc.state, doc.policy, action, previous, now)
                work.approvals.append(request)
                work.entries = name_row(work.entries, "approval.requested", request.id)
            elif isinstance(action, CloseChange):
                closing = self._approval_row(doc.state, work)
                if closing is not None:
                    closed = close_row(closing, doc.state, action, self._clock())
                    work.approvals = [a for a in work.approvals if a.id != closed.id]
                    work.approvals.append(closed)
            elif isinstance(action, SetMirror):
                # The decision is in the machine's own records (shadow.started, the
                # rollback, ...); the keeper writes the object after the commit and records
                # what it did (canary.mirroring).
                pass
        return work

    def _save(
        self, fence: Fence, rollout_id: str, doc: RolloutDocument, now: datetime
    ) -> RolloutDocument:
        """Store the rollout's document alone (no audit record: nothing was decided)."""
        self._store.commit(
            [], fence=fence, rollout=doc.row(rollout_id, now), expected_version=doc.version
        )
        self._kept.drop(rollout_id)
        return replace(doc, version=doc.version + 1)

    def _commit_and_act(
        self,
        fence: Fence,
        rollout_id: str,
        doc: RolloutDocument,
        work: _Pass,
        observed: Observed | None,
        now: datetime,
        *,
        new: bool = False,
        command: tuple[str, CommandState, str, datetime] | None = None,
    ) -> RolloutDocument:
        fresh = work.pending
        if fresh:
            doc = replace(doc, pending=fresh)
        entries = [
            replace(e, at=now, obj=object_ref(observed) if observed else e.obj)
            for e in work.entries
        ]
        entries = [replace(e, traffic_before=_before(e, observed)) for e in entries]
        changed = bool(entries or fresh or work.approvals) or new or command is not None
        if changed or doc.state != work.before:
            self._store.commit(
                entries,
                fence=fence,
                rollout=doc.row(rollout_id, now),
                expected_version=None if new else doc.version,
                command=command,
                approvals=work.approvals,
            )
            doc = replace(doc, version=1 if new else doc.version + 1)
            self._kept.drop(rollout_id)  # the looks' evidence went with it
        for event in work.events:
            self._emit(_reference(doc, observed), event)
        self._observe_metrics(doc)
        if fresh and observed is not None:
            doc = self._drain(fence, rollout_id, doc, observed, claimed=True)
        return doc

    def _drain(
        self,
        fence: Fence,
        rollout_id: str,
        doc: RolloutDocument,
        observed: Observed,
        *,
        claimed: bool,
    ) -> RolloutDocument:
        """Carry out the committed intents, then record their outcomes.

        ``claimed``: the intents were committed under ``fence`` in this very pass. Otherwise
        (a retry, or a new leader replaying what its predecessor left) they are claimed
        first by a fenced commit, so a deposed leader is stopped before it writes, and two
        replayers conflict on the rollout's version instead of both writing.
        """
        doc = replace(doc, pending=tuple(replace(p, attempts=p.attempts + 1) for p in doc.pending))
        if not claimed:
            self._store.commit(
                [], fence=fence, rollout=doc.row(rollout_id, self._clock()),
                expected_version=doc.version,
            )  # fmt: skip
            doc = replace(doc, version=doc.version + 1)
        execution = carry_out(
            self._routers[doc.mode],
            doc.state,
            doc.mode,
            doc.pending,
            observed,
            self._clock,
            retried=self._metrics.record_kube_write_retry if self._metrics is not None else None,
        )
        outcomes = [
            self._entries.outcome(
                doc, r.pending, r.at, f"traffic.{r.outcome}", r.reason, observed,
                extra=r.refusal.evidence() if r.refusal is not None else None,
            )
            for r in execution.results
        ]  # fmt: skip
        # A refusal for good is an observation for the machine: it pauses the rollout (or,
        # for a rollback, reports it while the engine keeps retrying). Recorded in the same
        # commit as the failed intent, so a crash cannot leave one without the other.
        refusals = [(r.pending, r.refusal) for r in execution.results if r.refusal is not None] + [
            (r.pending, r.refusal) for r in execution.rejected if r.changed
        ]
        now = self._clock()
        doc = replace(doc, pending=execution.remaining, retry_at=execution.retry_at)
        events: list[EmitEvent] = []
        for pending, refusal in refusals:
            rejected = WriteRejected(
                pending.revision, pending.percent, pending.purpose, refusal.status,
                refusal.reason, refusal.message, refusal.causes,
            )  # fmt: skip
            doc, work = self._step(doc, rejected, now)
            ref = object_ref(observed)
            outcomes += [replace(e, at=now, obj=ref) for e in work.entries]
            events += work.events
        self._store.commit(
            outcomes, fence=fence, rollout=doc.row(rollout_id, now), expected_version=doc.version
        )
        doc = replace(doc, version=doc.version + 1)
        for event in events:
            self._emit(_reference(doc, observed), event)
        if refusals and not doc.state.terminal:
            self._observe_metrics(doc)  # a paused rollout's weight is the one in force
        return doc

    # ------------------------------------------------------------------ mirroring

    def _keep_mirror(
        self,
        fence: Fence,
        rollout_id: str,
        doc: RolloutDocument,
        isvc: Mapping[str, Any] | None,
        observed: Observed | None,
    ) -> RolloutDocument:
        """Write or remove the rollout's mirror object as its state now says, and record
        what was done (canary.mirroring). A rollout that never had a mirror object costs
        nothing here (a crash between writing one and recording it is the sweep's)."""
        shadowing = mirroring(doc)
        if not shadowing and doc.mirror_applied_at is None:
            return doc
        upkeep = self._mirrors.keep(doc, isvc)
        notes = upkeep.notes
        now = self._clock()
        applied_at = doc.mirror_applied_at
        if shadowing and upkeep.in_place and applied_at is None:
            applied_at = now  # the evidence of the shadow phase counts from here
        elif not shadowing and upkeep.gone:
            applied_at = None  # nothing left to look after
        if not notes and applied_at == doc.mirror_applied_at:
            return doc
        entries = [
            self._entries.entry(
                doc, now, action=n.action, reason=n.reason, observed=observed,
                evidence=n.evidence,
            )
            for n in notes
        ]  # fmt: skip
        doc = replace(doc, mirror_applied_at=applied_at)
        self._store.commit(
            entries, fence=fence, rollout=doc.row(rollout_id, now), expected_version=doc.version
        )
        doc = replace(doc, version=doc.version + 1)
        for note in notes:
            if note.event is not None:
                self._emit(_reference(doc, observed), note.event)
        return doc

    def sweep_mirrors(self) -> int:
        """Remove the mirror objects no shadowing rollout owns (left behind by a crash, a
        rollout that ended while no leader ran, a deleted InferenceService); each removal
        is recorded. Returns how many were removed."""
        fence = self._fence()

        def active(namespace: str, name: str) -> RolloutDocument | None:
            row = self._store.rollout_for(namespace, name)
            return RolloutDocument.from_row(row) if row is not None else None

        notes = self._mirrors.sweep(active)
        if not notes:
            return 0
        now = self._clock()
        entries = [
            AuditEntry(
                at=now,
                actor=Actor("controller", self._instance),
                action=n.action,
                rollout_id=n.rollout_id,
                obj=ObjectRef(n.namespace, n.name),
                reason=n.reason,
                evidence=dict(n.evidence),
                leader_epoch=fence.epoch,
            )
            for n in notes
        ]
        self._store.commit(entries, fence=fence)
        for note in notes:
            log.info("mirror.swept", namespace=note.namespace, name=note.name,
                     reason=note.reason)  # fmt: skip
        return len(notes)

    # ------------------------------------------------------------------ helpers

    def _profile(self, annotated: str | None, policy: RolloutPolicy, mode: str) -> str:
        """The annotation wins, then a profile the policy names explicitly, then the
        controller's default for the KServe mode (Standard mode has no queue-proxy, so the
        Knative profiles cannot see it)."""
        if annotated:
            return annotated
        if "metric_profile" in policy.model_fields_set:
            return policy.metric_profile
        return self._default_profiles[mode]

    def _fence(self) -> Fence:
        fence = self._leadership()
        if fence is None:
            raise NotLeader("this replica does not hold the lease")
        return fence

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._kube.get(INFERENCE_SERVICE, namespace, name)
        except NotFound:
            return None

    def _observe(self, mode: str, isvc: Mapping[str, Any]) -> Observed:
        meta = isvc.get("metadata") or {}
        return self._routers[mode].observe(str(meta.get("namespace")), str(meta.get("name")))

    def _emit(self, target: ObjectReference, event: EmitEvent) -> None:
        if self._events is None:
            return
        try:
            self._events.emit(target, event.reason, event.message, event.type)
        except Exception as exc:  # events are best effort; the audit trail is not
            log.warning("rollout.event_failed", reason=event.reason.value, error=str(exc))

    def _observe_metrics(self, doc: RolloutDocument) -> None:
        if self._metrics is None:
            return
        state = doc.state
        if state.terminal:
            self._metrics.forget(state.namespace, state.name)
            if state.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
                kind = "manual" if state.phase is Phase.ABORTED else "automatic"
                self._metrics.record_rollback(kind)
        else:
            self._metrics.set_weight(state.namespace, state.name, state.target_percent)

    def _settle(
        self, fence: Fence, command: CommandRow, state: CommandState, result: str, now: datetime
    ) -> tuple[CommandState, str]:
        """Settle a command that caused no records of its own (its ``manual.settled`` record
        says what became of it)."""
        actor = Actor("controller", self._instance)
        self._store.settle_command(command.id, state, result, now, actor=actor, fence=fence)
        return state, result


# ---------------------------------------------------------------------------------------


_DECISION_RECORDS = frozenset({"approval.verified", "approval.rejected", "approval.change_opened"})


def _with_decision(entry: AuditEntry, row: ApprovalRow) -> AuditEntry:
    """An ``approval.*`` record made from a row carries the row's evidence, and names the
    change system's user who decided."""
    if entry.action not in _DECISION_RECORDS:
        return entry
    actor = decision_actor(row) if entry.action != "approval.change_opened" else None
    return replace(
        entry,
        actor=actor or entry.actor,
        evidence={**entry.evidence, **decision_evidence(row)},
    )


def _same(mode: str, a: Revision, b: Revision) -> bool:
    """Whether two readings name the same model version. A Knative revision name is unique
    per template; a Standard-mode canary entry keeps its name across models."""
    if mode == "knative":
        return a.name == b.name
    return a.name == b.name and (a.storage_uri or None) == (b.storage_uri or None)


def _reference(doc: RolloutDocument, observed: Observed | None) -> ObjectReference:
    return ObjectReference(
        api_version=INFERENCE_SERVICE.api_version,
        kind=INFERENCE_SERVICE.kind,
        namespace=doc.state.namespace,
        name=doc.state.name,
        uid=observed.uid if observed else doc.uid,
        resource_version=observed.resource_version if observed else None,
    )


def _before(entry: AuditEntry, observed: Observed | None) -> Mapping[str, int] | None:
    if entry.action != "traffic.intent" or observed is None:
        return entry.traffic_before
    return dict(observed.view.split)


def _accepted(kind: CommandKind, doc: RolloutDocument) -> str:
    state = doc.state
    where = f"{state.namespace}/{state.name}"
    if kind is CommandKind.PAUSE:
        return f"{where} paused at {state.target_percent}%"
    if kind is CommandKind.RESUME:
        return f"{where} resumed ({state.phase.value})"
    if kind is CommandKind.PROMOTE:
        return f"{where}: promoting {state.canary.name} to 100%"
    return f"{where}: rolling back {state.canary.name} to 0% (aborted)"


def describe_wait(doc: RolloutDocument, now: datetime) -> str:
    """A short "next action and when" for ``canary status``."""
    state = doc.state
    wake = doc.wake_at()
    if state.terminal:
        return state.outcome or state.phase.value
    what = state.waiting_for or state.phase.value
    if wake is None:
        return what
    delta = wake - now
    when = "now" if delta <= timedelta(0) else f"in {format_duration(delta)}"
    return f"{what} (next check {when})"
