"""``dai-swarm bootstrap``: run a DHT-only node that other peers use as ``--initial-peers``.

The first line it prints is ready to paste: ``--initial-peers /ip4/.../tcp/.../p2p/...``. With
``--address-file`` the addresses are also written atomically (write, fsync, rename) to a file.
SIGINT/SIGTERM set an event and the node shuts down cleanly (no leftover p2pd or sockets).
"""

from __future__ import annotations

import argparse
import sys

from .dht.address_file import write_address_file
from .errors import NetworkError
from .exit_guard import ExitGuard
from .logging import get_logger, setup_logging

__all__ = ["add_parser", "run"]

logger = get_logger(__name__)

EPILOG = """examples:
  dai-swarm bootstrap
  dai-swarm bootstrap --host-maddrs /ip4/0.0.0.0/tcp/31337 --identity ~/.dai_swarm/bootstrap.key
  dai-swarm bootstrap --host-maddrs /ip4/127.0.0.1/tcp/0 --address-file /tmp/bootstrap.addr

The first line printed is the --initial-peers option to give to every peer of the swarm.
With --identity the peer id (and so that line) stays the same across restarts.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bootstrap`` on the dispatcher's sub-parsers."""
    p = subparsers.add_parser(
        "bootstrap",
        help="run a DHT-only node; prints the --initial-peers line",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host-maddrs", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], metavar="M",
                   help="multiaddrs to listen on (default: all interfaces, random TCP port)")
    p.add_argument("--announce-maddrs", nargs="+", default=None, metavar="M",
                   help="public multiaddrs to announce (behind NAT/port forwarding)")
    p.add_argument("--identity", default=None, metavar="PATH",
                   help="ed25519 key file, created 0600 if missing; keeps the peer id stable (default: ephemeral)")
    p.add_argument("--reachability", choices=("auto", "public", "private"), default="auto",
                   help="auto (default): public, offering relay service to peers behind NAT, when the machine has "
                        "a global address; public/private: force it")
    p.add_argument("--address-file", default=None, metavar="PATH",
                   help="also write the multiaddrs to PATH atomically, one per line")
    p.add_argument("--refresh-period-s", type=float, default=30.0, metavar="S",
                   help="log the number of known DHT peers every S seconds (default: 30)")
    return p


def run(args: argparse.Namespace) -> int:
    """Start the node, print the --initial-peers line, serve until SIGINT/SIGTERM."""
    from .dht.node import SwarmDHT  # hivemind: only for the commands that start a node
    from .dht.reach import p2p_options
    from .identity import Identity

    setup_logging()
    guard = ExitGuard().install()
    stop = guard.stop
    identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
    with guard.starting():
        dht = SwarmDHT(identity, host_maddrs=args.host_maddrs, announce_maddrs=args.announce_maddrs,
                       **p2p_options(args.reachability, [], args.host_maddrs))
    try:
        maddrs = dht.visible_maddrs
        print("--initial-peers " + " ".join(maddrs), flush=True)
        if args.address_file:
            write_address_file(args.address_file, maddrs)
        logger.info("bootstrap node %s serving; Ctrl+C to stop", dht.peer_id)
        while not stop.wait(max(0.1, args.refresh_period_s)):
            try:
                logger.info("%d DHT peers known", dht.routing_table_size())
            except NetworkError as e:  # a busy DHT process: report it, keep serving
                logger.warning("DHT status: %s", e)
    finally:
        dht.shutdown()
        guard.uninstall()
        logger.info("bootstrap node stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["bootstrap", *sys.argv[1:]]))
