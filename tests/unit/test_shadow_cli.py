"""``canary shadow-collector``: its options and KSC_SHADOW_COLLECTOR_* settings reach the
collector it serves, bad values are refused by name (exit 2), and a port it cannot listen on
is exit 3. No socket is opened: the HTTP server is replaced by a stand-in that keeps the app,
which the tests then call through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner, Result
from starlette.types import ASGIApp

import canary.log
import canary.server
from canary.cli import main as canary_main
from canary.shadow.events import RESPONSE_TYPE


class FakeServer:
    """Stands in for canary.server.HttpServer; ``fail`` makes start raise as a taken port
    would."""

    built: ClassVar[list[FakeServer]] = []
    fail: ClassVar[str | None] = None

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.options = options
        self.started = False
        self.stopped = False
        FakeServer.built.append(self)

    @property
    def port(self) -> int:
        return int(self.options["port"]) or 54321

    def start(self) -> None:
        if FakeServer.fail is not None:
            raise canary.server.HttpServerError(FakeServer.fail)
        self.started = True

    def stop(self) -> None:
        self.stopped = True


class SetEvent:
    """A threading.Event that is already set: the command returns instead of serving."""

    def set(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeServer]:
    FakeServer.built = []
    FakeServer.fail = None
    monkeypatch.setattr(canary.server, "HttpServer", FakeServer)
    monkeypatch.setattr(canary.log, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(threading, "Event", SetEvent)
    monkeypatch.setattr("signal.signal", lambda *args: None)
    return FakeServer


def run(*args: str) -> Result:
    return CliRunner().invoke(canary_main, ["shadow-collector", *args])


def post(app: ASGIApp, body: dict[str, Any], isvc: str) -> httpx.Response:
    headers = {
        "ce-specversion": "1.0", "ce-id": "r1", "ce-type": RESPONSE_TYPE,
        "ce-inferenceservicename": isvc, "ce-namespace": "credit",
        "content-type": "application/json",
    }  # fmt: skip

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as c:
            return await c.post("/", content=json.dumps(body), headers=headers)

    return asyncio.run(go())


def test_the_defaults_serve_plain_http_on_port_9400(fake: type[FakeServer]) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    assert "shadow collector on http port 9400" in result.output
    [server] = fake.built
    assert server.options == {"host": "0.0.0.0", "port": 9400, "certfile": None, "keyfile": None}
    assert server.started
    assert server.stopped
    body = {"predictions": [{"decision": "approve", "score": 0.5}]}
    assert post(server.app, body, "champion").status_code == 202
    assert post(server.app, body, "challenger").json()["pairs"] == 1


def test_the_options_reach_the_collector(fake: type[FakeServer]) -> None:
    result = run("--host", "127.0.0.1", "--port", "9555", "--decision-field", "label",
                 "--score-field", "p", "--max-body-bytes", "2048")  # fmt: skip
    assert result.exit_code == 0, result.output
    [server] = fake.built
    assert (server.options["host"], server.options["port"]) == ("127.0.0.1", 9555)
    body = {"predictions": [{"label": "fraud", "p": 0.9}]}
    post(server.app, body, "champion")
    assert post(server.app, body, "challenger").json()["pairs"] == 1
    large = {"predictions": [{"label": "x" * 3000, "p": 0.9}]}
    assert post(server.app, large, "champion").status_code == 413


def test_the_settings_come_from_the_environment_and_options_override_them(
    fake: type[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSC_SHADOW_COLLECTOR_PORT", "9601")
    monkeypatch.setenv("KSC_SHADOW_COLLECTOR_SCORE_FIELD", "probability")
    assert run().exit_code == 0
    assert run("--port", "9602").exit_code == 0
    first, second = fake.built
    assert (first.options["port"], second.options["port"]) == (9601, 9602)
    body = {"predictions": [{"decision": "a", "probability": 0.1}]}
    post(first.app, body, "champion")
    assert post(first.app, body, "challenger").json()["pairs"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl-seconds", "0"], "setting shadow_collector_ttl_seconds: Input should be greater "
         "than 0"),
        (["--max-pending", "0"], "setting shadow_collector_max_pending: Input should be greater "
         "than or equal to 1"),
        (["--port", "70000"], "setting shadow_collector_port: Input should be less than or "
         "equal to 65535"),
        (["--decision-field", "score"], "setting shadow_collector_score_field: the same as "
         "shadow_collector_decision_field; a response's decision and score are read from "
         "different fields (got 'score')"),
        (["--decision-field", ""], "setting shadow_collector_decision_field: String should have "
         "at least 1 character"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_by_setting_name(
    fake: type[FakeServer], args: list[str], message: str
) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert fake.built == []


def test_a_port_it_cannot_listen_on_is_exit_3(fake: type[FakeServer]) -> None:
    fake.fail = "cannot listen on 0.0.0.0:9400: [Errno 98] Address already in use"
    result = run()
    assert result.exit_code == 3
    assert "error: cannot listen on 0.0.0.0:9400: [Errno 98] Address already in use" in (
        result.output
    )
