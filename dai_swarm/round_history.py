"""What a peer records about each tallied round (its history) and the live figures it shows
(status records, the CLI, the dashboard and benchmarks)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from .errors import SwarmError
from .roundlog import write_round_record

__all__ = ["peer_metrics", "record_round"]


def record_round(rt: Any, outcome: Any) -> dict:
    """The history entry of a tallied round: its agreed set, timing, traffic, the new base's val loss
    (when evaluating), this peer's standing in it and its reward-log record; also feeds the
    peer's lateness and round schedule (a :class:`~dai_swarm.runtime.RoundRuntime`)."""
    entry = {"round": outcome.round, "state_hash": outcome.state_hash, "updates": len(outcome.inclusion),
             "rejections": dict(outcome.rejections), "finished_at": rt.finish_times.get(outcome.round),
             "trained_from": rt.trained_from.pop(outcome.round, None),
             "agreed": outcome.agreed, "resynced": outcome.resynced, "close_s": round(outcome.close_s, 3),
             "samples": sum(outcome.contributors.values()), "time": time.time(),
             "traffic": rt.traffic.snapshot()}
    entry["late"] = rt.lateness.closed(outcome.round, rt.identity.public_key_hex in outcome.contributors)
    rt.lateness.tallied(outcome.close_s, time.time() - rt.clock.tally_time(outcome.round))
    state = rt.bases.get(outcome.round + 2)
    rt.follow_schedule(state)
    entry["round_s"] = rt.clock.length(outcome.round)
    if rt.evaluate and state is not None:
        if rt._eval_model is None:
            rt._eval_model = copy.deepcopy(rt.model)
        with torch.no_grad():
            for n, p in rt._eval_model.named_parameters():
                p.copy_(state.params[n])
        entry["val_loss"] = float(rt.task.evaluate(rt._eval_model)["loss"])
    if state is not None:  # whether this peer holds standing in that base (counts in votes)
        entry["standing"] = rt.vote_weights(state.extra).get(rt.identity.public_key_hex, 0.0) > 0
        entry["ledger"] = write_round_record(rt, outcome, state) if rt.ledger is not None else None
    return entry


def peer_metrics(rt: Any) -> dict:
    """Live figures of a :class:`~dai_swarm.runtime.RoundRuntime`."""
    last = rt.history[-1] if rt.history else {}
    return {"round": rt.round, "steps": rt.steps, "samples": rt.samples_total,
            "state_hash": last.get("state_hash"), "round_closed": last.get("round"), "val_loss": last.get("val_loss"),
            "traffic": rt.traffic.snapshot(), "rounds_trained": rt.rounds_trained,
            "train_cpu_s": round(rt.train_cpu_s, 3), "lateness": rt.lateness.status(),
            "schedule": rt.pace.status(), "round_s": rt.clock.length(max(0, rt.round)),
            "resyncs": sum(1 for h in rt.history if h.get("resynced")),
            "counters": dict(rt.counters), "ledger_errors": rt.ledger_errors,
            "ledger_rounds": rt.ledger.rounds if rt.ledger is not None else None,
            "dropped_records": _dropped_records(rt), "network_error": rt.coordinator.errored(),
            "dht_read_bytes": dict(getattr(rt.dht, "read_bytes", {})), "dht_ops": dict(getattr(rt.dht, "ops", {})),
            "trust": rt.verifier.metrics(getattr(rt.bases.latest(), "extra", {})) if hasattr(rt.verifier, "metrics") else None}


def _dropped_records(rt: Any) -> dict:
    try:
        rt._last_dropped = dict(rt.dht.counters)
    except SwarmError:  # the DHT is busy, shutting down or gone: the last counts (the heartbeat's)
        pass
    return dict(getattr(rt, "_last_dropped", {}))
