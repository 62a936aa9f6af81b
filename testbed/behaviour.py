"""How simulated model versions behave on the test bed.

One ``BehaviourBook`` (a YAML file in the sandbox directory) tells both simulators what each
model version does, keyed by its ``storageUri``:

* the KServe simulator reads ``readiness`` (ready at once, ready after N seconds, never
  ready, crash-looping) to decide when a revision becomes Ready or fails;
* the traffic simulator reads ``latency``, ``error_rate`` and ``business`` to generate the
  requests each revision serves.

Tests and the demo change behaviour by rewriting the file (``save`` is atomic); the
simulators notice the new modification time on their next tick.
"""

from __future__ import annotations

import math
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "BehaviourBook",
    "BusinessProfile",
    "LatencyProfile",
    "ModelBehaviour",
    "Readiness",
]

# z-score of the 99th percentile of a standard normal distribution
_Z99 = 2.3263478740408408


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Readiness(StrEnum):
    READY = "ready"  # ready after `readyAfterSeconds`
    NEVER = "never"  # stays not ready (image pull back-off): Knative fails it only at 600 s
    CRASH_LOOP = "crash-loop"  # the container restarts: Knative fails the revision at once


class LatencyProfile(_Model):
    """A lognormal latency distribution given by its median and 99th percentile."""

    median_seconds: float = Field(default=0.020, gt=0)
    p99_seconds: float = Field(default=0.040, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.p99_seconds <= self.median_seconds:
            raise ValueError("p99Seconds must be greater than medianSeconds")
        return self

    @property
    def mu(self) -> float:
        return math.log(self.median_seconds)

    @property
    def sigma(self) -> float:
        return (math.log(self.p99_seconds) - self.mu) / _Z99


class BusinessProfile(_Model):
    """A fraud-scoring signal: true fraud prevalence, and how the model decides.

    Each request is fraudulent with probability ``fraudRate``. The model declines a
    fraudulent request with probability ``detectionRate`` and a legitimate one with
    probability ``falsePositiveRate``. Scores are normal around a mean that depends on the
    decision, clipped to [0, 1].

    Every request carries latent draws: whether it is fraud, a uniform ``u`` and a standard
    normal ``z``. The model declines when ``u`` is below its detection (fraud) or false
    positive (legitimate) rate, and scores ``mean + scoreStddev * z``. A mirrored copy of a
    request reuses the live request's draws (its fraud flag drawn with the live model's
    ``fraudRate``: the copies are the same requests), so two models with equal profiles
    decide and score every shared request alike. ``decisionNoise`` is the chance that a
    model ignores the shared ``u`` and draws its own: with rates ``p`` and ``q``, two models
    agree with probability ``1 - |p - q|`` when both use ``u`` and ``pq + (1-p)(1-q)``
    when either draws its own.
    """

    fraud_rate: float = Field(default=0.01, ge=0, le=1)
    detection_rate: float = Field(default=0.9, ge=0, le=1)
    false_positive_rate: float = Field(default=0.02, ge=0, le=1)
    decline_score_mean: float = Field(default=0.85, ge=0, le=1)
    approve_score_mean: float = Field(default=0.10, ge=0, le=1)
    score_stddev: float = Field(default=0.08, ge=0)
    decision_noise: float = Field(default=0.0, ge=0, le=1)


class ModelBehaviour(_Model):
    readiness: Readiness = Readiness.READY
    ready_after_seconds: float = Field(default=0.0, ge=0)
    failure_message: str = "container kserve-container exited with code 1"
    latency: LatencyProfile = LatencyProfile()
    error_rate: float = Field(default=0.01, ge=0, le=1)
    business: BusinessProfile = BusinessProfile()


class BehaviourBook(_Model):
    """Behaviour per model version (``storageUri``) and request rate per InferenceService."""

    default: ModelBehaviour = ModelBehaviour()
    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    default_rate: float = Field(default=100.0, ge=0, description="requests per second")
    rates: dict[str, float] = Field(
        default_factory=dict, description='requests per second by "namespace/name"'
    )

    def for_model(self, storage_uri: str | None) -> ModelBehaviour:
        if storage_uri is None:
            return self.default
        return self.models.get(storage_uri, self.default)

    def rate_for(self, namespace: str, name: str) -> float:
        return self.rates.get(f"{namespace}/{name}", self.default_rate)

    def with_model(self, storage_uri: str, behaviour: ModelBehaviour) -> BehaviourBook:
        return self.model_copy(update={"models": {**self.models, storage_uri: behaviour}})

    def with_rate(self, namespace: str, name: str, rate: float) -> BehaviourBook:
        return self.model_copy(update={"rates": {**self.rates, f"{namespace}/{name}": rate}})

    @classmethod
    def load(cls, path: Path) -> BehaviourBook:
        if not path.exists():
            return cls()
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls.model_validate(data)

    def save(self, path: Path) -> None:
        """Write atomically, so a simulator never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".behaviour-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)


class BehaviourWatcher:
    """Re-reads a behaviour file when its modification time changes (cheap to poll)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime: int | None = None
        self._book = BehaviourBook()

    @property
    def path(self) -> Path:
        return self._path

    def current(self) -> BehaviourBook:
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return self._book
        if mtime != self._mtime:
            self._book = BehaviourBook.load(self._path)
            self._mtime = mtime
        return self._book
