"""Challenger InferenceServices: what a challenger's shadow rollout decides on, and when one
starts. PURE.

A champion names its challenger with ``kserve-canary.io/challenger: <isvc>`` (same
namespace, same KServe mode). While the champion serves a stable model, each new model of
the challenger gets a shadow rollout of its own: the challenger's revision is the
rollout's canary, it is mirrored a share of the champion's live requests and compared with
the champion's stable revision, and it never serves live traffic. A passing comparison
under ``after: gate`` ends the rollout Succeeded; the engine then writes the challenger's
model onto the champion, and that model's canary is a rollout of the champion like any
other, except that it does not shadow again (its shadow evidence is the challenger
rollout's, which it names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canary.document import RolloutDocument
from canary.model import Phase, Revision, TrafficView

__all__ = ["challenger_problem", "challenger_view", "passed_shadow", "same_revision"]


def same_revision(mode: str, a: Revision, b: Revision) -> bool:
    """Knative revisions are immutable (a name is a model); a Standard-mode Deployment
    keeps its name across model changes, so the model is compared too."""
    if mode == "knative":
        return a.name == b.name
    return a.name == b.name and (a.storage_uri or None) == (b.storage_uri or None)


def challenger_view(champion: TrafficView, challenger: TrafficView, mode: str) -> TrafficView:
    """The view a challenger's rollout decides on.

    While the champion is stable: the champion's traffic (its stable revision serves all
    of it) with the challenger's newest revision as ``latest``, commanded and serving 0 %,
    ready and converged as the challenger is. A new revision of the challenger then
    supersedes the rollout (a new one compares the new model). When the champion has a new
    model of its own, its own view: that supersedes the shadow too, and the champion's
    canary starts."""
    stable = champion.stable
    if stable is None or not same_revision(mode, champion.latest, stable):
        return champion
    return TrafficView(
        latest=challenger.latest,
        stable=stable,
        split=dict(champion.split),
        spec_percent=0,
        converged=champion.converged and challenger.converged,
        latest_ready=challenger.latest_ready,
        latest_failed=challenger.latest_failed,
        failure_message=challenger.failure_message,
        generation=champion.generation,
        resource_version=champion.resource_version,
    )


def challenger_problem(
    champion: str,
    challenger: str,
    *,
    shadow_enabled: bool,
    policy: str,
    mirroring: bool,
    champion_mode: str,
    challenger_obj: Mapping[str, Any] | None,
    challenger_mode: str | None,
) -> str | None:
    """Why ``challenger`` cannot be compared with ``champion`` now, or None."""
    where = f"kserve-canary.io/challenger: {challenger}"
    if challenger == champion:
        return f"{where}: names the InferenceService itself; name a separate one"
    if not shadow_enabled:
        return f"{where}: policy {policy!r} has no shadow phase (set shadow.enabled: true)"
    if not mirroring:
        return (
            f"{where}: this controller has no mirroring configured (set KSC_SHADOW_MIRROR "
            "to istio or gateway-api)"
        )
    if challenger_obj is None:
        return f"{where}: no such InferenceService in this namespace"
    if challenger_mode != champion_mode:
        return (
            f"{where}: it runs in {challenger_mode or 'an unknown'} mode and the champion in "
            f"{champion_mode} mode; their metrics cannot be compared"
        )
    return None


def passed_shadow(
    rollouts: Sequence[RolloutDocument], storage_uri: str | None
) -> RolloutDocument | None:
    """The newest challenger rollout whose shadow passed and gated the rollout of
    ``storage_uri`` on the champion (newest first in ``rollouts``), or None."""
    if not storage_uri:
        return None
    for doc in rollouts:
        state = doc.state
        if (
            state.challenger is not None
            and state.phase is Phase.SUCCEEDED
            and doc.policy.shadow.after == "gate"
            and state.canary.storage_uri == storage_uri
        ):
            return doc
    return None
