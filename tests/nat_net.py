"""A home network behind NAT, for tests: network namespaces, a masquerading router, public peers.

All names start with ``dsn``; the host side gets no address, so nothing here can reach, or be
reached from, any other network. The "internet" is ``11.77.0.0/24`` (global addresses, which
libp2p's AutoNAT and relays require; they exist only inside these namespaces)::

    dsn-p<i>   11.77.0.<10+i>  --veth--  bridge dsn-br  --veth--  11.77.0.1  dsn-r (router)
                                                                   192.168.77.1   | masquerade, no port
                                                                                  | forwarding, inbound
    dsn-h<j>   192.168.77.<2+j>, default route via 192.168.77.1  -----------------+ NEW connections dropped
"""

from __future__ import annotations

import os
import shutil
import uuid

from benchmarks.wan import _run  # raises NetworkError with the command's message

PUBLIC_NET, HOME_NET = "11.77.0", "192.168.77"


def nat_available() -> tuple[bool, str]:
    """Whether namespaces, veth, bridges and nftables NAT work here; the reason if not."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed (apt-get install -y {package}; .ci/setup does it)"
    name = f"dsn-probe-{uuid.uuid4().hex[:6]}"
    try:
        r = _run("ip", "netns", "add", name, check=False)
        if r.returncode != 0:
            return False, f"`ip netns add` failed: {r.stderr.strip()}"
        r = _run("ip", "netns", "exec", name, "nft", "-f", "-", check=False,
                 stdin="table ip nat {\n chain post {\n  type nat hook postrouting priority 100; policy accept;\n"
                       "  masquerade\n }\n}\n")
        if r.returncode != 0:
            return False, f"nftables NAT is not available: {r.stderr.strip()}"
        return True, "ok"
    finally:
        _run("ip", "netns", "del", name, check=False)


class NatNet:
    """``n_public`` public namespaces and ``n_home`` home namespaces behind one NAT router."""

    def __init__(self, n_public: int, n_home: int) -> None:
        self.n_public, self.n_home = n_public, n_home

    @staticmethod
    def public(i: int) -> str:
        """Namespace of public slot ``i``."""
        return f"dsn-p{i}"

    @staticmethod
    def home(j: int) -> str:
        """Namespace of home slot ``j``."""
        return f"dsn-h{j}"

    @staticmethod
    def public_ip(i: int) -> str:
        """Address of public slot ``i``."""
        return f"{PUBLIC_NET}.{10 + i}"

    @staticmethod
    def wrap(ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def up(self) -> None:
        """Create everything (removing leftovers of an earlier run first; nothing is left if it fails)."""
        self.down()
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> None:
        _run("ip", "link", "add", "dsn-br", "type", "bridge")
        _run("ip", "link", "set", "dsn-br", "up")
        for i in range(self.n_public):
            self._port(self.public(i), f"dsn-ph{i}", f"dsn-pn{i}", f"{self.public_ip(i)}/24")
        self._port("dsn-r", "dsn-rh", "dsn-rw", f"{PUBLIC_NET}.1/24")
        ex = ["ip", "netns", "exec", "dsn-r"]
        _run(*ex, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _run(*ex, "ip", "link", "add", "dsn-lan", "type", "bridge")  # the home LAN, inside the router
        _run(*ex, "ip", "addr", "add", f"{HOME_NET}.1/24", "dev", "dsn-lan")
        _run(*ex, "ip", "link", "set", "dsn-lan", "up")
        for j in range(self.n_home):
            ns, lan, inner = self.home(j), f"dsn-rl{j}", f"dsn-hn{j}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", lan, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", lan, "netns", "dsn-r")
            _run("ip", "link", "set", inner, "netns", ns)
            _run(*ex, "ip", "link", "set", lan, "master", "dsn-lan")
            _run(*ex, "ip", "link", "set", lan, "up")
            hx = ["ip", "netns", "exec", ns]
            _run(*hx, "ip", "addr", "add", f"{HOME_NET}.{2 + j}/24", "dev", inner)
            _run(*hx, "ip", "link", "set", inner, "up")
            _run(*hx, "ip", "link", "set", "lo", "up")
            _run(*hx, "ip", "route", "add", "default", "via", f"{HOME_NET}.1")
        _run(*ex, "nft", "-f", "-", stdin=(
            "table ip dsn_nat {\n chain post {\n  type nat hook postrouting priority 100; policy accept;\n"
            "  oifname \"dsn-rw\" masquerade\n }\n"
            " chain forward_home {\n  type filter hook forward priority 0; policy drop;\n"
            "  ct state established,related accept\n  iifname != \"dsn-rw\" accept\n }\n}\n"))

    @staticmethod
    def _port(ns: str, host: str, inner: str, cidr: str) -> None:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", host, "master", "dsn-br")
        _run("ip", "link", "set", host, "up")
        ex = ["ip", "netns", "exec", ns]
        _run(*ex, "ip", "addr", "add", cidr, "dev", inner)
        _run(*ex, "ip", "link", "set", inner, "up")
        _run(*ex, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        """Remove everything :meth:`up` creates (missing parts are ignored)."""
        for i in range(max(self.n_public, 8)):
            _run("ip", "link", "del", f"dsn-ph{i}", check=False)
            _run("ip", "netns", "del", self.public(i), check=False)
        for j in range(max(self.n_home, 4)):
            _run("ip", "netns", "del", self.home(j), check=False)
        _run("ip", "link", "del", "dsn-rh", check=False)
        _run("ip", "netns", "del", "dsn-r", check=False)
        _run("ip", "link", "del", "dsn-br", check=False)
