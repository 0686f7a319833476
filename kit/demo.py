"""`kit demo`: the main job end to end on the built-in synthetic competition.

data (generated if missing) -> contract check -> train the experiment (--spec alone: the
competition's preset) with a few seeds -> greedy ensemble selection -> pack the ensemble into
one graph -> parity -> local scorer on 1 CPU -> a short summary against the oracle and the time
limit.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import typer

from kit.competition import CompetitionSpec, load_spec
from kit.data.contract import check_file
from kit.data.io import read_frame
from kit.data.synth import generation_of, refuse_other_generation, synth_dir
from kit.errors import KitError, ScorerRefusal
from kit.metrics import SHOWN_OUTPUTS, evaluate, oracle_fraction, outputs_summary, scored_truth
from kit.parity_defaults import DEFAULT_SEQS
from kit.run_record import is_finished
from kit.workers import EndedBySignal, ended_text

DEFAULT_EXPERIMENT = "gru_base"  # without --exp and --spec (Predictorium's preset)


def _section(title: str) -> None:
    typer.secho(f"\n== {title}", bold=True)


def oracle_report(valid: Path, oracle: Path, spec: CompetitionSpec, seqs: int | None = None):
    """The metric of the generator's oracle on valid (its first `seqs` sequences, the rows
    `kit score --seqs` scores): the ceiling to report models against, on the same rows."""
    from kit.scoring.score import first_sequences

    df, pred = read_frame(valid), read_frame(oracle).select(spec.outputs)
    if seqs is not None:  # the oracle file is row for row the valid file
        keep = first_sequences(df[spec.id_col], seqs)
        df, pred = df.filter(keep), pred.filter(keep)
    need = df[spec.need_col].cast(pl.Boolean).to_numpy()
    targets = None if spec.next_state else df.select(spec.targets).to_numpy()
    truth = scored_truth(df[spec.id_col].to_numpy(), need, df.select(spec.features).to_numpy(),
                         targets, spec)
    return evaluate(spec, truth, pred.to_numpy()[need])


def check_oracle_rows(valid: Path, oracle: Path, spec: CompetitionSpec) -> None:
    """The oracle file must be the valid file row for row (oracle_report reads it so): one of
    another generation or size gave a wrong ceiling, or a traceback after all the training.
    Another seed's oracle has the same keys: the files' generation marks tell them apart."""
    refuse_other_generation(valid, oracle, "delete the folder's three files to generate them "
                            "again together")
    keys = [spec.id_col, spec.step_col]
    ours, theirs = read_frame(valid, keys), read_frame(oracle, keys + list(spec.outputs))
    if ours.height != theirs.height or not ours.equals(theirs.select(keys)):
        raise KitError(f"{oracle} does not hold the rows of {valid} in order ({theirs.height:,} "
                       f"against {ours.height:,} rows): it belongs to other data; delete the "
                       f"folder's three files to generate them again together")


def synthesis_refusal(spec: CompetitionSpec) -> str | None:
    """Why the built-in generators cannot make this competition's data (their own advice),
    or None where they can."""
    from kit.data.synth import make_generator

    try:
        make_generator(spec)
    except KitError as exc:
        return str(exc)
    return None


def oracle_file_text(spec: CompetitionSpec) -> str:
    """What valid_oracle.parquet holds, for a user who writes it for a competition of theirs."""
    return (f"valid_oracle.parquet ({spec.id_col}, {spec.step_col}, one column per output: "
            f"{', '.join(spec.outputs[:3])}{', ...' if len(spec.outputs) > 3 else ''}; "
            "row for row the valid file)")


def refuse_unsynthesizable(spec: CompetitionSpec) -> None:
    """The demo generates its data: a competition of your own whose columns the generators
    do not make was told to rename its features (the generator's own advice), where its data
    runs through the other commands, or through the demo given its files."""
    why = synthesis_refusal(spec)
    if why is None:
        return
    raise KitError(f"kit demo runs on synthetic data, which the built-in generators cannot "
                   f"make for {spec.name} ({why}). Your own data runs through kit train, "
                   "kit ensemble select, kit pack, kit parity and kit score (README, "
                   "\"From a run to a submission\"), or through kit demo --data DIR, a folder "
                   f"that holds its train.parquet, valid.parquet and {oracle_file_text(spec)}")


def refuse_missing_own_files(data_dir: Path, missing: list[str], spec: CompetitionSpec) -> None:
    """--data names the files of a competition the demo cannot generate: name the ones that
    are not there (the generators' refusal said nothing of the folder)."""
    shown = [oracle_file_text(spec) if name == "valid_oracle.parquet" else name
             for name in missing]
    raise KitError(f"{data_dir} lacks {', '.join(shown)}: kit demo on {spec.name}, which the "
                   "built-in generators cannot make, needs its train, valid and valid_oracle "
                   "files in the --data folder (the oracle's predictions are what the models "
                   "are reported against); write the missing ones there")


def scored_rows_text(seqs: int | None, scored: int, valid_sequences: int) -> str:
    """Which valid rows the score covers: --seqs at or above the file's sequences scores them
    all ("the first 16" of 16 read as a part)."""
    if seqs is None:
        return "the valid set"
    if scored >= valid_sequences:
        return f"the whole valid set (all {valid_sequences:,} sequences)"
    return f"the first {scored:,} valid sequences"


def copy_presets_if_missing(experiment: str | None) -> None:
    """`pip install kit && kit demo` from an empty folder: no experiments/ here (and no
    KIT_EXPERIMENTS) gets kit's presets copied in, as the missing data is generated (r302:
    the demo failed, naming a checkout a pip user has none of)."""
    from kit.presets import EXPERIMENTS_FOLDER, experiments_here_missing, init_project

    named_file = (experiment or "").removeprefix("exp=").endswith(".toml")
    if named_file or not experiments_here_missing():
        return
    copied = init_project(Path(".")).copied
    typer.echo(f"no {EXPERIMENTS_FOLDER}/ here: copied kit's {len(copied)} preset files into "
               f"{EXPERIMENTS_FOLDER}/ (as kit init does: edit them there)")


def preset_for_spec(spec_name: str) -> tuple[str, str]:
    """The experiment `kit demo --spec NAME` trains without --exp, and the line that says so:
    the preset made for that competition (config.SPEC_PRESETS: rnn_gru for rnn-challenge), else
    DEFAULT_EXPERIMENT, saying why. gru_base trained rnn-challenge on Predictorium's |y|-weighted
    loss, into runs/gru_base/ beside Predictorium's runs (r314)."""
    from kit.config import DEFAULT_SPEC, SPEC_PRESETS, experiment_file_exists, experiment_path
    from kit.train.recipe import experiment_config

    spec = load_spec(spec_name).name
    preset = SPEC_PRESETS.get(spec)
    if preset is None:
        return DEFAULT_EXPERIMENT, (
            f"no preset experiment is made for {spec}: training {DEFAULT_EXPERIMENT} "
            f"(made for {DEFAULT_SPEC}) on it; --exp NAME trains an experiment of yours")
    if not experiment_file_exists(preset):
        return DEFAULT_EXPERIMENT, (
            f"{preset}, the preset made for {spec}, is not in the experiments folder (`kit "
            f"init` copies the presets it lacks): training {DEFAULT_EXPERIMENT} on {spec}")
    written = experiment_config(preset).get("spec")
    if written not in (spec, spec_name):  # an edited preset: it trains another competition
        return DEFAULT_EXPERIMENT, (
            f"{experiment_path(preset)} sets spec = {written!r}, not {spec}: training "
            f"{DEFAULT_EXPERIMENT} on {spec}; --exp NAME trains another")
    return preset, (f"--spec {spec_name}: training {preset} ({experiment_path(preset)}), the "
                    f"preset made for {spec}; --exp NAME trains another")


def signal_text(stop: BaseException) -> str:
    """How the command ended, in the words kit train's hint uses ("kit demo {this} at its
    train stage": a closed pipe's words read as a cause)."""
    text = ended_text(signal.SIGINT if isinstance(stop, KeyboardInterrupt) else stop.signum)
    return text if text == "interrupted" or text.startswith("stopped by") else f"stopped as {text}"


@dataclass
class Progress:
    """How far the demo got, for the one line an interruption prints: its stage, and the
    training's group (its record in runs/EXP/.groups names the runs it left)."""

    exp_dir: Path | None = None  # (known once the experiment's config is)
    seeds: list[int] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)  # the kit train command that finishes them
    stage: str = "data"
    groups_before: set[str] = field(default_factory=set)
    trained: list[Path] = field(default_factory=list)

    def start_training(self) -> None:
        from kit.train.groups import GROUPS_DIR

        self.stage = "train"
        self.groups_before = {p.name for p in (self.exp_dir / GROUPS_DIR).glob("*.json")}

    def group_runs(self) -> list[Path]:
        """The runs of the group this demo's training claimed (none if it removed them)."""
        from kit.train.groups import GROUPS_DIR, member_names

        if self.exp_dir is None:
            return []
        new = {p.stem for p in (self.exp_dir / GROUPS_DIR).glob("*.json")
               if p.name not in self.groups_before}
        return [self.exp_dir / name for stamp in sorted(new)
                for name in member_names(self.seeds, 0, stamp) if (self.exp_dir / name).is_dir()]

    def interrupted(self, stop: BaseException) -> str:
        """One line: what stopped, at which stage, what it left and what to do."""
        head = f"kit demo {signal_text(stop)} at its {self.stage} stage"
        if self.trained:  # a stage after training: its runs are whole
            return (f"{head}: its runs finished training ({', '.join(map(str, self.trained))}) "
                    "and nothing else is left to resume; run the same command again (it "
                    "trains new runs)")
        left = [run for run in self.group_runs() if not is_finished(run)]
        if not left:
            return f"{head}: nothing to resume; run the same command again"
        return (f"{head}: it left {len(left)} unfinished run(s) in {self.exp_dir}/ "
                f"({', '.join(run.name for run in left)}), which kit runs lists and kit "
                f"ensemble select {self.exp_dir} may take up: finish them with "
                f"`{shlex.join(self.resume)}` (from the last finished epoch), or delete them "
                f"(`{shlex.join(['rm', '-r', *map(str, left)])}`); kit demo again trains new "
                "runs")


def run_demo(data_dir: Path | None = None, submissions: Path = Path("submissions"),
             spec_name: str | None = None, experiment: str | None = None,
             overrides: list[str] | None = None, seeds: int = 3, seqs: int | None = None,
             parity_seqs: int = DEFAULT_SEQS, quiet: bool = False) -> dict:
    """Run every stage and return the summary it prints. spec_name: the competition (default:
    the experiment's own spec); data_dir: its data (default: synth_dir). Interrupted (Ctrl-C;
    SIGTERM or SIGHUP under kit's CLI), it says in one line what it left, as kit train does.
    experiment: the one to train (default: the preset made for spec_name, else gru_base)."""
    progress = Progress()
    try:
        return _run_demo(progress, data_dir, submissions, spec_name, experiment, overrides,
                         seeds, seqs, parity_seqs, quiet)
    except (KeyboardInterrupt, EndedBySignal) as stop:  # (the same exception goes on: its exit)
        typer.echo(progress.interrupted(stop), err=True)
        raise


def _run_demo(progress: Progress, data_dir: Path | None, submissions: Path,
              spec_name: str | None, experiment: str | None, overrides: list[str] | None,
              seeds: int, seqs: int | None, parity_seqs: int, quiet: bool) -> dict:
    from kit.config import experiment_path, refuse_overrides
    from kit.data.synth import synthesize
    from kit.ensemble import select_ensemble
    from kit.export.pack import pack_ensemble, pack_run
    from kit.parity import run_parity
    from kit.scoring import score_submission
    from kit.scoring.score import seconds_text
    from kit.train.recipe import check_config, experiment_config, train_experiment
    from kit.train.runs import RUNS_DIR

    started = time.perf_counter()
    # every option checked before the first stage: a typo must not cost the data and training
    if seeds < 1:
        raise KitError(f"--seeds must be >= 1, got {seeds}")
    refuse_overrides(overrides, {"seed": "--seeds N (seeds 42, 43, ...)", "seeds": "--seeds N",
                                 "spec": "--spec NAME", "data.train": "--data DIR",
                                 "data.valid": "--data DIR"})
    for name, value in (("--seqs", seqs), ("--parity-seqs", parity_seqs)):
        if value is not None and value < 1:
            raise KitError(f"{name} must be >= 1, got {value}")
    copy_presets_if_missing(experiment)
    if experiment is None and spec_name is not None:  # (said before the data stage)
        experiment, choice = preset_for_spec(spec_name)
        typer.echo(choice)
    experiment = experiment or DEFAULT_EXPERIMENT
    # the experiment's own competition unless --spec says another: the demo once ran every
    # experiment on Predictorium, an rnn-challenge one failing on its data's columns
    spec_name = spec_name or experiment_config(experiment, list(overrides or [])).get(
        "spec", "predictorium")
    spec = load_spec(spec_name)
    data_given = data_dir is not None  # (a file missing there is named)
    data_dir = Path(data_dir) if data_given else synth_dir(spec.name)
    train, valid, oracle = (data_dir / n for n in
                            ("train.parquet", "valid.parquet", "valid_oracle.parquet"))
    # TOML strings, escaped (json's escapes are TOML's): a \t in a folder name stays two chars
    paths = [f"{key}={json.dumps(str(value))}" for key, value in
             (("data.train", train), ("data.valid", valid), ("spec", spec_name))]
    with warnings.catch_warnings():  # (said once, by the training that checks it again)
        warnings.simplefilter("ignore")
        config = experiment_config(experiment, paths + list(overrides or []))
        check_config(config)  # model too
    seed_list = [42 + i for i in range(seeds)]
    progress.exp_dir, progress.seeds = RUNS_DIR / config["name"], seed_list
    # what kit train would print, stopped with these seeds: it finishes the same group
    progress.resume = ["kit", "train", experiment, *paths, *(overrides or []),
                       f"seeds=[{','.join(map(str, seed_list))}]",
                       *(["--jobs", str(seeds)] if seeds > 1 else []), "--resume"]
    _section("data")
    missing = [p.name for p in (train, valid, oracle) if not p.exists()]
    synthesizable = synthesis_refusal(spec) is None
    if missing and not synthesizable:  # nothing can be generated: the files must be there
        if data_given:  # the user's own folder: name the files to add
            refuse_missing_own_files(data_dir, missing, spec)
        refuse_unsynthesizable(spec)
    if len(missing) == 3:
        result = synthesize(spec, data_dir, progress=not quiet)
        typer.echo(f"generated {result.train_rows:,} train and {result.valid_rows:,} valid rows "
                   f"in {result.seconds:.1f}s")
    elif missing:  # regenerating would overwrite the others (a --full set, say)
        raise KitError(f"{data_dir} lacks {', '.join(missing)} of the demo's three files "
                       "(train, valid and the synthetic oracle's predictions, which `kit data "
                       "synth` writes together): give --data a folder of synthetic data, or "
                       "an empty one to generate it; your own data runs through kit train, "
                       "pack and score")
    else:  # deleting it regenerates only synthetic data (a user's own files are theirs alone)
        regenerable = synthesizable and generation_of(valid) is not None
        typer.echo(f"using {data_dir}" + (" (delete it to regenerate)" if regenerable else ""))
    check_oracle_rows(valid, oracle, spec)
    for path in (train, valid):
        report = check_file(path, spec)
        typer.echo(f"{path}: {report.rows:,} rows, {report.sequences:,} sequences, "
                   "contract OK")
    valid_sequences = report.sequences  # (valid's: checked last)

    progress.start_training()
    _section(f"train: experiment {experiment} ({experiment_path(experiment)}), "
             f"{seeds} seed(s)" + (", all at once (kit train --jobs)" if seeds > 1 else ""))
    # the seeds train side by side, each in its own process: a GRU this size trains about
    # as fast on one thread as on two, so on 2 cores three seeds take the time of 1.5
    trained = train_experiment(experiment, paths + list(overrides or []),
                               seeds=seed_list, progress=not quiet, jobs=seeds)
    for metrics in trained:
        typer.echo(f"{metrics['run_dir']}: validation score {metrics['score']:.4f} at epoch "
                   f"{metrics['best_epoch']} ({metrics['wall_s']:.0f}s)")
    run_dirs = progress.trained = [Path(m["run_dir"]) for m in trained]

    doc = None
    (submissions / "demo-ensemble.toml").unlink(missing_ok=True)  # an earlier demo's members
    if len(run_dirs) > 1:
        progress.stage = "ensemble"
        _section("ensemble: greedy selection with replacement on the validation predictions")
        doc, ensemble_file, table = select_ensemble(
            run_dirs, iters=20, out=submissions / "demo-ensemble.toml")
        typer.echo(table)
        typer.echo(f"wrote {ensemble_file}")

    progress.stage = "pack"
    _section("pack: one stateful ONNX step graph + solution.py")
    packed = (pack_ensemble(ensemble_file, "demo", submissions) if len(run_dirs) > 1
              else pack_run(run_dirs[0], "demo", submissions))
    typer.echo(packed.format())

    progress.stage = "parity"
    _section("parity: PyTorch sequence vs PyTorch step vs the packaged solution")
    parity = run_parity(packed.folder, valid, seqs=parity_seqs)
    typer.echo(parity.format())
    if not parity.ok:
        raise KitError("parity failed: the package does not compute what the model does")

    progress.stage = "score"
    _section("score: the competition's scorer replayed on 1 CPU")
    scored = score_submission(packed.zip_path, valid, spec, seqs=seqs, progress=not quiet)
    typer.echo(scored.format())
    if scored.fails:  # as kit score refuses it (exit 3): no success summary for a rejection
        raise ScorerRefusal(f"the official scorer would not accept this submission: "
                            f"{'; '.join(scored.fails)}")

    ceiling = oracle_report(valid, oracle, spec, seqs)
    summary = {
        "runs": [str(r) for r in run_dirs],
        "best_single": (max if spec.metric.higher_is_better else min)(
            m["score"] for m in trained),
        "submission": str(packed.zip_path),
        "score": scored.report.score,
        "per_target": scored.report.per_target,
        "oracle_score": ceiling.score,
        "fraction_of_oracle": oracle_fraction(scored.report.score, ceiling.score,
                                              spec.metric.higher_is_better),
        "parity_max_abs": parity.max_abs,
        "rows_per_s": scored.rows_per_s,
        "us_per_row": scored.us_per_row,
        "projected_s": scored.projected_s,
        "limit_s": scored.limit_s,
        "seconds": time.perf_counter() - started,
    }
    progress.stage = "summary"
    _section("summary")
    per_target = "  ".join(f"{k} {v:.4f} (oracle {ceiling.per_target[k]:.4f})"
                           for k, v in scored.report.per_target.items())
    if len(scored.report.per_target) > SHOWN_OUTPUTS:  # (a next-state spec's 32 outputs)
        per_target = outputs_summary(scored.report.per_target)
    rows = scored_rows_text(seqs, scored.sequences, valid_sequences)
    typer.echo(f"score {summary['score']:.4f} = {summary['fraction_of_oracle']:.0%} of the "
               f"oracle's {ceiling.score:.4f} on {rows}   [{per_target}]")
    if doc is not None:  # both on every validation row, the selection's own comparison
        typer.echo(f"ensemble of {len(packed.manifest['members'])} run(s): validation score "
                   f"{doc['ensemble']['score']:.4f} against the best single run's "
                   f"{summary['best_single']:.4f}")
    typer.echo(f"parity: max abs difference {parity.max_abs:.1e} between the PyTorch model "
               f"(whole sequences and step by step) and the package (all {len(parity.checks)} "
               "checks pass)")
    typer.echo(f"speed {scored.rows_per_s:,.0f} rows/s ({scored.us_per_row:.1f} us/row) on 1 CPU: "
               f"the test set would take {seconds_text(scored.projected_s)} of the "
               f"{seconds_text(scored.limit_s)} limit ({scored.projected_s / scored.limit_s:.1%})")
    typer.echo(f"submission: {packed.zip_path}   demo finished in {summary['seconds']:.0f}s")
    return summary
