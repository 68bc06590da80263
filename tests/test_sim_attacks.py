"""The attack catalogue's update-tampering kinds against the round machine, in the simulator.

The simulator drives every peer through the same :class:`~dai_swarm.optim.machine.RoundMachine`
the real peer runs, trains for real on the ``regression`` task, and spot-checks with the real
verifier code (:func:`~dai_swarm.verification.recompute.recompute_update`, the reputation rules):
only the transport is simulated. Here every included update is checked (``check_prob = 1``) by two
of the other four peers, at least one of them honest (there are two attackers), so each attacker
is failed at the close of its first included round; the other members re-check that fail at their
next close (as the real verifier's scan does), which outweighs the other attacker's lying pass,
and the attacker is slashed a verdict lag later. Which peers check depends on the update's digest,
hence on the platform's float results: without the re-checks the second attacker drew its mate as
a checker in seven rounds in a row on one machine and was never slashed. With them no draw decides.

The kinds below act only on the tensors, the batches or the encoded bytes of the attacker's own
update, which the simulator applies exactly as the real peer does. Kinds that need a live peer
(``lazy``, ``replay``, ``copy``, ``freeride``, forged verdicts, malformed payloads, and ``alie`` /
``ipm`` with the other peers' real updates) run against real ``dai-swarm peer`` processes in
``test_attacks_processes.py``.
"""

from __future__ import annotations

import pytest

from dai_swarm.sim import SimConfig, Simulator

#: tensor, batch and byte attacks the simulator applies as the real peer does
SIM_KINDS = ["sign_flip", "scale1000", "scale10", "gaussian", "label_flip"]


@pytest.mark.parametrize("kind", SIM_KINDS)
def test_update_attack_is_slashed_and_no_honest_peer_is(kind):
    cfg = SimConfig(peers=5, regions=1, rounds=8, round_s=10.0, byzantine=0.4, attack=kind, check_prob=1.0,
                    max_inner_steps=2, seed=3, evaluate=False)
    sim = Simulator(cfg)
    sim.run()
    s = sim.summary()
    assert s["byzantine_peers"] == 2
    # both attackers slashed, nobody else; every round agreed on one base
    assert s["slashed_byzantine"] == 2 and s["slashes"] == 2, (kind, s["slashes"], s["slashed_byzantine"])
    first = min(r["round"] for r in sim.rows if r["slashed_byzantine"])
    assert first <= 6, (kind, first)
    assert all(r["regions_in_agreement"] == r["regions"] for r in sim.rows)
    # once slashed, they earn nothing more: the honest peers hold most of the rewards
    assert s["rewards"]["honest"] > s["rewards"]["byzantine"]
