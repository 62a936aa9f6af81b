"""The client side of the operator API (:mod:`canary.api.operator`), used by the CLI.

It sends the caller's own Kubernetes credentials — the bearer token, or else the client
certificate, of their kubeconfig context — so the controller can learn from the cluster who
is acting and ask the apiserver whether they may; the CLI never holds database credentials.
The server's certificate is checked against ``ca_file`` (or the system's trust store), under
``tls_server_name`` when the URL's host is not the name in the certificate (a
``kubectl port-forward`` to ``localhost``, for example).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from approvals.transport import Transport, TransportError

__all__ = ["ApiAnswer", "AuditorClient", "OperatorClient", "RawAnswer", "Unreachable"]

_API = "/api/v1"
_AUDIT = "/audit/v1"


class Unreachable(Exception):
    """No controller answered at the API URL (refused, timed out, TLS failure)."""


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str:
        message = self.body.get("error")
        return str(message) if message else f"HTTP {self.status}"


def _connect(
    url: str,
    prefix: str,
    token: str | None,
    *,
    certificate: tuple[str, str] | None,
    ca_file: Path | None,
    tls_server_name: str | None,
    timeout: float,
    accept: str | None = None,
) -> Transport:
    """A transport to one of the controller's APIs with the caller's own credentials: over
    HTTPS (plain HTTP only to this machine's loopback), a bearer token or else a client
    certificate (presented over HTTPS only)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"the API URL must be https://HOST[:PORT], not {url!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(
            f"refusing to send your credentials over plain HTTP to {parts.hostname}: "
            "use https:// (plain http only to this machine, e.g. a port-forward)"
        )
    if not token and certificate is None:
        raise ValueError("no credentials to send: neither a bearer token nor a certificate")
    headers = {"Accept": accept} if accept else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif certificate is not None and parts.scheme != "https":
        raise ValueError("a client certificate is presented over https:// only")
    return Transport(
        url.rstrip("/") + prefix,
        timeout=timeout,
        verify=ca_file if ca_file is not None else True,
        client_certificate=certificate if not token else None,
        tls_server_name=tls_server_name,
        headers=headers,
    )


class OperatorClient:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        certificate: tuple[str, str] | None = None,
        ca_file: Path | None = None,
        tls_server_name: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._transport = _connect(
            url, _API, token, certificate=certificate, ca_file=ca_file,
            tls_server_name=tls_server_name, timeout=timeout, accept="application/json",
        )  # fmt: skip

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ApiAnswer:  # fmt: skip
        try:
            response = self._transport.request(
                method, path, json=json, params=params, timeout=timeout or self._timeout
            )
        except TransportError as exc:
            raise Unreachable(f"no controller answered at {self._base}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"error": f"HTTP {response.status}: {response.text[:200]}"}
        if not isinstance(body, dict):
            body = {"error": f"HTTP {response.status}: unexpected answer"}
        return ApiAnswer(response.status, body)

    def command(
        self,
        namespace: str,
        name: str,
        command: str,
        *,
        reason: str,
        wait: float,
        storage_uri: str | None = None,
    ) -> ApiAnswer:
        body: dict[str, Any] = {"reason": reason, "waitSeconds": wait}
        if storage_uri is not None:
            body["storageUri"] = storage_uri
        path = f"/namespaces/{quote(namespace, safe='')}/rollouts/{quote(name, safe='')}/{command}"
        return self._call("POST", path, json=body, timeout=wait + self._timeout)

    def rollouts(
        self, namespace: str | None, name: str | None, *, include_finished: bool
    ) -> ApiAnswer:
        if namespace is None:
            path = "/rollouts"
        elif name is None:
            path = f"/namespaces/{quote(namespace, safe='')}/rollouts"
        else:
            path = f"/namespaces/{quote(namespace, safe='')}/rollouts/{quote(name, safe='')}"
        params = {"all": "true"} if include_finished and name is None else None
        return self._call("GET", path, params=params)


@dataclass(frozen=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes


class AuditorClient:
    """The client side of the auditor API (:mod:`canary.api.auditor`): read-only, with the
    caller's own cluster credentials or an auditor token."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        certificate: tuple[str, str] | None = None,
        ca_file: Path | None = None,
        tls_server_name: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._base = url.rstrip("/")
        self._transport = _connect(
            url, _AUDIT, token, certificate=certificate, ca_file=ca_file,
            tls_server_name=tls_server_name, timeout=timeout,
        )  # fmt: skip

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> AuditorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get(self, path: str, params: dict[str, str] | None = None) -> RawAnswer:
        try:
            response = self._transport.request("GET", path, params=params)
        except TransportError as exc:
            raise Unreachable(f"no controller answered at {self._base}: {exc}") from exc
        return RawAnswer(response.status, response.header("content-type") or "", response.body)

    def json(self, path: str, params: dict[str, str] | None = None) -> ApiAnswer:
        raw = self.get(path, params)
        try:
            body = json.loads(raw.body)
        except ValueError:
            body = {"error": f"HTTP {raw.status}: {raw.body[:200].decode(errors='replace')}"}
        if not isinstance(body, dict):
            body = {"error": f"HTTP {raw.status}: unexpected answer"}
        return ApiAnswer(raw.status, body)

    def download(
        self, path: str, sink: Callable[[bytes], object], params: dict[str, str] | None = None
    ) -> RawAnswer:
        """Stream a 200 answer's body into ``sink``; other answers come back whole."""
        try:
            response = self._transport.download(path, sink, params=params)
        except TransportError as exc:
            raise Unreachable(f"no controller answered at {self._base}: {exc}") from exc
        return RawAnswer(response.status, response.header("content-type") or "", response.body)

    @staticmethod
    def rollout_path(rollout_id: str, tail: str = "") -> str:
        return f"/rollouts/{quote(rollout_id, safe='')}{tail}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
