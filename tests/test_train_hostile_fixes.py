"""Numerically hostile training data (review r275): extreme but finite targets are named before
training and in the divergence that follows, a diverged run's advice fits its settings, and a
constant training target is warned of like a constant validation one."""

import json

import polars as pl

from tests.cli import run_cli
from tests.test_train import env, workspace  # noqa: F401 (fixtures)


def _with_target(root, tmp_path, values: dict[int, float], name: str) -> str:
    """The path of root's train file written with t0 = value at each row index."""
    frame = pl.read_parquet(root / "data" / "train.parquet").with_row_index("row")
    t0 = pl.col("t0")
    for row, value in values.items():
        t0 = pl.when(pl.col("row") == row).then(value).otherwise(t0)
    path = tmp_path / name
    frame.with_columns(t0.cast(frame.schema["t0"]).alias("t0")).drop("row").write_parquet(path)
    return str(path)


def _scored_rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("need_prediction"))


def test_an_extreme_training_target_is_named_before_training_and_when_it_diverges(env, tmp_path):  # noqa: F811
    """One t0 of 1e30 on one scored row: training diverged with no word of that row, advice to
    "set" the grad_clip already set, and a note whose normaliser.targets diverged again."""
    frame = pl.read_parquet(env / "data" / "train.parquet").with_row_index("row")
    target = _scored_rows(frame).row(40, named=True)
    below = _scored_rows(frame).row(80, named=True)["row"]  # a negative one counts too
    path = _with_target(env, tmp_path, {target["row"]: 1e30, below: -1e30}, "big.parquet")
    run = tmp_path / "runs" / "tiny" / "big-run"
    out = run_cli("train", "exp=tiny", f"data.train={path}", "--run-dir", run, "-q",
                  expect=2).output
    # the tiny experiment's wmse weighs each square by |target|: the bound is of cubes
    named = (f"t0 on 2 scored row(s) beyond +-7e+10, first t0 = 1e+30 in sequence "
             f"{target['seq_ix']}, step {target['step_in_seq']} (row {target['row']:,} of {path})")
    assert (f"warning: the training targets hold values the float32 loss overflows on: {named}; "
            "the loss raises each to the power 3") in out
    assert ("before any epoch scored, so there is no best.pt. The training targets hold values "
            f"the float32 loss overflows on: {named}; fix or rescale those values") in out
    assert "normaliser.targets does not help" in out and "train.lr" not in out
    assert "set normaliser.targets = true" not in out  # the far-from-standard note's advice
    assert json.loads((run / "metrics.json").read_text())["diverged"].startswith("train loss")
    # the note's advice trains in the targets' units too: the data is named again
    out = run_cli("train", "exp=tiny", f"data.train={path}", "normaliser.targets=true", "-q",
                  expect=2).output
    assert f"The training targets hold values the float32 loss overflows on: {named};" in out


def test_large_but_safe_and_unscored_extreme_targets_train_without_a_warning(env, tmp_path):  # noqa: F811
    frame = pl.read_parquet(env / "data" / "train.parquet").with_row_index("row")
    scored = _scored_rows(frame)["row"][0]
    unscored = frame.filter(~pl.col("need_prediction"))["row"][0]  # (a warm-up row: no loss)
    path = _with_target(env, tmp_path, {scored: 1e6, unscored: 1e30}, "safe.parquet")
    out = run_cli("train", "exp=tiny", f"data.train={path}", "train.epochs=1", "-q").output
    assert "overflows" not in out and "finished" in out
    # squares alone (mse, no |target| weight) are safe far past wmse's cubes: 1e12 too
    path = _with_target(env, tmp_path, {scored: 1e12}, "mse.parquet")
    out = run_cli("train", "exp=tiny", f"data.train={path}", "train.epochs=1",
                  "loss.terms={mse=1.0}", "-q").output
    assert "overflows" not in out and "finished" in out
    # huber grows linearly past its delta: 1e17 trains (it warned "the power 2", r278)
    path = _with_target(env, tmp_path, {scored: 1e17}, "huber.parquet")
    out = run_cli("train", "exp=tiny", f"data.train={path}", "train.epochs=1",
                  "loss.terms={huber=1.0}", "-q").output
    assert "overflows" not in out and "finished" in out


def test_the_divergence_advice_lowers_a_set_grad_clip_and_sets_one_that_is_off(env, tmp_path):  # noqa: F811
    """"set train.grad_clip (now 1.0)" advised setting what was set."""
    out = run_cli("train", "exp=tiny", "train.lr=1e30", "train.epochs=1", "-q",
                  expect=2).output
    assert "no best.pt. Lower train.lr (now 1e+30), lower train.grad_clip (now 1.0), or " in out
    out = run_cli("train", "exp=tiny", "train.lr=1e30", "train.grad_clip=0", "train.epochs=1",
                  "-q", expect=2).output
    assert "set train.grad_clip (now 0: off; e.g. 1.0), or look for extreme values" in out
    assert "overflows" not in out


def test_a_constant_training_target_is_warned_of_like_a_validation_one(env, tmp_path):  # noqa: F811
    """t0 = 0.5 on every training row trained silently; on the validation file it warned."""
    frame = pl.read_parquet(env / "data" / "train.parquet")
    frame.with_columns(t1=pl.lit(1.5)).write_parquet(tmp_path / "flat.parquet")
    out = run_cli("train", "exp=tiny", f"data.train={tmp_path / 'flat.parquet'}",
                  "train.epochs=1", "-q").output
    scored = frame["need_prediction"].sum()
    assert (f"warning: the training truth of t1 is constant on its {scored:,} scored rows: a "
            "model learns nothing from it but that constant (check the train file or split)"
            ) in out
    assert "t0 is constant" not in out and "validation truth" not in out
