"""kit upgraded under an existing project (r286): FEATURE_FORMAT (docs/features.md) moved on
since a package was packed, a run was paused or a cache entry was built. Parity says to re-pack
and keeps a failure out of the old package, a resume says its remaining epochs use this kit's
features, and `kit data cache` marks (and --clear-stale removes) the entries no build reads.
r293: pack records (and warns of) the format each member trained on, parity's notes say so and
keep the re-pack advice to a failure, and --clear-stale keeps a newer kit's entries."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from kit.competition import load_spec
from kit.export.pack import pack_run, read_manifest, write_manifest
from kit.features import FEATURE_FORMAT, FIRST_RECORDED_FORMAT
from kit.train.checkpoint import load_checkpoint, save_checkpoint
from tests.cli import run_cli
from tests.conftest import raw_gru_run
from tests.test_train import tiny_project

OLD = FEATURE_FORMAT - 1  # the format an older kit packed, paused or cached with


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("upgrade"), train_seqs=8, valid_seqs=3, seed=3)


def run_trained_under(folder: Path, spec, feature_format) -> Path:
    """A GRU run on the raw columns (no training: parity needs weights) whose best.pt records
    `feature_format` as the kit that trained it did (None: no such field, as before r286)."""
    run = raw_gru_run(folder, spec)
    best = load_checkpoint(run / "best.pt")
    best.pop("feature_format", None)
    if feature_format is not None:
        best["feature_format"] = feature_format
    save_checkpoint(best, run / "best.pt")
    return run


@pytest.fixture(scope="module")
def package(project) -> Path:
    """A run trained under this kit's format, packed by this kit."""
    spec = load_spec(str(project / "tiny-lob.toml"))
    return pack_run(run_trained_under(project / "run", spec, FEATURE_FORMAT), "raw",
                    project / "submissions", budget=False).folder


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
    manifest = read_manifest(package)
    assert manifest["feature_format"] == FEATURE_FORMAT
    assert manifest["members"][0]["feature_format"] == FEATURE_FORMAT
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
    in the report and its JSON; a pass is recorded as ever, with the note. r293: the note said
    to re-pack "before judging parity" on a pass too (recorded into every such package)."""
    folder = older_package(package, tmp_path, None)
    result = run_cli("parity", folder, "--data", project / "data/valid.parquet", "--seqs", 2,
                     "--json")
    report = json.loads(result.stdout)
    assert report["ok"] and report["advice"] is None
    assert report["notes"][0].startswith(
        "this package records no feature format (packed by a kit from before packages "
        f"recorded it: format {FIRST_RECORDED_FORMAT} or older)")
    assert report["notes"][0].endswith("; parity passed all the same")
    assert "kit pack" not in report["notes"][0] and "re-pack" not in report["notes"][0]
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
               f"{FIRST_RECORDED_FORMAT} or older)")
    assert f"note: {run} {started}; this kit computes feature format {FEATURE_FORMAT}" in out
    assert "remaining epochs train on this kit's features" in out
    assert "train a fresh run for an exact result" in out
    # the epoch it trained recorded this kit's format: the next resume has nothing to say
    out = run_cli("train", "exp=tiny", "--run-dir", run, "--resume", "-q").output
    assert "feature format" not in out and json.loads((run / "metrics.json").read_text())[
        "finished"]


def entry_of_another_kit(live: Path, data: Path, **key) -> Path:
    """A copy of a live cache entry as another kit built it: its key with `key`'s values, so
    its name and digest differ (no build of this kit asks for it)."""
    from kit.data.cache import _key_of, file_digest

    meta = json.loads((live / "meta.json").read_text())
    meta["key"] |= key
    meta["digest"] = _key_of(file_digest(data), meta["key"])
    entry = live.parent / f"train-{meta['digest'][:24]}"
    shutil.copytree(live, entry)
    (entry / "meta.json").write_text(json.dumps(meta, indent=1))
    return entry


def test_kit_data_cache_marks_an_older_format_s_entries_and_clears_only_them(project,
                                                                             tmp_path):
    """Entries an older kit built (never read again) were listed like live ones, and only
    --clear (every entry) removed them."""
    from kit.features import feature_arrays
    from kit.features.sets import build_feature_set

    cache, data = tmp_path / "cache", project / "data/train.parquet"
    spec = load_spec(str(project / "tiny-lob.toml"))
    feature_arrays(data, build_feature_set(spec, ["raw"]), cache_dir=cache)
    (live,) = [p for p in cache.iterdir() if p.is_dir()]
    old = entry_of_another_kit(live, data, format=OLD)
    old_bytes = sum(f.stat().st_size for f in old.iterdir())

    out = run_cli("data", "cache", "--dir", cache).stdout.splitlines()
    (old_line,) = [line for line in out if old.name in line]
    assert old_line.endswith(f"(stale: format {OLD}, this kit reads {FEATURE_FORMAT})")
    assert "stale" not in next(line for line in out if live.name in line)
    assert out[-1] == (f"1 of them stale, {old_bytes / 1e6:,.1f} MB: built by an older kit "
                       "(an older feature format or version), never read again; kit data cache "
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


@pytest.mark.parametrize("recorded", [OLD, None], ids=["older", "unrecorded"])
def test_pack_records_the_format_each_member_trained_on_and_warns_of_another(project, tmp_path,
                                                                             recorded):
    """r291: pack stamped its own format into the manifest and said nothing of a run trained
    under another (or under none recorded): parity then passed without a note though the
    model learned other features, and parity's own re-pack advice made such a package."""
    spec = load_spec(str(project / "tiny-lob.toml"))
    run = run_trained_under(tmp_path / "run", spec, recorded)
    said = (f"on format {OLD}" if recorded is not None else
            f"recorded none (format {FIRST_RECORDED_FORMAT} or older)")
    with pytest.warns(UserWarning) as caught:
        packed = pack_run(run, "raw", tmp_path / "submissions", budget=False)
    (message,) = [str(w.message) for w in caught if "feature format" in str(w.message)]
    assert message.startswith(
        f"the run trained on another feature format than this kit's {FEATURE_FORMAT} "
        f"({tmp_path.name}/run {said}): its model learned features that this kit computes "
        "otherwise wherever an op's output changed since")
    assert message.endswith("retrain with this kit for exact results; packed all the same, its "
                            "graph computing this kit's features")
    manifest = read_manifest(packed.folder)
    assert manifest["feature_format"] == FEATURE_FORMAT  # what its graph computes
    assert manifest["members"][0]["feature_format"] == recorded


def test_parity_of_a_package_whose_run_trained_on_another_format_says_retrain_not_re_pack(
        project, tmp_path):
    """The graph is this kit's, so parity's paths and the package compute alike: a pass notes
    that the model learned other features (re-packing cannot help), and a failure is the
    package's own, recorded as ever, with no re-pack advice."""
    spec, valid = load_spec(str(project / "tiny-lob.toml")), project / "data/valid.parquet"
    with pytest.warns(UserWarning, match="another feature format"):
        packed = pack_run(run_trained_under(tmp_path / "run", spec, OLD), "raw",
                          tmp_path / "submissions", budget=False).folder
    report = json.loads(run_cli("parity", packed, "--data", valid, "--seqs", 2,
                                "--json").stdout)
    assert report["ok"] and report["advice"] is None
    (note,) = report["notes"]
    assert note.startswith(f"in this package the run trained on another feature format than "
                           f"this kit's {FEATURE_FORMAT} ({tmp_path.name}/run on format {OLD})")
    assert note.endswith("retrain with this kit for exact results (re-packing cannot change "
                         "what was learned)")
    assert read_manifest(packed)["parity"]["notes"] == [note]

    failing = older_package(packed, tmp_path / "failing", FEATURE_FORMAT, offset="1e-3")
    result = run_cli("parity", failing, "--data", valid, "--seqs", 2, expect=1)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("parity FAILED: max abs difference ") and ";" not in last  # no advice
    assert "in this package the run trained" in result.stdout
    assert read_manifest(failing)["parity"]["ok"] is False


def test_parity_s_re_pack_advice_from_inside_the_package_names_it_in_full(package, project,
                                                                         tmp_path, monkeypatch):
    """`kit parity .` inside the package advised `kit pack RUN --name  --out .`: no name, and
    the package folder itself as the folder to pack into."""
    folder = older_package(package, tmp_path, OLD, offset="1e-3")
    monkeypatch.chdir(folder)
    result = run_cli("parity", ".", "--data", project / "data/valid.parquet", "--seqs", 2,
                     expect=1)
    assert result.stdout.splitlines()[-1].endswith(
        f"re-pack the run with this kit (kit pack {project / 'run'} --name old --out "
        f"{folder.parent}) before judging parity")


def test_parity_s_re_pack_advice_finds_an_ensemble_file_recorded_where_pack_ran(
        package, tmp_path, monkeypatch):
    """A manifest's ensemble file was recorded as given to kit pack (relative to the project
    it ran in) and advised as such from anywhere else."""
    from kit.parity import repack_command

    project = tmp_path / "project"
    ensemble = project / "runs/ensembles/e.toml"
    ensemble.parent.mkdir(parents=True)
    ensemble.write_text("")
    manifest = read_manifest(package) | {"ensemble": {"file": "runs/ensembles/e.toml"}}
    monkeypatch.chdir(tmp_path)  # beside the project: the recorded path is not found from here
    assert repack_command(manifest, Path("project/submissions/e.zip")) == (
        f"kit pack --ensemble {ensemble} --name e --out {project / 'submissions'}")


def test_unrecorded_format_notes_name_the_first_recorded_format_after_the_next_bump(
        package, monkeypatch):
    """r291: the notes said "format {FEATURE_FORMAT} or older", which the next bump makes
    "9 or older", though packages and checkpoints record theirs since format 8."""
    import kit.export.pack
    import kit.parity
    import kit.train.trainer

    assert FIRST_RECORDED_FORMAT == 8  # history: it never moves
    for module in (kit.export.pack, kit.parity, kit.train.trainer):
        monkeypatch.setattr(module, "FEATURE_FORMAT", FEATURE_FORMAT + 1)
    manifest = read_manifest(package)
    manifest.pop("feature_format")
    notes, _ = kit.parity.format_note(manifest, package, failed=False)
    assert "(packed by a kit from before packages recorded it: format 8 or older)" in notes[0]
    assert "(format 8 or older)" in kit.train.trainer.feature_format_note({}, Path("r"))
    assert "r/1 recorded none (format 8 or older)" in kit.export.pack.other_format_note(
        [("r/1", None)])


def test_kit_data_cache_keeps_a_newer_kit_s_entries(project, tmp_path):
    """A cache shared by two checkouts (data.cache_dir): --clear-stale removed the entries of
    the newer kit, live for it, and the listing called them "built by an older kit"."""
    from kit import __version__
    from kit.features import feature_arrays
    from kit.features.sets import build_feature_set

    cache, data = tmp_path / "cache", project / "data/train.parquet"
    spec = load_spec(str(project / "tiny-lob.toml"))
    feature_arrays(data, build_feature_set(spec, ["raw"]), cache_dir=cache)
    (live,) = [p for p in cache.iterdir() if p.is_dir()]
    newer = {entry_of_another_kit(live, data, format=FEATURE_FORMAT + 1):
             f"another kit's: format {FEATURE_FORMAT + 1}, this kit reads {FEATURE_FORMAT}",
             entry_of_another_kit(live, data, kit="99.0.0"):
             f"another kit's: kit '99.0.0', this is '{__version__}'"}

    out = run_cli("data", "cache", "--dir", cache).stdout.splitlines()
    for entry, said in newer.items():
        (line,) = [line for line in out if entry.name in line]
        assert line.endswith(f"  ({said})")
    assert not [line for line in out if "(stale" in line or "of them stale" in line]
    assert out[-1] == ("2 of them built by a newer kit that shares this cache (a newer feature "
                       "format or version): not read by this kit, live for that one; "
                       "--clear-stale keeps them")
    listed = json.loads(run_cli("data", "cache", "--dir", cache, "--json").stdout)["entries"]
    assert {e["name"]: (e["stale"], e["another_kit"]) for e in listed} == {
        live.name: (None, None), **{e.name: (None, said) for e, said in newer.items()}}

    cleared = run_cli("data", "cache", "--dir", cache, "--clear-stale").stdout
    assert cleared.startswith(f"removed 0 stale entries from {cache}")
    assert "3 live one(s) kept, 2 of them a newer kit's" in cleared
    assert live.is_dir() and all(entry.is_dir() for entry in newer)
