"""Groups of runs (kit.train.groups) and the recipe's checks around them, called directly on a
tiny competition: what a mutation audit of recipe.py and groups.py found no test pinning."""

import fcntl
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from kit.config import ConfigError
from kit.train import groups, recipe
from kit.train.groups import GROUPS_DIR, NothingStarted, group_config, resumable_group
from kit.train.recipe import experiment_config, train_experiment
from tests.test_train import experiments_of, raw_gru_experiment, tiny_competition


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A tiny competition with one small experiment (1 epoch, GRU 8x1 on the raw columns)."""
    root = tmp_path_factory.mktemp("groups")
    exps = tiny_competition(root, train_seqs=16, valid_seqs=6, seed=3)
    (exps / "tiny.toml").write_text(tomli_w.dumps(raw_gru_experiment(root)))
    return root


@pytest.fixture
def env(tiny_root, monkeypatch, tmp_path):
    return experiments_of(tiny_root, monkeypatch, tmp_path)


class Stop(Exception):
    """Raised by a patched step to end a command where the test has seen what it needs."""


def _stop_before_fit(monkeypatch) -> None:
    """Training would start: stop there (the tests below need no trained epoch)."""
    from kit.train import trainer

    def fit(*args, **kwargs):
        raise Stop("fit was reached")

    monkeypatch.setattr(trainer, "fit", fit)


def _record(exp_dir: Path, stamp: str, seeds: list[int], folds: int, base: dict) -> Path:
    (exp_dir / GROUPS_DIR).mkdir(parents=True, exist_ok=True)
    path = exp_dir / GROUPS_DIR / f"{stamp}.json"
    path.write_text(json.dumps({"seeds": seeds, "folds": folds, "config": group_config(base)}))
    return path


def test_claim_group_refuses_repeated_seeds_at_once(tmp_path):
    """claim_group with seeds [1, 1] made <stamp>-s1 and then failed to make it again, took
    the next second, and so on for ever: the CLI's own check was the only guard, and any other
    caller hung. Refused at once now, naming the seeds, and nothing is left behind."""
    outcome = []

    def claim():
        try:
            groups.claim_group(tmp_path, [1, 1], 0, {"name": "tiny", "seed": 1})
        except ConfigError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=claim, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "claim_group([1, 1]) is still looking for a free second"
    assert len(outcome) == 1 and "seeds [1, 1] repeat a seed" in str(outcome[0])
    assert not [p for p in tmp_path.iterdir() if p.name != GROUPS_DIR]
    assert not list((tmp_path / GROUPS_DIR).glob("*.json"))


def test_out_of_fold_predictions_are_in_the_order_of_their_rows(env, tmp_path):
    """oof_rows.npy is sorted; oof_preds.npy must be reordered with it, so that oof_preds[i] is
    the prediction for row oof_rows[i]. Left in fold order, each row is scored against another
    row's prediction, and the out-of-fold score is of nothing."""
    from kit.competition import load_spec
    from kit.metrics import evaluate

    results = train_experiment("tiny", folds=2, progress=False, runs_dir=tmp_path / "runs")
    *fold_runs, oof = [Path(r["run_dir"]) for r in results]
    rows, preds = np.load(oof / "oof_rows.npy"), np.load(oof / "oof_preds.npy")
    assert np.all(np.diff(rows) > 0)
    for run in fold_runs:
        val_rows, val_preds = np.load(run / "val_rows.npy"), np.load(run / "val_preds.npy")
        at = np.searchsorted(rows, val_rows)
        np.testing.assert_array_equal(rows[at], val_rows)
        np.testing.assert_array_equal(preds[at], val_preds)
    # and the score is of those pairs: the train file's truth at each row, its prediction
    import polars as pl

    spec = load_spec(str(env / "tiny-lob.toml"))
    train = pl.read_parquet(env / "data" / "train.parquet")
    truth = train.select(spec.targets).to_numpy()[rows]
    score = json.loads((oof / "metrics.json").read_text())["score"]
    assert score == pytest.approx(evaluate(spec, truth, preds).score, rel=1e-5)


def test_a_group_resume_without_folds_passes_over_a_fold_group_of_the_same_seed(env,
                                                                              tmp_path):
    """seeds=[3] --resume resumes runs, not folds: a paused --folds 2 seed=3 group must not be
    taken (its <stamp>-s3 has no metrics.json, so it looked unfinished, and a new run was
    trained inside the fold group's stamp)."""
    base = experiment_config("tiny")
    exp_dir = tmp_path / "runs" / "tiny"
    _record(exp_dir, "20260101-000000", [3], 2, base)
    with pytest.raises(ConfigError, match=r"no unfinished group of runs of seeds \[3\]"):
        resumable_group(exp_dir, [3], 0, base)
    assert resumable_group(exp_dir, [3], 2, base) == "20260101-000000"  # --folds 2 takes it


def test_a_ctrl_c_in_a_run_dir_run_is_a_plain_keyboard_interrupt(env, tmp_path, monkeypatch):
    """--run-dir and --resume name no new group (stamp None): a Ctrl-C there is not "nothing
    started", which would tell the user there is nothing to resume of a run that has a folder
    (and, resumed, epochs) of its own."""
    from kit.train import trainer
    from kit.train.groups import dropped_if_unused

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", ctrl_c)
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_experiment("tiny", run_dir=run, progress=False, runs_dir=tmp_path / "runs")
    assert not isinstance(stopped.value, NothingStarted)
    assert getattr(stopped.value, "run_dir", None) == str(run)  # the hint names the run
    assert (run / "config.toml").is_file()
    # the context manager itself, as a --resume of one run uses it
    with pytest.raises(KeyboardInterrupt) as stopped, \
            dropped_if_unused(tmp_path / "runs" / "tiny", [5], 0, None):
        raise KeyboardInterrupt
    assert not isinstance(stopped.value, NothingStarted)


def test_the_command_holds_its_group_record_while_it_builds_the_data(env, tmp_path,
                                                                     monkeypatch):
    """A new group's runs lock their folders only once their data is built: until then the
    group record's lock, held by the command from its claim on, is what keeps a --resume from
    taking the group and training beside it."""
    from kit.train import data
    from kit.train.runs import flock_taken

    exp_dir = tmp_path / "runs" / "tiny"
    seen = []

    def load_train_data(config, fold=None):
        (record,) = (exp_dir / GROUPS_DIR).glob("*.json")
        seen.append(flock_taken(record))
        raise Stop("data built")

    monkeypatch.setattr(data, "load_train_data", load_train_data)
    with pytest.raises(Stop):
        train_experiment("tiny", seeds=[1, 2], progress=False, runs_dir=tmp_path / "runs")
    assert seen == [True]


def test_swa_may_start_at_the_last_epoch_and_not_after_it(env):
    """train.swa_start = train.epochs averages the last epoch; one past it averages nothing
    and is refused, naming both settings."""
    recipe.check_config(experiment_config("tiny", ["train.epochs=2", "train.swa_start=2"]))
    with pytest.raises(ConfigError, match=r"train.swa_start = 3 is after the last epoch "
                                          r"\(train.epochs = 2\)"):
        recipe.check_config(experiment_config("tiny", ["train.epochs=2", "train.swa_start=3"]))


def test_jobs_with_a_run_dir_of_one_seed_is_refused(env, tmp_path, monkeypatch):
    """--jobs 2 --run-dir R trains one run: --jobs would be dropped without a word."""
    _stop_before_fit(monkeypatch)
    with pytest.raises(ConfigError, match="--jobs trains several seeds at once: it does not "
                                          "combine with --folds or --run-dir"):
        train_experiment("tiny", run_dir=tmp_path / "one", jobs=2, progress=False,
                         runs_dir=tmp_path / "runs")
    assert not (tmp_path / "one").exists() and not (tmp_path / "runs").exists()


def test_resume_of_a_run_dir_checks_seeds_against_the_runs_own_seed(env, tmp_path,
                                                                     monkeypatch):
    """seeds=[N] with --resume --run-dir names the run's seed, as seed=N does: another seed
    would change the run and is refused, not ignored; its own seed resumes it."""
    _stop_before_fit(monkeypatch)
    run, runs = tmp_path / "r", tmp_path / "runs"
    with pytest.raises(Stop):  # a run of seed 5 that stopped before its first epoch
        train_experiment("tiny", run_dir=run, progress=False, runs_dir=runs)
    with pytest.raises(ConfigError, match=r"\['seed=6'\] would change"):
        train_experiment("tiny", seeds=[6], resume=True, run_dir=run, progress=False,
                         runs_dir=runs)
    with pytest.raises(Stop):  # its own seed: on to training
        train_experiment("tiny", seeds=[5], resume=True, run_dir=run, progress=False,
                         runs_dir=runs)


@pytest.mark.parametrize("damage", ['{"seeds": [1', "[1, 2]", '"a string"'])
def test_a_damaged_group_record_is_passed_over_by_a_group_resume(env, tmp_path, damage):
    """A record torn by a kill during the claim (not JSON), or edited into JSON that is not an
    object, counts as no record: every later --resume crashed on it instead."""
    base = experiment_config("tiny")
    exp_dir = tmp_path / "runs" / "tiny"
    _record(exp_dir, "20260101-000000", [1, 2], 0, base)
    (exp_dir / GROUPS_DIR / "20260102-000000.json").write_text(damage)  # newer
    assert resumable_group(exp_dir, [1, 2], 0, base) == "20260101-000000"
    with pytest.raises(ConfigError, match="no unfinished group of runs of seeds"):
        resumable_group(exp_dir, [7], 0, base)


def test_a_run_folder_taken_while_the_data_was_built_is_refused_under_the_lock(
        env, tmp_path, monkeypatch):
    """The first "already holds a run" check comes before the data is built (minutes on real
    data); a second new run in the same --run-dir can start in between. The check again under
    the run's lock refuses it instead of appending this run's epochs to the other's."""
    from kit.train import data

    _stop_before_fit(monkeypatch)
    run = tmp_path / "r"
    real = data.load_train_data

    def other_run_starts_meanwhile(config, fold=None):
        run.mkdir(exist_ok=True)
        (run / "history.jsonl").write_text('{"epoch": 1}\n')
        return real(config, fold)

    monkeypatch.setattr(data, "load_train_data", other_run_starts_meanwhile)
    with pytest.raises(ConfigError, match=r"already holds a run \(history.jsonl\)"):
        train_experiment("tiny", run_dir=run, progress=False, runs_dir=tmp_path / "runs")
    assert sorted(p.name for p in run.iterdir()) == ["history.jsonl"]


def test_a_folder_inside_a_run_needs_the_runs_spec_beside_its_config(env, tmp_path):
    """A folder above --run-dir is "a run" only with config.toml and spec.json (and a run's
    mark): a project folder with a config.toml and a metrics.json of its own is not one."""
    from kit.train.recipe import refuse_shared_folder

    project = tmp_path / "work" / "proj"
    project.mkdir(parents=True)
    (project / "config.toml").write_text('title = "a project"\n')
    (project / "metrics.json").write_text('{"auc": 0.9}')
    refuse_shared_folder(Path("work/proj/sub"), tmp_path / "runs", "tiny")  # accepted
    (project / "spec.json").write_text("{}")
    with pytest.raises(ConfigError, match="is inside run"):
        refuse_shared_folder(Path("work/proj/sub"), tmp_path / "runs", "tiny")


def test_with_several_groups_in_training_the_error_names_the_newest(env, tmp_path):
    """All unfinished groups of these seeds are held by other commands: the message names the
    newest of them, the one the user most likely just started."""
    base = experiment_config("tiny")
    exp_dir = tmp_path / "runs" / "tiny"
    fds = []
    try:
        for stamp in ("20260101-000000", "20260102-000000", "20260103-000000"):
            fd = os.open(_record(exp_dir, stamp, [1, 2], 0, base), os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as its command holds it
        with pytest.raises(ConfigError, match="the unfinished group 20260103-000000 of runs "
                                              r"of seeds \[1, 2\] .* is being trained by"):
            resumable_group(exp_dir, [1, 2], 0, base)
    finally:
        for fd in fds:
            os.close(fd)


def test_parallel_workers_share_the_cores_between_the_seeds_that_run_at_once(
        env, tmp_path, monkeypatch):
    """--jobs 2 over 4 seeds runs 2 workers at a time: each gets half the cores (16 -> 8
    threads), not a quarter as if all 4 ran together."""
    from kit.workers import WorkerGroup

    commands = []

    def wait(self, queued, jobs, **kwargs):
        commands.extend(queued)
        raise Stop("workers would start")

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(WorkerGroup, "wait", wait)
    base = experiment_config("tiny")
    with pytest.raises(Stop):
        recipe._train_workers("tiny", base, [1, 2, 3, 4], 2, tmp_path / "runs", 0, False,
                              "20260101-000000")
    assert len(commands) == 4
    for argv, env_vars in commands:
        assert env_vars["OMP_NUM_THREADS"] == env_vars["MKL_NUM_THREADS"] == "8"
        assert "train.threads=8" in argv
