"""Merkle tree over leaf hashes (RFC 6962 / 9162 shape), for inclusion proofs of one leaf.

Shared core: the reward log's checkpoints (leaves are record hashes) and the error-feedback buffer
commitments of ``optim/feedback.py`` (leaves are chunk hashes with a 0x00 domain byte) use it.
Reward-log leaves are record hashes (``sha256(line)``; a line never starts with byte 0x01); an inner node is
``sha256(0x01 || left || right)``. The tree over ``n`` leaves splits at the largest power of two
below ``n``, exactly as in Certificate Transparency, so :func:`verify_inclusion` is RFC 9162's
algorithm. Each signed checkpoint carries the root over every record before it: a reader holding
one record, its proof and a signed checkpoint checks the record without reading the rest.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

__all__ = ["MerkleAccumulator", "inclusion_proof", "merkle_root", "verify_inclusion"]

_sha256 = hashlib.sha256


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


class MerkleAccumulator:
    """Incremental Merkle root: ``add(leaf)`` is O(1) amortized (one inner hash on average)."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []  # roots of perfect subtrees, largest (leftmost) first
        self.size = 0

    def add(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        n = self.size
        node = leaf
        stack = self._stack
        while n & 1:
            node = _sha256(b"\x01" + stack.pop() + node).digest()
            n >>= 1
        stack.append(node)
        self.size += 1

    def extend(self, leaves: bytes | bytearray | memoryview) -> None:
        """Append many leaves given as concatenated 32-byte hashes."""
        mv = memoryview(leaves)
        for off in range(0, len(mv), 32):
            self.add(bytes(mv[off : off + 32]))

    def root(self) -> bytes:
        """Root over all leaves so far (``sha256(b"")`` for an empty tree, as in RFC 6962)."""
        if not self._stack:
            return _sha256(b"").digest()
        node = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            node = _node(left, node)
        return node


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaves`` (a list of 32-byte hashes)."""
    acc = MerkleAccumulator()
    for leaf in leaves:
        acc.add(leaf)
    return acc.root()


def _subtree_root(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return _node(_subtree_root(leaves[:k]), _subtree_root(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree over ``leaves[:size]`` (RFC 6962 ``PATH``)."""
    size = len(leaves) if size is None else size
    if not 0 <= index < size <= len(leaves):
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if index < lo + k:
            path.append(_subtree_root(leaves[lo + k : hi]))
            hi = lo + k
        else:
            path.append(_subtree_root(leaves[lo : lo + k]))
            lo = lo + k
    path.reverse()  # leaf-to-root order
    return path


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff ``proof`` shows that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2; never raises on bad input.
    """
    if not (isinstance(index, int) and isinstance(size, int) and 0 <= index < size):
        return False
    fn, sn = index, size - 1
    node = leaf
    for sibling in proof:
        if not isinstance(sibling, (bytes, bytearray)) or len(sibling) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = _node(bytes(sibling), node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = _node(node, bytes(sibling))
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
