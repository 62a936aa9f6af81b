"""Serving certificates for the reload tests, made with openssl when a test runs (no key is
kept in the repository), and the two ways they reach a pod: plain files, or the kubelet's
Secret volume layout (``tls.crt -> ..data/tls.crt``, ``..data -> ..<timestamp>``, the
``..data`` link swapped in one rename when the Secret changes)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    serial: int

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


def make_pair(directory: Path, serial: int, *, passphrase: str | None = None) -> Pair:
    """A self-signed P-256 certificate for 127.0.0.1 with this serial, and its key."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed (the test bed needs it too)"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-set_serial", str(serial), "-subj", f"/CN=serial-{serial}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    if passphrase is not None:
        encrypted = directory / "tls.key.encrypted"
        subprocess.run(
            [openssl, "pkey", "-in", str(key), "-out", str(encrypted), "-aes256",
             "-passout", f"pass:{passphrase}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        encrypted.replace(key)
    return Pair(cert, key, serial)


class SecretVolume:
    """A folder laid out as the kubelet mounts a Secret, updated as the kubelet does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._generation = 0

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def publish(self, pair: Pair, *, older_mtime: bool = False) -> None:
        """Write ``pair`` into a new timestamped folder and swap ``..data`` to it atomically.
        ``older_mtime`` gives the new files a modification time before the old ones' (the
        Secret's content, not its files' times, is what changed)."""
        self._generation += 1
        folder = self.root / f"..2026_12_05_00_00_{self._generation:02d}"
        folder.mkdir()
        for name, source in (("tls.crt", pair.cert), ("tls.key", pair.key)):
            target = folder / name
            target.write_bytes(source.read_bytes())
            if older_mtime:
                os.utime(target, (1_000_000_000, 1_000_000_000))
        staged = self.root / "..data_tmp"
        staged.symlink_to(folder.name)
        staged.replace(self.root / "..data")  # rename(2): the swap the kubelet does
        for name in ("tls.crt", "tls.key"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
