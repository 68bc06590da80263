"""What a node is started with: a refused initial peer is told apart from a busy one."""

from __future__ import annotations

import socket

from dai_swarm.dht.startup import refused_everywhere

PID = "12D3KooWNvrbmd2j6eTZiud2rNNY3pVMbTbP8pYA3eKy8AW88Zsd"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


def test_a_port_nobody_listens_on_is_named_and_a_listening_one_is_worth_retrying():
    closed = _closed_port()
    got = refused_everywhere([f"/ip4/127.0.0.1/tcp/{closed}/p2p/{PID}"])
    assert got == f"nothing listens at 127.0.0.1:{closed} (connection refused)"
    with socket.socket() as busy:  # accepts connections (a busy peer's kernel still does)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert refused_everywhere([f"/ip4/127.0.0.1/tcp/{port}/p2p/{PID}"]) is None
        # one reachable initial peer among refused ones: retry (it may answer the next ping)
        assert refused_everywhere([f"/ip4/127.0.0.1/tcp/{closed}/p2p/{PID}",
                                   f"/ip4/127.0.0.1/tcp/{port}/p2p/{PID}"]) is None


def test_addresses_it_cannot_probe_are_left_to_the_retries():
    assert refused_everywhere([]) is None
    assert refused_everywhere([f"/ip4/127.0.0.1/udp/9/quic/p2p/{PID}"]) is None
    assert refused_everywhere([f"/dns4/example.invalid/tcp/9/p2p/{PID}"]) is None
