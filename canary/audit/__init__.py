"""Tamper-evident audit trail and durable controller state.

``records`` holds the pure value types and the hash-chain format; ``store`` persists them
(PostgreSQL in production, SQLite for development) through ``AuditStore``.
"""

from canary.audit.records import (
    GENESIS_HASH,
    JSON,
    Actor,
    ActorKind,
    ApprovalRow,
    AuditEntry,
    AuditRecord,
    ChainReport,
    Fence,
    Measurement,
    ModelRef,
    ObjectRef,
    RolloutRow,
    StoredMeasurement,
    canonical_json,
    compute_record_hash,
    decode_body,
    entry_body,
)
from canary.audit.store import (
    ActiveRolloutExists,
    AuditError,
    AuditStore,
    FencedOut,
    StaleRollout,
    StoreUnavailable,
    alembic_config,
    schema_differences,
    upgrade_to_head,
)

__all__ = [
    "GENESIS_HASH",
    "JSON",
    "ActiveRolloutExists",
    "Actor",
    "ActorKind",
    "ApprovalRow",
    "AuditEntry",
    "AuditError",
    "AuditRecord",
    "AuditStore",
    "ChainReport",
    "Fence",
    "FencedOut",
    "Measurement",
    "ModelRef",
    "ObjectRef",
    "RolloutRow",
    "StaleRollout",
    "StoreUnavailable",
    "StoredMeasurement",
    "alembic_config",
    "canonical_json",
    "compute_record_hash",
    "decode_body",
    "entry_body",
    "schema_differences",
    "upgrade_to_head",
]
