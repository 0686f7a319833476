"""Output heads: from a model's last hidden width to the K targets, applied to every step."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Highway(nn.Module):
    """z = g * relu(W h) + (1 - g) * h with a learned gate g, then a linear map to the outputs."""

    def __init__(self, width: int, n_outputs: int):
        super().__init__()
        self.width = width
        self.inner = nn.Linear(width, 2 * width)  # gate and transform in one matmul
        self.out = nn.Linear(width, n_outputs)

    def forward(self, h: Tensor) -> Tensor:
        gate, transform = self.inner(h).split([self.width, self.width], dim=-1)
        gate = torch.sigmoid(gate)
        return self.out(gate * torch.relu(transform) + (1 - gate) * h)


class Residual(nn.Module):
    """z = h + W2 gelu(W1 h), then a linear map to the outputs."""

    def __init__(self, width: int, n_outputs: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.out = nn.Linear(width, n_outputs)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(h + self.mlp(h))


HEADS = {"linear": nn.Linear, "highway": Highway, "residual": Residual}


class Head(nn.Module):
    """One head with K outputs ("shared") or K heads with one output each ("separate").

    With `normaliser.targets` the outputs are in the targets' units: y = z * out_scale +
    out_center, the targets' mean and std on the training rows (fixed buffers, saved with the
    weights). The layers learn a standardised z, so targets far from 0 or 1 (a heart rate of
    130 +- 7) do not take the optimiser thousands of steps to reach."""

    def __init__(self, kind: str, width: int, n_outputs: int, separate: bool = False):
        super().__init__()
        make = HEADS[kind]
        if separate:
            self.parts = nn.ModuleList(make(width, 1) for _ in range(n_outputs))
        else:
            self.parts = nn.ModuleList([make(width, n_outputs)])
        self.scaled = False  # no buffers and no ops in the graph unless asked for

    def scale_outputs(self, center, scale) -> None:
        """Put the outputs in the targets' units (center, scale: one value per output)."""
        device = next(self.parameters()).device
        for name, value in (("out_center", center), ("out_scale", scale)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32,
                                                       device=device).reshape(-1).clone())
        self.scaled = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved with scaled outputs bring their buffers: make room for them first
        if not self.scaled and prefix + "out_scale" in state_dict:
            self.scale_outputs(state_dict[prefix + "out_center"], state_dict[prefix + "out_scale"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, h: Tensor) -> Tensor:
        if len(self.parts) == 1:
            y = self.parts[0](h)
        else:
            y = torch.cat([part(h) for part in self.parts], dim=-1)
        return y * self.out_scale + self.out_center if self.scaled else y

    def output_affine(self) -> tuple[Tensor, Tensor] | None:
        """(scale, center) of the outputs, None when unscaled."""
        return (self.out_scale, self.out_center) if self.scaled else None


def make_head(width: int, n_outputs: int, head: str, heads: str) -> Head:
    """The head a config's `head` and `heads` keys ask for."""
    return Head(head, width, n_outputs, separate=heads == "separate")
