import numpy as np
import pytest
import torch

from kit.metrics import weighted_pearson
from kit.train.losses import LossConfigError, MaskedLoss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(3, 20, 2, generator=g) ** 3
    p = 0.5 * y + torch.randn(3, 20, 2, generator=g)
    mask = torch.rand(3, 20, generator=g) > 0.3
    return p, y, mask


def test_mse_uses_only_masked_rows():
    p, y, mask = _batch()
    loss = MaskedLoss({"terms": {"mse": 1.0}}, 2)(p, y, mask)
    expected = ((p - y) ** 2)[mask].mean()
    assert torch.isclose(loss, expected)
    p2 = p.clone()
    p2[~mask] = 1e6  # unmasked rows must not matter
    assert torch.isclose(MaskedLoss({"terms": {"mse": 1.0}}, 2)(p2, y, mask), expected)


@pytest.mark.parametrize("y_scale, p_scale", [(1.0, 1.0), (1e-3, 1e-3), (1e-3, 1e-5),
                                               (1e4, 1e-2), (1.0, 1e-9)])
def test_pearson_term_is_one_minus_the_metric(y_scale, p_scale):
    """1 - the metric at any scale; (1.0, 1e-9) pins the floor on the prediction variance at
    SPREAD_FLOOR**2: a floor of SPREAD_FLOOR gave 0.95 instead of 0.15 there (a loss that
    rewards scaling predictions up)."""
    # in any units: returns of std 1e-3 predicted at 1e-5 included (the correlation is the same)
    p, y, mask = _batch(1)
    p, y = p * p_scale, y * y_scale
    loss = MaskedLoss({"terms": {"pearson": 1.0}}, 2)(p, y, mask)
    rows_p, rows_y = p[mask].numpy(), y[mask].numpy()
    metric = np.mean([weighted_pearson(rows_y[:, j], rows_p[:, j], clip=None) for j in (0, 1)])
    assert loss.item() == pytest.approx(1 - metric, abs=1e-5)


def test_pearson_term_does_not_reward_the_prediction_scale():
    p, y, mask = _batch(2)
    p, y = (p * 1e-5).requires_grad_(), y * 1e-3
    loss = MaskedLoss({"terms": {"pearson": 1.0}}, 2)(p, y, mask)
    loss.backward()
    # the metric ignores the scale, so the gradient has no part along p itself
    along_scale = (p.grad * p.detach())[mask].sum()
    assert abs(along_scale.item()) < 1e-5 * p.grad.norm().item() * p.detach().norm().item()


def test_weighted_terms_weight_large_targets():
    y = torch.tensor([[[10.0], [0.1]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    off_big = torch.tensor([[[9.0], [0.1]]])
    off_small = torch.tensor([[[10.0], [1.1]]])
    loss = MaskedLoss({"terms": {"wmse": 1.0}}, 1)
    assert loss(off_big, y, mask) > loss(off_small, y, mask)


def test_huber_delta_sets_where_the_loss_turns_linear():
    """loss.huber_delta reaches the Huber term (it was passed as 1.0 whatever the config said):
    0.5 r^2 for |r| < delta, delta * (|r| - delta / 2) past it."""
    y = torch.zeros(1, 2, 1)
    p = torch.tensor([[[0.5], [-3.0]]])  # residuals 0.5 and 3
    mask = torch.ones(1, 2, dtype=torch.bool)
    for delta, expected in ((2.0, (0.125 + 2.0 * (3 - 1.0)) / 2),  # 0.5 quadratic, 3 linear
                            (0.25, (0.25 * (0.5 - 0.125) + 0.25 * (3 - 0.125)) / 2),  # both
                            (4.0, (0.125 + 4.5) / 2)):  # both quadratic
        loss = MaskedLoss({"terms": {"huber": 1.0}, "huber_delta": delta}, 1)(p, y, mask)
        assert loss.item() == pytest.approx(expected, rel=1e-6), delta


def test_whuber_weights_rows_by_the_target_size_like_wmse():
    """whuber is the Huber loss with the rows weighted by |y| (the weights were dropped, leaving
    a plain mean)."""
    y = torch.tensor([[[4.0], [-1.0]]])
    p = torch.tensor([[[2.0], [-1.5]]])  # residuals 2 (linear, delta 1) and 0.5 (quadratic)
    mask = torch.ones(1, 2, dtype=torch.bool)
    values = (1.0 * (2 - 0.5), 0.5 * 0.5**2)  # 1.5, 0.125
    loss = MaskedLoss({"terms": {"whuber": 1.0}, "huber_delta": 1.0}, 1)(p, y, mask)
    assert loss.item() == pytest.approx((4 * values[0] + 1 * values[1]) / 5, rel=1e-6)
    wmse = MaskedLoss({"terms": {"wmse": 1.0}}, 1)(p, y, mask)
    assert wmse.item() == pytest.approx((4 * 2.0**2 + 1 * 0.5**2) / 5, rel=1e-6)


def test_combination_and_target_weights():
    p, y, mask = _batch(2)
    a = MaskedLoss({"terms": {"mse": 1.0}}, 2)(p, y, mask)
    b = MaskedLoss({"terms": {"huber": 1.0}, "huber_delta": 0.5}, 2)(p, y, mask)
    both = MaskedLoss({"terms": {"mse": 1.0, "huber": 2.0}, "huber_delta": 0.5}, 2)(p, y, mask)
    assert torch.isclose(both, a + 2 * b)
    only_first = MaskedLoss({"terms": {"mse": 1.0}, "target_weights": [1.0, 0.0]}, 2)
    assert torch.isclose(only_first(p, y, mask), ((p - y) ** 2)[..., 0][mask].mean())


def test_all_terms_give_gradients_and_an_empty_mask_gives_zero():
    p, y, mask = _batch(3)
    p.requires_grad_(True)
    loss = MaskedLoss({"terms": {k: 1.0 for k in ("mse", "wmse", "huber", "whuber",
                                                  "pearson")}}, 2)
    loss(p, y, mask).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert loss(p, y, torch.zeros_like(mask)).item() == 0.0
    # steps outside the mask may hold anything (padding): pred.sum() * 0 was NaN there
    wild = torch.full_like(p, float("inf")).requires_grad_(True)
    empty = loss(wild, y, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and (wild.grad == 0).all()


@pytest.mark.parametrize("config, message", [
    ({"terms": {"mae": 1.0}}, "unknown loss term"),
    ({"terms": {}}, "table of name"),
    ({"terms": {"mse": 1.0}, "target_weights": [1.0]}, r"a list of 2 numbers .* got \[1.0\]"),
    ({"terms": {"mse": "a"}}, "loss.terms weights must be finite numbers >= 0"),
    ({"terms": {"mse": 1.0}, "target_weights": [0, 0]}, "positive sum"),
    ({"terms": {"mse": 1.0}, "target_weights": ["a", 1]}, "positive sum"),
    ({"terms": {"huber": 1.0}, "huber_delta": -1}, "huber_delta must be a finite number > 0"),
    ({"terms": {"mse": 1.0}, "delta": 1.0}, "unknown \\[loss\\] key"),
    # a loss of 0 everywhere: the run would train nothing and report itself finished
    ({"terms": {"mse": 0.0, "pearson": 0.0}}, "loss.terms needs at least one weight > 0"),
])
def test_bad_loss_configs(config, message):
    with pytest.raises(LossConfigError, match=message):
        MaskedLoss(config, 2)


def test_wmse_of_all_zero_targets_is_the_plain_mse():
    """The |y| row weights are floored at 1e-8 (the docstring's promise): a batch whose targets
    are all 0 gives the plain mean squared error and a gradient, not a loss of 0 that teaches
    nothing (without the floor every weight is 0)."""
    y = torch.zeros(1, 3, 1)
    p = torch.ones(1, 3, 1, requires_grad=True)
    loss = MaskedLoss({"terms": {"wmse": 1.0}}, 1)(p, y, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    loss.backward()
    assert (p.grad > 0).all()


@pytest.mark.parametrize("config, message", [
    # a negative weight maximises its term
    ({"terms": {"mse": -1.0, "wmse": 2.0}}, "loss.terms weights must be finite numbers >= 0"),
    ({"terms": {"mse": float("inf")}}, "loss.terms weights must be finite numbers >= 0"),
    ({"terms": {"mse": float("nan"), "wmse": 1.0}},
     "loss.terms weights must be finite numbers >= 0"),
    # a positive sum, but one target's error is maximised
    ({"terms": {"mse": 1.0}, "target_weights": [-1.0, 2.0]}, "finite numbers >= 0 with a "
     "positive sum"),
    # a list has no .items(): an AttributeError instead of the config error
    ({"terms": ["mse"]}, "loss.terms must be a table of name = weight"),
    # torch's huber_loss refuses delta 0 in the first batch, after the data is built
    ({"terms": {"huber": 1.0}, "huber_delta": 0}, "huber_delta must be a finite number > 0"),
    ({"terms": {"huber": 1.0}, "huber_delta": 0.0}, "huber_delta must be a finite number > 0"),
])
def test_out_of_range_loss_settings_are_refused_by_the_config_check(config, message):
    """What docs/runs.md promises of [loss] ("weights finite and >= 0", "huber_delta > 0",
    terms a table) is refused when the config is checked, as a LossConfigError naming the
    key, not by a crash or a diverged run once training starts."""
    with pytest.raises(LossConfigError, match=message):
        MaskedLoss(config, 2)


@pytest.mark.parametrize("config, key", [
    ({"terms": {"mse": 1.0}, "target_weights": [1e39, 1.0]}, "loss.target_weights"),  # inf
    ({"terms": {"mse": 1.0}, "target_weights": [1e-46, 0.0]}, "loss.target_weights"),  # 0 / 0
    ({"terms": {"mse": 1.0}, "target_weights": [1e308, 1e308]}, "loss.target_weights"),
    ({"terms": {"mse": 1.0}, "target_weights": [3e38, 3e38]}, "loss.target_weights"),  # sum
    ({"terms": {"mse": 1.0}, "target_weights": [1e-45, 1e30]}, "loss.target_weights"),
    ({"terms": {"mse": 1e39}}, "loss.terms weights"),
    ({"terms": {"mse": 3e38, "wmse": 3e38}}, "loss.terms weights"),
    ({"terms": {"mse": 1e-46}}, "loss.terms weights"),  # a loss of 0 in float32
])
def test_loss_weights_past_float32_are_refused_naming_the_key_and_value(config, key):
    """Weights that pass "finite, >= 0, positive sum" as Python floats but over- or underflow
    in the loss's float32 made the loss NaN or inf (or 0) from the first batch: they are
    refused when the config is checked, the message naming the key, the value and why."""
    value = config.get("target_weights", config["terms"])
    with pytest.raises(LossConfigError) as info:
        MaskedLoss(config, 2)
    said = str(info.value)
    assert said.startswith(f"{key} must be representable in float32")
    assert "at most 3.4e38" in said and said.endswith(f"got {value!r}")


@pytest.mark.parametrize("weights", [[3e38, 0.0], [1e-40, 1.0], [1e-30, 1e-30], [10**30, 1]])
def test_loss_weights_within_float32_still_train(weights):
    """The float32 check refuses only what float32 cannot hold: large, tiny (subnormal) and
    whole-number weights that it can hold give a finite loss."""
    p, y, mask = _batch(4)
    loss = MaskedLoss({"terms": {"mse": 1.0, "wmse": 1e-30}, "target_weights": weights}, 2)
    assert torch.isfinite(loss(p, y, mask))
    # terms are not divided by their sum: a tiny one beside a large one is kept, not refused
    uneven = MaskedLoss({"terms": {"mse": 1e20, "pearson": 1e-30}, "target_weights": weights}, 2)
    assert torch.isfinite(uneven(p, y, mask))
