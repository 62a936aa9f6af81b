"""Simulated model traffic: requests per InferenceService, metrics under KServe's real names.

The test-bed orchestrator tells a :class:`TrafficSimulator` how each InferenceService routes
its traffic (``set_routes``, ``set_mirror``); the simulator generates requests at the rate the
:class:`~testbed.behaviour.BehaviourBook` gives, draws each one's latency, status and
fraud decision from the target model's behaviour, and counts them the way a real pod would.

Every routed revision (Knative mode) or Deployment (Standard mode) is its own scrape target,
as each real pod is: one loopback HTTP server serves ``/metrics/<namespace>/<name>`` from a
per-target :class:`~prometheus_client.CollectorRegistry`, and a ``file_sd`` JSON file lists
the targets with the labels a PodMonitor's relabeling would add (``namespace``, ``pod``,
``container``, ``revision`` or ``app``, and a distinct ``instance``).

One endpoint carries the series of every metric profile at once, as if KServe's metric
aggregation (queue-proxy, model server and sidecar on one port) were on:

=====================  ============================================================
profile                series (labels)
=====================  ============================================================
knative-otel           ``kn_serving_invocation_duration_seconds`` (http_response_status_code),
                       ``http_server_request_duration_seconds`` (http_request_method,
                       http_response_status_code), ``target_info`` (kn_revision_name,
                       kn_configuration_name, kn_service_name, k8s_pod_name,
                       k8s_namespace_name). Knative targets only.
knative-opencensus     ``revision_request_count``, ``revision_request_latencies`` in ms
                       (namespace_name, configuration_name, revision_name, response_code,
                       response_code_class). Knative targets only.
istio                  ``istio_requests_total``, ``istio_request_duration_milliseconds``
                       (reporter="destination", destination_workload,
                       destination_workload_namespace, response_code)
kserve-model-server    ``request_predict_seconds`` (model_name)
business               ``fraud_decisions_total`` (decision, outcome), ``fraud_score``
=====================  ============================================================

Simplifications: every latency histogram of a request records the same duration (no
queue-proxy or sidecar overhead is added); errors are HTTP 500 with the same latency
distribution as successes and carry no fraud decision; a series for a status code appears
when the first request with that code is served, as with the real exporters.

Mirroring (``set_mirror``), as Istio's ``mirror`` or Gateway API's ``RequestMirror`` does it:
a copy of each live request of an InferenceService is sent, with probability ``percent``,
to the mirror target as well, and the answer is discarded. The copies are the live
requests: the mirror model decides on the same latent draws (fraud flag, decision uniform,
score normal; :class:`~testbed.behaviour.BusinessProfile`) as the model that served the
live request, and draws its own latency and error. Copies count on the mirror target only
(``RequestCounts.mirrored``), never on the targets serving the live requests (unless the
mirror target is itself one of the champion's targets with a live share: a pod counts all
it serves). A mirror target that an InferenceService routes (a challenger's own revision
or Deployment, or a Standard-mode canary entry of the champion itself) is that target: one
pod, one set of counters, the routed model, since the mirror reaches the pods behind a
Service.

With a ``logger_url``, each mirrored request answered 200 by both sides yields two response
CloudEvents with the same id, one from the champion's InferenceService and one from the
InferenceService routing the mirror target, as KServe's payload logger would send them
(batched; :mod:`testbed.payload_logger`). When the mirror target belongs to the champion
itself (a Standard-mode dark launch) both would carry the champion's name, and no events
are sent: output comparison is defined for challenger InferenceServices only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate, repeat
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal
from urllib.parse import unquote

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from canary.log import get_logger
from testbed.aggregate import Categorical, binomial, clipped_normal_buckets, lognormal_buckets
from testbed.behaviour import BehaviourBook, BehaviourWatcher, ModelBehaviour
from testbed.payload_logger import EventSender, LoggerEvent

__all__ = [
    "COARSE_LATENCY_BUCKETS_SECONDS",
    "FRAUD_SCORE_BUCKETS",
    "LATENCY_BUCKETS_SECONDS",
    "LATENCY_LAYOUTS",
    "MODES",
    "PROFILES",
    "LatencyLayout",
    "RequestCounts",
    "Target",
    "TrafficSimulator",
]

_log = get_logger("sandbox.traffic")


def _e24_bounds(first_decade: int, last_decade: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """E24 preferred numbers (24 per decade, each about 10 % above the last), in seconds and
    in milliseconds, from ``10**first_decade`` s up to and including ``10**last_decade`` s.

    Both tuples are computed from integer microseconds, so the millisecond bounds are the
    exact decimal numbers (1.1, 1.2, ...) rather than products with rounding noise."""
    mantissas = (10, 11, 12, 13, 15, 16, 18, 20, 22, 24, 27, 30, 33, 36, 39, 43, 47, 51, 56,
                 62, 68, 75, 82, 91)  # fmt: skip
    micros = [m * 10 ** (d + 5) for d in range(first_decade, last_decade) for m in mantissas]
    micros.append(10 ** (last_decade + 6))
    return tuple(us / 1e6 for us in micros), tuple(us / 1e3 for us in micros)


LATENCY_BUCKETS_SECONDS, LATENCY_BUCKETS_MS = _e24_bounds(-3, 1)
"""Upper bounds of every latency histogram: the E24 series from 1 ms to 10 s (97 buckets, a
ratio of about 1.1 between neighbours; the millisecond histograms use the same bounds ×1000).

These are much finer than what real deployments expose. OpenTelemetry's recommended
``http.server.request.duration`` bounds, for example, jump 5, 10, 25, 50, 75, 100, 250 ms, and
Istio's default millisecond bounds (1, 5, 10, 25, 50, 100, 250, ...) are as coarse, so
``histogram_quantile`` on a real cluster can be off by tens of percent. Here the
interpolation error of ``histogram_quantile(0.99, ...)`` over a lognormal is at most 3 % for
p99 between 5 ms and 2 s when the median is at most 0.6 × p99 (4 % at 0.7 ×, 6 % at 0.8 ×,
9 % at 0.9 ×), which leaves room for sampling error in a 10 % tolerance. Like Knative's, the
bounds stop at 10 s."""

COARSE_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""The ``coarse`` layout: OpenTelemetry's recommended ``http.server.request.duration``
bounds, which are also the Prometheus Python client's default ones (the KServe model
server's histograms); the millisecond histograms use them ×1000. 15 buckets where the
``fine`` layout has 98: a benchmark of many InferenceServices uses it so that Prometheus
holds, and the controller reads, as many bucket series as a real deployment's exporters
give, not six times as many."""

LATENCY_LAYOUTS: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fine": (LATENCY_BUCKETS_SECONDS, LATENCY_BUCKETS_MS),
    "coarse": (
        COARSE_LATENCY_BUCKETS_SECONDS,
        tuple(round(b * 1000.0, 6) for b in COARSE_LATENCY_BUCKETS_SECONDS),
    ),
}
"""The latency histograms' bounds in seconds and in milliseconds, by layout name
(``fine``: the default)."""

LatencyLayout = Literal["fine", "coarse"]

FRAUD_SCORE_BUCKETS: tuple[float, ...] = tuple(i / 20 for i in range(1, 21))
"""Upper bounds of the ``fraud_score`` histogram: 0.05, 0.10, ..., 1.0."""

_STATUS_OK = 200
_STATUS_ERROR = 500
_KNATIVE_REVISION_SUFFIX = re.compile(r"-\d{5}$")
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names
_MAX_TICK_SECONDS = 2.0  # after a stall, generate at most this much traffic at once
_SCORE_OUTCOMES = ("true_positive", "false_negative", "false_positive", "true_negative")
# A standard normal from a uniform in (0, 1): a C function behind a thin method, several times
# faster than random.gauss (Box-Muller in Python), which dominated the hot loop.
_NORMAL_FROM_UNIFORM = NormalDist().inv_cdf

PROFILES = ("knative-otel", "knative-opencensus", "istio", "kserve-model-server", "business")
"""The groups of series a target can expose (the module doc's table); all by default."""

MODES = ("per-request", "aggregate")
"""How requests are generated: each one drawn (latency, status, decision), or each
target's counts per tick drawn in aggregate (:mod:`testbed.aggregate`; mirrored requests
are still drawn one by one, as the copies share their draws)."""

TrafficMode = Literal["per-request", "aggregate"]

# HELP texts, shared by the collector and the fast renderer (the scrape is the same text)
_HELP = {
    "target_info": "Target metadata",
    "kn_serving_invocation_duration_seconds": "The duration of task execution.",
    "http_server_request_duration_seconds": "Duration of HTTP server requests.",
    "revision_request_count": "The number of requests",
    "revision_request_latencies": "The response latencies",
    "istio_requests": "Total requests.",
    "istio_request_duration_milliseconds": "Request duration.",
    "request_predict_seconds": "predict request latency",
    "fraud_decisions": "Fraud decisions by true outcome.",
    "fraud_score": "Fraud score of each decision.",
}


@dataclass(frozen=True)
class Target:
    """Where an InferenceService sends a share of its traffic.

    ``revision`` is the Knative revision name (``scorer-predictor-00002``) in Knative mode,
    or the Deployment name (``scorer-predictor``, ``scorer-canary-predictor``) in Standard
    mode. ``storage_uri`` selects the model's behaviour in the :class:`BehaviourBook`."""

    revision: str
    percent: int
    storage_uri: str | None = None
    mode: Literal["knative", "standard"] = "knative"

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"percent must be within 0..100, got {self.percent}")
        if not self.revision or "/" in self.revision:
            raise ValueError(f"invalid revision or workload name {self.revision!r}")


@dataclass(frozen=True)
class RequestCounts:
    """What one target has served since its (simulated) pod started."""

    requests: int
    errors: int
    mirrored: int  # of ``requests``, how many were shadow copies

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else math.nan


def _generated(seed: str, length: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_POD_ALPHABET[b % len(_POD_ALPHABET)] for b in digest[:length])


@dataclass
class _Endpoint:
    """One simulated pod: its identity, its counters, and its registry."""

    namespace: str
    isvc: str
    name: str  # revision (Knative) or Deployment (Standard)
    storage_uri: str | None
    mode: Literal["knative", "standard"]
    pod_ip: str
    lock: threading.Lock
    requests: int = 0
    errors: int = 0
    mirrored: int = 0
    latency_counts: dict[int, list[int]] = field(default_factory=dict)  # per status, per bucket
    latency_sums: dict[int, float] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    score_counts: list[int] = field(default_factory=lambda: [0] * (len(FRAUD_SCORE_BUCKETS) + 1))
    score_sum: float = 0.0
    profiles: frozenset[str] = frozenset(PROFILES)
    latency_bounds: tuple[float, ...] = LATENCY_BUCKETS_SECONDS  # seconds, +Inf not included
    latency_bounds_ms: tuple[float, ...] = LATENCY_BUCKETS_MS
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    version: int = 0  # bumped by every change of the counters (the scrape's cache key)
    rendered: tuple[int, bytes] | None = None  # the last scrape text, and its version
    renderer: _Renderer | None = None

    @cached_property
    def le_seconds(self) -> tuple[str, ...]:
        """The ``le`` texts of the latency histograms in seconds, ``+Inf`` last."""
        return (*map(_go_float, self.latency_bounds), "+Inf")

    @cached_property
    def le_ms(self) -> tuple[str, ...]:
        """The same bounds in milliseconds (OpenCensus and Istio)."""
        return (*map(_go_float, self.latency_bounds_ms), "+Inf")

    @cached_property
    def pod(self) -> str:
        """``<deployment>-<replicaset hash>-<suffix>``, stable for one model version."""
        seed = f"{self.namespace}/{self.name}/{self.storage_uri}"
        return f"{self.workload}-{_generated(seed, 10)}-{_generated(seed + '/pod', 5)}"

    @property
    def workload(self) -> str:
        """Istio's ``destination_workload``: the Deployment name."""
        return f"{self.name}-deployment" if self.mode == "knative" else self.name

    @property
    def configuration(self) -> str:
        return _KNATIVE_REVISION_SUFFIX.sub("", self.name)

    @property
    def path(self) -> str:
        return f"/metrics/{self.namespace}/{self.name}"

    def scrape_labels(self) -> dict[str, str]:
        """Target labels as a PodMonitor's relabeling would add them."""
        labels = {"namespace": self.namespace, "pod": self.pod}
        if self.mode == "knative":
            labels.update(container="queue-proxy", revision=self.name)
            port = 9091
        else:
            labels.update(container="kserve-container", app=f"isvc.{self.name}")
            port = 8080
        labels["instance"] = f"{self.pod_ip}:{port}"
        return labels

    def counts(self) -> RequestCounts:
        with self.lock:
            return RequestCounts(self.requests, self.errors, self.mirrored)


def _go_float(value: float) -> str:
    """A bound as Go clients print ``le`` (``1``, ``0.005``), not Python's ``1.0``."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


_LE_SCORE = (*map(_go_float, FRAUD_SCORE_BUCKETS), "+Inf")


def _cumulative(counts: Sequence[int], le: Sequence[str]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one above every bound) as cumulative ``(le, count)``."""
    return list(zip(le, map(float, accumulate(counts)), strict=True))


class _EndpointCollector(Collector):
    """Renders one endpoint's counters as the metric families of every profile."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._ep = endpoint

    def collect(self) -> Iterator[Metric]:
        ep = self._ep
        with ep.lock:
            latency = {code: list(counts) for code, counts in sorted(ep.latency_counts.items())}
            sums = dict(ep.latency_sums)
            decisions = dict(sorted(ep.decisions.items()))
            scores = list(ep.score_counts)
            score_sum = ep.score_sum
        per_code = [
            (str(code), counts, sums[code], _cumulative(counts, ep.le_seconds))
            for code, counts in latency.items()
        ]
        exposed = ep.profiles
        if ep.mode == "knative":
            if "knative-otel" in exposed:
                yield from self._knative_otel(per_code)
            if "knative-opencensus" in exposed:
                yield from self._knative_opencensus(latency, sums)
        if "istio" in exposed:
            yield from self._istio(latency, sums)
        if "kserve-model-server" in exposed:
            yield from self._model_server(latency, sums)
        if "business" in exposed:
            yield from self._business(decisions, scores, score_sum)

    def _knative_otel(
        self, per_code: list[tuple[str, list[int], float, list[tuple[str, float]]]]
    ) -> Iterator[Metric]:
        ep = self._ep
        info = GaugeMetricFamily(
            "target_info",
            _HELP["target_info"],
            labels=[
                "k8s_namespace_name",
                "k8s_pod_name",
                "kn_configuration_name",
                "kn_revision_name",
                "kn_service_name",
            ],
        )
        info.add_metric([ep.namespace, ep.pod, ep.configuration, ep.name, ep.configuration], 1)
        yield info
        invocation = HistogramMetricFamily(
            "kn_serving_invocation_duration_seconds",
            _HELP["kn_serving_invocation_duration_seconds"],
            labels=["http_response_status_code"],
        )
        server = HistogramMetricFamily(
            "http_server_request_duration_seconds",
            _HELP["http_server_request_duration_seconds"],
            labels=["http_request_method", "http_response_status_code"],
        )
        for code, _counts, total, buckets in per_code:
            invocation.add_metric([code], buckets, total)
            server.add_metric(["POST", code], buckets, total)
        yield invocation
        yield server

    def _knative_opencensus(
        self, latency: dict[int, list[int]], sums: dict[int, float]
    ) -> Iterator[Metric]:
        ep = self._ep
        names = [
            "namespace_name",
            "configuration_name",
            "revision_name",
            "response_code",
            "response_code_class",
        ]
        # OpenCensus' exporter names this counter without ``_total``; prometheus_client's
        # counter family would add the suffix, so it is exposed untyped under its real name.
        count = Metric("revision_request_count", _HELP["revision_request_count"], "unknown")
        latencies = HistogramMetricFamily(
            "revision_request_latencies", _HELP["revision_request_latencies"], labels=names
        )
        for code, counts in latency.items():
            values = [ep.namespace, ep.configuration, ep.name, str(code), f"{code // 100}xx"]
            count.add_sample("revision_request_count", dict(zip(names, values, strict=True)),
                             float(sum(counts)))  # fmt: skip
            latencies.add_metric(values, _cumulative(counts, ep.le_ms), sums[code] * 1000.0)
        yield count
        yield latencies

    def _istio(self, latency: dict[int, list[int]], sums: dict[int, float]) -> Iterator[Metric]:
        ep = self._ep
        names = [
            "reporter",
            "destination_workload",
            "destination_workload_namespace",
            "response_code",
        ]
        total = CounterMetricFamily("istio_requests", _HELP["istio_requests"], labels=names)
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds",
            _HELP["istio_request_duration_milliseconds"],
            labels=names,
        )
        for code, counts in latency.items():
            values = ["destination", ep.workload, ep.namespace, str(code)]
            total.add_metric(values, float(sum(counts)))
            duration.add_metric(values, _cumulative(counts, ep.le_ms), sums[code] * 1000.0)
        yield total
        yield duration

    def _model_server(
        self, latency: dict[int, list[int]], sums: dict[int, float]
    ) -> Iterator[Metric]:
        predict = HistogramMetricFamily(
            "request_predict_seconds", _HELP["request_predict_seconds"], labels=["model_name"]
        )
        if latency:
            merged = [sum(column) for column in zip(*latency.values(), strict=True)]
            predict.add_metric(
                [self._ep.isvc],
                _cumulative(merged, self._ep.le_seconds),
                sum(sums.values()),
            )
        yield predict

    def _business(
        self, decisions: dict[tuple[str, str], int], scores: list[int], score_sum: float
    ) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "fraud_decisions", _HELP["fraud_decisions"], labels=["decision", "outcome"]
        )
        for (decision, outcome), count in decisions.items():
            family.add_metric([decision, outcome], float(count))
        yield family
        score = HistogramMetricFamily("fraud_score", _HELP["fraud_score"])
        if decisions:
            score.add_metric([], _cumulative(scores, _LE_SCORE), score_sum)
        yield score


def _float_text(value: float) -> str:
    """A sample value as ``generate_latest`` prints it (prometheus_client's
    ``floatToGoString``: Python's repr, but Go's exponent form from a million on)."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _count_text(value: int) -> str:
    """A count as :func:`_float_text` prints it, fast for the usual case (a whole number
    below a million prints as ``123.0``)."""
    return f"{value}.0" if 0 <= value < 1_000_000 else _float_text(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: Sequence[tuple[str, str]]) -> str:
    """Labels sorted by name and escaped as ``generate_latest`` writes them."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels))


class _Renderer:
    """One endpoint's scrape, written as text directly: byte for byte what
    ``generate_latest`` makes of its :class:`_EndpointCollector` (a unit test compares
    them), at a fraction of the cost. The label text of every series is built once; a
    scrape then joins those with the current counts."""

    def __init__(self, ep: _Endpoint) -> None:
        self._ep = ep
        self._series: dict[tuple[str, int], list[str]] = {}  # (family, code) -> line heads

    def _histogram_heads(
        self, name: str, labels: Sequence[tuple[str, str]], les: Sequence[str]
    ) -> list[str]:
        """The heads (everything before the value) of a histogram series' bucket lines,
        then of its ``_count`` and ``_sum``."""
        inner = _label_text(labels)
        heads = [f"{name}_bucket{{{_label_text([*labels, ('le', le)])}}} " for le in les]
        braces = f"{{{inner}}}" if inner else ""
        heads.append(f"{name}_count{braces} ")
        heads.append(f"{name}_sum{braces} ")
        return heads

    def _heads(self, family: str, code: int) -> list[str]:
        found = self._series.get((family, code))
        if found is None:
            found = self._series[(family, code)] = self._build(family, code)
        return found

    def _build(self, family: str, code: int) -> list[str]:
        ep = self._ep
        status = str(code)
        if family == "kn_serving_invocation_duration_seconds":
            return self._histogram_heads(family, [("http_response_status_code", status)],
                                         ep.le_seconds)  # fmt: skip
        if family == "http_server_request_duration_seconds":
            labels = [("http_request_method", "POST"), ("http_response_status_code", status)]
            return self._histogram_heads(family, labels, ep.le_seconds)
        opencensus = [
            ("namespace_name", ep.namespace),
            ("configuration_name", ep.configuration),
            ("revision_name", ep.name),
            ("response_code", status),
            ("response_code_class", f"{code // 100}xx"),
        ]
        if family == "revision_request_count":
            return [f"revision_request_count{{{_label_text(opencensus)}}} "]
        if family == "revision_request_latencies":
            return self._histogram_heads(family, opencensus, ep.le_ms)
        istio = [
            ("reporter", "destination"),
            ("destination_workload", ep.workload),
            ("destination_workload_namespace", ep.namespace),
            ("response_code", status),
        ]
        if family == "istio_requests_total":
            return [f"istio_requests_total{{{_label_text(istio)}}} "]
        if family == "istio_request_duration_milliseconds":
            return self._histogram_heads(family, istio, ep.le_ms)
        if family == "request_predict_seconds":
            return self._histogram_heads(family, [("model_name", ep.isvc)], ep.le_seconds)
        if family == "fraud_score":
            return self._histogram_heads(family, [], _LE_SCORE)
        raise AssertionError(f"no series heads for {family}")  # pragma: no cover

    @staticmethod
    def _preamble(out: list[str], name: str, kind: str) -> None:
        out.append(f"# HELP {name} {_HELP[name.removesuffix('_total')]}\n# TYPE {name} {kind}\n")

    @staticmethod
    def _histogram(out: list[str], heads: list[str], counts: list[str], total: str) -> None:
        out.extend(map("".join, zip(heads, counts, repeat("\n"))))  # buckets, then _count
        out.append(f"{heads[-1]}{total}\n")

    def render(self) -> bytes:
        ep = self._ep
        with ep.lock:
            version = ep.version
            if ep.rendered is not None and ep.rendered[0] == version:
                return ep.rendered[1]
            latency = {code: list(counts) for code, counts in sorted(ep.latency_counts.items())}
            sums = dict(ep.latency_sums)
            decisions = dict(sorted(ep.decisions.items()))
            scores = list(ep.score_counts)
            score_sum = ep.score_sum
        exposed = ep.profiles
        # cumulative counts as text, once per status code; the last is the _count
        cumulative = {
            code: [*map(_count_text, accumulate(counts))] for code, counts in latency.items()
        }
        for texts in cumulative.values():
            texts.append(texts[-1])
        out: list[str] = []
        histogram = self._histogram
        if ep.mode == "knative" and "knative-otel" in exposed:
            self._preamble(out, "target_info", "gauge")
            labels = _label_text([
                ("k8s_namespace_name", ep.namespace), ("k8s_pod_name", ep.pod),
                ("kn_configuration_name", ep.configuration), ("kn_revision_name", ep.name),
                ("kn_service_name", ep.configuration),
            ])  # fmt: skip
            out.append(f"target_info{{{labels}}} 1.0\n")
            for family in (
                "kn_serving_invocation_duration_seconds",
                "http_server_request_duration_seconds",
            ):
                self._preamble(out, family, "histogram")
                for code in latency:
                    histogram(out, self._heads(family, code), cumulative[code],
                              _float_text(sums[code]))  # fmt: skip

        def count_and_milliseconds(counter: str, counter_kind: str, latencies: str) -> None:
            """A request counter per status code, and a latency histogram in milliseconds."""
            self._preamble(out, counter, counter_kind)
            for code in latency:
                out.append(f"{self._heads(counter, code)[0]}{cumulative[code][-1]}\n")
            self._preamble(out, latencies, "histogram")
            for code in latency:
                histogram(out, self._heads(latencies, code), cumulative[code],
                          _float_text(sums[code] * 1000.0))  # fmt: skip

        if ep.mode == "knative" and "knative-opencensus" in exposed:
            count_and_milliseconds(
                "revision_request_count", "untyped", "revision_request_latencies"
            )
        if "istio" in exposed:
            count_and_milliseconds(
                "istio_requests_total", "counter", "istio_request_duration_milliseconds"
            )
        if "kserve-model-server" in exposed:
            self._preamble(out, "request_predict_seconds", "histogram")
            if latency:
                merged = [sum(column) for column in zip(*latency.values(), strict=True)]
                texts = [*map(_count_text, accumulate(merged))]
                texts.append(texts[-1])
                histogram(out, self._heads("request_predict_seconds", 0), texts,
                          _float_text(sum(sums.values())))  # fmt: skip
        if "business" in exposed:
            self._preamble(out, "fraud_decisions_total", "counter")
            for (decision, outcome), count in decisions.items():
                labels = _label_text([("decision", decision), ("outcome", outcome)])
                out.append(f"fraud_decisions_total{{{labels}}} {_count_text(count)}\n")
            self._preamble(out, "fraud_score", "histogram")
            if decisions:
                texts = [*map(_count_text, accumulate(scores))]
                texts.append(texts[-1])
                histogram(out, self._heads("fraud_score", 0), texts, _float_text(score_sum))
        body = "".join(out).encode()
        with ep.lock:
            if ep.version == version:
                ep.rendered = (version, body)
        return body


@dataclass(frozen=True)
class _Service:
    """Routing of one InferenceService."""

    targets: tuple[Target, ...] = ()
    mirror: Target | None = None
    mirror_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class _Latent:
    """The shared draws of mirrored requests, one entry per request: whether it is fraud,
    the uniform a decision compares with a rate, the standard normal of the score."""

    fraud: list[bool]
    uniform: list[float]
    normal: list[float]


# What a model answered to a shared request: (declined, score), or None for an error.
_Answer = tuple[bool, float] | None


BehaviourSource = BehaviourBook | BehaviourWatcher | Callable[[], BehaviourBook]


class TrafficSimulator:
    """Generates requests for InferenceServices and exposes each target's metrics.

    ``behaviour`` is a fixed book, a :class:`BehaviourWatcher` (re-read when the file
    changes) or any callable returning the current book. ``tick(dt)`` generates ``dt``
    seconds of traffic; ``start()`` does that from a background thread every
    ``tick_interval`` seconds and serves the metrics. Inject ``rng`` for reproducible runs.
    ``logger_url`` (or :meth:`set_logger_url`): where the payload-logger events of mirrored
    requests go (module doc); ``None`` sends none. ``mode`` (:data:`MODES`): each request
    drawn (the default), or each target's counts per tick drawn in aggregate, for
    thousands of InferenceServices (the same series, labels and counter semantics).
    ``profiles`` (:data:`PROFILES`; default all): the groups of series each target exposes,
    fewer for a Prometheus that must hold thousands of targets. ``latency_buckets``
    (:data:`LATENCY_LAYOUTS`): the latency histograms' bounds, ``fine`` (the default, for
    accurate quantiles) or ``coarse`` (what real exporters send).
    """

    def __init__(
        self,
        behaviour: BehaviourSource,
        sd_file: Path,
        *,
        rng: random.Random | None = None,
        host: str = "127.0.0.1",
        tick_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        logger_url: str | None = None,
        mode: TrafficMode = "per-request",
        profiles: Collection[str] | None = None,
        latency_buckets: LatencyLayout = "fine",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown traffic mode {mode!r}; allowed: {', '.join(MODES)}")
        if latency_buckets not in LATENCY_LAYOUTS:
            raise ValueError(
                f"unknown latency bucket layout {latency_buckets!r}; allowed: "
                f"{', '.join(LATENCY_LAYOUTS)}"
            )
        self._bounds = LATENCY_LAYOUTS[latency_buckets]
        unknown = sorted(set(profiles or ()) - set(PROFILES))
        if unknown or (profiles is not None and not profiles):
            raise ValueError(
                f"unknown or no profiles {unknown or []}; allowed: {', '.join(PROFILES)}"
            )
        self.mode: TrafficMode = mode
        self.profiles = frozenset(PROFILES if profiles is None else profiles)
        self._sd_written: list[dict[str, Any]] | None = None
        if isinstance(behaviour, BehaviourBook):
            book = behaviour
            self._behaviour: Callable[[], BehaviourBook] = lambda: book
        elif isinstance(behaviour, BehaviourWatcher):
            self._behaviour = behaviour.current
        else:
            self._behaviour = behaviour
        self._sd_file = sd_file
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - simulation
        self._host = host
        self._tick_interval = tick_interval
        self._clock = clock
        self._lock = threading.RLock()  # routes and endpoint membership; ticks hold it
        self._services: dict[tuple[str, str], _Service] = {}
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._carry: dict[tuple[str, str], float] = {}  # fractions of a request left over
        self._next_ip = 0
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._ticks = 0
        self._generated = 0
        self._tick_seconds = 0.0  # thread CPU time spent in tick()
        self._sender = EventSender(logger_url) if logger_url else None

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the traffic simulator is not serving; call bind() or start()")
        port: int = self._server.server_address[1]
        return port

    @property
    def sd_file(self) -> Path:
        return self._sd_file

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def logger(self) -> EventSender | None:
        """The payload-logger events' queue and sender, while a logger URL is set."""
        return self._sender

    def stats(self) -> dict[str, float]:
        """Ticks run, requests generated, CPU seconds the ticks used (thread time), and the
        payload-logger events queued, sent, dropped (queue full) and failed (POST failed)."""
        with self._lock:
            stats: dict[str, float] = {
                "ticks": self._ticks,
                "requests": self._generated,
                "tick_cpu_seconds": self._tick_seconds,
            }
            sender = self._sender
        if sender is not None:
            sent = sender.stats()
            stats.update(
                logger_events_queued=sent.queued,
                logger_events_sent=sent.sent,
                logger_events_dropped=sent.dropped,
                logger_events_failed=sent.failed,
            )
        return stats

    def set_logger_url(self, url: str | None) -> None:
        """Send payload-logger events to ``url`` from now on (``None``: send none). While
        the simulator runs, events still queued for the previous URL are sent there first;
        otherwise they are discarded with the previous queue."""
        new = EventSender(url) if url else None
        with self._lock:
            old, self._sender = self._sender, new
            if new is not None and self._threads:
                new.start()
        if old is not None:
            old.stop()

    # ------------------------------------------------------------------ routing

    def set_routes(self, namespace: str, isvc: str, targets: Sequence[Target]) -> None:
        """Route ``isvc``'s traffic to ``targets`` by their percent (replacing any earlier
        routes). Targets no longer listed disappear, as their pods would; a target listed at
        0 % stays up and receives nothing. A revision listed twice (Knative allows that, e.g.
        once as ``latestRevision`` and once by a tag) gets the sum of its percents."""
        merged: dict[str, Target] = {}
        for target in targets:
            seen = merged.get(target.revision)
            if seen is None:
                merged[target.revision] = target
            elif (seen.storage_uri, seen.mode) != (target.storage_uri, target.mode):
                raise ValueError(
                    f"{namespace}/{isvc} lists {target.revision} twice with different models"
                )
            else:
                merged[target.revision] = replace(seen, percent=seen.percent + target.percent)
        with self._lock:
            current = self._services.get((namespace, isvc), _Service())
            self._update(namespace, isvc, replace(current, targets=tuple(merged.values())))

    def clear_routes(self, namespace: str, isvc: str) -> None:
        """Forget ``isvc``: no more traffic, and its targets (mirror included) disappear."""
        with self._lock:
            self._update(namespace, isvc, None)

    def set_mirror(self, namespace: str, isvc: str, target: Target | None, percent: float) -> None:
        """Also send a copy of ``percent`` % (0..100, fractions allowed) of ``isvc``'s live
        requests to ``target`` (whose own ``percent`` is ignored). The copies decide on the
        live requests' draws and count on the mirror target only; the primary targets'
        metrics do not change. A target an InferenceService routes is shared with its
        routes (same pod and counters; the routed model wins should ``target`` name another
        storage URI, as the pods behind a Service are what its routing runs); a target
        nobody routes is a pod of its own, which only one InferenceService may mirror to.
        ``target=None`` stops mirroring."""
        if not 0 <= percent <= 100:
            raise ValueError(f"mirror percent must be within 0..100, got {percent}")
        with self._lock:
            current = self._services.get((namespace, isvc), _Service())
            share = percent if target is not None else 0
            self._update(namespace, isvc, replace(current, mirror=target, mirror_percent=share))

    def routes(self, namespace: str, isvc: str) -> tuple[Target, ...]:
        with self._lock:
            service = self._services.get((namespace, isvc))
            return service.targets if service is not None else ()

    def registry(self, namespace: str, name: str) -> CollectorRegistry:
        """The registry a target's scrape reads (``name``: revision or Deployment)."""
        with self._lock:
            return self._endpoint(namespace, name).registry

    def counts(self, namespace: str, name: str) -> RequestCounts:
        """Requests and errors a target has served so far."""
        with self._lock:
            endpoint = self._endpoint(namespace, name)
        return endpoint.counts()

    def scrape_targets(self) -> list[dict[str, Any]]:
        """The ``file_sd`` entries: one per target, or none while not serving."""
        if self._server is None:
            return []
        address = f"{self._host}:{self.port}"
        with self._lock:
            endpoints = sorted(self._endpoints.values(), key=lambda e: (e.namespace, e.name))
            return [
                {
                    "targets": [address],
                    "labels": {"__metrics_path__": ep.path, **ep.scrape_labels()},
                }
                for ep in endpoints
            ]

    def _endpoint(self, namespace: str, name: str) -> _Endpoint:
        try:
            return self._endpoints[(namespace, name)]
        except KeyError:
            raise KeyError(f"no target {name!r} in namespace {namespace!r}") from None

    def _update(self, namespace: str, isvc: str, service: _Service | None) -> None:
        """Replace one service's routing, then create endpoints for new targets, drop those
        no longer routed or mirrored, and rewrite the service-discovery file. Nothing changes
        if the new routing is refused. Callers hold the lock.

        A target belongs to the InferenceService that routes it; a mirror target nobody
        routes belongs to the InferenceService mirroring to it."""
        services = dict(self._services)
        if service is None:
            services.pop((namespace, isvc), None)
            self._carry.pop((namespace, isvc), None)
        else:
            services[(namespace, isvc)] = service
        wanted: dict[tuple[str, str], tuple[str, Target]] = {}
        for (ns, name), routing in services.items():
            for target in routing.targets:
                key = (ns, target.revision)
                owner = wanted.get(key)
                if owner is not None and owner[0] != name:
                    raise ValueError(
                        f"{ns}/{target.revision} is routed by both {owner[0]} and {name}"
                    )
                wanted[key] = (name, target)
        mirrored: dict[tuple[str, str], tuple[str, Target]] = {}
        for (ns, name), routing in services.items():
            copy_to = routing.mirror
            if copy_to is None or (ns, copy_to.revision) in wanted:
                continue  # a routed target: the copies share its endpoint
            key = (ns, copy_to.revision)
            owner = mirrored.get(key)
            if owner is not None and owner[0] != name:
                raise ValueError(
                    f"{ns}/{copy_to.revision} is mirrored to by both {owner[0]} and {name} "
                    "and routed by neither"
                )
            mirrored[key] = (name, copy_to)
        wanted.update(mirrored)
        self._services = services
        moved = False  # whether a target appeared or went: only then is the file rewritten
        for key in list(self._endpoints):
            current = self._endpoints[key]
            spec = wanted.get(key)
            if spec is None or (spec[0], spec[1].storage_uri, spec[1].mode) != (
                current.isvc,
                current.storage_uri,
                current.mode,
            ):
                del self._endpoints[key]  # the pod goes away (or is replaced)
                moved = True
        for key, (name, target) in wanted.items():
            if key not in self._endpoints:
                self._endpoints[key] = self._new_endpoint(key[0], name, target)
                moved = True
        if self._server is not None and moved:
            self._write_sd_file()

    def _new_endpoint(self, namespace: str, isvc: str, target: Target) -> _Endpoint:
        self._next_ip += 1
        ip = f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 2}"
        endpoint = _Endpoint(
            namespace, isvc, target.revision, target.storage_uri, target.mode, ip, threading.Lock(),
            profiles=self.profiles, latency_bounds=self._bounds[0],
            latency_bounds_ms=self._bounds[1],
        )  # fmt: skip
        endpoint.registry.register(_EndpointCollector(endpoint))
        endpoint.renderer = _Renderer(endpoint)
        return endpoint

    def _write_sd_file(self) -> None:
        """Replace the service-discovery file atomically (Prometheus never reads half);
        not when its entries are those last written (a new split moves no target)."""
        entries = self.scrape_targets()
        if entries == self._sd_written and self._sd_file.exists():
            return
        self._sd_written = entries
        self._sd_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._sd_file.parent, prefix=".targets-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                # one entry a line: readable, and the C encoder (indent= would not use it)
                handle.write("[\n" + ",\n".join(json.dumps(e, sort_keys=True) for e in entries))
                handle.write("\n]\n")
            os.chmod(tmp, 0o644)  # Prometheus may run as another user
            os.replace(tmp, self._sd_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ traffic

    def tick(self, dt_seconds: float) -> int:
        """Generate ``dt_seconds`` of traffic for every InferenceService; returns how many
        requests (mirrored copies included) were generated."""
        if dt_seconds < 0:
            raise ValueError("dt_seconds must not be negative")
        started = time.thread_time()
        book = self._behaviour()
        generated = 0
        with self._lock:
            sender = self._sender
            events: list[LoggerEvent] | None = [] if sender is not None else None
            for (namespace, isvc), service in self._services.items():
                generated += self._tick_service(book, namespace, isvc, service, dt_seconds, events)
            self._ticks += 1
            self._generated += generated
            self._tick_seconds += time.thread_time() - started
        if sender is not None and events:
            sender.offer(events)
        return generated

    def _tick_service(
        self,
        book: BehaviourBook,
        namespace: str,
        isvc: str,
        service: _Service,
        dt: float,
        events: list[LoggerEvent] | None,
    ) -> int:
        carry = self._carry.get((namespace, isvc), 0.0) + book.rate_for(namespace, isvc) * dt
        live = int(carry)
        self._carry[(namespace, isvc)] = carry - live
        routed = [t for t in service.targets if t.percent > 0]
        if live == 0 or not routed:
            return 0
        shares = (
            self._split(live, [t.percent for t in routed])
            if self.mode == "per-request"
            else _shares(self._rng, live, [t.percent for t in routed])
        )
        mirror: _Endpoint | None = None
        mirror_behaviour = book.default
        share, paired = 0.0, False
        if service.mirror is not None and service.mirror_percent > 0:
            mirror = self._endpoints[(namespace, service.mirror.revision)]
            mirror_behaviour = book.for_model(mirror.storage_uri)  # the routed model, if any
            share = service.mirror_percent / 100
            # a dark launch logs under the champion's own name: no pairs to compare
            paired = events is not None and mirror.isvc != isvc
        copies = 0
        for target, count in zip(routed, shares, strict=True):
            if not count:
                continue
            endpoint = self._endpoints[(namespace, target.revision)]
            behaviour = book.for_model(target.storage_uri)
            mirrored = self._binomial(count, share) if mirror is not None else 0
            if mirror is None or not mirrored:
                if self.mode == "aggregate":
                    self._serve_aggregate(endpoint, behaviour, count)
                else:
                    self._serve(endpoint, behaviour, count)
                continue
            copies += mirrored
            # the first `mirrored` of the `count` live requests are copied (all are alike)
            latent = self._latent(mirrored, behaviour.business.fraud_rate)
            if not paired:
                self._serve(endpoint, behaviour, count, latent)
                self._serve(mirror, mirror_behaviour, mirrored, latent, mirrored=True)
                continue
            live_answers: list[_Answer] = []
            copy_answers: list[_Answer] = []
            self._serve(endpoint, behaviour, count, latent, answers=live_answers)
            self._serve(
                mirror, mirror_behaviour, mirrored, latent, mirrored=True, answers=copy_answers
            )
            assert events is not None
            self._log_pairs(events, endpoint, mirror, live_answers, copy_answers)
        return live + copies

    def _split(self, n: int, percents: Sequence[int]) -> list[int]:
        """A multinomial draw: ``n`` requests over targets weighted by ``percents``."""
        if len(percents) == 1:
            return [n]
        cumulative: list[float] = []
        running = 0.0
        for percent in percents:
            running += percent
            cumulative.append(running)
        shares = [0] * len(percents)
        rnd = self._rng.random
        for _ in range(n):
            shares[bisect_right(cumulative, rnd() * running)] += 1
        return shares

    def _binomial(self, n: int, p: float) -> int:
        if p >= 1:
            return n
        if self.mode == "aggregate":
            return binomial(self._rng, n, p)
        rnd = self._rng.random
        return sum(1 for _ in range(n) if rnd() < p)

    def _latent(self, n: int, fraud_rate: float) -> _Latent:
        """The shared draws of ``n`` requests (fraud flags drawn with ``fraud_rate``)."""
        rnd = self._rng.random
        normal = _NORMAL_FROM_UNIFORM
        return _Latent(
            [rnd() < fraud_rate for _ in range(n)],
            [rnd() for _ in range(n)],
            [normal(rnd() or 0.5) for _ in range(n)],  # random() may return 0.0, never 1.0
        )

    def _log_pairs(
        self,
        events: list[LoggerEvent],
        live: _Endpoint,
        mirror: _Endpoint,
        live_answers: list[_Answer],
        copy_answers: list[_Answer],
    ) -> None:
        """Two response events with one fresh id for each shared request both answered
        200 (KServe logs nothing else)."""
        stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        bits = self._rng.getrandbits
        for ours, theirs in zip(live_answers, copy_answers, strict=True):
            if ours is None or theirs is None:
                continue
            # a random (version 4) UUID's text, without the cost of building a uuid.UUID
            digits = f"{bits(128):032x}"
            request_id = (
                f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{digits[16:20]}-{digits[20:]}"
            )
            for endpoint, (declined, score) in ((live, ours), (mirror, theirs)):
                events.append(
                    LoggerEvent(
                        request_id,
                        endpoint.namespace,
                        endpoint.isvc,
                        endpoint.pod,
                        "decline" if declined else "approve",
                        score,
                        stamp,
                    )
                )

    def _serve(
        self,
        ep: _Endpoint,
        behaviour: ModelBehaviour,
        n: int,
        latent: _Latent | None = None,
        *,
        mirrored: bool = False,
        answers: list[_Answer] | None = None,
    ) -> None:
        """Serve ``n`` requests on ``ep``: latency, status and fraud decision for each. The
        first ``len(latent)`` decide on those shared draws (unless the model's decision
        noise redraws the uniform), the rest on draws of their own; ``answers`` receives
        the outcome of each shared one. This is the hot loop, so it works on local
        variables and updates the endpoint once."""
        rnd = self._rng.random
        normal = _NORMAL_FROM_UNIFORM
        exp = math.exp
        mu, sigma = behaviour.latency.mu, behaviour.latency.sigma
        error_rate = behaviour.error_rate
        biz = behaviour.business
        fraud_rate, detection, false_pos, noise = (
            biz.fraud_rate,
            biz.detection_rate,
            biz.false_positive_rate,
            biz.decision_noise,
        )
        decline_mean, approve_mean, score_sd = (
            biz.decline_score_mean,
            biz.approve_score_mean,
            biz.score_stddev,
        )
        if latent is not None:
            frauds, uniforms, normals = latent.fraud, latent.uniform, latent.normal
        else:
            frauds, uniforms, normals = [], [], []
        shared = len(frauds)
        bounds, score_bounds = ep.latency_bounds, FRAUD_SCORE_BUCKETS
        size = len(bounds) + 1
        ok_counts, error_counts = [0] * size, [0] * size
        ok_sum = error_sum = score_sum = 0.0
        errors = 0
        outcomes = [0, 0, 0, 0]  # indexes into _SCORE_OUTCOMES
        scores = [0] * (len(score_bounds) + 1)
        for i in range(n):
            seconds = exp(mu + sigma * normal(rnd() or 0.5))
            index = bisect_left(bounds, seconds)
            if rnd() < error_rate:
                error_counts[index] += 1
                error_sum += seconds
                errors += 1
                if answers is not None and i < shared:
                    answers.append(None)
                continue
            ok_counts[index] += 1
            ok_sum += seconds
            if i < shared:
                fraud = frauds[i]
                u = rnd() if noise and rnd() < noise else uniforms[i]
                z = normals[i]
            else:
                fraud = rnd() < fraud_rate
                u = rnd()
                z = normal(rnd() or 0.5)
            if fraud:
                decline = u < detection
                outcomes[0 if decline else 1] += 1
            else:
                decline = u < false_pos
                outcomes[2 if decline else 3] += 1
            score = (decline_mean if decline else approve_mean) + score_sd * z
            score = 0.0 if score < 0.0 else 1.0 if score > 1.0 else score
            scores[bisect_left(score_bounds, score)] += 1
            score_sum += score
            if answers is not None and i < shared:
                answers.append((decline, score))
        self._record(ep, n, errors, mirrored, (_sparse(ok_counts), ok_sum),
                     (_sparse(error_counts), error_sum), outcomes, _sparse(scores),
                     score_sum)  # fmt: skip

    def _serve_aggregate(
        self, ep: _Endpoint, behaviour: ModelBehaviour, n: int, *, mirrored: bool = False
    ) -> None:
        """Serve ``n`` requests on ``ep`` in aggregate (:mod:`testbed.aggregate`): the
        5xx, each status' latency buckets, the decisions and the score buckets drawn as
        counts; each histogram's sum is its buckets' counts times the means within them."""
        rng = self._rng
        latency, seconds = lognormal_buckets(
            behaviour.latency.mu, behaviour.latency.sigma, ep.latency_bounds
        )
        errors = binomial(rng, n, behaviour.error_rate)
        ok = n - errors
        ok_counts = latency.sample(rng, ok)
        error_counts = latency.sample(rng, errors)
        biz = behaviour.business
        frauds = binomial(rng, ok, biz.fraud_rate)
        caught = binomial(rng, frauds, biz.detection_rate)
        flagged = binomial(rng, ok - frauds, biz.false_positive_rate)
        # indexes into _SCORE_OUTCOMES: true/false positives decline, the others approve
        outcomes = [caught, frauds - caught, flagged, ok - frauds - flagged]
        declined, decline_means = clipped_normal_buckets(
            biz.decline_score_mean, biz.score_stddev, FRAUD_SCORE_BUCKETS
        )
        approved, approve_means = clipped_normal_buckets(
            biz.approve_score_mean, biz.score_stddev, FRAUD_SCORE_BUCKETS
        )
        declines = declined.sample(rng, outcomes[0] + outcomes[2])
        approves = approved.sample(rng, outcomes[1] + outcomes[3])
        scores = dict(declines)
        for index, count in approves.items():
            scores[index] = scores.get(index, 0) + count
        score_sum = _weighted(declines, decline_means) + _weighted(approves, approve_means)
        self._record(
            ep, n, errors, mirrored,
            (ok_counts, _weighted(ok_counts, seconds)),
            (error_counts, _weighted(error_counts, seconds)),
            outcomes, scores, score_sum,
        )  # fmt: skip

    @staticmethod
    def _record(
        ep: _Endpoint,
        n: int,
        errors: int,
        mirrored: bool,
        ok: tuple[Mapping[int, int], float],
        error: tuple[Mapping[int, int], float],
        outcomes: list[int],
        scores: Mapping[int, int],
        score_sum: float,
    ) -> None:
        """Add what ``n`` requests did to the endpoint's counters (one lock); bucket
        counts are ``{bucket: count}`` of the buckets that got any."""
        with ep.lock:
            ep.version += 1
            ep.requests += n
            ep.errors += errors
            if mirrored:
                ep.mirrored += n
            for code, (counts, total) in ((_STATUS_OK, ok), (_STATUS_ERROR, error)):
                if not counts:
                    continue
                size = len(ep.latency_bounds) + 1
                target = ep.latency_counts.setdefault(code, [0] * size)
                for i, count in counts.items():
                    target[i] += count
                ep.latency_sums[code] = ep.latency_sums.get(code, 0.0) + total
            if n > errors:
                for i, outcome in enumerate(_SCORE_OUTCOMES):
                    if outcomes[i]:
                        decision = "decline" if i in (0, 2) else "approve"
                        key = (decision, outcome)
                        ep.decisions[key] = ep.decisions.get(key, 0) + outcomes[i]
                for i, count in scores.items():
                    ep.score_counts[i] += count
                ep.score_sum += score_sum

    # ------------------------------------------------------------------ lifecycle

    def bind(self, port: int = 0) -> int:
        """Open the metrics server's socket (without serving yet) and write the
        service-discovery file; returns the port. ``start`` calls this."""
        if self._server is None:
            self._server = _MetricsServer((self._host, port), self)
            with self._lock:
                self._write_sd_file()
        return self.port

    def start(self, port: int = 0) -> TrafficSimulator:
        """Serve metrics on ``port`` (0: a free one) and generate traffic in the background."""
        if self.running:
            return self
        self.bind(port)
        assert self._server is not None
        self._stopping.clear()
        server = self._server
        self._threads = [
            threading.Thread(target=server.serve_forever, args=(0.1,), name="traffic-metrics"),
            threading.Thread(target=self._run, name="traffic-ticks"),
        ]
        for thread in self._threads:
            thread.start()
        with self._lock:
            if self._sender is not None:
                self._sender.start()
        _log.info(
            "traffic.started",
            port=self.port,
            sd_file=str(self._sd_file),
            logger_url=self._sender.url if self._sender is not None else None,
        )
        return self

    def stop(self) -> None:
        """Stop generating and serving; empty the service-discovery file. Joins every thread
        this simulator started and closes its socket."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            if self._threads:
                server.shutdown()
            server.server_close()  # joins the request threads
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        with self._lock:
            sender = self._sender
        if sender is not None:
            sender.stop()  # after the last tick: what it queued is sent
        if server is not None:
            with self._lock:
                self._write_sd_file()  # an empty list: Prometheus drops the targets

    def __enter__(self) -> TrafficSimulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        last = self._clock()
        last_failure = ""
        while not self._stopping.wait(self._tick_interval):
            now = self._clock()
            elapsed, last = min(now - last, _MAX_TICK_SECONDS), now
            try:
                self.tick(elapsed)
                last_failure = ""
            except Exception as exc:  # e.g. a half-edited behaviour file: keep ticking
                if repr(exc) != last_failure:  # log each new failure once, not 5 times a second
                    last_failure = repr(exc)
                    _log.exception("traffic.tick_failed")

    def exposition(self, path: str) -> bytes | None:
        """The text a scrape of ``path`` (``/metrics/<namespace>/<name>``) returns, or None."""
        parts = unquote(path.split("?", 1)[0]).strip("/").split("/")
        if len(parts) != 3 or parts[0] != "metrics":
            return None
        with self._lock:
            endpoint = self._endpoints.get((parts[1], parts[2]))
        if endpoint is None:
            return None
        assert endpoint.renderer is not None
        return endpoint.renderer.render()


def _weighted(counts: Mapping[int, int], means: Sequence[float]) -> float:
    """Σ count × mean: the sum of a histogram's observations from its buckets' means."""
    return math.fsum(count * means[index] for index, count in counts.items())


def _sparse(counts: Sequence[int]) -> dict[int, int]:
    return {index: count for index, count in enumerate(counts) if count}


def _shares(rng: random.Random, n: int, percents: Sequence[int]) -> list[int]:
    """``n`` requests over targets weighted by ``percents``, drawn in aggregate."""
    if len(percents) == 1:
        return [n]
    total = sum(percents)
    drawn = Categorical([p / total for p in percents]).sample(rng, n)
    return [drawn.get(index, 0) for index in range(len(percents))]


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads
    block_on_close = True

    def __init__(self, address: tuple[str, int], simulator: TrafficSimulator) -> None:
        self.simulator = simulator
        super().__init__(address, _MetricsHandler)


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            body: bytes | None = b"ok\n"
        else:
            body = self.server.simulator.exposition(self.path)
        if body is None:
            self.send_error(404, "no such target")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the simulator's log
