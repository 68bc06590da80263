"""How a DHT node's process is run and how it reaches and is reached by other peers.

:class:`DHTProcess` is hivemind's DHT process with dai_swarm's process rules: its own process
group (a terminal's Ctrl+C reaches only our main process, which then shuts the DHT down in order),
default signal dispositions for a forked child, and exit when its parent dies.

hivemind's futures share three process-wide locks (multiprocessing semaphores) with every process
forked from ours. A DHT process that dies while holding one (terminated or killed at the instant it
sends a reply) leaves it held for good, and every DHT process forked after that hangs before it
reports ready: a node "did not start" although nothing is wrong with it. Before each fork
:func:`heal_future_locks` replaces a lock that nobody released within ``LOCK_PROBE_S``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal

import hivemind
from hivemind.utils.mpfuture import MPFuture, SharedBytes

from . import _proc
from .pipe import WholeMessages

__all__ = ["DHTProcess", "LOCK_PROBE_S", "RECORD_STORAGE", "heal_future_locks"]

logger = logging.getLogger(__name__)
#: a future lock is held for one pipe write; one held this long belongs to a process that died
LOCK_PROBE_S = 5.0


def heal_future_locks(probe_s: float | None = None) -> list[str]:
    """Replace each of hivemind's process-wide future locks that stays held ``probe_s`` seconds
    (default ``LOCK_PROBE_S``).

    Returns the names of the locks replaced (empty when all were free, the usual case, at once).
    Processes forked earlier keep the old lock; those forked from now on share the new one.
    """
    replaced = []
    for owner, name in ((MPFuture, "_update_lock"), (MPFuture, "_initialization_lock"), (SharedBytes, "_lock")):
        lock = getattr(owner, name)
        if lock.acquire(timeout=LOCK_PROBE_S if probe_s is None else probe_s):
            lock.release()
            continue
        setattr(owner, name, mp.Lock())
        replaced.append(f"{owner.__name__}.{name}")
    if replaced:
        logger.warning("replaced hivemind future locks left held by a process that died: %s", ", ".join(replaced))
    return replaced


#: How round records are kept (hivemind ``DHTNode`` options; a caller's own value wins). A read
#: (``get(latest=True)``) merges the dictionaries of every node it reaches that holds the key and
#: receives each holder's whole dictionary, so its bytes grow with records x holders. hivemind's
#: defaults (5 replicas; readers and writers keep cached copies, and the nearest node without one gets
#: a copy after a read) suit long-lived values in large DHTs; round records live a few rounds and are
#: read by every peer, so each cached copy made every later read and the traversal before every write
#: dearer, and a cached copy is a snapshot that may miss later records. Measured (8 nodes on loopback,
#: 8 one-KB records under one key, ``benchmarks.dht_cost``-style): a read 142,828 -> 63,570 B, a
#: write 62,319 -> 43,201 B, every record still seen by every reader (docs/design.md, "Bytes per peer").
RECORD_STORAGE = {"num_replicas": 3, "cache_locally": False, "cache_nearest": 0, "cache_on_store": False}


class DHTProcess(hivemind.DHT):
    """hivemind's DHT process; see the module docstring. Stores with :data:`RECORD_STORAGE` unless
    the caller sets those options itself."""

    def __init__(self, *args, **kwargs):
        heal_future_locks()  # before this process's futures and fork use them
        super().__init__(*args, **{**RECORD_STORAGE, **kwargs})

    def run(self) -> None:
        """Detach from the terminal's process group, watch the parent, then serve the DHT."""
        # a fork inherits the parent's Python signal handlers (a CLI's "set the stop flag"): SIGTERM
        # must stop this process, or shutdown's terminate() does nothing, and SIGINT (a group-wide
        # Ctrl+C or `kill -INT -- -PGID`) is the main process's business, which stops us in order
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.setpgid(0, 0)
        _proc.watch_parent(self._parent_pid)
        self._inner_pipe = WholeMessages(self._inner_pipe)  # requests over 16 KB (see WholeMessages)
        super().run()
