"""kit notebook --try stopped by Ctrl-C or SIGTERM, the results an earlier --try left in
OUT/local-run, and the line a failing notebook cell is reported by (review r267). Real
kernels (nbclient), real files, `kit` run as a user runs it."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

import tests.test_notebook as notebook_tests
from kit.export.notebook import NotebookError, write_notebook
from kit.export.pack import pack_run
from kit.temp import owned_temp_dir
from tests.cli import run_cli
from tests.processes import exited

package = notebook_tests.package  # its fixture: the GRU run packed as `nb`
REPO = Path(__file__).resolve().parents[1]

# Loaded by every Python process of the command; acts only in the notebook's kernel (the one
# process given KIT_TEST_FILE): it writes its pid to $SLOW_KERNEL_MARK, then never gets on,
# either while it starts (before it is ready) or in the notebook's first import of
# onnxruntime (while a cell runs). The test signals the command once the mark is there.
SLOW_KERNEL = """
import os
import sys
import time

if os.environ.get("KIT_TEST_FILE") and os.environ.get("SLOW_KERNEL_MARK"):
    def _mark_and_wait():
        with open(os.environ["SLOW_KERNEL_MARK"] + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(os.environ["SLOW_KERNEL_MARK"] + ".tmp", os.environ["SLOW_KERNEL_MARK"])
        while True:
            time.sleep(0.1)

    class _SlowOnnxruntime:
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime":
                _mark_and_wait()
            return None

    if os.environ["SLOW_KERNEL_WHEN"] == "starting":
        _mark_and_wait()
    sys.meta_path.insert(0, _SlowOnnxruntime())
"""


def _slow_kernel_env(tmp_path: Path, when: str) -> tuple[dict, Path]:
    hook = tmp_path / "slow-kernel"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_KERNEL)
    mark = tmp_path / "kernel.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")} | {
        "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
        "SLOW_KERNEL_MARK": str(mark), "SLOW_KERNEL_WHEN": when}
    return env, mark


@pytest.mark.parametrize("when, signum, code, said", [
    ("starting", signal.SIGINT, 130, "interrupted"),
    ("running", signal.SIGINT, 130, "interrupted"),
    ("running", signal.SIGTERM, 143, "stopped by SIGTERM"),
], ids=["ctrl-c-as-the-kernel-starts", "ctrl-c-as-a-cell-runs", "sigterm-as-a-cell-runs"])
def test_a_try_stopped_by_a_signal_says_so_in_one_line_and_leaves_no_kernel(
        workspace, package, tmp_path, when, signum, code, said):
    """Ctrl-C while the local kernel started printed 60-80 lines (nbclient's CancelledError,
    then its `assert self.km is not None`) and exited 1: nbclient's own handler shut the
    kernel down under the run."""
    env, mark = _slow_kernel_env(tmp_path, when)
    out = tmp_path / "kaggle"
    command = subprocess.Popen(
        [sys.executable, "-m", "kit", "notebook", str(package.zip_path), "--out", str(out),
         "--owner", "alice", "--try", str(workspace / "data/valid.parquet")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own group: signalled as a terminal signals it
    while not mark.exists():  # the kernel is up (the command is waiting on it)
        if command.poll() is not None:
            pytest.fail(f"kit notebook ended before its kernel started:\n"
                        f"{command.communicate()[0]}")
        time.sleep(0.05)
    kernel = int(mark.read_text())
    os.killpg(command.pid, signum)
    printed = command.communicate()[0]
    assert command.returncode == code, printed
    assert "Traceback" not in printed and "Error" not in printed, printed
    assert "running the notebook on" in printed
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"{said}: the notebook is written ({out})"), printed
    assert "nothing to resume" in last
    assert exited(kernel), "the notebook's kernel was left running"
    assert not (out / "local-run").exists()  # not even the kernel's log
    assert (out / "kernel/notebook.ipynb").is_file()  # the notebook is written


def test_a_try_killed_outright_leaves_its_connection_file_to_the_next_try(
        workspace, package, tmp_path, monkeypatch):
    """A --try killed with kill -9 left the kernel's connection file (its ports and key) in
    Jupyter's runtime folder for good (review r271). It is written into a folder named after
    the kit process, which the next --try removes once that process is gone."""
    env, mark = _slow_kernel_env(tmp_path, "running")
    temp, runtime = tmp_path / "temp", tmp_path / "runtime"
    temp.mkdir()
    env |= {"TMPDIR": str(temp), "JUPYTER_RUNTIME_DIR": str(runtime)}
    command = subprocess.Popen(
        [sys.executable, "-m", "kit", "notebook", str(package.zip_path), "--out",
         str(tmp_path / "kaggle"), "--owner", "alice", "--try",
         str(workspace / "data/valid.parquet")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not mark.exists():  # a cell runs: the kernel is connected
            assert command.poll() is None, "kit notebook ended before its kernel started"
            time.sleep(0.05)
        os.kill(command.pid, signal.SIGKILL)
        command.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the kernel, stuck in its cell
            os.kill(int(mark.read_text()) if mark.exists() else command.pid, signal.SIGKILL)
    assert not list(runtime.glob("kernel-*.json"))
    left = list(temp.glob("kit-notebook-kernel-*"))
    assert [p.name for p in left[0].iterdir()] == ["kernel.json"], left
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with owned_temp_dir("notebook-kernel") as fresh:  # what the next --try starts with
        assert [str(p) for p in temp.glob("kit-notebook-kernel-*")] == [fresh]


def _other_package(runs, tmp_path: Path):
    return pack_run(runs["lstm"], "other", tmp_path / "subs", budget=False)


def test_a_new_notebook_leaves_no_predictions_of_an_earlier_try(workspace, runs, package,
                                                                 tmp_path):
    """OUT/local-run/predictions.csv of an earlier --try stayed after another package was
    written into the same OUT: a user compared the old model's predictions. A failed check
    still leaves OUT as it was, and files of yours are never removed."""
    out = tmp_path / "kaggle"
    run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice",
            "--try", workspace / "data/valid.parquet")
    assert (out / "local-run/predictions.csv").is_file()
    (out / "local-run/my-notes.txt").write_text("mine")
    (out / "keep.txt").write_text("mine too")
    other = _other_package(runs, tmp_path)
    with pytest.raises(NotebookError, match="--rename"):  # a failed check: OUT as it was
        write_notebook(other.zip_path, out, owner="alice", rename="t9=x")
    assert (out / "local-run/predictions.csv").is_file()
    run_cli("notebook", other.zip_path, "--out", out, "--owner", "alice")  # no --try
    assert sorted(p.name for p in (out / "local-run").iterdir()) == ["my-notes.txt"]
    assert (out / "keep.txt").read_text() == "mine too"
    (out / "local-run/my-notes.txt").unlink()
    run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice",
            "--try", workspace / "data/valid.parquet")
    run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice")
    assert not (out / "local-run").exists()  # emptied: removed


def _without_p3(workspace: Path, tmp_path: Path) -> Path:
    path = tmp_path / "nop3.parquet"
    pl.read_parquet(workspace / "data/valid.parquet").drop("p3").write_parquet(path)
    return path


def test_a_failed_try_leaves_no_predictions_of_an_earlier_one(workspace, runs, package,
                                                              tmp_path):
    """A --try of another package that failed left the earlier run's predictions.csv, read
    as this package's."""
    out = tmp_path / "kaggle"
    run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice",
            "--try", workspace / "data/valid.parquet")
    run_cli("notebook", _other_package(runs, tmp_path).zip_path, "--out", out, "--owner",
            "alice", "--try", _without_p3(workspace, tmp_path), expect=2)
    assert not (out / "local-run/predictions.csv").exists()


def test_a_failing_cell_is_reported_by_its_own_line(workspace, package, tmp_path):
    """The notebook's message (the test file lacks p3) came last, after ~50 lines of cell
    source and a coloured IPython traceback; that traceback is in the executed notebook."""
    out = tmp_path / "kaggle"
    test = _without_p3(workspace, tmp_path)
    printed = run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice",
                      "--try", test, expect=2).output
    executed = out / "local-run/executed.ipynb"
    error = printed.strip().splitlines()[-1]
    assert error == (f"error: the notebook failed on {test}: ValueError: {test} lacks column(s) "
                     "['p3'] that the package reads (the spec's id, step, need and feature "
                     f"columns); rename them in a cell (the cell's full traceback: {executed})")
    assert "Traceback" not in printed and "\x1b[" not in printed  # no colour codes either
    assert len(printed.strip().splitlines()) == 5  # wrote, 2 kaggle commands, running, error
    outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
    assert any(o.get("ename") == "ValueError" and o.get("traceback") for o in outputs)
