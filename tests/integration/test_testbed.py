"""The test bed as a user meets it: `python -m testbed up/status/down`, and the parts wired
together (KServe status drives simulated traffic, which Prometheus scrapes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from canary.k8s.client import INFERENCE_SERVICE
from testbed.behaviour import BehaviourBook, ModelBehaviour
from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The test bed is not installed with the product: its command finds it on PYTHONPATH.
TESTBED = [sys.executable, "-m", "testbed"]


def _env(**extra: str) -> dict[str, str]:
    inherited = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join([str(REPO), *([inherited] if inherited else [])])
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TESTBED, *args], capture_output=True, text=True, timeout=300, check=False, env=_env()
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _pids_and_ports(state: dict[str, Any]) -> tuple[list[int], list[int]]:
    pids = [int(p) for p in state["cluster"]["pids"].values()]
    pids += [int(state["prometheus"]["pid"]), int(state["simulators_pid"])]
    ports = [int(p) for p in state["cluster"]["ports"].values()]
    ports.append(int(state["prometheus"]["port"]))
    return pids, ports


def test_the_command_starts_everything_in_the_background_and_down_leaves_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sandbox"
    up = _run("up", "--dir", str(directory))
    assert up.returncode == 0, up.stderr
    assert "export KUBECONFIG=" in up.stdout
    state = json.loads((directory / "state.json").read_text())
    pids, ports = _pids_and_ports(state)
    try:
        assert all(_alive(pid) for pid in pids), "the sandbox outlives the command"
        status = _run("status", "--dir", str(directory))
        assert status.returncode == 0, status.stdout
        assert "DOWN" not in status.stdout
        again = _run("up", "--dir", str(directory))
        assert "already up" in again.stdout
    finally:
        down = _run("down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert "sandbox stopped" in down.stdout
    assert [pid for pid in pids if _alive(pid)] == []
    assert [port for port in ports if _listening(port)] == []
    gone = _run("status", "--dir", str(directory))
    assert gone.returncode == 1
    assert "no sandbox" in gone.stdout


def test_up_with_a_relative_dir_works_from_anywhere(tmp_path: Path) -> None:
    """`--dir sb` is taken relative to where the command runs, and every process the
    sandbox starts (Prometheus reads its config file by path) gets it absolute."""
    relative = subprocess.run(
        [*TESTBED, "up", "--dir", "sb"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    directory = tmp_path / "sb"
    try:
        assert relative.returncode == 0, relative.stderr
        assert f"logs: {directory}" in relative.stdout
        state = json.loads((directory / "state.json").read_text())
        assert Path(state["kubeconfig"]).is_absolute()
        status = _run("status", "--dir", str(directory))
        assert status.returncode == 0, status.stdout
        assert "DOWN" not in status.stdout
    finally:
        down = subprocess.run(
            [*TESTBED, "down", "--dir", "sb"],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=_env(),
        )  # fmt: skip
    assert "sandbox stopped" in down.stdout


def test_a_missing_crd_directory_is_reported_not_half_started(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TESTBED, "up", "--dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(KSC_CRD_DIR=str(tmp_path / "nowhere")),
    )
    assert result.returncode == 3
    assert "CRD directory" in result.stderr
    assert "KSC_CRD_DIR" in result.stderr
    assert not (tmp_path / "s" / "state.json").exists()


def test_status_split_drives_traffic_that_prometheus_sees(testbed: Testbed) -> None:
    namespace = testbed.namespace("traffic-wiring")
    uri = "s3://models/wiring/v1"
    testbed.set_behaviour(
        testbed.behaviour()
        .with_model(uri, ModelBehaviour(error_rate=0.0))
        .with_rate(namespace, "scorer", 200.0)
    )
    testbed.kube.create(
        INFERENCE_SERVICE,
        namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "scorer"},
            "spec": {
                "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
            },
        },
    )
    assert testbed.prometheus is not None
    query = (
        "sum by (revision) (rate(http_server_request_duration_seconds_count"
        f'{{namespace="{namespace}"}}[5s]))'
    )
    # Prometheus picks up new targets every 5 s; the first rate() windows hold only part of
    # the data, so wait for a window full of samples.
    deadline = time.monotonic() + 45
    result: list[Any] = []
    while time.monotonic() < deadline:
        result = testbed.prometheus.query(query)
        if result and float(result[0]["value"][1]) > 150:
            break
        time.sleep(0.5)
    assert [r["metric"]["revision"] for r in result] == ["scorer-predictor-00001"]
    assert float(result[0]["value"][1]) == pytest.approx(200.0, rel=0.25)
    status = testbed.kube.get(INFERENCE_SERVICE, namespace, "scorer")["status"]
    assert status["components"]["predictor"]["latestRolledoutRevision"] == "scorer-predictor-00001"


def test_behaviour_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "behaviour.yaml"
    book = BehaviourBook().with_model("s3://m/v2", ModelBehaviour(error_rate=0.2))
    book.save(path)
    assert BehaviourBook.load(path).for_model("s3://m/v2").error_rate == 0.2
    assert BehaviourBook.load(path).for_model("s3://m/other").error_rate == 0.01
