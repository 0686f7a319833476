"""`kit ablate exp=NAME --groups a,b,c [--seeds 1,2]`: what each feature group brings.

Trains the cumulative ladder (a, a+b, a+b+c) and the leave-one-group-out variants (all but a,
all but b, ...; skipped when there is a single group), each with every seed, as ordinary runs
under runs/<exp>/ablate-<stamp>-<label>-s<seed>/, then prints the validation score and the
per-target scores averaged over seeds (with the score's spread across seeds), each with the
change the group brings: in the ladder, against the rung below; leaving a group out, against
the full set (positive = the group helps, whichever way the metric points). A change is the mean
of per-seed differences over the seeds both sides finished.

Every variant's features and model (its width solved from a `params` budget for its own input
count) are checked before any training. A run that fails (it diverged before any epoch scored,
or one variant's setting is refused) is recorded with its reason and the ablation goes on; one
that diverged later counts with its best epoch and is marked. The summary JSON is rewritten
after every run, so an interrupted ablation keeps what it trained, and `--resume` with that JSON
continues it (finished runs kept, an interrupted one continued from its last.pt).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import numpy as np

from kit.atomic import atomic_text
from kit.config import ConfigError, check_seeds, differences
from kit.errors import KitError
from kit.metrics import SHOWN_OUTPUTS
from kit.sweep import training_digests
from kit.torch_state import kit_torch
from kit.train.runs import RUNS_DIR, RunFiles
from kit.workers import SIGPIPE, EndedBySignal, stdout_closed


def variants(groups: list[str]) -> list[tuple[str, str, list[str]]]:
    """(kind, label, groups) for the ladder, then the leave-one-outs."""
    out = [("ladder", "+".join(groups[:i + 1]), groups[:i + 1]) for i in range(len(groups))]
    if len(groups) > 1:
        out += [("without", f"-{g}", [h for h in groups if h != g]) for g in groups]
    return out


class AblationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP: `signum`) during an ablation: where its summary is and how
    many of its runs finished."""

    def __init__(self, file: Path, finished: int, planned: int, signum: int = signal.SIGINT):
        super().__init__()
        self.file, self.finished, self.planned, self.signum = file, finished, planned, signum


def ablate(exp: str, groups: list[str], seeds: list[int] | None = None,
           overrides: list[str] | None = None, *, progress: bool = True,
           runs_dir: Path = RUNS_DIR, resume: Path | None = None) -> dict:
    """Train every variant with every seed (see the module docstring). `resume`: the summary
    JSON of an interrupted ablation with the same settings; its finished runs are kept, its
    interrupted ones continue from their last.pt."""
    with kit_torch(grad=True):  # (not a decorator: warnings name the caller)
        from kit.competition import load_spec
        from kit.config import parse_override, refuse_overrides
        from kit.train.data import check_data_files
        from kit.train.recipe import check_config, experiment_config

        if not groups or len(set(groups)) != len(groups):
            raise ConfigError(f"--groups: distinct group names, at least one, got {groups}")
        refuse_overrides(overrides, {"seeds": "--seeds"} | ({"seed": "--seeds alone"} if seeds
                                                           else {}))
        for text in overrides or []:  # (a [features] table keeps its ops: the groups are set)
            keys, value = parse_override(text)
            if keys == ["features", "groups"] or (
                    keys == ["features"] and isinstance(value, dict) and "groups" in value):
                raise ConfigError(f"override {text!r}: this command sets features.groups itself "
                                  "(each variant's); use --groups")
        base = experiment_config(exp, overrides)
        spec = load_spec(base["spec"])
        check_variants(base, spec, groups)  # first: it names the variant a budget cannot build
        # what training checks first (swa_start, the loss, [sweep], splits), on a config that
        # trains (the base's own groups may be none of the variants'); a resume may continue
        # runs a GPU started with batch_size 0 on a CPU
        first = variants(groups)[0][2]
        check_config({**base, "features": {**base["features"], "groups": first}},
                     resume=resume is not None)
        check_data_files(base["data"])  # before any run: each would fail on it
        if resume is not None and not seeds:  # the ablation's own (the file's seed is free)
            seeds = recorded_seeds(Path(resume))
        seeds = seeds or [base["seed"]]
        check_seeds(seeds, "--seeds")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds: distinct seeds, got {seeds} (a repeat trains the same "
                              "run)")
        summary = {"experiment": base["name"], "groups": groups, "seeds": seeds,
                   "overrides": list(overrides or []),
                   # what the runs train, by content: a moved checkout or an edited description
                   # still resumes (the groups and seeds are each run's own: left out)
                   "config": training_digests(base, ["features.groups", "seed"]),
                   "sign": 1.0 if spec.metric.higher_is_better else -1.0,
                   "metric": spec.metric.name, "targets": list(spec.outputs), "variants": []}
        kept: list[dict] = []  # a resumed summary's rows, until this run revisits them
        if resume is not None:
            out = Path(resume)
            check_resumable(out, summary)
            kept = saved_rows(out, summary)
        else:  # unique per ablation: two started in the same second never share run folders
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
            out = runs_dir / base["name"] / f"ablate-{stamp}.json"
            save(out, summary)  # from the start: an ablation interrupted in its first run resumes
        trained: dict[tuple[str, ...], list[dict]] = {}  # groups -> their seeds' outcomes
        try:
            for kind, label, chosen in variants(groups):
                # leaving out the last group is the rung below the top: the same runs, trained once
                outcomes = trained.setdefault(tuple(chosen), [])
                todo = [] if outcomes else seeds
                summary["variants"].append(variant_row(kind, label, chosen, outcomes))
                for seed in todo:
                    config = {**base, "seed": seed,
                              "features": {**base["features"], "groups": chosen}}
                    files = RunFiles(out.parent / f"{out.stem}-{label}-s{seed}")
                    outcomes.append(train_variant_seed(config, files, label, resume is not None,
                                                       progress))
                    summary["variants"][-1] = variant_row(kind, label, chosen, outcomes)
                    save(out, summary, kept, trained)  # after every run: an interruption keeps
                save(out, summary, kept, trained)  # the rest
        except (KeyboardInterrupt, EndedBySignal, BrokenPipeError) as stop:  # (a scheduler's
            # SIGTERM too; stdout's reader gone, `| head -1`, as an interrupt: SIGPIPE's number)
            if isinstance(stop, BrokenPipeError) and not stdout_closed(stop):
                raise  # another pipe's: an error
            folders = run_folders(out, groups, seeds)
            finished = sum(finished_run(folder, trained) for folder in folders)
            signum = (SIGPIPE if isinstance(stop, BrokenPipeError)
                      else getattr(stop, "signum", signal.SIGINT))
            raise AblationInterrupted(out, finished, len(folders), signum) from None
        summary["file"] = str(out)
        return summary


def save(path: Path, summary: dict, kept: list[dict] = (),
         trained: dict[tuple[str, ...], list[dict]] | None = None) -> None:
    """The summary as far as this run got, then the rows of a resumed summary it has not
    revisited yet: a resume interrupted before it passed them keeps them in the file. A kept
    row whose runs this run has seen (the leave-last-out row shares the ladder's rung below
    the top) is rebuilt from them."""
    summary["changes"] = changes(summary)
    seen = {row["label"] for row in summary["variants"]}
    try:
        rest = [variant_row(row["kind"], row["label"], row["groups"],
                            trained[tuple(row["groups"])])
                if tuple(row["groups"]) in (trained or {}) else row
                for row in kept if row["label"] not in seen]
        record = {**summary, "variants": summary["variants"] + rest}
        record["changes"] = changes(record)
    except (KeyError, TypeError, ValueError, AttributeError):  # a hand-edited row: left out
        record = summary
    write_summary(path, record)


def saved_rows(path: Path, summary: dict) -> list[dict]:
    """A resumed summary's variant rows (check_resumable read it), [] where they cannot be read
    (the run folders beside it are what a resume rebuilds them from); save leaves out rows it
    cannot compare."""
    labels = [label for _, label, _ in variants(summary["groups"])]
    try:
        return [row for row in json.loads(path.read_text(encoding="utf-8"))["variants"]
                if row["label"] in labels]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def run_folders(out: Path, groups: list[str], seeds: list[int]) -> list[Path]:
    """Every run the ablation plans, by folder: one per distinct group set and seed (the
    ladder's top and the full set are the same runs)."""
    first_label = {}
    for _, label, chosen in variants(groups):
        first_label.setdefault(tuple(chosen), label)
    return [out.parent / f"{out.stem}-{label}-s{seed}"
            for label in first_label.values() for seed in seeds]


def finished_run(folder: Path, trained: dict[tuple[str, ...], list[dict]]) -> bool:
    """Whether a planned run finished with a score: as this invocation saw it, else as its
    folder says (a resume interrupted before it revisited it)."""
    from kit.run_record import read_metrics

    for outcomes in trained.values():
        for outcome in outcomes:
            if outcome["run_dir"] == str(folder):
                return "error" not in outcome
    metrics = read_metrics(folder) or {}
    return metrics.get("finished") is True and metrics.get("score") is not None


def check_resumable(path: Path, summary: dict) -> None:
    """`--resume FILE`: a summary of `kit ablate` started with this command's settings (its
    runs are folders beside it, named after it)."""
    if not path.exists():  # ("not an ablation summary" before: there is none)
        raise ConfigError(f"--resume {path}: no such file; an interrupted kit ablate prints "
                          "the --resume command to run (its summary is runs/EXP/ablate-*.json)")
    if path.is_dir():
        raise ConfigError(f"--resume {path}: a folder, not an ablation summary (the file "
                          "runs/EXP/ablate-*.json in it)")
    if not path.name.startswith("ablate-") or path.suffix != ".json":
        raise ConfigError(f"--resume {path}: not an ablation summary (runs/EXP/ablate-*.json)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {path}: cannot read it ({exc})") from None
    check_summary_keys(path, saved)
    keys = ("experiment", "groups", "seeds", "overrides")
    differ = [f"{k} {saved.get(k)} then, {summary[k]} now" for k in keys
              if saved.get(k) != summary[k]]
    if differ:
        raise ConfigError(f"--resume {path} was started with other settings ("
                          f"{'; '.join(differ)}): repeat its own command with --resume")
    # the experiment file may have changed since: its kept runs would be another model's
    # (the experiment's seed trains nothing here: --seeds does; summaries written before
    # this recorded it)
    changed = differences({k: v for k, v in saved["config"].items() if k != "seed"},
                          summary["config"])
    if changed:
        raise ConfigError(f"--resume {path}: the experiment's config changed since the "
                          f"ablation started ({', '.join(changed[:5])}); its kept runs would "
                          "not compare with new ones: restore it, or start a new ablation")


# what every kit's ablation summary records ("overrides" came with --resume, then "config")
SUMMARY_KEYS = ("experiment", "groups", "seeds")


def check_summary_keys(path: Path, saved) -> None:
    """A summary a resume can check: a damaged file (a hand edit, another JSON) is named as
    such, not blamed on an older kit, whose summaries lack only the --resume keys."""
    what = "an ablation summary (the JSON object kit ablate writes)"
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume {path}: not {what}: it holds {json.dumps(saved)[:40]}; "
                          "give the file an interrupted kit ablate named, or start the "
                          "ablation again")
    missing = [key for key in SUMMARY_KEYS if key not in saved]
    if missing:
        raise ConfigError(f"--resume {path}: damaged or not {what}: it lacks {missing}; "
                          "give the file an interrupted kit ablate named, or start the "
                          "ablation again")
    if "overrides" not in saved and "config" not in saved:
        raise ConfigError(f"--resume {path}: written by a kit from before `kit ablate --resume` "
                          "(it records neither its overrides nor its config); start the "
                          "ablation again")
    if not isinstance(saved.get("config"), dict):
        said = "lacks" if "config" not in saved else "has a damaged"
        raise ConfigError(f"--resume {path}: it {said} `config` (what its runs train: edited "
                          "by hand, or written by a kit that did not record it), so its kept "
                          "runs cannot be checked against the experiment now; start the "
                          "ablation again")


def resume_command(exp: str, args: list[str], groups: str, seeds: str | None, file: Path,
                   quiet: bool = False) -> list[str]:
    """The command an interrupted `kit ablate` prints to continue it: the one typed (its
    overrides, groups, seeds and -q) with --resume FILE (which names the runs' folder, so
    --runs-dir is not needed)."""
    return ["kit", "ablate", exp, *args, "--groups", groups,
            *(["--seeds", seeds] if seeds is not None else []), *(["-q"] if quiet else []),
            "--resume", str(file)]


def recorded_seeds(path: Path) -> list[int] | None:
    """The seeds an ablation summary recorded, None when it cannot say (check_resumable
    names what is wrong with the file). A resume without --seeds trains these: taken from
    the file's `seed`, an edit of it refused the ablation's own command."""
    try:
        seeds = json.loads(path.read_text(encoding="utf-8")).get("seeds")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)
    return seeds if ok else None


def train_variant_seed(config: dict, files: RunFiles, label: str, resuming: bool,
                       progress: bool) -> dict:
    """One run's outcome: its seed, score, per-target scores and folder, "diverged" when it
    stopped early, or "error" when it failed (one run's failure, not the ablation's)."""
    from kit.train import recipe

    seed = config["seed"]
    try:
        if resuming:  # kept when finished, continued from last.pt, else trained from the start
            metrics = recipe.continue_run(config, files, None, 0, progress, group="ablation")
        else:
            metrics = recipe.train_one(config, files, progress=progress)
    except KitError as exc:  # TrainingDiverged (before any epoch scored) is one too
        return {"seed": seed, "error": f"{label} seed {seed}: {exc}", "run_dir": str(files.root)}
    if metrics.get("score") is None:  # a resumed run that diverged at once: no score
        return {"seed": seed, "run_dir": str(files.root),
                "error": f"{label} seed {seed}: diverged before any epoch scored "
                         f"({metrics.get('diverged')})"}
    outcome = {"seed": seed, "score": metrics["score"], "per_target": metrics["per_target"],
               "run_dir": str(files.root)}
    return outcome | ({"diverged": metrics["diverged"]} if metrics.get("diverged") else {})


def check_variants(base: dict, spec, groups: list[str]) -> None:
    """Every variant's feature set and model, before any training: a variant's own input count
    can make its `params` budget too small, and the experiment's own ops may read a column of a
    group left out."""
    from kit.features.sets import FeatureConfigError, build_feature_set
    from kit.models import ModelConfigError, model_values, solve_width

    for _, label, chosen in variants(groups):
        where = f"--groups: the variant {label!r} (groups {chosen})"
        try:
            feature_set = build_feature_set(spec, chosen, base["features"].get("ops"))
        except FeatureConfigError as exc:
            raise ConfigError(f"{where} has no valid feature set: {exc}") from None
        try:
            model_values(solve_width(base["model"], len(feature_set.outputs), spec.n_outputs))
        except ModelConfigError as exc:
            raise ConfigError(f"{where} with {len(feature_set.outputs)} features: {exc}") from None


def variant_row(kind: str, label: str, chosen: list[str], outcomes: list[dict]) -> dict:
    """A variant's means over the seeds whose runs finished (None when none did), the spread
    of its score across them (sample std, None below two) and each seed's own outcome."""
    done = [m for m in outcomes if "error" not in m]
    scores = [m["score"] for m in done]
    row = {"kind": kind, "label": label, "groups": chosen,
           "score": float(np.mean(scores)) if done else None,
           "score_std": float(np.std(scores, ddof=1)) if len(done) > 1 else None,
           "per_target": ({t: float(np.mean([m["per_target"][t] for m in done]))
                           for t in done[0]["per_target"]} if done else None),
           "runs": [m["run_dir"] for m in outcomes], "per_seed": outcomes}
    errors = [m["error"] for m in outcomes if "error" in m]
    diverged = [f"{label} seed {m['seed']}: {m['diverged']}" for m in done if "diverged" in m]
    return row | ({"errors": errors} if errors else {}) | (
        {"diverged": diverged} if diverged else {})


def write_summary(path: Path, summary: dict) -> None:
    from kit.json_safe import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, dumps(summary, indent=2))


def changes(summary: dict) -> list[dict | None]:
    """Per variant, what its group brings ({"score": .., target: .., "paired_seeds": [..]}),
    signed so that positive always helps: a ladder rung against the rung below (None for the
    first), a leave-one-out variant against the full set. Each figure is the mean of per-seed
    differences over the seeds both sides finished, so a failed run never compares one set of
    seeds with another; None where no seed finished on both sides."""
    rows, sign = summary["variants"], summary["sign"]
    full = next((r for r in rows if r["kind"] == "ladder" and
                 len(r["groups"]) == len(summary["groups"])), None)
    out, previous = [], None
    for r in rows:
        if r["kind"] == "ladder":
            better, worse = r, previous
            previous = r
        else:
            better, worse = full, r
        out.append(None if better is None or worse is None
                   else paired_change(by_seed(better), by_seed(worse), sign))
    return out


def by_seed(row: dict) -> dict[int, dict]:
    """A variant's finished runs' score and per-target scores, by seed."""
    return {m["seed"]: {"score": m["score"], **m["per_target"]}
            for m in row["per_seed"] if "error" not in m}


def paired_change(better: dict[int, dict], worse: dict[int, dict], sign: float) -> dict | None:
    paired = [seed for seed in better if seed in worse]
    if not paired:
        return None
    keys = better[paired[0]]
    return {k: float(np.mean([sign * (better[s][k] - worse[s][k]) for s in paired]))
            for k in keys} | {"paired_seeds": paired}


def figures(row: dict) -> dict | None:
    """A variant's score and per-target scores, by name (None: none of its runs finished)."""
    return None if row["score"] is None else {"score": row["score"], **row["per_target"]}


def format_ablation(summary: dict) -> str:
    rows, seeds = summary["variants"], summary["seeds"]
    targets = summary["targets"]
    # past SHOWN_OUTPUTS targets the score alone (a next-state spec's 32 made 65 columns); the
    # summary file keeps each target's figures
    keys = ["score", *(targets if len(targets) <= SHOWN_OUTPUTS else [])]
    width = max(12, *(len(r["label"]) for r in rows))
    # columns as wide as their names (a target of 8 characters or more ran into its neighbour)
    value_width = {k: max(9, len(k) + 1) for k in keys}
    change_width = {k: max(14, len(f"change {k}") + 1) for k in keys}
    lines = [f"ablation of {summary['experiment']} over seeds {seeds} (means; sd: the score's "
             "standard deviation across seeds)",
             f"{'variant':<{width}}{'score':>9}{'sd':>8}"
             + "".join(f"{k:>{value_width[k]}}" for k in keys[1:])
             + "   " + "".join(f"{'change ' + k:>{change_width[k]}}" for k in keys),
             "(change: ladder vs the rung below; -g: what g brings to the full set; "
             "positive = better; the mean of per-seed differences)"]
    if len(keys) == 1 and targets:
        lines.append(f"(the score only: the {len(targets)} targets' figures are in "
                     f"{summary['file']})")
    for r, change in zip(rows, changes(summary), strict=True):
        values = figures(r)
        spread = "" if r.get("score_std") is None else f"{r['score_std']:.4f}"
        cells = (f"{values['score']:>9.4f}{spread:>8}"
                 + "".join(f"{values[k]:>{value_width[k]}.4f}" for k in keys[1:]) if values
                 else f"{'failed':>9}" + " " * (8 + sum(value_width[k] for k in keys[1:])))
        changed = "" if change is None else "".join(f"{change[k]:>+{change_width[k]}.4f}"
                                                    for k in keys)
        lines.append(f"{r['label']:<{width}}" + cells + "   " + changed + notes(r, change, seeds))
    errors = [e for r in rows for e in r.get("errors", [])]
    lines += [f"failed: {e}" for e in dict.fromkeys(errors)]  # a shared rung's once
    diverged = [d for r in rows for d in r.get("diverged", [])]
    lines += [f"diverged: {d} (its best epoch before that counts)"
              for d in dict.fromkeys(diverged)]
    lines.append(f"wrote {summary['file']}")
    return "\n".join(lines)


def notes(row: dict, change: dict | None, seeds: list[int]) -> str:
    """What a row's figures stand on when not every run finished cleanly."""
    said = []
    if row.get("errors"):
        said.append(f"{len(row['errors'])} of {len(row['runs'])} runs failed")
    if row.get("diverged"):
        said.append(f"{len(row['diverged'])} of {len(row['runs'])} runs diverged")
    if change is not None and len(change["paired_seeds"]) < len(seeds):
        said.append(f"change over seeds {change['paired_seeds']} only")
    return f"   ({'; '.join(said)})" if said else ""
