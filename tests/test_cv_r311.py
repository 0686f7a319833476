"""r311: validation on the training rows (kit train and kit ensemble select), and out-of-fold
groups that a kill or a deleted fold run left incomplete, as kit ensemble select sees them."""

import json
import os
import shutil
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from kit.ensemble import EnsembleError, expand_candidates, select_ensemble
from kit.run_record import file_sha256
from kit.train.data import check_data_files
from tests.cli import run_cli


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    """The workspace's gru experiment trained as one plain run (seed 5) and as one --folds 2
    group of seeds 5 and 6 (one command: one stamp)."""
    from kit.train.recipe import train_experiment

    runs_dir = tmp_path_factory.mktemp("r311") / "runs"
    old = os.environ.get("KIT_EXPERIMENTS")
    os.environ["KIT_EXPERIMENTS"] = str(workspace / "experiments")
    try:
        plain = Path(train_experiment("gru", ["train.warmup_epochs=0"], progress=False,
                                      runs_dir=runs_dir)[0]["run_dir"])
        train_experiment("gru", ["train.warmup_epochs=0"], seeds=[5, 6], folds=2, progress=False,
                         runs_dir=runs_dir)
    finally:
        if old is None:
            del os.environ["KIT_EXPERIMENTS"]
        else:
            os.environ["KIT_EXPERIMENTS"] = old
    groups = sorted((runs_dir / "gru").glob("*-oof"))
    assert [g.name.split("-")[-2] for g in groups] == ["s5", "s6"]
    return {"plain": plain, "oof5": groups[0], "oof6": groups[1]}


def _copy_group(group: Path, into: Path) -> Path:
    """An out-of-fold group and its fold runs, copied under `into` (names kept), the group
    listing the copies as if it had trained there."""
    stem = group.name.removesuffix("-oof")
    for folder in group.parent.glob(f"{stem}*"):
        shutil.copytree(folder, into / folder.name)
    metrics = json.loads((into / group.name / "metrics.json").read_text())
    metrics["runs"] = [str(into / Path(run).name) for run in metrics["runs"]]
    (into / group.name / "metrics.json").write_text(json.dumps(metrics))
    return into / group.name


def _leaky_copy(plain: Path, oof: Path, into: Path, valid: str | None = None) -> Path:
    """A run as kit train wrote it before r311 for data.valid = data.train (or `valid`, a
    byte-identical copy of it): its config names the train file as its valid file, its record
    the train file's sha256, and its val_rows every scored train row (those of the oof group)."""
    run = shutil.copytree(plain, into / plain.name)
    config = tomllib.loads((run / "config.toml").read_text())
    train = config["data"]["train"]
    config["data"]["valid"] = valid or train
    (run / "config.toml").write_text(tomli_w.dumps(config))
    digests = {train: file_sha256(train, None)} | ({valid: file_sha256(valid, None)}
                                                   if valid else {})
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "data_sha256": digests}))
    (run / "data_sha256.json").write_text(json.dumps(digests))
    preds = np.load(oof / "oof_preds.npy")
    np.save(run / "val_preds.npy", preds * 1.5 + 0.1)  # another model's: not a copy of the oof's
    shutil.copy(oof / "oof_rows.npy", run / "val_rows.npy")
    return run


def test_training_validated_on_its_own_train_file_is_refused(workspace, monkeypatch, tmp_path):
    """r311: data.valid = the train file trained silently: early stopping and the score were
    measured on the rows the model trained on. Refused, however the file is named."""
    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    monkeypatch.chdir(tmp_path)
    train = workspace / "data" / "train.parquet"
    (tmp_path / "link.parquet").symlink_to(train)
    shutil.copy(train, tmp_path / "copy.parquet")
    for valid, how in ((train, "the same file as"), (tmp_path / "link.parquet", "the same file as"),
                       (tmp_path / "copy.parquet", "a byte-identical copy of")):
        out = run_cli("train", "exp=gru", f"data.valid={valid}", expect=2).output
        assert f"is {how} data.train" in out, out
        assert "in-sample" in out and "kit train --folds K" in out
    assert not (tmp_path / "runs").exists()  # refused before any run folder
    # --folds reads no valid file: its data.valid is nobody's concern
    check_data_files({"train": str(train), "valid": str(train), "split": "file", "fold": None,
                      "cache_dir": str(tmp_path / "cache")}, folds=True)


def test_select_refuses_a_run_validated_on_its_training_rows(trained, tmp_path, workspace):
    """r311: such a run (trained before kit train refused it) predicts "the same rows of the
    same file" as an out-of-fold group, and its in-sample score took all the weight."""
    leak = _leaky_copy(trained["plain"], trained["oof6"], tmp_path / "leak")
    with pytest.raises(EnsembleError, match=rf"{leak.name}: validated on the rows it trained "
                       r"on \(.*the same path, with data.split = \"file\"\).*in-sample.*leave it "
                       r"out, or train it again on held-out rows"):
        select_ensemble([trained["oof5"], leak], iters=3, out=tmp_path / "e.toml")
    # validated on a byte-identical copy under another name: the sha256 it recorded says so
    copy = tmp_path / "copy.parquet"
    shutil.copy(workspace / "data" / "train.parquet", copy)
    renamed = _leaky_copy(trained["plain"], trained["oof6"], tmp_path / "renamed", str(copy))
    with pytest.raises(EnsembleError, match=r"validated on the rows it trained on .*the same "
                                            r"content"):
        select_ensemble([trained["oof5"], renamed], iters=3, out=tmp_path / "e2.toml")
    assert not (tmp_path / "e.toml").exists() and not (tmp_path / "e2.toml").exists()


def test_a_fold_group_killed_before_its_last_fold_is_named_when_left_out(trained, tmp_path):
    """r311: a group whose second fold was killed (no -oof folder yet) was left out of
    runs/EXP without a word, where an unfinished run is named."""
    exp = tmp_path / "gru"
    _copy_group(trained["oof5"], exp)
    killed = _copy_group(trained["oof6"], exp)
    shutil.rmtree(killed)  # killed during its last fold: no -oof folder yet
    last = next(exp.glob("*-s6-fold2of2"))
    (last / "metrics.json").unlink()
    stem = killed.name.removesuffix("-oof")
    with pytest.warns(UserWarning, match=rf"left out 1 out-of-fold group\(s\) whose folds have "
                      rf"not all finished .*: {stem} \(1 of 2 folds finished; finish it with "
                      r"`kit train gru seeds=\[5,6\] --folds 2 --resume`"):
        got = expand_candidates([exp])
    assert got == [(exp / trained["oof5"].name).resolve()]


def test_a_group_missing_a_fold_run_is_named_refused_alone_and_left_out_of_its_folder(
        trained, tmp_path):
    """r311: one fold run of a finished group deleted: "no config.toml; is this a run
    directory?" named neither the group nor what to do, and refused the whole experiment."""
    exp = tmp_path / "gru"
    whole = _copy_group(trained["oof5"], exp)
    broken = _copy_group(trained["oof6"], exp)
    fold = next(exp.glob("*-s6-fold2of2"))
    shutil.rmtree(fold)
    message = (rf"out-of-fold group {broken} lists fold run {fold}, which is missing .*: "
               r"restore it, or train the group again \(`kit train gru seed=6 --folds 2`, with "
               r"any overrides it started with\), or leave the group out")
    with pytest.raises(EnsembleError, match=message):
        select_ensemble([broken], iters=3, out=tmp_path / "e.toml")
    with pytest.warns(UserWarning, match=rf"{exp}: left out {message}"):
        doc, _, _ = select_ensemble([exp], iters=3, out=tmp_path / "e.toml")
    assert [m["name"] for m in doc["members"]] == [f"gru/{whole.name}"]
    shutil.rmtree(whole)  # nothing else left: refused, as when named
    with warnings.catch_warnings(), pytest.raises(EnsembleError, match=message):
        warnings.simplefilter("ignore")
        expand_candidates([exp])
