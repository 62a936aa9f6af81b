"""The evidence of one rollout for a person who was not there (an auditor, a model-risk
officer): :mod:`canary.evidence.dossier` gathers what the audit store holds about the
rollout into one value (:func:`build_dossier`).

Pure Python and the standard library only: no I/O, no network.
"""

from canary.evidence.dossier import (
    DOSSIER_VERSION,
    ChainVerification,
    Dossier,
    build_dossier,
)

__all__ = ["DOSSIER_VERSION", "ChainVerification", "Dossier", "build_dossier"]
