"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""

import contextlib
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
    if exc.errno in (errno.EEXIST, errno.ENOENT) and (link := dangling_link(exc.filename)):
        # mkdir on a link to nothing says "File exists" (r303)
        return dangling_text(link)
    return f"{where}: {exc.strerror}" + (f" ({hint})" if hint else "")


def dangling_link(path) -> str | None:
    """The first part of `path` (itself, or a folder on the way to it) that is a symbolic link
    to nothing, None when there is none."""
    parts = os.path.normpath(os.fspath(path)).split(os.sep)
    for end in range(1, len(parts) + 1):
        part = os.sep.join(parts[:end]) or os.sep
        if os.path.islink(part) and not os.path.exists(part):
            return part
        if not os.path.lexists(part):
            return None
    return None


def dangling_text(link: str) -> str:
    """kit does not create a missing link target itself: one command would write through the
    link and another refuse it (kit sweep created it, kit train said 'File exists'): r303."""
    return (f"{link} is a symbolic link to {os.readlink(link)}, which does not exist: create "
            "that folder or remove the link")


@contextlib.contextmanager
def naming(path):
    """An OSError raised in the block without a file name (a library's own writer: torch's
    ONNX export, zipfile, Arrow's parquet writer) is raised again naming `path`, the file the
    block writes: the CLI printed `[Errno 28] No space left on device` and no path (r303)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        # os.strerror: Arrow's text repeats the errno ("[errno 28] Error writing bytes ...")
        text = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, text, str(path)) from exc  # (EPIPE stays a BrokenPipeError)
