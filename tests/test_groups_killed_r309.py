"""A `kit train` killed (SIGKILL) between its group's claim and its runs' first file: the next
`kit train` of the experiment drops the empty folders and the record (r309)."""

from __future__ import annotations

import os
import time

import tomli_w

from kit.train.groups import (
    DEAD_AFTER_S,
    GROUPS_DIR,
    claim_group,
    drop_never_started,
    holding_group,
)
from kit.train.recipe import train_experiment
from tests.test_train import experiments_of, raw_gru_experiment, tiny_competition

BASE = {"name": "tiny", "seed": 5}


def killed_claim(exp_dir, seeds, folds=0):
    """What a command killed after its claim leaves: the record and empty member folders."""
    return claim_group(exp_dir, seeds, folds, BASE)


def age(exp_dir, stamp, seconds=DEAD_AFTER_S + 60):
    """The group's record as if claimed `seconds` ago."""
    then = time.time() - seconds
    os.utime(exp_dir / GROUPS_DIR / f"{stamp}.json", (then, then))


def test_a_dead_groups_empty_folders_go_at_the_next_training(tmp_path, monkeypatch):
    root = tmp_path / "comp"
    root.mkdir()
    exps = tiny_competition(root, train_seqs=8, valid_seqs=3, seed=3)
    (exps / "tiny.toml").write_text(tomli_w.dumps(raw_gru_experiment(root)))
    experiments_of(root, monkeypatch, tmp_path)
    runs = tmp_path / "runs"
    dead = killed_claim(runs / "tiny", [5])
    age(runs / "tiny", dead)
    assert (runs / "tiny" / f"{dead}-s5").is_dir()
    [result] = train_experiment("tiny", progress=False, runs_dir=runs)
    assert result["finished"]
    left = sorted(p.name for p in (runs / "tiny").iterdir() if p.is_dir())
    # the dead group's empty folder and record went (the new group may take its free stamp)
    assert left == [GROUPS_DIR, os.path.basename(result["run_dir"])], left
    assert len(list((runs / "tiny" / GROUPS_DIR).iterdir())) == 1


def test_a_live_a_young_or_a_started_group_is_kept(tmp_path):
    exp_dir = tmp_path / "runs" / "tiny"
    live = killed_claim(exp_dir, [1])
    young = killed_claim(exp_dir, [2])
    started = killed_claim(exp_dir, [3], folds=2)
    (exp_dir / f"{started}-s3-fold1of2" / "config.toml").write_text("seed = 3\n")
    dead = killed_claim(exp_dir, [4], folds=2)
    for stamp in (live, started, dead):  # (claimed first: each claim drops dead groups)
        age(exp_dir, stamp)
    with holding_group(exp_dir, live):  # its command alive, building its data
        drop_never_started(exp_dir)
    names = {p.name for p in exp_dir.iterdir()}
    assert {f"{live}-s1", f"{young}-s2", f"{started}-s3-fold1of2",
            f"{started}-s3-fold2of2"} <= names, names
    assert not {f"{dead}-s4-fold1of2", f"{dead}-s4-fold2of2"} & names, names
    records = {p.stem for p in (exp_dir / GROUPS_DIR).iterdir()}
    assert records == {live, young, started}, records


def test_a_group_member_deleted_by_hand_is_said_when_resumed(tmp_path, monkeypatch, capsys):
    """--resume of a group trained a member whose folder was deleted by hand again from its
    start without a word (r315)."""
    import shutil

    root = tmp_path / "comp"
    root.mkdir()
    exps = tiny_competition(root, train_seqs=8, valid_seqs=3, seed=3)
    (exps / "tiny.toml").write_text(tomli_w.dumps(
        raw_gru_experiment(root) | {"train": {"epochs": 2, "batch_size": 8, "lr": 3e-3,
                                              "warmup_epochs": 0}}))
    experiments_of(root, monkeypatch, tmp_path)
    runs = tmp_path / "runs"
    paused = train_experiment("tiny", seeds=[5, 6], stop_after_epochs=1, progress=False,
                              runs_dir=runs)
    gone = paused[0]["run_dir"]
    shutil.rmtree(gone)
    capsys.readouterr()
    done = train_experiment("tiny", seeds=[5, 6], resume=True, progress=False, runs_dir=runs)
    assert all(r["finished"] for r in done)
    said = capsys.readouterr().err
    assert (f"note: {gone} is not there (deleted, or it never started): training it from its "
            "start as a member of its group") in said, said
    assert said.count("is not there") == 1, said  # the other member resumed without a note
