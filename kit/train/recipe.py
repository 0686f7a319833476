"""`kit train`: experiment config -> data -> model -> fit, one run per seed."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from kit.config import ConfigError, apply_overrides, load_experiment, resolve
from kit.train.runs import RUNS_DIR, RunFiles, new_run_id


def experiment_config(exp: str, overrides: list[str] | None = None) -> dict:
    """The resolved config of an experiment with command-line overrides applied."""
    return resolve(apply_overrides(load_experiment(exp), list(overrides or [])))


def resumable_run(experiment: str, runs_dir: Path = RUNS_DIR) -> Path:
    """The newest run of an experiment that has a last.pt and has not finished."""
    candidates = sorted((runs_dir / experiment).glob("*/last.pt"), reverse=True)
    for last in candidates:
        metrics = last.parent / "metrics.json"
        if not metrics.exists() or not json.loads(metrics.read_text()).get("finished", False):
            return last.parent
    raise ConfigError(f"no unfinished run of {experiment!r} under {runs_dir / experiment} to "
                      "resume; start one without --resume")


def train_experiment(exp: str, overrides: list[str] | None = None, *,
                     seeds: list[int] | None = None, resume: bool = False,
                     run_dir: Path | None = None, stop_after_epochs: int = 0, progress: bool = True,
                     runs_dir: Path = RUNS_DIR) -> list[dict]:
    """Train one run per seed; returns each run's metrics (with its run directory)."""
    from kit.models import build_model, count_params, solve_width
    from kit.train.data import load_train_data
    from kit.train.trainer import fit

    base = experiment_config(exp, overrides)
    results = []
    for seed in seeds or [base["seed"]]:
        config = {**base, "seed": seed}
        if resume:
            root = run_dir or resumable_run(config["name"], runs_dir)
            files = RunFiles(root)
            config = resolve(tomllib.loads(files.config_path.read_text()))
        else:
            files = RunFiles(run_dir or runs_dir / config["name"] / new_run_id(seed))
        data = load_train_data(config)
        n_in, n_out = len(data.feature_set.outputs), data.spec.n_outputs
        model_config = solve_width(config["model"], n_in, n_out)
        model = build_model(model_config, n_in, n_out)
        summary = {"params": count_params(model), "features": n_in,
                   "train_seqs": len(data.train), "valid_seqs": len(data.valid)}
        if not resume:
            files.start({**config, "model": model_config}, {})
        files.about = {"model_config": model_config, "summary": summary}
        metrics = fit(config, data, model, files, resume=resume,
                      stop_after_epochs=stop_after_epochs, progress=progress)
        results.append({**metrics, "run_dir": str(files.root)})
    return results
