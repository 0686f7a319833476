"""Causal sliding-window attention shared by the attention GRU and the transformer.

A window of W positions: each step attends to itself and the W - 1 steps before it. The state
keeps the last W keys (and values) plus `count`, how many of them are real (min(steps, W)); a
chunk of T new steps is appended to the last W - 1 cached entries, so the keys of a chunk are
always [B, W - 1 + T, ...] and query t sits at key position W - 1 + t.

Position enters only through a learned bias per head and distance (0 = itself ... W - 1),
initialised ALiBi-style, so the step path and the whole-sequence path see the same numbers and
nothing grows with the sequence's length. The whole-sequence path computes the band in blocks
of C queries against C + W - 1 keys: memory O(T (C + W)), not O(T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_BLOCK = 16  # queries per block of the whole-sequence path (at least W)


def alibi_bias(n_heads: int, window: int) -> Tensor:
    """[n_heads, window]: -slope_h * distance, slopes 2^(-8 (h + 1) / n_heads)."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])
    return -slopes.unsqueeze(1) * torch.arange(window, dtype=torch.float32)


def window_keys(cache: Tensor, new: Tensor, window: int, t: int) -> tuple[Tensor, Tensor]:
    """(keys [B, W - 1 + t, ...], next cache [B, W, ...]) from the cache and t new entries."""
    keys = torch.cat([cache[:, 1:], new], dim=1)
    return keys, (keys if t == 1 else keys[:, -window:])


def key_mask(positions: Tensor, count: Tensor, window: int, t: int) -> Tensor:
    """[B, 1, 1, W - 1 + t]: 0 where key position p is real (p >= W - 1 - count, count [B, 1]),
    -inf where it is not; added to every layer's scores.

    positions: a float buffer arange(W), the positions of one step (the step graph reads it as a
    constant); chunks make their own. The new entries (p >= W - 1) are always real."""
    if t > 1:
        positions = torch.arange(window - 1 + t, dtype=count.dtype, device=count.device)
    real = positions >= (window - 1) - count
    return torch.where(real, 0.0, float("-inf"))[:, None, None, :]


def next_count(count: Tensor, window: int, t: int) -> Tensor:
    return (count + t).clamp(max=float(window))


def split_heads(x: Tensor, n_heads: int, length: int, width: int) -> Tensor:
    """[B, L, width] -> [B, h, L, width / h]. Sizes are Python ints, not read off x: shapes
    read off tensors become Shape/Gather chains in the step graph."""
    return x.reshape(-1, length, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x: Tensor, length: int, width: int) -> Tensor:
    """[B, h, L, e] -> [B, L, width = h * e]."""
    return x.transpose(1, 2).reshape(-1, length, width)


def banded_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor) -> Tensor:
    """Softmax attention of each query over its window.

    q [B, h, T, e] (already scaled), k and v [B, h, W - 1 + T, e], mask [B, 1, 1, W - 1 + T]
    (key_mask), bias [h, W] by distance. Returns [B, h, T, e]."""
    window = bias.shape[1]
    t = q.shape[2]
    if t == 1:  # the step graph: one query over exactly its W keys
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias.flip(-1).unsqueeze(1) + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    block = max(window, MIN_BLOCK)
    n = -(-t // block)
    pad = n * block - t
    span = block + window - 1  # keys a block of queries can see
    b, h, _, e = q.shape
    q = F.pad(q, (0, 0, 0, pad)).reshape(b, h, n, block, e)
    kb = F.pad(k, (0, 0, 0, pad)).unfold(2, span, block)  # [B, h, n, e, span]
    vb = F.pad(v, (0, 0, 0, pad)).unfold(2, span, block)
    vb = vb.transpose(-1, -2)  # [B, h, n, span, e]
    mask = F.pad(mask.flatten(1), (0, pad)).unfold(1, span, block)  # [B, n, span]
    scores = torch.matmul(q, kb) + _band(bias, block).unsqueeze(1)  # [B, h, n, block, span]
    scores = scores + mask[:, None, :, None, :]
    out = torch.matmul(torch.softmax(scores, dim=-1), vb)
    return out.reshape(b, h, n * block, e)[:, :, :t]


def _band(bias: Tensor, block: int) -> Tensor:
    """[h, block, span]: bias[distance] inside the band, -inf outside; query i of a block sits at
    key offset W - 1 + i, so the distance to key offset j is W - 1 + i - j."""
    window = bias.shape[1]
    i = torch.arange(block, device=bias.device).unsqueeze(1)
    j = torch.arange(block + window - 1, device=bias.device).unsqueeze(0)
    distance = window - 1 + i - j
    inside = (distance >= 0) & (distance < window)
    table = bias[:, distance.clamp(0, window - 1)]
    return table.masked_fill(~inside, float("-inf"))
