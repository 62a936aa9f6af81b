"""The evidence of one rollout for a person who was not there (an auditor, a model-risk
officer): :mod:`canary.evidence.dossier` gathers what the audit store holds about the
rollout into one value (:func:`build_dossier`), and :mod:`canary.evidence.report` renders it
as one self-contained HTML file with inline SVG plots (:func:`render_html`).
:mod:`canary.evidence.pointintime` answers "which model served this InferenceService at
instant T, with what share of traffic, under which rollout, approved by whom, on what
evidence?" from the records.

Pure Python and the standard library only: no I/O, no network, no JavaScript.
"""

from canary.evidence.dossier import (
    DOSSIER_VERSION,
    ChainVerification,
    Dossier,
    build_dossier,
)
from canary.evidence.report import render_html

__all__ = ["DOSSIER_VERSION", "ChainVerification", "Dossier", "build_dossier", "render_html"]
