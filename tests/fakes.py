"""Shared fakes for unit tests of the round driver (no processes, no network)."""

from __future__ import annotations

from dai_swarm.optim.config import RunConfig


def run_config(**fields) -> RunConfig:
    """A :class:`RunConfig` with small, valid defaults; ``fields`` override them."""
    base = dict(run_id="run", region="r0", codec="int8", batch_size=8, max_inner_steps=10,
                max_payload_bytes=1 << 20, max_decoded_bytes=1 << 22, max_state_bytes=1 << 24,
                cross_region_period=1000, outer_lr=0.6, outer_momentum=0.9)
    base.update(fields)
    return RunConfig(**base)
