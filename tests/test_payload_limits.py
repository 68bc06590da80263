"""Caps derived from the model and the codec, and who may announce (issue "No number of free keys
may choose, freeze or fork the model", finding 6). Unit level: no DHT, no P2P."""

from __future__ import annotations

import inspect
import time
from types import SimpleNamespace

import torch

from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim import codecs
from dai_swarm.optim.coordinator import Coordinator
from dai_swarm.optim.limits import FRAMING_MARGIN, MAX_EXTRA_BYTES, derive_limits
from dai_swarm.heartbeat import refresh_peers
from dai_swarm.runtime import RoundRuntime
from dai_swarm.optim.states import BaseState, BaseStore
from dai_swarm.tasks import load_task
from fakes import run_config


def _like(task: str = "regression") -> BaseState:
    return BaseState.initial(load_task(task).build_model(0))


def test_payload_cap_follows_the_model_and_codec_not_256_mib():
    like = _like()
    limits = derive_limits(like, "int8", {"zstd": "always"})
    g = torch.Generator().manual_seed(0)
    for codec, params in (("int8", {"zstd": "always"}), ("topk", {"fraction": 0.05}), ("none", {}), ("fp16", {})):
        lim = derive_limits(like, codec, params)
        for scale in (1e-6, 1.0, 1e4):
            delta = {n: torch.randn(t.shape, generator=g) * scale for n, t in like.params.items()}
            blob = codecs.encode(delta, codec, **params)
            assert len(blob) <= lim.max_payload_bytes - FRAMING_MARGIN
            out = codecs.decode(blob, max_bytes=lim.max_decoded_bytes,
                                expect={n: (tuple(t.shape), torch.float32) for n, t in like.params.items()})
            assert set(out) == set(like.params)
    assert limits.max_payload_bytes < 16 << 10  # an ~821-byte update of the regression task: a few KiB
    model_bytes = 4 * sum(t.numel() for t in like.params.values())
    assert limits.max_decoded_bytes == max(model_bytes, limits.max_payload_bytes)
    assert len(like.blob()) <= limits.max_state_bytes <= 3 * model_bytes + MAX_EXTRA_BYTES + (64 << 10)
    bigger = _like("tinylm-small")
    assert derive_limits(bigger, "int8").max_payload_bytes > 20 * limits.max_payload_bytes
    assert inspect.signature(RoundRuntime).parameters["max_payload_bytes"].default is None


def test_state_cap_bounds_a_snapshot_with_metadata():
    like = _like()
    extra = {"reputation": {f"{i:064x}": 0.5 for i in range(2000)}}
    state = BaseState.make(5, like.params, like.params, extra, like.anchor)
    assert len(state.blob()) <= derive_limits(like, "int8").max_state_bytes


class _Records:
    def __init__(self, recs):
        self.recs, self.reads = recs, 0

    def get_round_records(self, run_id, kind, round, signers=None):
        return [r for r in self.recs if r.kind == kind and (signers is None or r.signer in signers)]


def _ann(key: str, p2p: str, digest: str, region: str = "r0") -> SimpleNamespace:
    body = dict(run_id="run", round=3, base_hash="b" * 64, peer=key, steps=2, samples=16, codec="int8",
                digest=digest, size_bytes=100, region=region, p2p_id=p2p)
    return SimpleNamespace(kind="update.r0", signer=key, body=body)


def _ctx(dht, peers_now: dict, peers_later: dict):
    ctx = SimpleNamespace(run_id="run", region="r0", dht=dht, counters={}, refreshes=0, peer_keys=dict(peers_now),
                          config=run_config())

    def refresh():
        ctx.refreshes += 1
        ctx.peer_keys = dict(peers_later)

    ctx.refresh_peers = refresh
    ctx.announcer = lambda key: RoundRuntime.announcer(ctx, key)
    ctx.clock = RoundClock(0.0, 5.0)
    ctx.count = lambda name, n=1: ctx.counters.__setitem__(name, ctx.counters.get(name, 0) + n)
    return ctx


def test_only_keys_with_a_live_peer_record_in_the_region_may_announce():
    a, b, late, stranger, foreign = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
    dht = _Records([_ann(a, "PA", "1" * 64), _ann(b, "claims-someone-else", "2" * 64), _ann(late, "PL", "3" * 64),
                    _ann(stranger, "PS", "4" * 64), _ann(foreign, "PF", "5" * 64)])
    t = time.time()
    now = {a: ("PA", "r0", t), b: ("PB", "r0", t), foreign: ("PF", "r1", t)}
    later = dict(now, **{late: ("PL", "r0", t)})  # a mate whose record was not read yet: found on re-read
    ctx = _ctx(dht, now, later)
    coord = Coordinator(ctx, BaseStore())
    anns = coord._announcements(3)
    assert sorted(x.peer for x in anns) == [a, b, late]
    assert ctx.refreshes == 1  # re-read once for the unknown announcers, not once per record
    assert ctx.counters == {"unknown_announcer": 2}  # the stranger and the other region's key
    assert coord.providers["2" * 64] == ["PB"]  # fetch from b's own peer record, not the id it names
    assert coord.providers["1" * 64] == ["PA"]
    ctx.refreshes = 0
    coord._announcements(3)
    assert ctx.refreshes == 1 and ctx.counters["unknown_announcer"] == 4  # one fetch at most per key and read
    everyone = _Records([_ann(a, "PA", "1" * 64)])
    ctx2 = _ctx(everyone, {a: ("PA", "r0", t)}, {})
    Coordinator(ctx2, BaseStore())._announcements(3)
    assert ctx2.refreshes == 0  # all announcers known: no extra DHT read
    ctx3 = _ctx(everyone, {a: ("PA", "r0", t - 11.0)}, {a: ("PA", "r0", t - 11.0)})  # last seen > 2 rounds ago
    assert Coordinator(ctx3, BaseStore())._announcements(3) == [] and ctx3.counters == {"unknown_announcer": 1}


def test_peer_keys_come_from_signed_peer_records_and_expire_after_two_rounds():
    rec = SimpleNamespace(public_key="a" * 64, peer_id="PA", region="r0")
    listed = [rec]
    rt = SimpleNamespace(run_id="run", region="r0", peer_keys={}, clock=SimpleNamespace(round_s=5.0),
                         dht=SimpleNamespace(list_peers=lambda run_id: list(listed)))
    refresh_peers(rt)
    assert rt.region_of == {"PA": "r0"} and RoundRuntime.announcer(rt, "a" * 64) == "PA"
    listed.clear()  # the record expired (a late heartbeat): still accepted within two rounds
    refresh_peers(rt)
    assert rt.region_of == {} and RoundRuntime.announcer(rt, "a" * 64) == "PA"
    rt.peer_keys["a" * 64] = ("PA", "r0", time.time() - 10.5)
    refresh_peers(rt)
    assert RoundRuntime.announcer(rt, "a" * 64) is None and rt.peer_keys == {}
    assert RoundRuntime.announcer(rt, "b" * 64) is None


def test_a_network_side_error_is_latched_and_reported_not_swallowed():
    """Coordinator.errored() (read by the runtime's status): the newest failed round, its type and
    a count; the round is skipped and the thread keeps going."""
    import time as _time
    from types import SimpleNamespace

    from dai_swarm.errors import ProtocolError
    from dai_swarm.optim.clock import RoundClock
    from dai_swarm.optim.states import BaseStore

    c = Coordinator(SimpleNamespace(clock=RoundClock(_time.time() - 25.0, 10.0), config=run_config()), BaseStore())
    assert c.errored() is None

    def fail(q):
        raise ProtocolError(f"round {q}: the DHT said no")

    c.close_round = fail
    c.start(first_round=0)
    deadline = _time.time() + 5
    while c.errors < 1 and _time.time() < deadline:
        _time.sleep(0.02)
    c.stop()
    err = c.errored()
    assert err is not None and err["type"] == "ProtocolError" and "the DHT said no" in err["message"]
    assert err["round"] in (0, 1) and err["count"] >= 1


def test_a_bug_on_the_network_side_is_latched_too_and_the_thread_goes_on():
    """A non-protocol exception (a bug) skips its round like a network error, is reported by errored()
    with its type, and leaves the thread running for the next round."""
    import time as _time
    from types import SimpleNamespace

    from dai_swarm.optim.clock import RoundClock
    from dai_swarm.optim.states import BaseStore

    c = Coordinator(SimpleNamespace(clock=RoundClock(_time.time() - 25.0, 10.0), config=run_config()), BaseStore())
    tallied = []

    def broken(q):
        raise KeyError(f"round {q}: a bug")

    c.close_round = broken
    c.tally_round = tallied.append
    c.start(first_round=0)
    deadline = _time.time() + 5
    while c.errors < 2 and _time.time() < deadline:
        _time.sleep(0.02)
    c.stop()
    err = c.errored()
    assert err is not None and err["type"] == "KeyError" and err["count"] == 2 and c._thread.is_alive() is False
    assert tallied == []  # a failed close cancels its round's tally
