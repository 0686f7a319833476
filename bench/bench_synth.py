"""Benchmark: full-size synthetic Predictorium generation (train + valid + oracle files).

Runs `synthesize(full=True)` in a child process and measures its wall time and peak RSS, then,
as the baseline, the time another child takes to write the same files and rows (same columns,
same parquet writer and row groups; the valid oracle too) filled with random float32 numbers:
ratio = generation time / pure-I/O time, i.e. how much the generative model costs on top of
writing the bytes. Each child writes into a fresh folder after --settle seconds (default 20)
of quiet: on this VM, memory freed moments before (the previous child's pages) is reused at a
tenth of the price of fresh memory (docs/bench.md, eighth session), which flattered whichever
child ran second, the baseline, and so the ratio against kit.
Prints one JSON line.
Usage: python bench/bench_synth.py [--train-seqs N] [--valid-seqs M] [--settle S]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

GOAL_SECONDS = 60.0
GOAL_GB = 4.0

GENERATE = """
import sys
from pathlib import Path
from kit.competition import load_spec
from kit.data.synth import synthesize
synthesize(load_spec("predictorium"), Path(sys.argv[1]), train_seqs=int(sys.argv[2]),
           valid_seqs=int(sys.argv[3]))
"""

RANDOM_ROWS = """
import sys
from pathlib import Path
import numpy as np
from kit.competition import load_spec
from kit.data.synth import CHUNK_SEQS
from kit.data.synth.core import ParquetSink, arrow_schema, need_mask
spec = load_spec("predictorium")
steps = spec.seq_len
need = need_mask(steps, spec.warmup, spec.tail)
keys = [spec.id_col, spec.step_col]
rng = np.random.default_rng(0)
for split, n in (("train", int(sys.argv[2])), ("valid", int(sys.argv[3]))):
    out = Path(sys.argv[1])
    sinks = [ParquetSink(out / f"{split}.parquet", arrow_schema(spec, spec.columns))]
    if split == "valid":  # the oracle file, as synthesize writes it
        sinks.append(ParquetSink(out / "valid_oracle.parquet",
                                 arrow_schema(spec, keys + list(spec.outputs))))
    for lo in range(0, n, CHUNK_SEQS):
        m = min(CHUNK_SEQS, n - lo)
        cols = {spec.id_col: np.repeat(np.arange(lo, lo + m, dtype=np.int64), steps),
                spec.step_col: np.tile(np.arange(steps, dtype=np.int64), m),
                spec.need_col: np.tile(need, m)}
        for c in (*spec.features, *spec.targets):
            cols[c] = rng.standard_normal(m * steps, dtype=np.float32)
        sinks[0].write(cols)
        if len(sinks) > 1:
            sinks[1].write({k: cols[k] for k in keys} | {
                c: rng.standard_normal(m * steps, dtype=np.float32) for c in spec.outputs})
    for sink in sinks:
        sink.close()
"""


def timed_child(code: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seqs", type=int, default=10_721)
    parser.add_argument("--valid-seqs", type=int, default=1_444)
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds of quiet before each child")
    args = parser.parse_args()
    sizes = (str(args.train_seqs), str(args.valid_seqs))
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        time.sleep(args.settle)
        seconds = timed_child(GENERATE, tmp, *sizes)
        # ru_maxrss of children: the largest peak among waited-for children, in KiB on Linux;
        # read now, before the baseline child runs
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        time.sleep(args.settle)
        baseline = timed_child(RANDOM_ROWS, tmp, *sizes)
    rows = (args.train_seqs + args.valid_seqs) * 1000
    print(
        json.dumps(
            {
                "bench": "synth",
                "rows": rows,
                "train_rows": args.train_seqs * 1000,
                "seconds": round(seconds, 2),
                "peak_rss_gb": round(peak_gb, 3),
                "goal_seconds": GOAL_SECONDS,
                "goal_gb": GOAL_GB,
                "baseline": round(baseline, 2),
                "baseline_what": "write the same rows of random float32 with the same writer "
                                 "(train, valid and the oracle file)",
                "ratio": round(seconds / baseline, 2),
                "settle_s": args.settle,
                "ok": seconds <= GOAL_SECONDS and peak_gb <= GOAL_GB,
            }
        )
    )


if __name__ == "__main__":
    main()
