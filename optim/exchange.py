"""Content-addressed payload exchange over hivemind P2P binary streams.

Payloads (compressed updates, region deltas, state snapshots) are named by the SHA-256 of their
bytes. Any peer that holds a payload serves it; a fetcher asks the author or anyone else, checks
the declared size against its cap *before* downloading, and checks the digest after. Large
payloads (state snapshots) are fetched in verified ranges from several donors: see
:mod:`.download`.

Wire format of one request (fixed 49 bytes): op (1 byte, 1 = GET), digest (32 raw bytes),
offset (8 bytes, big endian), length (8 bytes, big endian; 0 = to the end). One response: status
(1 byte: 0 ok, 1 not found, 2 bad request), total size (8 bytes), range length n (8 bytes),
then n bytes. hivemind's unary calls are capped at 2 MiB, so everything rides on raw streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from hivemind.p2p import P2P, PeerID

from dai_swarm.errors import DigestMismatch, PayloadNotFound, PayloadTooLarge, PeerUnreachable, ProtocolError
from dai_swarm.logging import get_logger

__all__ = ["PayloadStore", "PayloadServer", "Traffic", "fetch_from_any", "fetch_payload", "fetch_when_ready",
           "protocol_name"]

logger = get_logger(__name__)

OP_GET = 1
STATUS_OK, STATUS_NOT_FOUND, STATUS_BAD_REQUEST = 0, 1, 2
REQUEST_LEN = 1 + 32 + 8 + 8
RESPONSE_HEADER_LEN = 1 + 8 + 8
CHUNK = 1 << 16


@dataclass
class Traffic:
    """Bytes sent and received, split by link class ("intra" or "cross" region). Thread-safe."""

    sent: dict = field(default_factory=lambda: {"intra": 0, "cross": 0})
    received: dict = field(default_factory=lambda: {"intra": 0, "cross": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, direction: str, link: str, n: int) -> None:
        """Count ``n`` bytes ``direction`` ("sent"/"received") on ``link`` ("intra"/"cross")."""
        with self._lock:
            getattr(self, direction)[link] = getattr(self, direction).get(link, 0) + n

    def snapshot(self) -> dict:
        """A copy: ``{"sent": {...}, "received": {...}}``."""
        with self._lock:
            return {"sent": dict(self.sent), "received": dict(self.received)}


#: a peer serves what it stored for round r (updates, state snapshots) until its close of round
#: r + ROUNDS_HELD + 1, when the coordinator prunes rounds below q - ROUNDS_HELD
ROUNDS_HELD = 3


def round_record_ttl(round_s: float) -> float:
    """How long a round record (update, vote, verdict, region delta, log head) lives in the DHT:
    20 rounds, at least a minute. State records live only as long as their snapshot (``ROUNDS_HELD``)."""
    return max(60.0, 20 * float(round_s))


class PayloadStore:
    """Payloads held by this peer, by hex digest, with the round they belong to.

    Bounded by total bytes: the oldest rounds are evicted first. Thread-safe. Lookups never wait
    for a payload to arrive: a server answers "not found" at once (a fetcher retries elsewhere).
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[str, tuple[int, bytes]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, round: int, digest: str | None = None) -> str:
        """Store ``data`` (for ``round``); returns its hex digest. Checks ``digest`` if given."""
        actual = hashlib.sha256(data).hexdigest()
        if digest is not None and digest != actual:
            raise DigestMismatch(f"payload hashes to {actual[:12]}, not {digest[:12]}")
        with self._lock:
            if actual not in self._items:
                self._items[actual] = (round, bytes(data))
                self._bytes += len(data)
                self._evict()
            elif round > self._items[actual][0]:  # stored again for a later round: kept as long as that round
                self._items[actual] = (round, self._items[actual][1])
        return actual

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._items) > 1:
            oldest = min(self._items, key=lambda d: self._items[d][0])
            self._bytes -= len(self._items.pop(oldest)[1])

    def get(self, digest: str) -> Optional[bytes]:
        """The payload with ``digest``, or None."""
        with self._lock:
            item = self._items.get(digest)
            return None if item is None else item[1]

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            return digest in self._items

    def prune(self, min_round: int) -> None:
        """Drop payloads of rounds older than ``min_round``."""
        with self._lock:
            for d in [d for d, (r, _) in self._items.items() if r < min_round]:
                self._bytes -= len(self._items.pop(d)[1])


class PayloadServer:
    """Serves a :class:`PayloadStore` on a hivemind P2P binary stream handler.

    ``link_of(peer_id) -> "intra" | "cross"`` classifies the requester for byte counting. A
    request is answered from one store lookup on the event loop: a digest this peer does not hold
    gets "not found" at once, so requests for unknown digests never park a thread or a handler.
    """

    def __init__(self, p2p: P2P, run_id: str, store: PayloadStore, traffic: Traffic,
                 link_of: Callable[[PeerID], str] = lambda _: "intra"):
        self.p2p, self.store, self.traffic, self.link_of = p2p, store, traffic, link_of
        self.protocol = protocol_name(run_id)
        self.served = 0
        self.not_found = 0

    async def start(self) -> None:
        """Register the stream handler on the P2P daemon."""
        await self.p2p.add_binary_stream_handler(self.protocol, self._handle)

    async def stop(self) -> None:
        """Unregister the handler (best effort)."""
        try:
            await self.p2p.remove_binary_stream_handler(self.protocol)
        except Exception:  # daemon may already be gone at shutdown
            pass

    async def _handle(self, info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readexactly(REQUEST_LEN), timeout=10.0)
            op, digest = request[0], request[1:33].hex()
            offset = int.from_bytes(request[33:41], "big")
            length = int.from_bytes(request[41:49], "big")
            if op != OP_GET:
                writer.write(bytes([STATUS_BAD_REQUEST]) + bytes(16))
                return
            data = self.store.get(digest)  # never waits for the payload to appear
            if data is None:
                self.not_found += 1
                writer.write(bytes([STATUS_NOT_FOUND]) + bytes(16))
                return
            if offset > len(data):
                writer.write(bytes([STATUS_BAD_REQUEST]) + len(data).to_bytes(8, "big") + bytes(8))
                return
            end = len(data) if length == 0 else min(len(data), offset + length)
            view = memoryview(data)[offset:end]
            writer.write(bytes([STATUS_OK]) + len(data).to_bytes(8, "big") + len(view).to_bytes(8, "big"))
            for i in range(0, len(view), CHUNK):
                writer.write(view[i:i + CHUNK])
                await writer.drain()
            self.traffic.add("sent", self.link_of(info.peer_id), RESPONSE_HEADER_LEN + len(view))
            self.served += 1
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        except Exception as e:  # never let a bad request kill the handler loop
            logger.debug("payload handler error: %r", e)
        finally:
            try:
                await writer.drain()
                writer.close()
            except Exception:
                pass


def protocol_name(run_id: str) -> str:
    """The stream-handler name used for payloads of ``run_id``."""
    return f"dai_swarm.payload.{run_id}"


async def fetch_payload(p2p: P2P, peer_id: PeerID, run_id: str, digest: str, *, max_bytes: int,
                        timeout_s: float, offset: int = 0, length: int = 0, traffic: Traffic | None = None,
                        link: str = "intra", verify: bool = True) -> bytes:
    """Fetch ``digest`` (or the range ``offset``/``length`` of it) from one peer.

    Raises :class:`PayloadTooLarge` if the declared size exceeds ``max_bytes`` (before reading
    the body), :class:`DigestMismatch` if a whole payload does not hash to ``digest``,
    :class:`PeerUnreachable` on timeout or a refused stream, :class:`PayloadNotFound` (a
    :class:`ProtocolError`) when the peer does not hold it.
    """
    async def _go() -> bytes:
        _, reader, writer = await p2p.call_binary_stream_handler(peer_id, protocol_name(run_id))
        try:
            writer.write(bytes([OP_GET]) + bytes.fromhex(digest) + offset.to_bytes(8, "big") + length.to_bytes(8, "big"))
            await writer.drain()
            header = await reader.readexactly(RESPONSE_HEADER_LEN)
            status, total, n = header[0], int.from_bytes(header[1:9], "big"), int.from_bytes(header[9:17], "big")
            if status == STATUS_NOT_FOUND:
                raise PayloadNotFound(f"peer {peer_id} does not hold payload {digest[:12]}")
            if status != STATUS_OK:
                raise ProtocolError(f"peer {peer_id} refused the request for {digest[:12]} (status {status})")
            if total > max_bytes or n > max_bytes:
                raise PayloadTooLarge(f"payload {digest[:12]} declares {total} bytes, cap is {max_bytes}")
            if n > total or (length and n > length):
                raise ProtocolError(f"peer {peer_id} sent a malformed range header")
            data = await reader.readexactly(n)
            if traffic is not None:
                traffic.add("received", link, RESPONSE_HEADER_LEN + n)
            return data
        finally:
            writer.close()

    async def _once_more_if_reset() -> bytes:
        # a stream that breaks with nothing of the awaited answer read (e.g. a burst overflowing the
        # daemon-to-handler socket backlog of hivemind's P2P) is asked once more: a GET is idempotent
        # and the deadline is shared
        try:
            return await _go()
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                raise
            logger.debug("stream to %s reset before answering %s; asking once more", peer_id, digest[:12])
            return await _go()

    if len(digest) != 64:
        raise ProtocolError(f"malformed digest {digest!r}")
    try:
        data = await asyncio.wait_for(_once_more_if_reset(), timeout=timeout_s)
    except asyncio.TimeoutError as e:
        raise PeerUnreachable(f"peer {peer_id} did not deliver {digest[:12]} within {timeout_s:.1f}s") from e
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        raise PeerUnreachable(f"stream to {peer_id} broke: {e!r}") from e
    except (PayloadTooLarge, ProtocolError):  # PayloadNotFound included
        raise
    except Exception as e:  # p2pd control errors (peer gone, no route)
        raise PeerUnreachable(f"cannot open a stream to {peer_id}: {e}") from e
    if verify and offset == 0 and length == 0 and hashlib.sha256(data).hexdigest() != digest:
        raise DigestMismatch(f"payload from {peer_id} does not hash to {digest[:12]}")
    return data


async def fetch_when_ready(p2p: P2P, peer_id: PeerID, run_id: str, digest: str, *, max_bytes: int, wait_s: float,
                           timeout_s: float, traffic: Traffic | None = None, link: str = "intra",
                           poll_s: float = 0.2) -> bytes:
    """Fetch ``digest`` from a peer that is about to hold it (a region's gateway still fetching).

    The server never waits for a payload: the *asker* polls, re-asking every ``poll_s`` while the
    answer is "not found" and ``wait_s`` has not passed (its own coroutine; no thread anywhere),
    then raises the last error like :func:`fetch_payload`.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_s
    while True:
        try:
            return await fetch_payload(p2p, peer_id, run_id, digest, max_bytes=max_bytes, timeout_s=timeout_s,
                                       traffic=traffic, link=link)
        except PayloadNotFound:
            if loop.time() + poll_s >= give_up:
                raise
        await asyncio.sleep(poll_s)


async def fetch_from_any(p2p: P2P, providers: Sequence[tuple[PeerID, str]], run_id: str, digest: str, *,
                         max_bytes: int, timeout_s: float, traffic: Traffic | None = None) -> bytes:
    """Try ``providers`` ((peer_id, link class) pairs) in order until one delivers a valid payload.

    A provider that sends oversized or wrong-digest data is skipped like an unreachable one; the
    last error is raised if nobody delivers.
    """
    last: Exception = PeerUnreachable(f"no provider for {digest[:12]}")
    for peer_id, link in providers:
        try:
            return await fetch_payload(p2p, peer_id, run_id, digest, max_bytes=max_bytes,
                                       timeout_s=timeout_s, traffic=traffic, link=link)
        except (PeerUnreachable, ProtocolError, PayloadTooLarge) as e:
            last = e
    raise last
