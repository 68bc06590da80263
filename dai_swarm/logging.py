"""Logging set-up: ``get_logger(__name__)``, level from ``DAI_SWARM_LOGLEVEL`` (default INFO).

Structured events (round closed, verdict, slash) are logged by named loggers with ``extra=``
fields so that they can be filtered and parsed. The library never prints; the CLI renders.

:func:`quiet_known_noise` (the CLI calls it) drops a short list of known, harmless library
messages, each matched by logger, message prefix and, for tracebacks, exception type and the
library file it came from; everything else still reaches the user.
"""

from __future__ import annotations

import asyncio
import logging
import os

__all__ = ["KNOWN_NOISE", "get_logger", "quiet_known_noise", "setup_logging"]

_configured = False

#: (logger, message prefix, exception type or None, path fragment of the raising file or None)
KNOWN_NOISE: tuple[tuple[str, str, type | None, str | None], ...] = (
    # bitsandbytes on an AVX-512-BF16 CPU looks for an optional 4-bit kernel package we never use
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward", None, None),
    # hivemind's p2pd client: the daemon opens a stream connection and closes it unused (a remote
    # reset or a cancelled dial); asyncio logs the EOF as an unhandled error with a traceback
    ("asyncio", "Unhandled exception in client_connected_cb", asyncio.IncompleteReadError,
     "p2p_daemon_bindings"),
)


class _KnownNoise(logging.Filter):
    """Drop the records of one logger that match a known-noise entry; pass everything else."""

    def __init__(self, entries):
        super().__init__()
        self.entries = list(entries)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        for _, prefix, exc_type, where in self.entries:
            if not msg.startswith(prefix):
                continue
            if exc_type is None:
                return False
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, exc_type) and (where is None or _raised_in(exc, where)):
                return False
        return True


def _raised_in(exc: BaseException, where: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if where in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def quiet_known_noise() -> None:
    """Install filters for :data:`KNOWN_NOISE` on their loggers (idempotent; processes forked later,
    such as the DHT's, inherit them)."""
    by_logger: dict[str, list] = {}
    for entry in KNOWN_NOISE:
        by_logger.setdefault(entry[0], []).append(entry)
    for name, entries in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KnownNoise) for f in logger.filters):
            logger.addFilter(_KnownNoise(entries))


def setup_logging(level: str | None = None) -> None:
    """Configure the ``dai_swarm`` logger hierarchy once (idempotent)."""
    global _configured
    level = (level or os.environ.get("DAI_SWARM_LOGLEVEL", "INFO")).upper()
    root = logging.getLogger("dai_swarm")
    root.setLevel(level)
    if not _configured:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
        _configured = True
    quiet_known_noise()


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``dai_swarm`` hierarchy (``name`` is usually ``__name__``)."""
    if not name.startswith("dai_swarm"):
        name = "dai_swarm." + name
    return logging.getLogger(name)
