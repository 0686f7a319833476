"""What an interrupted or killed command leaves behind: nothing a later one trips over."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kit.atomic import atomic_bytes
from kit.temp import owned_temp_dir


def python_in(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """`code` run by a child Python whose temporary folders go to tmp_path."""
    return subprocess.run([sys.executable, "-c", code],
                          env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120)


def test_a_killed_command_s_temp_folder_is_removed_by_the_next(tmp_path, monkeypatch):
    """The folder is named after its owner, so the next command of its kind can tell it is
    dead: a name without the owner's tag was never removed (150 MB of rows per kit score)."""
    child = python_in(tmp_path, "import os, signal\n"
                      "from kit.temp import owned_temp_dir\n"
                      "folder = owned_temp_dir('leftover')\n"
                      "print(folder.name, flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert child.returncode == -9, child.stderr
    left = Path(child.stdout.strip())
    assert left.is_dir() and left.parent == tmp_path  # SIGKILL: no clean-up ran
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with owned_temp_dir("leftover") as mine:
        assert not left.exists() and Path(mine).is_dir()  # the dead owner's, not ours


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, TypeError])
def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch,
                                                                         interruption):
    """Only an OSError was tested: a Ctrl-C (or any other exception) between the write and the
    rename must not leave .NAME.tmp-PID beside a manifest or a checkpoint."""
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def interrupted(src, dst):
        raise interruption("interrupted")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(interruption):
        atomic_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_sigterm_as_the_temp_folder_is_made_leaves_no_folder(tmp_path):
    """A SIGTERM (raised as EndedBySignal) between the folder's mkdtemp and the registration
    of its clean-up left the folder for good (kit score, once in a loaded run). The signal is
    sent from inside mkdtemp, the moment it was lost in."""
    child = python_in(tmp_path, "import os, signal, tempfile\n"
                      "from kit.temp import owned_temp_dir\n"
                      "from kit.workers import EndedBySignal, ended_by_signals\n"
                      "real = tempfile.mkdtemp\n"
                      "def mkdtemp(*a, **k):\n"
                      "    made = real(*a, **k)\n"
                      "    os.kill(os.getpid(), signal.SIGTERM)\n"
                      "    return made\n"
                      "tempfile.mkdtemp = mkdtemp\n"
                      "try:\n"
                      "    with ended_by_signals():\n"
                      "        owned_temp_dir('leftover')\n"
                      "except EndedBySignal:\n"
                      "    print('stopped')\n")
    assert child.returncode == 0 and child.stdout.strip() == "stopped", child.stderr
    assert not list(tmp_path.iterdir())
