"""NAT traversal rules: which reachability a peer forces, and what its addresses say (dht/reach.py)."""

from __future__ import annotations

import pytest

from dai_swarm.dht.reach import ReachabilityWatch, choose_reachability, local_ipv4s, p2p_options, reachability_of
from dai_swarm.errors import ConfigError

PUB = "/ip4/11.77.0.10/tcp/4000/p2p/12D3KooWRelay"
LAN = "/ip4/192.168.1.5/tcp/4000/p2p/12D3KooWLan"


def test_choose_reachability():
    home = ["192.168.77.2", "127.0.0.1"]
    assert choose_reachability("auto", [PUB], ["/ip4/0.0.0.0/tcp/0"], home) == "private"  # NAT'd, public swarm
    assert choose_reachability("auto", [LAN], ["/ip4/0.0.0.0/tcp/0"], home) is None  # same LAN: AutoNAT decides
    assert choose_reachability("auto", [], ["/ip4/0.0.0.0/tcp/0"], ["11.77.0.10", "127.0.0.1"]) == "public"
    assert choose_reachability("auto", [PUB], ["/ip4/127.0.0.1/tcp/0"], ["11.77.0.10"]) == "private"  # listens on lo
    assert choose_reachability("private", [], [], ["11.77.0.10"]) == "private"
    assert choose_reachability("public", [PUB], [], home) == "public"
    with pytest.raises(ConfigError):
        choose_reachability("sometimes", [], [])


def test_p2p_options_turn_relays_on_and_trust_the_initial_peers():
    opts = p2p_options("private", [PUB])
    assert opts == {"use_relay": True, "use_auto_relay": True, "force_reachability": "private", "trusted_relays": [PUB]}
    assert "trusted_relays" not in p2p_options("auto", [], ["/ip4/127.0.0.1/tcp/0"])


def test_reachability_of_addresses():
    me = "12D3KooWMe"
    circuit = f"{PUB}/p2p-circuit/p2p/{me}"
    assert reachability_of([f"/ip4/192.168.77.2/tcp/1/p2p/{me}", circuit]) == ("relayed", ["12D3KooWRelay"])
    assert reachability_of([f"/ip4/11.77.0.11/tcp/1/p2p/{me}"]) == ("public", [])
    assert reachability_of([f"/ip4/127.0.0.1/tcp/1/p2p/{me}"]) == ("private", [])


def test_local_ipv4s_reads_the_fib_trie(tmp_path):
    trie = tmp_path / "fib_trie"
    trie.write_text("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
                    "     |-- 192.168.77.2\n        /32 host LOCAL\n     |-- 192.168.77.255\n        /32 link BROADCAST\n")
    assert local_ipv4s(str(trie)) == ["127.0.0.1", "192.168.77.2"]
    assert local_ipv4s(str(tmp_path / "missing")) == []


def test_watch_logs_changes_and_survives_errors(caplog):
    answers = [[f"/ip4/192.168.77.2/tcp/1/p2p/Me"], RuntimeError("busy"), [f"{PUB}/p2p-circuit/p2p/Me"]]

    def maddrs():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    watch = ReachabilityWatch(maddrs, "private")
    assert watch.check() == "private" and watch.check() == "private"
    assert watch.check() == "relayed" and watch.status() == {"reachability": "relayed", "relays": ["12D3KooWRelay"]}
    assert "behind NAT" in caplog.text
