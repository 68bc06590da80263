"""Fuzz the tensor-frame decoder with random, mutated and hostile frames.

Every input must either decode or raise a ``CodecError`` subclass; anything else is a crash.
Peak RSS is sampled before and after, and the run also feeds frames that claim 10 GB to check
that nothing near the claimed size is ever allocated.

    python -m benchmarks.codec_fuzz --frames 100000
    python -m benchmarks.codec_fuzz --codec sparse --frames 20000   # the sparse codec's streams

``--codec sparse`` fuzzes frames of the ``sparse`` codec only, half of them well-formed frames
whose stream is random bytes of a legal length (so the codec's own checks decide), with the cap
set to the model's float32 size: nothing may allocate more than that, whatever a frame declares.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import time

import torch

from dai_swarm.errors import CodecError
from dai_swarm.optim.codecs import decode, encode
from dai_swarm.optim.codecs import get_codec
from dai_swarm.optim.codecs.mutate import build_frame, mutate, random_stream_frame, zstd_bomb

#: The "model size" of the sparse corpus: its largest frame decodes to 25,280 bytes.
SPARSE_MODEL_BYTES = 32 << 10
SPARSE_PARAMS = ({}, {"chunk": 64, "k": 8, "bits": 3}, {"chunk": 1024, "k": 1, "bits": 8})


def seed_frames(seed: int = 0) -> list[bytes]:
    """A small corpus of valid frames covering every codec, several dtypes and params."""
    g = torch.Generator().manual_seed(seed)
    ts = {"a.weight": torch.randn(7, 9, generator=g), "b": torch.randn(40, generator=g).half(), "c": torch.zeros(0)}
    frames = [encode(ts, c) for c in ("none", "fp16", "int8")]
    frames.append(encode({"x": torch.randn(300, generator=g)}, "int8", blocksize=64))
    frames.append(encode({"x": torch.randn(5000, generator=g)}, "topk", fraction=0.01))
    frames.append(encode({"x": torch.randn(700, generator=g)}, "topk", fraction=0.1, values="int8", blocksize=64))
    frames.append(encode({"i": torch.arange(10), "m": torch.ones(3, dtype=torch.bool)}, "none"))
    big = 10 * (1 << 30)
    frames.append(build_frame(1, b"{}", [("a", 0, [big // 4], big, zstd_bomb(0, declared_size=big))]))
    frames.append(build_frame(1, b"{}", [("a", 8, [1 << 24], 1 << 24, zstd_bomb(1 << 24))]))
    return frames


def sparse_frames(seed: int = 0) -> list[bytes]:
    """Valid ``sparse`` frames (several params, shapes and dtypes) and ones declaring huge shapes."""
    g = torch.Generator().manual_seed(seed)
    ts = {"a.weight": torch.randn(70, 90, generator=g), "b": torch.randn(40, generator=g).half(), "c": torch.zeros(0)}
    frames = [encode(ts, "sparse", **p) for p in SPARSE_PARAMS]
    frames.append(encode({"x": torch.zeros(5000)}, "sparse"))
    frames.append(build_frame(5, b'{"bits":2,"chunk":4096,"k":64}', [("x", 0, [1 << 40], 64, bytes(64), 0)]))
    return frames


def random_sparse_frame(rng: random.Random) -> bytes:
    """A well-formed ``sparse`` frame whose stream is random bytes of a legal length."""
    codec = get_codec("sparse")
    params = rng.choice(SPARSE_PARAMS)
    full = codec.check_params(dict(params))
    numel = rng.choice((1, 63, 64, 700, 4096, 5000))
    lo, hi = codec.min_raw_size(numel, torch.float32, **full), codec.max_raw_size(numel, torch.float32, **full)
    pbytes = json.dumps(full, sort_keys=True, separators=(",", ":")).encode()
    return random_stream_frame(5, pbytes, "x", [numel], rng.randint(lo, hi), rng)


def fuzz(n_frames: int, seed: int = 0, max_bytes: int = 64 << 20, corpus: list[bytes] | None = None,
         random_streams: bool = False) -> dict:
    """Decode ``n_frames`` mutated frames; count outcomes by exception type and mutation kind.

    ``corpus`` replaces the default seed frames; ``random_streams`` makes every other frame a
    :func:`random_sparse_frame` instead of a mutation.
    """
    rng = random.Random(seed)
    corpus = corpus if corpus is not None else seed_frames(seed)
    expects = []
    for f in corpus:
        try:
            expects.append({k: (tuple(t.shape), t.dtype) for k, t in decode(f, max_bytes=max_bytes).items()})
        except CodecError:
            expects.append(None)
    outcomes: collections.Counter = collections.Counter()
    crashes: list[str] = []
    for i in range(n_frames):
        base = corpus[i % len(corpus)]
        if random_streams and i % 2:
            kind, frame = "random_stream", random_sparse_frame(rng)
        else:
            kind, frame = mutate(base, rng, donor=rng.choice(corpus))
        with_expect = i % 4 == 0 if random_streams else i % 2
        expect = expects[i % len(corpus)] if with_expect else None
        try:
            decode(frame, expect=expect, max_bytes=max_bytes)
            outcomes["decoded"] += 1
        except CodecError as e:
            outcomes[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - a crash is what we are looking for
            outcomes["CRASH"] += 1
            if len(crashes) < 20:
                crashes.append(f"{kind}: {type(e).__name__}: {e}")
    return {"outcomes": dict(sorted(outcomes.items())), "crashes": crashes}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz campaign and print JSON plus a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", choices=("all", "sparse"), default="all", help="sparse: that codec's frames only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seed_frames()  # warm imports before measuring RSS
    sparse = args.codec == "sparse"
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    cap = SPARSE_MODEL_BYTES if sparse else 64 << 20
    res = fuzz(args.frames, args.seed, max_bytes=cap, corpus=sparse_frames(args.seed) if sparse else None,
               random_streams=sparse)
    wall = time.perf_counter() - t0
    res.update(
        frames=args.frames,
        seed=args.seed,
        wall_s=round(wall, 2),
        frames_per_s=round(args.frames / wall),
        peak_rss_mib_before=round(rss0, 1),
        peak_rss_mib_after=round(_rss_mib(), 1),
        torch_threads=torch.get_num_threads(),
        per_call_max_bytes=cap,
        codec=args.codec,
    )
    print(json.dumps(res, indent=2))
    print("\n| outcome | count |\n|---|---|")
    for k, v in res["outcomes"].items():
        print(f"| {k} | {v} |")
    print(f"\n{args.frames} frames in {wall:.1f} s; crashes: {res['outcomes'].get('CRASH', 0)}; "
          f"peak RSS {rss0:.0f} -> {_rss_mib():.0f} MiB")
    return 1 if res["crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
