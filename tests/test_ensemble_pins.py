"""Pins on kit/ensemble.py that its mutation audit (r255) found unpinned: small arrays and
hand-made files, no training."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w

import kit.ensemble as ensemble_module
from kit.competition import load_spec, spec_from_dict
from kit.ensemble import (
    Candidate,
    EnsembleError,
    Moments,
    check_same_rows,
    drop_copies,
    ensemble_document,
    expand_candidates,
    format_selection,
    load_candidate,
    postprocess_edited,
    read_ensemble,
    select,
    select_ensemble,
    tune_postprocess,
)
from kit.metrics import metric_value
from tests.cli import run_cli

SPEC = load_spec("predictorium")


def _candidates(preds: list[np.ndarray], spec=SPEC) -> list[Candidate]:
    rows = np.arange(len(preds[0]))
    return [Candidate(f"c{i}", Path(f"c{i}"), [], p.astype(np.float32), rows, Path("x"), spec)
            for i, p in enumerate(preds)]


def _on_a_file(tmp_path, monkeypatch, spec, truth: np.ndarray, ids: np.ndarray,
               steps: np.ndarray, preds: list[np.ndarray], rows: np.ndarray | None = None
               ) -> list[Candidate]:
    """Candidates on a valid file written here (truth on every row; `rows` the scored ones),
    which select_ensemble loads in place of run folders."""
    valid = tmp_path / "valid.parquet"
    pl.DataFrame({spec.id_col: ids, spec.step_col: steps,
                  **{t: truth[:, i] for i, t in enumerate(spec.targets)}}).write_parquet(valid)
    rows = np.arange(len(ids)) if rows is None else rows
    cands = [Candidate(f"exp/c{i}", tmp_path / f"c{i}", [], p.astype(np.float32), rows, valid,
                       spec) for i, p in enumerate(preds)]
    by_path = {c.path: c for c in cands}
    monkeypatch.setattr(ensemble_module, "expand_candidates", lambda paths: list(paths))
    monkeypatch.setattr(ensemble_module, "load_candidate", lambda path: by_path[path])
    return cands


# --- drop_copies (M17) ---------------------------------------------------------------------


def test_drop_copies_keeps_the_first_of_candidates_that_predict_exactly_alike():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    cands = _candidates([a, a.copy(), b, a.copy()])
    with pytest.warns(RuntimeWarning, match=r"c1, c3 left out as c0"):
        kept = drop_copies(cands)
    assert [c.name for c in kept] == ["c0", "c2"]
    assert [c.name for c in drop_copies(cands[:1] + cands[2:3])] == ["c0", "c2"]  # none alike


def test_a_copy_is_no_candidate_so_init_best_2_starts_from_two_models(tmp_path, monkeypatch):
    """The copy stayed a candidate: `candidates` said 3, and --init-best 2 started from the
    run and its copy, a package computing one model twice."""
    spec = spec_from_dict({**SPEC.to_dict(), "warmup": 0, "seq_len": 20}, "<test>")
    rng = np.random.default_rng(1)
    n_seq, length = 30, 20
    truth = rng.standard_normal((n_seq * length, 2))
    good = truth + 0.5 * rng.standard_normal(truth.shape)
    other = truth + 2.0 * rng.standard_normal(truth.shape)
    cands = _on_a_file(tmp_path, monkeypatch, spec, truth, np.repeat(np.arange(n_seq), length),
                       np.tile(np.arange(length), n_seq), [good, good.copy(), other])
    with pytest.warns(RuntimeWarning, match="exp/c1 left out as exp/c0"):
        doc, _, text = select_ensemble([c.path for c in cands], iters=2, init_best=2,
                                       out=tmp_path / "e.toml")
    assert doc["ensemble"]["candidates"] == 2
    assert [m["name"] for m in doc["members"]] == ["exp/c0", "exp/c2"]
    assert "2 of 2 candidates selected" in text


# --- loading (M20, M15, M23, M57) ----------------------------------------------------------


def _hand_made_run(folder: Path, preds: np.ndarray, rows: np.ndarray, finished=True,
                   data: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"finished": finished}))
    (folder / "config.toml").write_text(tomli_w.dumps(
        {"data": data or {"train": "train.parquet", "valid": "valid.parquet"}}))
    np.save(folder / "val_preds.npy", preds)
    np.save(folder / "val_rows.npy", rows)
    (folder / "best.pt").write_bytes(b"")
    return folder


def test_predictions_and_rows_of_other_lengths_are_refused_by_name_at_load(tmp_path):
    run = _hand_made_run(tmp_path / "run", np.zeros((5, 2), np.float32), np.arange(3))
    with pytest.raises(EnsembleError, match=re.escape(
            f"{run.resolve()}: predictions (5, 2) do not match rows (3,)")):
        load_candidate(run)


def test_candidates_predicting_other_numbers_of_values_a_row_are_refused():
    """Same spec and rows, a val_preds.npy of 3 columns: np.stack raised a ValueError."""
    rng = np.random.default_rng(2)
    cands = _candidates([rng.standard_normal((40, 2)), rng.standard_normal((40, 3))])
    with pytest.raises(EnsembleError, match="c1 predicts 3 values a row, c0 2"):
        check_same_rows(cands)


def test_an_experiment_folder_stands_for_its_finished_runs_only(tmp_path):
    preds, rows = np.zeros((4, 2), np.float32), np.arange(4)
    done = _hand_made_run(tmp_path / "exp" / "a", preds, rows)
    _hand_made_run(tmp_path / "exp" / "b", preds, rows, finished=False)
    assert expand_candidates([tmp_path / "exp"]) == [done.resolve()]


def test_the_row_settings_named_are_those_that_differ(tmp_path):
    preds = np.zeros((4, 2), np.float32)
    configs = [{"train": "t.parquet", "valid": "v.parquet", "seq_len": n} for n in (0, 40)]
    cands = []
    for i, (config, rows) in enumerate(zip(configs, (np.arange(4), np.arange(1, 5)),
                                           strict=True)):
        run = _hand_made_run(tmp_path / f"r{i}", preds, rows, data=config)
        cands.append(Candidate(f"r{i}", run, [run], preds, rows, Path("v.parquet"), SPEC))
    with pytest.raises(EnsembleError, match=re.escape(
            "; they differ in data.seq_len (0, 40). Select among")):
        check_same_rows(cands)


# --- read_ensemble (M45) -------------------------------------------------------------------


def test_members_with_other_numbers_of_weights_are_refused(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(tomli_w.dumps({"members": [{"runs": ["a"], "weights": [1.0]},
                                               {"runs": ["b"], "weights": [0.5, 0.5]}]}))
    with pytest.raises(EnsembleError, match=re.escape(
            "members[1].weights: 2 values, members[0] has 1")):
        read_ensemble(path)


# --- the moments (M72, M01) ----------------------------------------------------------------


def _pearson(clip=None):
    return spec_from_dict({**SPEC.to_dict(), "metric": {"name": "weighted_pearson"}
                           | ({"clip": clip} if clip else {})}, "<test>")


def test_a_constant_prediction_or_truth_scores_0_from_the_moments_as_exactly():
    """The exact weighted Pearson scores a constant 0; without the guard the moments gave
    NaN (0 / 0), and argmax takes a NaN for the best: the constant was picked first."""
    spec = _pearson()
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((3000, 2))
    truth[:, 1] = 0.0  # a target that is all zero
    good = truth + rng.standard_normal(truth.shape)
    good[:, 1] = rng.standard_normal(3000)
    preds = np.stack([np.zeros_like(good), good], axis=1)  # a constant candidate first
    moments = Moments(truth, preds, "weighted_pearson")
    for t in range(2):
        fast = moments.scores(t, np.zeros(2))
        exact = [metric_value(spec, truth[:, t], preds[:, j, t]) for j in range(2)]
        assert exact[0] == 0.0 and fast[0] == 0.0
        assert fast == pytest.approx(exact, abs=1e-9)
    assert moments.scores(1, np.zeros(2)).tolist() == [0.0, 0.0]
    # the first pick is the real one (a constant added later is a tie: a blend's shift and
    # scale leave a correlation as it was)
    sel = select(_candidates([np.zeros_like(good), good], spec), truth, iters=1)
    assert sel.counts.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_the_moments_weigh_rows_of_zero_truth_with_the_metrics_floor():
    """max(|y|, 1e-8), as kit.metrics.weighted_pearson: a truth of tiny values with exact
    zeros among them scores otherwise when those rows weigh 0."""
    spec = _pearson()
    rng = np.random.default_rng(4)
    truth = 1e-8 * rng.standard_normal((4000, 2))
    truth[::2] = 0.0
    preds = np.stack([truth * 1e8 + s * rng.standard_normal(truth.shape) for s in (0.5, 1.0)],
                     axis=1)
    moments = Moments(truth, preds, "weighted_pearson")
    counts = np.array([1.0, 2.0])
    for t in range(2):
        fast = moments.scores(t, counts)
        for j in range(2):
            c = counts.copy()
            c[j] += 1
            exact = metric_value(spec, truth[:, t], preds[:, :, t] @ c / c.sum())
            assert fast[j] == pytest.approx(exact, abs=1e-9)


def test_the_moments_of_tiny_values_do_not_underflow():
    """As kit.metrics.weighted_pearson (two roots): var * yy was below the smallest double,
    so every candidate scored inf and the first was picked, not the best."""
    spec = _pearson()
    rng = np.random.default_rng(0)
    truth = rng.standard_t(3, (2000, 2)) * 1e-80
    preds = np.stack([(s * truth / 1e-80 + rng.standard_normal((2000, 2))) * 1e-85
                      for s in (0.5, 0.2, 1.0)], axis=1)
    moments = Moments(truth, preds, "weighted_pearson")
    for t in range(2):
        exact = [metric_value(spec, truth[:, t], preds[:, j, t]) for j in range(3)]
        assert np.all(np.isfinite(exact)) and np.argmax(exact) == 2
        assert moments.scores(t, np.zeros(3)) == pytest.approx(exact, rel=1e-9)


# --- selection (M08, M11, M12) -------------------------------------------------------------


def test_iters_below_1_is_refused_by_name():
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((500, 2))
    cands = _candidates([truth + rng.standard_normal((500, 2)) for _ in range(2)])
    for iters in (0, -1):
        with pytest.raises(EnsembleError, match=f"--iters must be >= 1, got {iters}"):
            select(cands, truth, iters=iters)


def test_cli_select_with_iters_0_says_so_without_a_traceback(tmp_path, monkeypatch):
    spec = spec_from_dict({**SPEC.to_dict(), "warmup": 0, "seq_len": 10}, "<test>")
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((100, 2))
    cands = _on_a_file(tmp_path, monkeypatch, spec, truth, np.repeat(np.arange(10), 10),
                       np.tile(np.arange(10), 10), [truth + rng.standard_normal((100, 2))])
    result = run_cli("ensemble", "select", cands[0].path, "--iters", 0, "--out",
                     tmp_path / "e.toml", expect=2)
    assert "--iters must be >= 1, got 0" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "e.toml").exists()


def _targets_cut_apart():
    """Target 0: one candidate far better than the others (the cut at iteration 1); target 1:
    three equally good independent views (the blend improves for several iterations)."""
    rng = np.random.default_rng(7)
    n = 20_000
    truth = rng.standard_normal((n, 2))
    cands = []
    for j in range(3):
        noise = rng.standard_normal((n, 2))
        noise[:, 0] *= 0.2 if j == 0 else 3.0
        cands.append(truth + noise)
    return truth, _candidates(cands)


def test_per_target_trajectory_is_the_mean_of_the_targets_curves_and_the_cut_their_last():
    truth, cands = _targets_cut_apart()
    sel = select(cands, truth, iters=8, per_target=True)
    curves = sel.extra["trajectory_per_target"]
    cuts = sel.extra["best_iteration_per_target"]
    np.testing.assert_allclose(sel.trajectory, np.mean([curves["t0"], curves["t1"]], axis=0),
                               rtol=0, atol=1e-12)
    assert cuts["t0"] != cuts["t1"]  # (what the next line tells apart)
    assert sel.best_iteration == max(cuts.values())


# --- post-processing (M28, M33, M34, M51) --------------------------------------------------


def test_a_smoothing_that_changes_nothing_keeps_the_identity():
    """One step per sequence: every smoothing gives the blend itself, so ties: none chosen."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "r2"}}, "<test>")
    rng = np.random.default_rng(8)
    truth = rng.standard_normal((500, 2))
    blend = truth + rng.standard_normal((500, 2))
    tuned = tune_postprocess(spec, truth, blend, np.arange(500))
    assert tuned["smoothing"] == [0.0, 0.0]
    assert tuned["tuned"]["smoothing"] == [0.0, 0.0]


def test_the_tuning_restarts_the_smoothing_at_a_gap_in_a_sequences_rows(tmp_path, monkeypatch):
    """Rows 8 and 9 of each sequence are not scored: the tuning restarts its recursion where
    the rows jump, as at a new id."""
    spec = spec_from_dict({**SPEC.to_dict(), "warmup": 0, "seq_len": 20,
                           "metric": {"name": "r2"}}, "<test>")
    rng = np.random.default_rng(9)
    n_seq, length = 40, 20
    level = rng.standard_normal((n_seq, 2, 1, 2))  # a level before the gap, another after
    steps = np.arange(length)
    truth = (np.where(steps[None, :, None] < 9, level[:, 0], level[:, 1])
             + 0.3 * rng.standard_normal((n_seq, length, 2))).reshape(-1, 2)
    blend = truth + rng.standard_normal(truth.shape)
    ids = np.repeat(np.arange(n_seq), length)
    rows = np.flatnonzero(~np.isin(np.tile(steps, n_seq), [8, 9]))
    cands = _on_a_file(tmp_path, monkeypatch, spec, truth, ids, np.tile(steps, n_seq),
                       [blend[rows]], rows)
    doc, _, _ = select_ensemble([cands[0].path], iters=1, out=tmp_path / "e.toml",
                                postprocess=True)
    kept = length - 2
    at_ids = np.arange(0, len(rows), kept)
    at_gaps = np.sort(np.concatenate([at_ids, at_ids + 8]))
    blended = blend[rows].astype(np.float32).astype(np.float64)
    restarted = tune_postprocess(spec, truth[rows], blended, at_gaps)
    through = tune_postprocess(spec, truth[rows], blended, at_ids)
    assert restarted["after"] != through["after"]  # (what the next lines tell apart)
    post = doc["postprocess"]
    assert post["smoothing"] == restarted["smoothing"] and post["scale"] == restarted["scale"]
    assert post["after"] == pytest.approx(restarted["after"], rel=1e-12)


@pytest.mark.parametrize("post, edited", [
    ({"smoothing": [0.5, 0.0], "scale": [1.0, 1.0]}, ["a"]),
    ({"smoothing": [0.2, 0.0], "scale": [1.0, 1.5]}, ["b"]),
    ({"smoothing": [0.2, 0.0], "scale": [1.0, 1.0]}, []),
    ({"smoothing": [0.2 + 1e-13, 0.0], "scale": [1.0, 1.0]}, []),  # a TOML round trip's digits
])
def test_postprocess_edited_names_the_targets_whose_values_are_not_the_tuned(post, edited):
    tuned = {"smoothing": [0.2, 0.0], "scale": [1.0, 1.0]}
    assert postprocess_edited({**post, "tuned": tuned}, ["a", "b"]) == edited


def test_the_post_processing_row_goes_once_a_value_is_edited_by_hand(monkeypatch):
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")
    rng = np.random.default_rng(10)
    truth = rng.standard_normal((1000, 2))
    cands = _candidates([truth + rng.standard_normal((1000, 2)) for _ in range(2)])
    sel = select(cands, truth, iters=3)
    post = tune_postprocess(SPEC, truth, cands[0].preds.astype(np.float64), np.array([0]))
    row = "ensemble + post-processing"
    doc = ensemble_document(sel, cands, iters=3, init_best=0, postprocess=post)
    assert row in format_selection(doc)
    doc["postprocess"]["scale"] = [post["scale"][0] * 2, post["scale"][1]]
    text = format_selection(doc)
    assert row not in text and "post-processing t0: smoothing" in text
    assert "(edited by hand after tuning, which chose smoothing" in text


# --- the document (M53) --------------------------------------------------------------------


def test_a_candidate_never_picked_is_no_member(monkeypatch):
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")
    rng = np.random.default_rng(11)
    truth = rng.standard_normal((5000, 2))
    cands = _candidates([truth + 0.3 * rng.standard_normal((5000, 2)),
                         rng.standard_normal((5000, 2))])
    sel = select(cands, truth, iters=3)
    assert sel.counts[:, 1].max() == 0
    doc = ensemble_document(sel, cands, iters=3, init_best=0)
    assert [m["name"] for m in doc["members"]] == ["c0"]
    assert doc["ensemble"]["candidates"] == 2


@pytest.mark.parametrize("order", ["constant first", "constant last"])
def test_a_constant_candidate_takes_no_weight(order):
    """Adding a constant member shifts and shrinks a blend, which leaves its correlation as it
    was: the greedy pick of it is a tie, and a rounding gain of 1e-16 made the cut take it (in
    66 of 90 selections holding one), one more model packed for nothing."""
    spec = _pearson()
    for seed in range(5):
        rng = np.random.default_rng(seed)
        truth = rng.standard_normal((2000, 2))
        good = truth + rng.standard_normal(truth.shape)
        other = truth + 2 * rng.standard_normal(truth.shape)
        const = np.full_like(good, 0.3)
        preds = [const, good, other] if order == "constant first" else [good, other, const]
        sel = select(_candidates(preds, spec), truth, iters=20)
        assert sel.counts[:, 0 if order == "constant first" else 2].sum() == 0, seed
        assert sel.counts.sum(axis=1).tolist() == [sel.best_iteration] * 2


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_the_cut_is_relative_for_targets_of_a_tiny_scale(metric):
    """An error metric scales with the targets: a fixed 1e-12 tolerance took the first
    iteration for targets near 1e-12, 1.76x worse than the best blend found (r261)."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": metric}}, "<test>")
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((2000, 2))
    preds = [truth + rng.standard_normal(truth.shape) for _ in range(4)]
    at = {scale: select(_candidates([p * scale for p in preds], spec), truth * scale, iters=10)
          for scale in (1.0, 1e-13)}
    assert at[1e-13].best_iteration == at[1.0].best_iteration > 1
    assert at[1e-13].counts.tolist() == at[1.0].counts.tolist()
