"""Submission folders and zips: solution.py at the root, reproducible archives."""

from __future__ import annotations

import zipfile
from pathlib import Path

from kit.errors import SubmissionError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same zip bytes


def write_submission_zip(folder: Path, zip_path: Path | None = None) -> Path:
    """Zip the regular files of folder (solution.py at the root) into folder.zip."""
    folder = Path(folder)
    if not (folder / "solution.py").is_file():
        raise SubmissionError(f"{folder}: no solution.py at the top of the folder")
    zip_path = Path(zip_path or folder.with_suffix(".zip"))
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    tmp.replace(zip_path)
    return zip_path
