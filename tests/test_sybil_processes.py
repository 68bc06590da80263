"""The Sybil flood against REAL ``dai-swarm peer`` processes: no number of fresh keys captures the swarm.

One swarm on the regression task: p0, p1, p2 honest founders (established peers, as the trust
model recommends), p3 a cheater (``sign_flip``), p4 running ``--attack sybil``
(:mod:`dai_swarm.verification.sybil`): every round 1,000 fresh keys vote for a poisoned state and
50 of them offer it for download, 40 fresh keys with live peer records announce sign-flipped
updates, and one announces an update 64x the payload cap; and a joiner p5 that starts at round 5.
The attacker runs at nice 19, as if on a machine of its own: its records still reach, load and
are checked by the honest peers' DHTs, but it does not take their CPU (at nice 0 it published
3-4 rounds of attack by round 12; at nice 19, 11-12). What the tests assert is what the trust
model guarantees whatever the load: no honest peer (the joiner included) ever holds a state the
attacker chose, no honest peer is slashed, and the oversized update is refused by its declared
size and never requested.

What they do not assert, measured instead (docs/design.md, "Trust model"; the closing notes): on
this 2-core machine, with six peer processes and the attacker on it, the flood is a denial of
service, not a capture: honest peers spend their rounds reading and checking the flood, miss
rounds, and the val loss at round 10 was 0.19-0.22 against 0.027-0.031 in clean runs with the
same keys. One run went to 5.84 at round 10: the honest updates missed the base and the 40
fresh-key updates were the whole round; since such a round makes no step (docs/design.md, "Trust
model"), one run ended round 10 at 0.056. The cheater went unslashed in both runs: its updates were
failed by three verifiers, but 7-12 s after their rounds closed (6 s rounds, verdicts voted two
rounds later), because each check's DHT write held up the next check. With verdicts written once
per round (spotcheck.PUBLISH_WITHIN_S) the next two runs had verdicts within 0.75 s and val losses
of 0.031 and 0.049 at round 10; the cheater was slashed in base 7 in the first, and in the second
first drawn for a check in round 8 and not yet slashed at round 12. With three founders, the
newcomer norm cap and the attacker at nice 19 (this harness), three runs per arm: the flood's mean
val loss was +1% / +11% / +13% over the clean mean at rounds 8 / 9 / 10. With the newcomer direction
gate (the flood's updates weigh 0), ``python -m benchmarks.sybil_flood --runs 3``: +15% / +33% at rounds
8 / 9; with the waits for keys without standing gone (``votes.who_counts``), +1% / +16%, the cheater slashed
in base 5 in every run; what is left is the time the flood's records take on the honest peers' cores.
"""

from __future__ import annotations

import re

import pytest

from test_attacks_processes import rejection_counts

from benchmarks.attack_swarm import run_swarm

# the flood is a denial of service on 2 cores: beside an 8-peer attack swarm the honest peers fell
# apart (measured once xdist groups worked again): it runs in the 8-peer swarms' group, one at a time
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("swarm8")]

UNTIL = 12
JOINER, JOIN_ROUND = 5, 5
ATTACKER = 4
HONEST = (0, 1, 2, 5)
POISONED_RE = re.compile(r"poisoned state ([0-9a-f]{64})")


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    return run_swarm(str(tmp_path_factory.mktemp("attacked")), [None, None, None, "sign_flip", "sybil", None],
                     until_round=UNTIL, run_id="sybil-attacked", late={JOINER: JOIN_ROUND}, founders=3,
                     nice={ATTACKER: 19})


def _poisoned(attacked) -> set[str]:
    found = set(POISONED_RE.findall(attacked[ATTACKER]["log"]))
    # the attacker did attack, round after round (it signs ~1,000 records a round; alone beside the swarm at
    # nice 19 it attacked 11-12 rounds of 12, and at nice 0 it starved itself to 3-4)
    assert len(found) >= 3, attacked[ATTACKER]["log"][-3000:]
    assert attacked[ATTACKER]["status"]["counters"].get("sybil_records", 0) >= 3000
    return found


def test_no_honest_peer_or_joiner_ever_holds_a_state_the_fresh_keys_chose(attacked):
    poisoned = _poisoned(attacked)
    for i in HONEST:
        held = {h["state_hash"] for h in attacked[i]["history"]}
        assert not held & poisoned, (i, attacked[i]["log"][-2000:])
        assert attacked[i]["status"], attacked[i]["log"][-2000:]
        assert attacked[i]["status"]["trust"]["slashed"] is False
    print("joiner counters:", attacked[JOINER]["status"].get("counters"))


def test_oversized_announcement_from_a_fresh_key_is_refused_and_never_fetched(attacked):
    _poisoned(attacked)
    assert attacked[ATTACKER]["status"]["counters"].get("sybil_oversized_requests", 0) == 0
    reasons = rejection_counts([attacked[i] for i in HONEST])
    assert reasons.get("too_large", 0) >= 1, reasons
