"""`kit runs` / `kit report` on fake run directories (no training)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w

from kit import reports
from kit.competition import load_spec
from kit.errors import KitError
from kit.metrics import evaluate
from kit.reports import format_runs, list_runs, sort_runs, write_ensemble_report, write_report
from tests.cli import run_cli
from tests.frames import make_frame, small_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_data(folder: Path, spec, n_seqs: int = 4, oracle: bool = True) -> tuple[Path, Path]:
    """A valid parquet, its spec TOML and (optionally) an oracle file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "tiny.toml"
    spec_path.write_text(tomli_w.dumps(spec.to_dict()))
    frame = make_frame(spec, n_seqs=n_seqs, seed=3)
    valid = folder / "valid.parquet"
    frame.write_parquet(valid)
    if oracle:
        rng = np.random.default_rng(7)
        truth = frame.select(spec.outputs).to_numpy().astype(np.float64)
        if spec.next_state:  # the oracle predicts the next row's features
            truth = np.roll(truth, -1, axis=0)
        noisy = truth + rng.standard_normal(truth.shape)
        cols = {spec.id_col: frame[spec.id_col], spec.step_col: frame[spec.step_col]}
        cols |= {n: pl.Series(noisy[:, j], dtype=pl.Float32) for j, n in enumerate(spec.outputs)}
        pl.DataFrame(cols).write_parquet(folder / "valid_oracle.parquet")
    return valid, spec_path


def scored_rows(valid: Path, spec, n_seqs: int | None = None) -> np.ndarray:
    frame = pl.read_parquet(valid)
    need = frame[spec.need_col].to_numpy()
    if n_seqs is not None:
        need &= frame[spec.id_col].to_numpy() < n_seqs
    return np.flatnonzero(need).astype(np.int64)


def truth_of(valid: Path, spec, rows: np.ndarray) -> np.ndarray:
    frame = pl.read_parquet(valid)
    if spec.next_state:
        return frame.select(spec.features).to_numpy().astype(np.float64)[rows + 1]
    return frame.select(spec.targets).to_numpy().astype(np.float64)[rows]


def make_run(
    root: Path, experiment: str, run_id: str, valid: Path, spec_path: Path, *, seed: int = 0,
    epochs: int = 3, finished: bool = True, seconds: float = 2.0, noise: float = 1.0,
    n_seqs: int | None = None, params: int = 1000, train: Path | None = None,
) -> Path:  # fmt: skip
    """A run directory with the files kit/train/runs.py writes (no checkpoints)."""
    spec = load_spec(str(spec_path))
    run = root / experiment / run_id
    run.mkdir(parents=True)
    config = {
        "name": experiment, "spec": str(spec_path), "seed": seed,
        "data": {"train": str(train or valid.with_name("train.parquet")), "valid": str(valid)},
        "features": {"groups": ["raw", "ewm"], "ops": []},
        "model": {"type": "gru", "hidden": 32},
        "train": {"epochs": epochs + 2, "lr": 0.002, "batch_size": 8, "schedule": "cosine"},
        "loss": {"type": "mse"},
    }  # fmt: skip
    (run / "config.toml").write_text(tomli_w.dumps(config))
    rows = scored_rows(valid, spec, n_seqs)
    rng = np.random.default_rng(seed)
    truth = truth_of(valid, spec, rows)
    pred = (truth + noise * rng.standard_normal(truth.shape)).astype(np.float32)
    report = evaluate(spec, truth, pred)
    np.save(run / "val_preds.npy", pred)
    np.save(run / "val_rows.npy", rows)
    history = []
    for e in range(1, epochs + 1):
        score = report.score - 0.01 * (epochs - e)  # the last epoch is the best
        per = {k: v - 0.01 * (epochs - e) for k, v in report.per_target.items()}
        history.append({"epoch": e, "train_loss": 1.0 / e, "val_score": score,
                        "val_per_target": per, "lr": 0.002 / e, "seconds": seconds,
                        "best": True})  # fmt: skip
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if finished:
        metrics = {
            "finished": True, "best_epoch": epochs, "score": report.score,
            "per_target": report.per_target, "epochs": epochs, "wall_s": seconds * epochs,
            "params": params, "features": 32, "train_seqs": 4, "valid_seqs": 4,
        }  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    make_run(root, "alpha", "20240101-000000-s1", valid, spec_path, seed=1, noise=0.5,
             seconds=5.0, params=5000)  # fmt: skip
    make_run(root, "alpha", "20240102-000000-s2", valid, spec_path, seed=2, noise=2.0,
             seconds=1.0, params=2000, n_seqs=2)  # fmt: skip
    make_run(root, "beta", "20240103-000000-s3", valid, spec_path, seed=3, noise=1.0,
             seconds=3.0, finished=False, epochs=2)  # fmt: skip
    return root


def test_runs_of_a_lower_is_better_metric_list_best_first(tmp_path: Path):
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    make_run(root, "e", "20240101-000000-s1", valid, spec_path, seed=1, noise=2.0)
    make_run(root, "e", "20240102-000000-s2", valid, spec_path, seed=2, noise=0.5)
    # a killed run: no metrics.json; the trainer flagged epoch 1 (the lower rmse) as the best
    killed = make_run(root, "e", "20240103-000000-s3", valid, spec_path, seed=3,
                      finished=False, epochs=2)
    history = [json.loads(line) for line in (killed / "history.jsonl").read_text().splitlines()]
    history[0].update(val_score=0.01, best=True)
    history[1].update(val_score=0.9, best=False)
    (killed / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    runs = list_runs(root)
    assert next(r for r in runs if r["seed"] == 3)["best_epoch"] == 1
    table = format_runs(runs).splitlines()
    order = [line.split()[1] for line in table[2:]]
    assert order == ["20240103-000000-s3", "20240102-000000-s2", "20240101-000000-s1"]


def test_an_error_metrics_runs_sorted_by_an_output_list_the_lowest_first(tmp_path: Path):
    """An output's column holds the metric per output: for rmse the lowest is the best, and
    sorting by it lists the best first by default as sorting by score does (it listed the
    worst first)."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    for seed, noise in ((1, 2.0), (2, 0.5), (3, 1.0)):
        make_run(root, "e", f"2024010{seed}-000000-s{seed}", valid, spec_path, seed=seed,
                 noise=noise)
    runs = list_runs(root)
    for output in ("t0", "t1"):
        lowest_first = [r["run_id"] for r in sorted(runs, key=lambda r: r["per_target"][output])]
        assert lowest_first == ["20240102-000000-s2", "20240103-000000-s3",
                                "20240101-000000-s1"]
        assert [r["run_id"] for r in sort_runs(runs, output)] == lowest_first
        assert [r["run_id"] for r in sort_runs(runs, output, False)] == lowest_first[::-1]
        assert _column(format_runs(runs, sort=output), "run_id") == lowest_first
    assert [r["run_id"] for r in sort_runs(runs, "score")] == lowest_first


def test_list_runs_reads_every_run(runs_root: Path):
    runs = list_runs(runs_root)
    assert [(r["experiment"], r["run_id"]) for r in runs] == [
        ("alpha", "20240101-000000-s1"),
        ("alpha", "20240102-000000-s2"),
        ("beta", "20240103-000000-s3"),
    ]
    first = runs[0]
    assert first["finished"] is True and first["seed"] == 1 and first["params"] == 5000
    assert first["best_epoch"] == 3 and first["epochs"] == 3 and first["wall_s"] == 15.0
    assert set(first["per_target"]) == {"t0", "t1"}
    assert first["path"] == str(runs_root / "alpha" / "20240101-000000-s1")


def test_unfinished_run_is_listed_from_its_history(runs_root: Path):
    (run,) = list_runs(runs_root, experiment="beta")
    history = [
        json.loads(x) for x in (Path(run["path"]) / "history.jsonl").read_text().splitlines()
    ]
    assert run["finished"] is False
    assert run["epochs"] == 2 and run["best_epoch"] == 2 and run["wall_s"] == 6.0
    assert run["score"] == pytest.approx(history[-1]["val_score"])
    assert run["per_target"] == pytest.approx(history[-1]["val_per_target"])
    assert run["params"] is None and run["seed"] == 3


def test_torn_history_line_is_skipped(runs_root: Path):
    path = runs_root / "beta" / "20240103-000000-s3" / "history.jsonl"
    path.write_text(path.read_text() + '{"epoch": 3, "val_sc')
    (run,) = list_runs(runs_root, experiment="beta")
    assert run["epochs"] == 2


@pytest.mark.parametrize("metrics", [
    "[1, 2]",  # not an object: read like a torn file, from the history
    '{"finished": true, "score": "abc", "per_target": [1], "epochs": "x", "params": -3}',
])  # fmt: skip
def test_hand_damaged_metrics_json_lists_what_it_can(runs_root: Path, metrics: str):
    run = runs_root / "alpha" / "20240101-000000-s1"
    (run / "metrics.json").write_text(metrics)
    listed = next(r for r in list_runs(runs_root) if r["path"] == str(run))
    assert listed["epochs"] == 3 and listed["params"] is None
    if metrics.startswith("["):
        assert listed["score"] is not None and listed["best_epoch"] == 3
    else:
        assert listed["finished"] is True and listed["score"] is None
        assert listed["per_target"] == {}
    assert "20240101-000000-s1" in format_runs(list_runs(runs_root))
    json.dumps(list_runs(runs_root), allow_nan=False)
    assert write_report(run).exists()


def test_hand_damaged_history_and_config_fields_read_as_missing(runs_root: Path):
    run = runs_root / "beta" / "20240103-000000-s3"
    lines = (run / "history.jsonl").read_text().splitlines()
    first = json.loads(lines[0]) | {"seconds": "x", "lr": None, "val_per_target": [0.1]}
    damaged = [json.dumps(first), "[1, 2]", '{"val_score": 0.5}', lines[1]]
    (run / "history.jsonl").write_text("\n".join(damaged) + "\n")
    config = (run / "config.toml").read_text().replace("seed = 3", 'seed = "three"')
    (run / "config.toml").write_text(config)
    (listed,) = list_runs(runs_root, experiment="beta")
    assert listed["epochs"] == 2 and listed["best_epoch"] == 2
    assert listed["wall_s"] == 3.0  # the second epoch's seconds only
    assert listed["seed"] == 3  # from the run id, since config.toml's seed is not a number
    assert (write_report(run).parent / "curves.png").read_bytes().startswith(PNG_MAGIC)
    (run / "history.jsonl").write_text("[1, 2]\n")
    with pytest.raises(KitError, match="no line is an epoch record"):
        write_report(run)


def test_a_damaged_config_or_history_marks_its_run_and_the_listing_goes_on(runs_root: Path):
    run = runs_root / "beta" / "20240103-000000-s3"
    with open(run / "history.jsonl", "ab") as fh:
        fh.write(b"\xff\xfe\x00garbage\n")  # not UTF-8: that line is skipped
    (listed,) = list_runs(runs_root, experiment="beta")
    assert listed["epochs"] == 2
    assert write_report(run).exists()
    for made in (run / "report").iterdir():
        made.unlink()
    (run / "report").rmdir()
    for text in ("spec = [", 'data = "x"\n'):  # not TOML; a section that is not a table
        (run / "config.toml").write_text(text)
        runs = list_runs(runs_root)
        assert len(runs) > 1 and "config_error" in next(r for r in runs if r["path"] == str(run))
        table = format_runs(runs)
        assert f"note: {run}: {run / 'config.toml'}" in table
        with pytest.raises(KitError, match="config.toml"):
            write_report(run)
        assert not (run / "report").exists()  # nothing made for a report that failed


def test_a_run_that_diverged_says_so_in_the_listing_the_report_and_select(runs_root: Path):
    from kit.ensemble import EnsembleError, expand_candidates

    run = runs_root / "alpha" / "20240101-000000-s1"
    metrics = json.loads((run / "metrics.json").read_text())
    reason = "train loss inf in batch 1 of epoch 4"
    (run / "metrics.json").write_text(json.dumps(metrics | {"diverged": reason}))
    listed = next(r for r in list_runs(runs_root) if r["path"] == str(run))
    assert listed["diverged"] == reason and listed["score"] is not None
    assert f"note: {run}: training diverged ({reason})" in format_runs(list_runs(runs_root))
    assert f"stopped early: training diverged ({reason})" in write_report(run).read_text()
    # diverged before any epoch scored: no history, no predictions
    early = runs_root / "alpha" / "20240101-000000-s9"
    early.mkdir()
    (early / "config.toml").write_text((run / "config.toml").read_text())
    (early / "metrics.json").write_text(json.dumps(
        {"finished": True, "score": None, "per_target": {}, "diverged": reason}))
    with pytest.raises(KitError, match="training diverged before any epoch scored"):
        write_report(early)
    with pytest.raises(EnsembleError, match="diverged before any epoch scored"):
        expand_candidates([early])
    # an experiment folder whose only run diverged so: said so (not "no finished runs")
    alone = runs_root / "lone"
    shutil.copytree(early, alone / early.name)
    with pytest.raises(EnsembleError, match=r"lone: no finished runs inside; runs without "
                       r"validation predictions: 20240101-000000-s9: training diverged before"):
        expand_candidates([alone])
    (early / "metrics.json").unlink()  # killed in its first epoch
    with pytest.raises(EnsembleError, match="has not finished its first epoch"):
        expand_candidates([early])


@pytest.mark.parametrize("name", ["val_preds.npy", "val_rows.npy"])
def test_damaged_prediction_files_are_named_in_the_report(runs_root: Path, name: str):
    run = runs_root / "alpha" / "20240101-000000-s1"
    (run / name).write_bytes(b"garbage")
    listed = next(r for r in list_runs(runs_root) if r["path"] == str(run))
    assert listed["score"] is not None  # the listing does not need them
    text = write_report(run).read_text()
    assert f"pred_vs_true.png not drawn: {run / name}: not a readable .npy file" in text


def test_row_indices_that_are_not_integers_are_refused(runs_root: Path):
    run = runs_root / "alpha" / "20240101-000000-s1"
    np.save(run / "val_rows.npy", np.load(run / "val_rows.npy").astype(np.float64))
    assert "expected a 1-D array of row indices" in write_report(run).read_text()


@pytest.mark.parametrize("dtype", [bool, "<U3"])
def test_predictions_that_are_not_numbers_are_refused(runs_root: Path, dtype):
    """A val_preds.npy of the right shape holding bools or text (damaged, or written by hand)
    is named as such in the report, not plotted as if it held predictions."""
    run = runs_root / "alpha" / "20240101-000000-s1"
    preds = np.load(run / "val_preds.npy")
    np.save(run / "val_preds.npy", (preds > 0).astype(dtype))
    text = write_report(run).read_text()
    assert (f"pred_vs_true.png not drawn: {run / 'val_preds.npy'}: expected a 2-D array of "
            f"predictions (rows, targets), got {np.dtype(dtype)} {preds.shape}") in text
    assert not (run / "report" / "pred_vs_true.png").exists()


def test_experiment_filter(runs_root: Path):
    assert {r["experiment"] for r in list_runs(runs_root, experiment="alpha")} == {"alpha"}
    with pytest.raises(KitError, match="alpha"):
        list_runs(runs_root, experiment="gamma")
    assert list_runs(runs_root / "nowhere") == []


def test_experiment_filter_is_the_experiment_that_trained_the_run(runs_root: Path):
    """A --run-dir under another experiment's folder: listed by the experiment that trained it
    (its config's name), as its experiment column says."""
    moved = runs_root / "alpha" / "elsewhere"
    (runs_root / "beta" / "20240103-000000-s3").rename(moved)
    assert {r["path"] for r in list_runs(runs_root, experiment="beta")} == {str(moved)}
    assert str(moved) not in {r["path"] for r in list_runs(runs_root, experiment="alpha")}
    (runs_root / "beta").rmdir()  # no folder of its name, still its runs
    (row,) = list_runs(runs_root, experiment="beta")
    assert row["experiment"] == "beta" and row["path"] == str(moved)


def test_oracle_fraction_is_computed_on_the_runs_rows(runs_root: Path, tmp_path: Path):
    spec = load_spec(str(tmp_path / "data" / "tiny.toml"))
    valid = pl.read_parquet(tmp_path / "data" / "valid.parquet")
    oracle = pl.read_parquet(tmp_path / "data" / "valid_oracle.parquet")
    fractions = {}
    for run in list_runs(runs_root):
        rows = np.load(Path(run["path"]) / "val_rows.npy")
        truth = valid.select(spec.targets).to_numpy()[rows]
        direct = evaluate(spec, truth, oracle.select(spec.outputs).to_numpy()[rows]).score
        assert run["oracle_score"] == pytest.approx(direct, abs=1e-12)
        assert run["oracle_fraction"] == pytest.approx(run["score"] / direct, abs=1e-12)
        fractions[run["run_id"]] = run["oracle_score"]
    # the run scored on two sequences only compares with the oracle on those two
    assert fractions["20240101-000000-s1"] != fractions["20240102-000000-s2"]


def test_oracle_fraction_of_an_error_metric_is_below_one_for_a_worse_model(tmp_path: Path):
    # rmse: the oracle's noise is 1.0, a run with noise 2.0 is worse, so its fraction is < 1
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    make_run(tmp_path / "runs", "e", "20240101-000000-s1", valid, spec_path, seed=1, noise=2.0)
    (run,) = list_runs(tmp_path / "runs")
    assert run["score"] > run["oracle_score"]  # a larger error than the oracle's
    assert run["oracle_fraction"] == pytest.approx(run["oracle_score"] / run["score"], abs=1e-12)
    assert run["oracle_fraction"] < 1.0
    # sorted best first by score and by oracle fraction alike (the fraction is already
    # higher-is-better: it must not be flipped as the error is)
    make_run(tmp_path / "runs", "e", "20240101-000000-s2", valid, spec_path, seed=2, noise=4.0)
    runs = list_runs(tmp_path / "runs")
    best = min(runs, key=lambda r: r["score"])["run_id"]
    assert sort_runs(runs, "score")[0]["run_id"] == best
    assert sort_runs(runs, "oracle_fraction")[0]["run_id"] == best


def test_no_oracle_file_means_no_fraction(tmp_path: Path):
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec, oracle=False)
    make_run(tmp_path / "runs", "alpha", "r1", valid, spec_path)
    (run,) = list_runs(tmp_path / "runs")
    assert run["oracle_fraction"] is None and run["oracle_score"] is None
    assert run["score"] is not None


def test_output_is_json_serialisable(runs_root: Path):
    runs = list_runs(runs_root)
    again = json.loads(json.dumps(runs, allow_nan=False))
    assert again == runs


def _column(table: str, name: str) -> list[str]:
    lines = table.splitlines()
    index = lines[0].split().index(name)
    return [line.split()[index] for line in lines[2:]]


def test_format_runs_sorts_by_any_column(runs_root: Path):
    runs = list_runs(runs_root)
    table = format_runs(runs)  # score, best first
    header = table.splitlines()[0].split()
    for column in ("experiment", "run_id", "score", "t0", "t1", "oracle_fraction", "wall_s"):
        assert column in header
    ids = _column(table, "run_id")
    by_score = sorted(runs, key=lambda r: r["score"], reverse=True)
    assert ids == [r["run_id"] for r in by_score]

    fastest = _column(format_runs(runs, sort="wall_s", descending=False), "run_id")
    assert fastest == ["20240102-000000-s2", "20240103-000000-s3", "20240101-000000-s1"]

    by_t1 = _column(format_runs(runs, sort="t1", descending=False), "run_id")
    assert by_t1 == [r["run_id"] for r in sorted(runs, key=lambda r: r["per_target"]["t1"])]

    by_name = _column(format_runs(runs, sort="experiment", descending=False), "experiment")
    assert by_name == ["alpha", "alpha", "beta"]


def test_format_runs_puts_missing_values_last(runs_root: Path):
    runs = list_runs(runs_root)
    for descending in (True, False):
        params = _column(format_runs(runs, sort="params", descending=descending), "params")
        assert params[-1] == "-"


def test_runs_without_the_sorted_column_follow_in_score_order():
    """A run without the column sorted by (no oracle, an older run's missing params) went last
    in list order, in the table and --json alike, instead of best score first."""
    def run(name, score, params=None):
        return {"experiment": "e", "run_id": name, "score": score, "per_target": {"t0": score},
                "params": params, "higher_is_better": True}

    runs = [run("a", 0.1), run("b", 0.3, params=5), run("c", 0.4), run("d", 0.2, params=9)]
    for descending in (True, False):
        order = [r["run_id"] for r in sort_runs(runs, "params", descending=descending)]
        assert order == (["d", "b"] if descending else ["b", "d"]) + (
            ["c", "a"] if descending else ["a", "c"])


def test_bad_sort_key_names_the_allowed_ones(runs_root: Path):
    with pytest.raises(KitError, match=r"score.*wall_s"):
        format_runs(list_runs(runs_root), sort="speed")


def test_report_writes_plots_and_summary(runs_root: Path, tmp_path: Path):
    run = runs_root / "alpha" / "20240101-000000-s1"
    path = write_report(run)
    assert path == run / "report" / "report.md"
    for name in ("curves.png", "pred_vs_true.png"):
        data = (path.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    text = path.read_text()
    score = json.loads((run / "metrics.json").read_text())["score"]
    assert f"{score:.4f}" in text
    assert "gru (hidden 32)" in text and "of the oracle" in text
    assert "](curves.png)" in text and "](pred_vs_true.png)" in text

    (run / "best.pt").write_bytes(b"")  # its checkpoint, as kit pack takes a run by it
    assert write_report(run / "best.pt", tmp_path / "by-checkpoint").name == "report.md"
    other = write_report(run, tmp_path / "elsewhere")
    assert other == tmp_path / "elsewhere" / "report.md"
    assert (tmp_path / "elsewhere" / "curves.png").exists()


def test_curves_mark_the_swa_average_when_it_won(runs_root: Path, monkeypatch):
    """best.pt holds the weight average: no epoch of the curve is marked as the best."""
    run = runs_root / "alpha" / "20240101-000000-s1"
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"best_epoch": "swa", "score": 0.9}))
    drawn, marker = [], reports._best_marker
    monkeypatch.setattr(reports, "_best_marker", lambda *a: drawn.append(marker(*a)) or drawn[-1])
    assert "Best epoch **swa**" in write_report(run).read_text()
    assert drawn == [("score", 0.9, "best: SWA average, val 0.9000")]
    assert marker(3, 0.5) == ("epoch", 3, "best epoch 3") and marker(None, None) is None


def test_report_plots_on_the_trained_spec_without_loading_best_pt(runs_root: Path,
                                                                  tmp_path: Path, monkeypatch):
    """The columns of the predictions are the trained spec's (spec.json; the spec file was
    reordered since); best.pt, damaged here, is not needed for the scatter."""
    from kit.export import frozen

    run = runs_root / "alpha" / "20240101-000000-s1"
    (run / "spec.json").write_text(json.dumps(small_spec().to_dict()))
    (tmp_path / "data" / "tiny.toml").write_text(tomli_w.dumps(
        small_spec(targets=["t1", "t0"]).to_dict()))
    (run / "best.pt").write_bytes(b"not a checkpoint")
    drawn = []
    monkeypatch.setattr(reports, "_plot_pred_vs_true",
                        lambda pred, truth, spec, *rest: drawn.append(spec.outputs))
    assert "pred_vs_true.png not drawn" not in write_report(run).read_text()
    assert drawn == [("t0", "t1")]
    # a run from before spec.json: best.pt's copy, and the spec file when that cannot be read
    (run / "spec.json").unlink()
    real = frozen.trained_spec
    monkeypatch.setattr(frozen, "trained_spec", lambda run: small_spec())
    write_report(run)
    monkeypatch.setattr(frozen, "trained_spec", real)  # raises on the damaged best.pt
    write_report(run)
    assert drawn[1:] == [("t0", "t1"), ("t1", "t0")]
    (run / "spec.json").write_text("{torn")  # a damaged record is named
    assert "spec.json: not readable JSON" in write_report(run).read_text()


def test_report_of_unfinished_run_and_hexbin(runs_root: Path, monkeypatch):
    monkeypatch.setattr(reports, "HEXBIN_ABOVE", 10)
    path = write_report(runs_root / "beta" / "20240103-000000-s3")
    assert "not finished" in path.read_text()
    assert (path.parent / "pred_vs_true.png").read_bytes().startswith(PNG_MAGIC)


def test_report_without_valid_file_still_draws_curves(runs_root: Path, tmp_path: Path):
    (tmp_path / "data" / "valid.parquet").unlink()
    path = write_report(runs_root / "alpha" / "20240101-000000-s1")
    assert (path.parent / "curves.png").exists()
    assert not (path.parent / "pred_vs_true.png").exists()
    assert "pred_vs_true.png not drawn" in path.read_text()


def test_report_next_state_spec(tmp_path: Path):
    spec = small_spec(protocol="next-state", targets=[], tail=1)
    valid, spec_path = write_data(tmp_path / "data", spec)
    run = make_run(tmp_path / "runs", "ns", "r1", valid, spec_path, noise=0.3)
    (listed,) = list_runs(tmp_path / "runs")
    assert listed["oracle_fraction"] is not None
    path = write_report(run)
    assert (path.parent / "pred_vs_true.png").stat().st_size > 10_000


def test_report_needs_a_history(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(KitError, match="history.jsonl"):
        write_report(tmp_path / "run")
    (tmp_path / "run" / "history.jsonl").write_text("")
    with pytest.raises(KitError, match="no epoch"):
        write_report(tmp_path / "run")
    with pytest.raises(KitError, match="no such run directory"):
        write_report(tmp_path / "missing")


def test_report_names_what_it_was_given_instead_of_a_run(tmp_path: Path):
    """A run's file, a run's config.toml, an experiment file and runs/ itself were answered
    "no such run directory", "no [[members]]" and "no history.jsonl" (r269)."""
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    run = make_run(tmp_path / "runs", "alpha", "r1", valid, spec_path)
    with pytest.raises(KitError, match=rf"metrics.json: a file; kit report takes a run folder: "
                       rf"`kit report {re.escape(str(run))}`"):
        write_report(run / "metrics.json")
    with pytest.raises(KitError, match=rf"config.toml: run {re.escape(str(run))}'s config, not "
                       rf"an ensemble file: `kit report {re.escape(str(run))}`"):
        write_ensemble_report(run / "config.toml")
    (tmp_path / "exp.toml").write_text('spec = "predictorium"\n[train]\nepochs = 1\n')
    with pytest.raises(KitError, match="exp.toml: no \\[\\[members\\]\\], so not an "
                       "ensemble file"):
        write_ensemble_report(tmp_path / "exp.toml")
    with pytest.raises(KitError, match="a folder of experiments' runs; kit report draws one "
                       "run"):
        write_report(tmp_path / "runs")


def _relative_data_run(checkout: Path) -> Path:
    """A checkout whose run names its data relative to the checkout (data/valid.parquet)."""
    spec = small_spec()
    valid, spec_path = write_data(checkout / "data", spec)
    run = make_run(checkout / "runs", "alpha", "20240101-000000-s1", valid, spec_path)
    config = (run / "config.toml").read_text().replace(str(valid), "data/valid.parquet")
    (run / "config.toml").write_text(config)
    return run


def test_a_run_is_reported_on_its_own_checkouts_data(tmp_path: Path, monkeypatch):
    run = _relative_data_run(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a")
    (own,) = list_runs(Path("runs"))
    own_report = write_report(run, tmp_path / "own").read_text()
    # another checkout holds other rows under the same relative names
    other = tmp_path / "b" / "data"
    other.mkdir(parents=True)
    for name in ("valid.parquet", "valid_oracle.parquet"):
        frame = pl.read_parquet(tmp_path / "a" / "data" / name)
        frame.with_columns(pl.col("t0") * -1.0, pl.col("t1").reverse()).write_parquet(other / name)
    monkeypatch.chdir(tmp_path / "b")
    (seen,) = list_runs(run.parent.parent)
    assert seen["oracle_score"] == own["oracle_score"] is not None
    assert seen["oracle_fraction"] == own["oracle_fraction"]
    assert write_report(run, tmp_path / "seen").read_text() == own_report
    monkeypatch.chdir(tmp_path)  # no data/ here at all: still the run's own file
    assert list_runs(run.parent.parent)[0]["oracle_score"] == own["oracle_score"]


def test_an_out_of_fold_group_is_flagged_when_its_folds_data_changed(tmp_path: Path):
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    folds = [make_run(root, "alpha", f"20240101-000000-s42-fold{i}", valid, spec_path, seed=42)
             for i in (1, 2)]
    group = root / "alpha" / "20240101-000000-s42-oof"
    group.mkdir()
    (group / "metrics.json").write_text(json.dumps({
        "finished": True, "kind": "oof", "folds": 2, "score": 0.1, "per_target": {},
        "runs": [f"runs/alpha/{f.name}" for f in folds]}))  # relative, as recipe.py writes
    row = next(r for r in list_runs(root) if r["run_id"] == group.name)
    assert "data_changed" not in row and row["seed"] == 42 and row["epochs"] is None
    for fold in folds:  # the folds recorded another file's digest: the data changed since
        metrics = json.loads((fold / "metrics.json").read_text())
        metrics["data_sha256"] = {str(valid): "0" * 64}
        (fold / "metrics.json").write_text(json.dumps(metrics))
    rows = {r["run_id"]: r for r in list_runs(root)}
    assert rows[group.name]["data_changed"] == [str(valid)]
    for name in (group.name, folds[0].name):  # no oracle figures beside a stale score
        assert rows[name]["oracle_score"] is None and rows[name]["oracle_fraction"] is None


def test_a_config_edited_to_name_another_file_is_a_data_change(tmp_path: Path):
    """config.toml edited to name another valid file of the same size: kit runs showed the
    other file's oracle on the run's row numbers, and kit report drew the run's predictions
    against the other file's targets, without a word. The report's old scatter stayed too."""
    from kit.run_record import file_sha256

    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    other, _ = write_data(tmp_path / "other", spec)
    root = tmp_path / "runs"
    run = make_run(root, "alpha", "20240101-000000-s1", valid, spec_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["data_sha256"] = {str(valid): file_sha256(str(valid), None)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = list_runs(root)[0]
    assert "data_changed" not in row and row["oracle_score"] is not None
    report = write_report(run)
    assert (report.parent / "pred_vs_true.png").is_file()
    _edit_config(run, valid=str(other))
    row = list_runs(root)[0]
    assert row["data_changed"] == [f"{other} (named by config.toml now, not a file the run "
                                   "recorded)"]
    assert row["oracle_score"] is None and row["oracle_fraction"] is None
    text = write_report(run).read_text()
    assert "pred_vs_true.png not drawn" in text and "put its config.toml back" in text
    assert not (report.parent / "pred_vs_true.png").exists()
    assert "put its config.toml back" in format_runs(list_runs(root))


def test_an_out_of_fold_group_takes_its_folds_config_spec_and_data(tmp_path: Path):
    """The -oof folder has no config.toml: its validated set, the digest of the train file and
    the metric's direction (rmse: lower is better) come from its fold runs."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    folds = [make_run(root, "alpha", f"20240101-000000-s42-fold{i}of2", valid, spec_path,
                      train=valid) for i in (1, 2)]
    for i, fold in enumerate(folds):  # as a fold run records them
        config = (fold / "config.toml").read_text().replace("[data]", f"[data]\nfold = [2, {i}]")
        (fold / "config.toml").write_text(config)
        metrics = json.loads((fold / "metrics.json").read_text())
        metrics["data_sha256"] = {str(valid): "a" * 64}
        (fold / "metrics.json").write_text(json.dumps(metrics))
    make_run(root, "alpha", "20240102-000000-s1", valid, spec_path, noise=0.1)  # the best
    group = root / "alpha" / "20240101-000000-s42-oof"
    group.mkdir()
    (group / "metrics.json").write_text(json.dumps({
        "finished": True, "kind": "oof", "folds": 2, "score": 50.0, "per_target": {},
        "runs": [f"runs/alpha/{f.name}" for f in folds]}))
    runs = list_runs(root)
    row = next(r for r in runs if r["run_id"] == group.name)
    assert row["validated"] == "oof 2 folds of valid.parquet"
    assert row["validated_sha256"] == "a" * 64 and row["higher_is_better"] is False
    assert [r["run_id"] for r in sort_runs(runs)][-1] == group.name  # the worst rmse: last
    assert [r["run_id"] for r in list_runs(root, experiment="alpha")] == [r["run_id"]
                                                                          for r in runs]


def test_report_of_an_experiment_folder_says_to_pick_a_run(runs_root: Path):
    with pytest.raises(KitError, match="an experiment's folder.*kit runs -e alpha"):
        write_report(runs_root / "alpha")
    (runs_root / "ensembles" / "mix").mkdir(parents=True)  # an ensemble report's folder
    with pytest.raises(KitError, match=r"experiments with runs: \['alpha', 'beta'\]"):
        list_runs(runs_root, experiment="gamma")


def test_a_run_keeps_its_metric_direction_and_oracle_when_its_spec_file_is_gone(tmp_path: Path):
    """The direction came from the spec file the config names (moved, edited or relative to
    another folder since): unknown read as higher-is-better, so rmse runs listed worst first
    with no oracle fraction, though spec.json keeps the spec the run trained with."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    for seed, noise in ((1, 2.0), (2, 0.5)):
        run = make_run(root, "e", f"2024010{seed}-000000-s{seed}", valid, spec_path, seed=seed,
                       noise=noise)
        (run / "spec.json").write_text(json.dumps(spec.to_dict()))
    spec_path.rename(tmp_path / "moved.toml")
    runs = list_runs(root)
    assert [r["higher_is_better"] for r in runs] == [False, False]
    assert all(r["oracle_fraction"] is not None for r in runs)
    assert [r["seed"] for r in sort_runs(runs, "score")] == [2, 1]
    for run in root.glob("e/*"):  # neither spec.json nor the spec file: unknown, said so
        (run / "spec.json").unlink()
    assert [r["higher_is_better"] for r in list_runs(root)] == [None, None]


def test_rows_past_the_end_of_a_changed_valid_file_fail_no_listing(runs_root: Path):
    """A run of an older kit (no digests) whose valid file was made smaller since: the oracle
    was indexed before the rows were checked, and the IndexError ended `kit runs`."""
    run = runs_root / "alpha" / "20240101-000000-s1"
    rows = np.load(run / "val_rows.npy")
    rows[-1] = 10**6
    np.save(run / "val_rows.npy", rows)
    runs = list_runs(runs_root)
    assert len(runs) == 3
    assert next(r for r in runs if r["path"] == str(run))["oracle_fraction"] is None
    report = write_report(run).read_text()
    assert "val_rows.npy points past the end" in report


def test_two_specs_of_one_name_keep_their_own_oracle_scores(tmp_path: Path):
    """The oracle's cache key named the spec but not its file: a copy of a preset with its
    metric changed took the first one's oracle score (a Pearson oracle over an rmse score)."""
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    rmse_path = tmp_path / "data" / "tiny-rmse.toml"
    rmse_path.write_text(tomli_w.dumps(small_spec(metric={"name": "rmse"}).to_dict()))
    root = tmp_path / "runs"
    make_run(root, "a", "20240101-000000-s1", valid, spec_path, seed=1)
    make_run(root, "b", "20240101-000000-s1", valid, rmse_path, seed=1)
    together = {r["experiment"]: r["oracle_score"] for r in list_runs(root)}
    alone = {e: list_runs(root, experiment=e)[0]["oracle_score"] for e in ("a", "b")}
    assert together == alone and together["a"] != together["b"]


def test_a_folder_in_place_of_a_run_file_fails_no_listing(runs_root: Path):
    run = runs_root / "beta" / "20240103-000000-s3"
    (run / "history.jsonl").unlink()
    (run / "history.jsonl").mkdir()
    assert len(list_runs(runs_root)) == 3
    (run / "config.toml").unlink()
    (run / "config.toml").mkdir()
    runs = list_runs(runs_root)
    assert "not a file" in next(r for r in runs if r["path"] == str(run))["config_error"]


def test_hand_edited_stop_reasons_read_as_missing(runs_root: Path):
    run = runs_root / "alpha" / "20240101-000000-s1"
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"pruned": float("nan"),
                                                            "diverged": 3}))
    listed = next(r for r in list_runs(runs_root) if r["path"] == str(run))
    assert "pruned" not in listed and "diverged" not in listed
    json.dumps(list_runs(runs_root), allow_nan=False)  # --json


def test_a_file_given_as_the_runs_folder_is_refused(tmp_path):
    """`kit runs --runs-dir README.md` said "no runs" and that README.md did not exist."""
    (tmp_path / "README.md").write_text("x")
    out = run_cli("runs", "--runs-dir", tmp_path / "README.md", expect=2).output
    assert "README.md is a file, not a folder of runs" in out


def test_a_run_right_under_the_runs_folder_is_listed(runs_root: Path):
    """`kit train --run-dir rd/myrun` puts a run where experiments' folders go: `kit runs
    --runs-dir rd` said "no runs"."""
    (runs_root / "alpha" / "20240101-000000-s1").rename(runs_root / "myrun")
    runs = list_runs(runs_root)
    assert len(runs) == 3 and any(r["path"] == str(runs_root / "myrun") for r in runs)
    assert list_runs(runs_root, experiment="alpha")[0]["path"] in {
        str(runs_root / "myrun"), str(runs_root / "alpha" / "20240102-000000-s2")}


@pytest.mark.parametrize("project, run", [("proj", "runs/EXP/ID"), ("proj", "runs/myrun"),
                                          ("proj", "runs/runs/ID"), ("runs", "runs/myrun")])
def test_a_runs_relative_data_path_is_read_in_its_own_project(tmp_path, monkeypatch, project,
                                                              run):
    """A run right under runs/ (kit train --run-dir runs/myrun) looked one folder too high
    first: a data/ beside the project was taken for the run's (its content "changed", the
    selection refused the run). runs/runs/ID is an experiment named runs, or a run right
    under the runs/ of a project folder named runs."""
    from kit.run_record import data_file_of

    for folder in (tmp_path / project / "data", tmp_path / "data"):  # the project's, a decoy
        folder.mkdir(parents=True)
        (folder / "valid.parquet").write_text(str(folder))
    (tmp_path / project / run).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = data_file_of(tmp_path / project / run, "data/valid.parquet")
    assert found == tmp_path / project / "data" / "valid.parquet"


def _edit_config(run: Path, **data) -> None:
    import tomllib

    config = tomllib.loads((run / "config.toml").read_text())
    config["data"] |= data
    (run / "config.toml").write_text(tomli_w.dumps(config))


def test_held_out_parts_and_folds_of_other_seeds_are_other_sets_of_rows(tmp_path):
    """The label ignored data.split_seed and the seed that places folds: disjoint validation
    rows read as one set, and no note said the scores do not compare."""
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    for i, seed in enumerate((1, 2)):
        held = make_run(root, "held", f"2024010{i}-000000-s1", valid, spec_path, seed=1,
                        train=valid)
        _edit_config(held, split="random", valid_fraction=0.25, split_seed=seed)
        fold = make_run(root, "fold", f"2024010{i}-000000-s{seed}-fold1of2", valid, spec_path,
                        seed=seed, train=valid)
        _edit_config(fold, fold=[2, 0], split="group", group="user")
    table = format_runs(list_runs(root))
    for label in ("random 0.25 (split_seed 1) of valid.parquet",
                  "random 0.25 (split_seed 2) of valid.parquet",
                  "fold 1/2 by user (seed 1) of valid.parquet",
                  "fold 1/2 by user (seed 2) of valid.parquet"):
        assert label in table, table
    assert "scored on 4 different sets of rows" in table


def test_runs_of_two_metrics_in_one_listing_are_said_not_to_compare(tmp_path):
    root = tmp_path / "runs"
    for name, metric in (("pearson", {}), ("rmse", {"metric": {"name": "rmse"}})):
        valid, spec_path = write_data(tmp_path / name, small_spec(**metric))
        make_run(root, name, "20240101-000000-s1", valid, spec_path)
    table = format_runs(list_runs(root))
    assert "scored with 2 metrics (rmse, weighted_pearson): compare scores of one metric" in \
        table


def test_a_report_of_dot_in_a_run_names_the_run(tmp_path, monkeypatch):
    """`kit report .` inside a run: the title and plots named the run id "" (Path('.').name)."""
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    run = make_run(tmp_path / "runs", "alpha", "20240101-000000-s1", valid, spec_path)
    monkeypatch.chdir(run)
    report = write_report(Path("."))
    assert report.read_text().splitlines()[0] == "# Run alpha / 20240101-000000-s1"


def test_runs_of_two_competitions_list_in_two_tables_with_their_files_told_apart(tmp_path):
    """Runs of a 2-target and of a 3-output spec: every row carried the other's empty columns,
    and both valid.parquet files (two folders) were one label whose "sha256 differs"."""
    root = tmp_path / "runs"
    two, spec_two = write_data(tmp_path / "synth", small_spec())
    three, spec_three = write_data(tmp_path / "synth-other",
                                   small_spec(targets=["a", "b", "c"]))
    make_run(root, "two", "20240101-000000-s1", two, spec_two)
    make_run(root, "three", "20240101-000000-s1", three, spec_three)
    unscored = make_run(root, "two", "20240102-000000-s2", two, spec_two, finished=False)
    (unscored / "history.jsonl").write_text("")
    (unscored / "metrics.json").unlink(missing_ok=True)
    table = format_runs(list_runs(root))
    heads = [line for line in table.splitlines() if line.startswith("experiment")]
    assert sorted(" a " in h and " t0 " not in h for h in heads) == [False, True]
    assert sorted(" t0 " in h and " a " not in h for h in heads) == [False, True]
    assert "synth/valid.parquet" in table and "synth-other/valid.parquet" in table
    assert "holds other rows in some runs" not in table
    # a derived label names the folder too ("first 5 steps of valid.parquet" kept none)
    cut = make_run(root, "three", "20240101-000000-s9", three, spec_three, seed=9)
    _edit_config(cut, seq_len=5)
    metrics = json.loads((cut / "metrics.json").read_text())
    (cut / "metrics.json").write_text(json.dumps({**metrics, "valid_truncated": True}))
    assert "first 5 steps of synth-other/valid.parquet" in format_runs(list_runs(root))
    shutil.rmtree(cut)
    table = format_runs(list_runs(root))
    (of_two,) = [t for t in table.split("\n\n") if " t0 " in t.splitlines()[0]]
    assert "20240102-000000-s2" in of_two  # an unscored run stays with its experiment's
    # sorted by one table's output: that table by it, the other by score (it raised), and
    # the table in --json's order
    make_run(root, "two", "20240105-000000-s5", two, spec_two, seed=5, noise=0.1)
    for descending in (True, False):
        rows = list_runs(root)
        table = format_runs(rows, sort="a", descending=descending)
        listed = [r["run_id"] for r in sort_runs(rows, "a", descending)
                  if r["experiment"] == "two"]
        (of_two,) = [t for t in table.split("\n\n") if " t0 " in t.splitlines()[0]]
        shown = [line.split()[1] for line in of_two.splitlines()[2:]
                 if line.startswith("two ")]
        assert shown == listed, (shown, listed)
        assert shown[0 if descending else -2] == "20240105-000000-s5"  # the best score
    with pytest.raises(KitError, match="cannot sort by 'nope'"):
        format_runs(list_runs(root), sort="nope")
    # a run whose validation file is gone keeps its plain label (a TypeError ended the table)
    make_run(root, "two", "20240103-000000-s3", two, spec_two)
    gone = tmp_path / "gone" / "valid.parquet"
    gone.parent.mkdir()
    shutil.copy(two, gone)
    moved = make_run(root, "two", "20240104-000000-s4", gone, spec_two)
    gone.unlink()
    assert "20240104-000000-s4" in format_runs(list_runs(root)) and moved.is_dir()


def _two_runs_on_one_file(tmp_path: Path) -> list[dict]:
    """The listing of two runs of experiment e, seeds 1 and 2, on one valid file."""
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    for i in (1, 2):
        make_run(root, "e", f"2024010{i}-000000-s{i}", valid, spec_path, seed=i)
    return list_runs(root)


def test_one_file_rewritten_between_runs_is_said_to_hold_other_rows(tmp_path):
    """Same label, same file, two recorded sha256s: the file changed between the runs."""
    rows = _two_runs_on_one_file(tmp_path)
    for i, row in enumerate(rows):
        row["validated_sha256"] = f"{i}" * 64
    table = format_runs(rows)
    assert ("scored on 2 different sets of rows (column validated): compare scores within one "
            "set; valid.parquet holds other rows in some runs") in table


def test_a_run_killed_with_a_new_best_pending_lists_what_best_pt_holds(runs_root: Path):
    """Killed between a new best's history line and last.pt: .best-pending-2/ holds epoch 2's
    best, best.pt still epoch 1's. kit runs and the report said epoch 2 (the last flagged
    line) while kit pack packed epoch 1."""
    run = runs_root / "beta" / "20240103-000000-s3"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    (run / ".best-pending-2").mkdir()
    row = next(r for r in list_runs(runs_root) if r["path"] == str(run))
    assert row["best_epoch"] == 1 and row["score"] == pytest.approx(history[0]["val_score"])
    note = (f"note: {run}: epoch 2's new best was not yet in best.pt when the run stopped; "
            "best.pt, shown here, holds epoch 1; --resume completes it")
    assert note in format_runs(list_runs(runs_root))
    assert "holds epoch 1; --resume completes it" in write_report(run).read_text()


def test_cli_report_of_a_run_writes_into_the_out_folder_not_the_runs_own(runs_root: Path,
                                                                         tmp_path: Path):
    run = runs_root / "alpha" / "20240101-000000-s1"
    out = run_cli("report", run, "--out", tmp_path / "elsewhere").output
    assert str(tmp_path / "elsewhere" / "report.md") in out
    assert (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (run / "report").exists()


def test_cli_report_under_a_file_says_a_file_stands_where_a_folder_is_needed(runs_root: Path,
                                                                            tmp_path: Path):
    run = runs_root / "alpha" / "20240101-000000-s1"
    (tmp_path / "plain").write_text("a file")
    result = run_cli("report", run, "--out", tmp_path / "plain" / "x", expect=2)
    assert "Not a directory (a file stands where a folder is needed in that path)" in (
        result.stderr)
    assert result.stderr.startswith(f"error: {tmp_path / 'plain'}")


def _pin_history_scores(run: Path, scores: list[float], flags: list[bool] | None) -> None:
    """Rewrite a run's history with these val_scores; best flags as given (None: no flags)."""
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for i, (record, score) in enumerate(zip(history, scores, strict=True)):
        record["val_score"] = score
        record.pop("best", None)
        if flags is not None:
            record["best"] = flags[i]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))


def test_a_killed_error_metric_run_takes_its_lowest_or_flagged_epoch_as_the_best(tmp_path):
    """A killed rmse run (no metrics.json): without best flags the lowest val_score is the
    best; with its spec unknown the trainer's flags still say which epoch was the best."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    run = make_run(root, "e", "20240103-000000-s3", valid, spec_path, seed=3, finished=False)
    _pin_history_scores(run, [0.5, 0.2, 0.9], None)  # an older kit's or hand-edited history
    (row,) = list_runs(root)
    assert row["higher_is_better"] is False
    assert (row["best_epoch"], row["score"]) == (2, 0.2)
    _pin_history_scores(run, [0.5, 0.2, 0.9], [True, True, False])  # as the trainer flags
    spec_path.rename(tmp_path / "moved.toml")  # no spec.json either: the direction unknown
    (row,) = list_runs(root)
    assert row["higher_is_better"] is None
    assert (row["best_epoch"], row["score"]) == (2, 0.2)


def test_a_nan_score_and_a_perfect_error_run_show_dashes_and_json_stays_valid(tmp_path):
    """A NaN score in metrics.json reads as missing (the table showed nan, --json raised); a
    run with zero rmse has no oracle fraction (oracle / 0), not nan%."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    root = tmp_path / "runs"
    make_run(root, "e", "20240101-000000-s1", valid, spec_path, seed=1, noise=0.0)
    make_run(root, "e", "20240102-000000-s2", valid, spec_path, seed=2, noise=0.5)
    broken = make_run(root, "e", "20240103-000000-s3", valid, spec_path, seed=3, noise=2.0)
    metrics = json.loads((broken / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps(metrics | {"score": float("nan")}))
    table = format_runs(list_runs(root))
    cells = {run_id: (score, fraction) for run_id, score, fraction in zip(
        _column(table, "run_id"), _column(table, "score"), _column(table, "oracle_fraction"),
        strict=True)}
    assert cells["20240103-000000-s3"][0] == "-"
    assert cells["20240101-000000-s1"] == ("0.0000", "-")
    assert cells["20240102-000000-s2"][1].endswith("%") and "nan" not in table
    listed = json.loads(run_cli("runs", "--runs-dir", root, "--json").stdout)
    by_id = {r["run_id"]: r for r in listed}
    assert by_id["20240103-000000-s3"]["score"] is None
    assert by_id["20240101-000000-s1"]["score"] == 0.0
    assert by_id["20240101-000000-s1"]["oracle_fraction"] is None


def test_table_cells_are_formatted_per_column():
    """Fractions as percents to a tenth, scores to 4 decimals, parameters with thousands
    separators, finished as yes/no, wall times as s, m+s or h+m."""
    def run(name, score, wall_s, finished):
        return {"experiment": "e", "run_id": name, "score": score, "per_target": {"t0": score},
                "oracle_fraction": 0.8765, "best_epoch": 3, "epochs": 3, "wall_s": wall_s,
                "params": 1234567, "seed": 1, "finished": finished, "higher_is_better": True}

    runs = [run("a", 0.123456, 125.0, True), run("b", 0.1, 3600.0, False),
            run("c", 0.05, 45.25, True)]
    table = format_runs(runs)
    assert _column(table, "run_id") == ["a", "b", "c"]
    assert _column(table, "oracle_fraction") == ["87.6%"] * 3
    assert _column(table, "score") == ["0.1235", "0.1000", "0.0500"]
    assert _column(table, "t0") == ["0.1235", "0.1000", "0.0500"]
    assert _column(table, "params") == ["1,234,567"] * 3
    assert _column(table, "finished") == ["yes", "no", "yes"]
    assert _column(table, "wall_s") == ["2m05s", "1h00m", "45.2s"]


def test_sorting_by_best_epoch_puts_the_swa_average_after_the_numbers():
    def run(name, score, best_epoch):
        return {"experiment": "e", "run_id": name, "score": score, "per_target": {"t0": score},
                "best_epoch": best_epoch, "higher_is_better": True}

    runs = [run("a", 0.1, 3), run("b", 0.3, "swa"), run("c", 0.2, 5)]
    assert [r["best_epoch"] for r in sort_runs(runs, "best_epoch", False)] == [3, 5, "swa"]
    assert [r["best_epoch"] for r in sort_runs(runs, "best_epoch", True)] == ["swa", 5, 3]
    table = format_runs(runs, sort="best_epoch", descending=False)
    assert _column(table, "best_epoch") == ["3", "5", "swa"]


def test_an_older_run_without_a_digest_is_not_another_set_of_rows(tmp_path):
    """An older run recorded no sha256 of its file, a newer one did: one file, one set of
    rows, no note that the scores do not compare."""
    rows = _two_runs_on_one_file(tmp_path)
    rows[0]["validated_sha256"] = None
    rows[1]["validated_sha256"] = "a" * 64
    table = format_runs(rows)
    assert "different sets of rows" not in table and "note" not in table


def test_hidden_folders_are_not_runs_and_an_empty_experiment_folder_lists_none(runs_root: Path):
    """runs/.trash/<run> and a run folder's half-made .partial-copy are not listed; `kit runs
    -e fresh` of an experiment whose folder holds no run yet lists none (no error)."""
    before = [r["path"] for r in list_runs(runs_root)]
    source = runs_root / "alpha" / "20240101-000000-s1"
    shutil.copytree(source, runs_root / ".trash" / "old")
    shutil.copytree(source, runs_root / "alpha" / ".partial-copy")
    assert [r["path"] for r in list_runs(runs_root)] == before
    assert len(list_runs(runs_root, experiment="alpha")) == 2
    (runs_root / "fresh").mkdir()
    assert list_runs(runs_root, experiment="fresh") == []
    assert run_cli("runs", "--runs-dir", runs_root, "-e", "fresh").stdout.strip() == "no runs"


def test_report_of_a_pruned_error_metric_run_states_its_figures(tmp_path: Path):
    """report.md of a pruned rmse run: its status, epochs run of those configured, wall time,
    and per target the target's own oracle score with the fraction pointing the metric's way
    (oracle / score, as the headline's)."""
    spec = small_spec(metric={"name": "rmse"})
    valid, spec_path = write_data(tmp_path / "data", spec)
    run = make_run(tmp_path / "runs", "e", "20240101-000000-s1", valid, spec_path, seed=1,
                   noise=2.0, seconds=50.0)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"pruned": True}))
    lines = write_report(run).read_text().splitlines()
    assert ("- status: finished, stopped early: pruned by its sweep; 3 epoch(s) of 5 "
            "configured") in lines
    assert "- wall time: 2m30s" in lines
    (row,) = list_runs(tmp_path / "runs")
    assert row["oracle_fraction"] < 1.0
    headline = next(line for line in lines if line.startswith("(oracle "))
    assert headline.endswith(f": {row['oracle_fraction']:.1%} of the oracle)")
    rows = np.load(run / "val_rows.npy")
    oracle = pl.read_parquet(tmp_path / "data" / "valid_oracle.parquet")
    truth = truth_of(valid, spec, rows)
    direct = evaluate(spec, truth, oracle.select(spec.outputs).to_numpy()[rows]).per_target
    assert abs(direct["t0"] - direct["t1"]) > 1e-3  # the targets' own oracle scores differ
    for name in ("t0", "t1"):
        (line,) = [x for x in lines if x.startswith(f"| {name} |")]
        _, score, oracle_score, fraction = (c.strip() for c in line.strip("|").split("|"))
        assert float(score) == pytest.approx(metrics["per_target"][name], abs=1e-4)
        assert float(oracle_score) == pytest.approx(direct[name], abs=1e-4)
        assert float(fraction.rstrip("%")) == pytest.approx(
            100 * direct[name] / metrics["per_target"][name], abs=0.06)
        assert float(fraction.rstrip("%")) < 100


def test_a_listing_reads_each_runs_config_once(runs_root: Path, monkeypatch):
    """`kit runs --experiment` reads a run's config.toml to filter and its row needs it again
    (and the data check a third time): a project of hundreds of runs paid each read twice."""
    reads: list[Path] = []
    real = reports.read_config

    def counted(run_dir):
        reads.append(Path(run_dir))
        return real(run_dir)

    monkeypatch.setattr(reports, "read_config", counted)
    monkeypatch.setattr("kit.run_record.read_config", counted)
    runs = list_runs(runs_root, experiment="alpha")
    assert [r["run_id"] for r in runs] == ["20240101-000000-s1", "20240102-000000-s2"]
    assert sorted(reads) == sorted({Path(r) for r in reads})  # each folder once
    assert len(reads) == 3  # the filter reads every run's, beta's included
