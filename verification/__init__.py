"""dai_swarm.verification subsystem."""
