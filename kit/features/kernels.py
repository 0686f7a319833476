"""Fused stream faces: one kernel computes every op of one family in a dependency layer.

Every ONNX node costs about 0.45 us per step on one CPU thread, whatever its size, so the step
graph must be made of few, wide nodes. Ops therefore declare their stream face as a share of a
family kernel (ops.py: `family` and the op's parameters) and the pipeline builds one kernel per
family and layer: all lags, deltas and rolling windows read one shared history buffer, all EWMs
update as one vector with per-column alphas, and so on. A kernel's outputs are its ops' outputs,
in op order within each kind (the kernel's `names`).

Kernel contract: `init_state(batch)` (zeros = new sequence) and
`forward(w[B, T, C], count[B, 1, 1], fresh[B, 1, 1], state) -> (y, new_state)`, where
`count` is how many steps of the sequence came before this chunk (one counter, kept by the
pipeline), `fresh` is `count == 0` (computed once for all kernels), and y is one [B, T, n]
tensor or a list of them (the layer concatenates every kernel's blocks in one node). A name
None in `names` marks a spare output: computing a statistic for every row of a block and
letting the pipeline's final gather drop the unused ones costs no node, while selecting the
used rows would cost one each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-6  # denominators smaller than this in magnitude are replaced by +-EPS
# Finite inputs beyond +-LIMIT are clipped by the guard, and so are the outputs of ops that can
# grow past their inputs: squares and products of values up to 2 * LIMIT stay far inside
# float32 (3.4e38), so no op overflows to inf and no inf - inf makes a NaN downstream.
LIMIT = 1e16
# a rolling mean/std weight table per step count up to this many floats (256 KB); larger
# windows compute their weights from the count instead (see HistoryKernel)
MEAN_STD_TABLE_LIMIT = 1 << 16


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


class PairwiseKernel(Kernel):
    """fn(a, b) over paired columns (two gathers: cheaper than one gather and two slices)."""

    def __init__(self, names: list[str], a: list[int], b: list[int], fn):
        super().__init__(names)
        self.register_buffer("a", _long(a), persistent=False)
        self.register_buffer("b", _long(b), persistent=False)
        self.fn = fn

    def forward(self, w, count, fresh, state):
        return self.fn(w.index_select(2, self.a), w.index_select(2, self.b)), state


class LinearKernel(Kernel):
    """Linear combinations of the working columns (differences, sums, means): y = w @ M, one
    MatMul over all of w. Each output has few non-zero coefficients, so it is rounded as the
    plain expression is (adding exact zeros changes nothing)."""

    def __init__(self, names: list[str], matrix: Tensor):
        super().__init__(names)
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, w, count, fresh, state):
        return torch.matmul(w, self.matrix), state


def pair_sum(n: int) -> Tensor:
    """[2n, n] matrix: y[j] = v[j] + v[n + j]."""
    eye = torch.eye(n)
    return torch.cat([eye, eye])


class ImbalanceKernel(Kernel):
    """(a - b) / (|a| + |b| + EPS) for many pairs: a difference matrix for the numerators and
    one Abs of w with a pair-sum matrix for the denominators (no gathers)."""

    def __init__(self, names: list[str], diff: Tensor, abs_sum: Tensor):
        super().__init__(names)
        self.register_buffer("diff", diff, persistent=False)
        self.register_buffer("abs_sum", abs_sum, persistent=False)

    def forward(self, w, count, fresh, state):
        den = torch.matmul(w.abs(), self.abs_sum) + EPS
        return torch.matmul(w, self.diff) / den, state


class WeightedMidKernel(Kernel):
    """(bid (|ask_size| + EPS/2) + ask (|bid_size| + EPS/2)) / (|bid_size| + |ask_size| + EPS)
    per level: weights that sum to 1 (see ops.WeightedMid), as many nodes as with EPS added to
    the denominator alone.

    The sizes are read from |w| with a one-hot matrix rather than gathered and then made
    absolute: the Abs of w is the imbalance kernel's too, and ORT merges the two nodes.
    """

    def __init__(self, names: list[str], prices: list[int], sizes: list[int], width: int):
        super().__init__(names)
        self.register_buffer("prices", _long(prices), persistent=False)  # [bid..., ask...]
        select = torch.zeros(width, len(sizes))  # -> [|ask_size|..., |bid_size|...]
        select[sizes, range(len(sizes))] = 1.0
        self.register_buffer("sizes", select, persistent=False)
        self.register_buffer("pairs", pair_sum(len(names)), persistent=False)

    def forward(self, w, count, fresh, state):
        weight = torch.matmul(w.abs(), self.sizes) + EPS / 2
        num = torch.matmul(w.index_select(2, self.prices) * weight, self.pairs)
        return num / torch.matmul(weight, self.pairs), state


class HistoryKernel(Kernel):
    """Lags, deltas, rates of change and rolling statistics over one shared history buffer.

    The buffer keeps the last D values of every column the family reads (D = the longest lag
    or window - 1). At a sequence's first step it is filled with that step's value, so a lag
    reaching before the start reads the first value, and every slot of a window holds a value
    the sequence really had: min and max need no mask. Mean and std weigh the slots 1/n on
    the n = min(steps seen, w) last ones and 0 before: read from a table per step count for
    small windows, computed from the count above MEAN_STD_TABLE_LIMIT. The window is
    flattened time-major (slot = position * U + column), which is the buffer's own memory
    order at one step: no transpose in the step graph.
    """

    def __init__(self, names, columns: list[int], depth: int, past: dict[str, list[tuple]],
                 windows: dict[str, list[tuple]]):
        super().__init__([])
        self.width, self.depth = len(columns), depth
        # past[kind] = [(column slot, k)]: read x[t-k] (and x[t]) in one gather
        lags, changes = past.get("lag", []), past.get("delta", []) + past.get("roc", [])
        self.n_lag, self.n_delta = len(lags), len(past.get("delta", []))
        self.n_roc = len(changes) - self.n_delta
        reads = [self._at(u, k) for u, k in lags + changes] + [self._at(u, 0) for u, _ in changes]
        # windows[stat] = [(column slot, w)]: mean and std share rows, as do min and max; each
        # row of a pair computes both statistics, the unrequested one is a spare output
        self.ms_rows = list(dict.fromkeys(windows.get("mean", []) + windows.get("std", [])))
        self.mm_rows = list(dict.fromkeys(windows.get("min", []) + windows.get("max", [])))
        n_past = len(lags) + len(changes)
        asked, at = {}, n_past  # window outputs come in stat order, rows in op order
        for stat in ("mean", "std", "min", "max"):
            rows = windows.get(stat, [])
            asked[stat] = dict(zip(rows, names[at:at + len(rows)], strict=True))
            at += len(rows)
        self.names = names[:n_past] + [
            asked[stat].get(row) for stats, rows in ((("mean", "std"), self.ms_rows),
                                                     (("min", "max"), self.mm_rows))
            for stat in stats for row in rows]
        self.register_buffer("index", _long(columns), persistent=False)
        self.register_buffer("reads", _long(reads), persistent=False)
        self.ms_width = max((w for _, w in self.ms_rows), default=1)
        self.register_buffer("ms_grid", _long(self._mean_std_grid()), persistent=False)
        rows = len(self.ms_rows)
        # Mean and std weights: 1/n on the n = min(steps seen, w) last slots of a row. Small
        # windows read them from a table per step count (fewest nodes in the step graph); its
        # size grows as (rows * width)^2, so larger ones compute them from the count.
        self.ms_tabled = (rows * self.ms_width) ** 2 <= MEAN_STD_TABLE_LIMIT
        # The sums run over each window minus its newest slot (the current step), so a
        # constant window gives exactly its value and a std of 0, as the batch face does (a
        # float32 sum leaves an ulp there, which a ratio of a rolling std or a z-score
        # downstream turns into O(1)).
        if self.ms_tabled:
            # each row's newest slot in the gathered window
            self.register_buffer("ms_newest", _long([(r + 1) * self.ms_width - 1
                                                     for r in range(rows)]), persistent=False)
            self.register_buffer("ms_weights", self._mean_std_table(), persistent=False)
            spread = torch.eye(rows).repeat_interleave(self.ms_width, 1)  # [rows, rows * width]
            self.register_buffer("ms_spread", spread, persistent=False)
            # x minus the newest slot of its row, as one MatMul: each output has two non-zero
            # terms (x * 1 and newest * -1), so it is exactly the rounded difference
            newest = torch.zeros(rows * self.ms_width, rows)
            newest[self.ms_newest, torch.arange(rows)] = 1.0
            shift = torch.eye(rows * self.ms_width) - newest @ spread
            self.register_buffer("ms_shift", shift, persistent=False)
        else:  # slot j of a row is inside at count c when j + min(c + 1, w) >= ms_width
            self.register_buffer("ms_windows", torch.tensor([[float(w)] for _, w in
                                                             self.ms_rows]), persistent=False)
            self.register_buffer("ms_slot", torch.arange(self.ms_width, dtype=torch.float32)
                                 - (self.ms_width - 1), persistent=False)
        self.mm_width = max((w for _, w in self.mm_rows), default=1)
        self.register_buffer("mm_grid", _long(self._min_max_grid()), persistent=False)

    def _at(self, u: int, back: int) -> int:
        """Flat window slot of column u, `back` steps before the current one."""
        return (self.depth - back) * self.width + u

    def _mean_std_grid(self) -> list[int]:
        """Slots of the last ms_width steps per row, row-major: [rows, ms_width]."""
        width = self.ms_width
        return [self._at(u, width - 1 - j) for u, _ in self.ms_rows for j in range(width)]

    def _mean_std_table(self) -> Tensor:
        """weights[c, slot, row] = 1/n on the slots inside the row's window seen by step count
        c (n of them), 0 elsewhere: one [slots, rows] matrix per count (counts >= width - 1
        all read the last), so a mean is one MatMul."""
        width, rows = self.ms_width, len(self.ms_rows)
        n = torch.minimum(torch.arange(1, width + 1).reshape(-1, 1),
                          torch.tensor([w for _, w in self.ms_rows]))  # [count, row]
        inside = torch.arange(width).reshape(1, 1, -1) >= (width - n).unsqueeze(-1)
        per_row = inside / n.unsqueeze(-1)  # [count, row, slot]
        return torch.einsum("crj,rs->crjs", per_row, torch.eye(rows)).reshape(
            width, rows * width, rows).float()

    def _min_max_grid(self) -> list[int]:
        """Slots of each row's window, padded to mm_width with the current step (a repeat
        changes neither min nor max)."""
        width = self.mm_width
        return [self._at(u, back if back < w else 0) for u, w in self.mm_rows
                for back in range(width - 1, -1, -1)]

    def init_state(self, batch):
        return [torch.zeros(batch, self.depth, self.width)]

    def forward(self, w, count, fresh, state):
        x = w.index_select(2, self.index)
        (buf,) = state
        t = steps_of(x)
        buf = torch.where(fresh, x if t == 1 else x[:, :1], buf)  # fills the buffer at step 0
        full = torch.cat([buf, x], dim=1)  # [B, D + T, U]
        span = (self.depth + 1) * self.width
        if t == 1:  # the step graph: the buffer is the one window, already time-major
            flat = full.reshape(-1, 1, span)
        else:
            flat = full.unfold(1, self.depth + 1, 1).transpose(2, 3).reshape(-1, t, span)
        blocks = self._past(flat) if len(self.reads) else []
        if self.ms_rows:
            blocks += self._mean_std(flat, count, t)
        if self.mm_rows:
            win = flat.index_select(2, self.mm_grid).reshape(-1, t, len(self.mm_rows),
                                                              self.mm_width)
            blocks += [win.amin(-1), win.amax(-1)]
        return blocks, [full[:, t:]]

    def _past(self, flat: Tensor) -> list[Tensor]:
        read = flat.index_select(2, self.reads)
        n_changes = self.n_delta + self.n_roc
        if not n_changes:
            return [read]
        sizes = [self.n_lag] * bool(self.n_lag) + [n_changes, n_changes]  # no empty parts
        *lag, past, now = read.split(sizes, dim=2)
        change = now - past
        if not self.n_roc:
            return [*lag, change]
        if not self.n_delta:
            return [*lag, safe_div(change, past)]
        delta, roc_change = change.split([self.n_delta, self.n_roc], dim=2)
        return [*lag, delta, safe_div(roc_change, past[..., self.n_delta:])]

    def _mean_std(self, flat: Tensor, count: Tensor, t: int) -> list[Tensor]:
        """Each row's mean and population std over its min(steps seen, w) last slots."""
        win = flat.index_select(2, self.ms_grid)  # [B, T, rows * width]
        if self.ms_tabled:
            return self._mean_std_tabled(win, count, t)
        rows, width = len(self.ms_rows), self.ms_width
        win = win.reshape(-1, t, rows, width)
        seen = count.unsqueeze(-1) + 1.0  # [B, 1, 1, 1]: steps seen, this one included
        if t > 1:  # in chunks, every step its own count
            seen = seen + torch.arange(t, dtype=count.dtype).reshape(1, t, 1, 1)
        n = torch.minimum(seen, self.ms_windows)  # [B, T, rows, 1]
        weights = torch.clamp(n + self.ms_slot, 0.0, 1.0) / n  # 1/n inside, 0 outside
        newest = win[..., -1:]  # [B, T, rows, 1]: the sums run over the window minus it
        win = win - newest
        shifted_mean = (win * weights).sum(-1, keepdim=True)
        dev = win - shifted_mean
        std = (dev * dev * weights).sum(-1).sqrt()  # a sum of squares: never negative
        return [(shifted_mean + newest).squeeze(-1), std]

    def _mean_std_tabled(self, win: Tensor, count: Tensor, t: int) -> list[Tensor]:
        rows, width = len(self.ms_rows), self.ms_width
        seen = count.reshape(-1)  # [B]; in chunks, every step its own count: [B * T]
        if t > 1:
            seen = (count.reshape(-1, 1) + torch.arange(t, dtype=count.dtype)).reshape(-1)
            win = win.reshape(-1, 1, rows * width)
        weights = self.ms_weights[seen.clamp(max=width - 1).long()]  # [B(*T), slots, rows]
        newest = win.index_select(-1, self.ms_newest)  # [B(*T), 1, rows]
        win = torch.matmul(win, self.ms_shift)  # each slot minus its row's newest
        shifted_mean = torch.matmul(win, weights)  # [B(*T), 1, rows]
        dev = win - torch.matmul(shifted_mean, self.ms_spread)  # the mean under its row's slots
        std = torch.matmul(dev * dev, weights).sqrt()  # a sum of squares: never negative
        mean = shifted_mean + newest
        if t > 1:
            mean, std = mean.reshape(-1, t, rows), std.reshape(-1, t, rows)
        return [mean, std]


class EwmKernel(Kernel):
    """Exponentially weighted means and stds of many columns, one alpha per column.

    Outputs: the means of every column, then (if any std is asked) the stds of every column;
    the unrequested ones are spares.

    The state holds the mean as its offset from the last value (o = m - x_prev), not the mean
    itself: a float32 mean of a price of 912.84 is off by up to 3e-5, as much as the std of a
    quiet stretch of quotes, so x - m (and with it the variance) was noise there, differently
    in each face. x - x_prev is exact for nearby values, so the deviation
    d = (x - x_prev) - o keeps its digits, and the recursion m' = m + a d becomes
    o' = -(1 - a) d. At a sequence's first step x_prev is the value itself and the zero state
    makes d, o and the variance 0: the only branch is x_prev's.
    """

    def __init__(self, names, columns: list[int], alphas: list[float], is_std: list[bool]):
        self.any_std = any(is_std)
        means = [None if std else n for n, std in zip(names, is_std, strict=True)]
        stds = [n if std else None for n, std in zip(names, is_std, strict=True)]
        super().__init__(means + (stds if self.any_std else []))
        self.register_buffer("index", _long(columns), persistent=False)
        self.register_buffer("alpha", torch.tensor(alphas, dtype=torch.float32),
                             persistent=False)
        # 1 - alpha from the float64 alpha, then rounded: from float32's alpha, 0.999 kept
        # 1 - 0.99900001 (1.3e-5 off), about 100 ulps of a mean
        keep = torch.tensor([1.0 - a for a in alphas], dtype=torch.float64)
        self.register_buffer("keep", keep.float(), persistent=False)
        self.register_buffer("drop", (-keep).float(), persistent=False)  # o' = drop * d

    def init_state(self, batch):
        return [torch.zeros(batch, 1, len(self.index)) for _ in range(3)]

    def forward(self, w, count, fresh, state):
        x = w.index_select(2, self.index)
        offset, var, last = state  # [B, 1, n]: the step graph needs no squeeze/unsqueeze
        t = steps_of(x)
        means, stds = [], []
        for i in range(t):  # T is 1 in the step graph; loops only in tests and parity
            xt = x if t == 1 else x[:, i:i + 1]
            if i == 0:
                last = torch.where(fresh, xt, last)
            delta = (xt - last) - offset  # x - m, from exact differences
            var = self.keep * (var + delta * (self.alpha * delta))  # >= 0
            offset = self.drop * delta
            last = xt
            means.append(xt + offset)
            if self.any_std:
                stds.append(var.sqrt())
        blocks = [means[0] if t == 1 else torch.cat(means, dim=1)]
        if self.any_std:
            blocks.append(stds[0] if t == 1 else torch.cat(stds, dim=1))
        return blocks, [offset, var, last]


class CumulativeKernel(Kernel):
    """Cumulative sums, maxima and positive gains of many columns in one recurrence.

    Sums and gains are compensated (Neumaier): `lost` accumulates the exact rounding error of
    every addition to the running total (Knuth's TwoSum, branch-free), and the output is
    total + lost, one rounding of the exact sum. A plain float32 running sum drifts from the
    batch face's (exactly rounded) cum_sum by ~1e-5 relative within a few thousand steps (a
    sum of 0.1s was 500.02 at step 5,000). Kahan's form, which folds the error into the next
    term, drops it whenever a term outweighs the total: 1e8, 1, 3, -1e8 summed to 0, not 4,
    and repeated 300 times to 0 against 1,200. Every term is finite (the guard bounds inputs to
    +-LIMIT), so the compensation never makes a NaN.
    """

    KINDS = ("sum", "max", "gain")

    def __init__(self, names, columns: list[int], kinds: list[str]):
        super().__init__(names)
        self.register_buffer("index", _long(columns), persistent=False)
        for kind in self.KINDS:
            self.register_buffer(f"is_{kind}", torch.tensor([k == kind for k in kinds]),
                                 persistent=False)
        # 1 for the rows that add up (a max row's rounding "error" is meaningless: dropped)
        self.register_buffer("adds", (~self.is_max).float(), persistent=False)

    def init_state(self, batch):
        return [torch.zeros(batch, 1, len(self.index)) for _ in range(3)]  # acc, prev, lost

    def forward(self, w, count, fresh, state):
        x = w.index_select(2, self.index)
        acc, prev, lost = state  # [B, 1, n]
        t = steps_of(x)
        outputs = []
        for i in range(t):
            xt = x if t == 1 else x[:, i:i + 1]
            term = torch.where(self.is_gain, (xt - prev).clamp_min(0.0), xt)
            total = acc + term
            part = total - acc  # TwoSum: what of `term` the total took
            error = (acc - (total - part)) + (term - part)  # exactly acc + term - total
            lost = (lost + error) * self.adds
            grown = torch.where(self.is_max, torch.maximum(acc, xt), total)
            if i == 0:  # only a chunk's first step can start a sequence
                grown = torch.where(fresh, torch.where(self.is_gain, 0.0, xt), grown)
                lost = torch.where(fresh, 0.0, lost)
            acc = grown
            prev = xt
            outputs.append(acc + lost)
        return (outputs[0] if t == 1 else torch.cat(outputs, dim=1)), [acc, prev, lost]


class PositionKernel(Kernel):
    """The step's index in its sequence times a scale (one per output)."""

    def __init__(self, names, scales: list[float]):
        super().__init__(names)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32),
                             persistent=False)

    def forward(self, w, count, fresh, state):
        t = steps_of(w)
        steps = count  # [B, 1, 1]
        if t > 1:
            steps = steps + torch.arange(t, dtype=w.dtype).view(1, t, 1)
        return steps * self.scale, state
