"""r304's review of data formats: `kit score` types the rows as pandas reads THIS file (its
nullable and pyarrow-backed extension dtypes make DataFrame.values an object array), warns when
another column shifts the spec's columns from their positions, and the refusals of a float need
flag, a date/time step and a folder of parquet parts say how to fix the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import pytest

from kit.data.contract import check_file, check_frame, need_flags
from kit.data.io import file_schema
from kit.errors import DataError, SubmissionError
from kit.scoring import score_submission
from tests.frames import make_frame, small_spec
from tests.test_scoring import write_sub

SPEC = small_spec(seq_len=12, warmup=5)
N_INPUTS = len(SPEC.input_columns)

# Checks each row against pandas' own reading of the file: the type of every input value, the
# state's dtype, and the first row's values.
AS_PANDAS = """\
import json
import numpy as np

EXPECTED = json.load(open("expected.json"))


class PredictionModel:
    def __init__(self):
        self.first = True

    def predict(self, dp):
        values = [dp.seq_ix, dp.step_in_seq, dp.need_prediction, *dp.state]
        got = {"types": [type(v).__name__ for v in values], "dtype": str(dp.state.dtype)}
        want = {k: EXPECTED[k] for k in got}
        assert got == want, (got, want)
        if self.first:
            self.first = False
            assert [float(v) for v in values] == EXPECTED["values"]
        return np.zeros(2) if dp.need_prediction else None
"""

# The review's repro: a solution that works on numeric rows only
NEEDS_NUMBERS = """\
import numpy as np


class PredictionModel:
    def predict(self, dp):
        np.isfinite(dp.state)  # a TypeError on object rows, as in the scorer
        return np.zeros(2) if dp.need_prediction else None
"""


def score(sub: Path, data: Path):
    return score_submission(sub, data, SPEC, progress=False)


def pandas_written(tmp_path: Path, casts: dict[str, str], **options) -> Path:
    """The test frame through pandas, with these pandas dtypes, written by pandas' to_parquet
    (which records them in the file's pandas metadata)."""
    frame = make_frame(SPEC, n_seqs=2).to_pandas()
    if options.get("convert"):
        frame = frame.convert_dtypes(dtype_backend=options["convert"])
    path = tmp_path / "data.parquet"
    frame.astype(casts).to_parquet(path)
    return path


def pandas_row(path: Path) -> dict:
    """The scorer's first row, pd.read_parquet(path).values[0], as AS_PANDAS compares it."""
    pd = pytest.importorskip("pandas")
    row = pd.read_parquet(path).values[0][:N_INPUTS]
    dtype = row[3:].dtype
    return {"types": [type(v).__name__ for v in row], "dtype": str(dtype),
            "values": [float(v) for v in row]}


FEATURES = list(SPEC.features)


@pytest.mark.parametrize("casts, options, object_rows", [
    # the review's repro: a nullable Int8 need flag, every other column plain
    ({"need_prediction": "Int8"}, {}, True),
    # nullable Int64 ids and steps, Float32 features, an int need flag
    ({"seq_ix": "Int64", "step_in_seq": "Int64", "need_prediction": "int64"}
     | dict.fromkeys(FEATURES, "Float32"), {}, True),
    # all plain float64 (the need flag int64) but one nullable Float64 feature
    ({"seq_ix": "float64", "step_in_seq": "float64", "need_prediction": "int64"}
     | dict.fromkeys(FEATURES, "float64") | {"t0": "float64", "t1": "float64", "v3": "Float64"},
     {}, True),
    # a pyarrow-backed int need flag beside plain numpy columns
    ({"need_prediction": "int64[pyarrow]"}, {}, True),
    # pandas' convert_dtypes (a boolean need flag: object rows by the bool alone)
    ({}, {"convert": "numpy_nullable"}, True),
    # plain numpy dtypes, numbers only: one float64 array, as before
    ({"need_prediction": "int8"}, {}, False),
    # the competition's own dtypes (bool need flag): object rows, as before
    ({}, {}, True),
])
def test_rows_are_typed_as_pandas_reads_the_files_extension_dtypes(tmp_path, casts, options,
                                                                   object_rows):
    """A file pandas wrote with nullable (Int8, Int64, Float32, Float64) or pyarrow-backed
    columns reads back in pandas with those dtypes, and its DataFrame.values is an object array
    of Python ints and floats; kit typed the rows from the Parquet dtypes alone and fed plain
    float64 rows the scorer never gives."""
    data = pandas_written(tmp_path, casts, **options)
    expected = pandas_row(data)
    assert (expected["dtype"] == "object") == object_rows  # the oracle, as the case says
    sub = write_sub(tmp_path, AS_PANDAS, **{"expected.json": json.dumps(expected)})
    assert score(sub, data).score == 0.0


def test_a_polars_file_has_no_pandas_metadata_and_is_typed_by_its_arrow_types(tmp_path):
    """Polars writes no pandas metadata: pandas reads the Arrow types (int ids, Int8 flag,
    float32 features -> one float64 array), as kit typed them already."""
    data = tmp_path / "data.parquet"
    make_frame(SPEC, n_seqs=2).with_columns(pl.col("need_prediction").cast(pl.Int8)) \
        .write_parquet(data)
    expected = pandas_row(data)
    assert expected["dtype"] == "float64"
    sub = write_sub(tmp_path, AS_PANDAS, **{"expected.json": json.dumps(expected)})
    assert score(sub, data).score == 0.0


def test_a_solution_that_breaks_on_object_rows_fails_on_a_nullable_int8_flag(tmp_path):
    """The review's repro: `kit score` passed it on float64 rows, the scorer raised; and the
    projected memory counted 8 bytes a value where the scorer holds a Python object each."""
    data = pandas_written(tmp_path, {"need_prediction": "Int8"})
    with pytest.raises(SubmissionError, match=r"row 0.*TypeError"):
        score(write_sub(tmp_path, NEEDS_NUMBERS), data)
    typed = write_sub(tmp_path, AS_PANDAS, "typed",
                      **{"expected.json": json.dumps(pandas_row(data))})
    result = score(typed, data)
    float64_rows = result.rows * N_INPUTS * 8
    assert result.sandbox["rows_mb"] * 2**20 > 3 * float64_rows  # objects, not float64 rows


# --- the spec's columns at their positions ------------------------------------------------------


def write_frame(tmp_path: Path, frame: pl.DataFrame, name: str = "data.parquet") -> Path:
    path = tmp_path / name
    frame.write_parquet(path)
    return path


def position_warnings(sub: Path, data: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score(sub, data)
    return [str(w.message) for w in caught if "by position" in str(w.message)]


ZEROS = """\
import numpy as np


class PredictionModel:
    def predict(self, dp):
        return np.zeros(2) if dp.need_prediction else None
"""


def test_an_extra_column_before_the_spec_columns_is_warned_of_as_shifting_positions(tmp_path):
    """A `row_id` first shifts every column the scorer reads by position, as a reorder does;
    kit score, reading by name, said nothing."""
    frame = make_frame(SPEC, n_seqs=2)
    sub = write_sub(tmp_path, ZEROS)
    first = write_frame(tmp_path, frame.with_row_index("row_id"), "first.parquet")
    said = position_warnings(sub, first)
    assert len(said) == 1
    assert "column(s) not in the spec come before or among the spec's columns in the file " \
           "(row_id)" in said[0]
    assert "would take column 0 ('row_id') as the spec's 'seq_ix'" in said[0]
    # between the inputs and the targets: the scorer's labels (row[N_INPUTS:]) shift
    among = frame.select(*SPEC.input_columns, pl.lit(0).alias("group"), *SPEC.targets)
    said = position_warnings(sub, write_frame(tmp_path, among, "among.parquet"))
    assert len(said) == 1 and f"column {N_INPUTS} ('group') as the spec's 't0'" in said[0]


def test_extra_columns_after_the_spec_columns_shift_nothing_and_are_not_warned_of(tmp_path):
    frame = make_frame(SPEC, n_seqs=2).with_columns(pl.lit(1).alias("group"))
    assert position_warnings(write_sub(tmp_path, ZEROS),
                             write_frame(tmp_path, frame)) == []


def test_reordered_spec_columns_are_still_warned_of(tmp_path):
    frame = make_frame(SPEC, n_seqs=2)
    swapped = frame.select(SPEC.step_col, SPEC.id_col, *frame.columns[2:])
    said = position_warnings(write_sub(tmp_path, ZEROS), write_frame(tmp_path, swapped))
    assert len(said) == 1 and "in another order in the file (step_in_seq, seq_ix" in said[0]


def test_data_check_allow_extra_says_when_an_extra_column_shifts_the_spec_columns(tmp_path):
    frame = make_frame(SPEC, n_seqs=2)
    first = write_frame(tmp_path, frame.with_row_index("row_id"), "first.parquet")
    (said,) = check_file(first, SPEC, extra_ok=True).warnings
    assert "row_id come(s) before spec columns" in said
    assert "keep extra columns after the spec's" in said
    last = write_frame(tmp_path, frame.with_columns(pl.lit(1).alias("group")), "last.parquet")
    (said,) = check_file(last, SPEC, extra_ok=True).warnings
    assert "before spec columns" not in said


# --- refusals that say what to do ---------------------------------------------------------------


def test_a_float_need_flag_is_refused_with_the_cast_that_fixes_it():
    frame = make_frame(SPEC, n_seqs=2)
    floats = frame.with_columns(pl.col("need_prediction").cast(pl.Float64))
    cast = 'pl.col(\'need_prediction\').cast(pl.Int8)'
    with pytest.raises(DataError, match=r"found Float64; flags that hold only 0\.0 and 1\.0: "
                                        r"cast them to integers first, e\.g\. "
                       + cast.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_frame(floats, SPEC)
    with pytest.raises(DataError, match=r"found Float64; flags that hold only 0\.0 and 1\.0"):
        need_flags(floats, "need_prediction")
    check_frame(floats.with_columns(pl.col("need_prediction").cast(pl.Int8)), SPEC)  # the fix


def test_a_datetime_step_is_refused_with_the_rank_that_numbers_it():
    frame = make_frame(SPEC, n_seqs=2)
    timed = frame.with_columns(
        (pl.datetime(2024, 1, 1) + pl.duration(minutes=pl.col("step_in_seq") * 5))
        .alias("step_in_seq"))
    with pytest.raises(DataError, match=r"found Datetime.*; number the steps 0, 1, 2, \.\.\. "
                                        r"within each sequence instead, e\.g\. \(pl\.col\("
                                        r"'step_in_seq'\)\.rank\(\"ordinal\"\)\.over\('seq_ix'\)"
                                        r" - 1\)\.cast\(pl\.Int64\)"):
        check_frame(timed, SPEC)
    fixed = timed.with_columns(  # the hint, as written
        (pl.col("step_in_seq").rank("ordinal").over("seq_ix") - 1).cast(pl.Int64))
    check_frame(fixed, SPEC)
    assert fixed["step_in_seq"].to_list() == frame["step_in_seq"].to_list()


def test_a_folder_of_parquet_parts_is_refused_with_how_to_combine_it(tmp_path):
    """A hive-partitioned dataset (pyarrow's, which moves seq_ix out of the files) and a
    folder of part files: the hint, run as written, makes the one file kit takes."""
    pq = pytest.importorskip("pyarrow.parquet")
    frame = make_frame(SPEC, n_seqs=12)  # seq_ix=10 sorts before seq_ix=2
    hive = tmp_path / "hive"
    pq.write_to_dataset(frame.to_arrow(), str(hive), partition_cols=[SPEC.id_col])
    parts = tmp_path / "parts"
    parts.mkdir()
    frame.head(60).write_parquet(parts / "part-0.parquet")
    frame.slice(60).write_parquet(parts / "part-1.parquet")
    opening = {hive: "To combine the parts of this partitioned data set into one: ",
               parts: f"It holds part-0.parquet, part-1.parquet: pass one of them (e.g. "
                      f"{parts / 'part-0.parquet'}), or, if they are parts of one data set, "
                      "combine them into one: "}
    for folder in (hive, parts):
        with pytest.raises(DataError) as refused:
            file_schema(folder)
        said = str(refused.value)
        assert said.startswith(f"{folder}: is a folder; pass a .parquet file. {opening[folder]}"
                               f"polars.read_parquet(\"{folder}/**/*.parquet\", "
                               "hive_partitioning=True).select(SPEC_COLUMNS).sort(ID, STEP)")
        assert ("partition column in the folder names" in said) == (folder is hive)
        one = tmp_path / f"{folder.name}.parquet"
        (pl.read_parquet(f"{folder}/**/*.parquet", hive_partitioning=True)
         .select(SPEC.columns).sort(SPEC.id_col, SPEC.step_col).write_parquet(one))
        check_file(one, SPEC)
        assert pl.read_parquet(one).equals(frame)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: is a folder; pass a \.parquet file$"):
        file_schema(empty)


def test_a_training_data_folder_gets_the_same_hint(tmp_path):
    """kit train's check of data.train said "is a folder" without how to combine it."""
    from kit.train.data import check_data_files

    parts = tmp_path / "parts"
    parts.mkdir()
    make_frame(SPEC, n_seqs=2).write_parquet(parts / "part-0.parquet")
    data = {"train": str(parts), "valid": str(parts), "split": "file", "fold": None}
    with pytest.raises(DataError, match=r"data\.train = .*parts': is a folder; pass a \.parquet "
                                        r"file\. It holds part-0\.parquet: pass one of them"):
        check_data_files(data)
