"""Pins of kit/train/runs.py and kit/train/checkpoint.py found unpinned by a mutation audit: the
run folder's lock, files and formats, and what a checkpoint load refuses."""

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kit.config import ConfigError
from kit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kit.train.runs import RunFiles, epoch_line, toml_safe
from tests.test_train import file_size_limit


class _MakesAFolder:
    """Pickled as a call of os.mkdir(path): what a hostile checkpoint would run on load."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_holding_pickled_code_is_refused_without_running_it(tmp_path):
    """Checkpoints load with weights_only=True (the module's promise: no pickled code runs when
    a file is opened): a best.pt from elsewhere that pickles a call is refused by name, and the
    call never runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "best.pt"
    save_checkpoint({"model": {}, "extra": _MakesAFolder(marker)}, path)
    with pytest.raises(CheckpointError, match="the checkpoint is corrupt or not a kit "
                       "checkpoint") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))
    assert not marker.exists()


def test_a_checkpoint_written_on_a_gpu_loads_onto_the_cpu(tmp_path, monkeypatch):
    """map_location="cpu": a best.pt or last.pt written on CUDA must load where there is no GPU
    (pack, parity, a resume on a CPU); torch would restore its tensors onto cuda (an error
    without one). The file's storages are tagged as on cuda:0, as torch.save does there."""
    import torch.serialization

    path = tmp_path / "best.pt"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint({"model": {"w": torch.arange(3.0)}}, path)
    assert b"cuda:0" in path.read_bytes()
    weights = load_checkpoint(path)["model"]["w"]
    assert weights.device == torch.device("cpu")
    assert weights.tolist() == [0.0, 1.0, 2.0]


def test_a_checkpoint_of_an_old_pickle_protocol_warns_nothing(tmp_path):
    """torch's UserWarning about an unexpected pickle protocol is silenced: the CLI prints the
    one-line CheckpointError, not a warning after it. Bytes that start as pickle protocol 59
    make this torch warn (the random bytes of test_train no longer do)."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"\x80\x3b" + bytes(200))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="UnpicklingError"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []


def test_a_checkpoint_missing_a_required_key_is_refused_naming_the_keys(tmp_path):
    """load_checkpoint checks the keys its caller needs (the trainer asks last.pt for its
    optimiser): a best.pt copied over last.pt is "not a kit checkpoint (needs keys ...)", not
    a KeyError further on."""
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "spec": {}}, path)
    with pytest.raises(CheckpointError, match=r"not a kit checkpoint \(needs keys "
                       r"\['model', 'optimizer', 'epoch'\]\)"):
        load_checkpoint(path, ("model", "optimizer", "epoch"))
    assert load_checkpoint(path, ("spec",)) == {"model": {}, "spec": {}}


def test_the_training_lock_is_exclusive(tmp_path):
    """RunFiles.training holds an exclusive flock: a second holder, in this process or another
    (flock is per open file), is refused, and no shared lock is granted beside it; a shared
    lock would let two processes interleave their epochs into one run folder."""
    fcntl = pytest.importorskip("fcntl")
    root = tmp_path / "run"
    with RunFiles(root).training():
        with (pytest.raises(ConfigError, match="is being trained by another process"),
              RunFiles(root).training()):
            pass
        fd = os.open(root, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with RunFiles(root).training():  # released when the block ends
        pass


def test_an_epoch_line_shows_a_null_value_as_nan():
    """history.jsonl holds null for a NaN or inf (strict JSON) and parallel progress prints
    history lines through epoch_line: a diverged epoch reads "nan", not a TypeError."""
    record = {"epoch": 2, "train_loss": None, "val_score": None,
              "val_per_target": {"t0": None, "t1": 0.5}, "best": False}
    assert epoch_line(record) == "epoch 2: loss nan  val nan (t0 nan  t1 0.5000)"


def _record(epoch: int, seconds: float | None = 1.0, score: float = 0.1) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "val_score": score,
            "val_per_target": {"t0": score}, "lr": 1e-3, "seconds": seconds,
            "best": False}


def test_metrics_wall_time_is_the_sum_of_the_epochs(tmp_path):
    """metrics.json wall_s (what `kit runs` shows as the run's time) adds up the epochs'
    seconds, a missing one as 0."""
    files = RunFiles(tmp_path)
    for record in (_record(1, 1.0), _record(2, 2.5), _record(3, None)):
        files.append_history(record)
    metrics = files.write_metrics(finished=True)
    assert metrics["wall_s"] == pytest.approx(3.5)
    assert json.loads(files.metrics.read_text())["wall_s"] == pytest.approx(3.5)


@pytest.mark.parametrize("name", ["best.pt", "history.jsonl", "last.pt", "metrics.json"])
def test_a_folder_with_any_file_of_a_run_is_not_reused(tmp_path, name):
    """A new run is refused in a folder holding a run's files, best.pt alone included
    (docs/runs.md): its files would mix with the new run's."""
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=rf"already holds a run \({name}\)"):
        RunFiles(tmp_path).refuse_reuse()


def test_a_new_best_writes_float32_predictions_and_int64_rows(tmp_path):
    """val_preds.npy is float32 and val_rows.npy int64: the ensembler's input format (float64
    doubled the file; int32 rows overflow past 2**31 rows)."""
    files = RunFiles(tmp_path)
    files.about = {"model_config": {"type": "gru"}}
    plain = SimpleNamespace(to_dict=dict)
    data = SimpleNamespace(normaliser=plain, feature_set=plain, spec=plain,
                           valid=SimpleNamespace(rows=np.array([3, 5, 8], dtype=np.int32)))
    report = SimpleNamespace(score=0.5, per_target={"t0": 0.5})
    preds = np.arange(6, dtype=np.float64).reshape(3, 2)
    files.save_best(torch.nn.Linear(2, 2), report, preds, data, epoch=1)
    saved_preds, saved_rows = np.load(files.val_preds), np.load(files.val_rows)
    assert saved_preds.dtype == np.float32 and saved_rows.dtype == np.int64
    np.testing.assert_array_equal(saved_preds, preds)
    np.testing.assert_array_equal(saved_rows, [3, 5, 8])
    assert load_checkpoint(files.best)["epoch"] == 1


def test_truncating_the_history_keeps_epochs_one_to_n_as_written(tmp_path):
    """truncate_history keeps the lines of epochs 1..n, byte for byte: the epochs past last.pt
    go, and so does an epoch-0 line (no epoch of a run: epochs count from 1) and a line that
    is no epoch record."""
    files = RunFiles(tmp_path)
    lines = [json.dumps(_record(0)), json.dumps(_record(1)), "not json",
             json.dumps(_record(2)) + "  ", json.dumps(_record(3))]
    files.history.write_text("\n".join(lines) + "\n")
    files.truncate_history(2)
    assert files.history.read_text() == lines[1] + "\n" + lines[3] + "\n"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"),
                    reason="needs RLIMIT_FSIZE (POSIX)")
def test_truncating_the_history_on_a_full_disk_keeps_the_old_history(tmp_path):
    """truncate_history rewrites history.jsonl through a temp file and a rename: a write that
    fails midway (a full disk; here a file-size limit) leaves the old history whole, where a
    rewrite in place left a torn file and a resumed run lost its epochs."""
    files = RunFiles(tmp_path)
    lines = [json.dumps(_record(epoch) | {"pad": "x" * 2000}) for epoch in (1, 2, 3)]
    before = "".join(line + "\n" for line in lines)
    files.history.write_text(before)
    with file_size_limit(3000), pytest.raises(OSError):
        files.truncate_history(2)  # keeps two lines of 2,000+ bytes: past the limit
    assert files.history.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_toml_safe_drops_none_inside_lists_of_tables():
    """None has no TOML form: toml_safe drops such keys at any depth, inside a list of tables
    too (a list was returned as it was, and tomli_w failed as the run started)."""
    import tomli_w

    config = {"a": None, "features": {"groups": [{"name": "raw", "window": None}, "ewm"]},
              "n": [[{"x": None, "y": 1}]]}
    safe = toml_safe(config)
    assert safe == {"features": {"groups": [{"name": "raw"}, "ewm"]}, "n": [[{"y": 1}]]}
    tomli_w.dumps(safe)
