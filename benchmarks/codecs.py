"""Codec speed, size and error on 10M fp32 values, side by side with memcpy and hivemind (SPEC P4).

For each input (Gaussian noise, and a real pseudo-gradient: the parameter change of a tinylm
model over a few AdamW steps) and each method, measures the encoded bytes, the compression
ratio, encode / decode / round-trip MB/s (MB of fp32 input per second, best of ``--repeats``, interleaved across methods)
and the relative L2 error. Methods: ``memcpy`` (a tensor clone each way), our ``encode`` /
``decode`` with each codec (frame, CRC and zstd included), and hivemind's Float16Compression,
Uniform8BitQuantization and BlockwiseQuantization (``compress`` + ``extract``; protobuf
serialisation not timed, bytes = the tensor buffer). Prints JSON and a markdown table; writes
``codecs.json`` and ``codecs.png`` under ``--out``. ``--baseline-rev REV`` also runs the codecs as
they were at git revision REV (loaded side by side as a separate package), interleaved with
the rest, for before/after tables from one run. The 1-minute load average is recorded before
and after (the machine may be shared).

    python -m benchmarks.codecs --threads 1
    python -m benchmarks.codecs --threads 1 --baseline-rev 2df0922 --no-tinylm
    python -m benchmarks.codecs --numel 1000000 --repeats 3 --no-tinylm
"""

from __future__ import annotations

import argparse
import json
import os
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import bitsandbytes.functional  # noqa: F401  (hivemind's BlockwiseQuantization needs it imported first)
import torch

from dai_swarm.optim.codecs import codec_versions, decode, encode

__all__ = ["main", "measure", "pseudo_gradient"]

OURS = [
    ("none", "none", {}),
    ("fp16", "fp16", {}),
    ("int8 (bs 4096)", "int8", {"blocksize": 4096}),
    ("int8 (bs 4096, zstd always)", "int8", {"blocksize": 4096, "zstd": "always"}),
    ("int8 (bs 256)", "int8", {"blocksize": 256}),
    ("topk 1% fp16", "topk", {"fraction": 0.01}),
    ("topk 1% int8", "topk", {"fraction": 0.01, "values": "int8"}),
]


def pseudo_gradient(numel: int, steps: int = 3, seed: int = 0) -> tuple[torch.Tensor, str]:
    """First ``numel`` values of the parameter change of a tinylm model after ``steps`` AdamW steps.

    The model is sized (6 layers, d_model 384, about 10.8M parameters) to hold at least 10M values.
    """
    from dai_swarm.tasks import TinyLMTask

    task = TinyLMTask(n_layer=6, n_head=6, d_model=384)
    model = task.build_model(seed)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    opt = task.inner_optimizer(model.parameters())
    g = torch.Generator().manual_seed(seed)
    n = len(task.dataset)
    for _ in range(steps):
        idx = torch.randint(0, n, (task.config().get("batch_size", 16),), generator=g).tolist()
        loss = task.loss(model, task.get_batch(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    diff = (after - before).contiguous()
    if diff.numel() < numel:
        reps = -(-numel // diff.numel())
        diff = diff.repeat(reps)
    label = f"tinylm pseudo-gradient ({before.numel()} params, {steps} AdamW steps)"
    return diff[:numel].clone(), label


def load_baseline(rev: str) -> Any:
    """Import ``optim/codecs`` as of git revision ``rev`` as a separate package; return the module."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = subprocess.run(["git", "-C", root, "ls-tree", "--name-only", rev, "optim/codecs/"],
                           capture_output=True, text=True, check=True).stdout.split()
    pkg = os.path.join(tempfile.mkdtemp(prefix="codecs-baseline-"), "codecs_baseline")
    os.makedirs(pkg)
    for f in files:
        data = subprocess.run(["git", "-C", root, "show", f"{rev}:{f}"], capture_output=True, check=True).stdout
        with open(os.path.join(pkg, os.path.basename(f)), "wb") as fh:
            fh.write(data)
    spec = importlib.util.spec_from_file_location("codecs_baseline", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["codecs_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def measure(x: torch.Tensor, repeats: int, baseline: Any = None, baseline_rev: str = "") -> list[dict[str, Any]]:
    """Run every method on ``x`` and return one result row per method.

    Repeats are interleaved round-robin across methods, so that load from other processes on a
    shared machine hits every method alike; each method keeps its best encode and decode time.
    """
    from hivemind.compression import BlockwiseQuantization, CompressionInfo, Float16Compression, Uniform8BitQuantization

    mb = x.numel() * 4 / 1e6
    methods: list[tuple[str, Callable[[], Any], Callable[[Any], Any], Callable[[Any], int], Callable[[Any], torch.Tensor]]]
    methods = [("memcpy (clone)", x.clone, lambda y: y.clone(), lambda y: y.numel() * 4, lambda y: y)]
    for label, codec, params in OURS:
        methods.append((f"ours {label}", lambda c=codec, p=params: encode({"w": x}, c, **p), decode, len,
                        lambda out: out["w"]))
    if baseline is not None:
        for label, codec, params in OURS:
            if "zstd" in params:
                continue
            methods.append((f"before ({baseline_rev}) {label}", lambda c=codec, p=params: baseline.encode({"w": x}, c, **p),
                            baseline.decode, len, lambda out: out["w"]))
    info = CompressionInfo.from_tensor(x)
    for comp in (Float16Compression(), Uniform8BitQuantization(), BlockwiseQuantization()):
        methods.append((f"hivemind {type(comp).__name__}", lambda c=comp: c.compress(x, info), comp.extract,
                        lambda m: len(m.buffer), lambda y: y))
    best = {name: [float("inf"), float("inf"), 0, None] for name, *_ in methods}
    for _ in range(repeats):
        for name, enc, dec, size, result in methods:
            t0 = time.perf_counter()
            blob = enc()
            t1 = time.perf_counter()
            out = dec(blob)
            t2 = time.perf_counter()
            b = best[name]
            b[0], b[1], b[2], b[3] = min(b[0], t1 - t0), min(b[1], t2 - t1), size(blob), result(out)
            del blob, out
    rows = []
    for name, (t_enc, t_dec, nbytes, y) in best.items():
        err = float((y.double() - x.double()).norm() / x.double().norm())
        rows.append({
            "method": name, "bytes": nbytes, "ratio": round(x.numel() * 4 / nbytes, 2),
            "encode_MBps": round(mb / t_enc), "decode_MBps": round(mb / t_dec),
            "roundtrip_MBps": round(mb / (t_enc + t_dec)), "encode_ms": round(t_enc * 1e3, 1),
            "decode_ms": round(t_dec * 1e3, 1), "rel_l2": float(f"{err:.3g}"),
        })
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["method", "bytes", "ratio", "encode_MBps", "decode_MBps", "roundtrip_MBps", "rel_l2"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["method"]: r for r in rows}
    mem, hm = by["memcpy (clone)"], by["hivemind BlockwiseQuantization"]
    memcpy_MBps = mem["encode_MBps"]  # one copy
    out = {}
    for name in ("ours int8 (bs 4096)", "ours int8 (bs 256)"):
        r = by[name]
        out[name] = {
            "roundtrip_vs_memcpy": round(r["roundtrip_MBps"] / memcpy_MBps, 3),
            "P4a_quarter_of_memcpy": r["roundtrip_MBps"] >= memcpy_MBps / 4,
            "speedup_vs_hivemind_blockwise": round(r["roundtrip_MBps"] / hm["roundtrip_MBps"], 2),
            "bytes_vs_hivemind_blockwise": round(r["bytes"] / hm["bytes"], 4),
            "P4b_2x_hivemind_at_le_bytes": r["roundtrip_MBps"] >= 2 * hm["roundtrip_MBps"] and r["bytes"] <= hm["bytes"],
        }
    return out


def plot(results: dict[str, Any], path: str) -> None:
    """Bar charts of round-trip MB/s and compression ratio per method, one row per input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = results["inputs"]
    fig, axes = plt.subplots(len(inputs), 2, figsize=(14, 4.5 * len(inputs)), squeeze=False)
    for i, inp in enumerate(inputs):
        names = [r["method"] for r in inp["rows"]]
        for j, (key, title) in enumerate((("roundtrip_MBps", "round-trip MB/s"), ("ratio", "compression ratio"))):
            ax = axes[i][j]
            ax.barh(names, [r[key] for r in inp["rows"]], color=["grey" if "memcpy" in n else "C0" if "ours" in n else "C1" for n in names])
            ax.set_title(f"{title} - {inp['label']}", fontsize=9)
            ax.invert_yaxis()
            if key == "ratio":
                ax.set_xscale("log")
    fig.suptitle(f"{results['numel']:,} fp32 values, {results['torch_threads']} torch thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON and a markdown table; write codecs.json and codecs.png."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--no-tinylm", action="store_true", help="skip the tinylm pseudo-gradient input")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--baseline-rev", default="", help="also time optim/codecs as of this git revision")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    inputs = [("Gaussian N(0,1)", torch.randn(args.numel, generator=g))]
    if not args.no_tinylm:
        pg, label = pseudo_gradient(args.numel)
        inputs.append((label, pg))
    baseline = load_baseline(args.baseline_rev) if args.baseline_rev else None
    results: dict[str, Any] = {
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
        "numel": args.numel, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "codec_versions": codec_versions(), "inputs": [],
    }
    for label, x in inputs:
        rows = measure(x, args.repeats, baseline, args.baseline_rev)
        results["inputs"].append({"label": label, "rows": rows, "targets": _targets(rows)})
    results["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "codecs.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(args.out, "codecs.png"))
    print(json.dumps(results, indent=2))
    for inp in results["inputs"]:
        print(f"\n### {inp['label']} ({args.numel:,} values, {results['torch_threads']} thread(s), best of "
              f"{args.repeats}, load {results['loadavg_1min_before']} -> {results['loadavg_1min_after']})\n")
        print(_table(inp["rows"]))
        print("\ntargets:", json.dumps(inp["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
