"""The NaN/inf guard that runs before every feature op, in both faces.

Policy: a non-finite value (NaN, +inf, -inf, or a null in the batch face) is replaced by the last
finite value of the same column in the same sequence, or by 0.0 before there is one. Carrying the
last value keeps level-like columns (prices) continuous; 0.0 is the neutral value of normalised
features. Finite values beyond +-LIMIT (1e16) are clipped to it, so that no op overflows
float32 (see kernels.LIMIT). No op downstream ever sees a non-finite input, so no op emits NaN.
A packed chain of raw columns only leaves that clip to a normaliser that bounds every column
far inside it (kit.export.frozen.spare_guard_clip): its state may then hold a value past LIMIT.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor, nn

from kit.features.kernels import LIMIT


def _limited(expr: pl.Expr, clip: bool) -> pl.Expr:
    return expr.clip(-LIMIT, LIMIT) if clip else expr


def guard_exprs(columns: list[str], id_col: str, clip: set[str]) -> list[pl.Expr]:
    """Batch face: forward-fill non-finite values within each sequence, then 0.0 (float32, the
    stream face's precision), then the +-LIMIT clip for the columns in `clip` (on the others it
    would change nothing)."""
    out = []
    for name in columns:
        col = pl.col(name).cast(pl.Float32)
        finite_or_null = pl.when(col.is_finite()).then(col).otherwise(None)
        filled = finite_or_null.forward_fill().over(id_col).fill_null(0.0)
        out.append(_limited(filled, name in clip).alias(name))
    return out


@dataclass
class Guarded:
    frame: pl.LazyFrame
    bounds: dict[str, float]  # column -> largest |value| after the guard (at most LIMIT)
    rows: int


def guard_frame(df: pl.DataFrame | pl.LazyFrame, columns: list[str], id_col: str) -> Guarded:
    """Apply the guard. One scan finds which columns hold non-finite values (only those get the
    per-sequence fill) and each column's largest finite |value| (only columns beyond LIMIT get
    the clip: a clip that changes nothing is skipped, which saves a pass over the column)."""
    lazy = df.lazy()
    f32 = {c: pl.col(c).cast(pl.Float32) for c in columns}
    scan = lazy.select(
        pl.len().alias("\0rows"),
        *[f32[c].is_finite().fill_null(False).all().alias(f"f|{c}") for c in columns],
        *[f32[c].abs().filter(f32[c].is_finite()).max().alias(f"m|{c}") for c in columns],
    ).collect().row(0, named=True)
    big = {c for c in columns if (scan[f"m|{c}"] or 0.0) > LIMIT}
    dirty = [c for c in columns if not scan[f"f|{c}"]]
    clean = [_limited(f32[c], c in big) for c in columns if scan[f"f|{c}"]]
    bounds = {c: min(float(scan[f"m|{c}"] or 0.0), LIMIT) for c in columns}
    return Guarded(lazy.with_columns(*clean, *guard_exprs(dirty, id_col, big)), bounds,
                   int(scan["\0rows"]))


class Guard(nn.Module):
    """Stream face: state = the last finite value of each column (zeros = new sequence)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        # off only where a normaliser's clip follows each column directly and bounds it far
        # inside +-LIMIT (kit.export.frozen.spare_guard_clip): the outputs are the same
        self.clip = True

    def init_state(self, batch: int) -> list[Tensor]:
        return [torch.zeros(batch, 1, self.width)]

    def _limited(self, x: Tensor) -> Tensor:
        return x.clamp(-LIMIT, LIMIT) if self.clip else x

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (last,) = state  # [B, 1, F]
        if x.shape[1] == 1:  # the step graph: no slicing of the one row (a node saved)
            last = self._limited(torch.where((x - x) == 0, x, last))
            return last, [last]
        rows = []
        for t in range(x.shape[1]):  # T is 1 in the step graph
            row = x[:, t:t + 1]
            # x - x is 0 exactly for finite x and NaN for NaN/inf: 2 graph nodes, not 4
            last = self._limited(torch.where((row - row) == 0, row, last))
            rows.append(last)
        return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)), [last]
