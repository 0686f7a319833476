"""Feature ops, each written once with its two faces side by side.

- batch face: Polars expressions over whole sequences (`.over(id)`), used to build training arrays;
- stream face: the op's share of a fused family kernel (kernels.py) with the stream contract,
  run inside the ONNX step graph. An op names its `family`; `fuse(ops, columns)` on the class
  that owns the family builds one kernel for all ops of that family in a dependency layer.

Both faces read the *guarded* working columns (see guard.py: no NaN/inf ever reaches an op) and
obey the same start-of-sequence semantics, stated in each op's docstring. In short: before a
window or lag is full, the sequence's first value stands in for the missing past, so a lag at
step 0 equals the current value, a difference is 0 and a rolling statistic covers the steps seen
so far. An all-zero state means "new sequence".

Fusing keeps the step graph small: every ONNX node costs about 0.4 us per step whatever its
width, so fifty EWMs must be one recurrence, not fifty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import polars as pl
import torch

from kit.competition import POS_COLUMN, START_COLUMN, expand_columns
from kit.config import finite
from kit.errors import SpecError
from kit.features import kernels
from kit.features.kernels import EPS, safe_div

# Helper columns the batch face adds once per frame (see FeatureSet.batch_frame): the step's
# index within its sequence and whether it starts one. They let lags run as global shifts
# instead of per-sequence window functions (~10x faster on sorted data).
POS, START = POS_COLUMN, START_COLUMN


class FeatureSpecError(ValueError):
    """Raised by op constructors; sets.py turns it into a KitError naming the entry."""


# ----------------------------------------------------------------------------- shared pieces


def first_value(c: pl.Expr) -> pl.Expr:
    """The first value of the row's sequence (global forward fill from the start rows)."""
    return pl.when(pl.col(START)).then(c).otherwise(None).forward_fill()


def past_value(c: pl.Expr, k: int) -> pl.Expr:
    """x[t - k] within the sequence, the first value standing in before step k."""
    return pl.when(pl.col(POS) >= k).then(c.shift(k)).otherwise(first_value(c))


def safe_div_expr(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, with |den| < EPS replaced by EPS carrying den's sign (0 counts as +)."""
    guarded = pl.when(den.abs() >= EPS).then(den).otherwise(
        pl.when(den < 0).then(-EPS).otherwise(EPS))
    return num / guarded


# ----------------------------------------------------------------------------- the ops


@dataclass
class FeatureOp:
    """One entry of a feature set. Subclasses define both faces and their output names."""

    op: ClassVar[str]
    summary: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # the parameters it reads besides op and inputs
    column_keys: ClassVar[tuple[str, ...]] = ()  # keys that list columns (instead of inputs)
    inputs: list[str]
    params: dict = field(default_factory=dict)

    def __post_init__(self):  # subclasses validate and derive their inputs here
        pass

    def input_columns(self) -> list[str]:
        return self.inputs

    def outputs(self) -> list[str]:
        raise NotImplementedError

    def batch(self, id_col: str) -> list[pl.Expr]:
        raise NotImplementedError

    family: ClassVar[str | None] = None  # ops of one family share one fused stream kernel
    # True when the output never leaves the range of the inputs (+-LIMIT, kernels.py): a lag,
    # a mean, a min. The others (products, sums, ratios, cumulative sums, ...) are clipped.
    bounded: ClassVar[bool] = False

    def output_bound(self, inputs: float, rows: int) -> float:
        """A bound on |output| given a bound on |inputs| and the frame's row count (the
        longest a sequence can be): the batch face skips a clip that cannot change anything.
        Unbounded ops without a formula are always clipped."""
        return inputs if self.bounded else math.inf

    @classmethod
    def fuse(cls, ops: list[FeatureOp], columns: list[str]) -> kernels.Kernel:
        """The stream face of all `ops` (one family, one layer) over the working columns."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"op": self.op, "inputs": list(self.inputs), **self.params}

    def recipe(self) -> dict:
        """What the op computes apart from the columns its output names spell out: two ops with
        the same recipe give the same values under a shared output name."""
        return self.to_dict()

    def recipe_of(self, output: str) -> dict:
        """What makes one output: two ops giving an output of one name the same recipe_of it
        compute the same values there."""
        return self.recipe()


def _is_number(value) -> bool:
    """An int or float from TOML; a bool is an int to Python but never a parameter value."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(ops: list[FeatureOp]) -> list[str]:
    return [n for op in ops for n in op.outputs()]


def _slots(columns: list[str], names: list[str]) -> list[int]:
    return [columns.index(c) for c in names]


class Raw(FeatureOp):
    """The guarded column itself."""

    op, summary = "raw", "the column as is (after the NaN/inf guard)"
    bounded = True

    def outputs(self):
        return list(self.inputs)

    def recipe(self):
        return {"op": self.op}

    def batch(self, id_col):
        return []  # the guarded frame already holds the column; no stream kernel either


class Pairwise(FeatureOp):
    """An elementwise function of paired columns a[i], b[i] (lists of equal length)."""

    symbol: ClassVar[str]
    keys = column_keys = ("a", "b")

    def __post_init__(self):
        self.a, self.b = list(self.params.get("a", [])), list(self.params.get("b", []))
        if not self.a or len(self.a) != len(self.b):
            raise FeatureSpecError(f"{self.op} needs lists 'a' and 'b' of equal, non-zero "
                                   f"length (got {len(self.a)} and {len(self.b)})")
        self.inputs = self.a + self.b

    def to_dict(self):
        return {"op": self.op, "a": self.a, "b": self.b}

    def recipe(self):
        return {"op": self.op}

    def recipe_of(self, output):
        # the name does not show the grouping: (p6-p0)-p1 and p6-(p0-p1) are both p6-p0-p1
        a, b = dict(zip(self.outputs(), zip(self.a, self.b, strict=True), strict=True))[output]
        return {"op": self.op, "a": a, "b": b}

    def outputs(self):
        return [f"{a}{self.symbol}{b}" for a, b in zip(self.a, self.b, strict=True)]

    def batch(self, id_col):
        return [self.expr(pl.col(a), pl.col(b)).alias(n)
                for a, b, n in zip(self.a, self.b, self.outputs(), strict=True)]

    @property
    def family(self):
        return self.op  # every diff in a layer in one kernel, every ratio in another, ...

    @classmethod
    def fuse(cls, ops, columns):
        a = _slots(columns, [c for op in ops for c in op.a])
        b = _slots(columns, [c for op in ops for c in op.b])
        return kernels.PairwiseKernel(_names(ops), a, b, cls.fn)


class Difference(Pairwise):
    """a - b (e.g. ask minus bid: the spread)."""

    op, summary, symbol = "diff", "a - b, pairwise (spreads)", "-"

    def output_bound(self, inputs, rows):
        return 2 * inputs
    expr = staticmethod(lambda a, b: a - b)
    family = "linear"  # one MatMul with the sums and means of the layer

    def linear_rows(self) -> list[Row]:
        return [[(a, 1.0), (b, -1.0)] for a, b in zip(self.a, self.b, strict=True)]

    @classmethod
    def fuse(cls, ops, columns):
        return _fuse_linear(ops, columns)


class Ratio(Pairwise):
    """a / b with the safe denominator."""

    op, summary, symbol = "ratio", "a / b, pairwise (|b| < 1e-6 -> +-1e-6)", "/"

    def output_bound(self, inputs, rows):
        return inputs / EPS  # |denominator| >= EPS
    expr = staticmethod(safe_div_expr)
    fn = staticmethod(safe_div)


class Product(Pairwise):
    op, summary, symbol = "product", "a * b, pairwise (interactions)", "*"

    def output_bound(self, inputs, rows):
        return inputs * inputs
    expr = staticmethod(lambda a, b: a * b)
    fn = staticmethod(lambda a, b: a * b)


Row = list[tuple[str, float]]  # one output of a linear map: (column, coefficient) terms


def _matrix(rows: list[Row], columns: list[str]) -> torch.Tensor:
    """[columns, outputs] matrix of linear rows; a column named twice adds up."""
    matrix = torch.zeros(len(columns), len(rows))
    for j, row in enumerate(rows):
        for name, coefficient in row:
            matrix[columns.index(name), j] += coefficient
    return matrix


def _fuse_linear(ops: list[FeatureOp], columns: list[str]) -> kernels.LinearKernel:
    """Every linear op of a layer (differences, sums, means) as one [columns, outputs] matrix."""
    rows = [row for op in ops for row in op.linear_rows()]
    return kernels.LinearKernel(_names(ops), _matrix(rows, columns))


class Imbalance(Pairwise):
    """(a - b) / (|a| + |b| + eps): for volumes (a, b >= 0) the usual (a - b) / (a + b + eps);
    the absolute values keep it in [-1, 1] and well conditioned for signed inputs such as
    quantile-normalised volumes, where a + b crosses 0 and the plain formula explodes."""

    op, summary, symbol = "imbalance", "(a - b) / (|a| + |b| + 1e-6), pairwise", "~"
    bounded = True  # never past 1 (the stream face needs no clip)

    def output_bound(self, inputs, rows):
        return 1.0  # |a - b| <= |a| + |b|, whatever the inputs' size (1e-6 inputs give 0.67)
    expr = staticmethod(lambda a, b: (a - b) / (a.abs() + b.abs() + EPS))

    @classmethod
    def fuse(cls, ops, columns):
        pairs = [(a, b) for op in ops for a, b in zip(op.a, op.b, strict=True)]
        return kernels.ImbalanceKernel(
            _names(ops), _matrix([[(a, 1.0), (b, -1.0)] for a, b in pairs], columns),
            _matrix([[(a, 1.0), (b, 1.0)] for a, b in pairs], columns))  # applied to |w|


def default_reduce_name(op: str, inputs: list[str]) -> str:
    """sum(v0..v5) where the inputs are that range, else every input: sum(v0,v1,v5) was named
    sum(v0..v5) and read as the whole range by a later op."""
    ranged = f"{inputs[0]}..{inputs[-1]}"
    try:
        whole = len(inputs) > 1 and expand_columns([ranged]) == list(inputs)
    except SpecError:
        whole = False
    return f"{op}({ranged if whole or len(inputs) == 1 else ','.join(inputs)})"


class Reduce(FeatureOp):
    """Sum or mean over a column group: one output."""

    op, summary = "sum", "sum over the input columns (one output)"
    keys = ("name",)

    def output_bound(self, inputs, rows):
        return inputs if self.mean else len(self.inputs) * inputs
    mean: ClassVar[bool] = False

    def __post_init__(self):
        if not self.inputs:
            raise FeatureSpecError("no input columns given")
        twice = sorted({c for c in self.inputs if self.inputs.count(c) > 1})
        if twice:  # a silent double weight: mean(p0, p0, p1) = (2 p0 + p1) / 3
            raise FeatureSpecError(f"{self.op}: input(s) {twice} listed more than once")

    def outputs(self):
        return [self.params.get("name") or default_reduce_name(self.op, self.inputs)]

    def to_dict(self):  # the name pinned: a stored set rebuilds under the names it trained with
        return {"op": self.op, "inputs": list(self.inputs), "name": self.outputs()[0]}

    def recipe(self):  # the name is the output's: asked for again with it written out, shared
        return {"op": self.op, "inputs": list(self.inputs)}

    def batch(self, id_col):
        total = pl.sum_horizontal(*[pl.col(c) for c in self.inputs])
        return [(total / len(self.inputs) if self.mean else total).alias(self.outputs()[0])]

    family = "linear"

    def linear_rows(self) -> list[Row]:
        weight = 1.0 / len(self.inputs) if self.mean else 1.0
        return [[(c, weight) for c in self.inputs]]

    @classmethod
    def fuse(cls, ops, columns):
        return _fuse_linear(ops, columns)


class Mean(Reduce):
    op, summary, mean = "mean", "mean over the input columns (one output)", True
    bounded = True


class WeightedMid(FeatureOp):
    """(bid * (|ask_size| + eps/2) + ask * (|bid_size| + eps/2)) / (|bid_size| + |ask_size| + eps)
    per level: the usual micro-price for sizes >= 0, a convex mix of bid and ask for signed
    (normalised) sizes too, and the mid for an empty level (sizes 0). With eps in the
    denominator only, the weights summed to less than 1: sizes 0 gave 0, sizes 0.005 a price
    below the bid."""

    op, summary = "wmid", "size-weighted mid price per level (bid, ask, bid_size, ask_size)"
    bounded = True
    keys = column_keys = ("bid", "ask", "bid_size", "ask_size")

    def __post_init__(self):
        keys = ("bid", "ask", "bid_size", "ask_size")
        lists = [list(self.params.get(k, [])) for k in keys]
        if not lists[0] or any(len(v) != len(lists[0]) for v in lists):
            raise FeatureSpecError(f"wmid needs lists {keys} of equal, non-zero length")
        self.levels = lists
        self.inputs = [c for v in lists for c in v]

    def to_dict(self):
        return {"op": self.op, **dict(zip(("bid", "ask", "bid_size", "ask_size"), self.levels,
                                          strict=True))}

    def outputs(self):
        return [f"wmid({b},{a})" for b, a in zip(self.levels[0], self.levels[1], strict=True)]

    def batch(self, id_col):
        out = []
        for (b, a, bs, as_), name in zip(zip(*self.levels, strict=True), self.outputs(),
                                         strict=True):
            w_bid, w_ask = pl.col(as_).abs() + EPS / 2, pl.col(bs).abs() + EPS / 2
            num = pl.col(b) * w_bid + pl.col(a) * w_ask
            out.append((num / (w_bid + w_ask)).alias(name))
        return out

    family = "wmid"

    @classmethod
    def fuse(cls, ops, columns):
        bid, ask, bid_size, ask_size = ([c for op in ops for c in op.levels[i]] for i in range(4))
        return kernels.WeightedMidKernel(_names(ops), _slots(columns, bid + ask),
                                         _slots(columns, ask_size + bid_size), len(columns))


class PerColumn(FeatureOp):
    """A temporal op applied to each input column separately; outputs are `col@tag`."""

    def tag(self) -> str:
        raise NotImplementedError

    def outputs(self):
        return [f"{c}@{self.tag()}" for c in self.inputs]

    def recipe(self):
        return {"op": self.op, **self.params}

    per_sequence: ClassVar[bool] = True  # False: expr() is already sequence-aware

    def batch(self, id_col):
        exprs = [self.expr(pl.col(c)) for c in self.inputs]
        if self.per_sequence:
            exprs = [e.over(id_col) for e in exprs]
        return [e.alias(n) for e, n in zip(exprs, self.outputs(), strict=True)]

    def _int(self, key: str, low: int = 1) -> int:
        value = self.params.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FeatureSpecError(f"{self.op} needs an integer {key!r} >= {low}, got {value!r}")
        return value


class HistoryOp(PerColumn):
    """Ops that read the recent past of a column: they share one history buffer."""

    family = "history"

    def history(self) -> tuple[str, str, int]:
        """(group, kind, size): ("past", lag/delta/roc, k) or ("window", stat, window)."""
        raise NotImplementedError

    @classmethod
    def fuse(cls, ops, columns):
        used = list(dict.fromkeys(c for op in ops for c in op.inputs))
        past: dict[str, list] = {}
        windows: dict[str, list] = {}
        named: dict[tuple, list[str]] = {}
        depth = 1
        for op in ops:
            group, kind, size = op.history()
            target = past if group == "past" else windows
            target.setdefault(kind, []).extend((used.index(c), size) for c in op.inputs)
            named.setdefault((group, kind), []).extend(op.outputs())
            depth = max(depth, size if group == "past" else size - 1)
        # the kernel returns past kinds first, then window stats, each in op order
        order = [("past", k) for k in ("lag", "delta", "roc")]
        order += [("window", k) for k in ("mean", "std", "min", "max")]
        names = [n for key in order for n in named.get(key, [])]
        return kernels.HistoryKernel(names, _slots(columns, used), depth, past, windows)


class PastOp(HistoryOp):
    """Ops of x[t] and x[t - k] (the first value standing in before step k): global shifts in
    the batch face, one read of the shared buffer in the stream face."""

    per_sequence = False
    keys = ("k",)

    def tag(self):
        return f"{self.op}{self._int('k')}"

    def history(self):
        return "past", self.op, self._int("k")


class Lag(PastOp):
    """x[t - k]; before step k the first value of the sequence stands in."""

    op, summary = "lag", "x[t-k] (k steps back; the first value before step k)"
    bounded = True

    def expr(self, c):
        return past_value(c, self._int("k"))


class DiffK(PastOp):
    """x[t] - x[t - k] (the derivative over k steps); before step k, x[t] - x[0]."""

    op, summary = "delta", "x[t] - x[t-k] (difference over k steps; vs the first value before k)"

    def output_bound(self, inputs, rows):
        return 2 * inputs

    def expr(self, c):
        return c - past_value(c, self._int("k"))


class RateOfChange(PastOp):
    """(x[t] - x[t - k]) / x[t - k] with the safe denominator."""

    op, summary = "roc", "(x[t] - x[t-k]) / x[t-k] (rate of change, safe denominator)"

    def output_bound(self, inputs, rows):
        return 2 * inputs / EPS  # |denominator| >= EPS

    def expr(self, c):
        past = past_value(c, self._int("k"))
        return safe_div_expr(c - past, past)


class Rolling(HistoryOp):
    """A statistic over the last `window` steps, over the steps seen so far before it is full
    (std: population std, 0 for a single step)."""

    stat: ClassVar[str]
    keys = ("window",)

    def tag(self):
        # A window of 1 is the raw column; 2 is the smallest that needs a history.
        return f"roll_{self.stat}{self._int('window', low=2)}"

    def expr(self, c):
        w = self._int("window", low=2)
        if self.stat == "std":
            return c.rolling_std(w, min_samples=1, ddof=0)
        if self.stat == "mean":  # float64 sums: a constant window is exactly its value, as in
            # the stream face (a float32 sum over n rounds off it: 102.41 gave 102.41001)
            return c.cast(pl.Float64).rolling_mean(w, min_samples=1).cast(pl.Float32)
        return getattr(c, f"rolling_{self.stat}")(w, min_samples=1)

    def history(self):
        return "window", self.stat, self._int("window", low=2)


class RollingMean(Rolling):
    op, summary, stat = "rolling_mean", "mean over the last `window` steps", "mean"
    bounded = True


class RollingStd(Rolling):
    op, summary, stat = "rolling_std", "population std over the last `window` steps", "std"
    bounded = True


class RollingMin(Rolling):
    op, summary, stat = "rolling_min", "min over the last `window` steps", "min"
    bounded = True


class RollingMax(Rolling):
    op, summary, stat = "rolling_max", "max over the last `window` steps", "max"
    bounded = True


# float32 holds 1 - alpha to within 3e-8 (half an ulp below 1): at alpha 1e-4 the alpha the
# stream face can hold is up to 0.04% off the one asked for, at 1e-7 19%
MIN_ALPHA = 1e-4


class Ewm(PerColumn):
    """Exponentially weighted mean/std, recursive form (adjust=False) started at the first
    value: m = m + a (x - m); v = (1 - a) (v + a (x - m_prev)^2), v = 0 at step 0."""

    std: ClassVar[bool] = False
    keys = ("alpha", "span")

    def alpha(self) -> float:
        alpha, span = self.params.get("alpha"), self.params.get("span")
        if (alpha is None) == (span is None):
            raise FeatureSpecError(f"{self.op} needs exactly one of 'alpha' (0 < alpha <= 1) "
                                   "or 'span' (>= 1)")
        if span is not None:
            if not _is_number(span) or not finite(span) or not 1 <= span <= 2 / MIN_ALPHA - 1:
                raise FeatureSpecError(f"{self.op}: span must be in [1, "
                                       f"{2 / MIN_ALPHA - 1:.0f}], got {span!r}")
            return 2.0 / (span + 1.0)
        if not _is_number(alpha) or not 0 < alpha <= 1:
            raise FeatureSpecError(f"{self.op}: alpha must be in (0, 1], got {alpha!r}")
        if alpha < MIN_ALPHA:
            raise FeatureSpecError(
                f"{self.op}: alpha must be >= {MIN_ALPHA:g} (span <= {2 / MIN_ALPHA - 1:.0f}), "
                f"got {alpha!r}: the stream face's float32 state resolves 1 - alpha to 6e-8, "
                "so a smaller alpha would be computed more than 0.04% off (1e-7 as 1.19e-7)")
        return float(alpha)

    def held_alpha(self) -> float:
        """The alpha both faces compute with: the one the stream face's float32 keep = 1 - alpha
        holds (1 - keep is exact for keep >= 0.5). With the exact alpha in the batch face the
        two drifted 2.4e-5 apart at span 19999."""
        return 1.0 - float(np.float32(1.0 - self.alpha()))

    def tag(self):
        return f"{self.op}{self.alpha():.4g}"

    def recipe(self):  # span=19 and alpha=0.1 are the same op under the same name
        return {"op": self.op, "alpha": self.alpha()}

    def expr(self, c):
        alpha = self.held_alpha()
        if self.std and alpha == 1.0:  # one weight: 0 (Polars' formula leaves rounding)
            return c - c  # (c is finite after the guard)
        # in float64: float32's rounding of a price-level mean is as large as a quiet
        # stretch's std (the stream face keeps the mean as an offset from the last value)
        wide = c.cast(pl.Float64)
        if self.std:
            return wide.ewm_std(alpha=alpha, adjust=False, bias=True).cast(pl.Float32)
        return wide.ewm_mean(alpha=alpha, adjust=False).cast(pl.Float32)

    family = "ewm"

    @classmethod
    def fuse(cls, ops, columns):
        cols = [c for op in ops for c in op.inputs]
        alphas = [op.held_alpha() for op in ops for _ in op.inputs]
        is_std = [op.std for op in ops for _ in op.inputs]
        return kernels.EwmKernel(_names(ops), _slots(columns, cols), alphas, is_std)


class EwmMean(Ewm):
    op, summary = "ewm_mean", "exponentially weighted mean (alpha or span)"
    bounded = True


class EwmStd(Ewm):
    op, summary, std = "ewm_std", "exponentially weighted std (alpha or span)", True

    def output_bound(self, inputs, rows):
        return 2 * inputs  # a std of values within +-b


def exact_cum_sum(c: pl.Expr) -> pl.Expr:
    """A running sum rounded once to float32, as the stream face's compensated one: a float64
    cum_sum plus the running sum of each addition's exact rounding error (TwoSum), a
    double-double sum. float64 alone lost terms 2**53 below a partial sum: 1e16, 1, -1e16
    gave 0 where the stream face gives 1."""
    x = c.cast(pl.Float64)
    total = x.cum_sum()
    before = total.shift(1, fill_value=0.0)
    back = total - before  # TwoSum(before, x): total + lost == before + x exactly
    lost = (before - (total - back)) + (x - back)
    return (total + lost.cum_sum()).cast(pl.Float32)


class Cumulative(PerColumn):
    """Running statistics of the sequence so far: one recurrence for all of them."""

    family = "cumulative"
    kind: ClassVar[str]

    def tag(self):
        return self.op

    @classmethod
    def fuse(cls, ops, columns):
        cols = [c for op in ops for c in op.inputs]
        kinds = [op.kind for op in ops for _ in op.inputs]
        return kernels.CumulativeKernel(_names(ops), _slots(columns, cols), kinds)


class CumSum(Cumulative):
    """Sum of the sequence so far."""

    op, summary = "cumsum", "cumulative sum over the sequence"

    def output_bound(self, inputs, rows):
        return rows * inputs

    kind = "sum"

    def expr(self, c):
        return exact_cum_sum(c)



class CumMax(Cumulative):
    """Max of the sequence so far."""

    op, summary = "cummax", "cumulative max over the sequence"
    bounded = True

    kind = "max"

    def expr(self, c):
        return c.cum_max()



class CumGain(Cumulative):
    """Sum of the positive steps so far (e.g. elevation gain): sum max(x[t] - x[t-1], 0)."""

    op, summary = "cumgain", "cumulative positive gain: sum of max(x[t] - x[t-1], 0)"

    def output_bound(self, inputs, rows):
        return 2 * rows * inputs  # each step gains at most 2b

    kind = "gain"

    def expr(self, c):
        return exact_cum_sum(c.diff().clip(lower_bound=0.0).fill_null(0.0))  # float32 steps



class StepPosition(FeatureOp):
    """The step's position in its sequence (0, 1, 2, ...) times `scale` (default 1/1000)."""

    op, summary = "position", "position in the sequence: step index * scale"
    keys = ("scale", "name")

    def output_bound(self, inputs, rows):
        return rows * self.params["scale"]

    def __post_init__(self):
        self.inputs = []
        scale = self.params.setdefault("scale", 1e-3)
        if not _is_number(scale) or not 0 < scale <= kernels.LIMIT:  # float32 inf: 0 * inf
            raise FeatureSpecError(f"position: scale must be a number in (0, {kernels.LIMIT:g}]"
                                   f", got {scale!r}")

    def outputs(self):
        return [self.params.get("name", "position")]

    def recipe(self):  # the name is the output's (see Reduce.recipe)
        return {"op": self.op, "scale": self.params["scale"]}

    def batch(self, id_col):
        position = pl.col(POS).cast(pl.Float32) * self.params["scale"]
        return [position.alias(self.outputs()[0])]

    family = "position"

    @classmethod
    def fuse(cls, ops, columns):
        return kernels.PositionKernel(_names(ops), [float(op.params["scale"]) for op in ops])


OPS: dict[str, type[FeatureOp]] = {
    cls.op: cls
    for cls in (Raw, Difference, Ratio, Product, Imbalance, Reduce, Mean, WeightedMid, Lag,
                DiffK, RateOfChange, RollingMean, RollingStd, RollingMin, RollingMax, EwmMean,
                EwmStd, CumSum, CumMax, CumGain, StepPosition)
}

# One entry per op as an experiment's `ops = [...]` writes it: `kit features list` shows it
# with the outputs it makes, the names later ops read (not guessable: an EWM asked for by span
# is named by its alpha, a rolling std `roll_std`).
EXAMPLES: dict[str, dict] = {
    "raw": {"inputs": ["x"]},
    **{op: {"a": ["a"], "b": ["b"]} for op in ("diff", "ratio", "product", "imbalance")},
    "sum": {"inputs": ["x0..x3"]},
    "mean": {"inputs": ["x0..x3"], "name": "x_mean"},
    "wmid": {"bid": ["b0"], "ask": ["a0"], "bid_size": ["bs0"], "ask_size": ["as0"]},
    **{op: {"inputs": ["x"], "k": 5} for op in ("lag", "delta", "roc")},
    **{f"rolling_{s}": {"inputs": ["x"], "window": 20} for s in ("mean", "std", "min", "max")},
    "ewm_mean": {"inputs": ["x"], "span": 20},
    "ewm_std": {"inputs": ["x"], "alpha": 0.1},
    **{op: {"inputs": ["x"]} for op in ("cumsum", "cummax", "cumgain")},
    "position": {"scale": 0.001},
}


def example_usage(op: str) -> str:
    """`takes KEYS: {op = ..., ...} makes NAMES` for op (EXAMPLES' entry, its patterns
    expanded as an experiment's are)."""
    cls, entry = OPS[op], EXAMPLES[op]
    takes = ["inputs"] * (not cls.column_keys and op != "position") + [
        "alpha or span" if k == "alpha" else f"[{k}]" if k in ("name", "scale") else k
        for k in cls.keys if k != "span"]  # [optional]
    params = {k: expand_columns(v) if isinstance(v, list) else v
              for k, v in entry.items() if k != "inputs"}
    made = cls(inputs=expand_columns(entry.get("inputs", [])), params=params).outputs()
    toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in {"op": op, **entry}.items())
    return f"takes {', '.join(takes)}: {{{toml}}} makes {', '.join(made)}"
