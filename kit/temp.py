"""Temporary folders named after their owner, so a killed command's are removed by the next.

kit score, parity and pack's timing write the rows to replay (150 MB for 600 sequences) into a
temporary folder; the sandboxed child removes it when its parent dies, but a SIGKILL in the
moment before the child starts left it for good. Each folder is named kit-KIND-PID.TAG-...
(export.pack.owner_tag: the PID and a hash of the host and PID namespace), and the next command
of that kind removes those of processes that are gone (never another host's, never a live one).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def owned_temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """tempfile.TemporaryDirectory("kit-KIND-PID.TAG-..."), after removing the dead owners'."""
    from kit.export.pack import dead_owners, owner_tag

    prefix = f"kit-{kind}-"
    for stale in dead_owners(Path(tempfile.gettempdir()), prefix):
        shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-")
