"""RewardLog behaviour: durable receipts, thread safety, Merkle proofs, round-chain comparison, diff."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dai_swarm.canonical import canonical_json, sha256_hex
from dai_swarm.errors import LedgerError
from dai_swarm.identity import Identity
from dai_swarm.rewards import Contributor, RewardLog, compute_round_record, diff_logs, verify_log
from dai_swarm.rewards.merkle import MerkleAccumulator, inclusion_proof, verify_inclusion
from dai_swarm.rewards.records import canonical_body, parse_line

from ledger_helpers import read_lines, types


def _round_body(r: int, *, doctor: bool = False) -> dict:
    cs = [Contributor(f"peer{i}", 100 + 10 * i + r, 0.5 + i / 20, region=f"r{i % 2}") for i in range(5)]
    if doctor:
        cs[0] = Contributor("peer0", 10_000, 1.0, region="r0")
    return compute_round_record(r, cs, {"peer1": 2, "peer3": 1}, ["peer4"] if r == 2 else [], sha256_hex(b"%d" % r))


def test_receipt_done_only_after_durable_checkpoint(tmp_path):
    path = str(tmp_path / "a.log")
    with RewardLog(path, Identity.generate(), batch_size=1000, flush_interval_s=30.0) as log:
        r = log.append("join", {"peer": "x"})
        assert not r.done() and log.durable_size == 2
        log.flush()
        assert r.done() and r.wait(0) == 2
        assert log.durable_size == 4  # the join and the checkpoint closing its batch
        assert types(read_lines(path))[-2:] == ["join", "checkpoint"]


def test_append_rules(tmp_path):
    with RewardLog(str(tmp_path / "a.log"), Identity.generate()) as log:
        with pytest.raises(LedgerError):
            log.append("checkpoint", {})
        with pytest.raises(LedgerError):
            log.append("join", {"x": float("nan")})
        with pytest.raises(LedgerError):
            log.append("join", ["not", "a", "mapping"])
        log.append_round(_round_body(3)).wait()
        with pytest.raises(LedgerError, match="round"):
            log.append_round(_round_body(3))
    with pytest.raises(LedgerError, match="closed"):
        log.append("join", {"peer": "x"})


def test_concurrent_appends_from_threads(tmp_path):
    path = str(tmp_path / "a.log")
    seqs: list[int] = []
    lock = threading.Lock()
    with RewardLog(path, Identity.generate(), batch_size=64, flush_interval_s=0.001) as log:
        def work(t):
            mine = [log.append("verdict", {"t": t, "k": k}) for k in range(500)]
            with lock:
                seqs.extend(r.wait(30) for r in mine)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(set(seqs)) == 2000
    res = verify_log(path)
    assert res["ok"] and res["records"] == 2 + 2000 + res["checkpoints"] - 1


def test_inclusion_proofs(tmp_path):
    path = str(tmp_path / "a.log")
    with RewardLog(path, Identity.generate()) as log:
        for k in range(37):
            log.append("join", {"peer": f"p{k}"})
        log.flush()
        lines = read_lines(path)
        cp = parse_line(lines[-1])
        for i in (0, 1, 5, 20, 37):
            proof = log.inclusion_proof(i)
            assert proof["root"] == cp.body["merkle_root"] and proof["size"] == cp.seq
            path_b = [bytes.fromhex(p) for p in proof["path"]]
            leaf = parse_line(lines[i]).hash
            assert leaf.hex() == proof["leaf"]
            assert verify_inclusion(leaf, i, proof["size"], path_b, bytes.fromhex(proof["root"]))
            assert not verify_inclusion(parse_line(lines[i + 1]).hash, i, proof["size"], path_b, bytes.fromhex(proof["root"]))
            if path_b:
                path_b[0] = bytes(32)
                assert not verify_inclusion(leaf, i, proof["size"], path_b, bytes.fromhex(proof["root"]))
        with pytest.raises(LedgerError):
            log.inclusion_proof(10_000)


def test_merkle_proofs_for_every_size_and_index():
    leaves = [bytes([i]) * 32 for i in range(33)]
    for size in range(1, 34):
        acc = MerkleAccumulator()
        for leaf in leaves[:size]:
            acc.add(leaf)
        root = acc.root()
        for i in range(size):
            assert verify_inclusion(leaves[i], i, size, inclusion_proof(leaves, i, size), root)
            assert not verify_inclusion(leaves[i], (i + 1) % size, size, inclusion_proof(leaves, i, size), root) or size == 1


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                    max_leaves=12))
def test_canonical_body_equals_canonical_json(value):
    body = {"v": value}
    assert canonical_body(body) == canonical_json(body)
    assert json.loads(canonical_body(body)) == json.loads(canonical_json(body))


def test_two_honest_peers_have_identical_round_chain_heads_and_diff_finds_doctored_round(tmp_path):
    a, b, c = (str(tmp_path / f"{n}.log") for n in "abc")
    heads = []
    for path, local in ((a, "alice"), (b, "bob")):
        with RewardLog(path, Identity.generate(), batch_size=3) as log:
            for r in range(6):
                log.append("join", {"peer": f"{local}-{r}", "region": "eu"})  # local events differ
                if local == "bob":
                    log.append("verdict", {"round": r, "subject": "peer1", "verifier": "bob", "passed": True})
                log.append_round(_round_body(r))
            heads.append(log.round_chain_head)
    assert heads[0] == heads[1] and heads[0] != "00" * 32
    assert diff_logs(a, b) is None
    assert verify_log(a)["ok"] and verify_log(b)["ok"]
    with RewardLog(c, Identity.generate()) as log:
        for r in range(6):
            log.append_round(_round_body(r, doctor=(r == 4)))
        assert log.round_chain_head != heads[0]
    assert diff_logs(a, c) == 4
    assert diff_logs(c, b) == 4


def test_diff_compares_the_rounds_both_peers_were_in(tmp_path):
    """A joiner's log starts at the round it joined and agrees with a founder's; a round missing in
    the middle of either log is still a disagreement."""
    full, joiner, gap = (str(tmp_path / f"{n}.log") for n in ("full", "joiner", "gap"))
    for path, rounds in ((full, range(6)), (joiner, range(2, 8)), (gap, [2, 3, 5])):
        with RewardLog(path, Identity.generate()) as log:
            for r in rounds:
                log.append_round(_round_body(r))
    assert diff_logs(full, joiner) is None and diff_logs(joiner, full) is None
    assert diff_logs(full, gap) == 4 and diff_logs(gap, joiner) == 4


def test_round_head_survives_reopen(tmp_path):
    path = str(tmp_path / "a.log")
    ident = Identity.generate()
    with RewardLog(path, ident) as log:
        for r in range(3):
            log.append_round(_round_body(r))
        head = log.round_chain_head
    with RewardLog(path, ident) as log:
        assert log.round_chain_head == head and log.rounds == 3
        with pytest.raises(LedgerError):
            log.append_round(_round_body(2))
        log.append_round(_round_body(3)).wait()
    assert verify_log(path)["ok"]
