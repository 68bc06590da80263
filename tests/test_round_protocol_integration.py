"""The round protocol with real `dai-swarm peer` processes and real hivemind DHTs on loopback.

One swarm run exercises, at once: two regions with cross-region merges, a peer SIGKILLed
mid-round, a peer joining mid-run (verified state download), a peer forced to diverge (it must
detect its minority hash and re-sync), and a rogue that publishes bad update announcements and
serves a payload that does not match its digest. Everything is asserted from the peers' own
per-round history files.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import torch

from dai_swarm.testing import founding_peers
from swarm_run import by_round, cleanup, spawn_peer, wait_all

pytestmark = pytest.mark.integration

ROUND_S = 5.0  # 4 s rounds: beside a training demo, a region delta reached one region too late to merge
# The joiner p5 is spawned when p4 is killed (round 4.5) and needs S seconds to start (importing
# torch, DHT, manifest, state download): 5-8 s on a quiet 2-core machine, 20 s measured beside
# another 8-peer swarm, so it joins at round 4.5 + S/T + 1, i.e. by round 10 under that load; it
# contributes from the round after, and rounds are recorded up to UNTIL - 2: UNTIL = 14 leaves it
# two rounds to show it (12 left it none under load).
UNTIL = 14
PERTURB_ROUND = 7


ROGUE_PLAN = {  # round -> what the rogue announces in region r0 in that round
    5: "wrong_digest", 6: "stale_round", 8: "wrong_base", 9: "too_large", 10: "implausible_samples"}


class Rogue(threading.Thread):
    """A peer with a valid key and a live peer record in region r0 (only such keys may announce)
    that publishes one bad update announcement per round (ROGUE_PLAN), serves a payload whose
    bytes do not hash to the announced digest, and tries to store a forged record. Honest peers
    must refuse all of it, count it, and carry on."""

    def __init__(self, initial_peers: list[str], run_id: str, t0: float):
        super().__init__(daemon=True)
        from dai_swarm.dht.node import SwarmDHT
        from dai_swarm.identity import Identity
        from dai_swarm.optim.exchange import PayloadServer, PayloadStore, Traffic
        from dai_swarm.optim.netloop import NetLoop

        self.run_id, self.t0, self.error, self.published = run_id, t0, None, {}
        self.key = Identity.generate()
        self.dht = SwarmDHT(self.key, initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        self.loop = NetLoop()
        p2p = self.loop.run(self.dht.replicate_p2p(), 30)
        store = PayloadStore()
        self.wrong = b"not the announced bytes" * 10
        self.fake_digest = hashlib.sha256(b"something else").hexdigest()
        store._items[self.fake_digest] = (0, self.wrong)  # bytes served under a digest they do not hash to
        self.loop.run(PayloadServer(p2p, run_id, store, Traffic()).start(), 30)

    def run(self) -> None:
        from dai_swarm.dht.envelope import seal
        from dai_swarm.dht.keys import round_key
        from dai_swarm.dht.records import RoundRecord
        from dai_swarm.identity import Identity

        try:
            from dai_swarm.dht.records import PeerRecord

            self.dht.publish_peer(PeerRecord(run_id=self.run_id, peer_id=self.dht.peer_id, region="r0",
                                             maddrs=tuple(self.dht.visible_maddrs), version="rogue",
                                             public_key=self.key.public_key_hex), ttl_s=(UNTIL + 10) * ROUND_S + 60)
            for q, kind in sorted(ROGUE_PLAN.items()):
                while time.time() < self.t0 + (q + 0.1) * ROUND_S:
                    time.sleep(0.05)
                recs = self.dht.get_round_records(self.run_id, "state.r0", q)
                if not recs:
                    continue
                good = dict(run_id=self.run_id, round=q, base_hash=recs[0].body["state_hash"],
                            peer=self.key.public_key_hex, steps=4, samples=4 * 32, codec="int8",
                            digest=self.fake_digest, size_bytes=len(self.wrong), region="r0",
                            p2p_id=self.dht.peer_id)
                body = {"wrong_digest": good, "stale_round": dict(good, round=q - 1),
                        "wrong_base": dict(good, base_hash="cd" * 32), "too_large": dict(good, size_bytes=1 << 40),
                        "implausible_samples": dict(good, samples=7)}[kind]
                self.dht.publish_round_record(self.run_id, "update.r0", q, body, ttl_s=120)
                self.published[q] = kind
                if kind == "wrong_base":  # also try a forged record: tampered after signing
                    key = round_key(self.run_id, "update.r0", q)
                    data = seal(self.key, RoundRecord(kind="update.r0", round=q, body=dict(good, steps=5)),
                                run_id=self.run_id, key=key, ttl_s=120)
                    self.dht.store_raw(key, Identity.generate().public_key_hex,
                                       data.replace(b'"steps":5', b'"steps":6'), time.time() + 120)
        except Exception as e:  # reported by the test
            self.error = e

    def close(self) -> None:
        self.loop.stop()
        self.dht.shutdown()


def test_two_regions_with_kill_join_divergence_and_rogue(tmp_path):
    run_id = f"it-{os.getpid()}"
    t0 = float(int(time.time()) + 25)
    common = dict(run_id=run_id, task="regression", t0=t0, round_s=ROUND_S, until_round=UNTIL)
    peers = []
    try:
        founding = founding_peers(str(tmp_path), ["p0", "p3"])  # one founder per region (docs/design.md)
        p0 = spawn_peer(str(tmp_path), "p0", region="r0", founding=founding["p0"], **common)
        peers.append(p0)
        boot = p0.addresses()
        rogue = Rogue(boot, run_id, t0)
        rogue.start()
        for name, region, extra in (("p1", "r0", None), ("p2", "r0", ["--attack", f"diverge@{PERTURB_ROUND}"]),
                                    ("p3", "r1", None), ("p4", "r1", None)):
            peers.append(spawn_peer(str(tmp_path), name, region=region, initial_peers=boot, extra_args=extra,
                                    founding=founding.get(name), **common))
        p4 = peers[4]
        # SIGKILL p4 in the middle of round 4
        while time.time() < t0 + 4.5 * ROUND_S:
            time.sleep(0.1)
        p4.kill()
        killed_at = time.time()
        # a new peer joins region r1 during round 4; it must download and verify state
        p5 = spawn_peer(str(tmp_path), "p5", region="r1", initial_peers=boot, **common)
        peers.append(p5)
        wait_all([p for p in peers if p is not p4], timeout_s=UNTIL * ROUND_S + 120)
        rogue.join(10)
    finally:
        cleanup(peers)
        if "rogue" in locals():
            rogue.close()

    hist = {p.name: p.history() for p in peers if p.name != "p4"}
    rounds = {name: by_round(h) for name, h in hist.items()}
    report = {}

    # I1: peers of one region agree on every round both closed (except the forced divergence)
    for region, names in (("r0", ["p0", "p1", "p2"]), ("r1", ["p3", "p5"])):
        for r in range(2, UNTIL - 1):
            hashes = {n: rounds[n][r]["state_hash"] for n in names if r in rounds[n] and rounds[n][r]["state_hash"]}
            if region == "r0" and r == PERTURB_ROUND:
                continue  # the forced divergence, checked below
            assert len(set(hashes.values())) <= 1, (region, r, hashes)
    # the forced divergence: p2 computed another state than p0 and p1. The reputation-weighted vote
    # decides which side wins: the two others, or p2 alone when its verified reputation outweighs
    # theirs (spot checks are random). Every peer on the losing side notices it is in the minority.
    at = {n: rounds[n][PERTURB_ROUND] for n in ("p0", "p1", "p2")}
    losers = ["p2"] if at["p2"]["agreed"] is False else ["p0", "p1"]
    assert all(at[n]["agreed"] is False for n in losers), at
    winner = "p0" if losers == ["p2"] else "p2"
    last = max(r for r in rounds["p0"] if r in rounds["p2"] and r in rounds["p1"])
    assert last > PERTURB_ROUND
    assert len({rounds[n][last]["state_hash"] for n in ("p0", "p1", "p2")}) == 1
    report["minority_side"] = losers
    report["minority_resynced_by_round"] = max(
        min(r for r in rounds[n] if r >= PERTURB_ROUND and rounds[n][r]["state_hash"] == rounds[winner][r]["state_hash"])
        for n in losers)

    # cross-region merges: regions hold identical parameters after a merge (same val loss)
    merged = [r for r in range(2, UNTIL - 1) if (r + 2) % 3 == 0 and r in rounds["p0"] and r in rounds["p3"]
              and rounds["p3"][r].get("val_loss") is not None]
    assert merged
    report["merged_rounds"] = merged
    def same(r: int) -> bool:  # (a peer that held no base of r + 2 when it recorded r has no val loss)
        a, b = rounds["p0"][r].get("val_loss"), rounds["p3"][r].get("val_loss")
        return a is not None and b is not None and a == pytest.approx(b, rel=1e-6)

    # under load a region can miss a merge (seen once in CI: r0 skipped base 9's); it must notice at
    # the next merge that it is off the global chain, adopt it, and hold the other region's parameters
    missed = [r for r in merged if not same(r)]
    report["missed_merges"] = missed
    logs = "".join(open(p.log_file, errors="replace").read() for p in peers if p.name != "p4")
    for r in missed:
        assert r + 3 in merged and same(r + 3), (r, merged, [rounds[n].get(r + 3, {}).get("val_loss") for n in
                                                             ("p0", "p3")])
        assert f"merge {r + 5}: region" in logs and "off the global chain" in logs, r
    assert len(missed) <= 1 and len(missed) < len(merged), (missed, merged)
    cross = sum(h["status"]["traffic"]["received"]["cross"] for h in hist.values())
    assert cross > 0

    # I2: the SIGKILL cost survivors at most one round: their rounds kept finishing on time
    for name in ("p0", "p1", "p3"):
        times = sorted(v["finished_at"] for v in rounds[name].values() if v.get("finished_at"))
        gaps = [b - a for a, b in zip(times, times[1:]) if a > killed_at - ROUND_S]
        report[f"{name}_max_round_gap_s"] = round(max(gaps), 2)
        # I2: rounds finish by the clock; a dead peer may cost one deadline on top of one round
        assert max(gaps) <= 2 * ROUND_S, (name, gaps)

    # I6: the joiner adopted verified state and contributed in the next rounds
    joined = min(r for r in rounds["p5"] if rounds["p5"][r]["state_hash"])
    assert rounds["p5"][joined]["state_hash"] == rounds["p3"][joined]["state_hash"]
    assert any(rounds["p3"][r]["updates"] == 2 for r in rounds["p3"] if r > joined + 1), rounds["p3"]
    report["joiner_first_round"] = joined

    # bad input over the wire was refused, counted, and the run went on
    assert rogue.error is None, rogue.error
    assert len(rogue.published) >= 4, rogue.published
    expected = {"wrong_digest": "DigestMismatch", "stale_round": "stale_round", "wrong_base": "wrong_base",
                "too_large": "too_large", "implausible_samples": "implausible_samples"}
    for q, kind in rogue.published.items():
        if q not in rounds["p0"]:
            continue
        rej = rounds["p0"][q]["rejections"]
        assert rej.get(expected[kind], 0) >= 1, (q, kind, rej)
        assert rounds["p0"][q]["updates"] == 3, (q, rounds["p0"][q])
    report["rogue"] = {q: rounds["p0"][q]["rejections"] for q in rogue.published if q in rounds["p0"]}
    forged = sum(h["status"]["dropped_records"].get("forged", 0) for h in hist.values())
    report["forged_records_refused_by_honest_nodes"] = forged
    assert forged >= 1, [h["status"]["dropped_records"] for h in hist.values()]

    # training works: the loss fell; compare with one process trained on the same number of samples
    from dai_swarm.reference import run_centralized

    losses = [rounds["p0"][r]["val_loss"] for r in sorted(rounds["p0"])]
    assert losses[-1] < losses[0]
    last = max(r for r in rounds["p0"] if rounds["p0"][r].get("val_loss") is not None)
    samples = sum(rounds[n][r]["samples"] for n in ("p0", "p3") for r in rounds[n] if r <= last)
    torch.set_num_threads(1)
    ref = run_centralized("regression", samples=samples, eval_every=samples)
    swarm_loss = (rounds["p0"][last]["val_loss"] + rounds["p3"][last]["val_loss"]) / 2
    report["loss_vs_centralized"] = {"samples": samples, "swarm": round(swarm_loss, 5),
                                     "centralized": round(ref["final_val_loss"], 5),
                                     "ratio": round(swarm_loss / ref["final_val_loss"], 3)}
    print("REPORT", report)

