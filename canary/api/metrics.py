"""``GET /metrics``: the controller's own metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from canary.metrics import ControllerMetrics

__all__ = ["router"]


def router(metrics: ControllerMetrics) -> APIRouter:
    routes = APIRouter(tags=["metrics"])

    @routes.get("/metrics")
    def scrape() -> Response:
        return Response(content=metrics.render(), media_type=metrics.content_type)

    return routes
