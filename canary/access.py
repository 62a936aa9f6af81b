"""Who may run which operator command: identities from the apiserver, decisions by RBAC.

The operator API never trusts what a caller says about themselves. A request carries the
caller's own Kubernetes bearer token; :class:`Gatekeeper` asks the apiserver who it belongs
to (a TokenReview) and whether that person may act (a SubjectAccessReview). The person is
then recorded in the audit trail as the apiserver named them: user name, UID and groups.

What each command needs is expressed on a *virtual* resource that a platform team grants
with ordinary RBAC (no CustomResourceDefinition is installed for it): the API group
``kserve-canary.io``, the resource ``rollouts`` and one subresource per operator command; an
approval decision is the verb ``approve`` on the rollout itself.

=============  ===============================================================
command        RBAC check (in the InferenceService's namespace, for its name)
=============  ===============================================================
status         ``get`` ``rollouts`` (``list`` for a listing)
pause          ``create`` ``rollouts/pause``
resume         ``create`` ``rollouts/resume``
promote        ``create`` ``rollouts/promote``
abort          ``create`` ``rollouts/abort``
start          ``create`` ``rollouts/start`` and ``patch`` the InferenceService
approve        ``approve`` ``rollouts``
reject         ``approve`` ``rollouts``
=============  ===============================================================

``start`` changes the InferenceService's model, so the caller must also be allowed to patch
it themselves: the controller never writes for someone what they could not write.

``approve`` and ``reject`` decide a Kubernetes approval gate. One right covers both, the
right to decide, and only the risk-owner role grants it: an operator who may promote a
canary may not also approve it (segregation of duties). RBAC is the first check only; the
leader also requires the approver to be in the policy's risk-owner group, which it reads
from the groups the apiserver authenticated (stored with the command).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary.audit.records import Actor

__all__ = [
    "API_GROUP",
    "APPROVAL_COMMANDS",
    "APPROVE_VERB",
    "COMMAND_NAMES",
    "OPERATOR_COMMANDS",
    "OPERATOR_ROLE",
    "RESOURCE",
    "RISK_OWNER_ROLE",
    "VIEWER_ROLE",
    "AccessDenied",
    "Caller",
    "Gatekeeper",
    "Permission",
    "ReviewFailed",
    "Unauthenticated",
    "bearer_token",
    "cluster_roles",
    "command_permissions",
    "read_permission",
]

API_GROUP: Final = "kserve-canary.io"
RESOURCE: Final = "rollouts"
OPERATOR_COMMANDS: Final = ("pause", "resume", "promote", "abort", "start")
"""Commands that act on a rollout, each granted by ``create`` on its own subresource."""
APPROVAL_COMMANDS: Final = ("approve", "reject")
"""Decisions of a Kubernetes approval gate, both granted by :data:`APPROVE_VERB`."""
COMMAND_NAMES: Final = OPERATOR_COMMANDS + APPROVAL_COMMANDS
APPROVE_VERB: Final = "approve"


class Unauthenticated(Exception):
    """No credentials, or the apiserver does not recognise them (HTTP 401)."""


class AccessDenied(Exception):
    """The apiserver's authorizer refused the caller this command (HTTP 403)."""

    def __init__(self, caller: Caller, permission: Permission, why: str) -> None:
        super().__init__(f"{caller.username} may not {permission.describe()}: {why}")
        self.caller = caller
        self.permission = permission
        self.why = why


class ReviewFailed(Exception):
    """The apiserver could not be asked, or answered nonsense (HTTP 503: nothing decided)."""


@dataclass(frozen=True)
class Caller:
    """A person (or ServiceAccount) as the apiserver authenticated them."""

    username: str
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def actor(self) -> Actor:
        return Actor("human", self.username, uid=self.uid, groups=self.groups)

    def as_json(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "groups": list(self.groups)}


@dataclass(frozen=True)
class Permission:
    """One RBAC check: may the caller ``verb`` this resource (in ``namespace``)?"""

    verb: str
    namespace: str | None
    name: str | None = None
    group: str = API_GROUP
    resource: str = RESOURCE
    subresource: str | None = None

    def describe(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        if self.group:
            what += f".{self.group}"
        where = f" in namespace {self.namespace}" if self.namespace else " in every namespace"
        target = f" {self.name!r}" if self.name else ""
        return f"{self.verb} {what}{target}{where}"

    def attributes(self) -> dict[str, str]:
        attrs = {"verb": self.verb, "group": self.group, "resource": self.resource}
        if self.namespace:
            attrs["namespace"] = self.namespace
        if self.name:
            attrs["name"] = self.name
        if self.subresource:
            attrs["subresource"] = self.subresource
        return attrs


def command_permissions(command: str, namespace: str, name: str) -> tuple[Permission, ...]:
    """Every check ``command`` on ``namespace/name`` must pass, in order."""
    if command not in COMMAND_NAMES:
        raise ValueError(f"unknown command {command!r}; allowed: {', '.join(COMMAND_NAMES)}")
    if command in APPROVAL_COMMANDS:
        return (Permission(APPROVE_VERB, namespace, name),)
    own = Permission("create", namespace, name, subresource=command)
    if command != "start":
        return (own,)
    patch = Permission(
        "patch", namespace, name, group="serving.kserve.io", resource="inferenceservices"
    )
    return own, patch


OPERATOR_ROLE: Final = "kserve-canary-operator"
VIEWER_ROLE: Final = "kserve-canary-viewer"
RISK_OWNER_ROLE: Final = "kserve-canary-risk-owner"


def cluster_roles() -> list[dict[str, Any]]:
    """The ClusterRoles ``kserve-canary-operator`` (every operator command and status),
    ``kserve-canary-viewer`` (status only) and ``kserve-canary-risk-owner`` (approve or
    reject, and status), to bind per namespace with RoleBindings or everywhere with
    ClusterRoleBindings. ``start`` also needs ``patch`` on the InferenceService, which these
    roles do not grant (the namespace's edit role does). The operator role never grants
    ``approve``: whoever drives a rollout does not also approve it."""
    read = {"apiGroups": [API_GROUP], "resources": [RESOURCE], "verbs": ["get", "list"]}
    commands = {
        "apiGroups": [API_GROUP],
        "resources": [f"{RESOURCE}/{command}" for command in OPERATOR_COMMANDS],
        "verbs": ["create"],
    }
    decide = {"apiGroups": [API_GROUP], "resources": [RESOURCE], "verbs": [APPROVE_VERB]}

    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kserve-canary"}},
            "rules": rules,
        }

    return [
        role(OPERATOR_ROLE, [read, commands]),
        role(VIEWER_ROLE, [read]),
        role(RISK_OWNER_ROLE, [read, decide]),
    ]


def read_permission(namespace: str | None, name: str | None) -> Permission:
    """``get`` one rollout, or ``list`` them (in a namespace, or everywhere)."""
    return Permission("get" if name else "list", namespace, name)


# --- the apiserver's answers (external input: checked, never assumed) --------------------


class _UserInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    username: str = Field(min_length=1)
    uid: str | None = None
    groups: list[str] = Field(default_factory=list)
    extra: dict[str, list[str]] = Field(default_factory=dict)


class _TokenReviewStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    authenticated: bool = False
    user: dict[str, Any] | None = None  # read only when authenticated (else often empty)
    error: str | None = None


class _AccessReviewStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    allowed: bool = False
    denied: bool = False
    reason: str | None = None
    evaluation_error: str | None = Field(default=None, alias="evaluationError")


TokenReviewer = Callable[[str], Mapping[str, Any]]
AccessReviewer = Callable[[dict[str, Any]], Mapping[str, Any]]


class Gatekeeper:
    """Authenticate a bearer token and authorise permissions through the apiserver.

    ``review_token`` and ``review_access`` send a TokenReview and a SubjectAccessReview
    (:meth:`canary.k8s.client.KubeClient.review_token` and ``review_access``) and return
    their ``status``; an exception from them (apiserver unreachable, the controller not
    allowed to review) becomes :class:`ReviewFailed`: nothing is decided on a guess.
    """

    def __init__(self, review_token: TokenReviewer, review_access: AccessReviewer) -> None:
        self._review_token = review_token
        self._review_access = review_access

    def authenticate(
        self, authorization: str | None, certificate: Mapping[str, Any] | None = None
    ) -> Caller:
        """The caller: named by the client certificate verified in the TLS handshake (it
        chains to the cluster's client CA, which the apiserver publishes), as the apiserver
        names such a caller; else the one the ``Authorization`` header's bearer token
        belongs to, as a TokenReview says."""
        if certificate:
            return _certificate_caller(certificate)
        token = bearer_token(authorization)
        try:
            answer = self._review_token(token)
        except Exception as exc:
            raise ReviewFailed(f"cannot review the caller's token: {exc}") from exc
        try:
            status = _TokenReviewStatus.model_validate(answer)
        except ValidationError as exc:
            raise ReviewFailed(f"the apiserver's TokenReview answer is malformed: {exc}") from exc
        if not status.authenticated or not status.user:
            raise Unauthenticated(
                "the apiserver does not accept this token"
                + (f": {status.error}" if status.error else "")
            )
        try:
            user = _UserInfo.model_validate(status.user)
        except ValidationError as exc:
            raise ReviewFailed(f"the apiserver's TokenReview user is malformed: {exc}") from exc
        return Caller(
            username=user.username,
            uid=user.uid or None,
            groups=tuple(user.groups),
            extra={k: tuple(v) for k, v in user.extra.items()},
        )

    def authorize(self, caller: Caller, permissions: Sequence[Permission]) -> None:
        """Pass when every permission is allowed; else :class:`AccessDenied` for the first
        refused one, with the authorizer's reason."""
        for permission in permissions:
            spec: dict[str, Any] = {
                "user": caller.username,
                "groups": list(caller.groups),
                "resourceAttributes": permission.attributes(),
            }
            if caller.uid:
                spec["uid"] = caller.uid
            if caller.extra:
                spec["extra"] = {k: list(v) for k, v in caller.extra.items()}
            try:
                answer = self._review_access(spec)
            except Exception as exc:
                raise ReviewFailed(f"cannot check {permission.describe()}: {exc}") from exc
            try:
                status = _AccessReviewStatus.model_validate(answer)
            except ValidationError as exc:
                raise ReviewFailed(
                    f"the apiserver's SubjectAccessReview answer is malformed: {exc}"
                ) from exc
            if status.allowed and not status.denied:
                continue
            why = status.reason or "no RBAC rule grants it"
            if status.evaluation_error:
                why += f" (evaluation error: {status.evaluation_error})"
            raise AccessDenied(caller, permission, why)


def _certificate_caller(certificate: Mapping[str, Any]) -> Caller:
    """The user of a verified client certificate, as Kubernetes reads one: the subject's
    common name is the user name and each organization a group (no UID)."""
    names: list[str] = []
    groups: list[str] = []
    for rdn in certificate.get("subject") or ():
        for attribute in rdn:
            if len(attribute) != 2:
                continue
            key, value = attribute
            if key == "commonName":
                names.append(str(value))
            elif key == "organizationName":
                groups.append(str(value))
    if len(names) != 1 or not names[0].strip():
        raise Unauthenticated("the client certificate names no single user (subject CN)")
    if "system:authenticated" not in groups:
        groups.append("system:authenticated")  # as the apiserver adds to every user
    return Caller(username=names[0], groups=tuple(groups))


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated(
            "no credentials: send your Kubernetes bearer token (Authorization: Bearer ...) "
            "or a client certificate signed by the cluster's client CA"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()
