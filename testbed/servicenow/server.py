"""The simulator's HTTP server: ServiceNow's endpoints, plus an admin API under ``/__sim/``.

Built on the standard library's ``ThreadingHTTPServer`` rather than Starlette + uvicorn like
the product: every answer, errors included, must be in ServiceNow's shape (a framework's own
404/405/422 bodies must never leak), a fault may hang one request for seconds while others
go on (a thread per request does that without any event-loop care), the server runs the
same in a thread of a test as in its own process, and it adds no dependency to the test bed.

Routes (SERVICENOW.md §2-§7):

    POST  /oauth_token.do
    GET   /api/now[/v1|/v2]/table/<table>                   sysparm_query, _limit, _offset,
    GET   /api/now[/v1|/v2]/table/<table>/<sys_id>          _fields, _display_value,
    POST  /api/now[/v1|/v2]/table/change_request            _exclude_reference_link
    PATCH /api/now[/v1|/v2]/table/change_request/<sys_id>   (PUT too)
    GET   /api/sn_chg_rest[/v1]/change/normal[/<sys_id>]
    POST  /api/sn_chg_rest[/v1]/change/normal
    PATCH /api/sn_chg_rest[/v1]/change/normal/<sys_id>

    GET    /__sim/health                    200 once serving
    GET    /__sim/requests                  requests received per endpoint; DELETE resets
    POST   /__sim/faults                    {"kind": "status"|"hang", "status": 429,
                                             "count": 1, "path_prefix": "/api/",
                                             "retry_after": 2, "seconds": 5}; GET, DELETE
    POST   /__sim/tokens/expire             every OAuth access token expires now
    GET    /__sim/changes                   changes with their approvers
    POST   /__sim/changes/<number>/approve  {"as": USER, "comments": "...", "force": false,
    POST   /__sim/changes/<number>/reject    "callback": "signed"|"twice"|"concurrent"|
                                             "forged"|"none"}
    GET    /__sim/callback                  the callback target; POST {"url", "secrets"}
    GET    /__sim/deliveries                every callback delivery attempted, with its answer
    POST   /__sim/quirks                    {"numeric_state": true}: the Table API answers
                                             change states as JSON numbers (-3, not "-3")
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from testbed.servicenow import query as encoded_query
from testbed.servicenow import signing
from testbed.servicenow.render import DisplayMode, table_record, wrapped_record
from testbed.servicenow.store import (
    CHANGE_STATES,
    TABLES,
    Decision,
    Instance,
    Refused,
)

__all__ = ["CallbackMode", "Fault", "ServiceNowServer"]

MAX_BODY = 1 << 20
CallbackMode = Literal["signed", "twice", "concurrent", "forged", "none"]
CALLBACK_MODES: tuple[CallbackMode, ...] = ("signed", "twice", "concurrent", "forged", "none")
_TABLE = re.compile(r"^/api/now(?:/v[12])?/table/([a-z0-9_]+)(?:/([^/]+))?/?$")
_CHANGE = re.compile(r"^/api/sn_chg_rest(?:/v1)?/change/normal(?:/([^/]+))?/?$")
_DECIDE = re.compile(r"^/__sim/changes/([^/]+)/(approve|reject)/?$")
_UNAUTHENTICATED = Refused(401, "User Not Authenticated", "Required to provide Auth information")


@dataclass
class Fault:
    """The next ``count`` requests whose path starts with ``path_prefix`` answer ``status``
    (with ``Retry-After: retry_after`` on 429), or, for ``kind="hang"``, wait ``seconds``
    before being answered normally."""

    kind: Literal["status", "hang"] = "status"
    status: int = 503
    count: int = 1
    path_prefix: str = "/api/"
    retry_after: int = 1
    seconds: float = 0.0


@dataclass
class CallbackTarget:
    url: str = ""
    secrets: list[str] = field(default_factory=list)


class _Answer(Exception):
    """Short-circuits a handler with a finished answer."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def error_body(message: str, detail: str) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def _flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "false").strip().lower() == "true"


class ServiceNowServer:
    """One simulated instance served on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        instance: Instance,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        callback: CallbackTarget | None = None,
        callback_ca_file: Path | None = None,
        verbose: bool = False,
    ) -> None:
        self.instance = instance
        self.callback = callback or CallbackTarget()
        # An https callback URL is verified against the system's CAs, or this bundle only
        # (a receiver with a private CA, as the test bed's controller has).
        self._tls = (
            ssl.create_default_context(cafile=str(callback_ca_file))
            if callback_ca_file is not None
            else None
        )
        self.verbose = verbose
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.deliveries: list[dict[str, Any]] = []
        self.numeric_state = False  # answer "state" as a JSON number in the Table API
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def start(self) -> ServiceNowServer:
        """Serve from a background thread (in-process use)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="servicenow-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- faults and counts -----------------------------------------------------------------

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def count(self, label: str, *, faulted: bool = False) -> None:
        with self._lock:
            self.counts[label] += 1
            if faulted:
                self.faulted[label] += 1

    # --- the callback (SERVICENOW.md §7) ---------------------------------------------------

    def deliver(self, decision: Decision, mode: CallbackMode) -> list[dict[str, Any]]:
        """POST the signed callback of ``decision`` as the customer's business rule would;
        the outcome of each attempt (HTTP status or error)."""
        target = self.callback
        if mode == "none" or not target.url or not target.secrets:
            return []
        change = decision.change
        payload = {
            "type": "change.approval",
            "change": {
                "sys_id": change["sys_id"],
                "number": change["number"],
                "approval": decision.approver["state"],
                "state": change["state"],
            },
            "approver": {
                "sys_id": decision.user["sys_id"],
                "user_name": decision.user["user_name"],
            },
            "comments": decision.comments,
            "correlation_id": change["correlation_id"],
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        message_id, timestamp = signing.new_message_id(), int(time.time())
        secrets_ = [signing.new_secret()] if mode == "forged" else target.secrets
        headers = {
            **signing.headers(secrets_, message_id, timestamp, body),
            "Content-Type": "application/json",
            "User-Agent": "ServiceNow-simulator",
        }
        outcomes: list[dict[str, Any]] = []

        def post() -> None:
            outcome: dict[str, Any] = {"webhook_id": message_id, "mode": mode, "url": target.url}
            # the URL was checked to be http(s) when it was configured
            request = urllib.request.Request(  # noqa: S310
                target.url, data=body, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(  # noqa: S310
                    request, timeout=10, context=self._tls
                ) as response:
                    outcome["status"] = response.status
            except urllib.error.HTTPError as exc:
                outcome["status"] = exc.code
            except OSError as exc:
                outcome["error"] = str(exc)
            with self._lock:
                outcomes.append(outcome)
                self.deliveries.append(outcome)

        if mode == "concurrent":
            threads = [threading.Thread(target=post) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for _ in range(2 if mode == "twice" else 1):
                post()
        return outcomes


# --- the request handler ---------------------------------------------------------------------


def _handler_for(server: ServiceNowServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        sim = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    sim: ServiceNowServer
    _body: bytes | None = None
    protocol_version = "HTTP/1.1"
    server_version = "ServiceNow-simulator"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        if self.sim.verbose:
            sys.stderr.write(f"servicenow-sim: {self.address_string()} {format % args}\n")

    # --- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _raw_body(self) -> bytes:
        """The request's body, read once. Every request's body is read before the answer
        (see ``_dispatch``), or the next request on a kept-alive connection would start in
        the middle of it."""
        if self._body is None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                raise _Answer(
                    413,
                    error_body(
                        "Request too large",
                        f"more than {MAX_BODY} bytes, or no valid Content-Length",
                    ),
                )
            self._body = self.rfile.read(length) if length > 0 else b""
        return self._body

    def _json(self) -> dict[str, Any]:
        raw = self._raw_body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Answer(
                400,
                error_body(
                    "Exception while reading request", f"The payload is not valid JSON: {exc}"
                ),
            ) from None
        if not isinstance(body, dict):
            raise _Answer(
                400,
                error_body("Exception while reading request", "The payload must be a JSON object"),
            )
        return body

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or f'127.0.0.1:{self.sim.port}'}"

    def _dispatch(self, method: str) -> None:
        self._body = None
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query).items()}
        try:
            if path.startswith("/__sim/"):
                status, body, headers = self._admin(method, path)
            else:
                status, body, headers = self._api(method, path, params)
        except _Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        except Refused as refused:
            status, body = refused.status, error_body(refused.message, refused.detail)
            headers = (
                {"WWW-Authenticate": 'BASIC realm="Service-now"'} if refused.status == 401 else {}
            )
        except Exception as exc:  # a bug in the simulator: still in ServiceNow's shape
            status, body, headers = 500, error_body("Simulator error", repr(exc)), {}
        with contextlib.suppress(_Answer):
            self._raw_body()  # an answer given before the body was needed (401, 404...)
        # the client may have given up (a hang fault, its timeout)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(status, body, headers)

    # --- ServiceNow's API ------------------------------------------------------------------

    def _route(self, method: str, path: str) -> str:
        if path == "/oauth_token.do":
            return f"{method} /oauth_token.do"
        if match := _TABLE.match(path):
            suffix = "/{sys_id}" if match.group(2) else ""
            return f"{method} /api/now/table/{match.group(1)}{suffix}"
        if match := _CHANGE.match(path):
            return f"{method} /api/sn_chg_rest/change/normal{'/{sys_id}' if match.group(1) else ''}"
        return f"{method} {path}"

    def _api(
        self, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        label = self._route(method, path)
        fault = self.sim.take_fault(method, path)
        self.sim.count(label, faulted=fault is not None and fault.kind == "status")
        if fault is not None and fault.kind == "hang":
            time.sleep(fault.seconds)
        elif fault is not None:
            if fault.status == 429:
                return (
                    429,
                    error_body(
                        "Rate limit exceeded",
                        f"Too many requests; retry after {fault.retry_after} s",
                    ),
                    {"Retry-After": str(fault.retry_after)},
                )
            return (
                fault.status,
                error_body(
                    "Service unavailable" if fault.status == 503 else "Internal server error",
                    f"simulated HTTP {fault.status}",
                ),
                {},
            )
        if path == "/oauth_token.do":
            return self._token(method)
        user = self._authenticate()
        if match := _TABLE.match(path):
            return self._table(method, match.group(1), match.group(2), params, user)
        if match := _CHANGE.match(path):
            return self._change_api(method, match.group(1), params, user)
        raise Refused(400, "Requested URI does not represent any resource", path)

    def _token(self, method: str) -> tuple[int, Any, dict[str, str]]:
        if method != "POST":
            raise Refused(405, "Method not Supported", f"{method} /oauth_token.do")
        raw = self._raw_body().decode("utf-8", errors="replace")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw).items()}
        issued = self.sim.instance.issue_token(form)
        if issued is None:  # OAuth's own error shape, not the REST API's (SERVICENOW.md §2.2)
            return 401, {"error_description": "access_denied", "error": "server_error"}, {}
        return 200, issued, {"Cache-Control": "no-store"}

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization") or ""
        scheme, _, credential = header.partition(" ")
        user: str | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            name, colon, password = decoded.partition(":")
            user = self.sim.instance.basic(name, password) if colon else None
        elif scheme.lower() == "bearer":
            user = self.sim.instance.bearer(credential.strip())
        if user is None:
            raise _UNAUTHENTICATED
        return user

    def _lookup(self, table: str, sys_id: str) -> Mapping[str, str] | None:
        try:
            return self.sim.instance.get(table, sys_id)
        except Refused:
            return None

    def _shown(self, table: str, record: Mapping[str, str], params: dict[str, str]) -> Any:
        display = params.get("sysparm_display_value", "false").strip().lower()
        if display not in ("true", "false", "all"):
            display = "false"
        fields = [f.strip() for f in params.get("sysparm_fields", "").split(",") if f.strip()]
        mode: DisplayMode = "true" if display == "true" else "all" if display == "all" else "false"
        shown = table_record(
            table,
            record,
            lookup=self._lookup,
            base_url=self._base_url(),
            display=mode,
            fields=fields or None,
            exclude_reference_link=_flag(params, "sysparm_exclude_reference_link"),
        )
        # the contract's "numbers where strings are expected" (SERVICENOW.md §8)
        state = shown.get("state")
        if self.sim.numeric_state and isinstance(state, str) and re.fullmatch(r"-?\d+", state):
            shown["state"] = int(state)
        return shown

    def _query(self, table: str, params: dict[str, str]) -> list[dict[str, str]]:
        try:
            parsed = encoded_query.parse(params.get("sysparm_query", ""))
        except encoded_query.QueryError as exc:
            raise Refused(400, "Invalid query", str(exc)) from None
        found = self.sim.instance.find(table, parsed)
        try:
            offset = max(0, int(params.get("sysparm_offset", "0")))
            limit = max(0, int(params.get("sysparm_limit", "10000")))
        except ValueError:
            raise Refused(
                400, "Invalid value", "sysparm_limit and sysparm_offset are integers"
            ) from None
        return found[offset : offset + limit]

    def _table(
        self, method: str, table: str, sys_id: str | None, params: dict[str, str], user: str
    ) -> tuple[int, Any, dict[str, str]]:
        if table not in TABLES:
            raise Refused(400, "Invalid table", table)
        instance = self.sim.instance
        if method == "GET" and sys_id is None:
            rows = self._query(table, params)
            return (
                200,
                {"result": [self._shown(table, r, params) for r in rows]},
                {"X-Total-Count": str(len(rows))},
            )
        if method == "GET" and sys_id is not None:
            return 200, {"result": self._shown(table, instance.get(table, sys_id), params)}, {}
        if table != "change_request" and method in ("POST", "PATCH", "PUT"):
            raise Refused(
                403, "Operation Failed", f"the simulator writes only change_request, not {table}"
            )
        if method == "POST" and sys_id is None:
            record = instance.create_change(self._json(), user)
            location = f"{self._base_url()}/api/now/table/change_request/{record['sys_id']}"
            return 201, {"result": self._shown(table, record, params)}, {"Location": location}
        if method in ("PATCH", "PUT") and sys_id is not None:
            body = self._json()
            record = instance.update_change(sys_id, body, user)
            return 200, {"result": self._shown(table, record, params)}, {}
        raise Refused(405, "Method not Supported", f"{method} on this resource")

    def _change_api(
        self, method: str, sys_id: str | None, params: dict[str, str], user: str
    ) -> tuple[int, Any, dict[str, str]]:
        instance = self.sim.instance
        fields = [f.strip() for f in params.get("sysparm_fields", "").split(",") if f.strip()]

        def wrapped(record: Mapping[str, str]) -> dict[str, Any]:
            return wrapped_record(
                "change_request", record, lookup=self._lookup, fields=fields or None
            )

        if method == "GET" and sys_id is None:
            rows = [r for r in self._query("change_request", params) if r["type"] == "normal"]
            return 200, {"result": [wrapped(r) for r in rows]}, {}
        if method == "GET" and sys_id is not None:
            return 200, {"result": wrapped(instance.get("change_request", sys_id))}, {}
        if method == "POST" and sys_id is None:
            return 200, {"result": wrapped(instance.create_change(self._json(), user))}, {}
        if method == "PATCH" and sys_id is not None:
            body = self._json()
            return 200, {"result": wrapped(instance.update_change(sys_id, body, user))}, {}
        raise Refused(405, "Method not Supported", f"{method} on this resource")

    # --- the admin API ---------------------------------------------------------------------

    def _admin(self, method: str, path: str) -> tuple[int, Any, dict[str, str]]:
        sim = self.sim
        if path == "/__sim/health" and method == "GET":
            return 200, {"status": "ok"}, {}
        if path == "/__sim/requests":
            if method == "DELETE":
                with sim._lock:
                    sim.counts.clear()
                    sim.faulted.clear()
                return 204, None, {}
            with sim._lock:
                return 200, {"counts": dict(sim.counts), "faulted": dict(sim.faulted)}, {}
        if path == "/__sim/faults":
            if method == "POST":
                fault = self._fault(self._json())
                with sim._lock:
                    sim.faults.append(fault)
                return 201, asdict(fault), {}
            if method == "DELETE":
                with sim._lock:
                    sim.faults.clear()
                return 204, None, {}
            with sim._lock:
                return 200, {"faults": [asdict(f) for f in sim.faults]}, {}
        if path == "/__sim/tokens/expire" and method == "POST":
            return 200, {"expired": sim.instance.expire_tokens()}, {}
        if path == "/__sim/changes" and method == "GET":
            return 200, {"changes": self._changes()}, {}
        if path == "/__sim/callback":
            if method == "POST":
                sim.callback = self._callback_target(self._json())
            return 200, {"url": sim.callback.url, "secrets": len(sim.callback.secrets)}, {}
        if path == "/__sim/quirks":
            if method == "POST":
                numeric = self._json().get("numeric_state", False)
                if not isinstance(numeric, bool):
                    raise Refused(400, "Invalid quirk", "numeric_state is true or false")
                sim.numeric_state = numeric
            return 200, {"numeric_state": sim.numeric_state}, {}
        if path == "/__sim/deliveries" and method == "GET":
            with sim._lock:
                return 200, {"deliveries": list(sim.deliveries)}, {}
        if (match := _DECIDE.match(path)) and method == "POST":
            return self._decide(match.group(1), match.group(2), self._json())
        raise Refused(404, "No such admin endpoint", f"{method} {path}")

    @staticmethod
    def _fault(body: dict[str, Any]) -> Fault:
        kind = body.get("kind", "status")
        status, count = body.get("status", 503), body.get("count", 1)
        if kind not in ("status", "hang") or not isinstance(status, int) or not 400 <= status < 600:
            raise Refused(400, "Invalid fault", "kind is 'status' or 'hang'; status 400-599")
        if not isinstance(count, int) or count < 1:
            raise Refused(400, "Invalid fault", "count is a positive integer")
        try:
            retry_after, seconds = int(body.get("retry_after", 1)), float(body.get("seconds", 0))
        except (TypeError, ValueError):
            raise Refused(400, "Invalid fault", "retry_after and seconds are numbers") from None
        return Fault(
            kind=kind,
            status=status,
            count=count,
            path_prefix=str(body.get("path_prefix", "/api/")),
            retry_after=retry_after,
            seconds=seconds,
        )

    @staticmethod
    def _callback_target(body: dict[str, Any]) -> CallbackTarget:
        url, secrets_ = body.get("url", ""), body.get("secrets", [])
        if isinstance(secrets_, str):
            secrets_ = [secrets_]
        if not isinstance(url, str) or not isinstance(secrets_, list):
            raise Refused(400, "Invalid callback", "url is a string, secrets a list")
        if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise Refused(400, "Invalid callback", f"{url!r} is not an http(s) URL")
        for secret in secrets_:
            try:
                signing.key_of(str(secret))
            except ValueError as exc:
                raise Refused(400, "Invalid callback", str(exc)) from None
        return CallbackTarget(url, [str(s) for s in secrets_])

    def _changes(self) -> list[dict[str, Any]]:
        instance = self.sim.instance
        shown = []
        for change in instance.find("change_request", encoded_query.EncodedQuery()):
            group = self._lookup("sys_user_group", change["assignment_group"])
            approvers = []
            for record in instance.find(
                "sysapproval_approver", encoded_query.parse(f"sysapproval={change['sys_id']}")
            ):
                user = self._lookup("sys_user", record["approver"])
                approvers.append(
                    {
                        "user_name": user["user_name"] if user else record["approver"],
                        "state": record["state"],
                        "comments": record["comments"],
                    }
                )
            shown.append(
                {
                    "number": change["number"],
                    "sys_id": change["sys_id"],
                    "state": change["state"],
                    "state_label": CHANGE_STATES[change["state"]],
                    "approval": change["approval"],
                    "assignment_group": group["name"] if group else change["assignment_group"],
                    "correlation_id": change["correlation_id"],
                    "short_description": change["short_description"],
                    "close_code": change.get("close_code", ""),
                    "close_notes": change.get("close_notes", ""),
                    "approvers": approvers,
                }
            )
        return shown

    def _decide(
        self, number: str, action: str, body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        user_name, comments = body.get("as"), body.get("comments", "")
        mode = body.get("callback", "signed")
        if not isinstance(user_name, str) or not user_name:
            raise Refused(400, "Invalid decision", "'as' names the deciding user's user_name")
        if mode not in CALLBACK_MODES or not isinstance(comments, str):
            raise Refused(
                400,
                "Invalid decision",
                f"callback is one of {', '.join(CALLBACK_MODES)}; comments a string",
            )
        verdict: Literal["approved", "rejected"] = "approved" if action == "approve" else "rejected"
        decision = self.sim.instance.decide(
            number, user_name, verdict, comments, force=body.get("force") is True
        )
        deliveries = self.sim.deliver(decision, mode)
        return (
            200,
            {
                "change": decision.change,
                "approver": decision.approver,
                "moved_change": decision.moved_change,
                "deliveries": deliveries,
            },
            {},
        )
