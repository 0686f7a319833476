"""Groups of runs: the runs one `kit train` command starts (its seeds, or its folds per seed).

Their folders share one time stamp: `<stamp>-s<seed>` or `<stamp>-s<seed>-fold<i>of<K>` and
`<stamp>-s<seed>-oof`. The command claims the stamp by creating `runs/<exp>/.groups/<stamp>.json`
exclusively (two commands started in the same second cannot share it: the later one takes the
next free second); the file records the seeds, K and the command's resolved config, so
`--resume` with seeds= or --folds finds exactly the group that command started and refuses
settings that would make its runs differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from kit.config import ConfigError, changed_values, differences
from kit.run_record import DATA_RECORD, TRAINED_SPEC, is_finished
from kit.train.runs import TENSORBOARD_DIR, RunFiles, flock_held, flock_taken

GROUPS_DIR = ".groups"
# written before the first epoch (the TensorBoard writer's folder holds no scalar until an
# epoch ends, and an epoch that ended wrote history.jsonl too)
STARTED_ONLY = {"config.toml", DATA_RECORD, TRAINED_SPEC, TENSORBOARD_DIR}


def new_run_id(seed: int, stamp: str) -> str:
    """A run's id: the time stamp its group claimed, then its seed (fold runs add a suffix)."""
    return f"{stamp}-s{seed}"


def member_names(seeds: list[int], folds: int, stamp: str) -> list[str]:
    """The folder names of a group's runs (the out-of-fold folders come later)."""
    return [new_run_id(seed, stamp) + (f"-fold{i + 1}of{folds}" if folds else "")
            for seed in seeds for i in range(max(folds, 1))]


def end_names(seeds: list[int], folds: int, stamp: str) -> list[str]:
    """The folders whose finished metrics.json completes the group: each run, or each seed's
    out-of-fold result."""
    return [new_run_id(seed, stamp) + ("-oof" if folds else "") for seed in seeds]


def group_config(base: dict) -> dict:
    """The command's config as the group records it: without the seed (one per run), as JSON
    reads it back."""
    return json.loads(json.dumps({k: v for k, v in base.items() if k != "seed"}))


def refuse_repeated_seeds(seeds: list[int]) -> None:
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed: the same seed trains the same model")


def claim_group(exp_dir: Path, seeds: list[int], folds: int, base: dict) -> str:
    """A stamp no other command uses, with the group's record and its members' folders."""
    refuse_repeated_seeds(seeds)  # its own second folder of a seed would exist: every second
    # would be taken, for ever
    drop_never_started(exp_dir)
    records = exp_dir / GROUPS_DIR
    records.mkdir(parents=True, exist_ok=True)
    record = {"seeds": seeds, "folds": folds, "config": group_config(base)}
    moment = time.time()
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(moment))
        moment += 1.0
        try:
            with open(records / f"{stamp}.json", "x", encoding="utf-8") as fh:  # atomic: the claim
                json.dump(record, fh, indent=2)
        except FileExistsError:
            continue
        except FileNotFoundError:  # another command's failed group removed the empty folders
            records.mkdir(parents=True, exist_ok=True)  # (dropped_if_unused) just now
            moment -= 1.0  # this stamp again
            continue
        made = []
        try:  # a folder of this stamp made by hand or by an older kit: take the next second
            for name in member_names(seeds, folds, stamp):
                (exp_dir / name).mkdir()
                made.append(exp_dir / name)
            return stamp
        except FileExistsError:
            for folder in made:
                folder.rmdir()
            (records / f"{stamp}.json").unlink()


# a claimed group takes its record's flock within microseconds of making it: an older record
# that nobody holds is a dead command's
DEAD_AFTER_S = 60.0


def drop_never_started(exp_dir: Path) -> None:
    """Groups of a command killed (SIGKILL: no dropped_if_unused) after its claim and before
    any run wrote a file (while the data cache was built): their empty folders and record.
    Nothing read them, and --resume, finding no run there, said "start one" while the empty
    folders stayed for ever (r309). Only records older than DEAD_AFTER_S that this process
    can lock: a live command holds its own."""
    for record in sorted((exp_dir / GROUPS_DIR).glob("*.json")):
        try:
            if time.time() - record.stat().st_mtime < DEAD_AFTER_S:
                continue
            with _locked_if_free(record) as free:
                info = _read_record(record) if free else None
                if info is None:
                    continue
                names = member_names(info.get("seeds") or [], info.get("folds") or 0,
                                     record.stem)
                folders = [exp_dir / name for name in names]
                if any(f.exists() and (not f.is_dir() or any(f.iterdir())) for f in folders):
                    continue  # a run started there (or a name taken by hand): kept
                for folder in folders:
                    with contextlib.suppress(FileNotFoundError):
                        folder.rmdir()
                record.unlink()
        except OSError:  # gone meanwhile, unreadable: not this command's to clean
            continue


@contextlib.contextmanager
def _locked_if_free(path: Path):
    """Yields True while this process holds `path`'s flock, False when another does or none
    can be taken here (nothing to go by: then nothing is dropped)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def resumable_group(exp_dir: Path, seeds: list[int], folds: int, base: dict) -> str:
    """The stamp of the newest unfinished group started with these seeds (in any order), K and
    settings. An unfinished group that differs only in its settings is named when none
    matches: its own command (with --resume) resumes it, even with a newer group about."""
    other = None  # (stamp, the settings that differ) of the newest such group
    held = None  # the newest such group another command trains now
    for path in sorted((exp_dir / GROUPS_DIR).glob("*.json"), reverse=True):
        record = _read_record(path)
        if (record is None or sorted(record.get("seeds") or []) != sorted(seeds)
                or record.get("folds") != folds):
            continue
        stamp = path.stem
        if all(is_finished(exp_dir / name) for name in end_names(seeds, folds, stamp)):
            continue
        if _in_use(exp_dir, seeds, folds, stamp):  # another command trains it right now
            held = held or stamp
            continue
        now = group_config(base)
        changed = [key for key in differences(record.get("config"), now)
                   if key not in ("name", "description")]  # as a single run's resume has it
        if not changed:
            return stamp
        other = other or (stamp, changed_values(changed, record.get("config"), now))
    if other:
        stamp, changed = other
        raise ConfigError(f"the unfinished group {stamp} of {exp_dir} was started with other"
                          f" settings ({', '.join(changed)}): repeat its command with --resume "
                          "(if you did, the experiment file changed since: put those values "
                          "back), or start a new group without --resume")
    what = f"{folds}-fold runs" if folds else "runs"
    if held:  # not "none": started again without --resume, it would train a second group
        raise ConfigError(f"the unfinished group {held} of {what} of seeds {seeds} under "
                          f"{exp_dir} is being trained by another command: nothing else to "
                          "resume; wait for it to end or stop it")
    raise ConfigError(f"no unfinished group of {what} of seeds {seeds} under {exp_dir} to "
                      "resume; start it without --resume")


def _in_use(exp_dir: Path, seeds: list[int], folds: int, stamp: str) -> bool:
    """Whether another command trains the group now (it holds the group's record, see
    holding_group), or one of its runs: a --resume that took it trained beside that command,
    which then deleted the folder under it."""
    return flock_taken(exp_dir / GROUPS_DIR / f"{stamp}.json") or any(
        (exp_dir / name).is_dir() and RunFiles(exp_dir / name).being_trained()
        for name in member_names(seeds, folds, stamp))


def holding_group(exp_dir: Path, stamp: str | None):
    """Held by the command that trains a group, from its claim (or its resume) to its end: a
    new group's runs take their own locks only once their data is built, and a --resume in
    between took the group (a flock on its record; released when the holder dies)."""
    if stamp is None:
        return contextlib.nullcontext()
    return flock_held(exp_dir / GROUPS_DIR / f"{stamp}.json",
                      f"the group {stamp} of {exp_dir} is being trained by another command; "
                      "wait for it to end or stop it")


class NothingStarted(KeyboardInterrupt):
    """Ctrl-C before any run of a new group finished an epoch: nothing is left to resume.
    `runs_started`: a run had begun training (its folder held its start's files), and
    `epoch_at`: (epoch, batches trained, batches per epoch) where the stop found it, when
    known (a --jobs command's workers do not say)."""

    def __init__(self, runs_started: bool = False, epoch_at: tuple | None = None):
        super().__init__()
        self.runs_started, self.epoch_at = runs_started, epoch_at


def nothing_kept_text(stop: BaseException) -> str:
    """What a stop that left nothing (NothingStarted, or a signal's `nothing_started`) says
    after "interrupted" / "stopped by SIGTERM": before any run started (its data was being
    read or built), or in a first epoch, which no checkpoint holds (r312: a stop at batch 20
    of 671 said "before any run started")."""
    epoch_at = getattr(stop, "epoch_at", None)
    if epoch_at is None and not getattr(stop, "runs_started", False):
        return "before any run started: nothing to resume; run the same command again"
    if epoch_at is None:
        where = "before any run finished its first epoch"
    else:
        epoch, done, total = epoch_at
        where = (f"in epoch {epoch} after all {total:,} batches, while validating"
                 if done >= total else f"in epoch {epoch} after {done:,} of {total:,} batches")
    return (f"{where}: no epoch had finished, so nothing is kept (a run's checkpoint, last.pt, "
            "is written at each epoch's end); run the same command again. " + LONG_EPOCH_HINT)


LONG_EPOCH_HINT = ("An epoch trains every training sequence once; to try settings in shorter "
                   "epochs, train on the first N sequences (train.max_train_seqs=N)")


@contextlib.contextmanager
def dropped_if_unused(exp_dir: Path, seeds: list[int], folds: int, stamp: str | None):
    """When the command fails, a claimed group's folders where no epoch was logged (empty, or
    config.toml alone: a bad setting found before their run trained) are removed, and its
    record too when none is left: nothing half-made is left to resume. A Ctrl-C then says so
    (NothingStarted), and so does a signal that ended the group (EndedBySignal.nothing_started)."""
    try:
        yield
    except BaseException as exc:
        if stamp is None:
            raise
        left = started = False
        for name in member_names(seeds, folds, stamp):
            folder = exp_dir / name
            if folder.is_dir() and RunFiles(folder).being_trained():  # another command's now
                left = True
                continue
            try:
                # a run that failed before its first epoch holds what its start wrote alone;
                # any other file means it trained, and its config is what --resume reads
                written = {p.name for p in folder.iterdir()}
                started = started or bool(written)
                if written and written <= STARTED_ONLY:
                    for leftover in written:
                        path = folder / leftover
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # not empty: a run trained there
                left = True
        if not left:
            (exp_dir / GROUPS_DIR / f"{stamp}.json").unlink(missing_ok=True)
            for empty in (exp_dir / GROUPS_DIR, exp_dir):  # made for this group alone (r264)
                with contextlib.suppress(OSError):  # (holding anything else: kept)
                    empty.rmdir()
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, NothingStarted):
                raise NothingStarted(started, getattr(exc, "epoch_at", None)) from None
            if hasattr(exc, "nothing_started"):  # EndedBySignal, SeedsFailed: said instead
                exc.nothing_started = True  # of a --resume hint
                exc.runs_started = started
        raise
