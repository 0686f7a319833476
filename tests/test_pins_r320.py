"""Mutation audit r320 of kit/sweep.py: the [sweep] table's types, the study identity's words,
the refusal of parameters that move the validation rows of fold runs, and the summary's
warning of mixed validation sets."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from kit.sweep import (
    SweepError,
    best_name,
    check_best_file,
    check_table,
    identity_differences,
    parse_space,
    prepare,
    study_identity,
    validation_sets,
)
from tests.frames import small_spec
from tests.test_reports import make_run, write_data
from tests.test_results_r313 import _clip_spec, _sweep_params
from tests.test_sweep import sweep_env  # noqa: F401 (a fixture)


@pytest.mark.parametrize("key", ["trials", "seed"])
def test_a_boolean_trials_or_seed_is_refused_not_read_as_one(key):
    """Kills check_table taking a TOML boolean for an integer (`trials = true` ran 1 trial)."""
    with pytest.raises(SweepError, match=rf"sweep\.{key}: a (positive|non-negative) integer, "
                                         r"got True"):
        check_table({key: True})


def test_a_study_of_many_changed_keys_names_eight_and_counts_the_rest():
    """Kills identity_differences counting 'and N more' from the tenth key on (9 named 8)."""
    def said(n: int) -> str:
        old = {f"train.k{i}": "a" for i in range(n)}
        stored = {"kit_experiment": "e", "kit_space": {}, "kit_config": old}
        [text] = identity_differences(stored, {**stored,
                                               "kit_config": dict.fromkeys(old, "b")})
        return text

    names = sorted(f"train.k{i}" for i in range(9))
    assert said(8) == f"config keys differ: changed {sorted(names[:8])}"
    assert said(9) == f"config keys differ: changed {names[:8]} and 1 more"


def test_fold_runs_refuse_a_swept_seed_or_train_file_and_take_a_swept_valid_limit(
        sweep_env, workspace):  # noqa: F811
    """Kills validated_rows leaving the seed out of a fold's rows, reading a fold from the
    valid file, or counting train.max_valid_seqs against a fold (which ignores it); and the
    refusal giving data.seq_len's advice for another key."""
    fold = ["data.fold=[3, 0]"]
    _sweep_params(sweep_env, {"seed": {"type": "int", "low": 1, "high": 3}})
    with pytest.raises(SweepError, match=r'"seed": its values validate the trials on different '
                                         r"rows .*1 against 3 differ in the fold \(data.fold, "
                                         r"placed by the seed\)"):
        prepare("tiny", fold, None, None)
    prepare("tiny", None, None, None)  # validated on the valid file: the seed moves no row
    copy = sweep_env / "train-copy.parquet"
    shutil.copy(workspace / "data/train.parquet", copy)
    _sweep_params(sweep_env, {"data.train": {"type": "categorical", "choices": [
        str(workspace / "data/train.parquet"), str(copy)]}})
    with pytest.raises(SweepError, match=r'"data.train": .*differ in the file validated on'):
        prepare("tiny", fold, None, None)
    prepare("tiny", None, None, None)  # the train file is not validated on
    _sweep_params(sweep_env, {"train.max_valid_seqs": {"type": "categorical",
                                                       "choices": [0, 2]}})
    prepare("tiny", fold, None, None)  # a fold validates on all its sequences
    with pytest.raises(SweepError, match=r"the sequences kept \(train.max_valid_seqs\)") as info:
        prepare("tiny", None, None, None)
    assert "train.chunk" not in str(info.value)  # the data.seq_len advice is for data.seq_len


def test_trials_validated_under_two_clips_of_one_file_are_two_sets_in_the_summary(tmp_path):
    """Kills validation_sets keying its sets by their label alone: two sets of one label (the
    same file under another clip) became one, the first set's trials dropped from the
    warning and no warning said at all."""
    valid, spec_path = write_data(tmp_path / "data", small_spec())
    clipped = _clip_spec(spec_path, tmp_path / "data" / "clipped.toml")
    root = tmp_path / "runs"
    folders = [make_run(root, "tiny", "plain-1", valid, spec_path, seed=1),
               make_run(root, "tiny", "clip", valid, clipped, seed=1),
               make_run(root, "tiny", "plain-2", valid, spec_path, seed=2)]
    trials = [SimpleNamespace(number=n, user_attrs={"run_dir": str(f)})
              for n, f in enumerate(folders)]
    sets = validation_sets(SimpleNamespace(runs_dir=root), trials)
    assert sorted(sets.values()) == [[0, 2], [1]]
    assert all(label.startswith("valid.parquet (") for label in sets), sets
    assert validation_sets(SimpleNamespace(runs_dir=root), [trials[0], trials[2]]) == {}


def test_whole_data_tables_and_a_condition_met_inside_one_are_checked_for_their_rows(
        sweep_env):  # noqa: F811
    """Kills refuse_row_changing_params skipping a parameter over whole [data] tables (one
    that holds a row key) and judging a conditional parameter on the experiment as it is
    rather than with its `when` met (split_seed moves no row of a file split)."""
    from kit.config import load_experiment

    files = {k: v for k, v in load_experiment("tiny")["data"].items()
             if k in ("train", "valid", "cache_dir")}
    _sweep_params(sweep_env, {"data": {"type": "categorical", "choices": [
        {**files, "seq_len": 30}, {**files, "seq_len": 60}]}})
    with pytest.raises(SweepError, match=r'sweep\.params\."data": its values validate the '
                                         r"trials on different rows .*differ in the steps kept"):
        prepare("tiny", None, None, None)
    random = [{**files, "split": "random"},
              {**files, "split": "random", "cache_dir": str(sweep_env / "cache2")}]
    _sweep_params(sweep_env, {"data": {"type": "categorical", "choices": random}})
    prepare("tiny", None, None, None)  # the same held-out rows in both
    _sweep_params(sweep_env, {
        "data": {"type": "categorical", "choices": random},
        "data.split_seed": {"type": "int", "low": 0, "high": 3,
                            "when": {"data.split": "random"}}})
    with pytest.raises(SweepError, match=r'"data.split_seed": .*0 against 3 differ in the '
                                         r"held-out part of the train file"):
        prepare("tiny", None, None, None)


def test_a_study_name_outside_ascii_is_escaped_byte_by_byte_in_its_best_file_name():
    """Kills best_name keeping non-ASCII letters as they are (docstring: +XX for each byte but
    A-Z a-z 0-9 - _), so a file name is plain ASCII on every file system."""
    setup = SimpleNamespace(experiment="tiny", study_name="é-1_z")
    assert best_name(setup) == "tiny@+c3+a9-1_z_best"
    assert best_name(SimpleNamespace(experiment="tiny", study_name="tiny")) == "tiny_best"


def test_an_older_kits_best_file_of_another_study_is_not_replaced(tmp_path):
    """Kills check_best_file taking any 'best trial #' description (no origin line) for this
    study's: an older kit's best file of study 'other' was overwritten by study 'tiny'."""
    setup = SimpleNamespace(experiment="tiny", study_name="tiny",
                            storage_url=f"sqlite:///{tmp_path / 'sweep.db'}")
    path = tmp_path / "tiny_best.toml"
    path.write_text('extends = "tiny"\ndescription = "best trial #3 of sweep \'other\' (score '
                    '0.10000)"\n')
    with pytest.raises(SweepError, match=r"was written by no kit sweep of this study \(it has no "
                                         r"origin line\); this sweep is study 'tiny'"):
        check_best_file(setup, path)
    path.write_text(path.read_text().replace("'other'", "'tiny'"))
    check_best_file(setup, path)  # this study's: replaced


def test_a_study_identity_keeps_conditional_keys_and_leaves_out_keys_added_at_default(
        sweep_env):  # noqa: F811
    """Kills study_identity leaving out every swept key (a conditional one trains the
    experiment's value where its condition fails: another value is another study) and
    training_digests keeping normaliser.targets at its default (older studies then differed)."""
    _sweep_params(sweep_env, {
        "model.type": {"type": "categorical", "choices": ["gru", "attention_gru"]},
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2,
                     "when": {"model.type": "attention_gru"}}})
    before = study_identity(prepare("tiny", None, None, None))
    assert "train.lr" in before["kit_config"]  # gru trials train the experiment's rate
    assert not any(key.startswith("model.type") for key in before["kit_config"])
    assert "normaliser.targets" not in before["kit_config"]
    after = study_identity(prepare("tiny", ["train.lr=0.005"], None, None))
    assert identity_differences(before, after) == ["config keys differ: changed ['train.lr']"]
    targets = study_identity(prepare("tiny", ["normaliser.targets=true"], None, None))
    assert identity_differences(before, targets) == [
        "config keys differ: added ['normaliser.targets']"]


@pytest.mark.parametrize("params, message", [
    ({"x": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True, "step": 1e-3}},
     r'sweep\.params\."x": log and step do not combine'),
    ({"x": 0.01}, r'sweep\.params\."x": must be a table like \{ type = "float", low = \.\., '
                  r"high = \.\. \}, got 0\.01"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "when": {"train.wd": 0.1}},
      "train.wd": {"type": "float", "low": 0.0, "high": 0.1, "when": {"train.lr": 1e-3}}},
     r"sweep\.params: the `when` conditions of train\.lr, train\.wd form a cycle"),
])
def test_entries_optuna_or_the_ordering_cannot_take_are_refused_by_name(params, message):
    """Kills parse_space dropping the log-with-step and not-a-table refusals (Optuna's or
    Python's traceback in every trial) and _conditions_last leaving a `when` cycle out of the
    space without a word."""
    with pytest.raises(SweepError, match=message):
        parse_space({"params": params})


def test_a_swept_loss_is_written_to_the_best_file_without_its_defaults(sweep_env):  # noqa: F811
    """Kills loss_as_written keeping the defaults: the best file pinned target_weights to
    today's target count and the default terms over the parent's [loss]."""
    from kit.config import load_experiment
    from kit.sweep import loss_as_written, resolved_for

    plain = load_experiment("tiny")
    trained = resolved_for({"huber_delta": 0.5}, plain)
    assert "target_weights" in trained  # as a trial's config.toml records it
    assert loss_as_written(trained, plain) == {"huber_delta": 0.5}


def test_the_summary_says_a_timeout_stopped_it_only_short_of_the_trials_wanted(
        sweep_env):  # noqa: F811
    """Kills summarize saying 'stopped at --timeout' when every trial wanted had finished."""
    import optuna

    from kit.sweep import format_summary, make_storage, summarize

    setup = prepare("tiny", None, None, None)
    study = optuna.create_study(study_name="tiny", storage=make_storage(setup.storage_url),
                                direction=setup.direction)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    done = summarize(setup, 0.0, wanted=1, timeout=60.0)
    assert "timed_out" not in done and "stopped at" not in format_summary(done)
    short = summarize(setup, 0.0, wanted=2, timeout=60.0)
    assert short["timed_out"] == {"timeout": 60.0, "finished": 1, "wanted": 2}
    assert "stopped at --timeout 60s with 1 of the 2 trials wanted finished" in (
        format_summary(short))


def test_a_finished_trial_between_failures_starts_the_workers_streak_anew(monkeypatch):
    """Kills FailureStreak counting failures across a finished trial: a worker stopped after 5
    failures that were never 5 in a row."""
    import optuna
    from optuna.trial import TrialState

    from kit.sweep import FailureStreak

    study = optuna.create_study()  # (no trials: the study-wide streak stays out of it)
    stops: list[int] = []
    monkeypatch.setattr(study, "stop", lambda: stops.append(1))
    streak = FailureStreak()

    def ended(state):
        streak(study, optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None))

    for state in [TrialState.FAIL] * 4 + [TrialState.COMPLETE] + [TrialState.FAIL] * 4:
        ended(state)
    assert streak.stopped == "" and not stops
    ended(TrialState.FAIL)
    assert streak.stopped == "this worker's last 5 trials all failed" and stops == [1]


def test_a_swept_split_seed_under_a_swept_random_split_is_refused(sweep_env):  # noqa: F811
    """The real bug r320 found: each parameter was judged on the experiment with only its own
    conditions met, so a swept data.split = "random" let an unconditional data.split_seed
    through, every trial validated on another held-out part."""
    _sweep_params(sweep_env, {"data.split": {"type": "categorical", "choices": ["random"]},
                              "data.split_seed": {"type": "int", "low": 0, "high": 3}})
    with pytest.raises(SweepError, match=r'"data.split_seed": .*0 against 3 differ in the '
                                         r"held-out part of the train file"):
        prepare("tiny", None, None, None)


def test_a_row_parameter_behind_a_condition_on_another_key_is_judged_with_it_met(
        sweep_env):  # noqa: F811
    """r328: a [data] table applying only under model.type = "gru" (the experiment's type is
    another) hid its random split from the swept data.split_seed's judgement."""
    from kit.config import load_experiment
    from kit.sweep import refuse_row_changing_params
    from kit.train.recipe import experiment_config

    base = experiment_config("tiny", ['model.type="lstm"'])
    files = {k: v for k, v in load_experiment("tiny")["data"].items()
             if k in ("train", "valid", "cache_dir")}
    params = parse_space({"params": {
        "model.type": {"type": "categorical", "choices": ["gru", "lstm"]},
        "data": {"type": "categorical", "choices": [{**files, "split": "random"}],
                 "when": {"model.type": "gru"}},
        "data.split_seed": {"type": "int", "low": 0, "high": 3}}})
    with pytest.raises(SweepError, match=r'"data.split_seed": .*0 against 3 differ in the '
                                         r"held-out part of the train file"):
        refuse_row_changing_params(base, params)
