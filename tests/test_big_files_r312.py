"""r312: `kit score --seqs N` and `kit parity` read and check only the first N sequences of a
file, `kit data check` streams the value columns, and the score says what part of the file
it replayed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import tomli_w

from kit.data import contract
from kit.data.contract import check_file
from kit.errors import DataError
from kit.scoring.score import load_rows
from tests.cli import run_cli
from tests.frames import make_frame
from tests.test_scoring import FORMULA, SPEC, expected_report, score, write_sub

SEQ_LEN = 20  # SPEC's: one row group per sequence below


def write_grouped(path: Path, frame: pl.DataFrame) -> Path:
    """The frame as parquet, one row group per sequence (parquet's unit of reading)."""
    frame.write_parquet(path, row_group_size=SEQ_LEN)
    return path


def break_column_chunk(path: Path, row_group: int, column: str) -> None:
    """Overwrite one column's data in one row group with garbage; the footer stays sound, so
    only a reader that decodes that chunk fails."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(i) for i in range(meta.num_columns)
                 if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + chunk.total_compressed_size] = b"\xab" * chunk.total_compressed_size
    path.write_bytes(bytes(data))


def test_seqs_never_reads_the_value_columns_of_later_sequences(tmp_path):
    # F1: a file whose values past the first sequences do not even decode scores with --seqs,
    # so those rows are never read (kit score and parity read the whole file, r312)
    frame = make_frame(SPEC, n_seqs=6)
    data = write_grouped(tmp_path / "data.parquet", frame)
    break_column_chunk(data, 4, "p2")
    with pytest.raises(DataError, match="footer reads but its data does not"):
        load_rows(data, SPEC, None)  # the whole file: the broken chunk is read
    rows = load_rows(data, SPEC, 2)  # what kit parity calls with its --seqs
    assert (len(rows.values), rows.sequences, rows.file_sequences) == (40, 2, 6)
    result = score(write_sub(tmp_path, FORMULA), data, seqs=2)
    assert (result.rows, result.sequences, result.file_sequences) == (40, 2, 6)
    expected = expected_report(frame.filter(pl.col("seq_ix") < 2))
    assert result.score == pytest.approx(expected.score, rel=1e-12)


def break_need_rule(frame: pl.DataFrame, seq: int) -> pl.DataFrame:
    """Step 0 of sequence `seq` asks for a prediction, against the warm-up rule."""
    first = (pl.col("seq_ix") == seq) & (pl.col("step_in_seq") == 0)
    return frame.with_columns(pl.when(first).then(True).otherwise(pl.col("need_prediction"))
                              .alias("need_prediction"))


def test_seqs_checks_only_the_rows_it_replays(tmp_path):
    # F1: rows the replay does not hold are no longer checked; the whole file still is
    data = write_grouped(tmp_path / "data.parquet", break_need_rule(make_frame(SPEC, 4), 3))
    with pytest.raises(DataError, match="breaks the rule"):
        load_rows(data, SPEC, None)
    rows = load_rows(data, SPEC, 3)
    assert (len(rows.values), rows.sequences, rows.file_sequences) == (60, 3, 4)


def test_seqs_still_refuses_a_broken_rule_in_the_rows_it_replays(tmp_path):
    # the checks that matter for the rows replayed stay, naming the part of the file read
    data = write_grouped(tmp_path / "data.parquet", break_need_rule(make_frame(SPEC, 4), 1))
    with pytest.raises(DataError) as caught:
        load_rows(data, SPEC, 2)
    text = str(caught.value)
    assert "seq 1 step 0 has true" in text
    assert "its first 2 sequence(s), rows 0 to 39 of 80: --seqs 2 reads and checks" in text


def test_seqs_refuses_first_sequences_that_come_back_later(tmp_path):
    # the replay of a sequence with rows further on would miss them: refused as the check of
    # the whole file refused it, naming the row
    frame = make_frame(SPEC, 4)
    first, head = pl.col("seq_ix") == 0, pl.col("step_in_seq") < 10
    moved = pl.concat([frame.filter(first & head), frame.filter(~first),
                       frame.filter(first & ~head)])  # seq 0's steps 10..19 last, at row 70
    data = write_grouped(tmp_path / "data.parquet", moved)
    with pytest.raises(DataError, match=r"seq 0 again at row 70.*sort the file by") as caught:
        load_rows(data, SPEC, 1)
    assert str(caught.value).count("again at row") == 1  # its first row back, once (r318)


def test_seqs_refuses_a_column_problem_before_reading_rows(tmp_path):
    # the dtypes hold for every row: refused with --seqs as without it
    frame = make_frame(SPEC, 3).with_columns(pl.col("p0").cast(pl.String))
    data = write_grouped(tmp_path / "data.parquet", frame)
    with pytest.raises(DataError, match="column 'p0' must be numeric"):
        load_rows(data, SPEC, 1)


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(SPEC.to_dict()))
    return path


def test_score_says_it_replayed_the_first_sequences_of_the_file(tmp_path):
    # F5: "in 2 sequence(s)" and a plain projection read as the whole file's
    data = write_grouped(tmp_path / "data.parquet", make_frame(SPEC, 3))
    sub, spec = write_sub(tmp_path, FORMULA), spec_file(tmp_path)
    out = run_cli("score", sub, "--data", data, "--spec", spec, "--seqs", "2", "-q").output
    assert "in the first 2 of the file's 3 sequences (--seqs)" in out
    assert "extrapolated from the first 2 sequence(s) alone" in out
    whole = run_cli("score", sub, "--data", data, "--spec", spec, "-q").output
    assert "in 3 sequence(s)" in whole and "extrapolated" not in whole
    as_json = run_cli("score", sub, "--data", data, "--spec", spec, "--seqs", "2",
                      "--json").output
    assert json.loads(as_json[as_json.index("{"):])["file_sequences"] == 3


# --- kit data check ---------------------------------------------------------------------------


def has_quantile(expr: pl.Expr) -> bool:
    return "quantile" in str(expr)


def test_check_reads_the_target_quantiles_in_a_select_of_their_own(tmp_path):
    # F4: beside the column counts, the quantiles made Polars' streaming engine hold every
    # value column of the file (2.6 GB on 10.7M rows): each read that holds one reads only
    # the target columns
    frame = make_frame(SPEC, 3)
    data = write_grouped(tmp_path / "data.parquet", frame)
    reads: list[list[pl.Expr]] = []

    def read_values(exprs):
        reads.append(exprs)
        return pl.scan_parquet(data).select(exprs).collect(engine="streaming")

    schema = pl.scan_parquet(data).collect_schema()
    contract._check(schema, lambda cols: pl.read_parquet(data, columns=cols), read_values,
                    SPEC, str(data))
    with_quantiles = [exprs for exprs in reads if any(map(has_quantile, exprs))]
    assert with_quantiles
    for exprs in with_quantiles:
        read = {name for e in exprs for name in e.meta.root_names()}
        assert read <= set(SPEC.targets), read


def test_check_report_numbers_are_those_of_the_values(tmp_path):
    # the summary read in two selects is the one numpy computes on the file's values
    frame = make_frame(SPEC, 3).with_columns(
        pl.when(pl.col("step_in_seq") == 2).then(float("nan")).otherwise(pl.col("t0"))
        .alias("t0"))
    data = write_grouped(tmp_path / "data.parquet", frame)
    report = check_file(data, SPEC)
    for target in SPEC.targets:
        values = frame[target].cast(pl.Float64).to_numpy()
        values = values[np.isfinite(values)]
        summary = report.target_summary[target]
        expected = {"mean": values.mean(), "std": values.std(), "min": values.min(),
                    "max": values.max(), "p1": np.quantile(values, 0.01),
                    "p50": np.quantile(values, 0.5), "p99": np.quantile(values, 0.99)}
        assert summary == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert report.nan_counts["t0"] == 3 and report.need_rows == 3 * 15
