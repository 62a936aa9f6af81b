"""A store holding one real rollout's records (the state machine's story, as the engine
writes it) and the auditor API over it: shared by the auditor API's tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from fastapi import APIRouter, FastAPI

from canary.api.auditor import AnchorSource, router
from canary.audit import AuditStore
from canary.audit.checkpoint import Checkpoint, CheckpointSigner, TrustedKeys
from canary.auditor_access import AuditorGate
from tests.unit.evidence_story import T0, Story

__all__ = ["auditor_app", "fill"]


def fill(store: AuditStore, story: Story, signer: CheckpointSigner, *, unanchored: int = 0) -> None:
    """The story's records, its rollout row and approvals; a checkpoint signed by ``signer``
    of the record ``unanchored`` records before the head."""
    store.append([r.entry for r in story.records])
    store.commit([], rollout=story.row())
    for row in story.approvals():
        store.upsert_approval(row)
    head, _ = store.head()
    seq = head - unanchored
    record_hash = store.record_hashes([seq])[seq]
    store.add_checkpoint(signer.sign(Checkpoint("kserve-canary", seq, record_hash, T0)))


def auditor_app(
    store: AuditStore,
    story: Story,
    gate: AuditorGate,
    signer: CheckpointSigner,
    *,
    count: Callable[[str], None] = lambda _outcome: None,
) -> tuple[FastAPI, APIRouter]:
    """The auditor API over ``store``, trusting ``signer``'s checkpoints, five minutes after
    the story's last moment."""
    routes = router(
        gate,
        store,
        clock=lambda: story.now + timedelta(minutes=5),
        anchors=AnchorSource(
            read=store.checkpoints,
            keys=TrustedKeys([signer.public_key]),
            log_name="kserve-canary",
            witness="the database's copy",
        ),
        count=count,
    )
    app = FastAPI()
    app.include_router(routes)
    return app, routes
