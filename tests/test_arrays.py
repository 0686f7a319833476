import hashlib
import json
import os
import re
import shutil
import time
import warnings

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.data import arrays as arrays_module
from kit.data import cache as cache_module
from kit.data.arrays import SequenceArrays, build_arrays
from kit.data.cache import (
    CacheWarning,
    cached_arrays,
    cached_arrays_into,
    clear_cache,
    file_digest,
    known_digest,
)
from kit.errors import DataError
from tests.frames import make_frame, small_spec

SPEC = small_spec(seq_len=20, warmup=5)
RAGGED = small_spec(seq_len=None, warmup=2)
NEXT = small_spec(seq_len=None, warmup=2, tail=1, protocol="next-state", targets=[])
FEATURES = list(SPEC.features)


def naive_arrays(df, spec, cols, seq_len=None, truncate="head") -> dict:
    """Reference: one sequence at a time, in plain numpy."""
    seqs = df.partition_by(spec.id_col, maintain_order=True)
    width = seq_len or max(s.height for s in seqs)
    k = spec.n_outputs
    out = {"x": np.zeros((len(seqs), width, len(cols)), np.float32),
           "y": np.zeros((len(seqs), width, k), np.float32),
           "mask": np.zeros((len(seqs), width), bool), "lengths": [], "ids": []}  # fmt: skip
    for i, seq in enumerate(seqs):
        n = seq.height
        x = seq.select(cols).to_numpy().astype(np.float32)
        if spec.next_state:
            raw = seq.select(spec.features).to_numpy().astype(np.float32)
            y = np.vstack([raw[1:], np.zeros((1, k), np.float32)])
        else:
            y = seq.select(spec.targets).to_numpy().astype(np.float32)
        need = seq[spec.need_col].to_numpy().astype(bool)
        keep = slice(0, width) if truncate == "head" else slice(max(0, n - width), n)
        m = min(n, width)
        out["x"][i, :m], out["y"][i, :m], out["mask"][i, :m] = x[keep], y[keep], need[keep]
        out["lengths"].append(m)
        out["ids"].append(seq[spec.id_col][0])
    return out


def assert_matches(got: SequenceArrays, want: dict) -> None:
    np.testing.assert_array_equal(got.x, want["x"])
    np.testing.assert_array_equal(got.y, want["y"])
    np.testing.assert_array_equal(got.mask, want["mask"])
    np.testing.assert_array_equal(got.lengths, want["lengths"])
    np.testing.assert_array_equal(got.ids, want["ids"])
    assert got.x.dtype == got.y.dtype == np.float32 and got.mask.dtype == bool
    assert got.lengths.dtype == got.ids.dtype == np.int64
    assert got.x.flags.c_contiguous and got.y.flags.c_contiguous and got.mask.flags.c_contiguous


def test_fixed_length_reshape_equals_per_sequence_loop():
    df = make_frame(SPEC, n_seqs=4).with_columns(pl.col("seq_ix") * 3 + 10)
    got = build_arrays(df, SPEC, FEATURES)
    assert got.x.shape == (4, 20, 32) and got.y.shape == (4, 20, 2)
    assert got.feature_names == FEATURES and got.target_names == ["t0", "t1"]
    assert_matches(got, naive_arrays(df, SPEC, FEATURES))
    np.testing.assert_array_equal(got.ids, [10, 13, 16, 19])
    assert got.mask[:, :5].sum() == 0 and got.mask[:, 5:].all()  # warmup 5


def test_derived_float64_and_int_columns_are_cast_block_by_block(monkeypatch):
    monkeypatch.setattr(arrays_module, "BLOCK_ROWS", 7)  # many blocks on tiny data
    df = make_frame(SPEC, n_seqs=3).with_columns(
        (pl.col("p0").cast(pl.Float64) * 2).alias("p0x2"),
        pl.col("step_in_seq").alias("step_feature"),
        pl.col("need_prediction").cast(pl.Int8).alias("flag"),
    )
    cols = ["p0x2", "v3", "step_feature", "flag"]
    got = build_arrays(df, SPEC, cols)
    assert_matches(got, naive_arrays(df, SPEC, cols))
    np.testing.assert_array_equal(got.x[1, :, 2], np.arange(20))


@pytest.mark.parametrize("cols", [FEATURES, FEATURES[::-1], ["v0", "p1", "p0"]])
def test_next_state_targets_are_next_step_features(cols):
    spec = small_spec(seq_len=20, warmup=2, tail=1, protocol="next-state", targets=[])
    df = make_frame(spec, n_seqs=3)
    got = build_arrays(df, spec, cols)
    raw = df.select(spec.features).to_numpy().reshape(3, 20, 32)
    np.testing.assert_array_equal(got.y[:, :-1], raw[:, 1:])
    assert not got.y[:, -1].any()
    assert got.target_names == list(spec.features)
    assert not got.mask[:, -1].any() and got.mask[:, 2:-1].all()  # tail = 1
    assert_matches(got, naive_arrays(df, spec, cols))
    # a last row flagged as needing a prediction has no truth: refused, not trained toward 0
    flagged = df.with_columns(pl.when(pl.col("step_in_seq") == 19).then(True)
                              .otherwise(pl.col("need_prediction")).alias("need_prediction"))
    for seq_len in (None, 12):  # the fixed-length path and the ragged one
        with pytest.raises(DataError, match=r"3 sequence\(s\) need a prediction at their "
                           r"last row, which has no next row"):
            build_arrays(flagged, spec, cols, seq_len=seq_len, truncate="tail")


@pytest.mark.parametrize("truncate", ["head", "tail"])
@pytest.mark.parametrize("seq_len", [None, 4, 7, 12])
@pytest.mark.parametrize("spec", [RAGGED, NEXT], ids=["targets", "next-state"])
def test_padding_and_truncation(spec, seq_len, truncate):
    df = make_frame(spec, lengths=[3, 7, 1, 5])
    got = build_arrays(df, spec, ["p0", "v1", "dv3"], seq_len=seq_len, truncate=truncate)
    width = seq_len or 7
    assert got.x.shape == (4, width, 3)
    np.testing.assert_array_equal(got.lengths, np.minimum([3, 7, 1, 5], width))
    real = np.arange(width)[None, :] < got.lengths[:, None]
    assert not got.x[~real].any() and not got.y[~real].any() and not got.mask[~real].any()
    assert_matches(got, naive_arrays(df, spec, ["p0", "v1", "dv3"], seq_len, truncate))


def test_tail_truncation_keeps_the_last_steps():
    df = make_frame(RAGGED, lengths=[6, 2])
    got = build_arrays(df, RAGGED, ["step_in_seq"], seq_len=4, truncate="tail")
    np.testing.assert_array_equal(got.x[..., 0], [[2, 3, 4, 5], [0, 1, 0, 0]])
    np.testing.assert_array_equal(got.mask, [[1, 1, 1, 1], [0, 0, 0, 0]])  # warmup 2
    head = build_arrays(df, RAGGED, ["step_in_seq"], seq_len=4, truncate="head")
    np.testing.assert_array_equal(head.x[..., 0], [[0, 1, 2, 3], [0, 1, 0, 0]])
    np.testing.assert_array_equal(head.mask, [[0, 0, 1, 1], [0, 0, 0, 0]])


def test_mask_follows_need_column():
    df = make_frame(SPEC, n_seqs=2).with_columns(
        (pl.col("need_prediction") & (pl.col("step_in_seq") % 3 != 0)).alias("need_prediction")
    )
    got = build_arrays(df, SPEC, ["p0"])
    np.testing.assert_array_equal(got.mask.ravel(), df["need_prediction"].to_numpy())


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    seq_len=st.none() | st.integers(1, 10),
    truncate=st.sampled_from(["head", "tail"]),
    next_state=st.booleans(),
)
def test_any_ragged_layout_matches_the_loop(lengths, seq_len, truncate, next_state):
    spec = NEXT if next_state else RAGGED
    df = make_frame(spec, lengths=lengths)
    got = build_arrays(df, spec, ["p0", "p1"], seq_len=seq_len, truncate=truncate)
    assert_matches(got, naive_arrays(df, spec, ["p0", "p1"], seq_len, truncate))


def test_missing_columns_are_named():
    df = make_frame(SPEC, n_seqs=2).drop("t1", "p4")
    with pytest.raises(DataError, match=r"missing column\(s\) \['p4', 'nope', 't1'\]"):
        build_arrays(df, SPEC, ["p0", "p4", "nope"])
    next_df = make_frame(NEXT, lengths=[3]).drop("p2")
    with pytest.raises(DataError, match="next-state targets need"):
        build_arrays(next_df, NEXT, ["p0"])


def test_a_missing_column_that_is_also_a_target_is_named_once():
    df = make_frame(SPEC, n_seqs=2).drop("t0")
    with pytest.raises(DataError, match=r"^train.parquet: missing column\(s\) \['t0'\]: arrays"):
        build_arrays(df, SPEC, ["p0", "t0"], source="train.parquet")


def test_an_empty_frame_is_refused_as_having_no_rows():
    with pytest.raises(DataError, match=r"^train.parquet: the frame has no rows$"):
        build_arrays(make_frame(SPEC, n_seqs=2).head(0), SPEC, ["p0"], source="train.parquet")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"truncate": "middle"}, "truncate"), ({"seq_len": 0}, "seq_len"),
     ({"seq_len": 2.5}, r"seq_len=2.5 must be a positive whole number"),  # was taken as 2
     ({"seq_len": True}, r"seq_len=True must be"),
     ({"feature_cols": []}, "feature_cols"), ({"feature_cols": ["p0", "p0"]}, "twice")],
)  # fmt: skip
def test_bad_arguments(kwargs, message):
    df = make_frame(SPEC, n_seqs=2)
    with pytest.raises(DataError, match=message):
        build_arrays(df, SPEC, **({"feature_cols": ["p0"]} | kwargs))


def test_unsorted_frames_are_rejected():
    df = make_frame(SPEC, n_seqs=3)
    with pytest.raises(DataError, match="not contiguous"):
        build_arrays(df.sort("step_in_seq", "seq_ix"), SPEC, ["p0"])
    with pytest.raises(DataError, match="not increasing"):
        build_arrays(df.sort("seq_ix", "step_in_seq", descending=[False, True]), SPEC, ["p0"])


def test_ids_and_steps_must_be_whole_numbers():
    df = make_frame(SPEC, n_seqs=3)
    cases = [
        (pl.when(pl.col("seq_ix") == 2).then(None).otherwise(pl.col("seq_ix")).alias("seq_ix"),
         "column 'seq_ix' has 20 null or non-integral value"),
        (pl.col("seq_ix").cast(pl.Float64) + 0.5, "column 'seq_ix' has 60 null or non-integral"),
        # NaN equals NaN and inf its floor in Polars: they passed, then the cast raised
        (pl.when(pl.col("seq_ix") == 2).then(float("nan")).otherwise(pl.col("seq_ix"))
         .alias("seq_ix"), "column 'seq_ix' has 20 null or non-integral value"),
        (pl.when(pl.col("seq_ix") == 2).then(float("inf")).otherwise(pl.col("seq_ix"))
         .alias("seq_ix"), "column 'seq_ix' has 20 null or non-integral value"),
        (pl.col("seq_ix").cast(pl.UInt64) + 2**63, "'seq_ix' has 60 value.s. outside int64"),
        (pl.col("seq_ix").cast(pl.String), "'seq_ix' must hold integer sequence ids, found Str"),
        (pl.col("step_in_seq").cast(pl.String), "'step_in_seq' must hold integer steps, found S"),
    ]
    for edit, message in cases:
        with pytest.raises(DataError, match=message):
            build_arrays(df.with_columns(edit), SPEC, ["p0"])
    whole = build_arrays(df.with_columns(pl.col("seq_ix").cast(pl.Float64)), SPEC, ["p0"])
    np.testing.assert_array_equal(whole.ids, [0, 1, 2])


@pytest.mark.parametrize("gap", [None, float("nan")])
def test_a_null_or_nan_step_does_not_hide_steps_going_backwards(gap):
    """steps 2, null, 1: the step changes around the null compare as neither repeated nor
    backwards, so the unsorted sequence was accepted."""
    df = make_frame(SPEC, n_seqs=2).with_columns(pl.col("step_in_seq").cast(pl.Float64))
    steps = df["step_in_seq"].to_list()
    steps[:3] = [2.0, gap, 1.0]
    with pytest.raises(DataError, match=r"train.parquet: column 'step_in_seq' has 1 null or "
                                        r"non-integral value\(s\): row 1 \((None|nan)\)$"):
        build_arrays(df.with_columns(pl.Series("step_in_seq", steps)), SPEC, ["p0"],
                     source="train.parquet")


@pytest.mark.parametrize(("flags", "message"), [
    (pl.when(pl.col("need_prediction")).then(1).otherwise(-1),
     "has 15 value.s. that are neither 0/1 nor true/false"),  # -1 read as true: a wrong mask
    (pl.when(pl.col("need_prediction")).then(None).otherwise(0).cast(pl.Int64),
     "has 45 value.s. that are neither"),  # nulls read as false
    (pl.col("need_prediction").cast(pl.Float64) * 0.5, "must hold booleans or integers 0/1, "
                                                      "found Float64"),
    (pl.col("need_prediction").cast(pl.String), "must hold booleans or integers 0/1, found S"),
])
def test_need_flags_other_than_0_1_are_refused_not_read_as_a_mask(flags, message):
    df = make_frame(SPEC, n_seqs=3)
    with pytest.raises(DataError, match=f"column 'need_prediction' {message}"):
        build_arrays(df.with_columns(flags.alias("need_prediction")), SPEC, ["p0"])
    ragged = df.with_columns(flags.alias("need_prediction")).filter(  # the file is named
        (pl.col("seq_ix") != 0) | (pl.col("step_in_seq") < 10))
    any_count = re.sub(r"has \d+", r"has \\d+", message)  # fewer rows, fewer bad ones
    with pytest.raises(DataError, match=f"^train.parquet: column 'need_prediction' {any_count}"):
        build_arrays(ragged, SPEC, ["p0"], source="train.parquet")
    as_ints = build_arrays(df.with_columns(pl.col("need_prediction").cast(pl.UInt8)), SPEC,
                           ["p0"])
    np.testing.assert_array_equal(as_ints.mask, build_arrays(df, SPEC, ["p0"]).mask)


def test_take_selects_sequences_by_id():
    got = build_arrays(make_frame(SPEC, n_seqs=4), SPEC, ["p0"])
    part = got.take(np.array([3, 1]))
    np.testing.assert_array_equal(part.ids, [3, 1])
    np.testing.assert_array_equal(part.x, got.x[[3, 1]])
    with pytest.raises(DataError, match="not in these arrays"):
        got.take(np.array([9]))
    # a fractional or NaN id is no id (the int64 cast took 1.7 as sequence 1)
    np.testing.assert_array_equal(got.take(np.array([3.0, 1.0])).ids, [3, 1])
    with pytest.raises(DataError, match=r"not in these arrays: \[1.7\]"):
        got.take(np.array([3.0, 1.7]))
    with pytest.raises(DataError, match=r"not in these arrays: \[nan\]"):
        got.take(np.array([np.nan]))


# --- cache -----------------------------------------------------------------------------------


class Builder:
    """Counts how often the cache falls back to building."""

    def __init__(self, path, spec=SPEC):
        self.path, self.spec, self.calls = path, spec, 0

    def __call__(self) -> SequenceArrays:
        self.calls += 1
        return build_arrays(pl.read_parquet(self.path), self.spec, FEATURES)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.parquet"
    make_frame(SPEC, n_seqs=3).write_parquet(path)
    return path


KEY = {"spec": "tiny", "features": FEATURES, "seq_len": None, "format": 1}


def fresh(path) -> SequenceArrays:
    return build_arrays(pl.read_parquet(path), SPEC, FEATURES)


def assert_same(a: SequenceArrays, b: SequenceArrays) -> None:
    for name in ("x", "y", "mask", "lengths", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.feature_names == b.feature_names and a.target_names == b.target_names


def entries(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if not p.name.startswith("."))


def test_second_call_is_a_memory_mapped_hit(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    first = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    second = cached_arrays(data_file, dict(reversed(KEY.items())), build, cache_dir=cache_dir)
    assert build.calls == 1
    assert_same(first, fresh(data_file))
    assert_same(second, first)
    assert isinstance(second.x, np.memmap) and not second.x.flags.writeable
    assert len(entries(cache_dir)) == 1
    assert not list(cache_dir.glob(".tmp-*"))


def test_changed_file_content_rebuilds(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    before = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    make_frame(SPEC, n_seqs=3, seed=1).write_parquet(data_file)
    stat = data_file.stat()
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2
    assert not np.array_equal(before.x, after.x)
    assert_same(after, fresh(data_file))


def test_changed_key_rebuilds(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    cached_arrays(data_file, KEY | {"seq_len": 10}, build, cache_dir=cache_dir)
    cached_arrays(data_file, KEY | {"features": FEATURES[:3]}, build, cache_dir=cache_dir)
    assert build.calls == 3 and len(entries(cache_dir)) == 3



def assert_rebuilt_once_then_hit(data_file, build, cache_dir, match: str) -> None:
    """A damaged entry is rebuilt with a warning matching `match`, once: the next call hits."""
    with pytest.warns(CacheWarning, match=match):
        again = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2
    assert_same(again, fresh(data_file))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2  # the rebuilt entry is a hit


@pytest.mark.parametrize("name, keep", [("x.npy", -100), ("mask.npy", 0)],
                         ids=["truncated", "empty"])  # an empty .npy: np.load's EOFError
def test_truncated_npy_is_rebuilt_with_a_warning(data_file, tmp_path, name, keep):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    damaged = entry / name
    damaged.write_bytes(damaged.read_bytes()[:keep])
    assert_rebuilt_once_then_hit(data_file, build, cache_dir, "rebuilding")


def test_entry_without_meta_is_rebuilt(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    (entry / "meta.json").unlink()
    with pytest.warns(CacheWarning):
        cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2 and (entry / "meta.json").is_file()
    (entry / "meta.json").write_text("null")  # valid JSON, not an object
    with pytest.warns(CacheWarning, match="holds a NoneType"):
        cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 3


def test_an_array_of_another_dtype_than_its_meta_says_is_rebuilt(data_file, tmp_path):
    """An entry's file of the right shape but another dtype (float64 x, hand-copied or
    damaged) was used as it was: the model got float64 inputs its meta never promised."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    np.save(entry / "x.npy", np.load(entry / "x.npy").astype(np.float64))
    with pytest.warns(CacheWarning, match=r"x.npy is float64\[3, 20, 32\], meta.json says "
                      r"float32\[3, 20, 32\]\); rebuilding"):
        again = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2 and again.x.dtype == np.float32
    assert_same(again, fresh(data_file))


def test_an_array_of_another_shape_than_its_meta_says_is_rebuilt(data_file, tmp_path):
    """x.npy overwritten with another entry's (same dtype, other width) was served as it was."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    np.save(entry / "x.npy", np.zeros((3, 20, 5), np.float32))
    with pytest.warns(CacheWarning, match=r"is unusable \(x.npy is float32\[3, 20, 5\], "
                      r"meta.json says float32\[3, 20, 32\]\); rebuilding it"):
        again = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2 and again.x.shape == (3, 20, 32)
    assert_same(again, fresh(data_file))


def test_an_entry_folder_holding_another_keys_arrays_is_rebuilt(data_file, tmp_path):
    """An entry copied by hand over another key's folder (a restored backup) is not served."""
    cache_dir = tmp_path / "cache"

    def build(seq_len):
        return lambda: build_arrays(pl.read_parquet(data_file), SPEC, FEATURES, seq_len=seq_len)

    cached_arrays(data_file, KEY | {"seq_len": 20}, build(20), cache_dir=cache_dir)
    (long_entry,) = [e for e in entries(cache_dir) if e.is_dir()]
    cached_arrays(data_file, KEY | {"seq_len": 5}, build(5), cache_dir=cache_dir)
    (short_entry,) = [e for e in entries(cache_dir) if e.is_dir() and e != long_entry]
    shutil.rmtree(short_entry)
    shutil.copytree(long_entry, short_entry)  # seq_len 5's folder now holds seq_len 20's arrays
    with pytest.warns(CacheWarning, match=r"\(meta.json belongs to another key or cache "
                      r"format\); rebuilding it"):
        got = cached_arrays(data_file, KEY | {"seq_len": 5}, build(5), cache_dir=cache_dir)
    assert got.x.shape == (3, 5, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is a hit
        again = cached_arrays(data_file, KEY | {"seq_len": 5}, build(5), cache_dir=cache_dir)
    assert again.x.shape == (3, 5, 32)


@pytest.mark.parametrize("edit", ["no feature_names", "arrays a list"])
def test_a_meta_json_missing_a_field_or_of_another_shape_is_rebuilt(
        data_file, tmp_path, edit):
    """meta.json edited by hand: a missing field (KeyError) or a list where an object belongs
    (TypeError) crashed the run instead of rebuilding the entry."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    meta = json.loads((entry / "meta.json").read_text())
    if edit == "no feature_names":
        del meta["feature_names"]
    else:
        meta["arrays"] = []
    (entry / "meta.json").write_text(json.dumps(meta))
    assert_rebuilt_once_then_hit(data_file, build, cache_dir, "is unusable .*; rebuilding it")


def test_leftover_temp_folder_is_ignored(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    first = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (entry,) = entries(cache_dir)
    clear_cache(cache_dir)
    # A writer killed half-way: its temp folder even holds a plausible meta.json.
    leftover = cache_dir / f".tmp-{entry.name}-999-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "x.npy").write_bytes(b"partial")
    (leftover / "meta.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 2
    assert_same(again, first)
    assert leftover.is_dir()  # young temp folders may belong to a live writer


def test_a_build_removes_stale_temp_folders_and_keeps_young_ones(data_file, tmp_path):
    """A writer killed mid-build leaves its temp folder; the next build in the cache removes
    those older than STALE_TMP_S, never one a live writer may still be filling."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    young = cache_dir / f"{cache_module.TMP_PREFIX}train-4242-0123abcd"
    old = cache_dir / f"{cache_module.TMP_PREFIX}train-999-deadbeef"
    old_digests = cache_dir / f"{cache_module.TMP_PREFIX}digests.json-999-deadbeef"
    for folder in (young, old):
        folder.mkdir()
        (folder / "x.npy").write_bytes(b"partial")
    old_digests.write_text("{")
    long_ago = time.time() - cache_module.STALE_TMP_S - 600
    for path in (old, old_digests):
        os.utime(path, (long_ago, long_ago))
    build = Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 1
    assert young.is_dir() and (young / "x.npy").is_file()  # another writer's, in progress
    assert not old.exists() and not old_digests.exists()


def test_unwritable_cache_dir_warns_and_returns_built_arrays(data_file, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    build = Builder(data_file)
    with pytest.warns(CacheWarning, match="could not write"):
        got = cached_arrays(data_file, KEY, build, cache_dir=not_a_dir)
    assert build.calls == 1 and got.x.shape == (3, 20, 32)


def test_clear_cache_removes_entries_only(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    cached_arrays(data_file, KEY | {"seq_len": 5}, build, cache_dir=cache_dir)
    (cache_dir / ".tmp-x-1-ab").mkdir()
    (cache_dir / ".tmp-digests.json-1-ab").write_text("{")  # a killed digests.json update
    (cache_dir / "README").write_text("keep me")
    assert clear_cache(cache_dir) == 4
    assert [p.name for p in cache_dir.iterdir()] == ["README"]
    assert clear_cache(tmp_path / "missing") == 0


def test_clear_cache_mends_a_digests_file_damaged_into_a_folder(data_file, tmp_path):
    """The command a user runs to mend a damaged cache raised IsADirectoryError on it and
    removed nothing (r265); a build already worked around the same damage."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (cache_dir / cache_module.DIGESTS_FILE).unlink(missing_ok=True)
    (cache_dir / cache_module.DIGESTS_FILE / "x").mkdir(parents=True)
    assert clear_cache(cache_dir) == 1
    assert list(cache_dir.iterdir()) == []


def test_a_folder_of_the_users_in_the_cache_dir_is_no_entry(data_file, tmp_path):
    """A backup folder kept in the cache dir was listed as an entry and deleted by --clear."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    cached_arrays(data_file, KEY | {"seq_len": 5}, build, cache_dir=cache_dir)
    names = sorted(e.name for e in entries(cache_dir) if e.is_dir())
    backup = cache_dir / "my-backup"
    backup.mkdir()
    (backup / "notes.txt").write_text("keep")
    assert sorted(e["name"] for e in cache_module.cache_entries(cache_dir)) == names
    assert clear_cache(cache_dir) == 2
    assert [p.name for p in cache_dir.iterdir()] == ["my-backup"]
    assert (backup / "notes.txt").read_text() == "keep"
    assert cache_module.cache_entries(cache_dir) == []
    assert clear_cache(cache_dir) == 0 and backup.is_dir()


def test_cache_entries_are_listed_oldest_first(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    for n in range(4):
        cached_arrays(data_file, KEY | {"n": n}, build, cache_dir=cache_dir)
    # dated newest first in the folder's own listing order: no order can pass by chance
    listed = [p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for day, entry in zip((4, 3, 2, 1), listed, strict=True):
        meta = json.loads((entry / "meta.json").read_text())
        meta["created"] = f"2024-01-0{day}T00:00:00+0000"
        (entry / "meta.json").write_text(json.dumps(meta))
    got = cache_module.cache_entries(cache_dir)
    assert [e["name"] for e in got] == [p.name for p in reversed(listed)]
    assert [e["created"][:10] for e in got] == [f"2024-01-0{d}" for d in (1, 2, 3, 4)]


def test_a_build_whose_temp_folder_is_cleared_finishes_uncached(data_file, tmp_path):
    """clear_cache from another process removes every temp folder, a live build's too: that
    build ended in a FileNotFoundError traceback instead of the uncached fallback."""
    cache_dir = tmp_path / "cache"

    def cleared_midway(sink):
        whole = fresh(data_file)
        out = {f: sink(f, getattr(whole, f).shape, getattr(whole, f).dtype)
               for f in ("x", "y", "mask")}
        for f, writer in out.items():
            writer.write(np.array(getattr(whole, f)))
        clear_cache(cache_dir)
        return SequenceArrays(**{f: w.finish() for f, w in out.items()}, lengths=whole.lengths,
                              ids=whole.ids, feature_names=whole.feature_names,
                              target_names=whole.target_names)

    with pytest.warns(CacheWarning, match="building the arrays again, uncached"):
        got = cached_arrays_into(data_file, KEY, cleared_midway, cache_dir=cache_dir)
    assert_same(got, fresh(data_file))


def test_file_digest_is_sha256_of_the_bytes(data_file):
    assert file_digest(data_file) == hashlib.sha256(data_file.read_bytes()).hexdigest()


def test_a_settled_digest_is_kept_in_the_cache_and_trusted_only_for_the_same_stat(
        data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # the file counts as settled at once
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    sha = hashlib.sha256(data_file.read_bytes()).hexdigest()
    monkeypatch.setattr(cache_module, "_digests", {})  # as a new process sees it
    assert known_digest(data_file, cache_dir) == sha  # from digests.json, no bytes read
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 1
    # same size, mtime put back: the content changed all the same (ctime moved)
    stat = data_file.stat()
    other = tmp_path / "other.parquet"
    make_frame(SPEC, n_seqs=3, seed=5).write_parquet(other)
    assert other.stat().st_size == stat.st_size
    data_file.write_bytes(other.read_bytes())
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(cache_module, "_digests", {})
    assert known_digest(data_file, cache_dir) is None
    assert_same(cached_arrays(data_file, KEY, build, cache_dir=cache_dir), fresh(data_file))
    assert build.calls == 2


@pytest.mark.parametrize("record", [5, {"a": 1}, [1, 2], None, [1, 2, 3, 4, 5]])
def test_a_mangled_digests_record_means_hashing_the_file_again(
        data_file, tmp_path, monkeypatch, record):
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (cache_dir / "digests.json").write_text(json.dumps({str(data_file.resolve()): record}))
    monkeypatch.setattr(cache_module, "_digests", {})
    assert known_digest(data_file, cache_dir) is None
    assert_same(cached_arrays(data_file, KEY, build, cache_dir=cache_dir), fresh(data_file))
    assert build.calls == 1  # re-hashed, then a hit


@pytest.mark.parametrize("text", ['{"a', "[1, 2]"], ids=["truncated", "a-list"])
def test_a_damaged_digests_file_is_ignored_and_replaced(data_file, tmp_path, monkeypatch, text):
    """digests.json cut short (a full disk) or hand-edited to a list crashed every build."""
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cache_dir.mkdir()
    (cache_dir / "digests.json").write_text(text)
    monkeypatch.setattr(cache_module, "_digests", {})
    assert known_digest(data_file, cache_dir) is None
    assert_same(cached_arrays(data_file, KEY, build, cache_dir=cache_dir), fresh(data_file))
    monkeypatch.setattr(cache_module, "_digests", {})  # the record written anew is trusted
    assert known_digest(data_file, cache_dir) == hashlib.sha256(data_file.read_bytes()).hexdigest()


def test_a_digest_record_whose_digest_is_not_text_is_not_trusted(tmp_path, monkeypatch):
    """Two files whose records (right stat) were mangled to digest 0 shared one entry: the
    second was served the first one's arrays."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for seed, path in enumerate(files, start=1):
        make_frame(SPEC, n_seqs=3, seed=seed).write_parquet(path)
    stats = {str(p.resolve()): p.stat() for p in files}
    (cache_dir / "digests.json").write_text(json.dumps({
        name: [s.st_size, s.st_mtime_ns, s.st_ino, s.st_ctime_ns, 0]
        for name, s in stats.items()}))
    monkeypatch.setattr(cache_module, "_digests", {})
    assert known_digest(files[0], cache_dir) is None
    got = [cached_arrays(p, KEY, Builder(p), cache_dir=cache_dir) for p in files]
    assert not np.array_equal(got[0].x, got[1].x)
    for path, arrays in zip(files, got, strict=True):
        assert_same(arrays, fresh(path))


def test_a_hit_records_the_digest_of_a_file_settled_since_its_build(
        data_file, tmp_path, monkeypatch):
    """The build hashed a just-written file (not recorded: it may still change); a later hit,
    the file settled by then, must record it so the next process reads no input bytes."""
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert str(data_file.resolve()) not in cache_module._read_digests(cache_dir)
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # as if the racy window had passed
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 1
    monkeypatch.setattr(cache_module, "_digests", {})  # as a new process sees it
    assert known_digest(data_file, cache_dir) == hashlib.sha256(data_file.read_bytes()).hexdigest()


SET_KEY = """
from kit.data.cache import _key_of
print(_key_of("0" * 64, {"cols": set(%r)}))
"""


def test_a_key_holding_a_set_is_the_same_in_every_process(data_file, tmp_path):
    """A set serialised in iteration order: its string hashing (PYTHONHASHSEED) differs per
    process, so every run missed the cache."""
    import subprocess
    import sys

    cols = FEATURES[:12]
    want = cache_module._key_of("0" * 64, {"cols": sorted(cols)})
    assert cache_module._key_of("0" * 64, {"cols": frozenset(reversed(cols))}) == want
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for seed in ("1", "2", "3"):
        done = subprocess.run([sys.executable, "-c", SET_KEY % (cols,)], capture_output=True,
                              text=True, env=os.environ | {"PYTHONHASHSEED": seed,
                                                           "PYTHONPATH": root})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == want, f"PYTHONHASHSEED={seed}"


def test_a_key_may_hold_a_path(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY | {"data": data_file}, build, cache_dir=cache_dir)
    hit = cached_arrays(data_file, KEY | {"data": str(data_file)}, build, cache_dir=cache_dir)
    assert build.calls == 1  # a Path keys as its text
    assert_same(hit, fresh(data_file))


def test_an_input_file_with_a_long_name_is_cached(tmp_path):
    """A 248-character file name made a 273-character entry name: the entry could not be
    written, and every run built the arrays again, uncached, warning."""
    path = tmp_path / ("x" * 240 + ".parquet")
    make_frame(SPEC, n_seqs=3).write_parquet(path)
    cache_dir, build = tmp_path / "cache", Builder(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            assert_same(cached_arrays(path, KEY, build, cache_dir=cache_dir), fresh(path))
    assert build.calls == 1
    (entry,) = [e for e in entries(cache_dir) if e.is_dir()]
    assert re.fullmatch("x" * 40 + "-[0-9a-f]{24}", entry.name)


def test_a_file_changed_just_before_hashing_is_hashed_again_next_time(data_file, tmp_path):
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)  # data_file was just written
    assert known_digest(data_file, cache_dir) is None
    assert str(data_file.resolve()) not in cache_module._read_digests(cache_dir)
    cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    assert build.calls == 1  # hashed again, and then a hit


class BlockBuilder:
    """Writes the arrays of `path` one sequence per block, slowly, counting the blocks."""

    def __init__(self, path):
        self.path, self.blocks = path, 0

    def __call__(self, sink) -> SequenceArrays:
        whole = fresh(self.path)
        reps = 40  # many blocks: the digest of the small file is done long before the last
        out = {f: sink(f, (len(whole) * reps, *getattr(whole, f).shape[1:]),
                       getattr(whole, f).dtype) for f in ("x", "y", "mask")}
        for _ in range(reps):
            for i in range(len(whole)):
                for f, writer in out.items():
                    writer.write(np.array(getattr(whole, f)[i:i + 1]))
                self.blocks += 1
                time.sleep(0.002)
        return SequenceArrays(**{f: w.finish() for f, w in out.items()},
                              lengths=np.tile(whole.lengths, reps),
                              ids=np.arange(len(whole) * reps), feature_names=whole.feature_names,
                              target_names=whole.target_names)


def test_a_file_rewritten_during_its_build_is_not_cached(data_file, tmp_path):
    """The digest (hashed alongside) and the arrays could come from two versions of the file:
    the build says so instead of storing them under either one's digest."""
    cache_dir = tmp_path / "cache"

    def rewriting(sink) -> SequenceArrays:
        arrays = fresh(data_file)
        make_frame(SPEC, n_seqs=4).write_parquet(data_file)  # another version, mid-build
        return arrays

    with pytest.raises(DataError, match="changed while kit read it .* nothing was cached"):
        cached_arrays_into(data_file, KEY, rewriting, cache_dir=cache_dir)
    assert entries(cache_dir) == [] and not list(cache_dir.glob(".tmp-*"))
    rebuilt = cached_arrays_into(data_file, KEY, BlockBuilder(data_file), cache_dir=cache_dir)
    assert len(entries(cache_dir)) == 1 and rebuilt.x.shape[0] == 4 * 40


def test_a_file_replaced_while_it_is_hashed_is_not_cached_under_the_old_digest(
        data_file, tmp_path, monkeypatch):
    """cached_arrays hashes first: a file renamed over the path meanwhile gave the old bytes'
    digest and the new file's arrays, served later for the old bytes."""
    cache_dir = tmp_path / "cache"
    real = cache_module.file_digest

    def replaced_after_hashing(path):
        digest = real(path)
        newer = data_file.with_suffix(".new")
        make_frame(SPEC, n_seqs=4).write_parquet(newer)
        newer.replace(data_file)  # rsync, mv: a new inode under the same name
        return digest

    monkeypatch.setattr(cache_module, "file_digest", replaced_after_hashing)
    with pytest.raises(DataError, match="changed while kit read it"):
        cached_arrays(data_file, KEY, lambda: fresh(data_file), cache_dir=cache_dir)
    assert entries(cache_dir) == []


WRITE_LIMITED = """
import resource, signal, sys, warnings
from pathlib import Path
import numpy as np
from kit.data.arrays import SequenceArrays
from kit.data.cache import cached_arrays_into

def build(sink):
    x = sink("x", (64, 100, 8), np.float32)
    for value in range(8):
        x.write(np.full((8, 100, 8), value, np.float32))
    return SequenceArrays(x=x.finish(), y=np.zeros((64, 100, 1), np.float32),
                          mask=np.ones((64, 100), bool), lengths=np.full(64, 100),
                          ids=np.arange(64), feature_names=[f"f{i}" for i in range(8)],
                          target_names=["t"])

root = Path(sys.argv[1])
(root / "in.bin").write_bytes(b"x" * 1000)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file past the limit: EFBIG, as a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # x.npy needs 205 KB
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    arrays = cached_arrays_into(root / "in.bin", {"k": 1}, build, cache_dir=root / "cache")
print(arrays.x.shape, float(arrays.x[-1, 0, 0]))
print([str(w.message) for w in caught])
print(sorted(p.name for p in (root / "cache").iterdir()))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX file size limits")
def test_a_cache_write_that_fails_mid_build_warns_and_returns_the_arrays(tmp_path):
    # a full disk while a 1.7 GB entry is written: the run goes on uncached, not lost
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WRITE_LIMITED, str(tmp_path)],
                          capture_output=True, text=True, env=os.environ | {
                              "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert done.returncode == 0, done.stderr
    shape, warned, left = done.stdout.splitlines()
    assert shape == "(64, 100, 8) 7.0"
    assert "could not write cache entry under" in warned and "x.npy" in warned
    assert "building the arrays again, uncached" in warned
    assert left == "[]"  # its temp folder is gone


def test_a_build_stops_when_the_overlapped_digest_finds_an_entry(data_file, tmp_path):
    cache_dir = tmp_path / "cache"
    first = BlockBuilder(data_file)
    built = cached_arrays_into(data_file, KEY, first, cache_dir=cache_dir)
    assert first.blocks == 3 * 40 and built.x.shape[0] == 3 * 40
    copy = tmp_path / "copy" / data_file.name  # same bytes, another inode: digest unknown
    copy.parent.mkdir()
    shutil.copy(data_file, copy)
    second = BlockBuilder(copy)
    hit = cached_arrays_into(copy, KEY, second, cache_dir=cache_dir)
    assert second.blocks < 3 * 40  # abandoned once the digest named the existing entry
    assert_same(hit, built)
    assert len(entries(cache_dir)) == 1 and not list(cache_dir.glob(".tmp-*"))


def test_a_copy_or_link_of_a_cached_file_under_another_name_uses_its_entry(
        data_file, tmp_path, monkeypatch):
    """Entries were named after the path as given: a symlink (whose digest digests.json
    knows) or a copy under another name built and stored the same arrays again."""
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    cache_dir, build = tmp_path / "cache", Builder(data_file)
    first = cached_arrays(data_file, KEY, build, cache_dir=cache_dir)
    (first_entry,) = [e for e in entries(cache_dir) if e.is_dir()]
    link = tmp_path / "train_v2.parquet"
    link.symlink_to(data_file)
    copy = tmp_path / "renamed_copy.parquet"
    shutil.copy(data_file, copy)
    for other in (link, copy):
        assert_same(cached_arrays(other, KEY, build, cache_dir=cache_dir), first)
    assert build.calls == 1
    assert [e.name for e in entries(cache_dir) if e.is_dir()] == [first_entry.name]


@pytest.mark.parametrize("settled", [False, True])
def test_an_unwritable_cache_still_serves_the_entry_of_a_file_copied_anew(
        data_file, tmp_path, monkeypatch, settled):
    """A read-only (or full) cache and a file with the same bytes under a new inode (restored,
    downloaded again): its digest is not on record, and the fallback built every time in
    memory, warning, without looking for the entry the digest names. Settled (old enough for
    its digest to be recorded), the hit tried to record it in digests.json and raised: on a
    read-only file system even unlinking a missing file fails (EROFS, not ENOENT)."""
    import errno
    import pathlib

    if settled:
        monkeypatch.setattr(cache_module, "RACY_NS", 0)
    cache_dir = tmp_path / "cache"
    first = cached_arrays_into(data_file, KEY, BlockBuilder(data_file), cache_dir=cache_dir)
    fresh_copy = tmp_path / "fresh.tmp"
    shutil.copy(data_file, fresh_copy)
    os.replace(fresh_copy, data_file)  # the same bytes, another inode
    monkeypatch.setattr(cache_module, "_digests", {})  # as a new process sees it

    def read_only(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_module, "_new_tmp", read_only)
    for name in ("write_text", "unlink"):  # whatever the cache folder is asked to change
        def refused(self, *args, _real=getattr(pathlib.Path, name), **kwargs):
            if self.parent == cache_dir:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(pathlib.Path, name, refused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached_arrays_into(data_file, KEY, second := BlockBuilder(data_file),
                                   cache_dir=cache_dir)
    assert second.blocks == 0
    assert_same(again, first)


# --- reading parquet -------------------------------------------------------------------------


def test_a_parquet_whose_data_page_is_damaged_raises_data_error(tmp_path):
    """The footer (and so the schema) reads, a data page does not: Polars' own error escaped,
    naming no file."""
    import pyarrow.parquet as pq

    from kit.data.io import read_frame

    path = tmp_path / "late.parquet"
    pq.write_table(make_frame(SPEC, n_seqs=2).to_arrow(), path, compression="snappy",
                   use_dictionary=False)
    column = pq.ParquetFile(path).metadata.row_group(0).column(5)
    start, size = column.data_page_offset, column.total_compressed_size
    data = bytearray(path.read_bytes())
    data[start + 20:start + size - 4] = bytes(size - 24)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: the parquet footer reads "
                       r"but its data does not \(.+\); the file is corrupt"):
        read_frame(path)
