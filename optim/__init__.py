"""dai_swarm.optim subsystem."""
