"""Fused stream faces: one kernel computes every op of one family in a dependency layer.

Every ONNX node costs about 0.4 us per step on one CPU thread, whatever its size, so the step
graph must be made of few, wide nodes. Ops therefore declare their stream face as a share of a
family kernel (ops.py: `family` and the op's parameters) and the pipeline builds one kernel per
family and layer: all lags, deltas and rolling windows read one shared history buffer, all EWMs
update as one vector with per-column alphas, and so on. A kernel's outputs are its ops' outputs,
in op order within each kind (the kernel's `names`).

Kernel contract: `init_state(batch)` (zeros = new sequence) and
`forward(w[B, T, C], count[B, 1], state) -> (y[B, T, n], new_state)`, where `count` is how many
steps of the sequence came before this chunk (one counter, kept by the pipeline).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-6  # denominators smaller than this in magnitude are replaced by +-EPS
BIG = 3e38  # stands in for +-inf in masked min/max (float32 max is 3.4e38)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with |den| < EPS replaced by EPS carrying den's sign (0 counts as +)."""
    small = torch.where(den < 0, -EPS, EPS)
    return num / torch.where(den.abs() >= EPS, den, small)


def _long(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def steps_of(x: Tensor) -> int:
    """The chunk length T of x [B, T, ...] as a literal when it is 1 (the step graph): a length
    read off the shape is traced as a dynamic value and drags Shape/Concat nodes into the graph."""
    t = x.shape[1]
    return 1 if t == 1 else int(t)


class Kernel(nn.Module):
    """Base: `names` are the outputs in the order forward() returns them."""

    names: list[str]

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = names

    def init_state(self, batch: int) -> list[Tensor]:
        return []


class GatherKernel(Kernel):
    """A stateless function of some working columns: y = fn(w[..., index])."""

    def __init__(self, names: list[str], index: list[int], fn):
        super().__init__(names)
        self.register_buffer("index", _long(index), persistent=False)
        self.fn = fn

    def forward(self, w, count, state):
        return self.fn(w.index_select(2, self.index)), state


class PairwiseKernel(Kernel):
    """fn(a, b) over paired columns (two gathers: cheaper than one gather and two slices)."""

    def __init__(self, names: list[str], a: list[int], b: list[int], fn):
        super().__init__(names)
        self.register_buffer("a", _long(a), persistent=False)
        self.register_buffer("b", _long(b), persistent=False)
        self.fn = fn

    def forward(self, w, count, state):
        return self.fn(w.index_select(2, self.a), w.index_select(2, self.b)), state


class MatrixKernel(Kernel):
    """Linear combinations of working columns (sums and means of groups): y = w[..., idx] @ M."""

    def __init__(self, names: list[str], index: list[int], matrix: Tensor):
        super().__init__(names)
        self.register_buffer("index", _long(index), persistent=False)
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, w, count, state):
        return torch.matmul(w.index_select(2, self.index), self.matrix), state


class HistoryKernel(Kernel):
    """Lags, deltas, rates of change and rolling statistics over one shared history buffer.

    The buffer keeps the last D values of every column the family reads (D = the longest lag
    or window - 1). At a sequence's first step it is filled with that step's value, so a lag
    reaching before the start reads the first value; rolling statistics mask those slots out
    and cover only the steps seen so far.
    """

    def __init__(self, names, columns: list[int], depth: int, past: dict[str, list[tuple]],
                 windows: dict[str, list[tuple]]):
        super().__init__(names)
        self.register_buffer("index", _long(columns), persistent=False)
        self.width, self.depth = len(columns), depth
        span = depth + 1  # a window holds the D past values and the current one
        # past[kind] = [(column slot, k)]: flat positions of x[t-k] and x[t] in the window
        self.past_kinds = [k for k in ("lag", "delta", "roc") if past.get(k)]
        for kind in self.past_kinds:
            slots = past[kind]
            self.register_buffer(f"{kind}_past", _long([u * span + depth - k for u, k in slots]),
                                 persistent=False)
            self.register_buffer(f"{kind}_now", _long([u * span + depth for u, _ in slots]),
                                 persistent=False)
        # windows[stat] = [(column slot, w)]: one grid of the last w_max positions for every
        # rolling output (all stats), a constant mask of which lie inside each output's window,
        # and per stat the rows it keeps; the masks and sums are then computed once
        self.stats = [s for s in ("mean", "std", "min", "max") if windows.get(s)]
        slots = [slot for stat in self.stats for slot in windows[stat]]
        self.w_max = max((w for _, w in slots), default=1)
        first = depth - (self.w_max - 1)  # window position of the oldest slot of the grid
        grid = [u * span + first + j for u, _ in slots for j in range(self.w_max)]
        back = torch.arange(self.w_max - 1, -1, -1, dtype=torch.float32)  # steps back per slot
        self.register_buffer("grid", _long(grid), persistent=False)
        self.register_buffer("back", back, persistent=False)
        self.register_buffer("inside", back.unsqueeze(0) < torch.tensor(
            [[w] for _, w in slots], dtype=torch.float32), persistent=False)
        start = 0
        for stat in self.stats:
            rows = list(range(start, start + len(windows[stat])))
            start += len(rows)
            self.register_buffer(f"{stat}_rows", _long(rows), persistent=False)

    def init_state(self, batch):
        return [torch.zeros(batch, self.depth, self.width)]

    def forward(self, w, count, state):
        x = w.index_select(2, self.index)
        (buf,) = state
        t = steps_of(x)
        fresh = (count == 0).unsqueeze(-1)  # [B, 1, 1]
        buf = torch.where(fresh, x[:, :1], buf)  # broadcasts the first row over the buffer
        full = torch.cat([buf, x], dim=1)  # [B, D + T, U]
        if t == 1:  # the step graph: the buffer is the one window (unfold does not export)
            windows = full.transpose(1, 2)
        else:
            windows = full.unfold(1, self.depth + 1, 1)  # [B, T, U, D + 1]
        # constant target shapes keep the exported graph free of Shape/Gather/Concat chains
        flat = windows.reshape(-1, t, self.width * (self.depth + 1))
        blocks = [self._past(flat, kind) for kind in self.past_kinds]
        if self.stats:
            blocks += self._window_stats(flat, count, t)
        y = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
        return y, [full[:, t:]]

    def _past(self, flat: Tensor, kind: str) -> Tensor:
        past = flat.index_select(2, getattr(self, f"{kind}_past"))
        if kind == "lag":
            return past
        change = flat.index_select(2, getattr(self, f"{kind}_now")) - past
        return change if kind == "delta" else safe_div(change, past)

    def _window_stats(self, flat: Tensor, count: Tensor, t: int) -> list[Tensor]:
        n_out = self.inside.shape[0]
        win = flat.index_select(2, self.grid).reshape(-1, t, n_out, self.w_max)
        # a slot k steps back exists once the sequence has had k earlier steps
        seen = count.view(-1, 1, 1, 1)
        if t > 1:
            seen = seen + torch.arange(t, dtype=flat.dtype).view(1, t, 1, 1)
        valid = self.inside & (self.back <= seen)  # [B, T, n, w_max]
        values = {}
        if "mean" in self.stats or "std" in self.stats:
            weight = valid.to(win.dtype)
            n = weight.sum(-1)
            mean = (win * weight).sum(-1) / n
            values["mean"] = mean
            if "std" in self.stats:
                dev = (win - mean.unsqueeze(-1)) * weight
                values["std"] = ((dev * dev).sum(-1) / n).clamp_min(0.0).sqrt()
        if "min" in self.stats:
            values["min"] = torch.where(valid, win, BIG).amin(-1)
        if "max" in self.stats:
            values["max"] = torch.where(valid, win, -BIG).amax(-1)
        if len(self.stats) == 1:
            return [values[self.stats[0]]]
        return [values[stat].index_select(2, getattr(self, f"{stat}_rows")) for stat in self.stats]


class EwmKernel(Kernel):
    """Exponentially weighted means and stds of many columns, one alpha per column."""

    def __init__(self, names, columns: list[int], alphas: list[float], is_std: list[bool]):
        super().__init__(names)
        self.register_buffer("index", _long(columns), persistent=False)
        self.register_buffer("alpha", torch.tensor(alphas, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("is_std", torch.tensor(is_std), persistent=False)
        self.any_std = any(is_std)

    def init_state(self, batch):
        return [torch.zeros(batch, 1, len(self.index)), torch.zeros(batch, 1, len(self.index))]

    def forward(self, w, count, state):
        x = w.index_select(2, self.index)
        mean, var = state  # [B, 1, n]: the step graph needs no squeeze/unsqueeze
        t = steps_of(x)
        outputs = []
        for i in range(t):  # T is 1 in the step graph; loops only in tests and parity
            fresh = (count + i == 0).unsqueeze(-1)
            xt = x if t == 1 else x[:, i:i + 1]
            mean = torch.where(fresh, xt, mean)
            delta = xt - mean
            step = self.alpha * delta
            mean = mean + step
            var = torch.where(fresh, 0.0, (1 - self.alpha) * (var + delta * step))
            y = mean
            if self.any_std:
                y = torch.where(self.is_std, var.clamp_min(0.0).sqrt(), mean)
            outputs.append(y)
        return (outputs[0] if t == 1 else torch.cat(outputs, dim=1)), [mean, var]


class CumulativeKernel(Kernel):
    """Cumulative sums, maxima and positive gains of many columns in one recurrence."""

    KINDS = ("sum", "max", "gain")

    def __init__(self, names, columns: list[int], kinds: list[str]):
        super().__init__(names)
        self.register_buffer("index", _long(columns), persistent=False)
        for kind in self.KINDS:
            self.register_buffer(f"is_{kind}", torch.tensor([k == kind for k in kinds]),
                                 persistent=False)

    def init_state(self, batch):
        return [torch.zeros(batch, 1, len(self.index)), torch.zeros(batch, 1, len(self.index))]

    def forward(self, w, count, state):
        x = w.index_select(2, self.index)
        acc, prev = state  # [B, 1, n]
        t = steps_of(x)
        outputs = []
        for i in range(t):
            fresh = (count + i == 0).unsqueeze(-1)
            xt = x if t == 1 else x[:, i:i + 1]
            grown = torch.where(self.is_sum, acc + xt, torch.where(
                self.is_max, torch.maximum(acc, xt), acc + (xt - prev).clamp_min(0.0)))
            start = torch.where(self.is_gain, 0.0, xt)
            acc = torch.where(fresh, start, grown)
            prev = xt
            outputs.append(acc)
        return (outputs[0] if t == 1 else torch.cat(outputs, dim=1)), [acc, prev]


class PositionKernel(Kernel):
    """The step's index in its sequence times a scale (one per output)."""

    def __init__(self, names, scales: list[float]):
        super().__init__(names)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32),
                             persistent=False)

    def forward(self, w, count, state):
        t = steps_of(w)
        steps = count.unsqueeze(1)
        if t > 1:
            steps = steps + torch.arange(t, dtype=w.dtype).view(1, t, 1)
        return steps * self.scale, state
