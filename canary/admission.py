"""The admission decision for InferenceService updates. PURE: no I/O, no clock.

Why it exists (DESIGN.md §2, "Knative mode traps"; KSERVE.md §1.3, §3): in Knative mode a
model change applied without ``spec.predictor.canaryTrafficPercent`` (a GitOps sync,
``kubectl apply``) goes to 100 % as soon as the new revision is Ready. For opted-in
InferenceServices this module therefore makes every UPDATE that mints a new revision also
pin the canary to the first step of the service's policy, so an unanalysed revision never
gets more than that share.

The rules, by deployment mode (the recorded ``status.deploymentMode`` wins, then the
``serving.kserve.io/deploymentMode`` annotation, then the cluster default; KSERVE.md §1.1):

Knative
    An update *changes the revision template* when the template KServe would build from the
    new object differs from the one it would build from the old object (KSERVE.md §1.2):
    the predictor spec apart from ``canaryTrafficPercent`` (and apart from the fields that
    do not reach the Knative template: ``deploymentStrategy``, ``autoScaling``,
    ``scaleMetricType``, ``workerSpec``), the InferenceService's annotations and labels and
    the predictor's own, minus KServe's disallowed lists, with ``minReplicas``,
    ``maxReplicas``, ``scaleTarget`` and ``scaleMetric`` read as the annotations KServe turns
    them into, and the two annotations KServe moves onto the ksvc left out. Such an update
    gets ``canaryTrafficPercent`` set to the first step when it has none (or an unusable
    value), and lowered to the first step when it has more; a value at or below the first
    step is kept (0 is how a rollback reverts the model). Updates that leave the template
    alone — the controller's own step, promotion and rollback writes — pass untouched,
    which matters as much: a percent below 100 written without a new revision after a
    promotion rolls traffic back toward the previous release (KSERVE.md §1.4 fall-back rule).

Standard
    ``canaryTrafficPercent`` is ignored in this mode (KSERVE.md §2.4), and a change of the
    stable predictor's model or pod spec rolls every stable pod at once. Such a change is
    denied, except for a promotion (KSERVE.md §2.5): the new stable model equals the model
    of a ``spec.canary[]`` entry of the old object that the same update removes. New or
    changed ``spec.canary[]`` entries are allowed, with their ``trafficPercent`` capped at
    the first step. Scaling fields and metadata of the stable predictor are not a model
    change and pass.

Whatever the mode: CREATE passes untouched (KServe ignores the percent on a first
deployment), objects that are not opted in pass untouched, and an opted-in update that
needs the first step but whose ``kserve-canary.io/*`` annotations are malformed or name an
unknown policy is denied with the key, the value and what is allowed. :func:`failure` turns
an internal error into an answer that never blocks an object that is not opted in.

The webhook must see the object after KServe's defaulting webhook (which rewrites framework
predictors into ``model:``, KSERVE.md §3), otherwise a manifest in the framework form looks
like a model change on every sync. The apiserver calls mutating webhooks in the order of
their configuration names, and ``kserve-canary`` sorts after KServe's
``inferenceservice.serving.kserve.io``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary.annotations import ENABLED, POLICY, AnnotationError, parse_annotations, parse_enabled
from canary.policy import PolicySet, RolloutPolicy

__all__ = [
    "ADMISSION_PATH",
    "DEFAULT_ANNOTATION_DISALLOWED",
    "DEFAULT_LABEL_DISALLOWED",
    "DEFAULT_RULES",
    "PERCENT_PATH",
    "AdmissionDecision",
    "AdmissionRequest",
    "AdmissionReview",
    "ModelChange",
    "TemplateRules",
    "failure",
    "first_target",
    "knative_template",
    "model_change",
    "response_for",
    "review",
]

ADMISSION_PATH = "/admission/inferenceservices"
PERCENT_PATH = "/spec/predictor/canaryTrafficPercent"

JsonPatchOp = dict[str, Any]
Result = Literal["allowed", "patched", "denied", "error"]

# KServe v0.20.0 constants (KSERVE.md §1.2)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_LEGACY_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
DEFAULT_ANNOTATION_DISALLOWED: tuple[str, ...] = (
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    "internal.serving.kserve.io/storage-initializer-sourceuri",
    "kubectl.kubernetes.io/last-applied-configuration",
    "modelFormat",
)
DEFAULT_LABEL_DISALLOWED: tuple[str, ...] = ("networking.knative.dev/visibility",)
_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
_KPA_CLASS = "kpa.autoscaling.knative.dev"
_TARGET_ANNOTATION = "autoscaling.knative.dev/target"
_METRIC_ANNOTATION = "autoscaling.knative.dev/metric"
_MIN_SCALE_ANNOTATION = "autoscaling.knative.dev/min-scale"
_MAX_SCALE_ANNOTATION = "autoscaling.knative.dev/max-scale"
# moved out of the template onto the ksvc's own metadata (KSERVE.md §1.2 step 5)
_KSVC_ANNOTATIONS = (
    "serving.knative.dev/rollout-duration",
    "serving.knative.openshift.io/enablePassthrough",
)
_CONTAINER_NAME = "kserve-container"

# Predictor fields that are not part of the Knative revision template as such: traffic;
# metadata and scaling (read separately, as the template annotations they become); and
# Standard- or multi-node-only settings.
_OUTSIDE_KNATIVE_TEMPLATE = frozenset(
    {
        "canaryTrafficPercent",
        "annotations",
        "labels",
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "scaleMetricType",
        "autoScaling",
        "deploymentStrategy",
        "workerSpec",
    }
)
# Predictor fields that do not change which model serves or how its pods run: traffic,
# metadata, scaling and rollout strategy. Everything else of the stable predictor is "the
# model" in Standard mode (a worker spec included).
_NOT_THE_MODEL = _OUTSIDE_KNATIVE_TEMPLATE - {"workerSpec"}
_MAX_PATHS_SHOWN = 5
_WARNING_LIMIT = 256


# ---------------------------------------------------------------------------------------
# The AdmissionReview as the apiserver sends it (admission.k8s.io/v1)
# ---------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    """The apiserver sends many fields this module does not read: keep them, check none."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class GroupVersionKind(_Lenient):
    group: str = ""
    version: str = ""
    kind: str = ""


class GroupVersionResource(_Lenient):
    group: str = ""
    version: str = ""
    resource: str = ""


class AdmissionRequest(_Lenient):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    resource: GroupVersionResource | None = None
    sub_resource: str | None = Field(default=None, alias="subResource")
    operation: str
    namespace: str | None = None
    name: str | None = None
    new_object: dict[str, Any] | None = Field(default=None, alias="object")
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool | None = Field(default=None, alias="dryRun")
    user_info: dict[str, Any] | None = Field(default=None, alias="userInfo")

    @property
    def is_inference_service(self) -> bool:
        return self.kind.group == "serving.kserve.io" and self.kind.kind == "InferenceService"


class AdmissionReview(_Lenient):
    api_version: str = Field(alias="apiVersion")
    kind: str
    request: AdmissionRequest | None = None


# ---------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateRules:
    """What KServe copies into the revision template, and the cluster's default mode.

    Operators who follow the README add the ``kserve-canary.io/*`` keys (and others) to
    KServe's ``serviceAnnotationDisallowedList``; give the same extra keys here (they are
    appended to KServe's defaults, as KServe does, KSERVE.md §1.2), so that editing them is
    not mistaken for a new revision.
    """

    annotation_disallowed: tuple[str, ...] = DEFAULT_ANNOTATION_DISALLOWED
    label_disallowed: tuple[str, ...] = DEFAULT_LABEL_DISALLOWED
    default_deployment_mode: Literal["Knative", "Standard"] = "Knative"

    @classmethod
    def with_extra(
        cls,
        annotations: Iterable[str] = (),
        labels: Iterable[str] = (),
        *,
        default_deployment_mode: Literal["Knative", "Standard"] = "Knative",
    ) -> TemplateRules:
        return cls(
            annotation_disallowed=(*DEFAULT_ANNOTATION_DISALLOWED, *annotations),
            label_disallowed=(*DEFAULT_LABEL_DISALLOWED, *labels),
            default_deployment_mode=default_deployment_mode,
        )


DEFAULT_RULES = TemplateRules()


@dataclass(frozen=True)
class AdmissionDecision:
    """Allowed or denied, with a JSON patch (RFC 6902) to apply when allowed.

    ``code`` is the HTTP status reported with a denial; ``internal_error`` marks a decision
    taken because the request could not be reviewed (see :func:`failure`).
    """

    allowed: bool
    message: str = ""
    patch: tuple[JsonPatchOp, ...] = ()
    warnings: tuple[str, ...] = ()
    code: int = 200
    internal_error: bool = False

    @property
    def result(self) -> Result:
        """For the ``kserve_canary_admission_reviews_total{result}`` counter."""
        if self.internal_error:
            return "error"
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"


def _allow(message: str = "", *, warnings: Sequence[str] = ()) -> AdmissionDecision:
    return AdmissionDecision(allowed=True, message=message, warnings=tuple(warnings))


def _deny(message: str, *, code: int = 403) -> AdmissionDecision:
    return AdmissionDecision(allowed=False, message=message, code=code)


# ---------------------------------------------------------------------------------------
# Reading objects
# ---------------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return _str_map(_mapping(obj.get("metadata")).get("annotations"))


def _predictor(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(obj.get("spec")).get("predictor"))


def _canaries(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = _mapping(obj.get("spec")).get("canary")
    if not isinstance(entries, list):
        return []
    return [_mapping(entry) for entry in entries]


def _entry_name(entry: Mapping[str, Any]) -> str:
    return str(_mapping(entry.get("predictor")).get("name") or "")


def _whole_percent(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mode(old: Mapping[str, Any], new: Mapping[str, Any], rules: TemplateRules) -> str:
    """KServe's order: the recorded ``status.deploymentMode``, the annotation, the default."""
    recorded = str(_mapping(old.get("status")).get("deploymentMode") or "")
    if not recorded:
        recorded = _annotations(new).get(DEPLOYMENT_MODE_ANNOTATION) or _annotations(old).get(
            DEPLOYMENT_MODE_ANNOTATION, ""
        )
    recorded = _LEGACY_MODES.get(recorded, recorded)
    return recorded or rules.default_deployment_mode


def _where(obj: Mapping[str, Any]) -> str:
    metadata = _mapping(obj.get("metadata"))
    return f"InferenceService {metadata.get('namespace') or '?'}/{metadata.get('name') or '?'}"


# ---------------------------------------------------------------------------------------
# The Knative revision template (KSERVE.md §1.2)
# ---------------------------------------------------------------------------------------


def _filtered(values: Mapping[str, str], disallowed: Iterable[str]) -> dict[str, str]:
    blocked = set(disallowed)
    return {k: v for k, v in values.items() if k not in blocked}


def knative_template(
    isvc: Mapping[str, Any], rules: TemplateRules = DEFAULT_RULES
) -> dict[str, Any]:
    """The parts of ``isvc`` that KServe puts into the predictor's Knative revision
    template, in a canonical form: two objects give the same value exactly when KServe would
    build the same template from them (as far as the InferenceService decides it; runtime
    and config-map changes are outside any update)."""
    predictor = _predictor(isvc)
    annotations = _filtered(_annotations(isvc), rules.annotation_disallowed)
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if mode in _LEGACY_MODES:  # the defaulting webhook rewrites it (KSERVE.md §2.2)
        annotations[DEPLOYMENT_MODE_ANNOTATION] = _LEGACY_MODES[mode]
    annotations.update(
        _filtered(_str_map(predictor.get("annotations")), rules.annotation_disallowed)
    )
    annotations.setdefault(_CLASS_ANNOTATION, _KPA_CLASS)
    if predictor.get("scaleTarget") is not None:
        annotations[_TARGET_ANNOTATION] = str(predictor["scaleTarget"])
    if predictor.get("scaleMetric") is not None:
        annotations[_METRIC_ANNOTATION] = str(predictor["scaleMetric"])
    minimum = predictor.get("minReplicas")
    annotations[_MIN_SCALE_ANNOTATION] = str(1 if minimum is None else minimum)
    maximum = predictor.get("maxReplicas")
    if maximum not in (None, 0):
        annotations[_MAX_SCALE_ANNOTATION] = str(maximum)
    for key in _KSVC_ANNOTATIONS:
        annotations.pop(key, None)
    labels = _filtered(
        {
            **_str_map(_mapping(isvc.get("metadata")).get("labels")),
            **_str_map(predictor.get("labels")),
        },
        rules.label_disallowed,
    )
    spec = {k: v for k, v in predictor.items() if k not in _OUTSIDE_KNATIVE_TEMPLATE}
    return {"annotations": annotations, "labels": labels, "spec": spec}


def _template_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two canonical templates, phrased for a user."""
    changes: list[str] = []
    for key in sorted(set(old["annotations"]) | set(new["annotations"])):
        if old["annotations"].get(key) != new["annotations"].get(key):
            changes.append(f"annotation {key}")
    for key in sorted(set(old["labels"]) | set(new["labels"])):
        if old["labels"].get(key) != new["labels"].get(key):
            changes.append(f"label {key}")
    changes.extend(_diff_paths(old["spec"], new["spec"], "spec.predictor"))
    return changes


def _diff_paths(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        paths: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                paths.extend(_diff_paths(old.get(key), new.get(key), f"{prefix}.{key}"))
        return paths
    return [] if old == new else [prefix]


def _shown(paths: Sequence[str], limit: int = _MAX_PATHS_SHOWN) -> str:
    if len(paths) <= limit:
        return ", ".join(paths)
    return ", ".join(paths[:limit]) + f" and {len(paths) - limit} more"


def _warning(text: str) -> str:
    """Kubernetes may cut warnings longer than 256 characters; cut them ourselves."""
    return text if len(text) <= _WARNING_LIMIT else text[: _WARNING_LIMIT - 1] + "…"


# ---------------------------------------------------------------------------------------
# The model of a Standard-mode predictor (KSERVE.md §2)
# ---------------------------------------------------------------------------------------


def _without_container_name(predictor: Mapping[str, Any]) -> dict[str, Any]:
    """A model or framework block named ``kserve-container`` (the full CRD requires a name
    on canary models) names the runtime's container, which is already called that."""
    out: dict[str, Any] = {}
    for key, value in predictor.items():
        if isinstance(value, Mapping) and value.get("name") == _CONTAINER_NAME:
            out[key] = {k: v for k, v in value.items() if k != "name"}
        else:
            out[key] = value
    return out


def _model_of(predictor: Mapping[str, Any], *, with_name: bool) -> dict[str, Any]:
    """The part of a predictor that decides which model serves and how its pods run."""
    model = {k: v for k, v in predictor.items() if k not in _NOT_THE_MODEL}
    if not with_name:
        model.pop("name", None)
    return _without_container_name(model)


def _is_zero(value: Any) -> bool:
    """Go's zero values as JSON shows them; booleans are kept (KServe's are pointers)."""
    if isinstance(value, bool):
        return False
    return value is None or value in ("", 0, {}, [])


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """KServe's canary predictor: the stable one deep-copied, overlaid with the canary's
    non-zero fields (mergo with override, KSERVE.md §2.3); lists are replaced whole."""
    out = dict(base)
    for key, value in top.items():
        if _is_zero(value):
            continue
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = _overlay(current, value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------
# The first step
# ---------------------------------------------------------------------------------------


def first_target(policy: RolloutPolicy) -> int:
    """The most an unanalysed revision may get: the first step, or 0 when the policy
    shadows before any live traffic."""
    if policy.shadow.enabled:
        return 0
    return policy.first_step


@dataclass(frozen=True)
class _Target:
    percent: int
    policy: str


def _resolve(
    annotations: Mapping[str, str], policies: PolicySet, where: str, why: str
) -> _Target | AdmissionDecision:
    """The first-step target for an opted-in object, or the denial explaining why not."""
    try:
        opt_in = parse_annotations(annotations)
    except AnnotationError as exc:
        return _deny(
            f"kserve-canary: {why} {where}, but its kserve-canary annotations are malformed, "
            f"so the first canary step cannot be determined: {'; '.join(exc.problems)}. "
            "Fix the annotations (in this update or before it)."
        )
    if opt_in.policy not in policies:
        known = ", ".join(policies.names()) or "none are loaded"
        return _deny(
            f"kserve-canary: {why} {where}, but {POLICY}: got {opt_in.policy!r}; allowed: the "
            f"name of a loaded rollout policy ({known}). Name an existing policy, or remove "
            "the annotation to use 'default'."
        )
    return _Target(first_target(policies.get(opt_in.policy)), opt_in.policy)


# ---------------------------------------------------------------------------------------
# Who changes the model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChange:
    """An UPDATE of an opted-in InferenceService that changes its models, and who sent it,
    as the apiserver authenticated them (``userInfo``): a GitOps change names its service
    account, a ``kubectl`` change its user, the controller's own writes its own service
    account. Recorded whether or not a rollout follows; the sender of the update that set
    a model is the starter of its rollout, who may therefore not approve its promotion.

    A change of models is a change of any model's ``storageUri`` (the stable predictor's,
    or a ``spec.canary[]`` entry added, changed or removed), or, in Knative mode, any other
    change of the revision template (a new revision: a rollout follows).

    ``storage_uris`` are the URIs this update brings that the old object did not have;
    ``previous_uris`` those the old object had; ``changes`` says what changed, one line per
    model (``spec.predictor: s3://a -> s3://b``) or, for a template change, its fields.
    ``username`` is None when the review names no user (the apiserver always does)."""

    namespace: str
    name: str
    uid: str | None
    storage_uris: tuple[str, ...]
    username: str | None
    user_uid: str | None
    groups: tuple[str, ...]
    admission_uid: str
    previous_uris: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()


def _storage_uris(obj: Mapping[str, Any]) -> set[str]:
    return {uri for uri in _models(obj).values() if uri}


def _models(obj: Mapping[str, Any]) -> dict[str, str | None]:
    """Each model of ``obj`` by where it is (``spec.predictor``, ``spec.canary[NAME]``):
    its ``storageUri``, None when it has none."""
    found: dict[str, str | None] = {}
    slots = [("spec.predictor", _predictor(obj))]
    for index, entry in enumerate(_canaries(obj)):
        label = _entry_name(entry) or f"#{index}"
        slots.append((f"spec.canary[{label}]", _mapping(entry.get("predictor"))))
    for slot, predictor in slots:
        uri = _mapping(predictor.get("model")).get("storageUri")
        found[slot] = uri if isinstance(uri, str) and uri else None
    return found


def _model_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], rules: TemplateRules
) -> list[str]:
    before, after = _models(old), _models(new)
    changes: list[str] = []
    for slot in sorted(set(before) | set(after)):
        if slot not in after:
            changes.append(f"{slot}: removed ({before[slot] or 'no storageUri'})")
        elif slot not in before:
            changes.append(f"{slot}: added {after[slot] or '(no storageUri)'}")
        elif before[slot] != after[slot]:
            changes.append(f"{slot}: {before[slot] or '(none)'} -> {after[slot] or '(none)'}")
    if not changes and _mode(old, new, rules) == "Knative":
        fields = _template_changes(knative_template(old, rules), knative_template(new, rules))
        if fields:
            changes.append(f"new revision: {_shown(fields)}")
    return changes


def model_change(
    request: Mapping[str, Any], rules: TemplateRules = DEFAULT_RULES
) -> ModelChange | None:
    """The model change in an admission ``request`` (see :class:`ModelChange`), or None:
    not an UPDATE of an InferenceService opted in by the new object, a dry run (nothing is
    stored), or no change of its models."""
    try:
        req = AdmissionRequest.model_validate(request)
    except ValidationError:
        return None
    if not req.is_inference_service or req.sub_resource or req.operation != "UPDATE":
        return None
    if req.dry_run or req.new_object is None or req.old_object is None:
        return None
    try:
        if not parse_enabled(_annotations(req.new_object)):
            return None
    except AnnotationError:
        return None
    changes = _model_changes(req.old_object, req.new_object, rules)
    if not changes:
        return None
    previous = _storage_uris(req.old_object)
    user = _mapping(req.user_info)
    username = user.get("username")
    groups = user.get("groups")
    meta = _mapping(req.new_object.get("metadata"))
    return ModelChange(
        namespace=str(req.namespace or meta.get("namespace") or ""),
        name=str(req.name or meta.get("name") or ""),
        uid=str(meta["uid"]) if meta.get("uid") else None,
        storage_uris=tuple(sorted(_storage_uris(req.new_object) - previous)),
        username=username if isinstance(username, str) and username else None,
        user_uid=str(user["uid"]) if user.get("uid") else None,
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        admission_uid=req.uid,
        previous_uris=tuple(sorted(previous)),
        changes=tuple(changes),
    )


# ---------------------------------------------------------------------------------------
# The review
# ---------------------------------------------------------------------------------------


def review(
    request: Mapping[str, Any], policies: PolicySet, *, rules: TemplateRules = DEFAULT_RULES
) -> AdmissionDecision:
    """Decide on the AdmissionReview ``request`` (admission.k8s.io/v1) of an
    InferenceService (see the module documentation for the rules)."""
    try:
        req = AdmissionRequest.model_validate(request)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        return failure(request, f"malformed AdmissionReview request: {where}: {first['msg']}")
    if not req.is_inference_service or req.sub_resource:
        return _allow("not an InferenceService update; nothing to check")
    if req.operation != "UPDATE":
        return _allow(f"{req.operation}: only updates are checked")
    new, old = req.new_object, req.old_object
    if new is None or old is None:
        return failure(request, "an UPDATE request without object and oldObject")
    try:
        enabled = parse_enabled(_annotations(new))
    except AnnotationError as exc:
        # Not a boolean: fail closed. An update that sets the value is refused outright;
        # one that keeps a value set earlier is refused as soon as it needs the first step
        # (a new revision or canary entry); other updates (finalizers, labels) pass.
        if _annotations(new).get(ENABLED) != _annotations(old).get(ENABLED):
            return _deny(
                f"kserve-canary: {_where(new)}: {'; '.join(exc.problems)}. The controller "
                "could not tell whether this service is opted in; use one of the allowed "
                "values (remove the annotation to opt out)."
            )
        enabled = True
    if not enabled:
        return _allow("not opted in to kserve-canary")

    mode = _mode(old, new, rules)
    if mode == "Knative":
        return _review_knative(old, new, policies, rules)
    if mode == "Standard":
        return _review_standard(old, new, policies)
    return _allow(
        warnings=[f"kserve-canary: deployment mode {mode!r} is not managed; update passed as is"]
    )


def _review_knative(
    old: Mapping[str, Any], new: Mapping[str, Any], policies: PolicySet, rules: TemplateRules
) -> AdmissionDecision:
    changes = _template_changes(knative_template(old, rules), knative_template(new, rules))
    if not changes:
        return _allow("the revision template is unchanged")
    where = _where(new)
    if "predictor" not in _mapping(new.get("spec")):
        return _deny(f"kserve-canary: {where} has no spec.predictor")
    target = _resolve(
        _annotations(new),
        policies,
        where,
        f"this update creates a new revision ({_shown(changes)}) of",
    )
    if isinstance(target, AdmissionDecision):
        return target

    raw = _predictor(new).get("canaryTrafficPercent")
    percent = _whole_percent(raw)
    if percent is not None and percent <= target.percent:
        return _allow(f"canaryTrafficPercent {percent} is within the first step")
    op: JsonPatchOp = {"op": "add", "path": PERCENT_PATH, "value": target.percent}
    step = f"first step of policy {target.policy!r}"
    revision = f"kserve-canary: new revision ({_shown(changes, 2)})"
    if raw is None:
        warning = f"{revision}: canaryTrafficPercent set to {target.percent} ({step})"
    elif percent is None:
        warning = (
            f"{revision}: canaryTrafficPercent {raw!r} is not a whole number; set to "
            f"{target.percent} ({step})"
        )
    else:
        kept = percent == _whole_percent(_predictor(old).get("canaryTrafficPercent"))
        origin = "kept from before" if kept else "in this update"
        warning = (
            f"{revision}: canaryTrafficPercent lowered from {percent} ({origin}) to "
            f"{target.percent} ({step}) until it is analysed"
        )
    return AdmissionDecision(allowed=True, patch=(op,), warnings=(_warning(warning),))


def _review_standard(
    old: Mapping[str, Any], new: Mapping[str, Any], policies: PolicySet
) -> AdmissionDecision:
    old_stable, new_stable = _predictor(old), _predictor(new)
    old_entries = {_entry_name(e): e for e in _canaries(old)}
    new_entries = _canaries(new)
    new_names = {_entry_name(e) for e in new_entries}
    where = _where(new)

    stable_paths = _diff_paths(
        _model_of(old_stable, with_name=True),
        _model_of(new_stable, with_name=True),
        "spec.predictor",
    )
    if stable_paths:
        promoted_from = _promotion_source(old_stable, new_stable, old_entries, new_names)
        if promoted_from is None:
            return _deny(
                f"kserve-canary: {where} is in Standard deployment mode, where this change of "
                f"the stable predictor ({_shown(stable_paths)}) would replace every serving "
                "pod at once, with no canary. Add the new model as a spec.canary[] entry "
                "instead (KServe runs it next to the stable model), or start a rollout with "
                "`canary rollout start`."
            )

    changed: list[tuple[int, Mapping[str, Any]]] = []
    for index, entry in enumerate(new_entries):
        before = old_entries.get(_entry_name(entry))
        if before is None or _model_of(_mapping(before.get("predictor")), with_name=False) != (
            _model_of(_mapping(entry.get("predictor")), with_name=False)
        ):
            changed.append((index, entry))
    if not changed:
        return _allow("no new canary model" + (" (a promotion)" if stable_paths else ""))

    names = ", ".join(repr(_entry_name(e) or f"#{i}") for i, e in changed)
    target = _resolve(
        _annotations(new), policies, where, f"this update adds or changes spec.canary[] {names} of"
    )
    if isinstance(target, AdmissionDecision):
        return target
    ops: list[JsonPatchOp] = []
    warnings: list[str] = []
    for index, entry in changed:
        raw = entry.get("trafficPercent")
        percent = _whole_percent(raw)
        if percent is not None and percent <= target.percent:
            continue
        ops.append({"op": "add", "path": f"/spec/canary/{index}/trafficPercent",
                    "value": target.percent})  # fmt: skip
        label = _entry_name(entry) or f"#{index}"
        was = "none" if raw is None else repr(raw)
        warnings.append(
            _warning(
                f"kserve-canary: new canary model {label!r}: trafficPercent {was} -> "
                f"{target.percent} (first step of policy {target.policy!r})"
            )
        )
    return AdmissionDecision(allowed=True, patch=tuple(ops), warnings=tuple(warnings))


def _promotion_source(
    old_stable: Mapping[str, Any],
    new_stable: Mapping[str, Any],
    old_entries: Mapping[str, Mapping[str, Any]],
    new_names: set[str],
) -> str | None:
    """The name of the canary entry this update promotes: one of the old object's entries,
    removed by this update, whose model (as KServe runs it: the stable predictor overlaid
    with the entry's) equals the new stable model. None if there is no such entry."""
    wanted = _model_of(new_stable, with_name=False)
    for name, entry in old_entries.items():
        if name in new_names:
            continue
        effective = _overlay(old_stable, _mapping(entry.get("predictor")))
        if _model_of(effective, with_name=False) == wanted:
            return name
    return None


# ---------------------------------------------------------------------------------------
# Failures and the response envelope
# ---------------------------------------------------------------------------------------


def failure(request: Any, detail: str) -> AdmissionDecision:
    """The answer when ``request`` could not be reviewed (``detail`` says why).

    An object that is not opted in, or an operation other than UPDATE, is allowed: our
    outage must never block what we do not manage. An opted-in update is denied, since it
    might carry an unanalysed model to 100 %; so is a request too broken to tell (the
    webhook's matchConditions only send opted-in objects).
    """
    req = _mapping(request)
    operation = req.get("operation")
    new = req.get("object")
    if isinstance(operation, str) and operation != "UPDATE":
        return AdmissionDecision(allowed=True, message=detail, internal_error=True)
    if isinstance(new, Mapping):
        try:
            opted_in = parse_enabled(_annotations(new))
        except AnnotationError:
            opted_in = True  # not a boolean: treated as opted in (fail closed)
        if not opted_in:
            return AdmissionDecision(allowed=True, message=detail, internal_error=True)
    return AdmissionDecision(
        allowed=False,
        message=(
            f"kserve-canary could not check this update of an opted-in InferenceService: "
            f"{detail}. It is refused so that no unanalysed model reaches more than the "
            "first canary step; retry, or ask the platform team to look at the kserve-canary "
            "controller."
        ),
        code=500,
        internal_error=True,
    )


def response_for(review: Mapping[str, Any], decision: AdmissionDecision) -> dict[str, Any]:
    """The AdmissionReview answering ``review``: its uid echoed, the patch as base64 JSON
    with ``patchType: JSONPatch`` (only when allowed and non-empty), the warnings."""
    request = _mapping(review.get("request"))
    response: dict[str, Any] = {"uid": str(request.get("uid") or ""), "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {"code": decision.code, "message": decision.message}
    elif decision.patch:
        encoded = json.dumps(list(decision.patch), separators=(",", ":")).encode("utf-8")
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(encoded).decode("ascii")
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {
        "apiVersion": str(review.get("apiVersion") or "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
