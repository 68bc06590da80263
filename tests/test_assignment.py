"""Hash-derived batch assignment: deterministic everywhere, unsteerable, well spread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from dai_swarm.errors import ConfigError
from dai_swarm.verification.assignment import assign, samples_for

PEER = "ab" * 32
ARGS = dict(run_id="tinylm-42", seed=7, peer=PEER, round=3, step=5, batch_size=16, dataset_len=10_000)


GOLDEN = [4640, 1419, 7504, 8704, 3988, 179, 8895, 5989, 6018, 7974, 3735, 3609, 7366, 4613, 833, 2445]


def test_golden_value_pins_the_algorithm():
    # Changing this list changes which batches every verifier expects: bump the domain tag instead.
    assert assign(**ARGS) == GOLDEN


def test_same_in_another_process_with_other_hash_seed():
    code = ("import json; from dai_swarm.verification.assignment import assign; "
            f"print(json.dumps(assign(**{ARGS!r})))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         check=True)
    assert json.loads(out.stdout) == assign(**ARGS)


def test_distinct_indices_in_range():
    for n, b in ((10, 10), (1000, 999), (7, 1), (2**40, 64)):
        idx = assign("r", 0, PEER, 0, 0, b, n)
        assert len(idx) == b and len(set(idx)) == b and all(0 <= i < n for i in idx)
    assert sorted(assign("r", 0, PEER, 0, 0, 10, 10)) == list(range(10))


@pytest.mark.parametrize("field, value", [
    ("run_id", "other"), ("seed", 8), ("peer", "cd" * 32), ("round", 4), ("step", 6),
    ("dataset_len", 10_001),
])
def test_every_input_changes_the_batch(field, value):
    assert assign(**(ARGS | {field: value})) != assign(**ARGS)
    assert assign(**ARGS, salt="base-hash") != assign(**ARGS)


def test_near_uniform_coverage():
    n, b = 200, 10
    counts = Counter()
    draws = 0
    for peer in ("01", "02", "03", "04"):
        for r in range(25):
            for s in range(10):
                counts.update(assign("cov", 1, peer, r, s, b, n))
                draws += b
    expected = draws / n  # 100 per index
    assert len(counts) == n, "every row is used"
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(n))
    # chi-square with 199 d.o.f.: mean 199, sd ~20; 300 is > 5 sd away for a biased sampler
    assert chi2 < 300, chi2
    assert max(counts.values()) < 2 * expected and min(counts.values()) > expected / 2


def test_batches_of_different_peers_barely_overlap():
    a = set(assign("r", 0, "01", 0, 0, 256, 100_000))
    b = set(assign("r", 0, "02", 0, 0, 256, 100_000))
    assert len(a & b) < 10  # expected overlap ~0.66


def test_samples_for_is_the_list_of_step_batches():
    batches = samples_for("r", 0, PEER, 2, 4, 8, 500)
    assert batches == [assign("r", 0, PEER, 2, s, 8, 500) for s in range(4)]
    assert samples_for("r", 0, PEER, 2, 0, 8, 500) == []
    with pytest.raises(ConfigError):
        samples_for("r", 0, PEER, 2, -1, 8, 500)


@pytest.mark.parametrize("bad", [
    dict(run_id=""), dict(peer=""), dict(seed=1.0), dict(round=-1), dict(step=True),
    dict(batch_size=0), dict(dataset_len=0), dict(batch_size=11, dataset_len=10),
])
def test_bad_arguments_raise_config_error(bad):
    with pytest.raises(ConfigError):
        assign(**(ARGS | bad))
    with pytest.raises(ConfigError):
        assign(**ARGS, salt=None)
