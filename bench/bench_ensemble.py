"""Ensemble packs: scorer-loop latency of five GRU 2x128 members in one graph, and selection time.

Prints one JSON line.

Latency (each figure `kit score`'s own loop time in the 1-CPU sandboxed child, same rows, same
run): `kit pack --ensemble` of five GRU 2x128 runs (random weights, raw features), stacked
(one batched matmul per gate group and layer for all five) and unstacked (`--no-stack`: five
ONNX GRU ops in the one graph); baseline: five separate single-model packs, each its own
onnxruntime session with kit's runtime (IOBinding), called one after another on every row and
averaged. Goal (issue 6): <= 80 us/row and >= 1.2x faster than the separate sessions. Also
reported: five LSTM 2x128 members, stacked against unstacked.

Selection: `select` over 50 candidates on 1.3M rows x 2 targets of synthetic predictions (truth
heavy-tailed, candidates = truth x signal + noise, correlated): wall seconds, goal <= 30 s; the
exact-every-step greedy (every candidate scored with the real metric each iteration) is timed
for one iteration and multiplied by --iters, as the baseline.

    python bench/bench_ensemble.py [--seqs 10] [--rows 1300000] [--candidates 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w
from bench_pack import GRU, fake_run, timed
from common import emit

from kit.competition import load_spec
from kit.data.synth import synthesize
from kit.ensemble import Candidate, select
from kit.export.pack import pack_ensemble, pack_run
from kit.metrics import metric_value

MEMBERS = 5
LSTM = {"type": "lstm", "hidden": 128, "layers": 2}  # report: stacked vs unstacked LSTMs

SEPARATE_SOLUTION = """\
import os

import numpy as np

from runtime import PredictionModel as Single


class PredictionModel:
    # five packs, five sessions, called one after another on every row
    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.models = [Single(os.path.join(here, name)) for name in sorted(os.listdir(here))
                       if name.endswith(".onnx")]

    def predict(self, data_point):
        outs = [m.predict(data_point) for m in self.models]
        if outs[0] is None:
            return None
        return sum(outs) / len(outs)
"""


def latency(tmp: Path, data: Path, spec, repeats: int, model: dict = GRU,
            with_separate: bool = True) -> dict:
    runs = [fake_run(tmp / f"runs/m{i}", model, spec, seed=i) for i in range(MEMBERS)]
    doc = {"members": [{"name": r.name, "runs": [str(r)], "weights": [0.2, 0.2]}
                       for r in runs]}
    (tmp / "five.toml").write_text(tomli_w.dumps(doc))
    stacked = pack_ensemble(tmp / "five.toml", "stacked", tmp / "subs")
    unstacked = pack_ensemble(tmp / "five.toml", "unstacked", tmp / "subs", stack=False)
    figures = {
        "stacked": timed(stacked.folder, data, spec, repeats)
        | {"graph_nodes": stacked.manifest["onnx"]["nodes"]},
        "unstacked": timed(unstacked.folder, data, spec, repeats)
        | {"graph_nodes": unstacked.manifest["onnx"]["nodes"]},
    }
    if not with_separate:
        return figures
    separate = tmp / "subs/separate"
    separate.mkdir()
    for i, run in enumerate(runs):
        single = pack_run(run, f"single{i}", tmp / "subs", budget=False)
        (separate / f"m{i}.onnx").write_bytes((single.folder / "model.onnx").read_bytes())
        runtime = (single.folder / "solution.py").read_text()
    (separate / "runtime.py").write_text(runtime)
    (separate / "solution.py").write_text(SEPARATE_SOLUTION)
    return figures | {"separate": timed(separate, data, spec, repeats)}


def synthetic_candidates(rows: int, n: int, spec) -> tuple[np.ndarray, list[Candidate]]:
    rng = np.random.default_rng(0)
    truth = rng.standard_t(4, (rows, 2)).astype(np.float32)
    shared = rng.standard_normal((rows, 2)).astype(np.float32)
    out = []
    ids = np.arange(rows)
    for j in range(n):
        signal = 0.05 + 0.25 * rng.random()
        noise = rng.standard_normal((rows, 2)).astype(np.float32)
        preds = signal * truth + 0.6 * shared + noise
        out.append(Candidate(f"c{j}", Path(f"c{j}"), [], preds, ids, Path("synthetic"), spec))
    return truth, out


def exact_greedy_step_s(truth: np.ndarray, candidates: list[Candidate], spec) -> float:
    """One iteration of the naive greedy: every candidate's blend scored with the real metric."""
    blend = candidates[0].preds.astype(np.float64)
    t0 = time.perf_counter()
    for c in candidates:
        mixed = (blend + c.preds) / 2
        for t in range(truth.shape[1]):
            metric_value(spec, truth[:, t], mixed[:, t])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_300_000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    spec = load_spec("predictorium")
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        tmp = Path(tmp)
        synthesize(spec, tmp / "data", train_seqs=1, valid_seqs=args.seqs, seed=0,
                   progress=False)
        data = tmp / "data/valid.parquet"
        figures = latency(tmp / "gru", data, spec, args.repeats)
        lstm = latency(tmp / "lstm", data, spec, args.repeats, LSTM, with_separate=False)
    truth, candidates = synthetic_candidates(args.rows, args.candidates, spec)
    t0 = time.perf_counter()
    selection = select(candidates, truth.astype(np.float64), iters=args.iters)
    select_s = time.perf_counter() - t0
    naive_s = exact_greedy_step_s(truth, candidates, spec) * args.iters
    stacked = figures["stacked"]["us_per_row"]
    separate = figures["separate"]["us_per_row"]
    emit({
        "bench": "ensemble",
        "members": MEMBERS,
        "model": GRU,
        "stacked_us_per_row": stacked,
        "unstacked_us_per_row": figures["unstacked"]["us_per_row"],
        "separate_sessions_us_per_row": separate,
        "speedup_vs_separate": round(separate / stacked, 2),
        "stacked_vs_unstacked": round(figures["unstacked"]["us_per_row"] / stacked, 2),
        "graph_nodes": {k: figures[k].get("graph_nodes") for k in ("stacked", "unstacked")},
        "lstm": {"model": LSTM, "stacked_us_per_row": lstm["stacked"]["us_per_row"],
                 "unstacked_us_per_row": lstm["unstacked"]["us_per_row"],
                 "stacked_vs_unstacked": round(lstm["unstacked"]["us_per_row"]
                                               / lstm["stacked"]["us_per_row"], 2)},
        "rows": figures["stacked"]["rows"],
        "select_s": round(select_s, 2),
        "select_rows": args.rows,
        "select_candidates": args.candidates,
        "select_iters": args.iters,
        "select_members": int((selection.counts.sum(axis=0) > 0).sum()),
        "naive_exact_greedy_s_extrapolated": round(naive_s, 1),
        "goal": {"us_per_row": 80, "speedup_vs_separate": 1.2, "select_s": 30},
        "ok": stacked <= 80 and separate / stacked >= 1.2 and select_s <= 30,
    })


if __name__ == "__main__":
    main()
