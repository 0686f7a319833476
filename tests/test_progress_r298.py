"""Progress bars only where someone watches them (r298): a CI log or a file of stderr held
tqdm's carriage-return frames, and TQDM_DISABLE was overridden by kit's own switch."""

import subprocess
import sys

import pytest

from kit.progress import bar_switch


def _synth_stderr(tmp_path, env: dict) -> str:
    import os

    done = subprocess.run([sys.executable, "-m", "kit", "data", "synth", "--train-seqs", "2",
                           "--valid-seqs", "1", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("TQDM_DISABLE", "KIT_PROGRESS")}
                          | env)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_command_writing_to_a_file_draws_no_bar(tmp_path):
    said = _synth_stderr(tmp_path, {})
    assert "\r" not in said and "synth predictorium" not in said, said


@pytest.mark.parametrize("progress, env, want", [
    (False, {}, {"disable": True}),          # -q
    (True, {}, {"disable": None}),           # a terminal only
    (True, {"TQDM_DISABLE": "1"}, {}),       # tqdm's own switch decides
    (True, {"KIT_PROGRESS": "1"}, {"disable": False}),  # asked for in a log
])
def test_the_switch(progress, env, want, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("KIT_PROGRESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert bar_switch(progress) == want
