"""The ballot half of the round driver: reading a round's vote records (one DHT key per signer,
only the signers whose votes can count), the votes and verdict sets they name, and the electorate
a peer waits for.

A mixin of :class:`~.coordinator.Coordinator` (it uses the coordinator's ``ctx``, ``cfg``,
``books``, ``machine`` and record helpers).
"""

from __future__ import annotations

import time

from dai_swarm.dht.wire import VoteBody, typed
from dai_swarm.errors import MalformedRecord

from .book import RoundBook
from .votes import Vote, tally, vote_readers, who_counts

__all__ = ["Ballots"]


class Ballots:
    """Vote records, votes and electorates (see the module docstring)."""

    def _live_here(self) -> set[str]:
        """Public keys with a live, signed peer record in this region (``ctx.announcer``)."""
        return {k for k in list(getattr(self.ctx, "peer_keys", {}) or {}) if self.ctx.announcer(k) is not None}

    def _vote_readers(self, q: int) -> set[str]:
        """The keys whose round-``q`` vote records this peer reads (:func:`~.votes.vote_readers`)."""
        peers, book = dict(getattr(self.ctx, "peer_keys", {}) or {}), self.books.get(q)
        here = self._live_here() | {a.peer for a in (book and book.announced()) or ()}
        elsewhere = {k for k, (_, region, _) in peers.items() if region != self.cfg.region}
        return vote_readers(self.ctx.vote_weights(), here, elsewhere, self.ctx.identity.public_key_hex)

    def _vote_bodies(self, q: int, signers: set[str] | None = None) -> list[tuple[str, VoteBody]]:
        """(signer, typed body) of round ``q``'s vote records (:class:`~dai_swarm.dht.wire.VoteBody`)
        by ``signers`` (default: :meth:`_vote_readers`)."""
        out = []
        for rec in self._records("vote", q, signers=self._vote_readers(q) if signers is None else signers):
            try:
                out.append((rec.signer, typed(rec, "vote")))
            except MalformedRecord:
                self.ctx.count("malformed_vote")
        return out

    def _votes(self, q: int, bodies: list[tuple[str, VoteBody]] | None = None, verdicts: bool = False) -> list[Vote]:
        """Round ``q``'s votes from its vote records (read now unless ``bodies`` are given); with
        ``verdicts`` the verdict-id sets the votes name instead of their inclusions."""
        out = []
        for signer, w in self._vote_bodies(q) if bodies is None else bodies:
            try:
                out.append(Vote(self.cfg.run_id, q, signer, tuple(w.verdicts), "0" * 64) if verdicts
                           else Vote(self.cfg.run_id, q, signer, tuple(w.inclusion), w.state_hash))
            except MalformedRecord:  # e.g. a repeated digest
                continue
        return out

    def _voted_inclusion(self, q: int, state_hash: str) -> tuple | None:
        """The inclusion that the standing-weighted votes for ``state_hash`` name, read again (a peer
        whose tally missed them re-synced to that state afterwards); None if no such vote counts."""
        named = [v for v in self._votes(q) if v.state_hash == state_hash]
        res = tally(named, self.ctx.vote_weights(), run_id=self.cfg.run_id, round=q, electorate=self._electorate(named))
        return res.inclusion if res.decided else None

    def _electorate(self, votes: list[Vote]) -> set[str]:
        """Public keys expected to publish this region's next state: live peers of the region
        (signed peer records) and everyone who voted this round, those with standing only
        (:func:`~.votes.who_counts`)."""
        return who_counts({v.voter for v in votes} | self._live_here(), self.ctx.vote_weights())

    def _read_votes(self, q: int, book: RoundBook | None) -> list[tuple[str, VoteBody]]:
        """Round ``q``'s vote records; if a live peer with standing that announced an update this round
        has no vote yet (a DHT read can miss a record under load), read again for up to 0.1 T."""
        readers = self._vote_readers(q)
        bodies = self._vote_bodies(q, readers)
        if book is None:
            return bodies
        expected = who_counts({a.peer for a, _ in book.included()}, self.ctx.vote_weights()) & readers
        expected.add(self.ctx.identity.public_key_hex)
        end = self.machine.vote_patience(time.time())
        while not self._stop.is_set() and time.time() < end and not expected <= {signer for signer, _ in bodies}:
            self._stop.wait(0.1)
            bodies = self._vote_bodies(q, readers)
        return bodies
