"""Reading what a run directory holds (kit/train/runs.py writes it), for the readers that must
not import torch: `kit runs`, `kit report`, `kit ensemble select` and `--resume`.

A file damaged by hand or by a kill is never a numpy/JSON traceback: metrics.json that cannot
be read is None (callers fall back on the history or call the run unfinished), and an array
file that cannot be read is a KitError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit.config import ConfigError
from kit.errors import KitError
from kit.toml_file import read_toml


def read_config(run_dir: Path) -> dict:
    """config.toml as a dict ({} when absent); invalid TOML, or a section that is not a table,
    is a ConfigError naming the file."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        return {}
    config = read_toml(path, ConfigError)
    for key in SECTIONS:
        if key in config and not isinstance(config[key], dict):
            raise ConfigError(f"{path}: [{key}] must be a table, found {config[key]!r}; the file "
                              "was edited by hand or damaged")
    return config


SECTIONS = ("data", "model", "train", "features", "loss", "normaliser")


def read_metrics(run_dir: Path) -> dict | None:
    """metrics.json as a dict, or None when absent, torn or not an object."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, torn mid-write, or not UTF-8
        return None
    return metrics if isinstance(metrics, dict) else None


def is_finished(run_dir: Path) -> bool:
    """metrics.json says finished = true (a missing or damaged one says nothing)."""
    return (read_metrics(run_dir) or {}).get("finished") is True


def load_array(path: Path, kind: str) -> np.ndarray:
    """A run's predictions (kind "preds": 2-D numbers) or row indices ("rows": 1-D ints)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise KitError(f"{path}: not a readable .npy file ({exc}); it was damaged after the "
                       "run wrote it") from None
    if kind == "rows" and (array.ndim != 1 or array.dtype.kind not in "iu"):
        raise KitError(f"{path}: expected a 1-D array of row indices, got {array.dtype} "
                       f"{array.shape}")
    if kind == "preds" and (array.ndim != 2 or array.dtype.kind not in "fiu"):
        raise KitError(f"{path}: expected a 2-D array of predictions (rows, targets), got "
                       f"{array.dtype} {array.shape}")
    return array
