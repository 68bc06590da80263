"""What a DHT node is started with, checked before hivemind sees it: the ``--initial-peers``
multiaddrs and the libp2p key file (hivemind would fail obscurely, or silently reuse a key that
others can read)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Iterable

from ..errors import ConfigError, IdentityError
from .records import validate_maddr

__all__ = ["check_p2p_identity", "parse_initial_peers", "refused_everywhere"]


def parse_initial_peers(maddrs: Iterable[str]) -> list[str]:
    """Validate ``--initial-peers`` values: each a multiaddr ending in ``/p2p/<peer id>``; ConfigError else."""
    out = []
    for m in maddrs:
        canonical = validate_maddr(m)
        if "/p2p/" not in canonical:
            raise ConfigError(f"initial peer {m!r} lacks its /p2p/<peer id> part (copy the whole line a bootstrap node prints)")
        out.append(canonical)
    return out


def refused_everywhere(maddrs: Iterable[str], timeout_s: float = 1.0) -> str | None:
    """If every initial peer is a TCP address whose host refuses the connection (nothing listens on
    that port: a mistyped or stale address), a sentence saying so; None if any of them accepts, does
    not answer in ``timeout_s`` (a busy or distant peer: worth retrying) or is not plain TCP/IP."""
    from multiaddr import Multiaddr

    refused = []
    for m in maddrs:
        try:
            ma = Multiaddr(m)
            names = [p.name for p in ma.protocols()]
        except Exception:  # noqa: BLE001 (the DHT start reports a malformed address itself)
            return None
        if names[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]):
            return None
        host, port = ma.value_for_protocol(names[0]), int(ma.value_for_protocol("tcp"))
        try:
            with socket.socket(socket.AF_INET6 if names[0] == "ip6" else socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                code = s.connect_ex((host, port))
        except OSError:
            return None
        if code != errno.ECONNREFUSED:
            return None
        refused.append(f"{host}:{port}")
    return f"nothing listens at {', '.join(refused)} (connection refused)" if refused else None


def check_p2p_identity(path: str | None) -> None:
    """Refuse a corrupt or widely readable libp2p key (hivemind would fail obscurely or reuse it)."""
    if path is None or not os.path.exists(path):
        return
    from hivemind.p2p import PeerID

    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
    except OSError as e:
        raise IdentityError(f"cannot read libp2p identity {path!r}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"libp2p identity {path!r} is readable by others (mode {oct(mode & 0o777)}); run: chmod 400 {path}")
    try:
        PeerID.from_identity(data)
    except Exception as e:  # protobuf / RSA parsing errors come in several types
        raise IdentityError(f"libp2p identity {path!r} is corrupt ({e}); restore it or remove it to get a new peer id") from e
