"""Serving-certificate reload: a rotated certificate is served without a restart.

cert-manager renews the serving certificate by rewriting its Secret; the kubelet then swaps
the mounted files (it writes a new timestamped folder and repoints the ``..data`` symlink, so
the paths never change and a new file can carry an old modification time). The
:class:`CertificateReloader` therefore compares the files' *contents* with the pair it
serves, on every poll.

A changed pair is first loaded into a scratch context. Only if that works (both files
readable, the key matching the certificate, the key not encrypted) is the same pair loaded
into the live :class:`ssl.SSLContext` that the server hands to every new connection, so new
handshakes present the new certificate while open connections keep the one they started
with. A pair that does not load (a rotation caught half-way: the new certificate beside the
old key) leaves the live context untouched, since loading a certificate whose key then fails
would leave the live context with no usable key, and is tried again on the next poll.

Both loads read the same bytes: the pair read for the comparison is handed to OpenSSL
through anonymous in-memory files (``memfd``), so no key is written to disk and a rotation
landing between the two loads cannot slip an unchecked pair into the live context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from canary.log import get_logger
from canary.metrics import ControllerMetrics

__all__ = ["CertificateFacts", "CertificateReloader", "certificate_facts"]

log = get_logger("canary.server")

Outcome = Literal["unchanged", "reloaded", "failed"]


@dataclass(frozen=True)
class CertificateFacts:
    """What an operator checks of a served certificate."""

    serial: str  # hexadecimal, as ``openssl x509 -serial`` prints it
    not_after: datetime


@dataclass(frozen=True)
class _Pair:
    cert: bytes
    key: bytes


class CertificateReloader:
    """Keeps ``context`` serving the pair found in ``certfile`` and ``keyfile``.

    :meth:`poll` does one check; :meth:`watch` polls every ``interval`` seconds until it is
    cancelled. Both run on the server's event loop (the thread that creates connections from
    the context), so the live context is never changed while a connection is being set up.
    Create the reloader *before* the context first loads the files: a rotation landing in
    between then shows as a change and is loaded on the first poll.
    """

    def __init__(
        self,
        context: ssl.SSLContext | None,
        certfile: Path,
        keyfile: Path,
        *,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self._context = context
        self._certfile = certfile
        self._keyfile = keyfile
        self._metrics = metrics
        self._served: _Pair | None = self._read_or_none()
        self._failures = 0

    def attach(self, context: ssl.SSLContext) -> None:
        """The live context (known once the server has loaded its configuration)."""
        self._context = context

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def poll(self) -> Outcome:
        """Load the files into the live context if their contents changed since the pair it
        serves; keep the served pair if the new one does not load."""
        if self._context is None:
            raise RuntimeError("no TLS context attached to reload into")
        try:
            found = self._read()
        except OSError as exc:
            return self._failed(f"cannot read the certificate or key: {exc}")
        if found == self._served:
            if self._failures:
                log.info("server.certificate_reload_recovered", certfile=str(self._certfile))
                self._failures = 0
            return "unchanged"
        try:
            facts = certificate_facts(found.cert)
        except ValueError as exc:
            return self._failed(f"the certificate file holds no readable certificate: {exc}")
        try:
            with _in_memory(found) as (cert, key):
                _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)  # the scratch load
                _load(self._context, cert, key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return self._failed(f"the certificate and key do not load as a pair: {exc}")
        self._served = found
        self._failures = 0
        if self._metrics is not None:
            self._metrics.record_certificate_reload()
        log.info(
            "server.certificate_reloaded",
            certfile=str(self._certfile),
            serial=facts.serial,
            not_after=facts.not_after.isoformat(),
        )
        return "reloaded"

    async def watch(self, interval: float) -> None:
        """Poll every ``interval`` seconds until cancelled (the server stopping)."""
        if interval <= 0:
            raise ValueError(f"the reload interval must be positive, not {interval}")
        while True:
            await asyncio.sleep(interval)
            try:
                self.poll()
            except Exception as exc:  # keep watching: the next rotation must still load
                self._failed(f"unexpected error while reloading: {exc!r}")

    def _failed(self, reason: str) -> Outcome:
        self._failures += 1
        if self._metrics is not None:
            self._metrics.record_certificate_reload_failure()
        log.warning(
            "server.certificate_reload_failed",
            certfile=str(self._certfile),
            keyfile=str(self._keyfile),
            error=reason,
            consecutive_failures=self._failures,
            detail="still serving the previous certificate; retried on the next poll",
        )
        return "failed"

    def _read(self) -> _Pair:
        # read_bytes follows the kubelet's ..data symlink to the current folder
        return _Pair(self._certfile.read_bytes(), self._keyfile.read_bytes())

    def _read_or_none(self) -> _Pair | None:
        try:
            return self._read()
        except OSError:
            return None  # the server's own first load reports it


def _no_password() -> bytes:
    raise ValueError("the serving key is encrypted; mount it unencrypted (as cert-manager does)")


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    context.load_cert_chain(cert, key, password=_no_password)


@contextlib.contextmanager
def _in_memory(pair: _Pair) -> Iterator[tuple[str, str]]:
    """Paths that read back exactly ``pair``: anonymous memory files where Linux has them
    (no key on disk), else files in a private temporary folder."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds: list[int] = []
        try:
            for name, data in (("cert", pair.cert), ("key", pair.key)):
                fd = os.memfd_create(f"kserve-canary-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="kserve-canary-tls-") as folder:
        cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        for path, data in ((cert, pair.cert), (key, pair.key)):
            path.touch(mode=0o600)
            path.write_bytes(data)
        yield str(cert), str(key)


# --- the certificate's serial and expiry, read from its DER encoding -----------------------


def certificate_facts(pem: bytes) -> CertificateFacts:
    """Serial number and notAfter of the first certificate in ``pem`` (ValueError if none)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a PEM certificate ({exc})") from None
    try:
        return _facts(der)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not an X.509 certificate ({exc or 'truncated'})") from None


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``at``."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("unsupported length")
        length = int.from_bytes(der[at : at + size], "big")
        at += size
    if at + length > len(der):
        raise ValueError("element runs past the end")
    return tag, at, at + length


def _expect(der: bytes, at: int, tag: int) -> tuple[int, int]:
    found, start, end = _element(der, at)
    if found != tag:
        raise ValueError(f"expected tag {tag:#04x}, found {found:#04x}")
    return start, end


def _facts(der: bytes) -> CertificateFacts:
    certificate, _ = _expect(der, 0, 0x30)
    at, _ = _expect(der, certificate, 0x30)  # tbsCertificate
    if der[at] == 0xA0:  # [0] version
        at = _element(der, at)[2]
    start, end = _expect(der, at, 0x02)  # serialNumber
    serial = int.from_bytes(der[start:end], "big")
    at = _expect(der, end, 0x30)[1]  # signature algorithm
    at = _expect(der, at, 0x30)[1]  # issuer
    validity, _ = _expect(der, at, 0x30)
    not_before_end = _element(der, validity)[2]
    tag, start, end = _element(der, not_before_end)
    return CertificateFacts(serial=f"{serial:X}", not_after=_time(tag, der[start:end]))


def _time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ (years 1950-2049)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError(f"notAfter has tag {tag:#04x}, not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
