"""A package name longer than a Kaggle dataset title holds (r322): written again, its notebook
keeps its options, and its dataset folder given again names the package whole."""

from kit.export.notebook import write_notebook
from kit.export.pack import pack_run
from tests.conftest import raw_gru_run
from tests.frames import small_spec

LONG = "gru_hidden_256_layers_3-20261207-012345-ab12cd"  # 46 characters: the title cuts it


def test_a_long_package_name_keeps_its_notebooks_options(tmp_path):
    run = raw_gru_run(tmp_path / "runs/exp/run0", small_spec())
    packed = pack_run(run, LONG, tmp_path / "subs", budget=False)
    out = tmp_path / "subs" / f"{LONG}-kaggle"
    first = write_notebook(packed.zip_path, out, owner="me", protocol="batch",
                           competition="my-comp")
    assert first["dataset_metadata"]["title"] == f"{LONG} pac"  # (Kaggle's 50 characters)
    again = write_notebook(packed.zip_path, out, owner="me")
    assert again["protocol"] == "batch"
    assert again["kernel_metadata"]["competition_sources"] == ["my-comp"]
    from_folder = write_notebook(out / "dataset", out, owner=None)
    assert from_folder["protocol"] == "batch"
    assert from_folder["kernel_metadata"]["title"] == first["kernel_metadata"]["title"]


def test_two_long_names_alike_up_to_the_cut_keep_their_own_notebooks(tmp_path):
    """r328: compared by their cut titles, a second run's package written into the first's OUT
    took its title, competition and protocol: the same Kaggle kernel, overwritten."""
    run = raw_gru_run(tmp_path / "runs/exp/run0", small_spec())
    first, second = (pack_run(run, f"{LONG}-run-s{seed}", tmp_path / "subs", budget=False)
                     for seed in (42, 43))
    out = tmp_path / "nb"
    written = write_notebook(first.zip_path, out, owner="me", protocol="batch",
                             competition="my-comp", title="Notebook for run A")
    assert written["dataset_metadata"]["title"] == f"{LONG}-run"  # (alike once cut)
    other = write_notebook(second.zip_path, out, owner="me")
    assert other["protocol"] == "rows" and "title" not in other["kept"]
    assert other["kernel_metadata"]["title"] != "Notebook for run A"
