"""The Python API's arguments as a notebook user passes them (review r272): a spec by name,
one string where a list is expected, bad seq_len/truncate, NaN handed to the normaliser."""

import re
from pathlib import Path

import numpy as np
import pytest

from kit.competition import load_spec
from kit.data.arrays import build_arrays
from kit.data.cache import cache_entries
from kit.ensemble import EnsembleError, select_ensemble
from kit.errors import DataError, SpecError
from kit.features import feature_arrays
from kit.features.normaliser import Normaliser, NormaliserError
from kit.features.sets import FeatureConfigError, build_feature_set
from kit.metrics import evaluate, metric_value
from tests.frames import make_frame, small_spec


@pytest.fixture
def tiny_file(tmp_path) -> tuple[Path, object]:
    spec = small_spec()
    path = tmp_path / "valid.parquet"
    make_frame(spec, n_seqs=3).write_parquet(path)
    return path, build_feature_set(spec, ["raw"])


# 1. feature_arrays checks seq_len and truncate as build_arrays does


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("seq_len", [0, 2.5, True, "300", -3])
def test_feature_arrays_refuses_a_bad_seq_len_like_build_arrays(tiny_file, tmp_path, seq_len,
                                                                use_cache):
    # 0 was the full length, 2.5 two steps, True one step, '300' taken, -3 a numpy ValueError
    path, feature_set = tiny_file
    with pytest.raises(DataError, match=r"seq_len=.* must be a positive whole number"):
        feature_arrays(path, feature_set, seq_len=seq_len, cache_dir=tmp_path / "cache",
                       use_cache=use_cache)
    assert cache_entries(tmp_path / "cache") == []


def test_feature_arrays_refuses_a_bad_truncate_before_reading_the_file(tmp_path):
    feature_set = build_feature_set(small_spec(), ["raw"])
    with pytest.raises(DataError, match="truncate='middle' is not one of"):
        feature_arrays(tmp_path / "not-read.parquet", feature_set, truncate="middle",
                       cache_dir=tmp_path / "cache")


# 2. Normaliser.fit refuses NaN/inf on the fitted rows, a mask of another shape, a 1-D x


@pytest.mark.parametrize("method", ["standard", "robust"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_refuses_non_finite_values_on_the_fitted_rows_naming_the_columns(method, bad):
    # standard gave a NaN center silently; robust read NaN as the largest value
    x = np.array([[1.0, bad, 0.0], [2.0, 3.0, bad], [3.0, 4.0, 1.0]], np.float32)
    with pytest.raises(NormaliserError, match=r"column\(s\) \[1, 2\] .*run the guard"):
        Normaliser.fit(x, method=method)


def test_fit_reads_only_the_masked_rows_for_non_finite_values():
    x = np.zeros((2, 4, 3), np.float32)
    x[:, :, 0] = np.arange(8).reshape(2, 4)
    mask = np.ones((2, 4), bool)
    x[1, 3, 2], mask[1, 3] = np.nan, False  # a padded step: not fitted on
    assert np.isfinite(Normaliser.fit(x, mask).center).all()
    mask[1, 3] = True
    with pytest.raises(NormaliserError, match=r"column\(s\) \[2\]"):
        Normaliser.fit(x, mask)


def test_fit_refuses_a_mask_of_another_shape():
    x = np.zeros((4, 20, 3), np.float32)
    with pytest.raises(NormaliserError, match=r"mask has shape \(4, 10\).*shape \(4, 20\)"):
        Normaliser.fit(x, np.ones((4, 10), bool))


def test_fit_takes_a_list_and_refuses_a_1d_or_text_x():
    rows = [[1.0, 2.0], [2.0, 4.0], [4.0, 8.0]]
    from_list = Normaliser.fit(rows)
    from_array = Normaliser.fit(np.array(rows, np.float32))
    np.testing.assert_allclose(from_list.center, from_array.center)
    np.testing.assert_allclose(from_list.scale, from_array.scale)
    with pytest.raises(NormaliserError, match=r"\(rows, features\) or \(sequences, steps"):
        Normaliser.fit(np.arange(12.0))  # was 12 rows of one feature, silently
    with pytest.raises(NormaliserError, match="float array"):
        Normaliser.fit(np.array([["a", "b"], ["c", "d"]]))


# 3. a spec by name (or TOML path) wherever a spec is taken; None refused


def test_functions_taking_a_spec_take_its_name():
    spec = load_spec("predictorium")
    by_name = build_feature_set("predictorium", ["raw"])
    assert by_name.outputs == build_feature_set(spec, ["raw"]).outputs
    df = make_frame(spec, n_seqs=2)
    arrays = build_arrays(df, "predictorium", list(spec.features))
    np.testing.assert_array_equal(arrays.x, build_arrays(df, spec, list(spec.features)).x)
    rng = np.random.default_rng(0)
    y, p = rng.standard_normal((50, spec.n_outputs)), rng.standard_normal((50, spec.n_outputs))
    assert evaluate("predictorium", y, p).to_dict() == evaluate(spec, y, p).to_dict()
    assert metric_value("predictorium", y[:, 0], p[:, 0]) == metric_value(spec, y[:, 0], p[:, 0])


def test_a_missing_spec_is_refused_not_read_as_the_default():
    df = make_frame(small_spec(), n_seqs=2)
    y = np.zeros((4, 2))
    calls = [lambda: build_feature_set(None, ["raw"]),
             lambda: build_arrays(df, None, ["p0"]),
             lambda: evaluate(None, y, y),
             lambda: metric_value(None, y[:, 0], y[:, 0])]
    for call in calls:
        with pytest.raises(SpecError, match="spec must be a CompetitionSpec, a preset name or "
                                            "a TOML path .*got None"):
            call()


def test_feature_arrays_refuses_what_is_not_a_feature_set(tiny_file):
    path, feature_set = tiny_file
    for wrong in (feature_set.spec, None):
        with pytest.raises(FeatureConfigError, match=r"feature_set must be a FeatureSet "
                                                     r"\(kit.features.build_feature_set"):
            feature_arrays(path, wrong, use_cache=False)


# 4. one string where a list is expected; an empty candidate list


def test_a_group_or_column_given_as_one_string_is_refused_saying_pass_a_list():
    spec = small_spec()
    with pytest.raises(FeatureConfigError, match=r"got the string 'raw': pass \['raw'\]"):
        build_feature_set(spec, "raw")
    with pytest.raises(DataError, match=r"got the string 'p0': pass \['p0'\]"):
        build_arrays(make_frame(spec, n_seqs=2), spec, "p0")


@pytest.mark.parametrize("as_type", [str, Path])
def test_select_ensemble_takes_one_path_as_a_list_of_one(tmp_path, as_type):
    # a str was read letter by letter ("/: no such run directory"), a Path raised TypeError
    missing = tmp_path / "runs" / "gru_base"
    with pytest.raises(EnsembleError, match=re.escape(f"{missing}: no such run directory")):
        select_ensemble(as_type(missing), iters=5)


def test_select_ensemble_refuses_no_candidates():
    with pytest.raises(EnsembleError, match="no candidates: pass one or more run"):
        select_ensemble([], iters=5)


# 5. a fractional --iters


@pytest.mark.parametrize("iters", [2.5, "3", True])
def test_select_ensemble_refuses_iters_that_are_not_whole_numbers(tmp_path, iters):
    # 2.5 raised a raw TypeError deep in the selection (after loading every candidate)
    with pytest.raises(EnsembleError, match=r"--iters must be a whole number, got"):
        select_ensemble([tmp_path / "nope"], iters=iters)
