"""Convergence under churn: N real dai_swarm peer processes vs four baselines, one sample budget.

Runs, one after the other on this machine (so they do not share the CPUs):

1. ``dai_swarm``: N ``dai-swarm peer`` processes under a churn schedule (exponential lifetimes
   with replacement, or ``--schedule FILE``) with a Byzantine fraction running ``--attack KIND``;
2. ``dai_swarm_clean``: the same without churn and without attackers;
3. ``hivemind:<preset>``: N ``hivemind.Optimizer`` workers under the same churn schedule, once per
   ``--hivemind-presets`` setting (:data:`benchmarks.hivemind_baseline.PRESETS`; the best one is
   P2's and P3's reference); its Byzantine slots scale their gradients the way the attack does;
4. ``diloco-hivemind``: DiLoCo on hivemind as OpenDiLoCo does it (:mod:`benchmarks.churn_diloco`), the
   same inner steps and outer Nesterov step, no verification; the second P2 reference;
5. ``centralized``: :func:`benchmarks.centralized.run_centralized` on the same budget;
6. ``sync_dp``: :func:`dai_swarm.reference.run_sync_dp`, N workers with the task's batch each that
   average their gradients (fp32) before every step: the sample-efficiency limit of N peers, and
   the reference of P1 (the swarm's loss at equal samples ÷ this; the ratio to centralized beside).

Each swarm run trains for ``ceil(budget / (N x max_inner_steps x batch))`` rounds. Loss curves
come from slot 0 (never churned, never Byzantine: the observer); bytes are sampled once a second
for every process (see :mod:`benchmarks.churn_fleet` for how, loopback vs ``--wan``). Writes
``churn.json``, ``churn.md`` and four PNGs to ``--out`` and prints the JSON and the table.

    python -m benchmarks.churn --quick                       # CI smoke, < 3 minutes
    python -m benchmarks.churn --task tinylm-small --peers 8 --churn 0.3 --byzantine 0.25 --attack sign_flip
    python -m benchmarks.churn --wan --intra-mbit 100 --cross-mbit 10 --regions 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from typing import Any, Sequence

from dai_swarm.errors import ConfigError
from dai_swarm.testing import alive_count, exponential_churn_schedule, founding_peers, scripted_churn_schedule

from . import churn_report
from .churn_diloco import add_arguments as add_diloco_arguments
from .churn_fleet import Fleet, LifeRecord, baseline_argv, host_maddr, log_tail, observer_curve, read_jsonl, run_fleet

KEY_RE = re.compile(r"public key ([0-9a-f]{64})")  # a peer's start-up line
SLASH_RE = re.compile(r"base (\d+): slashed \[(.*?)\]")  # the swarm's slash event, in every peer's log

__all__ = ["main", "run_hivemind", "run_swarm"]


def _attack_available(kind: str) -> str | None:
    """None if ``dai_swarm.testing.make_attack(kind)`` works, else why not."""
    try:
        from dai_swarm.testing import make_attack
    except ImportError:
        return "dai_swarm.testing.make_attack does not exist yet"
    try:
        make_attack(kind)
    except Exception as e:  # noqa: BLE001 - reported to the user as is
        return f"make_attack({kind!r}) failed: {e}"
    return None


def run_swarm(args: argparse.Namespace, schedule, label: str, workdir: str, net=None) -> dict[str, Any]:
    """Run dai_swarm peers on ``schedule``; returns curve, bytes samples, stalls, lives."""
    t0 = math.ceil(time.time() + args.lead_s)
    run_id = f"churn-{label}-{int(t0)}"

    # the honest peers of the first wave found the run: every region holds standing from round 0
    founders = [r for r in schedule if r.start_s <= 0 and not r.byzantine]
    founding = founding_peers(workdir, [f"slot{r.slot}" for r in founders])

    def argv(rec: LifeRecord, peers: list[str]) -> list[str]:
        a = ["-m", "dai_swarm", "peer", "--run-id", run_id, "--task", args.task, "--round-s", str(args.round_s),
             "--until-round", str(args.rounds), "--t0", str(t0), "--threads", "1", "--quiet",
             "--max-inner-steps", str(args.max_inner_steps), "--codec", args.codec,
             "--region", f"r{rec.life.slot % args.regions}", "--cross-region-period", str(args.cross_region_period),
             "--history-file", rec.history_file, "--address-file", rec.address_file,
             "--host-maddrs", host_maddr(net, rec.life.slot)]
        if rec.life.byzantine and args.attack:
            a += ["--attack", args.attack]
        if rec.life in founders:  # a founder relaunched after a failed start keeps its key
            a += founding[f"slot{rec.life.slot}"]
        return a + (["--initial-peers", *peers] if peers else [])

    fleet, observer, done = run_fleet(workdir, schedule, t0, argv, (args.rounds + 4) * args.round_s + 60, net)
    return {"label": label, "run_id": run_id, "t0": t0, "finished": done, "n_slots": args.peers,
            **_swarm_figures(fleet, observer, args), "bytes": fleet.samples, "lives": fleet.summary()}


def _swarm_figures(fleet: Fleet, observer: LifeRecord, args) -> dict[str, Any]:
    written: list[tuple[LifeRecord, dict]] = []  # the history files of peers that exited cleanly
    for r in fleet.records:
        try:
            with open(r.history_file) as f:
                written.append((r, json.load(f)))
        except (OSError, ValueError):
            continue
    obs = next((doc for r, doc in written if r is observer), None)
    if obs is None:
        raise ConfigError(f"observer wrote no history {observer.history_file!r}; see {observer.log_path}")
    curve = {"samples": [0], "val_loss": [args.initial_loss], "t": [0.0], "round": [-1]}
    # samples per round in the other regions (their inclusions reach the observer's state through
    # merges every K rounds; counting them from their round on is conservative for the swarm)
    per_region: dict[tuple[int, int], int] = {}
    for r, doc in written:
        region = r.life.slot % args.regions
        if region != observer.life.slot % args.regions:
            for h in doc.get("history", []):
                key = (region, int(h["round"]))
                per_region[key] = max(per_region.get(key, 0), int(h.get("samples") or 0))
    others: dict[int, int] = {}
    for (_, q), n in per_region.items():
        others[q] = others.get(q, 0) + n
    total = 0
    hist = sorted(obs["history"], key=lambda h: h["round"])
    for h in hist:
        total += int(h.get("samples") or 0) + others.get(int(h["round"]), 0)
        if h.get("val_loss") is not None:
            curve["samples"].append(total)
            curve["val_loss"].append(h["val_loss"])
            curve["t"].append(round(h["time"] - fleet.t0, 3))
            curve["round"].append(h["round"] + 2)
    rejections: dict[str, int] = {}
    for h in hist:
        for k, v in (h.get("rejections") or {}).items():
            rejections[k] = rejections.get(k, 0) + int(v)
    slashed: list[dict] = []
    key_of, first_slash = {}, {}
    for r in fleet.records:  # slashes from the peers' logs: a SIGKILLed peer never writes its status
        try:
            with open(r.log_path, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        m = KEY_RE.search(text)
        if m:
            key_of[m.group(1)[:12]] = r
        for m in SLASH_RE.finditer(text):
            for k in re.findall(r"[0-9a-f]{12}", m.group(2)):
                first_slash[k] = min(first_slash.get(k, 1 << 30), int(m.group(1)))
    for k, base in sorted(first_slash.items(), key=lambda kv: kv[1]):
        r = key_of.get(k)
        slashed.append({"slot": r.life.slot if r else None, "name": r.name if r else k,
                        "byzantine": r.life.byzantine if r else None, "base": base})
    app = [doc["status"].get("traffic") for _, doc in written if "status" in doc]
    return {"curve": curve,
            "stalls": {"empty_rounds": sum(1 for h in hist if not h.get("updates")),
                       "disagreed_rounds": sum(1 for h in hist if h.get("agreed") is False),
                       "resynced_rounds": sum(1 for h in hist if h.get("resynced")), "rounds": len(hist),
                       "max_close_s": max((h.get("close_s") or 0 for h in hist), default=None)},
            "slashes": len(slashed), "slashed": slashed,
            "false_slashes": sum(1 for x in slashed if x["byzantine"] is False),
            "observer_trust": obs["status"].get("trust"),
            "rejections": rejections, "updates_per_round": [h.get("updates") for h in hist],
            "observer_app_traffic": obs["status"].get("traffic"),
            "app_traffic_of_clean_exits": app}


def run_hivemind(args: argparse.Namespace, schedule, workdir: str, net=None, preset: str = "defaults") -> dict[str, Any]:
    """Run hivemind.Optimizer workers with ``preset`` on ``schedule``; Byzantine slots run the gradient form of
    ``args.attack`` when it has one (:data:`benchmarks.hivemind_baseline.GRADIENT_ATTACKS`), else honestly."""
    from .hivemind_baseline import GRADIENT_ATTACKS, PRESETS

    t0 = math.ceil(time.time() + args.lead_s)
    run_id = f"churn-hm-{int(t0)}"
    tbs = max(1, round(args.hivemind_target_batch_size * PRESETS[preset]["tbs_factor"]))

    def argv(rec: LifeRecord, peers: list[str]) -> list[str]:
        return baseline_argv("benchmarks.hivemind_baseline", args, run_id, t0, rec, peers, net,
                             ["--target-batch-size", str(tbs), "--preset", preset], GRADIENT_ATTACKS)

    limit = args.hivemind_limit_s or max(120.0, 2.0 * args.rounds * args.round_s)
    fleet, observer, done = run_fleet(workdir, schedule, t0, argv, limit, net)
    curve = observer_curve(read_jsonl(observer.history_file), t0, args.initial_loss,  # hivemind's own count
                           lambda row: row["epoch"] * tbs if row["epoch"] > 0 else None)
    curve["samples_trained"] = churn_report.trained_samples([r.history_file for r in fleet.records],
                                                            [t0 + t for t in curve["t"]])
    return {"label": f"hivemind:{preset}", "run_id": run_id, "t0": t0, "finished": done, "time_limit_s": limit,
            "n_slots": args.peers, "curve": curve, "bytes": fleet.samples, "lives": fleet.summary(),
            "settings": {"preset": preset, "target_batch_size": tbs, "batch_size_per_step": "task batch",
                         "optimizer": "task inner optimizer (AdamW)",
                         **{k: v for k, v in PRESETS[preset].items() if k != "tbs_factor"},
                         "everything else": "hivemind 1.1.12 defaults",
                         "byzantine_slots": (f"gradients x {GRADIENT_ATTACKS[args.attack]} ({args.attack})"
                                             if args.attack in GRADIENT_ATTACKS else "honest (no gradient form)")},
            "observer_log_tail": log_tail(observer.log_path)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.churn", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + "\n".join(__doc__.rstrip().split("\n")[-3:]))
    p.add_argument("--task", default="tinylm", help="task (default tinylm; tinylm-small for short runs)")
    p.add_argument("--peers", type=int, default=8, help="peer slots N (default 8)")
    p.add_argument("--samples", type=int, default=None, help="sample budget (default: 12 rounds of a full swarm)")
    p.add_argument("--round-s", type=float, default=6.0, help="dai_swarm round length (default 6)")
    p.add_argument("--max-inner-steps", type=int, default=20, help="inner steps per peer per round (default 20)")
    p.add_argument("--codec", default="int8", help="dai_swarm update codec (default int8)")
    p.add_argument("--regions", type=int, default=1, help="regions, slots round-robin (default 1)")
    p.add_argument("--cross-region-period", type=int, default=3)
    p.add_argument("--churn", type=float, default=0.3, help="expected departures per slot over the run (default 0.3)")
    p.add_argument("--join-delay-s", type=float, default=2.0, help="a replacement joins this long after a departure")
    p.add_argument("--schedule", default=None, metavar="FILE", help="scripted schedule (JSON list of lives)")
    p.add_argument("--byzantine", type=float, default=0.25, help="fraction of Byzantine slots (default 0.25)")
    p.add_argument("--attack", default="sign_flip", help="attack kind for dai-swarm peer --attack")
    p.add_argument("--seed", type=int, default=0, help="schedule seed")
    p.add_argument("--lead-s", type=float, default=30.0, help="start-up time before round 0 (default 30)")
    p.add_argument("--hivemind-target-batch-size", type=int, default=None,
                   help="default: samples of one full dai_swarm round (N x steps x batch)")
    p.add_argument("--hivemind-limit-s", type=float, default=None,
                   help="time limit of each hivemind.Optimizer and DiLoCo run (default max(120, 2 x run length))")
    p.add_argument("--hivemind-presets", nargs="+", default=["defaults"], metavar="NAME",
                   help="hivemind.Optimizer settings to run, the best reported as P2/P3's reference "
                        "(default: defaults; 'all' for every preset)")
    p.add_argument("--target-loss", type=float, default=None,
                   help="default: 80%% of the centralized run's loss reduction")
    add_diloco_arguments(p)
    p.add_argument("--skip", nargs="*", default=[], choices=("clean", "hivemind", "diloco"), help="leave out baselines")
    p.add_argument("--wan", action="store_true", help="network namespaces + tbf caps (root; benchmarks.wan)")
    p.add_argument("--intra-mbit", type=float, default=100.0, help="WAN: per-peer cap inside a region")
    p.add_argument("--cross-mbit", type=float, default=10.0, help="WAN: per-peer cap across regions")
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny settings, asserts sanity only")
    p.add_argument("--out", default="out/churn", help="output folder (default out/churn)")
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    args.task, args.peers, args.round_s, args.max_inner_steps, args.lead_s = "tinylm-small", 3, 4.0, 8, 20.0
    args.samples = args.samples or 3 * 8 * 16 * 6
    args.churn, args.join_delay_s = 0.5, 1.0
    args.skip = sorted(set(args.skip) | {"clean", "hivemind", "diloco"})


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 when ``--quick`` sanity checks fail."""
    args = _parser().parse_args(argv)
    if args.quick:
        _apply_quick(args)
    from .hivemind_baseline import PRESETS

    unknown = [p for p in args.hivemind_presets if p != "all" and p not in PRESETS]
    if unknown:
        print(f"error: unknown --hivemind-presets {unknown}; known: {sorted(PRESETS)} or all", file=sys.stderr)
        return 2
    if args.byzantine > 0 and args.attack:
        why = _attack_available(args.attack)
        if why:
            print(f"error: --byzantine {args.byzantine} needs --attack {args.attack}: {why}. "
                  "Run with --byzantine 0 until the attack catalogue exists.", file=sys.stderr)
            return 2
    from dai_swarm.tasks import load_task

    from dai_swarm.reference import run_sync_dp

    from .centralized import run_centralized

    task = load_task(args.task)
    per_round = args.peers * args.max_inner_steps * task.batch_size
    args.samples = args.samples or 12 * per_round
    args.rounds = math.ceil(args.samples / per_round) + 2  # the last two rounds' states are never evaluated
    args.hivemind_target_batch_size = args.hivemind_target_batch_size or per_round
    args.initial_loss = float(task.evaluate(task.build_model(0))["loss"])
    duration = args.rounds * args.round_s
    if args.schedule:
        with open(args.schedule) as f:
            schedule = scripted_churn_schedule(json.load(f))
    else:
        schedule = exponential_churn_schedule(args.peers, duration, args.churn, seed=args.seed,
                                              byzantine=args.byzantine, join_delay_s=args.join_delay_s)
    clean = exponential_churn_schedule(args.peers, duration, 0.0)
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    net = None
    if args.wan:
        from .wan import WanNet, netns_available

        ok, why = netns_available()
        if not ok:
            print(f"error: --wan needs network namespaces, unavailable here: {why}", file=sys.stderr)
            return 2
        net = WanNet(args.peers, [i % args.regions for i in range(args.peers)], args.intra_mbit, args.cross_mbit)
        net.up()
    started = time.time()
    results: dict[str, dict] = {}
    try:
        log = lambda msg: print(f"[{time.time() - started:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
        log(f"dai_swarm: {args.peers} peers, {args.rounds} rounds of {args.round_s} s, churn {args.churn}, "
            f"byzantine {args.byzantine} ({args.attack})")
        results["dai_swarm"] = run_swarm(args, schedule, "churn", os.path.join(work, "dai_swarm"), net)
        if "clean" not in args.skip:
            log("dai_swarm without churn or attackers")
            results["dai_swarm_clean"] = run_swarm(args, clean, "clean", os.path.join(work, "clean"), net)
        if "hivemind" not in args.skip:
            from .hivemind_baseline import PRESETS

            presets = sorted(PRESETS) if "all" in args.hivemind_presets else args.hivemind_presets
            for preset in presets:
                log(f"hivemind.Optimizer, preset {preset}: {PRESETS[preset]}")
                results[f"hivemind:{preset}"] = run_hivemind(args, schedule, os.path.join(work, f"hivemind-{preset}"),
                                                             net, preset)
        if "diloco" not in args.skip:
            from .churn_diloco import LABEL, run_diloco

            log(f"DiLoCo on hivemind: H = {args.max_inner_steps}, all-reduce {args.diloco_compression}")
            results[LABEL] = run_diloco(args, schedule, os.path.join(work, "diloco"), net)
        log("centralized")
        cen = run_centralized(task, args.samples, max(task.batch_size, args.samples // 16), threads=1,
                              label=args.task)
        results["centralized"] = {"label": "centralized", "n_slots": 1, "bytes": [],
                                  "curve": {"samples": cen["samples"], "val_loss": cen["val_loss"], "t": cen["wall_s"]}}
        log(f"synchronous data-parallel, {args.peers} workers")
        dp = run_sync_dp(task, args.samples, args.peers, max(task.batch_size, args.samples // 16), threads=1)
        results["sync_dp"] = {"label": dp["label"], "n_slots": args.peers, "bytes": [], "steps": dp["steps"],
                              "curve": {"samples": dp["samples"], "val_loss": dp["val_loss"], "t": dp["wall_s"]}}
    finally:
        if net is not None:
            net.down()
    cen_curve = results["centralized"]["curve"]
    target = args.target_loss if args.target_loss is not None else \
        cen_curve["val_loss"][0] - 0.8 * (cen_curve["val_loss"][0] - cen_curve["val_loss"][-1])
    report = {"benchmark": "churn", "command": "python -m benchmarks.churn " + " ".join(argv or sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items()}, "wall_s": round(time.time() - started, 1),
              "network": net.describe() if net else {"mode": "loopback", "byte_counting": "p2pd /proc/<pid>/io "
                                                     "(rchar + wchar) / 2 per peer (see benchmarks.churn_fleet)"},
              "schedule": [vars(p) for p in schedule], "departures": sum(1 for p in schedule if p.stop_s is not None),
              "alive_scheduled": [[t, alive_count(schedule, t)] for t in range(0, int(duration) + 1, 2)],
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "systems": results}
    report["comparison"] = churn_report.compare(results, target)
    report["plots"] = churn_report.plots(report, args.out)
    table = churn_report.markdown(report)
    with open(os.path.join(args.out, "churn.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.out, "churn.md"), "w") as f:
        f.write(table + "\n")
    print(json.dumps(report["comparison"], default=str))
    print()
    print(table)
    print(f"\nwrote {args.out}/churn.json, churn.md and {len(report['plots'])} PNGs in {report['wall_s']} s")
    if args.quick:
        return 0 if _sane(report) else 1
    return 0


def _sane(report: dict) -> bool:
    """--quick: dai_swarm's loss is finite and falls; the JSON has every system's figures."""
    c = report["systems"]["dai_swarm"]["curve"]["val_loss"]
    ok = len(c) >= 3 and all(math.isfinite(v) for v in c) and c[-1] < c[0]
    ok = ok and all(k in report["comparison"]["systems"] for k in report["systems"])
    if not ok:
        print("quick sanity check FAILED: dai_swarm loss curve " + str(c), file=sys.stderr)
    return ok


if __name__ == "__main__":
    sys.exit(main())
