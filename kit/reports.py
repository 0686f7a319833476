"""`kit runs` (a table of the run directories) and `kit report RUN` (plots and a summary).

Both only read what kit/train/runs.py writes (config.toml, spec.json, history.jsonl,
metrics.json, val_preds.npy, val_rows.npy); checkpoints are not loaded (but best.pt for the spec
of a run from before spec.json, in `kit report`). A run that was killed before
metrics.json was written is summarised from its history. When the run's valid file has an
oracle beside it (<valid stem>_oracle.parquet), the oracle is scored on the very rows the run
was scored on, so `oracle_fraction` compares like with like.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import re
import warnings
from pathlib import Path

import numpy as np

from kit.competition import CompetitionSpec, load_spec
from kit.config import validation_file
from kit.data.io import parquet_schema, read_frame
from kit.errors import KitError
from kit.metrics import (
    SHOWN_OUTPUTS,
    MetricReport,
    evaluate,
    metric_value,
    oracle_fraction,
    outputs_summary,
    scored_truth,
)
from kit.run_record import (
    DATA_DIGESTS,
    TRAINED_SPEC,
    changed_data_message,
    data_changes,
    data_file_of,
    fold_run,
    load_array,
    pending_best_epoch,
    read_config,
    read_metrics,
    read_trained_spec,
    recorded_digests,
    toml_given_for_a_run,
)

RUN_FILES = ("config.toml", "history.jsonl", "metrics.json")
BASE_COLUMNS = ("experiment", "run_id", "score")
TAIL_COLUMNS = ("validated", "oracle_fraction", "best_epoch", "epochs", "wall_s", "params", "seed",
                "finished")
MAX_SCATTER_PANELS = 8
HEXBIN_ABOVE = 3000  # points; fewer are drawn as a scatter


# ---------------------------------------------------------------------------------------------
# reading one run directory


def read_history(path: Path) -> list[dict]:
    """The epochs of history.jsonl; a torn last line (a kill mid-write) or a line that is not an
    epoch record (hand-edited) is skipped, and fields of the wrong type read as missing."""
    return [_history_record(record) for _, record in epoch_lines(path)]


def epoch_lines(path: Path):
    """(line as written, its record) for each line of history.jsonl that is an epoch record:
    a torn or hand-edited line is skipped, and bytes that are not UTF-8 spoil their line only."""
    if not path.is_file():  # a folder in its place reads as no history
        return
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _count(record.get("epoch")) is not None:
            yield line, record


def pending_best_text(row: dict) -> str:
    """A run killed between a new best's history line and last.pt: best.pt (what kit pack
    packs) holds the earlier best the listing shows, not the history's last flagged one."""
    return (f"epoch {row['pending_best']}'s new best was not yet in best.pt when the run "
            f"stopped; best.pt, shown here, holds epoch {_fmt(row.get('best_epoch'))}; "
            "--resume completes it")


def _history_record(record: dict) -> dict:
    return record | {
        "val_score": _finite(record.get("val_score")),
        "val_per_target": _per_target(record.get("val_per_target")),
        "train_loss": _finite(record.get("train_loss")),
        "lr": _finite(record.get("lr")),
        "seconds": _finite(record.get("seconds")),
    }


def _finite(value) -> float | None:
    """A finite number, or None for anything else (missing, NaN, text in a damaged file)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _count(value) -> int | None:
    """A whole number >= 0, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _per_target(value) -> dict[str, float | None]:
    if not isinstance(value, dict):
        return {}
    return {str(k): _finite(v) for k, v in value.items()}


def _spec(run_dir: Path, config: dict, cache: dict) -> CompetitionSpec:
    """The run's spec: its spec.json (what it trained with), else the spec its config names,
    each read once per listing (runs of one experiment share them). The spec file may have
    moved or changed since, or be named relative to another folder."""
    path = Path(run_dir) / TRAINED_SPEC
    with contextlib.suppress(OSError):
        key = ("trained", path.read_bytes())
        if key not in cache:
            try:
                cache[key] = read_trained_spec(run_dir)
            except KitError as exc:
                cache[key] = exc
        if cache[key] is not None and not isinstance(cache[key], KitError):
            return cache[key]
    key = ("spec", str(config.get("spec")))
    if key not in cache:
        try:
            cache[key] = load_spec(config.get("spec"))
        except KitError as exc:
            cache[key] = exc
    if isinstance(cache[key], KitError):
        raise cache[key]
    return cache[key]


def _spec_or_none(run_dir: Path, config: dict, cache: dict) -> CompetitionSpec | None:
    """_spec, None where no spec is readable (the row then lacks what only the spec says)."""
    try:
        return _spec(run_dir, config, cache)
    except KitError:
        return None


def _seed(config: dict, run_id: str) -> int | None:
    if _count(config.get("seed")) is not None:
        return config["seed"]
    match = re.search(r"-s(\d+)(?:-oof)?$", run_id)
    return int(match[1]) if match else None


def _config_dir(run_dir: Path) -> Path:
    """The folder whose config.toml describes a run: its own; an out-of-fold group has none,
    so its first fold run's (the folds share config, spec and data files but data.fold)."""
    if (run_dir / "config.toml").exists():
        return run_dir
    metrics = read_metrics(run_dir) or {}
    runs = metrics.get("runs") if metrics.get("kind") == "oof" else None
    first = runs[0] if isinstance(runs, list) and runs else None
    return fold_run(run_dir, first) if isinstance(first, str) else run_dir


def _experiment(run_dir: Path, config: dict) -> str:
    """The experiment that trained a run (a --run-dir may put it under another folder name)."""
    name = config.get("name")
    return name if isinstance(name, str) and name else run_dir.parent.name


def _config(source: Path, cache: dict) -> tuple[dict, str | None]:
    """A config.toml read once per listing (`--experiment` reads it to filter, the row
    again): (config, None), or ({}, the error) for a damaged one."""
    key = ("config", str(source))
    if key not in cache:
        try:
            cache[key] = read_config(source), None
        except KitError as exc:
            cache[key] = {}, str(exc)
    return cache[key]


def _trained_by(run_dir: Path, cache: dict) -> str:
    config, error = _config(_config_dir(run_dir), cache)
    return run_dir.parent.name if error else _experiment(run_dir, config)


def _validation_fields(run_dir: Path, source: Path, config: dict, metrics: dict | None,
                       spec: CompetitionSpec | None) -> dict:
    """What a run's score is of: validated (the label), validated_sha256, validated_file,
    metric_settings and validation_set (their id); in_sample (how) for a run validated on
    the rows it trained on, which a kit before r311 trained (r317: listed as any other)."""
    from kit.ensemble import validated_on_training_rows

    label = _validation_set(config, metrics, spec.seq_len if spec else None)
    in_sample = (validated_on_training_rows(source, config, metrics or {})
                 if source == run_dir else None)  # (an -oof group's fold runs are held out)
    fields = {
        "validated": f"{label} (its training rows)" if in_sample and label else label,
        # an out-of-fold group's digests are its folds' (of the train file they split)
        "validated_sha256": _validated_digest(
            config, metrics if source == run_dir else read_metrics(source), source),
        "validated_file": _validated_file(config, metrics, source),
        # the metric and its clip the score is under: a spec edited to another clip keeps its
        # name and metric name, and scored other numbers (r313)
        "metric_settings": metric_settings(spec) if spec else None,
    }
    return fields | {"validation_set": validation_set_id(fields, spec)} | (
        {"in_sample": in_sample} if in_sample else {})


def validation_set_of(run_dir: Path, cache: dict | None = None) -> dict:
    """A run's `validated` label and `validation_set` id (None where its config or spec does
    not read), without the listing's oracle: kit sweep checks the trials it ranks (r313)."""
    cache = {} if cache is None else cache
    run_dir = Path(run_dir)
    source = _config_dir(run_dir)
    config, _ = _config(source, cache)
    metrics = read_metrics(run_dir)
    fields = _validation_fields(run_dir, source, config, metrics,
                                _spec_or_none(source, config, cache))
    return {key: fields[key] for key in ("validated", "validation_set")}


def _summary(run_dir: Path, cache: dict) -> dict:
    """One run's row: metrics.json when present, else what its history says. A damaged
    config.toml marks its row (config_error) instead of stopping the listing."""
    source = _config_dir(run_dir)
    config, config_error = _config(source, cache)
    history = read_history(run_dir / "history.jsonl")
    metrics = read_metrics(run_dir)
    # (an out-of-fold group has no spec.json: its first fold run's says)
    spec = _spec_or_none(source, config, cache)
    # the metric and its direction (weighted Pearson: up; mae/rmse: down)
    metric, higher_is_better = (spec.metric.name, spec.metric.higher_is_better) if spec else (
        None, None)
    row = {
        "experiment": _experiment(run_dir, config),
        "run_id": run_dir.name,
        "path": str(run_dir),
        "params": None,
        "best_epoch": None,
        "score": None,
        "per_target": {},
        "oracle_score": None,
        "oracle_fraction": None,
        "wall_s": None,
        "epochs": len(history),
        "finished": False,
        "seed": _seed(config, run_dir.name),
        "metric": metric,
        "higher_is_better": higher_is_better,
        **_validation_fields(run_dir, source, config, metrics, spec),
    }
    if config_error:
        row["config_error"] = config_error
    if metrics is not None:
        best_epoch = metrics.get("best_epoch")  # an epoch number, or "swa"
        epochs = _count(metrics.get("epochs"))
        row.update(
            params=_count(metrics.get("params")),
            best_epoch=best_epoch if isinstance(best_epoch, int | str) else None,
            score=_finite(metrics.get("score")),
            per_target=_per_target(metrics.get("per_target")),
            wall_s=_finite(metrics.get("wall_s")),
            epochs=len(history) if epochs is None else epochs,
            finished=metrics.get("finished") is True,
        )
        # how a finished run stopped early, if it did (a hand-edited value reads as missing)
        if isinstance(metrics.get("diverged"), str) and metrics["diverged"]:
            row["diverged"] = metrics["diverged"]
        if metrics.get("pruned") is True:
            row["pruned"] = True
    elif history:
        scored = [r for r in history if r["val_score"] is not None]
        pending = pending_best_epoch(run_dir)
        if pending is not None:  # killed before best.pt took it: best.pt holds an earlier one
            scored = [r for r in scored if r["epoch"] < pending]
            row["pending_best"] = pending
        if scored:
            # the trainer flags each new best (it knows the metric's direction)
            flagged = [r for r in scored if r.get("best")]
            sign = -1.0 if row["higher_is_better"] is False else 1.0
            best = flagged[-1] if flagged else max(scored, key=lambda r: sign * r["val_score"])
            row.update(
                best_epoch=best["epoch"],
                score=best["val_score"],
                per_target=best["val_per_target"],
            )
        row["wall_s"] = float(sum(r["seconds"] or 0.0 for r in history))
    if metrics is not None and metrics.get("kind") == "oof":
        row["epochs"] = None  # a group of fold runs: their epochs are theirs
        if missing := _missing_fold_runs(run_dir):  # select refuses it (r317: listed as whole)
            row["missing_fold_runs"] = missing
    # a killed run has no metrics.json: the digests its start recorded say the same
    if changed := _data_changes(run_dir, metrics, config):
        row["data_changed"] = changed  # its score is of the old file: no oracle figures
    elif gone := _validation_file_gone(run_dir, metrics, config):
        row["valid_gone"] = gone  # (it was listed without a word: select and report need it)
    oracle = None if row.get("data_changed") else _oracle_report(run_dir, config, cache)
    if oracle is not None:
        row["oracle_score"] = _finite(oracle.score)
        if row["score"] is not None and not row.get("data_changed"):
            row["oracle_fraction"] = _finite(
                oracle_fraction(row["score"], oracle.score, row["higher_is_better"]))
    return row


# ---------------------------------------------------------------------------------------------
# the valid file, its truth and its oracle


def oracle_path(valid: Path) -> Path:
    """Where the oracle of a data file lives: valid.parquet -> valid_oracle.parquet."""
    return valid.with_name(f"{valid.stem}_oracle.parquet")


class ValidFile:
    """The columns of a valid parquet that its truth needs, plus its oracle (read lazily)."""

    def __init__(self, path: Path, spec: CompetitionSpec):
        self.path, self.spec = path, spec
        keys = [spec.id_col, spec.step_col]
        frame = read_frame(path, keys)  # raises DataError for a missing or corrupt file
        schema = parquet_schema(path)
        labelled = not spec.next_state and all(t in schema for t in spec.targets)
        values = list(spec.features) if spec.next_state else list(spec.targets) * labelled
        if values:  # only the columns the truth needs
            frame = frame.hstack(read_frame(path, values))
        self.n = frame.height
        self.ids = frame[spec.id_col].to_numpy()
        self.features = frame.select(spec.features).to_numpy() if spec.next_state else None
        self.targets = frame.select(spec.targets).to_numpy() if labelled else None
        self._keys = frame.select([spec.id_col, spec.step_col])
        self._oracle: np.ndarray | None = None

    def truth(self, rows: np.ndarray) -> np.ndarray:
        """The truth (len(rows), K) of the given scored rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise KitError(
                f"val_rows.npy points past the end of {self.path} ({self.n} rows): "
                "the valid file changed since the run"
            )
        need = np.zeros(self.n, dtype=bool)
        need[rows] = True
        sorted_truth = scored_truth(self.ids, need, self.features, self.targets, self.spec)
        out = np.empty_like(sorted_truth)
        out[np.argsort(rows, kind="stable")] = sorted_truth
        return out

    def oracle(self) -> np.ndarray | None:
        """Oracle predictions aligned with the valid file's rows, or None without an oracle."""
        path = oracle_path(self.path)
        if self._oracle is None and path.exists():
            keys, names = [self.spec.id_col, self.spec.step_col], list(self.spec.outputs)
            table = read_frame(path, keys + names).rename({n: f"__oracle_{n}" for n in names})
            joined = self._keys.join(table, on=keys, how="left", maintain_order="left")
            self._oracle = joined.select([f"__oracle_{n}" for n in names]).to_numpy()
        return self._oracle


def _validated_on(run_dir: Path, config: dict) -> str | None:
    """The path of the file the run validated on (the train file for fold and split runs)."""
    return validation_file(config, read_metrics(run_dir))


def _valid_file(run_dir: Path, config: dict, cache: dict) -> ValidFile | None:
    """The file the run validated on, found as data_file_of finds it (in the run's own
    checkout first: another checkout's file of the same name holds other rows)."""
    valid = _validated_on(run_dir, config)
    path = data_file_of(run_dir, valid) if valid else None
    if path is None:
        return None
    spec = _spec(run_dir, config, cache)
    key = (str(path.resolve()), spec.source, spec.name)
    if key not in cache:
        cache[key] = ValidFile(path, spec)
    return cache[key]


def _data_changes(run_dir: Path, metrics: dict | None, config: dict) -> list[str]:
    """data_changes of a run (its config and metrics as read already); of an out-of-fold
    group, those of its fold runs."""
    if (metrics or {}).get("kind") != "oof":
        return data_changes(run_dir, config=config, metrics=metrics)
    runs = metrics.get("runs") if isinstance(metrics.get("runs"), list) else []
    changed = [path for run in runs if isinstance(run, str)
               for path in data_changes(fold_run(run_dir, run))]
    return list(dict.fromkeys(changed))


def _missing_fold_runs(group: Path) -> list[str]:
    from kit.ensemble import missing_fold_runs

    return [str(run) for run in missing_fold_runs(group)]


def _validation_file_gone(run_dir: Path, metrics: dict | None, config: dict) -> str | None:
    """The file a run validated on, as its config names it, when it is not found from here
    (an out-of-fold group's fold runs each name their own: not judged here)."""
    if (metrics or {}).get("kind") == "oof":
        return None
    named = validation_file(config, metrics)
    if not isinstance(named, str) or data_file_of(run_dir, named) is not None:
        return None
    return named


def _run_notes(r: dict) -> list[str]:
    """A listed run's notes of what kit ensemble select refuses or leaves out (r317)."""
    from kit.ensemble import RETRAIN_HELD_OUT, missing_fold_runs_message

    notes = []
    if r.get("in_sample"):
        notes.append(f"note: {r['path']}: validated on the rows it trained on ({r['in_sample']}; "
                     "a kit before r311 trained it): its score is in-sample, no measure of "
                     "unseen rows, and kit ensemble select leaves it out; " + RETRAIN_HELD_OUT)
    if r.get("valid_gone"):
        notes.append(f"note: {r['path']}: the file it validated on, {r['valid_gone']}, is not "
                     "found from here (moved or deleted): no oracle figures, and kit ensemble "
                     "select and kit report, which read its rows, need it back (a relative "
                     "path is read from the project folder)")
    if r.get("missing_fold_runs"):
        missing = [Path(run) for run in r["missing_fold_runs"]]
        notes.append(f"note: {missing_fold_runs_message(Path(r['path']), missing)} (kit "
                     "ensemble select refuses it, and leaves it out of its folder)")
    return notes


def _oracle_report(run_dir: Path, config: dict, cache: dict) -> MetricReport | None:
    """The oracle's metric on the run's scored rows; None when there is nothing to compare."""
    rows_path = run_dir / "val_rows.npy"
    if not rows_path.exists():
        return None
    try:
        valid = _valid_file(run_dir, config, cache)
        if valid is None or not oracle_path(valid.path).exists():
            return None
        rows = load_array(rows_path, "rows")
        key = (
            str(valid.path.resolve()),
            valid.spec.source,  # two specs of one name may score differently
            valid.spec.name,
            hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest(),
        )
        if key not in cache:
            truth = valid.truth(rows)  # first: it refuses rows past the file's end
            pred = valid.oracle()[rows]
            if np.isnan(pred).any():
                raise KitError(f"{oracle_path(valid.path)}: no oracle value for some scored rows")
            cache[key] = evaluate(valid.spec, truth, pred)
        return cache[key]
    except KitError:
        return None  # a listing never fails on one run's oracle; `kit report` says more


# ---------------------------------------------------------------------------------------------
# kit runs


def _is_run(path: Path) -> bool:
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and any((path / name).exists() for name in RUN_FILES)
    )


def list_runs(runs_dir: Path = Path("runs"), *, experiment: str | None = None) -> list[dict]:
    """One JSON-safe dict per run directory under runs_dir/<folder>/<run-id>/; experiment: only
    the runs that experiment trained (their config's name), in whichever folder.

    Keys: experiment, run_id, path, params, best_epoch, score, per_target, oracle_score,
    oracle_fraction, wall_s, epochs, finished, seed (None where unknown).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    # an experiment's folder holds run folders; runs/ensembles (selection files) holds none
    # (runs/ensembles holds ensemble files and their report folders, no runs)
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name != "ensembles")
    # a run trained with --run-dir RUNS/NAME sits one level up, where experiments' folders are
    runs = [run for folder in folders
            for run in ([folder] if _is_run(folder) else sorted(folder.iterdir()))
            if _is_run(run)]
    cache: dict = {}
    if experiment is not None:  # the experiment that trained a run, wherever --run-dir put it
        trained_by = {run: _trained_by(run, cache) for run in runs}
        if experiment not in trained_by.values() and not (runs_dir / experiment).is_dir():
            raise KitError(
                f"no runs of experiment {experiment!r} under {runs_dir}; experiments "
                f"with runs: {sorted(set(trained_by.values()))}"
            )
        runs = [run for run in runs if trained_by[run] == experiment]
    rows = [_summary(run, cache) for run in runs]
    # --json says what the table says too (r313: valid.parquet for two folders' files the
    # table told apart); `validated` stays the run's own label, whatever else is listed
    for row, shown in zip(rows, label_sets(rows), strict=True):
        row["validated_shown"] = shown["validated"]
    return rows


def label_sets(runs: list[dict]) -> list[dict]:
    """The runs with the `validated` labels the table shows: the folder where two listed files
    share a name, the clip where listed runs of one metric were scored under different
    clips (r313)."""
    return _metric_told_apart(_told_apart(runs))


# ---------------------------------------------------------------------------------------------
# which scores compare: the rows and the metric settings (r313)


# the spec's settings that decide which rows are scored and against what truth, besides the
# metric (which metric_settings gives)
SCORING_SPEC_KEYS = ("id_col", "step_col", "need_col", "targets", "warmup", "tail", "protocol")


def metric_settings(spec: CompetitionSpec) -> dict:
    """The metric a spec scores with, as JSON: name and clip (None: predictions unclipped).
    Two runs compare only when these are equal, as kit ensemble select compares spec.metric."""
    clip = spec.metric.clip
    return {"name": spec.metric.name, "clip": [float(c) for c in clip] if clip else None}


def clip_text(settings: dict) -> str:
    """`clip ±6`, `clip [-1, 2]` or `no clip`: a metric's clip in a label or a note."""
    clip = settings.get("clip")
    if not clip:
        return "no clip"
    low, high = clip
    return f"clip ±{high:g}" if low == -high else f"clip [{low:g}, {high:g}]"


def validation_set_id(row: dict, spec: CompetitionSpec | None) -> str | None:
    """A short stable id of what a run's score is of: its rows (the label's selection, the
    file by the sha256 the run recorded, else where the file is), the spec's scoring rules and
    the metric settings. Equal ids: the scores compare; None without a label (no config)."""
    if not row.get("validated"):
        return None
    scoring = ({key: spec.to_dict()[key] for key in SCORING_SPEC_KEYS} if spec else None)
    key = {"rows": row["validated"],
           "file": row.get("validated_sha256") or row.get("validated_file"),
           "scoring": scoring, "metric": row.get("metric_settings")}
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _metric_told_apart(runs: list[dict]) -> list[dict]:
    """Runs of one metric name scored under different clips labelled with their clip: the
    table sorted 0.0111 at clip 0.01 beside 0.0313 at clip 6 as one set (r313). Labels that
    say it already are kept (format_runs of list_runs' rows)."""
    clips = _clips_by_metric(runs)
    out = []
    for r in runs:
        ms = r.get("metric_settings")
        if isinstance(ms, dict) and len(clips[ms["name"]]) > 1 and r.get("validated"):
            suffix = f", {clip_text(ms)}"
            if not r["validated"].endswith(suffix):
                r = {**r, "validated": r["validated"] + suffix}
        out.append(r)
    return out


def _target_names(runs: list[dict]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [k for k in run.get("per_target") or {} if k not in names]
    return names


def _validation_set(config: dict, metrics: dict | None, spec_len: int | None = None
                    ) -> str | None:
    """The rows a run's score is on, in a few words: the valid file's name, a held-out part of
    the train file, one fold of it, or every fold (an out-of-fold group); `N seqs of` in front
    when train.max_valid_seqs kept only the first N."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    train = Path(str(data.get("train", ""))).name or "train"
    cut = ""
    truncated = (metrics or {}).get("valid_truncated")
    if truncated is None:  # no metrics.json yet (still training, or killed): data.seq_len
        # cuts where the spec's sequences are longer (lengths that vary: it may); such a run
        # was labelled as one without the cut, and the mixed-rows note was false (r264)
        seq_len = data.get("seq_len")
        truncated = isinstance(seq_len, int) and seq_len > 0 and not (
            spec_len is not None and spec_len <= seq_len)
    if truncated:  # data.seq_len cut them: not kit score's rows
        cut = f"{'last' if data.get('truncate') == 'tail' else 'first'} " \
              f"{data.get('seq_len')} steps of "
    if metrics is not None and metrics.get("kind") == "oof":
        return f"oof {metrics.get('folds', '?')} folds of {cut}{train}"
    split = data.get("split", "file")
    by = ""  # a group split's rows follow its columns too
    if split == "group":
        by = f" by {data.get('group')}" + (f", stratified by {data['stratify']}"
                                           if data.get("stratify") else "")
    fold = data.get("fold")
    if isinstance(fold, list) and len(fold) == 2:  # the run's seed places the folds
        return f"fold {fold[1] + 1}/{fold[0]}{by} (seed {config.get('seed')}) of {cut}{train}"
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    limit, kept = train_cfg.get("max_valid_seqs"), (metrics or {}).get("valid_seqs")
    limited = (metrics or {}).get("valid_limited")  # whether the limit cut the file
    if limited is None:  # a run from before kit recorded it: the limit bit if it kept as many
        limited = isinstance(limit, int) and limit > 0 and not (
            isinstance(kept, int) and kept < limit)
    first = (f"{limit} seqs of " if limited and isinstance(limit, int) else "") + cut
    if split in ("random", "group"):  # data.split_seed places the held-out part (0: default)
        seeded = f" (split_seed {data['split_seed']})" if data.get("split_seed") else ""
        return f"{first}{split} {data.get('valid_fraction', 0.15):g}{by}{seeded} of {train}"
    valid = data.get("valid")
    return f"{first}{Path(str(valid)).name}" if valid else None


def _validated_file(config: dict, metrics: dict | None, run_dir: Path) -> str | None:
    """Where the file a run validated on is (two folders' valid.parquet are two files)."""
    valid = validation_file(config, metrics) if isinstance(config.get("data"), dict) else None
    found = data_file_of(run_dir, valid) if isinstance(valid, str) else None
    return str(found.resolve()) if found else None


def _validated_digest(config: dict, metrics: dict | None, run_dir: Path) -> str | None:
    """The sha256 the run recorded of the file it validated on (at its start too, for a run
    killed before metrics.json): two files of one name (other folders, other checkouts) are
    told apart by it."""
    digests = (metrics or {}).get(DATA_DIGESTS)  # else (killed) those its start recorded
    digests = digests if isinstance(digests, dict) else recorded_digests(run_dir)
    valid = validation_file(config, metrics)
    return digests.get(valid) if isinstance(digests, dict) and valid else None


def _value(run: dict, column: str):
    if column in run and column != "per_target":
        return run[column]
    return (run.get("per_target") or {}).get(column)


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "finished":
        return "yes" if value else "no"
    if column == "oracle_fraction":
        return f"{value:.1%}"
    if column == "wall_s":
        return _duration(value)
    if column == "params":
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _sort_key(value):
    if isinstance(value, bool):
        return (0, float(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value))  # e.g. best_epoch "swa" sorts after the numbers


def sort_runs(runs: list[dict], sort: str = "score", descending: bool = True) -> list[dict]:
    """`list_runs` output sorted by any of its columns (missing values last); the table and
    --json alike."""
    if not runs:
        return runs
    columns = [*BASE_COLUMNS, *_target_names(runs), *TAIL_COLUMNS]
    if sort not in columns:
        raise KitError(f"cannot sort by {sort!r}; sort by one of: {', '.join(columns)}")
    present = [r for r in runs if _value(r, sort) is not None]
    missing = [r for r in runs if _value(r, sort) is None]
    if sort != "score":  # those without the column by score (another competition's table is
        missing = sort_runs(missing, "score", descending)  # ordered so, and --json alike)
    # (oracle_fraction is higher-is-better for every metric: oracle / score for an error)
    scores = {"score", *_target_names(runs)}

    def key(run):  # "descending" on a score means best first, whichever way the metric points
        value = _value(run, sort)
        flip = sort in scores and run.get("higher_is_better") is False
        return _sort_key(-value if flip else value)

    return sorted(present, key=key, reverse=descending) + missing


def _told_apart(runs: list[dict]) -> list[dict]:
    """Runs whose validation files share a name but not a folder (data/synth/valid.parquet and
    data/synth-rnn-challenge/valid.parquet) labelled with the folder too."""
    files: dict[str, set] = {}  # by file name: "first 400 steps of valid.parquet" as well
    for r in runs:
        if r.get("validated") and r.get("validated_file"):
            files.setdefault(Path(r["validated_file"]).name, set()).add(r["validated_file"])
    out = []
    for r in runs:  # (a run whose file is gone keeps its plain label)
        file = Path(r["validated_file"]) if r.get("validated_file") else None
        told = f"{file.parent.name}/{file.name}" if file is not None else ""
        if (file is not None and r.get("validated") and len(files.get(file.name, ())) > 1
                and told not in r["validated"]):  # (list_runs labelled it already)
            r = {**r, "validated": r["validated"].replace(file.name, told)}
        out.append(r)
    return out


def _table(runs: list[dict], sort: str, descending: bool) -> list[str]:
    targets = _target_names(runs)
    # another table's output column (--sort t0 beside the rnn-challenge's): by score here
    ordered = sort_runs(runs, sort if sort in [*BASE_COLUMNS, *targets, *TAIL_COLUMNS]
                        else "score", descending)
    if len(targets) > SHOWN_OUTPUTS:  # one `outputs` column, their summary as kit score prints
        # it, and the output sorted by (a next-state spec's 32 made rows of 400 characters);
        # tables are split by output names first, so two such competitions stay apart
        targets = [*([sort] if sort in targets else []), "outputs"]
    columns = [*BASE_COLUMNS, *targets, *TAIL_COLUMNS]
    body = [[_cell(c, outputs_summary(r.get("per_target") or {}) if c == "outputs"
                   else _value(r, c)) for c in columns] for r in ordered]
    widths = [max(len(c), *(len(row[i]) for row in body)) for i, c in enumerate(columns)]
    left = {"experiment", "run_id", "finished"}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if c in left else cell.rjust(w)
            for c, cell, w in zip(columns, cells, widths, strict=True)
        ).rstrip()

    return [line(columns), line(["-" * w for w in widths]), *map(line, body)]


def format_runs(runs: list[dict], sort: str = "score", descending: bool = True) -> str:
    """An aligned table of `list_runs` output, sorted by any of its columns (missing last);
    one table per set of outputs (runs of two competitions: one padded every row with the
    other's 32 empty columns)."""
    if not runs:
        return "no runs"
    sort_runs(runs, sort, descending)  # a column none of them has: named, as before
    runs = label_sets(runs)
    by_outputs: dict[tuple, list[dict]] = {}
    for r in runs:
        by_outputs.setdefault(tuple(_target_names([r])), []).append(r)
    if len(by_outputs) > 1 and () in by_outputs:  # runs not scored yet: with their
        for r in by_outputs.pop(()):  # experiment's scored runs (else the first table)
            home = next((g for g in by_outputs.values()
                         if any(o["experiment"] == r["experiment"] for o in g)),
                        next(iter(by_outputs.values())))
            home.append(r)
    tables = [_table(group, sort, descending) for group in by_outputs.values()]
    notes = [f"note: {r['path']}: {r['config_error']}" for r in runs if r.get("config_error")]
    notes += [f"note: {r['path']}: training diverged ({r['diverged']}); "
              + ("its score is the best epoch before that" if r.get("score") is not None
                 else "no epoch scored before that")
              for r in runs if isinstance(r.get("diverged"), str)]
    notes += [f"note: {changed_data_message(r['path'], r['data_changed'])}"
              for r in runs if r.get("data_changed")]
    notes += [note for r in runs for note in _run_notes(r)]
    notes += [f"note: {r['path']}: {pending_best_text(r)}" for r in runs
              if r.get("pending_best") is not None]
    folders: dict[tuple, list[str]] = {}  # rows of one name (a copy, or --run-dir a/best and
    for r in runs:  # b/best): alike in the table, told apart by their folders here
        if r.get("path"):  # (rows made by hand may lack it)
            folders.setdefault((r.get("experiment"), r.get("run_id")), []).append(r["path"])
    notes += [f"note: {len(paths)} runs of {exp} are named {run_id}: "
              f"{', '.join(sorted(paths))}" for (exp, run_id), paths in folders.items()
              if len(paths) > 1]
    digests: dict[str, set] = {}  # label -> the sha256 its runs recorded (older runs: none)
    for r in runs:
        if r.get("validated"):
            digests.setdefault(r["validated"], set()).add(r.get("validated_sha256"))
    metrics = sorted({r["metric"] for r in runs if r.get("metric")})
    if len(metrics) > 1:  # one column, one sort: of numbers that do not compare
        notes.append(f"note: these runs are scored with {len(metrics)} metrics "
                     f"({', '.join(metrics)}): compare scores of one metric (kit runs -e EXP)")
    files = {label: len(found - {None}) or 1 for label, found in digests.items()}
    clips = _clips_that_differ(runs)
    if sum(files.values()) > 1:  # a score on other rows is no comparison (folds included)
        alike = sorted(label for label, n in files.items() if n > 1)
        notes.append(f"note: these runs are scored on {sum(files.values())} different sets of rows "
                     + ("or metric settings " if clips else "")
                     + "(column validated): compare scores within one set" + (
                         f"; {', '.join(alike)} holds other rows in some runs (the file's "
                         "sha256 differs)" if alike else "") + clips)
    return "\n".join([*(line for i, table in enumerate(tables)
                        for line in ([""] if i else []) + table), *notes])


def _clips_by_metric(runs: list[dict]) -> dict[str, list[str]]:
    """{metric name: the clips (clip_text) the listed runs of it were scored under}."""
    clips: dict[str, list[str]] = {}
    for r in runs:
        ms = r.get("metric_settings")
        if isinstance(ms, dict) and clip_text(ms) not in clips.get(ms["name"], []):
            clips.setdefault(ms["name"], []).append(clip_text(ms))
    return clips


def _clips_that_differ(runs: list[dict]) -> str:
    """'; weighted_pearson scores with clip ±6 in some runs, clip ±0.01 in others (a spec
    edited: the metric's numbers differ)', or "" when each metric has one clip (r313)."""
    differ = [f"{name} scores with {' in some runs, '.join(sorted(shown))} in others"
              for name, shown in _clips_by_metric(runs).items() if len(shown) > 1]
    return (f"; {'; '.join(differ)} (a spec edited between runs: scores under another clip "
            "are other numbers)") if differ else ""


# ---------------------------------------------------------------------------------------------
# kit report


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no display, no global backend state

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _best_marker(best_epoch, score: float | None) -> tuple[str, float, str] | None:
    """How curves.png marks the model in best.pt: ("epoch", N, label), a vertical line at its
    epoch, or ("score", S, label), a horizontal line at the score of the weight average (SWA
    won: no epoch of the curve holds that model)."""
    if best_epoch == "swa":
        return None if score is None else ("score", score, f"best: SWA average, val {score:.4f}")
    if isinstance(best_epoch, int) and not isinstance(best_epoch, bool):
        return "epoch", best_epoch, f"best epoch {best_epoch}"
    return None


def _plot_curves(history: list[dict], path: Path, title: str, best_epoch,
                 score: float | None) -> None:
    epochs = [r["epoch"] for r in history]
    best = _best_marker(best_epoch, score)
    fig = _figure(15, 4.2)
    fig.suptitle(title)
    ax_loss, ax_target, ax_lr = fig.subplots(1, 3)

    def series(key: str) -> list[float]:  # a missing value is a gap in the line
        return [np.nan if r[key] is None else r[key] for r in history]

    ax_loss.plot(epochs, series("train_loss"), "o-", color="tab:blue", ms=3, label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss", color="tab:blue")
    ax_score = ax_loss.twinx()
    ax_score.plot(
        epochs, series("val_score"), "s-", color="tab:orange", ms=3, label="val score"
    )
    if best:
        line = ax_score.axvline if best[0] == "epoch" else ax_score.axhline
        line(best[1], color="grey", ls=":", label=best[2])
    ax_score.set_ylabel("val score", color="tab:orange")
    handles = ax_loss.get_legend_handles_labels()
    more = ax_score.get_legend_handles_labels()
    ax_loss.legend(handles[0] + more[0], handles[1] + more[1], loc="best", fontsize=8)
    ax_loss.set_title("train loss and validation score")

    names = list(history[-1]["val_per_target"])
    for name in names:
        ax_target.plot(
            epochs,
            [np.nan if r["val_per_target"].get(name) is None else r["val_per_target"][name]
             for r in history],
            "o-",
            ms=3,
            label=name,
        )
    ax_target.set_xlabel("epoch")
    ax_target.set_ylabel("val metric")
    ax_target.set_title("validation metric per target")
    if names:
        ax_target.legend(loc="best", fontsize=8, ncol=1 + len(names) // 8)

    ax_lr.plot(epochs, series("lr"), "o-", color="tab:green", ms=3)
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (end of epoch)")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_loss, ax_target, ax_lr):
        ax.grid(alpha=0.3)
    fig.savefig(path)


def _plot_pred_vs_true(
    pred: np.ndarray, truth: np.ndarray, spec: CompetitionSpec, path: Path, title: str
) -> None:
    names = list(spec.outputs)[:MAX_SCATTER_PANELS]
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.8 * cols, 3.6 * rows)
    shown = "" if len(names) == spec.n_outputs else f" (first {len(names)} of {spec.n_outputs})"
    fig.suptitle(f"{title}: predicted vs true on {len(pred):,} scored valid rows{shown}")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        y, p = truth[:, j], pred[:, j].astype(np.float64)
        ok = np.isfinite(y) & np.isfinite(p)
        y, p = y[ok], p[ok]
        if y.size == 0:
            ax.set_title(f"{name}: no finite values")
            continue
        lo, hi = np.percentile(np.concatenate([y, p]), [0.5, 99.5])
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        if y.size > HEXBIN_ABOVE:
            art = ax.hexbin(
                y, p, gridsize=60, bins="log", mincnt=1, cmap="viridis", extent=(lo, hi, lo, hi)
            )
            fig.colorbar(art, ax=ax, label="rows (log)")
        else:
            ax.scatter(y, p, s=6, alpha=0.5, edgecolors="none")
        ax.plot([lo, hi], [lo, hi], color="red", lw=1, ls="--", label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        value = metric_value(spec, truth[:, j], pred[:, j])
        ax.set_title(f"{name}: {spec.metric.name} {value:.4f}")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.savefig(path)


def _width(model: dict):
    for key in ("hidden", "width", "d_model", "dim", "channels"):
        if key in model:
            return key, model[key]
    return None, None


def _model_settings(model: dict) -> str:
    """Every setting of the run's [model] table (config.toml's, the width solved from a budget),
    the keys it leaves out at their defaults: runs that differ in layers, window, kernel or
    n_heads read the same by their type and width (r300)."""
    from kit.models import BUDGET_KEY, known_class

    if not isinstance(model, dict):
        return "-"
    cls = known_class(model.get("type"))
    keys = cls.all_keys() if cls is not None else {}
    values = {name: model.get(name, key.default) for name, key in keys.items()}
    values |= {k: v for k, v in model.items() if k not in ("type", BUDGET_KEY)}  # (others)
    shown = [f"{name} {json.dumps(v, default=str) if isinstance(v, bool | list) else v}"
             for name, v in values.items()]
    budget = (f"{cls.width_key if cls else 'the width'} solved from {BUDGET_KEY} "
              f"{model[BUDGET_KEY]}" if BUDGET_KEY in model else "")
    return "; ".join(s for s in (", ".join(shown), budget) if s) or "-"


def _batch_size(train: dict, run_dir: Path) -> str:
    """The configured batch size; for 0 (the largest that fits) also the size found."""
    size = train.get("batch_size", "-")
    found = (read_metrics(run_dir) or {}).get("batch_size_found") if size == 0 else None
    return f"0 (auto: {found})" if found else str(size)


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write curves.png, pred_vs_true.png and report.md into out_dir (default run_dir/report).

    pred_vs_true.png needs val_preds.npy, val_rows.npy and the file the run validated on; when
    one is missing the plot is skipped and report.md says why. Returns report.md's path.
    """
    run_dir = Path(run_dir)
    if run_dir.suffix == ".pt" and run_dir.is_file():  # best.pt / last.pt: as kit pack takes it
        run_dir = run_dir.parent
    if run_dir.name in ("", ".."):  # `kit report .` in a run: its id is the folder's name
        run_dir = run_dir.resolve()
    if run_dir.is_file():  # metrics.json, val_preds.npy, ...: a file of the run (r269)
        raise KitError(f"{run_dir}: a file; kit report takes a run folder"
                       + (f": `kit report {run_dir.parent}`" if _is_run(run_dir.parent) else
                          " (runs/<experiment>/<run-id>) or an ensemble TOML"))
    if not run_dir.is_dir():
        raise KitError(f"{run_dir}: no such run directory (expected runs/<experiment>/<run-id>)")
    if (run_dir / "oof_preds.npy").exists() and not (run_dir / "history.jsonl").exists():
        folds = sorted(p.name for p in run_dir.parent.glob(
            run_dir.name.removesuffix("-oof") + "-fold*"))
        raise KitError(f"{run_dir}: an out-of-fold group (its score is in metrics.json and "
                       "kit runs); kit report draws one run: report its fold runs"
                       + (f" ({', '.join(folds)})" if folds else ""))
    if not (run_dir / "history.jsonl").exists():
        diverged = (read_metrics(run_dir) or {}).get("diverged")
        if isinstance(diverged, str):
            raise KitError(f"{run_dir}: training diverged before any epoch scored ({diverged}); "
                           "there is nothing to report (see docs/runs.md on divergence)")
        if any(_is_run(child) for child in run_dir.iterdir()):
            raise KitError(f"{run_dir}: an experiment's folder; kit report draws one run: "
                           f"report one of its runs (kit runs -e {run_dir.name} lists them)")
        if any(_is_run(run) for child in run_dir.iterdir() if child.is_dir()
               for run in child.iterdir()):  # runs/ itself
            raise KitError(f"{run_dir}: a folder of experiments' runs; kit report draws one "
                           f"run: report one of them (kit runs --runs-dir {run_dir} lists them)")
        raise KitError(
            f"{run_dir}: no history.jsonl; not a run directory, or its first epoch "
            "has not finished yet"
        )
    history = read_history(run_dir / "history.jsonl")
    if not history:
        written = (run_dir / "history.jsonl").read_bytes().decode("utf-8", "replace").strip()
        raise KitError(f"{run_dir / 'history.jsonl'}: " + (
            "no line is an epoch record (an object with an 'epoch' number); the file was "
            "damaged or edited" if written else "no epoch logged yet; nothing to report"))
    cache: dict = {}
    config = read_config(run_dir)  # a damaged config fails here, before any folder is made
    row = _summary(run_dir, cache)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{row['experiment']}/{row['run_id']}"

    _plot_curves(history, out_dir / "curves.png", title, row["best_epoch"], row["score"])
    scatter_note = None
    # as kit runs shows it: on the rows of val_rows.npy, whether or not the scatter can be drawn
    oracle = None if row.get("data_changed") else _oracle_report(run_dir, config, cache)
    try:
        preds_path, rows_path = run_dir / "val_preds.npy", run_dir / "val_rows.npy"
        if not preds_path.exists() or not rows_path.exists():
            raise KitError("the run has no val_preds.npy / val_rows.npy yet")
        if row.get("data_changed"):  # its predictions against another file's truth: no plot
            raise KitError(changed_data_message(run_dir, row["data_changed"]))
        valid = _valid_file(run_dir, config, cache)
        if valid is None:
            raise KitError(f"validation file {_validated_on(run_dir, config)!r} not found")
        trained = _trained_spec(run_dir)  # the predictions' columns are the trained spec's
        if trained is not None and trained.outputs != valid.spec.outputs:  # the file changed
            valid = ValidFile(valid.path, trained)
        pred, rows = load_array(preds_path, "preds"), load_array(rows_path, "rows")
        if pred.shape != (len(rows), valid.spec.n_outputs):
            raise KitError(
                f"val_preds.npy has shape {pred.shape}, expected "
                f"({len(rows)}, {valid.spec.n_outputs})"
            )
        _plot_pred_vs_true(pred, valid.truth(rows), valid.spec, out_dir / "pred_vs_true.png", title)
    except KitError as exc:
        scatter_note = str(exc)
        # an earlier report's plot would stand beside a report that says it is not drawn
        (out_dir / "pred_vs_true.png").unlink(missing_ok=True)
    path = out_dir / "report.md"
    path.write_text(_markdown(row, config, history, oracle, scatter_note, out_dir, run_dir),
                    encoding="utf-8")
    return path


def _trained_spec(run_dir: Path) -> CompetitionSpec | None:
    """The spec the run trained with: its spec.json; for a run from before that file, the copy
    in best.pt (a checkpoint load). None when neither is there or best.pt cannot be read (the
    scatter needs only the .npy files: it is drawn with the spec file, its shape checked)."""
    spec = read_trained_spec(run_dir)
    if spec is None and (run_dir / "best.pt").is_file():
        from kit.export.frozen import trained_spec

        with contextlib.suppress(KitError):
            spec = trained_spec(run_dir)
    return spec


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(
    row: dict,
    config: dict,
    history: list[dict],
    oracle: MetricReport | None,
    scatter_note: str | None,
    out_dir: Path,
    run_dir: Path,
) -> str:
    model, train = config.get("model") or {}, config.get("train") or {}
    features, data = config.get("features") or {}, config.get("data") or {}
    width_key, width = _width(model)
    model_text = str(model.get("type", "-")) + (f" ({width_key} {width})" if width_key else "")
    status = "finished" if row["finished"] else "not finished (killed, paused or running)"
    if isinstance(row.get("diverged"), str):
        status += f", stopped early: training diverged ({row['diverged']})"
    elif row.get("pending_best") is not None:
        status += "; " + pending_best_text(row)
    elif row.get("pruned"):
        status += ", stopped early: pruned by its sweep"
    lines = [
        f"# Run {row['experiment']} / {row['run_id']}",
        "",
        f"- run directory: `{run_dir}`",
        f"- status: {status}; {row['epochs']} epoch(s) of {train.get('epochs', '-')} configured",
        f"- spec: {config.get('spec', '-')}; seed: {_fmt(row['seed'])}",
        f"- model: {model_text}; parameters: "
        + (f"{int(row['params']):,}" if row["params"] is not None else "-"),
        f"- model settings: {_model_settings(model)}",
        f"- features: groups {', '.join(map(str, features.get('groups') or [])) or '-'}"
        + (f"; {len(features['ops'])} op(s)" if features.get("ops") else ""),
        f"- train: lr {train.get('lr', '-')}, batch {_batch_size(train, run_dir)}, "
        f"schedule {train.get('schedule', '-')}",
        f"- data: train `{data.get('train', '-')}`, validated on "
        f"`{_validated_on(run_dir, config) or '-'}`"
        # the rows of it, as kit runs labels them (a split, a fold, N seqs, cut steps)
        + (f" ({row['validated']})" if row.get("validated") and row["validated"] != Path(
            str(_validated_on(run_dir, config))).name else ""),
        f"- wall time: {_duration(row['wall_s']) if row['wall_s'] is not None else '-'}",
        "",
        "## Score",
        "",
        f"Best epoch **{_fmt(row['best_epoch'])}**: score **{_fmt(row['score'])}**"
        + _metric_words(row),
    ]
    if oracle is not None:
        fraction = row["oracle_fraction"]
        lines.append(
            f"(oracle {oracle.score:.4f} on the same rows"
            + (f": {fraction:.1%} of the oracle)" if fraction is not None else ")")
        )
    lines += [
        "",
        "| target | score |" + (" oracle | fraction |" if oracle else ""),
        "|---|---:|" + ("---:|---:|" if oracle else ""),
    ]
    for name, value in row["per_target"].items():
        cells = f"| {name} | {_fmt(value)} |"
        if oracle is not None:
            o = oracle.per_target.get(name)
            frac = (oracle_fraction(value, o, row["higher_is_better"])
                    if value is not None and o is not None else None)
            frac = f"{frac:.1%}" if _finite(frac) is not None else "-"
            cells += f" {_fmt(o)} | {frac} |"
        lines.append(cells)
    lines += ["", "## Plots", "", "![training curves](curves.png)", ""]
    if scatter_note is None:
        lines.append("![predicted vs true](pred_vs_true.png)")
    else:
        lines.append(f"pred_vs_true.png not drawn: {scatter_note}")
    return "\n".join(lines) + "\n"


def _metric_words(row: dict) -> str:
    """` (mae, lower is better)`: a bare 4.2946 does not say which way is good (r288); nothing
    where the run's spec does not read."""
    if row.get("metric") is None:
        return ""
    way = {True: ", higher is better", False: ", lower is better"}.get(row["higher_is_better"], "")
    return f" ({row['metric']}{way})"


def runs_to_json(runs: list[dict]) -> str:
    """The list as JSON (the dicts already hold only str, numbers, bools, None, dicts)."""
    return json.dumps(runs, indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# kit report ENSEMBLE.toml


STACKED_TARGETS = 4  # up to this many targets, weights are stacked bars; above, a heatmap


def _plot_selection(e: dict, curves: dict, cuts: dict, path: Path) -> None:
    """One panel per curve, in a grid of up to 4 columns (rnn-challenge: 32 targets, 8 rows)."""
    cols = min(4, len(curves)) if len(curves) > 2 else 1
    rows = math.ceil(len(curves) / cols)
    fig = _figure(6.5 if cols == 1 else 3.6 * cols, 3.6 if len(curves) == 1 else 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for i, (ax, (target, curve)) in enumerate(zip(axes[:len(curves)], curves.items(),
                                                         strict=True)):
        single, uniform = ((entry["per_target"][target] if target else entry["score"])
                           for entry in (e["best_single"], e["uniform"]))
        if target and target in e.get("best_single_per_target", {}):  # that target's best
            single = e["best_single_per_target"][target]["score"]
        ax.plot(np.arange(1, len(curve) + 1), curve, marker=".", label="ensemble")
        ax.axhline(single, color="gray", ls="--", label="best single")
        ax.axhline(uniform, color="gray", ls=":", label="uniform mean")
        ax.axvline(cuts[target], color="C3", lw=0.8, label="cut")
        ax.set(xlabel="iteration", ylabel=f"{e['metric']} {target}".strip(),
               title=(f"greedy selection (with replacement){', ' + target if target else ''}"
                      if cols == 1 else target))
        if i == 0:
            ax.legend(fontsize=8)
    for ax in axes[len(curves):]:
        ax.set_axis_off()
    fig.savefig(path, dpi=110)


def _plot_weights(targets: list[str], members: list[dict], path: Path) -> None:
    """Each member's weight per target: stacked bars for a few targets, else a heatmap (32
    stacked colours cannot be told apart)."""
    names = [m["name"][-40:] for m in members]
    weights = np.array([m["weights"] for m in members], dtype=float)  # [members, targets]
    if len(targets) <= STACKED_TARGETS:
        fig = _figure(6.5, 1.2 + 0.35 * len(members))
        ax = fig.subplots()
        left = np.zeros(len(members))
        for t, target in enumerate(targets):
            widths = weights[:, t] / len(targets)
            ax.barh(names, widths, left=left, label=target)
            left += widths
        ax.set(xlabel="weight (mean over targets, stacked)", title="ensemble weights")
        ax.legend(fontsize=8)
    else:
        fig = _figure(min(3.0 + 0.3 * len(targets), 20.0), 1.6 + 0.3 * len(members))
        ax = fig.subplots()
        image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(targets)), targets, rotation=90, fontsize=7)
        ax.set_yticks(range(len(members)), names, fontsize=8)
        ax.set(xlabel="target", title="ensemble weights (per target)")
        fig.colorbar(image, ax=ax, label="weight")
    fig.savefig(path, dpi=110)


def refuse_other_toml(path: Path) -> None:
    """A TOML without [[members]] given to kit report: a run's config.toml (its run is meant)
    or an experiment file, not an ensemble file ("no [[members]]" said neither, r269)."""
    kind = toml_given_for_a_run(path)
    if kind == "run config":
        raise KitError(f"{path}: run {path.parent}'s config, not an ensemble file: "
                       f"`kit report {path.parent}`")
    if kind == "other":
        raise KitError(f"{path}: no [[members]], so not an ensemble file (an experiment?); kit "
                       "report takes a run folder or an ensemble TOML (kit ensemble select)")
    # (an ensemble file, or one that does not read: read_ensemble names what is wrong)


def write_ensemble_report(path: Path, out_dir: Path | None = None) -> Path:
    """selection.png (the score after each greedy iteration, the cut marked) and weights.png
    (each member's weight per target), plus report.md; returns report.md's path."""
    from kit.ensemble import (
        format_selection,
        in_sample_members,
        in_sample_text,
        read_ensemble,
        selection_drift,
    )

    refuse_other_toml(Path(path))
    doc = read_ensemble(path)
    if "trajectory" not in doc.get("ensemble", {}):
        raise KitError(f"{path}: no [ensemble] selection record (trajectory, scores): only "
                       "files written by kit ensemble select can be reported")
    e, members = doc["ensemble"], doc["members"]
    out_dir = Path(out_dir) if out_dir is not None else Path(path).with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    # --per-target: one panel per target, its own curve and cut (the ensemble's score is each
    # target's at its own cut, on no single curve); else one curve, one cut
    curves = e.get("trajectory_per_target") or {"": e["trajectory"]}
    cuts = e.get("best_iteration_per_target") or {"": e["best_iteration"]}
    _plot_selection(e, curves, cuts, out_dir / "selection.png")
    _plot_weights(e["targets"], members, out_dir / "weights.png")
    drift = selection_drift(doc)
    since = ""
    if drift:  # the scores above are of predictions these runs no longer make, or of old rows
        said = f"{path}: since the selection, {'; '.join(drift)}"
        warnings.warn(f"{said}: its scores describe what was selected then; select again",
                      RuntimeWarning, stacklevel=2)
        since = ("## Since the selection\n\n" + "".join(f"- {line}\n" for line in drift)
                 + "\nThe scores above describe the runs and data as they were selected: "
                 "select again.\n\n")
    in_sample = in_sample_members(doc)
    if in_sample:  # (r317: "Scored on 7,208 rows of train.parquet" alone said nothing of it)
        warnings.warn(f"{path}: {in_sample_text(in_sample)}", RuntimeWarning, stacklevel=2)
    scored_on = _scored_on(e, members) + (f"Warning: {in_sample_text(in_sample)}.\n\n"
                                          if in_sample else "")
    report = out_dir / "report.md"
    report.write_text(f"# Ensemble {Path(path).name}\n\n{scored_on}"
                      f"```\n{format_selection(doc)}\n```\n\n"
                      f"{since}![selection](selection.png)\n\n![weights](weights.png)\n",
                      encoding="utf-8")
    return report


def _scored_on(e: dict, members: list[dict]) -> str:
    """What the selection scored the blends on: the file and its rows, the metric settings,
    and the members trained under other ones (r313: the report said "7,208 rows" alone, and
    select's warning of the other clip was nowhere in it)."""
    settings = e.get("metric_settings")
    metric = (f" with {settings.get('name')}, {clip_text(settings)}"
              if isinstance(settings, dict) else "")
    rows = f"{e['rows']:,} rows" if isinstance(e.get("rows"), int) else "its rows"
    lines = [f"Scored on {rows} of `{e.get('data', '-')}`{metric}."]
    other = [f"{m['name']} ({m['trained_metric'].get('name')}, "
             f"{clip_text(m['trained_metric'])})" for m in members
             if any(m["weights"]) and isinstance(m.get("trained_metric"), dict)]
    if other:
        lines.append(f"Trained under other metric settings than the blends are scored with: "
                     f"{', '.join(other)}; their own scores (kit runs) are under those, the "
                     "scores below under the ensemble's.")
    return "\n\n".join(lines) + "\n\n"
