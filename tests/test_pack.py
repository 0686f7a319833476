"""kit pack, kit parity and kit score on packs: every model type on a tiny competition, the
runtime's contract, zip and manifest contents, and deliberately broken packages."""

import ast
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest

from kit.competition import load_spec
from kit.errors import KitError, SubmissionError
from kit.export.frozen import StreamChain, load_member, sha256_file
from kit.export.pack import (
    PACK_FILES,
    PackError,
    finalize_graph,
    pack_ensemble,
    pack_run,
    read_manifest,
    submission_spec,
    write_manifest,
)
from kit.export.step_graph import export_step_graph
from kit.parity import run_parity
from kit.scoring import score_submission
from kit.train.checkpoint import load_checkpoint, save_checkpoint
from tests.cli import run_cli
from tests.conftest import MODEL_TABLES, hostile_rows, raw_gru_run
from tests.processes import dead_pid

SEQS = 4  # parity sample: enough for shuffling and interleaving, small enough to be quick


@pytest.fixture(scope="module")
def gru_pack(workspace, runs):
    return pack_run(runs["gru"], "gru", workspace / "submissions")


def _valid(workspace) -> Path:
    return workspace / "data/valid.parquet"


def test_every_registered_model_type_is_packed_below():
    from kit.models import MODELS

    assert set(MODEL_TABLES) == set(MODELS)  # a new model type needs its pack + parity test


@pytest.mark.parametrize("name", list(MODEL_TABLES))
def test_pack_parity_and_score_for_every_model_type(workspace, runs, name):
    packed = pack_run(runs[name], f"pack-{name}", workspace / "submissions")
    (packed.folder / "notes.txt").write_text("a stray file: parity's new zip leaves it out")
    report = run_parity(packed.folder, _valid(workspace), seqs=SEQS)
    assert report.ok, report.format()
    assert report.max_abs <= 1e-5
    assert {c.name for c in report.checks} == {
        "manifest", "paths agree", "order: shuffled sequences", "order: interleaved rows",
        "warm-up processed", "NaN/inf rows"}
    # the report: each path's metric, per target, and each pair's differences per target
    targets = ["t0", "t1"]
    assert set(report.metrics) == {"sequence", "step", "package"}
    scores = [m["score"] for m in report.metrics.values()]
    assert np.isfinite(scores).all() and max(scores) - min(scores) <= 1e-4
    assert all(list(m["per_target"]) == targets for m in report.metrics.values())
    assert len(report.diffs) == 3
    sampled = pl.read_parquet(_valid(workspace), columns=["seq_ix"])["seq_ix"].unique(
        maintain_order=True)[:SEQS].to_list()  # where a worst difference can be: (id, step)
    for diff in report.diffs:
        assert list(diff["per_target"]) == targets
        worst = max(d["max_abs"] for d in diff["per_target"].values())
        assert worst == diff["max_abs"] <= report.max_abs
        for d in diff["per_target"].values():
            assert 0 <= d["max_abs"] <= 1e-5 and d["max_rel"] >= 0
            assert d["seq"] in sampled and 0 <= d["step"] < 60
    # the package scores what the model scored on validation when training (same rows)
    scored = score_submission(packed.zip_path, _valid(workspace),
                              submission_spec(packed.zip_path), progress=False)
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    assert scored.score == pytest.approx(metrics["score"], abs=1e-4)
    # parity was recorded in the manifest, and the zip rewritten with it (and nothing else)
    manifest = read_manifest(packed.folder)
    assert manifest["parity"]["ok"] and manifest["parity"]["max_abs"] == report.max_abs
    with zipfile.ZipFile(packed.zip_path) as archive:
        assert json.loads(archive.read("manifest.json"))["parity"]["ok"]
        assert sorted(archive.namelist()) == sorted(PACK_FILES)


def test_zip_holds_exactly_the_package_files_and_the_manifest_hashes_match(gru_pack):
    with zipfile.ZipFile(gru_pack.zip_path) as archive:
        assert sorted(archive.namelist()) == sorted(PACK_FILES)
        manifest = json.loads(archive.read("manifest.json"))
        for name, digest in manifest["files"].items():
            import hashlib

            assert hashlib.sha256(archive.read(name)).hexdigest() == digest
    assert set(manifest["files"]) == {"solution.py", "model.onnx"}
    for name, digest in manifest["files"].items():
        assert sha256_file(gru_pack.folder / name) == digest
    assert manifest["inputs"] == list(load_spec("predictorium").features)
    assert manifest["outputs"] == ["t0", "t1"]
    assert manifest["members"][0]["weights"] == [1.0, 1.0]
    assert manifest["members"][0]["config"]["model"]["type"] == "gru"
    assert [s["name"] for s in manifest["states"]] == [
        f"state_{i}" for i in range(len(manifest["states"]))]


def test_graph_has_dynamic_batch_and_a_portable_ir_version(gru_pack):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(gru_pack.folder / "model.onnx"))
    assert model.ir_version == 8
    session = ort.InferenceSession(str(gru_pack.folder / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names[0] == "x" and all(n == f"state_{i}" for i, n in enumerate(names[1:]))
    for batch in (1, 5):
        feed = {"x": np.zeros((batch, 32), np.float32)}
        axes = [i.shape.index("batch") for i in session.get_inputs()[1:]]
        feed |= {i.name: np.zeros([batch if d == "batch" else d for d in i.shape], np.float32)
                 for i in session.get_inputs()[1:]}
        y, *state = session.run(None, feed)
        assert y.shape == (batch, 2)
        assert all(s.shape[a] == batch for s, a in zip(state, axes, strict=True))


def test_solution_imports_only_numpy_and_onnxruntime(gru_pack):
    tree = ast.parse((gru_pack.folder / "solution.py").read_text())

    def imported(nodes) -> set[str]:
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module.split(".")[0])
        return names

    assert imported(tree.body) <= {"os", "sys", "json", "collections", "numpy", "onnxruntime"}
    # polars/pandas only inside BatchPredictor.predict, to build a frame of the kind it was given
    lazy = imported(ast.walk(tree)) - imported(tree.body)
    assert lazy <= {"polars", "pandas"}
    predict = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                   and n.name == "BatchPredictor").body
    frame_method = next(n for n in predict if isinstance(n, ast.FunctionDef)
                        and n.name == "predict")
    assert imported(ast.walk(frame_method)) == lazy


def test_solution_on_python_before_3_10_says_what_it_needs(gru_pack):
    """On 3.9 it imported, took the plain call path without a word and raised a TypeError on
    its first row (isinstance with A | B, zip(strict=True))."""
    old = ("import sys; sys.version_info = (3, 9, 18, 'final', 0); sys.version = '3.9.18 (x)'; "
           "sys.path.insert(0, '.'); import solution")
    interpreters = [[sys.executable, "-c", old]]
    real = shutil.which("python3.9")  # where one is installed (pyenv here; not in CI)
    if real and subprocess.run([real, "-V"], capture_output=True).returncode == 0:
        interpreters.append([real, "-c", "import solution"])
    for command in interpreters:
        done = subprocess.run(command, cwd=gru_pack.folder, capture_output=True, text=True)
        assert done.returncode == 1
        assert "ImportError: solution.py needs Python >= 3.10; this is 3.9.18" in done.stderr


class Point:
    def __init__(self, seq_ix, step_in_seq, need_prediction, state):
        self.seq_ix, self.step_in_seq = seq_ix, step_in_seq
        self.need_prediction, self.state = need_prediction, state


def _solution_module(folder: Path, name: str = "solution"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / "solution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _solution(folder: Path, call_path: str = "iobinding"):
    return _solution_module(folder, f"solution_{call_path}").PredictionModel(call_path=call_path)


def test_runtime_contract_fresh_arrays_none_float_ids_and_nan_rows(gru_pack):
    model = _solution(gru_pack.folder)
    assert model.bindings is not None  # the IOBinding path passed its self-test here
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((15, 32))
    rows[12, :5] = np.nan
    rows[13, 3] = np.inf
    outs = []
    for step, row in enumerate(rows):
        out = model.predict(Point(np.float64(7.0), np.float64(step), np.float64(step >= 10), row))
        if step < 10:
            assert out is None
        else:
            assert out.shape == (2,) and out.dtype == np.float32 and np.isfinite(out).all()
            outs.append(out)
    assert len({id(o) for o in outs}) == len(outs)  # fresh objects, not one reused buffer
    assert not any(np.shares_memory(a, b) for a in outs for b in outs if a is not b)
    assert not np.array_equal(outs[0], outs[1])
    # single-threaded, as the scorer's one vCPU wants (a pool of threads only costs there)
    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_parity_holds_packages_to_1e_5_by_default(workspace, gru_pack, tmp_path):
    """The issue's default tolerance: predictions 2e-5 off fail the paths check."""
    from kit.parity import DEFAULT_ATOL

    assert DEFAULT_ATOL == 1e-5
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "return self.y_row.copy()", "return self.y_row.copy() + 2e-5")
    out = run_cli("parity", folder, "--data", _valid(workspace), "--seqs", 2, expect=1).output
    assert "[FAIL] paths agree" in out and "by more than 1e-05" in out


def test_both_call_paths_give_identical_predictions(gru_pack):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((40, 32))
    results = []
    for path in ("iobinding", "iobinding_public", "run"):
        model = _solution(gru_pack.folder, path)
        assert (model.bindings is None) == (path == "run")
        # the fast binding call is the C++ session's own; the public one is the wrapper's
        assert (model.run_binding == model.session._sess.run_with_iobinding) == (
            path == "iobinding")
        results.append([model.predict(Point(float(i // 20), float(i % 20), 1.0, row))
                        for i, row in enumerate(rows)])
    for other in results[1:]:
        np.testing.assert_array_equal(np.stack(results[0]), np.stack(other))


def test_the_binding_self_test_and_the_fallbacks(gru_pack, monkeypatch):
    """A binding call that does not compute what session.run computes fails the self-test;
    the fast call falls back to the public wrapper, and an onnxruntime whose binding fails
    falls back to session.run with the same predictions; an unknown call path is refused."""
    import onnxruntime as ort

    model = _solution(gru_pack.folder)
    assert model._iobinding_works(model.run_binding, model.bindings)
    assert not model._iobinding_works(lambda binding, options: None, model.bindings)
    fast = model.session._sess.run_with_iobinding
    monkeypatch.setattr(type(model), "_iobinding_works",
                        lambda self, run, bindings: run != fast)
    assert model._binding_path()[0] == model.session.run_with_iobinding
    monkeypatch.undo()

    rows = np.random.default_rng(4).standard_normal((12, 32))
    want = [model.predict(Point(1.0, float(i), 1.0, r)) for i, r in enumerate(rows)]

    def no_binding(self):
        raise RuntimeError("this onnxruntime cannot bind pointers")

    monkeypatch.setattr(ort.InferenceSession, "io_binding", no_binding)
    plain = _solution(gru_pack.folder)
    assert plain.run_binding is None and plain.bindings is None
    got = [plain.predict(Point(1.0, float(i), 1.0, r)) for i, r in enumerate(rows)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    with pytest.raises(ValueError, match="call_path 'iobinding-public'"):
        _solution(gru_pack.folder, "iobinding-public")


def test_a_sequence_id_that_starts_over_gets_fresh_state(gru_pack):
    model = _solution(gru_pack.folder)
    rows = np.random.default_rng(2).standard_normal((10, 32))
    first = [model.predict(Point(3.0, float(i), 1.0, r)) for i, r in enumerate(rows)]
    again = [model.predict(Point(3.0, float(i), 1.0, r)) for i, r in enumerate(rows)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))


def test_a_step_fed_again_starts_the_sequence_over(gru_pack):
    """A step not after the id's last one starts a new sequence, the same step included (two
    one-row sequences of one id): in a row, after another id, and in the batch protocol."""
    rows = np.random.default_rng(4).standard_normal((2, 32))
    fresh = [model_on(gru_pack, rows[[i]])[0] for i in range(2)]
    model = _solution(gru_pack.folder)
    model.predict(Point(7, 0, True, rows[0]))
    np.testing.assert_array_equal(model.predict(Point(7, 0, True, rows[1])), fresh[1])
    model.predict(Point(8, 0, True, rows[0]))
    np.testing.assert_array_equal(model.predict(Point(7, 0, True, rows[0])), fresh[0])
    predictor = _solution_module(gru_pack.folder).BatchPredictor()
    predictor.predict_arrays([7], rows[:1], steps=[0])
    np.testing.assert_array_equal(predictor.predict_arrays([7], rows[1:], steps=[0])[0],
                                  fresh[1])


def test_nan_and_none_ids_are_one_sequence_each_and_odd_values_are_nan(gru_pack):
    rows = np.random.default_rng(5).standard_normal((8, 32))
    reference = _solution(gru_pack.folder)
    want = [reference.predict(Point(1, i, True, r)) for i, r in enumerate(rows)]
    import pandas as pd

    # NaN != NaN: each row used to start over; pd.NA's comparisons are NA, which raised
    for seq_ix in (float("nan"), None, pd.NA, np.float32("nan")):
        model = _solution(gru_pack.folder)
        got = [model.predict(Point(seq_ix, i, True, r)) for i, r in enumerate(rows)]
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
        assert not model.saved  # nothing parked: one sequence all along
    model = _solution(gru_pack.folder)  # between other ids, and starting over
    ids, steps = [7, pd.NA, pd.NA, 7, pd.NA], [0, 0, 1, 1, 0]
    got = [model.predict(Point(i, s, True, rows[0])) for i, s in zip(ids, steps, strict=True)]
    np.testing.assert_array_equal(got[1], want[0])  # a new sequence
    np.testing.assert_array_equal(got[2], model_on(gru_pack, rows[[0, 0]])[1])
    np.testing.assert_array_equal(got[4], want[0])  # step 0 again: starts over
    # pd.NA (pandas' nullable dtypes) in a row is NaN, which the guard replaces

    model = _solution(gru_pack.folder)
    odd = rows[0].astype(object)
    odd[3] = pd.NA
    out = model.predict(Point(1, 0, True, odd))
    assert out is not None and np.isfinite(out).all()
    with pytest.raises(ValueError, match="a row of 31 values; the model takes 32"):
        model.predict(Point(1, 1, True, odd[1:]))
    np.testing.assert_array_equal(model.predict(Point(2, 0, True, odd[None])), out)  # (1, F)
    for short in ([5.0], np.zeros(1)):  # one value broadcast to every column, before
        with pytest.raises(ValueError, match="a row of 1 values; the model takes 32"):
            model.predict(Point(3, 0, True, short))
    # not rows at all: named as such ("a row of 1 values" for a dict or text of 32 items)
    for thing, name in ((0.5, "float"), (None, "NoneType"), ("x" * 32, "str"),
                        (dict.fromkeys(range(32), 1.0), "dict"), (np.float64(1.0), "float64")):
        with pytest.raises(ValueError, match=f"a row is a sequence of 32 numbers, got a {name}$"):
            model.predict(Point(3, 0, True, thing))


def test_an_undecidable_need_flag_predicts_and_leaves_the_sequence_going(gru_pack):
    """A pd.NA flag raised at `if not need` after the graph had run and the step was recorded:
    the row sent again was a step back, the sequence started over (0.05 off the reference).
    It is now answered with a prediction: None where one is needed fails the scorer."""
    import pandas as pd

    rows = np.random.default_rng(6).standard_normal((6, 32))
    want = model_on(gru_pack, rows)
    model = _solution(gru_pack.folder)
    got = [model.predict(Point(1, i, pd.NA if i == 3 else True, r)) for i, r in enumerate(rows)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    assert model.predict(Point(1, 6, np.bool_(False), rows[0])) is None


def test_a_refused_row_leaves_the_sequence_as_it_was(gru_pack):
    """predict switched sequence and recorded the step before it copied the row: a row it
    refused (a wrong length), sent again fixed, was step <= step, and the sequence started
    over; a returning id's parked state was lost with it."""
    rows = np.random.default_rng(4).standard_normal((12, 32))
    want = model_on(gru_pack, rows)
    model = _solution(gru_pack.folder)
    got = [model.predict(Point(1, i, True, r)) for i, r in enumerate(rows[:6])]
    with pytest.raises(ValueError, match="a row of 31 values"):
        model.predict(Point(1, 6, True, rows[6][:31]))
    got += [model.predict(Point(1, i, True, rows[i])) for i in range(6, 12)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
    # a returning id's first row refused: its parked state stays parked
    model = _solution(gru_pack.folder)
    for i in range(6):
        model.predict(Point(1, i, True, rows[i]))
    model.predict(Point(2, 0, True, rows[0]))
    with pytest.raises(ValueError, match="a row of 31 values"):
        model.predict(Point(1, 6, True, rows[6][:31]))
    np.testing.assert_array_equal(model.predict(Point(1, 6, True, rows[6])), want[6])


def test_a_one_row_frame_is_a_row_not_its_first_column(gru_pack):
    """A (1, F) pandas frame: row[0] is its column 0 (a label lookup), which was broadcast
    to every feature with default labels and raised KeyError with named ones."""
    import pandas as pd

    rows = np.random.default_rng(5).standard_normal((1, 32))
    want = model_on(gru_pack, rows)[0]
    for frame in (pd.DataFrame(rows), pd.DataFrame(rows, columns=[f"c{i}" for i in range(32)])):
        got = _solution(gru_pack.folder).predict(Point(1, 0, True, frame))
        np.testing.assert_array_equal(got, want)


def test_the_parked_states_count_their_python_objects(gru_pack):
    """MAX_SAVED_BYTES bounds what the parked states take in memory, their arrays' headers,
    tuples, lists and dict nodes included (3.7x the floats for a small GRU before)."""
    import tracemalloc

    model = _solution(gru_pack.folder)
    per_entry = type(model).__init__.__globals__["MAX_SAVED_BYTES"] / model.max_saved
    model.max_saved = parked = min(model.max_saved, 20_000)  # the same per entry, sooner
    row = np.zeros(32)
    tracemalloc.start()
    try:
        for k in range(parked + 5):
            model.predict(Point(k, 0, False, row))
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(model.saved) == parked
    assert used <= parked * per_entry, (used / parked, per_entry)


def test_nan_steps_continue_a_sequence_interleaved_or_not(gru_pack):
    """A NaN step (unknown) continues its id's sequence whether its rows come in a row or
    between other ids' (interleaved, it reset at every switch: a 0.26 difference)."""
    rows = np.random.default_rng(6).standard_normal((12, 32))
    model = _solution(gru_pack.folder)
    contiguous = [model.predict(Point(1, float("nan"), True, r)) for r in rows]
    model = _solution(gru_pack.folder)
    interleaved = []
    for r in rows:
        interleaved.append(model.predict(Point(1, float("nan"), True, r)))
        model.predict(Point(2, float("nan"), True, r))
    np.testing.assert_array_equal(np.stack(interleaved), np.stack(contiguous))
    np.testing.assert_array_equal(np.stack(contiguous), np.stack(model_on(gru_pack, rows)))


def test_text_steps_are_compared_as_numbers(gru_pack):
    """Steps given as text were compared as text: "10" <= "9" started the sequence over at
    step 10 (a 0.14 difference, no warning). They count as their numbers, in predict (fed in
    a row, interleaved and parked) and in BatchPredictor; a text step that is no number is
    unknown and continues, as a NaN step does."""
    rows = np.random.default_rng(8).standard_normal((14, 32))
    want = np.stack(model_on(gru_pack, rows))
    for as_text in (str, lambda i: str(i).encode(), lambda i: f"{i}.0",
                    lambda i: str(1_700_000_000_000_000_000 + i)):  # past float's 2**53
        model = _solution(gru_pack.folder)
        got = [model.predict(Point(1, as_text(i), True, r)) for i, r in enumerate(rows)]
        np.testing.assert_array_equal(np.stack(got), want)
        model = _solution(gru_pack.folder)
        got = []
        for i, r in enumerate(rows):
            got.append(model.predict(Point(1, as_text(i), True, r)))
            model.predict(Point(2, i, True, r))
        np.testing.assert_array_equal(np.stack(got), want)
    model = _solution(gru_pack.folder)  # a text step that starts over, and one that is no number
    for i, r in enumerate(rows[:5]):
        model.predict(Point(1, str(i + 95), True, r))
    np.testing.assert_array_equal(model.predict(Point(1, "0", True, rows[0])), want[0])
    np.testing.assert_array_equal(model.predict(Point(1, "n/a", True, rows[1])), want[1])
    batch = _solution_module(gru_pack.folder).BatchPredictor()
    got = [batch.predict_arrays([1], r[None], [str(i)])[0] for i, r in enumerate(rows)]
    np.testing.assert_allclose(np.stack(got), want, atol=1e-6)


def test_odd_ids_steps_and_values_of_a_review(gru_pack):
    """A missing step given as None or pd.NA raised TypeError (a NaN step continues its
    sequence); a NaT id fed row after row swapped in a parked state at every row; a numpy
    scalar id after a tuple id raised ValueError (their comparison is an array); an int past
    float's range in a row raised OverflowError."""
    import pandas as pd

    rows = np.random.default_rng(7).standard_normal((6, 32))
    want = np.stack(model_on(gru_pack, rows))
    for missing in (None, pd.NA):
        model = _solution(gru_pack.folder)
        got = [model.predict(Point(1, 0 if i == 0 else missing, True, r))
               for i, r in enumerate(rows)]
        np.testing.assert_array_equal(np.stack(got), want)
        model = _solution(gru_pack.folder)  # interleaved: parked and resumed
        got = []
        for i, r in enumerate(rows):
            got.append(model.predict(Point(1, 0 if i == 0 else missing, True, r)))
            model.predict(Point(2, i, True, r))
        np.testing.assert_array_equal(np.stack(got), want)
    for nat in (pd.NaT, np.datetime64("NaT")):
        model = _solution(gru_pack.folder)
        got = [model.predict(Point(nat, i, True, r)) for i, r in enumerate(rows)]
        np.testing.assert_array_equal(np.stack(got), want)
        assert not model.saved
    model = _solution(gru_pack.folder)
    first = model.predict(Point((1, 2), 0, True, rows[0]))
    np.testing.assert_array_equal(model.predict(Point(np.int64(3), 0, True, rows[0])), first)
    np.testing.assert_array_equal(model.predict(Point((1, 2), 1, True, rows[1])), want[1])
    huge = rows[0].tolist()
    huge[4] = 10**400
    inf = rows[0].copy()
    inf[4] = np.inf
    for given in (huge, np.array([huge], dtype=object)):  # as a list, and as a (1, F) row
        np.testing.assert_array_equal(
            _solution(gru_pack.folder).predict(Point(1, 0, True, given)),
            _solution(gru_pack.folder).predict(Point(1, 0, True, inf)))


def test_parity_of_a_file_with_an_integer_feature_column_and_big_ids(workspace, gru_pack,
                                                                       tmp_path):
    """An integer feature column: the hostile rows' NaN and outliers were cast to int64 for the
    package (NaN -> -2**63, 12.7 -> 12) and not for the step path, so a correct package failed
    'NaN/inf rows'. Ids past 1e6 were named as 2.0231e+07, which names no sequence."""
    data = tmp_path / "int_feature.parquet"
    pl.read_parquet(_valid(workspace)).with_columns(
        (pl.col("v0") * 3).round().cast(pl.Int64),
        (pl.col("p0") * 3).round().cast(pl.Int64),  # the first feature too (r281)
        pl.col("seq_ix").cast(pl.Int64) + 20_231_000).write_parquet(data)
    intact = _copy_pack(gru_pack, tmp_path / "intact")  # parity records into its manifest
    report = run_parity(intact, data, seqs=SEQS)
    assert report.ok, report.format()
    broken = _copy_pack(gru_pack, tmp_path)
    _edit_solution(broken, "return self.y_row.copy()", "return self.y_row * 1.01")
    failed = run_parity(broken, data, seqs=SEQS)
    detail = next(c.detail for c in failed.checks if c.name == "paths agree")
    assert re.search(r"first at seq 202310\d\d, step \d+;", detail), detail



def test_parity_says_why_its_scores_are_nan_on_nan_targets(workspace, gru_pack, tmp_path):
    """Review r275: NaN targets on scored rows gave NaN scores beside "parity OK" and no word
    of why (kit score warns of them)."""
    data = tmp_path / "nan_target.parquet"
    frame = pl.read_parquet(_valid(workspace))
    frame.with_columns(pl.when(pl.col("need_prediction") & (pl.int_range(pl.len()) % 7 == 0))
                       .then(float("nan")).otherwise(pl.col("t0")).alias("t0")
                       ).write_parquet(data)
    report = run_parity(gru_pack.folder, data, seqs=SEQS, record=False)
    assert report.ok and math.isnan(report.metrics["package"]["per_target"]["t0"])
    assert [line for line in report.format().splitlines() if line.startswith("note:")] == [
        f"note: {report.notes[0]}"]
    assert re.fullmatch(rf"[\d,]+ target value\(s\) of {re.escape(str(data))} are NaN or inf "
                        r"on rows that need a prediction: .*parity compares predictions, which "
                        r"it does not touch", report.notes[0]), report.notes
    assert report.to_dict()["notes"] == report.notes  # --json and the manifest keep it
    assert not run_parity(gru_pack.folder, _valid(workspace), seqs=SEQS, record=False).notes


def test_parity_without_data_names_a_torn_or_damaged_zip_as_with_it(gru_pack, tmp_path):
    """Without --data, a zip whose manifest is torn, or a file that is no zip, was said to
    have "no manifest.json" (its manifest was read with every error as None) (r281)."""
    from kit.parity import default_data

    torn = tmp_path / "torn.zip"
    with zipfile.ZipFile(torn, "w") as archive:
        for name in ("solution.py", "model.onnx"):
            archive.write(gru_pack.folder / name, name)
        text = (gru_pack.folder / "manifest.json").read_text()
        archive.writestr("manifest.json", text[:len(text) // 2])
    with pytest.raises(PackError, match=r"torn\.zip/manifest\.json: not valid JSON"):
        default_data(torn)
    junk = tmp_path / "junk.zip"
    junk.write_text("junk")
    with pytest.raises(SubmissionError, match=r"junk\.zip: neither a folder nor a \.zip"):
        default_data(junk)

def test_parity_types_altered_rows_as_pandas_reads_columns_that_hold_them():
    """A bool or unsigned feature column given the hostile rows' NaN, 0.5 or -3 kept its type
    (NaN -> True, -3 -> 253 for the package, not for the step path); integer columns too
    before. Columns whose values they hold keep their type."""
    from kit.parity import Package
    from kit.scoring.runner import pandas_rows

    dtypes = ["int64", "int64", "bool", "float32", "bool", "uint8", "int64", "bool", "int16"]
    package = Package(Path("."), load_spec("predictorium"), dtypes)
    values = np.array([[0, 0, 1, 0.5, np.nan, -3.0, 7.0, 1.0, 2.0],
                       [0, 1, 0, 0.25, 1.0, 4.0, 12.7, 0.0, 40000.0]])
    typed = package.dtypes_of(values)
    assert typed == ["int64", "int64", "bool", "float32", "float64", "float64", "float64",
                     "bool", "float64"]
    rows = pandas_rows(values, typed)
    np.testing.assert_array_equal(np.asarray(rows[:, 3:7], dtype=float), values[:, 3:7])
    assert package.dtypes_of(values[:, :4]) == dtypes  # what the rows do not hold: as given


def model_on(gru_pack, rows) -> list:
    """A fresh runtime's predictions for rows as one sequence."""
    model = _solution(gru_pack.folder)
    return [model.predict(Point(1, i, True, r)) for i, r in enumerate(rows)]


# --- broken packages fail parity -----------------------------------------------------------


def _copy_pack(gru_pack, tmp_path) -> Path:

    folder = tmp_path / "broken"
    shutil.copytree(gru_pack.folder, folder)
    return folder


def test_kit_score_says_when_a_package_is_not_the_one_kit_pack_wrote(gru_pack, tmp_path,
                                                                    workspace):
    """kit notebook refuses a package whose files changed since pack and parity fails it;
    kit score still scores it (an experiment may be the point) but says so."""
    data = _valid(workspace)
    spec = submission_spec(gru_pack.folder)
    intact = score_submission(gru_pack.folder, data, spec, seqs=2, progress=False)
    assert not any("not the package kit pack wrote" in w for w in intact.warnings)
    folder = _copy_pack(gru_pack, tmp_path)
    onnx_model = onnx.load(str(folder / "model.onnx"))
    onnx_model.doc_string = "edited by hand"
    onnx.save(onnx_model, str(folder / "model.onnx"))
    with pytest.warns(RuntimeWarning, match="model.onnx changed since pack"):
        changed = score_submission(folder, data, spec, seqs=2, progress=False)
    assert any("model.onnx changed since pack (sha256 differs from the manifest): this is not "
               "the package kit pack wrote" in w for w in changed.warnings)
    assert changed.score == pytest.approx(intact.score)
    # the manifest's file list deleted by hand: nothing vouches for the files (r263)
    folder = _copy_pack(gru_pack, tmp_path / "unlisted")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(RuntimeWarning, match="model.onnx has no sha256 in the manifest"):
        score_submission(folder, data, spec, seqs=2, progress=False)
    # a spec by name or path, or None (the manifest's), as kit score --spec takes it (a
    # name raised AttributeError)
    for named in (None, str(workspace / "tiny-lob.toml"), workspace / "tiny-lob.toml"):
        scored = score_submission(gru_pack.folder, data, named, seqs=2, progress=False)
        assert scored.score == intact.score


# the runtime's two resets, as solution.py spells them: an id fed again at once whose step does
# not follow, and a parked id's state resumed only when its step follows
SAME_ID_STARTS_OVER = (
    "        else:\n"
    "            try:\n"
    "                if step <= self.step:  # the id starts over: a new sequence\n"
    "                    self._reset_live()\n"
    "            except TypeError:  # a missing step (None, pd.NA) continues, as a NaN one does;\n"
    "                step = step_value(step)  # text vs the number kept: as a number\n"
    "                if not follows(step, self.step):\n"
    "                    self._reset_live()\n")
PARKED_CONTINUES = "if parked is not None and follows(step, parked[0]):"


def _edit_solution(folder: Path, old: str, new: str) -> None:
    path = folder / "solution.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    write_manifest(folder, read_manifest(folder))  # a consistent package: only parity can tell


def _failed(report) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


def test_parity_checks_the_packed_files_whatever_else_sits_in_the_folder(workspace, gru_pack,
                                                                          tmp_path):
    """A dotfile or a link beside the packed files (a virtualenv, an editor's folder) is no part
    of the package: parity copies what it checks and leaves them out, not refuse the folder."""
    folder = _copy_pack(gru_pack, tmp_path)
    (folder / ".notes").write_text("mine")
    (folder / ".venv").symlink_to(tmp_path)
    (folder / "self").symlink_to(".")  # followed, it recursed until ELOOP
    (folder / "venv").symlink_to(tmp_path)  # followed, it copied the whole target
    assert run_parity(folder, _valid(workspace), seqs=SEQS).ok


def test_parity_finds_a_relative_data_path_in_the_package_s_project(tmp_path, monkeypatch):
    """The run's config names its data relative to the project: parity without --data from a
    subfolder (`just parity` runs where it is called) said the file did not exist."""
    from kit.parity import in_project

    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "valid.parquet").write_bytes(b"x")
    (project / "submissions" / "pk").mkdir(parents=True)
    (project / "runs").mkdir()
    monkeypatch.chdir(project / "runs")
    relative = Path("data/valid.parquet")
    for package in (project / "submissions" / "pk", project / "submissions" / "pk.zip"):
        assert in_project(relative, package) == project / relative
    monkeypatch.chdir(project)  # found from here first, as before
    assert in_project(relative, project / "submissions" / "pk") == relative
    assert in_project(Path("data/other.parquet"), project / "submissions" / "pk") == Path(
        "data/other.parquet")  # nowhere: left as it is, for the error to name


def test_a_package_without_the_normaliser_fails_parity(workspace, runs, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    member = load_member(runs["gru"])
    without = StreamChain(member.feature_set.stream_module(), member.model).eval()
    export_step_graph(without, 32, folder / "model.onnx")
    finalize_graph(folder / "model.onnx", {})
    write_manifest(folder, read_manifest(folder))
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert not report.ok and "paths agree" in _failed(report)
    assert "seq" in next(c.detail for c in report.checks if c.name == "paths agree")


def test_the_shuffled_check_feeds_again_the_sequences_with_most_scored_rows():
    """The re-fed sequences were the permutation's first and last: on ragged data one with a
    single scored row, which shows no resumed state (a runtime resuming a restarted id's parked
    state passed parity)."""
    from kit.parity import Rows, shuffled_order

    lengths = [3, 40, 2, 30, 5]
    ids = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    values = np.column_stack([ids, pos, pos >= 1, np.zeros(len(ids))]).astype(np.float64)
    rows = Rows.of(values)
    for seed in range(5):
        order = shuffled_order(rows, np.random.default_rng(seed))
        fed = [int(ids[i]) for i in order]
        assert fed[:40] == [1] * 40 and fed[-40:] == [1] * 40  # comes back after the others
        assert fed[-100:-40] == [3] * 60  # fed twice in a row: the same id starts over
        assert sorted(set(fed)) == [0, 1, 2, 3, 4] and len(fed) == sum(lengths) + 70


def test_a_runtime_that_never_resets_state_fails_parity(workspace, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "        if moved:\n            step = self._switch(seq_ix, step)\n"
                   + SAME_ID_STARTS_OVER, "")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert {"paths agree", "order: shuffled sequences", "order: interleaved rows"} <= \
        _failed(report)


def test_a_runtime_that_skips_warmup_rows_fails_parity(workspace, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "        seq_ix, step = data_point.seq_ix, data_point.step_in_seq\n",
                   "        if not data_point.need_prediction:\n            return None\n"
                   "        seq_ix, step = data_point.seq_ix, data_point.step_in_seq\n")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert {"paths agree", "warm-up processed"} <= _failed(report)


def test_a_runtime_that_returns_its_reused_buffer_fails_parity(workspace, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "return self.y_row.copy()", "return self.y_row")
    assert "paths agree" in _failed(run_parity(folder, _valid(workspace), seqs=SEQS))


def test_a_runtime_that_keeps_the_guards_state_across_sequences_fails_parity(
        workspace, gru_pack, tmp_path):
    """The guard's state (each column's last finite value) is the graph's first state tensor:
    a runtime resetting only the model's would pass a check whose NaN fades in the warm-up."""
    folder = _copy_pack(gru_pack, tmp_path)
    reset = "        for buffer in self.buffers[self.live]{}:\n            buffer.fill"
    _edit_solution(folder, reset.format(""), reset.format("[1:]"))
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    # (the order checks feed the same rows: the carried value shows there too)
    assert _failed(report) == {"NaN/inf rows", "order: shuffled sequences",
                               "order: interleaved rows"}
    assert "seq" in next(c.detail for c in report.checks if c.name == "NaN/inf rows")


def test_a_runtime_that_resets_its_state_on_an_all_nan_row_fails_parity(workspace, gru_pack,
                                                                         tmp_path):
    """The NaN/inf check's rows hold a whole-NaN row mid-sequence: without it a runtime that
    takes such a row for a new sequence (zero state, the guard's fill lost) passed parity."""
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "        self.step = step\n",
                   "        self.step = step\n"
                   "        if np.isnan(self.x_row).all():\n            self._reset_live()\n")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    # the clean rows have no such row, and the order checks compare the package with itself
    assert _failed(report) == {"NaN/inf rows"}
    assert "scored row(s) differ" in next(c.detail for c in report.checks
                                          if c.name == "NaN/inf rows")


def test_the_hostile_rows_reach_past_the_warmup_and_the_clip():
    """What makes the two tests around this one fail on a long warm-up (Predictorium's 99 rows)
    as well: a NaN run in one column past each sequence's first scored row (a guard state
    carried over from the previous sequence reaches scored rows) and values far beyond any
    normaliser clip."""
    from kit.competition import load_spec
    from kit.parity import LEADING_NAN_PAST_WARMUP, Rows, corrupted, first_scored
    from tests.frames import make_frame

    spec = load_spec("predictorium")
    frame = make_frame(spec, lengths=[150, 120, 200], seed=2)
    values = frame.select(spec.id_col, spec.step_col, pl.col(spec.need_col).cast(pl.Float64),
                          *spec.features).to_numpy().astype(np.float64)
    rows = Rows.of(values)
    dirty = corrupted(rows, np.random.default_rng(0)).values[:, 3:]
    first = first_scored(rows)
    for s in range(3):
        column = dirty[rows.seq == s, 1]
        assert np.isnan(column[:first[s] + LEADING_NAN_PAST_WARMUP]).all()
    clean = rows.values[:, 3:]
    z = np.abs(dirty - clean.mean(axis=0)) / clean.std(axis=0)
    assert (np.nan_to_num(z, posinf=0) > 40).mean() > 0.005  # about 1% of the values


def test_a_normaliser_without_its_clip_fails_parity(workspace, runs, gru_pack, tmp_path):
    import dataclasses

    folder = _copy_pack(gru_pack, tmp_path)
    member = load_member(runs["gru"])
    unclipped = dataclasses.replace(member.normaliser, clip=None)
    chain = StreamChain(member.feature_set.stream_module(), unclipped.stream_module(),
                        member.model.step_form()).eval()
    export_step_graph(chain, 32, folder / "model.onnx")
    finalize_graph(folder / "model.onnx", {})
    write_manifest(folder, read_manifest(folder))
    assert "NaN/inf rows" in _failed(run_parity(folder, _valid(workspace), seqs=SEQS))


def test_nan_predictions_fail_the_path_checks_not_the_order_checks(workspace, gru_pack,
                                                                    tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "return self.y_row.copy()",
                   "return self.y_row.copy() if step != 50 else np.full_like(self.y_row, np.nan)")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    failed = _failed(report)
    assert "paths agree" in failed and not failed & {"order: shuffled sequences",
                                                     "order: interleaved rows"}
    # --json is strict JSON: the NaN score and infinite difference are null
    out = run_cli("parity", folder, "--data", _valid(workspace), "--seqs", "2", "--json",
                  expect=1).stdout
    doc = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json"))
    assert doc["max_abs"] is None and doc["ok"] is False
    json.loads((folder / "manifest.json").read_text(),
               parse_constant=lambda name: pytest.fail(f"{name} in manifest.json"))


def test_large_predictions_are_held_to_a_relative_tolerance(workspace, runs, tmp_path):
    """A correct package predicting in the thousands rounds beyond atol 1e-5 in float32."""
    import tomli_w

    doc = tmp_path / "big.toml"
    doc.write_text(tomli_w.dumps({
        "members": [{"name": "gru", "runs": [str(runs["gru"])], "weights": [1.0, 1.0]}],
        "postprocess": {"smoothing": [0.0, 0.0], "scale": [1e4, 1e4]}}))
    folder = pack_ensemble(doc, "big", tmp_path).folder
    assert run_parity(folder, _valid(workspace), seqs=2).ok
    strict = run_parity(folder, _valid(workspace), seqs=2, rtol=0.0, record=False)
    assert "paths agree" in _failed(strict)  # what the relative term is for
    # and a real difference of that size is still caught: 1e-3 on predictions ~1e3
    _edit_solution(folder, "return self.y_row.copy()", "return self.y_row * 1.00001")
    assert "paths agree" in _failed(run_parity(folder, _valid(workspace), seqs=2))


def test_a_report_is_not_recorded_into_a_package_replaced_meanwhile(workspace, runs, tmp_path):
    from kit.parity import record_report

    first = pack_run(runs["gru"], "same", tmp_path)
    tested = read_manifest(first.folder)
    report = run_parity(first.folder, _valid(workspace), seqs=2, record=False)
    pack_run(runs["lstm"], "same", tmp_path)  # re-packed while parity ran
    before = (first.folder / "manifest.json").read_text()
    assert record_report(first.folder, tested, report) is False
    assert (first.folder / "manifest.json").read_text() == before
    record_report(first.folder, read_manifest(first.folder), report)  # unchanged: recorded
    assert read_manifest(first.folder)["parity"] == report.to_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(members=[]), "members is empty"),
    (lambda m: m["members"][0].pop("checkpoint"), r"members\[0\] needs 'checkpoint'"),
    (lambda m: m["members"][0].update(weights=[1.0]), r"members\[0\] needs .* 2 finite 'weights'"),
    (lambda m: m["members"][0].update(weights=["a", 1.0]), r"members\[0\] needs .* 2 finite"),
    (lambda m: m.update(postprocess="x"), r"\[postprocess\] must be a table"),
    (lambda m: m.update(postprocess={"scale": [1.0]}), "postprocess.scale: 2 finite numbers"),
    (lambda m: m["spec"]["features"].pop(), "inputs lists 32 columns; the spec has 31"),
    # the batch runtime reads its columns and names its outputs by these lists
    (lambda m: m["inputs"].reverse(), r"inputs\[0\] is 'dv3' where the spec's column is 'p0'"),
    (lambda m: m["outputs"].reverse(), r"outputs\[0\] is 't1' where the spec's column is 't0' "
                                       r"\(a hand-edited manifest"),
])
def test_a_hand_edited_manifest_is_named(workspace, gru_pack, tmp_path, edit, message):
    folder = _copy_pack(gru_pack, tmp_path)
    manifest = read_manifest(folder)
    edit(manifest)
    write_manifest(folder, manifest)
    with pytest.raises(KitError, match=message):
        run_parity(folder, _valid(workspace), seqs=2)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(members=[]), "members is empty"),
    (lambda m: m.update(members=["x"]), "members must be a list of tables"),
    (lambda m: m.pop("members"), "not a kit pack manifest (no valid ['members'])"),
    (lambda m: m["members"][0].update(config="x"), "names no validation file; pass --data"),
    (lambda m: m["members"][0]["config"].update(data="x"), "names no validation file"),
])
def test_a_hand_edited_manifest_is_named_without_data_too(gru_pack, tmp_path, edit, message):
    """Without --data, parity reads the validation file from the manifest's first member: an
    IndexError or AttributeError traceback there for what --data named in one line."""
    folder = _copy_pack(gru_pack, tmp_path)
    manifest = read_manifest(folder)
    edit(manifest)
    write_manifest(folder, manifest)
    out = run_cli("parity", folder, "--seqs", 2, expect=2).output
    assert message in out and "Traceback" not in out


def test_a_changed_file_fails_the_manifest_check(workspace, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    with open(folder / "solution.py", "a") as fh:
        fh.write("\n# edited by hand\n")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert _failed(report) == {"manifest"}
    assert "solution.py changed" in next(c.detail for c in report.checks if not c.ok)
    assert read_manifest(folder)["parity"] is None  # a failing package's manifest is untouched


def test_one_sequence_still_proves_state_is_kept_per_sequence(workspace, gru_pack, tmp_path):
    # a runtime that never parks a sequence's state: with one sequence the order checks fed
    # it alone; it is now fed again under a second id
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, PARKED_CONTINUES, "if False:")
    failed = _failed(run_parity(folder, _valid(workspace), seqs=1))
    assert "order: interleaved rows" in failed


def test_a_sample_with_one_scored_sequence_still_proves_state_is_kept(workspace, gru_pack,
                                                                       tmp_path):
    """Two sequences sampled, one of them unscored (a 1-row one of a ragged competition): the
    interleaved check compared one sequence's predictions and passed a runtime that keeps no
    state per sequence. The scored one is now fed again under an id of its own."""
    from kit.competition import spec_from_dict
    from kit.parity import Package, Rows, Tolerance, check_order, load_rows

    def order_checks(folder):
        spec = spec_from_dict(read_manifest(folder)["spec"])
        loaded = load_rows(_valid(workspace), spec, 1)
        short = loaded.values[:1].copy()
        short[:, 0], short[:, 2] = -5, 0  # another id, not scored
        rows = Rows.of(np.concatenate([short, loaded.values]))
        package = Package(folder, spec, loaded.column_dtypes)
        checks = check_order(package, rows, package.run(rows), Tolerance(1e-5, 1e-6),
                             np.random.default_rng(0))
        return {c.name for c in checks if not c.ok}

    folder = _copy_pack(gru_pack, tmp_path)
    assert order_checks(folder) == set()
    _edit_solution(folder, PARKED_CONTINUES, "if False:")
    assert order_checks(folder) == {"order: interleaved rows"}


def test_an_inf_prediction_is_not_blamed_on_the_order(workspace, gru_pack, tmp_path):
    """inf - inf is NaN: the same inf in every order failed both order checks, which then
    blamed the state handling; the path and NaN/inf checks name it."""
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "return self.y_row.copy()",
                   "return self.y_row.copy() if step != 30 else np.full_like(self.y_row, np.inf)")
    failed = _failed(run_parity(folder, _valid(workspace), seqs=SEQS))
    assert failed and not {name for name in failed if name.startswith("order")}


def test_a_package_that_hangs_on_the_checks_rows_fails_them_in_time(workspace, gru_pack,
                                                                      tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "        if self.run_binding is not None:\n",
                   "        while np.isnan(self.x_row).all():  # hangs on an all-NaN row\n"
                   "            pass\n        if self.run_binding is not None:\n")
    report = run_parity(folder, _valid(workspace), seqs=2, timeout_s=8)  # (the hang's wait)
    assert "NaN/inf rows" in _failed(report)
    assert "ran past 8 s" in next(c.detail for c in report.checks if c.name == "NaN/inf rows")
    with pytest.raises(PackError, match="--timeout must be a number of seconds > 0, got 0"):
        run_parity(folder, _valid(workspace), seqs=2, timeout_s=0)
    # the default limit grows with the first replay's start-up, not only its rows
    from kit.parity import Package

    package = Package(folder, read_manifest(folder), [])
    package.us_per_row, package.init_s = 10.0, 62.0
    assert package.replay_timeout(100) == pytest.approx(60 + 20 * (62 + 100 * 10e-6))


def test_a_runtime_that_ignores_an_id_starting_over_fails_parity(workspace, gru_pack, tmp_path):
    # only the branch for the same id fed again right away is gone: parked states still reset
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, SAME_ID_STARTS_OVER, "")
    assert "order: shuffled sequences" in _failed(run_parity(folder, _valid(workspace), seqs=SEQS))


@pytest.mark.parametrize("edit", [
    (SAME_ID_STARTS_OVER, ""),
    (PARKED_CONTINUES, "if parked is not None:"),
], ids=["same id again", "parked id again"])
def test_a_guard_state_carried_into_a_sequence_that_starts_over_fails_parity(
        workspace, tmp_path, edit):
    """A model that forgets its start (here none at all: raw features and a GRU whose state
    never reaches its output, as a trained one forgets within Predictorium's 99 warm-up rows)
    shows a runtime that keeps an id's state when it starts over only through the guard's
    state, each column's last finite value: the order checks feed the rows with their leading
    NaN run."""
    def memoryless(model):
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0[8:16] = -30.0  # z = 0: h = n, made anew from each row

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    raw_gru_run(tmp_path / "run", spec, edit=memoryless)
    folder = pack_run(tmp_path / "run", "memoryless", tmp_path / "submissions").folder
    assert run_parity(folder, _valid(workspace), seqs=SEQS).ok
    _edit_solution(folder, *edit)
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert _failed(report) == {"order: shuffled sequences"}
    assert "seq" in next(c.detail for c in report.checks if not c.ok)


def test_a_raw_feature_pack_leaves_the_guard_clip_to_the_normaliser(workspace, tmp_path):
    """Raw columns go from the guard straight to the normaliser, whose clip bounds them far
    inside the guard's +-1e16: the guard's clip is one graph node (about 0.35 us a row) that
    changes no output, so the pack leaves it out. Rows past 1e16, and NaN/inf rows filled
    with them, give what the clipped chain gives, bit for bit in torch and within parity's
    tolerance in the package."""
    import torch

    from kit.export.frozen import stream_steps

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    run = raw_gru_run(tmp_path / "run", spec)
    packed = pack_run(run, "raw", tmp_path / "submissions")
    ops = [n.op_type for n in onnx.load(str(packed.folder / "model.onnx")).graph.node]
    assert ops.count("Clip") == 1  # the normaliser's

    member = load_member(run)
    unclipped, clipped = member.stream_module(), member.stream_module()
    assert unclipped.stages[0].guard.clip is False
    clipped.stages[0].guard.clip = True
    rows = hostile_rows(len(spec.features))
    x = torch.from_numpy(rows.astype(np.float32))[None]
    want = stream_steps(clipped, x)[0].numpy()
    assert np.isfinite(want).all()
    assert torch.equal(stream_steps(unclipped, x)[0], torch.from_numpy(want))
    # the guard's state does hold the value past LIMIT (the clip is really off)
    _, state = unclipped(x[:, 3:4], unclipped.init_state(1))
    assert float(state[0].max()) == pytest.approx(1e30, rel=1e-6)

    model = _solution(packed.folder)
    got = np.stack([model.predict(Point(1, i, True, r)) for i, r in enumerate(rows)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert run_parity(packed.folder, _valid(workspace), seqs=SEQS).ok


def test_a_checkpoint_with_a_negative_normaliser_scale_is_refused_by_pack(workspace,
                                                                          tmp_path):
    """fit() never writes one; packed, it flipped features and, with the guard's clip left
    to the normaliser, a 1e20 row normalised to -5 where the clipped guard gave -0.1."""
    from kit.features.normaliser import Normaliser

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    width = len(spec.features)
    flipped = Normaliser("standard", 5.0, np.zeros(width, np.float32),
                         np.full(width, -1e17, np.float32))
    run = raw_gru_run(tmp_path / "run", spec, normaliser=flipped)
    out = run_cli("pack", run, "--name", "flipped", "--out", tmp_path / "subs",
                  expect=2).output
    assert "the stored normaliser has a scale that is not a finite number > 0" in out, out
    assert not (tmp_path / "subs/flipped").exists()


def test_the_guard_keeps_its_clip_where_a_normaliser_does_not_bound_the_columns(workspace):
    """The guard's clip goes only where the normaliser makes it change nothing: not without
    the normaliser's clip, not when a normaliser's bound lies past LIMIT / 2 (a column centred
    at 9e15 with scale 1e15: a 1e20 row normalises to 1.0 clipped at 1e16 and to the bound
    5.0 without), not when feature ops read the guard's columns (a lag of 1e30 minus one of
    -1e30 overflows)."""
    import torch

    from kit.export.frozen import StreamChain, spare_guard_clip
    from kit.features.normaliser import Normaliser
    from kit.features.sets import build_feature_set

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    raw = build_feature_set(spec, ["raw"])
    width = len(raw.outputs)
    center, scale = np.zeros(width, np.float32), np.ones(width, np.float32)

    def guard_clip(feature_set, *normalisers) -> bool:
        pipeline = feature_set.stream_module()
        spare_guard_clip(pipeline, list(normalisers))
        return pipeline.guard.clip

    bounded = Normaliser("standard", 5.0, center, scale)
    assert guard_clip(raw, bounded) is False
    assert guard_clip(raw, bounded, Normaliser("standard", None, center, scale)) is True
    assert guard_clip(raw) is True  # no normaliser reads it
    assert guard_clip(build_feature_set(spec, ["raw", "diffs"]), bounded) is True
    far_center = center.copy()
    far_center[0] = 9e15
    far_scale = scale.copy()
    far_scale[0] = 1e15
    far = Normaliser("standard", 5.0, far_center, far_scale)
    assert guard_clip(raw, far) is True
    # a negative scale (refused when loaded from a checkpoint, but not here) keeps it too:
    # (1e16 - 0) / -1e17 is -0.1 where (1e20 - 0) / -1e17 clips to -5
    assert guard_clip(raw, Normaliser("standard", 5.0, center, -1e17 * scale)) is True
    # why: there the clip changes the output
    row = torch.zeros(1, 1, width)
    row[0, 0, 0] = 1e20
    outputs = []
    for clip in (True, False):
        chain = StreamChain(raw.stream_module(), far.stream_module())
        chain.stages[0].guard.clip = clip
        outputs.append(float(chain(row, chain.init_state(1))[0][0, 0, 0]))
    assert outputs == [pytest.approx(1.0), 5.0]


def test_a_torn_manifest_is_named_as_the_packages_own_file(workspace, gru_pack, tmp_path):
    """Parity read its temporary copy's manifest and named that path; without --data it said
    there was no manifest.json at all."""
    folder = _copy_pack(gru_pack, tmp_path)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])
    for extra in (["--data", _valid(workspace)], []):
        out = run_cli("parity", folder, "--seqs", 1, *extra, expect=2).output
        assert f"{folder / 'manifest.json'}: not valid JSON" in out, out
        assert "kit-parity-" not in out


def test_a_report_that_cannot_be_recorded_is_still_given(workspace, gru_pack, tmp_path):
    """A package parity cannot write into (read-only, or here a folder in the way of the
    manifest's temporary file): the checks ran, so their report is given, with a warning,
    instead of an error that threw it away."""
    folder = _copy_pack(gru_pack, tmp_path)
    before = (folder / "manifest.json").read_text()
    (folder / f".manifest.json.tmp-{os.getpid()}").mkdir()  # where the write goes first
    with pytest.warns(UserWarning, match="the report could not be recorded in .*manifest"):
        report = run_parity(folder, _valid(workspace), seqs=1)
    assert report.ok and report.checks
    assert (folder / "manifest.json").read_text() == before


def test_a_manifest_that_stops_listing_a_file_fails_the_manifest_check(workspace, gru_pack,
                                                                         tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    manifest = read_manifest(folder)
    del manifest["files"]["solution.py"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with open(folder / "solution.py", "a") as fh:
        fh.write("\n# edited by hand\n")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert _failed(report) == {"manifest"}
    assert "solution.py has no sha256" in next(c.detail for c in report.checks if not c.ok)
    assert "solution.py" not in read_manifest(folder)["files"]  # not re-signed by parity


def test_a_package_that_raises_fails_the_checks_it_breaks(workspace, gru_pack, tmp_path):
    # predict() raising on NaN/inf rows: only that check fails, the report is complete
    folder = _copy_pack(gru_pack, tmp_path)
    _edit_solution(folder, "        seq_ix, step = data_point.seq_ix, data_point.step_in_seq\n",
                   "        if not np.isfinite(np.asarray(data_point.state, float)).all():\n"
                   "            raise ValueError('NaN in row')\n"
                   "        seq_ix, step = data_point.seq_ix, data_point.step_in_seq\n")
    report = run_parity(folder, _valid(workspace), seqs=SEQS)
    assert _failed(report) == {"NaN/inf rows"}
    assert "NaN in row" in next(c.detail for c in report.checks if not c.ok)
    assert read_manifest(folder)["parity"]["ok"] is False  # recorded, passing or not
    # a model file that does not load: the manifest check and the failed run are both reported
    broken = tmp_path / "garbage"

    shutil.copytree(gru_pack.folder, broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    result = run_cli("parity", broken, "--data", _valid(workspace), "--seqs", "2", expect=1)
    assert "[FAIL] manifest: model.onnx changed" in result.output
    assert "[FAIL] package runs" in result.output and "parity FAILED" in result.output


def test_a_package_name_with_a_dot_gets_its_own_zip(workspace, runs, gru_pack, tmp_path):
    first = pack_run(runs["gru"], "gru", tmp_path)
    before = first.zip_path.read_bytes()
    dotted = pack_run(runs["gru"], "gru.v2", tmp_path)
    assert dotted.zip_path == tmp_path / "gru.v2.zip" and dotted.zip_path.is_file()
    assert first.zip_path.read_bytes() == before


def test_pack_never_deletes_a_folder_that_is_not_a_package(workspace, runs, tmp_path):
    import os

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"mine")
    with pytest.raises(PackError, match="is not a package written by kit pack"):
        pack_run(runs["gru"], "data", tmp_path)
    assert (data / "train.parquet").read_bytes() == b"mine"
    run = shutil.copytree(runs["gru"], tmp_path / "runs" / "r1")  # a run packed onto itself
    out = run_cli("pack", run, "--name", "r1", "--out", tmp_path / "runs", expect=2).output
    assert "choose another --name" in out and (run / "best.pt").is_file()
    out = run_cli("pack", runs["gru"], "--name", "g1.zip", "--out", tmp_path, expect=2).output
    assert "give the name without .zip (--name g1)" in out and not list(tmp_path.glob("g1*"))
    # a package is replaced whole; notes kept in its folder stay there, out of the zip
    first = pack_run(runs["gru"], "p", tmp_path)
    (first.folder / "NOTES.md").write_text("lr 3e-3 was better")
    again = pack_run(runs["lstm"], "p", tmp_path)
    assert (again.folder / "NOTES.md").read_text() == "lr 3e-3 was better"
    assert read_manifest(again.folder)["members"][0]["run"] == str(runs["lstm"])
    assert sorted(zipfile.ZipFile(again.zip_path).namelist()) == sorted(PACK_FILES)
    assert not [p for p in tmp_path.iterdir() if ".packing" in p.name]
    # a killed pack's staging folder goes with the next pack to that name; a live one stays

    dead = dead_pid()
    (tmp_path / f".p.packing-{dead}-abc").mkdir()
    (tmp_path / f".p.packing-{dead}-abc" / "model.onnx").write_bytes(b"half")
    (tmp_path / f".p.packing-{os.getpid()}-xyz").mkdir()
    # another name's, not as pack names them (mkdtemp's 8 characters): kept (r315)
    (tmp_path / f".pq.packing-{dead}-abc").mkdir()
    from kit.export.pack import owner_tag

    here = owner_tag().split(".")[1]
    (tmp_path / f".p.packing-{dead}.{here}-def").mkdir()  # this host's, dead
    import hashlib
    import socket

    before = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # kits < 2026-12-04
    (tmp_path / f".p.packing-{dead}.{before}-jkl").mkdir()  # this host's, an older kit's
    (tmp_path / f".p.packing-{dead}.0badcafe-ghi").mkdir()  # another host's: not ours to judge
    pack_run(runs["gru"], "p", tmp_path)
    assert {p.name for p in tmp_path.iterdir() if ".packing" in p.name} == {
        f".p.packing-{dead}.0badcafe-ghi", f".p.packing-{os.getpid()}-xyz",
        f".pq.packing-{dead}-abc"}


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_manifest_or_ensemble_file_the_disk_cannot_hold_keeps_the_previous(runs, tmp_path):
    """kit parity records its report into manifest.json, kit ensemble select --out rewrites
    its file: written in place, a full disk left them torn (pack then refused the folder)."""
    import errno

    from kit.ensemble import select_ensemble, write_ensemble
    from kit.export.pack import write_manifest
    from tests.test_train import file_size_limit

    folder = pack_run(runs["gru"], "m", tmp_path, budget=False).folder
    before = (folder / "manifest.json").read_text()
    manifest = read_manifest(folder) | {"parity": {"ok": True, "note": "x" * 20_000}}
    doc, path, _ = select_ensemble([runs["gru"]], iters=1, out=tmp_path / "e.toml")
    selected = path.read_text()
    doc["ensemble"]["note"] = "x" * 20_000
    with file_size_limit(4096):
        with pytest.raises(OSError) as raised:
            write_manifest(folder, manifest)
        with pytest.raises(OSError) as raised_too:
            write_ensemble(doc, path)
    assert raised.value.errno == errno.EFBIG and raised.value.filename.endswith("manifest.json")
    assert raised_too.value.filename == str(tmp_path / "e.toml")
    assert (folder / "manifest.json").read_text() == before
    assert path.read_text() == selected
    assert not [p for p in [*tmp_path.iterdir(), *folder.iterdir()] if ".tmp-" in p.name]


def test_a_swap_that_fails_puts_the_old_package_and_your_notes_back(runs, tmp_path,
                                                                     monkeypatch):
    """The old folder is renamed aside whole, not emptied into the staging folder (whose
    cleanup deleted your notes when the swap failed: an undeletable file, a Ctrl-C) nor
    deleted before the new one is in place. A pack killed mid-swap leaves it aside, and the
    next pack keeps your files in it (named) and removes it when it holds only its own."""
    import errno

    from kit.export import pack as pack_module

    first = pack_run(runs["gru"], "s", tmp_path, budget=False)
    (first.folder / "NOTES.md").write_text("mine")
    files = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    zipped = first.zip_path.read_bytes()
    real = os.replace

    def zip_refused(src, dst, *args, **kwargs):
        if str(dst).endswith("s.zip"):
            raise OSError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(pack_module.os, "replace", zip_refused)
    with pytest.raises(OSError, match="Permission denied"):
        pack_run(runs["lstm"], "s", tmp_path, budget=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in first.folder.iterdir()} == files
    assert first.zip_path.read_bytes() == zipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.zip"]
    # killed mid-swap: the old package aside, with notes (kept, named) or without (removed)
    dead = dead_pid()
    kept, bare = tmp_path / f".s.previous-{dead}-abc", tmp_path / f".s.previous-{dead}-xyz"
    for folder in (kept, bare):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"old")
    (kept / "NOTES.md").write_text("mine too")
    with pytest.warns(UserWarning, match=r"holds files of yours \(NOTES.md\)"):
        pack_run(runs["lstm"], "s", tmp_path, budget=False)
    assert (kept / "NOTES.md").read_text() == "mine too" and not bare.exists()
    assert (first.folder / "NOTES.md").read_text() == "mine"


def test_a_pack_whose_zip_cannot_be_written_leaves_the_old_package_whole(workspace, runs,
                                                                         tmp_path, monkeypatch):
    import errno

    first = pack_run(runs["gru"], "z", tmp_path, budget=False)
    files = {n: (first.folder / n).read_bytes() for n in PACK_FILES}
    zipped = first.zip_path.read_bytes()
    real = zipfile.ZipFile.writestr

    def disk_full(self, info, data, *args, **kwargs):
        if getattr(info, "filename", info) == "model.onnx":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, info, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)
    with pytest.raises(OSError, match="No space left"):
        pack_run(runs["lstm"], "z", tmp_path, budget=False)
    monkeypatch.undo()
    # the folder and its zip are the first pack's, together; no working file is left
    assert {n: (first.folder / n).read_bytes() for n in PACK_FILES} == files
    assert first.zip_path.read_bytes() == zipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z", "z.zip"]
    # a folder where the zip goes is refused before the build, and nothing changes
    (tmp_path / "y.zip").mkdir()
    out = run_cli("pack", runs["gru"], "--name", "y", "--out", tmp_path, expect=2).output
    assert "y.zip exists and is not a file" in out and not (tmp_path / "y").exists()
    # a name too long for pack's working files is refused up front, not as an OS error
    with pytest.raises(PackError, match="at most 200"):
        pack_run(runs["gru"], "n" * 240, tmp_path)


def test_pack_dot_inside_a_run_folder_names_the_package_after_the_run(runs, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(runs["gru"])
    out = run_cli("pack", ".", "--out", tmp_path).output
    name = f"{runs['gru'].parent.name}-{runs['gru'].name}"
    assert (tmp_path / name / "model.onnx").is_file() and name in out
    assert read_manifest(tmp_path / name)["members"][0]["run"] == str(runs["gru"].resolve())


def test_pack_dot_inside_the_runs_folder_writes_the_projects_submissions(runs, tmp_path,
                                                                         monkeypatch):
    """Without --out, `kit pack .` in runs/EXP/ID (or in runs/EXP) writes the project's
    submissions/, beside runs/, not a submissions/ folder inside the run."""

    run = tmp_path / "project" / "runs" / "exp" / "r1"
    shutil.copytree(runs["gru"], run)
    for where, given in ((run, "."), (run.parent, "r1")):
        monkeypatch.chdir(where)
        assert "note: written into" not in run_cli("pack", given, "--name", "p").output
        assert (tmp_path / "project" / "submissions" / "p" / "model.onnx").is_file()
        assert not (where / "submissions").exists()
    # a run right under runs/ (kit train --run-dir runs/myrun): it wrote myrun/submissions/
    mine = shutil.copytree(runs["gru"], tmp_path / "project" / "runs" / "myrun")
    monkeypatch.chdir(mine)
    run_cli("pack", ".", "--name", "q")
    assert (tmp_path / "project" / "submissions" / "q.zip").is_file()
    assert not (mine / "submissions").exists()
    # the default name is the experiment that trained it (its config), not the folder "exp"
    experiment = tomllib.loads((run / "config.toml").read_text())["name"]
    assert experiment != "exp"
    monkeypatch.chdir(run)
    run_cli("pack", ".")
    assert (tmp_path / "project" / "submissions" / f"{experiment}-r1.zip").is_file()
    monkeypatch.chdir(tmp_path)  # elsewhere: submissions/ of the working folder, as before,
    out = run_cli("pack", run, "--name", "p").output  # said (`just pack` in a subfolder: r274)
    assert (tmp_path / "submissions" / "p.zip").is_file()
    assert (f"note: written into this folder's submissions/ ({tmp_path / 'submissions'}), not "
            f"the run's project's ({tmp_path / 'project' / 'submissions'}): pass --out to "
            "choose") in out
    assert "note: written into" not in run_cli("pack", run, "--name", "p2", "--out",
                                               tmp_path / "mine").output
    # a project inside a folder named runs (or named runs itself) packs into its own folder
    inner = tmp_path / "runs" / "proj"
    shutil.copytree(runs["gru"], inner / "runs" / "exp" / "r1")
    monkeypatch.chdir(inner)
    run_cli("pack", "runs/exp/r1", "--name", "p")
    assert (inner / "submissions" / "p.zip").is_file()
    assert not (tmp_path / "runs" / "submissions").exists()
    # an experiment named runs: its runs/runs/ID is still the project's
    named = tmp_path / "named"
    shutil.copytree(runs["gru"], named / "runs" / "runs" / "r1")
    monkeypatch.chdir(named / "runs")
    run_cli("pack", "runs/r1", "--name", "p")
    assert (named / "submissions" / "p.zip").is_file()
    # a run outside any runs/ (kit train --run-dir elsewhere/myrun): beside it, not inside
    elsewhere = shutil.copytree(runs["gru"], tmp_path / "elsewhere" / "myrun")
    monkeypatch.chdir(elsewhere)
    run_cli("pack", ".", "--name", "e")
    assert (tmp_path / "elsewhere" / "submissions" / "e.zip").is_file()
    assert not (elsewhere / "submissions").exists()


def test_packs_to_one_name_at_once_leave_one_whole_package(workspace, runs, tmp_path):
    import os

    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "kit", "pack", str(runs[name]), "--name",
                               "race", "--out", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("gru", "lstm", "gru_b")]
    outputs = [proc.communicate()[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    folder = tmp_path / "race"
    manifest = read_manifest(folder)  # one pack's files, all of them, and its zip
    assert all(sha256_file(folder / n) == h for n, h in manifest["files"].items())
    with zipfile.ZipFile(tmp_path / "race.zip") as archive:
        assert all(archive.read(n) == (folder / n).read_bytes() for n in PACK_FILES)
    assert run_parity(folder, _valid(workspace), seqs=2).ok
    assert not list(tmp_path.glob(".*.lock"))  # the last holder deleted it: none piles up


def test_the_package_lock_excludes_and_leaves_no_file(tmp_path):
    """A holder deletes the lock file before it lets go; a waiter that locked the deleted
    file takes the path's new one, so two holders never overlap."""
    import threading

    from kit.export.pack import exclusive

    lock, inside, overlaps = tmp_path / ".p.lock", [], []

    def hold(i):
        with exclusive(lock):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.01)
            inside.remove(i)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(8) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not lock.exists()


def test_a_folder_with_someone_elses_manifest(workspace, gru_pack, tmp_path):
    folder = _copy_pack(gru_pack, tmp_path)
    (folder / "manifest.json").write_text('{"name": "my model", "version": 2}')
    assert submission_spec(folder).name == load_spec(None).name  # scored with the default spec
    with pytest.raises(PackError, match="not a kit pack manifest"):
        read_manifest(folder)


# --- CLI ---------------------------------------------------------------------------------


def test_cli_pack_parity_score_and_exit_codes(workspace, runs, gru_pack, tmp_path):
    out = run_cli("pack", runs["gru"], "--name", "cli", "--out", tmp_path).output
    assert "packed" in out and (tmp_path / "cli.zip").is_file()
    kib = round((tmp_path / "cli" / "solution.py").stat().st_size / 1024)
    assert f"solution.py {kib:,} KiB" in out  # bytes / 1024: KiB, not KB
    # the package's own validation file is the default data; the tiny spec comes from the manifest
    out = run_cli("parity", tmp_path / "cli.zip", "--seqs", "3").output
    assert "parity OK" in out and "[FAIL]" not in out
    out = run_cli("score", tmp_path / "cli.zip", "--data", _valid(workspace), "-q").output
    assert "tiny-lob" in out
    broken = _copy_pack(gru_pack, tmp_path)
    _edit_solution(broken, "return self.y_row.copy()", "return self.y_row")
    result = run_cli("parity", broken, "--seqs", "3", "--json", expect=1)
    assert json.loads(result.output)["ok"] is False


def test_score_refuses_a_spec_that_would_scramble_the_packs_columns(workspace, gru_pack,
                                                                   tmp_path):
    import tomllib

    import tomli_w

    doc = tomllib.loads((workspace / "tiny-lob.toml").read_text())
    features = list(load_spec(workspace / "tiny-lob.toml").features)
    doc |= {"name": "tiny-rev", "features": features[::-1]}
    (tmp_path / "rev.toml").write_text(tomli_w.dumps(doc))
    out = run_cli("score", gru_pack.zip_path, "--data", _valid(workspace), "--spec",
                  tmp_path / "rev.toml", expect=2).output
    assert "they differ at position 0" in out and "leave out --spec" in out
    # bsdtar's zips name entries "./manifest.json": extracted as the manifest, but read as
    # none, so the spec check was skipped and the columns went in scrambled
    dotted = tmp_path / "dotted.zip"
    with zipfile.ZipFile(dotted, "w") as archive:
        for name in PACK_FILES:  # (write() would normalise the name: ZipInfo keeps it)
            archive.writestr(zipfile.ZipInfo(f"./{name}"), (gru_pack.folder / name).read_bytes())
    out = run_cli("score", dotted, "--data", _valid(workspace), "--spec",
                  tmp_path / "rev.toml", expect=2).output
    assert "they differ at position 0" in out
    # a zip whose solution.py sits in a subfolder (no manifest at its root): the zip is named,
    # with the default spec it fell back on, not the data as breaking that spec
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        for name in PACK_FILES:
            archive.write(gru_pack.folder / name, f"gru/{name}")
    out = run_cli("score", nested, "--data", _valid(workspace), expect=2).output
    assert "no manifest.json of kit pack's: scoring with the default spec 'predictorium'" in out
    assert "no solution.py at the root" in out and "breaks the competition contract" not in out
    out = run_cli("score", tmp_path / "nope.zip", "--data", _valid(workspace), expect=2).output
    assert "no such submission" in out and "note:" not in out


def test_pack_errors_name_the_problem(workspace, runs, tmp_path):
    result = run_cli("pack", tmp_path, expect=2)
    assert "not a run directory" in result.output
    # a run that diverged before any epoch scored is a run: said so ("not a run directory")
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / "config.toml").write_text((runs["gru"] / "config.toml").read_text())
    (diverged / "metrics.json").write_text(json.dumps(
        {"finished": True, "score": None, "diverged": "train loss inf in batch 2 of epoch 1"}))
    out = run_cli("pack", diverged, expect=2).output
    assert "training diverged before any epoch scored (train loss inf in batch 2" in out
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "best.pt").write_bytes(b"not a checkpoint")
    assert "corrupt" in run_cli("pack", bad, expect=2).output
    (bad / "best.pt").write_bytes(b"")  # e.g. a full disk: torch raises EOFError('')
    assert "corrupt" in run_cli("pack", bad, expect=2).output
    # not a checkpoint at all: no advice to delete the user's file
    out = run_cli("pack", _valid(workspace), expect=2).output
    assert "not a checkpoint; pass a run folder" in out and "delete" not in out
    (tmp_path / "afile").write_text("")
    out = run_cli("pack", runs["gru"], "--out", tmp_path / "afile", expect=2).output
    assert "afile" in out and "Traceback" not in out
    for name in ("../escape", " ", "a\\b", " gru"):
        with pytest.raises(PackError, match="plain folder name"):
            pack_run(runs["gru"], name, tmp_path)


def test_nonsense_tolerances_and_timeouts_are_refused(workspace, gru_pack):
    manifest = (gru_pack.folder / "manifest.json").read_bytes()
    out = run_cli("parity", gru_pack.folder, "--atol", "-1", expect=2).output
    assert "--atol must be a finite number >= 0" in out
    # an infinite tolerance passes any package: parity would prove nothing
    for option in ("--atol", "--rtol"):
        out = run_cli("parity", gru_pack.folder, option, "inf", expect=2).output
        assert f"{option} must be a finite number >= 0, got inf" in out
    # --seqs 0 compares no rows: refused as such, not as "no row needs a prediction"
    out = run_cli("parity", gru_pack.folder, "--seqs", "0", expect=2).output
    assert "--seqs must be >= 1, got 0" in out
    assert (gru_pack.folder / "manifest.json").read_bytes() == manifest  # no report recorded
    out = run_cli("score", gru_pack.folder, "--data", _valid(workspace), "--timeout", "0",
                  expect=2).output
    assert "--timeout must be a number of seconds > 0" in out


def test_parity_refuses_a_package_whose_run_changed(workspace, runs, tmp_path):

    run = tmp_path / "run"
    shutil.copytree(runs["gru"], run)
    packed = pack_run(run, "moved", tmp_path)
    checkpoint = load_checkpoint(run / "best.pt")
    save_checkpoint({**checkpoint, "epoch": 99}, run / "best.pt")  # retrained, say
    with pytest.raises(PackError, match="changed since the package was made"):
        run_parity(packed.folder, _valid(workspace), seqs=2)
    shutil.rmtree(run)
    with pytest.raises(PackError, match="is gone"):
        run_parity(packed.folder, _valid(workspace), seqs=2)



def test_parity_finds_the_run_and_data_of_a_moved_or_elsewhere_package(workspace, runs,
                                                                        tmp_path, monkeypatch):
    """Review r276: with the checkout moved, parity run in PROJECT/submissions called the run
    at ../runs "gone"; a package written with --out outside its project said
    "data/valid.parquet: no such file" from anywhere but the project's root."""
    from kit.parity import default_data

    project = tmp_path / "proj"
    run = project / "runs" / "gru" / runs["gru"].name
    shutil.copytree(runs["gru"], run)
    (project / "data").mkdir()
    shutil.copy(_valid(workspace), project / "data/valid.parquet")
    packed = pack_run(run, "pk", project / "submissions", budget=False)
    manifest = read_manifest(packed.folder)
    manifest["members"][0]["config"]["data"]["valid"] = "data/valid.parquet"  # as projects do
    write_manifest(packed.folder, manifest)
    elsewhere = tmp_path / "elsewhere" / "pk"  # kit pack --out elsewhere
    shutil.copytree(packed.folder, elsewhere)
    monkeypatch.chdir(tmp_path)
    assert default_data(elsewhere) == project / "data/valid.parquet"  # the run's project's
    project.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved" / "submissions")
    assert run_parity(Path("pk"), default_data(Path("pk")), seqs=2, record=False).ok
    with pytest.raises(PackError) as gone:  # its run moved away: nowhere else to look
        default_data(elsewhere)
    assert str(gone.value) == (f"{elsewhere}: the run's validation file data/valid.parquet (as "
                               f"its config names it) is not here nor in {project}: pass --data "
                               "FILE")
    moved = tmp_path / "moved"
    (moved / "data/valid.parquet").unlink()  # the package's project is its run's: named once
    with pytest.raises(PackError, match=rf"is not here nor in {re.escape(str(moved))}: pass"):
        default_data(Path("pk"))
    # a run of `kit train --run-dir runs/ID` (no EXP folder) has its project too
    from kit.parity import run_project
    assert run_project(moved / "runs" / "r1" / "best.pt") == moved
    assert run_project(moved / "runs" / "runs" / "r1" / "best.pt") == moved  # EXP named runs
    assert run_project(tmp_path / "r1" / "best.pt") is None


def test_another_competitions_file_given_to_a_package_asks_for_its_competitions_file(
        workspace, gru_pack, tmp_path):
    """Review r274: parity and score of a package told a user with another competition's
    file to "Pass --spec NAME": parity has no --spec, and score refuses one that does not fit
    the package."""
    keys = ("seq_ix", "step_in_seq", "need_prediction")
    other = tmp_path / "other.parquet"
    pl.read_parquet(_valid(workspace)).rename(
        lambda c: c if c in keys or c.startswith("t") else f"x_{c}").write_parquet(other)
    for command in (("parity", gru_pack.folder), ("score", gru_pack.zip_path)):
        out = run_cli(*command, "--data", other, expect=2).output
        assert ("is it another competition's? The package was packed for spec 'tiny-lob': "
                "give a --data file of that competition") in out, out
        assert "--spec" not in out
    # a submission of one's own, with a manifest of its own: --spec is the way (r278)
    own = tmp_path / "own"
    own.mkdir()
    (own / "solution.py").write_text("class PredictionModel:\n    def predict(self, dp):\n"
                                     "        return None\n")
    (own / "manifest.json").write_text('{"name": "my model"}')
    out = run_cli("score", own, "--data", other, expect=2).output
    assert "is it another competition's? Pass --spec NAME" in out, out

def test_a_model_without_memory_passes_the_warmup_check(workspace, tmp_path):
    # a one-row PatchTST window on raw features: its predictions cannot depend on warm-up rows,
    # so "they do not change" is right, not a runtime that skips them
    import tomli_w

    from kit.train.recipe import train_experiment

    exp = tmp_path / "memoryless.toml"
    exp.write_text(tomli_w.dumps({
        "spec": str(workspace / "tiny-lob.toml"), "seed": 5,
        "data": {"train": str(workspace / "data/train.parquet"),
                 "valid": str(workspace / "data/valid.parquet"),
                 "cache_dir": str(workspace / "cache")},
        "features": {"groups": ["raw"]},
        "model": {"type": "patchtst", "d_model": 8, "n_heads": 2, "layers": 1, "window": 2,
                  "patch_len": 1, "stride": 2},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3}}))
    run = Path(train_experiment(str(exp), progress=False, runs_dir=tmp_path / "runs")[0]
               ["run_dir"])
    report = run_parity(pack_run(run, "memoryless", tmp_path).folder, _valid(workspace),
                        seqs=SEQS)
    assert report.ok, report.format()
    warmup = next(c for c in report.checks if c.name == "warm-up processed")
    assert warmup.detail.startswith("n/a: the step path's predictions do not depend")


def test_a_returning_sequence_keeps_its_state_when_the_store_is_full(gru_pack):
    rows = np.random.default_rng(3).standard_normal((12, 32))
    steady = _solution(gru_pack.folder)
    want = [steady.predict(Point(1.0, float(i), 1.0, r)) for i, r in enumerate(rows)]
    model = _solution(gru_pack.folder)
    model.max_saved = 1  # room for one parked sequence
    got = [model.predict(Point(1.0, float(i), 1.0, r)) for i, r in enumerate(rows[:6])]
    model.predict(Point(2.0, 0.0, 1.0, rows[0]))  # 1 parked, 2 live
    got += [model.predict(Point(1.0, float(i), 1.0, r)) for i, r in enumerate(rows[6:], 6)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_a_full_store_drops_the_longest_parked_state_not_the_one_just_parked(gru_pack):
    """Past max_saved the oldest parked state goes: dropping the newest lost the state of the
    sequence just paused, which then started over from zero state when it came back."""
    rows = np.random.default_rng(4).standard_normal((12, 32))
    want = model_on(gru_pack, rows)
    model = _solution(gru_pack.folder)
    model.max_saved = 2
    for seq in (2, 3):  # two sequences that finished, parked in that order
        for i, r in enumerate(rows[:3]):
            model.predict(Point(seq, i, True, r))
    got = [model.predict(Point(1, i, True, r)) for i, r in enumerate(rows[:6])]
    model.predict(Point(4, 0, True, rows[0]))  # parks 1: one more than the store holds
    assert list(model.saved) == [3, 1]  # 2, parked first, went
    got += [model.predict(Point(1, i, True, r)) for i, r in enumerate(rows[6:], 6)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_file_system_errors_read_as_path_problem_and_remedy():
    import errno

    from kit.cli import os_error_text

    text = os_error_text(OSError(errno.EROFS, "Read-only file system", "subs/.a.packing"))
    assert text == ("subs/.a.packing: Read-only file system (that file system is read-only: "
                    "choose a folder on a writable one)")
    assert os_error_text(OSError(errno.EIO, "Input/output error", "x")) == "x: Input/output error"
    assert os_error_text(OSError("no errno")) == "no errno"


# --- a next-state run of its own (cheap: no run of every model type) -------------------------

NS300 = """
name = "ns300"
features = ["0..4"]
seq_len = 300
warmup = 99
tail = 1
protocol = "next-state"
[metric]
name = "r2"
"""


@pytest.fixture(scope="module")
def ns_run(tmp_path_factory) -> Path:
    """A tiny GRU on a next-state spec whose sequences (300 rows) do not divide the 2,000 rows
    pack times; its data in the run's workspace (ns_run.parents[2] / "data")."""
    import tomli_w

    from kit.data.synth import synthesize
    from kit.train.recipe import train_experiment

    root = tmp_path_factory.mktemp("ns300")
    (root / "ns300.toml").write_text(NS300)
    synthesize(load_spec(str(root / "ns300.toml")), root / "data", train_seqs=4, valid_seqs=2,
               seed=1)
    exp = root / "ns.toml"
    exp.write_text(tomli_w.dumps({
        "spec": str(root / "ns300.toml"), "seed": 5,
        "data": {"train": str(root / "data/train.parquet"),
                 "valid": str(root / "data/valid.parquet"), "cache_dir": str(root / "cache")},
        "features": {"groups": ["raw"]},
        "model": {"type": "gru", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3}}))
    return Path(train_experiment(str(exp), progress=False, runs_dir=root / "runs")[0]
                ["run_dir"])


def test_pack_times_whole_sequences_of_a_next_state_spec(ns_run, tmp_path):
    # 2,000 rows would cut the 7th sequence after a row that needs a prediction: its truth,
    # the next row, does not exist, and the replay failed as a crash of the submission
    packed = pack_run(ns_run, "ns", tmp_path)
    assert packed.manifest["time_budget"]["sample_rows"] == 2100


def test_pack_refuses_to_overwrite_a_zip_it_did_not_write(ns_run, tmp_path):
    (tmp_path / "notes.zip").write_text("notes\n")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:  # a zip, not kit's
        archive.writestr("solution.py", "")
    with zipfile.ZipFile(tmp_path / "alike.zip", "w") as archive:  # kit's files, not its manifest
        for name in PACK_FILES:
            archive.writestr(name, '{"name": "mine"}')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name in ("notes", "other", "alike"):
        with pytest.raises(PackError, match=f"{name}.zip exists and is not a zip written by kit "
                                            "pack"):
            pack_run(ns_run, name, tmp_path, budget=False)
    out = run_cli("pack", ns_run, "--name", "notes", "--out", tmp_path, expect=2).output
    assert "choose another --name" in out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
    # its own zip is replaced as before, one of an older kit with notes beside its files too
    first = pack_run(ns_run, "mine", tmp_path, budget=False)
    with zipfile.ZipFile(first.zip_path, "a") as archive:
        archive.writestr("notes.md", "kits before 268938d zipped every file of the folder")
    again = pack_run(ns_run, "mine", tmp_path, budget=False)
    assert again.zip_path == first.zip_path
    assert sorted(zipfile.ZipFile(again.zip_path).namelist()) == sorted(PACK_FILES)


def test_a_package_name_with_a_control_character_is_refused(ns_run, tmp_path):
    # line/paragraph separators split a name into lines, a right-to-left override reverses
    # it on screen, an undecodable byte of the command line (a surrogate) raised a traceback,
    # and an empty --name packed under the default name
    for name in ("nl\nx", "tab\tx", "del\x7fx", "c1\x85x", "line\u2028two", "para\u2029x",
                 "rtl\u202ex", "byte\udcffx", ""):
        with pytest.raises(PackError, match="plain folder name"):
            pack_run(ns_run, name, tmp_path, budget=False)
    assert not list(tmp_path.iterdir())


def test_a_package_name_starting_with_a_dot_is_refused(ns_run, tmp_path):
    # .hidden/ and .hidden.zip: a package that ls and file pickers do not show
    out = run_cli("pack", ns_run, "--name", ".hidden", "--out", tmp_path, expect=2).output
    assert "--name '.hidden': a plain folder name is needed" in out and "leading dot" in out
    assert not list(tmp_path.iterdir())


def test_a_package_name_too_long_in_bytes_or_ending_in_zip_in_any_case_is_refused(ns_run,
                                                                                  tmp_path):
    """The limit is on bytes (a folder name takes 255 of them): 120 'é' are 240, which the
    staging folder's name overflowed; and .ZIP is .zip on the scorer's and many file systems."""
    with pytest.raises(PackError, match="package name é{40}...: 240 bytes, at most 200"):
        pack_run(ns_run, "é" * 120, tmp_path, budget=False)
    for name in ("sub.ZIP", "sub.Zip"):
        with pytest.raises(PackError, match=r"give the name without .zip \(--name sub\)"):
            pack_run(ns_run, name, tmp_path, budget=False)
    assert not list(tmp_path.iterdir())
    assert pack_run(ns_run, "é" * 100, tmp_path, budget=False).folder.is_dir()  # 200 bytes


def test_the_time_budget_counts_start_up_and_fits_members_under_80_percent(tmp_path,
                                                                           monkeypatch):
    """projected = start-up + test rows at the sampled time per row; what more members fit
    is under BUDGET_FRACTION of the limit, each costing projected / members. Figures from a
    replay that took init_s 300 s and 1,000 us a row: exact."""
    from types import SimpleNamespace

    from kit.export.pack import format_budget, time_budget
    from kit.scoring import score

    fed = []

    def replay(folder, values, spec, column_dtypes=None):
        fed.append(len(values))
        return SimpleNamespace(result={"init_s": 300.0, "loop_s": len(values) * 1e-3})

    monkeypatch.setattr(score, "replay_rows", replay)
    spec = load_spec("predictorium")  # 1,500,000 test rows, a 5,400 s limit
    budget = time_budget(tmp_path, spec, 2)
    assert fed == [2000] and budget["sample_rows"] == 2000
    assert budget["us_per_row"] == 1000.0
    assert budget["projected_s"] == 1800.0  # 300 s start-up + 1,500 s of rows
    assert budget["fraction"] == pytest.approx(1 / 3) and budget["limit_s"] == 5400
    # 0.8 * 5,400 - 1,800 = 2,520 s left, 900 s a member: 2 more (4 under the whole limit)
    assert budget["more_members_fit"] == 2
    assert format_budget(budget) == (
        "projected test time 1,800 s for 1,500,000 test rows of the 5,400 s limit (33.3%; "
        "1000.0 us/row on 1 CPU, 2 member(s); the spec's [limits])")


def test_the_package_folder_follows_the_umask(ns_run, tmp_path):
    """It was 0755 whatever the umask, while its files and zip followed it (077: 0600)."""
    import stat

    old = os.umask(0o077)
    try:
        packed = pack_run(ns_run, "private", tmp_path, budget=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(packed.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(packed.zip_path.stat().st_mode) == 0o600


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="Linux PID namespaces")
def test_a_pack_in_another_pid_namespace_of_this_host_is_not_judged_by_our_pids(tmp_path):
    """A container sharing the host's name (docker --uts=host) has PIDs of its own: its live
    pack's staging folder looked dead here (no such PID) and was deleted under it."""

    from kit.export.pack import owner_gone, owner_tag

    probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c",
                            "from kit.export.pack import owner_tag; print(owner_tag())"],
                           capture_output=True, text=True,
                           env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace here: {probe.stderr.strip()[-200:]}")
    theirs = probe.stdout.strip()
    assert theirs.split(".")[1] != owner_tag().split(".")[1]
    assert not owner_gone(f"{dead_pid()}.{theirs.split('.')[1]}")  # not ours to judge
    assert owner_gone(f"{dead_pid()}.{owner_tag().split('.')[1]}")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_package_that_fails_to_load_is_said_to_have_changed_since_pack(ns_run, tmp_path,
                                                                       damage):
    packed = pack_run(ns_run, "ns", tmp_path, budget=False)
    model = packed.folder / "model.onnx"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:100])
    else:
        model.unlink()
    data = ns_run.parents[2] / "data/valid.parquet"
    said = "model.onnx changed since pack" if damage == "truncated" else "model.onnx is missing"
    with pytest.warns(RuntimeWarning, match=said), pytest.raises(KitError):
        score_submission(packed.folder, data, submission_spec(packed.folder), progress=False)
    out = run_cli("score", packed.folder, "--data", data, "-q", expect=2).output
    assert f"warning: {said}" in out and "re-pack it" in out


def test_kit_score_says_a_changed_package_before_its_replay_once(ns_run, tmp_path):
    """docs/scoring.md: the warning comes before the replay. The CLI collected warnings and
    printed them after the whole result (minutes of progress bar later)."""
    packed = pack_run(ns_run, "ns", tmp_path, budget=False)
    with (packed.folder / "solution.py").open("a") as f:
        f.write("# an edit\n")
    data = ns_run.parents[2] / "data/valid.parquet"
    out = run_cli("score", packed.folder, "--data", data, "--seqs", 1).output
    said = "warning: solution.py changed since pack"
    assert out.count(said) == 1
    assert out.index(said) < out.index("score ")


def test_weights_that_do_not_fit_the_config_name_the_mismatches(ns_run, tmp_path):

    run = shutil.copytree(ns_run, tmp_path / "run")
    checkpoint = load_checkpoint(run / "best.pt")
    checkpoint["model_config"] = {**checkpoint["model_config"], "hidden": 16}
    save_checkpoint(checkpoint, run / "best.pt")
    with pytest.raises(KitError) as err:
        load_member(run)
    said = str(err.value)
    assert "Error(s) in loading state_dict for GRUModel: size mismatch for " in said
    assert said.count("size mismatch for") == 3 and said.endswith("; and 2 more)")


def test_a_checkpoint_whose_features_rebuild_to_other_outputs_is_refused(runs, tmp_path):
    """The stored feature outputs name the model's input columns: a feature set whose ops
    rebuild to other columns (another kit version) must not be packed as if it fed the model
    the ones it was trained on."""

    run = shutil.copytree(runs["gru"], tmp_path / "run")
    checkpoint = load_checkpoint(run / "best.pt")
    outputs = list(checkpoint["features"]["outputs"])
    checkpoint["features"] = {**checkpoint["features"], "outputs": [*outputs[:-1], "renamed"]}
    save_checkpoint(checkpoint, run / "best.pt")
    with pytest.raises(KitError, match="the stored feature set does not rebuild to the same "
                                       "outputs"):
        load_member(run)
    with pytest.raises(KitError, match="does not rebuild to the same outputs"):
        pack_run(run, "renamed", tmp_path / "subs", budget=False)
    assert not (tmp_path / "subs").exists()


def test_one_nan_prediction_leaves_the_other_rows_relative_differences_reported():
    """inf / inf is NaN: one NaN or inf prediction made a target's max relative difference
    NaN (null in --json), hiding the largest one of every other row."""
    import warnings

    from kit.parity import Rows, Tolerance, compare

    values = np.array([[7, 0, 1, 0.0], [7, 1, 1, 0.0], [7, 2, 1, 0.0]])
    ref = np.array([[0.1, 0.5], [0.2, 0.3], [0.4, 0.4]])
    pkg = np.array([[0.1, 0.5], [0.3, np.nan], [0.4, np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compare("a vs b", ref, pkg, Rows.of(values), ["t0", "t1"], Tolerance(1e-5, 0.0))
    assert got["per_target"]["t0"]["max_rel"] == pytest.approx(0.1 / 0.3)
    assert got["per_target"]["t1"]["max_rel"] == np.inf


def test_each_targets_worst_difference_is_its_own_row():
    """Each target's max_abs, seq and step come from that target's largest difference: the
    row worst over all targets gave every target its value and place (t1 reported 0 there)."""
    from kit.parity import Rows, Tolerance, compare

    values = np.array([[7, 0, 1, 0.0], [7, 1, 1, 0.0], [8, 5, 1, 0.0]])
    ref = np.zeros((3, 2))
    pkg = np.array([[0.5, 0.0], [0.0, 0.125], [0.0, 0.25]])
    got = compare("a vs b", ref, pkg, Rows.of(values), ["t0", "t1"], Tolerance(1e-5, 0.0))
    assert got["per_target"]["t0"] == {"max_abs": 0.5, "max_rel": 1.0,
                                       "seq": 7.0, "step": 0.0}
    assert got["per_target"]["t1"] == {"max_abs": 0.25, "max_rel": 1.0,
                                       "seq": 8.0, "step": 5.0}
    assert got["max_abs"] == 0.5 and got["rows_over"] == 3


def test_the_relative_tolerance_is_sized_per_target():
    """One target of size 1e4 must not widen another's tolerance: a 50% error in a target of
    size 1e-3 passes only if the scale is taken over all targets."""
    from kit.parity import Tolerance

    close = Tolerance(1e-5, 1e-6).close(np.array([[1e4, 1e-3]]), np.array([[1e4, 1.5e-3]]))
    assert close.tolist() == [[True, False]]


def test_the_manifest_records_the_digest_of_the_checkpoint_it_packed(runs, tmp_path,
                                                                     monkeypatch):
    """best.pt was loaded, then read again for its sha256: a run still training replaced it
    in between, and the manifest named the new file over the old one's weights (parity then
    failed its paths with the manifest check passing)."""
    import hashlib

    import torch

    from kit.train import checkpoint

    run = shutil.copytree(runs["gru"], tmp_path / "runs" / "gru" / "r1")
    packed_bytes = (run / "best.pt").read_bytes()
    real_load = torch.load

    def load_then_replace(*args, **kwargs):
        payload = real_load(*args, **kwargs)
        staged = run / "best.pt.new"  # the trainer's next best, moved into place
        shutil.copy(runs["gru_b"] / "best.pt", staged)
        staged.replace(run / "best.pt")
        return payload

    monkeypatch.setattr(checkpoint.torch, "load", load_then_replace)
    member = load_member(run)
    assert member.sha256 == hashlib.sha256(packed_bytes).hexdigest()


def test_a_parity_report_of_many_outputs_prints_their_summary():
    """32 outputs (the next-state preset): one figure each made 1.7 KB lines; past
    SHOWN_OUTPUTS the table gives min and max and each pair its worst output."""
    from kit.parity import Check, ParityReport

    names = [str(j) for j in range(32)]
    per = {"sequence": {"score": 0.1, "per_target": {n: j / 100 for j, n in enumerate(names)}}}
    diff = {"pair": "sequence vs step", "max_abs": 3e-6, "rows_over": 0, "first_over": None,
            "per_target": {n: {"max_abs": (7e-6 if n == "17" else 1e-7), "max_rel": 1e-6,
                               "seq": 2.0, "step": 40.0} for n in names}}
    text = ParityReport("sub", "data", 2, 100, 80, 1e-5, 1e-6, per, [diff],
                        [Check("paths agree", True, "ok")]).format()
    assert max(len(line) for line in text.splitlines()) < 160, text
    # the location is the max abs difference's; the max rel, usually elsewhere, stands apart
    assert "worst of 32 outputs: 17 max abs 7.00e-06 at seq 2 step 40, max rel 1.00e-06" in text
    assert "0.00000   0.31000" in text  # min and max of the per-output scores


class _States:
    """A stream module's init_state alone: states of the given shapes (of the batch size)."""

    def __init__(self, *shapes):
        self.shapes = shapes

    def init_state(self, batch: int) -> list:
        import torch

        return [torch.zeros(shape(batch)) for shape in self.shapes]


@pytest.mark.parametrize("bad, sizes", [
    pytest.param(lambda b: (4, 8), "(4, 8) / (4, 8)", id="none follows the batch"),
    pytest.param(lambda b: (b, b), "(2, 2) / (3, 3)", id="two do"),
    pytest.param(lambda b: (2 * b,), "(4,) / (6,)", id="one does, 2 rows per batch row"),
])
def test_a_state_without_one_batch_axis_is_refused_before_export(bad, sizes):
    """export names one axis of each state "batch": a state with none, or several, would
    be frozen at the example's size or batched wrongly."""
    from kit.export.step_graph import batch_axes

    assert batch_axes(_States(lambda b: (1, b, 4), lambda b: (b, 3))) == [1, 0]
    with pytest.raises(ValueError, match=re.escape(f"state 1: no single batch axis in shapes "
                                                   f"{sizes}")):
        batch_axes(_States(lambda b: (b, 3), bad))


@pytest.mark.parametrize("dims", [[4, 8], ["batch", "batch"], ["batch", 0], ["n", 4]])
def test_a_graph_input_without_one_batch_dimension_is_refused(dims):
    """The manifest records each state's batch axis (its one "batch" dimension): a graph whose
    state has none, two, or a zero-sized one is no package the runtimes can serve."""
    from kit.export.step_graph import declared_shape

    ok = onnx.helper.make_tensor_value_info("state_0", onnx.TensorProto.FLOAT, [1, "batch", 4])
    assert declared_shape(ok) == [1, "batch", 4]
    value = onnx.helper.make_tensor_value_info("state_3", onnx.TensorProto.FLOAT, dims)
    shown = ["batch" if d == "batch" else (0 if isinstance(d, str) else d) for d in dims]
    with pytest.raises(ValueError, match=re.escape(f"state state_3: shape {shown} has no "
                                                   "single batch axis")):
        declared_shape(value)


# --- kit parity's options reach the run ---------------------------------------------------


def test_cli_parity_runs_on_the_file_data_names_not_the_packed_validation_file(workspace,
                                                                                gru_pack):
    train = workspace / "data/train.parquet"
    out = run_cli("parity", gru_pack.folder, "--data", train, "--seqs", 2).output
    assert f"on {train}: 2 sequence(s)" in out and "valid.parquet" not in out.splitlines()[0]


def test_cli_parity_fails_a_replay_that_runs_past_the_timeout(gru_pack):
    out = run_cli("parity", gru_pack.folder, "--seqs", 2, "--timeout", "0.01", expect=1).output
    assert "timed out" in out and "[FAIL]" in out and "parity FAILED" in out


def test_cli_parity_compares_16_sequences_by_default(workspace, gru_pack):
    train = workspace / "data/train.parquet"  # the tiny train file holds 16 sequences
    out = run_cli("parity", gru_pack.folder, "--data", train).output
    assert f"on {train}: 16 sequence(s)" in out


def test_cli_data_cache_lists_the_entries_of_data_cache_by_default(workspace, runs, tmp_path,
                                                                   monkeypatch):
    """Training built the workspace's feature cache: a copy of it as the project's
    data/cache is what `kit data cache` lists with no --dir."""

    shutil.copytree(workspace / "cache", tmp_path / "data/cache")
    monkeypatch.chdir(tmp_path)
    found = run_cli("data", "cache", "--dir", tmp_path / "data/cache", "--json").output
    n = len(json.loads(found)["entries"])
    assert n >= 1
    result = run_cli("data", "cache")
    assert f"{n} entr{'y' if n == 1 else 'ies'} in data/cache," in result.output
    assert "does not exist" not in result.output


# --- replacing what lies at NAME, and odd run folders and checkpoints ----------------------


def _files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_re_pack_leaves_no_old_package_aside_nor_its_pycache(ns_run, tmp_path):
    """The old folder is renamed aside for the swap and removed once the new one is in place:
    packs to one name leave NAME and NAME.zip alone. Python's __pycache__ (from importing
    solution.py) is not one of your files: it goes with the old package."""
    first = pack_run(ns_run, "again", tmp_path, budget=False)
    (first.folder / "__pycache__").mkdir()
    (first.folder / "__pycache__" / "solution.cpython-311.pyc").write_bytes(b"stale")
    for _ in range(2):
        again = pack_run(ns_run, "again", tmp_path, budget=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "again.zip"]
    assert sorted(p.name for p in again.folder.iterdir()) == sorted(PACK_FILES)


def test_an_empty_folder_of_the_name_is_packed_into(ns_run, tmp_path):
    (tmp_path / "empty").mkdir()
    packed = pack_run(ns_run, "empty", tmp_path, budget=False)
    assert sorted(p.name for p in packed.folder.iterdir()) == sorted(PACK_FILES)
    assert packed.zip_path.is_file()


def test_a_link_to_a_package_elsewhere_is_refused_and_its_target_kept(ns_run, tmp_path):
    """Replacing a link named NAME moved the files of the package it points to (your notes)
    out of there and into the new package."""
    target = pack_run(ns_run, "real", tmp_path / "elsewhere", budget=False).folder
    (target / "NOTES.md").write_text("mine")
    before = _files_of(target)
    out = tmp_path / "subs"
    out.mkdir()
    (out / "link").symlink_to(target)
    with pytest.raises(PackError, match="link exists and is not a package written by kit pack"):
        pack_run(ns_run, "link", out, budget=False)
    assert _files_of(target) == before and (target / "NOTES.md").read_text() == "mine"
    assert (out / "link").is_symlink() and (out / "link").resolve() == target.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["link"]


def test_a_zip_with_kits_manifest_but_not_its_files_is_not_overwritten(ns_run, tmp_path):
    """A zip of your own holding a kit manifest (copied in) beside other files is no package
    kit pack wrote: its manifest alone does not make it one."""
    manifest = pack_run(ns_run, "src", tmp_path / "src", budget=False).folder / "manifest.json"
    with zipfile.ZipFile(tmp_path / "mine.zip", "w") as archive:
        archive.writestr("manifest.json", manifest.read_bytes())
        archive.writestr("my_notes.txt", "mine")
    before = (tmp_path / "mine.zip").read_bytes()
    with pytest.raises(PackError, match="mine.zip exists and is not a zip written by kit pack"):
        pack_run(ns_run, "mine", tmp_path, budget=False)
    assert (tmp_path / "mine.zip").read_bytes() == before
    assert not (tmp_path / "mine").exists()


def test_a_checkpoint_file_given_as_run_gets_the_run_folders_default_name(ns_run, tmp_path):
    experiment = tomllib.loads((ns_run / "config.toml").read_text())["name"]
    packed = pack_run(ns_run / "best.pt", out_dir=tmp_path, budget=False)
    assert packed.folder == tmp_path / f"{experiment}-{ns_run.name}"
    assert packed.zip_path == tmp_path / f"{experiment}-{ns_run.name}.zip"


def _run_copy(ns_run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(ns_run, tmp_path / "runs" / "exp" / "r1")


def test_a_checkpoint_missing_a_weight_is_refused(ns_run, tmp_path):
    run = _run_copy(ns_run, tmp_path)
    checkpoint = load_checkpoint(run / "best.pt")
    gone = next(iter(checkpoint["model"]))
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if k != gone}
    save_checkpoint(checkpoint, run / "best.pt")
    with pytest.raises(KitError, match=r"the weights do not fit the stored model config \(.*"
                                       r"Missing key\(s\)") as err:
        load_member(run)
    assert gone in str(err.value)
    with pytest.raises(KitError, match="the weights do not fit"):
        pack_run(run, "missing", tmp_path / "subs", budget=False)
    assert not (tmp_path / "subs").exists()


def test_a_checkpoint_without_its_normaliser_is_not_a_kit_checkpoint(ns_run, tmp_path):
    run = _run_copy(ns_run, tmp_path)
    checkpoint = load_checkpoint(run / "best.pt")
    del checkpoint["normaliser"]
    save_checkpoint(checkpoint, run / "best.pt")
    with pytest.raises(KitError, match=re.escape("not a kit checkpoint (needs keys [")) as err:
        load_member(run)
    assert "'normaliser'" in str(err.value)


def test_a_run_with_only_last_pt_has_no_best_pt_yet(ns_run, tmp_path):
    """last.pt is the resume checkpoint of an unfinished run: not packed in best.pt's place."""
    run = _run_copy(ns_run, tmp_path)
    assert (run / "last.pt").is_file()
    (run / "best.pt").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"finished": False}))
    with pytest.raises(KitError, match=re.escape(f"{run}: no best.pt yet (the run has not "
                                                 "finished a validated epoch)")):
        load_member(run)
    with pytest.raises(KitError, match="no best.pt yet"):
        pack_run(run, "early", tmp_path / "subs", budget=False)
    assert not (tmp_path / "subs").exists()


def test_a_run_whose_config_is_not_toml_is_refused(ns_run, tmp_path):
    run = _run_copy(ns_run, tmp_path)
    (run / "config.toml").write_text("name = [\n")
    with pytest.raises(KitError, match=re.escape(f"{run / 'config.toml'}: not valid TOML (")):
        load_member(run)


def test_the_manifest_records_the_checkpoint_path_groups_and_score_of_the_run(ns_run, tmp_path,
                                                                               monkeypatch):
    """Given relative (from the run's parent), the checkpoint is still recorded absolute: parity
    reads it from wherever it runs. The member's feature groups and validation score are the
    run's own."""
    monkeypatch.chdir(ns_run.parent)
    packed = pack_run(Path(ns_run.name), "rel", tmp_path, budget=False)
    member = read_manifest(packed.folder)["members"][0]
    assert member["checkpoint"] == str(ns_run.resolve() / "best.pt")
    assert Path(member["checkpoint"]).is_absolute()
    groups = tomllib.loads((ns_run / "config.toml").read_text())["features"]["groups"]
    assert member["feature_groups"] == groups == ["raw"]
    score = json.loads((ns_run / "metrics.json").read_text())["score"]
    assert score is not None and member["val_score"] == pytest.approx(score)


def test_a_manifest_without_outputs_is_not_a_kit_manifest(ns_run, tmp_path):
    folder = pack_run(ns_run, "noout", tmp_path, budget=False).folder
    manifest = read_manifest(folder)
    del manifest["outputs"]
    write_manifest(folder, manifest)
    with pytest.raises(PackError, match=re.escape("not a kit pack manifest (no valid "
                                                  "['outputs'])")):
        read_manifest(folder)
