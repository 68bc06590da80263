"""Hugging Face accelerate + dai_swarm: accelerate places the model, the swarm owns the optimizer.

    python examples/train_with_accelerate.py --rounds 3

On a GPU machine ``Accelerator()`` puts the model on the GPU and the loop is unchanged; the
swarm exchanges updates on the CPU (see docs/faq.md, "GPUs").
"""
import argparse

import torch
from accelerate import Accelerator

import dai_swarm

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--run-id", default="accelerate-example")
p.add_argument("--task", default="regression")
p.add_argument("--initial-peers", nargs="*", default=[])
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--round-s", type=float, default=4.0)
args = p.parse_args()
torch.set_num_threads(1)

accelerator = Accelerator(cpu=not torch.cuda.is_available())
task = dai_swarm.load_task(args.task)
with dai_swarm.Swarm(task, run_id=args.run_id, initial_peers=args.initial_peers, round_s=args.round_s) as swarm:
    model, opt = accelerator.prepare(swarm.model, swarm.optimizer())
    for batch in swarm.batches(max_rounds=args.rounds):
        batch = tuple(t.to(accelerator.device) for t in batch) if isinstance(batch, tuple) else batch
        loss = task.loss(model, batch)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    status = swarm.status()
print(f"device {accelerator.device}  round {status['round']}  val loss {status['val_loss']:.4f}")
