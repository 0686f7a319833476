"""The out-of-fold group's files are written whole or not at all (kit train --folds)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from kit.errors import os_error_text
from kit.train.recipe import write_oof
from tests.test_hostile_env_r303 import full_disk


def test_oof_files_on_a_full_disk_name_the_file_and_leave_no_torn_file(tmp_path):
    """np.save on a full disk left a torn oof_preds.npy and an error naming no file."""
    preds = np.zeros((300_000, 2), np.float32)  # 2.4 MB: past the free space
    with full_disk(tmp_path / "full", 200) as disk:
        with pytest.raises(OSError) as caught:
            write_oof(disk / "exp" / "x-oof", preds, np.arange(300_000), {"finished": True})
        left = sorted(p.name for p in (disk / "exp" / "x-oof").iterdir())
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(disk / "exp" / "x-oof" / "oof_preds.npy")
    assert "the disk is full" in os_error_text(caught.value)
    assert left == [], left  # no torn file, no temporary file, no metrics.json saying finished


def test_oof_files_read_back_as_written(tmp_path):
    preds, rows = np.arange(6, dtype=np.float32).reshape(3, 2), np.array([4, 9, 12])
    write_oof(tmp_path / "x-oof", preds, rows, {"finished": True, "kind": "oof"})
    np.testing.assert_array_equal(np.load(tmp_path / "x-oof" / "oof_preds.npy"), preds)
    np.testing.assert_array_equal(np.load(tmp_path / "x-oof" / "oof_rows.npy"), rows)
    summary = json.loads((tmp_path / "x-oof" / "metrics.json").read_text(encoding="utf-8"))
    assert summary == {"finished": True, "kind": "oof"}
    assert sorted(p.name for p in (tmp_path / "x-oof").iterdir()) == [
        "metrics.json", "oof_preds.npy", "oof_rows.npy"]
