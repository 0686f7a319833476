"""The trainer's inputs: normalised (N, T, F) arrays of train and valid, built once per run.

Features come from the cached feature arrays (kit.features.feature_arrays); the normaliser is
fit on the real (not padded) training steps only and applied here, in float32, the same
arithmetic its stream face runs in the graph.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from kit.competition import CompetitionSpec, load_spec
from kit.config import DEFAULTS, ConfigError, validation_file
from kit.data.arrays import SequenceArrays
from kit.data.contract import FLOAT32_MAX, refuse_broken_need_rule, whole_numbers
from kit.data.io import combine_hint, read_frame
from kit.data.splits import SplitError, group_kfold, group_split, kfold, random_split
from kit.errors import DataError
from kit.features import feature_arrays, feature_set_from_config
from kit.features.normaliser import Normaliser
from kit.features.sets import FeatureSet
from kit.run_record import file_sha256


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
    valid_limited: bool = False  # train.max_valid_seqs kept fewer sequences than there were
    # data.seq_len cut validation sequences: the score is of the kept steps (and, with "tail",
    # of a state started mid-sequence), not what kit score measures on whole sequences
    valid_truncated: bool = False
    # scored training targets the float32 loss overflows on, named (extreme_targets); "" if none
    extreme_targets: str = ""


# what load_train_data says as it goes (a line each; kit train prints them on stderr): at full
# size it read, fitted and normalised for 30-100 s without a word (r312)
Status = Callable[[str], None]


def _silent(text: str) -> None:
    pass


# the rows of one batch's loss sum the overflow bound leaves room for (64 sequences of 16k steps)
LOSS_ROWS_HEADROOM = 1e6
EXTREME_TARGETS_ADVICE = ("fix or rescale those values, or set their need_prediction to false "
                          "(normaliser.targets does not help: the loss is in the targets' units)")


def _real_steps(arrays: SequenceArrays) -> np.ndarray:
    return np.arange(arrays.x.shape[1])[None, :] < arrays.lengths[:, None]


def _sequence_starts(arrays: SequenceArrays, path: Path, spec: CompetitionSpec,
                     truncate: str) -> tuple[np.ndarray, np.ndarray]:
    """Row index in the source file of each sequence's first kept step, and whether
    data.seq_len cut the sequence. The file's need flags must follow the spec's rule."""
    keys = read_frame(path, [spec.id_col, spec.step_col, spec.need_col])
    refuse_broken_need_rule(keys, spec, str(path))
    file_lengths = keys[spec.id_col].rle().struct.unnest()["len"]
    file_lengths = file_lengths.to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(file_lengths)])[:-1]
    cut = file_lengths > arrays.x.shape[1]
    if truncate == "tail":  # the arrays kept the last steps of a long sequence
        starts = starts + np.maximum(file_lengths - arrays.x.shape[1], 0)
    return starts, cut


def _split(arrays: SequenceArrays, normaliser: Normaliser, starts: np.ndarray,
           limit: int = 0) -> Split:
    """Normalised tensors of the first `limit` sequences (all when 0) and their scored rows."""
    n = len(arrays) if limit <= 0 else min(limit, len(arrays))
    mask = np.array(arrays.mask[:n], dtype=bool)
    seq, step = np.nonzero(mask)
    return Split(torch.from_numpy(np.ascontiguousarray(normaliser.transform(arrays.x[:n]))),
                 torch.from_numpy(np.array(arrays.y[:n], dtype=np.float32)),
                 torch.from_numpy(mask), starts[:n][seq] + step)


def target_moments(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Each target's mean and std over the scored rows (a zero spread is 1): the standard
    normaliser's moments (float64 sums, chunked), fit on the targets."""
    fit = Normaliser.fit(split.y.numpy(), split.mask.numpy(), "standard", clip=None)
    return fit.center, fit.scale


def far_from_standard(spec: CompetitionSpec, center: np.ndarray, scale: np.ndarray) -> str | None:
    """The targets whose mean or spread a model starting near 0 and 1 would take long to reach
    (when normaliser.targets is off), as a note; None when they look standardised."""
    far = [f"{name} (mean {c:.4g}, std {s:.4g})"
           for name, c, s in zip(spec.outputs, center, scale, strict=True)
           if abs(c) > 3 * s or not 1 / 30 < s < 30]
    if not far:
        return None
    return (f"the targets {', '.join(far)} are far from mean 0 and std 1, where a new model's "
            "outputs start: set normaliser.targets = true to train on standardised targets "
            "(the outputs keep the targets' units)")


def _fit_normaliser(arrays: SequenceArrays, config: dict, limit: int = 0,
                    status: Status = _silent) -> Normaliser:
    """Fit on the real (not padded) steps of the training sequences only."""
    n = len(arrays) if limit <= 0 else min(limit, len(arrays))
    norm = config["normaliser"]
    real = _real_steps(arrays)[:n]
    status(f"fitting the {norm['method']} normaliser on {int(real.sum()):,} training rows...")
    return Normaliser.fit(arrays.x[:n], real, norm["method"], norm["clip"] or None)


def check_data_files(data: dict, folds: bool = False) -> None:
    """The files the [data] settings read exist (the train file, and the valid file when it
    validates), so a missing file fails before anything is built or written. `folds`: the runs
    are folds of the train file (kit train --folds, or a fold run's data.fold), which read no
    valid file."""
    wanted = [("data.train", data["train"])]
    if data["split"] == "file" and not (folds or data["fold"]):
        wanted.append(("data.valid", data["valid"]))
    for key, name in wanted:
        if Path(name).is_dir():  # ("no such data file" before: it exists)
            raise DataError(f"{key} = {name!r}: is a folder; pass a .parquet file"
                            f"{combine_hint(Path(name))}")
        if not Path(name).is_file():
            # a relative path reads from the working folder: an experiment found through
            # KIT_EXPERIMENTS from elsewhere was told to synthesize another data set (r298)
            where = ("" if Path(name).is_absolute() else
                     f" in {Path.cwd()} (a relative path reads from the working folder: run "
                     "from the project's folder, or give an absolute path)")
            raise DataError(f"{key} = {name!r}: no such data file{where}; `kit data synth "
                            "--spec NAME --out FOLDER` writes a built-in competition's files")
    if len(wanted) == 2:  # the valid file validates: it must hold other rows than train's
        refuse_validation_on_training_rows(data)


def refuse_validation_on_training_rows(data: dict) -> None:
    """data.valid naming the train file (or a byte-identical copy) early-stopped and scored a
    run on the rows it trained on, said nowhere, and kit ensemble select gave that in-sample
    score full weight beside honest out-of-fold groups (r311). Refused, not warned: every
    legitimate wish behind it (predictions of every train row, to blend) is kit train --folds."""
    how = same_data_file(data["train"], data["valid"], data.get("cache_dir"))
    if how is None:
        return
    raise ConfigError(
        f"data.valid = {data['valid']!r} is {how} data.train = {data['train']!r}: the run would "
        "early-stop and report its score on the rows it trains on (an in-sample score, which "
        "kit ensemble select would weigh as if the model generalised); validate on held-out "
        "rows: another data.valid, data.split = \"random\" or \"group\" (a held-out part of "
        "the train file), or kit train --folds K for out-of-fold predictions of every train row")


def same_data_file(train: str, valid: str, cache_dir: str | None) -> str | None:
    """How `valid` is `train`: "the same file as" (one path, however spelt, or a link) or "a
    byte-identical copy of" (the same sha256); None when they differ. Both files exist."""
    if os.path.samefile(train, valid):
        return "the same file as"
    if os.path.getsize(train) != os.path.getsize(valid):  # (no file read: the usual case)
        return None
    if file_sha256(train, cache_dir) == file_sha256(valid, cache_dir):
        return "a byte-identical copy of"
    return None


def check_fold_count(config: dict, folds: int) -> None:
    """--folds K needs K sequences in the train file (K groups with data.split = "group"):
    checked before the group's K run folders are made (--folds 1000000 made them all first,
    and an interrupt left them behind). A file or column that does not read is left to the
    reader, which names the problem."""
    data = config["data"]
    column = data["group"] if data["split"] == "group" else load_spec(config["spec"]).id_col
    try:
        count = pl.scan_parquet(data["train"]).select(pl.col(column).n_unique()).collect().item()
    except Exception:  # reported by the reader, which names the file
        return
    what = f"groups ({column})" if data["split"] == "group" else "sequences"
    if folds > count:
        hint = (f"use --folds 2..{count}" if count >= 2 else
                "k-fold needs at least 2; train with a validation file or split instead")
        raise ConfigError(f"--folds {folds}: the train file {data['train']} has {count} {what}, "
                          f"and each fold validates at least one; {hint}")


def check_split_settings(data: dict) -> None:
    """The [data] split settings make sense together (before any array is built)."""
    fold = data["fold"]
    if fold and not (len(fold) == 2 and all(isinstance(v, int) for v in fold)
                     and 0 <= fold[1] < fold[0]):
        raise ConfigError(f"data.fold is [k, i] with 0 <= i < k (kit train --folds writes it), "
                          f"got {fold}")
    if data["split"] == "file":
        if data["group"] or data["stratify"]:
            raise ConfigError("data.group and data.stratify need data.split = \"group\" (with "
                              "split = \"file\" the valid file validates)")
        held_out = [f"data.{key} = {data[key]}" for key in ("valid_fraction", "split_seed")
                    if data[key] != DEFAULTS["data"][key]]
        if held_out:  # they choose a held-out part of the train file, which "file" has none of
            verb = "need" if len(held_out) > 1 else "needs"
            raise ConfigError(f"{' and '.join(held_out)} {verb} data.split = \"random\" or "
                              "\"group\" (with split = \"file\" the valid file validates and "
                              "they would be ignored)",
                              settings=("data.split", "data.valid_fraction", "data.split_seed"))
        return
    if not 0.0 < data["valid_fraction"] < 1.0:
        raise ConfigError(f"data.valid_fraction must be between 0 and 1, got "
                          f"{data['valid_fraction']}")
    if data["split"] == "random" and (data["group"] or data["stratify"]):
        raise ConfigError("data.group and data.stratify need data.split = \"group\"")
    if data["split"] == "group" and not data["group"]:
        raise ConfigError("data.split = \"group\" needs data.group: the column that names "
                          "each sequence's group (e.g. a user id)")


def holdout_ids(config: dict, ids: np.ndarray, path: Path, spec: CompetitionSpec
                ) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, valid ids) of `data.split` = random | group over the train file's sequences:
    `data.valid_fraction` of them validate. Seeded by `data.split_seed`, not the run's seed, so
    every seed of an experiment validates on the same rows (their runs can be blended)."""
    data = config["data"]
    fraction, seed = data["valid_fraction"], data["split_seed"]
    fractions = (1.0 - fraction, fraction)
    try:
        if data["split"] == "random":
            train_ids, valid_ids = random_split(ids, fractions, seed=seed)
            groups = "sequences"
        else:
            groups, stratify = _per_sequence(path, spec, ids, data["group"], data["stratify"])
            train_ids, valid_ids = group_split(ids, groups, fractions, seed=seed,
                                               stratify=stratify)
            groups = f"sequences in {len(np.unique(groups))} groups of {data['group']!r}"
    except SplitError as exc:
        raise ConfigError(f"data.split = {data['split']!r}: {exc}") from None
    if not len(train_ids) or not len(valid_ids):
        side = "training" if not len(train_ids) else "validation"
        raise ConfigError(f"data.valid_fraction = {fraction} of {len(ids)} {groups} leaves the "
                          f"{side} part empty; change the fraction or give more groups")
    return train_ids, valid_ids


def fold_ids(config: dict, ids: np.ndarray, path: Path, spec: CompetitionSpec, k: int,
             i: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, valid ids) of fold i of k over the train file's sequences: by sequence, or
    with `data.split = "group"` by whole groups (stratified by `data.stratify` if set), so that
    out-of-fold scores see no group they trained on."""
    data = config["data"]
    try:
        if data["split"] != "group":
            return kfold(ids, k, seed=config["seed"])[i]
        groups, stratify = _per_sequence(path, spec, ids, data["group"], data["stratify"])
        return group_kfold(ids, groups, k, seed=config["seed"], stratify=stratify)[i]
    except SplitError as exc:
        raise ConfigError(f"--folds {k} (data.split = {data['split']!r}): {exc}") from None


def _per_sequence(path: Path, spec: CompetitionSpec, ids: np.ndarray, group: str,
                  stratify: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Each sequence's group (which must not change within it) and mean of `stratify`, in the
    order of `ids`."""
    names = [spec.id_col, group] + ([stratify] if stratify else [])
    try:
        frame = read_frame(path, names)
        # float ids (whole numbers, as the arrays accept them) join the arrays' int64 ids
        frame = frame.with_columns(whole_numbers(frame.schema, spec.id_col).alias(spec.id_col))
        # a NaN group is missing too: np.unique would make every NaN sequence one group
        missing = pl.col(group).is_null() | (pl.col(group).is_nan()
                                             if frame.schema[group].is_float() else False)
        per = frame.group_by(spec.id_col, maintain_order=True).agg(
            pl.col(group).first().alias("group"), pl.col(group).n_unique().alias("n_groups"),
            missing.sum().alias("nulls"),
            *([pl.col(stratify).cast(pl.Float64).mean().alias("stratify")] if stratify else []))
    except (DataError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(f"data.group / data.stratify: {str(exc).splitlines()[0]}") from None
    if frame.schema[group].is_nested():  # np.unique of lists: numpy's "truth value" error
        kind = type(frame.schema[group]).__name__.lower()
        raise ConfigError(f"data.group {group!r} is a {kind} column ({frame.schema[group]}) in "
                          f"{path}: a group is one value per sequence (a number, text or date)")
    mixed = per.filter((pl.col("n_groups") > 1) | (pl.col("nulls") > 0))
    if len(mixed):
        raise ConfigError(f"data.group {group!r} changes within sequence "
                          f"{mixed[spec.id_col][0]} of {path} (or is null or NaN there): a group "
                          "column names one group per sequence")
    order = pl.DataFrame({spec.id_col: ids}).join(per, on=spec.id_col, how="left",
                                                  maintain_order="left")
    values = order["stratify"].to_numpy() if stratify else None
    if values is not None and not np.isfinite(values).all():
        raise ConfigError(f"data.stratify {stratify!r} has NaN/inf or nulls in {path}; give a "
                          "column that is finite in every sequence")
    return order["group"].to_numpy(), values


def _array_options(data: dict) -> dict:
    """feature_arrays' keyword arguments from a config's [data] table."""
    return {"seq_len": data["seq_len"] or None, "truncate": data["truncate"],
            "cache_dir": Path(data["cache_dir"])}


def cache_feature_arrays(config: dict, status: Status | None = None) -> None:
    """Build (or find) the cached feature arrays that load_train_data will read."""
    check_split_settings(config["data"])
    feature_set = feature_set_from_config(config)
    for path in dict.fromkeys([config["data"]["train"], validation_file(config)]):
        _read_features(Path(path), feature_set, config["data"], status or _silent)


def _read_features(path: Path, feature_set: FeatureSet, data: dict,
                   status: Status) -> SequenceArrays:
    status(f"reading the features of {path} (built and cached on first use: minutes for a "
           "large file)...")
    return feature_arrays(path, feature_set, **_array_options(data))


def load_train_data(config: dict, fold: tuple[int, int] | None = None,
                    status: Status | None = None) -> TrainData:
    """Feature arrays of the config's train and valid files, normalised.

    With fold = (k, i), both parts come from the train file: fold i of a k-fold split by
    sequence id (seeded by config seed) is the validation part, the rest trains; a fold run's
    config records its fold (`data.fold`), so resuming it trains the same fold. With
    `data.split` = random | group (and no fold), a held-out part of the train file validates
    (see holdout_ids) and the valid file is not read. `status` is told each step as it starts.
    """
    status = status or _silent
    data, train_cfg = config["data"], config["train"]
    check_split_settings(data)
    check_data_files(data, folds=fold is not None)
    if fold is None and data["fold"]:
        fold = (data["fold"][0], data["fold"][1])
    spec = load_spec(config["spec"])
    feature_set = feature_set_from_config(config)
    # a fold trains on all the rest of the train file; a held-out split honours the limits
    limit_train, limit_valid = ((0, 0) if fold is not None
                                else (train_cfg["max_train_seqs"], train_cfg["max_valid_seqs"]))
    train_path = Path(data["train"])
    train = _read_features(train_path, feature_set, data, status)
    train_starts, train_cut = _sequence_starts(train, train_path, spec, data["truncate"])
    if fold is None and data["split"] == "file":
        valid_path = Path(data["valid"])
        valid = _read_features(valid_path, feature_set, data, status)
        valid_starts, valid_cut = _sequence_starts(valid, valid_path, spec, data["truncate"])
    else:
        if fold is not None:
            train_ids, valid_ids = fold_ids(config, train.ids, train_path, spec, *fold)
        else:
            train_ids, valid_ids = holdout_ids(config, train.ids, train_path, spec)
        valid_pos, train_pos = train.positions(valid_ids), train.positions(train_ids)
        valid, valid_starts = train.take(valid_ids), train_starts[valid_pos]
        valid_cut = train_cut[valid_pos]
        train, train_starts = train.take(train_ids), train_starts[train_pos]
    normaliser = _fit_normaliser(train, config, limit_train, status)
    status(f"normalising {min(limit_train or len(train), len(train)):,} training and "
           f"{min(limit_valid or len(valid), len(valid)):,} validation sequences...")
    out = TrainData(
        spec=spec, feature_set=feature_set, normaliser=normaliser,
        train=_split(train, normaliser, train_starts, limit_train),
        valid=_split(valid, normaliser, valid_starts, limit_valid),
        valid_limited=0 < limit_valid < len(valid),
        valid_truncated=bool(valid_cut[:limit_valid or len(valid)].any()),
    )
    for name, split, whole, limit in (("training", out.train, train, limit_train),
                                      ("validation", out.valid, valid, limit_valid)):
        if not bool(split.mask.any()):  # else an epoch learns nothing, then "no scored rows"
            raise ConfigError(
                f"the {name} sequences keep no step that needs a prediction (the spec scores "
                f"from step {spec.warmup} on; data.seq_len = {data['seq_len']}, data.truncate = "
                f"{data['truncate']!r}, {len(split)} sequences): "
                + _no_scored_step_hint(name, data, len(split), len(whole), limit))
    scored = int(out.valid.mask.sum())
    if spec.metric.name == "r2" and scored < 2:  # NaN every epoch: read as a diverged run
        raise ConfigError(
            f"the validation sequences keep {scored} step that needs a prediction, and r2 is "
            f"undefined on fewer than 2 ({len(out.valid)} sequence(s)): validate on more "
            + ("(train.max_valid_seqs, data.valid_fraction, data.valid)" if fold is None
               else "(a train file with more sequences)"))
    # a warning, not a refusal: such a run diverges in its first batches and fails as diverged
    # runs do (a sweep's trial fails and the study samples on; a seed group trains its others)
    scored = out.train.y[out.train.mask]  # gathered once for both checks (10.7M rows)
    out.extreme_targets = extreme_targets(scored, out.train.rows, spec, train_path,
                                          config.get("loss"))
    if out.extreme_targets:
        bound, power = overflow_bound(config.get("loss"))
        warnings.warn(f"the training targets hold values the float32 loss overflows on: "
                      f"{out.extreme_targets}; the loss raises each to the power {power} and "
                      f"sums a batch of them, past float32's {FLOAT32_MAX:.2g} (training "
                      "diverges), or these rows outweigh every other: "
                      + EXTREME_TARGETS_ADVICE, UserWarning, stacklevel=2)
    warn_constant_truth(scored, spec, "training")
    warn_constant_truth(out.valid.y[out.valid.mask], spec, "validation")
    return out


# the power of a target each loss term grows with far from the prediction: mse squares the
# error (pearson the target's spread), huber is linear past its delta, and the w- terms weigh
# each row by |target| on top
TERM_POWERS = {"mse": 2, "wmse": 3, "huber": 1, "whuber": 2, "pearson": 2}


def overflow_bound(loss: dict | None) -> tuple[float, int]:
    """The target magnitude past which the float32 training loss may overflow, and the power
    the loss raises a target to (its steepest term's), summed over a batch's rows. The bound
    leaves room for a sum over LOSS_ROWS_HEADROOM rows: 1.8e16 for squares (about the guard's
    1e16 clip of features), 7e10 for wmse's cubes; a target of 1e6 is far inside both."""
    terms = (loss or {}).get("terms", {"mse": 1.0})
    names = terms if isinstance(terms, dict) and terms else {"mse": 1.0}
    power = max(TERM_POWERS.get(name, 2) for name in names)
    return (FLOAT32_MAX / LOSS_ROWS_HEADROOM) ** (1 / power), power


def extreme_targets(truth: torch.Tensor, rows: np.ndarray, spec: CompetitionSpec, path: Path,
                    loss: dict | None) -> str:
    """The scored training targets `truth` (rows: their row in the file at `path`) beyond
    overflow_bound, as a phrase naming each column's count and the first one's value and place
    in the file; "" when there are none (the usual case: one compare)."""
    bound, _ = overflow_bound(loss)
    beyond = truth.abs() > bound  # (scored rows, targets)
    if not bool(beyond.any()):
        return ""
    counts = [f"{name} on {n:,} scored row(s)"
              for name, n in zip(spec.outputs, beyond.sum(0).tolist(), strict=True) if n]
    first = int(beyond.any(1).nonzero()[0, 0])
    column = int(beyond[first].nonzero()[0, 0])
    row = int(rows[first])
    keys = read_frame(path, [spec.id_col, spec.step_col]).row(row, named=True)
    return (f"{', '.join(counts)} beyond +-{bound:.2g}, first {spec.outputs[column]} = "
            f"{truth[first, column].item():.4g} in sequence {keys[spec.id_col]}, step "
            f"{keys[spec.step_col]} (row {row:,} of {path})")


def warn_constant_truth(truth: torch.Tensor, spec: CompetitionSpec, part: str) -> None:
    """A target constant on a part's scored rows (`truth`), said alike for both: on the
    training rows
    there is nothing for a model to learn about it (training went on silently); on the
    validation rows it scores the same every epoch (0 under weighted Pearson, whatever the
    model), so early stopping and selection have no signal from it."""
    same = (truth.amax(0) == truth.amin(0)).tolist() if len(truth) else []
    constant = [name for name, flat in zip(spec.outputs, same, strict=True) if flat]
    if not constant:
        return
    if part == "training":
        why = ("a model learns nothing from it but that constant (check the train file or "
               "split)")
    else:
        why = (f"its {spec.metric.name} is the same for every model, so early stopping and "
               "selection learn nothing from it (check the validation file or split)")
    warnings.warn(f"the {part} truth of {', '.join(constant)} is constant on its "
                  f"{len(truth):,} scored rows: {why}", UserWarning, stacklevel=2)


def _no_scored_step_hint(name: str, data: dict, kept: int, available: int, limit: int) -> str:
    """What would give a split with no scored step some: the limit that cut it, or longer
    sequences (data.seq_len 0 keeps them whole already)."""
    if 0 < limit < available:
        key = "max_train_seqs" if name == "training" else "max_valid_seqs"
        return (f"train.{key} = {limit} keeps {kept} of its {available}; raise it, or check "
                "the file's need_prediction column")
    if data["seq_len"]:
        return "lengthen data.seq_len, or check the file's need_prediction column"
    return ("they are all shorter than the warm-up (data.seq_len = 0 keeps them whole); "
            "check the file's need_prediction column and the spec's warmup")
