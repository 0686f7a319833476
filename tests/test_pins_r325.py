"""r325's mutation audit of kit score (kit/scoring/score.py) and kit parity (kit/parity.py):
behaviour the suite did not pin."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kit import parity
from kit.errors import DataError, SubmissionError
from kit.export.pack import PackError
from kit.parity import Check, ParityReport, default_data, run_parity
from kit.scoring import score as score_module
from kit.scoring.score import load_rows
from tests.frames import make_frame
from tests.test_big_files_r312 import break_column_chunk, write_grouped
from tests.test_model_options_r300 import gru_package  # noqa: F401 (a fixture)
from tests.test_scoring import FORMULA, SPEC, score, write_sub

# --- kit score ----------------------------------------------------------------------------


def test_a_whole_file_score_names_the_files_sequences(tmp_path):
    """Kills file_sequences = 0 without --seqs: the JSON said a whole file had 0 sequences."""
    data = write_grouped(tmp_path / "data.parquet", make_frame(SPEC, 3))
    result = score(write_sub(tmp_path, FORMULA), data)
    assert (result.sequences, result.file_sequences) == (3, 3)
    assert result.to_dict()["file_sequences"] == 3 and not result.subset


def test_seqs_reads_the_ids_in_growing_prefixes_until_the_sequences_end(tmp_path, monkeypatch):
    """Kills first_sequence_ids returning its first prefix read: sequences longer than it were
    cut and refused as coming back later in the file."""
    monkeypatch.setattr(score_module, "PREFIX_ROWS", 8)  # 20-row sequences: 8, 32, 128 rows
    data = write_grouped(tmp_path / "data.parquet", make_frame(SPEC, 6))
    rows = load_rows(data, SPEC, 2)
    assert (len(rows.values), rows.sequences, rows.file_sequences) == (40, 2, 6)
    assert rows.values[-1, 0] == 1 and rows.values[-1, 1] == 19  # seq 1's last step
    every = load_rows(data, SPEC, 10)  # more than the file holds: all of it
    assert (len(every.values), every.sequences, every.file_sequences) == (120, 6, 6)


def test_seqs_refuses_a_wrong_column_dtype_before_reading_a_row(tmp_path):
    """Kills dropping check_schema before --seqs reads rows: a wrong dtype was hidden behind a
    data page that does not decode (the refusal the user can act on came second)."""
    frame = make_frame(SPEC, 3).with_columns(pl.col("p0").cast(pl.String))
    data = write_grouped(tmp_path / "data.parquet", frame)
    break_column_chunk(data, 0, "p2")  # in the first sequence's rows
    with pytest.raises(DataError, match="column 'p0' must be numeric"):
        load_rows(data, SPEC, 1)


# --- kit parity ---------------------------------------------------------------------------


def _report(ok: bool, advice: str | None) -> ParityReport:
    per = {"t0": {"max_abs": 0.0, "max_rel": 0.0, "seq": 0.0, "step": 5.0}}
    return ParityReport("pkg", "data.parquet", 1, 20, 15, 1e-5, 1e-6,
                        {"sequence": {"score": 0.5, "per_target": {"t0": 0.5}}},
                        [{"pair": "sequence vs step", "max_abs": 0.0, "per_target": per,
                          "rows_over": 0, "first_over": None}],
                        [Check("manifest", ok, "x")], [], advice)


def test_a_passing_report_does_not_end_with_a_failures_advice():
    """Kills format() appending the advice on a pass too (a package of another format that
    passes was told to re-pack 'before judging parity' on its OK line)."""
    advice = "re-pack the run with this kit (kit pack RUN) before judging parity"
    passed = _report(True, advice).format().splitlines()[-1]
    assert passed == "parity OK: max abs difference 0.00e+00"
    failed = _report(False, advice).format().splitlines()[-1]
    assert failed == f"parity FAILED: max abs difference 0.00e+00; {advice}"


def test_default_data_of_a_zip_with_a_torn_manifest_names_the_manifest(tmp_path):
    """Kills default_data's zip fallback: a zip whose manifest.json does not read was said to
    have no manifest.json at all."""
    package = tmp_path / "pkg.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("solution.py", "class PredictionModel:\n    pass\n")
        archive.writestr("manifest.json", '{"spec": {"name": ')
    with pytest.raises(PackError) as caught:
        default_data(package)
    assert "manifest.json: not valid JSON" in str(caught.value)
    assert "no manifest.json" not in str(caught.value)


def _paths_apart_by_rounding(monkeypatch):
    """The two PyTorch paths 2e-5 either side of the model (as r300's test: rounding)."""
    real_sequence, real_step = parity.sequence_path, parity.step_path
    monkeypatch.setattr(parity, "sequence_path", lambda m, r: real_sequence(m, r) + 2e-5)
    monkeypatch.setattr(parity, "step_path", lambda m, r: real_step(m, r) - 2e-5)


def test_a_package_with_an_edited_file_gets_no_rounding_advice(gru_package, monkeypatch,  # noqa: F811
                                                              tmp_path):
    """Kills the ROUNDING_CHECKS gate: a failed manifest check (a file edited after pack) is
    nothing the model's rounding explains, but the report ended with "--atol" advice."""
    import shutil

    package, project = gru_package
    folder = Path(shutil.copytree(package, tmp_path / "pkg"))
    with (folder / "solution.py").open("a") as f:
        f.write("\n# edited after pack\n")
    _paths_apart_by_rounding(monkeypatch)
    report = run_parity(folder, project / "data/valid.parquet", seqs=2, record=False)
    assert not report.ok and not next(c for c in report.checks if c.name == "manifest").ok
    assert report.advice is None, report.format()
    assert "--atol" not in report.format().splitlines()[-1]


def test_a_package_that_fails_on_the_hostile_rows_gets_no_rounding_advice(
        gru_package, monkeypatch):  # noqa: F811
    """Kills dropping `dirty_preds is not None` from the rounding gate: a package that crashes
    on NaN rows fails "NaN/inf rows" by its crash, which a larger --atol does not pass."""
    package, project = gru_package
    _paths_apart_by_rounding(monkeypatch)
    real_run = parity.Package.run

    def crashes_on_nan(self, rows):
        if np.isnan(rows.values[:, 3:]).any():
            raise SubmissionError("solution.py crashed at seq 0, step 0")
        return real_run(self, rows)

    monkeypatch.setattr(parity.Package, "run", crashes_on_nan)
    report = run_parity(package, project / "data/valid.parquet", seqs=2, record=False)
    nonfinite = next(c for c in report.checks if c.name == "NaN/inf rows")
    assert not nonfinite.ok and nonfinite.detail.startswith("the package failed")
    assert report.advice is None, report.format()


@pytest.mark.parametrize("column", ["v3", "seq_ix"])
def test_a_numeric_categorical_column_is_replayed_as_pandas_reads_it(tmp_path, column):
    """The real bug r325 found: a numeric category written by pandas comes back as plain
    numbers (pyarrow decodes it), so the scorer's rows are float64; kit fed object rows, and
    a predict() calling np.isfinite on them failed only in the replay."""
    import pandas as pd

    from tests.frames import small_spec

    spec = small_spec(seq_len=12, warmup=5)
    data = tmp_path / "data.parquet"
    make_frame(spec, n_seqs=2).to_pandas().astype(
        {"need_prediction": "int8", column: "category"}).to_parquet(data)
    assert pd.read_parquet(data).values.dtype == np.float64  # what the scorer's rows are
    assert "object" not in load_rows(data, spec, None).column_dtypes
