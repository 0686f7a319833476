"""kit train's result lines say which rows each score is on, as kit runs labels them (r313:
a data.seq_len cut or train.max_valid_seqs scored another set, said only by kit runs)."""

from __future__ import annotations

from tests.cli import run_cli
from tests.test_train import experiments_of
from tests.test_train_groups import tiny_root  # noqa: F401 (a fixture: GRU 8x1, one epoch)


def result_line(output: str, kind: str = "score") -> str:
    [line] = [line for line in output.splitlines() if f": {kind} " in line]
    return line


def test_a_runs_result_line_names_its_rows(tiny_root, monkeypatch, tmp_path):  # noqa: F811
    experiments_of(tiny_root, monkeypatch, tmp_path)
    whole = result_line(run_cli("train", "exp=tiny", "-q").output)
    assert ") on valid.parquet, best epoch 1" in whole, whole
    cut = result_line(run_cli("train", "exp=tiny", "data.seq_len=40",
                              "train.max_valid_seqs=2", "-q").output)
    assert ") on 2 seqs of first 40 steps of valid.parquet, best epoch 1" in cut, cut


def test_an_out_of_fold_line_names_the_cut_file(tiny_root, monkeypatch,  # noqa: F811
                                                  tmp_path):
    experiments_of(tiny_root, monkeypatch, tmp_path)
    line = result_line(run_cli("train", "exp=tiny", "--folds", "2", "data.seq_len=40",
                               "-q").output, "out-of-fold score")
    assert line.endswith(" over 2 folds of first 40 steps of train.parquet"), line
