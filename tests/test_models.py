import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import KitError
from kit.models import MODELS, ModelConfigError, build_model, count_params, solve_width

F, K = 5, 2

# Small models, one per family plus the option variants (heads, layer norm, windows).
CONFIGS = {
    "gru": {
        "type": "gru",
        "hidden": 12,
        "layers": 2,
        "layer_norm": True,
        "head": "highway",
        "heads": "separate",
        "dropout": 0.2,
    },
    "gru_1layer": {"type": "gru", "hidden": 8, "layers": 1},
    "lstm": {"type": "lstm", "hidden": 12, "layers": 2, "head": "residual"},
    "attention_gru": {
        "type": "attention_gru",
        "hidden": 12,
        "layers": 1,
        "window": 5,
        "layer_norm": True,
    },
    "transformer": {
        "type": "transformer",
        "d_model": 16,
        "n_heads": 2,
        "layers": 2,
        "ff": 2,
        "window": 6,
        "dropout": 0.1,
        "head": "residual",
    },
    "transformer_wide": {
        "type": "transformer",
        "d_model": 8,
        "n_heads": 1,
        "layers": 1,
        "window": 40,
    },  # window wider than a block of the sequence path
    # heads of width 1 over a window of 2: the smallest attention there is
    "transformer_narrow": {"type": "transformer", "d_model": 4, "n_heads": 4, "layers": 1,
                           "window": 2},
    "ssm": {"type": "ssm", "d_model": 12, "layers": 2, "d_state": 4, "heads": "separate"},
    "tcn": {"type": "tcn", "channels": 8, "kernel": 3, "dilations": [1, 2, 4]},
    "tcn_kernel2": {"type": "tcn", "channels": 6, "kernel": 2, "dilations": [3, 1, 7]},
    # a stride past the patch (steps no patch covers) and a single patch as wide as the window
    "patchtst_sparse": {"type": "patchtst", "d_model": 8, "n_heads": 2, "layers": 1,
                        "window": 12, "patch_len": 2, "stride": 5},
    "patchtst_one_patch": {"type": "patchtst", "d_model": 8, "n_heads": 1, "layers": 1,
                           "window": 6, "patch_len": 6, "stride": 6},
    "patchtst": {
        "type": "patchtst",
        "d_model": 16,
        "n_heads": 2,
        "layers": 1,
        "ff": 2,
        "window": 12,
        "patch_len": 4,
        "stride": 3,
        "head": "highway",
    },
}


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(CONFIGS[name], F, K).eval()


def run_chunks(model, x, lengths):
    """Forward over consecutive chunks of x [B, T, F], carrying the state."""
    state, ys, start = model.init_state(x.shape[0]), [], 0
    with torch.no_grad():
        for n in lengths:
            y, state = model(x[:, start : start + n], state)
            ys.append(y)
            start += n
    return torch.cat(ys, dim=1), state


def chunk_lengths(total: int, size: int) -> list[int]:
    return [min(size, total - s) for s in range(0, total, size)]


def assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def assert_same_run(got, expected):
    (y1, s1), (y2, s2) = got, expected
    assert_close(y1, y2)
    assert len(s1) == len(s2)
    for a, b in zip(s1, s2, strict=True):
        assert a.shape == b.shape
        assert_close(a, b)


def test_every_family_is_registered_and_tested():
    assert set(MODELS) == {"gru", "lstm", "attention_gru", "transformer", "ssm", "tcn", "patchtst"}
    assert {c["type"] for c in CONFIGS.values()} == set(MODELS)


@pytest.mark.parametrize("name", CONFIGS)
def test_sequence_equals_steps_and_chunks(name):
    model = make(name)
    x = torch.randn(3, 300, F)
    whole = run_chunks(model, x, [300])
    assert whole[0].shape == (3, 300, K)
    assert torch.isfinite(whole[0]).all()
    assert_same_run(run_chunks(model, x, [1] * 300), whole)
    assert_same_run(run_chunks(model, x, chunk_lengths(300, 7)), whole)
    single = torch.randn(1, 20, F)  # batch 1
    assert_same_run(run_chunks(model, single, [1] * 20), run_chunks(model, single, [20]))


@pytest.mark.parametrize("name", CONFIGS)
@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 13), min_size=1, max_size=6),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_any_chunking_equals_the_whole_sequence(name, lengths, batch, seed):
    model = make(name)
    x = torch.randn(batch, sum(lengths), F, generator=torch.Generator().manual_seed(seed))
    assert_same_run(run_chunks(model, x, lengths), run_chunks(model, x, [sum(lengths)]))


@pytest.mark.parametrize("name", CONFIGS)
def test_state_is_batch_first_zeros_and_rows_are_independent(name):
    model = make(name)
    for batch in (1, 3):
        state = model.init_state(batch)
        assert state and all(s.shape[0] == batch for s in state)
        assert all(s.dtype == torch.float32 and not s.any() for s in state)
    x = torch.randn(3, 30, F)
    y, new = run_chunks(model, x, [30])
    assert [s.shape for s in new] == [s.shape for s in model.init_state(3)]
    y1, new1 = run_chunks(model, x[1:2], [30])  # one row alone: the same as in the batch
    assert_close(y1, y[1:2])
    for a, b in zip(new1, new, strict=True):
        assert_close(a, b[1:2])


def onnx_steps(path, state, rows):
    """Run the step graph over rows [T, B, F] with onnxruntime, carrying the state."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ys = []
    for row in rows:
        out = session.run(None, dict(zip(names, [row, *state], strict=True)))
        ys.append(out[0])
        state = out[1:]
    return np.stack(ys, axis=1), state


def assert_onnx_matches_steps(model, n_inputs, path, steps=20, batches=(3, 1)):
    """Export the step graph and compare onnxruntime with the torch step path, state carried."""
    import onnx

    from kit.export.step_graph import batch_axes, export_step_graph

    shapes = export_step_graph(model, n_inputs, path)
    assert not model.training  # the export leaves the module in eval mode (said in its doc)
    assert shapes == [["batch" if d == axis else n for d, n in enumerate(s.shape)]
                      for s, axis in zip(model.init_state(1), batch_axes(model), strict=True)]
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert nodes.count("Shape") <= 1, "the step graph reads shapes off tensors"  # 1: wrapper
    for batch in batches:  # the batch dim is dynamic
        x = torch.randn(batch, steps, n_inputs)
        y, state = run_chunks(model, x, [1] * steps)
        zeros = [s.numpy() for s in model.init_state(batch)]
        got_y, got_state = onnx_steps(path, zeros, x.numpy().transpose(1, 0, 2))
        assert_close(got_y, y)
        for a, b in zip(got_state, state, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_step_graph_matches_the_torch_step_path(name, tmp_path):
    model = make(name)
    assert_onnx_matches_steps(model, F, tmp_path / f"{name}.onnx")
    from kit.export.step_graph import batch_axes

    assert set(batch_axes(model)) == {0}  # the models' own states: batch first


@pytest.mark.parametrize("name", CONFIGS)
def test_step_form_computes_what_the_model_computes(name, tmp_path):
    """What pack freezes (step_form: recurrent state per layer in the ONNX op's layout) equals
    the model over whole sequences, step by step and in chunks, and exports to a graph that
    matches it; a recurrent model's graph then has no layout changes on its state."""
    model = make(name)
    torch.manual_seed(1)
    step = model.step_form().eval()
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(1)).item()
    x = torch.randn(3, 40, F)
    want, _ = run_chunks(model, x, [40])
    for lengths in ([1] * 40, chunk_lengths(40, 7), [40]):
        assert_close(run_chunks(step, x, lengths)[0], want)
    path = tmp_path / f"{name}.onnx"
    assert_onnx_matches_steps(step, F, path)
    if CONFIGS[name]["type"] in ("gru", "lstm"):
        import onnx

        graph = onnx.load(str(path)).graph
        states = {i.name for i in graph.input} - {"x"}
        outs = {o.name for o in graph.output} - {"y"}
        readers = {n.op_type for n in graph.node for i in n.input if i in states}
        writers = {n.op_type for n in graph.node for o in n.output if o in outs}
        assert readers == writers == {CONFIGS[name]["type"].upper()}, (readers, writers)


@pytest.mark.parametrize("name", CONFIGS)
def test_sequence_path_trains(name):
    model = make(name)
    model.train()
    x = torch.randn(2, 25, F)
    y, state = model(x, model.init_state(2))
    (y.square().mean() + sum(s.square().mean() for s in state)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_dropout_acts_in_training_only():
    model = build_model({**CONFIGS["transformer"], "dropout": 0.5}, F, K)
    x = torch.randn(2, 10, F)
    model.train()
    a, _ = model(x, model.init_state(2))
    b, _ = model(x, model.init_state(2))
    assert not torch.allclose(a, b)
    model.eval()
    a, _ = model(x, model.init_state(2))
    b, _ = model(x, model.init_state(2))
    assert torch.equal(a, b)


def test_defaults_fill_missing_keys():
    model = build_model({"type": "gru"}, F, K)
    assert [tuple(s.shape) for s in model.init_state(4)] == [(4, 2, 128)]
    model = build_model({"type": "transformer", "layers": 1}, F, K)
    assert [tuple(s.shape) for s in model.init_state(2)] == [(2, 1, 64, 64), (2, 1, 64, 64), (2, 1)]
    tcn = build_model({"type": "tcn"}, F, K)
    assert [tuple(s.shape) for s in tcn.init_state(1)] == [(1, 2 * d, 64) for d in (1, 2, 4, 8, 16)]


def test_count_params():
    model = make("gru")
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    linear = build_model({"type": "gru", "hidden": 4, "layers": 1}, 3, 2)
    assert count_params(linear) == 3 * 4 * (3 + 4) + 2 * 3 * 4 + 4 * 2 + 2  # GRU + head


@pytest.mark.parametrize("name", CONFIGS)
def test_budget_gives_the_widest_model_that_fits(name):
    config = {k: v for k, v in CONFIGS[name].items()}
    cls = MODELS[config["type"]]
    width = config.pop(cls.width_key)
    budget = count_params(build_model(CONFIGS[name], F, K)) + 50
    solved = solve_width({**config, "params": budget}, F, K)
    step = cls.width_multiple(solved)
    assert solved[cls.width_key] >= width and solved[cls.width_key] % step == 0
    assert count_params(build_model(solved, F, K)) <= budget
    wider = {**solved, cls.width_key: solved[cls.width_key] + step}
    wider.pop("params")
    assert count_params(build_model(wider, F, K)) > budget
    model = build_model({**config, "params": budget}, F, K)  # build_model solves it too
    assert count_params(model) == count_params(build_model(solved, F, K))


def test_budget_errors_and_overrides_a_width():
    with pytest.raises(ModelConfigError, match="model.params = 10 is too small"):
        solve_width({"type": "gru", "params": 10}, F, K)
    with pytest.raises(ModelConfigError, match="model.params: expected a positive integer"):
        build_model({"type": "gru", "params": 1.5e5}, F, K)
    # a child experiment adds a budget to a base that sets a width: the budget decides
    solved = solve_width({"type": "gru", "hidden": 8, "layers": 1, "params": 10_000}, F, K)
    assert solved["hidden"] > 8
    solved = solve_width({"type": "transformer", "d_model": 30, "params": 20_000}, F, K)
    assert solved["d_model"] % 4 == 0
    config = {"type": "gru", "hidden": 8}
    assert solve_width(config, F, K) == config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden": 8}, "model.type is missing; available: ['attention_gru'"),
        ({"type": "mamba"}, "model.type: unknown model 'mamba'; available: ['attention_gru'"),
        ({"type": "gru", "hiden": 8}, "model.hiden: unknown key for 'gru'; allowed: ['dropout'"),
        ({"type": "gru", "window": 8}, "model.window: unknown key for 'gru'"),
        ({"type": "gru", "hidden": "128"}, "model.hidden: expected an integer >= 1, got '128'"),
        ({"type": "gru", "hidden": 0}, "model.hidden: expected an integer >= 1, got 0"),
        ({"type": "gru", "hidden": True}, "model.hidden: expected an integer"),
        ({"type": "lstm", "layers": 1.5}, "model.layers: expected an integer"),
        ({"type": "gru", "layer_norm": 1}, "model.layer_norm: expected true or false, got 1"),
        ({"type": "gru", "dropout": 1.0}, "model.dropout: expected a probability in [0, 1)"),
        ({"type": "gru", "dropout": "0.1"}, "model.dropout: expected a number"),
        ({"type": "gru", "head": "mlp"}, "model.head: expected one of ['linear', 'highway'"),
        ({"type": "ssm", "heads": "both"}, "model.heads: expected one of ['shared', 'separate']"),
        ({"type": "attention_gru", "window": 1}, "model.window: expected an integer >= 2"),
        (
            {"type": "transformer", "d_model": 30, "n_heads": 4},
            "model.d_model (30) must be a multiple of model.n_heads (4)",
        ),
        ({"type": "transformer", "ff": 0}, "model.ff: expected a finite number > 0"),
        ({"type": "transformer", "ff": float("inf")}, "model.ff: expected a finite number > 0"),
        ({"type": ["gru"]}, "model.type: unknown model ['gru']"),
        ({"type": "tcn", "dilations": []}, "model.dilations: expected a non-empty list"),
        ({"type": "tcn", "dilations": [1, 0]}, "model.dilations: expected a non-empty list"),
        ({"type": "tcn", "kernel": 1}, "model.kernel: expected an integer >= 2"),
        (
            {"type": "patchtst", "window": 8, "patch_len": 16},
            "model.patch_len (16) must be at most model.window (8)",
        ),
        (  # one row past the window: no patch fits (zero patches), not a torch error later
            {"type": "patchtst", "window": 8, "patch_len": 9},
            "model.patch_len (9) must be at most model.window (8)",
        ),
        # 0 divides the window into patches / sizes the state: a ZeroDivisionError or empty state
        ({"type": "patchtst", "stride": 0}, "model.stride: expected an integer >= 1, got 0"),
        ({"type": "ssm", "d_state": 0}, "model.d_state: expected an integer >= 1, got 0"),
        (  # with a budget: refused before any model is built (was a RuntimeError inside)
            {"type": "patchtst", "params": 100_000, "patch_len": 100},
            "model.patch_len (100) must be at most model.window (64)",
        ),
        ("gru", "[model] must be a table"),
        # sizes torch cannot allocate: the table is named, not torch's traceback
        ({"type": "gru", "hidden": 10**11}, "'hidden': 100000000000"),
        ({"type": "transformer", "ff": 1e300}, "torch cannot build it (TypeError"),
        # with a budget too: solving it builds the model (on the meta device), uncaught
        ({"type": "transformer", "params": 100_000, "ff": 1e300}, "torch cannot build it"),
        ({"type": "ssm", "params": 100_000, "expand": 10**20}, "torch cannot build it"),
        # an int past float's range: an OverflowError from math.isfinite
        ({"type": "transformer", "ff": 10**400}, "model.ff: expected a finite number > 0"),
        # a history only the state holds: built, then a torch allocation error at its state
        ({"type": "tcn", "dilations": [1, 10**12]},
         "model.kernel (3) and model.dilations (up to 1,000,000,000,000) make a block look "
         "2,000,000,000,000 steps back; kit allows at most 100,000"),
        # an attention window sizes the state as a TCN's history does
        *[({"type": kind, "window": 10**8},
           "model.window: at most 100,000 (it sizes the model's state), got 100,000,000")
          for kind in ("transformer", "attention_gru", "patchtst")],
    ],
)
def test_bad_configs_name_the_entry(config, message):
    with pytest.raises(ModelConfigError) as err:
        build_model(config, F, K)
    assert message in str(err.value)
    assert isinstance(err.value, KitError)


@pytest.mark.parametrize("heads, parts", [("shared", 1), ("separate", 2)])
def test_the_heads_key_builds_one_head_or_one_per_target(heads, parts):
    """"separate" builds one head per target (each its own highway), "shared" one head with K
    outputs; with the linear head both have the same parameter count, so count the parts."""
    from kit.models.heads import make_head

    head = make_head(8, 2, "highway", heads)
    assert len(head.parts) == parts
    assert [part.out.out_features for part in head.parts] == [2 // parts] * parts


@pytest.mark.parametrize("separate", [False, True])
def test_scaled_outputs_apply_to_separate_heads_too(separate):
    from kit.models.heads import Head

    torch.manual_seed(0)
    head = Head("linear", 8, 2, separate=separate)
    h = torch.randn(5, 3, 8)
    with torch.no_grad():
        plain = head(h)
        head.scale_outputs([130.0, -20.0], [7.0, 0.5])
        np.testing.assert_allclose(head(h).numpy(),
                                   (plain * torch.tensor([7.0, 0.5])
                                    + torch.tensor([130.0, -20.0])).numpy(), rtol=1e-6)


def test_the_highway_and_residual_heads_compute_their_formulas():
    """The model tests compare a model with itself (sequence, steps, ONNX); these pin what
    the heads compute: z = g relu(t) + (1 - g) h and z = h + mlp(h), then the output map."""
    from kit.models.heads import Highway, Residual

    torch.manual_seed(0)
    h = torch.randn(4, 6)
    highway, residual = Highway(6, 2), Residual(6, 2)
    with torch.no_grad():
        gate, transform = highway.inner(h).split([6, 6], dim=-1)
        g = torch.sigmoid(gate)
        want = highway.out(g * torch.relu(transform) + (1 - g) * h)
        torch.testing.assert_close(highway(h), want)
        torch.testing.assert_close(residual(h), residual.out(h + residual.mlp(h)))
        assert not torch.allclose(residual(h), residual.out(residual.mlp(h)))
        assert not torch.allclose(highway(h), highway.out(g * torch.relu(transform) + g * h))
