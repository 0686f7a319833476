"""Files written whole or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_bytes(path: Path, data: bytes | memoryview, fsync: bool = False) -> None:
    """Write data to path through a temporary file and a rename: never a torn file (a full
    disk, a kill), the previous content kept on failure; an OSError names path, and the
    temporary file goes. `fsync`: on disk before the rename (a checkpoint a power cut must
    not take)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_text(path: Path, text: str) -> None:
    atomic_bytes(path, text.encode())
