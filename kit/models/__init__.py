"""Stream models by name: built from an experiment's [model] table.

    [model]
    type = "gru"
    hidden = 128        # or: params = 200_000 (the largest width that fits the budget)
    layers = 2

Every model has the stream contract (docs/design.md "The one idea"): init_state(batch) and
forward(x [B, T, F], state) -> (y [B, T, K], new_state), the whole-sequence path equal to the
step path. docs/models.md describes each model, its state and its keys.
"""

from __future__ import annotations

import torch
from torch import nn

from kit.config import did_you_mean
from kit.models.config import ModelConfigError, StreamModel
from kit.models.custom import build_error, custom_class, is_custom
from kit.models.patchtst import PatchTST
from kit.models.rnn import AttentionGRU, GRUModel, LSTMModel
from kit.models.ssm import SSM
from kit.models.tcn import TCN
from kit.models.transformer import Transformer

__all__ = [
    "MODELS",
    "ModelConfigError",
    "StreamModel",
    "build_model",
    "known_class",
    "count_params",
    "model_values",
    "solve_width",
]

MODELS: dict[str, type[StreamModel]] = {
    "gru": GRUModel,
    "lstm": LSTMModel,
    "attention_gru": AttentionGRU,
    "transformer": Transformer,
    "ssm": SSM,
    "tcn": TCN,
    "patchtst": PatchTST,
}

BUDGET_KEY = "params"
MAX_WIDTH = 1 << 16  # the budget search stops here


def model_class(config: dict) -> type[StreamModel]:
    if not isinstance(config, dict):
        raise ModelConfigError(f"[model] must be a table, got {config!r}")
    kind = config.get("type")
    if kind is None:
        # (a child experiment's [model] replaces its parent's whole: one key set there
        # drops the parent's type, which a sweep or an override may give back)
        raise ModelConfigError(f"model.type is missing; available: {sorted(MODELS)} (a [model] "
                               "table in an experiment that extends another replaces the "
                               "parent's whole: give its type there, or model.type=NAME)")
    if is_custom(kind):
        return custom_class(kind)
    if not isinstance(kind, str) or kind not in MODELS:
        meant = did_you_mean(kind, list(MODELS)) if isinstance(kind, str) else ""
        raise ModelConfigError(f"model.type: unknown model {kind!r}{meant}; available: "
                               f"{sorted(MODELS)}, or your own: \"path/to/file.py:ClassName\"")
    return MODELS[kind]


def known_class(kind: object) -> type[StreamModel] | None:
    """The class of a model.type for readers that only describe a config (its keys, its width
    key): None where it names no class this kit can load now (a custom file gone)."""
    if not isinstance(kind, str):
        return None
    if not is_custom(kind):
        return MODELS.get(kind)
    try:
        return custom_class(kind)
    except (ModelConfigError, OSError):  # (a file unreadable now: described without it)
        return None


def model_values(config: dict) -> dict:
    """The constructor arguments of a [model] table: checked, defaults filled in.

    Raises ModelConfigError naming the first bad entry (unknown type or key, wrong value)."""
    cls = model_class(config)
    values = _key_values(cls, config)
    cls.check(values)  # first: its messages name the keys (a multiple of model.n_heads)
    if not cls.width_key:  # (a model of your own may declare no width)
        return values
    step = cls.width_multiple(values)
    if values[cls.width_key] % step:
        raise ModelConfigError(
            f"model.{cls.width_key} ({values[cls.width_key]}) must be a multiple of {step}",
            settings=(f"model.{cls.width_key}", "model.n_heads"))  # (heads set the multiple)
    cls.check_width(values)  # a width of 1 under a LayerNorm: a constant prediction
    return values


def _key_values(cls: type[StreamModel], config: dict) -> dict:
    """Each key checked on its own, defaults filled in."""
    keys = cls.all_keys()
    for name in config:
        if name not in keys and name not in ("type", BUDGET_KEY):
            raise ModelConfigError(
                f"model.{name}: unknown key for {config['type']!r}"
                f"{did_you_mean(name, [*keys, BUDGET_KEY], 'model.')}; "
                f"allowed: {sorted([*keys, BUDGET_KEY])}"
            )
    if BUDGET_KEY in config:
        _budget(config)
    return {name: key.check(name, config.get(name, key.default)) for name, key in keys.items()}


def _budget(config: dict) -> int:
    budget = config[BUDGET_KEY]
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ModelConfigError(
            f"model.{BUDGET_KEY}: expected a positive integer (a parameter budget), got {budget!r}"
        )
    return budget


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _count(kind: str, values: dict, n_inputs: int, n_outputs: int) -> int:
    with torch.device("meta"):  # no memory, no init cost: only the shapes matter
        return count_params(_built(kind, values, n_inputs, n_outputs))


def _built(kind: str, values: dict, n_inputs: int, n_outputs: int) -> StreamModel:
    """The model of type `kind` with these constructor values (solving a budget builds it
    too, on the meta device)."""
    cls = model_class({"type": kind})
    try:
        return cls(n_inputs, n_outputs, **values)
    except Exception as exc:
        if is_custom(kind):  # your code's error, in one line
            raise build_error(kind, exc) from None
        if not isinstance(exc, RuntimeError | OverflowError | MemoryError | TypeError):
            raise
        # sizes past what torch can allocate (model.hidden = 10**11, model.ff = 1e300): the
        # keys' checks take any size, so say which table it was rather than torch's traceback
        said = (str(exc).splitlines() or [""])[0][:200]
        raise ModelConfigError(f"model {values | {'type': kind}}: torch cannot "
                               f"build it ({type(exc).__name__}: {said}); are the sizes meant?"
                               ) from None


def solve_width(config: dict, n_inputs: int, n_outputs: int) -> dict:
    """With `params` (a budget): the config with its width key set to the largest value whose
    model fits the budget (a multiple of width_multiple). Without `params`: the config as is.

    `params` overrides a width given beside it: a command-line override (model.params=N)
    cannot remove the experiment's width key."""
    cls = model_class(config)
    if BUDGET_KEY not in config:
        return dict(config)
    if not cls.width_key:
        raise ModelConfigError(f"model.{BUDGET_KEY}: {config['type']!r} declares no width_key "
                               "to solve from a parameter budget; give its size keys instead",
                               settings=(f"model.{BUDGET_KEY}",))
    budget = _budget(config)
    values = _key_values(cls, {k: v for k, v in config.items() if k != cls.width_key})
    step = cls.width_multiple(values)
    cls.check({**values, cls.width_key: step})  # before building: patch_len > window crashes

    def size(m: int) -> int:
        return _count(config["type"], {**values, cls.width_key: m * step}, n_inputs, n_outputs)

    first = -(-cls.min_width(values) // step)  # the smallest multiple the model accepts
    smallest = size(first)
    if smallest > budget:
        raise ModelConfigError(
            f"model.{BUDGET_KEY} = {budget:,} is too small: {config['type']} with "
            f"{cls.width_key} = {first * step} already has {smallest:,} parameters"
        )
    lo, hi = first, 2 * first  # size(lo) fits; find an hi that does not
    while hi * step <= MAX_WIDTH and size(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, MAX_WIDTH // step + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    solved = {**config, cls.width_key: lo * step}
    model_values(solved)  # the checks across keys
    return solved


def build_model(config: dict, n_inputs: int, n_outputs: int) -> StreamModel:
    """The model of a [model] table (its width solved from `params` when that is given)."""
    config = solve_width(config, n_inputs, n_outputs)
    return _built(config["type"], model_values(config), n_inputs, n_outputs)
