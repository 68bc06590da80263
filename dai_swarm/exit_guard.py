"""``ExitGuard``: a long-running command exits within a bounded time of SIGINT or SIGTERM, always.

The first signal sets :attr:`ExitGuard.stop` (the command then shuts down in order: threads, reward
log, DHT) and arms two deadlines. At ``grace_s`` a watchdog thread forces the exit: it runs the
registered flush callbacks (each bounded, e.g. the reward log), SIGKILLs every descendant process
(the DHT process and its p2pd), removes their socket files and calls ``os._exit``. At ``hard_s``
``faulthandler`` (a C thread that needs no interpreter lock, so it works even if Python code is
wedged) prints every thread's stack and exits; the DHT process's parent watch then stops its p2pd.
A second signal forces the exit at once. While the command is :meth:`starting`, the first signal
also raises ``KeyboardInterrupt`` in the main thread, so a start-up that would block (a bootstrap,
a join, a state download) unwinds through its clean-up instead of finishing first.

The same holds when the signal reaches every process of the peer at once: the DHT process ignores
SIGINT and dies at once of SIGTERM, and requests waiting on it fail within half a second
(:class:`~dai_swarm.dht.pipe.DHTPipe`), so the main process's orderly path is not held up.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator

from .dht import _proc
from .logging import get_logger

__all__ = ["ExitGuard", "force_cleanup"]

logger = get_logger(__name__)
#: seconds from the first signal to the forced exit, and to faulthandler's last-resort exit
GRACE_S, HARD_S = 7.5, 9.0
FLUSH_TIMEOUT_S = 1.0


def force_cleanup() -> None:
    """SIGKILL every descendant of this process; remove the hivemind sockets it and they hold."""
    pids = _proc.descendants(os.getpid())
    sockets = [path for pid in pids for path in _proc.daemon_sockets(pid)]
    sockets += _proc.owned_sockets([os.getpid(), *pids])  # e.g. the payload server's P2P replica
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _proc.remove_files(sockets)


class ExitGuard:
    """Bounded exit on SIGINT/SIGTERM for a command; see the module docstring.

    ``on_force``: callables run (each in a thread, at most ``FLUSH_TIMEOUT_S``) before a forced exit.
    """

    def __init__(self, grace_s: float = GRACE_S, hard_s: float = HARD_S) -> None:
        if not 0 < grace_s < hard_s:
            raise ValueError("need 0 < grace_s < hard_s")
        self.grace_s, self.hard_s = grace_s, hard_s
        self.stop = threading.Event()
        self.on_force: list[Callable[[], None]] = []
        self.signalled_at: float | None = None
        self._starting = False
        self._previous: dict[int, object] = {}
        self._forcing = threading.Lock()

    def install(self) -> "ExitGuard":
        """Handle SIGINT and SIGTERM in this (main) thread from now on."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers (the deadlines stay armed once a signal came)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Within this block the first signal also raises KeyboardInterrupt (see the module docstring)."""
        self._starting = True
        try:
            if self.stop.is_set():
                raise KeyboardInterrupt
            yield
        finally:
            self._starting = False

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            self.force_exit(128 + signum, f"second signal ({name})")
        self.signalled_at = time.monotonic()
        self.stop.set()
        faulthandler.dump_traceback_later(self.hard_s, exit=True)
        threading.Thread(target=self._watchdog, name="dai-swarm-exit-watchdog", daemon=True).start()
        with contextlib.suppress(Exception):  # the signal may have interrupted a write to stderr (reentrant)
            print(f"{name}: stopping (at most {self.grace_s:g} s; signal again to stop at once)", file=sys.stderr,
                  flush=True)
        if self._starting:
            raise KeyboardInterrupt

    def _watchdog(self) -> None:
        time.sleep(self.grace_s)
        self.force_exit(1, f"shutdown took over {self.grace_s:g} s")

    @staticmethod
    def finish(code: int) -> None:
        """End the process after an orderly shutdown: flush logs and stdio, then ``os._exit(code)``.

        Interpreter finalization would stop daemon threads that may still be inside native code (a
        spot check's torch ops, codec libraries), and a C++ runtime then aborts the process
        ("terminate called without an active exception", exit by SIGABRT): a clean stop that a
        service manager would record as a crash.
        """
        import logging

        with contextlib.suppress(Exception):
            logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def force_exit(self, code: int, why: str) -> None:
        """Flush, kill the DHT process tree, remove its sockets and ``os._exit(code)``; never returns."""
        if not self._forcing.acquire(blocking=False):  # another thread is already forcing the exit
            while True:
                time.sleep(1.0)
        with contextlib.suppress(Exception):
            print(f"{why}: forcing exit", file=sys.stderr, flush=True)
        for flush in list(self.on_force):
            t = threading.Thread(target=flush, name="dai-swarm-exit-flush", daemon=True)
            t.start()
            t.join(FLUSH_TIMEOUT_S)
        with contextlib.suppress(Exception):
            force_cleanup()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
