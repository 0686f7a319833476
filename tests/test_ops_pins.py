"""Pins of feature-op and guard behaviours no other test held (the survivors of mutation audit
r257 of kit/features/ops.py and kit/features/guard.py): the guard's state after a chunk, the
batch face's clip threshold and float32 reading, the output bounds that decide the batch face's
clips, the ops that need no Clip node in the step graph, and the refused parameters."""

import numpy as np
import onnx
import polars as pl
import pytest
import torch

from kit.features.guard import Guard
from kit.features.kernels import LIMIT
from kit.features.ops import Difference, FeatureSpecError, Imbalance, WeightedMid
from kit.features.sets import FeatureConfigError, build_feature_set
from tests.test_feature_pins import _batch, _columns
from tests.test_features import SPEC, _frame, onnx_steps_and_batch_face

L = float(np.float32(LIMIT))  # +-LIMIT as float32 holds it (1.0000000272564224e16)
NAN = float("nan")


def _with_float64(df: pl.DataFrame, **columns) -> pl.DataFrame:
    """The frame with the given columns replaced by Float64 ones (_frame builds float32)."""
    return df.with_columns(*[pl.Series(n, v, dtype=pl.Float64) for n, v in columns.items()])


# ----------------------------------------------------------------------------- the guard


def test_the_guard_carries_the_last_row_of_a_chunk_as_its_state():
    """The stream face fed a chunk (T > 1) carries the chunk's LAST guarded row: a NaN right
    after the chunk is filled with 2, not with the chunk's first value 1 (column b: its last
    finite value 5 came in the chunk's first row)."""
    guard = Guard(2)
    chunk = torch.tensor([[[1.0, 5.0], [2.0, NAN]]])
    with torch.no_grad():
        out, state = guard(chunk, guard.init_state(1))
        assert out[0].tolist() == [[1.0, 5.0], [2.0, 5.0]]
        assert state[0][0].tolist() == [[2.0, 5.0]]
        after, _ = guard(torch.tensor([[[NAN, NAN]]]), state)
    assert after[0].tolist() == [[2.0, 5.0]]
    # the same through a whole set's stream module, against it fed step by step
    module = build_feature_set(SPEC, groups=["raw"]).stream_module().eval()
    x = torch.tensor([[[1.0, 5.0, 0.0, 0.0], [2.0, NAN, 0.0, 0.0], [NAN, NAN, NAN, NAN]]])
    with torch.no_grad():
        head, state = module(x[:, :2], module.init_state(1))
        tail, _ = module(x[:, 2:], state)
        steps, state = [], module.init_state(1)
        for t in range(3):
            y, state = module(x[:, t:t + 1], state)
            steps.append(y)
    assert tail[0].tolist() == [[2.0, 5.0, 0.0, 0.0]]
    torch.testing.assert_close(torch.cat([head, tail], dim=1), torch.cat(steps, dim=1))


# ----------------------------------------------------------------------------- both faces

# id: (groups, ops, frame, the batch face's outputs, computed by hand)
FACE_CASES = {
    # the batch face clips a raw column whose largest |value| passes LIMIT, as the stream
    # face clips every value: 1.5e16 is 1e16 in both (not only values past 2e16)
    "guard clips just past the limit": (
        ["raw"], [], lambda: _frame([3], _columns(a=[1.5e16, -1.5e16, 1.0]), []),
        [[L, 0, 0, 0], [-L, 0, 0, 0], [1, 0, 0, 0]]),
    # a float64 value past float32's range is non-finite once read as float32: filled with
    # the last finite value like the NaN after it (1e39 kept was inf at the output cast)
    "float64 past float32 is filled": (
        ["raw"], [], lambda: _with_float64(_frame([3], _columns(a=[0.0] * 3), []),
                                           c=[1.0, 1e39, NAN]),
        [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]),
    # both faces compute in float32: 1 + 1e-8 reads as 1, so the diff is exactly 0 (a batch
    # face computing in float64 gave 1e-8)
    "float64 inputs computed in float32": (
        [], [{"op": "diff", "a": ["a"], "b": ["b"]}],
        lambda: _with_float64(_frame([2], _columns(a=[0.0] * 2), []),
                              a=[1.0 + 1e-8, 3.0], b=[1.0, 1.0]),
        [[0.0], [2.0]]),
    # a delta of inputs of 7e7 reaches 1.4e8 (its bound is 2b, not b): the product of two
    # deltas (1.96e16) is clipped to LIMIT as in the stream face
    "delta's bound": (
        [], [{"op": "delta", "inputs": ["a"], "k": 1},
             {"op": "product", "a": ["a@delta1"], "b": ["a@delta1"]}],
        lambda: _frame([3], _columns(a=[7e7, -7e7, 7e7]), []),
        [[0, 0], [-1.4e8, L], [1.4e8, L]]),
    # ewm_std of +-1e16 (alpha 0.5): v = 0.5 (v + 0.5 (x - m)^2) gives std 0, 1e16,
    # sqrt(0.75) 1e16, sqrt(0.9375) 1e16; its square (1e32) is clipped to LIMIT
    "ewm_std's bound": (
        [], [{"op": "ewm_std", "inputs": ["a"], "alpha": 0.5},
             {"op": "product", "a": ["a@ewm_std0.5"], "b": ["a@ewm_std0.5"]}],
        lambda: _frame([4], _columns(a=[1e16, -1e16, 1e16, -1e16]), []),
        [[0, 0], [L, L], [0.75 ** 0.5 * L, L], [0.9375 ** 0.5 * L, L]]),
    # position's bound is rows x scale: 1e15 over 20 steps reaches 1.9e16, clipped at step 10
    "position's bound": (
        [], [{"op": "position", "scale": 1e15}],
        lambda: _frame([20], _columns(a=[0.0] * 20), []),
        [[min(t * 1e15, L)] for t in range(20)]),
    # alpha 1 is one weight: a std of exactly 0 (Polars' float64 recursion left 1.0 after 1e16)
    "ewm_std of alpha 1 is 0": (
        [], [{"op": "ewm_std", "inputs": ["a"], "span": 1}],
        lambda: _frame([4], _columns(a=[1e16, 3.0, 5.0, -2.0]), []),
        [[0.0]] * 4),
}


@pytest.mark.parametrize("case", list(FACE_CASES))
def test_the_batch_face_computes_the_documented_values_as_the_onnx_step_graph_does(
        case, tmp_path):
    """The batch face's values (hand-computed, float32) equal the exported step graph's, run
    row by row in ONNX Runtime."""
    groups, ops, frame, expected = FACE_CASES[case]
    fs = build_feature_set(SPEC, groups=groups, ops=ops)
    df = frame()
    with np.errstate(over="ignore"):  # 1e39 read as float32 is inf, as the docs say
        got, batch = onnx_steps_and_batch_face(fs, df, tmp_path / "features.onnx")
    expected = np.array(expected, dtype=np.float32)
    np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got, batch, rtol=1e-6, atol=0)
    assert np.abs(batch).max() <= L


# ----------------------------------------------------------------------------- clips


@pytest.mark.parametrize("ops, clips", [
    # the ops that stay within their inputs' range (docs/features.md) need no Clip node
    ([{"op": "imbalance", "a": ["a"], "b": ["b"]}], False),
    ([{"op": "mean", "inputs": ["a", "b"]}], False),
    ([{"op": "lag", "inputs": ["a"], "k": 1}], False),
    ([{"op": "wmid", "bid": ["a"], "ask": ["b"], "bid_size": ["c"], "ask_size": ["d"]}], False),
    ([{"op": "rolling_min", "inputs": ["a"], "window": 3}], False),
    ([{"op": "ewm_mean", "inputs": ["a"], "alpha": 0.5}], False),
    # an op that can leave +-LIMIT pays one for its layer
    ([{"op": "diff", "a": ["a"], "b": ["b"]}], True),
], ids=["imbalance", "mean", "lag", "wmid", "rolling_min", "ewm_mean", "diff"])
def test_bounded_ops_add_no_clip_node_to_the_step_graph(ops, clips, tmp_path):
    """The step graph pays per node: one Clip for the guard, one more per dependency layer
    holding an unbounded op only."""
    from kit.export.step_graph import export_step_graph

    fs = build_feature_set(SPEC, groups=[], ops=ops)
    module = fs.stream_module()
    assert module.layer_clips == [clips]
    path = tmp_path / "features.onnx"
    export_step_graph(module, len(SPEC.features), path)
    nodes = [node.op_type for node in onnx.load(path).graph.node]
    assert nodes.count("Clip") == 1 + clips


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("ops, message", [
    # a bool is an int to Python, but `true` for a number is refused (docs/features.md)
    ([{"op": "lag", "inputs": ["a"], "k": True}],
     r"^features.ops\[0\] \(lag\): lag needs an integer 'k' >= 1, got True$"),
    # k counts steps: a float (even a whole one) is refused, not used as a size
    ([{"op": "lag", "inputs": ["a"], "k": 2.0}],
     r"^features.ops\[0\] \(lag\): lag needs an integer 'k' >= 1, got 2.0$"),
    # both alpha and span: refused, not one silently winning
    ([{"op": "ewm_mean", "inputs": ["a"], "alpha": 0.1, "span": 19}],
     r"^features.ops\[0\] \(ewm_mean\): ewm_mean needs exactly one of 'alpha' "
     r"\(0 < alpha <= 1\) or 'span' \(>= 1\)$"),
    # scale is in (0, LIMIT]
    ([{"op": "position", "scale": 1e17}],
     r"^features.ops\[0\] \(position\): position: scale must be a number in \(0, 1e\+16\], "
     r"got 1e\+17$"),
    # the message gives both lengths
    ([{"op": "diff", "a": ["a", "b"], "b": ["c"]}],
     r"^features.ops\[0\] \(diff\): diff needs lists 'a' and 'b' of equal, non-zero length "
     r"\(got 2 and 1\)$"),
], ids=["k true", "k float", "alpha and span", "scale past the limit", "pair lengths"])
def test_refused_op_parameters_say_why(ops, message):
    with pytest.raises(FeatureConfigError, match=message):
        build_feature_set(SPEC, groups=[], ops=ops)


def test_the_smallest_alpha_and_the_largest_scale_are_accepted(tmp_path):
    """The documented ranges are inclusive: alpha 1e-4 (span 19999) and scale 1e16."""
    df = _frame([2], _columns(a=[0.0, 1e4]), [])
    fs = build_feature_set(SPEC, groups=[], ops=[
        {"op": "ewm_mean", "inputs": ["a"], "alpha": 1e-4}, {"op": "position", "scale": 1e16}])
    assert fs.outputs == ["a@ewm_mean0.0001", "position"]
    held = 1.0 - float(np.float32(1.0 - 1e-4))  # the alpha float32 holds: 1.000166e-4
    batch = _batch(fs, df)
    np.testing.assert_allclose(batch, [[0.0, 0.0], [held * 1e4, L]], rtol=1e-6)
    got, _ = onnx_steps_and_batch_face(fs, df, tmp_path / "features.onnx")
    # the stream face's mean is held to 1e-5 of the inputs' size (docs/features.md)
    np.testing.assert_allclose(got, batch, rtol=0, atol=1e-5 * 1e4)


@pytest.mark.parametrize("make, message", [
    (lambda: Difference(inputs=[], params={"a": [], "b": []}),
     r"^diff needs lists 'a' and 'b' of equal, non-zero length \(got 0 and 0\)$"),
    (lambda: Imbalance(inputs=[], params={}),
     r"^imbalance needs lists 'a' and 'b' of equal, non-zero length \(got 0 and 0\)$"),
    (lambda: WeightedMid(inputs=[], params={k: [] for k in ("bid", "ask", "bid_size",
                                                             "ask_size")}),
     r"^wmid needs lists \('bid', 'ask', 'bid_size', 'ask_size'\) of equal, non-zero length$"),
], ids=["diff", "imbalance", "wmid"])
def test_ops_built_directly_refuse_empty_column_lists(make, message):
    """An op made without a set (no 'no input columns given' check before it) refuses empty
    lists itself: an op with no outputs."""
    with pytest.raises(FeatureSpecError, match=message):
        make()
