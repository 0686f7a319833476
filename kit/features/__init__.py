"""Feature pipelines: ops with a batch (Polars) and a stream (torch) face, sets, normaliser."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from kit import __version__
from kit.competition import load_spec
from kit.data.arrays import SequenceArrays, build_arrays
from kit.data.cache import cached_arrays
from kit.features.sets import FeatureSet, build_feature_set

# Bump when an op's batch face changes what it computes: cached arrays built before are stale.
FEATURE_FORMAT = 1


def feature_set_from_config(config: dict) -> FeatureSet:
    """The FeatureSet of an experiment config ([features] groups and ops, its spec)."""
    table = config.get("features", {})
    return build_feature_set(load_spec(config.get("spec")), table.get("groups", ["raw"]),
                             table.get("ops", []))


def build_features(path: Path, feature_set: FeatureSet) -> tuple[pl.DataFrame, float]:
    """Read a data file and run the batch face over it; returns the frame and the seconds."""
    from kit.data.io import read_frame

    df = read_frame(path)
    started = time.perf_counter()
    out = feature_set.batch_frame(df)
    return out, time.perf_counter() - started


def feature_arrays(
    path: Path, feature_set: FeatureSet, *, seq_len: int | None = None, truncate: str = "head",
    cache_dir: Path = Path("data/cache"), use_cache: bool = True,
) -> SequenceArrays:
    """(N, T, F) features, targets and loss mask of a data file, cached on disk by content."""

    def build() -> SequenceArrays:
        frame, _ = build_features(path, feature_set)
        return build_arrays(frame, feature_set.spec, feature_set.outputs, seq_len=seq_len,
                            truncate=truncate)

    if not use_cache:
        return build()
    key = {"kind": "features", "kit": __version__, "format": FEATURE_FORMAT,
           "spec": feature_set.spec.to_dict(), "features": feature_set.to_dict(),
           "seq_len": seq_len, "truncate": truncate}
    return cached_arrays(Path(path), key, build, cache_dir=cache_dir)


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
