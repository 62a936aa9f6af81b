"""Starting and stopping the test bed's server processes reliably (Linux).

Shared by every part of the test bed (etcd, kube-apiserver, Prometheus, PostgreSQL, the
simulators): free loopback ports, recognising a process by pid *and* start time (so a reused
pid is never signalled), stopping with escalating signals until the process is gone, and
reading a log's tail for error messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "STOP_SIGNALS",
    "ProcessStillRunning",
    "alive",
    "free_port",
    "free_ports",
    "start_time",
    "tail",
    "terminate",
]

POLL_SECONDS = 0.05
# SIGTERM, and SIGKILL if the process has not exited 15 s later.
STOP_SIGNALS: Sequence[tuple[signal.Signals, float]] = (
    (signal.SIGTERM, 15.0),
    (signal.SIGKILL, 5.0),
)


class ProcessStillRunning(RuntimeError):
    """A process survived every signal, SIGKILL included."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot), or None if there is no process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot); None if it is gone or a zombie."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in {"Z", "X"}:
        return None
    return stat[1]


def alive(pid: int, started: int | None) -> bool:
    """The process exists, is not a zombie, and is the one that was started (not a reuse)."""
    current = start_time(pid)
    return current is not None and (started is None or current == started)


def _gone(pid: int, started: int | None, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None:
        return popen.poll() is not None
    with contextlib.suppress(ChildProcessError, OSError):  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    return not alive(pid, started)


def terminate(
    pid: int,
    started: int | None,
    popen: subprocess.Popen[bytes] | None = None,
    *,
    signals: Sequence[tuple[signal.Signals, float]] = STOP_SIGNALS,
    name: str = "process",
) -> None:
    """Send each signal in turn, waiting up to its time for the process to exit; return once
    it is gone. A pid whose start time no longer matches ``started`` is left alone."""
    for sig, wait in signals:
        if _gone(pid, started, popen):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while not _gone(pid, started, popen):
            if time.monotonic() >= deadline:
                break
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=POLL_SECONDS)
            else:
                time.sleep(POLL_SECONDS)
        else:
            return
    if not _gone(pid, started, popen):
        raise ProcessStillRunning(f"{name} (pid {pid}) is still running after SIGKILL")


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(the log is empty)"
