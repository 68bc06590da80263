"""Checking a sparse update with error feedback on a sample of chunks (pure; peers run it through :mod:`.sparse_verify`).

The author of a ``sparse`` update commits to its feedback buffer before (``pre_root``) and after
(``post_root``) the round (:mod:`dai_swarm.optim.feedback`). A verifier that recomputed the
pseudo-gradient Δ' picks chunks with private randomness (:func:`sample_chunks`), fetches those
chunks of both buffers with inclusion proofs, and calls :func:`check_chunks`. For each chunk:

1. both proofs must verify against the roots;
2. **exact pass**: with ``a' = Δ' + decay · e_pre``, the verifier's own encoding of ``a'`` (top-k,
   ties to the lower index, the codec's quantiser) equals the payload's chunk and
   ``e_post == a' − sent`` bit for bit (the common case when author and verifier run the same
   thread count);
3. otherwise two separate questions. *Is the payload the encoding of what the author says it
   accumulated?* The author's accumulator is ``â = sent + e_post`` (both committed), equal to its
   true ``a`` up to one float32 rounding, so this is checked almost exactly: at most ``k`` values,
   every sent position at or above the top-k threshold of ``â``, signs of ``â``, magnitudes in
   ``[lo, hi]`` and within half a quantisation step of ``|â|``, every position above the
   threshold sent, all within ``ulps · eps32 · max|â|``. *Is that accumulator Δ' + e_pre?* Honest
   recomputations on other thread counts differ (AdamW turns last-bit differences of near-zero
   gradients into ±lr steps), so this is a distance, as for dense updates: the relative L2
   distance ``‖â − a'‖ / ‖a'‖`` over the sampled chunks must be at most ``tau``
   (``spotcheck.DEFAULT_TAU``).

Near the top-k threshold two honest recomputations may keep different positions; (3) never asks
which positions the *verifier* would keep, only whether the author's payload is consistent with its
own committed accumulator, so such an index mismatch never fails an honest peer. A falsified buffer
(proof or chain broken), a payload that is not the top-k of ``â``, or an ``â`` that is not
``Δ + e`` beyond ``tau`` fails. With ``f`` falsified chunks out of ``M`` and ``s`` sampled, one check
catches it with probability :func:`detection_probability`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from dai_swarm.optim.codecs.codec_sparse import ChunkRef, dequantize, quantize, select_topk
from dai_swarm.optim.feedback import ChunkProof, accumulate, verify_chunk_proof

from .recompute import DEFAULT_TAU

__all__ = ["DEFAULT_TAU", "DEFAULT_ULPS", "ChunkCheck", "SparseCheck", "check_chunks", "detection_probability",
           "sample_chunks"]

#: Slack of the consistency check, in float32 epsilons of the chunk's largest |â| (â = sent + e_post
#: equals the author's accumulator up to one rounding, so a few ulps suffice).
DEFAULT_ULPS = 8.0


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


def _consistent(a: np.ndarray, sent: np.ndarray, k: int, bits: int, tol: float) -> str:
    """Empty string if ``sent`` is the encoding of chunk ``a`` up to ``tol`` per value, else why not."""
    mags = np.abs(a).astype(np.float64)
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
    return ""


@dataclass(frozen=True)
class SparseCheck:
    """Verdict on the sampled chunks of one update: ``ok`` iff every chunk is and ``distance`` (relative
    L2 of the author's accumulator to the recomputed one over those chunks) is at most ``tau``."""

    ok: bool
    distance: float
    chunks: tuple[ChunkCheck, ...]


def check_chunks(delta: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor], pre: Sequence[ChunkProof],
                 post: Sequence[ChunkProof], pre_root: str, post_root: str, refs: Sequence[ChunkRef], *,
                 bits: int, decay: float = 1.0, tau: float = DEFAULT_TAU, ulps: float = DEFAULT_ULPS) -> SparseCheck:
    """Check the sampled chunks of one sparse update (see the module docstring).

    ``delta``: the verifier's recomputed Δ' (all tensors); ``sent``: the decoded payload; ``pre`` and
    ``post``: proofs of the same chunk ids against ``pre_root`` / ``post_root``; ``refs``: the chunk
    layout (:func:`~dai_swarm.optim.feedback.buffer_refs`); ``bits`` and ``decay``: the run's codec
    param and feedback decay.
    """
    refs = list(refs)
    post_by = {p.chunk_id: p for p in post}
    out: list[ChunkCheck] = []
    num = den = 0.0
    for pp in pre:
        cid = pp.chunk_id
        qp = post_by.get(cid)
        if qp is None or not verify_chunk_proof(pp, pre_root, refs) or not verify_chunk_proof(qp, post_root, refs):
            out.append(ChunkCheck(cid, False, False, False, "missing or invalid buffer proof"))
            continue
        ref = refs[cid]
        d = delta[ref.name].detach().reshape(-1)[ref.start : ref.start + ref.length].to("cpu", torch.float32)
        s = sent[ref.name].detach().reshape(-1)[ref.start : ref.start + ref.length].to("cpu", torch.float32)
        a_t = accumulate(d, pp.values, decay)
        if not (bool(torch.isfinite(a_t).all()) and bool(torch.isfinite(s).all())):
            out.append(ChunkCheck(cid, False, False, False, "non-finite values"))
            continue
        _, dec, _, _ = _own(a_t.numpy(), ref.k, bits)
        mismatch = not np.array_equal(dec != 0, s.numpy() != 0)
        if np.array_equal(dec, s.numpy()) and torch.equal(qp.values, torch.sub(a_t, s)):
            out.append(ChunkCheck(cid, True, True, mismatch))
            den += float(a_t.double().square().sum())
            continue
        claimed = torch.add(s, qp.values)  # the author's accumulator, up to one rounding
        tol = ulps * float(np.finfo(np.float32).eps) * float(claimed.abs().max())
        reason = _consistent(claimed.numpy(), s.numpy(), ref.k, bits, tol)
        num += float((claimed.double() - a_t.double()).square().sum())
        den += float(a_t.double().square().sum())
        out.append(ChunkCheck(cid, not reason, False, mismatch, reason))
    distance = (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else math.inf)
    ok = bool(out) and all(c.ok for c in out) and distance <= tau
    if out and all(c.ok for c in out) and not ok:
        out = [ChunkCheck(c.chunk_id, False, c.exact, c.index_mismatch, "Δ + e is farther than tau from the "
                          "recomputation") for c in out]
    return SparseCheck(ok, distance, tuple(out))
