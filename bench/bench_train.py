"""Training throughput: the kit trainer vs a bare hand-written loop vs a naive per-item loader.

GRU 2x128 on (N, 1000, 32) float32 arrays, batch 64, full BPTT, 2 CPU threads. All three train
the same model (same init) on as many batches of the same size (kit's `fit` shuffles them each
epoch; the others take them in order: the same work per batch):

- kit: `kit.train.trainer.fit` for one epoch (includes its per-epoch validation on 8 sequences
  and the atomic checkpoint: that is part of what the trainer costs);
- bare: the textbook loop over the same tensors (forward, masked MSE, backward, clip, step);
- naive: a torch DataLoader whose Dataset slices a Polars frame per sequence (`filter` by id),
  the way many notebooks feed sequence models.

Each method runs in its own fresh child process, once per repeat, interleaved: in one process
a method that runs after another inherits its already-faulted heap and looks ~15% faster on
these VMs, which is the allocator, not the method.

Prints one JSON line: sequences/s of each, kit's overhead over bare, and naive / bare.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import emit, run_child  # noqa: E402
from kit.competition import load_spec  # noqa: E402
from kit.config import resolve  # noqa: E402
from kit.features.normaliser import Normaliser  # noqa: E402
from kit.features.sets import build_feature_set  # noqa: E402
from kit.models import build_model  # noqa: E402
from kit.train.data import Split, TrainData  # noqa: E402
from kit.train.runs import RunFiles  # noqa: E402
from kit.train.trainer import fit  # noqa: E402

MODEL = {"type": "gru", "hidden": 128, "layers": 2}


def make_split(n: int, steps: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 32, generator=g)
    y = torch.randn(n, steps, 2, generator=g)
    mask = torch.zeros(n, steps, dtype=torch.bool)
    mask[:, 99:] = True
    return Split(x, y, mask, np.flatnonzero(mask.numpy().reshape(-1)))


def _train_step(model, optimizer, x, y, mask) -> None:
    """The textbook step both baselines run: forward, masked MSE, backward, clip, step."""
    model.train()  # as the trainer does (the CPU GRU runs another kernel path in eval mode)
    pred, _ = model(x, model.init_state(x.shape[0]))
    loss = ((pred - y) ** 2)[mask].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def bare_loop(model, split: Split, batch: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for lo in range(0, len(split), batch):
        _train_step(model, optimizer, split.x[lo:lo + batch], split.y[lo:lo + batch],
                    split.mask[lo:lo + batch])
    return time.perf_counter() - started


def naive_loader(model, split: Split, batch: int) -> float:
    """A Dataset that filters a Polars frame per sequence id, batched by a DataLoader."""
    n, steps, f = split.x.shape
    frame = pl.DataFrame({"seq_ix": np.repeat(np.arange(n), steps)}).hstack(
        pl.DataFrame(split.x.reshape(-1, f).numpy(), schema=[f"f{i}" for i in range(f)])
    ).hstack(pl.DataFrame(split.y.reshape(-1, 2).numpy(), schema=["t0", "t1"]))
    features = [f"f{i}" for i in range(f)]

    class Sequences(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            rows = frame.filter(pl.col("seq_ix") == i)
            mask = torch.zeros(steps, dtype=torch.bool)
            mask[99:] = True
            return (torch.from_numpy(rows.select(features).to_numpy()),
                    torch.from_numpy(rows.select("t0", "t1").to_numpy()), mask)

    loader = torch.utils.data.DataLoader(Sequences(), batch_size=batch, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for x, y, mask in loader:
        _train_step(model, optimizer, x, y, mask)
    return time.perf_counter() - started


def kit_epoch(model, split: Split, batch: int, folder: Path) -> float:
    spec = load_spec("predictorium")
    data = TrainData(spec, build_feature_set(spec, ["raw"]),
                     Normaliser("standard", None, np.zeros(32, np.float32),
                                np.ones(32, np.float32)),
                     split, make_split(8, split.x.shape[1], 99))
    config = resolve({"seed": 1, "model": MODEL, "loss": {"terms": {"mse": 1.0}},
                      "train": {"epochs": 1, "batch_size": batch, "lr": 1e-3,
                                "schedule": "constant", "warmup_epochs": 0}})
    files = RunFiles(folder)
    files.start(config, {"model_config": MODEL, "summary": {}}, spec)
    started = time.perf_counter()
    fit(config, data, model, files, progress=False)
    return time.perf_counter() - started


def run_method(name: str, args) -> float:
    """Seconds for one epoch of `name` in this (fresh) process, after a tiny warm-up epoch:
    first calls import modules lazily (clip_grad_norm_ pulls in torch.distributed and sympy,
    ~1.5 s), a once-per-process cost that is not throughput."""
    torch.set_num_threads(args.threads)
    method = {"bare": bare_loop, "naive": naive_loader}.get(name)

    def epoch(split: Split) -> float:
        torch.manual_seed(0)
        model = build_model(MODEL, 32, 2)
        if method is not None:
            return method(model, split, args.batch)
        with tempfile.TemporaryDirectory() as folder:
            return kit_epoch(model, split, args.batch, Path(folder))

    epoch(make_split(4, 120, 1))
    return epoch(make_split(args.seqs, args.steps, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("kit", "bare", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:  # a child: one method, one epoch
        emit({"seconds": run_method(args.only, args)})
        return
    common = ["--seqs", str(args.seqs), "--steps", str(args.steps), "--batch", str(args.batch),
              "--threads", str(args.threads)]
    times: dict[str, list[float]] = {"bare": [], "kit": [], "naive": []}
    for _ in range(args.repeats):
        for name in times:
            child = run_child([sys.executable, __file__, "--only", name, *common])
            times[name].append(child["seconds"])
    best = {k: min(v) for k, v in times.items()}
    rate = {k: args.seqs / v for k, v in best.items()}
    overhead = best["kit"] / best["bare"] - 1
    emit({"bench": "train", "model": "gru 2x128", "seqs": args.seqs, "steps": args.steps,
          "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
          "batches": math.ceil(args.seqs / args.batch),
          "kit_seqs_per_s": round(rate["kit"], 2), "bare_seqs_per_s": round(rate["bare"], 2),
          "naive_seqs_per_s": round(rate["naive"], 2), "kit_overhead": round(overhead, 4),
          "naive_over_bare": round(best["naive"] / best["bare"], 3), "goal_overhead": 0.10,
          "ok": overhead <= 0.10})


if __name__ == "__main__":
    main()
