import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kit.errors import KitError
from kit.models import (
    MAX_WIDTH,
    MODELS,
    ModelConfigError,
    build_model,
    count_params,
    model_values,
    solve_width,
)

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

# The smallest model of each family, for the tests that pin what a key or formula does.
TINY = {
    "gru": {"type": "gru", "hidden": 4, "layers": 1},
    "lstm": {"type": "lstm", "hidden": 4, "layers": 1},
    "attention_gru": {"type": "attention_gru", "hidden": 4, "layers": 1, "window": 3},
    "transformer": {"type": "transformer", "d_model": 8, "n_heads": 2, "layers": 1, "ff": 2,
                    "window": 3},
    "ssm": {"type": "ssm", "d_model": 4, "layers": 1, "d_state": 2},
    "tcn": {"type": "tcn", "channels": 4, "kernel": 3, "dilations": [1, 2]},
    "patchtst": {"type": "patchtst", "d_model": 8, "n_heads": 2, "layers": 1, "ff": 2,
                 "window": 6, "patch_len": 2, "stride": 2},
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
    assert set(TINY) == set(MODELS)


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
        ({"type": "gru", "hiden": 8}, "model.hiden: unknown key for 'gru' (did you mean "
         "'model.hidden'?); allowed: ['dropout'"),
        ({"type": "gru", "window": 8}, "model.window: unknown key for 'gru'"),
        ({"type": "gru", "hidden": "128"}, "model.hidden: expected an integer >= 1, got '128'"),
        ({"type": "gru", "hidden": 0}, "model.hidden: expected an integer >= 1, got 0"),
        ({"type": "gru", "hidden": True}, "model.hidden: expected an integer"),
        ({"type": "lstm", "layers": 1.5}, "model.layers: expected an integer"),
        ({"type": "gru", "layer_norm": 1}, "model.layer_norm: expected true or false, got 1"),
        ({"type": "gru", "dropout": 1.0}, "model.dropout: expected a probability in [0, 1)"),
        ({"type": "gru", "dropout": "0.1"}, "model.dropout: expected a number"),
        ({"type": "gru", "dropout": -0.1},
         "model.dropout: expected a probability in [0, 1), got -0.1"),
        # a bool is an int to Python: true must not pass as 1 (or 1.0)
        ({"type": "transformer", "ff": True}, "model.ff: expected a number, got True"),
        ({"type": "gru", "dropout": False}, "model.dropout: expected a number, got False"),
        ({"type": "tcn", "dilations": [1, True]}, "model.dilations: expected a non-empty list"),
        ({"type": "gru", "params": True}, "model.params: expected a positive integer"),
        # 0 is not a budget at all (not a budget too small for the smallest model)
        ({"type": "gru", "params": 0},
         "model.params: expected a positive integer (a parameter budget), got 0"),
        ({"type": "transformer", "window": 100_001}, "model.window: at most 100,000"),
        ({"type": "tcn", "kernel": 2, "dilations": [100_001]}, "kit allows at most 100,000"),
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


def tiny(kind: str, seed: int = 0, **keys):
    torch.manual_seed(seed)
    return build_model({**TINY[kind], **keys}, F, K).eval()


@pytest.mark.parametrize("kind", MODELS)
def test_defaults_of_the_common_keys(kind):
    """docs/models.md: dropout 0.0, head "linear", heads "shared" for every model; a default
    that drifted (0.1 dropout, separate heads) changes every run that leaves the key out."""
    values = model_values({"type": kind})
    assert (values["dropout"], values["head"], values["heads"]) == (0.0, "linear", "shared")
    assert len(tiny(kind).head.parts) == 1


@pytest.mark.parametrize("kind", MODELS)
def test_separate_heads_reach_every_model_and_keep_the_target_order(kind):
    """heads = "separate" means the same for every model (patchtst included): K heads of one
    output, output k from head k (the layout checkpoints and ensembles rely on)."""
    model = tiny(kind, heads="separate")
    assert len(model.head.parts) == K
    seen = []
    model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        y, _ = model(torch.randn(2, 7, F), model.init_state(2))
        for k, part in enumerate(model.head.parts):
            assert_close(y[..., k : k + 1], part(seen[0]))
        assert not torch.allclose(model.head.parts[0](seen[0]), model.head.parts[1](seen[0]))


def test_separate_head_output_k_is_part_k():
    """Output k of a separate head is its part k (a reversed concatenation still builds and
    trains, but loads a checkpoint's heads onto the wrong targets)."""
    from kit.models.heads import Head

    head = Head("linear", 3, 2, separate=True)
    with torch.no_grad():
        head.parts[1].weight.zero_()
        head.parts[1].bias.fill_(3.0)
        h = torch.randn(4, 3)
        y = head(h)
        assert torch.equal(y[:, 1], torch.full((4,), 3.0))
        assert_close(y[:, :1], head.parts[0](h))


@pytest.mark.parametrize("kind", ["gru", "lstm", "attention_gru"])
def test_layer_norm_normalises_the_recurrent_output(kind):
    """layer_norm = true puts a LayerNorm on the recurrent output (its init: zero mean and
    unit variance per step), with 2 * hidden parameters; false leaves the output as is."""
    plain, normed = tiny(kind), tiny(kind, layer_norm=True)
    assert isinstance(normed.norm, nn.LayerNorm)
    assert count_params(normed) == count_params(plain) + 2 * 4
    x = torch.randn(2, 9, F)
    with torch.no_grad():
        out, _ = normed.recur(x, normed.init_state(2)[: normed.n_states])
        assert_close(out, nn.functional.layer_norm(normed.rnn(x)[0], (4,)))
        raw, _ = plain.recur(x, plain.init_state(2)[: plain.n_states])
        assert_close(raw, plain.rnn(x)[0])
    assert_close(out.mean(-1), torch.zeros(2, 9))
    assert raw.mean(-1).abs().max() > 1e-2


@pytest.mark.parametrize("kind", MODELS)
def test_dropout_before_the_head_acts_in_training_only(kind):
    """docs/models.md: every model drops the head's input ("-> dropout -> head"). With only
    that dropout in train mode (p = 0.5) each input of the head is 0 or twice its eval value,
    a new mask each pass; in eval mode the model is deterministic."""
    model = tiny(kind, dropout=0.5)
    seen = []
    model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 12, F)
    with torch.no_grad():
        want, _ = model(x, model.init_state(2))
        model.drop.train()
        a, _ = model(x, model.init_state(2))
        b, _ = model(x, model.init_state(2))
        model.eval()
        again, _ = model(x, model.init_state(2))
    plain, dropped = seen[0], seen[1]
    kept = dropped != 0
    assert 0.2 < kept.float().mean() < 0.8
    assert_close(dropped[kept], 2 * plain[kept])
    assert not torch.equal(a, b)
    assert torch.equal(again, want)


@pytest.mark.parametrize("kind", ["transformer", "patchtst"])
def test_feed_forward_dropout_acts_on_its_output(kind):
    """docs/models.md: dropout acts on the feed-forward output of each block: with only that
    dropout in train mode the FF output is 0 or twice its eval value, and the model's output
    changes."""
    model = tiny(kind, dropout=0.5)
    ff = model.blocks[0].ff
    seen = []
    ff.register_forward_hook(lambda _m, _args, out: seen.append(out))
    x = torch.randn(2, 12, F)
    with torch.no_grad():
        want, _ = model(x, model.init_state(2))
        ff.train()
        got, _ = model(x, model.init_state(2))
    plain, dropped = seen
    kept = dropped != 0
    assert 0.2 < kept.float().mean() < 0.8
    assert_close(dropped[kept], 2 * plain[kept])
    assert not torch.allclose(got, want)


def test_feed_forward_width_rounds():
    """The feed-forward inner width is round(ff * d_model) (4 * 1.9 = 7.6 -> 8, not 7)."""
    model = tiny("transformer", d_model=4, n_heads=1, ff=1.9)
    assert model.blocks[0].ff[0].out_features == 8


def windowed_attention(q, k, v, bias, scale):
    """Reference: q, k, v [T, h, e], bias [h, W]; out[t, h] = sum_j softmax_j(scale q_t . k_j
    + bias[h, t - j]) v_j over max(0, t - W + 1) <= j <= t."""
    out = torch.zeros_like(q)
    for t in range(q.shape[0]):
        js = list(range(max(0, t - bias.shape[1] + 1), t + 1))
        for h in range(q.shape[1]):
            s = torch.stack([scale * q[t, h] @ k[j, h] + bias[h, t - j] for j in js])
            out[t, h] = sum(a * v[j, h] for a, j in zip(torch.softmax(s, 0), js, strict=True))
    return out


def test_transformer_block_computes_its_formula():
    """One pre-LN block by hand: x + out(attention) with scores q . k / sqrt(d_model / n_heads)
    plus the bias by distance over the window, then x + FF(LN x), LayerNorm and the head. The
    other tests compare the model with itself: a changed scale or residual passes them."""
    model = tiny("transformer")
    block, d = model.blocks[0], 8
    with torch.no_grad():
        block.bias.normal_()
        x = torch.randn(1, 7, F)
        y, _ = model(x, model.init_state(1))
        h = model.embed(x[0])
        q, k, v = (p.reshape(7, 2, 4) for p in block.qkv(block.norm1(h)).split([d] * 3, -1))
        h = h + block.out(windowed_attention(q, k, v, block.bias, 4**-0.5).reshape(7, d))
        h = h + block.ff(block.norm2(h))
        assert_close(y[0], model.head(model.norm(h)))


def test_attention_gru_computes_its_formula():
    """docs/models.md: score(t, j) = (Wq o_t) . o_j / sqrt(H) + bias[t - j] over the window and
    z_t = o_t + Wo sum_j a_tj o_j, then the head; with Wo zeroed z is the GRU output itself."""
    model = tiny("attention_gru")
    x = torch.randn(1, 6, F)
    with torch.no_grad():
        model.bias.normal_()
        y, _ = model(x, model.init_state(1))
        o = model.recur(x, model.init_state(1)[:1])[0][0]
        context = windowed_attention(model.query(o)[:, None], o[:, None], o[:, None],
                                     model.bias, 4**-0.5)[:, 0]
        assert_close(y[0], model.head(o + model.mix(context)))
        model.mix.weight.zero_()
        model.mix.bias.zero_()
        assert_close(model(x, model.init_state(1))[0][0], model.head(o))


def test_patchtst_block_computes_its_formula():
    """The encoder block by hand: full attention over the tokens with scores
    q . k / sqrt(d_model / n_heads), x + out(attention), then x + FF(LN x)."""
    block, d = tiny("patchtst").blocks[0], 8
    x = torch.randn(2, 3, d)
    with torch.no_grad():
        q, k, v = (p.reshape(2, 3, 2, 4).transpose(1, 2)
                   for p in block.qkv(block.norm1(x)).split([d] * 3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # sqrt(4) = 2
        h = x + block.out(a.transpose(1, 2).reshape(2, 3, d))
        assert_close(block(x), h + block.ff(block.norm2(h)))


def test_ssm_layer_computes_its_formula():
    """docs/models.md: h_t = exp(dt A) h_{t-1} + (dt x_t) B_t, y_t = (h_t . C_t + D x_t)
    silu(z_t), u += out_proj(y); with out_proj zeroed the layer is the identity on u."""
    layer = tiny("ssm").blocks[0]
    n, inner = 2, 8
    u, h0 = torch.randn(1, 5, 4), torch.randn(1, inner, n)
    with torch.no_grad():
        out, h_end = layer(u, h0, 5)
        x, z = layer.in_proj(layer.norm(u[0])).split([inner, inner], -1)
        x = torch.nn.functional.silu(x)
        low, b, c = layer.x_proj(x).split([layer.rank, n, n], -1)
        dt = torch.nn.functional.softplus(layer.dt_proj(low))
        a, h, ys = -torch.exp(layer.a_log), h0[0], []
        for t in range(5):
            h = torch.exp(dt[t, :, None] * a) * h + (dt[t] * x[t])[:, None] * b[t]
            ys.append(h @ c[t] + layer.d * x[t])
        y = torch.stack(ys) * torch.nn.functional.silu(z)
        assert_close(out[0], u[0] + layer.out_proj(y))
        assert_close(h_end[0], h)
        layer.out_proj.weight.zero_()
        layer.out_proj.bias.zero_()
        assert torch.equal(layer(u, h0, 5)[0], u)


def test_ssm_rank_and_initial_step_sizes():
    """rank = ceil(d_model / 16) (24 -> 2, not 1); dt_proj's bias is softplus^-1 of step sizes
    drawn in [1e-3, 1e-1], so the initial dt = softplus(bias) lies there."""
    layers = tiny("ssm", d_model=24, expand=1, d_state=3).blocks[0], tiny("ssm").blocks[0]
    assert [layer.rank for layer in layers] == [2, 1]
    assert layers[0].x_proj.out_features == 2 + 2 * 3
    dt = torch.nn.functional.softplus(layers[0].dt_proj.bias.detach())
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1


def test_tcn_block_computes_its_formula():
    """docs/models.md: a block is x + Linear(gelu(dilated causal conv(x))), the conv seeing
    x_t, x_{t - d}, ... x_{t - (kernel - 1) d} (zeros before the start); with the Linear
    zeroed the block is the identity."""
    block = tiny("tcn").blocks[1]  # kernel 3, dilation 2
    x, history = torch.randn(1, 6, 4), torch.zeros(1, 4, 4)
    w = block.conv.weight.detach()  # [out, in, kernel], tap 2 the newest
    with torch.no_grad():
        out, _ = block(x, history, 6)
        for t in range(6):
            y = block.conv.bias + sum(w[:, :, 2 - i] @ x[0, t - 2 * i] for i in range(3)
                                      if t - 2 * i >= 0)
            assert_close(out[0, t], x[0, t] + block.mix(torch.nn.functional.gelu(y)))
        block.mix.weight.zero_()
        block.mix.bias.zero_()
        assert torch.equal(block(x, history, 6)[0], x)


def test_alibi_slopes():
    """The bias by distance starts as -2^(-8 (h + 1) / n_heads) * distance."""
    from kit.models.attention import alibi_bias

    bias = alibi_bias(4, 3)
    assert torch.equal(bias[0], torch.tensor([0.0, -0.25, -0.5]))
    assert torch.equal(bias[3], torch.tensor([0.0, -(2.0**-8), -(2.0**-7)]))


@pytest.mark.parametrize("kind", ["transformer", "attention_gru"])
def test_count_is_the_real_window_entries(kind):
    """The state's count is min(steps seen, W): past W it stays W, step by step and in chunks
    (unclamped it grows without bound in a stream that never restarts)."""
    model = tiny(kind)  # window 3
    x = torch.randn(1, 10, F)
    for lengths in ([1] * 10, [10], [2]):
        _, state = run_chunks(model, x[:, : sum(lengths)], lengths)
        assert state[-1].tolist() == [[min(sum(lengths), 3)]]


def test_limits_of_window_and_history_are_inclusive():
    """docs/models.md: a window of 2 to 100,000 steps and a TCN block looking at most 100,000
    steps back: 100,000 itself is allowed (100,001 is refused, test_bad_configs)."""
    assert model_values({"type": "transformer", "window": 100_000})["window"] == 100_000
    assert model_values({"type": "patchtst", "window": 100_000})["window"] == 100_000
    assert model_values({"type": "tcn", "kernel": 2, "dilations": [100_000]})
    assert model_values({"type": "tcn", "kernel": 3, "dilations": [1, 50_000]})


def test_model_values_checks_the_budget():
    """model_values (public) refuses a bad params as solve_width does, not only after solving."""
    for bad in (1.5, 0, -3, True, "100"):
        with pytest.raises(ModelConfigError, match="model.params: expected a positive integer"):
            model_values({"type": "gru", "params": bad})
    assert model_values({"type": "gru", "params": 1000})["hidden"] == 128


@pytest.mark.parametrize("hidden", [1, 6, 8])
def test_a_budget_of_exactly_a_models_size_gives_that_width(hidden):
    """"At most that many parameters": a budget equal to the hidden-h model's size gives h,
    for the smallest model (1), inside the bisection (6) and at a doubling step (8)."""
    size = count_params(build_model({"type": "gru", "hidden": hidden, "layers": 1}, F, K))
    assert solve_width({"type": "gru", "layers": 1, "params": size}, F, K)["hidden"] == hidden
    smaller = solve_width({"type": "gru", "layers": 1, "params": size + 1}, F, K)
    assert smaller["hidden"] == hidden
    if hidden > 1:
        assert solve_width({"type": "gru", "layers": 1, "params": size - 1},
                           F, K)["hidden"] == hidden - 1


def test_budget_search_stops_at_max_width():
    """A huge budget gives MAX_WIDTH, not a model larger than the search allows."""
    solved = solve_width({"type": "gru", "layers": 1, "params": 10**13}, F, K)
    assert solved["hidden"] == MAX_WIDTH


def test_solve_width_returns_a_copy():
    """Without params the config comes back as a new dict: the caller's table is not aliased."""
    config = {"type": "gru", "hidden": 8}
    solved = solve_width(config, F, K)
    assert solved == config and solved is not config
    solved["hidden"] = 9
    assert config["hidden"] == 8


def test_count_params_counts_frozen_parameters():
    """count_params counts trainable and frozen parameters (its docstring; budgets use it)."""
    model = tiny("gru")
    total = count_params(model)
    model.head.parts[0].weight.requires_grad_(False)
    assert count_params(model) == total


def test_scale_outputs_copies_its_arguments():
    """scale_outputs keeps its own copies: changing the caller's tensors later does not move
    the head's outputs."""
    from kit.models.heads import Head

    head = Head("linear", 3, 2)
    center, scale = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    head.scale_outputs(center, scale)
    center.zero_()
    scale.zero_()
    assert head.out_center.tolist() == [1.0, 2.0] and head.out_scale.tolist() == [3.0, 4.0]
