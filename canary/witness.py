"""Witnesses: places outside the audit database that keep copies of the signed checkpoints.

A checkpoint (:mod:`canary.audit.checkpoint`) only helps if someone other than the database's
administrator keeps it. Each witness is told every checkpoint the controller signs; what it
keeps is what ``canary audit verify`` compares the database with.

* :class:`ConfigMapWitness` (the apiserver): a ConfigMap in the controller's namespace holds
  the latest checkpoint and the recent ones (``latest.json``, ``history.jsonl``), and an
  Event on it records each one. Anyone with ``get`` on that ConfigMap can read them; a
  database administrator who cannot also write the ConfigMap and rewrite the Events cannot
  make them agree with a rewritten history. It never accepts a checkpoint older than the
  one it holds.
* :class:`LogWitness`: a structured log event ``audit.checkpoint_signed`` with the whole
  envelope, for the log pipeline (shipped off the node, usually kept by another team).
* :class:`FileWitness`: one envelope per line appended to a file (development, tests, or a
  volume that is itself archived).

The production answer for long retention is an object store with a retention lock (S3
Object Lock in compliance mode, GCS bucket lock, Azure immutable blobs): a witness that
writes each envelope as an object is a class with the same two methods; docs/AUDIT.md shows
one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, Protocol

from canary.audit.checkpoint import CheckpointError, SignedCheckpoint, parse_envelopes
from canary.audit.records import format_timestamp
from canary.k8s.client import CONFIG_MAP, Conflict, KubeClient, KubeError, NotFound
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.model import EventReason

__all__ = [
    "CHECKPOINT_ANNOTATION",
    "ConfigMapWitness",
    "FileWitness",
    "LogWitness",
    "Witness",
    "WitnessError",
]

log = get_logger("canary.witness")

CHECKPOINT_ANNOTATION: Final = "kserve-canary.io/audit-checkpoint"
LATEST_KEY: Final = "latest.json"
HISTORY_KEY: Final = "history.jsonl"
HISTORY_LIMIT: Final = 500  # ~400 bytes each: well under a ConfigMap's 1 MiB


class WitnessError(Exception):
    """A witness could not take or give back checkpoints."""


class Witness(Protocol):
    """Something outside the database that keeps signed checkpoints."""

    @property
    def name(self) -> str: ...

    def publish(self, signed: SignedCheckpoint) -> None:
        """Keep ``signed`` (raise :class:`WitnessError` if it could not be kept)."""
        ...

    def read(self) -> list[SignedCheckpoint]:
        """The checkpoints it keeps, oldest first ([] for a witness that cannot be read
        back, such as a log)."""
        ...


class LogWitness:
    """Writes each checkpoint to the structured log (``audit.checkpoint_signed``)."""

    name = "log"

    def publish(self, signed: SignedCheckpoint) -> None:
        log.info(
            "audit.checkpoint_signed",
            seq=signed.seq,
            record_hash=signed.record_hash,
            key_id=signed.key_id,
            signed_at=format_timestamp(signed.checkpoint.at),
            envelope=signed.envelope(),
        )

    def read(self) -> list[SignedCheckpoint]:
        return []


class FileWitness:
    """Appends each checkpoint as one JSON line to a file (flushed to disk)."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, signed: SignedCheckpoint) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(signed.to_json() + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise WitnessError(f"cannot append to {self.path}: {exc.strerror}") from None

    def read(self) -> list[SignedCheckpoint]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise WitnessError(f"cannot read {self.path}: {exc.strerror}") from None
        if not text.strip():
            return []
        try:
            return parse_envelopes(text, source=str(self.path))
        except CheckpointError as exc:
            raise WitnessError(str(exc)) from None


def _history(data: dict[str, Any], source: str) -> list[SignedCheckpoint]:
    found: dict[int, SignedCheckpoint] = {}
    for key in (HISTORY_KEY, LATEST_KEY):
        text = data.get(key)
        if not text or not str(text).strip():
            continue
        try:
            for signed in parse_envelopes(str(text), source=f"{source} {key}"):
                found[signed.seq] = signed
        except CheckpointError as exc:
            raise WitnessError(str(exc)) from None
    return [found[seq] for seq in sorted(found)]


class ConfigMapWitness:
    """Keeps checkpoints in a ConfigMap of the controller's namespace, with an Event each.

    The ConfigMap holds ``latest.json`` (the newest envelope), ``history.jsonl`` (the last
    :data:`HISTORY_LIMIT`, one per line) and the annotation :data:`CHECKPOINT_ANNOTATION`
    (``<seq> <hash>``, for ``kubectl get -o yaml`` readers). Writes are conditional on the
    resourceVersion read, so two writers never lose one another's checkpoint, and a
    checkpoint older than the newest one kept is refused.
    """

    name = "configmap"

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        events: EventSink | None = None,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.configmap = name
        self._events = events
        self._limit = history_limit

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.configmap}"

    def read(self) -> list[SignedCheckpoint]:
        try:
            obj = self._kube.get(CONFIG_MAP, self.namespace, self.configmap)
        except NotFound:
            return []
        except KubeError as exc:
            raise WitnessError(f"cannot read {self.where}: {exc}") from None
        return _history(dict(obj.get("data") or {}), self.where)

    def publish(self, signed: SignedCheckpoint) -> None:
        for _attempt in range(3):
            try:
                obj = self._write(signed)
            except Conflict:
                continue  # someone else wrote meanwhile: read again
            except KubeError as exc:
                raise WitnessError(f"cannot write {self.where}: {exc}") from None
            self._event(signed, obj)
            return
        raise WitnessError(f"{self.where} kept changing while the checkpoint was written")

    def _write(self, signed: SignedCheckpoint) -> dict[str, Any]:
        try:
            current: dict[str, Any] | None = self._kube.get(
                CONFIG_MAP, self.namespace, self.configmap
            )
        except NotFound:
            current = None
        kept = [] if current is None else _history(dict(current.get("data") or {}), self.where)
        if kept and kept[-1].seq > signed.seq:
            raise WitnessError(
                f"{self.where} already holds a checkpoint of record {kept[-1].seq}; "
                f"refusing the older checkpoint of record {signed.seq}"
            )
        if kept and kept[-1].seq == signed.seq:
            if kept[-1].record_hash != signed.record_hash:
                raise WitnessError(
                    f"{self.where} holds a different hash for record {signed.seq} "
                    f"({kept[-1].record_hash}); refusing {signed.record_hash}"
                )
            return current or {}
        history = [*kept, signed][-self._limit :]
        data = {
            LATEST_KEY: signed.to_json() + "\n",
            HISTORY_KEY: "".join(c.to_json() + "\n" for c in history),
        }
        annotation = {CHECKPOINT_ANNOTATION: f"{signed.seq} {signed.record_hash}"}
        if current is None:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.configmap,
                    "namespace": self.namespace,
                    "labels": {"app.kubernetes.io/managed-by": "kserve-canary"},
                    "annotations": annotation,
                },
                "data": data,
            }
            return self._kube.create(CONFIG_MAP, self.namespace, body)
        meta = dict(current.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotation}
        return self._kube.replace(
            CONFIG_MAP,
            self.namespace,
            self.configmap,
            {**current, "metadata": meta, "data": {**(current.get("data") or {}), **data}},
        )

    def _event(self, signed: SignedCheckpoint, obj: dict[str, Any]) -> None:
        if self._events is None:
            return
        meta = obj.get("metadata") or {}
        target = ObjectReference(
            namespace=self.namespace,
            name=self.configmap,
            uid=meta.get("uid"),
            kind="ConfigMap",
            api_version="v1",
        )
        message = (
            f"audit record {signed.seq} has hash {signed.record_hash}; signed by "
            f"{signed.key_id} at {format_timestamp(signed.checkpoint.at)}; envelope "
            + json.dumps(signed.envelope(), separators=(",", ":"))
        )
        try:
            self._events.emit(target, EventReason.AUDIT_CHECKPOINT, message)
        except Exception as exc:  # an Event is one more copy; the ConfigMap was written
            log.warning("audit.checkpoint_event_failed", seq=signed.seq, error=str(exc))
