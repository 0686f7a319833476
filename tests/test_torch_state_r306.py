"""kit's Python API in a long-lived process (r306): train, pack, parity and sweep leave the
caller's torch and Optuna as they found them, and do not depend on what an earlier notebook
cell set (a float64 default dtype, autograd off)."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch

from kit.export.pack import pack_run
from kit.parity import run_parity
from kit.train.recipe import train_experiment
from tests.test_sweep import optuna_log


@pytest.fixture
def experiments(workspace, monkeypatch):
    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    return workspace


def _train(workspace: Path, tmp_path: Path, *overrides: str) -> Path:
    result = train_experiment("gru", list(overrides), progress=False,
                              runs_dir=tmp_path / "runs")
    return Path(result[0]["run_dir"])


def test_train_threads_do_not_stay_in_torch(experiments, tmp_path):
    """`train.threads = 1` stayed set: later default runs trained on 1 thread (and recorded
    it), and so did the user's own torch code."""
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    run = _train(experiments, tmp_path, f"train.threads={wanted}")
    assert torch.load(run / "last.pt", weights_only=True)["threads"] == wanted
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("call", ["train", "pack", "parity"])
def test_train_pack_and_parity_leave_the_callers_random_stream_alone(experiments, runs,
                                                                     tmp_path, call):
    """Training reseeded torch's global generator: whatever the user seeded, their next
    torch.rand was fixed by kit; pack and parity drew from it."""
    valid = experiments / "data" / "valid.parquet"
    packed = pack_run(runs["gru"], "rng", tmp_path / "subs") if call == "parity" else None
    calls = {"train": lambda: _train(experiments, tmp_path),
             "pack": lambda: pack_run(runs["gru"], "rng2", tmp_path / "subs"),
             "parity": lambda: run_parity(packed.folder, valid, seqs=2)}
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    calls[call]()
    assert torch.equal(torch.rand(4), expected)


def test_a_float64_default_dtype_and_autograd_off_neither_break_nor_leak(experiments, tmp_path):
    """A float64 default dtype left by an earlier cell: train failed with a raw dtype error and
    pack wrote a float64 graph its own solution.py cannot feed; autograd switched off by an
    inference cell failed training."""
    torch.set_default_dtype(torch.float64)
    try:
        run = _train(experiments, tmp_path)
        packed = pack_run(run, "f64", tmp_path / "subs")
        assert torch.get_default_dtype() == torch.float64  # the caller's, back
    finally:
        torch.set_default_dtype(torch.float32)
    graph = onnx.load(str(packed.folder / "model.onnx")).graph
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.FLOAT}
    assert run_parity(packed.folder, experiments / "data" / "valid.parquet", seqs=2).ok
    with torch.no_grad():
        torch.set_grad_enabled(False)
        _train(experiments, tmp_path)
        assert not torch.is_grad_enabled()


def _sweep_experiment(workspace: Path, tmp_path: Path, monkeypatch) -> None:
    import tomli_w

    from kit.config import load_experiment

    exps = tmp_path / "experiments"
    exps.mkdir()
    base = load_experiment(str(workspace / "experiments" / "gru.toml"))
    base.pop("name")
    base["model"] = {"type": "gru", "hidden": 8, "layers": 1}
    space = {"trials": 2, "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2,
                                                  "log": True}}}
    (exps / "tiny.toml").write_text(tomli_w.dumps({**base, "sweep": space}))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)


def _open_files_under(folder: Path) -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [link for link in links if link.startswith(str(folder))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd (Linux)")
def test_a_sweep_leaves_optuna_logging_as_it_was_and_closes_its_database(workspace, tmp_path,
                                                                         monkeypatch):
    """After sweep(): Optuna's verbosity stayed at WARNING and its handler kept a filter that
    dropped "Trial N failed" records of the user's own studies (trial numbers kit had
    explained); the study's SQLite connections stayed open until a cyclic GC."""
    from kit.sweep import sweep

    _sweep_experiment(workspace, tmp_path, monkeypatch)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    handlers = optuna.logging.get_logger("optuna").handlers
    filters = [list(h.filters) for h in handlers]
    sweep("tiny", trials=2, progress=False, runs_dir=tmp_path / "runs")
    left = (optuna.logging.get_verbosity(), [list(h.filters) for h in handlers],
            _open_files_under(tmp_path / "runs"))
    assert left == (optuna.logging.INFO, filters, []), left

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            raise ValueError("the user's own bug")
        return 0.0

    with optuna_log() as log:
        study = optuna.create_study()
        study.optimize(objective, n_trials=2, catch=(ValueError,))
    said = log.getvalue()
    assert "Trial 0 failed" in said and "the user's own bug" in said, said
    assert json.dumps([t.state.name for t in study.trials]) == '["FAIL", "COMPLETE"]'
    assert np.isfinite(study.best_value)
