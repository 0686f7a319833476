"""`kit demo`: the main job end to end on the built-in synthetic competition.

data (generated if missing) -> contract check -> stats -> model -> submission zip ->
local scorer on 1 CPU -> a short summary against the oracle and the time limit.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import typer

from kit.competition import CompetitionSpec, load_spec
from kit.data.contract import check_file
from kit.data.io import read_frame
from kit.metrics import evaluate, scored_truth


def _section(title: str) -> None:
    typer.secho(f"\n== {title}", bold=True)


def oracle_report(valid: Path, oracle: Path, spec: CompetitionSpec):
    """The metric of the generator's oracle on valid: the ceiling to report models against."""
    df = read_frame(valid)
    need = df[spec.need_col].cast(pl.Boolean).to_numpy()
    targets = None if spec.next_state else df.select(spec.targets).to_numpy()
    truth = scored_truth(df[spec.id_col].to_numpy(), need, df.select(spec.features).to_numpy(),
                         targets, spec)
    pred = read_frame(oracle).select(spec.outputs).to_numpy()[need]
    return evaluate(spec, truth, pred)


def run_demo(data_dir: Path = Path("data/synth"), submissions: Path = Path("submissions"),
             spec_name: str = "predictorium", seqs: int | None = None,
             quiet: bool = False) -> dict:
    """Run every stage and return the summary it prints."""
    from kit.baselines import fit_linear_baseline, write_linear_submission
    from kit.data.stats import dataset_stats, format_stats
    from kit.data.synth import synthesize
    from kit.scoring import score_submission

    started = time.perf_counter()
    spec = load_spec(spec_name)
    train, valid, oracle = (data_dir / n for n in
                            ("train.parquet", "valid.parquet", "valid_oracle.parquet"))
    _section("data")
    if not all(p.exists() for p in (train, valid, oracle)):
        result = synthesize(spec, data_dir, progress=not quiet)
        typer.echo(f"generated {result.train_rows:,} train and {result.valid_rows:,} valid rows "
                   f"in {result.seconds:.1f}s")
    else:
        typer.echo(f"using {data_dir} (delete it to regenerate)")
    for path in (train, valid):
        report = check_file(path, spec)
        typer.echo(f"{path}: {report.rows:,} rows, {report.sequences:,} sequences, "
                   "contract OK")
    typer.echo(format_stats(dataset_stats(valid, spec, oracle=oracle, reference=train)))

    _section("model: linear baseline (ridge on the row and its EWMs)")
    coef = fit_linear_baseline(train, spec)
    zip_path = write_linear_submission(coef, submissions / "linear-baseline")
    typer.echo(f"packed {zip_path}")

    _section("score: the competition's scorer replayed on 1 CPU")
    scored = score_submission(zip_path, valid, spec, seqs=seqs, progress=not quiet)
    typer.echo(scored.format())

    ceiling = oracle_report(valid, oracle, spec)
    summary = {
        "score": scored.report.score,
        "per_target": scored.report.per_target,
        "oracle_score": ceiling.score,
        "fraction_of_oracle": scored.report.score / ceiling.score if ceiling.score else np.nan,
        "rows_per_s": scored.rows_per_s,
        "projected_s": scored.projected_s,
        "limit_s": scored.limit_s,
        "seconds": time.perf_counter() - started,
    }
    _section("summary")
    per_target = "  ".join(f"{k} {v:.4f} (oracle {ceiling.per_target[k]:.4f})"
                           for k, v in scored.report.per_target.items())
    typer.echo(f"score {summary['score']:.4f} = {summary['fraction_of_oracle']:.0%} of the "
               f"oracle's {ceiling.score:.4f}   [{per_target}]")
    typer.echo(f"speed {scored.rows_per_s:,.0f} rows/s on 1 CPU: the test set would take "
               f"{scored.projected_s / 60:.1f} min of the {scored.limit_s / 60:.0f} min limit "
               f"({scored.projected_s / scored.limit_s:.1%})")
    typer.echo(f"demo finished in {summary['seconds']:.0f}s")
    return summary
