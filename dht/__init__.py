"""dai_swarm.dht subsystem."""
