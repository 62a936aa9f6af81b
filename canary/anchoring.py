"""Wiring the audit chain's anchoring from the settings: the signing key, the witnesses and
the leader's checkpointer (:mod:`canary.checkpointer`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from canary.audit import AuditStore, Fence
from canary.audit.checkpoint import CheckpointError, CheckpointSigner, TrustedKeys
from canary.checkpointer import Checkpointer, CheckpointMetrics
from canary.k8s.client import KubeClient
from canary.k8s.events import EventSink, ObjectReference
from canary.log import get_logger
from canary.settings import Settings, SettingsError
from canary.witness import ConfigMapWitness, FileWitness, LogWitness, Witness

__all__ = ["checkpointer", "load_signer", "witnesses"]

log = get_logger("canary.anchoring")


def load_signer(settings: Settings) -> CheckpointSigner | None:
    """The checkpoint signing key the settings name; None (with a warning) without one."""
    if settings.audit_signing_key_file is None:
        log.warning(
            "audit.checkpoints_disabled",
            detail="audit_signing_key_file is not set: the audit chain's head is not signed "
            "or witnessed outside the database, so whoever administers the database could "
            "cut, truncate or rewrite it undetected. Create a key with `canary audit keygen` "
            "and mount it from a Secret.",
        )
        return None
    try:
        return CheckpointSigner.from_file(settings.audit_signing_key_file)
    except CheckpointError as exc:
        raise SettingsError(f"audit_signing_key_file: {exc}") from None


def _configmap_witness(settings: Settings) -> ObjectReference:
    return ObjectReference(
        namespace=settings.lease_namespace,
        name=settings.audit_checkpoint_configmap,
        kind="ConfigMap",
        api_version="v1",
    )


def witnesses(settings: Settings, kube: KubeClient, events: EventSink | None) -> list[Witness]:
    """The witnesses the settings name (``audit_witnesses``)."""
    configmap = _configmap_witness(settings)
    out: list[Witness] = []
    for kind in settings.audit_witnesses:
        if kind == "configmap":
            out.append(
                ConfigMapWitness(
                    kube, namespace=configmap.namespace, name=configmap.name, events=events
                )
            )
        elif kind == "log":
            out.append(LogWitness())
        elif settings.audit_witness_file is not None:
            out.append(FileWitness(settings.audit_witness_file))
    return out


def checkpointer(
    settings: Settings,
    *,
    signer: CheckpointSigner | None,
    store: AuditStore,
    kube: KubeClient,
    events: EventSink,
    leadership: Callable[[], Fence | None],
    clock: Callable[[], datetime],
    metrics: CheckpointMetrics,
) -> Checkpointer | None:
    """The leader's checkpoint signer; None without a signing key."""
    if signer is None:
        return None
    configmap = _configmap_witness(settings)
    publish_to = witnesses(settings, kube, events)
    try:
        retired = (
            TrustedKeys.from_files(list(settings.audit_public_key_files)).keys
            if settings.audit_public_key_files
            else ()
        )
    except CheckpointError as exc:
        raise SettingsError(f"audit_public_key_files: {exc}") from None
    log.info(
        "audit.checkpoints_enabled",
        key_id=signer.key_id,
        log_name=settings.audit_log_name,
        witnesses=[w.name for w in publish_to],
        interval_seconds=settings.audit_checkpoint_interval_seconds,
    )
    return Checkpointer(
        store=store,
        signer=signer,
        witnesses=publish_to,
        log_name=settings.audit_log_name,
        leadership=leadership,
        clock=clock,
        interval=timedelta(seconds=settings.audit_checkpoint_interval_seconds),
        metrics=metrics,
        events=events,
        alarm_target=configmap,
        retired_keys=retired,
    )
