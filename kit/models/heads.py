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
    """One head with K outputs ("shared") or K heads with one output each ("separate")."""

    def __init__(self, kind: str, width: int, n_outputs: int, separate: bool = False):
        super().__init__()
        make = HEADS[kind]
        if separate:
            self.parts = nn.ModuleList(make(width, 1) for _ in range(n_outputs))
        else:
            self.parts = nn.ModuleList([make(width, n_outputs)])

    def forward(self, h: Tensor) -> Tensor:
        if len(self.parts) == 1:
            return self.parts[0](h)
        return torch.cat([part(h) for part in self.parts], dim=-1)


def make_head(width: int, n_outputs: int, head: str, heads: str) -> Head:
    """The head a config's `head` and `heads` keys ask for."""
    return Head(head, width, n_outputs, separate=heads == "separate")
