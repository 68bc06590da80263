"""Baseline worker: one peer training a dai_swarm task with ``hivemind.Optimizer``, one of the
settings in :data:`PRESETS` (``--preset``; default: hivemind's defaults).

Run by :mod:`benchmarks.churn` as one process per peer (same task, same sample budget, same churn
schedule as the dai_swarm peers). Settings: ``target_batch_size`` (required by hivemind; the churn
benchmark passes the number of samples a full dai_swarm swarm trains in one round),
``batch_size_per_step`` = the task's batch size, ``optimizer`` = the task's inner optimiser
(AdamW); preset ``defaults`` leaves everything else at hivemind's defaults (``use_local_updates=False``: gradients are
accumulated to ``target_batch_size`` and all-reduced, then one optimiser step per epoch;
``grad_compression`` / ``state_averaging_compression`` = ``NoCompression``; ``matchmaking_time``
15 s; ``average_state_every`` 1). ``bitsandbytes.functional`` is imported first, as SPEC §10
asks, although the default compression does not use it.

``--attack sign_flip|scale10|scale1000`` makes this worker Byzantine in the way its dai_swarm
counterpart is: its gradients are multiplied by -1, 10 or 1000 before hivemind accumulates and
all-reduces them (hivemind.Optimizer has no defence against this by default).

Each worker appends one JSON line per event to ``--log-file`` (flushed, so a SIGKILLed worker
leaves its data): ``{"t", "epoch", "samples_local", ...}`` per new epoch, and on the observer
(``--evaluate``) ``val_loss`` of its current parameters at each new epoch. Samples of the swarm
at epoch ``e`` are counted as ``e x target_batch_size`` (what hivemind's tracker counts).

    python -m benchmarks.hivemind_baseline --task tinylm-small --run-id hm --t0 1700000000 \
        --target-batch-size 512 --until-samples 20000 --log-file w0.jsonl --address-file w0.addr
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Sequence

from dai_swarm.dht.address_file import write_atomic

__all__ = ["GRADIENT_ATTACKS", "PRESETS", "add_worker_arguments", "main"]

GRADIENT_ATTACKS = {"sign_flip": -1.0, "scale10": 10.0, "scale1000": 1000.0}  # kind -> gradient factor

#: The settings a hivemind user would try (the churn benchmark sweeps them and reports the best).
#: ``tbs_factor`` scales the target batch size the benchmark passes (one full dai_swarm round's
#: samples); the other keys go to ``hivemind.Optimizer`` (``compression``: state and gradient
#: averaging, ``none`` or ``fp16``).
PRESETS: dict[str, dict] = {
    # hivemind's defaults: accumulate to the target batch, all-reduce gradients, one global AdamW step
    "defaults": {"tbs_factor": 1.0},
    # 5x more global steps: a smaller target batch, with matchmaking short enough to keep up with it
    "small-batch": {"tbs_factor": 0.2, "matchmaking_time": 2.0, "averaging_timeout": 10.0},
    # DiLoCo-like: every worker steps AdamW on each of its batches, parameters averaged each epoch
    "local-updates": {"tbs_factor": 1.0, "use_local_updates": True, "matchmaking_time": 3.0,
                      "averaging_timeout": 15.0},
    # the same with fp16 averaging (half the bytes)
    "local-updates-fp16": {"tbs_factor": 1.0, "use_local_updates": True, "matchmaking_time": 3.0,
                           "averaging_timeout": 15.0, "compression": "fp16"},
}


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every baseline worker of the churn benchmark takes (this one and
    :mod:`benchmarks.diloco_baseline`): task, run, addresses, log, start time, budget, seeds, threads."""
    p.add_argument("--task", default="tinylm-small")
    p.add_argument("--run-id", required=True)
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--host-maddrs", nargs="*", default=["/ip4/127.0.0.1/tcp/0"])
    p.add_argument("--address-file", default=None)
    p.add_argument("--log-file", required=True)
    p.add_argument("--t0", type=float, default=None, help="start training at this Unix time")
    p.add_argument("--until-samples", type=int, required=True, help="stop once the swarm's samples reach this")
    p.add_argument("--seed", type=int, default=0, help="model seed (same for every worker)")
    p.add_argument("--data-seed", type=int, default=0, help="this worker's batch sampler seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--evaluate", action="store_true", help="evaluate at each new epoch (the observer)")


def optimizer_options(preset: str) -> dict:
    """``hivemind.Optimizer`` keyword arguments of a preset (no ``tbs_factor``); KeyError if unknown."""
    from hivemind.compression import Float16Compression

    opts = {k: v for k, v in PRESETS[preset].items() if k not in ("tbs_factor", "compression")}
    if PRESETS[preset].get("compression") == "fp16":
        opts["grad_compression"] = opts["state_averaging_compression"] = Float16Compression()
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Train until the swarm's epoch x target_batch_size reaches ``--until-samples``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.hivemind_baseline", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m benchmarks.hivemind_baseline --task tinylm-small --run-id hm "
                                       "--target-batch-size 512 --until-samples 20000 --log-file w0.jsonl")
    add_worker_arguments(p)
    p.add_argument("--target-batch-size", type=int, required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="defaults",
                   help="hivemind.Optimizer settings (see PRESETS); --target-batch-size is passed already scaled")
    p.add_argument("--attack", choices=sorted(GRADIENT_ATTACKS), default=None,
                   help="FOR BENCHMARKS ONLY: be a Byzantine worker (scale this worker's gradients)")
    args = p.parse_args(argv)

    import bitsandbytes.functional  # noqa: F401  (SPEC §10: before hivemind's codecs are set up)
    import hivemind
    import torch

    from dai_swarm.tasks import load_task

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=args.host_maddrs, start=True)
    if args.address_file:
        write_atomic(args.address_file, "\n".join(str(m) for m in dht.get_visible_maddrs()) + "\n")
    model = task.build_model(args.seed)
    # hivemind hands the factory param-group dicts; rebuild the task's optimiser from its groups
    ref = task.inner_optimizer(model.parameters())
    groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")} for g in ref.param_groups]
    hyper = {k: ref.defaults[k] for k in ("lr", "betas", "eps") if k in ref.defaults}
    opt = hivemind.Optimizer(dht=dht, run_id=args.run_id, target_batch_size=args.target_batch_size,
                             batch_size_per_step=task.batch_size, optimizer=lambda gs: type(ref)(gs, **hyper),
                             params=groups, verbose=False, **optimizer_options(args.preset))
    log = open(args.log_file, "a", buffering=1)

    def emit(**row) -> None:
        log.write(json.dumps({"t": time.time(), **row}) + "\n")

    if args.t0 is not None and time.time() < args.t0:
        time.sleep(args.t0 - time.time())
    gen = torch.Generator().manual_seed(args.data_seed)
    n_items = len(task.dataset)
    epoch, local_samples, steps = -1, 0, 0
    emit(event="start", epoch=opt.local_epoch)
    try:
        while opt.local_epoch * args.target_batch_size < args.until_samples:
            idx = torch.randint(n_items, (task.batch_size,), generator=gen).tolist()
            loss = task.loss(model, task.get_batch(idx))
            loss.backward()
            if args.attack:
                with torch.no_grad():
                    for param in model.parameters():
                        if param.grad is not None:
                            param.grad.mul_(GRADIENT_ATTACKS[args.attack])
            opt.step()
            opt.zero_grad()
            local_samples += task.batch_size
            steps += 1
            if opt.local_epoch != epoch:
                epoch = opt.local_epoch
                row = {"event": "epoch", "epoch": epoch, "samples_local": local_samples, "steps": steps,
                       "train_loss": loss.detach().item()}
                if args.evaluate:
                    with torch.no_grad():
                        row["val_loss"] = float(task.evaluate(model)["loss"])
                emit(**row)
    finally:
        emit(event="end", epoch=opt.local_epoch, samples_local=local_samples, steps=steps)
        log.close()
        opt.shutdown()
        dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
