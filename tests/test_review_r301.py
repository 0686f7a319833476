"""r301's review of the twenty-seventh session's later commits: the resume note's advice holds
on this machine, an old checkpoint that kit now refuses says to retrain, an empty
TQDM_DISABLE keeps the terminal rule, and a relative data path names the folder it read."""

import os

import pytest
import torch

from kit.errors import KitError
from kit.progress import bar_switch
from kit.train.trainer import replay_threads


def test_the_resume_note_names_what_this_machine_can_do(monkeypatch):
    """torch caps OMP_NUM_THREADS at the machine's cores: `OMP_NUM_THREADS=7` on 2 cores gave
    2 threads, and the note said it would replay the run."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert replay_threads(2) == ("a resume without --jobs, with OMP_NUM_THREADS=2 in its "
                                 "environment, would")
    assert replay_threads(7) == "this machine has 2 core(s); only a resume on one of at least 7 " \
        "would"


def test_a_checkpoint_whose_model_kit_now_refuses_says_to_retrain(tmp_path):
    """A width of 1 under a LayerNorm, saved before kit refused it: pack and parity said only
    "use >= 2 or layer_norm = false", not that the run must be trained again."""
    from kit.competition import load_spec
    from kit.export.frozen import load_member
    from kit.features.normaliser import Normaliser
    from kit.features.sets import build_feature_set
    from kit.models import build_model
    from kit.train.checkpoint import save_checkpoint

    spec = load_spec("predictorium")
    features = build_feature_set(spec, ["raw"])
    model = build_model({"type": "gru", "hidden": 2, "layer_norm": True}, 32, 2)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"model": model.state_dict(),
                     "model_config": {"type": "gru", "hidden": 1, "layer_norm": True},
                     "normaliser": Normaliser.fit(torch.randn(50, 32).numpy()).to_dict(),
                     "features": features.to_dict(), "spec": spec.to_dict(), "score": None,
                     "per_target": {}}, run / "best.pt")
    with pytest.raises(KitError, match=r"best\.pt: its model config is refused by this kit "
                                       r"\(model\.hidden = 1 .*\); it was trained before that: "
                                       r"retrain the run"):
        load_member(run)


def test_an_empty_tqdm_disable_keeps_the_terminal_rule(monkeypatch):
    monkeypatch.delenv("KIT_PROGRESS", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "")  # tqdm reads "" as bars always on
    assert bar_switch(True) == {"disable": None}


def test_a_missing_relative_data_file_names_the_folder_it_was_read_from(tmp_path, monkeypatch):
    from kit.train.data import check_data_files

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KitError, match=rf"data.train = 'data/train.parquet': no such data file in "
                                       rf"{tmp_path} \(a relative path reads from the working "
                                       r"folder: run from the project's folder"):
        check_data_files({"train": "data/train.parquet", "split": "random", "fold": None})
    with pytest.raises(KitError) as info:
        check_data_files({"train": str(tmp_path / "x.parquet"), "split": "random",
                          "fold": None})
    assert "working folder" not in str(info.value)
