"""Rules of kit/parity.py that no test held, found by a mutation audit (r281, pinned in r284):
each test fails with the one-line change of parity.py its docstring names. Small arrays where
the rule is a function's; a hand-written solution.py (a real package run by the scorer's child,
no model) where the rule needs the package run; one raw GRU package where only run_parity
shows it."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from kit.competition import load_spec
from kit.export.pack import pack_run
from kit.metrics import SHOWN_OUTPUTS
from kit.parity import (
    Package,
    ParityReport,
    Rows,
    Tolerance,
    check_order,
    check_warmup,
    compare,
    copy_package,
    corrupted,
    in_project,
    run_parity,
    warmup_rows,
)
from tests.conftest import raw_gru_run
from tests.frames import small_spec
from tests.test_pack import _failed
from tests.test_parity import _Reference

TOL = Tolerance(1e-5, 1e-6)
SPEC = small_spec()  # 32 features, 2 targets
WIDTH = len(SPEC.features)


def _rows(lengths: list[int], first_scored: list[int | None]) -> Rows:
    """Sequences with ids 100, 101, ... of the given lengths, scored from first_scored on
    (None: never), random features."""
    values = []
    for i, (n, first) in enumerate(zip(lengths, first_scored, strict=True)):
        pos = np.arange(n)
        need = pos >= first if first is not None else np.zeros(n, bool)
        values.append(np.column_stack([np.full(n, 100.0 + i), pos, need,
                                       np.random.default_rng(i).standard_normal((n, WIDTH))]))
    return Rows.of(np.concatenate(values))


def _seq_id(rows: Rows, s: int) -> int:
    return int(rows.values[rows.seq == s][0, 0])


def _hand_package(folder: Path, predict: str, init: str = "pass") -> Package:
    """A package of one solution.py whose PredictionModel runs `predict` (the row is `dp`) and
    returns zeros on scored rows."""
    folder.mkdir()
    (folder / "solution.py").write_text(
        "import time\n\nimport numpy as np\n\n\nclass PredictionModel:\n"
        f"    def __init__(self):\n        {init}\n\n"
        f"    def predict(self, dp):\n        {predict}\n"
        f"        return np.zeros({SPEC.n_outputs}) if dp.need_prediction else None\n")
    return Package(folder, SPEC, [])


ZEROS = "pass"  # a predict() that only returns the zeros


# --- where the differences are --------------------------------------------------------------

# three scored rows (seq 7 steps 0 and 1, seq 8 step 5), two targets
WHERE = Rows.of(np.array([[7, 0, 1, 0.0], [7, 1, 1, 0.0], [8, 5, 1, 0.0]]))


def test_a_nan_on_one_side_is_the_worst_difference():
    """M13 (no NaN -> inf in compare): the NaN row's difference was NaN, the report's max abs
    NaN, not the worst (inf) at that row."""
    a = np.zeros((3, 2))
    b = np.array([[0.5, 0.0], [np.nan, 0.0], [0.0, 0.25]])
    diff = compare("step vs package", a, b, WHERE, ["t0", "t1"], TOL)
    assert diff["per_target"]["t0"] == {"max_abs": np.inf, "max_rel": np.inf, "seq": 7.0,
                                        "step": 1.0}
    assert diff["max_abs"] == np.inf


def test_the_largest_relative_difference_is_looked_for_over_every_row():
    """M14 (max_rel at the max abs row): docs/pack.md reports per target the max relative
    difference, usually at another row (a prediction near 0) than the max absolute one."""
    a = np.array([[100.0, 1.0], [0.002, 1.0], [1.0, 1.0]])
    b = np.array([[100.5, 1.0], [0.001, 1.0], [1.0, 1.0]])
    t0 = compare("step vs package", a, b, WHERE, ["t0", "t1"], TOL)["per_target"]["t0"]
    assert (t0["max_abs"], t0["seq"], t0["step"]) == (pytest.approx(0.5), 7.0, 0.0)
    assert t0["max_rel"] == pytest.approx(0.5)  # 0.001 / 0.002 at seq 7 step 1, not 0.5 / 100.5


# --- the hostile rows and the warm-up rows ---------------------------------------------------


def test_the_hostile_rows_start_each_sequence_with_a_nan_and_cover_an_unscored_one():
    """M29 (no NaN in each sequence's first row) and M32 (first_scored not capped at the
    sequence's length: int64 max + 20 wrapped negative, so a sequence with no scored row got no
    leading NaN run at all, where docs/pack.md's run covers it whole)."""
    rows = _rows([30, 40, 25], [10, 10, None])
    dirty = corrupted(rows, np.random.default_rng(0)).values[:, 3:]
    starts = np.flatnonzero(rows.pos == 0)
    assert np.isnan(dirty[starts, 0]).all()
    assert np.isnan(dirty[rows.seq == 2, 1]).all()  # the unscored sequence: all of it
    assert np.isnan(dirty[(rows.seq == 1) & (rows.pos < 30), 1]).all()  # 20 past its first


def test_warmup_rows_end_before_the_first_scored_row_and_may_be_none():
    """M23 (<= in warmup_rows): the first scored row was altered as a warm-up row, and a
    competition scored from step 0 never got its 'n/a' (check_warmup then runs no package)."""
    rows = _rows([8, 6], [3, 0])
    np.testing.assert_array_equal(warmup_rows(rows), (rows.seq == 0) & (rows.pos < 3))
    none = _rows([5, 4], [0, 0])
    assert not warmup_rows(none).any()
    check = check_warmup(None, None, none, np.zeros((9, 2)), np.zeros((9, 2)), TOL)
    assert check.ok and check.detail == "n/a: no warm-up rows in this competition"


def test_every_judged_sequence_must_change_with_its_warmup_rows(tmp_path):
    """M25 (.any() for .all()): docs/pack.md's warm-up check wants every sequence's
    predictions to change; one that kept them while its step path changed passed."""
    rows = _rows([12, 12], [4, 4])
    package = _hand_package(tmp_path / "zeros", ZEROS)  # zeros whatever the rows
    n = int(rows.need.sum())
    first = rows.seq[rows.need] == 0
    # the package's clean predictions: the first sequence's differ from its altered-row ones,
    # the second's do not, where the step path says both change (from 1 to 0)
    clean = np.where(first[:, None], 1.0, 0.0) * np.ones((n, 2))
    check = check_warmup(package, _Reference(np.zeros((n, 2))), rows, clean, np.ones((n, 2)),
                         TOL)
    assert not check.ok
    # the id as every other parity message names it (it printed "[101.0]", the rows' float)
    assert check.detail.startswith(f"predictions of sequence(s) {_seq_id(rows, 1)} do not "
                                   "change when their warm-up rows change"), check.detail


def test_a_step_path_change_within_the_tolerance_judges_no_sequence(tmp_path):
    """M27 (exact != for the tolerance): float noise in the step path (1e-9) judged a model
    without memory and failed a package whose predictions rightly did not change."""
    rows = _rows([12, 12], [4, 4])
    package = _hand_package(tmp_path / "zeros", ZEROS)
    n = int(rows.need.sum())
    zeros = np.zeros((n, 2))
    check = check_warmup(package, _Reference(zeros), rows, zeros, zeros + 1e-9, TOL)
    assert check.ok and check.detail.startswith(
        "n/a: the step path's predictions do not depend on the warm-up rows"), check.detail


# --- the package run -------------------------------------------------------------------------


def test_a_package_that_raises_in_the_order_checks_fails_them_not_parity(tmp_path):
    """M22 (attempt() not catching SubmissionError): a package raising only on the order
    checks' rows (an id that comes back) took the whole report with it."""
    package = _hand_package(
        tmp_path / "once", init="self.seen, self.live = set(), None",
        predict="if dp.seq_ix != self.live:\n"
                "            if dp.seq_ix in self.seen:\n"
                "                raise ValueError(f'id {dp.seq_ix} came back')\n"
                "            self.seen.add(dp.seq_ix)\n"
                "            self.live = dp.seq_ix")
    rows = _rows([8, 8, 8], [2, 2, 2])
    checks = check_order(package, rows, np.zeros((int(rows.need.sum()), 2)), TOL,
                         np.random.default_rng(0))
    assert [(c.name, c.ok) for c in checks] == [("order: shuffled sequences", False),
                                                ("order: interleaved rows", False)]
    for c in checks:
        assert c.detail.startswith("the package failed: ") and "came back" in c.detail, c.detail


def test_the_replay_timeout_is_set_by_the_first_replay_only(tmp_path):
    """M55 (timing taken from every replay): docs/pack.md kills each replay after 20x the
    first's time per row; a slow replay (a package stuck on the checks' rows) raised the
    limit of every replay after it."""
    package = _hand_package(tmp_path / "slow", "if dp.seq_ix == 999:\n            time.sleep(0.05)")
    rows = _rows([6, 6], [2, 2])
    package.run(rows)
    first = (package.us_per_row, package.init_s, package.replay_timeout(1000))
    slow = rows.values.copy()
    slow[:, 0] = 999  # one sequence of 12 rows, each 50 ms
    package.run(Rows.of(slow))
    assert (package.us_per_row, package.init_s, package.replay_timeout(1000)) == first
    assert first[0] < 50_000


# --- the report, the data, the copy ----------------------------------------------------------


def _report(targets: list[str]) -> ParityReport:
    where = {"max_abs": 0.0, "max_rel": 0.0, "seq": 7.0, "step": 0.0}
    return ParityReport("pk", "data", 1, 3, 3, 1e-5, 1e-6,
                        {"step": {"score": 0.5, "per_target": dict.fromkeys(targets, 0.5)}},
                        [{"pair": "step vs package", "max_abs": 0.0,
                          "per_target": dict.fromkeys(targets, where)}], [])


def test_a_report_of_as_many_outputs_as_are_shown_prints_each():
    """M03 (>= SHOWN_OUTPUTS): like kit score and kit runs, a report prints one column per
    output up to SHOWN_OUTPUTS and their summary only past it."""
    shown = [f"t{i}" for i in range(SHOWN_OUTPUTS)]
    text = _report(shown).format()
    assert text.splitlines()[1].split() == ["path", "score", *shown]
    assert "worst of" not in text
    many = _report([*shown, "t_more"]).format()
    assert many.splitlines()[1].split() == ["path", "score", "min", "max"]
    assert f"worst of {SHOWN_OUTPUTS + 1} outputs" in many


def test_relative_data_is_found_in_the_packages_project_before_its_runs(tmp_path, monkeypatch):
    """M42 (the run's project looked in first): docs/pack.md looks from here, else in the
    package's project, else in its run's."""
    for project in ("pkg_project", "run_project"):
        (tmp_path / project / "data").mkdir(parents=True)
        (tmp_path / project / "data" / "valid.parquet").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    submission = tmp_path / "pkg_project" / "submissions" / "pk"
    checkpoint = tmp_path / "run_project" / "runs" / "gru" / "r1" / "best.pt"
    assert in_project(Path("data/valid.parquet"), submission, checkpoint) == \
        tmp_path / "pkg_project" / "data" / "valid.parquet"
    (tmp_path / "pkg_project" / "data" / "valid.parquet").unlink()
    assert in_project(Path("data/valid.parquet"), submission, checkpoint) == \
        tmp_path / "run_project" / "data" / "valid.parquet"


def test_the_copy_parity_checks_leaves_dotfiles_and_dot_folders_out(tmp_path):
    """M47 (dotfiles copied): docs/pack.md leaves a dotfile out of the copy parity runs; a real
    .venv or .git folder beside the package was copied whole."""
    folder = tmp_path / "pk"
    (folder / ".venv" / "lib").mkdir(parents=True)
    (folder / ".venv" / "lib" / "big.so").write_bytes(b"\0" * 1024)
    (folder / ".notes").write_text("mine")
    (folder / "solution.py").write_text("pass\n")
    copy = copy_package(folder, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["solution.py"]


# --- a whole parity run ----------------------------------------------------------------------


def test_a_package_with_a_changed_file_is_not_recorded_nor_said_to_have_changed_meanwhile(
        workspace, tmp_path):
    """M44 (recorded whatever the manifest check said): record_report's own check then
    refused it with a wrong 'changed while parity ran (re-packed?)' warning."""
    spec = load_spec(str(workspace / "tiny-lob.toml"))
    folder = pack_run(raw_gru_run(tmp_path / "run", spec), "raw", tmp_path / "submissions",
                      budget=False).folder
    with (folder / "solution.py").open("a") as fh:
        fh.write("\n# edited by hand\n")
    before = (folder / "manifest.json").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_parity(folder, workspace / "data/valid.parquet", seqs=2)
    assert _failed(report) == {"manifest"}, report.format()
    assert not [w for w in caught if "changed while parity ran" in str(w.message)]
    assert (folder / "manifest.json").read_bytes() == before



def test_a_package_replaced_while_parity_runs_fails_parity(workspace, tmp_path):
    """r287: parity of a package re-packed while it ran said "parity OK" and exited 0 (with a
    warning), so `kit parity X && upload X.zip` uploaded a package parity never checked."""
    from kit.export.pack import PACK_FILES, read_manifest, write_manifest
    from kit.submission import write_submission_zip

    spec = load_spec(str(workspace / "tiny-lob.toml"))
    folder = pack_run(raw_gru_run(tmp_path / "run", spec), "raw", tmp_path / "submissions",
                      budget=False).folder
    # the package, as it runs in parity's copy, rewrites the original's model.onnx: a re-pack
    # landing while parity runs (the package as tested stays consistent: hashes and zip)
    original = folder / "model.onnx"
    solution = folder / "solution.py"
    solution.write_text(f"from pathlib import Path\nPath({str(original)!r}).write_bytes("
                        f"Path({str(original)!r}).read_bytes() + b' ')\n" + solution.read_text())
    manifest = read_manifest(folder)
    write_manifest(folder, manifest)
    write_submission_zip(folder, files=PACK_FILES)
    report = run_parity(folder, workspace / "data/valid.parquet", seqs=2)
    assert not report.ok and _failed(report) == {"package unchanged"}, report.format()
    assert "changed while parity ran (re-packed?)" in report.format()
    assert read_manifest(folder).get("parity") is None  # nothing recorded into it
