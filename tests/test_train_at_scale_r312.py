"""r312: kit train at full size. A stop in the first epoch says where it was (it said "before
any run started"); startup says what it does; the normaliser fits and normalises a
memory-mapped feature cache without whole copies of it."""

import os
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from kit.features.normaliser import FIT_BLOCK_ROWS, Normaliser
from kit.train import trainer
from kit.train.groups import GROUPS_DIR, dropped_if_unused, nothing_kept_text
from kit.train.losses import MaskedLoss
from kit.workers import EndedBySignal
from tests.cli import run_cli
from tests.test_train import experiments_of, tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """test_train's tiny competition: 24 training sequences, batches of 8."""
    return tiny_project(tmp_path_factory.mktemp("r312"), train_seqs=24, valid_seqs=8, seed=1)


@pytest.fixture
def env(project, monkeypatch, tmp_path):
    return experiments_of(project, monkeypatch, tmp_path)


# --- F2: a stop in the first epoch -----------------------------------------------------------


def _signal_in_batch(monkeypatch, signum: int, batch: int) -> None:
    """A real `signum` sent to this process as the loss of training batch `batch` (1-based) is
    computed: the stop lands mid-epoch, where a user's Ctrl-C did."""
    calls = []

    class SignalledLoss(MaskedLoss):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == batch:
                os.kill(os.getpid(), signum)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(trainer, "MaskedLoss", SignalledLoss)


@pytest.mark.parametrize("signum, ended", [(signal.SIGINT, "interrupted"),
                                           (signal.SIGTERM, "stopped by SIGTERM")])
def test_a_stop_in_the_first_epoch_says_where_it_was_not_before_any_run_started(
        env, tmp_path, monkeypatch, signum, ended):
    """(r312) 24 sequences in batches of 8: 3 batches per epoch; the stop comes in the second,
    after one trained. Nothing is kept (no checkpoint yet) and the message says so, truthfully,
    with what makes epochs shorter."""
    _signal_in_batch(monkeypatch, signum, batch=2)
    out = run_cli("train", "exp=tiny", expect=128 + signum).output
    assert (f"{ended} in epoch 1 after 1 of 3 batches: no epoch had finished, so nothing is "
            "kept (a run's checkpoint, last.pt, is written at each epoch's end)") in out, out
    assert "train.max_train_seqs=N" in out
    assert "before any run started" not in out and "--resume" not in out
    assert list((tmp_path / "runs").iterdir()) == []  # the run's start files go, as before


def test_a_group_whose_workers_had_started_says_no_epoch_had_finished(tmp_path):
    """(r312) A --jobs command learns no batch count from its workers: a signal after their
    runs started (config.toml written) says no run finished an epoch, not that none started."""
    exp, stamp = tmp_path / "runs" / "tiny", "20991231-000000"
    run = exp / f"{stamp}-s1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    (exp / GROUPS_DIR).mkdir()
    (exp / GROUPS_DIR / f"{stamp}.json").write_text("{}")
    with pytest.raises(EndedBySignal) as stopped, dropped_if_unused(exp, [1], 0, stamp):
        raise EndedBySignal(signal.SIGTERM)
    assert stopped.value.nothing_started and not run.exists()
    assert nothing_kept_text(stopped.value).startswith(
        "before any run finished its first epoch: no epoch had finished, so nothing is kept")
    before = EndedBySignal(signal.SIGTERM)  # nothing written: the data was still being read
    before.nothing_started = True
    assert nothing_kept_text(before) == ("before any run started: nothing to resume; run the "
                                         "same command again")


# --- F3: startup says what it does; no whole copies of the arrays ----------------------------


def test_startup_says_what_it_does_on_stderr_and_not_with_quiet(env):
    """(r312) Reading the cache, fitting the normaliser and normalising took 30-100 s at full
    size without a word. The lines go to stderr: stdout's epoch and result lines stay as
    scripts read them."""
    shown = run_cli("train", "exp=tiny")
    for line in ("reading the features of", "fitting the standard normaliser on",
                 "normalising 24 training and 8 validation sequences"):
        assert line in shown.stderr and line not in shown.stdout, shown.output
    assert "score" in shown.stdout
    quiet = run_cli("train", "exp=tiny", "-q").output
    assert "fitting the" not in quiet and "reading the features" not in quiet


def _mapped(tmp_path: Path, rows: int, width: int = 4) -> np.ndarray:
    """A read-only memory-mapped (rows // 100, 100, width) float32 array, as the cache hands
    out."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows // 100, 100, width)) * 3 + 7).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r")


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_fit_reads_masked_rows_in_blocks_not_one_copy_of_them(tmp_path):
    """(r312) rows[mask] copied ~90% of the memory-mapped cache (1.4 GB at full size), and each
    block's variance made three float64 temporaries. A fit over more than one block of rows now
    holds one block's copies; its figures equal those of the whole copy to the bit."""
    x = _mapped(tmp_path, int(FIT_BLOCK_ROWS * 1.2))
    mask = np.random.default_rng(1).random(x.shape[:2]) < 0.9
    peak = _peak_bytes(lambda: Normaliser.fit(x, mask, "standard"))
    assert peak < 3.5 * x.nbytes, peak / x.nbytes  # the whole copy and temporaries: 4.2x
    fitted = Normaliser.fit(x, mask, "standard")
    rows = np.asarray(x).reshape(-1, x.shape[-1])[mask.reshape(-1)]  # the former way
    total = sum(rows[lo:lo + FIT_BLOCK_ROWS].sum(0, dtype=np.float64)
                for lo in range(0, len(rows), FIT_BLOCK_ROWS))
    mean = total / len(rows)
    sq = sum(((rows[lo:lo + FIT_BLOCK_ROWS].astype(np.float64) - mean) ** 2).sum(0)
             for lo in range(0, len(rows), FIT_BLOCK_ROWS))
    assert fitted.center.tobytes() == mean.astype(np.float32).tobytes()
    assert fitted.scale.tobytes() == np.sqrt(sq / len(rows)).astype(np.float32).tobytes()


def test_transform_makes_its_output_and_no_temporary_of_that_size(tmp_path):
    """(r312) x - center, the division and np.clip each allocated an array the size of the
    output (3x the arrays at full size, with the cache mapped). The output is now the only
    one, and it holds the same float32 values."""
    x = _mapped(tmp_path, 300_000)
    norm = Normaliser.fit(x, None, "standard", clip=1.0)
    peak = _peak_bytes(lambda: norm.transform(x))
    assert peak < 1.2 * x.nbytes, peak / x.nbytes
    expected = np.clip((np.asarray(x, np.float32) - norm.center) / norm.scale, -1.0, 1.0)
    assert norm.transform(x).tobytes() == expected.tobytes()


def _resident_bytes_of(path: Path) -> int:
    """The resident size of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc")
def test_a_mapped_cache_leaves_resident_memory_once_normalised(tmp_path):
    """(r312) The cache's pages, once read, stayed resident beside the normalised copy: 2x the
    arrays. They are released as transform goes (still in the page cache, not this process's
    memory)."""
    x = _mapped(tmp_path, 300_000)
    x.sum()  # every page read, as the fit's passes read them
    assert _resident_bytes_of(tmp_path / "x.npy") > 0.9 * x.nbytes
    Normaliser(method="standard", clip=5.0, center=np.zeros(4, np.float32),
               scale=np.ones(4, np.float32)).transform(x)
    assert _resident_bytes_of(tmp_path / "x.npy") < 0.1 * x.nbytes
