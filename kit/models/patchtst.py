"""PatchTST over a sliding window of the last L steps.

Each step sees the window of its last L input rows (itself included), zero-padded before L
steps have been seen: a new sequence starts from an all-zero window. The window is cut into
n = (L - patch_len) // stride + 1 patches aligned to its end (the last patch ends at the current
step; with (L - patch_len) % stride != 0 the oldest rows fall outside every patch). A patch
of patch_len rows x F features is embedded by one linear map (channel-mixing patches, one token
per patch), a learned embedding per patch index is added, a small Transformer encoder runs over
the n tokens, and the head reads the flattened tokens.

Step path: the window is the state; its patches are gathered with constant indices. Whole
sequences: the embedding of the patch ending at every position is one conv1d over the padded
sequence; each step's n tokens are then gathered from it (no [B, T, L, F] tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.attention import merge_heads, split_heads
from kit.models.config import MAX_HISTORY, Key, ModelConfigError, StreamModel
from kit.models.heads import make_head
from kit.models.transformer import ATTENTION_KEYS, FeedForward, check_heads


class EncoderBlock(nn.Module):
    """Pre-LN Transformer encoder block over tokens [N, n, d] (full attention, no mask)."""

    def __init__(self, d_model: int, n_heads: int, ff: float, n_tokens: int, dropout: float):
        super().__init__()
        self.n_heads, self.n_tokens, self.d_model = n_heads, n_tokens, d_model
        self.scale = (d_model // n_heads) ** -0.5
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff, dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, d = self.n_tokens, self.d_model
        q, k, v = (
            split_heads(p, self.n_heads, n, d)
            for p in self.qkv(self.norm1(x)).split([d, d, d], dim=-1)
        )
        scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
        a = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + self.drop(self.out(merge_heads(a, n, d)))
        return x + self.ff(self.norm2(x))


class PatchTST(StreamModel):
    """State: window [B, L, F], the last L input rows, oldest first (zeros before the start)."""

    keys = {
        **ATTENTION_KEYS,
        "window": Key(64, "int", low=2, high=MAX_HISTORY,
                      help="steps in the window (L), itself included"),
        "patch_len": Key(8, "int", help="rows per patch"),
        "stride": Key(8, "int", help="rows between patch starts"),
    }
    width_key = "d_model"
    width_unit = "dimension"

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        return True  # the blocks' LayerNorms and the one over each token before the head

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        d_model: int = 64,
        n_heads: int = 4,
        layers: int = 2,
        ff: float = 4.0,
        window: int = 64,
        patch_len: int = 8,
        stride: int = 8,
        dropout: float = 0.0,
        head: str = "linear",
        heads: str = "shared",
    ):
        super().__init__()
        self.n_inputs, self.d_model, self.window, self.patch_len = (
            n_inputs,
            d_model,
            window,
            patch_len,
        )
        self.n_patches = n = (window - patch_len) // stride + 1
        ends = [window - 1 - (n - 1 - i) * stride for i in range(n)]  # window positions
        rows = [e - patch_len + 1 + j for e in ends for j in range(patch_len)]
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        # offset of patch i's embedding in the whole-sequence path's unfolded embeddings
        self.register_buffer("ends", torch.tensor(ends) - (patch_len - 1), persistent=False)
        self.embed = nn.Linear(patch_len * n_inputs, d_model)  # a patch flattened row by row
        self.position = nn.Parameter(torch.randn(n, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, n_heads, ff, n, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = make_head(n * d_model, n_outputs, head, heads)

    @classmethod
    def width_multiple(cls, values: dict) -> int:
        return values["n_heads"]

    @classmethod
    def check(cls, values: dict) -> None:
        check_heads(values)
        if values["patch_len"] > values["window"]:
            raise ModelConfigError(
                f"model.patch_len ({values['patch_len']}) must be at most "
                f"model.window ({values['window']})", settings=("model.patch_len", "model.window"))

    def init_state(self, batch: int) -> list[Tensor]:
        return [self.zeros(batch, self.window, self.n_inputs)]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (window,) = state
        t = steps_of(x)
        n, d = self.n_patches, self.d_model
        full = torch.cat([window[:, 1:], x], dim=1)  # [B, L - 1 + T, F]
        if t == 1:
            patches = full.index_select(1, self.rows).reshape(-1, n, self.patch_len * self.n_inputs)
            tokens = self.embed(patches)  # [B, n, d]
            window = full
        else:
            weight = self.embed.weight.view(d, self.patch_len, self.n_inputs).transpose(1, 2)
            emb = F.conv1d(full.transpose(1, 2), weight, self.embed.bias)  # [B, d, L - P + T]
            emb = emb.unfold(2, self.window - self.patch_len + 1, 1)  # [B, d, T, L - P + 1]
            tokens = emb.index_select(3, self.ends).permute(0, 2, 3, 1)  # [B, T, n, d]
            tokens = tokens.reshape(-1, n, d)
            window = full[:, -self.window :]
        h = tokens + self.position
        for block in self.blocks:
            h = block(h)
        h = self.norm(h).reshape(-1, t, n * d)
        return self.head(self.drop(h)), [window]
