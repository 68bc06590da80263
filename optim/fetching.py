"""The payload half of the round driver: reading a round's announcements (only from keys with a
live, signed peer record in the region) and fetching and checking their payloads, with retries
from the announcers and then from region mates that already hold them.

A mixin of :class:`~.coordinator.Coordinator` (it uses the coordinator's ``ctx``, ``payloads``,
``providers`` and record helpers).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Mapping

import torch

from dai_swarm.dht.wire import typed
from dai_swarm.errors import CodecError, DigestMismatch, MalformedRecord, PeerUnreachable, ProtocolError, SwarmError
from dai_swarm.logging import get_logger

from . import codecs
from .book import RoundBook, UpdateAnnouncement
from .exchange import fetch_from_any
from .feedback_chain import FeedbackCommit

__all__ = ["PayloadFetch"]

logger = get_logger("dai_swarm.optim.coordinator")  # one logger name for the whole driver


class PayloadFetch:
    """Announcements and payload fetching (see the module docstring)."""

    def _providers_for(self, digest: str) -> list:
        from hivemind.p2p import PeerID
        out = []
        for pid in self.providers.get(digest, []):
            try:
                out.append((PeerID.from_base58(pid), self.ctx.link_of_p2p(pid)))
            except Exception:
                continue
        return out

    def _check_payload(self, digest: str, blob: bytes) -> Mapping[str, torch.Tensor]:
        like = self.ctx.like
        expect = {n: (tuple(t.shape), torch.float32) for n, t in like.params.items()}
        return codecs.decode(blob, expect=expect, max_bytes=self.cfg.max_decoded_bytes)

    def _mates(self) -> list:
        """(PeerID, link) of the other live peers of this region: they serve every payload they hold."""
        from hivemind.p2p import PeerID
        return [(PeerID.from_base58(pid), "intra") for pid in self.ctx.region_mates()]

    async def _fetch_payload(self, digest: str, timeout_s: float) -> bytes:
        """Fetch a payload from its announcers; if that fails (a broken stream, a busy author) and
        time remains, retry with the announcers first and then region mates that fetched it already."""
        end = time.monotonic() + timeout_s
        providers = self._providers_for(digest)
        attempt, first = 0, None
        while True:
            try:
                return await fetch_from_any(self.ctx.p2p, providers, self.cfg.run_id, digest,
                                            max_bytes=self.cfg.max_payload_bytes,
                                            timeout_s=max(0.2, (end - time.monotonic()) * (0.6 if attempt < 2 else 1.0)),
                                            traffic=self.ctx.traffic)
            except (PeerUnreachable, ProtocolError) as e:
                if isinstance(e, DigestMismatch):  # the bytes are bad, not the connection: no retry
                    raise
                first = first or e
                attempt += 1
                if attempt >= 3 or end - time.monotonic() < 0.5:
                    raise first from None  # the announcers' failure is what the counters report
                await asyncio.sleep(0.2 * attempt)
                known = {str(p) for p, _ in providers}
                mates = [m for m in self._mates() if str(m[0]) not in known]
                random.Random(f"{digest}:{attempt}").shuffle(mates)
                providers = self._providers_for(digest) + mates[:3]

    async def _fetch_one(self, book: RoundBook, digest: str, timeout_s: float) -> None:
        local = self.ctx.store.get(digest)
        try:
            if local is None:
                local = await self._fetch_payload(digest, timeout_s)
                self.ctx.store.put(local, book.round, digest)
            self.payloads[digest] = self._check_payload(digest, local)
            book.mark_fetched(digest, True)
        except CodecError as e:
            book.mark_fetched(digest, False, type(e).__name__)
            logger.info("round %d: payload %s refused: %s", book.round, digest[:12], e)
        except SwarmError as e:
            book.mark_fetched(digest, False, type(e).__name__)
            logger.info("round %d: payload %s not fetched: %s", book.round, digest[:12], e)

    def _fetch_all(self, book: RoundBook, deadline: float) -> None:
        wanted = book.to_fetch()
        if not wanted:
            return
        timeout_s = max(0.5, deadline - time.time())

        async def go() -> None:
            await asyncio.gather(*(self._fetch_one(book, d, timeout_s) for d in wanted))

        self.ctx.netloop.run(go(), timeout_s=timeout_s + 5)

    def _announcements(self, round: int) -> list[UpdateAnnouncement]:
        """Round ``round``'s update announcements from live peers of this region (one per signer).

        Only a key with a live, signed peer record in this region may announce; if an announcer is
        unknown the peer records are re-read once (a mate's record may not have been read yet), and
        announcements still unknown are dropped and counted (``unknown_announcer``). The provider
        to fetch from is the libp2p id of the signer's own peer record, not one the body names.
        """
        out, records = [], self._records("update", round)
        if any(self.ctx.announcer(rec.signer) is None for rec in records):
            self.ctx.refresh_peers()
        for rec in records:
            provider = self.ctx.announcer(rec.signer)
            if provider is None:
                self.ctx.count("unknown_announcer")
                logger.info("round %d: announcement from %s dropped: no live peer record in region %s",
                            round, rec.signer[:12], self.cfg.region)
                continue
            try:
                body = typed(rec, "update").body()  # schema: dai_swarm.dht.wire.UpdateBody
                body.pop("p2p_id", None)
                if body.get("peer") != rec.signer:
                    raise MalformedRecord("announcement names another peer than its signer")
                if "ef" in body:
                    body["ef"] = FeedbackCommit(**body["ef"])
                ann = UpdateAnnouncement(**body)
            except MalformedRecord as e:
                self.ctx.count("malformed_announcement")
                logger.info("round %d: malformed announcement from %s: %s", round, rec.signer[:12], e)
                continue
            self.providers.setdefault(ann.digest, [])
            if provider not in self.providers[ann.digest]:
                self.providers[ann.digest].append(provider)
            out.append(ann)
        return out
