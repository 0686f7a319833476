"""Temporary folders named after their owner, so a killed command's are removed by the next.

kit score, parity and pack's timing write the rows to replay (150 MB for 600 sequences) into a
temporary folder; the sandboxed child removes it when its parent dies, but a SIGKILL in the
moment before the child starts left it for good. Each folder is named kit-KIND-PID.TAG-...
(export.pack.owner_tag: the PID and a hash of the host and PID namespace), and the next command
of that kind removes those of processes that are gone (never another host's, never a live one).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path


def owned_temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """tempfile.TemporaryDirectory("kit-KIND-PID.TAG-..."), after removing the dead owners'."""
    from kit.export.pack import dead_owners, owner_tag

    prefix = f"kit-{kind}-"
    for stale in dead_owners(Path(tempfile.gettempdir()), prefix):
        shutil.rmtree(stale, ignore_errors=True)
    # a SIGTERM raised (kit.workers.ended_by_signals) between the folder's mkdtemp and the
    # registration of its clean-up left the folder behind (seen once in a loaded test run):
    # held off until the object that removes it exists, then delivered
    held = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    blocking = hasattr(signal, "pthread_sigmask")  # (not on Windows)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if blocking else None
    try:
        return tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-")
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
