"""Address files: how a started node tells others where it listens.

Written atomically (temporary file in the same folder, fsync, rename), so a reader never sees half
a file (SPEC §10). The content is the node's multiaddrs, one per line.
"""

from __future__ import annotations

import os
import tempfile
import time

from ..errors import BootstrapError, ConfigError

__all__ = ["read_address_file", "wait_for_address_file", "write_address_file", "write_atomic"]


def write_atomic(path: str, text: str | bytes) -> None:
    """Write ``text`` (str or bytes) to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot write {path!r}: directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_address_file(path: str, maddrs: list[str]) -> None:
    """Atomically write ``maddrs`` (one per line) to ``path``."""
    write_atomic(path, "\n".join(maddrs) + "\n")


def read_address_file(path: str) -> list[str]:
    """The multiaddrs in an address file (empty list if it does not exist yet)."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def wait_for_address_file(path: str, timeout_s: float = 30.0, alive=None) -> list[str]:
    """Wait until ``path`` holds addresses; BootstrapError after ``timeout_s`` or if ``alive()`` turns False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        maddrs = read_address_file(path)
        if maddrs:
            return maddrs
        if alive is not None and not alive():
            raise BootstrapError(f"the process that should write {path!r} exited before writing it")
        time.sleep(0.05)
    raise BootstrapError(f"no addresses in {path!r} after {timeout_s:.0f} s")
