"""`kit demo`: the main job end to end on the built-in synthetic competition.

data (generated if missing) -> contract check -> train the default experiment with a few seeds
-> greedy ensemble selection -> pack the ensemble into one graph -> parity -> local scorer on
1 CPU -> a short summary against the oracle and the time limit.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import polars as pl
import typer

from kit.competition import CompetitionSpec, load_spec
from kit.data.contract import check_file
from kit.data.io import read_frame
from kit.data.synth import refuse_other_generation, synth_dir
from kit.errors import KitError, ScorerRefusal
from kit.metrics import SHOWN_OUTPUTS, evaluate, oracle_fraction, outputs_summary, scored_truth


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


def refuse_unsynthesizable(spec: CompetitionSpec) -> None:
    """The demo generates its data: a competition of your own whose columns the generators
    do not make was told to rename its features (the generator's own advice), where its data
    runs through the other commands."""
    from kit.data.synth import make_generator

    try:
        make_generator(spec)
    except KitError as exc:
        raise KitError(f"kit demo runs on synthetic data, which the built-in generators cannot "
                       f"make for {spec.name} ({exc}). Your own data runs through kit train, "
                       "kit ensemble select, kit pack, kit parity and kit score (README, "
                       "\"From a run to a submission\"); kit demo runs the built-in competitions "
                       "(--exp gru_base, --exp rnn_gru)") from None


def run_demo(data_dir: Path | None = None, submissions: Path = Path("submissions"),
             spec_name: str | None = None, experiment: str = "gru_base",
             overrides: list[str] | None = None, seeds: int = 3, seqs: int | None = None,
             parity_seqs: int = 16, quiet: bool = False) -> dict:
    """Run every stage and return the summary it prints. spec_name: the competition (default:
    the experiment's own spec); data_dir: its data (default: synth_dir)."""
    from kit.config import refuse_overrides
    from kit.data.synth import synthesize
    from kit.ensemble import select_ensemble
    from kit.export.pack import pack_ensemble, pack_run
    from kit.parity import run_parity
    from kit.scoring import score_submission
    from kit.scoring.score import seconds_text
    from kit.train.recipe import check_config, experiment_config, train_experiment

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
    # the experiment's own competition unless --spec says another: the demo once ran every
    # experiment on Predictorium, an rnn-challenge one failing on its data's columns
    spec_name = spec_name or experiment_config(experiment, list(overrides or [])).get(
        "spec", "predictorium")
    spec = load_spec(spec_name)
    data_dir = Path(data_dir) if data_dir is not None else synth_dir(spec.name)
    train, valid, oracle = (data_dir / n for n in
                            ("train.parquet", "valid.parquet", "valid_oracle.parquet"))
    # TOML strings, escaped (json's escapes are TOML's): a \t in a folder name stays two chars
    paths = [f"{key}={json.dumps(str(value))}" for key, value in
             (("data.train", train), ("data.valid", valid), ("spec", spec_name))]
    with warnings.catch_warnings():  # (said once, by the training that checks it again)
        warnings.simplefilter("ignore")
        check_config(experiment_config(experiment, paths + list(overrides or [])))  # model too
    _section("data")
    present = [p for p in (train, valid, oracle) if p.exists()]
    if len(present) < 3:  # generated here, or to be ("an empty one to generate it" below)
        refuse_unsynthesizable(spec)
    if not present:
        result = synthesize(spec, data_dir, progress=not quiet)
        typer.echo(f"generated {result.train_rows:,} train and {result.valid_rows:,} valid rows "
                   f"in {result.seconds:.1f}s")
    elif len(present) < 3:  # regenerating would overwrite the others (a --full set, say)
        missing = [p.name for p in (train, valid, oracle) if not p.exists()]
        raise KitError(f"{data_dir} lacks {', '.join(missing)} of the demo's three files "
                       "(train, valid and the synthetic oracle's predictions, which `kit data "
                       "synth` writes together): give --data a folder of synthetic data, or "
                       "an empty one to generate it; your own data runs through kit train, "
                       "pack and score")
    else:
        typer.echo(f"using {data_dir} (delete it to regenerate)")
    check_oracle_rows(valid, oracle, spec)
    for path in (train, valid):
        report = check_file(path, spec)
        typer.echo(f"{path}: {report.rows:,} rows, {report.sequences:,} sequences, "
                   "contract OK")

    _section(f"train: experiment {experiment} (experiments/{experiment}.toml), "
             f"{seeds} seed(s)" + (", all at once (kit train --jobs)" if seeds > 1 else ""))
    # the seeds train side by side, each in its own process: a GRU this size trains about
    # as fast on one thread as on two, so on 2 cores three seeds take the time of 1.5
    trained = train_experiment(experiment, paths + list(overrides or []),
                               seeds=[42 + i for i in range(seeds)], progress=not quiet,
                               jobs=seeds)
    for metrics in trained:
        typer.echo(f"{metrics['run_dir']}: validation score {metrics['score']:.4f} at epoch "
                   f"{metrics['best_epoch']} ({metrics['wall_s']:.0f}s)")
    run_dirs = [Path(m["run_dir"]) for m in trained]

    doc = None
    (submissions / "demo-ensemble.toml").unlink(missing_ok=True)  # an earlier demo's members
    if len(run_dirs) > 1:
        _section("ensemble: greedy selection with replacement on the validation predictions")
        doc, ensemble_file, table = select_ensemble(
            run_dirs, iters=20, out=submissions / "demo-ensemble.toml")
        typer.echo(table)
        typer.echo(f"wrote {ensemble_file}")

    _section("pack: one stateful ONNX step graph + solution.py")
    packed = (pack_ensemble(ensemble_file, "demo", submissions) if len(run_dirs) > 1
              else pack_run(run_dirs[0], "demo", submissions))
    typer.echo(packed.format())

    _section("parity: PyTorch sequence vs PyTorch step vs the packaged solution")
    parity = run_parity(packed.folder, valid, seqs=parity_seqs)
    typer.echo(parity.format())
    if not parity.ok:
        raise KitError("parity failed: the package does not compute what the model does")

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
    _section("summary")
    per_target = "  ".join(f"{k} {v:.4f} (oracle {ceiling.per_target[k]:.4f})"
                           for k, v in scored.report.per_target.items())
    if len(scored.report.per_target) > SHOWN_OUTPUTS:  # (a next-state spec's 32 outputs)
        per_target = outputs_summary(scored.report.per_target)
    rows = (f"the first {scored.sequences:,} valid sequences" if seqs is not None
            else "the valid set")
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
