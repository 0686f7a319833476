"""A selective diagonal state-space model (Mamba-style, without the short convolution).

Per layer, from the normalised input u: x, z = in_proj(u); x = silu(x);
dt = softplus(dt_proj(low-rank part of x_proj(x))), B_t, C_t = the rest of x_proj(x);
h_t = exp(dt A) * h_{t-1} + (dt x_t) B_t  (A = -exp(A_log) diagonal, [d_inner, d_state]);
y_t = (h_t . C_t + D x_t) * silu(z_t); the layer adds out_proj(y) to its input.
Everything but the recurrence is computed for all T at once; the recurrence itself is the same
elementwise update in both paths (a loop over T in the whole-sequence path), so they agree to
float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.config import Key, StreamModel
from kit.models.heads import make_head

DT_MIN, DT_MAX = 1e-3, 1e-1  # initial step sizes, log-uniform


def _advance(h: Tensor, decay: Tensor, drive: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: h [B, d_inner, N] -> (new h, y = h . c as [B, d_inner, 1])."""
    h = decay * h + drive
    return h, torch.matmul(h, c.unsqueeze(-1))


class SelectiveLayer(nn.Module):
    def __init__(self, d_model: int, d_inner: int, d_state: int, dropout: float):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.rank = math.ceil(d_model / 16)
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.x_proj = nn.Linear(d_inner, self.rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.rank, d_inner)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        )
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.a_log = nn.Parameter(torch.log(a).repeat(d_inner, 1))  # S4D-real init
        self.d = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, u: Tensor, h: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """u [B, T, d_model], h [B, d_inner, d_state] -> (u + layer(u), new h)."""
        x, z = self.in_proj(self.norm(u)).split([self.d_inner, self.d_inner], dim=-1)
        x = F.silu(x)
        low, b, c = self.x_proj(x).split([self.rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(low))  # [B, T, d_inner]
        decay = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.a_log))  # [B, T, d_inner, N]
        drive = (dt * x).unsqueeze(-1) * b.unsqueeze(-2)  # [B, T, d_inner, N]
        if t == 1:
            h, y = _advance(
                h,
                decay.reshape(-1, self.d_inner, self.d_state),
                drive.reshape(-1, self.d_inner, self.d_state),
                c.reshape(-1, self.d_state),
            )
            y = y.reshape(-1, 1, self.d_inner)
        else:
            ys = []  # unbind, not decay[:, i]: the backward of each index would be T-sized
            for decay_i, drive_i, c_i in zip(
                decay.unbind(1), drive.unbind(1), c.unbind(1), strict=True
            ):
                h, y_i = _advance(h, decay_i, drive_i, c_i)
                ys.append(y_i)
            y = torch.cat(ys, dim=2).transpose(1, 2)  # [B, T, d_inner]
        y = y + self.d * x
        return u + self.drop(self.out_proj(y * F.silu(z))), h


class SSM(StreamModel):
    """Linear embedding -> selective SSM layers -> LayerNorm -> head.

    State: h [B, layers, d_inner, d_state] with d_inner = expand * d_model."""

    keys = {
        "d_model": Key(64, "int", help="model width"),
        "layers": Key(2, "int", help="SSM layers"),
        "d_state": Key(16, "int", help="state size per channel (N)"),
        "expand": Key(2, "int", help="d_inner = expand * d_model"),
    }
    width_key = "d_model"
    width_unit = "dimension"

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        return True  # each layer's LayerNorm and the one before the head

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        d_model: int = 64,
        layers: int = 2,
        d_state: int = 16,
        expand: int = 2,
        dropout: float = 0.0,
        head: str = "linear",
        heads: str = "shared",
    ):
        super().__init__()
        self.layers, self.d_inner, self.d_state = layers, expand * d_model, d_state
        self.embed = nn.Linear(n_inputs, d_model)
        self.blocks = nn.ModuleList(
            SelectiveLayer(d_model, self.d_inner, d_state, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = make_head(d_model, n_outputs, head, heads)

    def init_state(self, batch: int) -> list[Tensor]:
        return [self.zeros(batch, self.layers, self.d_inner, self.d_state)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (h,) = state
        t = steps_of(x)
        u = self.embed(x)
        new = []
        for i, block in enumerate(self.blocks):
            u, hi = block(u, h[:, i], t)
            new.append(hi)
        return self.head(self.drop(self.norm(u))), [torch.stack(new, 1)]
