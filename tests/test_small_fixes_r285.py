"""Review r285: one constant test for both normalisers, the data file refused as its own oracle,
a listed sweep trial without a run folder."""

from __future__ import annotations

import numpy as np
import optuna
import polars as pl
import pytest
import tomli_w
import torch

from kit.competition import load_spec
from kit.config import load_experiment
from kit.data.stats import dataset_stats
from kit.data.synth import synthesize
from kit.errors import DataError
from kit.features.normaliser import Normaliser
from kit.sweep import format_summary, make_storage, prepare, summarize
from tests.cli import run_cli


def test_a_column_of_std_near_1e_30_is_constant_for_both_normalisers():
    """+-8e-31: a std of 8e-31 (under the 1e-30 floor: constant for standard) and an IQR / 1.349
    of 1.2e-30 (over it: robust scaled it to +-0.67). Both faces agree for both methods."""
    rng = np.random.default_rng(0)
    near_zero = np.tile(np.array([-8e-31, 8e-31]), 500)
    tiny_units = rng.normal(0.0, 1e-13, 1000)  # a real feature in tiny units: still scaled
    x = np.stack([near_zero, tiny_units], 1).astype(np.float32)
    fitted = {m: Normaliser.fit(x, method=m) for m in ("standard", "robust")}
    for method, norm in fitted.items():
        assert norm.scale[0] == 1.0, (method, norm.scale)
        assert np.abs(norm.transform(x)[:, 0]).max() < 1e-29  # ~0: a constant
        assert 0.7 < norm.transform(x)[:, 1].std() < 1.3
        stream, _ = norm.stream_module()(torch.from_numpy(x), [])
        np.testing.assert_array_equal(stream.numpy(), norm.transform(x))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Tiny synthetic competitions of both protocols: spec name -> SynthResult."""
    root = tmp_path_factory.mktemp("synth")
    return {name: synthesize(load_spec(name), root / name, train_seqs=2, valid_seqs=2, seed=1)
            for name in ("predictorium", "rnn-challenge")}


@pytest.mark.parametrize("spec", ["predictorium", "rnn-challenge"])
def test_the_data_file_is_refused_as_its_own_oracle(synth, spec, tmp_path):
    """It was scored as an oracle without a word (predictorium: 0.970, past both oracle
    bands); a copy is refused too. The synth oracle still scores."""
    r = synth[spec]
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(r.valid.read_bytes())
    for oracle in (r.valid, copy):
        out = run_cli("data", "stats", r.valid, "--spec", spec, "--oracle", oracle,
                      expect=None).output
        assert "holds the same bytes as the data file" in out, out
        assert "valid_oracle.parquet that kit data synth writes beside valid.parquet" in out
    assert dataset_stats(r.valid, load_spec(spec), oracle=r.oracle)["oracle"]["score"] < 0.9


def test_the_truth_written_anew_is_refused_as_an_oracle(synth, tmp_path):
    """Not the same bytes, the same values: the targets of every scored row."""
    r = synth["predictorium"]
    spec = load_spec("predictorium")
    pl.read_parquet(r.valid).select(spec.id_col, spec.step_col, *spec.targets).write_parquet(
        tmp_path / "truth.parquet")
    with pytest.raises(DataError, match=r"truth\.parquet: its output columns equal the truth on "
                                        r"every scored row .* not an oracle's predictions"):
        dataset_stats(r.valid, spec, oracle=tmp_path / "truth.parquet")


def test_a_listed_trial_without_a_run_folder_says_so_not_none(workspace, tmp_path, monkeypatch):
    """A complete trial that recorded no run folder (added by hand or by another tool) was
    listed with the word None, where a deleted folder reads "(gone)"."""
    exps = tmp_path / "experiments"
    exps.mkdir()
    base = load_experiment(str(workspace / "experiments" / "gru.toml"))
    base.pop("name")
    base["train"] = {**base["train"], "epochs": 2}  # (past its warm-up epoch: no warning)
    space = {"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    (exps / "tiny.toml").write_text(tomli_w.dumps({**base, "sweep": space}))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)
    setup = prepare("tiny", None, None, None)
    study = optuna.create_study(study_name="tiny", storage=make_storage(setup.storage_url),
                                direction=setup.direction)
    lr = setup.params[0]
    study.add_trial(optuna.trial.create_trial(value=0.5, params={lr.name: 3e-3},
                                              distributions={lr.name: lr.distribution()}))
    summary = summarize(setup, 0.0)
    assert summary["best"][0]["run_dir"] is None  # the summary's data keep the null
    listed = [line for line in format_summary(summary).splitlines() if line.startswith("  #")]
    assert listed == ["  #0      0.50000  train.lr=0.003  (no run folder recorded)"]
