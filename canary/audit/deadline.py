"""A client-side deadline for database calls.

A server-side ``statement_timeout`` stops a slow statement, and libpq's ``connect_timeout``
a connection attempt that gets no answer, but neither helps when the database server
stops answering altogether (a frozen VM, a stopped process, a partition that drops
packets): the kernel may still accept and acknowledge, and the client then waits on its
socket forever. :class:`CallDeadline` bounds every call instead: a call still running
``timeout`` seconds after it began has its connection cut (the socket shut down), so the
driver fails at once with a connection error, the pool discards that connection, and the
caller gets :class:`~canary.audit.StoreUnavailable` like for any other outage.

A call is bound to the connection its thread checked out. A call that overran before it
got one (stuck in the pool's pre-ping, say) has every connection cut that no call within
its deadline is using; the pool's pre-ping replaces them on their next use.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event

from canary.log import get_logger

__all__ = ["CallDeadline"]

log = get_logger("canary.audit.deadline")


class CallDeadline:
    def __init__(self, engine: Engine, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._cond = threading.Condition()
        self._live: dict[int, Any] = {}  # id -> DBAPI connection, open ones
        self._calls: dict[int, float] = {}  # thread id -> monotonic deadline
        self._bound: dict[int, Any] = {}  # thread id -> the DBAPI connection it holds
        self._thread: threading.Thread | None = None
        self._closed = False
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)
        for gone in ("close", "close_detached", "detach", "invalidate", "soft_invalidate"):
            event.listen(engine, gone, self._on_gone)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Bound the enclosed database call (one per thread at a time)."""
        me = threading.get_ident()
        with self._cond:
            self._calls[me] = time.monotonic() + self.timeout
            self._start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._calls.pop(me, None)
                self._bound.pop(me, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # --- pool events ----------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        with self._cond:
            self._live[id(dbapi_connection)] = dbapi_connection

    def _on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        with self._cond:
            self._bound[threading.get_ident()] = dbapi_connection

    def _on_checkin(self, dbapi_connection: Any, _record: Any) -> None:
        with self._cond:
            for thread, bound in list(self._bound.items()):
                if bound is dbapi_connection:
                    del self._bound[thread]

    def _on_gone(self, dbapi_connection: Any, *_: Any) -> None:
        with self._cond:
            self._live.pop(id(dbapi_connection), None)

    # --- the watchdog ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="ksc-db-deadline",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                overdue = [t for t, at in self._calls.items() if at <= now]
                for thread in overdue:
                    self._cut_for(thread, now)
                pending = [at for at in self._calls.values() if at > now]
                self._cond.wait(min(pending) - now if pending else None)

    def _cut_for(self, thread: int, now: float) -> None:
        """(Holding the lock.) Cut the overdue call's connection, or, if it holds none yet,
        every open connection no call within its deadline holds."""
        del self._calls[thread]
        bound = self._bound.pop(thread, None)
        if bound is not None:
            victims = [bound]
        else:
            busy = {
                id(conn) for other, conn in self._bound.items() if self._calls.get(other, 0.0) > now
            }
            victims = [c for key, c in self._live.items() if key not in busy]
        log.warning("database.call_timed_out", timeout=self.timeout, connections_cut=len(victims))
        for connection in victims:
            self._live.pop(id(connection), None)
            _shut(connection)


def _shut(connection: Any) -> None:
    """Shut the connection's socket down (both ways), leaving the descriptor to its owner:
    the driver's next (or current) wait on it ends at once with an error."""
    if getattr(connection, "closed", False):
        return
    try:
        fd = int(connection.fileno())
    except Exception:  # closed meanwhile, or a driver without sockets
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
