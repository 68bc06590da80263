"""Tamper tests: every kind of edit to a reward log is caught at the right record index."""

from __future__ import annotations

import pytest

from dai_swarm.identity import Identity
from dai_swarm.rewards import verify_log
from dai_swarm.rewards.records import checkpoint_message, encode_line, parse_line

from ledger_helpers import build_log, line_hash, reencode, types, write_lines

# layout of build_log(batches=4, per_batch=5): 0 genesis, 1 checkpoint, then 4 x (5 joins + checkpoint)
TARGET = 9  # a join record in the middle of the second batch


@pytest.fixture()
def log(tmp_path):
    ident = Identity.generate()
    path = str(tmp_path / "rewards.log")
    lines = build_log(path, ident)
    assert types(lines)[TARGET] == "join" and types(lines)[TARGET + 1] == "join"
    return path, lines, ident


def test_clean_log_verifies(log):
    path, lines, ident = log
    res = verify_log(path, trusted_keys=[ident.public_key_hex])
    assert res["ok"] and res["first_bad"] is None
    assert res["records"] == len(lines) == 2 + 4 * 6
    assert res["checkpoints"] == 5 and res["writer"] == ident.public_key_hex
    assert verify_log(path, full=False)["ok"]


def test_edit_without_crc_fix(log):
    path, lines, _ = log
    lines[TARGET] = lines[TARGET].replace(b"peer-1", b"peer-X")
    write_lines(path, lines)
    res = verify_log(path)
    assert (res["ok"], res["first_bad"], res["reason"]) == (False, TARGET, "bad CRC")


def test_edit_with_crc_fixed(log):
    path, lines, _ = log
    rec = parse_line(lines[TARGET])
    lines[TARGET] = reencode(lines[TARGET], body=dict(rec.body, peer="attacker"))
    write_lines(path, lines)
    res = verify_log(path)
    assert not res["ok"] and res["first_bad"] == TARGET, res
    assert "altered" in res["reason"]


def test_edit_last_record_of_a_batch_with_crc_fixed(log):
    path, lines, _ = log
    last_join = 12  # followed directly by the batch's checkpoint
    assert types(lines)[last_join + 1] == "checkpoint"
    lines[last_join] = reencode(lines[last_join], body={"peer": "attacker"})
    write_lines(path, lines)
    assert verify_log(path)["first_bad"] == last_join


def test_delete(log):
    path, lines, _ = log
    del lines[TARGET]
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == TARGET and "gap" in res["reason"]


def test_delete_and_renumber(log):
    path, lines, _ = log
    out = lines[:TARGET]
    for k, line in enumerate(lines[TARGET + 1 :]):
        out.append(reencode(line, seq=TARGET + k))
    write_lines(path, out)
    assert verify_log(path)["first_bad"] == TARGET


def test_reorder(log):
    path, lines, _ = log
    lines[TARGET], lines[TARGET + 1] = lines[TARGET + 1], lines[TARGET]
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == TARGET and "out of order" in res["reason"]


def test_insert_forged_record(log):
    path, lines, _ = log
    forged = encode_line(TARGET, line_hash(lines[TARGET - 1]), "join", {"peer": "attacker", "round": 1})
    lines.insert(TARGET, forged)
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == TARGET and "inserted" in res["reason"], res


def test_duplicate(log):
    path, lines, _ = log
    lines.insert(TARGET + 1, lines[TARGET])
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == TARGET + 1 and "duplicate" in res["reason"]


def test_truncate_mid_record(log):
    path, lines, _ = log
    cut = lines[:TARGET] + [lines[TARGET][:30]]
    write_lines(path, cut)
    res = verify_log(path)
    assert res["first_bad"] == TARGET and res["recoverable"]


def test_truncate_at_record_boundary_leaves_unsigned_records(log):
    path, lines, _ = log
    write_lines(path, lines[: TARGET + 1])  # last checkpoint before is index 7
    res = verify_log(path)
    assert res["first_bad"] == 8 and "after the last signed checkpoint" in res["reason"]
    assert res["recoverable"]


def test_truncate_whole_batches_needs_published_head(log):
    path, lines, _ = log
    full_size, head = len(lines), line_hash(lines[-1]).hex()
    write_lines(path, lines[:14])  # ends with a checkpoint: self-consistent
    assert verify_log(path)["ok"]
    res = verify_log(path, known_head=(full_size, head))
    assert not res["ok"] and res["first_bad"] == 14 and "published head" in res["reason"]
    assert not res["recoverable"]


def test_checkpoint_signed_with_wrong_key(log):
    path, lines, ident = log
    cp = 13
    rec = parse_line(lines[cp])
    other = Identity.generate()
    body = dict(rec.body, signer=other.public_key_hex)
    body["sig"] = other.sign(checkpoint_message(body)).hex()
    lines[cp] = encode_line(rec.seq, rec.prev, "checkpoint", body)
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == cp and "not by the log's writer" in res["reason"]


def test_checkpoint_with_forged_signature(log):
    path, lines, ident = log
    cp = 13
    rec = parse_line(lines[cp])
    other = Identity.generate()
    lines[cp] = encode_line(rec.seq, rec.prev, "checkpoint", dict(rec.body, sig=other.sign(b"x").hex()))
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == cp and res["reason"] == "bad checkpoint signature"


def test_log_by_non_participant_rejected(log):
    path, lines, ident = log
    others = [Identity.generate().public_key_hex for _ in range(3)]
    res = verify_log(path, trusted_keys=others)
    assert not res["ok"] and res["first_bad"] == 0 and "not a participant" in res["reason"]
    assert verify_log(path, trusted_keys=others + [ident.public_key_hex])["ok"]


def test_batch_appended_and_signed_by_non_participant_rejected(log):
    path, lines, ident = log
    attacker = Identity.generate()
    seq, prev = len(lines), line_hash(lines[-1])
    forged = encode_line(seq, prev, "join", {"peer": "attacker", "round": 9})
    cp_body = {"head": line_hash(forged).hex(), "merkle_root": "00" * 32, "round_head": "00" * 32, "rounds": 0,
               "signer": attacker.public_key_hex, "size": seq + 1}
    cp_body["sig"] = attacker.sign(checkpoint_message(cp_body)).hex()
    cp = encode_line(seq + 1, line_hash(forged), "checkpoint", cp_body)
    write_lines(path, lines + [forged, cp])
    res = verify_log(path, trusted_keys=[ident.public_key_hex, attacker.public_key_hex])
    assert not res["ok"] and res["first_bad"] == seq + 1 and "writer" in res["reason"]


def test_checkpoint_with_wrong_merkle_root_caught_in_full_mode(log):
    path, lines, ident = log
    cp = 13
    rec = parse_line(lines[cp])
    body = dict(rec.body, merkle_root="11" * 32)
    body["sig"] = ident.sign(checkpoint_message(body)).hex()
    lines[cp] = encode_line(rec.seq, rec.prev, "checkpoint", body)
    for k in range(cp + 1, len(lines)):  # re-chain the rest like a dishonest writer would
        lines[k] = reencode(lines[k], prev=line_hash(lines[k - 1]))
        if parse_line(lines[k]).type == "checkpoint":
            r = parse_line(lines[k])
            b = dict(r.body, head=r.prev.hex())
            b["sig"] = ident.sign(checkpoint_message(b)).hex()
            lines[k] = encode_line(r.seq, r.prev, "checkpoint", b)
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == cp and "Merkle" in res["reason"]


def test_garbage_in_the_middle(log):
    path, lines, _ = log
    lines.insert(TARGET, b"\x00" * 50 + b"\n")
    write_lines(path, lines)
    res = verify_log(path)
    assert res["first_bad"] == TARGET and not res["recoverable"]
