"""The test bed's settings for many InferenceServices (testbed.testbed.Scale): Prometheus'
scrape interval, and the apiserver's audit log of one user's requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.binaries import Binaries
from testbed.cluster import Cluster
from testbed.prometheus import PrometheusServer
from testbed.testbed import AUDITED_USER, Scale


@pytest.mark.parametrize(
    ("interval", "scrape", "timeout"),
    [(1.0, "1s", "900ms"), (5.0, "5s", "4500ms"), (0.5, "500ms", "450ms"), (30.0, "30s", "10s")],
)
def test_the_scrape_interval_sets_the_scrape_and_its_timeout(
    tmp_path: Path, interval: float, scrape: str, timeout: str
) -> None:
    config = PrometheusServer(tmp_path, tmp_path / "targets.json",
                              scrape_interval=interval).config()  # fmt: skip
    assert config["global"]["scrape_interval"] == scrape
    assert config["global"]["scrape_timeout"] == timeout
    assert config["global"]["evaluation_interval"] == scrape


def test_a_scrape_interval_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scrape interval"):
        PrometheusServer(tmp_path, tmp_path / "targets.json", scrape_interval=0)


def _cluster(tmp_path: Path, users: tuple[str, ...]) -> Cluster:
    binaries = Binaries(tmp_path / "kube-apiserver", tmp_path / "etcd", {})
    return Cluster(tmp_path / "cluster", binaries, audit_users=users)


def test_the_audit_log_keeps_the_given_users_requests_only(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, ("someone",))
    cluster.work_dir.mkdir(parents=True)
    flags = cluster._audit_flags()
    policy_flag = next(f for f in flags if f.startswith("--audit-policy-file="))
    policy = yaml.safe_load(Path(policy_flag.split("=", 1)[1]).read_text())
    assert policy["rules"] == [{"level": "Metadata", "users": ["someone"]}, {"level": "None"}]
    assert set(policy["omitStages"]) == {"RequestReceived", "ResponseStarted"}  # one a request
    assert f"--audit-log-path={cluster.audit_log_path}" in flags
    assert "--audit-log-format=json" in flags


def test_without_audited_users_there_is_no_audit_log(tmp_path: Path) -> None:
    assert _cluster(tmp_path, ())._audit_flags() == []


def test_the_default_scale_is_the_test_suites() -> None:
    scale = Scale()
    assert (scale.traffic_mode, scale.tick_interval, scale.profiles, scale.scrape_interval) == (
        "per-request", 0.2, None, 1.0,
    )  # fmt: skip
    assert scale.audit_users == (AUDITED_USER,)  # nobody uses it but a benchmark
