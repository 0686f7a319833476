import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kit.competition import load_spec
from kit.data.contract import check_file, check_frame
from kit.errors import DataError
from tests.cli import run_cli
from tests.frames import make_frame, small_spec

SPEC = small_spec(seq_len=20, warmup=5)


def write_spec(tmp_path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(
        'name = "tiny"\nfeatures = ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"]\n'
        'targets = ["t0", "t1"]\nseq_len = 20\nwarmup = 5\n'
    )
    return str(path)


def test_valid_file_reports_everything(tmp_path):
    df = make_frame(SPEC, n_seqs=4)
    df = df.with_columns(
        pl.when(pl.col("step_in_seq") == 7).then(float("nan")).otherwise(pl.col("p3")).alias("p3"),
        pl.when(pl.col("step_in_seq") == 8).then(float("inf")).otherwise(pl.col("v1")).alias("v1"),
    )
    path = tmp_path / "ok.parquet"
    df.write_parquet(path)
    report = check_file(path, SPEC)
    assert report.rows == 80 and report.sequences == 4 and report.labelled
    assert report.length_histogram == {"20": 4}
    assert report.nan_counts["p3"] == 4 and report.inf_counts["v1"] == 4
    assert report.nan_counts["p0"] == 0
    assert report.need_rows == 4 * 15
    assert set(report.target_summary) == {"t0", "t1"}
    assert report.dtypes["need_prediction"] == "Boolean"
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path)).output
    assert "rows 80" in out and "sequences 4" in out and "p3" in out and "matches the rule" in out
    as_json = json.loads(run_cli("data", "check", path, "--spec", write_spec(tmp_path),
                                 "--json").output)
    assert as_json["nan_counts"]["p3"] == 4


def test_the_need_flag_is_named_by_the_spec_s_column(tmp_path):
    spec = small_spec(seq_len=20, warmup=5, need_col="score_me")
    frame = make_frame(spec, n_seqs=2)
    assert "score_me: 30 rows (true from step 5 to the end)" in check_frame(frame, spec).format()
    broken = frame.with_columns(pl.col("score_me") | (pl.col("step_in_seq") == 2))
    with pytest.raises(DataError, match=r"score_me breaks the rule \(true from step 5"):
        check_frame(broken, spec)


def test_just_check_reads_a_relative_path_from_where_it_is_called(tmp_path):
    """The recipes ran in the justfile's folder: `just check mine.parquet` in another folder
    said "no such file", and `just check ../x.parquet` checked another file than kit would.
    The project's verbs still run there, so `just params exp=...` works from a subfolder."""
    just = shutil.which("just")
    if just is None:  # `pip install -e ".[dev]"` installs it (rust-just); CI always has it
        pytest.skip("the just runner is not installed")
    here = tmp_path / "sub"
    here.mkdir()
    make_frame(SPEC, n_seqs=2).write_parquet(here / "mine.parquet")
    justfile = Path(__file__).resolve().parents[1] / "justfile"
    done = subprocess.run([just, "--justfile", str(justfile), "check", "mine.parquet", "--spec",
                           write_spec(tmp_path)], cwd=here, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "mine.parquet" in done.stdout and "rows 40" in done.stdout
    # a project verb runs in the project's folder from anywhere: its experiments/ are found
    done = subprocess.run([just, "--justfile", str(justfile), "params", "exp=gru_base"],
                          cwd=here, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gru_base:" in done.stdout and "parameters" in done.stdout
    # ensemble select takes run folders too: named from here (r269: from the project's folder)
    done = subprocess.run([just, "--justfile", str(justfile), "ensemble", "select", "nowhere"],
                          cwd=here, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and str(here / "nowhere") in done.stderr, done.stderr


def test_data_check_json_is_a_json_object_for_a_file_it_cannot_read(tmp_path):
    """A script reading `.ok` got an empty stdout for a missing or truncated file."""
    make_frame(SPEC, n_seqs=2).write_parquet(tmp_path / "ok.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "ok.parquet").read_bytes()[:300])
    for name in ("missing.parquet", "cut.parquet"):
        done = run_cli("data", "check", tmp_path / name, "--spec", write_spec(tmp_path),
                       "--json", expect=2)
        doc = json.loads(done.stdout)
        assert doc["ok"] is False and name in doc["problems"][0], doc


def test_a_pandas_index_column_is_not_a_column_of_the_data(tmp_path):
    """`df[mask].to_parquet()` stores the index as __index_level_0__; pandas' read_parquet
    (the scorer's) makes it the index again, so the file meets the contract there."""
    frame = make_frame(SPEC, n_seqs=4).to_pandas()
    path = tmp_path / "split.parquet"
    frame[frame["seq_ix"] % 2 == 0].to_parquet(path)
    assert "__index_level_0__" in pl.read_parquet_schema(path)
    report = check_file(path, SPEC)
    assert report.rows == 40 and report.sequences == 2
    # a column of that name the file's metadata does not call an index is still one
    pl.read_parquet(path).write_parquet(tmp_path / "kept.parquet")
    with pytest.raises(DataError, match="unexpected column"):
        check_file(tmp_path / "kept.parquet", SPEC)


def test_spec_columns_stored_as_the_pandas_index_are_refused_by_every_reader(tmp_path):
    """df.set_index(["seq_ix", "step_in_seq"]).to_parquet(): the scorer's pandas makes them
    the index, so its rows start with need_prediction. kit data check said "missing column(s)",
    while training, the feature build and kit score read them by name and scored the file."""
    from kit.data.io import spec_columns_in
    from kit.data.stats import dataset_stats
    from kit.scoring.score import load_rows

    path = tmp_path / "indexed.parquet"
    make_frame(SPEC, n_seqs=4).to_pandas().set_index(["seq_ix", "step_in_seq"]).to_parquet(path)
    said = r"column\(s\) \['seq_ix', 'step_in_seq'\] are stored as the pandas index.*reset_index"
    for read in (lambda: check_file(path, SPEC), lambda: spec_columns_in(path, SPEC),
                 lambda: load_rows(path, SPEC, None), lambda: dataset_stats(path, SPEC)):
        with pytest.raises(DataError, match=said):
            read()


def test_kit_score_leaves_an_extra_column_alone_as_check_allow_extra_says(tmp_path):
    """A column Polars cannot decode (a 50-digit decimal) beside the spec's: kit data check
    --allow-extra said kit score leaves such columns alone, and kit score called the file
    corrupt ("re-download or regenerate it")."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from kit.scoring.score import load_rows

    plain, odd = tmp_path / "plain.parquet", tmp_path / "odd.parquet"
    make_frame(SPEC, n_seqs=3).write_parquet(plain)
    table = pq.read_table(plain)
    wide = pa.array([decimal.Decimal("1.5")] * table.num_rows, pa.decimal256(50, 2))
    pq.write_table(table.append_column("x", wide), odd)
    assert check_file(odd, SPEC, extra_ok=True).rows == table.num_rows
    ours, theirs = load_rows(odd, SPEC, None), load_rows(plain, SPEC, None)
    np.testing.assert_array_equal(ours.values, theirs.values)
    np.testing.assert_array_equal(ours.truth, theirs.truth)


def test_float16_ids_follow_the_float_id_rule_everywhere(tmp_path):
    """Float16 ids were refused by kit data check and kit score ("must be integer", though
    float32 ids pass) while training read them, and a 4.5 id was truncated to 4: two
    sequences merged into one, then named as duplicate (id, step) pairs."""
    from kit.data.arrays import build_arrays
    from kit.scoring.score import load_rows

    frame = make_frame(SPEC, n_seqs=3)
    whole = tmp_path / "whole.parquet"
    frame.with_columns(pl.col("seq_ix").cast(pl.Float16)).write_parquet(whole)
    assert check_file(whole, SPEC).rows == frame.height
    assert len(load_rows(whole, SPEC, None).values) == frame.height
    half = frame.with_columns(pl.when(pl.col("seq_ix") == 2).then(1.5)
                              .otherwise(pl.col("seq_ix")).cast(pl.Float16).alias("seq_ix"))
    half.write_parquet(tmp_path / "half.parquet")
    said = r"column 'seq_ix' has 20 null or non-integral value\(s\)"
    with pytest.raises(DataError, match=said):
        check_file(tmp_path / "half.parquet", SPEC)
    with pytest.raises(DataError, match=said):
        build_arrays(half, SPEC, list(SPEC.features))
    with pytest.raises(DataError, match=said):
        load_rows(tmp_path / "half.parquet", SPEC, None)


def test_paths_with_glob_characters_are_paths(tmp_path):
    """Polars reads a path as a glob pattern by default: `run [1]` matched nothing."""
    from kit.data.stats import dataset_stats
    from kit.features import build_feature_set, feature_arrays

    path = tmp_path / "run [1] *" / "ok.parquet"
    path.parent.mkdir()
    make_frame(SPEC, n_seqs=2).write_parquet(path)
    assert check_file(path, SPEC).rows == 40
    assert dataset_stats(path, SPEC)["rows"] == 40
    arrays = feature_arrays(path, build_feature_set(SPEC, ["raw"]), cache_dir=tmp_path / "c")
    assert arrays.x.shape == (2, 20, 32)


def test_accepts_int8_flags_float64_features_and_unlabelled_files():
    df = make_frame(SPEC).with_columns(
        pl.col("need_prediction").cast(pl.Int8), pl.col("p0", "v5").cast(pl.Float64)
    )
    assert check_frame(df, SPEC).need_rows == 45
    report = check_frame(df.drop("t0", "t1"), SPEC)
    assert not report.labelled and report.target_summary == {}


def test_variable_length_spec_accepts_ragged_sequences():
    spec = small_spec(seq_len=None, warmup=2)
    df = make_frame(spec, lengths=[5, 9, 3])
    report = check_frame(df, spec)
    assert report.length_histogram == {"3": 1, "5": 1, "9": 1}


def _swap(df, a, b):
    cols = df.columns
    i, j = cols.index(a), cols.index(b)
    cols[i], cols[j] = cols[j], cols[i]
    return df.select(cols)


def _set_at(df, col, row, value):
    values = df[col].to_list()
    values[row] = value
    return df.with_columns(pl.Series(col, values, dtype=df.schema[col]))


BAD_FRAMES = {
    "missing column": (lambda df: df.drop("v3"), "missing column\\(s\\): v3"),
    "extra column": (lambda df: df.with_columns(pl.lit(1.0).alias("extra")),
                     "unexpected column\\(s\\): extra"),
    "wrong order": (lambda df: _swap(df, "p1", "p2"), "position 4 holds 'p2'"),
    "duplicate id/step": (lambda df: _set_at(df, "step_in_seq", 3, 2),
                          "duplicate \\(seq_ix, step_in_seq\\).*seq 0, step 2"),
    "steps out of order": (lambda df: pl.concat([df[:3], df[4:5], df[3:4], df[5:]]),
                           "out of order.*seq 0 step 3"),
    "gap in steps": (lambda df: pl.concat([df[:3], df[4:]]), "gap.*seq 0: step 2 -> 4"),
    "wrong length": (lambda df: df.filter((pl.col("seq_ix") != 2) | (pl.col("step_in_seq") < 19)),
                     "seq 2 has 19"),
    "need rule": (lambda df: _set_at(df, "need_prediction", 2, True),
                  "need_prediction breaks the rule.*seq 0 step 2"),
    "flag not 0/1": (lambda df: df.with_columns(pl.col("need_prediction").cast(pl.Int8) * 2),
                     "'need_prediction' has .* neither 0/1 nor true/false"),
    "text feature": (lambda df: df.with_columns(pl.col("dp1").cast(pl.String)),
                     "'dp1' must be numeric.*String"),
    "not contiguous": (lambda df: pl.concat([df[:10], df[20:40], df[10:20], df[40:]]),
                       "not contiguous.*seq 0"),
    "null id": (lambda df: _set_at(df, "seq_ix", 5, None), "'seq_ix' has 1 null"),
    # a cast would truncate 1.5 to 1: a fractional step or id is reported, not rounded
    "fractional step": (lambda df: _set_at(df.with_columns(pl.col("step_in_seq").cast(
        pl.Float64)), "step_in_seq", 1, 1.5), "'step_in_seq' has 1 null or non-integral"),
    "fractional id": (lambda df: _set_at(df.with_columns(pl.col("seq_ix").cast(pl.Float64)),
                                         "seq_ix", 0, 0.5), "'seq_ix' has 1 null or non-integral"),
    "decimal feature": (lambda df: df.with_columns(pl.col("dp1").cast(pl.Decimal(10, 3))),
                        "'dp1' must be numeric.*Decimal"),
    "does not start at 0": (lambda df: df.filter(pl.col("step_in_seq") != 0),
                            "do not start at step 0"),
    # steps -1..18, flags by the rule: every start but step 0 is wrong, not only those past it
    "starts before step 0": (lambda df: df.with_columns(
        pl.when(pl.col("seq_ix") == 0).then(pl.col("step_in_seq") - 1)
        .otherwise(pl.col("step_in_seq")).alias("step_in_seq")).with_columns(
        (pl.col("step_in_seq") >= 5).alias("need_prediction")), "seq 0 starts at step -1"),
    # a Float64 flag: the contract's message, not Polars' error comparing floats with 0/1
    "float flag": (lambda df: df.with_columns(pl.col("need_prediction").cast(pl.Float64)),
                   "'need_prediction' must be bool or integer 0/1, found Float64"),
}


def test_bad_keys_and_flags_are_named_by_row(tmp_path):
    """A null or fractional id, a step past int64 and a need flag of 2 were only counted: one
    bad value among millions of rows was left to be found by hand (and kit data stats sent the
    user to kit data check for rows it did not list)."""
    df = make_frame(SPEC)
    df = _set_at(df.with_columns(pl.col("seq_ix").cast(pl.Float64)), "seq_ix", 7, 0.5)
    df = _set_at(df.with_columns(pl.col("need_prediction").cast(pl.Int8)), "need_prediction",
                 11, 2)
    for row in (1, 2, 3, 4, 6, 9):
        df = _set_at(df, "seq_ix", row, None)
    df = df.with_columns(pl.col("step_in_seq").cast(pl.UInt64))
    df = _set_at(df, "step_in_seq", 4, 2**63 + 5)
    path = tmp_path / "bad.parquet"
    df.write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), "--json", expect=2)
    assert json.loads(out.stdout)["problems"] == [
        "column 'seq_ix' has 7 null or non-integral value(s): row 1 (None), row 2 (None), "
        "row 3 (None), row 4 (None), row 6 (None), ...",
        "column 'step_in_seq' has 1 value(s) outside int64's range (-2**63 to 2**63 - 1): "
        "row 4 (9223372036854775813); kit holds ids and steps as int64: renumber them",
        "column 'need_prediction' has 1 value(s) that are neither 0/1 nor true/false (nulls "
        "included): row 11 (2)"]
    out = run_cli("data", "stats", path, "--spec", write_spec(tmp_path), expect=2)
    assert "row 7 (0.5)" not in out.stderr and "row 1 (None)" in out.stderr
    assert "kit data check" not in out.stderr


def test_check_json_lists_the_problems_of_a_failing_file(tmp_path):
    path = tmp_path / "bad.parquet"
    BAD_FRAMES["null id"][0](make_frame(SPEC)).write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), "--json", expect=2)
    doc = json.loads(out.stdout)  # the problems as JSON; the error line goes to stderr
    assert doc["ok"] is False and doc["path"] == str(path)
    assert doc["problems"] == ["column 'seq_ix' has 1 null or non-integral value(s): row 5 (None)"]
    # a file with no rows: plain stderr, nothing for the script reading stdout
    make_frame(SPEC).head(0).write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), "--json", expect=2)
    assert json.loads(out.stdout)["problems"] == ["the file has no rows"]
    good = tmp_path / "good.parquet"
    make_frame(SPEC).write_parquet(good)
    out = run_cli("data", "check", good, "--spec", write_spec(tmp_path), "--json").output
    assert json.loads(out)["ok"] is True


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_each_contract_violation_is_named(tmp_path, case):
    edit, message = BAD_FRAMES[case]
    df = edit(make_frame(SPEC))
    with pytest.raises(DataError, match=message):
        check_frame(df, SPEC)
    path = tmp_path / "bad.parquet"
    df.write_parquet(path)
    result = run_cli("data", "check", path, "--spec", write_spec(tmp_path), expect=2)
    assert "breaks the competition contract" in result.output
    assert "Traceback" not in result.output


def test_allow_extra_accepts_a_train_files_group_column_in_any_place(tmp_path):
    """kit train reads a group column (data.group) from the train file, and kit score reads the
    spec's columns by name: --allow-extra checks such a file, the extra column a warning."""
    df = make_frame(SPEC, n_seqs=4)
    users = df.with_columns((pl.col("seq_ix") % 2).alias("user_id"))
    moved = users.select("user_id", *df.columns)  # first, before the id
    for frame in (users, moved):
        with pytest.raises(DataError, match=r"unexpected column\(s\): user_id \(a train file "
                           r"may keep others, e.g. for data.group: check it with --allow-extra"):
            check_frame(frame, SPEC)
        report = check_frame(frame, SPEC, extra_ok=True)
        # (first, it shifts the spec's columns the scorer reads by position: said too, r304)
        shifted = ("; user_id come(s) before spec columns, which the competition's scorer, "
                   "reading each row by position, would then read as others: keep extra "
                   "columns after the spec's") if frame is moved else ""
        assert report.warnings == ["column(s) not in the spec: user_id; kit train and kit score "
                                   "read the spec's columns by name and leave these alone (the "
                                   "competition's own files have none)" + shifted]
    # the spec's own columns still keep their order, and every other check still holds
    with pytest.raises(DataError, match="position 4 holds 'p2'"):
        check_frame(_swap(users, "p1", "p2"), SPEC, extra_ok=True)
    with pytest.raises(DataError, match="gap"):
        check_frame(pl.concat([users[:3], users[4:]]), SPEC, extra_ok=True)
    path = tmp_path / "users.parquet"
    moved.write_parquet(path)
    run_cli("data", "check", path, "--spec", write_spec(tmp_path), expect=2)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), "--allow-extra").output
    assert "warning: column(s) not in the spec: user_id" in out


def test_allow_extra_still_needs_every_target_of_a_labelled_file(tmp_path):
    """A file with t0 but not t1 is labelled and lacks t1: read as unlabelled, --allow-extra
    took t0 for an extra column and passed the file."""
    df = make_frame(SPEC).drop("t1")
    for extra_ok in (False, True):
        with pytest.raises(DataError, match=r"missing column\(s\): t1$"):
            check_frame(df, SPEC, extra_ok=extra_ok)
    path = tmp_path / "half.parquet"
    df.write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), "--allow-extra",
                  expect=2).output
    assert "missing column(s): t1" in out and "Traceback" not in out


def test_a_file_where_no_row_needs_a_prediction_is_refused(tmp_path):
    """Every sequence within the warm-up: kit score and training refuse such a file, so the
    check does too (it said "matches the rule" and exited 0)."""
    ragged = small_spec(seq_len=None, warmup=5)
    df = make_frame(ragged, lengths=[3, 5, 4])
    assert not df["need_prediction"].any()
    with pytest.raises(DataError, match=r"no row needs a prediction \(true from step 5 to the "
                       r"end; the longest sequence has 5 steps\)"):
        check_frame(df, ragged)
    check_frame(make_frame(ragged, lengths=[3, 6, 4]), ragged)  # one scored row is enough


def test_a_shuffled_file_is_told_to_sort_not_given_thousands_of_findings():
    df = make_frame(SPEC).sample(fraction=1.0, shuffle=True, seed=3)
    with pytest.raises(DataError) as err:
        check_frame(df, SPEC)
    said = str(err.value)
    assert "not contiguous; sort by (seq_ix, step_in_seq)" in said
    assert "start at step 0" not in said and "gap" not in said and "out of order" not in said


def test_predictorium_wrong_length_is_reported():
    spec = load_spec("predictorium")
    df = make_frame(spec, lengths=[1000, 999])
    with pytest.raises(DataError, match="seq 1 has 999"):
        check_frame(df, spec)


def test_truncated_and_corrupt_parquet_get_clear_errors(tmp_path):
    good = tmp_path / "good.parquet"
    make_frame(SPEC, n_seqs=50).write_parquet(good)
    data = good.read_bytes()
    cases = {
        "truncated.parquet": data[: len(data) // 2],
        "garbage.parquet": b"not a parquet file at all" * 10,
        "empty.parquet": b"",
        "scrambled.parquet": data[:8] + bytes(np.random.default_rng(0).integers(
            0, 255, len(data) - 16, dtype=np.uint8)) + data[-8:],
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(DataError, match=str(path)):
            check_file(path, SPEC)
        result = run_cli("data", "check", path, "--spec", write_spec(tmp_path), expect=2)
        assert "error:" in result.output and "Traceback" not in result.output
    result = run_cli("data", "check", tmp_path / "nope.parquet", expect=2)
    assert "no such file" in result.output
    make_frame(SPEC).write_csv(tmp_path / "v.csv")  # not parquet at all: told to convert it
    result = run_cli("data", "check", tmp_path / "v.csv", expect=2)
    assert "not a parquet file" in result.output and "polars.read_csv" in result.output
    make_frame(SPEC).write_ipc(tmp_path / "v.parquet")  # Feather named .parquet: read_ipc
    result = run_cli("data", "check", tmp_path / "v.parquet", expect=2)
    assert "an Arrow IPC (Feather) file" in result.output and "polars.read_ipc" in result.output
    truncated = run_cli("data", "check", tmp_path / "truncated.parquet", expect=2).output
    assert "not a readable parquet file" in truncated  # damaged parquet: the other message


@pytest.mark.parametrize("variable", [False, True])
def test_the_need_rule_is_checked_beside_gaps_and_lengths(variable):
    # one pass lists every problem: a need_prediction error is not hidden behind a gap
    spec = small_spec(seq_len=None if variable else 20, warmup=5, tail=2)
    df = _set_at(make_frame(spec, lengths=[20, 20]), "need_prediction", 2, True)
    df = pl.concat([df[:7], df[8:]])  # seq 0 loses step 7
    with pytest.raises(DataError) as info:
        check_frame(df, spec)
    problems = info.value.problems
    assert any("gap" in p and "step 6 -> 8" in p for p in problems)
    need = [p for p in problems if "need_prediction breaks the rule" in p]
    # the rule's end is the sequence's own (step 17 is still scored): only the real error
    assert len(need) == 1 and "on 1 row(s): seq 0 step 2" in need[0]



def test_a_short_sequence_ends_at_its_own_last_step_for_the_need_rule():
    """A 12-step sequence of a 20-step spec with a tail of 1, flagged right (its last step
    unscored), was also said to break the need rule: the rule's end was the spec's length
    (r280). Its length is still named; a short sequence whose last step is flagged is not."""
    spec = small_spec(seq_len=20, warmup=5, tail=1)
    df = make_frame(spec, lengths=[20, 12])
    with pytest.raises(DataError) as info:
        check_frame(df, spec)
    assert not [p for p in info.value.problems if "breaks the rule" in p], info.value.problems
    assert any("length" in p for p in info.value.problems), info.value.problems
    flagged = df.with_columns(pl.when((pl.col("seq_ix") == 1) & (pl.col("step_in_seq") == 11))
                              .then(True).otherwise(pl.col("need_prediction"))
                              .alias("need_prediction"))
    with pytest.raises(DataError, match=r"breaks the rule .* seq 1 step 11 has true"):
        check_frame(flagged, spec)

def test_a_file_of_another_competition_is_named_as_such():
    other = make_frame(SPEC).rename(lambda c: f"x_{c}")
    with pytest.raises(DataError, match="none of the feature columns of spec 'tiny' is in the "
                       "file: is it another competition's. Pass --spec NAME"):
        check_frame(other, SPEC)
    # keys named as this spec's (competitions share them), features all another's (r265)
    keys = [SPEC.id_col, SPEC.step_col, SPEC.need_col]
    other = make_frame(SPEC).rename(lambda c: c if c in keys else f"x_{c}")
    with pytest.raises(DataError, match="none of the feature columns of spec 'tiny'.*--spec NAME"):
        check_frame(other, SPEC)
    with pytest.raises(DataError) as info:  # one missing column is no such case
        check_frame(make_frame(SPEC).drop("v3"), SPEC)
    assert "none of the feature columns" not in str(info.value)


def test_a_file_and_its_frame_give_the_same_report(tmp_path):
    """check_file reads only the keys and streams the values; check_frame has the frame."""
    df = make_frame(SPEC, n_seqs=6).with_columns(
        pl.when(pl.col("step_in_seq") == 3).then(None).otherwise(pl.col("p1")).alias("p1"))
    path = tmp_path / "ok.parquet"
    df.write_parquet(path)
    from_file, from_frame = check_file(path, SPEC).to_dict(), check_frame(df, SPEC).to_dict()
    from_file.pop("path"), from_frame.pop("path")
    summaries = from_file.pop("target_summary"), from_frame.pop("target_summary")
    assert from_file == from_frame and from_file["null_counts"]["p1"] == 6
    for name, stats in summaries[0].items():  # the streaming engine sums in its own order
        assert stats == pytest.approx(summaries[1][name], rel=1e-12)
    values = df["t0"].cast(pl.Float64).to_numpy()
    summary = summaries[0]["t0"]
    assert summary["p99"] == pytest.approx(np.quantile(values, 0.99), rel=1e-12)
    assert summary["std"] == pytest.approx(values.std(), rel=1e-9)


def test_duplicates_are_found_apart_or_together():
    # the grouping that lists them runs only when steps fall back or rows are apart
    together = _set_at(make_frame(SPEC), "step_in_seq", 3, 2)  # 0 1 2 2 4
    apart = _set_at(make_frame(SPEC), "step_in_seq", 4, 1)  # 0 1 2 3 1 5
    for df, pair in ((together, "seq 0, step 2"), (apart, "seq 0, step 1")):
        with pytest.raises(DataError, match=f"duplicate .*{pair}"):
            check_frame(df, SPEC)


def test_swapped_rows_are_out_of_order_not_gaps():
    df = make_frame(SPEC)
    swapped = pl.concat([df[:10], df[11:12], df[10:11], df[12:]])  # steps 9, 11, 10, 12
    with pytest.raises(DataError) as info:
        check_frame(swapped, SPEC)
    assert any("out of order" in p for p in info.value.problems)
    assert not any("gap" in p for p in info.value.problems)
    # a step that is missing as well is still named (steps 0, 2, 1, 4: 3 is missing)
    spec = small_spec(seq_len=None, warmup=0)
    df = make_frame(spec, lengths=[6])
    both = pl.concat([df[0:1], df[2:3], df[1:2], df[4:]])
    with pytest.raises(DataError) as info:
        check_frame(both, spec)
    assert any("gap(s) in step numbering: seq 0: 1 step(s) missing" in p
               for p in info.value.problems)


def test_non_finite_targets_warn_by_whether_they_are_scored():
    df = make_frame(SPEC)
    warmup = _set_at(df, "t0", 2, float("nan"))  # step 2 < warm-up 5: never scored
    [said] = check_frame(warmup, SPEC).warnings
    assert "only on rows that need no prediction" in said and "unaffected" in said
    scored = _set_at(_set_at(df, "t1", 7, float("inf")), "t1", 8, None)
    [said] = check_frame(scored, SPEC).warnings
    assert "'t1' has non-finite values on 2 scored row(s): the metric will be NaN or inf" in said


def test_values_past_float32s_range_count_as_inf():
    """kit reads values as float32, where 1e300 is inf (the guard replaces it, training refuses
    it in a target): kit data check counts it so, not 'non-finite values: none'."""
    df = make_frame(SPEC).with_columns(pl.col("p0", "t0").cast(pl.Float64))
    report = check_frame(_set_at(_set_at(_set_at(df, "p0", 3, 1e300), "t0", 7, -1e300),
                                 "p0", 4, float("nan")), SPEC)
    assert report.inf_counts["p0"] == 1 and report.inf_counts["t0"] == 1
    assert "p0: 1 / 1 / 0" in report.format()  # the NaN is not an inf too
    [said] = report.warnings
    assert "'t0' has non-finite values on 1 scored row(s)" in said
    assert report.target_summary["t0"]["min"] > -1e300  # the summary is of finite values


def test_unreadable_value_data_and_repeated_names_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = make_frame(SPEC).to_arrow()
    twice = pa.table(table.columns, names=[*table.column_names[:-1], "p0"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    result = run_cli("data", "check", tmp_path / "twice.parquet", expect=2)
    assert "two columns have the same name" in result.output and "corrupt" not in result.output
    # a value page damaged after the key columns: the streaming pass names the file
    path = tmp_path / "late.parquet"
    pq.write_table(table, path, compression="snappy", use_dictionary=False)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    column = meta.column(meta.num_columns - 1)
    data = bytearray(path.read_bytes())
    start, size = column.data_page_offset, column.total_compressed_size
    data[start + 20:start + size - 4] = bytes(size - 24)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="late.parquet: the parquet footer reads but its data"):
        check_file(path, SPEC)


def test_read_frame_names_a_folder_an_empty_file_and_a_missing_column(tmp_path):
    from kit.data.io import file_schema, read_frame

    folder = tmp_path / "x.parquet"  # a folder: open() raised a bare IsADirectoryError
    folder.mkdir()
    for reader in (file_schema, read_frame):
        with pytest.raises(DataError, match=r"x.parquet: is a folder; pass a .parquet file"):
            reader(folder)
    empty = tmp_path / "empty.parquet"  # 0 bytes: said "not a parquet file", not why
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.parquet: file is empty \(0 bytes\)"):
        read_frame(empty)
    good = tmp_path / "good.parquet"  # a column it lacks: not called corrupt
    make_frame(SPEC).write_parquet(good)
    with pytest.raises(DataError, match=r"good.parquet: missing column\(s\) \['nope'\]$"):
        read_frame(good, ["seq_ix", "nope"])
    assert read_frame(good, ["seq_ix", "seq_ix"]).columns == ["seq_ix"]


def _problems(df, spec=SPEC) -> list[str]:
    with pytest.raises(DataError) as info:
        check_frame(df, spec)
    return info.value.problems


def test_a_sequence_longer_than_the_spec_s_length_is_refused():
    df = make_frame(SPEC)
    step_20 = df[19:20].with_columns(pl.lit(20, pl.Int64).alias("step_in_seq"),
                                     pl.lit(False).alias("need_prediction"))  # flags by the rule
    assert _problems(pl.concat([df[:20], step_20, df[20:]])) == [
        "1 sequence(s) do not have the spec's length 20: seq 0 has 21"]


def test_wrong_length_examples_are_the_lowest_ids():
    short = make_frame(SPEC, n_seqs=30).filter(pl.col("step_in_seq") < 19)
    assert _problems(short) == [
        "30 sequence(s) do not have the spec's length 20: seq 0 has 19, seq 1 has 19, "
        "seq 2 has 19, seq 3 has 19, seq 4 has 19"]


def test_int64_s_extremes_as_uint64_and_float_ids():
    """2**63 - 1 fits an int64 (a UInt64 id of it is an id); a float 2**63 is a whole number
    that no int64 holds (outside the range, not "non-integral")."""
    df = make_frame(SPEC, n_seqs=2).with_columns(pl.col("seq_ix").cast(pl.UInt64))
    top = df.with_columns(pl.when(pl.col("seq_ix") == 1).then(pl.lit(2**63 - 1, pl.UInt64))
                          .otherwise(pl.col("seq_ix")).alias("seq_ix"))
    report = check_frame(top, SPEC)
    assert report.sequences == 2 and report.rows == 40
    past = _set_at(make_frame(SPEC).with_columns(pl.col("seq_ix").cast(pl.Float64)), "seq_ix",
                   0, 2.0**63)
    assert _problems(past) == [
        "column 'seq_ix' has 1 value(s) outside int64's range (-2**63 to 2**63 - 1): row 0 "
        "(9.223372036854776e+18); kit holds ids and steps as int64: renumber them"]


def test_a_target_without_a_finite_value_is_warned_of_not_summarised():
    df = make_frame(SPEC).with_columns(pl.lit(float("nan")).cast(pl.Float32).alias("t1"))
    report = check_frame(df, SPEC)
    assert list(report.target_summary) == ["t0"] and report.nan_counts["t1"] == 60
    assert report.warnings == ["target 't1' has non-finite values on 45 scored row(s): the "
                               "metric will be NaN or inf"]


def test_float32_s_largest_value_is_finite():
    top = float(np.finfo(np.float32).max)
    df = make_frame(SPEC).with_columns(pl.col("p0").cast(pl.Float64))
    report = check_frame(_set_at(_set_at(df, "p0", 3, top), "p0", 4, -top), SPEC)
    assert report.inf_counts["p0"] == 0 and "non-finite values: none" in report.format()
    past = check_frame(_set_at(df, "p0", 3, float(np.nextafter(top, np.inf))), SPEC)
    assert past.inf_counts["p0"] == 1


def test_gaps_are_counted_with_missing_steps_and_listed_five_at_most():
    """Three sequences skip step 2 (0, 1, 3, ...), five have steps 0, 2, 1, 4, 5 (out of order
    and 3 missing): 8 gaps, the first five named."""
    spec = small_spec(seq_len=None, warmup=0)
    df = make_frame(spec, lengths=[6] * 8)
    parts = []
    for i in range(8):
        q = df.filter(pl.col("seq_ix") == i)
        parts += [q[0:1], q[2:3], q[1:2], q[4:]] if i >= 3 else [q[0:2], q[3:]]
    assert _problems(pl.concat(parts), spec) == [
        "steps out of order in 5 sequence(s); first in each: seq 3 step 1 (row 17), seq 4 step 1 "
        "(row 22), seq 5 step 1 (row 27), seq 6 step 1 (row 32), seq 7 step 1 (row 37)",
        "8 gap(s) in step numbering: seq 0: step 1 -> 3, seq 1: step 1 -> 3, seq 2: step 1 -> 3, "
        "seq 3: 1 step(s) missing, seq 4: 1 step(s) missing"]
    one = make_frame(spec, lengths=[6])
    assert _problems(pl.concat([one[0:1], one[2:3], one[1:2], one[4:]]), spec) == [
        "steps out of order in 1 sequence(s); first in each: seq 0 step 1 (row 2)",
        "1 gap(s) in step numbering: seq 0: 1 step(s) missing"]


def test_order_problems_name_their_rows_and_counts():
    df = make_frame(SPEC)
    assert _problems(pl.concat([df[:3], df[4:5], df[3:4], df[5:]])) == [
        "steps out of order in 1 sequence(s); first in each: seq 0 step 3 (row 4)"]
    # each sequence named once, at its first row out of order (r265: a reversed sequence
    # filled the list with its own rows and hid the others)
    two = make_frame(SPEC, n_seqs=3)
    rev = pl.concat([two.filter(pl.col("seq_ix") == 0).reverse(),
                     two.filter(pl.col("seq_ix") == 1),
                     two.filter(pl.col("seq_ix") == 2).reverse()])
    [order] = [p for p in _problems(rev) if p.startswith("steps out of order")]
    n = SPEC.seq_len
    assert order == (f"steps out of order in 2 sequence(s); first in each: seq 0 step {n - 2} "
                     f"(row 1), seq 2 step {n - 2} (row {2 * n + 1})"), order
    # a repeated step is a duplicate (counted), not a step out of order
    assert _problems(_set_at(_set_at(df, "step_in_seq", 3, 2), "step_in_seq", 4, 2)) == [
        "1 duplicate (seq_ix, step_in_seq) pair(s): (seq 0, step 2) x3",
        "1 gap(s) in step numbering: seq 0: step 2 -> 5"]
    # rows apart: each sequence named where it starts again, in the file's order
    four = make_frame(SPEC, n_seqs=4)
    apart = pl.concat([four[:10], four[20:30], four[70:80], four[10:20], four[30:70]])
    assert _problems(apart) == [
        "rows of 3 sequence(s) are not contiguous; sort by (seq_ix, step_in_seq): seq 0 (again "
        "at row 30), seq 1 (again at row 40), seq 3 (again at row 70)"]


def test_five_bad_ids_are_listed_without_an_ellipsis():
    df = make_frame(SPEC)
    for row in range(5):
        df = _set_at(df, "seq_ix", row, None)
    assert _problems(df) == [
        "column 'seq_ix' has 5 null or non-integral value(s): row 0 (None), row 1 (None), "
        "row 2 (None), row 3 (None), row 4 (None)"]


def test_the_report_s_summary_and_printed_sections():
    spec = small_spec(seq_len=None, warmup=2)
    df = make_frame(spec, lengths=[5, 9, 3, 9]).with_columns(pl.col("p3").cast(pl.Float64))
    report = check_frame(_set_at(df, "p1", 3, None), spec)
    assert list(report.length_histogram.items()) == [("3", 1), ("5", 1), ("9", 2)]
    t0 = df["t0"].cast(pl.Float64).to_numpy()
    want = {"mean": t0.mean(), "std": t0.std(), "min": t0.min(), "p1": np.quantile(t0, 0.01),
            "p50": np.quantile(t0, 0.5), "p99": np.quantile(t0, 0.99), "max": t0.max()}
    assert report.target_summary["t0"] == pytest.approx(want, rel=1e-9)
    lines = report.format().splitlines()
    assert "sequence lengths: 3: 1, 5: 1, 9: 2" in lines
    assert ("dtypes: seq_ix..step_in_seq: Int64, need_prediction: Boolean, p0..p2: Float32, "
            "p3: Float64, p4..t1: Float32") in lines
    at = lines.index("non-finite values (NaN / inf, or past float32's range / null):")
    assert lines[at + 1].split() == ["p1:", "0", "/", "0", "/", "1"]
    [head] = [line for line in lines if line.split()[:1] == ["target"]]
    assert head.split() == ["target", "mean", "std", "min", "p1", "p50", "p99", "max"]
    [row] = [line for line in lines if line.split()[:1] == ["t0"]]
    assert row.split()[1:] == [f"{want[k]:.4f}" for k in head.split()[1:]]
