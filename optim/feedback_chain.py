"""Error feedback as a peer of a ``sparse`` run carries it from round to round, and the bytes that
let a verifier check it.

The author side (:class:`FeedbackAuthor`) runs :func:`~.feedback.feedback_step` on each round's
pseudo-gradient, keeps the residual for the next round and commits to its buffer before and after
the round (:class:`FeedbackCommit`, carried by the update announcement as ``ef``). Each committed
buffer is also stored as a *buffer blob* in the peer's payload store, so a verifier fetches the
chunks it sampled with ordinary range requests of the payload protocol (:mod:`.exchange`):

``blob = leaf table (M x 32 bytes, the Merkle leaves of the M chunks) || float32 values``

in chunk-id order (tensors by sorted name, then offset: the flattened tensors concatenated). A
verifier first fetches the leaf table and checks that it hashes to the committed root, then the
sampled chunks' value ranges, each against its leaf (:func:`proofs_from_blob`); the inclusion
proofs of :mod:`.feedback` follow from the verified table. The table costs 32 bytes per chunk
(1.6 KB for tinylm-small's 51 chunks); at a billion parameters (244k chunks, 7.8 MB) a proof
request per chunk would be cheaper, and that is where this layout stops fitting.

The chain: the pre-round buffer of round ``r`` is the post-round buffer of this peer's update of
round ``r − 1``, or zeros (:func:`zero_root`) when it announced nothing in ``r − 1`` (joined,
late, re-started). Zeros lose only the author's own residual; anything else is a forged buffer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from dai_swarm.canonical import tensor_bytes
from dai_swarm.errors import DigestMismatch, ProtocolError
from dai_swarm.merkle import inclusion_proof, merkle_root

from .codecs.codec_sparse import ChunkRef
from .feedback import ChunkProof, buffer_leaves, buffer_refs, chunk_leaf, feedback_step, zero_buffer

__all__ = ["FEEDBACK_DECAY", "FeedbackAuthor", "FeedbackCommit", "buffer_blob", "chunk_range", "proof_from_range", "proof_of",
           "proofs_from_blob", "table_len", "verified_leaves", "zero_root"]

#: SparseLoCo's leaky accumulator, measured in docs/design.md ("Outer step"): with it the buffer
#: stands in for outer momentum (a ``sparse`` run's outer step is plain SGD at lr 1.0, momentum 0)
FEEDBACK_DECAY = 0.95


@dataclass(frozen=True)
class FeedbackCommit:
    """What an update announcement commits to: the Merkle roots of the author's feedback buffer
    before (``pre``) and after (``post``) the round, and the digests of the stored buffer blobs
    (``pre_blob`` is empty when ``pre`` is the zero buffer's root, which every verifier can build)."""

    pre: str
    post: str
    pre_blob: str
    post_blob: str

    def body(self) -> dict:
        """The announcement's ``ef`` field."""
        return {"pre": self.pre, "post": self.post, "pre_blob": self.pre_blob, "post_blob": self.post_blob}


def table_len(refs: list[ChunkRef]) -> int:
    """Bytes of a buffer blob's leaf table."""
    return 32 * len(refs)


def chunk_range(refs: list[ChunkRef], chunk_id: int) -> tuple[int, int]:
    """(offset, length) in bytes of chunk ``chunk_id``'s values in a buffer blob laid out for ``refs``."""
    before = sum(r.length for r in refs[:chunk_id])
    return table_len(refs) + 4 * before, 4 * refs[chunk_id].length


def buffer_blob(buffer: Mapping[str, torch.Tensor], **params: Any) -> tuple[str, bytes]:
    """(Merkle root hex, blob) of ``buffer`` under the sparse codec ``params`` (module docstring)."""
    refs = buffer_refs(buffer, **params)
    leaves = buffer_leaves(buffer, refs)
    values = b"".join(tensor_bytes(buffer[n].detach().to("cpu", torch.float32).reshape(-1)) for n in sorted(buffer))
    return merkle_root(leaves).hex(), b"".join(leaves) + values


def zero_root(like: Mapping[str, torch.Tensor], **params: Any) -> str:
    """The root every peer's first pre-round buffer has (zeros shaped like the model)."""
    return buffer_blob(zero_buffer(like), **params)[0]


def verified_leaves(table: bytes, root_hex: str, refs: list[ChunkRef]) -> list[bytes]:
    """The leaves of a fetched leaf ``table`` once it hashes to ``root_hex``:
    :class:`~dai_swarm.errors.ProtocolError` for a wrong length, :class:`~dai_swarm.errors.DigestMismatch`
    for another root."""
    if len(table) != table_len(refs):
        raise ProtocolError(f"leaf table of {len(table)} bytes, expected {table_len(refs)}")
    leaves = [table[i:i + 32] for i in range(0, len(table), 32)]
    if merkle_root(leaves).hex() != root_hex:
        raise DigestMismatch(f"leaf table does not hash to the committed root {root_hex[:12]}")
    return leaves


def proof_of(leaves: list[bytes], refs: list[ChunkRef], chunk_id: int, values: torch.Tensor) -> ChunkProof | None:
    """The proof of chunk ``chunk_id`` holding ``values`` under verified ``leaves``, or None if the
    values are not that chunk's (a verifier's own candidate that differs, a lying range)."""
    ref = refs[chunk_id]
    if values.dtype != torch.float32 or values.numel() != ref.length or chunk_leaf(ref, values) != leaves[chunk_id]:
        return None
    return ChunkProof(chunk_id, len(refs), values, tuple(inclusion_proof(leaves, chunk_id)))


def proof_from_range(leaves: list[bytes], refs: list[ChunkRef], chunk_id: int, raw: bytes) -> ChunkProof:
    """The proof of chunk ``chunk_id`` from its fetched float32 bytes: :class:`~dai_swarm.errors.ProtocolError`
    for a range of the wrong length, :class:`~dai_swarm.errors.DigestMismatch` if it is not the committed chunk."""
    if len(raw) != 4 * refs[chunk_id].length:
        raise ProtocolError(f"chunk {chunk_id}: {len(raw)} bytes, expected {4 * refs[chunk_id].length}")
    proof = proof_of(leaves, refs, chunk_id, torch.frombuffer(bytearray(raw), dtype=torch.float32))
    if proof is None:
        raise DigestMismatch(f"chunk {chunk_id} does not match its committed leaf")
    return proof


def proofs_from_blob(table: bytes, root_hex: str, refs: list[ChunkRef],
                     values: Mapping[int, bytes]) -> list[ChunkProof]:
    """Proofs of the chunks in ``values`` (chunk id -> its float32 bytes, fetched by range) from a
    fetched leaf ``table`` (:func:`verified_leaves`, :func:`proof_from_range`)."""
    leaves = verified_leaves(table, root_hex, refs)
    return [proof_from_range(leaves, refs, cid, raw) for cid, raw in sorted(values.items())]


class FeedbackAuthor:
    """One peer's error-feedback buffer across rounds (see the module docstring).

    ``like``: the model's parameters (names and shapes); ``params``: the run's sparse codec params;
    ``decay``: :data:`FEEDBACK_DECAY` unless the run says otherwise. Not thread-safe: the training
    thread calls :meth:`step` once per round.
    """

    def __init__(self, like: Mapping[str, torch.Tensor], params: Mapping[str, Any], decay: float = FEEDBACK_DECAY):
        self.params, self.decay = dict(params), float(decay)
        self._zero = zero_buffer(like)
        self.zero_root = zero_root(like, **self.params)
        self.buffer = self._zero
        self.last_round: int | None = None
        self._last: tuple[str, bytes] | None = None  # (root, blob) of the buffer as committed last round
        self.resets = 0

    def step(self, round: int, delta: Mapping[str, torch.Tensor], tamper: Any = None) -> tuple[bytes, FeedbackCommit,
                                                                                                 list[tuple[str, bytes]]]:
        """Encode round ``round``'s pseudo-gradient with the buffer; returns the payload, the
        commitment and the buffer blobs to store as ``(digest, blob)``. ``tamper(post, round)`` (an
        attack strategy's hook) may replace the post-round buffer that is committed and carried."""
        if self.last_round is None or round != self.last_round + 1:  # joined, late or restarted: zeros
            if self.last_round is not None:
                self.resets += 1
            self.buffer, self._last = self._zero, None
        step = feedback_step(delta, self.buffer, decay=self.decay, **self.params)
        post = tamper(step.post, round) if tamper is not None else step.post
        post_root, post_blob = buffer_blob(post, **self.params)
        blobs = [(hashlib.sha256(post_blob).hexdigest(), post_blob)]
        if self._last is None:
            pre_root, pre_digest = self.zero_root, ""
        else:
            pre_root, pre_digest = self._last[0], hashlib.sha256(self._last[1]).hexdigest()
            blobs.append((pre_digest, self._last[1]))
        self.buffer, self._last, self.last_round = post, (post_root, post_blob), round
        return step.blob, FeedbackCommit(pre_root, post_root, pre_digest, blobs[0][0]), blobs
