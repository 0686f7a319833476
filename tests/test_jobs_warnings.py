"""`kit train --jobs N`: a config's warnings are said once per command, by the command that
checked the config, not once more by each of its N workers."""

import os
import subprocess
import sys

from kit.workers import worker_pythonpath
from tests.test_train import env, workspace  # noqa: F401 (fixtures)

WARMUP = "train.warmup_epochs = 1 covers all 1 epoch(s)"


def _kit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`kit ARGS` in a child process: its workers' stderr is captured with its own."""
    return subprocess.run([sys.executable, "-m", "kit", *args], cwd=tmp_path,
                          env=os.environ | {"PYTHONPATH": worker_pythonpath()},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_jobs_group_says_a_config_warning_once(env, tmp_path):  # noqa: F811
    """Two workers: the warning was printed three times (the command, then each worker)."""
    out = _kit(tmp_path, "train", "exp=tiny", "seeds=[1,2]", "--jobs", "2", "train.epochs=1",
               "train.warmup_epochs=1", "-q")
    assert out.returncode == 0, out.stdout
    assert out.stdout.count(WARMUP) == 1, out.stdout
    assert out.stdout.count(": score ") == 2, out.stdout  # both seeds trained


def test_a_plain_train_still_says_a_config_warning(env, tmp_path):  # noqa: F811
    out = _kit(tmp_path, "train", "exp=tiny", "seed=1", "train.epochs=1",
               "train.warmup_epochs=1", "-q")
    assert out.returncode == 0, out.stdout
    assert out.stdout.count(WARMUP) == 1, out.stdout
