"""Checkpoints: atomic writes, and loads that refuse a damaged file by name.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: no pickled code runs when a file is opened.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import torch

from kit.atomic import atomic_bytes
from kit.errors import KitError


class CheckpointError(KitError):
    """A checkpoint is missing, truncated or not a kit checkpoint."""


def save_checkpoint(payload: dict, path: Path) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a kill never leaves half a file.
    Serialised in memory first: torch.save writing to the file turned a full disk into a
    RuntimeError of its zip writer; this way the OSError (ENOSPC) names the path and the
    temp file goes."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_bytes(Path(path), buffer.getbuffer(), fsync=True)


def load_checkpoint(path: Path, required: tuple[str, ...] = ("model",)) -> dict:
    """Load a checkpoint safely; a damaged or foreign file raises CheckpointError naming it."""
    return load_checkpoint_and_digest(path, required)[0]


def load_checkpoint_and_digest(path: Path, required: tuple[str, ...] = ("model",)
                               ) -> tuple[dict, str]:
    """load_checkpoint, and the sha256 of the very bytes it loaded: read once, so a best.pt
    replaced meanwhile (a run still training) cannot give one file's weights and another's
    digest."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    data = path.read_bytes()
    damaged = _failed_crc(io.BytesIO(data))
    if damaged:  # torch.load reads a zip without checking its CRCs: flipped bits load silently
        raise CheckpointError(f"{path}: the checkpoint is corrupt ({damaged}); "
                              f"{_what_to_do(path)}")
    try:
        with warnings.catch_warnings():  # random bytes: "Detected pickle protocol 59 ..."
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign object: all one story
        if path.suffix != ".pt" and not zipfile.is_zipfile(io.BytesIO(data)):  # a parquet
            raise CheckpointError(f"{path}: not a checkpoint; pass a run folder (or the .pt "
                                  "checkpoint in it)") from None
        # torch's first sentence (its advice on weights_only is not this story); an empty
        # file: EOFError('')
        first_line = (str(exc).splitlines() or [""])[0].split(". ")[0][:160]
        raise CheckpointError(f"{path}: the checkpoint is corrupt or not a kit checkpoint "
                              f"({type(exc).__name__}: {first_line}); {_what_to_do(path)}"
                              ) from None
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        if isinstance(payload, dict) and {"optimizer", "epoch"} <= payload.keys():
            raise CheckpointError(f"{path}: a resume checkpoint (last.pt: weights and optimiser,"
                                  " no feature set or normaliser), not the run's model; pass the"
                                  " run folder (its best.pt)")
        raise CheckpointError(f"{path}: not a kit checkpoint (needs keys {list(required)})")
    return payload, hashlib.sha256(data).hexdigest()


def _failed_crc(path) -> str | None:
    """What is wrong with a checkpoint's zip: a member whose bytes fail their CRC, or an index
    that does not read; None when all is well, or when the file is no zip at all (torch.load
    then says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None
    except Exception as exc:  # a damaged index: unknown compression, "encrypted", zlib.error
        return f"its zip index does not read: {type(exc).__name__}: {exc}"
    return f"{bad} fails its CRC check" if bad else None


def unfit_checkpoint(path: Path, exc: Exception) -> CheckpointError:
    """A checkpoint that loads but does not fit the run's model or settings (a file copied
    from another run, a feature group that makes more columns now), naming it."""
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return CheckpointError(f"{path}: does not fit this run's model and training settings "
                           f"({type(exc).__name__}: {first_line}); {_what_to_do(path)}")


def _what_to_do(path: Path) -> str:
    """The way out of a damaged checkpoint, by which one it is."""
    if path.name == "last.pt":
        return ("delete it and run the same command again: a run without last.pt trains again "
                "from its start (or start a new run)")
    if path.name == "best.pt":
        return ("a resume does not rebuild best.pt once a run has finished: restore it from a "
                "copy, or train the experiment again as a new run")
    return "restore it from a copy, or train the run again"
