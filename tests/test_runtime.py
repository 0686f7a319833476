"""The submission runtime (kit/export/solution_template.py) on tiny hand-made step graphs, and
the step graph export's promises about the module and the graph's declared shapes."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from kit.export.step_graph import export_step_graph
from tests.test_pack import Point

TEMPLATE = Path(__file__).resolve().parents[1] / "kit" / "export" / "solution_template.py"


@pytest.fixture(scope="module")
def sol():
    """solution_template.py loaded as the file a package ships (solution.py is a copy)."""
    spec = importlib.util.spec_from_file_location("kit_runtime_under_test", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(nodes: list, inputs: list, outputs: list, path: Path) -> str:
    def info(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "g", [info(*i) for i in inputs], [info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def accumulator(tmp_path_factory) -> str:
    """y = state + x, the next state y: each prediction is the sum of the sequence's rows so
    far, so a prediction shows whether the state was kept, resumed or started over."""
    return _save([helper.make_node("Add", ["x", "state_0"], ["y"]),
                  helper.make_node("Identity", ["y"], ["state_0_out"])],
                 [("x", ["batch", 1]), ("state_0", ["batch", 1])],
                 [("y", ["batch", 1]), ("state_0_out", ["batch", 1])],
                 tmp_path_factory.mktemp("acc") / "acc.onnx")


def _predictions(model, rows) -> list[float]:
    """The accumulator's predictions on rows (id, step) of value 1, each to be predicted."""
    return [float(model.predict(Point(i, step, True, [1.0]))[0]) for i, step in rows]


@pytest.mark.parametrize("call_path", ["iobinding", "run"])
def test_a_nan_id_whose_step_starts_over_restarts(sol, accumulator, call_path):
    """NaN ids are one sequence, and within it a step that is not after the last one starts
    the sequence over, as for any other id: a second NaN-id sequence must not inherit the
    first one's state."""
    model = sol.PredictionModel(accumulator, call_path=call_path)
    nan = float("nan")
    rows = [(nan, 0), (np.float64(nan), 1), (nan, 2), (nan, 0)]
    assert _predictions(model, rows) == [1.0, 2.0, 3.0, 1.0]


def test_a_numpy_scalar_id_after_a_tuple_id_is_another_sequence(sol, accumulator):
    """np.int64(1) == (1, 2) is an array, no bool: same_key must read that as "not the same
    id" (a new sequence from zero), not carry the tuple id's state over."""
    model = sol.PredictionModel(accumulator)
    rows = [((1, 2), 0), (np.int64(1), 1), ((1, 2), 1)]
    assert _predictions(model, rows) == [1.0, 1.0, 2.0]  # and the tuple id resumes



def test_an_id_given_as_an_array_is_its_value(sol, accumulator):
    """A loop that slices a row (row[0:1]) or wraps an id (np.array(24)) gave the id as an
    array: TypeError unhashable type inside predict() (review r276). It is the id it holds."""
    model = sol.PredictionModel(accumulator)
    rows = [(np.array([7.0]), 0), (np.array(7.0), 1), (7, 2), (np.array([8, 9]), 0),
            (np.array([7.0]), 3), ((8, 9), 1)]
    assert _predictions(model, rows) == [1.0, 2.0, 3.0, 1.0, 4.0, 2.0]

def test_a_state_over_the_store_limit_still_parks_one_sequence(sol, accumulator, monkeypatch):
    """The parked-state store holds at least one sequence however big a state is: with none,
    two ids interleaved row by row would both start over on every row."""
    monkeypatch.setattr(sol, "MAX_SAVED_BYTES", 1)  # smaller than any state
    model = sol.PredictionModel(accumulator)
    assert model.max_saved == 1
    rows = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert _predictions(model, rows) == [1.0, 1.0, 2.0, 2.0, 3.0]


def test_a_steps_list_of_another_length_is_refused_before_the_tables_change(sol, accumulator):
    """steps must give one step per id; a call that fails leaves the id table, the last steps
    and the states as they were, so the same time step sent again gives what it would have."""
    model = sol.BatchPredictor(accumulator)
    model.predict_arrays([1, 2], [[1.0], [2.0]], steps=[0, 0])
    for steps in ([1, 1], [1, 1, 1, 1]):
        with pytest.raises(ValueError, match=f"{len(steps)} steps for 3 ids"):
            model.predict_arrays([1, 2, 3], [[1.0]] * 3, steps=steps)
        assert model.table == {1: 0, 2: 1} and model.last_step == [0, 0]
    y = model.predict_arrays([1, 2, 3], [[1.0]] * 3, steps=[1, 1, 0])
    assert y[:, 0].tolist() == [2.0, 3.0, 1.0]


BIG = 1_700_000_000_000_000_001  # past 2**53: float64 cannot tell BIG + 1 from BIG


@pytest.mark.parametrize("nan", [float("nan"), None, "pl", "pd"])
def test_big_integer_steps_beside_a_missing_step_keep_their_value(sol, accumulator, nan):
    """predict_arrays reads its steps as Python values: np.asarray made [BIG + 1, NaN] float64,
    the first step rounded to its id's last one and the id started over (2.0 wanted)."""
    import pandas as pd
    import polars as pl

    model = sol.BatchPredictor(accumulator)
    model.predict_arrays([7, 8], [[1.0], [1.0]], steps=[BIG, BIG])
    steps = [BIG + 1, None if nan in ("pl", "pd") else nan]
    steps = (pl.Series(steps, dtype=pl.Int64) if nan == "pl" else
             pd.array(steps, dtype="Int64") if nan == "pd" else steps)
    y = model.predict_arrays([7, 8], [[1.0], [1.0]], steps=steps)
    assert y[:, 0].tolist() == [2.0, 2.0]


@pytest.mark.parametrize("form", ["list", "tuple", "array", "column", "nested", "polars",
                                  "pandas", "frame", "tensor", "text"])
def test_steps_of_every_form_restart_a_sequence_that_starts_over(sol, accumulator, form):
    """Steps may come as any sequence of one step per id (an (n, 1) column, a one-column table,
    a tensor, text): each is read as its values, so a step that does not follow the last one
    starts the id over (steps 5, 6, then 0: 1, 2, then 1 again)."""
    import pandas as pd
    import polars as pl

    shape = {"list": list, "tuple": tuple, "array": np.array,
             "column": lambda s: np.array(s).reshape(-1, 1), "nested": lambda s: [[v] for v in s],
             "polars": pl.Series, "pandas": pd.Series,
             "frame": lambda s: pd.DataFrame({"step": s}), "tensor": torch.tensor,
             "text": lambda s: [str(v) for v in s]}[form]
    model = sol.BatchPredictor(accumulator)
    got = [model.predict_arrays([7, 8], [[1.0], [1.0]], steps=shape([t, t]))[:, 0].tolist()
           for t in (5, 6, 0)]
    assert got == [[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]] and model.last_step == [0, 0]


def test_a_state_with_two_dynamic_axes_is_refused(sol, tmp_path):
    """The batch axis of a state is the one dimension the graph leaves named: with two named
    the runtime cannot tell which one holds the ids, and says to re-export."""
    path = _save([helper.make_node("Identity", ["x"], ["y"]),
                  helper.make_node("Identity", ["state_0"], ["state_0_out"])],
                 [("x", ["batch", 1]), ("state_0", ["batch", "other"])],
                 [("y", ["batch", 1]), ("state_0_out", ["batch", "other"])],
                 tmp_path / "two.onnx")
    with pytest.raises(ValueError, match="no single dynamic batch axis; re-export"):
        sol.BatchPredictor(path)


def test_the_state_table_grows_by_doubling(sol, accumulator):
    """Ids arriving one at a time grow the state table by doubling (amortised copies), not by
    one row per new id."""
    model = sol.BatchPredictor(accumulator, capacity=2)
    for i in range(3):
        model.predict_arrays([i], [[1.0]])
    assert model.capacity == 4 and model.states[0].shape == (4, 1)


# --- export_step_graph -------------------------------------------------------------------

class DropoutCell(nn.Module):
    """A GRU cell on x and its state, with dropout before the head: a stream module as kit's
    models are (forward(x [B, T, F], state) -> (y [B, T, K], state)). The new state leaves
    through a Reshape(-1, H), whose output's batch axis the exporter cannot name by itself."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(3, 4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)

    def init_state(self, batch: int) -> list:
        return [torch.zeros(batch, 4)]

    def forward(self, x, state):
        h = state[0]
        ys = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            ys.append(self.head(self.drop(h)))
        return torch.stack(ys, 1), [h.reshape(-1, 4)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    module = DropoutCell().train()  # as a trainer leaves it
    path = tmp_path_factory.mktemp("export") / "step.onnx"
    shapes = export_step_graph(module, 3, path)
    return module, path, shapes


def test_export_leaves_the_module_in_eval_mode(exported):
    """export_step_graph promises the module is switched to eval mode and left there: the
    exporter restores its wrapper's training flag, which would switch the caller's dropout
    back on for whatever it does with the module next (parity checks, more predictions)."""
    module, _, _ = exported
    assert not module.training and not module.drop.training


def test_the_state_outputs_have_a_dynamic_batch_axis(exported):
    """The next-state outputs are declared with the batch axis named "batch", as the state
    inputs are (the module docstring's contract: B is dynamic in every input and output):
    left to the exporter, a state made by a Reshape(-1, H) gets a made-up name there, and a
    reader of the graph could not tell which axis holds the batch."""
    _, path, shapes = exported
    graph = onnx.load(str(path)).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert shapes == [["batch", 4]]
    assert [dims(i) for i in graph.input] == [["batch", 3], ["batch", 4]]
    assert dims(graph.output[0]) == ["batch", 2]
    assert [o.name for o in graph.output[1:]] == ["state_0_out"]
    assert [dims(o)[0] for o in graph.output] == ["batch", "batch"]


def test_the_exported_graph_runs_at_any_batch(exported):
    """The example batch is 2, not 1, so no dim is frozen at size 1 (and x and the state agree
    in the example): the graph computes what the module does at the scorer's batch 1 and at
    a larger one, state carried over steps."""
    module, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        state, torch_state = np.zeros((batch, 4), np.float32), module.init_state(batch)
        for _ in range(3):
            x = rng.standard_normal((batch, 3)).astype(np.float32)
            y, state = session.run(None, {"x": x, "state_0": state})
            with torch.no_grad():
                want, torch_state = module(torch.from_numpy(x)[:, None], torch_state)
            assert y.shape == (batch, 2)
            np.testing.assert_allclose(y, want[:, 0].numpy(), rtol=1e-5, atol=1e-6)
