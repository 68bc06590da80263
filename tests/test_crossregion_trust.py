"""Cross-region trust (finding "fake region in a cross-region merge"): which region deltas count,
how much they weigh, and the whole merge with fakes for the DHT and the network. Fast, no I/O."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch

from dai_swarm.canonical import state_hash
from dai_swarm.optim import codecs
from dai_swarm.optim.crossregion import (CrossRegionMerger, admit_region_deltas, merge_region_deltas, region_delta,
                                         weight_cap)
from dai_swarm.optim.exchange import PayloadStore
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.schedule import ScheduleRule, schedule_of
from dai_swarm.optim.states import BaseState
from dai_swarm.optim.votes import HeadCount, standing_keys
from dai_swarm.verification.reputation import initial_extra, vote_weights
from fakes import run_config

ANCHOR = {"w": torch.zeros(4)}
TAG = f"{1:08d}:{state_hash(ANCHOR)}"
K, STEPS, BS = 3, 20, 8
PER_MEMBER = weight_cap(1, STEPS, BS, K)


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _body(region: str, digest: str, samples: int, anchor: str = TAG, size: int = 100) -> dict:
    return {"region": region, "digest": digest, "size": size, "samples": samples, "p2p_id": "ignored", "anchor": anchor}


def _admit(records, members, mine="r0", **kw):
    return admit_region_deltas(records, members, mine, max_payload_bytes=1 << 20, per_member_cap=PER_MEMBER, **kw)


HONEST_R1 = _key("delta of r1")
EVIL = _key("anchor - theta_target")


def test_fresh_key_fake_region_refused_in_single_region_swarm():
    members = {_key("a"): ("r0", "pa"), _key("b"): ("r0", "pb")}
    records = [(_key("a"), _body("r0", _key("mine"), 100)), (_key("b"), _body("r0", _key("mine"), 100)),
               (_key("fresh"), _body("zz", EVIL, 10**12))]
    adm = _admit(records, members)
    assert adm.regions == {} and adm.refused == {"xdelta_not_member": 1}
    assert adm.mates == ["pa", "pb"]


def test_fresh_key_refused_in_two_region_swarm_and_cannot_speak_for_a_real_region():
    members = {_key("a"): ("r0", "pa"), _key("b1"): ("r1", "pb1"), _key("b2"): ("r1", "pb2")}
    records = [(_key("b1"), _body("r1", HONEST_R1, 640)), (_key("b2"), _body("r1", HONEST_R1, 640)),
               (_key("fresh"), _body("zz", EVIL, 10**12)), (_key("fresh2"), _body("r1", EVIL, 10**12)),
               (_key("a"), _body("r1", EVIL, 10**12))]  # a member of r0 claiming to speak for r1
    adm = _admit(records, members)
    assert list(adm.regions) == ["r1"]
    d = adm.regions["r1"]
    assert (d.digest, d.claimed, d.weight, d.votes, d.members, d.providers) == (HONEST_R1, 640, 640.0, 2, 2,
                                                                              ("pb1", "pb2"))
    assert adm.refused == {"xdelta_not_member": 2, "xdelta_wrong_region": 1}


def test_one_member_cannot_speak_for_a_region_of_many():
    members = {_key(f"b{i}"): ("r1", f"p{i}") for i in range(4)}
    # the attacker holds one live member record of four; the others have not published yet:
    # the region is withheld and read again
    adm = _admit([(_key("b0"), _body("r1", EVIL, 10**12))], members, final=False)
    assert adm.regions == {} and adm.refused == {} and adm.short == {"r1"}
    # one honest against one attacker: no strict majority of the publishers
    one = [(_key("b1"), _body("r1", HONEST_R1, 100))]
    adm = _admit([(_key("b0"), _body("r1", EVIL, 10**12)), *one], members)
    assert adm.regions == {} and adm.refused == {"xdelta_no_majority": 1}
    # two honest against one attacker: the publishers' majority is honest, even with a fourth
    # member that never publishes (it died; its peer record is still live)
    honest = [(_key(f"b{i}"), _body("r1", HONEST_R1, 100)) for i in (1, 2)]
    adm = _admit([(_key("b0"), _body("r1", EVIL, 10**12)), *honest], members, final=False)
    assert adm.short == {"r1"} and adm.regions == {}
    assert _admit([(_key("b0"), _body("r1", EVIL, 10**12)), *honest], members).regions["r1"].digest == HONEST_R1


def test_weight_is_the_claim_bounded_by_what_live_members_could_train():
    members = {_key("b1"): ("r1", "p1"), _key("b2"): ("r1", "p2")}
    records = [(k, _body("r1", EVIL, 10**12)) for k in members]
    adm = _admit(records, members)
    assert adm.regions["r1"].weight == 2 * STEPS * BS * (K + 1) and adm.refused == {"xdelta_capped": 1}


def test_malformed_and_future_anchor_records_are_refused():
    members = {_key("b1"): ("r1", "p1")}
    bad = [(_key("b1"), {"region": "r1"}), (_key("x"), _body("r1", "nothex", 1)),
           (_key("y"), _body("r1", HONEST_R1, -5)), (_key("z"), _body("r1", HONEST_R1, 5, anchor="zz")),
           (_key("w"), _body("r1", HONEST_R1, 5, size=2 << 20))]
    assert _admit(bad, members).refused == {"xdelta_malformed": 5}
    future = f"{9:08d}:{state_hash(ANCHOR)}"
    adm = _admit([(_key("b1"), _body("r1", HONEST_R1, 5, anchor=future))], members, max_merges=2)
    assert adm.regions == {} and adm.refused == {"xdelta_future_anchor": 1}


def test_merge_region_deltas_weights():
    a = {"w": torch.ones(4)}
    merged = merge_region_deltas(ANCHOR, [("aa", 1.0, a), ("bb", 3.0, {"w": torch.full((4,), 5.0)})])
    assert torch.equal(merged["w"], torch.full((4,), -4.0))  # anchor − (1·1 + 3·5)/4
    assert merge_region_deltas(ANCHOR, []) is None
    for w in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            merge_region_deltas(ANCHOR, [("aa", w, a)])


# --- the whole merge, with a fake DHT and network -----------------------------------------------------------


FOUNDERS = (_key("me"), _key("b1"))  # one founder per region: both regions hold standing


def _state(params: torch.Tensor, samples: int) -> BaseState:
    extra = {**initial_extra(FOUNDERS), "epoch_samples": samples, "merges": 1}
    return BaseState.make(5, {"w": params}, {"w": torch.zeros(4)}, extra, anchor=ANCHOR)


def _merge(my_state, peers, others, rule=None):
    """Run CrossRegionMerger.merge for peer "me" of region r0. ``peers``: (key, region, p2p id) of live
    peer records; ``others``: (signer, body, blob or None) xdelta records of other keys; ``rule``: the
    run's adaptive round rule (None: fixed rounds)."""
    net = {b["digest"]: blob for _, b, blob in others if blob is not None}
    dht = SimpleNamespace(
        publish_round_record=lambda *a, **k: True,
        get_round_records=lambda run, kind, r: [SimpleNamespace(signer=s, body=b) for s, b, _ in others],
        peer_records=lambda run: [SimpleNamespace(signer=k, record=SimpleNamespace(region=g, peer_id=p))
                                  for k, g, p in peers])
    ctx = SimpleNamespace(codec="none", codec_params={}, store=PayloadStore(), dht=dht, region="r0", p2p_id="pme",
                          identity=SimpleNamespace(public_key_hex=_key("me")), run_id="run", counters={},
                          clock=SimpleNamespace(tally_time=lambda q: 0.0, round_s=1.0), cross_region_period=K,
                          max_payload_bytes=1 << 20, max_decoded_bytes=1 << 20, max_inner_steps=STEPS, batch_size=BS,
                          verifier=SimpleNamespace(vote_weights=vote_weights), schedule_rule=rule)
    cfg = run_config(codec="none", cross_region_period=K, max_payload_bytes=1 << 20, max_decoded_bytes=1 << 20,
                     max_inner_steps=STEPS, batch_size=BS)
    merger = CrossRegionMerger(SimpleNamespace(ctx=ctx, cfg=cfg, foreign_source={}))
    fetched = []
    merger._fetch = lambda r, chosen, providers, gw, deadline: {
        d: codecs.decode(net[d]) for d, _, _ in chosen.values() if d in net and not fetched.append(d)}
    return merger.merge(4, my_state), ctx.counters, fetched


def _xdelta(state: BaseState, region: str, samples: int):
    blob = codecs.encode(region_delta(state), "none")
    return _body(region, hashlib.sha256(blob).hexdigest(), samples, size=len(blob)), blob


def _attack(target: torch.Tensor, region: str = "zz"):
    """The reported attack: delta = anchor − θ_target, claimed samples 10^12, from a fresh key."""
    blob = codecs.encode({"w": ANCHOR["w"] - target}, "none")
    return _key("fresh"), _body(region, hashlib.sha256(blob).hexdigest(), 10**12, size=len(blob)), blob


def test_merge_single_region_swarm_ignores_a_fake_region():
    mine = _state(torch.full((4,), 0.5), samples=320)
    out, counters, fetched = _merge(mine, [(_key("me"), "r0", "pme")], [_attack(torch.full((4,), 1e3))])
    assert torch.equal(out.params["w"], mine.params["w"]) and fetched == []
    assert out.extra["merges"] == 2 and counters == {"xdelta_not_member": 1}
    # the same attack from a key with a live peer record in its made-up region: no standing, no merge
    fresh = _attack(torch.full((4,), 1e3))
    out, counters, fetched = _merge(mine, [(_key("me"), "r0", "pme"), (fresh[0], "zz", "pz")], [fresh])
    assert torch.equal(out.params["w"], mine.params["w"]) and fetched == []
    assert counters == {"xdelta_no_standing": 1}


def test_merge_two_regions_counts_only_the_real_region():
    mine = _state(torch.full((4,), 0.5), samples=320)
    theirs = _state(torch.full((4,), -0.5), samples=480)
    body, blob = _xdelta(theirs, "r1", 480)
    peers = [(_key("me"), "r0", "pme"), (_key("b1"), "r1", "pb1")]
    others = [(_key("b1"), body, blob), _attack(torch.full((4,), 1e3)), _attack(torch.full((4,), 1e3), "r1")]
    others[2] = (_key("fresh2"), *others[2][1:])
    out, counters, fetched = _merge(mine, peers, others)
    expected = (320 * 0.5 + 480 * -0.5) / 800  # the samples-weighted mean of the two real regions
    assert torch.allclose(out.params["w"], torch.full((4,), expected)) and fetched == [body["digest"]]
    assert counters == {"xdelta_not_member": 2}
    # the same real region claiming 10^12 samples weighs at most what one member could train
    body_big = dict(body, samples=10**12)
    out, counters, _ = _merge(mine, peers, [(_key("b1"), body_big, blob)])
    cap = weight_cap(1, STEPS, BS, K)
    assert torch.allclose(out.params["w"], torch.full((4,), (320 * 0.5 - cap * 0.5) / (320 + cap)))
    assert counters == {"xdelta_capped": 1}


def test_fresh_members_of_a_real_region_cannot_outvote_its_standing_member():
    """Finding 1 with peer records: 40 fresh keys join r1 and zz and publish a poisoned delta; only
    the founder of r1 speaks for r1, and zz has nobody with standing."""
    mine = _state(torch.full((4,), 0.5), samples=320)
    theirs = _state(torch.full((4,), -0.5), samples=480)
    body, blob = _xdelta(theirs, "r1", 480)
    evil = _attack(torch.full((4,), 1e3), "r1")
    fake = [(_key(f"sybil{i}"), ("r1", "zz")[i % 2], f"ps{i}") for i in range(40)]
    peers = [(_key("me"), "r0", "pme"), (_key("b1"), "r1", "pb1"), *fake]
    others = [(_key("b1"), body, blob), *[(k, dict(evil[1], region=g), evil[2]) for k, g, _ in fake]]
    out, counters, fetched = _merge(mine, peers, others)
    assert torch.allclose(out.params["w"], torch.full((4,), (320 * 0.5 + 480 * -0.5) / 800))
    assert fetched == [body["digest"]] and counters == {"xdelta_no_standing": 40}


def test_admission_without_standing_is_the_swarm_that_trusts_its_members():
    """``standing=None`` (no verification: HeadCount weights) keeps the membership rules only;
    with standing, fresh members' records are refused and do not delay the read."""
    members = {_key("a"): ("r0", "pa"), _key("b1"): ("r1", "pb1"), _key("f"): ("r1", "pf")}
    records = [(_key("b1"), _body("r1", HONEST_R1, 640)), (_key("f"), _body("r1", EVIL, 640))]
    assert "r1" not in _admit(records, members).regions  # 1 of 2: no strict majority by head count
    adm = _admit(records, members, standing={_key("a"), _key("b1")})
    assert adm.regions["r1"].digest == HONEST_R1 and adm.refused == {"xdelta_no_standing": 1}
    assert not _admit(records[:1], members, standing={_key("a"), _key("b1")}, final=False).short
    assert standing_keys(HeadCount()) is None
    assert standing_keys(vote_weights(initial_extra(FOUNDERS))) == frozenset(FOUNDERS)


def test_a_regions_weight_is_the_same_whoever_reads_it():
    """The cap counts the record's backers, not the reader's view of who is live: a dead member whose
    peer record has not expired yet in one reader's view changed that reader's cap, the regions then
    merged with different weights and their states forked (seen after a SIGKILL, healed a merge later)."""
    records = [(_key(f"b{i}"), _body("r1", HONEST_R1, 10**6)) for i in (1, 2)]
    live = {_key(f"b{i}"): ("r1", f"p{i}") for i in (1, 2)}
    with_dead = {**live, _key("b3"): ("r1", "p3")}  # b3 was SIGKILLed; its record lives until its TTL
    weights = {_admit(records, view).regions["r1"].weight for view in (live, with_dead)}
    assert weights == {2.0 * PER_MEMBER}
    # our own region's delta: weighed by its backers too, so a dead mate in our view changes nothing
    mine = _state(torch.full((4,), 0.5), samples=10**6)
    theirs = _state(torch.full((4,), -0.5), samples=480)
    body, blob = _xdelta(theirs, "r1", 480)
    mate = (_key("m2"), _xdelta(mine, "r0", 10**6)[0], None)
    peers = [(_key("me"), "r0", "pme"), (_key("m2"), "r0", "pm2"), (_key("b1"), "r1", "pb1")]
    outs = [_merge(mine, peers + extra, [(_key("b1"), body, blob), mate])[0].params["w"]
            for extra in ([], [(_key("m3"), "r0", "pm3")])]
    own = 2 * PER_MEMBER  # me and m2 published our delta; m3 did not
    assert torch.equal(outs[0], outs[1])
    assert torch.allclose(outs[0], torch.full((4,), (own * 0.5 - 480 * 0.5) / (own + 480)))


def test_a_region_none_of_whose_members_published_yet_is_read_again_until_the_final_read():
    """A late region (its tally ran late under load) is withheld and read again instead of being
    left out of the merge at the first read; the final read merges without it. Fresh keys that
    never earned standing do not make a region worth waiting for."""
    members = {_key("a"): ("r0", "pa"), _key("b1"): ("r1", "pb1"), _key("b2"): ("r1", "pb2"),
               _key("f"): ("zz", "pf")}
    mine = [(_key("a"), _body("r0", _key("mine"), 100))]
    standing = {_key("a"), _key("b1"), _key("b2")}
    early = _admit(mine, members, final=False, standing=standing)
    assert early.short == {"r1"} and early.regions == {}
    assert _admit(mine, members, final=True, standing=standing).short == set()
    late = [*mine, (_key("b1"), _body("r1", HONEST_R1, 640)), (_key("b2"), _body("r1", HONEST_R1, 640))]
    assert _admit(late, members, final=False, standing=standing).regions["r1"].digest == HONEST_R1


def test_merged_regions_run_one_clock_from_the_round_after_the_merge():
    """Adaptive rounds across regions: each region's xdelta carries its schedule and the length it asked
    for; both regions compute the same schedule from the merge on, whichever of them computes it."""
    rule = ScheduleRule(RoundClock(1_000.0, 6.0), 6.0, 60.0)
    rule.multi_region = True
    peers = [(_key("me"), "r0", "pme"), (_key("b1"), "r1", "pb1")]
    mine = _state(torch.full((4,), 0.5), samples=320)
    mine = BaseState.make(5, mine.params, mine.momentum, rule.settle(mine.extra, dict(mine.extra), 2, [(1.0, 9.0)]),
                          anchor=ANCHOR)
    theirs = _state(torch.full((4,), -0.5), samples=480)
    theirs = BaseState.make(5, theirs.params, theirs.momentum,
                            rule.settle(theirs.extra, dict(theirs.extra), 2, [(1.0, 15.0)]), anchor=ANCHOR)
    outs = []
    for me, other in ((mine, theirs), (theirs, mine)):
        body, blob = _xdelta(other, "r1", int(other.extra["epoch_samples"]))
        body["schedule"] = rule.published(other.extra)
        out, counters, fetched = _merge(me, peers, [(_key("b1"), body, blob)], rule=rule)
        assert fetched == [body["digest"]] and counters == {} and out.extra["xregions"] == 2
        outs.append(schedule_of(out.extra))
    assert outs[0].round_s == 15.0 and outs[0].since == 7 and outs[0].want is None
    assert (outs[0].since, outs[0].start, outs[0].round_s) == (outs[1].since, outs[1].start, outs[1].round_s)
    # the schedule is part of what a region's publishers must agree on: two standing members of r1
    # publishing the same delta with different schedules make no majority
    body, _ = _xdelta(theirs, "r1", 480)
    honest, lie = rule.published(theirs.extra), dict(rule.published(theirs.extra), want=60.0)
    members = {_key("b1"): ("r1", "pb1"), _key("b2"): ("r1", "pb2"), _key("me"): ("r0", "pme")}
    adm = _admit([(_key("b1"), dict(body, schedule=honest)), (_key("b2"), dict(body, schedule=lie))], members,
                 standing={_key("b1"), _key("b2"), _key("me")})
    assert adm.regions == {} and adm.refused == {"xdelta_no_majority": 1}
    adm = _admit([(_key("b1"), dict(body, schedule=honest)), (_key("b2"), dict(body, schedule=honest))], members,
                 standing={_key("b1"), _key("b2"), _key("me")})
    assert adm.regions["r1"].schedule == (0, 1_000.0, 6.0, 15.0)


def test_a_region_without_standing_follows_the_clock_the_established_region_keeps_alone():
    """Region r0 holds no standing (its key is no founder): r1 never admits its record and, seeing no
    other region with standing, applies its own ask alone; r0 admits r1 and must land on that clock."""
    rule = ScheduleRule(RoundClock(1_000.0, 6.0), 6.0, 60.0)
    rule.multi_region = True
    extra = {**initial_extra((_key("b1"),)), "epoch_samples": 320, "merges": 1}
    mine = BaseState.make(5, {"w": torch.full((4,), 0.5)}, {"w": torch.zeros(4)},
                          rule.settle(extra, dict(extra), 2, [(1.0, 30.0)]), anchor=ANCHOR)  # r0 asks 30 s
    theirs = _state(torch.full((4,), -0.5), samples=480)
    theirs = BaseState.make(5, theirs.params, theirs.momentum,
                            rule.settle(theirs.extra, dict(theirs.extra), 2, [(1.0, 12.0)]), anchor=ANCHOR)
    body, blob = _xdelta(theirs, "r1", 480)
    body["schedule"] = rule.published(theirs.extra)
    peers = [(_key("me"), "r0", "pme"), (_key("b1"), "r1", "pb1")]
    out, _, _ = _merge(mine, peers, [(_key("b1"), body, blob)], rule=rule)
    alone = schedule_of(rule.at_merge(theirs.extra, 6, [], alone=True))  # merge(4, ...): round 6
    got = schedule_of(out.extra)
    assert (got.since, got.start, got.round_s) == (alone.since, alone.start, alone.round_s) == (7, 1_042.0, 12.0)
