"""A spot check of a ``sparse`` update with error feedback, as a peer runs it on real bytes.

The verifier has recomputed the author's pseudo-gradient Δ' (:mod:`.recompute`) and holds the
decoded payload. It then

1. checks the chain: the announcement's pre-round root must be the zero buffer's root or the
   post-round root of the author's update of the previous round, when this peer saw that one;
2. draws :data:`CHECK_CHUNKS` chunk ids with its private randomness (:func:`.feedback_check.sample_chunks`);
3. fetches from the author, by range requests of the payload protocol, the leaf table and those
   chunks of both committed buffer blobs (:mod:`dai_swarm.optim.feedback_chain`) and checks them
   against the roots (a zero pre-buffer is built locally, never fetched);
4. runs :func:`.feedback_check.check_chunks`.

Outcomes: a distance and a reason (empty: pass). A broken chain, a table or chunk that does not
match its root, or a payload inconsistent with the committed buffers fails. An author that is
reachable but does not hold its own committed blob *withheld* it and fails too; an author that
cannot be reached at all (it left) gives no verdict (:class:`Unprovable`): churn must never slash.
"""

from __future__ import annotations

import random
from typing import Callable, Mapping

import torch

from dai_swarm.errors import DigestMismatch, PayloadNotFound, PeerUnreachable, ProtocolError, Unprovable
from dai_swarm.optim import codecs
from dai_swarm.optim.feedback import accumulate, buffer_refs, prove_chunks, zero_buffer
from dai_swarm.optim.feedback_chain import (FEEDBACK_DECAY, FeedbackCommit, chunk_range, proof_from_range, proof_of,
                                            table_len, verified_leaves, zero_root)

from .feedback_check import check_chunks, sample_chunks
from .recompute import DEFAULT_TAU

__all__ = ["CHECK_CHUNKS", "Unprovable", "check_sparse_update"]

#: chunks sampled per check. A check fetches two leaf tables and these chunks of the pre-round
#: buffer (16 KB each at chunk 4,096), and the post-round chunks only when the verifier's own
#: residual differs from the committed one (another thread count): about 69 KB per check at 4.
#: A payload-level cheat touches every chunk and fails any check; a forgery of f of tinylm-small's
#: 51 buffer chunks is caught per check with 1 - C(51-f, 4)/C(51, 4): 7.8% for one chunk, 35%
#: for five (docs/design.md: what a forged chunk can gain is bounded by the aggregation's clip)
CHECK_CHUNKS = 4

#: fetch(digest, offset, length) -> bytes: a range of a payload the author stores
RangeFetch = Callable[[str, int, int], bytes]


def _chunks(fetch: RangeFetch, digest: str, root: str, refs: list, ids: list[int],
            own: Mapping[int, torch.Tensor] | None = None) -> list:
    """Proofs of chunks ``ids`` of a committed buffer blob: the leaf table is fetched; a chunk whose
    value this verifier computed itself (``own``: the exact case) is proven by its leaf alone, the
    others are fetched by range."""
    leaves = verified_leaves(fetch(digest, 0, table_len(refs)), root, refs)
    out = []
    for cid in ids:
        proof = proof_of(leaves, refs, cid, own[cid]) if own and cid in own else None
        if proof is None:
            offset, length = chunk_range(refs, cid)
            out.append(proof_from_range(leaves, refs, cid, fetch(digest, offset, length)))
        else:
            out.append(proof)
    return out


def _own_post(delta: Mapping, sent: Mapping, pre: list, refs: list, decay: float) -> dict[int, torch.Tensor]:
    """The post-round chunk this verifier expects, ``Δ' + decay·e_pre − sent``: equal to the author's bit
    for bit when both ran the same thread count, so its leaf proves it without fetching it."""
    out = {}
    for p in pre:
        ref = refs[p.chunk_id]
        d = delta[ref.name].detach().reshape(-1)[ref.start:ref.start + ref.length].to("cpu", torch.float32)
        s = sent[ref.name].detach().reshape(-1)[ref.start:ref.start + ref.length].to("cpu", torch.float32)
        out[p.chunk_id] = torch.sub(accumulate(d, p.values, decay), s)
    return out


def check_sparse_update(delta: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor], ef: FeedbackCommit | None,
                        fetch: RangeFetch, params: Mapping, *, previous_post: str | None = None,
                        rng: random.Random | None = None, count: int = CHECK_CHUNKS, decay: float = FEEDBACK_DECAY,
                        tau: float = DEFAULT_TAU) -> tuple[float, str]:
    """(distance, reason) of one sparse update (module docstring); ``reason`` empty means pass.
    ``previous_post``: the post-round root of the author's update of the round before, if this peer
    saw it. Raises :class:`Unprovable` if the author cannot be reached."""
    if ef is None:
        return float("inf"), "no feedback commitment"
    refs = buffer_refs(delta, **params)
    zero = zero_root(delta, **params)
    if ef.pre != zero and previous_post is not None and ef.pre != previous_post:
        return float("inf"), "pre-round buffer is not the previous round's post-round buffer"
    if ef.pre != zero and not ef.pre_blob:
        return float("inf"), "non-zero pre-round buffer without a blob"
    ids = sample_chunks(rng or random.SystemRandom(), len(refs), count)
    try:
        pre = prove_chunks(zero_buffer(delta), ids, **params) if ef.pre == zero else \
            _chunks(fetch, ef.pre_blob, ef.pre, refs, ids)
        post = _chunks(fetch, ef.post_blob, ef.post, refs, ids, own=_own_post(delta, sent, pre, refs, decay))
    except PayloadNotFound:
        return float("inf"), "committed buffer withheld"
    except (DigestMismatch, ProtocolError) as e:
        return float("inf"), f"buffer does not match its commitment: {e}"
    except PeerUnreachable as e:
        raise Unprovable(str(e)) from e
    bits = codecs.get_codec("sparse").check_params(dict(params))["bits"]
    result = check_chunks(delta, sent, pre, post, ef.pre, ef.post, refs, bits=bits, decay=decay, tau=tau)
    if result.ok:
        return result.distance, ""
    reasons = sorted({c.reason for c in result.chunks if c.reason})
    return result.distance, "; ".join(reasons) or "failed"
