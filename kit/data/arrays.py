"""Pre-tensorized training arrays: a sorted frame -> (N, T, F) features, targets and loss masks.

Fixed-length data (every sequence T steps, the Predictorium case) takes one `to_numpy()` of the
Float32 feature block in C order and a free reshape, so peak memory stays near the output size.
Ragged data is padded with zeros or truncated to `seq_len`, copied block by block so no
temporary grows with the frame.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec, spec_argument
from kit.config import CHOICES
from kit.data.contract import key_problems, need_flags, text_key_hint, value_dtype
from kit.data.io import file_schema
from kit.errors import DataError

TRUNCATE = CHOICES["data.truncate"]
BLOCK_ROWS = 1 << 16  # rows converted per step on the blocked paths (~10 MB at 40 columns)


@dataclass
class SequenceArrays:
    """Training arrays; they may be read-only (the cache hands out memory-mapped files)."""

    x: np.ndarray  # (N, T, F) float32 features
    y: np.ndarray  # (N, T, K) float32 targets
    mask: np.ndarray  # (N, T) bool: need_prediction and a real (not padded) step
    lengths: np.ndarray  # (N,) int64 real length of each sequence after truncation
    ids: np.ndarray  # (N,) int64 sequence ids in frame order
    feature_names: list[str]
    target_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given sequence ids; an unknown id raises DataError."""
        order = np.argsort(self.ids, kind="stable")
        given = np.asarray(ids)
        with np.errstate(invalid="ignore"):  # (NaN: unknown below)
            wanted = given.astype(np.int64)
        found = np.searchsorted(self.ids, wanted, sorter=order)
        found = np.minimum(found, len(order) - 1)
        pos = order[found]
        # 1.7 is no id (the cast made it 1)
        unknown = given[(self.ids[pos] != wanted) | (wanted != given)]
        if unknown.size:
            raise DataError(f"sequence id(s) not in these arrays: {unknown[:5].tolist()}")
        return pos

    def take(self, ids: np.ndarray) -> SequenceArrays:
        """The sequences with the given ids (e.g. one split), copied into memory, in that order."""
        pos = self.positions(ids)
        return SequenceArrays(
            x=self.x[pos], y=self.y[pos], mask=self.mask[pos], lengths=self.lengths[pos],
            ids=self.ids[pos], feature_names=list(self.feature_names),
            target_names=list(self.target_names),
        )  # fmt: skip


def build_arrays(
    df: pl.DataFrame,
    spec: CompetitionSpec | str,
    feature_cols: list[str],
    *,
    seq_len: int | None = None,
    truncate: str = "head",
    source: str = "the frame",
) -> SequenceArrays:
    """Turn a frame sorted by (id, step) into padded/truncated arrays of length `seq_len`.

    `seq_len` defaults to the longest sequence; "head" keeps the first seq_len steps, "tail" the
    last. Targets are spec.targets, or for a next-state spec the raw features of the next step.
    `source` names the frame in errors (the file it was read from). `spec`: a CompetitionSpec,
    a preset name or a TOML path; `feature_cols`: a list of column names (a bare string is
    refused: it was read letter by letter).
    """
    spec = spec_argument(spec)
    if isinstance(feature_cols, str):
        raise DataError(f"feature_cols must be a list of column names, got the string "
                        f"{feature_cols!r}: pass [{feature_cols!r}]")
    feature_cols = list(feature_cols)
    target_cols = list(spec.outputs)
    _validate(df, spec, feature_cols, target_cols, seq_len, truncate, source)
    ids, run_lengths = ordered_sequence_runs(df, spec, source)
    where = error_prefix(source)
    width = int(seq_len or run_lengths.max())
    if (run_lengths == width).all():
        x, y, mask = _fixed_length(df, spec, feature_cols, target_cols, len(ids), width, where)
    else:
        x, y, mask = _ragged(df, spec, feature_cols, target_cols, run_lengths, width, truncate,
                             where)
    return SequenceArrays(
        x=x,
        y=y,
        mask=mask,
        lengths=np.minimum(run_lengths, width).astype(np.int64),
        ids=ids,
        feature_names=feature_cols,
        target_names=target_cols,
    )


def error_prefix(source: str) -> str:
    """What starts an error about `source`: the file, where there is one."""
    return "" if source == "the frame" else f"{source}: "


def check_length_options(seq_len, truncate) -> None:
    """seq_len is None or a whole number >= 1, truncate one of TRUNCATE (build_arrays and
    feature_arrays both take them)."""
    if truncate not in TRUNCATE:
        raise DataError(f"truncate={truncate!r} is not one of {TRUNCATE}")
    whole = isinstance(seq_len, int | np.integer) and not isinstance(seq_len, bool)
    if seq_len is not None and (not whole or seq_len < 1):  # (2.5 was taken as 2)
        raise DataError(f"seq_len={seq_len!r} must be a positive whole number of steps (or None)")


def _validate(df, spec, feature_cols, target_cols, seq_len, truncate, source) -> None:
    check_length_options(seq_len, truncate)
    if not feature_cols:
        raise DataError("feature_cols is empty; name at least one feature column")
    doubled = sorted({c for c in feature_cols if feature_cols.count(c) > 1})
    if doubled:
        raise DataError(f"feature column(s) listed twice: {doubled}")
    wanted = [spec.id_col, spec.step_col, spec.need_col, *feature_cols, *target_cols]
    missing = list(dict.fromkeys(c for c in wanted if c not in df.columns))
    where = error_prefix(source)
    if missing:
        what = "next-state targets need" if spec.next_state else "arrays need"
        holder, columns = _columns_held(df, source)
        raise DataError(
            f"{where}missing column(s) {missing}: {what} them ({holder} has {len(columns)} "
            f"columns: {columns[:8]}{' ...' if len(columns) > 8 else ''})"
            + _meant_columns(missing, [c for c in columns if c not in wanted],
                             "the file" if holder == "the file" else "the frame")
        )
    schema = df.schema
    # derived features may be flags; targets come from the file: the contract's dtypes (a
    # Boolean target trained as 0/1 where kit data check and kit score refused the file)
    bad = [f"{c} ({schema[c]})" for c in dict.fromkeys(feature_cols)
           if not (value_dtype(schema[c]) or schema[c] == pl.Boolean)]
    bad += [f"{c} ({schema[c]})" for c in target_cols
            if c not in feature_cols and not value_dtype(schema[c])]
    if bad:
        raise DataError(f"{where}feature/target column(s) must be numeric: {bad}")
    if df.height == 0:
        raise DataError(f"{where}the frame has no rows")


def _columns_held(df: pl.DataFrame, source: str) -> tuple[str, list[str]]:
    """Whose columns an error about a missing one lists: the file's, from its parquet schema,
    where `source` is a file (training cuts the frame to the spec's columns before building
    its features, so a `Target` the spec calls `target` was not in the frame it listed), else
    the frame's."""
    if source != "the frame":
        try:
            if Path(source).is_file():
                return "the file", list(file_schema(source))
        except (DataError, OSError, ValueError):  # not a readable parquet file: the frame
            pass
    return "frame", list(df.columns)


def _meant_columns(missing: list[str], columns: list[str], holder: str) -> str:
    """`; 'target': did you mean 'Target'? ...` for each missing column that another column
    matches but for case, or nearly (difflib, close: 'p30' is no hint for 'dp0'), the first
    MEANT_HINTS of them; "" when none does."""
    folded: dict[str, list[str]] = {}
    for c in columns:
        folded.setdefault(c.casefold(), []).append(c)
    hints, by_case = [], False
    for name in missing:
        close = folded.get(name.casefold())
        by_case = by_case or bool(close)
        close = close or [c for near in difflib.get_close_matches(
            name.casefold(), list(folded), n=2, cutoff=0.8) for c in folded[near]][:2]
        if close:
            hints.append(f"{name!r}: did you mean {' or '.join(map(repr, close))}?")
    if not hints:
        return ""
    more = f"; {len(hints) - MEANT_HINTS} more" if len(hints) > MEANT_HINTS else ""
    return (f"; {'; '.join(hints[:MEANT_HINTS])}{more} ("
            f"{'column names are case-sensitive: ' if by_case else ''}"
            f"rename the column in {holder}, or the name in the spec)")


MEANT_HINTS = 5


def sequence_runs(ids: pl.Series, spec: CompetitionSpec,
                  source: str = "the frame") -> tuple[np.ndarray, np.ndarray]:
    """Sequence ids in row order and their row counts. The ids must be whole numbers with no
    nulls, each sequence's rows together."""
    name = f"{source}: column {spec.id_col!r}"
    if not (ids.dtype.is_integer() or ids.dtype.is_float()):
        raise DataError(f"{name} must hold integer sequence ids, found {ids.dtype}"
                        f"{text_key_hint(ids.dtype)}")
    if ids.len() == 0:
        raise DataError(f"{source}: the file has no rows")
    problems = key_problems(ids.to_frame(), [ids.name])  # nulls, NaN, fractions, past int64
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)}")
    runs = ids.cast(pl.Int64).rle().struct.unnest()
    values = runs["value"].to_numpy().astype(np.int64)
    if len(np.unique(values)) != len(values):
        raise DataError(f"{source}: rows of a sequence are not contiguous; sort it by "
                        f"({spec.id_col}, {spec.step_col}) (kit data check names the rows)")
    return values, runs["len"].to_numpy().astype(np.int64)


def ordered_sequence_runs(df: pl.DataFrame, spec: CompetitionSpec,
                          source: str = "the frame") -> tuple[np.ndarray, np.ndarray]:
    """Sequence ids in frame order and their row counts; rows must be grouped and ordered
    (every op reads the previous row as the step before)."""
    ids, lengths = sequence_runs(df[spec.id_col], spec, source)
    if not (df.schema[spec.step_col].is_integer() or df.schema[spec.step_col].is_float()):
        raise DataError(f"{source}: column {spec.step_col!r} must hold integer steps, found "
                        f"{df.schema[spec.step_col]}{text_key_hint(df.schema[spec.step_col])}")
    # a null or NaN step compares as neither repeated nor backwards: the order around it
    # would go unchecked
    problems = key_problems(df.select(spec.step_col), [spec.step_col])
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)}")
    same_sequence = pl.col(spec.id_col).diff() == 0
    step_change = pl.col(spec.step_col).diff()
    repeated, backwards = df.select(  # the first row of each kind, or None
        repeated=(same_sequence & (step_change == 0)).arg_true().first(),
        backwards=(same_sequence & (step_change < 0)).arg_true().first(),
    ).row(0)
    if repeated is not None:  # sorting cannot mend two rows of one step
        seq, step = df[spec.id_col][repeated], df[spec.step_col][repeated]
        raise DataError(f"{source}: two rows of one step (e.g. {spec.id_col} {seq}, "
                        f"{spec.step_col} {step}); each (sequence, step) must be one row "
                        "(kit data check lists them all)")
    if backwards is not None:
        raise DataError(
            f"{source}: steps are not increasing within a sequence (e.g. {spec.id_col} "
            f"{df[spec.id_col][backwards]}, {spec.step_col} {df[spec.step_col][backwards]}); "
            f"sort the frame by ({spec.id_col}, {spec.step_col}) first"
        )
    return ids, lengths


def _fixed_length(df, spec, feature_cols, target_cols, n, width, where):
    """Every sequence has exactly `width` rows: the row blocks reshape for free."""
    x = float32_rows(df, feature_cols).reshape(n, width, len(feature_cols))
    mask = need_flags(df, spec.need_col, where).reshape(n, width)
    if not spec.next_state:
        return x, float32_rows(df, target_cols).reshape(n, width, len(target_cols)), mask
    _refuse_needs_without_next(spec, int(mask[:, -1].sum()))
    y = np.zeros((n, width, len(target_cols)), dtype=np.float32)
    if set(target_cols) <= set(feature_cols):
        pos = [feature_cols.index(c) for c in target_cols]
        lo = pos[0]
        columns = slice(lo, lo + len(pos)) if pos == list(range(lo, lo + len(pos))) else pos
        y[:, :-1] = x[:, 1:, columns]
    else:
        y[:, :-1] = float32_rows(df, target_cols).reshape(y.shape)[:, 1:]
    return x, y, mask


def _refuse_needs_without_next(spec: CompetitionSpec, count: int) -> None:
    """A next-state target is the next row: a sequence's last row that needs a prediction has
    none (its target would be a 0 the loss trains toward), as the scorer refuses it too."""
    if count:
        raise DataError(f"{count:,} sequence(s) need a prediction at their last row, which has "
                        f"no next row to be its truth (the spec's tail is {spec.tail}); "
                        "kit data check names them")


def _ragged(df, spec, feature_cols, target_cols, run_lengths, width, truncate, where):
    """Scatter the kept rows of each sequence into zero-padded (N, width) slots."""
    n = len(run_lengths)
    starts = np.cumsum(run_lengths) - run_lengths
    kept = np.minimum(run_lengths, width)
    skipped = run_lengths - kept if truncate == "tail" else np.zeros_like(kept)
    pos = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    src = np.repeat(starts + skipped, kept) + pos
    dest = np.repeat(np.arange(n) * width, kept) + pos

    x = np.zeros((n * width, len(feature_cols)), dtype=np.float32)
    _scatter_rows(df, feature_cols, src, dest, x)
    mask = np.zeros(n * width, dtype=bool)
    mask[dest] = need_flags(df, spec.need_col, where)[src]
    y = np.zeros((n * width, len(target_cols)), dtype=np.float32)
    if spec.next_state:
        # The target of the last kept step is the next real step, even one truncation dropped.
        has_next = pos + 1 < np.repeat(run_lengths - skipped, kept)
        _refuse_needs_without_next(spec, int((mask[dest] & ~has_next).sum()))
        _scatter_rows(df, target_cols, src[has_next] + 1, dest[has_next], y)
    else:
        _scatter_rows(df, target_cols, src, dest, y)
    return (x.reshape(n, width, -1), y.reshape(n, width, -1), mask.reshape(n, width))


def _float32_block(frame: pl.DataFrame) -> np.ndarray:
    """(rows, cols) float32 in C order; a no-op cast when the columns are Float32 already."""
    out = frame.select(pl.all().cast(pl.Float32)).to_numpy(order="c")
    return np.ascontiguousarray(out, dtype=np.float32)


def float32_rows(df: pl.DataFrame, cols: list[str]) -> np.ndarray:
    """df[cols] as a C-order float32 (rows, cols) array with peak memory near its own size."""
    block = df.select(cols)
    if all(dtype == pl.Float32 for dtype in block.dtypes):
        return _float32_block(block)  # one conversion, straight into the output
    # Other dtypes would widen to a float64 block first: cast a slice of rows at a time instead.
    out = np.empty((block.height, len(cols)), dtype=np.float32)
    for lo in range(0, block.height, BLOCK_ROWS):
        out[lo : lo + BLOCK_ROWS] = _float32_block(block.slice(lo, BLOCK_ROWS))
    return out


def _scatter_rows(df, cols, src: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
    """out[dest] = float32 rows `src` (ascending) of df[cols], one block of rows at a time."""
    block = df.select(cols)
    bounds = np.searchsorted(src, np.arange(0, block.height + BLOCK_ROWS, BLOCK_ROWS))
    for i0, i1 in zip(bounds[:-1], bounds[1:], strict=True):
        if i0 == i1:
            continue
        lo = int(src[i0])
        rows = _float32_block(block.slice(lo, int(src[i1 - 1]) - lo + 1))
        out[dest[i0:i1]] = rows[src[i0:i1] - lo]
