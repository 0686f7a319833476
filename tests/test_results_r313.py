"""r313: scores that do not compare (other rows, another metric clip) are told apart by `kit
runs` (table and --json), refused as sweep parameters or warned of in a sweep's summary, and
named in an ensemble's report."""

from __future__ import annotations

import json
import shutil
import tomllib
import warnings
from pathlib import Path

import pytest
import tomli_w

from kit.competition import load_spec
from kit.ensemble import select_ensemble
from kit.reports import format_runs, list_runs, write_ensemble_report
from kit.sweep import SweepError, format_summary, prepare, sweep
from kit.train.recipe import train_experiment
from tests.cli import run_cli
from tests.frames import small_spec
from tests.test_reports import make_run, write_data
from tests.test_sweep import _forget_identity, _sqlite, sweep_env  # noqa: F401 (a fixture)
from tests.test_train import raw_gru_experiment, tiny_competition

NARROW_CLIP = [-0.01, 0.01]


def _clip_spec(spec_path: Path, out: Path) -> Path:
    """A copy of a spec file under its own name with the metric's clip narrowed (as a user
    edits `kit spec show`'s output)."""
    doc = tomllib.loads(spec_path.read_text())
    doc["metric"]["clip"] = NARROW_CLIP
    out.write_text(tomli_w.dumps(doc))
    return out


# --- finding 1: another clip is another set -------------------------------------------------


def test_runs_scored_under_another_clip_are_marked_as_not_comparable(tmp_path: Path):
    valid, spec_path = write_data(tmp_path / "data", small_spec())
    clipped = _clip_spec(spec_path, tmp_path / "data" / "clipped.toml")
    root = tmp_path / "runs"
    make_run(root, "plain", "20240101-000000-s1", valid, spec_path, seed=1)
    make_run(root, "plain", "20240101-000001-s2", valid, spec_path, seed=2)
    make_run(root, "clip", "20240102-000000-s1", valid, clipped, seed=1)
    rows = {r["run_id"] + r["experiment"]: r for r in list_runs(root)}
    plain, plain2 = rows["20240101-000000-s1plain"], rows["20240101-000001-s2plain"]
    clip = rows["20240102-000000-s1clip"]
    assert plain["metric_settings"] == {"name": "weighted_pearson", "clip": [-6.0, 6.0]}
    assert clip["metric_settings"] == {"name": "weighted_pearson", "clip": NARROW_CLIP}
    assert plain["validation_set"] == plain2["validation_set"] != clip["validation_set"]
    assert plain["validated_shown"] == "valid.parquet, clip ±6"
    assert clip["validated_shown"] == "valid.parquet, clip ±0.01"
    assert plain["validated"] == clip["validated"] == "valid.parquet"  # the run's own label
    table = format_runs(list(rows.values()))
    assert "scored on 2 different sets of rows or metric settings (column validated)" in table
    assert "weighted_pearson scores with clip ±0.01 in some runs, clip ±6 in others" in table
    # runs of one clip keep their plain label and no note
    alone = list_runs(root, experiment="plain")
    assert {r["validated_shown"] for r in alone} == {"valid.parquet"}
    assert "note" not in format_runs(alone)


# --- finding 4: --json says what the table says ---------------------------------------------


def test_json_names_the_tables_validation_set_and_a_stable_id_of_the_rows(tmp_path: Path):
    spec = small_spec()
    valid, spec_path = write_data(tmp_path / "synth", spec)
    other, _ = write_data(tmp_path / "synth2", spec, n_seqs=5)
    root = tmp_path / "runs"
    make_run(root, "gru", "20240101-000000-s1", valid, spec_path, seed=1)
    make_run(root, "gru", "20240101-000000-s2", valid, spec_path, seed=2)
    make_run(root, "gru", "20240102-000000-s1", other, spec_path, seed=1)
    listed = json.loads(run_cli("runs", "--runs-dir", root, "--json").output)
    by_id = {r["run_id"]: r for r in listed}
    assert by_id["20240101-000000-s1"]["validated_shown"] == "synth/valid.parquet"
    assert by_id["20240102-000000-s1"]["validated_shown"] == "synth2/valid.parquet"
    first, second = by_id["20240101-000000-s1"], by_id["20240101-000000-s2"]
    assert first["validation_set"] == second["validation_set"]
    assert first["validation_set"] != by_id["20240102-000000-s1"]["validation_set"]
    # the table shows the same labels (told apart once, not twice)
    table = run_cli("runs", "--runs-dir", root).output
    assert "synth2/valid.parquet" in table and "synth/synth" not in table


# --- finding 2: sweeps over the rows trials validate on --------------------------------------


def _sweep_params(root: Path, params: dict) -> None:
    path = root / "experiments" / "tiny.toml"
    doc = tomllib.loads(path.read_text())
    doc["sweep"] = {"trials": 2, "pruner": "none", "params": params}
    path.write_text(tomli_w.dumps(doc))


def test_a_sweep_refuses_parameters_that_validate_trials_on_other_rows(
        sweep_env, workspace):  # noqa: F811
    # tiny-lob's sequences are 60 steps: data.seq_len 30 cuts the validation sequences
    _sweep_params(sweep_env, {"data.seq_len": {"type": "categorical", "choices": [30, 60]}})
    with pytest.raises(SweepError, match=r'"data.seq_len": its values validate the trials on '
                                         r"different rows .*30 against 60 differ in the steps "
                                         r"kept") as info:
        prepare("tiny", None, None, None)
    assert "train.chunk" in str(info.value) and "--study" in str(info.value)
    # not an override of the swept key, which is refused itself (r316)
    assert "take data.seq_len out of sweep.params" in str(info.value)
    assert "data.seq_len=VALUE" not in str(info.value)
    result = run_cli("sweep", "exp=tiny", "--trials", 1, expect=2)
    assert 'sweep.params."data.seq_len"' in result.output
    assert not (sweep_env / "runs").exists()  # refused before any trial
    # a range whose low end keeps everything and whose next value cuts
    _sweep_params(sweep_env, {"data.seq_len": {"type": "int", "low": 0, "high": 60}})
    with pytest.raises(SweepError, match="data.seq_len"):
        prepare("tiny", None, None, None)
    # lengths at or past the sequences' keep every row: nothing to refuse
    _sweep_params(sweep_env, {"data.seq_len": {"type": "categorical", "choices": [60, 120]}})
    prepare("tiny", None, None, None)
    # the valid file has 6 sequences: a limit of 2 keeps fewer, 6 keeps them all
    _sweep_params(sweep_env, {"train.max_valid_seqs": {"type": "categorical",
                                                       "choices": [0, 2]}})
    with pytest.raises(SweepError, match=r"the sequences kept \(train.max_valid_seqs\)"):
        prepare("tiny", None, None, None)
    _sweep_params(sweep_env, {"train.max_valid_seqs": {"type": "categorical",
                                                       "choices": [0, 6]}})
    prepare("tiny", None, None, None)
    copy = sweep_env / "valid-copy.parquet"
    shutil.copy(workspace / "data/valid.parquet", copy)
    _sweep_params(sweep_env, {"data.valid": {"type": "categorical", "choices": [
        str(workspace / "data/valid.parquet"), str(copy)]}})
    with pytest.raises(SweepError, match="the file validated on"):
        prepare("tiny", None, None, None)
    _sweep_params(sweep_env, {"data.split_seed": {"type": "int", "low": 0, "high": 3}})
    with pytest.raises(SweepError, match="held-out part of the train file"):
        prepare("tiny", ["data.split=random"], None, None)


def test_a_sweep_whose_trials_validated_on_other_rows_warns_in_its_summary(
        sweep_env):  # noqa: F811
    _sweep_params(sweep_env, {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    fast = ["train.epochs=1", "train.warmup_epochs=0"]
    sweep("tiny", [*fast, "data.seq_len=30"], trials=1, progress=False)
    # a study from before kit recorded its config, resumed without the cut
    _forget_identity(_sqlite(sweep_env))
    summary = sweep("tiny", fast, trials=2, progress=False)
    sets = summary["validation_sets"]
    assert sorted(sets) == ["first 30 steps of valid.parquet", "valid.parquet"]
    assert sets["first 30 steps of valid.parquet"] == [0] and sets["valid.parquet"] == [1]
    assert "warning: the trials ranked here were validated on 2 different sets" in (
        format_summary(summary))
    # one set: no warning
    one = sweep("tiny", fast, trials=1, progress=False, study="other")
    assert "validation_sets" not in one


# --- finding 5: select's warning once, the report names the file and the clip ---------------


@pytest.fixture(scope="module")
def clip_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two trained runs of one competition, one under a spec copy whose clip is narrowed."""
    root = tmp_path_factory.mktemp("r313")
    exps = tiny_competition(root, train_seqs=12, valid_seqs=4, seed=2)
    clipped = _clip_spec(root / "tiny-lob.toml", root / "tiny-clip.toml")
    plain = raw_gru_experiment(root)
    (exps / "plain.toml").write_text(tomli_w.dumps(plain))
    # (another seed: the same seed trains the same model, which select keeps once)
    (exps / "clip.toml").write_text(tomli_w.dumps({**plain, "spec": str(clipped), "seed": 6}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIT_EXPERIMENTS", str(exps))
        runs = [Path(train_experiment(name, progress=False, runs_dir=root / "runs")[0]
                     ["run_dir"]) for name in ("plain", "clip")]
    assert load_spec(str(clipped)).metric.clip == tuple(NARROW_CLIP)
    return root, runs[0], runs[1]


def test_select_warns_once_and_the_report_names_the_file_and_the_other_clip(clip_runs):
    root, plain, clip = clip_runs
    out = root / "mix.toml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # (--init-best 2: both are members whatever the greedy picks)
        doc, path, _ = select_ensemble([plain, clip], iters=4, init_best=2, out=out)
    said = [w for w in caught if "trained under another metric" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in said]
    assert doc["ensemble"]["metric_settings"] == {"name": "weighted_pearson",
                                                  "clip": [-6.0, 6.0]}
    report = write_ensemble_report(path).read_text()
    assert f"of `{root / 'data/valid.parquet'}` with weighted_pearson, clip ±6" in report
    assert "Trained under other metric settings than the blends are scored with: " \
           f"clip/{clip.name} (weighted_pearson, clip ±0.01)" in report
