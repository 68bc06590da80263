"""Sparse updates with error feedback in the protocol: the author's buffer chain and stored blobs
(optim/feedback_chain.py), the announcement's ``ef`` on the wire and in the book, and the
verifier's check over range fetches (verification/sparse_verify.py). In-memory stores stand in
for the payload protocol here; tests/test_sparse_swarm_integration.py runs real peers."""

from __future__ import annotations

import random

import pytest
import torch

from dai_swarm.dht.wire import UpdateBody
from dai_swarm.errors import MalformedRecord, PayloadNotFound, PeerUnreachable, Unprovable
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.exchange import PayloadStore
from dai_swarm.optim.feedback_chain import FeedbackAuthor, buffer_blob, zero_root
from dai_swarm.verification.attacks import make_attack
from dai_swarm.verification.sparse_verify import check_sparse_update

PARAMS = {"chunk": 1024, "k": 16}  # 9 chunks: every sample of 8 is most of the buffer


def _like():
    g = torch.Generator().manual_seed(0)
    return {"a.w": torch.randn(64, 96, generator=g), "b": torch.randn(300, generator=g)}


def _deltas(rounds: int):
    g = torch.Generator().manual_seed(1)
    return [{n: 1e-2 * torch.randn(t.shape, generator=g) for n, t in _like().items()} for _ in range(rounds)]


def _run(author: FeedbackAuthor, store: PayloadStore, deltas, first: int = 0, tamper=None):
    out = []
    for i, d in enumerate(deltas):
        blob, ef, blobs = author.step(first + i, d, tamper)
        for digest, b in blobs:
            store.put(b, first + i, digest)
        out.append((blob, ef))
    return out


def _fetch(store: PayloadStore):
    def fetch(digest, offset, length):
        data = store.get(digest)
        if data is None:
            raise PayloadNotFound(digest[:12])
        return data[offset:offset + length]
    return fetch


def _sent(blob):
    from dai_swarm.optim import codecs

    return codecs.decode(blob)


def test_honest_chain_passes_every_check_and_commits_what_it_stores():
    store, author, deltas = PayloadStore(), FeedbackAuthor(_like(), PARAMS), _deltas(4)
    steps = _run(author, store, deltas)
    assert steps[0][1].pre == zero_root(_like(), **PARAMS) and steps[0][1].pre_blob == ""
    for r, ((blob, ef), d) in enumerate(zip(steps, deltas)):
        if r:  # the chain: this round's pre-round buffer is the last round's post-round buffer
            assert ef.pre == steps[r - 1][1].post and ef.pre_blob == steps[r - 1][1].post_blob
        previous = steps[r - 1][1].post if r else None
        distance, reason = check_sparse_update(d, _sent(blob), ef, _fetch(store), PARAMS, previous_post=previous,
                                               rng=random.Random(r))
        assert reason == "" and distance < 1e-6, (r, reason, distance)
    assert buffer_blob(author.buffer, **PARAMS)[0] == steps[-1][1].post


def test_a_skipped_round_restarts_the_buffer_from_zeros():
    store, author = PayloadStore(), FeedbackAuthor(_like(), PARAMS)
    _run(author, store, _deltas(2))
    (_, ef), = _run(author, store, _deltas(1), first=5)
    assert ef.pre == author.zero_root and ef.pre_blob == "" and author.resets == 1


@pytest.mark.parametrize("kind", ["forged_feedback", "shifted_feedback"])
def test_a_falsified_buffer_fails_the_check(kind):
    store, author, deltas = PayloadStore(), FeedbackAuthor(_like(), PARAMS), _deltas(3)
    steps = _run(author, store, deltas, tamper=make_attack(kind).tamper_feedback)
    for r in (1, 2):  # (round 0 of shifted_feedback: its lie is in the post buffer, checked there)
        distance, reason = check_sparse_update(deltas[r], _sent(steps[r][0]), steps[r][1], _fetch(store), PARAMS,
                                               previous_post=steps[r - 1][1].post, rng=random.Random(r))
        assert reason, (kind, r, distance)


def test_a_broken_chain_a_bad_table_and_a_withheld_blob_fail_and_an_absent_author_gives_no_verdict():
    store, author, deltas = PayloadStore(), FeedbackAuthor(_like(), PARAMS), _deltas(2)
    (_, ef0), (blob, ef) = _run(author, store, deltas)
    sent = _sent(blob)
    _, reason = check_sparse_update(deltas[1], sent, ef, _fetch(store), PARAMS, previous_post="0" * 64)
    assert "previous round" in reason
    lying = PayloadStore()  # a blob whose leaf table does not hash to the committed root
    for digest in (ef.pre_blob, ef.post_blob):
        raw = bytearray(store.get(digest))
        raw[5] ^= 1
        lying._items[digest] = (1, bytes(raw))
    _, reason = check_sparse_update(deltas[1], sent, ef, _fetch(lying), PARAMS, previous_post=ef0.post)
    assert "does not match its commitment" in reason
    _, reason = check_sparse_update(deltas[1], sent, ef, _fetch(PayloadStore()), PARAMS)
    assert reason == "committed buffer withheld"

    def gone(*_):
        raise PeerUnreachable("left")
    with pytest.raises(Unprovable):
        check_sparse_update(deltas[1], sent, ef, gone, PARAMS)
    assert check_sparse_update(deltas[1], sent, None, gone, PARAMS)[1] == "no feedback commitment"


def test_top_k_of_another_update_fails():
    store, author, deltas = PayloadStore(), FeedbackAuthor(_like(), PARAMS), _deltas(2)
    (blob, ef), = _run(author, store, deltas[:1])
    _, reason = check_sparse_update(deltas[1], _sent(blob), ef, _fetch(store), PARAMS)
    assert reason


def _ann(**kw):
    base = dict(run_id="run", round=3, base_hash="a" * 64, peer="b" * 64, steps=2, samples=8, codec="sparse",
                digest="c" * 64, size_bytes=100)
    base.update(kw)
    return base


def test_the_commitment_on_the_wire_and_in_the_book():
    ef = {"pre": "1" * 64, "post": "2" * 64, "pre_blob": "", "post_blob": "3" * 64}
    assert UpdateBody.model_validate(_ann(ef=ef)).body()["ef"] == ef
    for bad in ({**ef, "post": "xyz"}, {**ef, "pre_blob": "4" * 10}, {**ef, "extra": 1}):
        with pytest.raises(Exception):
            UpdateBody.model_validate(_ann(ef=bad))
    book = RoundBook("run", 3, "a" * 64, limits=BookLimits(max_inner_steps=5, batch_size=4, max_payload_bytes=1 << 20,
                                                           codecs=frozenset(["sparse"])))
    from dai_swarm.optim.feedback_chain import FeedbackCommit

    refused = book.offer(UpdateAnnouncement(**_ann()))
    taken = book.offer(UpdateAnnouncement(**_ann(peer="d" * 64, digest="e" * 64), ef=FeedbackCommit(**ef)))
    assert type(refused).__name__ == "Rejected" and refused.reason == "no_feedback_commit"
    assert type(taken).__name__ == "Accepted"
    with pytest.raises(MalformedRecord):
        UpdateAnnouncement(**_ann(steps=-1))


def test_an_exact_recomputation_proves_the_post_buffer_from_its_leaf_table_alone():
    store, author, deltas = PayloadStore(), FeedbackAuthor(_like(), PARAMS), _deltas(2)
    steps = _run(author, store, deltas)
    fetched = []

    def counting(digest, offset, length):
        fetched.append((digest, offset, length))
        return _fetch(store)(digest, offset, length)

    blob, ef = steps[1]
    _, reason = check_sparse_update(deltas[1], _sent(blob), ef, counting, PARAMS, rng=random.Random(0), count=3)
    post_ranges = [f for f in fetched if f[0] == ef.post_blob]
    assert reason == "" and len(post_ranges) == 1 and post_ranges[0][1] == 0  # the table only
    assert len([f for f in fetched if f[0] == ef.pre_blob]) == 1 + 3  # table + the 3 sampled chunks
    fetched.clear()  # a recomputation that differs (another thread count, here a nudge) fetches the chunks
    nudged = {n: t + 1e-7 for n, t in deltas[1].items()}
    _, reason = check_sparse_update(nudged, _sent(blob), ef, counting, PARAMS, rng=random.Random(0), count=3)
    assert reason == "" and len([f for f in fetched if f[0] == ef.post_blob]) == 1 + 3
