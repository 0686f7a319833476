"""Recurrent models: GRU, LSTM (cuDNN over whole sequences) and a GRU with windowed attention.

The recurrent state is kept batch first ([B, layers, H]) so a runtime keeps one row per
sequence id; nn.GRU/nn.LSTM want [layers, B, H], hence the transposes at the boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.attention import alibi_bias, banded_attention, key_mask, next_count, window_keys
from kit.models.config import Key, StreamModel
from kit.models.heads import make_head

RNN_KEYS = {
    "hidden": Key(128, "int", help="hidden units per layer"),
    "layers": Key(2, "int", help="stacked recurrent layers"),
    "layer_norm": Key(False, "bool", help="LayerNorm on the recurrent output"),
}


class RecurrentModel(StreamModel):
    """nn.GRU/nn.LSTM -> (LayerNorm) -> dropout -> head. Dropout also acts between layers."""

    rnn_class: type[nn.RNNBase] = nn.GRU
    n_states = 1  # GRU: h; LSTM: h and c
    keys = RNN_KEYS
    width_key = "hidden"

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        layer_norm: bool = False,
        head: str = "linear",
        heads: str = "shared",
    ):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.rnn = self.rnn_class(
            n_inputs, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.norm = nn.LayerNorm(hidden) if layer_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = make_head(hidden, n_outputs, head, heads)

    def init_state(self, batch: int) -> list[Tensor]:
        return [self.zeros(batch, self.layers, self.hidden) for _ in range(self.n_states)]

    def recur(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The recurrent output [B, T, H] (after the optional LayerNorm) and the new state."""
        inner = [s.transpose(0, 1).contiguous() for s in state]  # cuDNN wants contiguous
        out, new = self.rnn(x, inner[0] if self.n_states == 1 else tuple(inner))
        new = [new] if self.n_states == 1 else list(new)
        return self.norm(out), [s.transpose(0, 1) for s in new]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        out, new_state = self.recur(x, state)
        return self.head(self.drop(out)), new_state


class GRUModel(RecurrentModel):
    """Stacked GRU. State: h [B, layers, hidden]."""


class LSTMModel(RecurrentModel):
    """Stacked LSTM. State: h and c, each [B, layers, hidden]."""

    rnn_class = nn.LSTM
    n_states = 2


class AttentionGRU(RecurrentModel):
    """A GRU whose output o_t attends over its last W outputs (itself included), then the head.

    score(t, j) = (Wq o_t) . o_j / sqrt(H) + bias[t - j]; z_t = o_t + Wo sum_j a_tj o_j.
    Keys and values are the GRU outputs themselves (bilinear attention), so the window state
    is one [B, W, H] tensor. State: h [B, layers, H], window [B, W, H], count [B, 1] (how many
    window entries are real: min(steps seen, W))."""

    keys = {**RNN_KEYS, "window": Key(32, "int", low=2, help="outputs attended, itself included")}

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        layer_norm: bool = False,
        head: str = "linear",
        heads: str = "shared",
        window: int = 32,
    ):
        super().__init__(n_inputs, n_outputs, hidden, layers, dropout, layer_norm, head, heads)
        self.window = window
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.mix = nn.Linear(hidden, hidden)
        self.bias = nn.Parameter(alibi_bias(1, window))
        self.scale = hidden**-0.5
        self.register_buffer(
            "positions", torch.arange(window, dtype=torch.float32), persistent=False
        )

    def init_state(self, batch: int) -> list[Tensor]:
        return [
            self.zeros(batch, self.layers, self.hidden),
            self.zeros(batch, self.window, self.hidden),
            self.zeros(batch, 1),
        ]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, cache, count = state
        t = steps_of(x)
        out, (h,) = self.recur(x, [h])
        keys, cache = window_keys(cache, out, self.window, t)
        mask = key_mask(self.positions, count, self.window, t)
        q = (self.query(out) * self.scale).unsqueeze(1)  # one head: [B, 1, T, H]
        context = banded_attention(q, keys.unsqueeze(1), keys.unsqueeze(1), mask, self.bias)
        z = out + self.mix(context.squeeze(1))
        return self.head(self.drop(z)), [h, cache, next_count(count, self.window, t)]
