"""Greedy ensemble selection, ensemble files, `kit pack --ensemble` and parity on ensembles."""

import json
import math
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import kit.ensemble as ensemble_module
from kit.competition import load_spec, spec_from_dict
from kit.ensemble import (
    SCALE_GRID,
    Candidate,
    EnsembleError,
    Moments,
    check_same_rows,
    ensemble_document,
    format_selection,
    greedy,
    load_candidate,
    read_ensemble,
    select,
    select_ensemble,
    smooth,
    tune_postprocess,
    weights_edited,
    write_ensemble,
)
from kit.errors import KitError
from kit.export.ensemble import Ensemble, PostProcess, Weighted, postprocess_numpy
from kit.export.frozen import load_member, stream_steps
from kit.export.pack import PackError, pack_ensemble, pack_run
from kit.metrics import evaluate, metric_value
from kit.parity import run_parity
from tests.cli import run_cli

SPEC = load_spec("predictorium")
SEQS = 4


def _candidates(preds: list[np.ndarray], spec=SPEC) -> list[Candidate]:
    rows = np.arange(len(preds[0]))
    return [Candidate(f"c{i}", Path(f"c{i}"), [], p.astype(np.float32), rows, Path("x"), spec)
            for i, p in enumerate(preds)]


def test_selection_finds_the_known_best_mixture():
    rng = np.random.default_rng(0)
    n = 60_000
    truth = rng.standard_normal((n, 2))
    # two equally good, independent views of the truth: the best blend is half and half; a
    # candidate of pure noise must not be picked
    a = truth + rng.standard_normal((n, 2))
    b = truth + rng.standard_normal((n, 2))
    noise = rng.standard_normal((n, 2))
    sel = select(_candidates([a, b, noise]), truth, iters=40)
    weights = sel.weights  # (C, K)
    assert weights[2].max() == 0.0
    np.testing.assert_allclose(weights[0], 0.5, atol=0.1)
    np.testing.assert_allclose(weights[0] + weights[1], 1.0)
    best_single = max(s["score"] for s in sel.singles)
    assert sel.score > best_single + 0.05
    # the reported score is the exact metric of the reported weights
    stacked = np.stack([a, b, noise], 1).astype(np.float32)  # candidates hold float32
    blend = np.einsum("nck,ck->nk", stacked, weights)
    assert sel.score == pytest.approx(evaluate(SPEC, truth, blend).score, abs=1e-9)


@pytest.mark.parametrize("order", [0, 1])
def test_select_refuses_a_candidate_with_a_nan_in_either_order(order):
    # argmax takes a NaN score for the best: the NaN candidate won with weight 1 and a NaN score
    rng = np.random.default_rng(2)
    truth = rng.standard_normal((2_000, 2))
    good = truth + rng.standard_normal((2_000, 2))
    bad = good.copy()
    bad[5, 0] = np.nan
    candidates = _candidates([bad, good] if order == 0 else [good, bad])
    with pytest.raises(EnsembleError, match=f"c{order}: 1 validation predictions are NaN"):
        select(candidates, truth, iters=5)


def test_per_target_weights_follow_each_target():
    rng = np.random.default_rng(1)
    n = 40_000
    truth = rng.standard_normal((n, 2))
    good_t0 = np.column_stack([truth[:, 0] + 0.5 * rng.standard_normal(n), rng.standard_normal(n)])
    good_t1 = np.column_stack([rng.standard_normal(n), truth[:, 1] + 0.5 * rng.standard_normal(n)])
    sel = select(_candidates([good_t0, good_t1]), truth, iters=10, per_target=True)
    w = sel.weights
    assert w[0, 0] > 0.9 and w[1, 1] > 0.9
    joint = select(_candidates([good_t0, good_t1]), truth, iters=10)
    assert sel.score > joint.score


def test_per_target_selection_records_each_targets_curve_and_cut():
    rng = np.random.default_rng(7)
    truth = rng.standard_normal((20_000, 2))
    cands = _candidates([truth + s * rng.standard_normal((20_000, 2)) for s in (1.0, 1.5, 4.0)])
    sel = select(cands, truth, iters=12, per_target=True)
    curves = sel.extra["trajectory_per_target"]
    cuts = sel.extra["best_iteration_per_target"]
    assert list(curves) == list(cuts) == ["t0", "t1"]
    for target in ("t0", "t1"):  # the ensemble scores each target at that target's own cut
        assert sel.per_target[target] == pytest.approx(curves[target][cuts[target] - 1],
                                                       abs=1e-9)
        assert curves[target][cuts[target] - 1] == max(curves[target])
    text = format_selection(ensemble_document(sel, cands, iters=12, init_best=0))
    assert f"best t0 at iteration {cuts['t0']}, t1 at iteration {cuts['t1']} of 12" in text
    assert "best single (c0) " in text  # the whole name, columns aligned
    assert len({len(line) for line in text.splitlines()[:4]}) == 1
    assert "trajectory_per_target" not in select(cands, truth, iters=3).extra


def test_init_best_starts_from_the_best_candidates_and_the_cut_keeps_the_best_point():
    rng = np.random.default_rng(2)
    truth = rng.standard_normal((20_000, 2))
    cands = [truth + s * rng.standard_normal((20_000, 2)) for s in (0.5, 3.0, 6.0)]
    sel = select(_candidates(cands), truth, iters=5, init_best=2)
    # starting with the two best, the noisy second one stays in (the cut keeps the initial
    # members) and the best point from there on is kept
    assert sel.counts[:, 1].min() >= 1
    assert sel.score == pytest.approx(max(sel.trajectory[1:]), abs=1e-12)
    free = select(_candidates(cands), truth, iters=5)
    assert free.counts[:, 1].max() == 0 and free.score > sel.score


@pytest.mark.parametrize("metric, clip", [("weighted_pearson", None), ("r2", None),
                                          ("rmse", None), ("weighted_pearson", [-2.0, 1.5])])
def test_moment_scores_equal_the_exact_metric(metric, clip):
    """Clip [-2, 1.5]: 46% of the rows have a candidate outside it (16% of the values)."""
    table = {"name": metric} | ({"clip": clip} if clip else {})
    spec = spec_from_dict({**SPEC.to_dict(), "metric": table}, "<test>")
    assert spec.metric.clip == (tuple(clip) if clip else None)
    rng = np.random.default_rng(3)
    truth = rng.standard_t(4, (5000, 2))
    preds = np.stack([truth * rng.random() + rng.standard_normal((5000, 2)) for _ in range(4)],
                     axis=1)
    moments = Moments(truth, preds, metric, spec.metric.clip)
    counts = np.array([2.0, 0.0, 1.0, 3.0])
    for t in range(2):
        fast = moments.scores(t, counts)
        for j in range(4):
            c = counts.copy()
            c[j] += 1
            exact = metric_value(spec, truth[:, t], np.einsum("nc,c->n", preds[:, :, t], c)
                                 / c.sum())
            assert (-fast[j] if metric == "rmse" else fast[j]) == pytest.approx(exact, abs=1e-9)


def test_predictions_beyond_the_clip_are_picked_by_the_exact_metric():
    """Candidate a is the best once the metric clips its rare wild values at +-6; the moment
    moments of the unclipped blend rank it below b. With the clip's corrections on the rows
    that leave its range, the moment scores are exact, so the picks are exact greedy's."""
    rng = np.random.default_rng(8)
    truth = rng.standard_normal((3000, 2))
    a = truth + 0.2 * rng.standard_normal((3000, 2))
    wild = rng.random((3000, 2)) < 0.002
    a[wild] = 20.0 * np.sign(rng.standard_normal(wild.sum()))
    b = truth + 0.6 * rng.standard_normal((3000, 2))
    c = truth + 0.7 * rng.standard_normal((3000, 2))
    preds = np.stack([a, b, c], axis=1).astype(np.float32)
    unclipped = Moments(truth, preds, SPEC.metric.name)
    assert np.argmax(sum(unclipped.scores(t, np.zeros(3)) for t in (0, 1))) == 1  # the trap
    exact_history, _ = greedy(None, SPEC, truth, preds, [0, 1], 6, [])
    sel = select(_candidates([a, b, c]), truth, iters=6)
    assert exact_history[0].tolist() == [1, 0, 0]  # a first
    np.testing.assert_array_equal(sel.counts[0], exact_history[sel.best_iteration - 1])


def test_wild_predictions_far_beyond_the_clip_are_scored_exactly():
    """Predictions of 1e10 under a clip of 6: the moments' clip corrections would cancel
    squares of 1e20 and lose every digit of the score, so selection scores exactly."""
    rng = np.random.default_rng(8)
    truth = rng.standard_normal((3000, 2))
    a = truth + 0.2 * rng.standard_normal((3000, 2))
    wild = rng.random((3000, 2)) < 0.002
    a[wild] = 1e10 * np.sign(rng.standard_normal(wild.sum()))
    preds = [a] + [truth + s * rng.standard_normal((3000, 2)) for s in (0.25, 0.3, 0.6)]
    stacked = np.stack(preds, axis=1).astype(np.float32)
    exact_history, exact_scores = greedy(None, SPEC, truth, stacked, [0, 1], 8, [])
    sel = select(_candidates(preds), truth, iters=8)
    np.testing.assert_array_equal(sel.counts[0], exact_history[sel.best_iteration - 1])
    assert sel.score == pytest.approx(max(exact_scores))


def test_runs_cut_to_other_lengths_are_refused_naming_the_setting(runs, tmp_path,
                                                                   monkeypatch, workspace):
    """Two runs on the same valid file, one cut to its first 40 steps (data.seq_len): the
    refusal spoke of the valid file and the split only, which were the same."""
    from kit.train.recipe import train_experiment

    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    cut = Path(train_experiment("gru", ["data.seq_len=40", "train.epochs=1"], progress=False,
                                runs_dir=tmp_path)[0]["run_dir"])
    out = run_cli("ensemble", "select", runs["gru"], cut, "--out", tmp_path / "e.toml",
                  expect=2).output
    assert "do not cover the same rows" in out
    assert "they differ in data.seq_len (0, 40)" in out or "data.seq_len (40, 0)" in out, out


def test_candidates_on_different_rows_are_refused():
    rng = np.random.default_rng(4)
    cands = _candidates([rng.standard_normal((100, 2)), rng.standard_normal((100, 2))])
    cands[1].rows = cands[1].rows + 1
    with pytest.raises(EnsembleError, match="do not cover the same rows"):
        check_same_rows(cands)
    cands[1].rows, cands[1].data = cands[0].rows, Path("other.parquet")
    with pytest.raises(EnsembleError, match="predicts 100 rows of other.parquet"):
        check_same_rows(cands)
    # every set is named with all who predict it (the first pair only was named: a folder of
    # fold groups, split runs and valid-file runs named one of them)
    more = _candidates([rng.standard_normal((100, 2)) for _ in range(4)])
    more[2].data = more[3].data = Path("other.parquet")
    more[3].rows = more[3].rows[:50]
    names = [c.name for c in more]
    with pytest.raises(EnsembleError, match=re.escape(
            f"3 sets of rows: {names[0]}, {names[1]} predict 100 rows of {more[0].data}; "
            f"{names[2]} predicts 100 rows of other.parquet; {names[3]} predicts 50 rows of "
            "other.parquet.")):
        check_same_rows(more)
    # same rows and columns, another metric (a spec's clip edited between runs): the blends
    # are scored on the first's, with a warning
    cands[1].data = cands[0].data
    cands[1].spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "mae"}}, "<test>")
    with pytest.warns(RuntimeWarning, match=r"c1 trained under another metric than c0 "
                      rf"\({SPEC.metric.name}, clip ±6\)"):  # (worded as kit runs words it)
        check_same_rows(cands)
    # another spec's name: refused (kit pack serves one spec), whatever the columns
    cands[1].spec = spec_from_dict({**SPEC.to_dict(), "name": "mae-too"}, "<test>")
    with pytest.raises(EnsembleError, match="c1 was trained for spec 'mae-too', c0 for"):
        check_same_rows(cands)
    # one spec name, the targets reordered (a spec file edited between the runs)
    cands[1].spec = spec_from_dict({**SPEC.to_dict(), "targets": ["t1", "t0"]}, "<test>")
    with pytest.raises(EnsembleError, match=r"c1 has outputs \['t1', 't0'\], c0 \['t0', 't1'\]"):
        check_same_rows(cands)
    # another warm-up (or tail): the package took the first listed run's, so its smoothing
    # start and the scorer's need rule followed the order of the command's arguments
    for key, value in (("warmup", SPEC.warmup - 1), ("tail", SPEC.tail + 1)):
        cands[1].spec = spec_from_dict({**SPEC.to_dict(), key: value}, "<test>")
        with pytest.raises(EnsembleError, match=f"c1 has {key} {value}, c0 "):
            check_same_rows(cands)
    cands[1].spec = spec_from_dict({**SPEC.to_dict(), "description": "reworded",
                                    "limits": {**SPEC.to_dict()["limits"], "cpus": 2}}, "<test>")
    check_same_rows(cands)  # words and limits are free


def _slow_sequences(rng, n_seq: int, length: int) -> np.ndarray:
    """(n_seq, length) AR(1) paths, phi 0.97: a slow truth that smoothing can find in noise."""
    slow = np.zeros((n_seq, length))
    for t in range(1, length):
        slow[:, t] = 0.97 * slow[:, t - 1] + rng.standard_normal(n_seq)
    return slow


def test_postprocess_tuning_finds_the_smoothing_and_the_scale_that_help():
    """Target 0: a slow truth seen through white noise (smoothing must help); target 1: white
    noise predicted at half its size (R² wants scale 2 and no smoothing)."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "r2"}}, "<test>")
    rng = np.random.default_rng(9)
    n_seq, length = 20, 100
    slow = _slow_sequences(rng, n_seq, length)
    truth = np.column_stack([slow.reshape(-1) / slow.std(), rng.standard_normal(n_seq * length)])
    blend = np.column_stack([truth[:, 0] + rng.standard_normal(n_seq * length),
                             0.5 * truth[:, 1]])
    starts = np.arange(0, n_seq * length, length)
    tuned = tune_postprocess(spec, truth, blend, starts)
    assert tuned["smoothing"][0] > 0.0 and tuned["smoothing"][1] == 0.0
    assert tuned["scale"][1] == 2.0
    assert tuned["after"]["t0"] > tuned["before"]["t0"] + 0.05
    assert tuned["after"]["t1"] == pytest.approx(1.0) and tuned["before"]["t1"] < 0.8
    # what was tuned is what the recursion computes
    smoothed = smooth(blend[:, 0], starts, tuned["smoothing"][0]) * tuned["scale"][0]
    assert metric_value(spec, truth[:, 0], smoothed) == pytest.approx(tuned["after"]["t0"])


def test_the_scale_is_tuned_on_the_smoothed_blend():
    """A slow truth seen at half its size through white noise: smoothing removes the noise,
    and the smoothed blend then wants a scale above 1 (the unsmoothed one wants none). The
    scale was once tuned on the unsmoothed blend: it kept 1 and left the gain unused."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "r2"}}, "<test>")
    rng = np.random.default_rng(9)
    n_seq, length = 20, 100
    slow = _slow_sequences(rng, n_seq, length)
    truth = np.repeat(slow.reshape(-1, 1) / slow.std(), 2, axis=1)
    blend = 0.5 * truth + 0.5 * rng.standard_normal(truth.shape)
    starts = np.arange(0, n_seq * length, length)
    assert max(SCALE_GRID, key=lambda c: metric_value(spec, truth[:, 0], c * blend[:, 0])) == 1.0
    tuned = tune_postprocess(spec, truth, blend, starts)
    for t, name in enumerate(spec.outputs):
        assert tuned["smoothing"][t] > 0.0 and tuned["scale"][t] > 1.0
        done = smooth(blend[:, t], starts, tuned["smoothing"][t]) * tuned["scale"][t]
        assert tuned["after"][name] == pytest.approx(metric_value(spec, truth[:, t], done))
        unscaled = metric_value(spec, truth[:, t], done / tuned["scale"][t])
        assert tuned["after"][name] > unscaled + 0.05


@pytest.mark.parametrize("metric", [{"name": "mae"}, {"name": "rmse", "clip": [-3.0, 3.0]}],
                         ids=["mae", "clipped-rmse"])
def test_error_metrics_select_and_tune_toward_the_smaller_error(metric, monkeypatch):
    """Lower is better: selection scored exactly (mae, a clipped rmse) and the post-processing
    tuning must minimise; without the metric's sign they picked the worst candidate and the
    scale that makes the error worst, and no test ran them on such a metric."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": metric}, "<test>")
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((4_000, 2))
    good = truth + 0.3 * rng.standard_normal((4_000, 2))
    bad = truth + 2.0 * rng.standard_normal((4_000, 2))
    sel = select(_candidates([bad, good], spec), truth, iters=5)
    assert sel.weights[1].min() == 1.0 and sel.weights[0].max() == 0.0
    assert sel.score == pytest.approx(min(s["score"] for s in sel.singles))
    # --init-best starts from the best (lowest) candidates, and the file names the best single
    started = select(_candidates([bad, good], spec), truth, iters=1, init_best=1)
    assert started.counts[:, 1].tolist() == [1, 1] and not started.counts[:, 0].any()
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")  # no run here
    doc = ensemble_document(sel, _candidates([bad, good], spec), iters=5, init_best=0)
    assert doc["ensemble"]["best_single"]["name"] == "c1"
    assert {v["name"] for v in doc["ensemble"]["best_single_per_target"].values()} == {"c1"}
    # half the size of the good candidate: the scale to tune is 2, and the error left after
    # it is not 0 (the recorded score is the error itself, not the tuning's negated one)
    blend = 0.5 * good
    tuned = tune_postprocess(spec, truth, blend, np.array([0]))
    assert tuned["scale"] == [2.0, 2.0]
    assert all(tuned["after"][t] < tuned["before"][t] - 0.1 for t in spec.outputs)
    for t, name in enumerate(spec.outputs):
        done = smooth(blend[:, t], np.array([0]), tuned["smoothing"][t]) * tuned["scale"][t]
        assert tuned["after"][name] > 0.1
        assert tuned["after"][name] == pytest.approx(metric_value(spec, truth[:, t], done))


@pytest.mark.parametrize("warmup", [0, 3])
def test_smoothing_matches_the_graph_recursion(warmup):
    """The tuning smooths the scored rows (steps >= warmup) of each sequence; the graph starts
    its recursion at step `warmup` and passes the warm-up steps through: the same numbers."""
    rng = np.random.default_rng(5)
    grid = rng.standard_normal((3, 7, 2))
    alpha, scale = [0.6, 0.0], [1.5, 0.5]
    scored = grid[:, warmup:].reshape(-1, 2)
    starts = np.arange(0, len(scored), 7 - warmup)
    by_rows = np.column_stack([smooth(scored[:, t], starts, alpha[t]) for t in range(2)])
    want = postprocess_numpy(grid, alpha, scale, warmup)
    np.testing.assert_allclose(by_rows.reshape(3, 7 - warmup, 2) * scale, want[:, warmup:],
                               atol=1e-12)
    np.testing.assert_allclose(want[:, :warmup], grid[:, :warmup] * scale, atol=1e-12)
    import torch

    module = PostProcess(alpha, scale, start=warmup)
    steps = stream_steps(module, torch.tensor(grid, dtype=torch.float32)).numpy()
    whole, _ = module(torch.tensor(grid, dtype=torch.float32), module.init_state(3))
    np.testing.assert_allclose(steps, want, atol=1e-5)
    np.testing.assert_allclose(whole.numpy(), steps, atol=1e-6)


def test_select_tunes_the_smoothing_restarted_at_each_sequence(tmp_path, monkeypatch):
    """Warm-up 0 and tail 0: one sequence's last scored row and the next one's first are
    consecutive rows, and only the sequence ids tell them apart. The package restarts its
    smoothing at every sequence; so must the tuning, or it smooths one sequence's level into
    the next and picks (and records the score of) a smoothing the package does not run."""
    import polars as pl

    spec = spec_from_dict({**SPEC.to_dict(), "warmup": 0, "seq_len": 20,
                           "metric": {"name": "r2"}}, "<test>")
    assert spec.warmup == spec.tail == 0
    rng = np.random.default_rng(4)
    n_seq, length = 60, 20
    level = rng.standard_normal((n_seq, 1, 2))  # each sequence its own level
    truth = (level + 0.3 * rng.standard_normal((n_seq, length, 2))).reshape(-1, 2)
    blend = (truth + rng.standard_normal(truth.shape)).astype(np.float32)
    ids = np.repeat(np.arange(n_seq), length)
    valid = tmp_path / "valid.parquet"
    pl.DataFrame({spec.id_col: ids, spec.step_col: np.tile(np.arange(length), n_seq),
                  "t0": truth[:, 0], "t1": truth[:, 1]}).write_parquet(valid)
    only = Candidate("c0", tmp_path / "c0", [], blend, np.arange(len(ids)), valid, spec)
    monkeypatch.setattr(ensemble_module, "expand_candidates", lambda paths: list(paths))
    monkeypatch.setattr(ensemble_module, "load_candidate", lambda path: only)
    doc, _, _ = select_ensemble([only.path], iters=1, out=tmp_path / "e.toml", postprocess=True)
    post = doc["postprocess"]
    restarted = tune_postprocess(spec, truth, blend, np.arange(0, len(ids), length))
    assert post["smoothing"] == restarted["smoothing"] and post["scale"] == restarted["scale"]
    # the recorded score is what the package's post-processing gives on these sequences
    packaged = postprocess_numpy(blend.reshape(n_seq, length, 2), post["smoothing"],
                                 post["scale"], spec.warmup).reshape(-1, 2)
    for t, name in enumerate(spec.outputs):
        assert post["smoothing"][t] > 0.0
        assert post["after"][name] == pytest.approx(metric_value(spec, truth[:, t],
                                                                 packaged[:, t]))


# --- on trained runs -------------------------------------------------------------------------


def _valid(workspace) -> Path:
    return workspace / "data/valid.parquet"


def test_an_ensemble_file_whose_name_is_no_package_name_says_so(runs, tmp_path):
    """The package name comes from the file's name: the error blamed a --name never given."""
    import shutil

    from kit.export.pack import PackError

    _, path, _ = select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=tmp_path / "e.toml")
    for odd in (".l2.toml", "final.zip.toml"):
        copy = shutil.copy(path, tmp_path / odd)
        with pytest.raises(PackError, match=r"the package name '[^']+' \(from its file name; "
                                            r"give --name\)"):
            pack_ensemble(copy, None, tmp_path / "subs")


def test_select_on_runs_writes_a_file_that_packs_and_passes_parity(workspace, runs, tmp_path):
    doc, path, table = select_ensemble([runs[n] for n in ("gru", "gru_b", "lstm", "tcn")],
                                       iters=8, out=tmp_path / "ens.toml", postprocess=True)
    assert "ensemble" in table and "best single" in table and "uniform mean" in table
    again = read_ensemble(path)
    assert again["ensemble"]["candidates"] == 4 and again["members"]
    weights = np.array([m["weights"] for m in again["members"]])
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    assert len(again["postprocess"]["smoothing"]) == 2
    packed = pack_ensemble(path, "ens", tmp_path / "subs")
    report = run_parity(packed.folder, _valid(workspace), seqs=SEQS)
    assert report.ok, report.format()
    manifest = json.loads((packed.folder / "manifest.json").read_text())
    assert manifest["ensemble"]["file"] == str(path)
    assert manifest["time_budget"]["fraction"] < 0.8
    from kit.scoring import score_submission

    # the table's headline after post-processing is what kit score gives the package
    [line] = [ln for ln in table.splitlines() if ln.startswith("ensemble + post-processing")]
    spec = load_candidate(Path(doc["members"][0]["path"])).spec
    scored = score_submission(packed.zip_path, _valid(workspace), spec, progress=False).report
    shown = [float(v) for v in line.split()[-3:]]
    assert shown == pytest.approx([scored.score, scored.per_target["t0"],
                                   scored.per_target["t1"]], abs=1e-4)
    assert manifest["ensemble"]["postprocess_edited"] == []
    # smoothing edited by hand: named as such, the tuned scores no longer passed off as these
    edited = read_ensemble(path)
    edited["postprocess"]["smoothing"][1] = 0.5 if edited["postprocess"]["smoothing"][1] != 0.5 \
        else 0.2
    said = format_selection(edited)
    assert "post-processing t1: smoothing" in said and "edited by hand after tuning" in said
    assert "ensemble + post-processing" not in said
    hand = pack_ensemble(write_ensemble(edited, tmp_path / "edited.toml"), "hand",
                         tmp_path / "subs")
    assert hand.manifest["ensemble"]["postprocess_edited"] == ["t1"]
    # with smoothing on, the package scores what the tuning's recursion computes on the scored
    # rows (the graph starts it at the first scored step, after the warm-up)
    from kit.reports import ValidFile

    doc["postprocess"] = {"smoothing": [0.5, 0.3], "scale": [1.0, 1.0]}
    smoothed = pack_ensemble(write_ensemble(doc, tmp_path / "smooth.toml"), "smooth",
                             tmp_path / "subs")
    members = [(load_candidate(Path(m["path"])), m["weights"]) for m in doc["members"]]
    rows = members[0][0].rows
    blend = sum(c.preds.astype(np.float64) * np.asarray(w) for c, w in members)
    valid = ValidFile(_valid(workspace), members[0][0].spec)
    ids = valid.ids[rows]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    truth = valid.truth(rows)
    scored = score_submission(smoothed.zip_path, _valid(workspace), members[0][0].spec,
                              progress=False)
    for t, (name, alpha) in enumerate(zip(("t0", "t1"), (0.5, 0.3), strict=True)):
        want = metric_value(valid.spec, truth[:, t], smooth(blend[:, t], starts, alpha))
        assert scored.report.per_target[name] == pytest.approx(want, abs=1e-4)


def _write(path: Path, members: list[dict], postprocess: dict | None = None) -> Path:
    doc = {"members": members} | ({"postprocess": postprocess} if postprocess else {})
    path.write_text(tomli_w.dumps(doc))
    return path


def test_stacked_rnns_zero_weights_and_postprocessing_pass_parity(workspace, runs, tmp_path):
    path = _write(tmp_path / "e.toml", [
        {"name": "a", "runs": [str(runs["gru"])], "weights": [0.5, 0.1]},
        {"name": "b", "runs": [str(runs["gru_b"])], "weights": [0.2, 0.3]},
        {"name": "c", "runs": [str(runs["ssm"])], "weights": [0.0, 0.2]},
        {"name": "d", "runs": [str(runs["lstm"])], "weights": [0.2, 0.2]},
        {"name": "e", "runs": [str(runs["lstm_b"])], "weights": [0.1, 0.2]},
        {"name": "z", "runs": [str(runs["transformer"])], "weights": [0.0, 0.0]},
    ], {"smoothing": [0.5, 0.0], "scale": [1.0, 2.0]})
    packed = pack_ensemble(path, "stacked", tmp_path / "subs")
    members = packed.manifest["members"]
    assert [m["model"]["type"] for m in members] == ["gru", "gru", "ssm", "lstm", "lstm"]
    # the two GRUs run as one stacked module, the two LSTMs as another: one state [M = 2, B, 1, H]
    # per layer (GRU: 2 layers, h; LSTM: 1 layer, h and c)
    stacked = [s for s in packed.manifest["states"] if s["shape"][0] == 2]
    assert len(stacked) == 4 and all(s["batch_axis"] == 1 for s in stacked)
    report = run_parity(packed.folder, _valid(workspace), seqs=SEQS)
    assert report.ok, report.format()
    unstacked = pack_ensemble(path, "unstacked", tmp_path / "subs", stack=False)
    assert not any(s["shape"][0] == 2 for s in unstacked.manifest["states"])
    assert run_parity(unstacked.folder, _valid(workspace), seqs=SEQS).ok


def test_members_with_their_own_features_and_normalisers_pass_parity(workspace, runs, tmp_path,
                                                                    monkeypatch):
    """Four GRUs: the shared fixture's (raw, diffs, ewm: 128 features, standard normaliser);
    the same features with a robust normaliser (one pipeline, two normalisers); other features
    of the same width (raw, lags, rolling: their own pipeline); these three stack, each on its
    own input. A fourth on 64 features (raw, lags) runs alone."""
    from kit.train.recipe import train_experiment

    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    members = [("base", runs["gru"], [0.4, 0.2])]
    for name, overrides, weights in (
            ("robust", ["normaliser.method=robust"], [0.3, 0.3]),
            ("rolling", ['features.groups=["raw", "lags", "rolling"]'], [0.2, 0.1]),
            ("lags", ['features.groups=["raw", "lags"]'], [0.1, 0.4])):
        result = train_experiment("gru", overrides, progress=False, runs_dir=tmp_path / name)
        members.append((name, Path(result[0]["run_dir"]), weights))
    module = Ensemble([Weighted(load_member(run), w) for _, run, w in members])
    assert len(module.pipelines) == 3 and len(module.normalisers) == 4
    assert [type(m).__name__ for m in module.models] == ["StackedRNN", "WeightedModel"]
    assert module.models[0].m == 3 and not module.models[0].shared_input
    assert list(module.stacked_norms) == ["0"]  # its three normalisers run as one module
    path = _write(tmp_path / "e.toml", [{"name": name, "runs": [str(run)], "weights": w}
                                        for name, run, w in members])
    packed = pack_ensemble(path, "mixed", tmp_path / "subs")
    groups = [m["config"]["features"]["groups"] for m in packed.manifest["members"]]
    assert groups == [["raw", "diffs", "ewm"]] * 2 + [["raw", "lags", "rolling"], ["raw", "lags"]]
    report = run_parity(packed.folder, _valid(workspace), seqs=SEQS)
    assert report.ok, report.format()


def test_an_ensemble_of_raw_members_leaves_the_guard_clip_to_their_normalisers(workspace,
                                                                              tmp_path):
    """Raw members whose normalisers all clip within the guard's +-1e16 share one guard
    without its clip (a node fewer); the stack still equals its members on rows past 1e16 and
    the non-finite rows filled with them. One member whose normaliser does not clip keeps the
    shared guard's clip."""
    import onnx
    import torch

    from kit.features.normaliser import Normaliser
    from tests.conftest import hostile_rows, raw_gru_run

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    members = [load_member(raw_gru_run(tmp_path / f"run{seed}", spec, seed=seed))
               for seed in (0, 1)]
    weights = [[0.25, 0.6], [0.75, 0.4]]
    module = Ensemble([Weighted(m, w) for m, w in zip(members, weights, strict=True)]).eval()
    assert len(module.pipelines) == 1 and module.pipelines[0].guard.clip is False
    x = torch.from_numpy(hostile_rows(len(spec.features)).astype(np.float32))[None]
    clipped = []
    for m in members:  # each member's chain with the clip put back
        chain = m.stream_module()
        chain.stages[0].guard.clip = True
        clipped.append(chain)
    with torch.no_grad():
        want = sum(torch.tensor(w) * stream_steps(c, x)
                   for c, w in zip(clipped, weights, strict=True))
        np.testing.assert_allclose(stream_steps(module, x).numpy(), want.numpy(), atol=1e-5)
    path = _write(tmp_path / "e.toml", [{"name": f"m{i}", "runs": [str(m.run_dir)],
                                         "weights": w}
                                        for i, (m, w) in enumerate(zip(members, weights,
                                                                       strict=True))])
    packed = pack_ensemble(path, "raw", tmp_path / "subs")
    ops = [n.op_type for n in onnx.load(str(packed.folder / "model.onnx")).graph.node]
    assert ops.count("Clip") == 1  # the stacked normalisers' one clip
    assert run_parity(packed.folder, _valid(workspace), seqs=SEQS).ok

    unclipping = Normaliser("standard", None, members[1].normaliser.center,
                            members[1].normaliser.scale)
    third = load_member(raw_gru_run(tmp_path / "run2", spec, normaliser=unclipping, seed=2))
    mixed = Ensemble([Weighted(m, [1.0, 1.0]) for m in [*members, third]])
    assert len(mixed.pipelines) == 1 and mixed.pipelines[0].guard.clip is True


@pytest.mark.parametrize("kind, scaled", [("gru", False), ("lstm", False), ("gru", True)])
def test_stacked_module_equals_its_members(runs, kind, scaled):
    import torch

    members = [load_member(runs[kind]), load_member(runs[f"{kind}_b"])]
    if scaled:  # normaliser.targets: the stack folds a member's output scale into its head
        members[0].model.head.scale_outputs([130.0, -20.0], [7.0, 0.5])
    weights = [[0.25, 1.0], [0.75, -0.5]]
    entries = [Weighted(m, w) for m, w in zip(members, weights, strict=True)]
    stacked, plain = Ensemble(entries).eval(), Ensemble(entries, stack=False).eval()
    assert [type(m).__name__ for m in stacked.models] == ["StackedRNN"]
    x = torch.randn(3, 25, 32)
    with torch.no_grad():
        want = sum(torch.tensor(w) * stream_steps(m.stream_module(), x)
                   for m, w in zip(members, weights, strict=True))
        np.testing.assert_allclose(stream_steps(stacked, x).numpy(), want.numpy(), atol=1e-5)
        np.testing.assert_allclose(stream_steps(plain, x).numpy(), want.numpy(), atol=1e-5)


def assert_weighted_sum_of_members(module, entries, x, tmp_path) -> None:
    """The ensemble module and its exported step graph equal the weighted sum of its members'
    own stream modules, step by step over x (B, T, F)."""
    import torch

    from kit.export.step_graph import export_step_graph
    from tests.test_models import onnx_steps

    with torch.no_grad():
        want = sum(torch.tensor(e.weights) * stream_steps(e.member.stream_module(), x)
                   for e in entries)
        np.testing.assert_allclose(stream_steps(module, x).numpy(), want.numpy(), atol=1e-5)
    export_step_graph(module, 32, tmp_path / "e.onnx")
    zeros = [s.numpy() for s in module.init_state(x.shape[0])]
    got, _ = onnx_steps(tmp_path / "e.onnx", zeros, x.numpy().transpose(1, 0, 2))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.mark.parametrize("configs", [
    [{"layer_norm": True}, {"layer_norm": True}],
    [{"head": "highway"}, {"head": "highway"}],
    [{"head": "residual"}, {"head": "residual"}],
    [{"layers": 1}, {"layers": 2}],
], ids=["layer-norm", "highway-head", "residual-head", "1-and-2-layers"])
def test_grus_that_stacked_rnn_cannot_compute_run_on_their_own(workspace, tmp_path, configs):
    """StackedRNN computes plain GRUs of one shape: no LayerNorm, one linear head, one number
    of layers. Stacked, layer-normed GRUs lost their LayerNorm (outputs up to 0.95 off), other
    heads raised an AttributeError, and a 1-layer GRU took a 2-layer one's second layer for
    none. Such members run apart, and the ensemble is still the weighted sum of its members."""
    import dataclasses

    import torch

    from kit.models import build_model
    from tests.conftest import raw_gru_run

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    entries = []
    for seed, (extra, weights) in enumerate(zip(configs, [[0.25, 0.6], [0.75, 0.4]],
                                                strict=True)):
        member = load_member(raw_gru_run(tmp_path / f"run{seed}", spec, seed=seed))
        config = {"type": "gru", "hidden": 8, "layers": 2} | extra
        torch.manual_seed(seed)
        model = build_model(config, len(member.feature_set.outputs), spec.n_outputs).eval()
        member = dataclasses.replace(member, model=model, model_config=config)
        entries.append(Weighted(member, weights))
    module = Ensemble(entries).eval()
    assert [type(m).__name__ for m in module.models] == ["WeightedModel", "WeightedModel"]
    assert_weighted_sum_of_members(module, entries, torch.randn(3, 20, len(spec.features)),
                                   tmp_path)


@pytest.mark.parametrize("same_clip", [True, False])
def test_a_stack_on_its_own_normalisers_runs_them_as_one_module(runs, tmp_path, same_clip):
    """Two GRUs on the same features with different normalisers (as two folds have): one
    StackedAffineClip feeds the stack (separate normalisers and a stack when the clips
    differ), the ensemble equals its members, and so does its step graph at a batch that is
    not the number of members."""
    import dataclasses

    import torch

    from kit.features.normaliser import Normaliser

    a, b = load_member(runs["gru"]), load_member(runs["gru_b"])
    n = b.normaliser
    clip = n.clip if same_clip else None
    b = dataclasses.replace(b, normaliser=Normaliser(n.method, clip, n.center + 0.5,
                                                     n.scale * 2))
    entries = [Weighted(a, [0.6, 0.3]), Weighted(b, [0.4, 0.7])]
    module = Ensemble(entries).eval()
    assert n.clip is not None and type(module.models[0]).__name__ == "StackedRNN"
    assert len(module.normalisers) == 2
    assert list(module.stacked_norms) == (["0"] if same_clip else [])
    assert_weighted_sum_of_members(module, entries, torch.randn(3, 20, 32), tmp_path)


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "unstacked"])
def test_members_whose_normalisers_differ_only_in_the_clip_keep_their_own(runs, tmp_path,
                                                                         stack):
    """Normalisers were shared by (features, method, center, scale) without the clip: a member
    without a clip read the clipped input of one with a clip, and the ensemble was not the
    weighted sum of its members."""
    import dataclasses

    import torch

    from kit.features.normaliser import Normaliser

    a, b = load_member(runs["gru"]), load_member(runs["gru_b"])
    n = a.normaliser
    b = dataclasses.replace(b, normaliser=Normaliser(n.method, None, n.center, n.scale))
    assert n.clip is not None and a.feature_set.digest() == b.feature_set.digest()
    entries = [Weighted(a, [0.6, 0.3]), Weighted(b, [0.4, 0.7])]
    module = Ensemble(entries, stack=stack).eval()
    assert len(module.normalisers) == 2
    x = 20 * torch.randn(3, 20, 32)  # far beyond the clip: it changes b's input if applied
    with torch.no_grad():
        own = stream_steps(b.stream_module(), x)
        clipped = dataclasses.replace(b, normaliser=n)
        assert not torch.allclose(own, stream_steps(clipped.stream_module(), x), atol=1e-3)
    assert_weighted_sum_of_members(module, entries, x, tmp_path)


def test_a_scale_without_smoothing_is_in_the_graph(workspace, runs, tmp_path):
    """PostProcess took itself for the identity when any target's scale was 1, not all: a
    scale of [1, 2] without smoothing was left out of the graph (t1 at half the size chosen),
    and a single member at weight 1 was packed as the bare run."""
    import torch

    post = {"smoothing": [0.0, 0.0], "scale": [1.0, 2.0]}
    entries = [Weighted(load_member(runs["gru"]), [0.6, 0.3]),
               Weighted(load_member(runs["lstm"]), [0.4, 0.7])]
    module = Ensemble(entries, post).eval()
    x = torch.randn(3, 20, 32)
    with torch.no_grad():
        blend = sum(torch.tensor(e.weights) * stream_steps(e.member.stream_module(), x)
                    for e in entries)
        np.testing.assert_allclose(stream_steps(module, x).numpy(),
                                   (blend * torch.tensor([1.0, 2.0])).numpy(), atol=1e-5)
    path = _write(tmp_path / "e.toml", [{"name": "a", "runs": [str(runs["gru"])],
                                         "weights": [1.0, 1.0]}], post)
    packed = pack_ensemble(path, "scaled", tmp_path / "subs")
    assert packed.manifest["postprocess"]["scale"] == [1.0, 2.0]
    report = run_parity(packed.folder, _valid(workspace), seqs=SEQS)
    assert report.ok, report.format()


def test_pack_refuses_a_pack_over_the_time_budget_unless_forced(workspace, runs, tmp_path,
                                                                 monkeypatch):
    import kit.export.pack as pack_module

    path = _write(tmp_path / "e.toml", [{"name": "a", "runs": [str(runs["gru"])],
                                         "weights": [1.0, 1.0]}])
    monkeypatch.setattr(pack_module, "BUDGET_FRACTION", 1e-9)  # any real time is over it
    with pytest.raises(PackError, match="over 0% of the limit"):
        pack_ensemble(path, "slow", tmp_path / "subs")
    assert not (tmp_path / "subs" / "slow").exists()
    forced = pack_ensemble(path, "slow", tmp_path / "subs", force=True)
    assert "more member(s)" in forced.format()


def test_the_time_budget_of_a_variable_length_spec_with_a_long_warm_up(runs, tmp_path):
    import kit.export.pack as pack_module

    packed = pack_run(runs["gru"], "budget", tmp_path / "subs", budget=False)
    # sequences of any length, 1000 warm-up rows: a 1000-row sample would score no row at all
    raw = packed.manifest["spec"] | {"seq_len": 0, "warmup": 1000, "tail": 0,
                                     "limits": {"time_limit_s": 20.0, "test_rows": 1000}}
    spec = spec_from_dict(raw, "<variable>")
    budget = pack_module.time_budget(packed.folder, spec, 1)
    assert budget["sample_rows"] > 2000 and budget["us_per_row"] > 0
    assert budget["projected_s"] < budget["limit_s"]
    text = pack_module.format_budget(budget)
    assert "of the 20.0 s limit" in text and " min" not in text  # not "0.0 min of the 0 min"
    # the rows projected are said: a spec without [limits] projects Predictorium's 1.5M
    assert " for 1,000 test rows of the 20.0 s limit" in text


def test_bad_ensemble_files_are_refused(runs, tmp_path):
    with pytest.raises(EnsembleError, match="no such ensemble file"):
        read_ensemble(tmp_path / "missing.toml")
    with pytest.raises(EnsembleError, match="a folder, not an ensemble file .*kit pack RUN"):
        read_ensemble(runs["gru"])  # `kit pack --ensemble RUN`: a run is no ensemble file
    (tmp_path / "bad.toml").write_text("members = [")
    with pytest.raises(EnsembleError, match="not valid TOML"):
        read_ensemble(tmp_path / "bad.toml")
    path = _write(tmp_path / "neg.toml", [{"name": "a", "runs": [str(runs["gru"])],
                                           "weights": [-1.0, 1.0]}])
    with pytest.raises(EnsembleError, match="numbers >= 0"):
        read_ensemble(path)
    path = _write(tmp_path / "zero.toml", [{"name": "a", "runs": [str(runs["gru"])],
                                            "weights": [0.0, 0.0]}])
    with pytest.raises(PackError, match="every member has weight 0"):
        pack_ensemble(path, "z", tmp_path)


def test_an_out_without_the_toml_suffix_is_refused_with_the_path_to_use():
    """The hint dropped the folder: following it wrote into the working folder."""
    from kit.ensemble import check_out

    with pytest.raises(EnsembleError, match=r"--out /data/picks/mix\.txt: an ensemble file is "
                                            r"a \.toml file .*: --out /data/picks/mix\.toml$"):
        check_out(Path("/data/picks/mix.txt"))
    # a folder is named as one (`--out .` raised ValueError: an empty name takes no suffix)
    for folder in (Path("."), Path(__file__).parent):
        with pytest.raises(EnsembleError, match="is a folder; name the .toml file"):
            check_out(folder)


def test_select_writes_over_its_own_files_only(runs, tmp_path):
    """--out replaced any file: a run's config.toml (selecting that run then raised a
    TypeError) or an experiment. Its own earlier file it replaces."""
    import shutil

    run = shutil.copytree(runs["gru"], tmp_path / "runs/gru/run")
    config = (run / "config.toml").read_text()
    for taken in (run / "config.toml", tmp_path / "hand.toml"):
        if not taken.exists():
            taken.write_text('[[members]]\nruns = ["x"]\nweights = [1.0, 1.0]\n')
        before = taken.read_text()
        out = run_cli("ensemble", "select", run, "--iters", 1, "--out", taken, expect=2).output
        assert "exists and is not one kit ensemble select wrote" in out
        assert taken.read_text() == before
    select_ensemble([run], iters=1, out=tmp_path / "e.toml")
    select_ensemble([run], iters=2, out=tmp_path / "e.toml")  # its own: replaced
    assert read_ensemble(tmp_path / "e.toml")["ensemble"]["iters"] == 2
    edited = (tmp_path / "e.toml").read_text().replace("weights = [\n    1.0,",
                                                        "weights = [\n    0.5,")
    assert edited != (tmp_path / "e.toml").read_text()
    (tmp_path / "e.toml").write_text(edited)  # weights edited by hand: kept
    with pytest.raises(EnsembleError, match="select wrote, unedited"):
        select_ensemble([run], iters=1, out=tmp_path / "e.toml")
    assert (tmp_path / "e.toml").read_text() == edited
    # a config.toml naming no data file (replaced by hand): named, not a TypeError
    (run / "config.toml").write_text(config.replace("[data]", "[data_was]"))
    with pytest.raises(EnsembleError, match="config.toml names no data file"):
        select_ensemble([run], iters=1, out=tmp_path / "f.toml")


def test_cli_select_report_pack(workspace, runs, tmp_path, monkeypatch):
    out = run_cli("ensemble", "select", runs["gru"], runs["gru_b"], runs["lstm"], "--iters", 5,
                  "--per-target", "--init-best", 1, "--out", tmp_path / "e.toml").output
    assert "best single" in out and "wrote" in out
    out = run_cli("report", tmp_path / "e.toml").output
    assert "report.md" in out
    assert (tmp_path / "e/selection.png").is_file() and (tmp_path / "e/weights.png").is_file()
    out = run_cli("pack", "--ensemble", tmp_path / "e.toml", "--out", tmp_path / "subs").output
    assert "projected test time" in out
    # without --out, from inside runs/: the project's submissions/, beside runs/
    project = tmp_path / "project"
    (project / "runs" / "ensembles").mkdir(parents=True)
    (tmp_path / "e.toml").rename(project / "runs" / "ensembles" / "e.toml")
    monkeypatch.chdir(project / "runs")
    run_cli("pack", "--ensemble", "ensembles/e.toml")
    assert (project / "submissions" / "e.zip").is_file()
    assert "takes a RUN or --ensemble" in run_cli("pack", expect=2).output
    # fold runs validate on different rows: refused, naming the problem
    bad = run_cli("ensemble", "select", runs["gru"], tmp_path / "nothing", expect=2).output
    assert "no such run directory" in bad


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]  # the IHDR chunk: width, height
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_the_report_of_a_32_target_selection_stays_readable(runs, tmp_path):
    """rnn-challenge has 32 targets: the per-target panels go in a grid (not 32 stacked, 85
    inches tall) and the weights in a heatmap (32 stacked bar colours cannot be told apart)."""
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], runs["lstm"], "--iters", 4,
            "--per-target", "--out", tmp_path / "two.toml")
    doc = tomllib.loads((tmp_path / "two.toml").read_text())
    e, first = doc["ensemble"], doc["ensemble"]["targets"][0]
    targets = [f"t{i}" for i in range(32)]
    for key, value in list(e.items()):
        if isinstance(value, dict) and first in value:  # per-target records
            e[key] = {t: value[first] for t in targets}
    for entry in (e["best_single"], e["uniform"]):
        entry["per_target"] = {t: entry["per_target"][first] for t in targets}
    e["targets"] = targets
    for m in doc["members"]:
        m["weights"] = [m["weights"][0]] * 32
        m["weight"] = m["weights"][0]
    (tmp_path / "wide.toml").write_text(tomli_w.dumps(doc))
    run_cli("report", tmp_path / "wide.toml")
    width, height = _png_size(tmp_path / "wide/selection.png")
    assert height <= 8 * 2.4 * 110 + 10 and width <= 4 * 3.6 * 110 + 10  # 8 rows of 4
    width, height = _png_size(tmp_path / "wide/weights.png")
    assert width <= 20 * 110 + 10 and height < width
    # two targets keep the stacked bars and one column of panels
    run_cli("report", tmp_path / "two.toml")
    assert _png_size(tmp_path / "two/selection.png")[0] <= 6.5 * 110 + 10


def test_out_of_fold_groups_are_candidates_and_pack_as_their_fold_runs(workspace, tmp_path,
                                                                      monkeypatch, runs):
    from kit.train.recipe import train_experiment

    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    monkeypatch.chdir(tmp_path)  # trained here: the groups list their fold runs as runs/...
    groups = []
    for name in ("gru", "lstm"):
        results = train_experiment(name, folds=2, progress=False, runs_dir=Path("runs"))
        groups.append(Path(results[-1]["run_dir"]).resolve())
    assert all(g.name.endswith("-oof") for g in groups)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # selected from another folder
    # an oof group predicts train rows, a run valid rows: refused, naming both
    with pytest.raises(EnsembleError, match="predicts 300 rows of"):
        select_ensemble([groups[0], runs["gru"]], iters=3, out=tmp_path / "bad.toml")
    doc, path, _ = select_ensemble([tmp_path / "runs" / "gru", tmp_path / "runs" / "lstm"],
                                   iters=6, out=tmp_path / "oof.toml")
    assert doc["ensemble"]["data"].endswith("train.parquet")
    assert {m["name"].split("/")[1] for m in doc["members"]} <= {g.name for g in groups}
    packed = pack_ensemble(path, "oof", tmp_path / "subs")
    runs_packed = [m["run"] for m in packed.manifest["members"]]
    expected = sum(len(m["runs"]) for m in doc["members"])
    assert len(runs_packed) == expected and all("-fold" in r for r in runs_packed)
    for m in doc["members"]:  # each fold run carries its group's weight / K
        share = [w / len(m["runs"]) for w in m["weights"]]
        got = [e["weights"] for e in packed.manifest["members"] if e["run"] in m["runs"]]
        assert all(g == pytest.approx(share) for g in got)
    assert run_parity(packed.folder, _valid(workspace), seqs=SEQS).ok
    # packing the group itself says how to pack it
    with pytest.raises(KitError, match="an out-of-fold group .*kit pack --ensemble"):
        pack_run(groups[0], "g", tmp_path / "subs")
    # a member moved away since the selection: the error names the member and the file
    fold_run = Path(doc["members"][0]["runs"][0])
    fold_run.rename(fold_run.with_name(fold_run.name + "-moved"))
    member = re.escape(repr(doc["members"][0]["name"]))
    with pytest.raises(PackError, match=rf"oof.toml: member {member}: .*no such run directory"):
        pack_ensemble(path, "moved", tmp_path / "subs")
    # a group added to a member by hand: its fold runs are named
    fold_run.with_name(fold_run.name + "-moved").rename(fold_run)
    hand = _write(tmp_path / "hand.toml", [{"name": "g", "runs": [str(groups[0])],
                                            "weights": [1.0, 1.0]}])
    with pytest.raises(PackError, match=r"member 'g': .* is an out-of-fold group, whose models "
                                        r"are its fold runs: list those .*-fold1of2"):
        pack_ensemble(hand, "hand", tmp_path / "subs")


def test_a_moved_checkout_finds_its_runs_by_their_runs_folder_names(runs, workspace, tmp_path,
                                                                     monkeypatch):
    import shutil

    old = tmp_path / "old" / "runs" / "gru" / runs["gru"].name
    shutil.copytree(runs["gru"], old)
    path = _write(tmp_path / "e.toml", [{"name": f"gru/{old.name}", "runs": [str(old)],
                                          "weights": [1.0, 1.0]}])
    packed = pack_ensemble(path, "before", tmp_path / "subs")
    (tmp_path / "old").rename(tmp_path / "new")  # the checkout moved
    monkeypatch.chdir(tmp_path / "new")
    assert pack_ensemble(path, "after", tmp_path / "subs").manifest["members"]
    # the package made before the move: parity finds the checkpoint, its sha256 still decides
    assert run_parity(packed.folder, _valid(workspace), seqs=SEQS).ok
    monkeypatch.chdir(tmp_path)  # no runs/ here: the recorded path is named as gone
    with pytest.raises(PackError, match="no such run directory"):
        pack_ensemble(path, "lost", tmp_path / "subs")


def test_two_selections_in_one_second_write_two_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261202-120000")  # the same second
    first = write_ensemble({"members": [1]}, None)
    second = write_ensemble({"members": [2]}, None)
    assert first != second and second.name == "ensemble-20261202-120000-2.toml"
    assert first.read_text() != second.read_text()


def test_a_run_given_twice_is_named(runs):
    from kit.ensemble import expand_candidates

    with pytest.raises(EnsembleError, match=r"run\(s\) given twice: \[.*gru"):
        expand_candidates([runs["gru"], runs["gru"]])
    with pytest.raises(EnsembleError, match=r"best.pt: a file; pass its run folder"):
        expand_candidates([runs["gru"] / "best.pt"])


def test_a_copy_of_a_run_is_left_out(runs, tmp_path):
    """A copied run folder (cp -r) was selected beside its original, and the package computed
    the same model twice per row, counted twice in the time budget. Left out with a warning,
    not refused: a sweep that samples the same values twice trains the same model twice, and
    its folder is a documented candidate list."""
    import shutil

    copy = shutil.copytree(runs["gru"], tmp_path / "dup" / "gru-copy")
    out = run_cli("ensemble", "select", runs["gru"], copy, runs["lstm"], "--iters", 3,
                  "--out", tmp_path / "e.toml").output
    assert "predict exactly alike are one model" in out
    assert "gru-copy left out as" in out
    assert "gru-copy" not in (tmp_path / "e.toml").read_text()


def test_the_runs_root_is_named_as_one_level_up(runs, tmp_path):
    from kit.ensemble import EnsembleError, expand_candidates

    root = runs["gru"].parent.parent  # runs/: experiments inside, not runs
    with pytest.raises(EnsembleError, match=r"holds experiments \(.*gru.*\), not runs: pass "
                       r"experiment folders or run folders"):
        expand_candidates([root])
    with pytest.raises(EnsembleError, match="no finished runs inside"):
        expand_candidates([tmp_path])
    # a --folds group killed before its last fold: finished fold runs, no -oof group yet
    import shutil

    group = tmp_path / "gkill"
    for i in (1, 2):
        shutil.copytree(runs["gru"], group / f"20261204-101010-s5-fold{i}of3")
    with pytest.raises(EnsembleError, match=r"only fold runs .*-oof group, written once every "
                       r"fold has finished: .*`kit train gkill seed=5 --folds 3 --resume`"):
        expand_candidates([group])


def test_an_experiment_folder_leaves_its_ablation_runs_out_and_says_so(runs, tmp_path):
    """runs/EXP stood for kit ablate's variants too: six of ten candidates were ablation runs
    (other feature groups), one of them the 'best single'."""
    import shutil

    from kit.ensemble import expand_candidates

    exp = tmp_path / "gru"
    shutil.copytree(runs["gru"], exp / runs["gru"].name)
    shutil.copytree(runs["gru_b"], exp / "ablate-20261204-101010-raw-s1")
    with pytest.warns(UserWarning, match=r"left out its 1 kit ablate run\(s\) .*pass them by "
                                         r"path"):
        got = expand_candidates([exp])
    assert got == [(exp / runs["gru"].name).resolve()]
    by_path = expand_candidates([exp / "ablate-20261204-101010-raw-s1"])
    assert by_path == [(exp / "ablate-20261204-101010-raw-s1").resolve()]


def test_an_ensemble_key_that_is_not_a_table_is_refused(tmp_path):
    path = _write(tmp_path / "e.toml", [{"name": "a", "runs": ["r"], "weights": [1.0, 1.0]}])
    path.write_text('ensemble = "x"\n' + path.read_text())
    with pytest.raises(EnsembleError, match="`ensemble` must be the \\[ensemble\\] table"):
        read_ensemble(path)


def test_init_best_beyond_the_iterations_is_refused():
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((1000, 2))
    with pytest.raises(EnsembleError, match="--init-best must be between 0 and 2"):
        select(_candidates([truth + rng.standard_normal((1000, 2)) for _ in range(3)]),
               truth, iters=2, init_best=3)


@pytest.mark.parametrize("member, post, message", [
    ({"runs": [], "weights": [1.0, 1.0]}, None, "runs: a non-empty list"),
    ({"runs": "runs/x", "weights": [1.0, 1.0]}, None, "runs: a non-empty list"),
    ({"runs": ["r"], "weights": [1.0]}, {"scale": [1.0, 1.0]},
     "postprocess.scale: 1 finite numbers"),
    ({"runs": ["r"], "weights": [1.0, 1.0]}, {"smoothing": [1.0, 0.0]}, "values in [0.0, 1.0)"),
    # NaN and inf weights (1e400 reads as inf) would make the pack predict NaN
    ({"runs": ["r"], "weights": [math.nan, 0.5]}, None, "a list of finite numbers >= 0"),
    ({"runs": ["r"], "weights": [0.5, math.inf]}, None, "a list of finite numbers >= 0"),
    ({"runs": ["r"], "weights": [0.5, 0.5]}, {"scale": [0.0, 1.0]}, "values finite and > 0"),
    ({"runs": ["r"], "weights": [0.5, 0.5]}, {"scale": [1.0, -1.0]}, "values finite and > 0"),
    ({"runs": ["r"], "weights": [0.5, 0.5]}, {"scale": [1.0, math.nan]},
     "postprocess.scale: 2 finite numbers"),
    # the record of what tuning chose, half deleted: the table would raise a KeyError on it
    ({"runs": ["r"], "weights": [0.5, 0.5]}, {"tuned": {"smoothing": [0.0, 0.5]}},
     "postprocess.tuned: the smoothing and scale tuning chose, 2 finite numbers each"),
    # the mean written beside the weights, edited alone: pack would have ignored it
    ({"runs": ["r"], "weights": [0.5, 0.5], "weight": 0.0}, None,
     "members[0].weight = 0.0 is not the mean of its weights [0.5, 0.5]"),
])
def test_hand_edited_ensemble_files_are_checked(tmp_path, member, post, message):
    with pytest.raises(EnsembleError, match=re.escape(message)):
        read_ensemble(_write(tmp_path / "e.toml", [{"name": "a", **member}], post))


def test_a_run_in_two_weighted_members_is_refused(tmp_path, monkeypatch):
    """It would be two members of the graph: computed twice per step, counted twice in the
    time budget. A zero-weight member is not in the graph and may repeat one."""
    run = str(tmp_path / "runs/gru/1")
    twice = [{"runs": [run], "weights": [0.5, 0.5]}, {"runs": [run + "/"], "weights": [0.5, 0.5]}]
    with pytest.raises(EnsembleError, match=r"run .* is in members\[0\] and members\[1\]"):
        read_ensemble(_write(tmp_path / "e.toml", twice))
    within = [{"runs": [run, run], "weights": [1.0, 1.0]}]
    with pytest.raises(EnsembleError, match=r"twice in members\[0\]\.runs"):
        read_ensemble(_write(tmp_path / "w.toml", within))
    twice[1]["weights"] = [0.0, 0.0]
    assert len(read_ensemble(_write(tmp_path / "z.toml", twice))["members"]) == 2
    # a stale absolute path (a moved checkout) that pack maps onto the same run
    (tmp_path / "runs/gru/1").mkdir(parents=True)
    moved = [{"runs": ["/old/checkout/runs/gru/1"], "weights": [0.5, 0.5]},
             {"runs": ["runs/gru/1"], "weights": [0.5, 0.5]}]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnsembleError, match=r"is in members\[0\] and members\[1\]"):
        read_ensemble(_write(tmp_path / "m.toml", moved))
    # the run and its checkpoint: one model
    (tmp_path / "runs/gru/1/best.pt").write_bytes(b"")
    spelt = [{"runs": ["runs/gru/1"], "weights": [0.5, 0.5]},
             {"runs": ["runs/gru/1/best.pt"], "weights": [0.5, 0.5]}]
    with pytest.raises(EnsembleError, match=r"is in members\[0\] and members\[1\]"):
        read_ensemble(_write(tmp_path / "s.toml", spelt))


def test_a_missing_postprocess_key_means_the_identity(tmp_path):
    doc = read_ensemble(_write(tmp_path / "e.toml", [{"name": "a", "runs": ["r"],
                                                      "weights": [1.0, 1.0]}],
                               {"scale": [2.0, 1.0]}))
    assert doc["postprocess"] == {"scale": [2.0, 1.0], "smoothing": [0.0, 0.0]}


def test_selection_scores_a_run_on_the_spec_it_trained_with(workspace, runs, tmp_path,
                                                           monkeypatch):
    """A spec file edited after training (targets reordered) must not relabel the run's
    predictions: selection reads the spec in the checkpoint, as pack and parity do."""
    import shutil

    run = shutil.copytree(runs["gru"], tmp_path / "run")
    spec_file = workspace / "tiny-lob.toml"
    edited = tmp_path / "tiny-lob.toml"
    edited.write_text(spec_file.read_text().replace('targets = ["t0", "t1"]',
                                                    'targets = ["t1", "t0"]'))
    assert edited.read_text() != spec_file.read_text()
    config = (run / "config.toml").read_text()
    (run / "config.toml").write_text(config.replace(str(spec_file), str(edited)))
    assert str(edited) in (run / "config.toml").read_text()
    doc, _, _ = select_ensemble([run], iters=1, out=tmp_path / "e.toml")
    trained = json.loads((run / "metrics.json").read_text())
    assert doc["ensemble"]["targets"] == ["t0", "t1"]
    assert doc["ensemble"]["target_scores"] == pytest.approx(trained["per_target"], abs=1e-6)
    # kit report plots the predictions against the truth of the columns they were made for
    from kit import reports

    drawn = []
    monkeypatch.setattr(reports, "_plot_pred_vs_true",
                        lambda pred, truth, spec, *rest: drawn.append((pred, truth, spec)))
    reports.write_report(run, tmp_path / "report")
    (pred, truth, spec), = drawn
    assert spec.outputs == ("t0", "t1")
    for t, name in enumerate(spec.outputs):
        assert metric_value(spec, truth[:, t], pred[:, t]) == pytest.approx(
            trained["per_target"][name], abs=1e-6)


def test_candidates_with_non_finite_predictions_are_named(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["gru"], run)
    preds = np.load(run / "val_preds.npy")
    preds[:3, 0] = np.inf
    np.save(run / "val_preds.npy", preds)
    with pytest.raises(EnsembleError, match="3 validation predictions are NaN or inf"):
        select_ensemble([run, runs["lstm"]], iters=2, out=tmp_path / "e.toml")


def test_unfinished_runs_are_not_candidates(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["gru"], run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))
    with pytest.raises(EnsembleError, match="has not finished"):
        select_ensemble([run, runs["lstm"]], iters=2, out=tmp_path / "e.toml")


def test_a_member_trained_again_after_the_selection_is_refused_by_pack(runs, tmp_path):
    """Its folder deleted and trained again under the same name: the pack took the new
    best.pt under weights chosen on the old one's predictions, without a word."""
    import shutil

    from kit.errors import KitError
    from kit.export.pack import PackError, pack_ensemble, pack_run

    member = tmp_path / "runs" / "gru_b" / runs["gru_b"].name
    shutil.copytree(runs["gru_b"], member)
    _, path, _ = select_ensemble([runs["gru"], member], iters=4, init_best=2,
                                 out=tmp_path / "e.toml")  # both picked
    doc = tomllib.loads(path.read_text())
    assert all(set(m["checkpoints"]) == set(m["runs"]) for m in doc["members"])
    assert any(str(member.resolve()) in m["runs"] and any(m["weights"]) for m in doc["members"])
    shutil.copy(runs["gru"] / "best.pt", member / "best.pt")  # "trained again"
    with pytest.raises(PackError, match=r"best.pt changed since the selection \(the run was "
                                        r"trained again\)"):
        pack_ensemble(path, "e", tmp_path / "subs")
    assert pack_ensemble(path, "e", tmp_path / "subs", force=True).zip_path.is_file()
    # a finished run without its best.pt is named as such, not "no best.pt yet", and is no
    # candidate (the selection's digest of it raised a DataError about "data files")
    (member / "best.pt").unlink()
    with pytest.raises(KitError, match="the run finished but its best.pt is missing"):
        pack_run(member, "x", tmp_path / "subs")
    with pytest.raises(EnsembleError, match="the run finished but its best.pt is missing"):
        select_ensemble([runs["gru"], member], iters=2, out=tmp_path / "e2.toml")


def test_a_run_validated_on_tail_cut_sequences_is_not_a_candidate(workspace, runs, tmp_path,
                                                                  monkeypatch):
    """data.seq_len = 50 of 60 steps, truncate = "tail": the run predicted steps 10..59 from a
    state started at step 10, its package starts at step 0. Its scored rows are the others'
    (warm-up 10), so it blended silently: the selection's score was not what kit score gave
    the pack (0.075 against 0.088 in the review). A head cut keeps the start: a candidate."""
    from kit.train.recipe import train_experiment

    monkeypatch.setenv("KIT_EXPERIMENTS", str(workspace / "experiments"))
    tail = Path(train_experiment("gru", ["data.seq_len=50", 'data.truncate="tail"'],
                                 progress=False, runs_dir=tmp_path / "tail")[0]["run_dir"])
    with pytest.raises(EnsembleError, match=r"tail.*validated on sequences cut to their last "
                                            r"data.seq_len = 50 steps \(truncate = \"tail\"\)"):
        select_ensemble([runs["gru"], tail], iters=2, out=tmp_path / "e.toml")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metrics.json", "[1]", "no readable metrics.json"),
    ("metrics.json", b"\xff\xfe", "no readable metrics.json"),
    ("val_preds.npy", b"garbage", "val_preds.npy: not a readable .npy file"),
    ("val_rows.npy", np.zeros(3, dtype=np.float64), "val_rows.npy: expected a 1-D array of row"),
    ("config.toml", "seed = [1", "config.toml: not valid TOML"),
])  # fmt: skip
def test_damaged_run_files_are_named_not_tracebacks(runs, tmp_path, name, content, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["gru"], run)
    if isinstance(content, np.ndarray):
        np.save(run / name, content)
    elif isinstance(content, bytes):
        (run / name).write_bytes(content)
    else:
        (run / name).write_text(content)
    with pytest.raises(KitError, match=message):
        select_ensemble([run, runs["lstm"]], iters=2, out=tmp_path / "e.toml")


def test_a_selection_edited_by_hand_still_reports_and_says_its_scores_are_old(runs, tmp_path):
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], runs["lstm"], "--iters", 4,
            "--per-target", "--out", tmp_path / "e.toml")
    doc = tomllib.loads((tmp_path / "e.toml").read_text())
    edited = "the weights were edited after the selection"
    run_cli("report", tmp_path / "e.toml")
    assert edited not in (tmp_path / "e/report.md").read_text()
    # each target's panel compares with that target's best run, not the best overall's score
    e = doc["ensemble"]
    for t in e["targets"]:
        best = max(m["per_target"][t] for m in doc["members"])
        assert e["best_single_per_target"][t]["score"] >= best
    # a member added with runs and weights only, smoothing set by hand, weights changed
    doc["members"] = [{k: v for k, v in m.items() if k != "weight"} for m in doc["members"]]
    doc["members"].append({"runs": [str(runs["gru"])], "weights": [0.0, 0.0]})
    doc["postprocess"] = {"smoothing": [0.5, 0.0]}
    (tmp_path / "h.toml").write_text(tomli_w.dumps(doc))
    run_cli("report", tmp_path / "h.toml")
    text = (tmp_path / "h/report.md").read_text()
    assert "(set by hand, not tuned)" in text and f"gru/{runs['gru'].name}" in text
    assert edited not in text  # a zero-weight member changes no weight
    doc["members"][0]["weights"] = [1.0, 1.0]
    for m in doc["members"][1:]:
        m["weights"] = [0.0, 0.0]
    (tmp_path / "h.toml").write_text(tomli_w.dumps(doc))
    run_cli("report", tmp_path / "h.toml")
    text = (tmp_path / "h/report.md").read_text()
    assert edited in text and f"1 of {e['candidates']} candidates selected" in text
    packed = pack_ensemble(tmp_path / "h.toml", "h", tmp_path / "subs", budget=False)
    assert packed.manifest["ensemble"]["weights_edited"] is True


def test_a_member_deleted_by_hand_is_an_edit_though_the_rest_are_renormalised(runs, tmp_path):
    """The other members' weights, picks over their new total, read as the selection's: the
    file's recorded total per target shows the missing picks."""
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], runs["lstm"], "--iters", 6,
            "--init-best", 3, "--out", tmp_path / "e.toml")
    doc = tomllib.loads((tmp_path / "e.toml").read_text())
    assert len(doc["members"]) == 3 and not weights_edited(doc)
    del doc["members"][-1]
    for m in doc["members"]:
        m["weights"] = [p / sum(o["picks"][t] for o in doc["members"])
                        for t, p in enumerate(m["picks"])]
        m["weight"] = sum(m["weights"]) / len(m["weights"])
    (tmp_path / "d.toml").write_text(tomli_w.dumps(doc))
    assert weights_edited(read_ensemble(tmp_path / "d.toml"))
    run_cli("report", tmp_path / "d.toml")
    assert "the weights were edited after the selection" in (tmp_path / "d/report.md").read_text()


@pytest.mark.parametrize("picks", [[7.0, "7"], [-1, 1], [True, 1], "7"])
def test_picks_edited_into_what_select_never_writes_are_an_edit(runs, tmp_path, picks):
    """A hand-edited `picks` is an edit, reported and packed as one (a string in it ended
    `kit report` and `kit pack` in a TypeError from summing the picks)."""
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], "--iters", 4, "--init-best", 2,
            "--out", tmp_path / "e.toml")
    doc = tomllib.loads((tmp_path / "e.toml").read_text())
    doc["members"][0]["picks"] = picks
    (tmp_path / "d.toml").write_text(tomli_w.dumps(doc))
    assert weights_edited(read_ensemble(tmp_path / "d.toml"))
    run_cli("report", tmp_path / "d.toml")
    assert "the weights were edited after the selection" in (tmp_path / "d/report.md").read_text()


def test_members_of_one_spec_name_with_other_columns_are_refused(runs, tmp_path):
    """The graph's input is the first member's columns: a spec file edited between two runs
    (same name, columns reordered) would have the second member read the wrong ones."""
    import shutil

    from kit.train.checkpoint import load_checkpoint, save_checkpoint

    edited = shutil.copytree(runs["gru_b"], tmp_path / "edited")
    state = load_checkpoint(edited / "best.pt")
    features = state["spec"]["features"]
    state["spec"] = {**state["spec"], "features": features[::-1]}
    save_checkpoint(state, edited / "best.pt")
    members = [{"name": "a", "runs": [str(runs["gru"])], "weights": [0.5, 0.5]},
               {"name": "b", "runs": [str(edited)], "weights": [0.5, 0.5]}]
    with pytest.raises(PackError, match=r"was trained with other feature columns of spec "):
        pack_ensemble(_write(tmp_path / "e.toml", members), "e", tmp_path / "subs",
                      budget=False)
    assert not (tmp_path / "subs" / "e").exists()
    # another warm-up (an ensemble file by hand: select refuses it): the package took the
    # first member's, so the member order set its smoothing start and need rule
    state = load_checkpoint(runs["gru_b"] / "best.pt")
    state["spec"] = {**state["spec"], "warmup": state["spec"]["warmup"] + 1}
    save_checkpoint(state, edited / "best.pt")
    for order in (members, members[::-1]):
        with pytest.raises(PackError, match=r"another version of spec .*: warmup \d+, against"):
            pack_ensemble(_write(tmp_path / "e.toml", order), "e", tmp_path / "subs",
                          budget=False)


def test_runs_of_two_specs_are_refused_by_name_in_select_and_pack(runs, tmp_path):
    """A spec of another name with the same columns (a copy of the preset, renamed): select
    took both and pack refused the file with 'different competition specs', naming neither."""
    import shutil

    from kit.train.checkpoint import load_checkpoint, save_checkpoint

    other = shutil.copytree(runs["gru_b"], tmp_path / "runs/gru/other")
    state = load_checkpoint(other / "best.pt")
    state["spec"] = {**state["spec"], "name": "renamed"}
    save_checkpoint(state, other / "best.pt")
    with pytest.raises(EnsembleError, match=r"other was trained for spec 'renamed', .* for "):
        select_ensemble([runs["gru"], other], iters=2, out=tmp_path / "e.toml")
    members = [{"name": "a", "runs": [str(runs["gru"])], "weights": [0.5, 0.5]},
               {"name": "b", "runs": [str(other)], "weights": [0.5, 0.5]}]
    with pytest.raises(PackError, match=rf"{other} was trained for spec 'renamed', "):
        pack_ensemble(_write(tmp_path / "p.toml", members), "p", tmp_path / "subs",
                      budget=False)


def test_a_member_of_other_targets_is_named_whichever_comes_first(workspace, runs, tmp_path,
                                                                  monkeypatch):
    from kit.train.recipe import train_experiment

    spec = workspace / "tiny-lob.toml"
    one = tmp_path / "one-target.toml"
    one.write_text(spec.read_text().replace('targets = ["t0", "t1"]', 'targets = ["t0"]'))
    assert one.read_text() != spec.read_text()
    experiment = (workspace / "experiments/gru.toml").read_text()
    (tmp_path / "gru1.toml").write_text(experiment.replace(str(spec), str(one)))
    monkeypatch.setenv("KIT_EXPERIMENTS", str(tmp_path))
    run = train_experiment("gru1", progress=False, runs_dir=tmp_path / "runs")[0]["run_dir"]
    mine = {"name": "one", "runs": [str(run)], "weights": [0.5, 0.5]}
    theirs = {"name": "two", "runs": [str(runs["gru"])], "weights": [0.5, 0.5]}
    for order in ([mine, theirs], [theirs, mine]):
        with pytest.raises(PackError, match="was trained with other targets"):
            pack_ensemble(_write(tmp_path / "e.toml", order), "e", tmp_path / "subs",
                          budget=False)


def test_reporting_a_hand_made_ensemble_file_says_what_is_missing(runs, tmp_path):
    path = _write(tmp_path / "hand.toml", [{"name": "a", "runs": [str(runs["gru"])],
                                            "weights": [1.0, 1.0]}])
    assert "no [ensemble] selection record" in run_cli("report", path, expect=2).output


def test_weights_that_do_not_sum_to_one_are_refused_where_the_metric_has_a_scale(runs,
                                                                                tmp_path):
    import shutil

    from kit.sweep import without_none
    from kit.train.checkpoint import load_checkpoint, save_checkpoint

    def scored_by(run: Path, metric: dict) -> None:
        """The run as trained on a spec of this metric: its checkpoint's copy and the spec
        file its config.toml names (pack reads the file's [metric] as it is now)."""
        state["spec"] = {**state["spec"], "metric": metric}
        save_checkpoint(state, run / "best.pt")
        spec_file = run.parent / f"{run.name}-spec.toml"
        spec_file.write_text(tomli_w.dumps(without_none(state["spec"])))
        config = tomllib.loads((run / "config.toml").read_text())
        (run / "config.toml").write_text(tomli_w.dumps({**config, "spec": str(spec_file)}))

    r2_run = shutil.copytree(runs["gru"], tmp_path / "r2run")  # the same run, scored by r2
    state = load_checkpoint(r2_run / "best.pt")
    scored_by(r2_run, {"name": "r2"})
    members = [{"name": "a", "runs": [str(r2_run)], "weights": [0.5, 1.0]}]
    with pytest.raises(PackError, match="the weights of t0 sum to 0.5, not 1: under r2"):
        pack_ensemble(_write(tmp_path / "r2.toml", members), "r2", tmp_path / "subs",
                      budget=False)
    forced = pack_ensemble(tmp_path / "r2.toml", "r2", tmp_path / "subs", budget=False,
                           force=True)
    assert forced.manifest["members"][0]["weights"] == [0.5, 1.0]
    # a clipped correlation sees the scale: it moves rows into or out of the clip
    assert load_checkpoint(runs["gru"] / "best.pt")["spec"]["metric"]["clip"] == [-6.0, 6.0]
    pearson = [{"name": "a", "runs": [str(runs["gru"])], "weights": [0.5, 1.0]}]
    with pytest.raises(PackError, match=r"t0 sum to 0.5, not 1: under weighted_pearson "
                                        r"\(predictions clipped to \[-6, 6\] first\)"):
        pack_ensemble(_write(tmp_path / "p.toml", pearson), "p", tmp_path / "subs",
                      budget=False)
    # an unclipped one does not: half weights pack as they are
    free_run = shutil.copytree(runs["gru"], tmp_path / "free")
    scored_by(free_run, {"name": "weighted_pearson"})
    free = [{"name": "a", "runs": [str(free_run)], "weights": [0.5, 1.0]}]
    pack_ensemble(_write(tmp_path / "f.toml", free), "f", tmp_path / "subs", budget=False)
    # ... but it sees a target zeroed by hand in every member: a constant
    zeroed = [{"name": n, "runs": [str(runs[n])], "weights": [0.0, 0.5]} for n in ("gru", "lstm")]
    with pytest.raises(PackError, match="the weights of t0 sum to 0: that target would "
                                        "be predicted as a constant"):
        pack_ensemble(_write(tmp_path / "z.toml", zeroed), "z", tmp_path / "subs", budget=False)


def test_a_clipped_r2_is_selected_on_the_clipped_metric():
    """The moments' clip correction is weighted Pearson's; with a clip on r2 the selection
    scores with the exact metric. Candidate a is the better once the clip tames its rare wild
    values; the unclipped moments would rank it far below b."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "r2", "clip": [-1.0, 1.0]}})
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((3000, 2)) * 0.3
    a = truth + rng.standard_normal((3000, 2)) * 0.05
    a[::100] = 1000.0  # 1% wild values: clipped to 1
    b = truth + rng.standard_normal((3000, 2)) * 0.3
    sel = select(_candidates([a, b], spec), truth, iters=1)
    assert sel.counts[:, 0].tolist() == [1.0, 1.0]
    assert sel.score == pytest.approx(evaluate(spec, truth, np.clip(a, -1, 1)).score, abs=1e-9)


def test_any_hand_edit_keeps_a_selection_file_from_being_replaced(runs, tmp_path):
    """--out replaced a file whose weights and post-processing were the selection's, whatever
    else was edited: a comment, a deleted [postprocess], a member's run swapped, a zero-weight
    member added, the checkpoints deleted. The first line's digest of the rest tells."""
    out = tmp_path / "e.toml"
    select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=out, postprocess=True)
    select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=out, postprocess=True)  # its own
    original = out.read_text()
    doc = tomllib.loads(original)
    edits = [original + "# my note\n",
             "\n".join(line for line in original.splitlines() if "[postprocess" not in line)]
    doc["members"].append({"runs": [str(runs["lstm"])], "weights": [0.0, 0.0]})
    edits.append(original.split("\n", 1)[0] + "\n" + tomli_w.dumps(doc))
    edits.append("\ufeff" + original + "# saved by an editor that writes a BOM\n")
    for edited in edits:
        out.write_text(edited)
        with pytest.raises(EnsembleError, match="select wrote, unedited"):
            select_ensemble([runs["gru"]], iters=1, out=out)
        assert out.read_text() == edited


def test_an_out_that_kit_report_could_not_read_back_is_refused_first(runs, tmp_path,
                                                                     monkeypatch):
    """--out out.txt was written, then `kit report out.txt` took it for a run folder; a folder
    or a path under a file were found only after the whole selection."""
    from kit import ensemble

    monkeypatch.setattr(ensemble, "load_candidate", lambda path: pytest.fail("loaded first"))
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "file").write_text("x")
    for out, said in ((tmp_path / "out.txt", f"--out {tmp_path / 'out.toml'}"),
                      (tmp_path / "E.TOML", f"--out {tmp_path / 'E.toml'}"),
                      (tmp_path / "folder.toml", "is a folder"),
                      (tmp_path / "file" / "e.toml", "file is a file, not a folder")):
        with pytest.raises(EnsembleError, match=re.escape(said)):
            select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=out)
    assert not (tmp_path / "out.txt").exists()


def test_a_deleted_tuned_record_makes_the_tuned_scores_unverifiable(runs, tmp_path):
    """An error told to delete postprocess.tuned rather than edit it: then a smoothing edited
    by hand read as tuned, the table showed the tuning's scores, and the manifest said no
    target was edited."""
    from kit.ensemble import postprocess_edited

    path = tmp_path / "e.toml"
    select_ensemble([runs["gru"], runs["gru_b"]], iters=2, out=path, postprocess=True)
    doc = tomllib.loads(path.read_text())
    del doc["postprocess"]["tuned"]
    doc["postprocess"]["smoothing"] = [0.0, 0.0]
    assert postprocess_edited(doc["postprocess"], doc["ensemble"]["targets"]) == ["t0", "t1"]
    (tmp_path / "h.toml").write_text(tomli_w.dumps(doc))
    packed = pack_ensemble(tmp_path / "h.toml", "h", tmp_path / "subs", budget=False)
    assert packed.manifest["ensemble"]["postprocess_edited"] == ["t0", "t1"]
    run_cli("report", tmp_path / "h.toml")  # it read "tuned": a KeyError
    text = (tmp_path / "h" / "report.md").read_text()
    assert "perhaps edited by hand after tuning (what it chose is not recorded)" in text


def test_pack_checks_a_members_run_however_its_path_is_spelt(runs, tmp_path):
    """The recorded checkpoints were looked up by the run's path as written: RUN/ or
    RUN/best.pt skipped the retrained-run check, and a run swapped in by hand had none."""
    import shutil

    from kit.export.pack import PackError

    member = tmp_path / "runs" / "gru_b" / runs["gru_b"].name
    shutil.copytree(runs["gru_b"], member)
    _, path, _ = select_ensemble([runs["gru"], member], iters=4, init_best=2,
                                 out=tmp_path / "e.toml")
    doc = tomllib.loads(path.read_text())
    shutil.copy(runs["gru"] / "best.pt", member / "best.pt")  # "trained again"
    for spelt in (f"{member}/", f"{member}/best.pt"):
        for m in doc["members"]:
            m["runs"] = [spelt if r == str(member.resolve()) else r for r in m["runs"]]
            m["checkpoints"] = {k: v for k, v in m["checkpoints"].items()}
        (tmp_path / "s.toml").write_text(tomli_w.dumps(doc))
        with pytest.raises(PackError, match="changed since the selection"):
            pack_ensemble(tmp_path / "s.toml", "s", tmp_path / "subs")
        doc = tomllib.loads(path.read_text())
    swapped = tomllib.loads(path.read_text())
    swapped["members"][0]["runs"] = [str(runs["lstm"])]
    (tmp_path / "w.toml").write_text(tomli_w.dumps(swapped))
    with pytest.raises(PackError, match="is not a run the selection chose"):
        pack_ensemble(tmp_path / "w.toml", "w", tmp_path / "subs")


def test_runs_whose_names_hold_fold_are_candidates(runs, tmp_path):
    """Every run with "-fold" in its name was taken for a fold run and left out: a sweep study
    named lr-fold lost its trials without a word."""
    import shutil

    from kit.ensemble import expand_candidates

    folder = tmp_path / "runs" / "sw"
    for name in ("lr-fold-t0000", "refold-t0001"):
        shutil.copytree(runs["gru"], folder / name)
    shutil.copytree(runs["gru"], folder / "20240101-000000-s1-fold1of3")
    assert sorted(p.name for p in expand_candidates([folder])) == ["lr-fold-t0000",
                                                                 "refold-t0001"]


def test_runs_json_lists_the_best_first_and_asc_the_worst_first(runs, workspace):
    """(The --json order was checked on two runs of equal scores only.)"""
    for order, descending in (([], True), (["--asc"], False)):
        listed = json.loads(run_cli("runs", "--runs-dir", workspace / "runs", "--json",
                                    "--sort", "score", *order).output)
        scores = [r["score"] for r in listed if r["score"] is not None]
        assert len(set(scores)) >= 3 and scores == sorted(scores, reverse=descending)


def test_pack_takes_a_run_or_an_ensemble_and_no_stack_keeps_members_apart(runs, tmp_path):
    path = _write(tmp_path / "e.toml", [{"runs": [str(runs["gru"])], "weights": [0.5, 0.5]},
                                        {"runs": [str(runs["gru_b"])], "weights": [0.5, 0.5]}])
    out = run_cli("pack", runs["gru"], "--ensemble", path, "--out", tmp_path / "both",
                  expect=2).output
    assert "one of them" in out and not (tmp_path / "both").exists()
    shapes = {}
    for name, extra in (("stacked", []), ("apart", ["--no-stack"])):
        run_cli("pack", "--ensemble", path, "--name", name, "--out", tmp_path / "subs", *extra)
        manifest = json.loads((tmp_path / "subs" / name / "manifest.json").read_text())
        shapes[name] = [s["shape"] for s in manifest["states"]]
    assert any(s[0] == 2 for s in shapes["stacked"])  # the two GRUs' states as one
    assert not any(s[0] == 2 for s in shapes["apart"])
    assert len(shapes["apart"]) > len(shapes["stacked"])


def test_cli_select_writes_its_per_target_iters_init_best_and_postprocess_options(runs,
                                                                                  tmp_path):
    path = tmp_path / "e.toml"
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], runs["lstm"], "--per-target",
            "--iters", 5, "--init-best", 2, "--postprocess", "--out", path)
    doc = tomllib.loads(path.read_text())
    e = doc["ensemble"]
    assert e["per_target"] is True and e["iters"] == 5 and e["init_best"] == 2
    assert "trajectory_per_target" in e and len(e["trajectory_per_target"]) == 2
    assert set(doc["postprocess"]) >= {"smoothing", "scale"}
    assert all(len(m["weights"]) == 2 for m in doc["members"])


def test_cli_select_defaults_to_50_iters_one_weight_per_member_and_no_postprocess(runs,
                                                                                  tmp_path):
    path = tmp_path / "e.toml"
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], "--out", path)
    doc = tomllib.loads(path.read_text())
    e = doc["ensemble"]
    assert e["iters"] == 50 and e["init_best"] == 0 and e["per_target"] is False
    assert "postprocess" not in doc
    assert all(len(set(m["weights"])) == 1 for m in doc["members"])


def test_cli_select_refuses_more_init_best_candidates_than_iters(runs, tmp_path):
    out = run_cli("ensemble", "select", runs["gru"], runs["gru_b"], "--init-best", 2,
                  "--iters", 1, "--out", tmp_path / "e.toml", expect=2).output
    assert "--init-best must be between 0 and 1" in out
    assert not (tmp_path / "e.toml").exists()


def test_cli_report_of_an_ensemble_writes_into_the_out_folder_not_beside_the_file(runs,
                                                                                  tmp_path):
    path = tmp_path / "e.toml"
    run_cli("ensemble", "select", runs["gru"], runs["gru_b"], "--iters", 2, "--out", path)
    out = run_cli("report", path, "--out", tmp_path / "d").output
    assert str(tmp_path / "d" / "report.md") in out
    assert (tmp_path / "d/report.md").is_file() and (tmp_path / "d/selection.png").is_file()
    assert not (tmp_path / "e").exists()


def test_select_inside_runs_writes_the_projects_ensembles_folder(runs, tmp_path, monkeypatch):
    """`kit ensemble select gru` from inside runs/ writes runs/ensembles/, not
    runs/runs/ensembles/ (as pack writes the project's submissions/, beside runs/)."""
    project = tmp_path / "project"
    for name in ("gru", "gru_b"):
        shutil.copytree(runs[name], project / "runs" / "gru" / runs[name].name)
    monkeypatch.chdir(project / "runs")
    out = run_cli("ensemble", "select", "gru", "--iters", 2).output
    written = list((project / "runs" / "ensembles").glob("ensemble-*.toml"))
    assert len(written) == 1 and str(written[0]) in out
    assert not (project / "runs" / "runs").exists()
    # from the project folder, as before: runs/ensembles/ under it
    monkeypatch.chdir(project)
    run_cli("ensemble", "select", "runs/gru", "--iters", 2)
    assert len(list((project / "runs" / "ensembles").glob("ensemble-*.toml"))) == 2
    # a run kept outside runs/ in a project that itself sits in a folder named runs: the
    # working folder's runs/ensembles/, not one beside the project
    from kit.ensemble import ensembles_dir

    outer = tmp_path / "runs" / "proj"
    (outer / "exp" / "a").mkdir(parents=True)
    monkeypatch.chdir(outer)
    assert ensembles_dir(Path("exp/a")) == Path("runs/ensembles")
    assert ensembles_dir(outer / "runs" / "gru" / "1") == Path("runs/ensembles")  # (the same)


def test_an_experiment_folder_names_the_runs_it_leaves_out_because_they_are_unfinished(
        runs, tmp_path):
    """r287: a selection over runs/EXP made while a sweep or a --jobs group trained left out
    the runs still training without a word ("uniform mean of 5" with 6 trial folders)."""
    import json
    import shutil
    import warnings

    from kit.ensemble import expand_candidates

    exp = tmp_path / "gru"
    shutil.copytree(runs["gru"], exp / runs["gru"].name)
    training = exp / "20261206-101010-s7"
    shutil.copytree(runs["gru_b"], training)
    metrics = json.loads((training / "metrics.json").read_text())
    (training / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))
    (exp / "20261206-101011-s8").mkdir()  # started: its config only
    shutil.copy(runs["gru"] / "config.toml", exp / "20261206-101011-s8")
    with pytest.warns(UserWarning, match=r"left out 2 run\(s\) that have not finished \(still "
                      r"training, paused or killed\): 20261206-101010-s7, 20261206-101011-s8; "
                      r"select again once they finish"):
        got = expand_candidates([exp])
    assert got == [(exp / runs["gru"].name).resolve()]
    (training / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(exp / "20261206-101011-s8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all finished: nothing to say
        assert len(expand_candidates([exp])) == 2
