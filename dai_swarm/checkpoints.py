"""Exports of a live peer's own agreed state: ``Swarm.export`` and periodic checkpoints.

A peer holds the agreed bases of its last few rounds (:class:`~dai_swarm.optim.states.BaseStore`),
each checked against its region's majority when its round was tallied. :func:`export_held_state`
writes one of them as an export (:mod:`dai_swarm.export`), with the chain its reward log proves
when it keeps one; :class:`Checkpointer` does so every ``every`` rounds into
``DIR/round-NNNNNN`` (written to a temporary folder, then renamed) and keeps the newest ``keep``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from .errors import ConfigError
from .export import Provenance, write_export
from .logging import get_logger

__all__ = ["Checkpointer", "export_held_state"]

logger = get_logger(__name__)


def export_held_state(swarm: Any, out_dir: str, round: int | None = None) -> Provenance:
    """Write the state that closed ``round`` (default: the newest round closed here) to ``out_dir``.

    Raises :class:`ConfigError` when this peer no longer (or not yet) holds that state.
    """
    from .rewards.provenance import log_provenance

    rt = swarm.runtime
    closed = {h["round"]: h for h in list(rt.history)}
    for n in ([round] if round is not None else sorted(closed, reverse=True)):
        state, entry = rt.bases.get(n + 2), closed.get(n)
        if state is not None and entry is not None and entry.get("state_hash") == state.hash:
            break
    else:
        held = sorted(closed)
        raise ConfigError(f"this peer holds no agreed state closing round {round if round is not None else '(any)'}; "
                          f"rounds closed here: {held[-4:] if held else 'none yet'}")
    parent = rt.bases.get(n + 1)
    ledger = log_provenance(rt.ledger.path, n) if rt.ledger is not None else None
    return write_export(out_dir, state, task=swarm.task, manifest=swarm.manifest, manifest_hash=swarm.manifest_hash,
                        round=n, identity=swarm.identity, parent_hash=parent.hash if parent is not None else None,
                        val_loss=entry.get("val_loss"), ledger=ledger)


class Checkpointer:
    """Called with each tallied round: every ``every`` rounds, export into ``directory/round-NNNNNN``
    and delete all but the newest ``keep`` such folders. Failures are logged, never raised."""

    def __init__(self, swarm: Any, directory: str, every: int, keep: int = 3):
        if every < 1 or keep < 1:
            raise ConfigError(f"checkpoint every and keep must be >= 1, got {every} and {keep}")
        self.swarm, self.directory, self.every, self.keep = swarm, os.path.abspath(directory), every, keep
        os.makedirs(self.directory, exist_ok=True)
        self.written: list[str] = []

    def __call__(self, outcome: Any) -> None:
        """Checkpoint after round ``outcome.round`` when it is a multiple of ``every``."""
        if outcome.round % self.every:
            return
        final = os.path.join(self.directory, f"round-{outcome.round:06d}")
        tmp = tempfile.mkdtemp(dir=self.directory, prefix=".tmp-")
        try:
            export_held_state(self.swarm, tmp, outcome.round)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self.written.append(final)
            logger.info("checkpoint of round %d written to %s", outcome.round, final)
        except Exception as e:
            logger.warning("checkpoint of round %d failed: %r", outcome.round, e)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        kept = sorted(d for d in os.listdir(self.directory) if d.startswith("round-"))
        for old in kept[:-self.keep]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
