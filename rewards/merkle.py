"""The reward log's Merkle tree: :mod:`dai_swarm.merkle`, re-exported (the feedback-buffer commitments
in ``optim`` share it, and ``optim`` may not import ``rewards``)."""

from dai_swarm.merkle import MerkleAccumulator, inclusion_proof, merkle_root, verify_inclusion

__all__ = ["MerkleAccumulator", "inclusion_proof", "merkle_root", "verify_inclusion"]
