import numpy as np
import pytest
import torch

from kit.features.normaliser import Normaliser, NormaliserError


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


def test_robust_fit_is_median_and_iqr_and_ignores_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (100_000, 2)).astype(np.float32)
    x[:100] = 1e9
    norm = Normaliser.fit(x, method="robust", clip=None)
    np.testing.assert_allclose(norm.center, 0.0, atol=0.02)
    np.testing.assert_allclose(norm.scale, 1.0, atol=0.03)


def test_constant_feature_gets_unit_scale():
    x = np.ones((10, 2), np.float32)
    norm = Normaliser.fit(x)
    assert (norm.scale == 1.0).all() and np.isfinite(norm.transform(x)).all()


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
                                             ({"clip": float("nan")}, "clip must be > 0")])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(NormaliserError, match=message):
        Normaliser.fit(np.zeros((3, 2), np.float32), **kwargs)


def test_empty_mask_is_rejected():
    with pytest.raises(NormaliserError, match="no training rows"):
        Normaliser.fit(np.zeros((2, 3, 2), np.float32), np.zeros((2, 3), bool))
