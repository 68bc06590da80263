"""WAN emulation for benchmarks: one Linux network namespace per peer slot, token-bucket caps.

Layout (all names start with ``dsw``, all addresses are inside 10.77.0.0/16, which only exists
inside the namespaces created here; the host side gets no address, so no benchmark traffic can
reach any other network)::

    namespace dsw-s<i>  (peer slot i, region r)        host
      lo                                                 bridge dsw-br (no address)
      dsw-n<i>  10.77.<r+1>.<i+1>/16  <--- veth --->     dsw-h<i>  (port of dsw-br)

Bandwidth: each peer's access link is capped by ``tc`` token buckets (``tbf``) in both
directions, with one cap for traffic inside its region (10.77.<r+1>.0/24) and another for
traffic to other regions. Upload is shaped on ``dsw-n<i>`` (egress inside the namespace, split
by destination), download on ``dsw-h<i>`` (egress of the bridge port, split by source); an
``htb`` root with two unlimited classes only routes packets to the two ``tbf`` leaves by a
``u32`` filter. ``tc netem`` is not available on these machines, so no latency is added: the
only WAN effect emulated is bandwidth (and the queueing delay the buckets cause).

Bytes: the kernel's counters of the host-side port are exact per slot (``rx_bytes`` = what the
peer sent, ``tx_bytes`` = what it received, Ethernet frames incl. TCP/IP headers).

Set-up and tear-down are idempotent (``up`` first removes leftovers with the same names)::

    python -m benchmarks.wan check
    python -m benchmarks.wan up --slots 8 --regions 2 --intra-mbit 100 --cross-mbit 10
    python -m benchmarks.wan down --slots 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Sequence

from dai_swarm.errors import ConfigError, NetworkError

__all__ = ["WanNet", "netns_available"]

BRIDGE = "dsw-br"
MAX_SLOTS = 250


def _run(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=stdin, timeout=60)
    if check and r.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def netns_available() -> tuple[bool, str]:
    """Whether network namespaces, veth pairs, bridges and tbf work here; the reason if not."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "tc"):
        if _run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return False, f"`{tool}` (iproute2) is not installed: apt-get install -y iproute2"
    name = f"dsw-probe-{uuid.uuid4().hex[:6]}"
    veth = f"dswp{uuid.uuid4().hex[:6]}"
    try:
        r = _run("ip", "netns", "add", name, check=False)
        if r.returncode != 0:
            return False, f"`ip netns add` failed: {r.stderr.strip()}"
        r = _run("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p", check=False)
        if r.returncode != 0:
            return False, f"cannot create veth pairs: {r.stderr.strip()}"
        r = _run("tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "1mbit", "burst", "16kb", "latency",
                 "100ms", check=False)
        if r.returncode != 0:
            return False, f"tc tbf is not available: {r.stderr.strip()}"
        return True, "ok"
    finally:
        _run("ip", "link", "del", veth, check=False)
        _run("ip", "netns", "del", name, check=False)


@dataclass
class WanNet:
    """Namespaces for ``n_slots`` peer slots; ``region_of[i]`` is slot i's region index.

    ``intra_mbit`` / ``cross_mbit``: per-peer caps (each direction) inside the region and across
    regions; ``None`` leaves that class unshaped.
    """

    n_slots: int
    region_of: Sequence[int]
    intra_mbit: float | None = 100.0
    cross_mbit: float | None = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_slots <= MAX_SLOTS or len(self.region_of) != self.n_slots:
            raise ConfigError(f"need 1..{MAX_SLOTS} slots and one region per slot")
        if any(not 0 <= r < 200 for r in self.region_of):
            raise ConfigError("region indices must be in [0, 200)")

    # --- names and addresses ---------------------------------------------------------------------
    @staticmethod
    def ns(slot: int) -> str:
        """Namespace name of a slot."""
        return f"dsw-s{slot}"

    def ip(self, slot: int) -> str:
        """The slot's address: 10.77.<region+1>.<slot+1>."""
        return f"10.77.{self.region_of[slot] + 1}.{slot + 1}"

    def wrap(self, argv: Sequence[str], slot: int) -> list[str]:
        """``argv`` run inside the slot's namespace."""
        return ["ip", "netns", "exec", self.ns(slot), *argv]

    # --- set-up / tear-down ----------------------------------------------------------------------------
    def up(self) -> None:
        """Create bridge, namespaces, veth pairs and caps (removing leftovers first)."""
        self.down()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "up")
        for i in range(self.n_slots):
            ns, inner, host = self.ns(i), f"dsw-n{i}", f"dsw-h{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "link", "set", host, "master", BRIDGE)
            _run("ip", "link", "set", host, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip(i)}/16", "dev", inner)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            subnet = f"10.77.{self.region_of[i] + 1}.0/24"
            self._shape(["ip", "netns", "exec", ns], inner, "dst", subnet)
            self._shape([], host, "src", subnet)

    def _shape(self, prefix: list[str], dev: str, field: str, subnet: str) -> None:
        if self.intra_mbit is None and self.cross_mbit is None:
            return
        tc = [*prefix, "tc"]
        _run(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20", "r2q", "100000")
        for cls, mbit in (("10", self.intra_mbit), ("20", self.cross_mbit)):
            _run(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", f"1:{cls}", "htb", "rate", "10gbit")
            if mbit is not None:
                burst = max(16_000, int(mbit * 1e6 / 8 / 100))  # 10 ms worth of bytes, at least 16 kB
                _run(*tc, "qdisc", "add", "dev", dev, "parent", f"1:{cls}", "handle", f"{cls}:", "tbf", "rate",
                     f"{mbit}mbit", "burst", str(burst), "latency", "400ms")
        _run(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
             field, subnet, "flowid", "1:10")

    def down(self) -> None:
        """Remove everything :meth:`up` creates (missing parts are ignored)."""
        for i in range(self.n_slots):
            _run("ip", "link", "del", f"dsw-h{i}", check=False)
            _run("ip", "netns", "del", self.ns(i), check=False)
        _run("ip", "link", "del", BRIDGE, check=False)

    # --- counters ----------------------------------------------------------------------------------------
    @staticmethod
    def counters(slot: int) -> dict[str, int]:
        """Exact bytes of the slot's link so far: ``{"sent": ..., "received": ...}`` (0 if it is gone)."""
        base = f"/sys/class/net/dsw-h{slot}/statistics"
        try:
            with open(f"{base}/rx_bytes") as f:
                sent = int(f.read())
            with open(f"{base}/tx_bytes") as f:
                received = int(f.read())
        except OSError:
            return {"sent": 0, "received": 0}
        return {"sent": sent, "received": received}

    def describe(self) -> dict:
        """Settings for the benchmark JSON."""
        return {"slots": self.n_slots, "regions": sorted(set(self.region_of)), "addresses": "10.77.<region+1>.<slot+1>",
                "intra_region_mbit_per_peer": self.intra_mbit, "cross_region_mbit_per_peer": self.cross_mbit,
                "latency": "none added (tc netem unavailable; only token-bucket queueing delay)",
                "byte_counting": "host-side veth counters (exact, Ethernet frames)"}


def main(argv: Sequence[str] | None = None) -> int:
    """``check`` / ``up`` / ``down`` from the command line; prints JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.wan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m benchmarks.wan up --slots 8 --regions 2\n"
                                       "  python -m benchmarks.wan down --slots 8")
    p.add_argument("action", choices=("check", "up", "down"))
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--intra-mbit", type=float, default=100.0)
    p.add_argument("--cross-mbit", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.action == "check":
        ok, why = netns_available()
        print(json.dumps({"available": ok, "reason": why}))
        return 0 if ok else 1
    net = WanNet(args.slots, [i % args.regions for i in range(args.slots)], args.intra_mbit, args.cross_mbit)
    if args.action == "up":
        net.up()
        print(json.dumps(net.describe()))
    else:
        net.down()
        print(json.dumps({"removed": args.slots}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
