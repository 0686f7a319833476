"""Per-feature normaliser, fit on training rows only; its stream face is one affine op.

standard: (x - mean) / std;  robust: (x - median) / (IQR / 1.349), which equals the std for
normal data. A feature whose IQR is 0 but which is not constant (a mostly-zero volume column)
takes the 10-90 then the 1-99 percentile range, each scaled to a std the same way, and then its
RMS deviation from the median: scale 1 there would squash every non-zero value into the clip.
The ranges' bounds are values of the data, not interpolated between them.
The result is clipped to [-clip, clip] deviations when clip is set. A feature whose std is
at most max(CONSTANT_SPREAD x |mean|, TINY) is constant on train and gets scale 1 with either
method (dividing by ~0 would blow up on valid); robust's own spread must clear that floor too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kit.config import CHOICES
from kit.errors import KitError

METHODS = CHOICES["normaliser.method"]
ROBUST_SAMPLE = 2_000_000  # rows used for medians/quantiles (deterministic subsample)
FIT_BLOCK_ROWS = 1_000_000  # masked rows per block of the fit's sums (the blocks set the sums)
TRANSFORM_BLOCK_BYTES = 64 << 20  # output written per step of transform
IQR_TO_STD = 1.349
# robust ranges, widened while a feature's range is 0: (low, high quantile, range / std of a normal)
ROBUST_RANGES = ((0.25, 0.75, IQR_TO_STD), (0.10, 0.90, 2.5631), (0.01, 0.99, 4.6527))
# a spread at most this fraction of the feature's level is float rounding of a constant (a
# float32 column's values are 6e-8 apart at least); a constant's scale is 1. Relative, so a
# feature in tiny units (a std of 1e-13 around 0) is still scaled to std 1
CONSTANT_SPREAD = 1e-9
# the absolute floor, for features centred near 0: float32's smallest normal is 1.2e-38, so a
# scale above 1e-30 and its reciprocal (< 1e30) are normal float32s, with 8 decades to spare
# (a float32 runtime flushing subnormals to 0 would divide by 0); below it, a constant
TINY = 1e-30


def _spread_is_real(scale: np.ndarray, center: np.ndarray) -> np.ndarray:
    return np.isfinite(scale) & (scale > np.maximum(CONSTANT_SPREAD * np.abs(center), TINY))


class NormaliserError(KitError):
    """Bad normaliser configuration or input."""


def _clip_above_0(clip) -> bool:
    """A clip is a number > 0 (NaN is not); a bool is no clip (True > 0 held, and clipped at
    +-1)."""
    return not isinstance(clip, bool) and clip > 0


@dataclass
class Normaliser:
    method: str
    clip: float | None
    center: np.ndarray  # (F,) float32
    scale: np.ndarray  # (F,) float32

    @classmethod
    def fit(cls, x: np.ndarray, mask: np.ndarray | None = None, method: str = "standard",
            clip: float | None = 5.0) -> Normaliser:
        """Fit on x (N, T, F) or (rows, F), using only the rows where mask (N, T) is true.
        The fitted rows must be finite (run the guard first): NaN or inf is refused."""
        if method not in METHODS:
            raise NormaliserError(f"normaliser method {method!r} is not one of {METHODS}")
        if clip is not None and not _clip_above_0(clip):
            what = "a number, not a bool" if isinstance(clip, bool) else "deviations"
            raise NormaliserError(f"normaliser clip must be > 0 ({what}), got {clip}")
        x = _fit_input(x)
        rows = x.reshape(-1, x.shape[-1])
        keep = None
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)  # 0/1 ints picked rows 0, 1
            if mask.shape != x.shape[:-1]:
                raise NormaliserError(f"mask has shape {mask.shape}; x {x.shape} needs one "
                                      f"flag per row: shape {x.shape[:-1]}")
            keep = mask.reshape(-1)
        # the masked rows are read block by block, never gathered whole: rows[mask] copied ~90%
        # of a memory-mapped (N, T, F) block, 1.4 GB at full size, on top of it (r312)
        fitted = MaskedRows(rows, keep)
        if fitted.count == 0:
            raise NormaliserError("no training rows to fit the normaliser on")
        # standard: its sums and the finiteness check in one pass, its squares in a second;
        # robust: the check, then its sample
        total, bad = _column_sums(fitted, release=method != "standard")
        if bad.size:  # standard: a NaN center; robust: NaN sorted as the largest value
            raise NormaliserError(
                f"feature column(s) {bad[:10].tolist()}{' ...' if bad.size > 10 else ''} "
                f"(indices into the last axis of x) hold NaN or inf on the rows fitted on: run "
                "the guard (kit.features.guard) or replace those values first")
        if method == "standard":
            center, scale = _mean_std(fitted, total)
            constant = ~_spread_is_real(scale, center)
        else:
            sample = fitted.sample(ROBUST_SAMPLE)
            center, scale = _robust(sample)
            constant = ~_spread_is_real(scale, center) | _std_is_not_real(sample, scale, center)
        scale = np.where(constant, 1.0, scale)
        return cls(method, clip, center.astype(np.float32), scale.astype(np.float32))

    def transform(self, x: np.ndarray, block_bytes: int = TRANSFORM_BLOCK_BYTES) -> np.ndarray:
        """Normalise in float32 (the same arithmetic as the stream face), into one new array
        written block by block along the first axis: the input (a memory-mapped cache) is read
        once, and no temporary the size of the output is made (r312: x - center, the division
        and the clip each allocated one, 3x the arrays at the peak)."""
        x = np.asarray(x)
        out = np.empty(x.shape, dtype=np.float32)
        if out.ndim < 2:  # one row: nothing to block
            out[...] = x
            return self._normalise_in_place(out)
        step = max(1, block_bytes // max(1, out[:1].nbytes))
        for lo in range(0, len(out), step):
            out[lo:lo + step] = x[lo:lo + step]  # cast to float32 as np.asarray(x, float32) did
            drop_mapped_pages(x[lo:lo + step])
            self._normalise_in_place(out[lo:lo + step])
        return out

    def _normalise_in_place(self, block: np.ndarray) -> np.ndarray:
        np.subtract(block, self.center, out=block)
        np.divide(block, self.scale, out=block)
        if self.clip is not None:
            np.clip(block, -self.clip, self.clip, out=block)
        return block

    def to_dict(self) -> dict:
        return {"method": self.method, "clip": self.clip, "center": self.center.tolist(),
                "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, raw: dict) -> Normaliser:
        """A stored normaliser, refused where fit() never makes it (an edited or corrupted
        checkpoint): a method fit() does not know, a non-finite center or scale, a scale <= 0
        (a negative one flips each feature's sign, and the graph's guard relies on scale > 0),
        a clip that is not a number > 0 (a bool passed `> 0` and clipped at +-1)."""
        normaliser = cls(raw["method"], raw["clip"], np.asarray(raw["center"], np.float32),
                         np.asarray(raw["scale"], np.float32))
        center, scale, clip = normaliser.center, normaliser.scale, normaliser.clip
        problem = (f"method {normaliser.method!r}, not one of {METHODS}"
                   if not isinstance(normaliser.method, str) or normaliser.method not in METHODS
                   else "center and scale of different lengths" if center.shape != scale.shape
                   else "a center that is not finite" if not np.isfinite(center).all()
                   else "a scale that is not a finite number > 0"
                   if not (np.isfinite(scale) & (scale > 0)).all()
                   else f"clip {clip!r}, not a number > 0" if clip is not None and not (
                       isinstance(clip, int | float) and _clip_above_0(clip))
                   else None)
        if problem is not None:
            raise NormaliserError(f"the stored normaliser has {problem}, which fit() never "
                                  "writes: the checkpoint was edited or is corrupted; train "
                                  "the run again")
        return normaliser

    def stream_module(self) -> AffineClip:
        return AffineClip(self.center, self.scale, self.clip)


def _fit_input(x) -> np.ndarray:
    """x as a 2-D (rows, features) or 3-D (sequences, steps, features) float array."""
    x = np.asarray(x)
    if x.dtype.kind in "biu":  # (np.quantile reads integers as float64 too)
        x = x.astype(np.float64)
    if x.dtype.kind != "f" or x.ndim not in (2, 3):
        raise NormaliserError(f"x must be a float array of shape (rows, features) or "
                              f"(sequences, steps, features), got {x.ndim}-D {x.dtype}")
    return x


class MaskedRows:
    """The rows of a (rows, F) block where `keep` is true (all when None), handed out in
    blocks of FIT_BLOCK_ROWS masked rows, in order: what rows[keep] would hold, chunked as
    its chunks were (the float64 sums come out the same to the bit), without copying it whole.
    A block whose rows are all kept is a view (no copy of a memory-mapped file at all)."""

    def __init__(self, rows: np.ndarray, keep: np.ndarray | None = None,
                 block: int = FIT_BLOCK_ROWS):
        self.rows, self.keep, self.block = rows, keep, block
        self.count = rows.shape[0] if keep is None else int(np.count_nonzero(keep))
        self.width = rows.shape[1]

    def blocks(self, release: bool = False):
        """The kept rows in blocks; `release`: the last pass over a memory-mapped input, whose
        pages then leave the resident memory block by block (drop_mapped_pages)."""
        for lo, hi in self._spans():
            flags = None if self.keep is None else self.keep[lo:hi]
            yield self.rows[lo:hi] if flags is None or flags.all() else self.rows[lo:hi][flags]
            if release:
                drop_mapped_pages(self.rows[lo:hi])

    def _spans(self):
        """(lo, hi) of all rows holding each block of `block` kept rows."""
        if self.keep is None:
            yield from ((lo, min(lo + self.block, self.count))
                        for lo in range(0, self.count, self.block))
            return
        kept_before = np.cumsum(self.keep, dtype=np.int64)
        ends = np.searchsorted(kept_before, np.arange(self.block, self.count + self.block,
                                                      self.block), side="left") + 1
        lo = 0
        for hi in np.minimum(ends, len(self.keep)).tolist():
            yield lo, hi
            lo = hi

    def sample(self, size: int) -> np.ndarray:
        """`size` kept rows drawn as the fit always drew them (seed 0, in row order); all of
        them when there are no more."""
        if self.count <= size:
            return self.gathered()
        pick = np.sort(np.random.default_rng(0).choice(self.count, size, replace=False))
        where = pick if self.keep is None else np.flatnonzero(self.keep)[pick]
        return self.rows[where]

    def gathered(self) -> np.ndarray:
        return self.rows.copy() if self.keep is None else self.rows[self.keep]


def drop_mapped_pages(view: np.ndarray) -> None:
    """A memory-mapped block already read leaves this process's resident memory (madvise
    DONTNEED: the pages stay in the page cache, read from there if touched again). Reading the
    whole feature cache kept all of it resident beside the normalised copy, 1.4 GB at full size
    (r312). Anything else (an array in memory, a platform without madvise): nothing."""
    import mmap

    mapped = view.base  # np.load(mmap_mode="r"): views of a memmap whose base is the mmap
    while isinstance(mapped, np.ndarray):
        mapped = mapped.base
    if not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if view.flags.writeable or not view.flags.c_contiguous or view.nbytes == 0:
        return  # (a writable mapping may hold changes of its own: a copy-on-write one loses them)
    try:
        start = view.ctypes.data - np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError, BufferError):  # closed
        return
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the view only
    end = (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, end - first)


def _column_sums(rows: MaskedRows, release: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each column's float64 sum, block by block, and the indices of the columns holding NaN
    or inf (no mask of the whole block)."""
    total, bad = np.zeros(rows.width), np.zeros(rows.width, dtype=bool)
    for block in rows.blocks(release):
        total += block.sum(axis=0, dtype=np.float64)
        bad |= ~np.isfinite(block).all(axis=0)
    return total, np.flatnonzero(bad)


def _std_is_not_real(rows: np.ndarray, scale: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Features the standard normaliser takes for constants: its std test, so both methods
    share it (robust's range cleared the floor where the std did not: +-8e-31 was constant
    for standard and scaled by 1.2e-30 for robust). Only features whose robust scale is within
    5x of the floor can fail it (the 1-99 range is at most 4.3 stds: Cantelli's inequality),
    so only theirs is computed (a std of every column added ~40% to a robust fit)."""
    near = ~_spread_is_real(scale / 5, center)
    out = np.zeros(rows.shape[1], dtype=bool)
    if near.any():
        mean, std = _mean_std(rows[:, near])
        out[near] = ~_spread_is_real(std, mean)
    return out


def _robust(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a std-equivalent spread: the IQR's, else a wider range's, else the RMS
    deviation from the median (0 only for a feature constant on train). A range the median's
    point mass can cover (its share of the rows at least the range's span: half the rows for
    the IQR) is passed over: one of its bounds sits on the mass and the other on its edge, so
    its width is a sliver (at 74.8% zeros an IQR of 0.006 where the 10-90 range says 0.66, and
    96% of the non-zero values came out at the clip). Outliers do not move it (2% of -9999
    sentinels are no mass at the median). Bounds are values of the data (no interpolation)."""
    center, bounds = _median_and_bounds(rows, [q for low, high, _ in ROBUST_RANGES
                                               for q in (low, high)])
    at_center = (rows == center.astype(rows.dtype)).mean(axis=0)
    scale = np.zeros(rows.shape[1])
    for (low_q, high_q, to_std), low, high in zip(ROBUST_RANGES, bounds[::2], bounds[1::2],
                                                  strict=True):
        spread = (high.astype(np.float64) - low) / to_std
        usable = _spread_is_real(spread, center) & (at_center < high_q - low_q)
        scale = np.where(_spread_is_real(scale, center), scale, np.where(usable, spread, 0.0))
    flat = ~_spread_is_real(scale, center)
    if flat.any():
        deviation = rows[:, flat].astype(np.float64) - center[flat]
        scale[flat] = np.sqrt((deviation * deviation).mean(axis=0))
    return center, scale


def _median_and_bounds(rows: np.ndarray, quantiles: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """np.quantile's linear median and its `inverted_cdf` quantiles of every column, from one
    partition: two np.quantile calls sorted the rows twice (a 2M x 124 fit took 21 s, not 12)."""
    if not np.issubdtype(rows.dtype, np.floating):  # as np.quantile reads integers
        rows = rows.astype(np.float64)
    n = rows.shape[0]
    picks = [max(math.ceil(n * q) - 1, 0) for q in quantiles]  # inverted_cdf's order statistic
    middle = [(n - 1) // 2, n // 2]  # one row when n is odd
    part = np.partition(rows, sorted({*picks, *middle}), axis=0)
    low, high = part[middle[0]], part[middle[1]]
    return high - (high - low) * rows.dtype.type(0.5), part[picks]  # numpy's lerp, bit for bit


def _mean_std(rows, total: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std in float64, block by block (no float64 copy of the whole
    block): of an array, or of MaskedRows (its pages released by the last pass); `total`: the
    columns' sums, when a pass made them already."""
    rows = rows if isinstance(rows, MaskedRows) else MaskedRows(rows)
    if total is None:
        total = _column_sums(rows)[0]
    mean = total / rows.count
    sq = np.zeros(rows.width)
    for block in rows.blocks(release=True):
        centred = block.astype(np.float64)  # in place after: one float64 block, not three
        np.subtract(centred, mean, out=centred)  # (the same values as (b - mean) ** 2)
        np.multiply(centred, centred, out=centred)
        sq += centred.sum(axis=0)
    return mean, np.sqrt(sq / rows.count)


class AffineClip(nn.Module):
    """Stream face: stateless (x - center) / scale, clipped."""

    def __init__(self, center: np.ndarray, scale: np.ndarray, clip: float | None):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.clip = clip

    def init_state(self, batch: int) -> list[Tensor]:
        return []

    def forward(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y = (x - self.center) / self.scale
        if self.clip is not None:
            y = y.clamp(-self.clip, self.clip)
        return y, state


class StackedAffineClip(nn.Module):
    """The stream faces of M normalisers that share a clip, as one module: x [B, T, F] (one
    input for all) or [M, B, T, F] (one each) -> [M, B, T, F]. Three graph nodes for all M,
    where M separate faces cost three each and a stack of their outputs."""

    @staticmethod
    def fits(normalisers: list[Normaliser]) -> bool:
        """Whether these normalisers stack: one clip for all."""
        return len({n.clip for n in normalisers}) == 1

    def __init__(self, normalisers: list[Normaliser]):
        super().__init__()
        if not self.fits(normalisers):
            clips = sorted(str(n.clip) for n in normalisers)
            raise ValueError(f"normalisers with different clips ({clips}) do not stack")
        self.clip = normalisers[0].clip
        shape = (len(normalisers), 1, 1, -1)  # [M, 1, 1, F] broadcasts over [(M,) B, T, F]
        for name in ("center", "scale"):
            values = np.stack([getattr(n, name) for n in normalisers]).astype(np.float32)
            self.register_buffer(name, torch.from_numpy(values).reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        y = (x - self.center) / self.scale
        return y.clamp(-self.clip, self.clip) if self.clip is not None else y
