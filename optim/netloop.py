"""A private asyncio event loop on a daemon thread, for the peer's network side.

The training loop is synchronous PyTorch; the P2P exchange is asyncio. ``NetLoop`` runs the
coroutines on its own thread so that communication overlaps computation (I2), and offers
``run(coro, timeout_s)`` for the few places that must wait for a result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine

__all__ = ["NetLoop"]


class NetLoop:
    """An asyncio loop on a daemon thread. ``submit`` schedules, ``run`` schedules and waits."""

    def __init__(self, name: str = "dai-swarm-net"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine, timeout_s: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result (at most ``timeout_s``)."""
        return self.submit(coro).result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel pending tasks and stop the loop thread (each waiting at most ``timeout_s``)."""
        if not self.loop.is_running():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout_s=timeout_s)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout_s)
