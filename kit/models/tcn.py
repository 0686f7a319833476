"""A dilated causal TCN: residual blocks of one dilated causal convolution each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kit.features.kernels import steps_of
from kit.models.config import MAX_HISTORY, Key, ModelConfigError, StreamModel
from kit.models.heads import make_head


class CausalBlock(nn.Module):
    """x + Linear(dropout(gelu(dilated causal conv(x)))).

    The state is the block's last (kernel - 1) * dilation inputs, oldest first (zeros before
    the sequence, as conv1d's left zero padding). Whole sequences: conv1d over the history
    followed by the chunk; one step: the kernel's taps are every dilation-th entry of the
    history plus the new input, one matmul."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.history, self.dilation = (kernel - 1) * dilation, dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.mix = nn.Linear(channels, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, history: Tensor, t: int) -> tuple[Tensor, Tensor]:
        full = torch.cat([history, x], dim=1)  # [B, history + T, C]
        if t == 1:
            taps = full[:, :: self.dilation]  # [B, kernel, C], oldest first
            out_c, in_c, kernel = self.conv.weight.shape
            weight = self.conv.weight.permute(2, 1, 0).reshape(kernel * in_c, out_c)
            y = torch.matmul(taps.reshape(-1, 1, kernel * in_c), weight) + self.conv.bias
            history = full[:, 1:]
        else:
            y = self.conv(full.transpose(1, 2)).transpose(1, 2)
            history = full[:, -self.history :]
        return x + self.mix(self.drop(F.gelu(y))), history


class TCN(StreamModel):
    """Linear embedding -> causal blocks (one per dilation) -> LayerNorm -> head.

    State: one history per block, [B, (kernel - 1) * dilation, channels]. Receptive field:
    1 + (kernel - 1) * sum(dilations) steps."""

    keys = {
        "channels": Key(64, "int", help="channels of every block"),
        "kernel": Key(3, "int", low=2, help="convolution kernel size"),
        "dilations": Key([1, 2, 4, 8, 16], "ints", help="one block per dilation"),
    }
    width_key = "channels"
    width_unit = "channel"

    @classmethod
    def normed_width(cls, values: dict) -> bool:
        return True  # the LayerNorm before the head

    @classmethod
    def check(cls, values: dict) -> None:
        # each block keeps its (kernel - 1) * dilation last inputs as state: sized by nothing
        # else, a typo would pass the build and fail at the first state as a torch error
        longest = (values["kernel"] - 1) * max(values["dilations"])
        if longest > MAX_HISTORY:
            raise ModelConfigError(
                f"model.kernel ({values['kernel']}) and model.dilations (up to "
                f"{max(values['dilations']):,}) make a block look {longest:,} steps back; kit "
                f"allows at most {MAX_HISTORY:,}",
                settings=("model.kernel", "model.dilations"))

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        channels: int = 64,
        kernel: int = 3,
        dilations: list[int] | None = None,
        dropout: float = 0.0,
        head: str = "linear",
        heads: str = "shared",
    ):
        super().__init__()
        dilations = dilations or [1, 2, 4, 8, 16]
        self.channels = channels
        self.embed = nn.Linear(n_inputs, channels)
        self.blocks = nn.ModuleList(CausalBlock(channels, kernel, d, dropout) for d in dilations)
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)
        self.head = make_head(channels, n_outputs, head, heads)

    def init_state(self, batch: int) -> list[Tensor]:
        return [self.zeros(batch, b.history, self.channels) for b in self.blocks]

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        t = steps_of(x)
        h = self.embed(x)
        new = []
        for block, history in zip(self.blocks, state, strict=True):
            h, history = block(h, history, t)
            new.append(history)
        return self.head(self.drop(self.norm(h))), new
