"""r314: `kit demo --spec rnn-challenge` trained gru_base, whose loss (base's wmse + pearson, both
weighting rows by |y| for Predictorium's weighted Pearson) costs R2 on rnn-challenge, into
runs/gru_base/, without a word. The demo now trains the competition's preset (rnn_gru), and a
loss written for another competition that weights rows by |y| is noted for a metric that
weighs rows alike."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kit.competition import load_spec
from kit.data.synth import synth_dir, synthesize

TINY = ["train.epochs=1", "train.warmup_epochs=0", "model.hidden=8", "model.layers=1"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A `kit init` project (the shipped presets in experiments/), the working folder."""
    from kit.presets import init_project

    monkeypatch.delenv("KIT_EXPERIMENTS", raising=False)
    monkeypatch.chdir(tmp_path)
    init_project(tmp_path)
    return tmp_path


def note_for(exp: str, overrides: list[str]) -> str | None:
    from kit.train.losses import row_weights_note
    from kit.train.recipe import experiment_config

    return row_weights_note(exp, overrides, experiment_config(exp, overrides))


def test_demo_spec_alone_trains_the_competitions_preset(project, capsys):
    """--spec rnn-challenge without --exp trained gru_base (|y|-weighted loss) into
    runs/gru_base/; it trains rnn_gru (plain mse), and says so."""
    from kit.demo import run_demo

    spec = load_spec("rnn-challenge")
    synthesize(spec, synth_dir(spec.name), train_seqs=6, valid_seqs=3)
    summary = run_demo(spec_name="rnn-challenge", seeds=1, parity_seqs=1, seqs=1, quiet=True,
                       overrides=TINY)
    (run,) = map(Path, summary["runs"])
    assert run.parent == Path("runs/rnn_gru"), run
    trained = tomllib.loads((run / "config.toml").read_text())
    assert trained["loss"]["terms"] == {"mse": 1.0}
    assert ("--spec rnn-challenge: training rnn_gru (experiments/rnn_gru.toml), the preset made "
            "for rnn-challenge") in capsys.readouterr().out


def test_demo_spec_without_a_preset_keeps_gru_base_and_says_so(project):
    from kit.demo import preset_for_spec
    from tests.cli import run_cli

    mine = project / "mine.toml"  # an R2 competition of one's own
    mine.write_text(run_cli("spec", "show", "rnn-challenge").output.replace(
        'name = "rnn-challenge"', 'name = "mine"'))
    experiment, said = preset_for_spec(str(mine))
    assert experiment == "gru_base"
    assert said.startswith("no preset experiment is made for mine: training gru_base"), said


def test_demo_spec_whose_preset_is_missing_keeps_gru_base_and_says_so(project):
    from kit.demo import preset_for_spec

    (project / "experiments/rnn_gru.toml").unlink()  # a project initialised before rnn_gru
    experiment, said = preset_for_spec("rnn-challenge")
    assert experiment == "gru_base" and "`kit init` copies the presets it lacks" in said, said


def test_weighted_loss_of_another_competition_is_noted_for_an_unweighted_metric(project):
    """gru_base spec=rnn-challenge trained base's |y|-weighted terms for R2 without a word."""
    note = note_for("gru_base", ["spec=rnn-challenge"])
    assert note is not None
    for part in ("loss.terms = { wmse = 1.0, pearson = 0.5 }, written for predictorium in "
                 "experiments/base.toml", "(wmse, pearson)", "rnn-challenge's metric r2",
                 "set loss.terms={mse=1.0}, or train rnn_gru"):
        assert part in note, note


def test_an_experiment_for_r2_inheriting_base_loss_is_noted(project):
    """Its own spec is rnn-challenge, but its [loss] is base's, written for Predictorium."""
    (project / "experiments/mine.toml").write_text('extends = "base"\nspec = "rnn-challenge"\n')
    note = note_for("mine", [])
    assert note is not None and "experiments/base.toml" in note, note


def test_the_note_is_a_kit_warning_said_once(project):
    from kit.train.losses import warn_row_weights
    from kit.train.recipe import experiment_config

    overrides = ["spec=rnn-challenge"]
    with pytest.warns(UserWarning, match=r"weight rows by \|y\|") as caught:
        warn_row_weights("gru_base", overrides, experiment_config("gru_base", overrides))
    assert len(caught) == 1


@pytest.mark.parametrize("exp, overrides, experiment_file", [
    ("rnn_gru", [], None),  # plain mse
    ("gru_base", [], None),  # Predictorium: its metric weights rows by |y|
    ("gru_base", ["spec=rnn-challenge", "loss.terms={wmse=1.0}"], None),  # chosen here
    ("rnn_gru", ["loss.terms.wmse=1.0"], None),
    # an experiment for rnn-challenge that writes wmse itself chose it
    ("mine", [], 'extends = "base"\nspec = "rnn-challenge"\n[loss]\nterms = { wmse = 1.0 }\n'),
    ("mine", [], 'extends = "rnn_gru"\n[loss]\nterms = { wmse = 1.0, pearson = 0.5 }\n'),
])
def test_losses_chosen_for_the_competition_are_not_noted(project, exp, overrides,
                                                         experiment_file):
    if experiment_file:
        (project / "experiments/mine.toml").write_text(experiment_file)
    assert note_for(exp, overrides) is None


def test_kit_train_and_kit_sweep_say_the_note_once(project):
    """The commands themselves: train_experiment and the sweep's setup warn (the functions
    alone were not called by any command)."""
    from tests.cli import run_cli

    spec = load_spec("rnn-challenge")
    synthesize(spec, synth_dir(spec.name), train_seqs=4, valid_seqs=2)
    data = [f"data.train={synth_dir(spec.name)}/train.parquet",
            f"data.valid={synth_dir(spec.name)}/valid.parquet"]
    trained = run_cli("train", "gru_base", "spec=rnn-challenge", *data, *TINY, "-q")
    assert trained.output.count(r"weight rows by |y|") == 1, trained.output
    sweep = ['"train.lr" = { type = "float", low = 0.001, high = 0.01 }']
    (project / "experiments/sw.toml").write_text("\n".join([
        'extends = "gru_base"', 'spec = "rnn-challenge"', "[sweep]", "trials = 1",
        "[sweep.params]", *sweep]))
    swept = run_cli("sweep", "exp=sw", *data, *TINY, "-q")
    assert swept.output.count(r"weight rows by |y|") == 1, swept.output
