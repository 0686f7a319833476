"""The data contract of a competition: what `kit data check` verifies and reports.

`check_frame` collects every problem it can find (not just the first) and raises one
DataError listing them, each naming the column, sequence and step involved. Values that a
submission must survive (NaN/inf in features) are reported, not rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from kit.competition import CompetitionSpec
from kit.data.io import (
    file_schema,
    pandas_index_columns,
    read_frame,
    refuse_index_columns,
    scan_parquet,
    unreadable_data,
)
from kit.errors import DataError

FLOAT_TYPES = (pl.Float16, pl.Float32, pl.Float64)
MAX_LISTED = 5  # examples named per problem
LISTED_LENGTHS = 6  # past this many distinct sequence lengths, a summary instead of each one
INT64_MAX = 2**63 - 1


@dataclass
class CheckReport:
    path: str
    spec: str
    rows: int
    sequences: int
    labelled: bool
    dtypes: dict[str, str]
    length_histogram: dict[str, int]
    nan_counts: dict[str, int]
    inf_counts: dict[str, int]
    null_counts: dict[str, int]
    need_rows: int
    warmup_rule: str
    target_summary: dict[str, dict[str, float]]
    warnings: list[str] = field(default_factory=list)
    need_col: str = "need_prediction"  # the spec's name for it

    def to_dict(self) -> dict:
        return dict(vars(self))

    def format(self) -> str:
        lines = [
            f"{self.path}  [spec {self.spec}]",
            f"rows {self.rows:,}   sequences {self.sequences:,}   "
            f"{'labelled' if self.labelled else 'unlabelled (no target columns)'}",
            "sequence lengths: " + _lengths_text(self.length_histogram),
            f"{self.need_col}: {self.need_rows:,} rows ({self.warmup_rule}) - matches the rule",
            "dtypes: " + _group_dtypes(self.dtypes),
        ]
        bad = {c: (self.nan_counts[c], self.inf_counts[c], self.null_counts.get(c, 0))
               for c in self.nan_counts
               if self.nan_counts[c] or self.inf_counts[c] or self.null_counts.get(c, 0)}
        if bad:
            lines.append("non-finite values (NaN / inf, or past float32's range / null):")
            lines += [f"  {c:>16}: {n:,} / {i:,} / {u:,}" for c, (n, i, u) in bad.items()]
        else:
            lines.append("non-finite values: none")
        if self.target_summary:
            lines.append(f"{'target':>16} {'mean':>9} {'std':>9} {'min':>9} {'p1':>9} "
                         f"{'p50':>9} {'p99':>9} {'max':>9}")
            for name, s in self.target_summary.items():
                lines.append(f"{name:>16} " + " ".join(
                    _fitted(s[k]) for k in ("mean", "std", "min", "p1", "p50", "p99", "max")))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _fitted(value: float, width: int = 9) -> str:
    """Fixed point with the most decimals that fit the column (12345.6789 keeps 12345.679,
    not 1.23e+04), else %g (a 1e30 target printed 31 digits)."""
    texts = [f"{value:.{decimals}f}" for decimals in (4, 3, 2, 1, 0)]
    texts += [f"{value:.{digits}g}" for digits in (3, 2, 1)]
    return f"{next((t for t in texts if len(t) <= width), texts[-1]):>{width}}"


def _lengths_text(histogram: dict[str, int]) -> str:
    """`length: sequences` for each length, or for ragged data (a line of thousands of
    characters, r288) how many lengths, their range, the median sequence's and the commonest."""
    if len(histogram) <= LISTED_LENGTHS:
        return ", ".join(f"{k}: {v:,}" for k, v in histogram.items())
    lengths = np.array([int(k) for k in histogram])
    counts = np.array(list(histogram.values()))
    order = np.argsort(lengths, kind="stable")
    lengths, counts = lengths[order], counts[order]
    cumulative = np.cumsum(counts)
    median = lengths[np.searchsorted(cumulative, (cumulative[-1] + 1) // 2)]
    common = sorted(zip(counts, lengths, strict=True), key=lambda c: (-c[0], c[1]))[:3]
    (c0, n0), *rest = common
    return (f"{len(lengths):,} distinct, {lengths[0]:,} to {lengths[-1]:,} steps (median "
            f"{median:,}); most common {n0:,} ({c0:,} sequences)"
            + "".join(f", {n:,} ({c:,})" for c, n in rest))


def _group_dtypes(dtypes: dict[str, str]) -> str:
    """Compress "p0: Float32, p1: Float32, ..." into runs of equal dtype."""
    runs: list[tuple[str, str, str]] = []
    for col, dtype in dtypes.items():
        if runs and runs[-1][2] == dtype:
            runs[-1] = (runs[-1][0], col, dtype)
        else:
            runs.append((col, col, dtype))
    return ", ".join(f"{a}: {d}" if a == b else f"{a}..{b}: {d}" for a, b, d in runs)


def check_file(path: str | Path, spec: CompetitionSpec, extra_ok: bool = False) -> CheckReport:
    """Check a parquet file against the spec. Only the key columns are held in memory; the
    value columns are counted and summarised in a streaming pass, the targets' quantiles in a
    second one that reads only the targets. `extra_ok`: columns the spec does not name are a
    warning, not a problem (a train file's group column)."""
    path = Path(path)
    schema = file_schema(path)
    refuse_index_columns(path, spec.columns)
    index = pandas_index_columns(path)  # not the scorer's columns: its pandas reads them back
    schema = pl.Schema({k: v for k, v in schema.items() if k not in index})

    def read_values(exprs: list[pl.Expr]) -> pl.DataFrame:
        try:
            return scan_parquet(path).select(exprs).collect(engine="streaming")
        except pl.exceptions.PolarsError as exc:
            raise unreadable_data(path, exc) from None

    return _check(schema, lambda cols: read_frame(path, cols), read_values, spec, str(path),
                  extra_ok)


# what to do with a file of another competition, where the command takes --spec
PASS_SPEC = "pass --spec NAME (kit spec list shows the specs)"


def check_frame(df: pl.DataFrame, spec: CompetitionSpec, source: str = "<frame>",
                extra_ok: bool = False, other_file_advice: str = PASS_SPEC) -> CheckReport:
    """Verify a frame against the competition contract; raise DataError listing every problem.
    `other_file_advice`: what to do with another competition's file (a package's spec is fixed:
    its commands take no --spec)."""
    return _check(df.schema, df.select, df.select, spec, source, extra_ok, other_file_advice)


def check_schema(schema: pl.Schema, spec: CompetitionSpec, source: str, extra_ok: bool = False,
                 other_file_advice: str = PASS_SPEC) -> bool:
    """The checks of the columns alone (names, order, dtypes), which hold for every row: what
    a command that reads only some rows (kit score --seqs, r312) checks before reading any.
    Returns whether the columns are labelled."""
    labelled, _ = _check_columns(list(schema), spec, source, extra_ok, other_file_advice)
    check_dtypes(schema, spec, labelled, source)
    return labelled


def _check(schema: pl.Schema, read_columns: Callable[[list[str]], pl.DataFrame],
           read_values: Callable[[list[pl.Expr]], pl.DataFrame], spec: CompetitionSpec,
           source: str, extra_ok: bool = False,
           other_file_advice: str = PASS_SPEC) -> CheckReport:
    """The checks of check_file and check_frame: `read_columns(names)` gives those columns,
    `read_values(exprs)` the one-row frame of those aggregations over the whole data."""
    labelled, warnings = _check_columns(list(schema), spec, source, extra_ok, other_file_advice)
    check_dtypes(schema, spec, labelled, source)
    problems: list[str] = []
    ids, steps = spec.id_col, spec.step_col
    key_frame = read_columns([ids, steps, spec.need_col])
    if key_frame.height == 0:  # a ContractError: `kit data check --json` prints it
        raise ContractError(source, ["the file has no rows"])
    keys = key_table(key_frame, spec)
    problems += key_problems(key_frame, [ids, steps])
    if n_bad_need := keys["need"].null_count():
        rows = first_rows(key_frame, need_as_int(schema, spec.need_col).is_null(),
                          spec.need_col, n_bad_need)
        problems.append(f"column {spec.need_col!r} has {n_bad_need:,} value(s) that are neither "
                        f"0/1 nor true/false (nulls included): {rows}")
    del key_frame
    if problems:
        raise ContractError(source, problems)

    problems += _check_order(keys, spec)
    lengths = keys.group_by("id").agg(pl.len().alias("n"))
    if spec.seq_len is not None:
        wrong = lengths.filter(pl.col("n") != spec.seq_len).sort("id")
        if wrong.height:
            examples = ", ".join(f"seq {i} has {n}" for i, n in wrong.head(MAX_LISTED).iter_rows())
            problems.append(f"{wrong.height:,} sequence(s) do not have the spec's length "
                            f"{spec.seq_len}: {examples}")
    # row by row: listed beside gaps or bad lengths
    problems += _check_need_rule(keys, spec, schema[spec.need_col] == pl.Boolean)
    if not problems and not keys["need"].sum():  # kit score and training refuse it as well
        problems.append(f"no row needs a prediction ({_rule_text(spec)}; the longest sequence "
                        f"has {lengths['n'].max():,} steps): nothing would be scored or trained on")
    if problems:
        raise ContractError(source, problems)

    n_rows, need_rows = keys.height, int(keys["need"].sum())
    del keys  # the value pass holds a stream, not the key table beside it (r312)
    value_cols = list(spec.features) + (list(spec.targets) if labelled else [])
    targets = list(spec.targets) if labelled else []
    truth = next_state_truth_exprs(spec) if spec.next_state else []
    values = read_values(_nonfinite_exprs(value_cols) + _target_exprs(targets, spec.need_col)
                         + truth + _beyond_limit_exprs(schema, spec, targets)).row(0, named=True)
    if targets:  # a select of their own (r312): beside the counts, the quantiles made Polars'
        # streaming engine hold every value column of the file (2.6 GB on 10.7M rows)
        values |= read_values(_target_quantile_exprs(targets)).row(0, named=True)
    nan_counts, inf_counts, null_counts = _nonfinite_counts(values, value_cols)
    warnings += [_target_warning(col, values) for col in targets
                 if nan_counts[col] or inf_counts[col] or null_counts[col]]
    warnings += _beyond_limit_warnings(values, spec, targets)
    if spec.next_state and (bad := {c: values[f"truth_bad|{c}"] for c in spec.features
                                    if values[f"truth_bad|{c}"]}):
        warnings.append(f"the next-state truth (the next row's features) is NaN, inf or null "
                        f"after {_counted(bad)} scored row(s): the metric will be NaN there; "
                        "kit train refuses the file")
    hist = lengths.group_by("n").agg(pl.len().alias("count")).sort("n")
    return CheckReport(
        path=source,
        spec=spec.name,
        rows=n_rows,
        sequences=lengths.height,
        labelled=labelled,
        dtypes={c: str(dtype) for c, dtype in schema.items()},
        length_histogram={str(n): int(c) for n, c in hist.iter_rows()},
        nan_counts=nan_counts,
        inf_counts=inf_counts,
        null_counts=null_counts,
        need_rows=need_rows,
        warmup_rule=_rule_text(spec),
        target_summary=_target_summary(values, targets),
        warnings=warnings,
        need_col=spec.need_col,
    )


class ContractError(DataError):
    """A file breaks the competition contract; `problems` lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        head = f"{source} breaks the competition contract:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def _check_columns(have: list[str], spec: CompetitionSpec, source: str,
                   extra_ok: bool = False,
                   other_file_advice: str = PASS_SPEC) -> tuple[bool, list[str]]:
    """Exact names and order; target columns may be absent altogether (an unlabelled file).
    With `extra_ok` (a train file keeping e.g. a group column) other columns are a warning and
    the spec's columns keep their order among themselves. Returns (labelled, warnings)."""
    # a next-state file is always labelled: its truth is the next row's features
    labelled = spec.next_state or any(t in have for t in spec.targets)
    want = spec.columns if labelled else spec.input_columns
    problems, warnings = [], []
    have_set, want_set = set(have), set(want)  # sets: a spec may name 100,000 columns
    missing = [c for c in want if c not in have_set]
    extra = [c for c in have if c not in want_set]
    if missing:
        problems.append(f"missing column(s): {listed_names(missing)}")
    # by the features: competitions share key names (seq_ix, step_in_seq, need_prediction),
    # so another competition's file passed the key columns and got no hint (r265)
    if spec.features and not any(c in have_set for c in spec.features):
        problems.append(f"none of the feature columns of spec {spec.name!r} is in the file: "
                        f"is it another competition's? {other_file_advice[0].upper()}"
                        f"{other_file_advice[1:]}")
    if extra and extra_ok:
        warnings.append(f"column(s) not in the spec: {listed_names(extra)}; kit train and kit "
                        "score read the spec's columns by name and leave these alone (the "
                        "competition's own files have none)" + shifted_columns_note(have, want))
    elif extra:
        problems.append(f"unexpected column(s): {listed_names(extra)} (a train file may keep "
                        "others, e.g. for data.group: check it with --allow-extra)")
    ours = [c for c in have if c in want_set] if extra_ok else have
    if not missing and (extra_ok or not extra) and ours != want:
        first = next(i for i, (a, b) in enumerate(zip(ours, want, strict=True)) if a != b)
        problems.append(f"columns are in the wrong order: position {first} holds {ours[first]!r} "
                        f"but the spec puts {want[first]!r} there; expected order: "
                        f"{listed_names(want, 8)}")
    dup = sorted(c for c, n in Counter(have).items() if n > 1)
    if dup:
        problems.append(f"duplicated column name(s): {dup}")
    if problems:
        raise ContractError(source, problems)
    return labelled, warnings


def extra_columns_among(have: list[str], want) -> list[str]:
    """The columns of `have` not in `want` that come before or among `want`'s (a `row_id`
    first): the competition's scorer reads each row by position, so every spec column after
    one is read as another (r304); none when they all come after the spec's."""
    wanted = set(want)
    last = max((i for i, c in enumerate(have) if c in wanted), default=-1)
    return [c for c in have[:last] if c not in wanted]


def shifted_columns_note(have: list[str], want: list[str]) -> str:
    """For a file whose extra columns come before or among the spec's: what that does to the
    scorer's rows; "" when they all come after the spec's."""
    before = extra_columns_among(have, want)
    if not before:
        return ""
    return (f"; {listed_names(before, 6)} come(s) before spec columns, which the competition's "
            "scorer, reading each row by position, would then read as others: keep extra "
            "columns after the spec's")


def value_dtype(dtype: pl.DataType) -> bool:
    """A feature's or target's dtype the contract takes: an integer or float (not a Boolean,
    which the scorer's DataFrame.values makes an object row, nor a Decimal)."""
    return dtype.is_numeric() and not dtype.is_decimal()


def check_dtypes(schema: pl.Schema, spec: CompetitionSpec, labelled: bool, source: str) -> None:
    problems = []
    for col in (spec.id_col, spec.step_col):
        dtype = schema[col]
        if not (dtype.is_integer() or dtype in FLOAT_TYPES):
            problems.append(f"column {col!r} must hold whole numbers (an integer or float "
                            f"dtype), found {dtype}{text_key_hint(dtype, spec, col)}")
    need_dtype = schema[spec.need_col]
    if not (need_dtype == pl.Boolean or need_dtype.is_integer()):
        problems.append(f"column {spec.need_col!r} must be bool or integer 0/1, found "
                        f"{need_dtype}{float_flag_hint(need_dtype, spec.need_col)}")
    for col in list(spec.features) + (list(spec.targets) if labelled else []):
        dtype = schema[col]
        if not value_dtype(dtype):
            problems.append(f"column {col!r} must be numeric (an integer or float dtype), "
                            f"found {dtype}")
    if problems:
        raise ContractError(source, problems)


def text_key_hint(dtype: pl.DataType, spec: CompetitionSpec | None = None,
                  column: str | None = None) -> str:
    """What to do with text, date or time ids or steps ("; map the text ..."), or "" for
    another dtype: kit train, kit features build, check, score and parity say the same.
    `spec` and `column` name the columns in the date/time hint (ID and STEP without them)."""
    if dtype.is_temporal():
        return temporal_key_hint(spec, column)
    if not (dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)):
        return ""
    return ("; map the text to integers first, one map for all your files (e.g. each value's "
            "index in the sorted union of their values)")


def temporal_key_hint(spec: CompetitionSpec | None, column: str | None) -> str:
    """A step (or id) stored as a date or time: the numbers the contract wants are its rank,
    steps within their sequence (r304: the refusal named the dtype and no way out)."""
    ids = repr(spec.id_col) if spec else "ID"
    if spec and column == spec.id_col:
        return (f"; number the sequences instead, e.g. (pl.col({ids}).rank(\"dense\") - 1)"
                ".cast(pl.Int64), one numbering for all your files")
    step = repr(column) if column else "STEP"
    return (f"; number the steps 0, 1, 2, ... within each sequence instead, e.g. "
            f"(pl.col({step}).rank(\"ordinal\").over({ids}) - 1).cast(pl.Int64)")


def float_flag_hint(dtype: pl.DataType, need_col: str) -> str:
    """A need flag stored as floats 0.0/1.0 (a pandas column that once held NaN): the cast
    that makes it a flag, as float ids holding whole numbers are taken as they are (r304)."""
    if dtype not in FLOAT_TYPES:
        return ""
    return (f"; flags that hold only 0.0 and 1.0: cast them to integers first, e.g. "
            f"pl.col({need_col!r}).cast(pl.Int8) (df[{need_col!r}].astype(\"int8\") in pandas)")


def contract_dtype(spec: CompetitionSpec, column: str) -> str:
    """The numpy dtype of a column in the competition's own files (and kit's synthetic ones):
    id and step int64, the need flag bool, every feature and target float32."""
    return {spec.id_col: "int64", spec.step_col: "int64", spec.need_col: "bool"}.get(
        column, "float32")


def key_problems(frame: pl.DataFrame, names: list[str]) -> list[str]:
    """What keeps id or step columns from being int64 whole numbers: nulls, fractions, and
    (UInt64) values past int64's range, each counted under its own name with the first rows
    (a count alone leaves a bad value among millions of rows to be found by hand)."""
    problems = []
    for name in names:
        col, dtype = pl.col(name), frame.schema[name]
        too_big = pl.lit(False)
        if dtype == pl.UInt64:
            too_big = col > INT64_MAX
        elif dtype in FLOAT_TYPES:  # whole numbers too, but no int64 holds them
            too_big = (col.is_finite() & (col == col.floor())  # -2**63 itself fits
                       & ((col >= 2.0**63) | (col < -(2.0**63))))
        too_big = too_big.fill_null(False)
        odd = whole_numbers(frame.schema, name).is_null() & ~too_big
        n_odd, n_big = frame.select(odd.sum().alias("odd"), too_big.sum().alias("big")).row(0)
        if n_odd:
            problems.append(f"column {name!r} has {n_odd:,} null or non-integral value(s): "
                            f"{first_rows(frame, odd, name, n_odd)}")
        if n_big:
            problems.append(f"column {name!r} has {n_big:,} value(s) outside int64's range "
                            f"(-2**63 to 2**63 - 1): {first_rows(frame, too_big, name, n_big)}; "
                            "kit holds ids and steps as int64: renumber them")
    return problems


def first_rows(frame: pl.DataFrame, where: pl.Expr, name: str, count: int) -> str:
    """'row R (value), ...' for the first MAX_LISTED of the `count` rows `where` holds on."""
    hits = frame.with_row_index("\0row").with_columns(where.alias("\0hit")).filter(
        pl.col("\0hit")).head(MAX_LISTED).select("\0row", name)  # (a literal broadcasts)
    shown = ", ".join(f"row {r:,} ({v})" for r, v in hits.iter_rows())
    return shown + (", ..." if count > MAX_LISTED else "")


def whole_numbers(schema: pl.Schema, name: str) -> pl.Expr:
    """The column as Int64, null where a value is not a whole number (reported as such): a
    plain cast would truncate 1.5 to 1."""
    col = pl.col(name)
    if schema[name] in FLOAT_TYPES:
        col = col.cast(pl.Float64)  # exact; Polars' floor of a Float16 returns it unchanged
        col = pl.when(col == col.floor()).then(col).otherwise(None)
    return col.cast(pl.Int64, strict=False)


def need_flags(frame: pl.DataFrame, need_col: str, where: str = "") -> np.ndarray:
    """The need column as bools, from booleans or integers that are exactly 0 or 1 (what `kit
    data check` requires). Anything else (a null, -1, 2, a float or text column) raises a
    DataError naming the column: a cast would read -1 or 0.5 as true and a null as false."""
    dtype = frame.schema[need_col]
    if not (dtype == pl.Boolean or dtype.is_integer()):
        raise DataError(f"{where}column {need_col!r} must hold booleans or integers 0/1, found "
                        f"{dtype}{float_flag_hint(dtype, need_col)}")
    flags = frame.select(need_as_int(frame.schema, need_col)).to_series()
    if flags.null_count():
        raise DataError(f"{where}column {need_col!r} has {flags.null_count():,} value(s) that "
                        "are neither 0/1 nor true/false (nulls included); `kit data check` "
                        "counts them with the file's other problems")
    return flags.to_numpy().astype(bool)


def need_as_int(schema: pl.Schema, need_col: str) -> pl.Expr:
    col = pl.col(need_col)
    if schema[need_col] == pl.Boolean:
        return col.cast(pl.Int8)
    # Integer flags must be exactly 0 or 1; anything else becomes null and is reported.
    return pl.when(col.is_in([0, 1])).then(col.cast(pl.Int8)).otherwise(None)


def key_table(frame: pl.DataFrame, spec: CompetitionSpec) -> pl.DataFrame:
    """The spec's id, step and need columns as the checks read them: row, id, step, need (ids
    and steps that are not whole numbers, and flags that are not 0/1, as null)."""
    return frame.select(
        whole_numbers(frame.schema, spec.id_col).alias("id"),
        whole_numbers(frame.schema, spec.step_col).alias("step"),
        need_as_int(frame.schema, spec.need_col).alias("need"),
    ).with_row_index("row")


def _check_order(keys: pl.DataFrame, spec: CompetitionSpec) -> list[str]:
    """Rows grouped by sequence, steps 0, 1, 2, ... in order, no duplicates and no gaps."""
    problems = []
    marked = keys.with_columns(
        (pl.col("id") != pl.col("id").shift(1)).fill_null(True).alias("starts"),
        (pl.col("step") - pl.col("step").shift(1)).alias("delta"),
    )
    starts = marked.filter(pl.col("starts"))
    inner = marked.filter(~pl.col("starts"))
    del marked
    split = (starts.filter(pl.col("id").is_duplicated()).group_by("id")
             .agg(pl.col("row").sort().get(1)))
    if split.height or (inner["delta"] <= 0).any():
        # With each sequence's rows together and steps rising, no pair can repeat: the grouping
        # (a table as long as the file) is needed only for files that fail those checks.
        problems += _duplicates(keys, spec)
    if split.height:
        examples = ", ".join(f"seq {i} (again at row {r})" for i, r in
                             split.sort("row").head(MAX_LISTED).iter_rows())
        problems.append(f"rows of {split.height:,} sequence(s) are not contiguous; sort by "
                        f"({spec.id_col}, {spec.step_col}): {examples}")
        # the start, order and gap checks read runs of rows as sequences: on rows out of place
        # they would count thousands of runs; check the sorted file again instead
        return problems
    late_start = starts.filter(pl.col("step") != 0)
    if late_start.height:
        examples = ", ".join(f"seq {i} starts at step {s}" for _, i, s, *_ in
                             late_start.head(MAX_LISTED).iter_rows())
        problems.append(f"{late_start.height:,} sequence(s) do not start at step 0: {examples}")
    backwards = inner.filter(pl.col("delta") < 0)
    if backwards.height:
        # the first row of each sequence: a shuffled one listed five rows of itself alone
        firsts = backwards.unique("id", keep="first", maintain_order=True)
        examples = ", ".join(f"seq {i} step {s} (row {r})" for r, i, s, *_ in
                             firsts.head(MAX_LISTED).iter_rows())
        problems.append(f"steps out of order in {firsts.height:,} sequence(s); first in "
                        f"each: {examples}")
    # Steps out of order jump forward too (9, 11, 10, 12) where no row is missing: gaps between
    # rows are read only in sequences whose steps rise; in the others, missing steps are counted
    # (first to last step, against the distinct steps there).
    disordered = backwards["id"].unique().implode()
    gaps = inner.filter((pl.col("delta") > 1) & ~pl.col("id").is_in(disordered))
    examples = [f"seq {i}: step {s - d} -> {s}" for _, i, s, _, _, d in
                gaps.head(MAX_LISTED).iter_rows()]
    missing = (keys.filter(pl.col("id").is_in(disordered)).group_by("id", maintain_order=True)
               .agg((pl.col("step").max() - pl.col("step").min() + 1
                     - pl.col("step").n_unique()).alias("missing"))
               .filter(pl.col("missing") > 0))
    examples += [f"seq {i}: {n} step(s) missing" for i, n in
                 missing.head(MAX_LISTED - len(examples)).iter_rows()]
    if gaps.height or missing.height:
        problems.append(f"{gaps.height + missing.height:,} gap(s) in step numbering: "
                        f"{', '.join(examples)}")
    return problems


def _duplicates(keys: pl.DataFrame, spec: CompetitionSpec) -> list[str]:
    dup = (keys.group_by("id", "step").agg(pl.len().alias("n"), pl.col("row").min())
           .filter(pl.col("n") > 1).sort("row"))
    if not dup.height:
        return []
    examples = ", ".join(f"(seq {i}, step {s}) x{n}"
                         for i, s, n, _ in dup.head(MAX_LISTED).iter_rows())
    return [f"{dup.height:,} duplicate ({spec.id_col}, {spec.step_col}) pair(s): {examples}"]


def _check_need_rule(keys: pl.DataFrame, spec: CompetitionSpec,
                     boolean: bool = False) -> list[str]:
    """`boolean`: the file's flags are booleans, named false/true (not as the 0/1 read here)."""
    # a sequence ends after its last step, at most at the spec's length: not at its row
    # count, which a gap or a duplicate would move (a sequence shorter than the spec's, named
    # as such, had its last step asked to be scored where a tail leaves it out: r280)
    length = pl.col("step").max().over("id") + 1
    if spec.seq_len is not None:
        length = pl.min_horizontal(length, pl.lit(spec.seq_len))
    expected = ((pl.col("step") >= spec.warmup) & (pl.col("step") < length - spec.tail))
    wrong = keys.filter(pl.col("need") != expected.cast(pl.Int8))
    if not wrong.height:
        return []
    shown = {0: "false", 1: "true"} if boolean else {0: "0", 1: "1"}
    examples = ", ".join(f"seq {i} step {s} has {shown[n]}" for _, i, s, n in
                         wrong.head(MAX_LISTED).iter_rows())
    return [f"{spec.need_col} breaks the rule ({_rule_text(spec)}) on {wrong.height:,} row(s): "
            f"{examples}"]


def refuse_broken_need_rule(keys: pl.DataFrame, spec: CompetitionSpec, source: str) -> None:
    """Training takes the need column as its loss mask, so a file whose flags follow another
    rule would train and be selected, then be refused by kit parity and kit score: training
    refuses it first, and so a file whose sequences start past step 0, skip steps or repeat
    one (0.2 s on 10.7M rows). `keys` holds the spec's id, step and need columns, already
    checked to be whole numbers and 0/1 flags."""
    table = key_table(keys, spec)
    if problems := _check_order(table, spec):
        raise DataError(f"{source}: {'; '.join(problems)}; kit parity and kit score refuse such "
                        f"a file (the scorer's rows of a sequence are its steps 0, 1, 2, ...): "
                        f"kit data check {source} lists the file's problems")
    if problems := _check_need_rule(table, spec, keys.schema[spec.need_col] == pl.Boolean):
        raise DataError(f"{source}: {problems[0]}; the spec states this rule for the whole "
                        f"competition (kit parity and kit score refuse such a file too): kit "
                        f"data check {source} lists the file's problems. Where the "
                        f"competition scores another step range, set the spec's warmup and "
                        f"tail to it; scored steps of another pattern (every 5th step, say) "
                        f"are not supported")


def _rule_text(spec: CompetitionSpec) -> str:
    rule = f"true from step {spec.warmup}"
    return rule + (f" until {spec.tail} step(s) before the end" if spec.tail else " to the end")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_as_float32(c: str) -> pl.Expr:
    """Finite once kit reads it as float32 (a float64 1e300 is inf there; NaN: false, as
    Polars orders NaN above every number; null: null)."""
    return pl.col(c).cast(pl.Float64).abs() <= FLOAT32_MAX


def _nonfinite_exprs(cols: list[str]) -> list[pl.Expr]:
    exprs = []
    for c in cols:
        # inf counts values past float32's range too (the guard replaces them, a target with
        # one fails training)
        nan = pl.col(c).cast(pl.Float64).is_nan()
        exprs += [pl.col(c).is_nan().sum().alias(f"nan|{c}"),
                  (~_finite_as_float32(c) & ~nan).sum().alias(f"inf|{c}"),
                  pl.col(c).null_count().alias(f"null|{c}")]
    return exprs


def _nonfinite_counts(values: dict, cols: list[str]):
    pick = {kind: {c: int(values[f"{kind}|{c}"] or 0) for c in cols}
            for kind in ("nan", "inf", "null")}
    return pick["nan"], pick["inf"], pick["null"]


SUMMARY = {"mean": lambda c: c.mean(), "std": lambda c: c.std(ddof=0), "min": lambda c: c.min(),
           "p1": lambda c: c.quantile(0.01, "linear"), "p50": lambda c: c.quantile(0.5, "linear"),
           "p99": lambda c: c.quantile(0.99, "linear"), "max": lambda c: c.max()}
QUANTILES = ("p1", "p50", "p99")  # SUMMARY's keys that need every value at once


def _finite_target(t: str) -> pl.Expr:
    """The target's values that are finite as float32, as float64."""
    return pl.col(t).cast(pl.Float64).filter(_finite_as_float32(t))


def _target_exprs(targets: list[str], need_col: str) -> list[pl.Expr]:
    """Per target: the streamable part of the summary of its finite values (all but
    QUANTILES), their count, and its non-finite values on scored rows."""
    exprs = []
    for t in targets:
        ok = _finite_as_float32(t)
        finite = _finite_target(t)
        exprs += [stat(finite).alias(f"{key}|{t}") for key, stat in SUMMARY.items()
                  if key not in QUANTILES]
        exprs += [finite.len().alias(f"finite|{t}"),
                  (~ok.fill_null(False))
                  .filter(pl.col(need_col).cast(pl.Boolean)).sum().alias(f"scored_bad|{t}")]
    return exprs


def _target_quantile_exprs(targets: list[str]) -> list[pl.Expr]:
    """Per target: the QUANTILES of its finite values (they read only the target columns)."""
    return [SUMMARY[key](_finite_target(t)).alias(f"{key}|{t}")
            for t in targets for key in QUANTILES]


# kit.features.kernels.LIMIT, the feature guard's clip (not imported: that module loads torch;
# tests/test_hostile_data_fixes.py holds them equal)
GUARD_LIMIT = 1e16


def _beyond_limit(c: str) -> pl.Expr:
    """Finite as float32 (as the guard reads it) but beyond the guard's +-GUARD_LIMIT."""
    return _finite_as_float32(c) & (pl.col(c).cast(pl.Float32).abs() > GUARD_LIMIT)


def _beyond_limit_exprs(schema: pl.Schema, spec: CompetitionSpec,
                        targets: list[str]) -> list[pl.Expr]:
    """Per feature, its values the guard clips; per target, such values on scored rows and the
    (sequence, step) of the first."""
    exprs = [_beyond_limit(c).sum().alias(f"huge|{c}") for c in spec.features]
    need = pl.col(spec.need_col).cast(pl.Boolean)
    for t in targets:
        scored = (_beyond_limit(t) & need).fill_null(False)
        exprs += [scored.sum().alias(f"huge|{t}"),
                  whole_numbers(schema, spec.id_col).filter(scored).first().alias(f"seq|{t}"),
                  whole_numbers(schema, spec.step_col).filter(scored).first()
                  .alias(f"step|{t}")]
    return exprs


def _beyond_limit_warnings(values: dict, spec: CompetitionSpec, targets: list[str]) -> list[str]:
    limit = f"+-{GUARD_LIMIT:.0e}".replace("e+", "e")  # +-1e16
    warnings = []
    for c in spec.features:
        if n := int(values[f"huge|{c}"] or 0):
            # r275: 1e30 on 1 row in 13 left float32 rolling means of garbage, and the package
            # failed kit parity by 0.46 with nothing before saying why
            warnings.append(
                f"feature {c!r} has {n:,} finite value(s) beyond {limit}: the feature guard "
                f"clips them to {limit}, and sums, means and stds over windows holding them "
                f"lose the column's ordinary values (float32), so the batch and stream faces "
                f"can differ and fail kit parity: clean or rescale the column")
    for t in targets:
        if n := int(values[f"huge|{t}"] or 0):
            warnings.append(
                f"target {t!r} has {n:,} finite value(s) beyond {limit} on scored rows (first "
                f"at seq {values[f'seq|{t}']}, step {values[f'step|{t}']}): training's loss is "
                f"in target units, which such values overflow in float32 or outweigh every "
                f"other row (kit train names those past its loss's own limit, lower for "
                f"wmse): clean or rescale the column")
    return warnings


def next_state_truth_exprs(spec: CompetitionSpec) -> list[pl.Expr]:
    """Per feature: the scored rows whose truth, the next row's value, is not finite (rows in
    (id, step) order; a sequence's last row is never scored in a next-state spec)."""
    need = pl.col(spec.need_col).cast(pl.Boolean)
    return [(need & ~pl.col(c).cast(pl.Float64).shift(-1).is_finite().fill_null(False))
            .sum().alias(f"truth_bad|{c}") for c in spec.features]


def _counted(per_column: dict[str, int]) -> str:
    return ", ".join(f"{c}: {n:,}" for c, n in per_column.items())


def _target_summary(values: dict, targets: list[str]) -> dict[str, dict[str, float]]:
    return {t: {key: float(values[f"{key}|{t}"]) for key in SUMMARY}
            for t in targets if values[f"finite|{t}"]}


def _target_warning(col: str, values: dict) -> str:
    bad = int(values[f"scored_bad|{col}"] or 0)
    if bad:
        return (f"target {col!r} has non-finite values on {bad:,} scored row(s): the metric "
                "will be NaN or inf")
    return (f"target {col!r} has non-finite values, only on rows that need no prediction: the "
            "metric is unaffected")


def listed_names(names: list[str], limit: int = 12) -> str:
    """The first `limit` names, then how many in all."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
