"""Feature ops, each written once with its two faces side by side.

- batch face: Polars expressions over whole sequences (`.over(id)`), used to build training arrays;
- stream face: a torch module with the stream contract (`init_state(batch)`,
  `forward(w[B, T, C], state) -> (y[B, T, n_out], new_state)`), run inside the ONNX step graph.

Both faces read the *guarded* working columns (see guard.py: no NaN/inf ever reaches an op) and
obey the same start-of-sequence semantics, stated in each op's docstring. In short: before a
window or lag is full, the sequence's first value stands in for the missing past, so a lag at
step 0 equals the current value, a difference is 0 and a rolling statistic covers the steps seen
so far. An all-zero state means "new sequence".

Ops are vectorised over their input columns: one op instance handles many columns with one
gather, which keeps the step graph small (every ONNX node costs about a microsecond).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import polars as pl
import torch
from torch import Tensor, nn

EPS = 1e-6  # denominators smaller than this in magnitude are replaced by +-EPS
# Helper columns the batch face adds once per frame (see FeatureSet.batch_frame): the step's
# index within its sequence and whether it starts one. They let lags run as global shifts
# instead of per-sequence window functions (~10x faster on sorted data).
POS, START = "__pos", "__start"


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


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """The stream twin of safe_div_expr."""
    small = torch.where(den < 0, torch.full_like(den, -EPS), torch.full_like(den, EPS))
    return num / torch.where(den.abs() >= EPS, den, small)


class StreamOp(nn.Module):
    """Base of the stream faces: picks its input columns from the working tensor."""

    def __init__(self, index: list[int]):
        super().__init__()
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.width = len(index)

    def pick(self, w: Tensor) -> Tensor:
        return w.index_select(2, self.index)

    def init_state(self, batch: int) -> list[Tensor]:
        return []


class Stateless(StreamOp):
    """An elementwise function of the current row."""

    def __init__(self, index: list[int], fn):
        super().__init__(index)
        self.fn = fn

    def forward(self, w: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        return self.fn(self.pick(w)), state


def _first_filled(x: Tensor, count: Tensor, buf: Tensor) -> Tensor:
    """At a sequence's first step the history buffer is filled with that step's value."""
    fresh = (count == 0).unsqueeze(-1)  # [B, 1, 1]
    return torch.where(fresh, x[:, :1].expand_as(buf), buf)


class History(StreamOp):
    """Keeps the last `size` values per column; the window seen at step t is history + x_t."""

    def __init__(self, index: list[int], size: int, reduce):
        super().__init__(index)
        self.size = size
        self.reduce = reduce  # (windows[B, T, C, size + 1], valid[B, T, 1, size + 1]) -> y

    def init_state(self, batch: int) -> list[Tensor]:
        return [torch.zeros(batch, self.size, self.width), torch.zeros(batch, 1)]

    def forward(self, w: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        x = self.pick(w)
        buf, count = state
        buf = _first_filled(x, count, buf)
        full = torch.cat([buf, x], dim=1)  # [B, size + T, C]
        t = x.shape[1]
        if t == 1:  # the step graph: the whole buffer is the one window (unfold won't export)
            windows = full.transpose(1, 2).unsqueeze(1)
        else:
            windows = full.unfold(1, self.size + 1, 1)  # [B, T, C, size + 1]
        # Element j of the window at output step s sits at sequence step count + s - size + j.
        offsets = torch.arange(t, dtype=x.dtype).view(1, t, 1) + torch.arange(
            -self.size, 1, dtype=x.dtype).view(1, 1, -1)
        valid = ((count.view(-1, 1, 1) + offsets) >= 0).unsqueeze(2)
        y = self.reduce(windows, valid)
        return y, [full[:, t:], count + t]


class Recurrent(StreamOp):
    """A per-column recurrence over steps; `step(x_t, carry, fresh)` returns (y_t, carry)."""

    def __init__(self, index: list[int], n_carry: int, step):
        super().__init__(index)
        self.n_carry = n_carry
        self.step = step

    def init_state(self, batch: int) -> list[Tensor]:
        return [torch.zeros(batch, self.width) for _ in range(self.n_carry)] + [
            torch.zeros(batch, 1)]

    def forward(self, w: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        x = self.pick(w)
        *carry, count = state
        outputs = []
        for t in range(x.shape[1]):  # T is 1 in the step graph; loops only in tests/parity
            fresh = count == 0
            y, carry = self.step(x[:, t], carry, fresh)
            outputs.append(y)
            count = count + 1
        return torch.stack(outputs, dim=1), [*carry, count]


class Position(StreamOp):
    def __init__(self, scale: float):
        super().__init__([])
        self.scale = scale

    def init_state(self, batch: int) -> list[Tensor]:
        return [torch.zeros(batch, 1)]

    def forward(self, w: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (count,) = state
        t = w.shape[1]
        steps = count.unsqueeze(1) + torch.arange(t, dtype=w.dtype).view(1, t, 1)
        return steps * self.scale, [count + t]


# ----------------------------------------------------------------------------- the ops


@dataclass
class FeatureOp:
    """One entry of a feature set. Subclasses define both faces and their output names."""

    op: ClassVar[str]
    summary: ClassVar[str]
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

    def stream(self, columns: list[str]) -> StreamOp:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"op": self.op, "inputs": list(self.inputs), **self.params}

    def _index(self, columns: list[str], names: list[str] | None = None) -> list[int]:
        return [columns.index(c) for c in (names or self.inputs)]


class Raw(FeatureOp):
    """The guarded column itself."""

    op, summary = "raw", "the column as is (after the NaN/inf guard)"

    def outputs(self):
        return list(self.inputs)

    def batch(self, id_col):
        return []  # the guarded frame already holds the column

    def stream(self, columns):
        return Stateless(self._index(columns), lambda x: x)


class Pairwise(FeatureOp):
    """An elementwise function of paired columns a[i], b[i] (lists of equal length)."""

    symbol: ClassVar[str]

    def __post_init__(self):
        self.a, self.b = list(self.params.get("a", [])), list(self.params.get("b", []))
        if not self.a or len(self.a) != len(self.b):
            raise FeatureSpecError(f"{self.op} needs lists 'a' and 'b' of equal, non-zero "
                                   f"length (got {len(self.a)} and {len(self.b)})")
        self.inputs = self.a + self.b

    def to_dict(self):
        return {"op": self.op, "a": self.a, "b": self.b}

    def outputs(self):
        return [f"{a}{self.symbol}{b}" for a, b in zip(self.a, self.b, strict=True)]

    def batch(self, id_col):
        return [self.expr(pl.col(a), pl.col(b)).alias(n)
                for a, b, n in zip(self.a, self.b, self.outputs(), strict=True)]

    def stream(self, columns):
        n = len(self.a)
        return Stateless(self._index(columns), lambda x: self.fn(x[..., :n], x[..., n:]))


class Difference(Pairwise):
    """a - b (e.g. ask minus bid: the spread)."""

    op, summary, symbol = "diff", "a - b, pairwise (spreads)", "-"
    expr = staticmethod(lambda a, b: a - b)
    fn = staticmethod(lambda a, b: a - b)


class Ratio(Pairwise):
    """a / b with the safe denominator."""

    op, summary, symbol = "ratio", "a / b, pairwise (|b| < 1e-6 -> +-1e-6)", "/"
    expr = staticmethod(safe_div_expr)
    fn = staticmethod(safe_div)


class Product(Pairwise):
    op, summary, symbol = "product", "a * b, pairwise (interactions)", "*"
    expr = staticmethod(lambda a, b: a * b)
    fn = staticmethod(lambda a, b: a * b)


class Imbalance(Pairwise):
    """(a - b) / (|a| + |b| + eps): for volumes (a, b >= 0) the usual (a - b) / (a + b + eps);
    the absolute values keep it in [-1, 1] and well conditioned for signed inputs such as
    quantile-normalised volumes, where a + b crosses 0 and the plain formula explodes."""

    op, summary, symbol = "imbalance", "(a - b) / (|a| + |b| + 1e-6), pairwise", "~"
    expr = staticmethod(lambda a, b: (a - b) / (a.abs() + b.abs() + EPS))
    fn = staticmethod(lambda a, b: (a - b) / (a.abs() + b.abs() + EPS))


class Reduce(FeatureOp):
    """Sum or mean over a column group: one output."""

    op, summary = "sum", "sum over the input columns (one output)"
    mean: ClassVar[bool] = False

    def outputs(self):
        return [self.params.get("name") or f"{self.op}({self.inputs[0]}..{self.inputs[-1]})"]

    def batch(self, id_col):
        total = pl.sum_horizontal(*[pl.col(c) for c in self.inputs])
        return [(total / len(self.inputs) if self.mean else total).alias(self.outputs()[0])]

    def stream(self, columns):
        if self.mean:
            return Stateless(self._index(columns), lambda x: x.mean(-1, keepdim=True))
        return Stateless(self._index(columns), lambda x: x.sum(-1, keepdim=True))


class Mean(Reduce):
    op, summary, mean = "mean", "mean over the input columns (one output)", True


class WeightedMid(FeatureOp):
    """(bid * |ask_size| + ask * |bid_size|) / (|bid_size| + |ask_size| + eps), per level: the
    usual micro-price for sizes >= 0, and a convex mix of bid and ask for signed (normalised)
    sizes too."""

    op, summary = "wmid", "size-weighted mid price per level (bid, ask, bid_size, ask_size)"

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
            w_bid, w_ask = pl.col(as_).abs(), pl.col(bs).abs()
            num = pl.col(b) * w_bid + pl.col(a) * w_ask
            out.append((num / (w_bid + w_ask + EPS)).alias(name))
        return out

    def stream(self, columns):
        n = len(self.levels[0])

        def fn(x):
            b, a, bs, as_ = (x[..., i * n:(i + 1) * n] for i in range(4))
            w_bid, w_ask = as_.abs(), bs.abs()
            return (b * w_bid + a * w_ask) / (w_bid + w_ask + EPS)

        return Stateless(self._index(columns), fn)


class PerColumn(FeatureOp):
    """A temporal op applied to each input column separately; outputs are `col@tag`."""

    def tag(self) -> str:
        raise NotImplementedError

    def outputs(self):
        return [f"{c}@{self.tag()}" for c in self.inputs]

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


class Lag(PerColumn):
    """x[t - k]; before step k the first value of the sequence stands in."""

    op, summary = "lag", "x[t-k] (k steps back; the first value before step k)"
    per_sequence = False

    def tag(self):
        return f"lag{self._int('k')}"

    def expr(self, c):
        return past_value(c, self._int("k"))

    def stream(self, columns):
        return History(self._index(columns), self._int("k"), lambda win, valid: win[..., 0])


class DiffK(PerColumn):
    """x[t] - x[t - k] (the derivative over k steps); before step k, x[t] - x[0]."""

    op, summary = "delta", "x[t] - x[t-k] (difference over k steps; vs the first value before k)"
    per_sequence = False

    def tag(self):
        return f"delta{self._int('k')}"

    def expr(self, c):
        return c - past_value(c, self._int("k"))

    def stream(self, columns):
        return History(self._index(columns), self._int("k"),
                       lambda win, valid: win[..., -1] - win[..., 0])


class RateOfChange(PerColumn):
    """(x[t] - x[t - k]) / x[t - k] with the safe denominator."""

    op, summary = "roc", "(x[t] - x[t-k]) / x[t-k] (rate of change, safe denominator)"
    per_sequence = False

    def tag(self):
        return f"roc{self._int('k')}"

    def expr(self, c):
        past = past_value(c, self._int("k"))
        return safe_div_expr(c - past, past)

    def stream(self, columns):
        return History(self._index(columns), self._int("k"),
                       lambda win, valid: safe_div(win[..., -1] - win[..., 0], win[..., 0]))


def _masked_mean(win: Tensor, valid: Tensor) -> Tensor:
    return (win * valid).sum(-1) / valid.sum(-1)


def _masked_std(win: Tensor, valid: Tensor) -> Tensor:
    mean = _masked_mean(win, valid).unsqueeze(-1)
    var = (((win - mean) * valid) ** 2).sum(-1) / valid.sum(-1)
    return var.clamp_min(0.0).sqrt()


class Rolling(PerColumn):
    """A statistic over the last `window` steps, over the steps seen so far before it is full
    (std: population std, 0 for a single step)."""

    stat: ClassVar[str]

    def tag(self):
        # A window of 1 is the raw column; 2 is the smallest that needs a history.
        return f"roll_{self.stat}{self._int('window', low=2)}"

    def expr(self, c):
        w = self._int("window", low=2)
        if self.stat == "std":
            return c.rolling_std(w, min_samples=1, ddof=0)
        return getattr(c, f"rolling_{self.stat}")(w, min_samples=1)

    def stream(self, columns):
        reduce = {
            "mean": _masked_mean,
            "std": _masked_std,
            "min": lambda win, valid: torch.where(valid, win, torch.full_like(win, 3e38)).amin(-1),
            "max": lambda win, valid: torch.where(valid, win, torch.full_like(win, -3e38)).amax(-1),
        }[self.stat]
        return History(self._index(columns), self._int("window", low=2) - 1, reduce)


class RollingMean(Rolling):
    op, summary, stat = "rolling_mean", "mean over the last `window` steps", "mean"


class RollingStd(Rolling):
    op, summary, stat = "rolling_std", "population std over the last `window` steps", "std"


class RollingMin(Rolling):
    op, summary, stat = "rolling_min", "min over the last `window` steps", "min"


class RollingMax(Rolling):
    op, summary, stat = "rolling_max", "max over the last `window` steps", "max"


class Ewm(PerColumn):
    """Exponentially weighted mean/std, recursive form (adjust=False) started at the first
    value: m = m + a (x - m); v = (1 - a) (v + a (x - m_prev)^2), v = 0 at step 0."""

    std: ClassVar[bool] = False

    def alpha(self) -> float:
        alpha, span = self.params.get("alpha"), self.params.get("span")
        if (alpha is None) == (span is None):
            raise FeatureSpecError(f"{self.op} needs exactly one of 'alpha' (0 < alpha <= 1) "
                                   "or 'span' (>= 1)")
        if span is not None:
            if not isinstance(span, int | float) or span < 1:
                raise FeatureSpecError(f"{self.op}: span must be >= 1, got {span!r}")
            return 2.0 / (span + 1.0)
        if not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            raise FeatureSpecError(f"{self.op}: alpha must be in (0, 1], got {alpha!r}")
        return float(alpha)

    def tag(self):
        return f"{self.op}{self.alpha():.4g}"

    def expr(self, c):
        if self.std:
            return c.ewm_std(alpha=self.alpha(), adjust=False, bias=True)
        return c.ewm_mean(alpha=self.alpha(), adjust=False)

    def stream(self, columns):
        a, with_std = self.alpha(), self.std

        def step(x, carry, fresh):
            mean, var = carry
            mean = torch.where(fresh, x, mean)
            delta = x - mean
            new_mean = mean + a * delta
            new_var = torch.where(fresh, torch.zeros_like(var), (1 - a) * (var + a * delta**2))
            y = new_var.clamp_min(0.0).sqrt() if with_std else new_mean
            return y, [new_mean, new_var]

        return Recurrent(self._index(columns), 2, step)


class EwmMean(Ewm):
    op, summary = "ewm_mean", "exponentially weighted mean (alpha or span)"


class EwmStd(Ewm):
    op, summary, std = "ewm_std", "exponentially weighted std (alpha or span)", True


class CumSum(PerColumn):
    """Sum of the sequence so far."""

    op, summary = "cumsum", "cumulative sum over the sequence"

    def tag(self):
        return "cumsum"

    def expr(self, c):
        return c.cum_sum()

    def stream(self, columns):
        def step(x, carry, fresh):
            total = torch.where(fresh, x, carry[0] + x)
            return total, [total]

        return Recurrent(self._index(columns), 1, step)


class CumMax(PerColumn):
    """Max of the sequence so far."""

    op, summary = "cummax", "cumulative max over the sequence"

    def tag(self):
        return "cummax"

    def expr(self, c):
        return c.cum_max()

    def stream(self, columns):
        def step(x, carry, fresh):
            top = torch.where(fresh, x, torch.maximum(carry[0], x))
            return top, [top]

        return Recurrent(self._index(columns), 1, step)


class CumGain(PerColumn):
    """Sum of the positive steps so far (e.g. elevation gain): sum max(x[t] - x[t-1], 0)."""

    op, summary = "cumgain", "cumulative positive gain: sum of max(x[t] - x[t-1], 0)"

    def tag(self):
        return "cumgain"

    def expr(self, c):
        return c.diff().clip(lower_bound=0.0).fill_null(0.0).cum_sum()

    def stream(self, columns):
        def step(x, carry, fresh):
            prev, gain = carry
            gain = torch.where(fresh, torch.zeros_like(gain), gain + (x - prev).clamp_min(0.0))
            return gain, [x, gain]

        return Recurrent(self._index(columns), 2, step)


class StepPosition(FeatureOp):
    """The step's position in its sequence (0, 1, 2, ...) times `scale` (default 1/1000)."""

    op, summary = "position", "position in the sequence: step index * scale"

    def __post_init__(self):
        self.inputs = []
        scale = self.params.setdefault("scale", 1e-3)
        if not isinstance(scale, int | float) or scale <= 0:
            raise FeatureSpecError(f"position: scale must be > 0, got {scale!r}")

    def outputs(self):
        return [self.params.get("name", "position")]

    def batch(self, id_col):
        position = pl.col(POS).cast(pl.Float32) * self.params["scale"]
        return [position.alias(self.outputs()[0])]

    def stream(self, columns):
        return Position(float(self.params["scale"]))


OPS: dict[str, type[FeatureOp]] = {
    cls.op: cls
    for cls in (Raw, Difference, Ratio, Product, Imbalance, Reduce, Mean, WeightedMid, Lag,
                DiffK, RateOfChange, RollingMean, RollingStd, RollingMin, RollingMax, EwmMean,
                EwmStd, CumSum, CumMax, CumGain, StepPosition)
}
