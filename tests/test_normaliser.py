import numpy as np
import pytest
import torch

from kit.features import normaliser as normaliser_module
from kit.features.normaliser import Normaliser, NormaliserError, _median_and_bounds


def test_standard_fit_uses_only_masked_rows_and_clips():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (20, 50, 3)).astype(np.float32)
    mask = np.zeros((20, 50), bool)
    mask[:10] = True
    x[~mask] = 1e6  # rows outside the mask must not move the statistics
    norm = Normaliser.fit(x, mask, "standard", clip=4.0)
    rows = x[mask]
    np.testing.assert_allclose(norm.center, rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.scale, rows.std(0), rtol=1e-5)
    y = norm.transform(x)
    assert y.dtype == np.float32 and y.max() == 4.0
    assert norm.transform(np.full((1, 3), -1e6, np.float32)).min() == -4.0  # both sides
    # a 0/1 integer mask is the same mask (it indexed rows 0 and 1 only)
    as_ints = Normaliser.fit(x, mask.astype(np.int8), "standard", clip=4.0)
    np.testing.assert_array_equal(as_ints.center, norm.center)
    np.testing.assert_array_equal(as_ints.scale, norm.scale)


def test_robust_fit_is_median_and_iqr_and_ignores_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (100_000, 2)).astype(np.float32)
    x[:100] = 1e9
    norm = Normaliser.fit(x, method="robust", clip=None)
    np.testing.assert_allclose(norm.center, 0.0, atol=0.02)
    np.testing.assert_allclose(norm.scale, 1.0, atol=0.03)


def test_constant_feature_gets_unit_scale():
    x = np.ones((10, 2), np.float32)
    for method in ("standard", "robust"):
        norm = Normaliser.fit(x, method=method)
        assert (norm.scale == 1.0).all() and np.isfinite(norm.transform(x)).all()


@pytest.mark.parametrize("method", ["standard", "robust"])
def test_a_feature_in_tiny_units_is_scaled_and_a_constant_at_any_level_is_not(method):
    """An absolute 1e-12 floor took a std of 1e-13 for a constant: that feature came out
    as ~0 everywhere. The floor is relative to the feature's level now."""
    rng = np.random.default_rng(2)
    tiny = rng.normal(0.0, 1e-13, 10_000)
    x = np.stack([tiny, np.full(10_000, 123456.7), np.full(10_000, -3e-20)], 1).astype(np.float32)
    norm = Normaliser.fit(x, method=method, clip=None)
    assert 0.7 < norm.transform(x)[:, 0].std() < 1.3
    np.testing.assert_array_equal(norm.scale[1:], 1.0)
    np.testing.assert_array_equal(norm.transform(x)[:, 1:], 0.0)


@pytest.mark.parametrize("share, low, high", [(0.2, 30, 50), (0.05, 15, 35), (0.005, 5, 10)])
def test_robust_fit_keeps_a_sparse_feature_spread(share, low, high):
    """A mostly-zero column (traded volume) has an IQR of 0, but it is not constant: scale 1
    would clip every non-zero value to the bound, a 0/5 flag. A wider percentile range (then the
    RMS deviation from the median) keeps the sizes apart."""
    rng = np.random.default_rng(3)
    x = np.zeros((200_000, 2), np.float32)
    hit = rng.random(len(x)) < share
    x[hit, 0] = rng.normal(100.0, 30.0, hit.sum())
    x[:, 1] = rng.normal(0.0, 1.0, len(x))  # an ordinary column keeps its IQR scale
    norm = Normaliser.fit(x, method="robust", clip=5.0)
    assert norm.center[0] == 0.0 and low < norm.scale[0] < high
    np.testing.assert_allclose(norm.scale[1], 1.0, atol=0.02)
    if share >= 0.05:  # (the rarest's values are z-scores beyond the clip, as with "standard")
        assert norm.transform(x)[hit, 0].std() > 0.5


def test_stream_face_equals_transform_and_round_trips():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (4, 7, 5)).astype(np.float32)
    norm = Normaliser.fit(x, clip=1.5)
    again = Normaliser.from_dict(norm.to_dict())
    module = again.stream_module()
    y, state = module(torch.from_numpy(x), module.init_state(4))
    assert state == []
    np.testing.assert_allclose(y.numpy(), norm.transform(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [({"method": "zscore"}, "not one of"),
                                             ({"clip": 0.0}, "clip must be > 0"),
                                             ({"clip": float("nan")}, "clip must be > 0"),
                                             ({"clip": True}, r"clip must be > 0 \(a number, "
                                              r"not a bool\), got True"),
                                             ({"clip": False}, "not a bool")])
def test_bad_settings_are_rejected(kwargs, message):
    """clip=True passed `> 0` and clipped every feature at +-1 deviations."""
    with pytest.raises(NormaliserError, match=message):
        Normaliser.fit(np.zeros((3, 2), np.float32), **kwargs)


@pytest.mark.parametrize("edit, message", [
    ({"scale": [1.0, -2.0]}, "a scale that is not a finite number > 0"),
    ({"scale": [1.0, 0.0]}, "a scale that is not a finite number > 0"),
    ({"scale": [1.0, float("inf")]}, "a scale that is not a finite number > 0"),
    ({"center": [float("nan"), 0.0]}, "a center that is not finite"),
    ({"center": [0.0]}, "center and scale of different lengths"),
    ({"clip": -1.0}, "clip -1.0, not a number > 0"),
    ({"clip": float("nan")}, "clip nan, not a number > 0"),
    ({"clip": 0.0}, "clip 0.0, not a number > 0"),  # every normalised input would be 0
    ({"clip": 0}, "clip 0, not a number > 0"),
    ({"clip": True}, "clip True, not a number > 0"),  # passed `> 0`: a clip at +-1
    ({"clip": "5"}, "clip '5', not a number > 0"),
    ({"method": "zscore"}, "method 'zscore', not one of"),
    ({"method": None}, "method None, not one of"),
], ids=["negative scale", "zero scale", "inf scale", "nan center", "lengths", "clip < 0",
        "nan clip", "clip 0.0", "int clip 0", "bool clip", "text clip", "unknown method",
        "no method"])
def test_a_stored_normaliser_fit_never_writes_is_refused(edit, message):
    """An edited or corrupted checkpoint's normaliser: a negative scale would flip features
    (and the pack's guard relies on scale > 0), a NaN center would make every input NaN."""
    stored = {**Normaliser.fit(np.ones((3, 2), np.float32)).to_dict(), **edit}
    with pytest.raises(NormaliserError, match=f"the stored normaliser has {message}.*edited or "
                                              "is corrupted"):
        Normaliser.from_dict(stored)
    assert Normaliser.from_dict({**stored, **Normaliser.fit(
        np.ones((3, 2), np.float32)).to_dict()}).scale.tolist() == [1.0, 1.0]


def test_empty_mask_is_rejected():
    with pytest.raises(NormaliserError, match="no training rows"):
        Normaliser.fit(np.zeros((2, 3, 2), np.float32), np.zeros((2, 3), bool))


@pytest.mark.parametrize("zeros", [0.7, 0.748, 0.7499, 0.75, 0.85, 0.899, 0.90])
def test_robust_fit_passes_over_a_quartile_on_the_edge_of_a_point_mass(zeros):
    """At exactly 75% zeros the 75th percentile interpolates between 0 and the smallest
    non-zero value: an IQR of ~3e-5 took every non-zero value to the clip (a 0/5 flag), where
    74% and 76% zeros keep most of them apart. Such a sliver of the wider range is not used."""
    rng = np.random.default_rng(4)
    n = 100_000
    col = np.zeros(n, np.float32)
    col[int(n * zeros):] = rng.exponential(5.0, n - int(n * zeros))
    norm = Normaliser.fit(col[:, None], method="robust", clip=5.0)
    z = norm.transform(col[:, None])[col > 0, 0]
    assert norm.scale[0] > 0.1
    assert (z < 5.0).mean() > 0.5


def test_robust_fit_keeps_its_iqr_beside_outliers_and_heavy_tails():
    """A first fix of the 75% case (a range under 1/1000 of a wider one's passed to it) took
    2% of -9999 sentinels' 1-99 range as a normal column's scale: its values all came out near
    0. Outliers must not move the IQR (the point of `robust`)."""
    rng = np.random.default_rng(0)
    n = 100_000
    plain = rng.standard_normal(n)
    sentinel = plain.copy()
    sentinel[:2000] = -9999.0
    heavy = np.exp(5 * rng.standard_normal(n))
    x = np.stack([plain, sentinel, heavy], 1).astype(np.float32)
    norm = Normaliser.fit(x, method="robust", clip=5.0)
    iqr = np.subtract(*np.quantile(x, [0.75, 0.25], axis=0)) / 1.349
    np.testing.assert_allclose(norm.scale, iqr, rtol=1e-3)
    assert 0.9 < norm.transform(x)[2000:, 1].std() < 1.1


@pytest.mark.parametrize("method", ["standard", "robust"])
def test_a_column_at_a_high_level_keeps_its_real_spread(method):
    """The constant floor is 1e-9 of the level (float rounding of a constant), not more: a price
    column at 1000 with a std of 0.5 is no constant, and scale 1 would halve every value."""
    rng = np.random.default_rng(5)
    col = (1000.0 + rng.normal(0.0, 0.5, 4000)).astype(np.float32)
    norm = Normaliser.fit(col[:, None], method=method, clip=None)
    assert 0.45 < norm.scale[0] < 0.55
    assert 0.9 < norm.transform(col[:, None]).std() < 1.1


def test_robust_fit_scales_the_10_90_range_as_a_normal_s_std():
    """70% zeros pass over the IQR (the mass covers it); the 10-90 range, 0 to 20 (values of
    the data, inverted_cdf: the 9th of 10 sorted), is 2.5631 stds of a normal."""
    col = np.array([0.0] * 7 + [10.0, 20.0, 30.0], np.float32)
    norm = Normaliser.fit(col[::-1, None].copy(), method="robust", clip=None)
    assert norm.center[0] == 0.0
    assert norm.scale[0] == np.float32(20.0 / 2.5631)


def test_robust_fit_passes_over_a_range_whose_span_equals_the_median_s_share():
    """A share equal to the span ("at least" in the docs): 80% zeros cover the 10-90 range
    (its bounds 0 and 10 sit on the mass and its edge), so the 1-99 range (0 to 20) scales."""
    col = np.array([0.0] * 8 + [10.0, 20.0], np.float32)
    norm = Normaliser.fit(col[:, None], method="robust", clip=None)
    assert norm.scale[0] == np.float32(20.0 / 4.6527)


@pytest.mark.parametrize("n", [4, 5, 10, 11, 37])
def test_the_robust_median_and_bounds_are_numpy_s(n):
    """The centre is np.median's (interpolated: [0, 1, 2, 3] -> 1.5) and the bounds are
    np.quantile's `inverted_cdf` order statistics, exactly (one partition computes both)."""
    rng = np.random.default_rng(n)
    rows = rng.permutation(np.arange(n, dtype=np.float32) * 1.5 - 7)[:, None]
    quantiles = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    center, bounds = _median_and_bounds(rows, quantiles)
    assert center.tolist() == np.median(rows, axis=0).tolist()
    assert bounds[:, 0].tolist() == np.quantile(rows[:, 0], quantiles,
                                                method="inverted_cdf").tolist()
    if n == 4:
        assert center[0] == np.float32(1.5 * 1.5 - 7)  # between the 2nd and 3rd of 4
    assert Normaliser.fit(np.arange(4, dtype=np.float32)[:, None], method="robust").center[0] \
        == 1.5


def test_robust_fit_subsamples_big_inputs_the_same_way_every_time(monkeypatch):
    """Past ROBUST_SAMPLE rows the median and ranges come from a subsample: the same rows each
    fit (a rerun or a resumed run must get the same scale), drawn without repeats, in order."""
    monkeypatch.setattr(normaliser_module, "ROBUST_SAMPLE", 200)
    seen = []
    real = normaliser_module._robust
    monkeypatch.setattr(normaliser_module, "_robust", lambda rows: seen.append(rows) or real(rows))
    x = np.random.default_rng(6).normal(0.0, 1.0, (1000, 2)).astype(np.float32)
    x[:, 1] = np.arange(1000)  # each row's index: which rows the subsample took
    one, two = (Normaliser.fit(x, method="robust") for _ in range(2))
    picked = seen[0][:, 1]
    assert len(picked) == 200 and len(set(picked.tolist())) == 200
    assert (np.diff(picked) > 0).all()
    np.testing.assert_array_equal(seen[1], seen[0])
    np.testing.assert_array_equal(two.center, one.center)
    np.testing.assert_array_equal(two.scale, one.scale)
