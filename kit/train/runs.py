"""The run directory (docs/design.md): runs/<experiment>/<run-id>/

config.toml (resolved), spec.json (the spec it trains with), history.jsonl (one line per
epoch), metrics.json, best.pt (the weights to pack, with everything needed to rebuild the
model), last.pt (everything needed to resume), val_preds.npy + val_rows.npy (the best model's
predictions on the scored validation rows and their row index in the valid file: the
ensembler's input).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import tomli_w

from kit import __version__
from kit.atomic import atomic_bytes, atomic_text
from kit.competition import CompetitionSpec
from kit.config import ConfigError
from kit.json_safe import dumps as json_dumps
from kit.metrics import SHOWN_OUTPUTS, MetricReport, outputs_summary
from kit.run_record import DATA_DIGESTS, DATA_RECORD, PENDING_BEST, TRAINED_SPEC
from kit.train.checkpoint import save_checkpoint
from kit.workers import TRAIN_WORKER_ENV

RUNS_DIR = Path("runs")


def say(text: str) -> None:
    """A note of a training run beside its epoch lines (tqdm's write: a progress bar stays
    whole). A `--jobs` worker's stdout is not shown (its command prints the epochs from the
    run's history), so there it goes to stderr, which is: a resume on other threads said why
    it would not replay exactly, and no one saw it (r299)."""
    import sys

    from tqdm import tqdm

    if os.environ.get(TRAIN_WORKER_ENV):
        tqdm.write(text, file=sys.stderr)
    else:
        tqdm.write(text)
        sys.stdout.flush()  # (as print(flush=True) did: in order with stderr in one pipe)


def epoch_line(record: dict) -> str:
    """One history.jsonl record as the trainer prints it (`  *`: a new best)."""
    def number(value) -> str:  # history.jsonl holds null where the value was NaN or inf
        return "nan" if value is None else f"{value:.4f}"

    per = outputs_text(record["val_per_target"], number)
    return (f"epoch {record['epoch']}: loss {number(record['train_loss'])}  "
            f"val {number(record['val_score'])} ({per}){'  *' if record['best'] else ''}")


def outputs_text(per_target: dict, number) -> str:
    """Each output's figure (`t0 0.4613  t1 0.2348`, `number` formats one), or past
    SHOWN_OUTPUTS outputs their summary, as kit score prints them: a next-state spec's 32
    figures made each line a wall of text. A None (NaN in history.jsonl) counts as NaN."""
    if len(per_target) > SHOWN_OUTPUTS:
        return outputs_summary(per_target)
    return "  ".join(f"{k} {number(v)}" for k, v in per_target.items())


@contextlib.contextmanager
def flock_held(path: Path, busy: str):
    """An exclusive flock on `path` (a run folder, a group's record) while the block runs,
    released when the holder exits, even killed. Yields True once held, the OSError where the
    file system has no flock (NFS), None without flock at all (Windows); another holder is a
    ConfigError saying `busy`."""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(busy) from None
        except OSError as exc:
            yield exc
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def flock_taken(path: Path) -> bool:
    """Whether another process holds the flock of flock_held on `path` now (False where there
    is nothing to go by: no such file, no flock)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # free (closing the descriptor below releases it again)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


TENSORBOARD_DIR = "tensorboard"  # train.tensorboard's writer: made before the first epoch


class RunFiles:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config_path = self.root / "config.toml"
        self.history = self.root / "history.jsonl"
        self.metrics = self.root / "metrics.json"
        self.best = self.root / "best.pt"
        self.last = self.root / "last.pt"
        self.val_preds = self.root / "val_preds.npy"
        self.val_rows = self.root / "val_rows.npy"
        self.about: dict = {}

    def refuse_reuse(self) -> None:
        """A new run must not start in a folder holding another run: its history would be
        appended to the old one and metrics.json would mix the two."""
        used = [f.name for f in (self.history, self.last, self.best, self.metrics) if f.exists()]
        if used:
            raise ConfigError(f"{self.root} already holds a run ({', '.join(used)}); continue "
                              "it with --resume, or pick another --run-dir")

    def discard_unstarted(self) -> None:
        """A run killed in its first epoch, before last.pt, cannot be resumed: drop what that
        epoch wrote so the run starts over in its folder (the same seed retrains it exactly)."""
        if not self.last.exists():
            for path in (self.history, self.best, self.val_preds, self.val_rows, self.metrics):
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def training(self):
        """Held while this process trains the run: a second process (another --resume, the
        same --run-dir twice) is refused instead of interleaving its epochs into the same
        files. A flock on the folder itself: no lock file, released when the holder dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        with flock_held(self.root, f"{self.root} is being trained by another process (a "
                        "second --resume, or the same --run-dir twice); wait for it to end or "
                        "stop it") as locked:
            if isinstance(locked, OSError):  # NFS emulates flock with write locks: none on a folder
                warnings.warn(f"{self.root}: cannot lock the run folder ({locked}); nothing "
                              "stops a second process training it", RuntimeWarning, stacklevel=3)
            elif locked:  # ours alone now: temp files left here are a killed process's
                for leftover in self.root.glob(".*.tmp-*"):
                    leftover.unlink(missing_ok=True)
            yield

    def being_trained(self) -> bool:
        """Whether another process holds the folder's training lock now (see training)."""
        return flock_taken(self.root)

    def start(self, config: dict, about: dict, spec: CompetitionSpec) -> None:
        """Create the folder and write the resolved config and the spec it trains with."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_text(self.config_path, tomli_w.dumps(toml_safe(config)))
        atomic_text(self.root / TRAINED_SPEC, json_dumps(spec.to_dict(), indent=2))
        self.about = about

    def record_data(self, digests: dict) -> None:
        """The data files' digests as the run starts (metrics.json repeats them at its end)."""
        atomic_text(self.root / DATA_RECORD, json_dumps(digests, indent=2))

    def reopen_paused(self) -> None:
        """A paused run's metrics.json (finished: false) describes the pause: once the run
        trains on, `kit runs` and `kit report` must read its history, as for any run in
        training, not the pause's epochs. Its data digests stay (in data_sha256.json) for the
        next resume's check."""
        try:
            paused = json.loads(self.metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(paused, dict) or paused.get("finished") is not False:
            return
        if not (self.root / DATA_RECORD).exists() and isinstance(paused.get(DATA_DIGESTS),
                                                                  dict):
            self.record_data(paused[DATA_DIGESTS])
        self.metrics.unlink(missing_ok=True)

    def append_history(self, record: dict) -> None:
        # strict JSON: a NaN or inf is written as null
        with open(self.history, "a", encoding="utf-8") as fh:
            fh.write(json_dumps(record) + "\n")

    def read_history(self) -> list[dict]:
        """The epoch records, read as `kit runs` reads them: a torn, hand-edited or non-UTF-8
        line is skipped (json.loads of every line raised, and a resume whose pause's
        metrics.json was already gone could never finish)."""
        from kit.reports import read_history

        return read_history(self.history)

    def truncate_history(self, epochs: int) -> None:
        """Keep the records of the first `epochs` epochs: a killed run may have logged an epoch
        past last.pt (lines that are no epoch record go too)."""
        from kit.reports import epoch_lines

        if not self.history.is_file():
            return
        # the lines as they were written: parallel progress knows lines by their text
        kept = [line for line, record in epoch_lines(self.history)
                if 0 < record["epoch"] <= epochs]
        atomic_text(self.history, "".join(line + "\n" for line in kept))

    def save_best(self, model, report: MetricReport, rows_pred: np.ndarray, data,
                  epoch: int | str, pending: bool = False) -> None:
        """best.pt, val_preds.npy and val_rows.npy of a new best (epoch: 1-based, or "swa").

        pending: into .best-pending-EPOCH/, which promote_best moves into place once last.pt
        records the epoch. Written straight into place, a kill before last.pt left a best.pt
        of an epoch the resumed run replays (on CUDA not always to the same weights) while
        metrics.json names an older one."""
        folder = self.pending_best(epoch) if pending else self.root
        folder.mkdir(exist_ok=True)
        try:
            self._write_best(folder, model, report, rows_pred, data, epoch)
        except OSError:
            if pending:  # an epoch last.pt never records: a resume would drop it anyway (r303)
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _write_best(self, folder: Path, model, report: MetricReport, rows_pred: np.ndarray,
                    data, epoch: int | str) -> None:
        save_checkpoint({
            "model": model.state_dict(),
            "model_config": self.about["model_config"],
            "normaliser": data.normaliser.to_dict(),
            "features": data.feature_set.to_dict(),
            "spec": data.spec.to_dict(),
            "epoch": epoch,
            "score": report.score,
            "per_target": report.per_target,
            "kit_version": __version__,
            "feature_format": feature_format(),  # what its features computed (kit.features)
        }, folder / self.best.name)
        for path, array in ((self.val_preds, rows_pred.astype(np.float32)),
                            (self.val_rows, data.valid.rows.astype(np.int64))):
            # through atomic_bytes: np.save into the file said "[Errno 28]" without the path,
            # or "3604 requested and 3056 written", and left its temporary file (r303)
            atomic_bytes(folder / path.name, npy_bytes(array))

    def pending_best(self, epoch: int | str) -> Path:
        return self.root / f"{PENDING_BEST}{epoch}"

    def promote_best(self, epoch: int | str) -> None:
        """Move a pending best into place (again after a kill halfway: what is left)."""
        folder = self.pending_best(epoch)
        if not folder.is_dir():
            return
        for path in (self.best, self.val_preds, self.val_rows):
            if (folder / path.name).exists():
                os.replace(folder / path.name, path)
        shutil.rmtree(folder, ignore_errors=True)

    def drop_pending_best(self) -> None:
        """Pending bests of epochs that last.pt never recorded (the process died first)."""
        for folder in self.root.glob(f"{PENDING_BEST}*"):
            shutil.rmtree(folder, ignore_errors=True)

    def write_metrics(self, finished: bool, sign: float = 1.0,
                      swa: MetricReport | None = None, pruned: bool = False,
                      diverged: str = "") -> dict:
        """metrics.json: the best epoch (or "swa" when the weight average beat every epoch);
        sign is -1 for metrics where lower is better. Without a scored epoch (the run diverged
        at once) best_epoch and score are null."""
        history = self.read_history()
        scored = [r for r in history if r["val_score"] is not None]
        best = max(scored, key=lambda r: sign * r["val_score"]) if scored else None
        if swa:
            best = {"epoch": "swa", "val_score": swa.score, "val_per_target": swa.per_target}
        metrics = {
            "finished": finished,
            **({"pruned": True} if pruned else {}),
            **({"diverged": diverged} if diverged else {}),
            "best_epoch": best and best["epoch"],
            "score": best and best["val_score"],
            "per_target": best["val_per_target"] if best else {},
            # (the last epoch's number: a line lost from the history does not shorten the run)
            "epochs": max((r["epoch"] for r in history), default=0),
            "wall_s": sum(r["seconds"] or 0.0 for r in history),
            **self.about.get("summary", {}),
        }
        atomic_text(self.metrics, json_dumps(metrics, indent=2))
        return metrics

    def tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from kit.config import ConfigError

            raise ConfigError("train.tensorboard = true needs the tensorboard package: "
                              "pip install tensorboard") from None
        return SummaryWriter(str(self.root / TENSORBOARD_DIR))


def npy_bytes(array: np.ndarray) -> bytes:
    """The array as an .npy file's bytes (np.save's format)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def feature_format() -> int:
    """kit.features.FEATURE_FORMAT, imported when a checkpoint is written: `kit runs` reads
    this module and needs no Polars."""
    from kit.features import FEATURE_FORMAT

    return FEATURE_FORMAT


def toml_safe(value):
    """None has no TOML form: drop such keys (they mean 'default')."""
    if isinstance(value, dict):
        return {k: toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [toml_safe(v) for v in value]
    return value
