"""Real hivemind DHTs on loopback: discovery, regions, forged records, expiry, peer processes, status."""

import json
import subprocess
import sys
import time

import pytest

from dai_swarm import testing
from dai_swarm.canonical import canonical_json
from dai_swarm.dht.envelope import open_envelope, seal
from dai_swarm.dht.keys import manifest_key, round_key
from dai_swarm.dht.manifest import PIN_HEX, manifest_hash
from dai_swarm.dht.node import SwarmDHT
from dai_swarm.dht.records import PeerRecord, RoundRecord, RunManifest
from dai_swarm.dht.regions import choose_region
from dai_swarm.errors import BootstrapError, ConfigError, MalformedRecord, ManifestPinMismatch
from dai_swarm.identity import Identity

pytestmark = pytest.mark.integration
RUN = "itest"


@pytest.fixture(scope="module")
def swarm():
    """Three validating nodes and one node that runs no validator (index 3) and hivemind's default five
    replicas, so that it is among the holders of whatever it stores (ours store on the nearest three)."""
    with testing.SocketGuard():
        nodes = testing.launch_dht_swarm(4, validate=[True, True, True, False], options=[{}, {}, {}, {"num_replicas": 5}])
        yield nodes
        testing.shutdown_all(nodes)


def _peer(node, region="eu"):
    return PeerRecord(run_id=RUN, peer_id=node.peer_id, maddrs=tuple(node.visible_maddrs), region=region,
                      version="t", public_key=node.identity.public_key_hex, metrics={"round": 1})


def test_discovery_round_records_and_manifest(swarm):
    a, b, c, _ = swarm
    for node, region in ((a, "eu"), (b, "eu"), (c, "us")):
        node.publish_peer(_peer(node, region), ttl_s=30)
        node.publish_region(RUN, region, ttl_s=30)
    peers = testing.wait_until(lambda: len(c.list_peers(RUN)) == 3 and c.list_peers(RUN), 15, what="3 peers")
    assert {p.peer_id for p in peers} == {a.peer_id, b.peer_id, c.peer_id}
    assert peers[0].metrics == {"round": 1}
    assert a.regions(RUN) == {"eu": sorted([a.peer_id, b.peer_id]), "us": [c.peer_id]}
    b.publish_round_record(RUN, "note", 7, {"digest": "x"}, ttl_s=30)
    got = testing.wait_until(lambda: a.get_round_records(RUN, "note", 7), 10, what="note")
    assert [(r.signer, r.body) for r in got] == [(b.identity.public_key_hex, {"digest": "x"})]
    assert a.get_round_records(RUN, "note", 8) == []
    with pytest.raises(MalformedRecord):  # a protocol kind's body must match its schema (dht/wire.py)
        b.publish_round_record(RUN, "vote", 7, {"digest": "x"}, ttl_s=30)
    m = RunManifest(run_id=RUN, task="regression", task_config_hash="ab", round_s=5, cross_region_period=2,
                    max_inner_steps=10, outer_lr=0.7, outer_momentum=0.9, codec="fp16", checks_per_update=0.2,
                    seed=0, t0=time.time(), versions={"torch": "2.13.0"}, founders=(a.identity.public_key_hex,))
    a.publish_manifest(m, ttl_s=60)
    assert testing.wait_until(lambda: c.get_manifest(RUN), 10, what="manifest") == m
    assert a.ping(b.peer_id) < 0.5
    with pytest.raises(MalformedRecord):
        a.publish_round_record(RUN, "blob", 0, {"x": "y" * 70000})


def test_forged_records_refused_by_honest_nodes(swarm):
    a, b, c, rogue = swarm
    victim = b.identity.public_key_hex
    key = round_key(RUN, "note", 1)
    honest = seal(b.identity, RoundRecord(kind="note", round=1, body={"pass": True}), run_id=RUN, ttl_s=30)
    # 1) wrong key: the rogue signs with its own key but writes the victim's subkey
    own = seal(rogue.identity, RoundRecord(kind="note", round=1, body={"pass": False}), run_id=RUN, ttl_s=30)
    # 2) tampered field: the victim's record with its body edited
    fields = json.loads(honest)
    fields["body"]["body"]["pass"] = False
    tampered = canonical_json(fields)
    # 3) replay: an old record of the victim's, validly signed, already expired
    old = seal(b.identity, RoundRecord(kind="note", round=1, body={"pass": True}), run_id=RUN, ttl_s=5,
               issued_at=time.time() - 60)
    for value in (own, tampered, old):
        rogue.store_raw(key, victim, value, time.time() + 30)
    # 4) a valid record copied to another round
    rogue.store_raw(round_key(RUN, "note", 2), victim, honest, open_envelope(honest).expiration)
    time.sleep(1.0)
    for node in (a, b, c):
        assert node.get_round_records(RUN, "note", 1) == []
        assert node.get_round_records(RUN, "note", 2) == []
    refused = sum(sum(n.counters[r] for r in ("forged", "expired", "malformed")) for n in (a, b, c))
    assert refused >= 4
    # the node without a validator keeps the forged value locally, but every read re-verifies
    dropped = lambda: sum(rogue.counters[r] for r in ("forged", "expired", "malformed"))  # noqa: E731
    before = dropped()
    assert rogue.get_round_records(RUN, "note", 1) == []
    assert dropped() > before
    raw = rogue.dht.get(key, latest=True)
    assert raw is not None and victim in raw.value
    # 5) a validly signed protocol record whose body breaks its schema (dht/wire.py): refused on read
    bad = RoundRecord.model_construct(kind="vote", round=5, body={"inclusion": ["x"], "state_hash": "ab" * 32})
    me = rogue.identity.public_key_hex
    rogue.store_raw(round_key(RUN, "vote", 5, me), me, seal(rogue.identity, bad, run_id=RUN, ttl_s=30), time.time() + 30)
    before = rogue.counters["malformed"]
    assert rogue.get_round_records(RUN, "vote", 5, signers=[me]) == [] and rogue.counters["malformed"] == before + 1


def _vote(q: int) -> RoundRecord:
    return RoundRecord(kind="vote.eu", round=q, body={"inclusion": [], "state_hash": "ab" * 32, "verdicts": []})


def test_votes_live_under_one_key_per_signer(swarm):
    """A vote is stored under its signer's own key, and a reader asks only for the signers it names:
    a thousand fresh keys' votes are never transferred to it (the Sybil flood's cost, docs/design.md
    "Trust model"). A vote placed under another signer's key is refused by honest nodes and on read."""
    a, b, c, rogue = swarm
    ka, kb, kr = (n.identity.public_key_hex for n in (a, b, rogue))
    for node in (a, b, rogue):
        node.publish_round_record(RUN, "vote.eu", 9, _vote(9).body, ttl_s=30)
    got = testing.wait_until(lambda: len(c.get_round_records(RUN, "vote.eu", 9, signers=[ka, kb])) == 2
                             and c.get_round_records(RUN, "vote.eu", 9, signers=[ka, kb]), 10, what="two votes")
    assert [r.signer for r in got] == sorted([ka, kb])  # the rogue's vote exists but was not asked for
    assert [r.signer for r in c.get_round_records(RUN, "vote.eu", 9, signers=[kr])] == [kr]
    with pytest.raises(ConfigError, match="per signer"):
        c.get_round_records(RUN, "vote.eu", 9)
    assert c.get_round_records(RUN, "vote.eu", 9, signers=[]) == []
    for node in (a, b):  # a kind under one key is filtered by signers too
        node.publish_round_record(RUN, "note", 9, {"x": 1}, ttl_s=30)
    testing.wait_until(lambda: len(c.get_round_records(RUN, "note", 9)) == 2, 10, what="two notes")
    assert [r.signer for r in c.get_round_records(RUN, "note", 9, signers=[kb, kr])] == [kb]
    # the rogue's own vote moved under a's key: sealing refuses, honest nodes refuse, a read drops it
    with pytest.raises(MalformedRecord, match="belongs under"):
        seal(rogue.identity, _vote(10), run_id=RUN, ttl_s=30, key=round_key(RUN, "vote.eu", 10, ka))
    forged = seal(rogue.identity, _vote(10), run_id=RUN, ttl_s=30)
    refused = lambda: sum(n.counters["forged"] + n.counters["malformed"] for n in (a, b, c))  # noqa: E731
    before = refused()
    rogue.store_raw(round_key(RUN, "vote.eu", 10, ka), kr, forged, open_envelope(forged).expiration)
    time.sleep(1.0)
    assert refused() > before
    assert c.get_round_records(RUN, "vote.eu", 10, signers=[ka]) == []
    drops = rogue.counters["malformed"]
    assert rogue.get_round_records(RUN, "vote.eu", 10, signers=[ka]) == [] and rogue.counters["malformed"] > drops


def test_backdated_or_altered_manifest_refused_over_a_real_dht(swarm):
    """Finding "run manifest hijack": another key stores a back-dated copy with spot checks off and an
    altered, in-window manifest under the same run id. A pinned reader takes only the run's own; an
    unpinned one refuses the back-dated copy; a reader pinned to the run's hash but shown only the
    altered one gets ManifestPinMismatch naming both hashes."""
    a, _, c, rogue = swarm
    run, t0 = "pinned-itest", float(int(time.time()) + 5)
    honest = RunManifest(run_id=run, task="regression", task_config_hash="ab", round_s=5, cross_region_period=2,
                         max_inner_steps=10, outer_lr=0.6, outer_momentum=0.9, codec="int8", checks_per_update=0.2,
                         seed=0, t0=t0, versions={"torch": "2.13.0"}, founders=(a.identity.public_key_hex,))
    pin = manifest_hash(honest)[:PIN_HEX]
    evil = honest.model_copy(update={"checks_per_update": 0.0, "founders": (rogue.identity.public_key_hex,)})
    backdated = seal(rogue.identity, evil, run_id=run, ttl_s=7 * 24 * 3600.0, issued_at=t0 - 6 * 24 * 3600.0)
    rogue.store_raw(manifest_key(run), rogue.identity.public_key_hex, backdated, open_envelope(backdated).expiration)
    a.publish_manifest(honest, ttl_s=60)
    raw = lambda: c.dht.get(manifest_key(run), latest=True)  # noqa: E731
    testing.wait_until(lambda: raw() is not None and len(raw().value) == 2, 10, what="both manifests")
    assert c.get_manifest(run, manifest_hash=pin) == honest
    assert c.get_manifest(run) == honest  # unpinned: the back-dated copy is refused
    # an altered manifest alone under another run id, read by a peer pinned to the honest hash
    run2 = run + "-2"
    altered = evil.model_copy(update={"run_id": run2})
    rogue.publish_manifest(altered, ttl_s=60)
    testing.wait_until(lambda: c.get_manifest(run2), 10, what="altered manifest")
    pin2 = manifest_hash(honest.model_copy(update={"run_id": run2}))[:PIN_HEX]
    with pytest.raises(ManifestPinMismatch, match=pin2) as err:
        c.get_manifest(run2, manifest_hash=pin2)
    assert manifest_hash(altered)[:PIN_HEX] in str(err.value)


def test_expired_peer_disappears(swarm):
    a, b, _, _ = swarm
    ident = Identity.generate()
    rec = PeerRecord(run_id="short", peer_id=b.peer_id, maddrs=(), region="eu", version="t",
                     public_key=ident.public_key_hex)
    tmp = SwarmDHT.__new__(SwarmDHT)
    tmp.identity, tmp._dht, tmp._pipe = ident, b.dht, b._pipe  # publish through b's DHT as another identity
    tmp.request_timeout_s, tmp.ops = b.request_timeout_s, b.ops
    tmp._publish(rec, "short", ttl_s=3.0)
    assert testing.wait_until(lambda: a.list_peers("short"), 5, what="short-lived peer")
    testing.wait_until(lambda: a.list_peers("short") == [], 8, what="expiry")


def test_region_auto(swarm):
    a, b, c, _ = swarm
    # its own regions (the tests of this module may run on different workers, in any order)
    for node, region in ((a, "eu"), (b, "eu"), (c, "us")):
        node.publish_peer(_peer(node, region), ttl_s=30)
        node.publish_region(RUN, region, ttl_s=30)
    testing.wait_until(lambda: sum(map(len, a.regions(RUN).values())) >= 3, 15, what="regions")
    assert choose_region(a, RUN, "eu").region == "eu"
    with pytest.raises(ConfigError):
        choose_region(a, RUN, "bad name!")
    joined = choose_region(a, RUN, "auto", threshold_s=1.0)
    assert joined.region in ("eu", "us") and not joined.founded and joined.median_rtt_s < 1.0
    founded = choose_region(a, RUN, "auto", threshold_s=1e-9)
    assert founded.founded and founded.region.startswith("r-")
    assert choose_region(a, RUN, "auto", threshold_s=1e-9).region == founded.region


def test_bad_initial_peers_are_typed_errors():
    with testing.SocketGuard() as guard:
        start = time.monotonic()
        with pytest.raises(BootstrapError, match="nothing listens at 127.0.0.1:9"):  # said at once, not retried
            SwarmDHT(Identity.generate(), start_timeout_s=10,
                     initial_peers=["/ip4/127.0.0.1/tcp/9/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"])
        assert time.monotonic() - start < 12
        for bad in (["garbage"], ["/ip4/127.0.0.1/tcp/9"], ["/ip4/300.1.1.1/tcp/1/p2p/Qm"]):
            with pytest.raises(ConfigError):
                SwarmDHT(Identity.generate(), initial_peers=bad)
    assert not (testing._proc.hivemind_sockets() & set(getattr(guard, "removed", [])))


def test_peer_processes_discovery_kill_and_status(tmp_path):
    ttl = 4.0
    with testing.LocalSwarm(tmp_path, run_id="proc", peers=4, regions=("eu", "us"), ttl_s=ttl) as swarm:
        with SwarmDHT(Identity.generate(), initial_peers=swarm.initial_peers) as observer:
            peers = testing.wait_until(lambda: len(observer.list_peers("proc")) == 4 and observer.list_peers("proc"),
                                       30, what="4 peer processes")
            assert sorted(p.region for p in peers) == ["eu", "eu", "us", "us"]
            regions = testing.wait_until(
                lambda: (lambda r: sum(map(len, r.values())) == 4 and r)(observer.regions("proc")), 15, what="regions")
            assert set(regions) == {"eu", "us"}
            victim = swarm.peers[0]
            victim_id = victim.maddrs[0].rsplit("/", 1)[-1]
            victim.kill()
            start = time.monotonic()
            testing.wait_until(lambda: victim_id not in {p.peer_id for p in observer.list_peers("proc")},
                               ttl + 5, period_s=0.25, what="killed peer gone")
            gone_after = time.monotonic() - start
            assert gone_after <= ttl + 5
            out = subprocess.run(
                [sys.executable, "-m", "dai_swarm", "status", "--run-id", "proc", "--json",
                 "--initial-peers", *swarm.initial_peers], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            doc = json.loads(out.stdout)
            live = {p.maddrs[0].rsplit("/", 1)[-1] for p in swarm.peers[1:]}
            assert {p["peer_id"] for p in doc["peers"]} == live
            assert all(p["metrics"]["uptime_s"] >= 0 and p["age_s"] >= 0 for p in doc["peers"])
            assert doc["run_id"] == "proc" and set(doc["regions"]) <= {"eu", "us"}
        codes = [p.stop() for p in swarm.peers[1:]]
        assert codes == [0, 0, 0]
