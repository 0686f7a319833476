"""A hostile environment (review r303): full disks, memory limits, dangling links.

Full disks are real: a small tmpfs mounted under the test's tmp_path and filled with
fallocate, so every write past its free space fails with ENOSPC in the kernel (root only:
mounting needs it; CI here runs as root; elsewhere these tests are skipped, saying why).
Memory is limited for real too: a `kit train` subprocess under RLIMIT_AS."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

from kit.competition import load_spec
from kit.errors import os_error_text
from kit.export.pack import pack_run
from kit.metrics import MetricReport
from kit.sweep import format_summary, make_storage
from kit.train.runs import RunFiles
from tests.cli import run_cli
from tests.conftest import raw_gru_run
from tests.test_train import raw_gru_experiment, tiny_competition

TMPFS_SIZE = 4 << 20


def can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here, None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a small tmpfs (a disk that really fills) needs root"
    return None


@contextlib.contextmanager
def full_disk(where: Path, free_kib: int):
    """A 4 MiB tmpfs at `where`, filled up to `free_kib` KiB free; unmounted on the way out."""
    if (why := can_mount()) is not None:
        pytest.skip(why)
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        fill(where, free_kib)
        yield where
    finally:
        # lazily: an engine of an in-process command may still hold a file there
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, free_kib: int) -> None:
    """Leave `free_kib` KiB free on `disk` (a filler file takes the rest)."""
    filler = disk / ".filler"
    filler.unlink(missing_ok=True)
    stats = os.statvfs(disk)
    size = stats.f_bavail * stats.f_frsize - free_kib * 1024
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny competition with `tiny` (a GRU 8x1, one epoch, a [sweep] over train.lr)."""
    root = tmp_path_factory.mktemp("r303")
    exps = tiny_competition(root, train_seqs=8, valid_seqs=3, seed=3)
    (exps / "tiny.toml").write_text(tomli_w.dumps(raw_gru_experiment(root) | {
        "sweep": {"trials": 2, "seed": 1, "params": {
            "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}}))
    return root


def kit(project: Path, *args, cwd: Path, limit_as: int | None = None):
    """`python -m kit ARGS` in a real process (Optuna logs to the stderr it found at import:
    only a process of its own shows what a user sees)."""
    def limited():  # (in the child, before exec)
        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    env = os.environ | {"KIT_EXPERIMENTS": str(project / "experiments"),
                        "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "kit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True,
                          preexec_fn=limited if limit_as else None)


def one_error_line(result) -> str:
    """The command failed as kit's errors do (exit 2), with one `error:` line and no
    traceback; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


# --- 1. kit sweep on a full disk ------------------------------------------------------------


@pytest.mark.parametrize("free_kib", [20, 200, 300, 360])
def test_a_sweep_whose_disk_fills_stops_with_one_line_saying_so(project, tmp_path, free_kib):
    """Runs and SQLite storage on one disk that fills: while the storage opens (SQLite's
    "disk I/O error" at 20 KiB), while the study is made, or in a trial whose failure Optuna
    then cannot record (its chained tracebacks ended in `AssertionError: Should not reach.`):
    always one line saying the disk is full and naming the file on it (r303)."""
    with full_disk(tmp_path / "full", free_kib) as disk:
        result = kit(project, "sweep", "exp=tiny", "-q", "--runs-dir", disk / "runs",
                     cwd=tmp_path)
        line = one_error_line(result)
    assert line.startswith("error: the disk is full: "), line
    assert f"{disk}/runs/tiny/" in line and "free some space" in line, line
    assert "Should not reach" not in result.stderr and "failed with" not in result.stderr


def test_a_trial_whose_run_folder_fills_is_failed_and_said_once(project, tmp_path):
    """The trial's own error (its run folder's disk is full, the storage's is not): the trial
    is marked failed, as Ctrl-C marks it, and the sweep says the file in one line: Optuna's
    warning with the traceback is not printed before it (r303)."""
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    with full_disk(tmp_path / "full", 0) as disk:
        result = kit(project, "sweep", "exp=tiny", "-q", "--runs-dir", disk / "runs",
                     "--storage", storage, cwd=tmp_path)
        line = one_error_line(result)
    assert line.startswith(f"error: the disk is full: {disk}/runs/tiny/tiny-t0000/"), line
    assert "No space left on device" in line and "trial 0 is marked failed" in line, line
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage))
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]


# --- 2. val_preds.npy / val_rows.npy on a full disk -----------------------------------------


def test_best_predictions_on_a_full_disk_name_the_file_and_leave_nothing(project, tmp_path):
    """save_best's predictions went through open + np.save: "[Errno 28]" with no path, or
    numpy's "N requested and M written", and their temporary file stayed (r303)."""
    from kit.features.normaliser import Normaliser
    from kit.features.sets import build_feature_set
    from kit.models import build_model

    spec = load_spec(str(project / "tiny-lob.toml"))
    features = build_feature_set(spec, ["raw"])
    model = build_model({"type": "gru", "hidden": 8, "layers": 1}, len(features.outputs),
                        spec.n_outputs)
    data = SimpleNamespace(  # what save_best reads of a TrainData
        normaliser=Normaliser.fit(np.ones((4, len(features.outputs)), np.float32)),
        feature_set=features, spec=spec, valid=SimpleNamespace(rows=np.arange(300_000)))
    report = MetricReport("pearson", {"t0": 0.1, "t1": 0.2}, 0.15)
    rows_pred = np.zeros((300_000, spec.n_outputs))  # 2.4 MB as float32: past the free space
    with full_disk(tmp_path / "full", 200) as disk:
        files = RunFiles(disk / "run")
        files.root.mkdir()
        files.about = {"model_config": {"type": "gru", "hidden": 8, "layers": 1}}
        with pytest.raises(OSError) as caught:
            files.save_best(model, report, rows_pred, data, 1, pending=True)
        left = sorted(p.name for p in files.root.iterdir())
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(files.root / ".best-pending-1" / "val_preds.npy")
    assert "(the disk is full: free some space" in os_error_text(caught.value)
    assert left == [], left  # no pending folder, no temporary file


# --- 3. kit pack and kit data synth on a full disk ------------------------------------------


def test_pack_on_a_full_disk_names_the_file_and_keeps_the_old_package(project, tmp_path):
    """Staging model.onnx (torch's writer), solution.py and the zip (zipfile's) said
    `[Errno 28] No space left on device` without a path at every free size (r303)."""
    spec = load_spec(str(project / "tiny-lob.toml"))
    run = raw_gru_run(tmp_path / "run", spec)
    with full_disk(tmp_path / "full", 3000) as disk:
        old = pack_run(run, "p", disk / "subs", budget=False)
        before = {p.name: p.read_bytes() for p in old.folder.iterdir()}
        failed = set()
        for free_kib in (0, 8, 44):
            fill(disk, free_kib)
            with pytest.raises(OSError) as caught:
                pack_run(run, "p", disk / "subs", budget=False)
            text = os_error_text(caught.value)
            assert text.startswith(f"{disk}/subs/.p.packing-"), text
            assert text.endswith("(the disk is full: free some space or choose another "
                                 "folder)"), text
            failed.add(Path(caught.value.filename).name.rsplit(".", 1)[-1])
        assert {p.name: p.read_bytes() for p in old.folder.iterdir()} == before
        left = sorted(p.name for p in (disk / "subs").iterdir())
    assert len(failed) > 1, failed  # (several stages: model.onnx, solution.py, the zip)
    assert not [name for name in left if ".packing-" in name], left


def test_synth_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """Arrow's writer: `[Errno 28] Error writing bytes to file. Detail: [errno 28] No space
    left on device`, no path (r303)."""
    monkeypatch.chdir(tmp_path)
    with full_disk(tmp_path / "full", 100) as disk:
        result = run_cli("data", "synth", "--out", disk / "d", "--train-seqs", 20,
                         "--valid-seqs", 5, expect=2)
        left = sorted(p.name for p in (disk / "d").iterdir())
    assert (f"error: {disk}/d/train.parquet: No space left on device (the disk is full: "
            "free some space or choose another folder)") in result.output, result.output
    assert left == [], left


# --- 4. out of memory in training -----------------------------------------------------------


def test_training_out_of_memory_says_so_and_what_to_lower(project, tmp_path):
    """A real failed allocation (RLIMIT_AS in the child, a GRU 4096 wide): torch's raw
    `DefaultCPUAllocator: can't allocate memory` traceback, exit 1 (r303)."""
    run_dir = tmp_path / "run"
    result = kit(project, "train", "exp=tiny", "model.hidden=4096", "-q", "--run-dir", run_dir,
                 cwd=tmp_path, limit_as=2_500_000 * 1024)
    line = one_error_line(result)
    assert line.startswith("error: training ran out of memory (it asked for "), line
    for setting in ("train.batch_size = 8", "train.chunk = 0 (whole sequences)",
                    "model.hidden = 4096", "model.layers = 1", "lower train.batch_size"):
        assert setting in line, line
    assert f"{run_dir} has no finished epoch: delete it, or --resume" in line, line


def test_a_sweep_trial_out_of_memory_fails_in_one_line_and_the_sweep_samples_on(project,
                                                                                tmp_path):
    """A trial whose values do not fit in memory got Optuna's "Trial N failed" warning and
    torch's traceback; it is a failed trial said in one line now, as a diverged one (smaller
    values may fit), and a study whose trials all fail stops on the failure streak."""
    (project / "experiments" / "wide.toml").write_text(tomli_w.dumps({
        "extends": "tiny", "sweep": {"trials": 1, "seed": 1, "params": {
            "model.hidden": {"type": "categorical", "choices": [4096]}}}}))
    result = kit(project, "sweep", "exp=wide", "-q", "--runs-dir", tmp_path / "runs",
                 cwd=tmp_path, limit_as=2_500_000 * 1024)
    line = one_error_line(result)
    assert "last 5 trials all failed" in line, line
    said = [x for x in result.stderr.splitlines() if ": training ran out of memory" in x]
    assert len(said) >= 2 and all(x.startswith("trial ") for x in said), result.stderr[-3000:]
    assert "Trial 0 failed" not in result.stderr, result.stderr[-3000:]


# --- 5. a symbolic link to nothing ----------------------------------------------------------


def test_a_dangling_link_is_named_by_every_command(project, tmp_path, monkeypatch):
    """mkdir on a link to nothing says 'File exists': `kit train` said `runs: File exists`,
    `kit pack --out` the same, while `kit sweep` created the link's target and ran (r303).
    Every command now refuses it, naming the link and its target."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(project / "experiments"))
    (tmp_path / "runs").symlink_to(tmp_path / "nowhere")
    (tmp_path / "subs").symlink_to(tmp_path / "nowhere2")
    said = (f"error: runs is a symbolic link to {tmp_path / 'nowhere'}, which does not exist: "
            "create that folder or remove the link")
    assert said in run_cli("train", "exp=tiny", "-q", expect=2).output
    assert said in run_cli("sweep", "exp=tiny", "-q", "--trials", 1, expect=2).output
    assert not (tmp_path / "nowhere").exists()  # the sweep did not create it
    run = raw_gru_run(tmp_path / "run", load_spec(str(project / "tiny-lob.toml")))
    assert (f"error: subs is a symbolic link to {tmp_path / 'nowhere2'}, which does not "
            "exist") in run_cli("pack", run, "--out", "subs", expect=2).output
    with pytest.raises(FileExistsError) as caught:
        (tmp_path / "subs" / "a").mkdir(parents=True)
    assert os_error_text(caught.value).startswith(f"{tmp_path / 'subs'} is a symbolic link")


# --- 6. the best file's command (r302) ------------------------------------------------------


def test_the_sweeps_last_line_says_kit_train_not_just():
    """`just` exists in a checkout only; `kit` wherever kit is installed (r302)."""
    text = format_summary({"study": "tiny", "storage": "sqlite:///x.db", "seconds": 1.0,
                           "counts": {}, "best": [],
                           "best_experiment": "experiments/tiny_best.toml"})
    assert text.splitlines()[-1] == ("wrote experiments/tiny_best.toml: kit train "
                                     "exp=tiny_best")


def test_a_cache_folder_linked_to_nothing_is_named_in_the_warning(tmp_path):
    """The cache's warning printed `[Errno 17] File exists: 'cache'` for a data.cache_dir that
    is a symbolic link to nothing; it names the link now, and the arrays are still built."""
    from kit.data.cache import CacheWarning
    from kit.features import feature_arrays
    from kit.features.sets import build_feature_set
    from tests.frames import make_frame, small_spec

    spec = small_spec(seq_len=20)
    path = tmp_path / "train.parquet"
    make_frame(spec, n_seqs=2).write_parquet(path)
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.warns(CacheWarning, match=rf"{link} is a symbolic link to .*nowhere, which "
                                          "does not exist"):
        arrays = feature_arrays(path, build_feature_set(spec, ["raw"]), cache_dir=link)
    assert arrays.x.shape[0] == 2 and not (tmp_path / "nowhere").exists()
