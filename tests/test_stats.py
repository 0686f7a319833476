"""dataset_stats / format_stats on small hand-made and synthetic files."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from kit.competition import load_spec, spec_from_dict
from kit.data.stats import dataset_stats, format_stats
from kit.data.synth import synthesize
from kit.errors import DataError
from kit.metrics import r2, weighted_pearson

TINY = spec_from_dict(
    {"name": "tiny", "features": ["p0", "p1", "dv0"], "targets": ["t0", "t1"], "seq_len": 50,
     "warmup": 5, "metric": {"name": "weighted_pearson", "clip": [-6.0, 6.0]}}
)  # fmt: skip


def _tiny_frame(seed: int = 0, seqs: int = 4, steps: int = 50) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = seqs * steps
    walk = np.cumsum(rng.standard_normal((seqs, steps)), axis=1).ravel() / 5
    t0 = rng.standard_t(3, n)
    step = np.tile(np.arange(steps), seqs)
    return pl.DataFrame(
        {
            "seq_ix": np.repeat(np.arange(seqs), steps),
            "step_in_seq": step,
            "need_prediction": step >= 5,
            "p0": walk,
            "p1": rng.standard_normal(n),
            "dv0": 0.3 * t0 + rng.standard_normal(n),
            "t0": t0,
            "t1": 0.5 * t0 + rng.standard_normal(n),
        }
    ).cast({c: pl.Float32 for c in ("p0", "p1", "dv0", "t0", "t1")})


def _lag1(x: np.ndarray, ids: np.ndarray) -> float:
    same = ids[1:] == ids[:-1]
    return float(np.corrcoef(x[1:][same], x[:-1][same])[0, 1])


def test_stats_match_direct_computation(tmp_path):
    frame = _tiny_frame()
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise(pl.col("p1")).alias("p1")
    )
    path = tmp_path / "tiny.parquet"
    frame.write_parquet(path)
    stats = dataset_stats(path, TINY)
    json.dumps(stats, allow_nan=False)  # JSON-serialisable, no NaN leaks
    assert (stats["rows"], stats["sequences"], stats["scored_rows"]) == (200, 4, 180)
    ids = frame["seq_ix"].to_numpy()
    p0 = frame["p0"].to_numpy().astype(np.float64)
    f = stats["features"]
    assert f["p0"]["ac1"] == pytest.approx(_lag1(p0, ids), abs=1e-9)
    assert f["p0"]["min"] == pytest.approx(p0.min()) and f["p0"]["max"] == pytest.approx(p0.max())
    assert f["p1"]["nan"] == 1 and f["p0"]["nan"] == 0
    assert stats["feature_groups"]["p"]["n"] == 2 and stats["feature_groups"]["p"]["nan"] == 1
    t0 = frame["t0"].to_numpy().astype(np.float64)
    dev = t0 - t0.mean()
    kurtosis = (dev**4).mean() / (dev**2).mean() ** 2
    assert stats["targets"]["t0"]["kurtosis"] == pytest.approx(kurtosis)
    assert stats["targets"]["t0"]["max_corr_feature"] == "dv0"
    t1 = frame["t1"].to_numpy().astype(np.float64)
    assert stats["target_corr"]["t0~t1"] == pytest.approx(np.corrcoef(t0, t1)[0, 1], abs=1e-9)
    assert "checks" not in stats  # realism bands belong to the predictorium preset only


def test_a_target_without_finite_values_names_no_correlated_feature(tmp_path):
    """Every correlation None: max() took the first feature and named it."""
    path = tmp_path / "nan_t1.parquet"
    _tiny_frame().with_columns(pl.lit(float("nan")).cast(pl.Float32).alias("t1")).write_parquet(
        path)
    t1 = dataset_stats(path, TINY)["targets"]["t1"]
    assert t1["max_abs_feature_corr"] is None and t1["max_corr_feature"] is None


def test_a_negative_correlation_is_the_strongest_when_its_size_is(tmp_path):
    """The most correlated feature was picked by signed r: p1 at r = -0.98 lost to dv0 at
    +0.39, and the report named the weaker feature and its |r|."""
    frame = _tiny_frame()
    noise = np.random.default_rng(5).standard_normal(frame.height)
    frame = frame.with_columns((-pl.col("t0") + 0.3 * pl.Series(noise)).cast(pl.Float32)
                               .alias("p1"))
    frame.write_parquet(tmp_path / "negative.parquet")
    t0 = frame["t0"].to_numpy().astype(np.float64)
    r = {f: np.corrcoef(frame[f].to_numpy().astype(np.float64), t0)[0, 1] for f in TINY.features}
    assert r["p1"] < -0.9 and r["dv0"] > 0.1  # the strongest is negative, a weaker positive
    stats = dataset_stats(tmp_path / "negative.parquet", TINY)["targets"]["t0"]
    assert stats["max_corr_feature"] == "p1"
    assert stats["max_abs_feature_corr"] == pytest.approx(-r["p1"], abs=1e-9)


def test_inf_and_huge_values_are_counted_and_printed_short(tmp_path):
    """An inf is a non-finite value in the tables (its !! and its count agree), and a value of
    1e300 neither overflows the moments (std, correlations: no numpy warning) nor prints as a
    300-digit number."""
    import warnings

    row = pl.int_range(pl.len())
    frame = _tiny_frame().with_columns(
        pl.when(row == 7).then(float("inf")).otherwise(pl.col("p1")).alias("p1"),
        pl.when(row == 9).then(1e300).otherwise(pl.col("p0").cast(pl.Float64)).alias("p0"))
    path = tmp_path / "odd.parquet"
    frame.write_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = dataset_stats(path, TINY)
    p0 = frame["p0"].to_numpy()
    assert stats["features"]["p0"]["std"] == pytest.approx((p0 / 1e300).std() * 1e300, rel=1e-9)
    assert stats["features"]["p0"]["ac1"] is not None
    assert stats["feature_groups"]["p"]["inf"] == 1
    text = format_stats(stats)
    [p1_line] = [line for line in text.splitlines() if line.startswith("  p1 ")]
    assert p1_line.split()[-1] == "1" and "NaN/inf" in text
    assert max(len(line) for line in text.splitlines()) < 140 and "1e+300" in text


def test_unsorted_file_gives_the_same_stats(tmp_path):
    frame = _tiny_frame(seed=1)
    frame.write_parquet(tmp_path / "sorted.parquet")
    frame.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(tmp_path / "shuffled.parquet")
    a = dataset_stats(tmp_path / "sorted.parquet", TINY)
    b = dataset_stats(tmp_path / "shuffled.parquet", TINY)
    assert a["features"] == b["features"] and a["targets"] == b["targets"]
    # unsigned keys: np.diff wrapped a step back round to a jump forward, "sorted"
    unsigned = frame.with_columns(pl.col("seq_ix", "step_in_seq").cast(pl.UInt32))
    unsigned.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(tmp_path / "u.parquet")
    c = dataset_stats(tmp_path / "u.parquet", TINY)
    assert c["features"] == a["features"] and c["targets"] == a["targets"]


@pytest.mark.parametrize("flags", [
    pl.when(pl.col("need_prediction")).then(None).otherwise(0).cast(pl.Int64),  # nulls
    pl.when(pl.col("need_prediction")).then(2).otherwise(0),
    pl.when(pl.col("need_prediction")).then(1).otherwise(-1),
])
def test_need_flags_other_than_0_1_are_named_not_counted_as_scored(tmp_path, flags):
    _tiny_frame().with_columns(flags.alias("need_prediction")).write_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"column 'need_prediction' has [\d,]+ value\(s\) that "
                                        "are neither 0/1 nor true/false"):
        dataset_stats(tmp_path / "f.parquet", TINY)


def test_oracle_and_reference(tmp_path):
    frame = _tiny_frame(seed=2)
    frame.write_parquet(tmp_path / "valid.parquet")
    oracle = frame.select(
        "seq_ix", "step_in_seq", (pl.col("t0") * 0.1).alias("t0"), pl.col("dv0").alias("t1")
    )
    oracle.sample(fraction=1.0, shuffle=True, seed=0).write_parquet(tmp_path / "oracle.parquet")
    ref = frame.with_columns(pl.col("t0") / 2, pl.col("t1") / 4)
    ref.write_parquet(tmp_path / "train.parquet")
    stats = dataset_stats(
        tmp_path / "valid.parquet", TINY, oracle=tmp_path / "oracle.parquet",
        reference=tmp_path / "train.parquet",
    )  # fmt: skip
    need = frame["need_prediction"].to_numpy()
    expected = weighted_pearson(frame["t1"].to_numpy()[need], frame["dv0"].to_numpy()[need])
    assert stats["oracle"]["per_output"]["t1"] == pytest.approx(expected, abs=1e-9)
    assert stats["oracle"]["per_output"]["t0"] == pytest.approx(1.0)
    assert stats["reference"]["std_ratio"]["t0"] == pytest.approx(2.0, rel=1e-5)
    assert stats["reference"]["std_ratio"]["t1"] == pytest.approx(4.0, rel=1e-5)
    # a reference that cannot be compared is said, not dropped without a word
    frame.drop("t0", "t1").write_parquet(tmp_path / "unlabelled.parquet")
    for reference in (tmp_path / "train.parquet", tmp_path / "missing.parquet"):
        with pytest.raises(DataError, match=r"--reference .*: compares the target columns' std, "
                                            r"and this file has none of \['t0', 't1'\]"):
            dataset_stats(tmp_path / "unlabelled.parquet", TINY, reference=reference)
    with pytest.raises(DataError, match="missing.parquet: no such file"):
        dataset_stats(tmp_path / "valid.parquet", TINY, reference=tmp_path / "missing.parquet")
    oracle.head(50).write_parquet(tmp_path / "short.parquet")
    with pytest.raises(DataError, match="no oracle value"):
        dataset_stats(tmp_path / "valid.parquet", TINY, oracle=tmp_path / "short.parquet")
    # a NaN value is a broken oracle, not a short one; a list column is no oracle at all
    broken = oracle.with_columns(pl.when(pl.col("step_in_seq") == 20).then(float("nan"))
                                 .otherwise(pl.col("t0")).alias("t0"))
    broken.write_parquet(tmp_path / "nan_oracle.parquet")
    with pytest.raises(DataError, match="the oracle's values are NaN or inf on 4 row"):
        dataset_stats(tmp_path / "valid.parquet", TINY, oracle=tmp_path / "nan_oracle.parquet")
    oracle.with_columns(pl.concat_list("t0", "t1").alias("t0")).write_parquet(
        tmp_path / "lists.parquet")
    with pytest.raises(DataError, match=r"oracle prediction column\(s\) must be numeric: "
                                        r"\['t0 \(List"):
        dataset_stats(tmp_path / "valid.parquet", TINY, oracle=tmp_path / "lists.parquet")
    pl.concat([oracle, oracle.head(1)]).write_parquet(tmp_path / "twice.parquet")
    with pytest.raises(DataError, match="2 rows share their \\(seq_ix, step_in_seq\\)"):
        dataset_stats(tmp_path / "valid.parquet", TINY, oracle=tmp_path / "twice.parquet")
    # float ids (which the contract accepts) join an int-id oracle, either way round
    frame.with_columns(pl.col("seq_ix").cast(pl.Float64)).write_parquet(tmp_path / "f.parquet")
    oracle.with_columns(pl.col("step_in_seq").cast(pl.Float32)).write_parquet(
        tmp_path / "float_oracle.parquet")
    for data, other in (("f", "oracle"), ("valid", "float_oracle")):
        again = dataset_stats(tmp_path / f"{data}.parquet", TINY,
                              oracle=tmp_path / f"{other}.parquet")
        assert again["oracle"]["per_output"] == stats["oracle"]["per_output"]
    oracle.with_columns(pl.col("seq_ix").cast(pl.Float64) + 0.5).write_parquet(
        tmp_path / "half.parquet")
    with pytest.raises(DataError, match="must be whole numbers"):
        dataset_stats(tmp_path / "valid.parquet", TINY, oracle=tmp_path / "half.parquet")
    frame.head(0).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no rows"):
        dataset_stats(tmp_path / "empty.parquet", TINY)


def test_an_oracle_is_checked_on_the_scored_rows_only(tmp_path):
    """Rows that need no prediction (the warm-up) need no oracle value: an oracle file of the
    scored rows only was refused as short, and one with NaN on warm-up rows only as broken."""
    frame = _tiny_frame(seed=2)
    frame.write_parquet(tmp_path / "valid.parquet")
    oracle = frame.select("seq_ix", "step_in_seq", (pl.col("t0") * 0.1).alias("t0"),
                          pl.col("dv0").alias("t1"))
    scored = frame["need_prediction"]
    variants = {
        "full": oracle,
        "scored_only": oracle.filter(scored),
        "nan_warmup": oracle.with_columns(
            pl.when(scored).then(pl.col(t)).otherwise(float("nan")).alias(t) for t in ("t0", "t1")),
    }
    assert variants["scored_only"].height == 180 < frame.height
    per_output = {}
    for name, table in variants.items():
        table.write_parquet(tmp_path / f"{name}.parquet")
        stats = dataset_stats(tmp_path / "valid.parquet", TINY,
                              oracle=tmp_path / f"{name}.parquet")
        assert stats["oracle"]["rows"] == 180
        per_output[name] = stats["oracle"]["per_output"]
    assert per_output["scored_only"] == per_output["nan_warmup"] == per_output["full"]


def test_predictorium_report_flags_bands(tmp_path):
    spec = load_spec("predictorium")
    r = synthesize(spec, tmp_path, train_seqs=6, valid_seqs=4, seed=5)
    stats = dataset_stats(r.valid, spec, oracle=r.oracle, reference=r.train)
    json.dumps(stats, allow_nan=False)
    assert set(stats["feature_groups"]) == {"p", "v", "dp", "dv"}
    assert stats["feature_groups"]["p"]["ac1_min"] > 0.5
    assert stats["features"]["p0"]["nan"] == 0
    keys = {c["key"] for c in stats["checks"]}
    assert {"t0_kurtosis", "t0_oracle", "t1_std_ratio", "price_ac_min"} <= keys
    # force a failure: the report must flag exactly the failing figures
    stats["checks"][0]["ok"] = False
    text = format_stats(stats)
    assert "realism checks" in text and "!!  features: NaN/inf count" in text
    for line in ("p0", "dv3", "t1", "corr(t0, t1)", "oracle (weighted_pearson"):
        assert line in text


def test_next_state_oracle_uses_r2(tmp_path):
    spec = load_spec("rnn-challenge")
    r = synthesize(spec, tmp_path, train_seqs=2, valid_seqs=3, seed=2)
    stats = dataset_stats(r.valid, spec, oracle=r.oracle)
    assert stats["oracle"]["metric"] == "r2" and stats["targets"] == {}
    valid = pl.read_parquet(r.valid)
    oracle = pl.read_parquet(r.oracle)
    rows = np.flatnonzero(valid["need_prediction"].to_numpy())
    direct = r2(valid["7"].to_numpy()[rows + 1], oracle["7"].to_numpy()[rows])
    assert stats["oracle"]["per_output"]["7"] == pytest.approx(direct, abs=1e-9)
    assert set(stats["feature_groups"]) == {"#"}
    assert "per output" in format_stats(stats)
    with pytest.raises(DataError, match="a next-state spec's targets are the next row's"):
        dataset_stats(r.valid, spec, reference=r.train)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.with_columns(pl.col("seq_ix").cast(pl.String)),
     "column 'seq_ix' must hold whole numbers (an integer or float dtype), found String; map "
     "the text to integers first, one map for all your files"),
    (lambda f: f.with_columns(pl.concat_list("p1", "p0").alias("p1")),
     "column 'p1' must be numeric (an integer or float dtype), found List"),
])
def test_stats_name_a_column_of_the_wrong_type(tmp_path, edit, message):
    path = tmp_path / "odd.parquet"
    edit(_tiny_frame()).write_parquet(path)
    with pytest.raises(DataError) as info:
        dataset_stats(path, TINY)
    assert any(message in problem for problem in info.value.problems)


@pytest.mark.parametrize("dropped", [["t1"], ["t0", "t1"]])
def test_stats_of_a_file_with_some_or_no_targets(tmp_path, dropped):
    path = tmp_path / "part.parquet"
    _tiny_frame().drop(dropped).write_parquet(path)
    stats = dataset_stats(path, TINY)
    assert sorted(stats.get("targets", {})) == sorted({"t0", "t1"} - set(dropped))


def test_an_oracle_score_that_is_not_a_number_is_shown_as_such(tmp_path):
    frame = _tiny_frame()
    frame.select("seq_ix", "step_in_seq", "t0", "t1").write_parquet(tmp_path / "oracle.parquet")
    t0 = frame["t0"].to_numpy().copy()
    t0[20] = np.nan  # a scored row (step 20)
    frame.with_columns(pl.Series("t0", t0)).write_parquet(tmp_path / "nan.parquet")
    stats = dataset_stats(tmp_path / "nan.parquet", TINY, oracle=tmp_path / "oracle.parquet")
    assert stats["oracle"]["score"] is None and stats["oracle"]["per_output"]["t0"] is None
    text = format_stats(stats)
    assert "score -" in text and "a truth value on a scored row is NaN or inf" in text


def test_an_oracle_needs_every_target_and_names_the_missing_one(tmp_path):
    frame = _tiny_frame()
    frame.select("seq_ix", "step_in_seq", "t0", "t1").write_parquet(tmp_path / "oracle.parquet")
    frame.drop("t1").write_parquet(tmp_path / "part.parquet")
    with pytest.raises(DataError, match=r"no target column\(s\) \['t1'\]"):
        dataset_stats(tmp_path / "part.parquet", TINY, oracle=tmp_path / "oracle.parquet")


@pytest.mark.parametrize("column, value", [("seq_ix", None), ("step_in_seq", 2.5)])
def test_stats_refuse_null_or_fractional_keys(tmp_path, column, value):
    frame = _tiny_frame().with_columns(pl.col(column).cast(pl.Float64))
    values = frame[column].to_list()
    values[3] = value
    frame.with_columns(pl.Series(column, values)).write_parquet(tmp_path / "odd.parquet")
    with pytest.raises(DataError, match=f"column '{column}' has 1 null or non-integral"):
        dataset_stats(tmp_path / "odd.parquet", TINY)


@pytest.mark.parametrize("dtype, offset", [(pl.UInt64, 2**63 + 5), (pl.Float64, 1e19),
                                           (pl.Float64, -1e19)])
def test_ids_past_int64_are_named_as_such(tmp_path, dtype, offset):
    frame = _tiny_frame().with_columns(pl.col("seq_ix").cast(dtype) + offset)
    frame.write_parquet(tmp_path / "big.parquet")
    with pytest.raises(DataError, match=r"'seq_ix' has 200 value\(s\) outside int64's range"
                       ) as err:
        dataset_stats(tmp_path / "big.parquet", TINY)
    assert "non-integral" not in str(err.value)


def test_the_lowest_int64_as_a_float_id_is_an_id(tmp_path):
    """-2**63 fits an int64, but counted as too big it gave "-50 null or non-integral"."""
    frame = _tiny_frame().with_columns(
        pl.col("seq_ix").cast(pl.Float64).replace(3.0, -(2.0**63)))
    frame.write_parquet(tmp_path / "lowest.parquet")
    assert dataset_stats(tmp_path / "lowest.parquet", TINY)["sequences"] == 4


def test_an_id_column_named_len_is_counted(tmp_path):
    """group_by(id).len() names its count "len": an id column of that name clashed."""
    spec = spec_from_dict(TINY.to_dict() | {"name": "len-id", "id_col": "len"})
    _tiny_frame().rename({"seq_ix": "len"}).write_parquet(tmp_path / "len.parquet")
    stats = dataset_stats(tmp_path / "len.parquet", spec)
    assert stats["sequences"] == 4 and stats["seq_len"] == {"min": 50, "max": 50}


@pytest.mark.parametrize("edit, message", [
    (lambda ref: ref.with_columns(pl.lit("abc").alias("t0")), r"column 't0' must be numeric"),
    (lambda ref: ref.with_columns(pl.col("t0") > 0), r"column 't0' must be numeric.*Boolean"),
    (lambda ref: ref.head(0), "the file has no rows"),
])
def test_a_reference_of_the_wrong_kind_is_refused(tmp_path, edit, message):
    """The reference's targets went to numpy unchecked: text raised ValueError, a bool column
    gave a ratio as if it meant something, an empty file a silent "-"."""
    frame = _tiny_frame()
    frame.write_parquet(tmp_path / "valid.parquet")
    edit(frame).write_parquet(tmp_path / "ref.parquet")
    with pytest.raises(DataError, match=r"ref.parquet: cannot be compared: " + message):
        dataset_stats(tmp_path / "valid.parquet", TINY, reference=tmp_path / "ref.parquet")


def test_uneven_lengths_groups_and_target_pairs(tmp_path):
    """seq 0 cut to 20 steps, p1 three times as wide as p0."""
    frame = _tiny_frame().filter(~((pl.col("seq_ix") == 0) & (pl.col("step_in_seq") >= 20)))
    frame = frame.with_columns(pl.col("p1") * 3)
    frame.write_parquet(tmp_path / "uneven.parquet")
    stats = dataset_stats(tmp_path / "uneven.parquet", TINY)
    assert stats["seq_len"] == {"min": 20, "max": 50} and stats["rows"] == 170
    assert "length 20..50" in format_stats(stats)
    stds = [frame[f].cast(pl.Float64).to_numpy().std() for f in ("p0", "p1")]
    group = stats["feature_groups"]["p"]
    assert group["std_min"] == pytest.approx(min(stds), rel=1e-9)
    assert group["std_max"] == pytest.approx(max(stds), rel=1e-9)
    assert list(stats["target_corr"]) == ["t0~t1"]  # each pair once, no target with itself


def test_an_id_column_named_n_is_counted(tmp_path):
    spec = spec_from_dict(TINY.to_dict() | {"name": "n-id", "id_col": "n"})
    _tiny_frame().rename({"seq_ix": "n"}).write_parquet(tmp_path / "n.parquet")
    stats = dataset_stats(tmp_path / "n.parquet", spec)
    assert stats["sequences"] == 4 and stats["seq_len"] == {"min": 50, "max": 50}


def test_predictorium_feature_bands_read_every_feature(tmp_path):
    """p3 centred on -1, dv2 a random walk, v2 half as wide, one inf in v5: each band's figure
    is that of the whole feature set (|mean|, dp* and dv*, the smallest std)."""
    from tests.frames import make_frame

    spec = load_spec("predictorium")
    frame = make_frame(spec, lengths=[1000, 1000], seed=4)
    walk = np.cumsum(np.random.default_rng(1).standard_normal(frame.height)) / 50
    frame = frame.with_columns(
        pl.col("p3") - 1.0, pl.Series("dv2", walk, dtype=pl.Float32), pl.col("v2") * 0.5,
        pl.when(pl.col("step_in_seq") == 3).then(float("inf")).otherwise(pl.col("v5"))
        .alias("v5"))
    frame.write_parquet(tmp_path / "p.parquet")
    stats = dataset_stats(tmp_path / "p.parquet", spec)
    checks = {c["key"]: (c["value"], c["ok"]) for c in stats["checks"]}
    values = {f: frame[f].cast(pl.Float64).to_numpy() for f in spec.features}
    values = {f: x[np.isfinite(x)] for f, x in values.items()}
    ids = frame["seq_ix"].to_numpy()
    abs_mean = max(abs(x.mean()) for x in values.values())
    assert abs_mean > 0.9 and checks["feature_abs_mean"] == (pytest.approx(abs_mean), False)
    std_min = min(x.std() for x in values.values())
    assert std_min < 0.6 and checks["feature_std_min"] == (pytest.approx(std_min), False)
    trade = max(_lag1(values[f], ids) for f in spec.features if f.startswith(("dp", "dv")))
    assert trade > 0.9 and checks["trade_ac_max"] == (pytest.approx(trade), False)
    assert checks["feature_nan"] == (2, False)  # one inf per sequence
    [v5] = [line for line in format_stats(stats).splitlines() if line.startswith("  v5 ")]
    assert v5.split()[-2:] == ["2", "!!"]


def _group_cells(text: str, group: str) -> list[str]:
    """The cells of one row of the feature-group table, "!!" kept as its own token."""
    table = text.split("  feature group")[1].split("\n\n")[0]
    [line] = [row for row in table.splitlines() if row.split()[:1] == [group]]
    return line.split()[1:]


def test_the_group_table_marks_only_the_groups_out_of_band(tmp_path):
    """One v value of -9 marks the v group's min, not every group's (the marks came from the
    set-level check); a NaN in p0 alone marks the p group's NaN/inf count only (r265)."""
    from tests.frames import make_frame

    spec = load_spec("predictorium")
    frame = make_frame(spec, lengths=[1000, 1000], seed=4)
    row = pl.int_range(pl.len())
    frame = frame.with_columns(
        pl.when(row == 10).then(-9.0).otherwise(pl.col("v3")).cast(pl.Float32).alias("v3"),
        pl.when(row == 11).then(float("nan")).otherwise(pl.col("p0")).cast(pl.Float32)
        .alias("p0"))
    frame.write_parquet(tmp_path / "odd.parquet")
    stats = dataset_stats(tmp_path / "odd.parquet", spec)
    failed = {c["key"] for c in stats["checks"] if not c["ok"]}
    assert {"feature_min", "feature_nan"} <= failed
    text = format_stats(stats)
    v, p = _group_cells(text, "v"), _group_cells(text, "p")
    assert v[v.index("-9.000") + 1] == "!!" and v.count("!!") == 1, v
    # (make_frame's prices are no random walk: the p group's AC1 min is out of band too)
    assert "price_ac_min" in failed and p[5] == "!!", p
    assert p[-2:] == ["1", "!!"] and p.count("!!") == 2, p
    for group in ("dp", "dv"):
        assert "!!" not in _group_cells(text, group), group


def test_stats_refuse_an_oracle_generated_with_other_arguments(tmp_path):
    """Another seed's oracle has every id and step of this file: scored, it gave a ceiling of
    about 0 and failed bands, as if the generator were broken (r265). kit demo refused it
    already; kit data stats now does too. A file without the mark is held to its keys."""
    spec = load_spec("predictorium")
    for seed in (0, 1):
        synthesize(spec, tmp_path / f"s{seed}", train_seqs=2, valid_seqs=3, seed=seed,
                   progress=False)
    valid = tmp_path / "s0" / "valid.parquet"
    with pytest.raises(DataError, match=r"s1/valid_oracle.parquet belongs to other data: "
                       r"generated with \{.*\"seed\": 1.*s0/valid.parquet with \{.*\"seed\": 0"):
        dataset_stats(valid, spec, oracle=tmp_path / "s1" / "valid_oracle.parquet")
    ours = dataset_stats(valid, spec, oracle=tmp_path / "s0" / "valid_oracle.parquet")
    assert ours["oracle"]["score"] > 0.3
    unmarked = tmp_path / "unmarked.parquet"
    pl.read_parquet(tmp_path / "s1" / "valid_oracle.parquet").write_parquet(unmarked)
    assert dataset_stats(valid, spec, oracle=unmarked)["oracle"]["score"] < 0.3
