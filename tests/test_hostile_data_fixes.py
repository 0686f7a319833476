"""r275 (numerically hostile data): what `kit data check` and `kit data stats` say of extreme,
non-finite and constant values, and the text-id hint of kit train and kit features build."""

from __future__ import annotations

import json

import polars as pl
import pytest

from kit.competition import load_spec
from kit.data import contract  # (attributes read in each test: each fails on its own)
from kit.data.arrays import build_arrays
from kit.data.contract import check_frame
from kit.errors import DataError
from tests.cli import run_cli
from tests.frames import make_frame
from tests.test_contract import SPEC, write_spec

PREDICTORIUM = load_spec("predictorium")


def _at(seq: int, step: int) -> pl.Expr:
    return (pl.col("seq_ix") == seq) & (pl.col("step_in_seq") == step)


def test_the_guard_limit_named_by_check_is_the_guard_s():
    from kit.features.kernels import LIMIT

    assert contract.GUARD_LIMIT == LIMIT


def test_check_warns_of_feature_values_the_guard_clips(tmp_path):
    """p0 at +-1e30 on 1 row in 5 passed with "non-finite values: none"; the package then
    failed kit parity by 0.46 with nothing before saying why (r275)."""
    frame = make_frame(SPEC, n_seqs=4)
    row = pl.int_range(pl.len())
    frame = frame.with_columns(
        pl.when(row % 5 == 0).then(1e30 * (-1.0) ** row).otherwise(pl.col("p0"))
        .cast(pl.Float32).alias("p0"),
        pl.when(row == 3).then(1e15).otherwise(pl.col("p1")).cast(pl.Float32).alias("p1"))
    path = tmp_path / "huge.parquet"
    frame.write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path)).output
    assert "non-finite values: none" in out
    assert ("warning: feature 'p0' has 16 finite value(s) beyond +-1e16: the feature guard "
            "clips them to +-1e16, and sums, means and stds over windows holding them lose the "
            "column's ordinary values") in out
    assert "kit parity" in out and "clean or rescale the column" in out
    assert "'p1'" not in out  # 1e15 is inside the clip


def _big_target_check(tmp_path) -> str:
    frame = make_frame(SPEC, n_seqs=3).with_columns(
        pl.when(_at(1, 7)).then(1e30).when(_at(0, 2)).then(-1e30)  # step 2: not scored
        .otherwise(pl.col("t0")).cast(pl.Float32).alias("t0"))
    path = tmp_path / "bigtgt.parquet"
    frame.write_parquet(path)
    return run_cli("data", "check", path, "--spec", write_spec(tmp_path)).output


def test_check_names_a_target_beyond_the_clip_on_a_scored_row(tmp_path):
    """One 1e30 target made training diverge with no row named (r275)."""
    out = _big_target_check(tmp_path)
    assert ("warning: target 't0' has 1 finite value(s) beyond +-1e16 on scored rows (first at "
            "seq 1, step 7): training's loss is in target units, which such values overflow "
            "in float32 or outweigh every other row") in out


def test_check_prints_a_huge_target_short_in_its_table(tmp_path):
    """The target table printed 1e30 in fixed point, 31 digits wide (r275)."""
    lines = _big_target_check(tmp_path).splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["target", "mean"])
    table = lines[head:head + 3]
    assert [line.split()[0] for line in table] == ["target", "t0", "t1"]
    assert len({len(line) for line in table}) == 1, table  # the columns stay aligned
    t0 = table[1].split()
    assert len(t0) == 8 and all(len(cell) <= 9 for cell in t0), t0
    assert t0[-1] == "1e+30" and t0[3] == "-1e+30"


def _stats_text(tmp_path, frame: pl.DataFrame, name: str) -> tuple[str, dict]:
    path = tmp_path / f"{name}.parquet"
    frame.write_parquet(path)
    text = run_cli("data", "stats", path).output
    return text, json.loads(run_cli("data", "stats", path, "--json").output)


def test_stats_show_target_nan_and_say_which_checks_were_skipped(tmp_path):
    """An all-NaN t1 read "11/11 pass" (its three checks vanished), and NaN or inf in t0 were
    nowhere in the text report (r275)."""
    frame = make_frame(PREDICTORIUM, lengths=[1000, 1000], seed=1)
    text, stats = _stats_text(tmp_path, frame.with_columns(
        pl.lit(float("nan"), pl.Float32).alias("t1")), "nan_t1")
    assert "  t1 has 2,000 NaN: its figures leave NaN and inf out" in text
    assert "11/11 pass" not in text
    assert "realism checks (predictorium bands): " in text and ", 3 skipped" in text
    skipped = [line.split("skipped: ")[1] for line in text.splitlines()
               if line.startswith("  --  ")]
    assert skipped == ["t1 has no finite values"] * 3
    assert {c["key"] for c in stats["skipped_checks"]} == {"t1_kurtosis", "t1_ac1",
                                                           "t0_t1_corr"}

    row = pl.int_range(pl.len())
    text, _ = _stats_text(tmp_path, frame.with_columns(
        pl.when(row < 3).then(float("nan")).when(row == 10).then(float("inf"))
        .otherwise(pl.col("t0")).cast(pl.Float32).alias("t0")), "nan_t0")
    assert "  t0 has 3 NaN, 1 inf: " in text and "skipped" not in text

    text, _ = _stats_text(tmp_path, frame.with_columns(pl.lit(0.5, pl.Float32).alias("t0")),
                          "const_t0")
    assert "10/10 pass" not in text and ", 4 skipped" in text
    assert "--  t0 kurtosis >= 10" in text and "skipped: t0 is constant" in text


def test_stats_count_float64_values_past_float32_as_check_does(tmp_path):
    """1e300 in a Float64 feature: stats said "NaN/inf count 0 ok" where check counted the
    values as past float32's range; and its cells ran together ("9.09e+298 !!2.87e+299")."""
    row = pl.int_range(pl.len())
    frame = make_frame(PREDICTORIUM, lengths=[1000, 1000], seed=1).with_columns(
        pl.when(row % 50 == 0).then(1e300).otherwise(pl.col("p0").cast(pl.Float64))
        .alias("p0"))
    text, stats = _stats_text(tmp_path, frame, "f64big")
    report = check_frame(frame, PREDICTORIUM)
    assert report.inf_counts["p0"] == 40
    assert stats["features"]["p0"]["past_float32"] == 40
    checks = {c["key"]: (c["value"], c["ok"]) for c in stats["checks"]}
    assert checks["feature_nan"] == (40, False)
    assert "values past float32's range (inf as kit reads them" in text and "p0: 40" in text
    [p0] = [line for line in text.splitlines() if line.startswith("  p0 ")]
    assert p0.split()[-2:] == ["40", "!!"]


def test_stats_cells_never_run_together(tmp_path):
    """Cells as wide as their column ran into a "!!" before them: "9.09e+298 !!2.87e+299 !!",
    "976.347 !!-4332.000 !!" (r275)."""
    row = pl.int_range(pl.len())
    frame = make_frame(PREDICTORIUM, lengths=[1000, 1000], seed=1).with_columns(
        pl.when(row % 11 == 0).then(1e300).otherwise(pl.col("p0").cast(pl.Float64))
        .alias("p0"),
        pl.when(row == 7).then(-4332.0).when(row == 8).then(3659.0).otherwise(pl.col("v0"))
        .cast(pl.Float32).alias("v0"))
    text, _ = _stats_text(tmp_path, frame, "wide")
    [p0] = [line for line in text.splitlines() if line.startswith("  p0 ")]
    mean, flag, std, flag2 = p0.split()[1:5]
    assert (flag, flag2) == ("!!", "!!") and len(std) == 9 and "e+29" in mean + std, p0
    for line in text.splitlines():  # every "!!" stands apart from the cells around it
        assert all(cell == "!!" or "!!" not in cell for cell in line.split()), line


def test_a_boolean_need_flag_is_named_false_not_0(tmp_path):
    frame = make_frame(SPEC, n_seqs=2).with_columns(
        pl.when(_at(1, 9)).then(False).otherwise(pl.col("need_prediction"))
        .alias("need_prediction"))
    path = tmp_path / "need.parquet"
    frame.write_parquet(path)
    out = run_cli("data", "check", path, "--spec", write_spec(tmp_path), expect=2).output
    assert "seq 1 step 9 has false" in out
    as_int = frame.with_columns(pl.col("need_prediction").cast(pl.Int8))
    with pytest.raises(DataError, match="seq 1 step 9 has 0"):
        check_frame(as_int, SPEC)


@pytest.mark.parametrize("column", ["seq_ix", "step_in_seq"])
def test_text_keys_get_the_same_advice_in_training_and_features_build(tmp_path, column):
    """kit train and kit features build said only "must hold integer sequence ids, found
    String"; check, score and parity said how to mend it."""
    hint = "; map the text to integers first, one map for all your files"
    frame = make_frame(PREDICTORIUM, lengths=[30, 30], seed=2).with_columns(
        pl.col(column).cast(pl.String))
    with pytest.raises(DataError, match=r"found String; map the text to integers first"):
        build_arrays(frame, PREDICTORIUM, ["p0"])  # as kit train builds them
    path = tmp_path / "text_ids.parquet"
    frame.write_parquet(path)
    out = run_cli("features", "build", "--groups", "raw", "--data", path, expect=None)
    assert out.exit_code != 0 and hint in " ".join(out.output.split()), out.output
