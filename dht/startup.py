"""What a DHT node is started with, checked before hivemind sees it: the ``--initial-peers``
multiaddrs and the libp2p key file (hivemind would fail obscurely, or silently reuse a key that
others can read)."""

from __future__ import annotations

import os
import stat
from typing import Iterable

from ..errors import ConfigError, IdentityError
from .records import validate_maddr

__all__ = ["check_p2p_identity", "parse_initial_peers"]


def parse_initial_peers(maddrs: Iterable[str]) -> list[str]:
    """Validate ``--initial-peers`` values: each a multiaddr ending in ``/p2p/<peer id>``; ConfigError else."""
    out = []
    for m in maddrs:
        canonical = validate_maddr(m)
        if "/p2p/" not in canonical:
            raise ConfigError(f"initial peer {m!r} lacks its /p2p/<peer id> part (copy the whole line a bootstrap node prints)")
        out.append(canonical)
    return out


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
