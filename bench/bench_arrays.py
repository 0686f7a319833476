"""Time and peak memory of `build_arrays` on a full-size fixed-length frame vs Polars' own.

Prints one JSON line. The frame: 10,721 sequences x 1000 steps (10.7M rows), 40 Float32
feature columns, two Float32 targets, built with numpy + polars in memory. Each path runs in
its own subprocess; peak RSS is the kernel's high-water mark (VmHWM, reset after the frame is
built), reported as the extra memory the build needed over the frame, divided by the bytes of
the arrays it returns (1.0 = no temporaries beyond the output).
kit: `build_arrays(df, spec, features)`, then (with --cache) a cache write and a cache hit.
Baseline ("plain"): `df.select(cols).to_numpy(order="c").reshape(n, steps, k)` for features
and targets, and the need column reshaped: what one writes by hand for a fixed-length frame.
kit does more (checks the contract, handles ragged sequences, returns lengths and ids), so a
ratio near 1 is the honest result. Both children digest their x, y and mask after the timing,
and the parent compares them (`outputs_equal`). Goal: rss/output <= 1.2, ratio <= 1.1.

Times are the best of --repeats runs (the first also shown: it pays the page faults of fresh
memory); peak RSS is the first run's.

    python bench/bench_arrays.py [--seqs 10721] [--steps 1000] [--features 40] [--repeats 3]
                                 [--no-cache]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import spec_from_dict
from kit.data.arrays import build_arrays
from kit.data.cache import cached_arrays


def make_frame(n_seqs: int, steps: int, n_features: int) -> tuple[pl.DataFrame, object]:
    spec = spec_from_dict(
        {"name": "bench", "features": [f"f0..f{n_features - 1}"], "targets": ["t0", "t1"],
         "seq_len": steps, "warmup": min(99, steps - 1)}, "<bench>",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    step = np.tile(np.arange(steps, dtype=np.int64), n_seqs)
    cols = {
        spec.id_col: np.repeat(np.arange(n_seqs, dtype=np.int64), steps),
        spec.step_col: step,
        spec.need_col: step >= spec.warmup,
    }
    df = pl.DataFrame(cols)
    del cols, step
    # One column at a time, so building the frame never holds two copies of the block.
    for name in [*spec.features, *spec.targets]:
        df = df.with_columns(pl.Series(name, rng.standard_normal(df.height, dtype=np.float32)))
    return df, spec


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux); ru_maxrss where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def plain(df: pl.DataFrame, spec, n: int, steps: int):
    def block(cols):
        return df.select(cols).to_numpy(order="c").reshape(n, steps, len(cols))

    x, y = block(list(spec.features)), block(list(spec.targets))
    mask = df[spec.need_col].to_numpy().reshape(n, steps)
    return x, y, mask


def child(args) -> dict:
    df, spec = make_frame(args.seqs, args.steps, args.features)
    before = rss_bytes("VmRSS")
    reset_peak()
    times = []
    for _ in range(args.repeats):
        outputs = arrays = None  # free the previous run's output first
        t0 = time.perf_counter()
        if args.child == "kit":
            arrays = build_arrays(df, spec, list(spec.features))
            outputs = [arrays.x, arrays.y, arrays.mask, arrays.lengths, arrays.ids]
        else:
            outputs = list(plain(df, spec, args.seqs, args.steps))
        times.append(time.perf_counter() - t0)
        if len(times) == 1:  # later repeats also hold allocator pages the first one freed
            peak = rss_bytes("VmHWM")
    out_bytes = sum(a.nbytes for a in outputs)
    digest = hashlib.sha256()
    for array in outputs[:3]:  # x, y, mask: what both paths return
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    result = {"seconds": min(times), "first_seconds": times[0], "peak_rss": peak,
              "rss_before": before, "output_bytes": out_bytes,
              "rss_over_output": (peak - before) / out_bytes,
              "digest": digest.hexdigest()}  # fmt: skip
    if args.child == "kit" and args.cache:
        with tempfile.TemporaryDirectory(prefix="bench-arrays-") as tmp:
            source = Path(tmp) / "source.bin"  # stands in for the parquet file (64 MB)
            source.write_bytes(os.urandom(64 << 20))
            key = {"bench": True}
            t0 = time.perf_counter()
            cached_arrays(source, key, lambda: arrays, cache_dir=Path(tmp) / "cache")
            result["cache_write_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            hit = cached_arrays(source, key, lambda: 1 / 0, cache_dir=Path(tmp) / "cache")
            float(hit.x[-1, -1, -1])
            result["cache_hit_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=10_721)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache", dest="cache", action="store_false")
    parser.add_argument("--child", choices=["kit", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = {}
    for path in ("kit", "plain"):
        cmd = [sys.executable, __file__, "--child", path, "--seqs", str(args.seqs),
               "--steps", str(args.steps), "--features", str(args.features),
               "--repeats", str(args.repeats)]  # fmt: skip
        if not args.cache:
            cmd.append("--no-cache")
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs[path] = json.loads(done.stdout.strip().splitlines()[-1])
    kit, base = runs["kit"], runs["plain"]
    equal = kit["digest"] == base["digest"]
    gb = 1 / 2**30
    ratio = kit["seconds"] / base["seconds"]
    print(json.dumps({
        "bench": "arrays",
        "rows": args.seqs * args.steps,
        "features": args.features,
        "repeats": args.repeats,
        "kit_s": round(kit["seconds"], 3),
        "kit_first_s": round(kit["first_seconds"], 3),
        "kit_peak_rss_gb": round(kit["peak_rss"] * gb, 3),
        "kit_rss_before_gb": round(kit["rss_before"] * gb, 3),
        "output_gb": round(kit["output_bytes"] * gb, 3),
        "kit_rss_over_output": round(kit["rss_over_output"], 3),
        "baseline": "plain: df.select(cols).to_numpy(order='c').reshape(n, steps, k)",
        "baseline_s": round(base["seconds"], 3),
        "baseline_first_s": round(base["first_seconds"], 3),
        "baseline_peak_rss_gb": round(base["peak_rss"] * gb, 3),
        "baseline_rss_over_output": round(base["rss_over_output"], 3),
        "ratio": round(ratio, 3),
        "outputs_equal": equal,
        "cache_write_s": round(kit.get("cache_write_s", float("nan")), 3),
        "cache_hit_s": round(kit.get("cache_hit_s", float("nan")), 4),
        "goal": {"kit_rss_over_output": 1.2, "ratio": 1.1},
        "ok": kit["rss_over_output"] <= 1.2 and ratio <= 1.1 and equal,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
