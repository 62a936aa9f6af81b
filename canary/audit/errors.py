"""The audit store's errors (one module, so the store's parts can share them)."""

from __future__ import annotations

__all__ = ["ActiveRolloutExists", "AuditError", "FencedOut", "StaleRollout", "StoreUnavailable"]


class AuditError(Exception):
    """Base class of audit store errors."""


class FencedOut(AuditError):
    """The writer's leader epoch is not the current one: it must stop acting."""


class StaleRollout(AuditError):
    """The rollout changed since the caller read it (optimistic concurrency conflict)."""


class ActiveRolloutExists(AuditError):
    """Another rollout is already active for the same InferenceService."""


class StoreUnavailable(AuditError):
    """The database cannot be reached (or is busy); the operation may be retried."""
