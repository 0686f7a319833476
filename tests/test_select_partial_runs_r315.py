"""r315: finished runs whose files a candidate needs were deleted (val_preds.npy and val_rows.npy,
"most of a run"; best.pt), as kit ensemble select sees them in a folder and named by itself."""

import json
import shutil
from pathlib import Path

import pytest

from kit.ensemble import EnsembleError, expand_candidates, select_ensemble
from tests.test_cv_r311 import _copy_group, trained  # noqa: F401  (a fixture, used by name)


def _experiment(runs: dict, into: Path) -> tuple[Path, Path, Path]:
    """An experiment folder holding copies of two finished GRU runs (seeds 5 and 6)."""
    exp = into / "gru"
    kept, other = (Path(shutil.copytree(runs[key], exp / runs[key].name))
                   for key in ("gru", "gru_b"))
    return exp, kept.resolve(), other.resolve()


def _score(run: Path) -> str:
    return f"{json.loads((run / 'metrics.json').read_text())['score']:.4f}"


@pytest.mark.parametrize("deleted", [("val_preds.npy", "val_rows.npy"), ("val_rows.npy",)])
def test_a_finished_run_without_its_predictions_is_named_when_its_folder_leaves_it_out(
        runs, tmp_path, deleted):
    """The best run, its predictions deleted, was left out without a word ("1 of 2 candidates"
    with three finished runs); its val_rows.npy alone deleted read as "damaged"."""
    exp, kept, other = _experiment(runs, tmp_path)
    for name in deleted:
        (other / name).unlink()
    with pytest.warns(UserWarning, match=(
            rf"{exp}: left out 1 finished run\(s\) whose files a candidate needs are gone: "
            rf"{other.name} \(score {_score(other)}; {', '.join(deleted)} missing\); its score "
            r"stays in kit runs .*restore the missing files from a copy, or train it again")):
        assert expand_candidates([exp]) == [kept]


def test_a_finished_run_named_without_its_predictions_is_refused_as_finished(runs, tmp_path):
    """Named by itself it was "a run without validation predictions: it has not finished its
    first epoch", of a run whose metrics.json says it finished."""
    _, kept, other = _experiment(runs, tmp_path)
    (other / "val_preds.npy").unlink()
    (other / "val_rows.npy").unlink()
    with pytest.raises(EnsembleError, match=(
            rf"{other}: the run finished but its val_preds.npy, val_rows.npy are missing "
            r"\(deleted or not copied; metrics.json says it finished\): its score stays in kit "
            r"runs .*or leave it out")) as refused:
        expand_candidates([other, kept])
    assert "has not finished" not in str(refused.value)


def test_a_finished_run_without_its_best_pt_leaves_the_rest_of_its_folder_selectable(
        runs, tmp_path):
    """best.pt and last.pt of one run deleted refused the whole folder, with no way to leave
    that run out of it."""
    exp, kept, other = _experiment(runs, tmp_path)
    (other / "best.pt").unlink()
    (other / "last.pt").unlink(missing_ok=True)
    with pytest.warns(UserWarning, match=rf"left out 1 finished run\(s\) .*: {other.name} "
                                         rf"\(score {_score(other)}; best.pt missing\)"):
        doc, _, _ = select_ensemble([exp], iters=2, out=tmp_path / "e.toml")
    assert [m["name"] for m in doc["members"]] == [f"gru/{kept.name}"]
    with pytest.raises(EnsembleError, match=rf"{other}: the run finished but its best.pt is "
                                            r"missing"):
        select_ensemble([other], iters=2, out=tmp_path / "e2.toml")


def test_a_folder_with_no_complete_run_left_is_refused_naming_each(runs, tmp_path):
    """Nothing selectable left: refused, naming every run left out and what each lacks."""
    exp, kept, other = _experiment(runs, tmp_path)
    (kept / "best.pt").unlink()
    (other / "val_preds.npy").unlink()
    with pytest.raises(EnsembleError, match=(
            rf"{exp}: nothing left to select: 2 finished run\(s\) whose files a candidate "
            rf"needs are gone: {kept.name} \(score {_score(kept)}; best.pt missing\); "
            rf"{other.name} \(score {_score(other)}; val_preds.npy missing\); their scores "
            r"stay in kit runs")):
        expand_candidates([exp])


def test_a_run_that_never_scored_is_not_named_as_one_whose_files_are_gone(runs, tmp_path):
    """A run that diverged before any epoch scored never had predictions: left out of its
    folder as before, and named for that when given by itself."""
    exp, kept, _ = _experiment(runs, tmp_path)
    diverged = exp / "20261206-000000-s9"
    diverged.mkdir()
    shutil.copy(kept / "config.toml", diverged / "config.toml")
    (diverged / "metrics.json").write_text(json.dumps(
        {"finished": True, "score": None, "per_target": {}, "diverged": "loss inf"}))
    (kept / "val_rows.npy").unlink()  # one run whose files are gone: named, it alone
    with pytest.warns(UserWarning, match=r"finished run\(s\) whose files") as said:
        assert expand_candidates([exp]) == [(exp / runs["gru_b"].name).resolve()]
    assert [str(w.message) for w in said if diverged.name in str(w.message)] == []
    with pytest.raises(EnsembleError, match="diverged before any epoch scored"):
        expand_candidates([diverged])


def test_an_out_of_fold_group_missing_files_is_left_out_of_its_folder(trained, tmp_path):  # noqa: F811
    """A fold run's best.pt, or the group's oof_preds.npy, deleted: the group is left out of its
    folder with a warning naming the file, and refused with it when named."""
    exp = tmp_path / "gru"
    whole = _copy_group(trained["oof5"], exp)
    group = _copy_group(trained["oof6"], exp)
    fold = next(exp.glob("*-s6-fold1of2"))
    (fold / "best.pt").unlink()
    with pytest.warns(UserWarning, match=rf"left out 1 finished run\(s\) .*: {group.name} "
                                         rf"\(score [-0-9.]+; {fold.name}/best.pt missing\)"):
        assert expand_candidates([exp]) == [whole.resolve()]
    with pytest.raises(EnsembleError, match=rf"{group}: the out-of-fold group finished but its "
                                            rf"{fold.name}/best.pt is missing"):
        select_ensemble([group], iters=2, out=tmp_path / "e.toml")
    shutil.copy(next(exp.glob("*-s5-fold1of2")) / "best.pt", fold / "best.pt")
    (group / "oof_preds.npy").unlink()
    with pytest.warns(UserWarning, match=rf"{group.name} \(score [-0-9.]+; oof_preds.npy "
                                         r"missing\)"):
        assert expand_candidates([exp]) == [whole.resolve()]
    with pytest.raises(EnsembleError, match=rf"{group}: the out-of-fold group finished but its "
                                            r"oof_preds.npy is missing"):
        expand_candidates([group])
