"""Fixtures shared by several test modules: trained tiny runs of every model type."""

import os
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from kit.features import FEATURE_FORMAT
from kit.train.checkpoint import save_checkpoint
from kit.train.recipe import train_experiment
from tests.test_train import tiny_competition

MODEL_TABLES = {
    "gru": {"type": "gru", "hidden": 16, "layers": 2},
    "lstm": {"type": "lstm", "hidden": 12, "layers": 1},
    "attention_gru": {"type": "attention_gru", "hidden": 12, "layers": 1, "window": 8},
    "transformer": {"type": "transformer", "d_model": 16, "n_heads": 2, "layers": 1,
                    "window": 12},
    "ssm": {"type": "ssm", "d_model": 12, "layers": 1, "d_state": 4},
    "tcn": {"type": "tcn", "channels": 8, "kernel": 3, "dilations": [1, 2, 4]},
    "patchtst": {"type": "patchtst", "d_model": 16, "n_heads": 2, "layers": 1, "window": 12,
                 "patch_len": 4, "stride": 4},
}

@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A tiny competition with one experiment per model type (shared by the pack, parity and
    ensemble tests)."""
    root = tmp_path_factory.mktemp("pack")
    exps = tiny_competition(root, train_seqs=16, valid_seqs=6, seed=3)
    for name, table in MODEL_TABLES.items():
        (exps / f"{name}.toml").write_text(tomli_w.dumps({
            "spec": str(root / "tiny-lob.toml"), "seed": 5,
            "data": {"train": str(root / "data/train.parquet"),
                     "valid": str(root / "data/valid.parquet"), "cache_dir": str(root / "cache")},
            "features": {"groups": ["raw", "diffs", "ewm"]},
            "model": table,
            "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3},
        }))
    return root


@pytest.fixture(scope="session")
def runs(workspace):
    """One trained run per model type (1 epoch: parity needs weights, not quality)."""
    old = os.environ.get("KIT_EXPERIMENTS")
    os.environ["KIT_EXPERIMENTS"] = str(workspace / "experiments")
    try:
        runs = {name: Path(train_experiment(name, progress=False,
                                            runs_dir=workspace / "runs")[0]["run_dir"])
                for name in MODEL_TABLES}
        # a second GRU and LSTM of the same shape (another seed): ensembles stack such members
        for name in ("gru", "lstm"):
            runs[f"{name}_b"] = Path(train_experiment(name, seeds=[6], progress=False,
                                                      runs_dir=workspace / "runs")[0]["run_dir"])
        return runs
    finally:
        if old is None:
            del os.environ["KIT_EXPERIMENTS"]
        else:
            os.environ["KIT_EXPERIMENTS"] = old


def raw_gru_run(folder: Path, spec, normaliser=None, seed: int = 0, edit=None) -> Path:
    """A run directory with a random GRU 8x1 on the raw columns (no training: these tests are
    about the graph and the runtime), its normaliser fit on random rows unless one is given;
    edit(model), if given, sets weights by hand first."""
    import torch

    from kit.features.normaliser import Normaliser
    from kit.features.sets import build_feature_set
    from kit.models import build_model

    features = build_feature_set(spec, ["raw"])
    config = {"type": "gru", "hidden": 8, "layers": 1}
    torch.manual_seed(seed)
    model = build_model(config, len(features.outputs), spec.n_outputs)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    rows = np.random.default_rng(seed).standard_normal((500, len(features.outputs)))
    normaliser = normaliser or Normaliser.fit(rows.astype(np.float32))
    folder.mkdir(parents=True)
    save_checkpoint({
        "model": model.state_dict(), "model_config": config,
        "normaliser": normaliser.to_dict(), "features": features.to_dict(),
        "spec": spec.to_dict(), "score": None, "per_target": {},
        "feature_format": FEATURE_FORMAT}, folder / "best.pt")  # as kit.train.runs records it
    return folder


def hostile_rows(width: int) -> np.ndarray:
    """Rows past the guard's LIMIT (1e16) and up to float32's, then non-finite ones that the
    guard fills with those values."""
    rows = np.random.default_rng(1).standard_normal((30, width))
    rows[3] = 1e30
    rows[4] = np.nan  # filled with the 1e30s
    rows[6, ::2] = -3e38
    rows[7, ::2] = np.inf  # filled with the -3e38s
    rows[9, 1::2] = 2e16
    rows[10, 1::2] = -np.inf
    return rows
