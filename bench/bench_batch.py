"""Batch-per-timestep protocol throughput on 1 CPU: a GRU 2x128 pack, 100 ids per time step.

Prints one JSON line. The same rows (100 sequences x --steps steps, random features) through:
- batch: `BatchPredictor.predict(frame)`, one Polars frame of 100 rows per time step (a
  gateway's call), and `predict_arrays` (numpy in, numpy out: the protocol without the frame);
- rows (baseline): `PredictionModel.predict` row by row, each sequence's rows in order (the
  row-at-a-time runtime, IOBinding).
All in this process, pinned to one CPU, onnxruntime on one thread. Each path gets one warm-up
pass (a fresh predictor's first call costs ~10x a later one: onnxruntime's first run), then the
best of --repeats timed passes, each with a fresh predictor (fresh state: the same work).
Predictions (of the last pass) are compared.

    python bench/bench_batch.py [--ids 100] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from bench_pack import GRU, fake_run
from common import best_of, emit

from kit.competition import load_spec
from kit.export.pack import pack_run
from kit.scoring.runner import DataPoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    spec = load_spec("predictorium")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        packed = pack_run(fake_run(Path(tmp) / "run", GRU, spec), "gru", Path(tmp) / "subs",
                          budget=False)
        module_spec = importlib.util.spec_from_file_location("sol", packed.folder / "solution.py")
        solution = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(solution)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.steps, args.ids, len(spec.features)))
        ids = np.arange(args.ids)
        frames = [pl.DataFrame({"seq_ix": ids, "step_in_seq": np.full(args.ids, t),
                                **{c: x[t, :, j] for j, c in enumerate(spec.features)}})
                  for t in range(args.steps)]
        rows = args.ids * args.steps

        batch_out = np.empty((args.steps, args.ids, 2))
        arrays_out = np.empty((args.steps, args.ids, 2))
        row_out = np.empty((args.steps, args.ids, 2))

        def by_frames() -> None:
            predictor = solution.BatchPredictor()
            for t, frame in enumerate(frames):
                batch_out[t] = predictor.predict(frame).select("t0", "t1").to_numpy()

        def by_arrays() -> None:
            predictor = solution.BatchPredictor()
            for t in range(args.steps):
                arrays_out[t] = predictor.predict_arrays(ids, x[t], steps=np.full(args.ids, t))

        def by_rows() -> None:
            model = solution.PredictionModel()
            for i in range(args.ids):
                for t in range(args.steps):
                    row_out[t, i] = model.predict(DataPoint(float(i), float(t), 1.0, x[t, i]))

        seconds = {}
        for name, path in (("frame", by_frames), ("arrays", by_arrays), ("rows", by_rows)):
            path()  # warm-up
            seconds[name] = best_of(path, args.repeats)[0]
        frame_s, arrays_s, rows_s = seconds["frame"], seconds["arrays"], seconds["rows"]
    diff = max(np.abs(batch_out - row_out).max(), np.abs(arrays_out - row_out).max())
    emit({
        "bench": "batch",
        "model": GRU,
        "ids_per_step": args.ids,
        "rows": rows,
        "repeats": args.repeats,
        "batch_frame_rows_per_s": round(rows / frame_s),
        "batch_arrays_rows_per_s": round(rows / arrays_s),
        "row_runtime_rows_per_s": round(rows / rows_s),
        "ratio_frame_vs_rows": round(rows_s / frame_s, 2),
        "ratio_arrays_vs_rows": round(rows_s / arrays_s, 2),
        # both batch paths against the row runtime: the same predictions
        "max_abs_diff": float(diff),
        "ok": bool(diff <= 1e-5),
    })


if __name__ == "__main__":
    main()
