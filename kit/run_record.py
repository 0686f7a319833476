"""Reading what a run directory holds (kit/train/runs.py writes it), for the readers that must
not import torch: `kit runs`, `kit report`, `kit ensemble select` and `--resume`.

A file damaged by hand or by a kill is never a numpy/JSON traceback: metrics.json that cannot
be read is None (callers fall back on the history or call the run unfinished), and an array
file that cannot be read is a KitError naming it.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np

from kit.competition import CompetitionSpec, spec_from_dict
from kit.config import ConfigError, validation_file
from kit.errors import KitError
from kit.toml_file import read_toml

PENDING_BEST = ".best-pending-"  # + epoch: a new best until last.pt records it


def pending_best_epoch(run_dir: Path) -> int | None:
    """The first epoch whose best is pending (written, not yet moved into best.pt), or None:
    best.pt holds an earlier epoch until --resume replays or promotes it."""
    epochs = [int(p.name.removeprefix(PENDING_BEST)) for p in Path(run_dir).glob(
        f"{PENDING_BEST}*") if p.name.removeprefix(PENDING_BEST).isdigit()]
    return min(epochs, default=None)


def read_config(run_dir: Path) -> dict:
    """config.toml as a dict ({} when absent); invalid TOML, or a section that is not a table,
    is a ConfigError naming the file."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        return {}
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; the run folder was damaged")
    config = read_toml(path, ConfigError)
    for key in SECTIONS:
        if key in config and not isinstance(config[key], dict):
            raise ConfigError(f"{path}: [{key}] must be a table, found {config[key]!r}; the file "
                              "was edited by hand or damaged")
    return config


SECTIONS = ("data", "model", "train", "features", "loss", "normaliser")


def read_metrics(run_dir: Path) -> dict | None:
    """metrics.json as a dict, or None when absent, torn or not an object."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, torn mid-write, or not UTF-8
        return None
    return metrics if isinstance(metrics, dict) else None


def is_finished(run_dir: Path) -> bool:
    """metrics.json says finished = true (a missing or damaged one says nothing)."""
    return (read_metrics(run_dir) or {}).get("finished") is True


def load_array(path: Path, kind: str) -> np.ndarray:
    """A run's predictions (kind "preds": 2-D numbers) or row indices ("rows": 1-D ints)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise KitError(f"{path}: not a readable .npy file ({exc}); it was damaged after the "
                       "run wrote it") from None
    if kind == "rows" and (array.ndim != 1 or array.dtype.kind not in "iu"):
        raise KitError(f"{path}: expected a 1-D array of row indices, got {array.dtype} "
                       f"{array.shape}")
    if kind == "preds" and (array.ndim != 2 or array.dtype.kind not in "fiu"):
        raise KitError(f"{path}: expected a 2-D array of predictions (rows, targets), got "
                       f"{array.dtype} {array.shape}")
    return array


# Runs that belong to something bigger resume with it, never alone under `kit train --resume`
# (that would finish them outside it): a sweep's trials (EXP-t0003, EXP-t0003-STAMP) inside
# their study, fold runs (...-fold2of5) with their group, ablation runs (ablate-...) with
# `kit ablate`. Any other folder is a run `kit train` may resume, --run-dir ones included.
# A trial whose folder was taken gets one beside it: EXP-t0003-STAMP-PID[-ATTEMPT].
TRIAL_RUN = re.compile(r"^(.*)-t\d{4,}(-\d{8}-\d{6}(-\d+)*)?$")  # group 1: the study
FOLD_RUN = re.compile(r"-fold\d+of(\d+)$")  # group 1: k
ABLATION_RUN = "ablate-"  # the prefix


def runs_folder_here(levels) -> Path | None:
    """The first of `levels` (folders above what a command was given, nearest first: its
    runs/EXP/ID, runs/EXP or runs/ID layout) that is a folder named runs/ holding the working
    folder: the project's, whose submissions/ and ensembles/ a default path must name when the
    command runs inside it. Only those levels: a project may itself sit in a folder so named."""
    here = Path.cwd().resolve()
    return next((runs for runs in levels if runs.name == "runs" and here.is_relative_to(runs)),
                None)


def part_of_something(name: str) -> bool:
    return bool(name.startswith(ABLATION_RUN) or FOLD_RUN.search(name) or TRIAL_RUN.match(name))


def how_to_finish(folder: Path, experiment: str | None) -> str:
    """The command that finishes an unfinished run, by what it belongs to. `experiment`: the
    name `kit train` takes (None when the run's config name has no experiments/ file: EXP)."""
    name, exp = folder.name, experiment or "EXP"
    if name.startswith(ABLATION_RUN):  # ablate-<date>-<time>-<hex>-<label>-s<seed>
        stamp = re.match(r"ablate-(\d{8}-\d{6}-[0-9a-f]{4})-", name)
        summary = folder.parent / f"{ABLATION_RUN}{stamp.group(1) if stamp else '*'}.json"
        return (f"an ablation run: `kit ablate {exp} ... --resume {summary}` (the ablation's "
                "own settings) finishes it")
    if fold := FOLD_RUN.search(name):
        return (f"a fold run: `kit train {exp} seeds=... --folds {fold.group(1)} --resume` (its "
                "group's command) finishes it with its group")
    if trial := TRIAL_RUN.match(name):
        return (f"a sweep trial: `kit sweep {exp} ... --study {trial.group(1)}` continues its "
                "study")
    return f"`kit train {exp} --resume --run-dir {folder}` finishes it"


# --- the data a run saw -------------------------------------------------------------------

DATA_DIGESTS = "data_sha256"  # metrics.json key: {data file as configured: its sha256}
# the same digests, written when a run starts: a run killed before its metrics.json (or
# resumed after a pause, which drops the pause's) is still checked against its files
DATA_RECORD = "data_sha256.json"
# the spec a run trains with (its predictions' columns), written as it starts: `kit report`
# needs it when the spec file changed since, without loading best.pt (which holds it too)
TRAINED_SPEC = "spec.json"


RUN_MARKS = ("metrics.json", "last.pt", "best.pt", "history.jsonl")  # beside config.toml


def toml_given_for_a_run(path: Path) -> str | None:
    """What a TOML file given where a run folder is wanted is: "ensemble" (its [[members]]),
    "run config" (the config.toml of a run folder: beside it, what a run writes as it starts
    or trains), else "other"; None when it does not read as TOML (the caller's reader names
    why). kit pack and kit report name the command that takes it."""
    try:
        doc = read_toml(path, KitError)
    except KitError:
        return None
    if "members" in doc:
        return "ensemble"
    folder = path.parent
    if path.name == "config.toml" and any((folder / f).is_file()
                                          for f in (*RUN_MARKS, TRAINED_SPEC)):
        return "run config"
    return "other"


def read_trained_spec(run_dir: Path) -> CompetitionSpec | None:
    """The spec of the run's spec.json; None for a run from before that file. A damaged one is
    a KitError naming it."""
    path = Path(run_dir) / TRAINED_SPEC
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: not readable JSON ({exc}); the file was damaged") from None
    if not isinstance(raw, dict):
        raise KitError(f"{path}: not a JSON object; the file was damaged or edited by hand")
    return spec_from_dict(raw, str(path))


def data_files(config: dict, summary: dict | None = None) -> list[str]:
    """The files a run trains and validates on: its train file, and its valid file unless it
    validates on part of the train file."""
    from kit.config import validation_file

    data = config.get("data") or {}
    files = [data.get("train"), validation_file(config, summary)]
    return [f for f in dict.fromkeys(files) if isinstance(f, str)]


def file_sha256(path: str, cache_dir: str | None) -> str:
    """A data file's sha256: free when the features cache's digests.json (or this process)
    already knows the file at its current stat, else read once and remembered there (a copied
    or touched file is hashed once, not on every `kit runs`)."""
    from kit.data.cache import file_digest, known_digest, remember_digest

    cache = Path(cache_dir or "data/cache")
    known = known_digest(Path(path), cache)
    if known is not None:
        return known
    digest = file_digest(Path(path))
    if cache.is_dir():
        with contextlib.suppress(OSError):  # bookkeeping only: a read-only cache costs re-reads
            remember_digest(Path(path), cache)
    return digest


def data_digests(config: dict) -> dict[str, str]:
    """{data file as the config names it: sha256} of what a run trains and validates on,
    recorded in metrics.json. Readers resolve the same names where they run, as select, report
    and resume do when they read the files, and compare what they would read."""
    cache_dir = (config.get("data") or {}).get("cache_dir")
    return {f: file_sha256(f, cache_dir) for f in data_files(config)}


def data_changes(run_dir: Path, reading_here: bool = False, *, config: dict | None = None,
                 metrics: dict | None = None) -> list[str]:
    """The data files, as the run's config names them and as they resolve here (what select,
    report and resume read), whose content differs from what the run trained and validated on
    (the sha256 it recorded): its scores and predictions do not describe them. A run recorded
    before kit kept digests, or a file missing here, is not reported (the readers that need
    the file say so). config and metrics: the run's, where the caller has read them already
    (`kit runs` reads hundreds of runs)."""
    if metrics is None:
        metrics = read_metrics(run_dir)
    recorded = recorded_digests(Path(run_dir), metrics)
    if not recorded:
        return []
    if config is None:
        try:
            config = read_config(run_dir)
        except KitError:
            config = {}
    cache_dir = (config.get("data") or {}).get("cache_dir")
    changed = []
    for path, digest in recorded.items():
        here = data_file_of(Path(run_dir), path, reading_here)
        if here is not None and file_sha256(str(here), cache_dir) != digest:
            changed.append(path)
    # a config.toml edited since to name another file: its rows are not the ones the run's
    # val_rows index (an oracle and a scatter of another file's rows, and not a word)
    named = validation_file(config, metrics)
    if isinstance(named, str) and named not in recorded:
        changed.append(named + UNRECORDED)
    return changed


UNRECORDED = " (named by config.toml now, not a file the run recorded)"


def recorded_digests(run_dir: Path, metrics: dict | None = None) -> dict:
    """{data file: sha256} as metrics.json (metrics: as already read) records them, else as
    the run's start did."""
    if metrics is None:
        metrics = read_metrics(run_dir)
    recorded = (metrics or {}).get(DATA_DIGESTS)
    if isinstance(recorded, dict):
        return recorded
    try:
        started = json.loads((run_dir / DATA_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none (a run from before it was written), or damaged
        return {}
    return started if isinstance(started, dict) else {}


def data_file_of(run_dir: Path, path: str, reading_here: bool = False) -> Path | None:
    """Where a run's configured data path points: an absolute one as it is; a relative one
    in the run's own checkout (the folder holding its runs/: a copy of the checkout has its
    own files, and `kit runs --runs-dir` from elsewhere reads that checkout's), else here.
    reading_here (a resume, which reads the files relative to this folder): here first."""
    configured = Path(path)
    if configured.is_absolute():
        return configured if configured.is_file() else None
    parents = Path(run_dir).resolve().parents
    # runs/EXP/ID, or runs/ID (kit train --run-dir runs/ID: parents[2] was above the project);
    # runs/runs/ID is either (an experiment named runs, or a project folder named runs): the
    # inner project first, the outer where the file is not in the inner one
    own = [p.parent for p in parents[:2] if p.name == "runs"] or parents[2:3]
    bases = [Path.cwd(), *own] if reading_here else [*own, Path.cwd()]
    return next((base / configured for base in bases if (base / configured).is_file()), None)


def fold_run(group: Path, recorded: str) -> Path:
    """A fold run an out-of-fold group lists (relative to where it trained): the group's
    sibling of that name, wherever the command runs."""
    sibling = Path(group).parent / Path(recorded).name
    return sibling if sibling.is_dir() else Path(recorded).resolve()


def changed_data_message(run_dir: Path, changed: list[str]) -> str:
    edited = [c for c in changed if c.endswith(UNRECORDED)]
    if edited:
        return (f"{run_dir}: its config.toml names {', '.join(edited)}: the run's scores and "
                "predictions describe the files it recorded in data_sha256.json; put its "
                "config.toml back")
    return (f"{run_dir} trained or validated on {', '.join(changed)}, whose content has "
            "changed since (its sha256 differs from the one the run recorded): its scores and "
            "predictions describe the old file; retrain it on the new one, or restore the old "
            "file")


def relocated(recorded: str | Path, runs_dir: Path = Path("runs")) -> Path:
    """A run path recorded as an absolute path (an ensemble file's members, a manifest's
    checkpoints): itself when it exists, else the same runs/EXP/ID[/file] under this
    checkout's runs/ (the checkout was moved or copied), else itself (the caller names it).
    Every runs/ part of the path is a candidate, the longest tail that exists here taken (it
    matches most of the recorded path): runs/runs/ID is a run of an experiment named runs, or
    runs/ID in a project folder named runs, and a checkout may itself sit in a folder named
    runs (/x/runs/proj/runs/EXP/ID: its own runs/ is the innermost)."""
    recorded = Path(recorded)
    if recorded.exists() or "runs" not in recorded.parts[:-1]:
        return recorded
    parts = recorded.parts
    tails = (runs_dir.joinpath(*parts[at + 1:]) for at in range(len(parts) - 1)
             if parts[at] == "runs")
    moved = next((tail for tail in tails if tail.exists()), None)
    return recorded if moved is None else moved.resolve()
