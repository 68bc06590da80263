"""Error feedback for the ``sparse`` codec, and per-chunk commitments to the feedback buffer.

A peer keeps a private buffer ``e`` (zeros when it joins). Each round, with pseudo-gradient Δ::

    a  = Δ + e                      (float32, one rounding per element)
    p  = encode(a, "sparse")        (the payload it publishes)
    e' = a − decode(p)              (carried to the next round)

so whatever the top-k and the 2-bit values leave out is sent later instead of lost. Everything
is elementwise float32 or the codec's deterministic numpy work: same inputs, same bits, whatever
the torch thread count.

Error feedback is private state, so a verifier cannot recompute ``a`` from public data alone.
The author therefore commits to its buffer before and after each round: a Merkle root over the
buffer's chunks (the codec's chunks, ids from :func:`~.codecs.codec_sparse.chunk_refs`), leaf
``sha256(0x00 || canonical_json([name, start, length]) || float32 bytes)`` and inner nodes as in
:mod:`dai_swarm.merkle` (RFC 6962, shared with the reward log). A verifier asks for a few
chunks with their inclusion proofs (:func:`prove_chunks`, :func:`verify_chunk_proof`) and checks them with
:func:`dai_swarm.verification.feedback_check.check_chunks`. Announcing the roots and serving
proofs is protocol work that is not wired yet (docs/design.md, "Sparse updates").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from dai_swarm.canonical import canonical_json, tensor_bytes
from dai_swarm.errors import ShapeMismatch
from dai_swarm.merkle import inclusion_proof, merkle_root, verify_inclusion

from . import codecs
from .codecs.codec_sparse import ChunkRef, chunk_refs

__all__ = [
    "ChunkProof",
    "FeedbackStep",
    "accumulate",
    "buffer_leaves",
    "buffer_refs",
    "chunk_leaf",
    "commit_buffer",
    "feedback_step",
    "prove_chunks",
    "verify_chunk_proof",
    "zero_buffer",
]


@dataclass(frozen=True, eq=False)
class FeedbackStep:
    """One round of error feedback: the payload ``blob``, what a receiver decodes (``sent``) and
    the buffers before (``pre``) and after (``post``) the round."""

    blob: bytes
    sent: dict[str, torch.Tensor]
    pre: dict[str, torch.Tensor]
    post: dict[str, torch.Tensor]


def zero_buffer(like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The buffer of a peer that just joined (or re-synced): float32 zeros shaped like ``like``."""
    return {n: torch.zeros(tuple(t.shape), dtype=torch.float32) for n, t in like.items()}


def _check_same(delta: Mapping[str, torch.Tensor], buffer: Mapping[str, torch.Tensor]) -> None:
    if sorted(delta) != sorted(buffer):
        raise ShapeMismatch("the update and the feedback buffer name different tensors")
    for n, t in delta.items():
        if tuple(t.shape) != tuple(buffer[n].shape):
            raise ShapeMismatch(f"{n!r}: update shape {tuple(t.shape)}, buffer shape {tuple(buffer[n].shape)}")


def feedback_step(delta: Mapping[str, torch.Tensor], buffer: Mapping[str, torch.Tensor], *,
                  decay: float = 1.0, **params: Any) -> FeedbackStep:
    """Encode ``delta + decay * buffer`` with the ``sparse`` codec (``params``: chunk, k, bits) and
    return the payload, its decoded tensors and the residual ``(delta + decay * buffer) − sent``.

    ``decay`` < 1 is SparseLoCo's leaky accumulator (it then stands in for outer momentum); 1 is
    plain error feedback. Pure and deterministic; the inputs are not modified. Raises
    ShapeMismatch if names or shapes differ, NonFiniteValues if a value is NaN/Inf.
    """
    _check_same(delta, buffer)
    acc = {n: accumulate(delta[n], buffer[n], decay) for n in sorted(delta)}
    blob = codecs.encode(acc, "sparse", **params)
    sent = codecs.decode(blob, max_bytes=codecs.decode_cap_for(acc, "sparse", **params))
    post = {n: torch.sub(acc[n], sent[n]) for n in acc}
    pre = {n: buffer[n].to("cpu", torch.float32) for n in acc}
    return FeedbackStep(blob=blob, sent=sent, pre=pre, post=post)


def accumulate(delta: torch.Tensor, buffer: torch.Tensor, decay: float = 1.0) -> torch.Tensor:
    """``delta + decay * buffer`` in float32 on CPU, one rounding per operation (no fused multiply-add)."""
    d, e = delta.detach().to("cpu", torch.float32), buffer.detach().to("cpu", torch.float32)
    return torch.add(d, e if decay == 1.0 else torch.mul(e, float(decay)))


def buffer_refs(buffer: Mapping[str, torch.Tensor], **params: Any) -> list[ChunkRef]:
    """The chunks of ``buffer`` under the codec ``params`` (defaults filled in), in id order."""
    p = codecs.get_codec("sparse").check_params(dict(params))
    return chunk_refs({n: t.numel() for n, t in buffer.items()}, p["chunk"], p["k"])


def _chunk_values(buffer: Mapping[str, torch.Tensor], ref: ChunkRef) -> torch.Tensor:
    return buffer[ref.name].detach().reshape(-1)[ref.start : ref.start + ref.length].to("cpu", torch.float32)


def chunk_leaf(ref: ChunkRef, values: torch.Tensor) -> bytes:
    """Merkle leaf of one buffer chunk: sha256 over a domain byte, its place and its float32 bytes."""
    if values.dtype != torch.float32 or values.dim() != 1 or values.numel() != ref.length:
        raise ShapeMismatch(f"chunk {ref.chunk_id}: expected {ref.length} float32 values")
    head = canonical_json([ref.name, ref.start, ref.length])
    return hashlib.sha256(b"\x00" + len(head).to_bytes(4, "little") + head + tensor_bytes(values)).digest()


def buffer_leaves(buffer: Mapping[str, torch.Tensor], refs: list[ChunkRef]) -> list[bytes]:
    """The Merkle leaves of ``buffer``'s chunks laid out as ``refs`` (:func:`chunk_leaf`)."""
    return [chunk_leaf(r, _chunk_values(buffer, r)) for r in refs]


def commit_buffer(buffer: Mapping[str, torch.Tensor], **params: Any) -> str:
    """Hex Merkle root over the chunks of ``buffer`` (what an announcement would carry)."""
    return merkle_root(buffer_leaves(buffer, buffer_refs(buffer, **params))).hex()


@dataclass(frozen=True, eq=False)
class ChunkProof:
    """One buffer chunk with its inclusion proof: ``values`` (float32, 1-D) of chunk ``chunk_id``
    in a tree of ``size`` leaves; ``path`` leaf-to-root (RFC 6962)."""

    chunk_id: int
    size: int
    values: torch.Tensor
    path: tuple[bytes, ...]


def prove_chunks(buffer: Mapping[str, torch.Tensor], chunk_ids: Iterable[int], **params: Any) -> list[ChunkProof]:
    """Proofs for the chunks ``chunk_ids`` of ``buffer`` (what the author serves to a verifier)."""
    refs = buffer_refs(buffer, **params)
    leaves = buffer_leaves(buffer, refs)
    out = []
    for cid in chunk_ids:
        if not 0 <= cid < len(refs):
            raise ShapeMismatch(f"chunk id {cid} outside [0, {len(refs)})")
        out.append(ChunkProof(cid, len(refs), _chunk_values(buffer, refs[cid]).clone(),
                              tuple(inclusion_proof(leaves, cid))))
    return out


def verify_chunk_proof(proof: ChunkProof, root_hex: str, refs: list[ChunkRef]) -> bool:
    """True iff ``proof`` shows its values are chunk ``proof.chunk_id`` of the buffer with root
    ``root_hex``, laid out as ``refs``. Never raises on malformed input."""
    try:
        if proof.size != len(refs) or not 0 <= proof.chunk_id < len(refs):
            return False
        v = proof.values
        if not isinstance(v, torch.Tensor) or v.dtype != torch.float32 or v.dim() != 1:
            return False
        if v.numel() != refs[proof.chunk_id].length or not bool(torch.isfinite(v).all()):
            return False
        leaf = chunk_leaf(refs[proof.chunk_id], v)
        return verify_inclusion(leaf, proof.chunk_id, proof.size, list(proof.path), bytes.fromhex(root_hex))
    except (ValueError, TypeError, AttributeError, ShapeMismatch):
        return False
