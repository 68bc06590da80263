"""Baseline worker: one peer training a dai_swarm task with DiLoCo on hivemind, the way OpenDiLoCo
(``open_diloco/hivemind_diloco.py``) does it, written after it here: no verification.

Every worker keeps the outer parameters θ and an outer ``torch.optim.SGD(lr, momentum, nesterov=True)``
(default 0.6 / 0.9: the outer step of dai_swarm's dense codecs, ``dai_swarm.swarm.Swarm``), and one
inner optimiser (``task.inner_optimizer``, AdamW) that lives for the whole run: OpenDiLoCo never resets
it, it only copies θ back into the model after each outer step. One outer step:

1. ``--inner-steps H`` inner steps on this worker's own batches (the task's batch size, ``--data-seed``);
2. pseudo-gradient Δ = θ − θ_local, multiplied by ``GRADIENT_ATTACKS[--attack]`` on a Byzantine worker;
3. Δ into a ``hivemind.averaging.DecentralizedAverager`` and an all-reduce (uniform weights, as
   OpenDiLoCo) with whoever matched: as OpenDiLoCo, matchmaking (``averager.step(gather={samples,
   epoch}, require_trigger=True)``) starts when the remaining inner steps should take at most
   ``--matchmaking-time``, and the all-reduce is triggered once Δ is written; ``--compression fp16``
   (default; OpenDiLoCo reports fp16 all-reduce) or ``none``. On failure, or after
   ``--averaging-timeout``, the worker uses its own Δ alone and logs why;
4. θ.grad = averaged Δ, outer step, θ copied into the model.

The swarm's samples grow by the sum of the gathered sample counts of the group (own count alone after
a failed step); the worker stops once they reach ``--until-samples``. State (θ, outer momentum, epoch,
samples) is served to peers through hivemind's ``load_state_from_peers`` (msgpack metadata + tensors,
fp32), priority = epoch: a worker that joins after ``--t0``, or that finds a groupmate at a later
epoch, downloads the most advanced peer's state (as hivemind.Optimizer does when out of sync).
OpenDiLoCo's optimiser also averages parameters every epoch through hivemind's state averager; this
baseline all-reduces θ together with Δ (``--average-params``, default on), so that a partial all-reduce
(parts that did not arrive keep a worker's own values) cannot leave the workers apart for good: without
it, workers drifted apart and the loss diverged under emulated WAN caps. It doubles the all-reduce bytes.

JSON lines in ``--log-file`` (flushed): ``start``, one ``epoch`` row per outer step (``epoch``,
``samples`` of the swarm, ``samples_local``, ``steps``, ``train_loss``, ``group_size``, ``averaged``,
``avg_s``, ``error``; ``val_loss`` with ``--evaluate``: the observer, also in ``start``), ``load_state``
(``why``, ``ok``, ``error``) after each state download, ``end``.

    python -m benchmarks.diloco_baseline --task tinylm-small --run-id dl --t0 1700000000 \\
        --inner-steps 20 --until-samples 20000 --log-file w0.jsonl --address-file w0.addr
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Sequence

import torch

from dai_swarm.dht.address_file import write_atomic

from .hivemind_baseline import GRADIENT_ATTACKS, add_worker_arguments

__all__ = ["OUTER_LR", "OUTER_MOMENTUM", "OuterState", "contributed_delta", "group_figures", "main",
           "pseudo_gradient"]

#: the outer step of dai_swarm's dense codecs (``dai_swarm.swarm.Swarm``: int8/fp32 runs, Nesterov)
OUTER_LR, OUTER_MOMENTUM = 0.6, 0.9
_MAX_GATHERED_SAMPLES = 1 << 30  # a groupmate's gathered count above this is malformed (counted 0)


def pseudo_gradient(outer: Sequence[torch.Tensor], local: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Δ = θ − θ_local, tensor by tensor (new tensors, no autograd)."""
    with torch.no_grad():
        return [o.detach() - p.detach() for o, p in zip(outer, local)]


def contributed_delta(delta: Sequence[torch.Tensor], attack: str | None) -> list[torch.Tensor]:
    """The Δ this worker puts into the all-reduce: ``delta`` scaled by ``GRADIENT_ATTACKS[attack]``
    (sign_flip -1, scale10 10, scale1000 1000), or unchanged copies when ``attack`` is None."""
    if attack is not None and attack not in GRADIENT_ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {sorted(GRADIENT_ATTACKS)}")
    factor = GRADIENT_ATTACKS[attack] if attack else 1.0
    return [d.detach().clone().mul_(factor) for d in delta]


def group_figures(gathered: Any) -> tuple[int, int, int]:
    """``(group size, samples, highest epoch)`` from ``averager.step``'s gathered dict (peer id ->
    ``{"samples", "epoch"}``); a malformed entry counts as a member with 0 samples at epoch -1."""
    if not isinstance(gathered, dict):
        return 0, 0, -1
    samples, epoch = 0, -1
    for value in gathered.values():
        if isinstance(value, dict):
            n, e = value.get("samples"), value.get("epoch")
            if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_GATHERED_SAMPLES:
                samples += n
            if isinstance(e, int) and not isinstance(e, bool):
                epoch = max(epoch, e)
    return len(gathered), samples, epoch


class OuterState:
    """θ, the outer Nesterov SGD and the progress counters, guarded by one lock (peers download the
    state from hivemind's background thread while the training thread steps)."""

    def __init__(self, model: torch.nn.Module, lr: float, momentum: float):
        self.model = model
        self.params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum, nesterov=momentum > 0)
        self.lock = threading.Lock()
        self.epoch = self.samples = 0

    def _momentum(self) -> list[torch.Tensor]:
        return [self.opt.state.get(p, {}).get("momentum_buffer", None) for p in self.params]

    def snapshot(self) -> tuple[dict, list[torch.Tensor], None]:
        """``(metadata, tensors, None)`` for ``DecentralizedAverager.get_current_state``: copies of θ
        and the momentum buffers (zeros before the first step), epoch and samples."""
        with self.lock:
            bufs = [b if b is not None else torch.zeros_like(p) for b, p in zip(self._momentum(), self.params)]
            tensors = [t.detach().clone() for t in (*self.params, *bufs)]
            return {"epoch": self.epoch, "samples": self.samples}, tensors, None

    def load(self, metadata: Any, tensors: Sequence[torch.Tensor]) -> str | None:
        """Adopt a peer's snapshot; returns None, or why it was refused (nothing changed then)."""
        n = len(self.params)
        if not isinstance(metadata, dict) or not all(isinstance(metadata.get(k), int) for k in ("epoch", "samples")):
            return f"metadata is not {{epoch, samples}}: {str(metadata)[:80]}"
        if len(tensors) != 2 * n or any(t.shape != p.shape for t, p in zip(tensors, [*self.params, *self.params])):
            return f"{len(tensors)} tensors do not match {n} parameters and their momentum"
        if not all(torch.isfinite(t).all() for t in tensors):
            return "non-finite values"
        with self.lock, torch.no_grad():
            for p, t in zip(self.params, tensors[:n]):
                p.copy_(t)
            for p, t in zip(self.params, tensors[n:]):
                self.opt.state[p]["momentum_buffer"] = t.detach().clone().to(p.dtype)
            self.epoch, self.samples = metadata["epoch"], metadata["samples"]
            self._to_model()
        return None

    def set_params(self, tensors: Sequence[torch.Tensor]) -> None:
        """θ = ``tensors`` (the group's averaged parameters, before the outer step)."""
        with self.lock, torch.no_grad():
            for p, t in zip(self.params, tensors):
                p.copy_(t)

    def step(self, delta: Sequence[torch.Tensor], samples: int) -> None:
        """Outer step with θ.grad = ``delta``; the model gets θ; epoch + 1, samples + ``samples``."""
        with self.lock:
            for p, d in zip(self.params, delta):
                p.grad = d.to(p.dtype)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.epoch += 1
            self.samples += samples
            with torch.no_grad():
                self._to_model()

    def _to_model(self) -> None:
        for m, p in zip(self.model.parameters(), self.params):
            m.copy_(p)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diloco_baseline", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m benchmarks.diloco_baseline --task tinylm-small "
                                       "--run-id dl --inner-steps 20 --until-samples 20000 --log-file w0.jsonl")
    add_worker_arguments(p)
    p.add_argument("--inner-steps", type=int, default=20, help="inner steps H per outer step (default 20)")
    p.add_argument("--outer-lr", type=float, default=OUTER_LR)
    p.add_argument("--outer-momentum", type=float, default=OUTER_MOMENTUM)
    p.add_argument("--compression", choices=("none", "fp16"), default="fp16", help="all-reduce (default fp16)")
    p.add_argument("--average-params", action=argparse.BooleanOptionalAction, default=True,
                   help="all-reduce θ with Δ each step, so partial all-reduces cannot leave workers apart (default on)")
    p.add_argument("--matchmaking-time", type=float, default=3.0, help="seconds to gather a group (default 3)")
    p.add_argument("--averaging-timeout", type=float, default=30.0, help="give up averaging after (default 30)")
    p.add_argument("--load-state-timeout", type=float, default=30.0, help="state download limit (default 30)")
    p.add_argument("--attack", choices=sorted(GRADIENT_ATTACKS), default=None,
                   help="FOR BENCHMARKS ONLY: be a Byzantine worker (scale this worker's Δ before averaging)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train until the swarm's samples reach ``--until-samples``; 0 also after SIGTERM, 2 on bad arguments."""
    p = _parser()
    args = p.parse_args(argv)
    if args.inner_steps < 1 or args.until_samples < 1 or args.matchmaking_time <= 0 or args.outer_lr <= 0 \
            or args.averaging_timeout <= args.matchmaking_time or not 0 <= args.outer_momentum < 1:
        p.error("need --inner-steps >= 1, --until-samples >= 1, 0 < --matchmaking-time < --averaging-timeout, "
                "--outer-lr > 0 and 0 <= --outer-momentum < 1")

    importlib.import_module("bitsandbytes.functional")  # SPEC §10: before hivemind's codecs are set up
    import hivemind
    from hivemind.compression import Float16Compression, NoCompression

    from dai_swarm.errors import SwarmError
    from dai_swarm.tasks import load_task

    main_pid = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main_pid:  # a forked hivemind process: die as without this handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    torch.set_num_threads(args.threads)
    try:
        task = load_task(args.task)
    except SwarmError as e:
        print(f"error: --task {args.task!r}: {e}", file=sys.stderr)
        return 2
    model = task.build_model(args.seed)
    state = OuterState(model, args.outer_lr, args.outer_momentum)
    inner = task.inner_optimizer(model.parameters())  # one for the whole run, as OpenDiLoCo
    log = open(args.log_file, "a", buffering=1)

    def emit(**row) -> None:
        log.write(json.dumps({"t": time.time(), **row}) + "\n")

    class DiLoCoAverager(hivemind.DecentralizedAverager):  # the class name is part of its RPC names
        def get_current_state(self):  # called in this process when a peer downloads the state
            return state.snapshot()

    dht = averager = None
    local_samples = steps = 0
    reason = "budget"
    try:
        dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=args.host_maddrs, start=True)
        averager = DiLoCoAverager(  # timeouts as hivemind.Optimizer derives them from the same two settings
            [torch.zeros_like(p) for _ in range(2 if args.average_params else 1) for p in state.params], dht,
            start=False,
            prefix=f"{args.run_id}_diloco",
            min_matchmaking_time=args.matchmaking_time, allreduce_timeout=args.averaging_timeout,
            request_timeout=min(3.0, args.matchmaking_time / 2), next_chunk_timeout=args.matchmaking_time,
            compression=Float16Compression() if args.compression == "fp16" else NoCompression())
        averager.run_in_background(await_ready=True, timeout=60.0)
        if args.address_file:
            write_atomic(args.address_file, "\n".join(str(m) for m in dht.get_visible_maddrs()) + "\n")

        def load_state(why: str) -> None:
            t = time.time()
            try:
                got = averager.load_state_from_peers(timeout=args.load_state_timeout)
            except Exception as e:  # noqa: BLE001 - a failed download is logged, training goes on
                got, err = None, f"{type(e).__name__}: {e}"
            else:
                err = None if got is not None else "no peer served a state"
            if got is not None:
                err = state.load(*got)
            averager.state_sharing_priority = state.epoch
            emit(event="load_state", why=why, ok=err is None, error=err, epoch=state.epoch, samples=state.samples,
                 load_s=round(time.time() - t, 3))

        if args.t0 is not None and time.time() < args.t0:
            time.sleep(args.t0 - time.time())
        elif args.t0 is not None and args.initial_peers and time.time() > args.t0 + 1.0:
            load_state("joined after t0")
        gen = torch.Generator().manual_seed(args.data_seed)
        n_items = len(task.dataset)
        mine = args.inner_steps * task.batch_size
        start = {"val_loss": float(task.evaluate(model)["loss"])} if args.evaluate else {}
        emit(event="start", epoch=state.epoch, samples=state.samples, **start)
        step_s = None  # moving average of one inner step's seconds
        while state.samples < args.until_samples:
            control, error, gathered = None, None, None
            for i in range(args.inner_steps):
                t = time.perf_counter()
                idx = torch.randint(n_items, (task.batch_size,), generator=gen).tolist()
                loss = task.loss(model, task.get_batch(idx))
                loss.backward()
                inner.step()
                inner.zero_grad()
                steps += 1
                dt = time.perf_counter() - t
                step_s = dt if step_s is None else 0.8 * step_s + 0.2 * dt
                if control is None and error is None and (args.inner_steps - 1 - i) * step_s <= args.matchmaking_time:
                    try:  # as OpenDiLoCo: matchmaking overlaps the last inner steps, all-reduce waits for Δ
                        control = averager.step(gather={"samples": mine, "epoch": state.epoch}, wait=False,
                                                timeout=args.averaging_timeout, require_trigger=True)
                    except Exception as e:  # noqa: BLE001 - reported in the row, the step goes on alone
                        error = f"{type(e).__name__}: {e}"[:300]
            local_samples += mine
            delta = contributed_delta(pseudo_gradient(state.params, list(model.parameters())), args.attack)
            t_avg = time.time()
            if control is not None:
                try:
                    with averager.get_tensors() as tensors:
                        for buf, d in zip(tensors, [*delta, *state.params] if args.average_params else delta):
                            buf.copy_(d)
                    control.allow_allreduce()
                    gathered = control.result(timeout=args.averaging_timeout + 5.0)
                    if gathered is None:
                        error = "no group"
                except Exception as e:  # noqa: BLE001 - hivemind raises many kinds; this step goes on alone
                    error = f"{type(e).__name__}: {e}"[:300]
                    if not control.done():
                        control.cancel()
            size, group_samples, top_epoch = group_figures(gathered) if error is None else (1, mine, state.epoch)
            if error is None:
                with averager.get_tensors() as tensors:
                    delta = [buf.detach().clone() for buf in tensors[:len(delta)]]
                    if args.average_params:  # as OpenDiLoCo averages its state: one θ for the group again
                        state.set_params(tensors[len(delta):])
            before = state.epoch
            state.step(delta, group_samples)  # on failure: own Δ alone, own samples alone
            averager.state_sharing_priority = state.epoch
            row = {"event": "epoch", "epoch": state.epoch, "samples": state.samples, "samples_local": local_samples,
                   "steps": steps, "train_loss": loss.detach().item(), "group_size": size, "averaged": error is None,
                   "avg_s": round(time.time() - t_avg, 3), "error": error}
            if args.evaluate:
                with torch.no_grad():
                    row["val_loss"] = float(task.evaluate(model)["loss"])
            emit(**row)
            if error is None and top_epoch > before:
                load_state(f"a groupmate was at epoch {top_epoch}, this worker at {before}")
    except KeyboardInterrupt:
        reason = "stopped"
    finally:
        # shutting down already: a stop request changes nothing (SIG_IGN also outlives the interpreter's
        # own finalisation, where a Python handler is reset and SIGTERM would kill the process)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        emit(event="end", epoch=state.epoch, samples=state.samples, samples_local=local_samples, steps=steps,
             reason=reason)
        log.close()
        if averager is not None:
            averager.shutdown()
        if dht is not None:
            dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
