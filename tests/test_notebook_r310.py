"""kit notebook written again keeps its options and a hand-edited notebook, the test file and
wheel advice a Kaggle user can act on, and a dataset older than its package said (review
r310). Real packages, real notebooks, `kit` run as a user runs it."""

import json
import re
import shlex
import sys
import zipfile
from pathlib import Path

import pytest

import tests.test_notebook as notebook_tests
from kit.export import notebook
from kit.export.notebook import write_notebook
from kit.export.pack import pack_run
from tests.cli import run_cli
from tests.test_notebook import GATEWAY, _execute, _generated_functions, _kaggle_input

package = notebook_tests.package  # its fixture: the GRU run packed as `nb`


def _settings(out: Path) -> dict:
    """The options kit recorded in the notebook it wrote, and its kernel's metadata."""
    document = json.loads((out / "kernel/notebook.ipynb").read_text())
    setup = "".join(document["cells"][1]["source"])
    return {"recorded": document["metadata"].get("kit", {}), "setup": setup,
            "kernel": json.loads((out / "kernel/kernel-metadata.json").read_text())}


def _no_default_owner(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


def test_the_command_the_repack_warning_gives_keeps_the_notebooks_options(runs, tmp_path,
                                                                          monkeypatch):
    """F1, F5a: the re-pack warning's command failed for want of --owner; with it, the
    notebook went back to the rows protocol without its keep columns and renames (its
    competition kept), and Kaggle's rerun then never served the gateway."""
    _no_default_owner(monkeypatch, tmp_path)
    subs = tmp_path / "subs"
    pack_run(runs["gru"], "mix", subs, budget=False)
    run_cli("notebook", subs / "mix.zip", "--owner", "me", "--competition", "my-comp",
            "--protocol", "batch", "--keep-columns", "row_id", "--rename", "t0=responder_6")
    with pytest.warns(RuntimeWarning, match="previous package of mix") as record:
        pack_run(runs["gru_b"], "mix", subs, budget=False)
    said = next(str(w.message) for w in record if "previous package" in str(w.message))
    command = shlex.split(re.search(r"run (kit notebook .+?) again", said)[1])
    printed = run_cli(*command[1:]).output  # exactly as the warning gives it
    assert "(batch protocol" in printed
    kept = printed.split("kept from the previous notebook")[1]
    for text in ("owner me", "protocol batch", "keep columns row_id", "rename t0=responder_6",
                 "competition my-comp"):
        assert text in kept, printed
    got = _settings(subs / "mix-kaggle")
    assert got["recorded"]["protocol"] == "batch"
    assert got["recorded"]["keep_columns"] == ["row_id"]
    assert got["recorded"]["rename"] == {"t0": "responder_6"}
    assert "KEEP_COLUMNS = ['row_id']" in got["setup"]
    assert "OUTPUT_NAMES = {'t0': 'responder_6'}" in got["setup"]
    assert got["kernel"]["competition_sources"] == ["my-comp"]
    assert got["kernel"]["id"].startswith("me/")
    # given anew, an option wins; the rows protocol drops the keep columns, '' a rename
    run_cli("notebook", subs / "mix", "--protocol", "rows")
    got = _settings(subs / "mix-kaggle")
    assert (got["recorded"]["protocol"], got["recorded"]["keep_columns"]) == ("rows", [])
    assert got["recorded"]["rename"] == {"t0": "responder_6"}
    run_cli("notebook", subs / "mix", "--rename", "")
    assert _settings(subs / "mix-kaggle")["recorded"]["rename"] == {}


def test_a_hand_edited_notebook_is_backed_up_before_it_is_written_again(package, tmp_path):
    """F1: the documented edit (KIT_PREDICTIONS_FILE set in the first cell) was overwritten
    silently. An executed or reopened notebook (outputs, metadata) is no edit."""
    out = tmp_path / "kg"
    write_notebook(package.zip_path, out, owner="alice", protocol="batch")
    path = out / "kernel/notebook.ipynb"
    document = json.loads(path.read_text())
    document["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout",
                                        "text": "package: x\n"}]
    document["metadata"]["widgets"] = {}
    document["cells"][1]["source"] = "".join(document["cells"][1]["source"])  # one string
    path.write_text(json.dumps(document))
    write_notebook(package.zip_path, out, owner="alice")  # outputs only: no backup
    assert not list(out.glob("notebook-edited*"))
    document = json.loads(path.read_text())
    edit = 'os.environ["KIT_PREDICTIONS_FILE"] = "submission.csv"\n'
    document["cells"][1]["source"].insert(0, edit)
    path.write_text(json.dumps(document))
    with pytest.warns(RuntimeWarning, match=r"differs from the notebook kit wrote.*saved as "
                                            rf"{re.escape(str(out / 'notebook-edited.ipynb'))}"):
        written = write_notebook(package.zip_path, out, owner="alice")
    assert written["backup"] == out / "notebook-edited.ipynb"
    assert edit in json.loads(written["backup"].read_text())["cells"][1]["source"]
    assert edit not in path.read_text()  # kit's notebook again, its options kept
    assert written["protocol"] == "batch"
    path.write_text(path.read_text().replace("import glob", "import glob  # mine"))
    with pytest.warns(RuntimeWarning, match="notebook-edited-2.ipynb"):  # never overwritten
        write_notebook(package.zip_path, out, owner="alice")
    first = json.loads((out / "notebook-edited.ipynb").read_text())["cells"][1]["source"]
    assert edit in first and (out / "notebook-edited-2.ipynb").is_file()


def test_a_rows_notebook_refuses_a_competition_rerun_that_serves_a_gateway(
        workspace, package, tmp_path, monkeypatch, capsys):
    """F1: on Kaggle's rerun a rows notebook wrote predictions.csv and ended OK, the
    competition's gateway never served; outside a rerun it says so in a note."""
    from nbclient.exceptions import CellExecutionError

    write_notebook(package.zip_path, tmp_path / "kaggle", owner="alice")  # rows
    root = _kaggle_input(tmp_path, workspace, tmp_path / "kaggle/dataset")
    gateway = root / "competition/kaggle_evaluation"
    gateway.mkdir()
    (gateway / "__init__.py").write_text("")
    (gateway / "stand_in_inference_server.py").write_text(GATEWAY)
    for key, value in {"KIT_INPUT_ROOT": root, "KIT_OUTPUT_DIR": tmp_path / "working",
                       "KAGGLE_IS_COMPETITION_RERUN": "1"}.items():
        monkeypatch.setenv(key, str(value))
    with pytest.raises(CellExecutionError, match="rows protocol cannot answer this competition"):
        _execute(tmp_path / "kaggle/kernel/notebook.ipynb", tmp_path, monkeypatch)
    assert not (tmp_path / "working/predictions.csv").exists()
    setup = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    cell = _generated_functions(notebook.BATCH, ("check_rows_without_gateway",),
                                under_input=setup["under_input"])
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN")
    cell["check_rows_without_gateway"]()
    assert f"note: {gateway}: this competition serves its test set" in capsys.readouterr().out


def _test_file_functions(root: Path) -> dict:
    setup = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    return _generated_functions(notebook.LOAD, ("find_test_file", "other_test_files",
                                                "check_parquet", "read_table"),
                                INPUT_ROOT=str(root), under_input=setup["under_input"])


def test_a_test_file_that_is_not_parquet_is_named_with_what_to_do(workspace, tmp_path,
                                                                  monkeypatch):
    """F2: without KIT_TEST_FILE, "no *test*.parquet; set KIT_TEST_FILE" named neither the
    test.csv it could see nor how to set a variable on Kaggle; with it, Polars' "File out of
    specification". The notebook reads parquet (a CSV's types are guesses): it says so."""
    import polars as pl

    root = tmp_path / "input"
    (root / "my-comp").mkdir(parents=True)
    csv = root / "my-comp/test.csv"
    pl.read_parquet(workspace / "data/valid.parquet").head(5).write_csv(csv)
    (root / "my-comp/kaggle_evaluation").mkdir()
    (root / "my-comp/kaggle_evaluation/test_gateway.py").write_text("")  # code: not named
    cell = _test_file_functions(root)
    monkeypatch.delenv("KIT_TEST_FILE", raising=False)
    with pytest.raises(FileNotFoundError) as error:
        cell["find_test_file"]()
    said = str(error.value)
    assert f"not parquet: {[str(csv)]}" in said and "test_gateway.py" not in said
    assert "first cell" in said and 'os.environ["KIT_TEST_FILE"] = ' in said
    monkeypatch.setenv("KIT_TEST_FILE", str(csv))
    path = cell["find_test_file"]()
    with pytest.raises(ValueError, match=r"test.csv is not a parquet file: the notebook reads "
                                         r"parquet.*write_parquet.*KIT_TEST_FILE"):
        cell["read_table"](path)
    monkeypatch.setenv("KIT_TEST_FILE", str(root / "my-comp/tset.parquet"))  # a typo
    with pytest.raises(FileNotFoundError, match=r"tset.parquet'?: no such file; name the test"):
        cell["find_test_file"]()


def _wheel(folder: Path, name: str, whole: bool = True) -> None:
    folder.mkdir(exist_ok=True)
    if whole:
        with zipfile.ZipFile(folder / name, "w") as archive:
            archive.writestr("METADATA", "Name: x\n")
    else:
        (folder / name).write_bytes(b"")


def test_wheels_that_cannot_provide_onnxruntime_on_kaggle_are_warned_of(package, tmp_path):
    """F3: only an empty --wheels folder was refused; one holding another package's wheel, or
    a 0-byte macOS onnxruntime wheel, failed only on Kaggle."""
    cases = {
        "other": ("numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl", True,
                  "no onnxruntime-\\*.whl there"),
        "mac": ("onnxruntime-1.20.0-cp311-cp311-macosx_14_0_arm64.whl", True,
                "none of its onnxruntime wheels"),
        "empty-file": ("onnxruntime-1.20.0-cp311-cp311-manylinux_2_27_x86_64."
                       "manylinux_2_28_x86_64.whl", False, "none of its onnxruntime wheels"),
        "py312": ("onnxruntime-1.20.0-cp312-cp312-manylinux_2_28_x86_64.whl", True,
                  "none of its onnxruntime wheels"),
    }
    for folder, (name, whole, message) in cases.items():
        _wheel(tmp_path / folder, name, whole)
        printed = run_cli("notebook", package.zip_path, "--out", tmp_path / f"k-{folder}",
                          "--owner", "alice", "--wheels", tmp_path / folder).output
        assert re.search(rf"warning: --wheels .*{folder}: {message}", printed), printed
        assert "pip download onnxruntime --only-binary=:all: --platform manylinux" in printed
    for name in ("onnxruntime-1.20.0-cp311-cp311-manylinux_2_27_x86_64."
                 "manylinux_2_28_x86_64.whl", "onnxruntime-1.20.0-cp38-abi3-linux_x86_64.whl",
                 "onnxruntime-1.0-py3-none-any.whl"):
        _wheel(tmp_path / "good", name)
        printed = run_cli("notebook", package.zip_path, "--out", tmp_path / "k-good",
                          "--owner", "alice", "--wheels", tmp_path / "good").output
        assert "warning" not in printed, (name, printed)
        (tmp_path / "good" / name).unlink()


def test_the_notebook_says_to_ship_wheels_when_onnxruntime_is_missing(tmp_path, monkeypatch):
    """F3: with internet off and no wheels attached, cell 2 re-raised a bare
    `No module named 'onnxruntime'`."""
    root = tmp_path / "input"
    root.mkdir()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the runtime lacks it
    namespace = _generated_functions(notebook.SETUP, ("under_input",), INPUT_ROOT=str(root))
    with pytest.raises(ModuleNotFoundError, match=r"no .whl files are attached under .*internet "
                                                  r"is off.*pip download onnxruntime .*kit "
                                                  r"notebook PACKAGE --wheels DIR"):
        exec(notebook.WHEELS, namespace)


def test_a_dataset_older_than_the_package_beside_it_is_said(runs, tmp_path):
    """F4: `kit notebook OUT/dataset --protocol batch` (kaggle.md's way to switch protocol)
    after a re-pack wrote a notebook for the dataset's old model without a word."""
    subs = tmp_path / "subs"
    pack_run(runs["gru"], "mix", subs, budget=False)
    run_cli("notebook", subs / "mix.zip", "--owner", "me")
    dataset = subs / "mix-kaggle/dataset"
    printed = run_cli("notebook", dataset, "--protocol", "batch").output
    assert "another model.onnx" not in printed  # the same model: nothing to say
    with pytest.warns(RuntimeWarning, match="previous package of mix"):
        pack_run(runs["gru_b"], "mix", subs, budget=False)
    printed = run_cli("notebook", dataset, "--protocol", "batch").output
    assert f"warning: {dataset} holds another model.onnx than {subs / 'mix'}" in printed
    assert f"run `kit notebook {subs / 'mix'}`" in printed


def test_kit_notebook_says_what_a_kernel_lacks_and_what_try_does_not_check(workspace, package,
                                                                           tmp_path):
    """F5: no competition attached (competition_sources []) was not said; --try said "as
    Kaggle will" though it gives the test file, has onnxruntime and replays the gateway."""
    printed = run_cli("notebook", package.zip_path, "--out", tmp_path / "kg", "--owner",
                      "alice", "--protocol", "batch", "--try",
                      workspace / "data/valid.parquet").output
    assert "attached to no competition, which submitting needs: --competition SLUG" in printed
    running = next(line for line in printed.splitlines() if line.startswith("running"))
    assert "as Kaggle will" not in running
    for unchecked in ("the test file is given (KIT_TEST_FILE), not searched for",
                      "the wheel install does not run", "the gateway is replayed"):
        assert unchecked in running, running
    printed = run_cli("notebook", package.zip_path, "--out", tmp_path / "kg2", "--owner",
                      "alice", "--competition", "my-comp").output
    assert "no competition" not in printed
