"""A discrete-event simulator of a dai_swarm run over the real round protocol core.

Simulated: the clock, the peers' life spans and compute speeds, the links and DHT look-ups.
Real: batch assignment, inner training on a small task, the round book, aggregation, the outer
step, votes and tally, the cross-region merge arithmetic, reputation and reward rules.
"""

from .config import LinkSpec, SimConfig
from .engine import Simulator, simulate

__all__ = ["LinkSpec", "SimConfig", "Simulator", "simulate"]
