"""``dai-swarm export``: take a run's agreed model home, with its provenance."""

from __future__ import annotations

import argparse
import json

from .logging import get_logger, setup_logging

__all__ = ["add_parser", "run"]

logger = get_logger(__name__)

EPILOG = """examples:
  dai-swarm export --run-id tinylm-42 --initial-peers /ip4/203.0.113.5/tcp/31337/p2p/12D3KooW... --out ./tinylm-42
  dai-swarm export --run-id tinylm-42 --manifest 5be1c0a7f3d29e4418c6b0d2a9e7f351 --initial-peers M... --out ./r40 --round 40 --ledger rewards.log

then, in Python:
  from safetensors.torch import load_file
  model = dai_swarm.load_task("tinylm").build_model(0); model.load_state_dict(load_file("tinylm-42/model.safetensors"))

exit status: 0 written, 1 error (no such run or round, no verified state, bad option).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``export`` and its options."""
    p = sub.add_parser(
        "export", help="download a run's agreed model and write it with its provenance",
        description="Download the state a run's peers agreed on, verified against the majority of its trust "
                    "anchors exactly as a joining peer does, and write DIR/model.safetensors (weights only), "
                    "DIR/state.safetensors (what --resume needs) and DIR/provenance.json (run manifest, round, "
                    "state hash, the chain behind it, contributors, versions, this exporter's signature).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-id", required=True, help="the run to export")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR", help="multiaddrs of peers of the run")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if needed)")
    p.add_argument("--round", type=int, default=None, metavar="N",
                   help="export the state that closed round N (default: the newest the swarm offers)")
    p.add_argument("--manifest", default=None, metavar="HASH", help="the run's manifest hash (join line): refuse others")
    p.add_argument("--trust", nargs="*", default=[], metavar="KEY",
                   help="public keys trusted, besides the run's founders, to choose the state")
    p.add_argument("--region", default=None, help="the region whose state to export (default: where most peers are)")
    p.add_argument("--ledger", default=None, metavar="PATH",
                   help="a reward log of the run: put the chain of state hashes and the contributors behind the "
                        "round into provenance.json")
    p.add_argument("--identity", default=None, metavar="PATH", help="ed25519 key that signs provenance.json "
                   "(default: a new key)")
    p.add_argument("--host-maddrs", nargs="*", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR",
                   help="where to listen while downloading")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (default 60)")
    p.add_argument("--json", action="store_true", help="print provenance.json's summary as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Fetch, verify and write the export; 0 on success."""
    setup_logging()
    from .export import write_export
    from .fetch_state import fetch_agreed_state
    from .identity import Identity

    identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
    got = fetch_agreed_state(args.run_id, args.initial_peers, round=args.round, manifest_hash=args.manifest,
                             trust=args.trust, region=args.region, identity=identity, host_maddrs=args.host_maddrs,
                             timeout_s=args.timeout)
    ledger = None
    if args.ledger:
        from .errors import LedgerError
        from .rewards import verify_log
        from .rewards.provenance import log_provenance
        checked = verify_log(args.ledger)
        if not checked["ok"] and not checked["recoverable"]:
            raise LedgerError(f"reward log {args.ledger}: record {checked['first_bad']}: {checked['reason']}")
        ledger = log_provenance(args.ledger, got.round)
    model = got.task.build_model(got.manifest.seed)
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(got.state.params[name])
    val_loss = float(got.task.evaluate(model)["loss"])
    prov = write_export(args.out, got.state, task=got.task, manifest=got.manifest, manifest_hash=got.manifest_hash,
                        round=got.round, identity=identity, parent_hash=got.parent_hash, val_loss=val_loss,
                        ledger=ledger)
    summary = {"out": args.out, "run_id": prov.run_id, "round": prov.round, "state_hash": prov.state_hash,
               "parent_hash": prov.parent_hash, "val_loss": val_loss, "chain": len(prov.chain),
               "reward_units": prov.reward_units, "exporter": prov.exporter}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported run {prov.run_id} round {prov.round} (state {prov.state_hash[:12]}, val loss {val_loss:.4f}) "
              f"to {args.out}: model.safetensors, state.safetensors, provenance.json"
              + (f"; {len(prov.chain)} rounds of provenance from {args.ledger}" if args.ledger else ""))
    return 0
