import dataclasses
import re
from unittest.mock import patch

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.competition import load_spec, spec_from_dict
from kit.errors import DataError
from kit.features import kernels
from kit.features.kernels import LIMIT
from kit.features.ops import OPS
from kit.features.sets import FeatureConfigError, available_groups, build_feature_set
from tests.frames import make_frame, small_spec

SPEC = spec_from_dict({"name": "four", "features": ["a", "b", "c", "d"], "targets": ["y"],
                       "seq_len": 0, "warmup": 0}, "<tests>")

SPAN_RANGE = r"span must be in \[1, 19999\]"

# One parameterisation per op (every op in the registry must appear here).
OP_CASES = {
    "raw": {"inputs": ["a", "b"]},
    "diff": {"a": ["a", "b"], "b": ["c", "d"]},
    "ratio": {"a": ["a"], "b": ["b"]},
    "product": {"a": ["a", "c"], "b": ["b", "d"]},
    "imbalance": {"a": ["a"], "b": ["b"]},
    "sum": {"inputs": ["a", "b", "c"]},
    "mean": {"inputs": ["a", "b", "c", "d"]},
    "wmid": {"bid": ["a"], "ask": ["b"], "bid_size": ["c"], "ask_size": ["d"]},
    "lag": {"inputs": ["a", "b"], "k": 3},
    "delta": {"inputs": ["a"], "k": 2},
    "roc": {"inputs": ["a", "c"], "k": 1},
    "rolling_mean": {"inputs": ["a", "b"], "window": 4},
    "rolling_std": {"inputs": ["a", "b"], "window": 5},
    "rolling_min": {"inputs": ["c"], "window": 3},
    "rolling_max": {"inputs": ["d"], "window": 6},
    "ewm_mean": {"inputs": ["a", "b"], "alpha": 0.3},
    "ewm_std": {"inputs": ["a"], "span": 5},
    "cumsum": {"inputs": ["a", "b"]},
    "cummax": {"inputs": ["c"]},
    "cumgain": {"inputs": ["d"]},
    "position": {"scale": 0.01},
}


def test_every_op_has_a_case():
    assert set(OP_CASES) == set(OPS)


def _frame(lengths, values, specials):
    """Ragged sequences; `values` is a seed or a flat list; specials put NaN/inf at (row, col)."""
    n = sum(lengths)
    if isinstance(values, int):
        rng = np.random.default_rng(values)
        values = rng.standard_normal(n * 4) * rng.choice([0.01, 1.0, 30.0])
    ids = np.repeat(np.arange(len(lengths)), lengths)
    steps = np.concatenate([np.arange(m) for m in lengths])
    x = np.asarray(values[: n * 4], dtype=np.float64).reshape(n, 4)
    for row, col, kind in specials:
        if row < n:
            x[row, col] = [np.nan, np.inf, -np.inf][kind]
    data = {"seq_ix": ids, "step_in_seq": steps, "need_prediction": np.ones(n, bool)}
    data |= {name: x[:, j].astype(np.float32) for j, name in enumerate("abcd")}
    return pl.DataFrame(data | {"y": np.zeros(n, np.float32)})


def assert_faces_agree(feature_set, df, rtol=1e-5):
    """Batch face == stream face step by step == stream face over whole sequences.

    Within rtol of the larger of the value and the inputs' magnitude (the largest guarded input
    of the frame): float32 sums of large inputs that cancel keep an error of the inputs' size, so
    a value near 0 made from inputs of 1e3 cannot be held to 1e-5 of itself. Small inputs (0.01)
    are held to 1e-5 of their own size, not to 1e-5 absolute.
    """
    batch = feature_set.batch_frame(df).select(feature_set.outputs).to_numpy()
    assert np.isfinite(batch).all()
    module = feature_set.stream_module()
    x = df.select(feature_set.spec.features).to_numpy().astype(np.float32)
    finite = np.abs(x[np.isfinite(x)])
    magnitude = float(min(finite.max(initial=0.0), LIMIT))
    ids = df[feature_set.spec.id_col].to_numpy()
    for sid in np.unique(ids):
        rows = np.flatnonzero(ids == sid)
        seq = torch.from_numpy(x[rows]).unsqueeze(0)
        state = module.init_state(1)
        steps = []
        with torch.no_grad():
            for t in range(len(rows)):
                y, state = module(seq[:, t : t + 1], state)
                steps.append(y[0, 0].numpy())
            whole, _ = module(seq, module.init_state(1))
        steps = np.array(steps)
        expected = batch[rows]
        assert np.isfinite(steps).all()
        tolerance = rtol * np.maximum(magnitude, np.abs(expected))
        bad = np.abs(steps - expected) > tolerance
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise AssertionError(f"seq {sid} step {r} feature {feature_set.outputs[c]}: "
                                 f"stream {steps[r, c]} vs batch {expected[r, c]}")
        assert (np.abs(whole[0].numpy() - steps) <= tolerance).all()


values = st.integers(0, 2**32 - 1)
lengths = st.lists(st.integers(1, 15), min_size=1, max_size=4)
specials = st.lists(st.tuples(st.integers(0, 59), st.integers(0, 3), st.integers(0, 2)),
                    max_size=8)


@pytest.mark.parametrize("op", sorted(OP_CASES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=lengths, values=values, specials=specials)
def test_batch_face_equals_stream_face(op, lengths, values, specials):
    feature_set = build_feature_set(SPEC, groups=[], ops=[{"op": op, **OP_CASES[op]}])
    assert_faces_agree(feature_set, _frame(lengths, values, specials))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=lengths, values=values, specials=specials)
def test_rolling_mean_std_weights_computed_from_the_count_equal_the_batch_face(
        lengths, values, specials):
    # MEAN_STD_TABLE_LIMIT = 0: the weights of these small windows are computed, not tabled
    with patch.object(kernels, "MEAN_STD_TABLE_LIMIT", 0):
        fs = build_feature_set(SPEC, groups=[], ops=[
            {"op": "rolling_mean", "inputs": ["a", "b"], "window": 4},
            {"op": "rolling_std", "inputs": ["a", "c"], "window": 7}])
        (history,) = [k for k in fs.stream_module().kernels
                      if isinstance(k, kernels.HistoryKernel)]
        assert not history.ms_tabled
        assert_faces_agree(fs, _frame(lengths, values, specials))


QUIET_QUOTE_OPS = [  # ratios of rolling statistics: the shapes that blow up an ulp
    {"op": "rolling_mean", "inputs": ["a"], "window": 5},
    {"op": "rolling_std", "inputs": ["a", "b"], "window": 5},
    {"op": "diff", "a": ["a"], "b": ["a@roll_mean5"]},
    {"op": "ratio", "a": ["a-a@roll_mean5"], "b": ["a@roll_std5"]},  # a z-score
    {"op": "imbalance", "a": ["a@roll_std5"], "b": ["b@roll_std5"]},  # a volatility imbalance
    {"op": "roc", "inputs": ["a@roll_std5"], "k": 1},
]


def _quiet_quotes(seed: int) -> pl.DataFrame:
    """Prices on a 0.01 tick grid that sit still for stretches longer than the window, as
    order-book quotes do: constant windows at many price levels."""
    rng = np.random.default_rng(seed)
    n = 120
    # levels whose float32 mean of five copies rounds off them in float32 arithmetic (102.41:
    # Polars' float32 rolling mean gave 102.41001 where the stream face gives 102.41)
    base = (100.0, 102.41, 912.84, 555.57)[seed % 4]
    level = base + np.cumsum(rng.choice([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, -0.01], n))
    a = np.round(level, 2)
    b = np.round(level + 0.02, 2)
    c = np.round(level * 3, 2)
    d = np.full(n, 5.0)
    return pl.DataFrame({"seq_ix": np.repeat([0, 1], n // 2), "step_in_seq": np.tile(
        np.arange(n // 2), 2), "need_prediction": np.ones(n, bool)} | {
        name: col.astype(np.float32) for name, col in zip("abcd", (a, b, c, d), strict=True)}
        | {"y": np.zeros(n, np.float32)})


@pytest.mark.parametrize("tabled", [True, False])
def test_constant_windows_give_exact_rolling_statistics_in_both_faces(tabled, tmp_path):
    # the stream face sums each window minus its newest value: a constant window is exactly
    # its value with a std of 0, as in the batch face, whatever the price level
    with patch.object(kernels, "MEAN_STD_TABLE_LIMIT", 1e9 if tabled else 0):
        fs = build_feature_set(SPEC, groups=[], ops=QUIET_QUOTE_OPS)
        history = next(k for k in fs.stream_module().kernels
                       if isinstance(k, kernels.HistoryKernel))  # the rolling stats' layer
        assert history.ms_tabled is tabled  # the table where it fits: fewer graph nodes
        for seed in range(4):
            df = _quiet_quotes(seed)
            assert_faces_agree(fs, df)
            got, expected = onnx_steps_and_batch_face(fs, df, tmp_path / f"q{seed}.onnx")
            still = np.zeros(len(df), bool)  # rows whose window of `a` holds one value
            for _, seq in df.with_row_index().group_by("seq_ix"):
                a, rows = seq["a"].to_numpy(), seq["index"].to_numpy()
                still[rows] = [len(set(a[max(0, t - 4):t + 1])) == 1 for t in range(len(a))]
            assert still.sum() > 20
            for name in ("a@roll_std5", "a-a@roll_mean5", "a-a@roll_mean5/a@roll_std5"):
                j = fs.outputs.index(name)
                np.testing.assert_array_equal(got[still, j], 0.0, err_msg=name)
                np.testing.assert_array_equal(expected[still, j], 0.0, err_msg=name)
            # elsewhere the z-score's x - mean cancels in float32 in both faces, differently
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=5e-3)


@pytest.mark.parametrize("tabled", [True, False])
def test_the_stream_face_fed_in_chunks_equals_it_fed_step_by_step(tabled):
    """Every op's stream face takes [B, T, F] chunks with its state carried over: a chunk
    that starts mid-sequence (count > 0) must continue it, not start a new one (a rolling
    window that ignored the count, or a position restarting at 0, passed the tests that feed
    whole sequences from zero state)."""
    import torch

    ops = [{"op": name, **params} for name, params in OP_CASES.items()]
    with patch.object(kernels, "MEAN_STD_TABLE_LIMIT", 1e9 if tabled else 0):
        module = build_feature_set(SPEC, groups=[], ops=ops).stream_module().eval()
    df = _frame([13, 9], 7, [(2, 0, 0), (5, 1, 1), (15, 3, 2)])
    for _, seq in df.group_by("seq_ix", maintain_order=True):
        x = torch.from_numpy(seq.select(list("abcd")).to_numpy().astype(np.float32))[None]
        with torch.no_grad():
            steps, state = [], module.init_state(1)
            for t in range(x.shape[1]):
                y, state = module(x[:, t:t + 1], state)
                steps.append(y)
            stepped = torch.cat(steps, dim=1)
            chunks, state = [], module.init_state(1)
            for start, stop in ((0, 4), (4, 5), (5, x.shape[1])):
                y, state = module(x[:, start:stop], state)
                chunks.append(y)
        torch.testing.assert_close(torch.cat(chunks, dim=1), stepped, rtol=1e-6, atol=1e-6)


EWM_QUOTE_OPS = [  # the z-score of an EWM: x - m cancels, over a std of a fraction of a tick
    {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.5},
    {"op": "ewm_std", "inputs": ["a", "c"], "alpha": 0.5},
    {"op": "ewm_std", "inputs": ["b"], "span": 9},
    {"op": "diff", "a": ["a"], "b": ["a@ewm_mean0.5"]},
    {"op": "ratio", "a": ["a-a@ewm_mean0.5"], "b": ["a@ewm_std0.5"]},
]


def _ewm64(x: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The documented recursion in float64 on float32 inputs: the exact mean and std."""
    mean, var, means, stds = float(x[0]), 0.0, [], []
    for value in x.astype(np.float64):
        delta = value - mean
        mean += alpha * delta
        var = (1 - alpha) * (var + alpha * delta * delta)
        means.append(mean)
        stds.append(np.sqrt(var))
    return np.array(means), np.array(stds)


def test_ewm_statistics_of_quiet_quotes_are_exact_in_both_faces(tmp_path):
    # a float32 EWM mean of 912.84 is off by up to 3e-5, as much as the std of a quiet stretch:
    # the stream face's std was 7% off the exact one and the batch face's (Polars in float32)
    # 14%, so a z-score read 0.51 in one face and 0.48 in the other (exact: 0.011)
    fs = build_feature_set(SPEC, groups=[], ops=EWM_QUOTE_OPS)
    for seed in range(4):
        df = _quiet_quotes(seed)
        assert_faces_agree(fs, df)
        got, expected = onnx_steps_and_batch_face(fs, df, tmp_path / f"e{seed}.onnx")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * 3000)
        for sid in (0, 1):
            rows = (df["seq_ix"] == sid).to_numpy()
            for name, column, alpha in (("a@ewm_std0.5", "a", 0.5), ("b@ewm_std0.2", "b", 0.2),
                                        ("c@ewm_std0.5", "c", 0.5)):
                mean, std = _ewm64(df.filter(rows)[column].to_numpy(), alpha)
                j = fs.outputs.index(name)
                for face in (got, expected):
                    np.testing.assert_allclose(face[rows, j], std, rtol=1e-4, atol=1e-9,
                                               err_msg=name)
            j = fs.outputs.index("a@ewm_mean0.5")
            mean, _ = _ewm64(df.filter(rows)["a"].to_numpy(), 0.5)
            for face in (got, expected):  # the float32 rounding of the exact mean
                np.testing.assert_allclose(face[rows, j], mean.astype(np.float32), rtol=2e-7)


def test_slow_ewms_use_the_same_alpha_in_both_faces():
    # float32 holds 1 - 1e-4 as 1 - 1.000166e-4: the stream face decayed by that while the
    # batch face used the exact alpha, 2.4e-5 apart after 5000 steps at span 19999 (r239)
    rng = np.random.default_rng(11)
    n = 5000
    a = np.cumsum(rng.standard_normal(n)) * 0.05
    df = pl.DataFrame({"seq_ix": np.zeros(n, np.int64), "step_in_seq": np.arange(n),
                       "need_prediction": np.ones(n, bool)} | {
        name: col.astype(np.float32) for name, col in zip(
            "abcd", (a, rng.standard_normal(n), np.zeros(n), np.zeros(n)), strict=True)}
        | {"y": np.zeros(n, np.float32)})
    ops = [{"op": op, "inputs": ["a", "b"], "span": span}
           for op in ("ewm_mean", "ewm_std") for span in (19999, 9999)]
    fs = build_feature_set(SPEC, groups=[], ops=ops)
    assert "a@ewm_mean0.0001" in fs.outputs  # names keep the alpha asked for
    assert_faces_agree(fs, df)


def test_long_rolling_windows_stay_small_in_the_step_graph(tmp_path):
    # a window as long as a sequence over every feature: constants grow as rows * window (a
    # table per step count would hold (32 * 1000)^2 floats: 4 GB, past ONNX's 2 GB)
    spec = load_spec("predictorium")
    fs = build_feature_set(spec, ["raw"], [
        {"op": "rolling_mean", "inputs": ["@features"], "window": 1000},
        {"op": "rolling_std", "inputs": ["@features"], "window": 1000}])
    module = fs.stream_module()
    assert sum(b.numel() for b in module.buffers()) < 200_000
    df = make_frame(spec, lengths=[40, 3], seed=4)
    assert_onnx_step_graph_equals_batch_face(fs, df, tmp_path / "long.onnx")
    assert (tmp_path / "long.onnx").stat().st_size < 2_000_000


def test_start_of_sequence_semantics():
    df = _frame([5], [float(v) for v in range(100)], [])
    a = np.arange(5) * 4.0  # column a holds 0, 4, 8, 12, 16
    ops = [{"op": "lag", "inputs": ["a"], "k": 2}, {"op": "delta", "inputs": ["a"], "k": 2},
           {"op": "rolling_mean", "inputs": ["a"], "window": 3},
           {"op": "rolling_std", "inputs": ["a"], "window": 3},
           {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.5}, {"op": "cumgain", "inputs": ["a"]},
           {"op": "position", "scale": 1.0}]
    fs = build_feature_set(SPEC, groups=[], ops=ops)
    out = fs.batch_frame(df)
    np.testing.assert_allclose(out["a@lag2"], [0, 0, 0, 4, 8])  # first value stands in
    np.testing.assert_allclose(out["a@delta2"], [0, 4, 8, 8, 8])
    np.testing.assert_allclose(out["a@roll_mean3"], [0, 2, 4, 8, 12])  # steps seen so far
    np.testing.assert_allclose(out["a@roll_std3"], [0, 2, np.std([0, 4, 8]), np.std([4, 8, 12]),
                                                    np.std([8, 12, 16])], rtol=1e-6)
    np.testing.assert_allclose(out["a@ewm_mean0.5"], [0, 2, 5, 8.5, 12.25])
    np.testing.assert_allclose(out["a@cumgain"], a)
    np.testing.assert_allclose(out["position"], np.arange(5))
    assert_faces_agree(fs, df)


def test_guard_forward_fills_then_zero():
    df = _frame([4], [float(v) for v in range(16)], [(0, 0, 0), (2, 0, 1), (3, 0, 2)])
    fs = build_feature_set(SPEC, groups=["raw"])
    out = fs.batch_frame(df)
    np.testing.assert_allclose(out["a"], [0.0, 4.0, 4.0, 4.0])
    assert_faces_agree(fs, df)


def test_guard_handles_nulls_in_the_batch_face():
    df = _frame([3], [float(v) for v in range(12)], []).with_columns(
        pl.Series("b", [1.0, None, 3.0], dtype=pl.Float32))
    out = build_feature_set(SPEC, groups=["raw"]).batch_frame(df)
    np.testing.assert_allclose(out["b"], [1.0, 1.0, 3.0])


@pytest.mark.parametrize("scale", [1e12, 1e20, 3e38])
def test_huge_finite_values_never_make_inf_or_nan(scale):
    """Finite inputs up to float32's max: the guard clips them to +-LIMIT and ops that can grow
    past their inputs are clipped too, so products, squares (std) and weighted mids never
    overflow, and a later op (an EWM std of a product) never computes inf - inf. Without the
    clipping, 1e20 already gave NaN in rolling_std and wmid and inf in products."""
    ops = [{"op": op, **case} for op, case in OP_CASES.items() if op != "raw"]
    ops += [{"op": "ewm_std", "inputs": ["a*b"], "alpha": 0.3},
            {"op": "rolling_std", "inputs": ["a/b", "a@cumsum"], "window": 4},
            {"op": "product", "a": ["a*b"], "b": ["c*d"]}]
    fs = build_feature_set(SPEC, groups=["raw"], ops=ops)
    rng = np.random.default_rng(int(np.log10(scale)))
    values = rng.standard_normal(240) * scale * rng.choice([1e-3, 1.0], 240)
    df = _frame([30, 12, 18], values.clip(-3.4e38, 3.4e38).tolist(), [(4, 0, 0), (40, 2, 1)])
    batch = fs.batch_frame(df).select(fs.outputs).to_numpy()
    assert np.isfinite(batch).all() and np.abs(batch).max() <= LIMIT
    assert_faces_agree(fs, df)


@pytest.mark.parametrize("op", sorted(OP_CASES))
def test_inputs_just_under_the_limit_are_clipped_alike_in_both_faces(op):
    """Inputs of 4e15 (under LIMIT 1e16) whose sums of 3 or 4 pass it: the batch face skips a
    clip only where the op's output bound rules it out, so a bound too small (a sum's or a
    cumsum's) left 1.6e16 in the batch face where the stream face clips to 1e16."""
    fs = build_feature_set(SPEC, groups=["raw"], ops=[{"op": op, **OP_CASES[op]}])
    steady = [4e15] * 16  # 4 rows of 4 columns
    alternating = [4e15 * (-1) ** (i // 4) for i in range(16)]
    for values in (steady, alternating):
        df = _frame([4], values, [])
        batch = fs.batch_frame(df).select(fs.outputs).to_numpy()
        assert np.isfinite(batch).all() and np.abs(batch).max() <= LIMIT
        assert_faces_agree(fs, df)


@pytest.mark.parametrize("group", sorted(available_groups(load_spec("predictorium"))))
def test_predictorium_groups_agree_on_ragged_data_with_nan(group):
    spec = load_spec("predictorium")
    df = make_frame(spec, lengths=[60, 7, 1], seed=4)
    df = df.with_columns(pl.when(pl.col("step_in_seq") % 9 == 3).then(float("nan"))
                         .otherwise(pl.col("v2")).alias("v2"))
    assert_faces_agree(build_feature_set(spec, groups=[group]), df)


def test_all_predictorium_groups_fused_together_agree():
    spec = load_spec("predictorium")
    df = make_frame(spec, lengths=[70, 3, 1, 55], seed=7)
    df = df.with_columns(pl.when(pl.col("step_in_seq") % 11 == 4).then(float("inf"))
                         .otherwise(pl.col("p0")).alias("p0"))
    assert_faces_agree(build_feature_set(spec, list(available_groups(spec))), df)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=lengths, values=values, specials=specials)
def test_one_family_kernel_serves_mixed_ops(lengths, values, specials):
    ops = [{"op": "lag", "inputs": ["a", "b"], "k": 1}, {"op": "lag", "inputs": ["a"], "k": 4},
           {"op": "delta", "inputs": ["c"], "k": 2}, {"op": "roc", "inputs": ["d"], "k": 3},
           {"op": "rolling_mean", "inputs": ["a"], "window": 2},
           {"op": "rolling_mean", "inputs": ["a", "b"], "window": 6},
           {"op": "rolling_std", "inputs": ["c"], "window": 3},
           {"op": "rolling_min", "inputs": ["d", "a"], "window": 4},
           {"op": "rolling_max", "inputs": ["b"], "window": 7},
           {"op": "ewm_mean", "inputs": ["a", "b"], "alpha": 0.5},
           {"op": "ewm_std", "inputs": ["a"], "alpha": 0.1},
           {"op": "ewm_mean", "inputs": ["c"], "span": 9},
           {"op": "cumsum", "inputs": ["a"]}, {"op": "cummax", "inputs": ["b"]},
           {"op": "cumgain", "inputs": ["c", "d"]},
           {"op": "position", "scale": 0.5}, {"op": "position", "scale": 2.0, "name": "pos2"}]
    fs = build_feature_set(SPEC, groups=[], ops=ops)
    assert len(fs.stream_module().kernels) == 4  # history, ewm, cumulative, position
    assert_faces_agree(fs, _frame(lengths, values, specials))


def test_a_sum_or_mean_output_named_like_a_range_is_an_input_by_its_name():
    # "sum(a..c)" reads like the column range a..c; as a defined output it is taken whole
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "sum", "inputs": ["a", "b", "c"], "name": "sum(a..c)"},
        {"op": "mean", "inputs": ["b", "c"], "name": "mean(b..c)"},
        {"op": "lag", "inputs": ["sum(a..c)", "mean(b..c)"], "k": 1}])
    assert fs.outputs[-2:] == ["sum(a..c)@lag1", "mean(b..c)@lag1"]
    assert_faces_agree(fs, _frame([7, 3], 5, []))
    # not defined yet: an unknown column, not a column range's syntax error (r295)
    with pytest.raises(FeatureConfigError, match=r"unknown column\(s\) \['sum\(a\.\.c\)'\]"):
        build_feature_set(SPEC, groups=[], ops=[{"op": "lag", "inputs": ["sum(a..c)"], "k": 1}])


def test_a_stored_set_rebuilds_to_the_same_outputs():
    # a checkpoint stores FeatureSet.to_dict() (position with inputs = [] included) and pack
    # rebuilds the set from it
    spec = load_spec("predictorium")
    sets = [build_feature_set(spec, list(available_groups(spec)))]
    sets += [build_feature_set(SPEC, groups=[], ops=[{"op": op, **case}])
             for op, case in OP_CASES.items()]
    for fs in sets:
        ops = fs.to_dict()["ops"]
        assert build_feature_set(fs.spec, [], ops, stored=True).outputs == fs.outputs
        assert build_feature_set(fs.spec, [], ops).outputs == fs.outputs
    # a limit added after a run was trained does not lock its stored set out
    short = small_spec(seq_len=20)
    ops = [{"op": "lag", "inputs": ["p0"], "k": 30}]
    with pytest.raises(FeatureConfigError, match="k = 30 is more than"):
        build_feature_set(short, [], ops)
    assert build_feature_set(short, [], ops, stored=True).outputs == ["p0@lag30"]


def test_lags_and_windows_are_bounded_by_the_competitions_sequences():
    spec = small_spec(seq_len=20)
    assert build_feature_set(spec, [], [{"op": "rolling_mean", "inputs": ["p0"],
                                         "window": 20}]).outputs == ["p0@roll_mean20"]
    with pytest.raises(FeatureConfigError, match=r"\(delta\): k = 21 is more than the "
                       r"competition's sequences hold \(20 steps\): use at most 20"):
        build_feature_set(spec, [], [{"op": "delta", "inputs": ["p0"], "k": 21}])


def test_ops_can_read_earlier_outputs_and_duplicates_are_computed_once():
    fs = build_feature_set(SPEC, groups=["raw", "lags", "raw"], ops=[
        {"op": "diff", "a": ["a"], "b": ["b"]},
        {"op": "ewm_mean", "inputs": ["a-b"], "alpha": 0.2},
    ])
    assert fs.outputs.count("a") == 1 and fs.outputs[-1] == "a-b@ewm_mean0.2"
    # the same values asked for again by a narrower op: computed once, no error
    narrower = build_feature_set(SPEC, groups=[], ops=[
        {"op": "lag", "inputs": ["a", "b"], "k": 1}, {"op": "lag", "inputs": ["b"], "k": 1},
        {"op": "diff", "a": ["a", "c"], "b": ["b", "d"]}, {"op": "diff", "a": ["c"], "b": ["d"]},
        {"op": "raw", "inputs": ["a", "b"]}, {"op": "raw", "inputs": ["b"]}])
    assert narrower.outputs == ["a@lag1", "b@lag1", "a-b", "c-d", "a", "b"]
    assert_faces_agree(fs, _frame([9, 4], [float(np.sin(v)) for v in range(60)], []))
    # a wider op that shares some outputs, made the same way, adds only the new ones (it was
    # refused, saying the two identical recipes clash)
    wider = build_feature_set(SPEC, groups=[], ops=[
        {"op": "lag", "inputs": ["a"], "k": 1}, {"op": "lag", "inputs": ["a", "b"], "k": 1},
        {"op": "diff", "a": ["a"], "b": ["b"]}, {"op": "diff", "a": ["a", "c"], "b": ["b", "d"]},
        {"op": "raw", "inputs": ["a"]}, {"op": "raw", "inputs": ["a", "c"]}])
    assert wider.outputs == ["a@lag1", "b@lag1", "a-b", "c-d", "a", "c"]
    assert_faces_agree(wider, _frame([9, 4], [float(np.cos(v)) for v in range(60)], []))
    with pytest.raises(FeatureConfigError, match=r"'a@ewm_mean0.1234' is already defined"):
        build_feature_set(SPEC, groups=[], ops=[  # another recipe under a shared name
            {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.12341},
            {"op": "ewm_mean", "inputs": ["a", "b"], "alpha": 0.12344}])


@pytest.mark.parametrize(
    "ops, message",
    [
        ([{"op": "nope", "inputs": ["a"]}], "features.ops\\[0\\]: unknown op 'nope'"),
        ([{"op": "lag", "inputs": ["zz"], "k": 1}], "features.ops\\[0\\] \\(lag\\): unknown col"),
        ([{"op": "rolling_mean", "inputs": ["a"], "window": 0}],
         r"features.ops\[0\] \(rolling_mean\): .*'window' >= 2, got 0"),
        ([{"op": "lag", "inputs": ["a"], "k": -1}], r"features.ops\[0\] \(lag\): .*'k' >= 1"),
        ([{"op": "ewm_mean", "inputs": ["a"]}],
         r"features.ops\[0\] \(ewm_mean\): .*exactly one of 'alpha'"),
        ([{"op": "ewm_mean", "inputs": ["a"], "alpha": 2.0}],
         r"features.ops\[0\] \(ewm_mean\): .*alpha must be in"),
        ([{"op": "diff", "a": ["a"], "b": []}],
         r"features.ops\[0\] \(diff\): .*equal, non-zero length"),
        ([{"op": "cumsum"}], r"features.ops\[0\] \(cumsum\): no input columns"),
        (["lag"], r"features.ops\[0\]: each op is a table"),
        # an output named like a raw feature would be the raw column in the stream face
        ([{"op": "sum", "inputs": ["b", "c"], "name": "a"}],
         r"features.ops\[0\] \(sum\): output 'a' is already defined by the competition's raw"),
        ([{"op": "position", "name": "d"}], r"\(position\): output 'd' is already defined"),
        # a different op under a name already taken is not dropped as a duplicate
        ([{"op": "sum", "inputs": ["a", "b"], "name": "s"},
          {"op": "mean", "inputs": ["c", "d"], "name": "s"}],
         r"features.ops\[1\] \(mean\): output 's' is already defined by features.ops\[0\]"),
        ([{"op": "ewm_mean", "inputs": ["a"], "alpha": 0.12341},
          {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.12344}],
         r"features.ops\[1\] \(ewm_mean\): output 'a@ewm_mean0.1234' is already defined"),
        ([{"op": "lag", "inputs": ["a", "b", "a"], "k": 1}],
         r"features.ops\[0\] \(lag\): makes \['a@lag1'\] more than once"),
        ([{"op": "ewm_mean", "inputs": ["a"], "span": float("inf")}], SPAN_RANGE),
        ([{"op": "ewm_std", "inputs": ["a"], "span": float("nan")}], SPAN_RANGE),
        # a TOML int past float's range: an OverflowError traceback from math.isfinite
        ([{"op": "ewm_mean", "inputs": ["a"], "span": 10**400}], SPAN_RANGE),
        # float32 holds 1 - alpha to 6e-8: alpha 1e-7 was 19% off in the stream face
        ([{"op": "ewm_mean", "inputs": ["a"], "span": 20_000}], SPAN_RANGE),
        # below 1: alpha 2 / (span + 1) past 1, an EWM that diverges
        ([{"op": "ewm_mean", "inputs": ["a"], "span": 0.5}], SPAN_RANGE),
        ([{"op": "ewm_mean", "inputs": ["a"], "alpha": 1.5}], r"alpha must be in \(0, 1\]"),
        ([{"op": "position", "scale": 0}], r"scale must be a number in \(0, 1e\+16\]"),
        ([{"op": "ewm_std", "inputs": ["a"], "alpha": 1e-7}],
         r"alpha must be >= 0.0001 \(span <= 19999\), got 1e-07: the stream face's float32"),
        ([{"op": "position", "scale": float("inf")}], r"scale must be a number in \(0, 1e\+16\]"),
        ([{"op": "position", "scale": float("nan")}], r"scale must be a number in"),
        ([{"op": "position", "scale": 1e39}], r"scale must be a number in"),  # inf in float32
        # a grouping the output names cannot show: (a-b)-c and a-(b-c) are both a-b-c
        ([{"op": "diff", "a": ["a"], "b": ["b"]}, {"op": "diff", "a": ["b"], "b": ["c"]},
          {"op": "diff", "a": ["a-b"], "b": ["c"]}, {"op": "diff", "a": ["a"], "b": ["b-c"]}],
         r"features.ops\[3\] \(diff\): output 'a-b-c' is already defined by features.ops\[2\] "
         r"\(from op 'diff', a 'a-b', b 'c'\); this op makes it from op 'diff', a 'a', b 'b-c'; "
         r"name an input another way first"),
        ([{"op": "sum", "inputs": []}], r"features.ops\[0\] \(sum\): no input columns given"),
        # no inputs: k and window went unread until the reach check raised a bare ValueError
        ([{"op": "lag"}], r"features.ops\[0\] \(lag\): lag needs an integer 'k' >= 1, got None"),
        ([{"op": "rolling_mean", "inputs": [], "window": 1}],
         r"features.ops\[0\] \(rolling_mean\): rolling_mean needs an integer 'window' >= 2"),
        ([{"op": "lag", "inputs": [], "k": 2}], r"features.ops\[0\] \(lag\): no input columns"),
        ([{"op": "sum", "inputs": [["a"], ["a"]]}], r"\(sum\): inputs must be a list of column"),
        ([{"op": "diff", "a": [{"x": 1}], "b": ["b"]}], r"\(diff\): a must be a list of column"),
        # a string where a list of columns goes would be read letter by letter
        ([{"op": "diff", "a": "a", "b": "b"}], r"\(diff\): a must be a list of column names"),
        ([{"op": "wmid", "bid": ["a"], "ask": "b", "bid_size": ["c"], "ask_size": ["d"]}],
         r"\(wmid\): ask must be a list of column names"),
        ([{"op": "diff", "a": ["a"], "b": ["b"], "inputs": ["c"]}],
         r"\(diff\): takes its columns from \['a', 'b'\], not inputs"),
        # a typo is not silently the default; the keys listed are the ones the op takes
        ([{"op": "position", "scael": 0.01}],
         r"features.ops\[0\] \(position\): unknown key\(s\) \['scael'\]; position takes "
         r"\['scale', 'name'\]"),
        ([{"op": "diff", "a": ["a"], "b": ["b"], "k": 1}], r"diff takes \['a', 'b'\]$"),
        # a lag or window past what a sequence holds: the stream face would hold it all
        ([{"op": "lag", "inputs": ["a"], "k": 10**12}],
         r"\(lag\): k = 1,000,000,000,000 is more than kit allows for sequences of any length "
         r"\(100,000 steps\): use at most 100,000"),
        ([{"op": "rolling_max", "inputs": ["a"], "window": 10**9}], r"window = 1,000,000,000"),
        ([{"op": "lag", "inputs": ["a"], "k": 1, "window": 3}], r"unknown key\(s\) \['window'\]"),
        ([{"op": "lag", "inputs": "a", "k": 1}], r"\(lag\): inputs must be a list"),
        ([{"op": ["lag"], "inputs": ["a"], "k": 1}], r"features.ops\[0\]: unknown op \['lag'\]"),
        ([{"op": "sum", "inputs": ["a", "b"], "name": ["s"]}], r"name must be a non-empty str"),
        ([{"op": "position", "name": 5}], r"\(position\): name must be a non-empty string"),
        ([{"op": "lag", "inputs": ["x5..x0"], "k": 1}],
         r"features.ops\[0\] \(lag\): column range 'x5..x0' runs backwards"),
        ([{"op": "lag", "inputs": ["x0..x1000000000"], "k": 1}],  # not expanded first
         r"features.ops\[0\] \(lag\): column range 'x0..x1000000000' names 1,000,000,001"),
        ([{"op": "mean", "inputs": ["a", "a", "b"]}],
         r"features.ops\[0\] \(mean\): .*input\(s\) \['a'\] listed more than once"),
        ([{"op": "ewm_mean", "inputs": ["a"], "alpha": True}], r"alpha must be in \(0, 1\]"),
        ([{"op": "ewm_std", "inputs": ["a"], "span": True}], SPAN_RANGE),
        ([{"op": "position", "scale": True}], r"scale must be a number in"),
        ([{"op": "position", "inputs": ["a"]}], r"\(position\): takes no inputs"),
        # names the batch frame uses already: the step counter, the id, a target
        ([{"op": "sum", "inputs": ["c", "d"], "name": "__pos"}],
         r"features.ops\[0\] \(sum\): output '__pos' is kit's step counter"),
        ([{"op": "position", "name": "seq_ix"}], r"output 'seq_ix' is a column of the compet"),
        ([{"op": "sum", "inputs": ["a", "b"], "name": "y"}], r"output 'y' is a column of the"),
        ([{"op": "sum", "inputs": ["a", "b"], "name": "__start"}],
         r"features.ops\[0\] \(sum\): output '__start' is kit's sequence-start flag"),
        ([{"op": "position", "name": "need_prediction"}],
         r"output 'need_prediction' is a column of the competition"),
        # one name, other inputs: a sum's recipe without its inputs merged the two as one
        ([{"op": "sum", "inputs": ["a", "b"], "name": "s"},
          {"op": "sum", "inputs": ["c", "d"], "name": "s"}],
         r"features.ops\[1\] \(sum\): output 's' is already defined by features.ops\[0\] "
         r"\(from op 'sum', inputs \['a', 'b'\]\)"),
        # one name, another scale: position's recipe without its scale merged the two
        ([{"op": "position"}, {"op": "position", "scale": 1.0}],
         r"features.ops\[1\] \(position\): output 'position' is already defined by "
         r"features.ops\[0\] \(from op 'position', scale 0.001\)"),
        # levels of unequal length: zip(strict=True) raised a bare ValueError, or a short list
        # was silently cut to the shortest
        ([{"op": "wmid", "bid": ["a", "b"], "ask": ["c"], "bid_size": ["d"], "ask_size": ["a"]}],
         r"features.ops\[0\] \(wmid\): wmid needs lists .* of equal, non-zero length"),
        ([{"op": "wmid", "bid": ["a"], "ask": ["b"], "bid_size": ["c", "d"], "ask_size": ["d"]}],
         r"features.ops\[0\] \(wmid\): wmid needs lists .* of equal, non-zero length"),
    ],
)
def test_bad_feature_specs_name_the_entry(ops, message):
    with pytest.raises(FeatureConfigError, match=message):
        build_feature_set(SPEC, groups=[], ops=ops)


@pytest.mark.parametrize("groups", [[["raw"]], [{"x": 1}], [1]])
def test_a_group_that_is_not_a_name_is_refused(groups):
    with pytest.raises(FeatureConfigError, match=r"features.groups\[0\]: a group name"):
        build_feature_set(SPEC, groups=groups, ops=[])


def test_imbalance_of_tiny_inputs_stays_clipped_alike_in_both_faces():
    """Inputs of 1e-6 give an imbalance near 0.67: its bound is 1, not the inputs' size, or
    the batch face skipped the clip of a later ratio the stream face applies (6.7e17 vs 1e16)."""
    tiny = np.zeros((6, 4))
    tiny[:, 0], tiny[:, 1] = 1e-6, -1e-6
    df = _frame([6], tiny.ravel().tolist(), [])
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "imbalance", "a": ["a"], "b": ["b"]}, {"op": "ratio", "a": ["a~b"], "b": ["c"]},
        {"op": "ratio", "a": ["a~b/c"], "b": ["c"]}, {"op": "ratio", "a": ["a~b/c/c"], "b": ["c"]}])
    batch = fs.batch_frame(df).select(fs.outputs).to_numpy()
    assert np.abs(batch).max() <= LIMIT
    assert_faces_agree(fs, df)


def test_a_product_of_differences_is_clipped_alike_in_both_faces():
    """A diff of inputs of 7e7 reaches 1.4e8: with its bound taken as the inputs' 7e7, the
    product's bound (4.9e15) let the batch face skip a clip of 1.96e16 the stream face applies."""
    rows = np.array([[7e7, -7e7, 7e7, -7e7], [-7e7, 7e7, 7e7, -7e7], [1.0, 2.0, 3.0, 4.0]])
    df = _frame([3], rows.ravel().tolist(), [])
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "diff", "a": ["a", "c"], "b": ["b", "d"]},
        {"op": "product", "a": ["a-b"], "b": ["c-d"]}])
    batch = fs.batch_frame(df).select(fs.outputs).to_numpy()
    assert np.abs(batch).max() == LIMIT
    assert_faces_agree(fs, df)


def test_a_rate_of_change_from_0_is_clipped_alike_in_both_faces():
    """0 to 1e12 is a roc of 1e12 / EPS = 1e18: with a bound of twice the inputs (2e12) the
    batch face skipped the clip to LIMIT the stream face applies."""
    values = np.zeros((3, 4))
    values[:, 0] = [0.0, 1e12, 1e12]
    df = _frame([3], values.ravel().tolist(), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "roc", "inputs": ["a"], "k": 1}])
    assert fs.batch_frame(df)[fs.outputs[0]].to_list()[1] == np.float32(LIMIT)
    assert_faces_agree(fs, df)


def test_an_ewm_std_of_span_1_is_0_in_both_faces():
    """alpha = 1 gives one weight, a std of 0; Polars' recursion left 3.0 after a 1e10 value
    (rounding in its running moments) where the stream face gives 0."""
    values = np.zeros((4, 4))
    values[:, 0] = [1e10, 3.0, 5.0, -2.0]
    df = _frame([4], values.ravel().tolist(), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "ewm_std", "inputs": ["a"], "span": 1}])
    assert fs.batch_frame(df)[fs.outputs[0]].to_list() == [0.0] * 4
    assert_faces_agree(fs, df)


def test_an_ewm_of_alpha_1_is_the_value_itself_in_both_faces():
    # alpha is in (0, 1]: alpha = 1 (all weight on the current step) is a valid EWM
    values = np.zeros((4, 4))
    values[:, 0] = [2.0, -3.0, 5.0, 0.5]
    df = _frame([4], values.ravel().tolist(), [])
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "ewm_mean", "inputs": ["a"], "alpha": 1}])
    assert fs.outputs == ["a@ewm_mean1"]
    assert fs.batch_frame(df)["a@ewm_mean1"].to_list() == [2.0, -3.0, 5.0, 0.5]
    assert_faces_agree(fs, df)


def test_an_ewm_by_span_and_by_the_same_alpha_is_one_op():
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "ewm_mean", "inputs": ["a"], "span": 19},
        {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.1}])
    assert fs.outputs == ["a@ewm_mean0.1"] and len(fs.ops) == 1


def test_build_features_refuses_a_sequence_split_in_two(tmp_path):
    from kit.features import build_features

    frame = _frame([4, 4, 4], 3, [])
    # sequence 0's rows, then sequence 1's, then sequence 0 again: a lag would read across
    ids = frame[SPEC.id_col].to_list()
    frame = frame.with_columns(pl.Series(SPEC.id_col, ids[:8] + ids[:4]))
    path = tmp_path / "split.parquet"
    frame.write_parquet(path)
    with pytest.raises(DataError, match="split.parquet"):
        build_features(path, build_feature_set(SPEC, groups=[], ops=[
            {"op": "lag", "inputs": ["a"], "k": 1}]))


def test_unknown_group_and_empty_set():
    with pytest.raises(FeatureConfigError, match="unknown feature group 'nope'"):
        build_feature_set(SPEC, groups=["nope"])
    with pytest.raises(FeatureConfigError, match="empty"):
        build_feature_set(SPEC, groups=[])


def test_a_config_without_feature_groups_takes_the_raw_columns():
    """[features] groups defaults to ["raw"]: a config without it (or without the table)
    failed as an empty feature set instead."""
    from kit.features import feature_set_from_config

    spec = load_spec("predictorium")
    for config in ({"spec": "predictorium"}, {"spec": "predictorium", "features": {}}):
        fs = feature_set_from_config(config)
        assert fs.outputs == build_feature_set(spec, ["raw"]).outputs == list(spec.features)


def test_digest_changes_with_the_definition():
    one = build_feature_set(SPEC, groups=["raw"]).digest()
    assert one == build_feature_set(SPEC, groups=["raw"]).digest()
    assert one != build_feature_set(SPEC, groups=["raw", "lags"]).digest()


def test_one_set_asked_for_in_two_ways_has_one_digest_and_one_cache_entry(tmp_path):
    """The digest hashed the groups and the ops as spelled: a group listed twice, span 19 for
    alpha 0.1, or the raw group for a raw op gave another digest (an ensemble computed the
    same features twice, 98 nodes for 64) and another cache entry of the same bytes."""
    from kit.features import feature_arrays

    spec = load_spec("predictorium")
    pairs = [(build_feature_set(spec, ["raw", "spreads", "ewm"]),
              build_feature_set(spec, ["raw", "spreads", "ewm", "spreads"])),
             (build_feature_set(spec, [], [{"op": "ewm_mean", "inputs": ["p0"], "alpha": 0.1}]),
              build_feature_set(spec, [], [{"op": "ewm_mean", "inputs": ["p0"], "span": 19}])),
             (build_feature_set(spec, ["raw"]),
              build_feature_set(spec, [], [{"op": "raw", "inputs": ["p0..p11", "v0..v11",
                                                                      "dp0..dp3", "dv0..dv3"]}]))]
    for one, other in pairs:
        assert one.outputs == other.outputs and one.digest() == other.digest()
    assert build_feature_set(spec, ["spreads", "raw"]).digest() != build_feature_set(
        spec, ["raw", "spreads"]).digest()  # another column order: another set
    path = tmp_path / "train.parquet"
    make_frame(spec, lengths=[30, 30], seed=3).write_parquet(path)
    one, other = pairs[0]
    first = feature_arrays(path, one, cache_dir=tmp_path / "cache")
    again = feature_arrays(path, other, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.x, again.x)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_sum_names_say_which_columns_and_a_named_op_asked_for_again_is_shared():
    """sum(v0, v1, v5) was named sum(v0..v5), and a later op reading "sum(v0..v5)" got it;
    position or a sum asked for again with its name written out was refused as a clash."""
    spec = load_spec("predictorium")
    fs = build_feature_set(spec, [], [{"op": "sum", "inputs": ["v0", "v1", "v5"]},
                                      {"op": "mean", "inputs": ["v0..v5"]},
                                      {"op": "sum", "inputs": ["v3"]}])
    assert fs.outputs == ["sum(v0,v1,v5)", "mean(v0..v5)", "sum(v3..v3)"]
    again = build_feature_set(spec, ["position"], [
        {"op": "position", "name": "position"},
        {"op": "sum", "inputs": ["v0..v5"]}, {"op": "sum", "inputs": ["v0..v5"],
                                              "name": "sum(v0..v5)"}])
    assert again.outputs == ["position", "sum(v0..v5)"]
    # a set recorded before names were pinned rebuilds under the name it trained with
    stored = build_feature_set(spec, [], [{"op": "sum", "inputs": ["v0", "v1", "v5"]}],
                               stored=True)
    assert stored.outputs == ["sum(v0..v5)"]
    # a mean too: rebuilt as mean(v0,v1,v5), a model trained on "mean(v0..v5)" lost its input
    stored = build_feature_set(spec, [], [{"op": "mean", "inputs": ["v0", "v1", "v5"]}],
                               stored=True)
    assert stored.outputs == ["mean(v0..v5)"]
    assert build_feature_set(spec, [], fs.to_dict()["ops"], stored=True).outputs == fs.outputs


def test_feature_arrays_are_cached_by_content_and_definition(tmp_path):
    from kit.features import feature_arrays

    spec = load_spec("predictorium")
    path = tmp_path / "train.parquet"
    make_frame(spec, lengths=[40, 40, 40], seed=1).write_parquet(path)
    fs = build_feature_set(spec, ["raw", "lags"])
    first = feature_arrays(path, fs, cache_dir=tmp_path / "cache")
    assert first.x.shape == (3, 40, len(fs.outputs)) and first.feature_names == fs.outputs
    direct = fs.batch_frame(pl.read_parquet(path)).select(fs.outputs).to_numpy()
    np.testing.assert_array_equal(first.x.reshape(-1, len(fs.outputs)), direct)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = feature_arrays(path, fs, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x, first.x)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # a hit, not a second entry
    other = feature_arrays(path, build_feature_set(spec, ["raw"]), cache_dir=tmp_path / "cache")
    assert other.x.shape[2] == 32 and len(list((tmp_path / "cache").iterdir())) == 2
    # the same path rewritten with other rows (same shape): never the stale entry
    make_frame(spec, lengths=[40, 40, 40], seed=2).write_parquet(path)
    changed = feature_arrays(path, fs, cache_dir=tmp_path / "cache")
    direct = fs.batch_frame(pl.read_parquet(path)).select(fs.outputs).to_numpy()
    np.testing.assert_array_equal(changed.x.reshape(-1, len(fs.outputs)), direct)
    assert not np.array_equal(changed.x, first.x)
    # what of the spec never reaches the arrays (the scorer's limits, the metric, the words)
    # reuses the entry; an edit of the time limit rebuilt 1.5 GB beside the old one
    entries = len(list((tmp_path / "cache").iterdir()))
    edited = dataclasses.replace(
        spec, description="mine", metric=dataclasses.replace(spec.metric, clip=(-1.0, 1.0)),
        limits=dataclasses.replace(spec.limits, time_limit_s=10.0))
    reused = feature_arrays(path, build_feature_set(edited, ["raw", "lags"]),
                            cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(reused.x, changed.x)
    assert len(list((tmp_path / "cache").iterdir())) == entries
    longer = dataclasses.replace(spec, warmup=spec.warmup + 1)  # may move the mask: a new one
    feature_arrays(path, build_feature_set(longer, ["raw", "lags"]), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == entries + 1
    # data.seq_len and data.truncate choose other arrays of the same file and set
    for seq_len, truncate in ((10, "head"), (10, "tail"), (20, "tail")):
        got = feature_arrays(path, fs, seq_len=seq_len, truncate=truncate,
                             cache_dir=tmp_path / "cache")
        want = feature_arrays(path, fs, seq_len=seq_len, truncate=truncate, use_cache=False)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.mask, want.mask)


def test_a_sequence_limit_caps_the_lengths_of_the_arrays(tmp_path):
    """Cut to data.seq_len steps, a sequence's length is the steps kept: the lengths said the
    file's, longer than the arrays hold."""
    from kit.features import feature_arrays

    spec = small_spec(seq_len=None, warmup=1)
    path = tmp_path / "ragged.parquet"
    make_frame(spec, lengths=[6, 4, 2], seed=1).write_parquet(path)
    fs = build_feature_set(spec, ["raw"])
    assert feature_arrays(path, fs, use_cache=False).lengths.tolist() == [6, 4, 2]
    for truncate in ("head", "tail"):
        cut = feature_arrays(path, fs, seq_len=3, truncate=truncate, use_cache=False)
        assert cut.x.shape[1] == 3 and cut.lengths.tolist() == [3, 3, 2], truncate


def test_kit_data_cache_lists_and_clears_the_entries(tmp_path):
    """Entries were never removed and no command listed or cleared them (clear_cache was a
    Python function only): an ablation's five train entries came to ~8.6 GB at full size."""
    import json

    from kit.features import feature_arrays
    from tests.cli import run_cli

    spec = load_spec("predictorium")
    path = tmp_path / "train.parquet"
    make_frame(spec, lengths=[40, 40], seed=1).write_parquet(path)
    cache = tmp_path / "cache"
    for groups in (["raw"], ["raw", "lags"]):
        feature_arrays(path, build_feature_set(spec, groups), cache_dir=cache)
    doc = json.loads(run_cli("data", "cache", "--dir", cache, "--json").output)
    assert len(doc["entries"]) == 2 and {e["source"] for e in doc["entries"]} == {str(path)}
    on_disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()
                  and f.parent != cache)
    assert doc["bytes"] == on_disk > 0
    out = run_cli("data", "cache", "--dir", cache).output
    assert "2 entries in" in out and str(path) in out
    # a meta.json whose fields are not text (edited by hand) is damaged: listed, and cleared
    # (`created: 5` failed to sort against the other's date, and --clear removed nothing)
    damaged = next(e["name"] for e in doc["entries"])
    (cache / damaged / "meta.json").write_text('{"created": 5, "source": ["x"]}')
    listed = json.loads(run_cli("data", "cache", "--dir", cache, "--json").output)["entries"]
    assert {(e["name"], e["created"], e["source"]) for e in listed if e["name"] == damaged} == {
        (damaged, "unfinished or damaged", None)}
    cleared = run_cli("data", "cache", "--dir", cache, "--clear", "--json")  # was plain text
    assert json.loads(cleared.stdout) == {"dir": str(cache), "removed": 2,
                                          "bytes": sum(e["bytes"] for e in listed)}
    assert "0 entries in" in run_cli("data", "cache", "--dir", cache).output
    # a mistyped --dir is not an empty cache
    assert "note: " in run_cli("data", "cache", "--dir", tmp_path / "nope").output
    refused = run_cli("data", "cache", "--dir", path, expect=2).output
    assert "is a file, not the cache folder" in refused
    feature_arrays(path, build_feature_set(spec, ["raw"]), cache_dir=cache)  # rebuilt at need
    assert len(json.loads(run_cli("data", "cache", "--dir", cache, "--json").output)[
        "entries"]) == 1


def test_a_user_spec_s_groups_file_adds_and_replaces_groups(tmp_path, monkeypatch):
    """Groups came only from kit's package: a user's spec had the generic ones, and ablating
    its own feature families meant editing kit."""
    from tests.cli import run_cli

    folder = tmp_path / "competitions"
    folder.mkdir()
    (folder / "wk.toml").write_text('name = "wk"\nfeatures = ["hr", "speed", "alt"]\n'
                                    'targets = ["y"]\nseq_len = 0\n')
    (folder / "wk.groups.toml").write_text(
        '[groups.effort]\ndescription = "heart rate per speed"\n'
        'ops = [{ op = "ratio", a = ["hr"], b = ["speed"] }]\n'
        '[groups.lags]\nops = [{ op = "lag", inputs = ["alt"], k = 2 }]\n')
    monkeypatch.chdir(tmp_path)
    spec = load_spec("wk")
    assert set(available_groups(spec)) >= {"raw", "effort", "lags", "ewm"}
    assert build_feature_set(spec, ["effort"]).outputs == ["hr/speed"]
    assert build_feature_set(spec, ["lags"]).outputs == ["alt@lag2"]  # the user's replaces kit's
    listed = run_cli("features", "list", "--spec", "wk").output
    assert "effort" in listed and "heart rate per speed" in listed
    # a spec passed as a path finds its groups file too; presets and dicts have none
    assert "effort" in available_groups(load_spec(str(folder / "wk.toml")))
    assert "effort" not in available_groups(load_spec("predictorium"))
    # a malformed file or op is named
    (folder / "wk.groups.toml").write_text('[groups.bad]\nop = "lag"\n')
    with pytest.raises(FeatureConfigError, match=r"wk.groups.toml: \[groups.bad\] must hold "
                                                 r"ops = \[...\]"):
        available_groups(load_spec("wk"))
    (folder / "wk.groups.toml").write_text('[groups.bad]\nops = [{ op = "lag", inputs = ["x"], '
                                           'k = 1 }]\n')
    with pytest.raises(FeatureConfigError, match=r"group 'bad' of competitions/wk.groups.toml op "
                                                 r"0 \(lag\): unknown column\(s\) \['x'\]"):
        build_feature_set(load_spec("wk"), ["bad"])  # the op's file is named
    # a groups file is no spec: kit spec list left it out of the list, not BROKEN (exit 2)
    listed = run_cli("spec", "list").output
    assert "wk " in listed and "wk.groups" not in listed


def groups_file(tmp_path, monkeypatch, text: str):
    """A user competition `wk` in ./competitions (the working folder now tmp_path) whose
    wk.groups.toml holds text; returns the competitions folder."""
    folder = tmp_path / "competitions"
    folder.mkdir()
    (folder / "wk.toml").write_text('name = "wk"\nfeatures = ["hr"]\ntargets = ["y"]\n'
                                    'seq_len = 0\n')
    (folder / "wk.groups.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize("text, message", [
    # a misspelt table was dropped: the user's groups silently missing
    ('[groups.g]\nops = []\n[grups.h]\nops = []\n',
     r"a groups file holds \[groups.NAME\] tables only.*; unknown key\(s\) \['grups'\]"),
    # a misspelt key was dropped: the description silently empty
    ('[groups.h]\ndescripton = "x"\nops = []\n', r"\[groups.h\] must hold ops = \[...\]"),
    ('[groups.h]\ndescription = 5\nops = []\n', r"\[groups.h\] description must be text"),
])
def test_a_malformed_groups_file_is_refused_naming_the_file(text, message, tmp_path, monkeypatch):
    groups_file(tmp_path, monkeypatch, text)
    with pytest.raises(FeatureConfigError, match=r"wk.groups.toml: " + message):
        available_groups(load_spec("wk"))


def test_features_cli_list_and_build(tmp_path, monkeypatch):
    from tests.cli import run_cli

    out = run_cli("features", "list").output
    assert "ewm_mean" in out and "imbalance" in out and "spreads" in out
    path = tmp_path / "train.parquet"
    make_frame(load_spec("predictorium"), lengths=[30, 30], seed=2).write_parquet(path)
    out = run_cli("features", "build", "--groups", "raw,spreads", "--data", path).output
    assert "p6-p0" in out and "38 features over 60 rows" in out
    assert re.search(r"built in \d+\.\d\ds", out)
    # each feature's mean, std, min and max, as Polars computes them on the built frame
    frame = pl.read_parquet(path)
    spread = (frame["p6"] - frame["p0"]).cast(pl.Float32)
    (line,) = [row for row in out.splitlines() if row.startswith("p6-p0 ")]
    assert [float(v) for v in line.split()[1:]] == pytest.approx(
        [spread.mean(), spread.std(ddof=0), spread.min(), spread.max()], rel=1e-3)
    assert "mean" in out and "std" in out
    exp = tmp_path / "exp.toml"
    exp.write_text('spec = "predictorium"\n[features]\ngroups = ["imbalance"]\n')
    out = run_cli("features", "build", f"exp={exp}", "--data", path).output
    assert "bid_volume~ask_volume" in out
    # --groups with an experiment previews those groups in its place, and says what it leaves
    exp.write_text('spec = "predictorium"\n[features]\ngroups = ["raw"]\n'
                   'ops = [{ op = "lag", inputs = ["p0"], k = 2 }]\n')
    out = run_cli("features", "build", f"exp={exp}", "--groups", "spreads", "--data", path)
    assert "its 1 explicit op(s) are left out" in out.stderr and "p0@lag2" not in out.output
    assert f"replaces experiment {str(exp)!r}'s" in out.stderr  # as named, without `exp=`
    exp.write_text('spec = "predictorium"\n[features]\ngroups = ["imbalance"]\n')
    bad = run_cli("features", "build", "--groups", "nope", "--data", path, expect=2).output
    assert "unknown feature group 'nope'" in bad
    other = run_cli("features", "build", f"exp={exp}", "--spec", "rnn-challenge", "--data", path,
                    expect=2).output  # not silently ignored
    assert f"experiment {str(exp)!r} names its own spec" in other
    # the experiment is checked as training checks it: a typo does not preview the default set
    exp.write_text('spec = "predictorium"\n[features]\ngrups = ["imbalance"]\n')
    typo = run_cli("features", "build", f"exp={exp}", "--data", path, expect=2).output
    assert "unknown key(s) ['features.grups']" in typo
    # no --data and no synthetic file: the option to use is named
    (tmp_path / "mine.toml").write_text('name = "mine"\nfeatures = ["a", "b"]\ntargets = ["y"]\n')
    monkeypatch.chdir(tmp_path)
    missing = run_cli("features", "build", "--groups", "raw", "--spec", tmp_path / "mine.toml",
                      expect=2).output
    assert "data/synth-mine/train.parquet: no such file" in missing and "--data FILE" in missing


def test_features_list_names_a_generic_group_the_spec_cannot_hold_and_lists_the_rest(tmp_path):
    from tests.cli import run_cli

    spec = tmp_path / "short.toml"  # 8-step sequences: the generic 10-step rolling group fails
    spec.write_text('name = "short"\nfeatures = ["x", "z"]\ntargets = ["t"]\nseq_len = 8\n'
                    'warmup = 2\n[metric]\nname = "r2"\n')
    out = run_cli("features", "list", "--spec", spec).output
    assert re.search(r"rolling +not usable with this spec: .*window = 10 is more than", out)
    for group in ("raw", "lags", "diffs", "ewm", "position"):  # those after it too
        assert re.search(rf"\n  {group} +\d+ features?", out), group


def test_data_files_the_features_cannot_read_are_named(tmp_path):
    from kit.features import build_features, feature_arrays
    from tests.cli import run_cli

    spec = load_spec("predictorium")
    fs = build_feature_set(spec, ["raw", "spreads"])
    frame = make_frame(spec, lengths=[5, 4, 3], seed=1)
    cases = {
        "missing": (frame.drop("p3", "need_prediction"),
                    r"missing column\(s\) \['need_prediction', 'p3'\]"),

        "empty": (frame.head(0), "the file has no rows"),
        "null_ids": (frame.with_columns(pl.when(pl.col("seq_ix") == 2).then(None)
                                        .otherwise(pl.col("seq_ix")).alias("seq_ix")),
                     "column 'seq_ix' has 3 null or non-integral value"),
        "text_steps": (frame.with_columns(pl.col("step_in_seq").cast(pl.String)),
                       "'step_in_seq' must hold integer steps, found String"),
        # a lag would read the step after: `kit features build` refuses it as training does
        "backwards": (frame.sort("seq_ix", "step_in_seq", descending=[False, True]),
                      r"steps are not increasing within a sequence \(e.g. seq_ix 0, "
                      r"step_in_seq 3\); sort the frame by"),
        # sorting cannot mend a step given twice: said so, not "sort the frame"
        "repeated": (pl.concat([frame.head(2), frame.slice(1)]),
                     r"two rows of one step \(e.g. seq_ix 0, step_in_seq 1\); each"),
        # kit data check and kit score refuse these dtypes: training took them
        "flag_feature": (frame.with_columns(pl.col("p1") > 0),
                         r"must be numeric \(an integer or float dtype\): \['p1 \(Boolean\)'\]"),
        "decimal_feature": (frame.with_columns(pl.col("p1").cast(pl.Decimal(12, 4))),
                            r"must be numeric .*\['p1 \(Decimal"),
    }
    for name, (df, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        df.write_parquet(path)
        with pytest.raises(DataError, match=message) as raised:
            feature_arrays(path, fs, use_cache=False)
        assert str(raised.value).startswith(str(path))  # the training path names the file
        with pytest.raises(DataError, match=message):
            build_features(path, fs)
        out = run_cli("features", "build", "--groups", "raw", "--data", path, expect=2).output
        assert "Traceback" not in out and message.split(" ")[0].strip("'") in out
    # the targets: read by training only (a preview shows features)
    for name, df, message in (
            ("no_target", frame.drop("t0"), r"missing column\(s\) \['t0'\]"),
            ("text_target", frame.with_columns(pl.col("t1").cast(pl.String)),
             r"feature/target column\(s\) must be numeric: \['t1 \(String\)'\]"),
            ("flag_target", frame.with_columns(pl.col("t1") > 0),  # trained as 0/1
             r"feature/target column\(s\) must be numeric: \['t1 \(Boolean\)'\]")):
        path = tmp_path / f"{name}.parquet"
        df.write_parquet(path)
        with pytest.raises(DataError, match=message) as raised:
            feature_arrays(path, fs, use_cache=False)
        assert str(raised.value).startswith(str(path))


def test_non_finite_targets_name_the_first_sequence_that_holds_one(tmp_path):
    """The message says "first in sequence N": it named the last sequence with a bad target."""
    from kit.features import feature_arrays

    spec = small_spec(seq_len=None, warmup=2)
    frame = make_frame(spec, lengths=[6, 6, 6, 6], seed=3)
    t0 = frame["t0"].to_numpy().copy()
    t0[[6 + 3, 18 + 4]] = np.nan  # scored steps of sequences 1 and 3
    path = tmp_path / "nan.parquet"
    frame.with_columns(pl.Series("t0", t0)).write_parquet(path)
    with pytest.raises(DataError, match=r"\(t0: 2 row\(s\) in the sequences read so far; "
                                        r"first in sequence 1\)"):
        feature_arrays(path, build_feature_set(spec, ["raw"]), use_cache=False)


def test_a_next_state_truth_that_is_not_finite_on_a_scored_row_is_refused(tmp_path):
    """The truth of a next-state row is the next row's raw features (kit score's, the
    official scorer's): NaN there made the metric NaN, while training read the guard's fill
    and reported a finite score. kit data check says so; training refuses the file."""
    from kit.data.contract import check_frame
    from kit.features import feature_arrays

    spec = small_spec(seq_len=None, warmup=2, tail=1, protocol="next-state", targets=[])
    frame = make_frame(spec, lengths=[12, 10], seed=4)
    values = frame["v3"].to_numpy().copy()
    values[[5, 12 + 1]] = np.nan  # truths of seq 0 step 4 (scored), seq 1 step 0 (warm-up)
    frame = frame.with_columns(pl.Series("v3", values))
    [said] = check_frame(frame, spec).warnings
    assert "next-state truth (the next row's features) is NaN, inf or null after v3: 1 " in said
    path = tmp_path / "ns.parquet"
    frame.write_parquet(path)
    fs = build_feature_set(spec, ["raw"])
    with pytest.raises(DataError, match=r"ns.parquet: the next-state truth .* \(v3: 1 row"):
        feature_arrays(path, fs, use_cache=False)
    values[5] = 0.5  # the NaN only where no prediction is scored: fine
    frame.with_columns(pl.Series("v3", values)).write_parquet(path)
    assert feature_arrays(path, fs, use_cache=False).x.shape[0] == 2


def assert_onnx_step_graph_equals_batch_face(fs, df, path) -> None:
    """The exported step graph, run row by row in ONNX Runtime, equals the batch face."""
    got, expected = onnx_steps_and_batch_face(fs, df, path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def onnx_steps_and_batch_face(fs, df, path) -> tuple[np.ndarray, np.ndarray]:
    """The exported step graph's outputs, row by row in ONNX Runtime, and the batch face's."""
    import onnxruntime as ort

    from kit.export.step_graph import export_step_graph

    shapes = export_step_graph(fs.stream_module(), len(fs.spec.features), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    expected = fs.batch_frame(df).select(fs.outputs).to_numpy()
    rows = df.select(fs.spec.features).to_numpy().astype(np.float32)
    ids = df[fs.spec.id_col].to_numpy()
    got = []
    for i, row in enumerate(rows):
        if i == 0 or ids[i] != ids[i - 1]:  # a new sequence: zero state
            state = [np.zeros([1 if d == "batch" else d for d in s], np.float32) for s in shapes]
        out = session.run(None, {"x": row[None], **{f"state_{j}": s for j, s in
                                                     enumerate(state)}})
        got.append(out[0][0])
        state = out[1:]
    got = np.array(got)
    assert np.isfinite(got).all()
    return got, expected


def test_onnx_step_graph_of_the_full_set_equals_the_batch_face(tmp_path):
    spec = load_spec("predictorium")
    fs = build_feature_set(spec, list(available_groups(spec)))
    df = make_frame(spec, lengths=[60, 25], seed=9).with_columns(
        pl.when(pl.col("step_in_seq") % 7 == 3).then(float("nan")).otherwise(pl.col("v1"))
        .alias("v1"))
    assert_onnx_step_graph_equals_batch_face(fs, df, tmp_path / "features.onnx")


@pytest.mark.parametrize("op", sorted(OP_CASES))
def test_onnx_step_graph_of_each_op_equals_the_batch_face(op, tmp_path):
    # each op alone builds its kernel in its own shape (a delta without lags, a roc alone...)
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": op, **OP_CASES[op]}])
    df = _frame([23, 4, 1], 11, [(2, 0, 0), (5, 1, 1), (9, 2, 2), (30, 3, 0)])
    assert_onnx_step_graph_equals_batch_face(fs, df, tmp_path / f"{op}.onnx")


def test_chunked_feature_arrays_equal_the_whole_frame_and_fail_atomically(tmp_path):
    from kit.data.arrays import build_arrays
    from kit.data.cache import RowWriter
    from kit.features import feature_arrays

    spec = small_spec(seq_len=None, warmup=2)
    path = tmp_path / "ragged.parquet"
    make_frame(spec, lengths=[5, 9, 3, 9, 7], seed=5).write_parquet(path)
    fs = build_feature_set(spec, ["raw", "lags", "ewm"])
    whole = build_arrays(fs.batch_frame(pl.read_parquet(path)), spec, fs.outputs)
    for chunk in (1, 2, 10):
        cached = feature_arrays(path, fs, cache_dir=tmp_path / f"c{chunk}", chunk_seqs=chunk)
        uncached = feature_arrays(path, fs, use_cache=False, chunk_seqs=chunk)
        for got in (cached, uncached):
            np.testing.assert_array_equal(got.x, whole.x)
            np.testing.assert_array_equal(got.mask, whole.mask)
            np.testing.assert_array_equal(got.lengths, whole.lengths)
    with pytest.raises(ValueError, match="does not continue"):
        RowWriter((4, 3), np.float32).write(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="1 rows written of 4"):
        writer = RowWriter((4, 3), np.float32)
        writer.write(np.zeros((1, 3), np.float32))
        writer.finish()

    # A build that fails leaves nothing behind but the digest record: no entry a later run
    # would read back, no temp folder (one refused before its first chunk, then one that
    # fails after it)
    broken = tmp_path / "broken.parquet"
    pl.concat([make_frame(spec, lengths=[5, 9], seed=1),
               make_frame(spec, lengths=[4], seed=2).with_columns(
                   pl.lit(0, dtype=pl.Int64).alias("seq_ix"))]).write_parquet(broken)
    with pytest.raises(Exception, match="not contiguous"):
        feature_arrays(broken, fs, cache_dir=tmp_path / "cb")
    assert {p.name for p in (tmp_path / "cb").iterdir()} <= {"digests.json"}
    # a build that fails after its first chunk closes the files it was writing
    holes = make_frame(spec, lengths=[5, 9], seed=3).with_columns(
        pl.when((pl.col("seq_ix") == 1) & pl.col("need_prediction"))
        .then(float("nan")).otherwise(pl.col(spec.outputs[0])).alias(spec.outputs[0]))
    holes.write_parquet(tmp_path / "holes.parquet")

    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # an unclosed file warns when freed
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(DataError, match="targets NaN"):
            feature_arrays(tmp_path / "holes.parquet", fs, cache_dir=tmp_path / "ch",
                           chunk_seqs=1)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert {p.name for p in (tmp_path / "ch").iterdir()} <= {"digests.json"}


def test_cumulative_sums_do_not_drift_from_the_batch_face_over_long_sequences(tmp_path):
    """A float32 running sum drifted: 5,000 steps of 0.1 summed to 500.02 in the stream face
    (1e-5 relative by step 1,081) against 500.0 in the batch face; compensated, both faces and
    the ONNX graph agree over 6,000 steps, a price level among them."""
    n = 6_000
    rng = np.random.default_rng(3)
    level = 100 + np.cumsum(rng.normal(0, 0.05, n))
    columns = {"a": np.full(n, 0.1), "b": np.where(np.arange(n) % 2, 0.1, 0.0),
               "c": level, "d": rng.normal(0, 1, n)}
    df = pl.DataFrame({"seq_ix": np.zeros(n, np.int64), "step_in_seq": np.arange(n),
                       "need_prediction": np.ones(n, bool)}
                      | {k: v.astype(np.float32) for k, v in columns.items()}
                      | {"y": np.zeros(n, np.float32)})
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "cumsum", "inputs": ["a", "c", "d"]}, {"op": "cumgain", "inputs": ["b", "c"]},
        {"op": "cummax", "inputs": ["d"]}])
    assert_faces_agree(fs, df)
    got, expected = onnx_steps_and_batch_face(fs, df, tmp_path / "cum.onnx")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert abs(got[-1, fs.outputs.index("a@cumsum")] - 600.0) < 1e-3


def test_cumulative_sums_keep_small_terms_next_to_large_ones(tmp_path):
    """Kahan's compensation drops its carry when a term outweighs the total: 1e8, 1, 3, -1e8
    summed to 0 in the stream face and the ONNX graph (4 in the batch face), and repeated 300
    times to 0 against 1,200; with 1e8, seven 1s, -1e8 it drifted the other way (8,008 against
    7,007). A term that outweighs the total from the first step on (1, 1e8, -1e8: Fast2Sum's
    error term is exact only when the total is the larger) must keep the 1 as well. Every
    row's cumsum and cumgain must be the batch face's, exactly here."""
    cycles = 300
    a = np.tile([1e8, 1.0, 3.0, -1e8], cycles)
    b = np.tile([1e8] + [1.0] * 7 + [-1e8], cycles // 2)[:len(a)]
    d = np.tile([1.0, 1e8, -1e8, 0.0], cycles)
    df = pl.DataFrame({"seq_ix": np.zeros(len(a), np.int64), "step_in_seq": np.arange(len(a)),
                       "need_prediction": np.ones(len(a), bool)}
                      | {k: v.astype(np.float32) for k, v in
                         {"a": a, "b": b, "c": a[::-1].copy(), "d": d}.items()}
                      | {"y": np.zeros(len(a), np.float32)})
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "cumsum", "inputs": ["a", "b", "d"]}, {"op": "cumgain", "inputs": ["c"]},
        {"op": "cummax", "inputs": ["a"]}])
    got, expected = onnx_steps_and_batch_face(fs, df, tmp_path / "big.onnx")
    exact = {"a@cumsum": np.cumsum(a), "b@cumsum": np.cumsum(b), "d@cumsum": np.cumsum(d),
             "c@cumgain": np.concatenate([[0.0], np.cumsum(  # steps of float32 values, in float32
                 np.maximum(np.diff(a[::-1].astype(np.float32)), 0), dtype=np.float64)])}
    for name, values in exact.items():
        j = fs.outputs.index(name)
        np.testing.assert_array_equal(expected[:, j], values.astype(np.float32), err_msg=name)
        np.testing.assert_array_equal(got[:, j], values.astype(np.float32), err_msg=name)
    assert got[-1, fs.outputs.index("a@cumsum")] == 1200.0
    assert_faces_agree(fs, df)


def test_wmid_stays_between_bid_and_ask_and_is_the_mid_of_an_empty_level(tmp_path):
    """With eps in the denominator alone the weights summed to less than 1: sizes 0 gave a
    weighted mid of 0 and sizes 0.005 one below the bid (99.995 for 100 / 100.01), in every
    face. Hand values: the mid for equal or zero sizes, near the bid when the ask is deep."""
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "wmid", **OP_CASES["wmid"]}])
    sizes = [(0.0, 0.0), (0.005, 0.005), (1e-6, 1e-6), (0.0, 1.0), (-3.0, 1.0)]
    df = pl.DataFrame({"seq_ix": [0] * len(sizes), "step_in_seq": range(len(sizes)),
                       "need_prediction": [True] * len(sizes), "a": [100.0] * len(sizes),
                       "b": [100.01] * len(sizes), "c": [s[0] for s in sizes],
                       "d": [s[1] for s in sizes], "y": [0.0] * len(sizes)})
    mid = np.float32(100.005)
    expected = [mid, mid, mid, 100.0, 100.0 + 0.01 * 3 / 4]
    got, batch = onnx_steps_and_batch_face(fs, df, tmp_path / "wmid.onnx")
    for face in (got[:, 0], batch[:, 0]):
        np.testing.assert_allclose(face, expected, rtol=0, atol=2e-5)
        assert ((face >= np.float32(100.0)) & (face <= np.float32(100.01))).all()
    assert_faces_agree(fs, df)


def test_an_ewm_with_alpha_near_1_is_as_exact_in_the_step_graph_as_in_the_batch_face(tmp_path):
    """1 - alpha was taken from float32's alpha: 1 - 0.99900001 is 1.3e-5 off 0.001, and the
    step graph's mean of 0, 1000, 0 read 0.99898714 against 0.999 (about 100 ulps)."""
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "ewm_mean", "inputs": ["a"], "alpha": 0.999},
        {"op": "ewm_std", "inputs": ["a"], "alpha": 0.999}])
    n = 6
    df = pl.DataFrame({"seq_ix": [0] * n, "step_in_seq": range(n), "need_prediction": [True] * n,
                       "a": [0.0, 1000.0] * (n // 2), "b": [0.0] * n, "c": [0.0] * n,
                       "d": [0.0] * n, "y": [0.0] * n})
    got, batch = onnx_steps_and_batch_face(fs, df, tmp_path / "ewm.onnx")
    np.testing.assert_allclose(got[2, 0], 0.999, rtol=1e-6)  # 999 * (1 - 0.999)
    np.testing.assert_allclose(got, batch, rtol=1e-6, atol=1e-6 * 1000)


def test_cumulative_sums_keep_terms_below_float64s_resolution_in_both_faces(tmp_path):
    """The batch face summed in float64 alone: 1e16, 1, -1e16 gave 0 there and 1 in the
    stream face (Neumaier's compensation keeps the 1); so did 1e8, 1e-9, -1e8. Both faces are
    the exact prefix sums (math.fsum) rounded once to float32."""
    import math

    a = np.array([1e16, 1.0, -1e16, 0.0, 2.5], np.float32)
    b = np.array([1e8, 1e-9, -1e8, 0.0, 1e-9], np.float32)
    n = len(a)
    df = pl.DataFrame({"seq_ix": np.zeros(n, np.int64), "step_in_seq": np.arange(n),
                       "need_prediction": np.ones(n, bool), "a": a, "b": b,
                       "c": b[::-1].copy(), "d": np.zeros(n, np.float32),
                       "y": np.zeros(n, np.float32)})
    fs = build_feature_set(SPEC, groups=[], ops=[{"op": "cumsum", "inputs": ["a", "b"]},
                                                 {"op": "cumgain", "inputs": ["c"]}])
    got, batch = onnx_steps_and_batch_face(fs, df, tmp_path / "tiny.onnx")
    c = b[::-1].astype(np.float64)
    gains = [0.0] + [max(float(np.float32(c[i]) - np.float32(c[i - 1])), 0.0)
                     for i in range(1, n)]
    for name, terms in (("a@cumsum", a.astype(np.float64)), ("b@cumsum", b.astype(np.float64)),
                        ("c@cumgain", gains)):
        exact = np.array([math.fsum(terms[:i + 1]) for i in range(n)], np.float32)
        j = fs.outputs.index(name)
        np.testing.assert_array_equal(batch[:, j], exact, err_msg=f"batch {name}")
        np.testing.assert_array_equal(got[:, j], exact, err_msg=f"stream {name}")


def test_features_build_reads_the_specs_own_synthetic_file_by_default(tmp_path, monkeypatch):
    """--spec rnn-challenge without --data read data/synth/train.parquet (Predictorium's) and
    said "missing column(s)" without naming the file; kit data synth --spec writes
    data/synth-NAME."""
    from kit.data.synth import synth_dir
    from tests.cli import run_cli

    monkeypatch.chdir(tmp_path)
    spec = load_spec("rnn-challenge")
    for name, frame in (("predictorium", make_frame(load_spec("predictorium"), lengths=[20])),
                        ("rnn-challenge", make_frame(spec, lengths=[20, 20], seed=1))):
        synth_dir(name).mkdir(parents=True)
        frame.write_parquet(synth_dir(name) / "train.parquet")
    out = run_cli("features", "build", "--spec", "rnn-challenge", "--groups", "raw").output
    assert "over 40 rows of data/synth-rnn-challenge/train.parquet" in out
    wrong = run_cli("features", "build", "--spec", "rnn-challenge", "--groups", "raw", "--data",
                    synth_dir("predictorium") / "train.parquet", expect=2).output
    assert "data/synth/train.parquet: missing column(s)" in wrong
