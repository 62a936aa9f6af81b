"""The audit store's errors (one module, so the store's parts can share them)."""

from __future__ import annotations

__all__ = [
    "ActiveRolloutExists",
    "AuditError",
    "DatabaseUrlError",
    "FencedOut",
    "PurgeRefused",
    "RoleRefused",
    "SchemaTooNew",
    "StaleRollout",
    "StoreUnavailable",
]


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


class DatabaseUrlError(AuditError):
    """The database URL is malformed, names a database or driver kserve-canary does not
    support, or one whose driver is not installed: the input is wrong, no retry helps."""


class SchemaTooNew(AuditError):
    """The database was migrated by a newer kserve-canary: its schema revision is unknown here."""


class RoleRefused(AuditError):
    """``canary db grant`` refuses the role it was given (missing, superuser, an owner...)."""


class PurgeRefused(AuditError):
    """``canary audit purge`` refuses: nothing is old enough, no signed checkpoint vouches for
    where the purge would end, the role may not purge, or the chain moved under it. Nothing
    was changed."""
