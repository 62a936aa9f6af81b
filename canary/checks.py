"""The analysis checks of a rollout, from its policy: the canary's steps and the shadow
phase's comparison of the challenger with the champion. PURE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from analysis import CheckDefinition, CheckEvaluation
from analysis.types import SEQUENTIAL_BUILTINS, Direction
from canary.policy import CheckSpec, RolloutPolicy

__all__ = [
    "AGREEMENT_CHECK",
    "CEILING_ERROR_RATE",
    "CEILING_LATENCY",
    "SCORE_SHIFT_CHECK",
    "SHADOW_PREFIX",
    "ceiling_breach",
    "check_definition",
    "check_definitions",
    "shadow_checks",
]

SHADOW_PREFIX = "shadow-"
CEILING_ERROR_RATE = "shadow-ceiling-error-rate"
CEILING_LATENCY = "shadow-ceiling-latency-p99"
AGREEMENT_CHECK = "shadow-decision-agreement"
SCORE_SHIFT_CHECK = "shadow-score-shift"
# A ceiling is judged only on this many of the challenger's requests, so one early error
# does not stop a shadow phase; any more and 100 % errors always breach.
CEILING_MIN_REQUESTS = 20


def check_definitions(policy: RolloutPolicy) -> list[CheckDefinition]:
    """The policy's checks for the analysis. The false-rollback budget is split evenly
    among the gating checks that get a sequential test, so it holds for the rollout."""
    sequential = [
        c
        for c in policy.checks
        if not c.dry_run
        and (c.builtin in SEQUENTIAL_BUILTINS or c.events is not None)
        and c.relative_tolerance is not None
    ]
    alpha_fail = policy.false_rollback_rate / max(len(sequential), 1)
    return [
        replace(
            check_definition(spec),
            alpha_fail=alpha_fail,
            alpha_pass=policy.false_promotion_rate,
            progression=policy.progression,
        )
        for spec in policy.checks
    ]


def check_definition(spec: CheckSpec) -> CheckDefinition:
    return CheckDefinition(
        name=spec.name,
        builtin=spec.builtin,
        query=spec.query,
        events=spec.events,
        requests=spec.requests,
        direction=spec.effective_direction.value,
        absolute_limit=spec.absolute_limit,
        relative_tolerance=spec.relative_tolerance,
        hard_limit=spec.hard_limit,
        min_samples=spec.min_samples,
        on_no_data=spec.on_no_data.value,
        failure_limit=spec.failure_limit,
        inconclusive_limit=spec.inconclusive_limit,
        consecutive_error_limit=spec.consecutive_error_limit,
        dry_run=spec.dry_run,
    )


def shadow_checks(policy: RolloutPolicy, challenger: str | None = None) -> list[CheckDefinition]:
    """The shadow phase's checks: the policy's own checks (the challenger against the
    champion, with the same statistics as a canary step) under names of their own, so a
    canary that follows starts with fresh evidence, each needing the shadow's minimum
    samples; the output comparison (decision agreement, score shift) when the policy sets
    its thresholds and ``challenger`` names a challenger InferenceService (a dark launch
    has none: its responses are logged under the champion's name); and the ceilings,
    which never gate (they stop the mirror: see :func:`ceiling_breach`)."""
    shadow = policy.shadow
    checks = [
        replace(
            check,
            name=SHADOW_PREFIX + check.name,
            min_samples=max(check.min_samples, shadow.min_samples),
        )
        for check in check_definitions(policy)
    ]
    if challenger is not None:
        outputs: tuple[tuple[str, str, Direction, float | None], ...] = (
            (AGREEMENT_CHECK, "decision-agreement", "higherIsBetter", shadow.min_agreement),
            (SCORE_SHIFT_CHECK, "score-shift", "lowerIsBetter", shadow.max_score_shift),
        )
        checks += [
            CheckDefinition(
                name=name,
                builtin=builtin,
                query=None,
                direction=direction,
                absolute_limit=limit,
                min_samples=shadow.min_samples,
                alpha_pass=policy.false_promotion_rate,
                max_predictions_per_request=shadow.max_predictions_per_request,
            )
            for name, builtin, direction, limit in outputs
            if limit is not None
        ]
    if shadow.max_error_rate is not None:
        checks.append(
            CheckDefinition(
                name=CEILING_ERROR_RATE,
                builtin="error-rate",
                query=None,
                direction="lowerIsBetter",
                absolute_limit=shadow.max_error_rate,
                min_samples=CEILING_MIN_REQUESTS,
                dry_run=True,
            )
        )
    if shadow.max_latency_p99 is not None:
        checks.append(
            CheckDefinition(
                name=CEILING_LATENCY,
                builtin="latency-p99",
                query=None,
                direction="lowerIsBetter",
                absolute_limit=shadow.max_latency_p99.total_seconds(),
                min_samples=CEILING_MIN_REQUESTS,
                dry_run=True,
            )
        )
    return checks


def ceiling_breach(policy: RolloutPolicy, evaluations: Iterable[CheckEvaluation]) -> str | None:
    """Why mirroring must stop now (the challenger's own error rate or p99 over the
    policy's ceiling, on at least CEILING_MIN_REQUESTS of its requests), or None."""
    shadow = policy.shadow
    reasons = []
    for e in evaluations:
        enough = e.canary_samples is not None and e.canary_samples >= CEILING_MIN_REQUESTS
        if e.canary_value is None or not enough:
            continue
        if e.check == CEILING_ERROR_RATE and shadow.max_error_rate is not None:
            if e.canary_value > shadow.max_error_rate:
                reasons.append(
                    f"the challenger's error rate {e.canary_value:.1%} exceeds the ceiling "
                    f"{shadow.max_error_rate:.1%} ({e.canary_samples} requests)"
                )
        elif e.check == CEILING_LATENCY and shadow.max_latency_p99 is not None:
            limit = shadow.max_latency_p99.total_seconds()
            if e.canary_value > limit:
                reasons.append(
                    f"the challenger's p99 latency {e.canary_value:.3f}s exceeds the ceiling "
                    f"{limit:g}s ({e.canary_samples} requests)"
                )
    return "; ".join(reasons) or None
