"""kit upgraded under an existing project (r286): FEATURE_FORMAT (docs/features.md) moved on
since a package was packed, a run was paused or a cache entry was built. Parity says to re-pack
and keeps a failure out of the old package, a resume says its remaining epochs use this kit's
features, and `kit data cache` marks (and --clear-stale removes) the entries no build reads."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from kit.competition import load_spec
from kit.export.pack import pack_run, read_manifest, write_manifest
from kit.features import FEATURE_FORMAT
from kit.train.checkpoint import load_checkpoint, save_checkpoint
from tests.cli import run_cli
from tests.conftest import raw_gru_run
from tests.test_train import EXPERIMENT, tiny_competition

OLD = FEATURE_FORMAT - 1  # the format an older kit packed, paused or cached with


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upgrade")
    exps = tiny_competition(root, train_seqs=8, valid_seqs=3, seed=3)
    (exps / "tiny.toml").write_text(EXPERIMENT.format(spec=root / "tiny-lob.toml",
                                                      data=root / "data", root=root))
    return root


@pytest.fixture(scope="module")
def package(project) -> Path:
    """A GRU on the raw columns packed by this kit (no training: parity needs weights)."""
    spec = load_spec(str(project / "tiny-lob.toml"))
    return pack_run(raw_gru_run(project / "run", spec), "raw", project / "submissions",
                    budget=False).folder


def older_package(package: Path, tmp_path: Path, feature_format, offset: str = "") -> Path:
    """A copy of the package (folder and zip) as an older kit wrote it: its manifest with
    `feature_format` (None: no such field), and `offset` added to its predictions, as a graph
    whose op computed otherwise then."""
    folder = tmp_path / "submissions" / "old"
    shutil.copytree(package, folder)
    shutil.copy(package.with_suffix(".zip"), folder.with_suffix(".zip"))
    if offset:
        solution = folder / "solution.py"
        line = "        return self.y_row.copy()\n"
        assert line in solution.read_text()
        solution.write_text(solution.read_text().replace(
            line, f"        return self.y_row.copy() + {offset}\n"))
    manifest = read_manifest(folder)
    manifest.pop("feature_format", None)
    if feature_format is not None:
        manifest["feature_format"] = feature_format
    write_manifest(folder, manifest)
    return folder


def test_a_package_of_this_kit_records_its_format_and_parity_says_nothing_of_it(package,
                                                                                project):
    assert read_manifest(package)["feature_format"] == FEATURE_FORMAT
    result = run_cli("parity", package, "--data", project / "data/valid.parquet", "--seqs", 2)
    assert "parity OK" in result.output and "feature format" not in result.output


def test_parity_of_an_older_format_package_that_fails_says_to_re_pack_and_records_nothing(
        package, project, tmp_path):
    """A package of format 7 whose EWM op computed otherwise failed parity under format 8,
    blamed on the package, with no word of re-packing; the failed report was written into the
    old package's manifest and zip."""
    folder = older_package(package, tmp_path, OLD, offset="1e-3")
    manifest, zipped = ((folder / "manifest.json").read_bytes(),
                        folder.with_suffix(".zip").read_bytes())
    result = run_cli("parity", folder, "--data", project / "data/valid.parquet", "--seqs", 2,
                     expect=1)
    lines = result.stdout.splitlines()
    assert (f"note: this package was packed with feature format {OLD} (an older kit); this "
            f"kit computes format {FEATURE_FORMAT}") in result.stdout
    repack = f"kit pack {project / 'run'} --name old --out {folder.parent}"
    assert lines[-1].startswith("parity FAILED: max abs difference ")
    assert lines[-1].endswith(f"re-pack the run with this kit ({repack}) before judging parity")
    assert "the failed report is not recorded in" in result.stdout
    assert (folder / "manifest.json").read_bytes() == manifest
    assert folder.with_suffix(".zip").read_bytes() == zipped


def test_parity_of_a_package_without_a_recorded_format_notes_it_and_records_a_pass(
        package, project, tmp_path):
    """A package from before packages recorded their format: the same note (it may be older),
    in the report and its JSON; a pass is recorded as ever, with the note."""
    folder = older_package(package, tmp_path, None)
    result = run_cli("parity", folder, "--data", project / "data/valid.parquet", "--seqs", 2,
                     "--json")
    report = json.loads(result.stdout)
    assert report["ok"] and report["advice"] is None
    assert report["notes"][0].startswith(
        "this package records no feature format (packed by a kit from before packages "
        f"recorded it: format {FEATURE_FORMAT} or older)")
    assert "kit pack " in report["notes"][0]
    recorded = read_manifest(folder)["parity"]
    assert recorded["ok"] and recorded["notes"] == report["notes"]
    with zipfile.ZipFile(folder.with_suffix(".zip")) as archive:
        assert json.loads(archive.read("manifest.json"))["parity"]["ok"]


@pytest.fixture
def in_project(project, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("KIT_EXPERIMENTS", str(project / "experiments"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("recorded", [OLD, None], ids=["older", "unrecorded"])
def test_a_resume_across_a_feature_format_says_the_rest_trains_on_this_kit_s_features(
        in_project, recorded):
    """A run paused under format 7 and resumed under 8 trained its last epochs on the new
    features without a word, though a resume "ends exactly where an uninterrupted one would"."""
    run = in_project / "r"
    run_cli("train", "exp=tiny", "--run-dir", run, "--stop-after-epochs", "1", "-q")
    last = load_checkpoint(run / "last.pt", ("epoch",))
    assert last["feature_format"] == FEATURE_FORMAT
    assert load_checkpoint(run / "best.pt")["feature_format"] == FEATURE_FORMAT
    last.pop("feature_format")  # as an older kit wrote last.pt
    if recorded is not None:
        last["feature_format"] = recorded
    save_checkpoint(last, run / "last.pt")
    out = run_cli("train", "exp=tiny", "--run-dir", run, "--resume", "-q",
                  "--stop-after-epochs", "1").output
    started = (f"started under feature format {OLD}" if recorded is not None else
               "started by a kit that recorded no feature format (format "
               f"{FEATURE_FORMAT} or older)")
    assert f"note: {run} {started}; this kit computes feature format {FEATURE_FORMAT}" in out
    assert "remaining epochs train on this kit's features" in out
    assert "train a fresh run for an exact result" in out
    # the epoch it trained recorded this kit's format: the next resume has nothing to say
    out = run_cli("train", "exp=tiny", "--run-dir", run, "--resume", "-q").output
    assert "feature format" not in out and json.loads((run / "metrics.json").read_text())[
        "finished"]


def test_kit_data_cache_marks_an_older_format_s_entries_and_clears_only_them(project,
                                                                             tmp_path):
    """Entries an older kit built (never read again) were listed like live ones, and only
    --clear (every entry) removed them."""
    from kit.data.cache import _key_of, file_digest
    from kit.features import feature_arrays
    from kit.features.sets import build_feature_set

    cache, data = tmp_path / "cache", project / "data/train.parquet"
    spec = load_spec(str(project / "tiny-lob.toml"))
    feature_arrays(data, build_feature_set(spec, ["raw"]), cache_dir=cache)
    (live,) = [p for p in cache.iterdir() if p.is_dir()]
    # the entry an older kit built: its key said format OLD, so its name and digest differ
    meta = json.loads((live / "meta.json").read_text())
    meta["key"]["format"] = OLD
    meta["digest"] = _key_of(file_digest(data), meta["key"])
    old = cache / f"train-{meta['digest'][:24]}"
    shutil.copytree(live, old)
    (old / "meta.json").write_text(json.dumps(meta, indent=1))
    old_bytes = sum(f.stat().st_size for f in old.iterdir())

    out = run_cli("data", "cache", "--dir", cache).stdout.splitlines()
    (old_line,) = [line for line in out if old.name in line]
    assert old_line.endswith(f"(stale: format {OLD}, this kit reads {FEATURE_FORMAT})")
    assert "stale" not in next(line for line in out if live.name in line)
    assert out[-1] == (f"1 of them stale, {old_bytes / 1e6:,.1f} MB: built by an older kit "
                       "(another feature format or version), never read again; kit data cache "
                       "--clear-stale removes only them")
    listed = json.loads(run_cli("data", "cache", "--dir", cache, "--json").stdout)
    assert {e["name"]: e["stale"] for e in listed["entries"]} == {
        live.name: None, old.name: f"stale: format {OLD}, this kit reads {FEATURE_FORMAT}"}
    assert listed["stale_bytes"] == old_bytes

    assert "pass one of them" in run_cli("data", "cache", "--dir", cache, "--clear",
                                         "--clear-stale", expect=2).output
    cleared = run_cli("data", "cache", "--dir", cache, "--clear-stale").stdout
    assert cleared.startswith(f"removed 1 stale entry from {cache}") and "1 live" in cleared
    assert not old.exists() and live.is_dir()
    feature_arrays(data, build_feature_set(spec, ["raw"]), cache_dir=cache)  # a hit: no new one
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [live.name]
    assert "stale" not in run_cli("data", "cache", "--dir", cache).stdout
