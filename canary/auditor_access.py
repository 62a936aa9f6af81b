"""Who may read the audit trail through the auditor API: the ``auditor`` role.

Two kinds of credentials, both sent as ``Authorization: Bearer <token>``:

* **Auditor tokens**: random tokens that the controller knows only by their SHA-256, listed
  in a file (a Secret or ConfigMap mounted into the pod, re-read when it changes)::

      tokens:
        - name: external-audit-2026      # who holds it: shown in logs and answers
          sha256: 3f1c...                # hex SHA-256 of the token (never the token)
          roles: [auditor]

  ``canary audit token NAME`` makes a token and prints its entry. The tokens are 256 random
  bits, so a plain SHA-256 is safe to store (a slow password hash guards guessable
  secrets; these are not). Comparison is constant-time.
* **Kubernetes credentials** (a bearer token or a client certificate of the cluster): the
  apiserver names the caller (TokenReview), and RBAC decides (SubjectAccessReview): the
  ``auditor`` role is ``get`` on the virtual resource ``audit`` of the API group
  ``kserve-canary.io``, granted by the ClusterRole :data:`AUDITOR_ROLE`.

Neither kind can write: the auditor API has no route that writes (see
:mod:`canary.api.auditor`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canary.access import (
    API_GROUP,
    AccessDenied,
    Caller,
    Gatekeeper,
    Permission,
    Unauthenticated,
    bearer_token,
)
from canary.log import get_logger

__all__ = [
    "AUDITOR_PERMISSION",
    "AUDITOR_ROLE",
    "AUDIT_RESOURCE",
    "Auditor",
    "AuditorGate",
    "NotAnAuditor",
    "TokenEntry",
    "TokenFileError",
    "TokenSource",
    "auditor_cluster_role",
    "hash_token",
    "new_token",
    "parse_token_file",
]

log = get_logger("canary.auditor_access")

AUDITOR_ROLE: Final = "kserve-canary-auditor"
AUDIT_RESOURCE: Final = "audit"
AUDITOR_PERMISSION: Final = Permission("get", None, group=API_GROUP, resource=AUDIT_RESOURCE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.@]{0,126}[A-Za-z0-9])?$")


class TokenFileError(ValueError):
    """The auditor token file cannot be read or does not say what it must."""


class NotAnAuditor(Exception):
    """Authenticated, but without the auditor role (HTTP 403)."""

    def __init__(self, who: str, why: str) -> None:
        super().__init__(f"{who} is not an auditor: {why}")
        self.who = who
        self.why = why


class TokenEntry(BaseModel):
    """One auditor token, known by its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    sha256: str
    roles: tuple[str, ...] = ("auditor",)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "letters, digits and - _ . @ only, starting and ending with a letter or digit"
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _hash(cls, value: str) -> str:
        if not _HEX64.match(value):
            raise ValueError(
                "the hex SHA-256 of the token: 64 lowercase hex digits (never the token itself)"
            )
        return value


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(default_factory=list)


def parse_token_file(text: str, *, source: str) -> tuple[TokenEntry, ...]:
    """Entries of a token file (YAML or JSON); names and hashes must be unique."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokenFileError(f"{source} is not YAML: {exc}") from None
    try:
        parsed = _TokenFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise TokenFileError(f"{source}: {problems}") from None
    seen_names: set[str] = set()
    seen_hashes: set[str] = set()
    for entry in parsed.tokens:
        if entry.name in seen_names:
            raise TokenFileError(f"{source}: the name {entry.name!r} is listed twice")
        if entry.sha256 in seen_hashes:
            raise TokenFileError(f"{source}: two entries have the same hash ({entry.name!r})")
        seen_names.add(entry.name)
        seen_hashes.add(entry.sha256)
    return tuple(parsed.tokens)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(name: str, roles: Sequence[str] = ("auditor",)) -> tuple[str, TokenEntry]:
    """A fresh random token (256 bits) and its entry for the token file."""
    token = "ksca_" + secrets.token_urlsafe(32)
    return token, TokenEntry(name=name, sha256=hash_token(token), roles=tuple(roles))


class TokenSource:
    """The token file, re-read when it changes (a rotated Secret). A file that becomes
    unreadable or invalid keeps the last good entries and logs an error; a missing file at
    start is an error."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._entries: tuple[TokenEntry, ...] = ()
        self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._stamp:
                return
            text = self._path.read_text(encoding="utf-8")
            entries = parse_token_file(text, source=str(self._path))
        except (OSError, UnicodeDecodeError, TokenFileError) as exc:
            message = exc.strerror if isinstance(exc, OSError) else str(exc)
            if strict:
                raise TokenFileError(f"auditor tokens {self._path}: {message}") from None
            log.error("auditor.tokens_unreadable", path=str(self._path), error=message,
                      detail="the previous tokens stay in use")  # fmt: skip
            return
        self._entries = entries
        self._stamp = stamp
        if not strict:
            log.info("auditor.tokens_reloaded", path=str(self._path), count=len(entries))

    def __call__(self) -> tuple[TokenEntry, ...]:
        with self._lock:
            self._load(strict=False)
            return self._entries


@dataclass(frozen=True)
class Auditor:
    """Who is reading: the holder of an auditor token, or a cluster identity."""

    name: str
    kind: Literal["token", "kubernetes"]
    uid: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = field(default=("auditor",))

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "uid": self.uid, "groups": list(self.groups)}


class AuditorGate:
    """Admit auditors (see the module docstring); everything else is refused."""

    def __init__(
        self,
        tokens: Callable[[], Sequence[TokenEntry]] | None,
        gatekeeper: Gatekeeper | None,
    ) -> None:
        if tokens is None and gatekeeper is None:
            raise ValueError("the auditor API needs tokens, the cluster's reviews, or both")
        self._tokens = tokens
        self._gatekeeper = gatekeeper

    def admit(
        self, authorization: str | None, certificate: Mapping[str, Any] | None = None
    ) -> Auditor:
        """The auditor, or :class:`Unauthenticated` (401), :class:`NotAnAuditor` /
        :class:`~canary.access.AccessDenied` (403) or
        :class:`~canary.access.ReviewFailed` (503)."""
        if authorization and self._tokens is not None:
            token = bearer_token(authorization)
            digest = hash_token(token)
            match: TokenEntry | None = None
            for entry in self._tokens():
                if hmac.compare_digest(digest, entry.sha256):
                    match = entry
            if match is not None:
                if "auditor" not in match.roles:
                    raise NotAnAuditor(f"token {match.name!r}", "its roles do not include auditor")
                return Auditor(match.name, "token", roles=match.roles)
        if self._gatekeeper is None:
            if not authorization:
                raise Unauthenticated("no credentials: send an auditor token (Bearer)")
            raise Unauthenticated("this token is not an auditor token")
        caller: Caller = self._gatekeeper.authenticate(authorization, certificate)
        try:
            self._gatekeeper.authorize(caller, [AUDITOR_PERMISSION])
        except AccessDenied as denied:
            raise NotAnAuditor(
                caller.username,
                f"RBAC does not allow {AUDITOR_PERMISSION.describe()} ({denied.why}); bind "
                f"the ClusterRole {AUDITOR_ROLE}",
            ) from None
        return Auditor(caller.username, "kubernetes", caller.uid, caller.groups)


def auditor_cluster_role() -> dict[str, Any]:
    """The ClusterRole that makes a cluster identity an auditor (read-only)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": AUDITOR_ROLE,
            "labels": {"app.kubernetes.io/part-of": "kserve-canary"},
        },
        "rules": [{"apiGroups": [API_GROUP], "resources": [AUDIT_RESOURCE], "verbs": ["get"]}],
    }
