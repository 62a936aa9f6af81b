"""Metric providers: the only part of the analysis that does I/O.

:mod:`analysis.providers.base` holds the interface; :mod:`analysis.providers.prometheus`
(imported explicitly, so that the pure analysis never loads an HTTP client) implements it
for Prometheus.
"""

from __future__ import annotations

from analysis.providers.base import MetricProvider

__all__ = ["MetricProvider"]
