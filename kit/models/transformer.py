"""A causal Transformer over a sliding window with a key/value cache as its state."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.attention import (
    alibi_bias,
    banded_attention,
    key_mask,
    merge_heads,
    next_count,
    split_heads,
    window_keys,
)
from kit.models.config import MAX_HISTORY, Key, ModelConfigError, StreamModel
from kit.models.heads import make_head

ATTENTION_KEYS = {
    "d_model": Key(64, "int", help="model width (a multiple of n_heads)"),
    "n_heads": Key(4, "int", help="attention heads"),
    "layers": Key(2, "int", help="blocks"),
    "ff": Key(4, "number", help="feed-forward width as a multiple of d_model"),
}


def check_heads(values: dict) -> None:
    if values["d_model"] % values["n_heads"]:
        raise ModelConfigError(
            f"model.d_model ({values['d_model']}) must be a multiple of "
            f"model.n_heads ({values['n_heads']})", settings=("model.d_model", "model.n_heads"))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, ff: float, dropout: float):
        inner = max(1, round(ff * width))
        super().__init__(
            nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width), nn.Dropout(dropout)
        )


class CachedBlock(nn.Module):
    """Pre-LN block: x + attn(LN x) over the window, then x + FF(LN x)."""

    def __init__(self, d_model: int, n_heads: int, ff: float, window: int, dropout: float):
        super().__init__()
        self.d_model, self.n_heads, self.window = d_model, n_heads, window
        self.scale = (d_model // n_heads) ** -0.5
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.bias = nn.Parameter(alibi_bias(n_heads, window))
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff, dropout)

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, mask: Tensor, t: int):
        d, h = self.d_model, self.n_heads
        q, k, v = self.qkv(self.norm1(x)).split([d, d, d], dim=-1)
        keys, k_cache = window_keys(k_cache, k, self.window, t)
        values, v_cache = window_keys(v_cache, v, self.window, t)
        length = self.window - 1 + t
        a = banded_attention(
            split_heads(q * self.scale, h, t, d),
            split_heads(keys, h, length, d),
            split_heads(values, h, length, d),
            mask,
            self.bias,
        )
        x = x + self.drop(self.out(merge_heads(a, t, d)))
        return x + self.ff(self.norm2(x)), k_cache, v_cache


class Transformer(StreamModel):
    """Linear embedding -> causal pre-LN blocks over a window of W steps -> LayerNorm -> head.

    State: keys and values [B, layers, W, d_model] (the last W steps of each layer, oldest
    first) and count [B, 1] (how many are real: min(steps seen, W))."""

    keys = {
        **ATTENTION_KEYS,
        "window": Key(64, "int", low=2, high=MAX_HISTORY, help="steps attended, itself included"),
    }
    width_key = "d_model"
    width_unit = "dimension"

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        return True  # the blocks' LayerNorms and the one before the head

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        d_model: int = 64,
        n_heads: int = 4,
        layers: int = 2,
        ff: float = 4.0,
        window: int = 64,
        dropout: float = 0.0,
        head: str = "linear",
        heads: str = "shared",
    ):
        super().__init__()
        self.d_model, self.layers, self.window = d_model, layers, window
        self.embed = nn.Linear(n_inputs, d_model)
        self.blocks = nn.ModuleList(
            CachedBlock(d_model, n_heads, ff, window, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = make_head(d_model, n_outputs, head, heads)
        self.register_buffer(
            "positions", torch.arange(window, dtype=torch.float32), persistent=False
        )

    @classmethod
    def width_multiple(cls, values: dict) -> int:
        return values["n_heads"]

    @classmethod
    def check(cls, values: dict) -> None:
        check_heads(values)

    def init_state(self, batch: int) -> list[Tensor]:
        cache = (batch, self.layers, self.window, self.d_model)
        return [self.zeros(*cache), self.zeros(*cache), self.zeros(batch, 1)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        k_cache, v_cache, count = state
        t = steps_of(x)
        mask = key_mask(self.positions, count, self.window, t)
        h = self.embed(x)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            h, k, v = block(h, k_cache[:, i], v_cache[:, i], mask, t)
            ks.append(k)
            vs.append(v)
        y = self.head(self.drop(self.norm(h)))
        return y, [torch.stack(ks, 1), torch.stack(vs, 1), next_count(count, self.window, t)]
