"""The interface between the analysis and a metric server.

A provider answers one instant query at an explicit evaluation time with the series it
returned, a SHA-256 digest of the raw response (the evidence an auditor re-checks), and the
server's URL; or it raises a :class:`~analysis.types.MetricError`: ``NoData`` for an empty
result, ``Unreachable``, ``BadQuery``, ``ProviderError``, ``PartialAnswer`` for an empty
result with warnings. Values are floats and may be NaN or ±Inf; each series keeps its
sample timestamp, and the answer its ``warnings`` and how many attempts it took (and what
failed). Judging all that is the analysis' job, per series (:mod:`analysis.validate`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from analysis.types import (
    BadQuery,
    Infinite,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    PartialAnswer,
    ProviderError,
    QueryResult,
    Series,
    Unreachable,
)

__all__ = [
    "BadQuery",
    "Infinite",
    "MetricError",
    "MetricProvider",
    "MultipleSeries",
    "NoData",
    "NotANumber",
    "PartialAnswer",
    "ProviderError",
    "QueryResult",
    "Series",
    "Unreachable",
]


@runtime_checkable
class MetricProvider(Protocol):
    def query(self, promql: str, at: datetime) -> QueryResult:
        """Evaluate ``promql`` as an instant query at ``at`` (timezone-aware)."""
        ...
