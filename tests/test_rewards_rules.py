"""Reward rules: exact integer split, pro rata to samples x reputation, verifier share, slashing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dai_swarm.errors import LedgerError
from dai_swarm.rewards.rules import Contributor, compute_round_record, split_pro_rata

H = "ab" * 32


def _by_peer(rows, key):
    return {r["peer"]: r[key] for r in rows}


def test_pro_rata_to_samples_times_reputation():
    body = compute_round_record(
        7, [Contributor("a", 100, 1.0), Contributor("b", 300, 1.0), Contributor("c", 100, 0.5)], {}, [], H,
        emission=900_000)
    rewards = _by_peer(body["contributors"], "reward")
    assert rewards == {"a": 200_000, "b": 600_000, "c": 100_000}
    assert body["unallocated"] == 0 and body["verifiers"] == []


def test_verifier_share_split_by_verifications():
    body = compute_round_record(1, [Contributor("a", 10, 1.0)], {"v1": 3, "v2": 1}, [], H, emission=1_000_000)
    assert _by_peer(body["verifiers"], "credit") == {"v1": 75_000, "v2": 25_000}
    assert _by_peer(body["contributors"], "reward") == {"a": 900_000}


def test_slashed_peers_forfeit_the_round():
    body = compute_round_record(
        2, [Contributor("a", 10, 1.0), Contributor("bad", 10, 1.0)], {"bad": 5, "v": 1}, ["bad"], H, emission=1000)
    assert [r["peer"] for r in body["contributors"]] == ["a"]
    assert [v["peer"] for v in body["verifiers"]] == ["v"]
    assert body["slashed"] == ["bad"]
    assert body["contributors"][0]["reward"] + body["verifiers"][0]["credit"] == 1000


def test_largest_remainder_with_peer_id_tie_break():
    assert split_pro_rata(10, {"b": 1, "a": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert split_pro_rata(0, {"a": 1}) == {"a": 0}
    assert split_pro_rata(5, {"a": 0}) == {"a": 0}


def test_no_eligible_contributor_leaves_pool_unallocated():
    body = compute_round_record(3, [Contributor("a", 0, 1.0)], {"v": 2}, [], H, emission=1000)
    assert body["verifiers"][0]["credit"] == 100 and body["unallocated"] == 900


def test_order_of_inputs_does_not_matter():
    cs = [Contributor(f"p{i}", 10 + i, (i % 7) / 7, region=f"r{i % 3}") for i in range(20)]
    ver = {f"p{i}": i % 4 for i in range(20)}
    a = compute_round_record(9, cs, ver, ["p3", "p5"], H)
    shuffled = cs[:]
    random.Random(0).shuffle(shuffled)
    b = compute_round_record(9, shuffled, dict(reversed(list(ver.items()))), ["p5", "p3"], H)
    assert a == b


@pytest.mark.parametrize("kwargs", [
    dict(round_no=-1), dict(state_hash="xyz"), dict(emission=-5), dict(verifier_share_ppm=2_000_000),
    dict(contributors=[Contributor("a", -1, 1.0)]), dict(contributors=[Contributor("a", 1, 1.5)]),
    dict(contributors=[Contributor("a", 1, 1.0), Contributor("a", 2, 1.0)]), dict(verifications={"v": -1}),
    dict(slashed=[""]),
])
def test_invalid_inputs_raise(kwargs):
    args = dict(round_no=1, contributors=[Contributor("a", 1, 1.0)], verifications={}, slashed=[], state_hash=H)
    args.update(kwargs)
    with pytest.raises(LedgerError):
        compute_round_record(**args)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(0, 1)), min_size=0, max_size=12),
    st.lists(st.integers(0, 50), max_size=6),
    st.integers(0, 10**12),
    st.integers(0, 10**6),
    st.sets(st.integers(0, 11)),
)
def test_payouts_are_exact_and_non_negative(contribs, ver, emission, share, slashed_idx):
    cs = [Contributor(f"p{i}", s, r) for i, (s, r) in enumerate(contribs)]
    vs = {f"p{i}": n for i, n in enumerate(ver)}
    body = compute_round_record(1, cs, vs, [f"p{i}" for i in slashed_idx], H, emission=emission,
                                verifier_share_ppm=share)
    paid = sum(r["reward"] for r in body["contributors"]) + sum(v["credit"] for v in body["verifiers"])
    assert paid + body["unallocated"] == emission
    assert all(r["reward"] >= 0 for r in body["contributors"]) and body["unallocated"] >= 0
    assert not set(body["slashed"]) & {r["peer"] for r in body["contributors"]}
