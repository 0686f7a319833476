"""Submission zips (kit.submission) and strict JSON (kit.json_safe), on real files."""

from __future__ import annotations

import errno
import json
import zipfile

import numpy as np
import pytest

from kit.errors import SubmissionError
from kit.json_safe import dumps
from kit.submission import write_submission_zip

SOLUTION = "class PredictionModel:\n    pass\n"


def _folder(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "solution.py").write_text(SOLUTION)
    return folder


def test_a_symlink_in_the_folder_is_left_out_of_the_zip(tmp_path):
    """A link to a file outside the folder would carry that file into the zip."""
    folder = _folder(tmp_path)
    (tmp_path / "private.txt").write_text("not for upload")
    (folder / "link.txt").symlink_to("../private.txt")
    with zipfile.ZipFile(write_submission_zip(folder)) as archive:
        assert archive.namelist() == ["solution.py"]


def test_a_listed_file_that_is_missing_is_a_submission_error(tmp_path):
    """A package missing one of its files said so and how to fix it; without the check it was
    a bare FileNotFoundError from reading the file."""
    folder = _folder(tmp_path)
    with pytest.raises(SubmissionError, match=r"\['weights.npz'\] missing; re-run kit pack"):
        write_submission_zip(folder, files=("solution.py", "weights.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no zip, no temp file


def test_zip_entries_are_readable_files_mode_644(tmp_path):
    """Without an explicit mode, writestr gives a bare ZipInfo 0o600: unzipped, the files
    are readable by their owner only (a grader running as another user cannot import them)."""
    folder = _folder(tmp_path)
    (folder / "weights.npz").write_bytes(b"\0" * 10)
    with zipfile.ZipFile(write_submission_zip(folder)) as archive:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
    assert modes == {"solution.py": 0o644, "weights.npz": 0o644}


def test_a_full_disk_keeps_the_previous_zip_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """The zip is written to NAME.zip.tmp and renamed: a failed write must remove the temp."""
    folder = _folder(tmp_path)
    zip_path = write_submission_zip(folder)
    old = zip_path.read_bytes()
    (folder / "solution.py").write_text(SOLUTION + "# changed\n")

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_submission_zip(folder)
    assert zip_path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "sub.zip"]


def test_numpy_integers_become_json_numbers_and_keys_strings():
    """json.dumps refuses numpy integers as values and as keys."""
    assert json.loads(dumps({"n": np.int64(3)})) == {"n": 3}
    assert dumps({"n": np.int64(3)}) == '{"n": 3}'
    assert dumps({np.int64(1): 2}) == '{"1": 2}'
