"""Canary analysis: metric providers, checks and verdicts (pure, apart from providers).

The controller builds a :class:`Subject` (canary and baseline revisions, metric profile,
window) and :class:`CheckDefinition` s from its policy, and calls
:meth:`Analyzer.analyze` with a :class:`~analysis.providers.base.MetricProvider` (Prometheus:
``analysis.providers.prometheus.PrometheusProvider``, imported explicitly). It gets a
:class:`StepAnalysis`: the verdict, whether the data sufficed, every check's evidence, and
the per-check counters to pass back next time.
"""

from analysis.assess import Assessment, Evidence, Judge, Judgement, assess, combine
from analysis.profiles import QueryPlan, plan
from analysis.providers.base import MetricProvider
from analysis.runner import Analyzer
from analysis.types import (
    BadQuery,
    CheckDefinition,
    CheckEvaluation,
    CheckMemory,
    Infinite,
    MetricError,
    MultipleSeries,
    NoData,
    NotANumber,
    Outcome,
    ProviderError,
    QueryResult,
    Reading,
    Series,
    StepAnalysis,
    Subject,
    Unreachable,
)

__all__ = [
    "Analyzer",
    "Assessment",
    "BadQuery",
    "CheckDefinition",
    "CheckEvaluation",
    "CheckMemory",
    "Evidence",
    "Infinite",
    "Judge",
    "Judgement",
    "MetricError",
    "MetricProvider",
    "MultipleSeries",
    "NoData",
    "NotANumber",
    "Outcome",
    "ProviderError",
    "QueryPlan",
    "QueryResult",
    "Reading",
    "Series",
    "StepAnalysis",
    "Subject",
    "Unreachable",
    "assess",
    "combine",
    "plan",
]
