"""r296's findings on targets and losses: a target named otherwise than its column, a loss that
leaves the predictions' scale free for a metric that scores it, the default loss unrecorded in
config.toml, and the ensemble table silent on which way its metric is good."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w

from kit.competition import load_spec, spec_from_dict
from tests.cli import run_cli

SPEC = """name = "mine"
id_col = "sid"
step_col = "t"
need_col = "scored"
features = ["f0", "f1"]
targets = ["{target}"]
seq_len = 20
warmup = 2
[metric]
name = "{metric}"
"""
EXPERIMENT = """spec = "{spec}"
[data]
train = "data/train.parquet"
valid = "data/valid.parquet"
[model]
type = "gru"
hidden = 8
layers = 1
[train]
epochs = {epochs}
warmup_epochs = 0
"""


def project(root: Path, *, target: str = "Target", metric: str = "rmse", epochs: int = 1) -> str:
    """The reviewer's competition under root (a parquet column `Target`, the spec's target
    `target`): data/, mine.toml and exp.toml; returns the experiment's path."""
    rng = np.random.default_rng(0)
    frames = []
    for s in range(12):
        f = rng.normal(size=(20, 2)).astype(np.float32)
        frames.append(pl.DataFrame({
            "sid": np.full(20, s), "t": np.arange(20), "scored": np.arange(20) >= 2,
            "f0": f[:, 0], "f1": f[:, 1],
            "Target": (f[:, 0] + 0.1 * rng.normal(size=20)).astype(np.float32)}))
    df = pl.concat(frames)
    (root / "data").mkdir()
    df.filter(pl.col("sid") < 8).write_parquet(root / "data/train.parquet")
    df.filter(pl.col("sid") >= 8).write_parquet(root / "data/valid.parquet")
    (root / "mine.toml").write_text(SPEC.format(target=target, metric=metric))
    (root / "exp.toml").write_text(EXPERIMENT.format(spec=root / "mine.toml", epochs=epochs))
    return str(root / "exp.toml")


def test_a_missing_target_names_the_files_columns_and_the_one_meant(tmp_path, monkeypatch):
    """The list was of the frame cut to the spec's columns, so `Target` was left out of it."""
    from kit.data.arrays import build_arrays
    from kit.errors import DataError

    monkeypatch.chdir(tmp_path)
    out = run_cli("train", project(tmp_path, target="target"), "-q", expect=2).output
    assert ("data/train.parquet: missing column(s) ['target']: arrays need them (the file has "
            "6 columns: ['sid', 't', 'scored', 'f0', 'f1', 'Target']); 'target': did you mean "
            "'Target'? (column names are case-sensitive: ") in out, out
    assert "Traceback" not in out
    # a frame handed in by code still lists its own columns; a near name is offered too
    spec = spec_from_dict({"name": "x", "id_col": "sid", "step_col": "t", "need_col": "scored",
                           "features": ["f0"], "targets": ["targt"]})
    frame = pl.read_parquet(tmp_path / "data/train.parquet")
    with pytest.raises(DataError, match=r"\(frame has 6 columns: .*\); 'targt': did you mean "
                                        r"'Target'\? \(rename the column"):
        build_arrays(frame, spec, ["f0"])


def test_a_scale_free_loss_for_a_metric_of_the_scale_is_warned(tmp_path, monkeypatch):
    """`loss.terms = { pearson = 1.0 }` trained an rmse competition without a word."""
    from kit.train.recipe import check_config, experiment_config

    monkeypatch.chdir(tmp_path)
    exp = project(tmp_path)

    def said(*overrides: str, metric_spec: str | None = None) -> list[str]:
        extra = [f'spec="{metric_spec}"'] if metric_spec else []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_config(experiment_config(exp, [*overrides, *extra]))
        return [str(w.message) for w in caught if "scale free" in str(w.message)]

    (note,) = said("loss.terms={pearson=1.0}")
    assert note.startswith("loss.terms = { pearson = 1.0 }: every weighted term (pearson) "
                           "leaves the predictions' scale free, but the spec's metric rmse "
                           "scores the predictions' scale"), note
    assert "loss.terms = { mse = 1.0, pearson = 0.5 }" in note
    assert said("loss.terms={pearson=1.0, mse=0.0}")  # a term at 0 fits nothing
    assert not said("loss.terms={pearson=1.0, huber=0.1}")
    assert not said()  # the default mse
    clipped = tmp_path / "clipped.toml"
    clipped.write_text(SPEC.format(target="Target", metric="weighted_pearson")
                       + "clip = [-6.0, 6.0]\n")
    (note,) = said("loss.terms={pearson=1.0}", metric_spec=str(clipped))
    assert "clips the predictions to [-6, 6]" in note
    free = tmp_path / "free.toml"
    free.write_text(SPEC.format(target="Target", metric="weighted_pearson"))
    assert not said("loss.terms={pearson=1.0}", metric_spec=str(free))
    # the command says it at train start, once
    out = run_cli("train", exp, "loss.terms={pearson=1.0}", "-q").output
    assert out.count("warning: loss.terms = { pearson = 1.0 }: every weighted term") == 1, out


def test_a_run_records_the_loss_it_trained_and_an_older_run_without_one_resumes(
        tmp_path, monkeypatch):
    """config.toml held no [loss] for the default loss; a run written so by an older kit must
    still resume, and compare as the same config as one that records it."""
    from kit.config import differences
    from kit.run_record import read_config
    from kit.train.checkpoint import load_checkpoint, save_checkpoint
    from kit.train.recipe import check_config, config_changes, experiment_config

    monkeypatch.chdir(tmp_path)
    exp = project(tmp_path, epochs=2)
    run_cli("train", exp, "--run-dir", "runs/new", "--stop-after-epochs", 1, "-q")
    new = Path("runs/new")
    loss = tomllib.loads((new / "config.toml").read_text())["loss"]
    assert loss == {"terms": {"mse": 1.0}, "huber_delta": 1.0, "target_weights": [1.0]}
    command = check_config(experiment_config(exp))
    assert config_changes(new, command) == []
    # an older kit's run: no [loss] in config.toml, nor in the text last.pt recorded
    old = Path("runs/old")
    run_cli("train", exp, "--run-dir", old, "--stop-after-epochs", 1, "-q")
    written = tomllib.loads((old / "config.toml").read_text())
    del written["loss"]
    text = tomli_w.dumps(written)  # as the older kit wrote it
    (old / "config.toml").write_text(text)
    saved = load_checkpoint(old / "last.pt", ("model",))
    save_checkpoint({**saved, "config_toml": text}, old / "last.pt")
    assert config_changes(old, command) == []
    assert differences(check_config(read_config(old)), check_config(read_config(new))) == []
    out = run_cli("train", exp, "--resume", "--run-dir", old, "-q").output
    assert "finished" in out and "differs" not in out and "not the config" not in out, out
    assert (old / "config.toml").read_text() == text  # a resume rewrites nothing
    out = run_cli("train", exp, "--resume", "--run-dir", new, "-q").output
    assert "finished" in out and "differs" not in out, out


def test_the_selection_table_and_report_name_the_metric_and_its_direction(tmp_path):
    from kit.ensemble import Candidate, ensemble_document, format_selection, select
    from kit.reports import write_ensemble_report

    rng = np.random.default_rng(3)
    truth = rng.standard_normal((2000, 2))
    for name, words in (("predictorium", "weighted_pearson (higher is better)"),
                        ("rnn-challenge", "r2 (higher is better)")):
        spec = load_spec(name)
        k = spec.n_outputs
        preds = [(truth[:, :1] + s * rng.standard_normal((2000, k))).astype(np.float32)
                 for s in (1.0, 2.0)]
        cands = [Candidate(f"c{i}", Path(f"c{i}"), [], p, np.arange(2000), Path("x"), spec)
                 for i, p in enumerate(preds)]
        y = np.repeat(truth[:, :1], k, axis=1)
        doc = ensemble_document(select(cands, y, iters=3), cands, iters=3, init_best=0)
        text = format_selection(doc)
        header = text.splitlines()[0]
        assert header.startswith(words) and "score" in header, text
        if k <= 6:  # (past six outputs a row holds their summary)
            assert len({len(line) for line in text.splitlines()[:4]}) == 1  # still aligned
    spec = spec_from_dict({"name": "e", "features": ["a"], "targets": ["y0", "y1"],
                           "metric": {"name": "mae"}})
    cands = [Candidate(f"c{i}", Path(f"c{i}"), [], (truth + s).astype(np.float32),
                       np.arange(2000), Path("x"), spec) for i, s in enumerate((0.5, 1.0))]
    doc = ensemble_document(select(cands, truth, iters=3), cands, iters=3, init_best=0)
    for m in doc["members"]:  # (report.md reads the file back, as kit report does)
        m["runs"], m["checkpoints"] = [str(tmp_path / m["name"])], {}
    path = tmp_path / "mix.toml"
    path.write_text(tomli_w.dumps(doc))
    report = write_ensemble_report(path).read_text()
    assert "mae (lower is better)" in report, report
