"""A `kit train --jobs` worker's notes reach the user (r299): its stdout is not shown (the
command prints the epochs from each run's history), so a group resumed with --jobs on fewer
threads than it trained on did not say that it would not replay exactly."""

import os
import subprocess
import sys

import pytest
import torch

from kit.train.trainer import replay_threads
from tests.cli import run_cli
from tests.test_train import tiny_project

TRAINED_ON = 7  # threads the group first trains on: never a --jobs 2 worker's share here


@pytest.mark.skipif((os.cpu_count() or 1) // 2 == TRAINED_ON, reason="the share would match")
def test_a_group_resumed_with_jobs_on_other_threads_says_so(tmp_path, monkeypatch):
    root = tiny_project(tmp_path, train_seqs=8, valid_seqs=4, seed=2)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(root / "experiments"))
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(TRAINED_ON)  # the group's first epoch, in this process
        run_cli("train", "exp=tiny", "seeds=5,6", "--stop-after-epochs", "1", "-q")
    finally:
        torch.set_num_threads(before)
    done = subprocess.run([sys.executable, "-m", "kit", "train", "exp=tiny", "seeds=5,6",
                           "--resume", "--jobs", "2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    share = max(1, (os.cpu_count() or 1) // 2)
    assert said.count(f"resumes on {share} CPU thread(s); it trained on {TRAINED_ON} before") \
        == 2, said
    assert f"exactly ({replay_threads(TRAINED_ON)})" in said  # what this machine can do
