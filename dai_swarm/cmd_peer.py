"""``dai-swarm peer``: volunteer this machine to a training run."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from .dht.address_file import write_atomic
from .display import megabytes, num
from .exit_guard import FLUSH_TIMEOUT_S, ExitGuard
from .logging import get_logger, setup_logging
from .verification.check_rate import DEFAULT_CHECKS_PER_UPDATE

logger = get_logger(__name__)

ATTACKS_HELP = ("FOR TESTS AND BENCHMARKS ONLY: behave as a Byzantine peer of this kind (see "
                "dai_swarm.verification.attacks), or diverge@R: perturb this peer's state once at round R")


def _number_in(lo: float, hi: float, unit: str = ""):
    """argparse type: a float in [lo, hi] (``unit`` names it in the error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= value <= hi:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}{unit}, got {value}")
        return value

    return parse


_seconds = _number_in(0.0, 86400.0, " seconds")  # --wait-for-run
_checks = _number_in(0.0, 1024.0)  # --checks-per-update: expected checks per update


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``peer`` and its options."""
    p = sub.add_parser(
        "peer", help="join a run, train, verify others and earn rewards",
        description="Join a training run as a volunteer peer. Trains on the batches the swarm assigns, "
                    "exchanges compressed updates with its region, and leaves cleanly on Ctrl+C. It first prints "
                    "the run's join line, --run-id R --manifest HASH --initial-peers M...: paste it to join.",
        epilog="examples:\n"
               "  dai-swarm peer --run-id tinylm-42 --manifest 3f9a... --initial-peers /ip4/203.0.113.5/tcp/31337/p2p/12D3KooW...\n"
               "  dai-swarm peer --run-id demo --task regression --round-s 5 --rounds 20\n"
               "  dai-swarm peer --run-id mine --task mypkg.tasks:MyTask --region eu --identity ~/.dai_swarm/id.pem\n"
               "  dai-swarm peer --run-id tinylm-42 --resume ./tinylm-42-round-120 --checkpoint-dir ./ckpt --checkpoint-every 10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-id", required=True, help="name of the run to join or create")
    p.add_argument("--trust", nargs="*", default=[], metavar="KEY",
                   help="public keys of peers you trust (besides the run's founders) to choose the state this "
                        "peer downloads when it joins; each peer logs its key at start")
    p.add_argument("--founder", nargs="*", default=[], metavar="KEY",
                   help="when creating the run: more keys that start with standing besides this peer's own "
                        "(e.g. one trusted machine per region) (new runs only)")
    p.add_argument("--manifest", default=None, metavar="HASH",
                   help="the run's manifest hash, as in the join line its peers print (--run-id R --manifest HASH "
                        "--initial-peers ...): refuse any other manifest. Without it, take the earliest issued "
                        "valid one and log its hash")
    p.add_argument("--wait-for-run", type=_seconds, default=None, metavar="S",
                   help="how long to look for the run through the initial peers: without --task the peer waits "
                        "this long (at least 10 s) for the run to appear, then gives up; with --task it creates "
                        "the run if none appeared (default 3). A volunteer's service may start before the run")
    p.add_argument("--task", default=None,
                   help="built-in task name or module:attr (default: the run's task when joining, tinylm when "
                        "starting a new run)")
    p.add_argument("--initial-peers", nargs="*", default=[], metavar="MADDR",
                   help="multiaddrs of any peers of the swarm (none: start a new swarm)")
    p.add_argument("--region", default="auto", help="region name, or auto (RTT clustering; default)")
    p.add_argument("--identity", default=None, metavar="PATH", help="ed25519 key file (created on first use)")
    p.add_argument("--host-maddrs", nargs="*", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR",
                   help="where to listen (default: all interfaces, random TCP port)")
    p.add_argument("--reachability", choices=("auto", "public", "private"), default="auto",
                   help="can other peers dial this machine? auto (default): public with a global address on an "
                        "interface, behind NAT (reachable through a relay, no port forwarding) with only private "
                        "addresses and public initial peers; private: force the relay; public: force direct")
    p.add_argument("--ledger", default=None, metavar="PATH", help="write the reward log here as rounds close")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="an export (dai-swarm export) to start from: starts the run's next generation from it when "
                        "no peer of the run is live, else joins normally and uses it only as a faster start")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="export this peer's agreed state into DIR/round-NNNNNN every --checkpoint-every rounds")
    p.add_argument("--checkpoint-every", type=int, default=10, metavar="K", help="rounds between checkpoints (default 10)")
    p.add_argument("--checkpoint-keep", type=int, default=3, metavar="N", help="checkpoints kept (default 3, newest)")
    p.add_argument("--rounds", type=int, default=None, help="leave after training this many rounds")
    p.add_argument("--until-round", type=int, default=None, help="leave when the swarm reaches this round")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics and status.json here")
    p.add_argument("--round-s", type=float, default=10.0,
                   help="round length in seconds; with --round-s-max the first rounds' length (new runs only)")
    p.add_argument("--round-s-max", type=float, default=None, metavar="S",
                   help="let rounds adapt to what the swarm's machines need, up to S seconds (new runs only; with "
                        "several regions lengths change at cross-region merges; default: fixed rounds)")
    p.add_argument("--codec", default="int8",
                   help="update codec: none, fp16, int8, topk, or sparse (chunked top-k with error feedback, "
                        "checked on sampled buffer chunks; outer SGD lr 1.4, no momentum, delay compensation 0.3) "
                        "(new runs only)")
    p.add_argument("--cross-region-period", type=int, default=5,
                   help="rounds between cross-region merges (new runs only)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--t0", type=float, default=None, help="start time of round 0, Unix seconds (new runs only)")
    when.add_argument("--start-in", type=float, default=None, metavar="S",
                      help="start round 0 S seconds after this peer creates the run (new runs only; default 2)")
    p.add_argument("--seed", type=int, default=0, help="model and sampler seed (new runs only)")
    p.add_argument("--max-inner-steps", type=int, default=10_000, help="cap on inner steps per round (new runs only)")
    p.add_argument("--checks-per-update", type=_checks, default=DEFAULT_CHECKS_PER_UPDATE, metavar="C",
                   help="expected recomputations of each update per round, whatever the region size: each peer "
                        "checks each update with probability C/(n-1) (new runs only; default "
                        f"{DEFAULT_CHECKS_PER_UPDATE}; C >= n-1 checks everything)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--address-file", default=None, metavar="PATH", help="write our multiaddrs here (atomically)")
    p.add_argument("--history-file", default=None, metavar="PATH", help="write per-round history as JSON on exit")
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.add_argument("--attack", default=None, metavar="KIND", help=ATTACKS_HELP)
    return p


def run(args: argparse.Namespace) -> int:
    """Run a peer until ``--rounds`` are done or a signal arrives."""
    setup_logging()
    import torch

    from .swarm import Swarm

    if args.threads:
        torch.set_num_threads(args.threads)
    guard = ExitGuard().install()
    stop = guard.stop
    attack = None
    if args.attack:
        from .testing import make_attack
        attack = make_attack(args.attack)
    task = args.task if args.task or args.initial_peers or args.resume else "tinylm"
    swarm = None
    try:
        with guard.starting():  # a signal now unwinds the start-up through its clean-up
            swarm = Swarm(task, args.run_id, initial_peers=args.initial_peers, region=args.region,
                          identity=args.identity, host_maddrs=args.host_maddrs, round_s=args.round_s,
                          round_s_max=args.round_s_max,
                          codec=args.codec, t0=args.t0, start_in_s=args.start_in, seed=args.seed,
                          max_inner_steps=args.max_inner_steps, attack=attack, checks_per_update=args.checks_per_update,
                          cross_region_period=args.cross_region_period, ledger=args.ledger,
                          manifest_hash=args.manifest, trust=args.trust, founders=args.founder,
                          resume=args.resume, checkpoint_dir=args.checkpoint_dir,
                          checkpoint_every=args.checkpoint_every, checkpoint_keep=args.checkpoint_keep,
                          reachability=args.reachability,
                          manifest_wait_s=3.0 if args.wait_for_run is None else args.wait_for_run)
    except KeyboardInterrupt:
        if swarm is not None:  # the signal came just after the start-up
            swarm.shutdown()
        raise
    if swarm.runtime.ledger is not None:
        guard.on_force.append(lambda: swarm.runtime.ledger.flush(FLUSH_TIMEOUT_S))
    logger.info("peer id %s, public key %s, region %s", swarm.dht.peer_id, swarm.identity.public_key_hex,
                swarm.region)
    print(swarm.join_line, flush=True)
    if args.address_file:
        write_atomic(args.address_file, "\n".join(swarm.initial_peers) + "\n")
    metrics_server = None
    if args.metrics_port is not None:
        from .metrics import MetricsServer, swarm_collector
        try:
            metrics_server = MetricsServer(swarm_collector(swarm), port=args.metrics_port).start()
        except BaseException:
            swarm.shutdown()
            raise
        print(f"dashboard and metrics: {metrics_server.url} ({metrics_server.url}metrics)", flush=True)
    rt = swarm.runtime
    rt_stop = rt._stop
    watcher = threading.Thread(target=lambda: (stop.wait(), rt_stop.set()), daemon=True)
    watcher.start()
    live = None if args.quiet or not sys.stderr.isatty() else _live_display(swarm)
    task, opt = swarm.task, swarm.optimizer()
    start_round = rt.round
    last_print = 0.0
    try:
        for batch in swarm.batches():
            if stop.is_set() or (args.rounds is not None and rt.rounds_trained >= args.rounds) or \
                    (args.until_round is not None and rt.round >= args.until_round):
                break
            loss = task.loss(swarm.model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            now = time.time()
            if live is not None:
                live(loss)
            elif now - last_print > max(2.0, swarm.manifest.round_s / 2) and not args.quiet:
                print(_progress_line(rt.metrics(), loss), flush=True)
                last_print = now
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        rt_stop.set()
        history = list(rt.history)
        swarm.shutdown()
        summary = swarm.status()
        if args.history_file:
            write_atomic(args.history_file, json.dumps({"status": summary, "history": history,
                                                         "start_round": start_round}, default=str))
        _print_summary(summary, history)
        if guard.signalled_at is not None:
            logger.info("stopped %.1f s after the signal", time.monotonic() - guard.signalled_at)
    guard.finish(0)  # never returns (see ExitGuard.finish)
    return 0


def _progress_line(m: dict, loss) -> str:
    """One progress line for people: losses to 4 significant digits, traffic in MB."""
    sent = megabytes(sum(m["traffic"]["sent"].values()))
    recv = megabytes(sum(m["traffic"]["received"].values()))
    return (f"round {m['round']} step {m['steps']} loss {num(loss.detach().item())} val {num(m['val_loss'])} "
            f"state {str(m['state_hash'] or '-')[:12]} sent {sent} MB recv {recv} MB")


def _live_display(swarm):
    """A tiny rich status line, refreshed at most 4x per second."""
    from rich.console import Console

    console = Console(stderr=True)
    state = {"t": 0.0}

    def update(loss) -> None:
        now = time.time()
        if now - state["t"] < 0.25:
            return
        state["t"] = now
        line = _progress_line(swarm.runtime.metrics(), loss)
        console.print(f"{line} peers {len(swarm.runtime.region_of)}", end="\r", markup=False, highlight=False)

    return update


def _print_summary(status: dict, history: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dai-swarm peer {status.get('peer_id', '')[:16]}… summary")
    table.add_column("round")
    table.add_column("updates")
    table.add_column("state hash")
    table.add_column("agreed")
    table.add_column("val loss")
    for h in history[-10:]:
        table.add_row(str(h["round"]), str(h["updates"]), str(h["state_hash"])[:12], str(h["agreed"]),
                      num(h.get("val_loss")))
    Console(stderr=True).print(table)
