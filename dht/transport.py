"""How a DHT node's process is run and how it reaches and is reached by other peers.

:class:`DHTProcess` is hivemind's DHT process with dai_swarm's process rules: its own process
group (a terminal's Ctrl+C reaches only our main process, which then shuts the DHT down in order),
default signal dispositions for a forked child, and exit when its parent dies.
"""

from __future__ import annotations

import os
import signal

import hivemind

from . import _proc
from .pipe import WholeMessages

__all__ = ["DHTProcess"]


class DHTProcess(hivemind.DHT):
    """hivemind's DHT process; see the module docstring."""

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
