"""A proxy in front of the test bed's real Prometheus that breaks its answers on demand.

The controller talks to the proxy exactly as to Prometheus (the same HTTP API), so what
is tested is the controller's real client, its errors and its decisions. Faults:

``pass``     forward unchanged
``down``     close the connection without an answer (as a crashed server)
``slow``     wait ``delay`` seconds before answering (longer than the client's timeout)
``nan``      every sample value becomes NaN
``inf``      every sample value becomes +Inf
``several``  every series is returned twice
``empty``    every result is empty

With ``only`` set, the fault hits only the queries whose text contains it (the others pass).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Fault = Literal["pass", "down", "slow", "nan", "inf", "several", "empty"]
FAULTS: tuple[Fault, ...] = ("down", "slow", "nan", "inf", "several", "empty")


class FaultyPrometheus:
    def __init__(self, upstream: str, *, delay: float = 2.5) -> None:
        self.upstream = upstream.rstrip("/")
        self.fault: Fault = "pass"
        self.delay = delay
        self.only: str | None = None
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                proxy.handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy.handle(self, self.rfile.read(length))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes | None) -> None:
        self.requests += 1
        fault = self.fault
        if self.only is not None:
            text = urllib.parse.unquote_plus(request.path + "?" + (body or b"").decode("latin-1"))
            if self.only not in text:
                fault = "pass"
        if fault == "down":
            request.close_connection = True
            request.connection.close()
            return
        if fault == "slow":
            time.sleep(self.delay)
        upstream = urllib.request.Request(
            self.upstream + request.path,
            data=body,
            method=request.command,
            headers={"Content-Type": request.headers.get("Content-Type", "")} if body else {},
        )
        try:
            with urllib.request.urlopen(upstream, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        if status == 200 and fault in {"nan", "inf", "several", "empty"}:
            payload = json.dumps(_mangle(json.loads(payload), fault)).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            return  # the client gave up (it timed out)


def _mangle(document: dict[str, Any], fault: Fault) -> dict[str, Any]:
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        return document
    result: list[dict[str, Any]] = data["result"]
    if fault == "empty":
        result = []
    elif fault == "several":
        result = [copy for series in result for copy in (series, json.loads(json.dumps(series)))]
    else:
        text = "NaN" if fault == "nan" else "+Inf"
        for series in result:
            if isinstance(series.get("value"), list):
                series["value"] = [series["value"][0], text]
    return {**document, "data": {**data, "result": result}}
