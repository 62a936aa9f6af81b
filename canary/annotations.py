"""The opt-in annotations a model owner puts on an InferenceService.

These keys are read, never written: KServe copies InferenceService annotations onto the
predictor's revision template, so writing state here would mint revisions (DESIGN.md §2).
Operators should add these keys to KServe's ``serviceAnnotationDisallowedList``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from canary.policy import DNS_LABEL

__all__ = [
    "ANNOTATION_PREFIX",
    "CHALLENGER",
    "ENABLED",
    "ENABLED_VALUES",
    "KNOWN_KEYS",
    "METRIC_PROFILE",
    "POLICY",
    "AnnotationError",
    "OptIn",
    "enabled_problem",
    "parse_annotations",
    "parse_enabled",
]

ANNOTATION_PREFIX = "kserve-canary.io/"
ENABLED = ANNOTATION_PREFIX + "enabled"
POLICY = ANNOTATION_PREFIX + "policy"
CHALLENGER = ANNOTATION_PREFIX + "challenger"
METRIC_PROFILE = ANNOTATION_PREFIX + "metric-profile"
KNOWN_KEYS = (ENABLED, POLICY, CHALLENGER, METRIC_PROFILE)
METRIC_PROFILES = ("knative-otel", "knative-opencensus", "istio", "kserve-model-server")
# The only spellings of the opt-in. Kept exact (no "True", "yes", "1"): the admission
# webhook's matchConditions (canary.k8s.webhook_config) send every other value to the
# webhook, which denies it, so the webhook and the controller can never disagree.
ENABLED_VALUES = {"true": True, "false": False}

# An InferenceService name is a DNS-1035 label (it prefixes Service names).
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class AnnotationError(ValueError):
    """A malformed kserve-canary annotation. ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class OptIn:
    enabled: bool
    policy: str = "default"
    challenger: str | None = None
    metric_profile: str | None = None


def enabled_problem(raw: str) -> str:
    """The message for a ``kserve-canary.io/enabled`` value that is not a boolean."""
    allowed = " or ".join(f'"{v}"' for v in ENABLED_VALUES)
    return f"{ENABLED}: got {raw!r}; allowed: {allowed}"


def parse_enabled(annotations: Mapping[str, str] | None) -> bool:
    """Whether ``kserve-canary.io/enabled`` opts the object in: absent is False, "true" and
    "false" are what they say, anything else raises :class:`AnnotationError`.

    The one reading of the opt-in, used by the admission webhook and the controller alike.
    """
    raw = (annotations or {}).get(ENABLED)
    if raw is None:
        return False
    if not isinstance(raw, str) or raw not in ENABLED_VALUES:
        raise AnnotationError([enabled_problem(str(raw))])
    return ENABLED_VALUES[raw]


def parse_annotations(annotations: Mapping[str, str] | None) -> OptIn:
    """Read the opt-in from an InferenceService's annotations.

    An object without ``kserve-canary.io/enabled`` is not opted in. Every malformed key is
    reported with the key, the bad value and what is allowed, so a PolicyInvalid event can
    tell the model owner exactly what to fix.
    """
    values = dict(annotations or {})
    problems: list[str] = []
    for key in sorted(values):
        if key.startswith(ANNOTATION_PREFIX) and key not in KNOWN_KEYS:
            problems.append(
                f"{key}: unknown kserve-canary annotation; allowed: {', '.join(KNOWN_KEYS)}"
            )

    enabled = False
    try:
        enabled = parse_enabled(values)
    except AnnotationError as exc:
        problems.extend(exc.problems)

    policy = values.get(POLICY, "default")
    if not DNS_LABEL.match(policy) or len(policy) > 63:
        problems.append(
            f"{POLICY}: got {policy!r}; allowed: a policy name (lowercase letters, digits, '-')"
        )

    challenger = values.get(CHALLENGER)
    if challenger is not None and (not _ISVC_NAME.match(challenger) or len(challenger) > 63):
        problems.append(
            f"{CHALLENGER}: got {challenger!r}; allowed: the name of an InferenceService in the "
            "same namespace (a DNS-1035 label)"
        )

    profile = values.get(METRIC_PROFILE)
    if profile is not None and profile not in METRIC_PROFILES:
        problems.append(f"{METRIC_PROFILE}: got {profile!r}; allowed: {', '.join(METRIC_PROFILES)}")

    if problems:
        raise AnnotationError(problems)
    return OptIn(enabled=enabled, policy=policy, challenger=challenger, metric_profile=profile)
