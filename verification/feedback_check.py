"""Checking a sparse update with error feedback on a sample of chunks (pure; not wired yet).

The author of a ``sparse`` update commits to its feedback buffer before (``pre_root``) and after
(``post_root``) the round (:mod:`dai_swarm.optim.feedback`). A verifier that recomputed the
pseudo-gradient Δ' picks chunks with private randomness (:func:`sample_chunks`), fetches those
chunks of both buffers with inclusion proofs, and calls :func:`check_chunks`, which for each chunk
with ``a' = Δ' + e_pre``:

1. checks both proofs against the roots;
2. encodes ``a'`` itself (top-k with ties to the lower index, the codec's quantiser): if the
   payload's chunk equals that and ``e_post == a' − sent`` bitwise, the chunk passes **exactly**;
3. otherwise (an honest recomputation with another thread count differs in the last bits, so a
   value near the top-k threshold can swap places, or a value near a rounding boundary can flip)
   it passes only if the payload is what *some* input within ``tol = rtol · max|a'|`` of ``a'``
   would give: at most ``k`` values sent; every sent position within ``2 tol`` of the threshold or
   above it, with the sign of ``a'``; every sent magnitude inside ``[lo − 2 tol, hi + 2 tol]`` and
   within half a quantisation step (plus ``4 tol``) of ``|a'|``; every unsent position that must
   have been kept only if ``lo ≈ 0`` (then it rounded to zero); and ``|e_post − (a' − sent)| <= tol``.

A chunk that fails any of these is evidence of a falsified buffer, a payload that is not the top-k
of ``Δ + e``, or a payload inconsistent with the commitments. With ``f`` falsified chunks out of
``M`` and ``s`` sampled, one check catches it with probability :func:`detection_probability`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from dai_swarm.optim.codecs.codec_sparse import ChunkRef, dequantize, quantize, select_topk
from dai_swarm.optim.feedback import ChunkProof, verify_chunk_proof

__all__ = ["DEFAULT_RTOL", "ChunkCheck", "check_chunks", "detection_probability", "sample_chunks"]

#: Tolerance relative to the chunk's largest |a'|. Measured on tinylm-small (20 inner steps) across
#: torch 1/2 threads: honest recomputations differ by up to ~2e-3 of it (benchmarks/sparse.py).
DEFAULT_RTOL = 1e-2


@dataclass(frozen=True)
class ChunkCheck:
    """Verdict on one chunk: ``ok``; ``exact`` if the payload matched the verifier's own encoding
    bit for bit; ``index_mismatch`` if the sent positions differ from the verifier's own top-k;
    ``reason`` says why a failed chunk failed."""

    chunk_id: int
    ok: bool
    exact: bool
    index_mismatch: bool
    reason: str = ""


def sample_chunks(rng: random.Random, n_chunks: int, count: int) -> list[int]:
    """``count`` distinct chunk ids out of ``n_chunks``, sorted, from the verifier's private ``rng``."""
    return sorted(rng.sample(range(n_chunks), min(count, n_chunks)))


def detection_probability(n_chunks: int, falsified: int, sampled: int) -> float:
    """Probability that ``sampled`` distinct random chunks hit at least one of ``falsified``."""
    if falsified <= 0:
        return 0.0
    if sampled + falsified > n_chunks:
        return 1.0
    return 1.0 - math.comb(n_chunks - falsified, sampled) / math.comb(n_chunks, sampled)


def _own(a: np.ndarray, k: int, bits: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The verifier's own encoding of chunk ``a``: kept mask, decoded chunk, lo and hi."""
    mask = select_topk(np.abs(a)[None, :], k)[0]
    lo, hi, codes = quantize(a[mask][None, :], bits)
    dec = np.zeros_like(a)
    dec[mask] = dequantize(lo, hi, codes, bits)[0]
    return mask, dec, float(lo[0]), float(hi[0])


def _tolerant(a: np.ndarray, sent: np.ndarray, post: np.ndarray, k: int, bits: int, rtol: float) -> str:
    """Empty string if ``sent``/``post`` are an honest encoding of an input within tol of ``a``."""
    mags = np.abs(a).astype(np.float64)
    tol = rtol * float(mags.max()) if mags.size else 0.0
    mask, _, lo, hi = _own(a, k, bits)
    thr = float(mags[mask].min())
    nz = sent != 0
    if int(nz.sum()) > k:
        return f"{int(nz.sum())} values sent, at most {k} allowed"
    if (mags[nz] < thr - 2 * tol).any():
        return "a sent position is not among the top-k of Δ + e"
    if ((np.signbit(sent[nz]) != np.signbit(a[nz])) & (mags[nz] > tol)).any():
        return "a sent value has the wrong sign"
    smag = np.abs(sent[nz]).astype(np.float64)
    half = (hi - lo) / (2 * ((1 << (bits - 1)) - 1))
    if (smag < lo - 2 * tol).any() or (smag > hi + 2 * tol).any() or (np.abs(smag - mags[nz]) > half + 4 * tol).any():
        return "a sent value is not the quantisation of Δ + e"
    must = ~nz & (mags > thr + 2 * tol)
    if must.any() and (lo > 2 * tol or (mags[must] > lo + half + 4 * tol).any()):
        return "a top-k position of Δ + e was not sent"
    resid = a.astype(np.float64) - sent.astype(np.float64)
    if (np.abs(post.astype(np.float64) - resid) > tol).any():
        return "the committed post-round buffer is not Δ + e − sent"
    return ""


def check_chunks(delta: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor], pre: Sequence[ChunkProof],
                 post: Sequence[ChunkProof], pre_root: str, post_root: str, refs: Sequence[ChunkRef], *,
                 bits: int, rtol: float = DEFAULT_RTOL) -> list[ChunkCheck]:
    """Check the sampled chunks of one sparse update (see the module docstring); one verdict per chunk.

    ``delta``: the verifier's recomputed Δ' (all tensors); ``sent``: the decoded payload; ``pre`` and
    ``post``: proofs of the same chunk ids against ``pre_root`` / ``post_root``; ``refs``: the chunk
    layout (:func:`~dai_swarm.optim.feedback.buffer_refs`); ``bits``: the run's codec param.
    """
    post_by = {p.chunk_id: p for p in post}
    out = []
    for pp in pre:
        cid = pp.chunk_id
        qp = post_by.get(cid)
        if qp is None or not verify_chunk_proof(pp, pre_root, list(refs)) \
                or not verify_chunk_proof(qp, post_root, list(refs)):
            out.append(ChunkCheck(cid, False, False, False, "missing or invalid buffer proof"))
            continue
        ref = refs[cid]
        d = delta[ref.name].detach().reshape(-1)[ref.start : ref.start + ref.length].to("cpu", torch.float32)
        s = sent[ref.name].detach().reshape(-1)[ref.start : ref.start + ref.length].to("cpu", torch.float32)
        a_t = torch.add(d, pp.values)
        a, s_np, e_post = a_t.numpy(), s.numpy(), qp.values.numpy()
        if not (np.isfinite(a).all() and np.isfinite(s_np).all()):
            out.append(ChunkCheck(cid, False, False, False, "non-finite values"))
            continue
        _, dec, _, _ = _own(a, ref.k, bits)
        mismatch = not np.array_equal(dec != 0, s_np != 0)
        if np.array_equal(dec, s_np) and torch.equal(qp.values, torch.sub(a_t, s)):
            out.append(ChunkCheck(cid, True, True, mismatch))
            continue
        reason = _tolerant(a, s_np, e_post, ref.k, bits, rtol)
        out.append(ChunkCheck(cid, not reason, False, mismatch, reason))
    return out
