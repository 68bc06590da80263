"""Verified, chunked download of a state snapshot from several donors (joins and re-syncs, I6).

A state record names the snapshot's digest and size, a chunk size and ``chunks_digest``: the
SHA-256 of the *chunk list*, the concatenated raw SHA-256 of every ``chunk_bytes`` slice of the
snapshot. The chunk size is a deterministic function of the size (:func:`chunk_size_for`: 1 MiB,
doubled until the list has at most :data:`MAX_CHUNKS` entries), so the record stays small (two
digests) and every honest donor of one snapshot publishes the same fields. Donors serve the chunk
list like any payload (content-addressed by ``chunks_digest``).

:func:`fetch_chunked` first fetches the chunk list (checked against ``chunks_digest``), then the
ranges, each checked against its chunk hash on arrival; the snapshot digest stays the overall
check. Donors are tried in random order and take turns, one range per turn, so no download
comes from one donor only when others exist; each donor has at most one range in flight, so a
donor that sends one wrong byte costs at most one range: it is excluded for the rest of the
download and reported (``on_liar``), and the range is retried from another donor. A donor that
fails (timeout, broken stream, not found) goes to the back of the queue (one donor more than
there are parallel slots stays queued, so the retry goes to another donor), and is dropped
after :data:`MAX_STRIKES` failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import deque
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from dai_swarm.dht.wire import parse_wire
from dai_swarm.errors import DigestMismatch, MalformedRecord, PayloadTooLarge, PeerUnreachable, ProtocolError
from dai_swarm.logging import get_logger

from .exchange import Traffic, fetch_payload

__all__ = [
    "BASE_CHUNK_BYTES",
    "MAX_CHUNKS",
    "MAX_STRIKES",
    "StateOffer",
    "chunk_list",
    "chunk_size_for",
    "fetch_chunked",
    "parse_state_offer",
    "pick_download",
    "state_record",
]

logger = get_logger(__name__)

BASE_CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 4096  # a chunk list of at most 128 KiB, whatever the snapshot size
MAX_STRIKES = 3


class StateOffer(NamedTuple):
    """One signed state record: who offers which snapshot, where, and how it is chunked."""

    signer: str
    state_hash: str
    digest: str
    size: int
    p2p_id: str
    chunk_bytes: int
    chunks_digest: str


def chunk_size_for(size: int) -> int:
    """Chunk size for a snapshot of ``size`` bytes (a power of two >= 1 MiB, <= MAX_CHUNKS chunks)."""
    chunk = BASE_CHUNK_BYTES
    while -(-size // chunk) > MAX_CHUNKS:
        chunk *= 2
    return chunk


def chunk_list(blob: bytes, chunk_bytes: int) -> bytes:
    """The concatenated raw SHA-256 digests of each ``chunk_bytes`` slice of ``blob``."""
    view = memoryview(blob)
    return b"".join(hashlib.sha256(view[i:i + chunk_bytes]).digest() for i in range(0, len(blob), chunk_bytes))


def state_record(state_hash: str, blob: bytes, p2p_id: str) -> tuple[dict, bytes]:
    """The body of a state record for snapshot ``blob``, and the chunk list to serve beside it."""
    chunk = chunk_size_for(len(blob))
    hashes = chunk_list(blob, chunk)
    body = {"state_hash": state_hash, "digest": hashlib.sha256(blob).hexdigest(), "size": len(blob),
            "p2p_id": p2p_id, "chunk_bytes": chunk, "chunks_digest": hashlib.sha256(hashes).hexdigest()}
    return body, hashes


def parse_state_offer(signer: str, body: Mapping[str, Any]) -> StateOffer | None:
    """The offer in a state record's body (schema: :class:`~dai_swarm.dht.wire.StateBody`), or None
    if it does not match."""
    try:
        w = parse_wire("state", body)
    except MalformedRecord:
        return None
    return StateOffer(signer, w.state_hash, w.digest, w.size, w.p2p_id, w.chunk_bytes, w.chunks_digest)


def pick_download(offers: Sequence[StateOffer], target: str, me: str,
                  live: set[str] | None = None) -> tuple[StateOffer, list[str]] | None:
    """The snapshot to download for state hash ``target`` and the libp2p ids of its donors.

    Offers of ``target`` by others, preferring donors with a live peer record; grouped by the
    exact snapshot fields (digest, size, chunking), the group most donors publish wins. None if
    nobody offers ``target``.
    """
    good = [o for o in offers if o.state_hash == target and o.signer != me]
    if live and any(o.p2p_id in live for o in good):  # skip donors whose peer record expired (gone)
        good = [o for o in good if o.p2p_id in live]
    groups: dict[tuple, list[StateOffer]] = {}
    for o in good:
        groups.setdefault((o.digest, o.size, o.chunk_bytes, o.chunks_digest), []).append(o)
    if not groups:
        return None
    _, best = max(groups.items(), key=lambda kv: (len({o.p2p_id for o in kv[1]}), kv[0]))
    return best[0], list(dict.fromkeys(o.p2p_id for o in best))


async def fetch_chunked(p2p: Any, donors: Sequence[tuple[Any, str]], run_id: str, offer: StateOffer, *,
                        max_bytes: int, timeout_s: float = 10.0, traffic: Traffic | None = None,
                        parallel: int = 4, rng: random.Random | None = None,
                        on_liar: Callable[[Any, str], None] | None = None, stats: dict | None = None) -> bytes:
    """Download ``offer``'s snapshot from ``donors`` ((PeerID, link) pairs), every range verified.

    See the module docstring. ``on_liar(peer_id, why)`` is called once per donor caught sending
    bytes that do not match the chunk list; ``stats`` (if given) receives ``ranges``,
    ``wasted_ranges``, ``liars`` and ``served`` (ranges per donor). Raises
    :class:`PayloadTooLarge` (before any transfer), :class:`PeerUnreachable` when no donor
    delivers a range, :class:`ProtocolError` when the offer itself is inconsistent.
    """
    size, chunk = offer.size, offer.chunk_bytes
    if size > max_bytes:
        raise PayloadTooLarge(f"state of {size} bytes exceeds cap {max_bytes}")
    if size <= 0 or chunk != chunk_size_for(size):
        raise ProtocolError(f"state offer chunked by {chunk} bytes for {size} bytes; expected {chunk_size_for(size)}")
    if not donors:
        raise PeerUnreachable("no donors to download state from")
    n = -(-size // chunk)
    order = list(donors)
    (rng or random.SystemRandom()).shuffle(order)
    st = stats if stats is not None else {}
    st.update(ranges=n, wasted_ranges=0, liars=[], served={})
    excluded: set[str] = set()

    def caught(peer_id: Any, why: str) -> None:
        excluded.add(str(peer_id))
        st["liars"].append(str(peer_id))
        logger.warning("lying donor %s excluded from the download of %s: %s", peer_id, offer.digest[:12], why)
        if on_liar is not None:
            on_liar(peer_id, why)

    hashes = await _fetch_chunk_list(p2p, order, run_id, offer, n, timeout_s, traffic, caught)
    pending, parts = deque(range(n)), {}
    queue = deque(d for d in order if str(d[0]) not in excluded)
    strikes: dict[str, int] = {}
    last: list[Exception] = []

    async def fetch_range(peer_id: Any, link: str) -> str:
        i = pending.popleft()
        off, length = i * chunk, min(chunk, size - i * chunk)
        try:
            data = await fetch_payload(p2p, peer_id, run_id, offer.digest, max_bytes=max_bytes, timeout_s=timeout_s,
                                       offset=off, length=length, traffic=traffic, link=link, verify=False)
        except (PeerUnreachable, ProtocolError, PayloadTooLarge) as e:
            pending.appendleft(i)
            last.append(e)
            return "failed"
        if len(data) != length or hashlib.sha256(data).digest() != hashes[32 * i:32 * i + 32]:
            pending.appendleft(i)
            st["wasted_ranges"] += 1
            caught(peer_id, f"range {i} ({off}+{length}) does not match its chunk hash")
            return "lied"
        parts[i] = data
        st["served"][str(peer_id)] = st["served"].get(str(peer_id), 0) + 1
        return "ok"

    async def slot() -> None:  # one range per donor turn: donors rotate, a failed range goes to the next
        while pending and queue:
            peer_id, link = queue.popleft()
            outcome = await fetch_range(peer_id, link)
            if outcome == "failed":
                strikes[str(peer_id)] = strikes.get(str(peer_id), 0) + 1
            if outcome == "ok" or (outcome == "failed" and strikes[str(peer_id)] < MAX_STRIKES):
                queue.append((peer_id, link))

    # one donor more than slots stays queued, so a range that failed is retried by another donor
    await asyncio.gather(*(slot() for _ in range(max(1, min(parallel, len(queue) - 1)))))
    if len(parts) != n:
        raise PeerUnreachable(f"no donor delivered {n - len(parts)} of {n} ranges of {offer.digest[:12]}: "
                              f"{last[-1] if last else 'every donor was excluded'}")
    blob = b"".join(parts[i] for i in range(n))
    if hashlib.sha256(blob).hexdigest() != offer.digest:  # the chunk list itself was wrong: a bad offer
        raise DigestMismatch(f"downloaded state does not hash to {offer.digest[:12]}")
    return blob


async def _fetch_chunk_list(p2p: Any, order: list, run_id: str, offer: StateOffer, n: int, timeout_s: float,
                            traffic: Traffic | None, caught: Callable[[Any, str], None]) -> bytes:
    """The chunk list of ``offer`` (``32 * n`` bytes hashing to ``chunks_digest``), from the first
    donor in ``order`` that delivers it; a donor that sends a wrong list is ``caught``."""
    last: Exception = PeerUnreachable("no donor served the chunk list")
    for peer_id, link in order:
        try:
            hashes = await fetch_payload(p2p, peer_id, run_id, offer.chunks_digest, max_bytes=32 * n,
                                         timeout_s=timeout_s, traffic=traffic, link=link)
        except DigestMismatch as e:
            caught(peer_id, "chunk list does not hash to the record's chunks_digest")
            last = e
            continue
        except (PeerUnreachable, ProtocolError, PayloadTooLarge) as e:
            last = e
            continue
        if len(hashes) != 32 * n:  # it hashes to the record's digest: the offer is inconsistent
            raise ProtocolError(f"chunk list of {offer.digest[:12]} has {len(hashes)} bytes, expected {32 * n}")
        return hashes
    raise PeerUnreachable(f"no donor served the chunk list of {offer.digest[:12]}: {last}")
