"""kit parity's comparisons and checks: which pairs of paths it compares, the hostile rows and
the tolerance of the NaN/inf check, the warm-up check, where a difference is located, and a
report not recorded into a package changed meanwhile. One tiny GRU package for the module;
the location and finiteness rules on small arrays."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from kit import parity
from kit.errors import SubmissionError
from kit.export.pack import pack_run, read_manifest
from kit.parity import (
    Check,
    ParityReport,
    Rows,
    Tolerance,
    check_nonfinite,
    compare,
    first_difference,
    paths_agree,
    record_report,
    run_parity,
)
from tests.test_pack import _edit_solution, _failed

# the runtime's copy of each row into its float32 input buffer, as solution.py spells it
ROW_COPY = "            self.x_row[...] = row  # float64 -> float32 (faster than np.copyto)\n"
RETURN = "        return self.y_row.copy()\n"
STEP_LINE = "        seq_ix, step = data_point.seq_ix, data_point.step_in_seq\n"


@pytest.fixture(scope="module")
def package(workspace, tmp_path_factory) -> Path:
    """One GRU trained for an epoch and packed: parity needs weights, not quality."""
    from kit.train.recipe import train_experiment

    root = tmp_path_factory.mktemp("parity")
    run = Path(train_experiment(str(workspace / "experiments" / "gru.toml"), progress=False,
                                runs_dir=root / "runs")[0]["run_dir"])
    return pack_run(run, "gru", root / "submissions").folder


@pytest.fixture
def data(workspace) -> Path:
    return workspace / "data/valid.parquet"


def _copy(package: Path, tmp_path: Path, old: str | None = None, new: str = "") -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(package, folder)
    if old is not None:
        _edit_solution(folder, old, new)
    return folder


def _check(report, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


# --- whole runs on the package -------------------------------------------------------------


@pytest.fixture(scope="module")
def skewed_one_sequence(package, workspace):
    """Parity of the good package on one sequence with training's (sequence) path 1e-3 away
    from the stream modules: a bug the export would share, which only the sequence pairs show."""
    real = parity.sequence_path
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parity, "sequence_path", lambda member, rows: real(member, rows) + 1e-3)
        return run_parity(package, workspace / "data/valid.parquet", seqs=1, record=False)


def test_a_sequence_path_apart_from_the_step_path_fails_paths_agree(skewed_one_sequence):
    report = skewed_one_sequence
    assert _failed(report) == {"paths agree"}, report.format()
    detail = _check(report, "paths agree").detail
    # both sequence pairs are over on every row; the first of the tied pairs is named
    assert "(sequence vs step)" in detail
    assert [d["pair"] for d in report.diffs] == ["sequence vs step", "sequence vs package",
                                                 "step vs package"]
    over = {d["pair"]: d["rows_over"] for d in report.diffs}
    assert over["sequence vs step"] == over["sequence vs package"] == report.scored_rows
    assert over["step vs package"] == 0


def test_one_sequence_still_has_its_warmup_rows_changed(skewed_one_sequence):
    """With --seqs 1 there is no other sequence to take warm-up rows from: they get noise, and
    a GRU's predictions after them change, as the step path says (not 'n/a')."""
    warmup = _check(skewed_one_sequence, "warm-up processed")
    assert warmup.ok and warmup.detail.startswith("other warm-up rows change every sequence's "
                                                  "predictions"), warmup.detail


def test_a_package_that_zeroes_inf_inputs_fails_the_nan_inf_check(package, data, tmp_path):
    """The hostile rows hold +inf and -inf (the guard fills them with the last finite value):
    a runtime mapping them to 0 is caught."""
    folder = _copy(package, tmp_path, ROW_COPY,
                   ROW_COPY + "            self.x_row[np.isinf(self.x_row)] = 0.0\n")
    report = run_parity(folder, data, seqs=2, record=False)
    assert _failed(report) == {"NaN/inf rows"}, report.format()
    assert "scored row(s) differ" in _check(report, "NaN/inf rows").detail


def test_the_hostile_rows_hold_both_infinities(package, data):
    """The rows the NaN/inf check feeds: NaN, +inf and -inf each, on a real sample."""
    from kit.scoring.score import load_rows

    spec = parity.spec_from_dict(read_manifest(package)["spec"], "manifest")
    rows = Rows.of(load_rows(data, spec, 2).values)
    dirty = parity.corrupted(rows, np.random.default_rng(0)).values[:, 3:]
    assert np.isnan(dirty).any() and (dirty == np.inf).any() and (dirty == -np.inf).any()


def test_a_package_off_by_5e_4_on_nan_inf_rows_fails_at_the_default_tolerance(package, data,
                                                                               tmp_path):
    folder = _copy(package, tmp_path, RETURN,
                   "        return self.y_row.copy() + (5e-4 if not np.isfinite(self.x_row)"
                   ".all() else 0.0)\n")
    report = run_parity(folder, data, seqs=2, record=False)
    assert _failed(report) == {"NaN/inf rows"}, report.format()
    assert "differ by more than 1e-05" in _check(report, "NaN/inf rows").detail


def test_a_package_that_halves_warmup_rows_fails_the_warmup_check(package, data, tmp_path):
    """Predictions that change with the warm-up rows are not enough: they must change as the
    step path says."""
    folder = _copy(package, tmp_path, STEP_LINE,
                   "        if not data_point.need_prediction:\n            self.x_row *= 0.5\n"
                   + STEP_LINE)
    report = run_parity(folder, data, seqs=2, record=False)
    assert "warm-up processed" in _failed(report), report.format()
    assert _check(report, "warm-up processed").detail.startswith(
        "with other warm-up rows, "), report.format()


# --- the NaN/inf check on small arrays -----------------------------------------------------


class _Reference:
    """A stand-in for parity's Reference: the step path's predictions, given."""

    def __init__(self, predictions: np.ndarray):
        self.predictions = predictions

    def predict(self, path, rows):
        return self.predictions


NONFINITE_ROWS = np.array([[7, 0, 1, np.nan], [7, 1, 1, np.inf], [7, 2, 1, 1.0]])


def test_non_finite_predictions_fail_even_where_the_step_path_predicts_them():
    """A guard bug shared by the graph and the step path gives NaN on both: equal, but not
    finite, and the check says where."""
    rows = Rows.of(NONFINITE_ROWS)
    got = np.array([[0.0], [np.nan], [np.nan]])
    check = check_nonfinite(_Reference(got.copy()), rows, got, Tolerance(1e-5, 1e-6))
    assert not check.ok
    assert check.detail == "non-finite prediction at seq 7, step 1 after NaN/inf inputs"


def test_the_nan_inf_check_holds_predictions_to_the_runs_tolerance():
    rows = Rows.of(NONFINITE_ROWS)
    want = np.zeros((3, 1))
    got = want + 5e-4
    strict = check_nonfinite(_Reference(want), rows, got, Tolerance(1e-5, 0.0))
    assert not strict.ok and "3 scored row(s) differ by more than 1e-05" in strict.detail
    assert check_nonfinite(_Reference(want), rows, got, Tolerance(1e-3, 0.0)).ok
    assert not check_nonfinite(_Reference(want), rows, got + 1e-3, Tolerance(1e-3, 0.0)).ok


# --- where a difference is -----------------------------------------------------------------

# three scored rows (seq 7 steps 0 and 1, seq 8 step 5), two targets; the package is off on the
# second and third rows
WHERE = np.array([[7, 0, 1, 0.0], [7, 1, 1, 0.0], [8, 5, 1, 0.0]])
TARGETS = ["t0", "t1"]
EXACT = Tolerance(1e-5, 0.0)


def _off_rows():
    reference = np.zeros((3, 2))
    package = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]])
    return reference, package


def test_compare_locates_the_first_row_over_the_tolerance():
    reference, package = _off_rows()
    diff = compare("step vs package", reference, package, Rows.of(WHERE), TARGETS, EXACT)
    assert diff["rows_over"] == 2
    assert diff["first_over"] == {"seq": 7.0, "step": 1.0}


def test_first_difference_names_the_first_row_that_differs():
    reference, package = _off_rows()
    assert first_difference(package, reference, WHERE, EXACT) == (
        "2 scored row(s) differ by more than 1e-05; first at seq 7, step 1 (max 0.5)")
    assert first_difference(reference, reference, WHERE, EXACT) == ""


def test_paths_agree_names_the_pair_with_most_rows_over():
    reference, package = _off_rows()
    rows = Rows.of(WHERE)
    one_row = compare("sequence vs package", reference, reference + [[1, 0], [0, 0], [0, 0]],
                      rows, TARGETS, EXACT)
    two_rows = compare("step vs package", reference, package, rows, TARGETS, EXACT)
    for diffs in ([one_row, two_rows], [two_rows, one_row]):
        check = paths_agree(diffs, EXACT)
        assert not check.ok
        assert check.detail.startswith("2 scored row(s) differ by more than 1e-05 "
                                       "(step vs package); first at seq 7, step 1; "), check.detail
        # the largest difference is the other pair's, and is named as such
        assert "max abs difference 1.00e+00 (sequence vs package), worst at t0, seq 7, step 0" \
            in check.detail


# --- recording the report ------------------------------------------------------------------


def _report(folder: Path) -> ParityReport:
    return ParityReport(str(folder), "data", 1, 3, 3, 1e-5, 1e-6,
                        {"step": {"score": 0.5, "per_target": {"t0": 0.5}}}, [],
                        [Check("paths agree", True, "fine")])


def test_a_package_that_is_not_there_is_named_with_the_one_a_killed_pack_set_aside(tmp_path):
    """kit parity of a missing folder said "no manifest.json; is this a package written by
    kit pack?" (r271); after a pack killed mid-swap the old package is set aside: named."""
    from kit.parity import default_data

    gone = tmp_path / "subs" / "p2"
    gone.parent.mkdir()
    for call in (lambda: run_parity(gone, tmp_path / "data.parquet"),
                 lambda: default_data(gone)):
        with pytest.raises(SubmissionError, match=r"p2: no such package folder or zip$"):
            call()
    aside = tmp_path / "subs" / ".p2.previous-999.06df0978-abcd1234"
    aside.mkdir()
    with pytest.raises(SubmissionError, match=rf"left the old one at {aside}$"):
        run_parity(gone, tmp_path / "data.parquet")


def test_a_report_leaves_a_zip_of_the_users_own_and_the_folder_and_zip_agree(package,
                                                                             tmp_path):
    """kit parity overwrote a NAME.zip of the user's own, which kit pack refuses to touch; and
    a zip it could not write left the folder's manifest rewritten, the zip not, with a warning
    that the package was as it was (r263)."""
    import zipfile

    from kit.submission import zip_path_of

    folder = _copy(package, tmp_path)
    tested = read_manifest(folder)
    theirs = zip_path_of(folder)
    with zipfile.ZipFile(theirs, "w") as archive:
        archive.writestr("README.md", "my notes")
    kept = theirs.read_bytes()
    with pytest.warns(UserWarning, match=r"recorded in .*manifest.json, not in .*edited.zip: "
                      "that is not a zip kit pack wrote, so it is left as it is"):
        record_report(folder, dict(tested), _report(folder))
    assert theirs.read_bytes() == kept
    assert read_manifest(folder)["parity"] == _report(folder).to_dict()
    # no zip in the way, but it cannot be written: the manifest goes back as it was
    theirs.unlink()
    before = (folder / "manifest.json").read_bytes()
    (folder.parent / "edited.zip.tmp").mkdir()  # where the zip is written first
    other = _report(folder)
    other.checks = [Check("paths agree", False, "not fine")]
    with pytest.raises(OSError):
        record_report(folder, dict(tested), other)
    assert (folder / "manifest.json").read_bytes() == before and not theirs.exists()
    (folder.parent / "edited.zip.tmp").rmdir()
    record_report(folder, dict(tested), other)  # and once it can: both
    assert read_manifest(folder)["parity"] == other.to_dict()
    with zipfile.ZipFile(theirs) as archive:
        assert archive.read("manifest.json") == (folder / "manifest.json").read_bytes()


def test_a_report_is_not_recorded_into_a_package_whose_files_were_edited_meanwhile(package,
                                                                                    tmp_path):
    """solution.py edited while parity ran (the manifest not rewritten: its file list is the
    same) is not the package that was tested."""
    folder = _copy(package, tmp_path)
    tested = read_manifest(folder)
    tested.pop("parity", None)
    solution = folder / "solution.py"
    solution.write_text(solution.read_text() + "\nEDITED = 1\n")
    before = (folder / "manifest.json").read_text()
    assert record_report(folder, dict(tested), _report(folder)) is False
    assert (folder / "manifest.json").read_text() == before
    # as tested, it is recorded
    solution.write_text((package / "solution.py").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_report(folder, dict(tested), _report(folder))
    assert read_manifest(folder)["parity"] == _report(folder).to_dict()


def test_a_tolerance_of_zero_passes_identical_predictions_and_says_its_terms():
    """|a - b| <= atol + rtol * size: equal values pass at --atol 0 --rtol 0 (a strict < failed
    them), a difference of exactly the tolerance passes, and the message names both terms
    (r281)."""
    a = np.array([[1.0, -2.0], [0.5, 4.0]])
    assert Tolerance(0.0, 0.0).close(a, a.copy()).all()
    edge = Tolerance(0.25, 0.0).close(a, a + 0.25)
    assert edge.all() and not Tolerance(0.25, 0.0).close(a, a + 0.5).any()
    assert str(Tolerance(1e-5, 1e-6)) == "1e-05 + 1e-06 * max|y|"
    assert str(Tolerance(1e-5, 0.0)) == "1e-05"
