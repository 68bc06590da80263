"""Host CPU time in the simulator: what a peer's machine spends on each protocol step.

A real peer does CPU work that the protocol's instants do not show: after the train deadline it
encodes and publishes its update, at the close it decodes and aggregates every included update,
after the tally it installs the new base and evaluates it. On a machine that runs several peers
(or a slow one) this work ends seconds after the simulated instant, and a round that is too short
for it falls apart (late votes, late bases, no training time left): the failure adaptive rounds
exist for (docs/design.md, "Adaptive rounds").

:func:`measure_host_costs` times that work on *this* machine with the real task and codec (one
torch thread, the way ``dai-swarm peer --threads 1`` runs): inner steps per second, encode per
update, decode and aggregation per included update, base install plus evaluation. The simulator
takes the figures as :class:`~dai_swarm.sim.config.SimConfig` fields and, with ``host_cores``,
stretches every CPU-bound duration by the number of live peers per core
(:func:`contention`). It then predicts which round length a swarm on that hardware needs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from dai_swarm.canonical import sha256_hex
from dai_swarm.errors import ConfigError
from dai_swarm.optim import codecs
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.rules import compute_next_base
from dai_swarm.optim.states import BaseState
from dai_swarm.tasks import load_task
from dai_swarm.verification.recompute import recompute_update

from .population import peer_key
from .verify import SimVerifier

__all__ = ["HostCosts", "contention", "measure_host_costs"]


@dataclass(frozen=True)
class HostCosts:
    """CPU seconds of one peer's protocol work on one core (``SimConfig`` fields of the same names,
    ``speed_median`` for ``steps_per_s``)."""

    steps_per_s: float
    encode_s: float
    compute_s_per_update: float
    apply_s: float

    def sim_fields(self) -> dict[str, float]:
        """The :class:`~dai_swarm.sim.config.SimConfig` fields these costs set."""
        d = asdict(self)
        return {"speed_median": d.pop("steps_per_s"), **d}


def contention(alive: int, host_cores: float) -> float:
    """How much slower CPU work runs when ``alive`` peers share ``host_cores`` cores (0: every
    peer has a machine of its own): ``max(1, alive / host_cores)``."""
    if host_cores < 0:
        raise ConfigError(f"host_cores must be >= 0, got {host_cores}")
    return 1.0 if host_cores == 0 else max(1.0, alive / host_cores)


def _timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure_host_costs(task: str = "tinylm-small", codec: str = "int8", codec_params: Mapping[str, Any] | None = None,
                       steps: int = 4, updates: int = 4, repeat: int = 3, seed: int = 0) -> HostCosts:
    """Time one peer's protocol work on this machine with one torch thread (restored after).

    Inner steps: ``recompute_update`` of ``steps`` steps. Encode: ``codecs.encode`` of one update.
    Per included update: decode plus ``compute_next_base`` of a round book with ``updates``
    updates, divided by ``updates``. Apply: loading the base into the model and ``evaluate``.
    """
    if steps < 1 or updates < 1 or repeat < 1:
        raise ConfigError("steps, updates and repeat must be >= 1")
    params = dict(codecs.RUN_CODEC_PARAMS) if codec_params is None else dict(codec_params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = load_task(task)
        model = t.build_model(seed)
        base = BaseState.initial(model)
        keys = [peer_key(seed, i) for i in range(updates)]
        deltas = [recompute_update(t, base.params, "host", seed, k, 0, steps, raw=True, model=model) for k in keys]
        step_s = _timed(lambda: recompute_update(t, base.params, "host", seed, keys[0], 0, steps, raw=True,
                                                 model=model), repeat) / steps
        blobs = [codecs.encode(d, codec, **params) for d in deltas]
        encode_s = _timed(lambda: codecs.encode(deltas[0], codec, **params), repeat)
        expect = {n: (tuple(x.shape), torch.float32) for n, x in base.params.items()}
        limits = BookLimits(max_inner_steps=steps, batch_size=int(t.batch_size),
                            max_payload_bytes=max(len(b) for b in blobs), codecs=frozenset([codec]))

        def aggregate() -> None:
            book = RoundBook("host", 0, base.hash, limits=limits)
            payloads = {}
            for k, blob in zip(keys, blobs):
                digest = sha256_hex(blob)
                payloads[digest] = codecs.decode(blob, expect=expect)
                book.offer(UpdateAnnouncement("host", 0, base.hash, k, steps, steps * int(t.batch_size), codec,
                                              digest, len(blob), "r0"))
            for d in book.to_fetch():
                book.mark_fetched(d, True)
            book.close()
            compute_next_base(book, payloads, base, base, SimVerifier(), (), outer_lr=0.6, outer_momentum=0.9)

        per_update = _timed(aggregate, repeat) / updates

        def apply() -> None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(base.params[name])
            t.evaluate(model)

        apply_s = _timed(apply, repeat)
    finally:
        torch.set_num_threads(threads)
    return HostCosts(steps_per_s=1.0 / step_s, encode_s=encode_s, compute_s_per_update=per_update, apply_s=apply_s)
