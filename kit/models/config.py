"""Model config keys: each model declares its keys with a default and a check, so a bad [model]
table fails before anything is built, with a message that names the entry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kit.errors import KitError

MAX_HISTORY = 100_000  # steps a model's state may hold, as a feature's lag or window (MAX_REACH)
MIN_NORMED_WIDTH = 2  # a LayerNorm over one value outputs its bias: a constant prediction


class ModelConfigError(KitError):
    """A [model] table is malformed; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Key:
    """One config key: its default and what a value must be.

    kind: "int" (an integer >= low, <= high when given), "prob" (a number in [0, 1)),
    "number" (a number > 0), "bool", "choice" (one of choices) or "ints" (a non-empty list of
    integers >= low).
    """

    default: object
    kind: str
    low: int = 1
    high: int | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def check(self, name: str, value) -> object:
        """The value as the model wants it; raises ModelConfigError naming `model.<name>`."""
        where = f"model.{name}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ModelConfigError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ModelConfigError(
                    f"{where}: expected one of {list(self.choices)}, got {value!r}"
                )
            return value
        if self.kind == "ints":
            if not (
                isinstance(value, list)
                and value
                and all(_is_int(v) for v in value)
                and min(value) >= self.low
            ):
                raise ModelConfigError(
                    f"{where}: expected a non-empty list of integers >= {self.low}, got {value!r}"
                )
            return [int(v) for v in value]
        if self.kind == "int":
            if not _is_int(value) or value < self.low:
                raise ModelConfigError(f"{where}: expected an integer >= {self.low}, got {value!r}")
            if self.high is not None and value > self.high:  # sizes a state: a typo would
                # pass the build and fail allocating it as a torch error
                raise ModelConfigError(f"{where}: at most {self.high:,} (it sizes the model's "
                                       f"state), got {value:,}")
            return int(value)
        if not _is_number(value):
            raise ModelConfigError(f"{where}: expected a number, got {value!r}")
        if self.kind == "prob" and not 0.0 <= value < 1.0:
            raise ModelConfigError(f"{where}: expected a probability in [0, 1), got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int past float's range (TOML reads 1 followed by 400 zeros)
            number = math.inf
        if self.kind == "number" and not (number > 0 and math.isfinite(number)):
            raise ModelConfigError(f"{where}: expected a finite number > 0, got {value!r}")
        return number


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


HEAD_KINDS = ("linear", "highway", "residual")

# Keys every model accepts (besides `type`, and `params`, the budget solve_width reads).
COMMON_KEYS = {
    "dropout": Key(0.0, "prob", help="dropout probability (training only)"),
    "head": Key("linear", "choice", choices=HEAD_KINDS, help="output head"),
    "heads": Key(
        "shared",
        "choice",
        choices=("shared", "separate"),
        help="one head for all targets, or one per target",
    ),
}


class StreamModel(nn.Module):
    """Base of the registered models: the config keys they accept and their width key.

    Subclasses take (n_inputs, n_outputs, **values of keys) and implement the stream contract:
    init_state(batch) -> list[Tensor] (batch first, zeros = a new sequence) and
    forward(x [B, T, F], state) -> (y [B, T, K], new_state)."""

    keys: dict[str, Key] = {}
    width_key: str = ""
    width_unit: str = "unit"  # one of the width's units, as a message names it ("channel")

    @classmethod
    def all_keys(cls) -> dict[str, Key]:
        return {**cls.keys, **COMMON_KEYS}

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        """Whether a LayerNorm normalises over the width (values: the keys but the width): a
        width of 1 then outputs the norm's bias whatever the input, a constant prediction."""
        return False

    @classmethod
    def min_width(cls, values: dict) -> int:
        """The smallest width the model accepts (and a budget solves to)."""
        return MIN_NORMED_WIDTH if cls.normed_width(values) else 1

    @classmethod
    def check_width(cls, values: dict) -> None:
        """A width of 1 under a LayerNorm (its output over one value is its bias): refused."""
        width, low = values[cls.width_key], cls.min_width(values)
        if width >= low:
            return
        where = f"model.{cls.width_key} = {width}"
        said = (f"its LayerNorm over one {cls.width_unit} outputs a constant (the same "
                f"prediction whatever the input); use >= {low}")
        if "layer_norm" in values:  # (the recurrent models: the LayerNorm is optional)
            raise ModelConfigError(f"{where} with model.layer_norm = true: {said} or "
                                   "layer_norm = false",
                                   settings=(f"model.{cls.width_key}", "model.layer_norm"))
        raise ModelConfigError(f"{where}: {said}", settings=(f"model.{cls.width_key}",))

    @classmethod
    def width_multiple(cls, values: dict) -> int:
        """The width must be a multiple of this (e.g. of the number of attention heads)."""
        return 1

    @classmethod
    def check(cls, values: dict) -> None:
        """Checks across keys; raise ModelConfigError naming the keys."""

    def step_form(self) -> nn.Module:
        """The module the step graph freezes: the same weights and stream contract, its state
        laid out as the exported ops want it (the model itself unless a subclass says)."""
        return self

    def zeros(self, *shape: int) -> Tensor:
        """A zero state tensor on the model's device."""
        return torch.zeros(*shape, device=next(self.parameters()).device)
