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
