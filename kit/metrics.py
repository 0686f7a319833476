"""Competition metrics with the exact semantics of the official scorers.

All sums run in float64 whatever the input dtype. Each metric takes 1-D arrays for one target;
`evaluate` applies the spec's metric per target and averages into the competition score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kit.competition import CompetitionSpec, spec_argument
from kit.errors import DataError

WEIGHT_FLOOR = 1e-8
SHOWN_OUTPUTS = 6  # past this many outputs, reports print a summary, not one figure each


def weighted_pearson(
    y_true: np.ndarray, y_pred: np.ndarray, clip: tuple[float, float] | None = (-6.0, 6.0)
) -> float:
    """Pearson correlation weighted by max(|y_true|, 1e-8), predictions clipped, pooled.

    Returns 0.0 when either weighted variance is <= 0 (a constant prediction scores 0).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    _same_length(y, p)
    if clip is not None:
        p = np.clip(p, clip[0], clip[1])
    w = np.maximum(np.abs(y), WEIGHT_FLOOR)
    w_sum = w.sum()
    dy = y - (w @ y) / w_sum
    dp = p - (w @ p) / w_sum
    cov = (w * dy) @ dp / w_sum
    var_y = (w * dy) @ dy / w_sum
    var_p = (w * dp) @ dp / w_sum
    if var_y <= 0 or var_p <= 0:
        return 0.0
    # Two roots, not the root of the product: that underflows to 0 for tiny-valued targets.
    return float(cov / (np.sqrt(var_y) * np.sqrt(var_p)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination as sklearn.metrics.r2_score for one column.

    A constant target scores 1.0 when predicted exactly and 0.0 otherwise (sklearn's
    force_finite behaviour); a single row is NaN (sklearn: not well-defined below two samples).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    _same_length(y, p)
    if y.size == 1:
        return float("nan")
    ss_res = float(((y - p) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y, p = _as_pair(y_true, y_pred)
    return float(np.abs(y - p).mean())


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y, p = _as_pair(y_true, y_pred)
    return float(np.sqrt(((y - p) ** 2).mean()))


def _as_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    _same_length(y, p)
    return y, p


def _same_length(y: np.ndarray, p: np.ndarray) -> None:
    if y.shape != p.shape:
        raise DataError(f"y_true has {y.size} values but y_pred has {p.size}")
    if y.size == 0:
        raise DataError("no scored rows: nothing to evaluate")


@dataclass
class MetricReport:
    """Per-target values of the competition metric, their mean, and secondary errors."""

    metric: str
    per_target: dict[str, float]
    score: float
    mae: dict[str, float] = field(default_factory=dict)
    rmse: dict[str, float] = field(default_factory=dict)
    rows: int = 0

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "score": self.score,
            "per_target": self.per_target,
            "mae": self.mae,
            "rmse": self.rmse,
            "rows": self.rows,
        }


def metric_value(spec: CompetitionSpec | str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The spec's metric on one target column (spec: a CompetitionSpec, a name or a TOML path)."""
    spec = spec_argument(spec)
    name, clip = spec.metric.name, spec.metric.clip
    if name == "weighted_pearson":
        return weighted_pearson(y_true, y_pred, clip)
    if clip is not None:  # every metric scores clipped predictions when the spec sets a clip
        y_pred = np.clip(np.asarray(y_pred, dtype=np.float64), clip[0], clip[1])
    if name == "r2":
        return r2(y_true, y_pred)
    if name == "mae":
        return mae(y_true, y_pred)
    return rmse(y_true, y_pred)


def evaluate(spec: CompetitionSpec | str, y_true: np.ndarray, y_pred: np.ndarray
             ) -> MetricReport:
    """Score (rows, K) predictions against (rows, K) truth the way the competition does (spec:
    a CompetitionSpec, a name or a TOML path)."""
    spec = spec_argument(spec)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    k = spec.n_outputs
    if y_true.ndim != 2 or y_true.shape[1] != k or y_pred.shape != y_true.shape:
        raise DataError(
            f"expected truth and predictions of shape (rows, {k}); "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    names = spec.outputs
    # NaN/inf truth or predictions give a NaN metric, as the official scorer's would: that is
    # the answer (callers say why), not a numpy warning
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        per_target = {n: metric_value(spec, y_true[:, j], y_pred[:, j])
                      for j, n in enumerate(names)}
        return MetricReport(
            metric=spec.metric.name,
            per_target=per_target,
            score=float(np.mean(list(per_target.values()))),
            mae={n: mae(y_true[:, j], y_pred[:, j]) for j, n in enumerate(names)},
            rmse={n: rmse(y_true[:, j], y_pred[:, j]) for j, n in enumerate(names)},
            rows=int(y_true.shape[0]),
        )


def oracle_fraction(score: float, oracle_score: float, higher_is_better: bool) -> float:
    """How close a score comes to the oracle's: 1.0 is as good as the oracle, lower is worse.

    score / oracle for metrics where higher is better (weighted Pearson, r2); oracle / score for
    errors (mae, rmse), where score / oracle would read 1.5 for a model 50% worse. NaN when the
    ratio is undefined (an oracle scoring 0, or a model with zero error).
    """
    if higher_is_better:
        return score / oracle_score if oracle_score else float("nan")
    if score == 0.0:
        return 1.0 if oracle_score == 0.0 else float("nan")
    return oracle_score / score


def scored_truth(
    ids: np.ndarray, need: np.ndarray, features: np.ndarray, targets: np.ndarray | None,
    spec: CompetitionSpec,
) -> np.ndarray:
    """The truth for every row that needs a prediction, in row order, shape (n_scored, K).

    Targets protocol: the target columns of those rows. Next-state protocol: the features of
    the following row of the same sequence (rows must be sorted by id, then step).
    """
    need = np.asarray(need).astype(bool)
    if not spec.next_state:
        if targets is None:
            raise DataError(f"the data lacks target column(s) {list(spec.targets)}; "
                            "scoring needs a labelled file with all of them")
        return np.asarray(targets, dtype=np.float64)[need]
    rows = np.flatnonzero(need)
    nxt = rows + 1
    bad = (nxt >= len(ids)) | (ids[np.minimum(nxt, len(ids) - 1)] != ids[rows])
    if bad.any():
        r = rows[np.argmax(bad)]
        raise DataError(f"row {r} (seq {ids[r]}) needs a prediction but is the last row of its "
                        "sequence: the next-state protocol has no truth for it")
    return np.asarray(features, dtype=np.float64)[nxt]


def outputs_summary(per_target: dict[str, float]) -> str:
    """What kit score and the demo print for more than SHOWN_OUTPUTS outputs: their count,
    the NaN ones by name (the min and max leave them out: a NaN score hid which, r280), and
    the least and greatest score (4 decimals). None, a NaN in a JSON record, counts as NaN."""
    per_target = {k: np.nan if v is None else v for k, v in per_target.items()}
    values = np.array(list(per_target.values()), dtype=np.float64)
    nan = [name for name, value in per_target.items() if np.isnan(value)]
    scored = values[~np.isnan(values)]
    if scored.size == 0:  # nanmin would warn "All-NaN slice encountered"
        return f"{len(values)} outputs, all nan"
    shown = ", ".join(nan[:SHOWN_OUTPUTS]) + (", ..." if len(nan) > SHOWN_OUTPUTS else "")
    nans = f"{len(nan)} nan ({shown}), " if nan else ""
    return f"{len(values)} outputs, {nans}min {scored.min():.4f}, max {scored.max():.4f}"
