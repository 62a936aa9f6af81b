"""A small, typed Kubernetes client: the only module that imports ``kubernetes``.

It speaks the REST API directly (through the official client's transport, authentication
and kubeconfig handling) so that every write says exactly which patch type it is:
CustomResources refuse strategic-merge patches with 415, merge patches carry
``resourceVersion`` for optimistic concurrency, and server-side apply names its field
manager. Objects are plain ``dict``s, as the API returns them. Errors are typed by HTTP
status, so callers can tell a conflict (retry with a fresh read) from an invalid object
(never retry) from an unreachable apiserver (back off).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

__all__ = [
    "CONFIG_MAP",
    "CONTROLLER_MANAGER",
    "CRD",
    "EVENT",
    "HTTP_ROUTE",
    "INFERENCE_SERVICE",
    "LEASE",
    "MUTATING_WEBHOOK_CONFIGURATION",
    "NAMESPACE",
    "VIRTUAL_SERVICE",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "KubeClient",
    "KubeError",
    "NotFound",
    "NotLeading",
    "ResourceKind",
    "Unavailable",
    "UnsupportedMediaType",
    "WatchEvent",
]

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ResourceKind:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        return base


INFERENCE_SERVICE = ResourceKind("serving.kserve.io", "v1beta1", "inferenceservices",
                                 "InferenceService")  # fmt: skip
VIRTUAL_SERVICE = ResourceKind("networking.istio.io", "v1", "virtualservices", "VirtualService")
HTTP_ROUTE = ResourceKind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
NAMESPACE = ResourceKind("", "v1", "namespaces", "Namespace", namespaced=False)
CONFIG_MAP = ResourceKind("", "v1", "configmaps", "ConfigMap")
EVENT = ResourceKind("", "v1", "events", "Event")
LEASE = ResourceKind("coordination.k8s.io", "v1", "leases", "Lease")
CRD = ResourceKind("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                   "CustomResourceDefinition", namespaced=False)  # fmt: skip
MUTATING_WEBHOOK_CONFIGURATION = ResourceKind(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration", namespaced=False)  # fmt: skip


class KubeError(Exception):
    """An error answer from the apiserver (or none at all)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    """409: a stale resourceVersion (or a server-side apply field conflict)."""


class Gone(KubeError):
    """410: a watch's resourceVersion is too old; list again and re-watch."""


class UnsupportedMediaType(KubeError):
    """415: e.g. a strategic-merge patch on a custom resource."""


class Invalid(KubeError):
    """422: the object fails the schema or validation; retrying will not help."""


class NotLeading(KubeError):
    """A write refused before it was sent: this replica does not hold the leadership."""


class Unavailable(KubeError):
    """The apiserver could not be reached, or answered 5xx/429; back off and retry."""


_BY_STATUS: Mapping[int, type[KubeError]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    415: UnsupportedMediaType,
    422: Invalid,
}


def _error(status: int, data: bytes | str | None, default_reason: str) -> KubeError:
    reason, message = default_reason, ""
    if data:
        try:
            payload = json.loads(data)
            reason = str(payload.get("reason") or default_reason)
            message = str(payload.get("message") or "")
        except (ValueError, AttributeError):
            message = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, reason, message)
    if status == 429 or status >= 500 or status == 0:
        return Unavailable(status, reason, message)
    return _BY_STATUS.get(status, KubeError)(status, reason, message)


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: JsonObject

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


PatchType = Literal["merge", "json", "strategic"]
_PATCH_CONTENT = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


WriteGate = Callable[[ResourceKind], bool]


CONTROLLER_MANAGER = "kserve-canary"
"""The controller's name in ``managedFields`` (its User-Agent's product)."""


class KubeClient:
    """``timeout`` (seconds) bounds every request but a watch (which has its own) and the
    server-side apply of a CRD (two minutes at least); an apiserver that accepts the
    connection and never answers costs at most that long.

    :meth:`gate_writes` installs a check that every create, replace, patch, apply and delete
    passes before it is sent (a dry run excepted); a refused write raises
    :class:`NotLeading` and reaches nothing. The controller uses it so that only the
    current leader writes to the cluster (the Lease itself is exempt: it is how leadership
    is won)."""

    def __init__(
        self, api: k8s_client.ApiClient, *, user: str | None = None, timeout: float = 30.0
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._api = api
        self.user = user
        self.timeout = float(timeout)
        self._gate: WriteGate | None = None

    def gate_writes(self, gate: WriteGate | None) -> None:
        """Check ``gate(kind)`` before every write (``None`` removes the check)."""
        self._gate = gate

    def _check_write(self, kind: ResourceKind) -> None:
        gate = self._gate
        if gate is not None and kind != LEASE and not gate(kind):
            raise NotLeading(
                0, "NotLeading", f"not leading: refusing to write {kind.kind} to the cluster"
            )

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | Path | None = None,
        context: str | None = None,
        *,
        timeout: float = 30.0,
        agent: str | None = None,
    ) -> KubeClient:
        """A client for the kubeconfig's context. ``agent`` is the User-Agent, whose part
        before the first "/" the apiserver records as the field manager of every write
        that names none (the controller's traffic writes show as ``kserve-canary`` in
        ``managedFields``, not as the client library)."""
        configuration = k8s_client.Configuration()
        config_file = str(path) if path else None
        k8s_config.load_kube_config(
            config_file=config_file, context=context, client_configuration=configuration
        )
        contexts, active = k8s_config.list_kube_config_contexts(config_file=config_file)
        chosen = (
            next((c for c in contexts if c.get("name") == context), active) if context else active
        )
        user = (chosen or {}).get("context", {}).get("user")
        api = k8s_client.ApiClient(configuration)
        if agent:
            api.user_agent = agent
        return cls(api, user=str(user) if user else None, timeout=timeout)

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        timeout = self.timeout if timeout is None else timeout
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            params = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*params, _request_timeout=timeout)
        except ApiException as exc:  # TLS and preparation errors come back as status 0
            raise Unavailable(exc.status or 0, "Unavailable", str(exc.reason)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(0, "Unavailable", f"{type(exc).__name__}: {exc}") from None
        if stream and 200 <= response.status < 300:
            return response.response
        data = response.read()
        if not 200 <= response.status < 300:
            raise _error(response.status, data, response.reason or "Error")
        return json.loads(data) if data else {}

    # --- reads -----------------------------------------------------------------------------

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObject:
        result: JsonObject = self._request("GET", kind.path(namespace, name))
        return result

    def list(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> tuple[list[JsonObject], str]:
        """Items and the list's resourceVersion (to start a watch from)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._request("GET", kind.path(namespace), query=query)
        return list(result.get("items", [])), str(result["metadata"].get("resourceVersion", ""))

    def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
    ) -> Iterator[WatchEvent]:
        """Stream changes after ``resource_version``; ends when the server closes the watch.

        Raises :class:`Gone` when the version has been compacted: list again.
        """
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout_seconds),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        raw = self._request(
            "GET", kind.path(namespace), query=query,
            timeout=(self.timeout, timeout_seconds + self.timeout),
            stream=True,
        )  # fmt: skip
        try:
            buffer = b""
            for chunk in raw.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._watch_event(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(0, "Unavailable", f"watch interrupted: {exc}") from None
        finally:
            raw.release_conn()

    @staticmethod
    def _watch_event(line: bytes) -> WatchEvent:
        payload = json.loads(line)
        kind = payload.get("type")
        obj = payload.get("object") or {}
        if kind == "ERROR":
            raise _error(int(obj.get("code", 500)), json.dumps(obj).encode(), "Error")
        return WatchEvent(kind, obj)

    # --- writes ----------------------------------------------------------------------------

    def create(
        self, kind: ResourceKind, namespace: str | None, body: Mapping[str, Any]
    ) -> JsonObject:
        self._check_write(kind)
        result: JsonObject = self._request("POST", kind.path(namespace), body=dict(body))
        return result

    def replace(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> JsonObject:
        """PUT the whole object; its metadata.resourceVersion makes it conditional."""
        self._check_write(kind)
        result: JsonObject = self._request("PUT", kind.path(namespace, name), body=dict(body))
        return result

    def replace_status(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> JsonObject:
        """PUT the status subresource (spec changes in ``body`` are ignored by the server)."""
        self._check_write(kind)
        path = kind.path(namespace, name) + "/status"
        result: JsonObject = self._request("PUT", path, body=dict(body))
        return result

    def patch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: PatchType = "merge",
        resource_version: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> JsonObject:
        """Patch an object. With ``resource_version`` a merge patch fails with
        :class:`Conflict` if the object changed since it was read. ``dry_run`` runs
        validation and admission (webhooks included) and stores nothing. ``field_manager``
        names the writer in ``metadata.managedFields`` (default: from the user agent)."""
        if not dry_run:
            self._check_write(kind)
        if resource_version is not None:
            if patch_type != "merge":
                raise ValueError("resource_version guards merge patches; use a test op instead")
            patch = {**patch, "metadata": {**patch.get("metadata", {}),
                                           "resourceVersion": resource_version}}  # fmt: skip
        path = kind.path(namespace, name) + (f"/{subresource}" if subresource else "")
        result: JsonObject = self._request(
            "PATCH",
            path,
            body=patch,
            content_type=_PATCH_CONTENT[patch_type],
            query=[
                *([("dryRun", "All")] if dry_run else []),
                *([("fieldManager", field_manager)] if field_manager else []),
            ],
        )
        return result

    def apply(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = False,
    ) -> JsonObject:
        """Server-side apply ``body`` (which names the object) as ``field_manager``."""
        self._check_write(kind)
        name = body["metadata"]["name"]
        query: list[tuple[str, Any]] = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        result: JsonObject = self._request(
            "PATCH",
            kind.path(namespace, name),
            query=query,
            body=json.dumps(body),
            content_type="application/apply-patch+yaml",
            # A CRD is large and the apiserver may take a while to establish it; anything
            # else (routes, webhook configurations) has the client's own bound.
            timeout=max(self.timeout, 120.0) if kind == CRD else None,
        )
        return result

    def delete(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        self._check_write(kind)
        self._request("DELETE", kind.path(namespace, name))

    # --- conveniences ----------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(AlreadyExists):
            self.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": name}})  # fmt: skip

    def crd_established(self, name: str) -> bool:
        try:
            crd = self.get(CRD, None, name)
        except NotFound:
            return False
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
