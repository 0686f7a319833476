"""Recurrent models: GRU, LSTM (cuDNN over whole sequences) and a GRU with windowed attention.

The recurrent state is kept batch first ([B, layers, H]) so a runtime keeps one row per
sequence id; nn.GRU/nn.LSTM want [layers, B, H], hence the transposes at the boundary. The step
graph freezes `LayerwiseRecurrent` instead (`step_form`): the same weights with one state tensor
per layer in the ONNX op's own layout, so no transposes run on every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.attention import alibi_bias, banded_attention, key_mask, next_count, window_keys
from kit.models.config import MAX_HISTORY, Key, StreamModel
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

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        return values["layer_norm"]  # the optional LayerNorm on the recurrent output

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
        return [self.zeros(batch, self.layers, self.hidden) for _ in range(self.n_states)
                ] + self.top_state(batch)

    def top_state(self, batch: int) -> list[Tensor]:
        """The state of what runs after the recurrent layers (none for the plain models)."""
        return []

    def recur(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The recurrent output [B, T, H] (after the optional LayerNorm) and the new state."""
        inner = [s.transpose(0, 1).contiguous() for s in state]  # cuDNN wants contiguous
        out, new = self.rnn(x, inner[0] if self.n_states == 1 else tuple(inner))
        new = [new] if self.n_states == 1 else list(new)
        return self.norm(out), [s.transpose(0, 1) for s in new]

    def top(self, out: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """From the recurrent output [B, T, H] to the predictions, with its own state."""
        return self.head(self.drop(out)), state

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        out, rnn_state = self.recur(x, state[:self.n_states])
        y, top_state = self.top(out, state[self.n_states:])
        return y, rnn_state + top_state

    def step_form(self) -> LayerwiseRecurrent:
        return LayerwiseRecurrent(self)


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

    keys = {**RNN_KEYS, "window": Key(32, "int", low=2, high=MAX_HISTORY,
                                      help="outputs attended, itself included")}

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

    def top_state(self, batch: int) -> list[Tensor]:
        return [self.zeros(batch, self.window, self.hidden), self.zeros(batch, 1)]

    def top(self, out: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        cache, count = state
        t = steps_of(out)
        keys, cache = window_keys(cache, out, self.window, t)
        mask = key_mask(self.positions, count, self.window, t)
        q = (self.query(out) * self.scale).unsqueeze(1)  # one head: [B, 1, T, H]
        context = banded_attention(q, keys.unsqueeze(1), keys.unsqueeze(1), mask, self.bias)
        z = out + self.mix(context.squeeze(1))
        return self.head(self.drop(z)), [cache, next_count(count, self.window, t)]


class LayerwiseRecurrent(nn.Module):
    """A recurrent model as the step graph freezes it (`RecurrentModel.step_form`): the same
    weights, the recurrent state one tensor per layer in the ONNX GRU/LSTM op's own layout
    [1, B, H] (h of every layer, then c of every layer for an LSTM), then the model's own top
    state. With the model's batch-first [B, layers, H] state every step pays a Split, a Transpose
    per layer, a Concat and a Transpose; here each layer's state goes straight into its op
    (a GRU 2x128 graph: 81 -> 69 us per call, docs/bench.md). For inference only: dropout
    between layers is off."""

    def __init__(self, model: RecurrentModel):
        super().__init__()
        self.model = model
        rnn = model.rnn
        self.n_rnn = model.layers * model.n_states
        self.cells = nn.ModuleList()
        # one single-layer op per layer on the trained weights; drawing the new cells' throwaway
        # initial weights must not move the caller's random stream
        with torch.random.fork_rng(devices=[]):
            for layer in range(model.layers):
                size = rnn.input_size if layer == 0 else rnn.hidden_size
                cell = type(rnn)(size, rnn.hidden_size)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    setattr(cell, f"{name}_l0", getattr(rnn, f"{name}_l{layer}"))
                self.cells.append(cell)

    def init_state(self, batch: int) -> list[Tensor]:
        rnn = [self.model.zeros(1, batch, self.model.hidden) for _ in range(self.n_rnn)]
        return rnn + self.model.top_state(batch)

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        t, layers = steps_of(x), self.model.layers
        # [B, T, F] -> the op's [T, B, F]; at T = 1 a Reshape, which copies nothing
        inp = x.reshape(1, -1, self.cells[0].input_size) if t == 1 else x.transpose(0, 1)
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            if self.model.n_states == 1:
                seq, h = cell(inp, state[layer])
            else:
                seq, (h, c) = cell(inp, (state[layer], state[layers + layer]))
                cs.append(c)
            hs.append(h)
            # one step: the output is the new h, already [1, B, H] (the op's output sequence
            # would need a Squeeze node per layer)
            inp = h if t == 1 else seq
        out = inp.reshape(-1, 1, self.model.hidden) if t == 1 else inp.transpose(0, 1)
        y, top_state = self.model.top(self.model.norm(out), state[self.n_rnn:])
        return y, hs + cs + top_state
