"""A ``sparse`` run (chunked top-k with error feedback) of REAL ``dai-swarm peer`` processes: three
honest peers and one that commits to a falsified feedback buffer (``forged_feedback``).

Every update carries its buffer commitments (``ef``); verifiers fetch the leaf tables and sampled
chunks of the stored buffer blobs from the author over the payload protocol and check them
(verification/sparse_verify.py). With ``--checks-per-update 8`` every peer checks every included
update of the others (see tests/test_attacks_processes.py for why no draw is involved), and the
forgery touches every chunk, so every check of it fails and it is slashed within the same bound
as the catalogue's attacks; honest peers, on equal thread counts, pass exactly and are never
slashed.
"""

from __future__ import annotations

import pytest
from test_attacks_processes import SLASH_BOUND, check_honest, report

from benchmarks.attack_swarm import run_swarm

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("swarm8")]


def test_sparse_run_trains_verifies_and_slashes_a_forged_feedback_buffer(tmp_path):
    # four peers, not eight: the founders' crowd is up well within 18 s of the run's creation (START_IN_S is
    # sized for eight)
    peers = run_swarm(str(tmp_path), [None, None, None, "forged_feedback"], until_round=10, run_id="sparse-ef",
                      extra_args=("--codec", "sparse"), start_in_s=18.0)
    check_honest(peers)
    res = report(peers, "sparse")
    assert res["forged_feedback"]["slashed_in_base"] is not None, [p["log"][-3000:] for p in peers[:1]]
    assert res["forged_feedback"]["slashed_in_base"] <= SLASH_BOUND, res
    for p in (p for p in peers if p["attack"] is None):  # sparse updates (with ef) were included every round
        assert max(h["updates"] for h in p["history"]) >= 3, p["history"][-3:]
        assert p["status"]["trust"]["checks"] > 0, p["status"]["trust"]
