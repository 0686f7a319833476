"""`kit ensemble select`: greedy forward selection with replacement (Caruana et al. 2004).

Candidates are runs (their val_preds.npy on the rows in val_rows.npy) or out-of-fold groups
(`<id>-oof/`: every scored train row once, from K fold runs). All must cover the same rows of the
same file. Starting from the best K candidates (or nothing), each iteration adds the candidate
that maximises the competition score of the equal-weight blend of everything picked so far
(a candidate may be picked again: that is how weights grow); weights = picks / total, cut back to
the best point of the trajectory.

Speed: the metrics kit uses for selection (weighted Pearson, R², RMSE) are functions of the
first and second weighted moments of the blend, so one pass over the data builds, per target, the
weighted covariance matrix of [truth, candidate predictions]; after that each step scores every
candidate in O(candidates). The metric's prediction clip is exact too: a blend can only leave
the clip range on a row where some candidate does, so the moments of the clipped blend are the
unclipped ones plus corrections summed over those few rows. The trajectory is re-scored with
the real metric and the cut uses those scores. Other metrics (MAE) are scored exactly, every
candidate at every step.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import tomli_w

from kit.atomic import atomic_text
from kit.competition import METRICS, CompetitionSpec, MetricSpec, blend_spec_difference
from kit.config import finite_number, validation_file
from kit.errors import KitError
from kit.metrics import SHOWN_OUTPUTS, WEIGHT_FLOOR, evaluate, metric_value, outputs_summary
from kit.run_record import (
    UNRECORDED,
    changed_data_message,
    data_changes,
    data_file_of,
    fold_run,
    is_finished,
    load_array,
    read_config,
    read_metrics,
    recorded_digests,
    relocated,
    runs_folder_here,
)
from kit.toml_file import read_toml

ENSEMBLES_DIR = Path("runs/ensembles")
FOLD_RUN = re.compile(r"-fold\d+of\d+$")  # kit train --folds K names its fold runs so
QUADRATIC = ("weighted_pearson", "r2", "rmse")
CHUNK_ROWS = 200_000
# predictions within this multiple of the metric's clip bound are scored from moments
MOMENTS_RANGE = 1e4


class EnsembleError(KitError):
    """Candidates that cannot be ensembled, or a malformed ensemble file."""


@dataclass
class Candidate:
    """One selectable model: a run, or the K fold runs of an out-of-fold group."""

    name: str
    path: Path
    runs: list[Path]  # what gets packed (one run, or the fold runs)
    preds: np.ndarray  # (rows, K) float32
    rows: np.ndarray  # (rows,) row index in `data`
    data: Path  # the file the rows index
    spec: CompetitionSpec


def _read_config(run: Path) -> dict:
    if not (run / "config.toml").is_file():
        raise EnsembleError(f"{run}: no config.toml; is this a run directory?")
    return read_config(run)


def _data_path(run: Path, configured: object) -> Path:
    """A run's data file as its config names it, a relative path in the run's checkout."""
    if not isinstance(configured, str) or not configured:  # a config.toml edited or replaced
        raise EnsembleError(f"{run}: its config.toml names no data file (data.train, "
                            "data.valid): not the config kit train wrote")
    return data_file_of(run, configured) or Path(configured)


def load_candidate(path: Path) -> Candidate:
    """A run directory (val_preds.npy) or an out-of-fold directory (oof_preds.npy)."""
    path = Path(path).resolve()
    summary = read_metrics(path)
    if summary is None:
        raise EnsembleError(f"{path}: no readable metrics.json: not a finished run (a run "
                            "still training, or killed, is not a candidate)")
    if summary.get("finished") is not True:
        raise EnsembleError(f"{path}: the run has not finished (metrics.json says so); "
                            "finish it with kit train --resume first")
    if lost := lost_files(path):
        raise EnsembleError(lost_files_message(path, lost))
    if (path / "oof_preds.npy").is_file():
        listed = summary.get("runs")
        runs = [fold_run(path, r) for r in listed] if isinstance(listed, list) else []
        if not runs:
            raise EnsembleError(f"{path}: the out-of-fold group names no fold runs")
        if missing := missing_fold_runs(path):
            raise EnsembleError(missing_fold_runs_message(path, missing))
        config = _read_config(runs[0])
        preds, rows = (load_array(path / f"oof_{kind}.npy", kind) for kind in ("preds", "rows"))
        data = _data_path(runs[0], config["data"]["train"])
    elif (path / "val_preds.npy").is_file():
        config = _read_config(path)
        _refuse_validation_on_training_rows(path, config, summary)
        runs = [path]
        preds, rows = (load_array(path / f"val_{kind}.npy", kind) for kind in ("preds", "rows"))
        # a fold run or a split run validated on part of the train file: rows index that file
        data = _data_path(path, validation_file(config, summary))
    else:
        raise EnsembleError(f"{path}: neither val_preds.npy (a finished run) nor oof_preds.npy "
                            "(an out-of-fold group): nothing to select from")
    for run in runs:  # scored against today's file, predictions of another would mislead
        if changed := data_changes(run):
            raise EnsembleError(changed_data_message(run, changed))
        _refuse_tail_cut_validation(run)
    if len(preds) != len(rows):
        raise EnsembleError(f"{path}: predictions {preds.shape} do not match rows {rows.shape}")
    refuse_non_finite(str(path), preds)
    from kit.export.frozen import trained_spec  # (torch: imported when a run is read)

    name = _run_name(str(path))
    return Candidate(name, path, runs, preds.astype(np.float32), rows.astype(np.int64),
                     data, trained_spec(runs[0]))  # the spec its predictions' columns are of


def _refuse_validation_on_training_rows(run: Path, config: dict, summary: dict) -> None:
    """A run whose data.valid was its data.train scored (and early-stopped) on its training
    rows: beside an out-of-fold group of the same file it passed as the same rows, and its
    in-sample score took all the weight (r311). Read from the run's own record, so runs
    trained before kit train refused it are caught too."""
    if (how := validated_on_training_rows(run, config, summary)) is None:
        return
    raise EnsembleError(_in_sample_message(run, how))


def _in_sample_message(run: Path, how: str) -> str:
    return (f"{run}: validated on the rows it trained on ({how}): its score and validation "
            "predictions are in-sample, and selection would weigh it as if it generalised; "
            f"leave it out, or {RETRAIN_HELD_OUT}")


def _in_sample_text(in_sample: dict[Path, str]) -> str:
    """The runs of a folder left out as validated on their training rows, each with how (r317:
    one such run, trained by a kit before r311, refused its whole folder)."""
    named = [f"{run.name} ({_score_of(run)}{how})" for run, how in list(in_sample.items())[:5]]
    more = f"; and {len(in_sample) - 5} more" if len(in_sample) > 5 else ""
    one = len(in_sample) == 1
    return (f"{len(in_sample)} run(s) validated on the rows they trained on (trained by a kit "
            f"before r311, which allowed it): {'; '.join(named)}{more}; "
            f"{'its score and predictions are' if one else 'their scores and predictions are'} "
            f"in-sample, and selection would weigh {'it' if one else 'them'} as if "
            f"{'it' if one else 'they'} generalised: "
            f"{RETRAIN_HELD_OUT.replace('train it', 'train it' if one else 'train each')}")


RETRAIN_HELD_OUT = ("train it again on held-out rows (another data.valid, data.split = "
                    "\"random\" or \"group\", or kit train --folds K for out-of-fold "
                    "predictions of every train row)")


def validated_on_training_rows(run: Path, config: dict | None = None,
                               summary: dict | None = None) -> str | None:
    """How a run's config makes its validation rows its training rows (`data.valid 'x' is
    data.train 'x': the same path, with data.split = "file"`), or None when they are held out
    or its config does not read (an out-of-fold group has none: its fold runs are held out).
    Read from its own config.toml and metrics.json when not given: kit runs, select over a
    folder, the ensemble's report and pack say such a run, trained by a kit before r311 (r317)."""
    try:
        config = read_config(run) if config is None else config
    except KitError:
        return None
    summary = (read_metrics(run) or {}) if summary is None else summary
    data = config.get("data") or {}
    train, valid = data.get("train"), data.get("valid")
    held_out = (bool(data.get("fold")) or "fold" in summary
                or data.get("split", "file") != "file")  # (validation_file's rule)
    if held_out or not (isinstance(train, str) and isinstance(valid, str)):
        return None
    how = _same_file_recorded(Path(run), train, valid, summary)
    return None if how is None else (f"data.valid {valid!r} is data.train {train!r}: {how}, "
                                     "with data.split = \"file\"")


def _same_file_recorded(run: Path, train: str, valid: str, summary: dict) -> str | None:
    """How a run's configured valid file is its train file: one name, one file here, or the
    same sha256 in what the run recorded; None when they differ."""
    if train == valid:
        return "the same path"
    here = [data_file_of(run, name) for name in (train, valid)]
    if all(here) and os.path.samefile(*here):
        return "the same file"
    recorded = recorded_digests(run, summary)
    if isinstance(recorded.get(train), str) and recorded.get(train) == recorded.get(valid):
        return "the same content (the sha256 the run recorded of each)"
    return None


def listed_fold_runs(group: Path) -> list[Path]:
    """The fold runs an out-of-fold group's metrics.json lists (`runs`), where they are now."""
    listed = (read_metrics(group) or {}).get("runs")
    return [fold_run(group, r) for r in listed if isinstance(r, str)] if isinstance(
        listed, list) else []


def missing_fold_runs(group: Path) -> list[Path]:
    """The fold runs an out-of-fold group's metrics.json lists that are gone (their folder,
    or its config.toml), as the group's siblings they were."""
    return [group.parent / run.name for run in listed_fold_runs(group)
            if not (run / "config.toml").is_file()]


def missing_fold_runs_message(group: Path, missing: list[Path]) -> str:
    """r311: "no config.toml; is this a run directory?" named the fold run, not the group
    that lists it, nor what to do."""
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return (f"out-of-fold group {group} lists fold run {missing[0]}{more}, which is missing "
            f"(deleted or moved): restore it, or train the group again "
            f"({_train_group_again(group, missing[0])}, with any overrides it started with), "
            "or leave the group out")


def _train_group_again(group: Path, fold: Path) -> str:
    """`kit train EXP seed=S --folds K` for a group STAMP-sSEED-oof of fold runs ...ofK."""
    seed = re.search(r"-s(\d+)-oof$", group.name)
    k = re.search(r"-fold\d+of(\d+)$", fold.name)
    return (f"`kit train {group.parent.name} seed={seed[1] if seed else 'SEED'} "
            f"--folds {k[1] if k else 'K'}`")


def _refuse_tail_cut_validation(run: Path) -> None:
    """A run validated on sequences cut to their last data.seq_len steps predicted them from a
    state started mid-sequence; its package starts every sequence at step 0, so its
    val_preds are not what it ships (a head cut keeps the start: the same predictions)."""
    data = (_read_config(run).get("data") or {})
    if (read_metrics(run) or {}).get("valid_truncated") and data.get("truncate") == "tail":
        raise EnsembleError(
            f"{run}: validated on sequences cut to their last data.seq_len = "
            f"{data.get('seq_len')} steps (truncate = \"tail\"), from a state started "
            "mid-sequence: its package starts every sequence at step 0, so these predictions "
            "are not what it would ship; train it with truncate = \"head\" (or no data.seq_len) "
            "to make it a candidate")


def _why_no_predictions(run: Path) -> str:
    metrics = read_metrics(run) or {}
    if isinstance(metrics.get("diverged"), str):
        return f"training diverged before any epoch scored ({metrics['diverged']})"
    if metrics.get("finished") is True:  # (not "not finished" of a finished run, r315)
        return "it finished without a scored epoch (its metrics.json records no score)"
    return "it has not finished its first epoch (killed, paused or still training)"


# what selection reads of a finished run besides its metrics.json: config.toml (the data file
# its rows index), its validation predictions and rows, and best.pt (its spec, and the weights
# kit pack --ensemble loads); of an out-of-fold group, its own arrays and each fold run's best.pt
RUN_FILES = ("config.toml", "val_preds.npy", "val_rows.npy", "best.pt")
GROUP_FILES = ("oof_preds.npy", "oof_rows.npy")


def _once_scored(folder: Path) -> bool:
    """A finished run or group that had predictions once: a prediction file, or a score in
    its metrics.json (a run that diverged before any epoch scored never had any)."""
    return is_finished(folder) and (
        any((folder / f).is_file() for f in ("val_preds.npy", "oof_preds.npy"))
        or finite_number((read_metrics(folder) or {}).get("score")))


def lost_files(folder: Path) -> list[str]:
    """The files a candidate needs that a finished run or out-of-fold group that once scored
    no longer has (r315: val_preds.npy and val_rows.npy, "most of a run", deleted to save disk,
    left the best run out of its folder's selection without a word); fold runs' as FOLD/best.pt
    (a fold run gone whole is missing_fold_runs'). [] for any other folder."""
    if not _once_scored(folder):
        return []
    if not _is_group(folder):
        return [name for name in RUN_FILES if not (folder / name).is_file()]
    return ([name for name in GROUP_FILES if not (folder / name).is_file()]
            + [f"{fold.name}/best.pt" for fold in listed_fold_runs(folder)
               if (fold / "config.toml").is_file() and not (fold / "best.pt").is_file()])


def _is_group(folder: Path) -> bool:
    """An out-of-fold group's folder (its metrics.json says so, or its oof_preds.npy)."""
    return ((read_metrics(folder) or {}).get("kind") == "oof"
            or (folder / "oof_preds.npy").is_file())


def _lost_files_advice(one: bool) -> str:
    return (f"{'its score stays' if one else 'their scores stay'} in kit runs (metrics.json), "
            "but selection needs a run's config.toml, val_preds.npy and val_rows.npy (an "
            "out-of-fold group's oof_preds.npy, oof_rows.npy) and packing its best.pt: restore "
            f"the missing files from a copy, or train {'it' if one else 'each'} again")


def lost_files_message(folder: Path, lost: list[str]) -> str:
    """A finished run named by itself whose files are gone (r315: "it has not finished its first
    epoch" was said of it)."""
    what = "out-of-fold group" if _is_group(folder) else "run"
    return (f"{folder}: the {what} finished but its {', '.join(lost)} "
            f"{'is' if len(lost) == 1 else 'are'} missing (deleted or not copied; metrics.json "
            f"says it finished): {_lost_files_advice(True)}, or leave it out")


def _lost_files_text(lost: dict[Path, list[str]]) -> str:
    """The finished runs of a folder left out for their missing files, each with them."""
    named = [f"{folder.name} ({_score_of(folder)}{', '.join(files)} missing)"
             for folder, files in list(lost.items())[:5]]
    more = f"; and {len(lost) - 5} more" if len(lost) > 5 else ""
    return (f"{len(lost)} finished run(s) whose files a candidate needs are gone: "
            f"{'; '.join(named)}{more}; {_lost_files_advice(len(lost) == 1)}")


def _score_of(folder: Path) -> str:
    score = (read_metrics(folder) or {}).get("score")
    return f"score {score:.4f}; " if finite_number(score) else ""


def _run_folders(experiment: Path) -> list[Path]:
    """The run folders of an experiment folder (a config or metrics file: a run started),
    sorted, fold runs left to their group."""
    return [p for p in sorted(experiment.iterdir()) if p.is_dir() and not FOLD_RUN.search(p.name)
            and ((p / "config.toml").is_file() or (p / "metrics.json").is_file())]


def expand_candidates(paths: list[Path]) -> list[Path]:
    """Run folders as given; an experiment folder (runs/EXP) stands for its finished runs and
    out-of-fold groups (fold runs are represented by their group; kit ablate's variants,
    `ablate-*`, are left out, said: other feature sets, passed by path when wanted)."""
    out: list[Path] = []
    for path in (Path(p).resolve() for p in paths):  # one run, one spelling of its path
        if (path / "val_preds.npy").is_file() or (path / "oof_preds.npy").is_file():
            out.append(path)
        elif lost := lost_files(path):  # a run named by itself, not a folder of runs (r315)
            raise EnsembleError(lost_files_message(path, lost))
        elif path.is_dir():
            # finished runs that once scored: those whose files are gone are named below (r315)
            inside = [p for p in _run_folders(path) if _once_scored(p)]
            ablations = [p for p in inside if p.name.startswith("ablate-")]
            inside = [p for p in inside if p not in ablations]
            if ablations:
                warnings.warn(f"{path}: left out its {len(ablations)} kit ablate run(s) "
                              f"(ablate-*: variants of the experiment's feature groups); pass "
                              f"them by path to make them candidates, e.g. {ablations[0]}",
                              UserWarning, stacklevel=2)
            unfinished = [p.name for p in _run_folders(path)
                          if not p.name.startswith("ablate-") and not is_finished(p)]
            if inside and unfinished:  # (a selection made mid-sweep said nothing of them, r287)
                warnings.warn(f"{path}: left out {len(unfinished)} run(s) that have not "
                              f"finished (still training, paused or killed): "
                              f"{', '.join(unfinished[:3])}{', ...' if len(unfinished) > 3 else ''}"
                              "; select again once they finish (a paused or killed run "
                              "finishes with kit train --resume)", UserWarning, stacklevel=2)
            if inside and (stopped := _unfinished_fold_groups(path, unfinished)):
                warnings.warn(_unfinished_fold_groups_text(path, stopped), UserWarning,
                              stacklevel=2)
            broken = {group: missing for group in inside
                      if (missing := missing_fold_runs(group))}
            lost = {run: files for run in inside
                    if run not in broken and (files := lost_files(run))}
            in_sample = {run: how for run in inside if run not in broken and run not in lost
                         and (how := validated_on_training_rows(run))}
            # one broken group or run must not refuse the experiment's others (r311, r315,
            # r317: nor one validated on its training rows, which a kit before r311 trained)
            left_out = broken.keys() | lost.keys() | in_sample.keys()
            inside = [p for p in inside if p not in left_out]
            if not inside and (broken or lost or in_sample):  # nothing else: refused, named
                raise EnsembleError("; ".join(
                    [missing_fold_runs_message(*item) for item in broken.items()]
                    + ([f"{path}: nothing left to select: {_lost_files_text(lost)}"]
                       if lost else [])
                    + [_in_sample_message(*item) for item in in_sample.items()]))
            if broken:
                warnings.warn(f"{path}: left out " + "; ".join(
                    missing_fold_runs_message(*item) for item in broken.items()),
                    UserWarning, stacklevel=2)
            if lost:
                warnings.warn(f"{path}: left out {_lost_files_text(lost)}", UserWarning,
                              stacklevel=2)
            if in_sample:
                warnings.warn(f"{path}: left out {_in_sample_text(in_sample)}", UserWarning,
                              stacklevel=2)
            if not inside and ((path / "config.toml").is_file()
                               or (path / "metrics.json").is_file()):
                raise EnsembleError(f"{path}: a run without validation predictions: "
                                    + _why_no_predictions(path))
            if not inside:
                experiments = [p.name for p in sorted(path.iterdir()) if p.is_dir() and any(
                    (run / "val_preds.npy").is_file() or (run / "oof_preds.npy").is_file()
                    for run in p.iterdir() if run.is_dir())]
                if experiments:  # the runs root: one level up from what select takes
                    raise EnsembleError(
                        f"{path}: holds experiments ({', '.join(experiments[:6])}"
                        f"{', ...' if len(experiments) > 6 else ''}), not runs: pass experiment "
                        f"folders or run folders, e.g. {path / experiments[0]}")
                folds = sorted(p.name for p in path.iterdir()
                               if p.is_dir() and FOLD_RUN.search(p.name))
                if folds:  # a --folds group stopped before its last fold: no -oof group yet
                    raise EnsembleError(
                        f"{path}: no finished runs inside, only fold runs ({', '.join(folds[:4])}"
                        f"{', ...' if len(folds) > 4 else ''}), which select takes through "
                        "their -oof group, written once every fold has finished: finish the "
                        f"group with {_finish_folds(path.name, folds)}")
                bare = [p for p in _run_folders(path) if not (p / "val_preds.npy").is_file()]
                if bare:  # (a diverged run is finished: "no finished runs" said otherwise)
                    raise EnsembleError(
                        f"{path}: no finished runs inside; runs without validation "
                        "predictions: " + "; ".join(f"{p.name}: {_why_no_predictions(p)}"
                                                    for p in bare[:3])
                        + (f"; and {len(bare) - 3} more" if len(bare) > 3 else ""))
                raise EnsembleError(f"{path}: no finished runs inside")
            out += inside
        elif path.is_file() and (members := _ensemble_file_members(path)) is not None:
            raise EnsembleError(_ensemble_file_given(path, members))
        elif path.is_file():
            raise EnsembleError(f"{path}: a file; pass its run folder ({path.parent})")
        else:
            raise EnsembleError(f"{path}: no such run directory")
    twice = sorted({str(p) for p in out if out.count(p) > 1})
    if twice:
        raise EnsembleError(f"run(s) given twice: {twice}; selection with replacement already "
                            "lets a candidate count more than once")
    return out


def _ensemble_file_members(path: Path) -> list[str] | None:
    """The candidate folders an ensemble file's members were selected from (each member's
    `path`, a run or an -oof group; else its first run), or None for a file that is not one
    (no [[members]], not TOML: a best.pt is not read whole to tell)."""
    if path.suffix != ".toml":
        return None
    try:
        doc = read_toml(path, EnsembleError)
    except (KitError, OSError, UnicodeDecodeError):
        return None
    members = doc.get("members")
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return None
    runs = [m.get("path") or next(iter(m.get("runs") or []), None) for m in members]
    return [str(run) for run in runs if isinstance(run, str)]


def _ensemble_file_given(path: Path, members: list[str]) -> str:
    """r317: "a file; pass its run folder (runs/ensembles)" sent an ensemble file's user to
    a folder of ensemble files, where select found "no finished runs inside"."""
    shown = " ".join(members[:8]) + (f" (and {len(members) - 8} more)" if len(members) > 8
                                     else "")
    again = (f"to select again over its members, pass their run folders: {shown}"
             if members else "to select again, pass the run folders to select from")
    return (f"{path}: an ensemble file (kit ensemble select wrote it), not a run: {again}; "
            f"to pack it, kit pack --ensemble {path}; to read it, kit report {path}")


FOLD_GROUP = re.compile(r"^(?P<stamp>.+)-s(?P<seed>\d+)-fold(?P<i>\d+)of(?P<k>\d+)$")


def _unfinished_fold_groups(experiment: Path, unfinished: list[str]) -> dict[str, list[str]]:
    """{STAMP-sSEED: its fold run folders} of the --folds groups of an experiment folder with
    no finished -oof folder yet (a fold killed, paused or training): nothing of theirs is a
    candidate, and select said nothing of them, where an unfinished run is named (r311). A
    started -oof folder is named among `unfinished` already."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(experiment.iterdir()):
        if folder.is_dir() and (m := FOLD_GROUP.match(folder.name)):
            groups.setdefault(f"{m['stamp']}-s{m['seed']}", []).append(folder.name)
    return {group: folds for group, folds in groups.items()
            if f"{group}-oof" not in unfinished and not is_finished(experiment / f"{group}-oof")}


def _unfinished_fold_groups_text(experiment: Path, groups: dict[str, list[str]]) -> str:
    """The warning naming each unfinished group, its finished folds and the command that
    finishes it (the command of every seed its stamp started: the group resumes whole)."""
    described = []
    for group, folds in list(groups.items())[:3]:
        first = FOLD_GROUP.match(folds[0])
        k, stamp = int(first["k"]), first["stamp"]
        done = sum(is_finished(experiment / fold) for fold in folds)
        started = [p.name for p in experiment.iterdir()  # its stamp's seeds: one command's
                   if (m := FOLD_GROUP.match(p.name)) and m["stamp"] == stamp]
        described.append(f"{group} ({done} of {k} folds finished; finish it with "
                         f"{_finish_folds(experiment.name, started)}, with any overrides "
                         "it started with)")
    more = f"; and {len(groups) - 3} more" if len(groups) > 3 else ""
    return (f"{experiment}: left out {len(groups)} out-of-fold group(s) whose folds have not all "
            f"finished (still training, paused or killed), so no -oof folder yet: "
            f"{'; '.join(described)}{more}; select again once they finish")


def _finish_folds(experiment: str, folds: list[str]) -> str:
    """The command that resumes the fold groups named STAMP-sSEED-foldIofK."""
    groups = sorted({(int(m["seed"]), int(m["k"])) for name in folds
                     if (m := FOLD_GROUP.match(name))})
    if len({k for _, k in groups}) != 1:
        return f"`kit train {experiment} seeds=[...] --folds K --resume` (its seeds and K)"
    seeds = [seed for seed, _ in groups]
    chosen = f"seed={seeds[0]}" if len(seeds) == 1 else f"seeds=[{','.join(map(str, seeds))}]"
    return f"`kit train {experiment} {chosen} --folds {groups[0][1]} --resume`"


def check_same_rows(candidates: list[Candidate], warn_metrics: bool = True) -> None:
    """Every candidate must predict the same rows of the same file, or blending is meaningless.
    warn_metrics=False: select() says the other metric settings (r313: select_ensemble checks
    first, then select, and the warning came twice)."""
    first = candidates[0]
    specs = [f"{c.name} {why}" for c in candidates[1:] if (why := _other_spec(c, first))]
    if specs:  # a different metric or outputs: no blend is scored, whatever the rows
        raise EnsembleError("the candidates were trained for different competition specs, so "
                            "they cannot be blended: " + "; ".join(specs[:5])
                            + ". Select among runs of one spec (a spec file changed between "
                              "runs: retrain on the current one)")
    other = other_metric_candidates(candidates)
    if other and warn_metrics:  # a spec's metric or clip edited between runs: one metric
        # scores the blends (its clip worded as kit runs words it)
        from kit.reports import clip_text, metric_settings

        warnings.warn(f"{', '.join(other[:5])} trained under another metric than "
                      f"{first.name} ({first.spec.metric.name}, "
                      f"{clip_text(metric_settings(first.spec))}): the blends are scored on the "
                      "latter", RuntimeWarning, stacklevel=2)
    sets: dict[tuple, list[Candidate]] = {}  # every set of rows, with who predicts it
    for c in candidates:
        sets.setdefault((str(c.data.resolve()), c.rows.tobytes()), []).append(c)
    if len(sets) > 1:
        described = [f"{_names([c.name for c in group])} "
                     f"{'predict' if len(group) > 1 else 'predicts'} {len(group[0].rows):,} "
                     f"rows of {group[0].data}" for group in sets.values()]
        raise EnsembleError(f"the candidates do not cover the same rows, so they cannot be "
                            f"blended: {len(sets)} sets of rows: " + "; ".join(described)
                            + _row_settings_that_differ(list(sets.values()))
                            + ". Select among runs validated on the same rows: the same valid "
                              "file, data.seq_len, data.truncate and train.max_valid_seqs, or "
                              "the same data.split and split_seed (fold runs: pass their -oof "
                              "group)")


def other_metric_candidates(candidates: list[Candidate]) -> list[str]:
    """The candidates trained under other metric settings (name or clip) than the first's,
    which scores the blends."""
    first = candidates[0]
    return sorted({c.name for c in candidates[1:] if c.spec.metric != first.spec.metric})


# the settings that choose which rows a run validates on, besides the file
ROW_SETTINGS = (("data", "seq_len"), ("data", "truncate"), ("train", "max_valid_seqs"),
                ("data", "split"), ("data", "split_seed"), ("data", "valid_fraction"))


def _row_settings_that_differ(groups: list[list[Candidate]]) -> str:
    """'; they differ in data.seq_len (300, 0)': the row-choosing settings whose values differ
    between the sets of rows (by each set's first run's config), or "" when none do (the files
    differ, or a config does not read)."""
    if not all(group[0].runs for group in groups):  # candidates built in code
        return ""
    try:
        configs = [_read_config(group[0].runs[0]) for group in groups]
    except KitError:  # (an EnsembleError too)
        return ""
    values = {f"{table}.{key}": [repr((c.get(table) or {}).get(key)) for c in configs]
              for table, key in ROW_SETTINGS}
    differ = [f"{name} ({', '.join(v)})" for name, v in values.items() if len(set(v)) > 1]
    return f"; they differ in {', '.join(differ)}" if differ else ""


def _names(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def drop_copies(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates whose validation predictions are the same bytes are one model twice (a
    copied run folder, or one config and seed trained twice, as a sweep that samples the same
    values again does): selected both, the package computed it twice per row and counted it
    twice in the time budget. The first of each is kept, with a warning naming the others."""
    seen: dict[bytes, list[Candidate]] = {}
    for c in candidates:
        seen.setdefault(hashlib.sha256(c.preds.tobytes()).digest(), []).append(c)
    same = [group for group in seen.values() if len(group) > 1]
    if same:
        warnings.warn("candidates that predict exactly alike are one model (a copied run "
                      "folder, or one config and seed trained twice): " + "; ".join(
                          f"{_names([c.name for c in group[1:]])} left out as "
                          f"{group[0].name}" for group in same), RuntimeWarning, stacklevel=2)
    return [group[0] for group in seen.values()]


def _other_spec(c: Candidate, first: Candidate) -> str | None:
    """How c's spec differs from first's where a blend's score depends on it, or None."""
    a, b = c.spec, first.spec
    if a.name != b.name:  # kit pack serves one spec: the blend could never be packed
        return f"was trained for spec {a.name!r}, {first.name} for {b.name!r}"
    for what, mine, theirs in (("outputs", a.outputs, b.outputs),
                               ("feature columns", a.features, b.features)):
        if mine != theirs:
            return f"has {what} {_shown(mine)}, {first.name} {_shown(theirs)}"
    if c.preds.shape[1] != first.preds.shape[1]:
        return f"predicts {c.preds.shape[1]} values a row, {first.name} {first.preds.shape[1]}"
    differs = blend_spec_difference(a, b)
    return None if differs is None else f"has {differs.replace(', against', f', {first.name}')}"


def _shown(value: object) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


# --- the blend's score from moments -------------------------------------------------------


class Moments:
    """Per target: weighted means and the weighted covariance matrix of [truth, candidates]."""

    def __init__(self, truth: np.ndarray, preds: np.ndarray, metric: str,
                 clip: tuple[float, float] | None = None):
        n, c, k = preds.shape
        self.metric, self.n = metric, n
        self.clip = clip if metric == "weighted_pearson" else None
        self.outside: list[tuple] = []  # per target: rows where a candidate leaves the clip
        self.cov = np.zeros((k, c + 1, c + 1))
        self.mean = np.zeros((k, c + 1))
        self.wsum = np.zeros(k)
        for t in range(k):
            y = truth[:, t].astype(np.float64)
            w = np.maximum(np.abs(y), WEIGHT_FLOOR) if metric == "weighted_pearson" \
                else np.ones(n)
            self.wsum[t] = w.sum()
            totals = np.zeros(c + 1)
            for lo in range(0, n, CHUNK_ROWS):
                z = self._columns(y, preds[:, :, t], lo)
                totals += w[lo:lo + CHUNK_ROWS] @ z
            self.mean[t] = totals / self.wsum[t]
            for lo in range(0, n, CHUNK_ROWS):
                z = self._columns(y, preds[:, :, t], lo) - self.mean[t]
                self.cov[t] += (z * w[lo:lo + CHUNK_ROWS, None]).T @ z
            self.cov[t] /= self.wsum[t]
            if self.clip is not None:
                p = preds[:, :, t]
                rows = np.flatnonzero(((p < self.clip[0]) | (p > self.clip[1])).any(axis=1))
                # the rows' weights, weighted truth deviations and predictions
                self.outside.append((w[rows] / self.wsum[t],
                                     w[rows] * (y[rows] - self.mean[t, 0]) / self.wsum[t],
                                     p[rows]))

    @staticmethod
    def _columns(y: np.ndarray, p: np.ndarray, lo: int) -> np.ndarray:
        hi = lo + CHUNK_ROWS
        return np.concatenate([y[lo:hi, None], p[lo:hi].astype(np.float64)], axis=1)

    def scores(self, t: int, counts: np.ndarray) -> np.ndarray:
        """The metric of target t for the blend `counts + e_j`, for every candidate j."""
        cov, mean = self.cov[t], self.mean[t]
        pp, yp, yy = cov[1:, 1:], cov[0, 1:], cov[0, 0]
        m = counts.sum() + 1.0
        pv = pp @ counts  # cov(p_j, S) for every j, S = sum of picks
        var_s = counts @ pv
        var = (var_s + 2 * pv + np.diag(pp)) / m**2  # var((S + p_j) / m)
        cov_y = (yp @ counts + yp) / m
        mean_b = (mean[1:] @ counts + mean[1:]) / m  # E[(S + p_j) / m]
        if self.clip is not None and len(self.outside[t][0]):
            var, cov_y = self._clipped(t, counts, m, mean_b, var, cov_y)
        if self.metric == "weighted_pearson":
            with np.errstate(divide="ignore", invalid="ignore"):
                # two roots, as kit.metrics: the product underflows for tiny-valued targets
                out = cov_y / (np.sqrt(var) * np.sqrt(yy))
            return np.where((var > 0) & (yy > 0), out, 0.0)
        bias = mean_b - mean[0]
        mse = var - 2 * cov_y + yy + bias**2
        if self.metric == "rmse":
            return -np.sqrt(np.maximum(mse, 0.0))  # higher is better inside the search
        return 1.0 - mse / yy if yy > 0 else np.where(mse == 0, 1.0, 0.0)

    def _clipped(self, t: int, counts: np.ndarray, m: float, mean_b: np.ndarray,
                 var: np.ndarray, cov_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """var and cov with y of the clipped blends: on the rows where a blend can leave the
        clip range, c = clip(b) = b + d, so E[c] = E[b] + E[d], E[c^2] = E[b^2] + E[c^2 - b^2]
        and cov(y, c) = cov(y, b) + E[(y - E[y]) d]."""
        w, wy, p = self.outside[t]
        shift, squares, cross = 0.0, 0.0, 0.0  # E[d], E[c^2 - b^2], E[(y - E[y]) d]
        for lo in range(0, len(w), CHUNK_ROWS):  # [rows, C] blocks: bounded memory
            part = p[lo:lo + CHUNK_ROWS].astype(np.float64)
            blend = ((part @ counts)[:, None] + part) / m  # every candidate's blend
            clipped = np.clip(blend, self.clip[0], self.clip[1])
            d = clipped - blend
            shift = shift + w[lo:lo + CHUNK_ROWS] @ d
            squares = squares + w[lo:lo + CHUNK_ROWS] @ (clipped**2 - blend**2)
            cross = cross + wy[lo:lo + CHUNK_ROWS] @ d
        return var + squares - 2 * mean_b * shift - shift**2, cov_y + cross


def _moments_precise(preds: np.ndarray, clip: tuple[float, float] | None) -> bool:
    """Whether the clip's corrections keep the metric's digits: they subtract the squares of
    the unclipped blends, so a prediction of 1e10 under a clip of 6 leaves nothing of a
    variance of 1 in float64. Such candidates are scored exactly (slower, rare)."""
    if clip is None:
        return True
    largest = max(float(preds.max()), -float(preds.min()))  # no |preds| copy of them all
    return largest <= MOMENTS_RANGE * max(abs(clip[0]), abs(clip[1]), 1.0)


# --- selection ----------------------------------------------------------------------------


@dataclass
class Selection:
    spec: CompetitionSpec
    names: list[str]
    counts: np.ndarray  # (K_targets, C) picks at the cut (same row per target unless per-target)
    per_target_mode: bool
    trajectory: list[float]  # exact score after each iteration
    best_iteration: int
    score: float
    per_target: dict
    singles: list[dict]  # per candidate: score, per_target
    uniform: dict
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        """(C, K) weight of each candidate per target."""
        return (self.counts / self.counts.sum(axis=1, keepdims=True)).T


def _exact(spec: CompetitionSpec, truth: np.ndarray, blend: np.ndarray, t: int | None = None):
    if t is None:
        return evaluate(spec, truth, blend)
    return metric_value(spec, truth[:, t], blend)


def greedy(moments: Moments | None, spec: CompetitionSpec, truth: np.ndarray,
           preds: np.ndarray, targets: list[int], iters: int, init: list[int]
           ) -> tuple[np.ndarray, list[float]]:
    """Picks per iteration over `targets` (the mean of their metric); returns the pick counts
    after each iteration and the exact score of each. Candidates are scored from `moments`,
    or without them with the real metric (every candidate, every step)."""
    sign = 1.0 if spec.metric.higher_is_better else -1.0
    c = preds.shape[1]
    counts = np.zeros(c)
    blend_sum = np.zeros((preds.shape[0], len(targets)))
    history, scores = [], []

    for step in range(iters):
        if step < len(init):
            pick = init[step]
        elif moments is not None:
            pick = int(np.argmax(sum(moments.scores(t, counts) for t in targets)))
        else:  # exact scoring of every candidate (non-quadratic metrics)
            m = counts.sum() + 1
            values = [np.mean([sign * metric_value(spec, truth[:, t],
                                                   (blend_sum[:, i] + preds[:, j, t]) / m)
                               for i, t in enumerate(targets)]) for j in range(c)]
            pick = int(np.argmax(values))
        counts[pick] += 1
        blend_sum += preds[:, pick, targets]
        blend = blend_sum / counts.sum()
        scores.append(float(np.mean([metric_value(spec, truth[:, t], blend[:, i])
                                     for i, t in enumerate(targets)])))
        history.append(counts.copy())
    return np.array(history), scores


ROUNDING = 1e-12  # relative: score gains below this are float rounding, not a better blend


def _cut(values: np.ndarray) -> int:
    """The iteration to keep (values higher is better): the first within rounding of the
    best. A later one that gains only rounding adds a member for nothing (a constant, which a
    correlation does not see, was packed into most selections holding one)."""
    top = values.max()
    if not np.isfinite(top):
        return int(np.argmax(values))
    # relative only: rmse and mae scale with the targets (a fixed 1e-12 took the first
    # iteration on targets near 1e-12, 1.76x worse than the best)
    return int(np.argmax(values >= top - ROUNDING * abs(top)))


def refuse_non_finite(name: str, preds: np.ndarray) -> None:
    """Every blend with a NaN or inf prediction is NaN (the metric's clip scores an inf alone),
    and argmax takes a NaN score for the best: such a candidate is refused, not picked."""
    bad = int((~np.isfinite(preds)).sum())
    if bad:
        raise EnsembleError(f"{name}: {bad} validation predictions are NaN or inf (the model "
                            "overflows); leave this run out of the candidates")


def check_counts(iters, init_best) -> None:
    """--iters a whole number >= 1 and --init-best a whole number (2.5 raised a TypeError deep
    in the selection); its upper bound needs the candidates (select)."""
    for name, value, low in (("--iters", iters, 1), ("--init-best", init_best, 0)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise EnsembleError(f"{name} must be a whole number, got {value!r}")
        if value < low:  # (as the other commands' counts say it)
            raise EnsembleError(f"{name} must be >= {low}, got {value}")


def select(candidates: list[Candidate], truth: np.ndarray, *, iters: int = 50,
           init_best: int = 0, per_target: bool = False) -> Selection:
    """Greedy forward selection with replacement on the competition metric."""
    if not candidates:
        raise EnsembleError("no candidates to select from")
    check_counts(iters, init_best)
    if not 0 <= init_best <= min(len(candidates), iters):
        raise EnsembleError(f"--init-best must be between 0 and {min(len(candidates), iters)} "
                            "(the candidates, and at most --iters)")
    check_same_rows(candidates)
    for candidate in candidates:
        refuse_non_finite(candidate.name, candidate.preds)
    started = time.perf_counter()
    spec = candidates[0].spec
    preds = np.stack([c.preds for c in candidates], axis=1)  # (rows, C, K)
    k = preds.shape[2]
    sign = 1.0 if spec.metric.higher_is_better else -1.0
    singles = [evaluate(spec, truth, preds[:, j]) for j in range(len(candidates))]
    # the moments' clip correction is weighted Pearson's; a clipped r2/rmse is scored exactly
    quadratic = spec.metric.name in QUADRATIC and (
        spec.metric.clip is None or spec.metric.name == "weighted_pearson") and (
        _moments_precise(preds, spec.metric.clip))
    moments = Moments(truth, preds, spec.metric.name, spec.metric.clip) if quadratic else None
    groups = [[t] for t in range(k)] if per_target else [list(range(k))]
    counts = np.zeros((k, len(candidates)))
    trajectory = np.zeros(iters)
    best_iteration, group_scores = [], []
    for targets in groups:
        order = sorted(range(len(candidates)),
                       key=lambda j: -sign * np.mean([singles[j].per_target[spec.outputs[t]]
                                                      for t in targets]))
        history, scores = greedy(moments, spec, truth, preds, targets, iters,
                                 order[:init_best])
        first = max(init_best - 1, 0)  # the cut never drops the initial members
        best = first + _cut(sign * np.array(scores[first:]))
        best_iteration.append(best + 1)
        group_scores.append([float(v) for v in scores])
        counts[targets] = history[best]
        trajectory += np.array(scores) * len(targets) / k
    weights = (counts / counts.sum(axis=1, keepdims=True)).T  # (C, K), as Selection.weights
    report = evaluate(spec, truth, np.einsum("nck,ck->nk", preds, weights))
    uniform = evaluate(spec, truth, preds.mean(axis=1))
    names = [c.name for c in candidates]
    return Selection(
        spec=spec, names=names, counts=counts, per_target_mode=per_target,
        trajectory=[float(s) for s in trajectory], best_iteration=max(best_iteration),
        score=report.score, per_target=report.per_target,
        singles=[{"score": s.score, "per_target": s.per_target} for s in singles],
        uniform={"score": uniform.score, "per_target": uniform.per_target},
        seconds=time.perf_counter() - started,
        # per target, each target's own curve and cut (the mean curve is no curve the ensemble
        # is on: its score is each target's score at that target's own cut)
        extra={"trajectory_per_target": {spec.outputs[t]: v for (t,), v in
                                         zip(groups, group_scores, strict=True)},
               "best_iteration_per_target": {spec.outputs[t]: b for (t,), b in
                                             zip(groups, best_iteration, strict=True)}}
        if per_target else {},
    )


# --- post-processing: per-target smoothing over steps and scaling, tuned on the same rows ----

SMOOTHING_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SCALE_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def smooth(pred: np.ndarray, starts: np.ndarray, alpha: float) -> np.ndarray:
    """s_t = alpha s_(t-1) + (1 - alpha) y_t within each sequence, s = y at its first row.

    The same recursion runs in the graph (kit.export.ensemble.PostProcess) on every step."""
    if alpha == 0.0:
        return pred.astype(np.float64)
    seq = np.zeros(len(pred), dtype=np.int64)
    seq[starts[1:]] = 1
    frame = pl.DataFrame({"seq": np.cumsum(seq), "y": pred.astype(np.float64)})
    # Polars' ewm_mean with adjust=False is exactly this recursion (it starts at the first y)
    return frame.select(pl.col("y").ewm_mean(alpha=1.0 - alpha, adjust=False).over("seq")
                        )["y"].to_numpy()


def tune_postprocess(spec: CompetitionSpec, truth: np.ndarray, blend: np.ndarray,
                     starts: np.ndarray) -> dict:
    """Per target: the smoothing alpha, then the scale, that maximise the metric (ties keep
    the identity)."""
    sign = 1.0 if spec.metric.higher_is_better else -1.0
    alphas, scales, before, after = [], [], {}, {}
    for t, name in enumerate(spec.outputs):
        y, p = truth[:, t], blend[:, t]
        base = metric_value(spec, y, p)
        best_a, best_s, best_p = 0.0, sign * base, p
        for a in SMOOTHING_GRID[1:]:
            q = smooth(p, starts, a)
            value = sign * metric_value(spec, y, q)
            if value > best_s + 1e-9:
                best_a, best_s, best_p = a, value, q
        best_c = 1.0
        for c in SCALE_GRID:
            value = sign * metric_value(spec, y, c * best_p)
            if value > best_s + 1e-9:
                best_c, best_s = c, value
        alphas.append(best_a)
        scales.append(best_c)
        before[name], after[name] = base, sign * best_s
    # `tuned` keeps what the scores are of: an edit by hand is then told apart
    return {"smoothing": alphas, "scale": scales, "before": before, "after": after,
            "tuned": {"smoothing": list(alphas), "scale": list(scales)}}


def postprocess_edited(post: dict | None, targets: list[str]) -> list[str]:
    """The targets whose smoothing or scale is no longer the tuned one; every target when
    `tuned` is missing beside recorded scores (deleted, or a file from before it: nothing
    tells an edit). `tuned` as check_postprocess leaves it."""
    tuned = (post or {}).get("tuned")
    if tuned is None:  # a file from before `tuned`, or one whose `tuned` was deleted: scores
        # it records (before/after) can no longer be told from an edit
        return list(targets) if post and ("before" in post or "after" in post) else []
    return [name for t, name in enumerate(targets)
            if any(not math.isclose(post[key][t], tuned[key][t], rel_tol=1e-9, abs_tol=1e-12)
                   for key in ("smoothing", "scale"))]


# --- files and tables ---------------------------------------------------------------------


def select_ensemble(paths: list[Path], *, iters: int = 50, per_target: bool = False,
                    init_best: int = 0, out: Path | None = None, postprocess: bool = False
                    ) -> tuple[dict, Path, str]:
    """Load the candidates, select, optionally tune post-processing, write the TOML. `paths`:
    run or experiment folders; a single str or Path is one folder, as the CLI's one argument."""
    from kit.reports import ValidFile

    paths = candidate_paths(paths)
    check_counts(iters, init_best)
    if out is not None:  # before any candidate loads or selection runs
        check_out(Path(out))
    candidates = [load_candidate(p) for p in expand_candidates(paths)]
    # before reading the truth: the error names the mismatch (select warns of other metrics)
    check_same_rows(candidates, warn_metrics=False)
    candidates = drop_copies(candidates)
    first = candidates[0]
    data = ValidFile(first.data, first.spec)
    truth = data.truth(first.rows)
    selection = select(candidates, truth, iters=iters, init_best=init_best,
                       per_target=per_target)
    tuned = None
    if postprocess:
        order = np.argsort(first.rows, kind="stable")
        rows = first.rows[order]
        ids = data.ids[rows]
        starts = np.flatnonzero(np.concatenate([[True], (ids[1:] != ids[:-1])
                                                | (rows[1:] != rows[:-1] + 1)]))
        preds = np.stack([c.preds[order] for c in candidates], axis=1)
        blend = np.einsum("nck,ck->nk", preds, selection.weights)
        tuned = tune_postprocess(selection.spec, truth[order], blend, starts)
    doc = ensemble_document(selection, candidates, iters=iters, init_best=init_best,
                            postprocess=tuned)
    path = write_ensemble(doc, out, default_dir=ensembles_dir(first.path))
    return doc, path, format_selection(doc)


def candidate_paths(paths) -> list:
    """The candidate folders as a list: one str or Path is one folder (it was read letter by
    letter, or raised TypeError); none at all is refused (it raised IndexError)."""
    if isinstance(paths, str | os.PathLike):
        return [paths]
    paths = list(paths)
    if not paths:
        raise EnsembleError("no candidates: pass one or more run or experiment folders")
    return paths


def ensemble_document(selection: Selection, candidates: list[Candidate], *, iters: int,
                      init_best: int, postprocess: dict | None = None) -> dict:
    spec, weights = selection.spec, selection.weights
    best = int(np.argmax([(1 if spec.metric.higher_is_better else -1) * s["score"]
                          for s in selection.singles]))
    members = []
    for j, c in enumerate(candidates):
        if not selection.counts[:, j].any():
            continue
        members.append({
            "name": c.name, "path": str(Path(c.path).resolve()),
            "runs": [str(Path(r).resolve()) for r in c.runs],
            "weight": float(weights[j].mean()), "weights": [float(w) for w in weights[j]],
            "picks": [int(n) for n in selection.counts[:, j]],
            # what the weights were chosen on: pack refuses a run retrained since
            "checkpoints": {str(Path(r).resolve()): checkpoint_digest(Path(r)) for r in c.runs},
            "score": selection.singles[j]["score"],
            "per_target": selection.singles[j]["per_target"],
            # trained (early-stopped, kit runs' score) under other metric settings than the
            # blend is scored with: kit report names it (r313)
            **({"trained_metric": _toml_metric(c.spec)}
               if c.spec.metric != candidates[0].spec.metric else {}),
        })
    doc = {
        "ensemble": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "spec": spec.name, "metric": spec.metric.name,
            "metric_settings": _toml_metric(spec),
            "data": str(candidates[0].data), "rows": len(candidates[0].rows),
            "candidates": len(candidates), "iters": iters, "init_best": init_best,
            "per_target": selection.per_target_mode, "best_iteration": selection.best_iteration,
            # each target's picks over all members: a member deleted by hand shows against it
            "picks_total": [int(n) for n in selection.counts.sum(axis=1)],
            "score": selection.score, "target_scores": selection.per_target,
            "seconds": round(selection.seconds, 3),
            "best_single": {"name": candidates[best].name, **selection.singles[best]},
            "best_single_per_target": best_single_per_target(spec, candidates,
                                                             selection.singles),
            "uniform": selection.uniform,
            "trajectory": selection.trajectory,
            "targets": list(spec.outputs),
            **selection.extra,
        },
        "members": members,
    }
    if postprocess:
        doc["postprocess"] = postprocess
    return doc


def _toml_metric(spec: CompetitionSpec) -> dict:
    """kit runs' metric_settings of a spec as TOML holds it: no clip key for none."""
    from kit.reports import metric_settings

    return {k: v for k, v in metric_settings(spec).items() if v is not None}


def checkpoint_digest(run: Path) -> str:
    """sha256 of a run's best.pt (memoised per file state)."""
    from kit.export.frozen import sha256_file

    return sha256_file(Path(run) / "best.pt")


def best_single_per_target(spec: CompetitionSpec, candidates: list[Candidate],
                           singles: list[dict]) -> dict:
    """{target: {name, score}}: the best candidate on each target alone (per-target panels
    compare with it; the best overall may be another run's)."""
    sign = 1 if spec.metric.higher_is_better else -1
    out = {}
    for t in spec.outputs:
        j = int(np.argmax([sign * s["per_target"][t] for s in singles]))
        out[t] = {"name": candidates[j].name, "score": singles[j]["per_target"][t]}
    return out


def _counts(listed, k: int) -> bool:
    """Whether `listed` is what select writes for picks: k whole numbers >= 0."""
    return (isinstance(listed, list) and len(listed) == k
            and all(type(n) is int and n >= 0 for n in listed))


def weights_edited(doc: dict) -> bool:
    """Whether the members' weights are no longer the selection's (each target's picks over
    their total): the recorded scores are then the selection's, not these weights'."""
    members = doc["members"]
    k = len(members[0]["weights"])
    picks = []
    for m in members:  # a member added by hand with zero weights changes nothing
        listed = m.get("picks", None if any(m["weights"]) else [0] * k)
        if not _counts(listed, k):
            return True  # picks edited into something no selection writes
        picks.append(listed)
    totals = [sum(p[t] for p in picks) for t in range(k)]
    if doc.get("ensemble", {}).get("picks_total", totals) != totals:
        return True  # a member deleted (and the others renormalised) by hand
    return any(not totals[t] or not math.isclose(m["weights"][t], p[t] / totals[t],
                                                 rel_tol=1e-6, abs_tol=1e-9)
               for m, p in zip(members, picks, strict=True) for t in range(k))


WRITTEN = "# written by kit ensemble select; sha256 of the lines below: "


def check_out(out: Path) -> None:
    """An ensemble file's --out: a .toml name (kit report and kit pack --ensemble read it by
    that suffix), not a folder, under a folder or a name that can be one, and no file but one
    kit ensemble select wrote, unedited. Checked before any candidate loads (an edited file
    was refused only after the whole selection) and again at the write (it may be edited
    meanwhile)."""
    if out.is_dir():  # first: `--out .` has no name to put a suffix on
        raise EnsembleError(f"--out {out}: is a folder; name the .toml file to write in it")
    if out.suffix != ".toml":
        raise EnsembleError(f"--out {out}: an ensemble file is a .toml file (kit report tells "
                            f"it from a run by that): --out {out.with_suffix('.toml')}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise EnsembleError(f"--out {out}: {blocking} is a file, not a folder")
    if out.exists() and not written_by_select(out):
        raise EnsembleError(f"--out {out}: the file exists and is not one kit ensemble select "
                            "wrote, unedited (a run's config.toml, an experiment, an ensemble "
                            "written or edited by hand): give another --out, or delete it")


def ensembles_dir(candidate: Path) -> Path:
    """The project's runs/ensembles/: that of the runs/ folder holding `candidate` when the
    command runs inside that folder (`kit ensemble select gru_base` in runs/ must not write
    runs/runs/ensembles/), else runs/ensembles/ in the working folder."""
    folder = Path(candidate).resolve()
    # runs/EXP/ID (an -oof group too), runs/EXP, runs/ID (the nearest folder named runs/, a
    # first try, found the one a project itself sat in and wrote beside the project)
    runs = runs_folder_here((folder.parent, folder.parent.parent))
    return ENSEMBLES_DIR if runs is None else runs / "ensembles"


def write_ensemble(doc: dict, out: Path | None, default_dir: Path = ENSEMBLES_DIR) -> Path:
    """To `out`, or to a new DEFAULT_DIR/ensemble-STAMP[-N].toml: created exclusively, so
    two selections in the same second never write one file. Its first line holds the digest
    of the rest: any edit by hand shows."""
    body = tomli_w.dumps(doc)
    text = f"{WRITTEN}{hashlib.sha256(body.encode()).hexdigest()}\n{body}"
    if out:
        out = Path(out)
        check_out(out)  # again: the file may have been edited during the selection
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(out, text)  # a full disk keeps the previous file whole
        return out
    default_dir.mkdir(parents=True, exist_ok=True)
    stem = f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        path = default_dir / (f"{stem}.toml" if n == 1 else f"{stem}-{n}.toml")
        try:
            with open(path, "x", encoding="utf-8") as fh:
                fh.write(text)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def written_by_select(path: Path) -> bool:
    """An ensemble file as kit ensemble select wrote it, not edited since: its first line's
    digest that of the rest. A file of a kit before that line: its [ensemble] record, its
    members' weights the selection's, its post-processing the tuned one."""
    try:
        # utf-8-sig: an editor's byte order mark must not hide the digest line
        first, _, body = Path(path).read_text(encoding="utf-8-sig").partition("\n")
        doc = read_ensemble(path)  # (a config.toml, an experiment: no [[members]], refused)
    except (OSError, UnicodeDecodeError, KitError):
        return False
    if first.startswith(WRITTEN):  # a comment, a member, a [postprocess] edited: not ours
        return first.removeprefix(WRITTEN) == hashlib.sha256(body.encode()).hexdigest()
    record = doc.get("ensemble", {})
    if not {"created", "iters", "candidates", "targets"} <= record.keys():
        return False
    return not weights_edited(doc) and not postprocess_edited(doc.get("postprocess"),
                                                              record["targets"])


def read_ensemble(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise EnsembleError(f"{path}: a folder, not an ensemble file (a .toml that kit "
                            "ensemble select writes; a run is packed as kit pack RUN)")
    if not path.is_file():
        raise EnsembleError(f"{path}: no such ensemble file (kit ensemble select writes one)")
    doc = read_toml(path, EnsembleError)
    if not isinstance(doc.get("ensemble", {}), dict):
        raise EnsembleError(f"{path}: `ensemble` must be the [ensemble] table (the selection's "
                            "record), or left out")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise EnsembleError(f"{path}: no [[members]]")
    k = None
    for i, m in enumerate(members):
        where = f"{path}: members[{i}]"
        if not isinstance(m, dict) or "runs" not in m or "weights" not in m:
            raise EnsembleError(f"{where} needs 'runs' and 'weights'")
        runs = m["runs"]
        if not isinstance(runs, list) or not runs or not all(isinstance(r, str) for r in runs):
            raise EnsembleError(f"{where}.runs: a non-empty list of run directories")
        weights = m["weights"]
        if not isinstance(weights, list) or not weights or not all(
                finite_number(w) and w >= 0 for w in weights):
            raise EnsembleError(f"{where}.weights: a list of finite numbers >= 0, one per target")
        if k is not None and len(weights) != k:
            raise EnsembleError(f"{where}.weights: {len(weights)} values, members[0] has {k}")
        k = len(weights)
        m.setdefault("name", _run_name(runs[0]))  # a member added by hand
        # `weight` is the mean written beside them for reading; pack uses `weights` alone, so
        # an edit of `weight` alone must not pass as if it had left the member out
        if "weight" in m and not (finite_number(m["weight"]) and math.isclose(
                m["weight"], sum(weights) / k, rel_tol=1e-6, abs_tol=1e-9)):
            raise EnsembleError(f"{where}.weight = {m['weight']!r} is not the mean of its "
                                f"weights {weights}: kit pack uses `weights` (one per target); "
                                "edit those, and update or delete `weight`")
    _refuse_repeated_runs(members, path)
    post = doc.get("postprocess")
    if post is not None:
        doc["postprocess"] = check_postprocess(post, k, path)
    return doc


def _refuse_repeated_runs(members: list[dict], path: Path) -> None:
    """A run in two weighted members (or twice in one) would be computed twice per step and
    counted twice in the time budget; selection never writes one (a zero-weight member is left
    out of the graph, so it may repeat a run)."""
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if not any(m["weights"]):
            continue
        for run in m["runs"]:
            key = checkpoint_key(run)
            if key in seen:
                where = (f"twice in members[{i}].runs" if seen[key] == i
                         else f"in members[{seen[key]}] and members[{i}]")
                raise EnsembleError(f"{path}: run {run} is {where}: give each run once, with "
                                    "the weights of both added up")
            seen[key] = i


def checkpoint_key(run: str) -> str:
    """The checkpoint pack will load for a member's run, whichever way it is spelt (RUN,
    RUN/, RUN/best.pt, a moved checkout's absolute path)."""
    path = Path(os.path.normpath(os.path.abspath(relocated(run))))
    if (path / "best.pt").is_file():
        path = path / "best.pt"
    return str(path.resolve()) if path.exists() else str(path)


def _run_name(run: str) -> str:
    """EXP/ID, as selection names its members."""
    path = Path(run)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def check_postprocess(post: dict, k: int, where: object) -> dict:
    """[postprocess] with both keys filled (identity defaults), one value per target."""
    if not isinstance(post, dict):
        raise EnsembleError(f"{where}: [postprocess] must be a table")
    out = {**post, "smoothing": post.get("smoothing", [0.0] * k),
           "scale": post.get("scale", [1.0] * k)}
    # a scale of 0 predicts a constant, a negative one flips the sign: never a tuned value
    for key, ok, allowed in (("smoothing", lambda v: 0.0 <= v < 1.0, "in [0.0, 1.0)"),
                             ("scale", lambda v: v > 0, "finite and > 0")):
        values = out[key]
        if not isinstance(values, list) or len(values) != k or not all(
                finite_number(v) for v in values):
            raise EnsembleError(f"{where}: postprocess.{key}: {k} finite numbers, one per "
                                "target")
        if not all(ok(v) for v in values):
            raise EnsembleError(f"{where}: postprocess.{key}: values {allowed}")
    tuned = out.get("tuned")
    if tuned is not None and not (isinstance(tuned, dict) and all(
            isinstance(tuned.get(key), list) and len(tuned[key]) == k
            and all(finite_number(v) for v in tuned[key]) for key in ("smoothing", "scale"))):
        raise EnsembleError(f"{where}: postprocess.tuned: the smoothing and scale tuning chose, "
                            f"{k} finite numbers each (kit writes it: restore it, or select "
                            "again)")
    return out


def _post_summary(post: dict, targets: list[str], edited: list[str]) -> str:
    """The post-processing of more than SHOWN_OUTPUTS targets in one line: the ranges of its
    smoothing and scale, how many it changes, and the outputs set by hand (the file holds each
    target's values; the rows above, their scores)."""
    smoothing, scale = post["smoothing"], post["scale"]
    smoothed = sum(1 for v in smoothing if v != 0)
    scaled = sum(1 for v in scale if v != 1)
    by_hand = [t for t in targets if t in edited]
    hand = (f"; set by hand after tuning: {', '.join(by_hand[:SHOWN_OUTPUTS])}"
            f"{', ...' if len(by_hand) > SHOWN_OUTPUTS else ''} (kit pack --ensemble, then "
            "kit score, scores these)" if by_hand else "")
    return (f"post-processing of {len(targets)} outputs: smoothing on {smoothed} "
            f"({min(smoothing):g} to {max(smoothing):g}), scale other than 1 on {scaled} "
            f"({min(scale):g} to {max(scale):g}); each output's values are in the file's "
            f"[postprocess]{hand}")


def format_selection(doc: dict) -> str:
    e = doc["ensemble"]
    targets = e["targets"]
    single = f"best single ({e['best_single']['name']})"  # whole: run names differ at the end
    # which way is good, where the labels go: a bare 4.2946 does not say it (kit runs and a
    # run's report.md do); nothing for a file whose metric is unknown
    metric = e.get("metric")
    heading = (f"{metric} ({'higher' if MetricSpec(metric).higher_is_better else 'lower'} is "
               "better)" if metric in METRICS else "")
    width = max(28, len(single) + 2, len(heading) + 2)
    # past SHOWN_OUTPUTS targets a row gives their summary, as kit score does: a next-state
    # spec's 32 columns made rows of 330 characters
    many = len(targets) > SHOWN_OUTPUTS
    lines = [f"{heading:<{width}}{'score':>9}"
             + ("  outputs" if many else "".join(f"{t:>9}" for t in targets))]

    def row(label: str, score: float, per: dict) -> None:
        lines.append(f"{label:<{width}}{score:>9.4f}"
                     + (f"  {outputs_summary({t: per[t] for t in targets})}" if many
                        else "".join(f"{per[t]:>9.4f}" for t in targets)))

    post = doc.get("postprocess")
    edited = postprocess_edited(post, targets)
    row("ensemble", e["score"], e["target_scores"])
    after = (post or {}).get("after", {})
    if post and not edited and all(finite_number(after.get(t)) for t in targets):
        # what kit score gives the package (the metric's score is the mean over targets)
        row("ensemble + post-processing", sum(after[t] for t in targets) / len(targets), after)
    row(single, e["best_single"]["score"], e["best_single"]["per_target"])
    row(f"uniform mean of {e['candidates']}", e["uniform"]["score"], e["uniform"]["per_target"])
    cuts = e.get("best_iteration_per_target")
    if not cuts:
        cut = f"at iteration {e['best_iteration']} of {e['iters']}"
    elif many:
        cut = (f"at iterations {min(cuts.values())} to {max(cuts.values())} of {e['iters']}, "
               "per target")
    else:
        cut = ", ".join(f"{t} at iteration {n}" for t, n in cuts.items()) + f" of {e['iters']}"
    weighted = sum(any(w != 0 for w in m["weights"]) for m in doc["members"])  # not hand-zeroed
    lines.append(f"\n{weighted} of {e['candidates']} candidates selected "
                 f"(best {cut}; {e['rows']:,} rows; {e['seconds']:.1f}s)")

    def mean_weight(m: dict) -> float:
        return sum(m["weights"]) / len(m["weights"])

    name_width = max([40] + [len(m["name"]) for m in doc["members"]])  # long names line up
    for m in sorted(doc["members"], key=lambda m: -mean_weight(m)):
        per = (f"{len(targets)} weights, min {min(m['weights']):.3f}, max "
               f"{max(m['weights']):.3f}" if many else
               "  ".join(f"{t} {w:.3f}" for t, w in zip(targets, m["weights"], strict=True)))
        single = f"  single {m['score']:.4f}" if finite_number(m.get("score")) else ""
        lines.append(f"  {mean_weight(m):.3f}  {m['name']:<{name_width}} [{per}]{single}")
    if post and many:  # one line a target made 32 of them for a next-state spec (r314)
        lines.append(_post_summary(post, targets, edited))
    elif post:
        for t, name in enumerate(targets):
            scores = (f"{post['before'][name]:.4f} -> {post['after'][name]:.4f}"
                      if name in post.get("before", {}) and name in post.get("after", {})
                      else None)
            chose = (f", which chose smoothing {post['tuned']['smoothing'][t]:g}, scale "
                     f"{post['tuned']['scale'][t]:g}" if "tuned" in post
                     else " (what it chose is not recorded)")
            tuned = (f": {scores}" if scores and name not in edited else
                     f" (perhaps edited by hand after tuning{chose}: {scores} may not be "
                     "these values' scores; kit pack --ensemble, then kit score, scores these)"
                     if scores and "tuned" not in post else
                     f" (edited by hand after tuning{chose}: {scores}; kit pack --ensemble, "
                     "then kit score, scores these)"
                     if scores else " (set by hand, not tuned)")
            lines.append(f"post-processing {name}: smoothing {post['smoothing'][t]:g}, scale "
                         f"{post['scale'][t]:g}{tuned}")
    if weights_edited(doc):
        lines.append("\nthe weights were edited after the selection: the scores above are the "
                     "selection's, not these weights' (kit pack --ensemble, then kit score, "
                     "scores them)")
    edited = [m.get("name", m["runs"][0]) for m in doc["members"]
              if any(m["weights"]) and any(runs_edited(m))]
    if edited:
        lines.append(f"\nthe runs of {', '.join(edited)} are not the ones the selection chose "
                     "(edited by hand): the scores above are of other models (kit pack "
                     "--ensemble refuses the file unless --force)")
    return "\n".join(lines)


def selection_drift(doc: dict, checkpoints: bool = True) -> list[str]:
    """What changed under the selected members' runs since the selection: a run gone, its
    best.pt trained again (`checkpoints`: pack, which refuses those itself and has their
    digests, leaves them out), or the data files it trained and validated on rewritten, or
    named anew by its config.toml (its predictions, which the weights and scores were chosen
    on, are of other rows). One line each, for the ensemble's report and pack (r305: both said
    nothing of the data)."""
    from kit.export.frozen import sha256_file  # (torch: imported when a run is read)

    notes = []
    for member in doc["members"]:
        if not any(member["weights"]):
            continue
        chosen = member.get("checkpoints")
        chosen = ({checkpoint_key(r): d for r, d in chosen.items()}
                  if isinstance(chosen, dict) else {})
        for run in member["runs"]:
            key = checkpoint_key(run)
            checkpoint = Path(key)
            if checkpoint.name != "best.pt" or not checkpoint.is_file():
                if checkpoints:
                    notes.append(f"{run} is gone (no best.pt there)")
                continue
            if checkpoints and chosen.get(key) and sha256_file(checkpoint) != chosen[key]:
                notes.append(f"{checkpoint} changed since the selection (trained again)")
                continue
            notes += data_drift(checkpoint.parent)
    return notes


def in_sample_members(doc: dict) -> list[str]:
    """The weighted members whose runs were validated on the rows they trained on (selected by
    a kit before r311, which took them), `NAME (how)` each: the weights were chosen on their
    in-sample predictions (r317: pack and the ensemble's report said nothing of it)."""
    found = []
    for member in doc["members"]:
        if not any(member["weights"]):
            continue
        for run in member["runs"]:
            folder = Path(checkpoint_key(run))  # a moved checkout's, or RUN/best.pt spelt
            folder = folder.parent if folder.name == "best.pt" else folder
            if how := validated_on_training_rows(folder):
                found.append(f"{member.get('name', run)} ({how})")
    return found


def in_sample_text(found: list[str]) -> str:
    """What in_sample_members' lines mean, and what to do: one sentence for pack's warning and
    the ensemble's report."""
    return (f"member(s) validated on the rows they trained on (a kit before r311 selected "
            f"them): {'; '.join(found)}: the weights were chosen on their in-sample "
            "predictions, which score above what they predict of unseen rows, and the scores "
            "recorded count them; select again over held-out or out-of-fold runs (kit train "
            "--folds K)")


def warn_in_sample_members(path: Path, doc: dict) -> None:
    """kit pack --ensemble's warning of in_sample_members (stacklevel 3: it names
    pack_ensemble's caller, as pack's own warnings do)."""
    if found := in_sample_members(doc):
        warnings.warn(f"{path}: {in_sample_text(found)}", RuntimeWarning, stacklevel=3)


def data_drift(run: Path) -> list[str]:
    """A run's data files rewritten since it trained, and files its config.toml names now that
    it did not train or validate on (a byte-identical copy is still other rows' record)."""
    changed = data_changes(run)
    rewritten = [c for c in changed if not c.endswith(UNRECORDED)]
    renamed = [c.removesuffix(UNRECORDED) for c in changed if c.endswith(UNRECORDED)]
    return ([f"{run} trained or validated on {', '.join(rewritten)}, whose content has "
             "changed since"] if rewritten else []) + (
        [f"{run}'s config.toml now names {', '.join(renamed)}, not a file it trained or "
         "validated on"] if renamed else [])


def runs_edited(member: dict) -> tuple[list[str], list[str]]:
    """(runs added, runs dropped) of a member against the checkpoints its selection recorded
    (each as checkpoint_key spells it): a run swapped in by hand, an out-of-fold member's fold
    run deleted (the others then take its weight). ([], []) for a member without a record (a
    file from before, a member added by hand)."""
    chosen = member.get("checkpoints")
    if not isinstance(chosen, dict) or not chosen:
        return [], []
    chosen_keys = {checkpoint_key(r) for r in chosen}
    listed = [checkpoint_key(r) for r in member["runs"]]
    return ([r for r, key in zip(member["runs"], listed, strict=True) if key not in chosen_keys],
            sorted(chosen_keys - set(listed)))
