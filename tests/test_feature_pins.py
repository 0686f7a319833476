"""Pins of feature-set and kernel behaviours no other test held (a mutation audit's survivors):
the division guard's sign and EPS, the rolling statistics' shift by the newest slot, the batch
face's clip rule, the digest, and the messages of refused sets and groups files."""

import re
from unittest.mock import patch

import numpy as np
import pytest
import torch

from kit.competition import load_spec, spec_from_dict
from kit.features import kernels
from kit.features.kernels import LIMIT
from kit.features.ops import Product
from kit.features.sets import (
    FeatureConfigError,
    available_groups,
    build_feature_set,
    user_groups_file,
)
from tests.frames import small_spec
from tests.test_features import SPEC, _frame, assert_faces_agree, groups_file


def _columns(**columns) -> list[float]:
    """One sequence with the given values of a..d (the others 0), flat as _frame takes it."""
    n = len(next(iter(columns.values())))
    values = np.zeros((n, 4))
    for name, col in columns.items():
        values[:, "abcd".index(name)] = col
    return values.ravel().tolist()


def _batch(fs, df) -> np.ndarray:
    return fs.batch_frame(df).select(fs.outputs).to_numpy()


# ----------------------------------------------------------------------------- kernels


def test_a_tiny_negative_denominator_keeps_its_sign_in_both_faces():
    """|d| < 1e-6 becomes 1e-6 with d's sign (0 counts as +): 1 / -1e-7 is -1e6, not +1e6.
    The batch face keeps the sign; a stream face that dropped it flipped the feature's sign
    in the package only."""
    df = _frame([3], _columns(a=[1.0, 1.0, -2.0], b=[-1e-7, 0.0, -5e-7]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "ratio", "a": ["a"], "b": ["b"]}])
    assert _batch(fs, df)[:, 0].tolist() == [-1e6, 1e6, 2e6]
    assert_faces_agree(fs, df)
    # a roc from a tiny negative value: (1 - -1e-7) / -1e-6
    df = _frame([2], _columns(a=[-1e-7, 1.0]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "roc", "inputs": ["a"], "k": 1}])
    assert _batch(fs, df)[1, 0] == pytest.approx(-1e6, rel=1e-6)
    assert_faces_agree(fs, df)


def test_a_rate_of_change_beside_a_delta_divides_safely_from_0():
    """A roc fused in one history kernel with a delta takes another branch than a roc alone:
    it must guard its denominator too (0 / 0 was NaN, 2 / 0 inf in the stream face)."""
    df = _frame([4], _columns(a=[0.0, 0.0, 2.0, 2.0], b=[1.0, 2.0, 3.0, 4.0]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "delta", "inputs": ["a", "b"], "k": 1}, {"op": "roc", "inputs": ["a"], "k": 2}])
    roc = _batch(fs, df)[:, fs.outputs.index("a@roc2")]
    assert roc.tolist() == [0.0, 0.0, 2e6, 2e6]  # 2 from 0: 2 / EPS
    assert_faces_agree(fs, df)


def test_eps_is_1e_6_in_both_faces():
    """The documented guard: a ratio over 0 divides by 1e-6, a roc from 0 too, and an
    imbalance adds 1e-6 to |a| + |b|."""
    df = _frame([2], _columns(a=[0.0, 1.0], b=[0.0, 0.0]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "ratio", "a": ["a"], "b": ["b"]}, {"op": "roc", "inputs": ["a"], "k": 1},
        {"op": "imbalance", "a": ["a"], "b": ["b"]}])
    ratio, roc, imbalance = _batch(fs, df)[1].tolist()
    assert ratio == roc == 1e6 and imbalance == pytest.approx(1.0 / (1.0 + 1e-6), abs=1e-7)
    assert_faces_agree(fs, df)


@pytest.mark.parametrize("tabled", [True, False])
def test_a_constant_window_beside_a_longer_one_is_exact_after_a_level_change(tabled):
    """Rolling mean and std sum each window minus its NEWEST value (docs/features.md), so a
    constant window gives exactly its value and a std of 0. With two windows in one kernel,
    the short one's oldest slot lies outside it: shifting by that (1e6 here) cost the digits
    of 102.41."""
    a = [1e6 + 0.37 * i for i in range(12)] + [102.41] * 10
    df = _frame([len(a)], _columns(a=a), [])
    with patch.object(kernels, "MEAN_STD_TABLE_LIMIT", 1e9 if tabled else 0):
        fs = build_feature_set(SPEC, groups=[], ops=[
            {"op": "rolling_mean", "inputs": ["a"], "window": 3},
            {"op": "rolling_std", "inputs": ["a"], "window": 3},
            {"op": "rolling_mean", "inputs": ["a"], "window": 20}])
        module = fs.stream_module()
        (history,) = [k for k in module.kernels if isinstance(k, kernels.HistoryKernel)]
        assert history.ms_tabled is tabled and len(history.ms_rows) == 2
        still = slice(14, None)  # the last 3 values are 102.41
        batch = _batch(fs, df)
        x = df.select(list("abcd")).to_numpy().astype(np.float32)
        state, steps = module.init_state(1), []
        with torch.no_grad():
            for t in range(len(a)):
                y, state = module(torch.from_numpy(x[None, t:t + 1]), state)
                steps.append(y[0, 0].numpy())
        stream = np.array(steps)
    for got in (batch, stream):
        assert (got[still, fs.outputs.index("a@roll_mean3")] == np.float32(102.41)).all()
        assert (got[still, fs.outputs.index("a@roll_std3")] == 0.0).all()
    np.testing.assert_allclose(stream, batch, rtol=1e-6)


# ----------------------------------------------------------------------------- sets


@pytest.mark.parametrize("bound", [0.6 * LIMIT, LIMIT, float("nan")])
def test_the_batch_face_clips_where_a_bound_passes_half_the_limit(bound):
    """Only a bound at most LIMIT / 2 skips the clip: the margin covers a bound that rounding
    left low, and a bound that is no number (NaN) is clipped as an unknown one. A product of
    1e10s given such a bound must still come out at LIMIT, as in the stream face."""
    df = _frame([2], _columns(a=[1e10, -1e10], b=[1e10, 1e10]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "product", "a": ["a"], "b": ["b"]}])
    with patch.object(Product, "output_bound", lambda self, inputs, rows: bound):
        assert _batch(fs, df)[:, 0].tolist() == [np.float32(LIMIT), -np.float32(LIMIT)]
    assert_faces_agree(fs, df)


def test_the_digest_is_16_hex_digits_and_covers_the_spec_name():
    """Ensembles share one pipeline per digest and the cache keys on it: 16 hex digits (a
    short one collides across sets), and two competitions with the same columns and set are
    two digests."""
    raw = {"features": ["a", "b", "c", "d"], "targets": ["y"], "seq_len": 0, "warmup": 0}
    one = build_feature_set(spec_from_dict({"name": "four", **raw}, "<tests>"), ["raw"])
    other = build_feature_set(spec_from_dict({"name": "five", **raw}, "<tests>"), ["raw"])
    assert one.computation() == other.computation()
    assert re.fullmatch(r"[0-9a-f]{16}", one.digest())
    assert one.digest() != other.digest()


@pytest.mark.parametrize("text", ["", "[groups]\n"])
def test_a_groups_file_without_a_group_is_refused(text, tmp_path, monkeypatch):
    """A groups file with no [groups.NAME] table (empty, or `[groups]` alone) is a mistake
    (a misspelt table name, a file not yet written): refused naming the file."""
    groups_file(tmp_path, monkeypatch, text)
    with pytest.raises(FeatureConfigError, match=r"wk.groups.toml: a groups file holds "
                                                 r"\[groups.NAME\] tables only"):
        available_groups(load_spec("wk"))


def test_a_spec_read_from_a_groups_file_has_nogroups_file(tmp_path, monkeypatch):
    """NAME.groups.toml is a groups file, not a spec: a spec sourced from one has no groups
    file of its own (it would look up NAME.groups.groups.toml)."""
    folder = groups_file(tmp_path, monkeypatch, "[groups.g]\nops = []\n")
    (folder / "wk.groups.groups.toml").write_text("[groups.h]\nops = []\n")
    raw = {"name": "wk", "features": ["hr"], "targets": ["y"], "seq_len": 0}
    assert user_groups_file(spec_from_dict(raw, str(folder / "wk.groups.toml"))) is None
    assert user_groups_file(spec_from_dict(raw, str(folder / "wk.toml"))) == \
        folder / "wk.groups.toml"


@pytest.mark.parametrize("ops, message", [
    # a roc's reach is its k, as a lag's and a delta's (not a "window")
    ([{"op": "roc", "inputs": ["p0"], "k": 21}],
     r"features.ops\[0\] \(roc\): k = 21 is more than the competition's sequences hold "
     r"\(20 steps\)"),
    ([{"op": "sum", "inputs": ["p0", "p1"], "name": ""}],
     r"\(sum\): name must be a non-empty string, got ''"),
    ([{"op": "lag", "inputs": [""], "k": 1}],
     r"\(lag\): inputs must be a list of column names, .* got \[''\]"),
    ([{"op": "diff", "a": ["p0"], "b": [""]}], r"\(diff\): b must be a list of column names"),
    # the keys an op takes, inputs first where it has them
    ([{"op": "lag", "inputs": ["p0"], "k": 1, "window": 3}],
     r"\(lag\): unknown key\(s\) \['window'\]; lag takes \['inputs', 'k'\]$"),
], ids=["roc reach", "empty name", "empty input", "empty pair column", "keys taken"])
def test_refused_ops_say_which_key_and_why(ops, message):
    """The message's key facts: which key is wrong and what the op takes."""
    with pytest.raises(FeatureConfigError, match=message):
        build_feature_set(small_spec(seq_len=20), groups=[], ops=ops)
