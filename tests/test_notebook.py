"""kit notebook: Kaggle metadata, the batch-per-timestep runtime, and the generated notebook
executed for real (nbclient, a local kernel) against kit score's predictions."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w

from kit.export.notebook import NotebookError, write_notebook
from kit.export.pack import pack_ensemble, pack_run
from kit.scoring import score_submission
from tests.cli import run_cli


@pytest.fixture(scope="module")
def package(workspace, runs, tmp_path_factory):
    return pack_run(runs["gru"], "nb", tmp_path_factory.mktemp("nb") / "subs")


def _solution(folder: Path):
    spec = importlib.util.spec_from_file_location(f"sol_{folder.name}", folder / "solution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Point:
    def __init__(self, seq_ix, step_in_seq, need_prediction, state):
        self.seq_ix, self.step_in_seq = seq_ix, step_in_seq
        self.need_prediction, self.state = need_prediction, state


def _gateway_frame(valid: Path) -> pl.DataFrame:
    """Valid rows with one id starting late and one pausing for a while, as gateways do."""
    df = pl.read_parquet(valid)
    ids = df["seq_ix"].unique().sort().to_list()
    late, paused = ids[1], ids[2]
    return df.filter(~((pl.col("seq_ix") == late) & (pl.col("step_in_seq") < 25))
                     & ~((pl.col("seq_ix") == paused) & pl.col("step_in_seq").is_between(20, 35)))


def _row_reference(module, frame: pl.DataFrame, features: list[str]) -> dict:
    """Row-at-a-time runtime, each id's rows in order (absent rows simply absent)."""
    model = module.PredictionModel()
    out = {}
    for seq, group in frame.sort(["seq_ix", "step_in_seq"]).group_by("seq_ix",
                                                                      maintain_order=True):
        for row in group.select(["step_in_seq", *features]).to_numpy():
            out[(seq[0], int(row[0]))] = model.predict(Point(float(seq[0]), row[0], 1.0,
                                                             row[1:]))
    return out


@pytest.mark.parametrize("kind", ["single", "stacked-ensemble"])
def test_batch_protocol_equals_the_row_runtime_with_late_and_paused_ids(workspace, runs,
                                                                        package, tmp_path, kind):
    folder = package.folder
    tol = 1e-6
    if kind == "stacked-ensemble":  # batched matmuls over ids round differently: 1e-5
        doc = tmp_path / "e.toml"
        members = [{"name": n, "runs": [str(runs[n])], "weights": [0.5, 0.5]}
                   for n in ("gru", "gru_b")]
        doc.write_text(tomli_w.dumps({"members": members}))
        folder, tol = pack_ensemble(doc, "e", tmp_path).folder, 1e-5
    module = _solution(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    frame = _gateway_frame(workspace / "data/valid.parquet")
    reference = _row_reference(module, frame, manifest["inputs"])
    predictor = module.BatchPredictor(capacity=2)  # grows as ids arrive
    worst, seen = 0.0, 0
    for step, batch in frame.sort("step_in_seq").group_by("step_in_seq", maintain_order=True):
        batch = batch.sample(fraction=1.0, shuffle=True, seed=int(step[0]))  # any id order
        out = predictor.predict(batch)
        assert isinstance(out, pl.DataFrame) and out.columns == ["seq_ix", "t0", "t1"]
        for seq, t0, t1 in out.iter_rows():
            want = reference[(seq, int(step[0]))]
            worst = max(worst, abs(t0 - want[0]), abs(t1 - want[1]))
            seen += 1
    assert seen == frame.height and worst <= tol, worst
    # pandas frames work the same
    pandas_out = module.BatchPredictor().predict(frame.filter(pl.col("step_in_seq") == 0)
                                                 .to_pandas())
    assert list(pandas_out.columns) == ["seq_ix", "t0", "t1"]


def test_batch_protocol_restarts_an_id_whose_steps_start_over(package):
    module = _solution(package.folder)
    predictor = module.BatchPredictor()
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((6, 32))
    first = [predictor.predict_arrays([7], rows[i:i + 1], steps=[i]) for i in range(6)]
    again = [predictor.predict_arrays([7], rows[i:i + 1], steps=[i]) for i in range(6)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    with pytest.raises(ValueError, match="twice"):
        predictor.predict_arrays([1, 1], rows[:2])


def test_metadata_follows_the_kaggle_formats(package, tmp_path):
    written = write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice",
                             competition="predictorium-lob", protocol="batch")
    dataset = json.loads((tmp_path / "kaggle/dataset/dataset-metadata.json").read_text())
    assert dataset["id"] == "alice/nb-package" and 6 <= len(dataset["title"]) <= 50
    assert dataset["licenses"] == [{"name": "CC0-1.0"}]
    kernel = json.loads((tmp_path / "kaggle/kernel/kernel-metadata.json").read_text())
    assert kernel["code_file"] == "notebook.ipynb" and kernel["kernel_type"] == "notebook"
    assert kernel["enable_internet"] is False and kernel["language"] == "python"
    assert kernel["dataset_sources"] == [dataset["id"]]
    assert kernel["competition_sources"] == ["predictorium-lob"]
    assert kernel["id"] == "alice/" + kernel["title"].lower().replace(" ", "-")
    names = sorted(p.name for p in written["dataset"].iterdir())
    assert names == ["dataset-metadata.json", "manifest.json", "model.onnx", "solution.py"]
    source = "".join("".join(c["source"]) for c in
                     json.loads(written["notebook"].read_text())["cells"])
    assert "http" not in source and "--no-index" in source  # nothing from the internet


@pytest.mark.parametrize("options, message", [
    ({"owner": "alice", "dataset_slug": "Bad_Slug"}, "Kaggle slugs"),
    ({"owner": "alice", "protocol": "stream"}, "--protocol"),
    ({"owner": "", }, "--owner"),
    ({"owner": "alice", "competition": "Not A Slug"}, "--competition"),
])
def test_bad_notebook_options_are_refused(package, tmp_path, options, message):
    with pytest.raises(NotebookError, match=message):
        write_notebook(package.zip_path, tmp_path / "k", **options)


def test_a_changed_package_is_refused(package, tmp_path):
    folder = tmp_path / "pkg"
    shutil.copytree(package.folder, folder)
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(NotebookError, match="model.onnx changed since pack"):
        write_notebook(folder, tmp_path / "k", owner="alice")


def test_wheels_are_shipped_for_offline_installs(package, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-1.0-py3-none-any.whl").write_bytes(b"PK")
    written = write_notebook(package.zip_path, tmp_path / "k", owner="alice", wheels=wheels)
    assert (written["dataset"] / "wheels" / "onnxruntime-1.0-py3-none-any.whl").is_file()
    with pytest.raises(NotebookError, match="no .whl files"):
        write_notebook(package.zip_path, tmp_path / "k2", owner="alice", wheels=tmp_path)


@pytest.mark.parametrize("protocol", ["rows", "batch"])
def test_the_notebook_runs_offline_and_matches_kit_score(workspace, package, tmp_path,
                                                         monkeypatch, protocol):
    import nbformat
    from nbclient import NotebookClient

    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner",
                  "alice", "--protocol", protocol).output
    assert "kaggle kernels push" in out
    # Kaggle's layout: attached datasets under the input root, the test file among them
    root = tmp_path / "input"
    shutil.copytree(tmp_path / "kaggle/dataset", root / "nb-package")
    valid = workspace / "data/valid.parquet"
    (root / "competition").mkdir()
    shutil.copy(valid, root / "competition/test.parquet")
    monkeypatch.setenv("KIT_INPUT_ROOT", str(root))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path / "working"))
    notebook = nbformat.read(str(tmp_path / "kaggle/kernel/notebook.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    got = pl.read_csv(tmp_path / "working/predictions.csv").sort(["seq_ix", "step_in_seq"])
    scored = score_submission(package.zip_path, valid, _spec(package),
                              progress=False)
    truth_rows = pl.read_parquet(valid).filter(pl.col("need_prediction"))
    assert got.height == truth_rows.height == len(scored.predictions)
    assert got.select("seq_ix", "step_in_seq").equals(truth_rows.select("seq_ix",
                                                                        "step_in_seq"))
    tol = 0 if protocol == "rows" else 1e-6
    np.testing.assert_allclose(got.select("t0", "t1").to_numpy(), scored.predictions,
                               rtol=0, atol=tol)


def _spec(package):
    from kit.export.pack import submission_spec

    return submission_spec(package.zip_path)


def test_only_the_notebook_folders_are_replaced_in_out(package, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    write_notebook(package.zip_path, out, owner="alice")
    write_notebook(package.zip_path, out, owner="alice", protocol="batch")
    assert (out / "keep.txt").read_text() == "mine"
    title = json.loads((out / "dataset/dataset-metadata.json").read_text())["title"]
    assert title == "nb package"
