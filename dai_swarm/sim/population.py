"""Simulated peers: identity, region, compute speed, latency factor, attack, life span; churn.

Peer keys are 64-hex strings derived from the seed (they are peer ids for the round book, the
votes, batch assignment, verdicts and reputation, exactly like real ed25519 public keys). Attacks
come from :func:`dai_swarm.testing.make_attack` (the catalogue in
:mod:`dai_swarm.verification.attacks`); the stand-ins below, with the same hooks the runtime calls
(``tamper``, ``tamper_blob``, ``claimed_steps``), are used only if that is unavailable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from dai_swarm.canonical import sha256_hex
from dai_swarm.errors import ConfigError

from .config import SimConfig

__all__ = ["Scale", "SignFlip", "SimPeer", "draw_peer", "make_attack", "peer_key"]


class SignFlip:
    """Publishes ``-Δ`` instead of its update (stand-in until dai_swarm.testing ships attacks)."""

    kind = "sign_flip"

    def tamper(self, tensors: Mapping[str, torch.Tensor], round: int) -> dict:
        """Negate every tensor."""
        return {n: torch.neg(t) for n, t in tensors.items()}

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        """Leave the encoded bytes alone."""
        return blob

    def claimed_steps(self, steps: int) -> int:
        """Claim the steps actually done."""
        return steps


class Scale(SignFlip):
    """Publishes ``factor * Δ`` (default 10)."""

    kind = "scale"

    def __init__(self, factor: float = 10.0):
        self.factor = float(factor)

    def tamper(self, tensors: Mapping[str, torch.Tensor], round: int) -> dict:
        """Scale every tensor by ``factor``."""
        return {n: torch.mul(t, self.factor) for n, t in tensors.items()}


def make_attack(kind: str, seed: int = 0) -> Any:
    """The attack object for ``kind``: dai_swarm.testing's if it has one, else a local stand-in.

    An attack's private generator (noise attacks) is re-seeded from ``seed`` so the simulation
    stays deterministic. Kinds that need a live runtime (copy, replay, forged verdicts) act
    through ``bind(runtime)``, which the simulator does not call: they behave honestly here.
    """
    try:
        from dai_swarm.testing import make_attack as real
    except ImportError:
        real = None
    if real is not None:
        try:
            attack = real(kind)
        except Exception:  # that module names its kinds differently: fall back to the stand-ins
            attack = None
        if attack is not None:
            if isinstance(getattr(attack, "gen", None), torch.Generator):
                attack.gen = torch.Generator().manual_seed(int(seed))
            return attack
    if kind in ("sign_flip", "signflip", "flip"):
        return SignFlip()
    if kind == "scale":
        return Scale()
    raise ConfigError(f"unknown attack kind {kind!r} (sign_flip, scale)")


def peer_key(seed: int, idx: int) -> str:
    """The deterministic 64-hex key of simulated peer ``idx``."""
    return sha256_hex(f"dai_swarm.sim.peer|{seed}|{idx}".encode())


@dataclass
class SimPeer:
    """One simulated peer. ``region`` is geographic (link classes); ``proto`` its protocol region
    (== region when clustered, ``"flat"`` otherwise). ``bases`` maps round -> state hash held and
    ``ready`` round -> instant that base became available here; ``machine`` its
    :class:`~dai_swarm.optim.machine.RoundMachine` (every round decision, as in a real peer), made
    when it first holds a base."""

    idx: int
    key: str
    region: str
    proto: str
    speed: float
    lat: float
    attack: Any = None
    joined_at: float = -math.inf
    left_at: float = math.inf
    crashed: bool = False
    bases: dict[int, str] = field(default_factory=dict)
    ready: dict[int, float] = field(default_factory=dict)
    machine: Any = None

    def alive(self, t: float) -> bool:
        """True if the peer is in the swarm at instant ``t``."""
        return self.joined_at <= t < self.left_at


def draw_peer(cfg: SimConfig, rng: random.Random, idx: int, region: str, joined_at: float,
              byzantine: bool | None = None) -> SimPeer:
    """A new peer of ``region`` with speed and latency factor drawn from ``rng``; it attacks if
    ``byzantine`` (None: with probability ``cfg.byzantine``)."""
    speed = math.exp(rng.gauss(math.log(cfg.speed_median), cfg.speed_sigma)) if cfg.speed_sigma > 0 \
        else cfg.speed_median
    lat = math.exp(rng.gauss(0.0, 0.2))
    byz = rng.random() < cfg.byzantine if byzantine is None else byzantine
    key = cfg.keys[idx] if idx < len(cfg.keys) else peer_key(cfg.seed, idx)
    return SimPeer(idx, key, region, region if cfg.exchange == "clustered" else "flat",
                   speed, lat, make_attack(cfg.attack, cfg.seed * 1_000_003 + idx) if byz else None, joined_at)
