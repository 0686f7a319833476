"""Overhead of `kit score`'s child loop over a bare Python loop calling the same model.

Prints one JSON line. The submission returns np.zeros(K) when a prediction is needed and None
otherwise, so nearly all the time is the scorer's own per-row work. kit: rows / loop_s as the
child measures it (pinned to one CPU). Baseline: in this process, pinned to the same CPU,
`for row in values: model.predict(DataPoint(row[0], row[1], row[2], row[3:]))` and nothing
else. Goal: overhead <= 1.5 us/row and ratio (kit us/row / baseline us/row) <= 1.5.

    python bench/bench_scorer.py [--rows 150000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import load_spec
from kit.scoring import score_submission
from kit.scoring.runner import DataPoint, pandas_rows
from kit.scoring.score import load_rows

SOLUTION = """\
import numpy as np


class PredictionModel:
    def predict(self, data_point):
        if not data_point.need_prediction:
            return None
        return np.zeros({k})
"""


def write_data(path: Path, spec, n_rows: int) -> None:
    """Synthetic rows in the spec's exact layout and dtypes."""
    seq_len = spec.seq_len or 1000
    n_seqs = max(1, n_rows // seq_len)
    steps = np.tile(np.arange(seq_len), n_seqs)
    rng = np.random.default_rng(0)
    cols = {
        spec.id_col: pl.Series(np.repeat(np.arange(n_seqs), seq_len), dtype=pl.Int64),
        spec.step_col: pl.Series(steps, dtype=pl.Int64),
        spec.need_col: pl.Series((steps >= spec.warmup) & (steps < seq_len - spec.tail)),
    }
    n = len(steps)
    for name in [*spec.features, *spec.targets]:
        cols[name] = pl.Series(rng.standard_normal(n), dtype=pl.Float32)
    pl.DataFrame(cols).write_parquet(path)


def baseline_loop(solution: Path, values: np.ndarray) -> float:
    """Seconds for the bare loop over the same rows with the same model."""
    spec = importlib.util.spec_from_file_location("bench_solution", solution)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.PredictionModel()
    t0 = time.perf_counter()
    for row in values:
        dp = DataPoint(row[0], row[1], row[2], row[3:])
        model.predict(dp)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spec", default="predictorium")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory(prefix="bench-scorer-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data.parquet"
        write_data(data, spec, args.rows)
        sub = tmp / "sub"
        sub.mkdir()
        (sub / "solution.py").write_text(SOLUTION.format(k=spec.n_outputs))

        kit_runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = score_submission(sub, data, spec, progress=False)
            kit_runs.append((result.loop_s, time.perf_counter() - t0, result))
        loop_s, wall_s, result = min(kit_runs, key=lambda r: r[0])

        # the same rows the child feeds: typed as the scorer's DataFrame.values types them
        rows = load_rows(data, spec, None)
        values = pandas_rows(rows.values, rows.column_dtypes)
        if result.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {result.cpu})
        base_s = min(baseline_loop(sub / "solution.py", values) for _ in range(args.repeats))

    rows = result.rows
    kit_us, base_us = 1e6 * loop_s / rows, 1e6 * base_s / rows
    overhead, ratio = kit_us - base_us, kit_us / base_us
    print(json.dumps({
        "bench": "scorer",
        "rows": rows,
        "repeats": args.repeats,
        "cpu": result.cpu,
        "kit_rows_per_s": round(rows / loop_s),
        "baseline_rows_per_s": round(rows / base_s),
        "kit_us_per_row": round(kit_us, 3),
        "baseline_us_per_row": round(base_us, 3),
        "overhead_us_per_row": round(overhead, 3),
        "ratio": round(ratio, 3),
        "kit_init_s": round(result.init_s, 3),
        "kit_wall_s": round(wall_s, 3),
        "goal": {"overhead_us_per_row": 1.5, "ratio": 1.5},
        "ok": overhead <= 1.5 and ratio <= 1.5,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
