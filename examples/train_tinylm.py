"""Train the tiny language model with the library, as one peer of a swarm (~30 lines).

    python examples/train_tinylm.py                                # start a new swarm
    python examples/train_tinylm.py --initial-peers /ip4/...      # join one (the first one prints this)
"""
import argparse

import torch

import dai_swarm

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--run-id", default="tinylm-example")
p.add_argument("--task", default="tinylm-small")
p.add_argument("--initial-peers", nargs="*", default=[])
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--round-s", type=float, default=10.0)
args = p.parse_args()
torch.set_num_threads(1)

task = dai_swarm.load_task(args.task)
with dai_swarm.Swarm(task, run_id=args.run_id, initial_peers=args.initial_peers, round_s=args.round_s) as swarm:
    print("others join with: --initial-peers", *swarm.initial_peers, flush=True)
    opt = swarm.optimizer()
    for batch in swarm.batches(max_rounds=args.rounds):
        loss = task.loss(swarm.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    status = swarm.status()
print(f"round {status['round']}  val loss {status['val_loss']:.4f}  state {status['state_hash'][:12]}")
