"""``dai-swarm ledger verify|report|diff``: check, summarize and compare reward logs."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  dai-swarm ledger verify rewards.log
  dai-swarm ledger verify rewards.log --trusted-keys 3f87...92ad 9c1e...0b7f --json
  dai-swarm ledger verify rewards.log --model ./tinylm-42   # is this export's state the one the log records?
  dai-swarm ledger report peer1.log peer2.log --png rewards.png
  dai-swarm ledger diff peer1.log peer2.log

exit status: 0 ok, 1 bad log / logs disagree / export not recorded (first mismatch printed) / error.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ledger`` and its ``verify``, ``report`` and ``diff`` actions."""
    p = subparsers.add_parser(
        "ledger",
        help="verify, report on, or compare reward logs",
        description="Check a reward log's hash chain, CRCs, sequence and signed checkpoints; print "
        "totals and ecosystem metrics; or find the first round where two peers' logs disagree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("verify", "report", "diff"), help="what to do")
    p.add_argument("paths", nargs="+", metavar="PATH", help="log file(s): one for verify, one or more for "
                   "report, two for diff")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--png", metavar="FILE", default=None,
                   help="report: also plot units per contributor (vested and awarded)")
    p.add_argument("--trusted-keys", nargs="*", metavar="HEX", default=None,
                   help="verify: hex public keys of the participants; others are rejected")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="verify: also check an export (dai-swarm export) against the log: its state hash is the one "
                        "recorded for its round and its provenance chain links to it")
    p.add_argument("--fast", action="store_true",
                   help="verify: skip recomputing Merkle roots and round-chain heads of checkpoints")
    return p


def _verify(args) -> int:
    from dai_swarm.rewards import verify_log

    if len(args.paths) != 1:
        print("ledger verify takes exactly one PATH", file=sys.stderr)
        return 1
    res = verify_log(args.paths[0], trusted_keys=args.trusted_keys, full=not args.fast)
    if res["ok"] and args.model:
        return _verify_model(args, res)
    if args.json:
        print(json.dumps(res, indent=2))
    elif res["ok"]:
        print(f"OK  {args.paths[0]}: {res['records']} records, {res['checkpoints']} signed checkpoints, "
              f"writer {res['writer'][:16]}...")
    else:
        hint = " (torn tail: the writer truncates it when it reopens the log)" if res["recoverable"] else ""
        print(f"BAD {args.paths[0]}: record {res['first_bad']} of {res['records']}: {res['reason']}{hint}")
    return 0 if res["ok"] else 1


def _verify_model(args, log: dict) -> int:
    """``ledger verify LOG --model DIR`` once the log verified: the export against the log."""
    from dai_swarm.errors import ExportError
    from dai_swarm.export import load_export
    from dai_swarm.rewards.provenance import require_recorded

    try:
        check = require_recorded(args.paths[0], load_export(args.model))
        out = {"ok": True, "model": args.model, "round": check.round, "state_hash": check.state_hash,
               "mismatch": None, "linked": check.linked, "unchecked": check.unchecked}
    except ExportError as e:
        out = {"ok": False, "model": args.model, "round": None, "state_hash": None, "mismatch": str(e),
               "error": type(e).__name__}
    if args.json:
        print(json.dumps({**out, "log": log}, indent=2))
    elif out["ok"]:
        print(f"OK  {args.model}: round {out['round']} state {out['state_hash'][:12]} is recorded in {args.paths[0]}; "
              f"{out['linked']} provenance rounds link to it ({out['unchecked']} not in this log)")
    else:
        print(f"BAD {args.model}: {out['error']}: {out['mismatch']}")
    return 0 if out["ok"] else 1


def _report(args) -> int:
    from dai_swarm.rewards.report import ledger_report, plot_rewards

    rep = ledger_report(args.paths)
    if args.png:
        plot_rewards(args.paths, args.png)
        rep["png"] = args.png
    if args.json:
        print(json.dumps(rep, indent=2))
        return 1 if rep["round_disagreements"] else 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"Rewards: {rep['rounds']} rounds ({rep['first_round']}..{rep['last_round']})")
    for col in ("contributor", "region", "rounds", "samples", "reward", "verifier credit", "total", "vested",
                "pending", "forfeited", "slashed"):
        t.add_column(col, justify="left" if col in ("contributor", "region") else "right")
    for peer, c in sorted(rep["contributors"].items(), key=lambda kv: (-kv[1]["vested"], -kv[1]["total"])):
        t.add_row(peer[:20], c["region"] or "-", str(c["rounds"]), str(c["samples"]), f"{c['reward'] / 1e6:.6f}",
                  f"{c['credit'] / 1e6:.6f}", f"{c['total'] / 1e6:.6f}", f"{c['vested'] / 1e6:.6f}",
                  f"{c['pending'] / 1e6:.6f}", f"{c['forfeited'] / 1e6:.6f}", str(c["slashed"]))
    console.print(t)
    lat = rep["verification_latency"]
    m = Table(title="Ecosystem metrics")
    m.add_column("metric")
    m.add_column("value", justify="right")
    for name, value in (
        ("units vested / pending / forfeited (/ 1e6)", f"{rep['units_vested'] / 1e6:.6f} / "
         f"{rep['units_pending'] / 1e6:.6f} / {rep['units_forfeited'] / 1e6:.6f}"),
        ("effective contributors (exp Shannon entropy, vested)", f"{rep['effective_contributors']:.2f}"),
        ("inverse Simpson index (vested)", f"{rep['inverse_simpson']:.2f}"),
        ("effective regions (exp Shannon entropy, vested)", f"{rep['effective_regions']:.2f}"),
        ("Gini coefficient of vested units (of awarded units)", f"{rep['gini']:.3f} ({rep['gini_awarded']:.3f})"),
        ("churn rate ((joins+leaves)/round/live contributors)", f"{rep['churn_rate']:.3f}"),
        ("slashing frequency (slashed peers per round)", f"{rep['slashing_frequency']:.3f}"),
        (f"verification latency mean / p95 ({lat['unit']})",
         "-" if lat["mean"] is None else f"{lat['mean']:.2f} / {lat['p95']:.2f}"),
        ("model provenance depth (rounds / contributors / hash-linked rounds)",
         f"{rep['provenance_depth']['rounds']} / {rep['provenance_depth']['contributors']} / "
         f"{rep['provenance_depth']['linked_rounds']}"),
        ("rounds where logs disagree", ", ".join(map(str, rep["round_disagreements"])) or "none"),
    ):
        m.add_row(name, value)
    console.print(m)
    if args.png:
        console.print(f"plot written to {args.png}")
    return 1 if rep["round_disagreements"] else 0


def _diff(args) -> int:
    from dai_swarm.rewards import diff_logs

    if len(args.paths) != 2:
        print("ledger diff takes exactly two PATHs", file=sys.stderr)
        return 1
    first = diff_logs(*args.paths)
    if args.json:
        print(json.dumps({"agree": first is None, "first_disagreeing_round": first}))
    elif first is None:
        print("round records agree")
    else:
        print(f"round records first disagree at round {first}")
    return 0 if first is None else 1


def run(args) -> int:
    """Run the chosen ledger action; 0 when the log(s) are fine, 1 otherwise."""
    return {"verify": _verify, "report": _report, "diff": _diff}[args.action](args)
