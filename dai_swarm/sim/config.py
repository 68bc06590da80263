"""Configuration of a simulated swarm: population, links, compute speeds, churn and attackers.

Every number that changes a simulation's outcome lives in :class:`SimConfig`, so a config plus its
``seed`` names one trace exactly (the simulator is deterministic). The round-clock fractions and
the training margin default to the values :class:`~dai_swarm.runtime.RoundRuntime` uses, so a
simulated round has the same deadlines as a real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from dai_swarm.errors import ConfigError
from dai_swarm.optim.clock import CLOSE_FRAC, TALLY_FRAC
from dai_swarm.optim.codecs import RUN_CODEC_PARAMS
from dai_swarm.verification.spotcheck import DEFAULT_TAU

__all__ = ["LinkSpec", "SimConfig"]


@dataclass(frozen=True)
class LinkSpec:
    """One link class: one-way latency in seconds and bandwidth in bytes per second."""

    latency_s: float
    bandwidth_Bps: float

    def __post_init__(self) -> None:
        for name in ("latency_s", "bandwidth_Bps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.bandwidth_Bps <= 0:
            raise ConfigError("bandwidth_Bps must be > 0")

    def transfer_s(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` over this link (latency plus serialisation)."""
        return self.latency_s + nbytes / self.bandwidth_Bps


@dataclass(frozen=True)
class SimConfig:
    """A simulated run. ``exchange`` is ``"clustered"`` (one protocol region per geographic region,
    cross-region merges every ``cross_region_period`` rounds) or ``"flat"`` (one swarm-wide round
    book: every peer fetches every update, whatever region it is in).

    Compute: a peer does ``speed`` inner steps per second, ``speed`` log-normal with median
    ``speed_median`` and log-sd ``speed_sigma``, capped at ``max_inner_steps`` per round. Churn:
    ``churn`` x ``peers`` departures over the run (``crash_share`` of them crashes, the rest clean
    leaves), each replaced by a joiner ``rejoin_delay_s`` later on average. ``byzantine`` is the
    fraction of peers (initial and joiners) running ``attack``. ``check_prob`` is the chance that an
    included update is spot-checked (by two verifiers, the rules' ``min_fail_verifiers``) with the
spot checker's pass threshold ``tau`` on the relative L2 distance.
    ``keys`` (optional) are the public keys of peers ``0 .. len(keys)-1`` (calibration against a real run:
    the same keys and ``run_id`` give the same batches, hence bitwise the same updates); other peers get
    seed-derived keys. ``codec_params`` are the run's codec parameters (a new run's default).
    ``region_links`` overrides ``(intra, cross)`` link specs per region name.

    Host CPU time (:mod:`dai_swarm.sim.host`, which measures it): a peer spends ``encode_s`` after
    the train deadline before its announcement is published, ``compute_s_per_update`` per included
    update before it votes, and ``apply_s`` after its tally before the new base is installed and
    evaluated. ``protocol_cpu_s`` is the rest of a peer's CPU per round (its DHT process and p2p
    daemon, record signing, streams): it is taken from the round's training time, and half of it
    delays the vote, half the new base. With ``host_cores`` > 0 every live peer shares that many
    cores: inner steps and all of these durations stretch by ``max(1, live peers / host_cores)``
    (0: a machine per peer).
    """

    peers: int = 8
    regions: int = 2
    rounds: int = 10
    round_s: float = 10.0
    task: str = "regression"
    task_overrides: Mapping[str, object] = field(default_factory=dict)
    codec: str = "int8"
    codec_params: Mapping[str, object] = field(default_factory=lambda: dict(RUN_CODEC_PARAMS))
    exchange: str = "clustered"
    cross_region_period: int = 3
    max_inner_steps: int = 4
    outer_lr: float = 0.6
    outer_momentum: float = 0.9
    delay_compensation: float = 1.0
    speed_median: float = 2.0
    speed_sigma: float = 0.5
    intra: LinkSpec = LinkSpec(0.005, 12.5e6)
    cross: LinkSpec = LinkSpec(0.080, 2.5e6)
    region_links: Mapping[str, tuple[LinkSpec, LinkSpec]] = field(default_factory=dict)
    dht_hop_s: float | None = None
    churn: float = 0.0
    crash_share: float = 0.5
    rejoin_delay_s: float = 5.0
    byzantine: float = 0.0
    attack: str = "sign_flip"
    check_prob: float = 0.2
    tau: float = DEFAULT_TAU
    close_frac: float = CLOSE_FRAC
    tally_frac: float = TALLY_FRAC
    margin_s: float | None = None
    compute_s_per_update: float = 0.0
    encode_s: float = 0.0
    apply_s: float = 0.0
    protocol_cpu_s: float = 0.0
    host_cores: float = 0.0
    evaluate: bool = True
    run_id: str = "sim"
    seed: int = 0
    keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ints = (("peers", 1), ("regions", 1), ("rounds", 1), ("cross_region_period", 0), ("max_inner_steps", 1))
        for name, lo in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.regions > self.peers:
            raise ConfigError("need at least one peer per region")
        if self.exchange not in ("clustered", "flat"):
            raise ConfigError(f"exchange must be 'clustered' or 'flat', got {self.exchange!r}")
        for name in ("churn", "crash_share", "byzantine", "check_prob", "delay_compensation"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
        if self.byzantine >= 0.5:
            raise ConfigError("byzantine must be < 0.5 (honest majority)")
        if not self.round_s > 0 or not self.speed_median > 0 or self.speed_sigma < 0:
            raise ConfigError("round_s and speed_median must be > 0, speed_sigma >= 0")
        for name in ("compute_s_per_update", "encode_s", "apply_s", "protocol_cpu_s", "host_cores"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")

    @property
    def margin(self) -> float:
        """Training stops this long before a round ends (RoundRuntime: ``min(0.1 T, 2 s)``)."""
        return min(0.1 * self.round_s, 2.0) if self.margin_s is None else float(self.margin_s)

    def region_names(self) -> list[str]:
        """Geographic region names ``r0 .. r{regions-1}``."""
        return [f"r{i}" for i in range(self.regions)]

    def links_of(self, region: str) -> tuple[LinkSpec, LinkSpec]:
        """``(intra, cross)`` link specs of a region (its override, else the defaults)."""
        return tuple(self.region_links.get(region, (self.intra, self.cross)))  # type: ignore[return-value]

    def with_(self, **changes) -> "SimConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
