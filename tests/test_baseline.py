import importlib.util
import os
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from kit.baselines import EWM_ALPHAS, fit_linear_baseline, linear_design, write_linear_submission
from kit.errors import SubmissionError
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
    """A file in the folder's place counts as another file: it raised FileExistsError."""
    coef = np.zeros((1 + 32 * (1 + len(EWM_ALPHAS)), 2))
    taken = tmp_path / "sub"
    taken.write_text("keep")
    with pytest.raises(SubmissionError, match=r"holds other files \(sub\)"):
        write_linear_submission(coef, taken)
    assert taken.read_text() == "keep"
