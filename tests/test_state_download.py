"""Verified chunked state downloads and the payload server's limits (issue "No number of free keys
may choose, freeze or fork the model", findings 4 and 6).

In-memory donors (a fake ``fetch_payload``) check every rule of :func:`fetch_chunked` in
milliseconds; one real hivemind P2P test (marked ``integration``) runs a liar among honest donors
and 300 requests for unknown digests against real payload servers.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import time

import pytest
import torch

from dai_swarm.errors import DigestMismatch, PayloadNotFound, PayloadTooLarge, PeerUnreachable, ProtocolError
from dai_swarm.optim import download
from dai_swarm.optim.download import (
    MAX_CHUNKS,
    StateOffer,
    chunk_size_for,
    fetch_chunked,
    parse_state_offer,
    pick_download,
    state_record,
)
from dai_swarm.optim import exchange
from dai_swarm.optim.exchange import STATUS_NOT_FOUND, PayloadServer, PayloadStore, Traffic, fetch_when_ready

MIB = 1 << 20
CH = 64 << 10  # chunk size of the in-memory tests (the real minimum is 1 MiB)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk the in-memory tests' blobs by 64 KiB so that they hash little."""
    monkeypatch.setattr(download, "BASE_CHUNK_BYTES", CH)


def _blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class FakeNet:
    """Donors by name: each serves a dict digest -> bytes; ``requests`` logs (donor, digest, offset)."""

    def __init__(self, holdings: dict[str, dict[str, bytes]], dead: set[str] = frozenset()):
        self.holdings, self.dead, self.requests = holdings, set(dead), []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}

    async def fetch_payload(self, p2p, peer_id, run_id, digest, *, max_bytes, timeout_s, offset=0, length=0,
                            traffic=None, link="intra", verify=True):
        self.requests.append((peer_id, digest, offset))
        self.in_flight[peer_id] = self.in_flight.get(peer_id, 0) + 1
        self.max_in_flight[peer_id] = max(self.max_in_flight.get(peer_id, 0), self.in_flight[peer_id])
        try:
            await asyncio.sleep(0.001)
            if peer_id in self.dead:
                raise PeerUnreachable(f"{peer_id} is gone")
            data = self.holdings[peer_id].get(digest)
            if data is None:
                raise PayloadNotFound(f"{peer_id} does not hold {digest[:12]}")
            if len(data) > max_bytes:
                raise PayloadTooLarge("too large")
            out = data[offset:] if length == 0 else data[offset:offset + length]
            if verify and offset == 0 and length == 0 and hashlib.sha256(out).hexdigest() != digest:
                raise DigestMismatch("bad")
            return out
        finally:
            self.in_flight[peer_id] -= 1


def _setup(blob: bytes, donors: list[str], liars: dict[str, int] | None = None, list_liars: set[str] = frozenset()):
    """Holdings where ``liars[name] = chunk index`` flips one byte of that chunk."""
    body, hashes = state_record("5" * 64, blob, "p")
    offer = parse_state_offer("signer", body)
    holdings = {}
    for d in donors:
        data = bytearray(blob)
        if d in (liars or {}):
            data[liars[d] * offer.chunk_bytes + 7] ^= 1
        lst = bytes(32) + hashes[32:] if d in list_liars else hashes
        holdings[d] = {offer.digest: bytes(data), offer.chunks_digest: lst}
    return offer, holdings


def _run(net: FakeNet, offer: StateOffer, donors: list[str], monkeypatch, seed: int = 0, **kw):
    monkeypatch.setattr(download, "fetch_payload", net.fetch_payload)
    liars, stats = [], {}
    blob = asyncio.run(fetch_chunked(None, [(d, "intra") for d in donors], "run", offer, max_bytes=1 << 30,
                                     rng=random.Random(seed), on_liar=lambda p, why: liars.append(p), stats=stats,
                                     **kw))
    return blob, liars, stats


def test_one_liar_costs_one_range_and_is_excluded(monkeypatch, small_chunks):
    blob = _blob(10 * CH + 123)
    donors = ["a", "b", "c", "d"]
    for seed in range(8):  # whatever the random order, the liar costs at most one range
        offer, holdings = _setup(blob, donors, liars={"b": 3})
        net = FakeNet(holdings)
        out, liars, stats = _run(net, offer, donors, monkeypatch, seed=seed)
        assert out == blob
        asked_b = [r[2] for r in net.requests if r[0] == "b" and r[1] == offer.digest]
        lied = 3 * offer.chunk_bytes in asked_b
        assert stats["wasted_ranges"] == int(lied) and liars == ["b"] * lied and stats["liars"] == liars
        if lied:  # b is never asked again after its one bad range
            assert asked_b[-1] == 3 * offer.chunk_bytes and stats["served"].get("b", 0) == len(asked_b) - 1
        assert stats["ranges"] == 11 and sum(stats["served"].values()) == 11
        assert all(v == 1 for v in net.max_in_flight.values())  # one range in flight per donor
        assert len(stats["served"]) >= 2  # never from one donor only


def test_liar_always_caught_when_it_lies_on_every_range(monkeypatch, small_chunks):
    blob = _blob(6 * CH)
    offer, holdings = _setup(blob, ["a", "b", "c"])
    holdings["b"][offer.digest] = bytes(len(blob))  # every range from b is wrong
    for seed in range(6):  # donors take turns, so b is asked, caught and excluded in every download
        net = FakeNet(holdings)
        out, liars, stats = _run(net, offer, ["a", "b", "c"], monkeypatch, seed=seed)
        assert out == blob and stats["wasted_ranges"] == 1 and liars == ["b"] and "b" not in stats["served"]
        assert [r[0] for r in net.requests if r[1] == offer.digest].count("b") == 1


def test_donor_order_is_random_not_sorted(monkeypatch, small_chunks):
    blob = _blob(2 * CH)
    donors = [f"d{i}" for i in range(6)]
    offer, holdings = _setup(blob, donors)
    firsts = set()
    for seed in range(12):
        net = FakeNet(holdings)
        _run(net, offer, donors, monkeypatch, seed=seed)
        firsts.add(net.requests[0][0])
    assert len(firsts) >= 3


def test_failed_range_is_retried_from_another_donor(monkeypatch, small_chunks):
    blob = _blob(5 * CH)
    offer, holdings = _setup(blob, ["a", "b", "c"])
    net = FakeNet(holdings, dead={"a"})
    out, liars, stats = _run(net, offer, ["a", "b", "c"], monkeypatch)
    assert out == blob and liars == [] and "a" not in stats["served"]
    asked = [r[0] for r in net.requests if r[1] == offer.digest]
    for i, who in enumerate(asked[:-1]):  # a's failure is never retried by a right after
        if who == "a":
            assert asked[i + 1] != "a"
    assert asked.count("a") <= download.MAX_STRIKES


def test_wrong_chunk_list_is_a_lie_and_every_liar_out_means_failure(monkeypatch, small_chunks):
    blob = _blob(3 * CH)
    offer, holdings = _setup(blob, ["a", "b"], list_liars={"a"})
    out, liars, _ = _run(FakeNet(holdings), offer, ["a", "b"], monkeypatch, seed=1)
    assert out == blob and liars in ([], ["a"])
    offer, holdings = _setup(blob, ["a", "b"], liars={"a": 0, "b": 1})
    with pytest.raises(PeerUnreachable):
        _run(FakeNet(holdings), offer, ["a", "b"], monkeypatch)


def test_offer_checks_before_any_transfer(monkeypatch, small_chunks):
    blob = _blob(CH + 5)
    offer, holdings = _setup(blob, ["a"])
    net = FakeNet(holdings)
    monkeypatch.setattr(download, "fetch_payload", net.fetch_payload)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(fetch_chunked(None, [("a", "intra")], "run", offer, max_bytes=CH))
    with pytest.raises(ProtocolError):  # a chunk size other than the deterministic one
        asyncio.run(fetch_chunked(None, [("a", "intra")], "run", offer._replace(chunk_bytes=4096), max_bytes=1 << 30))
    assert net.requests == []


def test_chunk_list_stays_bounded_and_records_parse():
    assert chunk_size_for(1) == MIB and chunk_size_for(MAX_CHUNKS * MIB) == MIB
    assert chunk_size_for(MAX_CHUNKS * MIB + 1) == 2 * MIB
    assert -(-(300 * 1000 * MIB) // chunk_size_for(300 * 1000 * MIB)) <= MAX_CHUNKS
    body, hashes = state_record("8" * 64, _blob(2 * MIB + 1), "peer")
    assert len(hashes) == 3 * 32 and len(str(body)) < 400
    assert parse_state_offer("s", body).chunks_digest == hashlib.sha256(hashes).hexdigest()
    for broken in ({**body, "chunks_digest": 5}, {k: v for k, v in body.items() if k != "chunk_bytes"},
                   {**body, "size": 0}, {**body, "digest": "ab"}):
        assert parse_state_offer("s", broken) is None


def test_pick_download_takes_the_group_most_donors_publish():
    honest = dict(state_hash="t" * 64, digest="d" * 64, size=10, chunk_bytes=MIB, chunks_digest="c" * 64)
    offers = [StateOffer(signer=f"k{i}", p2p_id=f"p{i}", **honest) for i in range(3)]
    offers.append(StateOffer(signer="liar", p2p_id="px", **{**honest, "chunks_digest": "e" * 64}))
    offers.append(StateOffer(signer="me", p2p_id="pme", **honest))
    offer, donors = pick_download(offers, "t" * 64, "me")
    assert offer.chunks_digest == "c" * 64 and sorted(donors) == ["p0", "p1", "p2"]
    assert pick_download(offers, "u" * 64, "me") is None


class _Writer:
    def __init__(self):
        self.data = b""

    def write(self, b):
        self.data += bytes(b)

    async def drain(self):
        pass

    def close(self):
        pass


def test_unknown_digest_is_answered_at_once_without_a_thread():
    store = PayloadStore()
    server = PayloadServer(None, "run", store, Traffic())

    async def go():
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor
        loop.run_in_executor = lambda *a: pytest.fail("the server handed a request to a thread")
        try:
            writers = []
            t = time.perf_counter()
            for i in range(300):
                reader = asyncio.StreamReader()
                reader.feed_data(bytes([1]) + hashlib.sha256(str(i).encode()).digest() + bytes(16))
                w = _Writer()
                writers.append(w)
                await asyncio.wait_for(server._handle(type("I", (), {"peer_id": "x"})(), reader, w), 0.05)
            return writers, time.perf_counter() - t
        finally:
            loop.run_in_executor = real

    writers, took = asyncio.run(go())
    assert all(w.data[0] == STATUS_NOT_FOUND for w in writers) and server.not_found == 300
    assert took < 1.0
    assert not hasattr(store, "wait_for")


def test_the_asker_polls_a_gateway_that_is_still_fetching(monkeypatch):
    """Servers never hold requests; a region mate re-asks its gateway until the payload arrives."""
    blob = b"region delta"
    digest = hashlib.sha256(blob).hexdigest()
    net = FakeNet({"gw": {}})
    monkeypatch.setattr(exchange, "fetch_payload", net.fetch_payload)

    async def go():
        async def arrive():
            await asyncio.sleep(0.05)
            net.holdings["gw"][digest] = blob

        asyncio.get_running_loop().create_task(arrive())
        got = await fetch_when_ready(None, "gw", "run", digest, max_bytes=MIB, wait_s=2.0, timeout_s=1.0, poll_s=0.01)
        with pytest.raises(PayloadNotFound):
            await fetch_when_ready(None, "gw", "run", "0" * 64, max_bytes=MIB, wait_s=0.05, timeout_s=1.0, poll_s=0.01)
        return got

    assert asyncio.run(go()) == blob and len(net.requests) >= 3


class _ResettingP2P:
    """A P2P whose first ``resets`` streams end before any answer byte; later ones serve ``blob``."""

    def __init__(self, blob: bytes, resets: int):
        self.blob, self.resets, self.calls = blob, resets, 0

    async def call_binary_stream_handler(self, peer_id, name):
        self.calls += 1
        reader = asyncio.StreamReader()
        if self.calls > self.resets:
            reader.feed_data(bytes([0]) + len(self.blob).to_bytes(8, "big") * 2 + self.blob)
        reader.feed_eof()
        return None, reader, _Writer()


def test_a_stream_reset_before_the_answer_is_asked_once_more():
    from dai_swarm.optim.exchange import fetch_payload

    blob = b"update bytes"
    digest = hashlib.sha256(blob).hexdigest()
    once = _ResettingP2P(blob, resets=1)
    got = asyncio.run(fetch_payload(once, "p", "run", digest, max_bytes=MIB, timeout_s=1.0))
    assert got == blob and once.calls == 2
    twice = _ResettingP2P(blob, resets=2)  # a peer that keeps resetting is unreachable, asked twice only
    with pytest.raises(PeerUnreachable, match="broke"):
        asyncio.run(fetch_payload(twice, "p", "run", digest, max_bytes=MIB, timeout_s=1.0))
    assert twice.calls == 2


@pytest.mark.integration
def test_real_p2p_liar_among_donors_and_300_unknown_digest_requests():
    """Four real P2P daemons: three honest donors and one that serves a corrupted range."""
    from hivemind.p2p import P2P

    from dai_swarm import testing

    blob = torch.randn(3 * MIB // 4 * 5, generator=torch.Generator().manual_seed(1)).numpy().tobytes()  # 15 MiB
    body, hashes = state_record("5" * 64, blob, "p")
    offer = parse_state_offer("k", body)

    async def go():
        donors, servers = [], []
        for i in range(4):
            p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
            store = PayloadStore()
            data = bytearray(blob)
            if i == 0:  # the liar: one byte wrong in every range
                for off in range(11, len(data), offer.chunk_bytes):
                    data[off] ^= 0xFF
            store._items[offer.digest] = (0, bytes(data))
            store.put(hashes, 0)
            server = PayloadServer(p2p, "run", store, Traffic())
            await server.start()
            donors.append(p2p)
            servers.append(server)
        maddrs = [m for p in donors for m in await p.get_visible_maddrs()]
        me = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        try:
            ids = [(p.peer_id, "intra") for p in donors]
            results = []
            for seed in range(3):
                liars, stats = [], {}
                t = time.perf_counter()
                got = await fetch_chunked(me, ids, "run", offer, max_bytes=64 * MIB, rng=random.Random(seed),
                                          on_liar=lambda p, why: liars.append(p), stats=stats, timeout_s=20.0)
                results.append((got == blob, [str(p) for p in liars], stats["wasted_ranges"],
                                time.perf_counter() - t, dict(stats["served"])))
            # 300 requests for digests nobody holds against one server, 64 in flight at a time (more at
            # once overflow the daemon-to-handler socket backlog of hivemind's P2P: resets, not waits)
            from dai_swarm.optim.exchange import fetch_payload

            gate = asyncio.Semaphore(64)

            async def unknown(i):
                async with gate:
                    return await ask(i)

            async def ask(i):
                try:
                    await fetch_payload(me, donors[1].peer_id, "run", hashlib.sha256(b"%d" % i).hexdigest(),
                                        max_bytes=MIB, timeout_s=30.0)
                except PayloadNotFound:
                    return "not found"
                except (ProtocolError, PeerUnreachable) as e:
                    return repr(e)
                return "served"

            t = time.perf_counter()
            answered = await asyncio.gather(*(unknown(i) for i in range(300)))
            return results, answered, time.perf_counter() - t, servers[1].not_found, str(donors[0].peer_id)
        finally:
            for p in donors + [me]:
                await p.shutdown()

    with testing.SocketGuard():
        results, answered, took, not_found, liar = asyncio.run(go())
    for ok, liars, wasted, seconds, served in results:  # each download: the liar costs one range
        assert ok and liars == [liar] and wasted == 1 and liar not in served and len(served) == 3, results
    # (a stream reset under load is asked once more by the client: the server may count one request twice)
    assert answered == ["not found"] * 300 and not_found >= 300, (collections.Counter(answered), not_found)
    print(f"REPORT downloads_s={[round(r[3], 2) for r in results]} unknown_300_s={took:.2f}")
    assert took < 15.0  # measured ~1-2 s; with a held executor thread per request it took 38 s
