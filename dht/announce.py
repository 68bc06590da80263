"""Keeping a peer listed: :class:`PeerAnnouncer` re-publishes its peer record and region membership.

Records carry a short TTL and are re-announced every ``ttl_s / 3``, so a peer that dies (even by
SIGKILL) drops out of ``list_peers`` within one TTL. ``metrics`` is a callable whose dict goes into
the record each time (round, state hash, reputation... added by later layers).

Also runnable as an internal, discovery-only peer process (used by ``dai-swarm demo`` and tests)::

    python -m dai_swarm.dht.announce --run-id demo --initial-peers /ip4/.../p2p/... \\
        --region eu --address-file /tmp/p1.addr --ttl-s 6
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Callable

from .._version import __version__
from ..errors import SwarmError
from ..identity import Identity
from ..logging import get_logger, setup_logging
from .address_file import write_address_file
from .node import SwarmDHT
from .records import PeerRecord
from .regions import choose_region

__all__ = ["PeerAnnouncer", "main"]

logger = get_logger(__name__)


class PeerAnnouncer:
    """A daemon thread that keeps this peer's record (and region membership) fresh in the DHT."""

    def __init__(
        self,
        dht: SwarmDHT,
        run_id: str,
        region: str,
        *,
        role: str = "trainer",
        ttl_s: float = 30.0,
        metrics: Callable[[], dict] | None = None,
        throughput: Callable[[], float] | None = None,
    ):
        self.dht, self.run_id, self.region, self.role, self.ttl_s = dht, run_id, region, role, float(ttl_s)
        self._metrics = metrics or dict
        self._throughput = throughput or (lambda: 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dai-swarm-announce", daemon=True)
        self.announcements = 0

    def record(self) -> PeerRecord:
        """The peer record as it would be announced now."""
        return PeerRecord(
            run_id=self.run_id,
            peer_id=self.dht.peer_id,
            maddrs=tuple(self.dht.visible_maddrs),
            region=self.region,
            version=__version__,
            role=self.role,
            throughput=float(self._throughput()),
            public_key=self.dht.identity.public_key_hex,
            metrics=dict(self._metrics()),
        )

    def announce_once(self) -> None:
        """Publish the peer record and region membership now (synchronously)."""
        self.dht.publish_peer(self.record(), ttl_s=self.ttl_s)
        self.dht.publish_region(self.run_id, self.region, ttl_s=self.ttl_s)
        self.announcements += 1

    def start(self) -> "PeerAnnouncer":
        """Announce once, then keep re-announcing every ``ttl_s / 3`` on a daemon thread."""
        self.announce_once()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.announce_once()
            except Exception as e:  # the DHT may be shutting down; never kill the peer for this
                logger.warning("peer announcement failed: %s", e)

    def stop(self) -> None:
        """Stop re-announcing (records then expire within ``ttl_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dai_swarm.dht.announce", description="internal discovery-only peer")
    p.add_argument("--run-id", required=True)
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--host-maddrs", nargs="*", default=["/ip4/127.0.0.1/tcp/0"])
    p.add_argument("--region", default="auto")
    p.add_argument("--identity", default=None, help="key file (default: ephemeral identity)")
    p.add_argument("--address-file", default=None)
    p.add_argument("--ttl-s", type=float, default=30.0)
    p.add_argument("--role", default="trainer")
    p.add_argument("--rtt-threshold-s", type=float, default=0.05)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a discovery-only peer until SIGINT/SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
        dht = SwarmDHT(identity, initial_peers=args.initial_peers, host_maddrs=args.host_maddrs)
    except SwarmError as e:
        print(f"announce: error: {e}", file=sys.stderr)
        return 1
    announcer = None
    try:
        choice = choose_region(dht, args.run_id, args.region, threshold_s=args.rtt_threshold_s)
        started = time.time()
        announcer = PeerAnnouncer(
            dht, args.run_id, choice.region, role=args.role, ttl_s=args.ttl_s,
            metrics=lambda: {"started_at": started, "uptime_s": round(time.time() - started, 1)},
        )
        announcer.start()
        if args.address_file:
            write_address_file(args.address_file, dht.visible_maddrs)
        logger.info("peer %s announced in region %s of run %s", dht.peer_id, choice.region, args.run_id)
        while not stop.wait(0.2):
            pass
    finally:
        if announcer is not None:
            announcer.stop()
        dht.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
