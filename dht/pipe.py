"""Requests to hivemind's DHT process, each with a deadline, failing fast once shutdown starts.

hivemind runs the DHT in a child process: the parent sends ``(method, args, kwargs)`` down one
pipe and waits on an ``MPFuture`` that the child completes. A future whose answer never comes
(the child is busy, wedged or gone) used to block its thread forever; at shutdown that left the
verifier, coordinator and heartbeat threads waiting while the main thread sat in
multiprocessing's exit handler (SPEC §10 "Shutdown can deadlock"). :class:`DHTPipe` sends under
one lock (the threads of a peer share the pipe) and waits on the future *and* a close signal with
a deadline: :class:`~dai_swarm.errors.DHTTimeout` when it passes,
:class:`~dai_swarm.errors.DHTClosed` at once when :meth:`DHTPipe.close` is called, and within
``LIVENESS_PERIOD_S`` when the DHT process dies (a service manager's stop may signal it first).

The ``MPFuture`` itself is never cancelled or completed here: hivemind's result thread may be
delivering its answer at that very moment, and completing a future twice makes it log a traceback.
An abandoned future is simply dropped; its late answer is discarded by hivemind.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from typing import Any, Callable

from ..errors import DHTClosed, DHTTimeout

__all__ = ["DHTPipe", "LIVENESS_PERIOD_S", "WholeMessages"]

#: how often a waiting request checks that the DHT process is still alive
LIVENESS_PERIOD_S = 0.5


class DHTPipe:
    """One shared channel to a DHT process; see the module docstring.

    ``alive``: returns False once the DHT process is gone (default: always alive).
    """

    def __init__(self, alive: Callable[[], bool] | None = None) -> None:
        self._alive = alive or (lambda: True)
        self._lock = threading.Lock()
        self._closed: concurrent.futures.Future = concurrent.futures.Future()
        self._why = "the DHT node is shut down"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.done()

    def send(self, request: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Call ``request()`` (which sends one request and returns its future) under the pipe lock and
        return the future's result within ``timeout_s`` seconds of the call, lock wait included.

        Raises :class:`DHTTimeout` past the deadline, :class:`DHTClosed` if the pipe is or becomes
        closed, and whatever the DHT process set as the future's exception.
        """
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        if self.closed:
            raise DHTClosed(f"{what}: {self._why}")
        if not self._lock.acquire(timeout=timeout_s):
            raise DHTTimeout(f"{what}: the DHT pipe stayed busy for {timeout_s:g} s")
        try:
            if self.closed:
                raise DHTClosed(f"{what}: {self._why}")
            future = request()
        finally:
            self._lock.release()
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = concurrent.futures.wait([future, self._closed], timeout=min(remaining, LIVENESS_PERIOD_S),
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if future in done:
                return future.result()
            if self._closed in done:
                raise DHTClosed(f"{what}: {self._why} (the request was abandoned)")
            if not self._alive():
                raise DHTClosed(f"{what}: the DHT process has exited (the request was abandoned)")
            if remaining <= LIVENESS_PERIOD_S:
                raise DHTTimeout(f"{what}: no answer from the DHT process within {timeout_s:g} s")

    def close(self, why: str = "the DHT node is shut down") -> None:
        """Fail every waiting and future request with :class:`DHTClosed` (idempotent)."""
        self._why = why
        try:
            self._closed.set_result(None)
        except concurrent.futures.InvalidStateError:
            pass

    def acquire_for_shutdown(self, timeout_s: float) -> bool:
        """Take the pipe lock for the shutdown message (False if a stuck sender holds it)."""
        return self._lock.acquire(timeout=timeout_s)

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire_for_shutdown`."""
        self._lock.release()


class WholeMessages:
    """The DHT process's end of hivemind's request pipe, reading each request whole.

    hivemind reads its request pipe after ``poll()`` says data is there, on a descriptor its event
    loop made non-blocking. A request over 16 KB (a verdict record naming many checked updates, a
    vote with a large inclusion) is written in two parts, and a read that comes between them fails
    with BlockingIOError halfway through the message; the next read then unpickles the rest as a
    new message and the DHT process dies (EOFError), taking the peer's DHT with it. Reading a
    message in blocking mode waits for the rest of one that is already arriving (the sender holds
    the pipe lock until it is written) and changes nothing else.
    """

    def __init__(self, conn: Any):
        self._conn = conn

    def recv(self) -> Any:
        """One whole message (blocking only while its remaining bytes arrive)."""
        fd = self._conn.fileno()
        was = os.get_blocking(fd)
        os.set_blocking(fd, True)
        try:
            return self._conn.recv()
        finally:
            os.set_blocking(fd, was)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
