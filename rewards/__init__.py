"""dai_swarm.rewards subsystem."""
