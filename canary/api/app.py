"""The FastAPI application: one router per concern, assembled by :func:`create_app`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, FastAPI

from canary.admission import DEFAULT_RULES, ModelChange, TemplateRules
from canary.api import admission as _admission
from canary.api import health as _health
from canary.api import metrics as _metrics
from canary.api.health import Health
from canary.metrics import ControllerMetrics
from canary.policy import PolicySet

__all__ = ["create_app"]


def create_app(
    *,
    health: Health,
    policies: Callable[[], PolicySet],
    metrics: ControllerMetrics,
    extra_routers: Sequence[APIRouter] = (),
    admission_rules: TemplateRules = DEFAULT_RULES,
    model_changes: Callable[[ModelChange], None] | None = None,
) -> FastAPI:
    """The controller's HTTP API.

    ``policies`` is called on every admission review (a cheap call that returns the current
    set; :class:`canary.app.PolicySource` reloads on change). ``extra_routers`` adds later
    APIs (approval webhooks, the auditor API). ``admission_rules`` names the annotation and
    label keys the cluster's KServe keeps off revision templates. ``model_changes`` keeps
    who an admitted update that changes the model came from (the rollout's starter).
    """
    app = FastAPI(
        title="kserve-canary",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(_health.router(health))
    app.include_router(_metrics.router(metrics))
    app.include_router(
        _admission.router(policies, metrics, rules=admission_rules, recorder=model_changes)
    )
    for extra in extra_routers:
        app.include_router(extra)
    return app
