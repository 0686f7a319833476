"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""

import errno
import os


class KitError(Exception):
    """Base class: the message says what is wrong and what to do. `settings`: for an error
    about a combination of settings, every dotted key (or table) in it: a sweep that varies
    another of them may still sample valid combinations (kit.sweep.check_space)."""

    exit_code = 2

    def __init__(self, *args, settings: tuple[str, ...] = ()):
        super().__init__(*args)
        self.settings = settings


class SpecError(KitError):
    """A competition spec is missing or malformed."""


class DataError(KitError):
    """A data file cannot be read or breaks the competition contract."""


class SubmissionError(KitError):
    """A submission folder/zip is malformed or its PredictionModel breaks the scorer contract.
    `where`: the row predict() failed or was killed on ({"seq", "step", "row"}), where known
    (`kit score --json` reports it)."""

    def __init__(self, *args, where: dict | None = None):
        super().__init__(*args)
        self.where = where


class ScorerRefusal(KitError):
    """The replay ran, but the official scorer would not accept it (NaN predictions, past the
    time or memory limit): exit 3, so a pipeline does not upload it."""

    exit_code = 3


def os_error_text(exc: OSError) -> str:
    """'PATH: what went wrong' (and what to do about it where that is clear), not an errno."""
    if exc.filename is None or exc.strerror is None:
        return str(exc)
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    hint = {errno.EACCES: "check the permissions of that folder or choose another one",
            errno.EROFS: "that file system is read-only: choose a folder on a writable one",
            errno.ENOSPC: "the disk is full: free some space or choose another folder",
            errno.ENOTDIR: "a file stands where a folder is needed in that path"}.get(exc.errno)
    if exc.errno == errno.EEXIST and os.path.isfile(exc.filename):  # mkdir of a file's path
        hint = "a file, where a folder is needed: name a folder (new or existing) instead"
    return f"{where}: {exc.strerror}" + (f" ({hint})" if hint else "")
