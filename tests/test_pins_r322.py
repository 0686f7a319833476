"""Pins of kit pack's and kit notebook's behaviour that no other test held (mutation audit
r322): package names, the manifest's spec source and size limit, dead staging folders, the
time budget past the limit, an ensemble file given by a relative path, and kit notebook
written again (its title, dataset slug, an older kit's notebook, options kept that clash, a
wheel with a build tag, a re-packed zip beside OUT, a local-run link of yours).
Real packages of an untrained GRU, real notebooks written, no training."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w

from kit.competition import load_spec
from kit.export.notebook import NotebookError, kept_note, write_notebook
from kit.export.pack import (
    PackError,
    drop_dead_staging,
    owner_tag,
    pack_ensemble,
    pack_run,
    submission_spec,
    time_budget,
)
from tests.cli import run_cli
from tests.conftest import raw_gru_run
from tests.frames import small_spec
from tests.processes import dead_pid

# tests.frames.small_spec() as a spec file
SMALL_SPEC = {"name": "tiny", "features": ["p0..p11", "v0..v11", "dp0..dp3", "dv0..dv3"],
              "targets": ["t0", "t1"], "seq_len": 20, "warmup": 5,
              "metric": {"name": "weighted_pearson", "clip": [-6.0, 6.0]}}


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    """An untrained GRU on the small spec packed as `nb` (no time budget: no replay)."""
    root = tmp_path_factory.mktemp("pins")
    run = raw_gru_run(root / "runs/exp/run0", small_spec())
    return pack_run(run, "nb", root / "subs", budget=False)


@pytest.fixture
def no_kaggle_owner(monkeypatch, tmp_path):
    """No Kaggle user name but the one on record (as a user without the Kaggle CLI set up)."""
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


# --- kit pack ------------------------------------------------------------------------------


def test_a_package_name_with_surrounding_spaces_is_refused(pkg, tmp_path):
    """Kills: check_package_name comparing with name.lstrip() (a trailing space or no-break
    space packed as 'nb /'; test_pack holds the leading one)."""
    run = Path(pkg.manifest["members"][0]["run"])
    for name in (" nb", "nb ", "nb\u00a0"):
        with pytest.raises(PackError, match="surrounding spaces"):
            pack_run(run, name, tmp_path, budget=False)
    assert not list(tmp_path.iterdir())


def test_the_manifest_records_a_relative_spec_file_as_its_absolute_path(tmp_path, monkeypatch):
    """Kills: spec_reference keeping a relative spec path (kit score run from another folder
    could not find the spec file the run named)."""
    spec_file = tmp_path / "proj/tiny.toml"
    spec_file.parent.mkdir()
    spec_file.write_text(tomli_w.dumps(SMALL_SPEC))
    monkeypatch.chdir(tmp_path / "proj")
    run = raw_gru_run(tmp_path / "proj/runs/exp/r", load_spec(str(spec_file)))
    (run / "config.toml").write_text('name = "exp"\nspec = "tiny.toml"\n')
    packed = pack_run(run, "rel", tmp_path / "subs", budget=False)
    assert packed.manifest["spec_source"] == str(spec_file.resolve())
    on_disk = json.loads((packed.folder / "manifest.json").read_text())
    assert on_disk["spec_source"] == str(spec_file.resolve())


def test_a_zip_whose_manifest_is_over_8_mib_is_refused_before_it_is_read(pkg, tmp_path):
    """Kills: _small_manifest without its MAX_MANIFEST check (a zip's manifest inflates to
    gigabytes in memory)."""
    bomb = tmp_path / "bomb.zip"
    manifest = json.loads((pkg.folder / "manifest.json").read_text())
    manifest["padding"] = " " * (9 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("solution.py", "model.onnx"):
            archive.write(pkg.folder / name, name)
        archive.writestr("manifest.json", json.dumps(manifest))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(PackError, match=r"manifest.json is 9,\d{3},\d{3} bytes; kit's are a "
                                        r"few KB"):
        submission_spec(bomb)


def test_a_file_that_only_looks_like_another_names_staging_folder_is_kept(tmp_path):
    """Kills: dead_staging taking any suffix of 8 characters or more (mkdtemp's are 8): a
    file of yours of another name was deleted by any pack."""
    dead, here = dead_pid(), owner_tag().split(".")[1]
    mine = tmp_path / f".notes.packing-{dead}.{here}-abcdefghij"
    mine.write_text("mine")
    staged = tmp_path / f".notes.packing-{dead}.{here}-abcdefgh"
    staged.mkdir()
    drop_dead_staging(tmp_path, "p")
    assert mine.read_text() == "mine" and not staged.exists()


def test_a_budget_past_the_limit_fits_no_more_members_not_a_negative_count(tmp_path,
                                                                          monkeypatch):
    """Kills: time_budget without max(0, ...) (a forced pack said 'about -2 more member(s)
    of this size fit')."""
    from kit.scoring import score

    def replay(folder, values, spec, column_dtypes=None):  # 300 s start-up, 4 ms a row
        return SimpleNamespace(result={"init_s": 300.0, "loop_s": len(values) * 4e-3})

    monkeypatch.setattr(score, "replay_rows", replay)
    budget = time_budget(tmp_path, load_spec("predictorium"), 2)
    assert budget["fraction"] > 1 and budget["more_members_fit"] == 0


# --- kit notebook --------------------------------------------------------------------------


def test_a_default_title_is_not_said_as_kept_and_a_title_of_yours_is(pkg, tmp_path):
    """Kills: _options_kept noting every previous title (the note named the default title
    as taken from the previous notebook)."""
    out = tmp_path / "kg"
    write_notebook(pkg.zip_path, out, owner="me")
    again = write_notebook(pkg.zip_path, out, owner="me")
    assert "title" not in again["kept"] and "title" not in kept_note(again)
    write_notebook(pkg.zip_path, out, owner="me", title="My own GRU notebook")
    again = write_notebook(pkg.zip_path, out, owner="me")
    assert again["kept"]["title"] == "'My own GRU notebook'"
    assert "title 'My own GRU notebook'" in kept_note(again)
    assert again["kernel_metadata"]["title"] == "My own GRU notebook"
    assert again["kernel_metadata"]["id"] == "me/my-own-gru-notebook"


def test_a_kept_option_that_clashes_names_the_notebook_it_was_kept_from(pkg, tmp_path):
    """Kills: _with_kept_options returning the bare error (a rename the user never typed
    was refused without saying it came from the previous notebook)."""
    out = tmp_path / "kg"
    write_notebook(pkg.zip_path, out, owner="me", protocol="batch", rename="t0=responder_6")
    with pytest.raises(NotebookError) as caught:
        write_notebook(pkg.zip_path, out, owner="me", keep_columns=["responder_6"])
    said = str(caught.value)
    assert "would hold column(s) ['responder_6'] twice" in said
    assert (f"(kept from the previous notebook {out / 'kernel/notebook.ipynb'}: protocol "
            "batch, rename t0=responder_6; give --protocol, --keep-columns or --rename anew, "
            "'' to drop one)") in said


def test_an_older_kits_notebook_keeps_its_options_and_is_backed_up_as_such(pkg, tmp_path):
    """Kills: _settings_in_cells not reading the protocol of an older kit's notebook (written
    again it went back to rows), and the backup warning calling it hand-edited."""
    out = tmp_path / "kg"
    write_notebook(pkg.zip_path, out, owner="me", protocol="batch", keep_columns=["row_id"],
                   rename="t1=b")
    path = out / "kernel/notebook.ipynb"
    document = json.loads(path.read_text())
    del document["metadata"]["kit"]  # as kits before r310 wrote it: no settings recorded
    path.write_text(json.dumps(document, indent=1))
    with pytest.warns(RuntimeWarning, match="it was written by an older kit, which recorded "
                                            "no fingerprint to tell hand edits by; saved as"):
        again = write_notebook(pkg.zip_path, out, owner="me")
    assert again["protocol"] == "batch"
    assert again["kept"] == {"protocol": "batch", "keep columns": "row_id", "rename": "t1=b"}
    assert again["backup"] == out / "notebook-edited.ipynb"
    recorded = json.loads(path.read_text())["metadata"]["kit"]
    assert (recorded["protocol"], recorded["keep_columns"], recorded["rename"]) == (
        "batch", ["row_id"], {"t1": "b"})


def _wheel(folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as archive:
        archive.writestr("METADATA", "Name: onnxruntime\n")


def test_a_wheel_with_a_build_tag_kaggle_installs_is_not_warned_of(pkg, tmp_path):
    """Kills: installs_on_kaggle taking only 5 name parts (a build-tagged wheel, which the
    wheel format allows, was said not to install on Kaggle)."""
    name = "onnxruntime-1.20.0-1-cp311-cp311-manylinux_2_28_x86_64.whl"
    _wheel(tmp_path / "wheels", name)
    printed = run_cli("notebook", pkg.zip_path, "--out", tmp_path / "kg", "--owner", "me",
                      "--wheels", tmp_path / "wheels").output
    assert "warning" not in printed, printed
    assert (tmp_path / "kg/dataset" / name).is_file()


def test_a_dataset_older_than_the_zip_beside_its_out_is_said(pkg, tmp_path, no_kaggle_owner):
    """Kills: warn_if_repacked_beside looking only at the package folder beside OUT (a
    package kept as its zip alone, re-packed, went unsaid)."""
    subs = tmp_path / "subs"
    subs.mkdir()
    zip_path = subs / "mix.zip"
    zip_path.write_bytes(pkg.zip_path.read_bytes())
    run_cli("notebook", zip_path, "--owner", "me")
    dataset = subs / "mix-kaggle/dataset"
    assert "another model.onnx" not in run_cli("notebook", dataset).output
    with zipfile.ZipFile(zip_path, "w") as archive:  # packed again: another model.onnx
        for name in ("solution.py", "manifest.json"):
            archive.write(pkg.folder / name, name)
        archive.writestr("model.onnx", b"another model")
    printed = run_cli("notebook", dataset).output
    assert f"warning: {dataset} holds another model.onnx than {zip_path} beside it" in printed


def test_an_ensemble_packed_by_a_relative_path_records_its_file_absolute(pkg, tmp_path,
                                                                          monkeypatch):
    """Kills: pack_ensemble recording the file as given (parity's re-pack advice, run from
    another folder, named a file that is not there)."""
    first = Path(pkg.manifest["members"][0]["run"])
    second = raw_gru_run(tmp_path / "runs/exp/run1", small_spec(), seed=1)
    (tmp_path / "blend.toml").write_text(tomli_w.dumps({"members": [
        {"name": "a", "runs": [str(first)], "weights": [0.5, 0.5]},
        {"name": "b", "runs": [str(second)], "weights": [0.5, 0.5]}]}))
    monkeypatch.chdir(tmp_path)
    packed = pack_ensemble(Path("blend.toml"), out_dir=tmp_path / "subs", budget=False)
    assert packed.folder == tmp_path / "subs/blend"
    assert packed.manifest["ensemble"]["file"] == str(tmp_path / "blend.toml")
    on_disk = json.loads((packed.folder / "manifest.json").read_text())
    assert on_disk["ensemble"]["file"] == str(tmp_path / "blend.toml")


def test_a_notebook_written_again_from_its_zip_keeps_the_dataset_slug_given(pkg, tmp_path):
    """Kills: write_notebook ignoring the slug on record in OUT/dataset (written again, the
    kernel was attached to a new Kaggle dataset, not the one uploaded)."""
    out = tmp_path / "kg"
    write_notebook(pkg.zip_path, out, owner="me", dataset_slug="my-own-slug")
    again = write_notebook(pkg.zip_path, out, owner="me")
    assert again["dataset_metadata"]["id"] == "me/my-own-slug"
    assert again["kernel_metadata"]["dataset_sources"] == ["me/my-own-slug"]
    meta = json.loads((out / "dataset/dataset-metadata.json").read_text())
    assert meta["id"] == "me/my-own-slug"


def test_a_local_run_link_to_a_folder_of_yours_is_not_cleared(pkg, tmp_path):
    """Kills: clear_local_run following a symbolic link OUT/local-run (writing the notebook
    deleted predictions.csv in the folder it points to)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "predictions.csv").write_text("seq_ix,step_in_seq,t0,t1\n")
    out = tmp_path / "kg"
    out.mkdir()
    (out / "local-run").symlink_to(mine, target_is_directory=True)
    write_notebook(pkg.zip_path, out, owner="me")
    assert (mine / "predictions.csv").read_text() == "seq_ix,step_in_seq,t0,t1\n"
    assert (out / "local-run").is_symlink()
