"""A region of two peers whose tallies each missed the other's vote (the r1 disagreement).

What happened in the real-process run (region r1: p3 and the joiner p5): each peer closed round 9
on another state hash (they had seen different announcements), and at the tally each read only
its own vote from the DHT (a read under load returns what the replicas it reached hold). A tally
of one vote is decided, so each kept its own state and both recorded ``agreed=True`` on two
hashes. Nothing compared the two published states, so the region stayed split until a later
vote happened to see both.

The protocol now (1) re-reads the votes for up to 0.1 T when a peer that announced an included
update has not voted yet, and (2) whenever the tally did not see every live peer of the region
vote for its state, confirms its new state against the region's *state records* with the pure
rule :func:`~dai_swarm.optim.votes.confirm_state`: the weighted majority (weights of the base
both sides held) is settled when every expected peer published or when it holds more than half
of the expected weight; the peer outside a settled majority re-syncs before the next round.
These tests drive that rule and two real :class:`Coordinator` objects on an in-memory DHT, with
no processes and no sleeping on a clock.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from dai_swarm.optim.book import BookLimits
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.coordinator import Coordinator, NullVerifier
from dai_swarm.optim.exchange import PayloadStore
from dai_swarm.optim.states import BaseState, BaseStore
from dai_swarm.optim.votes import HeadCount, confirm_state, tally
from fakes import run_config

A, B, C = "a" * 64, "b" * 64, "c" * 64
P3, P5, P6 = "03" * 32, "05" * 32, "06" * 32
LIMITS = BookLimits(max_inner_steps=100, batch_size=8, max_payload_bytes=1 << 20, codecs=frozenset({"int8"}))


# ------------------------------------------------------------------------------ the pure rule
def test_one_vs_one_both_sides_reach_the_same_decision():
    weights = {P3: 0.55, P5: 0.25}  # p3 established, p5 a joiner still in its warm-up
    offers = [(P3, A), (P5, B)]
    assert confirm_state(A, P3, offers, {P3, P5}, weights).action == "keep"
    d = confirm_state(B, P5, offers, {P3, P5}, weights)
    assert (d.action, d.target) == ("resync", A)


def test_one_vs_one_equal_weights_is_settled_by_the_tie_break_once_both_published():
    weights = {P3: 0.1, P5: 0.1}
    offers = [(P3, A), (P5, B)]
    left, right = confirm_state(A, P3, offers, {P3, P5}, weights), confirm_state(B, P5, offers, {P3, P5}, weights)
    assert sorted([left.action, right.action]) == ["keep", "resync"]
    assert (left.target or right.target) == A  # ties go to the smaller hash, on both sides alike
    # with only its own record in, neither side may decide: the other's could overturn it
    assert confirm_state(B, P5, [(P5, B)], {P3, P5}, weights).action == "wait"
    assert confirm_state(A, P3, [(P3, A)], {P3, P5}, weights).action == "wait"


def test_a_heavy_majority_is_settled_before_every_record_is_in():
    weights = {P3: 1.0, P5: 0.1, P6: 0.1}
    # p3 alone outweighs everyone else: p5 re-syncs even though p6 has not published
    assert confirm_state(B, P5, [(P3, A), (P5, B)], {P3, P5, P6}, weights) == confirm_state(
        B, P5, [(P3, A)], {P3, P5, P6}, weights)
    assert confirm_state(B, P5, [(P3, A)], {P3, P5, P6}, weights).target == A
    # a dead peer in the electorate: two of three equal weights are settled
    eq = {P3: 0.5, P5: 0.5, P6: 0.5}
    assert confirm_state(A, P3, [(P3, A), (P5, A)], {P3, P5, P6}, eq).action == "keep"


def test_own_record_is_taken_from_the_argument_and_strangers_do_not_count():
    weights = {P3: 0.5, P5: 0.5}
    stranger = "99" * 32
    offers = [(P3, C), (P5, A), (stranger, B), ("77" * 32, B)]  # our stale record says C
    assert confirm_state(A, P3, offers, {P3, P5}, weights).action == "keep"


# ------------------------------------------------------------------------------ two coordinators
class MemoryDHT:
    """Round records by (kind, round), one per signer; ``hide`` makes a reader miss a signer's
    votes (a DHT read that reached no replica holding them)."""

    def __init__(self):
        self.records: dict = {}
        self.hide: dict[str, set[str]] = {}  # reader -> signers whose vote records it cannot read
        self.hide_once: dict[str, set[str]] = {}  # reader -> signers missing from its next vote read only
        self.hide_states: dict[str, set[str]] = {}  # reader -> signers whose state records it cannot read

    def view(self, reader: str):
        dht = self

        class View:
            def publish_round_record(self, run_id, kind, round, body, ttl_s=0.0):
                dht.records.setdefault((kind, round), {})[reader] = SimpleNamespace(signer=reader, body=dict(body))
                return True

            def get_round_records(self, run_id, kind, round, signers=None):
                recs = {s: r for s, r in dht.records.get((kind, round), {}).items() if signers is None or s in signers}
                if kind.startswith("state"):
                    return [recs[s] for s in sorted(recs) if s not in dht.hide_states.get(reader, set())]
                if not kind.startswith("vote"):
                    return [recs[s] for s in sorted(recs)]
                hidden = dht.hide.get(reader, set()) | dht.hide_once.pop(reader, set())
                return [recs[s] for s in sorted(recs) if s not in hidden]
        return View()


def _state(round: int, value: float) -> BaseState:
    params = {"w": torch.full((4,), value)}
    return BaseState.make(round, params, {"w": torch.zeros(4)}, {}, params)


def _coordinator(key: str, dht: MemoryDHT, clock: RoundClock, states: dict, peers: dict) -> Coordinator:
    ctx = SimpleNamespace(
        run_id="run", region="r1", identity=SimpleNamespace(public_key_hex=key), dht=dht.view(key), clock=clock,
        cross_region_period=1000, store=PayloadStore(), p2p_id=f"p2p-{key[:4]}", verifier=NullVerifier(),
        config=run_config(region="r1"),
        peer_keys=peers, announcer=lambda k: peers.get(k, (None,))[0], counters={})
    c = Coordinator(ctx, BaseStore())
    ctx.reputation = lambda: {P3: 0.55, P5: 0.25}
    ctx.vote_weights = lambda extra=None: dict((extra or {}).get("reputation", {P3: 0.55, P5: 0.25}))

    def resync(round, target_hash=None, timeout_s=None):  # a verified download from the holders
        state = states.get(target_hash)
        if state is not None:
            c.bases.put(state)
        return state
    c.resync = resync
    return c


def test_two_coordinators_that_missed_each_others_vote_converge_in_the_same_round():
    now = time.time()
    clock = RoundClock(now - 9.6 * 4.0, 4.0, close_frac=0.3, tally_frac=0.55)  # round 9's tally is due
    dht = MemoryDHT()
    dht.hide = {P3: {P5}, P5: {P3}}  # each reads only its own vote
    peers = {P3: ("p2p-0303", "r1", now), P5: ("p2p-0505", "r1", now)}
    q = 9
    base_q1 = BaseState.make(q + 1, {"w": torch.zeros(4)}, {"w": torch.zeros(4)},
                             {"reputation": {P3: 0.55, P5: 0.25}}, {"w": torch.zeros(4)})
    cand = {P3: _state(q + 2, 1.0), P5: _state(q + 2, 2.0)}  # they saw different announcements
    states = {s.hash: s for s in cand.values()}
    coords = {k: _coordinator(k, dht, clock, states, peers) for k in (P3, P5)}
    for key, c in coords.items():
        c.bases.put(base_q1)
        c._candidates[q] = cand[key]
        dht.view(key).publish_round_record("run", "vote.r1", q, {"inclusion": [], "state_hash": cand[key].hash})
    # the old behaviour, for the record: each tally alone is decided for the peer's own state
    for key in (P3, P5):
        votes = coords[key]._votes(q)
        assert [v.voter for v in votes] == [key]
        assert tally(votes, HeadCount(), run_id="run", round=q).state_hash == cand[key].hash
    # both tallies run "at once": each publishes its state, then confirms against the records
    coords[P3]._publish_state(cand[P3])
    coords[P5]._publish_state(cand[P5])
    t0 = time.time()
    for key in (P3, P5):
        coords[key].tally_round(q)
    assert time.time() - t0 < 3.0
    final = {key: c.bases.get(q + 2).hash for key, c in coords.items()}
    assert final[P3] == final[P5] == cand[P3].hash  # the established peer's state won on both sides
    assert coords[P5].outcomes[q].resynced is True and coords[P3].outcomes[q].resynced is False
    assert coords[P5].outcomes[q].state_hash == cand[P3].hash



def test_a_joiner_without_standing_keeps_no_state_its_region_never_confirmed():
    """The round-protocol test's failure: the joiner P5 (no standing yet) closed round 5 on another
    state than the founder P3, its tally read only its own vote, and P3's state record was not in by
    the confirmation deadline (P3 under load). P5 then kept its own state, one nobody with weight
    chose, and recorded it as round 5's. Now it holds no base of round 7 (it re-syncs it when it
    trains it) and records no state for the round; a peer with standing keeps its own."""
    now = time.time()
    clock = RoundClock(now - 10.7 * 4.0, 4.0, close_frac=0.3, tally_frac=0.55)  # the give-up is 1 s away
    dht = MemoryDHT()
    peers = {P3: ("p2p-0303", "r1", now), P5: ("p2p-0505", "r1", now)}
    q = 9
    weights = {P3: 0.55, P5: 0.0}
    base_q1 = BaseState.make(q + 1, {"w": torch.zeros(4)}, {"w": torch.zeros(4)}, {"reputation": weights},
                             {"w": torch.zeros(4)})
    cand = {P3: _state(q + 2, 1.0), P5: _state(q + 2, 2.0)}
    coords = {k: _coordinator(k, dht, clock, {s.hash: s for s in cand.values()}, peers) for k in (P3, P5)}
    for key, c in coords.items():
        c.bases.put(base_q1)
        c._candidates[q] = cand[key]
        c.ctx.count = lambda name, n=1, c=c: c.ctx.counters.__setitem__(name, c.ctx.counters.get(name, 0) + n)
        dht.view(key).publish_round_record("run", "vote.r1", q, {"inclusion": [], "state_hash": cand[key].hash})
    dht.hide = {P5: {P3}, P3: {P5}}  # each tally reads only its own vote, and neither sees the other's state
    dht.hide_states = {P5: {P3}, P3: {P5}}
    t0 = time.time()
    for key in (P3, P5):
        coords[key].tally_round(q)
    assert time.time() - t0 < 6.0
    out3, out5 = coords[P3].outcomes[q], coords[P5].outcomes[q]
    assert coords[P5].bases.get(q + 2) is None and out5.state_hash == "" and not out5.resynced
    assert coords[P5].ctx.counters == {"unconfirmed_state_dropped": 1}
    assert coords[P3].bases.get(q + 2).hash == out3.state_hash == cand[P3].hash  # the founder keeps its own
    # once P3's record can be read, P5 re-syncs to it as before
    dht.hide_states = {}
    assert coords[P5]._confirm_state(q, cand[P5], []).hash == cand[P3].hash


def test_a_peer_that_downloaded_the_agreed_state_credits_the_agreed_contributors():
    """A minority peer whose book missed one update's payload (and another's announcement) and
    that downloaded the majority's state must write the round record its mates write: the
    contributors of the *agreed* inclusion, not its own (partial) one, nor none."""
    from dai_swarm.optim.book import RoundBook, UpdateAnnouncement
    from dai_swarm.optim.coordinator import RoundOutcome


    now = time.time()
    clock = RoundClock(now - 9.6 * 4.0, 4.0, close_frac=0.3, tally_frac=0.55)
    peers = {P3: ("p2p-0303", "r1", now), P5: ("p2p-0505", "r1", now)}
    c = _coordinator(P5, MemoryDHT(), clock, {}, peers)

    def ann(peer: str, digest: str, steps: int) -> UpdateAnnouncement:
        return UpdateAnnouncement(run_id="run", round=9, base_hash=A, peer=peer, steps=steps, samples=8 * steps,
                                  codec="int8", digest=digest, size_bytes=100, region="r1")

    d3, d5, d6 = ("3" * 64, "5" * 64, "6" * 64)
    book = RoundBook("run", 9, A, limits=LIMITS)
    book.offer_many([ann(P3, d3, 10), ann(P5, d5, 5)])  # P6's announcement never reached this peer
    book.close()
    book.mark_fetched(d5, True)  # its own payload; P3's never arrived
    assert book.inclusion() == (d5,)
    c._announcements = lambda q: [ann(P6, d6, 3)]  # read again from the DHT when crediting
    outcome = RoundOutcome(9, resynced=True)
    c._credit(9, book, outcome, (d3, d5, d6))
    assert outcome.contributors == {P3: 80, P5: 40, P6: 24} and outcome.inclusion == (d3, d5, d6)
    assert outcome.regions == {P3: "r1", P5: "r1", P6: "r1"}
    # without a re-sync, a ready book credits its own inclusion, as before
    own = RoundBook("run", 9, A, limits=LIMITS)
    own.offer_many([ann(P5, d5, 5)])
    own.close()
    own.mark_fetched(d5, True)
    kept = RoundOutcome(9)
    c._credit(9, own, kept, None)
    assert kept.contributors == {P5: 40} and kept.inclusion == (d5,)


def test_a_peer_whose_tally_missed_a_vote_credits_the_inclusion_of_the_state_it_re_synced_to():
    """The export test's failure: P5 never got P3's payload, closed on its own update alone, and its
    tally read only its own vote; confirming against the state records it re-synced to P3's state.
    Its round record must then credit P3's voted inclusion (read again), as P3's record does, not the
    one update of its own tally."""
    from dai_swarm.optim.book import RoundBook, UpdateAnnouncement

    now = time.time()
    clock = RoundClock(now - 9.6 * 4.0, 4.0, close_frac=0.3, tally_frac=0.55)
    dht = MemoryDHT()
    peers = {P3: ("p2p-0303", "r1", now), P5: ("p2p-0505", "r1", now)}
    q, d3, d5 = 9, "3" * 64, "5" * 64
    base_q1 = BaseState.make(q + 1, {"w": torch.zeros(4)}, {"w": torch.zeros(4)},
                             {"reputation": {P3: 0.55, P5: 0.25}}, {"w": torch.zeros(4)})
    base_q = BaseState.make(q, {"w": torch.zeros(4)}, {"w": torch.zeros(4)}, {}, {"w": torch.zeros(4)})
    cand = {P3: _state(q + 2, 1.0), P5: _state(q + 2, 2.0)}
    coords = {k: _coordinator(k, dht, clock, {s.hash: s for s in cand.values()}, peers) for k in (P3, P5)}
    anns = [UpdateAnnouncement(run_id="run", round=q, base_hash=base_q.hash, peer=k, steps=5, samples=40,
                               codec="int8", digest=d, size_bytes=100, region="r1") for k, d in ((P3, d3), (P5, d5))]
    for key, c in coords.items():
        c.bases.put(base_q)
        c.bases.put(base_q1)
        book = RoundBook("run", q, base_q.hash, limits=LIMITS)
        book.offer_many(anns)
        book.close()
        for d in (d3, d5) if key == P3 else (d5,):  # P3's payload never reached P5
            book.mark_fetched(d, True)
        c.books[q] = book
        c._candidates[q] = cand[key]
        dht.view(key).publish_round_record("run", "vote.r1", q, {"inclusion": list(book.inclusion()),
                                                                 "state_hash": cand[key].hash})
        c._publish_state(cand[key])
    dht.hide_once = {P5: {P3}}  # P5's tally reads only its own vote
    for key in (P3, P5):
        coords[key].tally_round(q)
    out3, out5 = coords[P3].outcomes[q], coords[P5].outcomes[q]
    assert out5.resynced and out5.state_hash == out3.state_hash == cand[P3].hash
    assert out3.inclusion == out5.inclusion == (d3, d5)
    assert out3.contributors == out5.contributors == {P3: 40, P5: 40}
    # votes from keys without standing never name the inclusion: a stranger's vote for P3's state
    dht.records[("vote.r1", q)]["07" * 32] = SimpleNamespace(signer="07" * 32, body={
        "inclusion": [d5], "state_hash": cand[P3].hash})
    dht.records[("vote.r1", q)].pop(P3)
    assert coords[P5]._voted_inclusion(q, cand[P3].hash) is None


def test_a_state_record_lives_as_long_as_the_snapshot_it_offers():
    """The state of round b is served until the close of round b + ROUNDS_HELD + 1 (the store is pruned
    then): its record expires then too, not after the 20 rounds of other records, so a joiner or an
    export never asks donors for a snapshot they no longer hold. A snapshot already pruned by the
    clock is not offered at all."""
    from dai_swarm.optim.exchange import ROUNDS_HELD

    now = time.time()
    clock = RoundClock(now - 9.6 * 4.0, 4.0, close_frac=0.3, tally_frac=0.55)  # in round 9
    dht = MemoryDHT()
    c = _coordinator(P3, dht, clock, {}, {})
    ttls = []
    publish = c.ctx.dht.publish_round_record
    c.ctx.dht = SimpleNamespace(publish_round_record=lambda run_id, kind, round, body, ttl_s=0.0:
                                ttls.append((kind, round, ttl_s)) or publish(run_id, kind, round, body, ttl_s))
    c._publish_state(_state(11, 1.0))
    (kind, round, ttl), = ttls
    assert kind == "state.r1" and round == 11
    assert abs(ttl - (clock.close_time(11 + ROUNDS_HELD + 1) - now)) < 1.0 and ttl < 20 * 4.0
    assert dht.records[("state.r1", 11)][P3].body["digest"]
    c._publish_state(_state(4, 1.0))  # closed in round 8: its snapshot is pruned by now
    assert len(ttls) == 1 and ("state.r1", 4) not in dht.records
