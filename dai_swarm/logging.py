"""Logging set-up: ``get_logger(__name__)``, level from ``DAI_SWARM_LOGLEVEL`` (default INFO).

Structured events (round closed, verdict, slash) are logged by named loggers with ``extra=``
fields so that they can be filtered and parsed. The library never prints; the CLI renders.
"""

from __future__ import annotations

import logging
import os

__all__ = ["get_logger", "setup_logging"]

_configured = False


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


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``dai_swarm`` hierarchy (``name`` is usually ``__name__``)."""
    if not name.startswith("dai_swarm"):
        name = "dai_swarm." + name
    return logging.getLogger(name)
