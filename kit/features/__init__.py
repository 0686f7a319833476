"""Feature pipelines: ops with a batch (Polars) and a stream (torch) face, sets, normaliser."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from kit import __version__
from kit.competition import load_spec
from kit.data.arrays import (
    SequenceArrays,
    build_arrays,
    check_length_options,
    ordered_sequence_runs,
    sequence_runs,
)
from kit.data.cache import Sink, cached_arrays_into, in_memory
from kit.data.io import read_frame, scan_parquet, spec_columns_in
from kit.errors import DataError
from kit.features.sets import FeatureConfigError, FeatureSet, build_feature_set

CHUNK_SEQS = 256  # sequences per batch-face pass: bounds memory, keeps Polars' work cache-sized

# Bump when an op's batch face changes what it computes: cached arrays built before are stale.
# 4: rolling means summed in float64; 5: EWMs exact (offset form, float64); 6: wmid's weights
# sum to 1 (the mid at sizes 0); 7: cumsum/cumgain compensated (double-double); 8: EWMs use
# the alpha the stream face holds in float32
FEATURE_FORMAT = 8
# the format from which packages and checkpoints record theirs: one recording none is of this
# format or an older one, whatever FEATURE_FORMAT is now
FIRST_RECORDED_FORMAT = 8


def feature_set_from_config(config: dict) -> FeatureSet:
    """The FeatureSet of an experiment config ([features] groups and ops, its spec)."""
    table = config.get("features", {})
    return build_feature_set(load_spec(config.get("spec")), table.get("groups", ["raw"]),
                             table.get("ops", []))


def build_features(path: Path, feature_set: FeatureSet) -> tuple[pl.DataFrame, float]:
    """Read a data file and run the batch face over it; returns the frame and the seconds."""
    df = read_frame(path, spec_columns_in(path, feature_set.spec))
    if df.height == 0:
        raise DataError(f"{path}: the file has no rows")
    spec = feature_set.spec
    if {spec.id_col, spec.step_col} <= set(df.columns):  # (a missing one: named by batch_frame)
        ordered_sequence_runs(df, spec, str(path))  # as training reads it, or it refuses it
    started = time.perf_counter()
    try:
        out = feature_set.batch_frame(df)
    except DataError as exc:  # say which file (the --data default is not on the command line)
        raise DataError(f"{path}: {exc}") from None
    return out, time.perf_counter() - started


def feature_arrays(
    path: Path, feature_set: FeatureSet, *, seq_len: int | None = None, truncate: str = "head",
    cache_dir: Path = Path("data/cache"), use_cache: bool = True, chunk_seqs: int = CHUNK_SEQS,
) -> SequenceArrays:
    """(N, T, F) features, targets and loss mask of a data file, cached on disk by content.

    The file is processed `chunk_seqs` whole sequences at a time, each chunk appended straight
    to the output files of the cache entry being built, so memory holds one chunk, not the
    output, and the result is written to disk once. `feature_set`: build_feature_set(spec,
    groups); bad `seq_len` or `truncate` raise DataError, as build_arrays refuses them.
    """
    if not isinstance(feature_set, FeatureSet):  # (a spec raised AttributeError on .spec)
        got = "None" if feature_set is None else f"a {type(feature_set).__name__}"
        raise FeatureConfigError(f"feature_set must be a FeatureSet (kit.features."
                                 f"build_feature_set(spec, groups)), got {got}")
    # before the lengths and the cache key: 0 read as the full length, 2.5 as 2, and each
    # spelling of a length made its own cache entry
    check_length_options(seq_len, truncate)
    build = partial(_build_feature_arrays, Path(path), feature_set, seq_len, truncate,
                    chunk_seqs)
    if not use_cache:
        return build(in_memory)
    key = {"kind": "features", "kit": __version__, "format": FEATURE_FORMAT,
           # what the set computes, not how it was asked for: one entry for two spellings
           "spec": arrays_spec(feature_set.spec), "features": feature_set.computation(),
           "seq_len": seq_len, "truncate": truncate}
    return cached_arrays_into(Path(path), key, build, cache_dir=cache_dir)


# what of a spec never reaches the arrays: its name and words, the metric, the scorer's limits
# (an edit of the time limit rebuilt a 1.5 GB entry beside the old one)
NOT_IN_ARRAYS = ("name", "description", "metric", "limits")


def arrays_spec(spec) -> dict:
    """The spec's part of a feature cache key: the columns, lengths and protocol."""
    return {k: v for k, v in spec.training_dict().items() if k not in NOT_IN_ARRAYS}


def _build_feature_arrays(path: Path, feature_set: FeatureSet, seq_len: int | None,
                          truncate: str, chunk_seqs: int, sink: Sink) -> SequenceArrays:
    spec = feature_set.spec
    ids, lengths = sequence_runs(read_frame(path, [spec.id_col])[spec.id_col], spec, str(path))
    width = int(seq_len or lengths.max())
    n, names = len(ids), list(feature_set.outputs)
    out = {
        "x": sink("x", (n, width, len(names)), np.float32),
        "y": sink("y", (n, width, spec.n_outputs), np.float32),
        "mask": sink("mask", (n, width), np.bool_),
    }
    starts = np.concatenate([[0], np.cumsum(lengths)])
    scan = scan_parquet(path).select(spec_columns_in(path, spec))
    for lo in range(0, n, chunk_seqs):
        hi = min(n, lo + chunk_seqs)
        try:
            chunk = scan.slice(int(starts[lo]), int(starts[hi] - starts[lo])).collect()
        except pl.exceptions.PolarsError as exc:
            raise DataError(f"{path}: rows {starts[lo]}..{starts[hi]} do not read "
                            f"({type(exc).__name__}); the file is corrupt") from None
        try:
            frame = feature_set.batch_frame(chunk)
        except DataError as exc:  # a missing or text column: which file it is in
            raise DataError(f"{path}: {exc}") from None
        part = build_arrays(frame, spec, names, seq_len=width, truncate=truncate,
                            source=str(path))
        check_scored_targets(path, spec, part)
        if spec.next_state:
            check_next_state_truth(path, spec, chunk)
        for field, writer in out.items():
            writer.write(getattr(part, field))
    return SequenceArrays(
        **{field: writer.finish() for field, writer in out.items()},
        lengths=np.minimum(lengths, width), ids=ids, feature_names=names,
        target_names=list(spec.outputs),
    )


def check_next_state_truth(path: Path, spec, frame: pl.DataFrame) -> None:
    """A next-state row's truth is the next row's raw features, as kit score and the official
    scorer read it: NaN, inf or null there on a scored row makes the metric NaN. Training read
    the guard's fill instead and reported a finite score no package could reach."""
    from kit.data.contract import next_state_truth_exprs

    counts = frame.select(next_state_truth_exprs(spec)).row(0, named=True)
    bad = {c.removeprefix("truth_bad|"): n for c, n in counts.items() if n}
    if bad:
        per = ", ".join(f"{c}: {n:,} row(s)" for c, n in bad.items())
        raise DataError(f"{path}: the next-state truth (the next row's features) is NaN, inf "
                        f"or null after rows that need a prediction ({per}): the metric is NaN "
                        "there, in kit score as in the competition's scorer; fix those values, "
                        "or set need_prediction false on the rows before them")


def check_scored_targets(path: Path, spec, part: SequenceArrays) -> None:
    """Targets must be finite wherever a prediction is scored: the loss and the metric are NaN
    otherwise, which training would report as a diverged run."""
    bad = part.mask[..., None] & ~np.isfinite(part.y)
    if not bad.any():
        return
    per_target = {name: int(n) for name, n in zip(spec.outputs, bad.sum((0, 1)), strict=True)
                  if n}
    first = int(part.ids[np.flatnonzero(bad.any((1, 2)))[0]])
    raise DataError(f"{path}: targets NaN, inf or null on rows that need a prediction "
                    f"({', '.join(f'{k}: {n:,} row(s)' for k, n in per_target.items())} in the "
                    f"sequences read so far; first in sequence {first}); the loss and the metric "
                    "need a finite target wherever need_prediction is true: fix those rows or "
                    "set their need_prediction to false")


def feature_table(frame: pl.DataFrame, names: list[str]) -> str:
    """One line per feature: mean, std, min, max (the columns are guaranteed finite)."""
    stats = frame.select(
        *[pl.col(n).mean().alias(f"mean|{n}") for n in names],
        *[pl.col(n).std(ddof=0).alias(f"std|{n}") for n in names],
        *[pl.col(n).min().alias(f"min|{n}") for n in names],
        *[pl.col(n).max().alias(f"max|{n}") for n in names],
    ).row(0, named=True)
    width = max(len(n) for n in names)
    lines = [f"{'feature':<{width}} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}"]
    for n in names:
        lines.append(f"{n:<{width}} " + " ".join(
            f"{stats[f'{k}|{n}']:10.4g}" for k in ("mean", "std", "min", "max")))
    return "\n".join(lines)
