"""`kit train`: experiment config -> data -> model -> fit, one run per seed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from kit.atomic import atomic_bytes, atomic_text
from kit.competition import load_spec
from kit.config import (
    DEFAULTS,
    ConfigError,
    apply_overrides,
    check_seeds,
    differences,
    known_experiment,
    load_experiment,
    resolve,
)
from kit.errors import KitError
from kit.run_record import (
    DATA_DIGESTS,
    RUN_MARKS,
    TRAINED_SPEC,
    changed_data_message,
    data_changes,
    data_digests,
    is_finished,
    load_array,
    part_of_something,
    read_config,
    read_metrics,
)
from kit.torch_state import kit_torch
from kit.train.groups import (
    claim_group,
    dropped_if_unused,
    end_names,
    holding_group,
    member_names,
    new_run_id,
    refuse_repeated_seeds,
    resumable_group,
)
from kit.train.losses import warn_row_weights
from kit.train.runs import RUNS_DIR, RunFiles, epoch_line, npy_bytes, say
from kit.workers import TRAIN_WORKER_ENV, EndedBySignal


def experiment_config(exp: str, overrides: list[str] | None = None) -> dict:
    """The resolved config of an experiment with command-line overrides applied."""
    return resolve(apply_overrides(load_experiment(exp), list(overrides or [])))


def check_config(config: dict, resume: bool = False) -> dict:
    """Everything a config must pass before it trains (raises a KitError naming the key), so a
    bad value fails at once and not after the feature arrays are built. Returns what trains:
    the resolved config with the model's constructor values (a `params` budget solved).
    `resume`: a run that continues; its last.pt holds the batch size a GPU found for
    train.batch_size = 0, so a CPU may continue it (fit refuses one without)."""
    from kit.features import feature_set_from_config
    from kit.models import model_values, solve_width
    from kit.models.custom import check_own_model, is_custom
    from kit.sweep import check_table
    from kit.train.data import check_split_settings
    from kit.train.losses import MaskedLoss, resolved_loss

    config = resolve(config)
    spec = load_spec(config["spec"])
    features = feature_set_from_config(config)
    n_in, n_out = len(features.outputs), spec.n_outputs
    model = model_values(solved := solve_width(config["model"], n_in, n_out))
    if is_custom(solved["type"]):  # (the registered models' contract is pinned by tests)
        check_own_model(solved, n_in, n_out, scales_targets=config["normaliser"]["targets"])
    # as it trains (a run records it so): a run without [loss] and one of the default compare
    # alike, whichever kit wrote their config.toml
    loss = resolved_loss(config.get("loss"), spec.n_outputs)
    MaskedLoss(loss, spec.n_outputs)
    if note := scale_free_loss(loss, spec):
        warnings.warn(note, UserWarning, stacklevel=2)
    if "sweep" in config:  # kit train never reads it, but a typo there is a typo
        check_table(config["sweep"])
    check_split_settings(config["data"])
    train = config["train"]
    if train["swa_start"] > train["epochs"]:  # it would never average: say so, not train on
        raise ConfigError(f"train.swa_start = {train['swa_start']} is after the last epoch "
                          f"(train.epochs = {train['epochs']}): SWA would average nothing; "
                          "set it to an epoch <= train.epochs, or 0 (off)",
                          settings=("train.swa_start", "train.epochs"))
    if train["schedule"] != "plateau" and 0 < train["epochs"] <= train["warmup_epochs"]:
        warnings.warn(f"train.warmup_epochs = {train['warmup_epochs']} covers all "
                      f"{train['epochs']} epoch(s): the rate only ramps up to train.lr and the "
                      f"{train['schedule']} schedule never decays it; set train.warmup_epochs "
                      "below train.epochs (0 for a short run)", UserWarning, stacklevel=2)
    if config["train"]["batch_size"] == 0 and not resume and not torch.cuda.is_available():
        raise ConfigError("train.batch_size = 0 (find the largest batch that fits) needs a CUDA "
                          "device; set a batch size on CPU")
    return {**config, "model": {"type": config["model"].get("type"), **model}, "loss": loss}


def scale_free_loss(loss: dict, spec) -> str | None:
    """What to say of a loss whose every weighted term leaves the predictions' scale free
    (pearson) for a metric that scores their scale (mae, rmse, r2, a clipped correlation):
    such a model trains without a word and comes out at an arbitrary scale, no better than a
    constant where the metric measures errors. None where nothing is wrong."""
    from kit.train.losses import SCALE_FREE_TERMS

    weighted = [name for name, weight in loss["terms"].items() if weight > 0]
    if not weighted or not set(weighted) <= SCALE_FREE_TERMS or spec.metric.scale_free:
        return None
    terms = ", ".join(f"{name} = {weight!r}" for name, weight in loss["terms"].items())
    metric = spec.metric
    if metric.clip is not None:
        why = (f"the spec's metric {metric.name} clips the predictions to "
               f"[{metric.clip[0]:g}, {metric.clip[1]:g}] before it scores them, so their "
               "scale decides what the clip cuts")
    else:
        why = (f"the spec's metric {metric.name} scores the predictions' scale (the model "
               "comes out correlated with the targets at an arbitrary scale, perhaps no better "
               "than a constant)")
    return (f"loss.terms = {{ {terms} }}: every weighted term ({', '.join(weighted)}) leaves "
            f"the predictions' scale free, but {why}; add a term that fits the scale, e.g. "
            f"loss.terms = {{ mse = 1.0, {weighted[0]} = 0.5 }} (or huber; wmse or whuber "
            "weight rows by |y|)")



def _written_by_training(run: Path) -> tuple[Path, ...]:
    return (run / "last.pt", run / "history.jsonl", run / "config.toml")


def resumable_run(experiment: str, runs_dir: Path = RUNS_DIR, config: dict | None = None
                  ) -> Path:
    """The newest unfinished run of an experiment that is not part of a sweep, a fold group or
    an ablation, by the time of its last write (last.pt, history.jsonl or config.toml); given
    the command's config (as check_config gives it), the newest of those started with it (its
    seed, its overrides), else the newest (see config_changes). A run killed before its first
    checkpoint, or whose damaged last.pt was deleted, counts too: continue_run trains it again
    from its start."""
    def last_write(run: Path) -> int:
        return max(f.stat().st_mtime_ns for f in _written_by_training(run) if f.exists())

    folder = runs_dir / experiment
    candidates = sorted((p for p in folder.iterdir() if p.is_dir()
                         and not part_of_something(p.name)
                         and any(f.exists() for f in _written_by_training(p))),
                        key=last_write, reverse=True) if folder.is_dir() else []
    # (one that another process trains now is that process's)
    unfinished = [run for run in candidates if not is_finished(run)]
    held = [run for run in unfinished if RunFiles(run).being_trained()]
    unfinished = [run for run in unfinished if run not in held]
    if not unfinished and held:  # not "none": started again, it would train a second run
        raise ConfigError(f"{held[0]} is being trained by another process: no other unfinished "
                          f"run of {experiment!r} to resume; wait for it to end or stop it")
    if not unfinished:
        raise ConfigError(f"no unfinished run of {experiment!r} under {runs_dir / experiment} "
                          "to resume; start one without --resume")
    if config is not None:
        return next((run for run in unfinished if not config_changes(run, config)),
                    unfinished[0])
    return unfinished[0]


def config_changes(run: Path, checked: dict) -> list[str]:
    """The settings in which a run's config.toml differs from a command's config `checked`
    (both as check_config gives them: the model's width solved), the experiment's name and
    description aside."""
    try:
        with warnings.catch_warnings():  # another run's notes (its loss, its warm-up) are not
            warnings.simplefilter("ignore")  # this command's: it only compares with them
            stored = check_config(read_config(run), resume=True)
    except KitError:
        return ["the config"]
    return [key for key in differences(stored, checked) if key not in ("name", "description")]


def train_experiment(exp: str, overrides: list[str] | None = None, *,
                     seeds: list[int] | None = None, resume: bool = False,
                     run_dir: Path | None = None, stop_after_epochs: int = 0, folds: int = 0,
                     progress: bool = True, runs_dir: Path = RUNS_DIR, jobs: int = 1
                     ) -> list[dict]:
    """Train one run per seed (per fold with `folds`); returns each run's metrics. With
    `jobs` > 1, the seeds train in that many processes at once (see train_seeds_in_parallel)."""
    with kit_torch(grad=True):  # (not a decorator: warnings name the caller)
        from kit.train.data import check_data_files, check_fold_count

        base = experiment_config(exp, overrides)
        held_out = [f"data.{key} = {base['data'][key]}" for key in ("valid_fraction", "split_seed")
                    if base["data"][key] != DEFAULTS["data"][key]]
        if folds and held_out and not resume:  # (a group started before this check resumes)
            # said before check_config's "need data.split = random": that advice fails here next
            raise ConfigError(f"{' and '.join(held_out)} choose a single held-out split; with "
                              "--folds each fold validates 1/k of the sequences, placed by the "
                              "run's seed: leave them out",
                              settings=("data.valid_fraction", "data.split_seed"))
        # a --jobs worker trains the config its command checked, which said the config's
        # warnings once (not once more per worker); its errors, and warnings about its data,
        # its device or its training, still show
        with warnings.catch_warnings():
            if os.environ.get(TRAIN_WORKER_ENV):
                warnings.simplefilter("ignore")
            check_config(base, resume=resume)
            if not resume:  # |y|-weighted terms of another competition's file (r314)
                warn_row_weights(exp, overrides, base)
        if not resume:  # a resumed run reads its own config's files (train_one checks them)
            check_data_files(base["data"], folds=folds > 0)
        if folds and run_dir:
            raise ConfigError("--folds names its own run directories: it does not combine with "
                              "--run-dir")
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        if stop_after_epochs < 0:
            raise ConfigError(f"--stop-after-epochs must be >= 0 (0: no stop), got "
                              f"{stop_after_epochs}")
        check_seeds(seeds or [])
        if folds < 0 or folds == 1:
            raise ConfigError(f"--folds must be 0 (off) or >= 2, got {folds}")
        if folds and not resume:
            check_fold_count(base, folds)
        limits = [f"train.{key} = {base['train'][key]}"
                  for key in ("max_train_seqs", "max_valid_seqs") if base["train"][key]]
        if folds and limits:
            raise ConfigError(f"{' and '.join(limits)} with --folds: each fold trains on all the "
                              "other folds of the train file and validates on its own, so the "
                              "limits would be ignored; set them to 0, or cut the train file")
        if base["data"]["fold"] and not (folds or resume):
            raise ConfigError("data.fold is what kit train --folds K writes into each fold run: "
                              "train folds with --folds K")
        if run_dir and len(seeds or []) > 1:
            raise ConfigError("--run-dir names one run: it does not combine with several seeds")
        if run_dir and not resume:
            refuse_shared_folder(Path(run_dir), runs_dir, base["name"])
        refuse_repeated_seeds(seeds or [])
        if resume and run_dir and seeds:  # seeds=[N] names the run's seed, as seed=N: checked
            overrides = [*(overrides or []), f"seed={seeds[0]}"]  # against it (it was ignored)
        # --resume of one run: the newest unfinished run; of a group (seeds=, --folds): the group
        group_resume = resume and not run_dir and (seeds is not None or folds > 0)
        seeds = seeds or [base["seed"]]
        parallel = jobs > 1 and len(seeds) > 1
        # (one seed too: its folds ran one after another, --jobs dropped without a word)
        if jobs > 1 and (folds or run_dir) or parallel and resume and not group_resume:
            raise ConfigError("--jobs trains several seeds at once: it does not combine with "
                              "--folds or --run-dir")
        exp_dir = runs_dir / base["name"]
        claimed = None  # a new group's stamp; --resume of one run and --run-dir name no group
        stamp = None
        if group_resume:
            stamp = resumable_group(exp_dir, seeds, folds, base)
        elif not (resume or run_dir):
            stamp = claimed = claim_group(exp_dir, seeds, folds, base)
        with holding_group(exp_dir, stamp), dropped_if_unused(exp_dir, seeds, folds, claimed):
            if parallel:
                return train_seeds_in_parallel(base, seeds, jobs, runs_dir,
                                               stop_after_epochs, progress, stamp)
            return _train_in_turn(base, seeds, folds, runs_dir, run_dir, stamp, resume,
                                  group_resume, overrides, stop_after_epochs, progress)




def refuse_shared_folder(run_dir: Path, runs_dir: Path, experiment: str) -> None:
    """--run-dir must name a run's own folder: the working folder ("" or "."), the runs folder
    or an experiment's folder in it took the run's files beside everything else there, and
    `kit runs` then listed that folder as one run, hiding the runs inside it."""
    where = run_dir.resolve()
    # the working folder and those above it are the project's (a DVC root holds a config.toml
    # and a metrics.json of its own): only folders below it may be a run that holds this one
    around = {Path.cwd().resolve(), *Path.cwd().resolve().parents}
    shared = {Path.cwd().resolve(): "the working folder",
              runs_dir.resolve(): "the runs folder",
              (runs_dir / experiment).resolve(): f"experiment {experiment}'s runs folder"}
    if where in shared or where.name == "runs":
        what = shared.get(where, "a runs folder")
    elif where.is_dir() and any((p / "config.toml").is_file() for p in where.iterdir()
                                if p.is_dir()):
        what = "a folder of runs"
    elif inside := next((parent for parent in where.parents if parent not in around
                         and all((parent / f).is_file() for f in ("config.toml", TRAINED_SPEC))
                         and any((parent / f).is_file() for f in RUN_MARKS)), None):
        what = f"inside run {inside} (kit runs and --resume did not find it there)"
    else:
        return
    raise ConfigError(f"--run-dir {run_dir} is {what}: name a folder of the run's own, e.g. "
                      f"{runs_dir / experiment / 'myrun'}")


def _train_in_turn(base: dict, seeds: list[int], folds: int, runs_dir: Path,
                   run_dir: Path | None, stamp: str | None, resume: bool, group_resume: bool,
                   overrides: list[str] | None, stop_after_epochs: int,
                   progress: bool) -> list[dict]:
    def train_seed(seed: int) -> list[dict]:
        """The seed's run, or its fold group's runs."""
        config = {**base, "seed": seed}
        if folds:
            return _train_folds(config, folds, runs_dir, progress, stamp, overrides,
                                stop_after_epochs)
        if group_resume:
            files = RunFiles(runs_dir / config["name"] / new_run_id(seed, stamp))
            return [continue_run(config, files, overrides, stop_after_epochs, progress,
                                 group="group")]
        if resume:  # as a group member: a run whose last.pt is gone trains again
            checked = None if run_dir else check_config(config, resume=True)  # (--run-dir names it)
            files = RunFiles(run_dir or resumable_run(config["name"], runs_dir, checked))
            stored = stored_config(files, overrides)
            if checked and (changed := config_changes(files.root, checked)):
                print(f"note: --resume continues {files.root}, the newest unfinished run, with "
                      f"its own config.toml: this command's config differs in "
                      f"{', '.join(changed[:8])} (an edited experiment file, or the command of "
                      "another run); to train those settings, start a new run without "
                      "--resume", file=sys.stderr, flush=True)
            if stored.get("name") != config["name"]:  # (only a --run-dir can name another's)
                exp = known_experiment(stored.get("name"))
                raise ConfigError(f"--resume: {files.root} is a run of experiment "
                                  f"{stored.get('name')!r}, not {config['name']!r}; resume it "
                                  f"as `kit train {exp or 'EXP'} --resume --run-dir "
                                  f"{files.root}`" + ("" if exp else ", EXP the file it was "
                                                      "trained from (not in experiments/)"))
            return [continue_run(stored, files, overrides, stop_after_epochs, progress)]
        files = RunFiles(run_dir or runs_dir / config["name"] / new_run_id(seed, stamp))
        files.refuse_reuse()
        return [train_one(config, files, stop_after_epochs=stop_after_epochs,
                          progress=progress)]

    if group_resume and not folds:  # every finished member first: no seed trains beside one
        for seed in seeds:  # of other data (as the --jobs path checks before any worker)
            folder = runs_dir / base["name"] / new_run_id(seed, stamp)
            if is_finished(folder):
                refuse_changed_member(folder, "group")
    if len(seeds) == 1:
        return train_seed(seeds[0])
    results, failed = [], []
    for seed in seeds:  # one seed (or its fold group) failing does not stop the others
        try:
            results += train_seed(seed)
        except KitError as exc:
            print(f"error: seed {seed}: {exc}", file=sys.stderr, flush=True)
            failed.append(f"seed {seed}")
    if failed:
        raise SeedsFailed(failed, runs_dir / base["name"], results)
    return results


class SeedsFailed(KitError):
    """Some seeds of a group failed: `results` holds the metrics of the runs that did not, so
    the command can still show them. Each failure is named with its cause ("exit 1": its own
    error was printed; "killed by signal 9": nothing was)."""

    nothing_started = False  # set when no run trained an epoch: the group record is gone

    def __init__(self, failed: list[str], exp_dir: Path, results: list[dict]):
        printed = any("killed by" not in f for f in failed)
        super().__init__(
            f"training failed for {', '.join(failed)}"
            + ("; an error printed above says why" if printed else "")
            + (f"; the other seeds' runs are in {exp_dir}" if results else ""))
        self.results = results

    def __str__(self) -> str:
        if self.nothing_started:  # (--resume would find no group)
            return (f"{super().__str__()}. No run trained an epoch, so nothing was kept: fix "
                    "the cause and run the same command again (without --resume)")
        return (f"{super().__str__()}. The same command with --resume trains again a seed that "
                "was killed or stopped (from its last.pt where it has one) and keeps the "
                "finished runs; a run that diverged counts as finished: change the setting and "
                "start a new group")


def exit_cause(code: int) -> str:
    """A worker's exit code in words: a negative one is the signal that killed it, with no
    error of its own (SIGKILL is what the kernel's out-of-memory killer sends)."""
    if code >= 0:
        return f"exit {code}"
    name = signal_name(-code)
    return f"killed by signal {-code}{f' ({name})' if name else ''}" + (
        ": out of memory?" if -code == 9 else "")


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


def refuse_changed_member(folder: Path, group: str) -> None:
    """A finished member of a resumed group trained on other data than today's files: the
    group's other runs would train on these, and blend with it as one group."""
    if changed := data_changes(folder, reading_here=True):
        raise ConfigError(changed_data_message(folder, changed) + f"; the {group}'s other runs "
                          f"would train on the new files: start a new {group}")


def continue_run(config: dict, files: RunFiles, overrides: list[str] | None,
                 stop_after_epochs: int, progress: bool,
                 fold: tuple[int, int] | None = None, group: str = "") -> dict:
    """One member of a resumed group: kept when finished, resumed from its last.pt, else
    (never started, or killed before its first checkpoint) trained from the start. `group`
    ("group", "fold group", "ablation"): a finished member of other data than today's files
    is refused, as the other members would train on those."""
    if is_finished(files.root):
        if group:
            refuse_changed_member(files.root, group)
        return read_metrics(files.root) | {"run_dir": str(files.root)}
    if files.last.exists():
        return train_one(stored_config(files, overrides), files, fold=fold, resume=True,
                         stop_after_epochs=stop_after_epochs, progress=progress)
    # a group's member folders are made at its claim: one deleted by hand came back unsaid
    # (r315); an ablation makes its variants' folders as it reaches them
    if group in ("group", "fold group") and not files.root.exists():
        print(f"note: {files.root} is not there (deleted, or it never started): training it "
              f"from its start as a member of its {group}", file=sys.stderr, flush=True)
    elif files.history.exists():  # epochs were logged, but last.pt is gone (deleted, or lost)
        print(f"note: {files.root} has no last.pt to resume from: training it again from its "
              "start (its history.jsonl and best.pt are replaced)", file=sys.stderr, flush=True)
    files.discard_unstarted()
    return train_one(config, files, fold=fold, stop_after_epochs=stop_after_epochs,
                     progress=progress)


def stored_config(files: RunFiles, overrides: list[str] | None) -> dict:
    """A run's own config.toml, for --resume. Overrides must not change it: a resumed run
    replays the run it continues, so new settings belong to a new run."""
    if not files.config_path.is_file():
        raise ConfigError(f"{files.root}: not a run directory (no config.toml) to resume")
    config = resolve(read_config(files.root))
    as_trained = None  # the stored config as it trains: checked once, when first needed

    def changes(text: str) -> bool:
        nonlocal as_trained
        edited = resolve(apply_overrides(copy.deepcopy(config), [text]))
        if edited == config:
            return False
        with warnings.catch_warnings():  # compared as they train: a width given beside a
            warnings.simplefilter("ignore")  # `params` budget is solved again (stored solved)
            if as_trained is None:
                as_trained = check_config(config, resume=True)
            return check_config(edited, resume=True) != as_trained

    changed = [text for text in overrides or [] if changes(text)]
    if changed:
        raise ConfigError(f"--resume continues {files.root} with its own config.toml, which "
                          f"{changed} would change; train a new run to use them")
    return config


def train_seeds_in_parallel(base: dict, seeds: list[int], jobs: int, runs_dir: Path,
                            stop_after_epochs: int, progress: bool, stamp: str) -> list[dict]:
    """Each seed as its own `kit train` process, at most `jobs` at a time, the machine's cores
    shared between them: a small model trains about as fast on one thread as on two, so two
    seeds at once take the time of one. The feature arrays are cached first, so the workers
    read them instead of building them side by side. Ctrl-C and signals reach every worker
    (kit.workers.WorkerGroup); each stops at once, resumable from its last finished epoch."""
    import tomli_w

    from kit.temp import owned_temp_dir
    from kit.train.data import cache_feature_arrays
    from kit.train.runs import toml_safe

    cache_feature_arrays(base, status=startup_status(progress))
    with owned_temp_dir("group") as tmp:
        # the workers train the config this command resolved: read from the experiment file
        # as each started, a seed queued behind others took an edit made meanwhile
        frozen = Path(tmp) / f"{base['name']}.toml"
        frozen.write_text(tomli_w.dumps(toml_safe(base)), encoding="utf-8")
        return _train_workers(str(frozen), base, seeds, jobs, runs_dir, stop_after_epochs,
                              progress, stamp)


def _train_workers(exp: str, base: dict, seeds: list[int], jobs: int, runs_dir: Path,
                   stop_after_epochs: int, progress: bool, stamp: str) -> list[dict]:
    from kit.workers import WorkerGroup, kit_command, worker_pythonpath

    threads = max(1, (os.cpu_count() or 1) // min(jobs, len(seeds)))
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "PYTHONPATH": worker_pythonpath(),
                        # the parent says how to resume, and its config's warnings, not each
                        TRAIN_WORKER_ENV: "1"}
    dirs = [runs_dir / base["name"] / new_run_id(seed, stamp) for seed in seeds]
    queued, running = [], []  # a resumed group: finished members are kept as they are
    for seed, folder in zip(seeds, dirs, strict=True):
        if is_finished(folder):  # (checked before any worker starts: as continue_run does)
            refuse_changed_member(folder, "group")
            continue
        files = RunFiles(folder)
        files.discard_unstarted()
        # a resumed run keeps its own config.toml (threads included): only the seed is passed;
        # kit's share of the cores only where the command leaves train.threads to kit (0): a
        # user's train.threads=2 was replaced by it, and --resume then refused the user's own
        # override as a change of the stored config
        chosen = base["train"]["threads"] == 0
        how = (["--resume"] if files.last.exists()
               else [f"train.threads={threads}"] if chosen else [])
        queued.append((kit_command("train", exp, f"seed={seed}", *how, "--run-dir", str(folder),
                                   "--stop-after-epochs", str(stop_after_epochs), "--quiet"),
                       env))
        running.append((seed, folder))
    report = EpochLines(*zip(*running, strict=True)) if progress and running else None
    with WorkerGroup() as group:  # workers print errors; the progress and result lines are ours
        codes = group.wait(queued, jobs, on_poll=report, stdout=subprocess.DEVNULL)
    ended = list(zip(running, codes, strict=True))
    failed = [f"seed {seed} ({exit_cause(code)})" for (seed, _), code in ended if code]
    failed_dirs = {folder for (_, folder), code in ended if code}
    results = [read_metrics(folder) | {"run_dir": str(folder)} for folder in dirs
               if folder not in failed_dirs]
    if failed:  # the runs that did train are still shown
        raise SeedsFailed(failed, runs_dir / base["name"], results)
    return results


class EpochLines:
    """Prints each parallel run's epochs as they land in its history.jsonl: every line that was
    not there when the command started (a resumed run's earlier epochs were printed by earlier
    sessions). Lines, not epoch numbers: a resumed run first cuts its history back to its
    last.pt, so an epoch logged just before a kill is trained again under the same number."""

    def __init__(self, seeds: list[int], dirs: list[Path]):
        self.runs = list(zip(seeds, dirs, strict=True))
        self.seen = [set(self._lines(d)) for d in dirs]

    @staticmethod
    def _lines(folder: Path) -> list[str]:
        path = folder / "history.jsonl"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return text.splitlines()[:text.count("\n")]  # whole lines: one being written waits

    def __call__(self) -> None:
        for (seed, folder), seen in zip(self.runs, self.seen, strict=True):
            for line in self._lines(folder):
                if line in seen:
                    continue
                seen.add(line)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # torn by a kill: not an epoch
                    continue
                print(f"seed {seed} {epoch_line(record)}", flush=True)


def startup_status(progress: bool):
    """What a run says while its data is read, fitted and normalised (30-100 s at full size,
    said nowhere before: r312), a line each on stderr, where the progress bars go: stdout
    carries the epoch and result lines that scripts read. None without progress (--quiet, a
    --jobs worker)."""
    if not progress or os.environ.get(TRAIN_WORKER_ENV):
        return None

    def status(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return status


def train_one(config: dict, files: RunFiles, *, fold: tuple[int, int] | None = None,
               resume: bool = False, stop_after_epochs: int = 0, progress: bool = True,
               on_epoch=None) -> dict:
    """Train one run into `files`; out of CPU memory, a TrainingOutOfMemory saying what to
    lower."""
    from kit.train.trainer import failed_allocation, out_of_memory

    try:
        return _train_one(config, files, fold=fold, resume=resume,
                          stop_after_epochs=stop_after_epochs, progress=progress,
                          on_epoch=on_epoch)
    except (MemoryError, RuntimeError) as exc:  # torch's raw traceback, exit 1 (r303)
        if (asked := failed_allocation(exc)) is None:
            raise
        model_config = files.about.get("model_config")
        raise out_of_memory(asked, config, model_config, files) from None


def _train_one(config: dict, files: RunFiles, *, fold: tuple[int, int] | None,
               resume: bool, stop_after_epochs: int, progress: bool, on_epoch) -> dict:
    from kit.models import build_model, count_params, solve_width
    from kit.models.custom import check_run_source, keep_source
    from kit.train.data import far_from_standard, load_train_data, target_moments
    from kit.train.losses import resolved_loss
    from kit.train.trainer import EPOCH_AT, fit

    if fold is not None:  # recorded in config.toml: reports and resume know the fold
        config = {**config, "data": {**config["data"], "fold": [fold[0], fold[1]]}}
    # before the arrays are built from a file the run did not train on (the digest computed
    # here is the one the cache build then uses)
    if resume and (changed := data_changes(files.root, reading_here=True)):
        raise ConfigError(changed_data_message(files.root, changed)
                          + "; --resume would train it on both")
    if resume:  # a model of your own changed since the run started: refused before the data
        check_run_source(config["model"].get("type"), files.root, resuming=True)
    # (a resumed fold run's config brings its fold; without progress, called as it always was)
    status = startup_status(progress)
    data = load_train_data(config, **({"status": status} if status else {}))
    n_in, n_out = len(data.feature_set.outputs), data.spec.n_outputs
    # config.toml records the loss it trains, defaults filled in (as the other sections); a
    # resumed run keeps its config.toml as it was written (one from before: no [loss])
    config = {**config, "loss": resolved_loss(config.get("loss"), n_out)}
    model_config = solve_width(config["model"], n_in, n_out)
    torch.manual_seed(config["seed"])  # the initial weights: the same for the same seed
    model = build_model(model_config, n_in, n_out)
    if config["normaliser"]["targets"]:  # outputs in the targets' units, layers standardised
        model.head.scale_outputs(*target_moments(data.train))
    # (targets the loss overflows on were named already, and normaliser.targets cannot help)
    elif not resume and not data.extreme_targets and (
            note := far_from_standard(data.spec, *target_moments(data.train))):
        say(f"note: {note}")
    summary = {"params": count_params(model), "features": n_in,
               "train_seqs": len(data.train), "valid_seqs": len(data.valid),
               "valid_limited": data.valid_limited, "valid_truncated": data.valid_truncated}
    if config["data"].get("fold"):
        summary["fold"] = {"k": config["data"]["fold"][0], "index": config["data"]["fold"][1]}
    # which data the scores describe: select, report and runs compare it with the files later
    summary[DATA_DIGESTS] = data_digests(config)  # free: the cache build just hashed them
    with files.training():
        if not resume:
            files.refuse_reuse()  # again, under the lock: two new runs in one --run-dir
            files.start({**config, "model": model_config}, {}, data.spec)
            files.record_data(summary[DATA_DIGESTS])
            keep_source(model_config["type"], files.root)  # (a model of your own: its file)
        files.about = {"model_config": model_config, "summary": summary}
        try:
            metrics = fit(config, data, model, files, resume=resume,
                          stop_after_epochs=stop_after_epochs, progress=progress,
                          on_epoch=on_epoch)
        except (KeyboardInterrupt, EndedBySignal, BrokenPipeError) as stop:  # (stdout's
            stop.run_dir = str(files.root)  # reader gone too) the resume hint names the run
            stop.epoch_at = files.about.get(EPOCH_AT)  # and the unfinished epoch it loses
            raise
    return {**metrics, "run_dir": str(files.root)}


def write_oof(folder: Path, preds: np.ndarray, rows: np.ndarray, summary: dict) -> None:
    """An out-of-fold group's files, each whole or not at all and metrics.json ("finished")
    last: a kill or a full disk mid-write left a torn oof_preds.npy, and numpy's error on a
    full disk named no file."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_bytes(folder / "oof_preds.npy", npy_bytes(preds))
    atomic_bytes(folder / "oof_rows.npy", npy_bytes(rows))
    atomic_text(folder / "metrics.json", json.dumps(summary, indent=2))


def _train_folds(config: dict, k: int, runs_dir: Path, progress: bool, stamp: str,
                 overrides: list[str] | None, stop_after_epochs: int) -> list[dict]:
    """One run per fold of the train file, then their out-of-fold predictions together.

    runs/<exp>/<id>-fold<i>of<k>/ are ordinary runs (validated on their held-out fold; their
    val_rows index the train file); runs/<exp>/<id>-oof/ holds oof_preds.npy + oof_rows.npy
    (every scored train row exactly once) and the OOF metric in metrics.json. A resumed group
    keeps its finished folds and continues the others; the out-of-fold result waits until every
    fold has finished (a fold paused by --stop-after-epochs leaves it to the next --resume).
    """
    from kit.metrics import evaluate
    from kit.train.data import load_train_data
    from kit.train.trainer import TrainingDiverged

    exp_dir, seeds = runs_dir / config["name"], [config["seed"]]
    results = []
    for i, name in enumerate(member_names(seeds, k, stamp)):
        files = RunFiles(exp_dir / name)
        result = continue_run(config, files, overrides, stop_after_epochs, progress,
                              fold=(k, i), group="fold group")
        if result.get("finished") and result.get("score") is None:
            # a fold that diverged before any epoch scored has no predictions: the others
            # (a resume kept it as finished) would train for no out-of-fold result
            raise TrainingDiverged(f"{result['run_dir']} diverged before any epoch scored (its "
                                   "metrics.json says where): no out-of-fold result for this "
                                   "group")
        results.append(result)
    if not all(r.get("finished") for r in results):
        return results
    preds, rows, truth = [], [], []
    for i, result in enumerate(results):
        held_out = load_train_data(config, (k, i)).valid
        preds.append(load_array(Path(result["run_dir"]) / "val_preds.npy", "preds"))
        rows.append(load_array(Path(result["run_dir"]) / "val_rows.npy", "rows"))
        truth.append(held_out.y.numpy()[held_out.mask.numpy()])
    order = np.argsort(np.concatenate(rows), kind="stable")
    oof_preds, oof_rows = np.concatenate(preds)[order], np.concatenate(rows)[order]
    report = evaluate(load_spec(config["spec"]), np.concatenate(truth)[order], oof_preds)
    (oof,) = end_names(seeds, k, stamp)
    folder = exp_dir / oof
    summary = {"finished": True, "kind": "oof", "folds": k, "score": report.score,
               "per_target": report.per_target, "runs": [r["run_dir"] for r in results],
               # data.seq_len cut the folds' sequences: not every scored row of the file
               "valid_truncated": any(bool(r.get("valid_truncated")) for r in results)}
    write_oof(folder, oof_preds, oof_rows, summary)
    return [*results, {**summary, "run_dir": str(folder), "best_epoch": "-", "params": 0}]
