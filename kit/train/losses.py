"""Masked training losses, configured by name in the [loss] table.

    [loss]
    terms = { wmse = 1.0, pearson = 0.5 }   # name -> weight; the loss is the weighted sum
    huber_delta = 1.0
    target_weights = [1.0, 1.0]             # per target (default: all 1)

Every term reads predictions and targets (B, T, K) and the loss mask (B, T), and only the masked
rows count. "Weighted" terms weight a row by |y| like Predictorium's weighted Pearson (weights
floored at 1e-8; for an unweighted metric such as the next-state preset's R2, use `mse`:
row_weights_note says so where weighted terms written for another competition train for one);
`pearson` is 1 - the weighted Pearson correlation of the batch, per target, pooled.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from kit.config import SPEC_PRESETS, finite_number, load_experiment, parse_override
from kit.errors import KitError

WEIGHT_FLOOR = 1e-8
SPREAD_FLOOR = 1e-15  # a weighted std below this is no spread at all (float32)


class LossConfigError(KitError):
    """Unknown loss term or bad loss settings."""


FLOAT32_RULE = ("must be representable in float32, the loss's precision: at most 3.4e38 each "
                "and summed")


def _float32_safe(weights: list, normalised: bool) -> bool:
    """Whether weights that are finite and >= 0 stay so in float32: 1e39 is inf there (a sum
    past 3.4e38 too: the terms' weighted losses are summed, the target weights divided by their
    sum), and a weight > 0 that is 0 once cast (1e-46) is lost; a target weight that rounds to
    0 beside the sum (`normalised`) too, or makes the weights 0 / 0. A NaN or inf loss from
    the first batch otherwise."""
    raw = torch.tensor(weights, dtype=torch.float64)
    cast = raw.float()
    kept = cast / cast.sum() if normalised else cast
    return bool(torch.isfinite(cast.sum()) and ((kept > 0) == (raw > 0)).all())


def _rows(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    keep = mask.reshape(-1)
    k = pred.shape[-1]
    return pred.reshape(-1, k)[keep].float(), target.reshape(-1, k)[keep].float()


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-target mean of values (rows, K) with row weights (rows, K)."""
    return (values * weights).sum(0) / weights.sum(0).clamp_min(WEIGHT_FLOOR)


def mse(p: Tensor, y: Tensor, delta: float) -> Tensor:
    return ((p - y) ** 2).mean(0)


def wmse(p: Tensor, y: Tensor, delta: float) -> Tensor:
    return _weighted_mean((p - y) ** 2, y.abs().clamp_min(WEIGHT_FLOOR))


def huber(p: Tensor, y: Tensor, delta: float) -> Tensor:
    return torch.nn.functional.huber_loss(p, y, delta=delta, reduction="none").mean(0)


def whuber(p: Tensor, y: Tensor, delta: float) -> Tensor:
    values = torch.nn.functional.huber_loss(p, y, delta=delta, reduction="none")
    return _weighted_mean(values, y.abs().clamp_min(WEIGHT_FLOOR))


def pearson(p: Tensor, y: Tensor, delta: float) -> Tensor:
    """1 - weighted Pearson per target (weights |y|), the metric made differentiable.

    The targets are standardised first and the floor sits on the prediction variance alone, far
    below any real spread: the loss is 1 - the metric for targets in any units (returns of std
    1e-3 too) and predictions at any scale. A floor on var(p) * var(y) of a fixed size turned it
    into "maximise the covariance" for small targets. Unlike the metric, predictions are not
    clipped here (a clip would stop the gradient of every prediction past it)."""
    w = y.abs().clamp_min(WEIGHT_FLOOR)
    w = w / w.sum(0, keepdim=True)
    dp = p - (w * p).sum(0, keepdim=True)
    dy = y - (w * y).sum(0, keepdim=True)
    dy = dy / (w * dy * dy).sum(0, keepdim=True).sqrt().clamp_min(SPREAD_FLOOR)
    cov = (w * dp * dy).sum(0)
    return 1.0 - cov / (w * dp * dp).sum(0).clamp_min(SPREAD_FLOOR**2).sqrt()


TERMS = {"mse": mse, "wmse": wmse, "huber": huber, "whuber": whuber, "pearson": pearson}
# terms that leave the predictions' scale free: alone, they train a model whose predictions
# correlate with the targets at no particular scale
SCALE_FREE_TERMS = frozenset({"pearson"})
# terms that weight each row by |y|, as Predictorium's weighted Pearson does; the metrics that
# weight rows so (the others, r2, mae and rmse, weigh every row alike)
ROW_WEIGHTED_TERMS = frozenset({"wmse", "whuber", "pearson"})
ROW_WEIGHTED_METRICS = frozenset({"weighted_pearson"})
DEFAULT_TERMS = {"mse": 1.0}
DEFAULT_HUBER_DELTA = 1.0


def resolved_loss(config: dict | None, n_targets: int) -> dict:
    """The [loss] table as it trains, its defaults filled in: what a run's config.toml records
    (a run of the default loss recorded none). Keys it does not know are kept, for MaskedLoss
    to refuse."""
    config = dict(config or {})
    return {"terms": dict(DEFAULT_TERMS), "huber_delta": DEFAULT_HUBER_DELTA,
            "target_weights": [1.0] * n_targets, **config}


class MaskedLoss:
    """The configured weighted sum of terms, averaged over targets with target weights."""

    def __init__(self, config: dict | None, n_targets: int):
        config = dict(config or {})
        terms = config.pop("terms", dict(DEFAULT_TERMS))
        delta = config.pop("huber_delta", DEFAULT_HUBER_DELTA)
        weights = config.pop("target_weights", [1.0] * n_targets)
        if config:
            raise LossConfigError(f"unknown [loss] key(s) {sorted(config)}; allowed: terms, "
                                  "huber_delta, target_weights")
        if not isinstance(terms, dict) or not terms:
            raise LossConfigError("loss.terms must be a table of name = weight, e.g. "
                                  "{ wmse = 1.0, pearson = 0.5 }")
        unknown = sorted(set(terms) - set(TERMS))
        if unknown:
            raise LossConfigError(f"unknown loss term(s) {unknown}; available: {sorted(TERMS)}")
        bad = [f"{name} = {w!r}" for name, w in terms.items() if not finite_number(w) or w < 0]
        if bad:
            raise LossConfigError(f"loss.terms weights must be finite numbers >= 0, got {bad}")
        if sum(terms.values()) <= 0:  # the loss would be 0 and training would change nothing
            raise LossConfigError(f"loss.terms needs at least one weight > 0, got {terms}",
                                  settings=("loss.terms",))
        if not _float32_safe(list(terms.values()), normalised=False):
            raise LossConfigError(f"loss.terms weights {FLOAT32_RULE}, and none > 0 so small "
                                  f"that it rounds to 0, got {terms}",
                                  settings=("loss.terms",))
        if not finite_number(delta) or delta <= 0:
            raise LossConfigError(f"loss.huber_delta must be a finite number > 0, got {delta!r}")
        if not isinstance(weights, list) or len(weights) != n_targets:
            raise LossConfigError(f"loss.target_weights must be a list of {n_targets} numbers "
                                  f"(one per target), got {weights!r}")
        if not all(finite_number(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise LossConfigError(f"loss.target_weights must be finite numbers >= 0 with a "
                                  f"positive sum, got {weights!r}")
        if not _float32_safe(weights, normalised=True):
            raise LossConfigError(f"loss.target_weights {FLOAT32_RULE}, and none > 0 so small "
                                  f"beside their sum that it rounds to 0, got {weights!r}")
        self.delta = float(delta)
        self.terms = {name: float(w) for name, w in terms.items()}
        self.target_weights = torch.tensor(weights, dtype=torch.float32)
        self.target_weights = self.target_weights / self.target_weights.sum()

    def __call__(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        p, y = _rows(pred, target, mask)
        if p.shape[0] == 0:  # a chunk of warm-up steps only: nothing to learn from
            return p.sum()  # 0 with a gradient of 0; pred.sum() * 0 is NaN where pred holds inf
        weights = self.target_weights.to(p.device)
        total = p.new_zeros(())
        for name, weight in self.terms.items():
            total = total + weight * (TERMS[name](p, y, self.delta) * weights).sum()
        return total


def terms_chosen_by(overrides: list[str] | None) -> set[str] | None:
    """The loss terms command-line overrides choose for this command's competition: None when
    they set the whole table (`loss={...}`, `loss.terms={...}`: every term chosen), else the
    names `loss.terms.NAME=...` sets. Such a dotted override merges into the file's terms, whose
    weighted ones still train (r316: `loss.terms.mse=1.0` silenced the note)."""
    named: set[str] = set()
    for text in overrides or []:
        path = parse_override(text)[0]
        if path in (["loss"], ["loss", "terms"]):
            return None
        if path[:2] == ["loss", "terms"] and len(path) == 3:
            named.add(path[2])
    return named


def row_weights_note(exp: str, overrides: list[str] | None, config: dict) -> str | None:
    """What to say of a loss that weights rows by |y| (wmse, whuber, pearson) training for a
    metric that weighs them alike (r2, mae, rmse), when its terms were written for another
    competition: those of `base` (Predictorium's) under `spec=rnn-challenge`, which cost about
    0.015 R2 there, without a word (r314). None where nothing is wrong, and where the terms
    were chosen with this competition in force: on the command line, or in an experiment file
    whose spec (its own or its parents') is this one; so a user who chose wmse for an R2
    competition is not told again. `config`: the experiment's, overrides applied and resolved."""
    from kit.competition import load_spec

    spec = load_spec(config["spec"])
    terms = config.get("loss", {}).get("terms", DEFAULT_TERMS)
    chosen = terms_chosen_by(overrides)
    weighted = [name for name, weight in terms.items()
                if name in ROW_WEIGHTED_TERMS and weight > 0]
    if chosen is None or not weighted or spec.metric.name in ROW_WEIGHTED_METRICS or all(
            name in chosen for name in weighted):
        return None
    origins = {}
    load_experiment(exp, origins=origins)
    origin = origins.get("loss")
    if origin is None or origin.spec in (config["spec"], spec.name):
        return None
    written = ", ".join(f"{name} = {weight!r}" for name, weight in terms.items())
    preset = SPEC_PRESETS.get(spec.name)
    instead = f", or train {preset}, the preset made for {spec.name}" if preset else ""
    return (f"loss.terms = {{ {written} }}, written for {origin.spec} in {origin.file}, "
            f"weight rows by |y| ({', '.join(weighted)}), but {spec.name}'s metric "
            f"{spec.metric.name} weighs every row alike: set loss.terms={{mse=1.0}}{instead} "
            f"(terms set on the command line, or in an experiment with spec = "
            f"\"{config['spec']}\", are taken as chosen and not noted)")


def warn_row_weights(exp: str, overrides: list[str] | None, config: dict) -> None:
    """row_weights_note as a warning (`warning: ...`, once per training command)."""
    if note := row_weights_note(exp, overrides, config):
        warnings.warn(note, UserWarning, stacklevel=2)
