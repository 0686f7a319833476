"""kit notebook: Kaggle metadata, the batch-per-timestep runtime, and the generated notebook
executed for real (nbclient, a local kernel) against kit score's predictions."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tomli_w

from kit.export.notebook import NotebookError, write_notebook
from kit.export.pack import pack_ensemble, pack_run
from kit.scoring import score_submission
from tests.cli import run_cli
from tests.processes import dead_pid


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
    if kind == "stacked-ensemble":  # batched matmuls over ids round differently (7e-8 here)
        doc = tmp_path / "e.toml"
        members = [{"name": n, "runs": [str(runs[n])], "weights": [0.5, 0.5]}
                   for n in ("gru", "gru_b")]
        doc.write_text(tomli_w.dumps({"members": members}))
        folder, tol = pack_ensemble(doc, "e", tmp_path).folder, 1e-6
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


def test_a_failed_batch_call_changes_nothing_and_bad_shapes_are_refused(package):
    module = _solution(package.folder)
    rows = np.random.default_rng(3).standard_normal((5, 2, 32))
    steady, failed = module.BatchPredictor(), module.BatchPredictor(capacity=1)
    want = [steady.predict_arrays([1, 2], rows[t], steps=[t, t]) for t in range(5)]
    got = [failed.predict_arrays([1, 2], rows[t], steps=[t, t]) for t in range(3)]
    with pytest.raises(ValueError, match=r"features of shape \(2, 31\) for 2 ids"):
        failed.predict_arrays([1, 2], rows[3][:, :31], steps=[3, 3])
    with pytest.raises(ValueError, match=r"features of shape \(32, 5\) for 5 ids"):
        failed.predict_arrays(np.arange(5), np.zeros((32, 5)))  # transposed: same size
    with pytest.raises(ValueError, match="twice"):
        failed.predict_arrays([3, 3], rows[3], steps=[3, 3])
    assert set(failed.table) == {1, 2}  # the refused calls added no id
    got += [failed.predict_arrays([1, 2], rows[t], steps=[t, t]) for t in (3, 4)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))  # no id started over
    # a NaN id is one sequence, not a new one at every step; pd.NA (a pandas string column's
    # missing id) is one too; two missing ids in one step are named as such
    import pandas as pd

    nan_ids = module.BatchPredictor(capacity=0)  # at least one row all the same
    for t in range(5):
        nan_ids.predict_arrays([float("nan"), pd.NA, "a"], rows[t][:1].repeat(3, 0), steps=[t] * 3)
    assert len(nan_ids.table) == 3
    with pytest.raises(ValueError, match="several missing \\(NaN\\) ids in one time step"):
        nan_ids.predict_arrays([1.0, float("nan"), float("nan")], np.zeros((3, 32)))
    with pytest.raises(ValueError, match="several missing \\(NaN\\) ids in one time step"):
        nan_ids.predict_arrays([pd.NA, 2, pd.NA], np.zeros((3, 32)))
    # tuple ids (a user and a session) stay whole: np.asarray split them into a 2-D array
    tuples = module.BatchPredictor()
    out = tuples.predict_arrays([(1, "a"), (2, "b")], rows[0][:1].repeat(2, 0))
    assert out.shape == (2, 2) and set(tuples.table) == {(1, "a"), (2, "b")}
    frame = pd.DataFrame({"seq_ix": [(1, "a"), (2, "b")], **{
        c: [float(rows[1][0, j])] * 2 for j, c in enumerate(module_columns(package))}})
    answer = tuples.predict(frame, step_col="none")
    assert answer["seq_ix"].tolist() == [(1, "a"), (2, "b")] and set(tuples.table) == {
        (1, "a"), (2, "b")}


def test_batch_protocol_reads_huge_ints_and_calls_without_steps_as_the_row_runtime(package):
    """An int past float's range failed the whole time step (OverflowError) where predict()
    reads it as inf for the guard; a call without steps kept the id's old step 5, so a later
    step 3 restarted it where predict() (a missing step: unknown) continues."""
    import pandas as pd

    module = _solution(package.folder)
    rows = np.random.default_rng(5).standard_normal((3, 32))
    huge = rows.tolist()
    huge[1][3] = 10**400
    row_runtime = module.PredictionModel()

    class Point:
        def __init__(self, step, state):
            self.seq_ix, self.step_in_seq, self.need_prediction, self.state = 0, step, True, state

    want = [row_runtime.predict(Point(step, r)) for step, r in zip((5, None, 3), huge, strict=True)]
    batch = module.BatchPredictor()
    got = [batch.predict_arrays([0], [huge[0]], [5]), batch.predict_arrays([0], [huge[1]]),
           batch.predict_arrays([0], [huge[2]], [3])]
    np.testing.assert_allclose(np.concatenate(got), np.stack(want), atol=1e-6)
    frame = pd.DataFrame([huge[1]], columns=module_columns(package), dtype=object)
    frame.insert(0, "seq_ix", [9])
    out = module.BatchPredictor().predict(frame, step_col="none")
    assert np.isfinite(out.drop(columns="seq_ix").to_numpy(dtype=float)).all()


def module_columns(package) -> list[str]:
    return json.loads((package.folder / "manifest.json").read_text())["inputs"]


def test_batch_protocol_edge_cases(workspace, package):
    module = _solution(package.folder)
    predictor = module.BatchPredictor()
    # an empty batch: the GRU op given batch 0 used to abort the whole process
    assert predictor.predict_arrays([], np.zeros((0, 32))).shape == (0, 2)
    step0 = pl.read_parquet(workspace / "data/valid.parquet").filter(pl.col("step_in_seq") == 0)
    assert predictor.predict(step0.head(0)).columns == ["seq_ix", "t0", "t1"]
    with pytest.raises(ValueError, match=r"output names \['seq_ix'\] clash"):
        predictor.predict(step0, names={"t0": "seq_ix"})
    with pytest.raises(ValueError, match=r"output names \['y'\] clash"):
        predictor.predict(step0, names={"t0": "y", "t1": "y"})
    # pandas' nullable floats hold pd.NA where polars holds null: the guard sees NaN either way
    frame = step0.to_pandas().astype({"p0": "Float64"})
    frame.loc[0, "p0"] = None
    out = module.BatchPredictor().predict(frame)
    expected = module.BatchPredictor().predict(step0.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("p0")).alias("p0")))
    np.testing.assert_array_equal(out[["t0", "t1"]].to_numpy(), expected.select("t0", "t1")
                                  .to_numpy())
    assert np.isfinite(out[["t0", "t1"]].to_numpy()).all()
    # keep="row_id" keeps that column (a string was read letter by letter, keeping none)
    kept = module.BatchPredictor().predict(step0.with_columns(row_id=pl.int_range(pl.len())),
                                           keep="row_id")
    assert kept.columns == ["row_id", "seq_ix", "t0", "t1"]
    # pd.NA or text among the values is NaN, as the row runtime reads it (it raised here)
    import pandas as pd

    odd = step0.select(module_columns(package)).to_numpy().astype(object)
    odd[0, 3], odd[1, 5] = pd.NA, "n/a"
    nan = odd.copy()
    nan[0, 3] = nan[1, 5] = np.nan
    np.testing.assert_array_equal(
        module.BatchPredictor().predict_arrays(step0["seq_ix"], odd),
        module.BatchPredictor().predict_arrays(step0["seq_ix"], nan.astype(np.float64)))
    # a pandas frame with text in a feature column: NaN there too (pandas raised before)
    texts = step0.to_pandas().astype({"p3": object})
    texts.loc[0, "p3"] = "n/a"
    with_nan = step0.to_pandas()
    with_nan.loc[0, "p3"] = np.nan
    np.testing.assert_array_equal(module.BatchPredictor().predict(texts)[["t0", "t1"]],
                                  module.BatchPredictor().predict(with_nan)[["t0", "t1"]])
    # a missing step (None, pd.NA) continues its id, as a NaN step does (it raised)
    for missing in (None, pd.NA, float("nan")):
        predictor = module.BatchPredictor()
        got = [predictor.predict_arrays([4], nan[:1].astype(np.float64),
                                        steps=[0 if t == 0 else missing]) for t in range(3)]
        reference = module.BatchPredictor()
        want = [reference.predict_arrays([4], nan[:1].astype(np.float64), steps=[t])
                for t in range(3)]
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    one = module.BatchPredictor().predict_arrays([4], odd[0])  # one id's row, 1-D
    assert one.shape == (1, 2) and np.isfinite(one).all()
    with pytest.raises(ValueError, match="a list or array of ids"):
        module.BatchPredictor().predict_arrays(7, odd[:1])
    # ragged ids (a tuple id beside a missing one) are ids as they are, not an array to build
    two = module.BatchPredictor().predict_arrays([(1, "a"), None], nan[:2].astype(np.float64))
    assert two.shape == (2, 2)


def test_big_integer_ids_keep_their_key_in_a_step_with_a_null_id(workspace, package):
    """An Int64 id column with a null converts to float64 in that step only: 2**60 + 1 would
    become 2**60 there, a new series (and two ids one, refused as an id twice)."""
    module = _solution(package.folder)
    rows = pl.read_parquet(workspace / "data/valid.parquet").filter(pl.col("seq_ix") ==
                                                                   pl.col("seq_ix").min())
    big = [2**60 + 1, 2**60 + 3]
    steps = [rows.filter(pl.col("step_in_seq") == t) for t in range(3)]

    def frame(t, ids):
        return pl.concat([steps[t]] * len(ids)).with_columns(
            pl.Series("seq_ix", ids, dtype=pl.Int64))

    def pandas_frame(t, ids):  # pandas' nullable Int64 (polars' to_pandas gives float64)
        batch = frame(t, ids).to_pandas()
        batch["seq_ix"] = pd.array(ids, dtype="Int64")
        return batch

    import pandas as pd

    for kind in ("polars", "pandas"):
        predictor, plain = module.BatchPredictor(), module.BatchPredictor()
        outs = []
        for t, ids in enumerate([big, [big[0], None], big]):
            outs.append(predictor.predict(frame(t, ids) if kind == "polars"
                                          else pandas_frame(t, ids)))
        want = [plain.predict(frame(t, big[:1])) for t in range(3)]  # id big[0] alone
        for t in range(3):
            np.testing.assert_allclose(np.asarray(outs[t]["t0"])[0], want[t]["t0"][0],
                                       rtol=1e-6)
        assert outs[1]["seq_ix"].to_list()[0] == big[0]  # the id comes back as it came
        assert set(predictor.table) == {*big, None if kind == "polars" else module.NA_ID}


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


def test_the_kernel_is_written_private(package, tmp_path):
    """`kaggle kernels push` of a public kernel publishes the solution (its model and code)
    for every competitor: the metadata keeps it private."""
    written = write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice")
    kernel = json.loads((tmp_path / "kaggle/kernel/kernel-metadata.json").read_text())
    assert kernel["is_private"] is True
    assert written["kernel_metadata"]["is_private"] is True


@pytest.mark.parametrize("options, message", [
    ({"owner": "alice", "dataset_slug": "Bad_Slug"}, "--dataset-slug 'Bad_Slug'.*6 to 50"),
    ({"owner": "alice", "dataset_slug": "abcde"}, "--dataset-slug 'abcde'"),
    ({"owner": "alice", "dataset_slug": "x" * 51}, "--dataset-slug"),
    ({"owner": "alice", "title": "abc"}, "--title 'abc'.*5 to 50"),
    # 51 characters, though its slug ("a" * 49) would be short enough
    ({"owner": "alice", "title": "a" * 49 + " !"}, "Kaggle kernel titles are 5 to 50"),
    ({"owner": "alice", "title": "a -- b -- !"}, "gives the kernel slug 'a-b'"),
    ({"owner": "alice", "protocol": "stream"}, "--protocol"),
    ({"owner": "", }, "--owner"),
    ({"owner": "alice", "competition": "Not A Slug"}, "--competition"),
    ({"owner": "alice", "rename": "t9=x"}, "--rename 't9=x'.*outputs are"),
    ({"owner": "alice", "rename": "t0"}, "OUTPUT=NEW_NAME"),
    ({"owner": "alice", "rename": "t0="}, "OUTPUT=NEW_NAME"),  # no new name
    # a renamed output must not overwrite another column of the output table
    ({"owner": "alice", "rename": "t0=t1"}, r"column\(s\) \['t1'\] twice"),
    ({"owner": "alice", "rename": "t0=seq_ix"}, r"column\(s\) \['seq_ix'\] twice"),
    ({"owner": "alice", "rename": "t0=step_in_seq"}, r"column\(s\) \['step_in_seq'\] twice"),
    ({"owner": "alice", "rename": "t0=a,t1=a"}, r"column\(s\) \['a'\] twice"),
    ({"owner": "alice", "keep_columns": ["row_id"]}, "--keep-columns .* needs --protocol batch"),
    ({"owner": "alice", "rename": "t0=row_id", "keep_columns": ["row_id"], "protocol": "batch"},
     r"--rename 't0=row_id'.*column\(s\) \['row_id'\] twice"),
    # a kept column named as an output: --keep-columns is what clashes, not --rename
    ({"owner": "alice", "keep_columns": ["row_id", "t0"], "protocol": "batch"},
     r"^--keep-columns 'row_id,t0'.*column\(s\) \['t0'\] twice.*as the package's output"),
])
def test_bad_notebook_options_are_refused(package, tmp_path, options, message):
    with pytest.raises(NotebookError, match=message):
        write_notebook(package.zip_path, tmp_path / "k", **options)


def test_without_an_owner_the_package_and_protocol_are_checked_first(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kaggle/kaggle.json either
    out = run_cli("notebook", tmp_path / "nope", expect=2).output
    assert "nope: no such package" in out and "--owner" not in out
    (tmp_path / "pkg").mkdir()
    out = run_cli("notebook", tmp_path / "pkg", "--protocol", "foo", expect=2).output
    assert "--protocol must be one of" in out
    out = run_cli("notebook", tmp_path / "pkg", expect=2).output
    assert "--owner: your Kaggle user name is needed" in out


def test_the_default_owner_is_kaggle_username_else_the_kaggle_configs(tmp_path, monkeypatch):
    from kit.export.notebook import default_owner

    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle/kaggle.json").write_text('{"username": "erin", "key": "k"}')
    config = tmp_path / "config"
    config.mkdir()
    (config / "kaggle.json").write_text('{"username": "dave", "key": "k"}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")
    assert default_owner() == "carol"  # the variable first
    monkeypatch.delenv("KAGGLE_USERNAME")
    assert default_owner() == "dave"  # then $KAGGLE_CONFIG_DIR/kaggle.json, not ~/.kaggle's
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    assert default_owner() == "erin"


def test_short_slugs_and_long_names_follow_kaggles_slug_rules(package, tmp_path):
    # a 6-character dataset slug is the shortest the kaggle CLI takes
    meta = write_notebook(package.zip_path, tmp_path / "a", owner="alice", dataset_slug="abcdef")
    assert meta["dataset_metadata"]["id"] == "alice/abcdef"
    # the kernel id is the title's slug as python-slugify (the CLI's check) makes it
    accented = write_notebook(package.zip_path, tmp_path / "b", owner="alice",
                              title="Modèle GRU 1,000 steps")
    assert accented["kernel_metadata"]["id"] == "alice/modele-gru-1000-steps"
    with pytest.raises(NotebookError, match="would be transliterated by Kaggle"):
        write_notebook(package.zip_path, tmp_path / "c", owner="alice", title="Straße model")
    with pytest.raises(NotebookError, match="an HTML entity"):  # decoded by python-slugify
        write_notebook(package.zip_path, tmp_path / "d", owner="alice", title="a&amp;b model")
    with pytest.raises(NotebookError, match="an HTML entity"):  # numeric ones are decoded too
        write_notebook(package.zip_path, tmp_path / "d", owner="alice", title="a&#38;b model")
    # only a comma between digits goes; the shortest kernel slug (5) and the longest title (50)
    for title, slug in (("v,2 model", "v-2-model"), ("Model", "model"), ("b" * 50, "b" * 50)):
        kernel = write_notebook(package.zip_path, tmp_path / "e", owner="alice",
                                title=title)["kernel_metadata"]
        assert (kernel["title"], kernel["id"]) == (title, f"alice/{slug}")
    # a long package name: the default title is cut so that its slug is the kernel id
    long_pkg = tmp_path / ("a-very-long-submission-name-" * 3).strip("-")
    shutil.copytree(package.folder, long_pkg)
    kernel = write_notebook(long_pkg, tmp_path / "b", owner="alice")["kernel_metadata"]
    title, slug = kernel["title"], kernel["id"].split("/")[1]
    assert len(title) <= 50 and title.endswith("kit submission")
    assert slug == re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") and len(slug) <= 50
    # a name whose 50-character cut of "NAME-package" ends right after a hyphen
    cut_at_hyphen = tmp_path / ("x" * 49 + "_rest")
    shutil.copytree(package.folder, cut_at_hyphen)
    dataset = write_notebook(cut_at_hyphen, tmp_path / "c", owner="alice")["dataset_metadata"]
    assert dataset["id"] == "alice/" + "x" * 49


def test_a_changed_package_is_refused(package, tmp_path):
    folder = tmp_path / "pkg"
    shutil.copytree(package.folder, folder)
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(NotebookError, match="model.onnx changed since pack"):
        write_notebook(folder, tmp_path / "k", owner="alice")


def test_gateway_columns_need_a_package_whose_runtime_answers_them(package, tmp_path):
    from kit.export.pack import read_manifest, write_manifest

    old = tmp_path / "old"
    shutil.copytree(package.folder, old)
    solution = old / "solution.py"
    text = solution.read_text()
    signature = "def predict(self, batch, id_col=None, step_col=None, keep=(), names=None):"
    assert signature in text
    solution.write_text(text.replace(signature, "def predict(self, batch, id_col=None, "
                                                "step_col=None):"))
    write_manifest(old, read_manifest(old))  # an older pack, whole
    with pytest.raises(NotebookError, match="predates --keep-columns"):
        write_notebook(old, tmp_path / "k", owner="alice", keep_columns=["row_id"],
                       protocol="batch")
    with pytest.raises(NotebookError, match="predates --keep-columns and --rename"):
        write_notebook(old, tmp_path / "k", owner="alice", rename="t0=responder_6",
                       protocol="batch")
    write_notebook(old, tmp_path / "k", owner="alice")  # without them it is fine
    # a pack older still, without BatchPredictor: the batch protocol is refused, rows is fine
    solution.write_text(text.replace("class BatchPredictor", "class OldName"))
    write_manifest(old, read_manifest(old))
    with pytest.raises(NotebookError, match="has no BatchPredictor"):
        write_notebook(old, tmp_path / "k2", owner="alice", protocol="batch")
    write_notebook(old, tmp_path / "k2", owner="alice", protocol="rows")


def test_wheels_are_shipped_for_offline_installs(package, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-1.0-py3-none-any.whl").write_bytes(b"PK")
    written = write_notebook(package.zip_path, tmp_path / "k", owner="alice", wheels=wheels)
    # at the top of the dataset: `kaggle datasets create -p` uploads no subfolder by default
    assert (written["dataset"] / "onnxruntime-1.0-py3-none-any.whl").is_file()
    with pytest.raises(NotebookError, match="no .whl files"):
        write_notebook(package.zip_path, tmp_path / "k2", owner="alice", wheels=tmp_path)
    # written again from its own dataset folder (another protocol): the wheels stay
    write_notebook(written["dataset"], tmp_path / "k", owner="alice", protocol="batch")
    assert [p.name for p in written["dataset"].glob("*.whl")] == [
        "onnxruntime-1.0-py3-none-any.whl"]
    # ... unless --wheels gives others
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "onnxruntime-2.0-py3-none-any.whl").write_bytes(b"PK")
    write_notebook(written["dataset"], tmp_path / "k", owner="alice", wheels=newer)
    assert [p.name for p in written["dataset"].glob("*.whl")] == [
        "onnxruntime-2.0-py3-none-any.whl"]
    # a dataset written by an older kit, its wheels in wheels/: they move to the top
    legacy = tmp_path / "legacy"
    shutil.copytree(written["dataset"], legacy)
    (legacy / "wheels").mkdir()
    (legacy / "onnxruntime-2.0-py3-none-any.whl").rename(
        legacy / "wheels" / "onnxruntime-2.0-py3-none-any.whl")
    moved = write_notebook(legacy, tmp_path / "k3", owner="alice")
    assert [p.name for p in moved["dataset"].glob("*.whl")] == [
        "onnxruntime-2.0-py3-none-any.whl"]


def test_a_notebook_written_again_from_the_zip_keeps_the_wheels_of_its_dataset(package,
                                                                               tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-1.0-py3-none-any.whl").write_bytes(b"PK")
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice", wheels=wheels)
    # another protocol from the zip, not from OUT/dataset: the dataset keeps its wheels
    written = write_notebook(package.zip_path, out, owner="alice", protocol="batch")
    assert [p.name for p in written["dataset"].glob("*.whl")] == [
        "onnxruntime-1.0-py3-none-any.whl"]
    assert (written["dataset"] / "onnxruntime-1.0-py3-none-any.whl").read_bytes() == b"PK"
    # ... unless --wheels gives others
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "onnxruntime-2.0-py3-none-any.whl").write_bytes(b"PK2")
    write_notebook(package.zip_path, out, owner="alice", wheels=newer)
    assert [p.name for p in (out / "dataset").glob("*.whl")] == [
        "onnxruntime-2.0-py3-none-any.whl"]


# Test ids past 2**53: a float64 on the way would merge neighbouring ids in the CSV.
BIG_IDS = 10**17


def _kaggle_input(tmp_path: Path, workspace: Path, dataset: Path, id_offset: int = 0) -> Path:
    """Kaggle's layout: attached datasets under the input root, the test file among them
    (the valid file, its ids moved by id_offset), beside a sample of it (its first sequence),
    which sorts first: the notebook took it."""
    root = tmp_path / "input"
    shutil.copytree(dataset, root / "nb-package")
    (root / "competition").mkdir()
    test = pl.read_parquet(workspace / "data/valid.parquet").with_columns(
        pl.col("seq_ix").cast(pl.Int64) + id_offset)
    test.write_parquet(root / "competition/test.parquet")
    test.filter(pl.col("seq_ix") == pl.col("seq_ix").min()).write_parquet(
        root / "competition/sample_test.parquet")
    return root


# Loaded by every Python process of the notebook run (the kernel, any pip it starts): only
# loopback connections (the kernel's own channels) are allowed, so a notebook that reaches for
# the network fails the test instead of quietly downloading.
NO_NETWORK = """
import socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1", "::1", "localhost"):
        raise OSError(f"network blocked in the notebook test: {address}")


def _loopback_only(self, address):
    _check(self, address)
    return _connect(self, address)


def _loopback_only_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = _loopback_only, _loopback_only_ex
"""


def _execute(notebook_path: Path, cwd: Path, monkeypatch) -> str:
    import nbformat
    from nbclient import NotebookClient

    guard = cwd / "no-network"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(guard), *filter(None, [os.environ.get("PYTHONPATH")])]))
    probe = subprocess.run([sys.executable, "-c", "import socket; "
                            "socket.create_connection(('192.0.2.1', 80), timeout=1)"],
                           capture_output=True, text=True)
    assert "network blocked in the notebook test" in probe.stderr, probe.stderr  # guard is on
    notebook = nbformat.read(str(notebook_path), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return "".join(out.get("text", "") for cell in notebook.cells
                   for out in cell.get("outputs", []))  # what the cells printed


def test_try_runs_the_notebook_here_and_prints_what_it_prints(workspace, package, tmp_path):
    """The documented local run (jupyter-execute) showed none of the notebook's output: not
    the note on a keep column the test file lacks, not the count of predictions written."""
    valid = workspace / "data/valid.parquet"
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner", "alice",
                  "--protocol", "batch", "--keep-columns", "row_id", "--try", valid).output
    assert "note: keep column(s) ['row_id'] are not in" in out
    written = pl.read_csv(tmp_path / "kaggle/local-run/predictions.csv")
    rows = pl.read_parquet(valid).filter(pl.col("need_prediction")).height
    assert f"{rows:,} predictions (batch protocol) written to" in out and written.height == rows
    assert f"test file: {valid}" in out
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "k2", "--owner", "alice",
                  "--try", tmp_path / "missing.parquet", expect=2).output
    assert "missing.parquet: no such file" in out and not (tmp_path / "k2").exists()
    (tmp_path / "test.csv").write_text("seq_ix,step_in_seq\n0,0\n")
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "k2", "--owner", "alice",
                  "--try", tmp_path / "test.csv", expect=2).output
    assert "test.csv: not a parquet file" in out and not (tmp_path / "k2").exists()


def test_try_of_a_batch_notebook_renames_without_keep_columns(workspace, package, tmp_path):
    """predict() passed the renames to the runtime only together with --keep-columns: a rename
    alone answered the batch with t0, and the replay found no responder_6 column."""
    valid = workspace / "data/valid.parquet"
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner", "alice",
                  "--protocol", "batch", "--rename", "t0=responder_6", "--try", valid).output
    assert "(batch protocol) written to" in out
    got = pl.read_csv(tmp_path / "kaggle/local-run/predictions.csv")
    assert got.columns == ["seq_ix", "step_in_seq", "responder_6", "t1"]
    got = got.sort(["seq_ix", "step_in_seq"])
    scored = score_submission(package.zip_path, valid, _spec(package), progress=False)
    np.testing.assert_allclose(got.select("responder_6", "t1").to_numpy(), scored.predictions,
                               rtol=0, atol=1e-6)


NO_IPYKERNEL = """
import sys


class _NoIpykernel:
    def find_spec(self, name, path=None, target=None):
        if name == "ipykernel" or name.startswith("ipykernel."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _NoIpykernel())
"""


def test_try_without_ipykernel_says_what_to_install(workspace, package, tmp_path):
    """nbclient imports without ipykernel; the kernel then died in execute() with a
    RuntimeError traceback."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(NO_IPYKERNEL)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(blocked),
                                                       str(Path(__file__).parents[1])])}
    done = subprocess.run([sys.executable, "-m", "kit", "notebook", str(package.zip_path),
                           "--out", str(tmp_path / "k"), "--owner", "alice", "--try",
                           str(workspace / "data/valid.parquet")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert "--try needs nbclient and ipykernel" in done.stderr
    assert "Traceback" not in done.stderr


def test_try_runs_the_package_it_wrote_whatever_the_shell_sets(workspace, package, runs,
                                                              tmp_path, monkeypatch):
    """KIT_PACKAGE_DIR or KIT_PROTOCOL left in the shell reached the kernel: --try ran
    another package, or the other protocol, without a word; Kaggle sets neither."""
    other = pack_run(runs["lstm"], "other", tmp_path / "subs", budget=False)
    monkeypatch.setenv("KIT_PACKAGE_DIR", str(other.folder))
    monkeypatch.setenv("KIT_PROTOCOL", "rows")
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner", "alice",
                  "--protocol", "batch", "--try", workspace / "data/valid.parquet").output
    assert "(batch protocol) written to" in out and str(other.folder) not in out
    assert os.environ["KIT_PACKAGE_DIR"] == str(other.folder)  # the shell's, untouched


def test_try_clears_every_variable_that_steers_the_notebook(package, tmp_path, monkeypatch):
    """The kernel --try starts gets none of the shell's steering variables (Kaggle sets none),
    only the input root, test file and output folder of this run."""
    import nbclient

    from kit.export.notebook import run_locally

    steering = ("KIT_PACKAGE_DIR", "KIT_PROTOCOL", "KIT_PREDICTIONS_FILE", "KIT_FRAME",
                "KIT_TEST_FILE", "KIT_INPUT_ROOT", "KIT_OUTPUT_DIR",
                "KAGGLE_IS_COMPETITION_RERUN")
    for name in steering:
        monkeypatch.setenv(name, "from-the-shell")
    monkeypatch.setenv("KIT_UNRELATED", "kept")
    envs = []

    class Client:  # a stand-in kernel: what it was started with
        def __init__(self, notebook, **options):
            pass

        def execute(self, env):
            envs.append(env)

    monkeypatch.setattr(nbclient, "NotebookClient", Client)
    written = write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice")
    test = tmp_path / "test.parquet"
    test.write_bytes(b"")
    run_locally(written, test, tmp_path / "run")
    (env,) = envs
    assert {name: env.get(name) for name in steering} == {
        name: None for name in steering} | {
        "KIT_INPUT_ROOT": str((tmp_path / "kaggle").resolve()),
        "KIT_TEST_FILE": str(test.resolve()), "KIT_OUTPUT_DIR": str((tmp_path / "run").resolve())}
    assert env["KIT_UNRELATED"] == "kept"


@pytest.mark.parametrize("protocol, env, keep", [
    ("rows", {}, []),
    # a gateway's row_id, which the local test file lacks: left out, with a note
    ("batch", {}, ["row_id"]),
    # both protocols are in every notebook; pandas frames as some gateways send them
    ("rows", {"KIT_PROTOCOL": "batch", "KIT_FRAME": "pandas"}, []),
    ("batch", {"KIT_PROTOCOL": "rows"}, []),
], ids=["rows", "batch", "rows-switched-to-batch-pandas", "batch-switched-to-rows"])
def test_the_notebook_runs_offline_and_matches_kit_score(workspace, package, tmp_path,
                                                         monkeypatch, protocol, env, keep):
    keep_args = ["--keep-columns", ",".join(keep)] if keep else []
    out = run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner",
                  "alice", "--protocol", protocol, *keep_args).output
    assert "kaggle kernels push" in out
    root = _kaggle_input(tmp_path, workspace, tmp_path / "kaggle/dataset", BIG_IDS)
    monkeypatch.setenv("KIT_INPUT_ROOT", str(root))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path / "working"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    printed = _execute(tmp_path / "kaggle/kernel/notebook.ipynb", tmp_path, monkeypatch)
    assert ("note: keep column(s) ['row_id'] are not in" in printed) == bool(keep), printed
    assert f"test file: {root / 'competition/test.parquet'}" in printed
    got = pl.read_csv(tmp_path / "working/predictions.csv").sort(["seq_ix", "step_in_seq"])
    valid = workspace / "data/valid.parquet"
    scored = score_submission(package.zip_path, valid, _spec(package),
                              progress=False)
    truth_rows = pl.read_parquet(valid).filter(pl.col("need_prediction")).with_columns(
        pl.col("seq_ix").cast(pl.Int64) + BIG_IDS)
    assert got.height == truth_rows.height == len(scored.predictions)
    assert got.select("seq_ix", "step_in_seq").equals(truth_rows.select("seq_ix",
                                                                        "step_in_seq"))
    tol = 0 if env.get("KIT_PROTOCOL", protocol) == "rows" else 1e-6
    np.testing.assert_allclose(got.select("t0", "t1").to_numpy(), scored.predictions,
                               rtol=0, atol=tol)


def test_the_batch_replay_runs_an_ids_sequences_one_after_another(workspace, package, tmp_path,
                                                                  monkeypatch):
    # an id that starts over (its steps go back, as Jane Street's time_id each date_id): the
    # local replay must not batch its second sequence's steps 0.. before its first's 60..
    df = pl.read_parquet(workspace / "data/valid.parquet")
    ids = df["seq_ix"].unique(maintain_order=True).to_list()
    first = df.filter(pl.col("seq_ix") == ids[0])
    again = df.filter(pl.col("seq_ix") == ids[1]).with_columns(
        pl.lit(ids[0], dtype=df["seq_ix"].dtype).alias("seq_ix"))
    test = pl.concat([first.with_columns(pl.col("step_in_seq") + first.height), again,
                      df.filter(~pl.col("seq_ix").is_in(ids[:2]))])
    _execute(_notebook_on(package, test, "batch", tmp_path, monkeypatch), tmp_path, monkeypatch)
    got = pl.read_csv(tmp_path / "working/predictions.csv")
    model, want = _solution(package.folder).PredictionModel(), {}  # the scorer's file order
    features = json.loads((package.folder / "manifest.json").read_text())["inputs"]
    for seq, step, need, *row in test.select("seq_ix", "step_in_seq", "need_prediction",
                                             *features).iter_rows():
        out = model.predict(Point(seq, step, need, np.asarray(row, dtype=np.float64)))
        if out is not None:
            want[(seq, step)] = out
    assert got.height == len(want)
    worst = max(np.abs(np.array([t0, t1]) - want[(seq, step)]).max()
                for seq, step, t0, t1 in got.select("seq_ix", "step_in_seq", "t0",
                                                    "t1").iter_rows())
    assert worst <= 1e-6, worst


def test_the_batch_replay_restarts_an_id_whose_step_repeats(workspace, package, tmp_path,
                                                           monkeypatch):
    """The runtime starts a new sequence when an id's step does not move forward, a repeated
    step included; the replay restarted only on a step that went back, so a second sequence
    whose first step repeated the first's last step was fed on as its continuation."""
    df = pl.read_parquet(workspace / "data/valid.parquet")
    ids = df["seq_ix"].unique(maintain_order=True).to_list()
    first = df.filter(pl.col("seq_ix") == ids[0])
    last = first["step_in_seq"].max()
    again = df.filter(pl.col("seq_ix") == ids[1]).with_columns(  # its steps from `last` on
        pl.lit(ids[0], dtype=df["seq_ix"].dtype).alias("seq_ix"), pl.col("step_in_seq") + last)
    test = pl.concat([first, again, df.filter(~pl.col("seq_ix").is_in(ids[:2]))])
    assert test.filter((pl.col("seq_ix") == ids[0]) & (pl.col("step_in_seq") == last)).height == 2
    _execute(_notebook_on(package, test, "batch", tmp_path, monkeypatch), tmp_path, monkeypatch)
    got = pl.read_csv(tmp_path / "working/predictions.csv")
    want = _runtime_on(package, test)  # in file order, as the replay writes
    assert got["seq_ix"].to_list() == [seq for seq, _, _ in want]
    assert got["step_in_seq"].to_list() == [step for _, step, _ in want]
    np.testing.assert_allclose(got.select("t0", "t1").to_numpy(),
                               np.stack([p for _, _, p in want]), rtol=0, atol=1e-6)


def test_the_batch_replay_feeds_a_row_with_a_missing_step_in_its_place(workspace, package,
                                                                       tmp_path, monkeypatch):
    """The replay ordered each id's rows by step, and NaN sorts last: a row whose step is
    null was fed after step 99, and the rows after it ran without its input (0.14 off the
    rows protocol, which continues the sequence in file order)."""
    df = pl.read_parquet(workspace / "data/valid.parquet")
    test = df.with_columns(pl.when(pl.col("step_in_seq") == 40).then(None)
                           .otherwise(pl.col("step_in_seq")).alias("step_in_seq"))
    _execute(_notebook_on(package, test, "batch", tmp_path, monkeypatch), tmp_path, monkeypatch)
    got = pl.read_csv(tmp_path / "working/predictions.csv")
    model, want = _solution(package.folder).PredictionModel(), []  # in file order
    features = json.loads((package.folder / "manifest.json").read_text())["inputs"]
    for seq, step, need, *row in test.select("seq_ix", "step_in_seq", "need_prediction",
                                             *features).iter_rows():
        out = model.predict(Point(seq, step, need, np.asarray(row, dtype=np.float64)))
        if out is not None:
            want.append(out)
    assert got.height == len(want) and "40" not in got["step_in_seq"].cast(str).to_list()
    np.testing.assert_allclose(got.select("t0", "t1").to_numpy(), np.array(want), rtol=0,
                               atol=1e-6)


def test_the_replays_sequence_numbers_take_every_kind_of_missing_id():
    # the notebook's own code (the BATCH cell), on ids as pandas and Polars give them: NaN and
    # pd.NA ids are one sequence each (pd.NA == x is NA, which an `if` cannot take)
    import pandas as pd

    from kit.export import notebook

    cell = {"np": np}
    exec(notebook.BATCH, cell)
    runs = cell["sequence_runs"]([1, pd.NA, 1, pd.NA, float("nan"), float("nan"), 1, None, None],
                                 [0, 0, 1, 1, 0, 0, 0, 5, 6])
    assert runs.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    # missing steps continue, as does the step after one (no comparison holds: the runtime's
    # rule; pd.NA's raised here); each row keeps its place
    steps = [0, pd.NA, 2, 1, None, 0, float("nan")]
    runs = cell["sequence_runs"]([1] * 7, steps)
    assert runs.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert cell["replay_times"]([1] * 7, runs, steps).tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert cell["replay_times"]([1, 2], np.zeros(2, np.int64), [5, 3]).tolist() == [5, 3]


def test_the_notebook_runs_the_package_it_was_written_for(workspace, runs, package, tmp_path,
                                                          monkeypatch):
    from nbclient.exceptions import CellExecutionError

    write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice")
    # glob characters and a space in the input root; another kit package sorting first
    root = tmp_path / "in [1] put"
    shutil.copytree(_kaggle_input(tmp_path, workspace, tmp_path / "kaggle/dataset"), root)
    baseline = pack_run(runs["gru_b"], "a-baseline", tmp_path / "subs").folder
    shutil.copytree(baseline, root / "a-baseline")
    monkeypatch.setenv("KIT_INPUT_ROOT", str(root))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path / "working"))
    _execute(tmp_path / "kaggle/kernel/notebook.ipynb", tmp_path, monkeypatch)
    got = pl.read_csv(tmp_path / "working/predictions.csv").sort(["seq_ix", "step_in_seq"])
    scored = score_submission(package.zip_path, workspace / "data/valid.parquet",
                              _spec(package), progress=False)
    np.testing.assert_array_equal(got.select("t0", "t1").to_numpy(), scored.predictions)
    # two packages and neither is this notebook's: refused, not a guess
    shutil.rmtree(root / "nb-package")
    shutil.copytree(pack_run(runs["lstm"], "other", tmp_path / "subs").folder, root / "other")
    with pytest.raises(CellExecutionError, match="none holds the model this notebook was"):
        _execute(tmp_path / "kaggle/kernel/notebook.ipynb", tmp_path, monkeypatch)


# A stand-in for a competition's kaggle_evaluation package, only to check kit's side of the
# hand-off (found on the input root, the server class picked, predict(batch, lags) answered
# with the kept and renamed columns): it replays the test file one time step at a time, with a
# row_id column as Jane Street's gateway sends, and writes the answers it got.
GATEWAY = """
import os

import polars as pl


class StandInInferenceServer:
    def __init__(self, predict):
        self.predict = predict

    def serve(self):
        test = pl.read_parquet(os.environ["GATEWAY_TEST_FILE"]).with_row_index("row_id")
        answers = [self.predict(batch, None) for _, batch in
                   test.group_by("step_in_seq", maintain_order=True)]
        pl.concat(answers).write_parquet(os.environ["GATEWAY_ANSWERS"])
"""


def test_the_batch_notebook_hands_predict_to_the_competitions_inference_server(
        workspace, package, tmp_path, monkeypatch):
    run_cli("notebook", package.zip_path, "--out", tmp_path / "kaggle", "--owner", "alice",
            "--protocol", "batch", "--keep-columns", "row_id", "--rename", "t0=responder_6")
    root = _kaggle_input(tmp_path, workspace, tmp_path / "kaggle/dataset")
    gateway = root / "competition/kaggle_evaluation"
    gateway.mkdir()
    (gateway / "__init__.py").write_text("")
    (gateway / "stand_in_inference_server.py").write_text(GATEWAY)
    valid = workspace / "data/valid.parquet"
    for key, value in {"KIT_INPUT_ROOT": root, "KAGGLE_IS_COMPETITION_RERUN": "1",
                       "GATEWAY_TEST_FILE": valid,
                       "GATEWAY_ANSWERS": tmp_path / "answers.parquet"}.items():
        monkeypatch.setenv(key, str(value))
    _execute(tmp_path / "kaggle/kernel/notebook.ipynb", tmp_path, monkeypatch)
    answers = pl.read_parquet(tmp_path / "answers.parquet")
    assert answers.columns == ["row_id", "seq_ix", "responder_6", "t1"]
    frame = pl.read_parquet(valid).with_row_index("row_id")
    need = answers.join(frame.select("row_id", "need_prediction"), on="row_id")
    assert answers.height == frame.height and need.height == frame.height
    got = need.filter(pl.col("need_prediction")).sort("row_id")
    scored = score_submission(package.zip_path, valid, _spec(package), progress=False)
    np.testing.assert_allclose(got.select("responder_6", "t1").to_numpy(), scored.predictions,
                               rtol=0, atol=1e-6)


def _spec(package):
    from kit.export.pack import submission_spec

    return submission_spec(package.zip_path)


def test_a_notebook_written_again_from_its_own_dataset_folder(package, tmp_path, monkeypatch):
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice")
    before = {p.name: p.read_bytes() for p in (out / "dataset").iterdir()}
    # a failed check (no wheels there) leaves OUT as it was
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotebookError, match="no .whl files"):
        write_notebook(out / "dataset", out, owner="alice", wheels=tmp_path / "empty")
    assert {p.name: p.read_bytes() for p in (out / "dataset").iterdir()} == before
    assert (out / "kernel/notebook.ipynb").is_file()
    # the package read from OUT/dataset is not deleted before it is copied
    write_notebook(out / "dataset", out, owner="alice", protocol="batch")
    assert {p.name: p.read_bytes() for p in (out / "dataset").iterdir()} == before
    cells = json.loads((out / "kernel/notebook.ipynb").read_text())["cells"]
    assert any('"KIT_PROTOCOL", "batch"' in "".join(c["source"]) for c in cells)
    assert not [p for p in out.iterdir() if p.name.startswith(".kit-notebook-")]
    # a killed command's staging folder goes with the next one; a live one's stays

    from kit.export.pack import owner_tag

    dead = dead_pid()
    host = owner_tag().split(".")[1]
    for left in (f".kit-notebook-{dead}.{host}-abc", f".kit-notebook-{owner_tag()}-live"):
        (out / left / "dataset").mkdir(parents=True)
    write_notebook(out / "dataset", out, owner="alice", protocol="batch")
    assert [p.name for p in out.iterdir() if p.name.startswith(".kit-notebook-")] == [
        f".kit-notebook-{owner_tag()}-live"]
    shutil.rmtree(out / f".kit-notebook-{owner_tag()}-live")
    # without --out, the dataset folder's own OUT is rewritten (not OUT/dataset-kaggle); and
    # without --owner (nor KAGGLE_USERNAME), the owner on record (it was refused)
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    run_cli("notebook", out / "dataset")
    assert not (out / "dataset-kaggle").exists()
    meta = json.loads((out / "dataset/dataset-metadata.json").read_text())
    assert meta["id"].startswith("alice/")
    # written again, it keeps the batch protocol it had (r310: it fell back to rows)
    assert '"KIT_PROTOCOL", "batch"' in "".join(
        "".join(c["source"]) for c in json.loads((out / "kernel/notebook.ipynb").read_text())
        ["cells"])
    # a `current` symlink to a package keeps its own name (one Kaggle dataset across packs)
    (tmp_path / "current").symlink_to(package.folder)
    run_cli("notebook", tmp_path / "current", "--owner", "alice")
    meta = json.loads((tmp_path / "current-kaggle/dataset/dataset-metadata.json").read_text())
    assert meta["id"] == "alice/current-package"
    # `kit notebook .` inside the package folder: named after the folder, not ""
    monkeypatch.chdir(package.folder)
    printed = run_cli("notebook", ".", "--owner", "alice").output
    meta = json.loads((package.folder.parent / "nb-kaggle/dataset/dataset-metadata.json")
                      .read_text())
    assert meta["id"] == "alice/nb-package" and "nb-kaggle/dataset" in printed
    shutil.rmtree(package.folder.parent / "nb-kaggle")


def test_an_owner_given_wins_over_the_dataset_folders_owner_on_record(package, tmp_path):
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice")
    written = write_notebook(out / "dataset", out, owner="bob")
    assert written["dataset_metadata"]["id"] == "bob/nb-package"
    kernel = written["kernel_metadata"]
    assert kernel["id"].startswith("bob/") and kernel["dataset_sources"] == ["bob/nb-package"]


def test_kit_notebook_dot_inside_its_dataset_folder_rewrites_that_out(package, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice")
    before = {p.name: p.read_bytes() for p in (out / "dataset").iterdir()}
    monkeypatch.chdir(out / "dataset")  # `.` is OUT/dataset: OUT is its parent, not `.`
    inode = os.stat(".").st_ino
    run_cli("notebook", ".", "--owner", "alice", "--protocol", "batch")
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "kernel"]
    assert {p.name: p.read_bytes() for p in (out / "dataset").iterdir()} == before
    # the shell's folder is the one rewritten, not a deleted one (where `ls` showed nothing)
    assert os.stat(".").st_ino == inode and sorted(os.listdir(".")) == sorted(before)
    cells = json.loads((out / "kernel/notebook.ipynb").read_text())["cells"]
    assert any('"KIT_PROTOCOL", "batch"' in "".join(c["source"]) for c in cells)


def test_a_failed_check_does_not_leave_an_out_folder_behind(package, tmp_path):
    out = tmp_path / "never/made"
    with pytest.raises(NotebookError, match="--rename"):
        write_notebook(package.zip_path, out, owner="alice", rename="t9=x")
    assert not (tmp_path / "never").exists()  # nor the folder made for it


def test_a_zip_without_a_manifest_is_named(package, tmp_path):
    import zipfile

    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.write(package.folder / "solution.py", "solution.py")
    with pytest.raises(NotebookError, match=r"bare.zip: no manifest.json"):
        write_notebook(bare, tmp_path / "kg", owner="alice")


def test_only_the_notebook_folders_are_replaced_in_out(package, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    write_notebook(package.zip_path, out, owner="alice")
    write_notebook(package.zip_path, out, owner="alice", protocol="batch")
    assert (out / "keep.txt").read_text() == "mine"
    title = json.loads((out / "dataset/dataset-metadata.json").read_text())["title"]
    assert title == "nb package"


def test_folders_kit_notebook_did_not_write_are_not_replaced(workspace, runs, package, tmp_path):
    out = tmp_path / "userdir"
    (out / "dataset").mkdir(parents=True)
    (out / "dataset/data.csv").write_text("p2")
    printed = run_cli("notebook", package.zip_path, "--owner", "alice", "--out", out,
                      expect=2).output
    assert "dataset exists and is not a folder written by kit notebook" in printed
    assert (out / "dataset/data.csv").read_text() == "p2"
    assert sorted(p.name for p in out.iterdir()) == ["dataset"]  # nothing written either
    # a kit package packed as `kernel` beside the zip is not a notebook folder
    subs = tmp_path / "subs"
    pack_run(runs["gru"], "kernel", subs)
    shutil.copy2(package.zip_path, subs / "nb.zip")
    printed = run_cli("notebook", subs / "nb.zip", "--owner", "alice", "--out", subs,
                      expect=2).output
    assert "kernel exists and is not a folder written by kit notebook" in printed
    assert (subs / "kernel/manifest.json").is_file() and not (subs / "dataset").exists()
    # ... nor is a Kaggle kernel of your own (its notebook not kit's), nor a file or a symlink
    mine = tmp_path / "mine"
    (mine / "kernel").mkdir(parents=True)
    (mine / "kernel/kernel-metadata.json").write_text('{"code_file": "nb.ipynb"}')
    (mine / "kernel/nb.ipynb").write_text("{}")
    (tmp_path / "file").mkdir()
    (tmp_path / "file/dataset").write_text("x")
    (tmp_path / "link").mkdir()
    (tmp_path / "link/kernel").symlink_to(tmp_path / "empty", target_is_directory=True)
    for folder in ("mine", "file", "link"):
        with pytest.raises(NotebookError, match="is not a folder written by kit notebook"):
            write_notebook(package.zip_path, tmp_path / folder, owner="alice")
    assert (mine / "kernel/nb.ipynb").read_text() == "{}"
    # empty folders, and the folders kit notebook wrote, are replaced
    (out / "dataset/data.csv").unlink()
    (out / "kernel").mkdir()
    write_notebook(package.zip_path, out, owner="alice")
    write_notebook(package.zip_path, out, owner="alice", protocol="batch")
    write_notebook(out / "dataset", out, owner="alice")  # in place
    assert (out / "kernel/notebook.ipynb").is_file()


def test_a_dataset_folder_of_yours_with_kaggle_metadata_is_not_replaced(package, tmp_path):
    """Your own Kaggle dataset folder (your data and a dataset-metadata.json, as `kaggle
    datasets init` writes) in OUT/dataset holds no kit package: not kit notebook's to delete."""
    out = tmp_path / "userdir"
    (out / "dataset").mkdir(parents=True)
    (out / "dataset/data.csv").write_text("p2")
    (out / "dataset/dataset-metadata.json").write_text(json.dumps(
        {"title": "my data", "id": "alice/my-data", "licenses": [{"name": "CC0-1.0"}]}))
    before = {p.name: p.read_bytes() for p in (out / "dataset").iterdir()}
    with pytest.raises(NotebookError, match="dataset exists and is not a folder written by kit"):
        write_notebook(package.zip_path, out, owner="alice")
    assert {p.name: p.read_bytes() for p in (out / "dataset").iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["dataset"]


def _notebook_on(package, test: pl.DataFrame, protocol: str, tmp_path: Path,
                 monkeypatch) -> Path:
    """The package's notebook with `test` as the competition's test.parquet, laid out under
    an input root as on Kaggle; its predictions go to tmp_path/working."""
    write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice", protocol=protocol)
    root = tmp_path / "input"
    shutil.copytree(tmp_path / "kaggle/dataset", root / "nb-package")
    (root / "competition").mkdir()
    test.write_parquet(root / "competition/test.parquet")
    monkeypatch.setenv("KIT_INPUT_ROOT", str(root))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path / "working"))
    return tmp_path / "kaggle/kernel/notebook.ipynb"


def _runtime_on(package, test: pl.DataFrame) -> list[tuple]:
    """(id, step, predictions) of the package's row runtime over `test` in file order, text
    in a feature read as NaN (as the runtime's numbers() reads it)."""
    model = _solution(package.folder).PredictionModel()
    features = json.loads((package.folder / "manifest.json").read_text())["inputs"]
    rows = test.select(pl.col(c).cast(pl.Float64, strict=False) for c in features).to_numpy()
    out = []
    for (seq, step, need), row in zip(test.select("seq_ix", "step_in_seq",
                                                  "need_prediction").iter_rows(), rows,
                                      strict=True):
        pred = model.predict(Point(seq, step, need, row))
        if pred is not None:
            out.append((seq, step, pred))
    return out


@pytest.mark.parametrize("protocol", ["rows", "batch"])
def test_the_predictions_file_keeps_text_ids_whole_in_file_order(workspace, package, tmp_path,
                                                                 monkeypatch, protocol):
    """Lines were joined with commas unquoted: an id "AAPL,16" shifted every column after
    it. Text in a feature column stopped the rows protocol (the runtime reads it as NaN); the
    batch protocol wrote its predictions in replay order, not the file's; and a
    predictions file named .parquet held CSV text."""
    valid = pl.read_parquet(workspace / "data/valid.parquet")
    test = valid.with_columns(
        pl.format('AAPL,"{}"', pl.col("seq_ix")).alias("seq_ix"),
        pl.when(pl.int_range(pl.len()) == 12).then(pl.lit("n/a"))
        .otherwise(pl.col("p3").cast(pl.String)).alias("p3"))
    notebook = _notebook_on(package, test, protocol, tmp_path, monkeypatch)
    want = _runtime_on(package, test)
    for name, read in (("predictions.csv", pl.read_csv), ("predictions.parquet", pl.read_parquet)):
        if name.endswith(".parquet") and protocol == "batch":
            continue  # one writer for both protocols: the rows run shows it
        monkeypatch.setenv("KIT_PREDICTIONS_FILE", name)
        _execute(notebook, tmp_path, monkeypatch)
        got = read(tmp_path / "working" / name)
        assert got.columns == ["seq_ix", "step_in_seq", "t0", "t1"]
        assert got["seq_ix"].to_list() == [seq for seq, _, _ in want]  # whole, in file order
        assert got["step_in_seq"].to_list() == [step for _, step, _ in want]
        tol = 0 if protocol == "rows" else 1e-6
        np.testing.assert_allclose(got.select("t0", "t1").to_numpy(),
                                   np.stack([p for _, _, p in want]), rtol=0, atol=tol)


def test_a_test_file_without_a_column_the_package_reads_is_named(workspace, package, tmp_path,
                                                                  monkeypatch):
    from nbclient.exceptions import CellExecutionError

    test = pl.read_parquet(workspace / "data/valid.parquet").drop("need_prediction")
    notebook = _notebook_on(package, test, "rows", tmp_path, monkeypatch)
    with pytest.raises(CellExecutionError, match=r"lacks column\(s\) \['need_prediction'\]"):
        _execute(notebook, tmp_path, monkeypatch)


def test_the_csv_writes_a_missing_id_or_step_empty_whatever_the_frame_library():
    """A null id was written "None" from Polars and "nan" from pandas: the same file gave
    two texts, and neither reads back as a null."""
    import ast

    import pandas as pd

    from kit.export import notebook

    (source,) = [node for node in ast.parse(notebook.LOAD).body
                 if isinstance(node, ast.FunctionDef) and node.name == "key_text"]
    cell = {}
    exec(compile(ast.Module([source], type_ignores=[]), "LOAD", "exec"), cell)
    key_text = cell["key_text"]
    assert [key_text(v) for v in (None, float("nan"), pd.NA, 3.0, 2**70, "a,b")] == [
        "", "", "", "3", str(2**70), "a,b"]


def _generated_functions(cell: str, names: tuple[str, ...], **context) -> dict:
    """The named functions of a generated notebook cell, defined without running the cell's
    other code; `context` gives the names they read (INPUT_ROOT, MODEL_SHA256, ...)."""
    import ast
    import glob

    nodes = [node for node in ast.parse(cell).body
             if isinstance(node, ast.FunctionDef) and node.name in names]
    assert sorted(node.name for node in nodes) == sorted(names)
    namespace = {"glob": glob, "hashlib": hashlib, "os": os, "sys": sys, **context}
    exec(compile(ast.Module(nodes, type_ignores=[]), "cell", "exec"), namespace)
    return namespace


def test_the_notebook_finds_its_package_at_any_depth_and_runs_a_lone_other_one_warned(
        tmp_path, capsys):
    from kit.export import notebook

    root = tmp_path / "input"
    package = root / "datasets/alice/nb-package"  # two levels under the input root
    package.mkdir(parents=True)
    for name, data in (("manifest.json", b"{}"), ("solution.py", b""), ("model.onnx", b"g1")):
        (package / name).write_bytes(data)
    names = ("under_input", "sha256", "find_package")
    cell = _generated_functions(notebook.SETUP, names, INPUT_ROOT=str(root),
                                MODEL_SHA256=hashlib.sha256(b"g1").hexdigest())
    assert cell["find_package"]() == str(package)
    assert "warning" not in capsys.readouterr().out
    # the dataset updated with a new pack: its one package runs, with a warning
    cell = _generated_functions(notebook.SETUP, names, INPUT_ROOT=str(root),
                                MODEL_SHA256=hashlib.sha256(b"g0").hexdigest())
    assert cell["find_package"]() == str(package)
    assert f"warning: {package}/model.onnx is not the model this notebook was written for" in (
        capsys.readouterr().out)


def test_two_test_parquet_files_under_the_input_root_are_refused_by_name(tmp_path,
                                                                         monkeypatch):
    from kit.export import notebook

    monkeypatch.delenv("KIT_TEST_FILE", raising=False)
    root = tmp_path / "input"
    for name in ("a/test.parquet", "a/sample_test.parquet", "b/c/test.parquet"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    setup = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    cell = _generated_functions(notebook.LOAD, ("find_test_file",), INPUT_ROOT=str(root),
                                under_input=setup["under_input"])
    with pytest.raises(FileNotFoundError, match=r"^2 test.parquet files under .*KIT_TEST_FILE"):
        cell["find_test_file"]()
    (root / "b/c/test.parquet").unlink()  # one test.parquet: taken, not its sample
    assert cell["find_test_file"]() == str(root / "a/test.parquet")


def test_the_competitions_kaggle_evaluation_is_found_two_levels_down(tmp_path, monkeypatch):
    from kit.export import notebook

    root = tmp_path / "input"
    gateway = root / "competitions/my-comp/kaggle_evaluation"
    gateway.mkdir(parents=True)
    (gateway / "__init__.py").write_text("")
    (gateway / "stand_in_inference_server.py").write_text(
        "class StandInInferenceServer:\n"
        "    def __init__(self, predict):\n"
        "        self.predict = predict\n\n"
        "    def serve(self):\n"
        "        self.predict('served')\n")
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.split(".")[0] == "kaggle_evaluation"]:
        monkeypatch.delitem(sys.modules, name)
    calls = []
    setup = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    cell = _generated_functions(notebook.BATCH, ("serve_if_competition_rerun",),
                                INPUT_ROOT=str(root), under_input=setup["under_input"],
                                predict=calls.append)
    try:
        assert cell["serve_if_competition_rerun"]() is True and calls == ["served"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "kaggle_evaluation"]:
            del sys.modules[name]


def test_the_offline_install_finds_links_in_every_wheel_folder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from kit.export import notebook

    root = tmp_path / "input"
    for name in ("a-wheels/onnxruntime-1.0-py3-none-any.whl", "b/deps/numpy-2.0-py3-none-any.whl"):
        (root / name).parent.mkdir(parents=True)
        (root / name).write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the runtime lacks it
    calls = []
    namespace = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    namespace["subprocess"] = SimpleNamespace(check_call=calls.append)
    exec(notebook.WHEELS, namespace)
    (args,) = calls
    assert args[:4] == [sys.executable, "-m", "pip", "install"] and args[-1] == "onnxruntime"
    assert "--no-index" in args
    assert [a for a in args if a.startswith("--find-links")] == [
        f"--find-links={root / 'a-wheels'}", f"--find-links={root / 'b/deps'}"]


def test_a_notebook_written_again_keeps_its_kernels_title_and_competition(package, tmp_path):
    """Written again from OUT/dataset (to switch protocol, as kaggle.md shows), the kernel got
    the default title, so a new kernel id, and no competition: pushed, a second kernel without
    the competition's test file."""
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice", competition="my-comp",
                   title="My Great Model")
    first = json.loads((out / "kernel/kernel-metadata.json").read_text())
    for source in (out / "dataset", package.zip_path):
        write_notebook(source, out, owner="alice", protocol="batch")
        again = json.loads((out / "kernel/kernel-metadata.json").read_text())
        assert (again["id"], again["title"], again["competition_sources"]) == (
            first["id"], "My Great Model", ["my-comp"])
    write_notebook(out / "dataset", out, owner="alice", competition="other-comp",
                   title="Another Title")  # given: they win
    meta = json.loads((out / "kernel/kernel-metadata.json").read_text())
    assert (meta["id"], meta["competition_sources"]) == ("alice/another-title", ["other-comp"])
    fresh = tmp_path / "fresh"  # a new OUT: the defaults
    write_notebook(package.zip_path, fresh, owner="alice")
    meta = json.loads((fresh / "kernel/kernel-metadata.json").read_text())
    assert meta["competition_sources"] == [] and meta["title"] != "My Great Model"


def test_big_integer_steps_keep_their_value_in_a_step_with_a_null_step(workspace, package):
    """A null step made the step column float64: another id's step 1.7e18 + 2 read as equal
    to its last (1.7e18 + 1) and the id started over (0.23 off the row runtime)."""
    module = _solution(package.folder)
    rows = pl.read_parquet(workspace / "data/valid.parquet").filter(
        pl.col("seq_ix") == pl.col("seq_ix").min())
    base = 1_700_000_000_000_000_001
    predictor, alone = module.BatchPredictor(), module.BatchPredictor()
    for t in range(4):
        row = rows.filter(pl.col("step_in_seq") == t)
        both = pl.concat([row, row]).with_columns(
            pl.Series("seq_ix", [1, 2]),
            pl.Series("step_in_seq", [base + t, None if t == 2 else base + t], dtype=pl.Int64))
        got = predictor.predict(both)
        want = alone.predict(both.head(1))
        np.testing.assert_allclose(got["t0"][0], want["t0"][0], rtol=1e-6)


def test_a_batch_refused_after_its_rows_were_read_leaves_the_state_as_it_was(package):
    """A kept column pandas cannot hand back (a name twice) failed after the state had moved:
    the batch sent again was a step back, and the ids started over."""
    import pandas as pd

    module = _solution(package.folder)
    columns = module_columns(package)
    rng = np.random.default_rng(8)

    def frame(t):
        batch = pd.DataFrame(rng.standard_normal((2, len(columns))), columns=columns)
        batch.insert(0, "seq_ix", [1, 2])
        batch.insert(1, "step_in_seq", [t, t])
        batch["row_id"] = [10 * t, 10 * t + 1]
        return batch

    frames = [frame(t) for t in range(3)]
    predictor, clean = module.BatchPredictor(), module.BatchPredictor()
    predictor.predict(frames[0], keep=["row_id"])
    clean.predict(frames[0], keep=["row_id"])
    bad = pd.concat([frames[1], frames[1][["row_id"]]], axis=1)
    with pytest.raises(AttributeError):  # pandas hands a frame back for a name twice
        predictor.predict(bad, keep=["row_id"])
    for t in (1, 2):
        np.testing.assert_array_equal(predictor.predict(frames[t], keep=["row_id"])["t0"],
                                      clean.predict(frames[t], keep=["row_id"])["t0"])


def test_cli_notebook_writes_its_title_slug_competition_and_wheels_into_the_metadata(
        package, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime-1.0-py3-none-any.whl").write_bytes(b"PK")
    out = tmp_path / "kaggle"
    run_cli("notebook", package.zip_path, "--out", out, "--owner", "alice",
            "--title", "My LOB Model", "--dataset-slug", "my-lob-package",
            "--competition", "predictorium-lob", "--wheels", wheels)
    kernel = json.loads((out / "kernel/kernel-metadata.json").read_text())
    assert kernel["title"] == "My LOB Model" and kernel["id"] == "alice/my-lob-model"
    assert kernel["dataset_sources"] == ["alice/my-lob-package"]
    assert kernel["competition_sources"] == ["predictorium-lob"]
    dataset = json.loads((out / "dataset/dataset-metadata.json").read_text())
    assert dataset["id"] == "alice/my-lob-package"
    assert (out / "dataset/onnxruntime-1.0-py3-none-any.whl").is_file()
