"""A small, typed Kubernetes client: the only module that imports ``kubernetes``.

It speaks the REST API directly (through the official client's transport, authentication
and kubeconfig handling) so that every write says exactly which patch type it is:
CustomResources refuse strategic-merge patches with 415, merge patches carry
``resourceVersion`` for optimistic concurrency, and server-side apply names its field
manager. Objects are plain ``dict``s, as the API returns them. Errors are typed by HTTP
status, so callers can tell a conflict (retry with a fresh read) from an invalid object
(never retry) from an unreachable apiserver (back off).

:meth:`KubeClient.connect` finds the cluster's credentials: a kubeconfig when one is given or
found, otherwise the pod's ServiceAccount (whose token is read again for every request, so
a token the kubelet rotates is picked up at once).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from canary.k8s.informer import ObjectCache
from canary.log import get_logger

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
    "SERVICE_ACCOUNT",
    "SERVICE_ACCOUNT_CA_FILE",
    "SERVICE_ACCOUNT_TOKEN_FILE",
    "VIRTUAL_SERVICE",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "KubeClient",
    "KubeConfigError",
    "KubeError",
    "NotFound",
    "NotLeading",
    "ResourceKind",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "WatchEvent",
]

JsonObject = dict[str, Any]

log = get_logger("canary.k8s.client")

SERVICE_ACCOUNT_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SERVICE_ACCOUNT_CA_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


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
SERVICE_ACCOUNT = ResourceKind("", "v1", "serviceaccounts", "ServiceAccount")
EVENT = ResourceKind("", "v1", "events", "Event")
LEASE = ResourceKind("coordination.k8s.io", "v1", "leases", "Lease")
CRD = ResourceKind("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                   "CustomResourceDefinition", namespaced=False)  # fmt: skip
MUTATING_WEBHOOK_CONFIGURATION = ResourceKind(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration", namespaced=False)  # fmt: skip


class KubeError(Exception):
    """An error answer from the apiserver (or none at all).

    ``reason`` and ``message`` are the ``Status`` object's (or, for a body that is not a
    Status, the HTTP reason phrase and the body's text); ``causes`` are its
    ``details.causes`` as ``field: message`` (``message`` alone when no field is named)."""

    def __init__(
        self, status: int, reason: str, message: str, *, causes: Sequence[str] = ()
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = tuple(causes)
        super().__init__(f"{status} {reason}: {message}")


class KubeConfigError(Exception):
    """No usable cluster address or credentials: nothing was sent to any apiserver."""


class Unauthorized(KubeError):
    """401: the apiserver did not accept the credentials (e.g. an expired token)."""


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
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: Gone,
    415: UnsupportedMediaType,
    422: Invalid,
}


_MAX_BODY = 1000  # characters of a body that is not a Status kept as the message


def _causes(payload: Mapping[str, Any]) -> list[str]:
    details = payload.get("details")
    found = details.get("causes") if isinstance(details, Mapping) else None
    causes: list[str] = []
    for cause in found if isinstance(found, list) else []:
        if not isinstance(cause, Mapping):
            continue
        where, what = str(cause.get("field") or ""), str(cause.get("message") or "")
        text = f"{where}: {what}" if where and what else where or what
        if text:
            causes.append(text)
    return causes


def _error(status: int, data: bytes | str | None, default_reason: str) -> KubeError:
    reason, message, causes = default_reason, "", []
    if data:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, Mapping) and (payload.get("message") or payload.get("reason")):
            reason = str(payload.get("reason") or default_reason)
            message = str(payload.get("message") or "")
            causes = _causes(payload)
        else:  # not a Status (a proxy's page, a bare string): keep the text itself
            message = text.strip()[:_MAX_BODY]
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, reason, message, causes=causes)
    if status == 429 or status >= 500 or status == 0:
        return Unavailable(status, reason, message, causes=causes)
    return _BY_STATUS.get(status, KubeError)(status, reason, message, causes=causes)


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


class _TokenFile:
    """The pod's ServiceAccount token, read from its file for every request.

    The kubelet rewrites a projected (bound) token well before it expires; reading the
    file each time (a few hundred bytes on a local tmpfs) means no request ever carries a
    token older than the file, with no clock or refresh period to reason about. A file that
    cannot be read or is empty after a good read (it should not happen: the kubelet swaps
    the file atomically) leaves the last good token in use, with a warning, rather than
    failing requests that the old token may still authorise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = self._read()  # at start, a missing or empty token is an error
        self._unreadable = False

    def _read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise KubeConfigError(f"the ServiceAccount token {self.path} does not exist") from None
        except OSError as exc:
            raise KubeConfigError(
                f"cannot read the ServiceAccount token {self.path}: {exc.strerror or exc}"
            ) from None
        if not token:
            raise KubeConfigError(f"the ServiceAccount token {self.path} is empty")
        return token

    def current(self) -> str:
        try:
            token = self._read()
        except KubeConfigError as exc:
            if not self._unreadable:
                self._unreadable = True
                log.warning(
                    "kube.token_unreadable",
                    error=str(exc),
                    detail="sending the token read before until the file is readable again",
                )
            return self._last
        if self._unreadable:
            self._unreadable = False
            log.info("kube.token_readable", path=str(self.path))
        self._last = token
        return token


def _service_account_user(token: str) -> str | None:
    """``system:serviceaccount:<namespace>:<name>`` from the token's ``sub`` claim, or None.

    The JWT is decoded WITHOUT verifying its signature: the result is only a label saying
    which identity this process presents (for logs and audit attribution), never a basis
    for trusting anything. The apiserver verifies the token on every request."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(subject, str):
        return None
    kind = "system:serviceaccount:"
    namespace, _, name = subject.removeprefix(kind).partition(":")
    valid = subject.startswith(kind) and namespace and name and ":" not in name
    return subject if valid else None


def _in_cluster_host() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host:
        raise KubeConfigError("not in a pod: KUBERNETES_SERVICE_HOST is not set")
    if not port:
        raise KubeConfigError("KUBERNETES_SERVICE_HOST is set but KUBERNETES_SERVICE_PORT is not")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _found_kubeconfig() -> tuple[str | None, list[str]]:
    """The kubeconfig the default rules find (``$KUBECONFIG``, else ``~/.kube/config``), and
    what was looked at, for an error naming it. A ``KUBECONFIG`` that is set but names no
    existing file is an error, not a reason to fall back to another identity."""
    listed = os.environ.get("KUBECONFIG", "")
    if listed:
        paths = [p for p in listed.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in paths):
            raise KubeConfigError(f"KUBECONFIG={listed} names no existing file")
        return listed, []
    home = Path("~/.kube/config").expanduser()
    if home.is_file():
        return str(home), []
    return None, ["KUBECONFIG is not set", f"{home} does not exist"]


def _api_client(configuration: k8s_client.Configuration, agent: str | None) -> k8s_client.ApiClient:
    api = k8s_client.ApiClient(configuration)
    if agent:
        api.user_agent = agent
    return api


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
        self,
        api: k8s_client.ApiClient,
        *,
        user: str | None = None,
        timeout: float = 30.0,
        namespace: str | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._api = api
        self.user = user
        self.namespace = namespace  # the kubeconfig context's namespace, if it names one
        self.timeout = float(timeout)
        self._gate: WriteGate | None = None
        self._token: _TokenFile | None = None  # in-cluster: the ServiceAccount token's file
        self._write_retried: Callable[[], None] | None = None
        self._caches: dict[str, ObjectCache] = {}  # a kind's path prefix -> its watch cache

    def read_through(self, kind: ResourceKind, cache: ObjectCache | None) -> None:
        """Serve :meth:`get` of ``kind`` from ``cache`` when it can answer (the apiserver
        otherwise), and offer it what this client's writes of ``kind`` return (``None``
        removes the cache). The cache is filled by whoever lists and watches ``kind``."""
        if cache is None:
            self._caches.pop(kind.path(None), None)
        else:
            self._caches[kind.path(None)] = cache

    def _cache_for(self, kind: ResourceKind) -> ObjectCache | None:
        return self._caches.get(kind.path(None)) if self._caches else None

    def _written(self, kind: ResourceKind, result: JsonObject) -> JsonObject:
        cache = self._cache_for(kind)
        if cache is not None and isinstance(result, dict):
            cache.offer(result)
        return result

    def _conditional(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        send: Callable[[], JsonObject],
        *,
        keep: bool = True,
    ) -> JsonObject:
        """``send()``, a write that may be refused with :class:`Conflict` because the object
        changed since it was read: then the cached copy it was read from is dropped, so
        that whoever reads it next, to try again, gets the apiserver's. Its answer goes to
        the cache (:meth:`_written`) unless ``keep`` is false (a dry run)."""
        try:
            result = send()
        except Conflict:
            cache = self._cache_for(kind)
            if cache is not None and namespace is not None:
                cache.refused(namespace, name)
            raise
        return self._written(kind, result) if keep else result

    def count_write_retries(self, counter: Callable[[], None] | None) -> None:
        """Call ``counter()`` each time this client sends a write again by itself (today:
        a write refused with 401 while the token file rotated under it)."""
        self._write_retried = counter

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
        namespace = (chosen or {}).get("context", {}).get("namespace")
        return cls(_api_client(configuration, agent), user=str(user) if user else None,
                   timeout=timeout, namespace=str(namespace) if namespace else None)  # fmt: skip

    @classmethod
    def in_cluster(
        cls,
        host: str | None = None,
        *,
        token_file: str | Path = SERVICE_ACCOUNT_TOKEN_FILE,
        ca_file: str | Path = SERVICE_ACCOUNT_CA_FILE,
        timeout: float = 30.0,
        agent: str | None = None,
    ) -> KubeClient:
        """A client that authenticates as the pod's ServiceAccount.

        ``host`` is the apiserver's URL (default: from ``KUBERNETES_SERVICE_HOST`` and
        ``KUBERNETES_SERVICE_PORT``); the server's certificate must chain to ``ca_file``. The
        token is read from ``token_file`` for every request, so a rotated token is used as
        soon as the kubelet writes it; a request refused with 401 is sent once more if the
        file changed while it was in flight. :attr:`user` is the ServiceAccount the token
        names (``system:serviceaccount:<namespace>:<name>``), or None."""
        url = host or _in_cluster_host()
        if "://" not in url:
            url = f"https://{url}"
        token = _TokenFile(Path(token_file))  # fails early and clearly if it is missing
        ca = Path(ca_file)
        try:
            if not ca.read_bytes().strip():
                raise KubeConfigError(f"the ServiceAccount CA file {ca} is empty")
        except FileNotFoundError:
            raise KubeConfigError(f"the ServiceAccount CA file {ca} does not exist") from None
        except OSError as exc:
            raise KubeConfigError(f"cannot read the CA file {ca}: {exc.strerror or exc}") from None
        configuration = k8s_client.Configuration()
        configuration.host = url.rstrip("/")
        configuration.ssl_ca_cert = str(ca)
        client = cls(
            _api_client(configuration, agent),
            user=_service_account_user(token.current()),
            timeout=timeout,
        )
        client._token = token
        return client

    @classmethod
    def connect(
        cls,
        kubeconfig: str | Path | None = None,
        *,
        timeout: float = 30.0,
        agent: str | None = None,
        token_file: str | Path = SERVICE_ACCOUNT_TOKEN_FILE,
        ca_file: str | Path = SERVICE_ACCOUNT_CA_FILE,
    ) -> KubeClient:
        """The controller's client: ``kubeconfig`` when given; else the kubeconfig that
        ``$KUBECONFIG`` names, else ``~/.kube/config``; else the pod's ServiceAccount (see
        :meth:`in_cluster`). Raises :class:`KubeConfigError` naming what was tried when
        none of them is usable."""
        tried: list[str] = []
        if kubeconfig:
            path = Path(kubeconfig).expanduser()
            if not path.is_file():
                raise KubeConfigError(f"the kubeconfig {path} does not exist")
            found: str | None = str(path)
        else:
            found, tried = _found_kubeconfig()
        if found is not None:
            try:
                return cls.from_kubeconfig(found, timeout=timeout, agent=agent)
            except k8s_config.ConfigException as exc:
                raise KubeConfigError(f"cannot use the kubeconfig {found}: {exc}") from None
        try:
            return cls.in_cluster(token_file=token_file, ca_file=ca_file, timeout=timeout,
                                  agent=agent)  # fmt: skip
        except KubeConfigError as exc:
            raise KubeConfigError(
                f"no Kubernetes credentials: no kubeconfig given, {', '.join(tried)}, and {exc}"
            ) from None

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
        token = self._token.current() if self._token is not None else None
        response = self._send(method, path, query, body, content_type, timeout, token)
        if response.status == 401 and self._token is not None:
            fresh = self._token.current()
            if fresh != token:  # the kubelet rotated the token while the request was out
                response.read()
                log.info("kube.token_rotated", method=method, path=path)
                if method != "GET" and self._write_retried is not None:
                    self._write_retried()
                response = self._send(method, path, query, body, content_type, timeout, fresh)
        if stream and 200 <= response.status < 300:
            return response.response
        data = response.read()
        if not 200 <= response.status < 300:
            raise _error(response.status, data, response.reason or "Error")
        return json.loads(data) if data else {}

    def _send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, Any]],
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float],
        token: str | None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            params = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],  # a kubeconfig's token; none in-cluster
            )
            return self._api.call_api(*params, _request_timeout=timeout)
        except ApiException as exc:  # TLS and preparation errors come back as status 0
            raise Unavailable(exc.status or 0, "Unavailable", str(exc.reason)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(0, "Unavailable", f"{type(exc).__name__}: {exc}") from None

    # --- reads -----------------------------------------------------------------------------

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObject:
        cache = self._cache_for(kind)
        if cache is not None and namespace is not None:
            cached = cache.get(namespace, name)
            if cached is not None:
                return cached
        result: JsonObject = self._request("GET", kind.path(namespace, name))
        return result

    def get_fresh(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObject:
        """:meth:`get` from the apiserver itself, never from a watch cache."""
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
        return self._written(kind, result)

    def replace(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> JsonObject:
        """PUT the whole object; its metadata.resourceVersion makes it conditional."""
        self._check_write(kind)
        path = kind.path(namespace, name)
        return self._conditional(
            kind, namespace, name, lambda: self._request("PUT", path, body=dict(body))
        )

    def replace_status(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> JsonObject:
        """PUT the status subresource (spec changes in ``body`` are ignored by the server)."""
        self._check_write(kind)
        path = kind.path(namespace, name) + "/status"
        return self._conditional(
            kind, namespace, name, lambda: self._request("PUT", path, body=dict(body))
        )

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
        return self._conditional(
            kind,
            namespace,
            name,
            lambda: self._request(
                "PATCH",
                path,
                body=patch,
                content_type=_PATCH_CONTENT[patch_type],
                query=[
                    *([("dryRun", "All")] if dry_run else []),
                    *([("fieldManager", field_manager)] if field_manager else []),
                ],
            ),
            keep=not dry_run,
        )

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
        return self._written(kind, result)

    def delete(self, kind: ResourceKind, namespace: str | None, name: str) -> None:
        self._check_write(kind)
        self._request("DELETE", kind.path(namespace, name))

    # --- conveniences ----------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(AlreadyExists):
            self.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": name}})  # fmt: skip

    def request_token(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration_seconds: int | None = None,
        audiences: Sequence[str] = (),
    ) -> str:
        """A new bound token for a ServiceAccount (the TokenRequest API). The apiserver
        stores nothing, so no write gate applies."""
        spec: JsonObject = {"audiences": list(audiences)}
        if expiration_seconds is not None:
            spec["expirationSeconds"] = expiration_seconds
        path = SERVICE_ACCOUNT.path(namespace, service_account) + "/token"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result = self._request("POST", path, body=body)
        return str(result["status"]["token"])

    def authenticated_user(self) -> str:
        """The user name the apiserver authenticates this client as (a SelfSubjectReview,
        which stores nothing)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        result = self._request(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body
        )
        return str(result["status"]["userInfo"]["username"])

    def review_token(self, token: str, audiences: Sequence[str] = ()) -> JsonObject:
        """Ask the apiserver who ``token`` belongs to (a TokenReview, which stores nothing).
        Returns the review's ``status`` (``authenticated``, ``user``, ``error``...)."""
        spec: JsonObject = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        result = self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
        status: JsonObject = result.get("status") or {}
        return status

    def review_access(self, spec: JsonObject) -> JsonObject:
        """Ask the apiserver's authorizer whether a user may do something (a
        SubjectAccessReview with ``spec``, which stores nothing). Returns its ``status``
        (``allowed``, ``denied``, ``reason``, ``evaluationError``)."""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        result = self._request(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=body
        )
        status: JsonObject = result.get("status") or {}
        return status

    def bearer_token(self) -> str | None:
        """The bearer token this client sends (a kubeconfig's token, one an exec plugin or
        auth provider produced, or the pod's ServiceAccount token), or None when it
        authenticates otherwise (a client certificate)."""
        if self._token is not None:
            return self._token.current()
        configuration = self._api.configuration
        hook = configuration.refresh_api_key_hook
        if hook is not None:
            hook(configuration)  # an exec plugin's token may have expired
        value = configuration.api_key.get("authorization") or configuration.api_key.get(
            "BearerToken"
        )
        if not value:
            return None
        prefix = configuration.api_key_prefix.get("authorization")
        text = str(value)
        if prefix is None and text.lower().startswith("bearer "):
            text = text[7:]
        return text.strip() or None

    def client_certificate(self) -> tuple[str, str] | None:
        """(certificate file, key file) this client authenticates with, or None (a kubeconfig's
        inline data is in files the kubernetes library wrote for this process)."""
        configuration = self._api.configuration
        if configuration.cert_file and configuration.key_file:
            return str(configuration.cert_file), str(configuration.key_file)
        return None

    def client_ca_bundle(self) -> bytes | None:
        """The CA bundle that signs the cluster's client certificates, as the apiserver
        publishes it for other servers (``client-ca-file`` in the ConfigMap
        kube-system/extension-apiserver-authentication), or None when it has none."""
        try:
            config_map = self.get(CONFIG_MAP, "kube-system", "extension-apiserver-authentication")
        except NotFound:
            return None
        pem = (config_map.get("data") or {}).get("client-ca-file")
        return str(pem).encode("ascii") if pem else None

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return str(self._api.configuration.host)

    def crd_established(self, name: str) -> bool:
        try:
            crd = self.get(CRD, None, name)
        except NotFound:
            return False
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
