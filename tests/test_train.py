"""The trainer end to end on a tiny generated competition, through the CLI and the recipe."""

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w
import torch

from kit.competition import load_spec, spec_from_dict
from kit.data.synth import synthesize
from kit.train.checkpoint import load_checkpoint
from tests.cli import run_cli
from tests.processes import exited

SPEC_TOML = """
name = "tiny-lob"
features = ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"]
targets = ["t0", "t1"]
seq_len = 60
warmup = 10
[metric]
name = "weighted_pearson"
clip = [-6.0, 6.0]
"""

EXPERIMENT = """
spec = "{spec}"
seed = 7
[data]
train = "{data}/train.parquet"
valid = "{data}/valid.parquet"
cache_dir = "{root}/cache"
[features]
groups = ["raw", "lags"]
[model]
type = "gru"
hidden = 16
layers = 1
[loss]
terms = {{ wmse = 1.0, pearson = 0.2 }}
[train]
epochs = 3
batch_size = 8
lr = 3e-3
patience = 10
"""


def tiny_competition(root: Path, train_seqs: int, valid_seqs: int, seed: int) -> Path:
    """SPEC_TOML's competition under root: tiny-lob.toml, synthetic data/ and an empty
    experiments/ folder; returns the experiments folder."""
    (root / "tiny-lob.toml").write_text(SPEC_TOML)
    spec = load_spec(str(root / "tiny-lob.toml"))
    synthesize(spec, root / "data", train_seqs=train_seqs, valid_seqs=valid_seqs, seed=seed)
    exps = root / "experiments"
    exps.mkdir()
    return exps


def raw_gru_experiment(root: Path) -> dict:
    """An experiment on tiny_competition's files under root: a GRU 8x1 on the raw columns,
    one epoch without warm-up."""
    return {
        "spec": str(root / "tiny-lob.toml"), "seed": 5,
        "data": {"train": str(root / "data/train.parquet"),
                 "valid": str(root / "data/valid.parquet"), "cache_dir": str(root / "cache")},
        "features": {"groups": ["raw"]},
        "model": {"type": "gru", "hidden": 8, "layers": 1},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
    }


def tiny_project(root: Path, *, train_seqs: int, valid_seqs: int, seed: int) -> Path:
    """tiny_competition under root with the experiment `tiny` (EXPERIMENT) on its files."""
    exps = tiny_competition(root, train_seqs=train_seqs, valid_seqs=valid_seqs, seed=seed)
    (exps / "tiny.toml").write_text(EXPERIMENT.format(spec=root / "tiny-lob.toml",
                                                      data=root / "data", root=root))
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_project(tmp_path_factory.mktemp("train"), train_seqs=24, valid_seqs=8, seed=1)


def experiments_of(root: Path, monkeypatch, tmp_path) -> Path:
    """root's experiments are the ones `exp=NAME` finds, and runs/ lands in tmp_path."""
    monkeypatch.setenv("KIT_EXPERIMENTS", str(root / "experiments"))
    monkeypatch.chdir(tmp_path)
    return root


@pytest.fixture
def env(workspace, monkeypatch, tmp_path):
    return experiments_of(workspace, monkeypatch, tmp_path)


def _run_dirs(exp: Path) -> list[Path]:
    """The run folders of an experiment (not its .groups records)."""
    return sorted(p for p in exp.iterdir() if not p.name.startswith("."))


def _only_run(base: Path) -> Path:
    runs = _run_dirs(base / "runs" / "tiny")
    assert len(runs) == 1
    return runs[0]


def test_train_writes_the_run_directory(env, tmp_path):
    out = run_cli("train", "exp=tiny", "-q").output
    assert "score" in out and "finished" in out
    run = _only_run(tmp_path)
    for name in ("config.toml", "spec.json", "history.jsonl", "metrics.json", "best.pt",
                 "last.pt", "val_preds.npy", "val_rows.npy"):
        assert (run / name).is_file(), name
    from kit.run_record import read_trained_spec  # the spec best.pt holds, without loading it
    assert read_trained_spec(run).to_dict() == spec_from_dict(
        load_checkpoint(run / "best.pt")["spec"]).to_dict()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["score"] == max(h["val_score"] for h in history)
    preds, rows = np.load(run / "val_preds.npy"), np.load(run / "val_rows.npy")
    valid = pl.read_parquet(env / "data" / "valid.parquet")
    assert preds.shape == (valid["need_prediction"].sum(), 2)
    np.testing.assert_array_equal(rows, np.flatnonzero(valid["need_prediction"].to_numpy()))
    # the stored normaliser is the one fit on the train file's rows, not the valid file's
    stored = load_checkpoint(run / "best.pt")["normaliser"]
    train_x = _feature_rows(env / "data" / "train.parquet")
    np.testing.assert_allclose(stored["center"], train_x.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored["scale"], train_x.std(axis=0), rtol=1e-4, atol=1e-5)
    valid_center = _feature_rows(env / "data" / "valid.parquet").mean(axis=0)
    assert not np.allclose(stored["center"], valid_center, rtol=1e-3, atol=1e-3)


def _feature_rows(path: Path) -> np.ndarray:
    """The tiny experiment's features (raw + lags) of every row of a file, float64."""
    from kit.config import load_experiment, resolve
    from kit.features import feature_set_from_config

    feature_set = feature_set_from_config(resolve(load_experiment("tiny")))
    frame = feature_set.batch_frame(pl.read_parquet(path))
    return frame.select(feature_set.outputs).to_numpy().astype(np.float64)


def test_a_folds_normaliser_sees_only_its_training_folds(env):
    from kit.config import load_experiment, resolve
    from kit.data.splits import kfold
    from kit.train.data import load_train_data

    config = resolve(load_experiment("tiny"))
    rows = _feature_rows(env / "data" / "train.parquet")
    ids = pl.read_parquet(env / "data" / "train.parquet", columns=["seq_ix"])["seq_ix"]
    for i, (train_ids, _valid_ids) in enumerate(kfold(np.unique(ids.to_numpy()), 3, seed=7)):
        data = load_train_data(config, fold=(3, i))
        own = rows[ids.is_in(train_ids.tolist()).to_numpy()]
        np.testing.assert_allclose(data.normaliser.center, own.mean(axis=0), rtol=1e-5,
                                   atol=1e-5)


def test_resume_of_a_run_dir_of_another_experiment_is_refused(env, tmp_path, monkeypatch):
    """`kit train exp=B --resume --run-dir <a run of A>` finished A's run and reported it as
    B's."""
    import shutil

    exps = tmp_path / "exps"
    shutil.copytree(env / "experiments", exps)
    shutil.copy(exps / "tiny.toml", exps / "other.toml")
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--stop-after-epochs", "1", "-q")
    out = run_cli("train", "exp=other", "--resume", "--run-dir", tmp_path / "r", "-q",
                  expect=2).output
    assert "is a run of experiment 'tiny', not 'other'; resume it as `kit train tiny" in out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs"] == 1
    run_cli("train", "exp=tiny", "--resume", "--run-dir", tmp_path / "r", "-q")
    # trained from a TOML path outside experiments/: `kit train mine` would fail (r264)
    shutil.copy(exps / "tiny.toml", tmp_path / "mine.toml")
    run_cli("train", tmp_path / "mine.toml", "--run-dir", tmp_path / "m", "--stop-after-epochs",
            "1", "-q")
    out = run_cli("train", "exp=other", "--resume", "--run-dir", tmp_path / "m", "-q",
                  expect=2).output
    assert (f"is a run of experiment 'mine', not 'other'; resume it as `kit train EXP --resume "
            f"--run-dir {tmp_path / 'm'}`, EXP the file it was trained from") in out, out


def test_runs_says_which_rows_each_score_is_on(env, tmp_path):
    """Scores on the valid file and on a held-out part of the train file do not compare: the
    table says where each run validated, the experiment that trained it, and notes the mix."""
    run_cli("train", "exp=tiny", "train.epochs=1", "-q")
    run_cli("train", "exp=tiny", "train.epochs=1", "data.split=random", "--run-dir",
            tmp_path / "elsewhere" / "split" / "r1", "-q")
    out = run_cli("runs").output
    assert "validated" in out.splitlines()[0] and "valid.parquet" in out
    assert "note: these runs are scored on" not in out  # one run, one set
    out = run_cli("runs", "--runs-dir", tmp_path / "elsewhere").output
    row = out.splitlines()[2]
    assert row.startswith("tiny ") and "random 0.15 of train.parquet" in row  # not "split"
    listed = json.loads(run_cli("runs", "--json").output)
    assert [r["validated"] for r in listed] == ["valid.parquet"]
    (tmp_path / "runs" / "tiny" / "r1").symlink_to(tmp_path / "elsewhere" / "split" / "r1")
    out = run_cli("runs").output
    assert "note: these runs are scored on 2 different sets of rows" in out
    # the first N sequences of a file, and another file of the same name, are other rows too
    import polars as pl

    valid = pl.read_parquet(env / "data" / "valid.parquet")
    other = tmp_path / "other" / "valid.parquet"
    other.parent.mkdir()
    valid.filter(pl.col("seq_ix") != valid["seq_ix"][0]).write_parquet(other)
    n_valid = valid["seq_ix"].n_unique()
    for name, arg in (("first2", "train.max_valid_seqs=2"), ("other", f"data.valid={other}"),
                      ("all", "train.max_valid_seqs=1000"),  # more than the file: all rows
                      ("exact", f"train.max_valid_seqs={n_valid}")):  # as many: all rows too
        run_cli("train", "exp=tiny", "train.epochs=1", arg, "--run-dir",
                tmp_path / "more" / name / "r", "-q")
    # data.seq_len cutting the validation sequences: their kept steps, not kit score's rows
    run_cli("train", "exp=tiny", "train.epochs=1", "data.seq_len=15", "data.truncate=tail",
            "--run-dir", tmp_path / "more" / "cut" / "r", "-q")
    listed = json.loads(run_cli("runs", "--runs-dir", tmp_path / "more", "--json").output)
    assert sorted(r["validated"] for r in listed) == ["2 seqs of valid.parquet",
                                                       "last 15 steps of valid.parquet",
                                                       *["valid.parquet"] * 3]
    (tmp_path / "more" / "tiny").symlink_to(tmp_path / "runs" / "tiny")
    out = run_cli("runs", "--runs-dir", tmp_path / "more").output
    assert ("scored on 5 different sets of rows (column validated): compare scores within one "
            "set\n") in out
    # two files named valid.parquet: told apart by their folders
    assert "other/valid.parquet" in out and "data/valid.parquet" in out
    # a run still training or killed has no metrics.json: its config and spec say whether
    # data.seq_len cut its rows (r264: labelled as the uncut file, and the note was false)
    import shutil

    run_cli("train", "exp=tiny", "train.epochs=1", "data.seq_len=60", "--run-dir",
            tmp_path / "more" / "whole" / "r", "-q")  # the spec's length: nothing cut
    for name in ("cut", "whole"):
        shutil.copytree(tmp_path / "more" / name, tmp_path / "killed" / name)
        (tmp_path / "killed" / name / "r" / "metrics.json").unlink()
    listed = json.loads(run_cli("runs", "--runs-dir", tmp_path / "killed", "--json").output)
    assert sorted(r["validated"] for r in listed) == ["last 15 steps of valid.parquet",
                                                       "valid.parquet"]
    # two rows of one name (folders named alike): the table says where each is (r264)
    out = run_cli("runs", "--runs-dir", tmp_path / "killed").output
    paths = sorted(r["path"] for r in listed)
    assert f"note: 2 runs of tiny are named r: {', '.join(paths)}" in out, out


@pytest.mark.parametrize("damage", ["torn", "garbage", "not_utf8", "emptied"])
def test_a_resume_reads_a_damaged_history_as_kit_runs_does(env, tmp_path, damage):
    """--resume parsed every history line with json.loads: a torn, edited or non-UTF-8 line
    crashed it after the pause's metrics.json was gone, so the run could never finish; an
    emptied history made metrics.json count 1 epoch of 3."""
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--stop-after-epochs", "2", "-q")
    history = tmp_path / "r" / "history.jsonl"
    text = history.read_bytes()
    history.write_bytes({"torn": text[:len(text) // 2], "garbage": b"garbage {\n" + text,
                         "not_utf8": text + b"\xff\xfe{\n", "emptied": b""}[damage])
    out = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume", "-q").output
    assert "Traceback" not in out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["epochs"] == 3
    assert all(json.loads(line)["epoch"] >= 1 for line in history.read_text().splitlines())


def test_a_resume_refuses_a_config_toml_edited_by_hand(env, tmp_path):
    """An edited epochs count resumed silently onto a schedule of another length (the lr went
    back up), an edited width failed as a last.pt that "does not fit", whose advice (delete
    it) lost the epochs (r264). Comments and layout are no edit: that run resumes."""
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--stop-after-epochs", "1", "-q")
    config = tmp_path / "r" / "config.toml"
    text, paused = config.read_text(), (tmp_path / "r" / "metrics.json").read_bytes()
    assert "epochs = 3\n" in text and "hidden = 16\n" in text
    cases = [([("epochs = 3\n", "epochs = 8\n")], "train.epochs (was 3, now 8)"),
             ([("hidden = 16\n", "hidden = 32\n"), ("epochs = 3\n", "epochs = 4\n")],
              "model.hidden (was 16, now 32), train.epochs (was 3, now 4)")]
    for edit, shown in cases:
        edited = text
        for old, new in edit:
            edited = edited.replace(old, new)
        config.write_text(edited)
        out = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume",
                      expect=2).output
        assert f"config.toml is not the config last.pt was written with: {shown}: " \
            "config.toml edited by hand since the run started, or a last.pt of another run; " \
            "--resume replays the run as it started" in " ".join(out.split()), out
        assert "does not fit" not in out
        assert (tmp_path / "r" / "metrics.json").read_bytes() == paused  # the pause kept
    # nine settings: eight named, then how many more
    nine = text
    for key in ("lr", "weight_decay", "patience", "clip", "seed", "hidden", "epochs",
                "batch_size", "chunk"):
        nine = re.sub(rf"^{key} = .*$", f"{key} = 9", nine, count=1, flags=re.M)
    config.write_text(nine)
    out = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume",
                  expect=2).output
    assert " and 1 more: config.toml edited by hand" in " ".join(out.split()), out
    # an editor's byte order mark, comments and layout are no edit (r268: a BOM read as one)
    config.write_bytes(b"\xef\xbb\xbf# my notes\n" + text.replace(" = ", "   =   ").encode())
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume", "-q")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs"] == 3


def test_resume_takes_the_original_command_with_a_width_beside_a_budget(env, tmp_path):
    """config.toml holds the solved width (params overrides a width given beside it): the
    original command's model.hidden=10 read as a change and --resume refused it."""
    command = ["train", "exp=tiny", "model.params=3000", "model.hidden=10", "train.epochs=2",
               "--run-dir", tmp_path / "r", "-q"]
    run_cli(*command, "--stop-after-epochs", 1)
    run_cli(*command, "--resume")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["finished"]
    out = run_cli(*command[:-3], "model.params=5000", "--run-dir", tmp_path / "r", "--resume",
                  expect=2).output
    assert "['model.params=5000'] would change" in out


def test_resume_ends_where_an_uninterrupted_run_ends(env, tmp_path):
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "whole", "-q")
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "split", "--stop-after-epochs", "1",
            "-q")
    paused = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert not paused["finished"] and paused["epochs"] == 1
    # overrides that would change the run are refused, not silently dropped
    refused = run_cli("train", "exp=tiny", "train.epochs=5", "--resume", "--run-dir",
                      tmp_path / "split", "-q", expect=2).output
    assert "['train.epochs=5'] would change" in refused and "Traceback" not in refused
    # a new run in a folder that holds one would mix the two
    reused = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "split", "-q", expect=2).output
    assert "already holds a run" in reused and "--resume" in reused
    # seeds=[N] names the run's seed as seed=N does (it was ignored: the run's seed trained)
    refused = run_cli("train", "exp=tiny", "seeds=[8]", "--resume", "--run-dir",
                      tmp_path / "split", "-q", expect=2).output
    assert "['seed=8'] would change" in refused
    run_cli("train", "exp=tiny", "train.epochs=3", "seeds=[7]", "--resume", "--run-dir",
            tmp_path / "split", "-q")  # the run's own values: accepted
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert split["finished"] and split["epochs"] == 3
    assert split["score"] == pytest.approx(whole["score"], abs=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "split" / "val_preds.npy"),
                               np.load(tmp_path / "whole" / "val_preds.npy"), atol=1e-5)


@pytest.mark.parametrize("average", ["train.ema=0.9", "train.swa_start=1"])
def test_a_resumed_run_keeps_its_weight_average_and_ends_where_an_uninterrupted_run_ends(
        env, tmp_path, average):
    """The EMA/SWA average was not restored on --resume: the resumed run averaged from the
    resumed weights on, and scored and kept another model than an uninterrupted run."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    config = check_config(experiment_config("tiny", [average, "train.epochs=3"]))
    whole = train_one(config, RunFiles(tmp_path / "whole"), progress=False)
    files = RunFiles(tmp_path / "split")
    train_one(config, files, stop_after_epochs=1, progress=False)
    split = train_one(config, files, resume=True, progress=False)
    key = "ema" if "ema" in average else "swa"
    once, resumed = (load_checkpoint(tmp_path / name / "last.pt")[key]
                     for name in ("whole", "split"))
    assert resumed["n_averaged"].item() == once["n_averaged"].item() > 1
    for name, value in once.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)
    assert split["score"] == pytest.approx(whole["score"], abs=1e-6)
    kept = [load_checkpoint(tmp_path / name / "best.pt")["model"] for name in ("whole", "split")]
    for name, value in kept[0].items():
        torch.testing.assert_close(kept[1][name], value, rtol=0, atol=1e-6)


def test_a_warmup_that_covers_every_epoch_is_said(env, tmp_path):
    """warmup_epochs >= epochs: the rate only ramps up and cosine never decays (a quick
    train.epochs=1 run of an experiment with warmup_epochs = 1 did so without a word)."""
    import warnings

    from kit.train.recipe import check_config, experiment_config

    for epochs in (1, 2):
        with pytest.warns(UserWarning, match=rf"train.warmup_epochs = 2 covers all {epochs} "
                                             r"epoch\(s\): the rate only ramps up"):
            check_config(experiment_config("tiny", [f"train.epochs={epochs}",
                                                    "train.warmup_epochs=2"]))
    # from the CLI, one `warning:` line as errors are `error:` lines (not Python's file:line:
    # UserWarning format and the source line, which read like a crash)
    out = run_cli("train", "exp=tiny", "train.epochs=1", "train.warmup_epochs=2", "-q").output
    assert "warning: train.warmup_epochs = 2 covers all 1 epoch(s)" in out
    assert "UserWarning" not in out and "check_config(" not in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fine in (["train.epochs=3", "train.warmup_epochs=2"],
                     ["train.epochs=1", "train.warmup_epochs=2", "train.schedule=plateau"]):
            check_config(experiment_config("tiny", fine))


def test_the_epoch_callback_sees_the_best_so_far_and_the_last_epoch_across_a_resume(env,
                                                                                    tmp_path):
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    config = check_config(experiment_config("tiny", ["train.epochs=4", "train.lr=0.3"]))
    files, ends = RunFiles(tmp_path / "run"), []
    train_one(config, files, stop_after_epochs=2, progress=False, on_epoch=ends.append)
    train_one(config, files, resume=True, progress=False, on_epoch=ends.append)
    scores = [json.loads(line)["val_score"]
              for line in (files.root / "history.jsonl").read_text().splitlines()]
    assert [end.epoch for end in ends] == [1, 2, 3, 4]
    assert [end.score for end in ends] == scores
    # the best so far is carried through the resume (the checkpoint's), not restarted
    assert [end.best_score for end in ends] == [max(scores[:i + 1]) for i in range(4)]
    assert [end.last for end in ends] == [False, False, False, True]
    # patience spent makes an epoch the last one as well
    patience = []
    train_one(check_config(experiment_config("tiny", ["train.epochs=30", "train.patience=1"])),
              RunFiles(tmp_path / "patient"), progress=False, on_epoch=patience.append)
    assert patience[-1].last and not any(end.last for end in patience[:-1])
    assert len(patience) < 30 and patience[-1].score <= patience[-2].best_score


def test_the_epoch_callback_of_an_error_metric_sees_the_lowest_error_as_the_best(
        env, tmp_path, monkeypatch):
    """An rmse run's callback got the best as kit compares it (the error negated): a sweep's
    pruner read -0.3 as the best of errors 0.5, 0.3 and 0.4."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    _scores_from(monkeypatch, [0.5, 0.3, 0.4])
    config = check_config(experiment_config("tiny", [f'spec="{_spec_scored_by(tmp_path, "rmse")}"',
                                                     "train.epochs=3"]))
    ends = []
    train_one(config, RunFiles(tmp_path / "r"), progress=False, on_epoch=ends.append)
    assert [(end.score, end.best_score) for end in ends] == [(0.5, 0.5), (0.3, 0.3), (0.4, 0.3)]


def test_a_pruned_run_does_not_score_its_swa_average(env, tmp_path, monkeypatch):
    """A run its callback stopped (a sweep's pruned trial) still validated its SWA average and
    could keep it as best.pt: an extra pass, and a pruned trial's score from another model."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    said = _scores_from(monkeypatch, [0.1, 0.2, 0.9])  # 0.9: what the average would score
    config = check_config(experiment_config("tiny", ["train.epochs=3", "train.swa_start=1"]))
    files = RunFiles(tmp_path / "r")
    metrics = train_one(config, files, progress=False, on_epoch=lambda end: end.epoch == 2)
    assert metrics["pruned"] and said == [0.1, 0.2]  # one validation per epoch run, no more
    assert metrics["best_epoch"] == load_checkpoint(files.best)["epoch"] == 2


def test_a_run_resumed_after_an_epoch_without_progress_keeps_its_patience_count(env, tmp_path):
    """Resumed after an epoch that did not improve, the run forgot that epoch (bad epochs 0)
    and trained past its patience: not the epochs an uninterrupted run stops after."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    config = check_config(experiment_config("tiny", ["train.epochs=40", "train.patience=2",
                                                     "train.lr=0.05"]))
    whole = []
    train_one(config, RunFiles(tmp_path / "whole"), progress=False, on_epoch=whole.append)
    assert len(whole) < 40, "the run must stop on its patience for this test to mean anything"
    # the epoch before the last one did not improve either (patience 2): stop the run there
    assert whole[-2].score <= whole[-2].best_score and whole[-2].best_score == whole[-3].best_score
    files, split = RunFiles(tmp_path / "split"), []
    train_one(config, files, stop_after_epochs=len(whole) - 1, progress=False,
              on_epoch=split.append)
    train_one(config, files, resume=True, progress=False, on_epoch=split.append)
    assert [end.epoch for end in split] == [end.epoch for end in whole]


def test_a_score_that_only_ties_the_best_is_no_improvement(env, tmp_path, monkeypatch):
    """Only a strictly better score resets the patience and replaces best.pt: a tie counted
    as a gain kept a run that had stopped learning going to its last epoch."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    said = _scores_from(monkeypatch, [0.3] * 5)
    config = check_config(experiment_config("tiny", ["train.epochs=5", "train.patience=1"]))
    files = RunFiles(tmp_path / "r")
    metrics = train_one(config, files, progress=False)
    assert said == [0.3, 0.3]  # stopped after the first epoch without a gain
    assert [h["best"] for h in _history(files.root)] == [True, False]
    assert metrics["best_epoch"] == load_checkpoint(files.best)["epoch"] == 1


def test_resume_refuses_features_that_changed_since_the_run_started(env, tmp_path):
    """A groups file edited between a pause and --resume changed the features under the same
    config: the run went on training on other inputs, with as many columns without a word."""
    from kit.config import ConfigError
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    (tmp_path / "lob.toml").write_text(SPEC_TOML)
    groups = tmp_path / "lob.groups.toml"
    groups.write_text('[groups.mine]\nops = [{ op = "lag", inputs = ["p0"], k = 1 }]\n')
    config = check_config(experiment_config("tiny", [f'spec="{tmp_path / "lob.toml"}"',
                                                     'features.groups=["raw", "mine"]']))
    files = RunFiles(tmp_path / "run")
    train_one(config, files, stop_after_epochs=1, progress=False)
    groups.write_text('[groups.mine]\nops = [{ op = "lag", inputs = ["p0"], k = 2 }]\n')
    with pytest.raises(ConfigError, match=r"the features this run trained on changed since it "
                                          r"started .*--resume would go on training on other"):
        train_one(config, files, resume=True, progress=False)
    groups.write_text('[groups.mine]\nops = [{ op = "lag", inputs = ["p0"], k = 1 }]\n')
    assert train_one(config, files, resume=True, progress=False)["finished"]  # restored


def test_a_killed_run_resumes_from_its_last_good_checkpoint(env, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kit", "train", "exp=tiny", "train.epochs=40",
           "train.patience=2", "--run-dir", str(run), "-q"]
    child = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (run / "last.pt").exists()
    assert not (run / "metrics.json").exists() or not json.loads(
        (run / "metrics.json").read_text())["finished"]
    out = run_cli("train", "exp=tiny", "train.epochs=40", "--resume", "--run-dir", run,
                  "train.patience=2", "-q").output  # the same overrides as the killed run
    assert "finished" in out
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))


def test_ctrl_c_of_a_group_says_once_how_to_resume_the_whole_group(env, tmp_path):
    cmd = [sys.executable, "-m", "kit", "train", "exp=tiny", "seeds=[1,2]", "train.epochs=400",
           "train.patience=400", "--jobs", "2", "-q"]  # neither run can finish meanwhile
    child = subprocess.Popen(cmd, env=os.environ.copy(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("runs/tiny/*/last.pt"))) < 2:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    hints = [line for line in err.splitlines() if "continue with" in line]
    assert len(hints) == 1, err  # the parent's, not one per worker too
    assert ("`kit train exp=tiny 'seeds=[1,2]' train.epochs=400 train.patience=400 --jobs 2 "
            "--resume`" in hints[0])
    # the hint works: both seeds move on from their last checkpoint, in their own folders
    before = {run.name: torch.load(run / "last.pt", weights_only=False)["epoch"] + 1
              for run in _run_dirs(tmp_path / "runs" / "tiny")}
    run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=400", "train.patience=400",
            "--jobs", "2", "--resume", "--stop-after-epochs", "1", "-q")
    after = _histories(tmp_path / "runs" / "tiny")
    assert list(after) == list(before) and len(after) == 2
    assert all(after[name] == before[name] + 1 for name in after), (before, after)


def test_resume_picks_the_newest_unfinished_run_by_time_not_by_name(env, tmp_path):
    from kit.train.recipe import resumable_run

    # newest of all: a sweep trial, a fold run and an ablation run, which resume with their
    # study, group or ablation
    for name, age in (("zzz-t0003", 100), ("20261202-043002-s7", 10), ("20261202-050000-s1", 1),
                      ("exp-t0001", 0), ("exp-t0001-20261202-070000", 0), ("exp-t10000", 0),
                      ("20261202-060000-s3-fold1of2", 0), ("ablate-20261202-1-raw-s1", 0),
                      ("baseline", 5)):  # a --run-dir folder of the user's naming
        folder = tmp_path / "exp" / name
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"")
        stamp = time.time() - age
        os.utime(folder / "last.pt", (stamp, stamp))
    (tmp_path / "exp" / "20261202-050000-s1" / "metrics.json").write_text('{"finished": true}')
    assert resumable_run("exp", tmp_path).name == "baseline"
    # a metrics.json torn by a kill says nothing: the run is unfinished, not a traceback
    (tmp_path / "exp" / "20261202-050000-s1" / "metrics.json").write_text('{"finished": tr')
    assert resumable_run("exp", tmp_path).name == "20261202-050000-s1"
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", tmp_path / "nowhere",
                  expect=2).output
    assert "not a run directory" in out and "Traceback" not in out


def test_a_resume_on_another_thread_count_says_it_will_not_replay_exactly(env, tmp_path):
    """Started on torch's 2 threads and continued by a --jobs worker on 1, a run ended 1.5e-8
    off an uninterrupted one (float sums split per thread), while README says it ends exactly
    where one would; the resume now says so."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--stop-after-epochs", "1",
                "-q")
        torch.set_num_threads(1)
        out = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume", "-q",
                      "--stop-after-epochs", "1").output
        assert "resumes on 1 CPU thread(s); it trained on 2 before" in out
        assert "a resume without --jobs, with OMP_NUM_THREADS=2 in its environment, would" in out
        out = run_cli("train", "exp=tiny", "--run-dir", tmp_path / "r", "--resume", "-q").output
        assert "CPU thread(s)" not in out  # the same count: nothing to say
    finally:
        torch.set_num_threads(before)


def test_run_dir_must_be_a_folder_of_the_runs_own(env, tmp_path, monkeypatch):
    """--run-dir "" wrote best.pt and the rest into the working folder, and --run-dir runs or
    runs/EXP into the runs folders, where `kit runs` then listed one run and hid the others."""
    run_cli("train", "exp=tiny", "--stop-after-epochs", "1", "-q")
    before = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    for given, said in (("", "the working folder"), (".", "the working folder"),
                        ("runs", "the runs folder"),
                        ("runs/tiny", "experiment tiny's runs folder"),
                        ("elsewhere/runs", "a runs folder")):
        out = run_cli("train", "exp=tiny", "--run-dir", given, "-q", expect=2).output
        assert f"is {said}: name a folder of the run's own" in out, out
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "runs" / "config.toml").exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == before
    run_cli("train", "exp=tiny", "--run-dir", "runs/mine", "--stop-after-epochs", "1", "-q")
    # inside another run: kit runs and --resume never found it there
    out = run_cli("train", "exp=tiny", "--run-dir", "runs/mine/sub", "-q", expect=2).output
    assert "is inside run" in out and "name a folder of the run's own" in out
    assert not (tmp_path / "runs" / "mine" / "sub").exists()
    # a project root that looks like a run (a DVC root's config.toml and metrics.json) is the
    # working folder: not a run holding this one
    (tmp_path / "config.toml").write_text('title = "my project"\n')
    (tmp_path / "metrics.json").write_text('{"auc": 0.9}')
    (tmp_path / "spec.json").write_text("{}")
    run_cli("train", "exp=tiny", "--run-dir", "runs/other", "--stop-after-epochs", "1", "-q")


@pytest.mark.parametrize(("override", "message"), [
    ("train.patience=0", r"train.patience must be in \[1, 1,000,000\]"),
    ("train.epochs=0", r"train.epochs must be in \[1, 1,000,000\]"),
    ("train.batch_size=-1", r"train.batch_size must be in \[0, 1,000,000\]"),
    # past what torch and numpy hold: a traceback (or, for epochs, a hang) before
    ("train.batch_size=99999999999999999999", r"train.batch_size must be in \[0, 1,000,000\]"),
    ("data.seq_len=99999999999999999999", r"data.seq_len must be in \[0, 10,000,000\]"),
    ("train.threads=9223372036854775807", r"train.threads must be in \[0, 4096\]"),
    ("train.epochs=99999999999999999999", r"train.epochs must be in \[1, 1,000,000\]"),
    ("train.ema=1.0", r"train.ema must be in \[0, 1\)"),
    ("train.lr=0", "train.lr must be a finite number > 0"),
    ("seed=-1", r"seed must be a whole number in \[0, 2\*\*32\)"),
    ("seeds=abc", "each seed must be a whole number"),
    ("seeds=[1.7]", "each seed must be a whole number"),
    ("seeds=-1", r"in \[0, 2\*\*32\)"),  # the range, not "a whole number"
    ("seeds=+-1", "each seed must be a whole number"),
    ("data.fold=[3,0]", "data.fold is what kit train --folds K writes"),
    ("train.lr=.001", "train.lr=.001': .001 is not a TOML number; write 0.001"),
    ("loss.huber_delta=-1", "loss.huber_delta must be a finite number > 0"),
    ("loss.target_weights=[0,0]", "positive sum"),
    ('loss.terms={wmse="a"}', "loss.terms weights must be finite numbers"),
    ("loss.terms={mse=0.0}", "loss.terms needs at least one weight > 0"),
    ("train.swa_start=99", r"train.swa_start = 99 is after the last epoch \(train.epochs = "),
])  # fmt: skip
def test_out_of_range_settings_fail_before_training(env, tmp_path, override, message):
    out = run_cli("train", "exp=tiny", override, "--run-dir", tmp_path / "r", "-q",
                  expect=2).output
    assert re.search(message, out) and "Traceback" not in out
    assert not (tmp_path / "r").exists()  # nothing half-made


@pytest.mark.parametrize(("args", "message"), [
    (["data.valid=nope.parquet"], "data.valid = .nope.parquet.: no such data file"),
    (["data.train=afolder"], "data.train = .afolder.: is a folder; pass a .parquet file"),
    # --jobs with one seed: its folds trained one after another, --jobs dropped unsaid
    (["--folds", "2", "--jobs", "2"], "--jobs trains several seeds at once: it does not "
                                      "combine with --folds or --run-dir"),
    (["seeds=[1,2]", "--folds", "2", "--jobs", "2"], "--jobs trains several seeds at once"),
    # empty: the cache went into the working folder, the train file was "a folder"
    (["data.cache_dir="], "data.cache_dir is empty; give a path \\(the default is "),
    (["data.train= "], "data.train is empty"),
    # a held-out fraction with the valid file validating: it would be ignored
    (["data.valid_fraction=0.5"], 'data.valid_fraction = 0.5 needs data.split = "random" or'),
    (["data.valid_fraction=0.5", "data.split_seed=3"],
     'data.valid_fraction = 0.5 and data.split_seed = 3 need data.split = "random" or'),
    (["--folds", "-2"], "--folds must be 0 \\(off\\) or >= 2"),
    # --folds 1: one fold, trained on no other fold; refused before a .groups record is made
    (["--folds", "1"], "--folds must be 0 \\(off\\) or >= 2, got 1"),
    # --jobs 0 would train as --jobs 1, and --stop-after-epochs -1 pause before the first epoch
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--stop-after-epochs", "-1"], "--stop-after-epochs must be >= 0 \\(0: no stop\\), got -1"),
    (["seeds=[1,2]", "--run-dir", "one"], "--run-dir names one run"),
    (["seed=9223372036854775807"], "seed must be a whole number in \\[0, 2\\*\\*32\\)"),
    (["--run-dir", "afile"], "afile"),  # a path under a file: the OSError, in one line
])  # fmt: skip
def test_bad_runs_fail_in_one_line_before_training(env, tmp_path, args, message):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "afolder").mkdir()  # (a Hive-partitioned dataset)
    out = run_cli("train", "exp=tiny", *args, "-q", expect=2).output
    assert re.search(message, out) and "Traceback" not in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "one").exists()


def test_a_run_that_diverges_at_once_fails_naming_the_cause(env, tmp_path):
    # targets of 1e30: the first batch's loss overflows float32 before any epoch scores
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame.with_columns(pl.col("t0") * 1e30).write_parquet(tmp_path / "extreme.parquet")
    run = tmp_path / "runs" / "tiny" / "extreme-run"
    out = run_cli("train", "exp=tiny", f"data.train={tmp_path / 'extreme.parquet'}",
                  "--run-dir", run, "-q", expect=2).output
    assert "training diverged (train loss inf in batch 1 of epoch 1)" in out
    assert "no best.pt" in out and "Traceback" not in out
    # the cause is the data, named (no learning rate or clip helps)
    assert "no best.pt. The training targets hold values the float32 loss overflows on" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] is True and metrics["score"] is None  # never resumed
    assert metrics["diverged"].startswith("train loss inf")
    assert not (run / "best.pt").exists()
    lines = run_cli("runs").output.splitlines()
    (listed,) = [line.split() for line in lines
                 if "extreme-run" in line and not line.startswith("note:")]
    assert listed[2] == "-"  # no score, and no crash
    assert [line for line in lines if line.startswith("note: ")
            and "extreme-run: training diverged (train loss inf" in line
            and "no epoch scored before that" in line]
    # runs/ensembles holds selection files, no runs: not an experiment
    (tmp_path / "runs" / "ensembles").mkdir()
    (tmp_path / "runs" / "ensembles" / "e.toml").write_text("")
    out = run_cli("runs", "-e", "nope", expect=2).output
    assert "experiments with runs: ['tiny']" in out


def test_a_run_that_diverges_later_keeps_its_best_epoch(env, tmp_path):
    out = run_cli("train", "exp=tiny", "train.lr=1e9", "train.epochs=6", "--run-dir",
                  tmp_path / "r", "-q").output
    assert "stopped early: training diverged (train loss" in out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    history = (tmp_path / "r" / "history.jsonl").read_text()
    assert metrics["finished"] is True and metrics["best_epoch"] >= 1
    assert metrics["epochs"] < 6 and (tmp_path / "r" / "best.pt").exists()
    assert "NaN" not in history and "Infinity" not in history  # strict JSON


def test_a_validation_score_that_is_not_a_number_stops_the_run(env, tmp_path, monkeypatch):
    from kit.train import trainer
    from kit.train.recipe import experiment_config, train_one
    from kit.train.runs import RunFiles

    real = trainer.validate

    def nan_scores(*args):  # fault injection: the model's validation predictions are NaN
        report, rows = real(*args)
        report.score, report.per_target = math.nan, dict.fromkeys(report.per_target, math.nan)
        return report, rows

    monkeypatch.setattr(trainer, "validate", nan_scores)
    with pytest.raises(trainer.TrainingDiverged, match="validation score nan after epoch 1"):
        train_one(experiment_config("tiny", []), RunFiles(tmp_path / "r"), progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").open()]
    assert record["val_score"] is None and record["val_per_target"] == {"t0": None, "t1": None}


def test_ablate_and_demo_check_their_options_first(env, tmp_path):
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "-1", expect=2).output
    assert "--seeds: seed must be a whole number" in out and not (tmp_path / "runs").exists()
    # the experiment's own op reads a lag: the variant that leaves lags out cannot build
    op = 'features.ops=[{ op = "ewm_mean", inputs = ["p0@lag1"], alpha = 0.1 }]'
    out = run_cli("ablate", "exp=tiny", "--groups", "lags,raw", op, expect=2).output
    assert "the variant '-lags' (groups ['raw'])" in out and "p0@lag1" in out
    assert not (tmp_path / "runs").exists()  # found before the first variant trained
    for option in (["--seeds", "0"], ["--seqs", "0"]):
        out = run_cli("demo", "--data", tmp_path / "demo-data", *option, expect=2).output
        assert "must be >= 1" in out and not (tmp_path / "demo-data").exists()
    # keys the command sets itself: an override of them would be replaced without a word
    out = run_cli("demo", "--data", tmp_path / "demo-data", "seed=7", expect=2).output
    assert "override 'seed=7': this command sets seed itself; use --seeds N" in out
    assert not (tmp_path / "demo-data").exists()
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "1", "seed=5",
                  expect=2).output
    assert "override 'seed=5': this command sets seed itself; use --seeds alone" in out
    table = 'data={ train = "x.parquet", valid = "y.parquet" }'  # the whole table: the paths too
    out = run_cli("demo", "--data", tmp_path / "demo-data", table, expect=2).output
    assert "this command sets data.train itself; use --data DIR" in out
    # ... and features.groups given inside a whole [features] table
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", 'features={groups=["raw"], ops=[]}',
                  expect=2).output
    assert "this command sets features.groups itself" in out
    # what kit train checks before any data is built, ablate checks too (it trained each
    # variant with an SWA that averaged nothing, or failed each on a loss typo)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "train.swa_start=3",
                  "train.epochs=1", expect=2).output
    assert "train.swa_start = 3 is after the last epoch" in out
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", "loss.terms={bogus=1.0}",
                  expect=2).output
    assert "unknown loss term" in out
    assert not (tmp_path / "runs").exists()


def test_an_experiment_without_a_model_table_or_with_a_sweep_typo_is_one_line(env, tmp_path):
    """No [model] table: a KeyError traceback from params, train, sweep and ablate. A typo in
    [sweep] passed kit train without a word (kit sweep refused it)."""
    config = tomllib.loads((env / "experiments" / "tiny.toml").read_text())
    config.pop("model", None)
    config.pop("extends", None)
    (tmp_path / "nomodel.toml").write_text(tomli_w.dumps(config))
    for command in (["params"], ["train", "-q"], ["ablate", "--groups", "raw", "-q"]):
        out = run_cli(command[0], str(tmp_path / "nomodel.toml"), *command[1:], expect=2).output
        assert "model.type is missing" in out and "Traceback" not in out, command
    out = run_cli("train", "exp=tiny", "sweep.trails=5", "-q", expect=2).output
    assert "[sweep]: unknown key(s) ['trails']" in out
    assert not (tmp_path / "runs").exists()


def test_seeds_take_a_list_or_commas():
    from kit.cli import parse_seeds

    assert parse_seeds([42, 43]) == parse_seeds("42, 43") == parse_seeds("42,43") == [42, 43]
    assert parse_seeds(7) == [7]


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_warmup_epochs_shape_every_per_step_schedule(name):
    from kit.train.trainer import make_schedule

    def rates(warmup_epochs: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        train = {"schedule": name, "warmup_epochs": warmup_epochs, "lr": 0.1, "patience": 4}
        schedule = make_schedule(optimizer, train, [10] * 4)
        out = []
        for _ in range(40):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    two = rates(2)
    # the rate rises over the first 2 epochs (20 steps) and peaks at the end of the warm-up
    assert all(a < b for a, b in zip(two[:19], two[1:20], strict=True))
    assert max(two) == pytest.approx(two[20] if name != "onecycle" else two[19], rel=0.02)
    assert rates(2) != rates(0)  # it was ignored by onecycle and constant
    assert max(two) == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("name", ["cosine", "constant"])
def test_the_warmup_ramp_rises_linearly_to_the_full_rate(name):
    """Step s of a w-step warm-up trains at (s + 1) / (w + 1) of the rate: the ramp reaches
    the full rate on the first step after it, with no jump at its end."""
    from kit.train.trainer import make_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = make_schedule(optimizer, {"schedule": name, "warmup_epochs": 2, "lr": 0.1,
                                         "patience": 4}, [10] * 4)
    rates = []
    for _ in range(21):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:20] == pytest.approx([0.1 * (step + 1) / 21 for step in range(20)])
    assert rates[20] == pytest.approx(0.1)


@pytest.mark.parametrize("steps", [[1], [1, 1], [2, 1]])
def test_onecycle_over_too_few_steps_for_a_cycle_trains_at_the_rate(steps):
    """Under 4 optimizer steps a cycle has no room: its last step annealed to lr / 1e4, one
    of the run's 1-3 steps (all of a 1-step run) trained at almost 0."""
    from kit.train.trainer import make_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = make_schedule(optimizer, {"schedule": "onecycle", "warmup_epochs": 0,
                                         "lr": 0.1, "patience": 4}, steps)
    rates = []
    for _ in range(sum(steps)):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == [0.1] * sum(steps)


def test_a_sequence_length_that_keeps_no_scored_step_is_refused_before_training(env, tmp_path):
    out = run_cli("train", "exp=tiny", "data.seq_len=5", "--run-dir", tmp_path / "r",
                  expect=2).output
    assert "keep no step that needs a prediction" in out and "data.seq_len = 5" in out
    assert "scores from step 10" in out and not (tmp_path / "r" / "history.jsonl").exists()


def test_a_split_with_no_scored_step_names_what_cut_it(env, tmp_path):
    """Sequences shorter than the warm-up: the advice was to lengthen data.seq_len, which was
    0 (whole sequences) already, or which train.max_valid_seqs had not cut."""
    frame = pl.read_parquet(env / "data" / "valid.parquet")
    first = frame["seq_ix"][0]
    n_seqs = frame["seq_ix"].n_unique()
    short_first = frame.filter((pl.col("seq_ix") != first) | (pl.col("step_in_seq") < 8))
    short_first.write_parquet(tmp_path / "first.parquet")
    out = run_cli("train", "exp=tiny", f"data.valid={tmp_path / 'first.parquet'}",
                  "train.max_valid_seqs=1", expect=2).output
    assert "the validation sequences keep no step that needs a prediction" in out
    assert f"train.max_valid_seqs = 1 keeps 1 of its {n_seqs}; raise it" in out
    assert "lengthen data.seq_len" not in out
    frame.filter(pl.col("step_in_seq") < 8).write_parquet(tmp_path / "all.parquet")
    out = run_cli("train", "exp=tiny", f"data.valid={tmp_path / 'all.parquet'}",
                  expect=2).output
    assert "they are all shorter than the warm-up (data.seq_len = 0 keeps them whole)" in out
    assert "lengthen data.seq_len" not in out


def test_r2_on_a_single_scored_validation_row_is_refused_not_called_diverged(env, tmp_path):
    """r2 is NaN on one row: every epoch scored NaN, and the run failed as diverged, with
    advice to lower the learning rate."""
    frame = pl.read_parquet(env / "data" / "valid.parquet")
    one = frame.filter((pl.col("seq_ix") == frame["seq_ix"][0]) & (pl.col("step_in_seq") < 11))
    one.write_parquet(tmp_path / "one.parquet")
    out = run_cli("train", "exp=tiny", f"spec={_spec_scored_by(tmp_path, 'r2')}",
                  f"data.valid={tmp_path / 'one.parquet'}", expect=2).output
    assert ("the validation sequences keep 1 step that needs a prediction, and r2 is undefined "
            "on fewer than 2 (1 sequence(s)): validate on more") in out
    assert "diverged" not in out and "train.lr" not in out


def test_a_constant_validation_target_is_warned_of(env, tmp_path):
    """Every epoch scored 0.0000 on it, best epoch 1, and nothing said why."""
    frame = pl.read_parquet(env / "data" / "valid.parquet")
    frame.with_columns(t1=pl.lit(1.5)).write_parquet(tmp_path / "flat.parquet")
    out = run_cli("train", "exp=tiny", f"data.valid={tmp_path / 'flat.parquet'}",
                  "train.epochs=1", "-q").output
    scored = frame["need_prediction"].sum()
    assert (f"warning: the validation truth of t1 is constant on its {scored:,} scored rows: its "
            "weighted_pearson is the same for every model") in out
    assert "t0 is constant" not in out and "of t0, t1" not in out
    out = run_cli("train", "exp=tiny", "train.epochs=1", "-q").output
    assert "is constant on its" not in out


def test_an_empty_seed_list_and_seed_beside_seeds_are_refused(env):
    out = run_cli("train", "exp=tiny", "seeds=[]", expect=2).output
    assert "at least one seed" in out
    out = run_cli("train", "exp=tiny", "seed=7", "seeds=[1,2]", expect=2).output
    assert "seed= and seeds= together" in out


def test_runs_on_data_that_changed_since_are_refused_or_flagged(env, tmp_path):
    import shutil

    for name in ("train", "valid"):
        shutil.copy(env / "data" / f"{name}.parquet", tmp_path / f"{name}.parquet")
    files = [f"data.train={tmp_path / 'train.parquet'}", f"data.valid={tmp_path / 'valid.parquet'}"]
    done, paused = tmp_path / "runs" / "tiny" / "done", tmp_path / "runs" / "tiny" / "paused"
    run_cli("train", "exp=tiny", *files, "--run-dir", done, "-q")
    run_cli("train", "exp=tiny", *files, "--run-dir", paused, "--stop-after-epochs", "1", "-q")
    recorded = json.loads((done / "metrics.json").read_text())["data_sha256"]
    assert sorted(recorded) == sorted(f.split("=", 1)[1] for f in files)  # as configured
    original = (tmp_path / "valid.parquet").read_bytes()
    frame = pl.read_parquet(tmp_path / "valid.parquet")
    frame.with_columns(pl.col("t0") * 2).write_parquet(tmp_path / "valid.parquet")  # regenerated
    said = "whose content has changed since"
    lines = run_cli("runs").output.splitlines()
    assert [line for line in lines if line.startswith("note: ") and said in line
            and "done" in line]
    out = run_cli("ensemble", "select", done, "--out", tmp_path / "e.toml", expect=2).output
    assert said in out and "valid.parquet" in out and not (tmp_path / "e.toml").exists()
    run_cli("report", done)
    assert said in (done / "report" / "report.md").read_text()
    assert not (done / "report" / "pred_vs_true.png").exists()
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", paused, expect=2).output
    assert said in out and "--resume would train it on both" in out
    (tmp_path / "valid.parquet").write_bytes(original)  # the same content again: all is well
    assert said not in run_cli("runs").output
    elsewhere = tmp_path / "elsewhere"  # another folder: the same files are compared
    elsewhere.mkdir()
    os.chdir(elsewhere)
    assert said not in run_cli("runs", "--runs-dir", tmp_path / "runs").output
    os.chdir(tmp_path)
    run_cli("ensemble", "select", done, "--out", tmp_path / "e.toml")
    run_cli("train", "exp=tiny", "--resume", "--run-dir", paused, "-q")
    # --json is sorted as the table is, and checks the column the same way
    for order in ([], ["--asc"]):
        listed = json.loads(run_cli("runs", "--json", "--sort", "t0", *order).output)
        t0 = [r["per_target"]["t0"] for r in listed]
        assert len(t0) == 2 and t0 == sorted(t0, reverse=not order)
    assert "cannot sort by 'bogus'" in run_cli("runs", "--json", "--sort", "bogus",
                                               expect=2).output
    out = run_cli("runs", "--runs-dir", tmp_path / "none", "--sort", "t0").output
    assert out.startswith("no runs\n") and f"note: {tmp_path / 'none'} does not exist" in out


def test_a_killed_or_resumed_run_is_still_checked_against_its_data(env, tmp_path):
    """metrics.json holds the data digests, but a killed run has none, and a resumed pause
    drops the pause's (it would describe the run while it trains on): the digests written at
    the start keep --resume from training such a run on changed files."""
    import shutil

    from kit.reports import list_runs
    from kit.train.runs import RunFiles

    shutil.copy(env / "data" / "train.parquet", tmp_path / "train.parquet")
    files = [f"data.train={tmp_path / 'train.parquet'}"]
    runs = tmp_path / "runs" / "tiny"
    killed, paused = runs / "killed", runs / "paused"
    for run in (killed, paused):
        run_cli("train", "exp=tiny", *files, "train.epochs=3", "--run-dir", run,
                "--stop-after-epochs", "1", "-q")
    digests = json.loads((paused / "metrics.json").read_text())["data_sha256"]
    assert json.loads((killed / "data_sha256.json").read_text()) == digests  # from the start
    (killed / "metrics.json").unlink()  # killed during its second epoch: no metrics.json
    (paused / "data_sha256.json").unlink()  # a pause from before the record was written
    RunFiles(paused).reopen_paused()  # what its --resume does first
    assert not (paused / "metrics.json").exists()
    assert json.loads((paused / "data_sha256.json").read_text()) == digests
    # while it trains on (or once that session is killed) the listing reads its history
    listed = {r["run_id"]: r for r in list_runs(tmp_path / "runs")}
    assert listed["paused"]["epochs"] == 1 and not listed["paused"]["finished"]
    original = (tmp_path / "train.parquet").read_bytes()
    frame = pl.read_parquet(tmp_path / "train.parquet")
    frame.with_columns(pl.col("t0") * 2).write_parquet(tmp_path / "train.parquet")
    for run in (killed, paused):
        out = run_cli("train", "exp=tiny", "--resume", "--run-dir", run, expect=2).output
        assert "whose content has changed since" in out and "would train it on both" in out
    (tmp_path / "train.parquet").write_bytes(original)
    for run in (killed, paused):
        run_cli("train", "exp=tiny", "--resume", "--run-dir", run, "-q")
        assert json.loads((run / "metrics.json").read_text())["finished"]
    # a finished single run resumed again is reported as it is, whatever the files are now
    frame.with_columns(pl.col("t0") * 2).write_parquet(tmp_path / "train.parquet")
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", paused).output
    assert "finished" in out and "group" not in out


def test_a_group_recorded_before_a_config_key_existed_still_resumes(env, tmp_path):
    """normaliser.targets came after groups were recorded without it: at its default it is the
    same config (the resume said the group "was started with other settings"); set, it is not.
    A sweep's identity and an ablation's digests leave it out at its default too."""
    from kit.config import differences, load_experiment, resolve
    from kit.sweep import training_digests

    run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=2", "--stop-after-epochs", "1",
            "-q")
    (record,) = (tmp_path / "runs" / "tiny" / ".groups").glob("*.json")
    stored = json.loads(record.read_text())
    del stored["config"]["normaliser"]["targets"]  # as a kit before the key wrote it
    record.write_text(json.dumps(stored))
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=2", "--resume", "-q").output
    assert all(json.loads((run / "metrics.json").read_text())["finished"]
               for run in _run_dirs(tmp_path / "runs" / "tiny")), out
    assert differences(stored["config"], {**stored["config"], "normaliser": {
        **stored["config"]["normaliser"], "targets": True}}) == ["normaliser.targets"]
    base = resolve(load_experiment("tiny"))
    assert "normaliser.targets" not in training_digests(base)
    base["normaliser"]["targets"] = True
    assert "normaliser.targets" in training_digests(base)


def test_a_group_keeps_no_finished_run_of_other_data(env, tmp_path):
    """A resumed group trains its unfinished runs on today's files: a finished one of the
    files before them would make a group (an out-of-fold result) of two datasets."""
    import shutil

    shutil.copy(env / "data" / "train.parquet", tmp_path / "train.parquet")
    files = [f"data.train={tmp_path / 'train.parquet'}"]
    run_cli("train", "exp=tiny", *files, "seeds=[1,2]", "train.epochs=1", "-q")
    first, second = _run_dirs(tmp_path / "runs" / "tiny")
    for name in ("metrics.json", "last.pt"):  # the second seed killed in its first epoch
        (second / name).unlink()
    frame = pl.read_parquet(tmp_path / "train.parquet")
    frame.with_columns(pl.col("t0") * 2).write_parquet(tmp_path / "train.parquet")
    for jobs in ([], ["--jobs", "2"]):  # --jobs kept the finished run and trained the other
        out = run_cli("train", "exp=tiny", *files, "seeds=[1,2]", "train.epochs=1", *jobs,
                      "--resume", expect=2).output
        assert f"runs/tiny/{first.name} trained" in out and "has changed since" in out
        assert "the group's other runs would train on the new files" in out
        assert not (second / "metrics.json").exists()


def _own_experiments(env, tmp_path, monkeypatch) -> Path:
    """A copy of the workspace's experiments a test may edit (the workspace is the module's)."""
    import shutil

    own = shutil.copytree(env / "experiments", tmp_path / "own-experiments")
    monkeypatch.setenv("KIT_EXPERIMENTS", str(own))
    return own


def test_a_jobs_group_trains_the_config_its_command_resolved(env, tmp_path, monkeypatch):
    """Each worker read the experiment file as it started: a seed queued behind the others
    took an edit made while they trained, and one group mixed two configs."""
    import subprocess
    import sys

    experiment = _own_experiments(env, tmp_path, monkeypatch) / "tiny.toml"
    proc = subprocess.Popen([sys.executable, "-m", "kit", "train", "exp=tiny", "seeds=[1,2,3]",
                             "--jobs", "2", "train.epochs=3", "-q"], cwd=tmp_path,
                            env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/tiny/*-s1/config.toml")):
        time.sleep(0.02)
    text = experiment.read_text()
    experiment.write_text(text.replace("[train]", "[train]\nweight_decay = 0.5", 1))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    decays = {tomllib.loads(c.read_text())["train"]["weight_decay"]
              for c in tmp_path.glob("runs/tiny/*/config.toml")}
    assert len(list(tmp_path.glob("runs/tiny/*/config.toml"))) == 3 and 0.5 not in decays


def test_a_killed_run_of_changed_data_is_flagged_in_runs_and_report(env, tmp_path):
    """A run killed before its metrics.json has the digests its start recorded: kit runs and
    kit report check them as for a finished run (its old predictions were scored silently
    against the new file's truth and oracle)."""
    import shutil

    for name in ("valid.parquet", "valid_oracle.parquet"):
        shutil.copy(env / "data" / name, tmp_path / name)
    run = tmp_path / "runs" / "tiny" / "killed"
    run_cli("train", "exp=tiny", f"data.valid={tmp_path / 'valid.parquet'}", "train.epochs=2",
            "--run-dir", run, "-q")
    (run / "metrics.json").unlink()  # killed before its end
    listed = json.loads(run_cli("runs", "--runs-dir", tmp_path / "runs", "--json").output)
    assert listed[0]["oracle_fraction"] is not None and listed[0]["validated_sha256"]
    frame = pl.read_parquet(tmp_path / "valid.parquet")
    frame.with_columns(pl.col("t0") * -1).write_parquet(tmp_path / "valid.parquet")
    result = run_cli("runs", "--runs-dir", tmp_path / "runs")
    assert "note:" in result.output and "has changed since" in result.output
    [row] = json.loads(run_cli("runs", "--runs-dir", tmp_path / "runs", "--json").output)
    assert row["data_changed"] and row["oracle_fraction"] is None
    run_cli("report", run)
    report = (run / "report" / "report.md").read_text()
    assert "has changed since" in report and "oracle" not in report.lower()


def test_report_gives_the_oracle_as_runs_does_without_the_scatter(env, tmp_path):
    """kit runs shows the oracle fraction from val_rows.npy alone; kit report left the oracle
    out whenever the scatter could not be drawn (val_preds.npy missing)."""
    run = tmp_path / "runs" / "tiny" / "r"
    run_cli("train", "exp=tiny", "train.epochs=1", "--run-dir", run, "-q")
    (run / "val_preds.npy").unlink()
    [row] = json.loads(run_cli("runs", "--runs-dir", tmp_path / "runs", "--json").output)
    run_cli("report", run)
    report = (run / "report" / "report.md").read_text()
    assert row["oracle_fraction"] is not None and "of the oracle)" in report
    assert "pred_vs_true.png not drawn: the run has no val_preds.npy" in report


def test_resume_prefers_the_run_its_command_started_and_notes_an_edited_file(
        env, tmp_path, monkeypatch):
    """`--resume` without --run-dir took the newest unfinished run, whatever command started
    it: another run's (other overrides) continued silently, and an edited experiment file
    was ignored without a word."""
    import shutil

    exps = tmp_path / "exps"
    exps.mkdir()
    shutil.copy(env / "experiments" / "tiny.toml", exps / "tiny.toml")
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    run_cli("train", "exp=tiny", "train.epochs=3", "--stop-after-epochs", "1", "-q")
    (first,) = _run_dirs(tmp_path / "runs" / "tiny")
    time.sleep(1.1)  # another second: another run id
    run_cli("train", "exp=tiny", "train.epochs=3", "train.lr=1e-2", "--stop-after-epochs", "1",
            "-q")
    second = next(r for r in _run_dirs(tmp_path / "runs" / "tiny") if r != first)
    result = run_cli("train", "exp=tiny", "train.epochs=3", "--resume", "--stop-after-epochs",
                     "1", "-q")
    assert "note:" not in result.output
    epochs = {r.name: len((r / "history.jsonl").read_text().splitlines())
              for r in (first, second)}
    assert epochs == {first.name: 2, second.name: 1}  # its own run, not the newer one
    from kit.train.recipe import check_config, config_changes, experiment_config

    command = check_config(experiment_config("tiny", ["train.epochs=3"]))
    assert config_changes(first, command) == []  # config.toml as written, read back
    assert config_changes(first, {**command, "description": "second try"}) == []
    assert config_changes(second, command) == ["train.lr"]
    # an edited experiment file: the run goes on with its own config.toml, and says so
    text = (exps / "tiny.toml").read_text()
    (exps / "tiny.toml").write_text(text.replace("[train]", "[train]\nweight_decay = 0.5", 1))
    assert (exps / "tiny.toml").read_text() != text
    out = run_cli("train", "exp=tiny", "train.epochs=3", "--resume", "-q").output
    assert "note: --resume continues" in out and "differs in train.weight_decay" in out
    assert json.loads((first / "metrics.json").read_text())["finished"]
    assert "weight_decay = 0.5" not in (first / "config.toml").read_text()


def test_a_run_stopped_before_its_first_epoch_leaves_nothing_to_resume(env, tmp_path,
                                                                       monkeypatch):
    """What a run writes as it starts (config.toml, data_sha256.json, spec.json) is no run: a Ctrl-C
    before its first epoch ends removes it and its group record, and says so."""
    from kit.train import recipe, trainer
    from kit.train.groups import NothingStarted

    def interrupted(config, data, model, files, **kwargs):
        assert {p.name for p in files.root.iterdir()} == {"config.toml", "data_sha256.json",
                                                           "spec.json"}
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:  # (a plain one would stop pytest)
        recipe.train_experiment("tiny", progress=False, runs_dir=tmp_path / "runs")
    assert isinstance(stopped.value, NothingStarted)
    # its empty folders go with it (r264: runs/EXP/ and runs/EXP/.groups/ were left)
    assert list((tmp_path / "runs").iterdir()) == []
    # a folder the experiment already had stays, with what it holds
    (tmp_path / "runs" / "tiny").mkdir()
    (tmp_path / "runs" / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        recipe.train_experiment("tiny", progress=False, runs_dir=tmp_path / "runs")
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["notes.txt"]


def test_claims_go_on_when_another_command_removes_the_empty_folders_meanwhile(env, tmp_path,
                                                                              monkeypatch):
    """A failed group removes the runs/EXP and .groups folders it left empty (r264); another
    command of the experiment claiming its group or a sweep trial's folder in between made
    them before, then found them gone (FileNotFoundError, r268)."""
    import pathlib
    import shutil

    from kit.sweep import claim_folder
    from kit.train import groups
    from kit.train.recipe import experiment_config

    exp = tmp_path / "runs" / "tiny"
    real_time, real_mkdir = groups.time.time, pathlib.Path.mkdir

    def removed_first():  # claim_group reads the clock between its mkdir and its claim
        monkeypatch.setattr(groups.time, "time", real_time)
        shutil.rmtree(exp)
        return real_time()

    monkeypatch.setattr(groups.time, "time", removed_first)
    stamp = groups.claim_group(exp, [1], 0, experiment_config("tiny"))
    assert (exp / groups.GROUPS_DIR / f"{stamp}.json").is_file() and (exp / f"{stamp}-s1").is_dir()
    trial = tmp_path / "runs" / "other" / "s-t0000"

    def mkdir(self, *args, **kwargs):
        if self == trial:  # between claim_folder's parent mkdir and the trial's own
            monkeypatch.setattr(pathlib.Path, "mkdir", real_mkdir)
            shutil.rmtree(trial.parent)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    assert claim_folder(trial) == trial and trial.is_dir()


def test_a_run_that_made_only_its_tensorboard_folder_leaves_nothing_to_resume(tmp_path):
    """train.tensorboard = true makes its writer's folder before the first epoch: that folder
    is part of a run's start too, so a Ctrl-C in the first epoch still leaves nothing (it left
    the run and its group, and said "continue with --resume"). A run whose epoch ended (its
    history.jsonl beside the folder) is kept."""
    from kit.run_record import DATA_RECORD, TRAINED_SPEC
    from kit.train.groups import GROUPS_DIR, NothingStarted, dropped_if_unused
    from kit.train.runs import TENSORBOARD_DIR

    exp, stamp = tmp_path / "runs" / "tiny", "20991231-000000"
    for trained in (False, True):
        run = exp / f"{stamp}-s1"
        (run / TENSORBOARD_DIR).mkdir(parents=True)
        (run / TENSORBOARD_DIR / "events.out.tfevents.1.host").write_bytes(b"\0")
        for name in ("config.toml", DATA_RECORD, TRAINED_SPEC) + (
                ("history.jsonl",) if trained else ()):
            (run / name).write_text("")
        (exp / GROUPS_DIR).mkdir(exist_ok=True)
        (exp / GROUPS_DIR / f"{stamp}.json").write_text("{}")
        with pytest.raises(KeyboardInterrupt) as stopped, dropped_if_unused(exp, [1], 0, stamp):
            raise KeyboardInterrupt
        assert isinstance(stopped.value, NothingStarted) is not trained
        assert run.is_dir() is trained
        assert (exp / GROUPS_DIR / f"{stamp}.json").is_file() is trained


def test_a_copied_checkout_compares_its_own_data_files(tmp_path, monkeypatch):
    """Relative data paths resolve where the readers run: the file select, report and resume
    would read is the one compared, in a copy of the checkout too."""
    import shutil

    from kit.run_record import data_changes, data_digests

    a = tmp_path / "a"
    (a / "data").mkdir(parents=True)
    (a / "data" / "valid.parquet").write_bytes(b"PAR1 the file the run validated on")
    run = a / "runs" / "exp" / "r"
    run.mkdir(parents=True)
    config = {"data": {"train": "data/valid.parquet", "split": "file",
                       "valid": "data/valid.parquet", "cache_dir": "data/cache"}}
    (run / "config.toml").write_text('[data]\ntrain = "data/valid.parquet"\n'
                                     'valid = "data/valid.parquet"\n')
    monkeypatch.chdir(a)
    (run / "metrics.json").write_text(json.dumps({"data_sha256": data_digests(config)}))
    assert data_changes(run) == []
    shutil.copytree(a, tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")  # the copy: its own files are compared
    (tmp_path / "b" / "data" / "valid.parquet").write_bytes(b"PAR1 regenerated in the copy")
    assert data_changes(Path("runs/exp/r")) == ["data/valid.parquet"]
    (a / "data" / "valid.parquet").write_bytes(b"PAR1 changed in the original")
    monkeypatch.chdir(a)
    assert data_changes(run) == ["data/valid.parquet"]
    monkeypatch.chdir(tmp_path / "b")
    (tmp_path / "b" / "data" / "valid.parquet").write_bytes(b"PAR1 the file the run validated on")
    assert data_changes(Path("runs/exp/r")) == []  # the copy's file is the run's again
    # `kit runs --runs-dir` from another folder with its own data/: the run's checkout's files
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "valid.parquet").write_bytes(b"PAR1 another project's file")
    monkeypatch.chdir(other)
    assert data_changes(tmp_path / "b" / "runs" / "exp" / "r") == []
    assert data_changes(run) == ["data/valid.parquet"]  # a's file did change
    # a resume reads the files here: it compares them
    assert data_changes(tmp_path / "b" / "runs/exp/r", reading_here=True) == ["data/valid.parquet"]


def test_packing_an_unfinished_run_says_so_and_a_missing_run_is_named(env, tmp_path):
    run = tmp_path / "r"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    out = run_cli("pack", run, "--out", tmp_path / "subs").output
    assert "packed" in out and "has not finished training (epoch 1 of 3;" in out
    assert "--resume --run-dir" in out
    assert "`kit train tiny --resume --run-dir" in out  # the experiment named
    # as a member of an ensemble too (it packed without a word)
    (tmp_path / "e.toml").write_text(f'[[members]]\nruns = ["{run}"]\nweights = [1.0, 1.0]\n')
    out = run_cli("pack", "--ensemble", tmp_path / "e.toml", "--out", tmp_path / "subs").output
    assert f"note: {run} has not finished training (epoch 1 of 3;" in out
    (run / "metrics.json").unlink()  # killed (or still running): no metrics.json yet
    out = run_cli("pack", run, "--out", tmp_path / "subs").output
    assert "has not finished training (epoch 1 of 3;" in out
    for name, said in (("study-t0003", "a sweep trial: `kit sweep tiny ... --study study`"),
                       # a trial beside a taken folder (sweep.claim_folder's names)
                       ("study-t0004-20261205-045736-2758", "--study study`"),
                       ("study-t0004-20261205-045736-2758-1", "--study study`"),
                       ("x-s1-fold2of3", "--folds 3 --resume"),
                       ("ablate-20261203-040724-4ade-raw-s7",
                        "--resume " + str(run.parent / "ablate-20261203-040724-4ade.json"))):
        run = run.rename(run.with_name(name))
        out = run_cli("pack", run, "--out", tmp_path / "subs").output
        assert said in out and "--run-dir" not in out
    out = run_cli("pack", tmp_path / "nowhere", "--out", tmp_path / "subs", expect=2).output
    assert "nowhere: no such run directory" in out
    # a run stopped in its first epoch: no best.pt yet, but a run (r271: "not a run")
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.toml").write_text((run / "config.toml").read_text())
    out = run_cli("pack", started, "--out", tmp_path / "subs", expect=2).output
    assert "a run with no finished epoch yet, so no best.pt to pack" in " ".join(out.split())
    # an ensemble file given as RUN: the option it needs (r263: "not a checkpoint")
    out = run_cli("pack", tmp_path / "e.toml", "--out", tmp_path / "subs", expect=2).output
    assert f"e.toml: a TOML file, not a run or checkpoint; an ensemble file packs with `kit " \
           f"pack --ensemble {tmp_path / 'e.toml'}`" in " ".join(out.split()), out
    # a run's config.toml: its run (r268: --ensemble advised, which then failed)
    out = run_cli("pack", run / "config.toml", "--out", tmp_path / "subs", expect=2).output
    assert f"pack the run it belongs to: `kit pack {run}`" in " ".join(out.split()), out


def test_a_run_folder_trains_in_one_process_at_a_time(env, tmp_path):
    import fcntl

    run = tmp_path / "r"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    fd = os.open(run, os.O_RDONLY)  # another process training it holds this lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = run_cli("train", "exp=tiny", "--resume", "--run-dir", run, "-q", expect=2).output
        assert "is being trained by another process" in out
        # pack says it trains still, not to resume it (which would fail as above)
        out = run_cli("pack", run, "--out", tmp_path / "subs").output
        assert "is still being trained by another process (epoch 1 of 3)" in out
        assert "--resume" not in out
    finally:
        os.close(fd)
    assert len((run / "history.jsonl").read_text().splitlines()) == 1  # nothing interleaved
    run_cli("train", "exp=tiny", "--resume", "--run-dir", run, "-q")  # free again: resumes
    assert json.loads((run / "metrics.json").read_text())["finished"]


def test_a_folder_that_cannot_be_locked_still_trains_with_a_warning(env, tmp_path,
                                                                     monkeypatch):
    import errno
    import fcntl

    def nfs_flock(fd, op):  # Linux NFS: flock is emulated by write locks, none on a folder
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    from kit.train.recipe import experiment_config, train_one
    from kit.train.runs import RunFiles

    with pytest.warns(RuntimeWarning, match="cannot lock the run folder"):
        metrics = train_one(experiment_config("tiny"), RunFiles(tmp_path / "r"), progress=False)
    assert metrics["finished"]


def test_a_run_whose_last_checkpoint_is_deleted_trains_again_on_resume(env, tmp_path):
    run = tmp_path / "r"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    (run / "last.pt").write_bytes(b"garbage")
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", run, expect=2).output
    assert "corrupt" in out and "delete it and run the same command again" in out
    (run / "last.pt").unlink()  # as the message says
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", run, "-q").output
    assert "has no last.pt to resume from: training it again from its start" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["epochs"] == 3  # trained again from its start


def test_an_auto_batch_size_is_recorded_and_reused_on_resume(env, tmp_path, monkeypatch):
    # the finder needs CUDA (kit train refuses batch_size = 0 on CPU in check_config); here a
    # stand-in picks 12 once, and a second search would fail: the resume must not search
    from kit.train import batch_finder
    from kit.train.recipe import experiment_config, stored_config, train_one
    from kit.train.runs import RunFiles

    sizes = iter([12])
    monkeypatch.setattr(batch_finder, "find_batch_size", lambda *args: next(sizes))
    files = RunFiles(tmp_path / "r")
    train_one(experiment_config("tiny", ["train.batch_size=0"]), files, stop_after_epochs=1,
              progress=False)
    # config.toml keeps 0 (the same command, batch_size=0 included, resumes it); the size
    # found goes with the checkpoint and into metrics.json
    assert tomllib.loads(files.config_path.read_text())["train"]["batch_size"] == 0
    assert json.loads(files.metrics.read_text())["batch_size_found"] == 12
    train_one(stored_config(files, ["train.batch_size=0"]), files, resume=True, progress=False)
    metrics = json.loads(files.metrics.read_text())
    assert metrics["finished"] and metrics["batch_size_found"] == 12
    run_cli("report", files.root)
    assert "batch 0 (auto: 12)" in (files.root / "report" / "report.md").read_text()
    whole = RunFiles(tmp_path / "whole")
    train_one(experiment_config("tiny", ["train.batch_size=12"]), whole, progress=False)
    np.testing.assert_allclose(np.load(files.val_preds), np.load(whole.val_preds), atol=1e-5)


def test_the_schedule_counts_only_chunks_that_learn(env, tmp_path):
    # tiny-lob's warm-up is 10 steps: with chunks of 5, the first two take no optimizer step
    for name, chunk in (("whole", 0), ("chunked", 5)):
        run_cli("train", "exp=tiny", "train.epochs=2", f"train.chunk={chunk}", "--run-dir",
                tmp_path / name, "-q")
    lrs = {name: [json.loads(line)["lr"] for line in
                  (tmp_path / name / "history.jsonl").read_text().splitlines()]
           for name in ("whole", "chunked")}
    np.testing.assert_allclose(lrs["chunked"], lrs["whole"], atol=1e-9)
    assert lrs["chunked"][-1] == pytest.approx(0.0, abs=1e-9)  # the cosine reaches its end



def test_a_onecycle_run_records_the_rate_its_last_step_trained_at(env, tmp_path):
    """torch's OneCycleLR computes a rate past its end, where its cosine rises again: the
    history's last lr was 475x the rate the schedule ended at (r279)."""
    run_cli("train", "exp=tiny", "train.epochs=2", "train.schedule=onecycle", "train.lr=3e-3",
            "--run-dir", tmp_path / "r", "-q")
    history = [json.loads(line) for line in
               (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["lr"] == pytest.approx(3e-3 / 25 / 1e4, rel=1e-6)  # torch's divisors
    assert history[0]["lr"] > 1e-4  # mid-cycle: not held


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU run says")
def test_an_amp_asked_for_by_name_on_cpu_is_said_to_be_float32(env, tmp_path):
    """train.amp = fp16 on CPU trained float32 without a word (r279); auto says nothing."""
    out = run_cli("train", "exp=tiny", "train.epochs=1", "train.amp=fp16", "--run-dir",
                  tmp_path / "a", "-q").output
    assert (f"note: train.amp = fp16 applies on CUDA only: {tmp_path / 'a'} trains in float32 "
            "on cpu") in out
    out = run_cli("train", "exp=tiny", "train.epochs=1", "train.amp=auto", "--run-dir",
                  tmp_path / "b", "-q").output
    assert "applies on CUDA only" not in out

def test_each_epoch_shuffles_the_sequences_its_own_way():
    """Every epoch's batches came in the same order when the shuffle ignored the epoch."""
    from kit.train.trainer import epoch_order

    orders = [epoch_order(24, 7, epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(24)) for order in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(epoch_order(24, 7, 1), orders[1])  # (seed, epoch) alone


def test_the_first_scored_chunk_starts_from_the_state_the_warmup_chunks_reached(
        env, tmp_path, monkeypatch):
    """With train.chunk shorter than the warm-up, chunks of warm-up steps only advance the
    state: dropped, the first scored chunk started from the initial state as if the warm-up
    had not been run."""
    from kit.train import trainer
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    calls, real_fit = [], trainer.fit

    def recording_fit(config, data, model, *args, **kwargs):
        def hook(module, inputs, output):
            if module.training and len(calls) < 3:  # the first batch's first three chunks
                calls.append(([s.detach().clone() for s in inputs[1]],
                              [s.detach().clone() for s in output[1]]))
        model.register_forward_hook(hook)
        return real_fit(config, data, model, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", recording_fit)
    config = check_config(experiment_config("tiny", ["train.epochs=1", "train.chunk=5",
                                                     "train.warmup_epochs=0"]))
    train_one(config, RunFiles(tmp_path / "r"), progress=False)
    # tiny-lob's warm-up is 10 steps: chunks 0-4 and 5-9 only advance the state, 10-14 learns
    (start, warmed), (carried, warmed_more), (scored_from, _) = calls
    assert not any(s.any() for s in start)  # a batch starts from the initial (zero) state
    for given, reached in ((carried, warmed), (scored_from, warmed_more)):
        assert all(torch.equal(a, b) for a, b in zip(given, reached, strict=True))
    assert all(s.any() for s in scored_from)


def test_a_corrupted_checkpoint_is_reported_by_name(env, tmp_path):
    run = tmp_path / "broken"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    paused = (run / "metrics.json").read_bytes()
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", run, expect=2).output
    assert "last.pt" in out and "corrupt" in out and "Traceback" not in out
    assert (run / "metrics.json").read_bytes() == paused  # a resume that cannot start keeps it
    # packing the resume checkpoint says what it is and what to pack instead
    (run / "last.pt").write_bytes(data)
    out = run_cli("pack", run / "last.pt", "--out", tmp_path / "subs", expect=2).output
    assert "a resume checkpoint" in out and "its best.pt" in out


def test_a_last_checkpoint_of_another_model_is_named_not_a_traceback(env, tmp_path):
    """A last.pt copied from another run (or a feature group that makes more columns now):
    load_state_dict's RuntimeError came out as a traceback, exit 1."""
    run_cli("train", "exp=tiny", "--run-dir", tmp_path / "a", "--stop-after-epochs", "1", "-q")
    run_cli("train", "exp=tiny", "model.hidden=24", "--run-dir", tmp_path / "b",
            "--stop-after-epochs", "1", "-q")
    (tmp_path / "b" / "last.pt").write_bytes((tmp_path / "a" / "last.pt").read_bytes())
    paused = (tmp_path / "b" / "metrics.json").read_bytes()
    out = run_cli("train", "exp=tiny", "model.hidden=24", "--resume", "--run-dir",
                  tmp_path / "b", expect=2).output
    # (its config.toml is not the one that last.pt was written with: said as such, r264)
    assert "config.toml is not the config last.pt was written with: model.hidden (was 16, " \
        "now 24)" in out and "or a last.pt of another run" in out, out
    assert "Traceback" not in out
    assert (tmp_path / "b" / "metrics.json").read_bytes() == paused
    # one of the same config whose weights do not fit (e.g. a feature group that makes more
    # columns now): the checkpoint is named
    checkpoint = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    checkpoint["config_toml"] = (tmp_path / "b" / "config.toml").read_text()
    torch.save(checkpoint, tmp_path / "b" / "last.pt")
    out = run_cli("train", "exp=tiny", "model.hidden=24", "--resume", "--run-dir",
                  tmp_path / "b", expect=2).output
    assert "last.pt: does not fit this run's model and training settings (RuntimeError" in out
    assert "delete it and run the same command again" in out and "Traceback" not in out
    assert (tmp_path / "b" / "metrics.json").read_bytes() == paused


def test_a_run_with_an_auto_batch_size_resumes_on_a_cpu(env, tmp_path):
    """train.batch_size = 0 is refused on a CPU for a new run; a run a GPU started holds its
    batch size in last.pt, but the same command (batch_size=0 included) was refused there."""
    run = tmp_path / "gpu-started"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    config = run / "config.toml"
    config.write_text(config.read_text().replace("batch_size = 8", "batch_size = 0"))
    assert "batch_size = 0" in config.read_text()
    # as the GPU wrote it: last.pt keeps that config.toml's text (and the size it found)
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    checkpoint["config_toml"] = config.read_text()
    torch.save(checkpoint, run / "last.pt")
    out = run_cli("train", "exp=tiny", "train.batch_size=0", "--resume", "--run-dir", run,
                  "-q").output
    assert "finished" in out
    out = run_cli("train", "exp=tiny", "train.batch_size=0", "--run-dir", tmp_path / "new",
                  expect=2).output
    assert "needs a CUDA device" in out


def test_a_checkpoint_of_random_bytes_is_one_sentence_and_no_torch_warning(tmp_path):
    """torch's message was cut at 120 characters mid-word ("... `torch.load` fr)"), and its
    UserWarning about the pickle protocol came out after kit's error."""
    import warnings

    from kit.train.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "last.pt"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    said = str(info.value)
    assert said.startswith(f"{path}: the checkpoint is corrupt or not a kit checkpoint (")
    assert re.search(r"\((\w+Error): [^()]*\); delete it and run the same command again", said)
    assert "weights_only" not in said


@contextlib.contextmanager
def file_size_limit(size: int):
    """Writes past `size` bytes fail with EFBIG (as a full disk fails with ENOSPC)."""
    import resource

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails, not the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_checkpoint_the_disk_cannot_hold_is_an_os_error_naming_it(tmp_path):
    """A write the file system refuses (here a file-size limit: EFBIG, as a full disk gives
    ENOSPC) is an OSError naming the checkpoint, which the CLI prints as one line; torch.save
    writing to the file turned it into a RuntimeError of its zip writer (a traceback), and the
    temp file is removed."""
    import errno

    import torch

    from kit.cli import os_error_text
    from kit.train.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    with file_size_limit(100_000), pytest.raises(OSError) as raised:
        save_checkpoint({"model": {"w": torch.zeros(100_000)}}, path)  # 400 KB
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert os_error_text(raised.value).startswith(f"{path}: File too large")
    assert list(tmp_path.iterdir()) == []


def test_tbptt_batch_one_chunk_one_ema_swa_and_schedules(env, tmp_path):
    for i, extra in enumerate([
        ["train.chunk=1", "train.batch_size=1", "train.epochs=1", "train.max_train_seqs=2"],
        ["train.chunk=7", "train.ema=0.9", "train.swa_start=2", "train.schedule=onecycle"],
        ["train.schedule=plateau", "train.epochs=2"],
    ]):
        run_cli("train", "exp=tiny", *extra, "--run-dir", tmp_path / f"r{i}", "-q")
        metrics = json.loads((tmp_path / f"r{i}" / "metrics.json").read_text())
        assert np.isfinite(metrics["score"])


def test_seeds_train_one_run_each(env, tmp_path):
    run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=1", "-q")
    runs = _run_dirs(tmp_path / "runs" / "tiny")
    assert [r.name.split("-s")[-1] for r in runs] == ["1", "2"]
    out = run_cli("train", "exp=tiny", "seeds=[1,1]", expect=2).output
    assert "repeat a seed" in out
    # a seed that fails does not stop the next one from training
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame.with_columns(pl.col("t0") * 1e30).write_parquet(tmp_path / "extreme.parquet")
    result = run_cli("train", "exp=tiny", "seeds=[10,11]", "train.epochs=1", "-q",
                     f"data.train={tmp_path / 'extreme.parquet'}", expect=2)
    assert "training failed for seed 10, seed 11" in result.output
    assert [r.name.split("-s")[-1] for r in _run_dirs(tmp_path / "runs" / "tiny")][-2:] == [
        "10", "11"]
    result = run_cli("train", "exp=tiny", "seeds=[10,11]", "--folds", 2, "train.epochs=1", "-q",
                     f"data.train={tmp_path / 'extreme.parquet'}", expect=2)  # fold groups too
    assert "training failed for seed 10, seed 11" in result.output


def test_a_group_whose_seeds_all_fail_before_an_epoch_is_not_told_to_resume(env, tmp_path):
    """Nothing trained: the group's record and folders go, and the advice to run the same
    command with --resume ended in "no unfinished group ... to resume"."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame.drop("p3").write_parquet(tmp_path / "short.parquet")
    command = ["train", "exp=tiny", "seeds=[1,2]", "-q", f"data.train={tmp_path / 'short.parquet'}"]
    out = run_cli(*command, expect=2).output
    assert "training failed for seed 1, seed 2" in out
    assert "nothing was kept: fix the cause and run the same command again (without " \
        "--resume)" in out and "The same command with --resume" not in out
    assert "no unfinished group" in run_cli(*command, "--resume", expect=2).output


def test_jobs_train_seeds_side_by_side_as_they_would_one_by_one(env, tmp_path):
    """--jobs 2: each seed in its own process (one thread each on 2 cores); every seed's run
    is the run it would be on its own (same seed, same thread count: same weights)."""
    out = run_cli("train", "exp=tiny", "seeds=[3,4,5]", "train.epochs=2", "--jobs", 2).output
    runs = _run_dirs(tmp_path / "runs" / "tiny")
    assert [r.name.split("-s")[-1] for r in runs] == ["3", "4", "5"]
    assert out.count(" epoch 2: loss ") == 3 and "seed 5 epoch 1:" in out  # progress lines
    assert all(f"{run.name}: score" in out for run in runs)  # a result line for every run
    threads = tomllib.loads((runs[0] / "config.toml").read_text())["train"]["threads"]
    alone = tmp_path / "alone"
    run_cli("train", "exp=tiny", "seed=4", "train.epochs=2", f"train.threads={threads}",
            "--run-dir", alone, "-q")
    together = json.loads((runs[1] / "metrics.json").read_text())
    assert together["score"] == pytest.approx(json.loads((alone / "metrics.json")
                                                          .read_text())["score"], abs=1e-6)
    out = run_cli("train", "exp=tiny", "seeds=[3,4]", "--jobs", 2, "--folds", 2,
                  expect=2).output
    assert "does not combine" in out


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "train.lrr"),
    ("train.lr=fast", "train.lr must be float"),
    ("model.hiden=8", "hiden"),
    ("train.schedule=sawtooth", "sawtooth"),
])
def test_bad_configs_fail_fast_naming_the_key(env, override, message):
    out = run_cli("train", "exp=tiny", override, "-q", expect=2).output
    assert message in out and "Traceback" not in out


def test_params_prints_the_count(env):
    out = run_cli("params", "exp=tiny").output
    assert "parameters" in out
    assert "'hidden': 5," in run_cli("params", "exp=tiny", "model.hidden=5").output
    # an override first is named as such, as kit train does ("no experiment" before)
    out = run_cli("params", "model.hidden=5", "exp=tiny", expect=2).output
    assert "'model.hidden=5' stands where the experiment goes" in out, out


def test_folds_train_one_run_per_fold_with_out_of_fold_predictions(env, tmp_path):
    out = run_cli("train", "exp=tiny", "--folds", "3", "train.epochs=1", "-q").output
    assert "out-of-fold score" in out
    runs = _run_dirs(tmp_path / "runs" / "tiny")
    assert [r.name.split("-")[-1] for r in runs] == ["fold1of3", "fold2of3", "fold3of3", "oof"]
    oof = runs[-1]
    rows = np.load(oof / "oof_rows.npy")
    train = pl.read_parquet(env / "data" / "train.parquet")
    # every scored train row exactly once, each predicted by the fold that did not train on it
    np.testing.assert_array_equal(rows, np.flatnonzero(train["need_prediction"].to_numpy()))
    assert np.load(oof / "oof_preds.npy").shape == (len(rows), 2)
    metrics = json.loads((oof / "metrics.json").read_text())
    assert metrics["folds"] == 3 and np.isfinite(metrics["score"])
    fold_valid = [json.loads((r / "metrics.json").read_text())["valid_seqs"] for r in runs[:3]]
    assert sum(fold_valid) == 24
    # kit runs: the group is validated on every fold of the train file its folds recorded
    row = next(r for r in json.loads(run_cli("runs", "--json").output)
               if r["run_id"] == oof.name)
    digest = json.loads((runs[0] / "metrics.json").read_text())["data_sha256"]
    assert row["validated"] == "oof 3 folds of train.parquet"
    assert row["validated_sha256"] == digest[str(env / "data" / "train.parquet")]
    assert row["experiment"] == "tiny" and row["higher_is_better"] is True
    # a fold run records its fold, and its report reads the truth from the train file (its
    # rows index that file), also while it has no metrics.json yet (running or killed)
    import tomllib

    for i, run in enumerate(runs[:3]):
        assert tomllib.loads((run / "config.toml").read_text())["data"]["fold"] == [3, i]
    (runs[1] / "metrics.json").unlink()
    for run in runs[:2]:
        run_cli("report", run)
        report = (run / "report" / "report.md").read_text()
        assert "![predicted vs true](pred_vs_true.png)" in report, report
        assert "(fold" in report


def _histories(folder: Path) -> dict[str, int]:
    return {run.name: len((run / "history.jsonl").read_text().splitlines())
            for run in sorted(folder.iterdir()) if (run / "history.jsonl").exists()}


@pytest.mark.parametrize("jobs", [1, 2])
def test_resume_continues_every_seed_of_the_group_the_command_started(env, tmp_path, jobs):
    seeds = ["seeds=[3,4,5]", "--jobs", jobs, "-q"]
    run_cli("train", "exp=tiny", *seeds, "--stop-after-epochs", 1)
    exp = tmp_path / "runs" / "tiny"
    runs = _run_dirs(exp)
    assert len({run.name.split("-s")[0] for run in runs}) == 1  # one stamp for the group
    assert list(_histories(exp).values()) == [1, 1, 1]
    # a session at a time: each seed moves on by one epoch (not the newest run three times)
    run_cli("train", "exp=tiny", *seeds, "--stop-after-epochs", 1, "--resume")
    assert list(_histories(exp).values()) == [2, 2, 2]
    # seed 5 killed before its first checkpoint: it starts over in its own folder
    (runs[2] / "last.pt").unlink()
    (runs[2] / "metrics.json").unlink()
    out = run_cli("train", "exp=tiny", *seeds, "--resume").output
    assert _run_dirs(exp) == runs and list(_histories(exp).values()) == [3, 3, 3]
    assert all(json.loads((run / "metrics.json").read_text())["finished"] for run in runs)
    assert out.count("finished") == 3
    # the resumed group ends where uninterrupted runs end
    threads = tomllib.loads((runs[1] / "config.toml").read_text())["train"]["threads"]
    run_cli("train", "exp=tiny", "seed=4", f"train.threads={threads}", "--run-dir",
            tmp_path / "alone", "-q")
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert json.loads((runs[1] / "metrics.json").read_text())["score"] == pytest.approx(
        alone["score"], abs=1e-6)
    # nothing left to continue: said, not guessed
    out = run_cli("train", "exp=tiny", *seeds, "--resume", expect=2).output
    assert "no unfinished group of runs of seeds [3, 4, 5]" in out


def test_resume_leaves_a_group_another_command_is_training(env, tmp_path, monkeypatch):
    """--resume took the newest unfinished group while its own command still trained it: both
    trained its runs, and that command's cleanup then deleted a folder under the resume. A
    group in training is passed over; its folders are never deleted by another's cleanup."""
    from kit.train.groups import dropped_if_unused
    from kit.train.runs import RunFiles

    seeds = ["seeds=[1,2]", "-q", "--stop-after-epochs", 1]
    run_cli("train", "exp=tiny", *seeds)  # the group to resume, paused
    exp = tmp_path / "runs" / "tiny"
    paused = _run_dirs(exp)
    time.sleep(1.1)  # a newer stamp
    run_cli("train", "exp=tiny", *seeds)  # a newer one, "still training" below
    busy = [run for run in _run_dirs(exp) if run not in paused]
    with RunFiles(busy[0]).training():  # another process's lock, as far as flock goes
        run_cli("train", "exp=tiny", "seeds=[1,2]", "-q", "--resume")
        # the held group is all that is left: named as in training, not denied (started
        # again without --resume, as "no unfinished group" said, it trained a second group)
        out = run_cli("train", "exp=tiny", "seeds=[1,2]", "-q", "--resume", expect=2).output
        assert f"the unfinished group {busy[0].name.removesuffix('-s1')} of runs" in out
        assert "is being trained by another command" in out and "without --resume" not in out
    histories = _histories(exp)
    assert all(histories[run.name] > 1 for run in paused)  # the paused group went on
    assert all(histories[run.name] == 1 for run in busy)  # the one in training was left
    # a failing command's cleanup leaves a folder another command trains in
    stamp = "20991231-000000"
    started = exp / f"{stamp}-s9"
    started.mkdir()
    (started / "config.toml").write_text("")
    with RunFiles(started).training(), pytest.raises(RuntimeError), \
            dropped_if_unused(exp, [9], 0, stamp):
        raise RuntimeError("the command failed")
    assert (started / "config.toml").is_file()


def test_resume_names_the_only_unfinished_run_as_in_training(env, tmp_path):
    """The one unfinished run trained by another process: --resume said there was none and to
    start one without --resume, a second run of the same thing."""
    from kit.train.runs import RunFiles

    run_cli("train", "exp=tiny", "-q", "--stop-after-epochs", 1)
    (run,) = _run_dirs(tmp_path / "runs" / "tiny")
    with RunFiles(run).training():
        out = run_cli("train", "exp=tiny", "-q", "--resume", expect=2).output
    assert f"tiny/{run.name} is being trained by another process" in out
    assert "without --resume" not in out
    run_cli("train", "exp=tiny", "-q", "--resume")  # free again: resumed
    assert json.loads((run / "metrics.json").read_text())["finished"]


def test_a_jobs_group_keeps_the_users_threads_and_resumes_with_its_own_command(env, tmp_path):
    """train.threads=2 was replaced by kit's share of the cores in each worker's config, and
    the same command with --resume was then refused for changing it."""
    command = ["train", "exp=tiny", "train.threads=2", "seeds=[1,2]", "--jobs", "2", "-q"]
    run_cli(*command, "--stop-after-epochs", 1)
    runs = _run_dirs(tmp_path / "runs" / "tiny")
    assert [tomllib.loads((run / "config.toml").read_text())["train"]["threads"]
            for run in runs] == [2, 2]
    out = run_cli(*command, "--resume").output
    assert out.count("finished") == 2


def test_folds_of_cut_sequences_are_labelled_as_cut(env, tmp_path):
    """With data.seq_len cutting the sequences, fold and out-of-fold scores are on the kept
    steps only; kit runs labelled them as the whole train file's."""
    run_cli("train", "exp=tiny", "data.seq_len=40", "--folds", "2", "train.epochs=1", "-q")
    table = run_cli("runs", "-e", "tiny").output
    assert "oof 2 folds of first 40 steps of train.parquet" in table
    assert "fold 1/2 (seed 7) of first 40 steps of train.parquet" in table


def test_an_oof_group_takes_its_metric_direction_from_its_fold_runs(env, tmp_path):
    """An -oof folder has no spec.json: its direction came from the spec file its config
    names, and with that file moved the rmse group sorted as higher-is-better."""
    from kit.reports import list_runs

    spec = tmp_path / "rmse.toml"
    spec.write_text((env / "tiny-lob.toml").read_text().replace(
        'name = "weighted_pearson"\nclip = [-6.0, 6.0]', 'name = "rmse"'))
    assert 'name = "rmse"' in spec.read_text()
    run_cli("train", "exp=tiny", f"spec={spec}", "--folds", "2", "train.epochs=1", "-q")
    spec.rename(tmp_path / "moved.toml")
    rows = list_runs(tmp_path / "runs")
    assert len(rows) == 3 and all(r["higher_is_better"] is False for r in rows), rows


def test_folds_need_no_valid_file_and_refuse_the_sequence_limits(env, tmp_path):
    """Fold runs train and validate on the train file: a missing valid file is no reason to
    stop, and train.max_*_seqs, which they cannot honour, are refused instead of ignored."""
    out = run_cli("train", "exp=tiny", "--folds", "2", "train.epochs=1", "-q",
                  "data.valid=/nonexistent/valid.parquet").output
    assert "out-of-fold score" in out
    assert len(_run_dirs(tmp_path / "runs" / "tiny")) == 3
    out = run_cli("train", "exp=tiny", "--folds", "2", "train.max_train_seqs=4",
                  "train.max_valid_seqs=2", "-q", expect=2).output
    assert ("train.max_train_seqs = 4 and train.max_valid_seqs = 2 with --folds: each fold "
            "trains on all the other folds") in out
    assert len(_run_dirs(tmp_path / "runs" / "tiny")) == 3  # nothing new started
    # a held-out fraction and its seed choose one split, which folds do not use
    out = run_cli("train", "exp=tiny", "--folds", "2", "data.split=random",
                  "data.valid_fraction=0.5", "data.split_seed=7", "-q", expect=2).output
    assert ("data.valid_fraction = 0.5 and data.split_seed = 7 choose a single held-out split; "
            "with --folds each fold validates 1/k") in out
    # without data.split: the same message, not "need data.split = random", which fails next
    out = run_cli("train", "exp=tiny", "--folds", "2", "data.valid_fraction=0.5", "-q",
                  expect=2).output
    assert "data.valid_fraction = 0.5 choose a single held-out split" in out, out
    assert len(_run_dirs(tmp_path / "runs" / "tiny")) == 3


def test_resume_of_folds_finishes_the_folds_then_the_out_of_fold_result(env, tmp_path):
    run_cli("train", "exp=tiny", "--folds", 2, "--stop-after-epochs", 1, "-q")
    exp = tmp_path / "runs" / "tiny"
    assert list(_histories(exp).values()) == [1, 1] and not list(exp.glob("*-oof"))
    run_cli("train", "exp=tiny", "--folds", 2, "--resume", "-q")
    assert list(_histories(exp).values()) == [3, 3]
    (oof,) = exp.glob("*-oof")
    assert json.loads((oof / "metrics.json").read_text())["finished"]
    out = run_cli("report", oof, expect=2).output  # the group is no run: its folds are named
    stamp = oof.name.removesuffix("-oof")
    assert "an out-of-fold group" in out and f"{stamp}-fold1of2, {stamp}-fold2of2" in out
    # an uninterrupted fold group ends at the same out-of-fold predictions
    from kit.train.recipe import train_experiment

    whole = tmp_path / "whole"

    train_experiment("tiny", folds=2, progress=False, runs_dir=whole)
    (whole_oof,) = (whole / "tiny").glob("*-oof")
    np.testing.assert_allclose(np.load(oof / "oof_preds.npy"),
                               np.load(whole_oof / "oof_preds.npy"), atol=1e-5)
    out = run_cli("train", "exp=tiny", "--folds", 2, "--resume", expect=2).output
    assert "no unfinished group of 2-fold runs" in out


def test_commands_started_in_the_same_second_never_share_a_stamp(tmp_path, monkeypatch):
    from kit.train import groups

    monkeypatch.setattr(groups.time, "time", lambda: 1_764_662_400.0)  # one frozen second
    base = {"name": "tiny", "seed": 1, "train": {"lr": 0.01}}
    first = groups.claim_group(tmp_path, [1, 2], 0, base)
    second = groups.claim_group(tmp_path, [3], 0, base)  # other seeds: still another stamp
    assert second > first  # the next free second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".groups", f"{first}-s1", f"{first}-s2", f"{second}-s3"])
    record = json.loads((tmp_path / ".groups" / f"{first}.json").read_text())
    assert record == {"seeds": [1, 2], "folds": 0, "config": {"name": "tiny",
                                                               "train": {"lr": 0.01}}}
    # a run folder of a free stamp made by someone else: that second is skipped, whole
    third_stamp = groups.time.strftime("%Y%m%d-%H%M%S",
                                       groups.time.localtime(1_764_662_402.0))
    (tmp_path / f"{third_stamp}-s1").mkdir()
    third = groups.claim_group(tmp_path, [9, 1], 0, base)
    assert third > third_stamp and not (tmp_path / f"{third_stamp}-s9").exists()
    assert not (tmp_path / ".groups" / f"{third_stamp}.json").exists()


def _paused_group(args: list[str]) -> list[Path]:
    """The run folders a `kit train ARGS --stop-after-epochs 1` command made."""
    before = set(Path("runs/tiny").resolve().glob("*-s*"))
    run_cli("train", "exp=tiny", *args, "--stop-after-epochs", 1, "-q")
    return sorted(set(Path("runs/tiny").resolve().glob("*-s*")) - before)


def test_resume_passes_over_a_group_another_command_has_just_started(env, tmp_path):
    """A new group's runs take their locks once their data is built (minutes on real data): a
    --resume in between took that group instead of the paused older one. The command holds
    its group's record from the claim on; here this process holds it, as that command would."""
    import fcntl

    from kit.train.groups import claim_group
    from kit.train.recipe import experiment_config

    older = _paused_group(["seeds=[1,2]"])
    time.sleep(1.1)  # a later stamp
    exp_dir = tmp_path / "runs" / "tiny"
    stamp = claim_group(exp_dir, [1, 2], 0, experiment_config("tiny", []))
    fd = os.open(exp_dir / ".groups" / f"{stamp}.json", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = run_cli("train", "exp=tiny", "seeds=[1,2]", "--resume", "--stop-after-epochs", 1,
                      "-q").output
    finally:
        os.close(fd)
    assert "paused" in out
    histories = _histories(exp_dir)
    assert [histories[run.name] for run in older] == [2, 2]
    assert not list(exp_dir.glob(f"{stamp}-s*/history.jsonl"))  # left to its command


def test_resume_finds_the_group_by_its_seeds_and_refuses_other_settings(env, tmp_path,
                                                                        monkeypatch):
    group = _paused_group(["seeds=[7,8]"])
    time.sleep(1.1)  # a later command: a later stamp
    (single,) = _paused_group(["seed=7"])  # a lone run of seed 7, newer
    out = run_cli("train", "exp=tiny", "seeds=[7,8]", "train.lr=0.05", "--resume",
                  expect=2).output
    assert "was started with other settings (train.lr (was 0.003, now 0.05)): repeat its " \
        "command with --resume (if you did, the experiment file changed since" in out, out
    # the experiment file's description edited since: no other setting (a single run's
    # resume ignores it too)
    experiment = _own_experiments(env, tmp_path, monkeypatch) / "tiny.toml"
    experiment.write_text('description = "second try"\n' + experiment.read_text())
    out = run_cli("train", "exp=tiny", "seeds=[8,7]", "--resume", "--stop-after-epochs", 1,
                  "-q").output
    assert "other settings" not in out
    assert _histories(tmp_path / "runs" / "tiny") == {
        group[0].name: 2, group[1].name: 2, single.name: 1}


def test_an_older_group_resumes_with_its_own_command_beside_a_newer_one(env, tmp_path):
    older = _paused_group(["seeds=[7,8]", "train.lr=0.02"])
    time.sleep(1.1)
    newer = _paused_group(["seeds=[7,8]"])  # same seeds, other settings, unfinished too
    run_cli("train", "exp=tiny", "seeds=[7,8]", "train.lr=0.02", "--resume",
            "--stop-after-epochs", 1, "-q")
    assert _histories(tmp_path / "runs" / "tiny") == {
        older[0].name: 2, older[1].name: 2, newer[0].name: 1, newer[1].name: 1}


def test_a_group_member_that_diverged_at_once_is_kept_and_said(env, tmp_path):
    def diverged(run: Path) -> None:  # as the trainer leaves a run whose first batch overflowed
        (run / "last.pt").unlink()
        metrics = json.loads((run / "metrics.json").read_text())
        metrics |= {"finished": True, "score": None, "best_epoch": None, "per_target": {},
                    "diverged": "train loss inf in batch 1 of epoch 1"}
        (run / "metrics.json").write_text(json.dumps(metrics))

    first, second = _paused_group(["seeds=[1,2]"])
    diverged(first)
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "--resume", "-q").output
    assert f"{first.name}: score - ()" in out and "training diverged" in out
    assert json.loads((second / "metrics.json").read_text())["finished"]
    folds = _paused_group(["--folds", 2, "seed=3"])
    diverged(folds[0])
    out = run_cli("train", "exp=tiny", "seed=3", "--folds", 2, "--resume", expect=2).output
    assert "fold1of2 diverged before any epoch scored" in out and "Traceback" not in out
    # ... before the next fold trained on for nothing (the first command stopped there)
    assert not json.loads((folds[1] / "metrics.json").read_text()).get("finished")


def test_a_command_that_fails_before_training_leaves_no_empty_run_folders(env, tmp_path):
    # a train file without one feature column: found when the arrays are built, after the
    # run folders were claimed
    frame = pl.read_parquet(env / "data" / "train.parquet").drop("p3")
    frame.write_parquet(tmp_path / "short.parquet")
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "-q",
                  f"data.train={tmp_path / 'short.parquet'}", expect=2).output
    assert "p3" in out and "Traceback" not in out
    assert not (tmp_path / "runs" / "tiny").exists()  # nor the folders made for them


def test_the_same_seed_trains_the_same_model(env, tmp_path):
    for name in ("a", "b"):
        run_cli("train", "exp=tiny", "train.epochs=1", "--run-dir", tmp_path / name, "-q")
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "val_preds.npy"),
                                  np.load(tmp_path / "b" / "val_preds.npy"))


def test_tensorboard_logging_writes_event_files(env, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra; install it")
    run_cli("train", "exp=tiny", "train.epochs=2", "train.tensorboard=true",
            "--run-dir", tmp_path / "tb", "-q")
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    # what history.jsonl records, the schedule's rate and each target's score included (r279)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(tmp_path / "tb" / "tensorboard")).Reload()
    history = [json.loads(line) for line in
               (tmp_path / "tb" / "history.jsonl").read_text().splitlines()]
    for tag, values in (("train/lr", [h["lr"] for h in history]),
                        ("val/score", [h["val_score"] for h in history]),
                        ("val/t0", [h["val_per_target"]["t0"] for h in history])):
        assert [e.value for e in logged.Scalars(tag)] == pytest.approx(values, rel=1e-6), tag


@pytest.fixture
def grouped_train(env, tmp_path) -> Path:
    """The tiny train file with a user column (3 sequences per user) and a per-row statistic."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame = frame.with_columns(
        (pl.col("seq_ix") // 3).alias("user"),
        (pl.col("p0") * 0 + pl.col("seq_ix") % 5).alias("level"),
        pl.when(pl.col("seq_ix") == 4).then(None).otherwise(pl.col("seq_ix") // 3)
        .alias("maybe_user"),  # null in one sequence
        pl.when(pl.col("seq_ix") % 2 == 0).then(float("nan")).otherwise(pl.col("seq_ix") // 3)
        .cast(pl.Float64).alias("nan_user"),  # NaN in every other sequence
        pl.lit("x").alias("label"),  # not a number
        pl.concat_list(pl.col("seq_ix") // 3, pl.col("seq_ix") // 3)
        .alias("user_list"),  # a list per row
        pl.struct((pl.col("seq_ix") // 3).alias("u"), "p0").alias("user_struct"))
    path = tmp_path / "grouped.parquet"
    frame.write_parquet(path)
    return path


def _split_config(train: Path, **data) -> dict:
    from kit.config import load_experiment, resolve

    config = load_experiment("tiny")
    config["data"] = {**config["data"], "train": str(train), **data}
    return resolve(config)


def _sequence_ids(path: Path, rows: np.ndarray) -> np.ndarray:
    return np.unique(pl.read_parquet(path, columns=["seq_ix"])["seq_ix"].to_numpy()[rows])


def test_a_random_holdout_of_the_train_file_validates(env, grouped_train, tmp_path):
    from kit.data.splits import random_split
    from kit.ensemble import load_candidate, select_ensemble

    out = run_cli("train", "exp=tiny", f"data.train={grouped_train}", "data.split=random",
                  "data.valid_fraction=0.25", "data.valid=nowhere.parquet", "train.epochs=1",
                  "data.split_seed=3", "seeds=[1,2]", "-q").output
    assert "score" in out
    runs = _run_dirs(tmp_path / "runs" / "tiny")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert (metrics["train_seqs"], metrics["valid_seqs"]) == (18, 6)
    rows = np.load(runs[0] / "val_rows.npy")  # rows of the train file
    ids = pl.read_parquet(grouped_train, columns=["seq_ix"])["seq_ix"].to_numpy()
    expected = random_split(np.unique(ids), (0.75, 0.25), seed=3)[1]
    np.testing.assert_array_equal(_sequence_ids(grouped_train, rows), expected)
    # both seeds hold out the same sequences (data.split_seed), so they blend
    np.testing.assert_array_equal(np.load(runs[1] / "val_rows.npy"), rows)
    doc, _, _ = select_ensemble(runs, iters=3, out=tmp_path / "e.toml")
    assert doc["ensemble"]["data"] == str(grouped_train)
    # the run's predictions are candidates on the train file, and its report reads that file
    assert load_candidate(runs[0]).data == grouped_train
    run_cli("report", runs[0])
    report = (runs[0] / "report" / "report.md").read_text()
    assert "![predicted vs true](pred_vs_true.png)" in report, report
    assert f"validated on `{grouped_train}` (random 0.25 (split_seed 3) of " in report
    # parity's default data is that file, extra columns (user, level, label) and all: the
    # scorer replay reads the spec's columns by name
    from kit.export.pack import pack_run

    packed = pack_run(runs[0], "holdout", tmp_path / "subs")
    out = run_cli("parity", packed.folder, "--seqs", 3).output
    assert "parity OK" in out  # (its scores are not the run's: said)
    assert re.search(r"validated on a held-out part of .*training sequences\s+among them", out)
    out = run_cli("score", packed.zip_path, "--data", grouped_train, "--seqs", 2, "-q").output
    assert "score" in out and "contract" not in out


def test_a_grouped_stratified_holdout_keeps_each_user_on_one_side(env, grouped_train):
    from kit.data.splits import group_split
    from kit.train.data import load_train_data

    config = _split_config(grouped_train, split="group", group="user", stratify="level",
                           valid_fraction=0.3)
    data = load_train_data(config)
    frame = pl.read_parquet(grouped_train, columns=["seq_ix", "user"])
    valid_ids = _sequence_ids(grouped_train, data.valid.rows)
    users = frame.group_by("seq_ix").agg(pl.col("user").first())
    valid_users = set(users.filter(pl.col("seq_ix").is_in(valid_ids.tolist()))["user"])
    train_users = set(users.filter(~pl.col("seq_ix").is_in(valid_ids.tolist()))["user"])
    assert valid_users and train_users and not valid_users & train_users
    assert len(data.train) + len(data.valid) == 24 and len(data.valid) % 3 == 0
    # the user and level columns reached the split: it is group_split's on them
    per_seq = pl.read_parquet(grouped_train).group_by("seq_ix", maintain_order=True).agg(
        pl.col("user").first(), pl.col("level").mean())
    expected = group_split(per_seq["seq_ix"].to_numpy(), per_seq["user"].to_numpy(), (0.7, 0.3),
                           seed=0, stratify=per_seq["level"].to_numpy())[1]
    np.testing.assert_array_equal(valid_ids, expected)
    again = load_train_data(config)  # deterministic per seed
    np.testing.assert_array_equal(again.valid.rows, data.valid.rows)


def test_a_grouped_split_of_float_ids_is_the_split_of_their_int_ids(env, grouped_train, tmp_path):
    """Whole-number float ids are accepted by the arrays; the group split joined them to the
    arrays' int64 ids and raised a raw Polars SchemaError."""
    from kit.train.data import load_train_data

    floats = tmp_path / "float_ids.parquet"
    pl.read_parquet(grouped_train).with_columns(pl.col("seq_ix").cast(pl.Float64)).write_parquet(
        floats)
    as_ints = load_train_data(_split_config(grouped_train, split="group", group="user",
                                            stratify="level", valid_fraction=0.3))
    as_floats = load_train_data(_split_config(floats, split="group", group="user",
                                              stratify="level", valid_fraction=0.3))
    np.testing.assert_array_equal(as_floats.valid.rows, as_ints.valid.rows)
    np.testing.assert_array_equal(as_floats.train.rows, as_ints.train.rows)


@pytest.mark.parametrize("group, stratify", [("seq_ix", "level"), ("user", "user")])
def test_a_group_column_named_twice_is_read_once(env, grouped_train, group, stratify):
    """data.group = the id column (a per-sequence stratified split) or = data.stratify: the
    column list held one name twice, and the file was reported as corrupt."""
    from kit.data.splits import group_split
    from kit.train.data import load_train_data

    data = load_train_data(_split_config(grouped_train, split="group", group=group,
                                         stratify=stratify, valid_fraction=0.3))
    per_seq = pl.read_parquet(grouped_train).group_by("seq_ix", maintain_order=True).agg(
        pl.col(group).first().alias("g"), pl.col(stratify).cast(pl.Float64).mean().alias("s"))
    expected = group_split(per_seq["seq_ix"].to_numpy(), per_seq["g"].to_numpy(), (0.7, 0.3),
                           seed=0, stratify=per_seq["s"].to_numpy())[1]
    np.testing.assert_array_equal(_sequence_ids(grouped_train, data.valid.rows), expected)


def test_a_column_the_spec_does_not_name_is_left_alone(env, tmp_path):
    """kit data check --allow-extra says training reads the spec's columns by name: an extra
    column Polars cannot decode (decimal256) made training and kit features build report the
    whole file as corrupt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(env / "data" / "train.parquet")
    table = table.append_column("amount", pa.array([1] * table.num_rows, pa.decimal256(50, 2)))
    odd = tmp_path / "odd.parquet"
    pq.write_table(table, odd)
    with pytest.raises(pl.exceptions.PolarsError):  # the column this test is about
        pl.read_parquet(odd)
    spec = env / "tiny-lob.toml"
    out = run_cli("data", "check", odd, "--spec", spec, "--allow-extra").output
    assert "leave these alone" in out
    run_cli("train", "exp=tiny", f"data.train={odd}", "train.epochs=1", "--run-dir",
            tmp_path / "run", "-q")
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["score"])
    out = run_cli("features", "build", "--data", odd, "--spec", spec, "--groups", "raw").output
    assert "p0" in out


def test_more_folds_than_sequences_are_refused_before_any_run_folder(env, grouped_train,
                                                                     tmp_path):
    """--folds 1000000 made a million empty fold folders before the split refused k (an
    interrupt meanwhile left 115,000 behind); with data.split = "group" the groups count."""
    sequences = pl.read_parquet(grouped_train, columns=["seq_ix"])["seq_ix"].n_unique()
    out = run_cli("train", "exp=tiny", "--folds", 1000000, "-q",
                  f"data.train={grouped_train}", expect=2).output
    assert (f"--folds 1000000: the train file {grouped_train} has {sequences} sequences, and "
            f"each fold validates at least one; use --folds 2..{sequences}") in out, out
    out = run_cli("train", "exp=tiny", "--folds", 9, "-q", f"data.train={grouped_train}",
                  "data.split=group", "data.group=user", expect=2).output
    assert f"--folds 9: the train file {grouped_train} has 8 groups (user)" in out, out
    frame = pl.read_parquet(grouped_train)  # one sequence: no range of k to offer
    frame.filter(pl.col("seq_ix") == frame["seq_ix"][0]).write_parquet(tmp_path / "one.parquet")
    out = run_cli("train", "exp=tiny", "--folds", 2, "-q", f"data.train={tmp_path}/one.parquet",
                  expect=2).output
    assert "has 1 sequences" in out and "k-fold needs at least 2" in out
    assert "2..1" not in out
    assert not (tmp_path / "runs" / "tiny").exists() or not any(
        (tmp_path / "runs" / "tiny").iterdir())


def test_folds_of_a_grouped_split_keep_each_user_on_one_side(env, grouped_train):
    """--folds K with data.split = "group": every user validates in one fold and trains in the
    others, never both in one fold (folds were cut by sequence: users leaked across)."""
    from kit.config import ConfigError
    from kit.train.data import load_train_data

    config = _split_config(grouped_train, split="group", group="user", stratify="level")
    frame = pl.read_parquet(grouped_train, columns=["seq_ix", "user"]).unique("seq_ix")
    user_of = dict(zip(frame["seq_ix"].to_list(), frame["user"].to_list(), strict=True))
    validated = []
    for i in range(4):
        data = load_train_data(config, fold=(4, i))
        valid = set(_sequence_ids(grouped_train, data.valid.rows).tolist())
        train = set(user_of) - valid
        assert len(data.valid) + len(data.train) == 24
        assert not {user_of[s] for s in valid} & {user_of[s] for s in train}
        validated += sorted(valid)
    assert sorted(validated) == sorted(user_of)  # each sequence validates in one fold
    with pytest.raises(ConfigError, match=r"--folds 9 .*number of groups \(8\)"):
        load_train_data(config, fold=(9, 0))


@pytest.mark.parametrize("data, message", [
    ({"split": "group"}, "needs data.group"),
    ({"split": "group", "group": "nope"}, "data.group / data.stratify: .*nope"),
    ({"split": "group", "group": "p0"}, "'p0' changes within sequence"),
    ({"split": "group", "group": "user", "stratify": "v0x"}, "v0x"),
    ({"split": "random", "group": "user"}, "need data.split = \"group\""),
    ({"split": "random", "valid_fraction": 1.0}, "valid_fraction must be between 0 and 1"),
    ({"split": "halves"}, r"data.split must be one of \['file', 'random', 'group'\]"),
    ({"group": "user"}, "need data.split = \"group\" \\(with split = \"file\""),
    ({"split": "random", "valid_fraction": 0.01}, "0.01 of 24 sequences leaves the validation"),
    ({"split": "group", "group": "user", "valid_fraction": 0.05},
     "0.05 of 24 sequences in 8 groups of 'user' leaves the validation part empty"),
    ({"split": "group", "group": "maybe_user"},
     r"'maybe_user' changes within sequence 4 .* \(or is null or NaN there\)"),
    ({"split": "group", "group": "nan_user"},  # NaN sequences are not one group
     r"'nan_user' changes within sequence 0 .* \(or is null or NaN there\)"),
    ({"split": "group", "group": "user", "stratify": "label"}, "data.group / data.stratify"),
    ({"fold": [3, 3]}, r"data.fold is \[k, i\] with 0 <= i < k"),
    # a list per row: a numpy "truth value of an array is ambiguous" from np.unique
    ({"split": "group", "group": "user_list"},
     r"data.group 'user_list' is a list column .*one value per sequence"),
    ({"split": "group", "group": "user_struct"},
     r"data.group 'user_struct' is a struct column .*one value per sequence"),
])
def test_bad_holdout_settings_are_refused_naming_the_setting(env, grouped_train, data, message):
    from kit.config import ConfigError
    from kit.train.data import load_train_data

    with pytest.raises(ConfigError, match=message):
        load_train_data(_split_config(grouped_train, **data))


def test_parallel_progress_prints_each_new_history_line_once(tmp_path, capsys):
    from kit.train.recipe import EpochLines
    from kit.train.runs import RunFiles

    def record(epoch: int, seconds: float) -> dict:
        return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_score": 0.1 * epoch,
                "val_per_target": {"t0": 0.1}, "best": True, "seconds": seconds}

    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    for epoch in (1, 2, 3):  # epoch 3 logged just before a kill, before its last.pt
        files.append_history(record(epoch, 1.0))
    lines = EpochLines([7], [files.root])
    lines()
    assert capsys.readouterr().out == ""  # earlier sessions printed those
    files.truncate_history(2)  # what --resume does: back to last.pt's epoch 2
    files.append_history(record(3, 2.5))  # epoch 3 again, trained anew
    with open(files.history, "a") as fh:  # epoch 4 half written
        fh.write(json.dumps(record(4, 2.0))[:20])
    lines()
    assert capsys.readouterr().out.splitlines() == ["seed 7 epoch 3: loss 0.3333  val 0.3000 "
                                                    "(t0 0.1000)  *"]
    with open(files.history, "a") as fh:
        fh.write(json.dumps(record(4, 2.0))[20:] + "\n")
    lines()
    lines()
    assert capsys.readouterr().out.splitlines() == ["seed 7 epoch 4: loss 0.2500  val 0.4000 "
                                                    "(t0 0.1000)  *"]


def test_the_schedule_follows_each_batch_when_sequences_differ_in_length(tmp_path):
    # 2 long and 10 short sequences in chunks of 10: a batch of short ones has padding-only
    # chunks that take no optimizer step, so the cosine must be sized by batch, not by the set
    from kit.competition import CompetitionSpec
    from kit.config import DEFAULTS
    from kit.features.normaliser import Normaliser
    from kit.features.sets import build_feature_set
    from kit.models import build_model
    from kit.train.data import Split, TrainData
    from kit.train.runs import RunFiles
    from kit.train.trainer import fit, optimizer_steps

    spec = CompetitionSpec(name="ragged", features=("a", "b"), targets=("t",), seq_len=None,
                           warmup=0)
    generator = torch.Generator().manual_seed(0)

    def split(lengths: list[int]) -> Split:
        real = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
        x = torch.randn(len(lengths), 40, 2, generator=generator) * real[..., None]
        y = x[..., :1].cumsum(1) * real[..., None]
        return Split(x, y, real, np.arange(int(real.sum())))

    data = TrainData(spec, build_feature_set(spec, ["raw"]), Normaliser.fit(np.ones((4, 2))),
                     split([40] * 2 + [10] * 10), split([40] * 4))
    config = {**DEFAULTS, "seed": 3, "loss": {"terms": {"mse": 1.0}},
              "train": {**DEFAULTS["train"], "epochs": 3, "batch_size": 2, "chunk": 10,
                        "warmup_epochs": 0, "threads": 1, "amp": "off"}}
    steps = optimizer_steps(data.train.mask.numpy(), 10, 2, 3, 3)
    assert sum(steps) < 3 * 6 * 4  # fewer than every batch x every chunk that some row learns
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    files.about = {"model_config": {"type": "gru"}, "summary": {}}
    torch.manual_seed(3)
    fit(config, data, build_model({"type": "gru", "hidden": 8, "layers": 1}, 2, 1), files,
        progress=False)
    taken = load_checkpoint(files.last, ("schedule",))["schedule"]["last_epoch"]
    assert taken == sum(steps)
    last_lr = json.loads(files.history.read_text().splitlines()[-1])["lr"]
    assert last_lr == pytest.approx(0.0, abs=1e-9)  # the cosine reaches its end


def test_a_group_that_fails_before_its_first_epoch_leaves_nothing(env, tmp_path, monkeypatch):
    from kit.errors import KitError
    from kit.train import trainer

    if not torch.cuda.is_available():
        # asking for the CUDA batch finder on CPU fails before any data is built or folder made
        out = run_cli("train", "exp=tiny", "train.batch_size=0", expect=2).output
        assert "needs a CUDA device" in out and not (tmp_path / "runs").exists()

    def fails(*args, **kwargs):  # a failure inside fit, after config.toml is written
        raise KitError("the device went away")

    real_fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", fails)
    out = run_cli("train", "exp=tiny", "seeds=[7,8]", "-q", expect=2).output
    assert "the device went away" in out
    # no phantom run for kit runs to list, no group record, no empty folders
    assert list((tmp_path / "runs").iterdir()) == []
    # a member that trained keeps everything (its config.toml is what --resume reads); only
    # the one that never trained goes
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs) if len(calls) == 1 else fails()

    monkeypatch.setattr(trainer, "fit", second_fails)
    run_cli("train", "exp=tiny", "seeds=[7,8]", "train.epochs=1", "-q", expect=2)
    (trained,) = _run_dirs(tmp_path / "runs" / "tiny")
    assert trained.name.endswith("-s7") and (trained / "config.toml").is_file()
    assert len(list((tmp_path / "runs" / "tiny" / ".groups").iterdir())) == 1
    monkeypatch.setattr(trainer, "fit", real_fit)
    run_cli("train", "exp=tiny", "seeds=[7,8]", "train.epochs=1", "--resume", "-q")
    assert [p.name[-3:] for p in _run_dirs(tmp_path / "runs" / "tiny")] == ["-s7", "-s8"]


def test_text_features_and_non_finite_scored_targets_are_named(env, tmp_path):
    frame = pl.read_parquet(env / "data" / "train.parquet")
    text = frame.with_columns(pl.col("p1").cast(pl.String).fill_null("N/A"))
    text.write_parquet(tmp_path / "text.parquet")
    out = run_cli("train", "exp=tiny", f"data.train={tmp_path / 'text.parquet'}",
                  expect=2).output
    assert "feature column(s) must be numeric (an integer or float dtype): ['p1 (String)']" in out
    assert "Traceback" not in out
    # a null target where a prediction is scored: named as such, not as a diverged run
    scored = (pl.col("need_prediction") == 1) & (pl.col("step_in_seq") == 20)
    holes = frame.with_columns(pl.when(scored).then(None).otherwise(pl.col("t0")).alias("t0"))
    holes.write_parquet(tmp_path / "holes.parquet")
    n_seqs = frame["seq_ix"].n_unique()
    out = run_cli("train", "exp=tiny", f"data.valid={tmp_path / 'holes.parquet'}",
                  expect=2).output
    assert f"targets NaN, inf or null on rows that need a prediction (t0: {n_seqs} row(s)" in out
    assert "diverged" not in out
    # NaN targets on warm-up rows are never scored: that file trains
    warm = (pl.col("need_prediction") == 0)
    frame.with_columns(pl.when(warm).then(float("nan")).otherwise(pl.col("t1")).alias("t1")
                       ).write_parquet(tmp_path / "warm.parquet")
    run_cli("train", "exp=tiny", f"data.train={tmp_path / 'warm.parquet'}", "train.epochs=1",
            "-q")


def test_need_flags_of_another_rule_are_refused_before_training(env, tmp_path):
    """Training took any need column as its mask; such a run trained and was selected, then kit
    parity and kit score refused the file. Every 10th step scored is a rule no spec states."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame.with_columns(need_prediction=pl.col("step_in_seq") % 10 == 9).write_parquet(
        tmp_path / "every10.parquet")
    for part in ("train", "valid"):
        out = run_cli("train", "exp=tiny", f"data.{part}={tmp_path / 'every10.parquet'}",
                      "train.epochs=1", expect=2).output
        assert ("every10.parquet: need_prediction breaks the rule (true from step 10 to the "
                "end) on ") in out
        assert "kit data check" in out and "Traceback" not in out
        # what a competition scored otherwise can do: a step range is the spec's
        assert "set the spec's warmup and tail to it; scored steps of another pattern" in out
    assert not (tmp_path / "runs" / "tiny").exists()  # no run, no empty folder


def test_sequences_that_start_late_or_skip_steps_are_refused_before_training(env, tmp_path):
    """Such files trained and packed; kit parity and kit score then refused them (a late start
    was named only as a need flag off the rule, or not at all on variable-length specs)."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    late = frame.with_columns(pl.col("step_in_seq") + 5)
    late.write_parquet(tmp_path / "late.parquet")
    frame.filter(pl.col("step_in_seq") != 7).write_parquet(tmp_path / "gaps.parquet")
    n_seqs = frame["seq_ix"].n_unique()
    for name, said in (("late", f"{n_seqs:,} sequence(s) do not start at step 0: seq 0 starts "
                                "at step 5"),
                       ("gaps", f"{n_seqs:,} gap(s) in step numbering: seq 0: step 6 -> 8")):
        for part in ("train", "valid"):
            out = run_cli("train", "exp=tiny", f"data.{part}={tmp_path / name}.parquet",
                          "train.epochs=1", expect=2).output
            assert f"{name}.parquet: {said}" in out, out
            assert "kit parity and kit score refuse such a file" in out
            assert "Traceback" not in out
    assert not (tmp_path / "runs" / "tiny").exists()  # no run, no empty folder


def test_resume_without_a_run_dir_finds_a_run_killed_before_its_first_checkpoint(env, tmp_path):
    """`kit train EXP --resume` (the printed hint) must reach the newest unfinished run even
    when it has no last.pt yet: it used to skip to an older paused run."""
    run_cli("train", "exp=tiny", "seed=1", "--stop-after-epochs", "1", "-q")  # older, paused
    time.sleep(0.05)
    run_cli("train", "exp=tiny", "seed=2", "--stop-after-epochs", "1", "-q")
    newer = next(p for p in _run_dirs(tmp_path / "runs" / "tiny") if p.name.endswith("-s2"))
    (newer / "last.pt").unlink()  # as if killed in its first epoch, or its last.pt deleted
    out = run_cli("train", "exp=tiny", "seed=2", "--resume", "-q").output
    assert f"runs/tiny/{newer.name}: " in out and "training it again from its start" in out
    assert json.loads((newer / "metrics.json").read_text())["finished"]
    older = next(p for p in _run_dirs(tmp_path / "runs" / "tiny") if p.name.endswith("-s1"))
    assert not json.loads((older / "metrics.json").read_text())["finished"]


def test_flipped_bits_inside_a_checkpoint_are_refused(env, tmp_path):
    import zipfile

    run = tmp_path / "r"
    run_cli("train", "exp=tiny", "train.epochs=1", "--run-dir", run, "-q")
    with zipfile.ZipFile(run / "best.pt") as archive:  # the first tensor's bytes in the file
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    data = bytearray((run / "best.pt").read_bytes())
    local = info.header_offset  # the local header's name and extra lengths (torch pads these)
    name_len, extra_len = (int.from_bytes(data[local + i:local + i + 2], "little")
                           for i in (26, 28))
    start = local + 30 + name_len + extra_len
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    (run / "best.pt").write_bytes(bytes(data))
    with pytest.raises(Exception, match="fails its CRC check"):
        load_checkpoint(run / "best.pt")
    out = run_cli("pack", run, "--out", tmp_path / "subs", expect=2).output
    assert "fails its CRC check" in out and "Traceback" not in out
    # best.pt is not rebuilt by a resume once the run finished: the advice says so
    assert "a resume does not rebuild best.pt" in out and "delete it" not in out
    # a damaged zip index (the compression method of a member): a clear error, no traceback
    paused = tmp_path / "paused"
    run_cli("train", "exp=tiny", "--run-dir", paused, "--stop-after-epochs", "1", "-q")
    good = (paused / "last.pt").read_bytes()
    index = bytearray(good)
    index[good.rfind(b"PK\x01\x02") + 10] ^= 1
    (paused / "last.pt").write_bytes(bytes(index))
    out = run_cli("train", "exp=tiny", "--resume", "--run-dir", paused, expect=2).output
    assert "last.pt: the checkpoint is corrupt (its zip index does not read: " in out, out
    assert "Traceback" not in out and "delete it and run the same command again" in out


def test_a_new_best_is_in_place_only_once_last_pt_records_it(env, tmp_path, monkeypatch):
    """A kill after an epoch's best.pt but before its last.pt left best.pt of an epoch the
    resume replays (on CUDA not always to the same score) while metrics.json named another."""
    from kit.train import trainer
    from kit.train.recipe import experiment_config, stored_config, train_one
    from kit.train.runs import RunFiles

    real_save = trainer.save_checkpoint

    def killed_at_epoch_three(payload, path):
        if "optimizer" in payload and payload["epoch"] == 2:  # last.pt of epoch 3
            raise KeyboardInterrupt
        real_save(payload, path)

    real_validate, scores = trainer.validate, iter([0.1, 0.2, 0.3, 0.15, 0.12])

    def scored(*args):  # every epoch a new best until the kill; the replay scores lower
        report, rows = real_validate(*args)
        report.score = next(scores)
        return report, rows

    monkeypatch.setattr(trainer, "validate", scored)
    monkeypatch.setattr(trainer, "save_checkpoint", killed_at_epoch_three)
    files = RunFiles(tmp_path / "r")
    with pytest.raises(KeyboardInterrupt):
        train_one(experiment_config("tiny", ["train.epochs=4"]), files, progress=False)
    assert load_checkpoint(files.best)["score"] == 0.2  # epoch 3's best waits beside it
    assert [p.name for p in files.root.glob(".best-pending-*")] == [".best-pending-3"]
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    train_one(stored_config(files, None), files, resume=True, progress=False)
    metrics = json.loads(files.metrics.read_text())
    best = load_checkpoint(files.best)
    assert metrics["best_epoch"] == best["epoch"] == 2 and best["score"] == 0.2
    assert not list(files.root.glob(".best-pending-*"))


def test_a_run_started_without_a_gradient_scaler_resumes_where_fp16_needs_one(env, tmp_path,
                                                                               monkeypatch):
    """A CPU or bf16 run saves a disabled scaler's {}; resumed on a GPU without bf16 (T4,
    P100: auto means fp16 there) loading it raised torch's RuntimeError. Simulated on CPU:
    fp16 autocast and an enabled CPU scaler."""
    from kit.train import trainer
    from kit.train.recipe import experiment_config, stored_config, train_one
    from kit.train.runs import RunFiles

    files = RunFiles(tmp_path / "r")
    train_one(experiment_config("tiny"), files, stop_after_epochs=1, progress=False)
    monkeypatch.setattr(trainer, "autocast_for", lambda device, amp: torch.float16)
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(trainer.torch.amp, "GradScaler",
                        lambda device, enabled: scaler("cpu", enabled=enabled))
    notes = []
    monkeypatch.setattr(trainer.tqdm, "write", notes.append)
    metrics = train_one(stored_config(files, None), files, resume=True, progress=False)
    assert metrics["finished"]
    assert any("resumes in torch.float16 autocast; it trained in float32" in n for n in notes)


def test_chunks_after_the_last_scored_step_are_not_run_and_autocast_state_carries(
        tmp_path, monkeypatch):
    """A spec with a tail: the last chunk holds no scored step. It used to run outside
    autocast on an autocast chunk's state (a bf16 LSTM state into a float32 forward raised).
    Simulated on CPU: bf16 autocast, which covers the LSTM there."""
    from kit.train import trainer
    from kit.train.recipe import experiment_config, train_one
    from kit.train.runs import RunFiles

    (tmp_path / "tail.toml").write_text(SPEC_TOML.replace("warmup = 10", "warmup = 10\ntail = 3"))
    synthesize(load_spec(str(tmp_path / "tail.toml")), tmp_path / "data", train_seqs=8,
               valid_seqs=4, seed=2)
    (tmp_path / "exps").mkdir()
    (tmp_path / "exps" / "tail.toml").write_text(EXPERIMENT.format(
        spec=tmp_path / "tail.toml", data=tmp_path / "data", root=tmp_path))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path / "exps"))
    monkeypatch.setattr(trainer, "autocast_for", lambda device, amp: torch.bfloat16)
    forwards = []
    real_fit = trainer.fit

    def counting_fit(config, data, model, *args, **kwargs):
        model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[1]))
        return real_fit(config, data, model, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", counting_fit)
    config = experiment_config("tail", ["model={type='lstm', hidden=8, layers=1}",
                                        "train.chunk=3", "train.epochs=1"])
    metrics = train_one(config, RunFiles(tmp_path / "r"), progress=False)
    assert metrics["finished"] and math.isfinite(metrics["score"])
    # steps 57..59 are the tail: a batch runs its chunks up to step 57 (19 chunks of 3), not 20
    training = [t for t in forwards if t == 3]
    assert len(training) == 19 * 1  # one batch of 8 sequences, one epoch


def test_auto_precision_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch):
    # a T4 (compute capability 7.5) emulates bf16: is_bf16_supported() says yes there, but
    # fp16 with a gradient scaler is the fast and documented choice
    from kit.train.trainer import autocast_for

    cuda = torch.device("cuda")
    for capability, want in (((7, 5), torch.float16), ((8, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None,
                            c=capability: c)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        assert autocast_for(cuda, "auto") == want and autocast_for(cuda, "bf16") == want
        assert autocast_for(cuda, "fp16") == torch.float16
    assert autocast_for(torch.device("cpu"), "auto") is None


def test_the_plateau_schedule_does_not_count_a_worse_error_as_better():
    from kit.train.trainer import make_schedule

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = make_schedule(optimizer, {"schedule": "plateau", "patience": 4, "lr": 1.0,
                                         "warmup_epochs": 0, "epochs": 10}, [1] * 10)
    for epoch in range(8):  # an rmse creeping up: stepped as -score, it never improves
        schedule.step(-(0.5 + 1e-5 * epoch))
    assert optimizer.param_groups[0]["lr"] < 1.0
    # an error on small-scale targets improving 3% an epoch is improving, whatever its scale
    for scale in (1.0, 1e-4):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        schedule = make_schedule(optimizer, {"schedule": "plateau", "patience": 4, "lr": 1.0,
                                             "warmup_epochs": 0, "epochs": 10}, [1] * 10)
        for epoch in range(10):
            schedule.step(-0.5 * scale * 0.97 ** epoch)
        assert optimizer.param_groups[0]["lr"] == 1.0, scale


@pytest.mark.parametrize("patience, halved_after", [(1, 1), (2, 1), (4, 2), (6, 3), (7, 3)])
def test_the_plateau_schedule_halves_after_half_the_patience_in_epochs_without_a_gain(
        patience, halved_after):
    """docs/runs.md: halved after patience / 2 epochs without a gain (torch's own patience
    counts one more: with patience 2 the halved rate never trained before the early stop)."""
    from kit.train.trainer import make_schedule

    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = make_schedule(optimizer, {"schedule": "plateau", "patience": patience, "lr": 1.0,
                                         "warmup_epochs": 0, "epochs": 20}, [1] * 20)
    schedule.step(0.5)  # the best epoch
    rates = []
    for _ in range(patience):  # then no gain until early stopping
        schedule.step(0.4)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[halved_after - 1] == 0.5 and (halved_after == 1 or rates[halved_after - 2] == 1)


def test_the_plateau_schedule_keeps_the_rate_while_an_error_falls(env, tmp_path, monkeypatch):
    """The plateau schedule is stepped with the gain (the error negated): stepped with the
    error itself, it halved the rate of an rmse run on every epoch that improved."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    _scores_from(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    config = check_config(experiment_config("tiny", [
        f'spec="{_spec_scored_by(tmp_path, "rmse")}"', "train.epochs=4", "train.schedule=plateau",
        "train.patience=2", "train.warmup_epochs=0"]))
    files = RunFiles(tmp_path / "r")
    train_one(config, files, progress=False)
    assert [h["lr"] for h in _history(files.root)] == [config["train"]["lr"]] * 4


def test_infinite_gradients_of_a_finite_loss_stop_the_run_before_the_step(env, tmp_path,
                                                                          monkeypatch):
    import kit.models
    from kit.train.recipe import experiment_config, train_one
    from kit.train.runs import RunFiles
    from kit.train.trainer import TrainingDiverged

    real_build = kit.models.build_model

    def poisoned(*args, **kwargs):  # the loss stays finite; one weight's gradient is inf
        model = real_build(*args, **kwargs)
        next(model.parameters()).register_hook(lambda grad: grad * float("inf"))
        return model

    monkeypatch.setattr(kit.models, "build_model", poisoned)
    with pytest.raises(TrainingDiverged, match="gradient norm (inf|nan) in batch 1 of epoch 1"):
        train_one(experiment_config("tiny"), RunFiles(tmp_path / "r"), progress=False)


def test_a_resume_clears_half_written_temp_files_of_a_killed_process(env, tmp_path):
    run = tmp_path / "r"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    (run / ".last.pt.tmp-99999").write_bytes(b"half a checkpoint")
    run_cli("train", "exp=tiny", "--resume", "--run-dir", run, "-q")
    assert not list(run.glob(".*.tmp-*"))


def test_resume_passes_over_a_run_another_process_is_training(env, tmp_path):
    import fcntl

    run_cli("train", "exp=tiny", "seed=1", "--stop-after-epochs", "1", "-q")  # older, paused
    paused = _only_run(tmp_path)
    busy = paused.parent / "20991231-000000-s2"  # newer, in its first epoch
    busy.mkdir()
    (busy / "config.toml").write_text((paused / "config.toml").read_text())
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as RunFiles.training holds it
        out = run_cli("train", "exp=tiny", "--resume", "-q").output
    finally:
        os.close(fd)
    assert "-s1: score" in out and "finished" in out


def _started_group(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    """`kit train exp=tiny seeds=[1,2] ARGS --jobs 2` in a child process, once both seeds have
    a last.pt."""
    cmd = [sys.executable, "-m", "kit", "train", "exp=tiny", "seeds=[1,2]", *args, "--jobs", "2",
           "-q"]
    child = subprocess.Popen(cmd, env=os.environ.copy(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("runs/tiny/*/last.pt"))) < 2:
        time.sleep(0.02)
    return child


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_group_stopped_by_a_signal_says_how_to_resume(env, tmp_path, signum):
    child = _started_group(tmp_path, ["train.epochs=400", "train.patience=400"])
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    hints = [line for line in err.splitlines() if "continue with" in line]
    assert hints == [f"stopped by {signum.name}: continue with `kit train exp=tiny "
                     "'seeds=[1,2]' train.epochs=400 train.patience=400 --jobs 2 --resume` "
                     "(from the last finished epoch, or from the start if none had finished)"]


def _worker_of(parent: int, seed: int) -> int:
    """The pid of the `kit train` worker process that trains this seed for `parent`."""
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in children.read_text().split():
            if f"seed={seed}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"no worker of seed {seed}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_worker_killed_by_a_signal_is_named_and_the_other_seeds_shown(env, tmp_path):
    child = _started_group(tmp_path, ["train.epochs=40", "train.patience=40"])
    os.kill(_worker_of(child.pid, 1), signal.SIGKILL)  # as the out-of-memory killer does
    out, err = child.communicate(timeout=120)
    assert child.returncode == 2, err
    assert "seed 1 (killed by signal 9 (SIGKILL): out of memory?)" in err
    assert "printed above" not in err and "with --resume trains again a seed that was killed" in err
    second, first = [run.name for run in _run_dirs(tmp_path / "runs" / "tiny")][::-1]
    assert f"{second}: score" in out and "finished" in out and first not in out
    # as said: --resume continues the killed seed, keeping the finished one
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=40", "train.patience=40",
                  "--jobs", 2, "--resume", "-q").output
    assert out.count("finished") == 2


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_workers_stop_when_their_command_is_killed(env, tmp_path):
    """A SIGKILLed `--jobs` command passes nothing on, and its workers (each in its own
    session) trained on unseen, holding their runs' locks: now they stop as after a Ctrl-C,
    and the group resumes at once."""
    child = _started_group(tmp_path, ["train.epochs=400", "train.patience=400"])
    workers = [_worker_of(child.pid, seed) for seed in (1, 2)]
    child.kill()
    child.communicate(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline and not all(exited(pid) for pid in workers):
        time.sleep(0.1)
    assert all(exited(pid) for pid in workers)
    out = run_cli("train", "exp=tiny", "seeds=[1,2]", "train.epochs=400", "train.patience=400",
                  "--jobs", 2, "--resume", "--stop-after-epochs", "1", "-q").output
    assert out.count("paused") == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_single_run_stopped_by_a_signal_says_how_to_resume(env, tmp_path, signum):
    """Without --jobs there is no worker group to catch the signal: the run died silently."""
    cmd = [sys.executable, "-m", "kit", "train", "exp=tiny", "train.epochs=400",
           "train.patience=400", "-q"]
    child = subprocess.Popen(cmd, env=os.environ.copy(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/tiny/*/last.pt")):
        time.sleep(0.02)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    run = _only_run(tmp_path).relative_to(tmp_path)  # named: the newest may be another's later
    assert (f"stopped by {signum.name}: continue with `kit train exp=tiny train.epochs=400 "
            f"train.patience=400 --run-dir {run} --resume`") in err
    assert "Traceback" not in err
    out = run_cli("train", "exp=tiny", "train.epochs=400", "train.patience=400",
                  "--stop-after-epochs", "1", "--resume", "-q").output
    assert "paused" in out  # the hint works: the same run moves on from its last.pt


def test_targets_far_from_standard_train_with_normaliser_targets_and_pack_in_their_units(
        workspace, tmp_path, monkeypatch):
    """A custom competition whose targets are a heart rate (130 +- 7) and a small offset: a
    model whose outputs start near 0 stays ~130 off for many epochs; with normaliser.targets
    the layers learn standardised targets, the head scales them back (the run is as good as
    on the standardised targets), and pack and parity carry the scale into the graph."""
    from kit.export.pack import pack_run

    spec = (workspace / "tiny-lob.toml").read_text()
    (tmp_path / "hr.toml").write_text(spec.replace('"tiny-lob"', '"tiny-hr"').replace(
        'name = "weighted_pearson"\nclip = [-6.0, 6.0]', 'name = "rmse"'))
    for name in ("train", "valid"):
        frame = pl.read_parquet(workspace / "data" / f"{name}.parquet")
        frame.with_columns(pl.col("t0") * 7 + 130, pl.col("t1") * 0.5 - 20).write_parquet(
            tmp_path / f"{name}.parquet")
    exps = tmp_path / "experiments"
    exps.mkdir()
    (exps / "hr.toml").write_text(EXPERIMENT.format(spec=tmp_path / "hr.toml", data=tmp_path,
                                                    root=tmp_path).replace(
        "wmse = 1.0, pearson = 0.2", "mse = 1.0"))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)
    plain = run_cli("train", "exp=hr", "--run-dir", "runs/hr/plain", "-q").output
    assert "note: the targets t0 (mean 130" in plain and "set normaliser.targets = true" in plain
    scaled = run_cli("train", "exp=hr", "normaliser.targets=true", "--run-dir", "runs/hr/scaled",
                     "-q").output
    assert "normaliser.targets" not in scaled
    rmse = {name: json.loads((tmp_path / "runs" / "hr" / name / "metrics.json").read_text())
            ["per_target"] for name in ("plain", "scaled")}
    truth = pl.read_parquet(tmp_path / "valid.parquet").filter(pl.col("need_prediction"))
    assert rmse["plain"]["t0"] > 50  # still near 0: about 130 off
    assert rmse["scaled"]["t0"] < 1.1 * truth["t0"].std()  # no worse than the mean
    assert rmse["scaled"]["t1"] < 1.1 * truth["t1"].std()
    packed = pack_run(tmp_path / "runs" / "hr" / "scaled", "hr", tmp_path / "subs")
    assert "parity OK" in run_cli("parity", packed.folder, "--data", tmp_path / "valid.parquet",
                                  "--seqs", 3).output
    out = run_cli("score", packed.zip_path, "--data", tmp_path / "valid.parquet", "-q",
                  "--json").output
    assert json.loads(out)["report"]["per_target"]["t0"] == pytest.approx(rmse["scaled"]["t0"],
                                                                          rel=1e-4)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _spec_scored_by(tmp_path: Path, metric: str) -> Path:
    """tiny-lob with another metric (rmse: lower is better), written under tmp_path."""
    spec = tmp_path / f"{metric}.toml"
    spec.write_text(SPEC_TOML.replace('name = "weighted_pearson"\nclip = [-6.0, 6.0]',
                                      f'name = "{metric}"'))
    assert f'name = "{metric}"' in spec.read_text()
    return spec


def _scores_from(monkeypatch, scores) -> list[float]:
    """Make the trainer's validation report `scores` in turn (each epoch's, then any SWA
    average's); returns the list of the scores reported so far."""
    from kit.train import trainer

    real_validate, scores, said = trainer.validate, iter(scores), []

    def scored(*args):
        report, rows = real_validate(*args)
        report.score = next(scores)
        said.append(report.score)
        return report, rows

    monkeypatch.setattr(trainer, "validate", scored)
    return said


def test_an_error_metric_keeps_its_lowest_epoch_as_the_best(env, tmp_path):
    """Scores compared as they are, not negated for a lower-is-better metric, kept the epoch of
    the highest rmse in best.pt and metrics.json, and stopped an improving run early."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    spec = tmp_path / "rmse.toml"
    spec.write_text(SPEC_TOML.replace('name = "weighted_pearson"\nclip = [-6.0, 6.0]',
                                      'name = "rmse"'))
    assert 'name = "rmse"' in spec.read_text()
    config = check_config(experiment_config("tiny", [f'spec="{spec}"', "train.epochs=4"]))
    files = RunFiles(tmp_path / "r")
    metrics = train_one(config, files, progress=False)
    history = _history(files.root)
    scores = [h["val_score"] for h in history]
    assert len(set(scores)) > 1, "the epochs must score differently for this test to mean it"
    lowest = history[scores.index(min(scores))]
    assert metrics["best_epoch"] == lowest["epoch"] and metrics["score"] == min(scores)
    best = load_checkpoint(files.best)
    assert best["epoch"] == lowest["epoch"] and best["score"] == min(scores)
    assert [h["best"] for h in history] == [s < min(scores[:i], default=math.inf)
                                            for i, s in enumerate(scores)]


def test_with_ema_the_averaged_weights_are_scored_and_kept(env, tmp_path):
    """With train.ema set, the live model was validated and saved as best.pt: the average
    trained alongside was never used."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    config = check_config(experiment_config("tiny", ["train.epochs=1", "train.ema=0.9",
                                                     "train.warmup_epochs=0"]))
    files = RunFiles(tmp_path / "r")
    train_one(config, files, progress=False)
    best, last = load_checkpoint(files.best), load_checkpoint(files.last)
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items()
           if k.startswith("module.")}
    assert best["epoch"] == 1 and set(ema) == set(best["model"]) == set(last["model"])
    assert all(torch.equal(best["model"][k], ema[k]) for k in ema)
    # the average is not the live model after a few steps, so the test tells them apart
    assert not all(torch.equal(last["model"][k], ema[k]) for k in ema)


def test_with_ema_the_average_follows_every_optimizer_step(env, tmp_path, monkeypatch):
    """Never updated, the average stayed the untrained starting weights, and those were
    validated and saved as best.pt."""
    from kit.train import trainer
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    initial, real_fit = {}, trainer.fit

    def recording_fit(config, data, model, *args, **kwargs):
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_fit(config, data, model, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", recording_fit)
    config = check_config(experiment_config("tiny", ["train.epochs=1", "train.ema=0.9",
                                                     "train.warmup_epochs=0"]))
    files = RunFiles(tmp_path / "r")
    train_one(config, files, progress=False)
    # 24 training sequences in batches of 8, one chunk each: 3 optimizer steps, 3 updates
    assert load_checkpoint(files.last)["ema"]["n_averaged"].item() == 3
    best = load_checkpoint(files.best)["model"]
    assert set(best) == set(initial) and not all(torch.equal(best[k], initial[k]) for k in best)


def test_grad_clip_clips_every_step_to_its_setting(env, tmp_path, monkeypatch):
    """train.grad_clip must reach clip_grad_norm_: a clip passed as another bound (or none)
    trained on unclipped gradients while the config said otherwise."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    real_clip, bounds, norms = torch.nn.utils.clip_grad_norm_, [], []

    def recorded(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        bounds.append(max_norm)
        total = real_clip(parameters, max_norm, *args, **kwargs)
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in parameters if p.grad is not None])).item())
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    config = check_config(experiment_config("tiny", ["train.epochs=1", "train.warmup_epochs=0",
                                                     "train.grad_clip=0.01"]))
    train_one(config, RunFiles(tmp_path / "r"), progress=False)
    assert bounds and all(b == 0.01 for b in bounds)
    assert max(norms) <= 0.01 * (1 + 1e-4)  # the step saw clipped gradients


def test_a_grad_clip_of_0_is_off_and_trains_as_an_unclipped_run(env, tmp_path, monkeypatch):
    """train.grad_clip = 0 means off: clipped to a norm of 0, every gradient vanished and only
    the weight decay moved the weights."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    real_clip, bounds = torch.nn.utils.clip_grad_norm_, []

    def recorded(parameters, max_norm, *args, **kwargs):
        bounds.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    weights = {}
    for clip in ("0", "1e9"):  # 1e9: a bound no gradient of this run comes near
        config = check_config(experiment_config("tiny", ["train.epochs=1", "train.warmup_epochs=0",
                                                         f"train.grad_clip={clip}"]))
        files = RunFiles(tmp_path / clip)
        train_one(config, files, progress=False)
        weights[clip] = load_checkpoint(files.last)["model"]
        if clip == "0":
            assert bounds == []  # never clipped
    assert bounds and all(b == 1e9 for b in bounds)
    assert all(torch.equal(weights["0"][k], weights["1e9"][k]) for k in weights["0"])


@pytest.mark.parametrize(("swa_score", "best_epoch"), [(0.05, 2), (0.5, "swa")])
def test_the_swa_average_replaces_the_best_epoch_only_when_it_scores_better(
        env, tmp_path, monkeypatch, swa_score, best_epoch):
    """A weight average scoring below the best epoch replaced best.pt all the same."""
    from kit.train import trainer
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    real_validate, scores = trainer.validate, iter([0.1, 0.3, 0.2, swa_score])

    def scored(*args):  # epochs 1-3, then the SWA average
        report, rows = real_validate(*args)
        report.score = next(scores)
        return report, rows

    monkeypatch.setattr(trainer, "validate", scored)
    files = RunFiles(tmp_path / "r")
    config = check_config(experiment_config("tiny", ["train.epochs=3", "train.swa_start=2"]))
    metrics = train_one(config, files, progress=False)
    assert next(scores, None) is None  # the average was scored
    best = load_checkpoint(files.best)
    assert metrics["best_epoch"] == best["epoch"] == best_epoch
    assert metrics["score"] == best["score"] == max(0.3, swa_score)


@pytest.mark.parametrize(("swa_error", "best_epoch"), [(0.15, 2), (0.05, "swa")])
def test_with_an_error_metric_the_swa_average_replaces_the_best_epoch_only_when_lower(
        env, tmp_path, monkeypatch, swa_error, best_epoch):
    """With rmse the average was compared as a score, not as an error: any average, even one
    of a higher error than the best epoch's, replaced best.pt."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    said = _scores_from(monkeypatch, [0.3, 0.1, 0.2, swa_error])  # epochs 1-3, the average
    config = check_config(experiment_config("tiny", [f'spec="{_spec_scored_by(tmp_path, "rmse")}"',
                                                     "train.epochs=3", "train.swa_start=2"]))
    files = RunFiles(tmp_path / "r")
    metrics = train_one(config, files, progress=False)
    assert len(said) == 4  # the average was scored
    best = load_checkpoint(files.best)
    assert metrics["best_epoch"] == best["epoch"] == best_epoch
    assert metrics["score"] == best["score"] == min(0.1, swa_error)


def test_a_failed_swa_best_write_leaves_the_epochs_best_whole(env, tmp_path, monkeypatch):
    """The winning SWA average was written straight into place: a failure (a full disk, a
    kill) after best.pt left the average's weights beside the best epoch's predictions."""
    from kit.run_record import is_finished
    from kit.train import trainer
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    real_validate, real_save = trainer.validate, np.save
    scores, armed = iter([0.1, 0.3, 0.2, 0.5]), []

    def scored(*args):  # epochs 1-3, then the SWA average, which wins
        report, rows = real_validate(*args)
        report.score = next(scores)
        armed.append(report.score == 0.5)
        return report, rows

    def save(*args, **kwargs):
        if armed and armed[-1]:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer, "validate", scored)
    monkeypatch.setattr(np, "save", save)
    files = RunFiles(tmp_path / "r")
    config = check_config(experiment_config("tiny", ["train.epochs=3", "train.swa_start=2"]))
    with pytest.raises(OSError, match="No space left"):
        train_one(config, files, progress=False)
    monkeypatch.setattr(np, "save", real_save)
    best = load_checkpoint(files.best)
    assert best["epoch"] == 2 and best["score"] == 0.3  # the epoch's best, with its files
    assert len(np.load(files.val_preds)) == len(np.load(files.val_rows))
    assert not is_finished(files.root)  # --resume takes it up
    scores = iter([0.5])  # the resume scores the average again, and it wins
    metrics = train_one(config, files, resume=True, progress=False)
    assert metrics["best_epoch"] == load_checkpoint(files.best)["epoch"] == "swa"
    assert not list(files.root.glob(".best-pending-*"))


@pytest.mark.parametrize(("swa_start", "averaged"), [(3, 1), (2, 2), (1, 3)])
def test_swa_averages_from_its_start_epoch_on(env, tmp_path, swa_start, averaged):
    """SWA started an epoch after train.swa_start: with swa_start = epochs it averaged no
    model at all, and the run trained without the average it was asked for."""
    from kit.train.recipe import check_config, experiment_config, train_one
    from kit.train.runs import RunFiles

    config = check_config(experiment_config("tiny", ["train.epochs=3",
                                                     f"train.swa_start={swa_start}"]))
    files = RunFiles(tmp_path / "r")
    train_one(config, files, progress=False)
    last = load_checkpoint(files.last)
    assert last["swa"]["n_averaged"].item() == averaged
    if averaged == 1:  # the average of the last epoch alone is that epoch's weights
        swa = {k.removeprefix("module."): v for k, v in last["swa"].items()
               if k.startswith("module.")}
        assert all(torch.equal(last["model"][k], swa[k]) for k in last["model"])


def test_a_worker_group_runs_at_most_jobs_workers_at_a_time(tmp_path):
    """`kit train --jobs N` started a queued worker while N were still running: N + 1 side by
    side. Each worker holds a marker file while it runs and records how many it sees."""
    from kit.workers import WorkerGroup

    markers, seen = tmp_path / "markers", tmp_path / "seen"
    markers.mkdir()
    seen.mkdir()
    script = ("import os, sys, time\n"
              "markers, seen, me = sys.argv[1:]\n"
              "mine = os.path.join(markers, me)\n"
              "open(mine, 'w').close()\n"
              "most = 0\n"
              "for _ in range(40):  # 2 s: long past the next worker's start\n"
              "    most = max(most, len(os.listdir(markers)))\n"
              "    time.sleep(0.05)\n"
              "os.remove(mine)\n"
              "with open(os.path.join(seen, me), 'w') as fh:\n"
              "    fh.write(str(most))\n")
    queued = [([sys.executable, "-c", script, str(markers), str(seen), str(i)],
               dict(os.environ)) for i in range(5)]
    with WorkerGroup() as group:
        codes = group.wait(queued, jobs=2)
    assert codes == [0] * 5
    most = [int((seen / str(i)).read_text()) for i in range(5)]
    assert max(most) == 2, most  # side by side, never more than two



def _variable_valid(env, tmp_path) -> Path:
    """The tiny valid file with its first two sequences cut to 30 steps (the others 60)."""
    frame = pl.read_parquet(env / "data" / "valid.parquet")
    first_two = frame["seq_ix"].unique(maintain_order=True)[:2].to_list()
    frame = frame.filter(~pl.col("seq_ix").is_in(first_two) | (pl.col("step_in_seq") < 30))
    frame.write_parquet(tmp_path / "valid_var.parquet")
    return tmp_path / "valid_var.parquet"


def test_tail_truncation_points_val_rows_at_the_kept_steps_of_every_sequence(env, tmp_path):
    """data.truncate = "tail" keeps each sequence's last seq_len steps: a shorter one keeps
    all of its own (a start of len - seq_len < 0 pointed val_rows 10 rows early, onto rows of
    the sequence before). And the cut flag reads only the validated sequences."""
    from kit.train.data import load_train_data

    valid = _variable_valid(env, tmp_path)
    config = _split_config(env / "data" / "train.parquet", split="file", valid=str(valid),
                           seq_len=40, truncate="tail")
    data = load_train_data(config)
    frame = pl.read_parquet(valid).with_row_index()
    frame = frame.with_columns(pl.len().over("seq_ix").cast(pl.Int64).alias("n"))
    kept = frame.filter(pl.col("need_prediction")
                        & (pl.col("step_in_seq") >= pl.col("n") - 40))["index"].to_numpy()
    np.testing.assert_array_equal(np.sort(data.valid.rows), kept)
    assert data.valid_truncated  # the 60-step sequences were cut to 40
    config["train"]["max_valid_seqs"] = 2  # only the two short ones: nothing validated is cut
    assert not load_train_data(config).valid_truncated


def test_the_normaliser_fits_on_the_training_sequences_the_limit_keeps(env):
    """train.max_train_seqs: the normaliser sees the sequences that train, not the whole
    split (fit on all of them, a limited run's inputs were not standardised)."""
    from kit.train.data import load_train_data

    config = _split_config(env / "data" / "train.parquet", split="file")
    config["train"]["max_train_seqs"] = 2
    limited = load_train_data(config)
    x = limited.train.x.numpy()  # whole sequences: every step real
    assert len(x) == 2
    np.testing.assert_allclose(x.reshape(-1, x.shape[-1]).mean(axis=0), 0.0, atol=0.05)
    config["train"]["max_train_seqs"] = 0
    assert not np.allclose(load_train_data(config).normaliser.center, limited.normaliser.center)


def test_a_folder_holding_only_a_metrics_file_is_not_trained_into(env, tmp_path):
    """An out-of-fold group's folder holds metrics.json alone: a run trained there replaced
    the out-of-fold result."""
    oof = tmp_path / "runs" / "tiny" / "x-s7-oof"
    oof.mkdir(parents=True)
    (oof / "metrics.json").write_text('{"kind": "oof", "finished": true}')
    out = run_cli("train", "exp=tiny", "--run-dir", oof, "-q", expect=2).output
    assert "already holds a run (metrics.json)" in out, out
    assert json.loads((oof / "metrics.json").read_text())["kind"] == "oof"


def test_a_file_system_without_flock_counts_as_unlocked(tmp_path, monkeypatch):
    """flock_taken on NFS (flock raising EBADF): no one holds it, so --resume finds the run
    (taken, every run looked trained elsewhere and nothing resumed)."""
    import errno
    import fcntl

    from kit.train.runs import flock_taken

    (tmp_path / "lock").write_text("")
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(
        OSError(errno.EBADF, "Bad file descriptor")))
    assert flock_taken(tmp_path / "lock") is False


def test_a_best_moved_halfway_is_finished_on_the_next_promote(tmp_path):
    """A kill while a new best moved into place left some of its files pending: the next
    promote moves what is left (a missing one raised FileNotFoundError)."""
    from kit.train.runs import RunFiles

    files = RunFiles(tmp_path)
    pending = files.pending_best(3)
    pending.mkdir()
    (pending / "val_rows.npy").write_bytes(b"rows")
    files.best.write_bytes(b"moved before the kill")
    files.promote_best(3)
    assert files.val_rows.read_bytes() == b"rows" and not pending.exists()
    assert files.best.read_bytes() == b"moved before the kill"


def _group_record(exp_dir: Path, stamp: str, config: dict) -> None:
    from kit.train.groups import GROUPS_DIR, group_config

    (exp_dir / GROUPS_DIR).mkdir(parents=True, exist_ok=True)
    (exp_dir / GROUPS_DIR / f"{stamp}.json").write_text(json.dumps(
        {"seeds": [1, 2], "folds": 0, "config": group_config(config)}))


def test_a_group_resume_takes_the_newest_unfinished_group(env, tmp_path):
    """Of two paused groups with the same seeds and settings the newest resumes; of groups
    with other settings only, the error names the newest."""
    from kit.config import ConfigError
    from kit.train.groups import resumable_group
    from kit.train.recipe import experiment_config

    base = experiment_config("tiny")
    exp_dir = tmp_path / "runs" / "tiny"
    for stamp in ("20260101-000000", "20260102-000000"):
        _group_record(exp_dir, stamp, base)
    assert resumable_group(exp_dir, [2, 1], 0, base) == "20260102-000000"
    other = tmp_path / "runs" / "other"
    for stamp, lr in (("20260101-000000", 0.02), ("20260102-000000", 0.03)):
        _group_record(other, stamp, experiment_config("tiny", [f"train.lr={lr}"]))
    with pytest.raises(ConfigError, match="the unfinished group 20260102-000000 .* "
                                          r"\(train.lr \(was 0.03, now 0.05\)\)"):
        resumable_group(other, [1, 2], 0, experiment_config("tiny", ["train.lr=0.05"]))


@pytest.mark.parametrize("center, scale, noted", [
    ([0.0, 0.0], [1.0, 1.0], False), ([0.0, 0.0], [100.0, 1.0], True),
    ([0.0, 0.0], [0.01, 1.0], True), ([5.0, 0.0], [10.0, 1.0], False),
    ([31.0, 0.0], [10.0, 1.0], True), ([-4.0, 0.0], [1.0, 1.0], True),
])
def test_the_targets_note_names_a_mean_past_3_stds_or_a_spread_outside_1_30_to_30(
        center, scale, noted):
    from kit.competition import spec_from_dict
    from kit.train.data import far_from_standard

    spec = spec_from_dict({"name": "two", "features": ["a"], "targets": ["y0", "y1"],
                           "seq_len": 0, "warmup": 0}, "<tests>")
    note = far_from_standard(spec, np.array(center), np.array(scale))
    assert (note is not None) == noted
    if noted:
        assert note.startswith("the targets y0 (mean ") and "normaliser.targets = true" in note


def test_a_fold_group_started_with_a_held_out_fraction_still_resumes(env, tmp_path):
    """--folds with data.valid_fraction is refused now (each fold places its own validation),
    but a group an older kit started that way must still resume with its own command: the
    refusal pointed the user at a new group and lost the paused one."""
    command = ["train", "exp=tiny", "--folds", 2, "data.split=random", "train.epochs=2", "-q"]
    run_cli(*command, "--stop-after-epochs", 1)
    exp = tmp_path / "runs" / "tiny"
    (record,) = (exp / ".groups").glob("*.json")
    stored = json.loads(record.read_text())
    stored["config"]["data"]["valid_fraction"] = 0.5  # as the older kit recorded the group
    record.write_text(json.dumps(stored))
    for run in _run_dirs(exp):
        config = tomllib.loads((run / "config.toml").read_text())
        config["data"]["valid_fraction"] = 0.5
        (run / "config.toml").write_text(tomli_w.dumps(config))
        # the older kit's last.pt kept no config text (else this is an edit, refused)
        checkpoint = torch.load(run / "last.pt", weights_only=True)
        del checkpoint["config_toml"]
        torch.save(checkpoint, run / "last.pt")
    out = run_cli(*command, "data.valid_fraction=0.5", expect=2).output  # a new group: refused
    assert "data.valid_fraction = 0.5 choose a single held-out split" in out, out
    out = run_cli(*command, "data.valid_fraction=0.5", "--resume").output
    assert "out-of-fold score" in out, out
    assert list(_histories(exp).values()) == [2, 2] and len(list(exp.glob("*-oof"))) == 1


def test_a_single_fold_run_resumes_with_its_own_config_as_the_experiment(env, tmp_path):
    """A fold run's config.toml holds data.fold, which a new run may not set by hand; given
    as the experiment of `--resume --run-dir` of that fold run it names the run's own fold,
    so the resume must go on, not be told to train folds with --folds K."""
    run_cli("train", "exp=tiny", "--folds", 2, "train.epochs=2", "--stop-after-epochs", 1, "-q")
    fold = _run_dirs(tmp_path / "runs" / "tiny")[0]
    assert tomllib.loads((fold / "config.toml").read_text())["data"]["fold"] == [2, 0]
    out = run_cli("train", fold / "config.toml", "--resume", "--run-dir", fold, "-q").output
    assert "finished" in out and "train folds with --folds K" not in out, out
    assert _histories(tmp_path / "runs" / "tiny")[fold.name] == 2
    # a new run of the same config is still refused
    out = run_cli("train", fold / "config.toml", "-q", expect=2).output
    assert "train folds with --folds K" in out


def test_a_group_failure_says_an_error_was_printed_when_any_failed_seed_printed_one(tmp_path):
    """Of a --jobs group one seed may exit with its own error and another be killed: the
    error above explains the first, so the message must point at it (it was left out unless
    every seed had printed one); with only killed seeds nothing was printed."""
    from kit.train.recipe import SeedsFailed

    mixed = SeedsFailed(["seed 1 (exit 1)", "seed 2 (killed by signal 9 (SIGKILL): out of "
                         "memory?)"], tmp_path, [])
    assert str(mixed).startswith("training failed for seed 1 (exit 1), seed 2 (killed by "
                                 "signal 9 (SIGKILL): out of memory?); an error printed above "
                                 "says why. "), str(mixed)
    killed = SeedsFailed(["seed 2 (killed by signal 9 (SIGKILL): out of memory?)"], tmp_path, [])
    assert "printed above" not in str(killed)


def test_the_far_from_standard_targets_note_is_said_once_not_again_on_resume(
        workspace, tmp_path, monkeypatch):
    """The note about targets far from mean 0 / std 1 advises a setting for a new run: a
    --resume continues the run with its own config, where the advice cannot apply."""
    spec = (workspace / "tiny-lob.toml").read_text()
    (tmp_path / "hr.toml").write_text(spec.replace('"tiny-lob"', '"tiny-hr"'))
    for name in ("train", "valid"):
        frame = pl.read_parquet(workspace / "data" / f"{name}.parquet")
        frame.with_columns(pl.col("t0") * 7 + 130).write_parquet(tmp_path / f"{name}.parquet")
    exps = tmp_path / "experiments"
    exps.mkdir()
    (exps / "hr.toml").write_text(EXPERIMENT.format(spec=tmp_path / "hr.toml", data=tmp_path,
                                                    root=tmp_path))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)
    command = ["train", "exp=hr", "train.epochs=2", "--run-dir", "runs/hr/plain", "-q"]
    out = run_cli(*command, "--stop-after-epochs", 1).output
    assert "note: the targets t0 (mean 130" in out, out
    out = run_cli(*command, "--resume").output
    assert "finished" in out and "note: the targets" not in out, out


def test_a_paused_fold_group_with_one_fold_finished_writes_no_out_of_fold_result(env, tmp_path):
    """The out-of-fold result waits for every fold: one fold finished (resumed alone) beside a
    paused one must not make an -oof folder from the paused fold's best so far."""
    command = ["train", "exp=tiny", "--folds", 2, "train.epochs=3", "-q"]
    run_cli(*command, "--stop-after-epochs", 1)
    exp = tmp_path / "runs" / "tiny"
    first, second = _run_dirs(exp)
    run_cli("train", first / "config.toml", "--resume", "--run-dir", first, "-q")
    assert json.loads((first / "metrics.json").read_text())["finished"]
    out = run_cli(*command, "--stop-after-epochs", 1, "--resume").output
    assert _histories(exp) == {first.name: 3, second.name: 2}
    assert not list(exp.glob("*-oof")) and "out-of-fold" not in out, out
    run_cli(*command, "--resume")  # its last fold finished: now the result
    (oof,) = exp.glob("*-oof")
    assert json.loads((oof / "metrics.json").read_text())["finished"]


def test_an_out_of_fold_result_is_labelled_cut_when_any_fold_validated_a_cut_sequence(
        env, tmp_path):
    """data.seq_len = 40 cuts only the train file's one 60-step sequence (the others have 30):
    the fold that validates it scores its first 40 steps, so the out-of-fold score is not on
    every scored row of the file and must say so, though the other fold cut nothing."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    long = frame["seq_ix"].unique(maintain_order=True)[0]
    frame.filter((pl.col("seq_ix") == long) | (pl.col("step_in_seq") < 30)).write_parquet(
        tmp_path / "train_var.parquet")
    run_cli("train", "exp=tiny", f"data.train={tmp_path / 'train_var.parquet'}",
            "data.seq_len=40", "--folds", 2, "train.epochs=1", "-q")
    exp = tmp_path / "runs" / "tiny"
    *folds, oof = _run_dirs(exp)
    cut = [json.loads((run / "metrics.json").read_text())["valid_truncated"] for run in folds]
    assert sorted(cut) == [False, True]  # one fold validates the long sequence
    assert json.loads((oof / "metrics.json").read_text())["valid_truncated"] is True
    assert "oof 2 folds of first 40 steps of train_var.parquet" in run_cli(
        "runs", "-e", "tiny").output


def test_a_fold_group_keeps_no_finished_fold_of_other_data(env, tmp_path):
    """A resumed fold group trains its unfinished folds on today's train file: a fold finished
    on the file before it was changed would make one out-of-fold result of two datasets."""
    import shutil

    shutil.copy(env / "data" / "train.parquet", tmp_path / "train.parquet")
    command = ["train", "exp=tiny", f"data.train={tmp_path / 'train.parquet'}", "--folds", 2,
               "train.epochs=1", "-q"]
    run_cli(*command)
    exp = tmp_path / "runs" / "tiny"
    first, second, oof = _run_dirs(exp)
    shutil.rmtree(oof)
    for name in ("metrics.json", "last.pt"):  # the second fold killed in its first epoch
        (second / name).unlink()
    frame = pl.read_parquet(tmp_path / "train.parquet")
    frame.with_columns(pl.col("t0") * 2).write_parquet(tmp_path / "train.parquet")
    out = run_cli(*command, "--resume", expect=2).output
    assert f"runs/tiny/{first.name} trained" in out and "has changed since" in out, out
    assert "the fold group's other runs would train on the new files" in out
    assert not (second / "metrics.json").exists() and not list(exp.glob("*-oof"))


def test_limits_and_metric_set_after_training_are_the_ones_pack_and_score_read(env, tmp_path):
    """A run keeps a copy of its spec; kit pack's time budget and kit score (without --spec)
    read its [limits] and [metric], so limits added after training were ignored without a
    word and a package over the user's own limit passed both (r270). The spec file as it is
    now gives them (neither changes what the model learnt), and each command says so."""
    import polars as pl

    spec = tmp_path / "mine.toml"
    spec.write_text(SPEC_TOML)
    exp = tmp_path / "mine-exp.toml"
    exp.write_text(f'extends = "{env / "experiments" / "tiny.toml"}"\nspec = "{spec}"\n')
    run = tmp_path / "r"
    run_cli("train", exp, "train.epochs=1", "--run-dir", run, "-q")
    out = run_cli("pack", run, "--name", "before", "--out", tmp_path / "subs").output
    assert "of the 5,400 s limit" in out and "changed since" not in out, out
    spec.write_text(SPEC_TOML + "[limits]\ntime_limit_s = 2\ntest_rows = 100000\n")
    out = run_cli("pack", run, "--name", "after", "--out", tmp_path / "subs", "--force").output
    assert f"spec 'tiny-lob' ({spec}): its [limits] changed since" in out, out
    assert "for 100,000 test rows of the 2.0 s limit" in out, out
    # a package made before the edit: kit score takes the spec file's limits too, and says so
    valid = pl.read_parquet(env / "data" / "valid.parquet")
    out = run_cli("score", tmp_path / "subs" / "before.zip", "--data",
                  env / "data" / "valid.parquet", "--seqs", 1, "-q", expect=None).output
    assert "its [limits] changed since" in out and "of the 2.0 s limit" in out, out
    assert valid.height  # (the file scored)
    # a spec file broken since: the run's own copy, as before (a pack must not fail on it)
    spec.write_text("[[[")
    out = run_cli("pack", run, "--name", "broken", "--out", tmp_path / "subs").output
    assert "of the 5,400 s limit" in out and "changed since" not in out, out
    # ... and said: a typo kept the old limits without a word (r305)
    assert f"spec 'tiny-lob': {spec} does not load (" in out, out
    assert "keep the [metric] and [limits] stored when" in out, out
