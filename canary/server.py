"""The HTTP(S) server: uvicorn running the API in a background thread.

:meth:`HttpServer.start` binds the socket itself (so port 0 picks a free port and
:attr:`HttpServer.port` tells which), starts uvicorn on it in a daemon thread and returns
once the server listens; a bad certificate or a taken port raises there, in the caller.
:meth:`HttpServer.stop` asks uvicorn to finish its requests and waits for the thread.

With ``certfile`` and ``keyfile`` it serves HTTPS, which the apiserver requires of
admission webhooks; without them plain HTTP (probes and scrapes on a private network, tests).
While it serves HTTPS it watches the two files (every ``reload_interval`` seconds, on the
server's event loop) and loads a rotated pair into the TLS context it serves from, so new
connections get the new certificate without a restart (:mod:`canary.tls_reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Literal

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from canary.metrics import ControllerMetrics
from canary.tls_reload import CertificateReloader

__all__ = ["PEER_CERTIFICATE", "HttpServer", "HttpServerError"]

PEER_CERTIFICATE = "tls_peer_certificate"
"""Key in each request's ``state`` (``request.state``): the client certificate verified in
the TLS handshake, as :meth:`ssl.SSLSocket.getpeercert` describes it, or None."""


class _PeerAwareH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the connection's verified client certificate in
    every request's ``state`` (ASGI has no standard place for it). One protocol object
    serves one connection, and each request's state is a copy of ``app_state``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        self.app_state = {**self.app_state, PEER_CERTIFICATE: peer or None}


_POLL = 0.01


class HttpServerError(RuntimeError):
    """The server could not start."""


class HttpServer:
    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        certfile: Path | None,
        keyfile: Path | None,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        reload_interval: float = 5.0,
        metrics: ControllerMetrics | None = None,
        client_ca: bytes | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("TLS needs both certfile and keyfile (or neither, for plain HTTP)")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {port}")
        if reload_interval <= 0:
            raise ValueError(f"reload_interval must be positive, not {reload_interval}")
        if client_ca is not None and certfile is None:
            raise ValueError("client certificates need TLS: give certfile and keyfile")
        self._app = app
        self._host = host
        self._requested_port = port
        self._certfile = certfile
        self._keyfile = keyfile
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._reload_interval = reload_interval
        self._metrics = metrics
        self._client_ca = client_ca
        self._reloader: CertificateReloader | None = None
        self._watching = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def scheme(self) -> Literal["http", "https"]:
        return "https" if self._certfile is not None else "http"

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def certificate_reloader(self) -> CertificateReloader | None:
        """The watcher of the certificate files (HTTPS only, once started)."""
        return self._reloader

    @property
    def watching_certificates(self) -> bool:
        """True while the certificate files are being watched (HTTPS, between start and
        stop)."""
        return self._watching

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the server was already started; build a new HttpServer")
        config = uvicorn.Config(
            self._app,
            host=self._host,
            port=self._requested_port,
            ssl_certfile=self._certfile,
            ssl_keyfile=self._keyfile,
            lifespan="off",
            ws="none",
            http=_PeerAwareH11,
            loop="asyncio",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(self._shutdown_timeout) or 1,
        )
        reloader = None
        if self._certfile is not None and self._keyfile is not None:
            # read before the first load: a rotation in between is then seen on the first poll
            reloader = CertificateReloader(
                None, self._certfile, self._keyfile, metrics=self._metrics
            )
        try:
            config.load()  # reads the certificate and key: their errors surface here
        except (OSError, ValueError) as exc:
            raise HttpServerError(f"cannot load the TLS certificate or key: {exc}") from exc
        if reloader is not None:
            assert config.ssl is not None
            reloader.attach(config.ssl)  # the context every new connection is wrapped with
        if self._client_ca is not None:
            assert config.ssl is not None
            try:
                config.ssl.load_verify_locations(cadata=self._client_ca.decode("ascii"))
            except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
                raise HttpServerError(f"cannot load the client CA: {exc}") from exc
            # A client may present a certificate; one that does not chain to the CA fails the
            # handshake. Without one (the apiserver calling the webhook, probes, scrapes, a
            # bearer token) nothing changes.
            config.ssl.verify_mode = ssl.CERT_OPTIONAL
        self._reloader = reloader
        sock = self._bind()
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"http-server-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not self._thread.is_alive():
                sock.close()
                raise HttpServerError(f"the HTTP server stopped while starting: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise HttpServerError(
                    f"the HTTP server did not start within {self._startup_timeout:g} s"
                )
            time.sleep(_POLL)

    def _bind(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise HttpServerError(f"cannot resolve {self._host!r}: {exc}") from exc
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise HttpServerError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc}"
            ) from exc
        return sock

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
                runner.run(self._serve(server, sock))
        except BaseException as exc:  # uvicorn exits a failed start with SystemExit
            self._error = exc

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        """uvicorn's serve, with the certificate watcher beside it on the same loop."""
        watcher = None
        if self._reloader is not None:
            watcher = asyncio.create_task(self._reloader.watch(self._reload_interval))
            self._watching = True
        try:
            await server.serve(sockets=[sock])
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                self._watching = False

    def stop(self) -> None:
        """Finish in-flight requests (up to ``shutdown_timeout``), then close; idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self._shutdown_timeout + 1.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(self._shutdown_timeout)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
