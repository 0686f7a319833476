"""Pins for the small shared modules (r260's mutation audit): submission zips, TOML reading,
strict JSON, atomic writes, OSError texts, owned temp folders, worker processes and the batch
finder. Each test names the mutant it kills; the two real bugs have their own tests."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kit.atomic import atomic_bytes, atomic_text
from kit.config import ConfigError
from kit.errors import SubmissionError, os_error_text
from kit.json_safe import dumps, json_safe
from kit.submission import write_submission_zip, zip_path_of
from kit.temp import owned_temp_dir
from kit.toml_file import read_toml
from kit.train.batch_finder import largest_fitting
from kit.workers import EndedBySignal, WorkerGroup, ended_by_signals
from tests.cli import run_cli

SOLUTION = "class PredictionModel:\n    pass\n"


def _package(folder: Path, **files: str) -> Path:
    """A submission folder: solution.py and `files` (name: text, '/' for subfolders)."""
    folder.mkdir(parents=True)
    (folder / "solution.py").write_text(SOLUTION)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


# --- bug 1: `kit parity .` inside the package (zip_path_of of ".") ---------------------------

def test_a_zip_of_dot_lands_beside_the_folder_under_its_name(tmp_path, monkeypatch):
    """`kit parity .` run inside a package rewrote its manifest, then zip_path_of(Path("."))
    raised "PosixPath('.') has an empty name": a traceback, and a zip out of step with it."""
    folder = _package(tmp_path / "pkg", **{"manifest.json": "{}"})
    (folder / "lib").mkdir()
    (folder / "lib" / "x.txt").write_text("x")
    monkeypatch.chdir(folder)
    zip_path = write_submission_zip(Path("."))
    assert zip_path.resolve() == tmp_path / "pkg.zip" and zip_path.is_file()
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["lib/x.txt", "manifest.json", "solution.py"]
    # a package's listed files, and a folder named through "..", too
    (tmp_path / "pkg.zip").unlink()
    zip_path = write_submission_zip("lib/..", files=("solution.py", "manifest.json"))
    assert zip_path.resolve() == tmp_path / "pkg.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["manifest.json", "solution.py"]
    assert zip_path_of(Path(".")).resolve() == tmp_path / "pkg.zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "pkg.zip"]  # no temp file


def test_zip_path_of_a_named_folder_keeps_it_as_given():
    assert zip_path_of(Path("submissions/gru.v2")) == Path("submissions/gru.v2.zip")


def test_kit_parity_dot_inside_a_package_records_its_report_in_the_zip(tmp_path, monkeypatch):
    """End to end: parity passes, exits 0, and the zip beside the folder holds the manifest
    the folder holds (with the report)."""
    from kit.competition import load_spec
    from tests.conftest import raw_gru_run
    from tests.test_pack import pack_run
    from tests.test_train import tiny_competition

    tiny_competition(tmp_path, train_seqs=2, valid_seqs=3, seed=3)
    spec = load_spec(str(tmp_path / "tiny-lob.toml"))
    packed = pack_run(raw_gru_run(tmp_path / "run", spec), "raw", tmp_path / "submissions")
    monkeypatch.chdir(packed.folder)
    result = run_cli("parity", ".", "--data", tmp_path / "data/valid.parquet", "--seqs", 2)
    assert "Traceback" not in result.output
    manifest = (packed.folder / "manifest.json").read_bytes()
    assert json.loads(manifest)["parity"]["ok"]
    with zipfile.ZipFile(tmp_path / "submissions" / "raw.zip") as archive:
        assert archive.read("manifest.json") == manifest


# --- bug 2: the byte and position of a non-UTF-8 TOML file with a byte order mark -----------

@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_a_non_utf8_toml_names_the_bad_byte_and_its_position_in_the_file(tmp_path, bom):
    """utf-8-sig counts its error position from after the mark: with one, the error said
    'byte 0x63 at position 11' for the 0xe9 at 14."""
    path = tmp_path / "x.toml"
    path.write_bytes(bom + b'name = "caf\xe9"\n')
    at = len(bom) + 11
    assert path.read_bytes()[at] == 0xE9
    with pytest.raises(ConfigError, match=rf"x.toml: not UTF-8 text \(byte 0xe9 at position "
                                          rf"{at}\); save it as UTF-8"):
        read_toml(path, ConfigError)
    path.write_bytes(bom + b"\xff = 1\n")  # right after the mark
    with pytest.raises(ConfigError, match=rf"byte 0xff at position {len(bom)}\)"):
        read_toml(path, ConfigError)


def test_invalid_toml_names_the_file_by_its_path(tmp_path):
    """T6: the error names the path, not only the file name (which of many config.toml)."""
    path = tmp_path / "d" / "x.toml"
    path.parent.mkdir()
    path.write_text("a = [\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": not valid TOML"):
        read_toml(path, ConfigError)


# --- submission zips --------------------------------------------------------------------------

def test_a_zip_keeps_subfolder_paths_and_compresses_its_entries(tmp_path):
    """S12: lib/x.py stays lib/x.py (the zip mirrors the folder); S8: entries are DEFLATED
    (writestr takes the ZipInfo's compress_type, not the archive's)."""
    folder = _package(tmp_path / "sub", **{"sub/x.txt": "x" * 1000})
    with zipfile.ZipFile(write_submission_zip(folder)) as archive:
        assert archive.namelist() == ["solution.py", "sub/x.txt"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert archive.getinfo("sub/x.txt").compress_size < 1000


def test_the_zip_bytes_do_not_depend_on_the_listing_order(tmp_path, monkeypatch):
    """S6: the same files give the same zip bytes, whatever order the folder lists them in."""
    folder = _package(tmp_path / "sub", **{"b.txt": "b", "a.txt": "a", "c/d.txt": "d"})
    first = write_submission_zip(folder).read_bytes()
    listed = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(listed(self, pattern))))
    assert write_submission_zip(folder).read_bytes() == first
    with zipfile.ZipFile(folder.with_name("sub.zip")) as archive:
        assert archive.namelist() == ["a.txt", "b.txt", "c/d.txt", "solution.py"]


def test_a_listed_name_that_is_a_folder_is_a_submission_error(tmp_path):
    """S14: it said IsADirectoryError, not what to do."""
    folder = _package(tmp_path / "sub")
    (folder / "weights").mkdir()
    with pytest.raises(SubmissionError, match=r"\['weights'\] missing; re-run kit pack"):
        write_submission_zip(folder, files=("solution.py", "weights"))


def test_a_fifo_in_the_folder_is_left_out_unread(tmp_path, monkeypatch):
    """X12: only regular files go in; reading a FIFO blocks forever. The test refuses to open
    one itself, so the code under test cannot hang it."""
    folder = _package(tmp_path / "sub")
    os.mkfifo(folder / "pipe")
    read_bytes = Path.read_bytes

    def refuse_fifo(self):
        if stat.S_ISFIFO(os.stat(self).st_mode):
            raise AssertionError(f"read a FIFO: {self}")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_fifo)
    with zipfile.ZipFile(write_submission_zip(folder)) as archive:
        assert archive.namelist() == ["solution.py"]


# --- strict JSON ------------------------------------------------------------------------------

def test_numpy_float32_values_and_nans_become_json_floats_and_null():
    """J6/J7: np.float32 is no Python float (json.dumps refuses it); its NaN becomes null."""
    assert dumps({"a": np.float32(1.5), "b": np.float32("nan")}) == '{"a": 1.5, "b": null}'
    assert type(json_safe(np.float32(1.5))) is float


def test_a_nan_inside_a_tuple_becomes_null():
    """J2: tuples are lists in JSON; a NaN in one made dumps raise."""
    assert dumps((1.0, float("nan"))) == "[1.0, null]"
    assert dumps({"t": (np.float32(2.0), (float("inf"),))}) == '{"t": [2.0, [null]]}'


# --- atomic writes ----------------------------------------------------------------------------

def test_atomic_text_writes_utf8(tmp_path):
    """A7: config.toml and manifests with non-ASCII text; read_toml reads only UTF-8."""
    path = tmp_path / "config.toml"
    atomic_text(path, 'name = "café ✓"\n')
    assert path.read_bytes() == 'name = "café ✓"\n'.encode()
    assert read_toml(path, ConfigError) == {"name": "café ✓"}


def test_the_temp_file_is_named_after_the_process_beside_the_target(tmp_path, monkeypatch):
    """X3: two processes writing one file must not share a temp file (each could publish the
    other's half-written bytes)."""
    renames = []
    replace = os.replace

    def recording(src, dst):
        renames.append((Path(src), Path(dst)))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    atomic_bytes(tmp_path / "f.bin", b"data")
    [(src, dst)] = renames
    assert dst == tmp_path / "f.bin" and src.parent == tmp_path
    assert src.name == f".f.bin.tmp-{os.getpid()}"
    assert (tmp_path / "f.bin").read_bytes() == b"data"


def test_fsync_is_asked_for_by_checkpoints_only(tmp_path, monkeypatch):
    """A4: a checkpoint is on disk before its rename (a power cut must not take it); plain
    writes skip the fsync."""
    from kit.train.checkpoint import save_checkpoint

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    atomic_text(tmp_path / "a.txt", "a")
    assert synced == []
    atomic_bytes(tmp_path / "b.bin", b"b", fsync=True)
    assert len(synced) == 1
    save_checkpoint({"x": 1}, tmp_path / "best.pt")
    assert len(synced) == 2


# --- OSError texts ----------------------------------------------------------------------------

def test_os_error_texts_give_the_hints_for_a_full_disk_and_permissions():
    """E6/E7: the documented hints for ENOSPC and EACCES."""
    full = os_error_text(OSError(errno.ENOSPC, "No space left on device", "f"))
    assert full == ("f: No space left on device (the disk is full: free some space or choose "
                    "another folder)")
    denied = os_error_text(OSError(errno.EACCES, "Permission denied", "f"))
    assert denied == ("f: Permission denied (check the permissions of that folder or choose "
                      "another one)")


def test_a_failed_rename_names_both_paths():
    """E4: 'a -> b', not only the source."""
    exc = OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")
    assert os_error_text(exc) == "a -> b: Invalid cross-device link"


def test_only_eexist_on_a_file_gets_the_file_where_a_folder_is_needed_hint(tmp_path):
    """X8: EACCES or ENOSPC about an existing file keeps its own hint."""
    path = tmp_path / "f"
    path.write_text("x")
    denied = os_error_text(OSError(errno.EACCES, "Permission denied", str(path)))
    assert denied.endswith("(check the permissions of that folder or choose another one)")
    full = os_error_text(OSError(errno.ENOSPC, "No space left on device", str(path)))
    assert full.endswith("(the disk is full: free some space or choose another folder)")
    exists = os_error_text(OSError(errno.EEXIST, "File exists", str(path)))
    assert exists.endswith("(a file, where a folder is needed: name a folder (new or existing) "
                           "instead)")


# --- owned temp folders -----------------------------------------------------------------------

def test_a_stale_temp_folder_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    """X7: another command may remove a dead owner's folder first (a race)."""
    import kit.export.pack

    gone = tmp_path / "kit-pinx-1.gone"  # listed as stale, already removed
    monkeypatch.setattr(kit.export.pack, "dead_owners", lambda folder, prefix: [gone])
    with owned_temp_dir("pinx") as folder:
        assert Path(folder).is_dir() and Path(folder).name.startswith("kit-pinx-")
    assert not Path(folder).exists()


# --- workers ----------------------------------------------------------------------------------

def test_each_worker_starts_in_its_own_session():
    """W13: a terminal's Ctrl-C must reach only the command, which passes it on once; in the
    command's session each worker would get it twice."""
    code = "import os; print(os.getsid(0))"
    with WorkerGroup() as group:
        group.start([sys.executable, "-c", code], dict(os.environ), stdout=subprocess.PIPE,
                    text=True)
        [proc] = group.procs
        out, _ = proc.communicate()
    assert proc.returncode == 0
    assert int(out) == proc.pid != os.getsid(0)


def test_a_sigterm_of_a_started_run_gives_the_resume_hint(monkeypatch):
    """X10: EndedBySignal says a run was started unless told otherwise: a SIGTERM of a plain
    `kit train` names the --resume command."""
    import kit.train.recipe

    assert EndedBySignal(signal.SIGTERM).nothing_started is False

    def stopped(*args, **kwargs):
        raise EndedBySignal(signal.SIGTERM)

    monkeypatch.setattr(kit.train.recipe, "train_experiment", stopped)
    out = run_cli("train", "exp=tiny", expect=143).output
    assert "stopped by SIGTERM: continue with `kit train exp=tiny --resume`" in out
    assert "nothing to resume" not in out


def test_sighup_ends_a_command_by_default():
    """W21: a closed terminal (SIGHUP) is reported as EndedBySignal, exit 129. The handler
    set first catches the signal if ended_by_signals does not (it would end pytest else, and
    under nohup SIGHUP would be ignored)."""
    caught = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: caught.append(signum))
    try:
        with pytest.raises(EndedBySignal) as stop, ended_by_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):  # the handler runs in the main thread, between bytecodes
                time.sleep(0.01)
        assert stop.value.code == 129 and stop.value.signum == signal.SIGHUP
        assert caught == []
    finally:
        signal.signal(signal.SIGHUP, previous)


# --- batch finder -----------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [4096, 50, 300])
def test_the_search_finds_every_capacity_exactly(limit):
    """B10: bisection lands on the capacity itself (largest_fitting(s <= 11) gave 10)."""
    for capacity in range(1, 301):
        assert largest_fitting(lambda s, c=capacity: s <= c, limit=limit) == min(capacity,
                                                                                  limit)


@pytest.mark.parametrize("start", [1, 8, 64])
def test_the_search_never_probes_past_the_limit(start):
    """B3: a batch the caller ruled out is never asked of the device (limit 50 probed 64)."""
    for limit in range(1, 130):
        probes = []

        def fits(size, probes=probes):
            probes.append(size)
            return True

        assert largest_fitting(fits, start=start, limit=limit) == limit
        assert max(probes) <= limit, (limit, probes)
