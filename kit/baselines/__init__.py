"""A linear baseline: ridge on the current row and per-sequence EWMs of it, fit on train.

It is the learnable yardstick for a data set (how much of the oracle a causal linear model
recovers, docs/synth.md) and, packed as a numpy-only submission (`write_linear_submission`),
a model `kit score` replays without any training (the tests' scorer checks use it).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec
from kit.data.contract import listed_names
from kit.data.io import read_frame
from kit.errors import DataError, SubmissionError
from kit.metrics import MetricReport, evaluate, scored_truth
from kit.submission import write_submission_zip

EWM_ALPHAS = (0.5, 0.2, 0.05)
BLOCK_SEQS = 200  # sequences per design-matrix block: bounds memory on full-size files


def linear_design(df: pl.DataFrame, spec: CompetitionSpec) -> np.ndarray:
    """[1, x, ewm_a(x) for each alpha] per row, exactly as linear_solution.py computes it
    (non-finite values count as 0 there and here)."""
    guarded = [
        pl.when(pl.col(f).is_finite()).then(pl.col(f).cast(pl.Float64)).otherwise(0.0).alias(f)
        for f in spec.features
    ]
    frame = df.select(pl.col(spec.id_col), *guarded)
    ewms = [
        pl.col(f).ewm_mean(alpha=a, adjust=False).over(spec.id_col).alias(f"{f}@{a}")
        for a in EWM_ALPHAS for f in spec.features
    ]
    x = frame.select(*spec.features, *ewms).to_numpy().astype(np.float64)
    return np.hstack([np.ones((x.shape[0], 1)), x])


def _scored_blocks(path: Path, spec: CompetitionSpec,
                   max_seqs: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(design, truth) of the scored rows, a block of whole sequences at a time. The file is
    checked against the spec first (another competition's file, or one without its targets,
    raised Polars' column error), and its truth must be finite: one NaN made a whole output's
    coefficients NaN without a word (kit train refuses such a file too)."""
    frame = read_frame(path)
    refuse_missing_columns(frame, spec, path)
    frame = frame.sort(spec.id_col, spec.step_col, maintain_order=True)
    ids = frame[spec.id_col].unique(maintain_order=True)
    if max_seqs is not None:
        ids = ids[:max_seqs]
    for lo in range(0, len(ids), BLOCK_SEQS):
        block = frame.filter(pl.col(spec.id_col).is_in(ids[lo:lo + BLOCK_SEQS].implode()))
        need = block[spec.need_col].cast(pl.Boolean).to_numpy()
        targets = None if spec.next_state else block.select(spec.targets).to_numpy()
        truth = scored_truth(block[spec.id_col].to_numpy(), need,
                             block.select(spec.features).to_numpy(), targets, spec)
        bad = ~np.isfinite(truth)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            keys = block.filter(need).row(int(row), named=True)
            raise DataError(
                f"{path}: the truth of {spec.outputs[column]} is NaN or inf on a scored row, "
                f"the first at seq {keys[spec.id_col]} step {keys[spec.step_col]}: the linear "
                "baseline needs a finite truth on every scored row (kit data check counts them; "
                "kit train refuses the file too)")
        yield linear_design(block, spec)[need], truth


def refuse_missing_columns(frame: pl.DataFrame, spec: CompetitionSpec, path: Path) -> None:
    """The spec's columns the fit reads, named when the file lacks them (Polars' "unable to
    find column" was all a file of another competition, or one without targets, got)."""
    have = set(frame.columns)
    keys = [spec.id_col, spec.step_col, spec.need_col, *spec.features]
    missing = [c for c in keys if c not in have]
    if missing:
        other = ("; none of its feature columns is there: is it another competition's file?"
                 if not have & set(spec.features) else "")
        raise DataError(f"{path} lacks column(s) {listed_names(missing, 8)} of spec "
                        f"{spec.name!r}{other}")
    targets = [] if spec.next_state else [t for t in spec.targets if t not in have]
    if targets:
        raise DataError(f"{path} lacks target column(s) {', '.join(targets)}: the linear "
                        "baseline fits and scores on a labelled file")


def _no_scored_rows(path: Path, spec: CompetitionSpec, what: str,
                    max_seqs: int | None = None) -> DataError:
    within = "" if max_seqs is None else f" in its first {max_seqs:,} sequence(s)"
    return DataError(f"{path}: no scored rows (no row with {spec.need_col} = 1{within}): "
                     f"nothing to {what}")


def fit_linear_baseline(train: Path, spec: CompetitionSpec, ridge: float = 10.0,
                        max_train_seqs: int | None = 2000) -> np.ndarray:
    """Ridge coefficients (1 + F * (1 + len(EWM_ALPHAS)), K) fit on the scored train rows
    of the first max_train_seqs sequences (None: all)."""
    # 0 is not "all" here (train.max_train_seqs reads it so): None says that, 0 is refused
    if max_train_seqs is not None and max_train_seqs < 1:
        raise ValueError(f"max_train_seqs must be >= 1 or None (all), got {max_train_seqs}")
    if not ridge >= 0:  # (NaN too)
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    xtx = xty = 0.0
    rows = 0
    for x, y in _scored_blocks(train, spec, max_train_seqs):
        xtx = xtx + x.T @ x
        xty = xty + x.T @ y
        rows += len(x)
    # the intercept's column is all ones: with ridge > 0 the system is singular only here
    if rows == 0:
        raise _no_scored_rows(train, spec, "fit the linear baseline on", max_train_seqs)
    penalty = ridge * np.eye(xtx.shape[0])
    penalty[0, 0] = 0.0  # never shrink the intercept
    try:
        return np.linalg.solve(xtx + penalty, xty)
    except np.linalg.LinAlgError:
        # ridge 0 over a constant or collinear column: the least-squares fit of least norm
        return np.linalg.lstsq(xtx, xty, rcond=None)[0]


def evaluate_linear_baseline(coef: np.ndarray, valid: Path, spec: CompetitionSpec) -> MetricReport:
    """The competition metric of the baseline on a labelled file's scored rows."""
    preds, truths = [], []
    for x, y in _scored_blocks(valid, spec, None):
        preds.append(x @ coef)
        truths.append(y)
    if sum(len(y) for y in truths) == 0:
        raise _no_scored_rows(valid, spec, "evaluate the linear baseline on")
    return evaluate(spec, np.concatenate(truths), np.concatenate(preds))


LINEAR_FILES = ("solution.py", "weights.npz")
# Python writes __pycache__/ beside solution.py once it is imported; the zip leaves it out
REWRITABLE = (*LINEAR_FILES, "__pycache__")


def write_linear_submission(coef: np.ndarray, folder: Path) -> Path:
    """Write solution.py + weights.npz into folder and zip it beside; returns the zip path.
    A folder holding anything else is refused (it removed the whole folder before: given
    `submissions`, every package in it); its own earlier files and __pycache__ are not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():  # (a file named weights.npz passed the filter)
        raise SubmissionError(f"{folder} is a file: write the linear baseline into a folder of "
                              "its own")
    if folder.exists():
        others = [p.name for p in sorted(folder.iterdir()) if p.name not in REWRITABLE]
        if others:
            raise SubmissionError(f"{folder} holds other files ({', '.join(others[:5])}): "
                                  "write the linear baseline into a folder of its own")
    folder.mkdir(parents=True, exist_ok=True)
    source = resources.files("kit.baselines") / "linear_solution.py"
    (folder / "solution.py").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    np.savez(folder / "weights.npz", coef=coef, alphas=np.array(EWM_ALPHAS))
    return write_submission_zip(folder)
