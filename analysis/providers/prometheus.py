"""Prometheus as a :class:`~analysis.providers.base.MetricProvider`.

The only module that imports ``prometheus_api_client``. Queries go through
``PrometheusConnect.custom_query`` as instant queries at an explicit ``time``, with the
server-side ``timeout`` set too, so a slow query is cut off by Prometheus (which says so)
before the client gives up.

``custom_query`` returns only ``data.result`` and reports any other status as an exception
whose text holds the body's ``repr``. The provider therefore gives the client its own
``requests`` session with a response hook that keeps the raw response: the digest is the
SHA-256 of the exact bytes Prometheus sent, the result type is checked (instant vectors
only; a scalar or a matrix is a ``BadQuery``), and a refusal is mapped from its real status
code and Prometheus' own ``error`` text. The client's built-in retries (three, one second
apart) are turned off in favour of a bounded number with a short backoff.

=====================================  ==========================================
Prometheus' answer                     raised
=====================================  ==========================================
success, vector with series            (a :class:`~analysis.types.QueryResult`)
success, empty vector                  ``NoData``
success, empty vector with warnings    ``PartialAnswer`` (maybe not empty at all)
success, scalar / matrix / string      ``BadQuery``
HTTP 400 (bad_data), 422 (execution)   ``BadQuery`` with Prometheus' message
connection refused, timeout; 429, 5xx  retried, then ``Unreachable``
HTTP 401 / 403, other statuses, junk   ``ProviderError``
=====================================  ==========================================

Each series keeps its sample timestamp, and the answer its ``warnings`` (Prometheus sends
them with a partial answer) and how many attempts it took, with what went wrong in each
failed one; an error after retries carries the same. Judging them is
:mod:`analysis.validate`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from analysis.types import (
    BadQuery,
    MetricError,
    NoData,
    PartialAnswer,
    ProviderError,
    QueryResult,
    Series,
    Unreachable,
)

__all__ = ["PrometheusProvider"]

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_REFUSED_QUERY_STATUS = frozenset({400, 422})
_MAX_SNIPPET = 300


def _public(url: str) -> str:
    """``url`` without credentials, query or fragment: what evidence may record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # not JSON (or not UTF-8)
        return None


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= _MAX_SNIPPET else text[:_MAX_SNIPPET] + "…"


def _reason(exc: requests.RequestException) -> str:
    """The useful part of a connection error (requests wraps urllib3's several times)."""
    inner: object = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", inner)
    text = str(inner)
    if "object at 0x" in text:  # "<HTTPConnection object at 0x…>: Failed to establish …"
        text = text.split(">: ", 1)[-1]
    return text or type(exc).__name__


def _number(text: object) -> float:
    """A sample's value or time: a number, or a string of one ("NaN", "+Inf" too)."""
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def _sample(labels: dict[str, str], value: object) -> Series:
    """One series of a vector; a sample that cannot be read is kept, marked, as NaN (the
    validation makes it an error of that series alone)."""
    try:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"the sample {value!r} is not [time, value]")
        return Series(labels, _number(value[1]), _number(value[0]))
    except ValueError as exc:
        return Series(labels, math.nan, None, unreadable=_snippet(str(exc).encode()))


class PrometheusProvider:
    """Instant queries against the Prometheus at ``url``.

    ``timeout`` (seconds) bounds each attempt, on the server (``timeout`` parameter) and in
    the client; ``retries`` is how many times a connection failure, timeout, 429 or 5xx is
    retried, ``backoff`` seconds after the first and doubling. ``bearer_token`` is sent as
    ``Authorization: Bearer``. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        bearer_token: str | None = None,
        backoff: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"Prometheus URL must be http(s)://host[:port][/path], got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self._url = url.rstrip("/")
        self._public_url = _public(url)
        self._timeout = float(timeout)
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._local = threading.local()
        session = requests.Session()
        session.hooks["response"].append(self._keep_response)
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
        self._client: Any = PrometheusConnect(
            url=self._url,
            headers=headers,
            retry=Retry(total=0, read=False),  # retries are ours, bounded and quick
            session=session,
        )

    @property
    def url(self) -> str:
        """The server's URL as evidence records it (no credentials)."""
        return self._public_url

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _keep_response(
        self, response: requests.Response, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Keep the response, and decode its body once: the client library decodes it again
        in ``custom_query`` otherwise (half the look rounds' CPU with large answers), so its
        ``json`` is given the payload decoded here."""
        payload = _json(response.content)
        self._local.response = response
        self._local.payload = payload
        if payload is not None:
            response.__dict__["json"] = lambda **_: payload
        return response

    # --- querying ----------------------------------------------------------------------

    def query(self, promql: str, at: datetime) -> QueryResult:
        """Evaluate ``promql`` at ``at``; raises a :class:`~analysis.types.MetricError`."""
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        params = {"time": f"{at.timestamp():.3f}", "timeout": f"{self._timeout:g}"}
        attempts = self._retries + 1
        failures: list[str] = []
        for attempt in range(1, attempts + 1):
            answer = self._attempt(promql, params)
            if isinstance(answer, QueryResult):
                return replace(answer, attempts=attempt, failures=tuple(failures))
            error, transient = answer
            if not transient or attempt == attempts:
                error.at = at
                error.attempts = attempt
                error.failures = (*failures, *(() if isinstance(error, NoData) else
                                               (error.message,)))  # fmt: skip
                if attempt > 1:
                    error.message = f"{error.message} (after {attempt} attempts)"
                    error.args = (error.message,)
                raise error
            failures.append(error.message)
            self._sleep(self._backoff * 2 ** (attempt - 1))
        raise AssertionError("not reached")  # pragma: no cover

    def _attempt(
        self, promql: str, params: dict[str, str]
    ) -> QueryResult | tuple[MetricError, bool]:
        """One request: a result, or an error and whether it is worth retrying."""
        self._local.response = self._local.payload = None
        try:
            # (connect, read): the read allows for Prometheus' own timeout answer to arrive
            self._client.custom_query(
                promql, params=params, timeout=(self._timeout, self._timeout + 1.0)
            )
        except requests.exceptions.InvalidJSONError:
            pass  # a body that is not JSON: the kept response tells what it was
        except requests.Timeout:
            return Unreachable(
                f"Prometheus at {self._public_url} did not answer within {self._timeout:g} s",
                query=promql,
            ), True
        except requests.RequestException as exc:
            return Unreachable(
                f"Prometheus at {self._public_url} is unreachable: {_reason(exc)}", query=promql
            ), True
        except (PrometheusApiClientException, KeyError, TypeError):
            pass  # not a success: the kept response tells why
        response: requests.Response | None = self._local.response
        payload: Any = self._local.payload
        self._local.response = self._local.payload = None
        if response is None:
            return Unreachable(f"no response from Prometheus at {self._public_url}",
                               query=promql), True  # fmt: skip
        return self._interpret(response, payload, promql)

    def _interpret(
        self, response: requests.Response, payload: Any, promql: str
    ) -> QueryResult | tuple[MetricError, bool]:
        body = response.content
        digest = hashlib.sha256(body).hexdigest()
        status = response.status_code
        if status == 200:
            return self._result(payload, promql, digest, body)
        problem, code = _snippet(body), f"HTTP {status}"
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            problem, code = payload["error"], f"HTTP {status}, {payload.get('errorType')}"
        where = f"Prometheus at {self._public_url}"
        if status in _REFUSED_QUERY_STATUS:
            return BadQuery(f"{where} refused the query ({code}): {problem}",
                            query=promql, raw_digest=digest), False  # fmt: skip
        if status in _TRANSIENT_STATUS:
            return Unreachable(f"{where} could not answer ({code}): {problem}",
                               query=promql, raw_digest=digest), True  # fmt: skip
        if status in {401, 403}:
            return ProviderError(f"{where} refused our credentials ({code}): {problem}",
                                 query=promql, raw_digest=digest), False  # fmt: skip
        return ProviderError(f"{where} answered {code}: {problem}",
                             query=promql, raw_digest=digest), False  # fmt: skip

    def _result(
        self, payload: Any, promql: str, digest: str, body: bytes
    ) -> QueryResult | tuple[MetricError, bool]:
        def junk(why: str) -> tuple[MetricError, bool]:
            return ProviderError(
                f"Prometheus at {self._public_url} sent {why}: {_snippet(body)}",
                query=promql,
                raw_digest=digest,
            ), False

        if not isinstance(payload, dict) or payload.get("status") != "success":
            return junk("a body that is not a Prometheus API success")
        data = payload.get("data")
        if not isinstance(data, dict):
            return junk("no data")
        result_type, result = data.get("resultType"), data.get("result")
        if result_type != "vector":
            return BadQuery(
                f"the query gives a {result_type}, not an instant vector; analysis queries "
                "must return one series per revision",
                query=promql,
                raw_digest=digest,
            ), False
        if not isinstance(result, list):
            return junk("a vector that is not a list")
        warnings = payload.get("warnings") or []
        if not isinstance(warnings, list):
            return junk("warnings that are not a list")
        notes = tuple(str(w) for w in warnings)
        series: list[Series] = []
        try:
            for item in result:
                metric = item["metric"]
                # JSON names are text; a value that is not is made text. The decoded
                # mapping is kept as it is when every value is text (answers are big).
                if type(metric) is dict and all(type(v) is str for v in metric.values()):
                    labels = metric
                else:
                    labels = {str(k): str(v) for k, v in metric.items()}
                series.append(_sample(labels, item.get("value")))
        except (KeyError, TypeError, AttributeError):  # not a vector of {metric, value}
            return junk("a malformed vector")
        if not series:
            if notes:
                return PartialAnswer(
                    f"no series, and warnings that some may be missing: {'; '.join(notes)}",
                    series="(no series)",
                    rule="partial",
                    query=promql,
                    raw_digest=digest,
                ), False
            return NoData("the query returned no series", query=promql, raw_digest=digest), False
        return QueryResult(tuple(series), digest, self._public_url, warnings=notes)
