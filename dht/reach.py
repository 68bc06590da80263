"""NAT traversal: relay options for the p2p daemon, and whether this peer can be dialed.

Every node runs libp2p's circuit relay (hivemind's ``use_relay``) and *auto relay*
(``use_auto_relay``): a node whose reachability is *private* reserves a slot on a relay (its
initial peers, passed as the p2p daemon's ``trustedRelays``) and announces
``/p2p/<relay>/p2p-circuit`` addresses, through which others then open streams to it; its own
connections to others are ordinary outbound ones. A node whose reachability is *public* offers
relay service with the daemon's limits (per peer 16 open circuits, 128 reservations; per relayed
connection 4 GiB each way and 30 minutes). The daemon has no hole punching. Its relay finder
reserves as soon as it knows 4 relay candidates, or else after a 3-minute boot delay: a NAT'd
peer given 4 or more public initial peers is relayed within seconds, one given fewer within
about 3 minutes; until then it is reachable over the connections it dialed out itself.

Reachability is decided before the daemon starts (``--reachability``, default ``auto``): a host
with a global IPv4 address on an interface is *public*; a host with only private addresses
joining initial peers at global addresses is behind NAT, *private*; otherwise (a LAN or loopback
swarm) libp2p's AutoNAT decides as peers dial each other. :class:`ReachabilityWatch` then reports
what others can use: ``public`` (a global address), ``relayed`` (circuit addresses through a
relay), ``private`` (only private addresses; fine inside one LAN).
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Callable, Sequence

from ..logging import get_logger

__all__ = ["REACHABILITY_MODES", "ReachabilityWatch", "choose_reachability", "local_ipv4s", "p2p_options",
           "reachability_of"]

logger = get_logger(__name__)
REACHABILITY_MODES = ("auto", "public", "private")


def _ip(maddr: str) -> ipaddress.IPv4Address | None:
    parts = str(maddr).split("/")
    try:
        return ipaddress.IPv4Address(parts[parts.index("ip4") + 1])
    except (ValueError, IndexError):
        return None


def _is_global(ip: ipaddress.IPv4Address | None) -> bool:
    return ip is not None and ip.is_global


def local_ipv4s(fib_trie: str = "/proc/net/fib_trie") -> list[str]:
    """IPv4 addresses of this host's interfaces (Linux; empty elsewhere)."""
    try:
        with open(fib_trie) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for prev, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL" and "|--" in prev:
            out.append(prev.split("|--")[1].strip())
    return sorted(set(out))


def choose_reachability(mode: str, initial_peers: Sequence[str], host_maddrs: Sequence[str] = (),
                        local_ips: Sequence[str] | None = None) -> str | None:
    """``"public"``, ``"private"`` or None (let AutoNAT decide) for ``--reachability mode``."""
    if mode not in REACHABILITY_MODES:
        from ..errors import ConfigError
        raise ConfigError(f"reachability must be one of {', '.join(REACHABILITY_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    listen = [_ip(m) for m in host_maddrs]
    if any(ip is not None and not ip.is_unspecified for ip in listen):  # a given address: that one counts
        mine = [ip for ip in listen if ip is not None and not ip.is_unspecified]
    else:
        mine = [ipaddress.IPv4Address(a) for a in (local_ips if local_ips is not None else local_ipv4s())]
    if any(_is_global(ip) for ip in mine):
        return "public"
    if any(_is_global(_ip(m)) for m in initial_peers):
        return "private"
    return None


def p2p_options(mode: str, initial_peers: Sequence[str], host_maddrs: Sequence[str] = ()) -> dict:
    """Keyword arguments of ``hivemind.DHT`` (for its ``P2P.create``): relays on, auto relay on,
    reachability forced where :func:`choose_reachability` knows it."""
    options = {"use_relay": True, "use_auto_relay": True,
               "force_reachability": choose_reachability(mode, initial_peers, host_maddrs)}
    if initial_peers:  # without them the daemon only discovers relays through its DHT, slowly
        options["trusted_relays"] = list(initial_peers)
    return options


def reachability_of(maddrs: Sequence[str]) -> tuple[str, list[str]]:
    """(``"relayed"`` | ``"public"`` | ``"private"``, relay peer ids) from a node's announced addresses."""
    circuits = [str(m) for m in maddrs if "/p2p-circuit" in str(m)]
    relays = sorted({m.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[-1] for m in circuits})
    if any(_is_global(_ip(m)) for m in maddrs if "/p2p-circuit" not in str(m)):
        return "public", relays
    return ("relayed" if relays else "private"), relays


class ReachabilityWatch:
    """Polls a node's announced addresses (``maddrs()``, fresh from the daemon) and logs changes of
    :func:`reachability_of`: every ``fast_s`` for the first ``settle_s`` seconds, then every ``slow_s``."""

    def __init__(self, maddrs: Callable[[], Sequence[str]], forced: str | None, *, fast_s: float = 2.0,
                 settle_s: float = 60.0, slow_s: float = 30.0) -> None:
        self._maddrs, self.forced = maddrs, forced
        self.state, self.relays = "unknown", []
        self._periods = (fast_s, settle_s, slow_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="dai-swarm-reachability", daemon=True)

    def start(self) -> "ReachabilityWatch":
        """Check once now (logging the result), then keep watching in a thread."""
        self.check()
        self._thread.start()
        return self

    def check(self) -> str:
        """Read the addresses now; log if the state changed; return it."""
        try:
            state, relays = reachability_of(self._maddrs())
        except Exception as e:  # a busy or closing DHT: keep the last known state
            logger.debug("reachability check failed: %r", e)
            return self.state
        if (state, relays) != (self.state, self.relays):
            self.state, self.relays = state, relays
            if state == "relayed":
                logger.info("behind NAT: reachable through relay %s (no port forwarding needed)", ", ".join(relays))
            elif state == "public":
                logger.info("reachable at a public address; offering relay service to peers behind NAT")
            elif self.forced == "private":
                logger.warning("behind NAT (only private addresses): waiting for a relay reservation; until then "
                               "peers cannot fetch this peer's updates")
            else:
                logger.info("only private addresses: reachable inside this network only")
        return state

    def status(self) -> dict:
        """What status records and the CLI show."""
        return {"reachability": self.state, "relays": list(self.relays)}

    def _main(self) -> None:
        fast_s, settle_s, slow_s = self._periods
        waited = 0.0
        while not self._stop.wait(fast_s if waited < settle_s else slow_s):
            waited += fast_s if waited < settle_s else slow_s
            self.check()

    def stop(self) -> None:
        """Stop watching (bounded: the thread is a daemon and checks its flag between polls)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
