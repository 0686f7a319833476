"""Tiny, valid competition frames built in memory for tests (no generator involved)."""

from __future__ import annotations

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec, spec_from_dict


def small_spec(seq_len: int | None = 20, warmup: int = 5, **overrides) -> CompetitionSpec:
    """The predictorium contract shrunk to short sequences."""
    raw = {
        "name": "tiny",
        "features": ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"],
        "targets": ["t0", "t1"],
        "seq_len": seq_len or 0,
        "warmup": warmup,
        "metric": {"name": "weighted_pearson", "clip": [-6.0, 6.0]},
    }
    return spec_from_dict(raw | overrides, "<tests>")


def make_frame(
    spec: CompetitionSpec, n_seqs: int = 3, seq_len: int | None = None, seed: int = 0,
    lengths: list[int] | None = None, labelled: bool = True,
) -> pl.DataFrame:
    """A frame that satisfies `spec`: ids 0..n-1, steps 0..len-1, the need rule, random values."""
    rng = np.random.default_rng(seed)
    lengths = lengths or [seq_len or spec.seq_len or 20] * n_seqs
    ids = np.repeat(np.arange(len(lengths)), lengths)
    steps = np.concatenate([np.arange(n) for n in lengths])
    seq_lens = np.repeat(lengths, lengths)
    need = (steps >= spec.warmup) & (steps < seq_lens - spec.tail)
    cols = {spec.id_col: pl.Series(ids, dtype=pl.Int64),
            spec.step_col: pl.Series(steps, dtype=pl.Int64),
            spec.need_col: pl.Series(need, dtype=pl.Boolean)}
    for name in spec.features:
        cols[name] = pl.Series(rng.standard_normal(len(ids)), dtype=pl.Float32)
    if labelled:
        for name in spec.targets:
            cols[name] = pl.Series(rng.standard_t(4, len(ids)), dtype=pl.Float32)
    return pl.DataFrame(cols)
