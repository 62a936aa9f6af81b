"""The product's one HTTP client module: the only importer of ``httpx``.

A small typed wrapper: a :class:`Transport` holds a base URL, a timeout, how the server's
certificate is checked (the system's trust store, a CA file, or not at all), an optional
client certificate, an optional TLS server name (when the URL's host is not the name in the
server's certificate, as through a port-forward) and default headers. :meth:`Transport.request`
sends one request and returns an :class:`HttpResponse` whatever its status; a request that
got no HTTP answer (refused, timed out, TLS failure, broken connection) raises
:class:`TransportError`. There are no retries here: the callers know what is safe to repeat.
"""

from __future__ import annotations

import json as jsonlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = ["HttpResponse", "Transport", "TransportError"]

FailureKind = Literal["connect", "timeout", "protocol"]


class TransportError(Exception):
    """No HTTP answer: the connection was refused or broke, TLS failed, or time ran out.

    ``maybe_sent`` is False when the request certainly never reached the server (it could
    not connect), so even a request that is not idempotent may be sent again.
    """

    def __init__(self, message: str, *, kind: FailureKind, maybe_sent: bool) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.maybe_sent = maybe_sent


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(repr=False)  # names in lower case
    body: bytes = field(repr=False)
    url: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return jsonlib.loads(self.body)


class Transport:
    """HTTP to one server (or absolute URLs), with TLS settings fixed at construction.

    ``verify`` is True (the system's trust store), False (no check: tests only), or a CA
    file. ``client_certificate`` is ``(certificate file, key file)``. ``http_transport``
    replaces the network (an ``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        timeout: float = 10.0,
        verify: bool | Path = True,
        client_certificate: tuple[str | Path, str | Path] | None = None,
        tls_server_name: str | None = None,
        headers: Mapping[str, str] | None = None,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the timeout must be positive, not {timeout}")
        tls: ssl.SSLContext | bool = verify if isinstance(verify, bool) else True
        if isinstance(verify, Path):
            try:
                tls = ssl.create_default_context(cafile=str(verify))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot use the CA file {verify}: {exc}") from exc
        if client_certificate is not None:
            if not isinstance(tls, ssl.SSLContext):
                context = ssl.create_default_context()
                if tls is False:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                tls = context
            certificate, key = client_certificate
            try:
                tls.load_cert_chain(str(certificate), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot use the client certificate {certificate}: {exc}") from exc
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._extensions = {"sni_hostname": tls_server_name} if tls_server_name else None
        self._client = httpx.Client(
            verify=tls,
            headers=dict(headers or {}),
            timeout=timeout,
            transport=http_transport,
            follow_redirects=False,
        )

    @property
    def base_url(self) -> str:
        return self._base

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("https://", "http://")):
            return path_or_url
        if not self._base:
            raise ValueError(f"no base URL to resolve {path_or_url!r} against")
        return f"{self._base}/{path_or_url.lstrip('/')}"

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        url = self.url(path_or_url)
        try:
            response = self._client.request(
                method,
                url,
                json=json,
                data=dict(data) if data is not None else None,
                params=dict(params) if params is not None else None,
                headers=dict(headers) if headers is not None else None,
                timeout=timeout if timeout is not None else self._timeout,
                extensions=self._extensions,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransportError(
                f"{method} {url}: cannot connect: {_why(exc)}",
                kind="timeout" if isinstance(exc, httpx.TimeoutException) else "connect",
                maybe_sent=False,
            ) from exc
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"{method} {url}: no answer within {timeout or self._timeout:g} s",
                kind="timeout",
                maybe_sent=True,
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise TransportError(
                f"{method} {url}: {_why(exc)}", kind="connect", maybe_sent=False
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{method} {url}: {_why(exc)}", kind="protocol", maybe_sent=True
            ) from exc
        return HttpResponse(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=response.content,
            url=str(response.url),
        )

    def download(
        self,
        path_or_url: str,
        sink: Callable[[bytes], object],
        *,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        """GET, handing a 200 answer's body to ``sink`` chunk by chunk (a large export never
        sits in memory); any other answer is returned whole, as :meth:`request` does."""
        url = self.url(path_or_url)
        try:
            with self._client.stream(
                "GET",
                url,
                params=dict(params) if params is not None else None,
                timeout=timeout if timeout is not None else self._timeout,
                extensions=self._extensions,
            ) as response:
                headers = {k.lower(): v for k, v in response.headers.items()}
                if response.status_code != 200:
                    return HttpResponse(response.status_code, headers, response.read(), url)
                for chunk in response.iter_bytes():
                    sink(chunk)
                return HttpResponse(200, headers, b"", str(response.url))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransportError(
                f"GET {url}: cannot connect: {_why(exc)}", kind="connect", maybe_sent=False
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(
                f"GET {url}: {_why(exc)}", kind="protocol", maybe_sent=True
            ) from exc


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
