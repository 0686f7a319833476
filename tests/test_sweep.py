"""kit sweep and kit ablate on a tiny competition: real Optuna storages (SQLite, journal file,
PostgreSQL on loopback), real worker processes, kills and interrupts."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
import tomli_w
from optuna.trial import TrialState

from kit.config import load_experiment
from kit.sweep import SweepError, make_storage, parse_space, prepare, sweep
from tests.cli import run_cli
from tests.postgres import LocalPostgres, binaries
from tests.processes import exited

SPACE = {
    "trials": 4,
    "pruner": "median",
    "params": {
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "model.hidden": {"type": "int", "low": 8, "high": 16, "step": 8},
        "features.groups": {"type": "categorical", "choices": [["raw"], ["raw", "diffs"]]},
        "model.window": {"type": "int", "low": 4, "high": 8,
                         "when": {"model.type": "attention_gru"}},
        "model.type": {"type": "categorical", "choices": ["gru", "attention_gru"]},
    },
}


@pytest.fixture
def sweep_env(workspace, tmp_path, monkeypatch):
    """An experiment `tiny` with a [sweep] table, in its own experiments folder."""
    exps = tmp_path / "experiments"
    exps.mkdir()
    base = load_experiment(str(workspace / "experiments" / "gru.toml"))
    base.pop("name")
    base["model"] = {"type": "gru", "hidden": 8, "layers": 1}
    base["train"] = {**base["train"], "epochs": 2}
    (exps / "tiny.toml").write_text(tomli_w.dumps({**base, "sweep": SPACE}))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _study(url: str, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=make_storage(url))


def _sqlite(root: Path) -> str:
    return f"sqlite:///{(root / 'runs/tiny/sweep.db').resolve()}"


def test_a_sweep_trains_each_trial_as_a_run_and_writes_the_best_experiment(sweep_env):
    out = run_cli("sweep", "exp=tiny", "--trials", 3, "-q").output
    study = _study(_sqlite(sweep_env))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()
        assert len(t.intermediate_values) == 2  # one report per epoch
        if t.params["model.type"] == "attention_gru":
            assert "model.window" in t.params
        else:
            assert "model.window" not in t.params  # conditional: only when it applies
    assert "complete" in out and "kit train exp=tiny_best" in out
    best = load_experiment("tiny_best")
    assert "best trial" in best["description"]
    assert best["train"]["lr"] == pytest.approx(study.best_trial.params["train.lr"])
    # `just train` accepts it
    run_cli("train", "exp=tiny_best", "-q")


def _one_trial(setup, monkeypatch) -> optuna.trial.FrozenTrial:
    """One trial of the sweep's objective, its training faked: what the trial records."""
    import kit.train.recipe as recipe
    from kit.sweep import objective

    monkeypatch.setattr(recipe, "train_one", lambda config, files, **kwargs: {"score": 0.5})
    study = optuna.create_study(direction=setup.direction)
    study.optimize(objective(setup, False), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    return trial


def test_a_trial_records_its_run_folder_as_an_absolute_path(sweep_env, monkeypatch):
    setup = prepare("tiny", None, None, None)
    assert not setup.runs_dir.is_absolute()  # the default runs/, relative to this folder
    run_dir = Path(_one_trial(setup, monkeypatch).user_attrs["run_dir"])
    assert run_dir.is_absolute()  # the summary's paths hold from any folder
    assert run_dir == (sweep_env / "runs/tiny/tiny-t0000").resolve() and run_dir.is_dir()


def test_a_study_records_its_search_and_says_when_another_one_runs_on_it(sweep_env, capsys):
    """Which sampler, pruner and seed chose and stopped a study's trials is kept with it and
    shown; another search on the same study is said (it may be on purpose), not refused."""
    from kit.sweep import format_summary, make_study, study_identity

    setup = prepare("tiny", None, None, None)
    (sweep_env / "runs/tiny").mkdir(parents=True)
    storage = make_storage(_sqlite(sweep_env))

    def study_with(table):
        return make_study("s", storage, setup.direction, table, 2, study_identity(setup))

    assert study_with(setup.table).user_attrs["kit_search"] == {
        "sampler": "tpe", "pruner": "median", "seed": None}
    study_with(setup.table)
    assert "note:" not in capsys.readouterr().err  # the same search again: nothing to say
    again = study_with({**setup.table, "sampler": "random", "seed": 3})
    assert ("note: study 's' chose and stopped its trials with sampler tpe, pruner median, no "
            "seed so far; this run uses sampler random, pruner median, seed 3") in (
        capsys.readouterr().err)
    search = again.user_attrs["kit_search"]
    assert search == {"sampler": "random", "pruner": "median", "seed": 3}
    line = format_summary({"study": "s", "storage": "sqlite:///x.db", "seconds": 1.0,
                           "search": search, "counts": {}, "best": []})
    assert line.endswith("; sampler random, pruner median, seed 3")


def test_rerunning_a_study_resumes_it_to_the_total(sweep_env):
    run_cli("sweep", "exp=tiny", "trials=2", "-q")  # as `just sweep exp=tiny trials=2` passes it
    run_cli("sweep", "exp=tiny", "--trials", 3, "-q")
    assert len(_study(_sqlite(sweep_env)).get_trials()) == 3
    run_cli("sweep", "exp=tiny", "--trials", 3, "-q")  # the same command again: nothing to add
    assert len(_study(_sqlite(sweep_env)).get_trials()) == 3


def test_the_pruner_stops_trials_through_the_per_epoch_reports(sweep_env, monkeypatch):
    # a threshold no score reaches: every trial is pruned after its first reported epoch
    monkeypatch.setattr(optuna.pruners, "MedianPruner",
                        lambda **_: optuna.pruners.ThresholdPruner(lower=10.0))
    summary = sweep("tiny", trials=2, progress=False)
    trials = _study(summary["storage"]).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert len(t.intermediate_values) == 1
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["pruned"] and metrics["finished"]  # done: never picked by --resume


@pytest.mark.parametrize("overrides, epochs", [
    ([], 2),  # the last epoch
    (["train.epochs=4", "train.patience=1", "train.lr=1e-12"], 2),  # patience ends it at 2
])
def test_a_trial_is_never_pruned_after_its_last_epoch_and_reports_its_best_so_far(
        sweep_env, monkeypatch, overrides, epochs):
    # a real pruner that prunes every trial from its second report on: after the epoch the run
    # ends on anyway, the trial must complete with its best epoch's score, not be pruned
    monkeypatch.setattr(optuna.pruners, "MedianPruner",
                        lambda **_: optuna.pruners.ThresholdPruner(lower=10.0, n_warmup_steps=2))
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"].pop("train.lr"))
    summary = sweep("tiny", overrides, trials=2, progress=False)
    trials = _study(summary["storage"]).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        metrics = json.loads((run / "metrics.json").read_text())
        scores = [json.loads(line)["val_score"] for line in
                  (run / "history.jsonl").read_text().splitlines()]
        assert len(scores) == epochs and not metrics.get("pruned")
        assert t.value == metrics["score"] == max(scores)  # the metric is maximised here
        # what the pruner saw is what the trial returns were it stopped there: its best so far
        assert [t.intermediate_values[e] for e in range(1, epochs + 1)] == [
            max(scores[:e]) for e in range(1, epochs + 1)]


def test_diverging_trials_fail_alone_and_the_sweep_goes_on_to_n_finished(sweep_env, workspace,
                                                                          monkeypatch):
    import polars as pl

    # targets of 1e30: a trial on that file overflows in its first batch, before any epoch
    frame = pl.read_parquet(workspace / "data" / "train.parquet")
    frame.with_columns(pl.col("t0") * 1e30).write_parquet(sweep_env / "extreme.parquet")
    good = load_experiment("tiny")["data"]["train"]
    doc = tomllib.loads((sweep_env / "experiments" / "tiny.toml").read_text())
    doc["sweep"] = {"trials": 3, "pruner": "none", "sampler": "random", "seed": 4, "params": {
        "data.train": {"type": "categorical", "choices": [str(sweep_env / "extreme.parquet"),
                                                          good]}}}
    (sweep_env / "experiments" / "mixed.toml").write_text(tomli_w.dumps(doc))
    result = run_cli("sweep", "exp=mixed", "-q")
    assert "Traceback" not in result.output
    trials = _study(f"sqlite:///{(sweep_env / 'runs/mixed/sweep.db').resolve()}",
                    "mixed").get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3  # failed trials do not count
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("training diverged" in t.user_attrs["diverged"] for t in failed)
    assert all(t.params["data.train"].endswith("extreme.parquet") for t in failed)
    # when every trial diverges, the worker stops after FAILED_IN_A_ROW, saying why
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "-q",
                  f"data.train={sweep_env / 'extreme.parquet'}", expect=2).output
    assert "this worker's last 5 trials all failed (runs/tiny/tiny-t0004: training diverged" in out
    assert [t.state for t in _study(_sqlite(sweep_env)).get_trials()] == [TrialState.FAIL] * 5
    # the cause fixed (the override dropped: another config), the same command continues the
    # study, as the error says (its identity check refused it: "made for another sweep")
    monkeypatch.setattr("kit.sweep.QUIET_S", 3.0)  # (10 s: no worker of it is sampling)
    result = run_cli("sweep", "exp=tiny", "--trials", 1, "-q")  # at once: it waits the rest
    assert re.search(r"holds failed trials only, the last \d+s ago: waiting \d+s",
                     result.output)
    assert "holds failed trials only; it continues with this sweep's changes" in result.output
    states = [t.state for t in _study(_sqlite(sweep_env)).get_trials()]
    assert states == [TrialState.FAIL] * 5 + [TrialState.COMPLETE]


@contextlib.contextmanager
def optuna_log():
    """What Optuna's own log handler writes while the block runs (its stream is the stderr of
    the moment Optuna first logged: pytest's capture may not see it)."""
    import io
    import logging

    import optuna

    buffer = io.StringIO()
    handlers = [h for h in optuna.logging.get_logger("optuna").handlers
                if isinstance(h, logging.StreamHandler)]
    assert handlers  # (else this would check nothing)
    streams = [h.setStream(buffer) for h in handlers]
    try:
        yield buffer
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def test_optuna_lines_after_a_trial_kit_explained_are_dropped_others_kept():
    """A trial stopped by Ctrl-C: Optuna's traceback record, then "failed with value None."
    (r266 saw it after kit's own stop message); a NaN value kit said nothing about (a score
    that is NaN) is still logged."""
    import logging

    from kit.sweep import _NoInterruptTracebacks

    def record(text: str, exc=None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("optuna.study._optimize", logging.WARNING, __file__, 1, text,
                                 None, info)

    keep = _NoInterruptTracebacks().filter
    assert not keep(record("Trial 9005 failed with parameters: {} because of the following "
                           "error: KeyboardInterrupt().", KeyboardInterrupt()))
    assert not keep(record("Trial 9005 failed with value None."))
    assert keep(record("Trial 9006 failed with value nan."))
    assert keep(record("Trial 9006 failed with parameters: {'x': 1} because of the following "
                       "error: The value nan is not acceptable."))
    assert keep(record("Trial 9007 finished with value: 0.5 and parameters: {}."))


def test_an_invalid_combination_of_values_fails_its_trial_and_the_sweep_goes_on(sweep_env):
    from kit.sweep import make_study, study_identity

    def transformer(d_models: list, heads: list):
        def edit(doc: dict) -> None:
            doc["model"] = {"type": "transformer", "d_model": 8, "n_heads": 2, "layers": 1,
                            "window": 4}
            doc["sweep"] = {"pruner": "none", "sampler": "random", "seed": 1, "params": {
                "model.d_model": {"type": "categorical", "choices": d_models},
                "model.n_heads": {"type": "categorical", "choices": heads}}}
        return edit

    # each value is valid alone (the check before training passes), never together
    _edit_tiny(sweep_env, transformer([6], [4]))
    with optuna_log() as logged:
        out = run_cli("sweep", "exp=tiny", "--trials", 2, "-q", expect=2).output
    assert "Traceback" not in out
    assert ("this worker's last 5 trials all failed (invalid combination of values: "
            "model.d_model (6) must be a multiple of model.n_heads (4)") in out
    # the way on that works: the study keeps the choices its failed trials drew (r266)
    assert "a categorical's choices stay those its trials drew: to change them, pick a new " \
           "--study name" in " ".join(out.split())
    # kit said each trial's reason: Optuna's two lines about its NaN value are not repeated
    assert "The value nan is not acceptable" not in logged.getvalue() + out, logged.getvalue()
    assert "failed with value nan" not in logged.getvalue() + out
    assert [t.state for t in _study(_sqlite(sweep_env)).get_trials()] == [TrialState.FAIL] * 5
    # a space where only some combinations are invalid: those fail, the sweep goes on to N
    _edit_tiny(sweep_env, transformer([8, 6], [2, 4]))
    setup = prepare("tiny", None, "mixed", None)
    study = make_study("mixed", make_storage(setup.storage_url), setup.direction, setup.table,
                       2, study_identity(setup))
    study.enqueue_trial({"model.d_model": 6, "model.n_heads": 4})
    run_cli("sweep", "exp=tiny", "--study", "mixed", "--trials", 2, "-q")
    trials = _study(setup.storage_url, "mixed").get_trials()
    assert trials[0].state == TrialState.FAIL and "multiple of" in trials[0].user_attrs["invalid"]
    assert "run_dir" not in trials[0].user_attrs  # nothing was trained for it
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert all(t.params["model.d_model"] % t.params["model.n_heads"] == 0
               for t in trials if t.state == TrialState.COMPLETE)


def test_the_study_wide_streak_counts_only_trials_since_the_worker_started():
    import optuna

    from kit.sweep import FailureStreak

    study = optuna.create_study()
    for _ in range(5):  # an earlier session's failures, before the cause was fixed
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    time.sleep(0.01)
    streak = FailureStreak()
    outcomes = iter([TrialState.FAIL, TrialState.COMPLETE] + [TrialState.FAIL] * 5)

    def objective(trial):
        if next(outcomes) == TrialState.FAIL:
            raise ValueError("diverged")
        return 1.0

    study.optimize(objective, callbacks=[streak], catch=(ValueError,), n_trials=20)
    # one failure after the restart does not stop it (the old 5 are not this run's); five do
    assert len(study.trials) == 5 + 7
    assert streak.stopped == "this worker's last 5 trials all failed"


def test_the_study_wide_streak_is_the_last_trials_to_end_not_the_first():
    from kit.sweep import FAILED_IN_A_ROW, study_failing

    since = time.time() - 1  # (the trials below all end after it)

    def study_of(states: list) -> optuna.Study:
        study = optuna.create_study()
        for state in states:
            study.add_trial(optuna.trial.create_trial(
                state=state, value=1.0 if state == TrialState.COMPLETE else None))
            time.sleep(0.002)  # distinct end times, in this order
        return study

    fails = [TrialState.FAIL] * FAILED_IN_A_ROW
    assert study_failing(study_of([TrialState.COMPLETE, *fails]), since)
    assert not study_failing(study_of([*fails, TrialState.COMPLETE]), since)


def test_workers_of_an_always_failing_sweep_stop_together(sweep_env, workspace):
    import polars as pl

    from kit.sweep import FAILED_IN_A_ROW

    frame = pl.read_parquet(workspace / "data" / "train.parquet")
    frame.with_columns(pl.col("t0") * 1e30).write_parquet(sweep_env / "extreme.parquet")
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--workers", 2, "-q",
                  f"data.train={sweep_env / 'extreme.parquet'}", expect=2).output
    assert "worker exit codes [2, 2]" in out
    states = [t.state for t in _study(_sqlite(sweep_env)).get_trials()]
    # each worker stops once the study's last 5 ended trials failed: the 5th failure stops one
    # worker and the other stops after the trial it had in flight (5 failures each before)
    assert set(states) == {TrialState.FAIL}
    assert FAILED_IN_A_ROW <= len(states) <= FAILED_IN_A_ROW + 1


def test_a_journal_file_storage_works_unchanged(sweep_env):
    url = f"journal:{sweep_env / 'shared' / 'study.log'}"
    run_cli("sweep", "exp=tiny", "--trials", 2, "--storage", url, "-q")
    assert len(_study(url).get_trials(states=(TrialState.COMPLETE,))) == 2


@pytest.mark.parametrize("entry, message", [
    ({"type": "uniform", "low": 0, "high": 1}, "type: one of"),
    ({"type": "float", "low": 1.0, "high": 0.1}, "low (1.0) > high (0.1)"),
    ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log = true needs low > 0"),
    ({"type": "int", "low": 1, "high": 4, "q": 2}, "unknown key(s) ['q']"),
    ({"type": "categorical", "choices": []}, "choices: a non-empty list"),
    ({"type": "float", "low": 0.1, "high": 1.0, "log": "false"},
     "log: true or false (a TOML boolean), got 'false'"),
    ({"type": "int", "low": 1, "high": 4, "when": {"model.type": []}},
     '.when."model.type": an empty list matches nothing'),
    # Optuna died on these in every trial (decimal.InvalidOperation), or drew low alone
    ({"type": "float", "low": 1e-3, "high": 1e-2, "step": float("nan")}, "step: a positive"),
    ({"type": "float", "low": 1e-3, "high": 1e-2, "step": float("inf")}, "step: a positive"),
    # a TOML int past float's range: an OverflowError traceback from math.isfinite
    ({"type": "float", "low": 0.0, "high": 1.0, "step": 10**400}, "step: a positive"),
    # bounds Optuna fails every trial on (OverflowError: range exceeds valid bounds)
    ({"type": "float", "low": 0.0, "high": float("inf")}, "low and high must be finite"),
    ({"type": "float", "low": float("nan"), "high": 1.0}, "low and high must be finite"),
    ({"type": "int", "low": 0, "high": 10**400}, "low and high must be finite ints"),
    ({"type": "float", "low": -1e308, "high": 1e308}, "wider than a float holds"),
    ({"type": "int", "low": 8, "high": 16, "step": True}, "step: a positive int, got True"),
    ({"type": "float", "low": 1e-3, "high": 1e-2, "step": 0.5},
     "step 0.5 is wider than the range 0.001..0.01"),
    ({"type": "int", "low": 8, "high": 16, "step": 32}, "every trial would train 8"),
    # equal choices are one to Optuna: true was recorded while 1.0 trained
    ({"type": "categorical", "choices": [1.0, True, 0, False]}, "1.0 and True are equal"),
    ({"type": "categorical", "choices": ["a", "b", "a"]}, "'a' and 'a' are equal"),
])
def test_bad_search_space_entries_are_named(entry, message):
    with pytest.raises(SweepError, match=r'sweep\.params\."x"') as info:
        parse_space({"params": {"x": entry}})
    assert message in str(info.value)


def test_a_stepped_range_is_checked_at_the_top_optuna_draws():
    (param,) = parse_space({"params": {"x": {"type": "int", "low": 8, "high": 20, "step": 8}}})
    assert param.values() == [8, 16]  # 24 is past high: Optuna's top is 16
    (param,) = parse_space({"params": {"x": {"type": "float", "low": 0.1, "high": 0.35,
                                             "step": 0.1}}})
    assert param.values() == [0.1, pytest.approx(0.3)]
    (param,) = parse_space({"params": {"x": {"type": "float", "low": 0.0, "high": 0.3,
                                             "step": 0.1}}})
    assert param.values() == [0.0, 0.3]  # not 0.30000000000000004, past high
    # a float parameter written with whole bounds is checked with floats, as Optuna draws it
    (param,) = parse_space({"params": {"x": {"type": "float", "low": 1, "high": 3}}})
    assert [type(v) for v in param.values()] == [float, float]


def test_the_scorers_python_is_not_part_of_a_studys_identity():
    # added to the Predictorium spec after studies were made: they must still resume
    from kit.sweep import training_digests

    keys = training_digests({"spec": "predictorium", "train": {"lr": 1e-3}})
    assert "spec.limits.time_limit_s" in keys and "spec.limits.python" not in keys


def test_a_float_parameter_on_an_integer_key_fails_before_training(sweep_env):
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["sweep"] = {"params": {"train.epochs": {"type": "float", "low": 1, "high": 3}}}
    path.write_text(tomli_w.dumps(doc))
    result = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2)
    assert "train.epochs must be int" in result.output
    assert not (sweep_env / "runs").exists()


def test_a_when_on_a_table_holding_a_swept_key_reads_the_trials_value():
    from kit.sweep import suggest

    space = parse_space({"params": {
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1,
                               "when": {"loss.terms": {"wmse": 1.0, "pearson": 0.5}}},
        "loss.terms.pearson": {"type": "categorical", "choices": [0.0, 0.5]},
    }})
    assert [p.name for p in space] == ["loss.terms.pearson", "train.weight_decay"]
    base = {"loss": {"terms": {"wmse": 1.0, "pearson": 0.5}}}
    trial = optuna.trial.FixedTrial({"loss.terms.pearson": 0.0, "train.weight_decay": 0.05})
    assert suggest(trial, space, base) == {"loss.terms.pearson": 0.0}


def _space_check(model: dict, params: dict, **sections) -> None:
    from kit.config import resolve
    from kit.sweep import check_space

    check_space(resolve({"spec": "predictorium", "model": model, **sections}),
                parse_space({"params": params}))


def test_conditions_meet_through_a_parameter_over_whole_model_tables():
    """docs/sweeps.md's pattern: `model` over whole tables, each model's keys `when` its type.
    The check met `model.type = "tcn"` inside the experiment's GRU table (model.hidden: unknown
    key for 'tcn'), so the pattern failed for every experiment extending base.toml."""
    gru, tcn = {"type": "gru", "hidden": 8, "layers": 1}, {"type": "tcn", "channels": 8,
                                                           "kernel": 2, "dilations": [1, 2]}
    params = {"model": {"type": "categorical", "choices": [gru, tcn]},
              "model.hidden": {"type": "int", "low": 4, "high": 12,
                               "when": {"model.type": "gru"}},
              "model.kernel": {"type": "int", "low": 2, "high": 3, "when": {"model.type": "tcn"}}}
    _space_check({"type": "gru", "hidden": 8, "layers": 2, "dropout": 0.1}, params)
    from kit.sweep import suggest  # a trial draws tcn: its kernel is sampled, hidden is not

    trial = optuna.trial.FixedTrial({"model": parse_space({"params": params})[0].labels[1],
                                     "model.kernel": 3})
    assert suggest(trial, parse_space({"params": params}), {"model": gru})["model.kernel"] == 3


def test_pairs_of_model_keys_that_some_values_fit_are_left_to_the_trials():
    """d_model 12 or 24 with 3 or 6 heads all fit; so do windows 16/32 and patches 12/16: the
    experiment's own d_model (8) or window (8) must not fail the check of the other key."""
    _space_check({"type": "transformer", "d_model": 8, "n_heads": 2, "layers": 1, "window": 8},
                 {"model.d_model": {"type": "categorical", "choices": [12, 24]},
                  "model.n_heads": {"type": "categorical", "choices": [3, 6]}})
    _space_check({"type": "patchtst", "d_model": 8, "n_heads": 2, "layers": 1, "window": 8,
                  "patch_len": 4, "stride": 4},
                 {"model.window": {"type": "categorical", "choices": [16, 32]},
                  "model.patch_len": {"type": "categorical", "choices": [12, 16]}})


@pytest.mark.parametrize("when, message", [
    ({"model.type": "lstm"}, "model.type never takes that value"),  # gru, and not swept
    ({"model.layer_norm": True}, "model.layer_norm never takes that value"),
])
def test_a_condition_that_can_never_hold_is_refused(when, message):
    """It was accepted and the parameter silently never sampled."""
    with pytest.raises(SweepError, match=message):
        _space_check({"type": "gru", "hidden": 8, "layers": 1},
                     {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "when": when}})


def test_a_condition_on_a_model_key_left_at_its_default_holds():
    """when = {"model.layer_norm" = false} on a GRU table without the key: refused as "neither
    a parameter nor a key of the experiment", and never met in a trial (None is not false)."""
    from kit.sweep import suggest

    params = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2,
                           "when": {"model.layer_norm": False}}}
    model = {"type": "gru", "hidden": 8, "layers": 1}
    _space_check(model, params)
    trial = optuna.trial.FixedTrial({"train.lr": 5e-3})
    assert suggest(trial, parse_space({"params": params}), {"model": model}) == {"train.lr": 5e-3}


def test_conditions_a_trial_can_meet_are_not_refused_as_never_holding():
    """The reachability check must leave valid spaces alone: the experiment's value where a
    conditional parameter does not replace it; a table whose inner key is swept; several keys
    of one table choice; a model key's default whatever order the table's keys are drawn in."""
    from kit.sweep import suggest

    gru = {"type": "gru", "hidden": 8, "layers": 1}
    lr = {"type": "float", "low": 0.0, "high": 0.1}
    _space_check(gru, {  # a gru trial keeps the experiment's lr of 2e-3 (DEFAULTS)
        "model.type": {"type": "categorical", "choices": ["gru", "lstm"]},
        "train.lr": {"type": "categorical", "choices": [0.001, 0.01],
                     "when": {"model.type": "lstm"}},
        "train.weight_decay": {**lr, "when": {"train.lr": 2e-3}}})
    _space_check(gru, {"loss.terms.pearson": {"type": "categorical", "choices": [0.0, 0.5]},
                       "train.weight_decay": {**lr, "when": {"loss.terms": {"wmse": 1.0,
                                                                            "pearson": 0.0}}}},
                 loss={"terms": {"wmse": 1.0, "pearson": 0.5}})
    attention = {"type": "attention_gru", "hidden": 8, "layers": 2}
    _space_check({**gru, "layers": 2}, {
        "model": {"type": "categorical", "choices": [{**gru, "layers": 2}, {**attention,
                                                                            "layers": 1},
                                                     attention]},
        "model.window": {"type": "int", "low": 4, "high": 8,
                         "when": {"model.type": "attention_gru", "model.layers": 2}}})
    params = {"model.d_model": {"type": "categorical", "choices": [12, 24]},
              "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "when": {"model.ff": 4}},
              "model.n_heads": {"type": "categorical", "choices": [3, 6]}}
    transformer = {"type": "transformer", "d_model": 16, "n_heads": 8, "layers": 1, "window": 8}
    _space_check(transformer, params)
    for d_model in (12, 24):  # 12 with the experiment's 8 heads is invalid until n_heads is drawn
        trial = optuna.trial.FixedTrial({"model.d_model": d_model, "model.n_heads": 6,
                                         "train.lr": 5e-3})
        assert "train.lr" in suggest(trial, parse_space({"params": params}),
                                     {"model": transformer})
    # under a params budget the width is solved, not the default: no condition on it
    with pytest.raises(SweepError, match="'model.hidden' is neither a parameter nor a key"):
        _space_check({"type": "gru", "params": 20000, "layers": 1},
                     {"train.lr": {**lr, "when": {"model.hidden": 128}}})


def test_a_when_list_on_a_key_that_holds_a_list_is_refused_unless_nested(sweep_env):
    # a `when` list means "one of these values": on a list-valued key it is not the list
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"]["model.window"].update(
        when={"model.type": "attention_gru", "features.groups": d["features"]["groups"]}))
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert "features.groups holds a list, and a list in `when` means one of these values" in out
    # the one list: accepted where the sweep's features.groups can take it
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"]["model.window"].update(
        when={"model.type": "attention_gru", "features.groups": [["raw", "diffs"]]}))
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    # the experiment's own list, which every trial's features.groups replaces: never met
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"]["model.window"].update(
        when={"model.type": "attention_gru", "features.groups": [d["features"]["groups"]]}))
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert "features.groups never takes that value" in out


def test_an_empty_when_list_and_a_bad_worker_index_fail_cleanly(sweep_env, monkeypatch):
    before = _edit_tiny(sweep_env, lambda d: d["sweep"]["params"]["model.window"].update(
        when={"model.type": []}))
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert 'error: sweep.params."model.window".when."model.type": an empty list' in out
    (sweep_env / "experiments" / "tiny.toml").write_text(tomli_w.dumps(before))
    for bad in ("m1", "-1", " 1"):
        monkeypatch.setenv("KIT_SWEEP_WORKER", bad)
        for args in ((), ("sweep.seed=3",), ("--workers", 2)):
            out = run_cli("sweep", "exp=tiny", *args, "--trials", 1, expect=2).output
            assert "error: KIT_SWEEP_WORKER: a non-negative integer" in out and repr(bad) in out
            assert "Traceback" not in out
    assert not (sweep_env / "runs").exists()  # refused before anything was created


@pytest.mark.parametrize("table, message", [
    ({"trails": 30}, "[sweep]: unknown key(s) ['trails']"),
    ({"trials": "many"}, "sweep.trials: a positive integer, got 'many'"),
    ({"trials": 0}, "sweep.trials: a positive integer"),
    ({"seed": -1}, "sweep.seed: a non-negative integer"),
    ({"pruner": "asha"}, "sweep.pruner: one of"),
    ({"sampler": "cmaes"}, "sweep.sampler: one of"),
])
def test_bad_sweep_table_keys_are_named(sweep_env, table, message):
    with pytest.raises(SweepError) as info:
        parse_space({**SPACE, **table})
    assert message in str(info.value)
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["sweep"] = {**SPACE, **table}
    path.write_text(tomli_w.dumps(doc))
    assert message in run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert not (sweep_env / "runs").exists()  # failed before anything was created


def test_a_sweep_seed_of_zero_is_accepted():
    from kit.sweep import check_table

    # sweep.seed is a non-negative integer (docs/sweeps.md): 0 is a seed, unlike 0 trials
    check_table({"seed": 0})
    assert len(parse_space({**SPACE, "seed": 0})) == len(SPACE["params"])


@pytest.mark.parametrize("name, entry, message", [
    ("train.lrr", {"type": "float", "low": 1e-3, "high": 1e-2}, "train.lrr"),
    ("model.hidden", {"type": "int", "low": 0, "high": 8}, "model.hidden"),
    ("features.groups", {"type": "categorical", "choices": [["raw"], ["nope"]]}, "nope"),
    ("model.type", {"type": "categorical", "choices": ["gru", "tcn"]}, "hidden"),
])
def test_invalid_experiments_in_the_space_fail_before_training(sweep_env, name, entry, message):
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["sweep"] = {"params": {name: entry}}
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SweepError, match=message) as info:
        prepare("tiny", None, None, None)
    assert f'sweep.params."{name}"' in str(info.value)
    result = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2)
    assert f'sweep.params."{name}"' in result.output
    assert not (sweep_env / "runs").exists()  # no study, no run: it failed before training


def test_a_parameter_that_changes_nothing_is_refused(sweep_env):
    """A [model] params budget solves the width whatever model.hidden says: sweeping it
    recorded values in Optuna that no trial trained."""
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["model"]["params"] = 2000
    doc["sweep"] = {"params": {"model.hidden": {"type": "int", "low": 4, "high": 32}}}
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SweepError, match=r'"model.hidden" has no effect: its values \[4, 32\]'):
        prepare("tiny", None, None, None)
    doc["sweep"] = {"params": {"model.params": {"type": "int", "low": 2000, "high": 8000}}}
    path.write_text(tomli_w.dumps(doc))
    prepare("tiny", None, None, None)  # the budget itself is a fine parameter


def test_a_combination_another_parameter_can_fix_is_left_to_the_trials(sweep_env):
    """swa_start past the base's epochs, or one loss term at 0, is invalid alone but not with
    the other parameter swept: the space is refused only when nothing swept can fix it."""
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["loss"] = {"terms": {"wmse": 1.0}}
    doc["sweep"] = {"params": {
        "train.epochs": {"type": "int", "low": 2, "high": 30},
        "train.swa_start": {"type": "int", "low": 0, "high": 20},
        "loss.terms.wmse": {"type": "float", "low": 0.0, "high": 1.0},
        "loss.terms.pearson": {"type": "float", "low": 0.0, "high": 1.0},
    }}
    path.write_text(tomli_w.dumps(doc))
    prepare("tiny", None, None, None)
    for fixed in ("train.epochs", "loss.terms.pearson"):  # nothing left to fix it
        del doc["sweep"]["params"][fixed]
        path.write_text(tomli_w.dumps(doc))
        with pytest.raises(SweepError, match="makes an invalid experiment"):
            prepare("tiny", None, None, None)
        doc["sweep"]["params"][fixed] = {"type": "int", "low": 2, "high": 30} \
            if fixed == "train.epochs" else {"type": "float", "low": 0.0, "high": 1.0}


def test_a_whole_table_is_set_before_the_keys_swept_inside_it():
    """A categorical over [model] tables, then "model.hidden" into the chosen one, in either
    declaration order; a `when` on a key inside the table waits for the table too."""
    from kit.sweep import suggest, trial_config

    tables = [{"type": "gru", "hidden": 8, "layers": 1}, {"type": "lstm", "hidden": 8}]
    space = parse_space({"params": {
        "model.hidden": {"type": "int", "low": 16, "high": 32, "step": 16},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.2,
                          "when": {"model.type": "lstm"}},
        "model": {"type": "categorical", "choices": tables},
    }})
    assert [p.name for p in space][0] == "model"
    base = {"model": {"type": "gru", "hidden": 8}}
    trial = optuna.trial.FixedTrial({"model": space[0].labels[1], "model.hidden": 32,
                                     "model.dropout": 0.1})
    values = suggest(trial, space, base)
    assert values["model"]["type"] == "lstm" and values["model.dropout"] == 0.1
    model = trial_config(base, values)["model"]
    assert model["type"] == "lstm" and model["hidden"] == 32 and model["dropout"] == 0.1


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _count(url: str, sql: str) -> int:
    """One COUNT from a SQLite study, read without Optuna (0 before the file or its tables
    exist): a read-only connection neither creates the schema nor takes a lock from the sweep
    being watched."""
    import sqlite3

    path = url.removeprefix("sqlite:///")
    if not Path(path).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


def _completed(url: str) -> int:
    return _count(url, "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")


def _training(url: str) -> int:
    """Trials running past their first epoch."""
    return _count(url, "SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN "
                       "trial_intermediate_values v ON v.trial_id = t.trial_id "
                       "WHERE t.state = 'RUNNING'")


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A failed test must not leave an endless sweep running: SIGTERM (which kit sweep passes
    on to its workers), then SIGKILL."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _kit(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """`python -m kit ARGS` from the test's folder; this checkout's kit, installed or not."""
    env = (env or dict(os.environ)) | {"PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "kit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)
    STARTED.append(proc)
    return proc


def _wait_for(predicate, timeout: float = 120, what: str = "",
              proc: subprocess.Popen | None = None) -> None:
    """Poll until predicate(); on a timeout stop `proc` and show what it printed (a worker
    that died or hung says why there)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break  # it ended: waiting longer shows nothing new
        time.sleep(0.2)
    said = ""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
        said = "; it printed:\n" + proc.communicate(timeout=60)[0][-4000:]
    raise AssertionError(f"timed out waiting for {what}{said}")


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(sweep_env):
    url = _sqlite(sweep_env)
    proc = _kit("sweep", "exp=tiny", "--trials", "5", "-q", start_new_session=True)
    _wait_for(lambda: _completed(url) >= 1, what="a finished trial", proc=proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "stopping at the end of this epoch" in out
    assert "run the same command again to resume" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out  # (optuna's trial log)
    states = [t.state for t in _study(url).get_trials()]
    assert TrialState.RUNNING not in states  # the interrupted trial is closed, not left open
    assert sum(s in FINISHED for s in states) < 5
    run_cli("sweep", "exp=tiny", "--trials", 5, "-q")
    assert sum(t.state in FINISHED for t in _study(url).get_trials()) == 5


ENDLESS = ["train.epochs=100000", "train.patience=100000"]  # trials that only a signal ends


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_sweep_as_ctrl_c_does(sweep_env, signum):
    """A scheduler's SIGTERM (or a closed terminal's SIGHUP): the epoch ends, the trial is
    marked failed, not left running (a journal storage never repairs it), exit 128 + signal."""
    url = _sqlite(sweep_env)
    proc = _kit("sweep", "exp=tiny", *ENDLESS, "--trials", "3", "-q")
    _wait_for(lambda: _training(url) == 1, what="a trial training", proc=proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=180)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, out
    assert f"{name}: stopping at the end of this epoch" in out
    assert f"stopped by {name}: finished trials are kept" in out and "Traceback" not in out
    states = [t.state for t in _study(url).get_trials()]
    assert states == [TrialState.FAIL], states


def _endless_first(root: Path, endless: int, then: int, storage: str | None = None) -> None:
    """Give tiny's study `endless` trials that only a signal ends, then `then` 2-epoch ones, as
    values of a swept train.epochs: a study is bound to its config, so the command that starts
    the endless trials is the one that resumes the study."""
    from kit.sweep import make_study, study_identity

    def edit(doc: dict) -> None:
        doc["train"]["patience"] = 100000
        doc["sweep"] = {"pruner": "none", "params": {
            "train.epochs": {"type": "categorical", "choices": [2, 100000]}}}

    _edit_tiny(root, edit)
    setup = prepare("tiny", None, None, storage)
    study = make_study("tiny", make_storage(setup.storage_url), setup.direction, setup.table,
                       2, study_identity(setup))
    for epochs in [100000] * endless + [2] * then:
        study.enqueue_trial({"train.epochs": epochs})


def _started(url: str) -> list:
    """The study's trials less those enqueued and not started."""
    return [t for t in _study(url).get_trials() if t.state != TrialState.WAITING]


def test_ctrl_c_with_workers_reaches_each_worker_once_and_the_study_resumes(sweep_env):
    url = _sqlite(sweep_env)
    _endless_first(sweep_env, 2, 3)
    proc = _kit("sweep", "exp=tiny", "--workers", "2", "--trials", "3", "-q",
                start_new_session=True)
    _wait_for(lambda: _training(url) == 2, what="both workers inside a trial", proc=proc)
    # as from a terminal: SIGINT to the foreground group, which holds only the parent (each
    # worker runs in its own session); the parent passes it on once to every worker
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert out.count("stopping at the end of this epoch") == 2, out  # once each, not twice
    assert "run the same command again to resume" in out
    assert "Traceback" not in out, out
    trials = _started(url)
    assert len(trials) == 2 and TrialState.RUNNING not in [t.state for t in trials]
    assert all(len(t.intermediate_values) >= 1 for t in trials)  # ended after an epoch
    run_cli("sweep", "exp=tiny", "--trials", 3, "-q")
    assert sum(t.state in FINISHED for t in _study(url).get_trials()) == 3


def test_a_terminated_sweep_takes_its_workers_with_it(sweep_env):
    url = _sqlite(sweep_env)
    proc = _kit("sweep", "exp=tiny", *ENDLESS, "--workers", "2", "--trials", "3", "-q")
    _wait_for(lambda: _training(url) == 2, what="both workers inside a trial", proc=proc)
    workers = {t.user_attrs["worker"] for t in _study(url).get_trials()}
    assert len(workers) == 2
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    for pid in workers:  # reaped by the parent: no orphan goes on writing to the study
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # each worker ended its epoch and failed its trial: none left running for good
    assert out.count("SIGTERM: stopping at the end of this epoch") == 2, out
    assert TrialState.RUNNING not in [t.state for t in _started(url)]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_killed_sweep_command_takes_its_workers_with_it(sweep_env):
    """SIGKILL passes nothing on: the workers (each in its own session) now see their command
    gone and stop as after its Ctrl-C, at the end of an epoch, their trials not left running."""
    url = _sqlite(sweep_env)
    proc = _kit("sweep", "exp=tiny", *ENDLESS, "--workers", "2", "--trials", "3", "-q")
    _wait_for(lambda: _training(url) == 2, what="both workers inside a trial", proc=proc)
    workers = {t.user_attrs["worker"] for t in _study(url).get_trials()}
    proc.kill()
    proc.communicate(timeout=60)
    _wait_for(lambda: all(exited(pid) for pid in workers), what="the workers to stop")
    assert TrialState.RUNNING not in [t.state for t in _started(url)]


COUNTING_WORKER = """
import pathlib, signal, sys, time
out, got = pathlib.Path(sys.argv[1]), []
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
out.with_suffix(".ready").write_text("")
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
time.sleep(1.5)  # a second SIGINT, were one passed on, arrives in this time
out.write_text(str(len(got)))
sys.exit(130 if got else 0)  # stopped by it, as a kit worker exits
"""


def _group_of_counting_workers(tmp_path, n: int):
    from kit.workers import WorkerGroup

    group = WorkerGroup()
    group.__enter__()
    files = [tmp_path / f"w{i}.txt" for i in range(n)]
    for f in files:
        group.start([sys.executable, "-c", COUNTING_WORKER, str(f)], dict(os.environ))
    return group, files


def _signal_self_when_ready(files, signum: int) -> None:
    """From another thread: once every worker is ready, signal this (the parent) process."""
    import threading

    def send() -> None:
        _wait_for(lambda: all(f.with_suffix(".ready").exists() for f in files), 30, "workers")
        os.kill(os.getpid(), signum)

    threading.Thread(target=send, daemon=True).start()


def test_one_ctrl_c_is_passed_on_exactly_once_to_each_worker(tmp_path):
    group, files = _group_of_counting_workers(tmp_path, 2)
    _signal_self_when_ready(files, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # raised once every worker has exited
        try:
            group.wait()
        finally:
            group.__exit__(None, None, None)
    assert [f.read_text() for f in files] == ["1", "1"]
    assert [p.returncode for p in group.procs] == [130, 130]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_passed_on_and_the_handlers_restored(tmp_path, signum):
    before = signal.getsignal(signum)
    group, files = _group_of_counting_workers(tmp_path, 2)
    _signal_self_when_ready(files, signum)
    with pytest.raises(SystemExit) as info:
        try:
            group.wait()
        finally:
            group.__exit__(None, None, None)
    assert info.value.code == 128 + signum
    assert [p.returncode for p in group.procs] == [-signum, -signum]  # ended by the signal
    assert signal.getsignal(signum) is before


HUNG_UP_CHILD = """
import os, sys, time
from kit.sweep import GracefulInterrupt
with GracefulInterrupt() as interrupt:
    # one write, done once the test reads it (print's write of the newline could still be
    # under way when the terminal hangs up: EIO there, in the test's code, not kit's)
    os.write(1, b"ready\\n")
    deadline = time.time() + 30
    try:
        while not interrupt.asked and time.time() < deadline:
            time.sleep(0.01)
    except OSError as exc:  # the handler's message to a hung-up terminal, raised here
        open(sys.argv[1], "w").write(f"raised {exc}")
        raise SystemExit(1)
open(sys.argv[1], "w").write("asked" if interrupt.asked else "never asked")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a pseudo-terminal (POSIX)")
def test_a_terminal_hangup_stops_a_sweep_without_raising_from_its_message(tmp_path):
    """SIGHUP from a closed terminal: the handler's message cannot be written there any more
    (EIO); that OSError was raised wherever the main thread was (inside a storage write,
    say), not the graceful stop at the end of the epoch."""
    import pty

    said = tmp_path / "said.txt"
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as its controlling terminal
        os.environ["PYTHONPATH"] = str(Path(__file__).parents[1])
        os.execv(sys.executable, [sys.executable, "-c", HUNG_UP_CHILD, str(said)])
    try:
        seen = b""
        while b"ready" not in seen:
            seen += os.read(master, 1024)
    finally:
        os.close(master)  # the terminal hangs up: SIGHUP to its session
    _, status = os.waitpid(pid, 0)
    assert said.read_text() == "asked" and os.waitstatus_to_exitcode(status) == 0


def test_a_signal_after_every_worker_finished_stops_nothing(tmp_path):
    """SIGTERM once the workers have all finished (exit 0) and none is queued: the group's
    work is done, so wait() returns their codes (kit train --jobs then prints the results, not
    a --resume hint that fails with "no unfinished group"); with workers still queued, or a
    worker that did not finish, it is a stop."""
    from kit.workers import EndedBySignal, WorkerGroup

    done = [sys.executable, "-c", "pass"]
    for queued, code in (([], None), ([(done, dict(os.environ))], 128 + signal.SIGTERM)):
        with WorkerGroup() as group:
            group.start(done, dict(os.environ))
            _wait_for(lambda group=group: group.procs[0].poll() is not None, 30, "the worker")
            os.kill(os.getpid(), signal.SIGTERM)  # handled: noted, passed on to nobody
            if code is None:
                assert group.wait(queued, jobs=1) == [0]
            else:
                with pytest.raises(EndedBySignal) as ended:
                    group.wait(queued, jobs=1)
                assert ended.value.code == code and len(group.procs) == 1  # none started


def test_a_failure_while_starting_workers_terminates_those_started(tmp_path):
    from kit.workers import WorkerGroup

    with pytest.raises(FileNotFoundError), WorkerGroup() as group:
        group.start([sys.executable, "-c", COUNTING_WORKER, str(tmp_path / "w.txt")],
                    dict(os.environ))
        group.start([str(tmp_path / "no-such-program")], dict(os.environ))
    assert [p.returncode for p in group.procs] == [-signal.SIGTERM]


def test_a_sigterm_while_workers_start_reaches_the_started_and_stops_the_rest(tmp_path):
    from kit.workers import WorkerGroup

    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(SystemExit) as ended, WorkerGroup() as group:
        group.start(sleeper, dict(os.environ))
        os.kill(os.getpid(), signal.SIGTERM)  # handled here: passed on to the first worker
        group.start(sleeper, dict(os.environ))  # not started: it would never hear of it
        group.start(sleeper, dict(os.environ))
        group.wait()
    assert ended.value.code == 128 + signal.SIGTERM
    assert [p.returncode for p in group.procs] == [-signal.SIGTERM]  # one started, ended


def test_workers_import_this_checkout_before_any_kit_on_pythonpath(monkeypatch):
    import kit
    from kit.workers import worker_pythonpath

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/another/checkout", "/more"]))
    here = str(Path(kit.__file__).resolve().parents[1])
    assert worker_pythonpath().split(os.pathsep) == [here, "/another/checkout", "/more"]


def _fake_workers(monkeypatch, codes: list[int]) -> list[dict]:
    """run_processes' WorkerGroup starting nothing: the environments it was given, recorded,
    and `codes` as its workers' exit codes."""
    from kit.workers import WorkerGroup

    envs: list[dict] = []
    monkeypatch.setattr(WorkerGroup, "start", lambda self, cmd, env, **popen: envs.append(env))
    monkeypatch.setattr(WorkerGroup, "wait", lambda self, *args, **kwargs: list(codes))
    return envs


def test_one_failed_worker_of_two_fails_the_sweep(sweep_env, monkeypatch):
    _fake_workers(monkeypatch, [2, 0])
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--workers", 2, expect=2).output
    assert "error: worker exit codes [2, 0]; the study keeps every finished trial" in out


def test_workers_are_numbered_from_this_machines_kit_sweep_worker(sweep_env, monkeypatch):
    envs = _fake_workers(monkeypatch, [0, 0, 0])
    monkeypatch.setenv("KIT_SWEEP_WORKER", "100")  # the second machine of docs/sweeps.md
    run_cli("sweep", "exp=tiny", "--trials", 3, "--workers", 3, "-q")
    assert [env["KIT_SWEEP_WORKER"] for env in envs] == ["100", "101", "102"]


# --- scale-out on PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    if binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries missing in CI: the dev extra installs pgserver")
        warnings.warn("SKIPPING the PostgreSQL scale-out tests: no PostgreSQL binaries "
                      "(pip install pgserver, part of the dev extra)", stacklevel=1)
        pytest.skip("PostgreSQL cannot be installed here (no pgserver wheel, no pg_ctl)")
    # a folder of its own in /tmp, not under pytest's: the cluster's user must reach it, and
    # every pytest starting meanwhile (another run, an xdist worker) resets
    # /tmp/pytest-of-USER to mode 700, which failed initdb with "Permission denied"
    root = Path(tempfile.mkdtemp(prefix="kit-test-pg-"))
    try:
        server = LocalPostgres(root).start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _create_database(server, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.url.replace("postgresql://",
                                                         "postgresql+psycopg2://"),
                                      isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def _accounted_for(root: Path, url: str, finished: int) -> list:
    """Every trial exactly once: none failed or left running, at most one over the target (both
    workers may start the last one), each with its own run folder, exactly the study's folders
    on disk, and each complete trial's value the score its metrics.json holds."""
    trials = _study(url).get_trials()
    states = [t.state for t in trials]
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states, states
    assert finished <= len(trials) <= finished + 1
    run_dirs = {Path(t.user_attrs["run_dir"]).resolve() for t in trials}
    assert len(run_dirs) == len(trials)
    assert run_dirs == {p.resolve() for p in (root / "runs/tiny").glob("tiny-t*")}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert metrics["score"] == pytest.approx(t.value, rel=1e-12)
    return trials


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])  # postgres://: Heroku's
def test_a_storage_that_does_not_open_is_named_without_its_password(sweep_env, scheme):
    # nothing listens on port 9: the driver's own error, the URL shown with the password masked
    url = f"{scheme}://kit:s3cret@127.0.0.1:9/kit"
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "--storage", url, expect=2).output
    assert f"error: storage '{scheme}://kit:***@127.0.0.1:9/kit' does not open" in out
    assert "s3cret" not in out and "Traceback" not in out
    assert "127.0.0.1" in out.split("does not open", 1)[1]  # the driver tried the server
    assert "NoSuchModuleError" not in out  # postgres:// was not read as an unknown dialect


@pytest.mark.parametrize(("url", "shown", "driver_said"), [
    # libpq and SQLAlchemy read a password from the query too: it was printed and written
    ("postgresql://kit@h:5/db?password=s3cret", "postgresql://kit@h:5/db?password=***",
     'password "s3cret" refused'),
    ("postgresql://kit@h/db?sslmode=require&PassWord=s3cret&application_name=k",
     "postgresql://kit@h/db?sslmode=require&PassWord=***&application_name=k", "s3cret"),
    # an unescaped "@" or "/" in the password: SQLAlchemy splits at the first "@" and showed
    # the rest as the host (and masking its password "p" mangled "psycopg2")
    ("postgresql://kit:p@ss3cret@h:9/db", "postgresql://kit:***@h:9/db",
     'could not translate host name "ss3cret@h"'),
    ("postgresql://kit:a/s3cret@h/db", "postgresql://kit:***@h/db", "a/s3cret"),
    ("postgres://kit:s3cret%40x@h/db", "postgres://kit:***@h/db", "s3cret@x"),
    # the driver reads a password up to its first "@": a "?" in it is no query
    ("postgresql://u:s3cret?x@h/db", "postgresql://u:***@h/db", "s3cret?x"),
    # an "@" in the database name is not the password's end
    ("postgresql://u:s3cret@h:5432/db@x", "postgresql://u:***@h:5432/db@x", "s3cret"),
    ("sqlite+pysqlite:///runs/x.db", "sqlite+pysqlite:///runs/x.db", ""),
])
def test_storage_urls_are_shown_without_their_secrets(url, shown, driver_said):
    from kit.sweep import masked, shown_url

    assert shown_url(url) == shown
    said = masked(f"(psycopg2.OperationalError) {driver_said} for {url}", url)
    assert "s3cret" not in said and said.startswith("(psycopg2.OperationalError)")


def test_a_server_storage_is_one_storage_however_its_url_is_written(sweep_env):
    """kit connects to postgres:// as postgresql+psycopg2://, and the docs advise $PGPASSWORD
    over a password in the URL: the best file's origin was the masked URL as written, so the
    same study on the same server was refused as another storage's."""
    from kit.sweep import _same_origin, best_origin

    def setup(url):
        return prepare("tiny", None, "s", url)

    first = best_origin(setup("postgres://kit:pw@DB.example:5432/kit"))
    assert "pw" not in json.dumps(first)
    for same in ("postgresql://kit@db.example/kit", "postgresql+psycopg2://kit:pw@db.example/kit",
                 "postgresql://kit:other@db.example:5432/kit?password=x"):
        assert _same_origin(first, setup(same)), same
    for other in ("postgresql://kit@db.example:5433/kit", "postgresql://kit@db.example/kit2",
                  "postgresql://ana@db.example/kit", "mysql://kit@db.example/kit"):
        assert not _same_origin(first, setup(other)), other
    # as the driver reads them: an "@" in a database's name, an IPv6 host and its port
    at = best_origin(setup("postgresql://u:pw@host:5432/db@x"))
    assert not _same_origin(at, setup("postgresql://u:pw@otherhost:6000/other@x"))
    v6 = best_origin(setup("mssql+pyodbc://u:pw@[::1]:5/db"))
    assert not _same_origin(v6, setup("mssql+pyodbc://u:pw@[::1:5]/db"))
    # an older best file's masked URL as written still matches its own spelling, and now others
    old = {"study": "s", "storage": "postgres://kit:***@db.example:5432/kit"}
    assert _same_origin(old, setup("postgres://kit:pw@db.example:5432/kit"))
    assert _same_origin(old, setup("postgresql://kit@db.example/kit"))


def test_a_driver_qualified_sqlite_url_is_a_file(sweep_env):
    """sqlite+pysqlite:/// was no file to kit: its folder was not made (the storage did not
    open) and the default storage named so was another storage."""
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "-q", "--study", "new", "--storage",
                  "sqlite+pysqlite:///runs/newdir/x.db").output
    assert (sweep_env / "runs/newdir/x.db").is_file(), out
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--storage",
                  "sqlite+pysqlite:///runs/tiny/sweep.db").output
    assert "2 complete" in out and "wrote" in out


def test_sweeps_started_together_on_a_new_sqlite_file_all_open_it(tmp_path):
    # the losers of the race to create Optuna's tables get "table ... already exists" from
    # SQLite (not only IntegrityError): they retry and find the tables made
    import subprocess
    import sys

    # each process imports optuna, says so, then waits for the go file: they all open their
    # storage within a millisecond of each other (a fixed start 6 s ahead waited past imports)
    opener = ("import os, sys, time\nimport optuna.storages\nfrom kit.sweep import make_storage\n"
              "print('ready', flush=True)\n"
              "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.0005)\n"
              "make_storage(sys.argv[1])\n")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    go = tmp_path / "go"
    # four races at once, three processes on each new file
    urls = [f"sqlite:///{tmp_path}/race{round_}.db" for round_ in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", opener, url, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for url in urls for _ in range(3)]
    try:
        ready = [proc.stdout.readline() for proc in procs]
    finally:
        go.touch()  # never leave one waiting
    errors = [proc.communicate()[1] for proc in procs]
    assert ready == ["ready\n"] * 12, errors
    assert [proc.returncode for proc in procs] == [0] * 12, errors


def test_workers_get_the_storage_url_in_their_environment_not_their_argv(sweep_env,
                                                                         monkeypatch, capsys):
    from kit.sweep import STORAGE_ENV, worker_command

    url = f"sqlite:///{sweep_env / 'elsewhere.db'}"
    setup = prepare("tiny", None, None, url)
    assert not any(url in part for part in worker_command(setup, "tiny", None, 2, None))
    monkeypatch.setenv(STORAGE_ENV, url)  # what a worker (or a user) has instead
    assert prepare("tiny", None, None, None).storage_url == url
    monkeypatch.setenv("KIT_SWEEP_WORKER", "100")  # a machine's offset, set by hand: still said
    capsys.readouterr()
    assert prepare("tiny", None, None, None).storage_url == url
    assert f"note: storage from ${STORAGE_ENV}: {url}" in capsys.readouterr().err
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--workers", 2, "-q").output
    assert out.count(f"note: storage from ${STORAGE_ENV}: {url}") == 1  # not once per worker
    finished = [t for t in _study(url).get_trials()
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 2 and not (sweep_env / "runs/tiny/sweep.db").exists()


def test_two_workers_share_one_postgres_study_and_account_for_every_trial(sweep_env, postgres):
    # a password (trust authentication ignores it) that the summary must not print
    url = _create_database(postgres, "two_workers").replace("postgres@", "postgres:s3cret@")
    out = run_cli("sweep", "exp=tiny", "--trials", 6, "--workers", 2, "--storage", url).output
    assert "complete" in out
    assert "s3cret" not in out and "on postgresql://postgres:***@127.0.0.1:" in out
    trials = _accounted_for(sweep_env, url, 6)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # really two processes


def test_a_killed_worker_leaves_a_usable_study_and_a_restarted_one_continues(
        sweep_env, postgres):
    url = _create_database(postgres, "killed_worker")
    env = os.environ | {"KIT_SWEEP_HEARTBEAT_S": "1"}
    # a trial that cannot end by itself (no early stop) is sure to be killed mid-trial
    _endless_first(sweep_env, 1, 3, url)
    proc = _kit("sweep", "exp=tiny", "--trials", "3", "--storage", url, "-q", env=env)

    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited early: {proc.communicate()[0]}")
        try:
            trials = _study(url).get_trials()
        except Exception:  # the study is not created yet
            return False
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)

    _wait_for(running, what="a trial past its first epoch")
    proc.kill()  # SIGKILL: no handler runs, the trial stays RUNNING until the heartbeat says
    proc.wait()
    killed = next(t for t in _study(url).get_trials() if t.state == TrialState.RUNNING)
    time.sleep(2.5)  # past the grace period of two missed heartbeats
    # a fresh worker process, as on another machine, with the same storage URL
    restarted = _kit("sweep", "exp=tiny", "--trials", "3", "--storage", url, "-q", env=env)
    out, _ = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, out
    trials = {t.number: t for t in _started(url)}
    assert trials[killed.number].state == TrialState.FAIL  # marked failed by the heartbeat
    done = [t for t in trials.values() if t.state in FINISHED]
    assert len(done) == 3 and killed.number not in {t.number for t in done}
    assert len({t.user_attrs["worker"] for t in trials.values()}) == 2  # killed + restarted
    assert all(t.state in FINISHED for n, t in trials.items() if n != killed.number)


def test_a_paused_worker_whose_trial_was_taken_over_samples_on(sweep_env):
    """A worker paused past the heartbeats' grace (Ctrl-Z, a sleeping laptop) has its trial
    failed by another sweep; when it resumed, its next report raised UpdateFinishedTrialError,
    Optuna's tell then "Cannot tell a FAIL trial", and the worker died with two tracebacks."""
    url = _sqlite(sweep_env)
    env = os.environ | {"KIT_SWEEP_HEARTBEAT_S": "1"}
    _endless_first(sweep_env, 1, 3)
    paused = _kit("sweep", "exp=tiny", "--trials", "3", "-q", env=env)
    _wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values
                          for t in _started(url)), what="a trial past its first epoch",
              proc=paused)
    paused.send_signal(signal.SIGSTOP)
    try:
        time.sleep(5)  # past the 2 s grace, in SQLite's whole seconds
        other = _kit("sweep", "exp=tiny", "--trials", "2", "-q", env=env)
        out, _ = other.communicate(timeout=300)
        assert other.returncode == 0, out
        assert _started(url)[0].state == TrialState.FAIL  # taken over
    finally:
        paused.send_signal(signal.SIGCONT)
    out, _ = paused.communicate(timeout=300)
    assert paused.returncode == 0, out
    assert "trial 0 was marked failed by another sweep" in out and "Traceback" not in out
    assert sum(t.state in FINISHED for t in _started(url)) == 3


def test_a_trial_taken_over_after_its_last_report_is_left_too(sweep_env, monkeypatch):
    """Failed by another sweep between its last report and its return (an SWA model's
    validation), the trial's score went to Optuna's tell, which cannot tell a finished trial:
    the worker died with "Should not reach"."""
    import kit.train.recipe as recipe

    real, taken = recipe.train_one, []

    def taken_after_training(config, files, **kwargs):
        metrics = real(config, files, **kwargs)
        if not taken:  # the first trial only, as another sweep's fail_stale_trials would
            trial = kwargs["on_epoch"].trial
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            taken.append(trial.number)
        return metrics

    monkeypatch.setattr(recipe, "train_one", taken_after_training)
    out = run_cli("sweep", "exp=tiny", "--trials", 2).output
    assert f"trial {taken[0]} was marked failed by another sweep" in out
    assert "Traceback" not in out and "2 complete, 0 pruned, 1 failed" in out


def test_a_worker_whose_trial_was_taken_over_stops_once_the_study_has_its_trials(
        sweep_env, monkeypatch, capsys):
    """Its trial failed by another sweep, whose workers meanwhile finished the study's N
    trials: the worker stops there, it does not train an N+1-th."""
    import kit.train.recipe as recipe
    from kit.sweep import run_worker

    trained = []

    def taken_while_the_others_finish(config, files, **kwargs):
        trained.append(files.root.name)
        trial = kwargs["on_epoch"].trial
        if len(trained) == 1:
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            for _ in range(2):
                trial.study.add_trial(optuna.trial.create_trial(value=0.5))
        return {"score": 0.5}

    monkeypatch.setattr(recipe, "train_one", taken_while_the_others_finish)
    setup = prepare("tiny", None, None, None)
    run_worker(setup, 2, None, False)
    assert "trial 0 was marked failed by another sweep" in capsys.readouterr().err
    assert trained == ["tiny-t0000"]
    assert [t.state for t in _study(setup.storage_url).trials] == [
        TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


# --- ablation ------------------------------------------------------------------------------


def test_overrides_a_sweep_or_an_ablation_would_replace_are_refused(sweep_env):
    """The sampled value (the ablation's groups) replaced them without a word, and of
    `trials=2` and `--trials 1` the override won."""
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "model.hidden=16", expect=2).output
    assert "every trial samples model.hidden" in out and 'sweep.params."model.hidden"' in out
    # so is a table holding one (its value was dropped without a word, as docs said it was not)
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "model={ type = 'gru', hidden = 16 }",
                  expect=2).output
    assert "every trial samples model.hidden" in out
    # what a trial does not replace is allowed: a conditional parameter's key (it trains
    # where the condition fails) and a table around a swept key that leaves it out
    prepare("tiny", ["train={ epochs = 1, batch_size = 8 }"], None, None)  # (train.lr swept)
    before = _edit_tiny(sweep_env, lambda doc: doc["sweep"]["params"].update({
        "train.ema": {"type": "float", "low": 0.9, "high": 0.99,
                      "when": {"model.type": "attention_gru"}}}))
    prepare("tiny", ["train.ema=0.5"], None, None)
    _edit_tiny(sweep_env, lambda doc: doc.update(before))
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "trials=2", expect=2).output
    assert "'trials=2' and --trials 1: give one" in out
    out = run_cli("sweep", "exp=tiny", "--workers", 1, "workers=2", expect=2).output
    assert "'workers=2' and --workers 1: give one" in out
    out = run_cli("sweep", "exp=tiny", "trials=2", "trials=3", expect=2).output
    assert "'trials=3' and 'trials=2': give one" in out  # (not an option never typed)
    for bad in ("trials=true", "trials=2.5", "workers=true"):  # taken as 1, or an unknown key
        out = run_cli("sweep", "exp=tiny", bad, expect=2).output
        assert f"= takes a whole number, as --{bad.split('=')[0]} does" in out, out
    for zero in (("--workers", 0), ("workers=0",)):
        assert "--trials and --workers must be >= 1" in run_cli(
            "sweep", "exp=tiny", "--trials", 1, *zero, expect=2).output
    out = run_cli("ablate", "exp=tiny", "--groups", "raw", 'features.groups=["diffs"]',
                  expect=2).output
    assert "sets features.groups itself (each variant's); use --groups" in out
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", "data.train=nope.parquet",
                  expect=2).output
    assert "no such data file" in out
    assert not (sweep_env / "runs").exists()  # all refused before anything was written


def test_ablate_checks_each_variants_budget_before_training(sweep_env):
    from kit.competition import load_spec
    from kit.config import load_experiment
    from kit.features.sets import build_feature_set
    from kit.models import build_model, count_params

    spec = load_spec(load_experiment("tiny")["spec"])
    inputs = len(build_feature_set(spec, ["raw"], None).outputs)
    budget = count_params(build_model({"type": "gru", "hidden": 1, "layers": 1}, inputs,
                                      spec.n_outputs))  # raw fits at hidden 1, raw+diffs not
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", f"model.params={budget}", "-q",
                  expect=2).output
    assert "the variant 'raw+diffs' (groups ['raw', 'diffs'])" in out and "too small" in out
    assert not (sweep_env / "runs").exists()  # found before the first variant trained


def test_a_failed_ablation_run_is_recorded_and_the_rest_goes_on(sweep_env, monkeypatch):
    from kit.train import recipe
    from kit.train.trainer import TrainingDiverged

    real, calls = recipe.train_one, []

    def second_diverges(config, files, **kwargs):  # fault injection: the second run fails
        calls.append(files.root.name)
        if len(calls) == 2:
            raise TrainingDiverged(f"{files.root}: training diverged (injected)")
        return real(config, files, **kwargs)

    monkeypatch.setattr(recipe, "train_one", second_diverges)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1,2", "-q",
                  expect=1).output
    assert len(calls) == 6  # raw, raw+diffs and -raw, each with two seeds: all tried
    (saved,) = (sweep_env / "runs/tiny").glob("ablate-*.json")
    variants = {v["label"]: v for v in json.loads(saved.read_text())["variants"]}
    raw = variants["raw"]
    assert len(raw["errors"]) == 1 and "raw seed 2: " in raw["errors"][0]
    metrics = json.loads((Path(raw["runs"][0]) / "metrics.json").read_text())
    assert raw["score"] == pytest.approx(metrics["score"])  # the mean of the finished seed
    assert "(1 of 2 runs failed)" in out and "failed: raw seed 2:" in out
    assert variants["-diffs"]["errors"] == raw["errors"]  # the same runs as the raw rung
    assert all("errors" not in v for label, v in variants.items()
               if label not in ("raw", "-diffs"))


def test_an_ablation_whose_runs_all_diverge_prints_failed_rows(sweep_env):
    frame = pl.read_parquet(load_experiment("tiny")["data"]["train"])
    frame.with_columns(pl.col("t0") * 1e30).write_parquet(sweep_env / "extreme.parquet")
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs",
                  f"data.train={sweep_env / 'extreme.parquet'}", "-q", expect=1).output
    rows = [line.split() for line in out.splitlines() if line.startswith(("raw", "-raw"))]
    assert [row[:2] for row in rows] == [["raw", "failed"], ["raw+diffs", "failed"],
                                         ["-raw", "failed"]]
    assert "training diverged (train loss inf" in out and "Traceback" not in out
    (saved,) = (sweep_env / "runs/tiny").glob("ablate-*.json")
    summary = json.loads(saved.read_text())
    assert [v["score"] for v in summary["variants"]] == [None] * 4
    assert summary["changes"] == [None] * 4


def test_ablate_trains_the_ladder_and_the_leave_one_out_variants(sweep_env):
    import tomllib

    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs,ewm", "--seeds", "1,2",
                  "-q").output
    labels = ["raw", "raw+diffs", "raw+diffs+ewm", "-raw", "-diffs", "-ewm"]
    (saved,) = (sweep_env / "runs/tiny").glob("ablate-*.json")
    summary = json.loads(saved.read_text())
    variants = {v["label"]: v for v in summary["variants"]}
    assert list(variants) == labels
    runs = {p.resolve() for p in (sweep_env / "runs/tiny").iterdir() if p.is_dir()}
    # six variants, two seeds, each an ordinary run; -ewm is raw+diffs, trained once
    assert len(runs) == 5 * 2 and variants["-ewm"]["runs"] == variants["raw+diffs"]["runs"]
    assert {Path(r).resolve() for v in variants.values() for r in v["runs"]} == runs
    for v in variants.values():  # each figure the mean over its seeds' own metrics
        metrics = [json.loads((Path(r) / "metrics.json").read_text()) for r in v["runs"]]
        configs = [tomllib.loads((Path(r) / "config.toml").read_text()) for r in v["runs"]]
        assert [c["seed"] for c in configs] == [1, 2]
        assert all(c["features"]["groups"] == v["groups"] for c in configs)
        assert v["score"] == pytest.approx(sum(m["score"] for m in metrics) / 2)
        for target, value in v["per_target"].items():
            assert value == pytest.approx(sum(m["per_target"][target] for m in metrics) / 2)
    sign, change = summary["sign"], dict(zip(labels, summary["changes"], strict=True))
    full = variants["raw+diffs+ewm"]
    assert change["raw"] is None  # the first rung has nothing below it

    def value(label: str, key: str) -> float:
        row = variants[label]
        return row["score"] if key == "score" else row["per_target"][key]

    for key in ["score", *full["per_target"]]:
        assert change["raw+diffs"][key] == pytest.approx(
            sign * (value("raw+diffs", key) - value("raw", key)))
        assert change["-diffs"][key] == pytest.approx(
            sign * (value("raw+diffs+ewm", key) - value("-diffs", key)))
    line = next(x for x in out.splitlines() if x.startswith("-diffs "))
    assert f"{change['-diffs']['score']:+.4f}" in line  # the table prints what was stored
    assert Path(out.rsplit("wrote ", 1)[1].strip()).resolve() == saved.resolve()
    bad = run_cli("ablate", "exp=tiny", "--groups", "raw,nope", expect=2).output
    assert "nope" in bad
    twice = run_cli("ablate", "exp=tiny", "--groups", "raw", "--seeds", "3,3", expect=2).output
    assert "distinct seeds" in twice
    assert {p.resolve() for p in (sweep_env / "runs/tiny").iterdir() if p.is_dir()} == runs


def test_an_error_metric_is_minimised_by_sweeps_and_signed_by_ablations(sweep_env):
    """Every sweep and ablation test scored weighted Pearson: a study maximising rmse, a best
    file of the worst trial, or an ablation calling a group that lowers rmse harmful passed."""
    spec = tomllib.loads(Path(load_experiment("tiny")["spec"]).read_text())
    (sweep_env / "rmse.toml").write_text(tomli_w.dumps({**spec, "metric": {"name": "rmse"}}))
    _edit_tiny(sweep_env, lambda d: d.update(spec=str(sweep_env / "rmse.toml")))
    assert prepare("tiny", None, None, None).direction == "minimize"
    run_cli("sweep", "exp=tiny", "--trials", 3, "-q")
    trials = _study(_sqlite(sweep_env)).get_trials()
    lowest = min(trials, key=lambda t: t.value)
    assert len({t.value for t in trials}) > 1  # the trials scored apart
    best = load_experiment("tiny_best")
    assert best["train"]["lr"] == pytest.approx(lowest.params["train.lr"])
    run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1", "-q")
    _, summary = _saved_ablation(sweep_env)
    assert summary["sign"] == -1.0
    scores = {v["label"]: v["score"] for v in summary["variants"]}
    change = dict(zip([v["label"] for v in summary["variants"]], summary["changes"],
                      strict=True))
    # positive = better: the rmse the second group takes off
    assert change["raw+diffs"]["score"] == pytest.approx(scores["raw"] - scores["raw+diffs"])


def test_the_shipped_sweep_experiments_have_valid_spaces(monkeypatch):
    repo = Path(__file__).parents[1]
    monkeypatch.setenv("KIT_EXPERIMENTS", str(repo / "experiments"))
    monkeypatch.chdir(repo)
    import tomllib

    swept = [p.stem for p in (repo / "experiments").glob("*.toml")
             if "sweep" in tomllib.loads(p.read_text())]
    assert swept
    for name in swept:
        assert prepare(name, None, None, None).params
    assert "must be >= 1" in run_cli("sweep", "exp=gru_sweep", "--trials", 0, expect=2).output
    assert "--timeout must be a number of seconds > 0" in run_cli(
        "sweep", "exp=gru_sweep", "--timeout", -5, expect=2).output
    missing = run_cli("sweep", "exp=gru_sweep", "data.train=nope.parquet", expect=2).output
    assert "data.train = 'nope.parquet': no such data file" in missing


def test_the_best_experiment_extends_a_sweep_given_by_path(sweep_env):
    path = sweep_env / "experiments" / "tiny.toml"
    run_cli("sweep", str(path), "--trials", 1, "-q")
    import tomllib

    best = tomllib.loads((sweep_env / "experiments" / "tiny_best.toml").read_text())
    assert best["extends"] == str(path.resolve())
    assert load_experiment("tiny_best")["model"]["type"] in ("gru", "attention_gru")
    # the trial's config.toml records the default loss it trained, which the experiment
    # leaves out: the same loss, no section of the best file (r296)
    (run,) = (sweep_env / "runs" / "tiny").glob("tiny-t*")
    assert tomllib.loads((run / "config.toml").read_text())["loss"]["terms"] == {"mse": 1.0}
    assert "loss" not in best


def test_a_sweep_by_path_from_a_folder_without_experiments_writes_its_best_file(
        sweep_env, tmp_path, monkeypatch):
    """Its trials trained, then the best file failed: `experiments/.tiny_best.toml.PID.tmp: No
    such file or directory`."""
    path = sweep_env / "experiments" / "tiny.toml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("KIT_EXPERIMENTS")
    monkeypatch.chdir(elsewhere)
    run_cli("sweep", str(path), "--trials", 1, "-q")
    import tomllib

    best = tomllib.loads((elsewhere / "experiments" / "tiny_best.toml").read_text())
    assert best["extends"] == str(path.resolve())


def test_the_best_file_holds_what_the_best_trial_trained(sweep_env):
    exps = sweep_env / "experiments"
    # as a worker of --workers runs it: no summary, no best file (its parent writes them)
    assert sweep("tiny", ["train.batch_size=4"], trials=1, study="a/b", progress=False,
                 summary=False) == {}
    assert not list(exps.glob("*_best.toml"))
    (run,) = (sweep_env / "runs/tiny").glob("a-b-t*")  # the study's name made one safe folder
    # a study of an older kit (no recorded config) resumed without the override: the best
    # trial trained with batch 4, and the best file must say so
    _forget_identity(_sqlite(sweep_env))
    run_cli("sweep", "exp=tiny", "--trials", 1, "--study", "a/b", "-q")
    best = exps / "tiny@a+2fb_best.toml"
    assert load_experiment(str(best))["train"]["batch_size"] == 4
    assert load_experiment(str(exps / "tiny.toml"))["train"]["batch_size"] != 4


def test_the_best_file_holds_an_unswept_section_the_trial_trained_otherwise(sweep_env):
    """The experiment edited after the trial trained (or a resume with other overrides): a
    section neither swept nor overridden now, that the trial trained differently, is kept."""
    from kit.sweep import trial_config, write_best
    from kit.train.recipe import experiment_config
    from kit.train.runs import RunFiles, toml_safe

    setup = prepare("tiny", None, None, None)
    assert not any(p.name.startswith("normaliser.") for p in setup.params)
    assert setup.base["normaliser"]["clip"] != 3.0
    values = {"train.lr": 2e-3, "model.hidden": 8, "model.type": "gru",
              "features.groups": ["raw"]}
    trained = trial_config(setup.base, values)
    trained["normaliser"] = {**trained["normaliser"], "clip": 3.0}
    files = RunFiles(sweep_env / "runs/tiny/tiny-t0000")
    files.root.mkdir(parents=True)
    files.config_path.write_text(tomli_w.dumps(toml_safe(trained)))
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"run_dir": str(files.root)})
    best = write_best(setup, trial)
    assert experiment_config(str(best))["normaliser"]["clip"] == 3.0  # what it trains


def _edit_tiny(root: Path, edit) -> dict:
    """Rewrite experiments/tiny.toml through `edit(doc)`; returns the document before."""
    import copy

    path = root / "experiments" / "tiny.toml"
    before = tomllib.loads(path.read_text())
    doc = copy.deepcopy(before)
    edit(doc)
    path.write_text(tomli_w.dumps(doc))
    return before


def test_a_study_refuses_another_experiment_space_or_config_before_training(sweep_env):
    url = _sqlite(sweep_env)
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    before = _edit_tiny(sweep_env, lambda d: d["sweep"]["params"]["train.lr"].update(high=0.1))
    out = run_cli("sweep", "exp=tiny", "--trials", 2, expect=2).output
    assert "search space (sweep.params) differ: changed ['train.lr']" in out
    assert "pick a new --study name, or put the old settings back" in out
    (sweep_env / "experiments" / "tiny.toml").write_text(tomli_w.dumps(before))
    # 1-epoch trials are not ranked with 2-epoch ones
    out = run_cli("sweep", "exp=tiny", "train.epochs=1", "--trials", 2, expect=2).output
    assert "config keys differ: changed ['train.epochs']" in out
    # another experiment pointed at this study and storage
    other = {**before, "model": {"type": "lstm", "hidden": 8, "layers": 1}}
    (sweep_env / "experiments" / "tiny2.toml").write_text(tomli_w.dumps(other))
    out = run_cli("sweep", "exp=tiny2", "--study", "tiny", "--storage", url, "--trials", 2,
                  expect=2).output
    assert "it sweeps experiment 'tiny', this command 'tiny2'" in out
    assert len(_study(url).get_trials()) == 1  # none of them created a trial
    assert len(list((sweep_env / "runs").glob("*/tiny-t*"))) == 1
    # settings that do not change what a trial trains are free; the same sweep resumes
    run_cli("sweep", "exp=tiny", "train.threads=1", "sweep.trials=9", "--trials", 2, "-q")
    assert [t.state for t in _study(url).get_trials()] == [TrialState.COMPLETE] * 2


def test_the_experiments_own_value_of_a_key_every_trial_samples_may_change(sweep_env):
    from kit.sweep import make_study, study_identity

    def resume():
        setup = prepare("tiny", None, None, None)
        return make_study("tiny", make_storage(setup.storage_url), setup.direction,
                          setup.table, 2, study_identity(setup), setup.params)

    resume().add_trial(optuna.trial.create_trial(value=0.5))
    config = resume().user_attrs["kit_config"]
    # every trial samples train.lr: the experiment's own value trains nothing
    _edit_tiny(sweep_env, lambda d: d["train"].update(lr=0.05))
    assert resume().user_attrs["kit_config"] == config
    _edit_tiny(sweep_env, lambda d: d["train"].update(batch_size=4))  # a key it does train
    with pytest.raises(SweepError, match=r"config keys differ: changed \['train.batch_size'\]"):
        resume()


def test_a_study_knows_its_files_by_content_and_survives_a_moved_checkout(sweep_env,
                                                                          monkeypatch):
    import shutil

    import kit.config

    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    train = Path(tomllib.loads((sweep_env / "experiments/tiny.toml").read_text())
                 ["data"]["train"])
    # the same file by another spelling of its path: the same sweep
    relative = os.path.relpath(train, sweep_env)
    run_cli("sweep", "exp=tiny", f"data.train={relative}", "--trials", 2, "-q")
    # another file under the same name: not the same sweep
    other = sweep_env / "other" / train.name
    other.parent.mkdir()
    pl.read_parquet(train).head(-1000).write_parquet(other)
    out = run_cli("sweep", "exp=tiny", f"data.train={other}", "--trials", 3, expect=2).output
    assert "config keys differ: changed ['data.train']" in out
    # the whole folder moved (another checkout path): the study and its best file go on
    moved = sweep_env.parent / f"{sweep_env.name}-moved"
    shutil.copytree(sweep_env, moved)
    monkeypatch.chdir(moved)
    monkeypatch.setenv("KIT_EXPERIMENTS", str(moved / "experiments"))
    assert kit.config.experiments_dir() == moved / "experiments"
    (sweep_env / "runs").rename(sweep_env / "runs-gone")  # the old checkout's runs are gone
    out = run_cli("sweep", "exp=tiny", "--trials", 3, "-q").output
    assert "best trial" in (moved / "experiments/tiny_best.toml").read_text()
    # the summary's trial paths are where the runs are now, not the recorded ones (r266)
    listed = [line.split()[-1] for line in out.splitlines() if line.lstrip().startswith("#")]
    assert len(listed) == 3 and all(Path(p).is_dir() and Path(p).is_relative_to(moved)
                                    for p in listed), out


def test_a_parameter_pinned_to_one_value_is_accepted(sweep_env):
    from kit.sweep import suggest, trial_config

    _edit_tiny(sweep_env, lambda d: d["sweep"].update(
        params={"train.lr": {"type": "float", "low": 2e-3, "high": 2e-3}}))
    setup = prepare("tiny", None, None, None)
    assert [(p.name, p.low, p.high) for p in setup.params] == [("train.lr", 2e-3, 2e-3)]
    # every trial trains with the pinned value, whatever the experiment's own lr
    assert setup.base["train"]["lr"] != 2e-3
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = suggest(trial, setup.params, setup.base)
    assert values == {"train.lr": 2e-3}
    assert trial_config(setup.base, values)["train"]["lr"] == 2e-3


def test_a_parameter_of_another_type_is_refused_without_a_traceback_or_a_trial(sweep_env):
    url = _sqlite(sweep_env)
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"].update(
        {"model.hidden": {"type": "categorical", "choices": [8, 12]}}))
    result = run_cli("sweep", "exp=tiny", "--trials", 2, expect=2)
    assert "Traceback" not in result.output and result.exception.code == 2
    assert "search space (sweep.params) differ: changed ['model.hidden']" in result.output
    assert [t.state for t in _study(url).get_trials()] == [TrialState.COMPLETE]


def _forget_identity(url: str) -> None:
    """Leave a SQLite study as a kit from before the identity check made it."""
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("DELETE FROM study_user_attributes")


def test_a_study_from_before_the_identity_check_records_it_on_first_use(sweep_env):
    url = _sqlite(sweep_env)
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    _forget_identity(url)
    assert _study(url).user_attrs == {}
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "-q").output
    assert "was made before kit recorded what a study sweeps" in out
    assert _study(url).user_attrs["kit_experiment"] == "tiny"
    assert len(_study(url).get_trials()) == 2
    assert "config keys differ" in run_cli("sweep", "exp=tiny", "train.epochs=1", "--trials",
                                           3, expect=2).output


def test_a_study_from_before_the_identity_check_with_another_parameter_type_is_refused(
        sweep_env):
    url = _sqlite(sweep_env)
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    _forget_identity(url)
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"].update(
        {"model.hidden": {"type": "categorical", "choices": [8, 12]}}))
    for _ in range(2):  # refused each time: nothing was recorded the first time
        result = run_cli("sweep", "exp=tiny", "--trials", 2, expect=2)
        assert "Traceback" not in result.output
        assert "sweep.params.model.hidden: study 'tiny' drew it from IntDistribution" in (
            result.output)
    assert [t.state for t in _study(url).get_trials()] == [TrialState.COMPLETE]
    assert _study(url).user_attrs == {}


def test_underscores_in_a_study_name_are_kept_in_its_file_and_folder_names(sweep_env,
                                                                         monkeypatch):
    from kit.sweep import best_name

    # docs/sweeps.md: a study name is escaped but for A-Z a-z 0-9 - and _
    names = {}
    for study in ("my_run", "my-run"):
        setup = prepare("tiny", None, study, None)
        run_dir = Path(_one_trial(setup, monkeypatch).user_attrs["run_dir"])
        names[study] = (best_name(setup), run_dir.name)
    assert names == {"my_run": ("tiny@my_run_best", "my_run-t0000"),
                     "my-run": ("tiny@my-run_best", "my-run-t0000")}


def test_best_files_of_two_studies_never_overwrite_each_other(sweep_env):
    exps = sweep_env / "experiments"

    def origin(path: Path) -> dict:
        first = path.read_text().split("\n", 1)[0]
        return json.loads(first.removeprefix("# written by kit sweep for "))

    # names that made one file name: a/b and a-b; exp=tiny_x and exp=tiny --study x
    (exps / "tiny_x.toml").write_text((exps / "tiny.toml").read_text())
    for args in (["exp=tiny", "--study", "y/z"], ["exp=tiny", "--study", "y-z"],
                 ["exp=tiny_x"], ["exp=tiny", "--study", "x"]):
        run_cli("sweep", *args, "--trials", 1, "-q")
    files = {p.name: origin(p)["study"] for p in exps.glob("*_best.toml")}
    assert files == {"tiny@y+2fz_best.toml": "y/z", "tiny@y-z_best.toml": "y-z",
                     "tiny_x_best.toml": "tiny_x", "tiny@x_best.toml": "x"}
    assert load_experiment("tiny@y+2fz_best")["description"].startswith("best trial #0")
    # an experiment kit did not write under the name is never replaced, nor trained over
    mine = 'extends = "tiny"\ndescription = "mine"\n'
    (exps / "tiny_best.toml").write_text(mine)
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert "tiny_best.toml was written by no kit sweep of this study" in out
    assert "move or delete that file, or use another --study name" in out
    assert (exps / "tiny_best.toml").read_text() == mine
    assert "tiny" not in optuna.get_all_study_names(make_storage(_sqlite(sweep_env)))
    # a best file an older kit wrote for this study (no origin line) is replaced
    (exps / "tiny_best.toml").write_text('extends = "tiny"\ndescription = "best trial #3 of '
                                         "sweep 'tiny' (score 0.10000)\"\n")
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    assert origin(exps / "tiny_best.toml")["study"] == "tiny"
    # the same study name on another storage does not take the SQLite study's file
    before = (exps / "tiny_best.toml").read_text()
    url = f"journal:{sweep_env / 'study.log'}"
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "--storage", url, expect=2).output
    assert "was written by study 'tiny' on file runs/tiny/sweep.db" in out
    assert (exps / "tiny_best.toml").read_text() == before
    assert not (sweep_env / "study.log").exists()  # refused before the study was made
    # ... nor does the study of the same name under another runs folder (another database)
    out = run_cli("sweep", "exp=tiny", "--trials", 1, "--runs-dir", "other", expect=2).output
    assert "was written by study 'tiny' on file runs/tiny/sweep.db" in out
    # the default database named by a URL of its own is the same storage: not refused
    out = run_cli("sweep", "exp=tiny", "--trials", 3, "--storage",
                  "sqlite:///runs/tiny/sweep.db").output
    assert "3 complete" in out and "wrote" in out
    # a best file of an older kit, whose origin names the default storage by a label
    recorded = '"storage": "file ../runs/tiny/sweep.db", "relative_to": "the best file\'s folder"'
    legacy = before.replace(recorded, '"storage": "the default storage (RUNS/EXP/sweep.db)"')
    assert legacy != before
    (exps / "tiny_best.toml").write_text(legacy)
    run_cli("sweep", "exp=tiny", "--trials", 4, "-q")
    assert origin(exps / "tiny_best.toml")["storage"] == "file ../runs/tiny/sweep.db"
    # ... one whose storage file is relative to the folder the sweep ran from (before
    # 2026-12-04): read from this folder
    (exps / "tiny_best.toml").write_text(before.replace(
        recorded, '"storage": "file runs/tiny/sweep.db"'))
    run_cli("sweep", "exp=tiny", "--trials", 5, "-q")
    assert origin(exps / "tiny_best.toml")["relative_to"] == "the best file's folder"
    # ... and one that names another storage by its URL as written
    (exps / "tiny_best.toml").write_text(before.replace(recorded, f'"storage": "{url}"'))
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q", "--storage", url)
    assert origin(exps / "tiny_best.toml")["storage"] == "file ../study.log"


def test_storage_urls_that_cannot_hold_a_study_are_refused_and_odd_folders_work(sweep_env):
    # (also where a best file of another storage exists: its check named the storage first,
    # and its advice, another --study, led to this refusal)
    (sweep_env / "experiments" / "tiny_best.toml").write_text(
        'extends = "tiny"\n')  # (a file no sweep wrote: refused as well)
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://",
                "sqlite:///file::memory:?cache=shared&uri=true",
                "sqlite:///file:x.db?mode=memory&uri=true"):
        out = run_cli("sweep", "exp=tiny", "--trials", 1, "--storage", url, expect=2).output
        assert "is an in-memory database: the study would be lost" in out
    (sweep_env / "logs").mkdir()
    for url in ("journal:", f"journal:{sweep_env / 'logs'}"):
        out = run_cli("sweep", "exp=tiny", "--trials", 1, "--storage", url, expect=2).output
        assert f"storage {url!r} does not open" in out and "is a folder; give a file" in out
    assert not list(sweep_env.glob("runs/tiny/tiny-t*"))  # nothing trained
    # the default database under a runs folder whose name URLs read as a query or an escape
    for odd in ("q?x", "p%41"):
        run_cli("sweep", "exp=tiny", "--trials", 1, "-q", "--runs-dir", odd, "--study", odd)
        assert (sweep_env / odd / "tiny" / "sweep.db").is_file()
    assert not (sweep_env / "q").exists() and not (sweep_env / "pA").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # ask()
def test_a_killed_workers_trial_is_failed_even_when_no_trial_starts_after_it(sweep_env,
                                                                             monkeypatch):
    import time

    import kit.sweep

    monkeypatch.setattr(kit.sweep, "HEARTBEAT_S", 1)  # grace 2 s
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    study = _study(_sqlite(sweep_env))
    orphan = study.ask()  # a worker that started a trial, beat once and was killed
    study._storage.record_heartbeat(orphan._trial_id)
    # SQLite's now() has whole seconds, on both the beat and the check: past the 2 s grace
    # only once the truncated times differ by 3, which 4 s guarantees (2.5 s did not)
    time.sleep(4.0)
    out = run_cli("sweep", "exp=tiny", "--trials", 1).output  # the study has its one trial
    assert "1 complete, 0 pruned, 1 failed, 0 running" in out
    assert _study(_sqlite(sweep_env)).trials[orphan.number].state == TrialState.FAIL


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # ask()
def test_a_study_whose_only_trial_was_killed_takes_the_fixed_command(sweep_env, monkeypatch):
    """The trial the OOM killer took was still RUNNING when the identity was compared (stale
    trials were failed after it), so the fixed command (a smaller batch) was refused, and, as
    it refused before failing them, the trial stayed running for good."""
    import time

    import kit.sweep
    from kit.sweep import make_study, study_identity

    monkeypatch.setattr(kit.sweep, "HEARTBEAT_S", 1)  # grace 2 s
    monkeypatch.setattr(kit.sweep, "QUIET_S", 1.0)
    url = _sqlite(sweep_env)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    setup = prepare("tiny", None, None, None)
    study = make_study("tiny", make_storage(url), setup.direction, setup.table, 2,
                       study_identity(setup))
    killed = study.ask()  # the first worker's trial, beat once, then the process was killed
    study._storage.record_heartbeat(killed._trial_id)
    time.sleep(4.0)  # past the grace (SQLite's whole seconds: see the test above)
    out = run_cli("sweep", "exp=tiny", "train.batch_size=4", "--trials", 1).output
    assert "holds failed trials only; it continues with this sweep's changes" in out
    assert "1 complete, 0 pruned, 1 failed, 0 running" in out


def test_rdb_storages_fail_a_trial_after_two_missed_heartbeats(tmp_path):
    import kit.sweep

    storage = make_storage(f"sqlite:///{tmp_path / 'beats.db'}")
    assert storage.heartbeat_interval == kit.sweep.HEARTBEAT_S
    assert storage.grace_period == 2 * kit.sweep.HEARTBEAT_S  # 10 s beats, failed after 20 s


def test_the_summary_lists_the_five_best_trials(sweep_env):
    from kit.sweep import format_summary, summarize

    setup = prepare("tiny", None, None, None)
    study = optuna.create_study(study_name="tiny", storage=make_storage(setup.storage_url),
                                direction=setup.direction)
    fixed = [p for p in setup.params if not p.when]
    distributions = {p.name: p.distribution() for p in fixed}
    params = {p.name: p.labels[0] if p.kind == "categorical" else p.low for p in fixed}
    for score in (0.3, 0.7, 0.1, 0.5, 0.6, 0.2, 0.4):
        study.add_trial(optuna.trial.create_trial(value=score, params=params,
                                                  distributions=distributions))
    summary = summarize(setup, 0.0)
    ranked = sorted(study.trials, key=lambda t: t.value,
                    reverse=setup.direction == "maximize")
    assert [t["number"] for t in summary["best"]] == [t.number for t in ranked[:5]]
    listed = [line for line in format_summary(summary).splitlines() if line.startswith("  #")]
    assert len(listed) == 5


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # ask()
def test_the_summary_counts_a_dead_workers_trial_as_failed_not_running(sweep_env):
    import sqlite3

    from kit.sweep import format_summary, summarize

    setup = prepare("tiny", None, None, None)
    study = optuna.create_study(study_name="tiny", storage=make_storage(setup.storage_url),
                                direction=setup.direction)
    orphan = study.ask()  # a worker that started a trial, beat, and was killed long ago
    study._storage.record_heartbeat(orphan._trial_id)
    with sqlite3.connect(sweep_env / "runs/tiny/sweep.db") as conn:
        conn.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00.000000'")
    summary = summarize(setup, 0.0)
    assert "0 complete, 0 pruned, 1 failed, 0 running" in format_summary(summary)
    assert _study(setup.storage_url).trials[0].state == TrialState.FAIL


def test_a_study_of_failed_trials_only_refuses_a_parameter_of_another_type(sweep_env,
                                                                         monkeypatch):
    """A study of failed trials takes the fixed command's changes, but not a parameter its
    trials drew from another kind of distribution: Optuna would raise on it in every trial."""
    import kit.sweep
    from kit.sweep import make_study, study_identity

    monkeypatch.setattr(kit.sweep, "QUIET_S", 0.0)  # its last failure long enough ago
    setup = prepare("tiny", None, None, None)
    study = make_study("tiny", make_storage(setup.storage_url), setup.direction, setup.table, 2,
                       study_identity(setup), setup.params)
    hidden = next(p for p in setup.params if p.name == "model.hidden")
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"model.hidden": 8},
        distributions={"model.hidden": hidden.distribution()}))
    space = study.user_attrs["kit_space"]
    _edit_tiny(sweep_env, lambda d: d["sweep"]["params"].update(
        {"model.hidden": {"type": "categorical", "choices": [8, 12]}}))
    result = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2)
    assert "Traceback" not in result.output
    assert "sweep.params.model.hidden: study 'tiny' drew it from IntDistribution" in (
        result.output)
    after = _study(setup.storage_url)
    assert [t.state for t in after.trials] == [TrialState.FAIL]  # nothing trained
    assert after.user_attrs["kit_space"] == space  # nor the new space recorded


def test_an_existing_study_set_the_other_way_is_refused(sweep_env):
    url = _sqlite(sweep_env)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    optuna.create_study(study_name="tiny", storage=make_storage(url), direction="minimize")
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert "set to minimize" in out and "pick another --study" in out
    assert not list((sweep_env / "runs/tiny").glob("tiny-t*"))  # nothing trained


def test_the_median_pruner_waits_for_3_startup_trials_and_2_warm_up_steps():
    from kit.sweep import make_study

    study = make_study("p", optuna.storages.InMemoryStorage(), "maximize", {}, 4)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)  # the default

    def complete() -> None:
        study.add_trial(optuna.trial.create_trial(
            value=1.0, intermediate_values={step: 1.0 for step in range(4)}))

    def pruned_at(steps: list[int]) -> list[bool]:
        trial = study.ask()  # reports far below the others' 1.0
        said = []
        for step in steps:
            trial.report(0.0, step)
            said.append(trial.should_prune())
        study.tell(trial, state=TrialState.FAIL)  # (out of the median's way)
        return said

    complete()
    complete()
    assert pruned_at([1, 2, 3]) == [False] * 3  # 2 trials finished: still starting up
    complete()
    assert pruned_at([1, 2]) == [False, True]  # 3: pruned, but not before step 2


def test_the_median_pruner_stops_a_trial_below_the_median(sweep_env):
    """The real MedianPruner (3 startup trials, 2 warm-up steps). Three trials with lr 1e-12
    keep the initial model's score at every epoch; a fourth with lr 0.01 moves away from it
    (on this tiny data, downwards). It must be pruned at the first step >= 2 where its report
    is below the others' median, and not before."""
    path = sweep_env / "experiments" / "tiny.toml"
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc["train"] = {**doc["train"], "epochs": 4, "patience": 10}
    doc["sweep"] = {"pruner": "median", "params": {
        "train.lr": {"type": "categorical", "choices": [0.01, 1e-12]}}}
    path.write_text(tomli_w.dumps(doc))
    setup = prepare("tiny", None, None, None)
    from kit.sweep import make_study

    study = make_study("tiny", make_storage(setup.storage_url), setup.direction, setup.table, 4)
    for lr in (1e-12, 1e-12, 1e-12, 0.01):
        study.enqueue_trial({"train.lr": lr})
    sweep("tiny", trials=4, progress=False)
    trials = _study(setup.storage_url).get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    flat = trials[0].intermediate_values  # the three are the same run
    moving = trials[3].intermediate_values
    below = [step for step in sorted(flat) if step >= 2 and step in moving
             and moving[step] < flat[step]]
    assert below, f"precondition: the lr 0.01 trial never fell below the others: {moving}"
    assert trials[3].state == TrialState.PRUNED
    assert max(moving) == below[0]  # stopped at the first step below the median


def test_a_best_file_knows_its_storage_from_any_folder(sweep_env, tmp_path, monkeypatch):
    """The storage file was recorded relative to the folder the sweep ran from: a sweep of
    another storage, run from another folder, matched it and replaced the file; the same
    storage named from another folder was refused."""
    exps = sweep_env / "experiments"
    run_cli("sweep", "exp=tiny", "--trials", 1, "-q")
    before = (exps / "tiny_best.toml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # its own runs/tiny/sweep.db: another storage
    out = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2).output
    assert f"was written by study 'tiny' on file {sweep_env / 'runs/tiny/sweep.db'}" in out
    assert (exps / "tiny_best.toml").read_text() == before
    # the first storage, named from here, is the same storage: its best file is replaced
    out = run_cli("sweep", "exp=tiny", "--trials", 2, "--storage", _sqlite(sweep_env),
                  "--runs-dir", sweep_env / "runs").output
    assert "2 complete" in out and "wrote" in out


def test_a_worker_that_finds_the_identity_being_written_waits_for_it(sweep_env, monkeypatch):
    """The interleaving of the race, made deterministic: another worker holds the identity
    lock (it found the study new first) and writes its identity a moment later. This one
    compares with it and is refused; before, it wrote its own over it and read back its own.
    A lock whose holder died is taken over."""
    import threading

    from kit import sweep as sweep_module
    from kit.sweep import identity_lock

    url = f"sqlite:///{sweep_env / 'lock.db'}"
    storage = make_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    theirs = {"kit_experiment": "tiny", "kit_space": {"p": 1}, "kit_config": {"epochs": 2}}
    mine = {**theirs, "kit_config": {"epochs": 3}}
    optuna.create_study(study_name=identity_lock("s"), storage=storage)

    def holder():
        time.sleep(0.5)
        for key in ("kit_space", "kit_config", "kit_experiment"):
            study.set_user_attr(key, theirs[key])
        optuna.delete_study(study_name=identity_lock("s"), storage=storage)

    thread = threading.Thread(target=holder)
    thread.start()
    with pytest.raises(SweepError, match="made for another sweep: config keys differ"):
        sweep_module.check_identity(optuna.load_study(study_name="s", storage=storage), "s",
                                    mine)
    thread.join()
    assert study.user_attrs["kit_config"] == {"epochs": 2}
    # a holder that died before writing: taken over once IDENTITY_WAIT_S has passed
    monkeypatch.setattr(sweep_module, "IDENTITY_WAIT_S", 0.3)
    optuna.create_study(study_name="t", storage=storage)
    optuna.create_study(study_name=identity_lock("t"), storage=storage)
    sweep_module.check_identity(optuna.load_study(study_name="t", storage=storage), "t", mine)
    assert optuna.load_study(study_name="t", storage=storage).user_attrs["kit_config"] == {
        "epochs": 3}
    assert identity_lock("t") not in optuna.get_all_study_names(storage)


def test_a_trial_claims_its_run_folder_by_creating_it(tmp_path):
    """Two studies of one folder name (`s/x` and `s-x`) both found `s-x-t0000` free, and the
    second crashed on the first's lock once its data had loaded. mkdir is the claim now; every
    claim gets a folder of its own, in one second too."""
    import multiprocessing

    from kit.sweep import claim_folder

    wanted = tmp_path / "runs" / "tiny" / "s-x-t0000"
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        got = pool.map(claim_folder, [wanted] * 8)
    assert len(set(got)) == 8 and wanted in got
    assert all(p.is_dir() and p.parent == wanted.parent and p.name.startswith("s-x-t0000")
               for p in got)
    # each is still a trial of study s-x: `kit train --resume` must leave it to its sweep
    from kit.run_record import TRIAL_RUN

    assert all(TRIAL_RUN.match(p.name).group(1) == "s-x" for p in got), got


def test_two_workers_making_one_study_for_two_configs_are_not_both_accepted(sweep_env):
    """Both found the study new, each wrote its identity and read back its own: both
    trained into one study (13 of 20 tries in a review)."""
    import multiprocessing

    from kit.sweep import check_identity

    context = multiprocessing.get_context("fork")
    url = f"sqlite:///{sweep_env / 'race.db'}"
    optuna.create_study(study_name="warm", storage=make_storage(url))  # the schema, once
    for attempt in range(3):
        barrier, results = context.Barrier(2), context.Queue()

        def worker(epochs, barrier=barrier, results=results, attempt=attempt):
            identity = {"kit_experiment": "tiny", "kit_space": {"p": 1},
                        "kit_config": {"train.epochs": epochs}}
            study = optuna.create_study(study_name=f"race{attempt}", storage=make_storage(url),
                                        load_if_exists=True)
            barrier.wait()
            try:
                check_identity(study, f"race{attempt}", identity)
                results.put((epochs, "accepted"))
            except SweepError:
                results.put((epochs, "refused"))

        procs = [context.Process(target=worker, args=(e,)) for e in (2, 3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        said = sorted(results.get(timeout=5)[1] for _ in procs)
        assert said == ["accepted", "refused"], (attempt, said)


def test_hyperband_random_sampler_named_study_timeout_and_overrides_in_the_best_file(
        sweep_env):
    out = run_cli("sweep", "exp=tiny", "sweep.pruner=\"hyperband\"", "sweep.sampler=\"random\"",
                  "sweep.seed=3", "train.batch_size=4", "--study", "hb", "--timeout", 600,
                  "--trials", 2, "-q").output
    trials = _study(_sqlite(sweep_env), "hb").get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    assert all(Path(t.user_attrs["run_dir"]).name.startswith("hb-t") for t in trials)
    # a study named otherwise has its own best file, which keeps the command-line overrides
    assert "kit train exp=tiny@hb_best" in out
    best = load_experiment("tiny@hb_best")
    assert best["train"]["batch_size"] == 4
    assert not (sweep_env / "experiments" / "tiny_best.toml").exists()


def test_the_sampler_setting_picks_the_sampler():
    from kit.sweep import SAMPLERS, make_study

    picked = {name: type(make_study(f"s-{name}", optuna.storages.InMemoryStorage(), "maximize",
                                    {"sampler": name}, 2).sampler) for name in SAMPLERS}
    assert picked == {"tpe": optuna.samplers.TPESampler,
                      "random": optuna.samplers.RandomSampler}
    default = make_study("s", optuna.storages.InMemoryStorage(), "maximize", {}, 2).sampler
    assert type(default) is optuna.samplers.TPESampler


def test_sampler_seeds_reproduce_differ_per_worker_and_move_on_when_resumed(sweep_env,
                                                                            monkeypatch):
    from kit.sweep import make_study, suggest

    setup = prepare("tiny", None, None, None)

    def first_params(name: str, table: dict, storage=None) -> dict:
        storage = storage or optuna.storages.InMemoryStorage()
        study = make_study(name, storage, setup.direction, table, 2)
        trial = study.ask()
        values = suggest(trial, setup.params, setup.base)
        study.tell(trial, 0.5)
        return values

    seeded = {**setup.table, "sampler": "random", "seed": 11}
    first = first_params("a", seeded)
    assert first_params("b", seeded) == first  # reproducible: a sweep started over
    monkeypatch.setenv("KIT_SWEEP_WORKER", "1")  # the second worker of run_processes
    second = first_params("c", seeded)
    assert second != first  # another worker, other points
    monkeypatch.delenv("KIT_SWEEP_WORKER")
    assert first_params("d", {**seeded, "seed": 12}) not in (first, second)
    storage = optuna.storages.InMemoryStorage()
    assert first_params("e", seeded, storage) == first
    assert first_params("e", seeded, storage) != first  # resumed: not its first point again
    unseeded = {**setup.table, "sampler": "random"}
    draws = [first_params(f"u{i}", unseeded)["train.lr"] for i in range(3)]
    assert len(set(draws)) == 3  # fresh entropy: no two workers (or machines) alike


def test_the_ablation_table_keeps_long_target_names_in_their_columns():
    """Fixed widths suited t0/t1: `change y_speed` ran into `change y_hr` and the values
    drifted out from under their names."""
    from kit.ablate import format_ablation

    targets = ["y_heart_rate", "y_speed"]

    def variant(label, groups, score):
        per_seed = [{"seed": 1, "score": score, "per_target": dict.fromkeys(targets, score)}]
        return {"label": label, "kind": "ladder", "groups": groups, "score": score,
                "score_std": None, "per_target": dict.fromkeys(targets, score),
                "per_seed": per_seed, "runs": ["r"]}

    summary = {"experiment": "wk", "seeds": [1], "targets": targets, "sign": 1.0,
               "groups": ["raw", "diffs"], "file": "x.json",
               "variants": [variant("raw", ["raw"], 0.25),
                            variant("+diffs", ["raw", "diffs"], 0.5)]}
    lines = format_ablation(summary).splitlines()
    header, row = lines[1], lines[4]
    names = ["score", "y_heart_rate", "y_speed", "change score", "change y_heart_rate",
             "change y_speed"]
    values = ["0.5000", "0.5000", "0.5000", "+0.2500", "+0.2500", "+0.2500"]
    assert row.split() == ["+diffs", *values]
    for name, value in zip(names, values, strict=True):  # right-aligned under its name
        assert f" {name}" in header
        end = header.index(name) + len(name) if name != "score" else header.index(" score") + 6
        assert row[end - len(value):end] == value, name


def _saved_ablation(root: Path) -> tuple[Path, dict]:
    (saved,) = (root / "runs/tiny").glob("ablate-*.json")
    return saved, json.loads(saved.read_text())


def test_ablation_changes_pair_seeds_and_a_diverged_run_is_marked(sweep_env, monkeypatch):
    from kit.train import recipe
    from kit.train.trainer import TrainingDiverged

    real = recipe.train_one

    def faults(config, files, **kwargs):  # raw seed 2 fails; raw+diffs seed 1 diverges late
        if config["features"]["groups"] == ["raw"] and config["seed"] == 2:
            raise TrainingDiverged(f"{files.root}: training diverged (injected)")
        metrics = real(config, files, **kwargs)
        if config["features"]["groups"] == ["raw", "diffs"] and config["seed"] == 1:
            return metrics | {"diverged": "train loss inf in batch 2 of epoch 2 (injected)"}
        return metrics

    monkeypatch.setattr(recipe, "train_one", faults)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1,2", "-q",
                  expect=1).output
    _, summary = _saved_ablation(sweep_env)
    rows = {v["label"]: v for v in summary["variants"]}
    change = dict(zip(rows, summary["changes"], strict=True))

    def seed_score(label: str, seed: int) -> float:
        (run,) = [m for m in rows[label]["per_seed"] if m["seed"] == seed]
        return run["score"]

    # raw+diffs against raw: seed 1 alone, the only seed both finished (not 2 seeds vs 1)
    assert change["raw+diffs"]["paired_seeds"] == [1]
    assert change["raw+diffs"]["score"] == pytest.approx(
        summary["sign"] * (seed_score("raw+diffs", 1) - seed_score("raw", 1)))
    assert change["-raw"]["paired_seeds"] == [1, 2]  # both sides finished both seeds
    assert change["-raw"]["score"] == pytest.approx(summary["sign"] * sum(
        seed_score("raw+diffs", s) - seed_score("-raw", s) for s in (1, 2)) / 2)
    scores = [seed_score("raw+diffs", s) for s in (1, 2)]
    assert rows["raw+diffs"]["score_std"] == pytest.approx(float(np.std(scores, ddof=1)))
    assert rows["raw"]["score_std"] is None  # one finished seed: no spread
    assert rows["raw+diffs"]["diverged"] == ["raw+diffs seed 1: train loss inf in batch 2 of "
                                             "epoch 2 (injected)"]
    line = next(x for x in out.splitlines() if x.startswith("raw+diffs "))
    assert "change over seeds [1] only" in line and "1 of 2 runs diverged" in line
    assert f"{rows['raw+diffs']['score_std']:.4f}" in line
    assert "diverged: raw+diffs seed 1: train loss inf" in out


def test_an_ablation_stopped_by_sigterm_says_how_to_resume(sweep_env, monkeypatch):
    """SIGTERM (a scheduler) ends a command as EndedBySignal, a SystemExit: the ablation's
    KeyboardInterrupt handler missed it, and it exited 143 saying nothing."""
    from kit.train import recipe
    from kit.workers import EndedBySignal

    real, trained = recipe.train_one, []

    def sigterm_in_the_second_run(config, files, **kwargs):
        if trained:
            raise EndedBySignal(signal.SIGTERM)
        trained.append(files.root.name)
        return real(config, files, **kwargs)

    monkeypatch.setattr(recipe, "train_one", sigterm_in_the_second_run)
    out = run_cli("ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1,2", "-q",
                  expect=143).output
    saved, _ = _saved_ablation(sweep_env)
    assert f"stopped by SIGTERM: 1 of 6 runs finished, kept in {saved.relative_to(sweep_env)}" \
        in out and "--resume" in out


def test_an_ablation_resume_names_a_missing_file_and_a_file_of_another_kind(sweep_env):
    """A missing summary was "not an ablation summary" (there was none to judge)."""
    args = ["ablate", "exp=tiny", "--groups", "raw", "--seeds", "1", "-q", "--resume"]
    missing = sweep_env / "runs/tiny/ablate-20260101-000000-abcd.json"
    out = run_cli(*args, missing, expect=2).output
    assert f"--resume {missing}: no such file; an interrupted kit ablate prints" in out, out
    other = sweep_env / "notes.json"
    other.write_text("{}")
    out = run_cli(*args, other, expect=2).output
    assert f"--resume {other}: not an ablation summary (runs/EXP/ablate-*.json)" in out, out
    out = run_cli(*args, sweep_env, expect=2).output
    assert f"--resume {sweep_env}: a folder, not an ablation summary" in out, out


def test_an_interrupted_ablation_keeps_each_finished_run_and_resumes(sweep_env, monkeypatch):
    from kit.train import recipe

    real, trained = recipe.train_one, []

    def ctrl_c_in_the_second_run(config, files, **kwargs):
        if len(trained) == 1:
            raise KeyboardInterrupt
        trained.append(files.root.name)
        return real(config, files, **kwargs)

    monkeypatch.setattr(recipe, "train_one", ctrl_c_in_the_second_run)
    args = ["ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1,2", "-q"]
    out = run_cli(*args, expect=130).output
    saved, summary = _saved_ablation(sweep_env)
    assert f"1 of 6 runs finished, kept in {saved.relative_to(sweep_env)}" in out
    assert f"--seeds 1,2 -q --resume {saved.relative_to(sweep_env)}`" in out  # (its -q kept)
    (raw,) = summary["variants"]  # the seed that finished is recorded, mid-variant
    assert [m["seed"] for m in raw["per_seed"]] == [1] and raw["score"] is not None
    # other settings are refused; the same ones go on, keeping the finished run
    other = run_cli(*args[:-3], "--seeds", "1", "--resume", saved, expect=2).output
    assert "(seeds [1, 2] then, [1] now)" in other
    # so is an experiment file edited since: the kept run would be another model's
    exp_file = sweep_env / "experiments" / "tiny.toml"
    original = exp_file.read_text()
    exp_file.write_text(original.replace("hidden = 8", "hidden = 16"))
    edited = run_cli(*args, "--resume", saved, expect=2).output
    assert "the experiment's config changed since the ablation started (model.hidden)" in edited
    # what does not change a run (its description, the experiment's seed: --seeds sets each
    # run's) is free
    assert "seed = " in original
    exp_file.write_text('description = "now described"\n' + re.sub(r"(?m)^seed = \d+",
                                                                   "seed = 12345", original))
    old = json.loads(saved.read_text())  # a summary of a kit from before --resume
    old.pop("config"), old.pop("overrides")
    older = saved.with_name("ablate-19990101-000000-abcd.json")
    older.write_text(json.dumps(old))
    said = run_cli(*args, "--resume", older, expect=2).output
    assert "written by a kit from before `kit ablate --resume`" in said
    older.unlink()
    monkeypatch.setattr(recipe, "train_one", lambda *a, **k: trained.append(a[1].root.name)
                        or real(*a, **k))
    out = run_cli(*args, "--resume", saved).output
    runs = [f"{saved.stem}-{label}-s{seed}" for label in ("raw", "raw+diffs", "-raw")
            for seed in (1, 2)]
    assert trained == runs  # raw seed 1 once: kept by the resume, not trained again
    saved_again, summary = _saved_ablation(sweep_env)
    assert saved_again == saved and all(v["score"] is not None for v in summary["variants"])
    assert all(len(v["per_seed"]) == 2 for v in summary["variants"])


def test_an_interrupted_resume_keeps_the_summary_counts_kept_runs_and_rebuilds_shared_rows(
        sweep_env, monkeypatch):
    """A resume rewrote the summary with no rows before its first run: interrupted while it
    retried a failed run, the file lost every finished run's figures and said "0 of 6 runs
    finished" with 5 finished on disk (r238). And -diffs trains the runs of the ladder's first
    rung (raw): a resume that retried raw's failed seed and was then interrupted kept -diffs'
    old row, still failed, beside raw's finished one (r244)."""
    import shutil

    from kit.errors import KitError
    from kit.train import recipe

    real = recipe.train_one

    def failing(variant: str, stop):  # the variant's seed 1 ("raw": not "-raw")
        def train(config, files, **kwargs):
            if files.root.name.endswith(f"-{variant}-s1") and \
                    not files.root.name.endswith(f"--{variant}-s1"):
                raise stop
            return real(config, files, **kwargs)
        return train

    args = ["ablate", "exp=tiny", "--groups", "raw,diffs", "--seeds", "1,2", "-q"]
    monkeypatch.setattr(recipe, "train_one", failing("raw", KitError("injected")))
    run_cli(*args, expect=1)
    saved, before = _saved_ablation(sweep_env)
    rows = {v["label"]: v for v in before["variants"]}
    assert "errors" in rows["raw"] and "errors" in rows["-diffs"]
    assert [len(v["per_seed"]) for v in before["variants"]] == [2, 2, 2, 2]
    monkeypatch.setattr(recipe, "train_one", failing("raw", KeyboardInterrupt()))
    out = run_cli(*args, "--resume", saved, expect=130).output
    assert f"5 of 6 runs finished, kept in {saved};" in out, out
    _, kept = _saved_ablation(sweep_env)
    assert kept["variants"] == before["variants"] and kept["changes"] == before["changes"]
    shutil.rmtree(saved.parent / f"{saved.stem}--raw-s1")  # so the resume trains it again
    monkeypatch.setattr(recipe, "train_one", failing("-raw", KeyboardInterrupt()))
    run_cli(*args, "--resume", saved, expect=130)
    _, after = _saved_ablation(sweep_env)
    rows = {v["label"]: v for v in after["variants"]}
    assert "errors" not in rows["raw"] and rows["raw"]["score"] is not None
    assert {k: rows["-diffs"][k] for k in ("score", "per_seed", "runs")} == {
        k: rows["raw"][k] for k in ("score", "per_seed", "runs")}


def test_a_hand_edited_kept_row_is_left_out_of_the_file_not_a_crash(tmp_path):
    """A kept row check_resumable let through (nothing to compare it with in the file) met
    the resume's new full-set row in changes(): a TypeError in the middle of training (r244)."""
    from kit.ablate import save, variant_row

    def outcome(seed, score):
        return {"seed": seed, "score": score, "per_target": {"t0": 0.1}, "run_dir": f"r{seed}"}

    full = variant_row("ladder", "raw+diffs", ["raw", "diffs"], [outcome(1, 0.3)])
    summary = {"groups": ["raw", "diffs"], "sign": 1.0, "variants": [
        variant_row("ladder", "raw", ["raw"], [outcome(1, 0.2)]), full]}
    edited = variant_row("without", "-raw", ["diffs"], [outcome(1, 0.1)])
    edited["per_seed"][0]["score"] = "0.1"
    path = tmp_path / "ablate-x.json"
    save(path, summary, [edited])
    written = json.loads(path.read_text())
    assert [v["label"] for v in written["variants"]] == ["raw", "raw+diffs"]
    assert written["changes"] == summary["changes"] and summary["changes"][1]["score"] == \
        pytest.approx(0.1)
    kept = variant_row("without", "-raw", ["diffs"], [outcome(1, 0.1)])
    save(path, summary, [kept])  # a sound one is kept, with its change against the full set
    written = json.loads(path.read_text())
    assert written["variants"][-1] == kept and written["changes"][-1]["score"] == \
        pytest.approx(0.2)


def test_an_ablation_without_seeds_resumes_after_the_files_seed_changed(sweep_env, monkeypatch):
    """Without --seeds the runs take the file's seed; the docs say the file's seed is free on
    resume, but an edit of it refused the ablation's own command ("seeds differ: repeat its
    own command"). The resume trains the seeds the ablation started with."""
    from kit.train import recipe

    args = ["ablate", "exp=tiny", "--groups", "raw", "-q"]
    run_cli(*args)
    saved, summary = _saved_ablation(sweep_env)
    exp_file = sweep_env / "experiments" / "tiny.toml"
    (seed,) = summary["seeds"]
    exp_file.write_text(re.sub(r"(?m)^seed = \d+", f"seed = {seed + 1}", exp_file.read_text()))
    trained = []
    monkeypatch.setattr(recipe, "train_one", lambda *a, **k: trained.append(a[1].root.name))
    run_cli(*args, "--resume", saved)
    assert trained == [] and _saved_ablation(sweep_env)[1]["seeds"] == [seed]


def test_workers_record_the_threads_their_trials_trained_on(sweep_env):
    """A --workers child trains on its share of the cores, but its config.toml and the best
    file said train.threads = 0: `kit train exp=X_best` retrained on every core and came out
    another model (r299)."""
    import os
    import tomllib

    share = max(1, (os.cpu_count() or 1) // 2)
    run_cli("sweep", "exp=tiny", "--trials", 2, "--workers", 2, "-q")
    trials = list((sweep_env / "runs/tiny").glob("tiny-t*"))
    assert trials and all(tomllib.loads((t / "config.toml").read_text())["train"]["threads"]
                          == share for t in trials)
    assert load_experiment("tiny_best")["train"]["threads"] == share
    # one process: the experiment's 0 (every core, as the trial had) is kept
    run_cli("sweep", "exp=tiny", "--trials", 1, "--study", "one", "-q")
    (one,) = (sweep_env / "runs/tiny").glob("one-t*")
    assert tomllib.loads((one / "config.toml").read_text())["train"]["threads"] == 0


def test_a_sweep_says_the_experiments_warning_once_not_once_per_trial(sweep_env):
    """Each trial's check said the experiment's warm-up warning again (r296: the same line at
    the start and after every trial)."""
    import warnings

    from kit.sweep import warn_once

    out = run_cli("sweep", "exp=tiny", "--trials", 3, "train.epochs=1",
                  "train.warmup_epochs=1").output
    assert out.count("train.warmup_epochs = 1 covers all 1 epoch(s)") == 1, out
    said: set[str] = set()

    def check():
        warnings.warn("w1", UserWarning, stacklevel=1)
        warnings.warn("w2", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_once(said, check, quiet=True)  # a --workers child: noted, not said
        warn_once(said, check)
    assert said == {"w1", "w2"} and not caught
