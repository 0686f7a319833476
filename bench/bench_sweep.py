"""Sweep overhead: N tiny trials through `kit sweep` vs the same trials trained directly.

Prints one JSON line. A tiny competition (synthetic, 64 train / 16 valid sequences of 400
steps; a trial takes about a second) and a GRU experiment with a [sweep] over train.lr and
model.hidden. Measured in this run:

- direct: the trial configs, sampled up front from a RandomSampler study in memory, trained one
  after another with `train_one` in a loop (what you would write by hand);
- sweep: `sweep(exp, trials=N)` on a fresh SQLite study with the same RandomSampler seed and the
  pruner off, so both train exactly the same configs (checked);
- two workers: `sweep(..., workers=2)` on a fresh SQLite study (2 processes, 1 thread each) vs
  the one-worker sweep: the speed-up on 2 cores.

Goal (issue 7): sweep overhead <= 10% of the direct loop.

    python bench/bench_sweep.py [--trials 16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import tomli_w
from common import emit

from kit.competition import load_spec
from kit.data.synth import synthesize

SPEC = """
name = "bench-lob"
features = ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"]
targets = ["t0", "t1"]
seq_len = 400
warmup = 40
[metric]
name = "weighted_pearson"
clip = [-6.0, 6.0]
"""


def write_experiment(root: Path, epochs: int) -> None:
    (root / "spec.toml").write_text(SPEC)
    synthesize(load_spec(str(root / "spec.toml")), root / "data", train_seqs=64, valid_seqs=16,
               seed=0, progress=False)
    exps = root / "experiments"
    exps.mkdir()
    (exps / "bench.toml").write_text(tomli_w.dumps({
        "spec": str(root / "spec.toml"), "seed": 1,
        "data": {"train": str(root / "data/train.parquet"),
                 "valid": str(root / "data/valid.parquet"), "cache_dir": str(root / "cache")},
        "model": {"type": "gru", "hidden": 16, "layers": 1},
        "train": {"epochs": epochs, "batch_size": 8, "threads": 1},
        "sweep": {"pruner": "none", "sampler": "random", "params": {
            "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "model.hidden": {"type": "int", "low": 8, "high": 24, "step": 8}}},
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        write_experiment(root, args.epochs)
        os.environ["KIT_EXPERIMENTS"] = str(root / "experiments")
        os.chdir(root)
        import optuna

        import kit.sweep as sw
        from kit.train.recipe import train_one
        from kit.train.runs import RunFiles

        # the same configs as the sweep's RandomSampler draws (seeded by the pid there)
        setup = sw.prepare("bench", None, None, None)
        sampler_seed = os.getpid()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed),
                                    direction=setup.direction)
        configs = []
        for _ in range(args.trials):
            trial = study.ask()
            configs.append(sw.trial_config(setup.base, sw.suggest(trial, setup.params,
                                                                  setup.base)))
            study.tell(trial, 0.0)
        train_one({**configs[0], "sweep": {}}, RunFiles(root / "warm"), progress=False)  # cache
        t0 = time.perf_counter()
        direct_scores = []
        for i, config in enumerate(configs):
            config = {k: v for k, v in config.items() if k != "sweep"}
            metrics = train_one(config, RunFiles(root / f"direct/{i}"), progress=False)
            direct_scores.append(metrics["score"])
        direct_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        one = sw.sweep("bench", trials=args.trials, progress=False,
                       storage=f"sqlite:///{root / 'one.db'}", runs_dir=root / "runs1")
        sweep_s = time.perf_counter() - t0
        swept = optuna.load_study(study_name="bench", storage=sw.make_storage(one["storage"]))
        same = sorted(round(t.value, 6) for t in swept.get_trials()) == sorted(
            round(s, 6) for s in direct_scores)

        t0 = time.perf_counter()
        sw.sweep("bench", trials=args.trials, workers=2, progress=False,
                 storage=f"sqlite:///{root / 'two.db'}", runs_dir=root / "runs2")
        two_s = time.perf_counter() - t0
    overhead = sweep_s / direct_s - 1
    emit({
        "bench": "sweep",
        "trials": args.trials,
        "epochs": args.epochs,
        "direct_s": round(direct_s, 2),
        "sweep_s": round(sweep_s, 2),
        "overhead": round(overhead, 3),
        "overhead_ms_per_trial": round(1000 * (sweep_s - direct_s) / args.trials, 1),
        "same_configs": same,
        "two_workers_s": round(two_s, 2),
        "two_worker_speedup": round(sweep_s / two_s, 2),
        "goal": {"overhead": 0.10},
        "ok": overhead <= 0.10,
    })


if __name__ == "__main__":
    main()
