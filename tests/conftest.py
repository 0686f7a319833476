"""Fixtures shared by several test modules: trained tiny runs of every model type."""

import os
from pathlib import Path

import pytest
import tomli_w

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


