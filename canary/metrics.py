"""The controller's own Prometheus metrics, in a private registry.

A private :class:`~prometheus_client.CollectorRegistry` (never the process-global one) keeps
these series apart from anything a library registers globally, and lets tests build as many
independent instances as they like. ``GET /metrics`` serves :meth:`ControllerMetrics.render`.

Series:

* ``kserve_canary_rollouts{phase}``: rollouts per phase (every phase, 0 when none);
* ``kserve_canary_canary_weight_percent{namespace,name}``: the canary's commanded share;
* ``kserve_canary_step_duration_seconds``: from a step's split showing to leaving the step;
* ``kserve_canary_analysis_results_total{check,outcome}``: check evaluations by outcome;
* ``kserve_canary_rollbacks_total{reason_kind}``: rollbacks by kind of reason;
* ``kserve_canary_leader``: 1 while this replica holds the leader Lease, else 0;
* ``kserve_canary_tick_lag_seconds``: how late a scheduled rollout check ran;
* ``kserve_canary_reconciles_total``: rollout reconciles run (a rate far above the rollouts'
  look and check rates is a rollout woken again and again);
* ``kserve_canary_wakes_held_back_total``: reconciles delayed because a rollout kept asking
  to run again at one same past time (a state nothing moves on; see the controller);
* ``kserve_canary_analyses_waiting``: analyses asked for and not started yet (waiting for a
  thread, or behind their look group's running analysis: a number that stays high is a
  Prometheus slower than the look period);
* ``kserve_canary_analysis_deadlines_total``: analyses given up at their deadline (each
  counts as an error for its checks);
* ``kserve_canary_look_queries_total{kind}``: the grouped looks' Prometheus queries by what
  they are for (``round``: a look group's round at one of its newest grid times; ``older``:
  a round at an older grid time for the rollouts left behind there; ``restart_check``: the
  check that guards a look joined over several periods): ``older`` and ``restart_check``
  growing with the rollouts is a Prometheus slower than the look period;
* ``kserve_canary_kube_write_retries_total``: Kubernetes writes retried;
* ``kserve_canary_admission_reviews_total{result}``: admission answers (allowed, patched,
  denied, error);
* ``kserve_canary_operator_requests_total{command,outcome}``: operator API commands by
  outcome (accepted, pending, rejected, failed, denied, unauthenticated, invalid,
  unavailable);
* ``kserve_canary_webhook_deliveries_total{source,outcome}``: approval webhook deliveries
  (source ``servicenow`` or ``webhook``) by outcome (accepted, duplicate, unknown, gone,
  refused, unauthorized, malformed, too_large, unavailable, error);
* ``kserve_canary_certificate_reloads_total``: serving certificates loaded after a rotation;
* ``kserve_canary_certificate_reload_failures_total``: rotated files that did not load as a
  pair (the previous certificate is still served; retried on the next poll);
* ``kserve_canary_audit_checkpoints_total{outcome}``: checkpoint attempts of the audit chain
  (signed, refused: the database disagrees with what was signed or its chain is broken,
  failed: the database or the key could not be used);
* ``kserve_canary_audit_witness_failures_total{witness}``: checkpoints a witness did not take;
* ``kserve_canary_audit_anchored_seq``: the last record a signed checkpoint vouches for;
* ``kserve_canary_audit_anchor_broken``: 1 while the database disagrees with a signed
  checkpoint (truncated or rewritten history), else 0;
* ``kserve_canary_auditor_requests_total{outcome}``: auditor API requests (ok, invalid,
  unauthenticated, forbidden, not_found, busy, unavailable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from canary.model import Phase

__all__ = [
    "ADMISSION_RESULTS", "CHECKPOINT_OUTCOMES", "OPERATOR_OUTCOMES", "WEBHOOK_OUTCOMES",
    "WEBHOOK_SOURCES", "ControllerMetrics",
]  # fmt: skip

ADMISSION_RESULTS = ("allowed", "patched", "denied", "error")
CHECKPOINT_OUTCOMES = ("signed", "refused", "failed")
OPERATOR_OUTCOMES = ("accepted", "pending", "rejected", "failed", "denied", "unauthenticated",
                     "invalid", "unavailable")  # fmt: skip
WEBHOOK_SOURCES = ("servicenow", "webhook")
WEBHOOK_OUTCOMES = ("accepted", "duplicate", "unknown", "gone", "refused", "unauthorized",
                    "malformed", "too_large", "unavailable", "error")  # fmt: skip

# Steps hold for minutes (stepHold defaults to 5m) and may stretch to hours.
_STEP_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                 28800.0, 86400.0)  # fmt: skip
# A timer should fire within a fraction of a second; a lag of seconds is a busy worker.
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControllerMetrics:
    """Thread-safe (prometheus_client's metrics are); every method is cheap."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._rollouts = Gauge(
            "kserve_canary_rollouts", "Rollouts known to the controller, by phase.", ["phase"],
            registry=r,
        )  # fmt: skip
        self._weight = Gauge(
            "kserve_canary_canary_weight_percent",
            "The canary's commanded traffic share, per InferenceService.",
            ["namespace", "name"],
            registry=r,
        )
        self._step_duration = Histogram(
            "kserve_canary_step_duration_seconds",
            "How long a rollout stayed at a step, from the split showing in status to leaving it.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self._analysis = Counter(
            "kserve_canary_analysis_results",
            "Check evaluations, by check name and outcome.",
            ["check", "outcome"],
            registry=r,
        )
        self._rollbacks = Counter(
            "kserve_canary_rollbacks", "Rollbacks, by kind of reason.", ["reason_kind"], registry=r
        )
        self._leader = Gauge(
            "kserve_canary_leader", "1 while this replica holds the leader Lease, else 0.",
            registry=r,
        )  # fmt: skip
        self._tick_lag = Histogram(
            "kserve_canary_tick_lag_seconds",
            "How late a scheduled rollout check ran compared with its due time.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self._reconciles = Counter(
            "kserve_canary_reconciles", "Rollout reconciles run.", registry=r
        )
        self._held_back = Counter(
            "kserve_canary_wakes_held_back",
            "Reconciles delayed because a rollout kept asking to run again at one past time.",
            registry=r,
        )
        self._kube_retries = Counter(
            "kserve_canary_kube_write_retries",
            "Kubernetes writes retried after a conflict or an unavailable apiserver.",
            registry=r,
        )
        self._admission = Counter(
            "kserve_canary_admission_reviews",
            "Admission reviews answered, by result (allowed, patched, denied, error).",
            ["result"],
            registry=r,
        )
        self._operator = Counter(
            "kserve_canary_operator_requests",
            "Operator API commands, by command and outcome.",
            ["command", "outcome"],
            registry=r,
        )
        self._webhooks = Counter(
            "kserve_canary_webhook_deliveries",
            "Approval webhook deliveries, by source (servicenow, webhook) and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self._certificate_reloads = Counter(
            "kserve_canary_certificate_reloads",
            "Serving certificates loaded after the mounted files changed (a rotation).",
            registry=r,
        )
        self._certificate_reload_failures = Counter(
            "kserve_canary_certificate_reload_failures",
            "Changed serving certificate files that did not load as a pair; the previous "
            "certificate is still served.",
            registry=r,
        )
        self._checkpoints = Counter(
            "kserve_canary_audit_checkpoints",
            "Checkpoint attempts of the audit chain, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._witness_failures = Counter(
            "kserve_canary_audit_witness_failures",
            "Signed checkpoints a witness did not take, by witness.",
            ["witness"],
            registry=r,
        )
        self._anchored_seq = Gauge(
            "kserve_canary_audit_anchored_seq",
            "The last audit record a signed checkpoint vouches for.",
            registry=r,
        )
        self._anchor_broken = Gauge(
            "kserve_canary_audit_anchor_broken",
            "1 while the audit database disagrees with a signed checkpoint, else 0.",
            registry=r,
        )
        self._auditor_requests = Counter(
            "kserve_canary_auditor_requests",
            "Auditor API requests, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._approvals_pending = Gauge(
            "kserve_canary_approvals_pending",
            "Approvals asked for and not decided yet (every gate).",
            registry=r,
        )
        self._approval_oldest = Gauge(
            "kserve_canary_approval_oldest_pending_seconds",
            "Age of the oldest approval still pending (0 when none is).",
            registry=r,
        )
        self._approval_outcomes = Counter(
            "kserve_canary_approvals",
            "Approval decisions, by gate and outcome (approved, rejected, refused: an "
            "approval that broke segregation of duties and did not count).",
            ["gate", "outcome"],
            registry=r,
        )
        self._change_system_errors = Counter(
            "kserve_canary_change_system_errors",
            "Failed requests to the change system (ServiceNow), by gate and operation.",
            ["gate", "operation"],
            registry=r,
        )
        self._analyses_waiting = Gauge(
            "kserve_canary_analyses_waiting",
            "Analyses asked for and not started yet (waiting for a thread or their look "
            "group's turn).",
            registry=r,
        )
        self._analysis_deadlines = Counter(
            "kserve_canary_analysis_deadlines",
            "Analyses given up at their deadline; each counts as an error for its checks.",
            registry=r,
        )
        self._phases_seen: set[str] = {phase.value for phase in Phase}
        for phase in self._phases_seen:
            self._rollouts.labels(phase=phase).set(0)
        for result in ADMISSION_RESULTS:
            self._admission.labels(result=result)
        for source in WEBHOOK_SOURCES:
            for outcome in WEBHOOK_OUTCOMES:
                self._webhooks.labels(source=source, outcome=outcome)
        for outcome in CHECKPOINT_OUTCOMES:
            self._checkpoints.labels(outcome=outcome)
        self._leader.set(0)

    # --- approvals -------------------------------------------------------------------------

    def record_approval(self, gate: str, outcome: str) -> None:
        self._approval_outcomes.labels(gate=gate, outcome=outcome).inc()

    def record_change_system_error(self, system: str, operation: str) -> None:
        self._change_system_errors.labels(gate=system, operation=operation).inc()

    def set_pending_approvals(self, count: int, oldest_seconds: float) -> None:
        self._approvals_pending.set(count)
        self._approval_oldest.set(oldest_seconds)

    # --- rollouts --------------------------------------------------------------------------

    def set_phase_counts(self, counts: Mapping[str, int]) -> None:
        """Set ``kserve_canary_rollouts`` from a full count; phases missing from ``counts``
        (and phases reported before) go to 0, so a series never keeps a stale value."""
        wanted = {str(phase): int(count) for phase, count in counts.items()}
        self._phases_seen |= set(wanted)
        for phase in self._phases_seen:
            self._rollouts.labels(phase=phase).set(wanted.get(phase, 0))

    def set_weight(self, namespace: str, name: str, percent: int) -> None:
        self._weight.labels(namespace=namespace, name=name).set(percent)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the service's weight series (its rollout ended or the object is gone)."""
        with contextlib.suppress(KeyError):  # never set, or already forgotten
            self._weight.remove(namespace, name)

    def observe_step_duration(self, seconds: float) -> None:
        self._step_duration.observe(max(seconds, 0.0))

    def record_analysis(self, check: str, outcome: str) -> None:
        self._analysis.labels(check=check, outcome=outcome).inc()

    def record_rollback(self, kind: str) -> None:
        self._rollbacks.labels(reason_kind=kind).inc()

    # --- the controller --------------------------------------------------------------------

    def set_leader(self, leader: bool) -> None:
        self._leader.set(1 if leader else 0)

    def observe_tick_lag(self, seconds: float) -> None:
        self._tick_lag.observe(max(seconds, 0.0))

    def record_reconcile(self) -> None:
        self._reconciles.inc()

    def record_wake_held_back(self) -> None:
        self._held_back.inc()

    def watch_analyses(self, waiting: Callable[[], int]) -> None:
        """Read ``kserve_canary_analyses_waiting`` from ``waiting`` at every scrape."""
        self._analyses_waiting.set_function(waiting)

    def watch_looks(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Read ``kserve_canary_look_queries_total{kind}`` from ``counts`` (queries sent so
        far, by kind) at every scrape."""
        self.registry.register(_CountsByLabel(
            "kserve_canary_look_queries",
            "Prometheus queries the grouped looks sent, by what they were for.",
            "kind",
            counts,
        ))  # fmt: skip

    def record_analysis_deadline(self) -> None:
        self._analysis_deadlines.inc()

    def record_kube_write_retry(self) -> None:
        self._kube_retries.inc()

    def record_admission(self, result: str) -> None:
        """``result`` is one of :data:`ADMISSION_RESULTS`."""
        if result not in ADMISSION_RESULTS:
            raise ValueError(f"unknown admission result {result!r}; allowed: {ADMISSION_RESULTS}")
        self._admission.labels(result=result).inc()

    def count_operator_request(self, command: str, outcome: str) -> None:
        """``outcome`` is one of :data:`OPERATOR_OUTCOMES`."""
        if outcome not in OPERATOR_OUTCOMES:
            raise ValueError(f"unknown operator outcome {outcome!r}; allowed: {OPERATOR_OUTCOMES}")
        self._operator.labels(command=command, outcome=outcome).inc()

    def record_webhook(self, source: str, outcome: str) -> None:
        """``source`` is one of :data:`WEBHOOK_SOURCES`, ``outcome`` one of
        :data:`WEBHOOK_OUTCOMES`."""
        if source not in WEBHOOK_SOURCES:
            raise ValueError(f"unknown webhook source {source!r}; allowed: {WEBHOOK_SOURCES}")
        if outcome not in WEBHOOK_OUTCOMES:
            raise ValueError(f"unknown webhook outcome {outcome!r}; allowed: {WEBHOOK_OUTCOMES}")
        self._webhooks.labels(source=source, outcome=outcome).inc()

    # --- the audit chain's checkpoints ------------------------------------------------------

    def record_checkpoint(self, outcome: str) -> None:
        """``outcome`` is one of :data:`CHECKPOINT_OUTCOMES`."""
        if outcome not in CHECKPOINT_OUTCOMES:
            raise ValueError(
                f"unknown checkpoint outcome {outcome!r}; allowed: {CHECKPOINT_OUTCOMES}"
            )
        self._checkpoints.labels(outcome=outcome).inc()

    def record_witness_failure(self, witness: str) -> None:
        self._witness_failures.labels(witness=witness).inc()

    def set_anchored_seq(self, seq: int) -> None:
        self._anchored_seq.set(seq)

    def set_anchor_broken(self, broken: bool) -> None:
        self._anchor_broken.set(1 if broken else 0)

    def record_auditor_request(self, outcome: str) -> None:
        self._auditor_requests.labels(outcome=outcome).inc()

    def record_certificate_reload(self) -> None:
        self._certificate_reloads.inc()

    def record_certificate_reload_failure(self) -> None:
        self._certificate_reload_failures.inc()

    # --- exposition ------------------------------------------------------------------------

    # Every name here is a classic one, so the output is the 0.0.4 text format that every
    # Prometheus version (the test bed's 2.42 included) reads.
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _CountsByLabel(Collector):
    """A counter whose values another object keeps (read at every scrape)."""

    def __init__(
        self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in sorted(self._counts().items()):
            family.add_metric([value], count)
        yield family
