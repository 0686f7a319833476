"""Mutation audit r321: behaviour of kit/ensemble.py (candidates, in-sample runs, selection) and
kit/reports.py (kit runs) that no other test pinned."""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path

import numpy as np
import tomli_w

import kit.ensemble as ensemble_module
from kit.competition import load_spec, spec_from_dict
from kit.ensemble import (
    Candidate,
    ensemble_document,
    expand_candidates,
    format_selection,
    select,
    validated_on_training_rows,
)
from kit.reports import list_runs
from tests.frames import small_spec
from tests.test_reports import make_run, write_data


def _data(tmp_path: Path) -> tuple[Path, Path]:
    return write_data(tmp_path / "data", small_spec(), oracle=False)


def _edit_config(run: Path, **data) -> None:
    config = tomllib.loads((run / "config.toml").read_text())
    config["data"].update(data)
    (run / "config.toml").write_text(tomli_w.dumps(config))


def _edit_metrics(run: Path, **fields) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | fields))


def _row(root: Path, run: Path) -> dict:
    return next(r for r in list_runs(root) if r["path"] == str(run))


# --- which runs were validated on their training rows (kit runs, select over a folder) -----


def test_a_group_split_run_whose_valid_names_its_train_file_is_held_out(tmp_path):
    """Kills: validated_on_training_rows taking only data.split = "random" as held out (a run
    retrained with split = "group", as the in-sample advice says, was still left out)."""
    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    run = make_run(root, "e", "20240101-000000-s1", valid, spec_path, train=valid)
    assert "the same path" in validated_on_training_rows(run)  # (the case itself)
    _edit_config(run, split="group", group="id")
    assert validated_on_training_rows(run) is None
    row = _row(root, run)
    assert "in_sample" not in row and "training rows" not in row["validated"], row


def test_a_fold_run_recorded_only_in_its_metrics_is_held_out(tmp_path):
    """Kills: validated_on_training_rows ignoring metrics.json's `fold` (a fold run from before
    config's data.fold key read as validated on its training rows)."""
    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    run = make_run(root, "e", "20240101-000000-s1", valid, spec_path, train=valid)
    _edit_metrics(run, fold={"k": 3, "index": 0})
    assert validated_on_training_rows(run) is None
    assert "in_sample" not in _row(root, run)


def test_a_valid_path_spelt_otherwise_for_the_train_file_is_in_sample(tmp_path):
    """Kills: _same_file_recorded without its os.path.samefile branch (data.valid naming the
    train file by another spelling, no digests recorded, passed as held out)."""
    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    other = valid.parent / ".." / valid.parent.name / valid.name  # the same file
    run = make_run(root, "e", "20240101-000000-s1", valid, spec_path, train=other)
    held = make_run(root, "e", "20240102-000000-s2", valid, spec_path, seed=2)
    for folder in (run, held):  # (select needs one; nothing here loads it)
        (folder / "best.pt").write_bytes(b"")
    assert validated_on_training_rows(run) == (
        f"data.valid {str(valid)!r} is data.train {str(other)!r}: the same file, with "
        "data.split = \"file\"")
    row = _row(root, run)
    assert row["in_sample"].endswith("the same file, with data.split = \"file\"")
    assert row["validated"] == "valid.parquet (its training rows)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert expand_candidates([root / "e"]) == [held.resolve()]
    assert any("1 run(s) validated on the rows they trained on" in str(w.message)
               and run.name in str(w.message) for w in caught), [str(w.message) for w in caught]


# --- the validated label of kit runs ------------------------------------------------------


def test_a_tail_cut_validation_is_labelled_as_its_last_steps(tmp_path):
    """Kills: _validation_set labelling a truncate = "tail" cut "first N steps of" (other rows
    than a head cut's, listed as the same set)."""
    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    head = make_run(root, "e", "20240101-000000-s1", valid, spec_path)
    tail = make_run(root, "e", "20240102-000000-s2", valid, spec_path, seed=2)
    for run, how in ((head, "head"), (tail, "tail")):
        _edit_config(run, seq_len=8, truncate=how)
        _edit_metrics(run, valid_truncated=True)
    assert _row(root, head)["validated"] == "first 8 steps of valid.parquet"
    assert _row(root, tail)["validated"] == "last 8 steps of valid.parquet"
    assert _row(root, head)["validation_set"] != _row(root, tail)["validation_set"]


def test_a_max_valid_seqs_that_cut_the_file_is_in_the_label(tmp_path):
    """Kills: _validation_set leaving out `N seqs of` where train.max_valid_seqs kept only the
    first N sequences (and a limit that cut nothing staying out of it)."""
    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    cut = make_run(root, "e", "20240101-000000-s1", valid, spec_path, n_seqs=2)
    whole = make_run(root, "e", "20240102-000000-s2", valid, spec_path, seed=2)
    for run, limited in ((cut, True), (whole, False)):
        config = tomllib.loads((run / "config.toml").read_text())
        config["train"]["max_valid_seqs"] = 2 if limited else 10
        (run / "config.toml").write_text(tomli_w.dumps(config))
        _edit_metrics(run, valid_limited=limited)
    assert _row(root, cut)["validated"] == "2 seqs of valid.parquet"
    assert _row(root, whole)["validated"] == "valid.parquet"


# --- the selection and its document --------------------------------------------------------

SPEC = load_spec("predictorium")


def _candidates(preds: list[np.ndarray], spec=SPEC) -> list[Candidate]:
    rows = np.arange(len(preds[0]))
    return [Candidate(f"c{i}", Path(f"c{i}"), [], p.astype(np.float32), rows, Path("x"), spec)
            for i, p in enumerate(preds)]


def test_the_best_single_of_an_error_metric_is_its_lowest(monkeypatch):
    """Kills: best_single_per_target (and ensemble_document's best single) taking the highest
    rmse as the best (the per-target panels compared the ensemble with the worst run)."""
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "rmse"}}, "<test>")
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((2000, 2))
    cands = _candidates([truth + 3.0 * rng.standard_normal(truth.shape),
                         truth + 0.3 * rng.standard_normal(truth.shape)], spec)
    sel = select(cands, truth, iters=3)
    doc = ensemble_document(sel, cands, iters=3, init_best=0)
    best = doc["ensemble"]["best_single"]
    assert best["name"] == "c1" and best["score"] == sel.singles[1]["score"]
    assert {t: b["name"] for t, b in doc["ensemble"]["best_single_per_target"].items()} == {
        t: "c1" for t in spec.outputs}
    assert "best single (c1)" in format_selection(doc)


def _two_member_selection(monkeypatch, seed: int) -> dict:
    """The ensemble document of a selection that keeps both of two noisy candidates."""
    monkeypatch.setattr(ensemble_module, "checkpoint_digest", lambda run: "-")
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((3000, 2))
    cands = _candidates([truth + rng.standard_normal(truth.shape) for _ in range(2)])
    doc = ensemble_document(select(cands, truth, iters=6), cands, iters=6, init_best=0)
    assert len(doc["members"]) == 2
    return doc


def test_a_member_zeroed_by_hand_is_not_counted_as_selected(monkeypatch):
    """Kills: format_selection counting every member as selected (one whose weights were set
    to 0 by hand, left out of the package, was still said to be selected)."""
    doc = _two_member_selection(monkeypatch, seed=5)
    assert "2 of 2 candidates selected" in format_selection(doc)
    doc["members"][1]["weights"] = [0.0, 0.0]
    assert "\n1 of 2 candidates selected" in format_selection(doc)


def test_a_killed_run_is_told_apart_by_the_digest_its_start_recorded(tmp_path):
    """Kills: _validated_digest without the start record's fallback (a killed run, no
    metrics.json, had no validated_sha256: its rows joined another file's set of one name)."""
    from kit.run_record import file_sha256

    valid, spec_path = _data(tmp_path)
    root = tmp_path / "runs"
    killed = make_run(root, "e", "20240101-000000-s1", valid, spec_path, finished=False)
    digest = file_sha256(str(valid), None)
    (killed / "data_sha256.json").write_text(json.dumps({str(valid): digest}))
    assert _row(root, killed)["validated_sha256"] == digest


def test_the_report_names_no_zeroed_member_as_trained_under_other_metric_settings(
        tmp_path, monkeypatch):
    """Kills: the ensemble report's _scored_on naming a member zeroed by hand (out of the
    package) among those trained under other metric settings."""
    from kit.ensemble import write_ensemble
    from kit.reports import write_ensemble_report

    doc = _two_member_selection(monkeypatch, seed=6)
    for m in doc["members"]:  # (runs gone since: the report says so, and goes on)
        m["runs"] = [str(tmp_path / "runs" / "e" / m["name"])]
        m["trained_metric"] = {"name": "weighted_pearson", "clip": [-0.01, 0.01]}
    doc["members"][1].update(weights=[0.0, 0.0], weight=0.0)
    path = write_ensemble(doc, tmp_path / "e.toml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = write_ensemble_report(path, tmp_path / "report").read_text()
    said = next(line for line in text.splitlines() if "other metric settings" in line)
    assert "c0 (weighted_pearson, clip ±0.01)" in said and "c1" not in said, said


def test_a_blend_that_scores_a_perfect_zero_error_is_kept():
    """Kills: _cut taking values strictly above top - rounding (at a best rmse of exactly 0
    nothing is, and the cut fell back to iteration 1: one run at 0.5 for a perfect pair)."""
    spec = spec_from_dict({**SPEC.to_dict(), "metric": {"name": "rmse"}}, "<test>")
    truth = np.random.default_rng(7).integers(-4, 5, size=(400, 2)).astype(np.float64)
    sel = select(_candidates([truth + 0.5, truth - 0.5], spec), truth, iters=4)
    assert sel.trajectory[:2] == [0.5, 0.0]
    assert sel.best_iteration == 2 and sel.score == 0.0
    assert sel.counts.tolist() == [[1, 1], [1, 1]]
