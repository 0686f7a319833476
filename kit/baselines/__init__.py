"""A linear baseline (ridge on the current row and its EWMs), fit on train and packed as a
numpy-only submission. It gives `kit demo` and `kit score` a real model before any training.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec
from kit.data.io import read_frame
from kit.metrics import scored_truth
from kit.submission import write_submission_zip

EWM_ALPHAS = (0.3, 0.05)


def linear_design(df: pl.DataFrame, spec: CompetitionSpec) -> np.ndarray:
    """[1, x, ewm_a(x) for each alpha] per row, exactly as linear_solution.py computes it."""
    feats = [pl.col(f).cast(pl.Float64).fill_nan(0.0).fill_null(0.0) for f in spec.features]
    guarded = [pl.when(c.is_infinite()).then(0.0).otherwise(c) for c in feats]
    frame = df.select(pl.col(spec.id_col), *[g.alias(f) for g, f in zip(guarded, spec.features,
                                                                          strict=True)])
    ewms = [
        pl.col(f).ewm_mean(alpha=a, adjust=False).over(spec.id_col).alias(f"{f}@{a}")
        for a in EWM_ALPHAS for f in spec.features
    ]
    x = frame.select(*spec.features, *ewms).to_numpy().astype(np.float64)
    return np.hstack([np.ones((x.shape[0], 1)), x])


def fit_linear_baseline(train: Path, spec: CompetitionSpec, ridge: float = 10.0) -> np.ndarray:
    """Ridge coefficients (1 + F * (1 + len(EWM_ALPHAS)), K) fit on the rows that are scored."""
    df = read_frame(train)
    x = linear_design(df, spec)
    need = df[spec.need_col].cast(pl.Boolean).to_numpy()
    targets = None if spec.next_state else df.select(spec.targets).to_numpy()
    y = scored_truth(df[spec.id_col].to_numpy(), need, df.select(spec.features).to_numpy(),
                     targets, spec)
    x = x[need]
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # never shrink the intercept
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def write_linear_submission(coef: np.ndarray, folder: Path) -> Path:
    """Write solution.py + weights.npz into folder and zip it beside; returns the zip path."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    source = resources.files("kit.baselines") / "linear_solution.py"
    (folder / "solution.py").write_text(source.read_text())
    np.savez(folder / "weights.npz", coef=coef, alphas=np.array(EWM_ALPHAS))
    return write_submission_zip(folder)
