"""Review r315: what `kit data cache` could not see or clear.

2: entries of a data file since overwritten or deleted were listed (with the path as given)
   exactly like live ones, and --clear-stale kept them as "live".
3: a killed build's temp folder was not listed (0 entries, 0.0 MB beside 297 MB), --clear-stale
   left it, --clear removed it but counted 0.0 MB.
4: a killed pack's staging folder stayed until that same NAME was packed again.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.data import cache as cache_module
from kit.data.cache import cache_entries, cached_arrays, clear_stale
from kit.export.pack import drop_dead_staging, owner_tag
from tests.cli import run_cli
from tests.frames import make_frame
from tests.processes import dead_pid
from tests.test_arrays import KEY, SPEC, Builder

REPO = Path(__file__).resolve().parents[1]


def write_data(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_frame(SPEC, n_seqs=3, seed=seed).write_parquet(path)
    return path


def build(path: Path, cache_dir: Path) -> str:
    """Cache the arrays of `path`; the name of its entry."""
    before = {p.name for p in cache_dir.iterdir()} if cache_dir.is_dir() else set()
    cached_arrays(path, KEY, Builder(path), cache_dir=cache_dir)
    (made,) = {p.name for p in cache_dir.iterdir() if not p.name.startswith(".")} - before - {
        cache_module.DIGESTS_FILE}
    return made


def entry_with_a_copy(tmp_path: Path) -> tuple[Path, Path, str]:
    """(cache folder, data file, its entry) where a copy of the file has used the entry too."""
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "a/train.parquet", seed=0)
    entry = build(data, cache_dir)
    copy = tmp_path / "b/train.parquet"
    copy.parent.mkdir()
    copy.write_bytes(data.read_bytes())
    cached_arrays(copy, KEY, Builder(copy), cache_dir=cache_dir)  # a hit: records the copy
    return cache_dir, data, entry


def by_name(cache_dir: Path) -> dict[str, dict]:
    return {e["name"]: e for e in cache_entries(cache_dir)}


@pytest.fixture
def settled(monkeypatch):
    """Digests are recorded at once (as for a file not written in the last 2 s)."""
    monkeypatch.setattr(cache_module, "RACY_NS", 0)


# --- 2: entries of data that is gone ---------------------------------------------------------


def test_entries_of_an_overwritten_or_deleted_file_are_orphaned_and_cleared(tmp_path, settled):
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "data/train.parquet", seed=0)
    old = build(data, cache_dir)
    write_data(data, seed=1)  # the same path, other bytes (kit data synth --seed 1)
    new = build(data, cache_dir)
    listed = by_name(cache_dir)
    assert listed[old]["orphaned"] == f"orphaned: {data.resolve()} holds other bytes now"
    assert listed[new]["orphaned"] is None and listed[new]["unverified"] is None
    assert {e["source"] for e in listed.values()} == {str(data.resolve())}  # absolute

    lines = run_cli("data", "cache", "--dir", cache_dir).stdout.splitlines()
    (old_line,) = [line for line in lines if old in line]
    assert old_line.endswith(f"(orphaned: {data.resolve()} holds other bytes now)")
    assert "orphaned" not in next(line for line in lines if new in line)
    assert any(line.startswith("1 of them orphaned") for line in lines)

    # (mv data/synth data/synth-gone): the overwritten bytes' entry stays orphaned; the one
    # whose file went with its bytes may be read again from where it moved (r319: entries are
    # found by content), so it is kept, unverified
    data.unlink()
    listed = by_name(cache_dir)
    assert listed[old]["orphaned"] == ("orphaned: every file recorded with its data holds (or "
                                       "last held) other bytes")
    assert listed[new]["orphaned"] is None
    assert listed[new]["unverified"] == (f"unverified: {data.resolve()} is gone from there "
                                         "(moved, deleted, or on a disk not mounted here; a "
                                         "moved copy reads it again)")
    cleared = run_cli("data", "cache", "--dir", cache_dir, "--clear-stale").stdout
    assert cleared.startswith(f"removed 1 stale entry from {cache_dir}"), cleared
    assert "1 of them orphaned" in cleared, cleared
    assert [e["name"] for e in cache_entries(cache_dir)] == [new]


def test_a_copy_holding_the_bytes_keeps_an_entry_whose_own_file_is_gone(tmp_path, settled):
    """Entries are found by content whatever file names them: a copy that holds the bytes
    (recorded when it used the entry) keeps it live."""
    cache_dir, data, entry = entry_with_a_copy(tmp_path)
    data.unlink()
    assert by_name(cache_dir)[entry]["orphaned"] is None
    assert clear_stale(cache_dir, {}) == [] and (cache_dir / entry).is_dir()


def test_a_file_changed_since_its_digest_was_recorded_is_unverified_not_hashed(
        tmp_path, settled):
    """The listing reads no data file: one whose stat moved (touched, or rewritten) may still
    hold the bytes, so its entries are kept and said to be unverified."""
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    entry = build(data, cache_dir)
    mtime = data.stat().st_mtime_ns - 1_000_000_000
    os.utime(data, ns=(mtime, mtime))  # touched: the same bytes, another stat
    listed = by_name(cache_dir)[entry]
    assert listed["orphaned"] is None
    assert listed["unverified"] == (f"unverified: {data.resolve()} is not on record as it is "
                                    "now (not hashed here)")
    assert clear_stale(cache_dir, {}) == []
    out = run_cli("data", "cache", "--dir", cache_dir, "--clear-stale").stdout
    assert "1 live one(s) kept, 1 unverified" in out


def test_two_projects_sharing_a_cache_are_listed_by_absolute_path(tmp_path, settled,
                                                                  monkeypatch):
    """Both wrote data/train.parquet, other bytes: both entries were listed as that relative
    path, and neither could be told from the other."""
    cache_dir, paths = tmp_path / "shared-cache", []
    for seed, project in enumerate(("one", "two")):
        write_data(tmp_path / project / "data/train.parquet", seed)
        monkeypatch.chdir(tmp_path / project)
        paths.append(str(Path("data/train.parquet").resolve()))
        build(Path("data/train.parquet"), cache_dir)
    listed = cache_entries(cache_dir)
    assert sorted(e["source"] for e in listed) == sorted(paths)
    assert [e["orphaned"] for e in listed] == [None, None]
    out = run_cli("data", "cache", "--dir", cache_dir).stdout
    assert all(path in out for path in paths)


def test_an_entry_of_another_host_or_of_an_older_kit_is_never_judged_orphaned(
        tmp_path, settled):
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    entry = build(data, cache_dir)
    meta_path = cache_dir / entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    # an older kit's meta (source as given only): found through the digest records
    older = {k: v for k, v in meta.items() if not k.startswith("source_")}
    meta_path.write_text(json.dumps(older))
    listed = by_name(cache_dir)[entry]
    assert (listed["source"], listed["orphaned"], listed["unverified"]) == (
        str(data.resolve()), None, None)
    unverified = "unverified: built on another host or container, or by an older kit"
    write_data(data, seed=1)  # overwritten: an older kit's entry is never judged (r319)
    build(data, cache_dir)
    listed = by_name(cache_dir)[entry]
    assert listed["orphaned"] is None and listed["unverified"].startswith("unverified: "), listed
    meta_path.write_text(json.dumps(older | {"source_sha256": meta["source_sha256"],
                                             "source_path": meta["source_path"]}))
    listed = by_name(cache_dir)[entry]  # its digest known, its space not: kept
    assert (listed["orphaned"], listed["unverified"]) == (None, unverified)
    write_data(data, seed=0)  # (the first bytes back, for the next case)
    # another host's (a cache on a shared disk): its path means nothing here
    meta_path.write_text(json.dumps(meta | {"source_space": "0badcafe"}))
    data.unlink()
    listed = by_name(cache_dir)[entry]
    assert (listed["orphaned"], listed["unverified"]) == (None, unverified)
    assert clear_stale(cache_dir, {}) == [] and (cache_dir / entry).is_dir()


# --- 3: killed builds' temp folders ----------------------------------------------------------


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
import numpy as np
from kit.data.cache import cached_arrays_into

def build(sink):
    x = sink("x", (64, 1000, 8), np.float32)
    x.write(np.ones((32, 1000, 8), np.float32))  # 1 MB
    x.writes.drain()  # on disk, then killed mid-build (no finally runs)
    os.kill(os.getpid(), signal.SIGKILL)

cached_arrays_into(Path(sys.argv[1]), {"k": 1}, build, cache_dir=Path(sys.argv[2]))
"""


def killed_build(data: Path, cache_dir: Path) -> Path:
    """The temp folder of a real build SIGKILLed half-way."""
    before = set(cache_dir.glob(f"{cache_module.TMP_PREFIX}*"))
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(data), str(cache_dir)],
                          capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == -9, done.stderr
    (left,) = set(cache_dir.glob(f"{cache_module.TMP_PREFIX}*")) - before
    return left


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_build_s_temp_folder_is_listed_cleared_by_clear_stale_and_counted(tmp_path):
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    dead = killed_build(data, cache_dir)
    size = folder_bytes(dead)
    assert size > 1_000_000
    running = cache_dir / f"{cache_module.TMP_PREFIX}valid-{owner_tag()}-0123abcd"  # ours
    running.mkdir()
    (running / "x.npy").write_bytes(b"half")

    (listed_dead,) = [t for t in cache_module.temp_folders(cache_dir) if t["name"] == dead.name]
    assert (listed_dead["bytes"], listed_dead["writer"], listed_dead["removable"]) == (
        size, "dead", True)
    out = run_cli("data", "cache", "--dir", cache_dir).stdout
    (line,) = [line for line in out.splitlines() if dead.name in line]
    assert f"{size / 1e6:,.1f} MB" in line and ", dead, removable)" in line
    (line,) = [line for line in out.splitlines() if running.name in line]
    assert f"process {os.getpid()}, running)" in line
    assert "2 temp folders" in out and "1 of killed builds" in out
    doc = json.loads(run_cli("data", "cache", "--dir", cache_dir, "--json").stdout)
    assert doc["temp_bytes"] == size + 4

    cleared = run_cli("data", "cache", "--dir", cache_dir, "--clear-stale").stdout
    assert "removed 1 temp folder of killed builds" in cleared
    assert not dead.exists() and running.is_dir()  # a live build's stays

    again = killed_build(write_data(tmp_path / "b.parquet", seed=1), cache_dir)
    total = folder_bytes(again) + 4
    cleared = json.loads(run_cli("data", "cache", "--dir", cache_dir, "--clear",
                                 "--json").stdout)
    assert cleared == {"dir": str(cache_dir), "removed": 2, "bytes": total}


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_build_removes_a_killed_build_s_temp_folder_at_once(tmp_path):
    """They stayed 6 hours (STALE_TMP_S); a live build's young folder still stays."""
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    dead = killed_build(data, cache_dir)
    running = cache_dir / f"{cache_module.TMP_PREFIX}valid-{owner_tag()}-0123abcd"
    running.mkdir()
    cached_arrays(data, KEY, Builder(data), cache_dir=cache_dir)
    assert not dead.exists() and running.is_dir()


# --- 4: killed packs' staging folders --------------------------------------------------------


def test_any_pack_removes_dead_packs_staging_folders_of_every_name(tmp_path):
    """Only a pack to the same NAME removed them: one of a name never packed again stayed."""
    dead, here = dead_pid(), owner_tag().split(".")[1]
    other = tmp_path / f".other.packing-{dead}.{here}-abcd_123"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"half")
    other_zip = tmp_path / f"{other.name}.zip"
    other_zip.write_bytes(b"half a zip")
    dotted = tmp_path / f".a.packing-b.packing-{dead}.{here}-zz00zz00"  # a name holding it
    dotted.mkdir()
    live = tmp_path / f".third.packing-{owner_tag()}-abcdefgh"
    live.mkdir()
    elsewhere = tmp_path / f".fourth.packing-{dead}.0badcafe-abcdefgh"  # another host's
    elsewhere.mkdir()
    users = tmp_path / ".notes.packing-list"  # not a name pack makes
    users.write_text("mine")
    drop_dead_staging(tmp_path, "p")  # what every pack runs first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, elsewhere.name, users.name])


def test_kit_data_cache_reads_the_entries_as_json_with_their_status(tmp_path, settled):
    cache_dir, data = tmp_path / "cache", write_data(tmp_path / "train.parquet", seed=0)
    build(data, cache_dir)
    doc = json.loads(run_cli("data", "cache", "--dir", cache_dir, "--json").stdout)
    (entry,) = doc["entries"]
    assert (entry["orphaned"], entry["unverified"], doc["orphaned_bytes"], doc["temp"]) == (
        None, None, 0, [])


def test_a_bare_pid_temp_folder_is_judged_by_age_alone_as_a_build_judges_it(tmp_path):
    """A name without a host tag (an older kit's) does not say whose PID it holds:
    --clear-stale removed what a build kept (r319)."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    young = cache_dir / f"{cache_module.TMP_PREFIX}train-999999-abcdef12"
    young.mkdir()
    old = cache_dir / f"{cache_module.TMP_PREFIX}valid-999998-abcdef12"
    old.mkdir()
    then = time.time() - cache_module.STALE_TMP_S - 60
    os.utime(old, (then, then))
    listed = {t["name"]: t for t in cache_module.temp_folders(cache_dir)}
    assert (listed[young.name]["writer"], listed[young.name]["removable"]) == ("unknown", False)
    assert listed[old.name]["removable"] is True
    assert [t["name"] for t in cache_module.clear_dead_temp(cache_dir)] == [old.name]
    assert young.is_dir()
