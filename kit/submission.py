"""Submission folders and zips: solution.py at the root, reproducible archives."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

from kit.errors import SubmissionError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same zip bytes


def zip_path_of(folder: Path) -> Path:
    """NAME.zip next to the folder NAME, dots in NAME kept (with_suffix would turn gru.v2 into
    gru.zip, another package's zip). A folder named by "." or ".." (`kit parity .` inside the
    package) has no name of its own: its resolved path gives it one."""
    folder = Path(folder)
    if folder.name in ("", ".."):
        folder = folder.resolve()
    return folder.with_name(folder.name + ".zip")


def write_submission_zip(folder: Path, zip_path: Path | None = None,
                         files: tuple[str, ...] | None = None) -> Path:
    """Zip the regular files of folder (solution.py at the root) into folder.zip; with `files`,
    exactly those (a package: whatever else lies in the folder stays out of the zip)."""
    folder = Path(folder)
    if not (folder / "solution.py").is_file():
        raise SubmissionError(f"{folder}: no solution.py at the top of the folder")
    if files is None:
        paths = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                 and "__pycache__" not in p.parts]
    else:
        paths = [folder / name for name in files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise SubmissionError(f"{folder}: {missing} missing; re-run kit pack")
    zip_path = Path(zip_path or zip_path_of(folder))
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(paths):
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
        tmp.replace(zip_path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk leaves nothing behind
            tmp.unlink(missing_ok=True)
        raise
    return zip_path
