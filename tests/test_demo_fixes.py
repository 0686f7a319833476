"""kit demo fixes: a competition of one's own given with --data (the missing file named, its
folder never offered for deletion), an interruption that says what it left, and --seqs above
the valid file's sequences."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.cli import run_cli

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def _own_competition(root: Path) -> Path:
    """A spec the synthetic generators cannot make (its own feature names), an experiment on
    it, and a folder of its train and valid files (no oracle file yet); returns the folder."""
    (root / "workouts.toml").write_text(
        'name = "workouts"\nfeatures = ["hr", "speed"]\ntargets = ["y"]\nwarmup = 2\n')
    exps = root / "experiments"
    exps.mkdir()
    (exps / "wk.toml").write_text(f'extends = "{EXPERIMENTS / "base.toml"}"\n'
                                  f'spec = "{root / "workouts.toml"}"\n')
    rng = np.random.default_rng(0)
    data = root / "mine"
    data.mkdir()
    for name, ids in (("train", range(6)), ("valid", range(6, 9))):
        frames = [pl.DataFrame({"seq_ix": [s] * 20, "step_in_seq": list(range(20)),
                                "need_prediction": [step >= 2 for step in range(20)],
                                "hr": rng.normal(size=20), "speed": rng.normal(size=20),
                                "y": rng.normal(size=20)}) for s in ids]
        pl.concat(frames).write_parquet(data / f"{name}.parquet")
    return data


@pytest.fixture
def own(tmp_path, monkeypatch):
    data = _own_competition(tmp_path)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path / "experiments"))
    monkeypatch.chdir(tmp_path)
    return data


def test_own_data_without_its_oracle_file_names_that_file(own):
    """--data was ignored: the demo said the generators cannot make the competition and that
    the demo runs the built-in ones, though README says --data with the three files works."""
    out = run_cli("demo", "--exp", "wk", "--data", "mine", "-q", "--seeds", 1, expect=2).output
    assert ("mine lacks valid_oracle.parquet (seq_ix, step_in_seq, one column per output: y; "
            "row for row the valid file)") in out, out
    assert "kit demo runs the built-in competitions" not in out and "Traceback" not in out
    assert not Path("runs").exists()  # nothing trained
    # without --data: the refusal names the --data route and its three files
    out = run_cli("demo", "--exp", "wk", "-q", "--seeds", 1, expect=2).output
    assert "the built-in generators cannot make for workouts" in out, out
    assert ("or through kit demo --data DIR, a folder that holds its train.parquet, "
            "valid.parquet and valid_oracle.parquet (seq_ix, step_in_seq,") in out


def test_own_data_is_not_offered_for_deletion_and_seqs_above_the_file_scores_it_all(own):
    """"using mine (delete it to regenerate)": the generators cannot make it again, so that
    deleted the user's only copy. --seqs 1000 on 3 valid sequences said "the first 3"."""
    pl.read_parquet(own / "valid.parquet").select("seq_ix", "step_in_seq", "y").write_parquet(
        own / "valid_oracle.parquet")
    out = run_cli("demo", "--exp", "wk", "--data", "mine", "-q", "--seeds", 1, "--seqs", 1000,
                  "train.epochs=1", "train.warmup_epochs=0", "model.hidden=8").output
    assert "using mine\n" in out and "regenerate" not in out, out
    assert "of the oracle's 1.0000 on the whole valid set (all 3 sequences)" in out, out
    assert "the first 3 valid sequences" not in out


def _started_demo(cwd: Path, seeds: int) -> subprocess.Popen:
    """`kit demo` on small synthetic data, once each seed's run has a last.pt (or it ended)."""
    run_cli("data", "synth", "--out", cwd / "data/synth", "--train-seqs", 4, "--valid-seqs", 2,
            "-q")
    cmd = [sys.executable, "-m", "kit", "demo", "-q", "--seeds", str(seeds), "train.epochs=400",
           "train.patience=400", "model.hidden=8"]  # no run can finish meanwhile
    child = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "KIT_EXPERIMENTS": str(EXPERIMENTS)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while child.poll() is None and len(list(cwd.glob("runs/gru_base/*/last.pt"))) < seeds:
        time.sleep(0.05)
    return child


@pytest.mark.parametrize("signum, seeds", [(signal.SIGINT, 2), (signal.SIGTERM, 1)],
                         ids=["ctrl-c of a group", "sigterm of one seed"])
def test_an_interrupted_demo_says_which_runs_it_left_and_how_to_finish_them(
        tmp_path, monkeypatch, signum, seeds):
    """It exited 130/143 without a word after the train header, leaving unfinished runs that
    kit runs lists and kit ensemble select may take up."""
    child = _started_demo(tmp_path, seeds)
    child.send_signal(signum)
    out, err = child.communicate()
    assert child.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert "using data/synth (delete it to regenerate)" in out  # its own synthetic data
    [line] = [line for line in err.splitlines() if line.strip()]
    ended = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    left = sorted(p.parent for p in tmp_path.glob("runs/gru_base/*/last.pt"))
    assert len(left) == seeds
    assert line.startswith(f"kit demo {ended} at its train stage: it left {seeds} unfinished "
                           f"run(s) in runs/gru_base/ ({', '.join(p.name for p in left)})"), line
    assert f"`rm -r {' '.join(str(p.relative_to(tmp_path)) for p in left)}`" in line
    # the hint works: the same runs move on from their last.pt
    [command] = re.findall(r"finish them with `(kit train [^`]*--resume)`", line)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.chdir(tmp_path)
    out = run_cli(*shlex.split(command)[1:], "--stop-after-epochs", 1, "-q").output
    assert out.count("paused") == seeds
    assert sorted(p.parent for p in tmp_path.glob("runs/gru_base/*/last.pt")) == left
