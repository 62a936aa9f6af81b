"""The serving-certificate reload logic (canary/tls_reload.py), without sockets: which
certificate a context presents is read from a TLS handshake held in memory (two MemoryBIOs).
Over real sockets, through the HTTP server: tests/integration/test_certificate_reload.py."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from canary.metrics import ControllerMetrics
from canary.tls_reload import CertificateReloader, certificate_facts
from tests.tls_pairs import Pair, SecretVolume, make_pair


def presented(context: ssl.SSLContext) -> bytes:
    """The DER certificate ``context`` presents to a new client."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the in-memory handshake did not complete"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def served_context(pair: Pair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "a": make_pair(root / "a", 0xA1),
        "b": make_pair(root / "b", 0xB2),
        "encrypted": make_pair(root / "encrypted", 0xE3, passphrase="secret"),
    }


class Served:
    """A context serving pair A from plain files in ``folder``, and its reloader."""

    def __init__(self, folder: Path, a: Pair, metrics: ControllerMetrics) -> None:
        self.cert, self.key = folder / "tls.crt", folder / "tls.key"
        self.write(a)
        self.reloader = CertificateReloader(None, self.cert, self.key, metrics=metrics)
        self.context = served_context(Pair(self.cert, self.key, a.serial))
        self.reloader.attach(self.context)

    def write(self, pair: Pair, *, cert: bool = True, key: bool = True) -> None:
        if cert:
            self.cert.write_bytes(pair.cert.read_bytes())
        if key:
            self.key.write_bytes(pair.key.read_bytes())


@pytest.fixture
def metrics() -> ControllerMetrics:
    return ControllerMetrics()


@pytest.fixture
def served(tmp_path: Path, pairs: dict[str, Pair], metrics: ControllerMetrics) -> Served:
    return Served(tmp_path, pairs["a"], metrics)


def counts(metrics: ControllerMetrics) -> tuple[float, float]:
    def value(name: str) -> float:
        found = metrics.registry.get_sample_value(name)
        assert found is not None, name
        return found

    return (
        value("kserve_canary_certificate_reloads_total"),
        value("kserve_canary_certificate_reload_failures_total"),
    )


def test_files_that_did_not_change_are_not_reloaded(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    assert served.reloader.poll() == "unchanged"
    served.write(pairs["a"])  # rewritten with the same content: a newer mtime only
    assert served.reloader.poll() == "unchanged"
    assert presented(served.context) == pairs["a"].der
    assert counts(metrics) == (0, 0)


def test_a_new_pair_is_loaded_into_the_same_context(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    served.write(pairs["b"])
    with capture_logs() as logs:
        assert served.reloader.poll() == "reloaded"
    assert presented(served.context) == pairs["b"].der
    assert counts(metrics) == (1, 0)
    (event,) = [e for e in logs if e["event"] == "server.certificate_reloaded"]
    assert event["serial"] == "B2"
    assert datetime.fromisoformat(event["not_after"]) > datetime.now(UTC)
    assert served.reloader.poll() == "unchanged"
    assert counts(metrics) == (1, 0)


def test_the_kubelet_symlink_swap_is_seen_even_with_older_file_times(
    tmp_path: Path, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(pairs["a"])
    reloader = CertificateReloader(None, volume.cert, volume.key, metrics=metrics)
    context = served_context(Pair(volume.cert, volume.key, pairs["a"].serial))
    reloader.attach(context)
    mtime_before = volume.cert.stat().st_mtime
    volume.publish(pairs["b"], older_mtime=True)
    assert volume.cert.stat().st_mtime < mtime_before
    assert reloader.poll() == "reloaded"
    assert presented(context) == pairs["b"].der


def test_a_half_written_rotation_keeps_the_old_pair_and_is_retried(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    served.write(pairs["b"], key=False)  # the new certificate beside the old key
    with capture_logs() as logs:
        assert served.reloader.poll() == "failed"
        assert served.reloader.poll() == "failed"  # still mismatched: tried again, failed again
    assert presented(served.context) == pairs["a"].der
    assert counts(metrics) == (0, 2)
    failures = [e for e in logs if e["event"] == "server.certificate_reload_failed"]
    assert [e["consecutive_failures"] for e in failures] == [1, 2]
    assert "do not load as a pair" in failures[0]["error"]
    assert failures[0]["log_level"] == "warning"
    served.write(pairs["b"], cert=False)  # the rotation completes
    assert served.reloader.poll() == "reloaded"
    assert presented(served.context) == pairs["b"].der
    assert served.reloader.consecutive_failures == 0
    assert counts(metrics) == (1, 2)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing key", "cannot read the certificate or key"),
        ("not a certificate", "holds no readable certificate"),
        ("truncated certificate", "holds no readable certificate"),
        ("encrypted key", "encrypted"),
    ],
)
def test_an_unusable_pair_keeps_the_old_one_served(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics, damage: str, message: str
) -> None:
    if damage == "missing key":
        served.key.unlink()
    elif damage == "not a certificate":
        served.cert.write_text("not a certificate\n")
    elif damage == "truncated certificate":
        served.cert.write_text(pairs["b"].cert.read_text()[:200])
    else:
        served.write(pairs["encrypted"])
    with capture_logs() as logs:
        assert served.reloader.poll() == "failed"
    (event,) = [e for e in logs if e["event"] == "server.certificate_reload_failed"]
    assert message in event["error"]
    assert presented(served.context) == pairs["a"].der
    assert counts(metrics) == (0, 1)


def test_files_put_back_after_a_failure_need_no_reload(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    served.write(pairs["b"], key=False)
    assert served.reloader.poll() == "failed"
    served.write(pairs["a"])  # the rotation was rolled back
    with capture_logs() as logs:
        assert served.reloader.poll() == "unchanged"
    assert [e["event"] for e in logs] == ["server.certificate_reload_recovered"]
    assert served.reloader.consecutive_failures == 0
    assert counts(metrics) == (0, 1)


def test_polling_needs_a_context(tmp_path: Path, pairs: dict[str, Pair]) -> None:
    reloader = CertificateReloader(None, pairs["a"].cert, pairs["a"].key)
    with pytest.raises(RuntimeError, match="no TLS context"):
        reloader.poll()


def test_watch_polls_until_cancelled(
    served: Served, pairs: dict[str, Pair], metrics: ControllerMetrics
) -> None:
    async def scenario() -> None:
        watcher = asyncio.create_task(served.reloader.watch(0.01))
        served.write(pairs["b"])
        for _ in range(500):
            if counts(metrics)[0] == 1:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        served.write(pairs["a"])
        await asyncio.sleep(0.05)  # five intervals: nothing polls any more

    asyncio.run(scenario())
    assert counts(metrics) == (1, 0)
    assert presented(served.context) == pairs["b"].der


def test_watch_refuses_a_non_positive_interval(served: Served) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        asyncio.run(served.reloader.watch(0))


# --- the certificate's serial and notAfter ------------------------------------------------


def openssl_facts(cert: Path) -> tuple[str, datetime]:
    openssl = shutil.which("openssl")
    assert openssl is not None
    out = subprocess.run(
        [openssl, "x509", "-in", str(cert), "-noout", "-serial", "-enddate"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    fields = dict(line.split("=", 1) for line in out.splitlines())
    end = datetime.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
    return fields["serial"], end


def test_certificate_facts_agree_with_openssl(pairs: dict[str, Pair]) -> None:
    for pair in (pairs["a"], pairs["b"]):
        facts = certificate_facts(pair.cert.read_bytes())
        serial, not_after = openssl_facts(pair.cert)
        assert int(facts.serial, 16) == int(serial, 16) == pair.serial
        assert facts.not_after == not_after


def test_certificate_facts_of_a_large_serial(tmp_path: Path) -> None:
    serial = 0x7F3A_19C2_44D1_0B6E_99AA_0012_3456_789A  # 16 bytes, as cert-manager makes them
    pair = make_pair(tmp_path, serial)
    facts = certificate_facts(pair.cert.read_bytes())
    assert facts.serial == f"{serial:X}"
    assert facts.serial == openssl_facts(pair.cert)[0].lstrip("0")


@pytest.mark.parametrize(
    "pem",
    [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"],
    ids=["empty", "text", "empty sequence"],
)
def test_certificate_facts_refuse_what_is_not_a_certificate(pem: bytes) -> None:
    with pytest.raises(ValueError, match="not a"):
        certificate_facts(pem)
