"""Behaviours of kit.train.data that a mutation audit found unpinned: the normaliser's fit rows
and clip, where a held-out run's valid_truncated comes from, the [data] split checks and their
messages, and the far-from-standard band of the targets."""

import copy

import numpy as np
import polars as pl
import pytest

from kit.config import DEFAULTS, ConfigError, load_experiment, resolve
from kit.train.data import (
    check_fold_count,
    check_split_settings,
    far_from_standard,
    holdout_ids,
    load_train_data,
)
from tests.test_train import env, workspace  # noqa: F401 (fixtures)


def _config(**data) -> dict:
    """The tiny experiment's resolved config, with [data] settings replaced."""
    config = copy.deepcopy(resolve(load_experiment("tiny")))
    config["data"].update(data)
    return config


def _feature_rows(config: dict, path) -> np.ndarray:
    """The config's features of every row of a file, float64."""
    from kit.features import feature_set_from_config

    feature_set = feature_set_from_config(config)
    frame = feature_set.batch_frame(pl.read_parquet(path))
    return frame.select(feature_set.outputs).to_numpy().astype(np.float64)


def _train_frame(root) -> pl.DataFrame:
    return pl.read_parquet(root / "data" / "train.parquet")


def _seq_ids(frame: pl.DataFrame) -> list[int]:
    return frame["seq_ix"].unique(maintain_order=True).to_list()


def test_the_normaliser_fits_on_real_steps_only(env, tmp_path):  # noqa: F811
    """Sequences of ragged lengths, padded to the longest: the fit's centre and scale are
    numpy's over the real rows, with no padding step among them."""
    frame = _train_frame(env)
    ids = _seq_ids(frame)
    keep = {seq: 60 - 7 * (i % 4) for i, seq in enumerate(ids)}  # 60, 53, 46, 39, ...
    ragged = frame.filter(pl.col("step_in_seq")
                          < pl.col("seq_ix").replace_strict(keep, return_dtype=pl.Int64))
    path = tmp_path / "ragged.parquet"
    ragged.write_parquet(path)
    config = _config(train=str(path))
    data = load_train_data(config)
    rows = _feature_rows(config, path)
    np.testing.assert_allclose(data.normaliser.center, rows.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.normaliser.scale, rows.std(axis=0), rtol=1e-4, atol=1e-5)


def test_the_normaliser_clip_bounds_the_training_features(env):  # noqa: F811
    config = _config()
    config["normaliser"]["clip"] = 0.5
    data = load_train_data(config)
    assert data.normaliser.clip == 0.5
    assert float(data.train.x.abs().max()) <= 0.5 + 1e-6
    assert float(data.valid.x.abs().max()) <= 0.5 + 1e-6


def test_a_held_out_runs_valid_truncated_comes_from_the_validated_sequences(env,  # noqa: F811
                                                                           tmp_path):
    """data.split = random, data.seq_len = 30: only the validated sequences are longer than 30
    (the training ones are cut to 30 rows in the file), so validation is truncated; and the
    other way round, it is not."""
    from kit.competition import load_spec

    frame = _train_frame(env)
    config = _config(split="random", seq_len=30, truncate="head")
    spec = load_spec(config["spec"])
    ids = np.array(_seq_ids(frame), dtype=np.int64)
    _train_ids, valid_ids = holdout_ids(config, ids, env / "data" / "train.parquet", spec)
    validated = pl.col("seq_ix").is_in(valid_ids.tolist())
    for name, long_ones, truncated in (("valid_long", validated, True),
                                       ("train_long", ~validated, False)):
        path = tmp_path / f"{name}.parquet"
        frame.filter(long_ones | (pl.col("step_in_seq") < 30)).write_parquet(path)
        data = load_train_data(_config(train=str(path), split="random", seq_len=30,
                                       truncate="head"))
        assert data.valid_truncated is truncated, name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_stratify_column_not_finite_in_some_sequences_is_refused(env, tmp_path, bad):  # noqa: F811
    frame = _train_frame(env)
    first = _seq_ids(frame)[0]
    strat = pl.when(pl.col("seq_ix") == first).then(bad).otherwise(pl.col("seq_ix") * 1.0)
    path = tmp_path / "strat.parquet"
    frame.with_columns((pl.col("seq_ix") % 6).alias("grp"),
                       strat.alias("strat")).write_parquet(path)
    config = _config(train=str(path), split="group", group="grp", stratify="strat",
                     valid_fraction=0.3)
    with pytest.raises(ConfigError, match="data.stratify 'strat' has NaN/inf or nulls in "):
        load_train_data(config)


def test_stratify_with_split_file_is_refused():
    data = dict(DEFAULTS["data"], split="file", stratify="volume")
    with pytest.raises(ConfigError, match='data.group and data.stratify need data.split = '
                                          '"group"'):
        check_split_settings(data)


def test_too_many_folds_of_a_two_sequence_file_suggest_two_folds(env, tmp_path):  # noqa: F811
    frame = _train_frame(env)
    path = tmp_path / "two.parquet"
    frame.filter(pl.col("seq_ix").is_in(_seq_ids(frame)[:2])).write_parquet(path)
    with pytest.raises(ConfigError) as info:
        check_fold_count(_config(train=str(path)), 3)
    assert "has 2 sequences" in str(info.value)
    assert str(info.value).endswith("use --folds 2..2"), str(info.value)


@pytest.mark.parametrize("fold", [[4, 0, 9], [4], [3, 3], [3, -1]])
def test_a_malformed_data_fold_is_refused(fold):
    data = dict(DEFAULTS["data"], fold=fold)
    with pytest.raises(ConfigError, match=r"data.fold is \[k, i\] with 0 <= i < k"):
        check_split_settings(data)


def test_targets_with_a_spread_of_50_are_far_from_standard(workspace):  # noqa: F811
    from kit.competition import load_spec

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    note = far_from_standard(spec, np.array([0.0, 0.0]), np.array([50.0, 1.0]))
    assert note is not None and "t0 (mean 0, std 50)" in note and "t1" not in note
    assert far_from_standard(spec, np.array([0.0, 0.0]), np.array([29.0, 1.0])) is None
