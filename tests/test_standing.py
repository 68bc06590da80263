"""Standing, not head count (SPEC I7): fresh keys weigh nothing in votes, verdict sets, state
majorities and joins; the founders named in the signed manifest are the round-0 trust anchor.

Regression tests of the security review's findings 2 (Sybil votes and verdict sets) and 3
(joiners counting heads), on the pure rules the coordinator calls and on a coordinator driven
over an in-memory DHT.
"""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest
import torch

from dai_swarm.errors import ConfigError
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.coordinator import Coordinator, NullVerifier
from dai_swarm.optim.download import state_record
from dai_swarm.optim.exchange import PayloadStore
from dai_swarm.optim.states import BaseState, BaseStore
from dai_swarm.optim.votes import HeadCount, Vote, majority_state_hash, state_weights, tally
from dai_swarm.verification.reputation import (
    ReputationPolicy, initial_extra, standing_of, update_reputation, vote_weights,
)
from dai_swarm.verification.verdicts import Verdict
from fakes import run_config


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


FOUNDER, HONEST, NEWCOMER = _key("founder"), _key("honest"), _key("newcomer")
SYBILS = [_key(f"sybil-{i}") for i in range(1000)]
GOOD, EVIL = _key("honest state"), _key("attacker's state")


def _verdict(round, verifier, target, passed, digest=None):
    return Verdict(round=round, verifier=verifier, target=target, digest=digest or _key(f"{target}:{round}"),
                   passed=passed, distance=0.0 if passed else 0.5, recomputed="0" * 64, steps=5)


def _established() -> dict:
    """Base metadata: the founder, one honest key with a verified pass, one unproven newcomer."""
    extra = initial_extra([FOUNDER])
    return update_reputation(extra, 5, [_verdict(1, FOUNDER, HONEST, True)])


# ------------------------------------------------------------------------------ standing
def test_founders_hold_standing_from_round_zero_and_fresh_keys_none():
    extra = initial_extra([FOUNDER])
    assert standing_of(extra) == {FOUNDER: 1.0}
    w = vote_weights(extra)
    assert w.get(FOUNDER) == 1.0 and w.get(SYBILS[0], 0.0) == 0.0
    assert initial_extra([]) == {}
    # a decision in which no signer holds standing falls back to reputation (the bootstrap window)
    assert vote_weights({}).fallback.get(SYBILS[0]) == ReputationPolicy().newcomer


def test_a_resumed_generation_s_founder_holds_standing_in_the_exported_state():
    """An export's state names the previous generation's keys; none of them is live in the resumed
    run. Its new founder must decide (found in the export test: two joiners out-counted it)."""
    exported = initial_extra([FOUNDER])
    resumer, j1, j2 = _key("resumer"), _key("joiner 1"), _key("joiner 2")
    w = vote_weights(exported, anchors=[resumer])
    assert w.get(resumer) == 1.0 and w.get(FOUNDER) == 1.0 and w.get(j1, 0.0) == 0.0
    res = tally([Vote("run", 11, resumer, (), GOOD), Vote("run", 11, j1, (), EVIL), Vote("run", 11, j2, (), EVIL)],
                w, run_id="run", round=11)
    assert res.state_hash == GOOD
    without = tally([Vote("run", 11, resumer, (), GOOD), Vote("run", 11, j1, (), EVIL), Vote("run", 11, j2, (), EVIL)],
                    vote_weights(exported), run_id="run", round=11)
    assert without.state_hash == EVIL  # the head count the anchor replaces
    # an anchor the state slashed gets nothing back
    est = _established()
    est = dict(est, trust={**est["trust"], resumer: [1, 0]}, reputation={**est["reputation"], resumer: 1.0})
    slashed = update_reputation(est, 9, [_verdict(6, FOUNDER, resumer, False, _key("b")),
                                         _verdict(6, HONEST, resumer, False, _key("b"))])
    assert slashed["slashed_now"] == [resumer]
    assert vote_weights(slashed, anchors=[resumer]).get(resumer, 0.0) == 0.0


def test_a_region_the_founder_never_reached_still_decides_and_bootstraps_standing():
    extra = initial_extra([FOUNDER])  # θ0 of every region names the founder; it trains in another one
    a, b = _key("region-2 peer a"), _key("region-2 peer b")
    res = tally([Vote("run", 4, a, (), GOOD), Vote("run", 4, b, (), GOOD)], vote_weights(extra), run_id="run", round=4)
    assert res.decided and res.state_hash == GOOD
    # their checks of each other count (no standing verifier checked these updates) and earn standing
    out = update_reputation(extra, 6, [_verdict(2, a, b, True), _verdict(2, b, a, True)])
    assert set(standing_of(out)) == {FOUNDER, a, b}
    # from then on a decision with a standing signer ignores fresh keys
    res = tally([Vote("run", 7, a, (), GOOD)] + [Vote("run", 7, k, (), EVIL) for k in SYBILS],
                vote_weights(out), run_id="run", round=7)
    assert res.state_hash == GOOD


def test_a_verified_pass_earns_standing_and_a_slash_takes_it_away():
    extra = _established()
    assert set(standing_of(extra)) == {FOUNDER, HONEST}
    assert NEWCOMER not in standing_of(extra)
    # two standing verifiers fail HONEST's update: slashed, standing gone
    slash = [_verdict(6, FOUNDER, HONEST, False, _key("bad")), _verdict(6, _key("x"), HONEST, False, _key("bad"))]
    extra2 = update_reputation(extra, 9, slash + [_verdict(6, HONEST, FOUNDER, True)])
    assert HONEST in standing_of(extra2)  # one standing fail is not enough (the other verifier has none)
    extra3 = update_reputation(extra, 9, [_verdict(6, FOUNDER, NEWCOMER, True)])
    extra4 = update_reputation(extra3, 11, [_verdict(8, FOUNDER, HONEST, False, _key("b2")),
                                            _verdict(8, NEWCOMER, HONEST, False, _key("b2"))])
    assert HONEST not in standing_of(extra4) and extra4["slashed_now"] == [HONEST]


# ------------------------------------------------------------------------------ finding 2: votes
def test_a_thousand_fresh_keys_cannot_win_an_inclusion_vote_or_a_verdict_set():
    weights = vote_weights(_established())
    honest = [Vote("run", 7, FOUNDER, (), GOOD), Vote("run", 7, HONEST, (), GOOD)]
    sybil = [Vote("run", 7, k, (), EVIL) for k in SYBILS]
    res = tally(honest + sybil, weights, run_id="run", round=7)
    assert res.decided and res.state_hash == GOOD
    # the verdict-id set is tallied the same way: the Sybils cannot pick it (suppress a slash)
    ids_h, ids_s = (_key("verdict of a cheater"),), (_key("nothing to see"),)
    vres = tally([Vote("run", 7, FOUNDER, ids_h, "0" * 64)] + [Vote("run", 7, k, ids_s, "0" * 64) for k in SYBILS],
                 weights, run_id="run", round=7)
    assert vres.inclusion == ids_h
    # a vote of fresh keys alone decides nothing while a standing peer of the region is live
    assert not tally(sybil, weights, run_id="run", round=7, electorate=[FOUNDER, *SYBILS]).decided


def test_fresh_key_verdicts_do_not_count_once_anyone_holds_standing():
    extra = _established()
    target = HONEST
    lies = [_verdict(6, k, target, False, _key("honest update")) for k in SYBILS[:40]]
    out = update_reputation(extra, 9, lies + [_verdict(6, FOUNDER, target, True, _key("honest update"))])
    assert "slashed_now" not in out and target in standing_of(out)
    assert not any(k in out.get("trust", {}) and out["trust"][k][1] for k in SYBILS[:40])  # not even judged


def test_re_sync_target_needs_standing_behind_it():
    weights = vote_weights(_established())
    offers = [(FOUNDER, GOOD)] + [(k, EVIL) for k in SYBILS]
    assert majority_state_hash(offers, weights).state_hash == GOOD
    only_sybils = majority_state_hash([(k, EVIL) for k in SYBILS], weights, electorate=[FOUNDER, HONEST])
    assert only_sybils.weight == 0.0  # the coordinator never re-syncs to a state nobody standing holds


def test_without_verification_every_signer_counts_once():
    res = tally([Vote("run", 1, k, (), GOOD) for k in SYBILS[:3]] + [Vote("run", 1, FOUNDER, (), EVIL)],
                HeadCount(), run_id="run", round=1)
    assert res.decided and res.state_hash == GOOD and NullVerifier().vote_weights({}).get("x") == 1.0


# ------------------------------------------------------------------------------ finding 3: joiners
class _Records:
    def __init__(self, records):
        self.records = records

    def get_round_records(self, run_id, kind, round, signers=None):
        return [SimpleNamespace(signer=s, body=b) for s, b in self.records.get((kind, round), [])
                if signers is None or s in signers]


def _joiner(records, anchors, count):
    ctx = SimpleNamespace(run_id="run", region="r0", identity=SimpleNamespace(public_key_hex=_key("joiner")),
                          dht=_Records(records), clock=RoundClock(time.time(), 4.0), cross_region_period=1000,
                          store=PayloadStore(), p2p_id="p2p-joiner", verifier=NullVerifier(), region_of={},
                          count=count, link_of_p2p=lambda p: "intra", config=run_config())
    c = Coordinator(ctx, BaseStore())
    ctx.vote_weights = lambda extra=None: {k: 1.0 for k in anchors} if c.bases.latest() is None else {}
    return c


def test_joiner_downloads_the_state_its_anchor_offers_not_the_state_of_fifty_fresh_keys(monkeypatch):
    good, evil = (BaseState.make(6, {"w": torch.full((4,), v)}, {"w": torch.zeros(4)}) for v in (1.0, 9.0))
    records = {("state.r0", 6): [(FOUNDER, state_record(good.hash, good.blob(), "p2p-founder")[0])]
               + [(k, state_record(evil.hash, evil.blob(), f"p2p-{k[:6]}")[0]) for k in SYBILS[:50]]}
    picked = []
    monkeypatch.setattr("dai_swarm.optim.statesync.pick_download",
                        lambda offers, target, me, live: picked.append(target) or None)
    counts = []
    c = _joiner(records, {FOUNDER}, counts.append)
    assert c.resync(6) is None and picked == [good.hash] and counts == []
    # a joiner none of whose anchors offers anything downloads nothing (no head count), and says so
    picked.clear()
    c = _joiner(records, {_key("somebody else")}, counts.append)
    assert c.resync(6) is None and c.resync(6) is None
    assert picked == [] and counts == ["no_trusted_offer"]  # said once per round


# --- aggregation: newcomers together weigh at most NEWCOMER_SHARE (must-show (g), pure) ----------------
def test_cap_newcomers_bounds_their_total_share_and_leaves_small_shares_alone():
    from dai_swarm.optim.aggregate import NEWCOMER_SHARE, cap_newcomers

    w = cap_newcomers([100.0, 100.0] + [10.0] * 40, [True, True] + [False] * 40)
    assert w[:2] == [100.0, 100.0]
    assert sum(w[2:]) / sum(w) == pytest.approx(NEWCOMER_SHARE)
    assert len(set(w[2:])) == 1  # every newcomer scaled by the same factor
    assert cap_newcomers([100.0, 10.0], [True, False]) == [100.0, 10.0]  # 1/11 < 10%: unchanged
    assert cap_newcomers([5.0, 7.0], [False, False]) == [5.0, 7.0]  # nobody proven: bootstrap
    # nobody proven in this round of a chain that had proven updates before: newcomers weigh nothing
    assert cap_newcomers([5.0, 7.0], [False, False], reached=True) == [0.0, 0.0]
    assert cap_newcomers([100.0, 10.0], [True, False], reached=True) == [100.0, 10.0]
    with pytest.raises(ConfigError):
        cap_newcomers([1.0], [True], share=1.0)


def _flood_round(base: BaseState, honest_delta: dict | None, flooders: int = 40, flood: torch.Tensor | None = None):
    """A closed round on ``base``: one standing update (unless ``honest_delta`` is None) and
    ``flooders`` fresh keys each sending ``flood`` (default -10 everywhere); returns the next base
    (outer lr 1, no momentum)."""
    from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
    from dai_swarm.optim.rules import compute_next_base
    from dai_swarm.verification.reputation import reputation_of

    payloads, anns = {}, []
    if honest_delta is not None:
        payloads[_key("h")] = honest_delta
        anns.append(UpdateAnnouncement("run", 0, base.hash, HONEST, 4, 32, "none", _key("h"), 100))
    for i, k in enumerate(SYBILS[:flooders]):
        payloads[_key(f"flip{i}")] = {"w": -10.0 * torch.ones(8) if flood is None else flood.clone()}
        anns.append(UpdateAnnouncement("run", 0, base.hash, k, 4, 32, "none", _key(f"flip{i}"), 100))
    book = RoundBook("run", 0, base.hash, limits=BookLimits(max_inner_steps=4, batch_size=8,
                                                           max_payload_bytes=1 << 16, codecs=frozenset({"none"})))
    book.offer_many(anns)
    book.close()
    for d in payloads:
        book.mark_fetched(d, True)
    verifier = SimpleNamespace(next_extra=lambda extra, q, v: dict(extra), reputation=reputation_of,
                               vote_weights=vote_weights, rule=None)
    return compute_next_base(book, payloads, base, None, verifier, (), outer_lr=1.0, outer_momentum=0.0)


def test_forty_sign_flipped_newcomer_updates_do_not_move_the_base():
    """compute_next_base with 1 standing update and 40 fresh keys sending its negation ×10: the
    flooded updates point away from the proven one, so they weigh nothing and the base takes the
    honest step in full (before the direction gate they held the 10% share: Δ = 0.9 - 0.1 = 0.8)."""
    base = BaseState.make(1, {"w": torch.zeros(8)}, {"w": torch.zeros(8)}, _established())
    out = _flood_round(base, {"w": torch.ones(8)})
    assert torch.allclose(out.params["w"], torch.full((8,), -1.0), atol=1e-6)


def test_forty_newcomer_updates_that_lean_the_proven_way_move_the_base_at_most_the_share():
    """40 fresh keys sending a long update at 45 degrees to the proven one (cos 0.707): the direction
    gate scales their weight by 0.707, the share caps them together at 10% of the round, the norm
    cap shortens each to the proven update's length: Δ = 0.9 h + 0.1 v |h| / |v|."""
    from dai_swarm.optim.aggregate import NEWCOMER_SHARE

    base = BaseState.make(1, {"w": torch.zeros(8)}, {"w": torch.zeros(8)}, _established())
    v = torch.tensor([3.0, 1, 1, 1, 1, 1, 1, -1])  # |v| = 4, v · 1 = 8: cos = 8 / (4 * sqrt(8))
    out = _flood_round(base, {"w": torch.ones(8)}, flood=10.0 * v)
    # without the weight cap the 40 newcomers (0.1 each × 0.707) would hold 90 of 122 weight units;
    # without the norm cap each would count 10x too long
    expected = (1 - NEWCOMER_SHARE) * torch.ones(8) + NEWCOMER_SHARE * v * (8 ** 0.5 / 4.0)
    assert torch.allclose(out.params["w"], -expected, atol=1e-5)


def test_the_direction_gate_weighs_newcomers_by_their_agreement_with_the_proven_updates():
    """FLTrust's trust score with the proven updates as the reference: max(0, cos) scales each
    newcomer's weight; proven weights, a round with nobody proven (the bootstrap rule) or nobody
    new, and a zero reference are left alone."""
    from dai_swarm.optim.aggregate import gate_newcomer_directions

    proven = [{"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])},
              {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])}]
    aligned = {"w": torch.tensor([5.0, 0.0]), "b": torch.tensor([0.0])}
    flipped = {"w": torch.tensor([-1.0, 0.0]), "b": torch.tensor([0.0])}
    orthogonal = {"w": torch.tensor([0.0, 3.0]), "b": torch.tensor([0.0])}
    leaning = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}
    zero = {"w": torch.zeros(2), "b": torch.zeros(1)}
    ups = [*proven, aligned, flipped, orthogonal, leaning, zero]
    flags = [True, True, False, False, False, False, False]
    out = gate_newcomer_directions(ups, [2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0], flags)
    assert out[:5] == [2.0, 3.0, 1.0, 0.0, 0.0]
    assert out[5] == pytest.approx(2 ** -0.5, rel=1e-12) and out[6] == 0.0
    assert gate_newcomer_directions([flipped], [1.0], [False]) == [1.0]  # nobody proven: bootstrap
    assert gate_newcomer_directions(proven, [2.0, 3.0], [True, True]) == [2.0, 3.0]
    assert gate_newcomer_directions([zero, flipped], [1.0, 1.0], [True, False]) == [1.0, 1.0]
    assert gate_newcomer_directions(ups, [0.0] * 2 + [1.0] * 5, flags) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError):
        gate_newcomer_directions(ups, [1.0], flags)


def test_a_newcomer_update_counts_no_longer_than_the_longest_proven_one():
    """The flood run's lesson: on a loaded host the proven peers trained 1-2 steps while the flood
    sent sign-flipped copies of fully trained updates; the weight share alone let those move the
    base further than the honest updates. Newcomer updates are scaled to the longest proven one."""
    from dai_swarm.optim.aggregate import cap_newcomer_norms, sq_norm

    proven = [{"w": torch.full((4,), 0.5)}, {"w": torch.full((4,), 1.0)}]
    long_flip, short = {"w": torch.full((4,), -30.0)}, {"w": torch.full((4,), 0.25)}
    out = cap_newcomer_norms([*proven, long_flip, short], [True, True, False, False])
    assert out[0] is proven[0] and out[1] is proven[1] and out[3] is short  # within the bound: untouched
    assert sq_norm(out[2]) == pytest.approx(sq_norm(proven[1])) and torch.all(out[2]["w"] < 0)
    assert torch.equal(long_flip["w"], torch.full((4,), -30.0))  # the payload itself is not modified
    assert cap_newcomer_norms([long_flip], [False]) == [long_flip]  # nobody proven: the bootstrap rule
    with pytest.raises(ConfigError):
        cap_newcomer_norms([long_flip], [])


def test_a_flood_that_kept_every_proven_update_out_of_a_round_gets_no_weight():
    """Found by the Sybil-flood run: the honest peers' round-10 updates missed the base (the flood
    had overloaded them) and the 40 sign-flipped fresh-key updates were the whole round, so the
    newcomer cap (a share of the proven weight) did not apply and the val loss went 0.20 -> 5.84.
    Once a chain has included an update with standing, a round without one makes no step; a chain
    that never had one (a region nobody with standing reached) still steps (the bootstrap rule)."""
    from dai_swarm.optim.rules import PROVEN_ROUND

    base = BaseState.make(1, {"w": torch.zeros(8)}, {"w": torch.zeros(8)}, _established())
    first = _flood_round(base, {"w": torch.ones(8)})
    assert first.extra[PROVEN_ROUND] == 0  # round 0 included a standing update
    flooded = _flood_round(first, None)
    assert torch.equal(flooded.params["w"], first.params["w"])  # no step: the flood weighs nothing
    assert flooded.extra[PROVEN_ROUND] == 0
    bootstrap = _flood_round(base, None, flooders=2)  # never reached: newcomers train the region
    assert PROVEN_ROUND not in bootstrap.extra and torch.allclose(bootstrap.params["w"], torch.full((8,), 10.0))


def test_fifty_fresh_offers_never_make_a_peer_adopt_their_state_while_its_founder_is_unread():
    """Found by the Sybil-flood run: a loaded peer that had not read its founder's vote or record
    confirmed its new base against the state records it had, and the newcomer fallback let 50
    fresh keys' offers of a poisoned state outweigh it. State adoption uses standing only."""
    from dai_swarm.optim.votes import confirm_state

    me = _key("loaded honest peer")
    offers = [(k, EVIL) for k in SYBILS[:50]]
    decision = confirm_state(GOOD, me, offers, [me, *SYBILS[:50]], vote_weights(initial_extra([FOUNDER])))
    assert decision.action != "resync" and decision.target != EVIL
    # a joiner or re-sync weighing the same offers: no majority at all
    assert majority_state_hash(offers, state_weights(vote_weights(initial_extra([FOUNDER])))) is None or \
        majority_state_hash(offers, state_weights(vote_weights(initial_extra([FOUNDER])))).weight <= 0


def test_keys_without_standing_are_nobody_a_peer_waits_for():
    """Found by the Sybil-flood benchmark: 40 fresh keys announced updates and never voted, so every
    honest peer re-read a 1,000-record vote key for its whole vote patience each round, and 1,000
    fresh voters of another state forced a post-tally confirmation each round. Who a peer waits for
    (the electorate, the announcers whose votes it expects) is now those with standing."""
    from dai_swarm.optim.machine import KeepState, RoundMachine
    from dai_swarm.optim.votes import who_counts

    weights = vote_weights(_established())
    assert who_counts([FOUNDER, HONEST, NEWCOMER, *SYBILS[:40]], weights) == {FOUNDER, HONEST}
    # nobody with standing (a region no founder reached: the fallback decides) or a head-count swarm: all
    assert who_counts([NEWCOMER, *SYBILS[:3]], weights) == {NEWCOMER, *SYBILS[:3]}
    assert who_counts(SYBILS[:3], HeadCount()) == set(SYBILS[:3])
    m = RoundMachine(RoundClock(time.time(), 4.0), 0)
    kept = KeepState(5, GOOD, True, False)
    votes = {FOUNDER: GOOD, HONEST: GOOD, **{k: EVIL for k in SYBILS}}
    assert m.must_confirm(5, kept, {FOUNDER, HONEST, *SYBILS}, votes, FOUNDER)  # before: every flooded round
    assert not m.must_confirm(5, kept, who_counts({FOUNDER, HONEST, *SYBILS}, weights), votes, FOUNDER)
    assert m.must_confirm(5, kept, who_counts({FOUNDER, HONEST, *SYBILS}, weights), {FOUNDER: GOOD}, FOUNDER)


def test_a_peer_reads_only_the_votes_that_can_count():
    """Votes live under one DHT key per signer; a peer reads the keys with standing that are not
    known to be in another region (and its own), so a flood of fresh voters costs it no lookup.
    Where nobody live here holds standing (a region's bootstrap window) or the swarm counts heads,
    it reads every key live here."""
    from dai_swarm.optim.votes import vote_readers

    weights = vote_weights(_established())  # FOUNDER and HONEST hold standing
    live = {FOUNDER, HONEST, NEWCOMER, *SYBILS[:40]}
    assert vote_readers(weights, live, (), NEWCOMER) == {FOUNDER, HONEST, NEWCOMER}
    # a standing key known in another region is not looked up; one whose region is unknown is
    assert vote_readers(weights, live, {HONEST}, FOUNDER) == {FOUNDER}
    assert vote_readers(weights, {FOUNDER}, (), FOUNDER) == {FOUNDER, HONEST}
    # a region where nobody live holds standing: everyone live here (plus standing keys not placed elsewhere)
    assert vote_readers(weights, {NEWCOMER, *SYBILS[:3]}, {FOUNDER, HONEST}, NEWCOMER) == {NEWCOMER, *SYBILS[:3]}
    assert vote_readers(HeadCount(), SYBILS[:3], (), NEWCOMER) == {NEWCOMER, *SYBILS[:3]}
    # a thousand fresh voters never join the set read
    assert vote_readers(weights, live | set(SYBILS), (), FOUNDER) == {FOUNDER, HONEST}
