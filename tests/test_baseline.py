import importlib.util
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from kit import baselines
from kit.baselines import (
    EWM_ALPHAS,
    evaluate_linear_baseline,
    fit_linear_baseline,
    linear_design,
    write_linear_submission,
)
from kit.errors import DataError, SubmissionError
from kit.metrics import evaluate
from kit.submission import write_submission_zip
from tests.frames import make_frame, small_spec

SPEC = small_spec(seq_len=30, warmup=5)


@dataclass
class DataPoint:
    seq_ix: float
    step_in_seq: float
    need_prediction: float
    state: np.ndarray


def load_model(folder):
    module_spec = importlib.util.spec_from_file_location("solution", folder / "solution.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.PredictionModel()


def test_linear_submission_streams_exactly_what_was_fit(tmp_path):
    train = tmp_path / "train.parquet"
    df = make_frame(SPEC, n_seqs=6, seed=1)
    df.write_parquet(train)
    coef = fit_linear_baseline(train, SPEC)
    assert coef.shape == (1 + 32 * (1 + len(EWM_ALPHAS)), 2)
    zip_path = write_linear_submission(coef, tmp_path / "sub")
    model = load_model(tmp_path / "sub")
    rows = df.select(SPEC.input_columns).to_numpy().astype(np.float64)
    rows[7, 5] = np.nan  # the runtime must survive non-finite values
    rows[8, 6] = np.inf
    got = []
    for row in rows:
        out = model.predict(DataPoint(row[0], row[1], row[2], row[3:]))
        assert (out is None) == (row[2] == 0)
        if out is not None:
            got.append(out)
    need = rows[:, 2] == 1
    design = linear_design(df, SPEC)
    # The NaN/inf rows were clean when the design was computed: compare sequences 1.. only.
    later = need & (rows[:, 0] >= 1)
    np.testing.assert_allclose(np.array(got)[later[need]], (design @ coef)[later], atol=1e-9)
    assert np.isfinite(np.array(got)).all()
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["solution.py", "weights.npz"]
    assert write_linear_submission(coef, tmp_path / "sub") == zip_path  # its own files: again
    # a folder with anything else in it is refused and keeps it (it was removed whole: given
    # `submissions`, every package in it)
    (tmp_path / "subs" / "other").mkdir(parents=True)
    (tmp_path / "subs" / "notes.txt").write_text("keep")
    with pytest.raises(SubmissionError, match=r"holds other files \(notes.txt, other\)"):
        write_linear_submission(coef, tmp_path / "subs")
    assert (tmp_path / "subs" / "notes.txt").read_text() == "keep"
    assert (tmp_path / "subs" / "other").is_dir()


def test_zip_is_reproducible_and_needs_solution(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    with pytest.raises(SubmissionError, match="no solution.py"):
        write_submission_zip(folder)
    (folder / "solution.py").write_text("class PredictionModel: pass\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    first = write_submission_zip(folder).read_bytes()
    # the same bytes whatever the files' times (two writes a moment apart share a 2-s stamp)
    later = time.time() + 3600
    os.utime(folder / "solution.py", (later, later))
    assert write_submission_zip(folder).read_bytes() == first
    with zipfile.ZipFile(folder.with_suffix(".zip")) as archive:
        assert archive.namelist() == ["solution.py"]
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in archive.infolist())


def _fit_file(tmp_path, df, name, **kwargs):
    path = tmp_path / f"{name}.parquet"
    df.write_parquet(path)
    return fit_linear_baseline(path, SPEC, **kwargs)


def test_max_train_seqs_fits_on_the_first_sequences_only(tmp_path):
    df = make_frame(SPEC, n_seqs=4, seed=2)
    capped = _fit_file(tmp_path, df, "all", max_train_seqs=2)
    first_two = _fit_file(tmp_path, df.filter(df["seq_ix"] < 2), "two")
    np.testing.assert_allclose(capped, first_two, rtol=1e-10, atol=1e-12)
    assert not np.allclose(capped, _fit_file(tmp_path, df, "again", max_train_seqs=None))


def test_a_file_of_one_sequence_can_be_fit(tmp_path):
    """The blocks must cover the last sequence: a range stopping one short fit on nothing."""
    coef = _fit_file(tmp_path, make_frame(SPEC, n_seqs=1, seed=3), "one")
    assert coef.shape == (1 + 32 * (1 + len(EWM_ALPHAS)), 2)
    assert np.isfinite(coef).all() and np.abs(coef).sum() > 0


def test_a_row_shuffled_file_gives_the_same_coefficients(tmp_path):
    """The EWMs run along each sequence's steps: fit on rows in file order, a shuffled file
    gave other coefficients."""
    df = make_frame(SPEC, n_seqs=3, seed=4)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=0)
    assert not shuffled.equals(df)
    np.testing.assert_allclose(_fit_file(tmp_path, shuffled, "shuffled"),
                               _fit_file(tmp_path, df, "sorted"), rtol=1e-9, atol=1e-12)


def test_the_intercept_is_never_shrunk(tmp_path):
    """Targets shifted by 5 move the intercept by 5 under any ridge; a penalised intercept
    moved by 0.07 at ridge 1e4."""
    df = make_frame(SPEC, n_seqs=3, seed=5)
    base = _fit_file(tmp_path, df, "base", ridge=1e4)
    shifted = df.with_columns([(df[t] + 5.0).alias(t) for t in SPEC.targets])
    moved = _fit_file(tmp_path, shifted, "shifted", ridge=1e4)
    np.testing.assert_allclose(moved[0] - base[0], [5.0, 5.0], atol=1e-4)
    np.testing.assert_allclose(moved[1:], base[1:], atol=1e-5)


def test_a_file_where_the_submission_folder_should_be_is_refused_and_kept(tmp_path):
    """A file in the folder's place is refused: it raised FileExistsError, and still did for
    one named as the baseline's own files (r282)."""
    coef = np.zeros((1 + 32 * (1 + len(EWM_ALPHAS)), 2))
    for name in ("sub", "weights.npz", "solution.py"):
        taken = tmp_path / name
        taken.write_text("keep")
        with pytest.raises(SubmissionError, match=rf"{re.escape(name)} is a file: write the "
                                                  "linear baseline into a folder of its own"):
            write_linear_submission(coef, taken)
        assert taken.read_text() == "keep"


def test_its_own_folder_is_rewritten_after_python_cached_the_solution(tmp_path):
    """Importing solution.py writes __pycache__/ beside it (unless PYTHONDONTWRITEBYTECODE is
    set, as in this suite): that folder is still the baseline's own, and stays out of the zip."""
    coef = np.zeros((1 + 32 * (1 + len(EWM_ALPHAS)), 2))
    folder = tmp_path / "sub"
    write_linear_submission(coef, folder)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import solution; solution.PredictionModel()"],
                   cwd=folder, env=env, check=True)
    assert list((folder / "__pycache__").glob("solution.*.pyc"))
    zip_path = write_linear_submission(coef + 1.0, folder)
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["solution.py", "weights.npz"]
    with np.load(folder / "weights.npz") as weights:
        np.testing.assert_array_equal(weights["coef"], coef + 1.0)


def test_max_train_seqs_of_zero_is_refused(tmp_path):
    """0 is not "all" here (None is): it crashed with an AttributeError."""
    with pytest.raises(ValueError, match=r"max_train_seqs must be >= 1 or None \(all\), got 0"):
        _fit_file(tmp_path, make_frame(SPEC, n_seqs=2, seed=6), "zero", max_train_seqs=0)


@pytest.mark.parametrize("rows", ["none", "unscored"])
def test_a_fit_without_scored_rows_names_the_file(tmp_path, rows):
    """An empty file, or one whose rows all have need_prediction 0: a DataError, not an
    AttributeError or numpy's "Singular matrix"."""
    df = make_frame(SPEC, n_seqs=2, seed=7)
    df = df.head(0) if rows == "none" else df.with_columns(pl.lit(False).alias(SPEC.need_col))
    with pytest.raises(DataError, match=r"bare\.parquet: no scored rows \(no row with "
                                        r"need_prediction = 1\): nothing to fit"):
        _fit_file(tmp_path, df, "bare", max_train_seqs=None)
    with pytest.raises(DataError, match=r"need_prediction = 1 in its first 2,000 sequence\(s\)"):
        _fit_file(tmp_path, df, "bare")


@pytest.mark.parametrize("rows", ["none", "unscored"])
def test_evaluating_on_a_file_without_scored_rows_names_the_file(tmp_path, rows):
    coef = np.zeros((1 + 32 * (1 + len(EWM_ALPHAS)), 2))
    df = make_frame(SPEC, n_seqs=2, seed=8)
    df = df.head(0) if rows == "none" else df.with_columns(pl.lit(False).alias(SPEC.need_col))
    valid = tmp_path / "valid.parquet"
    df.write_parquet(valid)
    with pytest.raises(DataError, match=r"valid\.parquet: no scored rows .*nothing to evaluate"):
        evaluate_linear_baseline(coef, valid, SPEC)


def _closed_form(df, ridge):
    """The ridge solve written out: (X'X + ridge * I with no intercept penalty)^-1 X'y."""
    need = df[SPEC.need_col].to_numpy()
    x = linear_design(df, SPEC)[need]
    y = df.select(SPEC.targets).to_numpy().astype(np.float64)[need]
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


@pytest.mark.parametrize("block_seqs", [2, 200])
def test_the_fit_is_the_closed_form_ridge_solve(tmp_path, monkeypatch, block_seqs):
    """Every sequence counts whatever the block size (5 sequences in blocks of 2: the last
    block is short), the ridge argument is used, and the default ridge is 10."""
    monkeypatch.setattr(baselines, "BLOCK_SEQS", block_seqs)
    df = make_frame(SPEC, n_seqs=5, seed=9)
    np.testing.assert_allclose(_fit_file(tmp_path, df, "r3", ridge=3.0), _closed_form(df, 3.0),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_fit_file(tmp_path, df, "default"), _closed_form(df, 10.0),
                               rtol=1e-9, atol=1e-12)


def test_the_default_fit_uses_the_first_2000_sequences(tmp_path, monkeypatch):
    """docs/synth.md: fitted on (at most 2,000) train sequences. One scored row each, in one
    block (fewer passes)."""
    monkeypatch.setattr(baselines, "BLOCK_SEQS", 4000)
    df = make_frame(SPEC, lengths=[1] * 2001, seed=10).with_columns(
        pl.lit(True).alias(SPEC.need_col))
    default = _fit_file(tmp_path, df, "default")
    np.testing.assert_array_equal(default, _fit_file(tmp_path, df, "capped", max_train_seqs=2000))
    assert not np.allclose(default, _fit_file(tmp_path, df, "all", max_train_seqs=None),
                           rtol=1e-9, atol=0)


def test_evaluate_linear_baseline_scores_its_predictions_against_the_truth(tmp_path):
    """Truth first: swapped, the weights become |prediction| and the clip lands on the truth."""
    df = make_frame(SPEC, n_seqs=3, seed=11)
    valid = tmp_path / "valid.parquet"
    df.write_parquet(valid)
    rng = np.random.default_rng(0)
    coef = rng.standard_normal((1 + 32 * (1 + len(EWM_ALPHAS)), 2))  # predictions past the clip
    need = df[SPEC.need_col].to_numpy()
    truth = df.select(SPEC.targets).to_numpy().astype(np.float64)[need]
    expected = evaluate(SPEC, truth, (linear_design(df, SPEC) @ coef)[need])
    got = evaluate_linear_baseline(coef, valid, SPEC)
    assert got.per_target == pytest.approx(expected.per_target, rel=1e-12, abs=0)
    assert got.rows == expected.rows == int(need.sum())


def test_linear_design_columns_are_the_row_and_its_ewms_per_sequence():
    """[1, x, ewm 0.5, ewm 0.2, ewm 0.05] (docs/synth.md), each EWM started afresh per sequence:
    x = 1, 0, 0 in sequence 0 and 4, 0 in sequence 1 for the first feature, 0 elsewhere."""
    df = make_frame(SPEC, lengths=[3, 2], seed=12)
    first = SPEC.features[0]
    df = df.with_columns(pl.Series(first, [1.0, 0.0, 0.0, 4.0, 0.0], dtype=pl.Float32),
                         *(pl.lit(0.0, pl.Float32).alias(f) for f in SPEC.features[1:]))
    design = linear_design(df, SPEC)
    f = len(SPEC.features)
    assert design.shape == (5, 1 + 4 * f)
    expected = np.array([
        # 1, x, ewm 0.5, ewm 0.2, ewm 0.05 of the first feature
        [1, 1, 1, 1, 1],
        [1, 0, 0.5, 0.8, 0.95],
        [1, 0, 0.25, 0.64, 0.9025],
        [1, 4, 4, 4, 4],
        [1, 0, 2, 3.2, 3.8],
    ])
    np.testing.assert_allclose(design[:, [0, 1, 1 + f, 1 + 2 * f, 1 + 3 * f]], expected,
                               rtol=1e-12)
    others = np.delete(design, [0, 1, 1 + f, 1 + 2 * f, 1 + 3 * f], axis=1)
    assert not others.any()


def test_linear_design_counts_non_finite_values_as_zero():
    """As linear_solution.py does at run time: NaN, inf and null cells read 0, and so do the
    EWMs through them."""
    df = make_frame(SPEC, n_seqs=2, seed=13)
    a, b, c = SPEC.features[:3]
    dirty = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(pl.col(a)).alias(a),
        pl.when(pl.int_range(pl.len()) == 4).then(float("inf")).otherwise(pl.col(b)).alias(b),
        pl.when(pl.int_range(pl.len()) == 5).then(None).otherwise(pl.col(c)).alias(c),
    )
    clean = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(0.0).otherwise(pl.col(a)).alias(a),
        pl.when(pl.int_range(pl.len()) == 4).then(0.0).otherwise(pl.col(b)).alias(b),
        pl.when(pl.int_range(pl.len()) == 5).then(0.0).otherwise(pl.col(c)).alias(c),
    )
    design = linear_design(dirty, SPEC)
    assert np.isfinite(design).all()
    np.testing.assert_array_equal(design, linear_design(clean, SPEC))


def test_a_nan_truth_on_a_scored_row_is_refused_by_name(tmp_path):
    """One NaN target made every coefficient of its output NaN without a word (r280)."""
    df = make_frame(SPEC, n_seqs=3, seed=9)
    scored = df.with_row_index("row").filter(pl.col(SPEC.need_col)).row(7, named=True)
    bad = df.with_row_index("row").with_columns(
        pl.when(pl.col("row") == scored["row"]).then(float("nan")).otherwise(pl.col("t1"))
        .alias("t1")).drop("row")
    inf = bad.with_columns(pl.col("t1").fill_nan(float("-inf")))  # inf as NaN
    message = (rf"nan\.parquet: the truth of t1 is NaN or inf on a scored row, the first at seq "
               rf"{scored['seq_ix']} step {scored['step_in_seq']}: the linear baseline needs")
    with pytest.raises(DataError, match=message):
        _fit_file(tmp_path, bad, "nan")
    with pytest.raises(DataError, match=message.replace("nan", "inf", 1)):
        _fit_file(tmp_path, inf, "inf")
    coef = _fit_file(tmp_path, df, "clean")
    with pytest.raises(DataError, match=message):
        evaluate_linear_baseline(coef, tmp_path / "nan.parquet", SPEC)


def test_a_file_of_another_competition_or_without_targets_is_named(tmp_path):
    """Polars' 'unable to find column "t0"' was all these got (r280)."""
    df = make_frame(SPEC, n_seqs=2, seed=10)
    keys = (SPEC.id_col, SPEC.step_col, SPEC.need_col)
    other = df.rename(lambda c: c if c in keys else f"x_{c}")
    with pytest.raises(DataError, match=r"other\.parquet lacks column\(s\) p0, .* of spec "
                                        r"'tiny'; none of its feature columns is there: is it "
                                        r"another competition's file\?"):
        _fit_file(tmp_path, other, "other")
    with pytest.raises(DataError, match=r"nostep\.parquet lacks column\(s\) step_in_seq of spec "
                                        r"'tiny'$"):  # one missing: no "another competition"
        _fit_file(tmp_path, df.drop(SPEC.step_col), "nostep")
    with pytest.raises(DataError, match=r"unlabelled\.parquet lacks target column\(s\) t0, t1: "
                                        "the linear baseline fits and scores on a labelled file"):
        _fit_file(tmp_path, df.drop("t0", "t1"), "unlabelled")


def test_ridge_zero_on_a_singular_design_fits_the_least_squares_of_least_norm(tmp_path):
    """A constant feature (with its EWMs) makes the unpenalised system singular: numpy's
    LinAlgError escaped the fit; it is the minimum-norm least-squares solution now."""
    df = make_frame(SPEC, n_seqs=3, seed=6)
    df = df.with_columns(pl.lit(0.0, dtype=df[SPEC.features[0]].dtype).alias(SPEC.features[0]))
    coef = _fit_file(tmp_path, df, "singular", ridge=0.0)
    assert np.isfinite(coef).all()
    need = df[SPEC.need_col].to_numpy().astype(bool)
    x = linear_design(df, SPEC)[need]
    y = df.select(SPEC.targets).to_numpy().astype(np.float64)[need]
    np.testing.assert_allclose(coef, np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-6, atol=1e-8)
    for ridge in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="ridge must be >= 0"):
            _fit_file(tmp_path, df, "negative", ridge=ridge)
