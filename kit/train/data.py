"""The trainer's inputs: normalised (N, T, F) arrays of train and valid, built once per run.

Features come from the cached feature arrays (kit.features.feature_arrays); the normaliser is
fit on the real (not padded) training steps only and applied here, in float32, the same
arithmetic its stream face runs in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.competition import CompetitionSpec, load_spec
from kit.data.arrays import SequenceArrays
from kit.data.io import read_frame
from kit.features import feature_arrays, feature_set_from_config
from kit.features.normaliser import Normaliser
from kit.features.sets import FeatureSet


@dataclass
class Split:
    x: torch.Tensor  # (N, T, F) float32, normalised
    y: torch.Tensor  # (N, T, K) float32
    mask: torch.Tensor  # (N, T) bool: scored steps
    rows: np.ndarray  # (n_scored,) row index in the source file of each masked step, in order

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TrainData:
    spec: CompetitionSpec
    feature_set: FeatureSet
    normaliser: Normaliser
    train: Split
    valid: Split


def _real_steps(arrays: SequenceArrays) -> np.ndarray:
    return np.arange(arrays.x.shape[1])[None, :] < arrays.lengths[:, None]


def _file_rows(arrays: SequenceArrays, path: Path, spec: CompetitionSpec,
               truncate: str) -> np.ndarray:
    """Row index in the source file of each masked (scored) step, in (sequence, step) order."""
    file_lengths = read_frame(path, [spec.id_col])[spec.id_col].rle().struct.unnest()["len"]
    file_lengths = file_lengths.to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(file_lengths)])[:-1]
    if truncate == "tail":  # the arrays kept the last steps of a long sequence
        starts = starts + np.maximum(file_lengths - arrays.x.shape[1], 0)
    seq, step = np.nonzero(np.asarray(arrays.mask))
    return starts[seq] + step


def _split(arrays: SequenceArrays, normaliser: Normaliser, limit: int, rows: np.ndarray) -> Split:
    n = len(arrays) if limit <= 0 else min(limit, len(arrays))
    x = normaliser.transform(arrays.x[:n])
    rows = rows[: int(np.asarray(arrays.mask[:n]).sum())]
    return Split(torch.from_numpy(np.ascontiguousarray(x)),
                 torch.from_numpy(np.array(arrays.y[:n], dtype=np.float32)),
                 torch.from_numpy(np.array(arrays.mask[:n], dtype=bool)), rows)


def load_train_data(config: dict) -> TrainData:
    """Feature arrays of the config's train and valid files, normalised."""
    spec = load_spec(config["spec"])
    feature_set = feature_set_from_config(config)
    data = config["data"]
    options = {"seq_len": data["seq_len"] or None, "truncate": data["truncate"],
               "cache_dir": Path(data["cache_dir"])}
    train = feature_arrays(Path(data["train"]), feature_set, **options)
    valid = feature_arrays(Path(data["valid"]), feature_set, **options)
    limit_train = config["train"]["max_train_seqs"]
    fit_on = train.x if limit_train <= 0 else train.x[:limit_train]
    real = _real_steps(train)[: fit_on.shape[0]]
    norm = config["normaliser"]
    normaliser = Normaliser.fit(fit_on, real, norm["method"], norm["clip"] or None)
    return TrainData(
        spec=spec, feature_set=feature_set, normaliser=normaliser,
        train=_split(train, normaliser, limit_train,
                     _file_rows(train, Path(data["train"]), spec, data["truncate"])),
        valid=_split(valid, normaliser, config["train"]["max_valid_seqs"],
                     _file_rows(valid, Path(data["valid"]), spec, data["truncate"])),
    )
