"""Pins of kit/ablate.py and kit/run_record.py behaviours a mutation audit (r256) found
untested, and the relocation of a run of an experiment named `runs`. Direct calls on folders
and files made by hand; the ablations train nothing (recipe.train_one and continue_run are
replaced by a stand-in that writes the metrics.json a finished run leaves)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import tomli_w

from kit.config import ConfigError, load_experiment
from kit.errors import KitError

ID = "20260101-000000-s1"


# --- relocated: a run path recorded before the checkout moved --------------------------------


def _runs_here(root: Path, *tails: str) -> Path:
    """A checkout at root/new holding runs/<tail> for each tail; the working folder."""
    here = root / "new"
    for tail in tails:
        (here / "runs" / tail).mkdir(parents=True)
    return here


def test_a_run_of_an_experiment_named_runs_is_found_after_the_checkout_moved(
        tmp_path, monkeypatch):
    """The innermost runs/ part alone was taken: /old/proj/runs/runs/ID looked for runs/ID and
    named the gone path, though runs/runs/ID (an experiment named runs) was here."""
    from kit.run_record import relocated

    here = _runs_here(tmp_path, f"tiny/{ID}", f"runs/{ID}")
    (here / "runs" / "runs" / ID / "best.pt").write_text("w")
    monkeypatch.chdir(here)
    assert relocated(f"/old/proj/runs/tiny/{ID}") == here / "runs" / "tiny" / ID
    assert relocated(f"/old/proj/runs/runs/{ID}") == here / "runs" / "runs" / ID
    assert relocated(f"/old/proj/runs/runs/{ID}/best.pt") == here / "runs/runs" / ID / "best.pt"


def test_a_checkout_in_a_folder_named_runs_relocates_by_its_own_runs_folder(
        tmp_path, monkeypatch):
    """S13: /x/runs/proj/runs/EXP/ID: the outer runs/ gives runs/proj/runs/EXP/ID, not here."""
    from kit.run_record import relocated

    here = _runs_here(tmp_path, f"tiny/{ID}")
    monkeypatch.chdir(here)
    assert relocated(f"/old/runs/proj/runs/tiny/{ID}") == here / "runs" / "tiny" / ID
    # a project folder named runs, its run right under its runs/ (--run-dir runs/ID)
    (here / "runs" / ID).mkdir()
    assert relocated(f"/old/runs/runs/{ID}") == here / "runs" / ID


def test_a_run_found_nowhere_is_named_as_recorded(tmp_path, monkeypatch):
    """S14: not a guessed local path that does not exist: the caller names the recorded one."""
    from kit.run_record import relocated

    here = _runs_here(tmp_path, "tiny")
    monkeypatch.chdir(here)
    for recorded in (f"/old/proj/runs/tiny/{ID}", f"/old/runs/proj/runs/tiny/{ID}",
                     f"/old/proj/runs/runs/{ID}/best.pt"):
        assert relocated(recorded) == Path(recorded)
    existing = here / "runs" / "tiny"
    assert relocated(existing) == existing  # a path that exists is itself


# --- run_record: small readers ----------------------------------------------------------------


def test_the_first_pending_best_epoch_is_named(tmp_path):
    """S12: the docstring's "first epoch whose best is pending", not the last."""
    from kit.run_record import pending_best_epoch

    assert pending_best_epoch(tmp_path) is None
    for name in (".best-pending-4", ".best-pending-2", ".best-pending-10", ".best-pending-x"):
        (tmp_path / name).mkdir()
    assert pending_best_epoch(tmp_path) == 2


@pytest.mark.parametrize("value, finished", [(True, True), (1, False), ("yes", False),
                                             (False, False)])
def test_only_finished_true_is_finished(tmp_path, value, finished):
    """S15: a hand-edited "finished": 1 or "yes" is not finished = true."""
    from kit.run_record import is_finished

    (tmp_path / "metrics.json").write_text(json.dumps({"finished": value}))
    assert is_finished(tmp_path) is finished


def test_a_spec_json_that_is_not_an_object_is_named(tmp_path):
    """S16: the file-named error, not spec_from_dict's on a list."""
    from kit.run_record import read_trained_spec

    (tmp_path / "spec.json").write_text("[1]")
    with pytest.raises(KitError, match=r"spec\.json: not a JSON object; the file was damaged"):
        read_trained_spec(tmp_path)


def test_a_name_holding_fold_mid_way_is_not_a_fold_run(tmp_path):
    """S17: FOLD_RUN is anchored: x-s1-fold2of3-copy is a run kit train resumes."""
    from kit.run_record import how_to_finish, part_of_something

    assert part_of_something("x-s1-fold2of3")
    assert not part_of_something("x-s1-fold2of3-copy")
    said = how_to_finish(tmp_path / "x-s1-fold2of3-copy", "tiny")
    assert "a fold run" not in said and "kit train tiny --resume --run-dir" in said


def test_a_run_validating_on_its_train_file_records_no_valid_file():
    """S10: a split or fold run never read its valid file: not recorded, not flagged."""
    from kit.run_record import data_files

    data = {"train": "data/train.parquet", "valid": "data/valid.parquet"}
    assert data_files({"data": data}) == ["data/train.parquet", "data/valid.parquet"]
    assert data_files({"data": data | {"split": "random"}}) == ["data/train.parquet"]
    assert data_files({"data": data | {"fold": [1, 3]}}) == ["data/train.parquet"]
    assert data_files({"data": data}, {"fold": 1}) == ["data/train.parquet"]


# --- run_record: the data a run recorded --------------------------------------------------------


def _recorded_run(root: Path, data: dict, digests: dict | None) -> Path:
    """root/proj/runs/tiny/ID with config.toml's [data] and metrics.json's data_sha256."""
    run = root / "proj" / "runs" / "tiny" / ID
    run.mkdir(parents=True)
    (run / "config.toml").write_text(tomli_w.dumps({"data": data}))
    if digests is not None:
        (run / "metrics.json").write_text(json.dumps({"finished": True, "score": 0.5,
                                                      "data_sha256": digests}))
    return run


def test_a_missing_relative_data_file_is_not_reported(tmp_path, monkeypatch):
    """S8: "a file missing here is not reported": it was hashed as the path "None"."""
    from kit.run_record import data_changes

    valid = tmp_path / "proj" / "data" / "valid.parquet"
    valid.parent.mkdir(parents=True)
    valid.write_text("rows")
    data = {"train": "data/train.parquet", "valid": "data/valid.parquet",
            "cache_dir": str(tmp_path / "cache")}
    run = _recorded_run(tmp_path, data, {"data/train.parquet": "0" * 64,
                                         "data/valid.parquet": "1" * 64})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    # the valid file is there and differs; the train file is gone: said by its readers
    assert data_changes(run) == ["data/valid.parquet"]
    valid.unlink()
    assert data_changes(run) == []


def test_a_missing_absolute_data_file_is_not_reported(tmp_path, monkeypatch):
    """S9: an absolute path is taken as it is, only when it is a file."""
    from kit.run_record import data_changes, data_file_of

    gone = str(tmp_path / "gone" / "train.parquet")
    kept = tmp_path / "valid.parquet"
    kept.write_text("rows")
    data = {"train": gone, "valid": str(kept), "cache_dir": str(tmp_path / "cache")}
    run = _recorded_run(tmp_path, data, {gone: "0" * 64,
                                         str(kept): hashlib.sha256(b"rows").hexdigest()})
    monkeypatch.chdir(tmp_path)
    assert data_file_of(run, gone) is None and data_file_of(run, str(kept)) == kept
    assert data_changes(run) == []


def test_a_data_record_that_is_not_an_object_records_nothing(tmp_path):
    """S11: data_sha256.json holding a list (no metrics.json) is no record, not a traceback."""
    from kit.run_record import DATA_RECORD, data_changes, recorded_digests

    run = _recorded_run(tmp_path, {"train": "data/train.parquet"}, None)
    (run / DATA_RECORD).write_text("[1]")
    assert recorded_digests(run) == {}
    assert data_changes(run) == []


def test_a_file_hashed_once_is_not_read_again(tmp_path, monkeypatch):
    """S22/S23: file_sha256 records the digest in the cache's digests.json and trusts it: a
    second call (a new process: no in-process memo) reads no bytes."""
    import kit.data.cache as cache_module
    from kit.run_record import file_sha256

    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # the file counts as settled at once
    monkeypatch.setattr(cache_module, "_digests", {})
    data, cache = tmp_path / "train.parquet", tmp_path / "cache"
    data.write_bytes(b"some rows")
    cache.mkdir()
    sha = hashlib.sha256(b"some rows").hexdigest()
    assert file_sha256(str(data), str(cache)) == sha
    table = json.loads((cache / "digests.json").read_text())
    assert table[str(data.resolve())][-1] == sha
    reads = []

    def hashing(path):
        reads.append(path)
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(cache_module, "_digests", {})  # as a new process sees it
    monkeypatch.setattr(cache_module, "file_digest", hashing)
    assert file_sha256(str(data), str(cache)) == sha
    assert reads == []


# --- ablate: units --------------------------------------------------------------------------


def _outcome(seed: int, score: float, run_dir: str, **more) -> dict:
    return {"seed": seed, "score": score, "per_target": {"t0": score}, "run_dir": run_dir,
            **more}


def test_a_failed_run_is_not_counted_finished(tmp_path):
    """S2/S3: "N of M runs finished" counts runs that finished with a score: not one this
    invocation saw fail, nor one whose folder says finished with no score (it diverged at
    once)."""
    from kit.ablate import finished_run

    failed, scored, unscored = (tmp_path / n for n in ("failed", "scored", "unscored"))
    for folder, score in ((failed, 0.5), (scored, 0.5), (unscored, None)):
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"finished": True, "score": score}))
    trained = {("raw",): [{"seed": 1, "error": "raw seed 1: injected", "run_dir": str(failed)}]}
    assert finished_run(failed, trained) is False  # as this invocation saw it, not its folder
    assert finished_run(scored, trained) is True
    assert finished_run(unscored, trained) is False


def test_a_resumed_run_with_no_score_is_a_failed_run(tmp_path, monkeypatch):
    """S4: a resumed run that diverged before any epoch scored (metrics.json: score null) was
    an outcome of score None: np.mean([None]) crashed mid-ablation."""
    from kit.ablate import train_variant_seed, variant_row
    from kit.train import recipe
    from kit.train.runs import RunFiles

    monkeypatch.setattr(recipe, "continue_run", lambda *a, **k: {
        "finished": True, "score": None, "diverged": "train loss inf (injected)"})
    files = RunFiles(tmp_path / "ablate-x-raw-s1")
    outcome = train_variant_seed({"seed": 1}, files, "raw", True, False)
    assert outcome == {"seed": 1, "run_dir": str(files.root), "error": "raw seed 1: diverged "
                       "before any epoch scored (train loss inf (injected))"}
    row = variant_row("ladder", "raw", ["raw"], [outcome])
    assert row["score"] is None and row["errors"] == [outcome["error"]]


def test_an_interrupted_resume_writes_each_variant_once(tmp_path):
    """S7: the kept rows this resume revisited are replaced, not written beside the new ones."""
    from kit.ablate import save, variant_row

    raw = [_outcome(1, 0.2, "r1")]
    old = [variant_row("ladder", "raw", ["raw"], [{"seed": 1, "error": "x", "run_dir": "r1"}]),
           variant_row("ladder", "raw+diffs", ["raw", "diffs"], [_outcome(1, 0.3, "rd1")]),
           variant_row("without", "-raw", ["diffs"], [_outcome(1, 0.1, "d1")])]
    summary = {"groups": ["raw", "diffs"], "sign": 1.0,
               "variants": [variant_row("ladder", "raw", ["raw"], raw)]}
    path = tmp_path / "ablate-x.json"
    save(path, summary, old, {("raw",): raw})
    written = json.loads(path.read_text())
    assert [v["label"] for v in written["variants"]] == ["raw", "raw+diffs", "-raw"]
    assert written["variants"][0]["score"] == pytest.approx(0.2)
    assert len(written["changes"]) == 3


def test_recorded_seeds_are_a_list_of_whole_numbers(tmp_path):
    """S19: a summary whose seeds are [], ["1"] or [true] says nothing (check_resumable names
    the file's seeds then and now)."""
    from kit.ablate import recorded_seeds

    path = tmp_path / "ablate-x.json"
    for seeds, said in (([], None), (["1"], None), ([True], None), ([1, 2], [1, 2])):
        path.write_text(json.dumps({"seeds": seeds}))
        assert recorded_seeds(path) == said, seeds


def test_a_resume_file_must_be_an_ablate_json(tmp_path):
    """S20: ablate-x.txt holding the very summary is not an ablation summary."""
    from kit.ablate import check_resumable

    summary = {"experiment": "tiny", "groups": ["raw"], "seeds": [1], "overrides": [],
               "config": {"model.hidden": "d"}}
    good = tmp_path / "ablate-x.json"
    good.write_text(json.dumps(summary))
    check_resumable(good, summary)  # (the same content under its own name resumes)
    other = tmp_path / "ablate-x.txt"
    other.write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"ablate-x\.txt: not an ablation summary"):
        check_resumable(other, summary)


def test_a_shared_rungs_failure_is_printed_once():
    """S21: -diffs trains raw's runs: their failure is one line, not one per row."""
    from kit.ablate import format_ablation, variant_row

    failed = [{"seed": 1, "error": "raw seed 1: injected", "run_dir": "r1"}]
    summary = {"experiment": "tiny", "seeds": [1], "targets": ["t0"], "sign": 1.0,
               "groups": ["raw", "diffs"], "file": "ablate-x.json",
               "variants": [variant_row("ladder", "raw", ["raw"], failed),
                            variant_row("ladder", "raw+diffs", ["raw", "diffs"],
                                        [_outcome(1, 0.3, "rd1")]),
                            variant_row("without", "-raw", ["diffs"], [_outcome(1, 0.1, "d1")]),
                            variant_row("without", "-diffs", ["raw"], failed)]}
    out = format_ablation(summary)
    assert out.count("failed: raw seed 1: injected") == 1, out


# --- ablate: whole ablations, training replaced -------------------------------------------------


def tiny_experiment(workspace, tmp_path, monkeypatch) -> None:
    """An experiment `tiny` (the shared tiny competition's GRU, 2 epochs) in its own
    experiments folder under tmp_path, the working folder."""
    exps = tmp_path / "experiments"
    exps.mkdir()
    base = load_experiment(str(workspace / "experiments" / "gru.toml"))
    base.pop("name")
    base["model"] = {"type": "gru", "hidden": 8, "layers": 1}
    base["train"] = {**base["train"], "epochs": 2}  # (warmup 1: below the epochs)
    (exps / "tiny.toml").write_text(tomli_w.dumps(base))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(exps))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ablate_env(workspace, tmp_path, monkeypatch):
    """tiny_experiment, and recipe's training replaced: each run writes the metrics.json of a
    finished run."""
    from kit.run_record import is_finished, read_metrics
    from kit.train import recipe

    tiny_experiment(workspace, tmp_path, monkeypatch)
    trained: list[str] = []

    def train_one(config, files, **kwargs):
        trained.append(files.root.name)
        score = len(config["features"]["groups"]) / 10 + config["seed"] / 100
        metrics = {"finished": True, "score": score, "per_target": {"t0": score}}
        files.root.mkdir(parents=True, exist_ok=True)
        files.metrics.write_text(json.dumps(metrics))
        return metrics | {"run_dir": str(files.root)}

    def continue_run(config, files, overrides, stop_after_epochs, progress, fold=None,
                     group=""):
        if is_finished(files.root):
            return read_metrics(files.root) | {"run_dir": str(files.root)}
        return recipe.train_one(config, files, progress=progress)

    monkeypatch.setattr(recipe, "train_one", train_one)
    monkeypatch.setattr(recipe, "continue_run", continue_run)
    return trained


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def _planned(out: Path) -> list[str]:
    return [f"{out.stem}-{label}-s{seed}" for label in ("raw", "raw+diffs", "-raw")
            for seed in (1, 2)]


def test_an_ablation_stopped_in_its_first_run_resumes(ablate_env, monkeypatch):
    """S1: the summary is written before the first run: the printed --resume FILE exists."""
    from kit.ablate import AblationInterrupted, ablate
    from kit.train import recipe

    train = recipe.train_one
    monkeypatch.setattr(recipe, "train_one", _ctrl_c)
    with pytest.raises(AblationInterrupted) as stop:
        ablate("tiny", ["raw", "diffs"], [1, 2], progress=False)
    out = stop.value.file
    assert (stop.value.finished, stop.value.planned) == (0, 6)
    assert out.is_file() and json.loads(out.read_text())["variants"] == []
    monkeypatch.setattr(recipe, "train_one", train)
    summary = ablate("tiny", ["raw", "diffs"], [1, 2], progress=False, resume=out)
    assert ablate_env == _planned(out)  # every run, each once
    assert summary["file"] == str(out) and len(summary["variants"]) == 4
    assert all(v["score"] is not None for v in json.loads(out.read_text())["variants"])


def test_a_gpu_started_ablation_resumes_on_a_cpu(ablate_env, monkeypatch):
    """S5: train.batch_size = 0 needs CUDA to start, not to resume (last.pt holds the batch
    size found), as kit train --resume."""
    import torch

    from kit.ablate import AblationInterrupted, ablate
    from kit.train import recipe

    args = ("tiny", ["raw", "diffs"], [1, 2], ["train.batch_size=0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        ablate(*args, progress=False)
    train = recipe.train_one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # started on a GPU
    monkeypatch.setattr(recipe, "train_one", _ctrl_c)
    with pytest.raises(AblationInterrupted) as stop:
        ablate(*args, progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on a CPU
    monkeypatch.setattr(recipe, "train_one", train)
    summary = ablate(*args, progress=False, resume=stop.value.file)
    assert ablate_env == _planned(stop.value.file)
    assert summary["overrides"] == ["train.batch_size=0"]


def test_an_ablation_records_its_overrides_and_a_resume_needs_them(ablate_env, monkeypatch):
    """S6: the summary records the overrides; a resume with others is refused naming both."""
    from kit.ablate import AblationInterrupted, ablate
    from kit.train import recipe

    monkeypatch.setattr(recipe, "train_one", _ctrl_c)
    with pytest.raises(AblationInterrupted) as stop:
        ablate("tiny", ["raw"], [1], ["train.lr=0.001"], progress=False)
    out = stop.value.file
    assert json.loads(out.read_text())["overrides"] == ["train.lr=0.001"]
    with pytest.raises(ConfigError, match=r"overrides \['train.lr=0.001'\] then, \[\] now"):
        ablate("tiny", ["raw"], [1], progress=False, resume=out)


def test_repeated_groups_are_refused(ablate_env):
    """S18: --groups raw,raw would train the same variants twice."""
    from kit.ablate import ablate

    for groups in (["raw", "raw"], ["raw", "diffs", "raw"]):
        with pytest.raises(ConfigError, match="--groups: distinct group names"):
            ablate("tiny", groups, [1], progress=False)
    assert ablate_env == [] and not Path("runs").exists()
